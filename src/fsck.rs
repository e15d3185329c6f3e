//! # fsck: check, and repair, a pool that is not mounted
//!
//! [`check_pool`] is what `fsck.dfs` runs. It takes the member devices of
//! one pool, opened by the caller (read-only for a check, read-write for a
//! repair), judges every structure of `format/FORMAT.md` from its bytes, and
//! returns an [`FsckReport`]: typed [`Finding`]s, each with its member, the
//! structure it is about, a message and a [`Severity`]. Nothing here trusts
//! the engine's view where the bytes can be judged directly; the engine is
//! used to confirm that it accepts the pool, and to repair.
//!
//! ## What is checked, in order
//!
//! 1. **Members and superblocks.** Both copies of every device's superblock
//!    ([`member::read_superblocks`]); a device with neither copy valid is
//!    "not a member". Members the pool has (its member table, the root's
//!    member count) but that were not given are "missing".
//! 2. **Root rings.** Every slot of every member's ring: a slot that does not
//!    verify is damaged (FORMAT.md: "ignored, and reported by fsck"); the
//!    newest valid root on any member wins; a member whose ring lacks that
//!    generation missed a root write (or its slot is the damaged one, which
//!    is then reported once, as the damaged slot).
//! 3. **Journal copies.** Each copy (the first three members by index with a
//!    journal region of the root's `journal_len`, as the engine places them)
//!    is replayed from the winning root with the engine's own
//!    `replay_copy`; the longest chain is what the engine would replay, and
//!    a shorter copy is stale or damaged. When the live chains agree, the
//!    copies' older history (walked from offset 0) is compared too: a
//!    difference there loses nothing and is a note.
//! 4. **Checkpoint copies.** Every locator of the winning root: in range,
//!    header of kind checkpoint naming the root's checkpoint id and length,
//!    payload hashing to the root's BLAKE3.
//! 5. **Metadata.** The state is loaded as the engine loads it (first good
//!    checkpoint copy, then the ops of the longest journal chain); an op
//!    that does not apply, an inode left with no link by a crash, and every
//!    problem of [`State::check`] (namespace invariants) are reported. Then
//!    the engine itself is asked to open the pool read-only: a refusal is a
//!    finding of its own (it also catches what this module does not model).
//! 6. **Allocation.** Every fragment and checkpoint copy must lie inside its
//!    member's data region, and no data block may be referenced twice
//!    (double use). The on-disk bitmap is judged against the references
//!    only if its generation claims to be the winning root's: this engine
//!    derives allocation from the metadata at open and writes the bitmap
//!    region only at mkfs (generation 0), so today the bitmap is reported
//!    as a note, not judged.
//! 7. **Fragments.** Every fragment of every extent is read directly from its
//!    member: the header must decode and name this pool, the extent, its
//!    index, policy, lengths and extent BLAKE3 as the extent table does;
//!    with `verify_data` the payload is read and hashed too (without it a
//!    payload is not read: that is `--data`, as `btrfs check
//!    --check-data-csum`). An extent with fewer good fragments than its
//!    policy needs is lost, and reported with the files it belongs to.
//! 8. **Orphans.** The data region of every member is walked for fragment
//!    headers ([`member::scan_fragments`]): a header of this pool where no
//!    extent fragment or checkpoint copy starts, and outside every
//!    referenced run, is an orphan (an extent fragment not in the extent
//!    table) or a superseded checkpoint copy (counted, not listed: every
//!    checkpoint leaves one). Since allocation is derived from the
//!    metadata, such blocks are free and will simply be reused: a note,
//!    unless an authoritative bitmap marks them allocated (then a leak).
//!    `dfs cleanup-orphans` is what will erase them.
//!
//! ## Repair (`repair`, or `preen`)
//!
//! A repair holds the pool lock for the whole run (a pool in use is refused
//! with [`FsckError::PoolInUse`]), checks everything first, then:
//!
//! - rewrites a bad superblock copy from the good one
//!   ([`member::repair_superblock`]);
//! - opens the pool read-write through the engine, which writes a fresh
//!   checkpoint and root on every present member at open: that supersedes
//!   stale or damaged journal copies, damaged checkpoint copies and stale
//!   root rings, and drops inodes left unlinked by a crash;
//! - for every extent with a bad fragment, reads the extent through the
//!   engine (verified end to end; the read repairs what it trips over),
//!   then checks every fragment again and hands the ones still bad to the
//!   engine's lazy repair with the verified bytes: each is rewritten at a
//!   new location (on the same member when it was merely corrupt, on
//!   another member when its member is missing) and switched over by a
//!   committed `MoveExtent`, never overwritten in place;
//! - first of all, re-initialises a **zeroed member** in place: when the
//!   member table names exactly one member that is missing and exactly one
//!   device given is blank (no superblock copy, its first and last 64 KiB
//!   all zeros — a replaced or wiped disk, never one holding anything),
//!   that device gets the member's own index and UUID back: fresh
//!   superblocks, root ring, journal region and bitmap
//!   ([`crate::mkfs::reinit_member`], as `zpool replace` of a disk with
//!   itself). The engine then opens the whole pool, the open's checkpoint
//!   gives it a root and the journal copy back, and every fragment it held
//!   is rebuilt from the other members' (onto it or elsewhere, as
//!   placement decides);
//! - closes the pool (a final checkpoint), then clears root slots that still
//!   do not verify (zeroes them: a damaged slot never wins, and the new
//!   root is durable in another slot by then). Without that, a damaged slot
//!   would be reported until the ring wraps, 128 commits later.
//!
//! Then everything is checked again, read-only. A problem of the first pass
//! that is gone is [`Severity::Corrected`]; one still there, or new, is
//! [`Severity::Left`]. So "corrected" is never a claim, always an
//! observation. Namespace problems (links, reachability) and double use are
//! not repaired by this version: they are left, with their messages.
//!
//! ## Preen and force
//!
//! `preen` (`-p`, `-a`) repairs what is safe without asking; every repair
//! above is. A pool has no "clean" flag to skip on, so instead a preen
//! without `force` skips the slowest part, the data-region walk of step 8
//! (it reads every data block), as e2fsck -p skips a clean filesystem at
//! boot; `-f` restores it. Checks and repairs without `preen` always walk.
//!
//! ## Exit codes (e2fsck's)
//!
//! 0 clean, 1 errors corrected, 4 errors left uncorrected (1 and 4 add up,
//! as in e2fsck, when both happened), 8 operational error ([`FsckError`]:
//! no member among the devices, two pools mixed, pool in use), 16 usage
//! error (the tool's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use dfs_format::fragment::FragmentKind;
use dfs_format::root::{CheckpointLocator, CheckpointRef};
use dfs_format::{FragmentHeader, Layout, Policy, RegionKind, RootRecord, FRAGMENT_HEADER_LEN};
use serde::Serialize;
use uuid::Uuid;

use crate::device::{AlignedBuf, Device};
use crate::engine::data::FragFault;
use crate::engine::journal::{replay_copy, JournalCopy, JournalPos, Replay, StopReason};
use crate::engine::lock::{PoolLock, DEFAULT_LOCK_DIR};
use crate::engine::pool::METADATA_COPIES;
use crate::engine::redundancy;
use crate::engine::state::{Body, Extent, FragLoc, MemberRec, MemberState, Op, PoolConfig, State, ROOT_INO};
use crate::engine::{EngineError, Pool, PoolOptions};
use crate::member::{self, read_bytes, FragmentScanOptions, JournalStart, RootSlotState, SuperblockChoice};

/// Exit status: nothing wrong.
pub const EXIT_CLEAN: u8 = 0;
/// Exit status bit: errors were found and corrected.
pub const EXIT_CORRECTED: u8 = 1;
/// Exit status bit: errors were left uncorrected.
pub const EXIT_UNCORRECTED: u8 = 4;
/// Exit status: operational error (nothing checked).
pub const EXIT_OPERATIONAL: u8 = 8;
/// Exit status: usage error.
pub const EXIT_USAGE: u8 = 16;

/// Called as fragments are judged: (fragments done, fragments in all).
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// How to check.
#[derive(Clone, Default)]
pub struct FsckOptions {
    /// Repair what can be repaired (`-y`).
    pub repair: bool,
    /// Preen (`-p`, `-a`): repair what is safe (all of it), and skip the
    /// data-region walk unless `force`.
    pub preen: bool,
    /// `-f`: walk the data region even when preening.
    pub force: bool,
    /// `--data`: read every fragment's payload and check its BLAKE3.
    pub verify_data: bool,
    /// Where pool lock files live (default `/run/dfs`).
    pub lock_dir: Option<PathBuf>,
    /// Progress of the fragment phase (scrub shows it on a terminal).
    pub progress: Option<Progress>,
}

impl std::fmt::Debug for FsckOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsckOptions")
            .field("repair", &self.repair)
            .field("preen", &self.preen)
            .field("force", &self.force)
            .field("verify_data", &self.verify_data)
            .field("lock_dir", &self.lock_dir)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl FsckOptions {
    /// True when this run may write.
    pub fn repairing(&self) -> bool {
        self.repair || self.preen
    }

    fn walk_data_region(&self) -> bool {
        !self.preen || self.force
    }

    fn mode(&self) -> &'static str {
        if self.preen {
            "preen"
        } else if self.repair {
            "repair"
        } else {
            "check"
        }
    }

    fn lock_dir(&self) -> PathBuf {
        self.lock_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_LOCK_DIR))
    }
}

/// Why nothing could be checked (exit status 8).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsckError {
    #[error("no devices given")]
    NoDevices,
    /// None of the devices is a DynamicFS member.
    #[error("{}", .0.join("\n"))]
    NotAMember(Vec<String>),
    #[error("{first} belongs to pool {first_pool} but {second} to pool {second_pool}: give members of one pool")]
    MixedPools { first: String, first_pool: Uuid, second: String, second_pool: Uuid },
    #[error("{first} and {second} are both member {index} of pool {pool}")]
    DuplicateMember { index: u32, first: String, second: String, pool: Uuid },
    #[error("pool {pool} is in use by PID {pid} (lock {lock}): unmount it first")]
    PoolInUse { pool: Uuid, pid: u32, lock: String },
    #[error("pool lock: {0}")]
    Lock(String),
}

