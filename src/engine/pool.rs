//! # Pool: open, group commit, checkpoint, close
//!
//! A `Pool` is one opened DynamicFS pool: its members, the metadata state in
//! memory, the per-member allocators and the journal writer.
//!
//! ## Open
//! superblocks of every member (same pool, distinct indexes) → the root with
//! the highest generation that verifies on any member → its checkpoint (any
//! copy whose BLAKE3 matches) → replay of every journal copy from the root's
//! position; the longest valid chain wins → inodes left with no link (files
//! unlinked while open, then a crash) are dropped → allocators rebuilt from
//! the extent table and the checkpoint's own blocks, so an allocation made by
//! a transaction that never committed comes back free (no leak, no double
//! allocation) → a fresh checkpoint, which moves the journal tail to the head
//! and supersedes stale or damaged journal copies and root slots.
//!
//! ## Commit (group commit)
//! Every namespace change is applied to the in-memory state at once and its
//! ops queued, all under the `meta` lock, so a transaction's ops are
//! contiguous and atomic. `commit` (fsync, sync, unmount, or the journal
//! filling) takes the `commit` lock, swaps out everything queued, syncs the
//! members that received fragment data since the last commit (data before
//! metadata), appends ONE journal record to every journal copy and syncs
//! them. Callers that queued ops while another commit was writing find their
//! ops already durable when they get the lock: N concurrent fsyncs cost far
//! fewer than N device syncs. Space freed by the committed ops (replaced or
//! deleted extents) goes back to the allocators only after that commit is
//! durable.
//!
//! ## Checkpoint
//! When the journal is half full (or at open and close), the whole state is
//! serialized and written as a replicated object (a fragment of kind
//! `Checkpoint` on each journal member), synced, then a new root record
//! (generation + 1, pointing at it and at the journal head) is written to
//! the root ring of every member and synced. Only then is the previous
//! checkpoint's space freed and the journal tail moved.
//!
//! This module never interprets file data; extents are `data.rs`'s job.

use super::error::{EngineError, Result};
use super::journal::{replay_copy, JournalCopy, JournalError, JournalPos, JournalWriter, Replay};
use super::lock::{PoolLock, DEFAULT_LOCK_DIR};
use super::state::{FragLoc, Ino, MemberRec, MemberState, Op, PoolConfig, State};
use crate::device::{AlignedBuf, Device};
use dfs_alloc::{Allocator, Run};
use dfs_format::fragment::FragmentKind;
use dfs_format::root::{CheckpointLocator, CheckpointRef};
use dfs_format::superblock::choose_superblock;
use dfs_format::{FragmentHeader, Layout, Policy, RegionKind, RootRecord, Superblock, FRAGMENT_HEADER_LEN};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Longest a commit waits for concurrent fsyncs still flushing their data
/// to join its batch (see "Commit" above).
pub const GATHER_MAX: std::time::Duration = std::time::Duration::from_millis(2);

/// Most copies of the journal and of checkpoints.
pub const METADATA_COPIES: usize = 3;

/// How to open a pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Open without writing anything (no lock, no checkpoint, no commits).
    pub read_only: bool,
    /// Where lock files live (default `/run/dfs`).
    pub lock_dir: Option<PathBuf>,
    /// Checkpoint when the journal is this full (fraction of its length).
    pub checkpoint_at: f64,
    /// Re-read and verify every fragment after writing it, before commit.
    pub verify_writes: bool,
    /// Take no pool lock (tests that open in-memory pools).
    pub no_lock: bool,
    /// Access statistics and lazy migration (`crate::temperature`).
    pub temperature: crate::temperature::TemperatureConfig,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            read_only: false,
            lock_dir: None,
            checkpoint_at: 0.5,
            verify_writes: false,
            no_lock: false,
            temperature: Default::default(),
        }
    }
}

/// An opened member.
#[derive(Debug, Clone)]
pub struct Member {
    pub index: u32,
    pub dev: Arc<dyn Device>,
    pub layout: Layout,
    pub sb: Superblock,
}

/// Most members a pool can have while it is open (add-disk grows the
/// table of an open pool up to this; the on-disk format has no such limit).
pub const MAX_MEMBERS: usize = 256;

/// The members of an open pool by index (`None` = missing). Append-only,
/// so `add-disk` can grow it while readers hold references: slots are
/// set once and never change.
pub struct MemberTable {
    slots: Box<[std::sync::OnceLock<Option<Member>>]>,
    len: AtomicU64,
}

static NO_MEMBER: Option<Member> = None;

impl std::fmt::Debug for MemberTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl MemberTable {
    fn new(members: Vec<Option<Member>>) -> Result<MemberTable> {
        if members.len() > MAX_MEMBERS {
            return Err(EngineError::Invalid(format!("more than {MAX_MEMBERS} members")));
        }
        let t = MemberTable {
            slots: (0..MAX_MEMBERS).map(|_| std::sync::OnceLock::new()).collect(),
            len: AtomicU64::new(0),
        };
        for m in members {
            t.push(m)?;
        }
        Ok(t)
    }

