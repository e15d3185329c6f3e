//! Golden bytes: each struct, built from fixed inputs (fixed UUIDs, times,
//! hashes), must encode to exactly the bytes committed under
//! `tests/golden/*.hex` (lowercase hex, 32 bytes per line), and those bytes
//! must decode to exactly those inputs. The second half is the promise that
//! every later version still reads version 1: when the format changes, add
//! new `*_v2.hex` files and keep these.
//!
//! `DFS_BLESS=1 cargo test -p dfs-format --test golden` (re)writes the files
//! from the current encoders. Only do that for a new file, never to make a
//! changed v1 encoding pass.

use dfs_format::bitmap::BitmapBlockHeader;
use dfs_format::fragment::{BlockSums, FragmentHeader, FragmentKind};
use dfs_format::journal::{JournalRecordHeader, RecordKind};
use dfs_format::layout::{Layout, Region, RegionKind};
use dfs_format::policy::Policy;
use dfs_format::root::{CheckpointLocator, CheckpointRef, RootRecord};
use dfs_format::superblock::{Superblock, SuperblockCopy};
use std::path::PathBuf;
use uuid::Uuid;

const POOL: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
const MEMBER: Uuid = Uuid::from_u128(0x4d45_4d42_4552_0001_8000_0000_0000_0001);
const EXTENT: Uuid = Uuid::from_u128(0x4558_5445_4e54_0001_8000_0000_0000_00aa);
const CHECKPOINT: Uuid = Uuid::from_u128(0x4348_4543_4b50_0001_8000_0000_0000_00cc);
/// 2023-11-14T22:13:20.123456789Z.
const T0: u64 = 1_700_000_000_123_456_789;
const BS: u32 = 4096;
const JOURNAL_PAYLOAD: &[u8] = b"golden journal payload v1";

fn bytes_pattern(seed: u8) -> [u8; 32] {
    std::array::from_fn(|i| seed.wrapping_add(i as u8 * 7))
}

/// A 64 MiB member with 4 KiB blocks, written out rather than computed, so
/// that a later mkfs layout does not change the v1 golden superblock.
fn golden_layout() -> Layout {
    let r = |kind, start, len| Region { kind, start, len };
    Layout {
        block_size: BS,
        size: 64 << 20,
        regions: [
            r(RegionKind::SuperblockPrimary, 0, 4096),
            r(RegionKind::RootRing, 4096, 128 * 4096),
            r(RegionKind::Journal, 1 << 20, 4 << 20),
            r(RegionKind::Bitmap, 5 << 20, 4096),
            r(RegionKind::Data, 6 << 20, (64 << 20) - (6 << 20) - 4096),
            r(RegionKind::SuperblockBackup, (64 << 20) - 4096, 4096),
        ],
    }
}

fn golden_superblock() -> Superblock {
    Superblock {
        compat: 0,
        ro_compat: 0,
        incompat: 0,
        pool_uuid: POOL,
        member_uuid: MEMBER,
        member_index: 1,
        layout: golden_layout(),
        created_ns: T0,
        update_seq: 3,
        default_policy: Policy::Erasure { data: 4, parity: 2 },
        label: "golden-v1 ünïcødé 😀".into(),
    }
}

fn golden_root() -> RootRecord {
    RootRecord {
        pool_uuid: POOL,
        generation: 17,
        timestamp_ns: T0 + 1_000,
        journal_seq: 4242,
        journal_offset: 12 * BS as u64,
        member_count: 3,
        journal_len: 4 << 20,
        journal_block_size: BS,
        checkpoint: Some(CheckpointRef {
            id: CHECKPOINT,
            len: 10_000,
            blake3: bytes_pattern(0xc0),
            copies: vec![
                CheckpointLocator { member_index: 0, offset: (6 << 20) + 4096, len: 12_288 },
                CheckpointLocator { member_index: 2, offset: (6 << 20) + 40_960, len: 12_288 },
            ],
        }),
    }
}

