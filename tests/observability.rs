//! Observability of a mounted pool (issue #10): a pool of three image files
//! (on a disk filesystem, for O_DIRECT), its devices metered, mounted
//! through the library in a background session, its `/metrics` and
//! `/health` served on a loopback port, and every log line captured as
//! JSON. Traffic through the mount must move the counters; failing a member
//! must turn `/health` to 503 and bringing it back to 200; a FUSE write's
//! log line and the engine's lines for it must carry the same request id.
//!
//! The mount is a `BackgroundMount` (unmounted on drop, also on panic),
//! declared after the temp dir so it goes first. Needs root and /dev/fuse
//! for the mounted test (skips with a message otherwise); the engine-only
//! test runs anywhere.

// Only `disk_tempdir` is used here.
#[allow(unused_imports)]
mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dynamicfs::device::{Device, MemDevice};
use dynamicfs::discover::{find_members, open_members, DiscoverOptions, PoolSource};
use dynamicfs::engine::state::MemberState;
use dynamicfs::engine::{Pool, PoolOptions};
use dynamicfs::fuse::MountConfig;
use dynamicfs::metrics::text::{self, Exposition};
use dynamicfs::metrics::{self, http, MetricsServer, PoolMetrics};
use dynamicfs::mkfs::{format_pool, MemberSpec, MkfsOptions};

const MIB: usize = 1 << 20;

/// Every log line of this test binary (JSON objects, one per line).
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the JSON subscriber once for the whole binary (the same
/// configuration `dynamicfs::logging::init` builds for files).
fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new("dynamicfs=debug"))
            .with_writer(|| LogWriter)
            .init();
    });
}

fn log_lines() -> Vec<serde_json::Value> {
    let raw = LOG.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&raw).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn fuse_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && Path::new("/dev/fuse").exists();
    if !ok {
        eprintln!("skipping: needs root and /dev/fuse");
    }
    ok
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

/// Scrape `/metrics`, check it with the in-test parser and, when
/// installed, `promtool check metrics`.
fn scrape(addr: &str) -> Exposition {
    let (status, body) = http::get(addr, "/metrics", Duration::from_secs(10)).expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    let e = text::parse(&body).unwrap_or_else(|err| panic!("/metrics does not parse: {err}\n{body}"));
    for s in &e.samples {
        assert!(s.name.starts_with("dfs_"), "{} lacks the dfs_ prefix", s.name);
    }
    promtool_check(&body);
    e
}

fn promtool_check(body: &str) {
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: the in-test parser is the check");
        return;
    };
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}");
}

/// Read the whole file through FUSE, not the page cache: drop the file's
/// clean cached pages first (only this file's).
fn read_uncached(path: &Path) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut f = File::open(path).unwrap();
    // SAFETY: fadvise on an fd we own.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise");
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    back
}

fn health(addr: &str) -> (u16, serde_json::Value) {
    let (status, body) = http::get(addr, "/health", Duration::from_secs(10)).expect("GET /health");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health is not JSON ({e}): {body}")))
}

