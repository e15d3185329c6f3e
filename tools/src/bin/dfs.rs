//! `dfs`: the DynamicFS administration command: `mount` (the same code path
//! as `mount.dfs`), `status`, `list-disks`, `list-extents`,
//! `show-redundancy`, `policy-status`, `change-policy`, `fail-disk`,
//! `scrub`, `scrub-daemon`, `scrub-schedule`, `detect-orphans`,
//! `orphan-stats`, `cleanup-orphans`.
//!
//! Exit status: 0 ok, 1 operational error (one `dfs: error: <what>` line
//! on stderr), 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dfs_tools::cli::{admin, mount, scrub, status};
use dfs_tools::{fail, write_stdout};

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
        Command::Scrub { pool, repair, json } => integrity(scrub::scrub(&pool, repair, json)),
        Command::ScrubDaemon { action, pool, intensity } => {
            integrity(scrub::scrub_daemon(&action, &pool, intensity.as_deref()))
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
