//! DirDevice: a directory member shows the engine one address space while
//! the directory holds one file per region and one file per fragment write.
//! The crash story: a fragment write is tmp → fsync → rename, so a crash
//! leaves a `.tmp-*` file that open deletes, never a half fragment; an
//! overlapping write merges into one file whose rename is the commit point,
//! and the stale files a crash may leave behind are recognised at open.

use dfs_format::superblock::{Superblock, SuperblockCopy};
use dfs_format::{Layout, Policy, RegionKind};
use dynamicfs::device::dir::{fragment_file_name, FRAGMENTS_DIR, SUPERBLOCK_FILE};
use dynamicfs::device::{AlignedBuf, Device, DeviceError, DeviceKind, DirDevice};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const BS: u64 = 4096;
const SIZE: u64 = 64 << 20;

/// `n` blocks, block `i` filled with `first + i`.
fn blocks(first: u8, n: u64) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed((n * BS) as usize);
    for (i, chunk) in b.chunks_exact_mut(BS as usize).enumerate() {
        chunk.fill(first.wrapping_add(i as u8));
    }
    b
}

fn read(dev: &dyn Device, offset: u64, n: u64) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed((n * BS) as usize);
    dev.read_at(offset, &mut b).unwrap();
    b
}

fn uniform(b: &[u8], v: u8) -> bool {
    b.iter().all(|&x| x == v)
}

fn superblock(layout: &Layout) -> Superblock {
    Superblock {
        compat: 0,
        ro_compat: 0,
        incompat: 0,
        pool_uuid: uuid::Uuid::new_v4(),
        member_uuid: uuid::Uuid::new_v4(),
        member_index: 0,
        layout: layout.clone(),
        created_ns: 1,
        update_seq: 1,
        default_policy: Policy::Replication { copies: 2 },
        label: "test".into(),
    }
}

/// What mkfs does after `create`: both superblock copies through `write_at`.
fn write_superblocks(dev: &DirDevice) -> Superblock {
    let sb = superblock(dev.layout());
    let p = AlignedBuf::from_slice_padded(&sb.encode(SuperblockCopy::Primary), BS as usize);
    let b = AlignedBuf::from_slice_padded(&sb.encode(SuperblockCopy::Backup), BS as usize);
    dev.write_at(0, &p).unwrap();
    dev.write_at(dev.size() - BS, &b).unwrap();
    sb
}

/// A created member with valid superblocks, synced.
fn member(path: &Path) -> DirDevice {
    let dev = DirDevice::create(path, SIZE).unwrap();
    write_superblocks(&dev);
    dev.sync().unwrap();
    dev
}

