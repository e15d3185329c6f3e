//! `fsck.dfs`: check, and repair, a DynamicFS pool that is not mounted
//! (installed as `fsck.dfs`, so `fsck -t dfs DEV` and fstab's pass number
//! find it). The checks and repairs are `dynamicfs::fsck`'s; this is the
//! e2fsck-shaped front: options, finding the members, output, exit status.
//!
//! ```text
//! fsck.dfs [-n|-y|-p|-a] [-f] [-v] [--json] [--data] DEV [DEV...]
//! ```
//!
//! - `-n` (also the default when none of `-n`, `-y`, `-p`, `-a` is given:
//!   there is no interactive mode) checks only: every member is opened
//!   read-only and not exclusively, nothing is written.
//! - `-y` repairs everything that can be repaired; `-p` / `-a` (preen)
//!   repairs what is safe without asking, which is everything fsck.dfs
//!   repairs, and skips the walk of the data regions (orphan detection, the
//!   slow part) unless `-f`. A repair opens the members read-write and
//!   exclusively and holds the pool lock: a mounted pool, or one open in
//!   another process, is refused with "pool ... in use by PID ...".
//! - `-f` walks the data regions even when preening.
//! - `--data` reads every fragment's payload and checks its BLAKE3 (without
//!   it only headers are read).
//! - `-v` (or `-V`, which fsck(8) may pass) also prints the notes.
//! - `-C FD` (fsck(8)'s progress option) is accepted and ignored.
//!
//! DEV is any member: the others are found as `mount.dfs` finds them
//! (`dynamicfs::discover`: the other DEVs given, every block device, the
//! member table's path hints). A DEV given that is not a member of the pool
//! (for example a member wiped clean) is checked too and reported.
//!
//! Output: one line per finding (`FIXED`, `ERROR`, `note`), then a summary;
//! `--json` prints the whole report instead. Exit status (e2fsck's): 0
//! clean, 1 errors corrected, 4 errors left uncorrected (1 + 4 when both),
//! 8 operational error (no such device, not a member, pool in use: one
//! `fsck.dfs: error: ...` line), 16 usage error.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use dfs_tools::{iec, write_stdout};
use dynamicfs::device::{open_member_device, Device, DeviceError, OpenMode};
use dynamicfs::discover::{find_members, open_members, DiscoverError, DiscoverOptions, PoolSource};
use dynamicfs::engine::lock::DEFAULT_LOCK_DIR;
use dynamicfs::fsck::{
    check_pool, pool_lock_holder, FsckOptions, FsckReport, Reported, Severity, Structure, EXIT_OPERATIONAL, EXIT_USAGE,
};

const PROG: &str = "fsck.dfs";

/// Lines printed per kind of finding and member before the rest is summed
/// up (all of them with -v).
const LINES_PER_KIND: usize = 10;

/// Check and repair a DynamicFS pool (e2fsck conventions).
#[derive(Debug, Parser)]
#[command(name = "fsck.dfs", disable_version_flag = true)]
#[command(after_help = "Exit status: 0 clean, 1 errors corrected, 4 errors left uncorrected, \
                        8 operational error, 16 usage error.")]
struct Args {
    /// Check only: open everything read-only and change nothing (the default)
    #[arg(short = 'n', conflicts_with_all = ["yes", "preen", "auto"])]
    no: bool,
    /// Repair everything that can be repaired, without asking
    #[arg(short = 'y', conflicts_with_all = ["preen", "auto"])]
    yes: bool,
    /// Preen: repair what is safe (all of it), skip the data-region walk unless -f
    #[arg(short = 'p')]
    preen: bool,
    /// Same as -p
    #[arg(short = 'a')]
    auto: bool,
    /// Force: walk the data regions even when preening
    #[arg(short = 'f')]
    force: bool,
    /// Verbose: also print the notes (-V is the same)
    #[arg(short = 'v', short_alias = 'V')]
    verbose: bool,
    /// Progress file descriptor (fsck -C): accepted and ignored
    #[arg(short = 'C', value_name = "FD")]
    progress: Option<i64>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Read every fragment's payload and check its BLAKE3
    #[arg(long)]
    data: bool,
    /// Print the version
    #[arg(long, action = ArgAction::Version)]
    version: Option<bool>,
    /// Members of the pool: block devices, image files or directories (one is enough)
    #[arg(value_name = "DEV", required = true)]
    devices: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cmd = Args::command().version(env!("CARGO_PKG_VERSION"));
    let args = match cmd.try_get_matches().and_then(|m| Args::from_arg_matches(&m)) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => EXIT_USAGE,
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let opts = FsckOptions {
        repair: args.yes,
        preen: args.preen || args.auto,
        force: args.force,
        verify_data: args.data,
        lock_dir: None,
        progress: None,
    };
    match run(&args, &opts) {
        Ok(report) => {
            let text = if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => s + "\n",
                    Err(e) => return operational(&format!("cannot encode the report: {e}")),
                }
            } else {
                render(&report, args.verbose)
            };
            if let Err(e) = write_stdout(&text) {
                return operational(&format!("cannot write the output: {e}"));
            }
            ExitCode::from(report.exit_code)
        }
        Err(msg) => operational(&msg),
    }
}

