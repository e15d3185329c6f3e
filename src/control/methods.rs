//! The administration methods of the control socket.
//!
//! [`register_admin`] adds what every pool answers (the `dfs` CLI uses the
//! same registry in-process on an unmounted pool, so both paths run the
//! same code); [`register_worker`] adds what needs the mount's background
//! rebuild/drain worker. Results are the engine's own records serialized
//! with serde (field names documented in `docs/CLI.md`).
//!
//! | method | params | result |
//! |---|---|---|
//! | `ping` | – | `{"pool": uuid, "pid": n, "mountpoint"?: path}` (a mount adds its mount point) |
//! | `list-disks` | – | `[MemberInfo]` |
//! | `list-extents` | – | `[ExtentInfo]` |
//! | `policy-history` | – | `[PolicyChange]` |
//! | `change-policy` | `policy`, `path`?, `recursive`?, `max_rate`? (bytes/s) | `PolicyChange` |
//! | `add-disk` | `disk` (path), `size`? (directory), `force`? | `{"index", "path"}` |
//! | `fail-disk` | `index` | `{}` |
//! | `remove-disk` | `index`, `wait`? | `DrainProgress` |
//! | `rebuild` | `limit`? | `RebuildIo` (degraded extents rebuilt now) |
//! | `rebuild-status` | – | `WorkerStatus` (mounts only) |
//! | `orphans.detect` | – | `OrphanReport` (judged by the open pool: `engine::orphans`) |
//! | `orphans.stats` | – | `OrphanStats` |
//! | `orphans.cleanup` | `min_age_secs`?, `dry_run`? | `CleanupReport` |
//! | `scrub.schedule` | `frequency`?, `intensity`? | `ScheduleView` (a mount's scrub daemon follows a change at once) |
//!
//! This module never touches devices: every method is one engine call.

use super::protocol::{ErrorKind, WireError};
use super::server::Registry;
use crate::engine::admin::paced;
use crate::engine::orphans;
use crate::engine::rebuild::{DrainProgress, RebuildIo, Worker};
use crate::engine::scrub_daemon;
use crate::engine::state::{MemberState, PolicyChange};
use crate::engine::{EngineError, Pool, ROOT_INO};
use dfs_format::Policy;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

fn to_value<T: Serialize>(v: &T) -> Result<Value, WireError> {
    serde_json::to_value(v).map_err(|e| WireError::new(ErrorKind::Failed, format!("encode answer: {e}")))
}

fn failed(e: EngineError) -> WireError {
    WireError::new(ErrorKind::Failed, e.to_string())
}

fn param_u32(p: &Value, name: &str) -> Result<u32, WireError> {
    p.get(name)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| WireError::new(ErrorKind::Params, format!("parameter {name:?} must be a member index")))
}

fn param_bool(p: &Value, name: &str) -> Result<bool, WireError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(WireError::new(ErrorKind::Params, format!("parameter {name:?} must be true or false"))),
    }
}

fn param_str<'a>(p: &'a Value, name: &str) -> Result<Option<&'a str>, WireError> {
    match p.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(WireError::new(ErrorKind::Params, format!("parameter {name:?} must be a string"))),
    }
}

/// A member index that names a member of the pool (not one that left).
fn member_index(pool: &Pool, p: &Value) -> Result<u32, WireError> {
    let index = param_u32(p, "index")?;
    let members = pool.list_members();
    match members.iter().find(|m| m.index == index) {
        Some(m) if m.state == "removed" => {
            Err(WireError::new(ErrorKind::Failed, format!("member {index} has already left the pool")))
        }
        Some(_) => Ok(index),
        None => Err(WireError::new(
            ErrorKind::Failed,
            format!("no member {index} in pool {} (it has members 0..{})", pool.uuid(), members.len()),
        )),
    }
}

/// Resolve an absolute path inside the pool to an inode.
pub fn resolve(pool: &Pool, path: &str) -> Result<u64, WireError> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino =
            pool.lookup(ino, part.as_bytes()).map_err(|e| WireError::new(ErrorKind::Failed, format!("{path}: {e}")))?.0;
    }
    Ok(ino)
}

/// The `change-policy` method: finish the changes a crash or an unmount
/// interrupted, then run this one (`params` as the method takes them);
/// `progress(done, total)` follows the extents. The CLI calls it directly
/// on an unmounted pool, to show progress.
pub fn change_policy(pool: &Pool, p: &Value, progress: &dyn Fn(u64, u64)) -> Result<PolicyChange, WireError> {
    let text =
        param_str(p, "policy")?.ok_or_else(|| WireError::new(ErrorKind::Params, "parameter \"policy\" is required"))?;
    let policy: Policy = text
        .parse()
        .map_err(|e: dfs_format::FormatError| WireError::new(ErrorKind::Params, format!("policy {text:?}: {e}")))?;
    let recursive = param_bool(p, "recursive")?;
    let (ino, scope, recursive) = match param_str(p, "path")? {
        Some(path) => (resolve(pool, path)?, path.to_string(), recursive),
        None => (ROOT_INO, "/".to_string(), true),
    };
    let rate = match p.get("max_rate") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|r| *r > 0).ok_or_else(|| {
            WireError::new(ErrorKind::Params, "parameter \"max_rate\" must be bytes per second (> 0)")
        })?),
    };
    pool.resume_policy_changes(progress).map_err(failed)?;
    match rate {
        Some(r) => pool.change_policy(ino, &scope, recursive, policy, &paced(r, progress)),
        None => pool.change_policy(ino, &scope, recursive, policy, progress),
    }
    .map_err(failed)
}

