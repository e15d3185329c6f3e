//! Rebuild and drain, per extent, on in-memory members:
//! - a failed member's fragments are rebuilt elsewhere, and the IO counted
//!   is exactly what the lost fragments need (K shards read and one shard
//!   written per lost fragment for erasure, one copy read and one written
//!   for replication), by a direct call and by the background worker;
//! - `remove-disk` drains a member while files are read and written, the
//!   member leaves the pool, its superblocks are wiped, and the pool reopens
//!   without it with every byte intact;
//! - bad removals (unknown member, last copies, no room for the policy)
//!   are refused with nothing changed.

use dfs_format::Policy;
use dynamicfs::device::{AlignedBuf, Device, MemDevice};
use dynamicfs::engine::rebuild::{Worker, WorkerOptions};
use dynamicfs::engine::redundancy::shard_len;
use dynamicfs::engine::state::MemberState;
use dynamicfs::engine::{EngineError, FileKind, Ino, Pool, PoolOptions, ROOT_INO};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const BS: u64 = 4096;

fn devices(sizes_mib: &[u64], policy: &str) -> Vec<Arc<MemDevice>> {
    let devs: Vec<Arc<MemDevice>> = sizes_mib.iter().map(|s| Arc::new(MemDevice::new(s << 20, 4096))).collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
    dynamicfs::mkfs::format_devices(&refs, "rebuild", policy.parse().unwrap()).unwrap();
    devs
}

fn open(devs: &[Arc<MemDevice>]) -> Pool {
    let ds: Vec<Arc<dyn Device>> = devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
    Pool::open(ds, PoolOptions { no_lock: true, ..Default::default() }).unwrap()
}

fn data(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|k| ((k * 31 + i * 7) % 251) as u8).collect()
}

fn fill(pool: &Pool, n: usize) -> Vec<(Ino, Vec<u8>)> {
    let files = (0..n)
        .map(|i| {
            let name = format!("f{i}");
            let (ino, _) = pool.create(ROOT_INO, name.as_bytes(), FileKind::File, 0o644, 0, 0, 0).unwrap();
            let d = data(i, 2 * MIB + 4093 * i + 17);
            pool.write(ino, 0, &d).unwrap();
            (ino, d)
        })
        .collect();
    pool.sync_all().unwrap();
    files
}

fn check(pool: &Pool, files: &[(Ino, Vec<u8>)]) {
    for (ino, d) in files {
        assert!(pool.read(*ino, 0, d.len()).unwrap() == *d, "inode {ino} differs");
    }
}

/// The IO a rebuild of the fragments on `member` must cost: per affected
/// extent, what one lost fragment needs.
fn expected_io(pool: &Pool, member: u32) -> (u64, u64, u64) {
    let (mut n, mut read, mut written) = (0, 0, 0);
    for e in pool.list_extents() {
        if !e.fragments.iter().any(|f| f.member == member) {
            continue;
        }
        let p: Policy = e.policy.parse().unwrap();
        let shard = shard_len(p, e.len) as u64;
        n += 1;
        read += match p {
            Policy::Replication { .. } => e.len as u64,
            Policy::Erasure { data, .. } => data as u64 * shard,
        };
        written += BS + shard.div_ceil(BS) * BS;
    }
    (n, read, written)
}

#[test]
fn erasure_rebuild_reads_k_shards_and_writes_only_the_lost_one() {
    // 7 members of different sizes, erasure:4+2: one spare member per extent.
    let devs = devices(&[96, 64, 80, 128, 64, 72, 100], "erasure:4+2");
    let pool = open(&devs);
    let files = fill(&pool, 5);
    let (n, read, written) = expected_io(&pool, 2);
    assert!(n >= 5, "member 2 holds fragments of {n} extents");
    pool.set_member_state(2, MemberState::Failed).unwrap();
    assert_eq!(pool.degraded_extents().len() as u64, n);
    let io = pool.rebuild_all(usize::MAX).unwrap();
    assert_eq!((io.extents, io.fragments), (n, n));
    assert_eq!(io.bytes_read, read, "rebuild read more (or less) than K shards per extent");
    assert_eq!(io.bytes_written, written, "rebuild wrote more than the lost fragments");
    assert!(pool.degraded_extents().is_empty());
    assert!(pool.list_extents().iter().all(|e| e.fragments.iter().all(|f| f.member != 2)));
    check(&pool, &files);
    // Durable: reopen without the failed member.
    pool.close().unwrap();
    let rest: Vec<Arc<MemDevice>> = devs.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, d)| d.clone()).collect();
    let pool = open(&rest);
    assert!(pool.degraded_extents().is_empty());
    check(&pool, &files);
}

