//! The member superblock: who this member is, which pool it belongs to, and
//! where its regions are. Written at block 0 (primary) and in the last block
//! (backup); the two copies differ only in `copy` and their checksum.
//!
//! A reader decodes both copies; see FORMAT.md "Which superblock wins".

use crate::error::{FormatError, Result};
use crate::layout::{Layout, Region, RegionKind};
use crate::policy::Policy;
use crate::{checksum::crc32, features, valid_block_size, FORMAT_VERSION};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Magic at byte 0 of both superblock copies.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"DYNFS_SB";
/// Encoded length of the superblock struct (the rest of its block is zero).
pub const SUPERBLOCK_LEN: usize = 512;
/// Maximum label length in bytes (UTF-8).
pub const LABEL_LEN: usize = 64;
/// Region-table entries in the struct (6 used in version 1).
pub const REGION_SLOTS: usize = 8;
const WHAT: &str = "superblock";

/// One region-table entry on disk (32 bytes).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawRegionV1 {
    /// [`RegionKind`] value; 0 = unused entry.
    pub kind: U32,
    /// Reserved, zero.
    pub flags: U32,
    /// Byte offset of the region.
    pub start: U64,
    /// Byte length of the region.
    pub len: U64,
    /// Reserved, zero.
    pub reserved: U64,
}

/// The superblock as stored (version 1). Field offsets are in FORMAT.md and
/// asserted below.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawSuperblockV1 {
    pub magic: [u8; 8],
    pub version: U32,
    pub struct_len: U32,
    pub compat: U64,
    pub ro_compat: U64,
    pub incompat: U64,
    pub pool_uuid: [u8; 16],
    pub member_uuid: [u8; 16],
    pub member_index: U32,
    pub block_size: U32,
    pub size: U64,
    pub created_ns: U64,
    pub update_seq: U64,
    pub copy: u8,
    pub region_count: u8,
    pub reserved0: [u8; 2],
    pub default_policy: [u8; 4],
    pub label: [u8; LABEL_LEN],
    pub regions: [RawRegionV1; REGION_SLOTS],
    pub reserved1: [u8; 76],
    pub crc32: U32,
}

/// The current raw superblock generation.
pub type RawSuperblock = RawSuperblockV1;

const _: () = assert!(std::mem::size_of::<RawRegionV1>() == 32);
const _: () = assert!(std::mem::size_of::<RawSuperblockV1>() == SUPERBLOCK_LEN);
const _: () = assert!(std::mem::offset_of!(RawSuperblockV1, pool_uuid) == 40);
const _: () = assert!(std::mem::offset_of!(RawSuperblockV1, block_size) == 76);
const _: () = assert!(std::mem::offset_of!(RawSuperblockV1, copy) == 104);
const _: () = assert!(std::mem::offset_of!(RawSuperblockV1, default_policy) == 108);
const _: () = assert!(std::mem::offset_of!(RawSuperblockV1, label) == 112);
const _: () = assert!(std::mem::offset_of!(RawSuperblockV1, regions) == 176);
const _: () = assert!(std::mem::offset_of!(RawSuperblockV1, crc32) == 508);

/// Which of the two copies a superblock is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperblockCopy {
    /// Block 0.
    Primary,
    /// The last block.
    Backup,
}

/// A decoded, validated superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Feature flags (ext4 scheme).
    pub compat: u64,
    pub ro_compat: u64,
    pub incompat: u64,
    /// The pool this member belongs to.
    pub pool_uuid: uuid::Uuid,
    /// This member's own identity (stable across device renames).
    pub member_uuid: uuid::Uuid,
    /// This member's index in the pool's member table (assigned at mkfs or add-disk).
    pub member_index: u32,
    /// The regions; also carries block size and member size.
    pub layout: Layout,
    /// mkfs time, nanoseconds since the Unix epoch.
    pub created_ns: u64,
    /// Bumped on every rewrite of the superblock; the higher valid copy wins.
    pub update_seq: u64,
    /// The pool's default redundancy policy chosen at mkfs (metadata may override).
    pub default_policy: Policy,
    /// Human label (UTF-8, up to 64 bytes).
    pub label: String,
}

impl Superblock {
    /// True when an unknown `ro_compat` feature allows only a read-only open.
    pub fn needs_read_only(&self) -> bool {
        self.ro_compat & !features::RO_COMPAT_KNOWN != 0
    }

