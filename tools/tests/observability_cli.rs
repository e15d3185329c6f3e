//! `dfs health`, `dfs metrics`, `dfs metrics-server` and `dfs status` run
//! as an operator would: JSON parsed back, exit codes checked, endpoints
//! scraped (and checked by `promtool check metrics` when installed; a
//! missing promtool fails the test when `DFS_TEST_REQUIRE_PRIVILEGES=1`).
//!
//! - On an unmounted pool of image files: the pool is opened read-only.
//! - On a MOUNTED pool of loop devices (the `mount-dfs` daemon): every
//!   command answers from the mount through its control socket, and
//!   `metrics-server` proxies the mount (the pool lock keeps it from
//!   opening the pool): same families as `dfs metrics`, counters moving
//!   with traffic, `/health` mirroring `dfs health`; the temperature split
//!   covers every extent; a scrub pass shows; a failed member turns
//!   `/health` to 503 and adding a disk plus `dfs rebuild` back to 200;
//!   the request id a `dfs` command logs (JSON) is the one the mount logs
//!   its work for it under, engine lines included (`fail-disk`, `scrub`).
//!
//! Child processes are killed by their PID in a drop guard, the mount is
//! unmounted (lazily) by a guard, loop devices detach on drop — also on
//! panic. Shared helpers come from `tests/common` by path.

#[path = "../../tests/common/loopdev.rs"]
#[allow(dead_code)]
mod loopdev;
#[path = "../../tests/common/observe.rs"]
mod observe;
#[path = "../../tests/common/skip.rs"]
mod skip;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use dynamicfs::metrics::{http, text};
use loopdev::{require_root_and_loop, LoopDevice};
use observe::{assert_temperature_split_covers_extents, health, scrape, wait_for_endpoint, wait_until};

const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
const MOUNT: &str = env!("CARGO_BIN_EXE_mount-dfs");
const DFS: &str = env!("CARGO_BIN_EXE_dfs");
const MIB: u64 = 1 << 20;

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("dfs-obs-cli-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

fn stdout_json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}; stderr {}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    })
}

fn ok_json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{:?}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    stdout_json(o)
}

/// Kills the child by its PID when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Unmounts the mount point (lazily) when dropped.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `dfs metrics-server` for `pool` on a free port, answering.
fn metrics_server(pool: &str) -> (Killed, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Killed(Command::new(DFS).args(["metrics-server", "--pool", pool, "--listen", &addr]).spawn().unwrap());
    wait_for_endpoint(&addr);
    (server, addr)
}

/// Run `dfs ARGS` with JSON logs at debug: its request id (every control
/// call it logs carries the same one) and its output.
fn run_logged(args: &[&str]) -> (String, Output) {
    let o =
        Command::new(DFS).args(args).env("RUST_LOG", "dynamicfs=debug").env("DFS_LOG_FORMAT", "json").output().unwrap();
    let lines = json_lines(&String::from_utf8_lossy(&o.stderr));
    let calls: Vec<&serde_json::Value> = lines.iter().filter(|l| l["fields"]["message"] == "control call").collect();
    let reqs: BTreeSet<&str> = calls.iter().filter_map(|l| l["span"]["req"].as_str()).collect();
    assert!(!calls.is_empty() && reqs.len() == 1, "one request id per command: {calls:?}");
    assert!(calls.iter().all(|l| l["span"]["name"] == "cli" && l["fields"]["req"] == l["span"]["req"]), "{calls:?}");
    let req = reqs.first().unwrap().to_string();
    (req, o)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The mount's engine lines logged for the control request `req`.
fn engine_lines_of(log: &Path, req: &str) -> Vec<serde_json::Value> {
    json_lines(&fs::read_to_string(log).unwrap())
        .into_iter()
        .filter(|l| l["span"]["name"] == "control" && l["span"]["req"] == req)
        .filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with("dynamicfs::engine")))
        .collect()
}

fn families(e: &text::Exposition) -> BTreeSet<String> {
    e.types.keys().cloned().collect()
}

