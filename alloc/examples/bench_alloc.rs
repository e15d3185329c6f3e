//! Allocator benchmark: speed of allocate / free / save / load and memory per
//! block, on one member of 16 Mi blocks (64 GiB at 4 KiB) cut in chunks of
//! a 4 KiB bitmap block's payload.
//!
//! Run: `cargo run --release -p dfs-alloc --example bench_alloc`
//! (or `scripts/bench-alloc`). Prints a table, then as its last line one
//! JSON object with the same figures.
//!
//! Each timed phase runs 3 times and reports the median, with min and max
//! in the table: allocation on a fresh allocator, then freeing (in a random
//! order) what that allocation handed out; the other phases on a copy of a
//! prepared state, whose preparation is not timed. The worst-case load runs
//! once. On a machine shared with other work the figures move by 2x: look
//! at the min column, and compare runs made side by side.
//! Heap bytes are measured by a counting global allocator (bytes requested,
//! not counting malloc's own overhead) beside the crate's `heap_bytes()`
//! estimate.
//!
//! States measured for memory:
//! - fresh: nothing allocated (one free run);
//! - half-fragmented: 1 Mi runs of mixed sizes allocated, every other one
//!   freed (about 0.5 Mi free runs);
//! - full: the half-fragmented one with every hole filled;
//! - worst: every other block used (8 Mi free runs of one block), loaded
//!   from a bitmap; the upper bound of the free-extent index.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dfs_alloc::{Allocator, Run};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

const TOTAL: u64 = 16 << 20;
/// Payload bits of a 4 KiB bitmap block (64-byte header).
const BITS_PER_CHUNK: u32 = (4096 - 64) * 8;
const RUNS: usize = 1 << 20;
const REPEATS: usize = 3;

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// Mixed run lengths: 90% 1..=16 blocks, 10% 17..=64; mean about 11.7.
fn mixed_sizes(n: usize) -> Vec<u64> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    (0..n).map(|_| if rng.below(10) == 0 { 17 + rng.below(48) } else { 1 + rng.below(16) }).collect()
}

fn fresh() -> Allocator {
    Allocator::new(TOTAL, BITS_PER_CHUNK).expect("geometry")
}

fn allocate_all(a: &mut Allocator, sizes: &[u64]) -> Vec<Run> {
    sizes.iter().map(|&n| a.allocate(n).expect("space")).collect()
}

/// 1 Mi mixed runs allocated, every other one freed; returns the kept runs.
fn build_half_fragmented() -> (Allocator, Vec<Run>) {
    let mut a = fresh();
    let runs = allocate_all(&mut a, &mixed_sizes(RUNS));
    let mut kept = Vec::with_capacity(RUNS / 2);
    for (i, r) in runs.into_iter().enumerate() {
        if i % 2 == 0 {
            a.free(r).expect("free");
        } else {
            kept.push(r);
        }
    }
    a.clear_dirty();
    (a, kept)
}

thread_local! {
    static HALF: (Allocator, Vec<Run>) = build_half_fragmented();
}

/// A copy of the one half-fragmented state (built once: it takes a while).
fn half_fragmented() -> (Allocator, Vec<Run>) {
    HALF.with(Clone::clone)
}

fn save(a: &Allocator) -> Vec<Vec<u8>> {
    (0..a.chunk_count()).map(|c| a.chunk_bytes(c).expect("chunk")).collect()
}

fn load(chunks: &[Vec<u8>]) -> Allocator {
    Allocator::load(TOTAL, BITS_PER_CHUNK, chunks.iter().map(Vec::as_slice)).expect("load")
}

/// Timing of one phase over `REPEATS` runs.
struct Timing {
    name: &'static str,
    ops: u64,
    runs: Vec<Duration>,
}

impl Timing {
    fn sorted(&self) -> Vec<f64> {
        let mut ns: Vec<f64> = self.runs.iter().map(|d| d.as_nanos() as f64 / self.ops as f64).collect();
        ns.sort_by(f64::total_cmp);
        ns
    }

    fn median_ns(&self) -> f64 {
        self.sorted()[self.runs.len() / 2]
    }
}

