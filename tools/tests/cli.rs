//! The built `mkfs-dfs` and `dfs-inspect` binaries, run as an operator
//! would: image files and a directory (no root needed), JSON parsed back,
//! exit codes and the one-line error convention checked; and `dfs SUB
//! --help` showing examples for every subcommand `dfs --help` lists.

#[path = "../../tests/common/skip.rs"]
mod skip;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
const INSPECT: &str = env!("CARGO_BIN_EXE_dfs-inspect");
const DFS: &str = env!("CARGO_BIN_EXE_dfs");
const MIB: u64 = 1 << 20;

/// A scratch directory on the target's disk (O_DIRECT works there; tmpfs
/// may not).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("dfs-cli-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr).lines().map(String::from).collect()
}

/// Exit status 1 and exactly one `PROG: error: ...` line on stderr.
fn assert_one_line_error(o: &Output, prog: &str, contains: &str) {
    let lines = stderr_lines(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {lines:?}");
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(lines[0].starts_with(&format!("{prog}: error: ")), "{lines:?}");
    assert!(lines[0].contains(contains), "{:?} does not contain {contains:?}", lines[0]);
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "exit {:?}, stderr {}", o.status, String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn mkfs_then_inspect_every_member() {
    let tmp = scratch();
    let a = image(tmp.path(), "a.img", 64 * MIB);
    let b = image(tmp.path(), "b.img", 48 * MIB);
    let d = tmp.path().join("m2");
    let dir_arg = format!("{}:40M", s(&d));
    let out = run(MKFS, &["--device", s(&a), "--dir", &dir_arg, "--device", s(&b), "--label", "cli", "--json"]);
    let pool = json(&out);
    let pool_uuid = pool["pool_uuid"].as_str().unwrap().to_string();
    assert_eq!(pool["label"], "cli");
    assert_eq!(pool["default_policy"], "replication:3");
    let members = pool["members"].as_array().unwrap();
    // Command-line order, whichever option named the member.
    let paths: Vec<&str> = members.iter().map(|m| m["path"].as_str().unwrap()).collect();
    assert_eq!(paths, vec![s(&a), s(&d), s(&b)]);
    assert_eq!(members[1]["kind"], "dir");
    assert_eq!(members[1]["size"], 40 * MIB);
    assert_eq!(members[2]["size"], 48 * MIB);

    for (i, m) in [&a, &d, &b].into_iter().enumerate() {
        let sb = json(&run(INSPECT, &["superblock", s(m), "--json"]));
        assert_eq!(sb["pool_uuid"], pool_uuid.as_str(), "{}", m.display());
        assert_eq!(sb["member_index"], i);
        assert_eq!(sb["member_uuid"], members[i]["member_uuid"]);
        assert_eq!(sb["using"], "primary");
        assert_eq!(sb["needs_repair"], false);
        assert_eq!(sb["primary"]["status"], "valid");
        assert_eq!(sb["backup"]["status"], "valid");

        let roots = json(&run(INSPECT, &["roots", s(m), "--json"]));
        // mkfs opens the new pool once: roots of generations 1 (mkfs), 2 (open) and 3 (close).
        assert_eq!((roots["valid"].as_u64(), roots["best_slot"].as_u64()), (Some(3), Some(3)));
        let bm = json(&run(INSPECT, &["bitmap", s(m), "--json"]));
        assert_eq!(bm["used_blocks"], 0);
        assert_eq!(bm["bad_bitmap_blocks"], 0);
        let j = json(&run(INSPECT, &["journal", s(m), "--json"]));
        assert_eq!(j["records"].as_array().unwrap().len(), 0);
        assert!(j["stop"].as_str().unwrap().contains("clean end"), "{}", j["stop"]);
        let f = json(&run(INSPECT, &["fragments", s(m), "--json", "--verify"]));
        // Only checkpoint copies (the live one and a superseded one), no extents yet.
        assert!(f["fragments"].as_array().unwrap().iter().all(|x| x["kind"] == "checkpoint"), "{f}");

        // Human output of every command succeeds and says something useful.
        for cmd in ["superblock", "roots", "bitmap", "journal", "fragments"] {
            let o = run(INSPECT, &[cmd, s(m)]);
            assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
            assert!(!o.stdout.is_empty());
        }
    }
    let human = String::from_utf8(run(INSPECT, &["superblock", s(&a)]).stdout).unwrap();
    assert!(human.contains(&format!("Pool UUID:      {pool_uuid}")), "{human}");
    assert!(human.contains("Using:          primary"), "{human}");
}

#[test]
fn human_mkfs_output_and_quiet() {
    let tmp = scratch();
    let a = image(tmp.path(), "a.img", 64 * MIB);
    let o = run(MKFS, &["--device", s(&a), "-L", "h"]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    for want in ["Pool UUID:", "Label:          h", "Default policy: replication:1", "INDEX  KIND", "64.00 MiB"] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    // Again: refused, it is a member now; forced and quiet: nothing printed.
    assert_one_line_error(&run(MKFS, &["--device", s(&a)]), "mkfs.dfs", "is already a DynamicFS member");
    let o = run(MKFS, &["--device", s(&a), "-f", "-q"]);
    assert!(o.status.success());
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
}

#[test]
fn garbage_empty_and_truncated_files_give_one_line() {
    let tmp = scratch();
    let garbage = tmp.path().join("garbage.img");
    let bytes: Vec<u8> = (0..(40 * MIB) as usize).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&garbage, bytes).unwrap();
    let empty = image(tmp.path(), "empty.img", 0);
    let member = image(tmp.path(), "m.img", 64 * MIB);
    assert!(run(MKFS, &["-q", "--device", s(&member)]).status.success());
    let cut = image(tmp.path(), "cut.img", 0);
    std::fs::copy(&member, &cut).unwrap();
    File::options().write(true).open(&cut).unwrap().set_len(40 * MIB).unwrap();

    for cmd in ["superblock", "roots", "bitmap", "journal", "fragments"] {
        for (file, why) in
            [(&garbage, "not a DynamicFS member"), (&empty, "not a DynamicFS member"), (&cut, "truncated")]
        {
            let o = run(INSPECT, &[cmd, s(file)]);
            assert_one_line_error(&o, "dfs-inspect", why);
            assert!(o.stdout.is_empty());
        }
        let o = run(INSPECT, &[cmd, s(&tmp.path().join("missing.img")), "--json"]);
        assert_one_line_error(&o, "dfs-inspect", "No such file");
    }
}

#[test]
fn ext4_image_refused_without_force() {
    if Command::new("mkfs.ext4").arg("-V").output().is_err() {
        skip::unavailable("mkfs.ext4 is not installed");
        return;
    }
    let tmp = scratch();
    let e = image(tmp.path(), "ext4.img", 64 * MIB);
    assert!(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&e).status().unwrap().success());
    let o = run(MKFS, &["--device", s(&e)]);
    assert_one_line_error(&o, "mkfs.dfs", &format!("{}: contains an ext4 filesystem (UUID ", s(&e)));
    assert!(stderr_lines(&o)[0].ends_with("use --force to overwrite"));
    let o = run(MKFS, &["--device", s(&e), "--force", "--json"]);
    let pool = json(&o);
    assert!(pool["members"][0]["overwritten"][0].as_str().unwrap().starts_with("contains an ext4 filesystem"));
}

#[test]
fn refusals_and_usage_errors() {
    let tmp = scratch();
    let a = image(tmp.path(), "a.img", 64 * MIB);
    let small = image(tmp.path(), "small.img", 8 * MIB);
    // Every refused member gets its line; nothing is written to the others.
    let o = run(MKFS, &["--device", s(&a), "--device", s(&small), "--device", s(&tmp.path().join("nope"))]);
    let lines = stderr_lines(&o);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("small.img: is too small (8.00 MiB)"), "{lines:?}");
    assert!(lines[1].contains("nope: does not exist"), "{lines:?}");
    assert_one_line_error(&run(INSPECT, &["superblock", s(&a)]), "dfs-inspect", "not a DynamicFS member");

    let o = run(MKFS, &["--device", s(&a), "--policy", "erasure:4+2"]);
    assert_one_line_error(&o, "mkfs.dfs", "policy erasure:4+2 needs 6 distinct members; the pool has 1");

    // Usage errors: clap's exit status 2.
    for args in [
        vec![],
        vec!["--label", "x"],
        vec!["--device", s(&a), "--policy", "raid5"],
        vec!["--dir", "/x:12Q"],
        vec!["--bogus"],
    ] {
        assert_eq!(run(MKFS, &args).status.code(), Some(2), "{args:?}");
    }
    assert_eq!(run(INSPECT, &[]).status.code(), Some(2));
    assert_eq!(run(INSPECT, &["frobnicate", s(&a)]).status.code(), Some(2));
    assert_eq!(run(INSPECT, &["superblock"]).status.code(), Some(2));
}

#[test]
fn a_closed_stdout_is_not_a_panic() {
    let tmp = scratch();
    let a = image(tmp.path(), "a.img", 64 * MIB);
    assert!(run(MKFS, &["-q", "--device", s(&a)]).status.success());
    for _ in 0..5 {
        let mut child = Command::new(INSPECT)
            .args(["bitmap", s(&a), "--all", "--json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(o.stderr.is_empty(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn every_dfs_subcommand_help_shows_examples() {
    let o = run(DFS, &["--help"]);
    assert!(o.status.success());
    let top = String::from_utf8(o.stdout).unwrap();
    let subs: Vec<String> = top
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .filter(|n| n != "help")
        .collect();
    assert!(subs.len() >= 26, "{top}");
    for sub in &subs {
        for flag in ["--help", "-h"] {
            let o = run(DFS, &[sub, flag]);
            assert!(o.status.success(), "dfs {sub} {flag}");
            let help = String::from_utf8(o.stdout).unwrap();
            let examples = help.split("Examples:\n").nth(1).unwrap_or_else(|| panic!("dfs {sub} {flag}:\n{help}"));
            assert!(examples.lines().next().unwrap().trim().starts_with(&format!("dfs {sub} ")), "{help}");
        }
    }
}
