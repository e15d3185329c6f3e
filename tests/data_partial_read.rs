//! Partial reads through the block-sum table, and sequential read-ahead
//! (issues 5 and 6, read side).
//!
//! On `MemDevice` members (wrapped in `MeteredDevice` to count the bytes
//! the pool reads, and in `FaultyDevice` to damage them):
//!
//! - every extent fragment written carries a block-sum table that matches
//!   its payload (read straight from the device);
//! - random reads of part of an extent, under every policy and with 4 KiB
//!   and 8 KiB blocks, return exactly the bytes written while reading a
//!   small fraction of what whole-extent reads would;
//! - a byte flipped inside one 4 KiB piece of the fragment a partial read
//!   uses is detected there, the read still returns correct data, and the
//!   fragment is rewritten (repair);
//! - a damaged table falls back to the whole-extent read (correct data,
//!   header block repaired);
//! - fragments written without a table (as before the feature) still read,
//!   with no error and no repair;
//! - a sequential stream of 128 KiB reads fetches the next extents ahead,
//!   each once.

use dfs_format::fragment::{FragmentKind, BLOCK_SUM_PIECE};
use dfs_format::{FragmentHeader, Policy};
use dynamicfs::device::metered::{IoStats, MeteredDevice};
use dynamicfs::device::{AlignedBuf, Device, FaultyDevice, MemDevice};
use dynamicfs::engine::redundancy;
use dynamicfs::engine::state::Extent;
use dynamicfs::engine::{FileKind, Ino, Pool, PoolOptions, ROOT_INO};
use std::sync::atomic::Ordering;
use std::sync::Arc;

const MIB: usize = 1 << 20;
const POLICIES: [&str; 6] =
    ["replication:1", "replication:2", "replication:3", "erasure:2+1", "erasure:4+2", "erasure:3+2"];

/// A pool on six metered, damageable in-memory members.
struct Rig {
    pool: Pool,
    faulty: Vec<Arc<FaultyDevice>>,
    stats: Vec<Arc<IoStats>>,
}

impl Rig {
    fn new(policy: &str, bs: u32) -> Rig {
        let policy: Policy = policy.parse().unwrap();
        let mem: Vec<Arc<dyn Device>> =
            (0..6).map(|_| Arc::new(MemDevice::new(96 << 20, bs)) as Arc<dyn Device>).collect();
        let refs: Vec<&dyn Device> = mem.iter().map(|d| d.as_ref()).collect();
        dynamicfs::mkfs::format_devices(&refs, "partial", policy).expect("mkfs");
        let faulty: Vec<Arc<FaultyDevice>> = mem.into_iter().map(|d| Arc::new(FaultyDevice::new(d))).collect();
        let (devs, stats): (Vec<Arc<dyn Device>>, Vec<Arc<IoStats>>) =
            faulty.iter().map(|f| MeteredDevice::wrap(f.clone() as Arc<dyn Device>)).unzip();
        let pool = Pool::open(devs, PoolOptions { no_lock: true, ..Default::default() }).expect("open");
        Rig { pool, faulty, stats }
    }

    fn bytes_read(&self) -> u64 {
        self.stats.iter().map(|s| s.read.bytes.load(Ordering::Relaxed)).sum()
    }

    /// A file holding `data`, fsynced; its inode and extents in order.
    fn put(&self, name: &str, data: &[u8]) -> (Ino, Vec<Extent>) {
        let (ino, _) = self.pool.create(ROOT_INO, name.as_bytes(), FileKind::File, 0o644, 0, 0, 0).unwrap();
        self.pool.write(ino, 0, data).unwrap();
        self.pool.fsync(ino).unwrap();
        (ino, self.extents(ino))
    }

    fn extents(&self, ino: Ino) -> Vec<Extent> {
        let st = self.pool.state_snapshot();
        let Some(dynamicfs::engine::state::Body::File(map)) = st.inodes.get(&ino).map(|i| &i.body) else {
            panic!("inode {ino} is not a file")
        };
        map.values().map(|id| st.extents[id].clone()).collect()
    }

