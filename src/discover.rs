//! # Finding every member of a pool from one of them
//!
//! `mount.dfs DEV DIR` names one member (a block device, an image file or a
//! directory member), or `UUID=<pool-uuid>`; the pool needs all of them.
//! [`find_members`] looks, read-only and without exclusive opens (so it
//! works while the pool is mounted and disturbs nobody):
//!
//! 1. the named member's superblock gives the pool UUID (with `UUID=`, the
//!    UUID is given and nothing is named);
//! 2. the extra paths the caller gives (`-o device=PATH`), then every block
//!    device in `/sys/class/block`: each one's superblock is read, errors
//!    ignored (a disk of another filesystem, an empty loop device or a
//!    CD drive simply isn't a member);
//! 3. when some member index is still missing after that (the best root
//!    record says how many members the pool has), the metadata is opened
//!    read-only with what was found, and the member table's `path_hint`s
//!    (the paths members had when last opened: image files and directory
//!    members, which no block device scan can find) are probed too.
//!
//! A candidate counts when its superblock names the pool; the first path
//! found for a member UUID wins (the named one first, then the extras), so
//! an image file given by name beats the loop device over it. Two paths
//! claiming one member index with different member UUIDs are reported.
//!
//! [`open_members`] then opens what was found for real: read-write and
//! exclusive (`O_EXCL` on block devices, `flock` on image files) for a
//! writable pool, read-only and shared otherwise.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dfs_format::Superblock;

use crate::device::open::member_kind;
use crate::device::raw::{IoPathChoice, RawDevice, RawOpenOptions};
use crate::device::{open_member_device, Device, DeviceKind, DirDevice, OpenMode};
use crate::engine::state::MemberState;
use crate::engine::{Pool, PoolOptions};
use crate::member::{best_root, read_root_ring, read_superblocks};

/// Where `/sys` lists the block devices.
const SYS_CLASS_BLOCK: &str = "/sys/class/block";

/// What names the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolSource {
    /// One member (any of them).
    Member(PathBuf),
    /// The pool UUID (`UUID=...`): members are searched for.
    Uuid(uuid::Uuid),
}

impl PoolSource {
    /// `UUID=<uuid>` or a path.
    pub fn parse(s: &str) -> Result<PoolSource, DiscoverError> {
        match s.strip_prefix("UUID=") {
            Some(u) => {
                u.parse().map(PoolSource::Uuid).map_err(|e| DiscoverError::BadSource(format!("{s}: not a UUID: {e}")))
            }
            None if s.is_empty() => Err(DiscoverError::BadSource("empty member path".into())),
            None => Ok(PoolSource::Member(PathBuf::from(s))),
        }
    }
}

impl std::fmt::Display for PoolSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PoolSource::Member(p) => write!(f, "{}", p.display()),
            PoolSource::Uuid(u) => write!(f, "UUID={u}"),
        }
    }
}

/// How to look.
#[derive(Debug, Clone)]
pub struct DiscoverOptions {
    /// More paths to probe (tried before the scan, in order).
    pub extra: Vec<PathBuf>,
    /// Probe every block device in `/sys/class/block`.
    pub scan_block_devices: bool,
    /// Read the member table's path hints when members are still missing.
    pub use_path_hints: bool,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        DiscoverOptions { extra: Vec::new(), scan_block_devices: true, use_path_hints: true }
    }
}

/// One member found.
#[derive(Debug, Clone)]
pub struct FoundMember {
    pub path: PathBuf,
    pub kind: DeviceKind,
    pub index: u32,
    pub member_uuid: uuid::Uuid,
    pub superblock: Superblock,
}

