//! # Sparse files: fallocate, hole punching, SEEK_DATA / SEEK_HOLE, range copies
//!
//! Owns the engine calls behind `fallocate(2)`, `lseek(2)` with
//! `SEEK_DATA` / `SEEK_HOLE` and `copy_file_range(2)`. A file is a map of
//! immutable extents of up to 1 MiB; an index with no extent is a hole, and
//! the bytes of an extent past its length read as zeros. So:
//!
//! - **Punching a hole** drops every extent wholly inside the hole (it then
//!   costs nothing) and rewrites the extents the hole cuts (copy on write,
//!   under the extent's own policy; an extent left all zeros is dropped
//!   too), in one transaction, under the file's lock, after flushing the
//!   file's buffer. The size never changes.
//! - **Allocating** (mode 0) cannot reserve space: extents are written
//!   when data is, wherever placement then puts them. It checks that the
//!   pool has room for the growth under the file's policy (else ENOSPC)
//!   and extends the size, as a size change (zeros) does. `KEEP_SIZE`
//!   only checks.
//! - **Zero range** is a punched hole plus, without `KEEP_SIZE`, the growth.
//! - **Seeking** flushes the file's buffer and answers from the extent map:
//!   data is `[index * 1 MiB, index * 1 MiB + extent length)` for every
//!   extent; everything else below the size is a hole, and the size itself
//!   is the implicit hole at the end.
//! - **Copying** reads and writes through the ordinary data path, one
//!   extent at a time (extents belong to one file, so they are never
//!   shared); holes in the source stay holes, since extents of zeros are
//!   never stored.
//!
//! This module never writes a fragment itself (it goes through the data
//! path's `read_extent` / `write_extent` / `write`), never changes a size
//! except as `fallocate` documents, and never holds the metadata lock
//! across device IO.

use super::error::{EngineError, Result};
use super::pool::now_ns;
use super::state::{Attrs, Extent, Ino, Op, EXTENT_SIZE};
use super::Pool;

