//! Loop devices and O_DIRECT-capable temporary directories for tests.
//!
//! [`LoopDevice`] creates a sparse image file in its own temporary directory,
//! attaches it to a free loop device (direct IO on, autoclear set) and
//! detaches it when dropped, also when a test panics. It only ever detaches
//! the device it attached itself. Tests that need one start with
//! `if !require_root_and_loop() { return; }` so they skip cleanly where loop
//! devices are not available.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

const LOOP_CONTROL: &str = "/dev/loop-control";

/// True when this process can create loop devices (root and
/// `/dev/loop-control`); otherwise prints why the test is skipped.
pub fn require_root_and_loop() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && Path::new(LOOP_CONTROL).exists() && loopdev::LoopControl::open().is_ok();
    if !ok {
        super::skip::unavailable("needs root and /dev/loop-control");
    }
    ok
}

/// A temporary directory on a filesystem where O_DIRECT works (and not
/// tmpfs, which would hold test images in memory): the system temporary
/// directory if it qualifies, else `/var/tmp`, else the target directory's
/// test scratch space.
pub fn disk_tempdir() -> TempDir {
    let candidates = [std::env::temp_dir(), PathBuf::from("/var/tmp"), PathBuf::from(env!("CARGO_TARGET_TMPDIR"))];
    for base in &candidates {
        if let Ok(dir) = tempfile::Builder::new().prefix("dfs-test-").tempdir_in(base) {
            if supports_direct_io(dir.path()) {
                return dir;
            }
        }
    }
    panic!("no temporary directory supports O_DIRECT (tried {candidates:?})");
}

fn supports_direct_io(dir: &Path) -> bool {
    // SAFETY: statfs fills the zeroed struct from a NUL-terminated path.
    let not_tmpfs = {
        let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
        let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
        unsafe { libc::statfs(c.as_ptr(), &mut sfs) == 0 && sfs.f_type != libc::TMPFS_MAGIC }
    };
    if !not_tmpfs {
        return false;
    }
    let probe = dir.join(".odirect-probe");
    let res = (|| -> io::Result<()> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)?;
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
        // SAFETY: non-zero size layout; freed below with the same layout.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        if p.is_null() {
            return Err(io::Error::other("out of memory"));
        }
        // SAFETY: p is valid for 4096 bytes.
        let buf = unsafe { std::slice::from_raw_parts(p, 4096) };
        let r = f.write_all_at(buf, 0);
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(p, layout) };
        r
    })();
    let _ = std::fs::remove_file(&probe);
    res.is_ok()
}

/// A loop device over a sparse image file, detached and deleted on drop.
pub struct LoopDevice {
    dev: Option<loopdev::LoopDevice>,
    path: PathBuf,
    image: PathBuf,
    direct_io: bool,
    // Dropped after the device is detached (fields drop after Drop::drop).
    _dir: TempDir,
}

impl LoopDevice {
    /// Create a sparse image of `size` bytes and attach it to a free loop
    /// device with direct IO. Retries when another process takes the free
    /// device first.
    pub fn new(size: u64) -> io::Result<LoopDevice> {
        let dir = disk_tempdir();
        let image = dir.path().join("loop.img");
        File::create(&image)?.set_len(size)?;
        let backing = OpenOptions::new().read(true).write(true).open(&image)?;

        let control = loopdev::LoopControl::open()?;
        let mut last_err = None;
        for _ in 0..20 {
            let dev = control.next_free()?;
            // Attach first, then set direct IO: if direct IO is refused the
            // device is still ours and must be kept (and later detached), not
            // abandoned as a failed attach.
            match dev.with().autoclear(true).attach_fd(backing.as_raw_fd()) {
                Ok(()) => {
                    let path = dev.path().ok_or_else(|| io::Error::other("loop device has no path"))?;
                    let direct_io = match dev.set_direct_io(true) {
                        Ok(()) => true,
                        Err(e) => {
                            eprintln!("warning: {}: direct IO not enabled: {e}", path.display());
                            false
                        }
                    };
                    return Ok(LoopDevice { dev: Some(dev), path, image, direct_io, _dir: dir });
                }
                // Someone else attached this one between next_free and attach.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    last_err = Some(e);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("no free loop device")))
    }

    /// The loop device node, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The backing image file.
    pub fn image_path(&self) -> &Path {
        &self.image
    }

    /// Whether the kernel accepted direct IO for the backing file.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Some(dev) = self.dev.take() {
            // With autoclear set, a device still open elsewhere detaches when
            // its last user closes it.
            if let Err(e) = dev.detach() {
                eprintln!("warning: {}: detach failed: {e}", self.path.display());
            }
        }
    }
}

impl std::fmt::Debug for LoopDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoopDevice({} over {})", self.path.display(), self.image.display())
    }
}
