//! Crash-soak driver: `crash_soak --seeds A..B [--cycles N] [--ops N] [--jobs N]`.
//! Runs `dynamicfs::testing::soak::run_seed` for every seed in [A, B) on
//! `--jobs` threads, prints each failing seed with the command that replays
//! it, and ends with exactly `crash points: N, violations: V` (exit 1 when
//! V > 0, 2 on a usage error).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

fn usage(msg: &str) -> ! {
    eprintln!("crash-soak: {msg}\nusage: crash-soak --seeds A..B [--cycles N] [--ops N] [--jobs N]");
    std::process::exit(2);
}

fn num(v: Option<String>, what: &str) -> u64 {
    v.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage(&format!("{what} needs a number")))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut seeds, mut cycles, mut ops) = (None, 3u32, 60u32);
    let mut jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as u64;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seeds" => {
                let s = args.next().unwrap_or_else(|| usage("--seeds needs A..B"));
                let (a, b) = s.split_once("..").unwrap_or_else(|| usage("--seeds needs A..B"));
                let (a, b): (u64, u64) = (num(Some(a.into()), "--seeds"), num(Some(b.into()), "--seeds"));
                if b <= a {
                    usage("--seeds A..B needs A < B");
                }
                seeds = Some((a, b));
            }
            "--cycles" => cycles = num(args.next(), "--cycles") as u32,
            "--ops" => ops = num(args.next(), "--ops") as u32,
            "--jobs" => jobs = num(args.next(), "--jobs").max(1),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let (a, b) = seeds.unwrap_or_else(|| usage("--seeds is required"));
    let next = AtomicU64::new(a);
    let points = AtomicU64::new(0);
    let violations = AtomicU64::new(0);
    let out = Mutex::new(());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= b {
                    break;
                }
                let r = dynamicfs::testing::soak::run_seed(seed, cycles, ops);
                points.fetch_add(r.crash_points, Ordering::Relaxed);
                if !r.violations.is_empty() {
                    violations.fetch_add(r.violations.len() as u64, Ordering::Relaxed);
                    let _g = out.lock();
                    println!("seed {seed}: {} violation(s)", r.violations.len());
                    for v in &r.violations {
                        println!("  {v}");
                    }
                    println!("  replay: scripts/crash-soak --seeds {seed}..{} --cycles {cycles} --ops {ops}", seed + 1);
                }
            });
        }
    });
    let (p, v) = (points.load(Ordering::Relaxed), violations.load(Ordering::Relaxed));
    println!("crash points: {p}, violations: {v}");
    std::process::exit(if v > 0 { 1 } else { 0 });
}
