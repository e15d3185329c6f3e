//! Online administration of a MOUNTED pool of loop devices of different
//! sizes, through the built `mkfs-dfs`, `mount-dfs` and `dfs`, as an
//! operator runs them (issue #7):
//!
//! - `grow_convert_fail_rebuild_drain`: 3 members, files written; 3 disks
//!   added online; the pool changed to `erasure:4+2`; two members failed:
//!   every byte reads back (BLAKE3 of every file, after a remount so the
//!   page cache cannot answer, and with no spare member the reads really
//!   are degraded). Three more disks: `dfs rebuild` plus the background
//!   worker rewrite exactly the lost fragments, and the IO they count
//!   (`rebuild --json`, `rebuild-status --json`) is exactly what those
//!   fragments need (K shards read per extent, one shard written per lost
//!   fragment). Then `remove-disk` drains the member the pool was mounted
//!   through while one thread writes new files and another reads and
//!   checks the old ones; the member leaves the pool, its superblocks are
//!   wiped (`dfs-inspect` no longer finds one), `list-disks` no longer
//!   shows it — and the mount point still resolves to the mount although
//!   its source member is gone (the stale-mountpoint bug). A remount
//!   through another member reads every byte back.
//! - `policy_change_resumes_after_kill_9`: a rate-limited change-policy on
//!   a mounted pool; `kill -9` of the mount daemon mid-way; a remount
//!   resumes the change on its own, it completes, `policy-status --json`
//!   shows one change, done, with the interruption noted; every byte reads
//!   back.
//!
//! Needs root, loop devices and /dev/fuse; skips otherwise. Loop devices
//! come from `tests/common` (detached on drop); a guard unmounts (lazily)
//! when a step fails. The two tests run one after the other (a lock) so
//! at most nine loop devices are in use.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::mounts::UnmountOnDrop;
use common::{require_root_and_loop, LoopDevice};
use dfs_format::Policy;
use dynamicfs::engine::redundancy::shard_len;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
const MOUNT: &str = env!("CARGO_BIN_EXE_mount-dfs");
const DFS: &str = env!("CARGO_BIN_EXE_dfs");
const INSPECT: &str = env!("CARGO_BIN_EXE_dfs-inspect");
const MIB: u64 = 1 << 20;
const BS: u64 = 4096;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn available() -> bool {
    if !require_root_and_loop() {
        return false;
    }
    let ok = Path::new("/dev/fuse").exists();
    if !ok {
        common::skip::unavailable("needs /dev/fuse");
    }
    ok
}

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