fn frag_files(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(path.join(FRAGMENTS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn every_region_round_trips_to_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    let dev = DirDevice::create(&path, SIZE).unwrap();
    let l = dev.layout().clone();
    assert_eq!(l, Layout::compute(SIZE, 4096).unwrap());
    assert_eq!((dev.size(), dev.block_size()), (SIZE, 4096));
    let sb = write_superblocks(&dev);

    let ring = l.region(RegionKind::RootRing);
    let journal = l.region(RegionKind::Journal);
    let bitmap = l.region(RegionKind::Bitmap);
    dev.write_at(l.root_slot_offset(3), &blocks(0x31, 1)).unwrap();
    dev.write_at(journal.start + 2 * BS, &blocks(0x41, 2)).unwrap();
    dev.write_at(bitmap.start, &blocks(0x51, 1)).unwrap();
    dev.write_at(l.data_offset(0), &blocks(0x61, 4)).unwrap();
    dev.write_at(l.data_offset(10), &blocks(0x71, 2)).unwrap();

    // Through the device.
    let r = read(&dev, 0, 1);
    assert_eq!(Superblock::decode(&r).unwrap().0, sb);
    let r = read(&dev, SIZE - BS, 1);
    assert_eq!(Superblock::decode(&r).unwrap().1, SuperblockCopy::Backup);
    assert!(uniform(&read(&dev, l.root_slot_offset(3), 1), 0x31));
    assert!(uniform(&read(&dev, l.root_slot_offset(2), 1), 0), "unwritten slot reads zeros");
    let j = read(&dev, journal.start + 2 * BS, 2);
    assert!(uniform(&j[..BS as usize], 0x41) && uniform(&j[BS as usize..], 0x42));
    assert!(uniform(&read(&dev, bitmap.start, 1), 0x51));
    // One read across two fragment files and the holes around them.
    let d = read(&dev, l.data_offset(0), 16);
    for (b, want) in [(0, 0x61), (3, 0x64), (4, 0), (9, 0), (10, 0x71), (11, 0x72), (12, 0), (15, 0)] {
        assert!(uniform(&d[b * BS as usize..(b + 1) * BS as usize], want), "data block {b}");
    }
    // A read spanning the ring, the gap after it and the journal start.
    let n = (journal.start - ring.end()) / BS + 2;
    let g = read(&dev, ring.end() - BS, n);
    assert!(g.iter().all(|&x| x == 0));

    // On disk: the same bytes at the same offsets of the files.
    let sbf = fs::read(path.join(SUPERBLOCK_FILE)).unwrap();
    assert_eq!(sbf.len(), 2 * BS as usize);
    assert_eq!(Superblock::decode(&sbf[BS as usize..]).unwrap().1, SuperblockCopy::Backup);
    let roots = fs::read(path.join("roots")).unwrap();
    assert!(uniform(&roots[3 * BS as usize..4 * BS as usize], 0x31));
    let jf = fs::read(path.join("journal")).unwrap();
    assert!(uniform(&jf[2 * BS as usize..3 * BS as usize], 0x41));
    assert!(uniform(&fs::read(path.join("bitmap")).unwrap(), 0x51));
    assert_eq!(frag_files(&path), vec![fragment_file_name(0), fragment_file_name(10)]);
    assert_eq!(fragment_file_name(10), "000000000000000a");
    let f = fs::read(path.join(FRAGMENTS_DIR).join("000000000000000a")).unwrap();
    assert_eq!(f.len(), 2 * BS as usize);
    assert_eq!(dev.fragment_files(), vec![(0, 4), (10, 2)]);
}

#[test]
fn a_write_may_span_regions() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = DirDevice::create(&tmp.path().join("m"), SIZE).unwrap();
    // Superblock and the first ring slot in one write.
    dev.write_at(0, &blocks(0x11, 2)).unwrap();
    let r = read(&dev, 0, 2);
    assert!(uniform(&r[..4096], 0x11) && uniform(&r[4096..], 0x12));
    assert!(uniform(&fs::read(tmp.path().join("m/roots")).unwrap(), 0x12));
    // The last data block and the backup superblock in one write.
    let data = dev.layout().region(RegionKind::Data);
    assert_eq!(data.end(), SIZE - BS);
    dev.write_at(data.end() - BS, &blocks(0x21, 2)).unwrap();
    let r = read(&dev, data.end() - BS, 2);
    assert!(uniform(&r[..4096], 0x21) && uniform(&r[4096..], 0x22));
}

#[test]
fn gaps_read_zeros_and_refuse_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = DirDevice::create(&tmp.path().join("m"), SIZE).unwrap();
    let ring = dev.layout().region(RegionKind::RootRing);
    let journal = dev.layout().region(RegionKind::Journal);
    assert!(ring.end() < journal.start, "this layout has a gap after the ring");
    assert!(uniform(&read(&dev, ring.end(), 1), 0));
    let e = dev.write_at(ring.end(), &blocks(1, 1)).unwrap_err();
    assert!(matches!(e, DeviceError::Io { op: "write", .. }), "{e}");
    assert!(e.to_string().contains("between regions"), "{e}");
    // A write straddling a region and a gap is refused whole.
    let e = dev.write_at(ring.end() - BS, &blocks(1, 2)).unwrap_err();
    assert!(matches!(e, DeviceError::Io { .. }));
    assert!(uniform(&read(&dev, ring.end() - BS, 1), 0), "nothing written");
}

#[test]
fn the_contract_is_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = DirDevice::create(&tmp.path().join("m"), SIZE).unwrap();
    let mut b = AlignedBuf::zeroed(2 * BS as usize);
    assert!(matches!(dev.read_at(512, &mut b[..4096]), Err(DeviceError::Misaligned { .. })));
    assert!(matches!(dev.read_at(0, &mut b[1..4097]), Err(DeviceError::Misaligned { .. })));
    assert!(matches!(dev.write_at(SIZE, &b[..4096]), Err(DeviceError::OutOfRange { .. })));
    assert!(matches!(dev.discard(SIZE, BS), Err(DeviceError::OutOfRange { .. })));
    assert!(matches!(dev.discard(1, BS), Err(DeviceError::Misaligned { .. })));
    let id = dev.identity();
    let md = fs::metadata(tmp.path().join("m")).unwrap();
    assert_eq!(id.kind, DeviceKind::Dir);
    assert_eq!((id.dev, id.ino), (md.dev(), md.ino()));
    assert_eq!(id.path, tmp.path().join("m"));
}

