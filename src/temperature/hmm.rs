//! # HMM classifier
//!
//! Owns the hidden-Markov view of temperature: three hidden states (hot,
//! warm, cold), observations are the access-rate buckets of successive
//! intervals (see `stats`), a transition matrix with inertia (staying is
//! by far the most likely move, so an extent does not flap on one burst),
//! Viterbi over the last 100 observations in log space, and a recency boost
//! added to the hot state's final score while the last access is fresh.
//! The model and its numbers are explained in `docs/TEMPERATURE.md`.
//! Pure arithmetic: this module must never do IO or take a lock.

use super::Temp;

/// States in matrix order.
pub const STATES: [Temp; 3] = [Temp::Hot, Temp::Warm, Temp::Cold];
/// Observation buckets (see `stats::StatsParams::bucket`).
pub const BUCKETS: usize = 4;

/// Every parameter of the model, as probabilities (rows sum to 1).
/// State order: hot, warm, cold. Bucket order: idle, 1 access, 2-4, 5+ per
/// interval (with the default bucket bounds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HmmConfig {
    /// P(first state).
    pub initial: [f64; 3],
    /// P(next state | state): the diagonal is the inertia.
    pub transition: [[f64; 3]; 3],
    /// P(bucket | state).
    pub emission: [[f64; BUCKETS]; 3],
    /// Log-score (nats) added to the hot state at the last step when the
    /// last access is brand new, falling linearly to 0 at `recency_window_s`.
    pub recency_boost: f64,
    /// How long the recency boost lasts (seconds).
    pub recency_window_s: u32,
}

impl Default for HmmConfig {
    fn default() -> Self {
        HmmConfig {
            initial: [0.1, 0.3, 0.6],
            transition: [[0.95, 0.04, 0.01], [0.03, 0.95, 0.02], [0.001, 0.009, 0.99]],
            emission: [[0.10, 0.15, 0.30, 0.45], [0.60, 0.25, 0.10, 0.05], [0.97, 0.02, 0.008, 0.002]],
            recency_boost: 0.5,
            recency_window_s: 3600,
        }
    }
}

/// The model in log space, computed once from an [`HmmConfig`].
#[derive(Debug, Clone, Copy)]
pub struct Hmm {
    log_init: [f64; 3],
    log_trans: [[f64; 3]; 3],
    log_emit: [[f64; BUCKETS]; 3],
    pub cfg: HmmConfig,
}

/// What the model says about one observation sequence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HmmVerdict {
    /// Last state of the most likely path (Viterbi, boost included).
    pub state: Temp,
    /// Posterior probability of that state at the last step (forward
    /// algorithm, the same boost applied).
    pub probability: f64,
}

fn ln(p: f64) -> f64 {
    if p > 0.0 {
        p.ln()
    } else {
        f64::NEG_INFINITY
    }
}

impl Hmm {
    pub fn new(cfg: HmmConfig) -> Hmm {
        Hmm {
            log_init: cfg.initial.map(ln),
            log_trans: cfg.transition.map(|r| r.map(ln)),
            log_emit: cfg.emission.map(|r| r.map(ln)),
            cfg,
        }
    }

    fn emit(&self, s: usize, o: u8) -> f64 {
        self.log_emit[s][(o as usize).min(BUCKETS - 1)]
    }

    /// The most likely state path for `obs` (oldest first) and its log
    /// probability, with `bonus[s]` added to state `s` at the last step.
    /// An empty sequence gives the best initial state.
    pub fn viterbi(&self, obs: &[u8], bonus: [f64; 3]) -> (Vec<usize>, f64) {
        if obs.is_empty() {
            let s = (0..3).max_by(|&a, &b| (self.log_init[a] + bonus[a]).total_cmp(&(self.log_init[b] + bonus[b])));
            let s = s.unwrap_or(2);
            return (vec![s], self.log_init[s] + bonus[s]);
        }
        let mut delta: [f64; 3] = std::array::from_fn(|s| self.log_init[s] + self.emit(s, obs[0]));
        let mut back: Vec<[u8; 3]> = Vec::with_capacity(obs.len());
        for &o in &obs[1..] {
            let mut next = [0.0; 3];
            let mut from = [0u8; 3];
            for (j, n) in next.iter_mut().enumerate() {
                let (mut best, mut arg) = (f64::NEG_INFINITY, j);
                for (i, d) in delta.iter().enumerate() {
                    let v = d + self.log_trans[i][j];
                    if v > best {
                        (best, arg) = (v, i);
                    }
                }
                *n = best + self.emit(j, o);
                from[j] = arg as u8;
            }
            back.push(from);
            delta = next;
        }
        let mut last = 0;
        for s in 1..3 {
            if delta[s] + bonus[s] > delta[last] + bonus[last] {
                last = s;
            }
        }
        let score = delta[last] + bonus[last];
        let mut path = vec![last];
        for from in back.iter().rev() {
            last = from[last] as usize;
            path.push(last);
        }
        path.reverse();
        (path, score)
    }

