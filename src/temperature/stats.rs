//! # Per-extent access statistics
//!
//! Owns [`ExtentTemp`], the compact record kept for every extent that has
//! been accessed: decayed read and write counts (an exponentially decaying
//! window, so `count * ln 2 / half_life` is a rate in ops/day), the last
//! access time, and the access-rate buckets of the last
//! [`MAX_OBSERVATIONS`] observation intervals that the HMM classifier reads.
//! 44 bytes per extent (asserted below), kept apart from the extent table
//! so `state::Extent` does not grow. Pure arithmetic: this module must never
//! take a lock, do IO or know the pool.

use serde::{Deserialize, Serialize};

/// Observations kept per extent (the HMM's Viterbi window).
pub const MAX_OBSERVATIONS: usize = 100;
/// Bits per observation bucket (4 buckets).
const BUCKET_BITS: usize = 2;
const OBS_BYTES: usize = (MAX_OBSERVATIONS * BUCKET_BITS).div_ceil(8);

/// The parameters the statistics depend on (a part of
/// [`super::TemperatureConfig`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsParams {
    /// Half-life of the decaying read/write counts, in seconds.
    pub half_life_s: u32,
    /// Length of one HMM observation interval, in seconds.
    pub interval_s: u32,
    /// Accesses in an interval at or above `bucket_bounds[i]` make bucket
    /// `i + 1`; fewer than `bucket_bounds[0]` is bucket 0 (idle).
    pub bucket_bounds: [u16; 3],
}

impl Default for StatsParams {
    fn default() -> Self {
        StatsParams { half_life_s: 86_400, interval_s: 3600, bucket_bounds: [1, 2, 5] }
    }
}

impl StatsParams {
    /// The bucket (0..4) of `count` accesses in one interval.
    pub fn bucket(&self, count: u16) -> u8 {
        self.bucket_bounds.iter().filter(|&&b| count >= b).count() as u8
    }

    fn interval(&self, t: u32) -> u32 {
        t / self.interval_s.max(1)
    }
}

/// Access statistics of one extent. `last_access_s == 0`: never accessed.
/// Equality compares the counts bit for bit (so it is an `Eq`, as the
/// metadata state needs).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ExtentTemp {
    /// Reads, decayed to `last_access_s`.
    pub reads: f32,
    /// Writes, decayed to `last_access_s`.
    pub writes: f32,
    /// Time of the last access (seconds since the epoch).
    pub last_access_s: u32,
    /// Accesses so far in the interval of `last_access_s`.
    pub cur_count: u16,
    /// Completed observations stored (at most `MAX_OBSERVATIONS`).
    obs_len: u8,
    /// Ring position of the next observation.
    obs_head: u8,
    /// Ring of 2-bit buckets, oldest overwritten first.
    obs: [u8; OBS_BYTES],
}

impl PartialEq for ExtentTemp {
    fn eq(&self, o: &Self) -> bool {
        self.reads.to_bits() == o.reads.to_bits()
            && self.writes.to_bits() == o.writes.to_bits()
            && self.last_access_s == o.last_access_s
            && self.cur_count == o.cur_count
            && self.obs_len == o.obs_len
            && self.obs_head == o.obs_head
            && self.obs == o.obs
    }
}

impl Eq for ExtentTemp {}

const _: () = assert!(std::mem::size_of::<ExtentTemp>() == 44);

impl Default for ExtentTemp {
    fn default() -> Self {
        ExtentTemp {
            reads: 0.0,
            writes: 0.0,
            last_access_s: 0,
            cur_count: 0,
            obs_len: 0,
            obs_head: 0,
            obs: [0; OBS_BYTES],
        }
    }
}

/// What kind of access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

fn decay(count: f32, dt_s: u32, half_life_s: u32) -> f32 {
    if dt_s == 0 || count == 0.0 {
        return count;
    }
    count * (-(dt_s as f32) / half_life_s.max(1) as f32).exp2()
}

impl ExtentTemp {
    fn push(&mut self, bucket: u8) {
        let i = self.obs_head as usize;
        let (byte, shift) = (i * BUCKET_BITS / 8, (i * BUCKET_BITS) % 8);
        self.obs[byte] = (self.obs[byte] & !(0b11 << shift)) | ((bucket & 0b11) << shift);
        self.obs_head = ((i + 1) % MAX_OBSERVATIONS) as u8;
        self.obs_len = (self.obs_len as usize + 1).min(MAX_OBSERVATIONS) as u8;
    }

