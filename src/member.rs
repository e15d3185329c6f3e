//! # Reading one member's on-disk structures through a [`Device`]
//!
//! Everything here goes through `&dyn Device`, so it works the same on a raw
//! disk, an image file, a directory member or a `MemDevice`, and never
//! interprets bytes itself: decoding and validation are `dfs-format`'s. This
//! is what `dfs-inspect` prints, what `mkfs` checks its work with, and what
//! mount and fsck can build on.
//!
//! - [`read_superblocks`]: both superblock copies, judged by
//!   [`dfs_format::superblock::choose_superblock`]; [`repair_superblock`]
//!   rewrites a bad copy from the good one.
//! - [`read_root_ring`]: every slot of the root ring (empty, valid, invalid).
//! - [`read_bitmap`]: every bitmap block (used count or error) and the bits.
//! - [`scan_journal`] / [`scan_journal_from`]: the journal's record chain
//!   under the replay rule of `dfs_format::journal`, and why the walk stopped.
//! - [`scan_fragments`]: a walk of the data region for fragment headers,
//!   without the metadata (what fsck and orphan GC need).
//!
//! ## Where the backup superblock is looked for
//!
//! When the primary verifies, its region table says where the backup is
//! (the last block of the member as formatted). When it does not, the block
//! size is unknown, so every block size `4096..=65536` is tried at
//! `dev.size() - bs`; a candidate counts only if it verifies, says it is the
//! backup copy, and its own table puts the backup exactly there. A member
//! whose device has since grown therefore loses its backup to this search;
//! one whose device shrank below the recorded size is [`MemberError::Truncated`].
//!
//! ## Cost
//!
//! Superblocks, root ring and bitmap are read whole (the ring is 128 blocks,
//! the bitmap 1/32768 of the member at 4 KiB blocks). The fragment scan reads
//! the data region in 1 MiB chunks and jumps over each fragment's payload
//! unless asked to verify it, so a few GiB take a few seconds.

use std::path::PathBuf;

use dfs_format::bitmap::bits_per_bitmap_block;
use dfs_format::fragment::FRAGMENT_MAGIC;
use dfs_format::journal::RecordKind;
use dfs_format::layout::RegionKind;
use dfs_format::superblock::{choose_superblock, SuperblockCopy, SUPERBLOCK_MAGIC};
use dfs_format::{
    BitmapBlockHeader, FormatError, FragmentHeader, JournalRecordHeader, Layout, RootRecord, Superblock,
    FRAGMENT_HEADER_LEN, JOURNAL_HEADER_LEN, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, SUPERBLOCK_LEN,
};

use crate::device::{AlignedBuf, Device, DeviceError};

/// Size of one read of the fragment scan and of the bitmap.
pub const SCAN_CHUNK: u64 = 1 << 20;

/// Why a member could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemberError {
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Neither superblock copy verifies: this is not (or no longer) a member.
    #[error("{}: not a DynamicFS member: {reason}", device.display())]
    NotAMember { device: PathBuf, reason: String },
    /// The superblock describes a member larger than the device.
    #[error(
        "{}: truncated: the superblock records {recorded} bytes but the device has {actual}",
        device.display()
    )]
    Truncated { device: PathBuf, recorded: u64, actual: u64 },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, MemberError>;

// ---------------------------------------------------------------- IO helpers

/// Read `len` bytes at any `offset`, by reading the covering range aligned to
/// the device's block size.
pub fn read_bytes(dev: &dyn Device, offset: u64, len: usize) -> std::result::Result<Vec<u8>, DeviceError> {
    let dbs = dev.block_size() as u64;
    let start = offset / dbs * dbs;
    let end = (offset + len as u64).div_ceil(dbs) * dbs;
    let mut buf = AlignedBuf::zeroed((end - start) as usize);
    dev.read_at(start, &mut buf)?;
    let skip = (offset - start) as usize;
    Ok(buf[skip..skip + len].to_vec())
}

/// Write `data` at any `offset`: whole aligned blocks are written directly,
/// a partial first or last device block is read, patched and written back.
pub fn write_bytes(dev: &dyn Device, offset: u64, data: &[u8]) -> std::result::Result<(), DeviceError> {
    let dbs = dev.block_size() as u64;
    let start = offset / dbs * dbs;
    let end = (offset + data.len() as u64).div_ceil(dbs) * dbs;
    let mut buf = AlignedBuf::zeroed((end - start) as usize);
    if start != offset || end != offset + data.len() as u64 {
        dev.read_at(start, &mut buf)?;
    }
    let skip = (offset - start) as usize;
    buf[skip..skip + data.len()].copy_from_slice(data);
    dev.write_at(start, &buf)
}

fn device_name(dev: &dyn Device) -> PathBuf {
    dev.identity().path.clone()
}

// ---------------------------------------------------------------- superblocks

/// What is wrong with one superblock copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyProblem {
    /// It could not be read (IO error, or it lies beyond the device's end).
    Unreadable(String),
    /// It was read but does not verify, or loses to the other copy (older
    /// `update_seq`, another identity).
    Invalid(FormatError),
}

impl std::fmt::Display for CopyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyProblem::Unreadable(s) => write!(f, "unreadable: {s}"),
            CopyProblem::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// One copy's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStatus {
    /// Byte offset of the copy (for the backup: where the winner's table
    /// puts it).
    pub offset: u64,
    /// `update_seq` of the copy when it decodes on its own.
    pub update_seq: Option<u64>,
    /// `None` when this copy is good.
    pub problem: Option<CopyProblem>,
}

/// The outcome of reading both superblock copies of a member.
#[derive(Debug, Clone)]
pub struct SuperblockChoice {
    /// The superblock to trust.
    pub superblock: Superblock,
    /// Which copy it came from.
    pub from: SuperblockCopy,
    /// The primary copy (block 0).
    pub primary: CopyStatus,
    /// The backup copy (last block).
    pub backup: CopyStatus,
}

