//! Where each region of a raw member lives, and how mkfs chooses it.
//!
//! ```text
//! 0            bs            1 MiB                                        size-bs   size
//! | superblock | root ring … | journal … | bitmap … |(pad)| data …        | backup sb |
//! ```
//! The superblock records every region; readers use the recorded table, never
//! this computation (so a later mkfs may lay members out differently).
//! Regions are block-aligned and do not overlap; the journal and data start on
//! a 1 MiB boundary so large IO stays aligned for any device.

use crate::error::{FormatError, Result};
use crate::{bitmap::bits_per_bitmap_block, valid_block_size};

/// Number of slots in a member's root ring (one block each).
pub const ROOT_SLOTS: u64 = 128;
/// Smallest member mkfs accepts (bytes).
pub const MIN_MEMBER_SIZE: u64 = 32 << 20;
/// Journal size bounds (bytes); mkfs uses 1/64 of the member within them.
pub const MIN_JOURNAL: u64 = 4 << 20;
/// Upper bound of the journal region size.
pub const MAX_JOURNAL: u64 = 256 << 20;
const MIB: u64 = 1 << 20;

/// What a region holds. The numeric value is the on-disk `kind` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RegionKind {
    /// The primary superblock (block 0).
    SuperblockPrimary = 1,
    /// The root ring: [`ROOT_SLOTS`] root records, one per block.
    RootRing = 2,
    /// The metadata journal (a circular log of records).
    Journal = 3,
    /// The allocation bitmap of the data region.
    Bitmap = 4,
    /// Fragments and checkpoint objects.
    Data = 5,
    /// The backup superblock (last block).
    SuperblockBackup = 6,
}

impl RegionKind {
    /// All kinds, in on-disk order.
    pub const ALL: [RegionKind; 6] = [
        RegionKind::SuperblockPrimary,
        RegionKind::RootRing,
        RegionKind::Journal,
        RegionKind::Bitmap,
        RegionKind::Data,
        RegionKind::SuperblockBackup,
    ];

    /// Decode the on-disk kind value.
    pub fn from_u32(v: u32) -> Option<RegionKind> {
        RegionKind::ALL.into_iter().find(|k| *k as u32 == v)
    }

    /// Lower-case name used by tools and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            RegionKind::SuperblockPrimary => "superblock",
            RegionKind::RootRing => "root_ring",
            RegionKind::Journal => "journal",
            RegionKind::Bitmap => "bitmap",
            RegionKind::Data => "data",
            RegionKind::SuperblockBackup => "superblock_backup",
        }
    }
}

/// One region: a byte range of the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// What it holds.
    pub kind: RegionKind,
    /// Byte offset from the start of the member (block aligned).
    pub start: u64,
    /// Length in bytes (a multiple of the block size, > 0).
    pub len: u64,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The region table of one member, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Block size in bytes.
    pub block_size: u32,
    /// Member size in bytes (a multiple of the block size).
    pub size: u64,
    /// The six regions, in [`RegionKind::ALL`] order.
    pub regions: [Region; 6],
}

