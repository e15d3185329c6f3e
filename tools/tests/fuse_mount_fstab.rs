//! mount(8), fstab and a killed daemon, on loop devices (direct IO), with
//! the tools an operator runs.
//!
//! - `dfs-inspect udev` prints the udev properties of a member (pool UUID
//!   as ID_FS_UUID, member UUID as ID_FS_UUID_SUB) and fails on anything
//!   else, so udev imports nothing for it.
//! - `mount -t dfs DEV DIR` (a loop device, then a directory member) and
//!   `mount --fstab FILE DIR` with `UUID=<pool>` and with a device path.
//!   mount(8) resolves `UUID=` through libblkid, which does not know
//!   DynamicFS: without the /dev/disk/by-uuid link that
//!   scripts/udev/61-dfs.rules makes it says "can't find UUID=..." (asserted);
//!   with it, the line mounts. This machine runs no udev, so the test makes
//!   that one link itself, as the rule would, and removes it.
//! - `mount.dfs UUID=<pool> DIR` finds the members by itself.
//! - Every `umount` flushes what was only closed (never fsynced) and
//!   releases the pool: the daemon exits and the next mount opens cleanly
//!   with the data.
//! - Many small files closed then fsync(dir), and a file fsynced, then
//!   `kill -9` of the daemon: after a remount all of them are intact, a
//!   file written after that is either gone or a prefix of what was
//!   written (never wrong bytes), and fsck finds the pool clean.
//!
//! mount(8) looks for its helper only in /sbin (util-linux 2.38), so the
//! first test links /sbin/mount.dfs to the binary under test when there is
//! none (as scripts/install.sh does) and removes that link at the end; if
//! another mount.dfs is installed it skips the mount(8) part. Needs root,
//! /dev/fuse and loop devices; skips with a message otherwise. Guards
//! unmount and detach, also on panic.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::mounts::{is_mounted as mounted, UnmountOnDrop};
use common::{require_root_and_loop, LoopDevice};

const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
const MOUNT: &str = env!("CARGO_BIN_EXE_mount-dfs");
const INSPECT: &str = env!("CARGO_BIN_EXE_dfs-inspect");
const FSCK: &str = env!("CARGO_BIN_EXE_fsck-dfs");

const HELPER: &str = "/sbin/mount.dfs";
const BY_UUID: &str = "/dev/disk/by-uuid";

fn available() -> bool {
    require_root_and_loop() && {
        let fuse = Path::new("/dev/fuse").exists();
        if !fuse {
            common::skip::unavailable("needs /dev/fuse");
        }
        fuse
    }
}

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Paths this test created outside its temp dirs (a symlink, then
/// directories), removed on drop in reverse order; directories only if
/// empty.
#[derive(Default)]
struct Created(Vec<PathBuf>);

impl Created {
    fn dir(&mut self, p: &Path) {
        if !p.exists() {
            fs::create_dir(p).unwrap();
            self.0.push(p.to_path_buf());
        }
    }

    fn symlink(&mut self, target: &Path, link: &Path) {
        std::os::unix::fs::symlink(target, link).unwrap();
        self.0.push(link.to_path_buf());
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = if p.is_symlink() { fs::remove_file(p) } else { fs::remove_dir(p) };
        }
    }
}

/// Wait until the daemon logged its `n`-th "pool closed" (umount done).
fn wait_closed(log: &Path, n: usize) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.matches("unmounted; pool closed").count() >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the daemon did not close the pool:\n{}", fs::read_to_string(log).unwrap_or_default());
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8).collect()
}

