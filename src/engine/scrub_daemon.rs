//! # The scrub daemon: a background scrub of a mounted pool
//!
//! Owns one worker thread per open pool (started by the mount) that walks
//! the extent table in id order and runs [`scrub::scrub_extent`] with
//! repair on each extent, and its control surface: the Rust API
//! ([`ScrubDaemon::start`], `pause`, `resume`, `stop`, `status`), the
//! control-socket handler [`handle_control`] (`scrub.start`, ...), and the
//! schedule (`ScrubRecord::frequency`, set by `dfs scrub-schedule`).
//!
//! ## Rate
//!
//! An [`Intensity`] is a budget of fragment bytes read per second: **low
//! 16 MiB/s, medium 64 MiB/s, high 256 MiB/s** (a disk here reads about
//! 0.9 GiB/s, so high leaves most of one to users). The worker sleeps so
//! that bytes read since the pass (re)started never run ahead of the budget
//! ([`RateLimiter`]). It also **yields to user IO**: when the pool did user
//! work (ops applied, fragments read or written through the data path)
//! since the last extent, it sleeps [`YIELD_PAUSE`] before the next one.
//!
//! ## Position
//!
//! The pass position (the last extent id done, in id order) and its totals
//! live in the pool metadata (`State::scrub`, written by `Op::SetScrub`)
//! and are persisted in batches — every [`PERSIST_EXTENTS`] extents or
//! [`PERSIST_INTERVAL`], at pause and stop — each batch one journaled op
//! and one commit, never a device write per extent. A restart (unmount and
//! mount, or a crash) resumes after the last persisted extent: at most one
//! batch is scrubbed twice. Extents created behind the cursor during a pass
//! wait for the next pass.
//!
//! ## Schedule
//!
//! [`ScrubDaemon::run_schedule`] starts a thread that checks once a
//! [`SCHEDULE_TICK`] whether a pass is due: one that was interrupted
//! (`running` persisted) resumes at once; otherwise nightly = 24 h after the
//! last pass started, weekly = 7 days, continuous = as soon as one ends.
//! The schedule is set through [`schedule_control`] (`dfs scrub-schedule`,
//! the `scrub.schedule` method: on a mount through [`handle_control`],
//! which also wakes the scheduler so a new schedule is followed at once).
//!
//! It must never: scrub while paused or after stop; hold the metadata lock
//! while reading devices; write a device for the position other than
//! through the journal; keep the pool from closing (`shutdown` joins it).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::pool::{now_ns, Pool};
use super::scrub;
use super::state::{Op, ScrubFrequency, ScrubRecord};

/// Extents between two persisted positions.
pub const PERSIST_EXTENTS: u64 = 64;
/// Time between two persisted positions.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(5);
/// Sleep before the next extent when users did IO meanwhile.
pub const YIELD_PAUSE: Duration = Duration::from_millis(20);
/// How often the schedule is looked at.
pub const SCHEDULE_TICK: Duration = Duration::from_secs(60);

const MIB: u64 = 1 << 20;

/// How hard a scrub may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Intensity {
    Low,
    Medium,
    High,
}

impl Intensity {
    /// The budget in bytes per second (see the module doc).
    pub fn bytes_per_sec(self) -> u64 {
        match self {
            Intensity::Low => 16 * MIB,
            Intensity::Medium => 64 * MIB,
            Intensity::High => 256 * MIB,
        }
    }

    /// The value kept in `ScrubRecord::intensity`.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// From `ScrubRecord::intensity` (unknown values read as low).
    pub fn from_code(c: u8) -> Intensity {
        match c {
            2 => Intensity::High,
            1 => Intensity::Medium,
            _ => Intensity::Low,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Intensity::Low => "low",
            Intensity::Medium => "medium",
            Intensity::High => "high",
        }
    }
}