#[test]
fn mounted_pool_metrics_health_and_request_ids() {
    if !fuse_available() {
        return;
    }
    capture_logs();
    let dir = common::disk_tempdir();
    let mut images = Vec::new();
    for i in 0..3 {
        let p = dir.path().join(format!("m{i}.img"));
        File::create(&p).unwrap().set_len(96 << 20).unwrap();
        images.push(p);
    }
    let specs: Vec<MemberSpec> = images.iter().map(|p| MemberSpec::Device(p.clone())).collect();
    format_pool(&specs, &MkfsOptions { label: "obs-test".into(), ..Default::default() }).expect("mkfs");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();

    let opts = DiscoverOptions { extra: images[1..].to_vec(), scan_block_devices: false, use_path_hints: true };
    let found = find_members(&PoolSource::Member(images[0].clone()), &opts).expect("discover");
    let (devs, meters) = metrics::meter_devices(open_members(&found, false).expect("open members"));
    let pool = Pool::open(devs, PoolOptions { lock_dir: Some(dir.path().join("locks")), ..Default::default() })
        .expect("open pool");
    let pool = Arc::new(pool);
    let pm = Arc::new(PoolMetrics::new(pool.clone(), meters).expect("metrics"));
    let server = MetricsServer::start("127.0.0.1:0", pm.clone()).expect("listen");
    let addr = server.addr().to_string();
    let cfg = MountConfig { allow_other: true, source: images[0].display().to_string(), ..Default::default() };
    let mount = dynamicfs::fuse::mount(pool.clone(), &mnt, &cfg).expect("mount").spawn().expect("spawn");

    let before = scrape(&addr);
    let (status, h) = health(&addr);
    assert_eq!((status, h["state"].as_str()), (200, Some("ok")), "{h}");
    assert!(h["last_scrub"].is_null() && h["scrub_daemon"].is_null(), "{h}");
    assert_eq!(http::get(&addr, "/nope", Duration::from_secs(5)).unwrap().0, 404);

    // Traffic: 3 MiB written and fsynced, then read back.
    let data = pattern(3 * MIB, 7);
    let path: PathBuf = mnt.join("f");
    {
        let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&path).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let back = read_uncached(&path);
    assert!(back == data, "bytes read back differ from bytes written");

    let after = scrape(&addr);
    let grew = |name: &str, l: &[(&str, &str)]| after.sum(name, l) - before.sum(name, l);
    assert!(grew("dfs_fuse_requests_total", &[("op", "write")]) >= 3.0, "FUSE writes not counted");
    assert!(grew("dfs_fuse_requests_total", &[("op", "read")]) >= 1.0, "FUSE reads not counted");
    assert!(grew("dfs_fuse_requests_total", &[("op", "fsync")]) >= 1.0, "fsync not counted");
    assert!(
        grew("dfs_fuse_request_duration_seconds_count", &[("op", "write")])
            == grew("dfs_fuse_requests_total", &[("op", "write")]),
        "every write request is timed once"
    );
    // Three replicas of 3 MiB reached the devices (plus headers and metadata).
    let written = grew("dfs_device_io_bytes_total", &[("direction", "write")]);
    assert!(written >= (9 * MIB) as f64, "device write bytes grew by {written}");
    assert!(grew("dfs_device_io_operations_total", &[("direction", "sync")]) >= 1.0);
    assert!(grew("dfs_journal_commits_total", &[]) >= 1.0, "the fsync committed");
    assert!(grew("dfs_device_syncs_total", &[]) >= 1.0);
    assert_eq!(after.value("dfs_extents", &[("policy", "replication:3")]), Some(3.0));
    assert_eq!(after.value("dfs_extent_bytes", &[("policy", "replication:3")]), Some((3 * MIB) as f64));
    assert_eq!(after.value("dfs_member_state", &[("member", "1"), ("state", "online")]), Some(1.0));
    assert_eq!(after.value("dfs_degraded_extents", &[]), Some(0.0));
    assert_eq!(after.value("dfs_health_state", &[("state", "ok")]), Some(1.0));
    assert!(after.value("dfs_build_info", &[]).is_some() && after.value("dfs_uptime_seconds", &[]).is_some());
    assert!(after.types.get("dfs_device_io_duration_seconds").is_some_and(|t| t == "histogram"));
    // The file is closed: nothing is open through the mount.
    assert_eq!(after.value("dfs_open_files", &[]), Some(0.0));
    let held = File::open(&path).unwrap();
    assert_eq!(scrape(&addr).value("dfs_open_files", &[]), Some(1.0), "an open file is counted");
    drop(held);

    // A member fails: 503 and degraded; it comes back: 200 and ok.
    pool.set_member_state(1, MemberState::Failed).expect("fail member 1");
    let (status, h) = health(&addr);
    assert_eq!((status, h["state"].as_str()), (503, Some("degraded")), "{h}");
    assert_eq!(h["degraded_extents"], 3, "{h}");
    assert!(
        h["problems"].as_array().unwrap().iter().any(|p| p["suggestion"].as_str().unwrap().contains("dfs ")),
        "{h}"
    );
    let m = scrape(&addr);
    assert_eq!(m.value("dfs_member_state", &[("member", "1"), ("state", "failed")]), Some(1.0));
    assert_eq!(m.value("dfs_degraded_extents", &[]), Some(3.0));
    assert_eq!(m.value("dfs_health_state", &[("state", "degraded")]), Some(1.0));
    // Reads still return the right bytes while degraded.
    let reads = scrape(&addr).sum("dfs_fuse_requests_total", &[("op", "read")]);
    let back = read_uncached(&path);
    assert!(back == data);
    assert!(
        scrape(&addr).sum("dfs_fuse_requests_total", &[("op", "read")]) > reads,
        "the degraded read went to the engine"
    );
    pool.set_member_state(1, MemberState::Online).expect("member 1 back");
    let (status, h) = health(&addr);
    assert_eq!((status, h["state"].as_str()), (200, Some("ok")), "{h}");

    // The request id of a FUSE write is on the engine's lines for it.
    let lines = log_lines();
    let req_of = |l: &serde_json::Value| l["span"]["req"].as_u64();
    let fuse_writes: Vec<u64> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "fuse request done" && l["span"]["op"] == "write")
        .filter_map(req_of)
        .collect();
    assert!(!fuse_writes.is_empty(), "no FUSE write line logged");
    for req in &fuse_writes {
        let engine = lines
            .iter()
            .filter(|l| req_of(l) == Some(*req))
            .filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with("dynamicfs::engine")))
            .count();
        assert!(engine >= 1, "no engine line carries the request id {req} of a FUSE write");
    }
    // A request id never spans two requests.
    let mut ops = std::collections::HashMap::new();
    for l in lines.iter().filter(|l| l["span"]["name"] == "fuse") {
        if let (Some(r), Some(op)) = (req_of(l), l["span"]["op"].as_str()) {
            assert_eq!(*ops.entry(r).or_insert(op.to_string()), op, "request id {r} on two operations");
        }
    }

    drop(server);
    mount.unmount().expect("unmount");
    // The metrics hold the pool too: drop them so the pool can be closed.
    drop(pm);
    let pool = Arc::try_unwrap(pool).map_err(|_| "the pool is still shared").unwrap();
    pool.close().expect("close");
}

