//! `dfs` administration of an UNMOUNTED pool of loop devices (the CLI opens
//! the pool itself, under the pool lock), as an operator runs it:
//!
//! - `policy_status_shows_bytes`: a whole-pool change-policy, then
//!   `policy-status` shows the bytes re-encoded (IEC in the table, exact
//!   in `--json`).
//! - `change_policy_progress_on_a_terminal_only`: under a pseudo-terminal
//!   (`script`) an unmounted change-policy draws its progress bar on
//!   stderr; piped, stderr stays empty.
//!
//! Files are written through the library (no mount needed); every check
//! goes through the built `dfs`. Needs root and loop devices; skipped with
//! a printed reason otherwise. Only the loop devices attached here are
//! detached.

mod common;

use std::sync::Arc;

use common::{expect, have_loop_devices, json, mkfs, pattern, run, Loop, MIB};
use dynamicfs::device::Device;
use dynamicfs::engine::{FileKind, Pool, PoolOptions, ROOT_INO};

const DFS: &str = env!("CARGO_BIN_EXE_dfs");
const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");

/// Loop devices formatted as one pool, and the files written to it.
struct LoopPool {
    loops: Vec<Loop>,
    /// (path in the pool, bytes)
    files: Vec<(String, Vec<u8>)>,
}

impl LoopPool {
    /// `n` members of 64 MiB under `policy`, with `files` (path, length)
    /// written (directories made as needed).
    fn new(n: usize, policy: &str, files: &[(&str, usize)]) -> LoopPool {
        let loops: Vec<Loop> = (0..n).map(|_| Loop::new(64 * MIB)).collect();
        mkfs(MKFS, &loops, policy, "admin");
        let mut lp = LoopPool { loops, files: Vec::new() };
        let pool = lp.pool(false);
        for (i, (path, len)) in files.iter().enumerate() {
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let mut dir = ROOT_INO;
            for d in &parts[..parts.len() - 1] {
                dir = match pool.lookup(dir, d.as_bytes()) {
                    Ok((ino, _)) => ino,
                    Err(_) => pool.mkdir(dir, d.as_bytes(), 0o755, 0, 0).unwrap().0,
                };
            }
            let (ino, _) = pool.create(dir, parts[parts.len() - 1].as_bytes(), FileKind::File, 0o644, 0, 0, 0).unwrap();
            let data = pattern(*len, i as u8);
            pool.write(ino, 0, &data).unwrap();
            pool.fsync(ino).unwrap();
            lp.files.push((path.to_string(), data));
        }
        pool.close().unwrap();
        lp
    }

    fn pool(&self, read_only: bool) -> Pool {
        let devs: Vec<Arc<dyn Device>> = self.loops.iter().map(|l| l.dev(read_only)).collect();
        Pool::open(devs, PoolOptions { read_only, no_lock: true, ..Default::default() }).unwrap()
    }

    fn m(&self) -> &str {
        self.loops[0].s()
    }
}

#[test]
fn policy_status_shows_bytes() {
    if !have_loop_devices() {
        return;
    }
    let lp = LoopPool::new(3, "replication:2", &[("/a", 3 * MIB as usize - 100), ("/d/b", 1_500_000)]);
    let total: u64 = lp.files.iter().map(|(_, d)| d.len() as u64).sum();
    expect(&run(DFS, &["change-policy", "--pool", lp.m(), "--policy", "erasure:2+1"]), 0);
    let h = json(&run(DFS, &["policy-status", "--pool", lp.m(), "--json"]), 0);
    let c = &h.as_array().unwrap()[0];
    assert_eq!(c["state"], "done", "{h}");
    assert_eq!(c["bytes_done"], total, "{h}");
    assert_eq!(c["bytes_total"], total, "{h}");
    assert_eq!(c["extents_done"], c["extents_total"], "{h}");
    let table = expect(&run(DFS, &["policy-status", "--pool", lp.m()]), 0);
    let header = table.lines().next().unwrap();
    assert!(header.contains(" EXTENTS ") && header.contains(" BYTES "), "{table}");
    let want = format!("{}/{}", dynamicfs::probe::iec(total), dynamicfs::probe::iec(total));
    assert!(table.lines().nth(1).unwrap().contains(&want), "{want:?} not in\n{table}");
}

#[test]
fn change_policy_progress_on_a_terminal_only() {
    if !have_loop_devices() {
        return;
    }
    let lp = LoopPool::new(3, "replication:2", &[("/a", 6 * MIB as usize)]);
    // A terminal: util-linux `script` runs it under a pty (stdout and
    // stderr both go to its output). Paced so the bar is drawn on the way.
    let cmd = format!("{DFS} change-policy --pool {} --policy erasure:2+1 --max-rate 8M", lp.m());
    let o = std::process::Command::new("script")
        .args(["-q", "-e", "-f", "-c", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert!(tty.contains("re-encoding extents under erasure:2+1"), "{tty}");
    assert!(tty.contains("6/6 extents"), "no progress bar on a terminal:\n{tty}");
    assert!(tty.contains("re-encoded 6 extents"), "{tty}");
    // Piped: the result on stdout, nothing on stderr.
    let o = run(DFS, &["change-policy", "--pool", lp.m(), "--policy", "replication:3"]);
    assert!(expect(&o, 0).contains("re-encoded 6 extents"));
    assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
}