impl std::str::FromStr for Intensity {
    type Err = String;
    fn from_str(s: &str) -> Result<Intensity, String> {
        match s {
            "low" => Ok(Intensity::Low),
            "medium" => Ok(Intensity::Medium),
            "high" => Ok(Intensity::High),
            other => Err(format!("{other:?} is not an intensity (low, medium or high)")),
        }
    }
}

/// Parse a frequency name.
pub fn parse_frequency(s: &str) -> Result<ScrubFrequency, String> {
    match s {
        "nightly" => Ok(ScrubFrequency::Nightly),
        "weekly" => Ok(ScrubFrequency::Weekly),
        "continuous" => Ok(ScrubFrequency::Continuous),
        "off" => Ok(ScrubFrequency::Off),
        other => Err(format!("{other:?} is not a frequency (nightly, weekly, continuous or off)")),
    }
}

/// The name of a frequency.
pub fn frequency_name(f: ScrubFrequency) -> &'static str {
    match f {
        ScrubFrequency::Off => "off",
        ScrubFrequency::Nightly => "nightly",
        ScrubFrequency::Weekly => "weekly",
        ScrubFrequency::Continuous => "continuous",
    }
}

/// A byte budget over time: [`RateLimiter::delay`] says how long to wait so
/// that the bytes counted never run ahead of `rate` per second.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl RateLimiter {
    pub fn new(rate: u64) -> RateLimiter {
        RateLimiter { rate: rate.max(1), start: Instant::now(), bytes: 0 }
    }

    /// Count `n` bytes done; the wait before the next read.
    pub fn add(&mut self, n: u64) -> Duration {
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        due.saturating_sub(self.start.elapsed())
    }
}

/// What the worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    /// No worker (never started, stopped, or the pass ended).
    Idle,
    Running,
    Paused,
}

/// `status`: progress, rate, errors, ETA.
#[derive(Debug, Clone, Serialize)]
pub struct ScrubStatus {
    pub state: DaemonState,
    pub intensity: Intensity,
    pub rate_limit_bytes_per_sec: u64,
    pub frequency: &'static str,
    /// Extents done this pass (persisted totals included) and in the pool.
    pub extents_done: u64,
    pub extents_total: u64,
    pub bytes_done: u64,
    pub errors: u64,
    pub repaired: u64,
    pub unrepairable: u64,
    /// Bytes per second measured since this worker started (or resumed).
    pub rate_bytes_per_sec: u64,
    /// Estimated seconds left, when running and a rate is known.
    pub eta_secs: Option<u64>,
    pub pass_started_ns: i64,
    pub last_pass_finished_ns: i64,
    /// Passes completed by this daemon.
    pub passes_completed: u64,
    /// The last errors seen (newest last, at most 20).
    pub recent_errors: Vec<scrub::FragmentError>,
}

#[derive(Debug)]
struct Ctl {
    state: DaemonState,
    stop: bool,
    /// The daemon is going away (unmount): the scheduler ends too.
    shutdown: bool,
    /// Stopped by a user: the schedule does not restart it until `start`.
    user_stopped: bool,
    rate: u64,
    intensity: Intensity,
    unrepairable: u64,
    passes: u64,
    recent: Vec<scrub::FragmentError>,
    /// The worker's position and totals, ahead of the persisted ones.
    live: Option<ScrubRecord>,
    /// Measured: bytes and time since the worker (re)started.
    run_bytes: u64,
    run_start: Option<Instant>,
    run_time: Duration,
}

#[derive(Debug)]
struct Inner {
    pool: Arc<Pool>,
    ctl: Mutex<Ctl>,
    cv: Condvar,
    /// Held while one extent is scrubbed: the worker and a one-shot pass
    /// ([`ScrubDaemon::run_once`]) never judge and repair the same extent
    /// at once.
    extent: Mutex<()>,
    /// One one-shot pass at a time.
    once: Mutex<()>,
}