    /// Encode as the given copy. The label is truncated to whole UTF-8
    /// characters within 64 bytes.
    pub fn encode(&self, copy: SuperblockCopy) -> [u8; SUPERBLOCK_LEN] {
        let mut label = [0u8; LABEL_LEN];
        let l = truncate_label(&self.label);
        label[..l.len()].copy_from_slice(l.as_bytes());
        let mut regions =
            [RawRegionV1 { kind: 0.into(), flags: 0.into(), start: 0.into(), len: 0.into(), reserved: 0.into() };
                REGION_SLOTS];
        for (raw, r) in regions.iter_mut().zip(self.layout.regions.iter()) {
            raw.kind = (r.kind as u32).into();
            raw.start = r.start.into();
            raw.len = r.len.into();
        }
        let mut raw = RawSuperblockV1 {
            magic: SUPERBLOCK_MAGIC,
            version: FORMAT_VERSION.into(),
            struct_len: (SUPERBLOCK_LEN as u32).into(),
            compat: self.compat.into(),
            ro_compat: self.ro_compat.into(),
            incompat: self.incompat.into(),
            pool_uuid: *self.pool_uuid.as_bytes(),
            member_uuid: *self.member_uuid.as_bytes(),
            member_index: self.member_index.into(),
            block_size: self.layout.block_size.into(),
            size: self.layout.size.into(),
            created_ns: self.created_ns.into(),
            update_seq: self.update_seq.into(),
            copy: match copy {
                SuperblockCopy::Primary => 0,
                SuperblockCopy::Backup => 1,
            },
            region_count: self.layout.regions.len() as u8,
            reserved0: [0; 2],
            default_policy: self.default_policy.encode(),
            label,
            regions,
            reserved1: [0; 76],
            crc32: 0.into(),
        };
        raw.crc32 = crc32(&raw.as_bytes()[..SUPERBLOCK_LEN - 4]).into();
        let mut out = [0u8; SUPERBLOCK_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decode and validate untrusted bytes (at least [`SUPERBLOCK_LEN`]).
    /// Returns the superblock and which copy it says it is.
    pub fn decode(bytes: &[u8]) -> Result<(Superblock, SuperblockCopy)> {
        if bytes.len() < 8 {
            return Err(FormatError::TooShort { what: WHAT, need: SUPERBLOCK_LEN, got: bytes.len() });
        }
        if bytes[..8] != SUPERBLOCK_MAGIC {
            return Err(FormatError::BadMagic { what: WHAT, found: bytes[..8].to_vec() });
        }
        let Ok((raw, _)) = RawSuperblockV1::read_from_prefix(bytes) else {
            return Err(FormatError::TooShort { what: WHAT, need: SUPERBLOCK_LEN, got: bytes.len() });
        };
        let version = raw.version.get();
        if version == 0 || version > FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { what: WHAT, found: version, supported: FORMAT_VERSION });
        }
        let computed = crc32(&raw.as_bytes()[..SUPERBLOCK_LEN - 4]);
        if computed != raw.crc32.get() {
            return Err(FormatError::BadChecksum { what: WHAT, stored: raw.crc32.get(), computed });
        }
        if raw.struct_len.get() as usize != SUPERBLOCK_LEN {
            return Err(FormatError::invalid(WHAT, "struct_len", format!("{}", raw.struct_len.get())));
        }
        let unknown = raw.incompat.get() & !features::INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(FormatError::UnknownIncompat { what: WHAT, bits: unknown });
        }
        let copy = match raw.copy {
            0 => SuperblockCopy::Primary,
            1 => SuperblockCopy::Backup,
            c => return Err(FormatError::invalid(WHAT, "copy", format!("{c}"))),
        };
        let bs = raw.block_size.get();
        if !valid_block_size(bs) {
            return Err(FormatError::invalid(WHAT, "block_size", format!("{bs}")));
        }
        if raw.region_count as usize != RegionKind::ALL.len() {
            return Err(FormatError::invalid(WHAT, "region_count", format!("{}", raw.region_count)));
        }
        let mut regions = [Region { kind: RegionKind::SuperblockPrimary, start: 0, len: 0 }; 6];
        for (i, r) in raw.regions[..6].iter().enumerate() {
            let kind = RegionKind::from_u32(r.kind.get()).ok_or_else(|| {
                FormatError::invalid(WHAT, "region kind", format!("entry {i} has kind {}", r.kind.get()))
            })?;
            regions[i] = Region { kind, start: r.start.get(), len: r.len.get() };
        }
        if raw.regions[6..].iter().any(|r| r.kind.get() != 0) {
            return Err(FormatError::invalid(WHAT, "region table", "unused entries are not zero"));
        }
        let layout = Layout { block_size: bs, size: raw.size.get(), regions };
        layout.validate()?;
        let label_end = raw.label.iter().position(|&b| b == 0).unwrap_or(LABEL_LEN);
        let label = std::str::from_utf8(&raw.label[..label_end])
            .map_err(|_| FormatError::invalid(WHAT, "label", "not UTF-8"))?
            .to_string();
        let sb = Superblock {
            compat: raw.compat.get(),
            ro_compat: raw.ro_compat.get(),
            incompat: raw.incompat.get(),
            pool_uuid: uuid::Uuid::from_bytes(raw.pool_uuid),
            member_uuid: uuid::Uuid::from_bytes(raw.member_uuid),
            member_index: raw.member_index.get(),
            layout,
            created_ns: raw.created_ns.get(),
            update_seq: raw.update_seq.get(),
            default_policy: Policy::decode(raw.default_policy)?,
            label,
        };
        if sb.pool_uuid.is_nil() || sb.member_uuid.is_nil() {
            return Err(FormatError::invalid(WHAT, "uuid", "pool or member UUID is nil"));
        }
        Ok((sb, copy))
    }
}

