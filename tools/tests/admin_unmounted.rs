//! `dfs` administration of an UNMOUNTED pool of loop devices (the CLI opens
//! the pool itself, under the pool lock), as an operator runs it:
//!
//! - `policy_status_shows_bytes`: a whole-pool change-policy, then
//!   `policy-status` shows the bytes re-encoded (IEC in the table, exact
//!   in `--json`).
//! - `change_policy_progress_on_a_terminal_only`: under a pseudo-terminal
//!   (`script`) an unmounted change-policy draws its progress bar on
//!   stderr; piped, stderr stays empty.
//! - `change_policy_of_a_subtree`: `--path DIR` changes that directory's
//!   files only, `--path DIR --recursive` its whole tree; no other extent
//!   (a sibling directory whose name starts the same included) changes.
//! - `add_disk_refusals`: a device with an ext4 signature is refused
//!   without `--force` and taken with it; a member of another pool is
//!   refused (naming that pool) and both pools are left as they were.
//! - `unknown_members_are_refused`: `fail-disk` / `remove-disk` of an
//!   index or a path that is no member of the pool: one line, exit 1,
//!   nothing changed.
//!
//! Files are written through the library (no mount needed); every check
//! goes through the built `dfs`. Needs root and loop devices; skipped with
//! a printed reason otherwise. Only the loop devices attached here are
//! detached.

mod common;

use std::process::Output;
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

    /// Every file reads back as written (through the library, read-only).
    fn assert_files(&self) {
        let pool = self.pool(true);
        for (path, data) in &self.files {
            let ino = dynamicfs::control::methods::resolve(&pool, path).unwrap();
            assert!(pool.read(ino, 0, data.len()).unwrap() == *data, "{path} differs");
        }
    }
}

/// Exit status 1 and one `dfs: error: ...` line containing `needle`.
fn one_line_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("dfs: error: ") && err.contains(needle), "{needle:?} not in {err}");
}

/// `list-disks --json` and `list-extents --json` of the pool: what a
/// refused command must leave as it was.
fn snapshot(m: &str) -> (serde_json::Value, serde_json::Value) {
    (
        json(&run(DFS, &["list-disks", "--pool", m, "--json"]), 0),
        json(&run(DFS, &["list-extents", "--pool", m, "--json"]), 0),
    )
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

#[test]
fn change_policy_of_a_subtree() {
    if !have_loop_devices() {
        return;
    }
    let files = [
        ("/keep", 1_200_000),
        ("/tree/a", 2 * MIB as usize + 5),
        ("/tree/sub/b", 1_500_000),
        ("/tree/sub/deeper/c", 300_000),
        ("/tree2/d", 1_100_000), // a sibling whose name starts like the tree's
    ];
    let lp = LoopPool::new(3, "replication:2", &files);
    let policies = |m: &str| -> Vec<(String, String)> {
        let extents = json(&run(DFS, &["list-extents", "--pool", m, "--json"]), 0);
        extents
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["path"].as_str().unwrap().to_string(), e["policy"].as_str().unwrap().to_string()))
            .collect()
    };
    // Without --recursive: the directory's own files only.
    expect(&run(DFS, &["change-policy", "--pool", lp.m(), "--policy", "replication:3", "--path", "/tree"]), 0);
    for (path, policy) in policies(lp.m()) {
        let want = if path == "/tree/a" { "replication:3" } else { "replication:2" };
        assert_eq!(policy, want, "{path} after --path /tree");
    }
    // With --recursive: the whole tree, nothing else.
    let out = expect(
        &run(DFS, &["change-policy", "--pool", lp.m(), "--policy", "erasure:2+1", "--path", "/tree", "--recursive"]),
        0,
    );
    assert!(out.contains("/tree re-encoded 6 extents under erasure:2+1"), "{out}");
    let mut seen = 0;
    for (path, policy) in policies(lp.m()) {
        let want = if path.starts_with("/tree/") { "erasure:2+1" } else { "replication:2" };
        assert_eq!(policy, want, "{path} after --path /tree --recursive");
        seen += 1;
    }
    assert_eq!(seen, 10, "every extent listed");
    let h = json(&run(DFS, &["policy-status", "--pool", lp.m(), "--json"]), 0);
    let last = h.as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["scope"].as_str(), last["recursive"].as_bool()), (Some("/tree"), Some(true)), "{h}");
    let tree_bytes: u64 = lp.files.iter().filter(|(p, _)| p.starts_with("/tree/")).map(|(_, d)| d.len() as u64).sum();
    assert_eq!(last["bytes_total"], tree_bytes, "{h}");
    lp.assert_files();
}