impl SuperblockChoice {
    /// True when one copy must be rewritten from the other.
    pub fn needs_repair(&self) -> bool {
        self.primary.problem.is_some() || self.backup.problem.is_some()
    }
}

fn decode_copy(bytes: &[u8], want: SuperblockCopy) -> Option<Superblock> {
    match Superblock::decode(bytes) {
        Ok((sb, c)) if c == want => Some(sb),
        _ => None,
    }
}

fn backup_offset_of(sb: &Superblock) -> u64 {
    sb.layout.region(RegionKind::SuperblockBackup).start
}

/// Read and judge both superblock copies (see the module doc for where the
/// backup is looked for). Errors when neither verifies
/// ([`MemberError::NotAMember`]) or when the winner records a member larger
/// than the device ([`MemberError::Truncated`]).
pub fn read_superblocks(dev: &dyn Device) -> Result<SuperblockChoice> {
    let name = device_name(dev);
    let size = dev.size();
    if size < MIN_BLOCK_SIZE as u64 || size < dev.block_size() as u64 {
        return Err(MemberError::NotAMember {
            device: name,
            reason: format!("the device is {size} bytes, smaller than one block"),
        });
    }
    let primary_read = read_bytes(dev, 0, SUPERBLOCK_LEN);
    let primary_sb = primary_read.as_ref().ok().and_then(|b| decode_copy(b, SuperblockCopy::Primary));

    // Where to look for the backup.
    let candidates: Vec<u64> = match &primary_sb {
        Some(sb) => vec![backup_offset_of(sb)],
        None => {
            let mut v = Vec::new();
            let mut bs = MIN_BLOCK_SIZE.max(dev.block_size());
            while bs <= MAX_BLOCK_SIZE {
                if bs as u64 <= size {
                    v.push(size - bs as u64);
                }
                bs *= 2;
            }
            v
        }
    };
    let mut backup_bytes: Option<Vec<u8>> = None;
    let mut backup_offset: Option<u64> = None;
    let mut backup_read_error: Option<String> = None;
    for &off in &candidates {
        if off + SUPERBLOCK_LEN as u64 > size {
            backup_read_error = Some(format!("offset {off} is beyond the end of the device ({size} bytes)"));
            continue;
        }
        match read_bytes(dev, off, SUPERBLOCK_LEN) {
            Ok(b) => {
                let fits = decode_copy(&b, SuperblockCopy::Backup).is_some_and(|sb| backup_offset_of(&sb) == off);
                if fits || primary_sb.is_some() {
                    backup_offset = Some(off);
                    backup_bytes = Some(b);
                    break;
                }
                // Keep the first candidate bearing our magic for the error text.
                if backup_bytes.is_none() && b[..8] == SUPERBLOCK_MAGIC {
                    backup_bytes = Some(b);
                    backup_offset = Some(off);
                }
            }
            Err(e) => backup_read_error = Some(e.to_string()),
        }
    }
    let backup_found = backup_bytes
        .as_deref()
        .and_then(|b| decode_copy(b, SuperblockCopy::Backup))
        .filter(|sb| primary_sb.is_some() || Some(backup_offset_of(sb)) == backup_offset);

    if primary_sb.is_none() && backup_found.is_none() {
        let no_magic = |b: Option<&[u8]>| b.is_none_or(|b| b[..8] != SUPERBLOCK_MAGIC);
        let reason = if no_magic(primary_read.as_deref().ok()) && no_magic(backup_bytes.as_deref()) {
            "no DynamicFS superblock in block 0 or in the last block".to_string()
        } else {
            let p = match &primary_read {
                Ok(b) => match Superblock::decode(b) {
                    Err(e) => e.to_string(),
                    Ok(_) => "block 0 holds a backup copy".to_string(),
                },
                Err(e) => format!("unreadable: {e}"),
            };
            let b = match &backup_bytes {
                Some(b) => match Superblock::decode(b) {
                    Err(e) => e.to_string(),
                    Ok(_) => "the last block holds a primary copy or an inconsistent table".into(),
                },
                None => backup_read_error.clone().unwrap_or_else(|| "not found".into()),
            };
            format!("primary superblock: {p}; backup superblock: {b}")
        };
        return Err(MemberError::NotAMember { device: name, reason });
    }

    let primary_bytes: &[u8] = primary_read.as_deref().unwrap_or(&[]);
    let backup_arg = if primary_sb.is_some() || backup_found.is_some() { backup_bytes.as_deref() } else { None };
    let choice = choose_superblock(primary_bytes, backup_arg)
        .map_err(|e| MemberError::NotAMember { device: name.clone(), reason: e.to_string() })?;
    let primary_problem = choice.primary_error.map(|e| match &primary_read {
        Err(io) => CopyProblem::Unreadable(io.to_string()),
        Ok(_) => CopyProblem::Invalid(e),
    });
    let backup_problem = choice.backup_error.map(|e| match (&backup_arg, &backup_read_error) {
        (None, Some(io)) => CopyProblem::Unreadable(io.clone()),
        (None, None) => CopyProblem::Unreadable("not found".into()),
        _ => CopyProblem::Invalid(e),
    });
    let sb = choice.superblock;
    let out = SuperblockChoice {
        primary: CopyStatus {
            offset: 0,
            update_seq: primary_sb.as_ref().map(|s| s.update_seq),
            problem: primary_problem,
        },
        backup: CopyStatus {
            offset: backup_offset_of(&sb),
            update_seq: backup_found.as_ref().map(|s| s.update_seq),
            problem: backup_problem,
        },
        from: choice.from,
        superblock: sb,
    };
    if out.superblock.layout.size > size {
        return Err(MemberError::Truncated { device: name, recorded: out.superblock.layout.size, actual: size });
    }
    Ok(out)
}