impl Inner {
    fn ctl(&self) -> MutexGuard<'_, Ctl> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a daemon command was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrubDaemonError {
    #[error("the pool is mounted read-only: scrub repairs, so it needs a read-write mount")]
    ReadOnly,
    #[error("the pool is mounted read-only: the scrub schedule is stored in the pool, so it needs a read-write mount")]
    ReadOnlySchedule,
    #[error("no scrub is running")]
    NotRunning,
    #[error("unknown method {0:?} (scrub.start, scrub.status, scrub.pause, scrub.resume, scrub.stop, scrub.run, scrub.schedule)")]
    UnknownMethod(String),
    #[error("bad parameters: {0}")]
    BadParams(String),
    #[error(transparent)]
    Engine(#[from] super::EngineError),
}

/// The scrub daemon of one open pool. Dropping it stops it (see `shutdown`).
#[derive(Debug)]
pub struct ScrubDaemon {
    inner: Arc<Inner>,
    worker: Mutex<Option<JoinHandle<()>>>,
    scheduler: Mutex<Option<JoinHandle<()>>>,
}

impl ScrubDaemon {
    /// A daemon for `pool`, idle.
    pub fn new(pool: Arc<Pool>) -> ScrubDaemon {
        let intensity = Intensity::from_code(pool.meta().state.scrub.intensity);
        let ctl = Ctl {
            state: DaemonState::Idle,
            stop: false,
            shutdown: false,
            user_stopped: false,
            rate: intensity.bytes_per_sec(),
            intensity,
            unrepairable: 0,
            passes: 0,
            recent: Vec::new(),
            live: None,
            run_bytes: 0,
            run_start: None,
            run_time: Duration::ZERO,
        };
        ScrubDaemon {
            inner: Arc::new(Inner {
                pool,
                ctl: Mutex::new(ctl),
                cv: Condvar::new(),
                extent: Mutex::new(()),
                once: Mutex::new(()),
            }),
            worker: Mutex::new(None),
            scheduler: Mutex::new(None),
        }
    }

    /// Start (or resume the persisted pass of) a scrub at `intensity` (the
    /// pool's stored intensity if `None`). Running already: only the
    /// intensity changes. Paused: resumes.
    pub fn start(&self, intensity: Option<Intensity>) -> Result<ScrubStatus, ScrubDaemonError> {
        let i = intensity.unwrap_or_else(|| Intensity::from_code(self.inner.pool.meta().state.scrub.intensity));
        self.start_with_rate(i, i.bytes_per_sec())
    }

    /// [`ScrubDaemon::start`] with an explicit byte budget (tests, tools).
    pub fn start_with_rate(&self, intensity: Intensity, rate: u64) -> Result<ScrubStatus, ScrubDaemonError> {
        if self.inner.pool.read_only() {
            return Err(ScrubDaemonError::ReadOnly);
        }
        let mut w = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut c = self.inner.ctl();
            if c.shutdown {
                return Err(ScrubDaemonError::NotRunning);
            }
            c.intensity = intensity;
            c.rate = rate.max(1);
            c.user_stopped = false;
            if c.state != DaemonState::Idle {
                c.state = DaemonState::Running;
                drop(c);
                self.inner.cv.notify_all();
                return Ok(self.status());
            }
            c.state = DaemonState::Running;
            c.stop = false;
        }
        if let Some(h) = w.take() {
            let _ = h.join();
        }
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new().name("dfs-scrub".into()).spawn(move || worker(&inner));
        match spawned {
            Ok(h) => *w = Some(h),
            Err(e) => {
                self.inner.ctl().state = DaemonState::Idle;
                return Err(ScrubDaemonError::Engine(super::EngineError::Other(format!(
                    "spawn the scrub worker: {e}"
                ))));
            }
        }
        Ok(self.status())
    }

    /// Pause the running scrub (its position is persisted).
    pub fn pause(&self) -> Result<ScrubStatus, ScrubDaemonError> {
        {
            let mut c = self.inner.ctl();
            if c.state != DaemonState::Running {
                return Err(ScrubDaemonError::NotRunning);
            }
            c.state = DaemonState::Paused;
        }
        self.inner.cv.notify_all();
        Ok(self.status())
    }

