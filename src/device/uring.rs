//! Batched IO for [`RawDevice`](super::raw::RawDevice): io_uring, or parallel
//! `pread`/`pwrite` where io_uring is not available.
//!
//! # Which path is used when, and why
//!
//! - A single [`Device::read_at`](super::Device::read_at) /
//!   [`write_at`](super::Device::write_at), and a batch of one request, is a
//!   plain `pread`/`pwrite` (looped over short transfers and `EINTR`): one
//!   system call, no ring to take, nothing to gain from a queue.
//! - A batch of two or more requests goes to **io_uring**: every request is
//!   queued on a ring of up to [`QUEUE_DEPTH`] entries and the ring is kept
//!   full (a completion makes room for the next request; larger batches are
//!   fed through the window), so the device sees the whole batch at once with
//!   one `io_uring_enter` per wake-up. Short transfers are resubmitted for the
//!   rest; a negative result becomes [`DeviceError::Io`] naming the failed
//!   request's offset. The call returns only after every submitted operation
//!   has completed, because the kernel writes into (or reads from) the
//!   caller's buffers until then — also on error.
//! - Rings come from a small per-device pool behind a `Mutex` (a ring is
//!   taken for the whole batch and given back, so concurrent batches from
//!   several threads each get their own ring). Each ring has the device's
//!   file descriptor registered, which saves a file-table lookup per request.
//! - If io_uring cannot be set up at open (`ENOSYS` on old kernels or under
//!   seccomp, `EPERM` when `kernel.io_uring_disabled` forbids it, or the
//!   READ/WRITE opcodes are missing), or the environment variable
//!   `DFS_NO_URING=1` is set, the device uses the **pread** path for the
//!   whole of its life: a batch runs on a few scoped threads doing blocking
//!   `pread`/`pwrite`, which still keeps several requests in flight.
//!   `RawDevice::io_path()` tells which path a device uses (`"io_uring"` or
//!   `"pread"`); the choice is made once, at open.
//!
//! Registered (fixed) buffers are not used: the buffers belong to callers and
//! change with every batch, and registering them per batch costs more than it
//! saves.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use io_uring::{opcode, register::Probe, types, IoUring};

/// Most operations in flight on one ring.
pub const QUEUE_DEPTH: u32 = 64;

/// Rings kept idle in a device's pool; more are created on demand when many
/// threads run batches at once, and dropped when given back beyond this.
const MAX_IDLE_RINGS: usize = 4;

/// Largest single operation (kernel `MAX_RW_COUNT` is about 2 GiB; a larger
/// request is split by the short-transfer logic).
const MAX_OP_BYTES: usize = 1 << 30;

/// Threads of the pread fallback per batch.
const FALLBACK_THREADS: usize = 4;

/// How a device runs batches, chosen once at open.
pub(crate) enum BatchEngine {
    /// io_uring, with a pool of rings for this device's file descriptor.
    Uring(RingPool),
    /// Blocking pread/pwrite on a few scoped threads.
    Threads,
}

impl BatchEngine {
    /// Pick the engine for `file`: io_uring unless `force_pread` or it can't
    /// be set up. Returns the engine and, for the pread path, why.
    pub(crate) fn new(file: &File, force_pread: bool) -> (BatchEngine, Option<String>) {
        if force_pread {
            return (BatchEngine::Threads, Some("forced (DFS_NO_URING=1 or caller's choice)".into()));
        }
        match RingPool::new(file.as_raw_fd()) {
            Ok(pool) => (BatchEngine::Uring(pool), None),
            Err(e) => (BatchEngine::Threads, Some(format!("io_uring unavailable: {e}"))),
        }
    }

