//! fsck (`dynamicfs::fsck::check_pool`) on in-memory pools, one planted
//! fault per test, as Fxfs's `fsck/tests.rs` does: each test makes a pool
//! (`mkfs::format_devices` on `FaultyDevice`s over `MemDevice`s), fills it
//! through the engine API (files under `erasure:2+1` or `replication:2`,
//! fsynced, closed), damages exactly one thing by writing bytes directly,
//! and asserts the exact finding. Where the redundancy allows, it then
//! repairs, checks that the finding is reported corrected (exit status 1),
//! that a second check is clean (exit status 0), and that every file reads
//! back byte-exact.
//!
//! What is pinned:
//! - a flipped payload byte in a data shard (on the read path), in a
//!   parity shard (off it), a flipped fragment header byte of a second
//!   replica: found, rebuilt through the engine, clean afterwards;
//! - a destroyed journal copy while the journal holds live records: found,
//!   superseded by the repair's checkpoint; the same damage on a closed pool
//!   (no live record) is only a note;
//! - a destroyed primary superblock: found, rewritten from the backup;
//! - a corrupt root slot (the newest): found, cleared after a new root;
//! - a leaked block (a fragment header of this pool in a free block): an
//!   orphan note, exit status 0 (allocation is derived from the metadata);
//! - a whole member zeroed: "not a member" and "member missing", every
//!   fragment on it absent, the data still readable from the others; a
//!   repair re-initialises the blank device in place as that member (its
//!   own index and UUID) and rebuilds its fragments: exit status 1, then a
//!   check exits 0 and the files read back byte-exact; a device that is
//!   not blank is never formatted over (exit status 1 + 4, untouched);
//! - an unreadable fragment (IO errors on its range): rebuilt on another
//!   member; the bad range itself stays reported (exit status 1 + 4);
//! - a clean pool stays untouched by a repair run; a pool in use is refused
//!   for a repair and noted by a check; no member, two pools, one member
//!   given twice are operational errors.

mod common;

use std::sync::Arc;

use dfs_format::fragment::FragmentKind;
use dfs_format::{FragmentHeader, Layout, Policy, RegionKind};
use dynamicfs::device::{AlignedBuf, Device, Fault, FaultyDevice, IoKind, MemDevice};
use dynamicfs::engine::lock::PoolLock;
use dynamicfs::engine::state::Extent;
use dynamicfs::engine::{Pool, PoolOptions};
use dynamicfs::fsck::{check_pool, Finding, FragmentFault, FsckError, FsckOptions, FsckReport, SbCopy, Severity};
use dynamicfs::member::{self, best_root, read_root_ring, read_superblocks};

const MIB: u64 = 1 << 20;
const BS: u64 = 4096;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8).collect()
}

/// A pool of `FaultyDevice`s over named `MemDevice`s, with two files.
struct TestPool {
    devs: Vec<Arc<FaultyDevice>>,
    files: common::files::Files,
    lock: tempfile::TempDir,
}

impl TestPool {
    /// Format `n` members, write the files, fsync them; `close` writes the
    /// final checkpoint (otherwise the journal keeps live records).
    fn new(n: usize, policy: &str, close: bool) -> TestPool {
        let devs: Vec<Arc<FaultyDevice>> = (0..n)
            .map(|i| Arc::new(FaultyDevice::new(Arc::new(MemDevice::named(&format!("mem{i}"), 64 * MIB, 4096)))))
            .collect();
        let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
        let policy: Policy = policy.parse().unwrap();
        dynamicfs::mkfs::format_devices(&refs, "fsck", policy).unwrap();
        let tp = TestPool {
            devs,
            files: vec![(b"a", pattern(2 * MIB as usize + 1000, 3)), (b"b", pattern(300_000, 9))],
            lock: tempfile::tempdir().unwrap(),
        };
        let pool = tp.open(&tp.devices(), false);
        common::files::write_files(&pool, &tp.files);
        if close {
            pool.close().unwrap();
        }
        tp
    }

