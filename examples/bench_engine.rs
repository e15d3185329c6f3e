//! The engine's data path (no FUSE) against the devices' own limit, on the
//! same block devices in the same run.
//!
//! ```text
//! bench_engine --devices /dev/loopA,/dev/loopB,... [--mib 1024] [--runs 3]
//!              [--policies replication:3,erasure:4+2] [--fio-mib 1024]
//!              [--btrfs-mnt DIR] [--skip-fio] [--skip-btrfs] [--skip-cpu]
//!              [--temperature | --temperature-only]
//! ```
//!
//! `scripts/bench-engine` sets up six loop devices and runs this. Every
//! device's contents are destroyed. In order:
//!
//! 1. CPU limits on one core: BLAKE3 of 1 MiB buffers, reed-solomon-simd
//!    4+2 encode of 1 MiB extents, and decode with two shards lost.
//! 2. fio on all devices in parallel (one job per device, 1 MiB, O_DIRECT,
//!    io_uring, QD8, `--fio-mib` per device): sequential write, then read.
//!    This is the device limit.
//! 3. For each policy: mkfs, open, then `--mib` MiB written as 1 MiB
//!    `Pool::write` calls into one file followed by `Pool::sync_all` (the
//!    time includes the final commit), then read back as 1 MiB `Pool::read`
//!    calls (cold: devices are O_DIRECT, the engine has no cache; every
//!    MiB checked), once from one thread (one extent in flight: QD1 for
//!    replication, K shards for erasure) and once from 4 threads reading
//!    alternate MiB (`read_4_threads`: what a multi-threaded FUSE session
//!    with kernel read-ahead sends). The file is then deleted and the
//!    deletion committed. CPU use of the process and of the machine is
//!    printed per run (the machine's share shows other load).
//! 4. With `--btrfs-mnt` and `mkfs.btrfs` present: btrfs raid1c3 and raid6
//!    (data and metadata) on the same devices, `--mib` MiB written with
//!    `dd bs=1M oflag=direct` + `sync`, read back with `iflag=direct`.
//!
//! Each measurement has one warm-up pass, then `--runs` runs; the median is
//! reported with min and max. `ratio` = achieved ÷ (device limit ÷
//! amplification), amplification being the device bytes moved per logical
//! byte (writes: N for replication:N, (K+M)/K for erasure, plus one header
//! block per fragment; reads: 1, the engine reads one replica or the K data
//! shards). For writes the table and the JSON also give the devices' write
//! limit with requests the size of the policy's fragments (fio again, right
//! after that policy's runs) and the ratio against it
//! (`ratio_at_fragment_size`): erasure:4+2 writes 260 KiB requests, and
//! these devices do not deliver with them what they do with 1 MiB. Progress
//! goes to stderr, a table to stdout, and as the last line one JSON object.
//!
//! 5. With `--temperature` (or `--temperature-only`, which skips 1-4): the
//!    read path with temperature tracking on and off ([`temperature_case`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use dfs_format::Policy;
use dynamicfs::device::{Device, RawDevice, RawOpenOptions};
use dynamicfs::engine::{FileKind, Pool, PoolOptions, ROOT_INO};
use serde_json::json;

const MIB: u64 = 1 << 20;

