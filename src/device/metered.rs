//! `MeteredDevice`: wraps any [`Device`] and counts what passes through it
//! (bytes and operations by direction, latency histograms, errors by
//! operation) into a shared [`IoStats`], read by the metrics collector at
//! scrape time (`crate::metrics`).
//!
//! It owns the counting only: every call is forwarded unchanged (same
//! offsets, buffers, errors), so the wrapper never changes behaviour, never
//! interprets bytes and never logs. Counting is a few relaxed atomic adds
//! per request, so it is always on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::{Device, DeviceIdentity, ReadReq, Result, WriteReq};

/// Upper bounds (seconds) of the latency histogram buckets: 50 µs to 2.5 s.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5];

/// A latency histogram of fixed buckets ([`LATENCY_BUCKETS`]) in atomics.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

/// A copy of an [`AtomicHistogram`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`, without +Inf.
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl AtomicHistogram {
    /// Record one observation of `secs` seconds.
    pub fn observe(&self, secs: f64) {
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add((secs * 1e9) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative buckets, sum and count. The count is the sum of the
    /// buckets read, so the snapshot is self-consistent.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            acc += self.buckets[i].load(Ordering::Relaxed);
            buckets.push((*b, acc));
        }
        acc += self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot { buckets, sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9, count: acc }
    }
}

/// Counters of one direction (read, write or sync).
#[derive(Debug, Default)]
pub struct DirStats {
    pub ops: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub latency: AtomicHistogram,
}

impl DirStats {
    fn record<T>(&self, start: Instant, bytes: u64, ops: u64, res: &Result<T>) {
        self.ops.fetch_add(ops, Ordering::Relaxed);
        match res {
            Ok(_) => {
                self.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency.observe(start.elapsed().as_secs_f64());
    }
}

/// What one device did since it was wrapped.
#[derive(Debug, Default)]
pub struct IoStats {
    pub read: DirStats,
    pub write: DirStats,
    pub sync: DirStats,
    /// Discard (TRIM) requests.
    pub discards: AtomicU64,
}

/// A device whose IO is counted into an [`IoStats`].
#[derive(Debug)]
pub struct MeteredDevice {
    inner: Arc<dyn Device>,
    stats: Arc<IoStats>,
}

impl MeteredDevice {
    /// Wrap `inner`; its counters are the returned `Arc<IoStats>`.
    pub fn wrap(inner: Arc<dyn Device>) -> (Arc<dyn Device>, Arc<IoStats>) {
        let stats = Arc::new(IoStats::default());
        (Arc::new(MeteredDevice { inner, stats: stats.clone() }), stats)
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<IoStats> {
        &self.stats
    }
}

impl Device for MeteredDevice {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn identity(&self) -> &DeviceIdentity {
        self.inner.identity()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = Instant::now();
        let len = buf.len() as u64;
        let r = self.inner.read_at(offset, buf);
        self.stats.read.record(start, len, 1, &r);
        r
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.write_at(offset, buf);
        self.stats.write.record(start, buf.len() as u64, 1, &r);
        r
    }

    fn sync(&self) -> Result<()> {
        let start = Instant::now();
        let r = self.inner.sync();
        self.stats.sync.record(start, 0, 1, &r);
        r
    }

    fn read_batch(&self, reqs: &mut [ReadReq<'_>]) -> Result<()> {
        let start = Instant::now();
        let len: u64 = reqs.iter().map(|r| r.buf.len() as u64).sum();
        let n = reqs.len() as u64;
        let r = self.inner.read_batch(reqs);
        self.stats.read.record(start, len, n, &r);
        r
    }

    fn write_batch(&self, reqs: &[WriteReq<'_>]) -> Result<()> {
        let start = Instant::now();
        let len: u64 = reqs.iter().map(|r| r.buf.len() as u64).sum();
        let r = self.inner.write_batch(reqs);
        self.stats.write.record(start, len, reqs.len() as u64, &r);
        r
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.stats.discards.fetch_add(1, Ordering::Relaxed);
        self.inner.discard(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{AlignedBuf, MemDevice};

    #[test]
    fn counts_bytes_ops_and_latency() {
        let mem: Arc<dyn Device> = Arc::new(MemDevice::new(1 << 20, 4096));
        let (dev, stats) = MeteredDevice::wrap(mem);
        let mut buf = AlignedBuf::zeroed(8192);
        buf[0] = 7;
        dev.write_at(4096, &buf).unwrap();
        dev.sync().unwrap();
        let mut back = AlignedBuf::zeroed(8192);
        dev.read_at(4096, &mut back).unwrap();
        assert_eq!(back[0], 7, "the wrapper forwards data unchanged");
        assert!(dev.read_at(1 << 30, &mut back).is_err());
        assert_eq!(stats.write.bytes.load(Ordering::Relaxed), 8192);
        assert_eq!(stats.write.ops.load(Ordering::Relaxed), 1);
        assert_eq!(stats.read.ops.load(Ordering::Relaxed), 2);
        assert_eq!(stats.read.bytes.load(Ordering::Relaxed), 8192, "failed reads move no bytes");
        assert_eq!(stats.read.errors.load(Ordering::Relaxed), 1);
        assert_eq!(stats.sync.ops.load(Ordering::Relaxed), 1);
        let h = stats.read.latency.snapshot();
        assert_eq!(h.count, 2);
        assert!(h.buckets.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative");
    }
}
