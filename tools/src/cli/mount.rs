//! Mounting a pool: `mount.dfs DEV DIR [-sfnv] [-o opts]` (what `mount -t
//! dfs` and fstab run) and `dfs mount --pool MEMBER --mountpoint DIR`, one
//! code path.
//!
//! ## Options (`-o`, comma-separated, repeatable)
//!
//! `ro`, `rw`, `allow_other` (the default when root), `policy=P` (sets
//! the pool's default policy, kept in its config: new extents of files
//! without a pinned `user.dfs.policy` use it; refused when the online
//! members can't satisfy it), `verify` (read back and check every fragment
//! after writing it), `device=PATH` (another member to look at first;
//! repeatable), `log=FILE`, `degraded` (mount although members the pool
//! has were not found; without it that is an error, as with btrfs),
//! `commit=SECS` (commit on its own this often, default 5, 0 = only on
//! fsync and unmount: sync(1) does not reach FUSE), `metrics=[ADDR:]PORT`
//! (serve `/metrics` and `/health` there; ADDR defaults to 127.0.0.1; off
//! unless given; `dfs mount --listen` says the same). `defaults`, `auto`, `noauto`, `_netdev`,
//! `nofail`, `user`, `users`, `nouser`, `owner`, `group`, `x-*` and
//! `comment=*` (fstab's and systemd's) are accepted and ignored, and so
//! are the VFS flags every dfs mount has anyway (`nosuid`, `nodev`,
//! `noatime`, `relatime`, `nodiratime`, `lazytime`, `exec`, `async`),
//! which mount(8) passes on from fstab. Anything else is an error unless
//! `-s` (sloppy) is given.
//!
//! ## Sources
//!
//! DEV is a member path (block device, image file, directory member) or
//! `UUID=<pool uuid>`. mount(8) resolves `UUID=` itself, through libblkid,
//! before it runs this helper, and libblkid does not know DynamicFS: it
//! finds the tag only through the `/dev/disk/by-uuid/<uuid>` link that
//! scripts/udev/61-dfs.rules (installed by scripts/install.sh) makes with
//! `dfs-inspect udev`; without it mount(8) stops with "can't find UUID=".
//! mount.dfs run directly takes `UUID=` and finds the members itself
//! (`dynamicfs::discover`).
//!
//! ## Flags
//!
//! `-f` stays in the foreground (logs to stderr unless `log=`); `-v` says
//! what was mounted; `-n` (no mtab) and `-s` are accepted for mount(8).
//! mount(8)'s own `-f` (fake) never runs the helper, so `-f` is free here.
//!
//! ## Detaching, and why the fork comes first
//!
//! The helper forks before anything else; the child opens the pool
//! ([`dynamicfs::discover`]), mounts, completes the FUSE handshake, then
//! writes `ready` on a pipe and serves until `umount`. The parent waits for
//! that word (or an error line, or the child's death), checks that
//! mountinfo lists DIR as `fuse.dfs`, and only then exits 0; otherwise it
//! prints the one error line and exits 1. Forking after opening would hand
//! the child io_uring rings and a pool lock recording the parent's PID,
//! and threads do not survive fork; forking first keeps all of that in the
//! process that uses it, with the same behaviour seen from outside.
//!
//! The daemon logs JSON lines to `log=FILE` or `/var/log/dfs-<pool>.log`
//! (filter from `DFS_LOG`, else `RUST_LOG`, default `info`; `DFS_LOG_FORMAT`
//! = `human` or `json` overrides the format), each line inside a FUSE
//! request carrying its request id (`span.req`). `umount DIR` ends the session;
//! the pool is then synced and closed (flush + checkpoint) and the daemon
//! exits. SIGTERM, SIGINT and SIGHUP unmount (lazily if busy) to the same
//! end. A daemon killed outright loses only what was not fsynced: the
//! journal makes the next open clean (run `umount DIR` first to remove the
//! dead mount).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dfs_format::Policy;
use dynamicfs::device::DeviceError;
use dynamicfs::discover::{find_members, open_members, DiscoverError, DiscoverOptions, Discovered, PoolSource};
use dynamicfs::engine::{EngineError, Pool, PoolOptions};
use dynamicfs::fuse::{MountConfig, FS_TYPE};
use dynamicfs::metrics::IoMeters;

use super::mountinfo;

