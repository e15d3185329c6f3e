//! Model-based test of the engine API (after mountpoint-s3's `reftests`).
//!
//! A proptest strategy generates a pool (3-4 in-memory members, a default
//! policy) and a sequence of [`Op`]s over a deliberately tiny name alphabet
//! (`a`, `b`, `c`, at most three levels deep), so that names collide and
//! most error paths are hit: creates over existing names, renames onto
//! themselves, into their own subtree, over non-empty directories, hard links
//! between directories, writes across 1 MiB extent boundaries up to a few
//! MiB, truncates that cut extents, xattrs with CREATE / REPLACE, fsyncs,
//! syncs, and two kinds of reopen (clean close; sync then crash).
//!
//! Every op runs against the engine and against [`Model`], a `BTreeMap`
//! from paths to inodes that knows nothing but POSIX semantics (and the
//! engine's documented order of checks). After every op the engine's result
//! (Ok, or the exact `EngineError` kind) must equal the model's prediction,
//! and the namespace (paths, kinds, hard-link groups, nlink, sizes, modes)
//! must match; on `CheckAll`, after `Sync` and after every reopen the whole
//! tree must match, contents, symlink targets and xattrs included, and the
//! engine's own invariants (`State::check`, `check_allocations`) must hold.
//!
//! Shrunk failures are kept below as `regression_*` tests and their seeds
//! in `proptest-regressions/engine_model.txt`. `DFS_MODEL_CASES=N` and
//! `DFS_MODEL_OPS=M` run more and longer cases (default 150 cases of up to
//! 80 ops: about 10 s in release on two cores); `DFS_MODEL_STATS=1` prints
//! how often each op succeeded.

mod common;

use common::mem_pool::open_pool as open;
use dfs_format::Policy;
use dynamicfs::device::{Device, MemDevice};
use dynamicfs::engine::{EngineError, FileKind, Ino, Pool, RenameFlags, SetAttr, XattrMode, ROOT_INO};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

const MIB: u64 = 1 << 20;
const NAMES: [&str; 3] = ["a", "b", "c"];
const XATTRS: [&str; 2] = ["user.x", "user.y"];
const POLICIES: [&str; 4] = ["replication:1", "replication:2", "replication:3", "erasure:2+1"];

/// A path as indexes into [`NAMES`]; empty = the root.
type MPath = Vec<u8>;

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        return "/".into();
    }
    p.iter().map(|c| NAMES[*c as usize]).collect::<Vec<_>>().join("/")
}

fn name(p: &[u8]) -> &'static [u8] {
    NAMES[*p.last().expect("not the root") as usize].as_bytes()
}

