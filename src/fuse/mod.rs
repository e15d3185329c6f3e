//! # The POSIX front-end: a translator from FUSE requests to engine calls
//!
//! [`DfsFuse`] implements `fuser::Filesystem` and nothing more: each handler
//! opens a tracing span carrying the request id, makes one engine call
//! (`Pool::lookup`, `Pool::write`, ...), and replies, or replies the error's
//! errno through one macro (`fuse_error!`, which uses
//! [`EngineError::errno`](crate::engine::EngineError::errno) and logs at a
//! level fitting the error). Unsupported operations share
//! `fuse_unsupported!` (ENOSYS). No storage logic lives here, so everything
//! below is tested without a mount (`tests/engine_*.rs`).
//!
//! ## Mapping
//!
//! - Inode numbers are the engine's (root = 1 = `FUSE_ROOT_ID`). The engine
//!   never reuses one, so the generation is always 0, and an inode lives as
//!   long as it is linked or open, so `forget` has nothing to do.
//! - open / create count the handle in the engine (`Pool::open_file`),
//!   release drops it (`Pool::release`, which also flushes); an unlinked
//!   file stays readable through its open descriptors until then.
//! - close(2) costs no request: open and create reply `FOPEN_NOFLUSH`, so
//!   the kernel sends no flush (kernels before 5.16 still do; it does the
//!   same as release), and release, which the kernel sends in the
//!   background, hands the file's buffered extents to the engine's
//!   write-behind without waiting (`Pool::close_flush`). Write errors
//!   reach the next fsync, as with a kernel filesystem's writeback; ENOSPC
//!   no longer reaches close(2) (it reaches write(2) when the file is over
//!   its dirty limit, and fsync). fsync and fdatasync commit the file
//!   (`Pool::fsync`); fsyncdir flushes every linked file and commits
//!   (`Pool::sync_all`), so "close the files, fsync the directory" makes
//!   them durable, as on a journaling filesystem.
//! - Directory streams are snapshots taken at opendir (and again on
//!   rewinddir), so concurrent changes never make `readdir` skip or repeat
//!   an entry that was not itself changed.
//! - sync(1) and syncfs(2) never reach a FUSE filesystem (the kernel sends
//!   `FUSE_SYNCFS` only to virtiofs), so a mount commits on its own every
//!   [`MountConfig::commit_interval`] (5 s, as ext4's `commit=5`), taking
//!   the closed files' finished writes along (`Pool::writeback`): what was
//!   closed is durable within about that time. fsync is exact.
//! - Errors: [`error::errno`] is the one mapping; anything unknown is EIO.
//!   A read-only mount is also mounted `MS_RDONLY`, so the kernel answers
//!   EROFS before a request reaches the engine (which would say EROFS too).
//!
//! ## Kernel features enabled, and why
//!
//! - `default_permissions`: the kernel checks permissions against the
//!   attributes we return; the engine does no permission checks.
//! - `allow_other` when mounted by root (the mount helper's default), so
//!   every user sees the filesystem, as with a kernel filesystem.
//! - `max_write` 1 MiB with `FUSE_MAX_PAGES` and big writes: one write
//!   request carries up to a whole extent (the kernel's own cap is 256
//!   pages = 1 MiB). Read-ahead is asked for at 1 MiB; the kernel caps it
//!   at its INIT offer (128 KiB), so [`mount`] also raises the mount's bdi
//!   `read_ahead_kb` to 1024, which is what lets reads reach 1 MiB.
//! - Async direct IO (`FUSE_ASYNC_DIO`): without it the kernel turns an
//!   O_DIRECT read or write submitted asynchronously (io_uring, libaio)
//!   into a synchronous one, so a QD32 random read ran at queue depth 1
//!   (`scripts/bench-fs` rand_read, same loaded machine: 946 -> 5008 IOPS
//!   under erasure:4+2, 1427 -> 5766 under replication:3).
//! - Async reads, `max_background` 64 and a multi-threaded session
//!   (`n_threads` from [`MountConfig::threads`], one cloned `/dev/fuse` fd
//!   per thread): requests on different files (and reads on one) run in
//!   parallel; the engine serializes writers per file itself. A thread
//!   blocks on its request's device IO, so the thread count bounds the IO
//!   depth a mount can offer, not its CPU use: 8 per CPU, at least 16
//!   (4 threads held QD32 4 KiB random reads to 7.5k IOPS on a loaded
//!   2-CPU machine; 16 gave 9.4-10.2k in the same conditions).
//! - Attribute and entry caching for [`MountConfig::ttl`] (1 s by default)
//!   and `FOPEN_KEEP_CACHE` on open: every change to the namespace and to
//!   file data goes through this mount, so the kernel's caches are never
//!   stale because of someone else; 1 s bounds staleness should the engine
//!   ever change attributes on its own. No negative entries are cached.
//! - Readdirplus (auto) where the kernel offers it, so `ls -l` costs one
//!   round trip per directory block instead of one per entry; parallel
//!   directory operations (lookups in one directory run concurrently).
//! - Writeback cache: OFF. Without it the kernel sends each write(2) as it
//!   comes (up to 1 MiB) and keeps an exact file size, so O_APPEND and
//!   size-extending writes are resolved by the kernel; the engine already
//!   buffers a whole extent per file, so a second buffer buys little, and
//!   measured on these machines it cut raw FUSE write throughput (DESIGN.md).
//! - POSIX record locks and flock: left to the kernel. We do not ask for
//!   `FUSE_POSIX_LOCKS` / `FUSE_FLOCK_LOCKS`, so the kernel keeps the lock
//!   tables itself, exactly as for a local filesystem (blocking F_SETLKW,
//!   deadlock detection, release on close, F_GETLK with the holder's pid).
//!   That is complete because a pool is mounted by one daemon on one
//!   machine at a time (the pool lock): there is no other node to
//!   coordinate with. `getlk` / `setlk` are therefore never called.
//! - fallocate: mode 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE
//!   (`engine::sparse`: a hole costs no extent); other modes EOPNOTSUPP.
//! - lseek SEEK_DATA / SEEK_HOLE from the extent map (`engine::sparse`).
//! - copy_file_range: one engine call, so the bytes cross FUSE once.
//! - mmap, shared writable mappings included, is the kernel's page cache
//!   over our read/write (dirty pages come back as write requests at
//!   msync / writeback); nothing to do here but not set `FOPEN_DIRECT_IO`.
//! - Not implemented (ENOSYS): ioctl, poll, bmap.
//!
//! ## Mounting
//!
//! [`mount`] mounts and completes the FUSE handshake, returning a
//! [`Mounted`] session to [`Mounted::run`] (blocking until `umount`) or
//! [`Mounted::spawn`] (a background session, unmounted when dropped: what
//! tests use). As root it calls mount(2) itself with type `fuse.dfs` and the
//! member path as the source (so `/proc/self/mountinfo` and `findmnt` show
//! `fuse.dfs` and the device); otherwise it goes through `fusermount3`.
//! When the session ends, [`DfsFuse`]'s `destroy` syncs the pool; the
//! owner then closes it (`Pool::close`: flush and checkpoint).

