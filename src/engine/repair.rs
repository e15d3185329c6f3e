//! # Lazy repair: rebuild bad fragments when a read finds them
//!
//! `read_extent` (`data.rs`) returns correct data as long as enough
//! fragments are good. When it had to skip some — an IO error, a header
//! that does not match the extent table, a payload or extent BLAKE3
//! mismatch, or a fragment on a member that is missing or recorded as
//! failed — it hands the verified bytes to [`Pool::lazy_repair`], which:
//!
//! 1. rebuilds each bad fragment: a copy of the verified extent for
//!    `replication:N`, `redundancy::reconstruct` from the verified shards
//!    the read decoded from for `erasure:K+M`;
//! 2. chooses a member for each (below) and allocates a fresh run there —
//!    never an overwrite in place: the old location stays referenced until
//!    the new one is committed, so a crash at any instant leaves the
//!    extent exactly as readable as before, and the new run is free again
//!    at the next open if the commit never happened;
//! 3. writes header + payload (in parallel; read back and compared when
//!    `verify_writes` is on);
//! 4. queues `Op::MoveExtent` with the new fragment list through
//!    `apply_txn`, but only if the extent still has exactly the fragments
//!    the read saw (an overwrite, a delete or another repair may have won
//!    the race; then the new runs are simply freed). The old locations are
//!    freed by the existing mechanism once that commit is durable.
//!
//! The read waits for steps 1-4 (fragment writes, no device sync) and never
//! for the commit, which rides on the next group commit (fsync, sync,
//! unmount). A repair that fails (no eligible member, no space, an IO
//! error) is logged and counted (`repair_failures`); it never turns a good
//! read into an error. One repair per extent runs at a time; a concurrent
//! read of the same extent skips repairing.
//!
//! ## Where the new fragment goes
//!
//! - A fragment that was *read* but was corrupt (header or hash mismatch)
//!   on a member that is online and has room is rewritten **on the same
//!   member**, at a new location. Rot of a few sectors says little about
//!   the disk; keeping the member keeps the placement's balance, and a pool
//!   with exactly K+M members (no spare) can still heal bit rot.
//! - A fragment that could not be read (IO error) or whose member is
//!   missing or failed goes to **another member** chosen by
//!   `placement::place_more`: online, with room, weighted by free space,
//!   distinct from every other fragment of the extent (and from the members
//!   already chosen for this repair). If no such member exists the extent
//!   stays degraded (logged, counted) until a member is added.
//!
//! Counters (`pool.counters`): `repairs` (fragments rewritten and queued),
//! `repair_bytes_read` (payload bytes of the verified fragments the rebuild
//! used), `repair_bytes_written` (header + payload blocks written),
//! `repair_failures`, and `extents_lost` (distinct extents a read found
//! unrecoverable; listed by [`Pool::lost_extents`]).

use super::data::{par_map, FragFault};
use super::error::{EngineError, Result};
use super::placement;
use super::pool::Pool;
use super::redundancy;
use super::state::{Extent, FragLoc, Op};
use crate::device::AlignedBuf;
use dfs_format::Policy;
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Bookkeeping of lazy repair, owned by the pool.
#[derive(Debug, Default)]
pub struct RepairState {
    /// Extents being repaired now.
    in_flight: Mutex<HashSet<u128>>,
    /// Extents a read found unrecoverable, with the last reason.
    lost: Mutex<BTreeMap<u128, String>>,
    lost_count: AtomicUsize,
}

impl RepairState {
    pub(crate) fn begin(&self, id: u128) -> bool {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).insert(id)
    }

    pub(crate) fn end(&self, id: u128) {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// An extent read correctly again (a member came back): no longer lost.
    pub(crate) fn forget_lost(&self, id: u128) {
        if self.lost_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        if lost.remove(&id).is_some() {
            self.lost_count.store(lost.len(), Ordering::Relaxed);
        }
    }
}