/// One step of a test case, over paths of type `P`: [`Sel`] as generated,
/// [`MPath`] once resolved against the model's current tree.
#[derive(Debug, Clone)]
enum Op<P> {
    Create(P),
    Mkdir(P),
    Symlink(P, u8),
    /// Write `len` bytes of pattern `seed` (0 = zeros) at `offset`.
    Write {
        path: P,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate(P, u64),
    /// flags: 0 none, 1 NOREPLACE, 2 EXCHANGE, 3 both (EINVAL).
    Rename {
        from: P,
        to: P,
        flags: u8,
    },
    Link {
        from: P,
        to: P,
    },
    Unlink(P),
    Rmdir(P),
    /// mode: 0 any, 1 CREATE, 2 REPLACE; the value is `len` bytes of `len`.
    SetXattr {
        path: P,
        name: u8,
        len: u16,
        mode: u8,
    },
    RemoveXattr(P, u8),
    Chmod(P, u16),
    Fsync(P),
    /// Open a handle on a regular file (other kinds: nothing happens).
    Open(P),
    /// Release one of the open handles (an unlinked file goes away).
    Release(prop::sample::Index),
    /// Write through an open handle (the file may be unlinked by now).
    WriteHandle {
        handle: prop::sample::Index,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Sync,
    CheckAll,
    /// `close` then open.
    Reopen,
    /// `sync_all`, drop without close (a crash), open: nothing may be lost.
    CrashAfterSync,
}

/// How a generated op names a path. Most ops pick among what exists (so
/// they mostly succeed and build a tree); `Raw` paths exercise the errors.
#[derive(Debug, Clone)]
enum Sel {
    Raw(MPath),
    /// Any existing node.
    Node(prop::sample::Index),
    /// An existing regular file (else any node).
    File(prop::sample::Index),
    /// An existing directory other than the root (else any node).
    Dir(prop::sample::Index),
    /// A name in an existing directory (the root included).
    NewIn(prop::sample::Index, u8),
}

impl Model {
    fn pick(&self, sel: &Sel) -> MPath {
        let of_kind = |want: Option<fn(&Kind) -> bool>, i: &prop::sample::Index| -> Option<MPath> {
            let c: Vec<&MPath> = self
                .ns
                .iter()
                .filter(|(_, id)| want.is_none_or(|f| f(&self.inodes[*id].kind)))
                .map(|(p, _)| p)
                .collect();
            (!c.is_empty()).then(|| c[i.index(c.len())].clone())
        };
        let fallback = vec![0u8];
        match sel {
            Sel::Raw(p) => p.clone(),
            Sel::Node(i) => of_kind(None, i).unwrap_or(fallback),
            Sel::File(i) => {
                of_kind(Some(|k| matches!(k, Kind::File(_))), i).or_else(|| of_kind(None, i)).unwrap_or(fallback)
            }
            Sel::Dir(i) => of_kind(Some(|k| *k == Kind::Dir), i).or_else(|| of_kind(None, i)).unwrap_or(fallback),
            Sel::NewIn(i, n) => {
                let mut dirs: Vec<MPath> = vec![vec![]];
                dirs.extend(self.ns.iter().filter(|(_, id)| self.is_dir(**id)).map(|(p, _)| p.clone()));
                let mut p = dirs[i.index(dirs.len())].clone();
                p.push(*n);
                p
            }
        }
    }

    fn resolve_op(&self, op: &Op<Sel>) -> Op<MPath> {
        let r = |s: &Sel| self.pick(s);
        match op {
            Op::Create(p) => Op::Create(r(p)),
            Op::Mkdir(p) => Op::Mkdir(r(p)),
            Op::Symlink(p, t) => Op::Symlink(r(p), *t),
            Op::Write { path, offset, len, seed } => {
                Op::Write { path: r(path), offset: *offset, len: *len, seed: *seed }
            }
            Op::Truncate(p, s) => Op::Truncate(r(p), *s),
            Op::Rename { from, to, flags } => Op::Rename { from: r(from), to: r(to), flags: *flags },
            Op::Link { from, to } => Op::Link { from: r(from), to: r(to) },
            Op::Unlink(p) => Op::Unlink(r(p)),
            Op::Rmdir(p) => Op::Rmdir(r(p)),
            Op::SetXattr { path, name, len, mode } => {
                Op::SetXattr { path: r(path), name: *name, len: *len, mode: *mode }
            }
            Op::RemoveXattr(p, n) => Op::RemoveXattr(r(p), *n),
            Op::Chmod(p, m) => Op::Chmod(r(p), *m),
            Op::Fsync(p) => Op::Fsync(r(p)),
            Op::Open(p) => Op::Open(r(p)),
            Op::Release(i) => Op::Release(*i),
            Op::WriteHandle { handle, offset, len, seed } => {
                Op::WriteHandle { handle: *handle, offset: *offset, len: *len, seed: *seed }
            }
            Op::Sync => Op::Sync,
            Op::CheckAll => Op::CheckAll,
            Op::Reopen => Op::Reopen,
            Op::CrashAfterSync => Op::CrashAfterSync,
        }
    }
}

/// Error kinds the model predicts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ek {
    NotFound,
    Exists,
    NotEmpty,
    NotDir,
    IsDir,
    Invalid,
    NotPermitted,
    NoData,
    /// Anything the model never predicts (the test fails on it).
    Unexpected(String),
}

fn ek(e: EngineError) -> Ek {
    match e {
        EngineError::NotFound => Ek::NotFound,
        EngineError::Exists => Ek::Exists,
        EngineError::NotEmpty => Ek::NotEmpty,
        EngineError::NotDir => Ek::NotDir,
        EngineError::IsDir => Ek::IsDir,
        EngineError::Invalid(_) => Ek::Invalid,
        EngineError::NotPermitted => Ek::NotPermitted,
        EngineError::NoData => Ek::NoData,
        other => Ek::Unexpected(other.to_string()),
    }
}

fn pattern(len: usize, seed: u8, offset: u64) -> Vec<u8> {
    if seed == 0 {
        return vec![0; len];
    }
    // Depends on the absolute file offset and the seed, never zero.
    (0..len as u64)
        .map(|i| {
            let x = (offset + i).wrapping_mul(0x9E37_79B9) >> 7;
            (x as u8 ^ seed) | 1
        })
        .collect()
}

// ---------------------------------------------------------------- model

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone)]
struct MInode {
    kind: Kind,
    perm: u16,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The expected tree: path → inode id (hard links share ids); id 0 is the
/// root. `handles` are the open handles (inode ids), in opening order.
#[derive(Debug, Clone)]
struct Model {
    ns: BTreeMap<MPath, u64>,
    inodes: HashMap<u64, MInode>,
    handles: Vec<u64>,
    next: u64,
}

type MResult = Result<(), Ek>;

impl Model {
    fn new() -> Model {
        let mut inodes = HashMap::new();
        inodes.insert(0, MInode { kind: Kind::Dir, perm: 0o755, xattrs: BTreeMap::new() });
        Model { ns: BTreeMap::new(), inodes, handles: Vec::new(), next: 1 }
    }

    fn id(&self, p: &[u8]) -> Option<u64> {
        if p.is_empty() {
            Some(0)
        } else {
            self.ns.get(p).copied()
        }
    }

    fn is_dir(&self, id: u64) -> bool {
        self.inodes[&id].kind == Kind::Dir
    }