    /// Byte offset on its device of fragment `i` of `e`, and the block size.
    fn frag_at(&self, e: &Extent, i: usize) -> (usize, u64, usize) {
        let loc = e.frags[i];
        let m = self.pool.members()[loc.member as usize].as_ref().unwrap();
        (loc.member as usize, m.layout.data_offset(loc.block), m.layout.block_size as usize)
    }

    /// Fragment `i` of `e` straight from its device: header, table (if
    /// any) and payload, checked against each other.
    fn check_fragment(&self, e: &Extent, i: usize) -> Result<bool, String> {
        let (member, at, bs) = self.frag_at(e, i);
        let mut buf = AlignedBuf::zeroed(e.frags[i].blocks as usize * bs);
        self.faulty[member].read_at(at, &mut buf).map_err(|x| x.to_string())?;
        let (h, sums) = FragmentHeader::decode_with_sums(&buf).map_err(|x| format!("fragment {i}: {x}"))?;
        let s = h.payload_len as usize;
        if h.kind != FragmentKind::Extent || h.extent_uuid.as_u128() != e.id || s != shard(e) {
            return Err(format!("fragment {i}: header does not match the extent"));
        }
        let payload = &buf[bs..bs + s];
        if blake3::hash(payload).as_bytes() != &h.payload_blake3 {
            return Err(format!("fragment {i}: payload BLAKE3 mismatch"));
        }
        let Some(sums) = sums else { return Ok(false) };
        for (p, piece) in payload.chunks(BLOCK_SUM_PIECE).enumerate() {
            if sums.get(p).map(|x| &x[..]) != Some(&blake3::hash(piece).as_bytes()[..8]) {
                return Err(format!("fragment {i}: table entry {p} does not match its piece"));
            }
        }
        Ok(true)
    }
}

fn shard(e: &Extent) -> usize {
    redundancy::shard_len(e.policy(), e.len) as usize
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x >> 32) as u8
        })
        .collect()
}

/// A small deterministic generator for offsets and lengths.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

/// Which fragment a partial read of extent byte `at` uses (see partial.rs:
/// replica `id % N`, or the data shard holding the byte).
fn used_fragment(e: &Extent, at: usize) -> (usize, usize) {
    match e.policy() {
        Policy::Replication { copies } => ((e.id % copies as u128) as usize, at),
        Policy::Erasure { .. } => (at / shard(e), at % shard(e)),
    }
}

#[test]
fn every_written_fragment_carries_a_matching_table() {
    for policy in POLICIES {
        let rig = Rig::new(policy, 4096);
        let len = 2 * MIB + 12_345;
        let (_, extents) = rig.put("f", &pattern(len, 1));
        assert_eq!(extents.len(), 3);
        for e in &extents {
            for i in 0..e.frags.len() {
                assert_eq!(rig.check_fragment(e, i), Ok(true), "{policy}: extent {:x} fragment {i}", e.id);
            }
        }
    }
}

#[test]
fn random_partial_reads_are_byte_exact_and_read_little() {
    for bs in [4096u32, 8192] {
        for policy in POLICIES {
            let rig = Rig::new(policy, bs);
            let extents = 24;
            let data = pattern(extents * MIB - 777, 2 + bs as u64);
            let (ino, _) = rig.put("f", &data);
            let mut rng = Rng(bs as u64 ^ policy.len() as u64);
            let before = rig.bytes_read();
            let mut asked = 0usize;
            // Each read in an extent not read before (so nothing is cached),
            // jumping by more than an extent (so nothing looks sequential).
            let order: Vec<usize> = (0..extents).map(|k| (k * 7) % extents).collect();
            for &x in &order {
                let within = 1 + rng.below(MIB - 70_000);
                let len = 1 + rng.below(64 * 1024);
                let off = x * MIB + within;
                let got = rig.pool.read(ino, off as u64, len).unwrap();
                let end = (off + len).min(data.len());
                assert!(got == data[off..end], "{policy} bs {bs}: read of {len} at {off} differs");
                asked += got.len();
            }
            let read = (rig.bytes_read() - before) as usize;
            // Whole-extent reads would fetch at least 1 MiB per read; the
            // pieces are the range plus at most two pieces (or blocks) per
            // fragment touched, plus one header block each time.
            let limit = asked + order.len() * 4 * (2 * bs as usize + bs as usize);
            assert!(read <= limit, "{policy} bs {bs}: {read} bytes read for {asked} asked (limit {limit})");
            assert!(read < order.len() * MIB / 4, "{policy} bs {bs}: {read} bytes read");
            assert_eq!(rig.pool.counters.fragment_errors.load(Ordering::Relaxed), 0, "{policy}");
        }
    }
}

