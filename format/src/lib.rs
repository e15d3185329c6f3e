//! # dfs-format: every byte DynamicFS puts on a member
//!
//! This crate owns the on-disk format: one `zerocopy` struct per block kind
//! (superblock, root-ring record, journal record header, fragment header,
//! bitmap block header), the region layout of a member, the redundancy policy
//! encoding, and the checks a reader applies before trusting any of them.
//! `FORMAT.md` beside this crate documents every field byte by byte; the code
//! mirrors it (each struct's size and field offsets are compile-time asserted).
//!
//! Rules this crate keeps:
//! - All integers are little-endian and of fixed width; `usize` never reaches
//!   the disk (see `clippy.toml`).
//! - Every decoder takes untrusted bytes and returns [`FormatError`] on garbage:
//!   it never panics, never allocates in proportion to a length read from disk
//!   without bounding it first.
//! - No IO, no clocks, no randomness: callers pass times and UUIDs in.
//!
//! Versioning follows Fxfs: each on-disk generation of a struct is named with a
//! `V<n>` suffix and the current one is an alias (`Superblock = SuperblockV1`).
//! Compatibility follows ext4: `compat` features may be ignored by an older
//! reader, `ro_compat` features allow a read-only open, `incompat` features
//! forbid any open.

pub mod bitmap;
mod checksum;
pub mod error;
pub mod fragment;
pub mod journal;
pub mod layout;
pub mod policy;
pub mod root;
pub mod superblock;

pub use bitmap::{BitmapBlockHeader, BITMAP_HEADER_LEN};
pub use checksum::crc32;
pub use error::FormatError;
pub use fragment::{BlockSums, FragmentHeader, FRAGMENT_HEADER_LEN};
pub use journal::{JournalRecordHeader, RecordKind, JOURNAL_HEADER_LEN};
pub use layout::{Layout, Region, RegionKind};
pub use policy::Policy;
pub use root::{CheckpointLocator, RootRecord, ROOT_RECORD_LEN};
pub use superblock::{Superblock, SUPERBLOCK_LEN};

/// The on-disk format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Smallest block size a member may have (bytes). Devices with 512-byte
/// logical sectors (512n, 512e) are driven in 4096-byte blocks.
pub const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest block size a member may have (bytes).
pub const MAX_BLOCK_SIZE: u32 = 65536;
/// Largest logical extent (bytes): files are cut into extents of up to 1 MiB.
pub const MAX_EXTENT_LEN: u32 = 1 << 20;

/// Feature flags in the ext4 scheme (one compat flag so far); any set
/// bit that this build does not know is handled as the class says.
pub mod features {
    /// `compat` bit 0: extent fragments written to this member may carry a
    /// block-sum table in their header block (see `FragmentHeader`'s
    /// `block_sums`). Informational: each header says whether its own
    /// fragment has one, and readers go by that, never by this bit.
    pub const COMPAT_BLOCK_SUMS: u64 = 1;
    /// `compat` bits this build knows (an unknown compat bit is ignored).
    pub const COMPAT_KNOWN: u64 = COMPAT_BLOCK_SUMS;
    /// `ro_compat` bits this build knows (an unknown one forces read-only).
    pub const RO_COMPAT_KNOWN: u64 = 0;
    /// `incompat` bits this build knows (an unknown one refuses the open).
    pub const INCOMPAT_KNOWN: u64 = 0;
}

/// True when `bs` is a block size a member may use: a power of two in
/// [`MIN_BLOCK_SIZE`, `MAX_BLOCK_SIZE`].
pub fn valid_block_size(bs: u32) -> bool {
    bs.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs)
}
