//! Observability of a mounted pool (issue #10): a pool of four loop
//! devices (direct IO, on a disk filesystem), its devices metered, mounted
//! through the library in a background session with a scrub daemon, its
//! `/metrics` and `/health` served on a loopback port, and every log line
//! captured as JSON. Traffic through the mount must move the counters; the
//! temperature split must cover every extent; failing a member must turn
//! `/health` to 503 and a rebuild, then the member's removal, back to 200;
//! a scrub pass must show in `/health` and `/metrics`; a FUSE write's log
//! line and the engine's lines for it must carry the same request id, the
//! lines of its write-behind fragment writes on the IO worker threads too.
//!
//! The mount is a `BackgroundMount` (unmounted on drop, also on panic),
//! declared after the loop devices so it goes first, and the loop devices
//! detach on drop. Needs root, /dev/fuse and loop devices for the mounted
//! test (skips with a message otherwise); the engine-only test runs
//! anywhere.

mod common;
mod fuse_util;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::observe::{assert_temperature_split_covers_extents, health, promtool_check, scrape, wait_until};
use common::LoopDevice;
use dynamicfs::device::{Device, MemDevice};
use dynamicfs::engine::scrub_daemon::{DaemonState, Intensity, ScrubDaemon};
use dynamicfs::engine::state::MemberState;
use dynamicfs::engine::{Pool, PoolOptions};
use dynamicfs::metrics::text;
use dynamicfs::metrics::{self, http, MetricsServer, PoolMetrics};
use fuse_util::{fuse_available, pattern, Fixture, MIB};

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
            .with_thread_names(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new("dynamicfs=debug"))
            .with_writer(|| LogWriter)
            .init();
    });
}

fn log_lines() -> Vec<serde_json::Value> {
    let raw = LOG.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&raw).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
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

fn problems(h: &serde_json::Value) -> Vec<(String, String, String)> {
    h["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (s("severity"), s("what"), s("suggestion"))
        })
        .collect()
}

