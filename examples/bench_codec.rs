//! Throughput of the redundancy codec on one thread, 1 MiB extents:
//! encode (into fresh fragments, and `encode_into` reused buffers), decode
//! with 0, 1 and 2 fragments lost, and repair (reconstruct) of 1 lost
//! fragment, for erasure:4+2, erasure:10+4 and replication:3.
//!
//! Lost fragments are data shards (0, then 0 and 1) — the expensive case;
//! losing parity costs nothing on read. MB/s counts extent bytes (10^6).
//! Each case gets a warm-up pass, then `--runs` timed runs (default 7) of at
//! least `--ms` milliseconds (default 300); the table shows min / median /
//! max and the last line of output is the same as JSON.
//!
//! `cargo run --release --example bench_codec [-- --runs 7 --ms 300]`

use dfs_format::Policy;
use dynamicfs::engine::redundancy;
use std::hint::black_box;
use std::time::{Duration, Instant};

const EXTENT: usize = 1 << 20;
/// Distinct extents cycled through, so that no run sees only one buffer.
const POOL: usize = 8;

struct Row {
    policy: Policy,
    op: &'static str,
    min: f64,
    median: f64,
    max: f64,
}

fn data(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..EXTENT)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Run `op` (which processes one extent, selected by its argument) for
/// `runs` timed runs of at least `min_time` each, after one warm-up run.
/// Returns MB/s per run, sorted.
fn measure(runs: usize, min_time: Duration, mut op: impl FnMut(usize)) -> Vec<f64> {
    let mut rates = Vec::with_capacity(runs);
    for run in 0..=runs {
        let start = Instant::now();
        let mut n = 0usize;
        while n < POOL || start.elapsed() < min_time {
            op(n % POOL);
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        if run > 0 {
            rates.push((n * EXTENT) as f64 / secs / 1e6);
        }
    }
    rates.sort_by(f64::total_cmp);
    rates
}

fn main() {
    let mut runs = 7usize;
    let mut ms = 300u64;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = it.next().and_then(|v| v.parse::<u64>().ok());
        match (a.as_str(), value) {
            ("--runs", Some(v)) if v > 0 => runs = v as usize,
            ("--ms", Some(v)) if v > 0 => ms = v,
            _ => {
                eprintln!("usage: bench_codec [--runs N] [--ms MILLISECONDS]");
                std::process::exit(2);
            }
        }
    }
    let min_time = Duration::from_millis(ms);
    let extents: Vec<Vec<u8>> = (0..POOL as u64).map(data).collect();
    let policies = [
        Policy::Erasure { data: 4, parity: 2 },
        Policy::Erasure { data: 10, parity: 4 },
        Policy::Replication { copies: 3 },
    ];
    let mut rows = Vec::new();
    for policy in policies {
        let mut push = |op: &'static str, rates: Vec<f64>| {
            rows.push(Row { policy, op, min: rates[0], median: rates[rates.len() / 2], max: rates[rates.len() - 1] })
        };
        push(
            "encode",
            measure(runs, min_time, |i| {
                black_box(redundancy::encode(policy, &extents[i]).unwrap());
            }),
        );
        let s = redundancy::fragment_payload_len(policy, EXTENT as u32).unwrap() as usize;
        let mut bufs = vec![vec![0u8; s]; policy.fragment_count() as usize];
        push(
            "encode_into",
            measure(runs, min_time, |i| {
                let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                redundancy::encode_into(policy, &extents[i], &mut outs).unwrap();
                black_box(&outs);
            }),
        );
        let encoded: Vec<Vec<redundancy::Fragment>> =
            extents.iter().map(|e| redundancy::encode(policy, e).unwrap()).collect();
        for (op, lost) in [("decode, 0 lost", &[][..]), ("decode, 1 lost", &[0][..]), ("decode, 2 lost", &[0, 1][..])] {
            let views: Vec<Vec<Option<&[u8]>>> = encoded
                .iter()
                .map(|frags| frags.iter().enumerate().map(|(i, f)| (!lost.contains(&i)).then_some(f.bytes())).collect())
                .collect();
            push(
                op,
                measure(runs, min_time, |i| {
                    black_box(redundancy::decode(policy, EXTENT as u32, &views[i]).unwrap());
                }),
            );
        }
        let views: Vec<Vec<Option<&[u8]>>> = encoded
            .iter()
            .map(|frags| frags.iter().enumerate().map(|(i, f)| (i != 0).then_some(f.bytes())).collect())
            .collect();
        push(
            "repair 1 lost",
            measure(runs, min_time, |i| {
                black_box(redundancy::reconstruct(policy, EXTENT as u32, &views[i], &[0]).unwrap());
            }),
        );
    }

    println!("codec throughput, 1 MiB extents, one thread, MB/s of extent data ({runs} runs of ≥ {ms} ms)");
    println!("{:<16} {:<16} {:>9} {:>9} {:>9}", "policy", "op", "min", "median", "max");
    for r in &rows {
        println!("{:<16} {:<16} {:>9.0} {:>9.0} {:>9.0}", r.policy.to_string(), r.op, r.min, r.median, r.max);
    }
    let results: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "policy": r.policy.to_string(),
                "op": r.op,
                "min_mb_s": (r.min * 10.0).round() / 10.0,
                "median_mb_s": (r.median * 10.0).round() / 10.0,
                "max_mb_s": (r.max * 10.0).round() / 10.0,
            })
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "bench": "codec",
            "extent_bytes": EXTENT,
            "threads": 1,
            "runs": runs,
            "min_run_ms": ms,
            "results": results,
        })
    );
}