/// What [`repair_superblock`] rewrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RepairOutcome {
    pub rewrote_primary: bool,
    pub rewrote_backup: bool,
}

/// Encode `sb` as `copy` into one zero-padded block of the member's block size.
pub fn superblock_block(sb: &Superblock, copy: SuperblockCopy) -> AlignedBuf {
    AlignedBuf::from_slice_padded(&sb.encode(copy), sb.layout.block_size as usize)
}

/// Rewrite whichever copy `choice` found bad from the winning one (same
/// `update_seq`, so the two agree again), then sync. Does nothing when both
/// are good.
pub fn repair_superblock(dev: &dyn Device, choice: &SuperblockChoice) -> Result<RepairOutcome> {
    let sb = &choice.superblock;
    let mut out = RepairOutcome::default();
    if choice.primary.problem.is_some() {
        write_bytes(dev, 0, &superblock_block(sb, SuperblockCopy::Primary))?;
        out.rewrote_primary = true;
    }
    if choice.backup.problem.is_some() {
        write_bytes(dev, backup_offset_of(sb), &superblock_block(sb, SuperblockCopy::Backup))?;
        out.rewrote_backup = true;
    }
    if out.rewrote_primary || out.rewrote_backup {
        dev.sync()?;
    }
    Ok(out)
}

// ---------------------------------------------------------------- root ring

/// The content of one root-ring slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSlotState {
    /// All zero: never written.
    Empty,
    /// A record that verifies.
    Valid(RootRecord),
    /// Something that does not verify (a torn write, or garbage).
    Invalid(FormatError),
}

/// One slot of the root ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootSlot {
    pub slot: u64,
    /// Byte offset of the slot on the member.
    pub offset: u64,
    pub state: RootSlotState,
}

/// Read every slot of the root ring.
pub fn read_root_ring(dev: &dyn Device, layout: &Layout) -> Result<Vec<RootSlot>> {
    let ring = layout.region(RegionKind::RootRing);
    let bs = layout.block_size as usize;
    let bytes = read_bytes(dev, ring.start, ring.len as usize)?;
    Ok(bytes
        .chunks_exact(bs)
        .enumerate()
        .map(|(i, blk)| {
            let state = if blk.iter().all(|&b| b == 0) {
                RootSlotState::Empty
            } else {
                match RootRecord::decode(blk) {
                    Ok(r) => RootSlotState::Valid(r),
                    Err(e) => RootSlotState::Invalid(e),
                }
            };
            RootSlot { slot: i as u64, offset: layout.root_slot_offset(i as u64), state }
        })
        .collect())
}

/// The valid slot of `pool` with the highest generation.
pub fn best_root(slots: &[RootSlot], pool: uuid::Uuid) -> Option<(u64, &RootRecord)> {
    slots
        .iter()
        .filter_map(|s| match &s.state {
            RootSlotState::Valid(r) if r.pool_uuid == pool => Some((s.slot, r)),
            _ => None,
        })
        .max_by_key(|(_, r)| r.generation)
}

// ---------------------------------------------------------------- bitmap

/// One block of the bitmap region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapBlockInfo {
    /// Index of the block within the bitmap region.
    pub index: u64,
    /// Byte offset on the member.
    pub offset: u64,
    /// First data block it covers.
    pub first_data_block: u64,
    /// Data blocks it covers (the last block covers fewer).
    pub covers: u64,
    /// The header, or why the block was refused (checksum, magic, another
    /// pool, wrong index, ...).
    pub result: std::result::Result<BitmapBlockHeader, FormatError>,
    /// Bits set past the end of the data region (must be 0).
    pub stray_bits: u64,
}

/// The whole bitmap as read.
#[derive(Debug, Clone)]
pub struct BitmapScan {
    /// Data blocks of the member.
    pub data_blocks: u64,
    /// Bitmap blocks, in order.
    pub blocks: Vec<BitmapBlockInfo>,
    bits: Vec<u8>,
    per_block: u64,
}

impl BitmapScan {
    /// Data blocks marked used by the blocks that verified.
    pub fn used(&self) -> u64 {
        self.blocks.iter().filter_map(|b| b.result.as_ref().ok()).map(|h| h.used_bits).sum()
    }

    /// Bitmap blocks that did not verify.
    pub fn bad_blocks(&self) -> usize {
        self.blocks.iter().filter(|b| b.result.is_err()).count()
    }

    /// Whether data block `block` is marked used; `None` when its bitmap
    /// block did not verify or the block is outside the data region.
    pub fn is_used(&self, block: u64) -> Option<bool> {
        if block >= self.data_blocks {
            return None;
        }
        let info = self.blocks.get((block / self.per_block) as usize)?;
        info.result.as_ref().ok()?;
        Some(self.bits[(block / 8) as usize] & (1 << (block % 8)) != 0)
    }
}

