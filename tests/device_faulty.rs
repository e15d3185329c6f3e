//! FaultyDevice: the crash model, the power-cut countdown, injected faults
//! and bit rot. These are the guarantees the engine's crash soak builds on:
//! a synced write survives every crash image, an unsynced one may or may not,
//! and a torn write leaves each block old or new (sector tearing only when
//! asked for).

use dynamicfs::device::{AlignedBuf, CrashOptions, Device, DeviceError, Fault, FaultyDevice, IoKind, IoOp, MemDevice};
use proptest::prelude::*;
use std::sync::{Arc, Mutex};

const BS: usize = 4096;

fn faulty(size: u64) -> FaultyDevice {
    FaultyDevice::new(Arc::new(MemDevice::named("mem-a", size, BS as u32)))
}

/// `n` blocks, block `i` filled with `first + i`.
fn blocks(first: u8, n: usize) -> AlignedBuf {
    let mut b = AlignedBuf::zeroed(n * BS);
    for (i, chunk) in b.chunks_exact_mut(BS).enumerate() {
        chunk.fill(first.wrapping_add(i as u8));
    }
    b
}

fn block_of(img: &[u8], block: usize) -> &[u8] {
    &img[block * BS..(block + 1) * BS]
}

fn uniform(b: &[u8], v: u8) -> bool {
    b.iter().all(|&x| x == v)
}

#[test]
fn synced_writes_survive_every_crash_image() {
    let dev = faulty(1 << 20);
    dev.write_at(0, &blocks(0x10, 4)).unwrap(); // blocks 0..4 = 0x10..0x13
    dev.sync().unwrap();
    assert_eq!(dev.pending_writes(), 0);
    // Unsynced: an overwrite of synced blocks 0..2 and a fresh block 10.
    dev.write_at(0, &blocks(0x80, 2)).unwrap();
    dev.write_at(10 * BS as u64, &blocks(0x90, 1)).unwrap();
    assert_eq!(dev.pending_writes(), 2);
    for seed in 0..500 {
        let img = dev.crash_image(seed);
        assert!(uniform(block_of(&img, 2), 0x12), "seed {seed}: synced block 2 lost");
        assert!(uniform(block_of(&img, 3), 0x13), "seed {seed}: synced block 3 lost");
        for (b, old, new) in [(0, 0x10, 0x80), (1, 0x11, 0x81), (10, 0x00, 0x90)] {
            let blk = block_of(&img, b);
            assert!(uniform(blk, old) || uniform(blk, new), "seed {seed}: block {b} is neither old nor new");
        }
    }
    // The durable image is exactly the synced state.
    let durable = dev.durable_image();
    assert!(uniform(block_of(&durable, 0), 0x10));
    assert!(uniform(block_of(&durable, 10), 0));
    // After a sync, every crash image is the live image.
    dev.sync().unwrap();
    let live = dev.durable_image();
    for seed in 0..20 {
        assert_eq!(dev.crash_image(seed), live);
    }
}

#[test]
fn unsynced_writes_may_or_may_not_survive() {
    let dev = faulty(1 << 20);
    dev.write_at(4 * BS as u64, &blocks(0x55, 1)).unwrap();
    let (mut kept, mut lost) = (0, 0);
    for seed in 0..200 {
        let img = dev.crash_image(seed);
        if uniform(block_of(&img, 4), 0x55) {
            kept += 1;
        } else {
            assert!(uniform(block_of(&img, 4), 0));
            lost += 1;
        }
    }
    assert!(kept > 20 && lost > 20, "kept {kept}, lost {lost}: both outcomes must occur");
}

#[test]
fn crash_images_are_deterministic_per_seed() {
    let dev = faulty(1 << 20);
    for i in 0..16u64 {
        dev.write_at(i * 2 * BS as u64, &blocks(i as u8 * 8 + 1, 3)).unwrap();
    }
    let a = dev.crash_image(42);
    assert_eq!(a, dev.crash_image(42));
    assert!((0..8).any(|s| dev.crash_image(s) != a), "different seeds give different images");
}

#[test]
fn torn_writes_leave_each_block_old_or_new() {
    let dev = faulty(1 << 20);
    dev.write_at(0, &blocks(0x20, 8)).unwrap();
    dev.sync().unwrap();
    dev.write_at(0, &blocks(0xA0, 8)).unwrap();
    let (mut none, mut whole, mut torn) = (0, 0, 0);
    for seed in 0..300 {
        let img = dev.crash_image(seed);
        let mut news = 0;
        for b in 0..8 {
            let blk = block_of(&img, b);
            if uniform(blk, 0xA0 + b as u8) {
                news += 1;
            } else {
                assert!(uniform(blk, 0x20 + b as u8), "seed {seed}: block {b} is neither old nor new");
            }
        }
        match news {
            0 => none += 1,
            8 => whole += 1,
            _ => torn += 1,
        }
    }
    assert!(none > 0 && whole > 0 && torn > 0, "none {none}, whole {whole}, torn {torn}");
}