    /// P(last state = s | obs) for each s (forward algorithm, scaled:
    /// the forward vector is renormalised at every step, which keeps it in
    /// range without logarithms), with `bonus` (log) added at the last step
    /// as in [`Hmm::viterbi`].
    pub fn posterior(&self, obs: &[u8], bonus: [f64; 3]) -> [f64; 3] {
        let c = &self.cfg;
        let e = |s: usize, o: u8| c.emission[s][(o as usize).min(BUCKETS - 1)];
        let norm = |a: [f64; 3]| {
            let z: f64 = a.iter().sum();
            if z > 0.0 && z.is_finite() {
                a.map(|x| x / z)
            } else {
                [1.0 / 3.0; 3]
            }
        };
        let mut alpha = match obs.first() {
            Some(&o) => norm(std::array::from_fn(|s| c.initial[s] * e(s, o))),
            None => norm(c.initial),
        };
        for &o in obs.iter().skip(1) {
            alpha = norm(std::array::from_fn(|j| {
                (alpha[0] * c.transition[0][j] + alpha[1] * c.transition[1][j] + alpha[2] * c.transition[2][j])
                    * e(j, o)
            }));
        }
        norm(std::array::from_fn(|s| alpha[s] * bonus[s].exp()))
    }

    /// The recency bonus for a last access `age_s` seconds ago.
    pub fn bonus(&self, age_s: Option<u32>) -> [f64; 3] {
        let w = self.cfg.recency_window_s.max(1) as f64;
        match age_s {
            Some(a) if (a as f64) < w => [self.cfg.recency_boost * (1.0 - a as f64 / w), 0.0, 0.0],
            _ => [0.0; 3],
        }
    }

    /// Classify an observation sequence (the last 100 are used).
    pub fn classify(&self, obs: &[u8], age_s: Option<u32>) -> HmmVerdict {
        let obs = &obs[obs.len().saturating_sub(super::stats::MAX_OBSERVATIONS)..];
        let bonus = self.bonus(age_s);
        let (path, _) = self.viterbi(obs, bonus);
        let s = *path.last().unwrap_or(&2);
        HmmVerdict { state: STATES[s], probability: self.posterior(obs, bonus)[s] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The small case worked by hand in docs/TEMPERATURE.md.
    fn hand_model() -> Hmm {
        Hmm::new(HmmConfig {
            initial: [0.5, 0.3, 0.2],
            transition: [[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7]],
            emission: [[0.1, 0.1, 0.3, 0.5], [0.4, 0.3, 0.2, 0.1], [0.7, 0.2, 0.05, 0.05]],
            recency_boost: 0.0,
            recency_window_s: 1,
        })
    }

    #[test]
    fn viterbi_matches_the_hand_computed_case() {
        // obs = [5+ accesses, idle, idle]
        // t0: δ = π·B[·,3] = hot .25, warm .03, cold .01
        // t1: hot .25·.8·.1 = .02, warm .25·.1·.4 = .01, cold .25·.1·.7 = .0175 (all from hot)
        // t2: hot .02·.8·.1 = .0016, warm .01·.6·.4 = .0024, cold .0175·.7·.7 = .008575
        // best: cold, path hot → cold → cold, P = .008575.
        let m = hand_model();
        let (path, score) = m.viterbi(&[3, 0, 0], [0.0; 3]);
        assert_eq!(path, vec![0, 2, 2]);
        assert!((score - 0.008575f64.ln()).abs() < 1e-9, "{}", score.exp());
        // Forward: α2 = hot .002282, warm .007276, cold .017003; P(cold) = .017003 / .026561.
        let post = m.posterior(&[3, 0, 0], [0.0; 3]);
        assert!((post[2] - 0.017003 / 0.026561).abs() < 1e-4, "{post:?}");
        assert!((post.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let v = m.classify(&[3, 0, 0], None);
        assert_eq!(v.state, Temp::Cold);
        // One observation: argmax of π·B.
        assert_eq!(m.viterbi(&[0], [0.0; 3]).0, vec![2]); // .14 cold vs .12 warm vs .05 hot
    }

    #[test]
    fn default_model_has_inertia() {
        let m = Hmm::new(HmmConfig::default());
        let mut obs = vec![0u8; 99];
        obs.push(3);
        assert_eq!(m.classify(&obs, Some(0)).state, Temp::Cold, "one busy hour after days of silence");
        obs.extend([3, 3, 3]);
        assert_eq!(m.classify(&obs, Some(0)).state, Temp::Hot, "busy hour after busy hour");
        let mut obs = vec![3u8; 50];
        obs.push(0);
        assert_eq!(m.classify(&obs, None).state, Temp::Hot, "one idle hour of a hot extent");
        obs.extend([0u8; 30]);
        assert_eq!(m.classify(&obs, None).state, Temp::Cold);
        let v = m.classify(&[0u8; 100], None);
        assert_eq!(v.state, Temp::Cold);
        assert!(v.probability > 0.9, "{v:?}");
    }
}
