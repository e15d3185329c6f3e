//! POSIX operations beyond the everyday ones, through a real mount (a pool
//! on image files, mounted by the library in a background session):
//! fallocate (allocate, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE, EOPNOTSUPP),
//! SEEK_DATA / SEEK_HOLE, copy_file_range, shared writable mmap (msync,
//! read(2), remount), fcntl and flock locks between two processes, ENOSPC
//! on a full pool and back, and `user.dfs.policy` (EINVAL on nonsense and
//! on what the members can't satisfy, re-encode of existing extents).
//!
//! Needs root and /dev/fuse; skips with a message otherwise. The mount
//! unmounts when dropped, also when a test panics.

#[allow(unused_imports)]
mod common;
mod fuse_util;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use dynamicfs::engine::state::Body;
use dynamicfs::engine::Pool;
use fuse_util::*;

fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> i32 {
    // SAFETY: valid fd.
    rc(unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) })
}

fn lseek(f: &File, off: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: valid fd.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as u64)
    }
}

/// Committed extent indices of the file at `path` (by inode number).
fn extent_indices(pool: &Pool, path: &Path) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(path).unwrap().ino();
    match &pool.state_snapshot().inodes[&ino].body {
        Body::File(map) => map.keys().copied().collect(),
        _ => panic!("not a file"),
    }
}

#[test]
fn fallocate_punch_hole_seek_and_copy_file_range() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::images(&[64, 64, 64], None);
    let mnt = fx.mnt();
    let (pool, m) = fx.mount();
    let p = mnt.join("f");
    let mut model = pattern(4 * MIB, 7);
    fs::write(&p, &model).unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.sync_all().unwrap();
    assert_eq!(extent_indices(&pool, &p), vec![0, 1, 2, 3]);

    // Punch from MIB+10 for 2 MiB: extent 2 goes, 1 and 3 are cut.
    let (off, len) = (MIB as u64 + 10, 2 * MIB as u64);
    assert_eq!(fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len), 0);
    model[off as usize..(off + len) as usize].fill(0);
    let mut back = Vec::new();
    File::open(&p).unwrap().read_to_end(&mut back).unwrap();
    assert!(back == model, "punched range reads as zeros, the rest unchanged");
    assert_eq!(fs::metadata(&p).unwrap().len(), 4 * MIB as u64, "size kept");
    assert_eq!(extent_indices(&pool, &p), vec![0, 1, 3], "the hole costs no extent");
    // Punch without KEEP_SIZE is refused by the kernel; collapse is not supported.
    assert_eq!(fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 10), libc::EOPNOTSUPP);
    assert_eq!(fallocate(&f, libc::FALLOC_FL_COLLAPSE_RANGE, 0, MIB as u64), libc::EOPNOTSUPP);

    // SEEK_DATA / SEEK_HOLE: data [0, MIB+10), hole to 3 MiB, data to the end.
    assert_eq!(lseek(&f, 0, libc::SEEK_DATA), Ok(0));
    assert_eq!(lseek(&f, 0, libc::SEEK_HOLE), Ok(MIB as u64 + 10));
    assert_eq!(lseek(&f, MIB as u64 + 10, libc::SEEK_DATA), Ok(3 * MIB as u64));
    assert_eq!(lseek(&f, 3 * MIB as u64, libc::SEEK_HOLE), Ok(4 * MIB as u64));
    assert_eq!(lseek(&f, 4 * MIB as u64, libc::SEEK_DATA), Err(libc::ENXIO));

    // Allocate: mode 0 grows the size (zeros), KEEP_SIZE does not.
    assert_eq!(fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 6 * MIB as u64), 0);
    assert_eq!(fs::metadata(&p).unwrap().len(), 4 * MIB as u64);
    assert_eq!(fallocate(&f, 0, 4 * MIB as u64, MIB as u64 + 3), 0);
    assert_eq!(fs::metadata(&p).unwrap().len(), 5 * MIB as u64 + 3);
    model.resize(5 * MIB + 3, 0);
    // More than the pool can hold: ENOSPC, size unchanged.
    assert_eq!(fallocate(&f, 0, 0, 1 << 30), libc::ENOSPC);
    assert_eq!(fs::metadata(&p).unwrap().len(), 5 * MIB as u64 + 3);
    // Zero range.
    match fallocate(&f, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, 5, 100) {
        0 => model[5..105].fill(0),
        // Kernels before FUSE passed ZERO_RANGE on answer this themselves.
        e => assert_eq!(e, libc::EOPNOTSUPP),
    }
    assert!(fs::read(&p).unwrap() == model);

    // copy_file_range: unaligned, across the hole, to another file.
    let q = mnt.join("g");
    let g = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&q).unwrap();
    let (mut oi, mut oo): (i64, i64) = (1000, 77);
    let want = (model.len() - 1000) as u64;
    let mut copied = 0u64;
    while copied < want {
        // SAFETY: valid fds and offset pointers.
        let n = unsafe {
            libc::copy_file_range(f.as_raw_fd(), &mut oi, g.as_raw_fd(), &mut oo, (want - copied) as usize, 0)
        };
        assert!(n > 0, "copy_file_range: {}", errno());
        copied += n as u64;
    }
    let mut expect = vec![0u8; 77];
    expect.extend_from_slice(&model[1000..]);
    assert!(fs::read(&q).unwrap() == expect, "copied bytes");
    drop((f, g));
    unmount_and_close(pool, m);
    let (pool, m) = fx.mount_via(1, false);
    assert!(fs::read(mnt.join("f")).unwrap() == model, "after remount");
    assert!(fs::read(mnt.join("g")).unwrap() == expect, "after remount");
    unmount_and_close(pool, m);
}