fn golden_journal() -> JournalRecordHeader {
    JournalRecordHeader::new(RecordKind::Transaction, 1, 4242, POOL, JOURNAL_PAYLOAD, 0x0bad_c0de, T0 + 2_000, BS)
}

fn golden_fragment() -> FragmentHeader {
    FragmentHeader {
        kind: FragmentKind::Extent,
        pool_uuid: POOL,
        extent_uuid: EXTENT,
        fragment_index: 5,
        fragment_count: 6,
        policy: Policy::Erasure { data: 4, parity: 2 },
        payload_len: 262_144,
        extent_len: 1 << 20,
        generation: 4243,
        created_ns: T0 + 3_000,
        payload_blake3: bytes_pattern(0x50),
        extent_blake3: bytes_pattern(0xe0),
    }
}

/// Data blocks 0..100 used, then every third block of 100..200.
fn golden_bits() -> Vec<u8> {
    let mut bits = vec![0u8; BS as usize - 64];
    for i in (0..100).chain((100..200).step_by(3)) {
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

fn golden_bitmap_header() -> BitmapBlockHeader {
    BitmapBlockHeader { pool_uuid: POOL, index: 0, generation: 17, used_bits: 134 }
}

// ---------------------------------------------------------------- hex files

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("golden").join(name)
}

fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2 + bytes.len() / 32 + 1);
    for line in bytes.chunks(32) {
        for b in line {
            s.push_str(&format!("{b:02x}"));
        }
        s.push('\n');
    }
    s
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| {
            u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap_or_else(|_| panic!("bad hex pair {p:?}"))
        })
        .collect()
}

/// Compare `encoded` with the committed file (or write it under DFS_BLESS=1)
/// and return the committed bytes for the decode checks.
fn golden(name: &str, encoded: &[u8]) -> Vec<u8> {
    let path = golden_path(name);
    if std::env::var_os("DFS_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, to_hex(encoded)).unwrap();
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("tests/golden/{name}: {e}; run with DFS_BLESS=1 to create it"));
    assert_eq!(text, text.to_lowercase(), "tests/golden/{name} is not lowercase");
    assert!(text.lines().all(|l| l.len() <= 64), "tests/golden/{name}: more than 32 bytes on a line");
    let committed = from_hex(&text);
    if committed != encoded {
        let first =
            committed.iter().zip(encoded).position(|(a, b)| a != b).unwrap_or(committed.len().min(encoded.len()));
        panic!(
            "tests/golden/{name}: the encoder no longer writes v1 bytes \
             (first difference at byte {first}; {} committed, {} encoded).\n\
             Encoded now:\n{}",
            committed.len(),
            encoded.len(),
            to_hex(encoded)
        );
    }
    committed
}

// -------------------------------------------------------------------- tests

#[test]
fn superblock_v1() {
    let sb = golden_superblock();
    let bytes = golden("superblock_v1.hex", &sb.encode(SuperblockCopy::Primary));
    assert_eq!(bytes.len(), 512);
    let (back, copy) = Superblock::decode(&bytes).unwrap();
    assert_eq!(copy, SuperblockCopy::Primary);
    assert_eq!(back, sb);
    // Spot checks straight from FORMAT.md, so doc, bytes and code agree.
    assert_eq!(&bytes[0..8], b"DYNFS_SB");
    assert_eq!(bytes[8..12], 1u32.to_le_bytes()); // version
    assert_eq!(bytes[12..16], 512u32.to_le_bytes()); // struct_len
    assert_eq!(&bytes[40..56], POOL.as_bytes());
    assert_eq!(&bytes[56..72], MEMBER.as_bytes());
    assert_eq!(bytes[76..80], 4096u32.to_le_bytes());
    assert_eq!(bytes[80..88], (64u64 << 20).to_le_bytes());
    assert_eq!((bytes[104], bytes[105]), (0, 6)); // copy, region_count
    assert_eq!(bytes[108..112], [2, 4, 2, 0]); // erasure:4+2
    assert_eq!(&bytes[112..112 + sb.label.len()], sb.label.as_bytes());
    // Region entry 2 (journal): kind 3, start 1 MiB, len 4 MiB.
    assert_eq!(bytes[240..244], 3u32.to_le_bytes());
    assert_eq!(bytes[248..256], (1u64 << 20).to_le_bytes());
    assert_eq!(bytes[256..264], (4u64 << 20).to_le_bytes());
    assert!(bytes[368..508].iter().all(|&b| b == 0)); // unused entries, reserved1
    assert_eq!(bytes[508..512], dfs_format::crc32(&bytes[..508]).to_le_bytes());
    // The same struct as the backup copy differs only in `copy` and crc.
    let backup = sb.encode(SuperblockCopy::Backup);
    let differ: Vec<usize> = (0..512).filter(|&i| backup[i] != bytes[i]).collect();
    assert!(differ.iter().all(|&i| i == 104 || i >= 508), "{differ:?}");
}

