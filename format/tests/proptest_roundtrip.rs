//! Property tests for every decoder of `dfs-format`.
//!
//! 1. Round trip: any valid value encodes and decodes back to itself (the
//!    superblock label after its documented truncation).
//! 2. Integrity: one flipped bit anywhere in a valid encoding is an error,
//!    never `Ok` with other content (CRC-32 catches every single-bit error).
//! 3. Robustness: arbitrary bytes, truncations, and mutations of valid
//!    encodings (with and without a repaired checksum, so that the field
//!    checks behind the checksum run too) never make a decoder panic.

use dfs_format::bitmap::BitmapBlockHeader;
use dfs_format::fragment::{BlockSums, FragmentHeader, FragmentKind, BLOCK_SUMS_OFFSET, MAX_OBJECT_PAYLOAD};
use dfs_format::journal::{JournalRecordHeader, RecordKind};
use dfs_format::layout::{Layout, MIN_MEMBER_SIZE};
use dfs_format::policy::{Policy, MAX_COPIES, MAX_DATA_SHARDS, MAX_PARITY_SHARDS};
use dfs_format::root::{CheckpointLocator, CheckpointRef, RootRecord};
use dfs_format::superblock::{choose_superblock, Superblock, SuperblockCopy, LABEL_LEN, SUPERBLOCK_LEN};
use dfs_format::{crc32, MAX_EXTENT_LEN};
use proptest::prelude::*;
use uuid::Uuid;

// ---------------------------------------------------------------- strategies

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<[u8; 16]>().prop_map(Uuid::from_bytes)
}

fn non_nil_uuid() -> impl Strategy<Value = Uuid> {
    uuid().prop_filter("nil uuid", |u| !u.is_nil())
}

/// A block size a member may use: 4096..=65536, a power of two.
fn block_size() -> impl Strategy<Value = u32> {
    (12u32..=16).prop_map(|s| 1 << s)
}

/// Any block size a caller could pass, valid or not.
fn any_block_size() -> impl Strategy<Value = u32> {
    prop_oneof![block_size(), any::<u32>(), 0u32..=128]
}

/// Member sizes from the minimum to the whole u64 range, biased to small ones.
fn member_size() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => MIN_MEMBER_SIZE..=(64u64 << 30),
        1 => MIN_MEMBER_SIZE..=u64::MAX,
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    prop_oneof![
        (1..=MAX_COPIES).prop_map(|copies| Policy::Replication { copies }),
        (1..=MAX_DATA_SHARDS, 1..=MAX_PARITY_SHARDS).prop_map(|(data, parity)| Policy::Erasure { data, parity }),
    ]
}

/// Labels up to 48 characters of any Unicode (1 to 4 bytes each, NUL
/// included), so they often exceed 64 bytes and cut a multibyte character.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(any::<char>(), 0..48).prop_map(|v| v.into_iter().collect()),
        "[a-z0-9_-]{0,70}",
        "[é€😀a]{0,40}",
    ]
}

/// What the label reads back as, computed independently of the crate: the
/// text before the first NUL, cut to whole characters within 64 bytes.
fn expected_label(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c == '\0' || out.len() + c.len_utf8() > LABEL_LEN {
            break;
        }
        out.push(c);
    }
    out
}

prop_compose! {
    fn superblock()(
        size in member_size(),
        bs in block_size(),
        pool_uuid in non_nil_uuid(),
        member_uuid in non_nil_uuid(),
        member_index in any::<u32>(),
        compat in any::<u64>(),
        ro_compat in any::<u64>(),
        created_ns in any::<u64>(),
        update_seq in any::<u64>(),
        default_policy in policy(),
        label in label(),
    ) -> Superblock {
        Superblock {
            compat,
            ro_compat,
            incompat: 0,
            pool_uuid,
            member_uuid,
            member_index,
            layout: Layout::compute(size, bs).expect("sizes >= 32 MiB have a layout"),
            created_ns,
            update_seq,
            default_policy,
            label,
        }
    }
}

fn copy() -> impl Strategy<Value = SuperblockCopy> {
    prop_oneof![Just(SuperblockCopy::Primary), Just(SuperblockCopy::Backup)]
}

