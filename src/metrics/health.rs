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
use std::sync::{Arc, OnceLock, Weak};

use dfs_format::Policy;
use serde::{Deserialize, Serialize};

use crate::engine::admin::MemberInfo;
use crate::engine::rebuild::{Worker, WorkerStatus};
use crate::engine::scrub_daemon::{DaemonState, ScrubDaemon, ScrubStatus};
use crate::engine::state::{ChangeState, MemberState, ScrubRecord};
use crate::engine::Pool;
use crate::temperature::Temp;

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// The pool's name and contents, counted under the `meta` lock.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    pub label: String,
    /// The default policy (`unknown` if the stored one does not decode).
    pub default_policy: String,
    /// Inodes by kind: `file`, `directory`, `symlink`, `special`.
    pub inodes_by_kind: BTreeMap<&'static str, u64>,
    pub inodes: u64,
    /// Files open through the mount.
    pub open_files: u64,
}

/// Count the pool's inodes by kind and its open files.
pub fn inventory(pool: &Pool) -> Inventory {
    use crate::engine::FileKind;
    let m = pool.meta();
    let mut inodes_by_kind = BTreeMap::<&'static str, u64>::new();
    for i in m.state.inodes.values() {
        let k = match i.attrs.kind {
            FileKind::File => "file",
            FileKind::Dir => "directory",
            FileKind::Symlink => "symlink",
            _ => "special",
        };
        *inodes_by_kind.entry(k).or_default() += 1;
    }
    Inventory {
        label: m.state.config.label.clone(),
        default_policy: Policy::decode(m.state.config.default_policy)
            .map(|p| p.to_string())
            .unwrap_or_else(|_| "unknown".into()),
        inodes_by_kind,
        inodes: m.state.inodes.len() as u64,
        open_files: m.open_counts.values().map(|c| *c as u64).sum(),
    }
}

/// Extents and logical bytes by temperature class, as the configured
/// classifier (the one migration follows) sees them now: always the three
/// classes `hot`, `warm`, `cold`, so the counts sum to the extent count (an
/// extent never accessed since statistics began is classified from empty
/// statistics, which is cold).
pub fn temperature_split(pool: &Pool) -> BTreeMap<String, ExtentCount> {
    let mut out: BTreeMap<String, ExtentCount> =
        [Temp::Hot, Temp::Warm, Temp::Cold].iter().map(|t| (t.name().to_string(), ExtentCount::default())).collect();
    let t = pool.temperature();
    let now = t.now_s();
    let m = pool.meta();
    for (id, e) in m.state.extents.iter() {
        let s = t.get(&m, *id).unwrap_or_default();
        let c = out.entry(t.classify(&s, now).decided.name().to_string()).or_default();
        c.extents += 1;
        c.bytes += e.len as u64;
    }
    out
}

/// The background work of a mount that health and metrics report when it
/// is there (an unmounted pool has none): its scrub daemon and its
/// rebuild/drain worker. Held weakly: reporting never keeps them (or the
/// pool they hold) alive.
#[derive(Debug, Default)]
pub struct Live {
    scrub: OnceLock<Weak<ScrubDaemon>>,
    worker: OnceLock<Weak<Worker>>,
}

impl Live {
    /// Report this scrub daemon (once; later calls are ignored).
    pub fn set_scrub_daemon(&self, d: &Arc<ScrubDaemon>) {
        let _ = self.scrub.set(Arc::downgrade(d));
    }

    /// Report this rebuild/drain worker (once; later calls are ignored).
    pub fn set_worker(&self, w: &Arc<Worker>) {
        let _ = self.worker.set(Arc::downgrade(w));
    }

    /// The scrub daemon's status, while it exists.
    pub fn scrub_status(&self) -> Option<ScrubStatus> {
        self.scrub.get().and_then(Weak::upgrade).map(|d| d.status())
    }

    /// The worker's status, while it exists.
    pub fn worker_status(&self) -> Option<WorkerStatus> {
        self.worker.get().and_then(Weak::upgrade).map(|w| w.status())
    }
}

/// The last scrub pass as the pool records it (`State::scrub`, written by
/// the scrub daemon; `dfs scrub` on an unmounted pool reports but does not
/// record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScrubSummary {
    /// `running` (a pass is under way), `clean` (the last pass found
    /// nothing), `repaired` (it found errors and repaired them all),
    /// `errors` (it found more than it repaired).
    pub result: String,
    /// `off`, `nightly`, `weekly`, `continuous`.
    pub frequency: String,
    /// Start of the current or last pass, ns since the epoch.
    pub started_ns: i64,
    /// End of the last finished pass (0: none finished yet).
    pub finished_ns: i64,
    /// Totals of the current pass so far when running, else of the last one.
    pub extents: u64,
    pub bytes: u64,
    pub errors: u64,
    pub repaired: u64,
}