#[test]
fn shared_writable_mmap_then_read_and_remount() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::images(&[64, 64, 96], None);
    let mnt = fx.mnt();
    let p = mnt.join("mapped");
    let len = 3 * MIB + 4096 * 3;
    let data = pattern(len, 11);
    {
        let (pool, m) = fx.mount();
        let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&p).unwrap();
        f.set_len(len as u64).unwrap();
        // SAFETY: a fresh shared mapping of the file's length; unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap: {}", errno());
        // SAFETY: addr is a writable mapping of len bytes.
        let map = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
        map.copy_from_slice(&data);
        // SAFETY: the mapping above.
        assert_eq!(unsafe { libc::msync(addr, len, libc::MS_SYNC) }, 0, "msync: {}", errno());
        // SAFETY: the mapping above, no longer used.
        assert_eq!(unsafe { libc::munmap(addr, len) }, 0);
        let mut back = vec![0u8; len];
        f.read_exact_at(&mut back, 0).unwrap();
        assert!(back == data, "read(2) sees the mapped writes");
        f.sync_all().unwrap();
        drop(f);
        // The engine has them, not only the page cache.
        let ino = {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(&p).unwrap().ino()
        };
        assert!(pool.read(ino, 0, len).unwrap() == data, "the engine holds the mapped writes");
        unmount_and_close(pool, m);
    }
    let (pool, m) = fx.mount_via(2, false);
    assert!(fs::read(&p).unwrap() == data, "after remount through another member");
    // A private read-only mapping reads the same bytes.
    let f = File::open(&p).unwrap();
    // SAFETY: read-only private mapping of the file's length.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, f.as_raw_fd(), 0) };
    assert_ne!(addr, libc::MAP_FAILED);
    // SAFETY: addr maps len readable bytes.
    let same = unsafe { std::slice::from_raw_parts(addr as *const u8, len) } == &data[..];
    // SAFETY: the mapping above.
    unsafe { libc::munmap(addr, len) };
    assert!(same, "mapped read");
    drop(f);
    unmount_and_close(pool, m);
}

/// Environment variable that turns `lock_helper` into the second process.
const HELPER_ENV: &str = "DFS_LOCK_HELPER";

/// The second process of `locks_between_processes` (a no-op test
/// otherwise): `fcntl PATH` tries a non-blocking write lock, `getlk PATH`
/// asks F_GETLK and exits with 0 when unlocked, else with 100 + (the
/// holder's pid == expected ? 0 : 1), `flock PATH` tries LOCK_EX|LOCK_NB.
/// The exit code is 0 on success, else the errno.
#[test]
fn lock_helper() {
    let Ok(spec) = std::env::var(HELPER_ENV) else { return };
    let (what, rest) = spec.split_once(' ').unwrap();
    let (path, expect_pid) = rest.split_once(' ').unwrap_or((rest, "0"));
    let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = 0;
    fl.l_len = 100;
    let code = match what {
        // SAFETY: valid fd and struct.
        "fcntl" => rc(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) }),
        "getlk" => {
            // SAFETY: valid fd and struct.
            assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) }, 0);
            if fl.l_type == libc::F_UNLCK as i16 {
                0
            } else {
                100 + i32::from(fl.l_pid.to_string() != expect_pid)
            }
        }
        // SAFETY: valid fd.
        "flock" => rc(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }),
        _ => 99,
    };
    std::process::exit(code);
}

