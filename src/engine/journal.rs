//! # The metadata journal: writer and replay
//!
//! The journal is a circular log of records in the journal region of up to
//! three members (all members when fewer). Every copy holds the same records
//! at the same offsets: the writer appends one record per group commit to
//! each copy, then syncs them all; a commit is durable when every copy's
//! sync returned. The logical journal length and record alignment are fixed
//! in the root record (the smallest journal region and the largest block
//! size among the members), so records never depend on which member holds
//! them.
//!
//! Record stream (see `format/FORMAT.md`): each record starts on a journal
//! block boundary, header then payload. Records chain: `seq` is the previous
//! `seq + 1` and `prev_crc32` is the previous header's checksum. A `Wrap`
//! record (or reaching the end of the region exactly) sends the reader back
//! to offset 0.
//!
//! Replay starts at the root's `(journal_offset, journal_seq)` and stops at
//! the first record that fails its header checksum, payload checksum, pool
//! UUID, sequence or chain — a torn tail is normal and silent. Each copy is
//! replayed on its own; the longest valid chain wins (the others are stale
//! or damaged and are superseded by the checkpoint that open writes).
//!
//! Space: records live between the tail (the current root's
//! `journal_offset`) and the head. The writer refuses a record that would
//! run the head into the tail; the engine then checkpoints, which moves the
//! tail to the head. The writer must never overwrite a record at or after
//! the tail: replay after a crash still needs it.

use crate::device::{AlignedBuf, Device};
use dfs_format::journal::{record_blocks, JOURNAL_HEADER_LEN};
use dfs_format::{JournalRecordHeader, RecordKind};
use std::sync::Arc;

/// Version of the payload encoding written by this build (ops as postcard).
pub const PAYLOAD_VERSION: u16 = 1;

/// One copy of the journal: a member's device and its journal region start.
#[derive(Debug, Clone)]
pub struct JournalCopy {
    pub member: u32,
    pub device: Arc<dyn Device>,
    pub region_start: u64,
}

impl JournalCopy {
    /// The journal copy in the journal region of member `member` laid out as `layout`.
    pub fn on(member: u32, device: Arc<dyn Device>, layout: &dfs_format::Layout) -> JournalCopy {
        JournalCopy { member, device, region_start: layout.region(dfs_format::RegionKind::Journal).start }
    }
}

/// Where the journal's head is and what the next record chains to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalPos {
    /// Byte offset in the journal of the next record.
    pub offset: u64,
    /// Sequence number of the next record.
    pub seq: u64,
    /// Header checksum of the previous record (the first record after a
    /// root does not check it).
    pub prev_crc: u32,
}

/// Why replay of one copy stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A block that is not a valid header (torn, stale, or never written).
    BadHeader(String),
    /// A valid header of another sequence or chain (a stale lap).
    Stale { found_seq: u64 },
    /// The payload does not match its checksum (a torn record).
    BadPayload,
    /// The device failed to read.
    Io(String),
    /// Went all the way around the ring.
    Full,
}

/// The records of one copy's valid chain.
#[derive(Debug)]
pub struct Replay {
    pub member: u32,
    /// (seq, payload) in order; `Wrap` records are not included.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Position after the last valid record.
    pub end: JournalPos,
    pub stop: StopReason,
}

/// Error of the journal writer.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal full: record of {need} bytes does not fit before the tail")]
    Full { need: u64 },
    #[error(transparent)]
    Device(#[from] crate::device::DeviceError),
}

/// The appending side.
#[derive(Debug)]
pub struct JournalWriter {
    pool: uuid::Uuid,
    /// Logical journal length in bytes (multiple of `bs`).
    len: u64,
    bs: u32,
    head: JournalPos,
    /// Offset of the oldest record still needed (the root's journal_offset).
    tail: u64,
}

impl JournalWriter {
    /// A writer whose next record goes at `head`, with the live records
    /// starting at `tail`.
    pub fn new(pool: uuid::Uuid, len: u64, bs: u32, head: JournalPos, tail: u64) -> JournalWriter {
        JournalWriter { pool, len, bs, head, tail }
    }

    /// Next position.
    pub fn head(&self) -> JournalPos {
        self.head
    }

    /// Journal length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a zero-length journal (never, for a valid root).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Record alignment in bytes.
    pub fn block_size(&self) -> u32 {
        self.bs
    }

    /// Bytes between tail and head.
    pub fn used(&self) -> u64 {
        (self.head.offset + self.len - self.tail) % self.len
    }

    /// Move the tail (after a checkpoint made older records unnecessary).
    pub fn set_tail(&mut self, tail: u64) {
        self.tail = tail;
    }

    fn free_space(&self) -> u64 {
        // One block always stays unused so head == tail means empty.
        self.len - self.used() - self.bs as u64
    }

