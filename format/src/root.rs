//! Root-ring records ("versioned roots", like ZFS uberblocks). Each commit of
//! a checkpoint (and each journal wrap) writes the next slot of the ring on
//! every metadata member; open picks the highest generation that verifies on
//! any member. A root points at the latest checkpoint object and at the
//! journal position from which replay starts.

use crate::error::{FormatError, Result};
use crate::{checksum::crc32, FORMAT_VERSION};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Magic at byte 0 of every root record.
pub const ROOT_MAGIC: [u8; 8] = *b"DYNFS_RT";
/// Encoded length of a root record (the rest of its block is zero).
pub const ROOT_RECORD_LEN: usize = 256;
/// Copies of the checkpoint object a root can point at.
pub const CHECKPOINT_COPIES: usize = 3;
const WHAT: &str = "root record";

/// Where one copy of the checkpoint object lives (24 bytes on disk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawLocatorV1 {
    pub member_index: U32,
    pub reserved: U32,
    pub offset: U64,
    pub len: U64,
}

/// A root record as stored (version 1).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawRootRecordV1 {
    pub magic: [u8; 8],
    pub version: U32,
    pub struct_len: U32,
    pub pool_uuid: [u8; 16],
    pub generation: U64,
    pub timestamp_ns: U64,
    pub journal_seq: U64,
    pub journal_offset: U64,
    pub checkpoint_copies: U32,
    pub member_count: U32,
    pub checkpoint_id: [u8; 16],
    pub checkpoint_len: U64,
    pub checkpoint_blake3: [u8; 32],
    pub locators: [RawLocatorV1; CHECKPOINT_COPIES],
    pub journal_len: U64,
    pub journal_block_size: U32,
    pub reserved: [u8; 40],
    pub crc32: U32,
}

const _: () = assert!(std::mem::size_of::<RawLocatorV1>() == 24);
const _: () = assert!(std::mem::size_of::<RawRootRecordV1>() == ROOT_RECORD_LEN);
const _: () = assert!(std::mem::offset_of!(RawRootRecordV1, generation) == 32);
const _: () = assert!(std::mem::offset_of!(RawRootRecordV1, checkpoint_id) == 72);
const _: () = assert!(std::mem::offset_of!(RawRootRecordV1, locators) == 128);
const _: () = assert!(std::mem::offset_of!(RawRootRecordV1, journal_len) == 200);
const _: () = assert!(std::mem::offset_of!(RawRootRecordV1, crc32) == 252);

/// Where one copy of a checkpoint lives: `len` bytes at byte `offset` of member `member_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointLocator {
    pub member_index: u32,
    pub offset: u64,
    pub len: u64,
}

/// A decoded root record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRecord {
    /// The pool it belongs to.
    pub pool_uuid: uuid::Uuid,
    /// Strictly increasing across commits; the highest valid one wins.
    pub generation: u64,
    /// When it was written (ns since the epoch).
    pub timestamp_ns: u64,
    /// Sequence number of the first journal record to replay.
    pub journal_seq: u64,
    /// Byte offset, inside the journal region, of that record.
    pub journal_offset: u64,
    /// Number of members in the pool when written.
    pub member_count: u32,
    /// Logical length of the journal (bytes; the same on every copy).
    pub journal_len: u64,
    /// Record alignment of the journal (bytes; the largest block size of its members).
    pub journal_block_size: u32,
    /// The checkpoint object; `None` for a freshly made, empty pool.
    pub checkpoint: Option<CheckpointRef>,
}

/// The checkpoint a root points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRef {
    /// Object id of the checkpoint.
    pub id: uuid::Uuid,
    /// Length in bytes of the serialized checkpoint.
    pub len: u64,
    /// BLAKE3 of the serialized checkpoint.
    pub blake3: [u8; 32],
    /// 1..=3 copies.
    pub copies: Vec<CheckpointLocator>,
}

