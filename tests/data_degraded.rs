//! Degraded reads, bit rot and lazy repair (issue 5).
//!
//! On `FaultyDevice` members (a `MemDevice` inside), for every policy in
//! [`POLICIES`]:
//!
//! - every pattern of lost fragments the policy tolerates (fragments made
//!   unreadable by a fault hook failing every read of their member) reads
//!   back byte-exact, and the lost fragments are rebuilt on other members;
//!   after commit + reopen every fragment of every extent verifies when read
//!   straight from its device;
//! - every pattern of one loss more fails with `DataLost` (EIO), reports the
//!   extent, and never returns wrong data;
//! - the same members missing from the open read back too;
//! - a bit flipped in a fragment's payload and one in a fragment's header
//!   are detected, the read returns correct data, and the fragment is
//!   rewritten (on the same member: rot is not a failed disk);
//!
//! plus read-after-write verification (`PoolOptions::verify_writes`), reads
//! and writes of different files running while a read is stuck in a
//! device, write-behind (failed fragment writes reported by fsync and
//! retried; overwrites and unlinks while writes are in flight), and the
//! the loss, one-loss-too-many and bit-flip cases of every policy again on
//! real loop devices (skipped without root and `/dev/loop-control`).

#[allow(unused_imports)]
mod common;

use dfs_format::{FragmentHeader, Policy};
use dynamicfs::device::{AlignedBuf, Device, Fault, FaultyDevice, IoKind, MemDevice, RawDevice, RawOpenOptions};
use dynamicfs::engine::redundancy;
use dynamicfs::engine::state::Extent;
use dynamicfs::engine::{EngineError, FileKind, Ino, Pool, PoolOptions, ROOT_INO};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const POLICIES: [&str; 5] = ["replication:2", "replication:3", "erasure:2+1", "erasure:4+2", "erasure:3+2"];

/// A pool on `FaultyDevice` members, formatted before wrapping.
struct Rig {
    faulty: Vec<Arc<FaultyDevice>>,
    opts: PoolOptions,
}

impl Rig {
    fn new(inner: Vec<Arc<dyn Device>>, policy: Policy) -> Rig {
        let refs: Vec<&dyn Device> = inner.iter().map(|d| d.as_ref()).collect();
        dynamicfs::mkfs::format_devices(&refs, "degraded", policy).expect("mkfs");
        let faulty = inner.into_iter().map(|d| Arc::new(FaultyDevice::new(d))).collect();
        Rig { faulty, opts: PoolOptions { no_lock: true, ..Default::default() } }
    }

    fn mem(n: usize, size: u64, policy: Policy) -> Rig {
        Rig::new((0..n).map(|_| Arc::new(MemDevice::new(size, 4096)) as Arc<dyn Device>).collect(), policy)
    }

    fn open(&self) -> Pool {
        self.open_without(&[])
    }

    /// Open with the members in `missing` left out.
    fn open_without(&self, missing: &[usize]) -> Pool {
        let ds: Vec<Arc<dyn Device>> = self
            .faulty
            .iter()
            .enumerate()
            .filter(|(i, _)| !missing.contains(i))
            .map(|(_, d)| d.clone() as Arc<dyn Device>)
            .collect();
        Pool::open(ds, self.opts.clone()).expect("open")
    }

    /// Every read of these members fails.
    fn fail_reads(&self, members: &[u32]) {
        for &m in members {
            self.faulty[m as usize].set_fault_hook(Box::new(|op| (op.kind == IoKind::Read).then_some(Fault::Error)));
        }
    }

