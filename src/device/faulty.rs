//! # FaultyDevice: a device that fails, rots and loses power on request
//!
//! [`FaultyDevice`] wraps any [`Device`] (the *inner* device, which holds the
//! *live* image: what reads see now) and adds what a test of crash safety and
//! error handling needs, after Fxfs's `FakeDevice` and redb's `CrashBackend`:
//!
//! - a model of the *durable* image (what would survive a power cut) and
//!   [`FaultyDevice::crash_image`], the image a power cut would leave;
//! - a countdown, [`FaultyDevice::crash_at`], after which the device is
//!   "unplugged" and every operation fails with [`DeviceError::Crashed`];
//! - error injection through one callback, [`FaultyDevice::set_fault_hook`]
//!   (with [`FaultyDevice::fail_nth`] as a shorthand), and bit rot on demand,
//!   [`FaultyDevice::flip_bit`];
//! - counters of reads, writes, syncs and discards.
//!
//! It owns only that model. It must never interpret the bytes it moves, never
//! be used outside tests, and never be bypassed: every write meant to be part
//! of the model must go through it (a write made to the inner device directly
//! is indistinguishable from durable data).
//!
//! ## The durability model
//!
//! The device keeps, in memory, every write (and discard) completed since the
//! last successful [`Device::sync`], in issue order, each with its offset, the
//! bytes it wrote (*new*) and the bytes it replaced (*old*, read from the inner
//! device just before the write). Durable state = the inner device's content
//! at the last successful sync = the live image with the pending writes undone
//! newest first. A successful `sync` makes every pending write durable and
//! forgets them. The inner device's content when it was wrapped counts as
//! durable.
//!
//! Why an undo log and not a second full copy of the image: memory grows with
//! the unsynced bytes only, not with the device size, and the inner device may
//! be anything (a `MemDevice`, an image file, a loop device). The price is one
//! extra read per write, and writes, syncs and discards are serialized by one
//! lock so the log has a single order (reads still run in parallel).
//!
//! ## What a power cut leaves ([`FaultyDevice::crash_image`])
//!
//! Start from the durable image; then, for each pending write in issue order,
//! a seeded random choice, each with probability 1/3:
//!
//! - **dropped**: none of it reached the media;
//! - **whole**: all of it did;
//! - **torn**: each of its blocks (of the inner device's block size) did or
//!   did not, independently.
//!
//! Later writes land over earlier ones, so a block written twice ends as its
//! durable content, the first write's data or the second's. At block
//! granularity, therefore, every block of a crash image holds its durable
//! bytes or the bytes of one pending write to it: never anything else. The
//! contract in `device/mod.rs` promises no more.
//!
//! Real disks promise less for a block that was in flight: with
//! [`CrashOptions::tear_sectors`] (off by default) one block of each torn write
//! is itself torn at [`CrashOptions::sector_size`] granularity, each sector old
//! or new. Use it to check that block checksums catch a torn block.
//!
//! The choice depends only on the seed and on the pending log, so a failing
//! seed replays. The generator is a fixed SplitMix64 written here, so images
//! do not change when a dependency is upgraded.
//!
//! ## Power loss ([`FaultyDevice::crash_at`])
//!
//! `crash_at(n)` arms a countdown over writes and syncs (reads and discards
//! do not count). The n-th write or sync from now is the one during which the
//! power fails: a write is applied to the live image and logged as pending
//! (so `crash_image` decides whether it survived, whole or torn), a sync makes
//! nothing durable; either way it returns [`DeviceError::Crashed`], as does
//! every later operation. [`FaultyDevice::is_crashed`] tells. The test then
//! builds the post-crash image with `crash_image(seed)` (and opens it as a new
//! `MemDevice`), or calls [`FaultyDevice::power_cycle`] to write that image
//! into the inner device and carry on with this same device.
//!
//! ## Injected faults ([`FaultyDevice::set_fault_hook`])
//!
//! Before each operation, the hook sees an [`IoOp`] and may return a
//! [`Fault`]:
//!
//! - [`Fault::Error`]: the operation fails with [`DeviceError::Injected`]
//!   naming the device, and has no effect (a failed sync keeps its writes
//!   pending);
//! - [`Fault::FlipBitOnRead`]: a read succeeds but one bit of the returned
//!   buffer is flipped (the media is intact: a bus or cache error);
//! - [`Fault::DropWrite`]: the operation reports success and does nothing, a
//!   lying device: a dropped write leaves the old data, a dropped sync (a lost
//!   flush) leaves every pending write pending, a dropped discard keeps the
//!   data.
//!
//! A power cut takes precedence over the hook. [`FaultyDevice::flip_bit`]
//! models rot of the media instead: the bit flips in the live and the durable
//! image, and every later read sees it.

