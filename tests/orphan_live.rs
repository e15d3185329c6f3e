//! Orphan GC of an open ("mounted") pool (`engine::orphans::detect_live` /
//! `cleanup_live`, what the mount's `orphans.*` control methods run), on
//! in-memory members behind `FaultyDevice`s.
//!
//! The story: a first session commits a file, then writes a second one
//! whose fragments reach the disk but whose commit never happens (the
//! devices are synced, then the power is cut). A second session is the
//! mounted pool: it writes a third file and flushes it without a commit
//! (fragments written and allocated, not durable), and a writer thread
//! keeps writing and fsyncing a fourth while the GC runs. What is pinned:
//! - the judge on disk (the unmounted scan) calls the flushed-but-not-
//!   committed fragments orphans; the mounted scan does not (the engine's
//!   allocators hold them) and lists exactly the crashed write's fragments;
//! - `--dry-run` erases nothing; `min_age` keeps young ones;
//! - a cleanup under a busy writer erases exactly the crashed write's
//!   orphan fragments (plus superseded checkpoint copies), never a block a
//!   committed or in-flight fragment occupies;
//! - afterwards every file reads back byte-exact after a reopen, fsck exits
//!   0 and the unmounted scan finds no orphan;
//! - a read-only pool refuses a cleanup.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dfs_format::Policy;
use dynamicfs::device::{Device, FaultyDevice, MemDevice};
use dynamicfs::engine::orphans::{self, CleanupOptions};
use dynamicfs::engine::{EngineError, FileKind, Pool, PoolOptions, ROOT_INO};
use dynamicfs::fsck::{check_pool, FsckOptions, UnreferencedKind};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

fn devices(devs: &[Arc<FaultyDevice>]) -> Vec<Arc<dyn Device>> {
    devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect()
}

fn open(devs: &[Arc<FaultyDevice>], read_only: bool) -> Pool {
    Pool::open(devices(devs), PoolOptions { read_only, no_lock: true, ..Default::default() }).unwrap()
}

fn write_file(pool: &Pool, name: &[u8], data: &[u8]) -> u64 {
    let (ino, _) = pool.create(ROOT_INO, name, FileKind::File, 0o644, 0, 0, 0).unwrap();
    pool.write(ino, 0, data).unwrap();
    ino
}

/// (member, block) of every orphan-kind entry.
fn orphan_set<'a>(list: impl Iterator<Item = &'a orphans::OrphanInfo>) -> BTreeSet<(u32, u64)> {
    list.filter(|o| o.kind == UnreferencedKind::Orphan).map(|o| (o.member, o.block)).collect()
}

