//! Open-time tests: what `Pool::open` does with damaged metadata.
//!
//! Each test plants one kind of damage on in-memory members through the
//! `Device` trait (as a failing disk or a torn write would leave it), reopens
//! the pool and asserts the exact outcome: what is recovered, what the open
//! report says, and that the tree and the allocators are consistent.
//!
//! The pools here are crashed by dropping a `Pool` without `close`: a
//! `MemDevice` keeps every write, so what the next open sees is exactly what
//! the engine wrote (committed records, plus whatever the test scribbles).

mod common;

use common::mem_pool::{open_pool as open, try_open_pool as try_open};
use dfs_format::journal::JOURNAL_HEADER_LEN;
use dfs_format::{JournalRecordHeader, Layout, Policy, RecordKind, RegionKind, RootRecord};
use dynamicfs::device::{AlignedBuf, Device, MemDevice};
use dynamicfs::engine::pool::read_superblock;
use dynamicfs::engine::{EngineError, FileKind, Ino, Pool, ROOT_INO};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

fn format(n: usize, size: u64, policy: &str) -> Vec<Arc<MemDevice>> {
    let policy: Policy = policy.parse().expect("policy");
    let devs: Vec<Arc<MemDevice>> =
        (0..n).map(|i| Arc::new(MemDevice::named(&format!("mem{i}"), size, 4096))).collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
    dynamicfs::mkfs::format_devices(&refs, "open-test", policy).expect("mkfs");
    devs
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 12) as u8 | 1).collect()
}

fn layout(dev: &MemDevice) -> Layout {
    read_superblock(dev).expect("superblock").0.layout
}

fn read_bytes(dev: &MemDevice, offset: u64, len: usize) -> Vec<u8> {
    let bs = dev.block_size() as u64;
    let start = offset / bs * bs;
    let end = (offset + len as u64).div_ceil(bs) * bs;
    let mut buf = AlignedBuf::zeroed((end - start) as usize);
    dev.read_at(start, &mut buf).expect("read");
    buf[(offset - start) as usize..(offset - start) as usize + len].to_vec()
}

/// Overwrite bytes at any offset (read-modify-write of whole blocks).
fn write_bytes(dev: &MemDevice, offset: u64, bytes: &[u8]) {
    let bs = dev.block_size() as u64;
    let start = offset / bs * bs;
    let end = (offset + bytes.len() as u64).div_ceil(bs) * bs;
    let mut buf = AlignedBuf::zeroed((end - start) as usize);
    dev.read_at(start, &mut buf).expect("read");
    buf[(offset - start) as usize..(offset - start) as usize + bytes.len()].copy_from_slice(bytes);
    dev.write_at(start, &buf).expect("write");
}

/// Invert `len` bytes at `offset`.
fn flip(dev: &MemDevice, offset: u64, len: usize) {
    let inverted: Vec<u8> = read_bytes(dev, offset, len).iter().map(|b| !b).collect();
    write_bytes(dev, offset, &inverted);
}

/// The newest root on a member that verifies: (slot, record).
fn newest_root(dev: &MemDevice) -> (u64, RootRecord) {
    let l = layout(dev);
    let ring = l.region(RegionKind::RootRing);
    let bs = l.block_size as usize;
    let bytes = read_bytes(dev, ring.start, ring.len as usize);
    bytes
        .chunks(bs)
        .enumerate()
        .filter_map(|(i, b)| RootRecord::decode(b).ok().map(|r| (i as u64, r)))
        .max_by_key(|(_, r)| r.generation)
        .expect("a valid root")
}

