//! `dfs`: the DynamicFS administration command: `mount` (the same code path
//! as `mount.dfs`), `status`, `health`, `metrics`, `metrics-server`,
//! `list-disks`, `list-extents`, `show-redundancy`, `policy-status`,
//! `change-policy`, `fail-disk`, `add-disk`, `remove-disk`, `rebuild`,
//! `rebuild-status`, `list-hot`, `list-warm`, `list-cold`, `extent-stats`,
//! `scrub`, `scrub-daemon`, `scrub-schedule`, `detect-orphans`,
//! `orphan-stats`, `cleanup-orphans`. On a mounted pool the admin commands
//! go through the mount's control socket (`cli::admin::Target`).
//!
//! Logs go to stderr (human on a terminal, JSON otherwise or with
//! `--log-format json` / `DFS_LOG_FORMAT=json`; filter from `RUST_LOG`,
//! default `warn`), inside a span carrying this command's request id.
//!
//! Exit status: 0 ok, 1 operational error (one `dfs: error: <what>` line
//! on stderr), 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dfs_tools::cli::{admin, health, mount, scrub, status, temperature};
use dfs_tools::{fail, write_stdout};
use dynamicfs::temperature::Temp;

const PROG: &str = "dfs";

/// DynamicFS administration.
#[derive(Debug, Parser)]
#[command(name = "dfs", version)]
struct Cli {
    /// Log lines: human, json or auto (human on a terminal)
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a pool (as mount.dfs does)
    Mount {
        /// Any member of the pool, or UUID=<pool-uuid>
        #[arg(long, value_name = "MEMBER")]
        pool: String,
        /// Where to mount it (an existing directory)
        #[arg(long, value_name = "DIR")]
        mountpoint: PathBuf,
        /// Mount options: ro, rw, allow_other, policy=P, verify, device=PATH, log=FILE, degraded, commit=SECS
        #[arg(short = 'o', value_name = "OPTS")]
        options: Vec<String>,
        /// Stay in the foreground
        #[arg(short = 'f', long)]
        foreground: bool,
        /// Say what was mounted
        #[arg(short = 'v', long)]
        verbose: bool,
        /// Serve /metrics and /health on ADDR:PORT (same as -o metrics=ADDR:PORT)
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
    },
    /// Pool health: ok, degraded or failed, each problem with a suggested command (exit 1 unless ok)
    Health {
        /// Any member of the pool, or UUID=<pool-uuid>
        #[arg(long, value_name = "MEMBER")]
        pool: String,
        /// Read a mount's live endpoint (mounted with -o metrics=ADDR:PORT) instead of opening the pool
        #[arg(long, value_name = "ADDR:PORT")]
        endpoint: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Current value of every metric
    Metrics {
        /// Any member of the pool, or UUID=<pool-uuid>
        #[arg(long, value_name = "MEMBER")]
        pool: String,
        /// Read a mount's live endpoint (mounted with -o metrics=ADDR:PORT) instead of opening the pool
        #[arg(long, value_name = "ADDR:PORT")]
        endpoint: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Serve /metrics and /health for a pool until killed (proxies its mount when mounted)
    #[command(name = "metrics-server")]
    MetricsServer {
        /// Any member of the pool, or UUID=<pool-uuid>
        #[arg(long, value_name = "MEMBER")]
        pool: String,
        /// Port on 127.0.0.1
        #[arg(long, default_value_t = 9464)]
        port: u16,
        /// Full ADDR:PORT to listen on (overrides --port)
        #[arg(long, value_name = "ADDR:PORT")]
        listen: Option<String>,
    },
    /// Show a pool: identity, members and their space, files, extents by policy
    Status {
        /// Any member of the pool, UUID=<pool-uuid>, or the mount point of a mounted pool
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
        pool: String,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// List the members: state, size, used, free, fragments
    #[command(name = "list-disks")]
    ListDisks(Listing),
    /// List every extent: file, offset, length, policy, members
    #[command(name = "list-extents")]
    ListExtents(Listing),
    /// Extents and bytes per policy, degraded extents, losses each survives
    #[command(name = "show-redundancy")]
    ShowRedundancy(Listing),
    /// Running and past policy changes with timestamps and progress
    #[command(name = "policy-status")]
    PolicyStatus(Listing),
    /// Re-encode extents under another policy, online (resumable)
    ///
    /// Examples: `dfs change-policy --pool /dev/sdb --policy erasure:4+2` (whole pool, and its default);
    /// `dfs change-policy --pool /mnt/pool --policy replication:3 --path /db --recursive`
    #[command(name = "change-policy")]
    ChangePolicy {
        /// Any member of the pool, UUID=<pool-uuid>, or its mount point
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
        pool: String,
        /// replication:N or erasure:K+M
        #[arg(long)]
        policy: String,
        /// A file or directory inside the pool (default: the whole pool)
        #[arg(long)]
        path: Option<String>,
        /// With --path DIR: the whole tree under it
        #[arg(long)]
        recursive: bool,
        /// Re-encode at most RATE per second (e.g. 16M), to spare the disks
        #[arg(long, value_name = "RATE", value_parser = admin::parse_rate)]
        max_rate: Option<u64>,
        /// No progress output
        #[arg(short, long)]
        quiet: bool,
    },
    /// Mark a member failed: nothing new goes to it; its extents are read degraded and rebuilt
    ///
    /// Example: `dfs fail-disk --pool /mnt/pool --disk /dev/loop3` (or `--disk 3`)
    #[command(name = "fail-disk")]
    FailDisk {
        /// Any member of the pool, UUID=<pool-uuid>, or its mount point
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
        pool: String,
        /// The member to fail: its index (see list-disks) or its path
        #[arg(long, value_name = "DEV|INDEX", required_unless_present = "index")]
        disk: Option<String>,
        /// Index of the member to fail (same as --disk INDEX)
        #[arg(long, conflicts_with = "disk")]
        index: Option<u32>,
    },
    /// Add a member (block device, image file, or directory) to a pool, online
    ///
    /// Any size; probed like mkfs.dfs (a foreign signature is refused without --force);
    /// usable for new fragments at once.
    /// Examples: `dfs add-disk --pool /mnt/pool --disk /dev/sdd`; `dfs add-disk --pool /dev/sdb --disk /srv/d1:20G`
    #[command(name = "add-disk")]
    AddDisk {
        /// Any member of the pool, UUID=<pool-uuid>, or its mount point
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
        pool: String,
        /// The new member: DEV, an image file, or DIR[:SIZE]
        #[arg(long, value_name = "DEV|DIR[:SIZE]")]
        disk: String,
        /// Overwrite a foreign signature
        #[arg(long)]
        force: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Extents the configured classifier calls hot (hottest first)
    #[command(name = "list-hot")]
    ListHot(Listing),
    /// Extents the configured classifier calls warm
    #[command(name = "list-warm")]
    ListWarm(Listing),
    /// Extents the configured classifier calls cold
    #[command(name = "list-cold")]
    ListCold(Listing),
    /// Access counts, rates, last access, classes and policies of one extent
    #[command(name = "extent-stats")]
    ExtentStats {
        /// Any member of the pool, UUID=<pool-uuid>, or its mount point
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
        pool: String,
        /// The extent's UUID (see list-extents)
        #[arg(long, value_name = "UUID")]
        extent: uuid::Uuid,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Move the temperature clock of a mount made with `-o test_clock` forward (demos, tests)
    #[command(name = "advance-clock")]
    AdvanceClock {
        /// Any member of the pool, UUID=<pool-uuid>, or its mount point
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
        pool: String,
        /// Seconds to add
        #[arg(long)]
        seconds: u32,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Drain a member (its fragments move to the others) and remove it from the pool
    ///
    /// On a mounted pool the drain runs in the background (`--wait` follows it);
    /// on an unmounted pool it runs to the end. Refused when the other members
    /// cannot hold the data or satisfy the policies in use.
    /// Example: `dfs remove-disk --pool /mnt/pool --disk /dev/loop2 --wait`
    #[command(name = "remove-disk")]
    RemoveDisk {
        /// Any member of the pool, UUID=<pool-uuid>, or its mount point
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
        pool: String,
        /// The member to remove: its index (see list-disks) or its path
        #[arg(long, value_name = "DEV|INDEX")]
        disk: String,
        /// Wait until the member has left the pool (mounted pools)
        #[arg(long)]
        wait: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Read and verify every fragment, superblock, root ring and journal copy of an unmounted pool
    ///
    /// Exit status 1 when damage remains (after --repair: what could not be repaired).
    Scrub {
        /// Any member of the pool, or UUID=<pool-uuid>
        #[arg(long, value_name = "MEMBER")]
        pool: String,
        /// Rebuild bad or missing fragments from the good ones, rewrite bad copies, erase leaked fragments
        #[arg(long)]
        repair: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Control the background scrub of a mounted pool: start|status|pause|resume|stop
    #[command(name = "scrub-daemon")]
    ScrubDaemon {
        #[arg(value_parser = ["start", "status", "pause", "resume", "stop"])]
        action: String,
        /// Any member of the pool, UUID=<pool-uuid>, or its mount point
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
        pool: String,
        /// low (16 MiB/s), medium (64 MiB/s) or high (256 MiB/s)
        #[arg(long, value_parser = ["low", "medium", "high"])]
        intensity: Option<String>,
        /// Print JSON (the daemon's status, which every action answers)
        #[arg(long)]
        json: bool,
    },
    /// Show, or set, when the mount scrubs the pool on its own
    #[command(name = "scrub-schedule")]
    ScrubSchedule {
        /// Any member of the pool, or UUID=<pool-uuid>
        #[arg(long, value_name = "MEMBER")]
        pool: String,
        #[arg(long, value_parser = ["nightly", "weekly", "continuous", "off"])]
        frequency: Option<String>,
        #[arg(long, value_parser = ["low", "medium", "high"])]
        intensity: Option<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// List fragments no committed metadata references, and why
    #[command(name = "detect-orphans")]
    DetectOrphans(Listing),
    /// Unreferenced fragments and bytes by kind and member
    #[command(name = "orphan-stats")]
    OrphanStats(Listing),
    /// Erase unreferenced fragments of an unmounted pool
    #[command(name = "cleanup-orphans")]
    CleanupOrphans {
        /// Any member of the pool, or UUID=<pool-uuid>
        #[arg(long, value_name = "MEMBER")]
        pool: String,
        /// Keep fragments younger than this (e.g. 30s, 10m, 2h, 7d)
        #[arg(long, value_name = "AGE")]
        min_age: Option<String>,
        /// Say what would be erased, erase nothing
        #[arg(long)]
        dry_run: bool,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Rebuild, now, every extent that lost fragments (failed or missing members)
    Rebuild(Listing),
    /// What the mount's background rebuild/drain worker has done
    #[command(name = "rebuild-status")]
    RebuildStatus(Listing),
}

/// Arguments of the read-only listings.
#[derive(Debug, clap::Args)]
struct Listing {
    /// Any member of the pool, UUID=<pool-uuid>, or its mount point
    #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
    pool: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Run `f` on the pool `pool` names: through its mount's control socket
/// when mounted, else opened here (`writable`: under the pool lock).
fn on_pool(pool: &str, writable: bool, f: impl FnOnce(&mut admin::Target) -> Result<String, String>) -> ExitCode {
    output(admin::Target::open(pool, writable).and_then(|mut t| {
        let r = f(&mut t);
        let closed = t.close();
        r.and_then(|text| closed.map(|_| text))
    }))
}

fn listing(args: &Listing, f: fn(&mut admin::Target, bool) -> Result<String, String>) -> ExitCode {
    on_pool(&args.pool, false, |t| f(t, args.json))
}

fn output(r: Result<String, String>) -> ExitCode {
    match r.map(|t| write_stdout(&t)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => fail(PROG, &e),
        Err(e) => fail(PROG, &e),
    }
}

/// Print an integrity command's text; exit 1 when damage is left.
fn integrity(r: Result<scrub::Outcome, String>) -> ExitCode {
    match r {
        Ok(o) => match write_stdout(&o.text) {
            Ok(()) if o.damage_left => ExitCode::from(dfs_tools::EXIT_ERROR),
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(PROG, &e),
        },
        Err(e) => fail(PROG, &e),
    }
}

fn json_text(v: &impl serde::Serialize) -> Result<String, String> {
    serde_json::to_string_pretty(v).map(|t| t + "\n").map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match cli.log_format.as_deref().map(str::parse).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{PROG}: {e}");
            return ExitCode::from(2);
        }
    };
    let is_mount = matches!(cli.command, Command::Mount { .. });
    if !is_mount {
        // The mount daemon sets up its own logs (to its log file).
        let format = match dynamicfs::logging::LogFormat::choose(format) {
            Ok(f) => f,
            Err(e) => return fail(PROG, &e),
        };
        let filter = dynamicfs::logging::filter("RUST_LOG", "warn");
        if let Err(e) = dynamicfs::logging::init(format, dynamicfs::logging::LogTarget::Stderr, filter) {
            return fail(PROG, &e);
        }
    } else if let Some(f) = cli.log_format.as_deref() {
        std::env::set_var(dynamicfs::logging::FORMAT_ENV, f);
    }
    let span = tracing::info_span!("cli", req = %dynamicfs::metrics::new_request_id());
    let _entered = span.enter();
    match cli.command {
        Command::Mount { pool, mountpoint, mut options, foreground, verbose, listen } => {
            if let Some(l) = listen {
                options.push(format!("metrics={l}"));
            }
            mount::run(
                PROG,
                &mount::MountRequest { source: pool, mountpoint, options, foreground, sloppy: false, verbose },
            )
        }
        Command::Health { pool, endpoint, json } => match health::gather_health(&pool, endpoint.as_deref()) {
            Ok(h) => {
                let text = if json { json_text(&h) } else { Ok(health::render_health(&h)) };
                match text.map(|t| write_stdout(&t)) {
                    Ok(Ok(())) if health::is_ok(&h) => ExitCode::SUCCESS,
                    Ok(Ok(())) => ExitCode::from(dfs_tools::EXIT_ERROR),
                    Ok(Err(e)) => fail(PROG, &e),
                    Err(e) => fail(PROG, &e),
                }
            }
            Err(e) => fail(PROG, &e),
        },
        Command::Metrics { pool, endpoint, json } => {
            output(health::gather_metrics(&pool, endpoint.as_deref()).and_then(|e| {
                if json {
                    json_text(&dynamicfs::metrics::samples_json(&e))
                } else {
                    Ok(health::render_metrics(&e))
                }
            }))
        }
        Command::MetricsServer { pool, port, listen } => {
            let addr = listen.unwrap_or_else(|| format!("127.0.0.1:{port}"));
            match health::metrics_server(&pool, &addr) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(PROG, &e),
            }
        }
        Command::Status { pool, json } => {
            let s = match status::gather(&pool) {
                Ok(s) => s,
                Err(e) => return fail(PROG, &e),
            };
            let text = if json {
                match serde_json::to_string_pretty(&s) {
                    Ok(t) => t + "\n",
                    Err(e) => return fail(PROG, &e),
                }
            } else {
                status::render(&s)
            };
            match write_stdout(&text) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(PROG, &e),
            }
        }
        Command::ListDisks(a) => listing(&a, admin::list_disks),
        Command::ListExtents(a) => listing(&a, admin::list_extents),
        Command::ShowRedundancy(a) => listing(&a, admin::show_redundancy),
        Command::PolicyStatus(a) => listing(&a, admin::policy_status),
        Command::ListHot(a) => on_pool(&a.pool, false, |t| temperature::list(t, Temp::Hot, a.json)),
        Command::ListWarm(a) => on_pool(&a.pool, false, |t| temperature::list(t, Temp::Warm, a.json)),
        Command::ListCold(a) => on_pool(&a.pool, false, |t| temperature::list(t, Temp::Cold, a.json)),
        Command::ExtentStats { pool, extent, json } => {
            on_pool(&pool, false, |t| temperature::extent_stats(t, extent, json))
        }
        Command::AdvanceClock { pool, seconds, json } => {
            on_pool(&pool, false, |t| temperature::advance_clock(t, seconds, json))
        }
        Command::ChangePolicy { pool, policy, path, recursive, max_rate, quiet } => {
            // Refuse a nonsense policy before opening anything.
            if let Err(e) = policy.parse::<dfs_format::Policy>().and_then(|p| p.validate().map(|_| p)) {
                return fail(PROG, &format!("policy {policy:?}: {e}"));
            }
            let progress = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
            if progress {
                eprintln!("re-encoding extents under {policy} ...");
            }
            let args = admin::ChangeArgs { path: path.as_deref(), recursive, max_rate, progress };
            on_pool(&pool, true, |t| admin::change_policy(t, &policy, &args))
        }
        Command::FailDisk { pool, disk, index } => {
            let disk = disk.unwrap_or_else(|| index.unwrap_or_default().to_string());
            on_pool(&pool, true, |t| admin::fail_disk(t, &disk))
        }
        Command::AddDisk { pool, disk, force, json } => {
            on_pool(&pool, true, |t| admin::add_disk(t, &disk, force, json))
        }
        Command::RemoveDisk { pool, disk, wait, json } => {
            on_pool(&pool, true, |t| admin::remove_disk(t, &disk, wait, json))
        }
        Command::Rebuild(a) => on_pool(&a.pool, true, |t| admin::rebuild(t, a.json)),
        Command::RebuildStatus(a) => listing(&a, admin::rebuild_status),
        Command::Scrub { pool, repair, json } => integrity(scrub::scrub(&pool, repair, json)),
        Command::ScrubDaemon { action, pool, intensity, json } => {
            integrity(scrub::scrub_daemon(&action, &pool, intensity.as_deref(), json))
        }
        Command::ScrubSchedule { pool, frequency, intensity, json } => {
            integrity(scrub::scrub_schedule(&pool, frequency.as_deref(), intensity.as_deref(), json))
        }
        Command::DetectOrphans(a) => integrity(scrub::detect_orphans(&a.pool, a.json)),
        Command::OrphanStats(a) => integrity(scrub::orphan_stats(&a.pool, a.json)),
        Command::CleanupOrphans { pool, min_age, dry_run, json } => {
            integrity(scrub::cleanup_orphans(&pool, min_age.as_deref(), dry_run, json))
        }
    }
}