fn ok(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Loop devices of the given sizes, a mount point and a daemon log.
/// Dropping it unmounts (if a step failed) before the devices go.
struct Rig {
    mnt: PathBuf,
    log: PathBuf,
    closes: usize,
    // Dropped after `Drop::drop` unmounted.
    loops: Vec<LoopDevice>,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// `sizes_mib.len()` loop devices, the first `members` formatted as a pool.
    fn new(sizes_mib: &[u64], members: usize, policy: &str) -> Rig {
        let dir = common::disk_tempdir();
        let loops: Vec<LoopDevice> = sizes_mib.iter().map(|m| LoopDevice::new(m * MIB).unwrap()).collect();
        let mut args = vec!["-q".to_string(), "-p".into(), policy.into()];
        for l in &loops[..members] {
            args.extend(["-d".into(), s(l.path())]);
        }
        ok(&Command::new(MKFS).args(&args).output().unwrap());
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        Rig { mnt, log: dir.path().join("dfs.log"), closes: 0, loops, _dir: dir }
    }

    fn dev(&self, i: usize) -> String {
        s(self.loops[i].path())
    }

    fn m(&self) -> String {
        s(&self.mnt)
    }

    /// Mount through loop `via`, naming `extra` loops too; the daemon's pid.
    fn mount(&self, via: usize, extra: &[usize]) -> i32 {
        let mut opts = format!("log={}", s(&self.log));
        for &i in extra {
            opts.push_str(&format!(",device={}", self.dev(i)));
        }
        let o = run(MOUNT, &[&self.dev(via), &self.m(), "-v", "-o", &opts]);
        ok(&o);
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        out.rsplit("daemon pid ").next().and_then(|t| t.trim().trim_end_matches(')').parse().ok()).expect(&out)
    }

    /// `umount`, then wait until the daemon closed the pool.
    fn umount(&mut self) {
        ok(&run("umount", &[&self.m()]));
        self.closes += 1;
        let start = Instant::now();
        while fs::read_to_string(&self.log).unwrap_or_default().matches("unmounted; pool closed").count() < self.closes
        {
            assert!(start.elapsed() < Duration::from_secs(30), "daemon did not close the pool");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `dfs CMD --pool MNT ARGS... --json`.
    fn dfs(&self, cmd: &str, args: &[&str]) -> Value {
        let m = self.m();
        let mut a = vec![cmd, "--pool", &m];
        a.extend_from_slice(args);
        a.push("--json");
        ok(&run(DFS, &a))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(UnmountOnDrop(self.mnt.clone()));
    }
}

/// `len` bytes of BLAKE3 XOF output keyed by `seed`: incompressible.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut v);
    v
}

/// Write `data` to `path` and fsync it; its BLAKE3.
fn write_synced(path: &Path, data: &[u8]) -> blake3::Hash {
    let mut f = File::create(path).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    blake3::hash(data)
}

/// BLAKE3 of a file's content, its cached pages dropped first.
fn hash_file(path: &Path) -> blake3::Hash {
    let f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: advice on an open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut h = blake3::Hasher::new();
    h.update_reader(&f).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    h.finalize()
}

fn check_all(mnt: &Path, files: &BTreeMap<String, blake3::Hash>) {
    for (name, want) in files {
        assert_eq!(hash_file(&mnt.join(name)), *want, "{name} differs");
    }
}

/// Every extent's policy; panics on a degraded one.
fn policies(rig: &Rig) -> Vec<String> {
    let red = rig.dfs("show-redundancy", &[]);
    red.as_array().unwrap().iter().map(|l| l["policy"].as_str().unwrap().to_string()).collect()
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (extents, fragments, bytes read, bytes written) a rebuild of the
/// fragments on `lost` members must cost.
fn expected_rebuild(extents: &Value, lost: &[u64]) -> [u64; 4] {
    let mut x = [0u64; 4];
    for e in extents.as_array().unwrap() {
        let n =
            e["fragments"].as_array().unwrap().iter().filter(|f| lost.contains(&f["member"].as_u64().unwrap())).count()
                as u64;
        if n == 0 {
            continue;
        }
        let p: Policy = e["policy"].as_str().unwrap().parse().unwrap();
        let Policy::Erasure { data, .. } = p else { panic!("{p}") };
        let shard = shard_len(p, e["len"].as_u64().unwrap() as u32) as u64;
        x[0] += 1;
        x[1] += n;
        x[2] += data as u64 * shard;
        x[3] += n * (BS + shard.div_ceil(BS) * BS);
    }
    x
}

fn io(v: &Value) -> [u64; 4] {
    ["extents", "fragments", "bytes_read", "bytes_written"].map(|k| v[k].as_u64().unwrap())
}

#[test]
fn grow_convert_fail_rebuild_drain() {
    if !available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut rig = Rig::new(&[192, 256, 320, 224, 288, 352, 240, 272, 304], 3, "replication:2");
    rig.mount(0, &[1, 2]);
    let mnt = rig.mnt.clone();

    // Files of many sizes (partial last extents included).
    let mut files = BTreeMap::new();
    fs::create_dir(mnt.join("d")).unwrap();
    for i in 0..12u64 {
        let name = if i % 3 == 0 { format!("d/f{i}") } else { format!("f{i}") };
        let len = (i * 977_000 + 300_000 + i * 4093) as usize;
        files.insert(name.clone(), write_synced(&mnt.join(&name), &pattern(len, i)));
    }

    // Three disks online, then the whole pool to erasure:4+2.
    for i in 3..6 {
        let a = rig.dfs("add-disk", &["--disk", &rig.dev(i)]);
        assert_eq!(a["index"], i as u64, "{a}");
    }
    let disks = rig.dfs("list-disks", &[]);
    assert_eq!(disks.as_array().unwrap().len(), 6, "{disks}");
    assert!(disks.as_array().unwrap().iter().all(|d| d["state"] == "online"), "{disks}");
    ok(&run(DFS, &["change-policy", "--pool", &rig.m(), "--policy", "erasure:4+2"]));
    assert_eq!(policies(&rig), ["erasure:4+2"]);
    let history = rig.dfs("policy-status", &[]);
    assert_eq!(history[0]["state"], "done", "{history}");

    // Remount (no page cache), fail two members: every byte reads back.
    // With four online members nothing can be rebuilt yet, so these
    // reads are degraded reads (four of six fragments).
    rig.umount();
    rig.mount(0, &[1, 2, 3, 4, 5]);
    ok(&run(DFS, &["fail-disk", "--pool", &rig.m(), "--disk", &rig.dev(1)]));
    ok(&run(DFS, &["fail-disk", "--pool", &rig.m(), "--disk", "4"]));
    let disks = rig.dfs("list-disks", &[]);
    let states: Vec<&str> = disks.as_array().unwrap().iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["online", "failed", "online", "online", "failed", "online"]);
    check_all(&mnt, &files);
    let red = rig.dfs("show-redundancy", &[]);
    assert!(red[0]["degraded_extents"].as_u64().unwrap() > 0, "{red}");

    // Three more disks: rebuild now and in the background; the IO counted
    // is exactly what the lost fragments need.
    let extents = rig.dfs("list-extents", &[]);
    let want = expected_rebuild(&extents, &[1, 4]);
    assert!(want[1] > want[0], "some extents lost two fragments: {want:?}");
    let before = io(&rig.dfs("rebuild-status", &[])["rebuild"]);
    for i in 6..9 {
        rig.dfs("add-disk", &["--disk", &rig.dev(i)]);
    }
    let now = io(&rig.dfs("rebuild", &[]));
    wait_until("the rebuild", 120, || rig.dfs("show-redundancy", &[])[0]["degraded_extents"] == 0);
    let worker = io(&rig.dfs("rebuild-status", &[])["rebuild"]);
    let got: Vec<u64> = (0..4).map(|k| now[k] + worker[k] - before[k]).collect();
    assert_eq!(got, want, "rebuild IO (extents, fragments, read, written): dfs rebuild {now:?} + worker");
    println!("rebuild IO: extents {} fragments {} read {} B written {} B", got[0], got[1], got[2], got[3]);
    for e in rig.dfs("list-extents", &[]).as_array().unwrap() {
        let members: Vec<u64> =
            e["fragments"].as_array().unwrap().iter().map(|f| f["member"].as_u64().unwrap()).collect();
        assert!(!members.contains(&1) && !members.contains(&4), "{e}");
    }

    // Drain member 0 (the mount's source) while files are written and read.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    fs::create_dir(mnt.join("live")).unwrap();
    let writer = {
        let (stop, mnt) = (stop.clone(), mnt.clone());
        std::thread::spawn(move || {
            let mut written = BTreeMap::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) || i < 3 {
                let name = format!("live/w{i}");
                let len = (1_300_000 + i * 7919) as usize;
                written.insert(name.clone(), write_synced(&mnt.join(&name), &pattern(len, 1000 + i)));
                i += 1;
            }
            written
        })
    };
    let reader = {
        let (stop, reads, mnt, files) = (stop.clone(), reads.clone(), mnt.clone(), files.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (name, want) in &files {
                    assert_eq!(hash_file(&mnt.join(name)), *want, "{name} differs during the drain");
                    reads.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    wait_until("the reader", 60, || reads.load(Ordering::SeqCst) > 0);
    let on0 = rig.dfs("list-disks", &[])[0]["fragments"].as_u64().unwrap();
    assert!(on0 > 0, "member 0 holds fragments to drain");
    let reads_before = reads.load(Ordering::SeqCst);
    let p = rig.dfs("remove-disk", &["--disk", &rig.dev(0), "--wait"]);
    assert_eq!(p["removed"], true, "{p}");
    let during = reads.load(Ordering::SeqCst) - reads_before;
    stop.store(true, Ordering::SeqCst);
    reader.join().expect("reader saw wrong data");
    let written = writer.join().expect("writer failed");
    println!("drained {on0} fragments; {during} file reads and {} file writes around it", written.len());
    files.extend(written);

    // Member 0 has left: superblocks wiped, gone from list-disks, and the
    // mount point (mounted through it) still finds the mount.
    let disks = rig.dfs("list-disks", &[]);
    assert_eq!(disks[0]["state"], "removed", "{disks}");
    let table = String::from_utf8(run(DFS, &["list-disks", "--pool", &rig.m()]).stdout).unwrap();
    assert!(!table.contains(&rig.dev(0)), "{table}");
    assert!(table.contains(&rig.dev(8)), "{table}");
    let inspect = run(INSPECT, &["superblock", &rig.dev(0)]);
    assert_eq!(inspect.status.code(), Some(1), "{}", String::from_utf8_lossy(&inspect.stdout));
    check_all(&mnt, &files);

    // Remount through another member: every byte is there.
    rig.umount();
    rig.mount(2, &[1, 3, 4, 5, 6, 7, 8]);
    check_all(&mnt, &files);
    assert_eq!(policies(&rig), ["erasure:4+2"]);
    rig.umount();
}

#[test]
fn policy_change_resumes_after_kill_9() {
    if !available() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut rig = Rig::new(&[512, 640, 768, 576, 704, 832], 6, "replication:2");
    rig.mount(0, &[1, 2, 3, 4, 5]);
    let mnt = rig.mnt.clone();
    let mut files = BTreeMap::new();
    for i in 0..40u64 {
        let name = format!("f{i:02}");
        let len = (4 * MIB - i * 1000) as usize;
        files.insert(name.clone(), write_synced(&mnt.join(&name), &pattern(len, 50 + i)));
    }
    let total = rig.dfs("list-extents", &[]).as_array().unwrap().len() as u64;
    assert_eq!(total, 160);

    // 8 MiB/s: 160 extents take about 20 s; kill -9 past the first
    // persisted progress (64 extents).
    let change = Command::new(DFS)
        .args(["change-policy", "--pool", &rig.m(), "--policy", "erasure:4+2", "--max-rate", "8M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = 0;
    wait_until("64 extents re-encoded", 60, || {
        let h = rig.dfs("policy-status", &[]);
        seen = h[0]["extents_done"].as_u64().unwrap_or(0);
        seen >= 70
    });
    let daemon = daemon_pid(&rig);
    // SAFETY: kill of the daemon this test started (its pid from its own socket).
    assert_eq!(unsafe { libc::kill(daemon, libc::SIGKILL) }, 0);
    let start = Instant::now();
    // SAFETY: kill(pid, 0) only checks that it exists.
    while unsafe { libc::kill(daemon, 0) } == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = change.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "the CLI saw its mount die: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{}", String::from_utf8_lossy(&out.stderr));
    ok(&run("umount", &[&rig.m()]));

    // Remount: the mount resumes the change on its own.
    rig.mount(0, &[1, 2, 3, 4, 5]);
    wait_until("the resumed change", 120, || rig.dfs("policy-status", &[])[0]["state"] == "done");
    let h = rig.dfs("policy-status", &[]);
    assert_eq!(h.as_array().unwrap().len(), 1, "{h}");
    let c = &h[0];
    assert_eq!((c["extents_done"].as_u64(), c["extents_total"].as_u64()), (Some(total), Some(total)), "{c}");
    let msg = c["message"].as_str().unwrap();
    assert!(msg.starts_with("interrupted at ") && msg.contains(&format!("/{total} extents; resumed")), "{c}");
    let at: u64 = msg["interrupted at ".len()..].split('/').next().unwrap().parse().unwrap();
    assert!((64..=seen).contains(&at), "recorded progress {at}, seen {seen} before the kill");
    println!("change interrupted at {at}/{total} (seen {seen}), resumed and done: {c}");
    assert!(c["finished"].is_string(), "{c}");
    assert_eq!(policies(&rig), ["erasure:4+2"]);
    assert_eq!(rig.dfs("show-redundancy", &[])[0]["degraded_extents"], 0);
    rig.umount();
    rig.mount(3, &[0, 1, 2, 4, 5]);
    check_all(&mnt, &files);
    rig.umount();
}

/// The mount daemon's pid, as its control socket's `ping` gives it.
fn daemon_pid(rig: &Rig) -> i32 {
    let dir = Path::new(dynamicfs::control::DEFAULT_SOCKET_DIR);
    let want = fs::canonicalize(&rig.mnt).unwrap();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let Ok(mut c) = dynamicfs::control::Client::connect(&e.path()) else { continue };
        let Ok(v) = c.call("ping", Value::Null) else { continue };
        if v["mountpoint"].as_str() == want.to_str() {
            return v["pid"].as_i64().unwrap() as i32;
        }
    }
    panic!("no control socket serves {}", want.display());
}