#[test]
fn root_v1() {
    let r = golden_root();
    let bytes = golden("root_v1.hex", &r.encode());
    assert_eq!(bytes.len(), 256);
    assert_eq!(RootRecord::decode(&bytes).unwrap(), r);
    assert_eq!(&bytes[0..8], b"DYNFS_RT");
    assert_eq!(bytes[32..40], 17u64.to_le_bytes()); // generation
    assert_eq!(bytes[64..68], 2u32.to_le_bytes()); // checkpoint_copies
    assert_eq!(&bytes[72..88], CHECKPOINT.as_bytes());
    assert_eq!(bytes[152..156], 2u32.to_le_bytes()); // locator 1 member_index
    assert!(bytes[176..200].iter().all(|&b| b == 0)); // locator 2 unused
    assert_eq!(bytes[200..208], (4u64 << 20).to_le_bytes()); // journal_len
    assert_eq!(bytes[208..212], 4096u32.to_le_bytes()); // journal_block_size
    assert!(bytes[212..252].iter().all(|&b| b == 0)); // reserved
    assert_eq!(bytes[252..256], dfs_format::crc32(&bytes[..252]).to_le_bytes());
}

#[test]
fn journal_header_v1() {
    let h = golden_journal();
    let bytes = golden("journal_header_v1.hex", &h.encode());
    assert_eq!(bytes.len(), 64);
    let back = JournalRecordHeader::decode(&bytes, BS).unwrap();
    assert_eq!(back, h);
    back.verify_payload(JOURNAL_PAYLOAD).unwrap();
    assert_eq!(back.kind, RecordKind::Transaction);
    assert_eq!(back.seq, 4242);
    assert_eq!(back.prev_crc32, 0x0bad_c0de);
    assert_eq!(back.payload_len as usize, JOURNAL_PAYLOAD.len());
    assert_eq!(back.payload_crc32, dfs_format::crc32(JOURNAL_PAYLOAD));
    assert_eq!(back.block_count, 1);
    assert_eq!(&bytes[0..4], b"DJRN");
    assert_eq!(bytes[4..8], [1, 0, 1, 0]); // version 1, kind Transaction
    assert_eq!(bytes[60..64], dfs_format::crc32(&bytes[..60]).to_le_bytes());
    assert_eq!(back.header_crc32, dfs_format::crc32(&bytes[..60]));
}

#[test]
fn fragment_v1() {
    let f = golden_fragment();
    let bytes = golden("fragment_v1.hex", &f.encode());
    assert_eq!(bytes.len(), 256);
    assert_eq!(FragmentHeader::decode(&bytes).unwrap(), f);
    assert_eq!(&bytes[0..8], b"DYNFS_FR");
    assert_eq!(&bytes[32..48], EXTENT.as_bytes());
    assert_eq!(bytes[48..52], [5, 0, 6, 0]); // index 5 of 6
    assert_eq!(bytes[52..56], [2, 4, 2, 0]); // erasure:4+2
    assert_eq!(bytes[144], 1); // kind Extent
    assert!(bytes[145..252].iter().all(|&b| b == 0));
    assert_eq!(bytes[252..256], dfs_format::crc32(&bytes[..252]).to_le_bytes());
}