#[test]
fn background_worker_rebuilds_replicas_with_counted_io() {
    let devs = devices(&[64, 96, 128, 80], "replication:2");
    let pool = Arc::new(open(&devs));
    let files = fill(&pool, 4);
    let (n, read, written) = expected_io(&pool, 1);
    assert!(n >= 4);
    let worker =
        Worker::start(pool.clone(), WorkerOptions { bytes_per_sec: 1 << 30, idle: Duration::from_millis(50) }).unwrap();
    pool.set_member_state(1, MemberState::Failed).unwrap();
    worker.kick();
    let t0 = Instant::now();
    while worker.status().rebuild.fragments < n {
        assert!(t0.elapsed() < Duration::from_secs(30), "worker stuck: {:?}", worker.status());
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = worker.status();
    assert_eq!(st.rebuild.fragments, n, "{st:?}");
    assert_eq!(st.rebuild.bytes_read, read, "one replica read per extent");
    assert_eq!(st.rebuild.bytes_written, written, "one replica written per extent");
    assert_eq!(st.errors, 0, "{st:?}");
    drop(worker);
    assert!(pool.degraded_extents().is_empty());
    check(&pool, &files);
}

#[test]
fn remove_disk_drains_while_files_are_read_and_written() {
    let devs = devices(&[64, 96, 128, 80], "replication:2");
    let pool = Arc::new(open(&devs));
    let files = fill(&pool, 4);
    // Placement is random: member 1 holds some fragments, how many varies.
    let on1 = pool.extents_on(1).len() as u64;
    assert!(on1 > 0);
    pool.start_removal(1).unwrap();
    assert_eq!(pool.draining_members(), vec![1]);
    let worker =
        Worker::start(pool.clone(), WorkerOptions { bytes_per_sec: 16 << 20, idle: Duration::from_millis(20) })
            .unwrap();
    // Readers and a writer run throughout the drain.
    let done = Arc::new(AtomicBool::new(false));
    let written: Vec<(Ino, Vec<u8>)> = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut rounds = 0;
            while !done.load(Ordering::SeqCst) || rounds == 0 {
                check(&pool, &files);
                rounds += 1;
            }
            rounds
        });
        let writer = s.spawn(|| {
            let mut out = Vec::new();
            let mut i = 100;
            while !done.load(Ordering::SeqCst) || out.is_empty() {
                let name = format!("new{i}");
                let (ino, _) = pool.create(ROOT_INO, name.as_bytes(), FileKind::File, 0o644, 0, 0, 0).unwrap();
                let d = data(i, MIB + 999);
                pool.write(ino, 0, &d).unwrap();
                pool.fsync(ino).unwrap();
                out.push((ino, d));
                i += 1;
            }
            out
        });
        let t0 = Instant::now();
        while !worker.status().removed.contains(&1) {
            assert!(t0.elapsed() < Duration::from_secs(60), "drain stuck: {:?}", worker.status());
            std::thread::sleep(Duration::from_millis(20));
        }
        done.store(true, Ordering::SeqCst);
        assert!(reader.join().unwrap() >= 1);
        writer.join().unwrap()
    });
    let st = worker.status();
    drop(worker);
    assert_eq!(st.drain.fragments, on1, "every fragment of member 1 moved, once: {st:?}");
    assert_eq!(st.errors, 0, "{st:?}");
    let m = pool.list_members();
    assert_eq!(m[1].state, "removed");
    assert_eq!(m[1].fragments, 0);
    assert!(pool.extents_on(1).is_empty());
    check(&pool, &files);
    check(&pool, &written);
    // Both superblocks of the removed member are wiped.
    let mut b = AlignedBuf::zeroed(4096);
    devs[1].read_at(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0), "primary superblock left");
    devs[1].read_at(devs[1].size() - 4096, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0), "backup superblock left");
    let pool = Arc::try_unwrap(pool).unwrap();
    pool.close().unwrap();
    // The pool opens without it, nothing degraded, every byte there.
    let rest = vec![devs[0].clone(), devs[2].clone(), devs[3].clone()];
    let pool = open(&rest);
    assert!(pool.degraded_extents().is_empty());
    assert_eq!(pool.list_members()[1].state, "removed");
    check(&pool, &files);
    check(&pool, &written);
}

