//! `dfs list-hot | list-warm | list-cold | extent-stats | temperature-config`
//! on a pool in image files (no root needed): what the engine recorded is
//! what the CLI shows, JSON parses back, settings are stored in the pool,
//! and garbage arguments give usage errors that change nothing.

use dynamicfs::discover::{open_pool, DiscoverOptions, PoolSource};
use dynamicfs::engine::{FileKind, PoolOptions, ROOT_INO};
use dynamicfs::temperature::SettingRow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
const DFS: &str = env!("CARGO_BIN_EXE_dfs");
const MIB: u64 = 1 << 20;

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn run(args: &[&str]) -> Output {
    Command::new(DFS).args(args).output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "exit {:?}, stderr {}", o.status, String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn list_hot_and_extent_stats_show_what_was_read() {
    let tmp = tempfile::Builder::new().prefix("dfs-temp-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let imgs: Vec<PathBuf> = (0..4).map(|i| image(tmp.path(), &format!("m{i}.img"), 64 * MIB)).collect();
    let mut args = vec!["--policy", "replication:2", "--label", "temp"];
    for i in &imgs {
        args.extend(["--device", i.to_str().unwrap()]);
    }
    let o = Command::new(MKFS).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let member = imgs[0].to_str().unwrap();
    let data = vec![7u8; 300_000];
    {
        let source = PoolSource::parse(member).unwrap();
        let opts = PoolOptions { no_lock: true, ..Default::default() };
        let (pool, _) = open_pool(&source, &DiscoverOptions::default(), opts).unwrap();
        let (ino, _) = pool.create(ROOT_INO, b"busy", FileKind::File, 0o644, 0, 0, 0).unwrap();
        pool.write(ino, 0, &data).unwrap();
        pool.fsync(ino).unwrap();
        for _ in 0..20 {
            assert_eq!(pool.read(ino, 0, data.len()).unwrap(), data);
        }
        pool.close().unwrap();
    }
    let hot = json(&run(&["list-hot", "--pool", member, "--json"]));
    let hot = hot.as_array().unwrap();
    assert_eq!(hot.len(), 1, "{hot:?}");
    assert_eq!(hot[0]["path"], "/busy");
    assert_eq!(hot[0]["threshold_class"], "hot");
    let id = hot[0]["id"].as_str().unwrap().to_string();
    let st = json(&run(&["extent-stats", "--pool", member, "--extent", &id, "--json"]));
    assert!(st["reads"].as_f64().unwrap() >= 19.0, "{st}");
    assert_eq!(st["current_policy"], "replication:2");
    assert!(st["hmm_probability"].as_f64().unwrap() > 0.0);
    let text = run(&["extent-stats", "--pool", member, "--extent", &id]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("/busy") && text.contains("HMM state:") && text.contains("threshold class: hot"), "{text}");
    let table = String::from_utf8(run(&["list-hot", "--pool", member]).stdout).unwrap();
    assert!(table.contains("/busy") && table.contains(&id), "{table}");
    let cold = run(&["list-cold", "--pool", member]);
    assert_eq!(String::from_utf8(cold.stdout).unwrap(), "No cold extents.\n");
    assert_eq!(json(&run(&["list-warm", "--pool", member, "--json"])), serde_json::json!([]));
    // Garbage: a usage error (2); an unknown extent: one line and 1.
    assert_eq!(run(&["extent-stats", "--pool", member, "--extent", "not-a-uuid"]).status.code(), Some(2));
    let o = run(&["extent-stats", "--pool", member, "--extent", "00000000-0000-0000-0000-000000000001"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.starts_with("dfs: error: no extent") && err.lines().count() == 1, "{err}");
    let o = run(&["list-hot", "--pool", tmp.path().join("nope.img").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
}

/// `temperature-config --json` as key → (value, source).
fn settings(member: &str) -> std::collections::BTreeMap<String, (String, String)> {
    let rows: Vec<SettingRow> =
        serde_json::from_value(json(&run(&["temperature-config", "--pool", member, "--json"]))).unwrap();
    rows.into_iter().map(|r| (r.key, (r.value, r.source))).collect()
}

#[test]
fn temperature_config_is_stored_in_the_pool_and_refuses_bad_values() {
    let tmp = tempfile::Builder::new().prefix("dfs-tcfg-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let imgs: Vec<PathBuf> = (0..3).map(|i| image(tmp.path(), &format!("m{i}.img"), 64 * MIB)).collect();
    let mut args = vec!["--policy", "replication:2"];
    for i in &imgs {
        args.extend(["--device", i.to_str().unwrap()]);
    }
    let o = Command::new(MKFS).args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let member = imgs[0].to_str().unwrap();
    let other = imgs[2].to_str().unwrap();

    let fresh = settings(member);
    let keys = [
        "classifier",
        "hot_ops_per_day",
        "hot_recent_secs",
        "warm_ops_per_day",
        "warm_recent_secs",
        "hot_policy",
        "warm_policy",
        "cold_policy",
        "migrate",
        "migration_rate",
        "min_observations",
    ];
    assert_eq!(fresh.keys().map(String::as_str).collect::<std::collections::BTreeSet<_>>(), keys.into());
    assert!(fresh.values().all(|(_, src)| src == "default"), "{fresh:?}");
    assert_eq!(fresh["hot_ops_per_day"].0, "100");
    assert_eq!(fresh["warm_policy"].0, "keep");

    let o = run(&[
        "temperature-config",
        "--pool",
        member,
        "--set",
        "hot_ops_per_day=250.0",
        "--set",
        "cold_policy=erasure:2+1",
        "--set",
        "classifier=threshold",
        "--set",
        "migration_rate=2.5",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(table.starts_with("KEY") && table.contains("SOURCE"), "{table}");
    let line = table.lines().find(|l| l.starts_with("hot_ops_per_day")).unwrap();
    assert_eq!(line.split_whitespace().collect::<Vec<_>>(), ["hot_ops_per_day", "250", "100", "pool"], "{table}");
    // Stored in the pool: any member shows it, and so does the engine.
    let after = settings(other);
    assert_eq!(after["hot_ops_per_day"], ("250".to_string(), "pool".to_string()));
    assert_eq!(after["cold_policy"], ("erasure:2+1".to_string(), "pool".to_string()));
    assert_eq!(after["migration_rate"], ("2.5".to_string(), "pool".to_string()));
    assert_eq!(after["warm_ops_per_day"], ("10".to_string(), "default".to_string()));
    {
        let source = PoolSource::parse(member).unwrap();
        let opts = PoolOptions { read_only: true, ..Default::default() };
        let (pool, _) = open_pool(&source, &DiscoverOptions::default(), opts).unwrap();
        let s = pool.temperature().settings();
        assert_eq!((s.threshold.hot_ops_per_day, s.classifier), (250.0, dynamicfs::temperature::Classifier::Threshold));
        assert_eq!(s.cold_policy, Some("erasure:2+1".parse().unwrap()));
    }

    // Usage errors (2): bad values, unknown keys, no `=`; nothing changes,
    // even when a good setting comes with them.
    for bad in [
        &["--set", "hot_ops_per_day=lots"][..],
        &["--set", "hot_ops_per_day=-5"],
        &["--set", "hot_ops_per_day=1e3"],
        &["--set", "cold_policy=raid6"],
        &["--set", "migrate=maybe"],
        &["--set", "migration_rate=0"],
        &["--set", "min_observations=0"],
        &["--set", "hotness=3"],
        &["--set", "classifier"],
        &["--unset", "hotness"],
        &["--set", "warm_policy=keep", "--set", "hot_recent_secs=1h"],
    ] {
        let mut a = vec!["temperature-config", "--pool", member];
        a.extend_from_slice(bad);
        let o = run(&a);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&o.stderr));
        let err = String::from_utf8_lossy(&o.stderr);
        let arg = bad.last().unwrap();
        let key = arg.split('=').next().unwrap();
        assert!(err.lines().next().unwrap().contains(key), "{bad:?}: {err}");
    }
    // Inconsistent with what the pool holds: one line, 1, nothing changed.
    let o = run(&["temperature-config", "--pool", member, "--set", "warm_ops_per_day=300", "--set", "migrate=off"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err, "dfs: error: warm_ops_per_day (300) is above hot_ops_per_day (250)\n");
    assert_eq!(settings(member), after, "a refused change changed something");

    // Back to the default.
    let o = run(&["temperature-config", "--pool", member, "--unset", "hot_ops_per_day", "--json"]);
    let v = json(&o);
    let row = v.as_array().unwrap().iter().find(|r| r["key"] == "hot_ops_per_day").unwrap().clone();
    assert_eq!((row["value"].as_str(), row["source"].as_str()), (Some("100"), Some("default")), "{row}");
    assert_eq!(settings(other)["cold_policy"].1, "pool");
}
