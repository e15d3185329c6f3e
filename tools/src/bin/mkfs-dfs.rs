//! `mkfs.dfs`: make a DynamicFS pool from block devices, image files and
//! directories (installed as `mkfs.dfs`, so `mkfs -t dfs` finds it).
//!
//! Exit status: 0 made, 1 operational error (a refused member, an IO error:
//! one `mkfs.dfs: error: <device>: <what>` line each on stderr), 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, CommandFactory, FromArgMatches, Parser};
use dfs_format::Policy;
use dfs_tools::{fail, iec, parse_size, write_stdout, Table};
use dynamicfs::mkfs::{default_dir_size, format_pool, MemberSpec, MkfsOptions, PoolSummary};

const PROG: &str = "mkfs.dfs";

/// A `--dir PATH[:SIZE]` argument.
#[derive(Debug, Clone)]
struct DirArg {
    path: PathBuf,
    size: Option<u64>,
}

/// `PATH[:SIZE]`: the part after the last `:` is a size when it parses as
/// one; otherwise the whole argument is the path.
fn parse_dir(s: &str) -> Result<DirArg, String> {
    if s.is_empty() {
        return Err("empty directory path".into());
    }
    if let Some((path, size)) = s.rsplit_once(':') {
        if !path.is_empty() && size.starts_with(|c: char| c.is_ascii_digit()) {
            return Ok(DirArg { path: PathBuf::from(path), size: Some(parse_size(size)?) });
        }
    }
    Ok(DirArg { path: PathBuf::from(s), size: None })
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    s.parse::<Policy>().map_err(|e| e.to_string())
}

/// Make a DynamicFS pool: every member is checked first (mounted, in use,
/// too small, or holding a filesystem, partition table or pool) and nothing
/// is written unless all pass.
#[derive(Debug, Parser)]
#[command(name = "mkfs.dfs", version)]
#[command(group(ArgGroup::new("members").required(true).multiple(true).args(["device", "dir"])))]
struct Args {
    /// Block device or image file to make a member (repeatable; members are
    /// numbered in command-line order)
    #[arg(short = 'd', long = "device", value_name = "DEV")]
    device: Vec<PathBuf>,
    /// Directory member, created if missing (repeatable); SIZE like 512M or
    /// 4G, default: the free space of its filesystem
    #[arg(long = "dir", value_name = "PATH[:SIZE]", value_parser = parse_dir)]
    dir: Vec<DirArg>,
    /// Pool label (at most 64 bytes)
    #[arg(short = 'L', long, default_value = "")]
    label: String,
    /// Default redundancy policy: replication:N or erasure:K+M
    /// [default: replication:min(3, members)]
    #[arg(short = 'p', long, value_parser = parse_policy)]
    policy: Option<Policy>,
    /// Overwrite existing filesystems, partition tables and pools
    /// (never a mounted or busy device)
    #[arg(short = 'f', long)]
    force: bool,
    /// Print the new pool as JSON
    #[arg(long)]
    json: bool,
    /// Print nothing on success
    #[arg(short = 'q', long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    // Members in command-line order, whichever option named them.
    let mut specs: Vec<(usize, Result<MemberSpec, String>)> = Vec::new();
    let dev_idx = matches.indices_of("device").map(|i| i.collect::<Vec<_>>()).unwrap_or_default();
    for (i, p) in dev_idx.into_iter().zip(&args.device) {
        specs.push((i, Ok(MemberSpec::Device(p.clone()))));
    }
    let dir_idx = matches.indices_of("dir").map(|i| i.collect::<Vec<_>>()).unwrap_or_default();
    for (i, d) in dir_idx.into_iter().zip(&args.dir) {
        let spec = match d.size {
            Some(size) => Ok(size),
            None => default_dir_size(&d.path)
                .map_err(|e| format!("{}: cannot find the free space of its filesystem: {e}", d.path.display())),
        }
        .map(|size| MemberSpec::Dir { path: d.path.clone(), size });
        specs.push((i, spec));
    }
    specs.sort_by_key(|(i, _)| *i);
    let mut members = Vec::new();
    for (_, s) in specs {
        match s {
            Ok(m) => members.push(m),
            Err(e) => return fail(PROG, &e),
        }
    }

    let opts = MkfsOptions { label: args.label.clone(), default_policy: args.policy, force: args.force };
    let summary = match format_pool(&members, &opts) {
        Ok(s) => s,
        Err(e) => return fail(PROG, &e),
    };
    let text = if args.json {
        match serde_json::to_string_pretty(&summary) {
            Ok(j) => j + "\n",
            Err(e) => return fail(PROG, &e),
        }
    } else if !args.quiet {
        human(&summary)
    } else {
        String::new()
    };
    if let Err(e) = write_stdout(&text) {
        return fail(PROG, &format!("cannot write the output: {e}"));
    }
    if !args.quiet && !args.json {
        for m in &summary.members {
            for what in &m.overwritten {
                eprintln!("{PROG}: warning: {}: {what}: overwritten (--force)", m.path.display());
            }
        }
    }
    ExitCode::SUCCESS
}

fn human(s: &PoolSummary) -> String {
    let total: u64 = s.members.iter().map(|m| m.size).sum();
    let data: u64 = s.members.iter().map(|m| m.data_bytes).sum();
    let mut out = format!("{PROG} {}\n", env!("CARGO_PKG_VERSION"));
    let label = if s.label.is_empty() { "(none)".to_string() } else { s.label.clone() };
    for (k, v) in [
        ("Label:", label),
        ("Pool UUID:", s.pool_uuid.to_string()),
        ("Default policy:", s.default_policy.to_string()),
        ("Members:", s.members.len().to_string()),
        ("Total size:", iec(total)),
        ("Data space:", format!("{} (raw, before redundancy)", iec(data))),
    ] {
        out.push_str(&format!("{k:<16}{v}\n"));
    }
    out.push('\n');
    let mut t = Table::new(
        &["INDEX", "KIND", "SIZE", "DATA", "BLOCK", "MEMBER UUID", "PATH"],
        &[true, false, true, true, true, false, false],
    );
    for m in &s.members {
        let kind = serde_json::to_value(m.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        t.row(vec![
            m.index.to_string(),
            kind,
            iec(m.size),
            iec(m.data_bytes),
            m.block_size.to_string(),
            m.member_uuid.to_string(),
            m.path.display().to_string(),
        ]);
    }
    out.push_str(&t.render(2));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_specs() {
        let d = parse_dir("/srv/m0:4G").unwrap();
        assert_eq!((d.path, d.size), (PathBuf::from("/srv/m0"), Some(4 << 30)));
        let d = parse_dir("/srv/m0").unwrap();
        assert_eq!((d.path, d.size), (PathBuf::from("/srv/m0"), None));
        let d = parse_dir("/srv/a:b").unwrap();
        assert_eq!((d.path, d.size), (PathBuf::from("/srv/a:b"), None));
        assert!(parse_dir("/srv/m0:4X").is_err());
        assert!(parse_dir("").is_err());
    }

    #[test]
    fn cli_definition_is_valid() {
        Args::command().debug_assert();
    }
}