    /// Resume a paused scrub.
    pub fn resume(&self) -> Result<ScrubStatus, ScrubDaemonError> {
        {
            let mut c = self.inner.ctl();
            if c.state != DaemonState::Paused {
                return Err(ScrubDaemonError::NotRunning);
            }
            c.state = DaemonState::Running;
        }
        self.inner.cv.notify_all();
        Ok(self.status())
    }

    /// Stop the worker and wait for it; the position is persisted, so a
    /// later `start` resumes the pass.
    pub fn stop(&self) -> Result<ScrubStatus, ScrubDaemonError> {
        let was = {
            let mut c = self.inner.ctl();
            c.user_stopped = true;
            c.state
        };
        self.join_worker();
        if was == DaemonState::Idle {
            return Err(ScrubDaemonError::NotRunning);
        }
        Ok(self.status())
    }

    fn join_worker(&self) {
        self.inner.ctl().stop = true;
        self.inner.cv.notify_all();
        if let Some(h) = self.worker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
        let mut c = self.inner.ctl();
        c.state = DaemonState::Idle;
    }

    /// Stop the worker and the scheduler (unmount). Idempotent.
    pub fn shutdown(&self) {
        self.inner.ctl().shutdown = true;
        self.join_worker();
        if let Some(h) = self.scheduler.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // The scheduler may hold the last reference and run this drop.
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
    }

    /// Progress, rate, errors, ETA.
    pub fn status(&self) -> ScrubStatus {
        let persisted = self.inner.pool.meta().state.scrub.clone();
        let total = self.inner.pool.meta().state.extents.len() as u64;
        let c = self.inner.ctl();
        // The schedule is the pool's (it may change during a pass).
        let frequency = persisted.frequency;
        let rec = c.live.clone().unwrap_or(persisted);
        let elapsed = c.run_time + c.run_start.map(|s| s.elapsed()).unwrap_or_default();
        let rate = if elapsed.as_secs_f64() > 0.0 { (c.run_bytes as f64 / elapsed.as_secs_f64()) as u64 } else { 0 };
        let done = if rec.running { rec.extents_done } else { 0 };
        let eta = (c.state == DaemonState::Running && rate > 0 && done > 0).then(|| {
            let per_extent = rec.bytes_done as f64 / done as f64;
            (total.saturating_sub(done) as f64 * per_extent / rate as f64).ceil() as u64
        });
        ScrubStatus {
            state: c.state,
            intensity: c.intensity,
            rate_limit_bytes_per_sec: c.rate,
            frequency: frequency_name(frequency),
            extents_done: rec.extents_done,
            extents_total: total,
            bytes_done: rec.bytes_done,
            errors: rec.errors,
            repaired: rec.repaired,
            unrepairable: c.unrepairable,
            rate_bytes_per_sec: rate,
            eta_secs: eta,
            pass_started_ns: rec.pass_started_ns,
            last_pass_finished_ns: rec.pass_finished_ns,
            passes_completed: c.passes,
            recent_errors: c.recent.clone(),
        }
    }

