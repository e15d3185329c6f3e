//! # Data path: file buffers, extents, fragments
//!
//! A file is a map from extent index (offset / 1 MiB) to an immutable
//! extent of up to 1 MiB. Writes land in a per-file buffer of whole extents
//! (`FileBuf`). Writing an extent: encode under its policy (`redundancy`),
//! choose distinct members weighted by free space (`placement`), allocate a
//! run on each, write header block + payload to each in parallel, then
//! queue `SetExtent` + the new size in one transaction. The replaced
//! extent's space is freed only after that commit is durable (`pool.rs`).
//! An extent of zeros is not written: holes cost nothing.
//!
//! ## Write-behind
//!
//! Once the write cursor has left [`FLUSH_BATCH`] extents behind, they are
//! placed and allocated, and their hashing, encoding and fragment writes
//! handed to the worker pool; `write` returns without waiting for them. Their transactions are
//! queued later, in the order they were sent, by whichever call of that
//! file finds them written (a later `write`, or flush / fsync / release /
//! truncate / sync, which wait for all of them). At most [`MAX_IN_FLIGHT`]
//! extents of a file are in flight; beyond [`MAX_DIRTY_EXTENTS`] dirty
//! extents (in flight included) the writer writes everything and waits.
//! Until its transaction is queued an extent stays in the buffer, so reads
//! see it; a newer write to it copies the buffer (the old one is still
//! being written) and its own transaction comes after. A failed fragment
//! write frees that extent's space and leaves it dirty, to be written
//! again; fsync reports it (a writeback error), `write` only when the file
//! is over its dirty limit. A file deleted with writes in flight waits for
//! them and frees their space; nothing is ever written after its buffer is
//! gone (a dropped pool waits for its writes).
//!
//! ## Close
//!
//! Closing a file (`Pool::close_flush`, FUSE release) hands every dirty
//! extent of the file to the write-behind and returns without waiting for
//! the fragment writes, as a Linux filesystem leaves dirty pages to its
//! writeback. The file goes on the pool's list of closed files with writes
//! in flight ([`Writeback`]); their transactions are queued by the next
//! close that finds them written, by the mount's periodic commit
//! ([`Pool::writeback`]), or by fsync / sync (`Pool::sync_all`, also what
//! fsyncdir does), which wait for them. At most [`POOL_MAX_IN_FLIGHT`]
//! extents of closed files are in flight: beyond that a close waits for
//! the oldest. A failed fragment write leaves its extent dirty: the error
//! surfaces at the next fsync of the file or sync of the pool, which write
//! such extents again (as errseq writeback errors do on Linux); only an
//! extent that can't be placed (ENOSPC, an unsatisfiable policy) fails
//! the close itself. Crash safety is unchanged: an extent's transaction is
//! queued only once its fragments are written, and a commit syncs their
//! members before its journal record.
//!
//! ## Reads
//!
//! Reads take the buffer when the extent is dirty, else read the fewest
//! fragments: one replica, or the K data shards (no Reed-Solomon work). The
//! fast path checks each fragment's header (magic, crc, pool, extent UUID,
//! index, policy, lengths, extent BLAKE3) and then the BLAKE3 of the whole
//! extent, end to end, once; per-fragment payload hashes are checked only
//! when that fails, to find the culprit. Any IO error, header mismatch or
//! hash mismatch makes the read fall back to other fragments (the next
//! replica, or parity and a decode). Wrong data is never returned: with too
//! few good fragments the read fails with `DataLost` (EIO) and the extent is
//! reported (`Pool::lost_extents`, counter `extents_lost`, an error log).
//! The extents of one `read` call are read in parallel, [`READ_PARALLEL`] at
//! a time. A read that continues a sequential stream of its file
//! (`readahead.rs`) reads whole extents: one read in part (FUSE asks for
//! 128 KiB) is kept whole, verified, in a small cache of
//! [`PARTIAL_READ_CACHE`] extents, so the next part of it costs no IO, and
//! the next extents of the file are fetched into that cache in the
//! background. Any other read of part of an extent (a random read) takes
//! the partial path (`partial.rs`): only the 4 KiB pieces it needs, each
//! checked against the fragment's block-sum table (`block_sums.rs`,
//! written in every extent fragment's header block); anything amiss there
//! falls back to the whole-extent read, told which fragment was bad.
//!
//! A read that found bad fragments but still returned correct data rewrites
//! them (lazy repair, `repair.rs`); fragments on members that are missing
//! or failed are rebuilt the same way. The read waits for the repair's
//! fragment writes but never for its commit.
//!
//! ## Locks
//!
//! The `meta` lock is never held across device IO here: it is taken to
//! snapshot what to read or write, to allocate, and to apply the resulting
//! transaction. (One exception: deleting a file whose writes are still in
//! flight waits for them under the lock, see `forget_buffer`.) A per-file
//! lock serializes writers, flushes and truncates of one file only, so
//! reads and writes of different files (and reads of the same file)
//! proceed in parallel. Code holding the `meta` lock never waits for worker
//! jobs in a way that would run them on its own thread (a job may take the
//! lock).
//!
//! ## Write layout, copies and threads
//!
//! A file's dirty extents are aligned buffers, and the `N` replicas of
//! `replication:N` are written straight from the file's buffer (no copy at
//! all), each as two requests of one `write_batch` (its own header block,
//! then the shared payload). For `erasure:K+M` the shards are encoded into
//! one aligned slab with room for each fragment's header block right
//! before its shard, so each fragment is one request. The extent's BLAKE3
//! is also the payload BLAKE3 of every replica, so it is computed once. IO
//! buffers are recycled (`BUF_CACHE_BYTES`), and the parallel work (extents
//! of a flush or a read, fragments of an extent) runs on a process-wide
//! pool of long-lived worker threads ([`par_map`]), which keep their
//! io_uring ring and Reed-Solomon encoder: spawning a thread per fragment
//! cost more CPU than the IO path itself.
//!
//! Measured (`scripts/bench-engine`, 6 loop devices, 2 cores): what is left
//! of the CPU per MiB written is BLAKE3 (1 pass for replication, 2.5 for
//! 4+2: the extent plus every shard, both in the format) and memcpy (the
//! application's buffer into the file buffer; for erasure also into the
//! shards and through reed-solomon-simd): about 0.25 core at 200 MiB/s for
//! `replication:3`, 2 ms per MiB for `erasure:4+2`.
//!
//! Invariant kept by truncate: no committed extent reaches past the inode
//! size, so growing a file always shows zeros.

use super::error::{EngineError, Result};
use super::partial::Miss;
use super::placement::{self, MemberView};
use super::pool::{now_ns, Member, Meta, Pool};
use super::redundancy;
use super::state::{Attrs, Body, Extent, FileKind, FragLoc, Ino, MemberState, Op, State, EXTENT_SIZE};
use super::{block_sums, readahead};
use crate::device::{AlignedBuf, WriteReq};
use dfs_alloc::Run;
use dfs_format::fragment::FragmentKind;
use dfs_format::{FragmentHeader, Policy};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Dirty extents a file may hold (in flight included) before the writer
/// flushes them all and waits.
pub const MAX_DIRTY_EXTENTS: usize = 32;

/// Full extents behind the write cursor that are encoded and sent together.
pub const FLUSH_BATCH: usize = 8;

/// Extents of one file whose fragment writes may be in flight while the
/// writer carries on (write-behind); beyond this the writer waits for the
/// oldest.
pub const MAX_IN_FLIGHT: usize = 16;

/// Extents of closed files whose fragment writes may be in flight at once
/// (all files together); beyond this a close waits for the oldest.
pub const POOL_MAX_IN_FLIGHT: usize = 64;

/// Writes handed over by close (see "Close" in the module doc).
#[derive(Debug, Default)]
pub(crate) struct Writeback {
    /// Files closed with writes in flight or extents to write again,
    /// oldest first (a file may appear twice; clean ones are skipped).
    closed: std::collections::VecDeque<Ino>,
    /// Extents in flight, all files.
    in_flight: usize,
}

/// Whether every byte of `b` is zero. Word-wide and branch-free per block
/// (so it vectorizes): a byte-at-a-time scan of a mostly empty 1 MiB
/// extent buffer (the tail of every small file) took a millisecond.
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(256);
    for c in &mut chunks {
        let mut acc = 0u64;
        for w in c.chunks_exact(8) {
            acc |= u64::from_ne_bytes(w.try_into().unwrap());
        }
        if acc != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// Bytes of IO buffers kept for reuse (see [`take_buf`]).
const BUF_CACHE_BYTES: usize = 64 << 20;

/// Recycled IO buffers. A fresh 1 MiB buffer costs 256 page faults and the
/// kernel's zeroing of every page (then `alloc_zeroed`'s own memset): more
/// CPU than the copy into it. Buffers of the sizes the data path uses
/// (extent slots, fragment reads, erasure slabs) are kept here instead,
/// process-wide, up to [`BUF_CACHE_BYTES`].
/// Extents most recently read in part, whole and verified, newest last
/// (at most [`PARTIAL_READ_CACHE`]). A read of part of an extent must
/// fetch and check all of it (one BLAKE3 per extent), and the kernel asks
/// a FUSE file system for 128 KiB at a time: without this, a sequential
/// read fetched every extent eight times. Extents are immutable and their
/// UUIDs never reused, so an entry can't go stale; repair rewrites
/// fragments, never content.
static PARTIAL_READS: Mutex<std::collections::VecDeque<(u128, Arc<AlignedBuf>)>> =
    Mutex::new(std::collections::VecDeque::new());

/// Extents kept in [`PARTIAL_READS`] (32 MiB: the read-ahead window of a
/// few concurrent sequential streams).
pub const PARTIAL_READ_CACHE: usize = 32;

pub(crate) fn cached_extent(id: u128) -> Option<Arc<AlignedBuf>> {
    let c = PARTIAL_READS.lock().unwrap_or_else(|p| p.into_inner());
    c.iter().rev().find(|(i, _)| *i == id).map(|(_, b)| b.clone())
}

pub(crate) fn cache_extent(id: u128, buf: Arc<AlignedBuf>) {
    let mut c = PARTIAL_READS.lock().unwrap_or_else(|p| p.into_inner());
    c.retain(|(i, _)| *i != id);
    while c.len() >= PARTIAL_READ_CACHE {
        c.pop_front();
    }
    c.push_back((id, buf));
}

static BUF_CACHE: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());

