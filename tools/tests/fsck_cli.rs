//! The built `fsck-dfs` binary (installed as `fsck.dfs`) on pools of loop
//! devices, as `fsck -t dfs` would run it: members found from one DEV,
//! e2fsck exit codes (0 clean, 1 corrected, 4 left, 8 operational, 16
//! usage), the human lines and the JSON report.
//!
//! Needs root and loop devices; skipped with a printed reason otherwise.
//! The loop devices come from `common::Loop` (`losetup`, direct IO; only
//! the devices attached here are detached, also when a test panics).

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use common::{expect, have_loop_devices, mkfs, pattern, Loop, BS, MIB};
use dynamicfs::device::Device;
use dynamicfs::engine::lock::{PoolLock, DEFAULT_LOCK_DIR};
use dynamicfs::engine::state::{Body, Extent};
use dynamicfs::engine::{FileKind, Pool, PoolOptions, ROOT_INO};
use dynamicfs::member::read_superblocks;

const FSCK: &str = env!("CARGO_BIN_EXE_fsck-dfs");
const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");

/// Run `fsck-dfs ARGS` (printed with its output).
fn run(args: &[&str]) -> Output {
    common::run(FSCK, args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit status 8 and exactly one `fsck.dfs: error: ...` line containing `what`.
fn expect_operational(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(o.status.code(), Some(8), "{err}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("fsck.dfs: error: ") && lines[0].contains(what), "{lines:?}");
}

/// Three loop devices made a pool by `mkfs.dfs` (erasure:2+1), with files
/// `/a` (3 extents) and `/b` written through the engine and closed.
struct LoopPool {
    loops: Vec<Loop>,
    uuid: uuid::Uuid,
}

impl LoopPool {
    fn new() -> LoopPool {
        let loops: Vec<Loop> = (0..3).map(|_| Loop::new(64 * MIB)).collect();
        mkfs(MKFS, &loops, "erasure:2+1", "fsck");
        let uuid = read_superblocks(loops[0].dev(true).as_ref()).unwrap().superblock.pool_uuid;
        let lp = LoopPool { loops, uuid };
        let pool = lp.pool(false);
        for (name, len, seed) in [(&b"a"[..], 2 * MIB as usize + 5000, 1u8), (&b"b"[..], 100_000, 2)] {
            let (ino, _) = pool.create(ROOT_INO, name, FileKind::File, 0o644, 0, 0, 0).unwrap();
            pool.write(ino, 0, &pattern(len, seed)).unwrap();
            pool.fsync(ino).unwrap();
        }
        pool.close().unwrap();
        lp
    }

    fn pool(&self, read_only: bool) -> Pool {
        let devs: Vec<Arc<dyn Device>> = self.loops.iter().map(|l| l.dev(read_only)).collect();
        Pool::open(devs, PoolOptions { read_only, no_lock: true, ..Default::default() }).unwrap()
    }

    fn extent(&self, name: &[u8], index: u64) -> Extent {
        let pool = self.pool(true);
        let (ino, _) = pool.lookup(ROOT_INO, name).unwrap();
        let st = pool.state_snapshot();
        let Body::File(map) = &st.inodes[&ino].body else { panic!("not a file") };
        st.extents[&map[&index]].clone()
    }

    /// Byte offset on its member of fragment `i` of `e` (its header block).
    fn fragment_offset(&self, e: &Extent, i: usize) -> (usize, u64) {
        let f = e.frags[i];
        let dev = self.loops[f.member as usize].dev(true);
        let layout = read_superblocks(dev.as_ref()).unwrap().superblock.layout;
        (f.member as usize, layout.data_offset(f.block))
    }
}

#[test]
fn clean_then_damaged_then_repaired() {
    if !have_loop_devices() {
        return;
    }
    let lp = LoopPool::new();
    let l0 = lp.loops[0].s();

    // Clean: one DEV names the pool, the others are found by the block device scan.
    let out = expect(&run(&["-n", l0]), 0);
    assert!(out.contains("3 of 3 members"), "{out}");
    assert!(out.contains(": clean"), "{out}");
    let j: serde_json::Value = serde_json::from_str(&expect(&run(&["--json", "--data", lp.loops[1].s()]), 0)).unwrap();
    assert_eq!(j["pool_uuid"], lp.uuid.to_string());
    assert_eq!(j["exit_code"], 0);
    assert_eq!(j["members"].as_array().unwrap().len(), 3);
    assert_eq!(j["stats"]["extents"], 4);
    assert_eq!(j["stats"]["fragments_good"], 12);

    // A flipped payload byte: found with --data only; -y repairs it (1); clean again (0).
    let e = lp.extent(b"a", 1);
    let (m, off) = lp.fragment_offset(&e, 0);
    lp.loops[m].flip(off + BS + 999, 0x10);
    expect(&run(&["-n", l0]), 0);
    let out = expect(&run(&["-n", "--data", l0]), 4);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].contains("payload does not match its BLAKE3"), "{out}");
    assert!(errors[0].contains(&format!("member {m} ({})", lp.loops[m].s())), "{out}");
    assert!(out.contains("1 ERRORS LEFT UNCORRECTED"), "{out}");
    let out = expect(&run(&["-y", "--data", l0]), 1);
    assert!(out.lines().any(|l| l.starts_with("FIXED") && l.contains("rebuilt from the other fragments")), "{out}");
    assert!(out.contains("POOL WAS MODIFIED"), "{out}");
    expect(&run(&["-n", "--data", l0]), 0);

    // A destroyed primary superblock: preen (-p, as fsck at boot) fixes it.
    lp.loops[2].zero(0, BS);
    let out = expect(&run(&["-p", lp.loops[2].s()]), 1);
    assert!(out.contains("primary copy at offset 0"), "{out}");
    expect(&run(&["-n", "-f", l0]), 0);

    // The data reads back byte-exact.
    let pool = lp.pool(true);
    let (ino, _) = pool.lookup(ROOT_INO, b"a").unwrap();
    assert!(pool.read(ino, 0, 3 * MIB as usize).unwrap() == pattern(2 * MIB as usize + 5000, 1));
}

#[test]
fn lost_extent_is_left_uncorrected() {
    if !have_loop_devices() {
        return;
    }
    let lp = LoopPool::new();
    // Two of the three fragments of /b's only extent: erasure:2+1 cannot rebuild it.
    let e = lp.extent(b"b", 0);
    for i in [0, 2] {
        let (m, off) = lp.fragment_offset(&e, i);
        lp.loops[m].flip(off + 100, 0x10);
    }
    let out = expect(&run(&["-y", lp.loops[0].s()]), 4);
    let lost: Vec<&str> = out.lines().filter(|l| l.contains("its data is lost")).collect();
    assert_eq!(lost.len(), 1, "{out}");
    assert!(lost[0].starts_with("ERROR") && lost[0].contains("/b at byte 0"), "{out}");
    let j: serde_json::Value = serde_json::from_str(&expect(&run(&["-n", "--json", lp.loops[0].s()]), 4)).unwrap();
    let kinds: Vec<&str> = j["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "left")
        .map(|f| f["finding"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["fragment", "fragment", "extent_lost"], "{j:#}");
}

#[test]
fn operational_and_usage_errors() {
    if !have_loop_devices() {
        return;
    }
    let lp = LoopPool::new();
    let l0 = lp.loops[0].s();

    // In use: a repair is refused (8); a check runs and says so in a note.
    {
        let _held = PoolLock::acquire(Path::new(DEFAULT_LOCK_DIR), lp.uuid).unwrap();
        let pid = std::process::id();
        expect_operational(&run(&["-y", l0]), &format!("is in use by PID {pid}"));
        expect_operational(&run(&["-p", l0]), &format!("is in use by PID {pid}"));
        let out = expect(&run(&["-n", "-v", l0]), 0);
        assert!(out.lines().any(|l| l.starts_with("note") && l.contains(&format!("in use by PID {pid}"))), "{out}");
    }
    // Not a member, no such device.
    let blank = Loop::new(64 * MIB);
    expect_operational(&run(&["-n", blank.s()]), "not a DynamicFS member");
    expect_operational(&run(&["-n", "/nonexistent/dev"]), "/nonexistent/dev");
    // Usage: conflicting modes, no device, unknown option.
    for args in [&["-n", "-y", l0][..], &["-y", "-p", l0], &[], &["--bogus", l0]] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(16), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // fsck(8) passes -V and -C0 (ext-only, but harmless): accepted.
    expect(&run(&["-a", "-V", "-C0", l0]), 0);
    let o = run(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("Exit status: 0 clean, 1 errors corrected, 4 errors left uncorrected"));
}

#[test]
fn zeroed_member_is_reinitialised_in_place() {
    if !have_loop_devices() {
        return;
    }
    let lp = LoopPool::new();
    let member_uuid = read_superblocks(lp.loops[1].dev(true).as_ref()).unwrap().superblock.member_uuid;
    // A whole member zeroed (a disk replaced by a blank one at the same
    // path, or wiped): named on the command line, as it has no superblock
    // to be found by.
    lp.loops[1].zero(0, 64 * MIB);
    let (l0, l1) = (lp.loops[0].s(), lp.loops[1].s());
    let out = expect(&run(&["-n", "--data", l0, l1]), 4);
    assert!(out.contains(&format!("{l1} is not a member of this pool")), "{out}");
    assert!(out.contains("member 1") && out.contains("missing"), "{out}");
    let out = expect(&run(&["-y", "--data", l0, l1]), 1);
    assert!(out.contains("re-initialised in place as the missing member"), "{out}");
    assert!(out.contains("POOL WAS MODIFIED"), "{out}");
    let out = expect(&run(&["-n", "--data", "-f", l0]), 0);
    assert!(out.contains("3 of 3 members"), "{out}");
    let sb = read_superblocks(lp.loops[1].dev(true).as_ref()).unwrap().superblock;
    assert_eq!((sb.member_index, sb.member_uuid), (1, member_uuid), "the member's own identity");
    // Byte-exact, also from the re-initialised member with another gone.
    let pool = lp.pool(true);
    for (name, len, seed) in [(&b"a"[..], 2 * MIB as usize + 5000, 1u8), (&b"b"[..], 100_000, 2)] {
        let (ino, _) = pool.lookup(ROOT_INO, name).unwrap();
        assert!(pool.read(ino, 0, len).unwrap() == pattern(len, seed));
    }
    drop(pool);
    let st_frags_on_1 = {
        let p = lp.pool(true);
        p.state_snapshot().all_fragments().filter(|(_, _, f)| f.member == 1).count()
    };
    println!("fragments on the re-initialised member: {st_frags_on_1}");
}
