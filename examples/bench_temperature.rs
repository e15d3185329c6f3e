//! Read-path overhead of temperature tracking, on in-memory members.
//!
//! ```text
//! cargo run --release --example bench_temperature [-- --mib 64 --runs 7]
//! ```
//!
//! Two pools of six `MemDevice` members each (replication:3), one with
//! tracking and lazy migration on (the defaults), one with tracking off,
//! each holding one `--mib` MiB file. Each run reads the whole file as
//! 1 MiB `Pool::read` calls and then 4096 random 4 KiB reads (where a fixed
//! per-call cost weighs most), alternating the two pools so that machine
//! noise hits both alike; one warm-up pass, then `--runs` runs, median
//! (min-max) reported with the overhead of tracking. It also times one HMM
//! classification (Viterbi + forward over 100 observations). The last line
//! is one JSON object.

use dynamicfs::device::{Device, MemDevice};
use dynamicfs::engine::{FileKind, Pool, PoolOptions, ROOT_INO};
use dynamicfs::temperature::{Hmm, HmmConfig, TemperatureConfig};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

const MIB: usize = 1 << 20;

fn pool(track: bool, mib: usize) -> (Pool, u64) {
    let devs: Vec<Arc<dyn Device>> =
        (0..6).map(|_| Arc::new(MemDevice::new((mib as u64 / 2 + 48) << 20, 4096)) as Arc<dyn Device>).collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref()).collect();
    dynamicfs::mkfs::format_devices(&refs, "bench", "replication:3".parse().unwrap()).expect("mkfs");
    let temperature = TemperatureConfig { track, migrate: track, ..Default::default() };
    let pool = Pool::open(devs, PoolOptions { no_lock: true, temperature, ..Default::default() }).expect("open");
    let (ino, _) = pool.create(ROOT_INO, b"f", FileKind::File, 0o644, 0, 0, 0).unwrap();
    let chunk: Vec<u8> = (0..MIB).map(|i| (i * 7 + 1) as u8).collect();
    for i in 0..mib {
        pool.write(ino, (i * MIB) as u64, &chunk).unwrap();
    }
    pool.sync_all().unwrap();
    (pool, ino)
}

fn seq(pool: &Pool, ino: u64, mib: usize) -> f64 {
    let t = Instant::now();
    for i in 0..mib {
        let b = pool.read(ino, (i * MIB) as u64, MIB).unwrap();
        assert_eq!(b.len(), MIB);
    }
    mib as f64 / t.elapsed().as_secs_f64()
}

fn small(pool: &Pool, ino: u64, mib: usize, seed: u64) -> f64 {
    let mut x = seed | 1;
    let n = 4096;
    let t = Instant::now();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % (mib as u64 * 256)) * 4096;
        assert_eq!(pool.read(ino, off, 4096).unwrap().len(), 4096);
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (mib, runs) = (arg("--mib", 64), arg("--runs", 7).max(1));
    if args.iter().any(|a| a == "--hmm-only") {
        let hmm = Hmm::new(HmmConfig::default());
        let obs: Vec<u8> = (0..100u32).map(|i| (i * 7 % 4) as u8).collect();
        for what in ["viterbi", "posterior", "classify"] {
            let n = 20_000u32;
            let t = Instant::now();
            let mut acc = 0.0;
            for i in 0..n {
                acc += match what {
                    "viterbi" => hmm.viterbi(&obs, [0.0; 3]).1,
                    "posterior" => hmm.posterior(&obs, [0.0; 3])[0],
                    _ => hmm.classify(&obs, Some(i)).probability,
                };
            }
            println!("{what}: {:.0} ns ({acc:.1})", t.elapsed().as_nanos() as f64 / n as f64);
        }
        return;
    }
    let (on, on_ino) = pool(true, mib);
    let (off, off_ino) = pool(false, mib);
    let (mut seq_on, mut seq_off, mut small_on, mut small_off) = (vec![], vec![], vec![], vec![]);
    for run in 0..=runs {
        let (a, b) = if run % 2 == 0 {
            (seq(&on, on_ino, mib), seq(&off, off_ino, mib))
        } else {
            let b = seq(&off, off_ino, mib);
            (seq(&on, on_ino, mib), b)
        };
        let (c, d) = (small(&on, on_ino, mib, run as u64 + 1), small(&off, off_ino, mib, run as u64 + 1));
        if run > 0 {
            seq_on.push(a);
            seq_off.push(b);
            small_on.push(c);
            small_off.push(d);
        }
        eprintln!(
            "run {run}{}: 1 MiB reads {a:.0} vs {b:.0} MiB/s; 4 KiB reads {c:.0} vs {d:.0} /s (on vs off)",
            if run == 0 { " (warm-up)" } else { "" }
        );
    }
    let hmm = Hmm::new(HmmConfig::default());
    let obs: Vec<u8> = (0..100u32).map(|i| (i * 7 % 4) as u8).collect();
    let n = 20_000;
    let t = Instant::now();
    let mut hot = 0;
    for i in 0..n {
        hot += (hmm.classify(&obs, Some(i)).state == dynamicfs::temperature::Temp::Hot) as u32;
    }
    let classify_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let (so, so_min, so_max) = stats(seq_on);
    let (sf, sf_min, sf_max) = stats(seq_off);
    let (mo, mo_min, mo_max) = stats(small_on);
    let (mf, mf_min, mf_max) = stats(small_off);
    let seq_overhead = (1.0 - so / sf) * 100.0;
    let small_overhead = (1.0 - mo / mf) * 100.0;
    println!("{:<22} {:>24} {:>24} {:>9}", "read", "tracking on", "tracking off", "overhead");
    println!(
        "{:<22} {:>24} {:>24} {:>8.2}%",
        "1 MiB (MiB/s)",
        format!("{so:.0} ({so_min:.0}-{so_max:.0})"),
        format!("{sf:.0} ({sf_min:.0}-{sf_max:.0})"),
        seq_overhead
    );
    println!(
        "{:<22} {:>24} {:>24} {:>8.2}%",
        "4 KiB random (ops/s)",
        format!("{mo:.0} ({mo_min:.0}-{mo_max:.0})"),
        format!("{mf:.0} ({mf_min:.0}-{mf_max:.0})"),
        small_overhead
    );
    println!("HMM classification (100 observations): {classify_ns:.0} ns ({hot} hot)");
    println!(
        "{}",
        json!({
            "mib": mib, "runs": runs,
            "read_1mib_mib_s": {"on": so, "off": sf, "overhead_pct": seq_overhead},
            "read_4k_ops_s": {"on": mo, "off": mf, "overhead_pct": small_overhead},
            "hmm_classify_ns": classify_ns,
            "live_stats_entries": on.temperature().live_len(),
        })
    );
}
