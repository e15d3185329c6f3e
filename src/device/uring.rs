//! Batched IO for [`RawDevice`](super::raw::RawDevice): io_uring, or parallel
//! `pread`/`pwrite` where io_uring is not available.
//!
//! # Which path is used when, and why
//!
//! - A single [`Device::read_at`](super::Device::read_at) /
//!   [`write_at`](super::Device::write_at), and a batch of one request, is a
//!   plain `pread`/`pwrite` (looped over short transfers and `EINTR`): one
//!   system call, no ring to take, nothing to gain from a queue.
//! - A batch of two or more requests goes to **io_uring**. At most a window
//!   of requests is in flight at once (the device's queue depth, at most
//!   [`QUEUE_DEPTH`]); while more of the batch is waiting, each wake-up reaps
//!   what completed and refills the window in the same `io_uring_enter`, so
//!   the device sees a steady queue, as `fio --iodepth` gives it. Once the
//!   whole batch is submitted, one `io_uring_enter` waits for all of the
//!   tail. Short transfers are resubmitted for the rest; a negative result
//!   becomes [`DeviceError::Io`](super::DeviceError::Io) naming the failed
//!   request's offset. The call returns only after every submitted operation
//!   has completed, because the kernel writes into (or reads from) the
//!   caller's buffers until then — also on error.
//! - **One ring per thread**, created on the thread's first batch and kept
//!   in a thread-local for the thread's life, serving every device: no lock,
//!   and no allocation per request (the per-batch bookkeeping vectors live
//!   with the ring and are reused). Because only that thread ever submits
//!   to it, the ring is set up `SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1+,
//!   with `COOP_TASKRUN`; older kernels get `COOP_TASKRUN` alone, or no
//!   flags): completions are posted in one go when the thread waits, instead
//!   of interrupting it for each one. fio 3.33 sets up its rings the same way.
//! - Files are not registered with the ring: a per-thread ring serves many
//!   devices, and a registered file lives on in the kernel until the ring's
//!   asynchronous teardown, which kept a closed device's `flock` / `O_EXCL`
//!   claim held after close. Each request takes and drops its own reference
//!   to the file, so once a batch returns nothing of the device is held.
//! - Registered (fixed) buffers are not used either: the buffers belong to
//!   callers and change with every batch, and registering them per batch
//!   costs more than it saves.
//! - If io_uring cannot be set up at open (`ENOSYS` on old kernels or under
//!   seccomp, `EPERM` when `kernel.io_uring_disabled` forbids it, or the
//!   READ/WRITE opcodes are missing), or the environment variable
//!   `DFS_NO_URING=1` is set, the device uses the **pread** path for the
//!   whole of its life: a batch runs on a few scoped threads doing blocking
//!   `pread`/`pwrite`, which still keeps several requests in flight.
//!   `RawDevice::io_path()` tells which path a device uses (`"io_uring"` or
//!   `"pread"`); the choice is made once, at open. If a thread later cannot
//!   get a ring (memory), that one batch runs on the pread path.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use io_uring::{opcode, register::Probe, types, IoUring};

/// Most operations in flight on one ring (and the most a device's queue
/// depth can be set to).
pub const QUEUE_DEPTH: u32 = 64;

/// Largest single operation (kernel `MAX_RW_COUNT` is about 2 GiB; a larger
/// request is split by the short-transfer logic).
const MAX_OP_BYTES: usize = 1 << 30;

/// Requests' worth of per-batch bookkeeping a thread's ring keeps between
/// batches.
const SCRATCH_KEEP: usize = 4096;

/// Threads of the pread fallback per batch.
const FALLBACK_THREADS: usize = 4;

/// How a device runs batches, chosen once at open.
pub(crate) enum BatchEngine {
    /// io_uring, on the calling thread's ring.
    Uring,
    /// Blocking pread/pwrite on a few scoped threads.
    Threads,
}