/// The scrub record as a summary; None when the pool was never scrubbed.
pub fn scrub_summary(rec: &ScrubRecord) -> Option<ScrubSummary> {
    if rec.pass_started_ns == 0 && rec.pass_finished_ns == 0 && !rec.running {
        return None;
    }
    let result = if rec.running {
        "running"
    } else if rec.errors == 0 {
        "clean"
    } else if rec.repaired >= rec.errors {
        "repaired"
    } else {
        "errors"
    };
    Some(ScrubSummary {
        result: result.into(),
        frequency: crate::engine::scrub_daemon::frequency_name(rec.frequency).into(),
        started_ns: rec.pass_started_ns,
        finished_ns: rec.pass_finished_ns,
        extents: rec.extents_done,
        bytes: rec.bytes_done,
        errors: rec.errors,
        repaired: rec.repaired,
    })
}

/// One long-running job (policy change, rebuild, drain, scrub, migration).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// `policy_change`, `rebuild`, `drain`, `scrub`, `migration`.
    pub kind: String,
    pub id: String,
    pub scope: String,
    /// Extents done and the extents the job covers (for a rebuild, a drain
    /// or the migration queue: done so far plus what is left now).
    pub done: u64,
    pub total: u64,
    /// Start, ns since the epoch (0 when not known).
    pub started_ns: i64,
}

/// Jobs running now: policy changes (from the pool's history), drains
/// (members draining), and with a mount's [`Live`] handles the background
/// rebuild of degraded extents, the scrub daemon's pass, and the
/// temperature migration queue.
pub fn running_jobs(pool: &Pool, live: &Live, scrub: Option<&ScrubStatus>) -> Vec<Job> {
    let mut jobs: Vec<Job> = pool
        .policy_history()
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
        .collect();
    let worker = live.worker_status();
    for m in pool.list_members().into_iter().filter(|m| m.state == "draining") {
        let done = worker.as_ref().map(|w| w.drain.extents).unwrap_or(0);
        jobs.push(Job {
            kind: "drain".into(),
            id: m.index.to_string(),
            scope: format!("member {} ({})", m.index, m.path),
            done,
            total: done + m.fragments,
            started_ns: 0,
        });
    }
    if let Some(w) = &worker {
        let degraded = pool.degraded_extents().len() as u64;
        if degraded > 0 {
            jobs.push(Job {
                kind: "rebuild".into(),
                id: "worker".into(),
                scope: "degraded extents".into(),
                done: w.rebuild.extents,
                total: w.rebuild.extents + degraded,
                started_ns: 0,
            });
        }
    }
    if let Some(s) = scrub.filter(|s| s.state != DaemonState::Idle) {
        jobs.push(Job {
            kind: "scrub".into(),
            id: "daemon".into(),
            scope: format!("{:?}", s.state).to_lowercase(),
            done: s.extents_done,
            total: s.extents_total,
            started_ns: s.pass_started_ns,
        });
    }
    let q = &pool.temperature().queue;
    let waiting = q.len() as u64;
    if waiting > 0 {
        let done = q.done.load(std::sync::atomic::Ordering::Relaxed);
        jobs.push(Job {
            kind: "migration".into(),
            id: "queue".into(),
            scope: "extents whose temperature calls for another policy".into(),
            done,
            total: done + waiting,
            started_ns: 0,
        });
    }
    jobs
}

/// One problem and what to do about it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// `degraded` or `failed`: how much it weighs in the verdict; `ok`:
    /// worth knowing, no effect on the verdict.
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
    /// Extents and bytes by temperature class (`hot`, `warm`, `cold`).
    pub temperature: BTreeMap<String, ExtentCount>,
    /// The last (or current) scrub pass; None when never scrubbed.
    pub last_scrub: Option<ScrubSummary>,
    /// The mount's scrub daemon (None on an unmounted pool).
    pub scrub_daemon: Option<ScrubStatus>,
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

/// [`check_live`] without a mount's background work.
pub fn check(pool: &Pool, pool_arg: &str) -> Health {
    check_live(pool, pool_arg, &Live::default())
}

