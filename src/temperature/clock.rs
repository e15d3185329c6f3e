//! # Clocks for temperature tracking
//!
//! Owns the notion of "now" the temperature code uses: whole seconds since
//! the Unix epoch as `u32` (good until 2106, and 4 bytes per timestamp in
//! the per-extent stats). [`SystemClock`] reads the system time;
//! [`TestClock`] is moved by hand so tests can let days pass in
//! microseconds. This module must never be used for anything but access
//! statistics (rate limits and IO timeouts use `std::time::Instant`).

use std::fmt::Debug;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A source of "now" in whole seconds since the Unix epoch.
pub trait Clock: Send + Sync + Debug {
    /// Seconds since the Unix epoch (never 0 for a real time).
    fn now_s(&self) -> u32;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_s(&self) -> u32 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
            .unwrap_or(1)
            .max(1)
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct TestClock(Arc<AtomicU32>);

impl TestClock {
    /// A clock reading `start_s` (at least 1).
    pub fn new(start_s: u32) -> TestClock {
        TestClock(Arc::new(AtomicU32::new(start_s.max(1))))
    }

    /// Move forward by `secs` seconds.
    pub fn advance(&self, secs: u32) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }

    /// Set the time.
    pub fn set(&self, now_s: u32) {
        self.0.store(now_s.max(1), Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_s(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_clock_moves_only_when_told_and_clones_share_it() {
        let c = TestClock::new(1000);
        let d = c.clone();
        assert_eq!(c.now_s(), 1000);
        d.advance(86_400);
        assert_eq!(c.now_s(), 87_400);
        assert!(SystemClock.now_s() > 1_600_000_000);
    }
}
