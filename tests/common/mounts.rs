//! DynamicFS FUSE mounts in tests: is a directory a `fuse.dfs` mount point,
//! and a guard that unmounts it (lazily) on drop when a failed step left it
//! mounted. Owns only that; it never touches a mount it is not given.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// True when `dir` is a `fuse.dfs` mount point (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let needle = format!(" {} ", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.contains(&needle) && l.contains(" - fuse.dfs "))
}

/// Unmounts its directory on drop if it is still mounted (a step failed),
/// then gives the daemon a moment to close the pool before the devices go.
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