    /// Number of slots (members the pool has had, present or not).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire) as usize
    }

    /// True when there is no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slot `i`, if the table has it.
    pub fn get(&self, i: usize) -> Option<&Option<Member>> {
        if i < self.len() {
            self.slots[i].get().or(Some(&NO_MEMBER))
        } else {
            None
        }
    }

    /// Every slot in index order.
    pub fn iter(&self) -> impl Iterator<Item = &Option<Member>> + '_ {
        (0..self.len()).map(|i| self.slots[i].get().unwrap_or(&NO_MEMBER))
    }

    /// Append a slot (callers serialize appends: `meta` lock). Its index.
    pub(crate) fn push(&self, m: Option<Member>) -> Result<usize> {
        let i = self.len();
        let slot = self.slots.get(i).ok_or_else(|| EngineError::Invalid(format!("more than {MAX_MEMBERS} members")))?;
        let _ = slot.set(m);
        self.len.store(i as u64 + 1, Ordering::Release);
        Ok(i)
    }
}

impl std::ops::Index<usize> for MemberTable {
    type Output = Option<Member>;
    fn index(&self, i: usize) -> &Option<Member> {
        self.get(i).expect("member index in range")
    }
}

/// Counters of what the pool did (for tests, benchmarks and metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub device_syncs: AtomicU64,
    pub commits: AtomicU64,
    pub checkpoints: AtomicU64,
    pub ops: AtomicU64,
    pub fragments_written: AtomicU64,
    pub fragments_read: AtomicU64,
    pub fragment_errors: AtomicU64,
    /// Fragments rewritten by lazy repair (see `repair.rs`) and queued for commit.
    pub repairs: AtomicU64,
    /// Payload bytes of the verified fragments a repair rebuilt from.
    pub repair_bytes_read: AtomicU64,
    /// Bytes (header block + payload blocks) written by repairs.
    pub repair_bytes_written: AtomicU64,
    /// Repairs that could not be done (no room, no eligible member, IO error).
    pub repair_failures: AtomicU64,
    /// Reads that failed because an extent had too few good fragments.
    pub extents_lost: AtomicU64,
    /// Errors seen on each member since the pool was opened.
    pub member_errors: MemberErrors,
}

impl Counters {
    /// A fragment a read found bad (IO error, header, payload BLAKE3,
    /// block sum, decode): counted in `fragment_errors` and on its member.
    pub(crate) fn bad_fragment_read(&self, member: u32) {
        self.fragment_errors.fetch_add(1, Ordering::Relaxed);
        self.member_errors.note(member);
    }
}

/// Errors seen on each member (by index) since the pool was opened: a
/// fragment read that failed (IO error) or did not verify (header, payload
/// BLAKE3, block sum, decode), and a fragment write that failed (IO error,
/// read-after-write mismatch) — whoever did the IO: a read, a write, a
/// policy change, scrub, repair, rebuild or drain. One per fragment and
/// attempt. Kept in memory only (see docs/DECISIONS.md, "Per-member error
/// counts").
#[derive(Debug)]
pub struct MemberErrors(Box<[AtomicU64]>);

impl Default for MemberErrors {
    fn default() -> Self {
        MemberErrors((0..MAX_MEMBERS).map(|_| AtomicU64::new(0)).collect())
    }
}