    fn devices(&self) -> Vec<Arc<dyn Device>> {
        self.devs.iter().map(|d| d.clone() as Arc<dyn Device>).collect()
    }

    fn open(&self, devs: &[Arc<dyn Device>], read_only: bool) -> Pool {
        Pool::open(devs.to_vec(), PoolOptions { read_only, no_lock: true, ..Default::default() }).unwrap()
    }

    fn opts(&self, repair: bool) -> FsckOptions {
        FsckOptions { repair, verify_data: true, lock_dir: Some(self.lock.path().to_path_buf()), ..Default::default() }
    }

    fn check(&self, repair: bool) -> FsckReport {
        check_pool(&self.devices(), &self.opts(repair)).unwrap()
    }

    fn layout(&self, member: u32) -> Layout {
        read_superblocks(self.devs[member as usize].as_ref()).unwrap().superblock.layout
    }

    /// Extent `index` of file `name` (in `/` or `/d`).
    fn extent(&self, name: &[u8], index: u64) -> Extent {
        let pool = self.open(&self.devices(), true);
        common::files::extent_of(&pool, name, index)
    }

    /// Every file reads back byte-exact from the devices `devs`.
    fn assert_files_with(&self, devs: &[Arc<dyn Device>]) {
        common::files::assert_files(&self.open(devs, true), &self.files);
    }

    fn assert_files(&self) {
        self.assert_files_with(&self.devices());
    }

    fn flip(&self, member: u32, offset: u64) {
        self.devs[member as usize].flip_bit(offset, 3).unwrap();
    }

    fn zero(&self, member: u32, offset: u64, len: u64) {
        let dev = &self.devs[member as usize];
        dev.write_at(offset, &AlignedBuf::zeroed(len as usize)).unwrap();
        dev.sync().unwrap();
    }
}

/// The errors of a report (no notes), in order.
fn problems(r: &FsckReport) -> Vec<&Finding> {
    r.findings.iter().filter(|f| f.severity != Severity::Info).map(|f| &f.finding).collect()
}

fn severity_of(r: &FsckReport, f: &Finding) -> Severity {
    r.findings.iter().find(|x| x.finding == *f).unwrap_or_else(|| panic!("{f} not reported")).severity
}

/// Check, expect exactly `expected` as the one error; repair, expect it
/// corrected (exit 1); check again, expect clean; files byte-exact.
fn found_then_repaired(tp: &TestPool, expected: &Finding) {
    let r = tp.check(false);
    assert_eq!(problems(&r), vec![expected], "check: {:#?}", r.findings);
    assert_eq!((r.exit_code, r.left, r.corrected), (4, 1, 0));
    assert_eq!(severity_of(&r, expected), Severity::Left);

    let r = tp.check(true);
    assert_eq!(r.exit_code, 1, "repair: {:#?}", r.findings);
    assert_eq!(severity_of(&r, expected), Severity::Corrected);
    assert_eq!((r.corrected, r.left), (1, 0));
    let rep = r.findings.iter().find(|x| x.finding == *expected).unwrap();
    assert!(rep.action.is_some(), "a corrected finding says what was done");

    let r = tp.check(false);
    assert_eq!(r.exit_code, 0, "after repair: {:#?}", r.findings);
    assert!(problems(&r).is_empty());
    tp.assert_files();
}

#[test]
fn clean_pool_is_clean_and_a_repair_run_writes_nothing() {
    let tp = TestPool::new(3, "erasure:2+1", true);
    let r = tp.check(false);
    assert_eq!(r.exit_code, 0, "{:#?}", r.findings);
    assert!(r.is_clean());
    assert_eq!(r.stats.extents, 4, "3 extents of a, 1 of b");
    assert_eq!((r.stats.fragments, r.stats.fragments_good), (12, 12));
    assert!(r.stats.bytes_verified > 2 * MIB);
    assert!(r.stats.data_walked);
    assert_eq!(r.stats.orphans, 0);
    // The bitmap is not authoritative (the engine writes it only at mkfs): a note per member.
    assert_eq!(r.info, 3);
    assert!(r.findings.iter().all(|f| matches!(f.finding, Finding::Bitmap { authoritative: false, .. })));

    let writes: Vec<u64> = tp.devs.iter().map(|d| d.writes()).collect();
    let r = tp.check(true);
    assert_eq!(r.exit_code, 0);
    assert!(!r.repairs.engine_opened);
    assert_eq!(tp.devs.iter().map(|d| d.writes()).collect::<Vec<_>>(), writes, "a clean pool is not written");
}