    fn heal(&self) {
        for d in &self.faulty {
            d.clear_fault_hook();
        }
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// All k-element subsets of 0..n.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn go(start: usize, n: usize, k: usize, cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if cur.len() == k {
            out.push(cur.clone());
            return;
        }
        for i in start..n {
            cur.push(i);
            go(i + 1, n, k, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    go(0, n, k, &mut Vec::new(), &mut out);
    out
}

/// Create `name` holding `data`, fsynced; returns its inode and extents.
fn put_file(pool: &Pool, name: &str, data: &[u8]) -> (Ino, Vec<Extent>) {
    let (ino, _) = pool.create(ROOT_INO, name.as_bytes(), FileKind::File, 0o644, 0, 0, 0).expect("create");
    pool.write(ino, 0, data).expect("write");
    pool.fsync(ino).expect("fsync");
    (ino, extents_of(pool, ino))
}

fn extents_of(pool: &Pool, ino: Ino) -> Vec<Extent> {
    let st = pool.state_snapshot();
    let Some(dynamicfs::engine::state::Body::File(map)) = st.inodes.get(&ino).map(|i| &i.body) else {
        panic!("inode {ino} is not a file")
    };
    map.values().map(|id| st.extents[id].clone()).collect()
}

/// Read every fragment of `e` straight from its device and check it: the
/// header against the extent table, the payload against the header, and the
/// fragments together against the extent (replicas equal to it; erasure
/// data shards decoding to it and parity equal to a fresh encode).
fn verify_fragments(pool: &Pool, e: &Extent) -> Result<(), String> {
    let policy = e.policy();
    let s = redundancy::shard_len(policy, e.len) as usize;
    let mut payloads = Vec::new();
    let mut members = HashSet::new();
    for (i, loc) in e.frags.iter().enumerate() {
        let m = pool.members()[loc.member as usize].as_ref().ok_or(format!("fragment {i}: member missing"))?;
        if !members.insert(loc.member) {
            return Err(format!("two fragments on member {}", loc.member));
        }
        let bs = m.layout.block_size as usize;
        let mut buf = AlignedBuf::zeroed(loc.blocks as usize * bs);
        m.dev.read_at(m.layout.data_offset(loc.block), &mut buf).map_err(|x| format!("fragment {i}: {x}"))?;
        let h = FragmentHeader::decode(&buf).map_err(|x| format!("fragment {i}: header {x}"))?;
        if h.extent_uuid.as_u128() != e.id
            || h.fragment_index as usize != i
            || h.policy != policy
            || h.payload_len as usize != s
            || h.extent_len != e.len
            || h.extent_blake3 != e.blake3
            || h.pool_uuid != pool.uuid()
        {
            return Err(format!("fragment {i}: header does not match the extent table: {h:?}"));
        }
        let p = buf[bs..bs + s].to_vec();
        if blake3::hash(&p).as_bytes() != &h.payload_blake3 {
            return Err(format!("fragment {i}: payload BLAKE3 mismatch"));
        }
        payloads.push(p);
    }
    match policy {
        Policy::Replication { .. } => {
            for (i, p) in payloads.iter().enumerate() {
                if blake3::hash(p).as_bytes() != &e.blake3 {
                    return Err(format!("replica {i} is not the extent"));
                }
            }
        }
        Policy::Erasure { data: k, .. } => {
            let views: Vec<Option<&[u8]>> =
                payloads.iter().enumerate().map(|(i, p)| (i < k as usize).then_some(p.as_slice())).collect();
            let bytes = redundancy::decode(policy, e.len, &views).map_err(|x| x.to_string())?;
            if blake3::hash(&bytes).as_bytes() != &e.blake3 {
                return Err("data shards do not decode to the extent".into());
            }
            let fresh = redundancy::encode(policy, &bytes).map_err(|x| x.to_string())?;
            for (i, (f, p)) in fresh.iter().zip(&payloads).enumerate() {
                if f.bytes() != p.as_slice() {
                    return Err(format!("fragment {i} differs from a fresh encode"));
                }
            }
        }
    }
    Ok(())
}

fn verify_all(pool: &Pool) {
    let st = pool.state_snapshot();
    for e in st.extents.values() {
        if let Err(x) = verify_fragments(pool, e) {
            panic!("extent {:032x} ({}): {x}", e.id, e.policy());
        }
    }
    assert!(pool.check_allocations().is_empty(), "{:?}", pool.check_allocations());
}

/// Which of the `lost` fragments a read of the extent tries (and so finds
/// bad): the first `needed` fragments not known bad, round after round.
fn fragments_a_read_tries(policy: Policy, lost: &[usize]) -> Vec<usize> {
    let need = policy.fragments_needed() as usize;
    let mut seen: Vec<usize> = Vec::new();
    loop {
        let set: Vec<usize> = (0..policy.fragment_count() as usize).filter(|i| !seen.contains(i)).take(need).collect();
        let newly: Vec<usize> = set.into_iter().filter(|i| lost.contains(i)).collect();
        if newly.is_empty() {
            return seen;
        }
        seen.extend(newly);
    }
}

/// Every tolerated pattern of lost fragments (of the file's first extent)
/// reads back byte-exact; the lost fragments move to other members.
/// `max_losses` limits the pattern sizes (all tolerated sizes by default).
fn check_tolerated_losses(rig: &Rig, policy: Policy, only_size: Option<usize>) {
    let n = policy.fragment_count() as usize;
    let tolerated = policy.tolerated_losses() as usize;
    let sizes: Vec<usize> = match only_size {
        Some(k) => vec![k],
        None => (1..=tolerated).collect(),
    };
    let pool = rig.open();
    let mut files = Vec::new();
    let mut count = 0;
    for k in sizes {
        for lost in subsets(n, k) {
            count += 1;
            // 1.5 MiB + a little: two extents, the second one short (padding).
            let data = pattern((3 * MIB / 2) as usize + 4321, count as u64);
            let (ino, extents) = put_file(&pool, &format!("f{count}"), &data);
            let e0 = &extents[0];
            let failed: Vec<u32> = lost.iter().map(|&i| e0.frags[i].member).collect();
            let repairs = pool.counters.repairs.load(Ordering::Relaxed);
            rig.fail_reads(&failed);
            let got = pool.read(ino, 0, data.len() + 100);
            rig.heal();
            let got = got.unwrap_or_else(|x| panic!("{policy}: lost {lost:?}: {x}"));
            assert!(got == data, "{policy}: lost fragments {lost:?}: wrong data");
            // The read finds the lost fragments it tries: those in the read
            // set (replica 0, data shards 0..K) and the fallbacks it takes.
            let seen = fragments_a_read_tries(policy, &lost);
            assert!(
                pool.counters.repairs.load(Ordering::Relaxed) >= repairs + seen.len() as u64,
                "{policy}: lost {lost:?}: fragments {seen:?} not repaired"
            );
            let now = &extents_of(&pool, ino)[0];
            for &i in &seen {
                assert!(!failed.contains(&now.frags[i].member), "{policy}: fragment {i} rebuilt on a failed member");
            }
            let distinct: HashSet<u32> = now.frags.iter().map(|f| f.member).collect();
            assert_eq!(distinct.len(), n, "{policy}: two fragments on one member after repair");
            files.push((ino, data));
        }
    }
    pool.commit().expect("commit");
    drop(pool);
    let pool = rig.open();
    verify_all(&pool);
    for (ino, data) in &files {
        assert!(pool.read(*ino, 0, data.len()).expect("read after repair") == *data);
    }
    assert_eq!(pool.counters.fragment_errors.load(Ordering::Relaxed), 0, "{policy}: repaired fragments still bad");
}

/// Every pattern of one loss more than tolerated gives DataLost, never data.
fn check_one_too_many(rig: &Rig, policy: Policy, max_patterns: usize) {
    let n = policy.fragment_count() as usize;
    let k = policy.tolerated_losses() as usize + 1;
    let pool = rig.open();
    let data = pattern(MIB as usize - 999, 77);
    let (ino, extents) = put_file(&pool, "lost", &data);
    let e0 = extents[0].clone();
    for lost in subsets(n, k).into_iter().take(max_patterns) {
        let failed: Vec<u32> = lost.iter().map(|&i| e0.frags[i].member).collect();
        rig.fail_reads(&failed);
        let res = pool.read(ino, 0, data.len());
        rig.heal();
        match res {
            Err(err @ EngineError::DataLost { .. }) => assert_eq!(err.errno(), libc::EIO),
            Err(other) => panic!("{policy}: lost {lost:?}: expected DataLost, got {other}"),
            Ok(_) => panic!("{policy}: lost {lost:?}: a read with too few fragments returned data"),
        }
        assert!(pool.lost_extents().iter().any(|(id, _)| *id == e0.id), "{policy}: lost extent not reported");
    }
    assert_eq!(pool.counters.extents_lost.load(Ordering::Relaxed), 1, "{policy}: counted once per extent");
    // Members back: readable again, no longer listed as lost.
    assert!(pool.read(ino, 0, data.len()).expect("read after heal") == data);
    assert!(pool.lost_extents().is_empty());
    // Nothing was "repaired" from too few fragments.
    assert_eq!(extents_of(&pool, ino)[0], e0);
}

/// A bit flipped in a payload and one in a header: detected, correct data
/// returned, the fragment rewritten on its own member; after commit and
/// reopen every fragment verifies.
fn check_bit_flips(rig: &Rig, policy: Policy) {
    let pool = rig.open();
    let data = pattern(2 * MIB as usize - 12345, 5);
    let (ino, extents) = put_file(&pool, "rot", &data);
    // Fragments read on the fast path: replica 0, data shards 0..K.
    let last_data = policy.fragments_needed() as usize - 1;
    let cases = [(&extents[0], 0usize, true), (&extents[1], last_data, false)];
    for (e, index, in_payload) in cases {
        let loc = e.frags[index];
        let m = pool.members()[loc.member as usize].as_ref().unwrap();
        let bs = m.layout.block_size as u64;
        let base = m.layout.data_offset(loc.block);
        // Somewhere in the middle of the payload, or in the header's hash field.
        let offset = if in_payload { base + bs + 1000 } else { base + 100 };
        rig.faulty[loc.member as usize].flip_bit(offset, 3).unwrap();
        let errors = pool.counters.fragment_errors.load(Ordering::Relaxed);
        let repairs = pool.counters.repairs.load(Ordering::Relaxed);
        let written = pool.counters.repair_bytes_written.load(Ordering::Relaxed);
        let got = pool.read(ino, 0, data.len()).expect("read with a flipped bit");
        assert!(got == data, "{policy}: wrong data after a bit flip");
        let what = if in_payload { "payload" } else { "header" };
        assert!(pool.counters.fragment_errors.load(Ordering::Relaxed) > errors, "{policy}: {what} flip not detected");
        assert_eq!(pool.counters.repairs.load(Ordering::Relaxed), repairs + 1, "{policy}: {what} flip not repaired");
        assert!(pool.counters.repair_bytes_written.load(Ordering::Relaxed) > written);
        let now = extents_of(&pool, ino);
        let moved = now.iter().find(|x| x.id == e.id).unwrap().frags[index];
        assert_eq!(moved.member, loc.member, "{policy}: rot is repaired on the same member");
        assert_ne!(moved.block, loc.block, "{policy}: repair must not overwrite in place");
    }
    assert!(pool.counters.repair_bytes_read.load(Ordering::Relaxed) > 0);
    pool.commit().unwrap();
    drop(pool);
    let pool = rig.open();
    verify_all(&pool);
    assert!(pool.read(ino, 0, data.len()).unwrap() == data);
    assert_eq!(pool.counters.fragment_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn every_tolerated_loss_reads_back_and_is_repaired() {
    for p in POLICIES {
        let policy: Policy = p.parse().unwrap();
        // Two spare members, so that lost fragments can move elsewhere.
        let rig = Rig::mem(policy.fragment_count() as usize + 2, 64 * MIB, policy);
        check_tolerated_losses(&rig, policy, None);
    }
}

#[test]
fn all_fifteen_double_losses_of_4_2() {
    let policy: Policy = "erasure:4+2".parse().unwrap();
    assert_eq!(subsets(6, 2).len(), 15);
    let rig = Rig::mem(8, 64 * MIB, policy);
    check_tolerated_losses(&rig, policy, Some(2));
}

#[test]
fn one_loss_too_many_is_data_lost() {
    for p in POLICIES {
        let policy: Policy = p.parse().unwrap();
        let rig = Rig::mem(policy.fragment_count() as usize, 64 * MIB, policy);
        check_one_too_many(&rig, policy, usize::MAX);
    }
}

#[test]
fn losses_without_a_spare_member_still_read() {
    // Exactly K+M members: nowhere to rebuild an unreadable fragment. The
    // read still succeeds; the repair failure is only counted.
    let policy: Policy = "erasure:4+2".parse().unwrap();
    let rig = Rig::mem(6, 64 * MIB, policy);
    let pool = rig.open();
    let data = pattern(MIB as usize, 9);
    let (ino, ext) = put_file(&pool, "f", &data);
    rig.fail_reads(&[ext[0].frags[0].member, ext[0].frags[1].member]);
    assert!(pool.read(ino, 0, data.len()).unwrap() == data);
    rig.heal();
    assert!(pool.counters.repair_failures.load(Ordering::Relaxed) >= 1);
    assert_eq!(pool.counters.repairs.load(Ordering::Relaxed), 0);
}

#[test]
fn members_missing_at_open() {
    for p in POLICIES {
        let policy: Policy = p.parse().unwrap();
        let n = policy.fragment_count() as usize + 1;
        let rig = Rig::mem(n, 64 * MIB, policy);
        let mut files = Vec::new();
        {
            let pool = rig.open();
            for f in 0..4 {
                let data = pattern((MIB + 777 * f as u64) as usize * 2, f as u64 + 100);
                files.push((put_file(&pool, &format!("m{f}"), &data).0, data));
            }
        }
        // Every set of `tolerated` absent members (not all three metadata members).
        for missing in subsets(n, policy.tolerated_losses() as usize) {
            if (0..3).all(|i| missing.contains(&i)) {
                continue;
            }
            let pool = rig.open_without(&missing);
            for (ino, data) in &files {
                let got =
                    pool.read(*ino, 0, data.len()).unwrap_or_else(|x| panic!("{policy} without {missing:?}: {x}"));
                assert!(got == *data, "{policy} without {missing:?}: wrong data");
            }
            // Nothing committed: the next open starts from the same state.
        }
        // One more absent member than tolerated, all holding fragments of
        // one extent: DataLost for that extent, never wrong data elsewhere.
        let k = policy.tolerated_losses() as usize + 1;
        let victim = {
            let pool = rig.open();
            files
                .iter()
                .flat_map(|(ino, _)| extents_of(&pool, *ino))
                .map(|e| e.frags[..k].iter().map(|f| f.member as usize).collect::<Vec<_>>())
                .find(|ms| !(0..3).all(|i| ms.contains(&i)))
                .expect("an extent whose loss leaves a metadata member")
        };
        let pool = rig.open_without(&victim);
        let mut lost = 0;
        for (ino, data) in &files {
            match pool.read(*ino, 0, data.len()) {
                Ok(got) => assert!(got == *data, "{policy}: wrong data"),
                Err(EngineError::DataLost { .. }) => lost += 1,
                Err(x) => panic!("{policy}: {x}"),
            }
        }
        assert!(lost > 0, "{policy} without {victim:?}: expected a lost extent");
        assert_eq!(pool.lost_extents().len() as u64, pool.counters.extents_lost.load(Ordering::Relaxed));
    }
}

#[test]
fn rebuilt_when_read_with_a_member_missing() {
    // A member absent at open: reading rebuilds its fragments on the others;
    // after commit the pool no longer needs it.
    let policy: Policy = "erasure:2+1".parse().unwrap();
    let rig = Rig::mem(5, 64 * MIB, policy);
    let data = pattern(3 * MIB as usize, 3);
    let ino = {
        let pool = rig.open();
        put_file(&pool, "f", &data).0
    };
    {
        let pool = rig.open_without(&[4]);
        assert!(pool.read(ino, 0, data.len()).unwrap() == data);
        for e in extents_of(&pool, ino) {
            assert!(e.frags.iter().all(|f| f.member != 4), "fragment left on the missing member");
        }
        pool.commit().unwrap();
    }
    let pool = rig.open_without(&[4]);
    let before = pool.counters.fragment_errors.load(Ordering::Relaxed);
    assert!(pool.read(ino, 0, data.len()).unwrap() == data);
    assert_eq!(pool.counters.repairs.load(Ordering::Relaxed), 0, "nothing left to repair");
    assert_eq!(pool.counters.fragment_errors.load(Ordering::Relaxed), before);
}

#[test]
fn bit_flips_in_payload_and_header_are_repaired() {
    for p in POLICIES {
        let policy: Policy = p.parse().unwrap();
        // No spare member: rot is healed on the member that has it.
        let rig = Rig::mem(policy.fragment_count() as usize, 64 * MIB, policy);
        check_bit_flips(&rig, policy);
    }
}

#[test]
fn verify_writes_catches_a_lying_device() {
    let policy: Policy = "replication:2".parse().unwrap();
    let mut rig = Rig::mem(3, 64 * MIB, policy);
    rig.opts.verify_writes = true;
    let lie = |rig: &Rig| {
        // Every member silently drops large writes (fragment payloads).
        for d in &rig.faulty {
            d.set_fault_hook(Box::new(|op| {
                (op.kind == IoKind::Write && op.len >= 256 * 1024).then_some(Fault::DropWrite)
            }));
        }
    };
    let data = pattern(MIB as usize, 11);
    {
        let pool = rig.open();
        let (ino, _) = pool.create(ROOT_INO, b"v", FileKind::File, 0o644, 0, 0, 0).unwrap();
        pool.write(ino, 0, &data).unwrap();
        lie(&rig);
        let err = pool.fsync(ino).expect_err("verify_writes must catch the dropped write");
        assert!(err.to_string().contains("read-after-write"), "{err}");
        rig.heal();
        // Still buffered: the retry writes it.
        pool.fsync(ino).unwrap();
        assert!(pool.read(ino, 0, data.len()).unwrap() == data);
    }
    {
        let pool = rig.open();
        verify_all(&pool);
        let (ino, _) = pool.lookup(ROOT_INO, b"v").unwrap();
        assert!(pool.read(ino, 0, data.len()).unwrap() == data);
    }
    // Without verification the lie goes unnoticed until the read, which
    // then refuses (DataLost), never returning the zeros on the media.
    rig.opts.verify_writes = false;
    let pool = rig.open();
    let (ino, _) = pool.create(ROOT_INO, b"w", FileKind::File, 0o644, 0, 0, 0).unwrap();
    pool.write(ino, 0, &data).unwrap();
    lie(&rig);
    pool.fsync(ino).unwrap();
    rig.heal();
    assert!(matches!(pool.read(ino, 0, data.len()), Err(EngineError::DataLost { .. })));
}

#[test]
fn reads_and_writes_of_different_files_proceed_while_a_read_is_stuck() {
    let policy: Policy = "replication:2".parse().unwrap();
    let rig = Rig::mem(4, 64 * MIB, policy);
    let pool = Arc::new(rig.open());
    let a_data = pattern(MIB as usize, 1);
    let (a, ext) = put_file(&pool, "a", &a_data);
    // Reads of file a's first replica block until released.
    let loc = ext[0].frags[0];
    let m = pool.members()[loc.member as usize].as_ref().unwrap();
    let at = m.layout.data_offset(loc.block);
    let entered = Arc::new(AtomicBool::new(false));
    let release = Arc::new(AtomicBool::new(false));
    {
        let (entered, release) = (entered.clone(), release.clone());
        rig.faulty[loc.member as usize].set_fault_hook(Box::new(move |op| {
            if op.kind == IoKind::Read && op.offset == at {
                entered.store(true, Ordering::SeqCst);
                let t0 = std::time::Instant::now();
                while !release.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(60) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            None
        }));
    }
    let reader = {
        let pool = pool.clone();
        std::thread::spawn(move || pool.read(a, 0, MIB as usize))
    };
    while !entered.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Meanwhile: another file is written, fsynced and read back.
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let b_data = pattern(5 * MIB as usize, 2);
            let (b, _) = put_file(&pool, "b", &b_data);
            let ok = pool.read(b, 0, b_data.len()).map(|got| got == b_data);
            let _ = tx.send(ok.map_err(|e| e.to_string()));
        });
    }
    let res = rx.recv_timeout(Duration::from_secs(30));
    let still_stuck = !reader.is_finished();
    release.store(true, Ordering::SeqCst);
    assert_eq!(res, Ok(Ok(true)), "file b could not be written and read while a read of a was stuck");
    assert!(still_stuck, "the read of a was not actually blocked");
    assert!(reader.join().unwrap().unwrap() == a_data);
    rig.heal();
}

#[test]
fn write_behind_errors_surface_at_fsync_and_are_retried() {
    let policy: Policy = "replication:2".parse().unwrap();
    let rig = Rig::mem(3, 64 * MIB, policy);
    let pool = rig.open();
    let (ino, _) = pool.create(ROOT_INO, b"wb", FileKind::File, 0o644, 0, 0, 0).unwrap();
    // Every fragment payload write fails for now.
    for d in &rig.faulty {
        d.set_fault_hook(Box::new(|op| (op.kind == IoKind::Write && op.len >= 256 * 1024).then_some(Fault::Error)));
    }
    let data = pattern(20 * MIB as usize + 5, 21);
    for (i, chunk) in data.chunks(MIB as usize).enumerate() {
        pool.write(ino, i as u64 * MIB, chunk).expect("buffered writes succeed under the dirty limit");
    }
    assert!(pool.read(ino, 0, data.len()).unwrap() == data, "dirty data must stay readable");
    assert!(pool.fsync(ino).is_err(), "fsync must report the failed writes");
    rig.heal();
    pool.fsync(ino).expect("retried once the devices work");
    assert!(pool.read(ino, 0, data.len()).unwrap() == data);
    assert!(pool.check_allocations().is_empty(), "{:?}", pool.check_allocations());
    drop(pool);
    let pool = rig.open();
    assert!(pool.read(ino, 0, data.len()).unwrap() == data);
    verify_all(&pool);
}

#[test]
fn overwrites_and_unlinks_while_writes_are_in_flight() {
    let policy: Policy = "erasure:2+1".parse().unwrap();
    let rig = Rig::mem(4, 256 * MIB, policy);
    let pool = Arc::new(rig.open());
    let last: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let pool = pool.clone();
                s.spawn(move || {
                    let name = format!("t{t}");
                    let (ino, _) = pool.create(ROOT_INO, name.as_bytes(), FileKind::File, 0o644, 0, 0, 0).unwrap();
                    let mut data = Vec::new();
                    // Each round rewrites extents whose previous versions may
                    // still be in flight; the last round must win.
                    for round in 0..3u64 {
                        data = pattern(10 * MIB as usize + 333 * t as usize, t * 10 + round);
                        for (i, chunk) in data.chunks(MIB as usize).enumerate() {
                            pool.write(ino, i as u64 * MIB, chunk).unwrap();
                        }
                        assert!(pool.read(ino, 0, data.len()).unwrap() == data, "t{t} round {round}");
                    }
                    // A scratch file unlinked with its writes in flight.
                    let scratch = format!("s{t}");
                    let (sino, _) = pool.create(ROOT_INO, scratch.as_bytes(), FileKind::File, 0o644, 0, 0, 0).unwrap();
                    for i in 0..12u64 {
                        pool.write(sino, i * MIB, &pattern(MIB as usize, i)).unwrap();
                    }
                    pool.unlink(ROOT_INO, scratch.as_bytes()).unwrap();
                    pool.fsync(ino).unwrap();
                    data
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    pool.sync_all().unwrap();
    assert!(pool.check_allocations().is_empty(), "{:?}", pool.check_allocations());
    drop(pool);
    let pool = rig.open();
    for (t, data) in last.iter().enumerate() {
        let (ino, attrs) = pool.lookup(ROOT_INO, format!("t{t}").as_bytes()).unwrap();
        assert_eq!(attrs.size, data.len() as u64);
        assert!(pool.read(ino, 0, data.len()).unwrap() == *data, "t{t}: last round lost after reopen");
    }
    verify_all(&pool);
    assert!(pool.state_snapshot().check().is_empty());
}

#[test]
fn partial_reads_fetch_each_extent_once_and_still_verify() {
    // FUSE reads 128 KiB at a time: the extent is fetched and verified
    // once, the other parts come from the partial-read cache.
    let policy: Policy = "erasure:2+1".parse().unwrap();
    let rig = Rig::mem(3, 64 * MIB, policy);
    let pool = rig.open();
    let data = pattern(3 * MIB as usize, 42);
    let (ino, extents) = put_file(&pool, "parts", &data);
    // Rot in a data shard of the second extent, before anything read it.
    let loc = extents[1].frags[0];
    let m = pool.members()[loc.member as usize].as_ref().unwrap();
    let at = m.layout.data_offset(loc.block) + m.layout.block_size as u64 + 77;
    rig.faulty[loc.member as usize].flip_bit(at, 1).unwrap();
    let reads0 = pool.counters.fragments_read.load(Ordering::Relaxed);
    let step = 128 * 1024;
    let mut got = Vec::new();
    for off in (0..data.len()).step_by(step) {
        got.extend(pool.read(ino, off as u64, step).unwrap());
    }
    assert!(got == data, "partial reads returned wrong data");
    let reads = pool.counters.fragments_read.load(Ordering::Relaxed) - reads0;
    // Two data shards per extent, three extents, plus the fallback reads of
    // the rotten extent (at most its three fragments again): 48 fetches
    // without the cache.
    assert!(reads <= 9, "{reads} fragment reads for 3 extents read in 24 parts");
    assert!(pool.counters.fragment_errors.load(Ordering::Relaxed) >= 1, "rot not detected by a partial read");
    assert_eq!(pool.counters.repairs.load(Ordering::Relaxed), 1, "rot not repaired");
    // An odd, unaligned range across two extents.
    let (a, b) = (MIB as usize - 5000, MIB as usize + 9000);
    assert!(pool.read(ino, a as u64, b - a).unwrap() == data[a..b]);
}

// ---------------------------------------------------------------------------
// Real loop devices

fn loop_rig(devs: &[common::LoopDevice], policy: Policy) -> Rig {
    let inner: Vec<Arc<dyn Device>> = devs
        .iter()
        .map(|d| {
            Arc::new(
                RawDevice::open(d.path(), RawOpenOptions { read_only: false, exclusive: true }).expect("open loop"),
            ) as Arc<dyn Device>
        })
        .collect();
    Rig::new(inner, policy)
}

/// Every policy on real loop devices (direct IO, `RawDevice`): every
/// tolerated loss pattern reads back byte-exact and is rebuilt, one loss
/// more is `DataLost` (all patterns), bit flips in a payload and a header
/// are repaired, and after reopen every fragment verifies from its device.
#[test]
fn loop_devices_every_policy() {
    if !common::require_root_and_loop() {
        return;
    }
    // Eight members: the widest policy (4+2) plus two spares to rebuild on.
    let devs: Vec<common::LoopDevice> =
        (0..8).map(|_| common::LoopDevice::new(128 * MIB).expect("loop device")).collect();
    for p in POLICIES {
        let policy: Policy = p.parse().unwrap();
        let rig = loop_rig(&devs, policy);
        check_tolerated_losses(&rig, policy, None);
        check_one_too_many(&rig, policy, usize::MAX);
        check_bit_flips(&rig, policy);
        // Release the members before the next policy formats them again.
        drop(rig);
    }
}