/// `KEY=value` lines of `dfs-inspect udev DEV`.
fn udev_props(dev: &Path) -> std::collections::BTreeMap<String, String> {
    ok(&run(INSPECT, &["udev", &s(dev)]))
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not KEY=value: {l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn mount_t_dfs_fstab_and_uuid_on_loop_devices() {
    if !available() {
        return;
    }
    let loops: Vec<LoopDevice> = (0..3).map(|_| LoopDevice::new(256 << 20).unwrap()).collect();
    let stranger = LoopDevice::new(64 << 20).unwrap();
    let dir = common::disk_tempdir();
    let dmember = dir.path().join("dmember");
    let dm = format!("{}:256M", s(&dmember));
    let (l0, l1, l2) = (s(loops[0].path()), s(loops[1].path()), s(loops[2].path()));
    ok(&run(MKFS, &["-q", "--label", "fstab test", "-d", &l0, "-d", &l1, "-d", &l2, "--dir", &dm]));

    // The udev probe: same pool UUID on every member, its own member UUID each.
    let props: Vec<_> = loops.iter().map(|l| udev_props(l.path())).collect();
    let pool = props[0]["ID_FS_UUID"].clone();
    let sb: serde_json::Value = serde_json::from_str(&ok(&run(INSPECT, &["superblock", &l0, "--json"]))).unwrap();
    assert_eq!(sb["pool_uuid"].as_str(), Some(pool.as_str()), "{sb}");
    for p in &props {
        assert_eq!(p["ID_FS_TYPE"], "dfs");
        assert_eq!(p["ID_FS_USAGE"], "filesystem");
        assert_eq!(p["ID_FS_UUID"], pool);
        assert_eq!(p["ID_FS_UUID_ENC"], pool);
        assert_eq!(p["ID_FS_LABEL"], "fstab_test");
        assert_eq!(p["ID_FS_LABEL_ENC"], "fstab\\x20test");
    }
    let subs: std::collections::BTreeSet<_> = props.iter().map(|p| p["ID_FS_UUID_SUB"].clone()).collect();
    assert_eq!(subs.len(), 3, "{props:?}");
    let o = run(INSPECT, &["udev", &s(stranger.path())]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(o.stdout.is_empty(), "nothing for udev to import: {o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1, "{o:?}");

    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _guard = UnmountOnDrop(mnt.clone());
    let log = dir.path().join("dfs.log");
    let logopt = format!("log={}", s(&log));
    let mut closes = 0;
    let umount = |closes: &mut usize| {
        ok(&run("umount", &[&s(&mnt)]));
        *closes += 1;
        wait_closed(&log, *closes);
        assert!(!mounted(&mnt));
    };

    // mount.dfs UUID=: finds the members by itself (block device scan, then
    // the member table's path hints for the directory member).
    ok(&run(MOUNT, &[&format!("UUID={pool}"), &s(&mnt), "-o", &logopt]));
    let a = pattern(2_500_000, 1);
    fs::write(mnt.join("a"), &a).unwrap();
    umount(&mut closes);

    let mut created = Created::default();
    match fs::read_link(HELPER) {
        Err(_) if !Path::new(HELPER).exists() => created.symlink(Path::new(MOUNT), Path::new(HELPER)),
        Ok(t) if t == Path::new(MOUNT) => {}
        _ => {
            eprintln!("skipping the mount(8) part: {HELPER} is another build's");
            return;
        }
    }

    // mount -t dfs with a member device: what was only closed before the
    // umount is there.
    ok(&run("mount", &["-t", "dfs", "-o", &format!("{logopt},noatime,nodev"), &l1, &s(&mnt)]));
    assert!(mounted(&mnt));
    assert_eq!(fs::read(mnt.join("a")).unwrap(), a);
    let b = pattern(700_000, 2);
    fs::write(mnt.join("b"), &b).unwrap();
    umount(&mut closes);

    // mount -t dfs with the directory member.
    ok(&run("mount", &["-t", "dfs", "-o", &logopt, &s(&dmember), &s(&mnt)]));
    assert_eq!(fs::read(mnt.join("b")).unwrap(), b);
    umount(&mut closes);

    // An fstab line with UUID=: libblkid can't resolve it without the link.
    let fstab = dir.path().join("fstab");
    // (Not `nofail` here: with it mount(8) says nothing and exits 0.)
    let line =
        |extra: &str| format!("# test\nUUID={pool} {} dfs {logopt},_netdev,x-systemd.foo=1{extra} 0 0\n", s(&mnt));
    fs::write(&fstab, line("")).unwrap();
    let o = run("mount", &["--fstab", &s(&fstab), &s(&mnt)]);
    assert!(!o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("can't find UUID={pool}")), "{o:?}");
    assert!(!mounted(&mnt));
    // With the link 61-dfs.rules makes (here by hand: no udev on this machine).
    let mut by_uuid = Created::default();
    by_uuid.dir(Path::new("/dev/disk"));
    by_uuid.dir(Path::new(BY_UUID));
    let link = Path::new(BY_UUID).join(&props[2]["ID_FS_UUID_ENC"]);
    by_uuid.symlink(loops[2].path(), &link);
    fs::write(&fstab, line(",nofail")).unwrap();
    ok(&run("mount", &["--fstab", &s(&fstab), &s(&mnt)]));
    assert!(mounted(&mnt));
    assert_eq!(fs::read(mnt.join("a")).unwrap(), a);
    let c = pattern(3_000_000, 3);
    fs::write(mnt.join("c"), &c).unwrap();
    umount(&mut closes);
    // `mount UUID=... DIR` (no fstab) resolves the same way.
    ok(&run("mount", &["-t", "dfs", "-o", &logopt, &format!("UUID={pool}"), &s(&mnt)]));
    assert_eq!(fs::read(mnt.join("c")).unwrap(), c);
    umount(&mut closes);
    drop(by_uuid);

    // An fstab line naming a device, with `ro`: mounted read-only.
    fs::write(&fstab, format!("{l0} {} dfs ro,{logopt} 0 0\n", s(&mnt))).unwrap();
    ok(&run("mount", &["--fstab", &s(&fstab), &s(&mnt)]));
    assert_eq!(fs::read(mnt.join("b")).unwrap(), b);
    assert_eq!(fs::write(mnt.join("new"), b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));
    umount(&mut closes);

    // Every umount left a clean pool.
    let o = run(FSCK, &["-n", &l0]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    drop(created);
}

#[test]
fn fsync_and_fsyncdir_survive_kill_9_on_loop_devices() {
    if !available() {
        return;
    }
    let loops: Vec<LoopDevice> = (0..3).map(|_| LoopDevice::new(256 << 20).unwrap()).collect();
    let devs: Vec<String> = loops.iter().map(|l| s(l.path())).collect();
    ok(&run(MKFS, &["-q", "-p", "erasure:2+1", "-d", &devs[0], "-d", &devs[1], "-d", &devs[2]]));
    let dir = common::disk_tempdir();
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let _guard = UnmountOnDrop(mnt.clone());
    let log = dir.path().join("dfs.log");
    // commit=0: nothing becomes durable but by fsync, fsyncdir and umount.
    let out = ok(&run(MOUNT, &[&devs[0], &s(&mnt), "-v", "-o", &format!("log={},commit=0", s(&log))]));
    let pid: i32 = out.rsplit("daemon pid ").next().and_then(|t| t.trim().trim_end_matches(')').parse().ok()).unwrap();

    // A file fsynced.
    let synced = pattern(3_300_000, 7);
    let mut f = File::create(mnt.join("synced")).unwrap();
    f.write_all(&synced).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Small files only closed, then fsync of their directory.
    fs::create_dir(mnt.join("small")).unwrap();
    for i in 0..300u32 {
        fs::write(mnt.join("small").join(format!("f{i}")), pattern(4096 + i as usize, i)).unwrap();
    }
    File::open(mnt.join("small")).unwrap().sync_all().unwrap();
    // Written after that, never synced: may be lost, never wrong.
    let late = pattern(2_600_000, 9);
    fs::write(mnt.join("late"), &late).unwrap();

    // SAFETY: kill of the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let start = Instant::now();
    // SAFETY: kill(pid, 0) only checks that it exists.
    while unsafe { libc::kill(pid, 0) } == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(&run("umount", &[&s(&mnt)]));

    ok(&run(MOUNT, &[&devs[1], &s(&mnt), "-o", &format!("log={}", s(&log))]));
    assert_eq!(fs::read(mnt.join("synced")).unwrap(), synced);
    for i in 0..300u32 {
        let got = fs::read(mnt.join("small").join(format!("f{i}"))).unwrap();
        assert!(got == pattern(4096 + i as usize, i), "small/f{i}: {} bytes, wrong content", got.len());
    }
    if let Ok(got) = fs::read(mnt.join("late")) {
        assert!(got.len() <= late.len() && got[..] == late[..got.len()], "late: {} bytes, not a prefix", got.len());
    }
    ok(&run("umount", &[&s(&mnt)]));
    wait_closed(&log, 1);
    let o = run(FSCK, &["-n", &devs[2]]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}
