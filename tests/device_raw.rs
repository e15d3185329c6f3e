//! RawDevice on an image file and on a loop device: round trips, the
//! contract's errors, batches on both IO paths, sync, discard, exclusivity
//! and identity.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::{disk_tempdir, require_root_and_loop, LoopDevice};
use dynamicfs::device::uring::QUEUE_DEPTH;
use dynamicfs::device::{
    AlignedBuf, Device, DeviceError, DeviceKind, IoPathChoice, RawDevice, RawOpenOptions, ReadReq, WriteReq,
};
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
const RW: RawOpenOptions = RawOpenOptions { read_only: false, exclusive: false };

/// A sparse image file of `size` bytes in an O_DIRECT-capable temp dir.
fn image(size: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = disk_tempdir();
    let path = dir.path().join("member.img");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    (dir, path)
}

/// A buffer of `len` bytes whose content depends on `seed`.
fn pattern(len: usize, seed: u64) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(len);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    rng.fill(&mut b[..]);
    b
}

fn open(path: &Path, io: IoPathChoice) -> RawDevice {
    RawDevice::open_with_io(path, RW, io).unwrap()
}

fn round_trips(dev: &RawDevice) {
    let bs = dev.block_size() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (len, count) in [(4096u64, 40), (MIB, 12)] {
        let blocks = (dev.size() - len) / bs;
        let mut offsets = vec![0, dev.size() - len, bs];
        offsets.extend((0..count).map(|_| rng.gen_range(0..=blocks) * bs));
        for (i, &off) in offsets.iter().enumerate() {
            let data = pattern(len as usize, off ^ i as u64 ^ len);
            dev.write_at(off, &data).unwrap();
            let mut back = AlignedBuf::zeroed(len as usize);
            dev.read_at(off, &mut back).unwrap();
            assert!(back[..] == data[..], "{len}-byte round trip at {off} differs");
        }
    }
    dev.sync().unwrap();
}

fn contract_errors(dev: &RawDevice) {
    let bs = dev.block_size() as usize;
    let mut buf = AlignedBuf::zeroed(2 * bs + 4096);
    // Misaligned offset, length and buffer.
    let misaligned = |r: DeviceError| assert!(matches!(r, DeviceError::Misaligned { .. }), "{r:?}");
    misaligned(dev.read_at(512, &mut buf[..bs]).unwrap_err());
    misaligned(dev.write_at(512, &buf[..bs]).unwrap_err());
    misaligned(dev.read_at(0, &mut buf[..bs + 512]).unwrap_err());
    misaligned(dev.write_at(0, &buf[..1000]).unwrap_err());
    misaligned(dev.read_at(0, &mut buf[1..bs + 1]).unwrap_err());
    misaligned(dev.write_at(0, &buf[512..bs + 512]).unwrap_err());
    misaligned(
        dev.write_batch(&[WriteReq { offset: 0, buf: &buf[..bs] }, WriteReq { offset: 7, buf: &buf[..bs] }])
            .unwrap_err(),
    );
    misaligned(dev.discard(512, bs as u64).unwrap_err());
    // Beyond the end.
    let oor = |r: DeviceError| assert!(matches!(r, DeviceError::OutOfRange { .. }), "{r:?}");
    let size = dev.size();
    oor(dev.read_at(size, &mut buf[..bs]).unwrap_err());
    oor(dev.write_at(size - bs as u64, &buf[..2 * bs]).unwrap_err());
    oor(dev.read_at(u64::MAX - (u64::MAX % bs as u64), &mut buf[..bs]).unwrap_err());
    oor(dev.discard(size - bs as u64, 2 * bs as u64).unwrap_err());
    let (a, b) = buf.split_at_mut(bs);
    let mut reqs = [ReadReq { offset: 0, buf: a }, ReadReq { offset: size, buf: &mut b[..bs] }];
    oor(dev.read_batch(&mut reqs).unwrap_err());
    // Empty requests (with an aligned buffer, as the contract asks of
    // every buffer) are fine, also at the very end of the device.
    dev.read_at(0, &mut buf[..0]).unwrap();
    dev.write_at(size, &buf[..0]).unwrap();
    dev.read_batch(&mut []).unwrap();
    dev.write_batch(&[]).unwrap();
    // An empty slice literal is not IO_ALIGN-aligned: refused like any other
    // misaligned buffer, never silently accepted.
    misaligned(dev.read_at(0, &mut []).unwrap_err());
}

