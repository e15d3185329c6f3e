//! # Operator settings of temperature, stored in the pool
//!
//! Owns the part of the temperature configuration an operator changes at
//! runtime ([`Settings`]: thresholds, classifier, target policies, the
//! migration switch and rate), its text form (`KEY=VALUE`, one parser per
//! key, canonical values), and how the pool keeps it: like a ZFS pool
//! property, only the keys an operator set are stored, as canonical text,
//! in `State::temperature_settings` (changed by the journal op
//! `Op::SetTemperatureSettings`, so in every later checkpoint). The
//! effective settings are the built-in defaults (`PoolOptions::temperature`)
//! overlaid with the stored keys, so every mount and the CLI see the same
//! thing, and a key never set follows the defaults of the running build.
//! A map of text rather than a struct keeps the checkpoint format still
//! when a key is added.
//!
//! [`Pool::set_temperature_settings`] validates every key and value, then
//! the result as a whole (warm thresholds not above hot ones), and changes
//! nothing unless all of it is valid; the tracker picks up the new values
//! when the op is applied, so a mount uses them at once.
//! `temperature.config` (control socket; also run in-process by the CLI on
//! an unmounted pool) is the one way in. Pure parsing apart from those two
//! `Pool` methods; this module never does device IO of its own.

use super::stats::MAX_OBSERVATIONS;
use super::threshold::ThresholdConfig;
use super::{Classifier, ControlError, Temp};
use crate::engine::{EngineError, Pool};
use dfs_format::Policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The stored form: key → canonical value, only the keys that were set.
pub type Stored = BTreeMap<String, String>;

/// Most ops per day a threshold may name (a million an hour: far past any
/// real extent; a bound keeps the text short and the value finite).
pub const MAX_OPS_PER_DAY: f64 = 1e9;
/// Most migrations per second the rate may allow.
pub const MAX_MIGRATION_RATE: f64 = 10_000.0;

/// What an operator may change while the pool runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Which view decides migrations (default: the HMM, for its inertia).
    pub classifier: Classifier,
    /// The threshold classifier's numbers.
    pub threshold: ThresholdConfig,
    /// Target of hot extents (capped by the online members; None: keep).
    pub hot_policy: Option<Policy>,
    /// Target of warm extents (None: warm extents stay as they are).
    pub warm_policy: Option<Policy>,
    /// Target of cold extents (capped by the online members; None: keep).
    pub cold_policy: Option<Policy>,
    /// Queue migrations when a read finds an extent under the wrong policy.
    pub migrate: bool,
    /// Most migrations per second the worker does.
    pub max_migrations_per_sec: f64,
    /// Observations an extent needs before it may migrate.
    pub min_observations: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            classifier: Classifier::Hmm,
            threshold: ThresholdConfig::default(),
            hot_policy: Some(Policy::Replication { copies: 3 }),
            warm_policy: None,
            cold_policy: Some(Policy::Erasure { data: 4, parity: 2 }),
            migrate: true,
            max_migrations_per_sec: 20.0,
            min_observations: 4,
        }
    }
}

/// Why a setting was refused. Nothing is changed when one is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingError {
    #[error("{0:?}: expected KEY=VALUE")]
    Syntax(String),
    #[error("unknown temperature setting {0:?} (known: {keys})", keys = key_names())]
    UnknownKey(String),
    #[error("{key}={value:?}: {expected}")]
    BadValue { key: String, value: String, expected: String },
    #[error("{0}")]
    Inconsistent(String),
}

/// One settable key: its name, what it takes, how it reads and writes.
struct Key {
    name: &'static str,
    help: &'static str,
    get: fn(&Settings) -> String,
    set: fn(&mut Settings, &str) -> Result<(), String>,
}

