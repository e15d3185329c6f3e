//! Temperature end to end on in-memory pools with a test clock: access
//! statistics drive hot/warm/cold, reads queue migrations that a worker (or
//! `run_migrations`) performs, every migration is in the policy history,
//! pinned files never move, the HMM holds a cold extent through one burst
//! while the threshold view flips, and a power cut in the middle of a
//! migration leaves each extent readable under exactly one policy.

use dfs_format::Policy;
use dynamicfs::device::{Device, FaultyDevice, MemDevice};
use dynamicfs::engine::state::ChangeState;
use dynamicfs::engine::{FileKind, Ino, Pool, PoolOptions, XattrMode, ROOT_INO};
use dynamicfs::temperature::migrate::Outcome;
use dynamicfs::temperature::{handle_control, Classifier, Settings, Temp, TemperatureConfig, TestClock};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const HOUR: u32 = 3600;
const DAY: u32 = 86_400;
const T0: u32 = 1_700_000_000;

fn devices(n: usize, policy: &str) -> Vec<Arc<FaultyDevice>> {
    let devs: Vec<Arc<FaultyDevice>> =
        (0..n).map(|_| Arc::new(FaultyDevice::new(Arc::new(MemDevice::new(64 << 20, 4096))))).collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
    dynamicfs::mkfs::format_devices(&refs, "temp", policy.parse().unwrap()).unwrap();
    devs
}

fn config(clock: &TestClock) -> TemperatureConfig {
    TemperatureConfig { clock: Arc::new(clock.clone()), ..Default::default() }
}

fn open_with(devs: &[Arc<FaultyDevice>], cfg: TemperatureConfig) -> Pool {
    let ds: Vec<Arc<dyn Device>> = devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
    Pool::open(ds, PoolOptions { no_lock: true, temperature: cfg, ..Default::default() }).unwrap()
}

fn file(pool: &Pool, name: &str, len: usize, seed: u8) -> (Ino, Vec<u8>) {
    let (ino, _) = pool.create(ROOT_INO, name.as_bytes(), FileKind::File, 0o644, 0, 0, 0).unwrap();
    let data: Vec<u8> = (0..len).map(|k| (k as u8).wrapping_mul(31) ^ seed).collect();
    pool.write(ino, 0, &data).unwrap();
    pool.fsync(ino).unwrap();
    (ino, data)
}

/// The (extent id, policy) of every extent of `path`, by offset.
fn extents_of(pool: &Pool, path: &str) -> Vec<(u128, String)> {
    pool.list_extents()
        .into_iter()
        .filter(|e| e.path.as_deref() == Some(path))
        .map(|e| (uuid::Uuid::parse_str(&e.id).unwrap().as_u128(), e.policy))
        .collect()
}

fn temperature_changes(pool: &Pool) -> Vec<dynamicfs::engine::state::PolicyChange> {
    pool.policy_history().into_iter().filter(|c| c.scope.contains("(temperature)")).collect()
}