    /// Append one transaction record to every copy and sync them all.
    /// Returns the record's sequence number.
    pub fn append(&mut self, copies: &[JournalCopy], payload: &[u8], now_ns: u64) -> Result<u64, JournalError> {
        let bs = self.bs as u64;
        let need = record_blocks(payload.len() as u32, self.bs) as u64 * bs;
        let to_end = self.len - self.head.offset;
        let wrap = need > to_end;
        let total = need + if wrap { to_end } else { 0 };
        if payload.len() as u64 > dfs_format::journal::MAX_JOURNAL_PAYLOAD as u64 || total > self.free_space() {
            return Err(JournalError::Full { need });
        }
        let mut writes: Vec<(u64, AlignedBuf)> = Vec::new();
        let mut pos = self.head;
        if wrap {
            let h = JournalRecordHeader::new(
                RecordKind::Wrap,
                PAYLOAD_VERSION,
                pos.seq,
                self.pool,
                &[],
                pos.prev_crc,
                now_ns,
                self.bs,
            );
            writes.push((pos.offset, AlignedBuf::from_slice_padded(&h.encode(), bs as usize)));
            pos = JournalPos { offset: 0, seq: pos.seq + 1, prev_crc: h.header_crc32 };
        }
        let h = JournalRecordHeader::new(
            RecordKind::Transaction,
            PAYLOAD_VERSION,
            pos.seq,
            self.pool,
            payload,
            pos.prev_crc,
            now_ns,
            self.bs,
        );
        let mut buf = AlignedBuf::zeroed(need as usize);
        buf[..JOURNAL_HEADER_LEN].copy_from_slice(&h.encode());
        buf[JOURNAL_HEADER_LEN..JOURNAL_HEADER_LEN + payload.len()].copy_from_slice(payload);
        writes.push((pos.offset, buf));
        let seq = pos.seq;
        let mut next = JournalPos { offset: pos.offset + need, seq: seq + 1, prev_crc: h.header_crc32 };
        if next.offset == self.len {
            next.offset = 0;
        }
        std::thread::scope(|s| -> Result<(), JournalError> {
            let handles: Vec<_> = copies
                .iter()
                .map(|c| {
                    let writes = &writes;
                    s.spawn(move || -> Result<(), crate::device::DeviceError> {
                        for (off, b) in writes {
                            c.device.write_at(c.region_start + off, b)?;
                        }
                        c.device.sync()
                    })
                })
                .collect();
            let mut first = None;
            for h in handles {
                if let Err(e) = h.join().expect("journal writer thread panicked") {
                    first.get_or_insert(e);
                }
            }
            first.map_or(Ok(()), |e| Err(e.into()))
        })?;
        self.head = next;
        Ok(seq)
    }
}

/// Replay one copy from `start` (see the module doc for the stop rule).
pub fn replay_copy(copy: &JournalCopy, pool: uuid::Uuid, len: u64, bs: u32, start: JournalPos) -> Replay {
    let bsz = bs as u64;
    let mut pos = start;
    let mut first = true;
    let mut records = Vec::new();
    let mut travelled = 0u64;
    let mut block = AlignedBuf::zeroed(bs as usize);
    let stop = loop {
        if travelled >= len {
            break StopReason::Full;
        }
        if let Err(e) = copy.device.read_at(copy.region_start + pos.offset, &mut block) {
            break StopReason::Io(e.to_string());
        }
        let h = match JournalRecordHeader::decode(&block, bs) {
            Ok(h) => h,
            Err(e) => break StopReason::BadHeader(e.to_string()),
        };
        if h.pool_uuid != pool || h.seq != pos.seq || (!first && h.prev_crc32 != pos.prev_crc) {
            break StopReason::Stale { found_seq: h.seq };
        }
        let rec_len = h.block_count as u64 * bsz;
        if pos.offset + rec_len > len {
            break StopReason::BadHeader("record runs past the end of the journal".into());
        }
        match h.kind {
            RecordKind::Wrap => {
                travelled += len - pos.offset;
                pos = JournalPos { offset: 0, seq: h.seq + 1, prev_crc: h.header_crc32 };
            }
            RecordKind::Transaction => {
                let payload = if rec_len == bsz {
                    block[JOURNAL_HEADER_LEN..JOURNAL_HEADER_LEN + h.payload_len as usize].to_vec()
                } else {
                    let mut whole = AlignedBuf::zeroed(rec_len as usize);
                    if let Err(e) = copy.device.read_at(copy.region_start + pos.offset, &mut whole) {
                        break StopReason::Io(e.to_string());
                    }
                    whole[JOURNAL_HEADER_LEN..JOURNAL_HEADER_LEN + h.payload_len as usize].to_vec()
                };
                if h.verify_payload(&payload).is_err() {
                    break StopReason::BadPayload;
                }
                records.push((h.seq, payload));
                travelled += rec_len;
                let mut off = pos.offset + rec_len;
                if off == len {
                    off = 0;
                }
                pos = JournalPos { offset: off, seq: h.seq + 1, prev_crc: h.header_crc32 };
            }
        }
        first = false;
    };
    Replay { member: copy.member, records, end: pos, stop }
}
