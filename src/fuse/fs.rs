//! [`DfsFuse`]: the `fuser::Filesystem` implementation. Each handler opens a
//! span with the request id, makes one engine call (two where noted),
//! converts the result and replies, or replies the error through
//! [`fuse_error!`]. Nothing here decides anything about storage.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents, PollFlags, PollNotifier, ReplyAttr,
    ReplyBmap, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLock, ReplyLseek, ReplyOpen, ReplyPoll, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::error::{fuse_error, fuse_unsupported};
use crate::engine::namespace::XATTR_NAME_MAX;
use crate::engine::{
    Attrs, DirEntry, FallocMode, FileKind, Ino, Pool, RenameFlags, SeekWhence, SetAttr, TimeSet, XattrMode,
};

/// Largest write request asked of the kernel: one extent. The kernel caps
/// requests at its `max_pages_limit` (256 pages = 1 MiB on x86-64) anyway.
pub const MAX_WRITE: u32 = 1 << 20;
/// Read-ahead asked for (the kernel caps it at what it offered in INIT).
pub const MAX_READAHEAD: u32 = 1 << 20;
/// Background requests (read-ahead, async reads) the kernel may queue.
pub const MAX_BACKGROUND: u16 = 64;
/// `st_blksize`: the extent size, so `cp`, `dd` and stdio move whole extents.
pub const BLKSIZE: u32 = 1 << 20;
/// Inode numbers are never reused, so the generation is always 0.
const GENERATION: Generation = Generation(0);

/// Opens a span named after the operation, carrying the request id (at
/// info level, target `logging::REQUEST_TARGET`, which the log filter
/// always enables, so the engine's lines for the request carry the id),
/// and times the request for metrics until dropped
/// (`crate::metrics::fuse::Request`).
macro_rules! op_span {
    ($req:expr, $op:literal $(, $k:ident = $v:expr)*) => {
        $crate::metrics::fuse::Request::begin(
            $op,
            tracing::info_span!(target: $crate::logging::REQUEST_TARGET, "fuse", req = $req.unique().0, op = $op $(, $k = $v)*),
        )
    };
}

/// One open directory stream: the entries when it was opened (or rewound),
/// so that entries not changed meanwhile are listed exactly once whatever
/// else happens in the directory.
#[derive(Debug)]
struct DirStream {
    parent: Ino,
    entries: Arc<Vec<DirEntry>>,
    /// A read at offset 0 after this is a rewinddir: take a new snapshot.
    served: bool,
}

/// The FUSE front-end of one mounted pool.
#[derive(Debug)]
pub struct DfsFuse {
    pool: Arc<Pool>,
    ttl: Duration,
    dirs: Mutex<HashMap<u64, DirStream>>,
    next_fh: AtomicU64,
}

impl DfsFuse {
    /// A front-end for `pool`; the kernel caches attributes and entries for `ttl`.
    pub fn new(pool: Arc<Pool>, ttl: Duration) -> DfsFuse {
        DfsFuse { pool, ttl, dirs: Mutex::new(HashMap::new()), next_fh: AtomicU64::new(1) }
    }

    /// The pool served.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    fn dirs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, DirStream>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn kind_of(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(ns_of(t)),
    }
}

