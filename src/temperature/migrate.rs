//! # Lazy migration: the queue, the worker, one extent's re-encode
//!
//! Owns what happens after a read found an extent under the wrong policy
//! for its temperature: a bounded queue of [`Job`]s (one per extent; a full
//! queue drops the job, the next read queues it again), a background
//! [`MigrationWorker`] that takes jobs at most `max_migrations_per_sec` and
//! flushes the statistics every `flush_interval`, and
//! [`Pool::migrate_extent`], the re-encode of one extent through the data
//! path (read verified → write under the target → one transaction that
//! swaps the extent in the file *and* records the migration in the
//! policy-change history). Being one transaction, a crash at any point
//! leaves either the old extent and no record (rolled back: the new
//! fragments were never referenced, and allocation is rebuilt from the
//! metadata at open) or the new extent and its record; the old fragments
//! are freed only once that commit is durable. A pinned file (an explicit
//! `user.dfs.policy` or `change-policy --path`) is never migrated.
//!
//! This module never blocks a read: reads only push to the queue, and a
//! migration holds the metadata lock only to check and to swap, never
//! across its IO. A test hook ([`MigrationQueue::stall_migrations`]) stops
//! migrations midway so tests can show reads going on meanwhile.

use super::{Settings, Temp, Tracker};
use crate::engine::error::Result;
use crate::engine::placement;
use crate::engine::pool::{now_ns, Pool};
use crate::engine::state::{Body, ChangeState, Ino, Op, PolicyChange, EXTENT_SIZE};
use dfs_format::Policy;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

/// One queued migration.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub ino: Ino,
    /// Extent index in the file.
    pub idx: u64,
    pub id: u128,
    pub target: Policy,
    pub class: Temp,
    pub queued_ns: i64,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    ids: HashSet<u128>,
    running: usize,
    stop: bool,
}

impl Queue {
    /// Drop the jobs waiting (not the running ones); returns how many.
    fn drop_waiting(&mut self) -> u64 {
        let n = self.jobs.len() as u64;
        for j in self.jobs.drain(..) {
            self.ids.remove(&j.id);
        }
        n
    }
}

/// A test hook: while armed, a migration stops between writing the new
/// extent and swapping it into the file (the longest phase, with no lock
/// held), until released. Lets tests hold the worker provably blocked.
#[derive(Debug, Default)]
struct Stall {
    armed: AtomicBool,
    /// Migrations stopped at the hook now.
    stopped: Mutex<usize>,
    cv: Condvar,
}

/// The bounded migration queue (shared by the pool and its worker).
#[derive(Debug)]
pub struct MigrationQueue {
    q: Mutex<Queue>,
    cv: Condvar,
    stall: Stall,
    capacity: usize,
    /// Jobs dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Migrations done (extent re-encoded and committed).
    pub done: AtomicU64,
    /// Jobs skipped (pinned, rewritten meanwhile, unsatisfiable) or failed.
    pub skipped: AtomicU64,
    pub failed: AtomicU64,
}