#[test]
fn sector_tearing_is_off_by_default_and_sector_granular_when_on() {
    let dev = faulty(1 << 20);
    assert_eq!(dev.crash_options(), CrashOptions::default());
    assert!(!dev.crash_options().tear_sectors);
    dev.write_at(0, &blocks(0x20, 4)).unwrap();
    dev.sync().unwrap();
    dev.write_at(0, &blocks(0xA0, 4)).unwrap();
    dev.set_crash_options(CrashOptions { tear_sectors: true, sector_size: 512 });
    let mut mixed_blocks = 0;
    for seed in 0..300 {
        let img = dev.crash_image(seed);
        let mut mixed_here = 0;
        for b in 0..4 {
            let blk = block_of(&img, b);
            let (old, new) = (0x20 + b as u8, 0xA0 + b as u8);
            for s in blk.chunks_exact(512) {
                assert!(uniform(s, old) || uniform(s, new), "seed {seed}: a sector of block {b} is neither");
            }
            if !uniform(blk, old) && !uniform(blk, new) {
                mixed_here += 1;
            }
        }
        assert!(mixed_here <= 1, "seed {seed}: at most one sector-torn block per torn write");
        mixed_blocks += mixed_here;
    }
    assert!(mixed_blocks > 0, "some block must be torn inside");
}

#[test]
fn countdown_cuts_the_power_during_the_nth_write() {
    let dev = faulty(1 << 20);
    dev.write_at(0, &blocks(1, 1)).unwrap();
    dev.crash_at(3); // write, sync, then the third op crashes
    dev.write_at(BS as u64, &blocks(2, 1)).unwrap();
    dev.sync().unwrap();
    assert!(!dev.is_crashed());
    let e = dev.write_at(2 * BS as u64, &blocks(3, 1)).unwrap_err();
    assert!(matches!(e, DeviceError::Crashed { .. }), "{e}");
    assert!(dev.is_crashed());
    // Everything after fails too.
    let mut r = AlignedBuf::zeroed(BS);
    assert!(matches!(dev.read_at(0, &mut r), Err(DeviceError::Crashed { .. })));
    assert!(matches!(dev.sync(), Err(DeviceError::Crashed { .. })));
    assert!(matches!(dev.write_at(0, &r), Err(DeviceError::Crashed { .. })));
    assert!(matches!(dev.discard(0, BS as u64), Err(DeviceError::Crashed { .. })));
    // The write in flight may or may not have landed; synced ones did.
    let (mut kept, mut lost) = (0, 0);
    for seed in 0..100 {
        let img = dev.crash_image(seed);
        assert!(uniform(block_of(&img, 0), 1) && uniform(block_of(&img, 1), 2));
        if uniform(block_of(&img, 2), 3) {
            kept += 1;
        } else {
            lost += 1;
        }
    }
    assert!(kept > 0 && lost > 0);
    // Power back on: the inner device holds that crash image, IO works.
    let expect = dev.crash_image(7);
    dev.power_cycle(7).unwrap();
    assert!(!dev.is_crashed());
    assert_eq!(dev.pending_writes(), 0);
    assert_eq!(dev.durable_image(), expect);
    dev.read_at(0, &mut r).unwrap();
    assert!(uniform(&r, 1));
}

#[test]
fn countdown_crash_during_sync_makes_nothing_durable() {
    let dev = faulty(1 << 20);
    dev.write_at(0, &blocks(9, 2)).unwrap();
    dev.crash_at(1);
    assert!(matches!(dev.sync(), Err(DeviceError::Crashed { .. })));
    assert_eq!(dev.pending_writes(), 1, "the write stays pending");
    assert!(uniform(block_of(&dev.durable_image(), 0), 0));
    // crash_at(0) cuts now; cancel_crash disarms a countdown.
    let dev = faulty(1 << 20);
    dev.crash_at(1);
    dev.cancel_crash();
    dev.sync().unwrap();
    dev.crash_at(0);
    assert!(dev.is_crashed());
}

