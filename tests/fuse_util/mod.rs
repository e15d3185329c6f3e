//! Helpers of the FUSE tests (`mod fuse_util;`): a pool on image files or
//! loop devices, mounted through the library in a background session that
//! unmounts on drop (also on panic), and thin errno-returning wrappers of
//! the syscalls std does not offer.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dynamicfs::discover::{find_members, open_members, DiscoverOptions, PoolSource};
use dynamicfs::engine::{Pool, PoolOptions};
use dynamicfs::fuse::{BackgroundMount, MountConfig};
use dynamicfs::mkfs::{format_pool, MemberSpec, MkfsOptions};
use tempfile::TempDir;

pub const MIB: usize = 1 << 20;

/// True when running as root with /dev/fuse; else says why the test skips.
pub fn fuse_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && Path::new("/dev/fuse").exists();
    if !ok {
        crate::common::skip::unavailable("needs root and /dev/fuse");
    }
    ok
}

/// A formatted pool on `members` (image files or loop devices) with a
/// mount point and a lock directory in `dir`.
pub struct Fixture {
    pub dir: TempDir,
    pub members: Vec<PathBuf>,
}

impl Fixture {
    /// Image files of the given sizes (MiB) in a disk temp dir.
    pub fn images(sizes_mib: &[u64], policy: Option<&str>) -> Fixture {
        let dir = super::common::disk_tempdir();
        let mut members = Vec::new();
        for (i, mib) in sizes_mib.iter().enumerate() {
            let p = dir.path().join(format!("m{i}.img"));
            File::create(&p).unwrap().set_len(mib << 20).unwrap();
            members.push(p);
        }
        Self::format(dir, members, policy)
    }

    /// Given member paths (loop devices), formatted.
    pub fn on(members: Vec<PathBuf>, policy: Option<&str>) -> Fixture {
        Self::format(super::common::disk_tempdir(), members, policy)
    }

    fn format(dir: TempDir, members: Vec<PathBuf>, policy: Option<&str>) -> Fixture {
        let specs: Vec<MemberSpec> = members.iter().map(|p| MemberSpec::Device(p.clone())).collect();
        let mut opts = MkfsOptions { label: "fuse-test".into(), ..Default::default() };
        if let Some(p) = policy {
            opts.default_policy = Some(p.parse().unwrap());
        }
        format_pool(&specs, &opts).expect("mkfs");
        fs::create_dir(dir.path().join("mnt")).unwrap();
        Fixture { dir, members }
    }

    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Mount through member `via` (the others found as extra paths).
    pub fn mount_via(&self, via: usize, read_only: bool) -> (Arc<Pool>, BackgroundMount) {
        let pool = self.open_pool(self.devices(via, read_only), read_only);
        let m = self.mount_pool(&pool, via, read_only);
        (pool, m)
    }

    /// Find the pool from member `via` (the others as extra paths) and
    /// open every member's device.
    pub fn devices(&self, via: usize, read_only: bool) -> Vec<Arc<dyn dynamicfs::device::Device>> {
        let extra = self.members.iter().enumerate().filter(|(i, _)| *i != via).map(|(_, p)| p.clone()).collect();
        let opts = DiscoverOptions { extra, scan_block_devices: false, use_path_hints: true };
        let found = find_members(&PoolSource::Member(self.members[via].clone()), &opts).expect("discover");
        assert_eq!(found.members.len(), self.members.len(), "{found:?}");
        open_members(&found, read_only).expect("open members")
    }

    /// Open the pool on `devs`, its lock in the fixture's directory.
    pub fn open_pool(&self, devs: Vec<Arc<dyn dynamicfs::device::Device>>, read_only: bool) -> Arc<Pool> {
        let lock_dir = self.dir.path().join("locks");
        let pool = Pool::open(devs, PoolOptions { read_only, lock_dir: Some(lock_dir), ..Default::default() })
            .expect("open pool");
        Arc::new(pool)
    }

    /// Mount `pool` (its source named as member `via`) in a background session.
    pub fn mount_pool(&self, pool: &Arc<Pool>, via: usize, read_only: bool) -> BackgroundMount {
        let cfg = MountConfig {
            read_only,
            allow_other: true,
            source: self.members[via].display().to_string(),
            ..Default::default()
        };
        dynamicfs::fuse::mount(pool.clone(), &self.mnt(), &cfg).expect("mount").spawn().expect("spawn")
    }

    pub fn mount(&self) -> (Arc<Pool>, BackgroundMount) {
        self.mount_via(0, false)
    }
}

/// Unmount, then close the pool (flush + checkpoint).
pub fn unmount_and_close(pool: Arc<Pool>, m: BackgroundMount) {
    m.unmount().expect("unmount");
    let pool = Arc::try_unwrap(pool).expect("the session released the pool");
    pool.close().expect("close");
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8 | 1).collect()
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// 0 on success, else errno.
pub fn rc(r: libc::c_int) -> i32 {
    if r == 0 {
        0
    } else {
        errno()
    }
}

pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> i32 {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid paths and buffer.
    rc(unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
}

/// getxattr with a buffer of `cap` bytes: Ok(value) or Err(errno).
pub fn getxattr(p: &Path, name: &str, cap: usize) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; cap];
    // SAFETY: buf is valid for cap bytes.
    let r = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), cap) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// The names listxattr gives (without following symlinks).
pub fn llistxattr(p: &Path) -> Result<Vec<Vec<u8>>, i32> {
    let p = cpath(p);
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: buf is valid for its length.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    let mut names: Vec<Vec<u8>> = buf.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| s.to_vec()).collect();
    names.sort();
    Ok(names)
}

/// lgetxattr: Ok(value) or Err(errno).
pub fn lgetxattr(p: &Path, name: &[u8]) -> Result<Vec<u8>, i32> {
    let (p, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: buf is valid for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}
