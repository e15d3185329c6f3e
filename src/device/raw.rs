//! [`RawDevice`]: a block device or an image file as a [`Device`].
//!
//! - Always opened `O_DIRECT | O_CLOEXEC`: no page cache between the pool and
//!   the disk, so what `sync` makes durable is what was written, and memory
//!   use doesn't grow with traffic. Read-write opens do not use `O_DSYNC`;
//!   [`Device::sync`] is `fdatasync` (which also flushes the disk's cache).
//! - If the filesystem under an image file refuses `O_DIRECT` (`EINVAL`),
//!   open fails with [`DeviceError::Unsupported`] saying so. There is no
//!   silent fallback to buffered IO: durability and alignment would differ
//!   from a real member.
//! - `exclusive`: block devices are opened `O_EXCL`, which the kernel refuses
//!   (`EBUSY` → [`DeviceError::Busy`]) while the device is mounted or held
//!   exclusively by anyone, this process included. Image files have no
//!   `O_EXCL`; they take a non-blocking `flock(LOCK_EX)` instead, with the
//!   same meaning for cooperating processes.
//! - Block size: the larger of 4096 and the logical sector size (`BLKSSZGET`
//!   for block devices; `statx` `STATX_DIOALIGN` offset alignment for files,
//!   512 when the kernel doesn't report it). It must be a power of two of at
//!   most 64 KiB, else [`DeviceError::Unsupported`]. The size
//!   (`BLKGETSIZE64`, or the file length) is rounded down to whole blocks.
//! - Single reads and writes are `pread`/`pwrite` looped over short transfers
//!   and `EINTR`; batches go through io_uring or parallel threads, see
//!   [`super::uring`].
//! - `discard` is `BLKDISCARD` on block devices and
//!   `fallocate(PUNCH_HOLE | KEEP_SIZE)` on files; "not supported" is
//!   ignored (it is only a hint).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use super::uring::{run_one, BatchEngine, RawReq, QUEUE_DEPTH};
use super::{
    check_request, AlignedBuf, Device, DeviceError, DeviceIdentity, DeviceKind, ReadReq, Result, WriteReq, IO_ALIGN,
};

/// Smallest block size we use, whatever the device reports.
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest block size we accept.
pub const MAX_BLOCK_SIZE: u32 = 65536;

/// How to open a [`RawDevice`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawOpenOptions {
    /// Open read-only; writes and discards fail with `EROFS`.
    pub read_only: bool,
    /// Keep others out: `O_EXCL` on block devices, `flock` on image files.
    pub exclusive: bool,
}

/// Which IO path batches take (see [`super::uring`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoPathChoice {
    /// io_uring when it can be set up, else parallel pread/pwrite.
    #[default]
    Auto,
    /// Always parallel pread/pwrite (what `DFS_NO_URING=1` selects).
    Pread,
}

nix::ioctl_read!(blk_getsize64, 0x12, 114, u64);
nix::ioctl_read_bad!(blk_sszget, libc::BLKSSZGET, libc::c_int);
nix::ioctl_read_bad!(blk_pbszget, libc::BLKPBSZGET, libc::c_uint);
nix::ioctl_write_ptr_bad!(blk_discard, nix::request_code_none!(0x12, 119), [u64; 2]);

/// A block device or image file opened for direct IO.
pub struct RawDevice {
    file: File,
    identity: DeviceIdentity,
    block_size: u32,
    size: u64,
    logical_sector_size: u32,
    physical_block_size: u32,
    read_only: bool,
    engine: BatchEngine,
    /// Most requests of one batch in flight at once (1..=QUEUE_DEPTH).
    queue_depth: u32,
}

impl std::fmt::Debug for RawDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawDevice")
            .field("identity", &self.identity)
            .field("block_size", &self.block_size)
            .field("size", &self.size)
            .field("read_only", &self.read_only)
            .field("io_path", &self.engine.name())
            .field("queue_depth", &self.queue_depth)
            .finish()
    }
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

const NO_ODIRECT: &str = "the filesystem holding this image file does not support O_DIRECT (tmpfs, for one, \
     may not); put the image on a disk filesystem such as ext4 or xfs";

impl RawDevice {
    /// Open `path` (a block device or a regular image file). Batches use
    /// io_uring unless it is unavailable or `DFS_NO_URING=1` is set.
    pub fn open(path: &Path, opts: RawOpenOptions) -> Result<RawDevice> {
        let force = std::env::var_os("DFS_NO_URING").is_some_and(|v| v == "1");
        RawDevice::open_with_io(path, opts, if force { IoPathChoice::Pread } else { IoPathChoice::Auto })
    }