/// Flip a payload byte (`at` bytes in) of fragment `index` of extent
/// `extent` of file `name`; the finding fsck must report.
fn flip_payload(tp: &TestPool, name: &[u8], extent: u64, index: usize, at: u64) -> Finding {
    let e = tp.extent(name, extent);
    let f = e.frags[index];
    tp.flip(f.member, tp.layout(f.member).data_offset(f.block) + BS + at);
    Finding::Fragment {
        member: f.member,
        extent: uuid::Uuid::from_u128(e.id),
        index: index as u32,
        block: f.block,
        fault: FragmentFault::BadPayload,
    }
}

#[test]
fn flipped_payload_byte_in_a_data_shard() {
    let tp = TestPool::new(3, "erasure:2+1", true);
    let expected = flip_payload(&tp, b"a", 1, 0, 1234);
    // Without --data the payload is not read: the header is fine.
    let quick = check_pool(&tp.devices(), &FsckOptions { verify_data: false, ..tp.opts(false) }).unwrap();
    assert_eq!(quick.exit_code, 0, "{:#?}", quick.findings);
    found_then_repaired(&tp, &expected);
}

#[test]
fn flipped_payload_byte_in_a_parity_shard() {
    // The read path never reads parity; fsck hands it to the engine's repair.
    let tp = TestPool::new(3, "erasure:2+1", true);
    let f = tp.extent(b"b", 0).frags[2];
    let expected = flip_payload(&tp, b"b", 0, 2, 77);
    found_then_repaired(&tp, &expected);
    // The rebuilt parity is a new fragment at a new location.
    assert_ne!(tp.extent(b"b", 0).frags[2], f);
}

#[test]
fn flipped_fragment_header_byte() {
    let tp = TestPool::new(3, "replication:2", true);
    let e = tp.extent(b"a", 0);
    let f = e.frags[1];
    tp.flip(f.member, tp.layout(f.member).data_offset(f.block) + 40);
    let r = tp.check(false);
    let p = problems(&r);
    assert_eq!(p.len(), 1, "{:#?}", r.findings);
    let Finding::Fragment { fault: FragmentFault::BadHeader(why), .. } = p[0] else { panic!("{:?}", p[0]) };
    assert!(why.contains("checksum"), "{why}");
    let expected = p[0].clone();
    assert_eq!(
        expected,
        Finding::Fragment {
            member: f.member,
            extent: uuid::Uuid::from_u128(e.id),
            index: 1,
            block: f.block,
            fault: FragmentFault::BadHeader(why.clone()),
        }
    );
    found_then_repaired(&tp, &expected);
}

#[test]
fn destroyed_journal_copy_with_live_records() {
    // Fsynced, not closed: the journal holds the files' records.
    let tp = TestPool::new(3, "replication:2", false);
    let j = tp.layout(1).region(RegionKind::Journal);
    tp.zero(1, j.start, j.len);
    let r = tp.check(false);
    let p = problems(&r);
    assert_eq!(p.len(), 1, "{:#?}", r.findings);
    let Finding::JournalCopy { member: 1, records: 0, longest, stop } = p[0] else { panic!("{:?}", p[0]) };
    assert!(*longest >= 2, "{longest}");
    assert!(stop.contains("no valid record"), "{stop}");
    let expected = p[0].clone();
    found_then_repaired(&tp, &expected);
}