#[test]
fn mounted_gc_frees_crash_orphans_and_never_in_flight_fragments() {
    let devs: Vec<Arc<FaultyDevice>> = (0..3)
        .map(|i| Arc::new(FaultyDevice::new(Arc::new(MemDevice::named(&format!("mem{i}"), 96 << 20, 4096)))))
        .collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
    dynamicfs::mkfs::format_devices(&refs, "gc", "erasure:2+1".parse::<Policy>().unwrap()).unwrap();

    // Session 1: one file committed, one written whose commit never happens.
    let kept = pattern(3 * MIB + 17, 1);
    let lost = pattern(24 * MIB, 2);
    {
        let p = open(&devs, false);
        let ino = write_file(&p, b"kept", &kept);
        p.fsync(ino).unwrap();
        let ino = write_file(&p, b"lost", &lost);
        p.flush(ino).unwrap();
        for d in &devs {
            d.sync().unwrap(); // the fragments are durable, the commit is not
            d.crash_now();
        }
    }
    for d in &devs {
        d.power_cycle(7).unwrap();
    }

    // Session 2: the mounted pool.
    let pool = Arc::new(open(&devs, false));
    assert!(pool.lookup(ROOT_INO, b"lost").is_err(), "the crashed file was never committed");
    let planted = orphan_set(orphans::detect(&devices(&devs)).unwrap().orphans.iter());
    // 24 extents of 3 fragments each were written; the open's fresh
    // checkpoint may reuse the free space of one of them.
    assert!(planted.len() >= 23 * 3 && planted.len() % 3 == 0, "{planted:?}");

    // A write flushed but not committed: on disk, unreferenced by the
    // durable metadata; in the engine, allocated.
    let inflight = pattern(2 * MIB + 5, 3);
    let inflight_ino = write_file(&pool, b"inflight", &inflight);
    pool.flush(inflight_ino).unwrap();
    let st = pool.state_snapshot();
    let dynamicfs::engine::state::Body::File(map) = &st.inodes[&inflight_ino].body else { panic!("not a file") };
    let inflight_locs: BTreeSet<(u32, u64)> =
        map.values().flat_map(|id| st.extents[id].frags.iter().map(|f| (f.member, f.block))).collect();
    assert_eq!(inflight_locs.len(), 3 * 3);
    let on_disk = orphan_set(orphans::detect(&devices(&devs)).unwrap().orphans.iter());
    assert!(on_disk.is_superset(&inflight_locs), "the disk's judge calls the in-flight fragments orphans");
    let live = orphans::detect_live(&pool);
    assert!(live.trustworthy, "{:?}", live.problems);
    // New writes may land on (and overwrite) the crashed write's free space.
    let planted: BTreeSet<(u32, u64)> = planted.intersection(&orphan_set(live.orphans.iter())).copied().collect();
    assert_eq!(orphan_set(live.orphans.iter()), planted, "the mounted judge keeps the in-flight fragments");
    assert_eq!(on_disk, &planted | &inflight_locs);
    assert!(!planted.is_empty());
    let stats = orphans::stats(&live);
    assert_eq!(stats.by_kind["orphan"].0, planted.len() as u64);

    // Dry run and min-age change nothing.
    let dry = orphans::cleanup_live(&pool, &CleanupOptions { dry_run: true, ..Default::default() }).unwrap();
    assert_eq!(orphan_set(dry.erased.iter()), planted);
    let young =
        orphans::cleanup_live(&pool, &CleanupOptions { min_age: Duration::from_secs(3600), ..Default::default() })
            .unwrap();
    assert!(young.erased.is_empty());
    assert_eq!(orphan_set(young.kept_young.iter()), planted);
    assert_eq!(orphan_set(orphans::detect_live(&pool).orphans.iter()), planted, "nothing erased yet");

    // A busy writer while the GC runs.
    // It writes new files (nothing it writes is superseded, so every orphan
    // the GC meets is one of the crashed write's).
    let busy = pattern(2 * MIB + 333, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pool, busy, stop) = (pool.clone(), busy.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rounds = 0;
            while rounds < 2 || (rounds < 4 && !stop.load(Ordering::SeqCst)) {
                let name = format!("busy{rounds}");
                let (ino, _) = pool.create(ROOT_INO, name.as_bytes(), FileKind::File, 0o644, 0, 0, 0).unwrap();
                for (i, chunk) in busy.chunks(256 * 1024).enumerate() {
                    pool.write(ino, (i * 256 * 1024) as u64, chunk).unwrap();
                    if i % 8 == 7 {
                        pool.fsync(ino).unwrap();
                    }
                }
                pool.fsync(ino).unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    let mut erased = BTreeSet::new();
    let mut kinds = BTreeSet::new();
    for _ in 0..3 {
        let r = orphans::cleanup_live(&pool, &CleanupOptions::default()).unwrap();
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        erased.extend(orphan_set(r.erased.iter()));
        kinds.extend(r.erased.iter().map(|o| format!("{:?}", o.kind)));
        // Nothing erased is a block a committed fragment occupies now.
        let st = pool.state_snapshot();
        for (_, _, f) in st.all_fragments() {
            for o in &r.erased {
                assert!(
                    o.member != f.member || o.block + o.blocks <= f.block || f.block + f.blocks as u64 <= o.block,
                    "erased {o:?} overlaps committed {f:?}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::SeqCst);
    let rounds = writer.join().unwrap();
    println!("writer rounds during the GC: {rounds}; erased kinds: {kinds:?}");
    // What was erased as an orphan was one of the crashed write's
    // fragments; the others were overwritten by new writes first (none
    // is left).
    assert!(erased.is_subset(&planted) && !erased.is_empty(), "{erased:?} vs {planted:?}");
    assert!(orphan_set(orphans::detect_live(&pool).orphans.iter()).is_empty());

    pool.fsync(inflight_ino).unwrap();
    let pool = Arc::try_unwrap(pool).unwrap();
    pool.close().unwrap();

    // Every file byte-exact after a reopen; fsck clean; no orphan on disk.
    let p = open(&devs, true);
    let mut files = vec![(b"kept".to_vec(), &kept), (b"inflight".to_vec(), &inflight)];
    files.extend((0..rounds).map(|r| (format!("busy{r}").into_bytes(), &busy)));
    for (name, data) in files {
        let name = &name[..];
        let (ino, attrs) = p.lookup(ROOT_INO, name).unwrap();
        assert_eq!(attrs.size, data.len() as u64);
        assert!(p.read(ino, 0, data.len()).unwrap() == *data, "{} differs", String::from_utf8_lossy(name));
    }
    let ro = orphans::cleanup_live(&p, &CleanupOptions::default()).unwrap_err();
    assert!(matches!(ro, EngineError::ReadOnly), "{ro}");
    drop(p);
    let lock = tempfile::tempdir().unwrap();
    let opts = FsckOptions { verify_data: true, lock_dir: Some(lock.path().into()), ..Default::default() };
    let r = check_pool(&devices(&devs), &opts).unwrap();
    assert_eq!(r.exit_code, 0, "{:#?}", r.findings);
    assert_eq!(r.stats.orphans, 0);
    assert!(orphan_set(orphans::detect(&devices(&devs)).unwrap().orphans.iter()).is_empty());
}
