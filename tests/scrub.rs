//! Scrub of an unmounted pool of loop devices (`engine::scrub::scrub_pool`,
//! what `dfs scrub` runs), one injected corruption per test, each also
//! judged by fsck (`fsck::check_pool`, what `fsck.dfs` runs):
//!
//! - a flipped payload byte, a flipped fragment header byte, a destroyed
//!   journal copy (live records), a destroyed primary superblock, a corrupt
//!   root slot, a leaked block: found by scrub (kind and member as
//!   expected, the report not clean) and by fsck; `scrub --repair` repairs
//!   it; then a second scrub is clean, fsck (with payload hashing and the
//!   data-region walk) exits 0 and every file reads back byte-exact;
//! - a whole member zeroed: found; the repair (fsck's) re-initialises the
//!   blank device in place as the missing member and rebuilds its
//!   fragments: clean afterwards, fsck exits 0, files read back;
//! - an extent with two of its three `erasure:2+1` fragments bad:
//!   unrepairable, with the file it belongs to.
//!
//! Needs root and loop devices; skipped with a printed reason otherwise.

mod common;

use std::sync::Arc;

use common::{disk_tempdir, require_root_and_loop, LoopDevice};
use dfs_format::fragment::FragmentKind;
use dfs_format::{FragmentHeader, Layout, Policy, RegionKind};
use dynamicfs::device::{open_member_device, AlignedBuf, Device, OpenMode};
use dynamicfs::engine::scrub::{scrub_pool, ScrubOptions, ScrubReport};
use dynamicfs::engine::state::Extent;
use dynamicfs::engine::{Pool, PoolOptions, ROOT_INO};
use dynamicfs::fsck::{check_pool, Finding, FsckOptions, FsckReport, Severity};
use dynamicfs::member::{best_root, read_bytes, read_root_ring, read_superblocks, write_bytes};

const MIB: u64 = 1 << 20;
const BS: u64 = 4096;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 11) as u8).collect()
}

/// Three loop devices formatted as one pool, with `/a` (3 extents) and
/// `/d/b` (1 extent) written and fsynced.
struct LoopPool {
    loops: Vec<LoopDevice>,
    files: common::files::Files,
    lock: tempfile::TempDir,
}

impl LoopPool {
    fn new(policy: &str, close: bool) -> LoopPool {
        let loops: Vec<LoopDevice> = (0..3).map(|_| LoopDevice::new(64 * MIB).unwrap()).collect();
        let lp = LoopPool {
            loops,
            files: vec![(b"a", pattern(2 * MIB as usize + 777, 5)), (b"b", pattern(200_000, 8))],
            lock: disk_tempdir(),
        };
        let devs = lp.devices(false);
        let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref()).collect();
        dynamicfs::mkfs::format_devices(&refs, "scrub", policy.parse::<Policy>().unwrap()).unwrap();
        let pool = lp.open(&devs, false);
        common::files::write_files(&pool, &lp.files);
        if close {
            pool.close().unwrap();
        }
        lp
    }

    fn devices(&self, read_only: bool) -> Vec<Arc<dyn Device>> {
        self.loops
            .iter()
            .map(|l| open_member_device(l.path(), OpenMode { read_only, exclusive: false }).unwrap())
            .collect()
    }

    fn open(&self, devs: &[Arc<dyn Device>], read_only: bool) -> Pool {
        Pool::open(devs.to_vec(), PoolOptions { read_only, no_lock: true, ..Default::default() }).unwrap()
    }

    fn scrub(&self, repair: bool) -> ScrubReport {
        let opts = ScrubOptions { repair, lock_dir: Some(self.lock.path().to_path_buf()), progress: None };
        scrub_pool(&self.devices(!repair), &opts).unwrap()
    }

    fn fsck(&self) -> FsckReport {
        let opts = FsckOptions {
            verify_data: true,
            force: true,
            lock_dir: Some(self.lock.path().to_path_buf()),
            ..Default::default()
        };
        check_pool(&self.devices(true), &opts).unwrap()
    }

    fn layout(&self, m: u32) -> Layout {
        read_superblocks(self.devices(true)[m as usize].as_ref()).unwrap().superblock.layout
    }

    fn extent(&self, name: &[u8], index: u64) -> Extent {
        let pool = self.open(&self.devices(true), true);
        common::files::extent_of(&pool, name, index)
    }

    fn flip(&self, m: u32, offset: u64) {
        let dev = &self.devices(false)[m as usize];
        let mut b = read_bytes(dev.as_ref(), offset, 1).unwrap();
        b[0] ^= 0x08;
        write_bytes(dev.as_ref(), offset, &b).unwrap();
        dev.sync().unwrap();
    }

    fn zero(&self, m: u32, offset: u64, len: u64) {
        let dev = &self.devices(false)[m as usize];
        write_bytes(dev.as_ref(), offset, &vec![0u8; len as usize]).unwrap();
        dev.sync().unwrap();
    }

    fn assert_files_with(&self, devs: &[Arc<dyn Device>]) {
        common::files::assert_files(&self.open(devs, true), &self.files);
    }

    fn assert_files(&self) {
        self.assert_files_with(&self.devices(true));
    }
}

