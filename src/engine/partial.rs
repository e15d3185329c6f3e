//! # Partial reads: a few 4 KiB pieces of an extent instead of all of it
//!
//! Owns [`Pool::read_partial`]: serve bytes `[within, within + len)` of one
//! committed extent by reading only the 4 KiB pieces of one fragment per
//! part of the range (one replica, or the data shards covering it; see
//! `redundancy::shard_len`: data shard `i` holds extent bytes `i · s ..`)
//! and checking each against the fragment's block-sum table
//! (`block_sums.rs`). The table comes from the fragment's header block,
//! read in the same batch as the pieces the first time and cached after.
//!
//! It must never return a byte it has not verified, never decode, never
//! repair and never log a fault as final: every IO error, header mismatch,
//! missing table or piece mismatch is a [`Miss`], and the caller (`data.rs`
//! `read`) then takes the whole-extent path, which verifies the extent's
//! full BLAKE3, reconstructs from other fragments and lazily repairs (a
//! [`Miss::Bad`] fragment is handed to it as already known bad, so it is
//! repaired even when the whole-extent read would not have touched it).

use super::block_sums::{self, TableCache, TableKey};
use super::data::FragFault;
use super::pool::Pool;
use super::redundancy;
use super::state::{Extent, MemberState};
use crate::device::{AlignedBuf, ReadReq};
use dfs_format::fragment::BLOCK_SUM_PIECE;
use dfs_format::{BlockSums, FragmentHeader, Policy};
use std::sync::{Arc, LazyLock};

/// Parsed block-sum tables of every pool of the process (keys carry the
/// extent UUID, never reused, so pools cannot collide).
static TABLES: LazyLock<TableCache> = LazyLock::new(TableCache::default);

/// Why a partial read did not serve the range.
#[derive(Debug)]
pub(crate) enum Miss {
    /// Nothing known to be wrong (no table, member missing, range not
    /// worth it): read the whole extent.
    Unavailable,
    /// Fragment `.0` is bad: read the whole extent without it and repair it.
    Bad(usize, FragFault),
}

impl Pool {
    /// Fill `dst` with extent bytes `[within, within + dst.len())` of `e`
    /// from verified 4 KiB pieces. See the module doc.
    pub(crate) fn read_partial(&self, e: &Extent, within: usize, dst: &mut [u8]) -> Result<(), Miss> {
        let end = within + dst.len();
        if dst.is_empty() || end > e.len as usize {
            return Err(Miss::Unavailable);
        }
        let policy = e.policy();
        let n = e.frags.len();
        let s = redundancy::shard_len(policy, e.len) as usize;
        let failed: Vec<bool> = {
            let m = self.meta();
            e.frags
                .iter()
                .map(|f| m.state.members.get(f.member as usize).is_some_and(|r| r.state == MemberState::Failed))
                .collect()
        };
        match policy {
            Policy::Replication { .. } => {
                // One replica per extent (spreads random reads over the
                // members, and keeps one cached table per extent); the
                // others only if that one is absent.
                let first = (e.id % n.max(1) as u128) as usize;
                for r in (0..n).map(|k| (first + k) % n) {
                    if failed[r] {
                        continue;
                    }
                    match self.read_pieces(e, r, within, dst) {
                        Err(Miss::Unavailable) => continue,
                        other => return other,
                    }
                }
                Err(Miss::Unavailable)
            }
            Policy::Erasure { data, .. } => {
                let k = data as usize;
                let mut pos = within;
                while pos < end {
                    let shard = pos / s;
                    let stop = end.min((shard + 1) * s);
                    if shard >= k || failed[shard] {
                        return Err(Miss::Unavailable);
                    }
                    self.read_pieces(e, shard, pos - shard * s, &mut dst[pos - within..stop - within])?;
                    pos = stop;
                }
                Ok(())
            }
        }
    }

    /// Payload bytes `[from, from + dst.len())` of fragment `index` of `e`,
    /// verified piece by piece.
    fn read_pieces(&self, e: &Extent, index: usize, from: usize, dst: &mut [u8]) -> Result<(), Miss> {
        let loc = e.frags.get(index).ok_or(Miss::Unavailable)?;
        let mem = self.members.get(loc.member as usize).and_then(|m| m.as_ref()).ok_or(Miss::Unavailable)?;
        let bs = mem.layout.block_size as usize;
        let payload_len = redundancy::shard_len(e.policy(), e.len) as usize;
        let to = from + dst.len();
        if to > payload_len || (loc.blocks as usize).saturating_sub(1) * bs < payload_len {
            return Err(Miss::Unavailable);
        }
        // The pieces covering the range, widened to whole device blocks.
        let (p0, p1) = (from / BLOCK_SUM_PIECE, to.div_ceil(BLOCK_SUM_PIECE));
        let start = (p0 * BLOCK_SUM_PIECE) / bs * bs;
        let stop = (p1 * BLOCK_SUM_PIECE).min(payload_len).div_ceil(bs) * bs;
        let frag_at = mem.layout.data_offset(loc.block);
        let key: TableKey = (e.id, index as u16, loc.member, loc.block);
        let cached = TABLES.get(&key);
        let mut hdr = AlignedBuf::zeroed(if cached.is_some() { 0 } else { bs });
        let mut buf = AlignedBuf::zeroed(stop - start);
        let io = {
            let mut reqs = Vec::with_capacity(2);
            if cached.is_none() {
                reqs.push(ReadReq { offset: frag_at, buf: &mut hdr });
            }
            reqs.push(ReadReq { offset: frag_at + (bs + start) as u64, buf: &mut buf });
            mem.dev.read_batch(&mut reqs)
        };
        if let Err(err) = io {
            return Err(Miss::Bad(index, FragFault::Io(err.to_string())));
        }
        let table = match cached {
            Some(t) => t,
            None => {
                let t = match FragmentHeader::decode_with_sums(&hdr) {
                    Ok((h, sums)) => match self.header_mismatch(e, index, &h) {
                        None => sums,
                        Some(why) => return Err(Miss::Bad(index, FragFault::Corrupt(format!("header: {why}")))),
                    },
                    // A damaged header block (header or table): the
                    // fragment is rewritten by the whole-extent read's repair.
                    Err(err) => return Err(Miss::Bad(index, FragFault::Corrupt(format!("header block: {err}")))),
                };
                let t = Arc::new(t);
                TABLES.insert(key, t.clone());
                t
            }
        };
        let Some(sums) = table.as_ref() else {
            return Err(Miss::Unavailable);
        };
        check_pieces(sums, &buf, start, p0, p1, payload_len).map_err(|p| {
            TABLES.remove(&key);
            Miss::Bad(index, FragFault::Corrupt(format!("block sum mismatch in 4 KiB piece {p}")))
        })?;
        dst.copy_from_slice(&buf[from - start..to - start]);
        Ok(())
    }
}

/// Check pieces `p0..p1` held in `buf` (payload bytes from `start`);
/// the first piece that does not match is the error.
fn check_pieces(
    sums: &BlockSums,
    buf: &[u8],
    start: usize,
    p0: usize,
    p1: usize,
    payload_len: usize,
) -> Result<(), usize> {
    for p in p0..p1 {
        let a = p * BLOCK_SUM_PIECE;
        let b = (a + BLOCK_SUM_PIECE).min(payload_len);
        if !block_sums::piece_ok(sums, p, &buf[a - start..b - start]) {
            return Err(p);
        }
    }
    Ok(())
}