/// What `fallocate` should do (the FUSE layer translates the mode bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallocMode {
    /// Mode 0 (`keep_size: false`) or `FALLOC_FL_KEEP_SIZE`.
    Allocate { keep_size: bool },
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE`.
    PunchHole,
    /// `FALLOC_FL_ZERO_RANGE`, with or without `FALLOC_FL_KEEP_SIZE`.
    ZeroRange { keep_size: bool },
}

/// `lseek` whence values this module answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekWhence {
    /// SEEK_DATA: the first data byte at or after the offset.
    Data,
    /// SEEK_HOLE: the first hole byte at or after the offset (EOF counts).
    Hole,
}

/// Where the data of a file lies: sorted, disjoint `[start, end)` ranges
/// below `size`, from its extent map (`(index, length)` pairs in index order).
pub fn data_ranges(extents: impl IntoIterator<Item = (u64, u32)>, size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (idx, len) in extents {
        let start = idx.saturating_mul(EXTENT_SIZE);
        let end = start.saturating_add(len as u64).min(size);
        if start >= end {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

/// The answer to `lseek(offset, whence)` on a file of `size` bytes whose
/// data lies in `ranges` (as [`data_ranges`] gives), or `NoSuchOffset`
/// (ENXIO) at or past the end, or for SEEK_DATA with no data after `offset`.
pub fn seek_in(ranges: &[(u64, u64)], size: u64, offset: u64, whence: SeekWhence) -> Result<u64> {
    if offset >= size {
        return Err(EngineError::NoSuchOffset);
    }
    match whence {
        SeekWhence::Data => ranges
            .iter()
            .find(|(_, end)| *end > offset)
            .map(|(start, _)| (*start).max(offset))
            .ok_or(EngineError::NoSuchOffset),
        SeekWhence::Hole => {
            let mut pos = offset;
            for (start, end) in ranges {
                if *end <= pos {
                    continue;
                }
                if *start > pos {
                    break;
                }
                pos = *end;
            }
            Ok(pos.min(size))
        }
    }
}

impl Pool {
    /// `fallocate(2)` on file `ino` for `[offset, offset + len)`.
    pub fn fallocate(&self, ino: Ino, offset: u64, len: u64, mode: FallocMode) -> Result<()> {
        if self.read_only() {
            return Err(EngineError::ReadOnly);
        }
        if len == 0 {
            return Err(EngineError::Invalid("fallocate of zero bytes".into()));
        }
        let end = offset.checked_add(len).filter(|e| *e <= i64::MAX as u64);
        let end = end.ok_or_else(|| EngineError::Invalid("fallocate range overflows".into()))?;
        match mode {
            FallocMode::Allocate { keep_size } => self.grow_to(ino, end, keep_size),
            FallocMode::PunchHole => self.punch_hole(ino, offset, len),
            FallocMode::ZeroRange { keep_size } => {
                self.punch_hole(ino, offset, len)?;
                self.grow_to(ino, end, keep_size)
            }
        }
    }

    /// Check there is room for the file to reach `end`, then (unless
    /// `keep_size`) extend it to `end` with zeros.
    fn grow_to(&self, ino: Ino, end: u64, keep_size: bool) -> Result<()> {
        let (size, policy) = {
            let m = self.meta();
            let (attrs, _) = super::data::file_map(&m, ino)?;
            (Self::overlay_attrs(&m, ino, *attrs).size, Self::effective_policy(&m, ino))
        };
        if end <= size {
            return Ok(());
        }
        let growth = end - size;
        let raw = growth as u128 * policy.fragment_count() as u128 / policy.fragments_needed().max(1) as u128;
        let free = self.statfs()?.free_bytes as u128;
        if raw > free {
            return Err(EngineError::NoSpace(format!(
                "fallocate of {growth} bytes under {policy} needs {raw} raw bytes, {free} are free"
            )));
        }
        if keep_size {
            return Ok(());
        }
        self.set_size(ino, end, now_ns())
    }

    /// Zero `[offset, offset + len)` of file `ino` without changing its
    /// size: whole extents inside go, cut ones are rewritten.
    pub fn punch_hole(&self, ino: Ino, offset: u64, len: u64) -> Result<()> {
        if self.read_only() {
            return Err(EngineError::ReadOnly);
        }
        let lock = self.file_lock(ino)?;
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(ino)?;
        let (attrs, cut): (Attrs, Vec<(u64, Extent)>) = {
            let m = self.meta();
            let (attrs, map) = super::data::file_map(&m, ino)?;
            let end = offset.saturating_add(len).min(attrs.size);
            if offset >= end {
                return Ok(());
            }
            let first = offset / EXTENT_SIZE;
            let last = (end - 1) / EXTENT_SIZE;
            let cut = map
                .range(first..=last)
                .filter_map(|(idx, id)| m.state.extents.get(id).map(|e| (*idx, e.clone())))
                .collect();
            (*attrs, cut)
        };
        let end = offset.saturating_add(len).min(attrs.size);
        let mut ops = Vec::new();
        let mut written: Vec<Extent> = Vec::new();
        let result = (|| -> Result<()> {
            for (idx, e) in cut {
                let start = idx * EXTENT_SIZE;
                let data_end = start + e.len as u64;
                let hs = offset.max(start);
                let he = end.min(data_end);
                if hs >= he {
                    continue; // the hole only covers zeros past the extent's end
                }
                if hs == start && he == data_end {
                    ops.push(Op::SetExtent { ino, index: idx, extent: None });
                    continue;
                }
                let mut bytes = self.read_extent(&e)?;
                bytes[(hs - start) as usize..(he - start) as usize].fill(0);
                let keep = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                if keep == 0 {
                    ops.push(Op::SetExtent { ino, index: idx, extent: None });
                } else {
                    let new = self.write_extent(e.policy(), &bytes[..keep])?;
                    written.push(new.clone());
                    ops.push(Op::SetExtent { ino, index: idx, extent: Some(new) });
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            for w in &written {
                self.free_uncommitted(&w.frags);
            }
            return Err(e);
        }
        let now = now_ns();
        let mut m = self.meta();
        // Still the extents we read: we hold the file's lock, and a policy
        // change or repair that replaced one meanwhile rewrote the same bytes.
        let attrs = super::data::file_map(&m, ino).map(|(a, _)| *a).unwrap_or(attrs);
        ops.push(Op::SetAttrs { ino, attrs: Attrs { mtime_ns: now, ctime_ns: now, ..attrs } });
        for w in &written {
            for f in w.frags.iter() {
                m.dirty_data.insert(f.member);
            }
        }
        if let Err(e) = self.apply_txn(&mut m, ops) {
            drop(m);
            for w in &written {
                self.free_uncommitted(&w.frags);
            }
            return Err(e);
        }
        Ok(())
    }

    /// `lseek(2)` with SEEK_DATA or SEEK_HOLE on file `ino`.
    pub fn seek(&self, ino: Ino, offset: u64, whence: SeekWhence) -> Result<u64> {
        let lock = self.file_lock(ino)?;
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        if !self.read_only() {
            self.flush_locked(ino)?;
        }
        let m = self.meta();
        let (attrs, map) = super::data::file_map(&m, ino)?;
        let size = Self::overlay_attrs(&m, ino, *attrs).size;
        let ranges =
            data_ranges(map.iter().map(|(idx, id)| (*idx, m.state.extents.get(id).map_or(0, |e| e.len))), size);
        seek_in(&ranges, size, offset, whence)
    }

    /// `copy_file_range(2)`: copy up to `len` bytes from `ino_in` at
    /// `off_in` to `ino_out` at `off_out`; returns the bytes copied (short
    /// at the source's end).
    pub fn copy_range(&self, ino_in: Ino, off_in: u64, ino_out: Ino, off_out: u64, len: u64) -> Result<u64> {
        if self.read_only() {
            return Err(EngineError::ReadOnly);
        }
        if ino_in == ino_out && off_in < off_out.saturating_add(len) && off_out < off_in.saturating_add(len) {
            return Err(EngineError::Invalid("overlapping copy within one file".into()));
        }
        let mut done = 0u64;
        while done < len {
            let pos = off_in + done;
            // One extent of the source at a time (aligned to its extents).
            let n = (EXTENT_SIZE - pos % EXTENT_SIZE).min(len - done) as usize;
            let chunk = self.read(ino_in, pos, n)?;
            if chunk.is_empty() {
                break;
            }
            self.write(ino_out, off_out + done, &chunk)?;
            done += chunk.len() as u64;
            if chunk.len() < n {
                break;
            }
        }
        Ok(done)
    }
}