    /// Path resolution as a chain of `lookup`s: NotDir through a non-directory,
    /// NotFound for a missing component.
    fn resolve(&self, p: &[u8]) -> Result<u64, Ek> {
        let mut cur = 0;
        for i in 0..p.len() {
            if !self.is_dir(cur) {
                return Err(Ek::NotDir);
            }
            cur = self.id(&p[..=i]).ok_or(Ek::NotFound)?;
        }
        Ok(cur)
    }

    fn parent_of(p: &[u8]) -> &[u8] {
        &p[..p.len() - 1]
    }

    fn is_empty_dir(&self, p: &[u8]) -> bool {
        !self.ns.keys().any(|k| k.len() > p.len() && k.starts_with(p))
    }

    fn nlink(&self, id: u64) -> u32 {
        if id == 0 || self.is_dir(id) {
            let path: MPath =
                if id == 0 { vec![] } else { self.ns.iter().find(|(_, v)| **v == id).expect("dir path").0.clone() };
            2 + self
                .ns
                .iter()
                .filter(|(k, v)| k.len() == path.len() + 1 && k.starts_with(&path) && self.is_dir(**v))
                .count() as u32
        } else {
            self.ns.values().filter(|v| **v == id).count() as u32
        }
    }

    /// An inode goes away with its last link, unless a handle keeps it.
    fn drop_if_unlinked(&mut self, id: u64) {
        if !self.ns.values().any(|v| *v == id) && !self.handles.contains(&id) {
            self.inodes.remove(&id);
        }
    }

    /// A reopen: handles are gone, and so are the files only they kept.
    fn forget_handles(&mut self) {
        for id in std::mem::take(&mut self.handles) {
            self.drop_if_unlinked(id);
        }
    }

    fn write(&mut self, id: u64, offset: u64, len: usize, seed: u8) {
        let Kind::File(c) = &mut self.inodes.get_mut(&id).expect("inode").kind else { panic!("write to a non-file") };
        let end = offset as usize + len;
        if c.len() < end {
            c.resize(end, 0);
        }
        c[offset as usize..end].copy_from_slice(&pattern(len, seed, offset));
    }

    fn new_node(&mut self, p: &[u8], kind: Kind, perm: u16) -> MResult {
        let parent = self.resolve(Self::parent_of(p))?;
        if !self.is_dir(parent) {
            return Err(Ek::NotDir);
        }
        if self.ns.contains_key(p) {
            return Err(Ek::Exists);
        }
        let id = self.next;
        self.next += 1;
        self.inodes.insert(id, MInode { kind, perm, xattrs: BTreeMap::new() });
        self.ns.insert(p.to_vec(), id);
        Ok(())
    }

    fn file_mut(&mut self, p: &[u8]) -> Result<&mut Vec<u8>, Ek> {
        let id = self.resolve(p)?;
        match &mut self.inodes.get_mut(&id).expect("inode").kind {
            Kind::File(c) => Ok(c),
            Kind::Dir => Err(Ek::IsDir),
            Kind::Symlink(_) => Err(Ek::Invalid),
        }
    }

    /// Move every key of the subtree at `from` to `to` (in `out`).
    fn take_subtree(&mut self, from: &[u8]) -> Vec<(MPath, u64)> {
        let keys: Vec<MPath> = self.ns.keys().filter(|k| k.starts_with(from)).cloned().collect();
        keys.into_iter().map(|k| (k[from.len()..].to_vec(), self.ns.remove(&k).expect("key"))).collect()
    }

    fn put_subtree(&mut self, to: &[u8], items: Vec<(MPath, u64)>) {
        for (rest, id) in items {
            let mut k = to.to_vec();
            k.extend(rest);
            self.ns.insert(k, id);
        }
    }

    /// renameat2, in the engine's order of checks.
    fn rename(&mut self, from: &[u8], to: &[u8], flags: u8) -> MResult {
        let sp = self.resolve(Self::parent_of(from))?;
        let dp = self.resolve(Self::parent_of(to))?;
        let (noreplace, exchange) = (flags & 1 != 0, flags & 2 != 0);
        if noreplace && exchange {
            return Err(Ek::Invalid);
        }
        if !self.is_dir(sp) {
            return Err(Ek::NotDir);
        }
        let src = self.id(from).ok_or(Ek::NotFound)?;
        if !self.is_dir(dp) {
            return Err(Ek::NotDir);
        }
        let dst = self.id(to);
        let src_is_dir = self.is_dir(src);
        // A directory may not move into itself or below itself.
        if src_is_dir && Self::parent_of(to).starts_with(from) {
            return Err(Ek::Invalid);
        }
        if exchange {
            let dst = dst.ok_or(Ek::NotFound)?;
            if self.is_dir(dst) && Self::parent_of(from).starts_with(to) {
                return Err(Ek::Invalid);
            }
            if src == dst {
                return Ok(());
            }
            let a = self.take_subtree(from);
            let b = self.take_subtree(to);
            self.put_subtree(to, a);
            self.put_subtree(from, b);
            return Ok(());
        }
        if let Some(dst) = dst {
            if noreplace {
                return Err(Ek::Exists);
            }
            if dst == src {
                return Ok(());
            }
            match (src_is_dir, self.is_dir(dst)) {
                (true, false) => return Err(Ek::NotDir),
                (false, true) => return Err(Ek::IsDir),
                (true, true) if !self.is_empty_dir(to) => return Err(Ek::NotEmpty),
                _ => {}
            }
            self.ns.remove(to);
            self.drop_if_unlinked(dst);
        }
        let items = self.take_subtree(from);
        self.put_subtree(to, items);
        Ok(())
    }