/// What [`find_members`] found.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub pool_uuid: uuid::Uuid,
    /// By member index.
    pub members: BTreeMap<u32, FoundMember>,
    /// Members the pool has (from the best root record; 0 when no root
    /// record could be read).
    pub member_count: u32,
    /// Indexes the pool has (not removed) that were not found.
    pub missing: Vec<u32>,
    /// Oddities worth a log line (conflicting copies of a member).
    pub notes: Vec<String>,
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoverError {
    #[error("{0}")]
    BadSource(String),
    /// `reason` names the path.
    #[error("{reason}")]
    NotAMember { path: PathBuf, reason: String },
    #[error("no member of pool {0} found (searched the given paths and every block device)")]
    NoneFound(uuid::Uuid),
    #[error("{}: {source}", path.display())]
    Open { path: PathBuf, source: crate::device::DeviceError },
    #[error("pool {pool}: reading the member table: {source}")]
    Metadata { pool: uuid::Uuid, source: crate::engine::EngineError },
}

/// Open `path` for probing: read-only, shared, cheap (no io_uring ring).
fn probe_open(path: &Path) -> Option<Arc<dyn Device>> {
    match member_kind(path).ok()? {
        DeviceKind::Dir => DirDevice::open(path, true).ok().map(|d| Arc::new(d) as Arc<dyn Device>),
        _ => RawDevice::open_with_io(path, RawOpenOptions { read_only: true, exclusive: false }, IoPathChoice::Pread)
            .ok()
            .map(|d| Arc::new(d) as Arc<dyn Device>),
    }
}

/// Read the superblock of `path`; `Err` says why it is not a member.
fn probe(path: &Path) -> Result<(Arc<dyn Device>, Superblock), String> {
    let dev = match member_kind(path) {
        Ok(_) => probe_open(path).ok_or_else(|| format!("{}: cannot be opened", path.display()))?,
        Err(e) => return Err(e.to_string()),
    };
    let choice = read_superblocks(dev.as_ref()).map_err(|e| e.to_string())?;
    Ok((dev, choice.superblock))
}

/// Every block device node in `/sys/class/block`, as `/dev/<name>`.
fn block_devices() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(SYS_CLASS_BLOCK) else { return Vec::new() };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            // An empty loop device or a drive without a medium has size 0: skip it unread.
            let size = std::fs::read_to_string(e.path().join("size")).ok()?;
            (size.trim() != "0").then(|| Path::new("/dev").join(name))
        })
        .filter(|p| p.exists())
        .collect();
    out.sort();
    out
}

struct Search {
    pool: Option<uuid::Uuid>,
    found: BTreeMap<u32, FoundMember>,
    seen_uuids: HashSet<uuid::Uuid>,
    notes: Vec<String>,
}

impl Search {
    fn consider(&mut self, path: &Path) {
        let Ok((dev, sb)) = probe(path) else { return };
        self.add(path, dev.identity().kind, sb);
    }

    fn add(&mut self, path: &Path, kind: DeviceKind, sb: Superblock) {
        if Some(sb.pool_uuid) != self.pool || !self.seen_uuids.insert(sb.member_uuid) {
            return;
        }
        if let Some(other) = self.found.get(&sb.member_index) {
            self.notes.push(format!(
                "{} and {} both claim member index {} of pool {} (member UUIDs {} and {}); keeping {}",
                other.path.display(),
                path.display(),
                sb.member_index,
                sb.pool_uuid,
                other.member_uuid,
                sb.member_uuid,
                other.path.display()
            ));
            return;
        }
        self.found.insert(
            sb.member_index,
            FoundMember {
                path: path.to_path_buf(),
                kind,
                index: sb.member_index,
                member_uuid: sb.member_uuid,
                superblock: sb,
            },
        );
    }

    /// Members the best root record (on any found member) says the pool has.
    fn member_count(&self) -> u32 {
        let Some(pool) = self.pool else { return 0 };
        let mut best: Option<(u64, u32)> = None;
        for m in self.found.values() {
            let Some(dev) = probe_open(&m.path) else { continue };
            let Ok(slots) = read_root_ring(dev.as_ref(), &m.superblock.layout) else { continue };
            if let Some((_, r)) = best_root(&slots, pool) {
                if best.is_none_or(|(g, _)| r.generation > g) {
                    best = Some((r.generation, r.member_count));
                }
            }
        }
        best.map(|(_, c)| c).unwrap_or(0)
    }