/// The golden fragment (a 256 KiB shard: 64 pieces) with a block-sum
/// table of fixed entries: entry `i` is 8 bytes of `bytes_pattern(i)`.
fn golden_block_sums() -> BlockSums {
    BlockSums::new((0..64u8).map(|i| bytes_pattern(i)[..8].try_into().unwrap()).collect())
}

#[test]
fn fragment_block_sums_v1() {
    let f = golden_fragment();
    let sums = golden_block_sums();
    let bytes = golden("fragment_block_sums_v1.hex", &f.encode_with_sums(&sums).unwrap());
    assert_eq!(bytes.len(), 256 + 64 * 8);
    assert_eq!(FragmentHeader::decode_with_sums(&bytes).unwrap(), (f.clone(), Some(sums)));
    // What an older v1 reader sees: the same header, table ignored.
    assert_eq!(FragmentHeader::decode(&bytes).unwrap(), f);
    assert_eq!(bytes[145], 1); // table of truncated BLAKE3 per 4 KiB piece
    assert_eq!(bytes[146..148], [64, 0]); // 64 entries
    assert_eq!(bytes[148..152], dfs_format::crc32(&bytes[256..]).to_le_bytes());
    assert!(bytes[152..252].iter().all(|&b| b == 0));
    assert_eq!(bytes[252..256], dfs_format::crc32(&bytes[..252]).to_le_bytes());
    assert_eq!(bytes[256..264], bytes_pattern(0)[..8]);
    assert_eq!(bytes[256 + 63 * 8..], bytes_pattern(63)[..8]);
    // Against the table-less golden header: only the table fields and the crc differ.
    let plain = golden("fragment_v1.hex", &f.encode());
    let differ: Vec<usize> = (0..256).filter(|&i| bytes[i] != plain[i]).collect();
    assert!(differ.iter().all(|&i| (145..152).contains(&i) || (252..256).contains(&i)), "{differ:?}");
}

#[test]
fn bitmap_v1() {
    let h = golden_bitmap_header();
    let bits = golden_bits();
    let block = golden("bitmap_v1.hex", &h.encode_block(BS, &bits).unwrap());
    assert_eq!(block.len(), BS as usize);
    let (back, back_bits) = BitmapBlockHeader::decode_block(&block, BS).unwrap();
    assert_eq!(back, h);
    assert_eq!(back_bits, &bits[..]);
    assert_eq!(&block[0..8], b"DYNFS_BM");
    assert_eq!(block[12..16], 4096u32.to_le_bytes());
    assert_eq!(block[48..56], 134u64.to_le_bytes()); // used_bits
                                                     // Bit i is data block i, LSB first: blocks 0..96 → 12 bytes of 0xff; byte 12
                                                     // holds blocks 96..=100 and 103 → 0b1001_1111.
    assert!(block[64..76].iter().all(|&b| b == 0xff));
    assert_eq!(block[76], 0b1001_1111);
    let mut covered = block[..60].to_vec();
    covered.extend_from_slice(&block[64..]);
    assert_eq!(block[60..64], dfs_format::crc32(&covered).to_le_bytes());
}

#[test]
fn golden_layout_is_what_mkfs_chose_in_v1() {
    // Not a format promise (readers use the recorded table), but if mkfs
    // changes its choice, FORMAT.md's layout section must change with it.
    assert_eq!(Layout::compute(64 << 20, BS).unwrap(), golden_layout());
    golden_layout().validate().unwrap();
}

/// One row of the examples table of FORMAT.md "How mkfs chooses the sizes".
struct LayoutExample {
    size: u64,
    bs: u32,
    journal: (u64, u64),
    bitmap_start: u64,
    bitmap_blocks: u64,
    data_start: u64,
    data_blocks: u64,
}

