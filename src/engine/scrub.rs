//! # Scrub: read every fragment, judge it, rebuild the bad ones
//!
//! Owns two things, both built on the checks `fsck` already has (one
//! judge of a fragment: [`crate::fsck::check_fragment_at`]):
//!
//! - [`scrub_extent`]: one extent of an **open** pool (the scrub daemon's
//!   unit of work, `scrub_daemon.rs`): every fragment is read from its
//!   member, its header judged against the extent table and its payload
//!   hashed; with `repair`, the bad or missing ones are rebuilt from the
//!   good ones by [`repair_extent`] — the engine's lazy repair, which writes
//!   each rebuilt fragment at a new location and switches over by a
//!   journaled `MoveExtent` (never an overwrite in place).
//! - [`scrub_pool`]: a whole **unmounted** pool (`dfs scrub`): superblocks
//!   (both copies), every root ring slot, every journal copy, the checkpoint
//!   copies, every fragment with its payload, and the data-region walk for
//!   leaked blocks — that is `fsck --data -f` ([`crate::fsck::check_pool`]),
//!   reported as a scrub report (extents and bytes checked, errors by kind
//!   and member, repaired, unrepairable with the files they belong to).
//!   With `repair` it repairs as `fsck -y` does and then erases leaked
//!   fragment headers (`orphans::cleanup`: nothing is in flight on an
//!   unmounted pool held under its lock).
//!
//! It must never: return or write bytes that were not verified against the
//! extent's BLAKE3; write over a fragment still referenced; hold the
//! metadata lock while reading devices (a mounted pool keeps serving).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;

use super::data::FragFault;
use super::error::{EngineError, Result};
use super::pool::Pool;
use super::redundancy;
use super::state::MemberState;
use crate::device::Device;
use crate::fsck::{self, Finding, FragmentFault, FsckError, FsckOptions, Severity};

/// One bad fragment found by [`scrub_extent`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FragmentError {
    pub extent: Uuid,
    pub index: u32,
    pub member: u32,
    pub block: u64,
    /// Short kind: `payload`, `header`, `unreadable`, `absent`.
    pub kind: &'static str,
    pub detail: String,
}

/// What [`scrub_extent`] found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExtentScrub {
    /// Fragments read (or tried).
    pub fragments: u32,
    /// Payload bytes read and hashed (what a rate limit counts).
    pub bytes: u64,
    pub errors: Vec<FragmentError>,
    /// Bad fragments good again after the repair (checked, not assumed).
    pub repaired: u32,
    /// Too few good fragments to rebuild from, or the repair failed.
    pub unrepairable: bool,
    /// The extent was gone (deleted or overwritten) when its turn came.
    pub vanished: bool,
}

/// The short kind of a fragment fault, as scrub counts them.
pub fn fault_kind(f: &FragmentFault) -> &'static str {
    match f {
        FragmentFault::Absent => "absent",
        FragmentFault::Unreadable(_) => "unreadable",
        FragmentFault::BadHeader(_) | FragmentFault::Mismatch(_) => "header",
        FragmentFault::BadPayload => "payload",
    }
}

/// Judge every fragment of extent `id` as it is now; `None` if the extent
/// is gone. Reads happen without the metadata lock.
fn judge(pool: &Pool, id: u128) -> Option<(super::state::Extent, Vec<std::result::Result<u64, FragmentFault>>)> {
    let (e, failed) = {
        let m = pool.meta();
        let e = m.state.extents.get(&id)?.clone();
        let failed: Vec<bool> = e
            .frags
            .iter()
            .map(|f| m.state.members.get(f.member as usize).is_some_and(|r| r.state == MemberState::Failed))
            .collect();
        (e, failed)
    };
    let results = e
        .frags
        .iter()
        .enumerate()
        .map(|(i, f)| match pool.members.get(f.member as usize).and_then(|m| m.as_ref()) {
            Some(m) if !failed[i] => fsck::check_fragment_at(m.dev.as_ref(), &m.layout, pool.uuid, &e, i, f, true),
            _ => Err(FragmentFault::Absent),
        })
        .collect();
    Some((e, results))
}

/// What [`repair_extent`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct RepairOutcome {
    /// The extent was read (verified) through the engine.
    pub read: bool,
    /// Fragments handed to the engine's lazy repair.
    pub handed_to_repair: u64,
}