    fn missing(&self, count: u32) -> Vec<u32> {
        (0..count).filter(|i| !self.found.contains_key(i)).collect()
    }
}

/// Find every member of the pool `source` names (see the module doc).
pub fn find_members(source: &PoolSource, opts: &DiscoverOptions) -> Result<Discovered, DiscoverError> {
    let mut s = Search { pool: None, found: BTreeMap::new(), seen_uuids: HashSet::new(), notes: Vec::new() };
    match source {
        PoolSource::Member(path) => {
            let (dev, sb) = probe(path).map_err(|reason| DiscoverError::NotAMember { path: path.clone(), reason })?;
            s.pool = Some(sb.pool_uuid);
            s.add(path, dev.identity().kind, sb);
        }
        PoolSource::Uuid(u) => s.pool = Some(*u),
    }
    let pool = s.pool.expect("set above");
    for p in &opts.extra {
        s.consider(p);
    }
    let mut count = s.member_count();
    let complete = |s: &Search, count: u32| count > 0 && s.missing(count).is_empty();
    if opts.scan_block_devices && !complete(&s, count) {
        let known: HashSet<PathBuf> = s.found.values().map(|m| m.path.clone()).collect();
        for dev in block_devices() {
            if !known.contains(&dev) {
                s.consider(&dev);
            }
        }
        count = s.member_count();
    }
    if s.found.is_empty() {
        return Err(DiscoverError::NoneFound(pool));
    }
    // Members the metadata knows (and their states), when needed.
    let mut removed: HashSet<u32> = HashSet::new();
    if opts.use_path_hints && !complete(&s, count) {
        let devs: Vec<Arc<dyn Device>> = s.found.values().filter_map(|m| probe_open(&m.path)).collect();
        let pool_ro = Pool::open(devs, PoolOptions { read_only: true, ..Default::default() })
            .map_err(|source| DiscoverError::Metadata { pool, source })?;
        let recs = pool_ro.meta().state.members.clone();
        drop(pool_ro);
        for r in &recs {
            if r.state == MemberState::Removed {
                removed.insert(r.index);
            } else if !s.found.contains_key(&r.index) && !r.path_hint.is_empty() {
                s.consider(Path::new(&r.path_hint));
            }
        }
        count = count.max(recs.len() as u32);
    }
    let missing = s.missing(count).into_iter().filter(|i| !removed.contains(i)).collect();
    Ok(Discovered { pool_uuid: pool, members: s.found, member_count: count, missing, notes: s.notes })
}

/// Open the members found: read-write and exclusive unless `read_only`
/// (then read-only and shared).
pub fn open_members(found: &Discovered, read_only: bool) -> Result<Vec<Arc<dyn Device>>, DiscoverError> {
    let mode = OpenMode { read_only, exclusive: !read_only };
    found
        .members
        .values()
        .map(|m| {
            open_member_device(&m.path, mode).map_err(|source| DiscoverError::Open { path: m.path.clone(), source })
        })
        .collect()
}

/// Find and open the pool `source` names: [`find_members`], then
/// [`open_members`] and [`Pool::open`] (read-only when `pool_opts` says so).
pub fn open_pool(
    source: &PoolSource,
    opts: &DiscoverOptions,
    pool_opts: PoolOptions,
) -> Result<(Pool, Discovered), DiscoverError> {
    let found = find_members(source, opts)?;
    let devs = open_members(&found, pool_opts.read_only)?;
    let pool =
        Pool::open(devs, pool_opts).map_err(|source| DiscoverError::Metadata { pool: found.pool_uuid, source })?;
    Ok((pool, found))
}