/// How bad a finding is, after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Found, then repaired (gone when checked again).
    Corrected,
    /// Found and still there (a check, or a repair that could not fix it).
    Left,
    /// Worth knowing, not an error (exit status unaffected).
    Info,
}

/// The structure a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Structure {
    Member,
    Superblock,
    RootRing,
    Journal,
    Checkpoint,
    Metadata,
    Namespace,
    Allocation,
    Bitmap,
    Fragment,
    Extent,
    Orphan,
    Device,
    Pool,
    Repair,
}

impl Structure {
    /// Lower-case name, as printed.
    pub fn name(&self) -> &'static str {
        match self {
            Structure::Member => "member",
            Structure::Superblock => "superblock",
            Structure::RootRing => "root ring",
            Structure::Journal => "journal",
            Structure::Checkpoint => "checkpoint",
            Structure::Metadata => "metadata",
            Structure::Namespace => "namespace",
            Structure::Allocation => "allocation",
            Structure::Bitmap => "bitmap",
            Structure::Fragment => "fragment",
            Structure::Extent => "extent",
            Structure::Orphan => "orphan",
            Structure::Device => "device",
            Structure::Pool => "pool",
            Structure::Repair => "repair",
        }
    }
}

/// Which superblock copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SbCopy {
    Primary,
    Backup,
}

/// What is wrong with one fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "fault", content = "detail", rename_all = "snake_case")]
pub enum FragmentFault {
    /// Its member is not present (missing, or not given).
    Absent,
    /// The device failed to read it.
    Unreadable(String),
    /// The header block does not decode (magic, version, checksum, ...).
    BadHeader(String),
    /// The header decodes but does not match the extent table.
    Mismatch(String),
    /// The payload does not hash to the header's BLAKE3.
    BadPayload,
}

impl std::fmt::Display for FragmentFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FragmentFault::Absent => write!(f, "its member is not present"),
            FragmentFault::Unreadable(e) => write!(f, "unreadable: {e}"),
            FragmentFault::BadHeader(e) => write!(f, "bad header: {e}"),
            FragmentFault::Mismatch(e) => write!(f, "header does not match the extent table: {e}"),
            FragmentFault::BadPayload => write!(f, "payload does not match its BLAKE3"),
        }
    }
}

/// One thing fsck found. Members are pool member indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Finding {
    /// A device given holds no valid superblock (or another pool's).
    NotAMember { device: String, reason: String },
    /// A member of the pool was not among the devices.
    MemberMissing { member: u32, path_hint: String, fragments: u64 },
    /// A device claims a member index whose recorded UUID differs.
    MemberMismatch { member: u32, device: String, found: Uuid, expected: Uuid },
    /// A device claims a member index the member table does not list.
    MemberNotInTable { member: u32, device: String },
    /// One superblock copy is bad (the other one won).
    SuperblockCopy { member: u32, copy: SbCopy, offset: u64, problem: String },
    /// The root ring could not be read.
    RootRingUnreadable { member: u32, error: String },
    /// A root slot that does not verify. `newest` is set when it is the slot
    /// the pool's newest root (that generation) should be in.
    RootSlot { member: u32, slot: u64, newest: Option<u64>, problem: String },
    /// The member's newest valid root is older than the pool's.
    RootRingStale { member: u32, newest: Option<u64>, pool_newest: u64 },
    /// No member holds a valid root: the pool cannot be opened.
    NoRoot,
    /// A journal copy's live chain is shorter than the longest one.
    JournalCopy { member: u32, records: usize, longest: usize, stop: String },
    /// A journal copy's older history differs (nothing live is affected).
    JournalHistory { member: u32, records: usize, longest: usize },
    /// One checkpoint copy is bad.
    CheckpointCopy { member: u32, offset: u64, problem: String },
    /// No checkpoint copy is good: the metadata cannot be loaded.
    CheckpointLost { generation: u64, problem: String },
    /// The metadata does not load (journal records that do not apply, ...).
    Metadata { problem: String },
    /// The engine refuses to open the pool.
    EngineRefuses { error: String },
    /// An inode with no link left by a crash (the engine drops it at open).
    UnlinkedInode { ino: u64 },
    /// A namespace invariant does not hold (`State::check`).
    Namespace { problem: String },
    /// A reference outside its member's data region, or on an unknown member.
    Allocation { member: u32, problem: String },
    /// A data block referenced twice.
    DoubleUse { member: u32, block: u64, first: String, second: String },
    /// The on-disk bitmap (judged only when authoritative).
    Bitmap { member: u32, authoritative: bool, problem: String },
    /// One fragment of an extent is bad.
    Fragment { member: u32, extent: Uuid, index: u32, block: u64, fault: FragmentFault },
    /// An extent with too few good fragments: its data is lost.
    ExtentLost { extent: Uuid, good: u32, needed: u32, files: Vec<String> },
    /// A fragment header of this pool that nothing references.
    Orphan {
        member: u32,
        block: u64,
        blocks: u64,
        extent: Uuid,
        fragment_index: u16,
        allocated_in_bitmap: Option<bool>,
    },
    /// A fragment magic in free space that does not decode.
    BadHeaderInFreeSpace { member: u32, block: u64, problem: String },
    /// Data blocks that could not be read during the walk.
    Unreadable { member: u32, block: u64, blocks: u64, error: String },
    /// The pool is in use (a check only: read-only, may see a moving state).
    PoolInUse { pid: u32 },
    /// A repair step failed.
    RepairFailed { what: String, error: String },
}

impl Finding {
    /// The structure it is about.
    pub fn structure(&self) -> Structure {
        use Finding::*;
        match self {
            NotAMember { .. } | MemberMissing { .. } | MemberMismatch { .. } | MemberNotInTable { .. } => {
                Structure::Member
            }
            SuperblockCopy { .. } => Structure::Superblock,
            RootRingUnreadable { .. } | RootSlot { .. } | RootRingStale { .. } | NoRoot => Structure::RootRing,
            JournalCopy { .. } | JournalHistory { .. } => Structure::Journal,
            CheckpointCopy { .. } | CheckpointLost { .. } => Structure::Checkpoint,
            Metadata { .. } | EngineRefuses { .. } => Structure::Metadata,
            UnlinkedInode { .. } | Namespace { .. } => Structure::Namespace,
            Allocation { .. } | DoubleUse { .. } => Structure::Allocation,
            Bitmap { .. } => Structure::Bitmap,
            Fragment { .. } => Structure::Fragment,
            ExtentLost { .. } => Structure::Extent,
            Orphan { .. } | BadHeaderInFreeSpace { .. } => Structure::Orphan,
            Unreadable { .. } => Structure::Device,
            PoolInUse { .. } => Structure::Pool,
            RepairFailed { .. } => Structure::Repair,
        }
    }

    /// The member index it is about, if one.
    pub fn member(&self) -> Option<u32> {
        use Finding::*;
        match self {
            MemberMissing { member, .. }
            | MemberMismatch { member, .. }
            | MemberNotInTable { member, .. }
            | SuperblockCopy { member, .. }
            | RootRingUnreadable { member, .. }
            | RootSlot { member, .. }
            | RootRingStale { member, .. }
            | JournalCopy { member, .. }
            | JournalHistory { member, .. }
            | CheckpointCopy { member, .. }
            | Allocation { member, .. }
            | DoubleUse { member, .. }
            | Bitmap { member, .. }
            | Fragment { member, .. }
            | Orphan { member, .. }
            | BadHeaderInFreeSpace { member, .. }
            | Unreadable { member, .. } => Some(*member),
            _ => None,
        }
    }

    /// True for errors; false for notes (which never change the exit status).
    pub fn is_problem(&self) -> bool {
        use Finding::*;
        match self {
            JournalHistory { .. } | PoolInUse { .. } | BadHeaderInFreeSpace { .. } => false,
            Bitmap { authoritative, .. } => *authoritative,
            Orphan { allocated_in_bitmap, .. } => *allocated_in_bitmap == Some(true),
            _ => true,
        }
    }

    /// Identity of the problem, to tell whether a repair made it go away
    /// (the message may change; the thing it is about does not).
    fn key(&self) -> String {
        use Finding::*;
        match self {
            NotAMember { device, .. } => format!("not-a-member/{device}"),
            MemberMissing { member, .. } => format!("member-missing/{member}"),
            MemberMismatch { member, device, .. } => format!("member-mismatch/{member}/{device}"),
            MemberNotInTable { member, .. } => format!("member-not-in-table/{member}"),
            SuperblockCopy { member, copy, .. } => format!("superblock/{member}/{copy:?}"),
            RootRingUnreadable { member, .. } => format!("root-ring-unreadable/{member}"),
            RootSlot { member, slot, .. } => format!("root-slot/{member}/{slot}"),
            RootRingStale { member, .. } => format!("root-ring-stale/{member}"),
            NoRoot => "no-root".into(),
            JournalCopy { member, .. } => format!("journal/{member}"),
            JournalHistory { member, .. } => format!("journal-history/{member}"),
            CheckpointCopy { member, offset, .. } => format!("checkpoint-copy/{member}/{offset}"),
            CheckpointLost { .. } => "checkpoint-lost".into(),
            Metadata { problem } => format!("metadata/{problem}"),
            EngineRefuses { .. } => "engine-refuses".into(),
            UnlinkedInode { ino } => format!("unlinked/{ino}"),
            Namespace { problem } => format!("namespace/{problem}"),
            Allocation { member, problem } => format!("allocation/{member}/{problem}"),
            DoubleUse { member, block, .. } => format!("double-use/{member}/{block}"),
            Bitmap { member, .. } => format!("bitmap/{member}"),
            Fragment { extent, index, .. } => format!("fragment/{extent}/{index}"),
            ExtentLost { extent, .. } => format!("extent-lost/{extent}"),
            Orphan { member, block, .. } => format!("orphan/{member}/{block}"),
            BadHeaderInFreeSpace { member, block, .. } => format!("bad-header/{member}/{block}"),
            Unreadable { member, block, .. } => format!("unreadable/{member}/{block}"),
            PoolInUse { .. } => "pool-in-use".into(),
            RepairFailed { what, .. } => format!("repair-failed/{what}"),
        }
    }

