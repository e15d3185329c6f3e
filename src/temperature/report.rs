//! # Temperature reports and the control-socket methods
//!
//! Owns what operators see: [`ExtentStats`] (counts, rates, last access,
//! both classes, HMM state and probability, current and target policy, the
//! file and offset) for `dfs extent-stats`, the per-class listings of
//! `dfs list-hot|list-warm|list-cold`, and [`handle_control`], the
//! `temperature.list` / `temperature.extent_stats` methods for the control
//! socket of a mounted pool (and `temperature.advance`, which moves a test
//! clock, nothing else). Read-only: this module must never change the
//! pool; `temperature.config`, which may, is passed on to `settings`.

use super::{Temp, Tracker};
use crate::engine::pool::{Meta, Pool};
use crate::engine::state::{Body, Ino, EXTENT_SIZE};
use serde::Serialize;
use std::collections::HashMap;

/// Everything known about one extent's temperature.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ExtentStats {
    pub id: String,
    pub ino: Ino,
    pub path: Option<String>,
    pub offset: u64,
    pub len: u32,
    /// Decayed read and write counts.
    pub reads: f64,
    pub writes: f64,
    pub reads_per_day: f64,
    pub writes_per_day: f64,
    /// Last access, seconds since the epoch (None: never seen).
    pub last_access_s: Option<u32>,
    pub last_access_age_s: Option<u32>,
    pub threshold_class: Temp,
    pub hmm_state: Temp,
    pub hmm_probability: f64,
    /// The class migration follows (the configured classifier's).
    pub class: Temp,
    pub observations: usize,
    pub current_policy: String,
    /// What the class calls for (None: stays as it is).
    pub target_policy: Option<String>,
    /// The file's policy is pinned: temperature never moves it.
    pub pinned: bool,
}

/// Errors of [`handle_control`].
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown method {0:?}")]
    UnknownMethod(String),
    #[error("bad parameters: {0}")]
    BadParams(String),
    #[error("no extent {0}")]
    NoSuchExtent(String),
    #[error("this pool's temperature clock follows the system time (mount with -o test_clock to move it)")]
    ClockFixed,
    #[error(transparent)]
    Config(#[from] super::settings::ConfigError),
}

fn owners(m: &Meta) -> HashMap<u128, (Ino, u64, bool)> {
    let mut out = HashMap::with_capacity(m.state.extents.len());
    for (ino, i) in &m.state.inodes {
        if let Body::File(map) = &i.body {
            for (idx, id) in map {
                out.insert(*id, (*ino, *idx, i.policy.is_some()));
            }
        }
    }
    out
}

impl Tracker {
    fn stats_of(
        &self,
        m: &Meta,
        id: u128,
        owner: Option<(Ino, u64, bool)>,
        online: usize,
        now: u32,
        paths: &HashMap<Ino, String>,
    ) -> Option<ExtentStats> {
        let e = m.state.extents.get(&id)?;
        let s = self.get(m, id).unwrap_or_default();
        let settings = self.settings();
        let c = self.classify_with(&s, now, &settings);
        let (r, w) = s.rates_per_day(now, &self.cfg.stats);
        let (ino, idx, pinned) = owner.unwrap_or((0, 0, false));
        let seen = s.last_access_s != 0;
        let dt = now.saturating_sub(s.last_access_s) as f32 / self.cfg.stats.half_life_s.max(1) as f32;
        Some(ExtentStats {
            id: uuid::Uuid::from_u128(id).to_string(),
            ino,
            path: paths.get(&ino).cloned(),
            offset: idx * EXTENT_SIZE,
            len: e.len,
            reads: (s.reads * (-dt).exp2()) as f64,
            writes: (s.writes * (-dt).exp2()) as f64,
            reads_per_day: r,
            writes_per_day: w,
            last_access_s: seen.then_some(s.last_access_s),
            last_access_age_s: seen.then(|| now.saturating_sub(s.last_access_s)),
            threshold_class: c.threshold,
            hmm_state: c.hmm.state,
            hmm_probability: c.hmm.probability,
            class: c.decided,
            observations: c.observations,
            current_policy: e.policy().to_string(),
            target_policy: if pinned { None } else { settings.target(c.decided, online).map(|p| p.to_string()) },
            pinned,
        })
    }
}

