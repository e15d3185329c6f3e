//! # Read-ahead: which reads are sequential, and fetching ahead of them
//!
//! Owns the per-file read cursor (where the last read of each file ended),
//! the decision "this read continues a sequential stream", and the
//! background fetch of the extents after it. `data.rs` `read` asks
//! [`sequential`] once per call; for a sequential read it reads the
//! extent(s) whole (into the extent cache when in part) and calls
//! [`Pool::read_ahead`] for each of the next [`READ_AHEAD_EXTENTS`]
//! extents of the file, which queues a job on the worker pool that reads
//! them, each from its fragments in parallel, and puts them in the extent
//! cache. A read of an extent being fetched waits for that fetch
//! ([`wait_for`]) instead of reading it twice. A read that is not
//! sequential takes the partial path (`partial.rs`) instead.
//!
//! A fetch only takes the fast path (the K data shards, or one slice of
//! the extent from each usable replica so that as many requests are in
//! flight; headers checked as `read_fragment` does, then the extent's
//! full BLAKE3): it never
//! falls back, repairs, counts or logs faults. Whatever goes wrong, it
//! just caches nothing, and the reader's own read later does all that. It
//! never caches a byte that failed the extent's BLAKE3, and holds no
//! reference to the pool (jobs outlive the call): only the member devices.
//! A wrong guess costs only speed.

use super::data::{cache_extent, cached_extent, give_buf, header_mismatch, par_map, take_buf, workers};
use super::pool::{Meta, Pool};
use super::redundancy;
use super::state::{Extent, Ino, MemberState, EXTENT_SIZE};
use crate::device::{AlignedBuf, Device, ReadReq};
use dfs_format::{FragmentHeader, Policy};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::Duration;

/// Extents fetched ahead of a sequential read that missed the cache (the
/// extent cache, `PARTIAL_READ_CACHE`, must hold them plus the current one).
pub const READ_AHEAD_EXTENTS: usize = 7;

/// Extents being fetched at once, all streams together (bounds the memory
/// of fetches in flight to this many extents).
pub const MAX_FETCHES: usize = 24;

/// Replica slices start on multiples of this (the largest block size, so
/// every member can read them directly).
const SLICE_ALIGN: usize = dfs_format::MAX_BLOCK_SIZE as usize;

/// Longest a reader waits for a fetch of the extent it wants (then reads
/// it itself).
const WAIT_LIMIT: Duration = Duration::from_secs(5);

/// Extents being fetched right now, and a condvar signalled when one ends.
static FETCHING: Mutex<Vec<u128>> = Mutex::new(Vec::new());
static FETCHED: Condvar = Condvar::new();

/// Files whose cursor is kept; beyond this the map is cleared (a new
/// stream then starts as "not sequential" once).
const MAX_STREAMS: usize = 4096;

/// (pool UUID, inode) → the file's [`Cursor`].
static CURSORS: LazyLock<Mutex<HashMap<(u128, Ino), Cursor>>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// Where the last read of a file ended, and how many reads in a row
/// started near where their predecessor ended.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    end: u64,
    near: u8,
}

/// Reads in a row that must start near their predecessor's end before a
/// stream counts as sequential (a read from offset 0 counts at once).
/// One is not enough: a random read lands within an extent of the
/// previous one's end with odds 2 MiB / file size (1 in 256 on a 512 MiB
/// file), and each such false stream fetched 8 extents whole — at QD32
/// 4 KiB random reads through FUSE that was most of the device traffic
/// (32 KiB read per 4 KiB asked). Two in a row: odds 1 in 65 536.
const NEAR_IN_A_ROW: u8 = 2;

/// Record a read of `[offset, end)` of file `ino` of pool `pool` and say
/// whether it continues a sequential stream: it starts the file, or it and
/// the read before it ([`NEAR_IN_A_ROW`]) each started within one extent of
/// where the previous read of the file ended (concurrent FUSE requests of
/// one stream arrive slightly out of order, hence "within", not "at").
pub(crate) fn sequential(pool: u128, ino: Ino, offset: u64, end: u64) -> bool {
    let mut c = CURSORS.lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= MAX_STREAMS && !c.contains_key(&(pool, ino)) {
        c.clear();
    }
    let near = match c.get(&(pool, ino)) {
        Some(last) if offset.abs_diff(last.end) <= EXTENT_SIZE => last.near.saturating_add(1),
        _ => 0,
    };
    c.insert((pool, ino), Cursor { end, near });
    offset == 0 || near >= NEAR_IN_A_ROW
}

