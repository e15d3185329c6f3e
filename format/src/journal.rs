//! Journal record header. The journal region is a circular log of records;
//! each record starts on a block boundary with this 64-byte header, followed
//! at once by `payload_len` bytes of payload, zero-padded to whole blocks.
//!
//! Replay stops at the first record whose header or payload checksum fails,
//! whose `seq` is not the expected next one, or whose `prev_crc` is not the
//! header checksum of the record before it (so a stale record left by an
//! earlier lap of the ring can never be mistaken for a new one). A torn tail
//! is therefore normal and silent. A `Wrap` record says "continue at the
//! start of the region"; it has no payload.
//!
//! The payload's own encoding (the transaction) is the engine's and carries
//! its own version in `version`.

use crate::checksum::{crc32, crc32_parts};
use crate::error::{FormatError, Result};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Magic at byte 0 of every journal record.
pub const JOURNAL_MAGIC: [u8; 4] = *b"DJRN";
/// Encoded length of the header.
pub const JOURNAL_HEADER_LEN: usize = 64;
/// Largest payload a record may carry (bounds what a reader will allocate).
pub const MAX_JOURNAL_PAYLOAD: u32 = 64 << 20;
const WHAT: &str = "journal record";

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum RecordKind {
    /// One or more metadata transactions (the engine's encoding).
    Transaction = 1,
    /// No payload: the next record is at the start of the region.
    Wrap = 2,
}

/// The header as stored (version 1).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawJournalHeaderV1 {
    pub magic: [u8; 4],
    pub version: U16,
    pub kind: U16,
    pub seq: U64,
    pub pool_uuid: [u8; 16],
    pub payload_len: U32,
    pub payload_crc32: U32,
    pub prev_crc32: U32,
    pub block_count: U32,
    pub timestamp_ns: U64,
    pub reserved: U32,
    pub header_crc32: U32,
}
const _: () = assert!(std::mem::size_of::<RawJournalHeaderV1>() == JOURNAL_HEADER_LEN);
const _: () = assert!(std::mem::offset_of!(RawJournalHeaderV1, payload_len) == 32);
const _: () = assert!(std::mem::offset_of!(RawJournalHeaderV1, header_crc32) == 60);

/// A decoded journal record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecordHeader {
    /// Version of the payload encoding.
    pub version: u16,
    pub kind: RecordKind,
    /// Sequence number: previous + 1.
    pub seq: u64,
    pub pool_uuid: uuid::Uuid,
    pub payload_len: u32,
    pub payload_crc32: u32,
    /// `header_crc32` of the previous record (0 for the first after a checkpoint's root).
    pub prev_crc32: u32,
    /// Blocks occupied by header + payload.
    pub block_count: u32,
    pub timestamp_ns: u64,
    /// This header's own checksum (what the next record chains to).
    pub header_crc32: u32,
}

/// Blocks a record with `payload_len` bytes of payload occupies.
pub fn record_blocks(payload_len: u32, block_size: u32) -> u32 {
    (JOURNAL_HEADER_LEN as u64 + payload_len as u64).div_ceil(block_size as u64) as u32
}

