//! # Data path: file buffers, extents, fragments
//!
//! A file is a map from extent index (offset / 1 MiB) to an immutable
//! extent of up to 1 MiB. Writes land in a per-file buffer of whole extents
//! (`FileBuf`); an extent is encoded and written when the write cursor
//! moves past it, when the file has too many dirty extents, and on
//! flush / fsync / release / sync. Writing an extent: encode under its
//! policy (`redundancy`), choose distinct members weighted by free space
//! (`placement`), allocate a run on each, write header block + payload to
//! each in parallel, then queue `SetExtent` + the new size in one
//! transaction. The replaced extent's space is freed only after that
//! commit is durable (`pool.rs`). An extent of zeros is not written: holes
//! cost nothing.
//!
//! Reads take the buffer when the extent is dirty, else read the fewest
//! fragments (one replica, or the K data shards), verify each fragment's
//! header and BLAKE3, and fall back to other fragments on any error or
//! mismatch. Wrong data is never returned: with too few good fragments the
//! read fails with `DataLost` (EIO).
//!
//! Invariant kept by truncate: no committed extent reaches past the inode
//! size, so growing a file always shows zeros.

use super::error::{EngineError, Result};
use super::placement::{self, MemberView};
use super::pool::{now_ns, Meta, Pool};
use super::redundancy;
use super::state::{Attrs, Body, Extent, FileKind, FragLoc, Ino, MemberState, Op, EXTENT_SIZE};
use crate::device::AlignedBuf;
use dfs_alloc::Run;
use dfs_format::fragment::FragmentKind;
use dfs_format::{FragmentHeader, Policy, FRAGMENT_HEADER_LEN};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Dirty extents a file may hold before the writer flushes them.
pub const MAX_DIRTY_EXTENTS: usize = 8;

/// One dirty extent: its whole 1 MiB slot and a generation bumped by every write.
#[derive(Debug)]
pub(crate) struct DirtyExtent {
    data: Vec<u8>,
    gen: u64,
}

/// The write buffer of one file.
#[derive(Debug, Default)]
pub(crate) struct FileBuf {
    extents: BTreeMap<u64, DirtyExtent>,
    /// Size including buffered writes.
    size: u64,
    mtime_ns: i64,
    /// Serializes writers, flushes and truncates of this file.
    lock: Arc<Mutex<()>>,
}

fn file_map(m: &Meta, ino: Ino) -> Result<(&Attrs, &BTreeMap<u64, u128>)> {
    let inode = m.state.inodes.get(&ino).ok_or(EngineError::NotFound)?;
    match &inode.body {
        Body::File(map) => Ok((&inode.attrs, map)),
        Body::Dir { .. } => Err(EngineError::IsDir),
        _ => Err(EngineError::Invalid(format!("inode {ino} is not a regular file"))),
    }
}

impl Pool {
    fn file_lock(&self, ino: Ino) -> Result<Arc<Mutex<()>>> {
        let mut m = self.meta();
        let size = file_map(&m, ino)?.0.size;
        let fb = m.files.entry(ino).or_insert_with(|| FileBuf { size, ..Default::default() });
        Ok(fb.lock.clone())
    }

    /// The policy new extents of `ino` get: its pinned policy, else the pool default.
    pub(crate) fn effective_policy(m: &Meta, ino: Ino) -> Policy {
        let p = m.state.inodes.get(&ino).and_then(|i| i.policy).unwrap_or(m.state.config.default_policy);
        Policy::decode(p).unwrap_or(Policy::Replication { copies: 1 })
    }

