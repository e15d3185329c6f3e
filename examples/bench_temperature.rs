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
//! classification (Viterbi + forward over 100 observations) and the cost
//! per recorded access (`--access-only` runs just that): `ExtentTemp::record`
//! alone, `record` + a full classification (what an access costs when it
//! closes an interval, at most once an hour per extent), and
//! `Pool::note_reads` for one extent (the read path's one call: tracker
//! lock, table lookup, record; single-threaded and with 2 threads on
//! different extents). The last line is one JSON object.

use dynamicfs::device::{Device, MemDevice};
use dynamicfs::engine::{FileKind, Pool, PoolOptions, ROOT_INO};
use dynamicfs::temperature::{Access, ExtentTemp, Hmm, HmmConfig, TemperatureConfig};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

const MIB: usize = 1 << 20;

fn pool(track: bool, mib: usize) -> (Pool, u64) {
    let devs: Vec<Arc<dyn Device>> =
        (0..6).map(|_| Arc::new(MemDevice::new((mib as u64 / 2 + 48) << 20, 4096)) as Arc<dyn Device>).collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref()).collect();
    dynamicfs::mkfs::format_devices(&refs, "bench", "replication:3".parse().unwrap()).expect("mkfs");
    let temperature = TemperatureConfig {
        track,
        settings: dynamicfs::temperature::Settings { migrate: track, ..Default::default() },
        ..Default::default()
    };
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

/// Nanoseconds per recorded access: (record, record + classify,
/// note_reads one thread, note_reads two threads on different extents).
fn per_access(pool: &Pool, ino: u64) -> (f64, f64, f64, f64) {
    use std::hint::black_box;
    let t = pool.temperature();
    let p = dynamicfs::temperature::StatsParams::default();
    let n = 2_000_000u32;
    let now0 = 1_700_000_000u32;
    // Five accesses a minute: every 12th closes nothing, one an hour does.
    let mut s = ExtentTemp::default();
    let start = Instant::now();
    for i in 0..n {
        black_box(s.record(now0 + i * 12, Access::Read, &p));
    }
    let record_ns = start.elapsed().as_nanos() as f64 / n as f64;
    let m = 200_000u32;
    let mut s = ExtentTemp::default();
    let start = Instant::now();
    for i in 0..m {
        let now = now0 + i * 12;
        s.record(now, Access::Read, &p);
        black_box(t.classify(&s, now));
    }
    let classify_ns = start.elapsed().as_nanos() as f64 / m as f64;
    let snap = pool.state_snapshot();
    let map = match &snap.inodes[&ino].body {
        dynamicfs::engine::state::Body::File(map) => map.clone(),
        _ => unreachable!("a file"),
    };
    let exts: Vec<(u64, dynamicfs::engine::state::Extent)> =
        map.iter().take(2).map(|(idx, id)| (*idx, snap.extents[id].clone())).collect();
    let calls = 2_000_000u32;
    let start = Instant::now();
    for _ in 0..calls {
        pool.note_reads(ino, [(exts[0].0, &exts[0].1)]);
    }
    let note_ns = start.elapsed().as_nanos() as f64 / calls as f64;
    let start = Instant::now();
    std::thread::scope(|sc| {
        for (idx, e) in &exts {
            sc.spawn(move || {
                for _ in 0..calls / 2 {
                    pool.note_reads(ino, [(*idx, e)]);
                }
            });
        }
    });
    let note2_ns = start.elapsed().as_nanos() as f64 / (calls / 2 * exts.len() as u32) as f64;
    (record_ns, classify_ns, note_ns, note2_ns)
}

fn print_access(a: (f64, f64, f64, f64)) {
    println!("per recorded access: record {:.1} ns; record + classify (HMM + threshold) {:.0} ns", a.0, a.1);
    println!("Pool::note_reads, one extent: {:.1} ns (1 thread), {:.1} ns per call (2 threads)", a.2, a.3);
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
    if args.iter().any(|a| a == "--access-only") {
        let (on, on_ino) = pool(true, mib.min(8));
        let a = per_access(&on, on_ino);
        print_access(a);
        println!(
            "{}",
            json!({ "record_ns": a.0, "record_classify_ns": a.1, "note_reads_ns": a.2, "note_reads_2_threads_ns": a.3 })
        );
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
    let live_entries = on.temperature().live_len();
    let access = per_access(&on, on_ino);
    print_access(access);
    println!(
        "{}",
        json!({
            "mib": mib, "runs": runs,
            "read_1mib_mib_s": {"on": so, "off": sf, "overhead_pct": seq_overhead},
            "read_4k_ops_s": {"on": mo, "off": mf, "overhead_pct": small_overhead},
            "hmm_classify_ns": classify_ns,
            "live_stats_entries": live_entries,
            "record_ns": access.0, "record_classify_ns": access.1,
            "note_reads_ns": access.2, "note_reads_2_threads_ns": access.3,
        })
    );
}