/// 64 × 64 KiB writes then reads in one batch each; then 200 × 4 KiB (more
/// than a ring holds); results equal to what single IO reads back.
fn batches(dev: &RawDevice) {
    for (n, len) in [(64usize, 64 * 1024usize), (200, 4096)] {
        let stride = (len as u64).max(dev.block_size() as u64) * 3;
        assert!(stride * n as u64 <= dev.size());
        let seed = n as u64 * 1000 + dev.io_path().len() as u64;
        let datas: Vec<AlignedBuf> = (0..n).map(|i| pattern(len, seed + i as u64)).collect();
        // Reverse order: a batch is unordered anyway.
        let writes: Vec<WriteReq<'_>> =
            datas.iter().enumerate().rev().map(|(i, d)| WriteReq { offset: i as u64 * stride, buf: d }).collect();
        dev.write_batch(&writes).unwrap();
        let mut backs: Vec<AlignedBuf> = (0..n).map(|_| AlignedBuf::zeroed(len)).collect();
        let mut reads: Vec<ReadReq<'_>> =
            backs.iter_mut().enumerate().map(|(i, b)| ReadReq { offset: i as u64 * stride, buf: b }).collect();
        dev.read_batch(&mut reads).unwrap();
        drop(reads);
        for (i, (d, b)) in datas.iter().zip(&backs).enumerate() {
            assert!(d[..] == b[..], "batch of {n} ({}): request {i} differs", dev.io_path());
            let mut single = AlignedBuf::zeroed(len);
            dev.read_at(i as u64 * stride, &mut single).unwrap();
            assert!(single[..] == d[..]);
        }
    }
    dev.sync().unwrap();
}

/// Batches larger than the device's queue depth are fed through the window
/// (depth 1 runs them one by one); the depth is clamped to 1..=QUEUE_DEPTH.
fn windowed_batches(dev: &mut RawDevice) {
    let before = dev.queue_depth();
    dev.set_queue_depth(0);
    assert_eq!(dev.queue_depth(), 1);
    dev.set_queue_depth(u32::MAX);
    assert_eq!(dev.queue_depth(), QUEUE_DEPTH);
    let len = 8192;
    for depth in [1u32, 5] {
        dev.set_queue_depth(depth);
        let datas: Vec<AlignedBuf> = (0..40).map(|i| pattern(len, 5000 + depth as u64 * 100 + i)).collect();
        let w: Vec<WriteReq<'_>> =
            datas.iter().enumerate().map(|(i, d)| WriteReq { offset: (i * len) as u64, buf: d }).collect();
        dev.write_batch(&w).unwrap();
        let mut backs: Vec<AlignedBuf> = (0..40).map(|_| AlignedBuf::zeroed(len)).collect();
        let mut r: Vec<ReadReq<'_>> =
            backs.iter_mut().enumerate().map(|(i, b)| ReadReq { offset: (i * len) as u64, buf: b }).collect();
        dev.read_batch(&mut r).unwrap();
        drop(r);
        assert!(datas.iter().zip(&backs).all(|(d, b)| d[..] == b[..]), "depth {depth} ({})", dev.io_path());
    }
    dev.set_queue_depth(before);
}

/// A batch of two requests (so it takes the batch path, not a single pread).
fn small_batch(dev: &RawDevice) {
    let data = pattern(8192, 77);
    let (a, b) = data.split_at(4096);
    dev.write_batch(&[WriteReq { offset: 0, buf: a }, WriteReq { offset: 4096, buf: b }]).unwrap();
    let mut back = AlignedBuf::zeroed(8192);
    let (x, y) = back.split_at_mut(4096);
    dev.read_batch(&mut [ReadReq { offset: 0, buf: x }, ReadReq { offset: 4096, buf: y }]).unwrap();
    assert!(back[..] == data[..]);
}

/// Batches from several threads at once (each takes its own ring).
fn concurrent_batches(dev: &RawDevice) {
    let len = 16 * 1024;
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let base = t * 8 * MIB;
                for round in 0..5u64 {
                    let datas: Vec<AlignedBuf> =
                        (0..32).map(|i| pattern(len, t * 1_000_000 + round * 100 + i)).collect();
                    let w: Vec<WriteReq<'_>> = datas
                        .iter()
                        .enumerate()
                        .map(|(i, d)| WriteReq { offset: base + (i * len) as u64, buf: d })
                        .collect();
                    dev.write_batch(&w).unwrap();
                    let mut backs: Vec<AlignedBuf> = (0..32).map(|_| AlignedBuf::zeroed(len)).collect();
                    let mut r: Vec<ReadReq<'_>> = backs
                        .iter_mut()
                        .enumerate()
                        .map(|(i, b)| ReadReq { offset: base + (i * len) as u64, buf: b })
                        .collect();
                    dev.read_batch(&mut r).unwrap();
                    drop(r);
                    assert!(datas.iter().zip(&backs).all(|(d, b)| d[..] == b[..]));
                }
            });
        }
    });
}