    /// Stored observations, oldest first.
    fn stored(&self) -> impl Iterator<Item = u8> + '_ {
        let n = self.obs_len as usize;
        let start = (self.obs_head as usize + MAX_OBSERVATIONS - n) % MAX_OBSERVATIONS;
        (0..n).map(move |k| {
            let i = (start + k) % MAX_OBSERVATIONS;
            (self.obs[i * BUCKET_BITS / 8] >> ((i * BUCKET_BITS) % 8)) & 0b11
        })
    }

    /// Close the intervals between the last access and `now`: the bucket of
    /// the last access's interval, then idle buckets. Returns whether any
    /// interval was closed.
    fn roll(&mut self, now: u32, p: &StatsParams) -> bool {
        if self.last_access_s == 0 {
            return false;
        }
        let (prev, cur) = (p.interval(self.last_access_s), p.interval(now));
        if cur <= prev {
            return false;
        }
        self.push(p.bucket(self.cur_count));
        let idle = ((cur - prev - 1) as usize).min(MAX_OBSERVATIONS);
        for _ in 0..idle {
            self.push(0);
        }
        self.cur_count = 0;
        true
    }

    /// Count one access at `now` (a clock that went backwards counts as
    /// `last_access_s`). Returns true when an observation interval closed,
    /// i.e. when the classification may have changed and is worth redoing.
    pub fn record(&mut self, now: u32, what: Access, p: &StatsParams) -> bool {
        let now = now.max(self.last_access_s);
        let first = self.last_access_s == 0;
        let rolled = self.roll(now, p);
        let dt = if first { 0 } else { now - self.last_access_s };
        self.reads = decay(self.reads, dt, p.half_life_s);
        self.writes = decay(self.writes, dt, p.half_life_s);
        match what {
            Access::Read => self.reads += 1.0,
            Access::Write => self.writes += 1.0,
        }
        self.cur_count = self.cur_count.saturating_add(1);
        self.last_access_s = now;
        rolled || first
    }

    /// Decayed (reads, writes) as rates in ops/day at `now`.
    pub fn rates_per_day(&self, now: u32, p: &StatsParams) -> (f64, f64) {
        let dt = now.saturating_sub(self.last_access_s);
        let k = std::f64::consts::LN_2 * 86_400.0 / p.half_life_s.max(1) as f64;
        (decay(self.reads, dt, p.half_life_s) as f64 * k, decay(self.writes, dt, p.half_life_s) as f64 * k)
    }

    /// The observation sequence as seen at `now`, oldest first, at most
    /// `MAX_OBSERVATIONS`: the stored buckets, the bucket of the last
    /// access's interval (also while that interval is still running), and
    /// idle buckets for the intervals since. Does not change `self`.
    pub fn observations(&self, now: u32, p: &StatsParams) -> Vec<u8> {
        let mut t = *self;
        let now = now.max(t.last_access_s);
        if t.last_access_s != 0 && !t.roll(now, p) && t.cur_count > 0 {
            t.push(p.bucket(t.cur_count));
        }
        t.stored().collect()
    }

    /// Completed observations stored.
    pub fn stored_observations(&self) -> usize {
        self.obs_len as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: u32 = 86_400;

    #[test]
    fn steady_rate_reads_back_as_that_rate() {
        let p = StatsParams::default();
        let mut s = ExtentTemp::default();
        let t0 = 1_000_000_000;
        // 200 reads a day for 10 days.
        for i in 0..2000u32 {
            s.record(t0 + i * (DAY / 200), Access::Read, &p);
        }
        let (r, w) = s.rates_per_day(t0 + 2000 * (DAY / 200), &p);
        assert!((180.0..220.0).contains(&r), "rate {r}");
        assert_eq!(w, 0.0);
        // Ten idle days later it has all but vanished.
        let (r, _) = s.rates_per_day(t0 + 20 * DAY, &p);
        assert!(r < 0.5, "rate {r}");
    }

    #[test]
    fn observations_count_idle_intervals_and_the_running_one() {
        let p = StatsParams::default();
        let mut s = ExtentTemp::default();
        let t0 = 3600 * 1000;
        assert!(s.record(t0, Access::Write, &p), "a first access asks for a classification");
        for _ in 0..6 {
            assert!(!s.record(t0 + 10, Access::Read, &p));
        }
        assert_eq!(s.observations(t0 + 20, &p), vec![3]);
        // Three hours later: the busy hour, two idle ones (the current one has no access yet).
        assert_eq!(s.observations(t0 + 3 * 3600, &p), vec![3, 0, 0]);
        assert!(s.record(t0 + 3 * 3600, Access::Read, &p));
        assert_eq!(s.observations(t0 + 3 * 3600, &p), vec![3, 0, 0, 1]);
        // Years of idleness keep the window at its size.
        assert_eq!(s.observations(t0 + 400 * DAY, &p).len(), MAX_OBSERVATIONS);
        assert!(s.observations(t0 + 400 * DAY, &p).iter().all(|&b| b == 0));
    }

    proptest! {
        #[test]
        fn never_panics_and_keeps_its_bounds(steps in proptest::collection::vec((0u32..200_000, any::<bool>()), 0..300),
                                              start in 1u32..u32::MAX / 2) {
            let p = StatsParams::default();
            let mut s = ExtentTemp::default();
            let mut t = start;
            for (dt, read) in steps {
                t = t.saturating_add(dt);
                s.record(t, if read { Access::Read } else { Access::Write }, &p);
                let obs = s.observations(t, &p);
                prop_assert!(obs.len() <= MAX_OBSERVATIONS);
                prop_assert!(obs.iter().all(|&b| b < 4));
                let (r, w) = s.rates_per_day(t, &p);
                prop_assert!(r.is_finite() && w.is_finite() && r >= 0.0 && w >= 0.0);
            }
        }
    }
}