/// An aligned buffer of exactly `len` bytes with undefined (old) contents.
pub(crate) fn take_buf(len: usize) -> AlignedBuf {
    let mut cache = BUF_CACHE.lock().unwrap_or_else(|p| p.into_inner());
    match cache.iter().rposition(|b| b.len() == len) {
        Some(i) => cache.swap_remove(i),
        None => {
            drop(cache);
            AlignedBuf::zeroed(len)
        }
    }
}

/// Give a buffer back for reuse (dropped if the cache is full).
pub(crate) fn give_buf(buf: AlignedBuf) {
    if buf.is_empty() || buf.len() > BUF_CACHE_BYTES / 8 {
        return;
    }
    let mut cache = BUF_CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let held: usize = cache.iter().map(|b| b.len()).sum();
    if held + buf.len() <= BUF_CACHE_BYTES {
        cache.push(buf);
    }
}

/// Extents of one `read` call read in parallel.
pub const READ_PARALLEL: usize = 8;

/// One dirty extent: its whole 1 MiB slot and a generation bumped by every
/// write. The bytes are shared with a flush in progress (which holds the
/// file lock, so no writer changes them meanwhile).
#[derive(Debug)]
pub(crate) struct DirtyExtent {
    /// `EXTENT_SIZE` bytes, aligned: replicas are written straight from it.
    data: Arc<AlignedBuf>,
    gen: u64,
    /// The generation whose fragments are being written now, if any.
    sent: Option<u64>,
    /// Every byte at or past `end` is zero: what a flush must clear past
    /// the file's end, and what recycling must clear (see [`take_zeroed`]).
    end: usize,
}

/// Zeroed extent buffers kept for reuse, at most [`ZEROED_CACHE`].
static ZEROED: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());

/// Zeroed extent buffers kept in [`ZEROED`].
const ZEROED_CACHE: usize = 32;

/// A zeroed buffer of one extent. A small file's extent buffer is mostly
/// zeros: recycled ones are kept zeroed by clearing only what was written
/// ([`give_zeroed`]), so a 4 KiB file costs a 4 KiB memset, not 1 MiB
/// (measured: memset and the zero scan of the tail were a third of the
/// daemon's CPU creating small files).
fn take_zeroed() -> AlignedBuf {
    let cached = ZEROED.lock().unwrap_or_else(|p| p.into_inner()).pop();
    cached.unwrap_or_else(|| AlignedBuf::zeroed(EXTENT_SIZE as usize))
}

/// Give back an extent buffer whose bytes at or past `end` are zero.
fn give_zeroed(mut buf: AlignedBuf, end: usize) {
    if buf.len() != EXTENT_SIZE as usize {
        return give_buf(buf);
    }
    let mut cache = ZEROED.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() < ZEROED_CACHE {
        drop(cache);
        buf[..end].fill(0);
        cache = ZEROED.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() < ZEROED_CACHE {
            cache.push(buf);
            return;
        }
    }
    drop(cache);
    give_buf(buf);
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
    /// Extents whose fragments are being written, oldest first; their
    /// transactions are queued in this order once written.
    in_flight: std::collections::VecDeque<InFlight>,
}

/// An extent of a file being written (write-behind).
#[derive(Debug)]
struct InFlight {
    idx: u64,
    gen: u64,
    /// Bytes of the extent.
    len: usize,
    /// None for an extent of zeros (a hole: nothing written).
    write: Option<ExtentWrite>,
}

/// The fragments of one new extent being written by the worker pool.
#[derive(Debug)]
struct ExtentWrite {
    /// The extent, its BLAKE3 not yet known (computed by the encoding job).
    extent: Extent,
    io: Arc<IoBatch>,
}

impl ExtentWrite {
    fn is_done(&self) -> bool {
        self.io.latch.is_done()
    }
}

impl Drop for ExtentWrite {
    /// Never leave a fragment write running past its owner (a dropped pool
    /// must not write into space a reopened pool may have reused). Does not
    /// run queued jobs: the owner may hold the `meta` lock.
    fn drop(&mut self) {
        self.io.latch.wait_without_helping();
    }
}

/// Results of the fragment writes of one extent.
#[derive(Debug)]
struct IoBatch {
    results: Mutex<Vec<Option<Result<u64>>>>,
    /// Set by the encoding job.
    extent_blake3: Mutex<Option<[u8; 32]>>,
    /// The encoding job failed: the errors in `results` are its own, not
    /// the devices'.
    encoding_failed: std::sync::atomic::AtomicBool,
    /// Counts the fragment writes.
    latch: workers::Latch,
}

/// Where one fragment goes.
struct Target {
    dev: Arc<dyn crate::device::Device>,
    offset: u64,
    bs: usize,
    /// Header block + payload blocks.
    blocks: usize,
}

/// Everything the encoding job needs (it runs after `start_extent` returned).
struct EncodePlan {
    pool: uuid::Uuid,
    id: uuid::Uuid,
    policy: Policy,
    /// Bytes of the extent.
    len: usize,
    payload_len: usize,
    /// Payload bytes rounded up to the largest block size.
    slot: usize,
    max_bs: usize,
    targets: Vec<Target>,
    verify: bool,
}

/// The header of fragment `index` of an extent of pool `pool`.
#[allow(clippy::too_many_arguments)]
fn extent_header(
    pool: uuid::Uuid,
    id: uuid::Uuid,
    policy: Policy,
    index: usize,
    payload_len: usize,
    extent_len: usize,
    extent_blake3: [u8; 32],
    payload_blake3: [u8; 32],
) -> FragmentHeader {
    FragmentHeader {
        kind: FragmentKind::Extent,
        pool_uuid: pool,
        extent_uuid: id,
        fragment_index: index as u16,
        fragment_count: policy.fragment_count() as u16,
        policy,
        payload_len: payload_len as u32,
        extent_len: extent_len as u32,
        generation: 0,
        created_ns: now_ns() as u64,
        payload_blake3,
        extent_blake3,
    }
}

/// The encoding job of one extent (on a worker): hash the extent, build
/// the fragments' payloads (the extent's own buffer for replicas, a slab of
/// header block + shard per fragment for erasure), then hand each
/// fragment's write to the pool. Every fragment's result slot is filled and
/// the latch counted down exactly once per fragment, whatever happens.
fn encode_and_send(plan: EncodePlan, data: Arc<AlignedBuf>, io: Arc<IoBatch>) {
    let EncodePlan { pool, id, policy, len, payload_len, slot, max_bs, targets, verify } = plan;
    let count = targets.len();
    let fail = |io: &IoBatch, e: EngineError| {
        let msg = e.to_string();
        io.encoding_failed.store(true, Ordering::Relaxed);
        let mut r = io.results.lock().unwrap_or_else(|p| p.into_inner());
        for slot in r.iter_mut() {
            *slot = Some(Err(EngineError::Other(msg.clone())));
        }
        drop(r);
        for _ in 0..count {
            io.latch.done();
        }
    };
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<Vec<FragWrite>> {
        let extent_hash = *blake3::hash(&data[..len]).as_bytes();
        *io.extent_blake3.lock().unwrap_or_else(|p| p.into_inner()) = Some(extent_hash);
        let mut writes = Vec::with_capacity(count);
        match policy {
            Policy::Replication { .. } => {
                let sums = block_sums::compute(&data[..len]);
                for (i, t) in targets.into_iter().enumerate() {
                    let h = extent_header(pool, id, policy, i, payload_len, len, extent_hash, extent_hash);
                    writes.push(FragWrite {
                        index: i,
                        header: Some(h.encode_with_sums(&sums).unwrap_or_else(|_| h.encode().to_vec())),
                        payload: data.clone(),
                        range: 0..(t.blocks - 1) * t.bs,
                        dev: t.dev,
                        offset: t.offset,
                        bs: t.bs,
                        verify,
                    });
                }
            }
            Policy::Erasure { .. } => {
                let stride = max_bs + slot;
                let mut buf = take_buf(stride * count);
                let mut outs: Vec<&mut [u8]> = buf
                    .chunks_mut(stride)
                    .map(|c| {
                        c[max_bs + payload_len..].fill(0);
                        &mut c[max_bs..max_bs + payload_len]
                    })
                    .collect();
                if let Err(e) = redundancy::encode_into(policy, &data[..len], &mut outs) {
                    give_buf(buf);
                    return Err(EngineError::Other(e.to_string()));
                }
                for (i, (c, t)) in buf.chunks_mut(stride).zip(&targets).enumerate() {
                    let hash = *blake3::hash(&c[max_bs..max_bs + payload_len]).as_bytes();
                    let header = extent_header(pool, id, policy, i, payload_len, len, extent_hash, hash);
                    let hb = block_sums::header_block(&header, &c[max_bs..max_bs + payload_len]);
                    let block = &mut c[max_bs - t.bs..max_bs];
                    block.fill(0);
                    block[..hb.len()].copy_from_slice(&hb);
                }
                let buf = Arc::new(buf);
                for (i, t) in targets.into_iter().enumerate() {
                    let start = i * stride + max_bs;
                    writes.push(FragWrite {
                        index: i,
                        header: None,
                        payload: buf.clone(),
                        range: start..start + (t.blocks - 1) * t.bs,
                        dev: t.dev,
                        offset: t.offset,
                        bs: t.bs,
                        verify,
                    });
                }
            }
        }
        Ok(writes)
    }));
    drop(data);
    let writes = match built {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => return fail(&io, e),
        Err(_) => return fail(&io, EngineError::Other("internal: encoding panicked".into())),
    };
    // The first fragment is written here, the others on other workers.
    let mut writes = writes.into_iter();
    let first = writes.next();
    for w in writes {
        let io = io.clone();
        workers::submit(Box::new(move || run_frag_write(w, &io)));
    }
    if let Some(w) = first {
        run_frag_write(w, &io);
    }
}

