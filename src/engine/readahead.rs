//! # Read-ahead: which reads are sequential, and how far to read ahead
//!
//! Owns the per-file read cursor (where the last read of each file ended)
//! and the decision "this read continues a sequential stream". `data.rs`
//! `read` asks [`sequential`] once per call; for a sequential read it
//! fetches the extent(s) whole into the extent cache and, when that
//! missed, the next [`READ_AHEAD_EXTENTS`] extents of the file in parallel
//! with it, so the reads that follow cost no IO. A read that is not
//! sequential takes the partial path (`partial.rs`) instead.
//!
//! Never does IO, never holds data, never blocks: it is a bounded map of
//! cursors, and a wrong guess costs only speed (a needless prefetch, or a
//! partial read where a whole one would have been cached).

use super::state::{Ino, EXTENT_SIZE};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Extents fetched ahead of a sequential read that missed the cache (the
/// extent cache, `PARTIAL_READ_CACHE`, must hold them plus the current one).
pub const READ_AHEAD_EXTENTS: usize = 7;

/// Files whose cursor is kept; beyond this the map is cleared (a new
/// stream then starts as "not sequential" once).
const MAX_STREAMS: usize = 4096;

/// (pool UUID, inode) → end offset of the last read.
static CURSORS: LazyLock<Mutex<HashMap<(u128, Ino), u64>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Record a read of `[offset, end)` of file `ino` of pool `pool` and say
/// whether it continues a sequential stream: it starts the file, or starts
/// within one extent of where the previous read of the file ended
/// (concurrent FUSE requests of one stream arrive slightly out of order).
pub(crate) fn sequential(pool: u128, ino: Ino, offset: u64, end: u64) -> bool {
    let mut c = CURSORS.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= MAX_STREAMS && !c.contains_key(&(pool, ino)) {
        c.clear();
    }
    let last = c.insert((pool, ino), end);
    offset == 0 || last.is_some_and(|l| offset.abs_diff(l) <= EXTENT_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_told_from_random_reads() {
        let pool = 0x5eed_u128 << 64;
        assert!(sequential(pool, 7, 0, 4096), "a read from the start is sequential");
        assert!(sequential(pool, 7, 4096, 8192));
        assert!(!sequential(pool, 7, 500 << 20, (500 << 20) + 4096), "a jump is not");
        assert!(!sequential(pool, 7, 100 << 20, (100 << 20) + 4096));
        assert!(sequential(pool, 7, (100 << 20) + 4096, (100 << 20) + 8192));
        assert!(!sequential(pool, 8, 3 << 20, (3 << 20) + 10), "another file has its own cursor");
    }
}
