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

use serde::{Deserialize, Serialize};
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
    /// Judged good again after the repair.
    pub repaired: bool,
    /// What was wrong, typed (the report of a whole pass words it as fsck does).
    #[serde(skip)]
    pub fault: FragmentFault,
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
    /// Good fragments found, and how many the policy needs to read it.
    pub good: u32,
    pub needed: u32,
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
                    repaired: false,
                    fault: fault.clone(),
                });
            }
        }
    }
    out.good = results.iter().filter(|r| r.is_ok()).count() as u32;
    out.needed = e.policy().fragments_needed();
    if out.errors.is_empty() {
        return out;
    }
    if out.good < out.needed {
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
            for err in &mut out.errors {
                err.repaired = after.get(err.index as usize).is_some_and(|r| r.is_ok());
            }
            out.repaired = out.errors.iter().filter(|e| e.repaired).count() as u32;
            out.unrepairable = out.errors.iter().any(|e| !e.repaired);
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// Damage that no repair can undo, with the files it belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unrepairable {
    pub what: String,
    pub files: Vec<String>,
}

/// The report of [`scrub_pool`]; serializes to `dfs scrub --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// The counts of a report (what was checked).
#[derive(Debug, Clone, Copy, Default)]
struct Checked {
    members_checked: u32,
    members: u32,
    extents: u64,
    fragments: u64,
    fragments_good: u64,
    bytes: u64,
    blocks_walked: u64,
}

/// Leaked fragments found (`Finding::Orphan`: notes for fsck, damage for scrub).
fn leaks(findings: &[fsck::Reported]) -> u64 {
    findings.iter().filter(|f| matches!(f.finding, Finding::Orphan { .. })).count() as u64
}

