//! `dfs health`, `dfs metrics` and `dfs metrics-server`.
//!
//! - `dfs health --pool P [--endpoint ADDR:PORT] [--json]`: the verdict
//!   (ok / degraded / failed) and every problem with a suggested command.
//!   Exit status 0 when ok, 1 when degraded or failed (or on error), so
//!   scripts can test it.
//! - `dfs metrics --pool P [--endpoint ADDR:PORT] [--json]`: the current
//!   value of every metric, one `name{labels} value` per line.
//! - `dfs metrics-server --pool P [--port N] [--listen ADDR:PORT]`: serve
//!   `/metrics` and `/health` for a pool that is not mounted (or not
//!   serving them itself), until killed.
//!
//! With `--endpoint`, health and metrics are read from a mount's endpoint
//! (`-o metrics=ADDR:PORT`): live figures. Without it the pool is opened
//! read-only and shared, as `dfs status` does: the durable state, and no
//! IO or FUSE counters. This module only reads; it never changes a pool.

use std::sync::Arc;
use std::time::Duration;

use dynamicfs::discover::{find_members, open_members, DiscoverOptions, PoolSource};
use dynamicfs::engine::{Pool, PoolOptions};
use dynamicfs::metrics::{self, http, text, Health, HealthState, MetricsServer, PoolMetrics};

/// How long an endpoint may take to answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Open the pool `arg` names read-only and shared, its devices metered.
pub fn open_metered(arg: &str) -> Result<(Arc<Pool>, metrics::IoMeters), String> {
    let source = PoolSource::parse(arg).map_err(|e| e.to_string())?;
    let found = find_members(&source, &DiscoverOptions::default()).map_err(|e| e.to_string())?;
    let devs = open_members(&found, true).map_err(|e| e.to_string())?;
    let (devs, meters) = metrics::meter_devices(devs);
    let pool = Pool::open(devs, PoolOptions { read_only: true, ..Default::default() })
        .map_err(|e| format!("pool {}: {e}", found.pool_uuid))?;
    Ok((Arc::new(pool), meters))
}

fn local_metrics(arg: &str) -> Result<PoolMetrics, String> {
    let (pool, meters) = open_metered(arg)?;
    PoolMetrics::new(pool, meters).map_err(|e| e.to_string())
}

/// The health report of `pool` (opened here) or of the endpoint.
pub fn gather_health(pool: &str, endpoint: Option<&str>) -> Result<serde_json::Value, String> {
    match endpoint {
        Some(addr) => {
            let (_, body) = http::get(addr, "/health", FETCH_TIMEOUT).map_err(|e| e.to_string())?;
            serde_json::from_str(&body).map_err(|e| format!("http://{addr}/health: not JSON: {e}"))
        }
        None => {
            let pm = local_metrics(pool)?;
            let h: Health = metrics::health::check(pm.pool(), pool);
            serde_json::to_value(h).map_err(|e| e.to_string())
        }
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
    out.push_str(&format!(
        "Scrub:   last {}, daemon {}\n",
        if h["last_scrub"].is_null() { "never".into() } else { h["last_scrub"].to_string() },
        if h["scrub_daemon"].is_null() { "not running".into() } else { h["scrub_daemon"].to_string() }
    ));
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
        None => local_metrics(pool)?.render_text().map_err(|e| e.to_string())?,
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

/// Serve `/metrics` and `/health` for `pool` on `listen` until killed.
pub fn metrics_server(pool: &str, listen: &str) -> Result<(), String> {
    let pm = Arc::new(local_metrics(pool)?);
    let server = MetricsServer::start(listen, pm).map_err(|e| e.to_string())?;
    eprintln!("dfs: serving http://{}/metrics and /health for {pool} (read-only; Ctrl-C to stop)", server.addr());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