#[test]
fn injected_errors_name_the_device_and_have_no_effect() {
    let dev = faulty(1 << 20);
    dev.fail_nth(2, IoKind::Write);
    dev.write_at(0, &blocks(1, 1)).unwrap();
    let e = dev.write_at(BS as u64, &blocks(2, 1)).unwrap_err();
    match &e {
        DeviceError::Injected { device, op, offset } => {
            assert_eq!(device.to_str(), Some("mem-a"));
            assert_eq!(*op, "write");
            assert_eq!(*offset, BS as u64);
        }
        other => panic!("expected Injected, got {other:?}"),
    }
    assert!(e.to_string().contains("mem-a"), "{e}");
    dev.write_at(2 * BS as u64, &blocks(3, 1)).unwrap(); // only the 2nd one fails
    let mut r = AlignedBuf::zeroed(BS);
    dev.read_at(BS as u64, &mut r).unwrap();
    assert!(uniform(&r, 0), "the failed write changed nothing");

    // A hook failing reads of one block; a failed sync keeps writes pending.
    dev.set_fault_hook(Box::new(|op: &IoOp| (op.kind == IoKind::Read && op.offset == 0).then_some(Fault::Error)));
    assert!(matches!(dev.read_at(0, &mut r), Err(DeviceError::Injected { op: "read", .. })));
    dev.read_at(BS as u64, &mut r).unwrap();
    dev.clear_fault_hook();
    dev.read_at(0, &mut r).unwrap();
    dev.fail_nth(1, IoKind::Sync);
    assert!(matches!(dev.sync(), Err(DeviceError::Injected { op: "sync", .. })));
    assert_eq!(dev.pending_writes(), 2);
    dev.sync().unwrap();
    assert_eq!(dev.pending_writes(), 0);

    // An unnamed memory device is still named in errors.
    let anon = FaultyDevice::new(Arc::new(MemDevice::new(1 << 20, BS as u32)));
    anon.fail_nth(1, IoKind::Read);
    let e = anon.read_at(0, &mut r).unwrap_err();
    assert!(e.to_string().contains("Memory"), "{e}");
}

#[test]
fn hook_sees_ops_with_per_kind_indices_and_counters_count() {
    let dev = faulty(1 << 20);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    dev.set_fault_hook(Box::new(move |op: &IoOp| {
        s.lock().unwrap().push(*op);
        None
    }));
    let mut r = AlignedBuf::zeroed(2 * BS);
    dev.write_at(0, &blocks(1, 2)).unwrap();
    dev.read_at(0, &mut r).unwrap();
    dev.read_at(0, &mut r[..BS]).unwrap();
    dev.sync().unwrap();
    dev.discard(0, BS as u64).unwrap();
    let ops = seen.lock().unwrap().clone();
    let want = [
        IoOp { kind: IoKind::Write, offset: 0, len: 2 * BS as u64, index: 0 },
        IoOp { kind: IoKind::Read, offset: 0, len: 2 * BS as u64, index: 0 },
        IoOp { kind: IoKind::Read, offset: 0, len: BS as u64, index: 1 },
        IoOp { kind: IoKind::Sync, offset: 0, len: 0, index: 0 },
        IoOp { kind: IoKind::Discard, offset: 0, len: BS as u64, index: 0 },
    ];
    assert_eq!(ops, want);
    assert_eq!((dev.reads(), dev.writes(), dev.syncs(), dev.discards()), (2, 1, 1, 1));
}

#[test]
fn bit_flips_show_on_read() {
    let dev = faulty(1 << 20);
    dev.write_at(0, &blocks(0, 2)).unwrap();
    dev.sync().unwrap();
    // Rot of the media: live and durable.
    dev.flip_bit(100, 3).unwrap();
    let mut r = AlignedBuf::zeroed(BS);
    dev.read_at(0, &mut r).unwrap();
    assert_eq!(r[100], 1 << 3);
    assert_eq!(r.iter().filter(|&&b| b != 0).count(), 1);
    assert_eq!(dev.durable_image()[100], 1 << 3);
    assert_eq!(dev.crash_image(5)[100], 1 << 3);
    // Rot under a pending write: the durable (old) copy rots too.
    dev.write_at(BS as u64, &blocks(0x40, 1)).unwrap();
    dev.flip_bit(BS as u64 + 7, 0).unwrap();
    dev.read_at(BS as u64, &mut r).unwrap();
    assert_eq!(r[7], 0x41);
    assert_eq!(dev.durable_image()[BS + 7], 0x01 ^ 0x01, "durable block 1 held 0x01, flipped to 0x00");
    // A flip on the way (FlipBitOnRead) leaves the media alone.
    dev.set_fault_hook(Box::new(|op: &IoOp| {
        (op.kind == IoKind::Read).then_some(Fault::FlipBitOnRead { byte: 10, bit: 7 })
    }));
    dev.read_at(0, &mut r).unwrap();
    assert_eq!(r[10], 0x80);
    dev.clear_fault_hook();
    dev.read_at(0, &mut r).unwrap();
    assert_eq!(r[10], 0);
    assert!(dev.flip_bit(1 << 20, 0).is_err());
}