/// Options ignored (fstab / systemd / mount(8) bookkeeping).
/// mount(8) also passes VFS flags on: a FUSE mount is always `nosuid`,
/// `nodev` and `noatime` (see `dynamicfs::fuse`), so those and the atime
/// variants are accepted as already true; `exec` and `async` are the
/// defaults. (`noexec`, `suid`, `dev`, `sync`, `strictatime` are not
/// honoured, so they are errors, not silently dropped.)
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "_netdev",
    "nofail",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "nosuid",
    "nodev",
    "noatime",
    "relatime",
    "nodiratime",
    "lazytime",
    "exec",
    "async",
    "silent",
    "loud",
];

/// What `-o` said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MountOptions {
    pub read_only: bool,
    /// `None`: the default (on when root).
    pub allow_other: Option<bool>,
    pub policy: Option<Policy>,
    pub verify: bool,
    /// Mount even when members are missing.
    pub degraded: bool,
    /// Periodic commit interval in seconds (0: off; default 5).
    pub commit_secs: Option<u64>,
    pub devices: Vec<PathBuf>,
    pub log: Option<PathBuf>,
    /// Where to serve metrics (`ADDR:PORT`).
    pub metrics: Option<String>,
    /// A movable temperature clock (`temperature.advance`; demos, tests).
    pub test_clock: bool,
}

/// Parse `-o` lists (each comma-separated).
pub fn parse_options(lists: &[String], sloppy: bool) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    for opt in lists.iter().flat_map(|l| l.split(',')).filter(|s| !s.is_empty()) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("ro", None) => o.read_only = true,
            ("rw", None) => o.read_only = false,
            ("allow_other", None) => o.allow_other = Some(true),
            ("verify", None) => o.verify = true,
            ("degraded", None) => o.degraded = true,
            ("test_clock", None) => o.test_clock = true,
            ("commit", Some(v)) => {
                o.commit_secs = Some(v.parse().map_err(|_| format!("commit={v}: not a number of seconds"))?);
            }
            ("policy", Some(v)) => {
                o.policy = Some(v.parse().map_err(|e| format!("policy={v}: {e}"))?);
            }
            ("device", Some(v)) if !v.is_empty() => o.devices.push(PathBuf::from(v)),
            ("log", Some(v)) if !v.is_empty() => o.log = Some(PathBuf::from(v)),
            ("metrics", Some(v)) => o.metrics = Some(metrics_addr(v)?),
            (k, None) if IGNORED.contains(&k) => {}
            (k, _) if k.starts_with("x-") || k == "comment" => {}
            _ if sloppy => {}
            _ => return Err(format!("unknown mount option {opt:?}")),
        }
    }
    Ok(o)
}

/// `metrics=PORT` or `metrics=ADDR:PORT` as a socket address string.
fn metrics_addr(v: &str) -> Result<String, String> {
    let full = if v.parse::<u16>().is_ok() { format!("127.0.0.1:{v}") } else { v.to_string() };
    full.parse::<std::net::SocketAddr>().map_err(|_| format!("metrics={v}: expected PORT or ADDR:PORT"))?;
    Ok(full)
}

/// A mount request, from either command line.
#[derive(Debug, Clone)]
pub struct MountRequest {
    /// A member path or `UUID=<pool-uuid>`.
    pub source: String,
    pub mountpoint: PathBuf,
    pub options: Vec<String>,
    pub foreground: bool,
    pub sloppy: bool,
    pub verbose: bool,
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map(|d| d.join(p)).unwrap_or_else(|_| p.to_path_buf())
    }
}

/// Everything checked and made absolute before the fork.
struct Prepared {
    source: PoolSource,
    mountpoint: PathBuf,
    opts: MountOptions,
    foreground: bool,
}

