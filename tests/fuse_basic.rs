//! The FUSE front-end through a real mount: a pool on three image files (on
//! a disk filesystem, for O_DIRECT), mounted through the library in a
//! background session, driven with ordinary syscalls; then unmounted,
//! closed, reopened and mounted again, and the data must still be there.
//!
//! Needs root and /dev/fuse; skips with a message otherwise. The mount is
//! a `BackgroundMount`, which unmounts when dropped, also when a test
//! panics (it is declared after the temp dir and before any open file, so
//! it drops after the files and before the images go).

// Only `disk_tempdir` is used here.
#[allow(unused_imports)]
mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dynamicfs::discover::{find_members, open_members, DiscoverOptions, PoolSource};
use dynamicfs::engine::{Pool, PoolOptions};
use dynamicfs::fuse::{BackgroundMount, MountConfig};
use dynamicfs::mkfs::{format_pool, MemberSpec, MkfsOptions};
use tempfile::TempDir;

const MIB: usize = 1 << 20;

fn fuse_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && Path::new("/dev/fuse").exists();
    if !ok {
        common::skip::unavailable("needs root and /dev/fuse");
    }
    ok
}

/// A pool of three image files (64, 64 and 128 MiB) in a disk temp dir.
struct Fixture {
    dir: TempDir,
    images: Vec<PathBuf>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = common::disk_tempdir();
        let mut images = Vec::new();
        for (i, mib) in [64u64, 64, 128].iter().enumerate() {
            let p = dir.path().join(format!("m{i}.img"));
            File::create(&p).unwrap().set_len(mib << 20).unwrap();
            images.push(p);
        }
        let specs: Vec<MemberSpec> = images.iter().map(|p| MemberSpec::Device(p.clone())).collect();
        let opts = MkfsOptions { label: "fuse-test".into(), ..Default::default() };
        format_pool(&specs, &opts).expect("mkfs");
        fs::create_dir(dir.path().join("mnt")).unwrap();
        Fixture { dir, images }
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Find the members from the first image (the others as extra paths),
    /// open the pool and mount it.
    fn mount(&self, read_only: bool) -> (Arc<Pool>, BackgroundMount) {
        let opts =
            DiscoverOptions { extra: self.images[1..].to_vec(), scan_block_devices: false, use_path_hints: true };
        let found = find_members(&PoolSource::Member(self.images[0].clone()), &opts).expect("discover");
        assert_eq!(found.members.len(), 3, "{found:?}");
        assert!(found.missing.is_empty(), "{found:?}");
        let devs = open_members(&found, read_only).expect("open members");
        let lock_dir = self.dir.path().join("locks");
        let pool = Pool::open(devs, PoolOptions { read_only, lock_dir: Some(lock_dir), ..Default::default() })
            .expect("open pool");
        let pool = Arc::new(pool);
        let cfg = MountConfig {
            read_only,
            allow_other: true,
            source: self.images[0].display().to_string(),
            ..Default::default()
        };
        let m = dynamicfs::fuse::mount(pool.clone(), &self.mnt(), &cfg).expect("mount").spawn().expect("spawn");
        (pool, m)
    }
}

/// Unmount, then close the pool (flush + checkpoint).
fn unmount_and_close(pool: Arc<Pool>, m: BackgroundMount) {
    m.unmount().expect("unmount");
    let pool = Arc::try_unwrap(pool).expect("the session released the pool");
    pool.close().expect("close");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn os_err(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    r.expect_err("expected an error").raw_os_error().unwrap_or(0)
}

fn renameat2(a: &Path, b: &Path, flags: u32) -> i32 {
    let (a, b) = (cpath(a), cpath(b));
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) };
    if rc == 0 {
        0
    } else {
        errno()
    }
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> i32 {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid paths and buffer.
    let rc = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
    if rc == 0 {
        0
    } else {
        errno()
    }
}

/// getxattr with a buffer of `cap` bytes: Ok(value) or Err(errno).
fn getxattr(p: &Path, name: &str, cap: usize) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; cap];
    // SAFETY: buf is valid for cap bytes (a null pointer when cap is 0 is allowed).
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), cap) };
    if rc < 0 {
        return Err(errno());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn listxattr(p: &Path, cap: usize) -> Result<Vec<u8>, i32> {
    let p = cpath(p);
    let mut buf = vec![0u8; cap];
    // SAFETY: buf is valid for cap bytes.
    let rc = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), cap) };
    if rc < 0 {
        return Err(errno());
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn removexattr(p: &Path, name: &str) -> i32 {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid paths.
    if unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } == 0 {
        0
    } else {
        errno()
    }
}