    /// One whole scrub now, answered when done (`dfs scrub [--repair]` on
    /// a mounted pool, the `scrub.run` method): [`scrub::scrub_live`],
    /// extent by extent as the worker scrubs them (never the same extent as
    /// the worker at once), unpaced but yielding to user IO, stopped when
    /// the mount goes away. When no background pass is under way it is
    /// recorded as the pool's last pass (`State::scrub`, so health and the
    /// schedule see it); a background pass keeps its own position.
    pub fn run_once(&self, repair: bool) -> Result<scrub::ScrubReport, ScrubDaemonError> {
        let inner = &self.inner;
        let pool = &inner.pool;
        if repair && pool.read_only() {
            return Err(ScrubDaemonError::ReadOnly);
        }
        let _once = inner.once.lock().unwrap_or_else(|p| p.into_inner());
        let started = now_ns();
        tracing::info!(repair, "scrub: one-shot pass running");
        let mut last_activity = user_activity(pool);
        let mut each = |id: u128| {
            if inner.ctl().shutdown {
                return None;
            }
            if user_activity(pool) != last_activity {
                std::thread::sleep(YIELD_PAUSE);
            }
            let r = {
                let _one = inner.extent.lock().unwrap_or_else(|p| p.into_inner());
                scrub::scrub_extent(pool, id, repair)
            };
            for e in &r.errors {
                tracing::warn!(extent = %e.extent, fragment = e.index, member = e.member, kind = e.kind, repaired = e.repaired, "scrub: {}", e.detail);
            }
            last_activity = user_activity(pool);
            Some(r)
        };
        let report = scrub::scrub_live(pool, repair, &mut each)?;
        tracing::info!(
            extents = report.extents_checked,
            bytes = report.bytes_checked,
            errors = report.errors.len(),
            repaired = report.repaired,
            clean = report.clean,
            "scrub: one-shot pass done"
        );
        if !pool.read_only() {
            // The control lock keeps the worker from starting meanwhile.
            let c = inner.ctl();
            let persisted = record(pool);
            if c.state == DaemonState::Idle && !persisted.running {
                let rec = ScrubRecord {
                    frequency: persisted.frequency,
                    intensity: persisted.intensity,
                    running: false,
                    cursor: None,
                    pass_started_ns: started,
                    pass_finished_ns: now_ns(),
                    extents_done: report.extents_checked,
                    bytes_done: report.bytes_checked,
                    errors: report.errors.len() as u64,
                    repaired: report.repaired,
                };
                if let Err(e) = persist(pool, &rec) {
                    tracing::warn!("scrub: cannot record the pass: {e}");
                }
            }
        }
        Ok(report)
    }

    /// The stored schedule changed (`scrub.schedule`): its intensity
    /// applies to the pass under way too, a user's `stop` is forgotten
    /// unless the frequency is `off` (setting a schedule is the newer
    /// word), and the scheduler looks at once rather than at its next tick.
    pub fn schedule_changed(&self) {
        let rec = record(&self.inner.pool);
        {
            let mut c = self.inner.ctl();
            let i = Intensity::from_code(rec.intensity);
            c.intensity = i;
            c.rate = i.bytes_per_sec();
            if rec.frequency != ScrubFrequency::Off {
                c.user_stopped = false;
            }
        }
        self.inner.cv.notify_all();
    }

    /// Start the schedule thread: once a [`SCHEDULE_TICK`] (and at once),
    /// start a scrub when one is due (see the module doc). Not on a
    /// read-only pool.
    pub fn run_schedule(self: &Arc<Self>) {
        self.run_schedule_every(SCHEDULE_TICK);
    }

    /// [`ScrubDaemon::run_schedule`] with another tick (tests).
    pub fn run_schedule_every(self: &Arc<Self>, tick: Duration) {
        if self.inner.pool.read_only() {
            return;
        }
        let me = Arc::downgrade(self);
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new().name("dfs-scrub-schedule".into()).spawn(move || loop {
            if inner.ctl().shutdown {
                return;
            }
            let Some(d) = me.upgrade() else { return };
            let idle = {
                let c = d.inner.ctl();
                c.state == DaemonState::Idle && !c.user_stopped
            };
            if idle && due(&d.inner.pool.meta().state.scrub, now_ns()) {
                let i = Intensity::from_code(d.inner.pool.meta().state.scrub.intensity);
                if let Err(e) = d.start(Some(i)) {
                    tracing::warn!("scheduled scrub: {e}");
                }
            }
            drop(d);
            let c = inner.ctl();
            let (c, _) = inner.cv.wait_timeout(c, tick).unwrap_or_else(|p| p.into_inner());
            if c.shutdown {
                return;
            }
        });
        match spawned {
            Ok(h) => *self.scheduler.lock().unwrap_or_else(|p| p.into_inner()) = Some(h),
            Err(e) => tracing::warn!("cannot start the scrub schedule: {e}"),
        }
    }
}