/// Engine attributes as the kernel wants them.
pub fn file_attr(ino: Ino, a: &Attrs) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time_of(a.atime_ns),
        mtime: time_of(a.mtime_ns),
        ctime: time_of(a.ctime_ns),
        crtime: time_of(a.ctime_ns),
        kind: kind_of(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// The file kind in the `S_IFMT` bits of a mknod mode.
fn kind_of_mode(mode: u32) -> Option<FileKind> {
    match mode & libc::S_IFMT {
        0 | libc::S_IFREG => Some(FileKind::File),
        libc::S_IFIFO => Some(FileKind::Fifo),
        libc::S_IFSOCK => Some(FileKind::Socket),
        libc::S_IFCHR => Some(FileKind::CharDev),
        libc::S_IFBLK => Some(FileKind::BlockDev),
        _ => None,
    }
}

fn perm_of(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

/// Reply to a getxattr/listxattr: the size when asked (size 0), ERANGE when
/// the caller's buffer is too small, else the bytes.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(fuser::Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

impl Filesystem for DfsFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each setter returns the nearest allowed value when ours is refused.
        if let Err(n) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(n);
        }
        if let Err(n) = config.set_max_readahead(MAX_READAHEAD) {
            let _ = config.set_max_readahead(n);
        }
        let _ = config.set_max_background(MAX_BACKGROUND);
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_ASYNC_DIO;
        let _ = config.add_capabilities(wanted & config.capabilities());
        tracing::info!(
            pool = %self.pool.uuid(),
            kernel_abi = %format!("{:?}", config.kernel_abi()),
            "FUSE session initialized"
        );
        Ok(())
    }

    fn destroy(&mut self) {
        // The session ends (unmount): make everything durable before the
        // owner closes the pool.
        if let Err(e) = self.pool.sync_all() {
            tracing::error!("sync at unmount failed: {e}");
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _s = op_span!(req, "lookup", parent = parent.0);
        match self.pool.lookup(parent.0, name.as_bytes()) {
            Ok((ino, a)) => reply.entry(&self.ttl, &file_attr(ino, &a), GENERATION),
            Err(e) => fuse_error!("lookup", reply, e),
        }
    }

    /// Engine inode numbers are the FUSE ones and live as long as they are
    /// linked or open, so the kernel's lookup counts need no bookkeeping.
    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {}

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _s = op_span!(req, "getattr", ino = ino.0);
        match self.pool.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(ino.0, &a)),
            Err(e) => fuse_error!("getattr", reply, e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _s = op_span!(req, "setattr", ino = ino.0);
        // ctime is not settable: the engine sets it to now on every change,
        // as Linux does.
        let set = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
        };
        match self.pool.setattr(ino.0, set) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(ino.0, &a)),
            Err(e) => fuse_error!("setattr", reply, e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let _s = op_span!(req, "readlink", ino = ino.0);
        match self.pool.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => fuse_error!("readlink", reply, e),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, rdev: u32, reply: ReplyEntry) {
        let _s = op_span!(req, "mknod", parent = parent.0, mode = mode);
        let Some(kind) = kind_of_mode(mode) else {
            return reply.error(fuser::Errno::from_i32(libc::EINVAL));
        };
        match self.pool.create(parent.0, name.as_bytes(), kind, perm_of(mode, umask), req.uid(), req.gid(), rdev) {
            Ok((ino, a)) => reply.entry(&self.ttl, &file_attr(ino, &a), GENERATION),
            Err(e) => fuse_error!("mknod", reply, e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _s = op_span!(req, "mkdir", parent = parent.0);
        match self.pool.mkdir(parent.0, name.as_bytes(), perm_of(mode, umask), req.uid(), req.gid()) {
            Ok((ino, a)) => reply.entry(&self.ttl, &file_attr(ino, &a), GENERATION),
            Err(e) => fuse_error!("mkdir", reply, e),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = op_span!(req, "unlink", parent = parent.0);
        match self.pool.unlink(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => fuse_error!("unlink", reply, e),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = op_span!(req, "rmdir", parent = parent.0);
        match self.pool.rmdir(parent.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => fuse_error!("rmdir", reply, e),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _s = op_span!(req, "symlink", parent = parent.0);
        match self.pool.symlink(parent.0, link_name.as_bytes(), target.as_os_str().as_bytes(), req.uid(), req.gid()) {
            Ok((ino, a)) => reply.entry(&self.ttl, &file_attr(ino, &a), GENERATION),
            Err(e) => fuse_error!("symlink", reply, e),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _s = op_span!(req, "rename", parent = parent.0, newparent = newparent.0, flags = flags.bits());
        let known = fuser::RenameFlags::RENAME_NOREPLACE | fuser::RenameFlags::RENAME_EXCHANGE;
        if !known.contains(flags) {
            // RENAME_WHITEOUT (overlayfs) and anything newer.
            return reply.error(fuser::Errno::from_i32(libc::EINVAL));
        }
        let f = RenameFlags {
            noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        match self.pool.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), f) {
            Ok(()) => reply.ok(),
            Err(e) => fuse_error!("rename", reply, e),
        }
    }

    fn link(&self, req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _s = op_span!(req, "link", ino = ino.0, newparent = newparent.0);
        match self.pool.link(ino.0, newparent.0, newname.as_bytes()) {
            Ok(a) => reply.entry(&self.ttl, &file_attr(ino.0, &a), GENERATION),
            Err(e) => fuse_error!("link", reply, e),
        }
    }

    /// O_TRUNC arrives as a separate setattr (no `FUSE_ATOMIC_O_TRUNC`) and
    /// O_APPEND is resolved by the kernel (no writeback cache: its file size
    /// is exact), so open only counts the handle.
    fn open(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _s = op_span!(req, "open", ino = ino.0);
        match self.pool.open_file(ino.0) {
            // Every change goes through this mount, so cached pages stay valid.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH),
            Err(e) => fuse_error!("open", reply, e),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _s = op_span!(req, "read", ino = ino.0, offset = offset, size = size);
        match self.pool.read(ino.0, offset, size as usize) {
            Ok(d) => reply.data(&d),
            Err(e) => fuse_error!("read", reply, e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _s = op_span!(req, "write", ino = ino.0, offset = offset, size = data.len());
        match self.pool.write(ino.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => fuse_error!("write", reply, e),
        }
    }

    /// close(2) on kernels that ignore `FOPEN_NOFLUSH` (before 5.16): hand
    /// the file's buffered extents to the write-behind without waiting for
    /// them (write errors reach the next fsync).
    fn flush(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        let _s = op_span!(req, "flush", ino = ino.0);
        match self.pool.close_flush(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => fuse_error!("flush", reply, e),
        }
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _s = op_span!(req, "release", ino = ino.0);
        match self.pool.release(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => fuse_error!("release", reply, e),
        }
    }

    /// fsync and fdatasync alike: the engine's commit covers both.
    fn fsync(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _s = op_span!(req, "fsync", ino = ino.0);
        match self.pool.fsync(ino.0) {
            Ok(()) => reply.ok(),
            Err(e) => fuse_error!("fsync", reply, e),
        }
    }

    /// Two engine calls: the entries, and the parent for `..`.
    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _s = op_span!(req, "opendir", ino = ino.0);
        let snap = self.pool.readdir(ino.0).and_then(|entries| Ok((entries, self.pool.parent_of(ino.0)?)));
        match snap {
            Ok((entries, parent)) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs().insert(fh, DirStream { parent, entries: Arc::new(entries), served: false });
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => fuse_error!("opendir", reply, e),
        }
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _s = op_span!(req, "readdir", ino = ino.0, offset = offset);
        let (parent, entries) = match self.stream(ino.0, fh, offset) {
            Ok(x) => x,
            Err(e) => return fuse_error!("readdir", reply, e),
        };
        let dots = [(ino.0, FileType::Directory, &b"."[..]), (parent, FileType::Directory, &b".."[..])];
        let all = dots.into_iter().chain(entries.iter().map(|e| (e.ino, kind_of(e.kind), &e.name[..])));
        for (i, (eino, kind, name)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(eino), i as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    /// Entries with their attributes (one getattr each), for `ls -l`.
    fn readdirplus(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _s = op_span!(req, "readdirplus", ino = ino.0, offset = offset);
        let (parent, entries) = match self.stream(ino.0, fh, offset) {
            Ok(x) => x,
            Err(e) => return fuse_error!("readdirplus", reply, e),
        };
        let dots = [(ino.0, &b"."[..]), (parent, &b".."[..])];
        let all = dots.into_iter().chain(entries.iter().map(|e| (e.ino, &e.name[..])));
        for (i, (eino, name)) in all.enumerate().skip(offset as usize) {
            // An entry removed since the snapshot is skipped.
            let Ok(a) = self.pool.getattr(eino) else { continue };
            if reply.add(
                INodeNo(eino),
                i as u64 + 1,
                OsStr::from_bytes(name),
                &self.ttl,
                &file_attr(eino, &a),
                GENERATION,
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _s = op_span!(req, "releasedir", ino = ino.0);
        self.dirs().remove(&fh.0);
        reply.ok();
    }

    /// Commit the directory's entries and the data of every file
    /// (`Pool::sync_all`: sync(2) never reaches us, so "close the files,
    /// fsync the directory" must persist them).
    fn fsyncdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _s = op_span!(req, "fsyncdir", ino = ino.0);
        match self.pool.sync_all() {
            Ok(()) => reply.ok(),
            Err(e) => fuse_error!("fsyncdir", reply, e),
        }
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _s = op_span!(req, "statfs");
        match self.pool.statfs() {
            Ok(s) => {
                let bs = s.block_size.max(1) as u64;
                // Inodes are not a limited resource: report room for one
                // per free block, as a hint.
                let ffree = s.avail_bytes / bs;
                reply.statfs(
                    s.total_bytes / bs,
                    s.free_bytes / bs,
                    s.avail_bytes / bs,
                    s.files + ffree,
                    ffree,
                    bs as u32,
                    crate::engine::state::NAME_MAX as u32,
                    bs as u32,
                );
            }
            Err(e) => fuse_error!("statfs", reply, e),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _s = op_span!(req, "setxattr", ino = ino.0);
        let mode = match flags {
            0 => XattrMode::Any,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(fuser::Errno::from_i32(libc::EINVAL)),
        };
        match self.pool.setxattr(ino.0, name.as_bytes(), value, mode) {
            Ok(()) => reply.ok(),
            Err(e) => fuse_error!("setxattr", reply, e),
        }
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _s = op_span!(req, "getxattr", ino = ino.0, size = size);
        if name.len() > XATTR_NAME_MAX {
            return reply.error(fuser::Errno::from_i32(libc::ERANGE));
        }
        match self.pool.getxattr(ino.0, name.as_bytes()) {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => fuse_error!("getxattr", reply, e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _s = op_span!(req, "listxattr", ino = ino.0, size = size);
        match self.pool.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::with_capacity(names.iter().map(|n| n.len() + 1).sum());
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                reply_xattr(reply, size, &buf);
            }
            Err(e) => fuse_error!("listxattr", reply, e),
        }
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = op_span!(req, "removexattr", ino = ino.0);
        match self.pool.removexattr(ino.0, name.as_bytes()) {
            Ok(()) => reply.ok(),
            Err(e) => fuse_error!("removexattr", reply, e),
        }
    }

    /// Only called without `default_permissions`; permissions are the
    /// kernel's job, so this only says whether the inode exists.
    fn access(&self, req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        let _s = op_span!(req, "access", ino = ino.0);
        match self.pool.getattr(ino.0) {
            Ok(_) => reply.ok(),
            Err(e) => fuse_error!("access", reply, e),
        }
    }

    /// Two engine calls: create, then count the open handle. O_EXCL needs
    /// nothing more: the kernel only calls create for a name its lookup did
    /// not find, and the engine refuses an existing name with EEXIST.
    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let _s = op_span!(req, "create", parent = parent.0);
        let Some(kind) = kind_of_mode(mode) else {
            return reply.error(fuser::Errno::from_i32(libc::EINVAL));
        };
        let res = self
            .pool
            .create(parent.0, name.as_bytes(), kind, perm_of(mode, umask), req.uid(), req.gid(), 0)
            .and_then(|(ino, _)| Ok((ino, self.pool.open_file(ino)?)));
        match res {
            Ok((ino, a)) => reply.created(
                &self.ttl,
                &file_attr(ino, &a),
                GENERATION,
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH,
            ),
            Err(e) => fuse_error!("create", reply, e),
        }
    }

    /// Never called: POSIX and flock locks are left to the kernel (we do not
    /// ask for `FUSE_POSIX_LOCKS` / `FUSE_FLOCK_LOCKS`, see the module doc).
    fn getlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        fuse_unsupported!("getlk", req, reply);
    }

    /// Never called (see `getlk`).
    fn setlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        fuse_unsupported!("setlk", req, reply);
    }

    fn bmap(&self, req: &Request, _ino: INodeNo, _blocksize: u32, _idx: u64, reply: ReplyBmap) {
        fuse_unsupported!("bmap", req, reply);
    }

    fn ioctl(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        fuse_unsupported!("ioctl", req, reply);
    }

    fn poll(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        fuse_unsupported!("poll", req, reply);
    }

    /// Mode 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE (with or
    /// without KEEP_SIZE); anything else (collapse, insert, unshare) is
    /// EOPNOTSUPP, as on a filesystem without them.
    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _s = op_span!(req, "fallocate", ino = ino.0, offset = offset, length = length, mode = mode);
        let Some(mode) = falloc_mode(mode) else {
            return reply.error(fuser::Errno::from_i32(libc::EOPNOTSUPP));
        };
        match self.pool.fallocate(ino.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => fuse_error!("fallocate", reply, e),
        }
    }

    /// SEEK_DATA and SEEK_HOLE (the kernel resolves the other whences).
    fn lseek(&self, req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let _s = op_span!(req, "lseek", ino = ino.0, offset = offset, whence = whence);
        let whence = match whence {
            libc::SEEK_DATA => SeekWhence::Data,
            libc::SEEK_HOLE => SeekWhence::Hole,
            _ => return reply.error(fuser::Errno::from_i32(libc::EINVAL)),
        };
        if offset < 0 {
            return reply.error(fuser::Errno::from_i32(libc::ENXIO));
        }
        match self.pool.seek(ino.0, offset as u64, whence) {
            Ok(pos) => reply.offset(pos as i64),
            Err(e) => fuse_error!("lseek", reply, e),
        }
    }

    /// One engine call copying inside the daemon: the data crosses FUSE
    /// once instead of twice (read to the caller, write back).
    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _s = op_span!(req, "copy_file_range", ino_in = ino_in.0, ino_out = ino_out.0, len = len);
        // The reply carries a u32 count: copy at most 1 GiB per call (the
        // caller loops, as for any short copy).
        let len = len.min(1 << 30);
        match self.pool.copy_range(ino_in.0, offset_in, ino_out.0, offset_out, len) {
            Ok(n) => reply.written(n as u32),
            Err(e) => fuse_error!("copy_file_range", reply, e),
        }
    }
}

/// The engine's fallocate mode for the kernel's mode bits (None: not supported).
fn falloc_mode(mode: i32) -> Option<FallocMode> {
    let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    match mode & !libc::FALLOC_FL_KEEP_SIZE {
        0 => Some(FallocMode::Allocate { keep_size }),
        libc::FALLOC_FL_PUNCH_HOLE if keep_size => Some(FallocMode::PunchHole),
        libc::FALLOC_FL_ZERO_RANGE => Some(FallocMode::ZeroRange { keep_size }),
        _ => None,
    }
}

impl DfsFuse {
    /// The snapshot of an open directory stream (a new one on rewind).
    fn stream(&self, ino: Ino, fh: FileHandle, offset: u64) -> crate::engine::Result<(Ino, Arc<Vec<DirEntry>>)> {
        let refresh = match self.dirs().get(&fh.0) {
            None => true,
            Some(d) => offset == 0 && d.served,
        };
        if refresh {
            let entries = Arc::new(self.pool.readdir(ino)?);
            let parent = self.pool.parent_of(ino)?;
            let mut dirs = self.dirs();
            let d = dirs.entry(fh.0).or_insert(DirStream { parent, entries: entries.clone(), served: false });
            d.entries = entries;
            d.parent = parent;
        }
        let mut dirs = self.dirs();
        let d = dirs.get_mut(&fh.0).ok_or(crate::engine::EngineError::NotFound)?;
        d.served = true;
        Ok((d.parent, d.entries.clone()))
    }
}