#[test]
fn layout_examples_in_format_md() {
    const MIB: u64 = 1 << 20;
    let row = |size, bs, journal, bitmap_start, bitmap_blocks, data_start, data_blocks| LayoutExample {
        size,
        bs,
        journal,
        bitmap_start,
        bitmap_blocks,
        data_start,
        data_blocks,
    };
    let rows = [
        row(32 * MIB, 4096, (MIB, 4 * MIB), 5 * MIB, 1, 6 * MIB, 6_655),
        row(64 * MIB, 4096, (MIB, 4 * MIB), 5 * MIB, 1, 6 * MIB, 14_847),
        row(1 << 30, 4096, (MIB, 16 * MIB), 17 * MIB, 8, 18 * MIB, 257_535),
        row(1 << 40, 4096, (MIB, 256 * MIB), 257 * MIB, 8_320, 290 * MIB, 268_361_215),
        row(1 << 30, 65536, (9 * MIB, 16 * MIB), 25 * MIB, 1, 26 * MIB, 15_967),
    ];
    for e in rows {
        let (size, bs) = (e.size, e.bs);
        let l = Layout::compute(size, bs).unwrap();
        let b = bs as u64;
        assert_eq!(l.region(RegionKind::RootRing).start, b);
        assert_eq!(l.region(RegionKind::RootRing).len, 128 * b);
        let j = l.region(RegionKind::Journal);
        assert_eq!((j.start, j.len), e.journal, "journal of {size}/{bs}");
        let bm = l.region(RegionKind::Bitmap);
        assert_eq!((bm.start, bm.len / b), (e.bitmap_start, e.bitmap_blocks), "bitmap of {size}/{bs}");
        assert_eq!(l.region(RegionKind::Data).start, e.data_start, "data of {size}/{bs}");
        assert_eq!(l.data_blocks(), e.data_blocks, "data blocks of {size}/{bs}");
        assert_eq!(l.region(RegionKind::SuperblockBackup).start, size - b);
    }
}

/// FORMAT.md "Checksums": CRC-32 is the IEEE one (check value of "123456789").
#[test]
fn crc32_is_ieee() {
    assert_eq!(dfs_format::crc32(b"123456789"), 0xcbf4_3926);
}

