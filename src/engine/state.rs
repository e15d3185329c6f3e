//! # The in-memory metadata state and the one function that changes it
//!
//! `State` holds the whole namespace (inodes, directories, symlinks, hard
//! links, xattrs, the file → extent maps), the extent table and the member
//! table. It is changed only by [`State::apply`] of an [`Op`]: the live
//! engine and journal replay call the same function with the same ops, so a
//! replayed state is the state that was committed, bit for bit.
//!
//! `apply` validates every op against the state before touching anything and
//! returns an error (never panics) when an op does not fit: during replay
//! that means the journal is corrupt.
//!
//! Memory budget (measured by `bench-metadata`): an extent costs its table
//! entry (UUID key, length, BLAKE3, policy, fragment list of 16 bytes per
//! fragment) plus one map entry in its file; an inode costs its attributes
//! and the containers of its body. This module must never do IO.

use crate::temperature::ExtentTemp;
use dfs_format::Policy;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Inode number. 1 is the root directory.
pub type Ino = u64;
/// The root directory's inode number.
pub const ROOT_INO: Ino = 1;
/// Logical size of a full extent (bytes).
pub const EXTENT_SIZE: u64 = dfs_format::MAX_EXTENT_LEN as u64;
/// Longest name in a directory (bytes), as Linux's NAME_MAX.
pub const NAME_MAX: usize = 255;

/// The type of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// POSIX attributes of an inode. Times are nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attrs {
    pub kind: FileKind,
    /// Permission bits (mode & 0o7777).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub nlink: u32,
    pub rdev: u32,
}

/// Where one fragment lives: `blocks` blocks from data block `block` of member `member`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FragLoc {
    pub member: u32,
    pub blocks: u32,
    pub block: u64,
}

/// An immutable extent: up to 1 MiB of one file, kept under one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Extent UUID (as u128) — also in every fragment header.
    pub id: u128,
    /// Logical length in bytes (1..=1 MiB).
    pub len: u32,
    /// BLAKE3 of the logical bytes.
    pub blake3: [u8; 32],
    /// Redundancy policy, in its 4-byte encoding.
    pub policy: [u8; 4],
    /// Fragment `i` of the policy lives at `frags[i]`.
    pub frags: Box<[FragLoc]>,
}

impl Extent {
    /// The decoded policy (validated when the extent was created).
    pub fn policy(&self) -> Policy {
        Policy::decode(self.policy).unwrap_or(Policy::Replication { copies: 1 })
    }
}

/// What an inode holds besides its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Extent index (file offset / 1 MiB) → extent id. Absent = hole.
    File(BTreeMap<u64, u128>),
    /// Name → inode, and the parent directory (the root is its own parent).
    Dir { parent: Ino, entries: BTreeMap<Box<[u8]>, Ino> },
    /// The link target.
    Symlink(Box<[u8]>),
    /// FIFOs, sockets, device nodes.
    Special,
}

/// Extended attributes of one inode: name → value.
pub type Xattrs = BTreeMap<Box<[u8]>, Box<[u8]>>;

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub attrs: Attrs,
    /// Extended attributes, allocated only when there are some.
    pub xattrs: Option<Box<Xattrs>>,
    /// Pinned policy (`user.dfs.policy`), inherited by new children of a directory.
    pub policy: Option<[u8; 4]>,
    pub body: Body,
}

/// State of a pool member as metadata records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    Online,
    Draining,
    Failed,
    Removed,
}

/// One member of the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRec {
    pub index: u32,
    pub uuid: u128,
    pub state: MemberState,
    /// The path it was last opened by (a hint for finding it again).
    pub path_hint: String,
}

/// Pool-wide settings kept in metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    pub default_policy: [u8; 4],
    pub label: String,
}

/// Progress of a policy change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeState {
    Running,
    Done,
    Failed,
}

/// One policy change in the pool's history (the audit trail of
/// `change-policy`, `user.dfs.policy` re-encodes and migrations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChange {
    pub id: u64,
    /// What it applies to: `/` (whole pool) or a path, as given.
    pub scope: String,
    /// The inode of the scope, and whether it covers subdirectories.
    pub ino: Ino,
    pub recursive: bool,
    /// Target policy (4-byte encoding).
    pub policy: [u8; 4],
    pub started_ns: i64,
    pub finished_ns: Option<i64>,
    pub state: ChangeState,
    pub extents_done: u64,
    pub extents_total: u64,
    pub message: String,
    /// Logical bytes of the extents re-encoded so far and in all (0 in
    /// records written before checkpoint version 2 / `PutPolicyChange`;
    /// a resumed old record counts from the resume). JSON of an older
    /// mount lacks them: 0.
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
}

/// A [`PolicyChange`] as checkpoint version 1 and the `PutPolicyChangeV1`
/// op stored it (no bytes). Frozen: decoded, never written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyChangeV1 {
    pub id: u64,
    pub scope: String,
    pub ino: Ino,
    pub recursive: bool,
    pub policy: [u8; 4],
    pub started_ns: i64,
    pub finished_ns: Option<i64>,
    pub state: ChangeState,
    pub extents_done: u64,
    pub extents_total: u64,
    pub message: String,
}