/// Runs `setup` then times `body` on its output, `REPEATS` times. What
/// `body` returns is dropped after the clock stops.
fn measure<S, T>(name: &'static str, ops: u64, mut setup: impl FnMut() -> S, mut body: impl FnMut(S) -> T) -> Timing {
    let runs = (0..REPEATS)
        .map(|_| {
            let state = setup();
            let t = Instant::now();
            let out = body(state);
            let d = t.elapsed();
            drop(black_box(out));
            d
        })
        .collect();
    Timing { name, ops, runs }
}

/// On a fresh allocator, times allocating runs of `sizes` then freeing them
/// all in a random order, `REPEATS` times.
fn alloc_then_free(names: (&'static str, &'static str), sizes: &[u64], seed: u64) -> (Timing, Timing) {
    let mut alloc = Timing { name: names.0, ops: sizes.len() as u64, runs: Vec::new() };
    let mut free = Timing { name: names.1, ops: sizes.len() as u64, runs: Vec::new() };
    let mut rng = Rng(seed);
    for _ in 0..REPEATS {
        let mut a = fresh();
        let mut runs = Vec::with_capacity(sizes.len());
        let t = Instant::now();
        for &n in sizes {
            runs.push(a.allocate(n).expect("space"));
        }
        alloc.runs.push(t.elapsed());
        rng.shuffle(&mut runs);
        let t = Instant::now();
        for r in runs {
            a.free(r).expect("free");
        }
        free.runs.push(t.elapsed());
        assert_eq!(a.free_blocks(), TOTAL);
    }
    (alloc, free)
}

/// Heap of an allocator built by `build`, measured and estimated.
struct Memory {
    name: &'static str,
    measured: usize,
    estimate: usize,
    free_runs: usize,
}

fn memory(name: &'static str, build: impl FnOnce() -> Allocator) -> Memory {
    let before = live();
    let a = build();
    let measured = live().saturating_sub(before);
    Memory { name, measured, estimate: a.heap_bytes(), free_runs: a.free_run_count() }
}

fn per_block(bytes: usize) -> f64 {
    bytes as f64 / TOTAL as f64
}

