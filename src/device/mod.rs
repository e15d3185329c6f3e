//! # The device layer: one trait, every kind of disk
//!
//! [`Device`] is the only way the engine touches storage. A new kind of disk
//! is one new implementation of it and nothing else. Implementations:
//!
//! - `RawDevice` (`raw.rs`): a block device or an image file, opened
//!   `O_DIRECT` (block devices also `O_EXCL`).
//! - `DirDevice` (`dir.rs`): a directory member; the same logical content as
//!   files, each written write → fsync → rename.
//! - `MemDevice` (`mem.rs`): in memory, for tests and fuzzing.
//! - `FaultyDevice` (`faulty.rs`): wraps a device and injects IO errors, bit
//!   flips and crashes (unsynced writes dropped or torn).
//! - `MeteredDevice` (`metered.rs`): wraps a device and counts its IO for
//!   metrics (bytes, operations, latency, errors).
//!
//! ## Contract (every implementation keeps it)
//!
//! - Offsets and lengths are multiples of [`Device::block_size`] (≥ 4096, a
//!   power of two) and buffers start on a [`buf::IO_ALIGN`] boundary; anything
//!   else is [`DeviceError::Misaligned`], never a silent bounce.
//! - Reads and writes beyond [`Device::size`] are [`DeviceError::OutOfRange`].
//! - A write is durable only after a later [`Device::sync`] returns Ok. Before
//!   that, a crash may drop it, keep it, or tear it at any block boundary.
//! - Reads see the latest write to the same range from this process.
//! - A batch (`read_batch`, `write_batch`) is a set of independent requests
//!   that may run in parallel, in any order; it succeeds only if all do, and
//!   the error names the first failed request.
//! - Implementations are `Send + Sync`: requests arrive from many threads.
//!
//! This module must never interpret the bytes it moves: formats live in
//! `dfs-format`, policy in the engine.

pub mod buf;
pub mod dir;
pub mod error;
pub mod faulty;
pub mod mem;
pub mod metered;
pub mod open;
pub mod raw;
pub mod uring;

pub use buf::{AlignedBuf, IO_ALIGN};
pub use dir::DirDevice;
pub use error::DeviceError;
pub use faulty::{CrashOptions, Fault, FaultHook, FaultyDevice, IoKind, IoOp};
pub use mem::MemDevice;
pub use open::{open_member_device, OpenMode};
pub use raw::{IoPathChoice, RawDevice, RawOpenOptions};

use std::fmt;
use std::path::PathBuf;

/// Result of device operations.
pub type Result<T> = std::result::Result<T, DeviceError>;

/// What kind of storage is behind a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A block device (`/dev/...`).
    Block,
    /// A regular image file.
    File,
    /// A directory member.
    Dir,
    /// In memory (tests).
    Memory,
}

/// A stable identity of a device: what it is and where it was opened, plus
/// the kernel's identity of the node (so two paths of one disk compare equal).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct DeviceIdentity {
    pub kind: DeviceKind,
    /// The path it was opened by (empty for memory devices).
    pub path: PathBuf,
    /// `st_rdev` of a block device, `st_dev` of a file or directory.
    pub dev: u64,
    /// Inode number (0 for block and memory devices).
    pub ino: u64,
}

impl fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.as_os_str().is_empty() {
            write!(f, "<{:?} device>", self.kind)
        } else {
            write!(f, "{}", self.path.display())
        }
    }
}

/// One read of a batch: fill `buf` from byte `offset`.
#[derive(Debug)]
pub struct ReadReq<'a> {
    pub offset: u64,
    pub buf: &'a mut [u8],
}

/// One write of a batch: store `buf` at byte `offset`.
#[derive(Debug, Clone, Copy)]
pub struct WriteReq<'a> {
    pub offset: u64,
    pub buf: &'a [u8],
}

/// A member's storage. See the module doc for the contract.
pub trait Device: Send + Sync + fmt::Debug {
    /// IO unit in bytes: a power of two, at least 4096.
    fn block_size(&self) -> u32;
    /// Usable size in bytes (a multiple of the block size).
    fn size(&self) -> u64;
    /// What and where this device is.
    fn identity(&self) -> &DeviceIdentity;
    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Write all of `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()>;
    /// Make every completed write durable.
    fn sync(&self) -> Result<()>;

    /// Several reads that may run in parallel (io-uring where it pays).
    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<()> {
        for r in reqs.iter_mut() {
            self.read_at(r.offset, r.buf)?;
        }
        Ok(())
    }

    /// Several writes that may run in parallel (io-uring where it pays).
    fn write_batch(&self, reqs: &[WriteReq<'_>]) -> Result<()> {
        for r in reqs {
            self.write_at(r.offset, r.buf)?;
        }
        Ok(())
    }

    /// Hint that `[offset, offset + len)` no longer holds live data (TRIM, or
    /// deleting a fragment file). Must not be called before the freeing
    /// commit is durable. The default does nothing.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let _ = (offset, len);
        Ok(())
    }
}

/// Check a request against the contract; every implementation calls it first.
pub fn check_request(dev: &dyn Device, offset: u64, buf: &[u8]) -> Result<()> {
    let bs = dev.block_size() as u64;
    let len = buf.len() as u64;
    if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) || !(buf.as_ptr() as usize).is_multiple_of(IO_ALIGN) {
        return Err(DeviceError::Misaligned {
            device: dev.identity().path.clone(),
            offset,
            len,
            block_size: dev.block_size(),
        });
    }
    if offset.checked_add(len).is_none_or(|end| end > dev.size()) {
        return Err(DeviceError::OutOfRange { device: dev.identity().path.clone(), offset, len, size: dev.size() });
    }
    Ok(())
}
