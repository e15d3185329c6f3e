//! `dfs status --pool MEMBER|MOUNTPOINT [--json]`: one screen: pool
//! identity, members with their space, file and extent counts, extents by
//! policy and by temperature class, scrub (last pass, daemon), health (the
//! verdict of `dynamicfs::metrics::health`, details in `dfs health`) and
//! running jobs (policy changes, rebuild, drain, scrub, migration queue).
//!
//! A mounted pool answers through its control socket (method `status`,
//! which runs [`of_pool`] in the mount): live figures, the scrub daemon and
//! the background jobs included. An unmounted pool is opened read-only and
//! shared here, and [`of_pool`] runs in this process. It only reads.

use std::path::Path;

use dynamicfs::engine::Pool;
use dynamicfs::fuse::FS_TYPE;
use dynamicfs::metrics::health::{ExtentCount, Health, Job, ScrubSummary};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::admin::Target;
use super::mountinfo;
use crate::{format_time_ns, iec, Table};

/// One member's line.
#[derive(Debug, Serialize, Deserialize)]
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

/// Extents under one policy or temperature class.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub policy: String,
    pub extents: u64,
    /// Logical bytes they hold.
    pub bytes: u64,
}

/// The scrub daemon of a mount, in short.
#[derive(Debug, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// idle, running, paused.
    pub state: String,
    pub extents_done: u64,
    pub extents_total: u64,
    pub rate_bytes_per_sec: u64,
    pub errors: u64,
    pub repaired: u64,
    pub unrepairable: u64,
}

/// What `dfs status` reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub pool_uuid: String,
    pub label: String,
    pub default_policy: String,
    /// Where the pool is mounted, when it is.
    pub mounted_on: Option<String>,
    /// True when the figures are the durable on-disk state of a mounted
    /// pool (read beside a mount that did not answer); false when they
    /// come from the mount itself or the pool is not mounted.
    pub durable_state_only: bool,
    pub members: Vec<MemberStatus>,
    pub files: u64,
    pub directories: u64,
    pub inodes: u64,
    pub extents: u64,
    pub extents_by_policy: Vec<PolicyStatus>,
    /// Extents by temperature class (hot, warm, cold); they sum to `extents`.
    pub extents_by_temperature: Vec<PolicyStatus>,
    /// The last (or current) scrub pass; None when never scrubbed.
    pub last_scrub: Option<ScrubSummary>,
    /// The mount's scrub daemon (None on an unmounted pool).
    pub scrub_daemon: Option<DaemonStatus>,
    /// ok, degraded or failed.
    pub health: String,
    /// One line per problem (`dfs health` has the suggested commands).
    pub problems: Vec<String>,
    pub degraded_extents: u64,
    pub running_jobs: Vec<Job>,
}

fn counts(m: &std::collections::BTreeMap<String, ExtentCount>) -> Vec<PolicyStatus> {
    m.iter().map(|(k, c)| PolicyStatus { policy: k.clone(), extents: c.extents, bytes: c.bytes }).collect()
}

/// The status of an open pool, judged by `health` (run in the mount for a
/// mounted pool, here for an unmounted one).
pub fn of_pool(pool: &Pool, health: &Health) -> Status {
    let inv = dynamicfs::metrics::health::inventory(pool);
    let kind = |k: &str| inv.inodes_by_kind.get(k).copied().unwrap_or(0);
    let ext = dynamicfs::metrics::health::extent_summary(pool);
    let members = health
        .members
        .iter()
        .map(|m| MemberStatus {
            index: m.index,
            path: m.path.clone(),
            size: m.present.then_some(m.size_bytes),
            used: m.present.then_some(m.used_bytes),
            free: m.present.then_some(m.free_bytes),
            state: m.state.clone(),
        })
        .collect();
    Status {
        pool_uuid: pool.uuid().to_string(),
        label: inv.label.clone(),
        default_policy: inv.default_policy.clone(),
        mounted_on: None,
        durable_state_only: false,
        members,
        files: kind("file"),
        directories: kind("directory"),
        inodes: inv.inodes,
        extents: ext.extents,
        extents_by_policy: counts(&ext.by_policy),
        extents_by_temperature: counts(&health.temperature),
        last_scrub: health.last_scrub.clone(),
        scrub_daemon: health.scrub_daemon.as_ref().map(|d| DaemonStatus {
            state: serde_json::to_value(d.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            extents_done: d.extents_done,
            extents_total: d.extents_total,
            rate_bytes_per_sec: d.rate_bytes_per_sec,
            errors: d.errors,
            repaired: d.repaired,
            unrepairable: d.unrepairable,
        }),
        health: health.state.as_str().into(),
        problems: health.problems.iter().map(|p| p.what.clone()).collect(),
        degraded_extents: health.degraded_extents,
        running_jobs: health.running_jobs.clone(),
    }
}

/// Gather the status of the pool `arg` names (a member, `UUID=`, or the
/// mount point of a mounted pool): from the mount when mounted.
pub fn gather(arg: &str) -> Result<Status, String> {
    let mount = if Path::new(arg).is_dir() { mountinfo::find(Path::new(arg), FS_TYPE) } else { None };
    let mut s = match Target::open(arg, false)? {
        mut t @ Target::Mounted { .. } => t.call::<Status>("status", Value::Null)?,
        Target::Local { pool, .. } => {
            let h = dynamicfs::metrics::health::check(&pool, arg);
            let mut s = of_pool(&pool, &h);
            s.durable_state_only = mounted_anywhere(&pool);
            s
        }
    };
    s.mounted_on = mount.map(|m| m.mountpoint.display().to_string());
    Ok(s)
}

/// Whether any member of the pool is the source of a `fuse.dfs` mount.
fn mounted_anywhere(pool: &Pool) -> bool {
    let paths: Vec<String> = pool.list_members().into_iter().map(|m| m.path).collect();
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
    out.push_str(&format!("\nExtents by policy ({} in all):\n", s.extents));
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
        out.push_str("  (none)\n");
    } else {
        let mut t = Table::new(&["CLASS", "EXTENTS", "DATA"], &[false, true, true]);
        for p in &s.extents_by_temperature {
            t.row(vec![p.policy.clone(), p.extents.to_string(), iec(p.bytes)]);
        }
        out.push_str(&t.render(2));
    }
    out.push_str(&format!("\nScrub:  {}\n", scrub_line(s.last_scrub.as_ref())));
    if let Some(d) = &s.scrub_daemon {
        out.push_str(&format!("        {}\n", daemon_line(d)));
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

/// The last scrub in one line (`never` when none).
pub fn scrub_line(s: Option<&ScrubSummary>) -> String {
    let Some(s) = s else { return "never".into() };
    let when = if s.result == "running" {
        format!("pass running since {}", format_time_ns(s.started_ns.max(0) as u64))
    } else {
        format!("last pass finished {}", format_time_ns(s.finished_ns.max(0) as u64))
    };
    format!(
        "{when}: {}, {} extents, {} read, {} errors, {} repaired (schedule: {})",
        s.result,
        s.extents,
        iec(s.bytes),
        s.errors,
        s.repaired,
        s.frequency
    )
}

/// The scrub daemon in one line.
pub fn daemon_line(d: &DaemonStatus) -> String {
    format!(
        "daemon {}, {}/{} extents, {}/s, {} errors, {} repaired, {} unrepairable",
        d.state,
        d.extents_done,
        d.extents_total,
        iec(d.rate_bytes_per_sec),
        d.errors,
        d.repaired,
        d.unrepairable
    )
}