fn main() {
    let started = Instant::now();
    let sizes = mixed_sizes(RUNS);
    let mixed_blocks: u64 = sizes.iter().sum();

    let mut timings = Vec::new();
    let ones = vec![1; RUNS];
    let (alloc_single, free_single) = alloc_then_free(("alloc single", "free single (random order)"), &ones, 7);
    let (alloc_mixed, free_mixed) = alloc_then_free(("alloc mixed", "free mixed (random order)"), &sizes, 11);
    timings.extend([alloc_single, free_single, alloc_mixed, free_mixed]);
    // Into a half-fragmented region: the free tail first (the cursor is
    // there), then the holes, where next-fit scans and best fit work.
    let refill = mixed_sizes(RUNS / 2);
    timings.push(measure("alloc mixed, fragmented", (RUNS / 2) as u64, half_fragmented, |(mut a, _)| {
        for &n in &refill {
            black_box(a.allocate(n).expect("space"));
        }
        a
    }));
    // The engine's real path: deferred frees by commit, released per sync
    // (one release per 1000 frees).
    timings.push(measure("free_deferred + release", (RUNS / 2) as u64, half_fragmented, |(mut a, kept)| {
        for (i, r) in kept.into_iter().enumerate() {
            let seq = i as u64 / 1000;
            a.free_deferred(r, seq).expect("free");
            if i % 1000 == 999 {
                a.release_durable(seq);
            }
        }
        a.release_durable(u64::MAX);
        a
    }));
    let chunk_count = fresh().chunk_count();
    let save_t = measure(
        "save (all chunks)",
        chunk_count,
        || half_fragmented().0,
        |a| {
            let chunks = save(&a);
            (a, chunks)
        },
    );
    let image = save(&half_fragmented().0);
    let load_t = measure("load (half-fragmented)", chunk_count, || (), |()| load(&image));
    // Every other block used: 8 Mi one-block holes.
    let worst_image: Vec<Vec<u8>> = (0..chunk_count)
        .map(|c| {
            let mut bytes = vec![0x55u8; (BITS_PER_CHUNK / 8) as usize];
            let first = c * u64::from(BITS_PER_CHUNK);
            // Zero the tail of the last chunk (blocks past TOTAL).
            for (i, b) in bytes.iter_mut().enumerate() {
                if first + 8 * i as u64 >= TOTAL {
                    *b = 0;
                }
            }
            bytes
        })
        .collect();
    // One run only: it is the slowest phase by far.
    let before = live();
    let t = Instant::now();
    let worst = load(&worst_image);
    let load_worst_t = Timing { name: "load (worst: 8 Mi holes)", ops: chunk_count, runs: vec![t.elapsed()] };
    let worst_mem = Memory {
        name: "worst (every other block)",
        measured: live().saturating_sub(before),
        estimate: worst.heap_bytes(),
        free_runs: worst.free_run_count(),
    };
    drop(worst);
    drop(worst_image);

    let mems = [
        memory("fresh", fresh),
        memory("half-fragmented", || half_fragmented().0),
        memory("full", || {
            let (mut a, kept) = half_fragmented();
            drop(kept);
            while a.allocate_up_to(u64::MAX).is_some() {}
            a
        }),
        worst_mem,
    ];

    println!(
        "dfs-alloc bench: {TOTAL} blocks, {BITS_PER_CHUNK} bits/chunk ({chunk_count} chunks), \
         {RUNS} runs; mixed sizes mean {:.1} blocks; median of {REPEATS}",
        mixed_blocks as f64 / RUNS as f64
    );
    println!();
    println!("{:<28} {:>10} {:>10} {:>10} {:>12}", "phase", "ns/op", "min", "max", "ops");
    for t in timings.iter().chain([&save_t, &load_t, &load_worst_t]) {
        let s = t.sorted();
        println!("{:<28} {:>10.1} {:>10.1} {:>10.1} {:>12}", t.name, t.median_ns(), s[0], s[s.len() - 1], t.ops);
    }
    println!("(save/load ops are chunks of {} bytes; the worst-case load is 1 run)", BITS_PER_CHUNK / 8);
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "state", "free runs", "heap bytes", "B/block", "estimate", "est B/blk"
    );
    for m in &mems {
        println!(
            "{:<28} {:>12} {:>12} {:>10.4} {:>10} {:>10.4}",
            m.name,
            m.free_runs,
            m.measured,
            per_block(m.measured),
            m.estimate,
            per_block(m.estimate)
        );
    }
    println!("wall time {:.1} s", started.elapsed().as_secs_f64());

    let ns = |name: &str| {
        timings.iter().chain([&save_t, &load_t, &load_worst_t]).find(|t| t.name == name).map_or(0.0, Timing::median_ns)
    };
    let ms = |t: &Timing| t.median_ns() * t.ops as f64 / 1e6;
    let bpb = |f: fn(&Memory) -> usize| {
        mems.iter().map(|m| format!("\"{}\":{:.4}", json_key(m.name), per_block(f(m)))).collect::<Vec<_>>().join(",")
    };
    println!(
        "{{\"bench\":\"dfs-alloc\",\"total_blocks\":{TOTAL},\"bits_per_chunk\":{BITS_PER_CHUNK},\
         \"runs\":{RUNS},\"repeats\":{REPEATS},\
         \"alloc_single_ns_per_op\":{:.1},\"free_single_ns_per_op\":{:.1},\
         \"alloc_mixed_ns_per_op\":{:.1},\"free_mixed_ns_per_op\":{:.1},\
         \"alloc_mixed_fragmented_ns_per_op\":{:.1},\"free_deferred_release_ns_per_op\":{:.1},\
         \"save_ms\":{:.2},\"load_ms\":{:.2},\"load_worst_ms\":{:.2},\
         \"bytes_per_block\":{{{}}},\"bytes_per_block_estimate\":{{{}}}}}",
        ns("alloc single"),
        ns("free single (random order)"),
        ns("alloc mixed"),
        ns("free mixed (random order)"),
        ns("alloc mixed, fragmented"),
        ns("free_deferred + release"),
        ms(&save_t),
        ms(&load_t),
        ms(&load_worst_t),
        bpb(|m| m.measured),
        bpb(|m| m.estimate),
    );
}

/// `half-fragmented` → `half_fragmented`, `worst (every other block)` → `worst`.
fn json_key(name: &str) -> String {
    name.split(' ').next().unwrap_or(name).replace('-', "_")
}
