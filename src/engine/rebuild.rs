//! # Rebuild and drain, one extent at a time
//!
//! Two jobs that move fragments without changing any file:
//!
//! - **Rebuild**: an extent with fragments on a member that is failed or
//!   missing (or that fail to read) gets those fragments rewritten elsewhere
//!   ([`Pool::rebuild_extent`]). It reuses lazy repair (`repair.rs`): the
//!   extent is read the way a read would read it (one replica, or K shards),
//!   then only the lost fragments are rebuilt and written, and a
//!   `MoveExtent` is queued. [`RebuildIo`] counts the verified source bytes
//!   read and the bytes written, so "reads only what the lost fragments
//!   need" is measurable: `replication:N` reads one extent's bytes and
//!   writes one copy per lost fragment; `erasure:K+M` reads K shards and
//!   writes one shard per lost fragment.
//! - **Drain** (`remove-disk`): [`Pool::start_removal`] checks that the
//!   other members can take the data under every policy in use, then marks
//!   the member `Draining` (placement stops choosing it); each
//!   [`Pool::drain_extent`] moves that member's fragments of one extent to
//!   other members (same machinery, the draining fragments treated as
//!   lost). When no fragment is left, [`Pool::finish_removal`] records the
//!   member `Removed`, takes it out of the journal and checkpoint copies and
//!   the root ring, writes a checkpoint without it, and wipes both of its
//!   superblocks so that no discovery ever finds it in the pool again.
//!
//! [`Worker`] runs both in the background of a mount: a pass over the
//! extents, rate-limited in bytes per second, then a pause. At start it
//! also resumes, on a thread of its own, the policy changes a crash or an
//! unmount left Running (as ZFS resumes a resilver at import), stopping
//! between two extents when the worker stops. Nothing here is
//! global or stop-the-world: each extent is read, rebuilt and committed on
//! its own while files stay readable and writable.
//!
//! This module never decides placement itself (`placement.rs` via
//! `repair.rs`) and never changes file contents.

use super::data::FragFault;
use super::error::{EngineError, Result};
use super::placement;
use super::pool::Pool;
use super::repair::InFlight;
use super::state::{MemberRec, MemberState, Op};
use crate::device::AlignedBuf;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What rebuilding (or draining) one or more extents took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebuildIo {
    /// Extents whose fragments were rewritten.
    pub extents: u64,
    /// Fragments rewritten.
    pub fragments: u64,
    /// Verified source payload bytes the rebuild read.
    pub bytes_read: u64,
    /// Bytes written (fragment header block + payload blocks).
    pub bytes_written: u64,
}

impl std::ops::AddAssign for RebuildIo {
    fn add_assign(&mut self, o: RebuildIo) {
        self.extents += o.extents;
        self.fragments += o.fragments;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
    }
}

/// Why a removal is refused, or how far a drain is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainProgress {
    pub member: u32,
    /// Fragments still on the member.
    pub fragments_left: u64,
    /// True once the member has left the pool.
    pub removed: bool,
}

impl Pool {
    /// Extents with at least one fragment on a member that is missing or
    /// recorded as failed.
    pub fn degraded_extents(&self) -> Vec<u128> {
        let m = self.meta();
        let bad = |i: u32| {
            self.members.get(i as usize).is_none_or(|x| x.is_none())
                || m.state.members.get(i as usize).is_some_and(|r| r.state == MemberState::Failed)
        };
        let mut v: Vec<u128> =
            m.state.extents.iter().filter(|(_, e)| e.frags.iter().any(|f| bad(f.member))).map(|(id, _)| *id).collect();
        v.sort_unstable();
        v
    }