/// The records of one journal copy from the root's position, as the replay
/// would walk them: (byte offset in the journal, header).
fn journal_records(dev: &MemDevice, root: &RootRecord) -> Vec<(u64, JournalRecordHeader)> {
    let start = layout(dev).region(RegionKind::Journal).start;
    let bs = root.journal_block_size;
    let mut out = Vec::new();
    let (mut off, mut seq) = (root.journal_offset, root.journal_seq);
    loop {
        let block = read_bytes(dev, start + off, bs as usize);
        let Ok(h) = JournalRecordHeader::decode(&block, bs) else { break };
        if h.seq != seq || h.pool_uuid != root.pool_uuid {
            break;
        }
        seq += 1;
        match h.kind {
            RecordKind::Wrap => off = 0,
            RecordKind::Transaction => {
                let next = off + h.block_count as u64 * bs as u64;
                out.push((off, h));
                off = if next == root.journal_len { 0 } else { next };
            }
        }
    }
    out
}

fn lookup_path(pool: &Pool, path: &str) -> Result<Ino, EngineError> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = pool.lookup(ino, part.as_bytes())?.0;
    }
    Ok(ino)
}

fn read_file(pool: &Pool, path: &str) -> Vec<u8> {
    let ino = lookup_path(pool, path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let size = pool.getattr(ino).expect("getattr").size;
    pool.read(ino, 0, size as usize).unwrap_or_else(|e| panic!("{path}: read: {e}"))
}

fn new_file(pool: &Pool, parent: Ino, name: &str, data: &[u8]) -> Ino {
    let (ino, _) = pool.create(parent, name.as_bytes(), FileKind::File, 0o644, 0, 0, 0).expect("create");
    pool.write(ino, 0, data).expect("write");
    ino
}

fn assert_consistent(pool: &Pool) {
    let problems = pool.state_snapshot().check();
    assert!(problems.is_empty(), "tree: {problems:?}");
    let problems = pool.check_allocations();
    assert!(problems.is_empty(), "allocations: {problems:?}");
}

fn report_has(pool: &Pool, needle: &str) -> bool {
    pool.open_report.iter().any(|l| l.contains(needle))
}

/// Journal torn in the middle of its last record.
///
/// Story: two transactions are committed (each by an fsync); the power fails
/// while the second record is being rewritten... or rather, the device tore
/// the second record: the tail half of its blocks holds garbage on every
/// journal copy. Replay must stop silently at the torn record (its payload
/// checksum fails), keep everything up to the first record, and the open
/// must succeed with a consistent tree.
#[test]
fn journal_torn_mid_record_replays_up_to_the_previous_record() {
    let devs = format(3, 64 * MIB, "replication:2");
    let data = pattern(300_000, 3);
    {
        let pool = open(&devs);
        let a = new_file(&pool, ROOT_INO, "a", &data);
        pool.fsync(a).expect("fsync 1");
        // Record 2: a 20 KiB xattr makes the record span several blocks.
        pool.setxattr(a, b"user.big", &pattern(20_000, 9), Default::default()).expect("setxattr");
        pool.mkdir(ROOT_INO, b"d", 0o755, 0, 0).expect("mkdir");
        pool.fsync(a).expect("fsync 2");
        // Crash: no close, no final checkpoint.
    }
    let (_, root) = newest_root(&devs[0]);
    let recs = journal_records(&devs[0], &root);
    assert_eq!(recs.len(), 2, "two committed records after the open's checkpoint");
    let (off, h) = &recs[1];
    assert!(h.block_count >= 4, "the second record spans several blocks ({})", h.block_count);
    let bs = root.journal_block_size as u64;
    let torn_from = off + (h.block_count as u64 / 2) * bs;
    let torn_len = (h.block_count as u64 - h.block_count as u64 / 2) * bs;
    for d in &devs {
        // Every member here holds a journal copy (3 members, 3 copies).
        assert_eq!(journal_records(d, &root).len(), 2);
        let jstart = layout(d).region(RegionKind::Journal).start;
        write_bytes(d, jstart + torn_from, &vec![0xA5; torn_len as usize]);
        assert_eq!(journal_records(d, &root).len(), 2, "headers intact: only the payload is torn");
    }

    let pool = open(&devs);
    assert_eq!(read_file(&pool, "a"), data, "record 1 (fsynced data) is replayed");
    let a = lookup_path(&pool, "a").expect("a");
    assert!(matches!(pool.getxattr(a, b"user.big"), Err(EngineError::NoData)), "record 2 is torn: not replayed");
    assert!(matches!(lookup_path(&pool, "d"), Err(EngineError::NotFound)), "record 2 is atomic: none of it applied");
    assert!(report_has(&pool, "replayed 1 journal records"), "{:?}", pool.open_report);
    assert_consistent(&pool);
    pool.close().expect("close");
    let pool = open(&devs);
    assert_eq!(read_file(&pool, "a"), data);
    assert_consistent(&pool);
}

/// One journal copy corrupt in the middle.
///
/// Story: a member's journal region takes a media error (bytes inverted)
/// inside the first committed record. Its copy's chain is now empty, the
/// other two copies hold both records; replay takes the longest valid chain,
/// so every fsynced change is back. The checkpoint written at this open
/// supersedes the damaged copy, and later sessions keep working.
#[test]
fn one_journal_copy_corrupt_opens_from_the_others() {
    let devs = format(3, 64 * MIB, "replication:2");
    let a_data = pattern(1_500_000, 5);
    let b_data = pattern(70_000, 6);
    {
        let pool = open(&devs);
        let a = new_file(&pool, ROOT_INO, "a", &a_data);
        pool.fsync(a).expect("fsync");
        let (d, _) = pool.mkdir(ROOT_INO, b"d", 0o755, 0, 0).expect("mkdir");
        let b = new_file(&pool, d, "b", &b_data);
        pool.symlink(d, b"s", b"../a", 0, 0).expect("symlink");
        pool.fsync(b).expect("fsync");
    }
    let (_, root) = newest_root(&devs[0]);
    let recs = journal_records(&devs[0], &root);
    assert_eq!(recs.len(), 2);
    // Flip bytes in the middle of member 0's first record.
    let (off, h) = &recs[0];
    let jstart = layout(&devs[0]).region(RegionKind::Journal).start;
    let mid = off + (JOURNAL_HEADER_LEN as u64 + h.payload_len as u64) / 2;
    flip(&devs[0], jstart + mid, 64);
    // The header still decodes (the flip is in the payload): the replay's
    // payload checksum is what rejects the record.
    assert_eq!(journal_records(&devs[0], &root).len(), 2);

    let pool = open(&devs);
    assert_eq!(read_file(&pool, "a"), a_data);
    assert_eq!(read_file(&pool, "d/b"), b_data);
    let s = lookup_path(&pool, "d/s").expect("symlink");
    assert_eq!(pool.readlink(s).expect("readlink"), b"../a");
    assert!(report_has(&pool, "replayed 2 journal records"), "{:?}", pool.open_report);
    // The damaged copy is named in the report.
    let damaged = format!("{}: journal copy holds 0 of 2 records", devs[0].identity());
    assert!(report_has(&pool, &damaged), "{:?}", pool.open_report);
    assert_consistent(&pool);
    // New work after the repair is journaled to all copies again.
    let c = new_file(&pool, ROOT_INO, "c", b"after the repair");
    pool.fsync(c).expect("fsync");
    drop(pool);
    let pool = open(&devs);
    assert_eq!(read_file(&pool, "a"), a_data);
    assert_eq!(read_file(&pool, "c"), b"after the repair");
    assert_consistent(&pool);
}

/// Corrupt the newest root slot on every member.
fn corrupt_newest_root_everywhere(devs: &[Arc<MemDevice>]) -> u64 {
    let (_, root) = newest_root(&devs[0]);
    for d in devs {
        let (slot, r) = newest_root(d);
        assert_eq!(r.generation, root.generation);
        let l = layout(d);
        flip(d, l.root_slot_offset(slot) + 40, 16);
        assert!(newest_root(d).1.generation < root.generation);
    }
    root.generation
}

/// Newest root corrupt on all members, first session of a pool.
///
/// Story: mkfs wrote root generation 1 (no checkpoint, journal at offset 0,
/// sequence 1); the first open wrote generation 2 (a checkpoint of the empty
/// tree, journal position unchanged since nothing was replayed). Work is
/// committed, then the power fails, and generation 2's slot turns out
/// unreadable on every member. Open falls back to generation 1: an empty
/// state plus a replay of the journal from sequence 1, which is every
/// committed record. So the recovery is complete, and the open report names
/// each bad slot. The checkpoint of generation 2 is referenced by no valid
/// root any more, so its blocks come back free.
#[test]
fn newest_root_corrupt_falls_back_to_the_mkfs_root_and_replays_everything() {
    let devs = format(3, 64 * MIB, "replication:3");
    let data = pattern(2 * MIB as usize + 777, 11);
    {
        let pool = open(&devs);
        let f = new_file(&pool, ROOT_INO, "f", &data);
        pool.fsync(f).expect("fsync");
        let (d, _) = pool.mkdir(ROOT_INO, b"dir", 0o700, 0, 0).expect("mkdir");
        pool.link(f, d, b"hard").expect("link");
        pool.sync_all().expect("sync");
    }
    assert_eq!(corrupt_newest_root_everywhere(&devs), 2);
    assert_eq!(newest_root(&devs[0]).1.generation, 1);

    let pool = open(&devs);
    assert_eq!(
        pool.open_report.iter().filter(|l| l.contains("a root slot does not verify")).count(),
        3,
        "{:?}",
        pool.open_report
    );
    assert!(report_has(&pool, "replayed 2 journal records"), "{:?}", pool.open_report);
    assert_eq!(read_file(&pool, "f"), data);
    assert_eq!(read_file(&pool, "dir/hard"), data);
    assert_eq!(pool.getattr(lookup_path(&pool, "f").unwrap()).unwrap().nlink, 2);
    assert_consistent(&pool);
    // The open wrote a new root (generation 2 again, over the bad slot).
    assert_eq!(newest_root(&devs[1]).1.generation, 2);
    pool.close().expect("close");
    let pool = open(&devs);
    assert_eq!(read_file(&pool, "dir/hard"), data);
    assert_consistent(&pool);
}

/// Builds the two-session history of the fallback tests. Session 1 writes
/// `a` and crashes; session 2 replays it (checkpoint + root generation 3 at
/// the journal head), writes `b` and a directory, and crashes. Returns the
/// data of `a` and `b`.
fn two_crashed_sessions(devs: &[Arc<MemDevice>]) -> (Vec<u8>, Vec<u8>) {
    let a_data = pattern(1_200_000, 21);
    let b_data = pattern(2_100_000, 22);
    {
        let pool = open(devs);
        let a = new_file(&pool, ROOT_INO, "a", &a_data);
        pool.fsync(a).expect("fsync a");
    }
    {
        let pool = open(devs);
        assert!(report_has(&pool, "replayed 1 journal records"), "{:?}", pool.open_report);
        let (d, _) = pool.mkdir(ROOT_INO, b"d", 0o755, 0, 0).expect("mkdir");
        let b = new_file(&pool, d, "b", &b_data);
        pool.fsync(b).expect("fsync b");
    }
    (a_data, b_data)
}

/// Newest root corrupt on all members, after a reopen.
///
/// Story: session 1 (root 2, checkpoint C2, journal from J0) commits `a`
/// and crashes; session 2 replays it, writes checkpoint C3 and root 3 at the
/// journal head Ja, frees C2 (root 3 is durable), commits `b`, crashes.
/// Root 3 is then lost on every member. Open falls back to root 2: C2, then
/// the journal from J0: `a`'s record and `b`'s records still chain (session
/// 2's writer continued the chain from the replayed record), so the recovery
/// is complete.
///
/// This relies on C2's blocks not having been reused: the engine frees a
/// superseded checkpoint as soon as the next root is durable, and only the
/// next-fit allocator (session 2's allocations go after C3, C2 lies before
/// it) keeps them intact here. See the next test for the case where they
/// were reused.
#[test]
fn newest_root_corrupt_after_a_reopen_falls_back_to_the_previous_root() {
    let devs = format(3, 64 * MIB, "replication:3");
    let (a_data, b_data) = two_crashed_sessions(&devs);
    assert_eq!(corrupt_newest_root_everywhere(&devs), 3);

    let pool = open(&devs);
    assert_eq!(
        pool.open_report.iter().filter(|l| l.contains("a root slot does not verify")).count(),
        3,
        "{:?}",
        pool.open_report
    );
    assert!(report_has(&pool, "replayed 2 journal records"), "{:?}", pool.open_report);
    assert_eq!(read_file(&pool, "a"), a_data);
    assert_eq!(read_file(&pool, "d/b"), b_data);
    assert_consistent(&pool);
}

/// Newest root corrupt and the previous root's checkpoint overwritten.
///
/// Story: as above, but C2's blocks were reused after session 2 freed them
/// (simulated by inverting bytes of every copy of C2). Root 2 is the best
/// root that verifies, its checkpoint does not: open does not try older
/// roots, it fails with `Corrupted` naming the checkpoint — never a
/// half-recovered tree, never a panic. (Root 1, the mkfs root, would have
/// led to a full recovery here because the journal has not wrapped; a
/// fallback over older roots, with superseded checkpoints kept allocated for
/// a few generations as ZFS defers its frees, would make this recoverable.)
#[test]
fn newest_root_corrupt_and_previous_checkpoint_reused_is_a_clean_error() {
    let devs = format(3, 64 * MIB, "replication:3");
    two_crashed_sessions(&devs);
    corrupt_newest_root_everywhere(&devs);
    let (_, root2) = newest_root(&devs[0]);
    assert_eq!(root2.generation, 2);
    let ck = root2.checkpoint.clone().expect("root 2 has a checkpoint");
    for l in &ck.copies {
        let d = &devs[l.member_index as usize];
        flip(d, l.offset + 4096 + ck.len / 2, 8);
    }
    match try_open(&devs) {
        Err(EngineError::Corrupted(msg)) => assert!(msg.contains("checkpoint"), "{msg}"),
        Err(e) => panic!("expected Corrupted, got {e}"),
        Ok(_) => panic!("expected Corrupted, the pool opened"),
    }
}

/// One member missing.
///
/// Story: a 4-member pool under replication:3 or replication:2 loses one
/// member (any of the four: the first three hold the journal copies). Open
/// with the other three: metadata opens (the journal and checkpoints have
/// copies elsewhere), every file reads back exactly (each extent has a copy
/// on a present member), and the pool stays writable. Later, with the member
/// back, everything (including what was written without it) is there.
#[test]
fn one_member_missing_data_readable_metadata_opens() {
    for policy in ["replication:3", "replication:2"] {
        for missing in 0..4 {
            let devs = format(4, 48 * MIB, policy);
            let files: Vec<(String, Vec<u8>)> =
                (0..4).map(|i| (format!("f{i}"), pattern(i * 900_000 + 4096, i as u8 * 7 + 1))).collect();
            {
                let pool = open(&devs);
                let (d, _) = pool.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
                for (name, data) in &files {
                    new_file(&pool, d, name, data);
                }
                pool.close().expect("close");
            }
            let present: Vec<Arc<MemDevice>> =
                devs.iter().enumerate().filter(|(i, _)| *i != missing).map(|(_, d)| d.clone()).collect();
            {
                let pool = open(&present);
                for (name, data) in &files {
                    assert_eq!(
                        &read_file(&pool, &format!("d/{name}")),
                        data,
                        "{policy}, member {missing} missing: {name}"
                    );
                }
                assert_consistent(&pool);
                let g = new_file(&pool, ROOT_INO, "written-degraded", b"degraded write");
                pool.fsync(g).expect("fsync while degraded");
            }
            // Root written while degraded still says the pool has 4 members.
            assert_eq!(newest_root(&present[0]).1.member_count, 4, "{policy}, member {missing} missing");
            let pool = open(&devs);
            assert_eq!(read_file(&pool, "written-degraded"), b"degraded write");
            for (name, data) in &files {
                assert_eq!(&read_file(&pool, &format!("d/{name}")), data);
            }
            assert_consistent(&pool);
        }
    }
}

/// Regression: a root written while the highest-index member was missing
/// recorded `member_count` 3 for a 4-member pool (it counted the opened
/// members), so tools that find members from the best root (`discover`)
/// would no longer know the fourth member exists.
#[test]
fn regression_member_count_when_last_member_missing() {
    let devs = format(4, 40 * MIB, "replication:2");
    open(&devs).close().expect("close");
    let pool = open(&devs[..3]);
    drop(pool);
    let (_, root) = newest_root(&devs[0]);
    assert_eq!(root.member_count, 4);
}

/// Primary superblock destroyed on one member.
///
/// Story: something overwrote block 0 of member 1 (a partition tool, `dd`).
/// The backup superblock at the end of the member is intact: the pool opens
/// with all data, and the open report says which member's primary was bad.
#[test]
fn primary_superblock_destroyed_pool_opens_and_reports_it() {
    let devs = format(3, 40 * MIB, "replication:2");
    let data = pattern(1_100_000, 31);
    {
        let pool = open(&devs);
        new_file(&pool, ROOT_INO, "f", &data);
        pool.close().expect("close");
    }
    write_bytes(&devs[1], 0, &vec![0u8; 4096]);
    let pool = open(&devs);
    let line = pool.open_report.iter().find(|l| l.contains("primary superblock bad")).cloned();
    let line = line.unwrap_or_else(|| panic!("report does not mention the superblock: {:?}", pool.open_report));
    assert!(line.contains("mem1"), "the line names the member: {line}");
    assert_eq!(pool.open_report.iter().filter(|l| l.contains("superblock")).count(), 1, "{:?}", pool.open_report);
    assert_eq!(read_file(&pool, "f"), data);
    assert_consistent(&pool);

    // Garbage instead of zeros: same outcome.
    drop(pool);
    write_bytes(&devs[1], 0, &pattern(4096, 77));
    let pool = open(&devs);
    assert!(report_has(&pool, "primary superblock bad"), "{:?}", pool.open_report);
    assert_eq!(read_file(&pool, "f"), data);
}

/// One checkpoint copy corrupt (then two).
///
/// Story: the newest root points at a checkpoint with three copies; the
/// first copy (the one open tries first) has a bad sector in its payload.
/// Its BLAKE3 fails, open reads the next copy and recovers the whole state;
/// the open report names the bad copy. With two copies bad it still opens
/// from the third.
#[test]
fn checkpoint_copy_corrupt_on_one_member_opens_from_another() {
    for bad in 1..=2usize {
        let devs = format(3, 40 * MIB, "replication:2");
        let data = pattern(1_700_000, 41);
        {
            let pool = open(&devs);
            let (d, _) = pool.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
            new_file(&pool, d, "f", &data);
            for i in 0..50 {
                pool.create(d, format!("empty{i}").as_bytes(), FileKind::File, 0o600, 1, 1, 0).unwrap();
            }
            pool.close().expect("close");
        }
        let (_, root) = newest_root(&devs[0]);
        let ck = root.checkpoint.clone().expect("checkpoint");
        assert_eq!(ck.copies.len(), 3);
        for l in ck.copies.iter().take(bad) {
            flip(&devs[l.member_index as usize], l.offset + 4096 + ck.len / 3, 32);
        }
        let pool = open(&devs);
        assert_eq!(read_file(&pool, "d/f"), data, "{bad} copies bad");
        assert_eq!(pool.readdir(lookup_path(&pool, "d").unwrap()).unwrap().len(), 51);
        assert_consistent(&pool);
        let mentions = pool.open_report.iter().filter(|l| l.contains("checkpoint BLAKE3 mismatch")).count();
        assert_eq!(mentions, bad, "{:?}", pool.open_report);
    }
}