use super::{check_request, AlignedBuf, Device, DeviceError, DeviceIdentity, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// The kind of an operation seen by a fault hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoKind {
    /// [`Device::read_at`] (each request of a batch is one read).
    Read,
    /// [`Device::write_at`] (each request of a batch is one write).
    Write,
    /// [`Device::sync`].
    Sync,
    /// [`Device::discard`].
    Discard,
}

impl IoKind {
    fn name(self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
            IoKind::Sync => "sync",
            IoKind::Discard => "discard",
        }
    }
}

/// One operation, as shown to a fault hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoOp {
    /// What it is.
    pub kind: IoKind,
    /// Byte offset (0 for a sync).
    pub offset: u64,
    /// Length in bytes (0 for a sync).
    pub len: u64,
    /// How many operations of this kind the device saw before this one
    /// (0-based, every call counts, failed ones too): the value of
    /// [`FaultyDevice::reads`] (or `writes`, `syncs`, `discards`) just
    /// before the call.
    pub index: u64,
}

/// What a fault hook asks the device to do to an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail with [`DeviceError::Injected`]; the operation has no effect.
    Error,
    /// Reads only (ignored for other kinds): succeed, then flip bit `bit`
    /// (0..8) of byte `byte` of the returned buffer (ignored when `byte` is
    /// beyond the read).
    FlipBitOnRead { byte: u64, bit: u8 },
    /// Report success and do nothing (for a sync: keep every write pending).
    /// Ignored for reads.
    DropWrite,
}

/// A fault hook: called before each operation, returns the fault to inject.
/// It must not do IO through the same device.
pub type FaultHook = dyn Fn(&IoOp) -> Option<Fault> + Send + Sync;

/// How [`FaultyDevice::crash_image`] tears writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashOptions {
    /// Also tear one block of each torn write at sector granularity (each
    /// sector of it old or new). Off by default.
    pub tear_sectors: bool,
    /// The sector size for `tear_sectors`: a power of two dividing the block
    /// size. 512 by default.
    pub sector_size: u32,
}

impl Default for CrashOptions {
    fn default() -> Self {
        CrashOptions { tear_sectors: false, sector_size: 512 }
    }
}

/// A write (or discard) not yet made durable by a sync.
struct Pending {
    offset: u64,
    /// The bytes it replaced.
    old: Vec<u8>,
    /// The bytes it wrote.
    new: Vec<u8>,
}

struct State {
    /// Since the last successful sync, in issue order.
    pending: Vec<Pending>,
    /// Writes and syncs left until the power cut (1 = the next one).
    countdown: Option<u64>,
    options: CrashOptions,
}

/// A device wrapper that injects errors, bit flips and power cuts. See the
/// module doc for the model.
pub struct FaultyDevice {
    inner: Arc<dyn Device>,
    identity: DeviceIdentity,
    /// What errors print: the inner path, or the identity's display form.
    name: PathBuf,
    state: Mutex<State>,
    hook: RwLock<Option<Arc<FaultHook>>>,
    crashed: AtomicBool,
    reads: AtomicU64,
    writes: AtomicU64,
    syncs: AtomicU64,
    discards: AtomicU64,
}

impl fmt::Debug for FaultyDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyDevice")
            .field("inner", &self.inner)
            .field("crashed", &self.is_crashed())
            .field("pending_writes", &self.pending_writes())
            .finish_non_exhaustive()
    }
}

