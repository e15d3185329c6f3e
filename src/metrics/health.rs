//! Pool health: one pass over the extent table and the members gives the
//! figures (`ExtentSummary`) that `/health`, `dfs health`, `dfs status` and
//! the metrics collector share, and the verdict ok / degraded / failed with
//! each problem found and the command that addresses it.
//!
//! It only reads the pool's state (under the `meta` lock, briefly); it
//! never repairs, never changes a member's state and never does IO.
//!
//! Verdict: **failed** when data cannot be read (an extent with fewer
//! fragments on healthy members than its policy needs, an extent a read
//! found lost) or when the pool refuses changes after a failed metadata
//! write; **degraded** when redundancy is reduced (a member failed or
//! missing, an extent with a fragment on one); **ok** otherwise.

use std::collections::BTreeMap;

use dfs_format::Policy;
use serde::Serialize;

use crate::engine::admin::MemberInfo;
use crate::engine::state::{ChangeState, MemberState};
use crate::engine::Pool;

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    Ok,
    Degraded,
    Failed,
}

impl HealthState {
    /// The lower-case name (`ok`, `degraded`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Ok => "ok",
            HealthState::Degraded => "degraded",
            HealthState::Failed => "failed",
        }
    }
}

/// Extents and logical bytes under one label (a policy, a temperature class).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExtentCount {
    pub extents: u64,
    pub bytes: u64,
}

/// What one pass over the extent table finds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExtentSummary {
    pub extents: u64,
    pub bytes: u64,
    /// By policy name (`replication:3`, `erasure:4+2`).
    pub by_policy: BTreeMap<String, ExtentCount>,
    /// Extents with at least one fragment on a failed or missing member.
    pub degraded: u64,
    /// Extents with fewer fragments on healthy members than their policy needs.
    pub unreadable: u64,
    /// Fragments per member index.
    pub fragments_per_member: BTreeMap<u32, u64>,
}

/// Fragments an extent needs to be read.
fn needed(p: Policy) -> usize {
    match p {
        Policy::Replication { .. } => 1,
        Policy::Erasure { data, .. } => data as usize,
    }
}

/// Walk the extent table once.
pub fn extent_summary(pool: &Pool) -> ExtentSummary {
    let m = pool.meta();
    let bad_member = |i: u32| {
        pool.members().get(i as usize).is_none_or(|x| x.is_none())
            || m.state
                .members
                .get(i as usize)
                .is_some_and(|r| matches!(r.state, MemberState::Failed | MemberState::Removed))
    };
    let mut s = ExtentSummary::default();
    for e in m.state.extents.values() {
        let p = e.policy();
        s.extents += 1;
        s.bytes += e.len as u64;
        let c = s.by_policy.entry(p.to_string()).or_default();
        c.extents += 1;
        c.bytes += e.len as u64;
        let mut good = 0;
        for f in e.frags.iter() {
            *s.fragments_per_member.entry(f.member).or_default() += 1;
            if !bad_member(f.member) {
                good += 1;
            }
        }
        if good < e.frags.len() {
            s.degraded += 1;
        }
        if good < needed(p) {
            s.unreadable += 1;
        }
    }
    s
}

/// Extents and bytes by temperature class (`hot`, `warm`, `cold`).
///
/// Empty until access statistics exist (temperature tracking is built on
/// its own branch and feeds this function when merged).
pub fn temperature_split(_pool: &Pool) -> BTreeMap<String, ExtentCount> {
    BTreeMap::new()
}

/// One long-running job (policy change, rebuild, drain, scrub, migration).
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// `policy_change`, `rebuild`, `drain`, `scrub`, `migration`.
    pub kind: String,
    pub id: String,
    pub scope: String,
    pub done: u64,
    pub total: u64,
    pub started_ns: i64,
}

/// Jobs running now. Today: policy changes (from the pool's history);
/// rebuild, drain, scrub and migration jobs join here as they are built.
pub fn running_jobs(pool: &Pool) -> Vec<Job> {
    pool.policy_history()
        .into_iter()
        .filter(|c| c.state == ChangeState::Running)
        .map(|c| Job {
            kind: "policy_change".into(),
            id: c.id.to_string(),
            scope: c.scope,
            done: c.extents_done,
            total: c.extents_total,
            started_ns: c.started_ns,
        })
        .collect()
}

/// One problem and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `degraded` or `failed`: how much it weighs in the verdict.
    pub severity: HealthState,
    pub what: String,
    /// A command (or action) that addresses it.
    pub suggestion: String,
}