fn fsck_errors(r: &FsckReport) -> Vec<&Finding> {
    r.findings.iter().filter(|f| f.severity != Severity::Info).map(|f| &f.finding).collect()
}

/// Scrub finds exactly one error of `kind` on `member`, fsck finds it too
/// (`fsck_sees`), `scrub --repair` repairs it, then everything is clean.
fn found_then_repaired(lp: &LoopPool, kind: &str, member: Option<u32>, fsck_sees: impl Fn(&Finding) -> bool) {
    let r = lp.scrub(false);
    assert!(!r.clean, "{r:#?}");
    assert_eq!(r.errors.len(), 1, "{:#?}", r.errors);
    assert_eq!(r.errors[0].kind, kind, "{:#?}", r.errors);
    assert_eq!(r.errors[0].member, member, "{:#?}", r.errors);
    assert!(!r.errors[0].repaired);
    assert_eq!(r.errors_by_kind.get(kind), Some(&1));
    let who = member.map(|m| m.to_string()).unwrap_or_else(|| "pool".into());
    assert_eq!(r.errors_by_member.get(&who), Some(&1));
    assert_eq!(r.extents_checked, 4);
    assert!(r.bytes_checked >= 2 * MIB, "{}", r.bytes_checked);

    let f = lp.fsck();
    assert!(f.findings.iter().any(|x| fsck_sees(&x.finding)), "fsck misses it: {:#?}", f.findings);

    let r = lp.scrub(true);
    assert!(r.clean, "after --repair: {r:#?}");
    assert_eq!(r.repaired, 1, "{r:#?}");
    assert!(r.errors[0].repaired && r.errors[0].action.is_some());

    let r = lp.scrub(false);
    assert!(r.clean && r.errors.is_empty(), "second scrub: {r:#?}");
    let f = lp.fsck();
    assert_eq!(f.exit_code, 0, "fsck after the repair: {:#?}", f.findings);
    assert_eq!(f.stats.orphans, 0);
    lp.assert_files();
}

#[test]
fn clean_pool_scrubs_clean() {
    if !require_root_and_loop() {
        return;
    }
    let lp = LoopPool::new("erasure:2+1", true);
    let r = lp.scrub(false);
    assert!(r.clean && r.errors.is_empty(), "{r:#?}");
    assert_eq!((r.members_checked, r.members), (3, 3));
    assert_eq!((r.extents_checked, r.fragments_checked, r.fragments_good), (4, 12, 12));
    // Every fragment's payload was hashed: at least the logical bytes.
    assert!(r.bytes_checked >= 2 * MIB + 777 + 200_000, "{}", r.bytes_checked);
    assert!(r.data_blocks_walked > 0);
    let r = lp.scrub(true);
    assert!(r.clean && r.repaired == 0);
}