#[test]
fn an_extent_read_often_goes_hot_and_migrates_to_replication_on_its_next_read() {
    let clock = TestClock::new(T0);
    let devs = devices(6, "erasure:4+2");
    let pool = open_with(&devs, config(&clock));
    let (ino, data) = file(&pool, "busy", MIB, 1);
    let (id, policy) = extents_of(&pool, "/busy")[0].clone();
    assert_eq!(policy, "erasure:4+2");
    // Twelve reads an hour for four hours.
    for _ in 0..4 * 12 {
        clock.advance(300);
        assert_eq!(pool.read(ino, 0, MIB).unwrap(), data);
    }
    let s = pool.extent_stats(id).unwrap();
    assert_eq!((s.threshold_class, s.hmm_state), (Temp::Hot, Temp::Hot), "{s:?}");
    assert!(s.hmm_probability > 0.5, "{s:?}");
    // 48 reads in 4 h: the one-day half-life window counts them all.
    assert!(s.reads > 45.0 && s.reads_per_day > 25.0, "{s:?}");
    assert_eq!(s.target_policy.as_deref(), Some("replication:3"));
    assert_eq!(s.path.as_deref(), Some("/busy"));
    // The reads only queued the migration: the extent is still erasure coded.
    assert_eq!(extents_of(&pool, "/busy")[0], (id, "erasure:4+2".to_string()));
    assert_eq!(pool.temperature().queue().len(), 1);
    // The worker runs it.
    let outcomes = pool.run_migrations();
    assert!(matches!(outcomes[..], [Ok(Outcome::Migrated { .. })]), "{outcomes:?}");
    let (new_id, policy) = extents_of(&pool, "/busy")[0].clone();
    assert_eq!(policy, "replication:3");
    assert_ne!(new_id, id);
    assert_eq!(pool.read(ino, 0, MIB).unwrap(), data);
    // Recorded in the history, and the statistics followed the extent.
    let h = temperature_changes(&pool);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!((h[0].state, h[0].policy), (ChangeState::Done, Policy::Replication { copies: 3 }.encode()));
    assert!(h[0].message.starts_with("hot"), "{h:?}");
    let s = pool.extent_stats(new_id).unwrap();
    assert!(s.reads > 40.0 && s.hmm_state == Temp::Hot, "{s:?}");
    assert_eq!(s.target_policy.as_deref(), Some("replication:3"));
    // Hot and under its target: further reads queue nothing.
    clock.advance(HOUR);
    pool.read(ino, 0, MIB).unwrap();
    assert!(pool.temperature().queue().is_empty());
    assert!(pool.state_snapshot().check().is_empty());
}

#[test]
fn an_extent_left_alone_for_days_goes_cold_and_moves_to_erasure_coding() {
    let clock = TestClock::new(T0);
    let devs = devices(6, "replication:3");
    let pool = open_with(&devs, config(&clock));
    let (ino, data) = file(&pool, "old", 2 * MIB + 1234, 2);
    let before = extents_of(&pool, "/old");
    assert_eq!(before.len(), 3);
    assert!(before.iter().all(|(_, p)| p == "replication:3"));
    let s = pool.extent_stats(before[0].0).unwrap();
    assert_eq!(s.threshold_class, Temp::Hot, "just written: {s:?}");
    clock.advance(3 * DAY);
    let s = pool.extent_stats(before[0].0).unwrap();
    assert_eq!((s.threshold_class, s.hmm_state), (Temp::Cold, Temp::Cold), "{s:?}");
    assert_eq!(s.target_policy.as_deref(), Some("erasure:4+2"));
    // One read: the HMM (inertia) still says cold, so all three move.
    assert_eq!(pool.read(ino, 0, data.len()).unwrap(), data);
    assert_eq!(pool.temperature().queue().len(), 3);
    let outcomes = pool.run_migrations();
    assert!(outcomes.iter().all(|o| matches!(o, Ok(Outcome::Migrated { .. }))), "{outcomes:?}");
    let after = extents_of(&pool, "/old");
    assert!(after.iter().all(|(_, p)| p == "erasure:4+2"), "{after:?}");
    assert_eq!(pool.read(ino, 0, data.len()).unwrap(), data);
    assert_eq!(temperature_changes(&pool).len(), 3);
    // Everything survives a clean close and reopen.
    pool.close().unwrap();
    let pool = open_with(&devs, config(&clock));
    assert_eq!(pool.read(ino, 0, data.len()).unwrap(), data);
    assert_eq!(temperature_changes(&pool).len(), 3);
    assert!(pool.check_allocations().is_empty(), "{:?}", pool.check_allocations());
}

