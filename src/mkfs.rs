//! # Making a pool: `mkfs.dfs`
//!
//! [`format_pool`] turns a list of would-be members into a new, empty pool:
//!
//! 1. **Check everything before writing anything.** Options (label length,
//!    policy against the member count, no member given twice), then every
//!    member is probed ([`crate::probe`]); if any member is refused, every
//!    refusal is returned and nothing has been written. Then every block
//!    device or image file is opened exclusively; only then are directory
//!    members created (an empty directory with the files of an empty
//!    `DirDevice`).
//! 2. **Everything but the superblocks, on every member, then sync.** Per
//!    member: zero `[0, journal start)` (the superblock block, the root ring
//!    and the padding after it; on a directory member only the superblock
//!    block and the ring, as `DirDevice` has no padding); zero the first
//!    1 MiB of the journal (replay starts at the root's position, offset 0,
//!    and stops at an all-zero block; older bytes further on can never be
//!    replayed, since each record must chain to the one before it); write
//!    every bitmap block (all free, generation 0); zero the last 1 MiB
//!    before the backup superblock (free data blocks; raw members only: on a
//!    directory member it would become a fragment file); write the first
//!    root record into slot 0 (generation 1, no checkpoint, journal seq 1 at
//!    offset 0, the member count, and the journal geometry the engine
//!    derives from the members: the smallest journal region and the largest
//!    block size).
//! 3. **Superblocks last: backup, then primary, then sync.** A crash before
//!    this step leaves no member with a valid superblock pointing at
//!    half-written regions; `dfs-inspect` then says "not a DynamicFS member".
//! 4. **Read back** each member's superblocks and root slot 0 through
//!    [`crate::member`]; a mismatch is an error.
//!
//! Zeroing the start and the end of a raw member also wipes the signatures
//! other software looks for there (ext4, xfs, btrfs primary, LUKS, swap,
//! MBR, both GPT headers, md, ZFS labels), so after `--force` blkid no longer
//! reports the old content. The data region is never zeroed (its free
//! blocks are free by the bitmap, and every fragment carries its own
//! checksummed header), so mkfs writes a few MiB per member whatever its
//! size and needs no progress display.
//!
//! ## Choices
//!
//! - **Default policy**: `replication:min(3, n)` for `n` members, matching
//!   how the design replicates metadata (3 copies, or all members when
//!   fewer). A policy needing more distinct members than the pool has is
//!   refused, never weakened.
//! - **Identity**: one fresh pool UUID shared by all members, a fresh member
//!   UUID each, member indexes `0..n` in the order given.
//! - **Label**: at most 64 bytes of UTF-8 without NUL; a longer one is
//!   refused rather than silently cut.
//! - **Directory members** take the size asked for; the tool defaults it to
//!   the free space of the directory's filesystem ([`default_dir_size`]).
//!   With `--force`, an existing DynamicFS directory member is emptied of its
//!   own files (superblock, roots, journal, bitmap, fragments/) and made
//!   anew; any other file in the directory makes mkfs refuse.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dfs_format::layout::RegionKind;
use dfs_format::superblock::{SuperblockCopy, LABEL_LEN};
use dfs_format::{BitmapBlockHeader, FormatError, Layout, Policy, RootRecord, Superblock, BITMAP_HEADER_LEN};

use crate::device::dir::DirDevice;
use crate::device::open::{open_member_device, OpenMode};
use crate::device::{AlignedBuf, Device, DeviceError, DeviceKind};
use crate::member::{self, superblock_block, MemberError, RootSlotState};
use crate::probe::{self, Probe, ProbeError};

/// A member to format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberSpec {
    /// A block device or an existing image file.
    Device(PathBuf),
    /// A directory member of `size` bytes (created if missing).
    Dir { path: PathBuf, size: u64 },
}

