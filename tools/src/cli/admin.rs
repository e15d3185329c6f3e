//! `dfs list-disks | list-extents | show-redundancy | policy-status`
//! (listings) and `dfs change-policy | fail-disk | remove-disk | rebuild |
//! rebuild-status` (changes) on a pool, mounted or not.
//!
//! [`Target::open`] decides where a command goes: when the pool is mounted
//! (its control socket `/run/dfs/<pool-uuid>.sock` answers; the pool is
//! named by any member, `UUID=`, or the mount point), every command is a
//! call on that socket and the mount does the work; otherwise the CLI opens
//! the pool itself — read-only and shared for listings, read-write under
//! the pool lock for changes — and runs the very same methods in-process
//! (`dynamicfs::control::methods`). So two writers never touch one pool.
//! A mount point is matched to its mount by asking each control socket
//! (`ping` names the mount point), not through the member it was mounted
//! from: that member may have left the pool since (`remove-disk`).
//! `--json` output uses the field names of the engine's `MemberInfo`,
//! `ExtentInfo`, `PolicyChange`, `RebuildIo`, `DrainProgress` and
//! `WorkerStatus` records (documented in `docs/CLI.md`).

use dfs_format::Policy;
use dynamicfs::control::{methods, socket_path, Client, ClientError, Registry, DEFAULT_SOCKET_DIR};
use dynamicfs::discover::{find_members, open_members, DiscoverOptions, PoolSource};
use dynamicfs::engine::admin::{ExtentInfo, MemberInfo};
use dynamicfs::engine::rebuild::{DrainProgress, RebuildIo, WorkerStatus};
use dynamicfs::engine::state::{ChangeState, PolicyChange};
use dynamicfs::engine::{EngineError, Pool, PoolOptions};
use dynamicfs::fuse::FS_TYPE;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::mountinfo;
use crate::{format_time_ns, iec, Table};

/// Where the commands of one `dfs` run go.
pub enum Target {
    /// The pool is mounted: calls go to the mount's control socket.
    Mounted { client: Client, socket: PathBuf },
    /// Not mounted: the CLI opened the pool and runs the methods itself.
    Local { pool: Box<Pool>, registry: Registry },
}

impl Target {
    /// Find the pool `arg` names and whether it is mounted. `writable`:
    /// an unmounted pool is opened read-write under the pool lock (else
    /// read-only, shared).
    pub fn open(arg: &str, writable: bool) -> Result<Target, String> {
        let mount = if Path::new(arg).is_dir() { mountinfo::find(Path::new(arg), FS_TYPE) } else { None };
        if let Some((client, socket)) = mount.as_ref().and_then(|m| socket_of_mount(&m.mountpoint)) {
            return Ok(Target::Mounted { client, socket });
        }
        let source = match &mount {
            Some(m) => PoolSource::parse(&m.source).map_err(|e| format!("{arg}: mounted from {:?}: {e}", m.source))?,
            None => PoolSource::parse(arg).map_err(|e| e.to_string())?,
        };
        let found = find_members(&source, &DiscoverOptions::default()).map_err(|e| e.to_string())?;
        let socket = socket_path(Path::new(DEFAULT_SOCKET_DIR), found.pool_uuid);
        if socket.exists() {
            match Client::connect(&socket) {
                Ok(client) => return Ok(Target::Mounted { client, socket }),
                Err(e) if mount.is_some() => return Err(format!("{arg} is mounted but {e}")),
                Err(_) => {} // a stale socket of a dead mount
            }
        } else if mount.is_some() {
            return Err(format!(
                "{arg} is mounted but its control socket {} does not exist (an older mount.dfs?)",
                socket.display()
            ));
        }
        let opts = PoolOptions { read_only: !writable, ..Default::default() };
        let devs = open_members(&found, opts.read_only).map_err(|e| e.to_string())?;
        let pool = Pool::open(devs, opts).map_err(|e| match e {
            EngineError::PoolInUse { .. } => {
                format!("pool {}: {e}; it is opened by another process that has no control socket", found.pool_uuid)
            }
            e => format!("pool {}: {e}", found.pool_uuid),
        })?;
        let mut registry = Registry::new();
        methods::register_admin(&mut registry);
        Ok(Target::Local { pool: Box::new(pool), registry })
    }