/// Ends the in-flight mark of a repair, also on panic.
pub(crate) struct InFlight<'a>(pub(crate) &'a RepairState, pub(crate) u128);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.end(self.1);
    }
}

/// What one repair did: fragments queued, verified source payload bytes it
/// rebuilt from, bytes (header + payload blocks) it wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RepairIo {
    pub fragments: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// One fragment to rebuild: its index and its new location.
struct Plan {
    index: usize,
    loc: FragLoc,
}

impl Pool {
    /// Extents found unrecoverable by reads since the pool was opened (UUID
    /// as u128, and why), oldest report first by UUID order. An extent that
    /// reads correctly again (its member came back) leaves the list.
    pub fn lost_extents(&self) -> Vec<(u128, String)> {
        let lost = self.repair.lost.lock().unwrap_or_else(|p| p.into_inner());
        lost.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Record that `e` could not be read: log, count (once per extent), list.
    pub(crate) fn report_lost(&self, e: &Extent, reason: &str) {
        let mut lost = self.repair.lost.lock().unwrap_or_else(|p| p.into_inner());
        if lost.insert(e.id, reason.to_string()).is_none() {
            self.counters.extents_lost.fetch_add(1, Ordering::Relaxed);
        }
        self.repair.lost_count.store(lost.len(), Ordering::Relaxed);
        tracing::error!(extent = %uuid::Uuid::from_u128(e.id), policy = %e.policy(), %reason, "extent lost: too few good fragments");
    }

    /// Rebuild the fragments `bad` of `e` from the verified extent `bytes`
    /// and the verified fragments `sources` the read decoded from. See the
    /// module doc. Never fails: problems are logged and counted.
    pub(crate) fn lazy_repair(&self, e: &Extent, bytes: &[u8], sources: &[Option<&[u8]>], bad: &[(usize, FragFault)]) {
        if self.opts.read_only || bad.is_empty() {
            return;
        }
        if !self.repair.begin(e.id) {
            return;
        }
        let _g = InFlight(&self.repair, e.id);
        let id = uuid::Uuid::from_u128(e.id);
        match self.repair_fragments(e, bytes, sources, bad) {
            Ok(io) if io.fragments == 0 => tracing::info!(extent = %id, "repair skipped: the extent changed meanwhile"),
            Ok(io) => tracing::info!(extent = %id, fragments = io.fragments, "extent repaired (commit pending)"),
            Err(err) => {
                self.counters.repair_failures.fetch_add(1, Ordering::Relaxed);
                let which: Vec<String> = bad.iter().map(|(i, f)| format!("#{i} ({f})")).collect();
                tracing::warn!(extent = %id, fragments = %which.join(", "), %err, "repair failed; the extent stays degraded");
            }
        }
    }

    /// Steps 1-4 of the module doc; what was queued and the IO it took.
    pub(crate) fn repair_fragments(
        &self,
        e: &Extent,
        bytes: &[u8],
        sources: &[Option<&[u8]>],
        bad: &[(usize, FragFault)],
    ) -> Result<RepairIo> {
        let mut io = RepairIo::default();
        let policy = e.policy();
        let wanted: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
        let rebuilt: Vec<Vec<u8>> = match policy {
            Policy::Replication { .. } => {
                self.counters.repair_bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                io.bytes_read = bytes.len() as u64;
                wanted.iter().map(|_| Vec::new()).collect()
            }
            Policy::Erasure { .. } => {
                let used: u64 = sources.iter().flatten().map(|s| s.len() as u64).sum();
                self.counters.repair_bytes_read.fetch_add(used, Ordering::Relaxed);
                io.bytes_read = used;
                redundancy::reconstruct(policy, e.len, sources, &wanted)
                    .map_err(|err| EngineError::Other(format!("reconstruct: {err}")))?
                    .into_iter()
                    .map(|f| f.into_vec())
                    .collect()
            }
        };
        let payload_len = redundancy::shard_len(policy, e.len) as usize;

        // Choose members and allocate, under the lock.
        let plans: Vec<Plan> = {
            let mut m = self.meta();
            if m.state.extents.get(&e.id).map(|x| &x.frags) != Some(&e.frags) {
                return Ok(RepairIo::default());
            }
            let views = self.member_views(&m);
            let bytes_needed = (1 + (payload_len as u64).div_ceil(self.max_block_size())) * self.max_block_size();
            // Members that must not receive a rebuilt fragment: those of the
            // fragments kept, those that failed to read or are missing, and
            // those already chosen. A member whose fragment was merely
            // corrupt may take its own fragment back (or another one).
            let mut avoid: Vec<u32> = e
                .frags
                .iter()
                .enumerate()
                .filter(|(i, _)| !wanted.contains(i))
                .map(|(_, f)| f.member)
                .chain(bad.iter().filter(|(_, f)| !matches!(f, FragFault::Corrupt(_))).map(|(i, _)| e.frags[*i].member))
                .collect();
            let mut chosen = Vec::new();
            for (index, fault) in bad {
                let old = e.frags[*index].member;
                let same = matches!(fault, FragFault::Corrupt(_))
                    && !avoid.contains(&old)
                    && views.iter().any(|v| v.index == old && v.can_take(bytes_needed));
                let member = if same {
                    old
                } else {
                    let mut exclude = avoid.clone();
                    exclude.push(old);
                    placement::place_more(policy, &views, bytes_needed, &exclude, 1, &mut rand::thread_rng())
                        .map_err(|err| EngineError::NoSpace(format!("no member for fragment {index}: {err}")))?[0]
                };
                avoid.push(member);
                chosen.push(member);
            }
            let locs = self.allocate_fragments(&mut m, &chosen, payload_len)?;
            bad.iter().zip(locs).map(|((index, _), loc)| Plan { index: *index, loc }).collect()
        };

        // Write them.
        let max_bs = self.max_block_size() as usize;
        let padded = |p: &[u8]| AlignedBuf::from_slice_padded(p, max_bs);
        let shared = matches!(policy, Policy::Replication { .. }).then(|| padded(bytes));
        let extent_id = uuid::Uuid::from_u128(e.id);
        let results = par_map(&plans, |p| {
            let pos = wanted.iter().position(|&w| w == p.index).unwrap_or(0);
            let own;
            let payload: &AlignedBuf = match &shared {
                Some(b) => b,
                None => {
                    own = padded(&rebuilt[pos]);
                    &own
                }
            };
            let payload_hash = match policy {
                Policy::Replication { .. } => e.blake3,
                Policy::Erasure { .. } => *blake3::hash(&payload[..payload_len]).as_bytes(),
            };
            let header =
                self.extent_header(extent_id, policy, p.index, payload_len, e.len as usize, e.blake3, payload_hash);
            self.write_fragment(&p.loc, &header, payload)
        });
        let new_locs: Vec<FragLoc> = plans.iter().map(|p| p.loc).collect();
        let mut written = 0u64;
        for r in results {
            match r {
                Ok(n) => written += n,
                Err(err) => {
                    self.free_uncommitted(&new_locs);
                    return Err(err);
                }
            }
        }
        self.counters.repair_bytes_written.fetch_add(written, Ordering::Relaxed);
        io.bytes_written = written;

        // Queue the move, if the extent is still the one we read.
        let mut m = self.meta();
        if m.state.extents.get(&e.id).map(|x| &x.frags) != Some(&e.frags) {
            drop(m);
            self.free_uncommitted(&new_locs);
            return Ok(RepairIo { fragments: 0, ..io });
        }
        let mut frags = e.frags.to_vec();
        for p in &plans {
            frags[p.index] = p.loc;
        }
        self.apply_txn(&mut m, vec![Op::MoveExtent { id: e.id, policy: e.policy, frags: frags.into() }])?;
        self.counters.repairs.fetch_add(plans.len() as u64, Ordering::Relaxed);
        io.fragments = plans.len() as u64;
        Ok(io)
    }
}
