//! [`MemDevice`]: a member held in memory, for tests, fuzzing and crash
//! images.
//!
//! It owns a byte array of the device's size and nothing else: no
//! durability (every write is "durable" the moment it returns, so `sync` is a
//! no-op, or a fixed sleep set by [`MemDevice::with_sync_latency`] that
//! models a disk's cache flush for group-commit tests and benches), no fault injection (wrap it in [`FaultyDevice`](super::faulty) for
//! that), no interpretation of the bytes. It keeps the whole [`Device`]
//! contract (alignment, range, `Send + Sync`), so code that works on a
//! `MemDevice` works on a raw member.
//!
//! Storage is sparse and chunked: the image is cut into chunks of
//! [`CHUNK_SIZE`] bytes (or one block, when blocks are larger), each behind
//! its own `RwLock` and allocated on first write, so a large test device costs
//! memory only for what is written, and IO to different chunks runs in
//! parallel. A request that spans chunks is not atomic against a concurrent
//! request to the same range (the contract promises nothing there either).
//!
//! Identity: kind [`DeviceKind::Memory`], an empty path unless the device was
//! given a label with [`MemDevice::named`] (the label is what errors print),
//! `dev` 0, and a process-unique serial in `ino`, so that two memory devices
//! never compare equal as "the same disk".

