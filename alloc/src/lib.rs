//! # dfs-alloc: the per-member block allocator
//!
//! One [`Allocator`] owns the data region of one member (a disk or image
//! file of the pool): blocks `0..total_blocks`, a block being the member's
//! block size. This crate never sees bytes of data, devices or the journal;
//! the engine asks it for runs of blocks, tells it what metadata replay found
//! used, and writes the bitmap chunks it hands out.
//!
//! ## The bitmap, on disk and in memory
//!
//! The persistent form is a bitmap, one bit per block, **1 = used**. The bit
//! of block `b` is bit `b % 8` (least significant first) of byte `b / 8`.
//! The bitmap is cut into *chunks* of `bits_per_chunk` bits (a multiple of
//! 8); chunk `c` covers blocks `c * bits_per_chunk ..` and is the payload of
//! one on-disk bitmap block, which the engine wraps in a header defined by
//! `dfs-format`. The bits of the last chunk past `total_blocks` are written
//! as 0, and a bitmap with any of them set is rejected by [`Allocator::load`]
//! ([`AllocError::BitPastEnd`]) rather than silently trimmed: such a bit
//! means the chunk belongs to another geometry.
//!
//! In memory the bitmap is a `Vec<u64>` (block `b` is bit `b % 64` of word
//! `b / 64`, the same order read as little-endian bytes), so it costs 1/8
//! byte per block. Beside it sits the *free-extent index*: every maximal run
//! of free blocks, once by start (`BTreeMap<start, len>`) and once by size
//! (`BTreeSet<(len, start)>`), about 68 bytes per free run
//! ([`Allocator::heap_bytes`]). A fresh or a full region is one run or
//! none; the index grows only with fragmentation, and is rebuilt from the
//! bitmap by `load`, never stored. Its worst case is a region shredded into
//! one-block holes: one run per two blocks, about 34 bytes per block (18
//! right after `load`, whose bulk-built trees are packed), against 0.125
//! for the bitmap. `examples/bench_alloc.rs` measures these figures.
//!
//! ## What "free" means
//!
//! Every block is in exactly one of three states ([`BlockState`]):
//!
//! - **Free**: bit 0, in the free-extent index, may be handed out now.
//! - **Used**: bit 1, owned by some extent of the metadata.
//! - **Pending free**: bit 1, no longer referenced by the *newest*
//!   metadata, but possibly still referenced by the newest *durable*
//!   metadata. Not allocatable and not counted free.
//!
//! `free_blocks() + used_blocks() + pending_free_blocks() == total_blocks()`
//! at all times. The persisted bitmap shows pending-free blocks as used:
//! a bitmap chunk written while a free is pending must stay correct if the
//! freeing commit is then lost in a crash.
//!
//! ## Allocation policy: bounded next-fit, best-fit fallback
//!
//! [`Allocator::allocate`]`(n)` returns one contiguous run of exactly `n`
//! blocks, chosen so:
//!
//! 1. If the largest free run (top of the by-size index) is shorter than
//!    `n`, fail with [`AllocError::NoSpace`], naming that largest run.
//! 2. *Next fit*: look at the free runs in address order starting at the
//!    roving cursor (the run holding the cursor, or the first after it),
//!    wrapping past the last block to block 0, and take the first of at most
//!    [`NEXT_FIT_SCAN`] runs that holds `n` blocks, from its start.
//! 3. *Best fit*: if none of those does, take the shortest free run of at
//!    least `n` blocks (lowest start among equals) from the by-size index.
//! 4. The cursor moves to the end of the run handed out.
//!
//! Why: the engine writes a file as a stream of extents, so consecutive
//! allocations should be consecutive on disk (sequential IO for writing and
//! for reading back), which next-fit gives for free. The roving cursor
//! sweeps the whole region instead of re-fragmenting its start, and holes
//! left by frees behind the cursor are mostly refilled only after a lap, by which
//! time their neighbours have often been freed too and merged with them.
//! Bounding the scan keeps every allocation O(log free runs) even on a
//! region shredded into millions of tiny runs; best fit when the scan fails
//! keeps the long runs for the requests that need them, and the by-size
//! index makes both that and the `NoSpace` answer O(log n).
//! [`Allocator::allocate_up_to`] serves callers that can split a write: it
//! takes `min(max, largest_free_run())` blocks with the same policy.
//!
//! ## Deferred frees, or: no reuse before the freeing commit is durable
//!
//! Extents are immutable: overwriting a file writes a new extent and drops
//! the old one in the same metadata commit. The old extent's blocks must
//! not be reused until that commit is durable. Suppose they were:
//!
//! 1. Commit 41 (durable) says file F's extent lives in blocks 100..356.
//! 2. F is overwritten: the new extent goes to blocks 900..1156 and commit
//!    42, which drops 100..356, is written but **not yet synced**.
//! 3. If 100..356 were free now, the next write (file G) could get them;
//!    G's fragment is written and synced there.
//! 4. Power is cut before commit 42 is durable. Replay stops at commit 41,
//!    which still says F lives in 100..356 — blocks now holding G's data.
//!    F reads back as garbage: BLAKE3 flags it, but unless another copy
//!    survives elsewhere, the contents F had at its last fsync are gone.
//!    A crash, which may only lose writes not yet synced, has destroyed
//!    data that was durable.
//!
//! So the engine calls [`Allocator::free_deferred`]`(run, commit_seq)` when
//! the commit numbered `commit_seq` drops a run, and
//! [`Allocator::release_durable`]`(durable_seq)` after each device sync:
//! every run whose `commit_seq <= durable_seq` then becomes free. Until
//! then its blocks are neither allocatable nor counted free, and they stay
//! 1 in the persisted bitmap. A run deferred with a sequence number that is
//! already durable waits for the next `release_durable` call; the allocator
//! does not remember durability. Pending frees live only in memory: after a
//! crash, `load` sees those blocks as used and it is for metadata replay to
//! free them again (or for GC to find them as orphans). Immediate
//! [`Allocator::free`] is for space no durable metadata ever referenced
//! (an allocation abandoned before its commit, or replay itself).
//!
//! ## Persistence
//!
//! Every bitmap change marks its chunks dirty. The engine writes
//! [`Allocator::dirty_chunks`] (bytes from [`Allocator::chunk_bytes`]) with
//! the commit and then calls [`Allocator::clear_dirty`]. A fresh
//! [`Allocator::new`] has every chunk dirty (nothing is on disk yet); a
//! freshly loaded one has none. `load` of what was saved gives an allocator
//! equal (`==`) to the saved one: same geometry and same set of 1 bits.
//!
//! ## Example
//!
//! ```
//! use dfs_alloc::{Allocator, Run};
//!
//! // 1000 blocks, chunks of 256 bits (32-byte payloads).
//! let mut a = Allocator::new(1000, 256)?;
//! let old = a.allocate(100)?; // blocks 0..100 for file F, commit 1
//! let new = a.allocate(100)?; // F overwritten: blocks 100..200, commit 2
//! assert_eq!(new, Run::new(100, 100));
//! a.free_deferred(old, 2)?; // commit 2 drops the old extent
//! assert_eq!((a.free_blocks(), a.pending_free_blocks()), (800, 100));
//! a.release_durable(2); // the device sync made commit 2 durable
//! assert_eq!(a.free_blocks(), 900);
//!
//! // Write the chunks that changed (all of them, since `new`): the engine
//! // wraps each in a bitmap-block header and writes it with the commit...
//! let mut disk = vec![vec![0u8; a.bytes_per_chunk()]; a.chunk_count() as usize];
//! for c in a.dirty_chunks() {
//!     disk[c as usize] = a.chunk_bytes(c)?;
//! }
//! a.clear_dirty();
//! // ...and a later mount rebuilds the allocator from them.
//! let b = Allocator::load(1000, 256, disk.iter().map(Vec::as_slice))?;
//! assert_eq!(a, b);
//! # Ok::<(), dfs_alloc::AllocError>(())
//! ```
//!
//! ## What this crate must never do
//!
//! - **IO, threads, clocks, randomness.** It is a pure data structure: the
//!   engine owns the devices and the locking, and tests can drive it
//!   through millions of operations in memory.
//! - **Panic on caller input.** A run out of range, a double free, a
//!   malformed chunk, a geometry that does not fit in memory: each is a
//!   typed [`AllocError`] and leaves the allocator unchanged. Garbage handed
//!   to `load` is rejected, never trusted and never a crash.
//! - **Depend on any other crate of the project.** Arrows point down.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod bitmap;
mod error;
mod extents;