    /// `"io_uring"` or `"pread"`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            BatchEngine::Uring(_) => "io_uring",
            BatchEngine::Threads => "pread",
        }
    }

    /// Run `reqs` (all already checked against the device contract).
    /// On failure returns the index of the first (lowest-index) failed
    /// request and its error.
    pub(crate) fn run(&self, file: &File, reqs: &mut [RawReq<'_>]) -> Result<(), (usize, io::Error)> {
        match self {
            BatchEngine::Uring(pool) => match pool.take() {
                Ok(mut ring) => {
                    let res = ring.run(reqs);
                    pool.give_back(ring);
                    res
                }
                // No ring to be had right now (memory): do the batch the slow way.
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring ring setup failed; batch falls back to pread");
                    run_threads(file, reqs)
                }
            },
            BatchEngine::Threads => run_threads(file, reqs),
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

/// A device's rings.
pub(crate) struct RingPool {
    fd: RawFd,
    idle: Mutex<Vec<Ring>>,
    /// Whether registering the fd works (decided on the first ring).
    fixed_file: bool,
}

struct Ring {
    ring: IoUring,
    /// The device's file descriptor (used when it could not be registered).
    fd: RawFd,
    /// Use `types::Fixed(0)` (the fd is registered) instead of `types::Fd`.
    fixed: bool,
    /// A failed `io_uring_enter` left the ring in doubt: don't reuse it.
    broken: bool,
}

impl RingPool {
    fn new(fd: RawFd) -> io::Result<RingPool> {
        let ring = new_ring()?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Read::CODE) || !probe.is_supported(opcode::Write::CODE) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "kernel lacks IORING_OP_READ/WRITE"));
        }
        let fixed_file = ring.submitter().register_files(&[fd]).is_ok();
        let pool = RingPool { fd, idle: Mutex::new(Vec::new()), fixed_file };
        pool.give_back(Ring { ring, fd, fixed: fixed_file, broken: false });
        Ok(pool)
    }

    fn take(&self) -> io::Result<Ring> {
        if let Some(r) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(r);
        }
        let ring = new_ring()?;
        let fixed = self.fixed_file && ring.submitter().register_files(&[self.fd]).is_ok();
        Ok(Ring { ring, fd: self.fd, fixed, broken: false })
    }

    fn give_back(&self, ring: Ring) {
        if ring.broken {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_RINGS {
            idle.push(ring);
        }
    }
}

fn new_ring() -> io::Result<IoUring> {
    // COOP_TASKRUN: completions are processed when we enter the kernel to
    // wait anyway, instead of interrupting the thread (5.19+); older
    // kernels refuse the flag, so retry without.
    IoUring::builder().setup_coop_taskrun().build(QUEUE_DEPTH).or_else(|_| IoUring::new(QUEUE_DEPTH))
}

fn transient(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY))
}

impl Ring {
    /// Run every request through the ring, keeping up to `QUEUE_DEPTH` in
    /// flight. Returns only when nothing is in flight any more.
    fn run(&mut self, reqs: &mut [RawReq<'_>]) -> Result<(), (usize, io::Error)> {
        let n = reqs.len();
        let mut done = vec![0usize; n];
        let mut queue: VecDeque<usize> = (0..n).collect();
        let mut in_flight = 0usize;
        let mut first_err: Option<(usize, io::Error)> = None;
        let note = |slot: &mut Option<(usize, io::Error)>, i: usize, e: io::Error| {
            if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                *slot = Some((i, e));
            }
        };

        loop {
            // Fill the submission queue (stop feeding new work after an error;
            // what is in flight still has to finish).
            if first_err.is_none() {
                let mut sq = self.ring.submission();
                while in_flight < QUEUE_DEPTH as usize && !sq.is_full() {
                    let Some(i) = queue.pop_front() else { break };
                    let off = reqs[i].offset() + done[i] as u64;
                    let len = (reqs[i].len() - done[i]).min(MAX_OP_BYTES) as u32;
                    let entry = match &mut reqs[i] {
                        RawReq::Read { buf, .. } => {
                            // SAFETY: in bounds (done < len); the buffer outlives the op
                            // because we don't return before its completion.
                            let p = unsafe { buf.as_mut_ptr().add(done[i]) };
                            if self.fixed {
                                opcode::Read::new(types::Fixed(0), p, len).offset(off).build()
                            } else {
                                opcode::Read::new(types::Fd(self.fd), p, len).offset(off).build()
                            }
                        }
                        RawReq::Write { buf, .. } => {
                            // SAFETY: as above.
                            let p = unsafe { buf.as_ptr().add(done[i]) };
                            if self.fixed {
                                opcode::Write::new(types::Fixed(0), p, len).offset(off).build()
                            } else {
                                opcode::Write::new(types::Fd(self.fd), p, len).offset(off).build()
                            }
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

            match self.ring.submit_and_wait(1) {
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
                            // Any syscall lets pending task work post completions.
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
fn run_threads(file: &File, reqs: &mut [RawReq<'_>]) -> Result<(), (usize, io::Error)> {
    let threads = reqs.len().min(FALLBACK_THREADS);
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
