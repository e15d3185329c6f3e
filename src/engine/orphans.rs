//! # Orphan GC: find, explain and erase fragments nothing references
//!
//! Owns `detect-orphans`, `orphan-stats` and `cleanup-orphans`. Fragment
//! headers make every fragment findable without the metadata; the walk is
//! fsck's ([`crate::fsck::scan_unreferenced`]: every data block of every
//! member, judged against the committed extent table and the live
//! checkpoint). Three kinds come out, each explained:
//!
//! - **orphan**: a fragment of an extent the extent table does not have —
//!   the write of an extent whose commit never happened (a crash between
//!   "fragments synced" and "record committed"), or a deleted extent's;
//! - **stale fragment**: an old copy of a live extent's fragment, left where
//!   a repair or migration moved it from;
//! - **stale checkpoint**: a superseded checkpoint copy (every checkpoint
//!   leaves one behind).
//!
//! Allocation is derived from the metadata at open (docs/DECISIONS.md), so
//! all three already lie in free space and would simply be overwritten;
//! "freeing" one means erasing its header block, so that no tool ever
//! mistakes it for data again and the space reads as empty.
//!
//! It must never erase a block a committed extent or the live checkpoint
//! references (the walk skips every referenced run), nor one an in-flight
//! transaction may still commit. Two ways to get there:
//!
//! - **Unmounted** ([`detect`], [`cleanup`]): the pool is held under its
//!   pool lock for the whole run — nothing is in flight then — and judged
//!   against the committed metadata on disk; refused when that metadata
//!   did not load cleanly (an unreadable checkpoint would make everything
//!   look unreferenced).
//! - **Mounted** ([`detect_live`], [`cleanup_live`], the mount's control
//!   methods `orphans.detect` / `orphans.stats` / `orphans.cleanup`): the
//!   judge is the open pool's **allocators**, not the disk. Every fragment
//!   anything may still commit holds its blocks there: a write-behind
//!   extent from placement until its commit (or until its failure gives
//!   them back), a committed one until the commit that drops it is
//!   *durable* (frees are deferred), a repair, rebuild, drain, migration or
//!   change-policy fragment from its allocation on, a checkpoint while it
//!   is live. So a header whose whole run is free in the allocator is one
//!   nothing in this process can commit, and nothing on disk references
//!   (allocation is derived from the metadata at open). Headers in used
//!   runs that no committed fragment starts at are counted as `in_flight`
//!   and kept. The erase itself is guarded against the walk going stale:
//!   under the metadata lock the run is *reserved* (`mark_used`, which fails
//!   if anyone allocated a block of it since), the header is read again and
//!   must be the one judged, then zeroed, synced, and the run given back.
//!   No writer can be handed a reserved run, so no new header is ever
//!   erased.
//!
//! `min_age` keeps fragments younger than it (by the header's write time)
//! in both modes.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::lock::{PoolLock, DEFAULT_LOCK_DIR};
use super::pool::now_ns;
use super::EngineError;
use super::Pool;
use crate::device::{AlignedBuf, Device};
use crate::fsck::{self, FsckError, Unreferenced, UnreferencedKind};
use crate::member::{self, FragmentScanOptions};
use dfs_alloc::{BlockState, Run};
use dfs_format::fragment::FragmentKind;
use dfs_format::{FragmentHeader, Layout, FRAGMENT_HEADER_LEN};

/// One unreferenced fragment, explained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrphanInfo {
    pub kind: UnreferencedKind,
    pub member: u32,
    pub device: String,
    pub block: u64,
    pub blocks: u64,
    pub bytes: u64,
    pub offset: u64,
    pub extent: Uuid,
    pub fragment_index: u16,
    pub generation: u64,
    pub created_ns: u64,
    /// Seconds since the header was written (0 if its clock was ahead).
    pub age_secs: u64,
    /// Why it is unreferenced, in words.
    pub why: String,
}

/// What `detect-orphans` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrphanReport {
    pub pool_uuid: Uuid,
    /// The metadata loaded cleanly: the list can be acted on.
    pub trustworthy: bool,
    pub problems: Vec<String>,
    pub blocks_examined: u64,
    pub orphans: Vec<OrphanInfo>,
    /// Mounted pools only: headers in runs the engine still holds that no
    /// committed fragment starts at (in-flight writes, repairs,
    /// migrations, frees not yet durable): kept, never listed as orphans.
    #[serde(default)]
    pub in_flight: u64,
}

/// Totals by kind and member (`orphan-stats`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OrphanStats {
    pub fragments: u64,
    pub bytes: u64,
    pub by_kind: BTreeMap<String, (u64, u64)>,
    pub by_member: BTreeMap<u32, (u64, u64)>,
    pub oldest_secs: u64,
    pub newest_secs: u64,
}

