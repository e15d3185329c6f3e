//! `dfs`: the DynamicFS administration command: `mount` (the same code path
//! as `mount.dfs`), `status`, `health`, `metrics`, `metrics-server`,
//! `list-disks`, `list-extents`, `show-redundancy`, `policy-status`,
//! `change-policy`, `fail-disk`, `add-disk`, `remove-disk`, `rebuild`,
//! `rebuild-status`, `list-hot`, `list-warm`, `list-cold`, `extent-stats`,
//! `temperature-config`, `advance-clock`,
//! `scrub`, `scrub-daemon`, `scrub-schedule`, `detect-orphans`,
//! `orphan-stats`, `cleanup-orphans`. On a mounted pool the admin commands
//! go through the mount's control socket (`cli::admin::Target`).
//!
//! Logs go to stderr (human on a terminal, JSON otherwise or with
//! `--log-format json` / `DFS_LOG_FORMAT=json`; filter from `RUST_LOG`,
//! default `warn`), inside a span carrying this command's request id, which
//! control calls also send to the mount (its lines for the call carry it).
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
    #[command(
        after_help = "Examples:\n  dfs mount --pool /dev/sdb --mountpoint /mnt/pool\n  dfs mount --pool UUID=6f1d2c3b-0a4e-4f5a-9b8c-7d6e5f4a3b2c --mountpoint /mnt/pool -o device=/dev/sdc,allow_other"
    )]
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
    #[command(
        after_help = "Examples:\n  dfs health --pool /dev/sdb\n  dfs health --pool /dev/sdb --endpoint 127.0.0.1:9464 --json"
    )]
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
    #[command(
        after_help = "Examples:\n  dfs metrics --pool /dev/sdb\n  dfs metrics --pool /dev/sdb --endpoint 127.0.0.1:9464 --json"
    )]
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
    #[command(
        after_help = "Examples:\n  dfs metrics-server --pool /dev/sdb --port 9464\n  dfs metrics-server --pool /dev/sdb --listen 0.0.0.0:9464"
    )]
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
    #[command(after_help = "Examples:\n  dfs status --pool /mnt/pool\n  dfs status --pool /dev/sdb --json")]
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
    #[command(after_help = "Examples:\n  dfs list-disks --pool /mnt/pool\n  dfs list-disks --pool /dev/sdb --json")]
    ListDisks(Listing),
    /// List every extent: file, offset, length, policy, members
    #[command(name = "list-extents")]
    #[command(
        after_help = "Examples:\n  dfs list-extents --pool /mnt/pool\n  dfs list-extents --pool /dev/sdb --json"
    )]
    ListExtents(Listing),
    /// Extents and bytes per policy, degraded extents, losses each survives
    #[command(name = "show-redundancy")]
    #[command(
        after_help = "Examples:\n  dfs show-redundancy --pool /mnt/pool\n  dfs show-redundancy --pool /dev/sdb --json"
    )]
    ShowRedundancy(Listing),
    /// Running and past policy changes with timestamps and progress
    #[command(name = "policy-status")]
    #[command(
        after_help = "Examples:\n  dfs policy-status --pool /mnt/pool\n  dfs policy-status --pool /dev/sdb --json"
    )]
    PolicyStatus(Listing),
    /// Re-encode extents under another policy, online (resumable)
    ///
    /// Without --path the whole pool changes, and its default policy with it.
    /// Progress shows on a terminal (stderr) unless -q.
    #[command(name = "change-policy")]
    #[command(
        after_help = "Examples:\n  dfs change-policy --pool /dev/sdb --policy erasure:4+2\n  dfs change-policy --pool /mnt/pool --policy replication:3 --path /db --recursive --max-rate 32M"
    )]
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
    #[command(name = "fail-disk")]
    #[command(
        after_help = "Examples:\n  dfs fail-disk --pool /mnt/pool --disk /dev/loop3\n  dfs fail-disk --pool /dev/sdb --index 3"
    )]
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
    #[command(name = "add-disk")]
    #[command(
        after_help = "Examples:\n  dfs add-disk --pool /mnt/pool --disk /dev/sdd\n  dfs add-disk --pool /dev/sdb --disk /srv/d1:20G\n  dfs add-disk --pool /mnt/pool --disk /dev/sde --force   # it held an old filesystem"
    )]
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
    #[command(after_help = "Examples:\n  dfs list-hot --pool /mnt/pool\n  dfs list-hot --pool /mnt/pool --json")]
    ListHot(Listing),
    /// Extents the configured classifier calls warm
    #[command(name = "list-warm")]
    #[command(after_help = "Examples:\n  dfs list-warm --pool /mnt/pool\n  dfs list-warm --pool /mnt/pool --json")]
    ListWarm(Listing),
    /// Extents the configured classifier calls cold
    #[command(name = "list-cold")]
    #[command(after_help = "Examples:\n  dfs list-cold --pool /mnt/pool\n  dfs list-cold --pool /dev/sdb --json")]
    ListCold(Listing),
    /// Access counts, rates, last access, classes and policies of one extent
    #[command(name = "extent-stats")]
    #[command(
        after_help = "Examples:\n  dfs extent-stats --pool /mnt/pool --extent 0b6f3c2e-5d8a-4c1e-9f7b-2a1d3e4f5a6b"
    )]
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
    /// Show the pool's temperature settings, or change them (stored in the pool)
    ///
    /// Keys: classifier, hot_ops_per_day, hot_recent_secs, warm_ops_per_day, warm_recent_secs,
    /// hot_policy, warm_policy, cold_policy, migrate, migration_rate, min_observations
    /// (docs/TEMPERATURE.md). On a mounted pool the mount uses new values at once.
    #[command(
        name = "temperature-config",
        after_help = "Examples:\n  dfs temperature-config --pool /mnt/pool\n  dfs temperature-config --pool /mnt/pool --set hot_ops_per_day=500 --set cold_policy=erasure:3+2\n  dfs temperature-config --pool /dev/sdb --unset cold_policy --json"
    )]
    TemperatureConfig {
        /// Any member of the pool, UUID=<pool-uuid>, or its mount point
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
        pool: String,
        /// Set KEY to VALUE (repeatable; all or nothing)
        #[arg(long, value_name = "KEY=VALUE", value_parser = temperature::parse_set)]
        set: Vec<(String, String)>,
        /// Return KEY to its default (repeatable)
        #[arg(long, value_name = "KEY", value_parser = temperature::parse_unset)]
        unset: Vec<String>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Move the temperature clock of a mount made with `-o test_clock` forward (demos, tests)
    #[command(name = "advance-clock")]
    #[command(
        after_help = "Examples:\n  dfs advance-clock --pool /mnt/pool --seconds 3600   # a mount made with -o test_clock"
    )]
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
    #[command(name = "remove-disk")]
    #[command(
        after_help = "Examples:\n  dfs remove-disk --pool /mnt/pool --disk /dev/loop2 --wait\n  dfs remove-disk --pool /dev/sdb --disk 2 --json"
    )]
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
    /// Read and verify every fragment, superblock, root ring and journal copy of a pool
    ///
    /// On a mounted pool the mount runs the pass and returns its report.
    /// Exit status 1 when damage remains (after --repair: what could not be repaired).
    #[command(after_help = "Examples:\n  dfs scrub --pool /dev/sdb\n  dfs scrub --pool /dev/sdb --repair --json")]
    Scrub {
        /// Any member of the pool, UUID=<pool-uuid>, or its mount point
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
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
    #[command(
        after_help = "Examples:\n  dfs scrub-daemon start --pool /mnt/pool --intensity low\n  dfs scrub-daemon status --pool /mnt/pool\n  dfs scrub-daemon pause --pool /mnt/pool --json"
    )]
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
    /// Show, or set, when the mount scrubs the pool on its own (a mount follows a new schedule at once)
    #[command(name = "scrub-schedule")]
    #[command(
        after_help = "Examples:\n  dfs scrub-schedule --pool /dev/sdb\n  dfs scrub-schedule --pool /dev/sdb --frequency weekly --intensity medium"
    )]
    ScrubSchedule {
        /// Any member of the pool, UUID=<pool-uuid>, or its mount point
        #[arg(long, value_name = "MEMBER|MOUNTPOINT")]
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
    #[command(
        after_help = "Examples:\n  dfs detect-orphans --pool /mnt/pool\n  dfs detect-orphans --pool /dev/sdb --json"
    )]
    DetectOrphans(Listing),
    /// Unreferenced fragments and bytes by kind and member
    #[command(name = "orphan-stats")]
    #[command(
        after_help = "Examples:\n  dfs orphan-stats --pool /dev/sdb\n  dfs orphan-stats --pool /mnt/pool --json"
    )]
    OrphanStats(Listing),
    /// Erase unreferenced fragments of an unmounted pool
    #[command(name = "cleanup-orphans")]
    #[command(
        after_help = "Examples:\n  dfs cleanup-orphans --pool /dev/sdb --dry-run\n  dfs cleanup-orphans --pool /dev/sdb --min-age 1h"
    )]
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
    #[command(after_help = "Examples:\n  dfs rebuild --pool /mnt/pool\n  dfs rebuild --pool /dev/sdb --json")]
    Rebuild(Listing),
    /// What the mount's background rebuild/drain worker has done
    #[command(name = "rebuild-status")]
    #[command(
        after_help = "Examples:\n  dfs rebuild-status --pool /mnt/pool\n  dfs rebuild-status --pool /mnt/pool --json"
    )]
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
        let filter = dynamicfs::logging::filter(&["RUST_LOG"], "warn");
        if let Err(e) = dynamicfs::logging::init(format, dynamicfs::logging::LogTarget::Stderr, filter) {
            return fail(PROG, &e);
        }
    } else if let Some(f) = cli.log_format.as_deref() {
        std::env::set_var(dynamicfs::logging::FORMAT_ENV, f);
    }
    // This command's request id: on its own log lines (the span) and sent
    // with every control call, so the mount logs its work under it too.
    let req = dynamicfs::metrics::new_request_id();
    dynamicfs::control::client::set_request_id(&req);
    let span = tracing::info_span!(target: dynamicfs::logging::REQUEST_TARGET, "cli", req = %req);
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
        Command::TemperatureConfig { pool, set, unset, json } => {
            let change = !set.is_empty() || !unset.is_empty();
            on_pool(&pool, change, |t| temperature::config(t, &set, &unset, json))
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

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Every subcommand's `--help` ends with examples of itself, and each
    /// example parses.
    #[test]
    fn every_subcommand_has_examples_that_parse() {
        let cmd = Cli::command();
        let mut checked = 0;
        for sub in cmd.get_subcommands() {
            let name = sub.get_name();
            let help = sub.get_after_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.starts_with("Examples:\n"), "{name}: no examples in --help");
            let examples: Vec<&str> = help.lines().skip(1).map(str::trim).collect();
            assert!(!examples.is_empty(), "{name}: no examples");
            for ex in examples {
                let ex = ex.split(" #").next().unwrap_or(ex);
                assert!(ex.starts_with(&format!("dfs {name} ")), "{name}: example {ex:?} is not of dfs {name}");
                if let Err(e) = Cli::try_parse_from(ex.split_whitespace()) {
                    panic!("{name}: example {ex:?} does not parse: {e}");
                }
            }
            checked += 1;
        }
        assert!(checked >= 26, "only {checked} subcommands");
    }
}
