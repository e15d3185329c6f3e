//! The one edge where engine errors become errno: [`errno`] and the two
//! macros every handler uses to reply with an error.

use crate::engine::EngineError;

/// The errno for an engine error ([`EngineError::errno`], `EIO` by default).
pub fn errno(e: &EngineError) -> fuser::Errno {
    fuser::Errno::from_i32(e.errno())
}

/// True for errors that are a normal answer (ENOENT on lookup, ENODATA on
/// getxattr, ...) rather than a problem worth a warning.
pub fn is_expected(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::NotFound
            | EngineError::Exists
            | EngineError::NotEmpty
            | EngineError::NotDir
            | EngineError::IsDir
            | EngineError::NameTooLong
            | EngineError::NoData
            | EngineError::Range
            | EngineError::Invalid(_)
            | EngineError::NotPermitted
            | EngineError::NoSuchOffset
            | EngineError::ReadOnly
            | EngineError::PolicyUnsatisfiable { .. }
    )
}

/// Reply to `$reply` with the errno of the engine error `$err`, logging it
/// at a level fitting its kind (debug for normal answers, warn for a full
/// pool, error for IO errors and corruption).
macro_rules! fuse_error {
    ($op:expr, $reply:expr, $err:expr) => {{
        let err: $crate::engine::EngineError = $err;
        let errno = $crate::fuse::error::errno(&err);
        $crate::metrics::fuse::error($op);
        if $crate::fuse::error::is_expected(&err) {
            tracing::debug!(op = $op, errno = errno.code(), "{err}");
        } else if matches!(err, $crate::engine::EngineError::NoSpace(_)) {
            tracing::warn!(op = $op, errno = errno.code(), "{err}");
        } else {
            tracing::error!(op = $op, errno = errno.code(), "{err}");
        }
        $reply.error(errno);
    }};
}

/// Reply ENOSYS to an operation DynamicFS does not implement (the kernel
/// then falls back where it can: local POSIX locks, generic lseek, a
/// read/write copy for copy_file_range) and log it once per call at debug.
macro_rules! fuse_unsupported {
    ($op:expr, $req:expr, $reply:expr) => {{
        tracing::debug!(req = $req.unique().0, op = $op, "not supported");
        $reply.error(fuser::Errno::ENOSYS);
    }};
}

pub(crate) use fuse_error;
pub(crate) use fuse_unsupported;