impl Pool {
    /// The temperature of one extent.
    pub fn extent_stats(&self, id: u128) -> Option<ExtentStats> {
        let paths = self.paths();
        let online = self.members.iter().flatten().count();
        let t = &self.temperature;
        let m = self.meta();
        let owner = owners(&m).get(&id).copied();
        t.stats_of(&m, id, owner, online, t.now_s(), &paths)
    }

    /// Every extent of class `class` (all when None), by the configured
    /// classifier, hottest (highest rate) first.
    pub fn list_temperature(&self, class: Option<Temp>) -> Vec<ExtentStats> {
        let paths = self.paths();
        let online = self.members.iter().flatten().count();
        let t = &self.temperature;
        let now = t.now_s();
        let m = self.meta();
        let own = owners(&m);
        let mut out: Vec<ExtentStats> = m
            .state
            .extents
            .keys()
            .filter_map(|id| t.stats_of(&m, *id, own.get(id).copied(), online, now, &paths))
            .filter(|s| class.is_none_or(|c| s.class == c))
            .collect();
        out.sort_by(|a, b| {
            (b.reads_per_day + b.writes_per_day)
                .total_cmp(&(a.reads_per_day + a.writes_per_day))
                .then_with(|| (&a.path, a.offset).cmp(&(&b.path, b.offset)))
        });
        out
    }
}

/// The control-socket methods of temperature:
/// - `temperature.list` `{"class": "hot"|"warm"|"cold"}` (class optional)
///   → array of [`ExtentStats`];
/// - `temperature.extent_stats` `{"extent": "<uuid>"}` → one [`ExtentStats`];
/// - `temperature.config` `{"set": {KEY: VALUE}?, "unset": [KEY]?}` → the
///   settings after the change (see `settings::handle_config`).
pub fn handle_control(pool: &Pool, method: &str, params: serde_json::Value) -> Result<serde_json::Value, ControlError> {
    fn to_json<T: Serialize>(v: &T) -> Result<serde_json::Value, ControlError> {
        serde_json::to_value(v).map_err(|e| ControlError::BadParams(e.to_string()))
    }
    match method {
        "temperature.list" => {
            let class = match params.get("class") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.parse::<Temp>().map_err(ControlError::BadParams)?),
                Some(other) => return Err(ControlError::BadParams(format!("class must be a string, not {other}"))),
            };
            to_json(&pool.list_temperature(class))
        }
        "temperature.extent_stats" => {
            let s = params
                .get("extent")
                .and_then(|v| v.as_str())
                .ok_or_else(|| ControlError::BadParams("missing \"extent\" (a UUID string)".into()))?;
            let id = uuid::Uuid::parse_str(s).map_err(|e| ControlError::BadParams(format!("extent {s:?}: {e}")))?;
            let st = pool.extent_stats(id.as_u128()).ok_or_else(|| ControlError::NoSuchExtent(s.to_string()))?;
            to_json(&st)
        }
        // Test clocks only (`-o test_clock`): `{"seconds": N}` moves the
        // temperature clock forward; answers the total offset and now.
        "temperature.advance" => {
            let secs = params
                .get("seconds")
                .and_then(|v| v.as_u64())
                .filter(|s| *s <= u32::MAX as u64)
                .ok_or_else(|| ControlError::BadParams("\"seconds\" must be a whole number up to 2^32-1".into()))?;
            let t = pool.temperature();
            let offset = t.cfg.clock.advance(secs as u32).ok_or(ControlError::ClockFixed)?;
            Ok(serde_json::json!({ "offset_s": offset, "now_s": t.now_s() }))
        }
        "temperature.config" => to_json(&super::settings::handle_config(pool, &params)?),
        other => Err(ControlError::UnknownMethod(other.to_string())),
    }
}
