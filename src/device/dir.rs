//! # DirDevice: a member kept as files in a directory
//!
//! A [`DirDevice`] shows the engine the same address space as a raw member
//! (the regions of `dfs_format::Layout`: superblock, root ring, journal,
//! bitmap, data, backup superblock, at the same byte offsets), but stores it
//! as files in a directory on some other filesystem:
//!
//! | Member range                  | File                                   |
//! |-------------------------------|----------------------------------------|
//! | primary superblock (block 0)  | `superblock`, bytes `[0, 4096)`        |
//! | backup superblock (last block)| `superblock`, bytes `[4096, 8192)`     |
//! | root ring                     | `roots`                                |
//! | journal                       | `journal`                              |
//! | bitmap                        | `bitmap`                               |
//! | data                          | `fragments/<16 lowercase hex digits>`  |
//! | gaps between regions          | none: read as zeros, writes refused    |
//!
//! In the region files, offset `x` of the region is offset `x` of the file;
//! bytes past the end of a file read as zeros. In the data region, each write
//! becomes one file named by the data-region block number where it starts
//! (`fragments/0000000000000100` holds the write that started at data block
//! 256) and as long as the write; ranges no file covers read as zeros.
//!
//! Block size is fixed at [`DIR_BLOCK_SIZE`] (4096) and the alignment
//! contract of `device/mod.rs` is enforced as for any device, though IO here
//! is buffered (no `O_DIRECT`: the directory may live on a filesystem that
//! does not support it).
//!
//! ## Where the layout comes from
//!
//! The superblock file is the only record of the layout. [`DirDevice::create`]
//! computes the layout (`Layout::compute(size, 4096)`), creates the files
//! (a zeroed two-block `superblock`, empty `roots`, `journal`, `bitmap`, an
//! empty `fragments/`) and returns a device that holds the layout in memory;
//! mkfs then writes both superblock copies through it (`write_at(0)` and
//! `write_at(size - 4096)`), taking the layout from [`DirDevice::layout`].
//! [`DirDevice::open`] decodes the two copies of the superblock file with
//! `dfs_format::superblock::choose_superblock` and uses the winner's region
//! table; when neither copy verifies (mkfs never finished, or both are
//! damaged) it fails with [`DeviceError::Unsupported`] saying why, the same
//! answer a raw device without a superblock gets. There is no other
//! descriptor file to keep in step.
//!
//! ## Crash safety
//!
//! - Region files are written in place (`pwrite`); [`Device::sync`]
//!   `fdatasync`s every region file written since the last sync. A crash may
//!   tear an unsynced region write at any byte; the format's checksums (two
//!   superblock copies, root-ring generations, journal record checksums)
//!   handle that, as on a raw member.
//! - A data-region write is atomic: written to
//!   `fragments/.tmp-<name>.<n>`, fsynced, renamed to `<name>`. After a crash a
//!   fragment file is wholly old or wholly new, never half written; leftover
//!   `.tmp-*` files are crashed writes and [`DirDevice::open`] deletes them.
//!   `sync` fsyncs `fragments/` and the member directory, so the renames (and
//!   deletions) before it are durable.
//! - A data write that overlaps existing fragment files (the engine never
//!   does this, but the contract allows it) is merged: one new file covers
//!   the union of the write and the files it overlaps, holding their old
//!   bytes outside the write. It is named by the union's first block, so its
//!   rename atomically replaces the overlapped file starting there; the other
//!   overlapped files lie wholly inside it and are then deleted. A crash
//!   between the rename and the deletions leaves files wholly contained in an
//!   earlier-starting file: `open` knows them to be stale and deletes them.
//!   (Should a deletion fail, the next `sync` retries it and fails if it
//!   cannot.) Any other overlap of fragment files is damage and fails `open`.
//! - [`Device::discard`] deletes the fragment files lying wholly inside the
//!   range (partial overlaps are left: discard is a hint).
//!
//! This module owns the mapping from member offsets to files and nothing
//! else. It must never interpret the bytes it moves (the superblock is
//! decoded once, at open, only to find the layout), never repair a damaged
//! superblock copy (the engine does that through `write_at`), and never take
//! a lock on the directory: pool locking belongs to the engine, which may
//! `flock` the member directory.

