//! Integrity commands on a MOUNTED pool of loop devices, through the
//! mount's control socket, as an operator runs them:
//!
//! - orphan GC: fragment headers of this pool planted in free space while
//!   unmounted (what a write whose commit never happened leaves), then, with
//!   a writer busy on the mount, `dfs detect-orphans` lists exactly them,
//!   `cleanup-orphans --dry-run` erases nothing, `--min-age` longer than
//!   their age keeps them, a cleanup erases exactly them (the writer's
//!   fragments, committed or in flight, are never touched), every file reads
//!   back byte-exact, and `fsck.dfs -n -f` exits 0 after the unmount;
//! - the scrub daemon: `dfs scrub-daemon start --intensity low` runs,
//!   `pause` stops the position moving, `resume` moves it again, an
//!   unmount mid-pass and a mount resume from the persisted position (not
//!   from zero), a corrupt fragment planted while unmounted is found and
//!   repaired by the resumed pass, and `status` shows progress, rate,
//!   errors and an ETA;
//! - the schedule: `dfs scrub-schedule` on the mount point goes through the
//!   mount, whose scrub daemon follows a new schedule at once (a nightly
//!   pass starts within seconds, not at the next minute's tick; a new
//!   intensity shows in its status), and the schedule survives an unmount
//!   and a mount (read back unmounted, and followed by the new mount);
//! - `dfs scrub [--repair]` on the mount point (what the shipped systemd
//!   timer runs): one whole pass by the mount, the same report and exit
//!   codes as on an unmounted pool; a payload byte flipped while unmounted
//!   and another flipped through the device under the mount are found
//!   (exit 1), repaired by `--repair` (exit 0), the file reads back
//!   byte-exact, the pass is recorded as the last scrub, and `fsck.dfs -n
//!   --data` finds the pool clean after the unmount.
//!
//! Needs root, loop devices and /dev/fuse; skipped with a printed reason
//! otherwise. Guards detach the loop devices and unmount on failure.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{expect, have_loop_and_fuse, json, mkfs, now_ns, pattern, plant_orphan, run, Loop, Mounted, BS, MIB};
use dynamicfs::engine::state::Body;
use dynamicfs::engine::{Pool, PoolOptions, ROOT_INO};
use dynamicfs::member::read_superblocks;

const DFS: &str = env!("CARGO_BIN_EXE_dfs");
const MKFS: &str = env!("CARGO_BIN_EXE_mkfs-dfs");
const MOUNT: &str = env!("CARGO_BIN_EXE_mount-dfs");
const FSCK: &str = env!("CARGO_BIN_EXE_fsck-dfs");

fn orphan_set(v: &serde_json::Value) -> BTreeSet<(u64, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "orphan")
        .map(|o| (o["member"].as_u64().unwrap(), o["block"].as_u64().unwrap()))
        .collect()
}

