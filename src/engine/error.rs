//! The engine's typed errors. Each maps to one errno in [`EngineError::errno`];
//! the FUSE layer uses that and nothing else.

use crate::device::DeviceError;
use dfs_format::FormatError;

/// Why an engine call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("no space left in the pool: {0}")]
    NoSpace(String),
    #[error("read-only pool")]
    ReadOnly,
    #[error("no such attribute")]
    NoData,
    #[error("attribute name or value too large")]
    Range,
    #[error("operation not permitted")]
    NotPermitted,
    /// SEEK_DATA / SEEK_HOLE at or past the end, or no data after the offset.
    #[error("no data or hole at or after that offset")]
    NoSuchOffset,
    #[error("pool {pool} is in use by PID {pid} (lock {lock})")]
    PoolInUse { pool: uuid::Uuid, pid: u32, lock: String },
    #[error("policy {policy} cannot be satisfied: {reason}")]
    PolicyUnsatisfiable { policy: String, reason: String },
    #[error("data lost: extent {extent:032x} has too few readable fragments ({reason})")]
    DataLost { extent: u128, reason: String },
    #[error("metadata corrupted: {0}")]
    Corrupted(String),
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A checkpoint payload of an unknown version, or one that does not decode.
    #[error(transparent)]
    Checkpoint(#[from] crate::engine::state::CheckpointError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    /// The errno a Linux filesystem would return.
    pub fn errno(&self) -> i32 {
        match self {
            EngineError::NotFound => libc::ENOENT,
            EngineError::Exists => libc::EEXIST,
            EngineError::NotEmpty => libc::ENOTEMPTY,
            EngineError::NotDir => libc::ENOTDIR,
            EngineError::IsDir => libc::EISDIR,
            EngineError::NameTooLong => libc::ENAMETOOLONG,
            EngineError::Invalid(_) | EngineError::PolicyUnsatisfiable { .. } => libc::EINVAL,
            EngineError::NoSpace(_) => libc::ENOSPC,
            EngineError::ReadOnly => libc::EROFS,
            EngineError::NoData => libc::ENODATA,
            EngineError::Range => libc::ERANGE,
            EngineError::NotPermitted => libc::EPERM,
            EngineError::NoSuchOffset => libc::ENXIO,
            EngineError::PoolInUse { .. } => libc::EBUSY,
            _ => libc::EIO,
        }
    }
}

/// Result of engine calls.
pub type Result<T> = std::result::Result<T, EngineError>;