/// Read every bitmap block, verify it (checksum, `pool`, index) and collect
/// the bits of the blocks that verify.
pub fn read_bitmap(dev: &dyn Device, layout: &Layout, pool: uuid::Uuid) -> Result<BitmapScan> {
    let region = layout.region(RegionKind::Bitmap);
    let bs = layout.block_size as u64;
    let per_block = bits_per_bitmap_block(layout.block_size);
    let data_blocks = layout.data_blocks();
    let nblocks = region.len / bs;
    let mut bits = vec![0u8; data_blocks.div_ceil(8) as usize];
    let mut blocks = Vec::with_capacity(nblocks as usize);
    let chunk_blocks = (SCAN_CHUNK / bs).max(1);
    let mut i = 0u64;
    while i < nblocks {
        let n = chunk_blocks.min(nblocks - i);
        let chunk = read_bytes(dev, region.start + i * bs, (n * bs) as usize)?;
        for (j, blk) in chunk.chunks_exact(bs as usize).enumerate() {
            let index = i + j as u64;
            let first = index * per_block;
            let covers = per_block.min(data_blocks.saturating_sub(first));
            let mut stray = 0;
            let result = BitmapBlockHeader::decode_block(blk, layout.block_size).and_then(|(h, b)| {
                if h.pool_uuid != pool {
                    return Err(FormatError::Invalid {
                        what: "bitmap block",
                        field: "pool_uuid",
                        reason: format!("{} (the member is in pool {pool})", h.pool_uuid),
                    });
                }
                if h.index != index {
                    return Err(FormatError::Invalid {
                        what: "bitmap block",
                        field: "index",
                        reason: format!("{} stored at position {index}", h.index),
                    });
                }
                for (byte_i, &byte) in b.iter().enumerate() {
                    if byte == 0 {
                        continue;
                    }
                    for bit_i in 0..8 {
                        if byte & (1 << bit_i) == 0 {
                            continue;
                        }
                        let bit = byte_i as u64 * 8 + bit_i;
                        if bit < covers {
                            let d = first + bit;
                            bits[(d / 8) as usize] |= 1 << (d % 8);
                        } else {
                            stray += 1;
                        }
                    }
                }
                Ok(h)
            });
            blocks.push(BitmapBlockInfo {
                index,
                offset: region.start + index * bs,
                first_data_block: first,
                covers,
                result,
                stray_bits: stray,
            });
        }
        i += n;
    }
    Ok(BitmapScan { data_blocks, blocks, bits, per_block })
}

// ---------------------------------------------------------------- journal

/// Where a journal walk starts, and the journal's geometry. The journal is
/// replicated; its logical length and record block size are the pool's (in
/// every root record: the smallest journal region and the largest block
/// size of the members), not necessarily this member's region length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalStart {
    /// Byte offset inside the journal of the first record.
    pub offset: u64,
    /// Sequence number expected there; `None` = take the first record's.
    pub seq: Option<u64>,
    /// Logical journal length in bytes.
    pub len: u64,
    /// Record alignment in bytes.
    pub block_size: u32,
}

impl JournalStart {
    /// The replay position and geometry a root record gives.
    pub fn from_root(root: &RootRecord) -> JournalStart {
        JournalStart {
            offset: root.journal_offset,
            seq: Some(root.journal_seq),
            len: root.journal_len,
            block_size: root.journal_block_size,
        }
    }

    /// Offset 0, any sequence number, this member's own region and block
    /// size (when no root is at hand).
    pub fn from_layout(layout: &Layout) -> JournalStart {
        JournalStart {
            offset: 0,
            seq: None,
            len: layout.region(RegionKind::Journal).len,
            block_size: layout.block_size,
        }
    }
}

/// One record header the walk accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// Byte offset inside the journal.
    pub offset: u64,
    pub header: JournalRecordHeader,
}

/// Why the walk stopped: where replay would stop. A torn or stale tail
/// ([`JournalStop::Empty`], [`JournalStop::BadHeader`], [`JournalStop::Seq`],
/// [`JournalStop::Chain`], [`JournalStop::BadPayload`]) is normal after a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalStop {
    /// An all-zero block: nothing was ever written here.
    Empty { offset: u64 },
    /// The block does not hold a valid record header.
    BadHeader { offset: u64, error: FormatError },
    /// The record belongs to another pool.
    ForeignPool { offset: u64, found: uuid::Uuid },
    /// The record's sequence number is not the next one.
    Seq { offset: u64, expected: u64, found: u64 },
    /// `prev_crc32` does not chain to the previous header (a stale record).
    Chain { offset: u64, expected: u32, found: u32 },
    /// The record would run past the end of the journal.
    Overrun { offset: u64, blocks: u32 },
    /// The payload checksum fails (a torn write).
    BadPayload { offset: u64, error: FormatError },
    /// The walk covered the whole journal length (it is full).
    Full { offset: u64 },
    /// This member's journal region is shorter than the journal, or the
    /// geometry is unusable: it holds no copy.
    NoCopy { reason: String },
}

impl std::fmt::Display for JournalStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalStop::Empty { offset } => write!(f, "empty block at offset {offset} (clean end)"),
            JournalStop::BadHeader { offset, error } => write!(f, "no valid record at offset {offset}: {error}"),
            JournalStop::ForeignPool { offset, found } => {
                write!(f, "record at offset {offset} belongs to pool {found}")
            }
            JournalStop::Seq { offset, expected, found } => {
                write!(f, "record at offset {offset} has seq {found}, expected {expected}")
            }
            JournalStop::Chain { offset, expected, found } => {
                write!(f, "record at offset {offset} chains to {found:#010x}, expected {expected:#010x} (stale record)")
            }
            JournalStop::Overrun { offset, blocks } => {
                write!(f, "record at offset {offset} ({blocks} blocks) runs past the end of the journal")
            }
            JournalStop::BadPayload { offset, error } => write!(f, "record at offset {offset}: {error}"),
            JournalStop::Full { offset } => write!(f, "the walk covered the whole journal (full) at offset {offset}"),
            JournalStop::NoCopy { reason } => write!(f, "no journal copy on this member: {reason}"),
        }
    }
}

/// The result of a journal walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalScan {
    pub start: JournalStart,
    /// Records accepted, in replay order (wrap records included).
    pub records: Vec<JournalEntry>,
    pub stop: JournalStop,
}

/// Walk this member's journal region from offset 0 with no expected
/// sequence number (the first record found sets it). See [`scan_journal_from`].
pub fn scan_journal(dev: &dyn Device, layout: &Layout, pool: uuid::Uuid) -> Result<JournalScan> {
    scan_journal_from(dev, layout, pool, JournalStart::from_layout(layout))
}