prop_compose! {
    fn checkpoint()(
        id in uuid(),
        len in any::<u64>(),
        blake3 in any::<[u8; 32]>(),
        locs in proptest::collection::vec((any::<u32>(), any::<u64>(), any::<u64>()), 1..=3),
    ) -> CheckpointRef {
        CheckpointRef {
            id,
            len,
            blake3,
            copies: locs
                .into_iter()
                .map(|(member_index, offset, extra)| CheckpointLocator {
                    member_index,
                    offset,
                    // A copy is never shorter than the checkpoint.
                    len: len.saturating_add(extra),
                })
                .collect(),
        }
    }
}

prop_compose! {
    fn root()(
        pool_uuid in uuid(),
        generation in any::<u64>(),
        timestamp_ns in any::<u64>(),
        journal_seq in any::<u64>(),
        journal_block_size in block_size(),
        (blocks, at) in (1u64..=(u64::MAX >> 16), any::<u64>()),
        member_count in any::<u32>(),
        checkpoint in proptest::option::of(checkpoint()),
    ) -> RootRecord {
        let jbs = journal_block_size as u64;
        RootRecord {
            pool_uuid,
            generation,
            timestamp_ns,
            journal_seq,
            // A block-aligned position inside a journal of whole blocks.
            journal_offset: at % blocks * jbs,
            member_count,
            journal_len: blocks * jbs,
            journal_block_size,
            checkpoint,
        }
    }
}

prop_compose! {
    /// A header built by `JournalRecordHeader::new`, with its payload and block size.
    fn journal()(
        wrap in any::<bool>(),
        seq in any::<u64>(),
        pool in uuid(),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
        prev in any::<u32>(),
        ts in any::<u64>(),
        bs in block_size(),
    ) -> (JournalRecordHeader, Vec<u8>, u32) {
        let (kind, payload) = if wrap {
            (RecordKind::Wrap, Vec::new())
        } else {
            (RecordKind::Transaction, payload)
        };
        let h = JournalRecordHeader::new(kind, 1, seq, pool, &payload, prev, ts, bs);
        (h, payload, bs)
    }
}

prop_compose! {
    fn fragment()(
        checkpoint in any::<bool>(),
        policy in policy(),
        index_seed in any::<u16>(),
        pool_uuid in uuid(),
        extent_uuid in uuid(),
        len_seed in (any::<u32>(), any::<u32>()),
        generation in any::<u64>(),
        created_ns in any::<u64>(),
        payload_blake3 in any::<[u8; 32]>(),
        extent_blake3 in any::<[u8; 32]>(),
    ) -> FragmentHeader {
        let (kind, max) = if checkpoint {
            (FragmentKind::Checkpoint, MAX_OBJECT_PAYLOAD)
        } else {
            (FragmentKind::Extent, MAX_EXTENT_LEN)
        };
        let count = policy.fragment_count() as u16;
        FragmentHeader {
            kind,
            pool_uuid,
            extent_uuid,
            fragment_index: index_seed % count,
            fragment_count: count,
            policy,
            payload_len: 1 + len_seed.0 % max,
            extent_len: 1 + len_seed.1 % max,
            generation,
            created_ns,
            payload_blake3,
            extent_blake3,
        }
    }
}

/// An extent fragment header and a table of the right size for it.
fn fragment_with_sums() -> impl Strategy<Value = (FragmentHeader, BlockSums)> {
    (fragment(), any::<u64>()).prop_map(|(mut f, seed)| {
        f.kind = FragmentKind::Extent;
        f.payload_len = 1 + (f.payload_len - 1) % MAX_EXTENT_LEN;
        f.extent_len = 1 + (f.extent_len - 1) % MAX_EXTENT_LEN;
        let n = BlockSums::pieces(f.payload_len);
        let sums = (0..n as u64).map(|i| (seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes()).collect();
        (f, BlockSums::new(sums))
    })
}

/// `len` pseudo-random bytes from `seed` (xorshift64*, eight bytes a step),
/// with density 0 (all clear), 1 (about 1/8 of the bits set), 2 (1/2),
/// 3 (7/8) or 4 (all set): cheap enough for 64 KiB blocks in a debug build.
fn filled(len: usize, seed: u64, density: u8) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        let w = match density {
            0 => 0,
            1 => next() & next() & next(),
            2 => next(),
            3 => next() | next() | next(),
            _ => u64::MAX,
        };
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Byte buffers of 0..8192 bytes: small ones fully arbitrary, large ones seeded.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600),
        (0usize..8192, any::<u64>(), 0u8..=4).prop_map(|(n, s, d)| filled(n, s, d)),
    ]
}