    /// Extents with a fragment on member `member`.
    pub fn extents_on(&self, member: u32) -> Vec<u128> {
        let m = self.meta();
        let mut v: Vec<u128> = m
            .state
            .extents
            .iter()
            .filter(|(_, e)| e.frags.iter().any(|f| f.member == member))
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    /// Rebuild the lost fragments of extent `id` (see the module doc). An
    /// extent that is healthy, gone, or being repaired by a read right now
    /// costs nothing and returns zeros. The move is queued, not committed.
    pub fn rebuild_extent(&self, id: u128) -> Result<RebuildIo> {
        self.move_fragments(id, None)
    }

    /// Move the fragments of extent `id` that are on `member` (draining)
    /// to other members, rebuilding lost ones on the way.
    pub fn drain_extent(&self, id: u128, member: u32) -> Result<RebuildIo> {
        self.move_fragments(id, Some(member))
    }

    fn move_fragments(&self, id: u128, leaving: Option<u32>) -> Result<RebuildIo> {
        if self.opts.read_only {
            return Err(EngineError::ReadOnly);
        }
        let Some(e) = self.meta().state.extents.get(&id).cloned() else {
            return Ok(RebuildIo::default());
        };
        if !self.repair.begin(id) {
            return Ok(RebuildIo::default());
        }
        let _g = InFlight(&self.repair, id);
        let mut out = vec![0u8; e.len as usize];
        let (got, set, faults) = self.read_extent_inner(&e, &mut out)?;
        let mut bad: Vec<(usize, FragFault)> =
            faults.into_iter().enumerate().filter_map(|(i, f)| f.map(|f| (i, f))).collect();
        if let Some(leaving) = leaving {
            for (i, f) in e.frags.iter().enumerate() {
                if f.member == leaving && !bad.iter().any(|(b, _)| *b == i) {
                    bad.push((i, FragFault::Absent));
                }
            }
        }
        if bad.is_empty() {
            return Ok(RebuildIo::default());
        }
        bad.sort_by_key(|(i, _)| *i);
        let sources: Vec<Option<&[u8]>> = (0..got.len())
            .map(|i| if set.contains(&i) { got[i].as_ref().map(|f| f.payload()) } else { None })
            .collect();
        let io = self.repair_fragments(&e, &out, &sources, &bad)?;
        Ok(RebuildIo {
            extents: u64::from(io.fragments > 0),
            fragments: io.fragments,
            bytes_read: io.bytes_read,
            bytes_written: io.bytes_written,
        })
    }

    /// Rebuild every degraded extent (at most `limit`), committing as it goes.
    pub fn rebuild_all(&self, limit: usize) -> Result<RebuildIo> {
        let mut total = RebuildIo::default();
        for id in self.degraded_extents().into_iter().take(limit) {
            total += self.rebuild_extent(id)?;
        }
        self.commit()?;
        Ok(total)
    }

    /// Start removing member `index`: refuse (nothing changed) when it is
    /// the last member, not in the pool, or when the other online members
    /// cannot hold its data under every policy in use; else mark it
    /// `Draining` (committed).
    pub fn start_removal(&self, index: u32) -> Result<()> {
        {
            let m = self.meta();
            let rec = m
                .state
                .members
                .get(index as usize)
                .ok_or_else(|| EngineError::Invalid(format!("no member {index} in the pool")))?;
            match rec.state {
                MemberState::Removed => {
                    return Err(EngineError::Invalid(format!("member {index} has already left the pool")))
                }
                MemberState::Draining => return Ok(()),
                _ => {}
            }
            let mut views = self.member_views(&m);
            for v in views.iter_mut().filter(|v| v.index == index) {
                v.state = placement::MemberState::Draining;
            }
            let online: Vec<&placement::MemberView> =
                views.iter().filter(|v| v.state == placement::MemberState::Online).collect();
            if online.is_empty() {
                return Err(EngineError::Invalid(format!(
                    "member {index} is the last online member: removing it would remove the last copies"
                )));
            }
            // Every policy in use (and the default) must stay placeable.
            let mut policies: BTreeMap<[u8; 4], ()> = BTreeMap::new();
            policies.insert(m.state.config.default_policy, ());
            let mut bytes_on = 0u64;
            for e in m.state.extents.values() {
                policies.insert(e.policy, ());
                for f in e.frags.iter().filter(|f| f.member == index) {
                    let bs = self.members.get(index as usize).and_then(|x| x.as_ref()).map(|x| x.layout.block_size);
                    bytes_on += f.blocks as u64 * bs.unwrap_or(4096) as u64;
                }
            }
            for p in policies.keys() {
                let p = dfs_format::Policy::decode(*p).map_err(|e| EngineError::Invalid(e.to_string()))?;
                if !placement::can_satisfy(p, &views) {
                    return Err(EngineError::PolicyUnsatisfiable {
                        policy: p.to_string(),
                        reason: format!(
                            "without member {index} it needs {} online members, {} would be left",
                            p.fragment_count(),
                            online.len()
                        ),
                    });
                }
            }
            let free: u64 = online.iter().map(|v| v.free_bytes).sum();
            if free < bytes_on {
                return Err(EngineError::NoSpace(format!(
                    "member {index} holds {bytes_on} bytes of fragments; the other online members have {free} bytes free"
                )));
            }
        }
        self.set_member_state(index, MemberState::Draining)
    }

    /// Members being drained.
    pub fn draining_members(&self) -> Vec<u32> {
        self.meta().state.members.iter().filter(|r| r.state == MemberState::Draining).map(|r| r.index).collect()
    }

    /// Move everything off draining member `index` (at most `limit`
    /// extents), commit, and finish the removal when it is empty.
    pub fn drain_step(&self, index: u32, limit: usize) -> Result<(RebuildIo, DrainProgress)> {
        let mut io = RebuildIo::default();
        for id in self.extents_on(index).into_iter().take(limit) {
            io += self.drain_extent(id, index)?;
        }
        self.commit()?;
        let left = self.extents_on(index).len() as u64;
        let removed = left == 0 && self.finish_removal(index)?;
        Ok((io, DrainProgress { member: index, fragments_left: left, removed }))
    }

    /// Member `index` is draining and holds nothing: it leaves the pool
    /// (see the module doc). Returns false when it still holds fragments.
    pub fn finish_removal(&self, index: u32) -> Result<bool> {
        {
            let mut m = self.meta();
            let Some(rec) = m.state.members.get(index as usize).cloned() else {
                return Err(EngineError::Invalid(format!("no member {index} in the pool")));
            };
            if rec.state == MemberState::Removed {
                return Ok(true);
            }
            if m.state.all_fragments().any(|(_, _, f)| f.member == index) {
                return Ok(false);
            }
            self.apply_txn(&mut m, vec![Op::PutMember { member: MemberRec { state: MemberState::Removed, ..rec } }])?;
        }
        self.commit()?;
        // No journal, checkpoint or root goes there any more.
        self.retire_member(index)?;
        if let Some(Some(mem)) = self.members.get(index as usize) {
            let bs = mem.layout.block_size as usize;
            let zero = AlignedBuf::zeroed(bs.max(mem.dev.block_size() as usize));
            let size = mem.dev.size();
            mem.dev.write_at(0, &zero)?;
            mem.dev.write_at(size - zero.len() as u64, &zero)?;
            mem.dev.sync()?;
            tracing::info!(member = index, device = %mem.dev.identity(), "member removed from the pool; superblocks wiped");
        }
        Ok(true)
    }
}

impl Pool {
    /// Add `dev` (already probed by the caller) as a new member, online
    /// at once: formatted as member N of this pool, given an allocator,
    /// recorded by a `PutMember` op, committed, then a checkpoint so the
    /// root (member count) and its root ring know it. Returns its index.
    pub fn add_member(&self, dev: Arc<dyn crate::device::Device>) -> Result<u32> {
        if self.opts.read_only {
            return Err(EngineError::ReadOnly);
        }
        self.check_poisoned()?;
        let (label, policy, jlen, jbs) = {
            let any =
                self.members.iter().flatten().next().ok_or_else(|| EngineError::Other("no member is open".into()))?;
            let jbs = self.members.iter().flatten().map(|m| m.layout.block_size).max().unwrap_or(4096);
            (any.sb.label.clone(), any.sb.default_policy, self.journal_len(), jbs)
        };
        // One add at a time: the index is chosen and the slot pushed under `meta`.
        let mut m = self.meta();
        let index = self.members.len().max(m.state.members.len()) as u32;
        if index as usize >= super::pool::MAX_MEMBERS {
            return Err(EngineError::Invalid(format!("a pool has at most {} members", super::pool::MAX_MEMBERS)));
        }
        let (member_uuid, layout) =
            crate::mkfs::format_member(dev.as_ref(), self.uuid, index, &label, policy, jlen, jbs)
                .map_err(|e| EngineError::Other(e.to_string()))?;
        let (sb, _) = super::pool::read_superblock(dev.as_ref())?;
        let alloc = dfs_alloc::Allocator::new(
            layout.data_blocks(),
            dfs_format::bitmap::bits_per_bitmap_block(layout.block_size) as u32,
        )
        .map_err(|e| EngineError::Other(e.to_string()))?;
        // Slots up to the new index (members missing from this open).
        while self.members.len() < index as usize {
            self.members.push(None)?;
        }
        while m.allocs.len() < index as usize {
            m.allocs.push(None);
        }
        let path = dev.identity().path.display().to_string();
        self.members.push(Some(super::pool::Member { index, dev, layout, sb }))?;
        m.allocs.push(Some(alloc));
        let mut ops = Vec::new();
        for i in m.state.members.len() as u32..index {
            ops.push(Op::PutMember {
                member: MemberRec { index: i, uuid: 0, state: MemberState::Removed, path_hint: String::new() },
            });
        }
        ops.push(Op::PutMember {
            member: MemberRec { index, uuid: member_uuid.as_u128(), state: MemberState::Online, path_hint: path },
        });
        self.apply_txn(&mut m, ops)?;
        drop(m);
        self.commit()?;
        self.checkpoint()?;
        tracing::info!(member = index, "member added");
        Ok(index)
    }
}

/// Settings of the background worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Most bytes written per second by rebuild and drain together.
    pub bytes_per_sec: u64,
    /// Pause between passes that found nothing to do.
    pub idle: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions { bytes_per_sec: 64 << 20, idle: Duration::from_secs(5) }
    }
}