const WHAT: &str = "layout";

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl Layout {
    /// The layout mkfs gives a member of `size` bytes with blocks of
    /// `block_size` bytes. `size` is rounded down to whole blocks.
    pub fn compute(size: u64, block_size: u32) -> Result<Layout> {
        if !valid_block_size(block_size) {
            return Err(FormatError::invalid(WHAT, "block size", format!("{block_size}")));
        }
        let bs = block_size as u64;
        let size = size / bs * bs;
        if size < MIN_MEMBER_SIZE {
            return Err(FormatError::invalid(
                WHAT,
                "size",
                format!("{size} bytes is below the minimum member size of {MIN_MEMBER_SIZE} bytes"),
            ));
        }
        let ring = Region { kind: RegionKind::RootRing, start: bs, len: ROOT_SLOTS * bs };
        let journal_start = align_up(ring.end(), MIB);
        let journal_len = align_up((size / 64).clamp(MIN_JOURNAL, MAX_JOURNAL), MIB);
        let journal = Region { kind: RegionKind::Journal, start: journal_start, len: journal_len };
        let backup = Region { kind: RegionKind::SuperblockBackup, start: size - bs, len: bs };
        // The bitmap must cover the data region that follows it; iterate to a fixed point.
        let bitmap_start = journal.end();
        let per_block = bits_per_bitmap_block(block_size);
        let mut bitmap_blocks = 1u64;
        loop {
            let data_start = align_up(bitmap_start + bitmap_blocks * bs, MIB);
            if data_start >= backup.start {
                return Err(FormatError::invalid(WHAT, "size", format!("{size} bytes leaves no data region")));
            }
            let data_blocks = (backup.start - data_start) / bs;
            let need = data_blocks.div_ceil(per_block).max(1);
            if need <= bitmap_blocks {
                let bitmap = Region { kind: RegionKind::Bitmap, start: bitmap_start, len: bitmap_blocks * bs };
                let data = Region { kind: RegionKind::Data, start: data_start, len: data_blocks * bs };
                let sb = Region { kind: RegionKind::SuperblockPrimary, start: 0, len: bs };
                let layout = Layout { block_size, size, regions: [sb, ring, journal, bitmap, data, backup] };
                layout.validate()?;
                return Ok(layout);
            }
            bitmap_blocks = need;
        }
    }

    /// The region of a kind.
    pub fn region(&self, kind: RegionKind) -> Region {
        self.regions[kind as usize - 1]
    }

    /// Number of blocks in the data region (what the allocator manages).
    pub fn data_blocks(&self) -> u64 {
        self.region(RegionKind::Data).len / self.block_size as u64
    }

    /// Byte offset of root-ring slot `slot`.
    pub fn root_slot_offset(&self, slot: u64) -> u64 {
        self.region(RegionKind::RootRing).start + slot * self.block_size as u64
    }

    /// Number of root-ring slots.
    pub fn root_slots(&self) -> u64 {
        self.region(RegionKind::RootRing).len / self.block_size as u64
    }

    /// Byte offset of data block `block`.
    pub fn data_offset(&self, block: u64) -> u64 {
        self.region(RegionKind::Data).start + block * self.block_size as u64
    }

    /// Check a layout read from disk: block size valid, regions in order,
    /// block aligned, non-empty, non-overlapping, inside the member, the
    /// superblocks at the ends, and a bitmap large enough for the data.
    pub fn validate(&self) -> Result<()> {
        if !valid_block_size(self.block_size) {
            return Err(FormatError::invalid(WHAT, "block size", format!("{}", self.block_size)));
        }
        let bs = self.block_size as u64;
        if self.size == 0 || !self.size.is_multiple_of(bs) {
            return Err(FormatError::invalid(WHAT, "size", format!("{} is not a multiple of {bs}", self.size)));
        }
        let mut prev_end = 0u64;
        for (i, r) in self.regions.iter().enumerate() {
            if r.kind as usize != i + 1 {
                return Err(FormatError::invalid(WHAT, "region order", format!("slot {i} holds {:?}", r.kind)));
            }
            if r.len == 0 || r.start % bs != 0 || r.len % bs != 0 {
                return Err(FormatError::invalid(
                    WHAT,
                    r.kind.name(),
                    format!("start {} len {} not whole non-empty blocks of {bs}", r.start, r.len),
                ));
            }
            let end = r
                .start
                .checked_add(r.len)
                .ok_or_else(|| FormatError::invalid(WHAT, r.kind.name(), "start + len overflows"))?;
            if r.start < prev_end || end > self.size {
                return Err(FormatError::invalid(
                    WHAT,
                    r.kind.name(),
                    format!("[{}, {end}) overlaps the previous region or leaves the member", r.start),
                ));
            }
            prev_end = end;
        }
        if self.regions[0].start != 0 || self.regions[0].len != bs {
            return Err(FormatError::invalid(WHAT, "superblock", "primary is not block 0"));
        }
        if self.regions[5].start != self.size - bs || self.regions[5].len != bs {
            return Err(FormatError::invalid(WHAT, "superblock_backup", "backup is not the last block"));
        }
        let bitmap_blocks = self.regions[3].len / bs;
        let covered = bitmap_blocks.saturating_mul(bits_per_bitmap_block(self.block_size));
        if covered < self.data_blocks() {
            return Err(FormatError::invalid(
                WHAT,
                "bitmap",
                format!("{bitmap_blocks} blocks cover {covered} data blocks, need {}", self.data_blocks()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_members() {
        for (size, bs) in
            [(32u64 << 20, 4096u32), (256 << 20, 4096), (4 << 30, 4096), (1 << 40, 4096), (64 << 20, 65536)]
        {
            let l = Layout::compute(size, bs).unwrap();
            l.validate().unwrap();
            assert_eq!(l.size, size);
            assert_eq!(l.region(RegionKind::Data).start % MIB, 0);
            assert_eq!(l.region(RegionKind::Journal).start % MIB, 0);
            assert!(l.data_blocks() * bs as u64 > size / 2, "data is most of the member");
        }
    }

    #[test]
    fn refuses_tiny_and_bad_block_size() {
        assert!(Layout::compute(MIN_MEMBER_SIZE - 4096, 4096).is_err());
        assert!(Layout::compute(1 << 30, 512).is_err());
        assert!(Layout::compute(1 << 30, 6000).is_err());
    }
}