#[test]
fn orphan_gc_on_a_mounted_pool_with_a_busy_writer() {
    if !have_loop_and_fuse() {
        return;
    }
    let loops: Vec<Loop> = (0..3).map(|_| Loop::new(128 * MIB)).collect();
    mkfs(MKFS, &loops, "erasure:2+1", "gc");
    let hour_ago = now_ns() - 3600 * 1_000_000_000;
    let planted: BTreeSet<(u64, u64)> = (0..3u64)
        .flat_map(|m| {
            [(m, plant_orphan(&loops[m as usize], 64, hour_ago)), (m, plant_orphan(&loops[m as usize], 256, hour_ago))]
        })
        .collect();

    let dir = tempfile::Builder::new().prefix("dfs-gc-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut mnt = Mounted::new(MOUNT, dir.path(), &loops);
    let m = mnt.s().to_string();
    let first = pattern(5 * MIB as usize + 123, 1);
    fs::write(mnt.mnt.join("first"), &first).unwrap();

    // A writer keeps writing and fsyncing new files meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (root, stop) = (mnt.mnt.clone(), stop.clone());
        std::thread::spawn(move || {
            let data = pattern(3 * MIB as usize + 77, 5);
            let mut n = 0;
            while n < 2 || (n < 12 && !stop.load(Ordering::SeqCst)) {
                let mut f = fs::File::create(root.join(format!("busy{n}"))).unwrap();
                for chunk in data.chunks(256 * 1024) {
                    f.write_all(chunk).unwrap();
                }
                f.sync_all().unwrap();
                n += 1;
            }
            (n, data)
        })
    };

    let found = json(&run(DFS, &["detect-orphans", "--pool", &m, "--json"]), 0);
    // The writer's superseded extents (a file's tail rewritten as it
    // grows) are orphans too, once their delete is durable.
    assert!(orphan_set(&found["orphans"]).is_superset(&planted), "{found:#}");
    let text = expect(&run(DFS, &["detect-orphans", "--pool", &m]), 0);
    assert!(text.contains("is not in the committed extent table"), "{text}");
    let stats = json(&run(DFS, &["orphan-stats", "--pool", &m, "--json"]), 0);
    assert!(stats["by_kind"]["orphan"][0].as_u64().unwrap() >= planted.len() as u64, "{stats:#}");

    let dry = json(&run(DFS, &["cleanup-orphans", "--pool", &m, "--dry-run", "--json"]), 0);
    assert!(orphan_set(&dry["erased"]).is_superset(&planted), "{dry:#}");
    let young = json(&run(DFS, &["cleanup-orphans", "--pool", &m, "--min-age", "2h", "--json"]), 0);
    assert!(young["erased"].as_array().unwrap().is_empty(), "{young:#}");
    assert!(orphan_set(&young["kept_young"]).is_superset(&planted), "{young:#}");
    let still = json(&run(DFS, &["detect-orphans", "--pool", &m, "--json"]), 0);
    assert!(orphan_set(&still["orphans"]).is_superset(&planted), "dry run and min-age erased nothing");

    let done = json(&run(DFS, &["cleanup-orphans", "--pool", &m, "--min-age", "10m", "--json"]), 0);
    // Only the planted ones are old enough for a 10 minute minimum age.
    assert_eq!(orphan_set(&done["erased"]), planted, "{done:#}");
    assert!(done["failed"].as_array().unwrap().is_empty(), "{done:#}");
    let text = expect(&run(DFS, &["cleanup-orphans", "--pool", &m]), 0);
    assert!(text.contains("erased"), "{text}");

    stop.store(true, Ordering::SeqCst);
    let (n, data) = writer.join().unwrap();
    assert_eq!(fs::read(mnt.mnt.join("first")).unwrap(), first);
    for i in 0..n {
        assert!(fs::read(mnt.mnt.join(format!("busy{i}"))).unwrap() == data, "busy{i} differs");
    }
    let rest = json(&run(DFS, &["cleanup-orphans", "--pool", &m, "--json"]), 0);
    assert_eq!(rest["remaining_orphans"], 0, "{rest:#}");
    let after = json(&run(DFS, &["detect-orphans", "--pool", &m, "--json"]), 0);
    assert!(orphan_set(&after["orphans"]).is_empty(), "{after:#}");
    for i in 0..n {
        assert!(fs::read(mnt.mnt.join(format!("busy{i}"))).unwrap() == data, "busy{i} differs after the cleanup");
    }
    mnt.unmount();

    let out = expect(&run(FSCK, &["-n", "-f", "--data", loops[0].s()]), 0);
    assert!(out.contains("clean"), "{out}");
    let after = json(&run(DFS, &["detect-orphans", "--pool", loops[0].s(), "--json"]), 0);
    assert!(orphan_set(&after["orphans"]).is_empty(), "{after:#}");
}