/// Walk the journal copy on this member from `start` as replay does
/// (`dfs_format::journal`, and the engine's journal replay): each record must
/// verify (header and payload checksums), belong to `pool`, carry the next
/// `seq` and, after the first, chain its `prev_crc32` to the previous
/// header; a `Wrap` record, or reaching the end exactly, continues at
/// offset 0; the walk ends after covering the whole length. Returns every
/// accepted header and the reason the walk stopped. IO errors are errors.
pub fn scan_journal_from(
    dev: &dyn Device,
    layout: &Layout,
    pool: uuid::Uuid,
    start: JournalStart,
) -> Result<JournalScan> {
    let region = layout.region(RegionKind::Journal);
    let mut records = Vec::new();
    let jbs = start.block_size;
    if !dfs_format::valid_block_size(jbs) || start.len == 0 || !start.len.is_multiple_of(jbs as u64) {
        let reason = format!("journal length {} with block size {jbs} is not usable", start.len);
        return Ok(JournalScan { start, records, stop: JournalStop::NoCopy { reason } });
    }
    if start.len > region.len {
        let reason = format!("region of {} bytes, journal of {}", region.len, start.len);
        return Ok(JournalScan { start, records, stop: JournalStop::NoCopy { reason } });
    }
    let bs = jbs as u64;
    let len = start.len;
    let mut offset = start.offset / bs * bs % len;
    let mut expected_seq = start.seq;
    let mut prev_crc: Option<u32> = None;
    let mut travelled = 0u64;
    let stop = loop {
        if travelled >= len {
            break JournalStop::Full { offset };
        }
        let block = read_bytes(dev, region.start + offset, bs as usize)?;
        if block.iter().all(|&b| b == 0) {
            break JournalStop::Empty { offset };
        }
        let h = match JournalRecordHeader::decode(&block, jbs) {
            Ok(h) => h,
            Err(error) => break JournalStop::BadHeader { offset, error },
        };
        if h.pool_uuid != pool {
            break JournalStop::ForeignPool { offset, found: h.pool_uuid };
        }
        if let Some(expected) = expected_seq {
            if h.seq != expected {
                break JournalStop::Seq { offset, expected, found: h.seq };
            }
        }
        if let Some(expected) = prev_crc {
            if h.prev_crc32 != expected {
                break JournalStop::Chain { offset, expected, found: h.prev_crc32 };
            }
        }
        let rec_len = h.block_count as u64 * bs;
        if offset + rec_len > len {
            break JournalStop::Overrun { offset, blocks: h.block_count };
        }
        if h.kind == RecordKind::Transaction {
            let payload = if rec_len == bs {
                block[JOURNAL_HEADER_LEN..JOURNAL_HEADER_LEN + h.payload_len as usize].to_vec()
            } else {
                read_bytes(dev, region.start + offset + JOURNAL_HEADER_LEN as u64, h.payload_len as usize)?
            };
            if let Err(error) = h.verify_payload(&payload) {
                break JournalStop::BadPayload { offset, error };
            }
        }
        expected_seq = Some(h.seq + 1);
        prev_crc = Some(h.header_crc32);
        let kind = h.kind;
        records.push(JournalEntry { offset, header: h });
        if kind == RecordKind::Wrap {
            travelled += len - offset;
            offset = 0;
        } else {
            travelled += rec_len;
            offset = (offset + rec_len) % len;
        }
    };
    Ok(JournalScan { start, records, stop })
}

// ---------------------------------------------------------------- fragments

/// Options of [`scan_fragments`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FragmentScanOptions {
    /// Read every payload and check its BLAKE3 (slower: reads everything).
    pub verify_payload: bool,
}

/// A fragment header found in the data region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFragment {
    /// Data block of the header.
    pub block: u64,
    /// Byte offset of the header on the member.
    pub offset: u64,
    pub header: FragmentHeader,
    /// Blocks of payload after the header block.
    pub payload_blocks: u64,
    /// The payload runs past the end of the data region.
    pub truncated: bool,
    /// Blocks of the fragment (header + payload) the bitmap marks free;
    /// `None` when no bitmap was given or it could not say.
    pub free_in_bitmap: Option<u64>,
    /// BLAKE3 of the payload matches (only when asked to verify).
    pub payload_ok: Option<bool>,
}

/// A block that starts with the fragment magic but does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFragmentHeader {
    pub block: u64,
    pub offset: u64,
    pub error: FormatError,
}

/// A range of the data region that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableRange {
    pub block: u64,
    pub blocks: u64,
    pub error: String,
}

/// The result of a fragment scan.
#[derive(Debug, Clone, Default)]
pub struct FragmentScan {
    /// Data blocks of the member.
    pub data_blocks: u64,
    /// Blocks whose first bytes were examined.
    pub blocks_examined: u64,
    pub fragments: Vec<FoundFragment>,
    pub bad_headers: Vec<BadFragmentHeader>,
    pub unreadable: Vec<UnreadableRange>,
}