/// The health report (`/health`, `dfs health`).
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub state: HealthState,
    pub pool_uuid: String,
    pub members: Vec<MemberInfo>,
    pub extents: u64,
    pub degraded_extents: u64,
    pub unreadable_extents: u64,
    /// Extents reads found lost since the pool was opened.
    pub lost_extents: u64,
    /// The pool refuses changes after a failed metadata write.
    pub read_only_after_error: bool,
    /// The last scrub (none recorded yet: scrub is built on its own branch).
    pub last_scrub: Option<serde_json::Value>,
    /// The scrub daemon's state (none yet, as above).
    pub scrub_daemon: Option<serde_json::Value>,
    pub running_jobs: Vec<Job>,
    pub problems: Vec<Problem>,
}

impl Health {
    /// HTTP status for `/health`: 200 when ok, 503 otherwise.
    pub fn http_status(&self) -> u16 {
        if self.state == HealthState::Ok {
            200
        } else {
            503
        }
    }
}

/// Judge the pool. `pool_arg` is how commands in suggestions name the pool.
pub fn check(pool: &Pool, pool_arg: &str) -> Health {
    let members = pool.list_members();
    let ext = extent_summary(pool);
    let lost = pool.lost_extents().len() as u64;
    let poisoned = pool.is_poisoned();
    let mut problems = Vec::new();
    let mut add = |severity, what: String, suggestion: String| problems.push(Problem { severity, what, suggestion });
    for m in &members {
        let frags = ext.fragments_per_member.get(&m.index).copied().unwrap_or(0);
        match m.state.as_str() {
            "failed" => add(
                HealthState::Degraded,
                format!("member {} ({}) is failed and still holds {frags} fragments", m.index, m.path),
                format!(
                    "its extents are rebuilt as they are read; replace it: dfs add-disk --pool {pool_arg} --device NEW, \
                     then dfs remove-disk --pool {pool_arg} --index {}",
                    m.index
                ),
            ),
            "missing" => add(
                HealthState::Degraded,
                format!("member {} (last seen as {:?}) was not found", m.index, m.path),
                format!(
                    "attach the device and remount (mount.dfs ... -o device=PATH), or mark it failed: \
                     dfs fail-disk --pool {pool_arg} --index {}",
                    m.index
                ),
            ),
            "draining" => add(
                HealthState::Ok,
                format!("member {} ({}) is draining ({frags} fragments left)", m.index, m.path),
                format!("follow it with: dfs list-disks --pool {pool_arg}"),
            ),
            _ => {}
        }
        if m.present && m.data_bytes > 0 && m.free_bytes * 10 < m.data_bytes {
            add(
                HealthState::Ok,
                format!("member {} ({}) is over 90% full", m.index, m.path),
                format!("add space: dfs add-disk --pool {pool_arg} --device NEW"),
            );
        }
    }
    if ext.degraded > 0 {
        add(
            HealthState::Degraded,
            format!("{} extents have fragments on failed or missing members", ext.degraded),
            format!("read them (lazy repair) or run: dfs scrub --pool {pool_arg}; list them: dfs list-extents --pool {pool_arg}"),
        );
    }
    if ext.unreadable > 0 {
        add(
            HealthState::Failed,
            format!("{} extents have fewer good fragments than their policy needs", ext.unreadable),
            format!("bring the missing members back (dfs list-disks --pool {pool_arg}); otherwise restore those files from backup"),
        );
    }
    if lost > 0 {
        add(
            HealthState::Failed,
            format!("{lost} extents could not be read (too few good fragments)"),
            format!("see which: dfs list-extents --pool {pool_arg}; restore those files from backup"),
        );
    }
    if poisoned {
        add(
            HealthState::Failed,
            "a metadata write failed; the pool refuses changes".into(),
            "check the members' kernel log, then unmount and mount again (the last durable state is recovered)".into(),
        );
    }
    let state = problems.iter().map(|p| p.severity).fold(HealthState::Ok, |a, b| match (a, b) {
        (HealthState::Failed, _) | (_, HealthState::Failed) => HealthState::Failed,
        (HealthState::Degraded, _) | (_, HealthState::Degraded) => HealthState::Degraded,
        _ => HealthState::Ok,
    });
    Health {
        state,
        pool_uuid: pool.uuid().to_string(),
        members,
        extents: ext.extents,
        degraded_extents: ext.degraded,
        unreadable_extents: ext.unreadable,
        lost_extents: lost,
        read_only_after_error: poisoned,
        last_scrub: None,
        scrub_daemon: None,
        running_jobs: running_jobs(pool),
        problems,
    }
}