prop_compose! {
    /// A bitmap block header, the block size and bits of the right length.
    fn bitmap()(
        bs in block_size(),
        pool_uuid in uuid(),
        index in any::<u64>(),
        generation in any::<u64>(),
        seed in any::<u64>(),
        density in 0u8..=4,
    ) -> (BitmapBlockHeader, u32, Vec<u8>) {
        let bits = filled(bs as usize - 64, seed, density);
        let used_bits = bits.iter().map(|b| b.count_ones() as u64).sum();
        (BitmapBlockHeader { pool_uuid, index, generation, used_bits }, bs, bits)
    }
}

// ------------------------------------------------------------------ helpers

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    let bit = bit % (v.len() * 8);
    v[bit / 8] ^= 1 << (bit % 8);
    v
}

/// Overwrite some bytes, then (optionally) repair a trailing CRC-32 over
/// everything before it, so the decoder gets past its checksum.
fn mutate(bytes: &[u8], edits: &[(usize, u8)], fix_crc: bool) -> Vec<u8> {
    let mut v = bytes.to_vec();
    for &(at, b) in edits {
        let i = at % v.len();
        v[i] = b;
    }
    if fix_crc {
        let n = v.len() - 4;
        let c = crc32(&v[..n]);
        v[n..].copy_from_slice(&c.to_le_bytes());
    }
    v
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)
}