fn kind_name(k: UnreferencedKind) -> &'static str {
    match k {
        UnreferencedKind::Orphan => "orphan",
        UnreferencedKind::StaleFragment => "stale_fragment",
        UnreferencedKind::StaleCheckpoint => "stale_checkpoint",
    }
}

fn explain(u: &Unreferenced, bs: u64, device: String, now: i64) -> OrphanInfo {
    let why = match u.kind {
        UnreferencedKind::Orphan => format!(
            "extent {} is not in the committed extent table (its commit never happened, or it was deleted)",
            u.extent
        ),
        UnreferencedKind::StaleFragment => format!(
            "an old copy of fragment {} of live extent {}: the extent now lives elsewhere (moved by a repair or migration)",
            u.fragment_index, u.extent
        ),
        UnreferencedKind::StaleCheckpoint => format!("checkpoint {} was superseded by a newer one", u.extent),
    };
    let age = (now - u.created_ns as i64).max(0) as u64 / 1_000_000_000;
    OrphanInfo {
        kind: u.kind,
        member: u.member,
        device,
        block: u.block,
        blocks: u.blocks,
        bytes: u.blocks * bs,
        offset: u.offset,
        extent: u.extent,
        fragment_index: u.fragment_index,
        generation: u.generation,
        created_ns: u.created_ns,
        age_secs: age,
        why,
    }
}

fn report_of(scan: &fsck::UnreferencedScan) -> OrphanReport {
    let now = now_ns();
    let orphans = scan
        .found
        .iter()
        .map(|u| {
            let (dev, layout) = &scan.members[&u.member];
            explain(u, layout.block_size as u64, dev.identity().to_string(), now)
        })
        .collect();
    OrphanReport {
        pool_uuid: scan.pool_uuid,
        trustworthy: scan.trustworthy,
        problems: scan.problems.clone(),
        blocks_examined: scan.blocks_examined,
        orphans,
        in_flight: 0,
    }
}

/// `detect-orphans`: walk every member's data region (read-only).
pub fn detect(devices: &[Arc<dyn Device>]) -> Result<OrphanReport, FsckError> {
    Ok(report_of(&fsck::scan_unreferenced(devices)?))
}

/// `orphan-stats`: totals of a report.
pub fn stats(r: &OrphanReport) -> OrphanStats {
    let mut s = OrphanStats { oldest_secs: 0, newest_secs: u64::MAX, ..Default::default() };
    for o in &r.orphans {
        s.fragments += 1;
        s.bytes += o.bytes;
        let k = s.by_kind.entry(kind_name(o.kind).to_string()).or_default();
        k.0 += 1;
        k.1 += o.bytes;
        let m = s.by_member.entry(o.member).or_default();
        m.0 += 1;
        m.1 += o.bytes;
        s.oldest_secs = s.oldest_secs.max(o.age_secs);
        s.newest_secs = s.newest_secs.min(o.age_secs);
    }
    if s.fragments == 0 {
        s.newest_secs = 0;
    }
    s
}

/// How to clean up.
#[derive(Debug, Clone, Default)]
pub struct CleanupOptions {
    /// Keep fragments written less than this long ago.
    pub min_age: Duration,
    /// Say what would be erased; write nothing.
    pub dry_run: bool,
    /// Where pool lock files live (default `/run/dfs`).
    pub lock_dir: Option<PathBuf>,
}

/// What `cleanup-orphans` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CleanupReport {
    pub pool_uuid: Uuid,
    pub dry_run: bool,
    pub min_age_secs: u64,
    pub erased: Vec<OrphanInfo>,
    pub erased_bytes: u64,
    /// Kept because younger than `min_age`.
    pub kept_young: Vec<OrphanInfo>,
    /// Erases that failed (with the error).
    pub failed: Vec<(OrphanInfo, String)>,
    /// Unreferenced fragments of kind orphan still there afterwards.
    pub remaining_orphans: u64,
    /// Mounted pools only: headers kept because the engine holds their
    /// blocks (see [`OrphanReport::in_flight`]), and candidates skipped
    /// because their run was allocated or their header rewritten between
    /// the walk and the erase.
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub raced: u64,
}

/// Why a cleanup was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CleanupError {
    #[error(transparent)]
    Fsck(#[from] FsckError),
    #[error("pool {pool}: the metadata did not load cleanly, so nothing is erased: {problems}")]
    Untrustworthy { pool: Uuid, problems: String },
}

impl From<CleanupError> for FsckError {
    fn from(e: CleanupError) -> FsckError {
        match e {
            CleanupError::Fsck(f) => f,
            other => FsckError::Lock(other.to_string()),
        }
    }
}

