//! `dfs list-disks | list-extents | show-redundancy | policy-status`
//! (read-only) and `dfs change-policy | fail-disk` (changes) on a pool.
//!
//! Listings open the pool read-only and shared, so they work on a mounted
//! pool too (showing its durable state). Changes open it read-write under
//! the pool lock; on a mounted pool the lock is held by the mount and the
//! command says so (the control socket that forwards changes to the mount
//! is not built yet). `--json` output uses the field names of the engine's
//! `MemberInfo`, `ExtentInfo` and `PolicyChange` records.

use dfs_format::Policy;
use dynamicfs::discover::{open_pool, DiscoverOptions, PoolSource};
use dynamicfs::engine::state::{ChangeState, MemberState};
use dynamicfs::engine::{EngineError, Pool, PoolOptions, ROOT_INO};
use serde::Serialize;
use std::collections::BTreeMap;

use crate::{format_time_ns, iec, Table};

/// Open the pool any member (or `UUID=`) names.
pub fn open(arg: &str, read_only: bool) -> Result<Pool, String> {
    let source = PoolSource::parse(arg).map_err(|e| e.to_string())?;
    let opts = PoolOptions { read_only, ..Default::default() };
    match open_pool(&source, &DiscoverOptions::default(), opts) {
        Ok((pool, _)) => Ok(pool),
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("in use by PID") {
                Err(format!("{msg}; the pool is mounted or opened elsewhere: unmount it first (changes through a mount are not supported yet)"))
            } else {
                Err(msg)
            }
        }
    }
}

fn json<T: Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map(|s| s + "\n").map_err(|e| e.to_string())
}

/// `list-disks`.
pub fn list_disks(pool: &Pool, as_json: bool) -> Result<String, String> {
    let members = pool.list_members();
    if as_json {
        return json(&members);
    }
    let mut t = Table::new(
        &["INDEX", "STATE", "SIZE", "USED", "FREE", "FRAGMENTS", "PATH"],
        &[true, false, true, true, true, true, false],
    );
    for m in &members {
        t.row(vec![
            m.index.to_string(),
            m.state.clone(),
            iec(m.size_bytes),
            iec(m.used_bytes),
            iec(m.free_bytes),
            m.fragments.to_string(),
            m.path.clone(),
        ]);
    }
    Ok(t.render(0))
}

/// `list-extents`.
pub fn list_extents(pool: &Pool, as_json: bool) -> Result<String, String> {
    let extents = pool.list_extents();
    if as_json {
        return json(&extents);
    }
    let mut t = Table::new(
        &["EXTENT", "PATH", "OFFSET", "LENGTH", "POLICY", "MEMBERS"],
        &[false, false, true, true, false, false],
    );
    for e in &extents {
        let members: Vec<String> = e.fragments.iter().map(|f| f.member.to_string()).collect();
        t.row(vec![
            e.id.clone(),
            e.path.clone().unwrap_or_else(|| format!("<inode {}>", e.ino)),
            iec(e.offset),
            iec(e.len as u64),
            e.policy.clone(),
            members.join(","),
        ]);
    }
    Ok(t.render(0))
}

/// Extents and bytes per policy, and how many are degraded.
#[derive(Debug, Serialize)]
pub struct RedundancyLine {
    pub policy: String,
    pub extents: u64,
    pub bytes: u64,
    pub degraded_extents: u64,
    pub tolerated_losses: u32,
}

/// `show-redundancy`.
pub fn show_redundancy(pool: &Pool, as_json: bool) -> Result<String, String> {
    let mut by: BTreeMap<String, RedundancyLine> = BTreeMap::new();
    for e in pool.list_extents() {
        let p: Policy = e.policy.parse().map_err(|x: dfs_format::FormatError| x.to_string())?;
        let line = by.entry(e.policy.clone()).or_insert(RedundancyLine {
            policy: e.policy.clone(),
            extents: 0,
            bytes: 0,
            degraded_extents: 0,
            tolerated_losses: p.tolerated_losses(),
        });
        line.extents += 1;
        line.bytes += e.len as u64;
        if e.degraded_fragments > 0 {
            line.degraded_extents += 1;
        }
    }
    let lines: Vec<RedundancyLine> = by.into_values().collect();
    if as_json {
        return json(&lines);
    }
    let mut t = Table::new(&["POLICY", "EXTENTS", "BYTES", "DEGRADED", "SURVIVES"], &[false, true, true, true, true]);
    for l in &lines {
        t.row(vec![
            l.policy.clone(),
            l.extents.to_string(),
            iec(l.bytes),
            l.degraded_extents.to_string(),
            format!("{} lost", l.tolerated_losses),
        ]);
    }
    Ok(t.render(0))
}