/// Without FUSE: an engine-only pool on memory devices, metered. Counters
/// move with writes, /health follows the member state, and the control
/// entry point answers the same figures.
#[test]
fn engine_metrics_and_control_answers() {
    let devs: Vec<Arc<MemDevice>> = (0..3).map(|_| Arc::new(MemDevice::new(64 << 20, 4096))).collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
    dynamicfs::mkfs::format_devices(&refs, "mem", "replication:2".parse().unwrap()).expect("mkfs");
    let (devs, meters) = metrics::meter_devices(devs.into_iter().map(|d| d as Arc<dyn Device>).collect());
    let pool = Arc::new(Pool::open(devs, PoolOptions { no_lock: true, ..Default::default() }).expect("open"));
    let pm = PoolMetrics::new(pool.clone(), meters).unwrap();
    let parse = || text::parse(&pm.render_text().unwrap()).unwrap();
    let before = parse();
    let (ino, _) =
        pool.create(dynamicfs::engine::ROOT_INO, b"f", dynamicfs::engine::FileKind::File, 0o644, 0, 0, 0).unwrap();
    pool.write(ino, 0, &pattern(2 * MIB + 5, 1)).unwrap();
    pool.fsync(ino).unwrap();
    let after = parse();
    let grew = |n: &str, l: &[(&str, &str)]| after.sum(n, l) - before.sum(n, l);
    assert!(grew("dfs_device_io_bytes_total", &[("direction", "write")]) >= (2 * (2 * MIB + 5)) as f64);
    assert!(grew("dfs_fragments_written_total", &[]) >= 6.0);
    assert_eq!(after.value("dfs_extents", &[("policy", "replication:2")]), Some(3.0));
    assert_eq!(after.value("dfs_extent_bytes", &[("policy", "replication:2")]), Some((2 * MIB + 5) as f64));

    let h = metrics::handle_control(&pm, "health", serde_json::Value::Null).unwrap();
    assert_eq!(h["state"], "ok");
    pool.set_member_state(0, MemberState::Failed).unwrap();
    assert_eq!(pm.health().http_status(), 503);
    let h = metrics::handle_control(&pm, "health", serde_json::Value::Null).unwrap();
    assert_eq!(h["state"], "degraded", "{h}");
    let t = metrics::handle_control(&pm, "metrics.text", serde_json::Value::Null).unwrap();
    let e = text::parse(t["text"].as_str().unwrap()).unwrap();
    assert_eq!(e.value("dfs_member_state", &[("member", "0"), ("state", "failed")]), Some(1.0));
    assert!(metrics::handle_control(&pm, "bogus", serde_json::Value::Null).is_err());
    let v = metrics::handle_control(&pm, "metrics.values", serde_json::Value::Null).unwrap();
    assert!(v["samples"].as_array().unwrap().iter().any(|s| s["name"] == "dfs_degraded_extents"));
    promtool_check(&pm.render_text().unwrap());
}
