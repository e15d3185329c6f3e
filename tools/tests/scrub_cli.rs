//! The built `dfs` integrity commands on a pool of loop devices:
//! `dfs scrub` (clean 0, damage 1, `--repair` 0 with FIXED lines, `--json`
//! counts by kind and member), `dfs scrub-schedule` (stored in the pool,
//! shown, `--json`), `dfs detect-orphans` / `orphan-stats` /
//! `cleanup-orphans` (`--dry-run` writes nothing, `--min-age` keeps young
//! ones, a cleanup erases), `dfs scrub-daemon` on an unmounted pool
//! (one line, exit 1), usage errors (exit 2); and `scripts/install.sh` into
//! a temporary prefix, after which `fsck -t dfs` finds `fsck.dfs` and the
//! systemd units are installed with the path of `dfs` filled in.
//!
//! Needs root and loop devices (losetup); skipped with a printed reason
//! otherwise. Only the loop devices attached here are detached.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{expect, have_loop_devices, json, mkfs, now_ns, pattern, plant_orphan, run, Loop, BS, MIB};
use dynamicfs::device::Device;
use dynamicfs::engine::state::{Body, Extent};
use dynamicfs::engine::{FileKind, Pool, PoolOptions, ROOT_INO};
use dynamicfs::member::read_superblocks;

const DFS: &str = env!("CARGO_BIN_EXE_dfs");
const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");

struct LoopPool {
    loops: Vec<Loop>,
    data: Vec<u8>,
}

impl LoopPool {
    fn new() -> LoopPool {
        let loops: Vec<Loop> = (0..3).map(|_| Loop::new(64 * MIB)).collect();
        mkfs(MKFS, &loops, "erasure:2+1", "scrub");
        let lp = LoopPool { loops, data: pattern(3 * MIB as usize - 99, 4) };
        let pool = lp.pool(false);
        let (ino, _) = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap();
        pool.write(ino, 0, &lp.data).unwrap();
        pool.fsync(ino).unwrap();
        pool.close().unwrap();
        lp
    }

    fn pool(&self, read_only: bool) -> Pool {
        let devs: Vec<Arc<dyn Device>> = self.loops.iter().map(|l| l.dev(read_only)).collect();
        Pool::open(devs, PoolOptions { read_only, no_lock: true, ..Default::default() }).unwrap()
    }

    fn extent(&self, index: u64) -> Extent {
        let pool = self.pool(true);
        let (ino, _) = pool.lookup(ROOT_INO, b"f").unwrap();
        let st = pool.state_snapshot();
        let Body::File(map) = &st.inodes[&ino].body else { panic!("not a file") };
        st.extents[&map[&index]].clone()
    }
}

#[test]
fn scrub_finds_then_repairs() {
    if !have_loop_devices() {
        return;
    }
    let lp = LoopPool::new();
    let l0 = lp.loops[0].s();
    let out = expect(&run(DFS, &["scrub", "--pool", l0]), 0);
    assert!(out.contains("3 of 3 members, 3 extents, 9 of 9 fragments good"), "{out}");
    assert!(out.contains(": clean"), "{out}");

    let e = lp.extent(2);
    let f = e.frags[0];
    let layout = read_superblocks(lp.loops[f.member as usize].dev(true).as_ref()).unwrap().superblock.layout;
    lp.loops[f.member as usize].flip(layout.data_offset(f.block) + BS + 17, 0x40);

    let out = expect(&run(DFS, &["scrub", "--pool", l0]), 1);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{out}");
    assert!(errors[0].contains(&format!("payload member {}", f.member)), "{out}");
    assert!(out.contains("(run with --repair)"), "{out}");
    let j = json(&run(DFS, &["scrub", "--pool", lp.loops[1].s(), "--json"]), 1);
    assert_eq!(j["clean"], false);
    assert_eq!(j["errors_by_kind"]["payload"], 1);
    assert_eq!(j["errors_by_member"][f.member.to_string()], 1);
    assert_eq!(j["extents_checked"], 3);

    let out = expect(&run(DFS, &["scrub", "--pool", l0, "--repair"]), 0);
    assert!(out.lines().any(|l| l.starts_with("FIXED") && l.contains("rebuilt from the other fragments")), "{out}");
    assert!(out.contains("1 errors, 1 repaired, 0 left: clean"), "{out}");
    expect(&run(DFS, &["scrub", "--pool", l0]), 0);
    let pool = lp.pool(true);
    let (ino, _) = pool.lookup(ROOT_INO, b"f").unwrap();
    assert!(pool.read(ino, 0, lp.data.len()).unwrap() == lp.data);
}