#[test]
fn reopen_sees_everything_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    let dev = member(&path);
    let l = dev.layout().clone();
    let ino = dev.identity().ino;
    dev.write_at(l.root_slot_offset(0), &blocks(0x31, 1)).unwrap();
    dev.write_at(l.region(RegionKind::Journal).start, &blocks(0x41, 8)).unwrap();
    dev.write_at(l.data_offset(256), &blocks(0x61, 256)).unwrap();
    dev.sync().unwrap();
    drop(dev);

    let dev = DirDevice::open(&path, false).unwrap();
    assert_eq!(dev.layout(), &l, "layout comes from the superblock");
    assert_eq!(dev.identity().ino, ino);
    assert!(uniform(&read(&dev, l.root_slot_offset(0), 1), 0x31));
    assert!(uniform(&read(&dev, l.region(RegionKind::Journal).start + 7 * BS, 1), 0x48));
    let d = read(&dev, l.data_offset(255), 258);
    assert!(uniform(&d[..4096], 0));
    assert!(uniform(&d[4096..8192], 0x61));
    assert!(uniform(&d[256 * 4096..257 * 4096], 0x61u8.wrapping_add(255)));
    assert!(uniform(&d[257 * 4096..], 0));
    assert_eq!(dev.fragment_files(), vec![(256, 256)]);

    // Read-only: reads work, writes and discards are refused, sync is a no-op.
    drop(dev);
    let ro = DirDevice::open(&path, true).unwrap();
    assert!(ro.is_read_only());
    assert!(uniform(&read(&ro, l.root_slot_offset(0), 1), 0x31));
    assert!(matches!(ro.write_at(l.data_offset(0), &blocks(1, 1)), Err(DeviceError::Io { .. })));
    assert!(matches!(ro.discard(l.data_offset(256), 256 * BS), Err(DeviceError::Io { .. })));
    ro.sync().unwrap();
    assert_eq!(ro.fragment_files(), vec![(256, 256)]);
}

#[test]
fn an_unfinished_fragment_write_leaves_no_half_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    let dev = member(&path);
    let l = dev.layout().clone();
    dev.write_at(l.data_offset(5), &blocks(0x55, 2)).unwrap();
    dev.sync().unwrap();
    drop(dev);
    // The crash: a write to block 7 got as far as its temporary file (half
    // of it), and one over block 5 too.
    let frags = path.join(FRAGMENTS_DIR);
    fs::write(frags.join(format!(".tmp-{}.0", fragment_file_name(7))), vec![0xEEu8; 4096 + 100]).unwrap();
    fs::write(frags.join(format!(".tmp-{}.1", fragment_file_name(5))), vec![0xEEu8; 8192]).unwrap();

    // A read-only open ignores them and deletes nothing.
    let ro = DirDevice::open(&path, true).unwrap();
    assert_eq!(ro.fragment_files(), vec![(5, 2)]);
    assert_eq!(frag_files(&path).len(), 3);
    drop(ro);

    let dev = DirDevice::open(&path, false).unwrap();
    assert_eq!(frag_files(&path), vec![fragment_file_name(5)], "temporary files deleted");
    assert_eq!(dev.fragment_files(), vec![(5, 2)]);
    let d = read(&dev, l.data_offset(5), 4);
    assert!(uniform(&d[..4096], 0x55) && uniform(&d[4096..8192], 0x56));
    assert!(uniform(&d[8192..], 0), "block 7 was never written");
}