impl MigrationQueue {
    pub(crate) fn new(capacity: usize) -> MigrationQueue {
        MigrationQueue {
            q: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            stall: Stall::default(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
            done: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `job` unless its extent is queued already or the queue is full.
    pub(crate) fn push(&self, job: Job) {
        let mut q = self.lock();
        if q.ids.contains(&job.id) {
            return;
        }
        if q.jobs.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.ids.insert(job.id);
        q.jobs.push_back(job);
        self.cv.notify_all();
    }

    fn pop(&self) -> Option<Job> {
        let mut q = self.lock();
        let j = q.jobs.pop_front()?;
        q.running += 1;
        Some(j)
    }

    fn finish(&self, job: &Job) {
        let mut q = self.lock();
        q.ids.remove(&job.id);
        q.running -= 1;
        self.cv.notify_all();
    }

    /// Drop every job still waiting (not the ones running); the settings
    /// they were queued under changed.
    pub(crate) fn clear(&self) {
        self.lock().drop_waiting();
        self.cv.notify_all();
    }

    /// Jobs waiting.
    pub fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Test hook: from now on, every migration stops after writing its new
    /// extent and before swapping it in, until [`Self::release_migrations`]
    /// (or the worker is stopped).
    pub fn stall_migrations(&self) {
        self.stall.armed.store(true, Ordering::SeqCst);
    }

    /// Test hook: let stopped migrations go on, and stop stopping them.
    pub fn release_migrations(&self) {
        self.stall.armed.store(false, Ordering::SeqCst);
        let _held = self.stall.stopped.lock().unwrap_or_else(|p| p.into_inner());
        self.stall.cv.notify_all();
    }

    /// Test hook: migrations stopped at the hook right now.
    pub fn stalled(&self) -> usize {
        *self.stall.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Test hook: wait (at most `timeout`) until a migration is stopped at
    /// the hook. Returns whether one is.
    pub fn wait_stalled(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut n = self.stall.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while *n == 0 {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self.stall.cv.wait_timeout(n, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// Where a migration stops while the hook is armed (one atomic load
    /// otherwise).
    fn stall_point(&self) {
        if !self.stall.armed.load(Ordering::SeqCst) {
            return;
        }
        let mut n = self.stall.stopped.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        self.stall.cv.notify_all();
        while self.stall.armed.load(Ordering::SeqCst) {
            n = self.stall.cv.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n -= 1;
    }

    /// Wait (at most `timeout`) until nothing is queued or running.
    /// Returns whether the queue went idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut q = self.lock();
        while !(q.jobs.is_empty() && q.running == 0) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self.cv.wait_timeout(q, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}

/// What became of one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Re-encoded: the file now points at this new extent.
    Migrated { new_id: u128 },
    /// Left alone: pinned, rewritten or deleted meanwhile, already under
    /// the target, or the target can't be placed now.
    Skipped,
}

impl Pool {
    /// Re-encode extent `job.idx` of `job.ino` under `job.target` and record
    /// it in the policy-change history, in one transaction (see the module
    /// doc). Not committed: the caller commits (the worker does, after each).
    pub fn migrate_extent(&self, job: &Job) -> Result<Outcome> {
        self.migrate_extent_started(job, now_ns())
    }

    /// [`Pool::migrate_extent`], recording `started_ns` as the start in
    /// the history (the worker passes the instant its rate limit admitted
    /// the job).
    fn migrate_extent_started(&self, job: &Job, started_ns: i64) -> Result<Outcome> {
        let still_there = |m: &crate::engine::pool::Meta| -> bool {
            match m.state.inodes.get(&job.ino) {
                Some(i) if i.policy.is_none() => {
                    matches!(&i.body, Body::File(map) if map.get(&job.idx) == Some(&job.id))
                }
                _ => false,
            }
        };
        let old = {
            let m = self.meta();
            if !still_there(&m) {
                return Ok(Outcome::Skipped);
            }
            let Some(e) = m.state.extents.get(&job.id) else { return Ok(Outcome::Skipped) };
            if e.policy == job.target.encode() || !placement::can_satisfy(job.target, &self.member_views(&m)) {
                return Ok(Outcome::Skipped);
            }
            e.clone()
        };
        let bytes = self.read_extent(&old)?;
        let new = self.write_extent(job.target, &bytes)?;
        self.temperature.queue.stall_point();
        let mut m = self.meta();
        if !still_there(&m) {
            drop(m);
            self.free_uncommitted(&new.frags);
            return Ok(Outcome::Skipped);
        }
        let stats = self.temperature.get(&m, old.id);
        let change = PolicyChange {
            id: m.state.history.iter().map(|c| c.id).max().unwrap_or(0) + 1,
            scope: format!("inode {} offset {} (temperature)", job.ino, job.idx * EXTENT_SIZE),
            ino: job.ino,
            recursive: false,
            policy: job.target.encode(),
            started_ns,
            finished_ns: Some(now_ns()),
            state: ChangeState::Done,
            extents_done: 1,
            extents_total: 1,
            bytes_done: old.len as u64,
            bytes_total: old.len as u64,
            message: format!(
                "{}: extent {} ({}) -> {}",
                job.class,
                uuid::Uuid::from_u128(old.id),
                old.policy(),
                uuid::Uuid::from_u128(new.id)
            ),
        };
        let new_id = new.id;
        self.apply_txn(
            &mut m,
            vec![Op::SetExtent { ino: job.ino, index: job.idx, extent: Some(new) }, Op::PutPolicyChange { change }],
        )?;
        if let Some(s) = stats {
            self.temperature.put(new_id, s);
        }
        Ok(Outcome::Migrated { new_id })
    }

    /// Run one queued job here (counted, then committed).
    fn run_job(&self, job: &Job, started_ns: i64) -> Result<Outcome> {
        let q = &self.temperature.queue;
        let r = self.migrate_extent_started(job, started_ns).and_then(|o| self.commit().map(|_| o));
        match &r {
            Ok(Outcome::Migrated { .. }) => q.done.fetch_add(1, Ordering::Relaxed),
            Ok(Outcome::Skipped) => q.skipped.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(extent = %uuid::Uuid::from_u128(job.id), "migration failed: {e}");
                q.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        q.finish(job);
        r
    }

    /// Run every queued migration now, in this thread, without the rate
    /// limit (tests, and the CLI on an unmounted pool). Returns the outcomes.
    pub fn run_migrations(&self) -> Vec<Result<Outcome>> {
        let mut out = Vec::new();
        while let Some(job) = self.temperature.queue.pop() {
            out.push(self.run_job(&job, now_ns()));
        }
        out
    }

    /// Start the background migration worker of a shared pool. It holds
    /// the pool only while it works on a job; stop it (or drop the handle)
    /// before closing the pool.
    pub fn start_migration_worker(self: &Arc<Self>) -> MigrationWorker {
        let weak: Weak<Pool> = Arc::downgrade(self);
        let queue = self.temperature.queue.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flush_every = self.temperature.cfg.flush_interval;
        let settings = self.temperature.settings.clone();
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("dfs-migrate".into())
            .spawn(move || worker(weak, &queue, &stop2, flush_every, &settings))
            .ok();
        MigrationWorker { queue: self.temperature.queue.clone(), stop, handle }
    }
}

/// The worker's pace: job starts at least `1 / rate` seconds apart (a
/// token bucket holding one token), so any window of `w` seconds holds at
/// most `floor(w * rate) + 1` starts, however the jobs arrive and however
/// long each takes. Pure: time is passed in, so tests can drive it.
#[derive(Debug, Clone, Copy)]
pub struct RateLimiter {
    per_sec: f64,
    gap: Duration,
    last: Option<Instant>,
}

fn gap_of(per_sec: f64) -> Duration {
    if per_sec > 0.0 {
        Duration::from_secs_f64(1.0 / per_sec)
    } else {
        Duration::ZERO
    }
}

impl RateLimiter {
    /// At most `per_sec` starts a second (0 or less: no limit).
    pub fn new(per_sec: f64) -> RateLimiter {
        RateLimiter { per_sec, gap: gap_of(per_sec), last: None }
    }

    /// The rate now in force.
    pub fn rate(&self) -> f64 {
        self.per_sec
    }

    /// Change the rate (the operator's `migration_rate`): the next start
    /// is due `1 / per_sec` after the last one.
    pub fn set_rate(&mut self, per_sec: f64) {
        *self = RateLimiter { per_sec, gap: gap_of(per_sec), last: self.last };
    }

    /// How long a job that wants to start at `now` must still wait (zero:
    /// it may start now).
    pub fn wait(&self, now: Instant) -> Duration {
        self.last.map_or(Duration::ZERO, |l| (l + self.gap).saturating_duration_since(now))
    }

    /// Start a job at `now` if the limit allows; true when it was admitted.
    pub fn admit(&mut self, now: Instant) -> bool {
        if !self.wait(now).is_zero() {
            return false;
        }
        self.last = Some(now);
        true
    }
}

fn worker(
    pool: Weak<Pool>,
    queue: &MigrationQueue,
    stop: &AtomicBool,
    flush_every: Duration,
    settings: &RwLock<Settings>,
) {
    let current = || *settings.read().unwrap_or_else(|p| p.into_inner());
    let mut limit = RateLimiter::new(current().max_migrations_per_sec);
    // Wall time of an admission, derived from the monotonic instant the
    // limiter saw (the history's start times keep the limiter's spacing).
    let (base, base_ns) = (Instant::now(), now_ns());
    let wall_ns = |at: Instant| base_ns + at.duration_since(base).as_nanos() as i64;
    let mut last_flush = Instant::now();
    let tick = flush_every.min(Duration::from_millis(500));
    loop {
        // Wait for a job, a stop, or the next flush.
        let job = {
            let mut q = queue.lock();
            loop {
                if q.stop || stop.load(Ordering::SeqCst) {
                    return;
                }
                if !q.jobs.is_empty() || last_flush.elapsed() >= flush_every {
                    break;
                }
                q = queue.cv.wait_timeout(q, tick).unwrap_or_else(|p| p.into_inner()).0;
            }
            let now_settings = current();
            if q.jobs.is_empty() {
                None
            } else if !now_settings.migrate {
                // Switched off since these were queued: drop them.
                queue.skipped.fetch_add(q.drop_waiting(), Ordering::Relaxed);
                queue.cv.notify_all();
                continue;
            } else {
                // Honour the rate limit (as set now) before taking the job.
                if limit.rate() != now_settings.max_migrations_per_sec {
                    limit.set_rate(now_settings.max_migrations_per_sec);
                }
                let now = Instant::now();
                if !limit.admit(now) {
                    // Wake at least every tick: the rate may change meanwhile.
                    let wait = limit.wait(now).min(tick);
                    drop(queue.cv.wait_timeout(q, wait).unwrap_or_else(|p| p.into_inner()).0);
                    continue;
                }
                let j = q.jobs.pop_front();
                if j.is_some() {
                    q.running += 1;
                }
                j.map(|j| (j, wall_ns(now)))
            }
        };
        let Some(pool) = pool.upgrade() else {
            if let Some((j, _)) = job {
                queue.finish(&j);
            }
            return;
        };
        if last_flush.elapsed() >= flush_every {
            if let Err(e) = pool.flush_temperature() {
                tracing::warn!("writing access statistics: {e}");
            }
            last_flush = Instant::now();
        }
        if let Some((job, started_ns)) = job {
            let _ = pool.run_job(&job, started_ns);
        }
    }
}

/// The running background worker; stops (and joins) on drop.
#[derive(Debug)]
pub struct MigrationWorker {
    queue: Arc<MigrationQueue>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl MigrationWorker {
    /// Stop after the current job and wait for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.queue.lock().stop = true;
        self.queue.cv.notify_all();
        // A migration held by the test hook would never end.
        self.queue.release_migrations();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.queue.lock().stop = false;
    }
}

impl Drop for MigrationWorker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Tracker {
    /// The migration queue (lengths and counters).
    pub fn queue(&self) -> &MigrationQueue {
        &self.queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Jobs arriving at any times and taking any time: the starts the
        /// limiter admits are at least 1/rate apart, so no window of one
        /// second ever holds more than floor(rate) + 1 of them, and a
        /// backlog is worked off at the full rate (no lost slots).
        #[test]
        fn starts_never_exceed_the_rate_in_any_window(
            rate in 1u32..50,
            jobs in proptest::collection::vec((0u64..400, 0u64..300), 1..60),
        ) {
            let t0 = Instant::now();
            let mut limit = RateLimiter::new(rate as f64);
            let gap = Duration::from_secs_f64(1.0 / rate as f64);
            let mut now = t0;
            let mut starts = Vec::new();
            for (arrive_after_ms, takes_ms) in jobs {
                now += Duration::from_millis(arrive_after_ms);
                // The worker loop: wait until admitted, run, come back.
                while !limit.admit(now) {
                    let w = limit.wait(now);
                    prop_assert!(!w.is_zero() && w <= gap);
                    now += w;
                }
                starts.push(now);
                now += Duration::from_millis(takes_ms);
            }
            for w in starts.windows(2) {
                prop_assert!(w[1] - w[0] >= gap, "{:?} apart, gap {:?}", w[1] - w[0], gap);
            }
            for (i, s) in starts.iter().enumerate() {
                let in_window = starts[i..].iter().take_while(|t| **t - *s < Duration::from_secs(1)).count();
                prop_assert!(in_window as u32 <= rate + 1, "{in_window} starts in 1 s at rate {rate}");
            }
        }
    }

    #[test]
    fn a_backlog_runs_at_exactly_the_rate() {
        let t0 = Instant::now();
        let mut limit = RateLimiter::new(4.0);
        let mut now = t0;
        let mut per_second = [0u32; 5];
        // 20 jobs waiting, each instant: admitted one per 250 ms.
        for _ in 0..20 {
            while !limit.admit(now) {
                now += limit.wait(now);
            }
            per_second[(now - t0).as_secs() as usize] += 1;
        }
        assert_eq!(per_second, [4, 4, 4, 4, 4]);
        assert!(RateLimiter::new(0.0).admit(t0) && RateLimiter::new(0.0).wait(t0).is_zero());
    }

    #[test]
    fn a_changed_rate_counts_from_the_last_start() {
        let t0 = Instant::now();
        let mut limit = RateLimiter::new(0.1);
        assert!(limit.admit(t0));
        assert_eq!(limit.wait(t0), Duration::from_secs(10));
        // Faster now: due 0.5 s after the last start, not 10 s.
        limit.set_rate(2.0);
        assert_eq!(limit.rate(), 2.0);
        assert_eq!(limit.wait(t0), Duration::from_millis(500));
        assert!(!limit.admit(t0 + Duration::from_millis(499)));
        assert!(limit.admit(t0 + Duration::from_millis(500)));
        // Slower again: the next start waits the new gap.
        limit.set_rate(0.5);
        assert_eq!(limit.wait(t0 + Duration::from_millis(500)), Duration::from_secs(2));
    }
}
