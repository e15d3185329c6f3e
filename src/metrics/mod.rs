//! # Observability: metrics, health, request ids
//!
//! Owns what a pool tells the outside about itself:
//!
//! - [`PoolMetrics`]: a per-pool Prometheus `Registry` (never the global
//!   default, so several pools in one process never collide) holding one
//!   [`collector::PoolCollector`] that builds every family at scrape time
//!   from the engine's own counters and tables.
//! - [`IoMeters`]: the per-device counters of `device::metered::MeteredDevice`,
//!   attached by [`meter_devices`] before `Pool::open`, matched to member
//!   indexes at scrape time by device identity.
//! - [`health`]: the ok / degraded / failed verdict with its problems.
//! - [`http`]: the `/metrics` and `/health` endpoint; [`text`]: a parser of
//!   the exposition format; [`fuse`]: FUSE request accounting and the
//!   request-id span guard.
//! - [`handle_control`]: the same answers for the control socket.
//!
//! It must never change the pool (no writes, no state changes, no repair)
//! and never sit in the IO path beyond the metered wrapper's atomics.

pub mod collector;
pub mod fuse;
pub mod health;
pub mod http;
pub mod text;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::device::metered::{IoStats, MeteredDevice};
use crate::device::{Device, DeviceIdentity};
use crate::engine::Pool;

pub use health::{Health, HealthState, Live};
pub use http::{MetricsServer, Source};

/// Errors of the metrics layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    #[error("metrics registry: {0}")]
    Registry(String),
    #[error("metrics endpoint {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("metrics endpoint http://{addr}: {reason}")]
    Fetch { addr: String, reason: String },
    #[error("unknown control method {0:?} (known: metrics.text, metrics.values, health)")]
    UnknownMethod(String),
}

/// The IO counters of metered devices, by device identity.
#[derive(Debug, Clone, Default)]
pub struct IoMeters(Arc<Vec<(DeviceIdentity, Arc<IoStats>)>>);

impl IoMeters {
    /// The counters of the device with this identity.
    pub fn for_identity(&self, id: &DeviceIdentity) -> Option<Arc<IoStats>> {
        self.0.iter().find(|(i, _)| i == id).map(|(_, s)| s.clone())
    }

    /// Every metered device.
    pub fn all(&self) -> impl Iterator<Item = &(DeviceIdentity, Arc<IoStats>)> {
        self.0.iter()
    }
}

/// Wrap every device in a [`MeteredDevice`]; give the wrapped devices to
/// `Pool::open` and the meters to [`PoolMetrics::new`].
pub fn meter_devices(devs: Vec<Arc<dyn Device>>) -> (Vec<Arc<dyn Device>>, IoMeters) {
    let mut out = Vec::with_capacity(devs.len());
    let mut meters = Vec::with_capacity(devs.len());
    for d in devs {
        let id = d.identity().clone();
        let (w, s) = MeteredDevice::wrap(d);
        out.push(w);
        meters.push((id, s));
    }
    (out, IoMeters(Arc::new(meters)))
}

/// A fresh request id: 16 hex digits, unique in this process and unlikely
/// to repeat across processes (time-seeded). FUSE requests use the kernel's
/// unique id instead.
pub fn new_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        (t as u64) ^ ((std::process::id() as u64) << 40)
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// The metrics of one opened pool.
pub struct PoolMetrics {
    registry: prometheus::Registry,
    pool: Arc<Pool>,
    live: Arc<Live>,
    /// How suggested commands name the pool (default `UUID=<uuid>`).
    pool_arg: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMetrics").field("pool", &self.pool.uuid()).finish()
    }
}

impl PoolMetrics {
    /// Metrics of `pool`, whose devices' counters are `io` (empty if the
    /// devices were not metered: the IO families are then left out).
    pub fn new(pool: Arc<Pool>, io: IoMeters) -> Result<PoolMetrics, MetricsError> {
        let registry = prometheus::Registry::new();
        let live = Arc::new(Live::default());
        registry
            .register(Box::new(collector::PoolCollector::new(pool.clone(), io, live.clone())))
            .map_err(|e| MetricsError::Registry(e.to_string()))?;
        Ok(PoolMetrics { registry, pool, live, pool_arg: Default::default() })
    }

    /// The mount's background work reported with the pool (set by the
    /// mount: `live().set_scrub_daemon(..)`, `live().set_worker(..)`).
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Name the pool this way in suggested commands (a mount gives its
    /// mount point); once, later calls are ignored.
    pub fn set_pool_arg(&self, arg: &str) {
        let _ = self.pool_arg.set(arg.to_string());
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The registry (to add metrics of other parts).
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// Every metric in the text exposition format.
    pub fn render_text(&self) -> Result<String, MetricsError> {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .map_err(|e| MetricsError::Registry(e.to_string()))
    }

    /// The health report.
    pub fn health(&self) -> Health {
        let arg = self.pool_arg.get().cloned().unwrap_or_else(|| format!("UUID={}", self.pool.uuid()));
        health::check_live(&self.pool, &arg, &self.live)
    }
}

/// Answer a control-socket request (wired by the control socket's
/// dispatcher, which has entered the request's span): `metrics.text` → `{"text": "..."}`; `metrics.values` →
/// `{"samples": [{"name", "labels", "value"}]}`; `health` → the health
/// report. `params` is unused for now.
pub fn handle_control(
    metrics: &PoolMetrics,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, MetricsError> {
    let _ = params;
    match method {
        "metrics.text" => Ok(serde_json::json!({ "text": metrics.render_text()? })),
        "metrics.values" => {
            let text = metrics.render_text()?;
            let e = text::parse(&text).map_err(|e| MetricsError::Registry(format!("own output: {e}")))?;
            Ok(samples_json(&e))
        }
        "health" => serde_json::to_value(metrics.health()).map_err(|e| MetricsError::Registry(e.to_string())),
        other => Err(MetricsError::UnknownMethod(other.to_string())),
    }
}

/// Samples as JSON: `{"samples": [{"name", "labels", "value"}]}` (NaN and
/// infinities as strings).
pub fn samples_json(e: &text::Exposition) -> serde_json::Value {
    let samples: Vec<serde_json::Value> = e
        .samples
        .iter()
        .map(|s| {
            let v =
                if s.value.is_finite() { serde_json::json!(s.value) } else { serde_json::json!(s.value.to_string()) };
            serde_json::json!({ "name": s.name, "labels": s.labels, "value": v })
        })
        .collect();
    serde_json::json!({ "samples": samples })
}
