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
//! transaction may still commit. Cleanup therefore runs only on an
//! **unmounted** pool held under its pool lock for the whole run — nothing
//! is in flight then — and refuses when the metadata did not load cleanly
//! (an unreadable checkpoint would make everything look unreferenced).
//! `min_age` keeps fragments younger than it (by the header's write time),
//! the guard a mounted pool's GC will also need.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use super::lock::{PoolLock, DEFAULT_LOCK_DIR};
use super::pool::now_ns;
use super::EngineError;
use crate::device::{AlignedBuf, Device};
use crate::fsck::{self, FsckError, Unreferenced, UnreferencedKind};
use crate::member;

/// One unreferenced fragment, explained.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
pub struct OrphanReport {
    pub pool_uuid: Uuid,
    /// The metadata loaded cleanly: the list can be acted on.
    pub trustworthy: bool,
    pub problems: Vec<String>,
    pub blocks_examined: u64,
    pub orphans: Vec<OrphanInfo>,
}

/// Totals by kind and member (`orphan-stats`).
#[derive(Debug, Clone, Default, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
