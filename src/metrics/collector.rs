//! The pool's Prometheus collector: every metric family is built at scrape
//! time from what the engine already keeps (its `Counters`, the member and
//! extent tables, the per-device [`IoStats`] of `MeteredDevice`, the FUSE
//! request table), so nothing in the IO path increments a Prometheus object.
//!
//! It only reads; it never changes the pool. Names follow Prometheus
//! conventions: `dfs_` prefix, base units (`_bytes`, `_seconds`), `_total`
//! for counters.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use super::health::{self, HealthState, Live};
use super::IoMeters;
use crate::device::metered::{DirStats, HistogramSnapshot, IoStats};
use crate::engine::Pool;

/// One family being built.
struct Family {
    mf: MetricFamily,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

impl Family {
    fn new(name: &str, help: &str, t: MetricType) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(name.into());
        mf.set_help(help.into());
        mf.set_field_type(t);
        Family { mf }
    }

    fn value(&mut self, l: &[(&str, &str)], v: f64) -> &mut Self {
        let mut m = Metric::default();
        m.set_label(labels(l));
        match self.mf.get_field_type() {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(v);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
        }
        self.mf.mut_metric().push(m);
        self
    }

    fn histogram(&mut self, l: &[(&str, &str)], h: &HistogramSnapshot) -> &mut Self {
        let mut m = Metric::default();
        m.set_label(labels(l));
        let mut ph = Histogram::default();
        ph.set_sample_count(h.count);
        ph.set_sample_sum(h.sum_seconds);
        ph.set_bucket(
            h.buckets
                .iter()
                .map(|(ub, c)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(*ub);
                    b.set_cumulative_count(*c);
                    b
                })
                .collect(),
        );
        m.set_histogram(ph);
        self.mf.mut_metric().push(m);
        self
    }
}