/// Every key, in the order they are shown.
const KEYS: &[Key] = &[
    Key {
        name: "classifier",
        help: "which view decides migrations: hmm or threshold",
        get: |s| s.classifier.name().into(),
        set: |s, v| {
            s.classifier = v.parse()?;
            Ok(())
        },
    },
    Key {
        name: "hot_ops_per_day",
        help: "threshold view: hot above this many reads+writes a day (a decimal number)",
        get: |s| fmt_f64(s.threshold.hot_ops_per_day),
        set: |s, v| {
            s.threshold.hot_ops_per_day = parse_decimal(v, 0.0, MAX_OPS_PER_DAY)?;
            Ok(())
        },
    },
    Key {
        name: "hot_recent_secs",
        help: "threshold view: hot when last accessed at most this many seconds ago",
        get: |s| s.threshold.hot_within_s.to_string(),
        set: |s, v| {
            s.threshold.hot_within_s = parse_whole(v, 0, u32::MAX as u64)? as u32;
            Ok(())
        },
    },
    Key {
        name: "warm_ops_per_day",
        help: "threshold view: warm above this many reads+writes a day (at most hot_ops_per_day)",
        get: |s| fmt_f64(s.threshold.warm_ops_per_day),
        set: |s, v| {
            s.threshold.warm_ops_per_day = parse_decimal(v, 0.0, MAX_OPS_PER_DAY)?;
            Ok(())
        },
    },
    Key {
        name: "warm_recent_secs",
        help: "threshold view: warm when last accessed at most this many seconds ago (at least hot_recent_secs)",
        get: |s| s.threshold.warm_within_s.to_string(),
        set: |s, v| {
            s.threshold.warm_within_s = parse_whole(v, 0, u32::MAX as u64)? as u32;
            Ok(())
        },
    },
    Key {
        name: "hot_policy",
        help: "target of hot extents: replication:N, erasure:K+M or keep",
        get: |s| fmt_target(s.hot_policy),
        set: |s, v| {
            s.hot_policy = parse_target(v)?;
            Ok(())
        },
    },
    Key {
        name: "warm_policy",
        help: "target of warm extents: replication:N, erasure:K+M or keep",
        get: |s| fmt_target(s.warm_policy),
        set: |s, v| {
            s.warm_policy = parse_target(v)?;
            Ok(())
        },
    },
    Key {
        name: "cold_policy",
        help: "target of cold extents: replication:N, erasure:K+M or keep",
        get: |s| fmt_target(s.cold_policy),
        set: |s, v| {
            s.cold_policy = parse_target(v)?;
            Ok(())
        },
    },
    Key {
        name: "migrate",
        help: "migrate extents whose class calls for another policy: on or off",
        get: |s| if s.migrate { "on" } else { "off" }.into(),
        set: |s, v| {
            s.migrate = match v {
                "on" => true,
                "off" => false,
                _ => return Err("expected on or off".into()),
            };
            Ok(())
        },
    },
    Key {
        name: "migration_rate",
        help: "most migrations started per second (a decimal number above 0; migrate=off stops them)",
        get: |s| fmt_f64(s.max_migrations_per_sec),
        set: |s, v| {
            let r = parse_decimal(v, 0.0, MAX_MIGRATION_RATE)?;
            if r <= 0.0 {
                return Err("must be above 0 (migrate=off stops migrations)".into());
            }
            s.max_migrations_per_sec = r;
            Ok(())
        },
    },
    Key {
        name: "min_observations",
        help: "observation intervals an extent needs before it may migrate (1 to 100)",
        get: |s| s.min_observations.to_string(),
        set: |s, v| {
            s.min_observations = parse_whole(v, 1, MAX_OBSERVATIONS as u64)? as usize;
            Ok(())
        },
    },
];

fn key_names() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

fn key(name: &str) -> Result<&'static Key, SettingError> {
    KEYS.iter().find(|k| k.name == name).ok_or_else(|| SettingError::UnknownKey(name.to_string()))
}

/// f64 in its shortest text that reads back the same (`100`, `0.5`).
fn fmt_f64(v: f64) -> String {
    format!("{v}")
}

fn fmt_target(p: Option<Policy>) -> String {
    p.map_or_else(|| "keep".into(), |p| p.to_string())
}

