//! `dfs`: the DynamicFS administration command. Subcommands so far:
//! `mount` (the same code path as `mount.dfs`) and `status`.
//!
//! Exit status: 0 ok, 1 operational error (one `dfs: error: <what>` line
//! on stderr), 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dfs_tools::cli::{mount, status};
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
        /// Mount options: ro, rw, allow_other, policy=P, verify, device=PATH, log=FILE, degraded
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
    }
}