use std::collections::BTreeMap;
use std::fmt;

use bitmap::Bitmap;
pub use error::AllocError;
use extents::FreeIndex;

/// How many free runs next-fit looks at, from the cursor, before it falls
/// back to best fit. Bounds the cost of one allocation on a fragmented
/// region: 32 steps of an in-order walk touch a few adjacent B-tree leaves,
/// cheaper than the index updates that follow any allocation.
pub const NEXT_FIT_SCAN: usize = 32;

/// Estimated heap bytes per pending (deferred) free run: one entry in a map
/// by start and one in a list by commit sequence.
const PENDING_BYTES_PER_RUN: usize = 56;

/// A contiguous run of blocks `start..start + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Run {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub len: u64,
}

impl Run {
    /// The run `start..start + len`.
    pub const fn new(start: u64, len: u64) -> Self {
        Self { start, len }
    }

    /// One past the last block (saturating at `u64::MAX` for a run that
    /// does not fit in `u64`, which no allocator accepts).
    pub const fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }

    /// Whether `block` lies in the run.
    pub const fn contains(&self, block: u64) -> bool {
        block >= self.start && block - self.start < self.len
    }
}

impl fmt::Display for Run {
    /// `start+len (blocks start..end)`, e.g. `100+8 (blocks 100..108)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}+{} (blocks {}..{})",
            self.start,
            self.len,
            self.start,
            u128::from(self.start) + u128::from(self.len)
        )
    }
}

