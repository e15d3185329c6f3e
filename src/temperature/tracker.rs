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
//! takes one shard lock of the tracker alone, and `meta` only for an
//! extent it has not seen since the last flush. The live table is split in
//! [`SHARDS`] shards by extent id (readers of different extents rarely
//! meet on one lock) and hashed with [`IdHasher`] (extent ids are random
//! UUIDs made by the pool, so folding them is enough; no SipHash on the
//! read path). This module must never do device IO.

use super::hmm::{Hmm, HmmVerdict};
use super::migrate::{Job, MigrationQueue};
use super::settings::{SettingError, Settings, Stored};
use super::stats::{Access, ExtentTemp};
use super::{threshold, Classifier, Temp, TemperatureConfig};
use crate::engine::pool::{Meta, Pool};
use crate::engine::state::{Extent, Ino, Op};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Shards of the live table.
pub const SHARDS: usize = 8;

/// Hasher for extent ids: random v4 UUIDs chosen by the pool (never by a
/// user), so the two halves folded and multiplied spread well.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(5) ^ *b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = ((v as u64) ^ ((v >> 64) as u64) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type LiveMap = HashMap<u128, ExtentTemp, BuildHasherDefault<IdHasher>>;

fn shard_of(id: u128) -> usize {
    ((id as u64 ^ (id >> 64) as u64) >> 3) as usize % SHARDS
}

/// Live statistics, the classifiers and the migration queue of one pool.
#[derive(Debug)]
pub struct Tracker {
    /// The configuration the pool was opened with; `cfg.settings` are the
    /// defaults of the keys the pool has not set.
    pub(crate) cfg: TemperatureConfig,
    /// The effective settings: `cfg.settings` with the pool's stored keys
    /// applied. Replaced when `Op::SetTemperatureSettings` is applied (the
    /// migration worker shares it, for the rate and the switch).
    pub(crate) settings: Arc<RwLock<Settings>>,
    pub(crate) hmm: Hmm,
    live: [Mutex<LiveMap>; SHARDS],
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
    /// A tracker with `cfg`, and the settings a pool stored applied over
    /// `cfg.settings`. Stored settings that do not apply (a key this build
    /// does not know) leave the defaults and give the error, for the open
    /// report.
    pub fn new(cfg: TemperatureConfig, stored: &Stored) -> (Tracker, Option<SettingError>) {
        let (effective, error) = match cfg.settings.overlay(stored) {
            Ok(s) => (s, None),
            Err(e) => (cfg.settings, Some(e)),
        };
        let t = Tracker {
            hmm: Hmm::new(cfg.hmm),
            live: std::array::from_fn(|_| Mutex::new(LiveMap::default())),
            queue: Arc::new(MigrationQueue::new(cfg.queue_capacity)),
            settings: Arc::new(RwLock::new(effective)),
            cfg,
        };
        (t, error)
    }

    /// The effective settings (the built-in defaults with the pool's keys).
    pub fn settings(&self) -> Settings {
        *self.settings.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool's stored settings changed (`Op::SetTemperatureSettings`,
    /// validated before it was applied): use them from now on. When what
    /// decides a migration changed (not just the rate), drop the jobs
    /// queued under the old rules; the next read of each extent queues it
    /// again if it still has to move.
    fn use_stored(&self, stored: &Stored) {
        let new = match self.cfg.settings.overlay(stored) {
            Ok(s) => s,
            Err(e) => return tracing::warn!("temperature settings not applied: {e}"),
        };
        let old = std::mem::replace(&mut *self.settings.write().unwrap_or_else(|p| p.into_inner()), new);
        if (Settings { max_migrations_per_sec: new.max_migrations_per_sec, ..old }) != new {
            self.queue.clear();
        }
    }

    /// The shard holding `id`.
    fn live(&self, id: u128) -> MutexGuard<'_, LiveMap> {
        self.live[shard_of(id)].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Now, by the configured clock.
    pub fn now_s(&self) -> u32 {
        self.cfg.clock.now_s()
    }

    /// Classify `s` at `now` both ways (by the effective settings).
    pub fn classify(&self, s: &ExtentTemp, now: u32) -> Classes {
        self.classify_with(s, now, &self.settings())
    }

    /// Classify `s` at `now` both ways, by `settings`.
    pub(crate) fn classify_with(&self, s: &ExtentTemp, now: u32, settings: &Settings) -> Classes {
        let p = &self.cfg.stats;
        let obs = s.observations(now, p);
        let age = (s.last_access_s != 0).then(|| now.saturating_sub(s.last_access_s));
        let hmm = self.hmm.classify(&obs, age);
        let threshold = threshold::classify(s, now, &settings.threshold, p);
        let decided = match settings.classifier {
            Classifier::Hmm => hmm.state,
            Classifier::Threshold => threshold,
        };
        Classes { threshold, hmm, decided, observations: obs.len() }
    }

    /// The current statistics of `id` (live, else as persisted).
    pub(crate) fn get(&self, m: &Meta, id: u128) -> Option<ExtentTemp> {
        self.live(id).get(&id).copied().or_else(|| m.state.temperature.get(&id).copied())
    }

    /// Give `id` these statistics (a migrated extent keeps its history).
    pub(crate) fn put(&self, id: u128, s: ExtentTemp) {
        self.live(id).insert(id, s);
    }

    /// New extents in `ops` count as written now; changed settings are
    /// used from now on. Called with `meta` held, after the ops applied.
    pub(crate) fn note_ops(&self, ops: &[Op]) {
        let mut now = None;
        for op in ops {
            match op {
                Op::SetExtent { extent: Some(e), .. } if self.cfg.track => {
                    let now = *now.get_or_insert_with(|| self.now_s());
                    self.live(e.id).entry(e.id).or_default().record(now, Access::Write, &self.cfg.stats);
                }
                Op::SetTemperatureSettings { settings } => self.use_stored(settings),
                _ => {}
            }
        }
    }

    /// Take every live entry (for a flush).
    fn drain(&self) -> Vec<(u128, ExtentTemp)> {
        let mut out = Vec::new();
        for shard in &self.live {
            out.extend(std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner())));
        }
        out
    }

    /// Live entries (tests and memory accounting).
    pub fn live_len(&self) -> usize {
        self.live.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
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
        for (idx, e) in extents {
            match t.live(e.id).get_mut(&e.id) {
                Some(s) => {
                    if s.record(now, Access::Read, p) {
                        due.push((idx, e.id, e.policy, *s));
                    }
                }
                None => misses.push((idx, e.id, e.policy)),
            }
        }
        if !misses.is_empty() {
            let m = self.meta();
            for (idx, id, policy) in misses {
                let mut live = t.live(id);
                let s = live.entry(id).or_insert_with(|| m.state.temperature.get(&id).copied().unwrap_or_default());
                s.record(now, Access::Read, p);
                due.push((idx, id, policy, *s));
            }
        }
        if due.is_empty() || self.opts.read_only {
            return;
        }
        let settings = t.settings();
        if !settings.migrate {
            return;
        }
        let online = self.members.iter().flatten().count();
        for (idx, id, policy, s) in due {
            let c = t.classify_with(&s, now, &settings);
            if c.observations < settings.min_observations {
                continue;
            }
            if let Some(target) = settings.target(c.decided, online) {
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
        let mut stats = self.temperature.drain();
        stats.retain(|(id, _)| m.state.extents.contains_key(id));
        if stats.is_empty() {
            return Ok(());
        }
        stats.sort_unstable_by_key(|(id, _)| *id);
        self.apply_txn(&mut m, vec![Op::PutTempStats { stats }])?;
        Ok(())
    }
}