pub mod error;
mod fs;

pub use fs::{file_attr, DfsFuse, BLKSIZE, MAX_READAHEAD, MAX_WRITE};

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackgroundSession, Config, MountOption, Session, SessionACL};

use crate::engine::Pool;

/// The filesystem type shown in mountinfo (`fuse.` + subtype).
pub const FS_TYPE: &str = "fuse.dfs";
/// The subtype.
pub const SUBTYPE: &str = "dfs";
/// How often a mount commits on its own (ext4's default `commit=5`).
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Mount read-only (the pool must be opened read-only too).
    pub read_only: bool,
    /// Let every user in (`allow_other`); permissions are checked by the
    /// kernel either way.
    pub allow_other: bool,
    /// How long the kernel may cache attributes and entries.
    pub ttl: Duration,
    /// Threads serving requests.
    pub threads: usize,
    /// The mount's source as mountinfo shows it (a member path).
    pub source: String,
    /// Raise the mount's read-ahead to this many KiB (0: leave it).
    pub read_ahead_kb: u32,
    /// Commit the journal this often (`None`: only on fsync and unmount);
    /// see "sync(1)" in the module doc.
    pub commit_interval: Option<Duration>,
}

impl Default for MountConfig {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        MountConfig {
            read_only: false,
            allow_other: false,
            ttl: Duration::from_secs(1),
            threads: (cpus * 8).clamp(16, 64),
            source: "dfs".into(),
            read_ahead_kb: MAX_READAHEAD / 1024,
            commit_interval: Some(DEFAULT_COMMIT_INTERVAL),
        }
    }
}