/// `cleanup-orphans`: erase the header block of every unreferenced fragment
/// at least `min_age` old, on an unmounted pool held under its lock (see
/// the module doc). Devices must be open read-write unless `dry_run`.
pub fn cleanup(devices: &[Arc<dyn Device>], opts: &CleanupOptions) -> Result<CleanupReport, CleanupError> {
    let first = fsck::scan_unreferenced(devices)?;
    let lock_dir = opts.lock_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_LOCK_DIR));
    let _lock = if opts.dry_run {
        None
    } else {
        match PoolLock::acquire(&lock_dir, first.pool_uuid) {
            Ok(l) => Some(l),
            Err(EngineError::PoolInUse { pool, pid, lock }) => {
                return Err(FsckError::PoolInUse { pool, pid, lock }.into())
            }
            Err(e) => return Err(FsckError::Lock(e.to_string()).into()),
        }
    };
    // Judge again under the lock: nothing can change it from now on.
    let scan = if opts.dry_run { first } else { fsck::scan_unreferenced(devices)? };
    if !scan.trustworthy {
        return Err(CleanupError::Untrustworthy { pool: scan.pool_uuid, problems: scan.problems.join("; ") });
    }
    let report = report_of(&scan);
    let min_age = opts.min_age.as_secs();
    let mut out = CleanupReport {
        pool_uuid: scan.pool_uuid,
        dry_run: opts.dry_run,
        min_age_secs: min_age,
        erased: Vec::new(),
        erased_bytes: 0,
        kept_young: Vec::new(),
        failed: Vec::new(),
        remaining_orphans: 0,
        in_flight: 0,
        raced: 0,
    };
    let mut touched: BTreeMap<u32, ()> = BTreeMap::new();
    for o in report.orphans {
        if o.age_secs < min_age {
            out.kept_young.push(o);
            continue;
        }
        if !opts.dry_run {
            let (dev, layout) = &scan.members[&o.member];
            let zero = AlignedBuf::zeroed(layout.block_size as usize);
            if let Err(e) = member::write_bytes(dev.as_ref(), o.offset, &zero) {
                out.failed.push((o, e.to_string()));
                continue;
            }
            touched.insert(o.member, ());
        }
        out.erased_bytes += o.bytes;
        out.erased.push(o);
    }
    for m in touched.keys() {
        let (dev, _) = &scan.members[m];
        if let Err(e) = dev.sync() {
            let who = dev.identity().to_string();
            for (o, err) in
                out.erased.iter().filter(|o| o.member == *m).map(|o| (o.clone(), format!("{who}: sync: {e}")))
            {
                out.failed.push((o, err));
            }
        }
    }
    if !opts.dry_run {
        let after = fsck::scan_unreferenced(devices)?;
        out.remaining_orphans = after.found.iter().filter(|u| u.kind == UnreferencedKind::Orphan).count() as u64;
    } else {
        out.remaining_orphans =
            out.erased.iter().chain(&out.kept_young).filter(|o| o.kind == UnreferencedKind::Orphan).count() as u64;
    }
    Ok(out)
}

/// A candidate of a mounted pool's GC: what was judged, to be checked
/// again at the erase.
struct LiveCandidate {
    info: OrphanInfo,
    run: Run,
    header: FragmentHeader,
}