#[test]
fn an_overlapping_write_replaces_what_it_covers() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    let dev = member(&path);
    let l = dev.layout().clone();
    dev.write_at(l.data_offset(0), &blocks(0x10, 8)).unwrap(); // blocks 0..8
    dev.write_at(l.data_offset(10), &blocks(0x30, 4)).unwrap(); // blocks 10..14
    dev.write_at(l.data_offset(20), &blocks(0x50, 2)).unwrap(); // untouched
                                                                // Over the tail of the first, the hole, and the head of the second.
    dev.write_at(l.data_offset(6), &blocks(0xA0, 6)).unwrap(); // blocks 6..12
    let expect = |d: &[u8]| {
        for b in 0..14usize {
            let want = match b {
                0..=5 => 0x10 + b as u8,
                6..=11 => 0xA0 + (b - 6) as u8,
                _ => 0x30 + (b - 10) as u8,
            };
            assert!(uniform(&d[b * 4096..(b + 1) * 4096], want), "block {b}");
        }
    };
    expect(&read(&dev, l.data_offset(0), 14));
    assert_eq!(dev.fragment_files(), vec![(0, 14), (20, 2)]);
    assert_eq!(frag_files(&path), vec![fragment_file_name(0), fragment_file_name(20)]);

    // A shorter write at the same start keeps the rest.
    dev.write_at(l.data_offset(0), &blocks(0xC0, 1)).unwrap();
    let d = read(&dev, l.data_offset(0), 2);
    assert!(uniform(&d[..4096], 0xC0) && uniform(&d[4096..], 0x11));
    assert_eq!(dev.fragment_files(), vec![(0, 14), (20, 2)]);
    // A write covering a whole file and more.
    dev.write_at(l.data_offset(19), &blocks(0xE0, 4)).unwrap();
    assert_eq!(dev.fragment_files(), vec![(0, 14), (19, 4)]);
    assert!(uniform(&read(&dev, l.data_offset(22), 1), 0xE3));
    dev.sync().unwrap();
    drop(dev);

    let dev = DirDevice::open(&path, false).unwrap();
    assert_eq!(dev.fragment_files(), vec![(0, 14), (19, 4)]);
    let d = read(&dev, l.data_offset(0), 14);
    assert!(uniform(&d[..4096], 0xC0));
    expect(&{
        let mut d = d.to_vec();
        d[..4096].fill(0x10);
        d
    });
}

#[test]
fn a_crash_in_the_middle_of_a_merge_is_repaired_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    let dev = member(&path);
    let l = dev.layout().clone();
    dev.write_at(l.data_offset(0), &blocks(0x10, 8)).unwrap();
    dev.sync().unwrap();
    drop(dev);
    // The merged file was renamed in, but the crash came before the file it
    // swallowed (block 3, 2 blocks, stale content) was deleted.
    let frags = path.join(FRAGMENTS_DIR);
    fs::write(frags.join(fragment_file_name(3)), vec![0xEEu8; 8192]).unwrap();
    let dev = DirDevice::open(&path, false).unwrap();
    assert_eq!(dev.fragment_files(), vec![(0, 8)]);
    assert_eq!(frag_files(&path), vec![fragment_file_name(0)]);
    assert!(uniform(&read(&dev, l.data_offset(3), 1), 0x13));
    drop(dev);

    // A partial overlap is not something a crash can leave: damage, refused.
    fs::write(frags.join(fragment_file_name(6)), vec![0xEEu8; 4 * 4096]).unwrap();
    let e = DirDevice::open(&path, false).unwrap_err();
    assert!(matches!(e, DeviceError::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("overlap"), "{e}");
    fs::remove_file(frags.join(fragment_file_name(6))).unwrap();
    // So is a fragment file of a length that is not whole blocks.
    fs::write(frags.join(fragment_file_name(100)), vec![1u8; 100]).unwrap();
    let e = DirDevice::open(&path, false).unwrap_err();
    assert!(e.to_string().contains("not whole blocks"), "{e}");
    fs::remove_file(frags.join(fragment_file_name(100))).unwrap();
    // Files that are not fragments are ignored.
    fs::write(frags.join("README"), b"hello").unwrap();
    DirDevice::open(&path, false).unwrap();
}

#[test]
fn discard_deletes_the_files_it_covers() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    let dev = member(&path);
    let l = dev.layout().clone();
    for (start, v) in [(0u64, 0x10u8), (4, 0x20), (8, 0x30)] {
        dev.write_at(l.data_offset(start), &blocks(v, 4)).unwrap();
    }
    // Covers files 4 and 8 wholly, file 0 only partly.
    dev.discard(l.data_offset(2), 10 * BS).unwrap();
    assert_eq!(dev.fragment_files(), vec![(0, 4)]);
    assert_eq!(frag_files(&path), vec![fragment_file_name(0)]);
    let d = read(&dev, l.data_offset(0), 12);
    assert!(uniform(&d[3 * 4096..4 * 4096], 0x13), "a partly covered file stays");
    assert!(uniform(&d[4 * 4096..], 0));
    // Discarding the metadata regions or the whole device deletes only fragments.
    dev.write_at(l.root_slot_offset(0), &blocks(0x31, 1)).unwrap();
    dev.discard(0, SIZE).unwrap();
    assert!(dev.fragment_files().is_empty());
    assert!(uniform(&read(&dev, l.root_slot_offset(0), 1), 0x31));
    dev.sync().unwrap();
    drop(dev);
    assert!(DirDevice::open(&path, false).unwrap().fragment_files().is_empty());
}