#[test]
fn a_burst_on_a_cold_extent_flips_the_threshold_view_but_not_the_hmm() {
    for classifier in [Classifier::Hmm, Classifier::Threshold] {
        let clock = TestClock::new(T0);
        let devs = devices(6, "erasure:4+2");
        let pool = open_with(
            &devs,
            TemperatureConfig { settings: Settings { classifier, ..Default::default() }, ..config(&clock) },
        );
        let (ino, data) = file(&pool, "archive", MIB, 3);
        let id = extents_of(&pool, "/archive")[0].0;
        clock.advance(4 * DAY);
        // 200 reads within ten minutes.
        for _ in 0..200 {
            clock.advance(3);
            pool.read(ino, 0, 4096).unwrap();
        }
        let s = pool.extent_stats(id).unwrap();
        assert_eq!(s.threshold_class, Temp::Hot, "{s:?}");
        assert_eq!(s.hmm_state, Temp::Cold, "inertia: {s:?}");
        pool.run_migrations();
        let policy = extents_of(&pool, "/archive")[0].1.clone();
        match classifier {
            Classifier::Hmm => assert_eq!(policy, "erasure:4+2", "the HMM keeps it where it is"),
            Classifier::Threshold => assert_eq!(policy, "replication:3", "the threshold view flips it"),
        }
        assert_eq!(pool.read(ino, 0, MIB).unwrap(), data);
        // Sustained load for hours does convince the HMM.
        if classifier == Classifier::Hmm {
            for _ in 0..3 * 20 {
                clock.advance(180);
                pool.read(ino, 0, 4096).unwrap();
            }
            assert_eq!(pool.extent_stats(id).unwrap().hmm_state, Temp::Hot);
            pool.run_migrations();
            assert_eq!(extents_of(&pool, "/archive")[0].1, "replication:3");
        }
    }
}

#[test]
fn pinned_files_never_migrate() {
    let clock = TestClock::new(T0);
    let devs = devices(6, "replication:3");
    let pool = open_with(&devs, config(&clock));
    let (by_xattr, d1) = file(&pool, "xattr", MIB, 4);
    pool.setxattr(by_xattr, b"user.dfs.policy", b"replication:3", XattrMode::Any).unwrap();
    let (by_change, d2) = file(&pool, "changed", MIB, 5);
    pool.change_policy(by_change, "/changed", false, "replication:2".parse().unwrap(), &|_, _| {}).unwrap();
    let (free, d3) = file(&pool, "free", MIB, 6);
    pool.commit().unwrap();
    let history_before = pool.policy_history().len();
    clock.advance(5 * DAY);
    for (ino, d) in [(by_xattr, &d1), (by_change, &d2), (free, &d3)] {
        assert_eq!(&pool.read(ino, 0, MIB).unwrap(), d);
    }
    let pinned = pool.extent_stats(extents_of(&pool, "/xattr")[0].0).unwrap();
    assert!(pinned.pinned && pinned.class == Temp::Cold && pinned.target_policy.is_none(), "{pinned:?}");
    pool.run_migrations();
    assert_eq!(extents_of(&pool, "/xattr")[0].1, "replication:3");
    assert_eq!(extents_of(&pool, "/changed")[0].1, "replication:2");
    // The unpinned control file did move, so the pins are what held the others.
    assert_eq!(extents_of(&pool, "/free")[0].1, "erasure:4+2");
    assert_eq!(pool.policy_history().len(), history_before + 1);
    for (ino, d) in [(by_xattr, &d1), (by_change, &d2), (free, &d3)] {
        assert_eq!(&pool.read(ino, 0, MIB).unwrap(), d);
    }
}

