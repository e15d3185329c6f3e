//! The built `fsck-dfs` binary (installed as `fsck.dfs`) on pools of loop
//! devices, as `fsck -t dfs` would run it: members found from one DEV,
//! e2fsck exit codes (0 clean, 1 corrected, 4 left, 8 operational, 16
//! usage), the human lines and the JSON report.
//!
//! Needs root and loop devices; skipped with a printed reason otherwise.
//! The loop devices come from `losetup` (this crate has no `loopdev`
//! dependency to share `tests/common` with): each is attached over a sparse
//! image in its own temporary directory with direct IO, and only the device
//! attached here is ever detached, also when a test panics.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use dynamicfs::device::{open_member_device, Device, OpenMode};
use dynamicfs::engine::lock::{PoolLock, DEFAULT_LOCK_DIR};
use dynamicfs::engine::state::{Body, Extent};
use dynamicfs::engine::{FileKind, Pool, PoolOptions, ROOT_INO};
use dynamicfs::member::{read_bytes, read_superblocks, write_bytes};

const FSCK: &str = env!("CARGO_BIN_EXE_fsck-dfs");
const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
const MIB: u64 = 1 << 20;
const BS: u64 = 4096;

/// A loop device over a sparse image; detached (and the image deleted) on drop.
struct Loop {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(size: u64) -> Loop {
        let dir = tempfile::Builder::new().prefix("dfs-fsck-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let image = dir.path().join("loop.img");
        File::create(&image).unwrap().set_len(size).unwrap();
        let mut last = String::new();
        for _ in 0..20 {
            let o = Command::new("losetup").args(["--find", "--show", "--direct-io=on"]).arg(&image).output().unwrap();
            if o.status.success() {
                let path = PathBuf::from(String::from_utf8(o.stdout).unwrap().trim());
                return Loop { path, _dir: dir };
            }
            // Another process may have taken the free device first.
            last = String::from_utf8_lossy(&o.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("losetup failed: {last}");
    }

    fn s(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

fn have_loop_devices() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root
        && Path::new("/dev/loop-control").exists()
        && Command::new("losetup").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: needs root, /dev/loop-control and losetup");
    }
    ok
}

/// Run `fsck-dfs ARGS`; the command and its output are printed (seen with
/// `--nocapture`).
fn run(args: &[&str]) -> Output {
    let o = Command::new(FSCK).args(args).output().unwrap();
    println!(
        "$ fsck.dfs {}\n{}{}[exit {:?}]\n",
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        o.status.code()
    );
    o
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit status `code`; on failure show everything.
fn expect(o: &Output, code: i32) -> String {
    let out = stdout(o);
    assert_eq!(o.status.code(), Some(code), "stdout:\n{out}\nstderr:\n{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Exit status 8 and exactly one `fsck.dfs: error: ...` line containing `what`.
fn expect_operational(o: &Output, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(o.status.code(), Some(8), "{err}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("fsck.dfs: error: ") && lines[0].contains(what), "{lines:?}");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
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
        let mut args = vec!["-q", "-p", "erasure:2+1", "-L", "fsck"];
        for l in &loops {
            args.extend(["-d", l.s()]);
        }
        let o = Command::new(MKFS).args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let uuid = read_superblocks(open(&loops[0], true).as_ref()).unwrap().superblock.pool_uuid;
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
        let devs: Vec<Arc<dyn Device>> = self.loops.iter().map(|l| open(l, read_only)).collect();
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
        let dev = open(&self.loops[f.member as usize], true);
        let layout = read_superblocks(dev.as_ref()).unwrap().superblock.layout;
        (f.member as usize, layout.data_offset(f.block))
    }

    /// Flip one byte at `offset` of member `m`, through the device.
    fn flip(&self, m: usize, offset: u64) {
        let dev = open(&self.loops[m], false);
        let mut b = read_bytes(dev.as_ref(), offset, 1).unwrap();
        b[0] ^= 0x10;
        write_bytes(dev.as_ref(), offset, &b).unwrap();
        dev.sync().unwrap();
    }

    fn zero(&self, m: usize, offset: u64, len: u64) {
        let dev = open(&self.loops[m], false);
        write_bytes(dev.as_ref(), offset, &vec![0u8; len as usize]).unwrap();
        dev.sync().unwrap();
    }
}

fn open(l: &Loop, read_only: bool) -> Arc<dyn Device> {
    open_member_device(&l.path, OpenMode { read_only, exclusive: false }).unwrap()
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
    lp.flip(m, off + BS + 999);
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
    lp.zero(2, 0, BS);
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
        lp.flip(m, off + 100);
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