    /// Write `data` at `offset` of file `ino`. Buffered: durable after fsync.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        if self.opts.read_only {
            return Err(EngineError::ReadOnly);
        }
        let end = offset.checked_add(data.len() as u64).ok_or_else(|| EngineError::Invalid("offset overflow".into()))?;
        if end > i64::MAX as u64 {
            return Err(EngineError::Invalid("file too large".into()));
        }
        let lock = self.file_lock(ino)?;
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut pos = offset;
        while pos < end {
            let idx = pos / EXTENT_SIZE;
            let within = (pos % EXTENT_SIZE) as usize;
            let n = ((EXTENT_SIZE as usize - within) as u64).min(end - pos) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            self.ensure_buffered(ino, idx)?;
            let mut m = self.meta();
            let fb = m.files.get_mut(&ino).ok_or(EngineError::NotFound)?;
            let de = fb.extents.get_mut(&idx).ok_or(EngineError::NotFound)?;
            de.data[within..within + n].copy_from_slice(src);
            de.gen += 1;
            fb.size = fb.size.max(pos + n as u64);
            fb.mtime_ns = now_ns();
            pos += n as u64;
        }
        // Flush extents the cursor has left behind, or everything if too many are dirty.
        let to_flush: Vec<u64> = {
            let m = self.meta();
            let fb = m.files.get(&ino).ok_or(EngineError::NotFound)?;
            let many = fb.extents.len() > MAX_DIRTY_EXTENTS;
            fb.extents.keys().copied().filter(|&i| many || (i + 1) * EXTENT_SIZE <= end).collect()
        };
        for idx in to_flush {
            self.flush_extent(ino, idx)?;
        }
        Ok(data.len())
    }

    /// Make sure extent `idx` of `ino` is in the buffer (loading its committed content).
    fn ensure_buffered(&self, ino: Ino, idx: u64) -> Result<()> {
        let committed = {
            let m = self.meta();
            if m.files.get(&ino).is_some_and(|fb| fb.extents.contains_key(&idx)) {
                return Ok(());
            }
            let (_, map) = file_map(&m, ino)?;
            map.get(&idx).and_then(|id| m.state.extents.get(id)).cloned()
        };
        let mut data = vec![0u8; EXTENT_SIZE as usize];
        if let Some(e) = committed {
            let bytes = self.read_extent(&e)?;
            data[..bytes.len()].copy_from_slice(&bytes);
        }
        let mut m = self.meta();
        let size = file_map(&m, ino)?.0.size;
        let fb = m.files.entry(ino).or_insert_with(|| FileBuf { size, ..Default::default() });
        fb.extents.entry(idx).or_insert(DirtyExtent { data, gen: 0 });
        Ok(())
    }

    /// Encode and write every dirty extent of `ino` and queue their commit.
    pub fn flush(&self, ino: Ino) -> Result<()> {
        let lock = match self.file_lock(ino) {
            Ok(l) => l,
            Err(EngineError::NotFound) | Err(EngineError::IsDir) | Err(EngineError::Invalid(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(ino)
    }

    fn flush_locked(&self, ino: Ino) -> Result<()> {
        let idxs: Vec<u64> =
            self.meta().files.get(&ino).map(|fb| fb.extents.keys().copied().collect()).unwrap_or_default();
        for idx in idxs {
            self.flush_extent(ino, idx)?;
        }
        // A size change without data (zeros written past EOF) still needs committing.
        let mut m = self.meta();
        if let Some(fb) = m.files.get(&ino) {
            if fb.extents.is_empty() {
                let (fsize, mtime) = (fb.size, fb.mtime_ns);
                let attrs = *file_map(&m, ino)?.0;
                if fsize > attrs.size {
                    let t = mtime.max(attrs.mtime_ns);
                    let attrs = Attrs { size: fsize, mtime_ns: t, ctime_ns: t.max(attrs.ctime_ns), ..attrs };
                    self.apply_txn(&mut m, vec![Op::SetAttrs { ino, attrs }])?;
                }
            }
        }
        // The buffer itself stays until `release` (its lock must stay unique per file).
        Ok(())
    }

    /// fsync: flush the file, then commit.
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        self.flush(ino)?;
        self.commit()
    }

    /// sync: flush every file, then commit.
    pub fn sync_all(&self) -> Result<()> {
        let inos: Vec<Ino> = self.meta().files.keys().copied().collect();
        for ino in inos {
            self.flush(ino)?;
        }
        self.commit()
    }

    fn flush_extent(&self, ino: Ino, idx: u64) -> Result<()> {
        let (data, gen, size, policy, existing) = {
            let m = self.meta();
            let Some(fb) = m.files.get(&ino) else { return Ok(()) };
            let Some(de) = fb.extents.get(&idx) else { return Ok(()) };
            let (attrs, map) = file_map(&m, ino)?;
            (de.data.clone(), de.gen, fb.size.max(attrs.size), Self::effective_policy(&m, ino), map.get(&idx).copied())
        };
        let start = idx * EXTENT_SIZE;
        let len = size.saturating_sub(start).min(EXTENT_SIZE) as usize;
        let new_extent =
            if len == 0 || data[..len].iter().all(|&b| b == 0) { None } else { Some(self.write_extent(policy, &data[..len])?) };
        let mut m = self.meta();
        let attrs = match file_map(&m, ino) {
            Ok((a, _)) => *a,
            Err(_) => {
                // The file went away while we wrote: the extent was never committed.
                drop(m);
                if let Some(e) = new_extent {
                    self.free_uncommitted(&e.frags);
                }
                return Ok(());
            }
        };
        let fb = m.files.get(&ino).ok_or(EngineError::NotFound)?;
        let mtime = fb.mtime_ns.max(attrs.mtime_ns);
        let mut ops = Vec::new();
        if new_extent.is_some() || existing.is_some() {
            ops.push(Op::SetExtent { ino, index: idx, extent: new_extent });
        }
        let new_size = attrs.size.max(start + len as u64);
        if new_size != attrs.size || mtime != attrs.mtime_ns {
            ops.push(Op::SetAttrs { ino, attrs: Attrs { size: new_size, mtime_ns: mtime, ctime_ns: mtime.max(attrs.ctime_ns), ..attrs } });
        }
        if !ops.is_empty() {
            self.apply_txn(&mut m, ops)?;
        }
        if let Some(fb) = m.files.get_mut(&ino) {
            if fb.extents.get(&idx).is_some_and(|de| de.gen == gen) {
                fb.extents.remove(&idx);
            }
        }
        Ok(())
    }

    pub(crate) fn free_uncommitted(&self, frags: &[FragLoc]) {
        let mut m = self.meta();
        for f in frags {
            if let Some(Some(a)) = m.allocs.get_mut(f.member as usize) {
                let _ = a.free(Run { start: f.block, len: f.blocks as u64 });
            }
        }
    }

    /// Read up to `len` bytes at `offset` of file `ino` (short at EOF).
    pub fn read(&self, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut plan: Vec<(u64, Extent)> = Vec::new();
        let mut out;
        let end;
        {
            let m = self.meta();
            let (attrs, map) = file_map(&m, ino)?;
            let fb = m.files.get(&ino);
            let size = fb.map(|f| f.size).unwrap_or(0).max(attrs.size);
            if offset >= size {
                return Ok(Vec::new());
            }
            end = size.min(offset.saturating_add(len as u64));
            out = vec![0u8; (end - offset) as usize];
            let mut pos = offset;
            while pos < end {
                let idx = pos / EXTENT_SIZE;
                let within = (pos % EXTENT_SIZE) as usize;
                let n = ((EXTENT_SIZE - within as u64).min(end - pos)) as usize;
                if let Some(de) = fb.and_then(|f| f.extents.get(&idx)) {
                    let o = (pos - offset) as usize;
                    out[o..o + n].copy_from_slice(&de.data[within..within + n]);
                } else if let Some(e) = map.get(&idx).and_then(|id| m.state.extents.get(id)) {
                    plan.push((idx, e.clone()));
                }
                pos += n as u64;
            }
        }
        for (idx, e) in plan {
            let bytes = self.read_extent(&e)?;
            let ext_start = idx * EXTENT_SIZE;
            let from = offset.max(ext_start);
            let to = end.min(ext_start + bytes.len() as u64);
            if from < to {
                let o = (from - offset) as usize;
                out[o..o + (to - from) as usize]
                    .copy_from_slice(&bytes[(from - ext_start) as usize..(to - ext_start) as usize]);
            }
        }
        Ok(out)
    }

    /// Change the size of file `ino` (truncate, or extend with zeros).
    pub(crate) fn set_size(&self, ino: Ino, new_size: u64, now: i64) -> Result<()> {
        let lock = self.file_lock(ino)?;
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_locked(ino)?;
        let (attrs, partial) = {
            let m = self.meta();
            let (attrs, map) = file_map(&m, ino)?;
            let idx = new_size / EXTENT_SIZE;
            let off = new_size % EXTENT_SIZE;
            let partial =
                map.get(&idx).and_then(|id| m.state.extents.get(id)).filter(|e| off > 0 && e.len as u64 > off).cloned();
            (*attrs, partial)
        };
        let mut ops = Vec::new();
        if let Some(e) = partial {
            // Copy on write of the extent the new size cuts.
            let idx = new_size / EXTENT_SIZE;
            let keep = (new_size % EXTENT_SIZE) as usize;
            let bytes = self.read_extent(&e)?;
            let extent =
                if bytes[..keep].iter().all(|&b| b == 0) { None } else { Some(self.write_extent(e.policy(), &bytes[..keep])?) };
            ops.push(Op::SetExtent { ino, index: idx, extent });
        }
        let mut m = self.meta();
        let (_, map) = file_map(&m, ino)?;
        let first_gone = new_size.div_ceil(EXTENT_SIZE);
        for idx in map.range(first_gone..).map(|(i, _)| *i).collect::<Vec<_>>() {
            ops.push(Op::SetExtent { ino, index: idx, extent: None });
        }
        ops.push(Op::SetAttrs { ino, attrs: Attrs { size: new_size, mtime_ns: now, ctime_ns: now, ..attrs } });
        self.apply_txn(&mut m, ops)?;
        if let Some(fb) = m.files.get_mut(&ino) {
            fb.size = new_size;
        }
        Ok(())
    }

    /// Size and mtime as seen through the write buffer.
    pub(crate) fn overlay_attrs(m: &Meta, ino: Ino, mut attrs: Attrs) -> Attrs {
        if attrs.kind == FileKind::File {
            if let Some(fb) = m.files.get(&ino) {
                attrs.size = attrs.size.max(fb.size);
                attrs.mtime_ns = attrs.mtime_ns.max(fb.mtime_ns);
            }
        }
        attrs
    }

    /// Drop the write buffer of a file being deleted.
    pub(crate) fn forget_buffer(m: &mut Meta, ino: Ino) {
        m.files.remove(&ino);
    }

    /// Drop the (clean) write buffer of a file nobody has open any more.
    pub(crate) fn drop_clean_buffer(m: &mut Meta, ino: Ino) {
        if m.files.get(&ino).is_some_and(|fb| fb.extents.is_empty() && Arc::strong_count(&fb.lock) == 1) {
            m.files.remove(&ino);
        }
    }

    /// Encode `data` under `policy` and write its fragments to distinct members.
    pub(crate) fn write_extent(&self, policy: Policy, data: &[u8]) -> Result<Extent> {
        let frags = redundancy::encode(policy, data).map_err(|e| EngineError::Other(e.to_string()))?;
        let payload_len = frags[0].len();
        let id = uuid::Uuid::new_v4();
        let extent_hash = *blake3::hash(data).as_bytes();
        // Choose members and allocate under the lock.
        let locs: Vec<FragLoc> = {
            let mut m = self.meta();
            let views = self.member_views(&m);
            let max_bs = self.members.iter().flatten().map(|m| m.layout.block_size as u64).max().unwrap_or(4096);
            let bytes = (1 + (payload_len as u64).div_ceil(max_bs)) * max_bs;
            let chosen = placement::place(policy, &views, bytes, &mut rand::thread_rng()).map_err(|e| match e {
                placement::PlacementError::CannotSatisfy { online, .. } if online >= policy.fragment_count() => {
                    EngineError::NoSpace(e.to_string())
                }
                e => EngineError::PolicyUnsatisfiable { policy: policy.to_string(), reason: e.to_string() },
            })?;
            let mut locs: Vec<FragLoc> = Vec::new();
            for member in chosen {
                let bs = self.members[member as usize].as_ref().map(|x| x.layout.block_size as u64).unwrap_or(4096);
                let blocks = 1 + (payload_len as u64).div_ceil(bs);
                let res = match m.allocs.get_mut(member as usize) {
                    Some(Some(a)) => a.allocate(blocks).map_err(|e| e.to_string()),
                    _ => Err("member has no allocator".to_string()),
                };
                match res {
                    Ok(run) => locs.push(FragLoc { member, blocks: blocks as u32, block: run.start }),
                    Err(e) => {
                        for l in &locs {
                            if let Some(Some(a)) = m.allocs.get_mut(l.member as usize) {
                                let _ = a.free(Run { start: l.block, len: l.blocks as u64 });
                            }
                        }
                        return Err(EngineError::NoSpace(format!("member {member}: {e}")));
                    }
                }
            }
            for l in &locs {
                m.dirty_data.insert(l.member);
            }
            locs
        };
        let created = now_ns() as u64;
        let write_one = |loc: &FragLoc, frag: &redundancy::Fragment| -> Result<()> {
            let mem = self.members[loc.member as usize].as_ref().ok_or(EngineError::Other("member vanished".into()))?;
            let bs = mem.layout.block_size as usize;
            let header = FragmentHeader {
                kind: FragmentKind::Extent,
                pool_uuid: self.uuid,
                extent_uuid: id,
                fragment_index: frag.index as u16,
                fragment_count: policy.fragment_count() as u16,
                policy,
                payload_len: payload_len as u32,
                extent_len: data.len() as u32,
                generation: 0,
                created_ns: created,
                payload_blake3: *blake3::hash(frag.bytes()).as_bytes(),
                extent_blake3: extent_hash,
            };
            let mut buf = AlignedBuf::zeroed(loc.blocks as usize * bs);
            buf[..FRAGMENT_HEADER_LEN].copy_from_slice(&header.encode());
            buf[bs..bs + payload_len].copy_from_slice(frag.bytes());
            let offset = mem.layout.data_offset(loc.block);
            mem.dev.write_at(offset, &buf)?;
            if self.opts.verify_writes {
                let mut check = AlignedBuf::zeroed(buf.len());
                mem.dev.read_at(offset, &mut check)?;
                if check[..] != buf[..] {
                    return Err(EngineError::Other(format!("{}: read-after-write mismatch", mem.dev.identity())));
                }
            }
            self.counters.fragments_written.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        let result = if locs.len() == 1 {
            write_one(&locs[0], &frags[0])
        } else {
            std::thread::scope(|s| -> Result<()> {
                let handles: Vec<_> =
                    locs.iter().zip(frags.iter()).map(|(loc, frag)| s.spawn(move || write_one(loc, frag))).collect();
                let mut first_err = None;
                for h in handles {
                    if let Err(e) = h.join().expect("fragment writer panicked") {
                        first_err.get_or_insert(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            })
        };
        if let Err(e) = result {
            self.free_uncommitted(&locs);
            return Err(e);
        }
        Ok(Extent { id: id.as_u128(), len: data.len() as u32, blake3: extent_hash, policy: policy.encode(), frags: locs.into() })
    }

    pub(crate) fn member_views(&self, m: &Meta) -> Vec<MemberView> {
        self.members
            .iter()
            .enumerate()
            .map(|(i, mem)| {
                let rec_state = m.state.members.get(i).map(|r| r.state).unwrap_or(MemberState::Online);
                let (free, total) = match (mem, m.allocs.get(i).and_then(|a| a.as_ref())) {
                    (Some(mem), Some(a)) => {
                        let bs = mem.layout.block_size as u64;
                        (a.free_blocks() * bs, a.total_blocks() * bs)
                    }
                    _ => (0, 0),
                };
                let state = match (mem, rec_state) {
                    (None, _) => placement::MemberState::Missing,
                    (_, MemberState::Online) => placement::MemberState::Online,
                    (_, MemberState::Draining) => placement::MemberState::Draining,
                    (_, MemberState::Failed) | (_, MemberState::Removed) => placement::MemberState::Failed,
                };
                MemberView { index: i as u32, state, free_bytes: free, total_bytes: total }
            })
            .collect()
    }

    /// Read one fragment and verify it; `None` on any error or mismatch.
    fn read_fragment(&self, e: &Extent, index: usize) -> Option<Vec<u8>> {
        let loc = e.frags.get(index)?;
        let mem = self.members.get(loc.member as usize)?.as_ref()?;
        let bs = mem.layout.block_size as usize;
        let mut buf = AlignedBuf::zeroed(loc.blocks as usize * bs);
        self.counters.fragments_read.fetch_add(1, Ordering::Relaxed);
        let res = (|| {
            mem.dev.read_at(mem.layout.data_offset(loc.block), &mut buf).ok()?;
            let h = FragmentHeader::decode(&buf).ok()?;
            let ok = h.extent_uuid.as_u128() == e.id
                && h.fragment_index as usize == index
                && h.pool_uuid == self.uuid
                && bs + h.payload_len as usize <= buf.len();
            if !ok {
                return None;
            }
            let payload = &buf[bs..bs + h.payload_len as usize];
            if blake3::hash(payload).as_bytes() != &h.payload_blake3 {
                return None;
            }
            Some(payload.to_vec())
        })();
        if res.is_none() {
            self.counters.fragment_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(extent = %uuid::Uuid::from_u128(e.id), fragment = index, device = %mem.dev.identity(), "bad fragment");
        }
        res
    }

    /// Read an extent's bytes, verified; falls back to other fragments on errors.
    pub fn read_extent(&self, e: &Extent) -> Result<Vec<u8>> {
        let policy = e.policy();
        let n = e.frags.len();
        let healthy: Vec<bool> = {
            let m = self.meta();
            e.frags
                .iter()
                .map(|f| {
                    self.members.get(f.member as usize).is_some_and(|x| x.is_some())
                        && m.state.members.get(f.member as usize).is_none_or(|r| r.state != MemberState::Failed)
                })
                .collect()
        };
        let mut got: Vec<Option<Vec<u8>>> = vec![None; n];
        let mut tried = vec![false; n];
        loop {
            let usable: Vec<bool> = (0..n).map(|i| got[i].is_some() || (!tried[i] && healthy[i])).collect();
            let set = redundancy::read_set(policy, &usable)
                .map_err(|err| EngineError::DataLost { extent: e.id, reason: err.to_string() })?;
            let missing: Vec<usize> = set.iter().copied().filter(|&i| got[i].is_none()).collect();
            if missing.is_empty() {
                let views: Vec<Option<&[u8]>> = set_views(&got, &set);
                let bytes = redundancy::decode(policy, e.len, &views)
                    .map_err(|err| EngineError::DataLost { extent: e.id, reason: err.to_string() })?;
                if blake3::hash(&bytes).as_bytes() != &e.blake3 {
                    return Err(EngineError::DataLost { extent: e.id, reason: "decoded extent fails its BLAKE3".into() });
                }
                return Ok(bytes);
            }
            let results: Vec<(usize, Option<Vec<u8>>)> = if missing.len() == 1 {
                vec![(missing[0], self.read_fragment(e, missing[0]))]
            } else {
                std::thread::scope(|s| {
                    let hs: Vec<_> = missing.iter().map(|&i| (i, s.spawn(move || self.read_fragment(e, i)))).collect();
                    hs.into_iter().map(|(i, h)| (i, h.join().expect("reader panicked"))).collect()
                })
            };
            for (i, r) in results {
                tried[i] = true;
                got[i] = r;
            }
        }
    }
}

/// Views of exactly the fragments in `set` (others None), so decode uses the chosen ones.
fn set_views<'a>(got: &'a [Option<Vec<u8>>], set: &[usize]) -> Vec<Option<&'a [u8]>> {
    (0..got.len()).map(|i| if set.contains(&i) { got[i].as_deref() } else { None }).collect()
}