#[test]
fn flipped_payload_byte() {
    if !require_root_and_loop() {
        return;
    }
    let lp = LoopPool::new("erasure:2+1", true);
    let e = lp.extent(b"a", 1);
    let f = e.frags[1];
    lp.flip(f.member, lp.layout(f.member).data_offset(f.block) + BS + 4321);
    found_then_repaired(
        &lp,
        "payload",
        Some(f.member),
        |x| matches!(x, Finding::Fragment { member, index: 1, .. } if *member == f.member),
    );
}

#[test]
fn flipped_fragment_header_byte() {
    if !require_root_and_loop() {
        return;
    }
    let lp = LoopPool::new("replication:2", true);
    let e = lp.extent(b"b", 0);
    let f = e.frags[0];
    lp.flip(f.member, lp.layout(f.member).data_offset(f.block) + 44);
    found_then_repaired(
        &lp,
        "header",
        Some(f.member),
        |x| matches!(x, Finding::Fragment { member, index: 0, .. } if *member == f.member),
    );
}

#[test]
fn destroyed_journal_copy() {
    if !require_root_and_loop() {
        return;
    }
    // Not closed: the journal holds the files' records.
    let lp = LoopPool::new("replication:2", false);
    let j = lp.layout(2).region(RegionKind::Journal);
    lp.zero(2, j.start, j.len);
    found_then_repaired(&lp, "journal", Some(2), |x| matches!(x, Finding::JournalCopy { member: 2, .. }));
}

#[test]
fn destroyed_primary_superblock() {
    if !require_root_and_loop() {
        return;
    }
    let lp = LoopPool::new("erasure:2+1", true);
    lp.zero(0, 0, BS);
    found_then_repaired(&lp, "superblock", Some(0), |x| matches!(x, Finding::SuperblockCopy { member: 0, .. }));
    assert!(!read_superblocks(lp.devices(true)[0].as_ref()).unwrap().needs_repair());
}

#[test]
fn corrupt_root_slot() {
    if !require_root_and_loop() {
        return;
    }
    let lp = LoopPool::new("replication:2", true);
    let l = lp.layout(1);
    let dev = lp.devices(true)[1].clone();
    let pool_uuid = read_superblocks(dev.as_ref()).unwrap().superblock.pool_uuid;
    let (slot, _) = best_root(&read_root_ring(dev.as_ref(), &l).unwrap(), pool_uuid).unwrap();
    lp.flip(1, l.root_slot_offset(slot) + 50);
    found_then_repaired(&lp, "root_slot", Some(1), |x| matches!(x, Finding::RootSlot { member: 1, .. }));
}

#[test]
fn leaked_block() {
    if !require_root_and_loop() {
        return;
    }
    let lp = LoopPool::new("replication:2", true);
    let l = lp.layout(2);
    let dev = lp.devices(false)[2].clone();
    let pool_uuid = read_superblocks(dev.as_ref()).unwrap().superblock.pool_uuid;
    let payload = pattern(BS as usize, 1);
    let h = FragmentHeader {
        kind: FragmentKind::Extent,
        pool_uuid,
        extent_uuid: uuid::Uuid::new_v4(),
        fragment_index: 1,
        fragment_count: 2,
        policy: Policy::Replication { copies: 2 },
        payload_len: BS as u32,
        extent_len: BS as u32,
        generation: 3,
        created_ns: 1,
        payload_blake3: *blake3::hash(&payload).as_bytes(),
        extent_blake3: *blake3::hash(&payload).as_bytes(),
    };
    let mut buf = AlignedBuf::from_slice_padded(&h.encode(), BS as usize).to_vec();
    buf.extend_from_slice(&payload);
    let block = l.data_blocks() - 300;
    dev.write_at(l.data_offset(block), &AlignedBuf::from_slice_padded(&buf, BS as usize)).unwrap();
    dev.sync().unwrap();
    found_then_repaired(
        &lp,
        "leaked",
        Some(2),
        |x| matches!(x, Finding::Orphan { member: 2, block: b, .. } if *b == block),
    );
    // The header block is gone, the rest of the disk untouched.
    let after = read_bytes(dev.as_ref(), l.data_offset(block), BS as usize).unwrap();
    assert!(after.iter().all(|b| *b == 0));
    assert_eq!(read_bytes(dev.as_ref(), l.data_offset(block + 1), BS as usize).unwrap(), payload);
}