fn discard_zeroes(dev: &RawDevice) {
    let len = 256 * 1024;
    let off = 4 * MIB;
    dev.write_at(off, &pattern(len, 99)).unwrap();
    dev.sync().unwrap();
    dev.discard(off, len as u64).unwrap();
    dev.discard(off, 0).unwrap();
    let mut back = pattern(len, 1);
    dev.read_at(off, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0), "discarded range does not read back as zeros");
}

fn basic_facts(dev: &RawDevice) {
    let bs = dev.block_size();
    assert!(bs >= 4096 && bs.is_power_of_two() && bs <= 65536, "block size {bs}");
    assert!(dev.logical_sector_size() >= 512 && dev.logical_sector_size() <= bs);
    assert!(dev.physical_block_size() >= dev.logical_sector_size());
    assert_eq!(dev.size() % bs as u64, 0);
}

// ---------------------------------------------------------------- image file

#[test]
fn file_round_trips_and_contract() {
    let (_dir, path) = image(64 * MIB);
    let dev = open(&path, IoPathChoice::Auto);
    basic_facts(&dev);
    assert_eq!(dev.identity().kind, DeviceKind::File);
    assert_eq!(dev.size(), 64 * MIB);
    round_trips(&dev);
    contract_errors(&dev);
}

#[test]
fn file_batches_io_uring_and_pread() {
    let (_dir, path) = image(64 * MIB);
    let mut auto = open(&path, IoPathChoice::Auto);
    eprintln!("io path on this machine: {}", auto.io_path());
    batches(&auto);
    concurrent_batches(&auto);
    windowed_batches(&mut auto);
    drop(auto);
    let mut pread = open(&path, IoPathChoice::Pread);
    assert_eq!(pread.io_path(), "pread");
    batches(&pread);
    concurrent_batches(&pread);
    windowed_batches(&mut pread);
}

#[test]
fn file_size_rounds_down_and_identity() {
    let (dir, path) = image(10 * MIB + 1000);
    let dev = open(&path, IoPathChoice::Auto);
    assert_eq!(dev.size(), 10 * MIB);
    let md = std::fs::metadata(&path).unwrap();
    let id = dev.identity().clone();
    assert_eq!((id.kind, id.dev, id.ino), (DeviceKind::File, md.dev(), md.ino()));
    assert_eq!(id.path, path);
    // Another path to the same file: same node.
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let other = open(&link, IoPathChoice::Auto);
    assert_eq!((other.identity().dev, other.identity().ino), (id.dev, id.ino));
    drop(dev);
    assert_eq!(open(&path, IoPathChoice::Auto).identity(), &id, "identity changes between opens");
}

#[test]
fn file_discard_sync_read_only() {
    let (_dir, path) = image(16 * MIB);
    let dev = open(&path, IoPathChoice::Auto);
    discard_zeroes(&dev);
    let data = pattern(8192, 5);
    dev.write_at(0, &data).unwrap();
    dev.sync().unwrap();
    drop(dev);
    let ro = RawDevice::open(&path, RawOpenOptions { read_only: true, exclusive: false }).unwrap();
    assert!(ro.is_read_only());
    let mut back = AlignedBuf::zeroed(8192);
    ro.read_at(0, &mut back).unwrap();
    assert!(back[..] == data[..]);
    for err in [
        ro.write_at(0, &data).unwrap_err(),
        ro.write_batch(&[WriteReq { offset: 0, buf: &data }]).unwrap_err(),
        ro.discard(0, 4096).unwrap_err(),
    ] {
        match err {
            DeviceError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::EROFS)),
            other => panic!("{other:?}"),
        }
    }
    ro.sync().unwrap();
}

#[test]
fn file_exclusive_is_a_lock() {
    let (_dir, path) = image(4 * MIB);
    let ex = RawOpenOptions { read_only: false, exclusive: true };
    let first = RawDevice::open(&path, ex).unwrap();
    assert!(matches!(RawDevice::open(&path, ex).unwrap_err(), DeviceError::Busy { .. }));
    // Non-exclusive opens (tools that only look) still work.
    RawDevice::open(&path, RW).unwrap();
    // Batches must not keep the file open behind the device's back: the
    // lock is free the moment the device is dropped. (A ring with the file
    // registered used to hold it until the ring's asynchronous teardown.)
    small_batch(&first);
    std::thread::scope(|s| {
        s.spawn(|| small_batch(&first));
    });
    drop(first);
    RawDevice::open(&path, ex).unwrap();
}