#[test]
fn schedule_orphans_daemon_and_usage() {
    if !have_loop_devices() {
        return;
    }
    let lp = LoopPool::new();
    let l0 = lp.loops[0].s();

    // Schedule: off by default; stored; shown; JSON.
    let j = json(&run(DFS, &["scrub-schedule", "--pool", l0, "--json"]), 0);
    assert_eq!((j["frequency"].as_str(), j["intensity"].as_str()), (Some("off"), Some("low")));
    let out = expect(&run(DFS, &["scrub-schedule", "--pool", l0, "--frequency", "weekly", "--intensity", "medium"]), 0);
    assert!(out.contains("weekly, intensity medium (64.00 MiB/s)"), "{out}");
    let j = json(&run(DFS, &["scrub-schedule", "--pool", lp.loops[2].s(), "--json"]), 0);
    assert_eq!((j["frequency"].as_str(), j["intensity"].as_str()), (Some("weekly"), Some("medium")));
    assert_eq!(j["rate_limit_bytes_per_sec"], 64 * MIB);

    // Orphans: one old, one young (written "now").
    let old = plant_orphan(&lp.loops[1], 200, 1);
    let young = plant_orphan(&lp.loops[2], 100, now_ns());
    let j = json(&run(DFS, &["detect-orphans", "--pool", l0, "--json"]), 0);
    assert_eq!(j["trustworthy"], true);
    let orphans: Vec<&serde_json::Value> =
        j["orphans"].as_array().unwrap().iter().filter(|o| o["kind"] == "orphan").collect();
    assert_eq!(orphans.len(), 2, "{j:#}");
    assert!(orphans.iter().any(|o| o["member"] == 1 && o["block"] == old && o["age_secs"].as_u64().unwrap() > 1000));
    assert!(orphans.iter().any(|o| o["member"] == 2 && o["block"] == young));
    assert!(orphans[0]["why"].as_str().unwrap().contains("not in the committed extent table"));
    let out = expect(&run(DFS, &["detect-orphans", "--pool", l0]), 0);
    assert!(out.lines().filter(|l| l.starts_with("orphan ")).count() == 2, "{out}");
    let j = json(&run(DFS, &["orphan-stats", "--pool", l0, "--json"]), 0);
    assert_eq!(j["by_kind"]["orphan"][0], 2);
    assert_eq!(j["by_kind"]["orphan"][1], 4 * BS);

    // Dry run: says, writes nothing.
    let j = json(&run(DFS, &["cleanup-orphans", "--pool", l0, "--dry-run", "--json", "--min-age", "1h"]), 0);
    assert_eq!(j["dry_run"], true);
    let erased: Vec<u64> = j["erased"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "orphan")
        .map(|o| o["block"].as_u64().unwrap())
        .collect();
    assert_eq!(erased, vec![old]);
    let young_kept = j["kept_young"].as_array().unwrap().iter().filter(|o| o["kind"] == "orphan").count();
    assert_eq!(young_kept, 1, "{j:#}");
    let j = json(&run(DFS, &["detect-orphans", "--pool", l0, "--json"]), 0);
    assert_eq!(j["orphans"].as_array().unwrap().iter().filter(|o| o["kind"] == "orphan").count(), 2);
    // --min-age 1h: the old one goes, the young one stays.
    let out = expect(&run(DFS, &["cleanup-orphans", "--pool", l0, "--min-age", "1h"]), 0);
    assert!(out.contains(&format!("erased member 1 block {old}")), "{out}");
    let j = json(&run(DFS, &["detect-orphans", "--pool", l0, "--json"]), 0);
    let left: Vec<u64> = j["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "orphan")
        .map(|o| o["block"].as_u64().unwrap())
        .collect();
    assert_eq!(left, vec![young]);
    expect(&run(DFS, &["cleanup-orphans", "--pool", l0]), 0);
    let j = json(&run(DFS, &["orphan-stats", "--pool", l0, "--json"]), 0);
    assert!(j["by_kind"].get("orphan").is_none(), "{j:#}");
    // The files are untouched.
    let pool = lp.pool(true);
    let (ino, _) = pool.lookup(ROOT_INO, b"f").unwrap();
    assert!(pool.read(ino, 0, lp.data.len()).unwrap() == lp.data);
    drop(pool);

    // scrub-daemon on an unmounted pool: the daemon lives in the mount; one line, exit 1.
    let o = run(DFS, &["scrub-daemon", "status", "--pool", l0]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("dfs: error: ") && err.contains("not mounted") && err.contains("dfs scrub"), "{err}");

    // Usage errors: exit 2.
    for args in [
        &["scrub-daemon", "explode", "--pool", l0][..],
        &["scrub-daemon", "start", "--pool", l0, "--intensity", "ludicrous"],
        &["scrub-schedule", "--pool", l0, "--frequency", "hourly"],
        &["scrub"],
    ] {
        assert_eq!(run(DFS, args).status.code(), Some(2), "{args:?}");
    }
    // Garbage: one line, exit 1.
    let o = run(DFS, &["cleanup-orphans", "--pool", l0, "--min-age", "5 fortnights"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
    let o = run(DFS, &["scrub", "--pool", "/nonexistent/dev"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.lines().count() == 1 && err.contains("/nonexistent/dev"), "{err}");
}

#[test]
fn install_sh_makes_fsck_t_dfs_work_and_installs_the_units() {
    if !have_loop_devices() || Command::new("fsck").arg("--version").output().is_err() {
        return;
    }
    let prefix = tempfile::Builder::new().prefix("dfs-install-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/install.sh");
    let o = Command::new("sh").arg(script).arg(prefix.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sbin = prefix.path().join("sbin");
    assert!(sbin.join("fsck.dfs").exists());
    let unit = std::fs::read_to_string(prefix.path().join("lib/systemd/system/dfs-scrub@.service")).unwrap();
    assert!(
        unit.contains(&format!("ExecStart={}/bin/dfs scrub --pool %I --repair", prefix.path().display())),
        "{unit}"
    );
    let timer = std::fs::read_to_string(prefix.path().join("lib/systemd/system/dfs-scrub@.timer")).unwrap();
    assert!(timer.contains("OnCalendar=weekly") && timer.contains("WantedBy=timers.target"));

    // fsck(8) looks for fsck.TYPE in /sbin, then along PATH.
    let lp = LoopPool::new();
    let path = format!("{}:{}", sbin.display(), std::env::var("PATH").unwrap_or_default());
    let o = Command::new("fsck").args(["-t", "dfs", "-n", lp.loops[0].s()]).env("PATH", &path).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("fsck.dfs: pool") && out.contains(": clean"), "{out}");
    // A damaged member: fsck passes fsck.dfs's exit code on (4: left).
    let e = lp.extent(0);
    let f = e.frags[1];
    let layout = read_superblocks(lp.loops[f.member as usize].dev(true).as_ref()).unwrap().superblock.layout;
    lp.loops[f.member as usize].flip(layout.data_offset(f.block) + 60, 0x40);
    let o = Command::new("fsck").args(["-t", "dfs", "-n", lp.loops[0].s()]).env("PATH", &path).output().unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stdout));
}