#[test]
fn whole_member_zeroed() {
    if !require_root_and_loop() {
        return;
    }
    let lp = LoopPool::new("replication:2", true);
    let st = lp.open(&lp.devices(true), true).state_snapshot();
    let on = |m: u32| st.all_fragments().filter(|(_, _, f)| f.member == m).count() as u64;
    let victim = (0..3u32).max_by_key(|m| on(*m)).unwrap();
    let lost_frags = on(victim);
    assert!(lost_frags > 0);
    lp.zero(victim, 0, 64 * MIB);

    let r = lp.scrub(false);
    assert!(!r.clean);
    assert_eq!(r.errors_by_kind.get("absent"), Some(&lost_frags), "{:#?}", r.errors_by_kind);
    assert_eq!(r.errors_by_kind.get("member"), Some(&2), "not a member + member missing: {:#?}", r.errors);
    assert_eq!(r.errors_by_member.get(&victim.to_string()).copied().unwrap_or(0), lost_frags + 2);
    assert!(r.unrepairable.is_empty(), "every extent has a good replica");
    let f = lp.fsck();
    assert!(fsck_errors(&f).iter().any(|x| matches!(x, Finding::MemberMissing { member, .. } if *member == victim)));

    let r = lp.scrub(true);
    let absent_fixed = r.errors.iter().filter(|e| e.kind == "absent" && e.repaired).count() as u64;
    assert_eq!(absent_fixed, lost_frags, "{:#?}", r.errors);
    // The repair is fsck's: the blank device is re-initialised in place as
    // the missing member (docs/DECISIONS.md), so nothing is left.
    assert!(r.clean, "{:#?}", r.errors);
    assert!(r.errors.iter().filter(|e| e.kind == "member").all(|e| e.repaired), "{:#?}", r.errors);

    // Every extent is whole on the two survivors, and the pool is whole.
    let survivors: Vec<Arc<dyn Device>> =
        lp.devices(true).into_iter().enumerate().filter(|(i, _)| *i as u32 != victim).map(|(_, d)| d).collect();
    lp.assert_files_with(&survivors);
    lp.assert_files();
    let r = lp.scrub(false);
    assert!(r.clean, "{:#?}", r.errors);
    assert_eq!(r.fragments_good, r.fragments_checked);
    assert_eq!(lp.fsck().exit_code, 0);
}

#[test]
fn lost_extent_is_unrepairable_and_names_its_file() {
    if !require_root_and_loop() {
        return;
    }
    let lp = LoopPool::new("erasure:2+1", true);
    let e = lp.extent(b"b", 0);
    for i in [0usize, 1] {
        let f = e.frags[i];
        lp.flip(f.member, lp.layout(f.member).data_offset(f.block) + BS + 10);
    }
    let r = lp.scrub(true);
    assert!(!r.clean);
    assert_eq!(r.unrepairable.len(), 1, "{r:#?}");
    assert_eq!(r.unrepairable[0].files, vec!["/d/b at byte 0".to_string()]);
    assert_eq!(r.errors_by_kind.get("payload"), Some(&2));
    // The other file is intact.
    let pool = lp.open(&lp.devices(true), true);
    let (ino, _) = pool.lookup(ROOT_INO, b"a").unwrap();
    assert!(pool.read(ino, 0, lp.files[0].1.len()).unwrap() == lp.files[0].1);
}
