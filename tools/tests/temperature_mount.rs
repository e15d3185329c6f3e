//! Temperature on a real mounted pool, as `scripts/demo-temperature` shows
//! it: six loop devices (direct IO), `mkfs-dfs --policy replication:2`,
//! `mount-dfs -o test_clock`, one file read often through the mount
//! (O_DIRECT, so the reads reach the daemon), one left alone, time moved
//! with `dfs advance-clock`. Asserts: the busy file's extents are listed
//! hot and migrate to `replication:3` on the next read, the idle file's are
//! listed cold and move to `erasure:4+2` on a read, all four migrations are
//! Done records in `dfs policy-status --json` (also after unmount, from the
//! devices), and both files read back byte for byte. A mount without the
//! option (or no mount) refuses to move its clock. `dfs temperature-config`
//! through the mount changes what the running mount does at once and is
//! kept in the pool.
//!
//! Needs root, loop devices and /dev/fuse; skips with a message otherwise.
//! The mount is unmounted and the loop devices detached by guards, also
//! when a step fails.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::mounts::UnmountOnDrop;
use common::{disk_tempdir, require_root_and_loop, LoopDevice};
use dynamicfs::temperature::SettingRow;
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
const MOUNT: &str = env!("CARGO_BIN_EXE_mount-dfs");
const DFS: &str = env!("CARGO_BIN_EXE_dfs");
const MIB: usize = 1 << 20;

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

fn ok_json(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn dfs_json(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    ok_json(&run(DFS, &a))
}

/// Read a whole file with O_DIRECT (past the page cache, into the daemon).
fn read_direct(path: &Path) -> Vec<u8> {
    let mut f = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path).unwrap();
    let layout = std::alloc::Layout::from_size_align(MIB, 4096).unwrap();
    // SAFETY: non-zero size; freed below with the same layout.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!p.is_null());
    // SAFETY: p is valid for MIB bytes until the dealloc below.
    let buf = unsafe { std::slice::from_raw_parts_mut(p, MIB) };
    let mut out = Vec::new();
    loop {
        let n = f.read(buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(p, layout) };
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|k| ((k as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed).collect()
}

/// Policies of `path`'s extents by offset.
fn policies(mnt: &str, path: &str) -> Vec<String> {
    let v = dfs_json(&["list-extents", "--pool", mnt]);
    let mut rows: Vec<(u64, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == path)
        .map(|e| (e["offset"].as_u64().unwrap(), e["policy"].as_str().unwrap().to_string()))
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, p)| p).collect()
}

fn wait_policies(mnt: &str, path: &str, want: &str) {
    let start = Instant::now();
    loop {
        let p = policies(mnt, path);
        if !p.is_empty() && p.iter().all(|x| x == want) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{path} still {p:?}, want {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn advance(mnt: &str, secs: u32) {
    dfs_json(&["advance-clock", "--pool", mnt, "--seconds", &secs.to_string()]);
}

/// The temperature records of `policy-status --json`: (policy, state, message).
fn temperature_history(pool: &str) -> Vec<(String, String, String)> {
    dfs_json(&["policy-status", "--pool", pool])
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["scope"].as_str().unwrap().ends_with("(temperature)"))
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            (s("policy"), s("state"), s("message"))
        })
        .collect()
}