impl Drop for ScrubDaemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether the schedule wants a pass now.
pub fn due(rec: &ScrubRecord, now: i64) -> bool {
    const DAY: i64 = 24 * 3600 * 1_000_000_000;
    if rec.frequency == ScrubFrequency::Off {
        return false;
    }
    if rec.running {
        return true;
    }
    let since = now - rec.pass_started_ns;
    match rec.frequency {
        ScrubFrequency::Off => false,
        ScrubFrequency::Continuous => true,
        ScrubFrequency::Nightly => rec.pass_started_ns == 0 || since >= DAY,
        ScrubFrequency::Weekly => rec.pass_started_ns == 0 || since >= 7 * DAY,
    }
}

/// Set the schedule (and the stored intensity) of a writable pool.
pub fn set_schedule(pool: &Pool, frequency: ScrubFrequency, intensity: Intensity) -> super::Result<ScrubRecord> {
    let mut m = pool.meta();
    let mut rec = m.state.scrub.clone();
    rec.frequency = frequency;
    rec.intensity = intensity.code();
    pool.apply_txn(&mut m, vec![Op::SetScrub { scrub: rec.clone() }])?;
    drop(m);
    pool.commit()?;
    Ok(rec)
}

/// The pool's scrub record (schedule and persisted position).
pub fn record(pool: &Pool) -> ScrubRecord {
    pool.meta().state.scrub.clone()
}

/// The schedule as `dfs scrub-schedule` shows it (`--json`), from a mount
/// (`scrub.schedule`) or an unmounted pool alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScheduleView {
    pub frequency: String,
    pub intensity: String,
    pub rate_limit_bytes_per_sec: u64,
    /// A pass is under way (or was interrupted and resumes).
    pub pass_running: bool,
    pub extents_done: u64,
    pub pass_started_ns: i64,
    pub last_pass_finished_ns: i64,
}

impl ScheduleView {
    pub fn of(rec: &ScrubRecord) -> ScheduleView {
        let i = Intensity::from_code(rec.intensity);
        ScheduleView {
            frequency: frequency_name(rec.frequency).to_string(),
            intensity: i.name().to_string(),
            rate_limit_bytes_per_sec: i.bytes_per_sec(),
            pass_running: rec.running,
            extents_done: rec.extents_done,
            pass_started_ns: rec.pass_started_ns,
            last_pass_finished_ns: rec.pass_finished_ns,
        }
    }
}

/// An optional string parameter.
fn param_str<'a>(params: &'a serde_json::Value, name: &str) -> Result<Option<&'a str>, ScrubDaemonError> {
    match params.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ScrubDaemonError::BadParams(format!("{name}: {other} is not a string"))),
    }
}

/// `scrub.schedule` (params `frequency`?, `intensity`?): set what is given
/// (the rest is kept), then answer the [`ScheduleView`]. The first value is
/// true when something was set. Used by an unmounted pool's in-process
/// registry and, through [`handle_control`], by a mount.
pub fn schedule_control(
    pool: &Pool,
    params: &serde_json::Value,
) -> Result<(bool, serde_json::Value), ScrubDaemonError> {
    let frequency =
        param_str(params, "frequency")?.map(parse_frequency).transpose().map_err(ScrubDaemonError::BadParams)?;
    let intensity = param_str(params, "intensity")?
        .map(str::parse::<Intensity>)
        .transpose()
        .map_err(ScrubDaemonError::BadParams)?;
    let mut rec = record(pool);
    let change = frequency.is_some() || intensity.is_some();
    if change {
        if pool.read_only() {
            return Err(ScrubDaemonError::ReadOnlySchedule);
        }
        let f = frequency.unwrap_or(rec.frequency);
        let i = intensity.unwrap_or_else(|| Intensity::from_code(rec.intensity));
        rec = set_schedule(pool, f, i)?;
        tracing::info!(frequency = frequency_name(f), intensity = i.name(), "scrub schedule set");
    }
    let view = serde_json::to_value(ScheduleView::of(&rec)).map_err(|e| ScrubDaemonError::BadParams(e.to_string()))?;
    Ok((change, view))
}

