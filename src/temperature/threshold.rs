//! # Threshold classifier
//!
//! Owns the fixed-rule view of temperature (the seed's numbers, all
//! configurable): hot if more than 100 ops/day or accessed within the last
//! hour; warm if more than 10 ops/day or accessed within 24 hours; cold
//! otherwise. Stateless and cheap; it reacts to a single access at once,
//! which is why migration follows the HMM by default. Must never do IO.

use super::stats::{ExtentTemp, StatsParams};
use super::Temp;

/// Thresholds of the rule-based classifier.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdConfig {
    /// Hot above this many ops (reads + writes) per day...
    pub hot_ops_per_day: f64,
    /// ...or when the last access is at most this old (seconds).
    pub hot_within_s: u32,
    /// Warm above this many ops per day...
    pub warm_ops_per_day: f64,
    /// ...or when the last access is at most this old (seconds).
    pub warm_within_s: u32,
}

impl Default for ThresholdConfig {
    fn default() -> Self {
        ThresholdConfig { hot_ops_per_day: 100.0, hot_within_s: 3600, warm_ops_per_day: 10.0, warm_within_s: 86_400 }
    }
}

/// The class of `s` at `now`.
pub fn classify(s: &ExtentTemp, now: u32, cfg: &ThresholdConfig, p: &StatsParams) -> Temp {
    if s.last_access_s == 0 {
        return Temp::Cold;
    }
    let (r, w) = s.rates_per_day(now, p);
    let rate = r + w;
    let age = now.saturating_sub(s.last_access_s);
    if rate > cfg.hot_ops_per_day || age <= cfg.hot_within_s {
        Temp::Hot
    } else if rate > cfg.warm_ops_per_day || age <= cfg.warm_within_s {
        Temp::Warm
    } else {
        Temp::Cold
    }
}

#[cfg(test)]
mod tests {
    use super::super::stats::Access;
    use super::*;

    #[test]
    fn the_seed_thresholds() {
        let (cfg, p) = (ThresholdConfig::default(), StatsParams::default());
        let t0 = 1_000_000;
        assert_eq!(classify(&ExtentTemp::default(), t0, &cfg, &p), Temp::Cold);
        let mut s = ExtentTemp::default();
        s.record(t0, Access::Read, &p);
        assert_eq!(classify(&s, t0 + 3599, &cfg, &p), Temp::Hot, "within the hour");
        assert_eq!(classify(&s, t0 + 3601, &cfg, &p), Temp::Warm, "within the day");
        assert_eq!(classify(&s, t0 + 86_401, &cfg, &p), Temp::Cold);
        // 20 reads a day for a week: warm by rate after a day of silence.
        let mut s = ExtentTemp::default();
        for i in 0..140 {
            s.record(t0 + i * 4320, Access::Read, &p);
        }
        let last = s.last_access_s;
        assert_eq!(classify(&s, last + 86_400 + 60, &cfg, &p), Temp::Warm);
        // 300 a day: hot by rate even two hours after the last access.
        let mut s = ExtentTemp::default();
        for i in 0..900 {
            s.record(t0 + i * 288, Access::Read, &p);
        }
        let last = s.last_access_s;
        assert_eq!(classify(&s, last + 7200, &cfg, &p), Temp::Hot);
    }
}