/// Walk every present member of the open `pool` (no lock held), then judge
/// each header of this pool under the metadata lock against the
/// allocators (see the module doc).
fn live_scan(pool: &Pool) -> (OrphanReport, Vec<LiveCandidate>) {
    let members: Vec<(u32, Arc<dyn Device>, Layout)> =
        pool.members().iter().flatten().map(|m| (m.index, m.dev.clone(), m.layout.clone())).collect();
    let walked: Vec<(u32, Result<member::FragmentScan, String>)> = std::thread::scope(|s| {
        let hs: Vec<_> = members
            .iter()
            .map(|(i, dev, layout)| {
                s.spawn(move || {
                    let r = member::scan_fragments(dev.as_ref(), layout, None, FragmentScanOptions::default());
                    (*i, r.map_err(|e| format!("{}: {e}", dev.identity())))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let now = now_ns();
    let mut report = OrphanReport {
        pool_uuid: pool.uuid(),
        trustworthy: !pool.is_poisoned(),
        problems: Vec::new(),
        blocks_examined: 0,
        orphans: Vec::new(),
        in_flight: 0,
    };
    if pool.is_poisoned() {
        report.problems.push("a metadata write failed: the pool refuses changes until it is mounted again".into());
    }
    let mut cands = Vec::new();
    let m = pool.meta();
    let committed: HashSet<(u32, u64)> = m.state.all_fragments().map(|(_, _, f)| (f.member, f.block)).collect();
    for (index, scan) in walked {
        let scan = match scan {
            Ok(s) => s,
            Err(e) => {
                report.problems.push(format!("member {index}: walk failed: {e}"));
                continue;
            }
        };
        report.blocks_examined += scan.blocks_examined;
        let Some((_, dev, layout)) = members.iter().find(|(i, _, _)| *i == index) else { continue };
        // A member without an allocator (failed, leaving) is not judged.
        let Some(Some(alloc)) = m.allocs.get(index as usize) else { continue };
        for f in scan.fragments.iter().filter(|f| f.header.pool_uuid == pool.uuid()) {
            let len = (1 + f.payload_blocks).min(scan.data_blocks.saturating_sub(f.block)).max(1);
            let free = (f.block..f.block + len).all(|b| matches!(alloc.block_state(b), Ok(BlockState::Free)));
            if !free {
                if f.header.kind == FragmentKind::Extent && !committed.contains(&(index, f.block)) {
                    report.in_flight += 1;
                }
                continue;
            }
            // The live checkpoint's copies are allocated, so never get here.
            let Some(u) = Unreferenced::judge(index, f, &m.state, None) else { continue };
            let info = explain(&u, layout.block_size as u64, dev.identity().to_string(), now);
            report.orphans.push(info.clone());
            cands.push(LiveCandidate { info, run: Run { start: f.block, len }, header: f.header.clone() });
        }
    }
    (report, cands)
}

/// `detect-orphans` on a mounted (open, read-write or not) pool.
pub fn detect_live(pool: &Pool) -> OrphanReport {
    live_scan(pool).0
}

/// `cleanup-orphans` on a mounted pool: erase the header block of every
/// unreferenced fragment at least `min_age` old that nothing in flight
/// holds (see the module doc for the guard). `lock_dir` is not used.
pub fn cleanup_live(pool: &Pool, opts: &CleanupOptions) -> Result<CleanupReport, EngineError> {
    if !opts.dry_run {
        if pool.read_only() {
            return Err(EngineError::ReadOnly);
        }
        pool.check_poisoned()?;
    }
    let (report, cands) = live_scan(pool);
    let mut out = CleanupReport {
        pool_uuid: report.pool_uuid,
        dry_run: opts.dry_run,
        min_age_secs: opts.min_age.as_secs(),
        erased: Vec::new(),
        erased_bytes: 0,
        kept_young: Vec::new(),
        failed: Vec::new(),
        remaining_orphans: 0,
        in_flight: report.in_flight,
        raced: 0,
    };
    let mut reserved: Vec<(u32, Run)> = Vec::new();
    let mut touched: BTreeMap<u32, Arc<dyn Device>> = BTreeMap::new();
    for c in cands {
        if c.info.age_secs < out.min_age_secs {
            out.kept_young.push(c.info);
            continue;
        }
        if opts.dry_run {
            out.erased_bytes += c.info.bytes;
            out.erased.push(c.info);
            continue;
        }
        let member = c.info.member;
        // Reserve the run: fails when anything allocated a block of it
        // since the walk.
        let taken = match pool.meta().allocs.get_mut(member as usize) {
            Some(Some(a)) => a.mark_used(c.run).is_ok(),
            _ => false,
        };
        if !taken {
            out.raced += 1;
            continue;
        }
        reserved.push((member, c.run));
        let Some(Some(m)) = pool.members().get(member as usize) else { continue };
        let dev = m.dev.clone();
        let bs = m.layout.block_size as usize;
        // The header must still be the one judged.
        let same = member::read_bytes(dev.as_ref(), c.info.offset, bs)
            .ok()
            .and_then(|b| FragmentHeader::decode(&b[..FRAGMENT_HEADER_LEN.min(b.len())]).ok())
            .is_some_and(|h| h == c.header);
        if !same {
            out.raced += 1;
            continue;
        }
        if let Err(e) = member::write_bytes(dev.as_ref(), c.info.offset, &AlignedBuf::zeroed(bs)) {
            out.failed.push((c.info, format!("{}: {e}", dev.identity())));
            continue;
        }
        touched.insert(member, dev);
        out.erased_bytes += c.info.bytes;
        out.erased.push(c.info);
    }
    for (member, dev) in &touched {
        if let Err(e) = dev.sync() {
            let err = format!("{}: sync: {e}", dev.identity());
            let hit: Vec<OrphanInfo> = out.erased.iter().filter(|o| o.member == *member).cloned().collect();
            out.failed.extend(hit.into_iter().map(|o| (o, err.clone())));
        }
    }
    // Give the reserved runs back: nothing references them.
    {
        let mut m = pool.meta();
        for (member, run) in reserved {
            if let Some(Some(a)) = m.allocs.get_mut(member as usize) {
                let _ = a.free(run);
            }
        }
    }
    out.remaining_orphans = if opts.dry_run {
        out.erased.iter().chain(&out.kept_young).filter(|o| o.kind == UnreferencedKind::Orphan).count() as u64
    } else {
        live_scan(pool).0.orphans.iter().filter(|o| o.kind == UnreferencedKind::Orphan).count() as u64
    };
    Ok(out)
}
