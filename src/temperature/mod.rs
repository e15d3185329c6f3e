//! # Temperature: access statistics, classification, lazy migration
//!
//! Owns everything DynamicFS knows about how hot an extent is and what
//! follows from it:
//!
//! - `clock`: the [`Clock`] trait ([`SystemClock`], [`TestClock`],
//!   [`OffsetClock`]).
//! - `stats`: the compact per-extent record ([`ExtentTemp`], 44 bytes).
//! - `threshold`: the seed's rule (hot > 100 ops/day or within 1 h, ...).
//! - `hmm`: the three-state HMM with Viterbi over the last 100 intervals.
//! - `tracker`: the live side table the read path feeds, batched into the
//!   metadata as `Op::PutTempStats` (never one device write per read).
//! - `migrate`: the bounded queue, the rate-limited background worker, and
//!   the re-encode of one extent recorded in the policy-change history.
//! - `report`: what `dfs list-hot|list-warm|list-cold|extent-stats` and the
//!   control socket (`handle_control`) show.
//! - `settings`: what an operator may change at runtime ([`Settings`]:
//!   thresholds, classifier, targets, migration rate), its `KEY=VALUE`
//!   form, and how the pool stores it (`dfs temperature-config`).
//!
//! The engine calls in at three places only: `Pool::read` (one call per
//! read, [`crate::engine::Pool::note_reads`]), `Pool::apply_txn` (new
//! extents count as written) and `Pool::close`/`checkpoint` (flush). This
//! module must never make a read wait for a migration or for a device.

pub mod clock;
pub mod hmm;
pub mod migrate;
pub mod report;
pub mod settings;
pub mod stats;
pub mod threshold;
pub mod tracker;

pub use clock::{Clock, OffsetClock, SystemClock, TestClock};
pub use hmm::{Hmm, HmmConfig, HmmVerdict};
pub use migrate::MigrationWorker;
pub use report::{handle_control, ControlError, ExtentStats};
pub use settings::{SettingError, SettingRow, Settings};
pub use stats::{Access, ExtentTemp, StatsParams};
pub use threshold::ThresholdConfig;
pub use tracker::Tracker;

use dfs_format::Policy;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// A temperature class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temp {
    Hot,
    Warm,
    Cold,
}

impl Temp {
    pub fn name(self) -> &'static str {
        match self {
            Temp::Hot => "hot",
            Temp::Warm => "warm",
            Temp::Cold => "cold",
        }
    }
}

impl std::fmt::Display for Temp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Temp {
    type Err = String;
    fn from_str(s: &str) -> Result<Temp, String> {
        match s {
            "hot" => Ok(Temp::Hot),
            "warm" => Ok(Temp::Warm),
            "cold" => Ok(Temp::Cold),
            _ => Err(format!("unknown temperature {s:?} (hot, warm or cold)")),
        }
    }
}

/// Which classifier decides migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classifier {
    Threshold,
    Hmm,
}

impl Classifier {
    pub fn name(self) -> &'static str {
        match self {
            Classifier::Threshold => "threshold",
            Classifier::Hmm => "hmm",
        }
    }
}

impl std::str::FromStr for Classifier {
    type Err = String;
    fn from_str(s: &str) -> Result<Classifier, String> {
        match s {
            "threshold" => Ok(Classifier::Threshold),
            "hmm" => Ok(Classifier::Hmm),
            _ => Err("expected hmm or threshold".into()),
        }
    }
}

/// Every knob of temperature tracking and migration, in one place. The
/// operator's part ([`Settings`]) is the default here; what the pool stores
/// (`dfs temperature-config`) overrides it key by key at open and while
/// the pool runs.
#[derive(Debug, Clone)]
pub struct TemperatureConfig {
    /// Count accesses at all (off: no tracking, no migration).
    pub track: bool,
    /// Thresholds, classifier, targets, migration switch and rate: the
    /// defaults of the keys a pool has not set.
    pub settings: Settings,
    /// Most migrations waiting; more are dropped (the next read re-queues).
    pub queue_capacity: usize,
    /// How often the worker writes the stats into the metadata.
    pub flush_interval: Duration,
    pub stats: StatsParams,
    pub hmm: HmmConfig,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
}

impl Default for TemperatureConfig {
    fn default() -> Self {
        TemperatureConfig {
            track: true,
            settings: Settings::default(),
            queue_capacity: 1024,
            flush_interval: Duration::from_secs(30),
            stats: StatsParams::default(),
            hmm: HmmConfig::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// `p` capped to `online` members: replication keeps at most `online`
/// copies; erasure k+m keeps m and shrinks k to `online - m` (at least 2
/// data shards, else none).
pub fn cap_policy(p: Policy, online: usize) -> Option<Policy> {
    let n = online.min(255) as u8;
    match p {
        Policy::Replication { copies } => (n >= 1).then(|| Policy::Replication { copies: copies.min(n) }),
        Policy::Erasure { data, parity } => {
            if (data as usize + parity as usize) <= online {
                Some(p)
            } else {
                let k = n.saturating_sub(parity);
                (k >= 2).then_some(Policy::Erasure { data: k, parity })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_capped_by_members() {
        let c = Settings::default();
        assert_eq!(c.target(Temp::Hot, 6), Some(Policy::Replication { copies: 3 }));
        assert_eq!(c.target(Temp::Hot, 2), Some(Policy::Replication { copies: 2 }));
        assert_eq!(c.target(Temp::Cold, 6), Some(Policy::Erasure { data: 4, parity: 2 }));
        assert_eq!(c.target(Temp::Cold, 5), Some(Policy::Erasure { data: 3, parity: 2 }));
        assert_eq!(c.target(Temp::Cold, 3), None);
        assert_eq!(c.target(Temp::Warm, 6), None);
        assert_eq!("warm".parse::<Temp>(), Ok(Temp::Warm));
        assert!("tepid".parse::<Temp>().is_err());
    }
}