use super::{check_request, Device, DeviceError, DeviceIdentity, DeviceKind, Result};
use dfs_format::superblock::{choose_superblock, Superblock};
use dfs_format::{Layout, RegionKind};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

/// Block size of every directory member.
pub const DIR_BLOCK_SIZE: u32 = 4096;
/// The file holding both superblock copies (primary, then backup).
pub const SUPERBLOCK_FILE: &str = "superblock";
/// The file holding the root-ring region.
pub const ROOTS_FILE: &str = "roots";
/// The file holding the journal region.
pub const JOURNAL_FILE: &str = "journal";
/// The file holding the bitmap region.
pub const BITMAP_FILE: &str = "bitmap";
/// The directory holding one file per data-region write.
pub const FRAGMENTS_DIR: &str = "fragments";
/// Prefix of a fragment file being written (deleted at open: a crashed write).
pub const TMP_PREFIX: &str = ".tmp-";

const BS: u64 = DIR_BLOCK_SIZE as u64;
/// Index of the region files in [`DirDevice::files`].
const SB: usize = 0;
const ROOTS: usize = 1;
const JOURNAL: usize = 2;
const BITMAP: usize = 3;
const FILE_NAMES: [&str; 4] = [SUPERBLOCK_FILE, ROOTS_FILE, JOURNAL_FILE, BITMAP_FILE];

/// The name of the fragment file starting at data-region block `block`.
pub fn fragment_file_name(block: u64) -> String {
    format!("{block:016x}")
}

/// Parse a fragment file name (exactly 16 lowercase hex digits).
pub fn parse_fragment_file_name(name: &str) -> Option<u64> {
    if name.len() == 16 && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        u64::from_str_radix(name, 16).ok()
    } else {
        None
    }
}

/// One region file, open for the device's lifetime.
#[derive(Debug)]
struct RegionFile {
    file: File,
    /// Written since the last sync.
    dirty: AtomicBool,
}

/// Where a piece of a request lands.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Region file `idx`, at byte `at` of the file.
    File { idx: usize, at: u64 },
    /// The data region, at byte `at` of the region.
    Data { at: u64 },
    /// Between regions.
    Gap,
}

/// A member stored as files in a directory. See the module doc.
#[derive(Debug)]
pub struct DirDevice {
    identity: DeviceIdentity,
    dir: PathBuf,
    layout: Layout,
    read_only: bool,
    files: [RegionFile; 4],
    fragments_dir: File,
    member_dir: File,
    /// Fragment files: first data block → length in blocks. Never overlapping.
    index: RwLock<BTreeMap<u64, u64>>,
    /// Stale fragment files (swallowed by a merge) whose deletion failed;
    /// `sync` retries. Locked after `index`, never before.
    stale: Mutex<BTreeSet<u64>>,
    /// Renames or deletions in `fragments/` since the last sync.
    dirs_dirty: AtomicBool,
    tmp_seq: AtomicU64,
}

impl DirDevice {
    /// Make `path` (an empty directory, or a path that does not exist yet,
    /// whose parent does) a directory member of `size` bytes (rounded down to
    /// whole 4096-byte blocks) with the layout mkfs gives a raw member of
    /// that size. The superblock copies are left zeroed for mkfs to write.
    pub fn create(path: &Path, size: u64) -> Result<DirDevice> {
        let layout = Layout::compute(size, DIR_BLOCK_SIZE)
            .map_err(|e| DeviceError::Unsupported { device: path.to_path_buf(), reason: e.to_string() })?;
        DirDevice::create_with_layout(path, &layout)
    }