#[test]
fn flipped_byte_in_a_piece_is_caught_and_the_fragment_repaired() {
    for policy in POLICIES.iter().filter(|p| **p != "replication:1") {
        let rig = Rig::new(policy, 4096);
        let data = pattern(3 * MIB, 3);
        let (ino, extents) = rig.put("f", &data);
        let e = &extents[1];
        let at = 300_000 + 17;
        let (frag, in_payload) = used_fragment(e, at);
        let (member, off, bs) = rig.frag_at(e, frag);
        rig.faulty[member].flip_bit(off + (bs + in_payload) as u64, 3).unwrap();
        assert!(rig.check_fragment(e, frag).is_err(), "{policy}: the flip did not land");
        let errors0 = rig.pool.counters.fragment_errors.load(Ordering::Relaxed);
        let off = MIB + at - 10;
        let got = rig.pool.read(ino, off as u64, 40).unwrap();
        assert!(got == data[off..off + 40], "{policy}: wrong data returned");
        assert!(rig.pool.counters.fragment_errors.load(Ordering::Relaxed) > errors0, "{policy}: not detected");
        assert_eq!(rig.pool.counters.repairs.load(Ordering::Relaxed), 1, "{policy}: not repaired");
        rig.pool.sync_all().unwrap();
        let now = rig.extents(ino);
        assert_ne!(now[1].frags[frag], e.frags[frag], "{policy}: fragment not rewritten");
        for i in 0..now[1].frags.len() {
            assert_eq!(rig.check_fragment(&now[1], i), Ok(true), "{policy}: fragment {i} after repair");
        }
        // And the next partial read of that range takes the repaired fragment.
        assert!(rig.pool.read(ino, off as u64 + 5 * 4096, 100).unwrap() == data[off + 5 * 4096..off + 5 * 4096 + 100]);
    }
}

#[test]
fn a_damaged_table_falls_back_to_the_whole_extent() {
    for policy in ["replication:3", "erasure:4+2"] {
        let rig = Rig::new(policy, 4096);
        let data = pattern(2 * MIB, 4);
        let (ino, extents) = rig.put("f", &data);
        let e = &extents[0];
        let at = 200_000;
        let (frag, in_payload) = used_fragment(e, at);
        let (member, off, _) = rig.frag_at(e, frag);
        // Flip a bit of the entry of the piece to be read.
        let entry = 256 + 8 * (in_payload / BLOCK_SUM_PIECE) + 2;
        rig.faulty[member].flip_bit(off + entry as u64, 5).unwrap();
        assert!(rig.check_fragment(e, frag).is_err(), "{policy}: table not damaged");
        let got = rig.pool.read(ino, at as u64, 5000).unwrap();
        assert!(got == data[at..at + 5000], "{policy}: wrong data");
        assert_eq!(rig.pool.counters.repairs.load(Ordering::Relaxed), 1, "{policy}: header block not repaired");
        rig.pool.sync_all().unwrap();
        let now = rig.extents(ino);
        assert_eq!(rig.check_fragment(&now[0], frag), Ok(true), "{policy}: after repair");
    }
}