/// Run `lock_helper` in a new process; its exit code.
fn helper(what: &str, path: &Path) -> i32 {
    let exe = std::env::current_exe().unwrap();
    let spec = format!("{what} {} {}", path.display(), std::process::id());
    let out = Command::new(exe)
        .args(["--exact", "lock_helper", "--nocapture", "--test-threads=1"])
        .env(HELPER_ENV, spec)
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

#[test]
fn locks_between_processes() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::images(&[64, 64, 64], None);
    let mnt = fx.mnt();
    let (pool, m) = fx.mount();
    let p = mnt.join("locked");
    fs::write(&p, b"some bytes").unwrap();
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();

    // fcntl record lock: held here, refused there (EAGAIN), seen by F_GETLK
    // with our pid; released, then granted there.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_len = 10;
    // SAFETY: valid fd and struct.
    assert_eq!(rc(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) }), 0);
    let code = helper("fcntl", &p);
    assert!(code == libc::EAGAIN || code == libc::EACCES, "second process got the lock: exit {code}");
    assert_eq!(helper("getlk", &p), 100, "F_GETLK names this process as the holder");
    fl.l_type = libc::F_UNLCK as i16;
    // SAFETY: as above.
    assert_eq!(rc(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) }), 0);
    assert_eq!(helper("fcntl", &p), 0, "free after unlock");
    assert_eq!(helper("getlk", &p), 0);

    // flock: the same between open file descriptions.
    // SAFETY: valid fd.
    assert_eq!(rc(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }), 0);
    assert_eq!(helper("flock", &p), libc::EWOULDBLOCK);
    // SAFETY: valid fd.
    assert_eq!(rc(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) }), 0);
    assert_eq!(helper("flock", &p), 0);
    // A lock dies with its holder's close.
    // SAFETY: valid fd.
    assert_eq!(rc(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }), 0);
    drop(f);
    assert_eq!(helper("flock", &p), 0);
    unmount_and_close(pool, m);
}

#[test]
fn enospc_when_full_then_space_comes_back() {
    if !fuse_available() {
        return;
    }
    // Three 40 MiB members, three copies: well under 40 MiB of data fits.
    let fx = Fixture::images(&[40, 40, 40], Some("replication:3"));
    let mnt = fx.mnt();
    let (pool, m) = fx.mount();
    let p = mnt.join("big");
    let chunk = pattern(MIB, 1);
    let mut f = File::create(&p).unwrap();
    let mut err = None;
    for _ in 0..80 {
        if let Err(e) = f.write_all(&chunk) {
            err = Some(e);
            break;
        }
    }
    let err = err.or_else(|| f.sync_all().err()).expect("a full pool must fail a write or the fsync");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f); // close may report it again
             // Removing the file gives the space back: a new file fits again.
    fs::remove_file(&p).unwrap();
    File::open(&mnt).unwrap().sync_all().unwrap();
    let small = pattern(5 * MIB, 2);
    let mut g = File::create(mnt.join("after")).unwrap();
    g.write_all(&small).unwrap();
    g.sync_all().unwrap();
    drop(g);
    assert!(fs::read(mnt.join("after")).unwrap() == small);
    unmount_and_close(pool, m);
}

#[test]
fn policy_xattr_through_the_mount() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::images(&[64, 64, 64], Some("replication:2"));
    let mnt = fx.mnt();
    let (pool, m) = fx.mount();
    let p = mnt.join("f");
    let data = pattern(2 * MIB + 5, 3);
    fs::write(&p, &data).unwrap();
    File::open(&p).unwrap().sync_all().unwrap();
    assert_eq!(getxattr(&p, "user.dfs.policy", 64).unwrap(), b"replication:2");
    assert_eq!(setxattr(&p, "user.dfs.policy", b"bogus", 0), libc::EINVAL);
    assert_eq!(setxattr(&p, "user.dfs.policy", b"replication:4", 0), libc::EINVAL, "3 members");
    assert_eq!(setxattr(&p, "user.dfs.policy", b"erasure:2+2", 0), libc::EINVAL, "3 members");
    assert_eq!(setxattr(&p, "user.dfs.policy", b"erasure:2+1", libc::XATTR_REPLACE), libc::ENODATA);
    assert_eq!(setxattr(&p, "user.dfs.policy", b"erasure:2+1", 0), 0);
    assert_eq!(getxattr(&p, "user.dfs.policy", 64).unwrap(), b"erasure:2+1");
    let ino = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&p).unwrap().ino()
    };
    let st = pool.state_snapshot();
    let Body::File(map) = &st.inodes[&ino].body else { panic!() };
    assert_eq!(map.len(), 3);
    for id in map.values() {
        assert_eq!(st.extents[id].policy().to_string(), "erasure:2+1", "re-encoded at once");
    }
    assert!(fs::read(&p).unwrap() == data);
    unmount_and_close(pool, m);
}