/// What the worker did so far (for `dfs rebuild-status` and tests).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub rebuild: RebuildIo,
    pub drain: RebuildIo,
    /// Extents seen degraded at the start of the last pass.
    pub degraded_extents: u64,
    /// Draining members and the fragments each still holds.
    pub draining: Vec<DrainProgress>,
    /// Members that left the pool since the mount.
    pub removed: Vec<u32>,
    pub passes: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// The background rebuild/drain thread of a mount. Stops when dropped.
#[derive(Debug)]
pub struct Worker {
    stop: Arc<AtomicBool>,
    wake: Arc<(Mutex<bool>, std::sync::Condvar)>,
    status: Arc<Mutex<WorkerStatus>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    resume: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Worker {
    /// Start the worker on `pool`.
    pub fn start(pool: Arc<Pool>, opts: WorkerOptions) -> std::io::Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let status = Arc::new(Mutex::new(WorkerStatus::default()));
        let (p, s, st) = (pool.clone(), stop.clone(), status.clone());
        let resume =
            std::thread::Builder::new().name("dfs-policy-resume".into()).spawn(move || resume_changes(&p, &s, &st))?;
        let (s, w, st) = (stop.clone(), wake.clone(), status.clone());
        let thread =
            std::thread::Builder::new().name("dfs-rebuild".into()).spawn(move || run(&pool, &opts, &s, &w, &st))?;
        Ok(Worker { stop, wake, status, thread: Mutex::new(Some(thread)), resume: Mutex::new(Some(resume)) })
    }