#[test]
fn destroyed_journal_copy_of_a_closed_pool_loses_nothing() {
    // Closed: no live record; the copy's history differs, which is a note.
    let tp = TestPool::new(3, "replication:2", true);
    let j = tp.layout(0).region(RegionKind::Journal);
    tp.zero(0, j.start, j.len);
    let r = tp.check(false);
    assert_eq!(r.exit_code, 0, "{:#?}", r.findings);
    let notes: Vec<&Finding> =
        r.findings.iter().map(|f| &f.finding).filter(|f| matches!(f, Finding::JournalHistory { .. })).collect();
    assert!(matches!(notes[..], [Finding::JournalHistory { member: 0, records: 0, .. }]), "{notes:?}");
    tp.assert_files();
}

#[test]
fn destroyed_primary_superblock() {
    let tp = TestPool::new(3, "erasure:2+1", true);
    tp.zero(2, 0, BS);
    let r = tp.check(false);
    let p = problems(&r);
    assert_eq!(p.len(), 1, "{:#?}", r.findings);
    let Finding::SuperblockCopy { member: 2, copy: SbCopy::Primary, offset: 0, problem } = p[0] else {
        panic!("{:?}", p[0])
    };
    assert!(problem.contains("magic"), "{problem}");
    let expected = p[0].clone();
    found_then_repaired(&tp, &expected);
    assert!(!read_superblocks(tp.devs[2].as_ref()).unwrap().needs_repair());
}

#[test]
fn corrupt_root_slot() {
    let tp = TestPool::new(3, "replication:2", true);
    let l = tp.layout(1);
    let ring = read_root_ring(tp.devs[1].as_ref(), &l).unwrap();
    let pool_uuid = read_superblocks(tp.devs[1].as_ref()).unwrap().superblock.pool_uuid;
    let (slot, root) = best_root(&ring, pool_uuid).unwrap();
    let generation = root.generation;
    tp.flip(1, l.root_slot_offset(slot) + 35);
    let r = tp.check(false);
    let p = problems(&r);
    assert_eq!(p.len(), 1, "{:#?}", r.findings);
    let Finding::RootSlot { member: 1, slot: s, newest: Some(g), problem } = p[0] else { panic!("{:?}", p[0]) };
    assert_eq!((*s, *g), (slot, generation));
    assert!(problem.contains("checksum"), "{problem}");
    let expected = p[0].clone();
    found_then_repaired(&tp, &expected);
    let ring = read_root_ring(tp.devs[1].as_ref(), &l).unwrap();
    assert_eq!(ring[slot as usize].state, member::RootSlotState::Empty, "cleared");
}

#[test]
fn leaked_block_is_an_orphan_note() {
    let tp = TestPool::new(3, "replication:2", true);
    let l = tp.layout(0);
    let pool_uuid = read_superblocks(tp.devs[0].as_ref()).unwrap().superblock.pool_uuid;
    let block = l.data_blocks() - 512;
    let payload = pattern(BS as usize, 42);
    let leaked = uuid::Uuid::new_v4();
    let h = FragmentHeader {
        kind: FragmentKind::Extent,
        pool_uuid,
        extent_uuid: leaked,
        fragment_index: 0,
        fragment_count: 2,
        policy: Policy::Replication { copies: 2 },
        payload_len: BS as u32,
        extent_len: BS as u32,
        generation: 0,
        created_ns: 1,
        payload_blake3: *blake3::hash(&payload).as_bytes(),
        extent_blake3: *blake3::hash(&payload).as_bytes(),
    };
    let mut buf = AlignedBuf::from_slice_padded(&h.encode(), BS as usize).to_vec();
    buf.extend_from_slice(&payload);
    tp.devs[0].write_at(l.data_offset(block), &AlignedBuf::from_slice_padded(&buf, BS as usize)).unwrap();
    tp.devs[0].sync().unwrap();

    let expected =
        Finding::Orphan { member: 0, block, blocks: 2, extent: leaked, fragment_index: 0, allocated_in_bitmap: None };
    let r = tp.check(false);
    assert_eq!(r.exit_code, 0, "{:#?}", r.findings);
    assert_eq!(severity_of(&r, &expected), Severity::Info);
    assert_eq!(r.stats.orphans, 1);
    assert!(r.stats.stale_checkpoint_copies > 0, "open and close each leave a superseded checkpoint");
    // A preen without -f skips the data-region walk.
    let preen = check_pool(&tp.devices(), &FsckOptions { preen: true, ..tp.opts(false) }).unwrap();
    assert!(!preen.stats.data_walked);
    assert_eq!(preen.stats.orphans, 0);
    // Nothing to repair: GC is `dfs cleanup-orphans`.
    let r = tp.check(true);
    assert_eq!(r.exit_code, 0);
    assert!(!r.repairs.engine_opened);
}