impl FaultyDevice {
    /// Wrap `inner`. Its current content counts as durable.
    pub fn new(inner: Arc<dyn Device>) -> FaultyDevice {
        let identity = inner.identity().clone();
        let name = if identity.path.as_os_str().is_empty() {
            PathBuf::from(identity.to_string())
        } else {
            identity.path.clone()
        };
        FaultyDevice {
            inner,
            identity,
            name,
            state: Mutex::new(State { pending: Vec::new(), countdown: None, options: CrashOptions::default() }),
            hook: RwLock::new(None),
            crashed: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            discards: AtomicU64::new(0),
        }
    }

    /// The wrapped device (writes made to it directly bypass the model).
    pub fn inner(&self) -> &Arc<dyn Device> {
        &self.inner
    }

    // ----- fault injection -----

    /// Install `hook`, replacing any earlier hook (including those of
    /// [`FaultyDevice::fail_nth`]).
    pub fn set_fault_hook(&self, hook: Box<FaultHook>) {
        *self.hook.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::from(hook));
    }

    /// Remove every hook.
    pub fn clear_fault_hook(&self) {
        *self.hook.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Make the `n`-th operation of `kind` from now (1 = the next one) fail
    /// with [`Fault::Error`]. Adds to the installed hook (which still sees
    /// every other operation).
    ///
    /// # Panics
    /// When `n` is 0.
    pub fn fail_nth(&self, n: u64, kind: IoKind) {
        assert!(n >= 1, "fail_nth counts from 1 (the next operation)");
        let target = self.counter(kind).load(Ordering::SeqCst) + n - 1;
        let mut slot = self.hook.write().unwrap_or_else(|e| e.into_inner());
        let prev = slot.take();
        *slot = Some(Arc::new(move |op: &IoOp| {
            if op.kind == kind && op.index == target {
                return Some(Fault::Error);
            }
            prev.as_ref().and_then(|h| h(op))
        }));
    }

    /// Rot one bit of the media: flip bit `bit` (0..8) of the byte at
    /// `offset` in the live image and in the durable image. A pending write
    /// over that byte keeps its own data: a crash image in which it lands
    /// shows the unflipped byte (the rot hit the old copy). Ignores crash
    /// state, hooks and counters.
    pub fn flip_bit(&self, offset: u64, bit: u8) -> Result<()> {
        if offset >= self.inner.size() {
            return Err(DeviceError::OutOfRange { device: self.name.clone(), offset, len: 1, size: self.inner.size() });
        }
        let mask = 1u8 << (bit & 7);
        let mut st = self.lock();
        let bs = self.inner.block_size() as u64;
        let block = offset / bs * bs;
        let mut buf = AlignedBuf::zeroed(bs as usize);
        self.inner.read_at(block, &mut buf)?;
        buf[(offset - block) as usize] ^= mask;
        self.inner.write_at(block, &buf)?;
        // The durable byte is the `old` byte of the earliest pending write
        // covering it (or the live byte when none does).
        if let Some(p) = st.pending.iter_mut().find(|p| p.offset <= offset && offset < p.offset + p.old.len() as u64) {
            p.old[(offset - p.offset) as usize] ^= mask;
        }
        Ok(())
    }

    // ----- power loss -----

    /// Arm the power cut: the `n`-th write or sync from now (1 = the next
    /// one) fails with [`DeviceError::Crashed`], and so does everything
    /// after it. `n == 0` cuts the power now. Replaces an earlier countdown.
    pub fn crash_at(&self, n: u64) {
        if n == 0 {
            self.crash_now();
        } else {
            self.lock().countdown = Some(n);
        }
    }

    /// Cut the power now.
    pub fn crash_now(&self) {
        let mut st = self.lock();
        st.countdown = None;
        self.crashed.store(true, Ordering::SeqCst);
    }

    /// Disarm a countdown set by [`FaultyDevice::crash_at`] (a crash that
    /// already happened stays).
    pub fn cancel_crash(&self) {
        self.lock().countdown = None;
    }

    /// True once the power is cut.
    pub fn is_crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Set how crash images tear writes.
    ///
    /// # Panics
    /// When `sector_size` is not a power of two dividing the block size.
    pub fn set_crash_options(&self, options: CrashOptions) {
        let bs = self.inner.block_size();
        assert!(
            options.sector_size.is_power_of_two() && options.sector_size <= bs,
            "sector size {} must be a power of two dividing the block size {bs}",
            options.sector_size
        );
        self.lock().options = options;
    }

    /// The options crash images use.
    pub fn crash_options(&self) -> CrashOptions {
        self.lock().options
    }

    /// The image a power cut now would leave, for this `seed` (see the module
    /// doc). Deterministic: same pending writes, same seed, same image. Works
    /// whether or not the device is crashed, and changes nothing.
    ///
    /// # Panics
    /// When the inner device fails a read (never for a `MemDevice`); use
    /// [`FaultyDevice::try_crash_image`] to get the error instead.
    pub fn crash_image(&self, seed: u64) -> Vec<u8> {
        self.try_crash_image(seed).unwrap_or_else(|e| panic!("crash_image: {e}"))
    }

    /// [`FaultyDevice::crash_image`], returning the inner device's error.
    pub fn try_crash_image(&self, seed: u64) -> Result<Vec<u8>> {
        let st = self.lock();
        let patch = self.crash_patch(&st, Some(seed))?;
        self.image_with(&patch)
    }

    /// The durable image: what a power cut that loses every pending write
    /// would leave.
    ///
    /// # Panics
    /// As [`FaultyDevice::crash_image`].
    pub fn durable_image(&self) -> Vec<u8> {
        let st = self.lock();
        self.crash_patch(&st, None).and_then(|p| self.image_with(&p)).unwrap_or_else(|e| panic!("durable_image: {e}"))
    }

    /// Restore power: write `crash_image(seed)` into the inner device (only
    /// the blocks pending writes touched), sync it, forget the
    /// pending writes, disarm the countdown and accept IO again. Counters and
    /// hooks are kept.
    pub fn power_cycle(&self, seed: u64) -> Result<()> {
        let mut st = self.lock();
        let patch = self.crash_patch(&st, Some(seed))?;
        let bs = self.inner.block_size() as usize;
        let mut buf = AlignedBuf::zeroed(bs);
        for (off, data) in &patch {
            buf.copy_from_slice(data);
            self.inner.write_at(*off, &buf)?;
        }
        self.inner.sync()?;
        st.pending.clear();
        st.countdown = None;
        self.crashed.store(false, Ordering::SeqCst);
        Ok(())
    }

    // ----- counters -----

    /// Reads attempted (each request of a batch counts).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Writes attempted (each request of a batch counts).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Syncs attempted.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// Discards attempted.
    pub fn discards(&self) -> u64 {
        self.discards.load(Ordering::SeqCst)
    }

    /// Writes (and discards that changed data) not yet made durable.
    pub fn pending_writes(&self) -> usize {
        self.lock().pending.len()
    }

    // ----- internals -----

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn counter(&self, kind: IoKind) -> &AtomicU64 {
        match kind {
            IoKind::Read => &self.reads,
            IoKind::Write => &self.writes,
            IoKind::Sync => &self.syncs,
            IoKind::Discard => &self.discards,
        }
    }

    /// Count the operation, refuse it after a power cut, and ask the hook.
    fn begin(&self, kind: IoKind, offset: u64, len: u64) -> Result<Option<Fault>> {
        let index = self.counter(kind).fetch_add(1, Ordering::SeqCst);
        if self.is_crashed() {
            return Err(self.crashed_error());
        }
        let hook = self.hook.read().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(hook.and_then(|h| h(&IoOp { kind, offset, len, index })))
    }

    fn crashed_error(&self) -> DeviceError {
        DeviceError::Crashed { device: self.name.clone() }
    }

    fn injected(&self, kind: IoKind, offset: u64) -> DeviceError {
        DeviceError::Injected { device: self.name.clone(), op: kind.name(), offset }
    }

    /// Under the state lock: refuse after a power cut, and step the
    /// countdown. True when this write or sync is the one the power fails in.
    fn step_countdown(&self, st: &mut State) -> Result<bool> {
        if self.is_crashed() {
            return Err(self.crashed_error());
        }
        match st.countdown {
            Some(c) if c <= 1 => {
                st.countdown = None;
                self.crashed.store(true, Ordering::SeqCst);
                Ok(true)
            }
            Some(c) => {
                st.countdown = Some(c - 1);
                Ok(false)
            }
            None => Ok(false),
        }
    }

    /// Write through to the inner device and log it as pending. Logged even
    /// when the inner write fails: its effect is then unknown, and undoing it
    /// restores the old bytes either way.
    fn apply_write(&self, st: &mut State, offset: u64, buf: &[u8]) -> Result<()> {
        let mut old = AlignedBuf::zeroed(buf.len());
        self.inner.read_at(offset, &mut old)?;
        let res = self.inner.write_at(offset, buf);
        st.pending.push(Pending { offset, old: old.to_vec(), new: buf.to_vec() });
        res
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let bs = self.inner.block_size() as u64;
        if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
            return Err(DeviceError::Misaligned { device: self.name.clone(), offset, len, block_size: bs as u32 });
        }
        if offset.checked_add(len).is_none_or(|end| end > self.inner.size()) {
            return Err(DeviceError::OutOfRange { device: self.name.clone(), offset, len, size: self.inner.size() });
        }
        Ok(())
    }

    /// The blocks in which a crash image differs from the live image, with
    /// their crash-image bytes. `seed == None`: every pending write dropped.
    fn crash_patch(&self, st: &State, seed: Option<u64>) -> Result<BTreeMap<u64, Vec<u8>>> {
        let bs = self.inner.block_size() as usize;
        let mut map: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut buf = AlignedBuf::zeroed(bs);
        // Live content of every touched block...
        for p in &st.pending {
            for i in 0..p.new.len() / bs {
                let off = p.offset + (i * bs) as u64;
                if let std::collections::btree_map::Entry::Vacant(e) = map.entry(off) {
                    self.inner.read_at(off, &mut buf)?;
                    e.insert(buf.to_vec());
                }
            }
        }
        // ...undone newest first gives the durable content...
        for p in st.pending.iter().rev() {
            for (i, old) in p.old.chunks_exact(bs).enumerate() {
                map.get_mut(&(p.offset + (i * bs) as u64)).expect("touched block").copy_from_slice(old);
            }
        }
        // ...then each pending write, in order, dropped, whole or torn.
        let Some(seed) = seed else { return Ok(map) };
        let mut rng = SplitMix64(seed);
        let sector = st.options.sector_size as usize;
        for p in &st.pending {
            let blocks = p.new.len() / bs;
            let fate = rng.below(3);
            if fate == 0 {
                continue; // dropped
            }
            let sector_torn = (fate == 2 && st.options.tear_sectors).then(|| rng.below(blocks as u64) as usize);
            for (i, new) in p.new.chunks_exact(bs).enumerate() {
                let cur = map.get_mut(&(p.offset + (i * bs) as u64)).expect("touched block");
                if fate == 1 {
                    cur.copy_from_slice(new);
                } else if sector_torn == Some(i) {
                    for (c, n) in cur.chunks_exact_mut(sector).zip(new.chunks_exact(sector)) {
                        if rng.coin() {
                            c.copy_from_slice(n);
                        }
                    }
                } else if rng.coin() {
                    cur.copy_from_slice(new);
                }
            }
        }
        Ok(map)
    }

    /// The live image with `patch` laid over it.
    fn image_with(&self, patch: &BTreeMap<u64, Vec<u8>>) -> Result<Vec<u8>> {
        let size = self.inner.size();
        let mut out = vec![0u8; size as usize];
        let step = (1u64 << 20).max(self.inner.block_size() as u64);
        let mut buf = AlignedBuf::zeroed(step.min(size) as usize);
        let mut off = 0u64;
        while off < size {
            let n = step.min(size - off) as usize;
            self.inner.read_at(off, &mut buf[..n])?;
            out[off as usize..off as usize + n].copy_from_slice(&buf[..n]);
            off += n as u64;
        }
        for (off, data) in patch {
            out[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        Ok(out)
    }
}

impl Device for FaultyDevice {
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_request(self, offset, buf)?;
        let fault = self.begin(IoKind::Read, offset, buf.len() as u64)?;
        match fault {
            Some(Fault::Error) => Err(self.injected(IoKind::Read, offset)),
            Some(Fault::FlipBitOnRead { byte, bit }) => {
                self.inner.read_at(offset, buf)?;
                if let Some(b) = usize::try_from(byte).ok().and_then(|i| buf.get_mut(i)) {
                    *b ^= 1 << (bit & 7);
                }
                Ok(())
            }
            Some(Fault::DropWrite) | None => self.inner.read_at(offset, buf),
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<()> {
        check_request(self, offset, buf)?;
        let fault = self.begin(IoKind::Write, offset, buf.len() as u64)?;
        let mut st = self.lock();
        if self.step_countdown(&mut st)? {
            // The power fails during this write: it may have reached the
            // media in any part; crash_image decides.
            let _ = self.apply_write(&mut st, offset, buf);
            return Err(self.crashed_error());
        }
        match fault {
            Some(Fault::Error) => Err(self.injected(IoKind::Write, offset)),
            Some(Fault::DropWrite) => Ok(()),
            Some(Fault::FlipBitOnRead { .. }) | None => self.apply_write(&mut st, offset, buf),
        }
    }

    fn sync(&self) -> Result<()> {
        let fault = self.begin(IoKind::Sync, 0, 0)?;
        let mut st = self.lock();
        if self.step_countdown(&mut st)? {
            return Err(self.crashed_error());
        }
        match fault {
            Some(Fault::Error) => Err(self.injected(IoKind::Sync, 0)),
            Some(Fault::DropWrite) => Ok(()),
            Some(Fault::FlipBitOnRead { .. }) | None => {
                self.inner.sync()?;
                st.pending.clear();
                Ok(())
            }
        }
    }

    /// Forwarded to the inner device and logged like a write of whatever the
    /// range reads as afterwards (zeros for a `DirDevice` fragment, unchanged
    /// for a `MemDevice`), so the durable model stays exact.
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len)?;
        let fault = self.begin(IoKind::Discard, offset, len)?;
        let mut st = self.lock();
        if self.is_crashed() {
            return Err(self.crashed_error());
        }
        match fault {
            Some(Fault::Error) => Err(self.injected(IoKind::Discard, offset)),
            Some(Fault::DropWrite) => Ok(()),
            Some(Fault::FlipBitOnRead { .. }) | None => {
                let mut old = AlignedBuf::zeroed(len as usize);
                self.inner.read_at(offset, &mut old)?;
                let res = self.inner.discard(offset, len);
                let mut new = AlignedBuf::zeroed(len as usize);
                self.inner.read_at(offset, &mut new)?;
                if old[..] != new[..] {
                    st.pending.push(Pending { offset, old: old.to_vec(), new: new.to_vec() });
                }
                res
            }
        }
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, and fixed here so that crash
/// images for a seed never change with a dependency upgrade.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn coin(&mut self) -> bool {
        self.next() >> 63 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::mem::MemDevice;

    #[test]
    fn splitmix_is_fixed() {
        // Reference values of SplitMix64 seeded with 0.
        let mut r = SplitMix64(0);
        assert_eq!(r.next(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn discard_of_unchanged_range_logs_nothing() {
        let dev = FaultyDevice::new(Arc::new(MemDevice::new(1 << 20, 4096)));
        dev.discard(0, 8192).unwrap();
        assert_eq!(dev.pending_writes(), 0);
        assert_eq!(dev.discards(), 1);
    }
}