    /// Start a pass now (after fail-disk or remove-disk).
    pub fn kick(&self) {
        let (l, c) = &*self.wake;
        *l.lock().unwrap_or_else(|p| p.into_inner()) = true;
        c.notify_all();
    }

    /// What it did so far.
    pub fn status(&self) -> WorkerStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Worker {
    /// Stop the thread and wait for it (the extent in hand is finished).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.kick();
        for t in [&self.thread, &self.resume] {
            if let Some(t) = t.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Finish the policy changes left Running, until `stop`.
fn resume_changes(pool: &Pool, stop: &AtomicBool, status: &Mutex<WorkerStatus>) {
    match pool.resume_policy_changes_until(&|_, _| {}, &|| stop.load(Ordering::SeqCst)) {
        Ok(changes) => {
            for c in changes {
                tracing::info!(change = c.id, state = ?c.state, done = c.extents_done, total = c.extents_total, "policy change resumed");
            }
        }
        Err(e) => {
            tracing::error!("resuming policy changes: {e}");
            let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
            s.errors += 1;
            s.last_error = Some(format!("resuming policy changes: {e}"));
        }
    }
}

fn run(
    pool: &Pool,
    opts: &WorkerOptions,
    stop: &AtomicBool,
    wake: &(Mutex<bool>, std::sync::Condvar),
    status: &Mutex<WorkerStatus>,
) {
    let st = || status.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let mut written = 0u64;
    // Sleep long enough that `written` bytes since `started` respect the rate.
    let throttle = |written: u64| {
        let due = Duration::from_secs_f64(written as f64 / opts.bytes_per_sec.max(1) as f64);
        let now = started.elapsed();
        if due > now {
            std::thread::sleep((due - now).min(Duration::from_secs(1)));
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let mut did = false;
        let degraded = pool.degraded_extents();
        st().degraded_extents = degraded.len() as u64;
        for id in degraded {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match pool.rebuild_extent(id) {
                Ok(io) => {
                    did |= io.fragments > 0;
                    written += io.bytes_written;
                    st().rebuild += io;
                }
                Err(e) => {
                    let mut s = st();
                    s.errors += 1;
                    s.last_error = Some(e.to_string());
                }
            }
            throttle(written);
        }
        let mut draining = Vec::new();
        for member in pool.draining_members() {
            for id in pool.extents_on(member) {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                match pool.drain_extent(id, member) {
                    Ok(io) => {
                        did |= io.fragments > 0;
                        written += io.bytes_written;
                        st().drain += io;
                    }
                    Err(e) => {
                        let mut s = st();
                        s.errors += 1;
                        s.last_error = Some(format!("draining member {member}: {e}"));
                    }
                }
                throttle(written);
            }
            let _ = pool.commit();
            let left = pool.extents_on(member).len() as u64;
            let mut removed = false;
            if left == 0 {
                match pool.finish_removal(member) {
                    Ok(r) => removed = r,
                    Err(e) => {
                        let mut s = st();
                        s.errors += 1;
                        s.last_error = Some(format!("removing member {member}: {e}"));
                    }
                }
                if removed {
                    st().removed.push(member);
                }
            }
            draining.push(DrainProgress { member, fragments_left: left, removed });
        }
        if did {
            if let Err(e) = pool.commit() {
                let mut s = st();
                s.errors += 1;
                s.last_error = Some(e.to_string());
            }
        }
        {
            let mut s = st();
            s.draining = draining;
            s.passes += 1;
        }
        if !did {
            let (l, c) = wake;
            let mut woken = l.lock().unwrap_or_else(|p| p.into_inner());
            if !*woken {
                woken = c.wait_timeout(woken, opts.idle).unwrap_or_else(|p| p.into_inner()).0;
            }
            *woken = false;
        }
    }
}
