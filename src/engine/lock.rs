//! The pool lock: one process writes a pool at a time.
//!
//! A lock file `<dir>/<pool-uuid>.lock` (default dir `/run/dfs`) is held
//! with an exclusive `flock` for as long as the pool is open for writing,
//! and holds the owner's PID so a second opener can say who has it. The
//! kernel drops the flock when the process dies, so a crash never leaves a
//! stale lock. Read-only opens (inspect, `fsck -n`) take no lock. The file is
//! left in place on close (removing it would race with a waiting opener).

use super::error::{EngineError, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Default directory of lock files.
pub const DEFAULT_LOCK_DIR: &str = "/run/dfs";

/// A held pool lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct PoolLock {
    _file: File,
    path: PathBuf,
}

impl PoolLock {
    /// Take the lock of `pool` in `dir`, or fail with `PoolInUse`.
    pub fn acquire(dir: &Path, pool: uuid::Uuid) -> Result<PoolLock> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::Other(format!("{}: {e}", dir.display())))?;
        let path = dir.join(format!("{pool}.lock"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| EngineError::Other(format!("{}: {e}", path.display())))?;
        // SAFETY: flock on a valid fd owned by `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            let pid = s.trim().parse().unwrap_or(0);
            return Err(EngineError::PoolInUse { pool, pid, lock: path.display().to_string() });
        }
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = writeln!(file, "{}", std::process::id());
        Ok(PoolLock { _file: file, path })
    }

    /// Where the lock file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
