//! # Administration: members, extents, policy changes
//!
//! What the `dfs` CLI and the control socket need beyond the namespace:
//! listing members and extents (with the paths of their files), marking a
//! member failed or draining, and changing the redundancy policy of a file,
//! a tree or the whole pool online.
//!
//! A policy change re-encodes one extent at a time: read (verified, degraded
//! reads included) → encode under the new policy → write the new fragments →
//! queue `SetExtent` replacing the old extent, which frees the old fragments
//! only once that commit is durable. The file stays readable throughout. The
//! change is recorded in the pool's history (`State::history`) as Running
//! before the first extent and Done at the end, with progress in between;
//! after a crash or unmount, `resume_policy_changes` finishes what is still
//! Running (extents already converted are skipped); so does a change that a
//! device error stopped (a member failing mid-change: the record stays
//! Running with the error in its message). An extent rewritten by a
//! concurrent writer in the meantime is left alone (the writer's new extent
//! already has the file's policy).
//!
//! Changes of one pool run one at a time (a per-pool lock in this process):
//! a new change waits for the resume of an interrupted one, so two changes
//! never re-encode the same extent towards different policies. A resume
//! notes the interruption in the record's message ("interrupted at D/T
//! extents; resumed"), keeps the total it had, and can be stopped between
//! two extents ([`Pool::resume_policy_changes_until`], used by a mount's
//! background worker, which resumes interrupted changes on its own at
//! mount); a stopped change stays Running with its progress recorded.
//! [`paced`] caps a change's rate for operators who want it gentle.
//!
//! This module never touches devices directly: it goes through the data path.

use super::error::{EngineError, Result};
use super::placement;
use super::pool::{now_ns, Pool};
use super::state::{Body, ChangeState, FileKind, Ino, MemberRec, MemberState, Op, PolicyChange, ROOT_INO};
use dfs_format::Policy;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The lock that makes the policy changes of pool `uuid` run one at a time.
fn change_lock(uuid: uuid::Uuid) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<uuid::Uuid, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    locks.entry(uuid).or_default().clone()
}

/// A progress callback for a policy change that sleeps as needed so the
/// change re-encodes at most `bytes_per_sec` (each extent counted as a
/// full 1 MiB extent, so the real rate is at most that), then calls
/// `inner`.
pub fn paced(bytes_per_sec: u64, inner: &dyn Fn(u64, u64)) -> impl Fn(u64, u64) + '_ {
    let start = Instant::now();
    let calls = std::cell::Cell::new(0u64);
    move |done, total| {
        calls.set(calls.get() + 1);
        let due =
            Duration::from_secs_f64((calls.get() * super::state::EXTENT_SIZE) as f64 / bytes_per_sec.max(1) as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        inner(done, total)
    }
}

/// One member as `list-disks` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    pub index: u32,
    pub path: String,
    pub state: String,
    pub present: bool,
    pub size_bytes: u64,
    pub data_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub fragments: u64,
    /// Fragment IO errors and verification failures seen on this member
    /// since the pool was opened (`Counters::member_errors`; in memory
    /// only). Absent from the answer of an older mount: 0.
    #[serde(default)]
    pub errors: u64,
}

/// One fragment of an extent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FragmentInfo {
    pub index: u32,
    pub member: u32,
    pub block: u64,
    pub blocks: u32,
}

/// One extent as `list-extents` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtentInfo {
    pub id: String,
    pub ino: Ino,
    pub path: Option<String>,
    pub offset: u64,
    pub len: u32,
    pub policy: String,
    /// Fragments on missing or failed members.
    pub degraded_fragments: u32,
    pub fragments: Vec<FragmentInfo>,
}

fn member_state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Online => "online",
        MemberState::Draining => "draining",
        MemberState::Failed => "failed",
        MemberState::Removed => "removed",
    }
}

