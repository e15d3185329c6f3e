//! The metrics HTTP endpoint (tiny_http): `GET /metrics` (Prometheus text
//! exposition), `GET /health` (JSON, 200 when ok, 503 when degraded or
//! failed), 404 for anything else, 405 for other methods. One thread serves
//! requests one at a time; a scrape takes the pool's `meta` lock only as
//! long as a read of the tables.
//!
//! It serves what a [`Source`] gives — a [`PoolMetrics`] of a pool opened
//! in this process, or (`dfs metrics-server` on a mounted pool) the
//! answers a mount gives over its control socket — and nothing else: it
//! never changes the pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{MetricsError, PoolMetrics};

/// Where the endpoint listens by default (loopback only).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// A running endpoint; stops (and joins its thread) when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer").field("addr", &self.addr).finish()
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

/// What the endpoint serves.
pub trait Source: Send + Sync {
    /// The text exposition of every metric (an error is answered with 502).
    fn metrics_text(&self) -> Result<String, String>;
    /// The health report as JSON (its `state` decides 200 or 503).
    fn health_json(&self) -> Result<serde_json::Value, String>;
}

impl Source for PoolMetrics {
    fn metrics_text(&self) -> Result<String, String> {
        self.render_text().map_err(|e| e.to_string())
    }

    fn health_json(&self) -> Result<serde_json::Value, String> {
        serde_json::to_value(self.health()).map_err(|e| e.to_string())
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// The answer to one request: status, content type, body.
pub fn respond<S: Source + ?Sized>(source: &S, method: &str, path: &str) -> (u16, &'static str, String) {
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET\n".into());
    }
    match path {
        "/metrics" => match source.metrics_text() {
            Ok(t) => (200, "text/plain; version=0.0.4; charset=utf-8", t),
            Err(e) => (502, TEXT, format!("{e}\n")),
        },
        "/health" => match source.health_json() {
            Ok(h) => {
                let status = if h["state"] == super::HealthState::Ok.as_str() { 200 } else { 503 };
                let body = serde_json::to_string_pretty(&h).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}")) + "\n";
                (status, "application/json", body)
            }
            Err(e) => (502, TEXT, format!("{e}\n")),
        },
        _ => (404, TEXT, "not found: try /metrics or /health\n".into()),
    }
}

impl MetricsServer {
    /// Listen on `addr` (`ADDR:PORT`; port 0 picks a free one) and serve
    /// `metrics` on a thread of its own.
    pub fn start<S: Source + ?Sized + 'static>(addr: &str, metrics: Arc<S>) -> Result<MetricsServer, MetricsError> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| MetricsError::Listen { addr: addr.to_string(), reason: e.to_string() })?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| MetricsError::Listen { addr: addr.to_string(), reason: "not an IP socket".into() })?;
        let server = Arc::new(server);
        let srv = server.clone();
        let thread = std::thread::Builder::new()
            .name("dfs-metrics".into())
            .spawn(move || {
                for req in srv.incoming_requests() {
                    let span = tracing::debug_span!("http", req = %super::new_request_id(), path = %req.url());
                    let _e = span.enter();
                    let (status, ctype, body) = respond(metrics.as_ref(), req.method().as_str(), req.url());
                    tracing::debug!(status, "http request");
                    let resp = tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header("Content-Type", ctype));
                    if let Err(e) = req.respond(resp) {
                        tracing::debug!("http response not sent: {e}");
                    }
                }
            })
            .map_err(|e| MetricsError::Listen { addr: addr.to_string(), reason: e.to_string() })?;
        tracing::info!(%bound, "metrics endpoint listening (/metrics, /health)");
        Ok(MetricsServer { server, addr: bound, thread: Some(thread) })
    }

    /// The address bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GET `http://addr/path` with a plain TCP client (for `dfs metrics` and
/// `dfs health` reading a mount's endpoint); returns status and body.
pub fn get(addr: &str, path: &str, timeout: std::time::Duration) -> Result<(u16, String), MetricsError> {
    use std::io::{Read, Write};
    let fail = |reason: String| MetricsError::Fetch { addr: addr.to_string(), reason };
    let sock: SocketAddr = addr.parse().map_err(|e| fail(format!("not ADDR:PORT: {e}")))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, timeout).map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| fail(e.to_string()))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| fail(e.to_string()))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8(raw).map_err(|_| fail("the answer is not UTF-8".into()))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| fail("no HTTP header in the answer".into()))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| fail("no HTTP status in the answer".into()))?;
    Ok((status, body.to_string()))
}