/// The scrub report of `findings` (as fsck reports them); `erased` is what
/// the erase of leaked fragments did: (extent fragments erased, none left).
fn build_report(
    pool_uuid: Uuid,
    repair: bool,
    checked: Checked,
    findings: &[fsck::Reported],
    erased: Option<(u64, bool)>,
) -> ScrubReport {
    let mut errors = Vec::new();
    let mut unrepairable = Vec::new();
    for f in findings {
        let is_leak = matches!(f.finding, Finding::Orphan { .. });
        if f.severity == Severity::Info && !is_leak {
            continue;
        }
        if let Finding::ExtentLost { extent, files, good, needed } = &f.finding {
            unrepairable.push(Unrepairable {
                what: format!("extent {extent}: {good} good fragments of {needed} needed"),
                files: files.clone(),
            });
        }
        let mut e = ScrubError {
            kind: finding_kind(&f.finding),
            member: f.member,
            message: f.message.clone(),
            repaired: f.severity == Severity::Corrected,
            action: f.action.clone(),
        };
        if is_leak && erased.is_some_and(|(_, all_gone)| all_gone) {
            e.repaired = true;
            e.action = Some("fragment header erased (the blocks were already free)".into());
        }
        errors.push(e);
    }
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_member: BTreeMap<String, u64> = BTreeMap::new();
    for e in &errors {
        *by_kind.entry(e.kind.clone()).or_default() += 1;
        *by_member.entry(e.member.map(|m| m.to_string()).unwrap_or_else(|| "pool".into())).or_default() += 1;
    }
    let repaired = errors.iter().filter(|e| e.repaired).count() as u64;
    let clean = errors.iter().all(|e| e.repaired);
    ScrubReport {
        pool_uuid,
        repair,
        members_checked: checked.members_checked,
        members: checked.members.max(checked.members_checked),
        extents_checked: checked.extents,
        fragments_checked: checked.fragments,
        fragments_good: checked.fragments_good,
        bytes_checked: checked.bytes,
        data_blocks_walked: checked.blocks_walked,
        errors,
        errors_by_kind: by_kind,
        errors_by_member: by_member,
        repaired,
        leaked_fragments_erased: erased.map(|(n, _)| n).unwrap_or(0),
        unrepairable,
        clean,
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
    let mut erased = None;
    if opts.repair && leaks(&r.findings) > 0 {
        let c = super::orphans::cleanup(
            devices,
            &super::orphans::CleanupOptions { lock_dir: opts.lock_dir.clone(), ..Default::default() },
        )?;
        let n = c.erased.iter().filter(|u| u.kind == fsck::UnreferencedKind::Orphan).count() as u64;
        erased = Some((n, c.failed.is_empty() && c.remaining_orphans == 0));
    }
    let checked = Checked {
        members_checked: r.stats.members_present,
        members: r.stats.members,
        extents: r.stats.extents,
        fragments: r.stats.fragments,
        fragments_good: r.stats.fragments_good,
        bytes: r.stats.bytes_verified,
        blocks_walked: r.stats.blocks_examined,
    };
    Ok(build_report(r.pool_uuid, opts.repair, checked, &r.findings, erased))
}

// ------------------------------------------------------------ mounted pool

/// Findings about the structures of an open pool, read with its commits
/// held (nothing of it is being written meanwhile): superblock copies, root
/// rings, journal and checkpoint copies of every member still in the pool
/// (`fsck::check_structures`), plus members the table has but the pool
/// could not open.
fn live_structures(pool: &Pool) -> std::result::Result<fsck::StructureCheck, FsckError> {
    let (devs, missing): (Vec<Arc<dyn Device>>, Vec<Finding>) = {
        let m = pool.meta();
        let mut devs = Vec::new();
        let mut missing = Vec::new();
        for rec in m.state.members.iter().filter(|r| r.state != MemberState::Removed) {
            match pool.members().get(rec.index as usize).and_then(|x| x.as_ref()) {
                Some(mem) => devs.push(mem.dev.clone()),
                None => missing.push((rec.index, rec.path_hint.clone())),
            }
        }
        let missing = missing
            .into_iter()
            .map(|(member, path_hint)| {
                let fragments = m.state.extents.values().flat_map(|e| e.frags.iter()).filter(|f| f.member == member);
                Finding::MemberMissing { member, path_hint, fragments: fragments.count() as u64 }
            })
            .collect();
        (devs, missing)
    };
    let mut c = pool.with_commits_held(|| fsck::check_structures(&devs))?;
    c.findings.extend(missing);
    Ok(c)
}

/// Repair what [`live_structures`] found, on the open pool: bad superblock
/// copies rewritten from the good one (commits held), a checkpoint (a new
/// root on every member supersedes stale rings, journal and checkpoint
/// copies), then root slots that still do not verify cleared. Failed steps
/// are returned as findings.
fn repair_live_structures(pool: &Pool, first: &fsck::StructureCheck) -> Vec<Finding> {
    let mut failed = Vec::new();
    let needs_checkpoint = first.findings.iter().any(fsck::superseded_by_checkpoint);
    let member_of = |index: u32| pool.members().get(index as usize).and_then(|m| m.clone());
    pool.with_commits_held(|| {
        for index in first.findings.iter().filter_map(|f| match f {
            Finding::SuperblockCopy { member, .. } => Some(*member),
            _ => None,
        }) {
            let Some(m) = member_of(index) else { continue };
            let what = || format!("rewrite the superblock of member {index} ({})", m.dev.identity());
            match crate::member::read_superblocks(m.dev.as_ref()) {
                Ok(choice) if choice.needs_repair() => {
                    if let Err(e) = crate::member::repair_superblock(m.dev.as_ref(), &choice) {
                        failed.push(Finding::RepairFailed { what: what(), error: e.to_string() });
                    }
                }
                Ok(_) => {}
                Err(e) => failed.push(Finding::RepairFailed { what: what(), error: e.to_string() }),
            }
        }
    });
    if needs_checkpoint {
        if let Err(e) = pool.checkpoint() {
            failed.push(Finding::RepairFailed { what: "write a new checkpoint and root".into(), error: e.to_string() });
            return failed;
        }
    }
    pool.with_commits_held(|| {
        for (index, slot) in &first.damaged_slots {
            let Some(m) = member_of(*index) else { continue };
            if let Err(e) = fsck::clear_root_slot(m.dev.as_ref(), &m.layout, *slot) {
                failed.push(Finding::RepairFailed {
                    what: format!("clear root slot {slot} of member {index}"),
                    error: e.to_string(),
                });
            }
        }
    });
    failed
}

/// A whole scrub of an open (mounted) pool, once: what `dfs scrub` runs
/// through the mount (`scrub_daemon::ScrubDaemon::run_once` paces it and
/// passes `each`, which scrubs one extent — [`scrub_extent`] — or answers
/// `None` to stop). Checks the structures of every member (commits held
/// while reading them), every fragment of every extent (bad ones rebuilt
/// with `repair`, each repair committed), and the data regions for
/// fragments nothing references, judged by the open pool's allocators
/// (`orphans::detect_live`; erased with `repair`). The report is the one
/// [`scrub_pool`] gives an unmounted pool.
pub fn scrub_live(pool: &Pool, repair: bool, each: &mut dyn FnMut(u128) -> Option<ExtentScrub>) -> Result<ScrubReport> {
    let repair = repair && !pool.read_only();
    let first = live_structures(pool).map_err(|e| EngineError::Other(e.to_string()))?;
    let mut checked = Checked { members_checked: first.members_present, members: first.members, ..Default::default() };
    let mut findings = if repair && first.findings.iter().any(Finding::is_problem) {
        let failed = repair_live_structures(pool, &first);
        let second = live_structures(pool).ok();
        fsck::classify(&first.findings, second.as_ref().map(|c| c.findings.as_slice()), failed)
    } else {
        fsck::classify(&first.findings, None, Vec::new())
    };

    // Every bad fragment, and those still bad after their repair (a
    // fragment is corrected when it was judged good again).
    let (mut all, mut still) = (Vec::new(), Vec::new());
    let mut lost = Vec::new();
    let ids: Vec<u128> = pool.meta().state.extents.keys().copied().collect();
    for id in ids {
        let Some(r) = each(id) else {
            return Err(EngineError::Other("the scrub was interrupted: the pool is closing".into()));
        };
        if r.vanished {
            continue;
        }
        checked.extents += 1;
        checked.fragments += u64::from(r.fragments);
        checked.fragments_good += u64::from(r.good);
        checked.bytes += r.bytes;
        if r.repaired > 0 {
            pool.commit()?;
        }
        for e in r.errors {
            let f = Finding::Fragment {
                member: e.member,
                extent: e.extent,
                index: e.index,
                block: e.block,
                fault: e.fault,
            };
            if !e.repaired {
                still.push(f.clone());
            }
            all.push(f);
        }
        if r.good < r.needed {
            lost.push((Uuid::from_u128(id), r.good, r.needed));
        }
    }
    if !lost.is_empty() {
        let files = fsck::extent_files(&pool.meta().state);
        for (extent, good, needed) in lost {
            let files = files.get(&extent.as_u128()).cloned().unwrap_or_default();
            let f = Finding::ExtentLost { extent, good, needed, files };
            still.push(f.clone());
            all.push(f);
        }
    }
    findings.extend(fsck::classify(&all, repair.then_some(still.as_slice()), Vec::new()));

    let leaked = super::orphans::detect_live(pool);
    checked.blocks_walked = leaked.blocks_examined;
    let orphans: Vec<Finding> = leaked
        .orphans
        .iter()
        .filter(|o| o.kind == fsck::UnreferencedKind::Orphan)
        .map(|o| Finding::Orphan {
            member: o.member,
            block: o.block,
            blocks: o.blocks,
            extent: o.extent,
            fragment_index: o.fragment_index,
            allocated_in_bitmap: None,
        })
        .collect();
    findings.extend(fsck::classify(&orphans, None, Vec::new()));
    let mut erased = None;
    if repair && !orphans.is_empty() {
        let opts = super::orphans::CleanupOptions::default();
        let c = super::orphans::cleanup_live(pool, &opts)?;
        let n = c.erased.iter().filter(|u| u.kind == fsck::UnreferencedKind::Orphan).count() as u64;
        erased = Some((n, c.failed.is_empty() && c.remaining_orphans == 0));
    }
    Ok(build_report(pool.uuid(), repair, checked, &findings, erased))
}