/// Feed one buffer to every decoder; only the absence of a panic is checked.
fn decode_all(bytes: &[u8], bs: u32) {
    let _ = Superblock::decode(bytes);
    let _ = dfs_format::root::RootRecord::decode(bytes);
    let _ = JournalRecordHeader::decode(bytes, bs);
    let _ = FragmentHeader::decode(bytes);
    let _ = FragmentHeader::decode_with_sums(bytes);
    let _ = BitmapBlockHeader::decode_block(bytes, bs);
    if bytes.len() >= 4 {
        let _ = Policy::decode([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    let _ = choose_superblock(bytes, Some(bytes));
    let _ = choose_superblock(bytes, None);
    let _ = choose_superblock(&[], Some(bytes));
    if let Ok(s) = std::str::from_utf8(bytes) {
        let _ = s.parse::<Policy>();
    }
}

// -------------------------------------------------------------- round trips

proptest! {
    #[test]
    fn superblock_roundtrip(sb in superblock(), copy in copy()) {
        let bytes = sb.encode(copy);
        prop_assert_eq!(bytes.len(), SUPERBLOCK_LEN);
        let (back, back_copy) = Superblock::decode(&bytes).unwrap();
        let mut want = sb.clone();
        want.label = expected_label(&sb.label);
        prop_assert_eq!(back_copy, copy);
        prop_assert_eq!(&back, &want);
        prop_assert_eq!(back.needs_read_only(), sb.ro_compat != 0);
        // Re-encoding what was read gives the same bytes.
        prop_assert_eq!(back.encode(copy), bytes);
    }

    #[test]
    fn superblock_pair_is_chosen_cleanly(sb in superblock()) {
        let p = sb.encode(SuperblockCopy::Primary);
        let b = sb.encode(SuperblockCopy::Backup);
        let c = choose_superblock(&p, Some(&b)).unwrap();
        prop_assert_eq!(c.from, SuperblockCopy::Primary);
        prop_assert!(!c.needs_repair());
        prop_assert_eq!(c.superblock.layout, sb.layout);
    }

    #[test]
    fn root_roundtrip(r in root()) {
        let bytes = r.encode();
        prop_assert_eq!(RootRecord::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn journal_roundtrip((h, payload, bs) in journal()) {
        let bytes = h.encode();
        let back = JournalRecordHeader::decode(&bytes, bs).unwrap();
        prop_assert_eq!(&back, &h);
        back.verify_payload(&payload).unwrap();
        prop_assert_eq!(
            back.block_count as u64,
            (64 + payload.len() as u64).div_ceil(bs as u64)
        );
        prop_assert_eq!(back.header_crc32, crc32(&bytes[..60]));
    }

    #[test]
    fn journal_payload_bit_flip_is_caught((h, payload, _bs) in journal(), bit in any::<usize>()) {
        prop_assume!(!payload.is_empty());
        prop_assert!(h.verify_payload(&flip(&payload, bit)).is_err());
    }

    #[test]
    fn fragment_roundtrip(f in fragment()) {
        let bytes = f.encode();
        prop_assert_eq!(FragmentHeader::decode(&bytes).unwrap(), f);
    }

    #[test]
    fn fragment_with_block_sums_roundtrip((f, sums) in fragment_with_sums()) {
        let block = f.encode_with_sums(&sums).unwrap();
        prop_assert_eq!(block.len(), BLOCK_SUMS_OFFSET + 8 * sums.len());
        prop_assert_eq!(FragmentHeader::decode_with_sums(&block).unwrap(), (f.clone(), Some(sums.clone())));
        // An older reader's decode sees the same header and ignores the table.
        prop_assert_eq!(FragmentHeader::decode(&block).unwrap(), f.clone());
        // Zero padding after the table (the rest of the block) changes nothing.
        let mut padded = block.clone();
        padded.resize(4096, 0);
        prop_assert_eq!(FragmentHeader::decode_with_sums(&padded).unwrap(), (f.clone(), Some(sums)));
        // A header written without a table has none.
        prop_assert_eq!(FragmentHeader::decode_with_sums(&f.encode()).unwrap(), (f, None));
    }

    #[test]
    fn block_sums_only_for_extents_and_of_the_right_count(f in fragment(), extra in 1usize..4) {
        let n = BlockSums::pieces(f.payload_len);
        let right = BlockSums::new(vec![[7u8; 8]; n]);
        match f.kind {
            FragmentKind::Checkpoint => prop_assert!(f.encode_with_sums(&right).is_err()),
            FragmentKind::Extent => {
                prop_assert!(f.encode_with_sums(&right).is_ok());
                prop_assert!(f.encode_with_sums(&BlockSums::new(vec![[7u8; 8]; n + extra])).is_err());
                prop_assert!(f.encode_with_sums(&BlockSums::new(vec![[7u8; 8]; n - 1])).is_err());
            }
        }
    }

    #[test]
    fn block_sums_bit_flip_is_an_error((f, sums) in fragment_with_sums(), bit in any::<usize>()) {
        // Anywhere in header or table: the header crc or the table crc.
        let block = f.encode_with_sums(&sums).unwrap();
        prop_assert!(FragmentHeader::decode_with_sums(&flip(&block, bit)).is_err());
    }

    #[test]
    fn truncated_block_sums_are_too_short((f, sums) in fragment_with_sums(), cut in any::<usize>()) {
        let block = f.encode_with_sums(&sums).unwrap();
        let n = cut % block.len();
        prop_assert!(FragmentHeader::decode_with_sums(&block[..n]).is_err());
    }

    #[test]
    fn mutated_block_sums_never_panic((f, sums) in fragment_with_sums(), e in edits(), fix in any::<bool>()) {
        let mut v = f.encode_with_sums(&sums).unwrap();
        for &(at, b) in &e {
            let i = at % v.len();
            v[i] = b;
        }
        if fix {
            // Reseal the table crc (bytes 148..152) and then the header crc,
            // so the count and table checks behind them run too.
            let n = u16::from_le_bytes([v[146], v[147]]) as usize;
            if let Some(table) = v.get(BLOCK_SUMS_OFFSET..BLOCK_SUMS_OFFSET + 8 * n) {
                let c = crc32(table);
                v[148..152].copy_from_slice(&c.to_le_bytes());
            }
            let c = crc32(&v[..252]);
            v[252..256].copy_from_slice(&c.to_le_bytes());
        }
        if let Ok((h, Some(t))) = FragmentHeader::decode_with_sums(&v) {
            prop_assert_eq!(t.len(), BlockSums::pieces(h.payload_len));
            prop_assert_eq!(h.kind, FragmentKind::Extent);
        }
    }

    #[test]
    fn bitmap_roundtrip((h, bs, bits) in bitmap()) {
        let block = h.encode_block(bs, &bits).unwrap();
        prop_assert_eq!(block.len(), bs as usize);
        let (back, back_bits) = BitmapBlockHeader::decode_block(&block, bs).unwrap();
        prop_assert_eq!(back, h);
        prop_assert_eq!(back_bits, &bits[..]);
    }

    #[test]
    fn policy_roundtrip(p in policy()) {
        prop_assert_eq!(Policy::decode(p.encode()).unwrap(), p);
        prop_assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
    }

    #[test]
    fn layout_compute_is_valid(size in member_size(), bs in block_size()) {
        let l = Layout::compute(size, bs).unwrap();
        l.validate().unwrap();
        prop_assert_eq!(l.size, size / bs as u64 * bs as u64);
    }
}

// ------------------------------------------------------ one bit flip → error

proptest! {
    #[test]
    fn superblock_bit_flip_is_an_error(sb in superblock(), copy in copy(), bit in any::<usize>()) {
        let bad = flip(&sb.encode(copy), bit);
        prop_assert!(Superblock::decode(&bad).is_err());
    }

    #[test]
    fn chooser_survives_a_flip_in_either_copy(sb in superblock(), bit in any::<usize>(), which in any::<bool>()) {
        let p = sb.encode(SuperblockCopy::Primary);
        let b = sb.encode(SuperblockCopy::Backup);
        let c = if which {
            choose_superblock(&flip(&p, bit), Some(&b)).unwrap()
        } else {
            choose_superblock(&p, Some(&flip(&b, bit))).unwrap()
        };
        prop_assert_eq!(c.from, if which { SuperblockCopy::Backup } else { SuperblockCopy::Primary });
        prop_assert!(c.needs_repair());
        prop_assert_eq!(c.superblock.pool_uuid, sb.pool_uuid);
        prop_assert_eq!(c.superblock.layout, sb.layout);
    }

    #[test]
    fn root_bit_flip_is_an_error(r in root(), bit in any::<usize>()) {
        prop_assert!(RootRecord::decode(&flip(&r.encode(), bit)).is_err());
    }

    #[test]
    fn journal_bit_flip_is_an_error((h, _p, bs) in journal(), bit in any::<usize>()) {
        prop_assert!(JournalRecordHeader::decode(&flip(&h.encode(), bit), bs).is_err());
    }

    #[test]
    fn fragment_bit_flip_is_an_error(f in fragment(), bit in any::<usize>()) {
        prop_assert!(FragmentHeader::decode(&flip(&f.encode(), bit)).is_err());
    }

    #[test]
    fn bitmap_bit_flip_is_an_error((h, bs, bits) in bitmap(), bit in any::<usize>()) {
        let block = h.encode_block(bs, &bits).unwrap();
        prop_assert!(BitmapBlockHeader::decode_block(&flip(&block, bit), bs).is_err());
    }
}

// ---------------------------------------------------------- never a panic

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in bytes(),
        bs in any_block_size(),
    ) {
        decode_all(&bytes, bs);
    }

    #[test]
    fn magic_prefixed_garbage_never_panics(
        magic in prop_oneof![
            Just(&b"DYNFS_SB"[..]),
            Just(&b"DYNFS_RT"[..]),
            Just(&b"DJRN"[..]),
            Just(&b"DYNFS_FR"[..]),
            Just(&b"DYNFS_BM"[..]),
        ],
        rest in bytes(),
        fix_crc in any::<bool>(),
        bs in any_block_size(),
    ) {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&rest);
        decode_all(&bytes, bs);
        for len in [64usize, 256, 512] {
            if bytes.len() >= len {
                decode_all(&mutate(&bytes[..len], &[], fix_crc), bs);
            }
        }
    }

    #[test]
    fn truncated_encodings_never_panic(
        sb in superblock(),
        r in root(),
        (h, _p, jbs) in journal(),
        f in fragment(),
        cut in any::<usize>(),
    ) {
        for bytes in [&sb.encode(SuperblockCopy::Primary)[..], &r.encode()[..], &h.encode()[..], &f.encode()[..]] {
            let n = cut % (bytes.len() + 1);
            decode_all(&bytes[..n], jbs);
            if n < bytes.len() {
                prop_assert!(Superblock::decode(&bytes[..n]).is_err());
                prop_assert!(RootRecord::decode(&bytes[..n]).is_err());
                prop_assert!(JournalRecordHeader::decode(&bytes[..n], jbs).is_err());
                prop_assert!(FragmentHeader::decode(&bytes[..n]).is_err());
            }
        }
    }

    #[test]
    fn mutated_superblock_never_panics(sb in superblock(), e in edits(), fix in any::<bool>()) {
        let bytes = sb.encode(SuperblockCopy::Primary);
        let bad = mutate(&bytes, &e, fix);
        let _ = Superblock::decode(&bad);
        let _ = choose_superblock(&bad, Some(&sb.encode(SuperblockCopy::Backup)));
        let _ = choose_superblock(&bytes, Some(&bad));
    }

    #[test]
    fn mutated_root_never_panics(r in root(), e in edits(), fix in any::<bool>()) {
        let _ = RootRecord::decode(&mutate(&r.encode(), &e, fix));
    }

    #[test]
    fn mutated_journal_never_panics((h, p, bs) in journal(), e in edits(), fix in any::<bool>(), dbs in any_block_size()) {
        let bad = mutate(&h.encode(), &e, fix);
        if let Ok(back) = JournalRecordHeader::decode(&bad, bs) {
            let _ = back.verify_payload(&p);
        }
        let _ = JournalRecordHeader::decode(&bad, dbs);
    }

    #[test]
    fn mutated_fragment_never_panics(f in fragment(), e in edits(), fix in any::<bool>()) {
        let _ = FragmentHeader::decode(&mutate(&f.encode(), &e, fix));
    }

    #[test]
    fn mutated_bitmap_never_panics((h, bs, bits) in bitmap(), e in edits(), fix in any::<bool>(), dbs in any_block_size()) {
        let mut block = h.encode_block(bs, &bits).unwrap();
        for &(at, b) in &e {
            let i = at % block.len();
            block[i] = b;
        }
        if fix {
            let c = bitmap_crc(&block[..60], &block[64..]);
            block[60..64].copy_from_slice(&c.to_le_bytes());
        }
        let _ = BitmapBlockHeader::decode_block(&block, bs);
        let _ = BitmapBlockHeader::decode_block(&block, dbs);
    }

    #[test]
    fn policy_text_never_panics(s in "\\PC{0,24}", t in "(replication|erasure|raid)?:?[0-9+]{0,8}") {
        let _ = s.parse::<Policy>();
        let _ = t.parse::<Policy>();
    }

    #[test]
    fn policy_bytes_never_panic(b in any::<[u8; 4]>()) {
        if let Ok(p) = Policy::decode(b) {
            prop_assert_eq!(p.encode(), b);
        }
    }
}

/// CRC-32 of the bitmap header (minus its crc) followed by the bits.
fn bitmap_crc(header: &[u8], bits: &[u8]) -> u32 {
    let mut all = header.to_vec();
    all.extend_from_slice(bits);
    crc32(&all)
}

// ------------------------------------------- regressions found by the above

/// `superblock_roundtrip` found that a label with a NUL inside was written
/// whole but read back only up to the NUL (NUL is the on-disk terminator).
/// `truncate_label` now cuts at the first NUL, so encode and decode agree.
#[test]
fn regression_label_with_nul() {
    let sb = Superblock {
        compat: 0,
        ro_compat: 0,
        incompat: 0,
        pool_uuid: Uuid::from_u128(1),
        member_uuid: Uuid::from_u128(1),
        member_index: 0,
        layout: Layout::compute(MIN_MEMBER_SIZE, 4096).unwrap(),
        created_ns: 0,
        update_seq: 0,
        default_policy: Policy::Replication { copies: 1 },
        label: "\0¡".into(),
    };
    let (back, _) = Superblock::decode(&sb.encode(SuperblockCopy::Primary)).unwrap();
    assert_eq!(back.label, "");
    assert_eq!(dfs_format::superblock::truncate_label("ab\0cd"), "ab");
}

/// `mutated_journal_never_panics` found that `JournalRecordHeader::decode`
/// divided by the caller's block size: 0 panicked. It is now an error.
#[test]
fn regression_journal_block_size_zero() {
    let h = JournalRecordHeader::new(RecordKind::Transaction, 1, 0, Uuid::nil(), &[7; 778], 0, 0, 4096);
    for bs in [0, 1, 64, 4095, 6000, 1 << 17] {
        assert!(JournalRecordHeader::decode(&h.encode(), bs).is_err());
        assert!(BitmapBlockHeader::decode_block(&[0; 8192], bs).is_err());
    }
}
