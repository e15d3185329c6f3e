//! [`AlignedBuf`]: a heap buffer whose start is aligned for O_DIRECT and whose
//! length is what the caller asked for (callers ask for whole blocks).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Alignment of every IO buffer: 4096 bytes, the largest logical block size
/// of devices we drive. (Block sizes above 4096 only need 4096 alignment.)
pub const IO_ALIGN: usize = 4096;

/// A zero-initialised, `IO_ALIGN`-aligned byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (may be 0).
    pub fn zeroed(len: usize) -> AlignedBuf {
        if len == 0 {
            // A dangling but aligned pointer, never dereferenced for len 0.
            let ptr = NonNull::new(IO_ALIGN as *mut u8).expect("non-null");
            return AlignedBuf { ptr, len };
        }
        let layout = Layout::from_size_align(len, IO_ALIGN).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    /// A buffer of `len` bytes (rounded up to `round`), starting with `data`
    /// and zero-padded.
    pub fn from_slice_padded(data: &[u8], round: usize) -> AlignedBuf {
        let len = data.len().div_ceil(round.max(1)) * round.max(1);
        let mut b = AlignedBuf::zeroed(len);
        b[..data.len()].copy_from_slice(data);
        b
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len != 0 {
            let layout = Layout::from_size_align(self.len, IO_ALIGN).expect("valid layout");
            // SAFETY: allocated in `zeroed` with this exact layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes (or len is 0).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely owned.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> AlignedBuf {
        let mut b = AlignedBuf::zeroed(self.len);
        b.copy_from_slice(self);
        b
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        for len in [0usize, 1, 4096, 1 << 20] {
            let b = AlignedBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
            assert!(b.iter().all(|&x| x == 0));
        }
        let p = AlignedBuf::from_slice_padded(b"abc", 4096);
        assert_eq!(p.len(), 4096);
        assert_eq!(&p[..3], b"abc");
    }
}