impl BatchEngine {
    /// Pick the engine: io_uring unless `force_pread` or it can't be set up.
    /// Returns the engine and, for the pread path, why.
    pub(crate) fn new(force_pread: bool) -> (BatchEngine, Option<String>) {
        if force_pread {
            return (BatchEngine::Threads, Some("forced (DFS_NO_URING=1 or caller's choice)".into()));
        }
        match uring_support() {
            Ok(()) => (BatchEngine::Uring, None),
            Err(e) => (BatchEngine::Threads, Some(format!("io_uring unavailable: {e}"))),
        }
    }

    /// `"io_uring"` or `"pread"`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            BatchEngine::Uring => "io_uring",
            BatchEngine::Threads => "pread",
        }
    }

    /// Run `reqs` (all already checked against the device contract) with
    /// at most `window` of them in flight at once.
    /// On failure returns the index of the first (lowest-index) failed
    /// request and its error.
    pub(crate) fn run(&self, file: &File, reqs: &mut [RawReq<'_>], window: usize) -> Result<(), (usize, io::Error)> {
        match self {
            BatchEngine::Uring => {
                let fd = file.as_raw_fd();
                match with_thread_ring(|ring| ring.run(fd, reqs, window)) {
                    Ok(res) => res,
                    // No ring to be had right now (memory): do the batch the slow way.
                    Err(e) => {
                        tracing::warn!(error = %e, "io_uring ring setup failed; batch falls back to pread");
                        run_threads(file, reqs, window)
                    }
                }
            }
            BatchEngine::Threads => run_threads(file, reqs, window),
        }
    }
}

/// One request of a batch, as the engine sees it.
pub(crate) enum RawReq<'a> {
    Read { offset: u64, buf: &'a mut [u8] },
    Write { offset: u64, buf: &'a [u8] },
}

impl RawReq<'_> {
    fn offset(&self) -> u64 {
        match self {
            RawReq::Read { offset, .. } | RawReq::Write { offset, .. } => *offset,
        }
    }
    fn len(&self) -> usize {
        match self {
            RawReq::Read { buf, .. } => buf.len(),
            RawReq::Write { buf, .. } => buf.len(),
        }
    }
}

// ---------------------------------------------------------------- io_uring

/// Whether io_uring works here with the opcodes we need; decided once per
/// process (a kernel and seccomp property, not a device's).
fn uring_support() -> Result<(), String> {
    static SUPPORT: OnceLock<Result<(), String>> = OnceLock::new();
    SUPPORT
        .get_or_init(|| {
            let ring = IoUring::new(2).map_err(|e| e.to_string())?;
            let mut probe = Probe::new();
            ring.submitter().register_probe(&mut probe).map_err(|e| e.to_string())?;
            if !probe.is_supported(opcode::Read::CODE) || !probe.is_supported(opcode::Write::CODE) {
                return Err("kernel lacks IORING_OP_READ/WRITE".into());
            }
            Ok(())
        })
        .clone()
}

thread_local! {
    /// This thread's ring, created on its first batch.
    static THREAD_RING: Cell<Option<Ring>> = const { Cell::new(None) };
}

/// Run `f` on the calling thread's ring (created on first use). The ring is
/// taken out of its slot for the call, so a re-entrant call (not expected:
/// a batch calls nothing that batches) would simply use a ring of its own;
/// it goes back only if it is sound, so a ring left in doubt by a failed
/// `io_uring_enter`, or by a panic, is never reused.
fn with_thread_ring<R>(f: impl FnOnce(&mut Ring) -> R) -> io::Result<R> {
    let cached = THREAD_RING.try_with(Cell::take).ok().flatten();
    let mut ring = match cached {
        Some(r) => r,
        None => Ring::new()?,
    };
    let out = f(&mut ring);
    if !ring.broken {
        // Fails only while the thread is being torn down: the ring is dropped.
        let _ = THREAD_RING.try_with(move |slot| slot.set(Some(ring)));
    }
    Ok(out)
}

