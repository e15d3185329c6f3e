//! `mount-dfs` (mount.dfs) and `dfs` end to end, as an operator runs them:
//! mkfs three image files, mount (the helper returns once the mount is
//! live and the daemon has detached), write and fsync, `dfs status` on the
//! mount point, `umount`, mount again from one member only (the others
//! found through the member table's path hints), read back, once more
//! read-only through `dfs mount`, and finally fsync then `kill -9` of the
//! daemon: the next mount opens cleanly with the fsynced data.
//!
//! Needs root and /dev/fuse; skips with a message otherwise. A guard
//! unmounts (lazily) if a step fails.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::mounts::{is_mounted as mounted, UnmountOnDrop};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
const MOUNT: &str = env!("CARGO_BIN_EXE_mount-dfs");
const DFS: &str = env!("CARGO_BIN_EXE_dfs");

fn available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let ok = unsafe { libc::geteuid() } == 0 && Path::new("/dev/fuse").exists();
    if !ok {
        common::skip::unavailable("needs root and /dev/fuse");
    }
    ok
}

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

/// Wait until the daemon logged that it closed the pool (`n`-th time).
fn wait_closed(log: &Path, n: usize) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.matches("unmounted; pool closed").count() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the daemon did not close the pool:\n{}", fs::read_to_string(log).unwrap_or_default());
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn mount_write_umount_remount_read() {
    if !available() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("dfs-mount-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let imgs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("m{i}.img"))).collect();
    for (i, p) in imgs.iter().enumerate() {
        File::create(p).unwrap().set_len((64 + 64 * (i as u64 / 2)) << 20).unwrap();
    }
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&run(MKFS, &["-q", "--label", "e2e", "-d", &s(&imgs[0]), "-d", &s(&imgs[1]), "-d", &s(&imgs[2])]));
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let log = dir.path().join("dfs.log");
    let _guard = UnmountOnDrop(mnt.clone());

    // Errors: one line, exit 1.
    let o = run(MOUNT, &[&s(&imgs[0]), &s(&mnt), "-o", "frobnicate"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("mount.dfs: error: unknown mount option"), "{o:?}");
    // A member moved away from where the member table says it was: refused
    // without -o degraded (or -o device= naming it).
    let moved = dir.path().join("moved.img");
    fs::rename(&imgs[1], &moved).unwrap();
    let o = run(MOUNT, &[&s(&imgs[0]), &s(&mnt)]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("member(s) 1 not found"), "{o:?}");
    fs::rename(&moved, &imgs[1]).unwrap();
    let o = run(MOUNT, &[&s(&log), &s(&mnt)]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");

    // Mount: returns once live.
    let opts = format!("device={},device={},log={}", s(&imgs[1]), s(&imgs[2]), s(&log));
    ok(&run(MOUNT, &[&s(&imgs[0]), &s(&mnt), "-o", &opts]));
    assert!(mounted(&mnt), "mountinfo lists the mount when the helper returns");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut f = File::create(mnt.join("file")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::create_dir(mnt.join("d")).unwrap();

    // Status on the mount point.
    let o = run(DFS, &["status", "--pool", &s(&mnt), "--json"]);
    ok(&o);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["label"], "e2e");
    assert_eq!(st["members"].as_array().unwrap().len(), 3);
    assert_eq!(st["files"], 1);
    // The mount answers through its control socket: live figures.
    assert_eq!(st["durable_state_only"], false);
    assert_eq!(st["mounted_on"].as_str(), Some(s(&mnt).as_str()));

    // umount: the daemon flushes, checkpoints and exits.
    ok(&run("umount", &[&s(&mnt)]));
    wait_closed(&log, 1);

    // Remount from one member: the member table's path hints find the others.
    ok(&run(MOUNT, &[&s(&imgs[2]), &s(&mnt), "-o", &format!("log={}", s(&log))]));
    assert_eq!(fs::read(mnt.join("file")).unwrap(), data);
    assert!(mnt.join("d").is_dir());
    ok(&run("umount", &[&s(&mnt)]));
    wait_closed(&log, 2);

    // Read-only through `dfs mount`: writes refused.
    ok(&run(DFS, &["mount", "--pool", &s(&imgs[1]), "--mountpoint", &s(&mnt), "-o", &format!("ro,log={}", s(&log))]));
    assert_eq!(fs::read(mnt.join("file")).unwrap(), data);
    assert_eq!(fs::write(mnt.join("new"), b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));
    ok(&run("umount", &[&s(&mnt)]));
    wait_closed(&log, 3);

    // fsync, then kill -9 the daemon: the next mount opens cleanly and the
    // fsynced data is there.
    let o = run(MOUNT, &[&s(&imgs[0]), &s(&mnt), "-v", "-o", &format!("log={},commit=0", s(&log))]);
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let pid: i32 = out.rsplit("daemon pid ").next().and_then(|t| t.trim().trim_end_matches(')').parse().ok()).unwrap();
    let mut f = File::create(mnt.join("synced")).unwrap();
    f.write_all(&data[..1_500_000]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // SAFETY: kill of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let start = Instant::now();
    // SAFETY: kill(pid, 0) only checks that it exists.
    while unsafe { libc::kill(pid, 0) } == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&run("umount", &[&s(&mnt)]));
    ok(&run(MOUNT, &[&s(&imgs[0]), &s(&mnt), "-o", &format!("log={}", s(&log))]));
    assert_eq!(fs::read(mnt.join("synced")).unwrap(), &data[..1_500_000]);
    assert_eq!(fs::read(mnt.join("file")).unwrap(), data);
    ok(&run("umount", &[&s(&mnt)]));
    wait_closed(&log, 4);
}

fn getxattr(p: &Path, name: &str) -> Option<String> {
    let (p, n) = (std::ffi::CString::new(p.to_str().unwrap()).unwrap(), std::ffi::CString::new(name).unwrap());
    let mut buf = vec![0u8; 256];
    // SAFETY: valid NUL-terminated strings and a buffer of its length.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| String::from_utf8_lossy(&buf[..r as usize]).into_owned())
}

/// `-o policy=P` sets the pool's default policy (kept across mounts, shown
/// by getfattr on files that pin nothing), and one the members can't
/// satisfy is refused with one line and exit 1, leaving nothing mounted.
#[test]
fn policy_option_sets_the_pool_default() {
    if !available() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("dfs-mount-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let imgs: Vec<PathBuf> = (0..3).map(|i| dir.path().join(format!("m{i}.img"))).collect();
    for (i, p) in imgs.iter().enumerate() {
        File::create(p).unwrap().set_len((48 + 32 * i as u64) << 20).unwrap();
    }
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&run(MKFS, &["-q", "-d", &s(&imgs[0]), "-d", &s(&imgs[1]), "-d", &s(&imgs[2])]));
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let log = dir.path().join("dfs.log");
    let _guard = UnmountOnDrop(mnt.clone());

    let o = run(MOUNT, &[&s(&imgs[0]), &s(&mnt), "-o", &format!("policy=replication:4,log={}", s(&log))]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("policy=replication:4") && err.lines().count() == 1, "{err}");
    assert!(!mounted(&mnt));

    ok(&run(MOUNT, &[&s(&imgs[1]), &s(&mnt), "-o", &format!("policy=erasure:2+1,log={}", s(&log))]));
    fs::write(mnt.join("f"), vec![7u8; 2_500_000]).unwrap();
    assert_eq!(getxattr(&mnt.join("f"), "user.dfs.policy").as_deref(), Some("erasure:2+1"));
    assert_eq!(getxattr(&mnt, "user.dfs.policy").as_deref(), Some("erasure:2+1"));
    ok(&run("umount", &[&s(&mnt)]));
    wait_closed(&log, 1);
    // Without the option the default stays what the last one set.
    ok(&run(MOUNT, &[&s(&imgs[2]), &s(&mnt), "-o", &format!("log={}", s(&log))]));
    assert_eq!(getxattr(&mnt.join("f"), "user.dfs.policy").as_deref(), Some("erasure:2+1"));
    assert_eq!(fs::read(mnt.join("f")).unwrap(), vec![7u8; 2_500_000]);
    ok(&run("umount", &[&s(&mnt)]));
    wait_closed(&log, 2);
}