#[test]
fn whole_member_zeroed() {
    let tp = TestPool::new(3, "replication:2", true);
    // The victim: the member holding the most fragments (placement is random).
    let st = tp.open(&tp.devices(), true).state_snapshot();
    let on = |m: u32| st.all_fragments().filter(|(_, _, f)| f.member == m).count();
    let victim = (0..3u32).max_by_key(|m| on(*m)).unwrap();
    let frags_on_victim = on(victim);
    let extents_on_victim = st.extents.values().filter(|e| e.frags.iter().any(|f| f.member == victim)).count();
    assert!(frags_on_victim > 0);
    let others: Vec<Arc<dyn Device>> =
        tp.devices().into_iter().enumerate().filter(|(i, _)| *i as u32 != victim).map(|(_, d)| d).collect();
    tp.zero(victim, 0, 64 * MIB);
    let name = format!("mem{victim}");

    let r = tp.check(false);
    assert_eq!(r.exit_code, 4);
    let p = problems(&r);
    assert!(
        matches!(p[0], Finding::NotAMember { device, reason } if *device == name && reason.contains("no DynamicFS superblock")),
        "{:?}",
        p[0]
    );
    let missing = Finding::MemberMissing { member: victim, path_hint: name.clone(), fragments: frags_on_victim as u64 };
    assert!(p.contains(&&missing), "{p:#?}");
    let absent = p
        .iter()
        .filter(|f| matches!(f, Finding::Fragment { member, fault: FragmentFault::Absent, .. } if *member == victim))
        .count();
    assert_eq!(absent, frags_on_victim);
    assert!(p.iter().any(|f| matches!(f, Finding::CheckpointCopy { member, .. } if *member == victim)));
    assert!(!p.iter().any(|f| matches!(f, Finding::ExtentLost { .. })), "every extent still has a good replica");
    assert_eq!(p.len(), 2 + frags_on_victim + 1, "{p:#?}");
    // The data is still readable from the other two.
    tp.assert_files_with(&others);

    // Repair: the blank device is re-initialised in place as the missing
    // member (same index and UUID) and every fragment it held is rebuilt.
    let member_uuid = st.members.iter().find(|m| m.index == victim).unwrap().uuid;
    let r = tp.check(true);
    assert_eq!(r.exit_code, 1, "{:#?}", r.findings);
    for f in &r.findings {
        match &f.finding {
            Finding::Fragment { .. }
            | Finding::CheckpointCopy { .. }
            | Finding::NotAMember { .. }
            | Finding::MemberMissing { .. } => assert_eq!(f.severity, Severity::Corrected, "{f:?}"),
            other => assert_eq!(f.severity, Severity::Info, "{other:?}"),
        }
    }
    assert_eq!(r.repairs.members_reinitialised, 1);
    assert_eq!(r.repairs.extents_read, extents_on_victim as u64);
    let sb = read_superblocks(tp.devs[victim as usize].as_ref()).unwrap().superblock;
    assert_eq!((sb.member_index, sb.member_uuid.as_u128()), (victim, member_uuid), "its own identity back");
    let r = tp.check(false);
    assert_eq!(r.exit_code, 0, "{:#?}", r.findings);
    assert!(problems(&r).is_empty());
    tp.assert_files();
    tp.assert_files_with(&others);
}