#[test]
fn mounted_pool_metrics_health_scrub_and_request_ids() {
    if !fuse_available() || !common::require_root_and_loop() {
        return;
    }
    capture_logs();
    let loops: Vec<LoopDevice> = (0..4).map(|_| LoopDevice::new(128 << 20).expect("loop device")).collect();
    let fx = Fixture::on(loops.iter().map(|l| l.path().to_path_buf()).collect(), Some("replication:3"));
    let (devs, meters) = metrics::meter_devices(fx.devices(0, false));
    let pool = fx.open_pool(devs, false);
    let pm = Arc::new(PoolMetrics::new(pool.clone(), meters).expect("metrics"));
    let scrubd = Arc::new(ScrubDaemon::new(pool.clone()));
    pm.live().set_scrub_daemon(&scrubd);
    let mnt = fx.mnt();
    pm.set_pool_arg(&mnt.display().to_string());
    let server = MetricsServer::start("127.0.0.1:0", pm.clone()).expect("listen");
    let addr = server.addr().to_string();
    let mount = fx.mount_pool(&pool, 0, false);

    let before = scrape(&addr);
    let (status, h) = health(&addr);
    assert_eq!((status, h["state"].as_str()), (200, Some("ok")), "{h}");
    assert!(h["last_scrub"].is_null(), "{h}");
    assert_eq!(h["scrub_daemon"]["state"], "idle", "{h}");
    assert_eq!(http::get(&addr, "/nope", Duration::from_secs(5)).unwrap().0, 404);

    // Traffic: 8 MiB written and fsynced, then read back.
    let data = pattern(8 * MIB, 7);
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
    assert!(grew("dfs_fuse_requests_total", &[("op", "write")]) >= 8.0, "FUSE writes not counted");
    assert!(grew("dfs_fuse_requests_total", &[("op", "read")]) >= 1.0, "FUSE reads not counted");
    assert!(grew("dfs_fuse_requests_total", &[("op", "fsync")]) >= 1.0, "fsync not counted");
    assert!(
        grew("dfs_fuse_request_duration_seconds_count", &[("op", "write")])
            == grew("dfs_fuse_requests_total", &[("op", "write")]),
        "every write request is timed once"
    );
    // Three replicas of 8 MiB reached the devices (plus headers and metadata).
    let written = grew("dfs_device_io_bytes_total", &[("direction", "write")]);
    assert!(written >= (24 * MIB) as f64, "device write bytes grew by {written}");
    assert!(grew("dfs_device_io_operations_total", &[("direction", "sync")]) >= 1.0);
    assert!(grew("dfs_journal_commits_total", &[]) >= 1.0, "the fsync committed");
    assert!(grew("dfs_device_syncs_total", &[]) >= 1.0);
    assert_eq!(after.value("dfs_extents", &[("policy", "replication:3")]), Some(8.0));
    assert_eq!(after.value("dfs_extent_bytes", &[("policy", "replication:3")]), Some((8 * MIB) as f64));
    assert_eq!(after.value("dfs_member_state", &[("member", "1"), ("state", "online")]), Some(1.0));
    assert_eq!(after.value("dfs_degraded_extents", &[]), Some(0.0));
    assert_eq!(after.value("dfs_health_state", &[("state", "ok")]), Some(1.0));
    assert!(after.value("dfs_build_info", &[]).is_some() && after.value("dfs_uptime_seconds", &[]).is_some());
    assert!(after.types.get("dfs_device_io_duration_seconds").is_some_and(|t| t == "histogram"));
    assert_temperature_split_covers_extents(&after);
    assert_eq!(after.value("dfs_scrub_daemon_state", &[("state", "idle")]), Some(1.0));
    assert!(after.value("dfs_scrub_pass_extents", &[]).is_none(), "no scrub yet");
    // The file is closed: nothing is open through the mount.
    assert_eq!(after.value("dfs_open_files", &[]), Some(0.0));
    let held = File::open(&path).unwrap();
    assert_eq!(scrape(&addr).value("dfs_open_files", &[]), Some(1.0), "an open file is counted");
    drop(held);
    let (_, h) = health(&addr);
    let split: u64 = ["hot", "warm", "cold"].iter().map(|c| h["temperature"][c]["extents"].as_u64().unwrap()).sum();
    assert_eq!(split, 8, "{h}");
    let never = problems(&h).into_iter().find(|p| p.1.contains("never been scrubbed")).expect("scrub never run");
    assert_eq!(never.0, "ok", "an unscrubbed pool is still healthy");
    assert!(never.2.contains("dfs scrub-daemon start --pool"), "{never:?}");

    // A scrub pass: shown as a job while it runs, then as the last scrub.
    scrubd.start(Some(Intensity::Low)).expect("scrub start");
    if scrubd.pause().is_ok() {
        let (_, h) = health(&addr);
        let jobs = h["running_jobs"].as_array().unwrap();
        assert!(jobs.iter().any(|j| j["kind"] == "scrub" && j["total"] == 8), "{h}");
        assert_eq!(scrape(&addr).value("dfs_jobs_running", &[("kind", "scrub")]), Some(1.0));
        scrubd.resume().expect("scrub resume");
    }
    wait_until(60, "the scrub pass to end", || {
        let s = scrubd.status();
        (s.state == DaemonState::Idle && s.passes_completed >= 1).then_some(())
    });
    let (status, h) = health(&addr);
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["last_scrub"]["result"], "clean", "{h}");
    assert_eq!(h["last_scrub"]["extents"], 8, "{h}");
    assert!(h["last_scrub"]["finished_ns"].as_i64().unwrap() > 0, "{h}");
    assert!(!problems(&h).iter().any(|p| p.1.contains("never been scrubbed")), "{h}");
    let m = scrape(&addr);
    assert_eq!(m.value("dfs_scrub_pass_extents", &[]), Some(8.0));
    assert_eq!(m.value("dfs_scrub_pass_errors", &[]), Some(0.0));
    assert_eq!(m.value("dfs_scrub_pass_running", &[]), Some(0.0));
    assert_eq!(m.value("dfs_scrub_passes_total", &[]), Some(1.0));
    assert!(m.value("dfs_scrub_pass_bytes", &[]).unwrap() >= (24 * MIB) as f64, "every replica was read");
    assert!(m.value("dfs_scrub_last_finish_timestamp_seconds", &[]).unwrap() > 1.7e9);

    // A member fails: 503 and degraded, reads still right.
    pool.set_member_state(1, MemberState::Failed).expect("fail member 1");
    let (status, h) = health(&addr);
    assert_eq!((status, h["state"].as_str()), (503, Some("degraded")), "{h}");
    let degraded = h["degraded_extents"].as_u64().unwrap();
    assert!(degraded > 0, "{h}");
    let failed = problems(&h).into_iter().find(|p| p.1.contains("member 1")).expect("a problem names member 1");
    assert_eq!(failed.0, "degraded");
    assert!(failed.2.contains(&format!("dfs rebuild --pool {}", mnt.display())), "{failed:?}");
    let m = scrape(&addr);
    assert_eq!(m.value("dfs_member_state", &[("member", "1"), ("state", "failed")]), Some(1.0));
    assert_eq!(m.value("dfs_degraded_extents", &[]), Some(degraded as f64));
    assert_eq!(m.value("dfs_health_state", &[("state", "degraded")]), Some(1.0));

    // Repair: a rebuild re-protects the extents on the other members: 200.
    // (Before any read: a read of a degraded extent repairs it lazily.)
    let io = pool.rebuild_all(usize::MAX).expect("rebuild");
    assert_eq!(io.extents, degraded);
    let (status, h) = health(&addr);
    assert_eq!((status, h["state"].as_str()), (200, Some("ok")), "{h}");
    assert_eq!(h["degraded_extents"], 0, "{h}");
    let left = problems(&h).into_iter().find(|p| p.1.contains("member 1")).expect("member 1 still reported");
    assert_eq!(left.0, "ok", "{left:?}");
    assert!(left.2.contains("dfs remove-disk"), "{left:?}");
    let m = scrape(&addr);
    let reads = m.sum("dfs_fuse_requests_total", &[("op", "read")]);
    assert!(read_uncached(&path) == data);
    assert!(scrape(&addr).sum("dfs_fuse_requests_total", &[("op", "read")]) > reads, "the read went to the engine");
    // Then it leaves the pool: still 200, no problem about it.
    pool.start_removal(1).expect("start removal");
    wait_until(30, "member 1 to leave", || pool.drain_step(1, 256).expect("drain").1.removed.then_some(()));
    let (status, h) = health(&addr);
    assert_eq!((status, h["state"].as_str()), (200, Some("ok")), "{h}");
    assert!(!problems(&h).iter().any(|p| p.1.contains("member 1")), "{h}");
    let m = scrape(&addr);
    assert_eq!(m.value("dfs_member_state", &[("member", "1"), ("state", "removed")]), Some(1.0));
    assert_temperature_split_covers_extents(&m);
    assert!(read_uncached(&path) == data);

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
    // Write-behind: the fragment writes run on the IO worker threads, and
    // their lines carry the id of the FUSE write that sent the extent.
    let on_workers: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["fields"]["message"] == "fragment written" && l["threadName"] == "dfs-io").collect();
    assert!(!on_workers.is_empty(), "no fragment write logged on a worker thread");
    assert!(
        on_workers.iter().any(|l| l["span"]["op"] == "write" && req_of(l).is_some_and(|r| fuse_writes.contains(&r))),
        "no worker's fragment write carries the id of a FUSE write: {:?}",
        on_workers.iter().take(3).collect::<Vec<_>>()
    );
    // A request id never spans two requests.
    let mut ops = std::collections::HashMap::new();
    for l in lines.iter().filter(|l| l["span"]["name"] == "fuse") {
        if let (Some(r), Some(op)) = (req_of(l), l["span"]["op"].as_str()) {
            assert_eq!(*ops.entry(r).or_insert(op.to_string()), op, "request id {r} on two operations");
        }
    }

    mount.unmount().expect("unmount");
    drop(server);
    scrubd.shutdown();
    drop(scrubd);
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
    assert!(pm.health().last_scrub.is_none() && pm.health().scrub_daemon.is_none(), "unmounted: no scrub");
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
    assert_temperature_split_covers_extents(&after);

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
