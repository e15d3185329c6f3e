//! `load` takes bytes from disk: whatever they are, it answers with an
//! allocator or a typed error, never a panic. Well-shaped input (right
//! count and length of chunks, zero tail) always loads and saves back to
//! the same bytes.

use dfs_alloc::{AllocError, Allocator};
use proptest::prelude::*;

fn geometry() -> impl Strategy<Value = (u64, u32)> {
    (0u64..400, prop::sample::select(vec![0u32, 4, 8, 16, 24, 64, 72, 256]))
}

/// Checks a successful load: invariants hold, save gives the input back.
fn check_loaded(a: &Allocator, chunks: &[Vec<u8>]) {
    a.check_invariants().unwrap();
    let saved: Vec<Vec<u8>> = (0..a.chunk_count()).map(|c| a.chunk_bytes(c).unwrap()).collect();
    assert_eq!(saved, chunks);
    let ones: u64 = chunks.iter().flatten().map(|b| u64::from(b.count_ones())).sum();
    assert_eq!(a.used_blocks(), ones);
    assert_eq!(a.used_blocks() + a.free_blocks(), a.total_blocks());
    assert_eq!(a.dirty_chunks().count(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Any number of chunks of any length and content.
    #[test]
    fn arbitrary_bytes_never_panic(
        (total, bpc) in geometry(),
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
    ) {
        if let Ok(a) = Allocator::load(total, bpc, chunks.iter().map(Vec::as_slice)) {
            check_loaded(&a, &chunks);
        }
    }

    /// The right shape with random content: only tail bits can make it fail,
    /// and then with `BitPastEnd` naming the first such block.
    #[test]
    fn well_shaped_bytes_load_unless_tail_bits(
        (total, bpc) in (1u64..400, prop::sample::select(vec![8u32, 16, 24, 64, 72, 256])),
        seed in prop::collection::vec(any::<u8>(), 0..2000),
        clear_tail in any::<bool>(),
    ) {
        let per = (bpc / 8) as usize;
        let count = total.div_ceil(u64::from(bpc)) as usize;
        let mut image: Vec<u8> = seed.iter().copied().cycle().take(per * count).collect();
        image.resize(per * count, 0);
        let first_bad = (total..(count * per * 8) as u64)
            .find(|&b| image[(b / 8) as usize] >> (b % 8) & 1 == 1);
        if clear_tail {
            for b in total..(count * per * 8) as u64 {
                image[(b / 8) as usize] &= !(1 << (b % 8));
            }
        }
        let chunks: Vec<Vec<u8>> = image.chunks(per).map(<[u8]>::to_vec).collect();
        let got = Allocator::load(total, bpc, chunks.iter().map(Vec::as_slice));
        match (clear_tail, first_bad) {
            (false, Some(block)) => {
                let want_chunk = block / u64::from(bpc);
                prop_assert_eq!(
                    got.err(),
                    Some(AllocError::BitPastEnd { chunk: want_chunk, block, total_blocks: total })
                );
            }
            _ => check_loaded(&got.unwrap(), &chunks),
        }
    }
}