fn status(m: &str) -> serde_json::Value {
    json(&run(DFS, &["scrub-daemon", "status", "--pool", m, "--json"]), 0)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scrub_daemon_through_a_real_mount() {
    if !have_loop_and_fuse() {
        return;
    }
    let loops: Vec<Loop> = (0..3).map(|_| Loop::new(160 * MIB)).collect();
    mkfs(MKFS, &loops, "erasure:2+1", "scrubd");
    let dir = tempfile::Builder::new().prefix("dfs-scrubd-").tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut mnt = Mounted::new(MOUNT, dir.path(), &loops);
    let m = mnt.s().to_string();
    // 64 extents: a pass at "low" (16 MiB/s of fragment bytes, 1.5 MiB per
    // extent) takes about 6 s.
    let data = pattern(64 * MIB as usize, 3);
    fs::write(mnt.mnt.join("big"), &data).unwrap();
    fs::File::open(mnt.mnt.join("big")).unwrap().sync_all().unwrap();

    let s = json(&run(DFS, &["scrub-daemon", "start", "--pool", &m, "--intensity", "low", "--json"]), 0);
    assert_eq!(s["state"], "running", "{s:#}");
    assert_eq!(s["rate_limit_bytes_per_sec"], 16 * MIB);
    wait_for("progress", Duration::from_secs(30), || status(&m)["extents_done"].as_u64().unwrap() >= 4);
    let s = status(&m);
    assert!(s["rate_bytes_per_sec"].as_u64().unwrap() > 0, "{s:#}");
    assert!(s["eta_secs"].as_u64().is_some(), "an ETA while running: {s:#}");
    assert_eq!(s["extents_total"], 64);
    // Without --json: an aligned table, not JSON.
    let table = expect(&run(DFS, &["scrub-daemon", "status", "--pool", &m]), 0);
    let mut lines = table.lines();
    let (head, row) = (lines.next().unwrap(), lines.next().unwrap());
    assert!(head.starts_with("STATE ") && head.contains(" EXTENTS ") && head.contains(" ERRORS "), "{table}");
    assert!(row.split_whitespace().next().is_some_and(|w| ["running", "idle", "paused"].contains(&w)), "{table}");
    assert_eq!(head.find(" INTENSITY").map(|i| i + 1), row.find(" low").map(|i| i + 1), "aligned: {table}");
    assert!(row.contains("16.00 MiB/s") && row.contains("/64"), "{table}");
    assert!(table.contains("passes completed: "), "{table}");

    // Pause: the position stops moving.
    let p = json(&run(DFS, &["scrub-daemon", "pause", "--pool", &m, "--json"]), 0);
    assert_eq!(p["state"], "paused");
    let at = status(&m)["extents_done"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status(&m)["extents_done"].as_u64().unwrap(), at, "paused, yet the position moved");
    // Resume: it moves again.
    assert_eq!(json(&run(DFS, &["scrub-daemon", "resume", "--pool", &m, "--json"]), 0)["state"], "running");
    wait_for("progress after resume", Duration::from_secs(30), || status(&m)["extents_done"].as_u64().unwrap() > at);
    let before = status(&m);
    let before_done = before["extents_done"].as_u64().unwrap();
    assert!(before_done < 60, "the pass must still be running to test a resume: {before:#}");

    // Unmount mid-pass; plant a corrupt fragment of the last extent in id
    // order (the cursor is not there yet), mount again.
    mnt.unmount();
    let (member, offset) = {
        let devs = loops.iter().map(|l| l.dev(true)).collect();
        let pool = Pool::open(devs, PoolOptions { read_only: true, no_lock: true, ..Default::default() }).unwrap();
        let (ino, _) = pool.lookup(ROOT_INO, b"big").unwrap();
        let st = pool.state_snapshot();
        assert!(st.scrub.running && st.scrub.extents_done > 0, "position persisted: {:?}", st.scrub);
        let Body::File(map) = &st.inodes[&ino].body else { panic!("not a file") };
        let last = map.values().max().unwrap();
        let f = st.extents[last].frags[0];
        let layout = read_superblocks(loops[f.member as usize].dev(true).as_ref()).unwrap().superblock.layout;
        (f.member as usize, layout.data_offset(f.block) + BS + 1234)
    };
    loops[member].flip(offset, 0x20);
    mnt.mount(MOUNT, &loops);
    let s = status(&m);
    let resumed_at = s["extents_done"].as_u64().unwrap();
    assert!(resumed_at > 0, "the persisted position survives the remount, not zero: {s:#}");
    if s["state"] != "running" {
        json(&run(DFS, &["scrub-daemon", "start", "--pool", &m, "--intensity", "high", "--json"]), 0);
    }
    wait_for("the pass to finish", Duration::from_secs(120), || status(&m)["passes_completed"].as_u64().unwrap() >= 1);
    let s = status(&m);
    assert!(s["errors"].as_u64().unwrap() >= 1 && s["repaired"].as_u64().unwrap() >= 1, "{s:#}");
    assert_eq!(s["unrepairable"], 0, "{s:#}");
    assert!(!s["recent_errors"].as_array().unwrap().is_empty(), "{s:#}");
    let stopped = run(DFS, &["scrub-daemon", "stop", "--pool", &m]);
    assert!(stopped.status.code().is_some());
    assert!(fs::read(mnt.mnt.join("big")).unwrap() == data, "big differs after the repair");
    mnt.unmount();
    expect(&run(FSCK, &["-n", "--data", loops[0].s()]), 0);
}

/// Three loop devices as an erasure:2+1 pool labelled `label`, mounted,
/// with a file `f` of `len` bytes written and synced through the mount.
fn mounted_with_file(label: &str, len: usize) -> (Vec<Loop>, tempfile::TempDir, Mounted, Vec<u8>) {
    let loops: Vec<Loop> = (0..3).map(|_| Loop::new(128 * MIB)).collect();
    mkfs(MKFS, &loops, "erasure:2+1", label);
    let prefix = format!("dfs-{label}-");
    let dir = tempfile::Builder::new().prefix(&prefix).tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mnt = Mounted::new(MOUNT, dir.path(), &loops);
    let data = pattern(len, 4);
    fs::write(mnt.mnt.join("f"), &data).unwrap();
    fs::File::open(mnt.mnt.join("f")).unwrap().sync_all().unwrap();
    (loops, dir, mnt, data)
}

fn schedule(pool: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["scrub-schedule", "--pool", pool, "--json"];
    all.extend_from_slice(args);
    json(&run(DFS, &all), 0)
}

#[test]
fn scrub_schedule_through_a_real_mount() {
    if !have_loop_and_fuse() {
        return;
    }
    let (loops, _dir, mut mnt, data) = mounted_with_file("sched", 6 * MIB as usize + 5);
    let m = mnt.s().to_string();

    let s = schedule(&m, &[]);
    assert_eq!((s["frequency"].as_str(), s["last_pass_finished_ns"].as_i64()), (Some("off"), Some(0)), "{s:#}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&m)["passes_completed"], 0, "no pass without a schedule");

    // Set on the mount: the answer is the new schedule, and the daemon
    // follows it at once (never scrubbed: a nightly pass is due now; the
    // scheduler's own tick is a minute).
    let set_at = Instant::now();
    let s = schedule(&m, &["--frequency", "nightly", "--intensity", "high"]);
    assert_eq!((s["frequency"].as_str(), s["intensity"].as_str()), (Some("nightly"), Some("high")), "{s:#}");
    assert_eq!(s["rate_limit_bytes_per_sec"], 256 * MIB);
    wait_for("the scheduled pass", Duration::from_secs(30), || status(&m)["passes_completed"] == 1);
    assert!(set_at.elapsed() < Duration::from_secs(30), "followed at once, not at the next tick");
    let st = status(&m);
    assert_eq!((st["frequency"].as_str(), st["intensity"].as_str()), (Some("nightly"), Some("high")), "{st:#}");
    assert_eq!(st["extents_done"], 7, "{st:#}");
    // A new intensity alone keeps the frequency; the daemon takes it.
    let s = schedule(&m, &["--intensity", "low"]);
    assert_eq!((s["frequency"].as_str(), s["intensity"].as_str()), (Some("nightly"), Some("low")), "{s:#}");
    assert!(s["last_pass_finished_ns"].as_i64().unwrap() > 0, "{s:#}");
    let st = status(&m);
    assert_eq!((st["intensity"].as_str(), st["rate_limit_bytes_per_sec"].as_u64()), (Some("low"), Some(16 * MIB)));
    let human = expect(&run(DFS, &["scrub-schedule", "--pool", &m]), 0);
    assert!(human.contains("nightly, intensity low") && human.contains("followed by the mount"), "{human}");
    // Bad values are usage errors, refused before anything is opened.
    assert_eq!(run(DFS, &["scrub-schedule", "--pool", &m, "--frequency", "hourly"]).status.code(), Some(2));

    // Persisted: read back unmounted, then followed by the next mount (the
    // pass of a moment ago is recent: a nightly schedule starts no other).
    mnt.unmount();
    let s = schedule(loops[1].s(), &[]);
    assert_eq!((s["frequency"].as_str(), s["intensity"].as_str()), (Some("nightly"), Some("low")), "{s:#}");
    assert!(!s["pass_running"].as_bool().unwrap() && s["last_pass_finished_ns"].as_i64().unwrap() > 0, "{s:#}");
    mnt.mount(MOUNT, &loops);
    assert_eq!(schedule(&m, &[]), s, "the mount reports the persisted schedule");
    let st = status(&m);
    assert_eq!((st["frequency"].as_str(), st["intensity"].as_str()), (Some("nightly"), Some("low")), "{st:#}");
    std::thread::sleep(Duration::from_secs(1));
    let st = status(&m);
    assert_eq!((st["state"].as_str(), st["passes_completed"].as_u64()), (Some("idle"), Some(0)), "{st:#}");
    // Off: kept, and the mount starts nothing.
    let s = schedule(&m, &["--frequency", "off"]);
    assert_eq!(s["frequency"], "off", "{s:#}");
    assert!(fs::read(mnt.mnt.join("f")).unwrap() == data);
    mnt.unmount();
    assert_eq!(schedule(loops[0].s(), &[])["frequency"], "off");
}

/// Member and byte offset of a payload byte of extent `index` (in file
/// order) of file `name`, fragment `frag`; read with the pool closed or
/// shared (read-only, no lock).
fn payload_byte(loops: &[Loop], name: &str, index: usize, frag: usize) -> (usize, u64) {
    let devs = loops.iter().map(|l| l.dev(true)).collect();
    let pool = Pool::open(devs, PoolOptions { read_only: true, no_lock: true, ..Default::default() }).unwrap();
    let (ino, _) = pool.lookup(ROOT_INO, name.as_bytes()).unwrap();
    let st = pool.state_snapshot();
    let Body::File(map) = &st.inodes[&ino].body else { panic!("not a file") };
    let id = map.values().nth(index).unwrap();
    let f = st.extents[id].frags[frag];
    let layout = read_superblocks(loops[f.member as usize].dev(true).as_ref()).unwrap().superblock.layout;
    (f.member as usize, layout.data_offset(f.block) + BS + 4321)
}

#[test]
fn scrub_and_repair_through_a_real_mount() {
    if !have_loop_and_fuse() {
        return;
    }
    let (loops, _dir, mut mnt, data) = mounted_with_file("scrubm", 5 * MIB as usize + 77);
    let m = mnt.s().to_string();

    let out = expect(&run(DFS, &["scrub", "--pool", &m]), 0);
    assert!(out.contains("3 of 3 members, 6 extents, 18 of 18 fragments good"), "{out}");
    assert!(out.contains("0 errors, 0 repaired, 0 left: clean"), "{out}");

    // One payload byte flipped while unmounted, another through the device
    // while mounted (on another member): the mount reads the devices
    // directly, so it sees both.
    mnt.unmount();
    let (m1, off1) = payload_byte(&loops, "f", 1, 0);
    loops[m1].flip(off1, 0x08);
    let (m2, off2) = (0..3).map(|i| payload_byte(&loops, "f", 4, i)).find(|(m, _)| *m != m1).unwrap();
    mnt.mount(MOUNT, &loops);
    loops[m2].flip(off2, 0x80);

    let out = expect(&run(DFS, &["scrub", "--pool", &m]), 1);
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("ERROR")).collect();
    assert_eq!(errors.len(), 2, "{out}");
    for member in [m1, m2] {
        assert!(errors.iter().any(|l| l.contains(&format!("payload member {member}: extent "))), "{out}");
    }
    assert!(out.contains("(run with --repair)"), "{out}");
    let j = json(&run(DFS, &["scrub", "--pool", loops[2].s(), "--json"]), 1);
    assert_eq!((j["clean"].as_bool(), j["repair"].as_bool()), (Some(false), Some(false)), "{j:#}");
    assert_eq!(j["errors_by_kind"]["payload"], 2, "{j:#}");
    assert_eq!(j["errors_by_member"][m1.to_string()], 1, "{j:#}");
    assert_eq!(j["errors_by_member"][m2.to_string()], 1, "{j:#}");
    assert_eq!((j["extents_checked"].as_u64(), j["fragments_good"].as_u64()), (Some(6), Some(16)), "{j:#}");
    assert_eq!(j["members_checked"], 3, "{j:#}");

    // What the systemd timer runs: repaired through the mount.
    let out = expect(&run(DFS, &["scrub", "--pool", &m, "--repair"]), 0);
    let fixed: Vec<&str> = out.lines().filter(|l| l.starts_with("FIXED")).collect();
    assert_eq!(fixed.len(), 2, "{out}");
    assert!(fixed.iter().all(|l| l.contains("[rebuilt from the other fragments]")), "{out}");
    assert!(out.contains("2 errors, 2 repaired, 0 left: clean"), "{out}");
    let j = json(&run(DFS, &["scrub", "--pool", &m, "--json"]), 0);
    assert_eq!((j["clean"].as_bool(), j["fragments_good"].as_u64()), (Some(true), Some(18)), "{j:#}");
    assert!(j["errors"].as_array().unwrap().is_empty(), "{j:#}");
    // Structures under the mount: a primary superblock copy and an old
    // root slot damaged through the devices; found, then repaired (the
    // superblock rewritten from its backup, a new checkpoint, the slot
    // cleared).
    loops[0].flip(40, 0x01);
    let layout = read_superblocks(loops[1].dev(true).as_ref()).unwrap().superblock.layout;
    loops[1].flip(layout.root_slot_offset(0) + 20, 0x01);
    let j = json(&run(DFS, &["scrub", "--pool", &m, "--json"]), 1);
    assert_eq!(
        (j["errors_by_kind"]["superblock"].as_u64(), j["errors_by_kind"]["root_slot"].as_u64()),
        (Some(1), Some(1)),
        "{j:#}"
    );
    assert_eq!((j["errors_by_member"]["0"].as_u64(), j["errors_by_member"]["1"].as_u64()), (Some(1), Some(1)), "{j:#}");
    let out = expect(&run(DFS, &["scrub", "--pool", &m, "--repair"]), 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("FIXED  superblock member 0") && l.contains("[rewritten from the other copy]")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("FIXED  root_slot member 1")), "{out}");
    assert!(out.contains("2 errors, 2 repaired, 0 left: clean"), "{out}");
    expect(&run(DFS, &["scrub", "--pool", &m]), 0);
    // Recorded as the last pass (health and the schedule see it).
    let s = schedule(&m, &[]);
    assert!(s["last_pass_finished_ns"].as_i64().unwrap() > 0, "{s:#}");
    assert_eq!(status(&m)["state"], "idle");

    // Byte-exact, read through a fresh mount (no cache can answer).
    mnt.unmount();
    mnt.mount(MOUNT, &loops);
    assert!(fs::read(mnt.mnt.join("f")).unwrap() == data, "f differs after the repair");
    mnt.unmount();
    let out = expect(&run(FSCK, &["-n", "-f", "--data", loops[0].s()]), 0);
    assert!(out.contains("clean"), "{out}");
}