/// Name, help and type of every family (also the collector's descriptors).
const FAMILIES: &[(&str, &str, MetricType)] = &[
    ("dfs_build_info", "Build of the DynamicFS binary (value 1)", MetricType::GAUGE),
    ("dfs_uptime_seconds", "Seconds since the metrics of this pool were set up (the mount's start)", MetricType::GAUGE),
    ("dfs_pool_info", "The pool served (value 1)", MetricType::GAUGE),
    ("dfs_member_info", "Each member and its path (value 1)", MetricType::GAUGE),
    ("dfs_member_size_bytes", "Size of each member", MetricType::GAUGE),
    ("dfs_member_used_bytes", "Bytes of each member's data region in use", MetricType::GAUGE),
    ("dfs_member_free_bytes", "Bytes of each member's data region free", MetricType::GAUGE),
    ("dfs_member_state", "State of each member: 1 for its current state, 0 for the others", MetricType::GAUGE),
    ("dfs_member_fragments", "Fragments stored on each member", MetricType::GAUGE),
    ("dfs_device_io_bytes_total", "Bytes moved to and from each member's device", MetricType::COUNTER),
    (
        "dfs_device_io_operations_total",
        "IO requests to each member's device (batches count each request)",
        MetricType::COUNTER,
    ),
    ("dfs_device_io_errors_total", "Failed IO calls per member device and direction", MetricType::COUNTER),
    ("dfs_device_io_duration_seconds", "Latency of IO calls per member device and direction", MetricType::HISTOGRAM),
    ("dfs_errors_total", "Errors by kind", MetricType::COUNTER),
    ("dfs_extents", "Extents by redundancy policy", MetricType::GAUGE),
    ("dfs_extent_bytes", "Logical bytes of extents by redundancy policy", MetricType::GAUGE),
    ("dfs_temperature_extents", "Extents by temperature class", MetricType::GAUGE),
    ("dfs_temperature_bytes", "Logical bytes of extents by temperature class", MetricType::GAUGE),
    ("dfs_degraded_extents", "Extents with a fragment on a failed or missing member", MetricType::GAUGE),
    ("dfs_unreadable_extents", "Extents with fewer good fragments than their policy needs", MetricType::GAUGE),
    ("dfs_lost_extents", "Extents reads found lost since the pool was opened", MetricType::GAUGE),
    (
        "dfs_health_state",
        "Pool health: 1 for the current state (ok, degraded, failed), 0 for the others",
        MetricType::GAUGE,
    ),
    ("dfs_repairs_total", "Fragments rewritten by lazy repair", MetricType::COUNTER),
    ("dfs_repair_bytes_total", "Bytes read and written by lazy repair", MetricType::COUNTER),
    ("dfs_jobs_running", "Long-running jobs running now, by kind", MetricType::GAUGE),
    ("dfs_job_done_extents", "Extents a running job has processed", MetricType::GAUGE),
    ("dfs_job_total_extents", "Extents a running job covers", MetricType::GAUGE),
    (
        "dfs_rebuild_extents_total",
        "Extents the mount's background worker rewrote, by job (rebuild, drain)",
        MetricType::COUNTER,
    ),
    ("dfs_rebuild_bytes_total", "Bytes the mount's background worker read and wrote, by job", MetricType::COUNTER),
    ("dfs_migration_queue_length", "Temperature migrations waiting in the queue", MetricType::GAUGE),
    ("dfs_migrations_total", "Temperature migrations by outcome (done, skipped, failed, dropped)", MetricType::COUNTER),
    (
        "dfs_scrub_daemon_state",
        "Scrub daemon of the mount: 1 for its state (idle, running, paused), 0 for the others",
        MetricType::GAUGE,
    ),
    ("dfs_scrub_pass_running", "1 while a scrub pass is under way (persisted in the pool)", MetricType::GAUGE),
    (
        "dfs_scrub_pass_extents",
        "Extents scrubbed by the current pass, or by the last one when none runs",
        MetricType::GAUGE,
    ),
    ("dfs_scrub_pass_bytes", "Fragment bytes read by the current (or last) scrub pass", MetricType::GAUGE),
    ("dfs_scrub_pass_errors", "Fragment errors found by the current (or last) scrub pass", MetricType::GAUGE),
    ("dfs_scrub_pass_repaired_fragments", "Fragments repaired by the current (or last) scrub pass", MetricType::GAUGE),
    (
        "dfs_scrub_last_start_timestamp_seconds",
        "Start of the current or last scrub pass (Unix time)",
        MetricType::GAUGE,
    ),
    (
        "dfs_scrub_last_finish_timestamp_seconds",
        "End of the last finished scrub pass (Unix time; absent if none)",
        MetricType::GAUGE,
    ),
    ("dfs_scrub_rate_bytes_per_second", "Bytes per second the scrub daemon reads, measured", MetricType::GAUGE),
    ("dfs_scrub_unrepairable_extents", "Extents the scrub daemon found and could not repair", MetricType::GAUGE),
    ("dfs_scrub_passes_total", "Scrub passes the mount's daemon completed", MetricType::COUNTER),
    ("dfs_journal_commits_total", "Journal records written (group commits)", MetricType::COUNTER),
    ("dfs_checkpoints_total", "Metadata checkpoints written", MetricType::COUNTER),
    ("dfs_device_syncs_total", "Device syncs issued by the engine", MetricType::COUNTER),
    ("dfs_metadata_operations_total", "Metadata operations applied", MetricType::COUNTER),
    ("dfs_fragments_written_total", "Fragments written", MetricType::COUNTER),
    ("dfs_fragments_read_total", "Fragments read", MetricType::COUNTER),
    ("dfs_fuse_requests_total", "FUSE requests served, by operation", MetricType::COUNTER),
    ("dfs_fuse_request_errors_total", "FUSE requests answered with an error, by operation", MetricType::COUNTER),
    ("dfs_fuse_request_duration_seconds", "Latency of FUSE requests, by operation", MetricType::HISTOGRAM),
    ("dfs_fuse_requests_in_flight", "FUSE requests being served now", MetricType::GAUGE),
    ("dfs_open_files", "Files open through the mount", MetricType::GAUGE),
    ("dfs_inodes", "Inodes by kind", MetricType::GAUGE),
];

const MEMBER_STATES: [&str; 5] = ["online", "draining", "failed", "removed", "missing"];

/// Builds the pool's metric families at scrape time.
pub struct PoolCollector {
    pub(crate) pool: Arc<Pool>,
    pub(crate) io: IoMeters,
    pub(crate) started: Instant,
    pub(crate) live: Arc<Live>,
    descs: Vec<Desc>,
}

impl PoolCollector {
    pub(crate) fn new(pool: Arc<Pool>, io: IoMeters, live: Arc<Live>) -> PoolCollector {
        let descs = FAMILIES
            .iter()
            .filter_map(|(name, help, _)| {
                Desc::new(name.to_string(), help.to_string(), vec![], Default::default()).ok()
            })
            .collect();
        PoolCollector { pool, io, started: Instant::now(), live, descs }
    }