/// Strict decimal: digits, optionally one `.` and more digits; no sign,
/// exponent, spaces, `inf` or `nan`; within `lo..=hi`.
fn parse_decimal(v: &str, lo: f64, hi: f64) -> Result<f64, String> {
    let (int, frac) = v.split_once('.').unwrap_or((v, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(int) || !digits(frac) || v.len() > 24 {
        return Err("expected a decimal number such as 100 or 0.5".into());
    }
    let x: f64 = v.parse().map_err(|_| "expected a decimal number such as 100 or 0.5".to_string())?;
    if !(lo..=hi).contains(&x) {
        return Err(format!("must be from {lo} to {hi}"));
    }
    Ok(x)
}

/// Strict whole number: digits only, within `lo..=hi`.
fn parse_whole(v: &str, lo: u64, hi: u64) -> Result<u64, String> {
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) || v.len() > 20 {
        return Err("expected a whole number".into());
    }
    match v.parse::<u64>() {
        Ok(x) if (lo..=hi).contains(&x) => Ok(x),
        _ => Err(format!("must be from {lo} to {hi}")),
    }
}

fn parse_target(v: &str) -> Result<Option<Policy>, String> {
    if v == "keep" {
        return Ok(None);
    }
    v.parse::<Policy>().map(Some).map_err(|e| format!("expected replication:N, erasure:K+M or keep ({e})"))
}

/// `name` if it is a settable key, else why not.
pub fn known_key(name: &str) -> Result<&'static str, SettingError> {
    key(name).map(|k| k.name)
}

/// Parse one `KEY=VALUE` and return the key and the value in canonical
/// form (what the pool stores), or why not.
pub fn parse_assignment(s: &str) -> Result<(String, String), SettingError> {
    let (k, v) = s.split_once('=').ok_or_else(|| SettingError::Syntax(s.to_string()))?;
    Ok((k.to_string(), canonical(k, v)?))
}

/// `value` of `key` in canonical form (validated).
pub fn canonical(name: &str, value: &str) -> Result<String, SettingError> {
    let k = key(name)?;
    let mut s = Settings::default();
    (k.set)(&mut s, value).map_err(|expected| SettingError::BadValue {
        key: name.to_string(),
        value: value.to_string(),
        expected,
    })?;
    Ok((k.get)(&s))
}

impl Settings {
    /// These settings with every stored key applied (each validated; the
    /// whole is not checked, see [`Settings::check`]).
    pub fn overlay(&self, stored: &Stored) -> Result<Settings, SettingError> {
        let mut s = *self;
        for (name, value) in stored {
            (key(name)?.set)(&mut s, value).map_err(|expected| SettingError::BadValue {
                key: name.clone(),
                value: value.clone(),
                expected,
            })?;
        }
        Ok(s)
    }

    /// The rules that tie keys together: the warm thresholds are not above
    /// the hot ones (else nothing could be warm by that rule).
    pub fn check(&self) -> Result<(), SettingError> {
        let t = &self.threshold;
        if t.warm_ops_per_day > t.hot_ops_per_day {
            return Err(SettingError::Inconsistent(format!(
                "warm_ops_per_day ({}) is above hot_ops_per_day ({})",
                fmt_f64(t.warm_ops_per_day),
                fmt_f64(t.hot_ops_per_day)
            )));
        }
        if t.warm_within_s < t.hot_within_s {
            return Err(SettingError::Inconsistent(format!(
                "warm_recent_secs ({}) is below hot_recent_secs ({})",
                t.warm_within_s, t.hot_within_s
            )));
        }
        Ok(())
    }

    /// The value of `key` in canonical text.
    pub fn get(&self, name: &str) -> Result<String, SettingError> {
        Ok((key(name)?.get)(self))
    }

    /// The target policy of `class`, capped to what `online` members hold
    /// (see [`super::cap_policy`]).
    pub fn target(&self, class: Temp, online: usize) -> Option<Policy> {
        let p = match class {
            Temp::Hot => self.hot_policy,
            Temp::Warm => self.warm_policy,
            Temp::Cold => self.cold_policy,
        }?;
        super::cap_policy(p, online)
    }
}

/// One row of `dfs temperature-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingRow {
    pub key: String,
    /// The effective value.
    pub value: String,
    /// The built-in default.
    pub default: String,
    /// `pool` when set in the pool, else `default`.
    pub source: String,
    /// What the key takes.
    pub help: String,
}

/// Every key: effective value, default, where it comes from.
pub fn rows(defaults: &Settings, stored: &Stored, effective: &Settings) -> Vec<SettingRow> {
    KEYS.iter()
        .map(|k| SettingRow {
            key: k.name.into(),
            value: (k.get)(effective),
            default: (k.get)(defaults),
            source: if stored.contains_key(k.name) { "pool" } else { "default" }.into(),
            help: k.help.into(),
        })
        .collect()
}