impl Pool {
    /// Every member with its space, fragment count and errors seen.
    pub fn list_members(&self) -> Vec<MemberInfo> {
        let m = self.meta();
        let mut frags = vec![0u64; self.members.len().max(m.state.members.len())];
        for (_, _, f) in m.state.all_fragments() {
            if let Some(c) = frags.get_mut(f.member as usize) {
                *c += 1;
            }
        }
        (0..frags.len())
            .map(|i| {
                let rec = m.state.members.get(i);
                let mem = self.members.get(i).and_then(|x| x.as_ref());
                let alloc = m.allocs.get(i).and_then(|a| a.as_ref());
                let bs = mem.map(|x| x.layout.block_size as u64).unwrap_or(4096);
                let state = match (mem, rec.map(|r| r.state)) {
                    (None, Some(MemberState::Removed)) => "removed",
                    (None, _) => "missing",
                    (_, Some(s)) => member_state_name(s),
                    (_, None) => "online",
                };
                MemberInfo {
                    index: i as u32,
                    path: mem
                        .map(|x| x.dev.identity().path.display().to_string())
                        .or_else(|| rec.map(|r| r.path_hint.clone()))
                        .unwrap_or_default(),
                    state: state.into(),
                    present: mem.is_some(),
                    size_bytes: mem.map(|x| x.layout.size).unwrap_or(0),
                    data_bytes: alloc.map(|a| a.total_blocks() * bs).unwrap_or(0),
                    used_bytes: alloc.map(|a| a.used_blocks() * bs).unwrap_or(0),
                    free_bytes: alloc.map(|a| a.free_blocks() * bs).unwrap_or(0),
                    fragments: frags[i],
                    errors: self.counters.member_errors.get(i as u32),
                }
            })
            .collect()
    }