/// Register the methods every pool answers.
pub fn register_admin(r: &mut Registry) {
    r.register("ping", |pool, _| Ok(serde_json::json!({"pool": pool.uuid().to_string(), "pid": std::process::id()})));
    r.register("list-disks", |pool, _| to_value(&pool.list_members()));
    r.register("list-extents", |pool, _| to_value(&pool.list_extents()));
    r.register("policy-history", |pool, _| to_value(&pool.policy_history()));
    r.register("change-policy", |pool, p| to_value(&change_policy(pool, &p, &|_, _| {})?));
    r.register("fail-disk", |pool, p| {
        let index = member_index(pool, &p)?;
        pool.set_member_state(index, MemberState::Failed).map_err(failed)?;
        Ok(serde_json::json!({}))
    });
    r.register("remove-disk", |pool, p| {
        let index = member_index(pool, &p)?;
        pool.start_removal(index).map_err(failed)?;
        let mut progress =
            DrainProgress { member: index, fragments_left: pool.extents_on(index).len() as u64, removed: false };
        if param_bool(&p, "wait")? {
            while !progress.removed {
                let (_, pr) = pool.drain_step(index, 256).map_err(failed)?;
                if pr.fragments_left != 0 && pr.fragments_left == progress.fragments_left {
                    return Err(WireError::new(
                        ErrorKind::Failed,
                        format!("member {index}: {} fragments cannot be moved (see the log)", pr.fragments_left),
                    ));
                }
                progress = pr;
            }
        }
        to_value(&progress)
    });
    r.register("add-disk", |pool, p| {
        let path = param_str(&p, "disk")?
            .ok_or_else(|| WireError::new(ErrorKind::Params, "parameter \"disk\" (a path) is required"))?;
        let size = p.get("size").and_then(Value::as_u64);
        let force = param_bool(&p, "force")?;
        let path = std::path::PathBuf::from(path);
        let spec = match size {
            Some(size) => crate::mkfs::MemberSpec::Dir { path: path.clone(), size },
            None if path.is_dir() => {
                let size = crate::mkfs::default_dir_size(&path)
                    .map_err(|e| WireError::new(ErrorKind::Failed, format!("{}: {e}", path.display())))?;
                crate::mkfs::MemberSpec::Dir { path: path.clone(), size }
            }
            None => crate::mkfs::MemberSpec::Device(path.clone()),
        };
        let dev = crate::mkfs::prepare_member(&spec, force)
            .map_err(|e| WireError::new(ErrorKind::Failed, e.to_string().lines().collect::<Vec<_>>().join("; ")))?;
        let index =
            pool.add_member(dev).map_err(|e| WireError::new(ErrorKind::Failed, format!("{}: {e}", path.display())))?;
        Ok(serde_json::json!({"index": index, "path": path.display().to_string()}))
    });
    r.register("rebuild", |pool, p| {
        let limit = p.get("limit").and_then(Value::as_u64).unwrap_or(u64::MAX) as usize;
        let io: RebuildIo = pool.rebuild_all(limit).map_err(failed)?;
        to_value(&io)
    });
    r.register("scrub.schedule", |pool, p| {
        scrub_daemon::schedule_control(pool, &p).map(|(_, view)| view).map_err(|e| match e {
            scrub_daemon::ScrubDaemonError::BadParams(m) => WireError::new(ErrorKind::Params, m),
            e => WireError::new(ErrorKind::Failed, e.to_string()),
        })
    });
    r.register("orphans.detect", |pool, _| to_value(&orphans::detect_live(pool)));
    r.register("orphans.stats", |pool, _| to_value(&orphans::stats(&orphans::detect_live(pool))));
    r.register("orphans.cleanup", |pool, p| {
        let min_age = std::time::Duration::from_secs(p.get("min_age_secs").and_then(Value::as_u64).unwrap_or(0));
        let opts = orphans::CleanupOptions { min_age, dry_run: param_bool(&p, "dry_run")?, lock_dir: None };
        to_value(&orphans::cleanup_live(pool, &opts).map_err(failed)?)
    });
}

/// A mount's `ping` also names its mount point, so the CLI finds a mount
/// by its mount point whatever member it was mounted through.
pub fn register_mountpoint(r: &mut Registry, mountpoint: &std::path::Path) {
    let mountpoint = mountpoint.display().to_string();
    r.register("ping", move |pool, _| {
        Ok(serde_json::json!({"pool": pool.uuid().to_string(), "pid": std::process::id(), "mountpoint": mountpoint}))
    });
}

/// Register the methods of a mount's background worker.
pub fn register_worker(r: &mut Registry, worker: Arc<Worker>) {
    let w = worker.clone();
    r.register("rebuild-status", move |_, _| to_value(&w.status()));
    // After a change that gives the worker work, start its pass at once
    // (after `rebuild`, so its status shows what is left).
    for name in ["fail-disk", "remove-disk", "rebuild"] {
        let Some(inner) = r.take(name) else { continue };
        let w = worker.clone();
        r.register(name, move |pool, p| {
            let out = inner(pool, p);
            w.kick();
            out
        });
    }
}