/// `fsck.dfs: error: LINE` for each line, exit status 8.
fn operational(msg: &str) -> ExitCode {
    for line in msg.lines() {
        eprintln!("{PROG}: error: {line}");
    }
    ExitCode::from(EXIT_OPERATIONAL)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn open_error(e: DeviceError) -> String {
    match e {
        DeviceError::Busy { .. } => format!("{e} (is the pool mounted?)"),
        other => other.to_string(),
    }
}

/// Find the members, open them, check.
fn run(args: &Args, opts: &FsckOptions) -> Result<FsckReport, String> {
    for d in &args.devices {
        if let Err(e) = std::fs::metadata(d) {
            return Err(format!("{}: {e}", d.display()));
        }
    }
    // The first DEV that is a member names the pool.
    let mut refusals = Vec::new();
    let mut found = None;
    for d in &args.devices {
        let extra: Vec<PathBuf> = args.devices.iter().filter(|x| *x != d).cloned().collect();
        match find_members(&PoolSource::Member(d.clone()), &DiscoverOptions { extra, ..Default::default() }) {
            Ok(f) => {
                found = Some(f);
                break;
            }
            Err(DiscoverError::NotAMember { path, reason }) => {
                // The reason usually names the device already.
                let p = path.display().to_string();
                let reason = reason.strip_prefix(&format!("{p}: ")).unwrap_or(&reason).to_string();
                refusals.push(format!("{p}: {reason}"));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    let Some(found) = found else { return Err(refusals.join("\n")) };
    let repairing = opts.repairing();
    if repairing {
        if let Some(pid) = pool_lock_holder(Path::new(DEFAULT_LOCK_DIR), found.pool_uuid) {
            return Err(format!(
                "pool {} is in use by PID {pid}: unmount it first (or check it read-only with -n)",
                found.pool_uuid
            ));
        }
    }
    let mut devs: Vec<Arc<dyn Device>> = open_members(&found, !repairing).map_err(|e| match e {
        DiscoverError::Open { source, .. } => open_error(source),
        other => other.to_string(),
    })?;
    // DEVs given that are not (or no longer) members are checked too.
    let mode = OpenMode { read_only: !repairing, exclusive: repairing };
    let known: Vec<&Path> = found.members.values().map(|m| m.path.as_path()).collect();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    for d in &args.devices {
        if known.iter().any(|k| same_file(k, d)) || !seen.insert(std::fs::canonicalize(d).unwrap_or(d.clone())) {
            continue;
        }
        devs.push(open_member_device(d, mode).map_err(open_error)?);
    }
    check_pool(&devs, opts).map_err(|e| e.to_string())
}

fn tag(s: Severity) -> &'static str {
    match s {
        Severity::Corrected => "FIXED",
        Severity::Left => "ERROR",
        Severity::Info => "note",
    }
}

/// The human report: one line per finding (notes only when verbose; at most
/// [`LINES_PER_KIND`] per kind and member unless verbose), then a summary.
fn render(r: &FsckReport, verbose: bool) -> String {
    let mut out = String::new();
    let devices: BTreeMap<u32, &str> = r.members.iter().map(|m| (m.index, m.device.as_str())).collect();
    let label = if r.label.is_empty() { String::new() } else { format!(" \"{}\"", r.label) };
    let _ = writeln!(
        out,
        "{PROG}: pool {}{label}: {} of {} members, root generation {} ({})",
        r.pool_uuid,
        r.stats.members_present,
        r.stats.members.max(r.stats.members_present),
        r.stats.root_generation,
        r.mode
    );
    let mut shown: BTreeMap<(&'static str, &'static str, Option<u32>), usize> = BTreeMap::new();
    for f in r.findings.iter().filter(|f| verbose || f.severity != Severity::Info) {
        let n = shown.entry((tag(f.severity), f.structure.name(), f.member)).or_default();
        *n += 1;
        if *n <= LINES_PER_KIND || verbose {
            out.push_str(&line(f, &devices));
        }
    }
    for ((t, s, m), n) in shown {
        if n > LINES_PER_KIND && !verbose {
            let whose = m.map(|m| format!("member {m} ")).unwrap_or_default();
            let _ = writeln!(out, "{t:<5}  ... and {} more {whose}{s} findings (-v lists them)", n - LINES_PER_KIND);
        }
    }
    let st = &r.stats;
    let mut what = format!(
        "{} inodes, {} extents, {} of {} fragments good",
        st.inodes, st.extents, st.fragments_good, st.fragments
    );
    if st.bytes_verified > 0 {
        let _ = write!(what, ", {} verified", iec(st.bytes_verified));
    }
    if st.data_walked {
        let _ = write!(what, ", {} orphans", st.orphans);
    }
    let verdict = match (r.corrected, r.left) {
        (0, 0) => "clean".to_string(),
        (c, 0) => format!("{c} errors corrected"),
        (0, l) => format!("{l} ERRORS LEFT UNCORRECTED"),
        (c, l) => format!("{c} errors corrected, {l} ERRORS LEFT UNCORRECTED"),
    };
    let notes = if r.info > 0 && !verbose { format!(" ({} notes: -v shows them)", r.info) } else { String::new() };
    let _ = writeln!(out, "{PROG}: {what}: {verdict}{notes}");
    let rp = &r.repairs;
    if rp.engine_opened || rp.superblocks_rewritten > 0 || rp.root_slots_cleared > 0 {
        let _ = writeln!(out, "\n***** POOL WAS MODIFIED *****");
    }
    out
}

fn line(f: &Reported, devices: &BTreeMap<u32, &str>) -> String {
    let place = match f.member {
        Some(m) => match devices.get(&m) {
            Some(d) => format!("member {m} ({d})"),
            None => format!("member {m} (missing)"),
        },
        None => "pool".to_string(),
    };
    let what = if f.structure == Structure::Pool { String::new() } else { format!("{}: ", f.structure.name()) };
    let action = f.action.as_deref().map(|a| format!(" -- {a}")).unwrap_or_default();
    format!("{:<5}  {place}: {what}{}{action}\n", tag(f.severity), f.message)
}