struct Opts {
    devices: Vec<PathBuf>,
    mib: u64,
    runs: usize,
    policies: Vec<Policy>,
    fio_mib: u64,
    btrfs_mnt: Option<PathBuf>,
    skip_fio: bool,
    skip_cpu: bool,
    /// Run the temperature-overhead case (after the others, or alone).
    temperature: bool,
    temperature_only: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!("bench_engine: {msg}");
    eprintln!(
        "usage: bench_engine --devices D1,D2,... [--mib N] [--runs N] [--policies P1,P2] [--fio-mib N] \
         [--btrfs-mnt DIR] [--skip-fio] [--skip-btrfs] [--skip-cpu] [--temperature | --temperature-only]"
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        devices: Vec::new(),
        mib: 1024,
        runs: 3,
        policies: vec!["replication:3".parse().unwrap(), "erasure:4+2".parse().unwrap()],
        fio_mib: 1024,
        btrfs_mnt: None,
        skip_fio: false,
        skip_cpu: false,
        temperature: false,
        temperature_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--devices" => o.devices = val().split(',').map(PathBuf::from).collect(),
            "--mib" => o.mib = val().parse().unwrap_or_else(|_| usage("bad --mib")),
            "--runs" => o.runs = val().parse().unwrap_or_else(|_| usage("bad --runs")),
            "--fio-mib" => o.fio_mib = val().parse().unwrap_or_else(|_| usage("bad --fio-mib")),
            "--policies" => {
                o.policies =
                    val().split(',').map(|p| p.parse().unwrap_or_else(|e| usage(&format!("{p}: {e}")))).collect()
            }
            "--btrfs-mnt" => o.btrfs_mnt = Some(PathBuf::from(val())),
            "--skip-fio" => o.skip_fio = true,
            "--skip-btrfs" => o.btrfs_mnt = None,
            "--skip-cpu" => o.skip_cpu = true,
            "--temperature" => o.temperature = true,
            "--temperature-only" => o.temperature_only = true,
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if o.devices.is_empty() {
        usage("--devices is required");
    }
    if o.runs == 0 || o.mib == 0 {
        usage("--runs and --mib must be positive");
    }
    o
}

/// One line of the table: name, figures, limit (device limit ÷
/// amplification), amplification, ratio.
type Row = (String, Stat, Option<f64>, f64, Option<f64>);

/// Median, min, max.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(|a, b| a.total_cmp(b));
    Stat { median: v[v.len() / 2], min: v[0], max: v[v.len() - 1] }
}

fn stat_json(s: &Stat) -> serde_json::Value {
    json!({"median": round1(s.median), "min": round1(s.min), "max": round1(s.max)})
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------
// CPU limits

fn cpu_limits() -> (f64, f64, f64) {
    let data: Vec<u8> = (0..MIB as usize).map(|i| (i * 31 + 7) as u8).collect();
    let secs = 0.5;
    let rate = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed().as_secs_f64() < secs {
            f();
            n += 1;
        }
        n as f64 / t.elapsed().as_secs_f64()
    };
    let blake3 = rate(&mut || {
        std::hint::black_box(blake3::hash(std::hint::black_box(&data)));
    });
    let p: Policy = "erasure:4+2".parse().unwrap();
    let encode = rate(&mut || {
        std::hint::black_box(dynamicfs::engine::redundancy::encode(p, &data).unwrap());
    });
    let frags = dynamicfs::engine::redundancy::encode(p, &data).unwrap();
    let views: Vec<Option<&[u8]>> = frags.iter().enumerate().map(|(i, f)| (i >= 2).then_some(f.bytes())).collect();
    let decode = rate(&mut || {
        std::hint::black_box(dynamicfs::engine::redundancy::decode(p, MIB as u32, &views).unwrap());
    });
    (blake3, encode, decode)
}

// ---------------------------------------------------------------------------
// fio

fn fio(devices: &[PathBuf], rw: &str, mib: u64) -> f64 {
    fio_bs(devices, rw, mib, "1M")
}