#[test]
fn dropped_writes_and_lost_flushes() {
    let dev = faulty(1 << 20);
    dev.write_at(0, &blocks(1, 1)).unwrap();
    dev.set_fault_hook(Box::new(|op: &IoOp| {
        matches!(op.kind, IoKind::Write | IoKind::Sync).then_some(Fault::DropWrite)
    }));
    dev.write_at(0, &blocks(2, 1)).unwrap(); // lied about
    dev.sync().unwrap(); // a lost flush
    let mut r = AlignedBuf::zeroed(BS);
    dev.read_at(0, &mut r).unwrap();
    assert!(uniform(&r, 1), "a dropped write leaves the old data");
    assert_eq!(dev.pending_writes(), 1, "a dropped sync leaves writes pending");
    assert!(uniform(block_of(&dev.durable_image(), 0), 0));
    dev.clear_fault_hook();
    dev.sync().unwrap();
    assert!(uniform(block_of(&dev.durable_image(), 0), 1));
}

#[test]
fn contract_is_kept() {
    let dev = faulty(1 << 20);
    let b = AlignedBuf::zeroed(2 * BS);
    assert!(matches!(dev.write_at(512, &b[..BS]), Err(DeviceError::Misaligned { .. })));
    assert!(matches!(dev.write_at(1 << 20, &b[..BS]), Err(DeviceError::OutOfRange { .. })));
    assert!(matches!(dev.discard(0, 100), Err(DeviceError::Misaligned { .. })));
    assert_eq!(dev.pending_writes(), 0);
    assert_eq!(dev.size(), 1 << 20);
    assert_eq!(dev.block_size(), BS as u32);
    assert_eq!(dev.identity().path.to_str(), Some("mem-a"));
}

#[test]
fn parallel_writers_then_sync_make_everything_durable() {
    let dev = Arc::new(faulty(4 << 20));
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let dev = dev.clone();
            s.spawn(move || {
                for i in 0..32u64 {
                    dev.write_at((i * 4 + t) * BS as u64, &blocks(t as u8 + 1, 1)).unwrap();
                }
            });
        }
    });
    assert_eq!(dev.writes(), 128);
    dev.sync().unwrap();
    let img = dev.crash_image(1);
    for i in 0..128 {
        assert!(uniform(block_of(&img, i), (i % 4) as u8 + 1));
    }
}

#[test]
fn discard_on_a_directory_member_is_modelled_as_a_write() {
    // A DirDevice discard deletes fragment files (the range then reads as
    // zeros): until the next sync, a crash may or may not undo it.
    let tmp = tempfile::tempdir().unwrap();
    let dir = dynamicfs::device::DirDevice::create(&tmp.path().join("m"), 32 << 20).unwrap();
    let data = dir.layout().region(dfs_format::RegionKind::Data).start;
    let dev = FaultyDevice::new(Arc::new(dir));
    dev.write_at(data, &blocks(7, 2)).unwrap();
    dev.sync().unwrap();
    dev.discard(data, 2 * BS as u64).unwrap();
    assert_eq!(dev.pending_writes(), 1);
    let d = data as usize;
    assert!(uniform(&dev.durable_image()[d..d + BS], 7));
    let mut r = AlignedBuf::zeroed(BS);
    dev.read_at(data, &mut r).unwrap();
    assert!(uniform(&r, 0));
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Op {
    Write { block: u64, blocks: u64 },
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..16, 1u64..5).prop_map(|(block, blocks)| Op::Write { block, blocks }),
        1 => Just(Op::Sync),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Against a per-block model: after any sequence of writes and syncs,
    /// every block of every crash image holds its durable value or the value
    /// of a write to it since the last sync.
    #[test]
    fn crash_images_agree_with_a_block_model(ops in prop::collection::vec(op(), 1..40), seeds in prop::collection::vec(any::<u64>(), 4)) {
        let dev = faulty(64 * BS as u64);
        let mut durable = [0u8; 20];
        let mut pending: Vec<Vec<u8>> = vec![Vec::new(); 20];
        for (k, op) in ops.iter().enumerate() {
            match *op {
                Op::Write { block, blocks } => {
                    let v = k as u8 + 1; // unique per write
                    let mut b = AlignedBuf::zeroed(blocks as usize * BS);
                    b.fill(v);
                    dev.write_at(block * BS as u64, &b).unwrap();
                    for i in block..block + blocks {
                        pending[i as usize].push(v);
                    }
                }
                Op::Sync => {
                    dev.sync().unwrap();
                    for (d, p) in durable.iter_mut().zip(pending.iter_mut()) {
                        if let Some(&last) = p.last() {
                            *d = last;
                        }
                        p.clear();
                    }
                }
            }
        }
        for seed in seeds {
            let img = dev.crash_image(seed);
            for b in 0..20 {
                let blk = block_of(&img, b);
                let v = blk[0];
                prop_assert!(uniform(blk, v), "block {} torn inside", b);
                prop_assert!(v == durable[b] || pending[b].contains(&v),
                    "block {} holds {} (durable {}, pending {:?})", b, v, durable[b], pending[b]);
            }
        }
    }
}
