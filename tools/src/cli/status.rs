//! `dfs status --pool MEMBER|MOUNTPOINT [--json]`: one screen: pool
//! identity, members with their space, file and extent counts, extents by
//! policy and by temperature class, health (the verdict of
//! `dynamicfs::metrics::health`, details in `dfs health`) and running jobs.
//!
//! The pool is opened read-only and shared (`PoolOptions::read_only`, no
//! exclusive opens, no lock), so this works on a mounted pool too; it then
//! shows what is durable on disk (the last commit), not what the mount has
//! in memory, and says so. (Live figures come with the control socket.)

use std::collections::BTreeMap;
use std::path::Path;

use dfs_format::Policy;
use dynamicfs::discover::{open_pool, DiscoverOptions, PoolSource};
use dynamicfs::engine::state::MemberState;
use dynamicfs::engine::{FileKind, PoolOptions};
use dynamicfs::fuse::FS_TYPE;
use serde::Serialize;

use super::mountinfo;
use crate::{iec, Table};

/// One member's line.
#[derive(Debug, Serialize)]
pub struct MemberStatus {
    pub index: u32,
    pub path: String,
    /// Member size in bytes (`None` when the member was not found).
    pub size: Option<u64>,
    /// Bytes of the data region in use (fragments and the checkpoint).
    pub used: Option<u64>,
    pub free: Option<u64>,
    /// online, draining, failed, removed, or missing (not found).
    pub state: String,
}

/// Extents under one policy.
#[derive(Debug, Serialize)]
pub struct PolicyStatus {
    pub policy: String,
    pub extents: u64,
    /// Logical bytes they hold.
    pub bytes: u64,
}

/// What `dfs status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub pool_uuid: String,
    pub label: String,
    pub default_policy: String,
    /// Where the pool is mounted, when the argument was a mount point.
    pub mounted_on: Option<String>,
    /// True when the figures are the durable on-disk state of a mounted pool.
    pub durable_state_only: bool,
    pub members: Vec<MemberStatus>,
    pub files: u64,
    pub directories: u64,
    pub inodes: u64,
    pub extents_by_policy: Vec<PolicyStatus>,
    /// Extents by temperature class (empty until access statistics exist).
    pub extents_by_temperature: Vec<PolicyStatus>,
    /// ok, degraded or failed.
    pub health: String,
    /// One line per problem (`dfs health` has the suggested commands).
    pub problems: Vec<String>,
    pub degraded_extents: u64,
    pub running_jobs: Vec<dynamicfs::metrics::health::Job>,
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Online => "online",
        MemberState::Draining => "draining",
        MemberState::Failed => "failed",
        MemberState::Removed => "removed",
    }
}

/// Gather the status of the pool `arg` names (a member, `UUID=`, or the
/// mount point of a mounted pool).
pub fn gather(arg: &str) -> Result<Status, String> {
    let mount = if Path::new(arg).is_dir() { mountinfo::find(Path::new(arg), FS_TYPE) } else { None };
    let source = match &mount {
        Some(m) => PoolSource::parse(&m.source).map_err(|e| format!("{arg}: mounted from {:?}: {e}", m.source))?,
        None => PoolSource::parse(arg).map_err(|e| e.to_string())?,
    };
    let (pool, found) =
        open_pool(&source, &DiscoverOptions::default(), PoolOptions { read_only: true, ..Default::default() })
            .map_err(|e| e.to_string())?;
    let state = pool.state_snapshot();
    let ckpt = pool.checkpoint_blocks();
    let mut used_blocks: BTreeMap<u32, u64> = BTreeMap::new();
    for (_, _, f) in state.all_fragments() {
        *used_blocks.entry(f.member).or_default() += f.blocks as u64;
    }
    let count = state.members.len().max(pool.members().len()).max(found.member_count as usize);
    let mut members = Vec::new();
    for i in 0..count {
        let rec = state.members.get(i);
        let opened = pool.members().get(i).and_then(|m| m.as_ref());
        let path = match (opened, rec) {
            (Some(m), _) => m.dev.identity().path.display().to_string(),
            (None, Some(r)) => r.path_hint.clone(),
            (None, None) => String::new(),
        };
        let state_s = match (opened, rec) {
            (_, Some(r)) if r.state == MemberState::Removed => "removed",
            (None, _) => "missing",
            (Some(_), Some(r)) => state_name(r.state),
            (Some(_), None) => "online",
        };
        let (size, used, free) = match opened {
            Some(m) => {
                let bs = m.layout.block_size as u64;
                let used =
                    (used_blocks.get(&(i as u32)).copied().unwrap_or(0) + ckpt.get(i).copied().unwrap_or(0)) * bs;
                let data = m.layout.data_blocks() * bs;
                (Some(m.layout.size), Some(used), Some(data.saturating_sub(used)))
            }
            None => (None, None, None),
        };
        members.push(MemberStatus { index: i as u32, path, size, used, free, state: state_s.into() });
    }
    let mut by_policy: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in state.extents.values() {
        let s = by_policy.entry(e.policy().to_string()).or_default();
        s.0 += 1;
        s.1 += e.len as u64;
    }
    let kinds = |k: FileKind| state.inodes.values().filter(|i| i.attrs.kind == k).count() as u64;
    let health = dynamicfs::metrics::health::check(&pool, arg);
    let temperature = dynamicfs::metrics::health::temperature_split(&pool);
    let default_policy =
        Policy::decode(state.config.default_policy).map(|p| p.to_string()).unwrap_or_else(|_| "unknown".into());
    Ok(Status {
        pool_uuid: found.pool_uuid.to_string(),
        label: state.config.label.clone(),
        default_policy,
        mounted_on: mount.as_ref().map(|m| m.mountpoint.display().to_string()),
        durable_state_only: mount.is_some() || mounted_anywhere(&found),
        members,
        files: kinds(FileKind::File),
        directories: kinds(FileKind::Dir),
        inodes: state.inodes.len() as u64,
        extents_by_policy: by_policy
            .into_iter()
            .map(|(policy, (extents, bytes))| PolicyStatus { policy, extents, bytes })
            .collect(),
        extents_by_temperature: temperature
            .into_iter()
            .map(|(class, c)| PolicyStatus { policy: class, extents: c.extents, bytes: c.bytes })
            .collect(),
        health: health.state.as_str().into(),
        problems: health.problems.iter().map(|p| p.what.clone()).collect(),
        degraded_extents: health.degraded_extents,
        running_jobs: health.running_jobs,
    })
}