/// Run one fragment write, record its result, count it down; the last
/// holder of the payload buffer gives it back for reuse.
fn run_frag_write(w: FragWrite, io: &IoBatch) {
    let (i, offset) = (w.index, w.offset);
    let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run())) {
        Ok((r, payload)) => {
            if let Ok(buf) = Arc::try_unwrap(payload) {
                give_buf(buf);
            }
            r
        }
        Err(_) => Err(EngineError::Other("internal: a fragment write panicked".into())),
    };
    match &r {
        Ok(_) => tracing::debug!(fragment = i, offset, "fragment written"),
        Err(e) => tracing::debug!(fragment = i, offset, %e, "fragment write failed"),
    }
    io.results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
    io.latch.done();
}

/// One fragment write, owning all it needs, so it can run on a worker
/// after the call that started it has returned.
struct FragWrite {
    index: usize,
    dev: Arc<dyn crate::device::Device>,
    offset: u64,
    bs: usize,
    /// The header block's bytes (header and block-sum table), or None when
    /// its block already precedes `range` in `payload` (erasure slabs: one
    /// request per fragment).
    header: Option<Vec<u8>>,
    payload: Arc<AlignedBuf>,
    /// The payload blocks in `payload` (header block excluded).
    range: std::ops::Range<usize>,
    verify: bool,
}

impl FragWrite {
    /// Write it; gives the payload buffer back.
    fn run(self) -> (Result<u64>, Arc<AlignedBuf>) {
        let r = self.write();
        (r, self.payload)
    }

    fn write(&self) -> Result<u64> {
        let bs = self.bs;
        let payload = &self.payload[self.range.clone()];
        let hdr = self.header.as_ref().map(|h| AlignedBuf::from_slice_padded(h, bs));
        let whole = &self.payload[self.range.start.saturating_sub(bs)..self.range.end];
        match &hdr {
            Some(hdr) => self.dev.write_batch(&[
                WriteReq { offset: self.offset, buf: hdr },
                WriteReq { offset: self.offset + bs as u64, buf: payload },
            ])?,
            None => self.dev.write_at(self.offset, whole)?,
        }
        if self.verify {
            let mut check = take_buf(bs + payload.len());
            let res = self.dev.read_at(self.offset, &mut check);
            let same = res.is_ok()
                && match &hdr {
                    Some(hdr) => check[..bs] == hdr[..] && check[bs..] == *payload,
                    None => check[..] == *whole,
                };
            give_buf(check);
            res?;
            if !same {
                return Err(EngineError::Other(format!(
                    "{}: read-after-write mismatch at offset {}",
                    self.dev.identity(),
                    self.offset
                )));
            }
        }
        Ok((bs + payload.len()) as u64)
    }
}

/// Why one fragment could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FragFault {
    /// Its member is missing from the open or recorded as failed: not tried.
    Absent,
    /// The device returned an error.
    Io(String),
    /// Read, but its header or its BLAKE3 does not match.
    Corrupt(String),
}

impl std::fmt::Display for FragFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FragFault::Absent => write!(f, "member missing or failed"),
            FragFault::Io(e) => write!(f, "IO error: {e}"),
            FragFault::Corrupt(e) => write!(f, "corrupt: {e}"),
        }
    }
}

/// A fragment read from its device, header checked, payload not yet hashed
/// unless `verified`.
pub(crate) struct ReadFrag {
    buf: AlignedBuf,
    /// Payload offset in `buf` (the member's block size).
    start: usize,
    len: usize,
    payload_blake3: [u8; 32],
    verified: bool,
}

impl ReadFrag {
    pub(crate) fn payload(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl Drop for ReadFrag {
    fn drop(&mut self) {
        give_buf(std::mem::replace(&mut self.buf, AlignedBuf::zeroed(0)));
    }
}

/// What is wrong with `h` as the header of fragment `index` of extent `e`
/// of pool `pool` (compared with the extent table), if anything.
pub(crate) fn header_mismatch(pool: uuid::Uuid, e: &Extent, index: usize, h: &FragmentHeader) -> Option<&'static str> {
    let policy = e.policy();
    if h.kind != FragmentKind::Extent {
        Some("not an extent fragment")
    } else if h.pool_uuid != pool {
        Some("another pool's fragment")
    } else if h.extent_uuid.as_u128() != e.id {
        Some("another extent's fragment")
    } else if h.fragment_index as usize != index {
        Some("wrong fragment index")
    } else if h.policy != policy || h.extent_len != e.len || h.extent_blake3 != e.blake3 {
        Some("policy, length or extent BLAKE3 differ from the extent table")
    } else if h.payload_len != redundancy::shard_len(policy, e.len) {
        Some("wrong payload length")
    } else {
        None
    }
}

/// Give never-committed fragment space back to the allocators.
fn free_locs(m: &mut Meta, frags: &[FragLoc]) {
    for f in frags {
        if let Some(Some(a)) = m.allocs.get_mut(f.member as usize) {
            let _ = a.free(Run { start: f.block, len: f.blocks as u64 });
        }
    }
}

pub(crate) fn file_map(m: &Meta, ino: Ino) -> Result<(&Attrs, &BTreeMap<u64, u128>)> {
    file_map_in(&m.state, ino)
}

fn file_map_in(st: &State, ino: Ino) -> Result<(&Attrs, &BTreeMap<u64, u128>)> {
    let inode = st.inodes.get(&ino).ok_or(EngineError::NotFound)?;
    match &inode.body {
        Body::File(map) => Ok((&inode.attrs, map)),
        Body::Dir { .. } => Err(EngineError::IsDir),
        _ => Err(EngineError::Invalid(format!("inode {ino} is not a regular file"))),
    }
}

/// Run `f` on every item, in parallel when there are several (the first on
/// the calling thread, the others on the worker pool, `workers`); results
/// in item order. A panic in `f` is re-raised here once every item is done.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let n = items.len();
    let slots: Vec<Mutex<Option<std::thread::Result<R>>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let latch = Arc::new(workers::Latch::new(n - 1));
    {
        let (f, slots) = (&f, &slots);
        for (i, item) in items.iter().enumerate().skip(1) {
            let latch = latch.clone();
            let job = move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(item)));
                *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                // Nothing borrowed is touched after this.
                latch.done();
            };
            let job: Box<dyn FnOnce() + Send + '_> = Box::new(job);
            // SAFETY: the job borrows `f`, `items` and `slots`, which live
            // until this function returns; it returns only after
            // `latch.wait()` has seen every job call `done()`, its last use
            // of a borrow (the latch itself is shared through an Arc). Jobs
            // never unwind past `done()` (panics are caught above). So no
            // borrow is used after it ends: the 'static is never relied on.
            let job: workers::Job = unsafe { std::mem::transmute(job) };
            workers::submit(job);
        }
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&items[0])));
        *slots[0].lock().unwrap_or_else(|p| p.into_inner()) = Some(first);
    }
    latch.wait();
    slots
        .into_iter()
        .map(|s| match s.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(Ok(r)) => r,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => unreachable!("the latch counted every job"),
        })
        .collect()
}

/// A process-wide pool of worker threads for [`par_map`].
///
/// Spawning a thread per fragment IO cost more than the IO's own CPU: the
/// clone, the stack's mmap/munmap, an io_uring ring set up and torn down
/// on the thread's first batch (`device/uring.rs` keeps one ring per
/// thread) and a Reed-Solomon encoder built afresh (`redundancy` keeps one
/// per thread). Long-lived workers keep all three. Workers are started on
/// demand, up to [`MAX_WORKERS`] (they mostly wait on IO), and live for the
/// life of the process. When every worker is busy and no more can be
/// started, a thread waiting for its jobs runs queued jobs meanwhile, so
/// nested `par_map` calls cannot deadlock.
pub(crate) mod workers {
    use std::collections::VecDeque;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    /// A job: runs once, on some thread.
    pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