/// The label as it will read back: the text before the first NUL (the
/// on-disk terminator), cut to whole UTF-8 characters within 64 bytes.
pub fn truncate_label(s: &str) -> &str {
    let s = s.find('\0').map_or(s, |nul| &s[..nul]);
    if s.len() <= LABEL_LEN {
        return s;
    }
    let mut end = LABEL_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The outcome of judging the two copies of a member's superblock.
#[derive(Debug)]
pub struct SuperblockChoice {
    /// The copy to trust.
    pub superblock: Superblock,
    /// Which copy it came from.
    pub from: SuperblockCopy,
    /// The primary's error, when it did not verify.
    pub primary_error: Option<FormatError>,
    /// The backup's error, when it did not verify (or disagrees on identity).
    pub backup_error: Option<FormatError>,
}

impl SuperblockChoice {
    /// True when one copy must be rewritten from the other.
    pub fn needs_repair(&self) -> bool {
        self.primary_error.is_some() || self.backup_error.is_some()
    }
}

/// Decide which superblock copy wins (FORMAT.md "Which superblock wins"):
/// both must verify alone; if both do, they must name the same pool, member
/// and layout, and the higher `update_seq` wins (primary on a tie). If only
/// one verifies, it wins and the other is reported. If neither does, the
/// primary's error is returned.
pub fn choose_superblock(primary: &[u8], backup: Option<&[u8]>) -> Result<SuperblockChoice> {
    let p = Superblock::decode(primary).and_then(|(sb, c)| {
        if c == SuperblockCopy::Primary {
            Ok(sb)
        } else {
            Err(FormatError::invalid(WHAT, "copy", "block 0 holds a backup copy"))
        }
    });
    let b = match backup {
        Some(bytes) => Superblock::decode(bytes).and_then(|(sb, c)| {
            if c == SuperblockCopy::Backup {
                Ok(sb)
            } else {
                Err(FormatError::invalid(WHAT, "copy", "last block holds a primary copy"))
            }
        }),
        None => Err(FormatError::TooShort { what: "backup superblock", need: SUPERBLOCK_LEN, got: 0 }),
    };
    match (p, b) {
        (Ok(p), Ok(b)) => {
            let same = p.pool_uuid == b.pool_uuid && p.member_uuid == b.member_uuid && p.layout == b.layout;
            if !same {
                let err = FormatError::invalid(WHAT, "backup", "backup names another pool, member or layout");
                return Ok(SuperblockChoice {
                    superblock: p,
                    from: SuperblockCopy::Primary,
                    primary_error: None,
                    backup_error: Some(err),
                });
            }
            if b.update_seq > p.update_seq {
                let err = FormatError::invalid(
                    WHAT,
                    "update_seq",
                    format!("primary {} older than backup {}", p.update_seq, b.update_seq),
                );
                Ok(SuperblockChoice {
                    superblock: b,
                    from: SuperblockCopy::Backup,
                    primary_error: Some(err),
                    backup_error: None,
                })
            } else if b.update_seq < p.update_seq {
                let err = FormatError::invalid(
                    WHAT,
                    "update_seq",
                    format!("backup {} older than primary {}", b.update_seq, p.update_seq),
                );
                Ok(SuperblockChoice {
                    superblock: p,
                    from: SuperblockCopy::Primary,
                    primary_error: None,
                    backup_error: Some(err),
                })
            } else {
                Ok(SuperblockChoice {
                    superblock: p,
                    from: SuperblockCopy::Primary,
                    primary_error: None,
                    backup_error: None,
                })
            }
        }
        (Ok(p), Err(e)) => Ok(SuperblockChoice {
            superblock: p,
            from: SuperblockCopy::Primary,
            primary_error: None,
            backup_error: Some(e),
        }),
        (Err(e), Ok(b)) => Ok(SuperblockChoice {
            superblock: b,
            from: SuperblockCopy::Backup,
            primary_error: Some(e),
            backup_error: None,
        }),
        (Err(e), Err(_)) => Err(e),
    }
}