#[test]
fn health_metrics_and_server_of_an_unmounted_pool() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip::unavailable("fail-disk takes the pool lock in /run/dfs (root)");
        return;
    }
    let tmp = scratch();
    let imgs: Vec<PathBuf> = (0..3).map(|i| image(tmp.path(), &format!("m{i}.img"), 64 * MIB)).collect();
    let mut args = vec!["--label", "obs"];
    for p in &imgs {
        args.extend(["--device", p.to_str().unwrap()]);
    }
    let out = run(MKFS, &args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pool = imgs[0].to_str().unwrap();

    let h = run(DFS, &["health", "--pool", pool, "--json"]);
    assert_eq!(h.status.code(), Some(0), "{}", String::from_utf8_lossy(&h.stderr));
    assert_eq!(stdout_json(&h)["state"], "ok");

    let m = run(DFS, &["metrics", "--pool", pool]);
    assert!(m.status.success());
    let lines = String::from_utf8_lossy(&m.stdout).to_string();
    assert!(lines.contains("dfs_member_state{member=\"2\",state=\"online\"} 1"), "{lines}");
    let mj = stdout_json(&run(DFS, &["metrics", "--pool", pool, "--json"]));
    assert!(mj["samples"].as_array().unwrap().iter().any(|s| s["name"] == "dfs_health_state"));

    let f = run(DFS, &["fail-disk", "--pool", pool, "--index", "1"]);
    assert!(f.status.success(), "{}", String::from_utf8_lossy(&f.stderr));
    let h = run(DFS, &["health", "--pool", pool, "--json"]);
    assert_eq!(h.status.code(), Some(1), "health exits 1 unless ok");
    let hj = stdout_json(&h);
    assert_eq!(hj["state"], "degraded", "{hj}");
    assert!(hj["problems"][0]["suggestion"].as_str().unwrap().contains("dfs "), "{hj}");
    let human = run(DFS, &["health", "--pool", pool]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("DEGRADED"));
    let st = stdout_json(&run(DFS, &["status", "--pool", pool, "--json"]));
    assert_eq!(st["health"], "degraded", "{st}");
    let temp = st["extents_by_temperature"].as_array().unwrap();
    assert_eq!(temp.len(), 3, "hot, warm, cold: {st}");
    assert!(temp.iter().all(|c| c["extents"] == 0) && st["extents"] == 0, "{st}");
    assert!(st["last_scrub"].is_null() && st["scrub_daemon"].is_null(), "{st}");

    let (server, addr) = metrics_server(pool);
    let e = scrape(&addr);
    assert_eq!(e.value("dfs_member_state", &[("member", "1"), ("state", "failed")]), Some(1.0));
    assert_eq!(http::get(&addr, "/health", Duration::from_secs(5)).unwrap().0, 503);
    assert_eq!(http::get(&addr, "/x", Duration::from_secs(5)).unwrap().0, 404);
    let via = run(DFS, &["health", "--pool", pool, "--endpoint", &addr, "--json"]);
    assert_eq!(stdout_json(&via)["state"], "degraded");
    let via = run(DFS, &["metrics", "--pool", pool, "--endpoint", &addr]);
    assert!(String::from_utf8_lossy(&via.stdout).contains("dfs_degraded_extents"));
    drop(server);

    // Errors: one line, exit 1; a bad --log-format is a usage error (2).
    let dead = run(DFS, &["metrics", "--pool", pool, "--endpoint", "127.0.0.1:1"]);
    assert_eq!(dead.status.code(), Some(1));
    let err = String::from_utf8_lossy(&dead.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("dfs: error: ") && err.contains("127.0.0.1:1"), "{err}");
    assert_eq!(run(DFS, &["--log-format", "xml", "health", "--pool", pool]).status.code(), Some(2));
}