    fn link(&mut self, from: &[u8], to: &[u8]) -> MResult {
        let src = self.resolve(from)?;
        let dp = self.resolve(Self::parent_of(to))?;
        if self.is_dir(src) {
            return Err(Ek::NotPermitted);
        }
        if !self.is_dir(dp) {
            return Err(Ek::NotDir);
        }
        if self.ns.contains_key(to) {
            return Err(Ek::Exists);
        }
        self.ns.insert(to.to_vec(), src);
        Ok(())
    }

    fn unlink(&mut self, p: &[u8]) -> MResult {
        let parent = self.resolve(Self::parent_of(p))?;
        if !self.is_dir(parent) {
            return Err(Ek::NotDir);
        }
        let id = self.id(p).ok_or(Ek::NotFound)?;
        if self.is_dir(id) {
            return Err(Ek::IsDir);
        }
        self.ns.remove(p);
        self.drop_if_unlinked(id);
        Ok(())
    }

    fn rmdir(&mut self, p: &[u8]) -> MResult {
        let parent = self.resolve(Self::parent_of(p))?;
        if !self.is_dir(parent) {
            return Err(Ek::NotDir);
        }
        let id = self.id(p).ok_or(Ek::NotFound)?;
        if !self.is_dir(id) {
            return Err(Ek::NotDir);
        }
        if !self.is_empty_dir(p) {
            return Err(Ek::NotEmpty);
        }
        self.ns.remove(p);
        self.inodes.remove(&id);
        Ok(())
    }

    fn apply(&mut self, op: &Op<MPath>) -> MResult {
        match op {
            Op::Create(p) => self.new_node(p, Kind::File(Vec::new()), 0o644),
            Op::Mkdir(p) => self.new_node(p, Kind::Dir, 0o755),
            Op::Symlink(p, t) => self.new_node(p, Kind::Symlink(symlink_target(*t)), 0o777),
            Op::Write { path, offset, len, seed } => {
                self.file_mut(path)?;
                let id = self.resolve(path)?;
                self.write(id, *offset, *len, *seed);
                Ok(())
            }
            Op::Truncate(p, size) => {
                let c = self.file_mut(p)?;
                c.resize(*size as usize, 0);
                Ok(())
            }
            Op::Rename { from, to, flags } => self.rename(from, to, *flags),
            Op::Link { from, to } => self.link(from, to),
            Op::Unlink(p) => self.unlink(p),
            Op::Rmdir(p) => self.rmdir(p),
            Op::SetXattr { path, name, len, mode } => {
                let id = self.resolve(path)?;
                let x = &mut self.inodes.get_mut(&id).expect("inode").xattrs;
                let key = XATTRS[*name as usize].as_bytes().to_vec();
                match (mode, x.contains_key(&key)) {
                    (1, true) => return Err(Ek::Exists),
                    (2, false) => return Err(Ek::NoData),
                    _ => {}
                }
                x.insert(key, xattr_value(*len));
                Ok(())
            }
            Op::RemoveXattr(p, name) => {
                let id = self.resolve(p)?;
                let x = &mut self.inodes.get_mut(&id).expect("inode").xattrs;
                x.remove(XATTRS[*name as usize].as_bytes()).map(|_| ()).ok_or(Ek::NoData)
            }
            Op::Chmod(p, perm) => {
                let id = self.resolve(p)?;
                self.inodes.get_mut(&id).expect("inode").perm = *perm;
                Ok(())
            }
            Op::Fsync(p) => self.resolve(p).map(|_| ()),
            Op::Open(p) => {
                let id = self.resolve(p)?;
                if matches!(self.inodes[&id].kind, Kind::File(_)) {
                    self.handles.push(id);
                }
                Ok(())
            }
            Op::Release(i) => {
                if !self.handles.is_empty() {
                    let id = self.handles.remove(i.index(self.handles.len()));
                    self.drop_if_unlinked(id);
                }
                Ok(())
            }
            Op::WriteHandle { handle, offset, len, seed } => {
                if !self.handles.is_empty() {
                    let id = self.handles[handle.index(self.handles.len())];
                    self.write(id, *offset, *len, *seed);
                }
                Ok(())
            }
            Op::Reopen | Op::CrashAfterSync => {
                self.forget_handles();
                Ok(())
            }
            Op::Sync | Op::CheckAll => Ok(()),
        }
    }
}

fn symlink_target(t: u8) -> Vec<u8> {
    format!("../target-{t}").into_bytes()
}

fn xattr_value(len: u16) -> Vec<u8> {
    vec![len as u8; len as usize]
}

// ---------------------------------------------------------------- engine side

struct Harness {
    devs: Vec<Arc<MemDevice>>,
    pool: Option<Pool>,
    /// Open handles (inode numbers), in the model's order.
    handles: Vec<Ino>,
}

impl Harness {
    fn new(members: usize, policy: &str) -> Harness {
        let policy: Policy = policy.parse().expect("policy");
        let devs: Vec<Arc<MemDevice>> =
            (0..members).map(|i| Arc::new(MemDevice::named(&format!("mem{i}"), 96 * MIB, 4096))).collect();
        let refs: Vec<&dyn Device> = devs.iter().map(|d| d.as_ref() as &dyn Device).collect();
        dynamicfs::mkfs::format_devices(&refs, "model", policy).expect("mkfs");
        let pool = Some(open(&devs));
        Harness { devs, pool, handles: Vec::new() }
    }

