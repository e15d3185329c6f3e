//! Metadata benchmark (`scripts/bench-metadata`).
//!
//! Measures, on in-memory members:
//!
//! 1. **Creates**: 100 000 empty files in one directory, and across a tree
//!    of 100 directories × 1 000 files, without fsync (one `sync_all` at the
//!    end, included in the time); with an fsync after every file on 10 000
//!    files (flat, and 100 × 100), since every fsync is a full commit.
//! 2. **Open time of a pool with 1 M extents.** Writing 1 M extents through
//!    the engine costs a 1 MiB buffer per extent in the write path (hours
//!    here), so the pool is synthesized: 125 000 files of 8 extents of 4 KiB
//!    each (replication:2, two fragments per extent, fragments laid out
//!    back to back on 3 members) in 125 directories, built as an engine
//!    `State`, written as a checkpoint object and a root record exactly as
//!    the engine writes them, on zero-eliding sparse in-memory members (no
//!    fragment data is stored: open never reads it). `Pool::open` is then
//!    timed: read and verify the checkpoint, decode it, rebuild the
//!    allocators from 2 M fragment locations, replay the (empty) journal, and
//!    write the checkpoint every open writes. `check_allocations` and
//!    `State::check` confirm the synthesized pool is consistent.
//! 3. **Memory per inode and per extent**, by a counting global allocator
//!    (bytes of every live heap block as glibc sizes it: `malloc_usable_size`
//!    plus 8 bytes of chunk header): the heap of a `State` decoded from its
//!    checkpoint bytes, as open does. Per inode: 100 000 empty files (one
//!    directory entry each) minus an empty pool, divided by 100 000. Per
//!    extent: the 1 M-extent state minus the same namespace without extents,
//!    divided by 1 M. RSS deltas (`/proc/self/statm`) are printed alongside.
//! 4. **Device syncs per fsync** with 1, 8 and 64 concurrent writers, each
//!    looping create + write 4 KiB + fsync, on plain memory members (sync is
//!    free) and on memory members whose sync takes 200 µs.
//!
//! Prints a table, then one JSON object with every figure as the last line.

use dfs_format::fragment::FragmentKind;
use dfs_format::root::{CheckpointLocator, CheckpointRef};
use dfs_format::{FragmentHeader, Policy, RegionKind, RootRecord, FRAGMENT_HEADER_LEN};
use dynamicfs::device::{AlignedBuf, Device, DeviceIdentity, DeviceKind, MemDevice};
use dynamicfs::engine::state::{Attrs, Body, Extent, FragLoc, Inode, MemberRec, MemberState, PoolConfig, State};
use dynamicfs::engine::{FileKind, Pool, PoolOptions, ROOT_INO};
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

// ------------------------------------------------------------ counting allocator

/// Counts the live heap bytes (usable size + glibc's 8-byte chunk header).
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

fn chunk_bytes(p: *mut u8) -> i64 {
    // SAFETY: `p` was returned by the system allocator (glibc malloc /
    // posix_memalign) and is still live.
    unsafe { libc::malloc_usable_size(p as *mut libc::c_void) as i64 + 8 }
}