#[test]
fn garbage_superblocks_are_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    // mkfs never wrote the superblocks.
    drop(DirDevice::create(&path, SIZE).unwrap());
    let e = DirDevice::open(&path, false).unwrap_err();
    assert!(matches!(e, DeviceError::Unsupported { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("no valid superblock") && msg.contains("primary") && msg.contains("backup"), "{msg}");

    // Garbage in both copies.
    let noise: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    fs::write(path.join(SUPERBLOCK_FILE), &noise).unwrap();
    assert!(matches!(DirDevice::open(&path, true), Err(DeviceError::Unsupported { .. })));
    // Magic right, the rest garbage.
    let mut fake = noise.clone();
    fake[..8].copy_from_slice(b"DYNFS_SB");
    fake[4096..4104].copy_from_slice(b"DYNFS_SB");
    fs::write(path.join(SUPERBLOCK_FILE), &fake).unwrap();
    let e = DirDevice::open(&path, false).unwrap_err();
    assert!(e.to_string().contains("superblock"), "{e}");
    // Truncated, then missing.
    fs::write(path.join(SUPERBLOCK_FILE), b"DYNFS_SB").unwrap();
    assert!(matches!(DirDevice::open(&path, false), Err(DeviceError::Unsupported { .. })));
    fs::remove_file(path.join(SUPERBLOCK_FILE)).unwrap();
    let e = DirDevice::open(&path, false).unwrap_err();
    assert!(e.to_string().contains("no superblock file"), "{e}");
    // Not a member at all.
    let e = DirDevice::open(tmp.path(), false).unwrap_err();
    assert!(matches!(e, DeviceError::Unsupported { .. }), "{e}");
    assert!(DirDevice::open(&tmp.path().join("nope"), false).is_err());
}

#[test]
fn one_good_superblock_copy_is_enough() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    let l = member(&path).layout().clone();
    // Smash the primary copy in the file; the backup (second block) wins.
    let mut f = fs::read(path.join(SUPERBLOCK_FILE)).unwrap();
    f[..512].fill(0xAB);
    fs::write(path.join(SUPERBLOCK_FILE), &f).unwrap();
    let dev = DirDevice::open(&path, false).unwrap();
    assert_eq!(dev.layout(), &l);
    drop(dev);
    // A damaged region file length is refused, not trusted.
    let f = fs::OpenOptions::new().write(true).open(path.join("roots")).unwrap();
    f.set_len(l.region(RegionKind::RootRing).len + BS).unwrap();
    let e = DirDevice::open(&path, false).unwrap_err();
    assert!(e.to_string().contains("roots"), "{e}");
}

#[test]
fn create_wants_an_empty_or_new_directory() {
    let tmp = tempfile::tempdir().unwrap();
    // An existing empty directory is fine.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    DirDevice::create(&empty, SIZE).unwrap();
    // A member already there, a file, a too-small size: refused.
    let e = DirDevice::create(&empty, SIZE).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    assert!(matches!(DirDevice::create(&file, SIZE), Err(DeviceError::Unsupported { .. })));
    let e = DirDevice::create(&tmp.path().join("tiny"), 1 << 20).unwrap_err();
    assert!(e.to_string().contains("minimum"), "{e}");
    assert!(!tmp.path().join("tiny").exists(), "nothing created for a refused size");
    // A missing parent is an error, not a silent mkdir -p.
    assert!(DirDevice::create(&tmp.path().join("a/b"), SIZE).is_err());
}

#[test]
fn parallel_fragment_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m");
    let dev = member(&path);
    let l = dev.layout().clone();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (dev, l) = (&dev, &l);
            s.spawn(move || {
                for i in 0..16u64 {
                    let block = (i * 4 + t) * 8;
                    dev.write_at(l.data_offset(block), &blocks((t * 16 + i) as u8, 8)).unwrap();
                }
            });
        }
    });
    dev.sync().unwrap();
    assert_eq!(dev.fragment_files().len(), 64);
    let d = read(&dev, l.data_offset(0), 64 * 8);
    for f in 0..64u64 {
        let (i, t) = (f / 4, f % 4);
        let first = (t * 16 + i) as u8;
        let at = (f * 8 * BS) as usize;
        assert!(uniform(&d[at..at + 4096], first), "fragment {f}");
    }
}
