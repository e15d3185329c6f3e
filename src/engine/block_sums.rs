//! # Block sums: per-4 KiB checksums of a fragment's payload
//!
//! Owns the engine's side of the block-sum table that `dfs_format::fragment`
//! lays out in a fragment's header block: computing the sums when a
//! fragment is written ([`header_block`]), checking a piece read back
//! against its entry ([`piece_ok`]), and a small bounded cache of parsed
//! tables ([`TableCache`]) so a partial read of an extent already touched
//! costs no header IO.
//!
//! Never does IO and never decides what to read: that is `partial.rs`. A
//! table only ever says "this piece is what was written"; a piece that does
//! not match is never returned (the caller falls back to the whole-extent
//! read, which verifies the extent's full BLAKE3).

use dfs_format::fragment::{FragmentKind, BLOCK_SUM_LEN, BLOCK_SUM_PIECE};
use dfs_format::{BlockSums, FragmentHeader};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// The table of `payload` (exactly `payload_len` bytes).
pub(crate) fn compute(payload: &[u8]) -> BlockSums {
    BlockSums::new(payload.chunks(BLOCK_SUM_PIECE).map(sum).collect())
}

/// The entry of one piece: the first 8 bytes of its plain BLAKE3.
fn sum(piece: &[u8]) -> [u8; BLOCK_SUM_LEN] {
    let mut out = [0u8; BLOCK_SUM_LEN];
    out.copy_from_slice(&blake3::hash(piece).as_bytes()[..BLOCK_SUM_LEN]);
    out
}

/// Whether `bytes` (piece `piece` of the payload, short only for the last
/// piece) matches its entry. A table without that entry matches nothing.
pub(crate) fn piece_ok(sums: &BlockSums, piece: usize, bytes: &[u8]) -> bool {
    sums.get(piece).is_some_and(|s| *s == sum(bytes))
}

/// The bytes at the start of the header block of a fragment whose payload
/// is `payload` (at least `header.payload_len` bytes, zero padding after is
/// ignored): header and block-sum table for an extent fragment, the bare
/// header for anything else (checkpoint copies, whose payloads may exceed
/// what a table covers).
pub(crate) fn header_block(header: &FragmentHeader, payload: &[u8]) -> Vec<u8> {
    let len = header.payload_len as usize;
    if header.kind == FragmentKind::Extent && payload.len() >= len {
        if let Ok(b) = header.encode_with_sums(&compute(&payload[..len])) {
            return b;
        }
    }
    header.encode().to_vec()
}

/// Which fragment copy a table belongs to: extent id, fragment index, and
/// its location (member, data block). Fragments are immutable and a
/// repaired one lands at a new location, so an entry never goes stale.
pub(crate) type TableKey = (u128, u16, u32, u64);

/// Bytes of table entries kept (a 1 MiB replica's table is 2 KiB, a 4+2
/// shard's 512 bytes: 8 MiB is the tables of 4 GiB of replicated file, or
/// 16 GiB of 4+2).
pub const TABLE_CACHE_BYTES: usize = 8 << 20;

/// Bytes one cached entry is counted for (its entries plus bookkeeping).
fn cost(t: &Option<BlockSums>) -> usize {
    64 + t.as_ref().map_or(0, |s| s.len() * BLOCK_SUM_LEN)
}

/// Parsed tables, `None` for a fragment written without one (so old
/// fragments cost one header read, not one per partial read). Oldest
/// entries are dropped first, to stay within [`TABLE_CACHE_BYTES`].
#[derive(Default)]
pub(crate) struct TableCache {
    inner: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    map: HashMap<TableKey, Arc<Option<BlockSums>>>,
    order: VecDeque<TableKey>,
    bytes: usize,
}

impl TableCache {
    pub(crate) fn get(&self, key: &TableKey) -> Option<Arc<Option<BlockSums>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).map.get(key).cloned()
    }

    pub(crate) fn insert(&self, key: TableKey, table: Arc<Option<BlockSums>>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let t = &mut *g;
        t.bytes += cost(&table);
        match t.map.insert(key, table) {
            Some(old) => t.bytes -= cost(&old),
            None => t.order.push_back(key),
        }
        while t.bytes > TABLE_CACHE_BYTES {
            let Some(old) = t.order.pop_front() else { break };
            if let Some(v) = t.map.remove(&old) {
                t.bytes -= cost(&v);
            }
        }
    }

    /// Forget one table (its fragment turned out bad).
    pub(crate) fn remove(&self, key: &TableKey) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let t = &mut *g;
        if let Some(v) = t.map.remove(key) {
            t.bytes -= cost(&v);
            t.order.retain(|k| k != key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cover_every_piece_and_catch_one_flipped_byte() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let sums = compute(&payload);
        assert_eq!(sums.len(), 3);
        for (i, piece) in payload.chunks(BLOCK_SUM_PIECE).enumerate() {
            assert!(piece_ok(&sums, i, piece));
            let mut bad = piece.to_vec();
            bad[piece.len() / 2] ^= 0x10;
            assert!(!piece_ok(&sums, i, &bad));
        }
        assert!(!piece_ok(&sums, 3, &payload[..10]));
    }

    #[test]
    fn cache_is_bounded_and_drops_the_oldest() {
        let c = TableCache::default();
        let table = Arc::new(Some(BlockSums::new(vec![[1; 8]; 256])));
        let fits = (TABLE_CACHE_BYTES / cost(&table)) as u128;
        for i in 0..fits + 10 {
            c.insert((i, 0, 0, 0), table.clone());
        }
        assert!(c.get(&(0, 0, 0, 0)).is_none());
        assert!(c.get(&(fits + 9, 0, 0, 0)).is_some());
        assert!(c.get(&(11, 0, 0, 0)).is_some());
        assert!(c.inner.lock().unwrap().bytes <= TABLE_CACHE_BYTES);
        c.remove(&(fits + 9, 0, 0, 0));
        assert!(c.get(&(fits + 9, 0, 0, 0)).is_none());
        assert_eq!(c.inner.lock().unwrap().bytes, (fits as usize - 1) * cost(&table));
    }
}
