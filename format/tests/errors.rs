//! Each way a struct can be bad yields the typed error FORMAT.md promises:
//! short buffer → `TooShort`, wrong magic → `BadMagic`, a damaged byte →
//! `BadChecksum`, a newer version (with a valid checksum) →
//! `UnsupportedVersion`, an unknown incompat feature → `UnknownIncompat`; an
//! unknown ro_compat feature still decodes but asks for a read-only open.
//! Then the superblock chooser, case by case.

use dfs_format::bitmap::BitmapBlockHeader;
use dfs_format::fragment::{FragmentHeader, FragmentKind};
use dfs_format::journal::{JournalRecordHeader, RecordKind};
use dfs_format::layout::Layout;
use dfs_format::policy::Policy;
use dfs_format::root::{best_root, CheckpointLocator, CheckpointRef, RootRecord};
use dfs_format::superblock::{choose_superblock, Superblock, SuperblockCopy};
use dfs_format::{crc32, FormatError};
use uuid::Uuid;

const BS: u32 = 4096;
const POOL: Uuid = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
const MEMBER: Uuid = Uuid::from_u128(0x9999_aaaa_bbbb_cccc_dddd_eeee_ffff_0001);

fn superblock() -> Superblock {
    Superblock {
        compat: 0,
        ro_compat: 0,
        incompat: 0,
        pool_uuid: POOL,
        member_uuid: MEMBER,
        member_index: 2,
        layout: Layout::compute(1 << 30, BS).unwrap(),
        created_ns: 1_700_000_000_000_000_000,
        update_seq: 5,
        default_policy: Policy::Erasure { data: 4, parity: 2 },
        label: "errors".into(),
    }
}

fn root() -> RootRecord {
    RootRecord {
        pool_uuid: POOL,
        generation: 9,
        timestamp_ns: 1,
        journal_seq: 100,
        journal_offset: 8 * BS as u64,
        member_count: 3,
        journal_len: 4 << 20,
        journal_block_size: BS,
        checkpoint: Some(CheckpointRef {
            id: Uuid::from_u128(42),
            len: 5000,
            blake3: [0xab; 32],
            copies: vec![CheckpointLocator { member_index: 1, offset: 1 << 24, len: 8192 }],
        }),
    }
}

fn journal() -> JournalRecordHeader {
    JournalRecordHeader::new(RecordKind::Transaction, 1, 100, POOL, b"payload", 0xdead_beef, 7, BS)
}

fn fragment() -> FragmentHeader {
    FragmentHeader {
        kind: FragmentKind::Extent,
        pool_uuid: POOL,
        extent_uuid: Uuid::from_u128(7),
        fragment_index: 1,
        fragment_count: 3,
        policy: Policy::Replication { copies: 3 },
        payload_len: 1 << 20,
        extent_len: 1 << 20,
        generation: 12,
        created_ns: 13,
        payload_blake3: [1; 32],
        extent_blake3: [2; 32],
    }
}

fn bitmap_block() -> Vec<u8> {
    let mut bits = vec![0u8; BS as usize - 64];
    bits[0] = 0b1011;
    BitmapBlockHeader { pool_uuid: POOL, index: 0, generation: 9, used_bits: 3 }.encode_block(BS, &bits).unwrap()
}

/// Recompute the CRC-32 in the last 4 bytes of a struct (over all before it).
fn reseal(bytes: &mut [u8]) {
    let n = bytes.len() - 4;
    let c = crc32(&bytes[..n]);
    bytes[n..].copy_from_slice(&c.to_le_bytes());
}

