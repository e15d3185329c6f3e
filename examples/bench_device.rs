//! RawDevice against fio on the same block device, same queue depth.
//!
//! ```text
//! bench_device --device /dev/loopN [--runs 3] [--mib 1024] [--rand-secs 4]
//!              [--ioengine io_uring] [--dfs-threads 1] [--batch-mult 8]
//!              [--cases seq_write_1m,seq_read_1m,rand_read_4k_qd32]
//! ```
//!
//! `scripts/bench-device` sets up a loop device and runs this. The device's
//! contents are overwritten. Cases:
//!
//! - `seq_write_1m`: 1 MiB sequential writes, QD8, `--mib` MiB in all;
//! - `seq_read_1m`: 1 MiB sequential reads, QD8, `--mib` MiB in all;
//! - `rand_read_4k_qd32`: 4 KiB random reads over the first `--mib` MiB,
//!   QD32, for `--rand-secs` seconds.
//!
//! fio runs with `--direct=1 --ioengine=<ioengine> --iodepth=<QD>`: it keeps
//! QD requests in flight and sends a new one as each completes. RawDevice
//! does the same through its batch API: each submitting thread
//! (`--dfs-threads`, default 1) issues `write_batch`/`read_batch` calls of
//! `--batch-mult × QD` requests (default 8 × QD) with the device's queue
//! depth ([`RawDevice::set_queue_depth`]) set to QD / threads, so the ring
//! holds the same number of requests in flight as fio's and refills as each
//! completes. `--batch-mult 1` measures batches of exactly QD requests, each
//! drained before the next is sent (the shape of one extent's fragments).
//!
//! After a warm-up pass (the whole span written once, then one untimed run of
//! every case on both sides), each case runs `--runs` times alternating fio
//! and RawDevice, and the median is reported. Progress goes to stderr; a table
//! goes to stdout, then as the last line one JSON object.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use dynamicfs::device::{AlignedBuf, Device, RawDevice, RawOpenOptions, ReadReq, WriteReq};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, PartialEq)]
enum Case {
    SeqWrite,
    SeqRead,
    RandRead,
}

const ALL_CASES: [Case; 3] = [Case::SeqWrite, Case::SeqRead, Case::RandRead];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::SeqWrite => "seq_write_1m",
            Case::SeqRead => "seq_read_1m",
            Case::RandRead => "rand_read_4k_qd32",
        }
    }
    fn bs(self) -> usize {
        match self {
            Case::RandRead => 4096,
            _ => MIB as usize,
        }
    }
    fn qd(self) -> usize {
        match self {
            Case::RandRead => 32,
            _ => 8,
        }
    }
    /// Is the figure IOPS (else MiB/s)?
    fn iops(self) -> bool {
        self == Case::RandRead
    }
}

struct Opts {
    device: PathBuf,
    runs: usize,
    mib: u64,
    rand_secs: u64,
    ioengine: String,
    dfs_threads: usize,
    batch_mult: usize,
    cases: Vec<Case>,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        device: PathBuf::new(),
        runs: 3,
        mib: 1024,
        rand_secs: 4,
        ioengine: "io_uring".into(),
        dfs_threads: 1,
        batch_mult: 8,
        cases: vec![Case::SeqWrite, Case::SeqRead, Case::RandRead],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--device" => o.device = PathBuf::from(val()),
            "--runs" => o.runs = val().parse().unwrap_or_else(|_| usage("bad --runs")),
            "--mib" => o.mib = val().parse().unwrap_or_else(|_| usage("bad --mib")),
            "--rand-secs" => o.rand_secs = val().parse().unwrap_or_else(|_| usage("bad --rand-secs")),
            "--ioengine" => o.ioengine = val(),
            "--dfs-threads" => o.dfs_threads = val().parse().unwrap_or_else(|_| usage("bad --dfs-threads")),
            "--cases" => {
                let list = val();
                o.cases = list
                    .split(',')
                    .map(|n| {
                        ALL_CASES
                            .into_iter()
                            .find(|c| c.name() == n)
                            .unwrap_or_else(|| usage(&format!("unknown case {n}")))
                    })
                    .collect();
            }
            "--batch-mult" => o.batch_mult = val().parse().unwrap_or_else(|_| usage("bad --batch-mult")),
            "-h" | "--help" => usage(""),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    if o.device.as_os_str().is_empty() {
        usage("--device is required");
    }
    o.runs = o.runs.max(1);
    o.dfs_threads = o.dfs_threads.max(1);
    o.batch_mult = o.batch_mult.max(1);
    o
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("bench_device: {msg}");
    }
    eprintln!(
        "usage: bench_device --device DEV [--runs N] [--mib MIB] [--rand-secs S] [--ioengine io_uring|libaio] \
         [--dfs-threads N] [--batch-mult M] [--cases a,b,..]"
    );
    std::process::exit(2)
}

