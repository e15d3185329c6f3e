//! Sparse-file engine calls (`src/engine/sparse.rs`) and the policy calls
//! the FUSE layer uses, on in-memory members: a punched hole reads as zeros
//! and costs no extent, cut extents are rewritten and the rest is
//! untouched, before and after reopen; SEEK_DATA / SEEK_HOLE agree with a
//! byte model (property test); copy_range copies bytes; fallocate grows or
//! refuses with ENOSPC; `user.dfs.policy` re-encodes a file's extents and
//! refuses what the members can't satisfy; the default policy is a pool
//! setting that survives reopen.

mod common;

use common::mem_pool::{mem_members as pool_devices, open_pool as open};
use dfs_format::Policy;
use dynamicfs::engine::namespace::{parse_policy, POLICY_XATTR};
use dynamicfs::engine::sparse::{data_ranges, seek_in};
use dynamicfs::engine::state::Body;
use dynamicfs::engine::{EngineError, FallocMode, FileKind, Ino, Pool, SeekWhence, XattrMode, ROOT_INO};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8 | 1).collect()
}

/// Extent index → policy of file `ino`'s committed extents.
fn extents(pool: &Pool, ino: Ino) -> Vec<(u64, Policy)> {
    let st = pool.state_snapshot();
    match &st.inodes[&ino].body {
        Body::File(map) => map.iter().map(|(i, id)| (*i, st.extents[id].policy())).collect(),
        _ => panic!("not a file"),
    }
}

#[test]
fn punch_hole_drops_whole_extents_and_rewrites_cut_ones() {
    let devs = pool_devices(3, 64 * MIB, "replication:2".parse().unwrap());
    let mut model = pattern(5 * MIB as usize + 777, 3);
    let ino;
    {
        let pool = open(&devs);
        ino = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap().0;
        pool.write(ino, 0, &model).unwrap();
        pool.fsync(ino).unwrap();
        assert_eq!(extents(&pool, ino).len(), 6);
        let free_before = pool.statfs().unwrap().free_bytes;

        // From the middle of extent 1 to the middle of extent 3: extent 2
        // goes, 1 and 3 are rewritten.
        let (off, len) = (MIB + 1000, 2 * MIB);
        pool.fallocate(ino, off, len, FallocMode::PunchHole).unwrap();
        model[off as usize..(off + len) as usize].fill(0);
        let idx: Vec<u64> = extents(&pool, ino).iter().map(|e| e.0).collect();
        assert_eq!(idx, vec![0, 1, 3, 4, 5], "extent 2 is a hole now");
        assert_eq!(pool.getattr(ino).unwrap().size, model.len() as u64, "size unchanged");
        assert_eq!(pool.read(ino, 0, model.len()).unwrap(), model);

        // A hole covering a whole extent exactly, and one past EOF (ignored).
        pool.punch_hole(ino, 4 * MIB, MIB).unwrap();
        model[4 * MIB as usize..5 * MIB as usize].fill(0);
        pool.punch_hole(ino, model.len() as u64 + 10, MIB).unwrap();
        let idx: Vec<u64> = extents(&pool, ino).iter().map(|e| e.0).collect();
        assert_eq!(idx, vec![0, 1, 3, 5]);
        assert_eq!(pool.read(ino, 0, model.len()).unwrap(), model);
        pool.fsync(ino).unwrap();
        // Space freed once durable: two extents of two replicas went.
        pool.commit().unwrap();
        assert!(pool.statfs().unwrap().free_bytes > free_before, "punched extents give their space back");
        // Punching everything leaves no extent at all.
        pool.punch_hole(ino, 0, 10 * MIB).unwrap();
        assert!(extents(&pool, ino).is_empty());
        model.fill(0);
        pool.fsync(ino).unwrap();
        assert!(pool.check_allocations().is_empty(), "{:?}", pool.check_allocations());
    }
    let pool = open(&devs);
    assert_eq!(pool.read(ino, 0, model.len() + 5).unwrap(), model);
    assert!(pool.state_snapshot().check().is_empty());
}

#[test]
fn punch_hole_sees_buffered_writes() {
    let devs = pool_devices(3, 64 * MIB, "erasure:2+1".parse().unwrap());
    let pool = open(&devs);
    let ino = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap().0;
    let mut model = pattern(3 * MIB as usize, 8);
    pool.write(ino, 0, &model).unwrap(); // not flushed
    pool.punch_hole(ino, 100, 5000).unwrap();
    model[100..5100].fill(0);
    assert_eq!(pool.read(ino, 0, model.len()).unwrap(), model);
    pool.fsync(ino).unwrap();
    assert_eq!(pool.read(ino, 0, model.len()).unwrap(), model);
    assert_eq!(extents(&pool, ino).len(), 3);
}