    /// True when the commands go to a mount.
    pub fn is_mounted(&self) -> bool {
        matches!(self, Target::Mounted { .. })
    }

    /// Call `method` and decode its answer.
    pub fn call<T: DeserializeOwned>(&mut self, method: &str, params: Value) -> Result<T, String> {
        let v = match self {
            Target::Mounted { client, socket } => client.call(method, params).map_err(|e| match e {
                ClientError::Remote(w) => w.message,
                e => format!("{}: {e}", socket.display()),
            })?,
            Target::Local { pool, registry } => registry.call(pool, method, params).map_err(|w| w.message)?,
        };
        serde_json::from_value(v).map_err(|e| format!("{method}: unexpected answer: {e}"))
    }

    /// Close a locally opened pool (final checkpoint); nothing for a mount.
    pub fn close(self) -> Result<(), String> {
        match self {
            Target::Mounted { .. } => Ok(()),
            Target::Local { pool, .. } if pool.read_only() => Ok(()),
            Target::Local { pool, .. } => pool.close().map_err(|e| e.to_string()),
        }
    }
}

/// The control socket (in [`DEFAULT_SOCKET_DIR`]) of the mount on
/// `mountpoint`: the one whose `ping` names it.
fn socket_of_mount(mountpoint: &Path) -> Option<(Client, PathBuf)> {
    let want = mountpoint.display().to_string();
    let mut sockets: Vec<PathBuf> = std::fs::read_dir(DEFAULT_SOCKET_DIR)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    sockets.sort();
    sockets.into_iter().find_map(|socket| {
        // A stopped daemon must not hang the CLI: a short timeout for ping.
        let mut client = Client::connect(&socket).ok()?;
        client.set_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
        let pong = client.call("ping", Value::Null).ok()?;
        client.set_timeout(None).ok()?;
        (pong.get("mountpoint").and_then(Value::as_str) == Some(want.as_str())).then_some((client, socket))
    })
}

/// `--max-rate`: bytes per second with an optional K/M/G suffix, not zero.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    match crate::parse_size(s.trim_end_matches("/s"))? {
        0 => Err(format!("{s:?}: a rate must be more than zero")),
        n => Ok(n),
    }
}

/// Open an unmounted pool directly (commands that have no control-socket
/// method yet). `read_only`: shared, without the pool lock. A mounted pool
/// is refused with one line saying so.
pub fn open(arg: &str, read_only: bool) -> Result<Pool, String> {
    match Target::open(arg, !read_only)? {
        Target::Local { pool, .. } => Ok(*pool),
        Target::Mounted { socket, .. } => Err(format!(
            "{arg}: the pool is mounted (control socket {}); this command works on an unmounted pool only",
            socket.display()
        )),
    }
}

/// A member named by index or by path (device, image, directory).
pub fn member_index(target: &mut Target, disk: &str) -> Result<u32, String> {
    if let Ok(i) = disk.parse::<u32>() {
        return Ok(i);
    }
    let want = std::fs::canonicalize(disk).unwrap_or_else(|_| PathBuf::from(disk));
    let members: Vec<MemberInfo> = target.call("list-disks", Value::Null)?;
    members
        .iter()
        .find(|m| {
            m.state != "removed" && (std::fs::canonicalize(&m.path).unwrap_or_else(|_| PathBuf::from(&m.path)) == want)
        })
        .map(|m| m.index)
        .ok_or_else(|| format!("{disk}: not a member of this pool (see dfs list-disks)"))
}

fn json<T: Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map(|s| s + "\n").map_err(|e| e.to_string())
}