    fn pool(&self) -> &Pool {
        self.pool.as_ref().expect("pool open")
    }

    fn resolve(&self, p: &[u8]) -> Result<Ino, Ek> {
        let mut ino = ROOT_INO;
        for c in p {
            ino = self.pool().lookup(ino, NAMES[*c as usize].as_bytes()).map_err(ek)?.0;
        }
        Ok(ino)
    }

    fn apply(&mut self, op: &Op<MPath>) -> MResult {
        let pool = self.pool.as_ref().expect("pool open");
        let parent = |p: &[u8]| self.resolve(Model::parent_of(p));
        match op {
            Op::Create(p) => pool.create(parent(p)?, name(p), FileKind::File, 0o644, 0, 0, 0).map(|_| ()).map_err(ek),
            Op::Mkdir(p) => pool.mkdir(parent(p)?, name(p), 0o755, 0, 0).map(|_| ()).map_err(ek),
            Op::Symlink(p, t) => pool.symlink(parent(p)?, name(p), &symlink_target(*t), 0, 0).map(|_| ()).map_err(ek),
            Op::Write { path, offset, len, seed } => {
                let ino = self.resolve(path)?;
                let data = pattern(*len, *seed, *offset);
                match pool.write(ino, *offset, &data) {
                    Ok(n) if n == *len => Ok(()),
                    Ok(n) => Err(Ek::Unexpected(format!("short write {n} of {len}"))),
                    Err(e) => Err(ek(e)),
                }
            }
            Op::Truncate(p, size) => {
                let ino = self.resolve(p)?;
                pool.setattr(ino, SetAttr { size: Some(*size), ..Default::default() }).map(|_| ()).map_err(ek)
            }
            Op::Rename { from, to, flags } => {
                let sp = parent(from)?;
                let dp = parent(to)?;
                let flags = RenameFlags { noreplace: flags & 1 != 0, exchange: flags & 2 != 0 };
                pool.rename(sp, name(from), dp, name(to), flags).map_err(ek)
            }
            Op::Link { from, to } => {
                let ino = self.resolve(from)?;
                let dp = parent(to)?;
                pool.link(ino, dp, name(to)).map(|_| ()).map_err(ek)
            }
            Op::Unlink(p) => pool.unlink(parent(p)?, name(p)).map_err(ek),
            Op::Rmdir(p) => pool.rmdir(parent(p)?, name(p)).map_err(ek),
            Op::SetXattr { path, name, len, mode } => {
                let ino = self.resolve(path)?;
                let mode = [XattrMode::Any, XattrMode::Create, XattrMode::Replace][*mode as usize];
                pool.setxattr(ino, XATTRS[*name as usize].as_bytes(), &xattr_value(*len), mode).map_err(ek)
            }
            Op::RemoveXattr(p, name) => {
                let ino = self.resolve(p)?;
                pool.removexattr(ino, XATTRS[*name as usize].as_bytes()).map_err(ek)
            }
            Op::Chmod(p, perm) => {
                let ino = self.resolve(p)?;
                pool.setattr(ino, SetAttr { perm: Some(*perm), ..Default::default() }).map(|_| ()).map_err(ek)
            }
            Op::Fsync(p) => {
                let ino = self.resolve(p)?;
                pool.fsync(ino).map_err(ek)
            }
            Op::Open(p) => {
                let ino = self.resolve(p)?;
                if pool.getattr(ino).map_err(ek)?.kind == FileKind::File {
                    pool.open_file(ino).map_err(ek)?;
                    self.handles.push(ino);
                }
                Ok(())
            }
            Op::Release(i) => {
                if self.handles.is_empty() {
                    return Ok(());
                }
                let ino = self.handles.remove(i.index(self.handles.len()));
                pool.release(ino).map_err(ek)
            }
            Op::WriteHandle { handle, offset, len, seed } => {
                if self.handles.is_empty() {
                    return Ok(());
                }
                let ino = self.handles[handle.index(self.handles.len())];
                match pool.write(ino, *offset, &pattern(*len, *seed, *offset)) {
                    Ok(n) if n == *len => Ok(()),
                    Ok(n) => Err(Ek::Unexpected(format!("short write {n} of {len}"))),
                    Err(e) => Err(ek(e)),
                }
            }
            Op::Sync | Op::CheckAll => pool.sync_all().map_err(ek),
            Op::Reopen => {
                self.pool.take().expect("pool").close().map_err(ek)?;
                self.handles.clear();
                self.pool = Some(open(&self.devs));
                Ok(())
            }
            Op::CrashAfterSync => {
                pool.sync_all().map_err(ek)?;
                drop(self.pool.take());
                self.handles.clear();
                self.pool = Some(open(&self.devs));
                Ok(())
            }
        }
    }
}

/// What one path shows (the cheap part: no file contents).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    kind: FileKind,
    nlink: u32,
    size: u64,
    perm: u16,
}