#[test]
fn a_migration_survives_a_power_cut_at_any_point() {
    // Cut the power at many points of the migration of two cold files'
    // four extents; after each cut every extent reads back exact, is under the
    // old or the new policy (never a mix), has a history record exactly when
    // it moved, and the next cold read finishes the job.
    let mut cut_midway = 0;
    for n in (1..60).step_by(4) {
        let clock = TestClock::new(T0);
        let devs = devices(6, "replication:3");
        let files = {
            let pool = open_with(&devs, config(&clock));
            let files = vec![file(&pool, "a", 2 * MIB, 7), file(&pool, "b", MIB + 99, 8)];
            clock.advance(3 * DAY);
            for (ino, d) in &files {
                assert_eq!(&pool.read(*ino, 0, d.len()).unwrap(), d);
            }
            // The statistics are made durable, then the cut comes.
            pool.flush_temperature().unwrap();
            pool.commit().unwrap();
            assert_eq!(pool.temperature().queue().len(), 4);
            devs[n as usize % 6].crash_at(n);
            pool.run_migrations();
            files
        };
        for (i, d) in devs.iter().enumerate() {
            d.crash_now();
            d.power_cycle(n ^ i as u64).unwrap();
        }
        let pool = open_with(&devs, config(&clock));
        let moved = |pool: &Pool| {
            let all: Vec<(u128, String)> = ["/a", "/b"].iter().flat_map(|p| extents_of(pool, p)).collect();
            assert_eq!(all.len(), 4);
            for (_, p) in &all {
                assert!(p == "replication:3" || p == "erasure:4+2", "cut at {n}: {p}");
            }
            all.iter().filter(|(_, p)| p == "erasure:4+2").count()
        };
        let done = moved(&pool);
        assert_eq!(temperature_changes(&pool).len(), done, "cut at {n}: a record for each move and only those");
        if done < 4 {
            cut_midway += 1;
        }
        for (ino, d) in &files {
            assert_eq!(&pool.read(*ino, 0, d.len()).unwrap(), d, "cut at {n}");
        }
        assert!(pool.state_snapshot().check().is_empty());
        assert!(pool.check_allocations().is_empty(), "cut at {n}: {:?}", pool.check_allocations());
        // Resumed by the next read once cold again.
        clock.advance(3 * DAY);
        for (ino, d) in &files {
            assert_eq!(&pool.read(*ino, 0, d.len()).unwrap(), d);
        }
        pool.run_migrations();
        assert_eq!(moved(&pool), 4, "cut at {n}: resumed");
        assert_eq!(temperature_changes(&pool).len(), 4);
    }
    assert!(cut_midway > 0, "no cut landed before the migrations were done");
}

#[test]
fn statistics_are_batched_not_written_per_read_and_persist() {
    let clock = TestClock::new(T0);
    let devs = devices(4, "replication:2");
    let pool = open_with(&devs, config(&clock));
    let (ino, data) = file(&pool, "f", MIB, 9);
    let id = extents_of(&pool, "/f")[0].0;
    let writes: u64 = devs.iter().map(|d| d.writes() + d.syncs()).sum();
    for _ in 0..500 {
        clock.advance(10);
        assert_eq!(pool.read(ino, 0, MIB).unwrap(), data);
    }
    assert_eq!(devs.iter().map(|d| d.writes() + d.syncs()).sum::<u64>(), writes, "reads wrote to a device");
    let reads = pool.extent_stats(id).unwrap().reads;
    assert!(reads > 450.0, "{reads}");
    // Flushed as one op, made durable by the commit: survives a power cut.
    pool.flush_temperature().unwrap();
    pool.commit().unwrap();
    assert_eq!(pool.temperature().live_len(), 0);
    drop(pool);
    for (i, d) in devs.iter().enumerate() {
        d.crash_now();
        d.power_cycle(i as u64).unwrap();
    }
    let pool = open_with(&devs, config(&clock));
    let s = pool.extent_stats(id).unwrap();
    assert!((s.reads - reads).abs() < 1.0, "{s:?} vs {reads}");
    assert_eq!(s.last_access_s, Some(clock_now(&clock)));
}

fn clock_now(c: &TestClock) -> u32 {
    use dynamicfs::temperature::Clock;
    c.now_s()
}