impl MemberErrors {
    /// Count one error on `member` (an index past the table is ignored).
    pub fn note(&self, member: u32) {
        if let Some(c) = self.0.get(member as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Errors counted on `member` so far.
    pub fn get(&self, member: u32) -> u64 {
        self.0.get(member as usize).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// State changed under the `meta` lock.
#[derive(Debug)]
pub struct Meta {
    pub state: State,
    pub allocs: Vec<Option<Allocator>>,
    pub(crate) pending: Vec<Op>,
    pub(crate) pending_frees: Vec<FragLoc>,
    pub(crate) dirty_data: BTreeSet<u32>,
    /// Ops applied so far (a ticket: ops up to `ticket` are in memory).
    pub(crate) ticket: u64,
    pub(crate) files: HashMap<Ino, super::data::FileBuf>,
    pub(crate) open_counts: HashMap<Ino, u32>,
    /// Writes handed over by close and not yet committed (`data.rs`, "Close").
    pub(crate) writeback: super::data::Writeback,
}

#[derive(Debug)]
struct CommitState {
    writer: Option<JournalWriter>,
    copies: Vec<JournalCopy>,
    root_gen: u64,
    checkpoint: Option<CheckpointRef>,
    durable_ticket: u64,
}

/// An opened pool. All methods take `&self`; share it with `Arc`.
#[derive(Debug)]
pub struct Pool {
    /// Read-ahead fetches in flight (`readahead.rs`). First field, so it is
    /// dropped first: a dropped pool waits for them before its devices go.
    pub(crate) fetches: super::readahead::Fetches,
    pub(crate) uuid: uuid::Uuid,
    pub(crate) members: MemberTable,
    pub(crate) meta: Mutex<Meta>,
    commit: Mutex<CommitState>,
    pub counters: Counters,
    pub(crate) opts: PoolOptions,
    _lock: Option<PoolLock>,
    /// Set when a metadata write failed after its ops were taken from the
    /// queue: memory and disk may now disagree, so every later change is
    /// refused (EIO) rather than journaled on top of a hole. Reads go on;
    /// the next open recovers the last durable state.
    poisoned: std::sync::atomic::AtomicBool,
    /// Lazy repair bookkeeping: repairs in flight, extents found lost.
    pub(crate) repair: super::repair::RepairState,
    /// fsyncs now writing their file's data before they commit (the group
    /// commit waits for them to join its batch).
    pub(crate) flushing: std::sync::atomic::AtomicUsize,
    /// How long the last commit's device writes took, in ns (the gather
    /// window follows it).
    last_commit_ns: AtomicU64,
    /// Problems found and repaired (or not) at open, for tools to report.
    pub open_report: Vec<String>,
    /// Access statistics, classifiers, migration queue (`crate::temperature`).
    pub(crate) temperature: crate::temperature::Tracker,
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

fn corrupted(msg: impl Into<String>) -> EngineError {
    EngineError::Corrupted(msg.into())
}

/// Read and judge both superblock copies of a device; returns the winner
/// and what was wrong with the other copy.
pub fn read_superblock(dev: &dyn Device) -> Result<(Superblock, Vec<String>)> {
    let dbs = dev.block_size() as u64;
    let mut primary = AlignedBuf::zeroed(dbs as usize);
    dev.read_at(0, &mut primary)?;
    let guess = Superblock::decode(&primary).map(|(sb, _)| sb.layout.block_size).ok();
    let mut sizes: Vec<u32> = guess.into_iter().collect();
    sizes.extend([4096u32, 8192, 16384, 32768, 65536].iter().filter(|b| Some(**b) != guess));
    let mut best = None;
    for bs in sizes {
        let bs = bs as u64;
        if dev.size() < 2 * bs.max(dbs) {
            continue;
        }
        // The backup's block starts at size - bs; read the device block holding it.
        let at = dev.size() - bs;
        let start = at / dbs * dbs;
        let mut buf = AlignedBuf::zeroed((dev.size() - start) as usize);
        if dev.read_at(start, &mut buf).is_err() {
            continue;
        }
        let backup = &buf[(at - start) as usize..];
        if let Ok(c) = choose_superblock(&primary, Some(backup)) {
            let clean = c.backup_error.is_none();
            if clean || best.is_none() {
                best = Some(c);
            }
            if clean {
                break;
            }
        }
    }
    let choice = match best {
        Some(c) => c,
        None => choose_superblock(&primary, None)
            .map_err(|e| EngineError::Other(format!("{}: not a DynamicFS member: {e}", dev.identity())))?,
    };
    let mut report = Vec::new();
    if let Some(e) = &choice.primary_error {
        report.push(format!("{}: primary superblock bad ({e}); using the backup", dev.identity()));
    }
    if let Some(e) = &choice.backup_error {
        report.push(format!("{}: backup superblock bad ({e})", dev.identity()));
    }
    Ok((choice.superblock, report))
}

fn write_block_padded(dev: &dyn Device, offset: u64, bytes: &[u8]) -> Result<()> {
    let buf = AlignedBuf::from_slice_padded(bytes, dev.block_size() as usize);
    dev.write_at(offset, &buf)?;
    Ok(())
}

impl Pool {
    /// Open a pool from its member devices (any order; missing members are
    /// allowed as long as the metadata can be read).
    pub fn open(devices: Vec<Arc<dyn Device>>, opts: PoolOptions) -> Result<Pool> {
        if devices.is_empty() {
            return Err(EngineError::Invalid("no member devices given".into()));
        }
        let mut report = Vec::new();
        let mut members: Vec<Option<Member>> = Vec::new();
        let mut pool_uuid = None;
        for dev in devices {
            let (sb, rep) = read_superblock(dev.as_ref())?;
            report.extend(rep);
            match pool_uuid {
                None => pool_uuid = Some(sb.pool_uuid),
                Some(p) if p != sb.pool_uuid => {
                    return Err(EngineError::Invalid(format!(
                        "{} belongs to pool {}, not {p}",
                        dev.identity(),
                        sb.pool_uuid
                    )))
                }
                _ => {}
            }
            let i = sb.member_index as usize;
            if members.len() <= i {
                members.resize(i + 1, None);
            }
            if members[i].is_some() {
                return Err(EngineError::Invalid(format!("{}: member index {i} given twice", dev.identity())));
            }
            members[i] = Some(Member { index: i as u32, layout: sb.layout.clone(), dev, sb });
        }
        let uuid = pool_uuid.expect("at least one device");
        if members.iter().flatten().any(|m| m.sb.needs_read_only()) && !opts.read_only {
            return Err(EngineError::ReadOnly);
        }
        let lock = if opts.read_only || opts.no_lock {
            None
        } else {
            let dir = opts.lock_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_LOCK_DIR));
            Some(PoolLock::acquire(&dir, uuid)?)
        };

        // Best root on any member.
        let mut best: Option<RootRecord> = None;
        for m in members.iter().flatten() {
            let bs = m.layout.block_size as usize;
            let ring = m.layout.region(RegionKind::RootRing);
            let mut buf = AlignedBuf::zeroed(ring.len as usize);
            if let Err(e) = m.dev.read_at(ring.start, &mut buf) {
                report.push(format!("{}: root ring unreadable: {e}", m.dev.identity()));
                continue;
            }
            for slot in buf.chunks(bs) {
                if slot.iter().all(|&b| b == 0) {
                    continue;
                }
                match RootRecord::decode(slot) {
                    Ok(r) if r.pool_uuid == uuid => {
                        if best.as_ref().is_none_or(|b| r.generation > b.generation) {
                            best = Some(r);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => report.push(format!("{}: a root slot does not verify: {e}", m.dev.identity())),
                }
            }
        }
        let root = best.ok_or_else(|| corrupted(format!("pool {uuid}: no valid root record on any member")))?;

        // Checkpoint, or a fresh state.
        let mut state = match &root.checkpoint {
            Some(c) => {
                let (state, bad_copies) = read_checkpoint(&members, uuid, c)?;
                report.extend(bad_copies.into_iter().map(|e| format!("checkpoint copy unusable: {e}")));
                state
            }
            None => {
                let any = members.iter().flatten().next().expect("one member");
                // Every member of the pool, present or not (the root knows how many).
                let count = (root.member_count as usize).max(members.len());
                let recs = (0..count)
                    .map(|i| match members.get(i).and_then(|m| m.as_ref()) {
                        Some(m) => MemberRec {
                            index: m.index,
                            uuid: m.sb.member_uuid.as_u128(),
                            state: MemberState::Online,
                            path_hint: m.dev.identity().path.display().to_string(),
                        },
                        None => {
                            MemberRec { index: i as u32, uuid: 0, state: MemberState::Online, path_hint: String::new() }
                        }
                    })
                    .collect();
                let config = PoolConfig { default_policy: any.sb.default_policy.encode(), label: any.sb.label.clone() };
                State::new(config, recs, any.sb.created_ns as i64)
            }
        };

        // Journal replay: every present member's copy; the longest chain wins.
        let (jlen, jbs) = (root.journal_len, root.journal_block_size);
        let start = JournalPos { offset: root.journal_offset, seq: root.journal_seq, prev_crc: 0 };
        let mut replays: Vec<(String, Replay)> = Vec::new();
        for m in members.iter().flatten() {
            let region = m.layout.region(RegionKind::Journal);
            if region.len < jlen {
                continue;
            }
            let copy = JournalCopy::on(m.index, m.dev.clone(), &m.layout);
            replays.push((m.dev.identity().to_string(), replay_copy(&copy, uuid, jlen, jbs, start)));
        }
        let longest = replays
            .iter()
            .map(|(_, r)| r.records.len())
            .max()
            .ok_or_else(|| corrupted("no member holds a journal copy"))?;
        // A copy shorter than the longest chain lost records (damage, or a
        // member that missed commits): the fresh checkpoint written below
        // supersedes it; say so.
        for (dev, r) in &replays {
            if r.records.len() < longest {
                report.push(format!(
                    "{dev}: journal copy holds {} of {longest} records after the root (damaged or stale); superseded by a fresh checkpoint",
                    r.records.len()
                ));
            }
        }
        let replay = replays.into_iter().map(|(_, r)| r).find(|r| r.records.len() == longest).expect("longest exists");
        let mut replayed_ops = 0u64;
        for (seq, payload) in &replay.records {
            let ops: Vec<Op> = postcard::from_bytes(payload)
                .map_err(|e| corrupted(format!("journal record {seq}: payload does not decode: {e}")))?;
            for op in &ops {
                state.apply(op).map_err(|e| corrupted(format!("journal record {seq}: {e}")))?;
                replayed_ops += 1;
            }
        }
        if replayed_ops > 0 {
            report.push(format!("replayed {} journal records ({replayed_ops} ops)", replay.records.len()));
        }

        // Allocators from the extent table and the checkpoint's own blocks.
        let mut allocs: Vec<Option<Allocator>> = Vec::new();
        for m in &members {
            allocs.push(match m {
                Some(m) => Some(
                    Allocator::new(
                        m.layout.data_blocks(),
                        dfs_format::bitmap::bits_per_bitmap_block(m.layout.block_size) as u32,
                    )
                    .map_err(|e| EngineError::Other(e.to_string()))?,
                ),
                None => None,
            });
        }
        let mut mark = |member: u32, run: Run| -> Result<()> {
            if let Some(Some(a)) = allocs.get_mut(member as usize) {
                a.mark_used(run).map_err(|e| corrupted(format!("member {member}: {e}")))?;
            }
            Ok(())
        };
        // In (member, block) order, each mark trims the front of one free
        // extent: 2 M fragments take 0.5 s instead of 7.5 s in table order.
        let mut runs: Vec<(u32, u64, u32)> =
            state.all_fragments().map(|(_, _, f)| (f.member, f.block, f.blocks)).collect();
        runs.sort_unstable();
        for (member, block, blocks) in runs {
            mark(member, Run { start: block, len: blocks as u64 })?;
        }
        if let Some(c) = &root.checkpoint {
            for l in &c.copies {
                if let Some(Some(m)) = members.get(l.member_index as usize) {
                    let bs = m.layout.block_size as u64;
                    let data = m.layout.region(RegionKind::Data);
                    mark(l.member_index, Run { start: (l.offset - data.start) / bs, len: l.len.div_ceil(bs) })?;
                }
            }
        }

        // Inodes unlinked while open, then a crash: drop them now.
        let orphan_ops: Vec<Op> = state
            .inodes
            .iter()
            .filter(|(_, i)| i.attrs.nlink == 0)
            .map(|(ino, _)| Op::DropInode { ino: *ino })
            .collect();
        for op in &orphan_ops {
            for f in state.apply(op).map_err(|e| corrupted(e.to_string()))? {
                if let Some(Some(a)) = allocs.get_mut(f.member as usize) {
                    let _ = a.free(Run { start: f.block, len: f.blocks as u64 });
                }
            }
        }
        if !orphan_ops.is_empty() {
            report.push(format!("dropped {} unlinked inodes left open at the crash", orphan_ops.len()));
        }

        let copies = journal_copies(&members, jlen);
        let writer = if opts.read_only {
            None
        } else {
            Some(JournalWriter::new(uuid, jlen, jbs, replay.end, root.journal_offset))
        };
        let ticket = orphan_ops.len() as u64;
        let (temperature, bad_settings) =
            crate::temperature::Tracker::new(opts.temperature.clone(), &state.temperature_settings);
        if let Some(e) = bad_settings {
            report.push(format!("temperature settings stored in the pool not used (built-in defaults instead): {e}"));
        }
        let pool = Pool {
            fetches: Default::default(),
            uuid,
            members: MemberTable::new(members)?,
            meta: Mutex::new(Meta {
                state,
                allocs,
                pending: orphan_ops,
                pending_frees: Vec::new(),
                dirty_data: BTreeSet::new(),
                ticket,
                files: HashMap::new(),
                open_counts: HashMap::new(),
                writeback: Default::default(),
            }),
            commit: Mutex::new(CommitState {
                writer,
                copies,
                root_gen: root.generation,
                checkpoint: root.checkpoint.clone(),
                durable_ticket: 0,
            }),
            counters: Counters::default(),
            opts,
            _lock: lock,
            poisoned: Default::default(),
            repair: Default::default(),
            flushing: Default::default(),
            last_commit_ns: AtomicU64::new(0),
            open_report: report,
            temperature,
        };
        if !pool.opts.read_only {
            let mut c = pool.commit_lock();
            pool.checkpoint_locked(&mut c)?;
        }
        Ok(pool)
    }

    /// The pool's UUID.
    pub fn uuid(&self) -> uuid::Uuid {
        self.uuid
    }

    /// The opened members, by index (None = missing).
    pub fn members(&self) -> &MemberTable {
        &self.members
    }

    pub(crate) fn meta(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn commit_lock(&self) -> MutexGuard<'_, CommitState> {
        self.commit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when opened read-only.
    pub fn read_only(&self) -> bool {
        self.opts.read_only
    }

    /// Apply a transaction (a list of ops) to the in-memory state and queue
    /// it for the next commit. The caller has validated the ops; a failure
    /// here is a bug.
    pub(crate) fn apply_txn(&self, m: &mut Meta, ops: Vec<Op>) -> Result<u64> {
        if self.opts.read_only {
            return Err(EngineError::ReadOnly);
        }
        self.check_poisoned()?;
        for op in &ops {
            let freed = m.state.apply(op).map_err(|e| EngineError::Other(format!("internal: {e}")))?;
            m.pending_frees.extend(freed);
        }
        self.temperature.note_ops(&ops);
        m.ticket += ops.len() as u64;
        self.counters.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
        m.pending.extend(ops);
        Ok(m.ticket)
    }

    /// Make every op applied so far durable (group commit; see the module doc).
    pub fn commit(&self) -> Result<()> {
        let target = self.meta().ticket;
        self.commit_upto(target)
    }

    /// Run `f` while no commit or checkpoint can run, so nothing writes a
    /// journal record, a root or a checkpoint copy meanwhile: how the scrub
    /// of a mounted pool reads those structures (`scrub::scrub_live`).
    pub(crate) fn with_commits_held<R>(&self, f: impl FnOnce() -> R) -> R {
        let _c = self.commit_lock();
        f()
    }

    /// Pass `r` on; an error of a metadata write poisons the pool (see `poisoned`).
    fn poison_on_err<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        r
    }

    /// True when a metadata write failed and the pool refuses changes
    /// until reopened (see `poisoned`); for health reports.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// Refuse changes after a failed metadata write (see `poisoned`).
    pub(crate) fn check_poisoned(&self) -> Result<()> {
        if self.is_poisoned() {
            return Err(EngineError::Other(
                "a metadata write failed earlier; the pool refuses changes until it is reopened".into(),
            ));
        }
        Ok(())
    }

    fn commit_upto(&self, target: u64) -> Result<()> {
        if self.opts.read_only {
            return Ok(());
        }
        self.check_poisoned()?;
        let mut c = self.commit_lock();
        self.poison_on_err(self.commit_locked(&mut c, target))
    }

    fn commit_locked(&self, c: &mut CommitState, target: u64) -> Result<()> {
        if c.durable_ticket >= target {
            return Ok(());
        }
        self.gather();
        let started = std::time::Instant::now();
        let r = self.commit_batch(c);
        self.last_commit_ns.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    /// Wait (bounded) for fsyncs that are still writing their data, so that
    /// their ops ride in this commit instead of paying for the next one.
    fn gather(&self) {
        if self.flushing.load(Ordering::Relaxed) == 0 {
            return;
        }
        let window = std::time::Duration::from_nanos(self.last_commit_ns.load(Ordering::Relaxed)).min(GATHER_MAX);
        let start = std::time::Instant::now();
        while self.flushing.load(Ordering::Relaxed) > 0 && start.elapsed() < window {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// Commit everything queued now: data syncs, one journal record, frees.
    fn commit_batch(&self, c: &mut CommitState) -> Result<()> {
        let (ops, frees, dirty, ticket) = {
            let mut m = self.meta();
            (
                std::mem::take(&mut m.pending),
                std::mem::take(&mut m.pending_frees),
                std::mem::take(&mut m.dirty_data),
                m.ticket,
            )
        };
        if ops.is_empty() {
            self.sync_members(dirty.iter().copied())?;
            c.durable_ticket = ticket;
            return Ok(());
        }
        self.sync_members(dirty.iter().copied())?;
        let payload = postcard::to_stdvec(&ops).map_err(|e| EngineError::Other(format!("encode ops: {e}")))?;
        let copies = c.copies.clone();
        let writer = c.writer.as_mut().ok_or(EngineError::ReadOnly)?;
        match writer.append(&copies, &payload, now_ns() as u64) {
            Ok(_) => {
                self.counters.device_syncs.fetch_add(copies.len() as u64, Ordering::Relaxed);
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(JournalError::Full { .. }) => {
                // The checkpoint captures the state, these ops included.
                return self.checkpoint_locked_with(c, frees);
            }
            Err(JournalError::Device(e)) => return Err(e.into()),
        }
        c.durable_ticket = ticket;
        self.release_frees(frees);
        let w = c.writer.as_ref().expect("writer");
        if w.used() as f64 > w.len() as f64 * self.opts.checkpoint_at {
            self.checkpoint_locked(c)?;
        }
        Ok(())
    }

    fn release_frees(&self, frees: Vec<FragLoc>) {
        let mut m = self.meta();
        for f in frees {
            if let Some(Some(a)) = m.allocs.get_mut(f.member as usize) {
                let _ = a.free(Run { start: f.block, len: f.blocks as u64 });
            }
        }
    }

    pub(crate) fn sync_members(&self, members: impl Iterator<Item = u32>) -> Result<()> {
        let devs: Vec<Arc<dyn Device>> =
            members.filter_map(|i| self.members.get(i as usize).cloned().flatten()).map(|m| m.dev).collect();
        self.counters.device_syncs.fetch_add(devs.len() as u64, Ordering::Relaxed);
        std::thread::scope(|s| -> Result<()> {
            let hs: Vec<_> = devs.iter().map(|d| s.spawn(move || d.sync())).collect();
            let mut first = None;
            for h in hs {
                if let Err(e) = h.join().expect("sync thread panicked") {
                    first.get_or_insert(e);
                }
            }
            first.map_or(Ok(()), |e| Err(e.into()))
        })
    }

    /// Write a checkpoint now (see the module doc).
    pub fn checkpoint(&self) -> Result<()> {
        if self.opts.read_only {
            return Err(EngineError::ReadOnly);
        }
        self.check_poisoned()?;
        self.flush_temperature()?;
        let mut c = self.commit_lock();
        self.poison_on_err(self.checkpoint_locked(&mut c))
    }

    fn checkpoint_locked(&self, c: &mut CommitState) -> Result<()> {
        self.checkpoint_locked_with(c, Vec::new())
    }

    fn checkpoint_locked_with(&self, c: &mut CommitState, mut frees: Vec<FragLoc>) -> Result<()> {
        // Snapshot the state (every applied op) and what data must be synced first.
        let (bytes, dirty, ticket, locs, member_count, removed) = {
            let mut m = self.meta();
            // Members that left the pool get no checkpoint and no root.
            let removed: BTreeSet<u32> =
                m.state.members.iter().filter(|r| r.state == MemberState::Removed).map(|r| r.index).collect();
            // Members the pool has, not the ones opened (the last may be missing).
            let member_count = self.members.len().max(m.state.members.len()) as u32;
            m.pending.clear();
            frees.append(&mut m.pending_frees);
            let dirty = std::mem::take(&mut m.dirty_data);
            let bytes = m.state.encode_checkpoint()?;
            let mut locs = Vec::new();
            for copy in c.copies.iter().filter(|x| !removed.contains(&x.member)) {
                let Some(Some(mem)) = self.members.get(copy.member as usize) else { continue };
                let bs = mem.layout.block_size as u64;
                let blocks = 1 + (bytes.len() as u64).div_ceil(bs);
                let Some(Some(a)) = m.allocs.get_mut(copy.member as usize) else { continue };
                if let Ok(run) = a.allocate(blocks) {
                    locs.push((copy.member, run));
                }
            }
            (bytes, dirty, m.ticket, locs, member_count, removed)
        };
        if locs.is_empty() {
            return Err(EngineError::NoSpace("no member has room for a metadata checkpoint".into()));
        }
        self.sync_members(dirty.iter().copied())?;
        let gen = c.root_gen + 1;
        let id = uuid::Uuid::new_v4();
        let hash = *blake3::hash(&bytes).as_bytes();
        let policy = Policy::Replication { copies: locs.len() as u8 };
        let mut copies = Vec::new();
        let mut first_err = None;
        for (i, (member, run)) in locs.iter().enumerate() {
            let mem = self.members[*member as usize].as_ref().expect("present");
            let bs = mem.layout.block_size as usize;
            let header = FragmentHeader {
                kind: FragmentKind::Checkpoint,
                pool_uuid: self.uuid,
                extent_uuid: id,
                fragment_index: i as u16,
                fragment_count: locs.len() as u16,
                policy,
                payload_len: bytes.len() as u32,
                extent_len: bytes.len() as u32,
                generation: gen,
                created_ns: now_ns() as u64,
                payload_blake3: hash,
                extent_blake3: hash,
            };
            let mut buf = AlignedBuf::zeroed(run.len as usize * bs);
            buf[..FRAGMENT_HEADER_LEN].copy_from_slice(&header.encode());
            buf[bs..bs + bytes.len()].copy_from_slice(&bytes);
            let offset = mem.layout.data_offset(run.start);
            let res = mem.dev.write_at(offset, &buf).and_then(|_| mem.dev.sync());
            self.counters.device_syncs.fetch_add(1, Ordering::Relaxed);
            match res {
                Ok(()) => copies.push(CheckpointLocator { member_index: *member, offset, len: run.len * bs as u64 }),
                Err(e) => {
                    tracing::warn!("checkpoint copy on {} failed: {e}", mem.dev.identity());
                    self.release_frees(vec![FragLoc { member: *member, blocks: run.len as u32, block: run.start }]);
                    first_err.get_or_insert(e);
                }
            }
        }
        if copies.is_empty() {
            return Err(first_err
                .map(Into::into)
                .unwrap_or_else(|| EngineError::Other("no checkpoint copy written".into())));
        }
        let w = c.writer.as_ref().ok_or(EngineError::ReadOnly)?;
        let head = w.head();
        let root = RootRecord {
            pool_uuid: self.uuid,
            generation: gen,
            timestamp_ns: now_ns() as u64,
            journal_seq: head.seq,
            journal_offset: head.offset,
            member_count,
            journal_len: w.len(),
            journal_block_size: w.block_size(),
            checkpoint: Some(CheckpointRef { id, len: bytes.len() as u64, blake3: hash, copies }),
        };
        let encoded = root.encode();
        let mut ok = 0;
        let mut first_err = None;
        for mem in self.members.iter().flatten().filter(|x| !removed.contains(&x.index)) {
            let slot = gen % mem.layout.root_slots();
            let res = write_block_padded(mem.dev.as_ref(), mem.layout.root_slot_offset(slot), &encoded)
                .and_then(|_| mem.dev.sync().map_err(Into::into));
            self.counters.device_syncs.fetch_add(1, Ordering::Relaxed);
            match res {
                Ok(()) => ok += 1,
                Err(e) => {
                    tracing::warn!("root write on {} failed: {e}", mem.dev.identity());
                    first_err.get_or_insert(e);
                }
            }
        }
        if ok == 0 {
            return Err(first_err.unwrap_or_else(|| EngineError::Other("no member accepted the new root".into())));
        }
        // The new root is durable: the old checkpoint and the frees are released.
        if let Some(old) = c.checkpoint.take() {
            for l in old.copies {
                if let Some(Some(mem)) = self.members.get(l.member_index as usize) {
                    let bs = mem.layout.block_size as u64;
                    let data = mem.layout.region(RegionKind::Data);
                    frees.push(FragLoc {
                        member: l.member_index,
                        blocks: l.len.div_ceil(bs) as u32,
                        block: (l.offset - data.start) / bs,
                    });
                }
            }
        }
        c.checkpoint = root.checkpoint.clone();
        c.root_gen = gen;
        if let Some(w) = c.writer.as_mut() {
            w.set_tail(head.offset);
        }
        c.durable_ticket = ticket;
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.release_frees(frees);
        Ok(())
    }

    /// Member `index` has left the pool (recorded `Removed` and committed):
    /// stop writing journal records and roots to it and write a checkpoint
    /// that no longer lives there (`rebuild.rs`, remove-disk).
    pub(crate) fn retire_member(&self, index: u32) -> Result<()> {
        self.check_poisoned()?;
        let gone: BTreeSet<u32> = {
            let m = self.meta();
            m.state.members.iter().filter(|r| r.state != MemberState::Online).map(|r| r.index).collect()
        };
        let mut c = self.commit_lock();
        let before = c.copies.len();
        c.copies.retain(|x| x.member != index);
        if c.copies.len() < before {
            // Keep the number of journal copies: the next online member that
            // has none takes one (its region is written from the head on; the
            // checkpoint below makes older records irrelevant).
            let jlen = c.writer.as_ref().map(|w| w.len()).unwrap_or(0);
            let spare = self.members.iter().flatten().find(|mem| {
                !gone.contains(&mem.index)
                    && !c.copies.iter().any(|x| x.member == mem.index)
                    && mem.layout.region(RegionKind::Journal).len >= jlen
            });
            if let Some(mem) = spare {
                c.copies.push(JournalCopy::on(mem.index, mem.dev.clone(), &mem.layout));
            }
        }
        self.poison_on_err(self.checkpoint_locked(&mut c))
    }

    /// Length of the journal (bytes), as the root record fixes it.
    pub(crate) fn journal_len(&self) -> u64 {
        self.commit_lock().writer.as_ref().map(|w| w.len()).unwrap_or(0)
    }

    /// Blocks held by the current checkpoint, per member index.
    /// Takes the commit lock: never call with the meta lock held.
    pub fn checkpoint_blocks(&self) -> Vec<u64> {
        let c = self.commit_lock();
        let mut out = vec![0u64; self.members.len()];
        for l in c.checkpoint.iter().flat_map(|c| c.copies.iter()) {
            if let (Some(slot), Some(Some(m))) =
                (out.get_mut(l.member_index as usize), self.members.get(l.member_index as usize))
            {
                *slot += l.len.div_ceil(m.layout.block_size as u64);
            }
        }
        out
    }

    /// Flush every buffered file, commit, and write a final checkpoint.
    pub fn close(self) -> Result<()> {
        if !self.opts.read_only {
            self.sync_all()?;
            self.checkpoint()?;
        }
        Ok(())
    }
}

fn journal_copies(members: &[Option<Member>], jlen: u64) -> Vec<JournalCopy> {
    members
        .iter()
        .flatten()
        .filter(|m| m.layout.region(RegionKind::Journal).len >= jlen)
        .take(METADATA_COPIES)
        .map(|m| JournalCopy::on(m.index, m.dev.clone(), &m.layout))
        .collect()
}

/// The state of the first good copy, and what was wrong with the copies tried before it.
fn read_checkpoint(members: &[Option<Member>], pool: uuid::Uuid, c: &CheckpointRef) -> Result<(State, Vec<String>)> {
    let mut errors = Vec::new();
    for l in &c.copies {
        let Some(Some(m)) = members.get(l.member_index as usize) else {
            errors.push(format!("member {} missing", l.member_index));
            continue;
        };
        let bs = m.layout.block_size as usize;
        if l.len > m.layout.size || l.len < bs as u64 + c.len {
            errors.push(format!("{}: checkpoint locator out of range", m.dev.identity()));
            continue;
        }
        let mut buf = AlignedBuf::zeroed(l.len as usize);
        if let Err(e) = m.dev.read_at(l.offset, &mut buf) {
            errors.push(e.to_string());
            continue;
        }
        let h = match FragmentHeader::decode(&buf) {
            Ok(h) => h,
            Err(e) => {
                errors.push(format!("{}: checkpoint header: {e}", m.dev.identity()));
                continue;
            }
        };
        if h.pool_uuid != pool || h.extent_uuid != c.id || h.payload_len as u64 != c.len {
            errors.push(format!("{}: checkpoint header names another object", m.dev.identity()));
            continue;
        }
        let bytes = &buf[bs..bs + c.len as usize];
        if blake3::hash(bytes).as_bytes() != &c.blake3 {
            errors.push(format!("{}: checkpoint BLAKE3 mismatch", m.dev.identity()));
            continue;
        }
        let state = State::decode_checkpoint(bytes)?;
        return Ok((state, errors));
    }
    Err(corrupted(format!("no readable checkpoint copy: {}", errors.join("; "))))
}
