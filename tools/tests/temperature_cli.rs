//! `dfs list-hot | list-warm | list-cold | extent-stats` on a pool in image
//! files (no root needed): what the engine recorded is what the CLI shows,
//! JSON parses back, and garbage arguments give usage errors.

use dynamicfs::discover::{open_pool, DiscoverOptions, PoolSource};
use dynamicfs::engine::{FileKind, PoolOptions, ROOT_INO};
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
