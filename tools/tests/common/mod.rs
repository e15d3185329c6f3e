//! Helpers shared by the tests of the built binaries (`mod common;`):
//! loop devices made with `losetup` (this crate has no `loopdev`
//! dependency to share the root crate's `tests/common` with), running a
//! binary with its output printed, exit-status checks, test patterns,
//! byte-level damage on a member (flips, zeros, a planted orphan fragment
//! header), and a FUSE mount guard.
//!
//! Each [`Loop`] is attached over a sparse image in its own temporary
//! directory with direct IO, and only the device attached here is ever
//! detached (on drop, also when a test panics). A [`Mounted`] unmounts its
//! own mount point lazily on drop. Nothing else is touched.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_format::fragment::FragmentKind;
use dfs_format::{FragmentHeader, Policy};
use dynamicfs::device::{open_member_device, AlignedBuf, Device, OpenMode};
use dynamicfs::member::{read_bytes, read_superblocks, write_bytes};

#[path = "../../../tests/common/skip.rs"]
pub mod skip;

pub const MIB: u64 = 1 << 20;
pub const BS: u64 = 4096;

/// A loop device over a sparse image; detached (and the image deleted) on drop.
pub struct Loop {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    pub fn new(size: u64) -> Loop {
        let dir = tempfile::Builder::new().prefix("dfs-loop-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let image = dir.path().join("loop.img");
        File::create(&image).unwrap().set_len(size).unwrap();
        let mut last = String::new();
        for _ in 0..20 {
            let o = Command::new("losetup").args(["--find", "--show", "--direct-io=on"]).arg(&image).output().unwrap();
            if o.status.success() {
                let path = PathBuf::from(String::from_utf8(o.stdout).unwrap().trim());
                return Loop { path, _dir: dir };
            }
            last = String::from_utf8_lossy(&o.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("losetup failed: {last}");
    }

    pub fn s(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The member device, shared (not exclusive).
    pub fn dev(&self, read_only: bool) -> Arc<dyn Device> {
        open_member_device(&self.path, OpenMode { read_only, exclusive: false }).unwrap()
    }

    /// Flip the bits of `mask` in the byte at `offset`, synced.
    pub fn flip(&self, offset: u64, mask: u8) {
        let dev = self.dev(false);
        let mut b = read_bytes(dev.as_ref(), offset, 1).unwrap();
        b[0] ^= mask;
        write_bytes(dev.as_ref(), offset, &b).unwrap();
        dev.sync().unwrap();
    }

    /// Zero `len` bytes at `offset`, synced.
    pub fn zero(&self, offset: u64, len: u64) {
        let dev = self.dev(false);
        write_bytes(dev.as_ref(), offset, &vec![0u8; len as usize]).unwrap();
        dev.sync().unwrap();
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// Format `loops` as one pool with `mkfs-dfs -q -p POLICY -L LABEL`.
pub fn mkfs(mkfs: &str, loops: &[Loop], policy: &str, label: &str) {
    let mut args = vec!["-q", "-p", policy, "-L", label];
    for l in loops {
        args.extend(["-d", l.s()]);
    }
    let o = Command::new(mkfs).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// True when loop devices can be made here; otherwise prints why not.
pub fn have_loop_devices() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root
        && Path::new("/dev/loop-control").exists()
        && Command::new("losetup").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        skip::unavailable("needs root, /dev/loop-control and losetup");
    }
    ok
}

/// True when loop devices and FUSE mounts can be made here.
pub fn have_loop_and_fuse() -> bool {
    let fuse = Path::new("/dev/fuse").exists();
    if !fuse {
        skip::unavailable("needs /dev/fuse");
    }
    fuse && have_loop_devices()
}

/// Run `prog ARGS`; the command and its output are printed (seen with
/// `--nocapture`).
pub fn run(prog: &str, args: &[&str]) -> Output {
    let o = Command::new(prog).args(args).output().unwrap();
    println!(
        "$ {} {}\n{}{}[exit {:?}]\n",
        Path::new(prog).file_name().unwrap().to_string_lossy(),
        args.join(" "),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        o.status.code()
    );
    o
}

/// Exit status `code`; on failure show everything. The stdout.
pub fn expect(o: &Output, code: i32) -> String {
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(code), "stdout:\n{out}\nstderr:\n{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// Exit status `code` and stdout parsed as JSON.
pub fn json(o: &Output, code: i32) -> serde_json::Value {
    serde_json::from_str(&expect(o, code)).unwrap()
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A fragment header of this pool (and a payload block) in free space,
/// `from_end` blocks before the end of member `l`'s data region: the data
/// block it starts at.
pub fn plant_orphan(l: &Loop, from_end: u64, created_ns: u64) -> u64 {
    let dev = l.dev(false);
    let sb = read_superblocks(dev.as_ref()).unwrap().superblock;
    let payload = pattern(BS as usize, 9);
    let h = FragmentHeader {
        kind: FragmentKind::Extent,
        pool_uuid: sb.pool_uuid,
        extent_uuid: uuid::Uuid::new_v4(),
        fragment_index: 0,
        fragment_count: 1,
        policy: Policy::Replication { copies: 1 },
        payload_len: BS as u32,
        extent_len: BS as u32,
        generation: 1,
        created_ns,
        payload_blake3: *blake3::hash(&payload).as_bytes(),
        extent_blake3: *blake3::hash(&payload).as_bytes(),
    };
    let mut buf = AlignedBuf::from_slice_padded(&h.encode(), BS as usize).to_vec();
    buf.extend_from_slice(&payload);
    let block = sb.layout.data_blocks() - from_end;
    dev.write_at(sb.layout.data_offset(block), &AlignedBuf::from_slice_padded(&buf, BS as usize)).unwrap();
    dev.sync().unwrap();
    block
}

/// A pool mounted by `mount-dfs` at a mount point of its own; unmounted
/// (lazily) on drop if the test did not unmount it.
pub struct Mounted {
    pub mnt: PathBuf,
    pub log: PathBuf,
    mounted: bool,
    unmounts: usize,
}

impl Mounted {
    /// Mount the pool of `loops` at `dir/mnt` (log in `dir/dfs.log`).
    pub fn new(mount: &str, dir: &Path, loops: &[Loop]) -> Mounted {
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut m = Mounted { mnt, log: dir.join("dfs.log"), mounted: false, unmounts: 0 };
        m.mount(mount, loops);
        m
    }

    pub fn mount(&mut self, mount: &str, loops: &[Loop]) {
        let devices: Vec<String> = loops[1..].iter().map(|l| format!("device={}", l.s())).collect();
        let opts = format!("{},log={}", devices.join(","), self.log.display());
        expect(&run(mount, &[loops[0].s(), self.mnt.to_str().unwrap(), "-o", &opts]), 0);
        self.mounted = true;
    }

    pub fn s(&self) -> &str {
        self.mnt.to_str().unwrap()
    }

    /// Unmount and wait until the daemon has closed the pool.
    pub fn unmount(&mut self) {
        assert!(Command::new("umount").arg(&self.mnt).status().unwrap().success());
        self.mounted = false;
        self.unmounts += 1;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.matches("unmounted; pool closed").count() >= self.unmounts {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the mount daemon did not close the pool");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}