impl RootRecord {
    /// Encode into the 256-byte on-disk form.
    pub fn encode(&self) -> [u8; ROOT_RECORD_LEN] {
        let mut raw = RawRootRecordV1 {
            magic: ROOT_MAGIC,
            version: FORMAT_VERSION.into(),
            struct_len: (ROOT_RECORD_LEN as u32).into(),
            pool_uuid: *self.pool_uuid.as_bytes(),
            generation: self.generation.into(),
            timestamp_ns: self.timestamp_ns.into(),
            journal_seq: self.journal_seq.into(),
            journal_offset: self.journal_offset.into(),
            checkpoint_copies: 0.into(),
            member_count: self.member_count.into(),
            checkpoint_id: [0; 16],
            checkpoint_len: 0.into(),
            checkpoint_blake3: [0; 32],
            locators: [RawLocatorV1::default(); CHECKPOINT_COPIES],
            journal_len: self.journal_len.into(),
            journal_block_size: self.journal_block_size.into(),
            reserved: [0; 40],
            crc32: 0.into(),
        };
        if let Some(c) = &self.checkpoint {
            let n = c.copies.len().min(CHECKPOINT_COPIES);
            raw.checkpoint_copies = (n as u32).into();
            raw.checkpoint_id = *c.id.as_bytes();
            raw.checkpoint_len = c.len.into();
            raw.checkpoint_blake3 = c.blake3;
            for (r, l) in raw.locators.iter_mut().zip(&c.copies) {
                r.member_index = l.member_index.into();
                r.offset = l.offset.into();
                r.len = l.len.into();
            }
        }
        raw.crc32 = crc32(&raw.as_bytes()[..ROOT_RECORD_LEN - 4]).into();
        let mut out = [0u8; ROOT_RECORD_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decode and validate untrusted bytes. An all-zero slot is
    /// `BadMagic` (never written), which callers treat as empty.
    pub fn decode(bytes: &[u8]) -> Result<RootRecord> {
        let Ok((raw, _)) = RawRootRecordV1::read_from_prefix(bytes) else {
            return Err(FormatError::TooShort { what: WHAT, need: ROOT_RECORD_LEN, got: bytes.len() });
        };
        if raw.magic != ROOT_MAGIC {
            return Err(FormatError::BadMagic { what: WHAT, found: raw.magic.to_vec() });
        }
        let version = raw.version.get();
        if version == 0 || version > FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { what: WHAT, found: version, supported: FORMAT_VERSION });
        }
        let computed = crc32(&raw.as_bytes()[..ROOT_RECORD_LEN - 4]);
        if computed != raw.crc32.get() {
            return Err(FormatError::BadChecksum { what: WHAT, stored: raw.crc32.get(), computed });
        }
        if raw.struct_len.get() as usize != ROOT_RECORD_LEN {
            return Err(FormatError::invalid(WHAT, "struct_len", format!("{}", raw.struct_len.get())));
        }
        let n = raw.checkpoint_copies.get() as usize;
        if n > CHECKPOINT_COPIES {
            return Err(FormatError::invalid(WHAT, "checkpoint_copies", format!("{n}")));
        }
        let checkpoint = if n == 0 {
            if raw.checkpoint_id != [0; 16] || raw.checkpoint_len.get() != 0 {
                return Err(FormatError::invalid(WHAT, "checkpoint", "no copies but an id or length"));
            }
            None
        } else {
            let copies = raw.locators[..n]
                .iter()
                .map(|l| CheckpointLocator {
                    member_index: l.member_index.get(),
                    offset: l.offset.get(),
                    len: l.len.get(),
                })
                .collect::<Vec<_>>();
            if copies.iter().any(|c| c.len < raw.checkpoint_len.get()) {
                return Err(FormatError::invalid(WHAT, "locator", "a copy is shorter than the checkpoint"));
            }
            Some(CheckpointRef {
                id: uuid::Uuid::from_bytes(raw.checkpoint_id),
                len: raw.checkpoint_len.get(),
                blake3: raw.checkpoint_blake3,
                copies,
            })
        };
        let (journal_len, jbs) = (raw.journal_len.get(), raw.journal_block_size.get());
        if !crate::valid_block_size(jbs) || journal_len == 0 || journal_len % jbs as u64 != 0 {
            return Err(FormatError::invalid(
                WHAT,
                "journal geometry",
                format!("length {journal_len}, block size {jbs}"),
            ));
        }
        if raw.journal_offset.get() >= journal_len || raw.journal_offset.get() % jbs as u64 != 0 {
            return Err(FormatError::invalid(WHAT, "journal_offset", format!("{}", raw.journal_offset.get())));
        }
        Ok(RootRecord {
            pool_uuid: uuid::Uuid::from_bytes(raw.pool_uuid),
            generation: raw.generation.get(),
            timestamp_ns: raw.timestamp_ns.get(),
            journal_seq: raw.journal_seq.get(),
            journal_offset: raw.journal_offset.get(),
            member_count: raw.member_count.get(),
            journal_len,
            journal_block_size: jbs,
            checkpoint,
        })
    }
}

/// Pick the winning root among decoded candidates of one pool: the highest
/// generation. Candidates of another pool are ignored.
pub fn best_root<'a>(pool: uuid::Uuid, candidates: impl IntoIterator<Item = &'a RootRecord>) -> Option<&'a RootRecord> {
    candidates.into_iter().filter(|r| r.pool_uuid == pool).max_by_key(|r| r.generation)
}