/// Recompute a bitmap block's CRC-32 (header minus crc, then the bits).
fn reseal_bitmap(block: &mut [u8]) {
    let mut covered = block[..60].to_vec();
    covered.extend_from_slice(&block[64..]);
    let c = crc32(&covered);
    block[60..64].copy_from_slice(&c.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Decoders of the five structs over one buffer, as `Result<(), FormatError>`.
type Decode = fn(&[u8]) -> Result<(), FormatError>;

fn decoders() -> [(&'static str, Vec<u8>, Decode); 5] {
    [
        ("superblock", superblock().encode(SuperblockCopy::Primary).to_vec(), |b| Superblock::decode(b).map(|_| ())),
        ("root", root().encode().to_vec(), |b| RootRecord::decode(b).map(|_| ())),
        ("journal", journal().encode().to_vec(), |b| JournalRecordHeader::decode(b, BS).map(|_| ())),
        ("fragment", fragment().encode().to_vec(), |b| FragmentHeader::decode(b).map(|_| ())),
        ("bitmap", bitmap_block(), |b| BitmapBlockHeader::decode_block(b, BS).map(|_| ())),
    ]
}

#[test]
fn valid_encodings_decode() {
    for (name, bytes, decode) in decoders() {
        assert_eq!(decode(&bytes), Ok(()), "{name}");
    }
}

#[test]
fn short_buffer_is_too_short() {
    for (name, bytes, decode) in decoders() {
        for n in [0, 3, 8, 63, bytes.len() - 1] {
            let e = decode(&bytes[..n]).unwrap_err();
            assert!(matches!(e, FormatError::TooShort { got, .. } if got == n), "{name} cut to {n}: {e:?}");
        }
    }
}

#[test]
fn wrong_magic_is_bad_magic() {
    for (name, bytes, decode) in decoders() {
        let mut b = bytes.clone();
        b[0] ^= 0x20;
        let e = decode(&b).unwrap_err();
        assert!(matches!(e, FormatError::BadMagic { .. }), "{name}: {e:?}");
        // An all-zero block (a never-written root slot, a trimmed block) too.
        let e = decode(&vec![0; bytes.len()]).unwrap_err();
        assert!(matches!(e, FormatError::BadMagic { .. }), "{name} zeroed: {e:?}");
    }
}

#[test]
fn flipped_byte_is_bad_checksum() {
    for (name, bytes, decode) in decoders() {
        // Any byte after magic and version, including the stored crc itself.
        for at in [16, 40, 60, bytes.len() / 2, bytes.len() - 1] {
            let mut b = bytes.clone();
            b[at] ^= 0x01;
            let e = decode(&b).unwrap_err();
            assert!(matches!(e, FormatError::BadChecksum { .. }), "{name} byte {at}: {e:?}");
        }
    }
}

#[test]
fn version_2_is_unsupported() {
    for (name, bytes, decode) in decoders() {
        let mut b = bytes.clone();
        if name == "journal" {
            // The journal header's version is a u16 at byte 4.
            b[4..6].copy_from_slice(&2u16.to_le_bytes());
            reseal(&mut b);
        } else {
            put_u32(&mut b, 8, 2);
            if name == "bitmap" {
                reseal_bitmap(&mut b);
            } else {
                reseal(&mut b);
            }
        }
        let e = decode(&b).unwrap_err();
        assert!(matches!(e, FormatError::UnsupportedVersion { found: 2, supported: 1, .. }), "{name}: {e:?}");
    }
}

#[test]
fn version_0_is_unsupported() {
    let mut b = superblock().encode(SuperblockCopy::Primary);
    put_u32(&mut b, 8, 0);
    reseal(&mut b);
    assert!(matches!(Superblock::decode(&b), Err(FormatError::UnsupportedVersion { found: 0, .. })));
}

#[test]
fn unknown_incompat_refuses() {
    let mut b = superblock().encode(SuperblockCopy::Primary);
    put_u64(&mut b, 32, 1 << 5);
    reseal(&mut b);
    assert_eq!(Superblock::decode(&b).unwrap_err(), FormatError::UnknownIncompat { what: "superblock", bits: 1 << 5 });
}

#[test]
fn unknown_ro_compat_means_read_only() {
    let mut b = superblock().encode(SuperblockCopy::Primary);
    put_u64(&mut b, 24, 1 << 3);
    reseal(&mut b);
    let (sb, _) = Superblock::decode(&b).unwrap();
    assert_eq!(sb.ro_compat, 1 << 3);
    assert!(sb.needs_read_only());
}

#[test]
fn unknown_compat_is_ignored() {
    let mut b = superblock().encode(SuperblockCopy::Primary);
    put_u64(&mut b, 16, u64::MAX);
    reseal(&mut b);
    let (sb, _) = Superblock::decode(&b).unwrap();
    assert_eq!(sb.compat, u64::MAX);
    assert!(!sb.needs_read_only());
}

#[test]
fn impossible_fields_are_invalid() {
    let invalid = |e: FormatError, field: &str| {
        assert!(matches!(&e, FormatError::Invalid { field: f, .. } if *f == field), "want Invalid {field}: {e:?}")
    };
    // Superblock: a block size that is not a power of two.
    let mut b = superblock().encode(SuperblockCopy::Primary);
    put_u32(&mut b, 76, 6000);
    reseal(&mut b);
    invalid(Superblock::decode(&b).unwrap_err(), "block_size");
    // Superblock: nil pool UUID.
    let mut b = superblock().encode(SuperblockCopy::Primary);
    b[40..56].fill(0);
    reseal(&mut b);
    invalid(Superblock::decode(&b).unwrap_err(), "uuid");
    // Superblock: an invalid policy byte.
    let mut b = superblock().encode(SuperblockCopy::Primary);
    b[108] = 9;
    reseal(&mut b);
    invalid(Superblock::decode(&b).unwrap_err(), "encoding");
    // Superblock: overlapping regions (journal starts inside the root ring).
    let mut b = superblock().encode(SuperblockCopy::Primary);
    put_u64(&mut b, 176 + 2 * 32 + 8, 2 * BS as u64);
    reseal(&mut b);
    invalid(Superblock::decode(&b).unwrap_err(), "journal");
    // Root: more than three checkpoint copies.
    let mut b = root().encode();
    put_u32(&mut b, 64, 4);
    reseal(&mut b);
    invalid(RootRecord::decode(&b).unwrap_err(), "checkpoint_copies");
    // Journal: unknown kind.
    let mut b = journal().encode();
    b[6] = 9;
    reseal(&mut b);
    invalid(JournalRecordHeader::decode(&b, BS).unwrap_err(), "kind");
    // Journal: block count that does not match the payload length.
    let mut b = journal().encode();
    put_u32(&mut b, 44, 2);
    reseal(&mut b);
    invalid(JournalRecordHeader::decode(&b, BS).unwrap_err(), "block_count");
    // Fragment: index outside the policy's fragment count.
    let mut b = fragment().encode();
    b[48..50].copy_from_slice(&3u16.to_le_bytes());
    reseal(&mut b);
    invalid(FragmentHeader::decode(&b).unwrap_err(), "fragment_index");
    // Fragment: an extent fragment larger than 1 MiB.
    let mut b = fragment().encode();
    put_u32(&mut b, 56, (1 << 20) + 1);
    reseal(&mut b);
    invalid(FragmentHeader::decode(&b).unwrap_err(), "length");
    // Bitmap: used_bits disagrees with the bits.
    let mut b = bitmap_block();
    put_u64(&mut b, 48, 4);
    reseal_bitmap(&mut b);
    invalid(BitmapBlockHeader::decode_block(&b, BS).unwrap_err(), "used_bits");
    // Bitmap: decoded with another block size than it was written with.
    let mut big = bitmap_block();
    big.resize(2 * BS as usize, 0);
    assert!(BitmapBlockHeader::decode_block(&big, 2 * BS).is_err());
}

// ---------------------------------------------------------- choose_superblock

#[test]
fn both_copies_good_primary_wins_without_repair() {
    let sb = superblock();
    let c = choose_superblock(&sb.encode(SuperblockCopy::Primary), Some(&sb.encode(SuperblockCopy::Backup))).unwrap();
    assert_eq!(c.from, SuperblockCopy::Primary);
    assert_eq!(c.superblock, sb);
    assert!(!c.needs_repair());
}

#[test]
fn primary_garbage_backup_wins() {
    let sb = superblock();
    let c = choose_superblock(&[0x5a; 4096], Some(&sb.encode(SuperblockCopy::Backup))).unwrap();
    assert_eq!(c.from, SuperblockCopy::Backup);
    assert_eq!(c.superblock, sb);
    assert!(matches!(c.primary_error, Some(FormatError::BadMagic { .. })));
    assert!(c.backup_error.is_none());
    assert!(c.needs_repair());

    // A damaged (rather than foreign) primary: checksum error, same outcome.
    let mut p = sb.encode(SuperblockCopy::Primary);
    p[200] ^= 0x80;
    let c = choose_superblock(&p, Some(&sb.encode(SuperblockCopy::Backup))).unwrap();
    assert_eq!(c.from, SuperblockCopy::Backup);
    assert!(matches!(c.primary_error, Some(FormatError::BadChecksum { .. })));
}

#[test]
fn stale_backup_primary_wins() {
    let sb = superblock();
    let mut old = sb.clone();
    old.update_seq -= 1;
    let c = choose_superblock(&sb.encode(SuperblockCopy::Primary), Some(&old.encode(SuperblockCopy::Backup))).unwrap();
    assert_eq!(c.from, SuperblockCopy::Primary);
    assert_eq!(c.superblock.update_seq, sb.update_seq);
    assert!(c.primary_error.is_none());
    assert!(matches!(c.backup_error, Some(FormatError::Invalid { field: "update_seq", .. })));
}

#[test]
fn newer_backup_wins() {
    // A crash between writing the backup and the primary (or a lost primary
    // write) leaves the backup newer: it wins and the primary is repaired.
    let sb = superblock();
    let mut new = sb.clone();
    new.update_seq += 1;
    new.label = "renamed".into();
    let c = choose_superblock(&sb.encode(SuperblockCopy::Primary), Some(&new.encode(SuperblockCopy::Backup))).unwrap();
    assert_eq!(c.from, SuperblockCopy::Backup);
    assert_eq!(c.superblock, new);
    assert!(c.primary_error.is_some());
    assert!(c.backup_error.is_none());
}

#[test]
fn backup_of_another_member_is_rejected() {
    let sb = superblock();
    let mut other = sb.clone();
    other.member_uuid = Uuid::from_u128(3);
    other.update_seq += 10;
    let c =
        choose_superblock(&sb.encode(SuperblockCopy::Primary), Some(&other.encode(SuperblockCopy::Backup))).unwrap();
    assert_eq!(c.from, SuperblockCopy::Primary);
    assert_eq!(c.superblock, sb);
    assert!(c.backup_error.is_some());
}

#[test]
fn copies_in_the_wrong_place_are_rejected() {
    let sb = superblock();
    // Block 0 holding a backup copy, last block holding a primary copy.
    let b = sb.encode(SuperblockCopy::Backup);
    let p = sb.encode(SuperblockCopy::Primary);
    let c = choose_superblock(&p, Some(&p)).unwrap();
    assert_eq!(c.from, SuperblockCopy::Primary);
    assert!(c.backup_error.is_some());
    let c = choose_superblock(&b, Some(&b)).unwrap();
    assert_eq!(c.from, SuperblockCopy::Backup);
    assert!(c.primary_error.is_some());
}

#[test]
fn missing_backup_is_reported() {
    let sb = superblock();
    let c = choose_superblock(&sb.encode(SuperblockCopy::Primary), None).unwrap();
    assert_eq!(c.from, SuperblockCopy::Primary);
    assert!(matches!(c.backup_error, Some(FormatError::TooShort { .. })));
}

#[test]
fn both_bad_is_an_error() {
    let sb = superblock();
    let mut b = sb.encode(SuperblockCopy::Backup);
    b[300] ^= 1;
    // The primary's error is the one returned.
    let e = choose_superblock(&[0; 4096], Some(&b)).unwrap_err();
    assert!(matches!(e, FormatError::BadMagic { .. }), "{e:?}");
    assert!(choose_superblock(&[], None).is_err());
}

// -------------------------------------------------------------- best_root

#[test]
fn best_root_is_highest_generation_of_this_pool() {
    let mut a = root();
    a.generation = 10;
    let mut b = root();
    b.generation = 12;
    let mut foreign = root();
    foreign.pool_uuid = Uuid::from_u128(99);
    foreign.generation = 50;
    let all = [a.clone(), foreign, b.clone()];
    assert_eq!(best_root(POOL, &all), Some(&b));
    assert_eq!(best_root(Uuid::from_u128(5), &all), None);
    // A slot that fails to decode simply is not a candidate.
    let mut torn = b.encode();
    torn[100] ^= 4;
    assert!(RootRecord::decode(&torn).is_err());
}

#[test]
fn block_sum_table_errors_name_the_table() {
    use dfs_format::fragment::BlockSums;
    let f = fragment();
    let n = BlockSums::pieces(f.payload_len);
    let block = f.encode_with_sums(&BlockSums::new(vec![[0xa5; 8]; n])).unwrap();
    // A damaged entry: the table's own crc, not the header's.
    let mut b = block.clone();
    b[256 + 3] ^= 0x40;
    let e = FragmentHeader::decode_with_sums(&b).unwrap_err();
    assert!(matches!(e, FormatError::BadChecksum { what: "fragment block-sum table", .. }), "{e:?}");
    assert!(e.to_string().starts_with("fragment block-sum table: checksum mismatch"), "{e}");
    // Cut inside the table.
    let e = FragmentHeader::decode_with_sums(&block[..block.len() - 1]).unwrap_err();
    assert!(matches!(e, FormatError::TooShort { what: "fragment block-sum table", .. }), "{e:?}");
    // A count that does not fit the payload (resealed, so only the count is wrong).
    let mut b = block.clone();
    b[146..148].copy_from_slice(&((n + 1) as u16).to_le_bytes());
    reseal(&mut b[..256]);
    let e = FragmentHeader::decode_with_sums(&b).unwrap_err();
    assert!(matches!(e, FormatError::Invalid { field: "count", .. }), "{e:?}");
    // An unknown table kind (a later format's): ignored, read as no table.
    let mut b = block;
    b[145] = 9;
    reseal(&mut b[..256]);
    assert_eq!(FragmentHeader::decode_with_sums(&b).unwrap(), (f, None));
}