/// A mounted filesystem whose session has not started serving yet (the
/// handshake is done: requests queue until [`Mounted::run`] or
/// [`Mounted::spawn`]).
pub struct Mounted {
    session: Session<DfsFuse>,
    mountpoint: PathBuf,
    /// We called mount(2) ourselves (the session does not unmount).
    own_mount: bool,
    pool: Arc<Pool>,
    commit_interval: Option<Duration>,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted").field("mountpoint", &self.mountpoint).field("own_mount", &self.own_mount).finish()
    }
}

fn config(cfg: &MountConfig, options: Vec<MountOption>) -> Config {
    let mut c = Config::default();
    c.mount_options = options;
    c.acl = if cfg.allow_other { SessionACL::All } else { SessionACL::Owner };
    c.n_threads = Some(cfg.threads.max(1));
    c.clone_fd = cfg.threads > 1;
    c
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a mount argument"))
}

/// mount(2) of type `fuse.dfs` on a fresh `/dev/fuse` fd. `Ok(None)` when
/// not permitted (not root): the caller falls back to `fusermount3`.
fn mount_syscall(mountpoint: &Path, cfg: &MountConfig) -> io::Result<Option<OwnedFd>> {
    let md = std::fs::metadata(mountpoint)?;
    if !md.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{}: not a directory", mountpoint.display())));
    }
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse")?;
    let fd: OwnedFd = dev.into();
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        fd.as_raw_fd(),
        md.mode() & libc::S_IFMT,
        // SAFETY: getuid/getgid have no preconditions.
        unsafe { libc::getuid() },
        unsafe { libc::getgid() }
    );
    if cfg.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOATIME;
    if cfg.read_only {
        flags |= libc::MS_RDONLY;
    }
    let (src, target, fstype, data) = (
        cstr(cfg.source.as_bytes())?,
        cstr(mountpoint.as_os_str().as_bytes())?,
        cstr(FS_TYPE.as_bytes())?,
        cstr(data.as_bytes())?,
    );
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Ok(None);
        }
        return Err(io::Error::new(e.kind(), format!("mount {} on {}: {e}", cfg.source, mountpoint.display())));
    }
    Ok(Some(fd))
}

/// Lazy unmount of `mountpoint` (used when a handshake fails after mount(2)).
fn detach(mountpoint: &Path) {
    if let Ok(c) = cstr(mountpoint.as_os_str().as_bytes()) {
        // SAFETY: c is NUL-terminated.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The `MAJ:MIN` of the newest mount on `mountpoint`, from mountinfo (never
/// by stat: the mount is not served yet, so a stat would wait forever).
fn mount_dev_id(mountpoint: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.as_os_str().as_bytes();
    text.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split(' ').collect();
        (f.len() > 4 && unescape_mountinfo(f[4]) == want).then(|| f[2].to_string())
    })
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Raise the read-ahead of the mount's bdi (`/sys/class/bdi/MAJ:MIN`), so
/// that sequential reads reach 1 MiB requests. Best effort.
fn raise_read_ahead(mountpoint: &Path, kb: u32) {
    if kb == 0 {
        return;
    }
    let Some(id) = mount_dev_id(mountpoint) else { return };
    let path = format!("/sys/class/bdi/{id}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, format!("{kb}\n")) {
        tracing::debug!("{path}: {e} (read-ahead left as is)");
    }
}

/// Mount `pool` on `mountpoint` and complete the FUSE handshake.
pub fn mount(pool: Arc<Pool>, mountpoint: &Path, cfg: &MountConfig) -> io::Result<Mounted> {
    if cfg.read_only != pool.read_only() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a read-only mount needs a pool opened read-only, and a read-write mount a writable pool",
        ));
    }
    let mountpoint = &std::fs::canonicalize(mountpoint)?;
    let fs = DfsFuse::new(pool.clone(), cfg.ttl);
    let (session, own_mount) = match mount_syscall(mountpoint, cfg)? {
        Some(fd) => {
            let acl = if cfg.allow_other { SessionACL::All } else { SessionACL::Owner };
            match Session::from_fd(fs, fd, acl, config(cfg, Vec::new())) {
                Ok(s) => (s, true),
                Err(e) => {
                    detach(mountpoint);
                    return Err(e);
                }
            }
        }
        None => {
            let mut opts = vec![
                MountOption::FSName(cfg.source.clone()),
                MountOption::Subtype(SUBTYPE.into()),
                MountOption::DefaultPermissions,
                MountOption::NoAtime,
            ];
            if cfg.read_only {
                opts.push(MountOption::RO);
            }
            (Session::new(fs, mountpoint, &config(cfg, opts))?, false)
        }
    };
    raise_read_ahead(mountpoint, cfg.read_ahead_kb);
    tracing::info!(mountpoint = %mountpoint.display(), source = %cfg.source, read_only = cfg.read_only, "mounted");
    Ok(Mounted {
        session,
        mountpoint: mountpoint.to_path_buf(),
        own_mount,
        pool,
        commit_interval: cfg.commit_interval.filter(|d| !d.is_zero()),
    })
}