/// Whether any member of the pool is the source of a `fuse.dfs` mount.
fn mounted_anywhere(found: &dynamicfs::discover::Discovered) -> bool {
    let paths: Vec<String> = found.members.values().map(|m| m.path.display().to_string()).collect();
    mountinfo::mounts().iter().any(|m| m.fstype == FS_TYPE && paths.contains(&m.source))
}

fn opt_iec(v: Option<u64>) -> String {
    v.map(iec).unwrap_or_else(|| "-".into())
}

/// The human-readable report.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    out.push_str(&format!("Pool:            {}\n", s.pool_uuid));
    out.push_str(&format!("Label:           {}\n", if s.label.is_empty() { "-" } else { &s.label }));
    out.push_str(&format!("Default policy:  {}\n", s.default_policy));
    if let Some(m) = &s.mounted_on {
        out.push_str(&format!("Mounted on:      {m}\n"));
    }
    if s.durable_state_only {
        out.push_str("Note:            the pool is mounted; figures are what is durable on disk (last commit)\n");
    }
    out.push_str("\nMembers:\n");
    let mut t =
        Table::new(&["INDEX", "PATH", "SIZE", "USED", "FREE", "STATE"], &[true, false, true, true, true, false]);
    for m in &s.members {
        t.row(vec![
            m.index.to_string(),
            m.path.clone(),
            opt_iec(m.size),
            opt_iec(m.used),
            opt_iec(m.free),
            m.state.clone(),
        ]);
    }
    out.push_str(&t.render(2));
    out.push_str(&format!("\nFiles: {}   Directories: {}   Inodes: {}\n", s.files, s.directories, s.inodes));
    out.push_str("\nExtents by policy:\n");
    if s.extents_by_policy.is_empty() {
        out.push_str("  (none)\n");
    } else {
        let mut t = Table::new(&["POLICY", "EXTENTS", "DATA"], &[false, true, true]);
        for p in &s.extents_by_policy {
            t.row(vec![p.policy.clone(), p.extents.to_string(), iec(p.bytes)]);
        }
        out.push_str(&t.render(2));
    }
    out.push_str("\nExtents by temperature:\n");
    if s.extents_by_temperature.is_empty() {
        out.push_str("  (no access statistics yet)\n");
    } else {
        let mut t = Table::new(&["CLASS", "EXTENTS", "DATA"], &[false, true, true]);
        for p in &s.extents_by_temperature {
            t.row(vec![p.policy.clone(), p.extents.to_string(), iec(p.bytes)]);
        }
        out.push_str(&t.render(2));
    }
    out.push_str(&format!("\nHealth: {} ({} degraded extents)\n", s.health.to_uppercase(), s.degraded_extents));
    for p in &s.problems {
        out.push_str(&format!("  - {p}\n"));
    }
    if !s.problems.is_empty() {
        out.push_str("  (dfs health --pool ... suggests what to do)\n");
    }
    out.push_str("\nRunning jobs:\n");
    if s.running_jobs.is_empty() {
        out.push_str("  (none)\n");
    }
    for j in &s.running_jobs {
        out.push_str(&format!("  {} {} on {}: {}/{} extents\n", j.kind, j.id, j.scope, j.done, j.total));
    }
    out
}