/// Check a stored map (journal replay, checkpoints): every key known and
/// every value in canonical form.
pub fn validate_stored(stored: &Stored) -> Result<(), SettingError> {
    for (k, v) in stored {
        if canonical(k, v)? != *v {
            return Err(SettingError::BadValue { key: k.clone(), value: v.clone(), expected: "canonical form".into() });
        }
    }
    Ok(())
}

/// Why [`Pool::set_temperature_settings`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Setting(#[from] SettingError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl Pool {
    /// Every temperature setting of this pool: effective value, default,
    /// source.
    pub fn temperature_settings(&self) -> Vec<SettingRow> {
        let t = &self.temperature;
        let stored = self.meta().state.temperature_settings.clone();
        rows(&t.cfg.settings, &stored, &t.settings())
    }

    /// Set (`set`: key → value, any text form) and return to the default
    /// (`unset`: keys) temperature settings, in one transaction, committed;
    /// the tracker uses them at once. Every key and value is validated, then
    /// the result as a whole; nothing changes unless all of it is valid.
    pub fn set_temperature_settings(
        &self,
        set: &[(String, String)],
        unset: &[String],
    ) -> Result<Vec<SettingRow>, ConfigError> {
        let mut changes = Vec::with_capacity(set.len());
        for (k, v) in set {
            changes.push((k.clone(), canonical(k, v)?));
        }
        for k in unset {
            known_key(k)?;
        }
        let mut m = self.meta();
        let mut stored = m.state.temperature_settings.clone();
        for k in unset {
            stored.remove(k);
        }
        stored.extend(changes);
        self.temperature.cfg.settings.overlay(&stored)?.check()?;
        if stored != m.state.temperature_settings {
            self.apply_txn(&mut m, vec![crate::engine::state::Op::SetTemperatureSettings { settings: stored }])?;
            drop(m);
            self.commit()?;
        } else {
            drop(m);
        }
        Ok(self.temperature_settings())
    }
}