/// Read extent `id` through the engine (verified end to end; the read
/// repairs what it trips over), judge every fragment again, and hand the
/// ones still bad to the engine's lazy repair with the verified bytes. The
/// repair's `MoveExtent` is queued, not committed: the caller commits.
pub fn repair_extent(pool: &Pool, id: u128) -> Result<RepairOutcome> {
    let mut out = RepairOutcome::default();
    let Some(e) = pool.meta().state.extents.get(&id).cloned() else { return Ok(out) };
    let bytes = pool.read_extent(&e)?;
    out.read = true;
    let Some((e, results)) = judge(pool, id) else { return Ok(out) };
    let bad: Vec<(usize, FragFault)> =
        results.iter().enumerate().filter_map(|(i, r)| r.as_ref().err().map(|f| (i, fsck::frag_fault(f)))).collect();
    if bad.is_empty() {
        return Ok(out);
    }
    let frags = redundancy::encode(e.policy(), &bytes).map_err(|err| EngineError::Other(err.to_string()))?;
    let sources: Vec<Option<&[u8]>> =
        frags.iter().enumerate().map(|(i, f)| (!bad.iter().any(|(b, _)| *b == i)).then_some(f.bytes())).collect();
    pool.lazy_repair(&e, &bytes, &sources, &bad);
    out.handed_to_repair = bad.len() as u64;
    Ok(out)
}

/// Scrub one extent of an open pool: read and judge every fragment; with
/// `repair` (and a writable pool), rebuild the bad ones and judge again.
pub fn scrub_extent(pool: &Pool, id: u128, repair: bool) -> ExtentScrub {
    let mut out = ExtentScrub::default();
    let Some((e, results)) = judge(pool, id) else {
        out.vanished = true;
        return out;
    };
    let extent = Uuid::from_u128(id);
    for (i, r) in results.iter().enumerate() {
        out.fragments += 1;
        let loc = e.frags[i];
        match r {
            Ok(b) => out.bytes += b,
            Err(fault) => {
                if !matches!(fault, FragmentFault::Absent) {
                    out.bytes += redundancy::shard_len(e.policy(), e.len) as u64;
                    pool.counters.member_errors.note(loc.member);
                }
                out.errors.push(FragmentError {
                    extent,
                    index: i as u32,
                    member: loc.member,
                    block: loc.block,
                    kind: fault_kind(fault),
                    detail: fault.to_string(),
                });
            }
        }
    }
    if out.errors.is_empty() {
        return out;
    }
    let good = results.iter().filter(|r| r.is_ok()).count() as u32;
    if good < e.policy().fragments_needed() {
        out.unrepairable = true;
        return out;
    }
    if !repair || pool.read_only() {
        return out;
    }
    if let Err(err) = repair_extent(pool, id) {
        tracing::warn!(extent = %extent, "scrub: repair failed: {err}");
        out.unrepairable = true;
        return out;
    }
    match judge(pool, id) {
        None => out.vanished = true,
        Some((_, after)) => {
            let still = after.iter().filter(|r| r.is_err()).count() as u32;
            out.repaired = (out.errors.len() as u32).saturating_sub(still);
            out.unrepairable = still > 0;
        }
    }
    out
}

// ---------------------------------------------------------------- whole pool

/// How to scrub an unmounted pool.
#[derive(Clone, Default)]
pub struct ScrubOptions {
    /// Rebuild what can be rebuilt, erase leaked fragment headers.
    pub repair: bool,
    /// Where pool lock files live (default `/run/dfs`).
    pub lock_dir: Option<std::path::PathBuf>,
    /// (fragments done, fragments in all), for a progress line.
    pub progress: Option<fsck::Progress>,
}

/// One error found by [`scrub_pool`].
#[derive(Debug, Clone, Serialize)]
pub struct ScrubError {
    /// `payload`, `header`, `unreadable`, `absent`, `superblock`,
    /// `root_slot`, `root_ring`, `journal`, `checkpoint`, `member`,
    /// `extent_lost`, `leaked`, ... (see [`finding_kind`]).
    pub kind: String,
    /// The member it is on (`None`: the pool as a whole).
    pub member: Option<u32>,
    pub message: String,
    pub repaired: bool,
    /// What the repair did, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// Damage that no repair can undo, with the files it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct Unrepairable {
    pub what: String,
    pub files: Vec<String>,
}

/// The report of [`scrub_pool`]; serializes to `dfs scrub --json`.
#[derive(Debug, Clone, Serialize)]
pub struct ScrubReport {
    pub pool_uuid: Uuid,
    pub repair: bool,
    pub members_checked: u32,
    pub members: u32,
    pub extents_checked: u64,
    pub fragments_checked: u64,
    pub fragments_good: u64,
    pub bytes_checked: u64,
    pub data_blocks_walked: u64,
    pub errors: Vec<ScrubError>,
    /// Errors by kind, and by member (`pool` for pool-wide ones).
    pub errors_by_kind: BTreeMap<String, u64>,
    pub errors_by_member: BTreeMap<String, u64>,
    pub repaired: u64,
    pub leaked_fragments_erased: u64,
    pub unrepairable: Vec<Unrepairable>,
    /// True when no damage remains (all found was repaired, or none).
    pub clean: bool,
}