/// fio on every device in parallel with requests of `bs`.
fn fio_bs(devices: &[PathBuf], rw: &str, mib: u64, bs: &str) -> f64 {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--output-format=json",
        "--group_reporting=1",
        "--direct=1",
        "--ioengine=io_uring",
        "--iodepth=8",
        &format!("--bs={bs}"),
        &format!("--rw={rw}"),
        &format!("--size={mib}M"),
    ]);
    // Options before the first --name are global; one job per device.
    for (i, d) in devices.iter().enumerate() {
        cmd.arg(format!("--name=dev{i}"));
        cmd.arg(format!("--filename={}", d.display()));
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run fio: {e}"));
    if !out.status.success() {
        panic!("fio failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // fio may print warnings before the JSON.
    let start = text.find('{').expect("fio printed no JSON");
    let v: serde_json::Value = serde_json::from_str(&text[start..]).expect("fio JSON");
    let key = if rw.contains("write") { "write" } else { "read" };
    let bw: f64 = v["jobs"].as_array().expect("jobs").iter().map(|j| j[key]["bw_bytes"].as_f64().unwrap_or(0.0)).sum();
    bw / MIB as f64
}

// ---------------------------------------------------------------------------
// Engine

fn open_devices(paths: &[PathBuf]) -> Vec<Arc<dyn Device>> {
    paths
        .iter()
        .map(|p| {
            Arc::new(
                RawDevice::open(p, RawOpenOptions { read_only: false, exclusive: true })
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            ) as Arc<dyn Device>
        })
        .collect()
}

struct EngineRun {
    write: f64,
    read: f64,
    /// CPU of this process over elapsed time (1.0 = one core busy).
    write_cpu: f64,
    read_cpu: f64,
    /// Busy fraction of the whole machine (all cores, all processes).
    write_sys: f64,
    read_sys: f64,
    par_read: f64,
    par_cpu: f64,
    par_sys: f64,
}

/// Reader threads of the parallel read case.
const READERS: u64 = 4;

/// CPU seconds (user + system) used by this process so far.
fn process_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or("");
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Time `f`; returns (seconds, process CPU / elapsed, machine busy fraction).
fn measure(f: impl FnOnce()) -> (f64, f64, f64) {
    let (c0, (b0, t0)) = (process_cpu(), machine_jiffies());
    let t = Instant::now();
    f();
    let secs = t.elapsed().as_secs_f64();
    let (c1, (b1, t1)) = (process_cpu(), machine_jiffies());
    (secs, (c1 - c0) / secs, (b1 - b0) as f64 / (t1 - t0).max(1) as f64)
}

fn engine_pass(pool: &Pool, name: &str, mib: u64) -> EngineRun {
    let mut buf = vec![0u8; MIB as usize];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }
    let (ino, _) = pool.create(ROOT_INO, name.as_bytes(), FileKind::File, 0o644, 0, 0, 0).expect("create");
    let (wsecs, write_cpu, write_sys) = measure(|| {
        for i in 0..mib {
            buf[..8].copy_from_slice(&i.to_le_bytes());
            pool.write(ino, i * MIB, &buf).expect("write");
        }
        pool.sync_all().expect("sync_all");
    });
    let mut bad = 0u64;
    let (rsecs, read_cpu, read_sys) = measure(|| {
        for i in 0..mib {
            let got = pool.read(ino, i * MIB, MIB as usize).expect("read");
            if got.len() != MIB as usize || got[..8] != i.to_le_bytes() || got[8..16] != buf[8..16] {
                bad += 1;
            }
        }
    });
    assert_eq!(bad, 0, "read back differs");
    // The same, with READERS threads reading alternate MiB (several 1 MiB
    // requests in flight, as a multi-threaded FUSE session with kernel
    // read-ahead sends them).
    let bad = std::sync::atomic::AtomicU64::new(0);
    let (psecs, par_cpu, par_sys) = measure(|| {
        std::thread::scope(|s| {
            for t in 0..READERS {
                let (bad, buf) = (&bad, &buf);
                s.spawn(move || {
                    for i in (t..mib).step_by(READERS as usize) {
                        let got = pool.read(ino, i * MIB, MIB as usize).expect("read");
                        if got.len() != MIB as usize || got[..8] != i.to_le_bytes() || got[8..16] != buf[8..16] {
                            bad.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        })
    });
    assert_eq!(bad.into_inner(), 0, "read back differs");
    pool.unlink(ROOT_INO, name.as_bytes()).expect("unlink");
    pool.commit().expect("commit");
    EngineRun {
        write: mib as f64 / wsecs,
        read: mib as f64 / rsecs,
        write_cpu,
        read_cpu,
        write_sys,
        read_sys,
        par_read: mib as f64 / psecs,
        par_cpu,
        par_sys,
    }
}

fn write_amplification(p: Policy, block: u64) -> f64 {
    let payload = dynamicfs::engine::redundancy::stored_len(p, MIB as u32).unwrap() as f64;
    let per_frag = (payload / p.fragment_count() as f64 / block as f64).ceil() * block as f64 + block as f64;
    per_frag * p.fragment_count() as f64 / MIB as f64
}

// ---------------------------------------------------------------------------
// btrfs

fn sh(cmd: &str) -> std::io::Result<String> {
    let out = Command::new("bash").args(["-c", cmd]).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn btrfs_profile(
    devices: &[PathBuf],
    mnt: &Path,
    profile: &str,
    mib: u64,
    runs: usize,
) -> std::io::Result<(Stat, Stat)> {
    let devs: Vec<String> = devices.iter().map(|d| d.display().to_string()).collect();
    let devs = devs.join(" ");
    let mnt_s = mnt.display().to_string();
    sh(&format!("mkfs.btrfs -q -f -d {profile} -m {profile} {devs}"))?;
    sh(&format!("mount -o noatime {} {mnt_s}", devices[0].display()))?;
    let result = (|| -> std::io::Result<(Stat, Stat)> {
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for run in 0..=runs {
            let f = format!("{mnt_s}/bench{run}");
            let t = Instant::now();
            sh(&format!("dd if=/dev/zero of={f} bs=1M count={mib} oflag=direct status=none && sync"))?;
            let w = mib as f64 / t.elapsed().as_secs_f64();
            sh("echo 3 > /proc/sys/vm/drop_caches")?;
            let t = Instant::now();
            sh(&format!("dd if={f} of=/dev/null bs=1M iflag=direct status=none"))?;
            let r = mib as f64 / t.elapsed().as_secs_f64();
            sh(&format!("rm -f {f} && sync"))?;
            eprintln!(
                "  btrfs {profile} run {run}{}: write {w:.0} MiB/s, read {r:.0} MiB/s",
                if run == 0 { " (warm-up)" } else { "" }
            );
            if run > 0 {
                writes.push(w);
                reads.push(r);
            }
        }
        Ok((stat(writes), stat(reads)))
    })();
    let umount = sh(&format!("umount {mnt_s}"));
    let r = result?;
    umount?;
    Ok(r)
}

// ---------------------------------------------------------------------------
// Temperature tracking overhead (#8)

/// Size of the warm file: it fits the engine's 16 MiB extent cache.
const WARM_MIB: u64 = 8;
/// Passes over the warm file per measurement.
const WARM_PASSES: u64 = 32;
/// Request size of the warm reads (what FUSE sends without read-ahead).
const WARM_READ: u64 = 128 << 10;

/// The read path with temperature tracking on (the defaults: tracking,
/// classification, migration queueing) and off (`track: false`), same
/// files, same devices. One replication:3 pool holds a `--mib` MiB file
/// and an 8 MiB one. Each run opens the pool twice, once each way (the
/// order alternates between runs, so drift of the machine's load hits both
/// alike), and measures: *cold*, the big file read as 1 MiB `Pool::read`
/// calls right after open (devices are O_DIRECT, nothing cached); *warm*,
/// the small file read 32 times as 128 KiB calls served from the extent
/// cache (no device IO: where a fixed per-call cost shows most). Overhead
/// = 1 - on/off, from the medians and as the median of the per-run pairs.
/// No migration runs here (no worker; fresh extents have too few
/// observations to move), so this is the cost of counting and classifying.
fn temperature_case(o: &Opts) -> serde_json::Value {
    use dynamicfs::temperature::TemperatureConfig;
    let policy: Policy = "replication:3".parse().unwrap();
    let devs = open_devices(&o.devices);
    let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref()).collect();
    dynamicfs::mkfs::format_devices(&refs, "bench", policy).expect("mkfs");
    drop(refs);
    let open = |devs: Vec<Arc<dyn Device>>, track: bool| {
        let temperature = TemperatureConfig {
            track,
            settings: dynamicfs::temperature::Settings { migrate: track, ..Default::default() },
            ..Default::default()
        };
        Pool::open(devs, PoolOptions { no_lock: true, temperature, ..Default::default() }).expect("open")
    };
    let pool = open(devs, true);
    let mut chunk = vec![0u8; MIB as usize];
    let mut inos = Vec::new();
    for (name, mib) in [("cold", o.mib), ("warm", WARM_MIB)] {
        let (ino, _) = pool.create(ROOT_INO, name.as_bytes(), FileKind::File, 0o644, 0, 0, 0).expect("create");
        for i in 0..mib {
            chunk[..8].copy_from_slice(&i.to_le_bytes());
            chunk[8] = ino as u8;
            pool.write(ino, i * MIB, &chunk).expect("write");
        }
        inos.push(ino);
    }
    pool.sync_all().expect("sync_all");
    pool.close().expect("close");
    let (cold_ino, warm_ino) = (inos[0], inos[1]);
    let check =
        |got: &[u8], i: u64, ino: u64| got.len() == MIB as usize && got[..8] == i.to_le_bytes() && got[8] == ino as u8;

    // (cold MiB/s, warm MiB/s) of one open of the pool.
    let pass = |track: bool| -> (f64, f64) {
        let pool = open(open_devices(&o.devices), track);
        let t = Instant::now();
        for i in 0..o.mib {
            assert!(
                check(&pool.read(cold_ino, i * MIB, MIB as usize).expect("read"), i, cold_ino),
                "read back differs"
            );
        }
        let cold = o.mib as f64 / t.elapsed().as_secs_f64();
        let warm_pass = |pool: &Pool| {
            let mut off = 0;
            while off < WARM_MIB * MIB {
                let got = pool.read(warm_ino, off, WARM_READ as usize).expect("read");
                assert_eq!(got.len() as u64, WARM_READ);
                off += WARM_READ;
            }
        };
        warm_pass(&pool); // into the extent cache
        let t = Instant::now();
        for _ in 0..WARM_PASSES {
            warm_pass(&pool);
        }
        let warm = (WARM_MIB * WARM_PASSES) as f64 / t.elapsed().as_secs_f64();
        pool.close().expect("close");
        (cold, warm)
    };
    let (mut cold_on, mut cold_off, mut warm_on, mut warm_off) = (vec![], vec![], vec![], vec![]);
    for run in 0..=o.runs {
        let (on, off) = if run % 2 == 0 {
            let on = pass(true);
            (on, pass(false))
        } else {
            let off = pass(false);
            (pass(true), off)
        };
        eprintln!(
            "temperature run {run}{}: cold 1 MiB reads {:.0} (on) vs {:.0} (off) MiB/s; warm 128 KiB reads {:.0} vs {:.0} MiB/s",
            if run == 0 { " (warm-up)" } else { "" },
            on.0,
            off.0,
            on.1,
            off.1
        );
        if run > 0 {
            cold_on.push(on.0);
            cold_off.push(off.0);
            warm_on.push(on.1);
            warm_off.push(off.1);
        }
    }
    let overhead = |on: &[f64], off: &[f64]| {
        let paired = stat(on.iter().zip(off).map(|(a, b)| (1.0 - a / b) * 100.0).collect()).median;
        let (s_on, s_off) = (stat(on.to_vec()), stat(off.to_vec()));
        (s_on, s_off, (1.0 - s_on.median / s_off.median) * 100.0, paired)
    };
    let mut out = json!({ "case": "temperature_overhead", "policy": policy.to_string(), "mib": o.mib });
    println!();
    println!("{:<34} {:>22} {:>22} {:>9} {:>9}", "temperature tracking", "on MiB/s", "off MiB/s", "overhead", "paired");
    for (kind, on, off) in [("cold", &cold_on, &cold_off), ("warm", &warm_on, &warm_off)] {
        let (s_on, s_off, pct, paired) = overhead(on, off);
        let what = if kind == "cold" { "cold read, 1 MiB calls" } else { "warm read, 128 KiB calls (cache)" };
        println!(
            "{what:<34} {:>22} {:>22} {:>8.2}% {:>8.2}%",
            format!("{:.0} ({:.0}..{:.0})", s_on.median, s_on.min, s_on.max),
            format!("{:.0} ({:.0}..{:.0})", s_off.median, s_off.min, s_off.max),
            pct,
            paired
        );
        out[kind] = json!({
            "on_mib_s": round1(s_on.median), "off_mib_s": round1(s_off.median),
            "on_runs": stat_json(&s_on), "off_runs": stat_json(&s_off),
            "overhead_pct": round3(pct), "overhead_pct_paired_median": round3(paired),
        });
    }
    out
}

fn main() {
    let o = parse_args();
    if o.temperature_only {
        let t = temperature_case(&o);
        println!("{}", json!({ "bench": "engine", "devices": o.devices.len(), "runs": o.runs, "cases": [t] }));
        return;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    eprintln!("bench_engine: {} devices, {} MiB, {} runs, {cores} cores", o.devices.len(), o.mib, o.runs);

    let (blake3_rate, enc_rate, dec_rate) = if o.skip_cpu { (0.0, 0.0, 0.0) } else { cpu_limits() };
    eprintln!("CPU, one core: BLAKE3 {blake3_rate:.0} MiB/s, RS 4+2 encode {enc_rate:.0} MiB/s, decode (2 lost) {dec_rate:.0} MiB/s");

    // Device limit.
    let (fio_w, fio_r) = if o.skip_fio {
        (None, None)
    } else {
        eprintln!("fio: warm-up");
        fio(&o.devices, "write", o.fio_mib);
        fio(&o.devices, "read", o.fio_mib);
        let mut w = Vec::new();
        let mut r = Vec::new();
        for run in 1..=o.runs {
            w.push(fio(&o.devices, "write", o.fio_mib));
            r.push(fio(&o.devices, "read", o.fio_mib));
            eprintln!("fio run {run}: write {:.0} MiB/s, read {:.0} MiB/s", w[run - 1], r[run - 1]);
        }
        (Some(stat(w)), Some(stat(r)))
    };

    // Engine.
    let mut cases = Vec::new();
    let mut table: Vec<Row> = Vec::new();
    let mut engine_write: Vec<(Policy, Stat)> = Vec::new();
    for &policy in &o.policies {
        let devs = open_devices(&o.devices);
        let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref()).collect();
        dynamicfs::mkfs::format_devices(&refs, "bench", policy).expect("mkfs");
        let block = devs.iter().map(|d| d.block_size() as u64).max().unwrap_or(4096);
        let pool = Pool::open(devs, PoolOptions { no_lock: true, ..Default::default() }).expect("open");
        let mut w = Vec::new();
        let mut r = Vec::new();
        let mut pr = Vec::new();
        for run in 0..=o.runs {
            let res = engine_pass(&pool, &format!("run{run}"), o.mib);
            eprintln!(
                "engine {policy} run {run}{}: write {:.0} MiB/s (cpu {:.2}, machine {:.0}% busy), read {:.0} MiB/s (cpu {:.2}, machine {:.0}% busy)",
                if run == 0 { " (warm-up)" } else { "" },
                res.write,
                res.write_cpu,
                res.write_sys * 100.0,
                res.read,
                res.read_cpu,
                res.read_sys * 100.0
            );
            eprintln!(
                "    read with {READERS} threads: {:.0} MiB/s (cpu {:.2}, machine {:.0}% busy)",
                res.par_read,
                res.par_cpu,
                res.par_sys * 100.0
            );
            if run > 0 {
                w.push(res.write);
                r.push(res.read);
                pr.push(res.par_read);
            }
        }
        let c = &pool.counters;
        eprintln!(
            "  counters: fragments written {}, read {}, errors {}, device syncs {}, commits {}",
            c.fragments_written.load(std::sync::atomic::Ordering::Relaxed),
            c.fragments_read.load(std::sync::atomic::Ordering::Relaxed),
            c.fragment_errors.load(std::sync::atomic::Ordering::Relaxed),
            c.device_syncs.load(std::sync::atomic::Ordering::Relaxed),
            c.commits.load(std::sync::atomic::Ordering::Relaxed)
        );
        pool.close().expect("close");
        // The devices' write limit for requests the size of this policy's
        // fragments (header block + payload), same queue depth: smaller
        // requests than fio's 1 MiB get less out of these devices.
        let frag_kib =
            (write_amplification(policy, block) * MIB as f64 / policy.fragment_count() as f64 / 1024.0).round() as u64;
        let frag_limit = if o.skip_fio {
            None
        } else {
            let v: Vec<f64> =
                (0..o.runs).map(|_| fio_bs(&o.devices, "write", o.fio_mib, &format!("{frag_kib}k"))).collect();
            let s = stat(v);
            eprintln!("  fio write with {frag_kib} KiB requests (this policy's fragments): {:.0} MiB/s", s.median);
            Some(s)
        };
        let (w, r, pr) = (stat(w), stat(r), stat(pr));
        engine_write.push((policy, w));
        let amp = write_amplification(policy, block);
        let par = format!("read_{READERS}_threads");
        for (kind, s, limit, amp) in [("write", w, fio_w, amp), ("read", r, fio_r, 1.0), (par.as_str(), pr, fio_r, 1.0)]
        {
            let lim = limit.map(|l| l.median / amp);
            let ratio = lim.map(|l| s.median / l);
            let mut case = json!({
                "case": format!("engine_{kind}"),
                "policy": policy.to_string(),
                "mib_s": round1(s.median),
                "runs": stat_json(&s),
                "amplification": round3(amp),
                "device_limit_mib_s": limit.map(|l| round1(l.median)),
                "ratio": ratio.map(round3),
            });
            table.push((format!("engine {kind} {policy}"), s, lim, amp, ratio));
            if kind == "write" {
                if let Some(f) = frag_limit {
                    let r = s.median / (f.median / amp);
                    case["fragment_size_kib"] = json!(frag_kib);
                    case["device_limit_at_fragment_size_mib_s"] = json!(round1(f.median));
                    case["ratio_at_fragment_size"] = json!(round3(r));
                    table.push((
                        format!("  vs fio write, {frag_kib} KiB requests"),
                        f,
                        Some(f.median / amp),
                        amp,
                        Some(r),
                    ));
                }
            }
            cases.push(case);
        }
    }

    // btrfs.
    let mut btrfs = Vec::new();
    if let Some(mnt) = &o.btrfs_mnt {
        for (profile, compare) in [("raid1c3", "replication:3"), ("raid6", "erasure:4+2")] {
            match btrfs_profile(&o.devices, mnt, profile, o.mib, o.runs) {
                Ok((w, r)) => {
                    let ours = engine_write.iter().find(|(p, _)| p.to_string() == compare).map(|(_, s)| s.median);
                    btrfs.push(json!({
                        "profile": profile,
                        "write_mib_s": round1(w.median),
                        "read_mib_s": round1(r.median),
                        "write_runs": stat_json(&w),
                        "read_runs": stat_json(&r),
                        "engine_policy": compare,
                        "engine_write_over_btrfs": ours.map(|x| round3(x / w.median)),
                    }));
                    table.push((format!("btrfs write {profile}"), w, None, 0.0, None));
                    table.push((format!("btrfs read {profile}"), r, None, 0.0, None));
                }
                Err(e) => eprintln!("btrfs {profile}: skipped: {e}"),
            }
        }
    }

    if o.temperature {
        cases.push(temperature_case(&o));
    }

    // Table.
    println!();
    println!("{:<34} {:>9} {:>17} {:>11} {:>6} {:>6}", "case", "MiB/s", "min..max", "limit", "amp", "ratio");
    if let (Some(w), Some(r)) = (fio_w, fio_r) {
        println!(
            "{:<34} {:>9.0} {:>8.0}..{:<8.0} {:>11} {:>6} {:>6}",
            "fio write (all devices, QD8)", w.median, w.min, w.max, "-", "-", "-"
        );
        println!(
            "{:<34} {:>9.0} {:>8.0}..{:<8.0} {:>11} {:>6} {:>6}",
            "fio read (all devices, QD8)", r.median, r.min, r.max, "-", "-", "-"
        );
    }
    for (name, s, lim, amp, ratio) in &table {
        let lim = lim.map(|l| format!("{l:.0}")).unwrap_or_else(|| "-".into());
        let amp = if *amp > 0.0 { format!("{amp:.2}") } else { "-".into() };
        let ratio = ratio.map(|r| format!("{r:.2}")).unwrap_or_else(|| "-".into());
        println!("{name:<34} {:>9.0} {:>8.0}..{:<8.0} {lim:>11} {amp:>6} {ratio:>6}", s.median, s.min, s.max);
    }
    for b in &btrfs {
        if let Some(x) = b["engine_write_over_btrfs"].as_f64() {
            println!(
                "engine {} write / btrfs {} write: {x:.2}",
                b["engine_policy"].as_str().unwrap_or("?"),
                b["profile"].as_str().unwrap_or("?")
            );
        }
    }
    println!(
        "CPU (one core of {cores}): BLAKE3 {blake3_rate:.0} MiB/s, RS 4+2 encode {enc_rate:.0} MiB/s of data, decode with 2 lost {dec_rate:.0} MiB/s"
    );
    let summary = json!({
        "bench": "engine",
        "devices": o.devices.len(),
        "mib": o.mib,
        "runs": o.runs,
        "cores": cores,
        "device_limit": {
            "write_mib_s": fio_w.map(|s| round1(s.median)),
            "read_mib_s": fio_r.map(|s| round1(s.median)),
            "write_runs": fio_w.as_ref().map(stat_json),
            "read_runs": fio_r.as_ref().map(stat_json),
        },
        "cpu_one_core_mib_s": {
            "blake3": round1(blake3_rate),
            "rs_4_2_encode": round1(enc_rate),
            "rs_4_2_decode_2_lost": round1(dec_rate),
        },
        "cases": cases,
        "btrfs": btrfs,
    });
    println!("{summary}");
}