impl From<PolicyChangeV1> for PolicyChange {
    fn from(c: PolicyChangeV1) -> PolicyChange {
        PolicyChange {
            id: c.id,
            scope: c.scope,
            ino: c.ino,
            recursive: c.recursive,
            policy: c.policy,
            started_ns: c.started_ns,
            finished_ns: c.finished_ns,
            state: c.state,
            extents_done: c.extents_done,
            extents_total: c.extents_total,
            message: c.message,
            bytes_done: 0,
            bytes_total: 0,
        }
    }
}

/// The whole metadata state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub inodes: HashMap<Ino, Inode>,
    /// A B-tree rather than a hash table: no 2x jump in memory when it
    /// grows, and decoded from a checkpoint it is bulk-built with full
    /// nodes (see [`bulk_btree`]).
    #[serde(deserialize_with = "bulk_btree")]
    pub extents: BTreeMap<u128, Extent>,
    pub members: Vec<MemberRec>,
    pub config: PoolConfig,
    pub next_ino: Ino,
    /// Policy changes, oldest first.
    pub history: Vec<PolicyChange>,
    /// Access statistics per extent, as last flushed (`crate::temperature`;
    /// live counts are in its tracker). Only extents that were accessed.
    pub temperature: HashMap<u128, ExtentTemp>,
    /// Scrub schedule and the scrub daemon's persisted position (#9).
    pub scrub: ScrubRecord,
    /// Temperature settings an operator set (`dfs temperature-config`):
    /// key → canonical value, only the keys set; the others follow the
    /// built-in defaults (`crate::temperature::settings`). Since checkpoint
    /// version 2.
    pub temperature_settings: BTreeMap<String, String>,
}

/// How often the mount scrubs the pool on its own (`dfs scrub-schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ScrubFrequency {
    /// Never on its own (the default; `dfs scrub-daemon start` still works).
    #[default]
    Off,
    /// A pass starts when the last one began 24 h ago or more.
    Nightly,
    /// A pass starts when the last one began 7 days ago or more.
    Weekly,
    /// A new pass starts as soon as one ends.
    Continuous,
}

/// Scrub settings and progress kept in the pool metadata (`Op::SetScrub`).
/// The position is written in batches by the scrub daemon, so a restart
/// resumes the pass where it was, not from the start.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScrubRecord {
    pub frequency: ScrubFrequency,
    /// 0 low, 1 medium, 2 high (see `scrub_daemon::Intensity`).
    pub intensity: u8,
    /// A pass is under way (started and not finished).
    pub running: bool,
    /// Extents with an id up to and including this one are done this pass.
    pub cursor: Option<u128>,
    /// Wall-clock start of the current (or last) pass, and its end.
    pub pass_started_ns: i64,
    pub pass_finished_ns: i64,
    /// Totals of the current pass so far.
    pub extents_done: u64,
    pub bytes_done: u64,
    pub errors: u64,
    pub repaired: u64,
}

/// One atomic change to the state; a journal record carries a list of them
/// (one or more transactions). Version 1 of the record encoding, extended
/// only by appending variants (postcard tags a variant by its position):
/// an op whose fields change keeps its old variant, frozen and decoded
/// only (so old journal records replay), and gets a new one at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Create inode `ino` (must not exist) with `attrs` and an initial body.
    /// Replay may assume `ino >= next_ino` is then bumped.
    CreateInode { ino: Ino, attrs: Attrs, body: Body, policy: Option<[u8; 4]> },
    /// Replace the attributes of `ino` (the kind must not change).
    SetAttrs { ino: Ino, attrs: Attrs },
    /// Add entry `name` → `ino` to directory `dir` (must not exist).
    Link { dir: Ino, name: Box<[u8]>, ino: Ino },
    /// Remove entry `name` from directory `dir` (must exist).
    Unlink { dir: Ino, name: Box<[u8]> },
    /// Set the parent of directory `dir` (rename across directories).
    SetParent { dir: Ino, parent: Ino },
    /// Delete inode `ino` (no entry may point at it); its extents are freed.
    DropInode { ino: Ino },
    /// Set or clear extent `index` of file `ino`; a replaced extent is freed.
    SetExtent { ino: Ino, index: u64, extent: Option<Extent> },
    /// Set (Some) or remove (None) an extended attribute.
    SetXattr { ino: Ino, name: Box<[u8]>, value: Option<Box<[u8]>> },
    /// Pin (Some) or unpin (None) the policy of an inode.
    SetPolicy { ino: Ino, policy: Option<[u8; 4]> },
    /// Replace the fragment locations of an extent (repair, migration);
    /// the fragments no longer referenced are freed.
    MoveExtent { id: u128, policy: [u8; 4], frags: Box<[FragLoc]> },
    /// Add a member or change its record.
    PutMember { member: MemberRec },
    /// Change pool settings.
    SetConfig { config: PoolConfig },
    /// Add (new id) or update a policy-change record, as journals written
    /// before records had bytes hold it. Replay only; writers use
    /// [`Op::PutPolicyChange`].
    PutPolicyChangeV1 { change: PolicyChangeV1 },
    /// Store the access statistics of many extents (a batch flushed by
    /// `crate::temperature`). Entries of extents that no longer exist are
    /// ignored, so replay may see stats of extents deleted since.
    PutTempStats { stats: Vec<(u128, ExtentTemp)> },
    /// Replace the scrub schedule and position (scrub daemon, `scrub-schedule`).
    SetScrub { scrub: ScrubRecord },
    /// Replace the stored temperature settings (`dfs temperature-config`):
    /// every key known and every value canonical, else the op does not
    /// apply. Added after the others, so older records decode unchanged.
    SetTemperatureSettings { settings: BTreeMap<String, String> },
    /// Add (new id) or update a policy-change record.
    PutPolicyChange { change: PolicyChange },
}