    /// What a repair that made this problem go away did.
    fn repair_action(&self) -> &'static str {
        use Finding::*;
        match self {
            SuperblockCopy { .. } => "rewritten from the other copy",
            RootSlot { .. } => "cleared after a new root was written",
            RootRingStale { .. } | JournalCopy { .. } | CheckpointCopy { .. } => "superseded by a new checkpoint",
            UnlinkedInode { .. } => "dropped by the engine at open",
            Fragment { .. } => "rebuilt from the other fragments",
            NotAMember { .. } | MemberMissing { .. } => "re-initialised in place as the missing member",
            _ => "no longer found",
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use Finding::*;
        match self {
            NotAMember { device, reason } => write!(f, "{device} is not a member of this pool: {reason}"),
            MemberMissing { member, path_hint, fragments } => {
                write!(f, "member {member} is missing")?;
                if !path_hint.is_empty() {
                    write!(f, " (last seen as {path_hint})")?;
                }
                write!(f, "; {fragments} fragments are on it")
            }
            MemberMismatch { device, found, expected, .. } => {
                write!(f, "{device} has member UUID {found}, the member table says {expected}")
            }
            MemberNotInTable { member, device } => {
                write!(f, "{device} claims member index {member}, which the member table does not list")
            }
            SuperblockCopy { copy, offset, problem, .. } => {
                let c = match copy {
                    SbCopy::Primary => "primary",
                    SbCopy::Backup => "backup",
                };
                write!(f, "{c} copy at offset {offset}: {problem}")
            }
            RootRingUnreadable { error, .. } => write!(f, "unreadable: {error}"),
            RootSlot { slot, newest, problem, .. } => {
                write!(f, "slot {slot} does not verify: {problem}")?;
                if let Some(g) = newest {
                    write!(f, " (it should hold the pool's newest root, generation {g})")?;
                }
                Ok(())
            }
            RootRingStale { newest: Some(n), pool_newest, .. } => {
                write!(f, "newest valid root is generation {n}, the pool's is {pool_newest} (a root write was missed)")
            }
            RootRingStale { newest: None, pool_newest, .. } => {
                write!(f, "no valid root of this pool (the pool's newest is generation {pool_newest})")
            }
            NoRoot => write!(f, "no valid root record on any member: the pool cannot be opened"),
            JournalCopy { records, longest, stop, .. } => {
                write!(f, "copy replays {records} live records, another copy {longest}: stops at {stop}")
            }
            JournalHistory { records, longest, .. } => write!(
                f,
                "copy's older history differs ({records} records from offset 0, another copy has {longest}); \
                 no live record is affected"
            ),
            CheckpointCopy { offset, problem, .. } => write!(f, "copy at offset {offset}: {problem}"),
            CheckpointLost { generation, problem } => {
                write!(f, "no copy of the checkpoint of generation {generation} is good ({problem}): metadata lost")
            }
            Metadata { problem } => write!(f, "{problem}"),
            EngineRefuses { error } => write!(f, "the engine refuses to open the pool: {error}"),
            UnlinkedInode { ino } => write!(f, "inode {ino} has no link (unlinked while open, then a crash)"),
            Namespace { problem } => write!(f, "{problem}"),
            Allocation { problem, .. } => write!(f, "{problem}"),
            DoubleUse { block, first, second, .. } => {
                write!(f, "data block {block} is used by both {first} and {second}")
            }
            Bitmap { problem, .. } => write!(f, "{problem}"),
            Fragment { extent, index, block, fault, .. } => {
                write!(f, "extent {extent} fragment {index} at data block {block}: {fault}")
            }
            ExtentLost { extent, good, needed, files } => {
                write!(f, "extent {extent}: {good} good fragments, {needed} needed: its data is lost")?;
                if !files.is_empty() {
                    write!(f, " (in {})", files.join(", "))?;
                }
                Ok(())
            }
            Orphan { block, blocks, extent, fragment_index, allocated_in_bitmap, .. } => {
                write!(
                    f,
                    "data blocks {block}..{} hold fragment {fragment_index} of extent {extent}, which no extent \
                     references",
                    block + blocks
                )?;
                match allocated_in_bitmap {
                    Some(true) => write!(f, "; the bitmap marks them allocated: a leak (dfs cleanup-orphans)"),
                    _ => write!(f, "; free by the metadata (a leftover; reused as space is needed)"),
                }
            }
            BadHeaderInFreeSpace { block, problem, .. } => {
                write!(f, "data block {block} (free) starts with a fragment magic but does not decode: {problem}")
            }
            Unreadable { block, blocks, error, .. } => {
                write!(f, "data blocks {block}..{} unreadable: {error}", block + blocks)
            }
            PoolInUse { pid } => write!(
                f,
                "the pool is in use by PID {pid}: it may change while being checked, so findings may be transient"
            ),
            RepairFailed { what, error } => write!(f, "{what}: {error}"),
        }
    }
}

/// A finding as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Reported {
    pub severity: Severity,
    pub structure: Structure,
    pub member: Option<u32>,
    pub message: String,
    /// What the repair did, for a corrected finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    pub finding: Finding,
}

/// A member as checked.
#[derive(Debug, Clone, Serialize)]
pub struct MemberInfo {
    pub index: u32,
    pub device: String,
    pub member_uuid: Uuid,
    pub size: u64,
    pub block_size: u32,
}

/// What was looked at, as found (before any repair).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckStats {
    /// Members the pool has (member table, root).
    pub members: u32,
    /// Members among the devices.
    pub members_present: u32,
    /// Generation of the winning root.
    pub root_generation: u64,
    /// Live journal records replayed.
    pub journal_records: usize,
    pub inodes: u64,
    pub extents: u64,
    pub fragments: u64,
    pub fragments_good: u64,
    /// Payload bytes read and hashed (`verify_data`).
    pub bytes_verified: u64,
    /// Whether the data regions were walked for orphans.
    pub data_walked: bool,
    pub blocks_examined: u64,
    pub orphans: u64,
    /// Superseded checkpoint copies found in free space (normal).
    pub stale_checkpoint_copies: u64,
    /// Old copies of live extents' fragments in free space (moved by repair).
    pub stale_fragment_copies: u64,
    /// Fragment headers of other pools in the data regions.
    pub foreign_headers: u64,
}

/// What a repair did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepairStats {
    pub superblocks_rewritten: u32,
    /// The pool was opened read-write (which writes a checkpoint) and closed.
    pub engine_opened: bool,
    pub extents_read: u64,
    /// Fragments handed to the engine's repair.
    pub fragments_rebuilt: u64,
    pub root_slots_cleared: u32,
    /// Zeroed members re-initialised in place (same index and UUID).
    pub members_reinitialised: u32,
}

/// The result of [`check_pool`]; serializes to `fsck.dfs --json`.
#[derive(Debug, Clone, Serialize)]
pub struct FsckReport {
    pub pool_uuid: Uuid,
    pub label: String,
    /// `check`, `repair` or `preen`.
    pub mode: &'static str,
    pub members: Vec<MemberInfo>,
    pub stats: FsckStats,
    pub repairs: RepairStats,
    pub findings: Vec<Reported>,
    pub corrected: usize,
    pub left: usize,
    pub info: usize,
    /// e2fsck's: 0, or 1 (corrected) + 4 (left).
    pub exit_code: u8,
}

impl FsckReport {
    /// Findings of one severity.
    pub fn with_severity(&self, s: Severity) -> impl Iterator<Item = &Reported> {
        self.findings.iter().filter(move |r| r.severity == s)
    }

    /// True when nothing but notes was found.
    pub fn is_clean(&self) -> bool {
        self.corrected == 0 && self.left == 0
    }
}

// ---------------------------------------------------------------- members

/// A device recognised as a member.
#[derive(Clone)]
struct Present {
    index: u32,
    dev: Arc<dyn Device>,
    choice: SuperblockChoice,
}

impl Present {
    fn layout(&self) -> &Layout {
        &self.choice.superblock.layout
    }

    fn name(&self) -> String {
        self.dev.identity().to_string()
    }
}

struct Ident {
    pool: Uuid,
    members: BTreeMap<u32, Present>,
    not_members: Vec<Finding>,
    /// Devices with no superblock whose superblock areas are all zeros.
    blank: Vec<Arc<dyn Device>>,
}

/// Bytes at each end of a device that must be zero for it to count as
/// blank (both superblock copies live inside them).
const BLANK_PROBE: u64 = 64 * 1024;

/// True when the first and last [`BLANK_PROBE`] bytes of `dev` read as zeros.
fn is_blank(dev: &dyn Device) -> bool {
    let size = dev.size();
    if size < 2 * BLANK_PROBE {
        return false;
    }
    [0, size - BLANK_PROBE]
        .iter()
        .all(|&off| member::read_bytes(dev, off, BLANK_PROBE as usize).is_ok_and(|b| b.iter().all(|&x| x == 0)))
}

fn identify(devices: &[Arc<dyn Device>]) -> Result<Ident, FsckError> {
    if devices.is_empty() {
        return Err(FsckError::NoDevices);
    }
    let mut pool: Option<(Uuid, String)> = None;
    let mut members: BTreeMap<u32, Present> = BTreeMap::new();
    let mut not_members = Vec::new();
    let mut blank = Vec::new();
    for dev in devices {
        let name = dev.identity().to_string();
        let choice = match member::read_superblocks(dev.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                let reason = match e {
                    member::MemberError::NotAMember { reason, .. } => reason,
                    other => other.to_string(),
                };
                not_members.push(Finding::NotAMember { device: name, reason });
                if is_blank(dev.as_ref()) {
                    blank.push(dev.clone());
                }
                continue;
            }
        };
        let sb = &choice.superblock;
        match &pool {
            None => pool = Some((sb.pool_uuid, name.clone())),
            Some((p, first)) if *p != sb.pool_uuid => {
                return Err(FsckError::MixedPools {
                    first: first.clone(),
                    first_pool: *p,
                    second: name,
                    second_pool: sb.pool_uuid,
                })
            }
            _ => {}
        }
        if let Some(other) = members.get(&sb.member_index) {
            return Err(FsckError::DuplicateMember {
                index: sb.member_index,
                first: other.name(),
                second: name,
                pool: sb.pool_uuid,
            });
        }
        members.insert(sb.member_index, Present { index: sb.member_index, dev: dev.clone(), choice });
    }
    let Some((pool, _)) = pool else {
        let reasons = not_members
            .iter()
            .map(|f| match f {
                Finding::NotAMember { device, reason } => format!("{device}: not a DynamicFS member: {reason}"),
                other => other.to_string(),
            })
            .collect();
        return Err(FsckError::NotAMember(reasons));
    };
    Ok(Ident { pool, members, not_members, blank })
}