/// A thread's ring and the reusable bookkeeping of its batches.
struct Ring {
    ring: IoUring,
    /// Bytes done per request of the running batch (scratch, reused).
    done: Vec<usize>,
    /// Requests still to submit (scratch, reused).
    queue: VecDeque<usize>,
    /// Completions are posted only when this thread waits (`DEFER_TASKRUN`).
    deferred: bool,
    /// A failed `io_uring_enter` left the ring in doubt: don't reuse it.
    broken: bool,
}

impl Ring {
    fn new() -> io::Result<Ring> {
        // Best first: SINGLE_ISSUER + DEFER_TASKRUN (6.1+): completion work
        // runs when we wait, in one go. COOP_TASKRUN (5.19+): no interrupt
        // per completion. Older kernels refuse the flags: retry without.
        let cq = 2 * QUEUE_DEPTH;
        let (ring, deferred) = match IoUring::builder()
            .setup_cqsize(cq)
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(QUEUE_DEPTH)
        {
            Ok(r) => (r, true),
            Err(_) => {
                let r = IoUring::builder()
                    .setup_cqsize(cq)
                    .setup_coop_taskrun()
                    .build(QUEUE_DEPTH)
                    .or_else(|_| IoUring::new(QUEUE_DEPTH))?;
                (r, false)
            }
        };
        Ok(Ring { ring, done: Vec::new(), queue: VecDeque::new(), deferred, broken: false })
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY))
}