#[test]
fn add_disk_refusals() {
    if !have_loop_devices() {
        return;
    }
    if std::process::Command::new("mkfs.ext4").arg("-V").output().is_err() {
        eprintln!("skipping: mkfs.ext4 is not installed");
        return;
    }
    let lp = LoopPool::new(3, "replication:2", &[("/f", 2 * MIB as usize)]);
    let other = LoopPool::new(2, "replication:2", &[("/g", MIB as usize)]);
    let other_uuid = json(&run(DFS, &["status", "--pool", other.m(), "--json"]), 0)["pool_uuid"].clone();
    let before = snapshot(lp.m());
    let other_before = snapshot(other.m());

    // A member of another pool: refused, naming that pool; both unchanged.
    let o = run(DFS, &["add-disk", "--pool", lp.m(), "--disk", other.loops[1].s()]);
    one_line_error(&o, &format!("is already a DynamicFS member (pool {}", other_uuid.as_str().unwrap()));
    assert_eq!(snapshot(lp.m()), before, "the pool changed");
    assert_eq!(snapshot(other.m()), other_before, "the other pool changed");
    other.assert_files();

    // A device carrying ext4: refused without --force, taken with it.
    let ext4 = Loop::new(64 * MIB);
    let mk = std::process::Command::new("mkfs.ext4").args(["-q", "-F", ext4.s()]).output().unwrap();
    assert!(mk.status.success(), "{}", String::from_utf8_lossy(&mk.stderr));
    let o = run(DFS, &["add-disk", "--pool", lp.m(), "--disk", ext4.s()]);
    one_line_error(&o, &format!("{}: contains an ext4 filesystem", ext4.s()));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"), "the error says how to override");
    assert_eq!(snapshot(lp.m()), before, "a refused add-disk changed the pool");
    let added = json(&run(DFS, &["add-disk", "--pool", lp.m(), "--disk", ext4.s(), "--force", "--json"]), 0);
    assert_eq!(added["index"], 3, "{added}");
    let disks = json(&run(DFS, &["list-disks", "--pool", lp.m(), "--json"]), 0);
    assert_eq!(disks.as_array().unwrap().len(), 4, "{disks}");
    assert_eq!(disks[3]["state"], "online", "{disks}");
    assert!(
        !String::from_utf8_lossy(&run("blkid", &["-p", ext4.s()]).stdout).contains("ext4"),
        "the ext4 signature is gone"
    );
    // The new member takes fragments: a whole-pool change to 2+2 needs it.
    expect(&run(DFS, &["change-policy", "--pool", lp.m(), "--policy", "erasure:2+2"]), 0);
    let disks = json(&run(DFS, &["list-disks", "--pool", lp.m(), "--json"]), 0);
    assert!(disks[3]["fragments"].as_u64().unwrap() > 0, "{disks}");
    lp.assert_files();
}

#[test]
fn unknown_members_are_refused() {
    if !have_loop_devices() {
        return;
    }
    let lp = LoopPool::new(3, "replication:2", &[("/f", 2 * MIB as usize)]);
    let other = LoopPool::new(1, "replication:1", &[]);
    let stranger = Loop::new(64 * MIB);
    let m = lp.m();
    let before = snapshot(m);
    for cmd in ["fail-disk", "remove-disk"] {
        one_line_error(&run(DFS, &[cmd, "--pool", m, "--disk", "7"]), "no member 7 in pool");
        one_line_error(
            &run(DFS, &[cmd, "--pool", m, "--disk", "/no/such/device"]),
            "/no/such/device: not a member of this pool",
        );
        one_line_error(&run(DFS, &[cmd, "--pool", m, "--disk", stranger.s()]), "not a member of this pool");
        one_line_error(&run(DFS, &[cmd, "--pool", m, "--disk", other.m()]), "not a member of this pool");
        assert_eq!(snapshot(m), before, "a refused {cmd} changed the pool");
    }
    one_line_error(&run(DFS, &["fail-disk", "--pool", m, "--index", "3"]), "no member 3 in pool");
    assert_eq!(snapshot(m), before);
    // A usage error is exit 2.
    assert_eq!(run(DFS, &["fail-disk", "--pool", m, "--index", "x"]).status.code(), Some(2));
    lp.assert_files();
}
