//! `mount.dfs DEV DIR [-sfnv] [-o opts]`: mount a DynamicFS pool (installed
//! as `mount.dfs`, so `mount -t dfs DEV DIR` and fstab lines work). DEV is
//! any member (block device, image file, directory member) or
//! `UUID=<pool-uuid>`. See `dfs_tools::cli::mount` for the options and
//! how the daemon detaches.
//!
//! Exit status: 0 mounted (the mount is live and the daemon has detached),
//! 1 operational error (one `mount.dfs: error: <what>` line), 2 usage.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dfs_tools::cli::mount::{run, MountRequest};

/// Mount a DynamicFS pool.
#[derive(Debug, Parser)]
#[command(name = "mount.dfs", version)]
struct Args {
    /// Any member of the pool (device, image file, directory) or UUID=<pool-uuid>
    dev: String,
    /// Mount point (an existing directory)
    dir: PathBuf,
    /// Mount options: ro, rw, allow_other, policy=P, verify, device=PATH, log=FILE, degraded, commit=SECS
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
    /// Stay in the foreground (log to stderr unless log= is given)
    #[arg(short = 'f')]
    foreground: bool,
    /// Sloppy: ignore unknown options
    #[arg(short = 's')]
    sloppy: bool,
    /// No mtab (accepted for mount(8); there is no mtab to write)
    #[arg(short = 'n')]
    no_mtab: bool,
    /// Say what was mounted
    #[arg(short = 'v')]
    verbose: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let _ = a.no_mtab;
    run(
        "mount.dfs",
        &MountRequest {
            source: a.dev,
            mountpoint: a.dir,
            options: a.options,
            foreground: a.foreground,
            sloppy: a.sloppy,
            verbose: a.verbose,
        },
    )
}