/// Walk the engine's tree: path → (ino, shape).
fn engine_tree(pool: &Pool) -> Result<BTreeMap<MPath, (Ino, Shape)>, String> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<(MPath, Ino)> = vec![(vec![], ROOT_INO)];
    while let Some((path, dir)) = stack.pop() {
        for e in pool.readdir(dir).map_err(|e| format!("readdir {}: {e}", show(&path)))? {
            let c = NAMES
                .iter()
                .position(|n| n.as_bytes() == e.name)
                .ok_or_else(|| format!("{}: unexpected name {:?}", show(&path), String::from_utf8_lossy(&e.name)))?;
            let mut p = path.clone();
            p.push(c as u8);
            let a = pool.getattr(e.ino).map_err(|err| format!("getattr {}: {err}", show(&p)))?;
            if a.kind != e.kind {
                return Err(format!("{}: readdir kind {:?}, getattr kind {:?}", show(&p), e.kind, a.kind));
            }
            if a.kind == FileKind::Dir {
                stack.push((p.clone(), e.ino));
            }
            out.insert(p, (e.ino, Shape { kind: a.kind, nlink: a.nlink, size: a.size, perm: a.perm }));
        }
    }
    Ok(out)
}

fn model_shape(m: &Model, id: u64) -> Shape {
    let i = &m.inodes[&id];
    let (kind, size) = match &i.kind {
        Kind::File(c) => (FileKind::File, c.len() as u64),
        Kind::Dir => (FileKind::Dir, 0),
        Kind::Symlink(t) => (FileKind::Symlink, t.len() as u64),
    };
    Shape { kind, nlink: m.nlink(id), size, perm: i.perm }
}

/// Compare the namespace and the open handles (and with `full`, contents,
/// targets and xattrs).
fn compare(pool: &Pool, handles: &[Ino], m: &Model, full: bool) -> Result<(), String> {
    let tree = engine_tree(pool)?;
    let epaths: Vec<String> = tree.keys().map(|p| show(p)).collect();
    let mpaths: Vec<String> = m.ns.keys().map(|p| show(p)).collect();
    if epaths != mpaths {
        return Err(format!("paths differ:\n engine {epaths:?}\n model  {mpaths:?}"));
    }
    let mut ino_of: HashMap<u64, Ino> = HashMap::new();
    let mut id_of: HashMap<Ino, u64> = HashMap::new();
    for (p, (ino, shape)) in &tree {
        let id = m.ns[p];
        if *ino_of.entry(id).or_insert(*ino) != *ino || *id_of.entry(*ino).or_insert(id) != id {
            return Err(format!("{}: hard-link groups differ (engine ino {ino}, model id {id})", show(p)));
        }
        let expected = model_shape(m, id);
        if *shape != expected {
            return Err(format!("{}: engine {shape:?}, model {expected:?}", show(p)));
        }
    }
    let root = pool.getattr(ROOT_INO).map_err(|e| e.to_string())?;
    if root.nlink != m.nlink(0) {
        return Err(format!("root nlink {} vs model {}", root.nlink, m.nlink(0)));
    }
    // Open handles: same files, nlink 0 once unlinked, and (full) same bytes.
    if handles.len() != m.handles.len() {
        return Err(format!("{} handles open, model {}", handles.len(), m.handles.len()));
    }
    for (k, (ino, id)) in handles.iter().zip(&m.handles).enumerate() {
        if *ino_of.entry(*id).or_insert(*ino) != *ino {
            return Err(format!("handle {k}: engine ino {ino} is not the model's file"));
        }
        let a = pool.getattr(*ino).map_err(|e| format!("handle {k}: getattr: {e}"))?;
        let expected = model_shape(m, *id);
        let got = Shape { kind: a.kind, nlink: a.nlink, size: a.size, perm: a.perm };
        if got != expected {
            return Err(format!("handle {k} (ino {ino}): engine {got:?}, model {expected:?}"));
        }
        id_of.insert(*ino, *id);
    }
    if !full {
        return Ok(());
    }
    for (ino, id) in &id_of {
        let mi = &m.inodes[id];
        let path =
            m.ns.iter().find(|(_, v)| *v == id).map(|(p, _)| show(p)).unwrap_or_else(|| format!("<unlinked {ino}>"));
        match &mi.kind {
            Kind::File(c) => {
                let got = pool.read(*ino, 0, c.len() + 4096).map_err(|e| format!("{path}: read: {e}"))?;
                if got != *c {
                    let at = got.iter().zip(c.iter()).position(|(a, b)| a != b).unwrap_or(got.len().min(c.len()));
                    return Err(format!(
                        "{path}: content differs at byte {at} (engine {} bytes, model {})",
                        got.len(),
                        c.len()
                    ));
                }
            }
            Kind::Symlink(t) => {
                let got = pool.readlink(*ino).map_err(|e| format!("{path}: readlink: {e}"))?;
                if got != *t {
                    return Err(format!("{path}: symlink target differs"));
                }
            }
            Kind::Dir => {}
        }
        let mut names = pool.listxattr(*ino).map_err(|e| format!("{path}: listxattr: {e}"))?;
        names.sort();
        let expected: Vec<Vec<u8>> = mi.xattrs.keys().cloned().collect();
        if names != expected {
            return Err(format!("{path}: xattr names {names:?} vs model {expected:?}"));
        }
        for (k, v) in &mi.xattrs {
            if pool.getxattr(*ino, k).map_err(|e| format!("{path}: getxattr: {e}"))? != *v {
                return Err(format!("{path}: xattr {} differs", String::from_utf8_lossy(k)));
            }
        }
    }
    // Files kept only by a handle are unreachable, and rightly so.
    let orphans: Vec<String> = handles.iter().map(|i| format!("inode {i}: unreachable")).collect();
    let problems: Vec<String> = pool.state_snapshot().check().into_iter().filter(|p| !orphans.contains(p)).collect();
    if !problems.is_empty() {
        return Err(format!("State::check: {problems:?}"));
    }
    Ok(())
}