    /// One path per inode (the first found walking from the root).
    pub fn paths(&self) -> HashMap<Ino, String> {
        let m = self.meta();
        let mut out = HashMap::new();
        out.insert(ROOT_INO, "/".to_string());
        let mut stack = vec![(ROOT_INO, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            if let Some(Body::Dir { entries, .. }) = m.state.inodes.get(&dir).map(|i| &i.body) {
                for (name, child) in entries {
                    let p = format!("{prefix}/{}", String::from_utf8_lossy(name));
                    if out.contains_key(child) {
                        continue;
                    }
                    out.insert(*child, p.clone());
                    if m.state.inodes.get(child).is_some_and(|c| c.attrs.kind == FileKind::Dir) {
                        stack.push((*child, p));
                    }
                }
            }
        }
        out
    }

    /// Every extent of every file, in (path, offset) order.
    pub fn list_extents(&self) -> Vec<ExtentInfo> {
        let paths = self.paths();
        let m = self.meta();
        let mut out = Vec::new();
        for (ino, inode) in &m.state.inodes {
            let Body::File(map) = &inode.body else { continue };
            for (idx, id) in map {
                let Some(e) = m.state.extents.get(id) else { continue };
                let degraded = e
                    .frags
                    .iter()
                    .filter(|f| {
                        self.members.get(f.member as usize).is_none_or(|x| x.is_none())
                            || m.state.members.get(f.member as usize).is_some_and(|r| r.state == MemberState::Failed)
                    })
                    .count() as u32;
                out.push(ExtentInfo {
                    id: uuid::Uuid::from_u128(*id).to_string(),
                    ino: *ino,
                    path: paths.get(ino).cloned(),
                    offset: idx * super::state::EXTENT_SIZE,
                    len: e.len,
                    policy: e.policy().to_string(),
                    degraded_fragments: degraded,
                    fragments: e
                        .frags
                        .iter()
                        .enumerate()
                        .map(|(i, f)| FragmentInfo {
                            index: i as u32,
                            member: f.member,
                            block: f.block,
                            blocks: f.blocks,
                        })
                        .collect(),
                });
            }
        }
        out.sort_by(|a, b| (&a.path, a.offset).cmp(&(&b.path, b.offset)));
        out
    }

    /// Mark a member failed, draining or online again (committed at once).
    pub fn set_member_state(&self, index: u32, state: MemberState) -> Result<()> {
        {
            let mut m = self.meta();
            let rec = m
                .state
                .members
                .get(index as usize)
                .cloned()
                .ok_or_else(|| EngineError::Invalid(format!("no member {index}")))?;
            self.apply_txn(&mut m, vec![Op::PutMember { member: MemberRec { state, ..rec } }])?;
        }
        self.commit()?;
        tracing::info!(member = index, state = ?state, "member state set");
        Ok(())
    }

    /// The policy-change history, oldest first.
    pub fn policy_history(&self) -> Vec<PolicyChange> {
        self.meta().state.history.clone()
    }

    /// The files a change of `ino` covers: itself, or the files of a
    /// directory (and of its subdirectories when `recursive`); plus the
    /// directories whose inherited policy is pinned.
    fn change_targets(&self, ino: Ino, recursive: bool) -> Result<(Vec<Ino>, Vec<Ino>)> {
        let m = self.meta();
        let root = m.state.inodes.get(&ino).ok_or(EngineError::NotFound)?;
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        match &root.body {
            Body::File(_) => files.push(ino),
            Body::Dir { .. } => {
                let mut stack = vec![ino];
                while let Some(d) = stack.pop() {
                    dirs.push(d);
                    if let Some(Body::Dir { entries, .. }) = m.state.inodes.get(&d).map(|i| &i.body) {
                        for child in entries.values() {
                            match m.state.inodes.get(child).map(|c| &c.body) {
                                Some(Body::File(_)) => files.push(*child),
                                Some(Body::Dir { .. }) if recursive => stack.push(*child),
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => return Err(EngineError::Invalid("policies apply to files and directories".into())),
        }
        files.sort_unstable();
        files.dedup();
        Ok((files, dirs))
    }

    fn put_change(&self, change: &PolicyChange) -> Result<()> {
        let mut m = self.meta();
        self.apply_txn(&mut m, vec![Op::PutPolicyChange { change: change.clone() }])?;
        Ok(())
    }

    /// Change the policy of `ino` (a file, a directory's files, or with
    /// `recursive` a whole tree; `ROOT_INO` + recursive = the whole pool, and
    /// then also the pool default) online. `scope` is how the caller names it
    /// (a path). `progress(done, total)` is called as extents are converted.
    pub fn change_policy(
        &self,
        ino: Ino,
        scope: &str,
        recursive: bool,
        policy: Policy,
        progress: &dyn Fn(u64, u64),
    ) -> Result<PolicyChange> {
        policy.validate().map_err(|e| EngineError::Invalid(e.to_string()))?;
        {
            let m = self.meta();
            let views = self.member_views(&m);
            if !placement::can_satisfy(policy, &views) {
                let online = views.iter().filter(|v| v.state == placement::MemberState::Online).count();
                return Err(EngineError::PolicyUnsatisfiable {
                    policy: policy.to_string(),
                    reason: format!("needs {} online members, the pool has {online}", policy.fragment_count()),
                });
            }
        }
        let lock = change_lock(self.uuid());
        let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
        let id = self.meta().state.history.iter().map(|c| c.id).max().unwrap_or(0) + 1;
        let change = PolicyChange {
            id,
            scope: scope.to_string(),
            ino,
            recursive,
            policy: policy.encode(),
            started_ns: now_ns(),
            finished_ns: None,
            state: ChangeState::Running,
            extents_done: 0,
            extents_total: 0,
            message: String::new(),
            bytes_done: 0,
            bytes_total: 0,
        };
        self.put_change(&change)?;
        self.commit()?;
        self.run_change(change, progress, &|| false)
    }

    /// Finish every change left Running by a crash or an unmount.
    pub fn resume_policy_changes(&self, progress: &dyn Fn(u64, u64)) -> Result<Vec<PolicyChange>> {
        self.resume_policy_changes_until(progress, &|| false)
    }

    /// Like [`Pool::resume_policy_changes`], but `stop` is asked before each
    /// extent: once it says true, the change in hand is recorded with its
    /// progress, still Running (the next resume continues it), and returned.
    /// Each resumed change's message notes the interruption.
    pub fn resume_policy_changes_until(
        &self,
        progress: &dyn Fn(u64, u64),
        stop: &dyn Fn() -> bool,
    ) -> Result<Vec<PolicyChange>> {
        let lock = change_lock(self.uuid());
        let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
        let running: Vec<PolicyChange> =
            self.meta().state.history.iter().filter(|c| c.state == ChangeState::Running).cloned().collect();
        let mut out = Vec::new();
        for mut c in running {
            if stop() {
                break;
            }
            let note = format!("interrupted at {}/{} extents; resumed", c.extents_done, c.extents_total);
            tracing::info!(change = c.id, scope = %c.scope, "policy change {note}");
            c.message = if c.message.is_empty() { note } else { format!("{}; {note}", c.message) };
            out.push(self.run_change(c, progress, stop)?);
        }
        Ok(out)
    }

    fn run_change(
        &self,
        mut change: PolicyChange,
        progress: &dyn Fn(u64, u64),
        stop: &dyn Fn() -> bool,
    ) -> Result<PolicyChange> {
        let mut stopped = false;
        let policy = Policy::decode(change.policy).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let result = (|| -> Result<()> {
            let (files, dirs) = match self.change_targets(change.ino, change.recursive) {
                Ok(t) => t,
                Err(EngineError::NotFound) => (Vec::new(), Vec::new()),
                Err(e) => return Err(e),
            };
            // Pin the policy on what the change covers, so new extents follow it.
            {
                let mut m = self.meta();
                let mut ops: Vec<Op> = files
                    .iter()
                    .chain(dirs.iter())
                    .map(|&ino| Op::SetPolicy { ino, policy: Some(change.policy) })
                    .collect();
                if change.ino == ROOT_INO && change.recursive {
                    let mut config = m.state.config.clone();
                    config.default_policy = change.policy;
                    ops.push(Op::SetConfig { config });
                }
                self.apply_txn(&mut m, ops)?;
            }
            for &f in &files {
                self.flush(f)?;
            }
            // (file, extent index, extent id, extent bytes)
            let work: Vec<(Ino, u64, u128, u64)> = {
                let m = self.meta();
                files
                    .iter()
                    .filter_map(|f| match m.state.inodes.get(f).map(|i| &i.body) {
                        Some(Body::File(map)) => {
                            Some(map.iter().map(move |(idx, id)| (*f, *idx, *id)).collect::<Vec<_>>())
                        }
                        _ => None,
                    })
                    .flatten()
                    .filter_map(|(f, idx, id)| match m.state.extents.get(&id) {
                        Some(e) if e.policy != change.policy => Some((f, idx, id, e.len as u64)),
                        _ => None,
                    })
                    .collect()
            };
            // A resumed change keeps its totals: what is left is what was
            // not converted (some converted extents may have been committed
            // after the last recorded progress).
            let left = work.len() as u64;
            if change.extents_total >= change.extents_done + left && change.extents_total > 0 {
                change.extents_done = change.extents_total - left;
            } else {
                change.extents_total = change.extents_done + left;
            }
            let left_bytes: u64 = work.iter().map(|w| w.3).sum();
            if change.bytes_total >= left_bytes && change.bytes_total > 0 {
                change.bytes_done = change.bytes_total - left_bytes;
            } else {
                // New, or recorded before records had bytes: counts from here.
                change.bytes_total = change.bytes_done + left_bytes;
            }
            self.put_change(&change)?;
            for (n, (ino, idx, id, len)) in work.into_iter().enumerate() {
                if stop() {
                    stopped = true;
                    break;
                }
                self.reencode_extent(ino, idx, id, policy)?;
                change.extents_done += 1;
                change.bytes_done += len;
                // The record follows each extent (what policy-status shows,
                // durable with the extent's own change); a commit every 64.
                self.put_change(&change)?;
                progress(change.extents_done, change.extents_total);
                if n % 64 == 63 {
                    self.commit()?;
                }
            }
            Ok(())
        })();
        if stopped && result.is_ok() {
            self.put_change(&change)?;
            self.commit()?;
            tracing::info!(
                change = change.id,
                done = change.extents_done,
                "policy change stopped; resumes at next mount"
            );
            return Ok(change);
        }
        // A device failed under the change (a member dying mid-way): what
        // was converted stays converted and the change stays Running, so it
        // resumes (at the next mount, or before the next change-policy) once
        // the member is failed or back. Other errors end it as Failed.
        if let Err(e @ EngineError::Device(_)) = &result {
            let note =
                format!("stopped by an IO error at {}/{} extents: {e}", change.extents_done, change.extents_total);
            tracing::warn!(change = change.id, "policy change {note}; it resumes later");
            change.message = if change.message.is_empty() { note } else { format!("{}; {note}", change.message) };
            // Recorded if the pool still takes writes (else the durable
            // record is Running already).
            let _ = self.put_change(&change).and_then(|_| self.commit());
            return result.map(|_| change);
        }
        change.finished_ns = Some(now_ns());
        match &result {
            Ok(()) => change.state = ChangeState::Done,
            Err(e) => {
                change.state = ChangeState::Failed;
                change.message =
                    if change.message.is_empty() { e.to_string() } else { format!("{}; {e}", change.message) };
            }
        }
        // Record the outcome even when the change failed (if the pool still accepts writes).
        let recorded = self.put_change(&change).and_then(|_| self.commit());
        result?;
        recorded?;
        Ok(change)
    }

    /// Re-encode extent `idx` of `ino` (currently `old`) under `policy`.
    /// Returns false when a writer replaced the extent meanwhile.
    pub(crate) fn reencode_extent(&self, ino: Ino, idx: u64, old: u128, policy: Policy) -> Result<bool> {
        let e = match self.meta().state.extents.get(&old) {
            Some(e) => e.clone(),
            None => return Ok(false),
        };
        let bytes = self.read_extent(&e)?;
        let new = self.write_extent(policy, &bytes)?;
        let mut m = self.meta();
        let still =
            matches!(m.state.inodes.get(&ino).map(|i| &i.body), Some(Body::File(map)) if map.get(&idx) == Some(&old));
        if !still {
            drop(m);
            self.free_uncommitted(&new.frags);
            return Ok(false);
        }
        self.apply_txn(&mut m, vec![Op::SetExtent { ino, index: idx, extent: Some(new) }])?;
        Ok(true)
    }
}