/// The state of one block; see the crate documentation, "What free means".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockState {
    /// Allocatable now; bit 0 on disk.
    Free,
    /// Owned by some extent; bit 1 on disk.
    Used,
    /// Freed by a commit that is not yet durable; bit 1 on disk.
    PendingFree {
        /// The commit whose durability releases the block.
        commit_seq: u64,
    },
}

/// The bitmap allocator of one member's data region.
///
/// Equality (`==`) compares what would be persisted: geometry and the set
/// of 1 bits (pending-free blocks count as used). The roving cursor, dirty
/// chunks and the sequence numbers of pending frees are not compared.
#[derive(Clone)]
pub struct Allocator {
    bits_per_chunk: u32,
    bitmap: Bitmap,
    free: FreeIndex,
    /// Pending frees by first block: `(len, commit_seq)`. Disjoint.
    pending_by_start: BTreeMap<u64, (u64, u64)>,
    /// Pending frees by commit sequence: first blocks.
    pending_by_seq: BTreeMap<u64, Vec<u64>>,
    pending_blocks: u64,
    /// One bit per chunk, 1 = changed since the last `clear_dirty`.
    dirty: Vec<u64>,
    /// Where next-fit starts looking.
    cursor: u64,
}

impl PartialEq for Allocator {
    fn eq(&self, other: &Self) -> bool {
        self.bits_per_chunk == other.bits_per_chunk && self.bitmap == other.bitmap
    }
}

impl Eq for Allocator {}