#[test]
fn hot_file_moves_to_replication_cold_file_to_erasure_through_a_mount() {
    if !require_root_and_loop() || !Path::new("/dev/fuse").exists() {
        common::skip::unavailable("needs root, loop devices and /dev/fuse");
        return;
    }
    let mut rig = Rig::new(6, "replication:2", "");
    let mnt = rig.mnt.clone();
    let hot = pattern(2 * MIB, 1);
    let cold = pattern(2 * MIB, 2);
    let hot_path = rig.write("hot.bin", &hot);
    let cold_path = rig.write("cold.bin", &cold);
    assert_eq!(policies(&mnt, "/hot.bin"), ["replication:2", "replication:2"]);

    // Three busy hours for hot.bin.
    for _ in 0..3 {
        for _ in 0..6 {
            assert_eq!(read_direct(&hot_path), hot);
        }
        advance(&mnt, 3600);
    }
    let listed = dfs_json(&["list-hot", "--pool", &mnt]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for s in listed {
        assert_eq!(s["path"], "/hot.bin", "{s}");
        assert_eq!((s["hmm_state"].as_str(), s["class"].as_str()), (Some("hot"), Some("hot")), "{s}");
        assert_eq!(s["current_policy"], "replication:2", "{s}");
        assert_eq!(s["target_policy"], "replication:3", "{s}");
        assert!(s["reads"].as_f64().unwrap() >= 15.0, "{s}");
    }
    let id = listed[0]["id"].as_str().unwrap();
    let st = dfs_json(&["extent-stats", "--pool", &mnt, "--extent", id]);
    assert_eq!((st["id"].as_str(), st["hmm_state"].as_str()), (Some(id), Some("hot")), "{st}");
    // Listing moved nothing: the next read queues, the mount's worker migrates.
    assert_eq!(policies(&mnt, "/hot.bin"), ["replication:2", "replication:2"]);
    assert_eq!(read_direct(&hot_path), hot);
    wait_policies(&mnt, "/hot.bin", "replication:3");
    assert_eq!(policies(&mnt, "/cold.bin"), ["replication:2", "replication:2"]);

    // Three days: hot.bin stays busy, cold.bin is never read.
    for _ in 0..72 {
        for _ in 0..5 {
            read_direct(&hot_path);
        }
        advance(&mnt, 3600);
    }
    let listed = dfs_json(&["list-cold", "--pool", &mnt]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for s in listed {
        assert_eq!(s["path"], "/cold.bin", "{s}");
        assert_eq!((s["hmm_state"].as_str(), s["threshold_class"].as_str()), (Some("cold"), Some("cold")), "{s}");
        assert_eq!(s["target_policy"], "erasure:4+2", "{s}");
    }
    assert_eq!(read_direct(&cold_path), cold);
    wait_policies(&mnt, "/cold.bin", "erasure:4+2");
    // hot.bin stayed hot and where it was.
    assert_eq!(policies(&mnt, "/hot.bin"), ["replication:3", "replication:3"]);

    let check_history = |pool: &str| {
        let h = temperature_history(pool);
        assert_eq!(h.len(), 4, "{h:?}");
        let hot_moves = h.iter().filter(|(p, s, m)| p == "replication:3" && s == "done" && m.starts_with("hot:"));
        let cold_moves = h.iter().filter(|(p, s, m)| p == "erasure:4+2" && s == "done" && m.starts_with("cold:"));
        assert_eq!((hot_moves.count(), cold_moves.count()), (2, 2), "{h:?}");
    };
    check_history(&mnt);
    assert_eq!(read_direct(&hot_path), hot);
    assert_eq!(read_direct(&cold_path), cold);

    // Unmounted: the history and the policies are in the pool itself.
    rig.unmount();
    let devs = &rig.devs;
    check_history(&devs[1]);
    assert_eq!(policies(&devs[1], "/cold.bin"), ["erasure:4+2", "erasure:4+2"]);
    // No mount: no clock to move (one line, exit 1).
    let o = run(DFS, &["advance-clock", "--pool", &devs[0], "--seconds", "60"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("test_clock"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_mount_without_test_clock_refuses_to_move_its_clock() {
    if !require_root_and_loop() || !Path::new("/dev/fuse").exists() {
        common::skip::unavailable("needs root, loop devices and /dev/fuse");
        return;
    }
    let loops: Vec<LoopDevice> = (0..2).map(|_| LoopDevice::new(64 << 20).unwrap()).collect();
    let devs: Vec<String> = loops.iter().map(|l| l.path().display().to_string()).collect();
    ok_json(&run(MKFS, &["--device", &devs[0], "--device", &devs[1], "--json"]));
    let dir = disk_tempdir();
    let mnt_path = dir.path().join("mnt");
    fs::create_dir(&mnt_path).unwrap();
    let mnt = mnt_path.display().to_string();
    let opts = format!("log={}", dir.path().join("dfs.log").display());
    let o = run(MOUNT, &[&devs[0], &mnt, "-o", &opts]);
    assert!(o.status.success(), "mount: {}", String::from_utf8_lossy(&o.stderr));
    let _guard = UnmountOnDrop(mnt_path.clone());
    let o = run(DFS, &["advance-clock", "--pool", &mnt, "--seconds", "3600"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("-o test_clock") && err.lines().count() == 1, "{err}");
}

/// A pool of loop devices made by `mkfs-dfs --policy POLICY`, mounted with
/// `-o test_clock,log=FILE` and `extra` options. Fields drop in order: the
/// unmount guard, then the directory, then the loop devices.
struct Rig {
    guard: Option<UnmountOnDrop>,
    mnt_path: std::path::PathBuf,
    mnt: String,
    log: std::path::PathBuf,
    devs: Vec<String>,
    _dir: tempfile::TempDir,
    _loops: Vec<LoopDevice>,
}

impl Rig {
    fn new(members: usize, policy: &str, extra: &str) -> Rig {
        let loops: Vec<LoopDevice> = (0..members).map(|_| LoopDevice::new(256 << 20).unwrap()).collect();
        let devs: Vec<String> = loops.iter().map(|l| l.path().display().to_string()).collect();
        let mut mkfs: Vec<&str> = vec!["--policy", policy, "--json"];
        for d in &devs {
            mkfs.extend(["--device", d]);
        }
        ok_json(&run(MKFS, &mkfs));
        let dir = disk_tempdir();
        let mnt_path = dir.path().join("mnt");
        fs::create_dir(&mnt_path).unwrap();
        let mnt = mnt_path.display().to_string();
        let log = dir.path().join("dfs.log");
        let opts = format!("test_clock,log={}{extra}", log.display());
        let o = run(MOUNT, &[&devs[0], &mnt, "-o", &opts]);
        assert!(o.status.success(), "mount: {}", String::from_utf8_lossy(&o.stderr));
        let guard = Some(UnmountOnDrop(mnt_path.clone()));
        Rig { guard, mnt_path, mnt, log, devs, _dir: dir, _loops: loops }
    }

    fn write(&self, name: &str, data: &[u8]) -> std::path::PathBuf {
        let path = self.mnt_path.join(name);
        let mut f = File::create(&path).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
        path
    }

    /// Unmount and wait until the daemon closed the pool and let it go.
    fn unmount(&mut self) {
        assert!(Command::new("umount").arg(&self.mnt_path).status().unwrap().success());
        let start = Instant::now();
        while !fs::read_to_string(&self.log).unwrap_or_default().contains("unmounted; pool closed") {
            assert!(start.elapsed() < Duration::from_secs(20), "daemon did not close the pool");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.guard = None;
        let start = Instant::now();
        // The daemon may still hold the pool lock for a moment after its last log line.
        while !run(DFS, &["status", "--pool", &self.devs[1], "--json"]).status.success() {
            assert!(start.elapsed() < Duration::from_secs(10), "the pool stayed locked");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `temperature-config --json` of `pool`: key → (value, source).
fn temperature_config(pool: &str, args: &[&str]) -> std::collections::BTreeMap<String, (String, String)> {
    let mut a = vec!["temperature-config", "--pool", pool];
    a.extend_from_slice(args);
    let rows: Vec<SettingRow> = serde_json::from_value(dfs_json(&a)).unwrap();
    rows.into_iter().map(|r| (r.key, (r.value, r.source))).collect()
}

#[test]
fn temperature_config_through_the_mount_applies_at_once_and_stays_in_the_pool() {
    if !require_root_and_loop() || !Path::new("/dev/fuse").exists() {
        eprintln!("skipping: needs root, loop devices and /dev/fuse");
        return;
    }
    let mut rig = Rig::new(6, "replication:2", "");
    let data = pattern(2 * MIB, 3);
    let path = rig.write("f.bin", &data);
    // Cold targets erasure:3+2 from now on, in the running mount.
    let cfg = temperature_config(&rig.mnt, &["--set", "cold_policy=erasure:3+2", "--set", "migration_rate=50"]);
    assert_eq!(cfg["cold_policy"], ("erasure:3+2".into(), "pool".into()));
    advance(&rig.mnt, 3 * 86_400);
    let cold = dfs_json(&["list-cold", "--pool", &rig.mnt]);
    let cold = cold.as_array().unwrap();
    assert_eq!(cold.len(), 2, "{cold:?}");
    assert!(cold.iter().all(|s| s["target_policy"] == "erasure:3+2"), "{cold:?}");
    assert_eq!(read_direct(&path), data);
    wait_policies(&rig.mnt, "/f.bin", "erasure:3+2");
    // Refused through the mount too: a bad value (usage, 2) and a set that
    // does not hold together (1, one line); nothing changed.
    let o = run(DFS, &["temperature-config", "--pool", &rig.mnt, "--set", "cold_policy=erasure:3"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = run(DFS, &["temperature-config", "--pool", &rig.mnt, "--set", "hot_recent_secs=100000"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warm_recent_secs (86400) is below hot_recent_secs (100000)") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(temperature_config(&rig.mnt, &[]), cfg);
    assert_eq!(read_direct(&path), data);

    // Unmounted: the setting is in the pool, seen from any member.
    rig.unmount();
    assert_eq!(temperature_config(&rig.devs[3], &[]), cfg);
    assert_eq!(policies(&rig.devs[1], "/f.bin"), ["erasure:3+2", "erasure:3+2"]);
}

/// `-o policy=P` sets the pool's default policy; it does not pin the root
/// directory (which would pin every file created under it and so turn
/// temperature migration off for the whole pool).
#[test]
fn a_pool_mounted_with_policy_still_migrates_by_temperature() {
    if !require_root_and_loop() || !Path::new("/dev/fuse").exists() {
        eprintln!("skipping: needs root, loop devices and /dev/fuse");
        return;
    }
    let mut rig = Rig::new(6, "replication:3", ",policy=replication:2");
    let data = pattern(2 * MIB, 4);
    fs::create_dir(rig.mnt_path.join("d")).unwrap();
    let path = rig.write("d/f.bin", &data);
    // New extents take the mount's policy: it is the pool default now.
    assert_eq!(policies(&rig.mnt, "/d/f.bin"), ["replication:2", "replication:2"]);
    advance(&rig.mnt, 3 * 86_400);
    let cold = dfs_json(&["list-cold", "--pool", &rig.mnt]);
    let cold = cold.as_array().unwrap();
    assert_eq!(cold.len(), 2, "{cold:?}");
    for s in cold {
        assert_eq!((s["pinned"].as_bool(), s["target_policy"].as_str()), (Some(false), Some("erasure:4+2")), "{s}");
    }
    assert_eq!(read_direct(&path), data);
    wait_policies(&rig.mnt, "/d/f.bin", "erasure:4+2");
    assert_eq!(read_direct(&path), data);
    assert_eq!(temperature_history(&rig.mnt).len(), 2);

    // In the metadata: the default changed, nothing is pinned.
    rig.unmount();
    let source = dynamicfs::discover::PoolSource::parse(&rig.devs[0]).unwrap();
    let opts = dynamicfs::engine::PoolOptions { read_only: true, ..Default::default() };
    let (pool, _) = dynamicfs::discover::open_pool(&source, &Default::default(), opts).unwrap();
    let state = pool.state_snapshot();
    assert_eq!(state.config.default_policy, "replication:2".parse::<dfs_format::Policy>().unwrap().encode());
    let pinned: Vec<_> = state.inodes.iter().filter(|(_, i)| i.policy.is_some()).map(|(ino, _)| *ino).collect();
    assert!(pinned.is_empty(), "pinned inodes: {pinned:?}");
}