impl MemberSpec {
    /// The path given.
    pub fn path(&self) -> &Path {
        match self {
            MemberSpec::Device(p) => p,
            MemberSpec::Dir { path, .. } => path,
        }
    }
}

/// Options of [`format_pool`].
#[derive(Debug, Clone, Default)]
pub struct MkfsOptions {
    /// Pool label (UTF-8, at most 64 bytes; may be empty).
    pub label: String,
    /// Default redundancy policy; `None` = `replication:min(3, n)`.
    pub default_policy: Option<Policy>,
    /// Overwrite what the probes found, where that may be overridden.
    pub force: bool,
}

/// One formatted member, as reported.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberSummary {
    pub index: u32,
    pub path: PathBuf,
    pub kind: DeviceKind,
    pub member_uuid: uuid::Uuid,
    /// Member size in bytes (as formatted: whole blocks).
    pub size: u64,
    pub block_size: u32,
    /// Bytes of the data region (what fragments can use).
    pub data_bytes: u64,
    /// What `--force` destroyed (probe findings), if anything.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overwritten: Vec<String>,
}

/// The pool made by [`format_pool`]; serializes to the JSON of `mkfs.dfs --json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolSummary {
    pub pool_uuid: uuid::Uuid,
    pub label: String,
    #[serde(serialize_with = "serialize_display")]
    pub default_policy: Policy,
    pub members: Vec<MemberSummary>,
}

fn serialize_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Why mkfs failed. Nothing was written unless the error came after the
/// probes passed (`Device`, `Format`, `Verify`, `Member`). Probe errors,
/// refusals or not, come as `Refused`, one per member.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MkfsError {
    #[error("no members given")]
    NoMembers,
    #[error("{}: given twice (also as {})", device.display(), other.display())]
    Duplicate { device: PathBuf, other: PathBuf },
    #[error("label is {len} bytes; at most {LABEL_LEN} bytes are allowed")]
    LabelTooLong { len: usize },
    #[error("label contains a NUL character")]
    LabelNul,
    #[error("policy {policy} needs {needs} distinct members; the pool has {members}")]
    PolicyUnsatisfiable { policy: Policy, needs: u32, members: usize },
    #[error("invalid policy: {0}")]
    Policy(FormatError),
    /// Probes refused one or more members (one error per member, one line each).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<ProbeError>),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("{}: {source}", device.display())]
    Format { device: PathBuf, source: FormatError },
    /// Reading the new member back did not give what was written.
    #[error("{}: verification after mkfs failed: {reason}", device.display())]
    Verify { device: PathBuf, reason: String },
    #[error(transparent)]
    Member(#[from] MemberError),
}

/// The default policy for a pool of `members` members: `replication:min(3, n)`.
pub fn default_policy_for(members: usize) -> Policy {
    Policy::Replication { copies: members.clamp(1, 3) as u8 }
}

/// Default size of a directory member at `path`: the free space of the
/// filesystem holding it (or its nearest existing ancestor), rounded down to
/// whole MiB.
pub fn default_dir_size(path: &Path) -> std::io::Result<u64> {
    let mut p = path.to_path_buf();
    while !p.exists() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent.to_path_buf(),
            _ => {
                p = PathBuf::from(".");
                break;
            }
        }
    }
    Ok(probe::free_space(&p)? & !((1u64 << 20) - 1))
}