#[test]
fn the_worker_migrates_in_the_background_within_its_rate_limit() {
    let clock = TestClock::new(T0);
    let devs = devices(6, "replication:3");
    let cfg = TemperatureConfig {
        settings: Settings { max_migrations_per_sec: 4.0, ..Default::default() },
        ..config(&clock)
    };
    let pool = Arc::new(open_with(&devs, cfg));
    let files: Vec<(Ino, Vec<u8>)> = (0..8).map(|i| file(&pool, &format!("f{i}"), 100_000, i as u8)).collect();
    clock.advance(3 * DAY);
    let worker = pool.start_migration_worker();
    let start = Instant::now();
    for (ino, d) in &files {
        assert_eq!(&pool.read(*ino, 0, d.len()).unwrap(), d);
    }
    assert!(pool.temperature().queue().wait_idle(Duration::from_secs(30)));
    let took = start.elapsed();
    // 8 migrations at 4/s: the first at once, the last after 7 gaps of 250 ms.
    assert!(took >= Duration::from_millis(1700), "rate limit not honoured: {took:?}");
    assert_eq!(pool.temperature().queue().done.load(std::sync::atomic::Ordering::Relaxed), 8);
    worker.stop();
    // Per job: the history records when the rate limit admitted each one
    // (on the limiter's monotonic clock). No two starts closer than 250 ms,
    // so no one-second window holds more than 4, whatever the machine load.
    let mut starts: Vec<i64> = temperature_changes(&pool).iter().map(|c| c.started_ns).collect();
    starts.sort_unstable();
    assert_eq!(starts.len(), 8);
    for w in starts.windows(2) {
        assert!(w[1] - w[0] >= 250_000_000, "two migrations {} ns apart: {starts:?}", w[1] - w[0]);
    }
    for (i, s) in starts.iter().enumerate() {
        let in_window = starts[i..].iter().take_while(|t| **t - s < 1_000_000_000).count();
        assert!(in_window <= 4, "{in_window} migrations within one second: {starts:?}");
    }
    for (i, (ino, d)) in files.iter().enumerate() {
        assert_eq!(extents_of(&pool, &format!("/f{i}"))[0].1, "erasure:4+2");
        assert_eq!(&pool.read(*ino, 0, d.len()).unwrap(), d);
    }
    let pool = Arc::try_unwrap(pool).expect("the stopped worker holds no reference");
    pool.close().unwrap();
}

#[test]
fn control_methods_list_and_describe() {
    let clock = TestClock::new(T0);
    let devs = devices(4, "replication:2");
    let pool = open_with(&devs, config(&clock));
    let (hot, _) = file(&pool, "hot", 5000, 1);
    let (_cold, _) = file(&pool, "cold", 5000, 2);
    clock.advance(3 * DAY);
    for _ in 0..3 * 12 {
        clock.advance(300);
        pool.read(hot, 0, 5000).unwrap();
    }
    let list = handle_control(&pool, "temperature.list", serde_json::json!({"class": "hot"})).unwrap();
    let paths: Vec<&str> = list.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/hot"]);
    let list = handle_control(&pool, "temperature.list", serde_json::json!({"class": "cold"})).unwrap();
    assert_eq!(list[0]["path"], "/cold");
    let id = list[0]["id"].as_str().unwrap().to_string();
    let one = handle_control(&pool, "temperature.extent_stats", serde_json::json!({ "extent": id })).unwrap();
    assert_eq!(one["hmm_state"], "cold");
    assert_eq!(one["current_policy"], "replication:2");
    assert!(handle_control(&pool, "temperature.extent_stats", serde_json::json!({"extent": "nope"})).is_err());
    assert!(handle_control(&pool, "temperature.list", serde_json::json!({"class": "tepid"})).is_err());
    assert!(handle_control(&pool, "temperature.frobnicate", serde_json::Value::Null).is_err());
}

fn setting(pool: &Pool, key: &str) -> dynamicfs::temperature::SettingRow {
    pool.temperature_settings().into_iter().find(|r| r.key == key).unwrap()
}

fn set(pool: &Pool, kv: &[(&str, &str)]) -> Result<Vec<dynamicfs::temperature::SettingRow>, String> {
    let kv: Vec<(String, String)> = kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    pool.set_temperature_settings(&kv, &[]).map_err(|e| e.to_string())
}

