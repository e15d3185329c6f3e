//! # The live access tracker
//!
//! Owns the side table of access statistics the read path updates, and its
//! batching into the metadata. `State::temperature` holds the statistics as
//! last written to the metadata (journal `Op::PutTempStats`, checkpoints);
//! [`Tracker`] holds only the entries touched since the last flush, so the
//! memory cost is the persisted table plus the recently accessed extents.
//! A flush (every `flush_interval` by the migration worker, and at
//! `Pool::checkpoint`/`close`) moves them into the state with one op: no
//! device write per read. Statistics accessed since the last flush are lost
//! by a crash; that costs a few counts, never data.
//!
//! Lock order: the pool's `meta` lock before the tracker's. The read path
//! takes the tracker's lock alone, and `meta` only for an extent it has
//! not seen since the last flush. This module must never do device IO.

use super::hmm::{Hmm, HmmVerdict};
use super::migrate::{Job, MigrationQueue};
use super::stats::{Access, ExtentTemp};
use super::{threshold, Classifier, Temp, TemperatureConfig};
use crate::engine::pool::{Meta, Pool};
use crate::engine::state::{Extent, Ino, Op};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Live statistics, the classifiers and the migration queue of one pool.
#[derive(Debug)]
pub struct Tracker {
    pub(crate) cfg: TemperatureConfig,
    pub(crate) hmm: Hmm,
    live: Mutex<HashMap<u128, ExtentTemp>>,
    pub(crate) queue: Arc<MigrationQueue>,
}

/// Both views of one extent's temperature.
#[derive(Debug, Clone, Copy)]
pub struct Classes {
    pub threshold: Temp,
    pub hmm: HmmVerdict,
    /// The class the configured classifier gives (drives migration).
    pub decided: Temp,
    pub observations: usize,
}

impl Tracker {
    pub fn new(cfg: TemperatureConfig) -> Tracker {
        Tracker {
            hmm: Hmm::new(cfg.hmm),
            live: Mutex::new(HashMap::new()),
            queue: Arc::new(MigrationQueue::new(cfg.queue_capacity)),
            cfg,
        }
    }

    fn live(&self) -> MutexGuard<'_, HashMap<u128, ExtentTemp>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Now, by the configured clock.
    pub fn now_s(&self) -> u32 {
        self.cfg.clock.now_s()
    }

    /// Classify `s` at `now` both ways.
    pub fn classify(&self, s: &ExtentTemp, now: u32) -> Classes {
        let p = &self.cfg.stats;
        let obs = s.observations(now, p);
        let age = (s.last_access_s != 0).then(|| now.saturating_sub(s.last_access_s));
        let hmm = self.hmm.classify(&obs, age);
        let threshold = threshold::classify(s, now, &self.cfg.threshold, p);
        let decided = match self.cfg.classifier {
            Classifier::Hmm => hmm.state,
            Classifier::Threshold => threshold,
        };
        Classes { threshold, hmm, decided, observations: obs.len() }
    }

    /// The current statistics of `id` (live, else as persisted).
    pub(crate) fn get(&self, m: &Meta, id: u128) -> Option<ExtentTemp> {
        self.live().get(&id).copied().or_else(|| m.state.temperature.get(&id).copied())
    }

    /// Give `id` these statistics (a migrated extent keeps its history).
    pub(crate) fn put(&self, id: u128, s: ExtentTemp) {
        self.live().insert(id, s);
    }

    /// New extents in `ops` count as written now. Called with `meta` held.
    pub(crate) fn note_ops(&self, ops: &[Op]) {
        if !self.cfg.track {
            return;
        }
        let now = self.now_s();
        let mut live = None;
        for op in ops {
            if let Op::SetExtent { extent: Some(e), .. } = op {
                let live = live.get_or_insert_with(|| self.live());
                live.entry(e.id).or_default().record(now, Access::Write, &self.cfg.stats);
            }
        }
    }

    /// Take every live entry (for a flush).
    fn drain(&self) -> HashMap<u128, ExtentTemp> {
        std::mem::take(&mut *self.live())
    }

    /// Live entries (tests and memory accounting).
    pub fn live_len(&self) -> usize {
        self.live().len()
    }
}

impl Pool {
    /// The temperature tracker of this pool.
    pub fn temperature(&self) -> &Tracker {
        &self.temperature
    }

    /// Count a read of each `(extent index, extent)` of file `ino` and, for
    /// an extent whose class calls for another policy, queue a migration.
    /// The read path's one call; never blocks on IO.
    pub fn note_reads<'a>(&self, ino: Ino, extents: impl IntoIterator<Item = (u64, &'a Extent)>) {
        let t = &self.temperature;
        if !t.cfg.track {
            return;
        }
        let now = t.now_s();
        let p = &t.cfg.stats;
        let mut due: Vec<(u64, u128, [u8; 4], ExtentTemp)> = Vec::new();
        let mut misses: Vec<(u64, u128, [u8; 4])> = Vec::new();
        {
            let mut live = t.live();
            for (idx, e) in extents {
                match live.get_mut(&e.id) {
                    Some(s) => {
                        if s.record(now, Access::Read, p) {
                            due.push((idx, e.id, e.policy, *s));
                        }
                    }
                    None => misses.push((idx, e.id, e.policy)),
                }
            }
        }
        if !misses.is_empty() {
            let m = self.meta();
            let mut live = t.live();
            for (idx, id, policy) in misses {
                let s = live.entry(id).or_insert_with(|| m.state.temperature.get(&id).copied().unwrap_or_default());
                s.record(now, Access::Read, p);
                due.push((idx, id, policy, *s));
            }
        }
        if !t.cfg.migrate || due.is_empty() || self.opts.read_only {
            return;
        }
        let online = self.members.iter().flatten().count();
        for (idx, id, policy, s) in due {
            let c = t.classify(&s, now);
            if c.observations < t.cfg.min_observations {
                continue;
            }
            if let Some(target) = t.cfg.target(c.decided, online) {
                if target.encode() != policy {
                    t.queue.push(Job {
                        ino,
                        idx,
                        id,
                        target,
                        class: c.decided,
                        queued_ns: crate::engine::pool::now_ns(),
                    });
                }
            }
        }
    }

    /// Write the live statistics into the metadata (one op; durable with
    /// the next commit). A no-op on a read-only pool.
    pub fn flush_temperature(&self) -> crate::engine::Result<()> {
        if self.opts.read_only || !self.temperature.cfg.track {
            return Ok(());
        }
        let mut m = self.meta();
        let live = self.temperature.drain();
        let mut stats: Vec<(u128, ExtentTemp)> =
            live.into_iter().filter(|(id, _)| m.state.extents.contains_key(id)).collect();
        if stats.is_empty() {
            return Ok(());
        }
        stats.sort_unstable_by_key(|(id, _)| *id);
        self.apply_txn(&mut m, vec![Op::PutTempStats { stats }])?;
        Ok(())
    }
}