fn persist(pool: &Pool, rec: &ScrubRecord) -> super::Result<()> {
    {
        let mut m = pool.meta();
        let mut r = rec.clone();
        // The schedule may have changed meanwhile: keep it.
        r.frequency = m.state.scrub.frequency;
        r.intensity = m.state.scrub.intensity;
        pool.apply_txn(&mut m, vec![Op::SetScrub { scrub: r }])?;
    }
    pool.commit()
}

/// User work the pool did so far (for yielding).
fn user_activity(pool: &Pool) -> u64 {
    let c = &pool.counters;
    c.ops.load(Ordering::Relaxed)
        + c.fragments_read.load(Ordering::Relaxed)
        + c.fragments_written.load(Ordering::Relaxed)
}

/// Wait while paused; true when told to stop.
fn wait_running(inner: &Inner) -> bool {
    let mut c = inner.ctl();
    loop {
        if c.stop {
            return true;
        }
        if c.state == DaemonState::Running {
            if c.run_start.is_none() {
                c.run_start = Some(Instant::now());
            }
            return false;
        }
        if let Some(s) = c.run_start.take() {
            c.run_time += s.elapsed();
        }
        c = inner.cv.wait(c).unwrap_or_else(|p| p.into_inner());
    }
}

/// Sleep `d` unless told to stop or pause first; true when stopping.
fn nap(inner: &Inner, d: Duration) -> bool {
    if d.is_zero() {
        return false;
    }
    let c = inner.ctl();
    let (c, _) = inner
        .cv
        .wait_timeout_while(c, d, |c| !c.stop && c.state == DaemonState::Running)
        .unwrap_or_else(|p| p.into_inner());
    c.stop
}

fn worker(inner: &Inner) {
    let pool = &inner.pool;
    let mut rec = pool.meta().state.scrub.clone();
    if !rec.running {
        rec = ScrubRecord {
            frequency: rec.frequency,
            intensity: rec.intensity,
            running: true,
            pass_started_ns: now_ns(),
            pass_finished_ns: rec.pass_finished_ns,
            ..Default::default()
        };
        if let Err(e) = persist(pool, &rec) {
            tracing::warn!("scrub: cannot record the start of a pass: {e}");
        }
    }
    {
        let mut c = inner.ctl();
        c.run_bytes = 0;
        c.run_time = Duration::ZERO;
        c.run_start = Some(Instant::now());
    }
    tracing::info!(cursor = ?rec.cursor.map(uuid::Uuid::from_u128), "scrub: pass running");
    let mut limiter = RateLimiter::new(inner.ctl().rate);
    let mut rate_now = inner.ctl().rate;
    let mut since_persist = 0u64;
    let mut last_persist = Instant::now();
    let mut last_activity = user_activity(pool);
    let finished = loop {
        if wait_running(inner) {
            break false;
        }
        let rate = inner.ctl().rate;
        if rate != rate_now {
            (limiter, rate_now) = (RateLimiter::new(rate), rate);
        }
        // The next extent after the cursor, in id order.
        let next = {
            let m = pool.meta();
            let after = rec.cursor;
            m.state.extents.keys().copied().filter(|id| after.is_none_or(|a| *id > a)).min()
        };
        let Some(id) = next else { break true };
        // Users did IO since our last extent: let them go first.
        if user_activity(pool) != last_activity && nap(inner, YIELD_PAUSE) {
            break false;
        }
        let r = {
            let _one = inner.extent.lock().unwrap_or_else(|p| p.into_inner());
            scrub::scrub_extent(pool, id, true)
        };
        rec.cursor = Some(id);
        if !r.vanished {
            rec.extents_done += 1;
        }
        rec.bytes_done += r.bytes;
        rec.errors += r.errors.len() as u64;
        rec.repaired += r.repaired as u64;
        {
            let mut c = inner.ctl();
            c.live = Some(rec.clone());
            c.run_bytes += r.bytes;
            if r.unrepairable {
                c.unrepairable += 1;
            }
            for e in &r.errors {
                tracing::warn!(extent = %e.extent, fragment = e.index, member = e.member, kind = e.kind, "scrub: {}", e.detail);
                c.recent.push(e.clone());
            }
            let n = c.recent.len();
            if n > 20 {
                c.recent.drain(..n - 20);
            }
        }
        since_persist += 1;
        if r.repaired > 0 || since_persist >= PERSIST_EXTENTS || last_persist.elapsed() >= PERSIST_INTERVAL {
            if let Err(e) = persist(pool, &rec) {
                tracing::warn!("scrub: cannot persist the position: {e}");
            }
            since_persist = 0;
            last_persist = Instant::now();
        }
        // Our own repair and persist count as activity; start afresh here.
        last_activity = user_activity(pool);
        if nap(inner, limiter.add(r.bytes)) {
            break false;
        }
        // A pause while napping: persist before waiting.
        if inner.ctl().state == DaemonState::Paused {
            if let Err(e) = persist(pool, &rec) {
                tracing::warn!("scrub: cannot persist the position: {e}");
            }
            since_persist = 0;
        }
    };
    if finished {
        rec.running = false;
        rec.cursor = None;
        rec.pass_finished_ns = now_ns();
        tracing::info!(extents = rec.extents_done, bytes = rec.bytes_done, errors = rec.errors, "scrub: pass done");
    }
    if let Err(e) = persist(pool, &rec) {
        tracing::warn!("scrub: cannot persist the position: {e}");
    }
    let mut c = inner.ctl();
    c.live = None;
    if let Some(s) = c.run_start.take() {
        c.run_time += s.elapsed();
    }
    if finished {
        c.passes += 1;
    }
    c.state = DaemonState::Idle;
}