impl JournalRecordHeader {
    /// Build a header for `payload` (computes its checksums and block count).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: RecordKind,
        version: u16,
        seq: u64,
        pool_uuid: uuid::Uuid,
        payload: &[u8],
        prev_crc32: u32,
        timestamp_ns: u64,
        block_size: u32,
    ) -> JournalRecordHeader {
        let payload_len = payload.len() as u32;
        let mut h = JournalRecordHeader {
            version,
            kind,
            seq,
            pool_uuid,
            payload_len,
            payload_crc32: crc32(payload),
            prev_crc32,
            block_count: record_blocks(payload_len, block_size),
            timestamp_ns,
            header_crc32: 0,
        };
        h.header_crc32 = crc32(&h.raw().as_bytes()[..JOURNAL_HEADER_LEN - 4]);
        h
    }

    fn raw(&self) -> RawJournalHeaderV1 {
        RawJournalHeaderV1 {
            magic: JOURNAL_MAGIC,
            version: self.version.into(),
            kind: (self.kind as u16).into(),
            seq: self.seq.into(),
            pool_uuid: *self.pool_uuid.as_bytes(),
            payload_len: self.payload_len.into(),
            payload_crc32: self.payload_crc32.into(),
            prev_crc32: self.prev_crc32.into(),
            block_count: self.block_count.into(),
            timestamp_ns: self.timestamp_ns.into(),
            reserved: 0.into(),
            header_crc32: self.header_crc32.into(),
        }
    }

    /// The 64-byte on-disk form.
    pub fn encode(&self) -> [u8; JOURNAL_HEADER_LEN] {
        let mut out = [0u8; JOURNAL_HEADER_LEN];
        out.copy_from_slice(self.raw().as_bytes());
        out
    }

    /// Decode and verify a header (not its payload; see [`verify_payload`]).
    pub fn decode(bytes: &[u8], block_size: u32) -> Result<JournalRecordHeader> {
        if !crate::valid_block_size(block_size) {
            return Err(FormatError::invalid(WHAT, "block size", format!("{block_size}")));
        }
        let Ok((raw, _)) = RawJournalHeaderV1::read_from_prefix(bytes) else {
            return Err(FormatError::TooShort { what: WHAT, need: JOURNAL_HEADER_LEN, got: bytes.len() });
        };
        if raw.magic != JOURNAL_MAGIC {
            return Err(FormatError::BadMagic { what: WHAT, found: raw.magic.to_vec() });
        }
        let computed = crc32(&raw.as_bytes()[..JOURNAL_HEADER_LEN - 4]);
        if computed != raw.header_crc32.get() {
            return Err(FormatError::BadChecksum { what: WHAT, stored: raw.header_crc32.get(), computed });
        }
        let version = raw.version.get();
        if version == 0 || version as u32 > crate::FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion {
                what: WHAT,
                found: version as u32,
                supported: crate::FORMAT_VERSION,
            });
        }
        let kind = match raw.kind.get() {
            1 => RecordKind::Transaction,
            2 => RecordKind::Wrap,
            k => return Err(FormatError::invalid(WHAT, "kind", format!("{k}"))),
        };
        let payload_len = raw.payload_len.get();
        if payload_len > MAX_JOURNAL_PAYLOAD || (kind == RecordKind::Wrap && payload_len != 0) {
            return Err(FormatError::invalid(WHAT, "payload_len", format!("{payload_len}")));
        }
        if raw.block_count.get() != record_blocks(payload_len, block_size) {
            return Err(FormatError::invalid(WHAT, "block_count", format!("{}", raw.block_count.get())));
        }
        Ok(JournalRecordHeader {
            version,
            kind,
            seq: raw.seq.get(),
            pool_uuid: uuid::Uuid::from_bytes(raw.pool_uuid),
            payload_len,
            payload_crc32: raw.payload_crc32.get(),
            prev_crc32: raw.prev_crc32.get(),
            block_count: raw.block_count.get(),
            timestamp_ns: raw.timestamp_ns.get(),
            header_crc32: raw.header_crc32.get(),
        })
    }

    /// Check `payload` (exactly `payload_len` bytes) against the header.
    pub fn verify_payload(&self, payload: &[u8]) -> Result<()> {
        if payload.len() != self.payload_len as usize {
            return Err(FormatError::TooShort {
                what: "journal payload",
                need: self.payload_len as usize,
                got: payload.len(),
            });
        }
        let computed = crc32_parts(&[payload]);
        if computed != self.payload_crc32 {
            return Err(FormatError::BadChecksum { what: "journal payload", stored: self.payload_crc32, computed });
        }
        Ok(())
    }
}