#[test]
fn missing_member_with_a_non_blank_device_is_not_reinitialised() {
    let tp = TestPool::new(3, "replication:2", true);
    // Member 2's superblocks are gone but the device is not blank (some
    // other content at its start): fsck must not format over it.
    tp.zero(2, 0, 64 * MIB);
    let junk = AlignedBuf::from_slice_padded(b"someone else's data", BS as usize);
    tp.devs[2].write_at(8 * BS, &junk).unwrap();
    tp.devs[2].sync().unwrap();
    let r = tp.check(true);
    assert_eq!(r.repairs.members_reinitialised, 0);
    assert_eq!(r.exit_code, 1 | 4, "{:#?}", r.findings);
    assert!(r
        .findings
        .iter()
        .any(|f| matches!(f.finding, Finding::MemberMissing { member: 2, .. }) && f.severity == Severity::Left));
    assert!(read_superblocks(tp.devs[2].as_ref()).is_err(), "nothing written to it");
    assert_eq!(member::read_bytes(tp.devs[2].as_ref(), 8 * BS, 19).unwrap(), b"someone else's data");
}

#[test]
fn unreadable_fragment_moves_to_another_member() {
    let tp = TestPool::new(3, "replication:2", true);
    let e = tp.extent(b"a", 2);
    let f = e.frags[0];
    let l = tp.layout(f.member);
    let (start, end) = (l.data_offset(f.block), l.data_offset(f.block + f.blocks as u64));
    tp.devs[f.member as usize].set_fault_hook(Box::new(move |op| {
        (op.kind == IoKind::Read && op.offset < end && op.offset + op.len > start).then_some(Fault::Error)
    }));
    let r = tp.check(false);
    let p = problems(&r);
    assert!(matches!(p[0], Finding::Fragment { index: 0, fault: FragmentFault::Unreadable(_), .. }), "{p:#?}");
    // The data-region walk trips over the same bad range.
    assert!(matches!(p[1], Finding::Unreadable { .. }), "{p:#?}");
    assert_eq!(p.len(), 2);

    let r = tp.check(true);
    assert_eq!(severity_of(&r, p[0]), Severity::Corrected);
    // The bad range itself is still there: left, honestly.
    assert_eq!(r.exit_code, 1 | 4);
    let moved = tp.extent(b"a", 2).frags[0];
    assert_ne!(moved.member, f.member, "an unreadable fragment goes to another member");
    tp.assert_files();
}

#[test]
fn pool_in_use_refuses_repair_and_is_noted_by_a_check() {
    let tp = TestPool::new(2, "replication:2", true);
    let pool_uuid = read_superblocks(tp.devs[0].as_ref()).unwrap().superblock.pool_uuid;
    let _held = PoolLock::acquire(tp.lock.path(), pool_uuid).unwrap();
    let e = check_pool(&tp.devices(), &tp.opts(true)).unwrap_err();
    assert!(matches!(e, FsckError::PoolInUse { pid, .. } if pid == std::process::id()), "{e}");
    assert!(e.to_string().contains(&format!("in use by PID {}", std::process::id())), "{e}");
    let r = tp.check(false);
    assert_eq!(r.exit_code, 0);
    assert!(r.findings.iter().any(|f| f.finding == Finding::PoolInUse { pid: std::process::id() }));
}

#[test]
fn operational_errors() {
    let opts = FsckOptions::default();
    assert!(matches!(check_pool(&[], &opts), Err(FsckError::NoDevices)));
    let blank: Arc<dyn Device> = Arc::new(MemDevice::named("blank", 64 * MIB, 4096));
    let e = check_pool(&[blank], &opts).unwrap_err();
    assert!(matches!(e, FsckError::NotAMember(_)), "{e}");
    assert!(e.to_string().starts_with("blank: not a DynamicFS member"), "{e}");
    let a = TestPool::new(1, "replication:1", false);
    let b = TestPool::new(1, "replication:1", false);
    let mixed = vec![a.devices()[0].clone(), b.devices()[0].clone()];
    assert!(matches!(check_pool(&mixed, &opts), Err(FsckError::MixedPools { .. })));
    let twice = vec![a.devices()[0].clone(), a.devices()[0].clone()];
    assert!(matches!(check_pool(&twice, &opts), Err(FsckError::DuplicateMember { index: 0, .. })));
}