/// The control-socket entry of the daemon: `method` is one of
/// `scrub.start` (params `{"intensity": "low|medium|high"}`, optional),
/// `scrub.status`, `scrub.pause`, `scrub.resume`, `scrub.stop` (the
/// answer is the [`ScrubStatus`] as JSON), `scrub.run` (params `repair`?:
/// one whole pass now, [`ScrubDaemon::run_once`]; the answer is the
/// [`scrub::ScrubReport`]), or `scrub.schedule` (params
/// `frequency`?, `intensity`?; the answer is the [`ScheduleView`], and the
/// daemon follows a new schedule at once: [`ScrubDaemon::schedule_changed`]).
pub fn handle_control(
    daemon: &ScrubDaemon,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, ScrubDaemonError> {
    let status = match method {
        "scrub.start" => {
            let intensity = match params.get("intensity") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.parse().map_err(ScrubDaemonError::BadParams)?),
                Some(other) => return Err(ScrubDaemonError::BadParams(format!("intensity: {other} is not a string"))),
            };
            daemon.start(intensity)?
        }
        "scrub.status" => daemon.status(),
        "scrub.run" => {
            let repair = match params.get("repair") {
                None | Some(serde_json::Value::Null) => false,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(ScrubDaemonError::BadParams(format!("repair: {other} is not true or false")))
                }
            };
            let report = daemon.run_once(repair)?;
            return serde_json::to_value(report).map_err(|e| ScrubDaemonError::BadParams(e.to_string()));
        }
        "scrub.schedule" => {
            let (changed, view) = schedule_control(&daemon.inner.pool, &params)?;
            if changed {
                daemon.schedule_changed();
            }
            return Ok(view);
        }
        "scrub.pause" => daemon.pause()?,
        "scrub.resume" => daemon.resume()?,
        "scrub.stop" => daemon.stop()?,
        other => return Err(ScrubDaemonError::UnknownMethod(other.to_string())),
    };
    serde_json::to_value(status).map_err(|e| ScrubDaemonError::BadParams(e.to_string()))
}
