//! Errors of the device layer. Each names the device (its path) so a tool can
//! print one line a human understands.

use std::path::PathBuf;

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The operating system reported an error.
    #[error("{}: {op} at byte {offset}: {source}", device.display())]
    Io {
        device: PathBuf,
        op: &'static str,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// Opening or probing failed.
    #[error("{}: cannot open: {source}", device.display())]
    Open {
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the device (O_EXCL failed: mounted or in use).
    #[error("{}: device is in use (mounted, or held by another process)", device.display())]
    Busy { device: PathBuf },
    /// Offset, length or buffer not aligned as the contract requires.
    #[error("{}: misaligned IO (offset {offset}, length {len}, block size {block_size})", device.display())]
    Misaligned { device: PathBuf, offset: u64, len: u64, block_size: u32 },
    /// The request leaves the device.
    #[error("{}: IO at byte {offset}, length {len} is beyond the device size {size}", device.display())]
    OutOfRange { device: PathBuf, offset: u64, len: u64, size: u64 },
    /// The device is not usable as a member (too small, wrong type, ...).
    #[error("{}: {reason}", device.display())]
    Unsupported { device: PathBuf, reason: String },
    /// An error injected by `FaultyDevice` (tests only).
    #[error("{}: injected fault: {op} at byte {offset}", device.display())]
    Injected { device: PathBuf, op: &'static str, offset: u64 },
    /// The device was crashed by `FaultyDevice` and refuses all IO until reopened.
    #[error("{}: device is crashed (test power cut)", device.display())]
    Crashed { device: PathBuf },
}