#[test]
fn seek_data_and_hole() {
    let devs = pool_devices(3, 64 * MIB, "replication:1".parse().unwrap());
    let pool = open(&devs);
    let ino = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap().0;
    // Data in extent 2 (first 4096 bytes) and extent 5 (written, still buffered).
    pool.write(ino, 2 * MIB, &pattern(4096, 1)).unwrap();
    pool.fsync(ino).unwrap();
    pool.write(ino, 5 * MIB + 10, &pattern(100, 2)).unwrap();
    let size = 5 * MIB + 110;
    assert_eq!(pool.getattr(ino).unwrap().size, size);
    assert_eq!(pool.seek(ino, 0, SeekWhence::Data).unwrap(), 2 * MIB);
    assert_eq!(pool.seek(ino, 0, SeekWhence::Hole).unwrap(), 0);
    assert_eq!(pool.seek(ino, 2 * MIB + 5, SeekWhence::Hole).unwrap(), 2 * MIB + 4096);
    assert_eq!(pool.seek(ino, 2 * MIB + 4096, SeekWhence::Data).unwrap(), 5 * MIB);
    assert_eq!(pool.seek(ino, 5 * MIB + 50, SeekWhence::Hole).unwrap(), size);
    assert!(matches!(pool.seek(ino, size, SeekWhence::Data), Err(EngineError::NoSuchOffset)));
    assert!(matches!(pool.seek(ino, size, SeekWhence::Hole), Err(EngineError::NoSuchOffset)));
    assert_eq!(EngineError::NoSuchOffset.errno(), libc::ENXIO);
}