    /// [`DirDevice::create`] with a given layout (block size must be 4096).
    pub fn create_with_layout(path: &Path, layout: &Layout) -> Result<DirDevice> {
        let unsupported = |reason: String| DeviceError::Unsupported { device: path.to_path_buf(), reason };
        if layout.block_size != DIR_BLOCK_SIZE {
            return Err(unsupported(format!(
                "a directory member has {DIR_BLOCK_SIZE}-byte blocks, not {}",
                layout.block_size
            )));
        }
        layout.validate().map_err(|e| unsupported(e.to_string()))?;
        let open_err = |source: io::Error| DeviceError::Open { device: path.to_path_buf(), source };
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => {
                if fs::read_dir(path).map_err(open_err)?.next().is_some() {
                    return Err(unsupported("directory is not empty".into()));
                }
            }
            Ok(_) => return Err(unsupported("exists and is not a directory".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(path).map_err(open_err)?;
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                File::open(parent).and_then(|d| d.sync_all()).map_err(open_err)?;
            }
            Err(e) => return Err(open_err(e)),
        }
        let sb = File::create(path.join(SUPERBLOCK_FILE)).map_err(open_err)?;
        sb.set_len(2 * BS).map_err(open_err)?;
        sb.sync_all().map_err(open_err)?;
        for name in [ROOTS_FILE, JOURNAL_FILE, BITMAP_FILE] {
            File::create(path.join(name)).and_then(|f| f.sync_all()).map_err(open_err)?;
        }
        fs::create_dir(path.join(FRAGMENTS_DIR)).map_err(open_err)?;
        File::open(path.join(FRAGMENTS_DIR)).and_then(|d| d.sync_all()).map_err(open_err)?;
        File::open(path).and_then(|d| d.sync_all()).map_err(open_err)?;
        DirDevice::open_with(path, layout.clone(), false)
    }

    /// Open the directory member at `path`, taking its layout from the
    /// superblock file. Deletes leftover `.tmp-*` files and stale fragment
    /// files (unless `read_only`).
    pub fn open(path: &Path, read_only: bool) -> Result<DirDevice> {
        let open_err = |source: io::Error| DeviceError::Open { device: path.to_path_buf(), source };
        let unsupported = |reason: String| DeviceError::Unsupported { device: path.to_path_buf(), reason };
        let md = fs::metadata(path).map_err(open_err)?;
        if !md.is_dir() {
            return Err(unsupported("not a directory".into()));
        }
        let sb_path = path.join(SUPERBLOCK_FILE);
        let sb = match File::open(&sb_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(unsupported(format!("no {SUPERBLOCK_FILE} file: not a DynamicFS directory member")))
            }
            Err(e) => return Err(open_err(e)),
        };
        let mut bytes = vec![0u8; 2 * BS as usize];
        read_full_at(&sb, &mut bytes, 0).map_err(open_err)?;
        let (primary, backup) = bytes.split_at(BS as usize);
        let layout = match choose_superblock(primary, Some(backup)) {
            Ok(choice) => choice.superblock.layout,
            Err(pe) => {
                let be = match Superblock::decode(backup) {
                    Ok(_) => "holds a primary copy".to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(unsupported(format!(
                    "no valid superblock in {SUPERBLOCK_FILE} (mkfs not finished, or both copies damaged): \
                     primary: {pe}; backup: {be}"
                )));
            }
        };
        if layout.block_size != DIR_BLOCK_SIZE {
            return Err(unsupported(format!(
                "superblock says block size {}, a directory member has {DIR_BLOCK_SIZE}",
                layout.block_size
            )));
        }
        DirDevice::open_with(path, layout, read_only)
    }