    /// Like [`RawDevice::open`], with the batch IO path chosen by the caller
    /// (the environment is not consulted). Tests use it to drive both paths.
    pub fn open_with_io(path: &Path, opts: RawOpenOptions, io_path: IoPathChoice) -> Result<RawDevice> {
        let dev = path.to_path_buf();
        let open_err = |source: io::Error| DeviceError::Open { device: dev.clone(), source };
        let unsupported = |reason: String| DeviceError::Unsupported { device: dev.clone(), reason };

        let meta = std::fs::metadata(path).map_err(open_err)?;
        let kind = if meta.file_type().is_block_device() {
            DeviceKind::Block
        } else if meta.file_type().is_file() {
            DeviceKind::File
        } else {
            return Err(unsupported("not a block device or a regular file".into()));
        };

        let mut flags = libc::O_DIRECT | libc::O_CLOEXEC;
        if opts.exclusive && kind == DeviceKind::Block {
            flags |= libc::O_EXCL;
        }
        let file = match OpenOptions::new().read(true).write(!opts.read_only).custom_flags(flags).open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Err(DeviceError::Busy { device: dev }),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && kind == DeviceKind::File => {
                // EINVAL from open with O_DIRECT: is it O_DIRECT that is refused?
                let buffered = OpenOptions::new().read(true).open(path);
                return Err(match buffered {
                    Ok(_) => unsupported(NO_ODIRECT.into()),
                    Err(_) => open_err(e),
                });
            }
            Err(e) => return Err(open_err(e)),
        };

        // Identity from the node actually opened (the path may have changed
        // between stat and open).
        let meta = file.metadata().map_err(open_err)?;
        let fd = file.as_raw_fd();
        let (logical, physical, raw_size, identity) = match kind {
            DeviceKind::Block => {
                let mut lss: libc::c_int = 0;
                let mut pbs: libc::c_uint = 0;
                let mut bytes: u64 = 0;
                // SAFETY: fd is an open block device; each ioctl writes one value
                // of the type given.
                unsafe {
                    blk_sszget(fd, &mut lss).map_err(|e| open_err(errno(e)))?;
                    blk_pbszget(fd, &mut pbs).map_err(|e| open_err(errno(e)))?;
                    blk_getsize64(fd, &mut bytes).map_err(|e| open_err(errno(e)))?;
                }
                if lss <= 0 {
                    return Err(unsupported(format!("bad logical sector size {lss}")));
                }
                let id = DeviceIdentity { kind, path: dev.clone(), dev: meta.rdev(), ino: 0 };
                (lss as u32, pbs.max(lss as u32), bytes, id)
            }
            _ => {
                let lss = match dio_align(&file) {
                    Some((_, 0)) => return Err(unsupported(NO_ODIRECT.into())),
                    Some((mem, _)) if mem as usize > IO_ALIGN => {
                        return Err(unsupported(format!(
                            "direct IO needs {mem}-byte buffer alignment, more than the {IO_ALIGN} we provide"
                        )))
                    }
                    Some((_, off)) => off,
                    None => 512,
                };
                let id = DeviceIdentity { kind, path: dev.clone(), dev: meta.dev(), ino: meta.ino() };
                (lss, (meta.blksize() as u32).max(lss), meta.len(), id)
            }
        };

        let block_size = logical.max(MIN_BLOCK_SIZE);
        if !block_size.is_power_of_two() || block_size > MAX_BLOCK_SIZE {
            return Err(unsupported(format!(
                "logical sector size {logical} gives block size {block_size}: not a power of two of at most {MAX_BLOCK_SIZE}"
            )));
        }
        let size = raw_size - raw_size % block_size as u64;