/// Data ranges as bytes: true where data.
fn byte_model(extents: &[(u64, u32)], size: u64) -> Vec<bool> {
    let mut v = vec![false; size as usize];
    for (idx, len) in extents {
        let s = (idx * MIB) as usize;
        for b in v.iter_mut().skip(s).take(*len as usize) {
            *b = true;
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// seek_in answers exactly what scanning the bytes answers (extents are
    /// scaled down: lengths are a few bytes, indices a few extents).
    #[test]
    fn seek_matches_a_byte_scan(
        present in proptest::collection::btree_map(0u64..6, 1u32..=8, 0..5),
        size_extra in 0u64..16,
        offset in 0u64..(6 * 8 + 16),
    ) {
        // Scale: an "extent" is MIB bytes, but only its first len (<= 8) hold data;
        // test positions near those boundaries by mapping offset to idx*MIB + rem.
        let ext: Vec<(u64, u32)> = present.into_iter().collect();
        let last_end = ext.iter().map(|(i, l)| i * MIB + *l as u64).max().unwrap_or(0);
        let size = last_end + size_extra;
        let offset = (offset / 8) * MIB + offset % 8;
        let ranges = data_ranges(ext.iter().copied(), size);
        // Byte model only around the interesting points: compare at offset.
        let small: Vec<(u64, u32)> = ext.clone();
        let scan = |whence: SeekWhence| -> Option<u64> {
            if offset >= size { return None; }
            // Walk the ranges of bytes lazily (the file may be MiBs long).
            let model = |pos: u64| small.iter().any(|(i, l)| pos >= i * MIB && pos < i * MIB + *l as u64);
            let mut candidates: Vec<u64> = vec![offset, size];
            for (i, l) in &small { candidates.push(i * MIB); candidates.push(i * MIB + *l as u64); }
            candidates.sort_unstable();
            for c in candidates.into_iter().filter(|c| *c >= offset && *c <= size) {
                match whence {
                    SeekWhence::Data if c < size && model(c) => return Some(c),
                    SeekWhence::Hole if c == size || !model(c) => return Some(c),
                    _ => {}
                }
            }
            if whence == SeekWhence::Hole { Some(size) } else { None }
        };
        for whence in [SeekWhence::Data, SeekWhence::Hole] {
            let got = seek_in(&ranges, size, offset, whence).ok();
            prop_assert_eq!(got, scan(whence), "{:?} at {} of {} in {:?}", whence, offset, size, ranges);
        }
        if size < 64 * MIB {
            // And the ranges are exactly the data bytes (checked on small files only).
            let bytes = byte_model(&ext, size);
            let mut from_ranges = vec![false; size as usize];
            for (s, e) in &ranges { from_ranges[*s as usize..*e as usize].fill(true); }
            prop_assert!(bytes == from_ranges);
        }
    }
}

#[test]
fn copy_range_copies_bytes_and_keeps_holes() {
    let devs = pool_devices(3, 64 * MIB, "replication:2".parse().unwrap());
    let pool = open(&devs);
    let a = pool.create(ROOT_INO, b"a", FileKind::File, 0o644, 0, 0, 0).unwrap().0;
    let b = pool.create(ROOT_INO, b"b", FileKind::File, 0o644, 0, 0, 0).unwrap().0;
    let src = pattern(2 * MIB as usize + 50, 4);
    pool.write(a, 0, &src).unwrap();
    pool.write(a, 5 * MIB, b"end").unwrap();
    pool.fsync(a).unwrap();
    // Unaligned source and destination, across extents and a hole, short at EOF.
    let n = pool.copy_range(a, 1000, b, 77, 10 * MIB).unwrap();
    assert_eq!(n, 5 * MIB + 3 - 1000);
    pool.fsync(b).unwrap();
    let got = pool.read(b, 0, 10 * MIB as usize).unwrap();
    let mut want = vec![0u8; 77];
    want.extend_from_slice(&pool.read(a, 1000, 10 * MIB as usize).unwrap());
    assert_eq!(got, want);
    // The hole in the source (extents 3, 4) stays a hole in the copy.
    let idx: Vec<u64> = extents(&pool, b).iter().map(|e| e.0).collect();
    assert!(!idx.contains(&3), "{idx:?}");
    assert!(matches!(pool.copy_range(a, 0, a, 10, 100), Err(EngineError::Invalid(_))));
}

#[test]
fn fallocate_grows_checks_space_and_zero_range() {
    let devs = pool_devices(3, 64 * MIB, "replication:3".parse().unwrap());
    let pool = open(&devs);
    let ino = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap().0;
    pool.fallocate(ino, 0, 3 * MIB, FallocMode::Allocate { keep_size: true }).unwrap();
    assert_eq!(pool.getattr(ino).unwrap().size, 0, "KEEP_SIZE");
    pool.fallocate(ino, MIB, 2 * MIB + 5, FallocMode::Allocate { keep_size: false }).unwrap();
    assert_eq!(pool.getattr(ino).unwrap().size, 3 * MIB + 5);
    assert!(extents(&pool, ino).is_empty(), "allocation writes no extent");
    assert_eq!(pool.read(ino, 0, 4 * MIB as usize).unwrap(), vec![0u8; 3 * MIB as usize + 5]);
    // More than the pool holds (three copies of 64 MiB each is < 64 MiB of data).
    let e = pool.fallocate(ino, 0, 200 * MIB, FallocMode::Allocate { keep_size: false }).unwrap_err();
    assert!(matches!(e, EngineError::NoSpace(_)), "{e}");
    assert_eq!(e.errno(), libc::ENOSPC);
    // Zero range: zeros in the middle, and growth without KEEP_SIZE.
    let mut model = pattern(3 * MIB as usize + 5, 6);
    pool.write(ino, 0, &model).unwrap();
    pool.fallocate(ino, 10, 20, FallocMode::ZeroRange { keep_size: false }).unwrap();
    model[10..30].fill(0);
    pool.fallocate(ino, 3 * MIB, MIB, FallocMode::ZeroRange { keep_size: false }).unwrap();
    model[3 * MIB as usize..].fill(0);
    model.resize(4 * MIB as usize, 0);
    assert_eq!(pool.read(ino, 0, 5 * MIB as usize).unwrap(), model);
    assert!(matches!(pool.fallocate(ino, 0, 0, FallocMode::PunchHole), Err(EngineError::Invalid(_))));
}

#[test]
fn policy_xattr_reencodes_and_refuses_unsatisfiable() {
    let devs = pool_devices(4, 64 * MIB, "replication:2".parse().unwrap());
    let ino;
    let data = pattern(3 * MIB as usize + 9, 2);
    {
        let pool = open(&devs);
        ino = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap().0;
        pool.write(ino, 0, &data).unwrap();
        pool.fsync(ino).unwrap();
        let r2: Policy = "replication:2".parse().unwrap();
        assert!(extents(&pool, ino).iter().all(|(_, p)| *p == r2));

        // Nonsense and unsatisfiable values are EINVAL; nothing changes.
        for bad in [&b"nonsense"[..], b"replication:0", b"erasure:0+1", b"\xff"] {
            let e = pool.setxattr(ino, POLICY_XATTR, bad, XattrMode::Any).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "{bad:?}: {e}");
        }
        let e = pool.setxattr(ino, POLICY_XATTR, b"replication:5", XattrMode::Any).unwrap_err();
        assert!(matches!(e, EngineError::PolicyUnsatisfiable { .. }), "{e}");
        assert_eq!(e.errno(), libc::EINVAL);
        assert_eq!(pool.getxattr(ino, POLICY_XATTR).unwrap(), b"replication:2");

        // A valid one re-encodes existing extents at once.
        pool.setxattr(ino, POLICY_XATTR, b"erasure:2+1\n", XattrMode::Any).unwrap();
        let ec: Policy = "erasure:2+1".parse().unwrap();
        let ex = extents(&pool, ino);
        assert_eq!(ex.len(), 4);
        assert!(ex.iter().all(|(_, p)| *p == ec), "{ex:?}");
        assert_eq!(pool.read(ino, 0, data.len()).unwrap(), data);
        assert_eq!(pool.getxattr(ino, POLICY_XATTR).unwrap(), b"erasure:2+1");
        // New extents use it too.
        pool.write(ino, 10 * MIB, b"new").unwrap();
        pool.fsync(ino).unwrap();
        assert!(extents(&pool, ino).iter().all(|(_, p)| *p == ec));
        // XATTR_CREATE on a pinned policy.
        let e = pool.setxattr(ino, POLICY_XATTR, b"replication:1", XattrMode::Create).unwrap_err();
        assert!(matches!(e, EngineError::Exists), "{e}");

        // A directory's pin is inherited by new files; the pool default by the rest.
        let (d, _) = pool.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
        pool.setxattr(d, POLICY_XATTR, b"replication:3", XattrMode::Any).unwrap();
        let (f2, _) = pool.create(d, b"g", FileKind::File, 0o644, 0, 0, 0).unwrap();
        assert_eq!(pool.getxattr(f2, POLICY_XATTR).unwrap(), b"replication:3");
        pool.set_default_policy("erasure:3+1".parse().unwrap()).unwrap();
        let (f3, _) = pool.create(ROOT_INO, b"h", FileKind::File, 0o644, 0, 0, 0).unwrap();
        assert_eq!(pool.getxattr(f3, POLICY_XATTR).unwrap(), b"erasure:3+1");
        assert_eq!(pool.getxattr(ROOT_INO, POLICY_XATTR).unwrap(), b"erasure:3+1");
        let e = pool.set_default_policy("erasure:4+1".parse().unwrap()).unwrap_err();
        assert!(matches!(e, EngineError::PolicyUnsatisfiable { .. }), "{e}");
        pool.write(f3, 0, &data).unwrap();
        pool.fsync(f3).unwrap();
        assert!(extents(&pool, f3).iter().all(|(_, p)| *p == "erasure:3+1".parse().unwrap()));
        assert!(pool.policy_history().iter().any(|c| c.ino == ino), "the re-encode is in the history");
    }
    let pool = open(&devs);
    assert_eq!(pool.default_policy(), "erasure:3+1".parse().unwrap(), "the default survives reopen");
    assert_eq!(pool.read(ino, 0, data.len()).unwrap(), data);
    assert_eq!(pool.getxattr(ino, POLICY_XATTR).unwrap(), b"erasure:2+1");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `user.dfs.policy` values: garbage is a clear EINVAL, never a panic.
    #[test]
    fn policy_values_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
        if let Err(e) = parse_policy(&bytes) {
            prop_assert_eq!(e.errno(), libc::EINVAL);
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Every valid policy round-trips through its text, with or without
    /// the newline `echo` leaves.
    #[test]
    fn valid_policies_round_trip(copies in 1u8..=8, k in 1u8..=8, m in 0u8..=4, erasure: bool, nl: bool) {
        let text = if erasure { format!("erasure:{k}+{m}") } else { format!("replication:{copies}") };
        let with = if nl { format!("{text}\n") } else { text.clone() };
        match text.parse::<Policy>().ok().filter(|p| p.validate().is_ok()) {
            Some(p) => prop_assert_eq!(parse_policy(with.as_bytes()).unwrap(), p),
            None => prop_assert!(parse_policy(with.as_bytes()).is_err()),
        }
    }
}
