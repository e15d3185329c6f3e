//! `dfs`: the DynamicFS administration command: `mount` (the same code path
//! as `mount.dfs`), `status`, `health`, `metrics`, `metrics-server`,
//! `list-disks`, `list-extents`, `show-redundancy`, `policy-status`,
//! `change-policy`, `fail-disk`.
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
use dfs_tools::cli::{admin, health, mount, status};
use dfs_tools::{fail, write_stdout};

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
    /// Serve /metrics and /health for an unmounted pool (read-only) until killed
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
    /// `dfs change-policy --pool /dev/sdb --policy replication:3 --path /db --recursive`
    #[command(name = "change-policy")]
    ChangePolicy {
        /// Any member of the pool, or UUID=<pool-uuid>
        #[arg(long, value_name = "MEMBER")]
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
        /// No progress output
        #[arg(short, long)]
        quiet: bool,
    },
    /// Mark a member failed: nothing new goes to it; its extents are read degraded
    #[command(name = "fail-disk")]
    FailDisk {
        /// Any member of the pool, or UUID=<pool-uuid>
        #[arg(long, value_name = "MEMBER")]
        pool: String,
        /// Index of the member to fail (see list-disks)
        #[arg(long)]
        index: u32,
    },
}

/// Arguments of the read-only listings.
#[derive(Debug, clap::Args)]
struct Listing {
    /// Any member of the pool, or UUID=<pool-uuid>
    #[arg(long, value_name = "MEMBER")]
    pool: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

fn listing(args: &Listing, f: fn(&dynamicfs::engine::Pool, bool) -> Result<String, String>) -> ExitCode {
    output(admin::open(&args.pool, true).and_then(|p| f(&p, args.json)))
}

fn output(r: Result<String, String>) -> ExitCode {
    match r.map(|t| write_stdout(&t)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => fail(PROG, &e),
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
        Command::ChangePolicy { pool, policy, path, recursive, quiet } => {
            output(admin::open(&pool, false).and_then(|p| {
                let r = admin::change_policy(&p, &policy, path.as_deref(), recursive, quiet);
                let closed = p.close().map_err(|e| e.to_string());
                r.and_then(|t| closed.map(|_| t))
            }))
        }
        Command::FailDisk { pool, index } => output(admin::open(&pool, false).and_then(|p| {
            let r = admin::fail_disk(&p, index);
            let closed = p.close().map_err(|e| e.to_string());
            r.and_then(|t| closed.map(|_| t))
        })),
    }
}