/// Judge the pool. `pool_arg` is how commands in suggestions name the
/// pool; `live` the mount's background work, if any.
pub fn check_live(pool: &Pool, pool_arg: &str, live: &Live) -> Health {
    let members = pool.list_members();
    let ext = extent_summary(pool);
    let lost = pool.lost_extents().len() as u64;
    let poisoned = pool.is_poisoned();
    let scrub_rec = pool.meta().state.scrub.clone();
    let last_scrub = scrub_summary(&scrub_rec);
    let daemon = live.scrub_status();
    let mounted = daemon.is_some();
    let mut problems = Vec::new();
    let mut add = |severity, what: String, suggestion: String| problems.push(Problem { severity, what, suggestion });
    for m in &members {
        let frags = ext.fragments_per_member.get(&m.index).copied().unwrap_or(0);
        match m.state.as_str() {
            "failed" if frags > 0 => add(
                HealthState::Degraded,
                format!("member {} ({}) is failed and still holds {frags} fragments", m.index, m.path),
                format!(
                    "re-protect its extents on the other members: dfs rebuild --pool {pool_arg}; \
                     then take it out: dfs remove-disk --pool {pool_arg} --disk {} \
                     (add a replacement first if space is short: dfs add-disk --pool {pool_arg} --disk NEW)",
                    m.index
                ),
            ),
            "failed" => add(
                HealthState::Ok,
                format!("member {} ({}) is failed and holds no fragments any more", m.index, m.path),
                format!("take it out of the pool: dfs remove-disk --pool {pool_arg} --disk {}", m.index),
            ),
            "missing" => add(
                HealthState::Degraded,
                format!("member {} (last seen as {:?}) was not found", m.index, m.path),
                format!(
                    "attach the device and remount (mount.dfs ... -o device=PATH), or mark it failed: \
                     dfs fail-disk --pool {pool_arg} --disk {}",
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
                format!("add space: dfs add-disk --pool {pool_arg} --disk NEW"),
            );
        }
    }
    let online = members.iter().filter(|m| m.state == "online").count();
    if let Ok(p) = Policy::decode(pool.meta().state.config.default_policy) {
        if online < p.fragment_count() as usize {
            add(
                HealthState::Degraded,
                format!(
                    "only {online} members are online; the default policy {p} needs {}: new data cannot be written",
                    p.fragment_count()
                ),
                format!("add a disk: dfs add-disk --pool {pool_arg} --disk NEW"),
            );
        }
    }
    if ext.degraded > 0 {
        add(
            HealthState::Degraded,
            format!("{} extents have fragments on failed or missing members", ext.degraded),
            format!("rebuild them now: dfs rebuild --pool {pool_arg} (a mount also rebuilds them in the background); list them: dfs list-extents --pool {pool_arg}"),
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
    let scrub_cmd = if mounted {
        format!("dfs scrub-daemon start --pool {pool_arg}")
    } else {
        format!("dfs scrub --pool {pool_arg} --repair")
    };
    match &last_scrub {
        None if ext.extents > 0 => add(
            HealthState::Ok,
            "the pool has never been scrubbed: silent corruption would go unnoticed until read".into(),
            format!("scrub it: {scrub_cmd}; schedule it: dfs scrub-schedule --pool {pool_arg} --frequency weekly"),
        ),
        Some(s) if s.result == "errors" => add(
            HealthState::Degraded,
            format!("the last scrub found {} fragment errors and repaired {}", s.errors, s.repaired),
            format!("scrub again with repair: {scrub_cmd}; see what is left: dfs list-extents --pool {pool_arg}"),
        ),
        _ => {}
    }
    if let Some(d) = daemon.as_ref().filter(|d| d.unrepairable > 0) {
        add(
            HealthState::Failed,
            format!("the scrub daemon found {} extents it could not repair", d.unrepairable),
            format!("see which: dfs scrub-daemon status --pool {pool_arg}; restore those files from backup"),
        );
    }
    let state = problems.iter().map(|p| p.severity).fold(HealthState::Ok, |a, b| match (a, b) {
        (HealthState::Failed, _) | (_, HealthState::Failed) => HealthState::Failed,
        (HealthState::Degraded, _) | (_, HealthState::Degraded) => HealthState::Degraded,
        _ => HealthState::Ok,
    });
    let running_jobs = running_jobs(pool, live, daemon.as_ref());
    Health {
        state,
        pool_uuid: pool.uuid().to_string(),
        members,
        extents: ext.extents,
        degraded_extents: ext.degraded,
        unreadable_extents: ext.unreadable,
        lost_extents: lost,
        read_only_after_error: poisoned,
        temperature: temperature_split(pool),
        last_scrub,
        scrub_daemon: daemon,
        running_jobs,
        problems,
    }
}