/// The PID holding the pool lock of `pool` in `lock_dir`, if anyone does.
/// Looks without taking the lock and without creating anything.
pub fn pool_lock_holder(lock_dir: &std::path::Path, pool: Uuid) -> Option<u32> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let path = lock_dir.join(format!("{pool}.lock"));
    let mut file = std::fs::File::open(&path).ok()?;
    // SAFETY: flock on a valid fd owned by `file`; closing the file drops it.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        return None;
    }
    let mut s = String::new();
    let _ = file.read_to_string(&mut s);
    Some(s.trim().parse().unwrap_or(0))
}

// ---------------------------------------------------------------- one pass

/// Everything one read-only pass found.
struct Pass {
    label: String,
    findings: Vec<Finding>,
    stats: FsckStats,
    /// Root slots that do not verify: (member, slot).
    damaged_slots: Vec<(u32, u64)>,
    /// The engine opened the pool read-only.
    engine_ok: bool,
    /// Every unreferenced fragment header found by the data-region walk.
    unreferenced: Vec<Unreferenced>,
    /// Members of the table (not removed) no device was given for: index
    /// and UUID; and the winning root's journal geometry.
    missing: Vec<(u32, Uuid)>,
    journal: Option<(u64, u32)>,
}

/// Why a fragment header in free space is not referenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreferencedKind {
    /// An extent fragment of an extent the extent table does not have
    /// (a write whose commit never happened, or a deleted extent's).
    Orphan,
    /// An old copy of a live extent's fragment (moved by repair or migration).
    StaleFragment,
    /// A superseded checkpoint copy (every checkpoint leaves one).
    StaleCheckpoint,
}

/// A fragment header of this pool that no committed metadata references.
#[derive(Debug, Clone, Serialize)]
pub struct Unreferenced {
    pub kind: UnreferencedKind,
    pub member: u32,
    /// Data block of the header, and blocks of header + payload.
    pub block: u64,
    pub blocks: u64,
    /// Byte offset of the header on the member.
    pub offset: u64,
    pub extent: Uuid,
    pub fragment_index: u16,
    /// From the header: the metadata generation and time that wrote it.
    pub generation: u64,
    pub created_ns: u64,
}

impl Unreferenced {
    /// What a header of this pool found at `f` on member `member`, that no
    /// committed fragment starts at, is: a stale checkpoint copy, a stale
    /// copy of a live extent, or an orphan. `None` for a copy of the
    /// checkpoint the current root names (`live_checkpoint`).
    pub(crate) fn judge(
        member: u32,
        f: &member::FoundFragment,
        state: &State,
        live_checkpoint: Option<Uuid>,
    ) -> Option<Unreferenced> {
        let kind = match f.header.kind {
            FragmentKind::Checkpoint if Some(f.header.extent_uuid) == live_checkpoint => return None,
            FragmentKind::Checkpoint => UnreferencedKind::StaleCheckpoint,
            FragmentKind::Extent if state.extents.contains_key(&f.header.extent_uuid.as_u128()) => {
                UnreferencedKind::StaleFragment
            }
            FragmentKind::Extent => UnreferencedKind::Orphan,
        };
        Some(Unreferenced {
            kind,
            member,
            block: f.block,
            blocks: 1 + f.payload_blocks,
            offset: f.offset,
            extent: f.header.extent_uuid,
            fragment_index: f.header.fragment_index,
            generation: f.header.generation,
            created_ns: f.header.created_ns,
        })
    }
}

impl Pass {
    fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.is_problem())
    }
}