    /// Most worker threads.
    pub(crate) const MAX_WORKERS: usize = 64;

    struct State {
        jobs: VecDeque<Job>,
        idle: usize,
        threads: usize,
    }

    static STATE: Mutex<State> = Mutex::new(State { jobs: VecDeque::new(), idle: 0, threads: 0 });
    static WAKE: Condvar = Condvar::new();
    /// A worker could not be started: waiters run queued jobs themselves.
    static SPAWN_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    fn lock() -> std::sync::MutexGuard<'static, State> {
        STATE.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `job`; start a worker if none is idle. If no thread can be
    /// started at all, the job runs here. The job runs inside the caller's
    /// current tracing span, so what it logs carries the id of the request
    /// it works for (a FUSE write's write-behind, a control request's
    /// rebuild, ...).
    pub(crate) fn submit(job: Job) {
        let span = tracing::Span::current();
        let job: Job = if span.is_none() {
            job
        } else {
            Box::new(move || {
                let _e = span.enter();
                job()
            })
        };
        let mut st = lock();
        st.jobs.push_back(job);
        if st.idle > 0 {
            drop(st);
            WAKE.notify_one();
            return;
        }
        if st.threads < MAX_WORKERS {
            st.threads += 1;
            drop(st);
            if std::thread::Builder::new().name("dfs-io".into()).spawn(worker).is_ok() {
                return;
            }
            SPAWN_FAILED.store(true, std::sync::atomic::Ordering::Relaxed);
            st = lock();
            st.threads -= 1;
        }
        // Every worker is busy: the job waits for one, or for a helping waiter.
        if st.threads == 0 {
            if let Some(job) = st.jobs.pop_back() {
                drop(st);
                job();
            }
        }
    }

    fn worker() {
        loop {
            let job = {
                let mut st = lock();
                loop {
                    if let Some(j) = st.jobs.pop_front() {
                        break j;
                    }
                    st.idle += 1;
                    st = WAKE.wait(st).unwrap_or_else(|p| p.into_inner());
                    st.idle -= 1;
                }
            };
            // Jobs catch their own panics; this keeps the worker alive anyway.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
    }

    /// Run one queued job on this thread, if there is one that no worker
    /// will take soon: only when every worker is busy and no more can be
    /// started. (Otherwise a waiter would run, say, someone's blocking
    /// write and come back late.)
    fn help() -> bool {
        let job = {
            let mut st = lock();
            let saturated = st.threads >= MAX_WORKERS || SPAWN_FAILED.load(std::sync::atomic::Ordering::Relaxed);
            if saturated && st.idle == 0 {
                st.jobs.pop_front()
            } else {
                None
            }
        };
        match job {
            Some(j) => {
                j();
                true
            }
            None => false,
        }
    }

    /// Counts jobs down to zero.
    #[derive(Debug)]
    pub(crate) struct Latch {
        left: Mutex<usize>,
        done: Condvar,
    }

    impl Latch {
        pub(crate) fn new(n: usize) -> Latch {
            Latch { left: Mutex::new(n), done: Condvar::new() }
        }

        pub(crate) fn done(&self) {
            let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
            *left -= 1;
            if *left == 0 {
                self.done.notify_all();
            }
        }

        /// True when every job is done.
        pub(crate) fn is_done(&self) -> bool {
            *self.left.lock().unwrap_or_else(|p| p.into_inner()) == 0
        }

        /// Wait until every job is done, without running other jobs (for
        /// callers holding locks that a queued job might take).
        pub(crate) fn wait_without_helping(&self) {
            let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
            while *left > 0 {
                left = self.done.wait(left).unwrap_or_else(|p| p.into_inner());
            }
        }

        /// Wait until every job is done, running queued jobs meanwhile.
        pub(crate) fn wait(&self) {
            loop {
                if *self.left.lock().unwrap_or_else(|p| p.into_inner()) == 0 {
                    return;
                }
                if help() {
                    continue;
                }
                let left = self.left.lock().unwrap_or_else(|p| p.into_inner());
                if *left == 0 {
                    return;
                }
                // Woken by `done`; the timeout re-checks the queue, in case
                // every worker is blocked and a job waits for a helper.
                let _ = self.done.wait_timeout(left, Duration::from_millis(2));
            }
        }
    }
}

impl Pool {
    pub(crate) fn file_lock(&self, ino: Ino) -> Result<Arc<Mutex<()>>> {
        let mut m = self.meta();
        let size = file_map(&m, ino)?.0.size;
        let fb = m.files.entry(ino).or_insert_with(|| FileBuf { size, ..Default::default() });
        Ok(fb.lock.clone())
    }

    /// The policy new extents of `ino` get: its pinned policy, else the pool default.
    pub(crate) fn effective_policy(m: &Meta, ino: Ino) -> Policy {
        Self::effective_policy_in(&m.state, ino)
    }

    fn effective_policy_in(st: &State, ino: Ino) -> Policy {
        let p = st.inodes.get(&ino).and_then(|i| i.policy).unwrap_or(st.config.default_policy);
        Policy::decode(p).unwrap_or(Policy::Replication { copies: 1 })
    }

