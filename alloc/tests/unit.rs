//! Edge cases of the allocator, one story per test.

use dfs_alloc::{AllocError, Allocator, BlockState, Run, NEXT_FIT_SCAN};

fn save(a: &Allocator) -> Vec<Vec<u8>> {
    (0..a.chunk_count()).map(|c| a.chunk_bytes(c).unwrap()).collect()
}

fn load(a: &Allocator, chunks: &[Vec<u8>]) -> Result<Allocator, AllocError> {
    Allocator::load(a.total_blocks(), a.bits_per_chunk(), chunks.iter().map(Vec::as_slice))
}

fn ok(a: &Allocator) {
    a.check_invariants().unwrap();
}

#[test]
fn geometry_is_checked() {
    for bpc in [0, 1, 7, 12, 4097] {
        assert!(matches!(Allocator::new(100, bpc), Err(AllocError::InvalidGeometry { .. })));
    }
    assert!(matches!(Allocator::new(u64::MAX, 4096 * 8), Err(AllocError::TooLarge { .. })));
}

#[test]
fn empty_region_is_usable_and_full() {
    let mut a = Allocator::new(0, 64).unwrap();
    ok(&a);
    assert_eq!(a.chunk_count(), 0);
    assert_eq!(a.dirty_chunks().count(), 0);
    assert_eq!(a.allocate(1), Err(AllocError::NoSpace { wanted: 1, largest_free: 0 }));
    assert_eq!(a.allocate_up_to(5), None);
    let b = Allocator::load(0, 64, std::iter::empty()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn zero_length_requests_are_errors() {
    let mut a = Allocator::new(100, 64).unwrap();
    assert_eq!(a.allocate(0), Err(AllocError::ZeroLength));
    assert_eq!(a.allocate_up_to(0), None);
    assert_eq!(a.allocate(u64::MAX), Err(AllocError::NoSpace { wanted: u64::MAX, largest_free: 100 }));
    let run = Run::new(3, 0);
    assert_eq!(a.mark_used(run), Err(AllocError::EmptyRun { run }));
    assert_eq!(a.free(run), Err(AllocError::EmptyRun { run }));
    assert_eq!(a.free_deferred(run, 1), Err(AllocError::EmptyRun { run }));
    assert_eq!(a.free_blocks(), 100);
    ok(&a);
}

#[test]
fn exactly_full_then_no_space_then_free_restores() {
    let mut a = Allocator::new(130, 64).unwrap();
    let all = a.allocate(130).unwrap();
    assert_eq!(all, Run::new(0, 130));
    assert_eq!((a.free_blocks(), a.used_blocks()), (0, 130));
    assert_eq!(a.largest_free_run(), 0);
    assert_eq!(a.allocate(1), Err(AllocError::NoSpace { wanted: 1, largest_free: 0 }));
    assert_eq!(a.allocate_up_to(1), None);
    ok(&a);
    a.free(all).unwrap();
    assert_eq!((a.free_blocks(), a.used_blocks()), (130, 0));
    assert_eq!(a.free_runs().collect::<Vec<_>>(), vec![Run::new(0, 130)]);
    ok(&a);
}

#[test]
fn no_space_names_the_largest_free_run() {
    let mut a = Allocator::new(100, 64).unwrap();
    a.allocate(100).unwrap();
    a.free(Run::new(10, 7)).unwrap();
    a.free(Run::new(50, 12)).unwrap();
    let err = a.allocate(13).unwrap_err();
    assert_eq!(err, AllocError::NoSpace { wanted: 13, largest_free: 12 });
    assert!(err.to_string().contains("12"));
    // allocate_up_to takes the largest run when max does not fit.
    assert_eq!(a.allocate_up_to(13), Some(Run::new(50, 12)));
    assert_eq!(a.allocate_up_to(13), Some(Run::new(10, 7)));
    assert_eq!(a.allocate_up_to(13), None);
    a.free(Run::new(0, 100)).unwrap();
    assert_eq!(a.allocate_up_to(u64::MAX), Some(Run::new(0, 100)));
    ok(&a);
}

#[test]
fn next_fit_is_sequential() {
    let mut a = Allocator::new(1000, 256).unwrap();
    let runs: Vec<Run> = (1..=10).map(|n| a.allocate(n).unwrap()).collect();
    for w in runs.windows(2) {
        assert_eq!(w[0].end(), w[1].start, "{runs:?}");
    }
    // A hole behind the cursor is not reused while there is room ahead.
    a.free(runs[2]).unwrap();
    let next = a.allocate(runs[2].len).unwrap();
    assert_eq!(next.start, runs[9].end());
    ok(&a);
}

#[test]
fn wraps_around_to_the_start() {
    let mut a = Allocator::new(100, 64).unwrap();
    let first = a.allocate(90).unwrap();
    a.free(Run::new(0, 50)).unwrap();
    // Cursor at 90: 90..100 holds 10 blocks, not 20, so wrap to block 0.
    assert_eq!(a.allocate(20).unwrap(), Run::new(0, 20));
    // Cursor at 20: next-fit continues from there.
    assert_eq!(a.allocate(5).unwrap(), Run::new(20, 5));
    assert_eq!(a.allocate(10).unwrap(), Run::new(25, 10));
    assert_eq!(a.allocate(15).unwrap(), Run::new(35, 15));
    // Cursor at 50: the next free run is past the old cursor position.
    assert_eq!(a.allocate(10).unwrap(), Run::new(90, 10));
    assert_eq!(a.free_blocks(), 0);
    let _ = first;
    ok(&a);
}

#[test]
fn best_fit_when_next_fit_scan_fails() {
    let mut a = Allocator::new(1000, 64).unwrap();
    a.allocate(1000).unwrap();
    // Many one-block holes from the cursor's wrap point on...
    for i in 0..(NEXT_FIT_SCAN as u64 + 10) {
        a.free(Run::new(2 * i, 1)).unwrap();
    }
    // ...then a 3-block and a 2-block hole further on.
    a.free(Run::new(500, 3)).unwrap();
    a.free(Run::new(700, 2)).unwrap();
    // The scan from block 0 (cursor 1000 wraps) sees only 1-block holes, so
    // best fit picks the smallest hole that holds 2 blocks.
    assert_eq!(a.allocate(2).unwrap(), Run::new(700, 2));
    assert_eq!(a.allocate(2).unwrap(), Run::new(500, 2));
    ok(&a);
}

#[test]
fn free_reuses_merged_neighbours() {
    let mut a = Allocator::new(64, 64).unwrap();
    let r: Vec<Run> = (0..4).map(|_| a.allocate(16).unwrap()).collect();
    a.free(r[1]).unwrap();
    a.free(r[3]).unwrap();
    a.free(r[2]).unwrap();
    assert_eq!(a.free_runs().collect::<Vec<_>>(), vec![Run::new(16, 48)]);
    assert_eq!(a.free_run_count(), 1);
    ok(&a);
}

#[test]
fn mark_used_and_free_check_every_block() {
    let mut a = Allocator::new(100, 64).unwrap();
    a.mark_used(Run::new(40, 10)).unwrap();
    assert_eq!(a.mark_used(Run::new(30, 15)), Err(AllocError::DoubleAllocation { run: Run::new(30, 15), block: 40 }));
    let err = a.free(Run::new(45, 10)).unwrap_err();
    assert_eq!(err, AllocError::DoubleFree { run: Run::new(45, 10), block: 50 });
    assert!(err.to_string().contains("45+10 (blocks 45..55)"), "{err}");
    assert_eq!(a.used_blocks(), 10);
    assert_eq!(a.free_runs().collect::<Vec<_>>(), vec![Run::new(0, 40), Run::new(50, 50)]);
    ok(&a);
}

#[test]
fn out_of_range_is_an_error_not_a_panic() {
    let mut a = Allocator::new(100, 64).unwrap();
    for run in [Run::new(95, 6), Run::new(100, 1), Run::new(u64::MAX, 1), Run::new(1, u64::MAX)] {
        let want = AllocError::OutOfRange { run, total_blocks: 100 };
        assert_eq!(a.mark_used(run), Err(want.clone()));
        assert_eq!(a.free(run), Err(want.clone()));
        assert_eq!(a.free_deferred(run, 1), Err(want));
    }
    assert!(!a.is_used(100));
    assert!(!a.is_used(u64::MAX));
    assert_eq!(a.block_state(100), Err(AllocError::BlockOutOfRange { block: 100, total_blocks: 100 }));
    assert!(Run::new(u64::MAX, 5).to_string().contains(".."));
    ok(&a);
}

#[test]
fn deferred_free_waits_for_durability() {
    let mut a = Allocator::new(64, 64).unwrap();
    let old = a.allocate(64).unwrap();
    a.clear_dirty();
    a.free_deferred(Run::new(0, 32), 42).unwrap();
    // Neither allocatable nor free, still 1 on disk, nothing to write.
    assert_eq!(a.free_blocks(), 0);
    assert_eq!(a.pending_free_blocks(), 32);
    assert_eq!(a.used_blocks(), 32);
    assert!(a.is_used(0));
    assert_eq!(a.block_state(5), Ok(BlockState::PendingFree { commit_seq: 42 }));
    assert_eq!(a.block_state(40), Ok(BlockState::Used));
    assert!(a.allocate(1).is_err());
    assert_eq!(a.dirty_chunks().count(), 0);
    assert_eq!(a.chunk_bytes(0).unwrap(), vec![0xff; 8]);
    // Freeing it again, at once or deferred, is a double free.
    let again = Run::new(16, 32);
    assert_eq!(a.free(again), Err(AllocError::PendingFree { run: again, block: 16, commit_seq: 42 }));
    let overlap = Run::new(32, 8);
    a.free_deferred(overlap, 43).unwrap();
    assert_eq!(
        a.free_deferred(Run::new(30, 4), 44),
        Err(AllocError::PendingFree { run: Run::new(30, 4), block: 30, commit_seq: 42 })
    );
    ok(&a);
    // Commit 41 durable: nothing yet.
    assert_eq!(a.release_durable(41), 0);
    assert_eq!(a.free_blocks(), 0);
    // Commit 42 durable: its run only.
    assert_eq!(a.release_durable(42), 32);
    assert_eq!(a.free_blocks(), 32);
    assert_eq!(a.pending_free_blocks(), 8);
    assert_eq!(a.dirty_chunks().collect::<Vec<_>>(), vec![0]);
    assert_eq!(a.block_state(5), Ok(BlockState::Free));
    ok(&a);
    assert_eq!(a.release_durable(u64::MAX), 8);
    assert_eq!(a.free_runs().collect::<Vec<_>>(), vec![Run::new(0, 40)]);
    assert_eq!(a.used_blocks(), 24);
    let _ = old;
    ok(&a);
}

#[test]
fn deferred_free_of_an_already_durable_seq_waits_for_the_next_release() {
    let mut a = Allocator::new(16, 8).unwrap();
    a.allocate(16).unwrap();
    assert_eq!(a.release_durable(10), 0);
    a.free_deferred(Run::new(0, 4), 5).unwrap();
    assert_eq!(a.free_blocks(), 0);
    assert_eq!(a.release_durable(10), 4);
    assert_eq!(a.free_blocks(), 4);
}

#[test]
fn dirty_chunks_follow_changes() {
    let mut a = Allocator::new(100, 16).unwrap();
    assert_eq!(a.chunk_count(), 7);
    assert_eq!(a.dirty_chunks().collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
    a.clear_dirty();
    assert_eq!(a.dirty_chunks().count(), 0);
    a.mark_used(Run::new(15, 18)).unwrap(); // blocks 15..33: chunks 0, 1, 2
    assert_eq!(a.dirty_chunks().collect::<Vec<_>>(), vec![0, 1, 2]);
    a.clear_dirty();
    // A failed call dirties nothing.
    assert!(a.free(Run::new(90, 5)).is_err());
    assert_eq!(a.dirty_chunks().count(), 0);
    a.free(Run::new(20, 2)).unwrap();
    assert_eq!(a.dirty_chunks().collect::<Vec<_>>(), vec![1]);
    // Loaded: nothing dirty.
    let b = load(&a, &save(&a)).unwrap();
    assert_eq!(b.dirty_chunks().count(), 0);
}

#[test]
fn many_chunks_dirty_across_words() {
    let mut a = Allocator::new(200 * 8, 8).unwrap();
    assert_eq!(a.dirty_chunks().count(), 200);
    a.clear_dirty();
    a.mark_used(Run::new(64 * 8, 70 * 8)).unwrap();
    assert_eq!(a.dirty_chunks().collect::<Vec<_>>(), (64..134).collect::<Vec<_>>());
}

#[test]
fn last_partial_chunk_round_trips_and_rejects_tail_bits() {
    // 100 blocks, 64 per chunk: chunk 1 covers blocks 64..100 and 28 bits
    // of padding.
    let mut a = Allocator::new(100, 64).unwrap();
    assert_eq!(a.chunk_count(), 2);
    assert_eq!(a.bytes_per_chunk(), 8);
    a.mark_used(Run::new(99, 1)).unwrap();
    a.mark_used(Run::new(0, 3)).unwrap();
    let chunks = save(&a);
    assert_eq!(chunks[0], [0b111, 0, 0, 0, 0, 0, 0, 0]);
    // Block 99 = chunk 1 bit 35 = byte 4 bit 3.
    assert_eq!(chunks[1], [0, 0, 0, 0, 0b1000, 0, 0, 0]);
    let b = load(&a, &chunks).unwrap();
    assert_eq!(a, b);
    assert_eq!(b.used_runs().collect::<Vec<_>>(), vec![Run::new(0, 3), Run::new(99, 1)]);
    ok(&b);
    // Block 100 does not exist.
    let mut bad = chunks.clone();
    bad[1][4] |= 0b1_0000;
    assert_eq!(load(&a, &bad), Err(AllocError::BitPastEnd { chunk: 1, block: 100, total_blocks: 100 }));
    let mut bad = chunks.clone();
    bad[1][7] = 0x80;
    assert!(matches!(load(&a, &bad), Err(AllocError::BitPastEnd { block: 127, .. })));
    assert_eq!(a.chunk_bytes(2), Err(AllocError::NoSuchChunk { chunk: 2, chunk_count: 2 }));
    assert!(matches!(a.copy_chunk(0, &mut [0; 7]), Err(AllocError::ChunkLength { expected: 8, actual: 7, .. })));
}

#[test]
fn unaligned_chunks_round_trip() {
    // 24 bits per chunk: chunks start mid-word.
    let mut a = Allocator::new(200, 24).unwrap();
    for (s, l) in [(0, 1), (5, 30), (70, 3), (100, 50), (199, 1)] {
        a.mark_used(Run::new(s, l)).unwrap();
    }
    let chunks = save(&a);
    assert_eq!(chunks.len(), 9);
    assert!(chunks.iter().all(|c| c.len() == 3));
    let b = load(&a, &chunks).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.used_runs().collect::<Vec<_>>(), b.used_runs().collect::<Vec<_>>());
    ok(&b);
    // Block 199 = chunk 8 (blocks 192..216) bit 7.
    assert_eq!(chunks[8], [0x80, 0, 0]);
}

#[test]
fn load_rejects_wrong_shapes() {
    let a = Allocator::new(100, 64).unwrap();
    let chunks = save(&a);
    assert_eq!(load(&a, &chunks[..1]), Err(AllocError::MissingChunks { expected: 2, actual: 1 }));
    let mut more = chunks.clone();
    more.push(vec![0; 8]);
    assert_eq!(load(&a, &more), Err(AllocError::TooManyChunks { expected: 2 }));
    let mut short = chunks.clone();
    short[1].pop();
    assert_eq!(load(&a, &short), Err(AllocError::ChunkLength { chunk: 1, expected: 8, actual: 7 }));
    assert!(matches!(
        Allocator::load(100, 60, chunks.iter().map(Vec::as_slice)),
        Err(AllocError::InvalidGeometry { .. })
    ));
}

#[test]
fn pending_frees_are_persisted_as_used() {
    let mut a = Allocator::new(64, 64).unwrap();
    let r = a.allocate(10).unwrap();
    a.free_deferred(r, 7).unwrap();
    let b = load(&a, &save(&a)).unwrap();
    assert_eq!(a, b);
    assert_eq!(b.used_blocks(), 10);
    assert_eq!(b.pending_free_blocks(), 0);
    assert_eq!(b.block_state(0), Ok(BlockState::Used));
}

#[test]
fn heap_bytes_and_debug_are_sane() {
    let a = Allocator::new(1 << 20, 4096 * 8).unwrap();
    // 1 Mi blocks: 128 KiB of bitmap plus one free run.
    assert!(a.heap_bytes() >= 128 * 1024);
    assert!(a.heap_bytes() < 129 * 1024);
    let s = format!("{a:?}");
    assert!(s.contains("free_blocks: 1048576"), "{s}");
}