#[test]
fn operator_settings_are_validated_used_at_once_and_persist() {
    let clock = TestClock::new(T0);
    let devs = devices(6, "erasure:4+2");
    let pool = open_with(&devs, config(&clock));
    assert!(pool.temperature_settings().iter().all(|r| r.source == "default" && r.value == r.default));
    assert_eq!(setting(&pool, "classifier").value, "hmm");
    let (ino, data) = file(&pool, "f", MIB, 3);
    let id = extents_of(&pool, "/f")[0].0;
    // One read an hour: the threshold view says hot (read within the
    // hour), the HMM does not; the HMM decides, so nothing is queued.
    for _ in 0..6 {
        clock.advance(HOUR);
        assert_eq!(pool.read(ino, 0, MIB).unwrap(), data);
    }
    let s = pool.extent_stats(id).unwrap();
    assert_eq!(s.threshold_class, Temp::Hot, "{s:?}");
    assert_ne!(s.class, Temp::Hot, "{s:?}");
    assert!(pool.temperature().queue().is_empty());

    // Refused, each with nothing changed: a bad value, a key that does not
    // exist, warm above hot, a bad value beside a good one.
    let before = pool.state_snapshot();
    for bad in [
        &[("hot_ops_per_day", "lots")][..],
        &[("hotness", "1")],
        &[("warm_ops_per_day", "500")],
        &[("classifier", "threshold"), ("cold_policy", "erasure:1+0")],
    ] {
        let e = set(&pool, bad).unwrap_err();
        assert!(!e.contains('\n') && e.contains(bad.last().unwrap().0), "{e}");
    }
    assert!(pool.set_temperature_settings(&[], &["bogus".to_string()]).is_err());
    assert_eq!(pool.state_snapshot(), before, "a refused setting changed the pool");
    assert_eq!(pool.temperature().settings(), Settings::default());

    // The threshold view decides from now on, and hot means replication:2.
    let rows = set(&pool, &[("classifier", "threshold"), ("hot_policy", "replication:02")]).unwrap();
    let hot = rows.iter().find(|r| r.key == "hot_policy").unwrap();
    assert_eq!(
        (hot.value.as_str(), hot.default.as_str(), hot.source.as_str()),
        ("replication:2", "replication:3", "pool")
    );
    let s = pool.extent_stats(id).unwrap();
    assert_eq!((s.class, s.target_policy.as_deref()), (Temp::Hot, Some("replication:2")), "{s:?}");
    clock.advance(HOUR);
    assert_eq!(pool.read(ino, 0, MIB).unwrap(), data);
    assert_eq!(pool.temperature().queue().len(), 1);
    assert!(matches!(pool.run_migrations()[..], [Ok(Outcome::Migrated { .. })]));
    assert_eq!(extents_of(&pool, "/f")[0].1, "replication:2");
    // Both thresholds at once are consistent.
    set(&pool, &[("warm_ops_per_day", "500"), ("hot_ops_per_day", "1000"), ("migrate", "off")]).unwrap();
    assert_eq!(setting(&pool, "hot_ops_per_day").value, "1000");

    // Switched off: a read that would move the extent queues nothing.
    set(&pool, &[("hot_policy", "replication:3")]).unwrap();
    clock.advance(HOUR);
    assert_eq!(pool.read(ino, 0, MIB).unwrap(), data);
    assert!(pool.temperature().queue().is_empty(), "migrate=off still queued");

    // Committed by the set itself: a power cut keeps it.
    drop(pool);
    for (i, d) in devs.iter().enumerate() {
        d.crash_now();
        d.power_cycle(i as u64).unwrap();
    }
    let pool = open_with(&devs, config(&clock));
    let t = pool.temperature().settings();
    assert_eq!((t.classifier, t.migrate, t.threshold.hot_ops_per_day), (Classifier::Threshold, false, 1000.0));
    assert_eq!(setting(&pool, "warm_ops_per_day").source, "pool");
    assert_eq!(setting(&pool, "hot_recent_secs").source, "default");
    // Back to the defaults, key by key.
    let keys: Vec<String> = pool.temperature_settings().into_iter().map(|r| r.key).collect();
    pool.set_temperature_settings(&[], &keys).unwrap();
    assert_eq!(pool.temperature().settings(), Settings::default());
    assert!(pool.state_snapshot().temperature_settings.is_empty());
    pool.close().unwrap();
}

