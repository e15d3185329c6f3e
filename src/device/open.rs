//! Open a member by path, whatever it is: a directory becomes a
//! [`DirDevice`], a block device or a regular (image) file a [`RawDevice`].

use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use super::dir::DirDevice;
use super::raw::{RawDevice, RawOpenOptions};
use super::{Device, DeviceError, DeviceKind, Result};

/// How to open a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenMode {
    /// No writes (tools that only look, a read-only mount).
    pub read_only: bool,
    /// Refuse when another process holds the device (`O_EXCL` for block
    /// devices). Tools that only look pass `false` so they work on a
    /// mounted pool.
    pub exclusive: bool,
}

/// What kind of member `path` is, from its file type (following symlinks,
/// so `/dev/disk/by-id/...` works).
pub fn member_kind(path: &Path) -> Result<DeviceKind> {
    let md = std::fs::metadata(path).map_err(|source| DeviceError::Open { device: path.to_path_buf(), source })?;
    let ft = md.file_type();
    if ft.is_dir() {
        Ok(DeviceKind::Dir)
    } else if ft.is_block_device() {
        Ok(DeviceKind::Block)
    } else if ft.is_file() {
        Ok(DeviceKind::File)
    } else {
        Err(DeviceError::Unsupported {
            device: path.to_path_buf(),
            reason: "not a block device, a regular file or a directory".into(),
        })
    }
}

/// Open the member at `path`: a directory as a [`DirDevice`], a block device
/// or a regular file as a [`RawDevice`].
pub fn open_member_device(path: &Path, mode: OpenMode) -> Result<Arc<dyn Device>> {
    if member_kind(path)? == DeviceKind::Dir {
        return Ok(Arc::new(DirDevice::open(path, mode.read_only)?));
    }
    let opts = RawOpenOptions { read_only: mode.read_only, exclusive: mode.exclusive };
    Ok(Arc::new(RawDevice::open(path, opts)?))
}
