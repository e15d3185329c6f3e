//! The free-extent index: every maximal run of free blocks, twice.
//!
//! `by_start` maps start → length and answers "what is free near block X"
//! (next-fit, merging on free); `by_size` holds `(length, start)` and answers
//! "what is the smallest / largest free run of at least N blocks" (best fit,
//! `NoSpace`). Both are `BTreeMap`/`BTreeSet`, so every query and update is
//! O(log extents). Extents in the index never touch or overlap: a free merges
//! with its neighbours, so the index is exactly the set of maximal zero runs
//! of the bitmap (checked by `Allocator::check_invariants`).

use std::collections::{BTreeMap, BTreeSet};

/// Estimated heap bytes per extent held in `by_start` plus `by_size`.
///
/// A std B-tree leaf holds up to 11 entries in a ~192-byte node (16-byte
/// entries in both maps here) and is 1/2 to 3/4 full, plus internal nodes:
/// about 34 bytes per entry per map, measured by the
/// counting allocator of `examples/bench_alloc.rs` at 68-69 bytes per
/// free run for both a randomly built and a loaded (in-order) index.
pub(crate) const INDEX_BYTES_PER_EXTENT: usize = 68;

#[derive(Clone, Default)]
pub(crate) struct FreeIndex {
    by_start: BTreeMap<u64, u64>,
    by_size: BTreeSet<(u64, u64)>,
    free: u64,
}

impl FreeIndex {
    /// Number of free blocks held.
    pub(crate) fn free_blocks(&self) -> u64 {
        self.free
    }

    /// Number of extents held.
    pub(crate) fn len(&self) -> usize {
        self.by_start.len()
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.by_start.len() * INDEX_BYTES_PER_EXTENT
    }

    /// Longest free run, 0 when nothing is free.
    pub(crate) fn largest(&self) -> u64 {
        self.by_size.last().map_or(0, |&(len, _)| len)
    }

    /// The longest free run as `(start, len)`.
    pub(crate) fn largest_extent(&self) -> Option<(u64, u64)> {
        self.by_size.last().map(|&(len, start)| (start, len))
    }

    /// Smallest extent of at least `n` blocks (lowest start among equals).
    pub(crate) fn best_fit(&self, n: u64) -> Option<(u64, u64)> {
        self.by_size.range((n, 0)..).next().map(|&(len, start)| (start, len))
    }

    /// The extent holding `block`, if `block` is free.
    pub(crate) fn containing(&self, block: u64) -> Option<(u64, u64)> {
        self.by_start.range(..=block).next_back().filter(|&(&s, &l)| block - s < l).map(|(&s, &l)| (s, l))
    }

    /// Extents in address order starting at `from`, wrapping to the start.
    pub(crate) fn iter_wrapping(&self, from: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_start.range(from..).chain(self.by_start.range(..from)).map(|(&s, &l)| (s, l))
    }

    /// Length of the extent starting at `start`, if there is one.
    pub(crate) fn len_at(&self, start: u64) -> Option<u64> {
        self.by_start.get(&start).copied()
    }

    /// Extents in address order as `(start, len)`.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_start.iter().map(|(&s, &l)| (s, l))
    }

    /// Extents by `(len, start)`, shortest first.
    pub(crate) fn iter_by_size(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.by_size.iter().copied()
    }

    /// An index of `extents`, given as `(start, len)` in ascending order of
    /// start, none touching another. Bulk-built: the B-trees are filled
    /// node by node, several times faster than inserting one by one.
    pub(crate) fn from_sorted(extents: impl Iterator<Item = (u64, u64)>) -> Self {
        let by_start: BTreeMap<u64, u64> = extents.collect();
        let mut sizes: Vec<(u64, u64)> = by_start.iter().map(|(&s, &l)| (l, s)).collect();
        sizes.sort_unstable();
        let free = by_start.values().sum();
        Self { by_start, by_size: sizes.into_iter().collect(), free }
    }

    /// Adds an extent that touches no other.
    pub(crate) fn insert_raw(&mut self, start: u64, len: u64) {
        self.by_start.insert(start, len);
        self.by_size.insert((len, start));
        self.free += len;
    }

    fn remove_raw(&mut self, start: u64, len: u64) {
        self.by_start.remove(&start);
        self.by_size.remove(&(len, start));
        self.free -= len;
    }

    /// Adds `start..start+len`, merging with the extents it touches. The
    /// caller guarantees the range overlaps no extent, and says (from the
    /// bitmap, which is cheaper to ask than the trees) whether the block
    /// before `start` and the block at `start + len` are free: each `false`
    /// saves a B-tree search, which matters once the index outgrows the
    /// CPU caches.
    pub(crate) fn insert_merge(&mut self, start: u64, len: u64, prev_free: bool, next_free: bool) {
        let end = start + len;
        // The successor, starting right at `end`, is absorbed.
        let next_len = if next_free { self.by_start.remove(&end) } else { None };
        if let Some(nl) = next_len {
            self.by_size.remove(&(nl, end));
        }
        let merged_tail = len + next_len.unwrap_or(0);
        self.free += len;
        // The predecessor, ending right at `start`, grows in place.
        if prev_free {
            if let Some((&ps, pl)) = self.by_start.range_mut(..start).next_back() {
                if ps + *pl == start {
                    self.by_size.remove(&(*pl, ps));
                    *pl += merged_tail;
                    self.by_size.insert((*pl, ps));
                    return;
                }
            }
        }
        self.by_start.insert(start, merged_tail);
        self.by_size.insert((merged_tail, start));
    }

    /// Removes `at..at+n` from the extent `(start, len)` that holds it,
    /// putting back what is left on either side.
    pub(crate) fn carve(&mut self, (start, len): (u64, u64), at: u64, n: u64) {
        self.remove_raw(start, len);
        if at > start {
            self.insert_raw(start, at - start);
        }
        let (end, cut_end) = (start + len, at + n);
        if end > cut_end {
            self.insert_raw(cut_end, end - cut_end);
        }
    }
}