    fn open_with(path: &Path, layout: Layout, read_only: bool) -> Result<DirDevice> {
        let dir = path.to_path_buf();
        let open_err = |source: io::Error| DeviceError::Open { device: dir.clone(), source };
        let unsupported = |reason: String| DeviceError::Unsupported { device: dir.clone(), reason };
        let md = fs::metadata(path).map_err(open_err)?;
        let identity = DeviceIdentity { kind: DeviceKind::Dir, path: dir.clone(), dev: md.dev(), ino: md.ino() };
        let limits = [
            2 * BS,
            layout.region(RegionKind::RootRing).len,
            layout.region(RegionKind::Journal).len,
            layout.region(RegionKind::Bitmap).len,
        ];
        let mut files = Vec::with_capacity(4);
        for (name, limit) in FILE_NAMES.iter().zip(limits) {
            let p = path.join(name);
            let file = match OpenOptions::new().read(true).write(!read_only).open(&p) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(unsupported(format!("member directory is damaged: {name} is missing")))
                }
                Err(e) => return Err(open_err(e)),
            };
            let len = file.metadata().map_err(open_err)?.len();
            if len > limit {
                return Err(unsupported(format!(
                    "member directory is damaged: {name} holds {len} bytes, its region only {limit}"
                )));
            }
            files.push(RegionFile { file, dirty: AtomicBool::new(false) });
        }
        let files: [RegionFile; 4] = files.try_into().expect("four region files");
        let frag_path = path.join(FRAGMENTS_DIR);
        let fragments_dir = match File::open(&frag_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(unsupported(format!("member directory is damaged: {FRAGMENTS_DIR}/ is missing")))
            }
            Err(e) => return Err(open_err(e)),
        };
        let member_dir = File::open(path).map_err(open_err)?;
        let index = scan_fragments(&dir, &frag_path, layout.data_blocks(), read_only)?;
        if !read_only {
            // Make the clean-up of crashed writes durable before anything new.
            fragments_dir.sync_all().map_err(open_err)?;
        }
        Ok(DirDevice {
            identity,
            dir,
            layout,
            read_only,
            files,
            fragments_dir,
            member_dir,
            index: RwLock::new(index),
            stale: Mutex::new(BTreeSet::new()),
            dirs_dirty: AtomicBool::new(false),
            tmp_seq: AtomicU64::new(0),
        })
    }

    /// The member's region table (from the superblock, or as created).
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The member directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// True when opened read-only (writes, discards fail; sync does nothing).
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The fragment files: (first data-region block, length in blocks), in
    /// block order.
    pub fn fragment_files(&self) -> Vec<(u64, u64)> {
        self.index.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(a, n)| (*a, *n)).collect()
    }

    fn lock_stale(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.stale.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Retry deleting stale fragment files (see [`DirDevice::write_data`]).
    fn delete_stale(&self) -> Result<()> {
        let index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let mut stale = self.lock_stale();
        while let Some(&a) = stale.first() {
            if !index.contains_key(&a) {
                match fs::remove_file(self.frag_path(a)) {
                    Ok(()) => self.dirs_dirty.store(true, Ordering::SeqCst),
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(self.io_err("sync", self.layout.data_offset(a), err)),
                }
            }
            stale.remove(&a);
        }
        Ok(())
    }

    fn io_err(&self, op: &'static str, offset: u64, source: io::Error) -> DeviceError {
        DeviceError::Io { device: self.dir.clone(), op, offset, source }
    }

    fn frag_path(&self, block: u64) -> PathBuf {
        self.dir.join(FRAGMENTS_DIR).join(fragment_file_name(block))
    }

    /// Cut `[offset, offset + len)` into pieces that each land in one place.
    fn segments(&self, offset: u64, len: u64) -> Vec<(u64, u64, Target)> {
        let l = &self.layout;
        let size = l.size;
        let mut spans: Vec<(u64, u64, Option<Target>)> = vec![
            (0, BS, Some(Target::File { idx: SB, at: 0 })),
            (size - BS, size, Some(Target::File { idx: SB, at: BS })),
        ];
        for (kind, idx) in [(RegionKind::RootRing, ROOTS), (RegionKind::Journal, JOURNAL), (RegionKind::Bitmap, BITMAP)]
        {
            let r = l.region(kind);
            spans.push((r.start, r.end(), Some(Target::File { idx, at: 0 })));
        }
        let d = l.region(RegionKind::Data);
        spans.push((d.start, d.end(), Some(Target::Data { at: 0 })));
        spans.sort_by_key(|s| s.0);
        let mut out = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        for (s, e, t) in spans {
            if pos >= end {
                break;
            }
            if e <= pos {
                continue;
            }
            if pos < s {
                let g = s.min(end);
                out.push((pos, g - pos, Target::Gap));
                pos = g;
                if pos >= end {
                    break;
                }
            }
            let n = e.min(end) - pos;
            let t = match t.expect("span target") {
                Target::File { idx, at } => Target::File { idx, at: at + (pos - s) },
                Target::Data { .. } => Target::Data { at: pos - s },
                Target::Gap => Target::Gap,
            };
            out.push((pos, n, t));
            pos += n;
        }
        if pos < end {
            out.push((pos, end - pos, Target::Gap));
        }
        out
    }

    fn read_only_err(&self, op: &'static str, offset: u64) -> DeviceError {
        self.io_err(op, offset, io::Error::from_raw_os_error(libc::EROFS))
    }

    /// Fill `buf` from the data region at block `s` (index already locked).
    fn read_data(&self, index: &BTreeMap<u64, u64>, s: u64, buf: &mut [u8]) -> Result<()> {
        buf.fill(0);
        let e = s + buf.len() as u64 / BS;
        let first = index.range(..=s).next_back().map_or(s, |(a, _)| *a);
        for (&a, &n) in index.range(first..e) {
            let (lo, hi) = (a.max(s), (a + n).min(e));
            if lo >= hi {
                continue;
            }
            let member_off = self.layout.data_offset(lo);
            let file = File::open(self.frag_path(a)).map_err(|err| self.io_err("read", member_off, err))?;
            let dst = &mut buf[((lo - s) * BS) as usize..((hi - s) * BS) as usize];
            read_full_at(&file, dst, (lo - a) * BS).map_err(|err| self.io_err("read", member_off, err))?;
        }
        Ok(())
    }

    /// Write a new fragment file `<block>` holding `data`: tmp, fsync, rename.
    /// The caller holds the index write lock (or has checked there is no
    /// overlap and holds it while renaming).
    fn write_tmp(&self, block: u64, data: &[u8]) -> Result<PathBuf> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(FRAGMENTS_DIR).join(format!("{TMP_PREFIX}{}.{seq}", fragment_file_name(block)));
        let res = (|| {
            let f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
            f.write_all_at(data, 0)?;
            f.sync_all()
        })();
        match res {
            Ok(()) => Ok(tmp),
            Err(err) => {
                let _ = fs::remove_file(&tmp);
                Err(self.io_err("write", self.layout.data_offset(block), err))
            }
        }
    }

    fn install(&self, tmp: &Path, block: u64) -> Result<()> {
        fs::rename(tmp, self.frag_path(block)).map_err(|err| {
            let _ = fs::remove_file(tmp);
            self.io_err("write", self.layout.data_offset(block), err)
        })?;
        self.dirs_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Write `data` at data-region block `s`, atomically (see the module doc).
    fn write_data(&self, s: u64, data: &[u8]) -> Result<()> {
        let e = s + data.len() as u64 / BS;
        let overlapping = |index: &BTreeMap<u64, u64>| -> Vec<(u64, u64)> {
            let first = index.range(..=s).next_back().map_or(s, |(a, _)| *a);
            index.range(first..e).filter(|(a, n)| **a + **n > s).map(|(a, n)| (*a, *n)).collect()
        };
        // Fast path: no overlap, so the slow part (write + fsync) runs
        // unlocked and writes to different ranges proceed in parallel.
        if overlapping(&self.index.read().unwrap_or_else(|e| e.into_inner())).is_empty() {
            let tmp = self.write_tmp(s, data)?;
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            if overlapping(&index).is_empty() {
                self.install(&tmp, s)?;
                index.insert(s, e - s);
                self.lock_stale().remove(&s);
                return Ok(());
            }
            // A concurrent write got there first: merge with it below.
            let _ = fs::remove_file(&tmp);
        }
        // Slow path: one new file covering the union, written under the lock.
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let olds = overlapping(&index);
        let ms = olds.first().map_or(s, |(a, _)| (*a).min(s));
        let me = olds.last().map_or(e, |(a, n)| (a + n).max(e));
        let mut merged = vec![0u8; ((me - ms) * BS) as usize];
        self.read_data(&index, ms, &mut merged)?;
        merged[((s - ms) * BS) as usize..((e - ms) * BS) as usize].copy_from_slice(data);
        let tmp = self.write_tmp(ms, &merged)?;
        self.install(&tmp, ms)?;
        // The rename must be durable before the deletions: a filesystem that
        // persisted a deletion but not the rename would lose the old bytes.
        self.fragments_dir.sync_all().map_err(|err| self.io_err("write", self.layout.data_offset(ms), err))?;
        for (a, _) in &olds {
            index.remove(a);
        }
        index.insert(ms, me - ms);
        let mut stale = self.lock_stale();
        stale.remove(&ms);
        for (a, _) in olds.iter().filter(|(a, _)| *a != ms) {
            // Wholly inside the new file, so stale. If the crash comes
            // first, open deletes it; if this fails, the next sync retries.
            if let Err(err) = fs::remove_file(self.frag_path(*a)) {
                tracing::warn!(dir = %self.dir.display(), file = %fragment_file_name(*a), %err,
                    "cannot delete a stale fragment file; sync will retry");
                stale.insert(*a);
            }
        }
        Ok(())
    }
}

