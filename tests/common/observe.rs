//! Helpers of the observability tests (`tests/observability.rs` and, by
//! `#[path]`, `tools/tests/observability_cli.rs`): scrape `/metrics` and
//! check it with the in-test parser and `promtool check metrics` (when
//! installed; required with `DFS_TEST_REQUIRE_PRIVILEGES=1`), read `/health`, wait for an endpoint to come up, and the
//! sums the tests compare. Only HTTP GETs on loopback: it never touches a
//! pool, a device or a mount.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dynamicfs::metrics::http;
use dynamicfs::metrics::text::{self, Exposition};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Set (to 1) by `scripts/test`: what `scripts/setup-deps` installs must
/// be there, so a check that needs it fails instead of being skipped.
pub const REQUIRE_ENV: &str = "DFS_TEST_REQUIRE_PRIVILEGES";

/// `promtool check metrics` on `body`: it must pass with nothing to say.
/// Without promtool installed the in-test parser is the only check —
/// unless [`REQUIRE_ENV`] is 1, then a missing promtool fails the test.
pub fn promtool_check(body: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") => {
            panic!("promtool: {e}; {REQUIRE_ENV}=1 requires it (scripts/setup-deps installs it: Debian package prometheus)")
        }
        Err(_) => {
            eprintln!("promtool not installed: the in-test parser is the check");
            return;
        }
    };
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}");
}

/// Check an exposition text: it parses, every name has the `dfs_` prefix,
/// and promtool accepts it.
pub fn check_text(body: &str) -> Exposition {
    let e = text::parse(body).unwrap_or_else(|err| panic!("/metrics does not parse: {err}\n{body}"));
    for s in &e.samples {
        assert!(s.name.starts_with("dfs_"), "{} lacks the dfs_ prefix", s.name);
    }
    promtool_check(body);
    e
}

/// GET `/metrics` at `addr` (200 expected), checked by [`check_text`].
pub fn scrape(addr: &str) -> Exposition {
    let (status, body) = http::get(addr, "/metrics", TIMEOUT).expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    check_text(&body)
}

/// GET `/health` at `addr`: the status and the JSON body.
pub fn health(addr: &str) -> (u16, serde_json::Value) {
    let (status, body) = http::get(addr, "/health", TIMEOUT).expect("GET /health");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health is not JSON ({e}): {body}")))
}

/// Wait (at most 20 s) until `addr` answers `/metrics`.
pub fn wait_for_endpoint(addr: &str) {
    let start = Instant::now();
    loop {
        match http::get(addr, "/metrics", Duration::from_secs(5)) {
            Ok(_) => return,
            Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("{addr} never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Poll `f` every 100 ms until it returns Some (at most `secs` seconds).
pub fn wait_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The temperature split must cover every extent exactly once: the
/// `dfs_temperature_extents` series (hot, warm, cold) sum to the
/// `dfs_extents` series, and the bytes likewise.
pub fn assert_temperature_split_covers_extents(e: &Exposition) {
    for class in ["hot", "warm", "cold"] {
        assert!(e.value("dfs_temperature_extents", &[("class", class)]).is_some(), "no {class} series");
    }
    assert_eq!(e.sum("dfs_temperature_extents", &[]), e.sum("dfs_extents", &[]), "temperature split vs extents");
    assert_eq!(e.sum("dfs_temperature_bytes", &[]), e.sum("dfs_extent_bytes", &[]), "temperature split vs bytes");
}