    /// Every family, in [`FAMILIES`] order (empty ones included; the
    /// registry drops them).
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut fams: Vec<Family> = FAMILIES.iter().map(|(n, h, t)| Family::new(n, h, *t)).collect();
        let mut get = |name: &str| -> usize {
            FAMILIES.iter().position(|(n, _, _)| *n == name).expect("family declared in FAMILIES")
        };
        macro_rules! f {
            ($name:literal) => {
                fams[get($name)]
            };
        }
        let pool = &self.pool;
        f!("dfs_build_info").value(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);
        f!("dfs_uptime_seconds").value(&[], self.started.elapsed().as_secs_f64());
        let uuid = pool.uuid().to_string();
        f!("dfs_pool_info").value(&[("pool", &uuid), ("label", &pool_label(pool))], 1.0);

        let ext = health::extent_summary(pool);
        for m in pool.list_members() {
            let idx = m.index.to_string();
            let l = [("member", idx.as_str())];
            f!("dfs_member_info").value(&[("member", &idx), ("path", &m.path)], 1.0);
            f!("dfs_member_size_bytes").value(&l, m.size_bytes as f64);
            f!("dfs_member_used_bytes").value(&l, m.used_bytes as f64);
            f!("dfs_member_free_bytes").value(&l, m.free_bytes as f64);
            for s in MEMBER_STATES {
                f!("dfs_member_state").value(&[("member", &idx), ("state", s)], if m.state == s { 1.0 } else { 0.0 });
            }
            f!("dfs_member_fragments").value(&l, ext.fragments_per_member.get(&m.index).copied().unwrap_or(0) as f64);
            let Some(Some(mem)) = pool.members().get(m.index as usize) else { continue };
            let Some(io) = self.io.for_identity(mem.dev.identity()) else { continue };
            self.member_io(&mut fams, &mut get, &idx, &io);
        }
        let mut dev_errors = [0u64; 3];
        for (_, io) in self.io.all() {
            dev_errors[0] += io.read.errors.load(Ordering::Relaxed);
            dev_errors[1] += io.write.errors.load(Ordering::Relaxed);
            dev_errors[2] += io.sync.errors.load(Ordering::Relaxed);
        }
        let c = &pool.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        let fuse = super::fuse::snapshot();
        let fuse_errors: u64 = fuse.iter().map(|s| s.errors).sum();
        for (kind, v) in [
            ("device_read", dev_errors[0] as f64),
            ("device_write", dev_errors[1] as f64),
            ("device_sync", dev_errors[2] as f64),
            ("fragment_verify", load(&c.fragment_errors)),
            ("repair_failed", load(&c.repair_failures)),
            ("extent_lost", load(&c.extents_lost)),
            ("fuse_reply", fuse_errors as f64),
        ] {
            f!("dfs_errors_total").value(&[("kind", kind)], v);
        }
        for (p, n) in &ext.by_policy {
            f!("dfs_extents").value(&[("policy", p)], n.extents as f64);
            f!("dfs_extent_bytes").value(&[("policy", p)], n.bytes as f64);
        }
        f!("dfs_degraded_extents").value(&[], ext.degraded as f64);
        f!("dfs_unreadable_extents").value(&[], ext.unreadable as f64);
        let lost = pool.lost_extents().len();
        f!("dfs_lost_extents").value(&[], lost as f64);
        let h = health::check_live(pool, "-", &self.live);
        for s in [HealthState::Ok, HealthState::Degraded, HealthState::Failed] {
            f!("dfs_health_state").value(&[("state", s.as_str())], if s == h.state { 1.0 } else { 0.0 });
        }
        f!("dfs_repairs_total").value(&[], load(&c.repairs));
        f!("dfs_repair_bytes_total").value(&[("direction", "read")], load(&c.repair_bytes_read));
        f!("dfs_repair_bytes_total").value(&[("direction", "write")], load(&c.repair_bytes_written));
        for (class, n) in &h.temperature {
            f!("dfs_temperature_extents").value(&[("class", class)], n.extents as f64);
            f!("dfs_temperature_bytes").value(&[("class", class)], n.bytes as f64);
        }
        let jobs = &h.running_jobs;
        for kind in ["policy_change", "rebuild", "drain", "scrub", "migration"] {
            f!("dfs_jobs_running").value(&[("kind", kind)], jobs.iter().filter(|j| j.kind == kind).count() as f64);
        }
        for j in jobs {
            f!("dfs_job_done_extents").value(&[("kind", &j.kind), ("id", &j.id)], j.done as f64);
            f!("dfs_job_total_extents").value(&[("kind", &j.kind), ("id", &j.id)], j.total as f64);
        }
        if let Some(w) = self.live.worker_status() {
            for (job, io) in [("rebuild", &w.rebuild), ("drain", &w.drain)] {
                f!("dfs_rebuild_extents_total").value(&[("job", job)], io.extents as f64);
                f!("dfs_rebuild_bytes_total").value(&[("job", job), ("direction", "read")], io.bytes_read as f64);
                f!("dfs_rebuild_bytes_total").value(&[("job", job), ("direction", "write")], io.bytes_written as f64);
            }
        }
        let q = &pool.temperature().queue;
        f!("dfs_migration_queue_length").value(&[], q.len() as f64);
        for (outcome, n) in [("done", &q.done), ("skipped", &q.skipped), ("failed", &q.failed), ("dropped", &q.dropped)]
        {
            f!("dfs_migrations_total").value(&[("outcome", outcome)], load(n));
        }
        self.scrub(&mut fams, &mut get, &h);
        f!("dfs_journal_commits_total").value(&[], load(&c.commits));
        f!("dfs_checkpoints_total").value(&[], load(&c.checkpoints));
        f!("dfs_device_syncs_total").value(&[], load(&c.device_syncs));
        f!("dfs_metadata_operations_total").value(&[], load(&c.ops));
        f!("dfs_fragments_written_total").value(&[], load(&c.fragments_written));
        f!("dfs_fragments_read_total").value(&[], load(&c.fragments_read));
        for s in &fuse {
            f!("dfs_fuse_requests_total").value(&[("op", s.op)], s.requests as f64);
            f!("dfs_fuse_request_errors_total").value(&[("op", s.op)], s.errors as f64);
            f!("dfs_fuse_request_duration_seconds").histogram(&[("op", s.op)], &s.latency);
        }
        f!("dfs_fuse_requests_in_flight").value(&[], super::fuse::in_flight() as f64);
        let inv = health::inventory(pool);
        f!("dfs_open_files").value(&[], inv.open_files as f64);
        for (k, n) in inv.inodes_by_kind {
            f!("dfs_inodes").value(&[("kind", k)], n as f64);
        }
        fams.into_iter().map(|f| f.mf).collect()
    }

    fn scrub(&self, fams: &mut [Family], get: &mut dyn FnMut(&str) -> usize, h: &health::Health) {
        let ns = |t: i64| t as f64 / 1e9;
        if let Some(d) = &h.scrub_daemon {
            use crate::engine::scrub_daemon::DaemonState;
            for (name, st) in
                [("idle", DaemonState::Idle), ("running", DaemonState::Running), ("paused", DaemonState::Paused)]
            {
                fams[get("dfs_scrub_daemon_state")].value(&[("state", name)], if d.state == st { 1.0 } else { 0.0 });
            }
            fams[get("dfs_scrub_rate_bytes_per_second")].value(&[], d.rate_bytes_per_sec as f64);
            fams[get("dfs_scrub_unrepairable_extents")].value(&[], d.unrepairable as f64);
            fams[get("dfs_scrub_passes_total")].value(&[], d.passes_completed as f64);
        }
        let Some(s) = &h.last_scrub else { return };
        fams[get("dfs_scrub_pass_running")].value(&[], if s.result == "running" { 1.0 } else { 0.0 });
        fams[get("dfs_scrub_pass_extents")].value(&[], s.extents as f64);
        fams[get("dfs_scrub_pass_bytes")].value(&[], s.bytes as f64);
        fams[get("dfs_scrub_pass_errors")].value(&[], s.errors as f64);
        fams[get("dfs_scrub_pass_repaired_fragments")].value(&[], s.repaired as f64);
        fams[get("dfs_scrub_last_start_timestamp_seconds")].value(&[], ns(s.started_ns));
        if s.finished_ns > 0 {
            fams[get("dfs_scrub_last_finish_timestamp_seconds")].value(&[], ns(s.finished_ns));
        }
    }

    fn member_io(&self, fams: &mut [Family], get: &mut dyn FnMut(&str) -> usize, idx: &str, io: &IoStats) {
        let dirs: [(&str, &DirStats); 3] = [("read", &io.read), ("write", &io.write), ("sync", &io.sync)];
        for (dir, d) in dirs {
            let l = [("member", idx), ("direction", dir)];
            if dir != "sync" {
                fams[get("dfs_device_io_bytes_total")].value(&l, d.bytes.load(Ordering::Relaxed) as f64);
            }
            fams[get("dfs_device_io_operations_total")].value(&l, d.ops.load(Ordering::Relaxed) as f64);
            fams[get("dfs_device_io_errors_total")].value(&l, d.errors.load(Ordering::Relaxed) as f64);
            fams[get("dfs_device_io_duration_seconds")].histogram(&l, &d.latency.snapshot());
        }
    }
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families()
    }
}

fn pool_label(pool: &Pool) -> String {
    pool.meta().state.config.label.clone()
}