fn prepare(req: &MountRequest) -> Result<Prepared, String> {
    let opts = parse_options(&req.options, req.sloppy)?;
    let mountpoint = std::fs::canonicalize(&req.mountpoint)
        .map_err(|e| format!("{}: mount point: {e}", req.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        return Err(format!("{}: mount point is not a directory", mountpoint.display()));
    }
    let source = match PoolSource::parse(&req.source).map_err(|e| e.to_string())? {
        PoolSource::Member(p) => {
            PoolSource::Member(std::fs::canonicalize(&p).map_err(|e| format!("{}: {e}", p.display()))?)
        }
        u => u,
    };
    let mut opts = opts;
    for d in &mut opts.devices {
        *d = std::fs::canonicalize(&*d).map_err(|e| format!("device={}: {e}", d.display()))?;
    }
    opts.log = opts.log.as_deref().map(absolute);
    Ok(Prepared { source, mountpoint, opts, foreground: req.foreground })
}

/// Mount as `req` says; returns the process exit status.
pub fn run(prog: &str, req: &MountRequest) -> ExitCode {
    let p = match prepare(req) {
        Ok(p) => p,
        Err(e) => return crate::fail(prog, &e),
    };
    if p.foreground {
        return match serve(&p, &mut None, req.verbose) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => crate::fail(prog, &e),
        };
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return crate::fail(prog, &format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds were just created and are owned here.
    let (mut rd, wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: single-threaded so far (nothing has spawned a thread), so
    // the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return crate::fail(prog, &format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(rd);
        daemonize();
        let mut notify = Some(wr);
        let code = match serve(&p, &mut notify, false) {
            Ok(()) => 0,
            Err(e) => {
                // Before `ready` the parent is still listening; after it, the log has it.
                if let Some(n) = notify.as_mut() {
                    let _ = writeln!(n, "error: {e}");
                }
                1
            }
        };
        std::process::exit(code);
    }
    drop(wr);
    let mut said = String::new();
    let _ = rd.read_to_string(&mut said);
    if let Some(msg) = said.lines().find_map(|l| l.strip_prefix("error: ")) {
        let _ = wait_child(pid, None);
        return crate::fail(prog, &msg);
    }
    if !said.lines().any(|l| l == "ready") {
        let status = wait_child(pid, None);
        return crate::fail(prog, &format!("the mount daemon exited ({status}) before the mount was live"));
    }
    match wait_live(&p.mountpoint, pid, Duration::from_secs(10)) {
        Ok(()) => {
            if req.verbose {
                println!("{prog}: {} mounted on {} (daemon pid {pid})", p.source, p.mountpoint.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(prog, &e),
    }
}

/// Detach from the caller: new session, `/` as cwd, std fds on /dev/null
/// (a caller reading our stdout, as `$(mount ...)` does, must see EOF).
fn daemonize() {
    // SAFETY: plain syscalls on fds and paths we own.
    unsafe {
        libc::setsid();
        let _ = libc::chdir(c"/".as_ptr());
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            if null > 2 {
                libc::close(null);
            }
        }
    }
}

/// Reap `pid` (waiting up to `timeout`, or forever) and describe its status.
fn wait_child(pid: libc::pid_t, timeout: Option<Duration>) -> String {
    let start = Instant::now();
    loop {
        let mut status = 0;
        let flags = if timeout.is_some() { libc::WNOHANG } else { 0 };
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == pid {
            return if libc::WIFEXITED(status) {
                format!("exit status {}", libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                format!("killed by signal {}", libc::WTERMSIG(status))
            } else {
                format!("status {status}")
            };
        }
        if r < 0 || timeout.is_some_and(|t| start.elapsed() > t) {
            return "still running".into();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until mountinfo lists `dir` as `fuse.dfs`, or the daemon died.
fn wait_live(dir: &Path, pid: libc::pid_t, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if mountinfo::find(dir, FS_TYPE).is_some() {
            return Ok(());
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            return Err(format!("the mount daemon exited before {} appeared in mountinfo", dir.display()));
        }
        if start.elapsed() > timeout {
            return Err(format!("{} did not appear in mountinfo within {timeout:?}", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn init_logging(log: Option<&Path>) -> Result<(), String> {
    use dynamicfs::logging::{self, LogFormat, LogTarget};
    let filter = logging::filter(&["DFS_LOG", "RUST_LOG"], "info");
    let format = LogFormat::choose(None).map_err(|e| e.to_string())?;
    let target = match log {
        Some(p) => LogTarget::File(p),
        None => LogTarget::Stderr,
    };
    logging::init(format, target, filter).map_err(|e| e.to_string())?;
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    Ok(())
}

/// Block the termination signals in this thread (and so in every thread
/// spawned after), and turn them into an unmount of `dir` on a thread of
/// their own.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn unmount_on_signal(set: libc::sigset_t, dir: PathBuf) {
    let spawned = std::thread::Builder::new().name("dfs-signals".into()).spawn(move || {
        let Ok(target) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return };
        loop {
            let mut sig = 0;
            // SAFETY: set is a valid signal set; sig receives the signal number.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                return;
            }
            tracing::info!(signal = sig, "signal received: unmounting {}", dir.display());
            // SAFETY: target is NUL-terminated.
            if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
                let e = std::io::Error::last_os_error();
                tracing::warn!("umount {}: {e}; detaching lazily", dir.display());
                // SAFETY: as above.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("no signal thread ({e}): signals will kill the daemon");
    }
}

/// Open the pool, mount, say `ready` on `notify` (and close it, so the
/// parent sees EOF), serve until unmounted, close the pool.
fn serve(p: &Prepared, notify: &mut Option<File>, verbose: bool) -> Result<(), String> {
    let ro = p.opts.read_only;
    let dopts = DiscoverOptions { extra: p.opts.devices.clone(), ..Default::default() };
    let found = find_members(&p.source, &dopts).map_err(|e| e.to_string())?;
    let log = match (&p.opts.log, notify.is_some()) {
        (Some(l), _) => Some(l.clone()),
        (None, true) => Some(PathBuf::from(format!("/var/log/dfs-{}.log", found.pool_uuid))),
        (None, false) => None,
    };
    init_logging(log.as_deref())?;
    let sigset = block_signals();
    for n in &found.notes {
        tracing::warn!("{n}");
    }
    if !found.missing.is_empty() {
        let list = found.missing.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
        if !p.opts.degraded {
            return Err(format!(
                "pool {}: member(s) {list} not found (name them with -o device=PATH, or mount with -o degraded)",
                found.pool_uuid
            ));
        }
        tracing::warn!(missing = %list, "members not found; mounting degraded");
    }
    // The built-in defaults; the settings stored in the pool
    // (`dfs temperature-config`) apply over them at open.
    let mut temperature = dynamicfs::temperature::TemperatureConfig::default();
    if p.opts.test_clock {
        temperature.clock = Arc::new(dynamicfs::temperature::OffsetClock::new());
    }
    let (pool, meters) = open_retrying_busy(
        &found,
        PoolOptions { read_only: ro, verify_writes: p.opts.verify, temperature, ..Default::default() },
    )?;
    for line in &pool.open_report {
        tracing::warn!("open: {line}");
    }
    if let Some(policy) = p.opts.policy {
        apply_policy(&pool, policy)?;
    }
    let source = match &p.source {
        PoolSource::Member(path) => path.display().to_string(),
        PoolSource::Uuid(_) => found.members.values().next().map(|m| m.path.display().to_string()).unwrap_or_default(),
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let cfg = MountConfig {
        read_only: ro,
        allow_other: p.opts.allow_other.unwrap_or(root),
        source,
        commit_interval: match p.opts.commit_secs {
            Some(0) => None,
            Some(s) => Some(std::time::Duration::from_secs(s)),
            None => Some(dynamicfs::fuse::DEFAULT_COMMIT_INTERVAL),
        },
        ..Default::default()
    };
    let pool = Arc::new(pool);
    // Metrics first: a bad address fails the mount before anything is mounted.
    // The metrics always exist (the control socket answers `metrics.text`
    // and `health`); the HTTP endpoint only with `metrics=`.
    let pm = Arc::new(dynamicfs::metrics::PoolMetrics::new(pool.clone(), meters).map_err(|e| e.to_string())?);
    pm.set_pool_arg(&p.mountpoint.display().to_string());
    let metrics_server = match &p.opts.metrics {
        Some(addr) => Some(dynamicfs::metrics::MetricsServer::start(addr, pm.clone()).map_err(|e| e.to_string())?),
        None => None,
    };
    // Lazy migration by temperature and the periodic flush of access statistics.
    let migrations = (!ro).then(|| pool.start_migration_worker());
    let mounted = dynamicfs::fuse::mount(pool.clone(), &p.mountpoint, &cfg)
        .map_err(|e| format!("mount on {}: {e}", p.mountpoint.display()))?;
    // The scrub daemon (#9): idle until started; its schedule, stored in
    // the pool, starts it when due (and resumes an interrupted pass).
    let scrubd = Arc::new(dynamicfs::engine::scrub_daemon::ScrubDaemon::new(pool.clone()));
    scrubd.run_schedule();
    tracing::info!(
        pool = %found.pool_uuid,
        members = found.members.len(),
        mountpoint = %p.mountpoint.display(),
        read_only = ro,
        "serving"
    );
    pm.live().set_scrub_daemon(&scrubd);
    let control = start_control(&pool, ro, &scrubd, &pm, &p.mountpoint)?;
    if let Some(mut n) = notify.take() {
        let _ = writeln!(n, "ready");
    }
    if verbose {
        eprintln!("mounted pool {} on {} (foreground)", found.pool_uuid, p.mountpoint.display());
    }
    unmount_on_signal(sigset, p.mountpoint.clone());
    let served = mounted.run();
    scrubd.shutdown();
    drop(scrubd);
    if let Err(e) = &served {
        tracing::error!("FUSE session ended with an error: {e}");
    }
    // Stop the control socket and the background worker before closing.
    drop(control);
    drop(migrations);
    // The endpoint holds the pool: stop it before closing the pool.
    drop(metrics_server);
    drop(pm);
    let closed = match Arc::try_unwrap(pool) {
        Ok(pool) => pool.close(),
        Err(pool) if ro => {
            drop(pool);
            Ok(())
        }
        Err(pool) => pool.sync_all().and_then(|()| pool.checkpoint()),
    };
    match closed {
        Ok(()) => {
            tracing::info!(pool = %found.pool_uuid, "unmounted; pool closed");
            served.map_err(|e| format!("FUSE session: {e}"))
        }
        Err(e) => {
            tracing::error!("closing the pool: {e}");
            Err(format!("closing pool {}: {e}", found.pool_uuid))
        }
    }
}

/// The control socket of a mount and its background rebuild/drain worker
/// (see `dynamicfs::control`); both stop when dropped.
struct Control {
    _server: dynamicfs::control::Server,
    worker: Option<Arc<dynamicfs::engine::rebuild::Worker>>,
}

impl Drop for Control {
    fn drop(&mut self) {
        // Connections still open keep the registry (and an Arc of the
        // worker): stop the thread explicitly.
        if let Some(w) = &self.worker {
            w.stop();
        }
    }
}

/// Serve the control socket (`/run/dfs/<pool-uuid>.sock`) and, read-write,
/// run the background worker. Features add their methods here.
fn start_control(
    pool: &Arc<Pool>,
    read_only: bool,
    scrubd: &Arc<dynamicfs::engine::scrub_daemon::ScrubDaemon>,
    metrics: &Arc<dynamicfs::metrics::PoolMetrics>,
    mountpoint: &std::path::Path,
) -> Result<Control, String> {
    use dynamicfs::control::{methods, socket_path, ErrorKind, Registry, Server, WireError, DEFAULT_SOCKET_DIR};
    let mut registry = Registry::new();
    methods::register_admin(&mut registry);
    methods::register_mountpoint(&mut registry, mountpoint);
    // The scrub daemon of this mount (#9) and the temperature reports (#8).
    for m in ["scrub.start", "scrub.status", "scrub.pause", "scrub.resume", "scrub.stop", "scrub.run", "scrub.schedule"]
    {
        let d = scrubd.clone();
        registry.register(m, move |_pool, params| {
            dynamicfs::engine::scrub_daemon::handle_control(&d, m, params)
                .map_err(|e| WireError::new(ErrorKind::Failed, e.to_string()))
        });
    }
    for m in ["temperature.list", "temperature.extent_stats", "temperature.config", "temperature.advance"] {
        registry.register(m, move |pool, params| {
            dynamicfs::temperature::handle_control(pool, m, params)
                .map_err(|e| WireError::new(ErrorKind::Failed, e.to_string()))
        });
    }
    // Live metrics, health and the one-screen status (#10).
    for m in ["metrics.text", "metrics.values", "health"] {
        let pm = metrics.clone();
        registry.register(m, move |_pool, params| {
            dynamicfs::metrics::handle_control(&pm, m, params)
                .map_err(|e| WireError::new(ErrorKind::Failed, e.to_string()))
        });
    }
    let pm = metrics.clone();
    registry.register("status", move |pool, _| {
        serde_json::to_value(super::status::of_pool(pool, &pm.health()))
            .map_err(|e| WireError::new(ErrorKind::Failed, e.to_string()))
    });
    let worker = if read_only {
        None
    } else {
        let w = dynamicfs::engine::rebuild::Worker::start(pool.clone(), Default::default())
            .map_err(|e| format!("starting the rebuild worker: {e}"))?;
        let w = Arc::new(w);
        methods::register_worker(&mut registry, w.clone());
        metrics.live().set_worker(&w);
        Some(w)
    };
    let path = socket_path(std::path::Path::new(DEFAULT_SOCKET_DIR), pool.uuid());
    let server = Server::start(pool.clone(), Arc::new(registry), &path)
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    tracing::info!(socket = %path.display(), "control socket listening");
    Ok(Control { _server: server, worker })
}

/// How long a mount waits for members (or the pool lock) another process
/// holds: `umount` returns before the previous daemon has closed the pool,
/// so a mount right after it may find the devices busy for a moment.
const BUSY_WAIT: Duration = Duration::from_secs(5);

/// Open the members and the pool, retrying for [`BUSY_WAIT`] while a
/// member is busy or the pool locked.
fn open_retrying_busy(found: &Discovered, opts: PoolOptions) -> Result<(Pool, IoMeters), String> {
    let start = Instant::now();
    loop {
        let res = open_members(found, opts.read_only)
            .map_err(|e| (matches!(e, DiscoverError::Open { source: DeviceError::Busy { .. }, .. }), e.to_string()))
            .and_then(|devs| {
                // Every device is metered (IO counters for the metrics endpoint).
                let (devs, meters) = dynamicfs::metrics::meter_devices(devs);
                Pool::open(devs, opts.clone())
                    .map(|p| (p, meters))
                    .map_err(|e| (matches!(e, EngineError::PoolInUse { .. }), format!("pool {}: {e}", found.pool_uuid)))
            });
        match res {
            Ok(pool) => return Ok(pool),
            Err((true, msg)) if start.elapsed() < BUSY_WAIT => {
                tracing::info!("{msg}; waiting for it to be released");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err((_, msg)) => return Err(msg),
        }
    }
}

/// `policy=P`: make it the pool's default policy (what new extents of
/// files without a pinned `user.dfs.policy` get); the engine refuses one
/// the online members can't satisfy. It persists in the pool's config.
fn apply_policy(pool: &Pool, policy: Policy) -> Result<(), String> {
    if pool.read_only() {
        return Err("policy= needs a read-write mount".into());
    }
    pool.set_default_policy(policy).map_err(|e| format!("policy={policy}: {e}"))?;
    tracing::info!(%policy, "pool default policy set");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &str) -> Result<MountOptions, String> {
        parse_options(&[s.to_string()], false)
    }

    #[test]
    fn options_parse() {
        let o =
            opts("ro,allow_other,verify,policy=erasure:2+1,device=/a,device=/b,log=/l,defaults,noauto,_netdev,nofail")
                .unwrap();
        assert!(o.read_only && o.verify);
        assert_eq!(o.allow_other, Some(true));
        assert_eq!(o.policy, Some("erasure:2+1".parse().unwrap()));
        assert_eq!(o.devices, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(o.log, Some(PathBuf::from("/l")));
        assert!(!opts("ro,rw").unwrap().read_only);
        assert_eq!(opts("commit=0").unwrap().commit_secs, Some(0));
        assert!(opts("commit=x").is_err());
        assert!(opts("x-systemd.automount,comment=foo").is_ok());
        assert!(opts("test_clock").unwrap().test_clock && !opts("").unwrap().test_clock);
    }

    proptest::proptest! {
        /// Any `metrics=` value is either a socket address or a clear error.
        #[test]
        fn metrics_option_never_panics(v in "\\PC{0,40}") {
            let v = v.replace(',', "");
            match opts(&format!("metrics={v}")) {
                Ok(o) => proptest::prop_assert!(o.metrics.unwrap().parse::<std::net::SocketAddr>().is_ok()),
                Err(e) => proptest::prop_assert!(e.contains("metrics=")),
            }
        }
    }

    #[test]
    fn bad_options_refused() {
        assert!(opts("policy=bogus").unwrap_err().contains("policy=bogus"));
        assert!(opts("frobnicate").unwrap_err().contains("unknown mount option"));
        assert!(parse_options(&["frobnicate".into()], true).is_ok());
        assert!(opts("device=").is_err());
        assert_eq!(opts("metrics=9464").unwrap().metrics.as_deref(), Some("127.0.0.1:9464"));
        assert_eq!(opts("metrics=0.0.0.0:9000").unwrap().metrics.as_deref(), Some("0.0.0.0:9000"));
        assert!(opts("metrics=nowhere").unwrap_err().contains("metrics=nowhere"));
        assert!(opts("metrics=").is_err());
    }
}