/// Who references a run of data blocks.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Extent { id: u128, index: usize },
    Checkpoint { copy: usize },
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Extent { id, index } => write!(f, "extent {} fragment {index}", Uuid::from_u128(*id)),
            Owner::Checkpoint { copy } => write!(f, "checkpoint copy {copy}"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct RefRun {
    start: u64,
    len: u64,
    owner: Owner,
}

impl RefRun {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

impl Owner {
    fn sort_key(&self) -> (u8, u128, usize) {
        match self {
            Owner::Checkpoint { copy } => (0, 0, *copy),
            Owner::Extent { id, index } => (1, *id, *index),
        }
    }
}

fn stop_text(stop: &StopReason, end: &JournalPos) -> String {
    let at = format!("offset {} (seq {})", end.offset, end.seq);
    match stop {
        StopReason::BadHeader(e) => format!("{at}: no valid record ({e})"),
        StopReason::Stale { found_seq } => format!("{at}: a stale record (seq {found_seq})"),
        StopReason::BadPayload => format!("{at}: payload checksum mismatch"),
        StopReason::Io(e) => format!("{at}: read error: {e}"),
        StopReason::Full => format!("{at}: went once around the journal"),
    }
}

/// One read-only pass over the pool: the phases of the module doc, in order.
/// A phase that cannot go on (no root, no checkpoint) ends the pass.
fn run_pass(ident: &Ident, opts: &FsckOptions, in_use: Option<u32>) -> Pass {
    let mut c = Checker::new(ident, opts.progress.clone());
    let mut journal = None;
    if let Some(pid) = in_use {
        c.findings.push(Finding::PoolInUse { pid });
    }
    c.superblocks();
    if let Some(root) = c.roots() {
        journal = Some((root.journal_len, root.journal_block_size));
        let replay = c.journal(&root);
        if let Some(state) = c.load_state(&root, replay) {
            c.engine_verdict();
            let listed = c.members(&root, &state);
            c.namespace(&state);
            let runs = c.allocation(&root, &state, &listed);
            let bitmaps = c.bitmaps(&root, &runs);
            c.fragments(&state, opts.verify_data);
            if opts.walk_data_region() {
                c.orphans(&root, &state, &runs, &bitmaps);
            }
        }
    }
    let label = ident.members.values().next().map(|m| m.choice.superblock.label.clone()).unwrap_or_default();
    Pass {
        label,
        findings: c.findings,
        stats: c.stats,
        damaged_slots: c.damaged_slots,
        engine_ok: c.engine_ok,
        unreferenced: c.unreferenced,
        missing: c.missing,
        journal,
    }
}

/// What [`check_structures`] found.
#[derive(Debug, Clone)]
pub struct StructureCheck {
    pub pool_uuid: Uuid,
    /// Superblock copies, root slots and rings, journal copies, checkpoint
    /// copies (and devices that are no member).
    pub findings: Vec<Finding>,
    /// Root slots that do not verify: (member, slot).
    pub damaged_slots: Vec<(u32, u64)>,
    pub members_present: u32,
    /// Members the winning root counts (0 without a root).
    pub members: u32,
}

/// Phases 1 to 4 of a pass over `devices` — superblock copies, root rings,
/// journal copies, checkpoint copies — without loading the metadata: what
/// the scrub of a mounted pool checks of its structures
/// (`engine::scrub::scrub_live`, with the pool's commits held so that none
/// of it is being written meanwhile).
pub fn check_structures(devices: &[Arc<dyn Device>]) -> Result<StructureCheck, FsckError> {
    let ident = identify(devices)?;
    let mut c = Checker::new(&ident, None);
    c.superblocks();
    if let Some(root) = c.roots() {
        c.journal(&root);
        if let Some(cp) = &root.checkpoint {
            c.checkpoint_copies(cp);
        }
    }
    Ok(StructureCheck {
        pool_uuid: ident.pool,
        findings: c.findings,
        damaged_slots: c.damaged_slots,
        members_present: c.stats.members_present,
        members: c.stats.members,
    })
}

/// Clear root slot `slot` of a member if it still does not verify (a newer
/// root is durable in another slot by then): true when it was cleared.
pub(crate) fn clear_root_slot(
    dev: &dyn Device,
    layout: &Layout,
    slot: u64,
) -> Result<bool, crate::device::DeviceError> {
    let still_bad = member::read_root_ring(dev, layout)
        .ok()
        .and_then(|ring| ring.into_iter().find(|s| s.slot == slot))
        .is_some_and(|s| matches!(s.state, RootSlotState::Invalid(_)));
    if !still_bad {
        return Ok(false);
    }
    let zero = AlignedBuf::zeroed(layout.block_size as usize);
    member::write_bytes(dev, layout.root_slot_offset(slot), &zero)?;
    dev.sync()?;
    Ok(true)
}

/// The findings of a run as reported: those of the first pass, corrected
/// when a second pass (after a repair) no longer finds them, else left;
/// new problems of the second pass and failed repair steps are left.
/// Without a second pass (no repair, or it could not run) every problem
/// of the first is left.
pub(crate) fn classify(first: &[Finding], second: Option<&[Finding]>, failed: Vec<Finding>) -> Vec<Reported> {
    let report_of = |f: Finding, severity: Severity, action: Option<String>| Reported {
        severity,
        structure: f.structure(),
        member: f.member(),
        message: f.to_string(),
        action,
        finding: f,
    };
    let mut findings = Vec::new();
    let still: HashMap<String, &Finding> =
        second.map(|p| p.iter().filter(|f| f.is_problem()).map(|f| (f.key(), f)).collect()).unwrap_or_default();
    for f in first {
        let r = if !f.is_problem() {
            report_of(f.clone(), Severity::Info, None)
        } else if second.is_some() && !still.contains_key(&f.key()) {
            let action = f.repair_action().to_string();
            report_of(f.clone(), Severity::Corrected, Some(action))
        } else {
            report_of(f.clone(), Severity::Left, None)
        };
        findings.push(r);
    }
    let before: BTreeSet<String> = first.iter().filter(|f| f.is_problem()).map(|f| f.key()).collect();
    for f in second.unwrap_or_default().iter().filter(|f| f.is_problem() && !before.contains(&f.key())) {
        let mut r = report_of(f.clone(), Severity::Left, None);
        r.message.push_str(" (found after the repair)");
        findings.push(r);
    }
    findings.extend(failed.into_iter().map(|f| report_of(f, Severity::Left, None)));
    findings
}

/// The state of one pass.
struct Checker<'a> {
    ident: &'a Ident,
    pool: Uuid,
    findings: Vec<Finding>,
    stats: FsckStats,
    damaged_slots: Vec<(u32, u64)>,
    engine_ok: bool,
    unreferenced: Vec<Unreferenced>,
    progress: Option<Progress>,
    missing: Vec<(u32, Uuid)>,
}

/// Data-block runs referenced on each member, sorted by start.
type Runs = BTreeMap<u32, Vec<RefRun>>;

impl<'a> Checker<'a> {
    fn new(ident: &'a Ident, progress: Option<Progress>) -> Checker<'a> {
        Checker {
            ident,
            pool: ident.pool,
            findings: ident.not_members.clone(),
            stats: FsckStats { members_present: ident.members.len() as u32, ..Default::default() },
            damaged_slots: Vec::new(),
            engine_ok: false,
            unreferenced: Vec::new(),
            progress,
            missing: Vec::new(),
        }
    }

    /// Phase 1: both superblock copies of every member.
    fn superblocks(&mut self) {
        for m in self.ident.members.values() {
            for (copy, status) in [(SbCopy::Primary, &m.choice.primary), (SbCopy::Backup, &m.choice.backup)] {
                if let Some(p) = &status.problem {
                    let text = p.to_string();
                    let problem = text.strip_prefix("superblock: ").unwrap_or(&text).to_string();
                    self.findings.push(Finding::SuperblockCopy {
                        member: m.index,
                        copy,
                        offset: status.offset,
                        problem,
                    });
                }
            }
        }
    }

    /// Phase 2: every root ring: damaged slots, members that missed the newest
    /// root. Returns the winning root.
    fn roots(&mut self) -> Option<RootRecord> {
        let pool = self.pool;
        let mut rings: BTreeMap<u32, Vec<member::RootSlot>> = BTreeMap::new();
        for m in self.ident.members.values() {
            match member::read_root_ring(m.dev.as_ref(), m.layout()) {
                Ok(slots) => {
                    rings.insert(m.index, slots);
                }
                Err(e) => self.findings.push(Finding::RootRingUnreadable { member: m.index, error: e.to_string() }),
            }
        }
        let best: Option<RootRecord> = rings
            .values()
            .filter_map(|slots| member::best_root(slots, pool).map(|(_, r)| r.clone()))
            .max_by_key(|r| r.generation);
        let pool_newest = best.as_ref().map(|r| r.generation);
        for (index, slots) in &rings {
            let newest = member::best_root(slots, pool).map(|(_, r)| r.generation);
            let newest_slot = pool_newest.map(|g| g % slots.len().max(1) as u64);
            let stale = matches!((newest, pool_newest), (n, Some(p)) if n.is_none_or(|n| n < p));
            let mut explained = false;
            for s in slots {
                if let RootSlotState::Invalid(e) = &s.state {
                    // The damaged slot is where the newest root should be: one finding, not two.
                    let is_newest = stale && Some(s.slot) == newest_slot;
                    explained |= is_newest;
                    self.findings.push(Finding::RootSlot {
                        member: *index,
                        slot: s.slot,
                        newest: if is_newest { pool_newest } else { None },
                        problem: e.to_string(),
                    });
                    self.damaged_slots.push((*index, s.slot));
                }
            }
            if stale && !explained {
                self.findings.push(Finding::RootRingStale {
                    member: *index,
                    newest,
                    pool_newest: pool_newest.unwrap_or_default(),
                });
            }
        }
        match &best {
            Some(root) => {
                self.stats.root_generation = root.generation;
                self.stats.members = root.member_count;
            }
            None if rings.is_empty() => {
                self.findings.push(Finding::Metadata { problem: "no root ring could be read".into() })
            }
            None => self.findings.push(Finding::NoRoot),
        }
        best
    }

    /// Phase 3: the journal copies: live chains from the root (the longest is
    /// returned: what the engine replays), then their older history.
    fn journal(&mut self, root: &RootRecord) -> Option<Replay> {
        let (jlen, jbs) = (root.journal_len, root.journal_block_size);
        let holders: Vec<&Present> = self
            .ident
            .members
            .values()
            .filter(|m| m.layout().region(RegionKind::Journal).len >= jlen)
            .take(METADATA_COPIES)
            .collect();
        let start = JournalPos { offset: root.journal_offset, seq: root.journal_seq, prev_crc: 0 };
        let replays: Vec<Replay> = holders
            .iter()
            .map(|m| {
                let copy = JournalCopy::on(m.index, m.dev.clone(), m.layout());
                replay_copy(&copy, self.pool, jlen, jbs, start)
            })
            .collect();
        let longest = replays.iter().map(|r| r.records.len()).max().unwrap_or(0);
        let mut short: BTreeSet<u32> = BTreeSet::new();
        for r in &replays {
            if r.records.len() < longest {
                short.insert(r.member);
                self.findings.push(Finding::JournalCopy {
                    member: r.member,
                    records: r.records.len(),
                    longest,
                    stop: stop_text(&r.stop, &r.end),
                });
            }
        }
        let history: Vec<(u32, usize)> = holders
            .iter()
            .filter_map(|m| {
                let from = JournalStart { offset: 0, seq: None, len: jlen, block_size: jbs };
                let scan = member::scan_journal_from(m.dev.as_ref(), m.layout(), self.pool, from).ok()?;
                Some((m.index, scan.records.len()))
            })
            .collect();
        let most = history.iter().map(|(_, n)| *n).max().unwrap_or(0);
        for (index, n) in &history {
            if *n < most && !short.contains(index) {
                self.findings.push(Finding::JournalHistory { member: *index, records: *n, longest: most });
            }
        }
        self.stats.journal_records = longest;
        if replays.is_empty() {
            let problem = format!("no member has a journal region of {jlen} bytes");
            self.findings.push(Finding::Metadata { problem });
        }
        replays.into_iter().max_by_key(|r| r.records.len())
    }

    /// Phase 4: every copy of the root's checkpoint; the first good one's
    /// payload, and what is wrong with each bad one (also as findings).
    fn checkpoint_copies(&mut self, c: &CheckpointRef) -> (Option<Vec<u8>>, Vec<String>) {
        let mut good: Option<Vec<u8>> = None;
        let mut errors = Vec::new();
        for l in &c.copies {
            match read_checkpoint_copy(self.ident, self.pool, c, l) {
                Ok(bytes) => {
                    good.get_or_insert(bytes);
                }
                Err(problem) => {
                    errors.push(format!("member {}: {problem}", l.member_index));
                    let f = Finding::CheckpointCopy { member: l.member_index, offset: l.offset, problem };
                    self.findings.push(f);
                }
            }
        }
        (good, errors)
    }

    /// Phases 4 and 5: the checkpoint copies, and the state as the engine loads it:
    /// the first good copy, then the journal's ops; inodes left unlinked by
    /// a crash are dropped (and reported), as the engine does at open.
    fn load_state(&mut self, root: &RootRecord, replay: Option<Replay>) -> Option<State> {
        let first = &self.ident.members.values().next().expect("at least one member").choice.superblock;
        let mut state = match &root.checkpoint {
            None => {
                let recs = self
                    .ident
                    .members
                    .values()
                    .map(|m| MemberRec {
                        index: m.index,
                        uuid: m.choice.superblock.member_uuid.as_u128(),
                        state: MemberState::Online,
                        path_hint: m.dev.identity().path.display().to_string(),
                    })
                    .collect();
                let config = PoolConfig { default_policy: first.default_policy.encode(), label: first.label.clone() };
                State::new(config, recs, first.created_ns as i64)
            }
            Some(c) => {
                let (good, errors) = self.checkpoint_copies(c);
                let problem = match good.map(|b| State::decode_checkpoint(&b)) {
                    Some(Ok(s)) => return Some(self.replay(s, replay)),
                    Some(Err(e)) => format!("the checkpoint verifies but does not decode: {e}"),
                    None if errors.is_empty() => "no copy listed".into(),
                    None => errors.join("; "),
                };
                self.findings.push(Finding::CheckpointLost { generation: root.generation, problem });
                return None;
            }
        };
        state = self.replay(state, replay);
        Some(state)
    }

    fn replay(&mut self, mut state: State, replay: Option<Replay>) -> State {
        'records: for (seq, payload) in replay.iter().flat_map(|r| r.records.iter()) {
            let ops: Vec<Op> = match postcard::from_bytes(payload) {
                Ok(ops) => ops,
                Err(e) => {
                    let problem = format!("journal record {seq} does not decode: {e}");
                    self.findings.push(Finding::Metadata { problem });
                    break;
                }
            };
            for op in &ops {
                if let Err(e) = state.apply(op) {
                    self.findings.push(Finding::Metadata { problem: format!("journal record {seq}: {e}") });
                    break 'records;
                }
            }
        }
        let unlinked: Vec<u64> = state.inodes.iter().filter(|(_, i)| i.attrs.nlink == 0).map(|(ino, _)| *ino).collect();
        for ino in unlinked {
            let _ = state.apply(&Op::DropInode { ino });
            self.findings.push(Finding::UnlinkedInode { ino });
        }
        state
    }

    /// The engine's own verdict: does it open the pool read-only?
    fn engine_verdict(&mut self) {
        let devs: Vec<Arc<dyn Device>> = self.ident.members.values().map(|m| m.dev.clone()).collect();
        match Pool::open(devs, PoolOptions { read_only: true, ..Default::default() }) {
            Ok(_) => self.engine_ok = true,
            Err(e) => self.findings.push(Finding::EngineRefuses { error: e.to_string() }),
        }
    }

    /// The members the pool has (member table, root) against the devices.
    /// Returns the member indexes the pool knows.
    fn members(&mut self, root: &RootRecord, state: &State) -> BTreeSet<u32> {
        let mut on: HashMap<u32, u64> = HashMap::new();
        for (_, _, f) in state.all_fragments() {
            *on.entry(f.member).or_default() += 1;
        }
        let fragments_on = |i: u32| on.get(&i).copied().unwrap_or(0);
        let mut listed: BTreeSet<u32> = BTreeSet::new();
        for rec in &state.members {
            listed.insert(rec.index);
            if rec.state == MemberState::Removed {
                continue;
            }
            match self.ident.members.get(&rec.index) {
                None => {
                    self.missing.push((rec.index, Uuid::from_u128(rec.uuid)));
                    self.findings.push(Finding::MemberMissing {
                        member: rec.index,
                        path_hint: rec.path_hint.clone(),
                        fragments: fragments_on(rec.index),
                    })
                }
                Some(m) if m.choice.superblock.member_uuid.as_u128() != rec.uuid => {
                    self.findings.push(Finding::MemberMismatch {
                        member: rec.index,
                        device: m.name(),
                        found: m.choice.superblock.member_uuid,
                        expected: Uuid::from_u128(rec.uuid),
                    })
                }
                Some(_) => {}
            }
        }
        for i in 0..root.member_count {
            if listed.insert(i) && !self.ident.members.contains_key(&i) {
                let f = Finding::MemberMissing { member: i, path_hint: String::new(), fragments: fragments_on(i) };
                self.findings.push(f);
            }
        }
        for m in self.ident.members.values() {
            if !listed.contains(&m.index) {
                self.findings.push(Finding::MemberNotInTable { member: m.index, device: m.name() });
            }
        }
        self.stats.members = self.stats.members.max(state.members.len() as u32);
        listed
    }

    /// Namespace invariants (`State::check`).
    fn namespace(&mut self, state: &State) {
        for problem in state.check() {
            self.findings.push(Finding::Namespace { problem });
        }
        self.stats.inodes = state.inodes.len() as u64;
        self.stats.extents = state.extents.len() as u64;
    }

    /// Phase 6: references: inside the data region, on a known member, no block
    /// twice. Returns the referenced runs per member.
    fn allocation(&mut self, root: &RootRecord, state: &State, listed: &BTreeSet<u32>) -> Runs {
        let mut runs: Runs = BTreeMap::new();
        for (id, index, f) in state.all_fragments() {
            let owner = Owner::Extent { id, index };
            runs.entry(f.member).or_default().push(RefRun { start: f.block, len: f.blocks as u64, owner });
        }
        for (copy, l) in root.checkpoint.iter().flat_map(|c| c.copies.iter()).enumerate() {
            let Some(m) = self.ident.members.get(&l.member_index) else { continue };
            let data = m.layout().region(RegionKind::Data);
            let bs = m.layout().block_size as u64;
            if l.offset >= data.start {
                let start = (l.offset - data.start) / bs;
                let r = RefRun { start, len: l.len.div_ceil(bs), owner: Owner::Checkpoint { copy } };
                runs.entry(l.member_index).or_default().push(r);
            }
        }
        for (member, list) in runs.iter_mut() {
            list.sort_by_key(|r| (r.start, r.len, r.owner.sort_key()));
            if let Some(m) = self.ident.members.get(member) {
                let total = m.layout().data_blocks();
                for r in list.iter().filter(|r| r.start + r.len > total || r.len == 0) {
                    let (a, b) = (r.start, r.start + r.len);
                    let problem =
                        format!("{} at data blocks {a}..{b} lies outside the data region of {total} blocks", r.owner);
                    self.findings.push(Finding::Allocation { member: *member, problem });
                }
            } else if !listed.contains(member) {
                let problem = format!("{} references member {member}, which the pool does not have", list[0].owner);
                self.findings.push(Finding::Allocation { member: *member, problem });
            }
            let mut reach: Option<RefRun> = None;
            for r in list.iter() {
                if let Some(prev) = reach {
                    if r.start < prev.end() {
                        self.findings.push(Finding::DoubleUse {
                            member: *member,
                            block: r.start,
                            first: prev.owner.to_string(),
                            second: r.owner.to_string(),
                        });
                    }
                }
                if reach.is_none_or(|p| r.end() > p.end()) {
                    reach = Some(*r);
                }
            }
        }
        runs
    }

    /// Phase 6 (cont.): the on-disk bitmaps; returns the scans that are authoritative.
    fn bitmaps(&mut self, root: &RootRecord, runs: &Runs) -> BTreeMap<u32, member::BitmapScan> {
        let mut out = BTreeMap::new();
        for m in self.ident.members.values() {
            let list = runs.get(&m.index).map(Vec::as_slice).unwrap_or(&[]);
            let (findings, scan) = check_bitmap(m, self.pool, root.generation, list);
            self.findings.extend(findings);
            if let Some(scan) = scan {
                out.insert(m.index, scan);
            }
        }
        out
    }

    /// Phase 7: every fragment of every extent, read from its member (one thread
    /// per member); extents with too few good fragments are lost.
    fn fragments(&mut self, state: &State, verify: bool) {
        let pool = self.pool;
        let mut ids: Vec<u128> = state.extents.keys().copied().collect();
        ids.sort_unstable();
        let mut tasks: BTreeMap<u32, Vec<(u128, usize, FragLoc)>> = BTreeMap::new();
        for id in &ids {
            for (i, f) in state.extents[id].frags.iter().enumerate() {
                tasks.entry(f.member).or_default().push((*id, i, *f));
            }
        }
        type Outcome = (u128, usize, FragLoc, Result<u64, FragmentFault>);
        let total: u64 = tasks.values().map(|l| l.len() as u64).sum();
        let done = std::sync::atomic::AtomicU64::new(0);
        let progress = self.progress.clone();
        let results: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = tasks
                .iter()
                .map(|(member, list)| {
                    let m = self.ident.members.get(member);
                    let (done, progress) = (&done, &progress);
                    s.spawn(move || {
                        list.iter()
                            .map(|(id, i, f)| {
                                let r = match m {
                                    None => Err(FragmentFault::Absent),
                                    Some(m) => check_fragment(m, pool, &state.extents[id], *i, f, verify),
                                };
                                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                                if let Some(p) = progress {
                                    p(n, total);
                                }
                                (*id, *i, *f, r)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let mut good: HashMap<u128, u32> = HashMap::new();
        let mut bad: BTreeMap<(u128, usize), Finding> = BTreeMap::new();
        for (id, i, f, r) in results {
            self.stats.fragments += 1;
            match r {
                Ok(bytes) => {
                    self.stats.fragments_good += 1;
                    self.stats.bytes_verified += bytes;
                    *good.entry(id).or_default() += 1;
                }
                Err(fault) => {
                    let extent = Uuid::from_u128(id);
                    let finding =
                        Finding::Fragment { member: f.member, extent, index: i as u32, block: f.block, fault };
                    bad.insert((id, i), finding);
                }
            }
        }
        self.findings.extend(bad.into_values());
        let lost: Vec<(u128, u32, u32)> = ids
            .iter()
            .map(|id| (*id, good.get(id).copied().unwrap_or(0), state.extents[id].policy().fragments_needed()))
            .filter(|(_, g, needed)| g < needed)
            .collect();
        if !lost.is_empty() {
            let files = extent_files(state);
            for (id, good, needed) in lost {
                let files = files.get(&id).cloned().unwrap_or_default();
                self.findings.push(Finding::ExtentLost { extent: Uuid::from_u128(id), good, needed, files });
            }
        }
    }

    /// Phase 8: walk every member's data region (one thread per member) for
    /// fragment headers nothing references.
    fn orphans(&mut self, root: &RootRecord, state: &State, runs: &Runs, bitmaps: &BTreeMap<u32, member::BitmapScan>) {
        self.stats.data_walked = true;
        let walked: Vec<(u32, Result<member::FragmentScan, String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = self
                .ident
                .members
                .values()
                .map(|m| {
                    let bm = bitmaps.get(&m.index);
                    s.spawn(move || {
                        let r = member::scan_fragments(m.dev.as_ref(), m.layout(), bm, FragmentScanOptions::default());
                        (m.index, r.map_err(|e| e.to_string()))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        let live_checkpoint = root.checkpoint.as_ref().map(|c| c.id);
        for (index, scan) in walked {
            let scan = match scan {
                Ok(s) => s,
                Err(error) => {
                    self.findings.push(Finding::Unreadable { member: index, block: 0, blocks: 0, error });
                    continue;
                }
            };
            self.stats.blocks_examined += scan.blocks_examined;
            let list = runs.get(&index).map(Vec::as_slice).unwrap_or(&[]);
            // Referenced: the start of a run, or inside one (payload bytes).
            // `reach[i]`: the furthest end among runs 0..=i (sorted by start).
            let reach: Vec<u64> = list
                .iter()
                .scan(0u64, |m, r| {
                    *m = (*m).max(r.end());
                    Some(*m)
                })
                .collect();
            let referenced = |b: u64| {
                let i = list.partition_point(|r| r.start <= b);
                i > 0 && b < reach[i - 1]
            };
            for f in &scan.fragments {
                if f.header.pool_uuid != self.pool {
                    self.stats.foreign_headers += 1;
                    continue;
                }
                if referenced(f.block) {
                    continue;
                }
                if let Some(u) = Unreferenced::judge(index, f, state, live_checkpoint) {
                    self.unreferenced.push(u);
                }
                match f.header.kind {
                    FragmentKind::Checkpoint => {
                        if Some(f.header.extent_uuid) != live_checkpoint {
                            self.stats.stale_checkpoint_copies += 1;
                        }
                    }
                    FragmentKind::Extent if state.extents.contains_key(&f.header.extent_uuid.as_u128()) => {
                        self.stats.stale_fragment_copies += 1;
                    }
                    FragmentKind::Extent => {
                        self.stats.orphans += 1;
                        self.findings.push(Finding::Orphan {
                            member: index,
                            block: f.block,
                            blocks: 1 + f.payload_blocks,
                            extent: f.header.extent_uuid,
                            fragment_index: f.header.fragment_index,
                            allocated_in_bitmap: f.free_in_bitmap.map(|free| free < 1 + f.payload_blocks),
                        });
                    }
                }
            }
            for b in scan.bad_headers.iter().filter(|b| !referenced(b.block)) {
                let problem = b.error.to_string();
                self.findings.push(Finding::BadHeaderInFreeSpace { member: index, block: b.block, problem });
            }
            for u in &scan.unreadable {
                let (block, blocks, error) = (u.block, u.blocks, u.error.clone());
                self.findings.push(Finding::Unreadable { member: index, block, blocks, error });
            }
        }
    }
}

/// Read and verify one checkpoint copy; its payload, or what is wrong.
fn read_checkpoint_copy(
    ident: &Ident,
    pool: Uuid,
    c: &CheckpointRef,
    l: &CheckpointLocator,
) -> Result<Vec<u8>, String> {
    let m = ident.members.get(&l.member_index).ok_or_else(|| "its member is not present".to_string())?;
    let layout = m.layout();
    let data = layout.region(RegionKind::Data);
    let bs = layout.block_size as u64;
    if l.offset < data.start || l.offset + l.len > data.end() || !(l.offset - data.start).is_multiple_of(bs) {
        return Err(format!("locator {}+{} lies outside the data region", l.offset, l.len));
    }
    if l.len < bs + c.len {
        return Err(format!("locator of {} bytes is too short for {} bytes", l.len, c.len));
    }
    let buf = read_bytes(m.dev.as_ref(), l.offset, (bs + c.len) as usize).map_err(|e| format!("unreadable: {e}"))?;
    let h = FragmentHeader::decode(&buf[..FRAGMENT_HEADER_LEN]).map_err(|e| format!("bad header: {e}"))?;
    if h.kind != FragmentKind::Checkpoint || h.pool_uuid != pool || h.extent_uuid != c.id {
        return Err(format!(
            "the header names {:?} {} of pool {}, not checkpoint {}",
            h.kind, h.extent_uuid, h.pool_uuid, c.id
        ));
    }
    if h.payload_len as u64 != c.len {
        return Err(format!("the header says {} bytes, the root {}", h.payload_len, c.len));
    }
    let payload = &buf[bs as usize..];
    if blake3::hash(payload).as_bytes() != &c.blake3 {
        return Err("payload does not match the root's BLAKE3".into());
    }
    Ok(payload.to_vec())
}

/// Judge the on-disk bitmap of one member against its references; the
/// scan is returned when authoritative (for the orphan walk).
fn check_bitmap(
    m: &Present,
    pool: Uuid,
    generation: u64,
    runs: &[RefRun],
) -> (Vec<Finding>, Option<member::BitmapScan>) {
    let scan = match member::read_bitmap(m.dev.as_ref(), m.layout(), pool) {
        Ok(s) => s,
        Err(e) => {
            let problem = format!("bitmap unreadable: {e}");
            return (vec![Finding::Bitmap { member: m.index, authoritative: false, problem }], None);
        }
    };
    let gens: BTreeSet<u64> = scan.blocks.iter().filter_map(|b| b.result.as_ref().ok()).map(|h| h.generation).collect();
    let bad = scan.bad_blocks();
    let authoritative = !gens.is_empty() && gens.iter().all(|g| *g == generation);
    if !authoritative {
        let gens: Vec<String> = gens.iter().map(|g| g.to_string()).collect();
        let mut problem = format!(
            "not judged: the on-disk bitmap is of generation {} and the root of {generation} (the engine derives \
             allocation from the metadata and writes the bitmap region only at mkfs)",
            if gens.is_empty() { "-".to_string() } else { gens.join(", ") }
        );
        if bad > 0 {
            problem.push_str(&format!("; {bad} bitmap blocks do not verify"));
        }
        return (vec![Finding::Bitmap { member: m.index, authoritative: false, problem }], None);
    }
    let mut out = Vec::new();
    if bad > 0 {
        let first = scan.blocks.iter().find(|b| b.result.is_err()).expect("one bad block");
        let e = first.result.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        out.push(Finding::Bitmap {
            member: m.index,
            authoritative: true,
            problem: format!("{bad} bitmap blocks do not verify (first: block {}: {e})", first.index),
        });
    }
    let mut referenced = vec![false; scan.data_blocks as usize];
    let mut clear = (0u64, None);
    for r in runs {
        for b in r.start..(r.start + r.len).min(scan.data_blocks) {
            referenced[b as usize] = true;
            if scan.is_used(b) == Some(false) {
                clear.0 += 1;
                clear.1.get_or_insert(b);
            }
        }
    }
    if let (n, Some(b)) = clear {
        out.push(Finding::Bitmap {
            member: m.index,
            authoritative: true,
            problem: format!("{n} referenced blocks are free in the bitmap (first: data block {b})"),
        });
    }
    let leaked: Vec<u64> =
        (0..scan.data_blocks).filter(|b| !referenced[*b as usize] && scan.is_used(*b) == Some(true)).collect();
    if let Some(b) = leaked.first() {
        out.push(Finding::Bitmap {
            member: m.index,
            authoritative: true,
            problem: format!(
                "{} blocks are allocated in the bitmap but referenced by nothing (first: {b})",
                leaked.len()
            ),
        });
    }
    (out, Some(scan))
}

/// Check one fragment from its member: header against the extent table,
/// and with `verify` the payload's BLAKE3. Returns the payload bytes hashed.
fn check_fragment(
    m: &Present,
    pool: Uuid,
    e: &Extent,
    index: usize,
    loc: &FragLoc,
    verify: bool,
) -> Result<u64, FragmentFault> {
    check_fragment_at(m.dev.as_ref(), m.layout(), pool, e, index, loc, verify)
}

/// Judge fragment `index` of `e` at `loc` on a member (`dev`, `layout`):
/// header against the extent table, and with `verify` the payload against
/// its BLAKE3. The payload bytes verified, or what is wrong. Shared by fsck
/// and scrub (`crate::engine::scrub`), so both judge a fragment alike.
pub fn check_fragment_at(
    dev: &dyn Device,
    layout: &Layout,
    pool: Uuid,
    e: &Extent,
    index: usize,
    loc: &FragLoc,
    verify: bool,
) -> Result<u64, FragmentFault> {
    let bs = layout.block_size as u64;
    let policy = e.policy();
    let payload_len = redundancy::shard_len(policy, e.len) as u64;
    let need = 1 + payload_len.div_ceil(bs);
    if loc.blocks as u64 != need {
        return Err(FragmentFault::Mismatch(format!(
            "the extent table gives it {} blocks, a {payload_len}-byte fragment needs {need}",
            loc.blocks
        )));
    }
    if loc.block + need > layout.data_blocks() {
        return Err(FragmentFault::Mismatch("its location lies outside the data region".into()));
    }
    let len = if verify { need * bs } else { bs };
    let buf = read_bytes(dev, layout.data_offset(loc.block), len as usize)
        .map_err(|err| FragmentFault::Unreadable(err.to_string()))?;
    let h =
        FragmentHeader::decode(&buf[..FRAGMENT_HEADER_LEN]).map_err(|err| FragmentFault::BadHeader(err.to_string()))?;
    let why = if h.kind != FragmentKind::Extent {
        Some("not an extent fragment".to_string())
    } else if h.pool_uuid != pool {
        Some(format!("pool {}", h.pool_uuid))
    } else if h.extent_uuid.as_u128() != e.id {
        Some(format!("extent {}", h.extent_uuid))
    } else if h.fragment_index as usize != index {
        Some(format!("fragment index {}", h.fragment_index))
    } else if h.policy != policy || h.fragment_count as u32 != policy.fragment_count() {
        Some(format!("policy {} with {} fragments", h.policy, h.fragment_count))
    } else if h.extent_len != e.len || h.extent_blake3 != e.blake3 {
        Some("extent length or BLAKE3".to_string())
    } else if h.payload_len as u64 != payload_len {
        Some(format!("payload length {}, expected {payload_len}", h.payload_len))
    } else if matches!(policy, Policy::Replication { .. }) && h.payload_blake3 != e.blake3 {
        Some("a replica whose payload BLAKE3 is not the extent's".to_string())
    } else {
        None
    };
    if let Some(why) = why {
        return Err(FragmentFault::Mismatch(why));
    }
    if !verify {
        return Ok(0);
    }
    let payload = &buf[bs as usize..(bs + payload_len) as usize];
    if blake3::hash(payload).as_bytes() != &h.payload_blake3 {
        return Err(FragmentFault::BadPayload);
    }
    Ok(payload_len)
}

/// Extent id → the files (path and byte offset) it belongs to.
pub(crate) fn extent_files(state: &State) -> HashMap<u128, Vec<String>> {
    let mut paths: HashMap<u64, String> = HashMap::new();
    paths.insert(ROOT_INO, "/".into());
    let mut queue = vec![ROOT_INO];
    while let Some(dir) = queue.pop() {
        let Some(Body::Dir { entries, .. }) = state.inodes.get(&dir).map(|i| &i.body) else { continue };
        let base = paths.get(&dir).cloned().unwrap_or_default();
        for (name, child) in entries {
            if paths.contains_key(child) {
                continue;
            }
            let name = String::from_utf8_lossy(name);
            let p = if base == "/" { format!("/{name}") } else { format!("{base}/{name}") };
            paths.insert(*child, p);
            queue.push(*child);
        }
    }
    let mut out: HashMap<u128, Vec<String>> = HashMap::new();
    for (ino, inode) in &state.inodes {
        if let Body::File(map) = &inode.body {
            let path = paths.get(ino).cloned().unwrap_or_else(|| format!("<inode {ino}>"));
            for (idx, id) in map {
                out.entry(*id).or_default().push(format!("{path} at byte {}", idx * crate::engine::state::EXTENT_SIZE));
            }
        }
    }
    out
}

// ---------------------------------------------------------------- repair

/// Structure findings that a new checkpoint and root, written on every
/// member, supersede (fsck's read-write open, a mounted scrub's checkpoint).
pub(crate) fn superseded_by_checkpoint(f: &Finding) -> bool {
    matches!(
        f,
        Finding::RootSlot { .. }
            | Finding::RootRingStale { .. }
            | Finding::JournalCopy { .. }
            | Finding::CheckpointCopy { .. }
    )
}

/// Findings the engine's read-write open (a checkpoint) or its repair path fixes.
fn needs_engine(f: &Finding) -> bool {
    superseded_by_checkpoint(f) || matches!(f, Finding::UnlinkedInode { .. } | Finding::Fragment { .. })
}

pub(crate) fn frag_fault(f: &FragmentFault) -> FragFault {
    match f {
        FragmentFault::Absent => FragFault::Absent,
        FragmentFault::Unreadable(e) => FragFault::Io(e.clone()),
        other => FragFault::Corrupt(other.to_string()),
    }
}

/// The repair steps of the module doc. Returns the failures (as findings).
fn repair(ident: &Ident, pass: &Pass, stats: &mut RepairStats) -> Vec<Finding> {
    let mut failed = Vec::new();
    // Superblock copies, directly.
    for m in ident.members.values() {
        if m.choice.needs_repair() {
            match member::repair_superblock(m.dev.as_ref(), &m.choice) {
                Ok(r) => stats.superblocks_rewritten += u32::from(r.rewrote_primary) + u32::from(r.rewrote_backup),
                Err(e) => failed.push(Finding::RepairFailed {
                    what: format!("rewrite the superblock of member {} ({})", m.index, m.name()),
                    error: e.to_string(),
                }),
            }
        }
    }
    // Extents with too few good fragments cannot be rebuilt: not tried.
    let lost: BTreeSet<Uuid> = pass
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::ExtentLost { extent, .. } => Some(*extent),
            _ => None,
        })
        .collect();
    let fixable = |f: &Finding| match f {
        Finding::Fragment { extent, .. } => !lost.contains(extent),
        other => needs_engine(other),
    };
    if !pass.engine_ok || !pass.problems().any(fixable) {
        return failed;
    }
    // Through the engine: open (a checkpoint), rebuild bad fragments, close.
    let devs: Vec<Arc<dyn Device>> = ident.members.values().map(|m| m.dev.clone()).collect();
    let pool = match Pool::open(devs, PoolOptions { no_lock: true, ..Default::default() }) {
        Ok(p) => p,
        Err(e) => {
            failed.push(Finding::RepairFailed { what: "open the pool read-write".into(), error: e.to_string() });
            return failed;
        }
    };
    stats.engine_opened = true;
    let bad_extents: BTreeSet<u128> = pass
        .findings
        .iter()
        .filter_map(|f| match f {
            Finding::Fragment { extent, .. } if !lost.contains(extent) => Some(extent.as_u128()),
            _ => None,
        })
        .collect();
    for id in bad_extents {
        if let Err(e) = rebuild_extent(&pool, ident, id, stats) {
            failed.push(Finding::RepairFailed {
                what: format!("rebuild extent {}", Uuid::from_u128(id)),
                error: e.to_string(),
            });
        }
    }
    if let Err(e) = pool.commit() {
        failed.push(Finding::RepairFailed { what: "commit the rebuilt fragments".into(), error: e.to_string() });
    }
    if let Err(e) = pool.close() {
        failed.push(Finding::RepairFailed { what: "close the pool (final checkpoint)".into(), error: e.to_string() });
        return failed;
    }
    // Damaged root slots: a new root is durable in another slot; clear them.
    for (index, slot) in &pass.damaged_slots {
        let Some(m) = ident.members.get(index) else { continue };
        match clear_root_slot(m.dev.as_ref(), m.layout(), *slot) {
            Ok(cleared) => stats.root_slots_cleared += u32::from(cleared),
            Err(e) => failed.push(Finding::RepairFailed {
                what: format!("clear root slot {slot} of member {index}"),
                error: e.to_string(),
            }),
        }
    }
    failed
}

/// Re-initialise a zeroed member in place (see the module doc): exactly
/// one missing member, exactly one blank device, the journal geometry
/// known. `Ok(true)` when it was done.
fn reinit_zeroed_member(ident: &Ident, pass: &Pass, stats: &mut RepairStats) -> Result<bool, Finding> {
    let (&[(index, member_uuid)], [dev], Some((journal_len, journal_bs))) =
        (pass.missing.as_slice(), ident.blank.as_slice(), pass.journal)
    else {
        return Ok(false);
    };
    let Some(model) = ident.members.values().next() else { return Ok(false) };
    let sb = &model.choice.superblock;
    let what = || format!("re-initialise {} as member {index}", dev.identity());
    crate::mkfs::reinit_member(
        dev.as_ref(),
        ident.pool,
        member_uuid,
        index,
        &sb.label,
        sb.default_policy,
        journal_len,
        journal_bs,
    )
    .map_err(|e| Finding::RepairFailed { what: what(), error: e.to_string() })?;
    stats.members_reinitialised += 1;
    Ok(true)
}

/// Rebuild extent `id`'s bad fragments through the engine (shared with
/// scrub: [`crate::engine::scrub::repair_extent`]).
fn rebuild_extent(pool: &Pool, _ident: &Ident, id: u128, stats: &mut RepairStats) -> Result<(), EngineError> {
    let r = crate::engine::scrub::repair_extent(pool, id)?;
    stats.extents_read += u64::from(r.read);
    stats.fragments_rebuilt += r.handed_to_repair;
    Ok(())
}

// ---------------------------------------------------------------- entry point

/// Check (and with `opts.repair` or `opts.preen`, repair) the pool whose
/// members `devices` are. See the module doc. Errors only when nothing can
/// be checked (exit status 8); everything found is in the report.
pub fn check_pool(devices: &[Arc<dyn Device>], opts: &FsckOptions) -> Result<FsckReport, FsckError> {
    let mut ident = identify(devices)?;
    let lock_dir = opts.lock_dir();
    let _lock = if opts.repairing() {
        match PoolLock::acquire(&lock_dir, ident.pool) {
            Ok(l) => Some(l),
            Err(EngineError::PoolInUse { pool, pid, lock }) => return Err(FsckError::PoolInUse { pool, pid, lock }),
            Err(e) => return Err(FsckError::Lock(e.to_string())),
        }
    } else {
        None
    };
    let in_use = if opts.repairing() { None } else { pool_lock_holder(&lock_dir, ident.pool) };
    let first = run_pass(&ident, opts, in_use);
    let mut repairs = RepairStats::default();
    let findings = if opts.repairing() && first.problems().next().is_some() {
        let mut failed = Vec::new();
        // A zeroed member first: the engine's repair then sees it present.
        match reinit_zeroed_member(&ident, &first, &mut repairs) {
            Ok(false) => {}
            Ok(true) => ident = identify(devices)?,
            Err(f) => failed.push(f),
        }
        failed.extend(repair(&ident, &first, &mut repairs));
        let second = identify(devices).ok().map(|id| run_pass(&id, opts, None));
        classify(&first.findings, second.as_ref().map(|p| p.findings.as_slice()), failed)
    } else {
        classify(&first.findings, None, Vec::new())
    };
    let corrected = findings.iter().filter(|r| r.severity == Severity::Corrected).count();
    let left = findings.iter().filter(|r| r.severity == Severity::Left).count();
    let info = findings.iter().filter(|r| r.severity == Severity::Info).count();
    let exit_code = if corrected > 0 { EXIT_CORRECTED } else { 0 } | if left > 0 { EXIT_UNCORRECTED } else { 0 };
    let members = ident
        .members
        .values()
        .map(|m| MemberInfo {
            index: m.index,
            device: m.name(),
            member_uuid: m.choice.superblock.member_uuid,
            size: m.layout().size,
            block_size: m.layout().block_size,
        })
        .collect();
    Ok(FsckReport {
        pool_uuid: ident.pool,
        label: first.label.clone(),
        mode: opts.mode(),
        members,
        stats: first.stats,
        repairs,
        findings,
        corrected,
        left,
        info,
        exit_code,
    })
}

// ---------------------------------------------------------------- orphans

/// What a read-only pass found unreferenced in the data regions, for orphan
/// GC (`crate::engine::orphans`), with the devices to reach it.
pub struct UnreferencedScan {
    pub pool_uuid: Uuid,
    /// Member index → device and its layout.
    pub members: BTreeMap<u32, (Arc<dyn Device>, Layout)>,
    /// The metadata loaded, the engine accepts the pool and the walk ran:
    /// only then is "unreferenced" a judgement one may free on.
    pub trustworthy: bool,
    /// The errors of the pass (why it is not trustworthy, among others).
    pub problems: Vec<String>,
    pub blocks_examined: u64,
    pub found: Vec<Unreferenced>,
}

/// One read-only pass (no payload hashing, the data regions walked) that
/// lists every fragment header of this pool no committed metadata
/// references. See [`Unreferenced`].
pub fn scan_unreferenced(devices: &[Arc<dyn Device>]) -> Result<UnreferencedScan, FsckError> {
    let ident = identify(devices)?;
    let opts = FsckOptions { force: true, ..Default::default() };
    let pass = run_pass(&ident, &opts, None);
    let blocking = |f: &&Finding| {
        matches!(
            f,
            Finding::NoRoot
                | Finding::CheckpointLost { .. }
                | Finding::Metadata { .. }
                | Finding::EngineRefuses { .. }
                | Finding::Allocation { .. }
                | Finding::DoubleUse { .. }
        )
    };
    let trustworthy = pass.engine_ok && pass.stats.data_walked && !pass.findings.iter().any(|f| blocking(&f));
    Ok(UnreferencedScan {
        pool_uuid: ident.pool,
        members: ident.members.values().map(|m| (m.index, (m.dev.clone(), m.layout().clone()))).collect(),
        trustworthy,
        problems: pass.problems().map(|f| f.to_string()).collect(),
        blocks_examined: pass.stats.blocks_examined,
        found: pass.unreferenced,
    })
}