/// Outcomes per op kind (name → (ok, err)), printed with `DFS_MODEL_STATS=1`.
static STATS: Mutex<BTreeMap<&'static str, (u64, u64)>> = Mutex::new(BTreeMap::new());

fn op_name<P>(op: &Op<P>) -> &'static str {
    match op {
        Op::Create(_) => "create",
        Op::Mkdir(_) => "mkdir",
        Op::Symlink(..) => "symlink",
        Op::Write { .. } => "write",
        Op::Truncate(..) => "truncate",
        Op::Rename { .. } => "rename",
        Op::Link { .. } => "link",
        Op::Unlink(_) => "unlink",
        Op::Rmdir(_) => "rmdir",
        Op::SetXattr { .. } => "setxattr",
        Op::RemoveXattr(..) => "removexattr",
        Op::Chmod(..) => "chmod",
        Op::Fsync(_) => "fsync",
        Op::Open(_) => "open",
        Op::Release(_) => "release",
        Op::WriteHandle { .. } => "write_handle",
        Op::Sync => "sync",
        Op::CheckAll => "check_all",
        Op::Reopen => "reopen",
        Op::CrashAfterSync => "crash_after_sync",
    }
}

/// Run one case; Err describes the first divergence.
fn run_case(members: usize, policy: &str, ops: &[Op<Sel>]) -> Result<(), String> {
    let mut h = Harness::new(members, policy);
    let mut m = Model::new();
    for (i, op) in ops.iter().enumerate() {
        let op = &m.resolve_op(op);
        let expected = m.apply(op);
        let got = h.apply(op);
        if got != expected {
            return Err(format!("op {i} {op:?}: engine {got:?}, model {expected:?}"));
        }
        let mut stats = STATS.lock().unwrap_or_else(|p| p.into_inner());
        let e = stats.entry(op_name(op)).or_default();
        if got.is_ok() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
        drop(stats);
        let full = matches!(op, Op::CheckAll | Op::Sync | Op::Reopen | Op::CrashAfterSync);
        compare(h.pool(), &h.handles, &m, full).map_err(|e| format!("after op {i} {op:?}: {e}"))?;
        if full {
            // Quiescent after a sync: every allocated block is referenced once.
            let problems = h.pool().check_allocations();
            if !problems.is_empty() {
                return Err(format!("after op {i} {op:?}: allocations: {problems:?}"));
            }
        }
    }
    // The end: everything, then once more after a clean reopen.
    m.apply(&Op::Reopen).expect("model reopen");
    h.apply(&Op::Reopen).map_err(|e| format!("final reopen: {e:?}"))?;
    compare(h.pool(), &h.handles, &m, true).map_err(|e| format!("after the final reopen: {e}"))?;
    Ok(())
}

// ---------------------------------------------------------------- strategies

fn raw() -> impl Strategy<Value = Sel> {
    prop_oneof![
        4 => prop::collection::vec(0u8..3, 1..=2),
        1 => prop::collection::vec(0u8..3, 3..=3),
    ]
    .prop_map(Sel::Raw)
}

fn idx() -> impl Strategy<Value = prop::sample::Index> {
    any::<prop::sample::Index>()
}

/// A new name (mostly in an existing directory).
fn new_path() -> impl Strategy<Value = Sel> {
    prop_oneof![3 => (idx(), 0u8..3).prop_map(|(i, n)| Sel::NewIn(i, n)), 1 => raw()]
}

/// Preferably an existing file.
fn file_path() -> impl Strategy<Value = Sel> {
    prop_oneof![5 => idx().prop_map(Sel::File), 1 => idx().prop_map(Sel::Node), 1 => raw()]
}

/// Any existing node, sometimes a made-up path.
fn node_path() -> impl Strategy<Value = Sel> {
    prop_oneof![4 => idx().prop_map(Sel::Node), 1 => raw()]
}