#[test]
fn fragments_without_a_table_still_read() {
    for policy in ["replication:2", "erasure:3+2"] {
        let rig = Rig::new(policy, 4096);
        let data = pattern(3 * MIB - 100, 5);
        let (ino, extents) = rig.put("f", &data);
        // Rewrite every header block as a writer before the feature did.
        for e in &extents {
            for i in 0..e.frags.len() {
                let (member, off, bs) = rig.frag_at(e, i);
                let mut blk = AlignedBuf::zeroed(bs);
                rig.faulty[member].read_at(off, &mut blk).unwrap();
                let h = FragmentHeader::decode(&blk).unwrap();
                let old = AlignedBuf::from_slice_padded(&h.encode(), bs);
                rig.faulty[member].write_at(off, &old).unwrap();
                assert_eq!(rig.check_fragment(e, i), Ok(false), "{policy}: table still there");
            }
        }
        let mut rng = Rng(9);
        for k in [1usize, 0, 2, 1] {
            let off = k * MIB + 1 + rng.below(MIB / 2);
            let len = 1 + rng.below(9000);
            let got = rig.pool.read(ino, off as u64, len).unwrap();
            let end = (off + len).min(data.len());
            assert!(got == data[off..end], "{policy}: read of {len} at {off}");
        }
        assert_eq!(rig.pool.counters.fragment_errors.load(Ordering::Relaxed), 0, "{policy}");
        assert_eq!(rig.pool.counters.repairs.load(Ordering::Relaxed), 0, "{policy}");
    }
}

#[test]
fn sequential_reads_fetch_the_next_extents_ahead_once() {
    for policy in ["replication:3", "erasure:4+2"] {
        let rig = Rig::new(policy, 4096);
        let extents = 20;
        let data = pattern(extents * MIB, 6);
        let (ino, ext) = rig.put("f", &data);
        // Device bytes of one fast-path fetch of an extent: one replica or
        // the K data shards, header blocks included.
        let per_extent = match policy.parse::<Policy>().unwrap() {
            Policy::Replication { .. } => ext[0].frags[0].blocks as u64 * 4096,
            Policy::Erasure { data, .. } => data as u64 * ext[0].frags[0].blocks as u64 * 4096,
        };
        let before = rig.bytes_read();
        let step = 128 * 1024;
        let first = rig.pool.read(ino, 0, step).unwrap();
        assert!(first == data[..step]);
        // The next extents arrive in the background, without more reads.
        let t0 = std::time::Instant::now();
        while rig.bytes_read() - before < 4 * per_extent && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let ahead = rig.bytes_read() - before;
        assert!(ahead >= 4 * per_extent, "{policy}: no read-ahead ({ahead} bytes read after the first 128 KiB)");
        let mut got = first;
        for off in (step..data.len()).step_by(step) {
            got.extend(rig.pool.read(ino, off as u64, step).unwrap());
        }
        assert!(got == data, "{policy}: sequential read differs");
        let read = rig.bytes_read() - before;
        // Each extent once (one more allowed: the extent cache is shared
        // with the other tests of this binary, running in parallel, which
        // may evict a fetched extent before it is read).
        assert!(read >= extents as u64 * per_extent, "{policy}: {read} bytes read: some extent never fetched?");
        assert!(read <= (extents as u64 + 1) * per_extent, "{policy}: {read} bytes read: extents fetched twice");
        assert_eq!(rig.pool.counters.fragment_errors.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn whole_extent_sequential_reads_are_served_by_read_ahead() {
    // 1 MiB reads (FUSE with read_ahead_kb raised, or bench-engine): after
    // the first, every extent comes from the background fetches, so the
    // reader itself fetches (almost) no fragment.
    for policy in ["replication:3", "erasure:4+2"] {
        let rig = Rig::new(policy, 4096);
        let extents = 24;
        let data = pattern(extents * MIB, 7);
        let (ino, _) = rig.put("f", &data);
        let reads0 = rig.pool.counters.fragments_read.load(Ordering::Relaxed);
        for i in 0..extents {
            let got = rig.pool.read(ino, (i * MIB) as u64, MIB).unwrap();
            assert!(got == data[i * MIB..(i + 1) * MIB], "{policy}: extent {i} differs");
        }
        let own = rig.pool.counters.fragments_read.load(Ordering::Relaxed) - reads0;
        let first = if policy.starts_with("erasure") { 4 } else { 1 };
        // The first extent, plus a little slack for the shared cache.
        assert!(own <= 3 * first, "{policy}: the reader fetched {own} fragments itself");
    }
}
