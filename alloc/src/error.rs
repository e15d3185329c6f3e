//! The one error type of the allocator.
//!
//! Every variant is a caller mistake or a damaged bitmap, never an IO failure
//! (this crate does none). Messages name the run, the block or the chunk at
//! fault so that an engine log line is enough to find it.

use crate::Run;

/// What went wrong in an allocator call.
///
/// The allocator's state is unchanged whenever a call returns an error: every
/// check is made before the first bit is touched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    /// `total_blocks` / `bits_per_chunk` do not describe a usable bitmap.
    #[error("invalid allocator geometry: {total_blocks} blocks, {bits_per_chunk} bits per chunk: {reason}")]
    InvalidGeometry {
        /// Number of blocks asked for.
        total_blocks: u64,
        /// Bits per chunk asked for.
        bits_per_chunk: u32,
        /// Which rule was broken.
        reason: &'static str,
    },

    /// The in-memory bitmap for this many blocks could not be reserved.
    #[error("cannot reserve memory for a bitmap of {total_blocks} blocks")]
    TooLarge {
        /// Number of blocks asked for.
        total_blocks: u64,
    },

    /// An allocation of zero blocks was requested.
    #[error("allocation of 0 blocks requested")]
    ZeroLength,

    /// A run of length 0 was passed to `mark_used`, `free` or `free_deferred`.
    #[error("run {run} is empty")]
    EmptyRun {
        /// The run given.
        run: Run,
    },

    /// No free run of `wanted` contiguous blocks exists.
    #[error("no space: wanted {wanted} contiguous blocks, largest free run is {largest_free}")]
    NoSpace {
        /// Length asked for.
        wanted: u64,
        /// Longest free run at the time of the call.
        largest_free: u64,
    },

    /// The run reaches past the last block (or its end overflows `u64`).
    #[error("run {run} is out of range: the region has {total_blocks} blocks")]
    OutOfRange {
        /// The run given.
        run: Run,
        /// Blocks covered by the allocator.
        total_blocks: u64,
    },

    /// A single block past the last one was named.
    #[error("block {block} is out of range: the region has {total_blocks} blocks")]
    BlockOutOfRange {
        /// The block given.
        block: u64,
        /// Blocks covered by the allocator.
        total_blocks: u64,
    },

    /// `mark_used` on a run some block of which is already used (or waiting
    /// for a deferred free to become durable).
    #[error("double allocation: block {block} of run {run} is already used")]
    DoubleAllocation {
        /// The run given.
        run: Run,
        /// First block of the run that was already used.
        block: u64,
    },

    /// `free` or `free_deferred` on a run some block of which is already free.
    #[error("double free: block {block} of run {run} is already free")]
    DoubleFree {
        /// The run given.
        run: Run,
        /// First block of the run that was already free.
        block: u64,
    },

    /// `free` or `free_deferred` on a run some block of which was already
    /// handed to `free_deferred` and is waiting for its commit to be durable.
    #[error("double free: block {block} of run {run} is already freed by commit {commit_seq}, not yet durable")]
    PendingFree {
        /// The run given.
        run: Run,
        /// First block of the run already pending.
        block: u64,
        /// Commit whose durability the earlier free waits for.
        commit_seq: u64,
    },

    /// A chunk index at or past `chunk_count()`.
    #[error("bitmap chunk {chunk} does not exist: there are {chunk_count} chunks")]
    NoSuchChunk {
        /// The chunk given.
        chunk: u64,
        /// Chunks of this allocator.
        chunk_count: u64,
    },

    /// A chunk buffer (to fill or to load) has the wrong length.
    #[error("bitmap chunk {chunk} is {actual} bytes, expected {expected}")]
    ChunkLength {
        /// Index of the chunk.
        chunk: u64,
        /// `bits_per_chunk / 8`.
        expected: usize,
        /// Length given.
        actual: usize,
    },

    /// `load` got fewer chunks than the geometry needs.
    #[error("bitmap has {actual} chunks, expected {expected}")]
    MissingChunks {
        /// `chunk_count()` of the geometry.
        expected: u64,
        /// Chunks given.
        actual: u64,
    },

    /// `load` got more chunks than the geometry needs.
    #[error("bitmap has more than the expected {expected} chunks")]
    TooManyChunks {
        /// `chunk_count()` of the geometry.
        expected: u64,
    },

    /// `load` found a used bit for a block that does not exist (the tail of
    /// the last chunk must be zero).
    #[error("bitmap chunk {chunk} marks block {block} used, past the end of the region ({total_blocks} blocks)")]
    BitPastEnd {
        /// Chunk holding the bit.
        chunk: u64,
        /// Block number the bit would stand for.
        block: u64,
        /// Blocks covered by the allocator.
        total_blocks: u64,
    },
}