/// Walk the data region block by block in 1 MiB reads. Where a block
/// decodes as a [`FragmentHeader`] it is reported and its payload is jumped
/// over (read and hashed only with `verify_payload`). With a bitmap, each
/// fragment says how many of its blocks the bitmap marks free (an orphan or
/// a torn write, for fsck and GC to judge with the metadata). A range that
/// cannot be read is reported and skipped.
pub fn scan_fragments(
    dev: &dyn Device,
    layout: &Layout,
    bitmap: Option<&BitmapScan>,
    opts: FragmentScanOptions,
) -> Result<FragmentScan> {
    let data = layout.region(RegionKind::Data);
    let bs = layout.block_size as u64;
    let total = layout.data_blocks();
    let chunk_blocks = (SCAN_CHUNK / bs).max(1);
    let mut out = FragmentScan { data_blocks: total, ..Default::default() };
    let mut b = 0u64;
    while b < total {
        let n = chunk_blocks.min(total - b);
        let chunk = match read_bytes(dev, data.start + b * bs, (n * bs) as usize) {
            Ok(c) => c,
            Err(e) => {
                out.unreadable.push(UnreadableRange { block: b, blocks: n, error: e.to_string() });
                b += n;
                continue;
            }
        };
        let mut next = b + n;
        let mut i = 0u64;
        while i < n {
            let blk = &chunk[(i * bs) as usize..((i + 1) * bs) as usize];
            out.blocks_examined += 1;
            let block = b + i;
            if blk[..8] != FRAGMENT_MAGIC {
                i += 1;
                continue;
            }
            let offset = data.start + block * bs;
            let header = match FragmentHeader::decode(&blk[..FRAGMENT_HEADER_LEN]) {
                Ok(h) => h,
                Err(error) => {
                    out.bad_headers.push(BadFragmentHeader { block, offset, error });
                    i += 1;
                    continue;
                }
            };
            let payload_blocks = (header.payload_len as u64).div_ceil(bs);
            let end = block + 1 + payload_blocks;
            let truncated = end > total;
            let free_in_bitmap = bitmap.and_then(|bm| {
                (block..end.min(total)).map(|d| bm.is_used(d).map(|u| u64::from(!u))).sum::<Option<u64>>()
            });
            let payload_ok = if opts.verify_payload && !truncated {
                match read_bytes(dev, offset + bs, header.payload_len as usize) {
                    Ok(p) => Some(*blake3::hash(&p).as_bytes() == header.payload_blake3),
                    Err(_) => Some(false),
                }
            } else {
                None
            };
            out.fragments.push(FoundFragment {
                block,
                offset,
                header,
                payload_blocks,
                truncated,
                free_in_bitmap,
                payload_ok,
            });
            if end >= b + n {
                next = end.min(total);
                break;
            }
            i = end - b;
        }
        b = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use dfs_format::fragment::FragmentKind;
    use dfs_format::Policy;

    const SIZE: u64 = 64 << 20;
    const BS: u32 = 4096;

    fn superblock(layout: Layout) -> Superblock {
        Superblock {
            compat: 0,
            ro_compat: 0,
            incompat: 0,
            pool_uuid: uuid::Uuid::new_v4(),
            member_uuid: uuid::Uuid::new_v4(),
            member_index: 0,
            layout,
            created_ns: 1,
            update_seq: 1,
            default_policy: Policy::Replication { copies: 1 },
            label: "t".into(),
        }
    }

    fn member() -> (MemDevice, Superblock) {
        let dev = MemDevice::named("mem0", SIZE, BS);
        let sb = superblock(Layout::compute(SIZE, BS).unwrap());
        dev.write_at(0, &superblock_block(&sb, SuperblockCopy::Primary)).unwrap();
        dev.write_at(backup_offset_of(&sb), &superblock_block(&sb, SuperblockCopy::Backup)).unwrap();
        (dev, sb)
    }

    #[test]
    fn superblocks_both_good() {
        let (dev, sb) = member();
        let c = read_superblocks(&dev).unwrap();
        assert_eq!(c.superblock, sb);
        assert_eq!(c.from, SuperblockCopy::Primary);
        assert!(!c.needs_repair());
        assert_eq!(c.backup.offset, SIZE - BS as u64);
        assert_eq!((c.primary.update_seq, c.backup.update_seq), (Some(1), Some(1)));
    }

    #[test]
    fn primary_lost_backup_found_and_repaired() {
        let (dev, sb) = member();
        dev.write_at(0, &AlignedBuf::zeroed(BS as usize)).unwrap();
        let c = read_superblocks(&dev).unwrap();
        assert_eq!(c.from, SuperblockCopy::Backup);
        assert_eq!(c.superblock, sb);
        assert!(matches!(c.primary.problem, Some(CopyProblem::Invalid(FormatError::BadMagic { .. }))));
        let r = repair_superblock(&dev, &c).unwrap();
        assert_eq!(r, RepairOutcome { rewrote_primary: true, rewrote_backup: false });
        let c = read_superblocks(&dev).unwrap();
        assert!(!c.needs_repair());
        assert_eq!(repair_superblock(&dev, &c).unwrap(), RepairOutcome::default());
    }

    #[test]
    fn backup_corrupt_is_reported_and_repaired() {
        let (dev, _) = member();
        let off = SIZE - BS as u64;
        let mut blk = AlignedBuf::zeroed(BS as usize);
        dev.read_at(off, &mut blk).unwrap();
        blk[100] ^= 0xff;
        dev.write_at(off, &blk).unwrap();
        let c = read_superblocks(&dev).unwrap();
        assert_eq!(c.from, SuperblockCopy::Primary);
        assert!(matches!(c.backup.problem, Some(CopyProblem::Invalid(FormatError::BadChecksum { .. }))));
        assert!(repair_superblock(&dev, &c).unwrap().rewrote_backup);
        assert!(!read_superblocks(&dev).unwrap().needs_repair());
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        let dev = MemDevice::named("blank", SIZE, BS);
        let e = read_superblocks(&dev).unwrap_err();
        assert!(matches!(e, MemberError::NotAMember { .. }), "{e}");
        assert!(e.to_string().contains("no DynamicFS superblock"), "{e}");

        // A member image cut short: the primary verifies, the backup is gone.
        let (full, _) = member();
        let img = full.snapshot();
        let short = MemDevice::from_image(&img[..(SIZE / 2) as usize], BS);
        let e = read_superblocks(&short).unwrap_err();
        assert!(matches!(e, MemberError::Truncated { recorded: SIZE, .. }), "{e}");

        // A damaged primary and no backup: both errors are named.
        let mut img = img;
        img[200] ^= 1;
        let lone = MemDevice::from_image(&img[..(SIZE / 2) as usize], BS);
        let e = read_superblocks(&lone).unwrap_err().to_string();
        assert!(e.contains("primary superblock: superblock: checksum mismatch"), "{e}");
    }

    fn root(sb: &Superblock, generation: u64) -> RootRecord {
        RootRecord {
            pool_uuid: sb.pool_uuid,
            generation,
            timestamp_ns: 1,
            journal_seq: 1,
            journal_offset: 0,
            member_count: 1,
            journal_len: sb.layout.region(RegionKind::Journal).len,
            journal_block_size: BS,
            checkpoint: None,
        }
    }

    #[test]
    fn root_ring_and_bitmap() {
        let (dev, sb) = member();
        let l = &sb.layout;
        let r = root(&sb, 7);
        dev.write_at(l.root_slot_offset(3), &AlignedBuf::from_slice_padded(&r.encode(), BS as usize)).unwrap();
        let mut torn = AlignedBuf::from_slice_padded(&r.encode(), BS as usize);
        torn[40] ^= 1;
        dev.write_at(l.root_slot_offset(4), &torn).unwrap();
        let ring = read_root_ring(&dev, l).unwrap();
        assert_eq!(ring.len(), 128);
        assert_eq!(ring[0].state, RootSlotState::Empty);
        assert_eq!(ring[3].state, RootSlotState::Valid(r.clone()));
        assert!(matches!(ring[4].state, RootSlotState::Invalid(FormatError::BadChecksum { .. })));
        assert_eq!(best_root(&ring, sb.pool_uuid).map(|(s, _)| s), Some(3));
        assert!(best_root(&ring, uuid::Uuid::new_v4()).is_none());

        // Bitmap: block 0 marks data blocks 0..10 used; the others are zero.
        let bm = l.region(RegionKind::Bitmap);
        let mut bits = vec![0u8; BS as usize - 64];
        bits[0] = 0xff;
        bits[1] = 0x03;
        let h = BitmapBlockHeader { pool_uuid: sb.pool_uuid, index: 0, generation: 0, used_bits: 0 };
        let blk = h.encode_block(BS, &bits).unwrap();
        dev.write_at(bm.start, &AlignedBuf::from_slice_padded(&blk, BS as usize)).unwrap();
        let scan = read_bitmap(&dev, l, sb.pool_uuid).unwrap();
        assert_eq!(scan.blocks.len() as u64, bm.len / BS as u64);
        assert_eq!(scan.used(), 10);
        assert_eq!(scan.is_used(9), Some(true));
        assert_eq!(scan.is_used(10), Some(false));
        assert_eq!(scan.is_used(l.data_blocks()), None);
        // Another pool's bitmap block is refused.
        let scan = read_bitmap(&dev, l, uuid::Uuid::new_v4()).unwrap();
        assert_eq!(scan.bad_blocks(), scan.blocks.len());
        assert_eq!(scan.is_used(0), None);
    }

    fn put_record(dev: &MemDevice, l: &Layout, off: u64, h: &JournalRecordHeader, payload: &[u8]) {
        let mut bytes = h.encode().to_vec();
        bytes.extend_from_slice(payload);
        let start = l.region(RegionKind::Journal).start + off;
        dev.write_at(start, &AlignedBuf::from_slice_padded(&bytes, BS as usize)).unwrap();
    }

    #[test]
    fn journal_walk_and_stop_reasons() {
        let (dev, sb) = member();
        let l = &sb.layout;
        let pool = sb.pool_uuid;
        assert_eq!(scan_journal(&dev, l, pool).unwrap().stop, JournalStop::Empty { offset: 0 });

        let p1 = vec![1u8; 100];
        let h1 = JournalRecordHeader::new(RecordKind::Transaction, 1, 1, pool, &p1, 0, 0, BS);
        put_record(&dev, l, 0, &h1, &p1);
        let p2 = vec![2u8; 5000];
        let h2 = JournalRecordHeader::new(RecordKind::Transaction, 1, 2, pool, &p2, h1.header_crc32, 0, BS);
        put_record(&dev, l, 4096, &h2, &p2);
        assert_eq!(h2.block_count, 2);
        // A stale record from an earlier lap: right seq, wrong chain.
        let p3 = vec![3u8; 10];
        let h3 = JournalRecordHeader::new(RecordKind::Transaction, 1, 3, pool, &p3, 0xdead, 0, BS);
        put_record(&dev, l, 3 * 4096, &h3, &p3);
        let scan = scan_journal(&dev, l, pool).unwrap();
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.records[1].offset, 4096);
        assert!(matches!(scan.stop, JournalStop::Chain { offset: 12288, .. }), "{}", scan.stop);

        // A wrap record at seq 3: from offset 0 it covers the whole journal
        // (full); from record 2 it sends the walk back to 0, where seq 1 is
        // not the expected 4.
        let w = JournalRecordHeader::new(RecordKind::Wrap, 1, 3, pool, &[], h2.header_crc32, 0, BS);
        put_record(&dev, l, 3 * 4096, &w, &[]);
        let scan = scan_journal(&dev, l, pool).unwrap();
        assert_eq!(scan.records.len(), 3);
        assert_eq!(scan.stop, JournalStop::Full { offset: 0 });
        let start = JournalStart { offset: 4096, seq: Some(2), ..JournalStart::from_layout(l) };
        let scan = scan_journal_from(&dev, l, pool, start).unwrap();
        assert_eq!(scan.records.len(), 2);
        assert_eq!(scan.stop, JournalStop::Seq { offset: 0, expected: 4, found: 1 });

        // From a root's position: seq 1 expected at offset 0.
        let scan = scan_journal_from(&dev, l, pool, JournalStart::from_root(&root(&sb, 1))).unwrap();
        assert_eq!(scan.records.len(), 3);

        // Torn payload of record 2.
        let mut bytes = h2.encode().to_vec();
        bytes.extend_from_slice(&[9u8; 5000]);
        let start = l.region(RegionKind::Journal).start + 4096;
        dev.write_at(start, &AlignedBuf::from_slice_padded(&bytes, BS as usize)).unwrap();
        let scan = scan_journal(&dev, l, pool).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert!(matches!(scan.stop, JournalStop::BadPayload { offset: 4096, .. }));

        // Starting from a position that expects another seq.
        let start = JournalStart { seq: Some(5), ..JournalStart::from_layout(l) };
        let scan = scan_journal_from(&dev, l, pool, start).unwrap();
        assert_eq!(scan.stop, JournalStop::Seq { offset: 0, expected: 5, found: 1 });
        // Another pool.
        let scan = scan_journal(&dev, l, uuid::Uuid::new_v4()).unwrap();
        assert!(matches!(scan.stop, JournalStop::ForeignPool { offset: 0, .. }));
        // A journal longer than this member's region: no copy here.
        let start = JournalStart { len: 1 << 30, ..JournalStart::from_layout(l) };
        assert!(matches!(scan_journal_from(&dev, l, pool, start).unwrap().stop, JournalStop::NoCopy { .. }));
    }

    fn fragment(pool: uuid::Uuid, payload: &[u8]) -> FragmentHeader {
        FragmentHeader {
            kind: FragmentKind::Extent,
            pool_uuid: pool,
            extent_uuid: uuid::Uuid::new_v4(),
            fragment_index: 0,
            fragment_count: 1,
            policy: Policy::Replication { copies: 1 },
            payload_len: payload.len() as u32,
            extent_len: payload.len() as u32,
            generation: 1,
            created_ns: 1,
            payload_blake3: *blake3::hash(payload).as_bytes(),
            extent_blake3: *blake3::hash(payload).as_bytes(),
        }
    }

    #[test]
    fn fragment_scan_finds_headers_and_skips_payloads() {
        let (dev, sb) = member();
        let l = &sb.layout;
        let pool = sb.pool_uuid;
        // A small fragment, one that crosses a 1 MiB read boundary, one whose
        // payload contains a fake header (must be jumped over), one with a
        // bad payload; then a bad header.
        let mut starts = Vec::new();
        for (block, len) in [(10u64, 9000usize), (254, 5 * 4096), (400, 3 * 4096), (600, 4096)] {
            let mut payload: Vec<u8> = (0..len).map(|i| (i * 7 + block as usize) as u8).collect();
            if block == 400 {
                payload[4096..4096 + 256].copy_from_slice(&fragment(pool, b"inner").encode());
            }
            let h = fragment(pool, &payload);
            let mut bytes = AlignedBuf::from_slice_padded(&h.encode(), BS as usize).to_vec();
            bytes.extend_from_slice(&payload);
            if block == 600 {
                let n = bytes.len();
                bytes[n - 1] ^= 1;
            }
            dev.write_at(l.data_offset(block), &AlignedBuf::from_slice_padded(&bytes, BS as usize)).unwrap();
            starts.push(block);
        }
        let mut bad = AlignedBuf::from_slice_padded(&fragment(pool, b"x").encode(), BS as usize);
        bad[60] ^= 1;
        dev.write_at(l.data_offset(800), &bad).unwrap();

        // No valid bitmap yet: the scan can not judge allocation.
        let bm = read_bitmap(&dev, l, pool).unwrap();
        let scan = scan_fragments(&dev, l, Some(&bm), FragmentScanOptions { verify_payload: true }).unwrap();
        let blocks: Vec<u64> = scan.fragments.iter().map(|f| f.block).collect();
        assert_eq!(blocks, starts);
        assert_eq!(scan.fragments[0].payload_blocks, 3);
        let oks: Vec<_> = scan.fragments.iter().map(|f| f.payload_ok).collect();
        assert_eq!(oks, vec![Some(true), Some(true), Some(true), Some(false)]);
        assert!(scan.fragments.iter().all(|f| f.free_in_bitmap.is_none()));
        assert_eq!(scan.bad_headers.len(), 1);
        assert_eq!(scan.bad_headers[0].block, 800);
        assert!(scan.unreadable.is_empty());
        assert!(scan.blocks_examined < l.data_blocks());

        // With a valid all-free bitmap, every block of each fragment is free.
        let free = vec![0u8; BS as usize - 64];
        for b in &bm.blocks {
            let h = BitmapBlockHeader { pool_uuid: pool, index: b.index, generation: 0, used_bits: 0 };
            let blk = h.encode_block(BS, &free).unwrap();
            dev.write_at(b.offset, &AlignedBuf::from_slice_padded(&blk, BS as usize)).unwrap();
        }
        let bm = read_bitmap(&dev, l, pool).unwrap();
        assert_eq!(bm.bad_blocks(), 0);
        let scan = scan_fragments(&dev, l, Some(&bm), FragmentScanOptions::default()).unwrap();
        assert_eq!(scan.fragments[0].free_in_bitmap, Some(4));
        assert!(scan.fragments.iter().all(|f| f.payload_ok.is_none()));
    }

    #[test]
    fn unaligned_byte_io() {
        let dev = MemDevice::new(1 << 20, BS);
        write_bytes(&dev, 5000, b"hello").unwrap();
        assert_eq!(read_bytes(&dev, 5000, 5).unwrap(), b"hello");
        assert_eq!(read_bytes(&dev, 4999, 7).unwrap(), b"\0hello\0");
    }
}