/// `list-disks`.
pub fn list_disks(t: &mut Target, as_json: bool) -> Result<String, String> {
    let members: Vec<MemberInfo> = t.call("list-disks", Value::Null)?;
    if as_json {
        return json(&members);
    }
    let mut tb = Table::new(
        &["INDEX", "STATE", "SIZE", "USED", "FREE", "FRAGMENTS", "ERRORS", "PATH"],
        &[true, false, true, true, true, true, true, false],
    );
    // Members that left the pool are history: only `--json` lists them.
    for m in members.iter().filter(|m| m.state != "removed") {
        tb.row(vec![
            m.index.to_string(),
            m.state.clone(),
            iec(m.size_bytes),
            iec(m.used_bytes),
            iec(m.free_bytes),
            m.fragments.to_string(),
            m.errors.to_string(),
            m.path.clone(),
        ]);
    }
    Ok(tb.render(0))
}

/// `list-extents`.
pub fn list_extents(t: &mut Target, as_json: bool) -> Result<String, String> {
    let extents: Vec<ExtentInfo> = t.call("list-extents", Value::Null)?;
    if as_json {
        return json(&extents);
    }
    let mut tb = Table::new(
        &["EXTENT", "PATH", "OFFSET", "LENGTH", "POLICY", "MEMBERS"],
        &[false, false, true, true, false, false],
    );
    for e in &extents {
        let members: Vec<String> = e.fragments.iter().map(|f| f.member.to_string()).collect();
        tb.row(vec![
            e.id.clone(),
            e.path.clone().unwrap_or_else(|| format!("<inode {}>", e.ino)),
            iec(e.offset),
            iec(e.len as u64),
            e.policy.clone(),
            members.join(","),
        ]);
    }
    Ok(tb.render(0))
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
pub fn show_redundancy(t: &mut Target, as_json: bool) -> Result<String, String> {
    let mut by: BTreeMap<String, RedundancyLine> = BTreeMap::new();
    let extents: Vec<ExtentInfo> = t.call("list-extents", Value::Null)?;
    for e in extents {
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
    let mut tb = Table::new(&["POLICY", "EXTENTS", "BYTES", "DEGRADED", "SURVIVES"], &[false, true, true, true, true]);
    for l in &lines {
        tb.row(vec![
            l.policy.clone(),
            l.extents.to_string(),
            iec(l.bytes),
            l.degraded_extents.to_string(),
            format!("{} lost", l.tolerated_losses),
        ]);
    }
    Ok(tb.render(0))
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
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub message: String,
}

fn change_line(c: PolicyChange) -> ChangeLine {
    ChangeLine {
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
        bytes_done: c.bytes_done,
        bytes_total: c.bytes_total,
        message: c.message,
    }
}

/// `policy-status`.
pub fn policy_status(t: &mut Target, as_json: bool) -> Result<String, String> {
    let history: Vec<PolicyChange> = t.call("policy-history", Value::Null)?;
    let lines: Vec<ChangeLine> = history.into_iter().map(change_line).collect();
    if as_json {
        return json(&lines);
    }
    if lines.is_empty() {
        return Ok("No policy changes recorded.\n".into());
    }
    let mut tb = Table::new(
        &["ID", "STATE", "POLICY", "SCOPE", "EXTENTS", "BYTES", "STARTED", "FINISHED", "MESSAGE"],
        &[true, false, false, false, true, true, false, false, false],
    );
    for l in &lines {
        tb.row(vec![
            l.id.to_string(),
            l.state.clone(),
            l.policy.clone(),
            format!("{}{}", l.scope, if l.recursive { " (recursive)" } else { "" }),
            format!("{}/{}", l.extents_done, l.extents_total),
            format!("{}/{}", iec(l.bytes_done), iec(l.bytes_total)),
            l.started.clone(),
            l.finished.clone().unwrap_or_else(|| "-".into()),
            if l.message.is_empty() { "-".into() } else { l.message.clone() },
        ]);
    }
    Ok(tb.render(0))
}

/// How `change-policy` runs: path, recursion, rate cap, progress line.
#[derive(Debug, Default, Clone)]
pub struct ChangeArgs<'a> {
    pub path: Option<&'a str>,
    pub recursive: bool,
    /// Most bytes per second re-encoded (`--max-rate`).
    pub max_rate: Option<u64>,
    /// Show a progress line on stderr (a terminal, a mounted pool).
    pub progress: bool,
}

/// `change-policy`: finishes interrupted changes first, then runs this one.
/// The policy is checked here first, so a nonsense string is a clear error
/// before anything is opened for writing.
pub fn change_policy(t: &mut Target, policy: &str, a: &ChangeArgs) -> Result<String, String> {
    let p: Policy = policy.parse().map_err(|e: dfs_format::FormatError| format!("policy {policy:?}: {e}"))?;
    p.validate().map_err(|e| format!("policy {policy:?}: {e}"))?;
    let params =
        serde_json::json!({"policy": policy, "path": a.path, "recursive": a.recursive, "max_rate": a.max_rate});
    let c: PolicyChange = match t {
        // Unmounted: the change runs here, and reports each extent.
        Target::Local { pool, .. } if a.progress => {
            let bar = ChangeBar::new();
            methods::change_policy(pool, &params, &|done, total| bar.set(done, total)).map_err(|w| w.message)?
        }
        // Mounted: a second connection follows the change's record.
        Target::Mounted { socket, .. } if a.progress => {
            let _ticker = Ticker::start(socket.clone());
            t.call("change-policy", params)?
        }
        _ => t.call("change-policy", params)?,
    };
    Ok(format!("{}: {} re-encoded {} extents under {p}\n", c.id, c.scope, c.extents_done))
}

/// The progress bar of a policy change on stderr (indicatif; callers make
/// one only when stderr is a terminal). Left drawn when dropped.
struct ChangeBar(indicatif::ProgressBar);

impl ChangeBar {
    fn new() -> ChangeBar {
        let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        let style = indicatif::ProgressStyle::with_template("  {bar:32} {pos}/{len} extents  {elapsed} (ETA {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        ChangeBar(bar)
    }

    /// `done` of `total` extents (a resumed change, then the new one, each
    /// start their own count).
    fn set(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

impl Drop for ChangeBar {
    fn drop(&mut self) {
        if self.0.length().is_some() {
            self.0.abandon();
        }
    }
}

/// A progress bar for a change running in a mount: a second connection
/// polls `policy-history` and moves the bar until dropped.
struct Ticker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(socket: PathBuf) -> Ticker {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let Ok(mut client) = Client::connect(&socket) else { return };
            let bar = ChangeBar::new();
            while !s.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(250));
                let Ok(v) = client.call("policy-history", Value::Null) else { break };
                let history: Vec<PolicyChange> = serde_json::from_value(v).unwrap_or_default();
                if let Some(c) = history.iter().rev().find(|c| c.state == ChangeState::Running) {
                    bar.set(c.extents_done, c.extents_total);
                }
            }
        });
        Ticker { stop, thread: Some(thread) }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `fail-disk`.
pub fn fail_disk(t: &mut Target, disk: &str) -> Result<String, String> {
    let index = member_index(t, disk)?;
    let _: Value = t.call("fail-disk", serde_json::json!({"index": index}))?;
    let then = if t.is_mounted() {
        "the mount rebuilds its extents in the background"
    } else {
        "its extents are served degraded until rebuilt (dfs rebuild, or on read)"
    };
    Ok(format!("member {index} marked failed; {then}\n"))
}

/// `remove-disk`: on a mount the drain runs in the background (`wait`
/// polls it with progress); on an unmounted pool it runs here, to the end.
pub fn remove_disk(t: &mut Target, disk: &str, wait: bool, as_json: bool) -> Result<String, String> {
    let index = member_index(t, disk)?;
    let local = !t.is_mounted();
    let mut p: DrainProgress = t.call("remove-disk", serde_json::json!({"index": index, "wait": local}))?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    while wait && !p.removed {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let st: WorkerStatus = t.call("rebuild-status", Value::Null)?;
        if st.removed.contains(&index) {
            p = DrainProgress { member: index, fragments_left: 0, removed: true };
        } else if let Some(d) = st.draining.iter().find(|d| d.member == index) {
            p = d.clone();
        }
        if tty {
            eprint!("\r  draining member {index}: {} fragments left   ", p.fragments_left);
        }
    }
    if wait && tty {
        eprintln!();
    }
    if as_json {
        return json(&p);
    }
    Ok(if p.removed {
        format!("member {index} drained and removed from the pool\n")
    } else {
        format!("member {index} is draining ({} fragments to move); see dfs rebuild-status\n", p.fragments_left)
    })
}

/// `rebuild`: rebuild every degraded extent now.
pub fn rebuild(t: &mut Target, as_json: bool) -> Result<String, String> {
    let io: RebuildIo = t.call("rebuild", serde_json::json!({}))?;
    if as_json {
        return json(&io);
    }
    Ok(format!(
        "rebuilt {} fragments of {} extents: read {}, wrote {}\n",
        io.fragments,
        io.extents,
        iec(io.bytes_read),
        iec(io.bytes_written)
    ))
}

/// `rebuild-status`: what the mount's background worker did.
pub fn rebuild_status(t: &mut Target, as_json: bool) -> Result<String, String> {
    if !t.is_mounted() {
        return Err("rebuild-status shows the background worker of a mount; this pool is not mounted".into());
    }
    let st: WorkerStatus = t.call("rebuild-status", Value::Null)?;
    if as_json {
        return json(&st);
    }
    let mut tb = Table::new(&["JOB", "EXTENTS", "FRAGMENTS", "READ", "WRITTEN"], &[false, true, true, true, true]);
    for (name, io) in [("rebuild", st.rebuild), ("drain", st.drain)] {
        tb.row(vec![
            name.into(),
            io.extents.to_string(),
            io.fragments.to_string(),
            iec(io.bytes_read),
            iec(io.bytes_written),
        ]);
    }
    let mut out = tb.render(0);
    out.push_str(&format!(
        "degraded extents: {}   passes: {}   errors: {}\n",
        st.degraded_extents, st.passes, st.errors
    ));
    for d in &st.draining {
        out.push_str(&format!("draining member {}: {} fragments left\n", d.member, d.fragments_left));
    }
    if let Some(e) = &st.last_error {
        out.push_str(&format!("last error: {e}\n"));
    }
    Ok(out)
}

/// `add-disk`: DEV, image, or DIR[:SIZE]; probed like mkfs (`force`
/// overrides a foreign signature) by the process that opens it.
pub fn add_disk(t: &mut Target, disk: &str, force: bool, as_json: bool) -> Result<String, String> {
    let (path, size) = match disk.rsplit_once(':') {
        Some((p, s)) if !p.is_empty() && s.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
            (p.to_string(), Some(crate::parse_size(s)?))
        }
        _ => (disk.to_string(), None),
    };
    // The mount opens it: give it an absolute path.
    let abs = std::path::absolute(&path).map_err(|e| format!("{path}: {e}"))?;
    let v: Value =
        t.call("add-disk", serde_json::json!({"disk": abs.display().to_string(), "size": size, "force": force}))?;
    if as_json {
        return json(&v);
    }
    Ok(format!("{} added as member {}; it takes new fragments now\n", abs.display(), v["index"]))
}

#[cfg(test)]
mod tests {
    use super::parse_rate;
    use proptest::prelude::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("8M"), Ok(8 << 20));
        assert_eq!(parse_rate("16M/s"), Ok(16 << 20));
        assert_eq!(parse_rate("4096"), Ok(4096));
        assert!(parse_rate("0").unwrap_err().contains("more than zero"));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("").is_err());
    }

    proptest! {
        /// Any text is a rate above zero or an error naming it, never a panic.
        #[test]
        fn any_text(s in ".{0,24}") {
            match parse_rate(&s) {
                Ok(n) => prop_assert!(n > 0),
                Err(e) => prop_assert!(!e.is_empty()),
            }
        }

        /// N with a suffix is N times the unit.
        #[test]
        fn with_suffix(n in 1u64..1 << 30, unit in prop::sample::select(vec![("K", 10u32), ("M", 20), ("G", 30)])) {
            prop_assert_eq!(parse_rate(&format!("{n}{}", unit.0)), Ok(n << unit.1));
        }
    }
}