/// One measurement: MiB/s or IOPS, and CPU time (user + system) of the
/// submitting side per operation.
#[derive(Clone, Copy)]
struct Sample {
    rate: f64,
    cpu_us_per_op: f64,
}

/// One fio run.
fn fio(o: &Opts, case: Case) -> Sample {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=bench",
        "--direct=1",
        "--group_reporting",
        "--output-format=json",
        "--offset=0",
        "--randrepeat=0",
        "--norandommap",
    ]);
    cmd.arg(format!("--filename={}", o.device.display()))
        .arg(format!("--ioengine={}", o.ioengine))
        .arg(format!("--bs={}", case.bs()))
        .arg(format!("--iodepth={}", case.qd()))
        .arg(format!("--size={}", o.mib * MIB));
    match case {
        Case::SeqWrite => cmd.arg("--rw=write"),
        Case::SeqRead => cmd.arg("--rw=read"),
        Case::RandRead => cmd.args(["--rw=randread", "--time_based", &format!("--runtime={}", o.rand_secs)]),
    };
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run fio: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!("fio failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    }
    let json = &stdout[stdout.find('{').unwrap_or_else(|| panic!("no JSON from fio: {stdout}"))..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("fio JSON: {e}"));
    let dir = if case == Case::SeqWrite { "write" } else { "read" };
    let job = &v["jobs"][0];
    let rate = if case.iops() {
        job[dir]["iops"].as_f64().expect("iops")
    } else {
        job[dir]["bw_bytes"].as_f64().expect("bw_bytes") / MIB as f64
    };
    // usr_cpu / sys_cpu are percentages of the job's run time (ms).
    let cpu_pct = job["usr_cpu"].as_f64().unwrap_or(0.0) + job["sys_cpu"].as_f64().unwrap_or(0.0);
    let cpu_us = cpu_pct / 100.0 * job["job_runtime"].as_f64().unwrap_or(0.0) * 1000.0;
    let ops = job[dir]["total_ios"].as_f64().unwrap_or(0.0).max(1.0);
    Sample { rate, cpu_us_per_op: cpu_us / ops }
}