/// Wait until no fetch of extent `id` is in flight (at most [`WAIT_LIMIT`]).
pub(crate) fn wait_for(id: u128) {
    let mut f = FETCHING.lock().unwrap_or_else(|p| p.into_inner());
    let deadline = std::time::Instant::now() + WAIT_LIMIT;
    while f.contains(&id) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        f = FETCHED.wait_timeout(f, left).unwrap_or_else(|p| p.into_inner()).0;
    }
}

/// Claim extent `id` for a fetch: false when it is being fetched already
/// or too many are.
fn claim(id: u128) -> bool {
    let mut f = FETCHING.lock().unwrap_or_else(|p| p.into_inner());
    if f.contains(&id) || f.len() >= MAX_FETCHES {
        return false;
    }
    f.push(id);
    true
}

fn release(id: u128) {
    FETCHING.lock().unwrap_or_else(|p| p.into_inner()).retain(|&x| x != id);
    FETCHED.notify_all();
}

/// The fetches a pool has in flight; dropping it (with the pool) waits
/// for them (at most [`WAIT_LIMIT`]), so no fetch touches a member device
/// after its pool is gone (an exclusive reopen would find it busy).
#[derive(Debug, Default)]
pub(crate) struct Fetches(Arc<(Mutex<usize>, Condvar)>);

/// One fetch counted in a [`Fetches`], until dropped.
struct InFlight(Arc<(Mutex<usize>, Condvar)>);

