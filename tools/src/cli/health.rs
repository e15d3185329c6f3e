//! `dfs health`, `dfs metrics` and `dfs metrics-server`.
//!
//! - `dfs health --pool P [--endpoint ADDR:PORT] [--json]`: the verdict
//!   (ok / degraded / failed), temperature split, scrub state, running
//!   jobs, and every problem with a suggested command. Exit status 0 when
//!   ok, 1 when degraded or failed (or on error), so scripts can test it.
//! - `dfs metrics --pool P [--endpoint ADDR:PORT] [--json]`: the current
//!   value of every metric, one `name{labels} value` per line.
//! - `dfs metrics-server --pool P [--port N] [--listen ADDR:PORT]`: serve
//!   `/metrics` and `/health` until killed.
//!
//! Where the figures come from: a mounted pool (P a member, `UUID=` or the
//! mount point) answers through its control socket (`metrics.text`,
//! `health`): live figures, and `metrics-server` then PROXIES the mount,
//! asking it at each request (the pool lock keeps this process from
//! opening the pool). An unmounted pool is opened read-only and shared:
//! its durable state, without IO or FUSE counters. With `--endpoint` they
//! are read from a mount's own HTTP endpoint (`-o metrics=ADDR:PORT`).
//! This module only reads; it never changes a pool.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dynamicfs::control::{Client, ClientError};
use dynamicfs::metrics::health::ScrubSummary;
use dynamicfs::metrics::{http, text, HealthState, MetricsServer, PoolMetrics, Source};
use serde_json::Value;

use super::admin::Target;

/// How long an endpoint may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The metrics of the pool `arg` names: the mount's (true), or the
/// pool's opened here (false).
fn source(arg: &str) -> Result<(Arc<dyn Source>, bool), String> {
    Ok(match Target::open(arg, false)? {
        Target::Mounted { socket, .. } => (Arc::new(MountProxy { socket }), true),
        Target::Local { pool, .. } => {
            let pm = PoolMetrics::new(Arc::new(*pool), Default::default()).map_err(|e| e.to_string())?;
            pm.set_pool_arg(arg);
            (Arc::new(pm), false)
        }
    })
}

/// A mount's metrics and health, asked over its control socket at each
/// request (a new connection each time: a remount is followed).
pub struct MountProxy {
    socket: PathBuf,
}

impl MountProxy {
    fn call(&self, method: &str) -> Result<Value, String> {
        let mut c = Client::connect(&self.socket).map_err(|e| e.to_string())?;
        c.call(method, Value::Null).map_err(|e| match e {
            ClientError::Remote(w) => format!("{}: {method}: {}", self.socket.display(), w.message),
            e => e.to_string(),
        })
    }
}

impl Source for MountProxy {
    fn metrics_text(&self) -> Result<String, String> {
        let v = self.call("metrics.text")?;
        v["text"].as_str().map(String::from).ok_or_else(|| format!("{}: metrics.text: no text", self.socket.display()))
    }

    fn health_json(&self) -> Result<Value, String> {
        self.call("health")
    }
}

/// The health report of `pool` (from its mount, or opened here) or of the endpoint.
pub fn gather_health(pool: &str, endpoint: Option<&str>) -> Result<Value, String> {
    match endpoint {
        Some(addr) => {
            let (_, body) = http::get(addr, "/health", FETCH_TIMEOUT).map_err(|e| e.to_string())?;
            serde_json::from_str(&body).map_err(|e| format!("http://{addr}/health: not JSON: {e}"))
        }
        None => source(pool)?.0.health_json(),
    }
}