// SAFETY: delegates every call to `System`, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            LIVE.fetch_add(chunk_bytes(p), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: AllocLayout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            LIVE.fetch_add(chunk_bytes(p), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        LIVE.fetch_sub(chunk_bytes(p), Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, new: usize) -> *mut u8 {
        let old = chunk_bytes(p);
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            LIVE.fetch_add(chunk_bytes(q) - old, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

fn rss_bytes() -> i64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = s.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Heap bytes of a state decoded from its serialized form (what open holds).
fn decoded_heap(bytes: &[u8]) -> (i64, State) {
    let before = live();
    let s = State::decode_checkpoint(bytes).expect("decode state");
    (live() - before, s)
}

fn state_heap(pool: &Pool) -> i64 {
    let bytes = pool.state_snapshot().encode_checkpoint().expect("encode");
    decoded_heap(&bytes).0
}

// ------------------------------------------------------------ devices

/// An in-memory member that stores only non-zero 4 KiB blocks (so mkfs's
/// zeroed journal costs nothing).
#[derive(Debug)]
struct Sparse {
    identity: DeviceIdentity,
    size: u64,
    blocks: Mutex<HashMap<u64, Box<[u8]>>>,
}

impl Sparse {
    fn new(name: &str, size: u64) -> Sparse {
        let identity = DeviceIdentity { kind: DeviceKind::Memory, path: PathBuf::from(name), dev: 0, ino: 0 };
        Sparse { identity, size, blocks: Mutex::new(HashMap::new()) }
    }

    fn stored_bytes(&self) -> u64 {
        self.blocks.lock().unwrap().len() as u64 * 4096
    }
}

impl Device for Sparse {
    fn block_size(&self) -> u32 {
        4096
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> dynamicfs::device::Result<()> {
        dynamicfs::device::check_request(self, offset, buf)?;
        let blocks = self.blocks.lock().unwrap();
        for (i, chunk) in buf.chunks_mut(4096).enumerate() {
            match blocks.get(&(offset / 4096 + i as u64)) {
                Some(b) => chunk.copy_from_slice(b),
                None => chunk.fill(0),
            }
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> dynamicfs::device::Result<()> {
        dynamicfs::device::check_request(self, offset, buf)?;
        let mut blocks = self.blocks.lock().unwrap();
        for (i, chunk) in buf.chunks(4096).enumerate() {
            let b = offset / 4096 + i as u64;
            if chunk.iter().all(|&x| x == 0) {
                blocks.remove(&b);
            } else {
                blocks.insert(b, chunk.into());
            }
        }
        Ok(())
    }
    fn sync(&self) -> dynamicfs::device::Result<()> {
        Ok(())
    }
}

fn opts() -> PoolOptions {
    PoolOptions { no_lock: true, ..Default::default() }
}

fn format(devs: &[Arc<dyn Device>], policy: Policy) -> dynamicfs::mkfs::FormattedPool {
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref()).collect();
    dynamicfs::mkfs::format_devices(&refs, "bench", policy).expect("mkfs")
}

fn mem_devices(n: usize, size: u64, latency: Duration) -> Vec<Arc<dyn Device>> {
    (0..n)
        .map(|i| {
            Arc::new(MemDevice::named(&format!("mem{i}"), size, 4096).with_sync_latency(latency)) as Arc<dyn Device>
        })
        .collect()
}

// ------------------------------------------------------------ 1. creates

#[derive(Debug, Clone, Copy, Default)]
struct Creates {
    files: u64,
    secs: f64,
    device_syncs: u64,
    commits: u64,
}

impl Creates {
    fn per_sec(&self) -> f64 {
        self.files as f64 / self.secs
    }
}

/// `dirs` directories (0 = the root only) × `per_dir` files; fsync after
/// each file or one sync at the end. Returns the figures and the devices.
fn creates(dirs: usize, per_dir: usize, fsync: bool) -> (Creates, Vec<Arc<dyn Device>>) {
    let devs = mem_devices(3, GIB, Duration::ZERO);
    format(&devs, Policy::Replication { copies: 2 });
    let pool = Pool::open(devs.clone(), opts()).expect("open");
    let s0 = (pool.counters.device_syncs.load(Ordering::Relaxed), pool.counters.commits.load(Ordering::Relaxed));
    let start = Instant::now();
    let parents: Vec<u64> = if dirs == 0 {
        vec![ROOT_INO]
    } else {
        (0..dirs).map(|d| pool.mkdir(ROOT_INO, format!("d{d:03}").as_bytes(), 0o755, 0, 0).expect("mkdir").0).collect()
    };
    let mut files = 0;
    for &parent in &parents {
        for i in 0..per_dir {
            let (ino, _) = pool
                .create(parent, format!("file-{i:06}").as_bytes(), FileKind::File, 0o644, 1000, 1000, 0)
                .expect("create");
            if fsync {
                pool.fsync(ino).expect("fsync");
            }
            files += 1;
        }
    }
    pool.sync_all().expect("sync");
    let secs = start.elapsed().as_secs_f64();
    let c = Creates {
        files,
        secs,
        device_syncs: pool.counters.device_syncs.load(Ordering::Relaxed) - s0.0,
        commits: pool.counters.commits.load(Ordering::Relaxed) - s0.1,
    };
    pool.close().expect("close");
    (c, devs)
}

// ------------------------------------------------------------ 2. the 1 M-extent pool

const SYNTH_FILES_PER_DIR: u64 = 1000;
const SYNTH_EXTENTS_PER_FILE: u64 = 8;

/// The synthesized namespace of `dirs` × 1000 files (and, with `extents`,
/// 8 extents per file).
fn synth_state(fp: &dynamicfs::mkfs::FormattedPool, dirs: u64, data_start_block: &mut [u64], extents: bool) -> State {
    let policy = Policy::Replication { copies: 2 };
    let members: Vec<MemberRec> = fp
        .members
        .iter()
        .enumerate()
        .map(|(i, (u, _))| MemberRec {
            index: i as u32,
            uuid: u.as_u128(),
            state: MemberState::Online,
            path_hint: String::new(),
        })
        .collect();
    let config = PoolConfig { default_policy: policy.encode(), label: "bench".into() };
    let now = 1_700_000_000_000_000_000i64;
    let mut st = State::new(config, members, now);
    let attrs = |kind: FileKind, size: u64, nlink: u32| Attrs {
        kind,
        perm: if kind == FileKind::Dir { 0o755 } else { 0o644 },
        uid: 1000,
        gid: 1000,
        size,
        atime_ns: now,
        mtime_ns: now,
        ctime_ns: now,
        nlink,
        rdev: 0,
    };
    let mut ino = ROOT_INO + 1;
    let mut root_entries = BTreeMap::new();
    let n_members = fp.members.len() as u64;
    let mut k = 0u64;
    for d in 0..dirs {
        let dino = ino;
        ino += 1;
        let mut entries = BTreeMap::new();
        for f in 0..SYNTH_FILES_PER_DIR {
            let fino = ino;
            ino += 1;
            let mut map = BTreeMap::new();
            let mut size = 0;
            if extents {
                for x in 0..SYNTH_EXTENTS_PER_FILE {
                    let frags: Vec<FragLoc> = (0..2)
                        .map(|r| {
                            let m = ((k + r) % n_members) as usize;
                            let block = data_start_block[m];
                            data_start_block[m] += 2;
                            FragLoc { member: m as u32, blocks: 2, block }
                        })
                        .collect();
                    k += 1;
                    let id = uuid::Uuid::new_v4().as_u128();
                    let e = Extent {
                        id,
                        len: 4096,
                        blake3: *blake3::hash(&id.to_le_bytes()).as_bytes(),
                        policy: policy.encode(),
                        frags: frags.into(),
                    };
                    map.insert(x, id);
                    st.extents.insert(id, e);
                }
                size = (SYNTH_EXTENTS_PER_FILE - 1) * MIB + 4096;
            }
            st.inodes.insert(
                fino,
                Inode { attrs: attrs(FileKind::File, size, 1), xattrs: None, policy: None, body: Body::File(map) },
            );
            entries.insert(format!("file-{f:06}").into_bytes().into_boxed_slice(), fino);
        }
        st.inodes.insert(
            dino,
            Inode {
                attrs: attrs(FileKind::Dir, 0, 2),
                xattrs: None,
                policy: None,
                body: Body::Dir { parent: ROOT_INO, entries },
            },
        );
        root_entries.insert(format!("d{d:03}").into_bytes().into_boxed_slice(), dino);
    }
    let root = st.inodes.get_mut(&ROOT_INO).expect("root");
    root.attrs.nlink = 2 + dirs as u32;
    root.body = Body::Dir { parent: ROOT_INO, entries: root_entries };
    st.next_ino = ino;
    st
}

/// Write `bytes` as the pool's checkpoint (generation 2) and point a root at
/// it, as `Pool::checkpoint` does.
fn write_checkpoint(devs: &[Arc<dyn Device>], fp: &dynamicfs::mkfs::FormattedPool, bytes: &[u8], at_block: &[u64]) {
    let bs = 4096usize;
    let l0 = &fp.members[0].1;
    let mut slot0 = AlignedBuf::zeroed(bs);
    devs[0].read_at(l0.root_slot_offset(0), &mut slot0).expect("read root");
    let mkfs_root = RootRecord::decode(&slot0).expect("mkfs root");
    let copies_n = devs.len().min(3);
    let policy = Policy::Replication { copies: copies_n as u8 };
    let id = uuid::Uuid::new_v4();
    let hash = *blake3::hash(bytes).as_bytes();
    let blocks = 1 + bytes.len().div_ceil(bs);
    let mut copies = Vec::new();
    let mut buf = AlignedBuf::zeroed(blocks * bs);
    buf[bs..bs + bytes.len()].copy_from_slice(bytes);
    for (i, dev) in devs.iter().enumerate().take(copies_n) {
        let header = FragmentHeader {
            kind: FragmentKind::Checkpoint,
            pool_uuid: fp.pool_uuid,
            extent_uuid: id,
            fragment_index: i as u16,
            fragment_count: copies_n as u16,
            policy,
            payload_len: bytes.len() as u32,
            extent_len: bytes.len() as u32,
            generation: 2,
            created_ns: 0,
            payload_blake3: hash,
            extent_blake3: hash,
        };
        buf[..FRAGMENT_HEADER_LEN].copy_from_slice(&header.encode());
        let layout = &fp.members[i].1;
        let offset = layout.data_offset(at_block[i]);
        dev.write_at(offset, &buf).expect("write checkpoint");
        copies.push(CheckpointLocator { member_index: i as u32, offset, len: (blocks * bs) as u64 });
    }
    let root = RootRecord {
        generation: 2,
        checkpoint: Some(CheckpointRef { id, len: bytes.len() as u64, blake3: hash, copies }),
        ..mkfs_root
    };
    let enc = AlignedBuf::from_slice_padded(&root.encode(), bs);
    for (dev, (_, layout)) in devs.iter().zip(&fp.members) {
        dev.write_at(layout.root_slot_offset(2 % layout.root_slots()), &enc).expect("write root");
    }
    assert_eq!(l0.region(RegionKind::Data).start % bs as u64, 0);
}

#[derive(Debug, Default)]
struct BigOpen {
    extents: u64,
    inodes: u64,
    checkpoint_bytes: u64,
    synth_secs: f64,
    open_secs: f64,
    reopen_secs: f64,
    state_heap: i64,
    namespace_heap: i64,
    pool_heap_delta: i64,
    rss_delta: i64,
    device_bytes: u64,
    /// The steps of open, timed outside the engine with the same calls.
    phase_blake3_secs: f64,
    phase_decode_secs: f64,
    phase_allocators_secs: f64,
    phase_allocators_sorted_secs: f64,
    phase_encode_secs: f64,
}

fn big_open() -> BigOpen {
    let t0 = Instant::now();
    let sparse: Vec<Arc<Sparse>> = (0..3).map(|i| Arc::new(Sparse::new(&format!("sparse{i}"), 8 * GIB))).collect();
    let devs: Vec<Arc<dyn Device>> = sparse.iter().map(|d| d.clone() as Arc<dyn Device>).collect();
    let fp = format(&devs, Policy::Replication { copies: 2 });
    let mut next = vec![0u64; devs.len()];
    let full = synth_state(&fp, 125, &mut next, true);
    let problems = full.check();
    assert!(problems.is_empty(), "synthesized state: {:?}", &problems[..problems.len().min(5)]);
    let bytes = full.encode_checkpoint().expect("encode");
    let (extents, inodes) = (full.extents.len() as u64, full.inodes.len() as u64);
    drop(full);
    write_checkpoint(&devs, &fp, &bytes, &next);
    let synth_secs = t0.elapsed().as_secs_f64();

    // Memory: the full state vs the same namespace without extents, both
    // decoded from their serialized form as open decodes them.
    let (state_heap, s) = decoded_heap(&bytes);
    drop(s);
    let ns_bytes = synth_state(&fp, 125, &mut vec![0; devs.len()], false).encode_checkpoint().expect("encode");
    let (namespace_heap, s) = decoded_heap(&ns_bytes);
    drop(s);
    drop(ns_bytes);
    let checkpoint_bytes = bytes.len() as u64;

    // What open does, step by step (same calls, outside the engine).
    let t = Instant::now();
    std::hint::black_box(blake3::hash(&bytes));
    let phase_blake3_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let st = State::decode_checkpoint(&bytes).expect("decode");
    let phase_decode_secs = t.elapsed().as_secs_f64();
    drop(bytes);
    let new_allocators = || -> Vec<dfs_alloc::Allocator> {
        fp.members
            .iter()
            .map(|(_, l)| {
                dfs_alloc::Allocator::new(
                    l.data_blocks(),
                    dfs_format::bitmap::bits_per_bitmap_block(l.block_size) as u32,
                )
                .expect("allocator")
            })
            .collect()
    };
    let t = Instant::now();
    let mut allocs = new_allocators();
    for (_, _, f) in st.all_fragments() {
        allocs[f.member as usize]
            .mark_used(dfs_alloc::Run { start: f.block, len: f.blocks as u64 })
            .expect("mark_used");
    }
    let phase_allocators_secs = t.elapsed().as_secs_f64();
    drop(allocs);
    // The same, with the runs sorted by (member, block) first.
    let t = Instant::now();
    let mut allocs = new_allocators();
    let mut runs: Vec<(u32, u64, u32)> = st.all_fragments().map(|(_, _, f)| (f.member, f.block, f.blocks)).collect();
    runs.sort_unstable();
    for (member, block, blocks) in runs {
        allocs[member as usize].mark_used(dfs_alloc::Run { start: block, len: blocks as u64 }).expect("mark_used");
    }
    let phase_allocators_sorted_secs = t.elapsed().as_secs_f64();
    drop(allocs);
    let t = Instant::now();
    std::hint::black_box(st.encode_checkpoint().expect("encode"));
    let phase_encode_secs = t.elapsed().as_secs_f64();
    drop(st);

    let stored0 = sparse.iter().map(|d| d.stored_bytes()).sum::<u64>() as i64;
    let (heap0, rss0) = (live(), rss_bytes());
    let t = Instant::now();
    let pool = Pool::open(devs.clone(), opts()).expect("open the 1 M-extent pool");
    let open_secs = t.elapsed().as_secs_f64();
    // The open wrote a new checkpoint onto the (heap-backed) devices: not pool memory.
    let stored = sparse.iter().map(|d| d.stored_bytes()).sum::<u64>() as i64 - stored0;
    let (pool_heap_delta, rss_delta) = (live() - heap0 - stored * 4104 / 4096, rss_bytes() - rss0 - stored);
    assert_eq!(pool.state_snapshot().extents.len() as u64, extents);
    let problems = pool.check_allocations();
    assert!(problems.is_empty(), "allocations: {:?}", &problems[..problems.len().min(5)]);
    drop(pool);
    // Once more: the pool as the engine itself checkpointed it.
    let t = Instant::now();
    let pool = Pool::open(devs.clone(), opts()).expect("reopen");
    let reopen_secs = t.elapsed().as_secs_f64();
    drop(pool);
    let device_bytes = sparse.iter().map(|d| d.stored_bytes()).sum();
    BigOpen {
        extents,
        inodes,
        checkpoint_bytes,
        synth_secs,
        open_secs,
        reopen_secs,
        state_heap,
        namespace_heap,
        pool_heap_delta,
        rss_delta,
        device_bytes,
        phase_blake3_secs,
        phase_decode_secs,
        phase_allocators_secs,
        phase_allocators_sorted_secs,
        phase_encode_secs,
    }
}

/// Heap per extent at `dirs` × 8000 extents (decoded state with extents
/// minus the same namespace without), to show the figure does not depend on where the table stands in its growth.
fn per_extent_at(dirs: u64) -> f64 {
    let devs: Vec<Arc<dyn Device>> =
        (0..3).map(|i| Arc::new(Sparse::new(&format!("s{i}"), 8 * GIB)) as Arc<dyn Device>).collect();
    let fp = format(&devs, Policy::Replication { copies: 2 });
    let full = synth_state(&fp, dirs, &mut [0; 3], true).encode_checkpoint().expect("encode");
    let ns = synth_state(&fp, dirs, &mut [0; 3], false).encode_checkpoint().expect("encode");
    let (a, s) = decoded_heap(&full);
    drop(s);
    let (b, s) = decoded_heap(&ns);
    drop(s);
    (a - b) as f64 / (dirs * SYNTH_FILES_PER_DIR * SYNTH_EXTENTS_PER_FILE) as f64
}

// ------------------------------------------------------------ 4. syncs per fsync

#[derive(Debug, Clone, Copy)]
struct Syncs {
    writers: usize,
    latency_us: u64,
    fsyncs: u64,
    device_syncs: u64,
    commits: u64,
    secs: f64,
}

fn syncs(writers: usize, per_writer: usize, latency: Duration) -> Syncs {
    let devs = mem_devices(4, 256 * MIB, latency);
    format(&devs, Policy::Replication { copies: 2 });
    let pool = Pool::open(devs, opts()).expect("open");
    let s0 = (pool.counters.device_syncs.load(Ordering::Relaxed), pool.counters.commits.load(Ordering::Relaxed));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..writers {
            let pool = &pool;
            s.spawn(move || {
                let data = vec![t as u8 | 1; 4096];
                for i in 0..per_writer {
                    let (ino, _) = pool
                        .create(ROOT_INO, format!("w{t}-{i}").as_bytes(), FileKind::File, 0o644, 0, 0, 0)
                        .expect("create");
                    pool.write(ino, 0, &data).expect("write");
                    pool.fsync(ino).expect("fsync");
                }
            });
        }
    });
    Syncs {
        writers,
        latency_us: latency.as_micros() as u64,
        fsyncs: (writers * per_writer) as u64,
        device_syncs: pool.counters.device_syncs.load(Ordering::Relaxed) - s0.0,
        commits: pool.counters.commits.load(Ordering::Relaxed) - s0.1,
        secs: start.elapsed().as_secs_f64(),
    }
}

// ------------------------------------------------------------ main

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--open-only") {
        // For profiling the open of the 1 M-extent pool.
        let big = big_open();
        println!("open {:.3} s, reopen {:.3} s", big.open_secs, big.reopen_secs);
        return;
    }
    let scale = if quick { 10 } else { 1 };
    println!("bench-metadata{}", if quick { " (--quick: creates and writers at 1/10 scale)" } else { "" });

    // 1. Creates.
    let (flat, flat_devs) = creates(0, 100_000 / scale, false);
    let (tree, tree_devs) = creates(100, 1000 / scale, false);
    let (flat_fsync, _) = creates(0, 10_000 / scale, true);
    let (tree_fsync, _) = creates(100, 100 / scale, true);
    println!();
    println!(
        "{:<44} {:>8} {:>9} {:>11} {:>9} {:>9}",
        "creates (3 mem members, replication:2)", "files", "secs", "files/s", "syncs", "commits"
    );
    for (label, c) in [
        ("one directory, no fsync", flat),
        ("100 directories, no fsync", tree),
        ("one directory, fsync each", flat_fsync),
        ("100 directories, fsync each", tree_fsync),
    ] {
        println!(
            "{:<44} {:>8} {:>9.3} {:>11.0} {:>9} {:>9}",
            label,
            c.files,
            c.secs,
            c.per_sec(),
            c.device_syncs,
            c.commits
        );
    }

    // 3a. Memory per inode, and open time of the 100 000-file pools.
    let empty_devs = mem_devices(3, GIB, Duration::ZERO);
    format(&empty_devs, Policy::Replication { copies: 2 });
    let empty_heap = state_heap(&Pool::open(empty_devs, opts()).expect("open empty"));
    let t = Instant::now();
    let flat_pool = Pool::open(flat_devs, opts()).expect("reopen flat");
    let flat_open_secs = t.elapsed().as_secs_f64();
    let flat_heap = state_heap(&flat_pool);
    drop(flat_pool);
    let t = Instant::now();
    let tree_pool = Pool::open(tree_devs, opts()).expect("reopen tree");
    let tree_open_secs = t.elapsed().as_secs_f64();
    let tree_heap = state_heap(&tree_pool);
    drop(tree_pool);
    let per_inode_flat = (flat_heap - empty_heap) as f64 / flat.files as f64;
    let per_inode_tree = (tree_heap - empty_heap) as f64 / (tree.files + 100) as f64;

    // 2 + 3b. The 1 M-extent pool.
    let big = big_open();
    let per_extent = (big.state_heap - big.namespace_heap) as f64 / big.extents as f64;
    // 896 000 extents: where a hash table would sit just below its resize point (2^20 * 7/8).
    let per_extent_896k = per_extent_at(112);
    let per_inode_big = big.namespace_heap as f64 / big.inodes as f64;
    println!();
    println!("{:<58} {:>14}", "open and memory", "");
    println!("{:<58} {:>14.3} s", format!("open, {} empty files in one directory", flat.files), flat_open_secs);
    println!("{:<58} {:>14.3} s", format!("open, {} files in 100 directories", tree.files), tree_open_secs);
    println!(
        "{:<58} {:>14.3} s",
        format!("synthesize {} extents / {} inodes", big.extents, big.inodes),
        big.synth_secs
    );
    println!(
        "{:<58} {:>14.3} s  (target <= 5)",
        format!("open, {} extents (checkpoint {} MB)", big.extents, big.checkpoint_bytes / 1_000_000),
        big.open_secs
    );
    println!("{:<58} {:>14.3} s", "reopen of the same pool (engine-written checkpoint)", big.reopen_secs);
    println!("  steps of open, same calls timed apart:");
    for (label, secs) in [
        ("BLAKE3 of the checkpoint", big.phase_blake3_secs),
        ("decode the checkpoint (postcard)", big.phase_decode_secs),
        ("allocators: mark_used x 2 M, table order", big.phase_allocators_secs),
        ("allocators: mark_used x 2 M, sorted (what open does)", big.phase_allocators_sorted_secs),
        ("encode the state for the open's checkpoint", big.phase_encode_secs),
    ] {
        println!("{:<58} {:>14.3} s", format!("    {label}"), secs);
    }
    println!("{:<58} {:>14.1} B  (target <= 512)", "heap per inode (empty file, one directory)", per_inode_flat);
    println!("{:<58} {:>14.1} B", "heap per inode (100 directories x 1000)", per_inode_tree);
    println!("{:<58} {:>14.1} B", "heap per inode (synthesized namespace, whole state)", per_inode_big);
    println!("{:<58} {:>14.1} B  (target <= 256)", "heap per extent (1 M extents of 4 KiB, replication:2)", per_extent);
    println!("{:<58} {:>14.1} B", "heap per extent (896 000 extents)", per_extent_896k);
    println!(
        "{:<58} {:>14.1} B",
        "heap delta of the 1 M open (device blocks excluded) / extent",
        big.pool_heap_delta as f64 / big.extents as f64
    );
    println!(
        "{:<58} {:>14.1} B",
        "RSS delta of the 1 M open (device blocks excluded) / extent",
        big.rss_delta as f64 / big.extents as f64
    );

    // 4. Device syncs per fsync.
    let mut rows = Vec::new();
    for latency in [Duration::ZERO, Duration::from_micros(200)] {
        for (writers, per) in [(1usize, 400usize), (8, 100), (64, 25)] {
            let per = (per / scale).max(2);
            rows.push(syncs(writers, per, latency));
        }
    }
    println!();
    println!(
        "{:<36} {:>8} {:>8} {:>8} {:>12} {:>14} {:>10}",
        "create+write 4K+fsync, 4 members r:2",
        "fsyncs",
        "commits",
        "syncs",
        "syncs/fsync",
        "fsyncs/commit",
        "fsyncs/s"
    );
    for r in &rows {
        println!(
            "{:<36} {:>8} {:>8} {:>8} {:>12.3} {:>14.2} {:>10.0}",
            format!("{} writers, sync {} us", r.writers, r.latency_us),
            r.fsyncs,
            r.commits,
            r.device_syncs,
            r.device_syncs as f64 / r.fsyncs as f64,
            r.fsyncs as f64 / r.commits.max(1) as f64,
            r.fsyncs as f64 / r.secs
        );
    }

    let c = |c: &Creates| json!({"files": c.files, "secs": c.secs, "files_per_sec": c.per_sec(), "device_syncs": c.device_syncs, "commits": c.commits});
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    println!();
    println!(
        "machine: {} CPUs, load average {load}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let j = json!({
        "bench": "metadata",
        "quick": quick,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg": load,
        "creates": {
            "one_dir_no_fsync": c(&flat),
            "tree_100x1000_no_fsync": c(&tree),
            "one_dir_fsync_each": c(&flat_fsync),
            "tree_100x100_fsync_each": c(&tree_fsync),
        },
        "open_secs": {
            "flat_100k_files": flat_open_secs,
            "tree_100k_files": tree_open_secs,
            "one_million_extents": big.open_secs,
            "one_million_extents_reopen": big.reopen_secs,
            "phases_one_million": {
                "blake3": big.phase_blake3_secs,
                "decode": big.phase_decode_secs,
                "allocators_table_order": big.phase_allocators_secs,
                "allocators_sorted": big.phase_allocators_sorted_secs,
                "encode": big.phase_encode_secs,
            },
        },
        "one_million_extents": {
            "extents": big.extents,
            "inodes": big.inodes,
            "checkpoint_bytes": big.checkpoint_bytes,
            "synthesize_secs": big.synth_secs,
            "device_bytes_stored": big.device_bytes,
        },
        "memory": {
            "method": "counting global allocator (malloc_usable_size + 8 per block), State decoded from its checkpoint bytes",
            "bytes_per_inode": per_inode_flat,
            "bytes_per_inode_tree": per_inode_tree,
            "bytes_per_extent": per_extent,
            "bytes_per_extent_at_896k": per_extent_896k,
            "pool_heap_delta_per_extent_excluding_device_blocks": big.pool_heap_delta as f64 / big.extents as f64,
            "rss_delta_per_extent_excluding_device_blocks": big.rss_delta as f64 / big.extents as f64,
            "target_bytes_per_inode": 512,
            "target_bytes_per_extent": 256,
        },
        "syncs_per_fsync": rows.iter().map(|r| json!({
            "writers": r.writers,
            "sync_latency_us": r.latency_us,
            "fsyncs": r.fsyncs,
            "commits": r.commits,
            "device_syncs": r.device_syncs,
            "syncs_per_fsync": r.device_syncs as f64 / r.fsyncs as f64,
            "fsyncs_per_commit": r.fsyncs as f64 / r.commits.max(1) as f64,
            "fsyncs_per_sec": r.fsyncs as f64 / r.secs,
        })).collect::<Vec<_>>(),
    });
    println!("{j}");
}
