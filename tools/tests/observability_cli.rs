//! `dfs health`, `dfs metrics`, `dfs metrics-server` and `dfs status` on an
//! unmounted pool of image files, run as an operator would: JSON parsed
//! back, exit codes checked, the endpoint scraped (and checked by
//! `promtool check metrics` when installed). The metrics server is a child
//! process killed by its PID in a drop guard, also on panic.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use dynamicfs::metrics::{http, text};

const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
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

/// Kills the child by its PID when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn promtool_check(body: &str) {
    use std::io::Write;
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool not installed: the parser is the check");
        return;
    };
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}");
}

#[test]
fn health_metrics_and_server_of_an_unmounted_pool() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: fail-disk takes the pool lock in /run/dfs (root)");
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
    assert!(st["extents_by_temperature"].as_array().unwrap().is_empty());

    let addr = format!("127.0.0.1:{}", free_port());
    let server = Killed(Command::new(DFS).args(["metrics-server", "--pool", pool, "--listen", &addr]).spawn().unwrap());
    let start = Instant::now();
    let (status, body) = loop {
        match http::get(&addr, "/metrics", Duration::from_secs(5)) {
            Ok(r) => break r,
            Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("metrics-server never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert_eq!(status, 200);
    let e = text::parse(&body).unwrap();
    assert_eq!(e.value("dfs_member_state", &[("member", "1"), ("state", "failed")]), Some(1.0));
    promtool_check(&body);
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