impl Ring {
    /// Run every request through the ring, keeping up to `window` in
    /// flight. Returns only when nothing is in flight any more.
    fn run(&mut self, fd: RawFd, reqs: &mut [RawReq<'_>], window: usize) -> Result<(), (usize, io::Error)> {
        let n = reqs.len();
        let window = window.clamp(1, QUEUE_DEPTH as usize);
        // Scratch kept with the ring: no allocation per batch once warm.
        let mut done = std::mem::take(&mut self.done);
        let mut queue = std::mem::take(&mut self.queue);
        done.clear();
        done.resize(n, 0);
        queue.clear();
        queue.extend(0..n);
        let res = self.run_with(fd, reqs, window, &mut done, &mut queue);
        // Don't let one huge batch pin its bookkeeping for the thread's life.
        done.shrink_to(SCRATCH_KEEP);
        queue.shrink_to(SCRATCH_KEEP);
        self.done = done;
        self.queue = queue;
        res
    }

    fn run_with(
        &mut self,
        fd: RawFd,
        reqs: &mut [RawReq<'_>],
        window: usize,
        done: &mut [usize],
        queue: &mut VecDeque<usize>,
    ) -> Result<(), (usize, io::Error)> {
        let n = reqs.len();
        let mut in_flight = 0usize;
        let mut first_err: Option<(usize, io::Error)> = None;
        let note = |slot: &mut Option<(usize, io::Error)>, i: usize, e: io::Error| {
            if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                *slot = Some((i, e));
            }
        };

        loop {
            // Fill the submission queue up to the window (stop feeding new
            // work after an error; what is in flight still has to finish).
            if first_err.is_none() {
                let mut sq = self.ring.submission();
                while in_flight < window && !sq.is_full() {
                    let Some(i) = queue.pop_front() else { break };
                    let off = reqs[i].offset() + done[i] as u64;
                    let len = (reqs[i].len() - done[i]).min(MAX_OP_BYTES) as u32;
                    let entry = match &mut reqs[i] {
                        RawReq::Read { buf, .. } => {
                            // SAFETY: in bounds (done < len); the buffer outlives the op
                            // because we don't return before its completion.
                            let p = unsafe { buf.as_mut_ptr().add(done[i]) };
                            opcode::Read::new(types::Fd(fd), p, len).offset(off).build()
                        }
                        RawReq::Write { buf, .. } => {
                            // SAFETY: as above.
                            let p = unsafe { buf.as_ptr().add(done[i]) };
                            opcode::Write::new(types::Fd(fd), p, len).offset(off).build()
                        }
                    };
                    // SAFETY: the entry's buffer stays valid and unaliased until its
                    // completion is reaped below (we loop until in_flight == 0).
                    if unsafe { sq.push(&entry.user_data(i as u64)) }.is_err() {
                        queue.push_front(i);
                        break;
                    }
                    in_flight += 1;
                }
            }
            if in_flight == 0 {
                break;
            }

            // With more work queued, wake on the first completion to refill
            // the window (the ring stays full); with nothing left to submit,
            // sleep until everything in flight is done: one system call and
            // one wake-up for the tail of the batch instead of one each.
            let want = if first_err.is_none() && !queue.is_empty() { 1 } else { in_flight };
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                Err(e) => {
                    // The ring itself failed. Operations the kernel already took
                    // still write into caller memory: wait for them before
                    // returning, then retire the ring.
                    self.broken = true;
                    let unsubmitted = self.ring.submission().len();
                    let mut kernel_owned = in_flight - unsubmitted.min(in_flight);
                    while kernel_owned > 0 {
                        let reaped = self.ring.completion().count();
                        kernel_owned -= reaped.min(kernel_owned);
                        if kernel_owned > 0 {
                            if self.deferred {
                                // Completions of a DEFER_TASKRUN ring are posted
                                // only inside io_uring_enter with GETEVENTS.
                                let _ = self.ring.submitter().submit_and_wait(1);
                            }
                            // Otherwise any syscall lets pending task work post them.
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                    }
                    let first = (0..n).find(|&i| done[i] < reqs[i].len()).unwrap_or(0);
                    note(&mut first_err, first, e);
                    break;
                }
            }

            for cqe in self.ring.completion() {
                let i = cqe.user_data() as usize;
                in_flight -= 1;
                let res = cqe.result();
                if res < 0 {
                    note(&mut first_err, i, io::Error::from_raw_os_error(-res));
                } else if res == 0 {
                    let e = match reqs[i] {
                        RawReq::Read { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, "read returned 0 bytes"),
                        RawReq::Write { .. } => io::Error::new(io::ErrorKind::WriteZero, "write returned 0 bytes"),
                    };
                    note(&mut first_err, i, e);
                } else {
                    done[i] += res as usize;
                    if done[i] < reqs[i].len() {
                        // Short transfer: the rest goes out next round.
                        queue.push_front(i);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------- fallback

/// Blocking pread/pwrite of the whole request (loops over short transfers
/// and EINTR).
pub(crate) fn run_one(file: &File, req: &mut RawReq<'_>) -> io::Result<()> {
    match req {
        RawReq::Read { offset, buf } => file.read_exact_at(buf, *offset),
        RawReq::Write { offset, buf } => file.write_all_at(buf, *offset),
    }
}

/// The pread path: requests handed out to a few scoped threads.
fn run_threads(file: &File, reqs: &mut [RawReq<'_>], window: usize) -> Result<(), (usize, io::Error)> {
    let threads = reqs.len().min(FALLBACK_THREADS).min(window.max(1));
    if threads <= 1 {
        for (i, r) in reqs.iter_mut().enumerate() {
            run_one(file, r).map_err(|e| (i, e))?;
        }
        return Ok(());
    }
    let work = Mutex::new(reqs.iter_mut().enumerate());
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<(usize, io::Error)>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let next = work.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some((i, r)) = next else { break };
                if let Err(e) = run_one(file, r) {
                    failed.store(true, Ordering::Relaxed);
                    let mut slot = first_err.lock().unwrap_or_else(|p| p.into_inner());
                    if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                        *slot = Some((i, e));
                    }
                }
            });
        }
    });
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