impl Mounted {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Serve requests until the filesystem is unmounted.
    pub fn run(self) -> io::Result<()> {
        let committer = Committer::start(self.pool.clone(), self.commit_interval);
        let res = self.session.run();
        drop(committer);
        res
    }

    /// Serve requests on background threads until the returned handle is
    /// unmounted or dropped.
    pub fn spawn(self) -> io::Result<BackgroundMount> {
        let Mounted { session, mountpoint, own_mount, pool, commit_interval } = self;
        let bg = session.spawn()?;
        let committer = Committer::start(pool, commit_interval);
        Ok(BackgroundMount { bg: Some(bg), mountpoint, own_mount, _committer: committer })
    }
}

/// The periodic commit: a thread calling `Pool::commit` every interval
/// until dropped.
#[derive(Debug)]
struct Committer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Committer {
    fn start(pool: Arc<Pool>, every: Option<Duration>) -> Option<Committer> {
        let every = every?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("dfs-commit".into())
            .spawn(move || {
                use std::sync::atomic::Ordering;
                loop {
                    let until = std::time::Instant::now() + every;
                    while !flag.load(Ordering::Acquire) {
                        let left = until.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        std::thread::park_timeout(left);
                    }
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    let _s = tracing::debug_span!("commit", periodic = true).entered();
                    pool.writeback();
                    if let Err(e) = pool.commit() {
                        tracing::error!("periodic commit failed: {e}");
                    }
                }
            })
            .map_err(|e| tracing::warn!("no periodic commit thread: {e}"))
            .ok()?;
        Some(Committer { stop, thread: Some(thread) })
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// A mount served by background threads; unmounted (and the threads
/// joined) by [`BackgroundMount::unmount`] or on drop, also on panic.
#[derive(Debug)]
pub struct BackgroundMount {
    bg: Option<BackgroundSession>,
    mountpoint: PathBuf,
    own_mount: bool,
    _committer: Option<Committer>,
}

impl BackgroundMount {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmount and wait until the session has ended (and synced the pool).
    pub fn unmount(mut self) -> io::Result<()> {
        self.unmount_inner(false)
    }

    fn unmount_inner(&mut self, lazy_fallback: bool) -> io::Result<()> {
        let Some(bg) = self.bg.take() else { return Ok(()) };
        if !self.own_mount {
            return bg.umount_and_join();
        }
        let target = cstr(self.mountpoint.as_os_str().as_bytes())?;
        let mut last = None;
        for _ in 0..50 {
            // SAFETY: target is NUL-terminated.
            if unsafe { libc::umount2(target.as_ptr(), 0) } == 0 {
                last = None;
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) {
                last = Some(e);
                break;
            }
            last = Some(e);
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(e) = last {
            if !lazy_fallback {
                self.bg = Some(bg);
                return Err(io::Error::new(e.kind(), format!("umount {}: {e}", self.mountpoint.display())));
            }
            // SAFETY: target is NUL-terminated.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        bg.join()
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner(true) {
            tracing::warn!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}
