//! FUSE request accounting: requests, errors and latency by operation, and
//! the [`Request`] guard every FUSE handler holds (through `op_span!` in
//! `src/fuse/fs.rs`): it enters a tracing span carrying the request id, so
//! the engine's log lines for the request carry it too, and on drop records
//! the request's latency and logs its end at debug.
//!
//! The counters are process-wide (one table, keyed by operation name): a
//! handler macro has no handle on its `DfsFuse`, and a mount daemon serves
//! one pool, so the pool's collector reports this table. It never decides
//! anything about a request; it only counts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use crate::device::metered::{AtomicHistogram, HistogramSnapshot};

/// Counters of one FUSE operation.
#[derive(Debug, Default)]
pub struct OpStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub latency: AtomicHistogram,
}

/// A copy of one operation's counters.
#[derive(Debug, Clone)]
pub struct OpSnapshot {
    pub op: &'static str,
    pub requests: u64,
    pub errors: u64,
    pub latency: HistogramSnapshot,
}

fn table() -> &'static RwLock<BTreeMap<&'static str, Arc<OpStats>>> {
    static T: OnceLock<RwLock<BTreeMap<&'static str, Arc<OpStats>>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// Requests being served now.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// The counters of `op` (created on first use).
pub fn op_stats(op: &'static str) -> Arc<OpStats> {
    if let Some(s) = table().read().unwrap_or_else(|p| p.into_inner()).get(op) {
        return s.clone();
    }
    table().write().unwrap_or_else(|p| p.into_inner()).entry(op).or_default().clone()
}

/// Every operation seen so far, by name.
pub fn snapshot() -> Vec<OpSnapshot> {
    table()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(op, s)| OpSnapshot {
            op,
            requests: s.requests.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            latency: s.latency.snapshot(),
        })
        .collect()
}

/// FUSE requests being served at this moment.
pub fn in_flight() -> u64 {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// Count an error reply to `op` (called by `fuse_error!`).
pub fn error(op: &'static str) {
    op_stats(op).errors.fetch_add(1, Ordering::Relaxed);
}

/// One FUSE request being served: its span is entered for as long as the
/// guard lives; dropping it records the latency.
#[must_use = "the request is timed and its span entered while the guard lives"]
pub struct Request {
    stats: Arc<OpStats>,
    start: Instant,
    span: tracing::span::EnteredSpan,
}

impl Request {
    /// Start timing `op`, entering `span` (which carries the request id).
    pub fn begin(op: &'static str, span: tracing::Span) -> Request {
        let stats = op_stats(op);
        stats.requests.fetch_add(1, Ordering::Relaxed);
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Request { stats, start: Instant::now(), span: span.entered() }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        self.stats.latency.observe(secs);
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        // Logged inside the span, so the line carries the request id.
        tracing::debug!(latency_us = (secs * 1e6) as u64, "fuse request done");
        let _ = &self.span;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_errors_are_counted() {
        let before = op_stats("test_op").requests.load(Ordering::Relaxed);
        {
            let _r = Request::begin("test_op", tracing::info_span!("fuse", req = 1u64));
            error("test_op");
        }
        let s = snapshot().into_iter().find(|s| s.op == "test_op").unwrap();
        assert_eq!(s.requests, before + 1);
        assert!(s.errors >= 1);
        assert!(s.latency.count > before);
    }
}
