//! `dfs` administration of a MOUNTED pool through its control socket, as an
//! operator runs it: mkfs three image files of different sizes, mount,
//! write, `list-disks --json` on the mount point, `add-disk` of a fourth
//! image online, bad input (unknown member, nonsense policy, unsatisfiable
//! policy, the pool's own member as a new disk) each one line and exit 1
//! with nothing changed, `fail-disk` then the background rebuild, and
//! `remove-disk --wait` while the file stays readable; the data reads back
//! after a remount. Needs root and /dev/fuse; skips otherwise. A guard
//! unmounts (lazily) if a step fails.

#[path = "../../tests/common/skip.rs"]
mod skip;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
const MOUNT: &str = env!("CARGO_BIN_EXE_mount-dfs");
const DFS: &str = env!("CARGO_BIN_EXE_dfs");

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

fn ok(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{:?}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

fn one_line_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("dfs: error: ") && err.contains(needle), "{err}");
}

struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn wait_unmounted(log: &Path, n: usize) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if fs::read_to_string(log).unwrap_or_default().matches("unmounted; pool closed").count() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("daemon did not close the pool");
}

#[test]
fn administer_a_mounted_pool() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() {
        skip::unavailable("needs root and /dev/fuse");
        return;
    }
    let dir = tempfile::Builder::new().prefix("dfs-admin-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let imgs: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("m{i}.img"))).collect();
    for (i, p) in imgs.iter().enumerate() {
        File::create(p).unwrap().set_len((64 + 32 * i as u64) << 20).unwrap();
    }
    let s = |p: &Path| p.to_str().unwrap().to_string();
    ok(&run(MKFS, &["-q", "-d", &s(&imgs[0]), "-d", &s(&imgs[1]), "-d", &s(&imgs[2]), "-p", "replication:2"]));
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let log = dir.path().join("dfs.log");
    let _guard = Guard(mnt.clone());
    let opts = format!("device={},device={},log={}", s(&imgs[1]), s(&imgs[2]), s(&log));
    ok(&run(MOUNT, &[&s(&imgs[0]), &s(&mnt), "-o", &opts]));
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut f = File::create(mnt.join("file")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let m = s(&mnt);

    let disks = ok(&run(DFS, &["list-disks", "--pool", &m, "--json"]));
    assert_eq!(disks.as_array().unwrap().len(), 3);
    assert!(disks.as_array().unwrap().iter().all(|d| d["errors"] == 0), "{disks}");
    let table = String::from_utf8(run(DFS, &["list-disks", "--pool", &m]).stdout).unwrap();
    assert!(table.lines().next().unwrap().contains(" ERRORS "), "{table}");
    // Online add, then bad input.
    let added = ok(&run(DFS, &["add-disk", "--pool", &m, "--disk", &s(&imgs[3]), "--json"]));
    assert_eq!(added["index"], 3);
    one_line_error(&run(DFS, &["add-disk", "--pool", &m, "--disk", &s(&imgs[1])]), "m1.img");
    one_line_error(&run(DFS, &["fail-disk", "--pool", &m, "--disk", "9"]), "no member 9");
    one_line_error(&run(DFS, &["change-policy", "--pool", &m, "--policy", "replication:banana"]), "banana");
    one_line_error(&run(DFS, &["change-policy", "--pool", &m, "--policy", "erasure:4+2"]), "cannot be satisfied");
    assert_eq!(run(DFS, &["list-disks", "--pool", &m, "--bogus"]).status.code(), Some(2));
    let disks = ok(&run(DFS, &["list-disks", "--pool", &m, "--json"]));
    assert_eq!(disks.as_array().unwrap().len(), 4);
    assert!(disks.as_array().unwrap().iter().all(|d| d["state"] == "online"), "{disks}");

    // Fail one member: the mount's worker rebuilds its extents.
    ok(&run(DFS, &["fail-disk", "--pool", &m, "--disk", &s(&imgs[1])]));
    let start = Instant::now();
    loop {
        let st = ok(&run(DFS, &["rebuild-status", "--pool", &m, "--json"]));
        let red = ok(&run(DFS, &["show-redundancy", "--pool", &m, "--json"]));
        if red.as_array().unwrap().iter().all(|l| l["degraded_extents"] == 0) {
            assert!(st["rebuild"]["fragments"].as_u64().unwrap() > 0, "{st}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "rebuild stuck: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(fs::read(mnt.join("file")).unwrap(), data);

    // Drain member 0 away while the file is read.
    ok(&run(DFS, &["remove-disk", "--pool", &m, "--disk", "0", "--wait"]));
    assert_eq!(fs::read(mnt.join("file")).unwrap(), data);
    // The mount's source (member 0) has left the pool: the mount point
    // still finds the mount (by its control socket), and so does a member.
    let disks = ok(&run(DFS, &["list-disks", "--pool", &m, "--json"]));
    assert_eq!(disks[0]["state"], "removed", "{disks}");
    let disks = ok(&run(DFS, &["list-disks", "--pool", &s(&imgs[2]), "--json"]));
    assert_eq!(disks[0]["state"], "removed", "{disks}");

    // Remount from a remaining member: the data is there.
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    wait_unmounted(&log, 1);
    let opts = format!("device={},device={},log={},degraded", s(&imgs[2]), s(&imgs[3]), s(&log));
    ok(&run(MOUNT, &[&s(&imgs[2]), &s(&mnt), "-o", &opts]));
    assert_eq!(fs::read(mnt.join("file")).unwrap(), data);
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    wait_unmounted(&log, 2);
}
