//! The one checksum of metadata structs: CRC-32 (IEEE, as `crc32fast`).
//! Payload integrity is BLAKE3, computed by the engine, stored here as bytes.

/// CRC-32 (IEEE 802.3 polynomial, reflected, init and final xor 0xFFFF_FFFF).
pub fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// CRC-32 of several byte slices, as if they were concatenated.
pub(crate) fn crc32_parts(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}
