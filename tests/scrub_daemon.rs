//! The scrub daemon through its Rust API (`engine::scrub_daemon`), on
//! in-memory pools (`FaultyDevice` over `MemDevice`), as the mount runs it:
//!
//! - a flipped payload byte is found and repaired by a pass; the pool then
//!   passes fsck with payload hashing and the file reads back byte-exact;
//! - pause stops progress (nothing moves while paused), resume finishes the
//!   pass;
//! - stop mid-pass, close, reopen: the persisted position resumes the pass
//!   (the extents done before are not done again: the pass total equals the
//!   pool's extent count, and its bytes the pool's fragment bytes);
//! - the rate limit holds: a pass takes at least ~bytes/rate, and the
//!   measured rate stays under the budget (generous bounds: 2 cores shared);
//! - the control handler answers every method, refuses unknown ones and bad
//!   params; the schedule (continuous) starts a pass on its own, and `due`
//!   follows nightly / weekly / off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_format::Policy;
use dynamicfs::device::{Device, FaultyDevice, MemDevice};
use dynamicfs::engine::scrub_daemon::{
    due, handle_control, record, set_schedule, DaemonState, Intensity, ScrubDaemon, ScrubStatus,
};
use dynamicfs::engine::state::{Body, ScrubFrequency, ScrubRecord};
use dynamicfs::engine::{FileKind, Ino, Pool, PoolOptions, ROOT_INO};
use dynamicfs::fsck::{check_pool, FsckOptions};

const MIB: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 10) as u8).collect()
}

struct Mem {
    devs: Vec<Arc<FaultyDevice>>,
    data: Vec<u8>,
}

impl Mem {
    /// Three members, `replication:2`, one file `/f` of `extents` MiB.
    fn new(extents: usize) -> Mem {
        let devs: Vec<Arc<FaultyDevice>> = (0..3)
            .map(|i| Arc::new(FaultyDevice::new(Arc::new(MemDevice::named(&format!("mem{i}"), 128 * MIB, 4096)))))
            .collect();
        let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
        dynamicfs::mkfs::format_devices(&refs, "scrubd", "replication:2".parse::<Policy>().unwrap()).unwrap();
        let m = Mem { devs, data: pattern(extents * MIB as usize - 123, 7) };
        let pool = m.open();
        let (ino, _) = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap();
        pool.write(ino, 0, &m.data).unwrap();
        pool.fsync(ino).unwrap();
        pool.close().unwrap();
        m
    }

    fn devices(&self) -> Vec<Arc<dyn Device>> {
        self.devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect()
    }

    fn open(&self) -> Pool {
        Pool::open(self.devices(), PoolOptions { no_lock: true, ..Default::default() }).unwrap()
    }

    fn file(pool: &Pool) -> Ino {
        pool.lookup(ROOT_INO, b"f").unwrap().0
    }

    fn fsck_exit(&self) -> u8 {
        let lock = tempfile::tempdir().unwrap();
        let opts = FsckOptions { verify_data: true, lock_dir: Some(lock.path().to_path_buf()), ..Default::default() };
        check_pool(&self.devices(), &opts).unwrap().exit_code
    }
}

/// Fragment bytes of the whole pool (what a pass reads).
fn fragment_bytes(pool: &Pool) -> u64 {
    let st = pool.state_snapshot();
    st.extents.values().map(|e| e.frags.len() as u64 * e.len as u64).sum()
}