/// The kind of a finding, as a scrub report counts it.
pub fn finding_kind(f: &Finding) -> String {
    match f {
        Finding::Fragment { fault, .. } => fault_kind(fault).to_string(),
        Finding::SuperblockCopy { .. } => "superblock".into(),
        Finding::RootSlot { .. } => "root_slot".into(),
        Finding::RootRingStale { .. } | Finding::RootRingUnreadable { .. } | Finding::NoRoot => "root_ring".into(),
        Finding::JournalCopy { .. } => "journal".into(),
        Finding::CheckpointCopy { .. } | Finding::CheckpointLost { .. } => "checkpoint".into(),
        Finding::ExtentLost { .. } => "extent_lost".into(),
        Finding::Orphan { .. } => "leaked".into(),
        Finding::NotAMember { .. } | Finding::MemberMissing { .. } => "member".into(),
        other => other.structure().name().replace(' ', "_"),
    }
}

/// Scrub the unmounted pool whose members `devices` are (opened read-write
/// for a repair). Errors only when nothing could be checked.
pub fn scrub_pool(devices: &[Arc<dyn Device>], opts: &ScrubOptions) -> std::result::Result<ScrubReport, FsckError> {
    let fopts = FsckOptions {
        repair: opts.repair,
        force: true,
        verify_data: true,
        lock_dir: opts.lock_dir.clone(),
        progress: opts.progress.clone(),
        ..Default::default()
    };
    let r = fsck::check_pool(devices, &fopts)?;
    let mut errors = Vec::new();
    let mut unrepairable = Vec::new();
    let mut leaked = 0u64;
    for f in &r.findings {
        // Leaked fragments are notes for fsck (allocation is derived from
        // the metadata, so they are free); for scrub they are damage to
        // clean up, so they count.
        let is_leak = matches!(f.finding, Finding::Orphan { .. });
        if f.severity == Severity::Info && !is_leak {
            continue;
        }
        if is_leak {
            leaked += 1;
        }
        if let Finding::ExtentLost { extent, files, good, needed } = &f.finding {
            unrepairable.push(Unrepairable {
                what: format!("extent {extent}: {good} good fragments of {needed} needed"),
                files: files.clone(),
            });
        }
        errors.push(ScrubError {
            kind: finding_kind(&f.finding),
            member: f.member,
            message: f.message.clone(),
            repaired: f.severity == Severity::Corrected,
            action: f.action.clone(),
        });
    }
    let mut erased = 0u64;
    if opts.repair && leaked > 0 {
        let c = super::orphans::cleanup(
            devices,
            &super::orphans::CleanupOptions { lock_dir: opts.lock_dir.clone(), ..Default::default() },
        )?;
        erased = c.erased.iter().filter(|u| u.kind == fsck::UnreferencedKind::Orphan).count() as u64;
        if c.failed.is_empty() && c.remaining_orphans == 0 {
            for e in errors.iter_mut().filter(|e| e.kind == "leaked") {
                e.repaired = true;
                e.action = Some("fragment header erased (the blocks were already free)".into());
            }
        }
    }
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_member: BTreeMap<String, u64> = BTreeMap::new();
    for e in &errors {
        *by_kind.entry(e.kind.clone()).or_default() += 1;
        *by_member.entry(e.member.map(|m| m.to_string()).unwrap_or_else(|| "pool".into())).or_default() += 1;
    }
    let repaired = errors.iter().filter(|e| e.repaired).count() as u64;
    let clean = errors.iter().all(|e| e.repaired);
    Ok(ScrubReport {
        pool_uuid: r.pool_uuid,
        repair: opts.repair,
        members_checked: r.stats.members_present,
        members: r.stats.members.max(r.stats.members_present),
        extents_checked: r.stats.extents,
        fragments_checked: r.stats.fragments,
        fragments_good: r.stats.fragments_good,
        bytes_checked: r.stats.bytes_verified,
        data_blocks_walked: r.stats.blocks_examined,
        errors,
        errors_by_kind: by_kind,
        errors_by_member: by_member,
        repaired,
        leaked_fragments_erased: erased,
        unrepairable,
        clean,
    })
}
