//! # Clocks for temperature tracking
//!
//! Owns the notion of "now" the temperature code uses: whole seconds since
//! the Unix epoch as `u32` (good until 2106, and 4 bytes per timestamp in
//! the per-extent stats). [`SystemClock`] reads the system time;
//! [`TestClock`] is moved by hand so tests can let days pass in
//! microseconds; [`OffsetClock`] is the system time plus an offset that only
//! grows (a mount with `-o test_clock`, moved by the control method
//! `temperature.advance`, for demos and mounted tests). This module must
//! never be used for anything but access statistics (rate limits and IO
//! timeouts use `std::time::Instant`).

use std::fmt::Debug;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// A source of "now" in whole seconds since the Unix epoch.
pub trait Clock: Send + Sync + Debug {
    /// Seconds since the Unix epoch (never 0 for a real time).
    fn now_s(&self) -> u32;

    /// Move this clock forward by `secs`, if it can be moved (test
    /// clocks); returns the offset from the system time it now has, or
    /// None for a clock that follows the system time only.
    fn advance(&self, _secs: u32) -> Option<u64> {
        None
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    /// `CLOCK_REALTIME_COARSE` (the time of the last tick, read from the
    /// vDSO without a syscall): whole seconds need nothing finer, and the
    /// read path asks once per read.
    fn now_s(&self) -> u32 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec it is given.
        let secs = if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
            ts.tv_sec.max(0) as u64
        } else {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
        };
        secs.min(u32::MAX as u64).max(1) as u32
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

    fn advance(&self, secs: u32) -> Option<u64> {
        TestClock::advance(self, secs);
        Some(self.now_s().saturating_sub(SystemClock.now_s()) as u64)
    }
}

/// The system time plus an offset that only grows: time passes as usual
/// and [`Clock::advance`] jumps it forward (a mount's `-o test_clock`).
#[derive(Debug, Default)]
pub struct OffsetClock(AtomicU32);

impl OffsetClock {
    pub fn new() -> OffsetClock {
        OffsetClock::default()
    }

    /// Seconds added to the system time so far.
    pub fn offset_s(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Clock for OffsetClock {
    fn now_s(&self) -> u32 {
        SystemClock.now_s().saturating_add(self.offset_s())
    }

    fn advance(&self, secs: u32) -> Option<u64> {
        let before = self.0.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |o| Some(o.saturating_add(secs)));
        Some(before.unwrap_or(0).saturating_add(secs) as u64)
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
        assert_eq!(SystemClock.advance(10), None);
    }

    #[test]
    fn offset_clock_is_system_time_plus_what_it_was_advanced() {
        let c = OffsetClock::new();
        let sys = SystemClock.now_s();
        assert!(c.now_s() >= sys && c.now_s() <= sys + 2);
        assert_eq!(c.advance(3 * 86_400), Some(3 * 86_400));
        assert_eq!(c.advance(3600), Some(3 * 86_400 + 3600));
        assert!(c.now_s() >= sys + 3 * 86_400 + 3600);
    }
}