        if opts.exclusive && kind == DeviceKind::File {
            // SAFETY: plain flock on an fd we own.
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = io::Error::last_os_error();
                return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    DeviceError::Busy { device: dev }
                } else {
                    open_err(e)
                });
            }
        }

        // Some filesystems accept O_DIRECT at open and refuse it at IO time:
        // read the first block once to find out now rather than later.
        if kind == DeviceKind::File && size >= block_size as u64 {
            let mut probe = AlignedBuf::zeroed(block_size as usize);
            if let Err(e) = file.read_exact_at(&mut probe, 0) {
                return Err(if e.raw_os_error() == Some(libc::EINVAL) {
                    unsupported(NO_ODIRECT.into())
                } else {
                    DeviceError::Io { device: dev, op: "read", offset: 0, source: e }
                });
            }
        }

        let force = io_path == IoPathChoice::Pread;
        let (engine, why) = BatchEngine::new(force);
        if let Some(why) = why {
            tracing::debug!(device = %identity, reason = %why, "batches use parallel pread/pwrite");
        }

        Ok(RawDevice {
            file,
            identity,
            block_size,
            size,
            logical_sector_size: logical,
            physical_block_size: physical,
            read_only: opts.read_only,
            engine,
            queue_depth: QUEUE_DEPTH,
        })
    }

    /// The device's logical sector size (the smallest unit of direct IO it
    /// accepts). The block size is at least 4096 whatever this is.
    pub fn logical_sector_size(&self) -> u32 {
        self.logical_sector_size
    }

    /// The device's physical block size (`BLKPBSZGET`; for image files the
    /// filesystem's preferred IO size).
    pub fn physical_block_size(&self) -> u32 {
        self.physical_block_size
    }

    /// Which path batches take: `"io_uring"` or `"pread"`.
    pub fn io_path(&self) -> &'static str {
        self.engine.name()
    }

    /// Most requests one batch keeps in flight at once (default and
    /// maximum [`QUEUE_DEPTH`]). A larger batch is fed through this window:
    /// each completion lets the next request in, so the device sees a
    /// steady queue of this depth, as `fio --iodepth` gives it.
    pub fn queue_depth(&self) -> u32 {
        self.queue_depth
    }

    /// Set [`RawDevice::queue_depth`]; clamped to `1..=QUEUE_DEPTH`.
    pub fn set_queue_depth(&mut self, depth: u32) {
        self.queue_depth = depth.clamp(1, QUEUE_DEPTH);
    }

    /// Whether the device was opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn io_err(&self, op: &'static str, offset: u64, source: io::Error) -> DeviceError {
        DeviceError::Io { device: self.identity.path.clone(), op, offset, source }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let bs = self.block_size as u64;
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(DeviceError::Misaligned {
                device: self.identity.path.clone(),
                offset,
                len,
                block_size: self.block_size,
            });
        }
        if offset.checked_add(len).is_none_or(|end| end > self.size) {
            return Err(DeviceError::OutOfRange { device: self.identity.path.clone(), offset, len, size: self.size });
        }
        Ok(())
    }

    /// Run checked requests: one inline, more through the batch engine.
    fn run(&self, reqs: &mut [RawReq<'_>], op: &'static str) -> Result<()> {
        match reqs {
            [] => Ok(()),
            [one] => run_one(&self.file, one).map_err(|e| self.io_err(op, one_offset(one), e)),
            _ => self
                .engine
                .run(&self.file, reqs, self.queue_depth as usize)
                .map_err(|(i, e)| self.io_err(op, one_offset(&reqs[i]), e)),
        }
    }
}

fn one_offset(r: &RawReq<'_>) -> u64 {
    match r {
        RawReq::Read { offset, .. } | RawReq::Write { offset, .. } => *offset,
    }
}

/// `(dio_mem_align, dio_offset_align)` from statx, if the kernel reports it.
fn dio_align(file: &File) -> Option<(u32, u32)> {
    // SAFETY: statx fills the zeroed struct; the path is an empty C string
    // with AT_EMPTY_PATH, so the fd itself is examined.
    unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let rc = libc::statx(file.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_DIOALIGN, &mut stx);
        if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
            return None;
        }
        Some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
    }
}

impl Device for RawDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_request(self, offset, buf)?;
        self.file.read_exact_at(buf, offset).map_err(|e| self.io_err("read", offset, e))
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_request(self, offset, buf)?;
        if self.read_only {
            return Err(self.io_err("write", offset, erofs()));
        }
        self.file.write_all_at(buf, offset).map_err(|e| self.io_err("write", offset, e))
    }

    fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| self.io_err("sync", 0, e))
    }

    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<()> {
        for r in reqs.iter() {
            check_request(self, r.offset, r.buf)?;
        }
        let mut raw: Vec<RawReq<'_>> =
            reqs.iter_mut().map(|r| RawReq::Read { offset: r.offset, buf: &mut *r.buf }).collect();
        self.run(&mut raw, "read")
    }

    fn write_batch(&self, reqs: &[WriteReq<'_>]) -> Result<()> {
        for r in reqs {
            check_request(self, r.offset, r.buf)?;
        }
        if self.read_only {
            if let Some(r) = reqs.first() {
                return Err(self.io_err("write", r.offset, erofs()));
            }
        }
        let mut raw: Vec<RawReq<'_>> = reqs.iter().map(|r| RawReq::Write { offset: r.offset, buf: r.buf }).collect();
        self.run(&mut raw, "write")
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.read_only {
            return Err(self.io_err("discard", offset, erofs()));
        }
        let fd = self.file.as_raw_fd();
        let res = match self.identity.kind {
            DeviceKind::Block => {
                let range = [offset, len];
                // SAFETY: BLKDISCARD reads two u64 (start, length).
                unsafe { blk_discard(fd, &range) }.map(|_| ()).map_err(errno)
            }
            _ => loop {
                // SAFETY: plain fallocate on an fd we own.
                let rc = unsafe {
                    libc::fallocate(
                        fd,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        offset as libc::off_t,
                        len as libc::off_t,
                    )
                };
                if rc == 0 {
                    break Ok(());
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    break Err(e);
                }
            },
        };
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            Err(e) => Err(self.io_err("discard", offset, e)),
        }
    }
}
