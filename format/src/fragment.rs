//! Fragment header: the block written in front of every fragment payload
//! (a replica, a data shard, a parity shard, or a copy of a checkpoint
//! object). It makes every fragment findable and judgeable without the
//! metadata: `dfs-inspect`, `fsck.dfs` and orphan GC scan the data region for
//! it. The payload starts at the next block and is `payload_len` bytes,
//! zero-padded to whole blocks; `payload_blake3` covers exactly those
//! `payload_len` bytes.

use crate::error::{FormatError, Result};
use crate::policy::Policy;
use crate::{checksum::crc32, FORMAT_VERSION, MAX_EXTENT_LEN};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Magic at byte 0 of every fragment header.
pub const FRAGMENT_MAGIC: [u8; 8] = *b"DYNFS_FR";
/// Encoded length of the header (the rest of its block is zero).
pub const FRAGMENT_HEADER_LEN: usize = 256;
/// Largest payload of a fragment holding a checkpoint object (bytes).
pub const MAX_OBJECT_PAYLOAD: u32 = 1 << 30;
const WHAT: &str = "fragment header";

/// What the fragment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FragmentKind {
    /// A fragment of a file extent.
    Extent = 1,
    /// A copy of a metadata checkpoint object.
    Checkpoint = 2,
}

/// The header as stored (version 1).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawFragmentHeaderV1 {
    pub magic: [u8; 8],
    pub version: U32,
    pub struct_len: U32,
    pub pool_uuid: [u8; 16],
    pub extent_uuid: [u8; 16],
    pub fragment_index: U16,
    pub fragment_count: U16,
    pub policy: [u8; 4],
    pub payload_len: U32,
    pub extent_len: U32,
    pub generation: U64,
    pub created_ns: U64,
    pub payload_blake3: [u8; 32],
    pub extent_blake3: [u8; 32],
    pub kind: u8,
    pub reserved: [u8; 107],
    pub crc32: U32,
}
const _: () = assert!(std::mem::size_of::<RawFragmentHeaderV1>() == FRAGMENT_HEADER_LEN);
const _: () = assert!(std::mem::offset_of!(RawFragmentHeaderV1, fragment_index) == 48);
const _: () = assert!(std::mem::offset_of!(RawFragmentHeaderV1, payload_blake3) == 80);
const _: () = assert!(std::mem::offset_of!(RawFragmentHeaderV1, kind) == 144);
const _: () = assert!(std::mem::offset_of!(RawFragmentHeaderV1, crc32) == 252);

/// A decoded fragment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FragmentHeader {
    pub kind: FragmentKind,
    pub pool_uuid: uuid::Uuid,
    /// The extent (or checkpoint object) this fragment belongs to.
    pub extent_uuid: uuid::Uuid,
    /// 0-based; for erasure coding, indexes < data are data shards.
    pub fragment_index: u16,
    /// Fragments of the extent in all (N, or K+M).
    pub fragment_count: u16,
    pub policy: Policy,
    /// Payload bytes after the header block.
    pub payload_len: u32,
    /// Logical length of the whole extent (or object).
    pub extent_len: u32,
    /// Metadata sequence number of the transaction that wrote it.
    pub generation: u64,
    pub created_ns: u64,
    /// BLAKE3 of the `payload_len` payload bytes.
    pub payload_blake3: [u8; 32],
    /// BLAKE3 of the whole logical extent.
    pub extent_blake3: [u8; 32],
}

impl FragmentHeader {
    /// The 256-byte on-disk form.
    pub fn encode(&self) -> [u8; FRAGMENT_HEADER_LEN] {
        let mut raw = RawFragmentHeaderV1 {
            magic: FRAGMENT_MAGIC,
            version: FORMAT_VERSION.into(),
            struct_len: (FRAGMENT_HEADER_LEN as u32).into(),
            pool_uuid: *self.pool_uuid.as_bytes(),
            extent_uuid: *self.extent_uuid.as_bytes(),
            fragment_index: self.fragment_index.into(),
            fragment_count: self.fragment_count.into(),
            policy: self.policy.encode(),
            payload_len: self.payload_len.into(),
            extent_len: self.extent_len.into(),
            generation: self.generation.into(),
            created_ns: self.created_ns.into(),
            payload_blake3: self.payload_blake3,
            extent_blake3: self.extent_blake3,
            kind: self.kind as u8,
            reserved: [0; 107],
            crc32: 0.into(),
        };
        raw.crc32 = crc32(&raw.as_bytes()[..FRAGMENT_HEADER_LEN - 4]).into();
        let mut out = [0u8; FRAGMENT_HEADER_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decode and validate untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<FragmentHeader> {
        let Ok((raw, _)) = RawFragmentHeaderV1::read_from_prefix(bytes) else {
            return Err(FormatError::TooShort { what: WHAT, need: FRAGMENT_HEADER_LEN, got: bytes.len() });
        };
        if raw.magic != FRAGMENT_MAGIC {
            return Err(FormatError::BadMagic { what: WHAT, found: raw.magic.to_vec() });
        }
        let version = raw.version.get();
        if version == 0 || version > FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { what: WHAT, found: version, supported: FORMAT_VERSION });
        }
        let computed = crc32(&raw.as_bytes()[..FRAGMENT_HEADER_LEN - 4]);
        if computed != raw.crc32.get() {
            return Err(FormatError::BadChecksum { what: WHAT, stored: raw.crc32.get(), computed });
        }
        if raw.struct_len.get() as usize != FRAGMENT_HEADER_LEN {
            return Err(FormatError::invalid(WHAT, "struct_len", format!("{}", raw.struct_len.get())));
        }
        let kind = match raw.kind {
            1 => FragmentKind::Extent,
            2 => FragmentKind::Checkpoint,
            k => return Err(FormatError::invalid(WHAT, "kind", format!("{k}"))),
        };
        let policy = Policy::decode(raw.policy)?;
        let (index, count) = (raw.fragment_index.get(), raw.fragment_count.get());
        if count as u32 != policy.fragment_count() || index >= count {
            return Err(FormatError::invalid(WHAT, "fragment_index", format!("{index} of {count} under {policy}")));
        }
        let (payload_len, extent_len) = (raw.payload_len.get(), raw.extent_len.get());
        let max = match kind {
            FragmentKind::Extent => MAX_EXTENT_LEN,
            FragmentKind::Checkpoint => MAX_OBJECT_PAYLOAD,
        };
        if extent_len == 0 || extent_len > max || payload_len == 0 || payload_len > max {
            return Err(FormatError::invalid(WHAT, "length", format!("payload {payload_len}, extent {extent_len}")));
        }
        Ok(FragmentHeader {
            kind,
            pool_uuid: uuid::Uuid::from_bytes(raw.pool_uuid),
            extent_uuid: uuid::Uuid::from_bytes(raw.extent_uuid),
            fragment_index: index,
            fragment_count: count,
            policy,
            payload_len,
            extent_len,
            generation: raw.generation.get(),
            created_ns: raw.created_ns.get(),
            payload_blake3: raw.payload_blake3,
            extent_blake3: raw.extent_blake3,
        })
    }
}