/// One history line for `policy-status`.
#[derive(Debug, Serialize)]
pub struct ChangeLine {
    pub id: u64,
    pub scope: String,
    pub recursive: bool,
    pub policy: String,
    pub state: String,
    pub started: String,
    pub finished: Option<String>,
    pub extents_done: u64,
    pub extents_total: u64,
    pub message: String,
}

/// `policy-status`.
pub fn policy_status(pool: &Pool, as_json: bool) -> Result<String, String> {
    let lines: Vec<ChangeLine> = pool
        .policy_history()
        .into_iter()
        .map(|c| ChangeLine {
            id: c.id,
            scope: c.scope,
            recursive: c.recursive,
            policy: Policy::decode(c.policy).map(|p| p.to_string()).unwrap_or_default(),
            state: match c.state {
                ChangeState::Running => "running",
                ChangeState::Done => "done",
                ChangeState::Failed => "failed",
            }
            .into(),
            started: format_time_ns(c.started_ns.max(0) as u64),
            finished: c.finished_ns.map(|t| format_time_ns(t.max(0) as u64)),
            extents_done: c.extents_done,
            extents_total: c.extents_total,
            message: c.message,
        })
        .collect();
    if as_json {
        return json(&lines);
    }
    if lines.is_empty() {
        return Ok("No policy changes recorded.\n".into());
    }
    let mut t = Table::new(
        &["ID", "STATE", "POLICY", "SCOPE", "PROGRESS", "STARTED", "FINISHED"],
        &[true, false, false, false, true, false, false],
    );
    for l in &lines {
        t.row(vec![
            l.id.to_string(),
            l.state.clone(),
            l.policy.clone(),
            format!("{}{}", l.scope, if l.recursive { " (recursive)" } else { "" }),
            format!("{}/{}", l.extents_done, l.extents_total),
            l.started.clone(),
            l.finished.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    Ok(t.render(0))
}

/// Resolve a path inside the pool (absolute, from its root) to an inode.
pub fn resolve(pool: &Pool, path: &str) -> Result<u64, String> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = pool.lookup(ino, part.as_bytes()).map_err(|e| format!("{path}: {e}"))?.0;
    }
    Ok(ino)
}

/// `change-policy`: finishes interrupted changes first, then runs this one.
pub fn change_policy(
    pool: &Pool,
    policy: &str,
    path: Option<&str>,
    recursive: bool,
    quiet: bool,
) -> Result<String, String> {
    let policy: Policy = policy.parse().map_err(|e: dfs_format::FormatError| e.to_string())?;
    let progress = |done: u64, total: u64| {
        if !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprint!("\r  re-encoding extents: {done}/{total}");
        }
    };
    for c in pool.resume_policy_changes(&progress).map_err(|e| e.to_string())? {
        eprintln!("resumed change {} ({}): {} extents", c.id, c.scope, c.extents_done);
    }
    let (ino, scope, recursive) = match path {
        Some(p) => (resolve(pool, p)?, p.to_string(), recursive),
        None => (ROOT_INO, "/".to_string(), true),
    };
    let c = pool.change_policy(ino, &scope, recursive, policy, &progress).map_err(|e| match e {
        EngineError::PolicyUnsatisfiable { .. } => e.to_string(),
        other => format!("change failed (progress is kept; run the command again to resume): {other}"),
    })?;
    if !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    Ok(format!("{}: {} re-encoded {} extents under {policy}\n", c.id, c.scope, c.extents_done))
}

/// `fail-disk`.
pub fn fail_disk(pool: &Pool, index: u32) -> Result<String, String> {
    pool.set_member_state(index, MemberState::Failed).map_err(|e| e.to_string())?;
    Ok(format!("member {index} marked failed; its extents are served degraded until rebuilt\n"))
}