/// Every offset in the FORMAT.md tables, against the raw structs.
#[test]
fn field_offsets_in_format_md() {
    use dfs_format::bitmap::RawBitmapHeaderV1 as B;
    use dfs_format::fragment::RawFragmentHeaderV1 as F;
    use dfs_format::journal::RawJournalHeaderV1 as J;
    use dfs_format::root::{RawLocatorV1 as L, RawRootRecordV1 as R};
    use dfs_format::superblock::{RawRegionV1 as E, RawSuperblockV1 as S};
    use std::mem::{offset_of, size_of};

    let sb = [
        (offset_of!(S, magic), 0),
        (offset_of!(S, version), 8),
        (offset_of!(S, struct_len), 12),
        (offset_of!(S, compat), 16),
        (offset_of!(S, ro_compat), 24),
        (offset_of!(S, incompat), 32),
        (offset_of!(S, pool_uuid), 40),
        (offset_of!(S, member_uuid), 56),
        (offset_of!(S, member_index), 72),
        (offset_of!(S, block_size), 76),
        (offset_of!(S, size), 80),
        (offset_of!(S, created_ns), 88),
        (offset_of!(S, update_seq), 96),
        (offset_of!(S, copy), 104),
        (offset_of!(S, region_count), 105),
        (offset_of!(S, reserved0), 106),
        (offset_of!(S, default_policy), 108),
        (offset_of!(S, label), 112),
        (offset_of!(S, regions), 176),
        (offset_of!(S, reserved1), 432),
        (offset_of!(S, crc32), 508),
        (size_of::<S>(), 512),
    ];
    let region = [
        (offset_of!(E, kind), 0),
        (offset_of!(E, flags), 4),
        (offset_of!(E, start), 8),
        (offset_of!(E, len), 16),
        (offset_of!(E, reserved), 24),
        (size_of::<E>(), 32),
    ];
    let root = [
        (offset_of!(R, magic), 0),
        (offset_of!(R, version), 8),
        (offset_of!(R, struct_len), 12),
        (offset_of!(R, pool_uuid), 16),
        (offset_of!(R, generation), 32),
        (offset_of!(R, timestamp_ns), 40),
        (offset_of!(R, journal_seq), 48),
        (offset_of!(R, journal_offset), 56),
        (offset_of!(R, checkpoint_copies), 64),
        (offset_of!(R, member_count), 68),
        (offset_of!(R, checkpoint_id), 72),
        (offset_of!(R, checkpoint_len), 88),
        (offset_of!(R, checkpoint_blake3), 96),
        (offset_of!(R, locators), 128),
        (offset_of!(R, journal_len), 200),
        (offset_of!(R, journal_block_size), 208),
        (offset_of!(R, reserved), 212),
        (offset_of!(R, crc32), 252),
        (size_of::<R>(), 256),
    ];
    let locator = [
        (offset_of!(L, member_index), 0),
        (offset_of!(L, reserved), 4),
        (offset_of!(L, offset), 8),
        (offset_of!(L, len), 16),
        (size_of::<L>(), 24),
    ];
    let journal = [
        (offset_of!(J, magic), 0),
        (offset_of!(J, version), 4),
        (offset_of!(J, kind), 6),
        (offset_of!(J, seq), 8),
        (offset_of!(J, pool_uuid), 16),
        (offset_of!(J, payload_len), 32),
        (offset_of!(J, payload_crc32), 36),
        (offset_of!(J, prev_crc32), 40),
        (offset_of!(J, block_count), 44),
        (offset_of!(J, timestamp_ns), 48),
        (offset_of!(J, reserved), 56),
        (offset_of!(J, header_crc32), 60),
        (size_of::<J>(), 64),
    ];
    let fragment = [
        (offset_of!(F, magic), 0),
        (offset_of!(F, version), 8),
        (offset_of!(F, struct_len), 12),
        (offset_of!(F, pool_uuid), 16),
        (offset_of!(F, extent_uuid), 32),
        (offset_of!(F, fragment_index), 48),
        (offset_of!(F, fragment_count), 50),
        (offset_of!(F, policy), 52),
        (offset_of!(F, payload_len), 56),
        (offset_of!(F, extent_len), 60),
        (offset_of!(F, generation), 64),
        (offset_of!(F, created_ns), 72),
        (offset_of!(F, payload_blake3), 80),
        (offset_of!(F, extent_blake3), 112),
        (offset_of!(F, kind), 144),
        (offset_of!(F, block_sums), 145),
        (offset_of!(F, block_sums_count), 146),
        (offset_of!(F, block_sums_crc32), 148),
        (offset_of!(F, reserved), 152),
        (offset_of!(F, crc32), 252),
        (size_of::<F>(), 256),
    ];
    let bitmap = [
        (offset_of!(B, magic), 0),
        (offset_of!(B, version), 8),
        (offset_of!(B, block_size), 12),
        (offset_of!(B, pool_uuid), 16),
        (offset_of!(B, index), 32),
        (offset_of!(B, generation), 40),
        (offset_of!(B, used_bits), 48),
        (offset_of!(B, reserved), 56),
        (offset_of!(B, crc32), 60),
        (size_of::<B>(), 64),
    ];
    for (name, table) in [
        ("superblock", &sb[..]),
        ("region entry", &region[..]),
        ("root record", &root[..]),
        ("locator", &locator[..]),
        ("journal header", &journal[..]),
        ("fragment header", &fragment[..]),
        ("bitmap header", &bitmap[..]),
    ] {
        for (i, &(code, doc)) in table.iter().enumerate() {
            assert_eq!(code, doc, "{name}: row {i} of the FORMAT.md table");
        }
    }
}