fn dir_path() -> impl Strategy<Value = Sel> {
    prop_oneof![4 => idx().prop_map(Sel::Dir), 1 => idx().prop_map(Sel::Node), 1 => raw()]
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        3 => (0u64..=3, 0u64..8192).prop_map(|(k, d)| (k * MIB).saturating_sub(4096) + d),
        3 => 0u64..(5 * MIB / 2),
    ]
}

fn length() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 1usize..300,
        2 => Just(4096usize),
        3 => 1usize..70_000,
        1 => Just(MIB as usize + 3),
        1 => (MIB as usize / 2)..(3 * MIB as usize / 2),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        3 => (0u64..=3, 0u64..8192).prop_map(|(k, d)| (k * MIB).saturating_sub(4096) + d),
        2 => 0u64..(3 * MIB),
    ]
}

fn op() -> impl Strategy<Value = Op<Sel>> {
    prop_oneof![
        10 => new_path().prop_map(Op::Create),
        6 => new_path().prop_map(Op::Mkdir),
        3 => (new_path(), 0u8..4).prop_map(|(p, t)| Op::Symlink(p, t)),
        18 => (file_path(), offset(), length(), prop_oneof![1 => Just(0u8), 6 => 1u8..=255])
            .prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        5 => (file_path(), size()).prop_map(|(p, s)| Op::Truncate(p, s)),
        10 => (
            node_path(),
            prop_oneof![2 => new_path(), 2 => node_path()],
            prop_oneof![4 => Just(0u8), 2 => Just(1u8), 3 => Just(2u8), 1 => Just(3u8)]
        )
            .prop_map(|(from, to, flags)| Op::Rename { from, to, flags }),
        5 => (file_path(), prop_oneof![3 => new_path(), 1 => node_path()]).prop_map(|(from, to)| Op::Link { from, to }),
        6 => file_path().prop_map(Op::Unlink),
        4 => dir_path().prop_map(Op::Rmdir),
        4 => (node_path(), 0u8..2, prop_oneof![4 => 0u16..40, 1 => Just(5000u16)], 0u8..3)
            .prop_map(|(path, name, len, mode)| Op::SetXattr { path, name, len, mode }),
        2 => (node_path(), 0u8..2).prop_map(|(p, n)| Op::RemoveXattr(p, n)),
        2 => (node_path(), 0u16..0o1000).prop_map(|(p, m)| Op::Chmod(p, m)),
        5 => file_path().prop_map(Op::Fsync),
        3 => file_path().prop_map(Op::Open),
        2 => idx().prop_map(Op::Release),
        3 => (idx(), offset(), length(), 1u8..=255)
            .prop_map(|(handle, offset, len, seed)| Op::WriteHandle { handle, offset, len, seed }),
        3 => Just(Op::Sync),
        3 => Just(Op::CheckAll),
        2 => Just(Op::Reopen),
        2 => Just(Op::CrashAfterSync),
    ]
}

fn case() -> impl Strategy<Value = (usize, usize, Vec<Op<Sel>>)> {
    let max_ops = std::env::var("DFS_MODEL_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(80usize);
    (3usize..=4, 0..POLICIES.len(), prop::collection::vec(op(), 1..max_ops.max(2)))
}

#[test]
fn engine_matches_model() {
    let cases = std::env::var("DFS_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(150);
    let config = Config {
        cases,
        max_shrink_iters: 4000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/engine_model.txt"))),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner
        .run(&case(), |(members, policy, ops)| run_case(members, POLICIES[policy], &ops).map_err(TestCaseError::fail));
    if std::env::var_os("DFS_MODEL_STATS").is_some() {
        for (name, (ok, err)) in STATS.lock().unwrap().iter() {
            eprintln!("{name:>16}: {ok:>6} ok {err:>6} err");
        }
    }
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------- regressions

/// A fixed path, for hand-written and regression cases.
fn p(s: &str) -> Sel {
    Sel::Raw(s.split('/').map(|c| NAMES.iter().position(|n| *n == c).expect("name") as u8).collect())
}

#[test]
fn smoke_every_op_once() {
    let ops = vec![
        Op::Mkdir(p("a")),
        Op::Create(p("a/b")),
        Op::Write { path: p("a/b"), offset: MIB - 10, len: 20, seed: 7 },
        Op::Link { from: p("a/b"), to: p("c") },
        Op::Symlink(p("b"), 1),
        Op::SetXattr { path: p("c"), name: 0, len: 3, mode: 1 },
        Op::Rename { from: p("a"), to: p("b"), flags: 2 },
        Op::Truncate(p("c"), 5),
        Op::Fsync(p("c")),
        Op::Reopen,
        Op::Rename { from: p("b/b"), to: p("c"), flags: 0 },
        Op::RemoveXattr(p("c"), 0),
        Op::Unlink(p("c")),
        Op::Rmdir(p("b")),
        Op::Chmod(p("a"), 0o700),
        Op::CrashAfterSync,
    ];
    run_case(3, "replication:2", &ops).unwrap();
}