/// `pread` until `buf` is full; bytes past the end of the file read as zeros.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Build the fragment index from `fragments/`: delete `.tmp-*` (crashed
/// writes) and fragment files contained in an earlier-starting one (stale
/// after a crashed merge), unless read-only; refuse any other damage.
fn scan_fragments(dir: &Path, frag_path: &Path, data_blocks: u64, read_only: bool) -> Result<BTreeMap<u64, u64>> {
    let open_err = |source: io::Error| DeviceError::Open { device: dir.to_path_buf(), source };
    let damaged = |reason: String| DeviceError::Unsupported {
        device: dir.to_path_buf(),
        reason: format!("member directory is damaged: {reason}"),
    };
    let mut found = BTreeMap::new();
    for entry in fs::read_dir(frag_path).map_err(open_err)? {
        let entry = entry.map_err(open_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(dir = %dir.display(), file = ?name, "ignoring a file that is not a fragment");
            continue;
        };
        if name.starts_with(TMP_PREFIX) {
            if !read_only {
                tracing::info!(dir = %dir.display(), file = name, "deleting an unfinished fragment write");
                fs::remove_file(entry.path()).map_err(open_err)?;
            }
            continue;
        }
        let Some(block) = parse_fragment_file_name(name) else {
            tracing::warn!(dir = %dir.display(), file = name, "ignoring a file that is not a fragment");
            continue;
        };
        let len = entry.metadata().map_err(open_err)?.len();
        if len == 0 || !len.is_multiple_of(BS) {
            return Err(damaged(format!("{FRAGMENTS_DIR}/{name} is {len} bytes, not whole blocks")));
        }
        let blocks = len / BS;
        if block.checked_add(blocks).is_none_or(|end| end > data_blocks) {
            return Err(damaged(format!(
                "{FRAGMENTS_DIR}/{name} ({blocks} blocks) ends beyond the data region ({data_blocks} blocks)"
            )));
        }
        found.insert(block, blocks);
    }
    let mut index = BTreeMap::new();
    let mut last: Option<(u64, u64)> = None;
    for (a, n) in found {
        if let Some((la, le)) = last {
            if a < le {
                if a + n <= le {
                    let stale = fragment_file_name(a);
                    if !read_only {
                        tracing::info!(dir = %dir.display(), file = %stale, "deleting a stale fragment file");
                        fs::remove_file(frag_path.join(&stale)).map_err(open_err)?;
                    }
                    continue;
                }
                return Err(damaged(format!(
                    "fragment files {} and {stale} overlap",
                    fragment_file_name(la),
                    stale = fragment_file_name(a)
                )));
            }
        }
        index.insert(a, n);
        last = Some((a, a + n));
    }
    Ok(index)
}