/// `temperature.config` `{"set": {"KEY": "VALUE", ...}?, "unset": ["KEY", ...]?}`
/// → the rows of [`Pool::temperature_settings`] after the change (none
/// given: just the rows).
pub fn handle_config(pool: &Pool, params: &serde_json::Value) -> Result<Vec<SettingRow>, ControlError> {
    use serde_json::Value;
    let bad = ControlError::BadParams;
    let mut set = Vec::new();
    match params.get("set") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            for (k, v) in o {
                let v = v.as_str().ok_or_else(|| bad(format!("\"set\": the value of {k:?} must be a string")))?;
                set.push((k.clone(), v.to_string()));
            }
        }
        Some(_) => return Err(bad("\"set\" must be an object of KEY: VALUE strings".into())),
    }
    let mut unset = Vec::new();
    match params.get("unset") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            for k in a {
                unset.push(
                    k.as_str().ok_or_else(|| bad("\"unset\" must be an array of key strings".into()))?.to_string(),
                );
            }
        }
        Some(_) => return Err(bad("\"unset\" must be an array of key strings".into())),
    }
    if set.is_empty() && unset.is_empty() {
        return Ok(pool.temperature_settings());
    }
    Ok(pool.set_temperature_settings(&set, &unset)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_default_reads_back_as_itself() {
        let d = Settings::default();
        for k in KEYS {
            let v = (k.get)(&d);
            assert_eq!(canonical(k.name, &v).unwrap(), v, "{}", k.name);
        }
        assert_eq!(d.overlay(&Stored::new()).unwrap(), d);
        d.check().unwrap();
    }

    #[test]
    fn values_are_parsed_strictly_and_stored_canonically() {
        let ok = |s: &str| parse_assignment(s).unwrap().1;
        assert_eq!(ok("hot_ops_per_day=250"), "250");
        assert_eq!(ok("hot_ops_per_day=007.50"), "7.5");
        assert_eq!(ok("hot_recent_secs=0600"), "600");
        assert_eq!(ok("cold_policy=erasure:3+2"), "erasure:3+2");
        assert_eq!(ok("warm_policy=keep"), "keep");
        assert_eq!(ok("classifier=threshold"), "threshold");
        assert_eq!(ok("migrate=off"), "off");
        assert_eq!(ok("migration_rate=0.5"), "0.5");
        assert_eq!(ok("min_observations=100"), "100");
        for bad in [
            "hot_ops_per_day=-1",
            "hot_ops_per_day=+1",
            "hot_ops_per_day=1e3",
            "hot_ops_per_day=inf",
            "hot_ops_per_day=NaN",
            "hot_ops_per_day= 1",
            "hot_ops_per_day=1.",
            "hot_ops_per_day=.5",
            "hot_ops_per_day=",
            "hot_ops_per_day=2000000000",
            "hot_recent_secs=1h",
            "hot_recent_secs=4294967296",
            "hot_recent_secs=-5",
            "cold_policy=erasure:0+2",
            "cold_policy=raid5",
            "hot_policy=Keep",
            "classifier=HMM",
            "migrate=yes",
            "migration_rate=0",
            "migration_rate=10001",
            "min_observations=0",
            "min_observations=101",
        ] {
            let e = parse_assignment(bad).unwrap_err();
            assert!(matches!(e, SettingError::BadValue { .. }), "{bad}: {e}");
            assert!(e.to_string().starts_with(bad.split('=').next().unwrap()), "{e}");
        }
        assert!(matches!(parse_assignment("hotness=1"), Err(SettingError::UnknownKey(_))));
        assert!(parse_assignment("hotness=1").unwrap_err().to_string().contains("hot_ops_per_day"));
        assert!(matches!(parse_assignment("hot_ops_per_day"), Err(SettingError::Syntax(_))));
    }

    #[test]
    fn overlay_applies_stored_keys_and_check_ties_them() {
        let mut st = Stored::new();
        st.insert("warm_ops_per_day".into(), "500".into());
        let s = Settings::default().overlay(&st).unwrap();
        assert_eq!(s.threshold.warm_ops_per_day, 500.0);
        assert!(s.check().unwrap_err().to_string().contains("warm_ops_per_day (500) is above hot_ops_per_day (100)"));
        st.insert("hot_ops_per_day".into(), "1000".into());
        Settings::default().overlay(&st).unwrap().check().unwrap();
        st.insert("hot_recent_secs".into(), "90000".into());
        assert!(Settings::default().overlay(&st).unwrap().check().is_err());
        st.insert("nonsense".into(), "1".into());
        assert!(Settings::default().overlay(&st).is_err());
        let mut st = Stored::new();
        st.insert("hot_ops_per_day".into(), "0100".into());
        assert!(validate_stored(&st).is_err(), "not canonical");
    }

    proptest! {
        /// Any text for any key: a canonical value that reads back as
        /// itself (and sets the same settings), or a one-line error naming
        /// the key; never a panic.
        #[test]
        fn any_value_is_canonical_or_a_one_line_error(k in 0usize..KEYS.len(), v in "\\PC{0,30}") {
            let name = KEYS[k].name;
            match canonical(name, &v) {
                Ok(c) => {
                    prop_assert_eq!(canonical(name, &c).unwrap(), c.clone());
                    let mut a = Settings::default();
                    let mut b = Settings::default();
                    (KEYS[k].set)(&mut a, &v).unwrap();
                    (KEYS[k].set)(&mut b, &c).unwrap();
                    prop_assert_eq!(a, b);
                }
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(msg.starts_with(name), "{}", msg);
                    prop_assert!(!msg.contains('\n'), "{}", msg);
                }
            }
        }

        /// Numbers in their usual text are taken and kept exactly.
        #[test]
        fn decimal_numbers_round_trip(int in 0u64..1_000_000, frac in proptest::option::of(0u32..1000)) {
            let text = match frac { Some(f) => format!("{int}.{f}"), None => int.to_string() };
            let c = canonical("hot_ops_per_day", &text).unwrap();
            prop_assert_eq!(c.parse::<f64>().unwrap(), text.parse::<f64>().unwrap());
            let c = canonical("warm_recent_secs", &int.to_string()).unwrap();
            prop_assert_eq!(c, int.to_string());
        }

        /// Arbitrary `KEY=VALUE` text: parsed into a known key and a
        /// canonical value, or refused; never a panic.
        #[test]
        fn assignments_never_panic(s in "[a-z_=:+.0-9]{0,40}") {
            if let Ok((k, v)) = parse_assignment(&s) {
                prop_assert!(KEYS.iter().any(|x| x.name == k));
                prop_assert_eq!(canonical(&k, &v).unwrap(), v);
            }
        }
    }
}