#[test]
fn bad_removals_are_refused_and_change_nothing() {
    let devs = devices(&[64, 64], "replication:2");
    let pool = open(&devs);
    let files = fill(&pool, 1);
    let before = pool.list_members();
    match pool.start_removal(7) {
        Err(EngineError::Invalid(m)) => assert!(m.contains("no member 7"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Removing either member would leave one copy of replication:2 data.
    match pool.start_removal(0) {
        Err(e @ EngineError::PolicyUnsatisfiable { .. }) => {
            assert!(e.to_string().contains("replication:2"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let after = pool.list_members();
    assert_eq!(before.iter().map(|m| &m.state).collect::<Vec<_>>(), after.iter().map(|m| &m.state).collect::<Vec<_>>());
    check(&pool, &files);

    // No room: the others cannot hold what the member holds.
    let devs = devices(&[64, 32, 32], "replication:1");
    let pool = open(&devs);
    let (ino, _) = pool.create(ROOT_INO, b"big", FileKind::File, 0o644, 0, 0, 0).unwrap();
    let big = data(3, 90 * MIB);
    pool.write(ino, 0, &big).unwrap();
    pool.sync_all().unwrap();
    let on0 = pool.extents_on(0).len();
    assert!(on0 > 0);
    match pool.start_removal(0) {
        Err(EngineError::NoSpace(m)) => assert!(m.contains("member 0"), "{m}"),
        other => panic!("{other:?} ({on0} extents on member 0)"),
    }
    assert_eq!(pool.list_members()[0].state, "online");
}

#[test]
fn three_members_grow_to_six_online_then_erasure_and_two_failures() {
    // The scenario on memory members of different sizes: 3
    // members, files written, 3 members added to the open pool, the pool
    // changed to erasure:4+2, two members failed: every byte reads back,
    // also after a reopen.
    let devs = devices(&[64, 96, 80], "replication:2");
    let pool = open(&devs);
    let files = fill(&pool, 4);
    let added: Vec<Arc<MemDevice>> = [72u64, 128, 64].iter().map(|s| Arc::new(MemDevice::new(s << 20, 4096))).collect();
    for (i, d) in added.iter().enumerate() {
        assert_eq!(pool.add_member(d.clone()).unwrap(), 3 + i as u32);
    }
    assert_eq!(pool.list_members().len(), 6);
    assert!(pool.list_members().iter().all(|m| m.state == "online"));
    let target: Policy = "erasure:4+2".parse().unwrap();
    pool.change_policy(ROOT_INO, "/", true, target, &|_, _| {}).unwrap();
    assert!(pool.list_extents().iter().all(|e| e.policy == "erasure:4+2"));
    // New members hold fragments now.
    assert!(pool.list_members()[3..].iter().all(|m| m.fragments > 0));
    pool.set_member_state(1, MemberState::Failed).unwrap();
    pool.set_member_state(4, MemberState::Failed).unwrap();
    check(&pool, &files);
    pool.close().unwrap();
    let all: Vec<Arc<MemDevice>> = devs.iter().chain(added.iter()).cloned().collect();
    let pool = open(&all);
    assert_eq!(pool.list_members().len(), 6);
    check(&pool, &files);
    // And without the two failed members at all.
    let four: Vec<Arc<MemDevice>> =
        all.iter().enumerate().filter(|(i, _)| *i != 1 && *i != 4).map(|(_, d)| d.clone()).collect();
    let pool = open(&four);
    check(&pool, &files);
}

#[test]
fn interrupted_change_is_stoppable_and_the_worker_resumes_it() {
    // A change cut short (here: its progress callback panics after 5
    // extents, leaving it Running as a crash would) is resumed by
    // `resume_policy_changes_until`, which stops between two extents when
    // asked (the change stays Running with its progress); the background
    // worker of a mount then finishes it. The history keeps one record,
    // with both interruptions noted, and every byte reads back.
    let devs = devices(&[64, 96, 80, 72], "replication:2");
    let pool = Arc::new(open(&devs));
    let files = fill(&pool, 6);
    let target: Policy = "erasure:2+1".parse().unwrap();
    let cut = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.change_policy(ROOT_INO, "/", true, target, &|done, _| assert!(done < 5, "power cut"))
    }));
    assert!(cut.is_err());
    let h = pool.policy_history();
    assert_eq!((h.len(), h[0].extents_done), (1, 5), "{h:?}");
    let total = h[0].extents_total;
    assert!(total > 10, "{h:?}");

    // Resume, stopped after two more extents (`stop` is asked before the
    // change, then before each extent).
    let asked = std::cell::Cell::new(0);
    let stopped = pool
        .resume_policy_changes_until(&|_, _| {}, &|| {
            asked.set(asked.get() + 1);
            asked.get() > 3
        })
        .unwrap();
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].state, dynamicfs::engine::state::ChangeState::Running);
    assert_eq!(stopped[0].extents_done, 7, "{stopped:?}");
    assert_eq!(stopped[0].message, format!("interrupted at 5/{total} extents; resumed"));
    check(&pool, &files);

    // A mount's worker finishes it on its own.
    let worker = Worker::start(pool.clone(), WorkerOptions::default()).unwrap();
    let start = Instant::now();
    while pool.policy_history()[0].state != dynamicfs::engine::state::ChangeState::Done {
        assert!(start.elapsed() < Duration::from_secs(60), "{:?}", pool.policy_history());
        std::thread::sleep(Duration::from_millis(20));
    }
    worker.stop();
    let h = pool.policy_history();
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].extents_done, h[0].extents_total), (total, total));
    assert_eq!(
        h[0].message,
        format!("interrupted at 5/{total} extents; resumed; interrupted at 7/{total} extents; resumed")
    );
    assert!(pool.list_extents().iter().all(|e| e.policy == "erasure:2+1"));
    check(&pool, &files);
}
