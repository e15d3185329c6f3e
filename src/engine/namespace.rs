//! # Namespace operations: the engine API the front-ends call
//!
//! Typed calls (lookup, create, mkdir, unlink, rmdir, rename with
//! NOREPLACE / EXCHANGE, link, symlink, setattr, xattrs, readdir, statfs)
//! with typed errors that map to errno. Each call validates against the
//! current state, then applies its whole transaction at once under the
//! metadata lock (`Pool::apply_txn`), so a crash keeps all of it or none.
//! Nothing here is durable until a commit (fsync, sync, close).
//!
//! Files unlinked while open keep their inode (nlink 0) until released;
//! open drops any such inode left by a crash. Permission checks are the
//! front-end's job (FUSE `default_permissions`).

use super::error::{EngineError, Result};
use super::pool::{now_ns, Meta, Pool};
use super::state::{Attrs, Body, FileKind, Ino, Inode, Op, NAME_MAX, ROOT_INO};
use dfs_format::Policy;
use std::collections::BTreeMap;

/// A time to set in `setattr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    /// The current time (UTIME_NOW).
    Now,
    /// A given time, ns since the epoch.
    At(i64),
}

/// Which attributes `setattr` changes (None = leave alone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
}

/// `rename` flags (renameat2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// `setxattr` mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XattrMode {
    #[default]
    Any,
    /// XATTR_CREATE: fail with EEXIST if present.
    Create,
    /// XATTR_REPLACE: fail with ENODATA if absent.
    Replace,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// Filesystem statistics (statfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub block_size: u32,
    /// Raw data bytes on online members.
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Free bytes a user can fill under the default policy.
    pub avail_bytes: u64,
    pub files: u64,
}

/// Longest xattr name.
pub const XATTR_NAME_MAX: usize = 255;
/// Largest xattr value.
pub const XATTR_VALUE_MAX: usize = 64 * 1024;
/// The xattr that pins a file's (or a directory's inherited) policy.
pub const POLICY_XATTR: &[u8] = b"user.dfs.policy";

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(EngineError::Invalid(format!("bad name {:?}", String::from_utf8_lossy(name))));
    }
    if name.len() > NAME_MAX {
        return Err(EngineError::NameTooLong);
    }
    Ok(())
}

/// A `user.dfs.policy` value: UTF-8 policy text (a trailing newline or
/// NUL is allowed, as `setfattr` and `echo` leave them), validated.
pub fn parse_policy(value: &[u8]) -> Result<Policy> {
    let text = std::str::from_utf8(value).map_err(|_| EngineError::Invalid("policy is not UTF-8".into()))?;
    let p: Policy = text
        .trim_end_matches(['\n', '\0'])
        .parse()
        .map_err(|e: dfs_format::FormatError| EngineError::Invalid(e.to_string()))?;
    p.validate().map_err(|e| EngineError::Invalid(e.to_string()))?;
    Ok(p)
}

fn inode(m: &Meta, ino: Ino) -> Result<&Inode> {
    m.state.inodes.get(&ino).ok_or(EngineError::NotFound)
}

fn dir_entries(m: &Meta, dir: Ino) -> Result<&BTreeMap<Box<[u8]>, Ino>> {
    match &inode(m, dir)?.body {
        Body::Dir { entries, .. } => Ok(entries),
        _ => Err(EngineError::NotDir),
    }
}

fn touch(attrs: Attrs, now: i64) -> Attrs {
    Attrs { mtime_ns: now, ctime_ns: now, ..attrs }
}

impl Pool {
    fn writable(&self) -> Result<()> {
        if self.opts.read_only {
            Err(EngineError::ReadOnly)
        } else {
            Ok(())
        }
    }

    /// Attributes of `ino` (including buffered writes).
    pub fn getattr(&self, ino: Ino) -> Result<Attrs> {
        let m = self.meta();
        let a = inode(&m, ino)?.attrs;
        Ok(Self::overlay_attrs(&m, ino, a))
    }