    /// Write `data` at `offset` of file `ino`. Buffered: durable after fsync.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        if self.opts.read_only {
            return Err(EngineError::ReadOnly);
        }
        let end =
            offset.checked_add(data.len() as u64).ok_or_else(|| EngineError::Invalid("offset overflow".into()))?;
        if end > i64::MAX as u64 {
            return Err(EngineError::Invalid("file too large".into()));
        }
        tracing::debug!(ino, offset, len = data.len(), "write: buffering");
        let lock = self.file_lock(ino)?;
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut pos = offset;
        while pos < end {
            let idx = pos / EXTENT_SIZE;
            let within = (pos % EXTENT_SIZE) as usize;
            let n = ((EXTENT_SIZE as usize - within) as u64).min(end - pos) as usize;
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            let filled = self.ensure_buffered(ino, idx, (n == EXTENT_SIZE as usize).then_some(src))?;
            let mut m = self.meta();
            let fb = m.files.get_mut(&ino).ok_or(EngineError::NotFound)?;
            let de = fb.extents.get_mut(&idx).ok_or(EngineError::NotFound)?;
            if !filled {
                // No flush of this file runs (we hold its lock): no copy here.
                Arc::make_mut(&mut de.data)[within..within + n].copy_from_slice(src);
            }
            de.end = de.end.max(within + n);
            de.gen += 1;
            fb.size = fb.size.max(pos + n as u64);
            fb.mtime_ns = now_ns();
            pos += n as u64;
        }
        // Queue the transactions of extents already written; send the
        // extents the cursor has left behind once there are FLUSH_BATCH of
        // them; bound what is in flight and what is dirty. A failed
        // fragment write leaves its extent dirty, to be written again; it
        // fails this call only when the file is over its dirty limit
        // (otherwise fsync reports it, as a writeback error).
        let writeback = |res: Result<()>| {
            if let Err(e) = res {
                tracing::warn!(ino, %e, "write-behind failed; the extent stays dirty and is retried");
            }
        };
        writeback(self.reap(ino, false));
        let (to_send, all) = {
            let m = self.meta();
            let fb = m.files.get(&ino).ok_or(EngineError::NotFound)?;
            let unsent = |i: &u64| fb.extents.get(i).is_some_and(|de| de.sent != Some(de.gen));
            if fb.extents.len() > MAX_DIRTY_EXTENTS {
                (fb.extents.keys().copied().filter(unsent).collect(), true)
            } else {
                let behind: Vec<u64> =
                    fb.extents.keys().copied().filter(|&i| (i + 1) * EXTENT_SIZE <= end).filter(unsent).collect();
                (if behind.len() >= FLUSH_BATCH { behind } else { Vec::new() }, false)
            }
        };
        self.send_extents(ino, &to_send)?;
        if all {
            self.reap(ino, true)?;
        } else {
            while self.meta().files.get(&ino).is_some_and(|fb| fb.in_flight.len() > MAX_IN_FLIGHT) {
                writeback(self.reap_one(ino));
            }
        }
        Ok(data.len())
    }

    /// Make sure extent `idx` of `ino` is in the buffer, loading its
    /// committed content; or, given `whole` (all of the extent's new bytes),
    /// starting from those. True when the buffer was created from `whole`.
    /// A buffer is complete before it is inserted: readers never see a
    /// recycled buffer's old contents.
    fn ensure_buffered(&self, ino: Ino, idx: u64, whole: Option<&[u8]>) -> Result<bool> {
        let committed = {
            let m = self.meta();
            if m.files.get(&ino).is_some_and(|fb| fb.extents.contains_key(&idx)) {
                return Ok(false);
            }
            let (_, map) = file_map(&m, ino)?;
            map.get(&idx).and_then(|id| m.state.extents.get(id)).cloned()
        };
        let (data, end) = match (whole, committed) {
            (Some(src), _) => {
                let mut data = take_buf(EXTENT_SIZE as usize);
                data.copy_from_slice(src);
                (data, EXTENT_SIZE as usize)
            }
            (None, Some(e)) => {
                let mut data = take_zeroed();
                if let Err(err) = self.read_extent_into(&e, &mut data[..e.len as usize]) {
                    give_zeroed(data, e.len as usize);
                    return Err(err);
                }
                (data, e.len as usize)
            }
            (None, None) => (take_zeroed(), 0),
        };
        let mut m = self.meta();
        let size = file_map(&m, ino)?.0.size;
        let fb = m.files.entry(ino).or_insert_with(|| FileBuf { size, ..Default::default() });
        match fb.extents.entry(idx) {
            std::collections::btree_map::Entry::Occupied(_) => {
                drop(m);
                give_zeroed(data, end);
                Ok(false)
            }
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(DirtyExtent { data: Arc::new(data), gen: 0, sent: None, end });
                Ok(whole.is_some())
            }
        }
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

    pub(crate) fn flush_locked(&self, ino: Ino) -> Result<()> {
        let sent = self.send_unsent(ino);
        // Whatever happened, wait for everything in flight.
        let reaped = self.reap(ino, true);
        sent?;
        reaped?;
        self.queue_size_only(ino)
    }

    /// A size change without data (zeros written past EOF) still needs
    /// committing once the file has no dirty extent left.
    fn queue_size_only(&self, ino: Ino) -> Result<()> {
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
        {
            // Counted while flushing, so a concurrent commit waits for this
            // fsync's ops (see "Commit" in pool.rs).
            struct Flushing<'a>(&'a std::sync::atomic::AtomicUsize);
            impl Drop for Flushing<'_> {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            self.flushing.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _f = Flushing(&self.flushing);
            self.flush(ino)?;
        }
        self.commit()
    }

    /// sync (also fsyncdir and unmount): flush every file with buffered
    /// data, then commit what was flushed; the first flush error is
    /// returned after that commit. Files unlinked but still open are
    /// flushed too: their data need not last, but a write of theirs still
    /// in flight holds allocated blocks, and after a sync nothing allocated
    /// may be left uncommitted (the model test checks allocation against
    /// references after every sync).
    pub fn sync_all(&self) -> Result<()> {
        let inos: Vec<Ino> = self.meta().files.keys().copied().collect();
        let mut first_err = None;
        for ino in inos {
            if let Err(e) = self.flush(ino) {
                first_err.get_or_insert(e);
            }
        }
        self.writeback();
        self.commit()?;
        first_err.map_or(Ok(()), Err)
    }

    /// close(2): hand every dirty extent of `ino` to the write-behind and
    /// return without waiting for the fragment writes (see "Close" in the
    /// module doc). Fails only when an extent can't be placed (ENOSPC, an
    /// unsatisfiable policy); write errors surface at the next fsync.
    pub fn close_flush(&self, ino: Ino) -> Result<()> {
        let lock = match self.file_lock(ino) {
            Ok(l) => l,
            Err(EngineError::NotFound) | Err(EngineError::IsDir) | Err(EngineError::Invalid(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let sent = {
            let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
            let sent = self.send_unsent(ino);
            if let Err(e) = self.reap(ino, false) {
                tracing::warn!(ino, %e, "write-behind failed; the extent stays dirty and is retried");
            }
            let mut m = self.meta();
            let pending = m.files.get(&ino).is_some_and(|fb| !fb.extents.is_empty());
            if pending {
                m.writeback.closed.push_back(ino);
            }
            drop(m);
            if !pending {
                self.queue_size_only(ino)?;
            }
            sent
        };
        drop(lock);
        self.writeback();
        sent
    }

    /// Send the dirty extents of `ino` not being written yet (the caller
    /// holds the file lock).
    fn send_unsent(&self, ino: Ino) -> Result<()> {
        let idxs: Vec<u64> = self
            .meta()
            .files
            .get(&ino)
            .map(|fb| fb.extents.iter().filter(|(_, de)| de.sent != Some(de.gen)).map(|(i, _)| *i).collect())
            .unwrap_or_default();
        idxs.chunks(FLUSH_BATCH).try_for_each(|chunk| self.send_extents(ino, chunk))
    }

    /// Queue the transactions of closed files' finished writes (close and
    /// the mount's periodic commit call this): only writes already done
    /// are taken, plus, while more than [`POOL_MAX_IN_FLIGHT`] extents are
    /// in flight, the oldest are waited for. A failed write leaves its
    /// extent dirty for fsync / sync to write again and report. Buffers of
    /// clean files nobody has open are dropped.
    pub fn writeback(&self) {
        let mut budget = self.meta().writeback.closed.len();
        while budget > 0 {
            budget -= 1;
            let (ino, lock, over) = {
                let mut m = self.meta();
                let Some(ino) = m.writeback.closed.pop_front() else { break };
                let Some(fb) = m.files.get(&ino) else { continue };
                (ino, fb.lock.clone(), m.writeback.in_flight > POOL_MAX_IN_FLIGHT)
            };
            let done = {
                let guard = if over {
                    Some(lock.lock().unwrap_or_else(|p| p.into_inner()))
                } else {
                    match lock.try_lock() {
                        Ok(g) => Some(g),
                        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                        Err(std::sync::TryLockError::WouldBlock) => None,
                    }
                };
                guard.map(|_g| {
                    if over {
                        self.reap_one(ino).and_then(|()| self.reap(ino, false))
                    } else {
                        self.reap(ino, false)
                    }
                })
            };
            drop(lock);
            match done {
                // Its owner is at work on it: look again next time.
                None => {
                    self.meta().writeback.closed.push_back(ino);
                    continue;
                }
                Some(Err(e)) => tracing::warn!(ino, %e, "write-behind failed; the extent stays dirty and is retried"),
                Some(Ok(())) => {}
            }
            let mut m = self.meta();
            let (dirty, busy) = match m.files.get(&ino) {
                Some(fb) => (!fb.extents.is_empty(), !fb.in_flight.is_empty()),
                None => (false, false),
            };
            if !dirty {
                if !m.open_counts.contains_key(&ino) {
                    Self::drop_clean_buffer(&mut m, ino);
                }
            } else if busy && m.writeback.in_flight <= POOL_MAX_IN_FLIGHT {
                // The oldest closed file is still being written, so are
                // the newer ones: look again next time.
                m.writeback.closed.push_front(ino);
                break;
            } else {
                m.writeback.closed.push_back(ino);
            }
        }
    }

    /// Start writing extents `idxs` of `ino` (the caller holds the file
    /// lock): place and allocate them, and hand their encoding and fragment
    /// writes to the worker pool; [`Pool::reap`] queues their transactions
    /// once written. Fails only if an extent can't be placed or encoded
    /// (nothing of it is then in flight; it stays dirty).
    fn send_extents(&self, ino: Ino, idxs: &[u64]) -> Result<()> {
        if idxs.is_empty() {
            return Ok(());
        }
        struct Job {
            idx: u64,
            data: Arc<AlignedBuf>,
            gen: u64,
            len: usize,
        }
        let (jobs, policy) = {
            let mut guard = self.meta();
            let m = &mut *guard;
            let Some(fb) = m.files.get_mut(&ino) else { return Ok(()) };
            let (attrs, _) = file_map_in(&m.state, ino)?;
            let size = fb.size.max(attrs.size);
            let policy = Self::effective_policy_in(&m.state, ino);
            let mut jobs = Vec::new();
            for &idx in idxs {
                let Some(de) = fb.extents.get_mut(&idx) else { continue };
                let start = idx * EXTENT_SIZE;
                let len = size.saturating_sub(start).min(EXTENT_SIZE) as usize;
                // Bytes past the end are not part of the extent: zero them so
                // the buffer is the replicas' zero-padded payload. Readers
                // never look past the size. (If an earlier generation is
                // still being written from this buffer, this copies it.)
                let end = de.end.max(len);
                if !is_zero(&de.data[len..end]) {
                    Arc::make_mut(&mut de.data)[len..end].fill(0);
                }
                de.end = de.end.min(len);
                jobs.push(Job { idx, data: de.data.clone(), gen: de.gen, len });
            }
            (jobs, policy)
        };
        // Here only placement and allocation: hashing, encoding and the
        // writes run on the worker pool.
        let started: Vec<Result<Option<ExtentWrite>>> = jobs
            .iter()
            .map(|job| {
                let bytes = &job.data[..job.len];
                if job.len == 0 || is_zero(bytes) {
                    Ok(None)
                } else {
                    self.start_extent(policy, bytes, Some(&job.data)).map(Some)
                }
            })
            .collect();
        let mut first_err = None;
        let mut guard = self.meta();
        let m = &mut *guard;
        for (job, res) in jobs.into_iter().zip(started) {
            match res {
                Ok(write) => match m.files.get_mut(&ino) {
                    Some(fb) => {
                        if let Some(de) = fb.extents.get_mut(&job.idx) {
                            de.sent = Some(job.gen);
                        }
                        fb.in_flight.push_back(InFlight { idx: job.idx, gen: job.gen, len: job.len, write });
                        m.writeback.in_flight += 1;
                    }
                    None => {
                        // The file went away: wait for the writes, free the space.
                        if let Some(w) = write {
                            let frags = w.extent.frags.clone();
                            drop(w);
                            free_locs(m, &frags);
                        }
                    }
                },
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Queue the transactions of the extents of `ino` whose writes are done,
    /// in the order they were sent; with `wait`, wait for all of them. The
    /// first failure is returned (its extent stays dirty, to be written
    /// again), after the rest have been reaped.
    fn reap(&self, ino: Ino, wait: bool) -> Result<()> {
        let mut first_err = None;
        loop {
            let next = {
                let m = self.meta();
                match m.files.get(&ino).and_then(|fb| fb.in_flight.front()) {
                    None => break,
                    Some(f) => wait || f.write.as_ref().is_none_or(|w| w.is_done()),
                }
            };
            if !next {
                break;
            }
            if let Err(e) = self.reap_one(ino) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Wait for the oldest extent in flight of `ino` and queue its transaction.
    fn reap_one(&self, ino: Ino) -> Result<()> {
        let Some(f) = ({
            let mut m = self.meta();
            let f = m.files.get_mut(&ino).and_then(|fb| fb.in_flight.pop_front());
            if f.is_some() {
                m.writeback.in_flight -= 1;
            }
            f
        }) else {
            return Ok(());
        };
        let InFlight { idx, gen, len, write } = f;
        let result = match write {
            None => Ok(None),
            Some(w) => self.finish_extent(w).map(Some),
        };
        match result {
            Ok(extent) => self.finish_flush(ino, idx, gen, len, extent),
            Err(e) => {
                let mut m = self.meta();
                if let Some(de) = m.files.get_mut(&ino).and_then(|fb| fb.extents.get_mut(&idx)) {
                    if de.sent == Some(gen) {
                        de.sent = None;
                    }
                }
                Err(e)
            }
        }
    }

    /// Queue the transaction of one written extent and drop its buffer if no
    /// write changed it meanwhile.
    fn finish_flush(&self, ino: Ino, idx: u64, gen: u64, len: usize, new_extent: Option<Extent>) -> Result<()> {
        let start = idx * EXTENT_SIZE;
        let mut m = self.meta();
        let (attrs, existing) = match file_map(&m, ino) {
            Ok((a, map)) => (*a, map.get(&idx).copied()),
            Err(_) => {
                // The file went away while we wrote: the extent was never committed.
                if let Some(e) = new_extent {
                    free_locs(&mut m, &e.frags);
                }
                return Ok(());
            }
        };
        let Some(fb) = m.files.get(&ino) else {
            if let Some(e) = new_extent {
                free_locs(&mut m, &e.frags);
            }
            return Ok(());
        };
        let mtime = fb.mtime_ns.max(attrs.mtime_ns);
        let mut ops = Vec::new();
        if let Some(e) = &new_extent {
            // Written since the last commit: the commit must sync them first.
            for f in e.frags.iter() {
                m.dirty_data.insert(f.member);
            }
        }
        if new_extent.is_some() || existing.is_some() {
            ops.push(Op::SetExtent { ino, index: idx, extent: new_extent });
        }
        let new_size = attrs.size.max(start + len as u64);
        if new_size != attrs.size || mtime != attrs.mtime_ns {
            ops.push(Op::SetAttrs {
                ino,
                attrs: Attrs { size: new_size, mtime_ns: mtime, ctime_ns: mtime.max(attrs.ctime_ns), ..attrs },
            });
        }
        if !ops.is_empty() {
            self.apply_txn(&mut m, ops)?;
        }
        let mut spare = None;
        if let Some(fb) = m.files.get_mut(&ino) {
            if fb.extents.get(&idx).is_some_and(|de| de.gen == gen) {
                spare = fb.extents.remove(&idx).and_then(|de| Arc::try_unwrap(de.data).ok().map(|b| (b, de.end)));
            }
        }
        drop(m);
        if let Some((buf, end)) = spare {
            give_zeroed(buf, end);
        }
        Ok(())
    }

    pub(crate) fn free_uncommitted(&self, frags: &[FragLoc]) {
        free_locs(&mut self.meta(), frags);
    }

    /// Read up to `len` bytes at `offset` of file `ino` (short at EOF).
    pub fn read(&self, ino: Ino, offset: u64, len: usize) -> Result<Vec<u8>> {
        // Committed extents to read: (extent, its offset in `out`, bytes of
        // `out` it covers, where those start in the extent).
        let mut plan: Vec<(Extent, usize, usize, usize)> = Vec::new();
        let seq;
        let mut out;
        {
            let m = self.meta();
            let (attrs, map) = file_map(&m, ino)?;
            let fb = m.files.get(&ino);
            let size = fb.map(|f| f.size).unwrap_or(0).max(attrs.size);
            if offset >= size {
                return Ok(Vec::new());
            }
            let end = size.min(offset.saturating_add(len as u64));
            out = vec![0u8; (end - offset) as usize];
            let mut pos = offset;
            while pos < end {
                let idx = pos / EXTENT_SIZE;
                let within = (pos % EXTENT_SIZE) as usize;
                let n = ((EXTENT_SIZE - within as u64).min(end - pos)) as usize;
                let o = (pos - offset) as usize;
                if let Some(de) = fb.and_then(|f| f.extents.get(&idx)) {
                    out[o..o + n].copy_from_slice(&de.data[within..within + n]);
                } else if let Some(e) = map.get(&idx).and_then(|id| m.state.extents.get(id)) {
                    // Past the extent's end the file reads as zeros.
                    let covered = n.min((e.len as usize).saturating_sub(within));
                    if covered > 0 {
                        plan.push((e.clone(), o, covered, within));
                    }
                }
                pos += n as u64;
            }
            seq = readahead::sequential(self.uuid.as_u128(), ino, offset, end);
            if seq {
                // The next extents of the file, fetched in the background.
                let last = (end - 1) / EXTENT_SIZE;
                for (idx, id) in map.range(last + 1..=last + readahead::READ_AHEAD_EXTENTS as u64) {
                    let dirty = fb.is_some_and(|f| f.extents.contains_key(idx));
                    if let Some(e) = m.state.extents.get(id).filter(|_| !dirty) {
                        self.read_ahead(&m, e);
                    }
                }
            }
        }
        // Each extent into its own disjoint part of `out`, READ_PARALLEL at a time.
        let read_one = |e: &Extent, within: usize, dst: &mut [u8]| -> Result<()> {
            readahead::wait_for(e.id);
            if let Some(whole) = cached_extent(e.id) {
                dst.copy_from_slice(&whole[within..within + dst.len()]);
                return Ok(());
            }
            let whole_req = within == 0 && dst.len() == e.len as usize;
            // A random read of part of an extent: only the pieces it needs.
            let mut known_bad = None;
            if !seq && !whole_req {
                match self.read_partial(e, within, dst) {
                    Ok(()) => return Ok(()),
                    Err(Miss::Unavailable) => {}
                    Err(Miss::Bad(i, fault)) => known_bad = Some((i, fault)),
                }
            }
            if whole_req {
                self.read_extent_known_bad(e, dst, known_bad)
            } else {
                let mut tmp = take_buf(e.len as usize);
                let res = self.read_extent_known_bad(e, &mut tmp, known_bad);
                if res.is_ok() {
                    dst.copy_from_slice(&tmp[within..within + dst.len()]);
                    cache_extent(e.id, Arc::new(tmp));
                } else {
                    give_buf(tmp);
                }
                res
            }
        };
        let mut rest: &mut [u8] = &mut out;
        let mut consumed = 0usize;
        for chunk in plan.chunks(READ_PARALLEL) {
            let mut parts: Vec<(&Extent, usize, Mutex<&mut [u8]>)> = Vec::with_capacity(chunk.len());
            for (e, o, covered, within) in chunk {
                let (_, after) = std::mem::take(&mut rest).split_at_mut(o - consumed);
                let (dst, after) = after.split_at_mut(*covered);
                rest = after;
                consumed = o + covered;
                parts.push((e, *within, Mutex::new(dst)));
            }
            par_map(&parts, |(e, within, dst)| {
                let mut dst = dst.lock().unwrap_or_else(|p| p.into_inner());
                read_one(e, *within, &mut dst)
            })
            .into_iter()
            .collect::<Result<Vec<()>>>()?;
        }
        self.note_reads(ino, plan.iter().map(|(e, o, _, _)| ((offset + *o as u64) / EXTENT_SIZE, e)));
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
                if is_zero(&bytes[..keep]) { None } else { Some(self.write_extent(e.policy(), &bytes[..keep])?) };
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

    /// Drop the write buffer of a file being deleted: its writes in flight
    /// are waited for (they are fragment IO only) and their space freed.
    pub(crate) fn forget_buffer(m: &mut Meta, ino: Ino) {
        if let Some(mut fb) = m.files.remove(&ino) {
            m.writeback.in_flight -= fb.in_flight.len();
            for f in fb.in_flight.drain(..) {
                if let Some(w) = f.write {
                    let frags = w.extent.frags.clone();
                    drop(w);
                    free_locs(m, &frags);
                }
            }
        }
    }

    /// Drop the (clean) write buffer of a file nobody has open any more.
    pub(crate) fn drop_clean_buffer(m: &mut Meta, ino: Ino) {
        if m.files.get(&ino).is_some_and(|fb| fb.extents.is_empty() && Arc::strong_count(&fb.lock) == 1) {
            m.files.remove(&ino);
        }
    }

    /// Largest block size of the opened members.
    pub(crate) fn max_block_size(&self) -> u64 {
        self.members.iter().flatten().map(|m| m.layout.block_size as u64).max().unwrap_or(4096)
    }

    /// Blocks a fragment of `payload_len` bytes takes on `member` (header + payload).
    pub(crate) fn fragment_blocks(&self, member: u32, payload_len: usize) -> u64 {
        let bs = self.members.get(member as usize).and_then(|m| m.as_ref()).map(|m| m.layout.block_size as u64);
        let bs = bs.unwrap_or(4096);
        1 + (payload_len as u64).div_ceil(bs)
    }

    /// Allocate a fragment of `payload_len` bytes on each of `members`
    /// (all or nothing) and mark them dirty for the next commit.
    pub(crate) fn allocate_fragments(&self, m: &mut Meta, members: &[u32], payload_len: usize) -> Result<Vec<FragLoc>> {
        let mut locs: Vec<FragLoc> = Vec::new();
        for &member in members {
            let blocks = self.fragment_blocks(member, payload_len);
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
        Ok(locs)
    }

    /// Write one fragment at `loc`: its header block, then `payload` (the
    /// payload zero-padded to at least the member's block size multiple;
    /// only the blocks `loc` holds are written), as one batch. With
    /// `verify_writes` the blocks are read back and compared.
    pub(crate) fn write_fragment(&self, loc: &FragLoc, header: &FragmentHeader, payload: &[u8]) -> Result<u64> {
        let mem = self.member(loc.member)?;
        let bs = mem.layout.block_size as usize;
        let payload_blocks = loc.blocks as usize - 1;
        let plen = payload_blocks * bs;
        if payload.len() < plen || (header.payload_len as usize) > plen {
            return Err(EngineError::Other(format!(
                "internal: fragment payload buffer of {} bytes for {} blocks of {bs}",
                payload.len(),
                payload_blocks
            )));
        }
        let hdr = AlignedBuf::from_slice_padded(&block_sums::header_block(header, payload), bs);
        let offset = mem.layout.data_offset(loc.block);
        let written = (|| -> Result<()> {
            mem.dev.write_batch(&[
                WriteReq { offset, buf: &hdr },
                WriteReq { offset: offset + bs as u64, buf: &payload[..plen] },
            ])?;
            if self.opts.verify_writes {
                let mut check = AlignedBuf::zeroed(bs + plen);
                mem.dev.read_at(offset, &mut check)?;
                if check[..bs] != hdr[..] || check[bs..] != payload[..plen] {
                    return Err(EngineError::Other(format!(
                        "{}: read-after-write mismatch at offset {offset}",
                        mem.dev.identity()
                    )));
                }
            }
            Ok(())
        })();
        if written.is_err() {
            self.counters.member_errors.note(loc.member);
        }
        written?;
        self.counters.fragments_written.fetch_add(1, Ordering::Relaxed);
        Ok((bs + plen) as u64)
    }

    fn member(&self, index: u32) -> Result<&Member> {
        self.members
            .get(index as usize)
            .and_then(|m| m.as_ref())
            .ok_or_else(|| EngineError::Other(format!("member {index} is not open")))
    }

    /// The header of fragment `index` of an extent.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn extent_header(
        &self,
        id: uuid::Uuid,
        policy: Policy,
        index: usize,
        payload_len: usize,
        extent_len: usize,
        extent_blake3: [u8; 32],
        payload_blake3: [u8; 32],
    ) -> FragmentHeader {
        extent_header(self.uuid, id, policy, index, payload_len, extent_len, extent_blake3, payload_blake3)
    }

    /// Encode `data` under `policy` and write its fragments to distinct
    /// members (returns once they are written).
    pub(crate) fn write_extent(&self, policy: Policy, data: &[u8]) -> Result<Extent> {
        let w = self.start_extent(policy, data, None)?;
        self.finish_extent(w)
    }

    /// Place and allocate the fragments of `data` (here), then encode it
    /// and write them on the worker pool: the caller goes on while the
    /// extent is hashed, encoded and written. `padded`, when given, is the
    /// aligned buffer `data` starts, zero after it: it is shared, not
    /// copied (replicas are written from it).
    fn start_extent(&self, policy: Policy, data: &[u8], padded: Option<&Arc<AlignedBuf>>) -> Result<ExtentWrite> {
        let payload_len = redundancy::fragment_payload_len(policy, data.len() as u32)
            .map_err(|e| EngineError::Other(e.to_string()))? as usize;
        let count = policy.fragment_count() as usize;
        let max_bs = self.max_block_size() as usize;
        let slot = payload_len.div_ceil(max_bs) * max_bs;
        let id = uuid::Uuid::new_v4();
        // Choose members and allocate under the lock.
        let locs: Vec<FragLoc> = {
            let mut m = self.meta();
            let views = self.member_views(&m);
            let bytes = (1 + (payload_len as u64).div_ceil(max_bs as u64)) * max_bs as u64;
            let chosen = placement::place(policy, &views, bytes, &mut rand::thread_rng()).map_err(|e| match e {
                placement::PlacementError::CannotSatisfy { online, .. } if online >= policy.fragment_count() => {
                    EngineError::NoSpace(e.to_string())
                }
                e => EngineError::PolicyUnsatisfiable { policy: policy.to_string(), reason: e.to_string() },
            })?;
            self.allocate_fragments(&mut m, &chosen, payload_len)?
        };
        let mut targets = Vec::with_capacity(count);
        for loc in &locs {
            match self.member(loc.member) {
                Ok(m) => targets.push(Target {
                    dev: m.dev.clone(),
                    offset: m.layout.data_offset(loc.block),
                    bs: m.layout.block_size as usize,
                    blocks: loc.blocks as usize,
                }),
                Err(e) => {
                    self.free_uncommitted(&locs);
                    return Err(e);
                }
            }
        }
        let len = data.len();
        // Replicas are written from this buffer: the payload blocks.
        let need = slot.max(len.next_multiple_of(max_bs));
        let data = match padded {
            Some(p) if p.len() >= need && std::ptr::eq(p.as_ptr(), data.as_ptr()) => p.clone(),
            _ => {
                let mut buf = take_buf(need);
                buf[..len].copy_from_slice(data);
                buf[len..].fill(0);
                Arc::new(buf)
            }
        };
        let plan = EncodePlan {
            pool: self.uuid,
            id,
            policy,
            len,
            payload_len,
            slot,
            max_bs,
            targets,
            verify: self.opts.verify_writes,
        };
        let io = Arc::new(IoBatch {
            results: Mutex::new((0..count).map(|_| None).collect()),
            extent_blake3: Mutex::new(None),
            encoding_failed: Default::default(),
            latch: workers::Latch::new(count),
        });
        let job_io = io.clone();
        workers::submit(Box::new(move || encode_and_send(plan, data, job_io)));
        let extent =
            Extent { id: id.as_u128(), len: len as u32, blake3: [0; 32], policy: policy.encode(), frags: locs.into() };
        Ok(ExtentWrite { extent, io })
    }

    /// Wait for the fragment writes of `w`; on any failure its space is
    /// freed and the first error returned.
    fn finish_extent(&self, w: ExtentWrite) -> Result<Extent> {
        w.io.latch.wait();
        let results = std::mem::take(&mut *w.io.results.lock().unwrap_or_else(|p| p.into_inner()));
        let mut extent = w.extent.clone();
        let hash = *w.io.extent_blake3.lock().unwrap_or_else(|p| p.into_inner());
        let device_errors = !w.io.encoding_failed.load(Ordering::Relaxed);
        drop(w);
        match hash {
            Some(h) => extent.blake3 = h,
            None => {
                self.free_uncommitted(&extent.frags);
                return Err(EngineError::Other("internal: extent encoded without its BLAKE3".into()));
            }
        }
        let mut first_err = None;
        for (r, loc) in results.into_iter().zip(extent.frags.iter()) {
            match r {
                Some(Ok(_)) => {
                    self.counters.fragments_written.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    if device_errors {
                        self.counters.member_errors.note(loc.member);
                    }
                    first_err.get_or_insert(e);
                }
                None => {
                    first_err.get_or_insert(EngineError::Other("internal: a fragment write never ran".into()));
                }
            }
        }
        if let Some(e) = first_err {
            self.free_uncommitted(&extent.frags);
            return Err(e);
        }
        Ok(extent)
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

    /// What is wrong with `h` as the header of fragment `index` of `e`
    /// (compared with the extent table), if anything.
    pub(crate) fn header_mismatch(&self, e: &Extent, index: usize, h: &FragmentHeader) -> Option<&'static str> {
        header_mismatch(self.uuid, e, index, h)
    }

    /// Read fragment `index` of `e` and check its header against the
    /// extent table; the payload hash is checked only when `verify`.
    fn read_fragment(&self, e: &Extent, index: usize, verify: bool) -> std::result::Result<ReadFrag, FragFault> {
        let loc = e.frags.get(index).ok_or(FragFault::Absent)?;
        let mem = self.members.get(loc.member as usize).and_then(|m| m.as_ref()).ok_or(FragFault::Absent)?;
        let bs = mem.layout.block_size as usize;
        let mut buf = take_buf(loc.blocks as usize * bs);
        self.counters.fragments_read.fetch_add(1, Ordering::Relaxed);
        let res = (|| {
            if let Err(err) = mem.dev.read_at(mem.layout.data_offset(loc.block), &mut buf) {
                give_buf(buf);
                return Err(FragFault::Io(err.to_string()));
            }
            let h = match FragmentHeader::decode(&buf) {
                Ok(h) => h,
                Err(err) => {
                    give_buf(buf);
                    return Err(FragFault::Corrupt(format!("header: {err}")));
                }
            };
            let expect_len = redundancy::shard_len(e.policy(), e.len) as usize;
            let mismatch = match self.header_mismatch(e, index, &h) {
                None if bs + expect_len > buf.len() => Some("wrong payload length"),
                m => m,
            };
            if let Some(why) = mismatch {
                give_buf(buf);
                return Err(FragFault::Corrupt(format!("header: {why}")));
            }
            let mut f = ReadFrag { buf, start: bs, len: expect_len, payload_blake3: h.payload_blake3, verified: false };
            if verify {
                if blake3::hash(f.payload()).as_bytes() != &f.payload_blake3 {
                    return Err(FragFault::Corrupt("payload BLAKE3 mismatch".into()));
                }
                f.verified = true;
            }
            Ok(f)
        })();
        if let Err(fault) = &res {
            self.counters.bad_fragment_read(loc.member);
            tracing::warn!(
                extent = %uuid::Uuid::from_u128(e.id),
                fragment = index,
                device = %mem.dev.identity(),
                %fault,
                "bad fragment"
            );
        }
        res
    }

    /// Read an extent's bytes, verified end to end; falls back to other
    /// fragments on errors, rebuilds bad fragments (lazy repair), and fails
    /// with `DataLost` (never wrong data) when too few fragments are good.
    pub fn read_extent(&self, e: &Extent) -> Result<Vec<u8>> {
        let mut out = vec![0u8; e.len as usize];
        self.read_extent_into(e, &mut out)?;
        Ok(out)
    }

    /// [`Pool::read_extent`] into `out` (exactly `e.len` bytes). On error
    /// `out` holds garbage.
    pub(crate) fn read_extent_into(&self, e: &Extent, out: &mut [u8]) -> Result<()> {
        self.read_extent_known_bad(e, out, None)
    }

    /// [`Pool::read_extent_into`] with fragment `bad` already known bad (a
    /// partial read found it so): not read, and repaired like any other.
    pub(crate) fn read_extent_known_bad(
        &self,
        e: &Extent,
        out: &mut [u8],
        bad: Option<(usize, FragFault)>,
    ) -> Result<()> {
        if out.len() != e.len as usize {
            return Err(EngineError::Other(format!("internal: {} byte buffer for a {} byte extent", out.len(), e.len)));
        }
        match self.read_extent_seeded(e, out, bad) {
            Ok((got, set, faults)) => {
                let bad: Vec<(usize, FragFault)> =
                    faults.into_iter().enumerate().filter_map(|(i, f)| f.map(|f| (i, f))).collect();
                if !bad.is_empty() {
                    let sources: Vec<Option<&[u8]>> = (0..got.len())
                        .map(|i| if set.contains(&i) { got[i].as_ref().map(|f| f.payload()) } else { None })
                        .collect();
                    self.lazy_repair(e, out, &sources, &bad);
                } else {
                    self.repair.forget_lost(e.id);
                }
                Ok(())
            }
            Err(err) => {
                if let EngineError::DataLost { reason, .. } = &err {
                    self.report_lost(e, reason);
                }
                Err(err)
            }
        }
    }

    /// The read itself, decoding into `out`: the fragments read, the set
    /// decoded from, and what was wrong with each fragment.
    #[allow(clippy::type_complexity)]
    pub(crate) fn read_extent_inner(
        &self,
        e: &Extent,
        out: &mut [u8],
    ) -> Result<(Vec<Option<ReadFrag>>, Vec<usize>, Vec<Option<FragFault>>)> {
        self.read_extent_seeded(e, out, None)
    }

    /// [`Pool::read_extent_inner`] starting with fragment `bad` marked bad.
    #[allow(clippy::type_complexity)]
    fn read_extent_seeded(
        &self,
        e: &Extent,
        out: &mut [u8],
        bad: Option<(usize, FragFault)>,
    ) -> Result<(Vec<Option<ReadFrag>>, Vec<usize>, Vec<Option<FragFault>>)> {
        let policy = e.policy();
        let n = e.frags.len();
        let lost = |reason: String| EngineError::DataLost { extent: e.id, reason };
        let mut faults: Vec<Option<FragFault>> = {
            let m = self.meta();
            e.frags
                .iter()
                .map(|f| {
                    let ok = self.members.get(f.member as usize).is_some_and(|x| x.is_some())
                        && m.state.members.get(f.member as usize).is_none_or(|r| r.state != MemberState::Failed);
                    if ok {
                        None
                    } else {
                        Some(FragFault::Absent)
                    }
                })
                .collect()
        };
        if let Some((i, fault)) = bad {
            if i < n && faults[i].is_none() {
                self.counters.bad_fragment_read(e.frags[i].member);
                tracing::warn!(extent = %uuid::Uuid::from_u128(e.id), fragment = i, %fault, "bad fragment (partial read)");
                faults[i] = Some(fault);
            }
        }
        let mut got: Vec<Option<ReadFrag>> = (0..n).map(|_| None).collect();
        loop {
            let usable: Vec<bool> = (0..n).map(|i| got[i].is_some() || faults[i].is_none()).collect();
            let set = redundancy::read_set(policy, &usable).map_err(|err| {
                let why: Vec<String> =
                    faults.iter().enumerate().filter_map(|(i, f)| f.as_ref().map(|f| format!("#{i}: {f}"))).collect();
                lost(format!("{err}; {}", why.join(", ")))
            })?;
            let missing: Vec<usize> = set.iter().copied().filter(|&i| got[i].is_none()).collect();
            if missing.is_empty() {
                let views: Vec<Option<&[u8]>> = (0..n)
                    .map(|i| if set.contains(&i) { got[i].as_ref().map(|f| f.payload()) } else { None })
                    .collect();
                redundancy::decode_into(policy, e.len, &views, out).map_err(|err| lost(err.to_string()))?;
                if blake3::hash(out).as_bytes() == &e.blake3 {
                    return Ok((got, set, faults));
                }
                // Find the culprits: the fragments whose payload fails its own hash.
                let mut culprits = Vec::new();
                for &i in &set {
                    if let Some(f) = got[i].as_mut() {
                        if !f.verified {
                            if blake3::hash(f.payload()).as_bytes() != &f.payload_blake3 {
                                culprits.push((i, "payload BLAKE3 mismatch".to_string()));
                            } else {
                                f.verified = true;
                            }
                        }
                    }
                }
                if culprits.is_empty() {
                    // Each verifies alone but together they are not the extent.
                    culprits = set.iter().map(|&i| (i, "does not decode to the extent's BLAKE3".to_string())).collect();
                }
                for (i, why) in culprits {
                    self.counters.bad_fragment_read(e.frags[i].member);
                    tracing::warn!(extent = %uuid::Uuid::from_u128(e.id), fragment = i, "bad fragment: {why}");
                    got[i] = None;
                    faults[i] = Some(FragFault::Corrupt(why));
                }
                continue;
            }
            // Later rounds (fallback) verify each fragment as it is read.
            let verify = faults.iter().any(|f| f.is_some());
            let results = par_map(&missing, |&i| self.read_fragment(e, i, verify));
            for (&i, r) in missing.iter().zip(results) {
                match r {
                    Ok(f) => got[i] = Some(f),
                    Err(fault) => faults[i] = Some(fault),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_zero, par_map};
    use std::time::Duration;

    #[test]
    fn is_zero_sees_any_set_bit_anywhere() {
        for len in [0usize, 1, 7, 8, 255, 256, 257, 1000, 4096, 65536 + 13] {
            let mut b = vec![0u8; len];
            assert!(is_zero(&b), "len {len}");
            for at in [0, len / 2, len.saturating_sub(1)] {
                for bit in [0u8, 7] {
                    if len == 0 {
                        continue;
                    }
                    b[at] = 1 << bit;
                    assert!(!is_zero(&b), "len {len}: byte {at} bit {bit} missed");
                    // Unaligned starts too.
                    assert_eq!(is_zero(&b[1.min(len)..]), at == 0 && len > 0, "len {len} from 1, byte {at}");
                    b[at] = 0;
                }
            }
        }
    }

    #[test]
    fn par_map_keeps_order_and_nests_beyond_the_worker_cap() {
        // More blocking jobs than workers, each waiting on nested jobs: no
        // deadlock, results in order.
        let items: Vec<u64> = (0..200).collect();
        let out = par_map(&items, |&i| {
            let inner: Vec<u64> = (0..3).collect();
            let v = par_map(&inner, |&j| {
                std::thread::sleep(Duration::from_millis(1));
                i * 10 + j
            });
            v.iter().sum::<u64>()
        });
        let want: Vec<u64> = items.iter().map(|&i| 30 * i + 3).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn par_map_reraises_a_panic_after_every_job_is_done() {
        let done = std::sync::atomic::AtomicUsize::new(0);
        let items: Vec<usize> = (0..8).collect();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            par_map(&items, |&i| {
                std::thread::sleep(Duration::from_millis(5));
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert!(i != 3, "job 3 fails");
            })
        }));
        assert!(r.is_err());
        assert_eq!(done.load(std::sync::atomic::Ordering::SeqCst), 8, "returned before every job ended");
    }
}