impl fmt::Debug for Allocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allocator")
            .field("total_blocks", &self.total_blocks())
            .field("bits_per_chunk", &self.bits_per_chunk)
            .field("free_blocks", &self.free_blocks())
            .field("used_blocks", &self.used_blocks())
            .field("pending_free_blocks", &self.pending_blocks)
            .field("free_runs", &self.free.len())
            .field("largest_free_run", &self.largest_free_run())
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl Allocator {
    /// An allocator for blocks `0..total_blocks`, all free, every chunk
    /// dirty. `bits_per_chunk` must be a non-zero multiple of 8.
    /// `total_blocks` may be 0 (no chunk, nothing to allocate).
    pub fn new(total_blocks: u64, bits_per_chunk: u32) -> Result<Self, AllocError> {
        let mut a = Self::empty(total_blocks, bits_per_chunk)?;
        if total_blocks > 0 {
            a.free.insert_raw(0, total_blocks);
        }
        a.mark_dirty(0, total_blocks);
        Ok(a)
    }

    /// Geometry checks and all-zero structures, index empty, nothing dirty.
    fn empty(total_blocks: u64, bits_per_chunk: u32) -> Result<Self, AllocError> {
        let invalid = |reason| AllocError::InvalidGeometry { total_blocks, bits_per_chunk, reason };
        if bits_per_chunk == 0 {
            return Err(invalid("bits_per_chunk must not be 0"));
        }
        if !bits_per_chunk.is_multiple_of(8) {
            return Err(invalid("bits_per_chunk must be a multiple of 8"));
        }
        let too_large = AllocError::TooLarge { total_blocks };
        let bitmap = Bitmap::zeroed(total_blocks).ok_or(too_large.clone())?;
        let chunks = total_blocks.div_ceil(u64::from(bits_per_chunk));
        let dirty_words = usize::try_from(chunks.div_ceil(64)).map_err(|_| too_large.clone())?;
        let mut dirty = Vec::new();
        dirty.try_reserve_exact(dirty_words).map_err(|_| too_large)?;
        dirty.resize(dirty_words, 0);
        Ok(Self {
            bits_per_chunk,
            bitmap,
            free: FreeIndex::default(),
            pending_by_start: BTreeMap::new(),
            pending_by_seq: BTreeMap::new(),
            pending_blocks: 0,
            dirty,
            cursor: 0,
        })
    }

    // ---- allocation -------------------------------------------------------

    /// A contiguous run of exactly `n` blocks, chosen by the policy in the
    /// crate documentation (bounded next-fit from the roving cursor, then
    /// best fit). Errors: [`AllocError::ZeroLength`] for `n == 0`,
    /// [`AllocError::NoSpace`] when no free run holds `n` blocks.
    pub fn allocate(&mut self, n: u64) -> Result<Run, AllocError> {
        if n == 0 {
            return Err(AllocError::ZeroLength);
        }
        let largest_free = self.free.largest();
        if n > largest_free {
            return Err(AllocError::NoSpace { wanted: n, largest_free });
        }
        let from = self.free.containing(self.cursor).map_or(self.cursor, |(s, _)| s);
        let extent = self
            .free
            .iter_wrapping(from)
            .take(NEXT_FIT_SCAN)
            .find(|&(_, len)| len >= n)
            .or_else(|| self.free.best_fit(n))
            .ok_or(AllocError::NoSpace { wanted: n, largest_free })?;
        Ok(self.take(extent, extent.0, n))
    }

    /// The largest run of at most `max` blocks that can be had, i.e.
    /// `min(max, largest_free_run())` blocks, placed as by
    /// [`allocate`](Self::allocate). `None` when `max == 0` or nothing is
    /// free. For callers that can split a write over several runs.
    pub fn allocate_up_to(&mut self, max: u64) -> Option<Run> {
        if max == 0 {
            return None;
        }
        if self.free.largest() >= max {
            return self.allocate(max).ok();
        }
        let extent = self.free.largest_extent()?;
        Some(self.take(extent, extent.0, extent.1))
    }

    /// Marks `at..at+n`, inside free `extent`, used; moves the cursor.
    fn take(&mut self, extent: (u64, u64), at: u64, n: u64) -> Run {
        self.free.carve(extent, at, n);
        self.bitmap.set_range(at, at + n);
        self.mark_dirty(at, at + n);
        self.cursor = at + n;
        Run::new(at, n)
    }

    /// Marks a run used that some other source (metadata replay, fsck)
    /// knows to be allocated. Every block must be free:
    /// [`AllocError::DoubleAllocation`] names the first that is not.
    pub fn mark_used(&mut self, run: Run) -> Result<(), AllocError> {
        let end = self.check_run(run)?;
        if let Some(block) = self.bitmap.find_in(run.start, end, true) {
            return Err(AllocError::DoubleAllocation { run, block });
        }
        // All bits clear, so one free extent holds the whole run.
        let Some(extent) = self.free.containing(run.start) else {
            return Err(AllocError::DoubleAllocation { run, block: run.start });
        };
        self.free.carve(extent, run.start, run.len);
        self.bitmap.set_range(run.start, end);
        self.mark_dirty(run.start, end);
        Ok(())
    }

    // ---- freeing ----------------------------------------------------------

    /// Frees a run at once: its blocks may be handed out by the next call.
    /// Only for space that no durable metadata references (see the crate
    /// documentation); otherwise use [`free_deferred`](Self::free_deferred).
    /// Every block must be used and not pending:
    /// [`AllocError::DoubleFree`] / [`AllocError::PendingFree`].
    pub fn free(&mut self, run: Run) -> Result<(), AllocError> {
        let end = self.check_freeable(run)?;
        self.release(run.start, end);
        Ok(())
    }

    /// Records that the commit numbered `commit_seq` frees `run`. The
    /// blocks stay used (on disk too) and become free at the first
    /// [`release_durable`](Self::release_durable) call with
    /// `durable_seq >= commit_seq`. Same checks as [`free`](Self::free).
    pub fn free_deferred(&mut self, run: Run, commit_seq: u64) -> Result<(), AllocError> {
        self.check_freeable(run)?;
        self.pending_by_start.insert(run.start, (run.len, commit_seq));
        self.pending_by_seq.entry(commit_seq).or_default().push(run.start);
        self.pending_blocks += run.len;
        Ok(())
    }

    /// Tells the allocator that every commit up to `durable_seq` is on
    /// stable storage: the pending frees of those commits become free.
    /// Returns the number of blocks released.
    pub fn release_durable(&mut self, durable_seq: u64) -> u64 {
        let released = match durable_seq.checked_add(1) {
            Some(first_kept) => {
                let kept = self.pending_by_seq.split_off(&first_kept);
                std::mem::replace(&mut self.pending_by_seq, kept)
            }
            None => std::mem::take(&mut self.pending_by_seq),
        };
        let mut blocks = 0;
        for start in released.into_values().flatten() {
            let Some((len, _)) = self.pending_by_start.remove(&start) else {
                continue;
            };
            self.release(start, start + len);
            blocks += len;
        }
        self.pending_blocks -= blocks;
        blocks
    }

    /// Makes the checked, used range `start..end` free.
    fn release(&mut self, start: u64, end: u64) {
        let prev_free = start > 0 && !self.bitmap.get(start - 1);
        let next_free = end < self.total_blocks() && !self.bitmap.get(end);
        self.bitmap.clear_range(start, end);
        self.free.insert_merge(start, end - start, prev_free, next_free);
        self.mark_dirty(start, end);
    }

    /// Range check: non-empty and inside the region. Returns the run's end.
    fn check_run(&self, run: Run) -> Result<u64, AllocError> {
        if run.len == 0 {
            return Err(AllocError::EmptyRun { run });
        }
        match run.start.checked_add(run.len) {
            Some(end) if end <= self.total_blocks() => Ok(end),
            _ => Err(AllocError::OutOfRange { run, total_blocks: self.total_blocks() }),
        }
    }

    /// Checks for `free` / `free_deferred`: in range, all used, none pending.
    fn check_freeable(&self, run: Run) -> Result<u64, AllocError> {
        let end = self.check_run(run)?;
        if let Some(block) = self.bitmap.find_in(run.start, end, false) {
            return Err(AllocError::DoubleFree { run, block });
        }
        let pending = |(&s, &(l, seq)): (&u64, &(u64, u64))| (s, l, seq);
        let hit = match self.pending_by_start.range(..=run.start).next_back().map(pending) {
            Some((s, l, seq)) if run.start - s < l => Some((run.start, seq)),
            _ => self.pending_by_start.range(run.start..end).next().map(pending).map(|(s, _, seq)| (s, seq)),
        };
        match hit {
            Some((block, commit_seq)) => Err(AllocError::PendingFree { run, block, commit_seq }),
            None => Ok(end),
        }
    }

    // ---- queries ----------------------------------------------------------

    /// Number of blocks covered.
    pub fn total_blocks(&self) -> u64 {
        self.bitmap.len()
    }

    /// Bits (blocks) per persisted chunk.
    pub fn bits_per_chunk(&self) -> u32 {
        self.bits_per_chunk
    }

    /// Blocks that may be allocated now.
    pub fn free_blocks(&self) -> u64 {
        self.free.free_blocks()
    }

    /// Blocks in use, not counting pending frees:
    /// `total_blocks() - free_blocks() - pending_free_blocks()`.
    pub fn used_blocks(&self) -> u64 {
        self.total_blocks() - self.free_blocks() - self.pending_blocks
    }

    /// Blocks freed by commits not yet reported durable.
    pub fn pending_free_blocks(&self) -> u64 {
        self.pending_blocks
    }

    /// Length of the longest free run (0 when full): the largest `n` for
    /// which [`allocate`](Self::allocate) succeeds.
    pub fn largest_free_run(&self) -> u64 {
        self.free.largest()
    }

    /// Number of maximal free runs: a measure of fragmentation.
    pub fn free_run_count(&self) -> usize {
        self.free.len()
    }

    /// Whether `block`'s bit is 1 (used or pending free). `false` for a
    /// free block and for a block past the end; see
    /// [`block_state`](Self::block_state) to tell those apart.
    pub fn is_used(&self, block: u64) -> bool {
        self.bitmap.get(block)
    }

    /// The state of one block; [`AllocError::BlockOutOfRange`] past the end.
    pub fn block_state(&self, block: u64) -> Result<BlockState, AllocError> {
        if block >= self.total_blocks() {
            return Err(AllocError::BlockOutOfRange { block, total_blocks: self.total_blocks() });
        }
        if !self.bitmap.get(block) {
            return Ok(BlockState::Free);
        }
        Ok(match self.pending_by_start.range(..=block).next_back() {
            Some((&s, &(l, commit_seq))) if block - s < l => BlockState::PendingFree { commit_seq },
            _ => BlockState::Used,
        })
    }

    /// Maximal runs of 1 bits (used or pending free), in address order:
    /// the used set as persisted.
    pub fn used_runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.bitmap.runs(true).map(|(start, end)| Run::new(start, end - start))
    }

    /// Maximal free runs in address order, from the free-extent index.
    pub fn free_runs(&self) -> impl Iterator<Item = Run> + '_ {
        self.free.iter().map(|(start, len)| Run::new(start, len))
    }

    /// Pending frees in address order, each with its commit sequence.
    pub fn pending_runs(&self) -> impl Iterator<Item = (Run, u64)> + '_ {
        self.pending_by_start.iter().map(|(&start, &(len, seq))| (Run::new(start, len), seq))
    }

    /// Estimated heap bytes held: the bitmap words and the dirty set
    /// (exact) plus the free-extent and pending indexes (a fixed estimate
    /// per entry from the std B-tree node size). For an index grown by
    /// allocations and frees it is within a few percent of what a counting
    /// allocator measures; right after [`load`](Self::load), whose trees
    /// are bulk-built and packed, it overstates the index about twice
    /// (`examples/bench_alloc.rs` prints both).
    pub fn heap_bytes(&self) -> usize {
        self.bitmap.heap_bytes()
            + self.dirty.capacity() * std::mem::size_of::<u64>()
            + self.free.heap_bytes()
            + self.pending_by_start.len() * PENDING_BYTES_PER_RUN
    }

    // ---- persistence ------------------------------------------------------

    /// Number of chunks: `ceil(total_blocks / bits_per_chunk)`.
    pub fn chunk_count(&self) -> u64 {
        self.total_blocks().div_ceil(u64::from(self.bits_per_chunk))
    }

    /// Bytes of one chunk's payload: `bits_per_chunk / 8`.
    pub fn bytes_per_chunk(&self) -> usize {
        // u32 always fits in usize on the platforms we build for (>= 32 bit).
        (self.bits_per_chunk / 8) as usize
    }

    /// Chunks whose bits changed since the last
    /// [`clear_dirty`](Self::clear_dirty), ascending. All of them after
    /// [`new`](Self::new), none after [`load`](Self::load).
    pub fn dirty_chunks(&self) -> impl Iterator<Item = u64> + '_ {
        let count = self.chunk_count();
        (0u64..)
            .zip(self.dirty.iter())
            .flat_map(|(w, &word)| {
                let mut word = word;
                std::iter::from_fn(move || {
                    if word == 0 {
                        return None;
                    }
                    let bit = word.trailing_zeros();
                    word &= word - 1;
                    Some(w * 64 + u64::from(bit))
                })
            })
            .take_while(move |&c| c < count)
    }

    /// Forgets which chunks are dirty (call once they are written).
    pub fn clear_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|w| *w = 0);
    }

    fn mark_dirty(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let bpc = u64::from(self.bits_per_chunk);
        for chunk in start / bpc..=(end - 1) / bpc {
            let word = usize::try_from(chunk / 64).ok().and_then(|w| self.dirty.get_mut(w));
            if let Some(word) = word {
                *word |= 1 << (chunk % 64);
            }
        }
    }

    /// The payload of chunk `chunk`: exactly [`bytes_per_chunk`] bytes,
    /// bits past `total_blocks` zero, pending-free blocks as used.
    ///
    /// [`bytes_per_chunk`]: Self::bytes_per_chunk
    pub fn chunk_bytes(&self, chunk: u64) -> Result<Vec<u8>, AllocError> {
        let mut out = vec![0; self.bytes_per_chunk()];
        self.copy_chunk(chunk, &mut out)?;
        Ok(out)
    }

    /// Like [`chunk_bytes`](Self::chunk_bytes), into a caller's buffer
    /// (e.g. the payload area of an aligned IO buffer) of exactly
    /// `bytes_per_chunk()` bytes.
    pub fn copy_chunk(&self, chunk: u64, out: &mut [u8]) -> Result<(), AllocError> {
        let chunk_count = self.chunk_count();
        if chunk >= chunk_count {
            return Err(AllocError::NoSuchChunk { chunk, chunk_count });
        }
        if out.len() != self.bytes_per_chunk() {
            return Err(AllocError::ChunkLength { chunk, expected: self.bytes_per_chunk(), actual: out.len() });
        }
        let first_byte = chunk * u64::from(self.bits_per_chunk / 8);
        self.bitmap.read_bytes(first_byte, out);
        Ok(())
    }

    /// Rebuilds an allocator from its persisted chunks, in order
    /// (`chunk_count()` of them for this geometry, each `bits_per_chunk / 8`
    /// bytes). Every 1 bit is used, every 0 bit free; nothing is pending,
    /// nothing dirty, the cursor at block 0. Malformed input is an error,
    /// never a panic: [`AllocError::ChunkLength`],
    /// [`AllocError::MissingChunks`], [`AllocError::TooManyChunks`],
    /// [`AllocError::BitPastEnd`], or a geometry error as in `new`.
    pub fn load<'a, I>(total_blocks: u64, bits_per_chunk: u32, chunks: I) -> Result<Self, AllocError>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut a = Self::empty(total_blocks, bits_per_chunk)?;
        let expected = a.chunk_count();
        let chunk_len = a.bytes_per_chunk();
        let mut chunks = chunks.into_iter();
        for chunk in 0..expected {
            let Some(bytes) = chunks.next() else {
                return Err(AllocError::MissingChunks { expected, actual: chunk });
            };
            if bytes.len() != chunk_len {
                return Err(AllocError::ChunkLength { chunk, expected: chunk_len, actual: bytes.len() });
            }
            let first_byte = chunk * u64::from(bits_per_chunk / 8);
            check_tail(chunk, first_byte, bytes, total_blocks)?;
            a.bitmap.or_bytes(first_byte, bytes);
        }
        if chunks.next().is_some() {
            return Err(AllocError::TooManyChunks { expected });
        }
        a.free = FreeIndex::from_sorted(a.bitmap.runs(false).map(|(s, e)| (s, e - s)));
        Ok(a)
    }

    // ---- self-check -------------------------------------------------------

    /// Checks every internal invariant, O(total_blocks / 64 + runs):
    /// the free-extent index is exactly the maximal runs of 0 bits, its
    /// two halves agree, counters match, pending runs are disjoint, all 1
    /// in the bitmap and listed under their sequence, bits past the end are
    /// 0. Returns the first violation found. For tests and debug
    /// assertions; it never changes anything.
    pub fn check_invariants(&self) -> Result<(), String> {
        let total = self.total_blocks();
        if self.bitmap.has_bits_past_end() {
            return Err("bits set past the end of the region".into());
        }
        // Index by start == maximal zero runs of the bitmap.
        let mut zero_runs = self.bitmap.runs(false);
        for (start, len) in self.free.iter() {
            match zero_runs.next() {
                Some((s, e)) if s == start && e - s == len => {}
                other => return Err(format!("free index has {}, bitmap has zero run {other:?}", Run::new(start, len))),
            }
        }
        if let Some(run) = zero_runs.next() {
            return Err(format!("bitmap zero run {run:?} missing from the free index"));
        }
        // Index by size == index by start.
        if self.free.iter_by_size().count() != self.free.len()
            || self.free.iter_by_size().any(|(len, start)| self.free.len_at(start) != Some(len))
        {
            return Err("free index by size disagrees with free index by start".into());
        }
        let free_sum: u64 = self.free.iter().map(|(_, l)| l).sum();
        if free_sum != self.free_blocks() {
            return Err(format!("free counter {} != sum of free runs {free_sum}", self.free_blocks()));
        }
        // Pending: disjoint, all ones, listed by sequence, counted.
        let mut prev_end = 0;
        let mut pending_sum = 0;
        for (run, seq) in self.pending_runs() {
            if run.start < prev_end || run.len == 0 || run.end() > total {
                return Err(format!("pending run {run} overlaps, is empty or out of range"));
            }
            if let Some(b) = self.bitmap.find_in(run.start, run.end(), false) {
                return Err(format!("pending run {run} has free block {b}"));
            }
            if !self.pending_by_seq.get(&seq).is_some_and(|starts| starts.contains(&run.start)) {
                return Err(format!("pending run {run} not listed under commit {seq}"));
            }
            prev_end = run.end();
            pending_sum += run.len;
        }
        let listed: usize = self.pending_by_seq.values().map(Vec::len).sum();
        if listed != self.pending_by_start.len() {
            return Err(format!("{listed} pending runs by sequence, {} by start", self.pending_by_start.len()));
        }
        if pending_sum != self.pending_blocks {
            return Err(format!("pending counter {} != sum of pending runs {pending_sum}", self.pending_blocks));
        }
        let ones = self.bitmap.count_ones();
        if ones + self.free_blocks() != total {
            return Err(format!("{ones} used bits + {} free blocks != {total} blocks", self.free_blocks()));
        }
        if self.cursor > total {
            return Err(format!("cursor {} past the end {total}", self.cursor));
        }
        Ok(())
    }
}

/// Rejects a set bit in `bytes` (starting at image byte `first_byte`) that
/// stands for a block at or past `total_blocks`.
fn check_tail(chunk: u64, first_byte: u64, bytes: &[u8], total_blocks: u64) -> Result<(), AllocError> {
    // Index of the first byte holding a bit >= total_blocks.
    let first_bad_byte = total_blocks / 8;
    let skip = first_bad_byte.saturating_sub(first_byte);
    let Ok(skip) = usize::try_from(skip) else {
        return Ok(());
    };
    for (k, &b) in (first_byte + skip as u64..).zip(bytes.iter().skip(skip)) {
        let first_bit = k * 8;
        // Bits of this byte that stand for blocks >= total_blocks.
        let allowed = total_blocks.saturating_sub(first_bit).min(8);
        let bad = if allowed >= 8 { 0 } else { b >> allowed };
        if bad != 0 {
            return Err(AllocError::BitPastEnd {
                chunk,
                block: first_bit + allowed + u64::from(bad.trailing_zeros()),
                total_blocks,
            });
        }
    }
    Ok(())
}