    /// Find `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<(Ino, Attrs)> {
        let m = self.meta();
        if name.len() > NAME_MAX {
            return Err(EngineError::NameTooLong);
        }
        let ino = match name {
            b"." => parent,
            b".." => match &inode(&m, parent)?.body {
                Body::Dir { parent, .. } => *parent,
                _ => return Err(EngineError::NotDir),
            },
            _ => *dir_entries(&m, parent)?.get(name).ok_or(EngineError::NotFound)?,
        };
        let a = inode(&m, ino)?.attrs;
        Ok((ino, Self::overlay_attrs(&m, ino, a)))
    }

    /// Create a file, FIFO, socket or device node (mknod / create).
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        uid: u32,
        gid: u32,
        rdev: u32,
    ) -> Result<(Ino, Attrs)> {
        let body = match kind {
            FileKind::File => Body::File(BTreeMap::new()),
            FileKind::Dir => return self.mkdir(parent, name, perm, uid, gid),
            FileKind::Symlink => return Err(EngineError::Invalid("use symlink".into())),
            _ => Body::Special,
        };
        self.new_inode(parent, name, kind, perm, uid, gid, rdev, body)
    }

    /// Create a directory.
    pub fn mkdir(&self, parent: Ino, name: &[u8], perm: u16, uid: u32, gid: u32) -> Result<(Ino, Attrs)> {
        self.new_inode(parent, name, FileKind::Dir, perm, uid, gid, 0, Body::Dir { parent, entries: BTreeMap::new() })
    }

    /// Create a symbolic link to `target`.
    pub fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<(Ino, Attrs)> {
        if target.is_empty() || target.len() > 4095 {
            return Err(EngineError::Invalid("symlink target length".into()));
        }
        self.new_inode(parent, name, FileKind::Symlink, 0o777, uid, gid, 0, Body::Symlink(target.into()))
    }

    #[allow(clippy::too_many_arguments)]
    fn new_inode(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        uid: u32,
        gid: u32,
        rdev: u32,
        body: Body,
    ) -> Result<(Ino, Attrs)> {
        self.writable()?;
        check_name(name)?;
        let now = now_ns();
        let mut m = self.meta();
        let pinode = inode(&m, parent)?;
        let pattrs = pinode.attrs;
        let inherited = pinode.policy;
        if dir_entries(&m, parent)?.contains_key(name) {
            return Err(EngineError::Exists);
        }
        let ino = m.state.next_ino;
        let size = match &body {
            Body::Symlink(t) => t.len() as u64,
            _ => 0,
        };
        let attrs = Attrs {
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            size,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            rdev,
        };
        let mut pnew = touch(pattrs, now);
        if kind == FileKind::Dir {
            pnew.nlink += 1;
        }
        let policy = if matches!(kind, FileKind::File | FileKind::Dir) { inherited } else { None };
        self.apply_txn(
            &mut m,
            vec![
                Op::CreateInode { ino, attrs, body, policy },
                Op::Link { dir: parent, name: name.into(), ino },
                Op::SetAttrs { ino: parent, attrs: pnew },
            ],
        )?;
        Ok((ino, attrs))
    }

    /// Target of a symlink.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>> {
        let m = self.meta();
        match &inode(&m, ino)?.body {
            Body::Symlink(t) => Ok(t.to_vec()),
            _ => Err(EngineError::Invalid("not a symlink".into())),
        }
    }

    /// The ops that remove one link to `ino` (dropping it at zero links unless open).
    fn unlink_ops(m: &Meta, ino: Ino, now: i64, ops: &mut Vec<Op>) -> Result<bool> {
        let a = inode(m, ino)?.attrs;
        let links = if a.kind == FileKind::Dir { 0 } else { a.nlink.saturating_sub(1) };
        let open = m.open_counts.get(&ino).copied().unwrap_or(0) > 0;
        if links == 0 && !open {
            ops.push(Op::DropInode { ino });
            Ok(true)
        } else {
            ops.push(Op::SetAttrs { ino, attrs: Attrs { nlink: links, ctime_ns: now, ..a } });
            Ok(false)
        }
    }

    /// Remove a non-directory entry.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        let now = now_ns();
        let mut m = self.meta();
        let ino = *dir_entries(&m, parent)?.get(name).ok_or(EngineError::NotFound)?;
        if inode(&m, ino)?.attrs.kind == FileKind::Dir {
            return Err(EngineError::IsDir);
        }
        let pattrs = inode(&m, parent)?.attrs;
        let mut ops = vec![
            Op::Unlink { dir: parent, name: name.into() },
            Op::SetAttrs { ino: parent, attrs: touch(pattrs, now) },
        ];
        let dropped = Self::unlink_ops(&m, ino, now, &mut ops)?;
        self.apply_txn(&mut m, ops)?;
        if dropped {
            Self::forget_buffer(&mut m, ino);
        }
        Ok(())
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        if name == b"." {
            return Err(EngineError::Invalid("rmdir .".into()));
        }
        if name == b".." {
            return Err(EngineError::NotEmpty);
        }
        let now = now_ns();
        let mut m = self.meta();
        let ino = *dir_entries(&m, parent)?.get(name).ok_or(EngineError::NotFound)?;
        if !dir_entries(&m, ino)?.is_empty() {
            return Err(EngineError::NotEmpty);
        }
        let pattrs = inode(&m, parent)?.attrs;
        let pnew = Attrs { nlink: pattrs.nlink - 1, ..touch(pattrs, now) };
        self.apply_txn(
            &mut m,
            vec![
                Op::Unlink { dir: parent, name: name.into() },
                Op::SetAttrs { ino: parent, attrs: pnew },
                Op::DropInode { ino },
            ],
        )?;
        Ok(())
    }

    /// True when `dir` is `ancestor` or lies below it.
    fn is_within(m: &Meta, mut dir: Ino, ancestor: Ino) -> bool {
        for _ in 0..1_000_000 {
            if dir == ancestor {
                return true;
            }
            if dir == ROOT_INO {
                return false;
            }
            match m.state.inodes.get(&dir).map(|i| &i.body) {
                Some(Body::Dir { parent, .. }) => dir = *parent,
                _ => return false,
            }
        }
        false
    }

    /// Rename `name` in `parent` to `newname` in `newparent` (renameat2 semantics).
    pub fn rename(&self, parent: Ino, name: &[u8], newparent: Ino, newname: &[u8], flags: RenameFlags) -> Result<()> {
        self.writable()?;
        check_name(newname)?;
        if flags.noreplace && flags.exchange {
            return Err(EngineError::Invalid("RENAME_NOREPLACE with RENAME_EXCHANGE".into()));
        }
        let now = now_ns();
        let mut m = self.meta();
        let src = *dir_entries(&m, parent)?.get(name).ok_or(EngineError::NotFound)?;
        let dst = dir_entries(&m, newparent)?.get(newname).copied();
        let src_attrs = inode(&m, src)?.attrs;
        let src_is_dir = src_attrs.kind == FileKind::Dir;
        if src_is_dir && Self::is_within(&m, newparent, src) {
            return Err(EngineError::Invalid("cannot move a directory into itself".into()));
        }
        if flags.exchange {
            let dst = dst.ok_or(EngineError::NotFound)?;
            let dst_attrs = inode(&m, dst)?.attrs;
            let dst_is_dir = dst_attrs.kind == FileKind::Dir;
            if dst_is_dir && Self::is_within(&m, parent, dst) {
                return Err(EngineError::Invalid("cannot move a directory into itself".into()));
            }
            if src == dst {
                return Ok(());
            }
            let mut ops = vec![
                Op::Unlink { dir: parent, name: name.into() },
                Op::Unlink { dir: newparent, name: newname.into() },
                Op::Link { dir: parent, name: name.into(), ino: dst },
                Op::Link { dir: newparent, name: newname.into(), ino: src },
            ];
            if parent != newparent {
                let mut pa = touch(inode(&m, parent)?.attrs, now);
                let mut npa = touch(inode(&m, newparent)?.attrs, now);
                if src_is_dir {
                    ops.push(Op::SetParent { dir: src, parent: newparent });
                    pa.nlink -= 1;
                    npa.nlink += 1;
                }
                if dst_is_dir {
                    ops.push(Op::SetParent { dir: dst, parent });
                    pa.nlink += 1;
                    npa.nlink -= 1;
                }
                ops.push(Op::SetAttrs { ino: parent, attrs: pa });
                ops.push(Op::SetAttrs { ino: newparent, attrs: npa });
            } else {
                ops.push(Op::SetAttrs { ino: parent, attrs: touch(inode(&m, parent)?.attrs, now) });
            }
            ops.push(Op::SetAttrs { ino: src, attrs: Attrs { ctime_ns: now, ..src_attrs } });
            ops.push(Op::SetAttrs { ino: dst, attrs: Attrs { ctime_ns: now, ..dst_attrs } });
            self.apply_txn(&mut m, ops)?;
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut dropped = None;
        let mut np_nlink_delta: i64 = 0;
        if let Some(dst) = dst {
            if flags.noreplace {
                return Err(EngineError::Exists);
            }
            if dst == src {
                return Ok(());
            }
            let dst_attrs = inode(&m, dst)?.attrs;
            match (src_is_dir, dst_attrs.kind == FileKind::Dir) {
                (true, false) => return Err(EngineError::NotDir),
                (false, true) => return Err(EngineError::IsDir),
                (true, true) => {
                    if !dir_entries(&m, dst)?.is_empty() {
                        return Err(EngineError::NotEmpty);
                    }
                    np_nlink_delta -= 1;
                }
                _ => {}
            }
            ops.push(Op::Unlink { dir: newparent, name: newname.into() });
            if Self::unlink_ops(&m, dst, now, &mut ops)? {
                dropped = Some(dst);
            }
        }
        ops.push(Op::Unlink { dir: parent, name: name.into() });
        ops.push(Op::Link { dir: newparent, name: newname.into(), ino: src });
        if src_is_dir && parent != newparent {
            ops.push(Op::SetParent { dir: src, parent: newparent });
            np_nlink_delta += 1;
        }
        let mut pa = touch(inode(&m, parent)?.attrs, now);
        if parent == newparent {
            pa.nlink = (pa.nlink as i64 + np_nlink_delta) as u32;
            ops.push(Op::SetAttrs { ino: parent, attrs: pa });
        } else {
            if src_is_dir {
                pa.nlink -= 1;
            }
            let mut npa = touch(inode(&m, newparent)?.attrs, now);
            npa.nlink = (npa.nlink as i64 + np_nlink_delta) as u32;
            ops.push(Op::SetAttrs { ino: parent, attrs: pa });
            ops.push(Op::SetAttrs { ino: newparent, attrs: npa });
        }
        ops.push(Op::SetAttrs { ino: src, attrs: Attrs { ctime_ns: now, ..src_attrs } });
        self.apply_txn(&mut m, ops)?;
        if let Some(d) = dropped {
            Self::forget_buffer(&mut m, d);
        }
        Ok(())
    }

    /// Hard link: a new entry `newname` in `newparent` for `ino`.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Attrs> {
        self.writable()?;
        check_name(newname)?;
        let now = now_ns();
        let mut m = self.meta();
        let a = inode(&m, ino)?.attrs;
        if a.kind == FileKind::Dir {
            return Err(EngineError::NotPermitted);
        }
        if dir_entries(&m, newparent)?.contains_key(newname) {
            return Err(EngineError::Exists);
        }
        let new = Attrs { nlink: a.nlink + 1, ctime_ns: now, ..a };
        let pa = touch(inode(&m, newparent)?.attrs, now);
        self.apply_txn(
            &mut m,
            vec![
                Op::Link { dir: newparent, name: newname.into(), ino },
                Op::SetAttrs { ino, attrs: new },
                Op::SetAttrs { ino: newparent, attrs: pa },
            ],
        )?;
        Ok(Self::overlay_attrs(&m, ino, new))
    }

    /// Change attributes; a size change truncates or extends the file.
    pub fn setattr(&self, ino: Ino, set: SetAttr) -> Result<Attrs> {
        self.writable()?;
        let now = now_ns();
        if let Some(size) = set.size {
            match self.getattr(ino)?.kind {
                FileKind::File => self.set_size(ino, size, now)?,
                FileKind::Dir => return Err(EngineError::IsDir),
                _ => return Err(EngineError::Invalid("size of a special file".into())),
            }
        }
        let mut m = self.meta();
        let a = inode(&m, ino)?.attrs;
        let t = |s: Option<TimeSet>, old: i64| match s {
            None => old,
            Some(TimeSet::Now) => now,
            Some(TimeSet::At(v)) => v,
        };
        let new = Attrs {
            perm: set.perm.map(|p| p & 0o7777).unwrap_or(a.perm),
            uid: set.uid.unwrap_or(a.uid),
            gid: set.gid.unwrap_or(a.gid),
            atime_ns: t(set.atime, a.atime_ns),
            mtime_ns: t(set.mtime, a.mtime_ns),
            ctime_ns: now,
            ..a
        };
        self.apply_txn(&mut m, vec![Op::SetAttrs { ino, attrs: new }])?;
        Ok(Self::overlay_attrs(&m, ino, new))
    }

    /// Entries of a directory (without `.` and `..`), in name order.
    pub fn readdir(&self, dir: Ino) -> Result<Vec<DirEntry>> {
        let m = self.meta();
        let entries = dir_entries(&m, dir)?;
        Ok(entries
            .iter()
            .map(|(n, i)| DirEntry {
                name: n.to_vec(),
                ino: *i,
                kind: m.state.inodes.get(i).map(|x| x.attrs.kind).unwrap_or(FileKind::File),
            })
            .collect())
    }

    /// The parent of a directory.
    pub fn parent_of(&self, dir: Ino) -> Result<Ino> {
        let m = self.meta();
        match &inode(&m, dir)?.body {
            Body::Dir { parent, .. } => Ok(*parent),
            _ => Err(EngineError::NotDir),
        }
    }

    /// An open handle on `ino` (keeps an unlinked file alive until released).
    pub fn open_file(&self, ino: Ino) -> Result<Attrs> {
        let mut m = self.meta();
        let a = inode(&m, ino)?.attrs;
        *m.open_counts.entry(ino).or_default() += 1;
        Ok(Self::overlay_attrs(&m, ino, a))
    }

    /// Release an open handle: hands the file's dirty extents to the
    /// write-behind (`close_flush`); drops the file if it was unlinked.
    pub fn release(&self, ino: Ino) -> Result<()> {
        let flushed = if self.opts.read_only { Ok(()) } else { self.close_flush(ino) };
        let mut m = self.meta();
        let left = match m.open_counts.get_mut(&ino) {
            Some(c) => {
                *c = c.saturating_sub(1);
                *c
            }
            None => 0,
        };
        if left == 0 {
            m.open_counts.remove(&ino);
            let orphan = m.state.inodes.get(&ino).is_some_and(|i| i.attrs.nlink == 0);
            if orphan && !self.opts.read_only {
                self.apply_txn(&mut m, vec![Op::DropInode { ino }])?;
                Self::forget_buffer(&mut m, ino);
            } else {
                Self::drop_clean_buffer(&mut m, ino);
            }
        }
        flushed
    }

    /// Value of an extended attribute. `user.dfs.policy` shows the effective policy.
    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let m = self.meta();
        let i = inode(&m, ino)?;
        if name == POLICY_XATTR && matches!(i.attrs.kind, FileKind::File | FileKind::Dir) {
            return Ok(Self::effective_policy(&m, ino).to_string().into_bytes());
        }
        i.xattrs.as_ref().and_then(|x| x.get(name)).map(|v| v.to_vec()).ok_or(EngineError::NoData)
    }

    /// Names of the extended attributes.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let m = self.meta();
        let i = inode(&m, ino)?;
        let mut names: Vec<Vec<u8>> = i.xattrs.iter().flat_map(|x| x.keys().map(|k| k.to_vec())).collect();
        if i.policy.is_some() {
            names.push(POLICY_XATTR.to_vec());
        }
        Ok(names)
    }

    /// Set an extended attribute. `user.dfs.policy` pins the policy (EINVAL on nonsense).
    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> Result<()> {
        self.writable()?;
        if name.is_empty() || name.len() > XATTR_NAME_MAX || value.len() > XATTR_VALUE_MAX {
            return Err(EngineError::Range);
        }
        let mut m = self.meta();
        let i = inode(&m, ino)?;
        let a = Attrs { ctime_ns: now_ns(), ..i.attrs };
        if name == POLICY_XATTR {
            if !matches!(i.attrs.kind, FileKind::File | FileKind::Dir) {
                return Err(EngineError::Invalid("policies apply to files and directories".into()));
            }
            let p = parse_policy(value)?;
            self.check_satisfiable(&m, p)?;
            let exists = i.policy.is_some();
            match mode {
                XattrMode::Create if exists => return Err(EngineError::Exists),
                XattrMode::Replace if !exists => return Err(EngineError::NoData),
                _ => {}
            }
            let is_file = i.attrs.kind == FileKind::File;
            self.apply_txn(
                &mut m,
                vec![Op::SetPolicy { ino, policy: Some(p.encode()) }, Op::SetAttrs { ino, attrs: a }],
            )?;
            drop(m);
            if is_file {
                // Existing extents are re-encoded online (recorded in the
                // policy history); new ones already follow the pin.
                self.change_policy(ino, &format!("inode {ino} (user.dfs.policy)"), false, p, &|_, _| {})?;
            }
            return Ok(());
        }
        let exists = i.xattrs.as_ref().is_some_and(|x| x.contains_key(name));
        match mode {
            XattrMode::Create if exists => return Err(EngineError::Exists),
            XattrMode::Replace if !exists => return Err(EngineError::NoData),
            _ => {}
        }
        self.apply_txn(
            &mut m,
            vec![Op::SetXattr { ino, name: name.into(), value: Some(value.into()) }, Op::SetAttrs { ino, attrs: a }],
        )?;
        Ok(())
    }

    /// Remove an extended attribute (ENODATA when absent).
    pub fn removexattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.writable()?;
        let mut m = self.meta();
        let i = inode(&m, ino)?;
        let a = Attrs { ctime_ns: now_ns(), ..i.attrs };
        if name == POLICY_XATTR {
            if i.policy.is_none() {
                return Err(EngineError::NoData);
            }
            self.apply_txn(&mut m, vec![Op::SetPolicy { ino, policy: None }, Op::SetAttrs { ino, attrs: a }])?;
            return Ok(());
        }
        if !i.xattrs.as_ref().is_some_and(|x| x.contains_key(name)) {
            return Err(EngineError::NoData);
        }
        self.apply_txn(
            &mut m,
            vec![Op::SetXattr { ino, name: name.into(), value: None }, Op::SetAttrs { ino, attrs: a }],
        )?;
        Ok(())
    }

    /// Refuse a policy the pool's online members cannot satisfy.
    fn check_satisfiable(&self, m: &Meta, p: Policy) -> Result<()> {
        let views = self.member_views(m);
        if super::placement::can_satisfy(p, &views) {
            return Ok(());
        }
        let online = views.iter().filter(|v| v.state == super::placement::MemberState::Online).count();
        Err(EngineError::PolicyUnsatisfiable {
            policy: p.to_string(),
            reason: format!("needs {} online members, the pool has {online}", p.fragment_count()),
        })
    }

    /// The pool's default policy (what files without a pinned policy, and
    /// without a pinning ancestor at creation, get).
    pub fn default_policy(&self) -> Policy {
        Policy::decode(self.meta().state.config.default_policy).unwrap_or(Policy::Replication { copies: 1 })
    }

    /// Set the pool's default policy (`Op::SetConfig`; the mount option
    /// `policy=`). Extents already written keep theirs; new extents of
    /// files without a pinned policy use it. Committed before returning.
    pub fn set_default_policy(&self, p: Policy) -> Result<()> {
        self.writable()?;
        p.validate().map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut m = self.meta();
        self.check_satisfiable(&m, p)?;
        if m.state.config.default_policy == p.encode() {
            return Ok(());
        }
        let mut config = m.state.config.clone();
        config.default_policy = p.encode();
        self.apply_txn(&mut m, vec![Op::SetConfig { config }])?;
        drop(m);
        self.commit()
    }

    /// Pool-wide space and file counts.
    pub fn statfs(&self) -> Result<StatFs> {
        let m = self.meta();
        let views = self.member_views(&m);
        let online = views.iter().filter(|v| v.state == super::placement::MemberState::Online);
        let (total, free) = online.fold((0u64, 0u64), |(t, f), v| (t + v.total_bytes, f + v.free_bytes));
        let p = Policy::decode(m.state.config.default_policy).unwrap_or(Policy::Replication { copies: 1 });
        let avail = (free as u128 * p.fragments_needed() as u128 / p.fragment_count() as u128) as u64;
        Ok(StatFs {
            block_size: 4096,
            total_bytes: total,
            free_bytes: free,
            avail_bytes: avail,
            files: m.state.inodes.len() as u64,
        })
    }

    /// A copy of the whole metadata state (tests, fsck, inspect).
    pub fn state_snapshot(&self) -> super::state::State {
        self.meta().state.clone()
    }

    /// Allocator consistency on a quiescent pool: every block an extent
    /// references is allocated, no block is referenced twice, and nothing
    /// else is allocated but the current checkpoint. Returns the problems.
    pub fn check_allocations(&self) -> Vec<String> {
        let ckpt = self.checkpoint_blocks();
        let m = self.meta();
        let mut problems = Vec::new();
        let mut refs: Vec<BTreeMap<u64, u128>> = vec![BTreeMap::new(); m.allocs.len()];
        for (id, i, f) in m.state.all_fragments() {
            let Some(map) = refs.get_mut(f.member as usize) else {
                problems.push(format!("extent {id:032x} fragment {i} on unknown member {}", f.member));
                continue;
            };
            for b in f.block..f.block + f.blocks as u64 {
                if let Some(prev) = map.insert(b, id) {
                    problems.push(format!("member {} block {b} referenced by {prev:032x} and {id:032x}", f.member));
                }
            }
        }
        for (mi, a) in m.allocs.iter().enumerate() {
            let Some(a) = a else { continue };
            for b in refs[mi].keys() {
                if !a.is_used(*b) {
                    problems.push(format!("member {mi} block {b} referenced but free"));
                }
            }
            let expected = refs[mi].len() as u64 + ckpt.get(mi).copied().unwrap_or(0);
            if a.used_blocks() != expected {
                problems.push(format!(
                    "member {mi}: {} blocks allocated, {expected} referenced (leak or double use)",
                    a.used_blocks()
                ));
            }
        }
        problems
    }
}