#[test]
fn mounted_pool_status_health_and_metrics_server_proxy() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/dev/fuse").exists() || !require_root_and_loop() {
        skip::unavailable("needs root, /dev/fuse and loop devices");
        return;
    }
    let loops: Vec<LoopDevice> = (0..3).map(|_| LoopDevice::new(128 * MIB).expect("loop device")).collect();
    let spare = LoopDevice::new(128 * MIB).expect("loop device");
    let dev = |l: &LoopDevice| l.path().display().to_string();
    let tmp = scratch();
    let mut args = vec!["-q".to_string(), "-p".into(), "replication:3".into()];
    for l in &loops {
        args.extend(["-d".into(), dev(l)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(MKFS, &args);
    assert!(out.status.success(), "mkfs: {}", String::from_utf8_lossy(&out.stderr));
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let log = tmp.path().join("dfs.log");
    let _unmount = Unmount(mnt.clone());
    let opts = format!("device={},device={},log={}", dev(&loops[1]), dev(&loops[2]), log.display());
    let out = run(MOUNT, &[&dev(&loops[0]), mnt.to_str().unwrap(), "-o", &opts]);
    assert!(out.status.success(), "mount: {}", String::from_utf8_lossy(&out.stderr));
    let m = mnt.display().to_string();
    let data: Vec<u8> = (0..4 * MIB as u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut f = File::create(mnt.join("a")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // metrics-server on the mount point proxies the mount.
    let (_server, addr) = metrics_server(&m);
    let first = scrape(&addr);
    let via_socket = run(DFS, &["metrics", "--pool", &m, "--json"]);
    let names: BTreeSet<String> = ok_json(&via_socket)["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["name"]
                .as_str()
                .unwrap()
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
                .to_string()
        })
        .collect();
    for f in families(&first) {
        assert!(names.contains(&f), "{f} served by the proxy but not by dfs metrics");
    }
    assert!(first.sum("dfs_fuse_requests_total", &[("op", "write")]) >= 4.0, "the mount's FUSE counters");
    assert!(first.sum("dfs_device_io_bytes_total", &[("direction", "write")]) >= (12 * MIB) as f64);
    assert_eq!(first.value("dfs_extents", &[("policy", "replication:3")]), Some(4.0));
    assert_temperature_split_covers_extents(&first);
    // Traffic moves the proxied counters.
    fs::write(mnt.join("b"), &data[..2 * MIB as usize]).unwrap();
    let f = File::open(mnt.join("b")).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(fs::read(mnt.join("a")).unwrap() == data);
    let second = scrape(&addr);
    let grew = |n: &str, l: &[(&str, &str)]| second.sum(n, l) - first.sum(n, l);
    assert!(grew("dfs_fuse_requests_total", &[("op", "write")]) >= 2.0, "proxied FUSE writes did not move");
    assert!(grew("dfs_device_io_bytes_total", &[("direction", "write")]) >= (6 * MIB) as f64);
    assert!(grew("dfs_journal_commits_total", &[]) >= 1.0);
    assert_eq!(second.value("dfs_extents", &[("policy", "replication:3")]), Some(6.0));
    assert_temperature_split_covers_extents(&second);
    // /health mirrors `dfs health` of the mount.
    let (status, h) = health(&addr);
    let cli = run(DFS, &["health", "--pool", &m, "--json"]);
    assert_eq!(cli.status.code(), Some(0), "{}", String::from_utf8_lossy(&cli.stderr));
    let hc = stdout_json(&cli);
    assert_eq!((status, h["state"].as_str()), (200, Some("ok")), "{h}");
    assert_eq!((&hc["state"], &hc["pool_uuid"], &hc["extents"]), (&h["state"], &h["pool_uuid"], &h["extents"]));
    assert_eq!(h["scrub_daemon"]["state"], "idle", "the mount's daemon is reported: {h}");

    // dfs status: one screen, live from the mount.
    let st = ok_json(&run(DFS, &["status", "--pool", &m, "--json"]));
    assert_eq!(st["durable_state_only"], false, "{st}");
    assert_eq!(st["mounted_on"].as_str(), Some(m.as_str()), "{st}");
    assert_eq!(st["extents"], 6, "{st}");
    let split: u64 =
        st["extents_by_temperature"].as_array().unwrap().iter().map(|c| c["extents"].as_u64().unwrap()).sum();
    assert_eq!(split, 6, "{st}");
    assert_eq!(st["scrub_daemon"]["state"], "idle", "{st}");
    let human = String::from_utf8_lossy(&run(DFS, &["status", "--pool", &m]).stdout).to_string();
    for want in ["Extents by temperature", "cold", "Scrub:  never", "Health: OK", "Running jobs"] {
        assert!(human.contains(want), "{want:?} missing from:\n{human}");
    }

    // A scrub through the mount shows in status, health and metrics.
    let out = run(DFS, &["scrub-daemon", "start", "--pool", &m, "--intensity", "high"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st = wait_until(60, "the scrub pass", || {
        let st = ok_json(&run(DFS, &["status", "--pool", &m, "--json"]));
        (st["last_scrub"]["result"] == "clean").then_some(st)
    });
    assert_eq!(st["last_scrub"]["extents"], 6, "{st}");
    // (The pass is recorded in the pool a moment before the daemon counts it.)
    let e = wait_until(10, "the daemon to count its pass", || {
        let e = scrape(&addr);
        (e.value("dfs_scrub_passes_total", &[]) == Some(1.0)).then_some(e)
    });
    assert_eq!(e.value("dfs_scrub_pass_extents", &[]), Some(6.0));
    assert!(e.value("dfs_scrub_last_finish_timestamp_seconds", &[]).is_some());
    let human = String::from_utf8_lossy(&run(DFS, &["health", "--pool", &m]).stdout).to_string();
    assert!(human.contains("clean, 6 extents"), "{human}");

    // A scrub through the mount: its engine lines carry the command's id.
    let (scrub_req, out) = run_logged(&["scrub", "--pool", &m, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = engine_lines_of(&log, &scrub_req);
    assert!(lines.iter().any(|l| l["fields"]["message"] == "scrub: one-shot pass done"), "{lines:?}");
    assert!(lines.iter().all(|l| l["span"]["method"] == "scrub.run" || l["span"]["method"] == "ping"), "{lines:?}");

    // A member fails; three copies cannot be rebuilt on two members: 503.
    let (fail_req, out) = run_logged(&["fail-disk", "--pool", &m, "--disk", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(fail_req, scrub_req, "each command has its own request id");
    let lines = engine_lines_of(&log, &fail_req);
    let set = lines
        .iter()
        .find(|l| l["fields"]["message"] == "member state set")
        .unwrap_or_else(|| panic!("no engine line of the mount carries the id {fail_req} of dfs fail-disk: {lines:?}"));
    assert_eq!(
        (set["fields"]["member"].as_u64(), set["span"]["method"].as_str()),
        (Some(1), Some("fail-disk")),
        "{set}"
    );
    let (status, h) = health(&addr);
    assert_eq!((status, h["state"].as_str()), (503, Some("degraded")), "{h}");
    let cli = run(DFS, &["health", "--pool", &m]);
    assert_eq!(cli.status.code(), Some(1), "dfs health exits 1 unless ok");
    let human = String::from_utf8_lossy(&cli.stdout).to_string();
    assert!(human.contains("DEGRADED") && human.contains(&format!("dfs rebuild --pool {m}")), "{human}");
    assert_eq!(scrape(&addr).value("dfs_health_state", &[("state", "degraded")]), Some(1.0));
    // Repair as suggested: a new disk, a rebuild: 200 again.
    ok_json(&run(DFS, &["add-disk", "--pool", &m, "--disk", &dev(&spare), "--json"]));
    let rebuilt = run(DFS, &["rebuild", "--pool", &m, "--json"]);
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    let h = wait_until(30, "/health to be 200", || {
        let (status, h) = health(&addr);
        (status == 200).then_some(h)
    });
    assert_eq!(h["degraded_extents"], 0, "{h}");
    // The failed member leaves the pool: still 200.
    let out = run(DFS, &["remove-disk", "--pool", &m, "--disk", "1", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, h) = health(&addr);
    assert_eq!(status, 200, "{h}");
    let e = scrape(&addr);
    assert_eq!(e.value("dfs_member_state", &[("member", "1"), ("state", "removed")]), Some(1.0));
    assert!(fs::read(mnt.join("a")).unwrap() == data);
}