#[test]
fn everyday_operations_then_remount() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new();
    let mnt = fx.mnt();
    let big = pattern(5 * MIB + 4321, 3);
    {
        let (pool, m) = fx.mount(false);

        // Small, 5 MiB (written in odd-sized pieces), sparse.
        fs::write(mnt.join("small"), b"hello, dfs").unwrap();
        assert_eq!(fs::read(mnt.join("small")).unwrap(), b"hello, dfs");
        let mut f = File::create(mnt.join("big")).unwrap();
        for chunk in big.chunks(MIB + 17) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        assert_eq!(fs::read(mnt.join("big")).unwrap(), big);
        let mut f =
            OpenOptions::new().create(true).truncate(true).read(true).write(true).open(mnt.join("sparse")).unwrap();
        f.seek(SeekFrom::Start(10 * MIB as u64 + 5)).unwrap();
        f.write_all(b"tail").unwrap();
        drop(f);
        let sparse = fs::read(mnt.join("sparse")).unwrap();
        assert_eq!(sparse.len(), 10 * MIB + 9);
        assert!(sparse[..10 * MIB + 5].iter().all(|&b| b == 0));
        assert_eq!(&sparse[10 * MIB + 5..], b"tail");

        // mknod: a FIFO.
        let fifo = cpath(&mnt.join("fifo"));
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        use std::os::unix::fs::FileTypeExt;
        assert!(fs::symlink_metadata(mnt.join("fifo")).unwrap().file_type().is_fifo());

        // O_APPEND and O_EXCL.
        let mut f = OpenOptions::new().append(true).open(mnt.join("small")).unwrap();
        f.write_all(b"!!").unwrap();
        drop(f);
        assert_eq!(fs::read(mnt.join("small")).unwrap(), b"hello, dfs!!");
        let e = OpenOptions::new().write(true).create_new(true).open(mnt.join("small")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);

        // mkdir / readdir.
        let d = mnt.join("dir");
        fs::create_dir(&d).unwrap();
        let mut want: Vec<String> = (0..60).map(|i| format!("entry-{i:03}")).collect();
        for n in &want {
            fs::write(d.join(n), n.as_bytes()).unwrap();
        }
        let mut got: Vec<String> =
            fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(fs::metadata(&d).unwrap().nlink(), 2);
        fs::create_dir(d.join("sub")).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().nlink(), 3);
        assert_eq!(os_err(fs::create_dir(&d)), libc::EEXIST);
        assert_eq!(os_err(fs::remove_dir(&d)), libc::ENOTEMPTY);
        assert_eq!(os_err(fs::read(mnt.join("nope"))), libc::ENOENT);
        assert_eq!(os_err(fs::write(mnt.join("x".repeat(256)), b"")), libc::ENAMETOOLONG);
        fs::remove_dir(d.join("sub")).unwrap();

        // rename, RENAME_NOREPLACE, RENAME_EXCHANGE.
        fs::write(mnt.join("a"), b"A").unwrap();
        fs::write(mnt.join("b"), b"B").unwrap();
        assert_eq!(renameat2(&mnt.join("a"), &mnt.join("b"), libc::RENAME_NOREPLACE), libc::EEXIST);
        assert_eq!(renameat2(&mnt.join("a"), &mnt.join("b"), libc::RENAME_EXCHANGE), 0);
        assert_eq!(fs::read(mnt.join("a")).unwrap(), b"B");
        assert_eq!(fs::read(mnt.join("b")).unwrap(), b"A");
        assert_eq!(renameat2(&mnt.join("a"), &mnt.join("c"), libc::RENAME_NOREPLACE), 0);
        fs::rename(mnt.join("c"), d.join("moved")).unwrap();
        assert_eq!(fs::read(d.join("moved")).unwrap(), b"B");
        assert!(!mnt.join("a").exists());

        // Hard link and nlink; symlink.
        fs::hard_link(mnt.join("small"), mnt.join("small2")).unwrap();
        assert_eq!(fs::metadata(mnt.join("small")).unwrap().nlink(), 2);
        assert_eq!(fs::metadata(mnt.join("small")).unwrap().ino(), fs::metadata(mnt.join("small2")).unwrap().ino());
        std::os::unix::fs::symlink("small", mnt.join("link")).unwrap();
        assert_eq!(fs::read_link(mnt.join("link")).unwrap(), PathBuf::from("small"));
        assert_eq!(fs::read(mnt.join("link")).unwrap(), b"hello, dfs!!");
        fs::remove_file(mnt.join("small2")).unwrap();
        assert_eq!(fs::metadata(mnt.join("small")).unwrap().nlink(), 1);

        // Unlink of an open file: still readable through the fd.
        fs::write(mnt.join("doomed"), pattern(300_000, 9)).unwrap();
        let mut f = File::open(mnt.join("doomed")).unwrap();
        fs::remove_file(mnt.join("doomed")).unwrap();
        assert!(!mnt.join("doomed").exists());
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, pattern(300_000, 9));
        drop(f);

        // chmod, chown, utimens (with UTIME_OMIT and UTIME_NOW).
        let p = mnt.join("small");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
        std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
        let md = fs::metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678));
        let times = [
            libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 123 },
            libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        ];
        let old_mtime = (md.mtime(), md.mtime_nsec());
        // SAFETY: valid path and two timespecs.
        assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&p).as_ptr(), times.as_ptr(), 0) }, 0);
        let md = fs::metadata(&p).unwrap();
        assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123));
        assert_eq!((md.mtime(), md.mtime_nsec()), old_mtime);
        let times = [
            libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
            libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        ];
        // SAFETY: as above.
        assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, cpath(&p).as_ptr(), times.as_ptr(), 0) }, 0);
        let md = fs::metadata(&p).unwrap();
        assert_eq!(md.atime(), 1_000_000_000);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((md.mtime() - now).abs() < 60, "mtime {} now {now}", md.mtime());

        // truncate: shrink, then grow (zeros).
        let f = OpenOptions::new().write(true).open(mnt.join("big")).unwrap();
        f.set_len(1_000_000).unwrap();
        f.set_len(3 * MIB as u64).unwrap();
        drop(f);
        let t = fs::read(mnt.join("big")).unwrap();
        assert_eq!(t.len(), 3 * MIB);
        assert_eq!(&t[..1_000_000], &big[..1_000_000]);
        assert!(t[1_000_000..].iter().all(|&b| b == 0));
        fs::write(mnt.join("big"), &big).unwrap(); // O_TRUNC + rewrite

        // xattrs: set/get/list/remove, size queries, ENODATA, ERANGE, CREATE/REPLACE.
        let p = mnt.join("small");
        assert_eq!(getxattr(&p, "user.color", 64), Err(libc::ENODATA));
        assert_eq!(setxattr(&p, "user.color", b"blue", 0), 0);
        assert_eq!(getxattr(&p, "user.color", 0).unwrap().len(), 0); // size query: rc only
        assert_eq!(getxattr(&p, "user.color", 64).unwrap(), b"blue");
        assert_eq!(getxattr(&p, "user.color", 2), Err(libc::ERANGE));
        assert_eq!(setxattr(&p, "user.color", b"red", libc::XATTR_CREATE), libc::EEXIST);
        assert_eq!(setxattr(&p, "user.shape", b"x", libc::XATTR_REPLACE), libc::ENODATA);
        assert_eq!(setxattr(&p, "user.shape", b"round", libc::XATTR_CREATE), 0);
        let list = listxattr(&p, 256).unwrap();
        let names: Vec<&[u8]> = list.split(|&b| b == 0).filter(|s| !s.is_empty()).collect();
        assert!(names.contains(&&b"user.color"[..]) && names.contains(&&b"user.shape"[..]), "{names:?}");
        assert_eq!(listxattr(&p, 3), Err(libc::ERANGE));
        assert_eq!(removexattr(&p, "user.color"), 0);
        assert_eq!(removexattr(&p, "user.color"), libc::ENODATA);
        assert_eq!(getxattr(&p, "user.color", 64), Err(libc::ENODATA));

        // user.dfs.policy: effective policy, set, EINVAL on nonsense, inherited by a directory's children.
        assert_eq!(getxattr(&p, "user.dfs.policy", 64).unwrap(), b"replication:3");
        assert_eq!(setxattr(&p, "user.dfs.policy", b"erasure:2+1", 0), 0);
        assert_eq!(getxattr(&p, "user.dfs.policy", 64).unwrap(), b"erasure:2+1");
        assert_eq!(setxattr(&p, "user.dfs.policy", b"nonsense", 0), libc::EINVAL);
        assert_eq!(setxattr(&d, "user.dfs.policy", b"replication:2", 0), 0);
        fs::write(d.join("inherits"), pattern(2 * MIB, 5)).unwrap();
        assert_eq!(getxattr(&d.join("inherits"), "user.dfs.policy", 64).unwrap(), b"replication:2");

        // statfs.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and struct.
        assert_eq!(unsafe { libc::statvfs(cpath(&mnt).as_ptr(), &mut st) }, 0);
        assert!(st.f_blocks > 0 && st.f_bfree <= st.f_blocks && st.f_bavail <= st.f_bfree, "blocks");
        assert_eq!(st.f_bsize, 4096);
        assert_eq!(st.f_namemax, 255);
        let total = st.f_blocks * st.f_frsize;
        assert!(total > 200 << 20 && total <= 256 << 20, "total {total}");

        // fsync of a file and of a directory.
        File::open(mnt.join("big")).unwrap().sync_all().unwrap();
        File::open(&d).unwrap().sync_all().unwrap();

        unmount_and_close(pool, m);
    }
    assert!(!mnt.join("small").exists(), "unmounted");

    // Remount: everything is still there.
    let (pool, m) = fx.mount(false);
    assert_eq!(fs::read(mnt.join("big")).unwrap(), big);
    assert_eq!(fs::read(mnt.join("small")).unwrap(), b"hello, dfs!!");
    assert_eq!(fs::metadata(mnt.join("small")).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::read(mnt.join("sparse")).unwrap().len(), 10 * MIB + 9);
    assert_eq!(fs::read(mnt.join("dir/inherits")).unwrap(), pattern(2 * MIB, 5));
    assert_eq!(fs::read(mnt.join("dir/moved")).unwrap(), b"B");
    assert_eq!(fs::read_dir(mnt.join("dir")).unwrap().count(), 62);
    assert_eq!(fs::read_link(mnt.join("link")).unwrap(), PathBuf::from("small"));
    assert_eq!(getxattr(&mnt.join("small"), "user.shape", 64).unwrap(), b"round");
    assert_eq!(getxattr(&mnt.join("small"), "user.dfs.policy", 64).unwrap(), b"erasure:2+1");
    assert!(!mnt.join("doomed").exists());
    unmount_and_close(pool, m);
}