#[test]
fn not_a_device() {
    let dir = disk_tempdir();
    let err = RawDevice::open(dir.path(), RW).unwrap_err();
    assert!(matches!(err, DeviceError::Unsupported { .. }), "{err:?}");
    let err = RawDevice::open(&dir.path().join("missing"), RW).unwrap_err();
    assert!(matches!(err, DeviceError::Open { .. }), "{err:?}");
}

/// On tmpfs, O_DIRECT is refused on older kernels (and works on newer ones):
/// either it works, or the error says why.
#[test]
fn tmpfs_either_works_or_says_o_direct() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return;
    }
    let Ok(dir) = tempfile::tempdir_in(shm) else { return };
    let path = dir.path().join("img");
    // round_trips writes 1 MiB at offset one block: the image must be
    // larger than 1 MiB.
    std::fs::File::create(&path).unwrap().set_len(4 * MIB).unwrap();
    match RawDevice::open(&path, RW) {
        Ok(dev) => round_trips(&dev),
        Err(DeviceError::Unsupported { reason, .. }) => assert!(reason.contains("O_DIRECT"), "{reason}"),
        Err(e) => panic!("unexpected error on tmpfs: {e}"),
    }
}

/// `DFS_NO_URING=1` selects the pread path. Checked in a child process so
/// the environment of the other tests is left alone.
#[test]
fn env_var_forces_pread() {
    if let Some(path) = std::env::var_os("DFS_TEST_CHILD_IMAGE") {
        let dev = RawDevice::open(Path::new(&path), RW).unwrap();
        assert_eq!(dev.io_path(), "pread");
        batches(&dev);
        return;
    }
    let (_dir, path) = image(64 * MIB);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "env_var_forces_pread", "--nocapture", "--test-threads=1"])
        .env("DFS_NO_URING", "1")
        .env("DFS_TEST_CHILD_IMAGE", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "child failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------- loop device

#[test]
fn loop_round_trips_and_contract() {
    if !require_root_and_loop() {
        return;
    }
    let lo = LoopDevice::new(64 * MIB).unwrap();
    let dev = open(lo.path(), IoPathChoice::Auto);
    basic_facts(&dev);
    assert_eq!(dev.identity().kind, DeviceKind::Block);
    assert_eq!(dev.size(), 64 * MIB);
    round_trips(&dev);
    contract_errors(&dev);
    discard_zeroes(&dev);
    // What the device wrote is in the image file.
    dev.write_at(MIB, &pattern(4096, 42)).unwrap();
    dev.sync().unwrap();
    let img = std::fs::read(lo.image_path()).unwrap();
    assert!(img[MIB as usize..MIB as usize + 4096] == pattern(4096, 42)[..]);
}

#[test]
fn loop_batches_io_uring_and_pread() {
    if !require_root_and_loop() {
        return;
    }
    let lo = LoopDevice::new(64 * MIB).unwrap();
    for io in [IoPathChoice::Auto, IoPathChoice::Pread] {
        let mut dev = open(lo.path(), io);
        batches(&dev);
        concurrent_batches(&dev);
        windowed_batches(&mut dev);
    }
}

#[test]
fn loop_exclusive_and_identity() {
    if !require_root_and_loop() {
        return;
    }
    let lo = LoopDevice::new(16 * MIB).unwrap();
    let ex = RawOpenOptions { read_only: false, exclusive: true };
    let first = RawDevice::open(lo.path(), ex).unwrap();
    let second = RawDevice::open(lo.path(), ex).unwrap_err();
    assert!(matches!(second, DeviceError::Busy { .. }), "{second:?}");
    assert!(second.to_string().contains("in use"));
    let rdev = std::fs::metadata(lo.path()).unwrap().rdev();
    let id = first.identity().clone();
    assert_eq!((id.kind, id.dev, id.ino), (DeviceKind::Block, rdev, 0));
    // A non-exclusive open is allowed and sees the same node.
    let shared = RawDevice::open(lo.path(), RW).unwrap();
    assert_eq!(shared.identity(), &id);
    // After batches, dropping the device gives up O_EXCL at once.
    small_batch(&first);
    drop(first);
    let again = RawDevice::open(lo.path(), ex).unwrap();
    assert_eq!(again.identity(), &id, "identity changes between opens");
    assert!(again.block_size() >= 4096);
}
