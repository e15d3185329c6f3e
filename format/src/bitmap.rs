//! Bitmap block: one block of the allocation-bitmap region, a 64-byte header
//! then `block_size - 64` bytes of bits. Bit `i` of the region (LSB first in
//! each byte) is data block `i`; 1 = used. Bitmap block `n` covers data
//! blocks `[n * bits, (n + 1) * bits)` with `bits = (block_size - 64) * 8`;
//! bits past the end of the data region are zero.
//!
//! The bitmap is the allocation state as of the checkpoint recorded in
//! `generation`; the journal replays allocations and frees made after it.

use crate::error::{FormatError, Result};
use crate::{checksum::crc32_parts, FORMAT_VERSION};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Magic at byte 0 of every bitmap block.
pub const BITMAP_MAGIC: [u8; 8] = *b"DYNFS_BM";
/// Length of the header before the bits.
pub const BITMAP_HEADER_LEN: usize = 64;
const WHAT: &str = "bitmap block";

/// Data blocks one bitmap block covers.
pub fn bits_per_bitmap_block(block_size: u32) -> u64 {
    (block_size as u64 - BITMAP_HEADER_LEN as u64) * 8
}

fn check_block_size(block_size: u32) -> Result<()> {
    if crate::valid_block_size(block_size) {
        Ok(())
    } else {
        Err(FormatError::invalid(WHAT, "block size", format!("{block_size}")))
    }
}

/// The header as stored (version 1).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RawBitmapHeaderV1 {
    pub magic: [u8; 8],
    pub version: U32,
    pub block_size: U32,
    pub pool_uuid: [u8; 16],
    pub index: U64,
    pub generation: U64,
    pub used_bits: U64,
    pub reserved: U32,
    pub crc32: U32,
}
const _: () = assert!(std::mem::size_of::<RawBitmapHeaderV1>() == BITMAP_HEADER_LEN);
const _: () = assert!(std::mem::offset_of!(RawBitmapHeaderV1, crc32) == 60);

/// A decoded bitmap block header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapBlockHeader {
    pub pool_uuid: uuid::Uuid,
    /// Which bitmap block of the region this is (0-based).
    pub index: u64,
    /// Checkpoint generation this state belongs to.
    pub generation: u64,
    /// Number of bits set in this block (a cross-check).
    pub used_bits: u64,
}

impl BitmapBlockHeader {
    /// Encode a whole bitmap block: header + `bits` (`block_size - 64` bytes).
    /// The checksum covers header and bits. `used_bits` is computed.
    pub fn encode_block(&self, block_size: u32, bits: &[u8]) -> Result<Vec<u8>> {
        check_block_size(block_size)?;
        let want = block_size as usize - BITMAP_HEADER_LEN;
        if bits.len() != want {
            return Err(FormatError::invalid(WHAT, "bits", format!("{} bytes, need {want}", bits.len())));
        }
        let used: u64 = bits.iter().map(|b| b.count_ones() as u64).sum();
        let mut raw = RawBitmapHeaderV1 {
            magic: BITMAP_MAGIC,
            version: FORMAT_VERSION.into(),
            block_size: block_size.into(),
            pool_uuid: *self.pool_uuid.as_bytes(),
            index: self.index.into(),
            generation: self.generation.into(),
            used_bits: used.into(),
            reserved: 0.into(),
            crc32: 0.into(),
        };
        raw.crc32 = crc32_parts(&[&raw.as_bytes()[..BITMAP_HEADER_LEN - 4], bits]).into();
        let mut out = Vec::with_capacity(block_size as usize);
        out.extend_from_slice(raw.as_bytes());
        out.extend_from_slice(bits);
        Ok(out)
    }

    /// Decode and verify a whole bitmap block; returns the header and its bits.
    pub fn decode_block(block: &[u8], block_size: u32) -> Result<(BitmapBlockHeader, &[u8])> {
        check_block_size(block_size)?;
        if block.len() < block_size as usize {
            return Err(FormatError::TooShort { what: WHAT, need: block_size as usize, got: block.len() });
        }
        let block = &block[..block_size as usize];
        let Ok((raw, bits)) = RawBitmapHeaderV1::read_from_prefix(block) else {
            return Err(FormatError::TooShort { what: WHAT, need: BITMAP_HEADER_LEN, got: block.len() });
        };
        if raw.magic != BITMAP_MAGIC {
            return Err(FormatError::BadMagic { what: WHAT, found: raw.magic.to_vec() });
        }
        let version = raw.version.get();
        if version == 0 || version > FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { what: WHAT, found: version, supported: FORMAT_VERSION });
        }
        let computed = crc32_parts(&[&raw.as_bytes()[..BITMAP_HEADER_LEN - 4], bits]);
        if computed != raw.crc32.get() {
            return Err(FormatError::BadChecksum { what: WHAT, stored: raw.crc32.get(), computed });
        }
        if raw.block_size.get() != block_size {
            return Err(FormatError::invalid(WHAT, "block_size", format!("{}", raw.block_size.get())));
        }
        let used: u64 = bits.iter().map(|b| b.count_ones() as u64).sum();
        if used != raw.used_bits.get() {
            return Err(FormatError::invalid(WHAT, "used_bits", format!("{} stored, {used} set", raw.used_bits.get())));
        }
        Ok((
            BitmapBlockHeader {
                pool_uuid: uuid::Uuid::from_bytes(raw.pool_uuid),
                index: raw.index.get(),
                generation: raw.generation.get(),
                used_bits: used,
            },
            bits,
        ))
    }
}
