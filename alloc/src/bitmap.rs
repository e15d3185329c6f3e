//! The in-memory bitmap: one bit per block, 1 = used, packed in `u64` words.
//!
//! Block `b` is bit `b % 64` of word `b / 64`. Read as little-endian bytes,
//! that is exactly the on-disk order (bit `b % 8` of byte `b / 8`), so a
//! chunk is saved and loaded word by word. Bits past `len` are always 0.
//!
//! Callers (the allocator) check ranges before calling; every method here
//! still uses only checked indexing and stays within `len`.

/// A fixed-length bit vector, 1 = used.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

/// Mask of bits `lo..hi` of one word (`lo < hi <= 64`).
fn mask(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & !((1u64 << lo) - 1)
}

impl Bitmap {
    /// An all-zero bitmap of `len` bits; `None` if the memory can't be had.
    pub(crate) fn zeroed(len: u64) -> Option<Self> {
        let n = usize::try_from(len.div_ceil(64)).ok()?;
        let mut words = Vec::new();
        words.try_reserve_exact(n).ok()?;
        words.resize(n, 0);
        Some(Self { words, len })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.words.capacity() * std::mem::size_of::<u64>()
    }

    fn word(&self, w: u64) -> u64 {
        usize::try_from(w).ok().and_then(|w| self.words.get(w)).copied().unwrap_or(0)
    }

    fn word_mut(&mut self, w: u64) -> Option<&mut u64> {
        usize::try_from(w).ok().and_then(|w| self.words.get_mut(w))
    }

    /// Calls `f(word_index, mask)` for each word touched by `start..end`.
    fn for_each_word(start: u64, end: u64, mut f: impl FnMut(u64, u64) -> bool) {
        if start >= end {
            return;
        }
        let (first, last) = (start / 64, (end - 1) / 64);
        for w in first..=last {
            let lo = if w == first { start % 64 } else { 0 };
            let hi = if w == last { (end - 1) % 64 + 1 } else { 64 };
            if !f(w, mask(lo, hi)) {
                return;
            }
        }
    }

    /// Whether bit `i` is set (false past the end).
    pub(crate) fn get(&self, i: u64) -> bool {
        i < self.len && self.word(i / 64) >> (i % 64) & 1 == 1
    }

    /// Sets bits `start..end` (clipped to `len`).
    pub(crate) fn set_range(&mut self, start: u64, end: u64) {
        let end = end.min(self.len);
        Self::for_each_word(start, end, |w, m| {
            if let Some(word) = self.word_mut(w) {
                *word |= m;
            }
            true
        });
    }

    /// Clears bits `start..end` (clipped to `len`).
    pub(crate) fn clear_range(&mut self, start: u64, end: u64) {
        let end = end.min(self.len);
        Self::for_each_word(start, end, |w, m| {
            if let Some(word) = self.word_mut(w) {
                *word &= !m;
            }
            true
        });
    }

    /// First bit in `start..end` equal to `value`, if any.
    pub(crate) fn find_in(&self, start: u64, end: u64, value: bool) -> Option<u64> {
        let end = end.min(self.len);
        let mut found = None;
        Self::for_each_word(start, end, |w, m| {
            let word = if value { self.word(w) } else { !self.word(w) };
            let hit = word & m;
            if hit != 0 {
                found = Some(w * 64 + u64::from(hit.trailing_zeros()));
                false
            } else {
                true
            }
        });
        found
    }

    /// Whether any bit at or past `len` is set in the words (never, if
    /// every writer clips to `len` as it should).
    pub(crate) fn has_bits_past_end(&self) -> bool {
        let full = self.len / 64;
        let tail = self.len % 64;
        let first_whole = if tail == 0 {
            full
        } else {
            if self.word(full) & !mask(0, tail) != 0 {
                return true;
            }
            full + 1
        };
        self.words.iter().skip(usize::try_from(first_whole).unwrap_or(usize::MAX)).any(|&w| w != 0)
    }

    /// Number of set bits.
    pub(crate) fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Maximal runs of bits equal to `value`, in order, as `(start, end)`.
    pub(crate) fn runs(&self, value: bool) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut pos = 0;
        std::iter::from_fn(move || {
            let start = self.find_in(pos, self.len, value)?;
            let end = self.find_in(start, self.len, !value).unwrap_or(self.len);
            pos = end;
            Some((start, end))
        })
    }

    /// Byte `k` of the little-endian image (0 past the end).
    pub(crate) fn byte(&self, k: u64) -> u8 {
        // Truncation to the addressed byte is the point.
        (self.word(k / 8) >> (8 * (k % 8))) as u8
    }

    /// Copies the image bytes starting at byte `first` into `out`.
    pub(crate) fn read_bytes(&self, first: u64, out: &mut [u8]) {
        if first.is_multiple_of(8) {
            let mut w = first / 8;
            let mut chunks = out.chunks_exact_mut(8);
            for dst in &mut chunks {
                dst.copy_from_slice(&self.word(w).to_le_bytes());
                w += 1;
            }
            let tail = chunks.into_remainder();
            let bytes = self.word(w).to_le_bytes();
            tail.copy_from_slice(&bytes[..tail.len()]);
        } else {
            for (k, dst) in (first..).zip(out.iter_mut()) {
                *dst = self.byte(k);
            }
        }
    }

    /// ORs the image bytes starting at byte `first` with `src`. The caller
    /// has checked that no set bit of `src` lies past `len`; anything past
    /// the words is dropped.
    pub(crate) fn or_bytes(&mut self, first: u64, src: &[u8]) {
        if first.is_multiple_of(8) {
            let mut w = first / 8;
            let mut chunks = src.chunks_exact(8);
            for bytes in &mut chunks {
                let mut le = [0u8; 8];
                le.copy_from_slice(bytes);
                if let Some(word) = self.word_mut(w) {
                    *word |= u64::from_le_bytes(le);
                }
                w += 1;
            }
            for (k, &b) in (w * 8..).zip(chunks.remainder()) {
                self.or_byte(k, b);
            }
        } else {
            for (k, &b) in (first..).zip(src) {
                self.or_byte(k, b);
            }
        }
    }

    fn or_byte(&mut self, k: u64, value: u8) {
        if let Some(word) = self.word_mut(k / 8) {
            *word |= u64::from(value) << (8 * (k % 8));
        }
    }
}