/// Why an op did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metadata op does not apply: {0}")]
pub struct ApplyError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ApplyError> {
    Err(ApplyError(msg.into()))
}

impl State {
    /// A new pool: just the root directory.
    pub fn new(config: PoolConfig, members: Vec<MemberRec>, now_ns: i64) -> State {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT_INO,
            Inode {
                attrs: Attrs {
                    kind: FileKind::Dir,
                    perm: 0o755,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    atime_ns: now_ns,
                    mtime_ns: now_ns,
                    ctime_ns: now_ns,
                    nlink: 2,
                    rdev: 0,
                },
                xattrs: None,
                policy: None,
                body: Body::Dir { parent: ROOT_INO, entries: BTreeMap::new() },
            },
        );
        State {
            inodes,
            extents: BTreeMap::new(),
            members,
            config,
            next_ino: ROOT_INO + 1,
            history: Vec::new(),
            temperature: HashMap::new(),
            scrub: ScrubRecord::default(),
            temperature_settings: BTreeMap::new(),
        }
    }

    /// The inode, or an error naming it.
    pub fn inode(&self, ino: Ino) -> Result<&Inode, ApplyError> {
        match self.inodes.get(&ino) {
            Some(i) => Ok(i),
            None => err(format!("inode {ino} does not exist")),
        }
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode, ApplyError> {
        match self.inodes.get_mut(&ino) {
            Some(i) => Ok(i),
            None => err(format!("inode {ino} does not exist")),
        }
    }

    fn dir_entries_mut(&mut self, dir: Ino) -> Result<&mut BTreeMap<Box<[u8]>, Ino>, ApplyError> {
        match &mut self.inode_mut(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            _ => err(format!("inode {dir} is not a directory")),
        }
    }

    /// Add (new id) or replace (same id) a policy-change record.
    fn put_change(&mut self, change: PolicyChange) {
        match self.history.iter_mut().find(|c| c.id == change.id) {
            Some(c) => *c = change,
            None => self.history.push(change),
        }
    }

    /// Apply one op. On success returns the fragment locations that op freed
    /// (the caller frees them once the op's commit is durable). On error the
    /// state is unchanged.
    pub fn apply(&mut self, op: &Op) -> Result<Vec<FragLoc>, ApplyError> {
        let mut freed = Vec::new();
        match op {
            Op::CreateInode { ino, attrs, body, policy } => {
                if self.inodes.contains_key(ino) || *ino == 0 {
                    return err(format!("create: inode {ino} already exists"));
                }
                let body_kind_ok = matches!(
                    (attrs.kind, body),
                    (FileKind::File, Body::File(_))
                        | (FileKind::Dir, Body::Dir { .. })
                        | (FileKind::Symlink, Body::Symlink(_))
                        | (FileKind::Fifo | FileKind::Socket | FileKind::CharDev | FileKind::BlockDev, Body::Special)
                );
                if !body_kind_ok {
                    return err(format!("create: inode {ino} body does not match kind {:?}", attrs.kind));
                }
                if let Body::File(map) = body {
                    if !map.is_empty() {
                        return err("create: a new file has no extents");
                    }
                }
                if let Body::Dir { entries, .. } = body {
                    if !entries.is_empty() {
                        return err("create: a new directory is empty");
                    }
                }
                self.inodes.insert(*ino, Inode { attrs: *attrs, xattrs: None, policy: *policy, body: body.clone() });
                self.next_ino = self.next_ino.max(ino + 1);
            }
            Op::SetAttrs { ino, attrs } => {
                let inode = self.inode_mut(*ino)?;
                if inode.attrs.kind != attrs.kind {
                    return err(format!("setattrs: inode {ino} kind change"));
                }
                inode.attrs = *attrs;
            }
            Op::Link { dir, name, ino } => {
                if name.is_empty() || name.len() > NAME_MAX || name.contains(&b'/') || name.contains(&0) {
                    return err(format!("link: bad name {:?}", String::from_utf8_lossy(name)));
                }
                self.inode(*ino)?;
                let entries = self.dir_entries_mut(*dir)?;
                if entries.contains_key(name) {
                    return err(format!("link: {:?} exists in {dir}", String::from_utf8_lossy(name)));
                }
                entries.insert(name.clone(), *ino);
            }
            Op::Unlink { dir, name } => {
                if self.dir_entries_mut(*dir)?.remove(name).is_none() {
                    return err(format!("unlink: {:?} not in {dir}", String::from_utf8_lossy(name)));
                }
            }
            Op::SetParent { dir, parent } => {
                self.inode(*parent)?;
                match &mut self.inode_mut(*dir)?.body {
                    Body::Dir { parent: p, .. } => *p = *parent,
                    _ => return err(format!("setparent: {dir} is not a directory")),
                }
            }
            Op::DropInode { ino } => {
                if *ino == ROOT_INO {
                    return err("drop: the root directory");
                }
                let inode = self.inodes.remove(ino).ok_or_else(|| ApplyError(format!("drop: no inode {ino}")))?;
                if let Body::File(map) = inode.body {
                    for id in map.values() {
                        if let Some(e) = self.extents.remove(id) {
                            freed.extend(e.frags.iter().copied());
                        }
                        self.temperature.remove(id);
                    }
                }
            }
            Op::SetExtent { ino, index, extent } => {
                if let Some(e) = extent {
                    if e.len == 0 || e.len as u64 > EXTENT_SIZE || e.frags.is_empty() {
                        return err(format!("setextent: bad extent length {} for inode {ino}", e.len));
                    }
                    if Policy::decode(e.policy).is_err() {
                        return err("setextent: bad policy");
                    }
                    if self.extents.contains_key(&e.id) {
                        return err("setextent: extent id reused");
                    }
                }
                let map = match &mut self.inode_mut(*ino)?.body {
                    Body::File(map) => map,
                    _ => return err(format!("setextent: inode {ino} is not a file")),
                };
                let old = match extent {
                    Some(e) => map.insert(*index, e.id),
                    None => map.remove(index),
                };
                if let Some(e) = extent {
                    self.extents.insert(e.id, e.clone());
                }
                if let Some(old) = old {
                    if let Some(e) = self.extents.remove(&old) {
                        freed.extend(e.frags.iter().copied());
                    }
                    self.temperature.remove(&old);
                }
            }
            Op::SetXattr { ino, name, value } => {
                let inode = self.inode_mut(*ino)?;
                let x = inode.xattrs.get_or_insert_with(Default::default);
                match value {
                    Some(v) => {
                        x.insert(name.clone(), v.clone());
                    }
                    None => {
                        x.remove(name);
                    }
                }
                if x.is_empty() {
                    inode.xattrs = None;
                }
            }
            Op::SetPolicy { ino, policy } => {
                if let Some(p) = policy {
                    if Policy::decode(*p).is_err() {
                        return err("setpolicy: bad policy");
                    }
                }
                self.inode_mut(*ino)?.policy = *policy;
            }
            Op::MoveExtent { id, policy, frags } => {
                if Policy::decode(*policy).is_err() || frags.is_empty() {
                    return err("moveextent: bad policy or no fragments");
                }
                let e =
                    self.extents.get_mut(id).ok_or_else(|| ApplyError(format!("moveextent: no extent {id:032x}")))?;
                for f in e.frags.iter() {
                    if !frags.contains(f) {
                        freed.push(*f);
                    }
                }
                e.policy = *policy;
                e.frags = frags.clone();
            }
            Op::PutMember { member } => {
                let i = member.index as usize;
                if i > self.members.len() {
                    return err(format!("putmember: index {i} leaves a gap"));
                }
                if i == self.members.len() {
                    self.members.push(member.clone());
                } else {
                    self.members[i] = member.clone();
                }
            }
            Op::SetConfig { config } => self.config = config.clone(),
            Op::PutPolicyChange { change } => self.put_change(change.clone()),
            Op::PutPolicyChangeV1 { change } => self.put_change(change.clone().into()),
            Op::PutTempStats { stats } => {
                for (id, s) in stats {
                    if self.extents.contains_key(id) {
                        self.temperature.insert(*id, *s);
                    }
                }
            }
            Op::SetScrub { scrub } => self.scrub = scrub.clone(),
            Op::SetTemperatureSettings { settings } => {
                if let Err(e) = crate::temperature::settings::validate_stored(settings) {
                    return err(format!("settemperaturesettings: {e}"));
                }
                self.temperature_settings = settings.clone();
            }
        }
        Ok(freed)
    }

    /// Every fragment location referenced by the extent table.
    pub fn all_fragments(&self) -> impl Iterator<Item = (u128, usize, FragLoc)> + '_ {
        self.extents.iter().flat_map(|(id, e)| e.frags.iter().enumerate().map(move |(i, f)| (*id, i, *f)))
    }

    /// Check the tree's invariants: every entry points at an inode, nlink
    /// equals the number of entries (+ subdirectories for directories), every
    /// file extent exists in the table and belongs to exactly one file and
    /// stays within the file size, every inode but the root is reachable.
    /// Returns the problems found.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut links: HashMap<Ino, u32> = HashMap::new();
        let mut extent_owner: HashMap<u128, Ino> = HashMap::new();
        for (ino, inode) in &self.inodes {
            match &inode.body {
                Body::Dir { parent, entries } => {
                    if !self.inodes.contains_key(parent) {
                        problems.push(format!("dir {ino}: parent {parent} missing"));
                    }
                    for (name, child) in entries {
                        match self.inodes.get(child) {
                            None => problems.push(format!(
                                "dir {ino}: entry {:?} points at missing inode {child}",
                                String::from_utf8_lossy(name)
                            )),
                            Some(c) => {
                                *links.entry(*child).or_default() += 1;
                                if c.attrs.kind == FileKind::Dir {
                                    *links.entry(*ino).or_default() += 1;
                                    if let Body::Dir { parent, .. } = c.body {
                                        if parent != *ino {
                                            problems.push(format!("dir {child}: parent {parent}, but listed in {ino}"));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                Body::File(map) => {
                    for (idx, id) in map {
                        match self.extents.get(id) {
                            None => problems.push(format!("file {ino}: extent {idx} ({id:032x}) missing")),
                            Some(e) => {
                                if idx * EXTENT_SIZE + e.len as u64 > inode.attrs.size {
                                    problems.push(format!(
                                        "file {ino}: extent {idx} reaches past size {}",
                                        inode.attrs.size
                                    ));
                                }
                            }
                        }
                        if let Some(other) = extent_owner.insert(*id, *ino) {
                            problems.push(format!("extent {id:032x} owned by {other} and {ino}"));
                        }
                    }
                }
                _ => {}
            }
        }
        for (ino, inode) in &self.inodes {
            let is_dir = inode.attrs.kind == FileKind::Dir;
            let expected = links.get(ino).copied().unwrap_or(0)
                + if is_dir {
                    if *ino == ROOT_INO {
                        2
                    } else {
                        1
                    }
                } else {
                    0
                };
            if *ino != ROOT_INO && !links.contains_key(ino) {
                problems.push(format!("inode {ino}: unreachable"));
            }
            if inode.attrs.nlink != expected {
                problems.push(format!("inode {ino}: nlink {} but {expected} links", inode.attrs.nlink));
            }
        }
        for id in self.extents.keys() {
            if !extent_owner.contains_key(id) {
                problems.push(format!("extent {id:032x}: in the table but in no file"));
            }
        }
        problems
    }
}

/// Decode a map into a `BTreeMap` built in bulk: the pairs are gathered
/// first and collected, which sorts them and fills every node. Inserting
/// them one by one in key order (what serde does) leaves the nodes a little
/// over half full, since each split keeps 6 of 11 keys on the left; on the
/// extent table that is about 70 bytes per extent.
fn bulk_btree<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    K: Ord + Deserialize<'de>,
    V: Deserialize<'de>,
{
    struct Pairs<K, V>(std::marker::PhantomData<(K, V)>);
    impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for Pairs<K, V> {
        type Value = BTreeMap<K, V>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            // Bounded: a corrupt length must not reserve gigabytes.
            let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(kv) = map.next_entry()? {
                pairs.push(kv);
            }
            Ok(pairs.into_iter().collect())
        }
    }
    d.deserialize_map(Pairs(std::marker::PhantomData))
}

// ------------------------------------------------------------ checkpoint encoding

/// First bytes of every checkpoint payload.
pub const CHECKPOINT_MAGIC: [u8; 4] = *b"DFCK";
/// The checkpoint encoding this build writes: [`State`] as postcard
/// (positional: every field, in declaration order). Version 1
/// ([`StateV1`]): no bytes in policy-change records and no
/// `temperature_settings`; version 2 added both.
pub const CHECKPOINT_VERSION: u16 = 2;
/// Bytes before the postcard body: magic (4), version (u16 LE), reserved
/// (u16, zero).
pub const CHECKPOINT_HEADER_LEN: usize = 8;

/// Why a checkpoint payload did not decode (or encode).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("checkpoint too short: {0} bytes, its header alone is {CHECKPOINT_HEADER_LEN}")]
    TooShort(usize),
    #[error("not a versioned checkpoint (magic {0:02x?}; written by a build before checkpoint versions?)")]
    BadMagic([u8; 4]),
    #[error("checkpoint format version {found} is unknown (this build reads versions 1 to {CHECKPOINT_VERSION})")]
    UnknownVersion { found: u16 },
    #[error("checkpoint format version {version} does not decode: {reason}")]
    Decode { version: u16, reason: String },
    #[error("encoding the checkpoint: {0}")]
    Encode(String),
}

impl State {
    /// The checkpoint payload of this state: an 8-byte header (magic,
    /// [`CHECKPOINT_VERSION`]) then the postcard body. The rule for adding
    /// a field is in docs/DECISIONS.md ("Checkpoint format version").
    pub fn encode_checkpoint(&self) -> Result<Vec<u8>, CheckpointError> {
        let mut out = Vec::with_capacity(CHECKPOINT_HEADER_LEN + 64);
        out.extend_from_slice(&CHECKPOINT_MAGIC);
        out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        postcard::to_io(self, &mut out).map_err(|e| CheckpointError::Encode(e.to_string()))?;
        Ok(out)
    }

    /// Decode a checkpoint payload of any version this build knows (1 and
    /// 2). Unknown versions, foreign bytes and garbage give a typed error,
    /// never a panic.
    pub fn decode_checkpoint(bytes: &[u8]) -> Result<State, CheckpointError> {
        if bytes.len() < CHECKPOINT_HEADER_LEN {
            return Err(CheckpointError::TooShort(bytes.len()));
        }
        let magic: [u8; 4] = bytes[0..4].try_into().expect("4 bytes");
        if magic != CHECKPOINT_MAGIC {
            return Err(CheckpointError::BadMagic(magic));
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if bytes[6..8] != [0, 0] {
            return Err(CheckpointError::Decode { version, reason: "reserved header bytes are not zero".into() });
        }
        let body = &bytes[CHECKPOINT_HEADER_LEN..];
        match version {
            // A later version keeps these arms (decoding its own old
            // struct and converting it) and adds its own above.
            2 => decode_whole::<State>(version, body),
            1 => decode_whole::<StateV1>(version, body).map(State::from),
            found => Err(CheckpointError::UnknownVersion { found }),
        }
    }
}

/// Decode `body` as one `T` with nothing after it.
fn decode_whole<T: serde::de::DeserializeOwned>(version: u16, body: &[u8]) -> Result<T, CheckpointError> {
    let (v, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| CheckpointError::Decode { version, reason: e.to_string() })?;
    if !rest.is_empty() {
        return Err(CheckpointError::Decode { version, reason: format!("{} bytes left after the state", rest.len()) });
    }
    Ok(v)
}

/// [`State`] as checkpoint version 1 stored it: policy-change records
/// without bytes, no temperature settings. Frozen: decoded (and written by
/// tests), never changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateV1 {
    pub inodes: HashMap<Ino, Inode>,
    #[serde(deserialize_with = "bulk_btree")]
    pub extents: BTreeMap<u128, Extent>,
    pub members: Vec<MemberRec>,
    pub config: PoolConfig,
    pub next_ino: Ino,
    pub history: Vec<PolicyChangeV1>,
    pub temperature: HashMap<u128, ExtentTemp>,
    pub scrub: ScrubRecord,
}

impl From<StateV1> for State {
    /// Version 1 had no bytes in its records (0) and no temperature
    /// settings (every key at its default).
    fn from(s: StateV1) -> State {
        State {
            inodes: s.inodes,
            extents: s.extents,
            members: s.members,
            config: s.config,
            next_ino: s.next_ino,
            history: s.history.into_iter().map(PolicyChange::from).collect(),
            temperature: s.temperature,
            scrub: s.scrub,
            temperature_settings: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> State {
        let config = PoolConfig { default_policy: Policy::Replication { copies: 2 }.encode(), label: "t".into() };
        State::new(config, Vec::new(), 1_700_000_000_000_000_000)
    }

    #[test]
    fn checkpoint_round_trips_with_its_header() {
        let s = sample();
        let bytes = s.encode_checkpoint().unwrap();
        assert_eq!(&bytes[..4], b"DFCK");
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), CHECKPOINT_VERSION);
        assert_eq!(State::decode_checkpoint(&bytes).unwrap(), s);
    }

    #[test]
    fn unknown_version_is_refused_by_name() {
        let mut bytes = sample().encode_checkpoint().unwrap();
        bytes[4..6].copy_from_slice(&7u16.to_le_bytes());
        let e = State::decode_checkpoint(&bytes).unwrap_err();
        assert_eq!(e, CheckpointError::UnknownVersion { found: 7 });
        assert!(e.to_string().contains("version 7 is unknown"), "{e}");
    }

    #[test]
    fn headerless_postcard_of_an_older_build_is_refused() {
        let raw = postcard::to_stdvec(&sample()).unwrap();
        assert!(matches!(State::decode_checkpoint(&raw), Err(CheckpointError::BadMagic(_))));
        assert_eq!(State::decode_checkpoint(&raw[..3]), Err(CheckpointError::TooShort(3)));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = sample().encode_checkpoint().unwrap();
        bytes.push(0);
        assert!(matches!(
            State::decode_checkpoint(&bytes),
            Err(CheckpointError::Decode { version: CHECKPOINT_VERSION, .. })
        ));
    }

    fn old_change() -> PolicyChangeV1 {
        PolicyChangeV1 {
            id: 3,
            scope: "/a".into(),
            ino: 7,
            recursive: true,
            policy: Policy::Erasure { data: 2, parity: 1 }.encode(),
            started_ns: 1_700_000_000_000_000_000,
            finished_ns: Some(1_700_000_001_000_000_000),
            state: ChangeState::Done,
            extents_done: 5,
            extents_total: 5,
            message: "ok".into(),
        }
    }

    #[test]
    fn a_version_1_checkpoint_decodes_with_its_history() {
        let mut s = sample();
        s.next_ino = 42;
        s.scrub.errors = 9;
        let v1 = StateV1 {
            inodes: s.inodes.clone(),
            extents: s.extents.clone(),
            members: s.members.clone(),
            config: s.config.clone(),
            next_ino: s.next_ino,
            history: vec![old_change()],
            temperature: s.temperature.clone(),
            scrub: s.scrub.clone(),
        };
        let mut bytes = CHECKPOINT_MAGIC.to_vec();
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&postcard::to_stdvec(&v1).unwrap());
        let got = State::decode_checkpoint(&bytes).unwrap();
        s.history = vec![PolicyChange::from(old_change())];
        assert_eq!(got, s);
        assert_eq!((got.history[0].bytes_done, got.history[0].bytes_total), (0, 0));
        assert_eq!(got.history[0].extents_done, 5);
        // Re-encoded, it is version 2 and round-trips.
        let again = got.encode_checkpoint().unwrap();
        assert_eq!(u16::from_le_bytes([again[4], again[5]]), 2);
        assert_eq!(State::decode_checkpoint(&again).unwrap(), got);
    }

    /// A journal payload as builds before bytes wrote it (one
    /// `PutPolicyChange`, then variant 12 with the record without bytes):
    /// literal bytes, so a reordered `Op` breaks this test.
    #[test]
    fn a_policy_change_op_of_an_older_journal_replays() {
        let old: &[u8] = &[
            1, 12, 3, 2, 47, 97, 7, 1, 2, 2, 1, 0, 128, 128, 208, 226, 198, 191, 206, 151, 47, 1, 128, 168, 166, 156,
            206, 191, 206, 151, 47, 1, 5, 5, 2, 111, 107,
        ];
        let ops: Vec<Op> = postcard::from_bytes(old).unwrap();
        assert_eq!(ops, vec![Op::PutPolicyChangeV1 { change: old_change() }]);
        let mut s = sample();
        s.apply(&ops[0]).unwrap();
        assert_eq!(s.history, vec![PolicyChange::from(old_change())]);
        // A new record replaces it by id.
        let mut new = PolicyChange::from(old_change());
        new.bytes_done = 5 << 20;
        new.bytes_total = 5 << 20;
        let bytes = postcard::to_stdvec(&vec![Op::PutPolicyChange { change: new.clone() }]).unwrap();
        let ops: Vec<Op> = postcard::from_bytes(&bytes).unwrap();
        s.apply(&ops[0]).unwrap();
        assert_eq!(s.history, vec![new]);
    }

    proptest! {
        #[test]
        fn garbage_gives_a_typed_error_never_a_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = State::decode_checkpoint(&body);
            let mut framed = CHECKPOINT_MAGIC.to_vec();
            for version in 1..=CHECKPOINT_VERSION {
                framed.truncate(4);
                framed.extend_from_slice(&version.to_le_bytes());
                framed.extend_from_slice(&[0, 0]);
                framed.extend_from_slice(&body);
                let _ = State::decode_checkpoint(&framed);
            }
        }

        #[test]
        fn any_mutation_of_a_real_checkpoint_decodes_or_errs(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = sample().encode_checkpoint().unwrap();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            match State::decode_checkpoint(&bytes) {
                Ok(_) => prop_assert!(i >= CHECKPOINT_HEADER_LEN),
                Err(CheckpointError::BadMagic(_)) => prop_assert!(i < 4),
                Err(CheckpointError::UnknownVersion { found }) => {
                    prop_assert!((4..6).contains(&i) && !(1..=CHECKPOINT_VERSION).contains(&found))
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod checkpoint_v1_tests {
    use super::*;
    use crate::temperature::{Access, StatsParams};

    pub(super) fn v1_sample_state() -> State {
        let config = PoolConfig { default_policy: Policy::Replication { copies: 2 }.encode(), label: "fixture".into() };
        let members = (0..3)
            .map(|i| MemberRec {
                index: i,
                uuid: 0x1111_0000 + i as u128,
                state: MemberState::Online,
                path_hint: format!("/dev/loop{i}"),
            })
            .collect();
        let mut s = State::new(config, members, 1_700_000_000_000_000_000);
        let attrs = Attrs {
            kind: FileKind::File,
            perm: 0o644,
            uid: 1000,
            gid: 1000,
            size: 5000,
            atime_ns: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            nlink: 1,
            rdev: 0,
        };
        let extent = Extent {
            id: 0xabcdef,
            len: 5000,
            blake3: [7; 32],
            policy: Policy::Replication { copies: 2 }.encode(),
            frags: vec![FragLoc { member: 0, blocks: 2, block: 10 }, FragLoc { member: 2, blocks: 2, block: 40 }]
                .into_boxed_slice(),
        };
        let mut temp = crate::temperature::ExtentTemp::default();
        let p = StatsParams::default();
        for k in 0..30u32 {
            temp.record(1_700_000_000 + k * 1000, if k % 3 == 0 { Access::Write } else { Access::Read }, &p);
        }
        let ops = vec![
            Op::CreateInode { ino: 2, attrs, body: Body::File(BTreeMap::new()), policy: None },
            Op::Link { dir: ROOT_INO, name: b"f".to_vec().into_boxed_slice(), ino: 2 },
            Op::SetExtent { ino: 2, index: 0, extent: Some(extent) },
            Op::SetXattr {
                ino: 2,
                name: b"user.a".to_vec().into_boxed_slice(),
                value: Some(b"v".to_vec().into_boxed_slice()),
            },
            Op::SetPolicy { ino: ROOT_INO, policy: Some(Policy::Erasure { data: 2, parity: 1 }.encode()) },
            Op::PutTempStats { stats: vec![(0xabcdef, temp)] },
            Op::PutPolicyChange {
                change: PolicyChange {
                    id: 1,
                    scope: "inode 2 offset 0 (temperature)".into(),
                    ino: 2,
                    recursive: false,
                    policy: Policy::Erasure { data: 2, parity: 1 }.encode(),
                    started_ns: 10,
                    finished_ns: Some(20),
                    state: ChangeState::Done,
                    extents_done: 1,
                    extents_total: 1,
                    message: "cold: moved".into(),
                    bytes_done: 0,
                    bytes_total: 0,
                },
            },
            Op::SetScrub {
                scrub: ScrubRecord {
                    frequency: ScrubFrequency::Weekly,
                    intensity: 1,
                    running: true,
                    cursor: Some(0xabc),
                    pass_started_ns: 5,
                    pass_finished_ns: 4,
                    extents_done: 9,
                    bytes_done: 9000,
                    errors: 1,
                    repaired: 1,
                },
            },
        ];
        for op in &ops {
            s.apply(op).unwrap();
        }
        s
    }

    /// Bytes of checkpoint version 1, written by the build before version
    /// 2 (the last one without temperature settings) from
    /// [`v1_sample_state`]: a file with an extent, an xattr, a pinned root,
    /// access statistics, a policy change and a scrub position.
    const V1: &[u8] = include_bytes!("testdata/checkpoint_v1.bin");

    #[test]
    fn a_version_1_checkpoint_decodes_with_default_temperature_settings() {
        assert_eq!(u16::from_le_bytes([V1[4], V1[5]]), 1);
        let s = State::decode_checkpoint(V1).unwrap();
        assert_eq!(s, v1_sample_state());
        assert!(s.temperature_settings.is_empty());
        assert!(s.check().is_empty(), "{:?}", s.check());
        // The next checkpoint rewrites it in the current version.
        let again = s.encode_checkpoint().unwrap();
        assert_eq!(u16::from_le_bytes([again[4], again[5]]), CHECKPOINT_VERSION);
        assert_eq!(State::decode_checkpoint(&again).unwrap(), s);
        // Version 1 bytes are not a version 2 body (the field is not optional).
        let mut relabelled = V1.to_vec();
        relabelled[4..6].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(State::decode_checkpoint(&relabelled), Err(CheckpointError::Decode { version: 2, .. })));
        let mut longer = V1.to_vec();
        longer.push(0);
        assert!(matches!(State::decode_checkpoint(&longer), Err(CheckpointError::Decode { version: 1, .. })));
    }

    #[test]
    fn temperature_settings_are_validated_applied_and_checkpointed() {
        let mut s = v1_sample_state();
        let mut settings = BTreeMap::new();
        settings.insert("hot_ops_per_day".to_string(), "250".to_string());
        settings.insert("cold_policy".to_string(), "erasure:3+2".to_string());
        s.apply(&Op::SetTemperatureSettings { settings: settings.clone() }).unwrap();
        assert_eq!(s.temperature_settings, settings);
        let back = State::decode_checkpoint(&s.encode_checkpoint().unwrap()).unwrap();
        assert_eq!(back.temperature_settings, settings);
        for (k, v) in [("hot_ops_per_day", "0250"), ("hotness", "1"), ("cold_policy", "raid5")] {
            let mut bad = settings.clone();
            bad.insert(k.into(), v.into());
            assert!(s.apply(&Op::SetTemperatureSettings { settings: bad }).is_err(), "{k}={v}");
        }
        assert_eq!(s.temperature_settings, settings, "a refused op changed nothing");
        // The op round-trips through the journal encoding.
        let op = Op::SetTemperatureSettings { settings };
        assert_eq!(postcard::from_bytes::<Op>(&postcard::to_stdvec(&op).unwrap()).unwrap(), op);
    }
}