/// CPU time (user + system) of the calling thread so far, in microseconds.
/// Thread, not process, as fio counts it: io_uring's kernel workers (which
/// both sides get for requests the block layer can't take without blocking)
/// are left out on both sides.
fn thread_cpu_us() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One RawDevice run; returns MiB/s or IOPS.
///
/// Each submitting thread issues batches of `batch_mult × QD` requests and
/// the device keeps at most QD of them in flight (its queue depth is set to
/// QD per thread), refilling the window as each completes, so the device
/// sees the same steady queue as fio's `--iodepth`. Buffers are allocated
/// and filled before the clock starts.
fn dfs(o: &Opts, dev: &mut RawDevice, case: Case) -> Sample {
    // The queue depth is per batch, so per submitting thread: split QD so
    // the device sees the same total as fio's.
    dev.set_queue_depth((case.qd() / o.dfs_threads).max(1) as u32);
    let dev = &*dev;
    let span = o.mib * MIB;
    let threads = o.dfs_threads as u64;
    let (bs, qd) = (case.bs(), case.qd());
    let per_batch = qd * o.batch_mult;
    let mut all_bufs: Vec<Vec<AlignedBuf>> = (0..threads)
        .map(|t| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t + 1);
            (0..per_batch)
                .map(|_| {
                    let mut b = AlignedBuf::zeroed(bs);
                    rng.fill(&mut b[..]);
                    b
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    let (ops, cpu_us): (u64, f64) = std::thread::scope(|s| {
        let handles: Vec<_> = all_bufs
            .iter_mut()
            .enumerate()
            .map(|(t, bufs)| {
                let t = t as u64;
                s.spawn(move || {
                    let cpu0 = thread_cpu_us();
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t + 100);
                    let mut ops = 0u64;
                    match case {
                        Case::SeqWrite | Case::SeqRead => {
                            // Thread t takes every threads-th batch of the span.
                            let batch_bytes = (bs * per_batch) as u64;
                            let mut off = t * batch_bytes;
                            while off < span {
                                let n = (((span - off) / bs as u64) as usize).min(per_batch);
                                if case == Case::SeqWrite {
                                    let reqs: Vec<WriteReq<'_>> = bufs[..n]
                                        .iter()
                                        .enumerate()
                                        .map(|(i, b)| WriteReq { offset: off + (i * bs) as u64, buf: b })
                                        .collect();
                                    dev.write_batch(&reqs).expect("write_batch");
                                } else {
                                    let mut reqs: Vec<ReadReq<'_>> = bufs[..n]
                                        .iter_mut()
                                        .enumerate()
                                        .map(|(i, b)| ReadReq { offset: off + (i * bs) as u64, buf: b })
                                        .collect();
                                    dev.read_batch(&mut reqs).expect("read_batch");
                                }
                                ops += n as u64;
                                off += batch_bytes * threads;
                            }
                        }
                        Case::RandRead => {
                            let blocks = span / bs as u64;
                            let deadline = Instant::now() + Duration::from_secs(o.rand_secs);
                            while Instant::now() < deadline {
                                let mut reqs: Vec<ReadReq<'_>> = bufs
                                    .iter_mut()
                                    .map(|b| ReadReq { offset: rng.gen_range(0..blocks) * bs as u64, buf: b })
                                    .collect();
                                dev.read_batch(&mut reqs).expect("read_batch");
                                ops += per_batch as u64;
                            }
                        }
                    }
                    (ops, thread_cpu_us() - cpu0)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread")).fold((0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu_us_per_op = cpu_us / ops.max(1) as f64;
    let rate = if case.iops() { ops as f64 / secs } else { (ops * bs as u64) as f64 / MIB as f64 / secs };
    Sample { rate, cpu_us_per_op }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let mut o = parse_args();
    let mut dev = RawDevice::open(&o.device, RawOpenOptions { read_only: false, exclusive: false })
        .unwrap_or_else(|e| panic!("{e}"));
    o.mib = o.mib.min(dev.size() / MIB);
    eprintln!(
        "device {} ({} MiB, block size {}, batches via {}), span {} MiB, {} runs, fio ioengine {}, \
         dfs: {} thread(s), batches of {} x QD",
        o.device.display(),
        dev.size() / MIB,
        dev.block_size(),
        dev.io_path(),
        o.mib,
        o.runs,
        o.ioengine,
        o.dfs_threads,
        o.batch_mult
    );
    let cases = o.cases.clone();

    // Warm-up: fill the span once (allocates a sparse image's blocks), then
    // one untimed run of every case on both sides.
    eprintln!("warm-up ...");
    dfs(&o, &mut dev, Case::SeqWrite);
    dev.sync().expect("sync");
    let warm = Opts { rand_secs: 1, ioengine: o.ioengine.clone(), device: o.device.clone(), cases: Vec::new(), ..o };
    for &c in &cases {
        fio(&warm, c);
        dfs(&warm, &mut dev, c);
    }

    let mut rows = Vec::new();
    for &c in &cases {
        let (mut f, mut d) = (Vec::new(), Vec::new());
        for run in 0..o.runs {
            // Alternate who goes first, so that a drift in the machine's
            // load doesn't always favour the same side.
            let (fs, ds) = if run % 2 == 0 {
                let fs = fio(&o, c);
                dev.sync().expect("sync");
                (fs, dfs(&o, &mut dev, c))
            } else {
                let ds = dfs(&o, &mut dev, c);
                dev.sync().expect("sync");
                (fio(&o, c), ds)
            };
            dev.sync().expect("sync");
            eprintln!(
                "  {} run {}: fio {:.0} ({:.1} us CPU/op), dfs {:.0} ({:.1} us CPU/op)",
                c.name(),
                run + 1,
                fs.rate,
                fs.cpu_us_per_op,
                ds.rate,
                ds.cpu_us_per_op
            );
            f.push(fs.rate);
            d.push(ds.rate);
        }
        let (fm, dm) = (median(&mut f), median(&mut d));
        rows.push((c, fm, dm, dm / fm));
    }

    println!("{:<20} {:>14} {:>14} {:>7}", "case", "fio", "dfs", "ratio");
    for (c, f, d, r) in &rows {
        let unit = if c.iops() { "IOPS" } else { "MiB/s" };
        println!("{:<20} {:>8.0} {:<5} {:>8.0} {:<5} {:>7.3}", c.name(), f, unit, d, unit, r);
    }
    // Written by hand to keep the keys in the documented order.
    let cases_json: Vec<String> = rows
        .iter()
        .map(|(c, f, d, r)| {
            let (ff, df) = if c.iops() { ("fio_iops", "dfs_iops") } else { ("fio_mib_s", "dfs_mib_s") };
            format!(r#"{{"case":"{}","{ff}":{:.0},"{df}":{:.0},"ratio":{:.3}}}"#, c.name(), f, d, r)
        })
        .collect();
    println!(r#"{{"cases":[{}]}}"#, cases_json.join(","));
}