/// Human rendering of a health report (as JSON, local or fetched).
pub fn render_health(h: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let mut out = format!("Pool:    {}\nHealth:  {}\n", s(&h["pool_uuid"]), s(&h["state"]).to_uppercase());
    out.push_str(&format!(
        "Extents: {} ({} degraded, {} unreadable, {} lost)\n",
        h["extents"], h["degraded_extents"], h["unreadable_extents"], h["lost_extents"]
    ));
    let last: Option<ScrubSummary> = serde_json::from_value(h["last_scrub"].clone()).ok();
    out.push_str(&format!("Scrub:   {}\n", super::status::scrub_line(last.as_ref())));
    if let Ok(d) = serde_json::from_value::<super::status::DaemonStatus>(h["scrub_daemon"].clone()) {
        out.push_str(&format!("         {}\n", super::status::daemon_line(&d)));
    }
    if let Some(t) = h["temperature"].as_object() {
        let class = |c: &str| {
            let v = &t[c];
            format!("{c} {} ({})", v["extents"], crate::iec(v["bytes"].as_u64().unwrap_or(0)))
        };
        out.push_str(&format!("Temperature: {}, {}, {} extents\n", class("hot"), class("warm"), class("cold")));
    }
    let mut t = crate::Table::new(&["INDEX", "PATH", "STATE", "USED", "FREE"], &[true, false, false, true, true]);
    for m in h["members"].as_array().into_iter().flatten() {
        t.row(vec![
            m["index"].to_string(),
            s(&m["path"]),
            s(&m["state"]),
            crate::iec(m["used_bytes"].as_u64().unwrap_or(0)),
            crate::iec(m["free_bytes"].as_u64().unwrap_or(0)),
        ]);
    }
    out.push_str("\nMembers:\n");
    out.push_str(&t.render(2));
    let jobs = h["running_jobs"].as_array().cloned().unwrap_or_default();
    if !jobs.is_empty() {
        out.push_str("\nRunning jobs:\n");
        for j in jobs {
            out.push_str(&format!(
                "  {} {} on {}: {}/{}\n",
                s(&j["kind"]),
                s(&j["id"]),
                s(&j["scope"]),
                j["done"],
                j["total"]
            ));
        }
    }
    let problems = h["problems"].as_array().cloned().unwrap_or_default();
    if problems.is_empty() {
        out.push_str("\nNo problems found.\n");
    } else {
        out.push_str("\nProblems:\n");
        for p in problems {
            out.push_str(&format!("  [{}] {}\n      -> {}\n", s(&p["severity"]), s(&p["what"]), s(&p["suggestion"])));
        }
    }
    out
}

/// True when the report says ok.
pub fn is_ok(h: &serde_json::Value) -> bool {
    h["state"] == HealthState::Ok.as_str()
}

/// The current metrics of `pool` or of the endpoint, parsed.
pub fn gather_metrics(pool: &str, endpoint: Option<&str>) -> Result<text::Exposition, String> {
    let body = match endpoint {
        Some(addr) => {
            let (status, body) = http::get(addr, "/metrics", FETCH_TIMEOUT).map_err(|e| e.to_string())?;
            if status != 200 {
                return Err(format!("http://{addr}/metrics answered {status}"));
            }
            body
        }
        None => source(pool)?.0.metrics_text()?,
    };
    text::parse(&body).map_err(|e| format!("metrics of {pool}: {e}"))
}
/// `name{labels} value` lines.
pub fn render_metrics(e: &text::Exposition) -> String {
    let mut out = String::new();
    for s in &e.samples {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        if labels.is_empty() {
            out.push_str(&format!("{} {}\n", s.name, s.value));
        } else {
            out.push_str(&format!("{}{{{}}} {}\n", s.name, labels.join(","), s.value));
        }
    }
    out
}

/// Serve `/metrics` and `/health` for `pool` on `listen` until killed:
/// proxied from its mount when mounted, else from the pool opened here.
pub fn metrics_server(pool: &str, listen: &str) -> Result<(), String> {
    let (src, mounted) = source(pool)?;
    let how = if mounted { "proxying the mount's control socket" } else { "read-only" };
    let server = MetricsServer::start(listen, src).map_err(|e| e.to_string())?;
    eprintln!("dfs: serving http://{}/metrics and /health for {pool} ({how}; Ctrl-C to stop)", server.addr());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