#[test]
fn read_only_mount_refuses_writes() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new();
    let mnt = fx.mnt();
    {
        let (pool, m) = fx.mount(false);
        fs::write(mnt.join("f"), b"data").unwrap();
        unmount_and_close(pool, m);
    }
    let (pool, m) = fx.mount(true);
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"data");
    assert_eq!(os_err(fs::write(mnt.join("g"), b"x")), libc::EROFS);
    assert_eq!(os_err(OpenOptions::new().write(true).open(mnt.join("f"))), libc::EROFS);
    assert_eq!(os_err(fs::create_dir(mnt.join("d"))), libc::EROFS);
    assert_eq!(setxattr(&mnt.join("f"), "user.a", b"b", 0), libc::EROFS);
    m.unmount().unwrap();
    drop(pool);
}

#[test]
fn parallel_writers_and_readdirplus() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new();
    let mnt = fx.mnt();
    let (pool, m) = fx.mount(false);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let mnt = &mnt;
            s.spawn(move || {
                for i in 0..10 {
                    let p = mnt.join(format!("t{t}-{i}"));
                    let data = pattern(200_000 + i * 1000, t);
                    fs::write(&p, &data).unwrap();
                    assert_eq!(fs::read(&p).unwrap(), data);
                }
            });
        }
    });
    // ls -l: readdir(plus) with attributes of every entry.
    let mut sizes: Vec<(String, u64)> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), e.metadata().unwrap().len())
        })
        .collect();
    sizes.sort();
    assert_eq!(sizes.len(), 40);
    assert_eq!(sizes[0], ("t0-0".to_string(), 200_000));
    // A file written without close-to-close: data reads back through another fd.
    let mut w = OpenOptions::new().create(true).truncate(true).write(true).open(mnt.join("live")).unwrap();
    w.write_all(b"abc").unwrap();
    assert_eq!(fs::read(mnt.join("live")).unwrap(), b"abc");
    drop(w);
    unmount_and_close(pool, m);
}