#[test]
fn a_changed_migration_rate_reaches_the_running_worker() {
    let clock = TestClock::new(T0);
    let devs = devices(6, "replication:3");
    let pool = Arc::new(open_with(&devs, config(&clock)));
    // One migration every 100 s.
    set(&pool, &[("migration_rate", "0.01")]).unwrap();
    let files: Vec<(Ino, Vec<u8>)> = (0..4).map(|i| file(&pool, &format!("f{i}"), 100_000, i as u8)).collect();
    clock.advance(3 * DAY);
    let worker = pool.start_migration_worker();
    for (ino, d) in &files {
        assert_eq!(&pool.read(*ino, 0, d.len()).unwrap(), d);
    }
    let done = || pool.temperature().queue().done.load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    while done() < 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "the first migration did not run");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The other three wait 100 s each at that rate; the new rate frees them.
    assert!(!pool.temperature().queue().wait_idle(Duration::from_millis(300)));
    assert_eq!(done(), 1);
    set(&pool, &[("migration_rate", "1000")]).unwrap();
    assert!(pool.temperature().queue().wait_idle(Duration::from_secs(20)), "the worker kept the old rate");
    assert_eq!(done(), 4);
    worker.stop();
    for (i, (ino, d)) in files.iter().enumerate() {
        assert_eq!(extents_of(&pool, &format!("/f{i}"))[0].1, "erasure:4+2");
        assert_eq!(&pool.read(*ino, 0, d.len()).unwrap(), d);
    }
}

/// Read `ino` on a thread of its own and wait for it at most 10 s: a read
/// that waited for the stalled migration would never come back.
fn read_on_a_thread(pool: &Arc<Pool>, ino: Ino, want: &[u8]) {
    let (tx, rx) = std::sync::mpsc::channel();
    let (p, len) = (pool.clone(), want.len());
    std::thread::spawn(move || {
        let _ = tx.send(p.read(ino, 0, len));
    });
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("a read waited for the migration worker");
    assert_eq!(got.unwrap(), want, "inode {ino}");
}

#[test]
fn reads_never_wait_for_a_blocked_worker_or_a_full_queue() {
    let clock = TestClock::new(T0);
    let devs = devices(6, "replication:3");
    let pool = Arc::new(open_with(&devs, TemperatureConfig { queue_capacity: 2, ..config(&clock) }));
    let files: Vec<(Ino, Vec<u8>)> = (0..5).map(|i| file(&pool, &format!("f{i}"), 100_000, i as u8)).collect();
    let first = extents_of(&pool, "/f0")[0].clone();
    clock.advance(3 * DAY);
    let q = pool.temperature().queue();
    q.stall_migrations();
    let worker = pool.start_migration_worker();
    // f0 goes cold; the worker takes its migration, writes the new extent
    // and stops there: provably blocked, in the middle of a migration.
    read_on_a_thread(&pool, files[0].0, &files[0].1);
    assert!(q.wait_stalled(Duration::from_secs(20)), "the worker never reached the hook");
    // Meanwhile: the extent being migrated reads back (its old copy), two
    // more fill the queue, the last two find it full and are dropped.
    for (ino, d) in &files {
        read_on_a_thread(&pool, *ino, d);
    }
    read_on_a_thread(&pool, files[0].0, &files[0].1);
    assert_eq!(q.stalled(), 1, "the worker was released before the reads returned");
    assert_eq!(q.len(), 2);
    assert_eq!(q.dropped.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(q.done.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(extents_of(&pool, "/f0")[0], first, "swapped while stalled");
    // Released: the running one and the two queued finish; the dropped two
    // wait for their next read (once they are cold again).
    q.release_migrations();
    assert!(q.wait_idle(Duration::from_secs(30)));
    assert_eq!(q.done.load(std::sync::atomic::Ordering::Relaxed), 3);
    let moved = |i: usize| extents_of(&pool, &format!("/f{i}"))[0].1 == "erasure:4+2";
    assert_eq!((0..5).map(moved).collect::<Vec<_>>(), [true, true, true, false, false]);
    clock.advance(3 * DAY);
    for (ino, d) in &files[3..] {
        read_on_a_thread(&pool, *ino, d);
    }
    assert!(q.wait_idle(Duration::from_secs(30)));
    assert!((0..5).all(moved));
    worker.stop();
    for (ino, d) in &files {
        assert_eq!(&pool.read(*ino, 0, d.len()).unwrap(), d);
    }
}