impl Fetches {
    fn start(&self) -> InFlight {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        InFlight(self.0.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.0 .1.notify_all();
    }
}

impl Drop for Fetches {
    fn drop(&mut self) {
        let (n, cv) = &*self.0;
        let mut n = n.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = std::time::Instant::now() + WAIT_LIMIT;
        while *n > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            n = cv.wait_timeout(n, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// One fragment to fetch: where it is and which it is.
struct Source {
    dev: Arc<dyn Device>,
    /// Where the fragment (its header block) starts on `dev`.
    offset: u64,
    bs: usize,
    index: usize,
    /// The payload bytes to take from it: `from` is block aligned.
    from: usize,
    to: usize,
}

/// The fetch of one extent, owning all it needs.
struct Fetch {
    pool: uuid::Uuid,
    e: Extent,
    sources: Vec<Source>,
}

impl Pool {
    /// Fetch extent `e` into the extent cache in the background, unless it
    /// is cached or being fetched, or its fast-path fragments are not all
    /// on members that are present and not failed. `m` is the caller's
    /// `meta` guard (nothing here waits while it is held).
    pub(crate) fn read_ahead(&self, m: &Meta, e: &Extent) {
        if cached_extent(e.id).is_some() {
            return;
        }
        let source = |index: usize, from: usize, to: usize| -> Option<Source> {
            let loc = e.frags.get(index)?;
            let mem = self.members.get(loc.member as usize)?.as_ref()?;
            if m.state.members.get(loc.member as usize).is_some_and(|r| r.state == MemberState::Failed) {
                return None;
            }
            let bs = mem.layout.block_size as usize;
            Some(Source { dev: mem.dev.clone(), offset: mem.layout.data_offset(loc.block), bs, index, from, to })
        };
        let n = e.frags.len();
        let len = e.len as usize;
        let sources: Option<Vec<Source>> = match e.policy() {
            // One slice of the extent from each usable replica, in
            // parallel (as many requests in flight as erasure's shards),
            // starting with the replica a partial read would use.
            Policy::Replication { .. } => {
                let first = (e.id % n.max(1) as u128) as usize;
                let usable: Vec<usize> =
                    (0..n).map(|k| (first + k) % n).filter(|&i| source(i, 0, len).is_some()).collect();
                let chunk = len.div_ceil(usable.len().max(1)).next_multiple_of(SLICE_ALIGN);
                let slices: Option<Vec<Source>> = usable
                    .iter()
                    .enumerate()
                    .map(|(j, &i)| (i, j * chunk, ((j + 1) * chunk).min(len)))
                    .filter(|(_, from, to)| from < to)
                    .map(|(i, from, to)| source(i, from, to))
                    .collect();
                slices.filter(|v| !v.is_empty())
            }
            Policy::Erasure { data, .. } => {
                let s = redundancy::shard_len(e.policy(), e.len) as usize;
                (0..data as usize).map(|i| source(i, 0, s)).collect()
            }
        };
        let Some(sources) = sources else { return };
        if !claim(e.id) {
            return;
        }
        let fetch = Fetch { pool: self.uuid, e: e.clone(), sources };
        let counted = self.fetches.start();
        workers::submit(Box::new(move || {
            let id = fetch.e.id;
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fetch.run()));
            release(id);
            drop(counted);
        }));
    }
}

impl Fetch {
    /// Read the fragments in parallel, check their headers, assemble the
    /// extent, check its BLAKE3, cache it. Any failure: cache nothing.
    fn run(self) {
        let Fetch { pool, e, sources } = self;
        let policy = e.policy();
        let payload_len = redundancy::shard_len(policy, e.len) as usize;
        // Header block and the slice, in one batch per fragment.
        let bufs: Vec<Option<AlignedBuf>> = par_map(&sources, |s| {
            if s.to > payload_len || s.from % s.bs != 0 {
                return None;
            }
            let mut hdr = take_buf(s.bs);
            let mut body = take_buf((s.to - s.from).div_ceil(s.bs) * s.bs);
            let io = s.dev.read_batch(&mut [
                ReadReq { offset: s.offset, buf: &mut hdr },
                ReadReq { offset: s.offset + (s.bs + s.from) as u64, buf: &mut body },
            ]);
            let ok = io.is_ok()
                && FragmentHeader::decode(&hdr).is_ok_and(|h| header_mismatch(pool, &e, s.index, &h).is_none());
            give_buf(hdr);
            if ok {
                Some(body)
            } else {
                give_buf(body);
                None
            }
        });
        if bufs.iter().all(Option::is_some) {
            let mut out = take_buf(e.len as usize);
            let assembled = match policy {
                Policy::Replication { .. } => {
                    for (s, b) in sources.iter().zip(bufs.iter().flatten()) {
                        out[s.from..s.to].copy_from_slice(&b[..s.to - s.from]);
                    }
                    sources.iter().map(|s| s.to - s.from).sum::<usize>() == out.len()
                }
                Policy::Erasure { .. } => {
                    let mut views: Vec<Option<&[u8]>> = vec![None; e.frags.len()];
                    for (s, b) in sources.iter().zip(&bufs) {
                        views[s.index] = b.as_ref().map(|b| &b[..payload_len]);
                    }
                    redundancy::decode_into(policy, e.len, &views, &mut out).is_ok()
                }
            };
            let good = assembled && blake3::hash(&out).as_bytes() == &e.blake3;
            if good {
                cache_extent(e.id, Arc::new(out));
            } else {
                give_buf(out);
            }
        }
        for b in bufs.into_iter().flatten() {
            give_buf(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_told_from_random_reads() {
        let pool = 0x5eed_u128 << 64;
        assert!(sequential(pool, 7, 0, 4096), "a read from the start is sequential");
        assert!(!sequential(pool, 7, 4096, 8192), "one near read is not a stream yet");
        assert!(sequential(pool, 7, 8192, 12288), "two in a row are");
        assert!(!sequential(pool, 7, 500 << 20, (500 << 20) + 4096), "a jump is not");
        assert!(!sequential(pool, 7, 100 << 20, (100 << 20) + 4096));
        assert!(!sequential(pool, 7, (100 << 20) + 4096, (100 << 20) + 8192), "a random read landing near the last");
        assert!(sequential(pool, 7, (100 << 20) + 8192, (100 << 20) + 12288), "a stream resumed mid-file");
        // Out of order within an extent, as multi-threaded FUSE delivers a stream.
        assert!(sequential(pool, 7, (100 << 20) + 4096, (100 << 20) + 8192));
        assert!(!sequential(pool, 8, 3 << 20, (3 << 20) + 10), "another file has its own cursor");
    }
}