impl Device for DirDevice {
    fn block_size(&self) -> u32 {
        DIR_BLOCK_SIZE
    }

    fn size(&self) -> u64 {
        self.layout.size
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_request(self, offset, buf)?;
        let mut done = 0usize;
        for (off, len, target) in self.segments(offset, buf.len() as u64) {
            let part = &mut buf[done..done + len as usize];
            match target {
                Target::File { idx, at } => {
                    read_full_at(&self.files[idx].file, part, at).map_err(|e| self.io_err("read", off, e))?
                }
                Target::Data { at } => {
                    let index = self.index.read().unwrap_or_else(|e| e.into_inner());
                    self.read_data(&index, at / BS, part)?;
                }
                Target::Gap => part.fill(0),
            }
            done += len as usize;
        }
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_request(self, offset, buf)?;
        if self.read_only {
            return Err(self.read_only_err("write", offset));
        }
        let segs = self.segments(offset, buf.len() as u64);
        if let Some((off, len, _)) = segs.iter().find(|s| matches!(s.2, Target::Gap)) {
            return Err(self.io_err(
                "write",
                *off,
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "bytes [{off}, {}) lie between regions; no file of a directory member holds them",
                        off + len
                    ),
                ),
            ));
        }
        let mut done = 0usize;
        for (off, len, target) in segs {
            let part = &buf[done..done + len as usize];
            match target {
                Target::File { idx, at } => {
                    let f = &self.files[idx];
                    f.dirty.store(true, Ordering::SeqCst);
                    f.file.write_all_at(part, at).map_err(|e| self.io_err("write", off, e))?;
                }
                Target::Data { at } => self.write_data(at / BS, part)?,
                Target::Gap => unreachable!("gaps refused above"),
            }
            done += len as usize;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        for f in &self.files {
            if f.dirty.swap(false, Ordering::SeqCst) {
                if let Err(e) = f.file.sync_data() {
                    f.dirty.store(true, Ordering::SeqCst);
                    return Err(self.io_err("sync", 0, e));
                }
            }
        }
        if !self.lock_stale().is_empty() {
            self.delete_stale()?;
        }
        if self.dirs_dirty.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.fragments_dir.sync_all().and_then(|_| self.member_dir.sync_all()) {
                self.dirs_dirty.store(true, Ordering::SeqCst);
                return Err(self.io_err("sync", 0, e));
            }
        }
        Ok(())
    }

    /// Deletes the fragment files lying wholly inside the range; nothing
    /// else (region files keep their bytes: discard is only a hint).
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if !offset.is_multiple_of(BS) || !len.is_multiple_of(BS) {
            return Err(DeviceError::Misaligned { device: self.dir.clone(), offset, len, block_size: DIR_BLOCK_SIZE });
        }
        if offset.checked_add(len).is_none_or(|end| end > self.layout.size) {
            return Err(DeviceError::OutOfRange { device: self.dir.clone(), offset, len, size: self.layout.size });
        }
        if self.read_only {
            return Err(self.read_only_err("discard", offset));
        }
        for (_, n, target) in self.segments(offset, len) {
            let Target::Data { at } = target else {
                continue;
            };
            let (s, e) = (at / BS, at / BS + n / BS);
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            let doomed: Vec<u64> = index.range(s..e).filter(|(a, n)| **a + **n <= e).map(|(a, _)| *a).collect();
            for a in doomed {
                let path = self.frag_path(a);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(self.io_err("discard", self.layout.data_offset(a), err)),
                }
                index.remove(&a);
                self.dirs_dirty.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::AlignedBuf;

    #[test]
    fn names_round_trip() {
        assert_eq!(fragment_file_name(0xab), "00000000000000ab");
        assert_eq!(parse_fragment_file_name("00000000000000ab"), Some(0xab));
        assert_eq!(parse_fragment_file_name("00000000000000AB"), None);
        assert_eq!(parse_fragment_file_name("ab"), None);
        assert_eq!(parse_fragment_file_name(".tmp-00000000000000ab.0"), None);
    }

    #[test]
    fn sync_retries_stale_deletions_but_never_deletes_a_live_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = DirDevice::create(&tmp.path().join("m"), 32 << 20).unwrap();
        let frags = tmp.path().join("m").join(FRAGMENTS_DIR);
        // A stale file whose deletion failed during a merge...
        fs::write(frags.join(fragment_file_name(40)), vec![0u8; 4096]).unwrap();
        dev.lock_stale().insert(40);
        // ...and a stale entry whose name a later write reused.
        dev.lock_stale().insert(8);
        let b = AlignedBuf::from_slice_padded(&[1u8; 4096], 4096);
        dev.write_at(dev.layout().data_offset(8), &b).unwrap();
        dev.lock_stale().insert(8); // as if the write had not cleared it
        dev.sync().unwrap();
        assert!(!frags.join(fragment_file_name(40)).exists());
        assert!(frags.join(fragment_file_name(8)).exists());
        assert!(dev.lock_stale().is_empty());
    }
}
