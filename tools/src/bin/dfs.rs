//! `dfs`: the DynamicFS administration command: `mount` (the same code path
//! as `mount.dfs`), `status`, `list-disks`, `list-extents`,
//! `show-redundancy`, `policy-status`, `change-policy`, `fail-disk`,
//! `list-hot`, `list-warm`, `list-cold`, `extent-stats`.
//!
//! Exit status: 0 ok, 1 operational error (one `dfs: error: <what>` line
//! on stderr), 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dfs_tools::cli::{admin, mount, status, temperature};
use dfs_tools::{fail, write_stdout};
use dynamicfs::temperature::Temp;

const PROG: &str = "dfs";

/// DynamicFS administration.
#[derive(Debug, Parser)]
#[command(name = "dfs", version)]
struct Cli {
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
        /// Any member of the pool, or UUID=<pool-uuid>
        #[arg(long, value_name = "MEMBER")]
        pool: String,
        /// The extent's UUID (see list-extents)
        #[arg(long, value_name = "UUID")]
        extent: uuid::Uuid,
        /// Print JSON
        #[arg(long)]
        json: bool,
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

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Mount { pool, mountpoint, options, foreground, verbose } => mount::run(
            PROG,
            &mount::MountRequest { source: pool, mountpoint, options, foreground, sloppy: false, verbose },
        ),
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
        Command::ListHot(a) => listing(&a, |p, j| temperature::list(p, Temp::Hot, j)),
        Command::ListWarm(a) => listing(&a, |p, j| temperature::list(p, Temp::Warm, j)),
        Command::ListCold(a) => listing(&a, |p, j| temperature::list(p, Temp::Cold, j)),
        Command::ExtentStats { pool, extent, json } => {
            output(admin::open(&pool, true).and_then(|p| temperature::extent_stats(&p, extent, json)))
        }
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