use super::{check_request, Device, DeviceIdentity, DeviceKind, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

/// Size of one lazily allocated chunk of a memory device's image.
pub const CHUNK_SIZE: u64 = 1 << 20;

/// Serial numbers for [`DeviceIdentity::ino`] of memory devices.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

/// An in-memory device. See the module doc.
pub struct MemDevice {
    identity: DeviceIdentity,
    block_size: u32,
    size: u64,
    chunk: u64,
    /// `None` = never written, reads as zeros.
    chunks: Vec<RwLock<Option<Box<[u8]>>>>,
    /// How long `sync` sleeps (zero: it returns at once).
    sync_latency: Duration,
}

impl MemDevice {
    /// A zeroed device of `size` bytes with blocks of `block_size` bytes.
    ///
    /// # Panics
    /// When `block_size` is not a power of two of at least 4096, or `size` is
    /// not a multiple of it: a test constructing such a device is wrong.
    pub fn new(size: u64, block_size: u32) -> MemDevice {
        MemDevice::build(PathBuf::new(), size, block_size)
    }

    /// Like [`MemDevice::new`], with a label that errors and
    /// [`DeviceIdentity::path`] carry (for example `"mem0"`), so a test with
    /// several members can tell which one failed.
    pub fn named(label: &str, size: u64, block_size: u32) -> MemDevice {
        MemDevice::build(PathBuf::from(label), size, block_size)
    }

    /// A device whose content is `image` (its length is the device size).
    ///
    /// # Panics
    /// As [`MemDevice::new`].
    pub fn from_image(image: &[u8], block_size: u32) -> MemDevice {
        let dev = MemDevice::new(image.len() as u64, block_size);
        dev.store(0, image);
        dev
    }

    fn build(path: PathBuf, size: u64, block_size: u32) -> MemDevice {
        assert!(
            block_size.is_power_of_two() && block_size >= 4096,
            "MemDevice: block size {block_size} is not a power of two >= 4096"
        );
        assert!(
            size.is_multiple_of(block_size as u64),
            "MemDevice: size {size} is not a multiple of the block size {block_size}"
        );
        let chunk = CHUNK_SIZE.max(block_size as u64);
        let n = size.div_ceil(chunk);
        let chunks = (0..n).map(|_| RwLock::new(None)).collect();
        let identity =
            DeviceIdentity { kind: DeviceKind::Memory, path, dev: 0, ino: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed) };
        MemDevice { identity, block_size, size, chunk, chunks, sync_latency: Duration::ZERO }
    }

    /// This device with a `sync` that takes `latency` (a disk's cache flush),
    /// so tests and benches can count what group commit saves.
    pub fn with_sync_latency(mut self, latency: Duration) -> MemDevice {
        self.sync_latency = latency;
        self
    }

    /// A copy of the whole image, consistent even while other threads write
    /// (every chunk is read-locked at once).
    pub fn snapshot(&self) -> Vec<u8> {
        let guards: Vec<RwLockReadGuard<'_, Option<Box<[u8]>>>> =
            self.chunks.iter().map(|c| c.read().unwrap_or_else(|e| e.into_inner())).collect();
        let mut out = vec![0u8; self.size as usize];
        for (i, g) in guards.iter().enumerate() {
            if let Some(data) = g.as_ref() {
                let start = i * self.chunk as usize;
                out[start..start + data.len()].copy_from_slice(data);
            }
        }
        out
    }

    /// Bytes of memory held by written chunks (for memory budgets in tests).
    pub fn allocated_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .filter_map(|c| c.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|d| d.len() as u64))
            .sum()
    }

    fn chunk_len(&self, i: usize) -> usize {
        let start = i as u64 * self.chunk;
        (self.size - start).min(self.chunk) as usize
    }

    /// Copy `data` into the image at `offset` (already checked).
    fn store(&self, offset: u64, data: &[u8]) {
        let mut done = 0usize;
        while done < data.len() {
            let pos = offset + done as u64;
            let i = (pos / self.chunk) as usize;
            let at = (pos % self.chunk) as usize;
            let n = (self.chunk_len(i) - at).min(data.len() - done);
            let mut g = self.chunks[i].write().unwrap_or_else(|e| e.into_inner());
            let len = self.chunk_len(i);
            let chunk = g.get_or_insert_with(|| vec![0u8; len].into_boxed_slice());
            chunk[at..at + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// Fill `buf` from the image at `offset` (already checked).
    fn load(&self, offset: u64, buf: &mut [u8]) {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let i = (pos / self.chunk) as usize;
            let at = (pos % self.chunk) as usize;
            let n = (self.chunk_len(i) - at).min(buf.len() - done);
            let g = self.chunks[i].read().unwrap_or_else(|e| e.into_inner());
            match g.as_ref() {
                Some(chunk) => buf[done..done + n].copy_from_slice(&chunk[at..at + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
    }
}

impl std::fmt::Debug for MemDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemDevice")
            .field("identity", &self.identity)
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

impl Device for MemDevice {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_request(self, offset, buf)?;
        self.load(offset, buf);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_request(self, offset, buf)?;
        self.store(offset, buf);
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        if !self.sync_latency.is_zero() {
            std::thread::sleep(self.sync_latency);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{AlignedBuf, DeviceError};

    #[test]
    fn round_trip_across_chunks_and_sparse_zeros() {
        let dev = MemDevice::new(4 << 20, 4096);
        assert_eq!(dev.allocated_bytes(), 0);
        // A write straddling the first chunk boundary.
        let mut w = AlignedBuf::zeroed(3 * 4096);
        for (i, b) in w.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let off = CHUNK_SIZE - 4096;
        dev.write_at(off, &w).unwrap();
        let mut r = AlignedBuf::zeroed(3 * 4096);
        dev.read_at(off, &mut r).unwrap();
        assert_eq!(&r[..], &w[..]);
        assert_eq!(dev.allocated_bytes(), 2 * CHUNK_SIZE);
        // An untouched chunk reads as zeros.
        let mut z = AlignedBuf::zeroed(4096);
        z[0] = 9;
        dev.read_at(3 << 20, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0));
    }

    #[test]
    fn contract_errors() {
        let dev = MemDevice::named("mem-x", 1 << 20, 4096);
        let mut b = AlignedBuf::zeroed(4096);
        assert!(matches!(dev.read_at(512, &mut b), Err(DeviceError::Misaligned { .. })));
        let e = dev.write_at(1 << 20, &b).unwrap_err();
        assert!(matches!(e, DeviceError::OutOfRange { .. }));
        assert!(e.to_string().contains("mem-x"), "{e}");
        let mut odd = AlignedBuf::zeroed(8192);
        assert!(matches!(dev.read_at(0, &mut odd[1..4097]), Err(DeviceError::Misaligned { .. })));
        assert!(matches!(dev.read_at(u64::MAX - 4095, &mut b), Err(DeviceError::OutOfRange { .. })));
    }

    #[test]
    fn snapshot_and_from_image() {
        let dev = MemDevice::new(2 << 20, 4096);
        let b = AlignedBuf::from_slice_padded(b"hello", 4096);
        dev.write_at(8192, &b).unwrap();
        let img = dev.snapshot();
        assert_eq!(img.len(), 2 << 20);
        assert_eq!(&img[8192..8197], b"hello");
        let copy = MemDevice::from_image(&img, 4096);
        assert_eq!(copy.snapshot(), img);
        assert_ne!(copy.identity(), dev.identity(), "two memory devices are two disks");
    }

    #[test]
    fn large_blocks_and_odd_tail() {
        // 64 KiB blocks, a size that is not a whole number of chunks.
        let dev = MemDevice::new(CHUNK_SIZE + 65536, 65536);
        let b = AlignedBuf::from_slice_padded(&[7u8; 65536], 65536);
        dev.write_at(CHUNK_SIZE, &b).unwrap();
        assert_eq!(dev.snapshot()[CHUNK_SIZE as usize..], [7u8; 65536]);
    }

    #[test]
    fn parallel_writers() {
        let dev = std::sync::Arc::new(MemDevice::new(8 << 20, 4096));
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let dev = dev.clone();
                s.spawn(move || {
                    let b = AlignedBuf::from_slice_padded(&[t + 1; 4096], 4096);
                    for i in 0..64u64 {
                        dev.write_at((i * 4 + t as u64) * 4096, &b).unwrap();
                    }
                });
            }
        });
        let img = dev.snapshot();
        for i in 0..256usize {
            assert_eq!(img[i * 4096], (i % 4) as u8 + 1);
        }
    }
}