/// What the kernel calls this node, for duplicate detection.
fn node_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md = std::fs::metadata(path).ok()?;
    if md.file_type().is_block_device() {
        Some((md.rdev(), 0))
    } else {
        Some((md.dev(), md.ino()))
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn check_label(label: &str) -> Result<(), MkfsError> {
    if label.len() > LABEL_LEN {
        return Err(MkfsError::LabelTooLong { len: label.len() });
    }
    if label.contains('\0') {
        return Err(MkfsError::LabelNul);
    }
    Ok(())
}

/// Check the options against the member list; returns the policy to use.
pub fn check_options(members: &[MemberSpec], opts: &MkfsOptions) -> Result<Policy, MkfsError> {
    if members.is_empty() {
        return Err(MkfsError::NoMembers);
    }
    check_label(&opts.label)?;
    let policy = opts.default_policy.unwrap_or_else(|| default_policy_for(members.len()));
    policy.validate().map_err(MkfsError::Policy)?;
    if policy.fragment_count() as usize > members.len() {
        return Err(MkfsError::PolicyUnsatisfiable { policy, needs: policy.fragment_count(), members: members.len() });
    }
    for (i, a) in members.iter().enumerate() {
        for b in &members[..i] {
            let same_path = match (std::fs::canonicalize(a.path()), std::fs::canonicalize(b.path())) {
                (Ok(x), Ok(y)) => x == y,
                _ => a.path() == b.path(),
            };
            let same_node = matches!((node_identity(a.path()), node_identity(b.path())), (Some(x), Some(y)) if x == y);
            if same_path || same_node {
                return Err(MkfsError::Duplicate { device: a.path().to_path_buf(), other: b.path().to_path_buf() });
            }
        }
    }
    Ok(policy)
}

/// Probe every member without writing anything; the probes, or every refusal.
pub fn probe_members(members: &[MemberSpec], force: bool) -> Result<Vec<Probe>, MkfsError> {
    let mut probes = Vec::new();
    let mut refused = Vec::new();
    for m in members {
        let p = match m {
            MemberSpec::Device(path) => probe::probe_device(path),
            MemberSpec::Dir { path, size } => probe::probe_dir(path, *size),
        };
        match p.and_then(|p| p.verdict(force).map(|_| p)) {
            Ok(p) => probes.push(p),
            Err(e) => refused.push(e),
        }
    }
    if refused.is_empty() {
        Ok(probes)
    } else {
        Err(MkfsError::Refused(refused))
    }
}

/// Make a new pool of `members` (see the module doc for the steps).
pub fn format_pool(members: &[MemberSpec], opts: &MkfsOptions) -> Result<PoolSummary, MkfsError> {
    let policy = check_options(members, opts)?;
    let probes = probe_members(members, opts.force)?;

    // Open every raw member first (exclusively): a failure here writes nothing.
    let mut devs: Vec<Option<Arc<dyn Device>>> = Vec::new();
    for m in members {
        devs.push(match m {
            MemberSpec::Device(path) => Some(open_exclusive(path)?),
            MemberSpec::Dir { .. } => None,
        });
    }
    for (m, slot) in members.iter().zip(devs.iter_mut()) {
        if let MemberSpec::Dir { path, size } = m {
            *slot = Some(open_dir_member(path, *size, opts.force)?);
        }
    }
    let devs: Vec<Arc<dyn Device>> = devs.into_iter().flatten().collect();
    let refs: Vec<&dyn Device> = devs.iter().map(|d| &**d).collect();
    let made = format_devices(&refs, &opts.label, policy)?;
    // Open the new pool once: its first checkpoint records the member table
    // with every member's path, which lets mount find them all from one.
    crate::engine::Pool::open(devs.clone(), crate::engine::PoolOptions { no_lock: true, ..Default::default() })
        .and_then(|p| p.close())
        .map_err(|e| MkfsError::Verify {
            device: members[0].path().to_path_buf(),
            reason: format!("first open of the new pool: {e}"),
        })?;

    let members = members
        .iter()
        .zip(&probes)
        .zip(&made.members)
        .enumerate()
        .map(|(i, ((spec, probe), (member_uuid, layout)))| MemberSummary {
            index: i as u32,
            path: spec.path().to_path_buf(),
            kind: probe.kind,
            member_uuid: *member_uuid,
            size: layout.size,
            block_size: layout.block_size,
            data_bytes: layout.region(RegionKind::Data).len,
            overwritten: probe.overridden().map(|f| f.to_string()).collect(),
        })
        .collect();
    Ok(PoolSummary { pool_uuid: made.pool_uuid, label: opts.label.clone(), default_policy: policy, members })
}

/// Open a raw member read-write and exclusively, allowing a lock left by a
/// process that just closed it a moment to go away (see [`probe::LINGER`]).
fn open_exclusive(path: &Path) -> Result<Arc<dyn Device>, DeviceError> {
    let deadline = std::time::Instant::now() + probe::LINGER;
    let path = &std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    loop {
        match open_member_device(path, OpenMode { read_only: false, exclusive: true }) {
            Err(DeviceError::Busy { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Create a directory member. With `force`, an existing DynamicFS
/// directory member is first emptied of the files a member consists of
/// (and only those: anything else left makes `DirDevice::create` refuse).
fn open_dir_member(path: &Path, size: u64, force: bool) -> Result<Arc<dyn Device>, MkfsError> {
    use crate::device::dir::{BITMAP_FILE, FRAGMENTS_DIR, JOURNAL_FILE, ROOTS_FILE, SUPERBLOCK_FILE};
    let non_empty = std::fs::read_dir(path).map(|mut d| d.next().is_some()).unwrap_or(false);
    if non_empty && force {
        let is_member = DirDevice::open(path, true).ok().is_some_and(|dev| member::read_superblocks(&dev).is_ok());
        if is_member {
            let io = |source| DeviceError::Open { device: path.to_path_buf(), source };
            for f in [SUPERBLOCK_FILE, ROOTS_FILE, JOURNAL_FILE, BITMAP_FILE] {
                match std::fs::remove_file(path.join(f)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e).into()),
                    _ => {}
                }
            }
            match std::fs::remove_dir_all(path.join(FRAGMENTS_DIR)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e).into()),
                _ => {}
            }
            std::fs::File::open(path).and_then(|d| d.sync_all()).map_err(io)?;
        }
    }
    Ok(Arc::new(DirDevice::create(path, size)?))
}

/// The identities and layouts [`format_devices`] gave a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormattedPool {
    pub pool_uuid: uuid::Uuid,
    /// Per member, in order: its UUID and layout.
    pub members: Vec<(uuid::Uuid, Layout)>,
}

/// Write a new, empty pool onto already opened devices (steps 2-4 of the
/// module doc), without probing. Member `i` gets index `i`. Used by
/// [`format_pool`], and by tests that format memory devices.
pub fn format_devices(devs: &[&dyn Device], label: &str, policy: Policy) -> Result<FormattedPool, MkfsError> {
    if devs.is_empty() {
        return Err(MkfsError::NoMembers);
    }
    check_label(label)?;
    let pool_uuid = uuid::Uuid::new_v4();
    let created_ns = now_ns();
    let mut plan = Vec::new();
    for dev in devs {
        let layout = Layout::compute(dev.size(), dev.block_size())
            .map_err(|source| MkfsError::Format { device: dev.identity().path.clone(), source })?;
        plan.push((uuid::Uuid::new_v4(), layout));
    }
    // The journal's geometry as the engine derives it from the members: the
    // smallest journal region, in records of the largest block size.
    let journal_block_size = plan.iter().map(|(_, l)| l.block_size).max().unwrap_or(4096);
    let journal_len = plan.iter().map(|(_, l)| l.region(RegionKind::Journal).len).min().unwrap_or(0)
        / journal_block_size as u64
        * journal_block_size as u64;
    let root = first_root(pool_uuid, created_ns, devs.len() as u32, journal_len, journal_block_size);
    for (dev, (_, layout)) in devs.iter().zip(&plan) {
        write_regions(*dev, layout, &root)?;
    }
    let mut sbs = Vec::new();
    for (i, (dev, (member_uuid, layout))) in devs.iter().zip(&plan).enumerate() {
        let sb = Superblock {
            compat: dfs_format::features::COMPAT_BLOCK_SUMS,
            ro_compat: 0,
            incompat: 0,
            pool_uuid,
            member_uuid: *member_uuid,
            member_index: i as u32,
            layout: layout.clone(),
            created_ns,
            update_seq: 1,
            default_policy: policy,
            label: label.to_string(),
        };
        write_superblocks(*dev, &sb)?;
        sbs.push(sb);
    }
    for (dev, sb) in devs.iter().zip(&sbs) {
        verify_member(*dev, sb)?;
    }
    Ok(FormattedPool { pool_uuid, members: plan })
}

/// Probe one member-to-be like [`format_pool`] does (a foreign signature,
/// a mounted or busy device is refused unless `force` allows it) and open
/// it read-write and exclusively (`add-disk`). Nothing is written.
pub fn prepare_member(spec: &MemberSpec, force: bool) -> Result<Arc<dyn Device>, MkfsError> {
    probe_members(std::slice::from_ref(spec), force)?;
    match spec {
        MemberSpec::Device(path) => Ok(open_exclusive(path)?),
        MemberSpec::Dir { path, size } => open_dir_member(path, *size, force),
    }
}

/// Format one new member of an existing pool (`add-disk`): regions, a
/// generation-1 root (older than any of the pool's, so never chosen while
/// the pool has others) and both superblocks naming member `index` of
/// `pool_uuid`. The caller probes the device first and records the member
/// in the pool's metadata after this returns. Returns its UUID and layout.
pub fn format_member(
    dev: &dyn Device,
    pool_uuid: uuid::Uuid,
    index: u32,
    label: &str,
    policy: Policy,
    journal_len: u64,
    journal_block_size: u32,
) -> Result<(uuid::Uuid, Layout), MkfsError> {
    let member_uuid = uuid::Uuid::new_v4();
    let layout = reinit_member(dev, pool_uuid, member_uuid, index, label, policy, journal_len, journal_block_size)?;
    Ok((member_uuid, layout))
}

/// Format member `index` of `pool_uuid` with the given `member_uuid`:
/// [`format_member`] for a new member, and `fsck.dfs -y` for a member whose
/// contents were lost (re-initialised in place under its own identity, so
/// the pool's member table still names it; its fragments are then rebuilt
/// by the engine). Returns its layout.
#[allow(clippy::too_many_arguments)]
pub fn reinit_member(
    dev: &dyn Device,
    pool_uuid: uuid::Uuid,
    member_uuid: uuid::Uuid,
    index: u32,
    label: &str,
    policy: Policy,
    journal_len: u64,
    journal_block_size: u32,
) -> Result<Layout, MkfsError> {
    let layout = Layout::compute(dev.size(), dev.block_size())
        .map_err(|source| MkfsError::Format { device: dev.identity().path.clone(), source })?;
    let created_ns = now_ns();
    let root = first_root(pool_uuid, created_ns, index + 1, journal_len, journal_block_size);
    write_regions(dev, &layout, &root)?;
    let sb = Superblock {
        compat: dfs_format::features::COMPAT_BLOCK_SUMS,
        ro_compat: 0,
        incompat: 0,
        pool_uuid,
        member_uuid,
        member_index: index,
        layout: layout.clone(),
        created_ns,
        update_seq: 1,
        default_policy: policy,
        label: label.to_string(),
    };
    write_superblocks(dev, &sb)?;
    verify_member(dev, &sb)?;
    Ok(layout)
}

/// Write both copies of `sb` (backup first, then primary) and sync.
fn write_superblocks(dev: &dyn Device, sb: &Superblock) -> Result<(), MkfsError> {
    let backup = sb.layout.region(RegionKind::SuperblockBackup).start;
    dev.write_at(backup, &superblock_block(sb, SuperblockCopy::Backup))?;
    dev.write_at(0, &superblock_block(sb, SuperblockCopy::Primary))?;
    dev.sync()?;
    Ok(())
}

/// Write `len` zero bytes at `offset`, 1 MiB at a time.
fn zero_range(dev: &dyn Device, offset: u64, len: u64) -> Result<(), DeviceError> {
    if len == 0 {
        return Ok(());
    }
    let piece = member::SCAN_CHUNK.max(dev.block_size() as u64);
    let zeros = AlignedBuf::zeroed(piece.min(len) as usize);
    let mut done = 0;
    while done < len {
        let n = piece.min(len - done);
        dev.write_at(offset + done, &zeros[..n as usize])?;
        done += n;
    }
    Ok(())
}

/// The root record a new member's ring starts with: generation 1, an empty
/// journal at its start, no checkpoint yet.
fn first_root(
    pool_uuid: uuid::Uuid,
    created_ns: u64,
    member_count: u32,
    journal_len: u64,
    journal_block_size: u32,
) -> RootRecord {
    RootRecord {
        pool_uuid,
        generation: 1,
        timestamp_ns: created_ns,
        journal_seq: 1,
        journal_offset: 0,
        member_count,
        journal_len,
        journal_block_size,
        checkpoint: None,
    }
}

fn write_regions(dev: &dyn Device, layout: &Layout, root: &RootRecord) -> Result<(), MkfsError> {
    let name = || dev.identity().path.clone();
    let bs = layout.block_size as u64;
    let ring = layout.region(RegionKind::RootRing);
    let journal = layout.region(RegionKind::Journal);
    let bitmap = layout.region(RegionKind::Bitmap);
    let data = layout.region(RegionKind::Data);
    let backup = layout.region(RegionKind::SuperblockBackup);
    let raw = dev.identity().kind != DeviceKind::Dir;

    // Superblock block and root ring (and on a raw member the padding up to
    // the journal, where a directory member refuses writes); journal head.
    if raw {
        zero_range(dev, 0, journal.start)?;
    } else {
        zero_range(dev, 0, bs)?;
        zero_range(dev, ring.start, ring.len)?;
    }
    zero_range(dev, journal.start, journal.len.min(member::SCAN_CHUNK))?;

    // Bitmap: every block free, generation 0.
    let per_chunk = (member::SCAN_CHUNK / bs).max(1);
    let nblocks = bitmap.len / bs;
    let free_bits = vec![0u8; bs as usize - BITMAP_HEADER_LEN];
    let mut i = 0;
    while i < nblocks {
        let n = per_chunk.min(nblocks - i);
        let mut buf = AlignedBuf::zeroed((n * bs) as usize);
        for j in 0..n {
            let h = BitmapBlockHeader { pool_uuid: root.pool_uuid, index: i + j, generation: 0, used_bits: 0 };
            let block = h
                .encode_block(layout.block_size, &free_bits)
                .map_err(|source| MkfsError::Format { device: name(), source })?;
            buf[(j * bs) as usize..((j + 1) * bs) as usize].copy_from_slice(&block);
        }
        dev.write_at(bitmap.start + i * bs, &buf)?;
        i += n;
    }

    // The tail of the data region (free blocks), where foreign signatures
    // live. Not on a directory member: it would become a fragment file.
    if raw {
        let tail_start = backup.start.saturating_sub(member::SCAN_CHUNK).max(data.start);
        zero_range(dev, tail_start, backup.start - tail_start)?;
    }

    // The first root.
    dev.write_at(layout.root_slot_offset(0), &AlignedBuf::from_slice_padded(&root.encode(), bs as usize))?;
    dev.sync()?;
    Ok(())
}

fn verify_member(dev: &dyn Device, sb: &Superblock) -> Result<(), MkfsError> {
    let fail = |reason: String| MkfsError::Verify { device: dev.identity().path.clone(), reason };
    let choice = member::read_superblocks(dev)?;
    if choice.needs_repair() || choice.superblock != *sb {
        return Err(fail("the superblocks read back differ from those written".into()));
    }
    let ring = member::read_root_ring(dev, &sb.layout)?;
    match ring.first().map(|s| &s.state) {
        Some(RootSlotState::Valid(r)) if r.pool_uuid == sb.pool_uuid && r.generation == 1 => Ok(()),
        other => Err(fail(format!("root slot 0 reads back as {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use crate::member::{read_bitmap, read_root_ring, read_superblocks, scan_journal_from, JournalStart, JournalStop};

    #[test]
    fn format_memory_devices() {
        let a = MemDevice::named("a", 64 << 20, 4096);
        let b = MemDevice::named("b", 96 << 20, 8192);
        let made = format_devices(&[&a, &b], "pool", Policy::Replication { copies: 2 }).unwrap();
        let mut uuids = Vec::new();
        for (i, dev) in [&a, &b].into_iter().enumerate() {
            let c = read_superblocks(dev).unwrap();
            assert!(!c.needs_repair());
            let sb = c.superblock;
            assert_eq!(sb.pool_uuid, made.pool_uuid);
            assert_eq!(sb.member_index, i as u32);
            assert_eq!(sb.label, "pool");
            uuids.push(sb.member_uuid);
            let ring = read_root_ring(dev, &sb.layout).unwrap();
            let RootSlotState::Valid(root) = &ring[0].state else { panic!("slot 0: {:?}", ring[0].state) };
            assert_eq!((root.generation, root.journal_seq, root.member_count), (1, 1, 2));
            assert_eq!(root.journal_block_size, 8192);
            assert_eq!(root.journal_len, 4 << 20);
            assert!(ring[1..].iter().all(|s| s.state == RootSlotState::Empty));
            let bm = read_bitmap(dev, &sb.layout, sb.pool_uuid).unwrap();
            assert_eq!((bm.used(), bm.bad_blocks()), (0, 0));
            let j = scan_journal_from(dev, &sb.layout, sb.pool_uuid, JournalStart::from_root(root)).unwrap();
            assert_eq!(j.stop, JournalStop::Empty { offset: 0 });
        }
        assert_ne!(uuids[0], uuids[1]);
    }

    #[test]
    fn options_are_checked_first() {
        let m = |p: &str| MemberSpec::Device(PathBuf::from(p));
        let opts = MkfsOptions::default();
        assert!(matches!(check_options(&[], &opts), Err(MkfsError::NoMembers)));
        assert_eq!(check_options(&[m("/nonexistent/a")], &opts).unwrap(), Policy::Replication { copies: 1 });
        assert_eq!(
            check_options(&[m("/n/a"), m("/n/b"), m("/n/c"), m("/n/d")], &opts).unwrap(),
            Policy::Replication { copies: 3 }
        );
        let ec = MkfsOptions { default_policy: Some(Policy::Erasure { data: 4, parity: 2 }), ..Default::default() };
        let e = check_options(&[m("/n/a"), m("/n/b"), m("/n/c")], &ec).unwrap_err();
        assert_eq!(e.to_string(), "policy erasure:4+2 needs 6 distinct members; the pool has 3");
        let e = check_options(&[m("/n/a"), m("/n/a")], &opts).unwrap_err();
        assert!(matches!(e, MkfsError::Duplicate { .. }), "{e}");
        let long = MkfsOptions { label: "x".repeat(65), ..Default::default() };
        assert!(matches!(check_options(&[m("/n/a")], &long), Err(MkfsError::LabelTooLong { len: 65 })));
    }

    #[test]
    fn too_small_device_is_refused_before_writing() {
        let a = MemDevice::named("a", 64 << 20, 4096);
        let tiny = MemDevice::named("tiny", 16 << 20, 4096);
        let e = format_devices(&[&a, &tiny], "", Policy::Replication { copies: 1 }).unwrap_err();
        assert!(e.to_string().starts_with("tiny: layout: invalid size"), "{e}");
        assert_eq!(a.allocated_bytes(), 0, "nothing written to the good member");
    }
}