fn wait_idle(d: &ScrubDaemon, limit: Duration) -> ScrubStatus {
    let start = Instant::now();
    loop {
        let s = d.status();
        if s.state == DaemonState::Idle {
            return s;
        }
        assert!(start.elapsed() < limit, "the pass did not end in {limit:?}: {s:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_pass_finds_and_repairs_a_flipped_byte() {
    let m = Mem::new(4);
    let pool = Arc::new(m.open());
    let e = {
        let st = pool.state_snapshot();
        let Body::File(map) = &st.inodes[&Mem::file(&pool)].body else { panic!() };
        st.extents[&map[&2]].clone()
    };
    let f = e.frags[1];
    let layout = pool.members()[f.member as usize].as_ref().unwrap().layout.clone();
    m.devs[f.member as usize].flip_bit(layout.data_offset(f.block) + 4096 + 5000, 2).unwrap();

    let d = ScrubDaemon::new(pool.clone());
    d.start(Some(Intensity::High)).unwrap();
    let s = wait_idle(&d, Duration::from_secs(30));
    assert_eq!(s.passes_completed, 1);
    assert_eq!(s.extents_done, 4);
    assert_eq!(s.extents_total, 4);
    assert_eq!((s.errors, s.repaired, s.unrepairable), (1, 1, 0), "{s:#?}");
    assert_eq!(s.recent_errors[0].kind, "payload");
    assert_eq!(s.recent_errors[0].member, f.member);
    assert!(s.bytes_done >= fragment_bytes(&pool) - 4096, "{} of {}", s.bytes_done, fragment_bytes(&pool));
    // Persisted: the pass is recorded as finished.
    let rec = record(&pool);
    assert!(!rec.running && rec.cursor.is_none() && rec.pass_finished_ns > 0);
    drop(d);
    let pool = Arc::try_unwrap(pool).unwrap();
    pool.close().unwrap();
    assert_eq!(m.fsck_exit(), 0, "clean after the daemon's repair");
    let pool = m.open();
    assert!(pool.read(Mem::file(&pool), 0, m.data.len()).unwrap() == m.data);
}

#[test]
fn pause_holds_and_resume_finishes() {
    let m = Mem::new(8);
    let pool = Arc::new(m.open());
    let d = ScrubDaemon::new(pool.clone());
    // 16 MiB of fragments at 4 MiB/s: about 4 s.
    d.start_with_rate(Intensity::Low, 4 * MIB).unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let p = d.pause().unwrap();
    assert_eq!(p.state, DaemonState::Paused);
    std::thread::sleep(Duration::from_millis(200));
    let at_pause = d.status().extents_done;
    assert!(at_pause < 8, "paused before the end: {at_pause}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.status().extents_done, at_pause, "nothing moves while paused");
    assert_eq!(d.status().state, DaemonState::Paused);
    assert!(d.pause().is_err(), "pausing twice is refused");
    // The position was persisted at the pause.
    assert!(record(&pool).running);
    d.resume().unwrap();
    d.start_with_rate(Intensity::High, 256 * MIB).unwrap();
    let s = wait_idle(&d, Duration::from_secs(30));
    assert_eq!((s.extents_done, s.passes_completed), (8, 1));
    assert!(d.resume().is_err());
}

#[test]
fn stop_close_reopen_resumes_the_pass() {
    let m = Mem::new(8);
    let total_bytes;
    let done_before;
    {
        let pool = Arc::new(m.open());
        total_bytes = fragment_bytes(&pool);
        let d = ScrubDaemon::new(pool.clone());
        d.start_with_rate(Intensity::Low, 4 * MIB).unwrap();
        let start = Instant::now();
        while d.status().extents_done < 2 {
            assert!(start.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = d.stop().unwrap();
        done_before = s.extents_done;
        assert!((2..8).contains(&done_before), "{done_before}");
        assert_eq!(s.state, DaemonState::Idle);
        drop(d);
        Arc::try_unwrap(pool).unwrap().close().unwrap();
    }
    // Reopened (an unmount and a mount): the position is there.
    let pool = Arc::new(m.open());
    let rec = record(&pool);
    assert!(rec.running, "{rec:?}");
    assert_eq!(rec.extents_done, done_before);
    assert!(rec.cursor.is_some());
    let d = ScrubDaemon::new(pool.clone());
    d.start(Some(Intensity::High)).unwrap();
    let s = wait_idle(&d, Duration::from_secs(30));
    assert_eq!(s.extents_done, 8, "resumed, not restarted: {s:#?}");
    assert_eq!(s.bytes_done, total_bytes, "every fragment read exactly once in the pass");
    assert!(!record(&pool).running);
}

#[test]
fn rate_limit_is_honoured() {
    let m = Mem::new(8);
    let pool = Arc::new(m.open());
    let bytes = fragment_bytes(&pool);
    let rate = 8 * MIB;
    let d = ScrubDaemon::new(pool.clone());
    let start = Instant::now();
    d.start_with_rate(Intensity::Medium, rate).unwrap();
    let s = wait_idle(&d, Duration::from_secs(60));
    let took = start.elapsed().as_secs_f64();
    let floor = (bytes - 2 * MIB) as f64 / rate as f64;
    assert!(took >= floor * 0.9, "{bytes} bytes at {rate} B/s took {took:.2} s (< {floor:.2} s)");
    assert!(s.rate_bytes_per_sec as f64 <= rate as f64 * 1.3, "measured {} B/s", s.rate_bytes_per_sec);
    eprintln!("rate limit {rate} B/s: {bytes} bytes in {took:.2} s, measured {} B/s", s.rate_bytes_per_sec);
}

#[test]
fn control_methods() {
    let m = Mem::new(2);
    let pool = Arc::new(m.open());
    let d = ScrubDaemon::new(pool.clone());
    let st = handle_control(&d, "scrub.status", serde_json::Value::Null).unwrap();
    assert_eq!(st["state"], "idle");
    assert_eq!(st["extents_total"], 2);
    assert!(handle_control(&d, "scrub.pause", serde_json::Value::Null).is_err());
    let e = handle_control(&d, "scrub.explode", serde_json::Value::Null).unwrap_err();
    assert!(e.to_string().contains("unknown method"), "{e}");
    let e = handle_control(&d, "scrub.start", serde_json::json!({"intensity": "ludicrous"})).unwrap_err();
    assert!(e.to_string().contains("not an intensity"), "{e}");
    let e = handle_control(&d, "scrub.start", serde_json::json!({"intensity": 3})).unwrap_err();
    assert!(e.to_string().contains("bad parameters"), "{e}");
    let st = handle_control(&d, "scrub.start", serde_json::json!({"intensity": "low"})).unwrap();
    assert_eq!(st["intensity"], "low");
    assert_eq!(st["rate_limit_bytes_per_sec"], 16 * MIB);
    let _ = handle_control(&d, "scrub.pause", serde_json::Value::Null);
    let _ = handle_control(&d, "scrub.resume", serde_json::Value::Null);
    handle_control(&d, "scrub.start", serde_json::json!({"intensity": "high"})).unwrap();
    wait_idle(&d, Duration::from_secs(30));
    let st = handle_control(&d, "scrub.status", serde_json::json!({})).unwrap();
    assert_eq!(st["extents_done"], 2);
    assert!(handle_control(&d, "scrub.stop", serde_json::Value::Null).is_err(), "nothing to stop");
}

#[test]
fn schedule_starts_a_pass_and_due_follows_the_frequency() {
    let m = Mem::new(2);
    let pool = Arc::new(m.open());
    let rec = set_schedule(&pool, ScrubFrequency::Continuous, Intensity::High).unwrap();
    assert_eq!(rec.frequency, ScrubFrequency::Continuous);
    let d = Arc::new(ScrubDaemon::new(pool.clone()));
    d.run_schedule_every(Duration::from_millis(50));
    let start = Instant::now();
    while d.status().passes_completed < 2 {
        assert!(start.elapsed() < Duration::from_secs(30), "{:#?}", d.status());
        std::thread::sleep(Duration::from_millis(20));
    }
    // A user stop is respected by the schedule.
    let _ = d.stop();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(d.status().state, DaemonState::Idle);
    d.shutdown();
    drop(d);
    // Stored in the pool: survives a reopen.
    Arc::try_unwrap(pool).unwrap().close().unwrap();
    let pool = m.open();
    assert_eq!(record(&pool).frequency, ScrubFrequency::Continuous);
    assert_eq!(record(&pool).intensity, Intensity::High.code());

    let day = 24 * 3600 * 1_000_000_000i64;
    let now = 100 * day;
    let at = |frequency, started: i64, running| ScrubRecord {
        frequency,
        pass_started_ns: started,
        running,
        ..Default::default()
    };
    assert!(!due(&at(ScrubFrequency::Off, 0, true), now));
    assert!(due(&at(ScrubFrequency::Nightly, 0, false), now), "never scrubbed");
    assert!(!due(&at(ScrubFrequency::Nightly, now - day / 2, false), now));
    assert!(due(&at(ScrubFrequency::Nightly, now - day, false), now));
    assert!(!due(&at(ScrubFrequency::Weekly, now - 6 * day, false), now));
    assert!(due(&at(ScrubFrequency::Weekly, now - 7 * day, false), now));
    assert!(due(&at(ScrubFrequency::Weekly, now - 60, true), now), "an interrupted pass resumes");
    assert!(due(&at(ScrubFrequency::Continuous, now - 1, false), now));
}
