//! `dfs-inspect`: print what is on one DynamicFS member, structure by
//! structure, without the pool's metadata and without writing anything.
//!
//! The member is opened read-only and not exclusively, so it works on a
//! member of a mounted pool (what it shows may then be a moment old).
//! Anything that is not a readable DynamicFS member (garbage, an empty or
//! truncated image) ends with one `dfs-inspect: error: <device>: <what>`
//! line and exit status 1; usage errors exit 2.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dfs_format::superblock::SuperblockCopy;
use dfs_format::{FormatError, Superblock};
use dfs_tools::{fail, format_time_ns, iec, write_stdout, Table};
use dynamicfs::device::{open_member_device, Device, DeviceKind, OpenMode};
use dynamicfs::member::{
    best_root, read_bitmap, read_root_ring, read_superblocks, scan_fragments, scan_journal_from, CopyStatus,
    FragmentScanOptions, JournalStart, RootSlotState, SuperblockChoice,
};
use serde::Serialize;

const PROG: &str = "dfs-inspect";

/// Show the on-disk structures of one DynamicFS member (read-only).
#[derive(Debug, Parser)]
#[command(name = "dfs-inspect", version)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Both superblock copies, which one wins, and the region table
    Superblock(Common),
    /// The root ring: every slot that is not empty, and the best root
    Roots(Common),
    /// The allocation bitmap: used blocks per bitmap block, bad blocks
    Bitmap {
        #[command(flatten)]
        common: Common,
        /// List every bitmap block, not only the used or bad ones
        #[arg(long)]
        all: bool,
    },
    /// The journal's record chain from the best root, and where it stops
    Journal(Common),
    /// Fragment headers found by scanning the data region
    Fragments {
        #[command(flatten)]
        common: Common,
        /// Also read every payload and check its BLAKE3 (reads everything)
        #[arg(long)]
        verify: bool,
    },
    /// udev probe: ID_FS_* lines for IMPORT{program} (blkid does not know
    /// DynamicFS; scripts/udev/61-dfs.rules uses this to give the pool UUID
    /// its /dev/disk/by-uuid link, which mount(8) resolves UUID= through)
    Udev {
        /// Member: block device, image file or directory
        #[arg(value_name = "DEV")]
        device: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct Common {
    /// Member: block device, image file or directory
    #[arg(value_name = "DEV")]
    device: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

type Failure = Box<dyn std::fmt::Display>;

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match &args.what {
        What::Superblock(c) => superblock(c),
        What::Roots(c) => roots(c),
        What::Bitmap { common, all } => bitmap(common, *all),
        What::Journal(c) => journal(c),
        What::Fragments { common, verify } => fragments(common, *verify),
        What::Udev { device } => udev(device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(PROG, &e),
    }
}

fn open(path: &Path) -> Result<std::sync::Arc<dyn Device>, Failure> {
    open_member_device(path, OpenMode { read_only: true, exclusive: false }).map_err(|e| Box::new(e) as Failure)
}

fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) -> Result<(), Failure> {
    let text = if json {
        let mut s = serde_json::to_string_pretty(value).map_err(|e| Box::new(e) as Failure)?;
        s.push('\n');
        s
    } else {
        human()
    };
    write_stdout(&text).map_err(|e| Box::new(format!("cannot write the output: {e}")) as Failure)
}

fn kind_name(k: DeviceKind) -> &'static str {
    match k {
        DeviceKind::Block => "block",
        DeviceKind::File => "file",
        DeviceKind::Dir => "dir",
        DeviceKind::Memory => "memory",
    }
}

fn err_string(e: &FormatError) -> String {
    e.to_string()
}

// ---------------------------------------------------------------- udev

/// A value as udev's `*_ENC` properties spell it (blkid_encode_string):
/// bytes outside `[A-Za-z0-9#+-.:=@_]` as `\xHH`.
fn udev_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"#+-.:=@_".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A value safe in a udev property (blkid_safe_string): whitespace and
/// control characters become `_`.
fn udev_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_whitespace() || c.is_control() { '_' } else { c }).collect()
}

/// The udev properties of a member, one `KEY=value` a line; a device that
/// is not a member fails (exit 1), so udev imports nothing for it.
fn udev_properties(sb: &Superblock) -> String {
    let pool = sb.pool_uuid.to_string();
    let member = sb.member_uuid.to_string();
    let mut out = String::new();
    for (k, v) in [
        ("ID_FS_TYPE", "dfs".to_string()),
        ("ID_FS_USAGE", "filesystem".to_string()),
        ("ID_FS_UUID", pool.clone()),
        ("ID_FS_UUID_ENC", udev_encode(&pool)),
        ("ID_FS_UUID_SUB", member.clone()),
        ("ID_FS_UUID_SUB_ENC", udev_encode(&member)),
        ("ID_FS_LABEL", udev_safe(&sb.label)),
        ("ID_FS_LABEL_ENC", udev_encode(&sb.label)),
        ("DFS_MEMBER_INDEX", sb.member_index.to_string()),
    ] {
        if !v.is_empty() {
            out.push_str(&format!("{k}={v}\n"));
        }
    }
    out
}

fn udev(device: &Path) -> Result<(), Failure> {
    let (_, choice) = load(device)?;
    write_stdout(&udev_properties(&choice.superblock))
        .map_err(|e| Box::new(format!("cannot write the output: {e}")) as Failure)
}

// ---------------------------------------------------------------- superblock

#[derive(Serialize)]
struct RegionView {
    kind: &'static str,
    start: u64,
    len: u64,
}

#[derive(Serialize)]
struct SuperblockView {
    pool_uuid: uuid::Uuid,
    member_uuid: uuid::Uuid,
    member_index: u32,
    label: String,
    default_policy: String,
    block_size: u32,
    size: u64,
    created_ns: u64,
    update_seq: u64,
    compat: u64,
    ro_compat: u64,
    incompat: u64,
    regions: Vec<RegionView>,
}

impl SuperblockView {
    fn new(sb: &Superblock) -> SuperblockView {
        SuperblockView {
            pool_uuid: sb.pool_uuid,
            member_uuid: sb.member_uuid,
            member_index: sb.member_index,
            label: sb.label.clone(),
            default_policy: sb.default_policy.to_string(),
            block_size: sb.layout.block_size,
            size: sb.layout.size,
            created_ns: sb.created_ns,
            update_seq: sb.update_seq,
            compat: sb.compat,
            ro_compat: sb.ro_compat,
            incompat: sb.incompat,
            regions: sb
                .layout
                .regions
                .iter()
                .map(|r| RegionView { kind: r.kind.name(), start: r.start, len: r.len })
                .collect(),
        }
    }
}

#[derive(Serialize)]
struct CopyView {
    offset: u64,
    status: &'static str,
    update_seq: Option<u64>,
    error: Option<String>,
}

impl CopyView {
    fn new(c: &CopyStatus) -> CopyView {
        CopyView {
            offset: c.offset,
            status: if c.problem.is_none() { "valid" } else { "bad" },
            update_seq: c.update_seq,
            error: c.problem.as_ref().map(|p| p.to_string()),
        }
    }

    fn describe(&self) -> String {
        match (&self.error, self.update_seq) {
            (None, Some(seq)) => format!("valid (update_seq {seq}) at offset {}", self.offset),
            (None, None) => format!("valid at offset {}", self.offset),
            (Some(e), _) => format!("BAD at offset {}: {e}", self.offset),
        }
    }
}

#[derive(Serialize)]
struct DeviceView {
    path: PathBuf,
    kind: &'static str,
    size: u64,
    block_size: u32,
}

impl DeviceView {
    fn new(dev: &dyn Device) -> DeviceView {
        DeviceView {
            path: dev.identity().path.clone(),
            kind: kind_name(dev.identity().kind),
            size: dev.size(),
            block_size: dev.block_size(),
        }
    }
}

#[derive(Serialize)]
struct SuperblockReport {
    device: DeviceView,
    /// Which copy is used: "primary" or "backup".
    using: &'static str,
    needs_repair: bool,
    primary: CopyView,
    backup: CopyView,
    #[serde(flatten)]
    superblock: SuperblockView,
}

fn load(path: &Path) -> Result<(std::sync::Arc<dyn Device>, SuperblockChoice), Failure> {
    let dev = open(path)?;
    let choice = read_superblocks(&*dev).map_err(|e| Box::new(e) as Failure)?;
    Ok((dev, choice))
}

fn superblock(c: &Common) -> Result<(), Failure> {
    let (dev, choice) = load(&c.device)?;
    let sb = &choice.superblock;
    let report = SuperblockReport {
        device: DeviceView::new(&*dev),
        using: match choice.from {
            SuperblockCopy::Primary => "primary",
            SuperblockCopy::Backup => "backup",
        },
        needs_repair: choice.needs_repair(),
        primary: CopyView::new(&choice.primary),
        backup: CopyView::new(&choice.backup),
        superblock: SuperblockView::new(sb),
    };
    emit(c.json, &report, || {
        let d = &report.device;
        let mut out = String::new();
        let label = if sb.label.is_empty() { "(none)".to_string() } else { format!("{:?}", sb.label) };
        for (k, v) in [
            ("Device:", format!("{} ({}, {}, {}-byte blocks)", d.path.display(), d.kind, iec(d.size), d.block_size)),
            ("Primary:", report.primary.describe()),
            ("Backup:", report.backup.describe()),
            (
                "Using:",
                format!("{}{}", report.using, if report.needs_repair { " (the other copy needs repair)" } else { "" }),
            ),
            ("Pool UUID:", sb.pool_uuid.to_string()),
            ("Member UUID:", sb.member_uuid.to_string()),
            ("Member index:", sb.member_index.to_string()),
            ("Label:", label),
            ("Default policy:", sb.default_policy.to_string()),
            ("Created:", format_time_ns(sb.created_ns)),
            ("Update seq:", sb.update_seq.to_string()),
            ("Size:", format!("{} ({} bytes)", iec(sb.layout.size), sb.layout.size)),
            ("Block size:", sb.layout.block_size.to_string()),
            ("Data blocks:", sb.layout.data_blocks().to_string()),
            (
                "Features:",
                format!("compat {:#x}, ro_compat {:#x}, incompat {:#x}", sb.compat, sb.ro_compat, sb.incompat),
            ),
        ] {
            out.push_str(&format!("{k:<16}{v}\n"));
        }
        out.push_str("\nRegions:\n");
        let mut t = Table::new(&["REGION", "START", "LENGTH", "SIZE"], &[false, true, true, true]);
        for r in &report.superblock.regions {
            t.row(vec![r.kind.to_string(), r.start.to_string(), r.len.to_string(), iec(r.len)]);
        }
        out.push_str(&t.render(2));
        out
    })
}

// ---------------------------------------------------------------- roots

#[derive(Serialize)]
struct RootView {
    slot: u64,
    offset: u64,
    status: &'static str,
    error: Option<String>,
    pool_uuid: Option<uuid::Uuid>,
    generation: Option<u64>,
    timestamp_ns: Option<u64>,
    journal_seq: Option<u64>,
    journal_offset: Option<u64>,
    journal_len: Option<u64>,
    journal_block_size: Option<u32>,
    member_count: Option<u32>,
    checkpoint: Option<CheckpointView>,
}

#[derive(Serialize)]
struct CheckpointView {
    id: uuid::Uuid,
    len: u64,
    copies: Vec<String>,
}

#[derive(Serialize)]
struct RootsReport {
    pool_uuid: uuid::Uuid,
    slots: u64,
    valid: usize,
    invalid: usize,
    empty: usize,
    best_slot: Option<u64>,
    best_generation: Option<u64>,
    /// Every slot that is not empty.
    records: Vec<RootView>,
}

fn roots(c: &Common) -> Result<(), Failure> {
    let (dev, choice) = load(&c.device)?;
    let sb = &choice.superblock;
    let ring = read_root_ring(&*dev, &sb.layout).map_err(|e| Box::new(e) as Failure)?;
    let best = best_root(&ring, sb.pool_uuid);
    let mut report = RootsReport {
        pool_uuid: sb.pool_uuid,
        slots: ring.len() as u64,
        valid: 0,
        invalid: 0,
        empty: 0,
        best_slot: best.map(|(s, _)| s),
        best_generation: best.map(|(_, r)| r.generation),
        records: Vec::new(),
    };
    for s in &ring {
        let mut v = RootView {
            slot: s.slot,
            offset: s.offset,
            status: "valid",
            error: None,
            pool_uuid: None,
            generation: None,
            timestamp_ns: None,
            journal_seq: None,
            journal_offset: None,
            journal_len: None,
            journal_block_size: None,
            member_count: None,
            checkpoint: None,
        };
        match &s.state {
            RootSlotState::Empty => {
                report.empty += 1;
                continue;
            }
            RootSlotState::Invalid(e) => {
                report.invalid += 1;
                v.status = "invalid";
                v.error = Some(err_string(e));
            }
            RootSlotState::Valid(r) => {
                report.valid += 1;
                if r.pool_uuid != sb.pool_uuid {
                    v.status = "foreign";
                }
                v.pool_uuid = Some(r.pool_uuid);
                v.generation = Some(r.generation);
                v.timestamp_ns = Some(r.timestamp_ns);
                v.journal_seq = Some(r.journal_seq);
                v.journal_offset = Some(r.journal_offset);
                v.journal_len = Some(r.journal_len);
                v.journal_block_size = Some(r.journal_block_size);
                v.member_count = Some(r.member_count);
                v.checkpoint = r.checkpoint.as_ref().map(|c| CheckpointView {
                    id: c.id,
                    len: c.len,
                    copies: c.copies.iter().map(|l| format!("member {} @ {}", l.member_index, l.offset)).collect(),
                });
            }
        }
        report.records.push(v);
    }
    emit(c.json, &report, || {
        let mut out = format!(
            "Root ring: {} slots: {} valid, {} invalid, {} empty\n",
            report.slots, report.valid, report.invalid, report.empty
        );
        match (report.best_slot, report.best_generation) {
            (Some(s), Some(g)) => out.push_str(&format!("Best root: slot {s}, generation {g}\n")),
            _ => out.push_str("Best root: none (no valid root of this pool on this member)\n"),
        }
        if !report.records.is_empty() {
            out.push('\n');
            let mut t = Table::new(
                &["SLOT", "STATUS", "GEN", "WRITTEN", "JOURNAL SEQ@OFFSET", "MEMBERS", "CHECKPOINT"],
                &[true, false, true, false, false, true, false],
            );
            for v in &report.records {
                if let Some(e) = &v.error {
                    t.row(vec![
                        v.slot.to_string(),
                        format!("{}: {e}", v.status),
                        "".into(),
                        "".into(),
                        "".into(),
                        "".into(),
                        "".into(),
                    ]);
                    continue;
                }
                t.row(vec![
                    v.slot.to_string(),
                    v.status.to_string(),
                    v.generation.unwrap_or(0).to_string(),
                    format_time_ns(v.timestamp_ns.unwrap_or(0)),
                    format!("{}@{}", v.journal_seq.unwrap_or(0), v.journal_offset.unwrap_or(0)),
                    v.member_count.unwrap_or(0).to_string(),
                    match &v.checkpoint {
                        None => "none".into(),
                        Some(c) => format!("{} ({}, {})", c.id, iec(c.len), c.copies.join(", ")),
                    },
                ]);
            }
            out.push_str(&t.render(2));
        }
        out
    })
}

// ---------------------------------------------------------------- bitmap

#[derive(Serialize)]
struct BitmapBlockView {
    index: u64,
    offset: u64,
    first_data_block: u64,
    covers: u64,
    status: &'static str,
    used: Option<u64>,
    generation: Option<u64>,
    stray_bits: u64,
    error: Option<String>,
}

#[derive(Serialize)]
struct BitmapReport {
    pool_uuid: uuid::Uuid,
    data_blocks: u64,
    block_size: u32,
    used_blocks: u64,
    free_blocks: u64,
    bitmap_blocks: usize,
    bad_bitmap_blocks: usize,
    blocks: Vec<BitmapBlockView>,
}

fn bitmap(c: &Common, all: bool) -> Result<(), Failure> {
    let (dev, choice) = load(&c.device)?;
    let sb = &choice.superblock;
    let scan = read_bitmap(&*dev, &sb.layout, sb.pool_uuid).map_err(|e| Box::new(e) as Failure)?;
    let used = scan.used();
    let bad = scan.bad_blocks();
    let blocks: Vec<BitmapBlockView> = scan
        .blocks
        .iter()
        .map(|b| BitmapBlockView {
            index: b.index,
            offset: b.offset,
            first_data_block: b.first_data_block,
            covers: b.covers,
            status: if b.result.is_ok() { "valid" } else { "bad" },
            used: b.result.as_ref().ok().map(|h| h.used_bits),
            generation: b.result.as_ref().ok().map(|h| h.generation),
            stray_bits: b.stray_bits,
            error: b.result.as_ref().err().map(err_string),
        })
        .collect();
    let report = BitmapReport {
        pool_uuid: sb.pool_uuid,
        data_blocks: scan.data_blocks,
        block_size: sb.layout.block_size,
        used_blocks: used,
        free_blocks: scan.data_blocks.saturating_sub(used),
        bitmap_blocks: blocks.len(),
        bad_bitmap_blocks: bad,
        blocks,
    };
    emit(c.json, &report, || {
        let bs = report.block_size as u64;
        let mut out = String::new();
        for (k, v) in [
            ("Data blocks:", format!("{} ({})", report.data_blocks, iec(report.data_blocks * bs))),
            ("Used:", format!("{} ({})", report.used_blocks, iec(report.used_blocks * bs))),
            ("Free:", format!("{} ({})", report.free_blocks, iec(report.free_blocks * bs))),
            ("Bitmap blocks:", format!("{} ({} bad)", report.bitmap_blocks, report.bad_bitmap_blocks)),
        ] {
            out.push_str(&format!("{k:<16}{v}\n"));
        }
        let mut t = Table::new(&["INDEX", "DATA BLOCKS", "USED", "GEN", "STATUS"], &[true, false, true, true, false]);
        let mut hidden = 0;
        for b in &report.blocks {
            let interesting = b.status != "valid" || b.used != Some(0) || b.stray_bits != 0;
            if !all && !interesting {
                hidden += 1;
                continue;
            }
            let status = match (&b.error, b.stray_bits) {
                (Some(e), _) => format!("bad: {e}"),
                (None, 0) => "valid".into(),
                (None, n) => format!("valid, {n} bits set past the data region"),
            };
            t.row(vec![
                b.index.to_string(),
                format!("{}..{}", b.first_data_block, b.first_data_block + b.covers),
                b.used.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
                b.generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
                status,
            ]);
        }
        if !t.is_empty() {
            out.push('\n');
            out.push_str(&t.render(2));
        }
        if hidden > 0 {
            out.push_str(&format!("({hidden} valid bitmap blocks with nothing used not shown; --all lists them)\n"));
        }
        out
    })
}

// ---------------------------------------------------------------- journal

#[derive(Serialize)]
struct RecordView {
    offset: u64,
    seq: u64,
    kind: &'static str,
    version: u16,
    payload_len: u32,
    block_count: u32,
    timestamp_ns: u64,
    header_crc32: String,
    prev_crc32: String,
}

#[derive(Serialize)]
struct JournalReport {
    pool_uuid: uuid::Uuid,
    region_start: u64,
    region_len: u64,
    /// Where the walk started: "root slot N (generation G)" or "offset 0 (no valid root)".
    start_from: String,
    start_offset: u64,
    start_seq: Option<u64>,
    journal_len: u64,
    journal_block_size: u32,
    records: Vec<RecordView>,
    stop: String,
}

fn journal(c: &Common) -> Result<(), Failure> {
    let (dev, choice) = load(&c.device)?;
    let sb = &choice.superblock;
    let ring = read_root_ring(&*dev, &sb.layout).map_err(|e| Box::new(e) as Failure)?;
    let (start, from) = match best_root(&ring, sb.pool_uuid) {
        Some((slot, r)) => (JournalStart::from_root(r), format!("root slot {slot} (generation {})", r.generation)),
        None => (JournalStart::from_layout(&sb.layout), "offset 0 (no valid root on this member)".to_string()),
    };
    let scan = scan_journal_from(&*dev, &sb.layout, sb.pool_uuid, start).map_err(|e| Box::new(e) as Failure)?;
    let region = sb.layout.region(dfs_format::RegionKind::Journal);
    let report = JournalReport {
        pool_uuid: sb.pool_uuid,
        region_start: region.start,
        region_len: region.len,
        start_from: from,
        start_offset: start.offset,
        start_seq: start.seq,
        journal_len: start.len,
        journal_block_size: start.block_size,
        records: scan
            .records
            .iter()
            .map(|r| RecordView {
                offset: r.offset,
                seq: r.header.seq,
                kind: match r.header.kind {
                    dfs_format::RecordKind::Transaction => "transaction",
                    dfs_format::RecordKind::Wrap => "wrap",
                },
                version: r.header.version,
                payload_len: r.header.payload_len,
                block_count: r.header.block_count,
                timestamp_ns: r.header.timestamp_ns,
                header_crc32: format!("{:#010x}", r.header.header_crc32),
                prev_crc32: format!("{:#010x}", r.header.prev_crc32),
            })
            .collect(),
        stop: scan.stop.to_string(),
    };
    emit(c.json, &report, || {
        let mut out = String::new();
        for (k, v) in [
            ("Region:", format!("{} at byte {} of the member", iec(report.region_len), report.region_start)),
            ("Journal:", format!("{} in {}-byte blocks", iec(report.journal_len), report.journal_block_size)),
            (
                "Start:",
                format!(
                    "{}: offset {}, seq {}",
                    report.start_from,
                    report.start_offset,
                    report.start_seq.map(|s| s.to_string()).unwrap_or_else(|| "any".into())
                ),
            ),
            ("Records:", report.records.len().to_string()),
            ("Stopped:", report.stop.clone()),
        ] {
            out.push_str(&format!("{k:<10}{v}\n"));
        }
        if !report.records.is_empty() {
            out.push('\n');
            let mut t = Table::new(
                &["OFFSET", "SEQ", "KIND", "PAYLOAD", "BLOCKS", "WRITTEN", "CRC", "PREV CRC"],
                &[true, true, false, true, true, false, false, false],
            );
            for r in &report.records {
                t.row(vec![
                    r.offset.to_string(),
                    r.seq.to_string(),
                    r.kind.to_string(),
                    r.payload_len.to_string(),
                    r.block_count.to_string(),
                    format_time_ns(r.timestamp_ns),
                    r.header_crc32.clone(),
                    r.prev_crc32.clone(),
                ]);
            }
            out.push_str(&t.render(2));
        }
        out
    })
}

// ---------------------------------------------------------------- fragments

#[derive(Serialize)]
struct FragmentView {
    block: u64,
    offset: u64,
    kind: &'static str,
    pool_uuid: uuid::Uuid,
    extent_uuid: uuid::Uuid,
    fragment_index: u16,
    fragment_count: u16,
    policy: String,
    payload_len: u32,
    extent_len: u32,
    generation: u64,
    created_ns: u64,
    payload_blocks: u64,
    truncated: bool,
    free_in_bitmap: Option<u64>,
    payload_ok: Option<bool>,
}

#[derive(Serialize)]
struct BadHeaderView {
    block: u64,
    offset: u64,
    error: String,
}

#[derive(Serialize)]
struct FragmentsReport {
    pool_uuid: uuid::Uuid,
    data_blocks: u64,
    blocks_examined: u64,
    fragments: Vec<FragmentView>,
    bad_headers: Vec<BadHeaderView>,
    unreadable: Vec<String>,
}

fn fragments(c: &Common, verify: bool) -> Result<(), Failure> {
    let (dev, choice) = load(&c.device)?;
    let sb = &choice.superblock;
    let bm = read_bitmap(&*dev, &sb.layout, sb.pool_uuid).map_err(|e| Box::new(e) as Failure)?;
    let scan = scan_fragments(&*dev, &sb.layout, Some(&bm), FragmentScanOptions { verify_payload: verify })
        .map_err(|e| Box::new(e) as Failure)?;
    let report = FragmentsReport {
        pool_uuid: sb.pool_uuid,
        data_blocks: scan.data_blocks,
        blocks_examined: scan.blocks_examined,
        fragments: scan
            .fragments
            .iter()
            .map(|f| FragmentView {
                block: f.block,
                offset: f.offset,
                kind: match f.header.kind {
                    dfs_format::fragment::FragmentKind::Extent => "extent",
                    dfs_format::fragment::FragmentKind::Checkpoint => "checkpoint",
                },
                pool_uuid: f.header.pool_uuid,
                extent_uuid: f.header.extent_uuid,
                fragment_index: f.header.fragment_index,
                fragment_count: f.header.fragment_count,
                policy: f.header.policy.to_string(),
                payload_len: f.header.payload_len,
                extent_len: f.header.extent_len,
                generation: f.header.generation,
                created_ns: f.header.created_ns,
                payload_blocks: f.payload_blocks,
                truncated: f.truncated,
                free_in_bitmap: f.free_in_bitmap,
                payload_ok: f.payload_ok,
            })
            .collect(),
        bad_headers: scan
            .bad_headers
            .iter()
            .map(|b| BadHeaderView { block: b.block, offset: b.offset, error: err_string(&b.error) })
            .collect(),
        unreadable: scan
            .unreadable
            .iter()
            .map(|u| format!("data blocks {}..{}: {}", u.block, u.block + u.blocks, u.error))
            .collect(),
    };
    emit(c.json, &report, || {
        let mut out = format!(
            "Data region: {} blocks, {} examined; {} fragments, {} bad headers, {} unreadable ranges\n",
            report.data_blocks,
            report.blocks_examined,
            report.fragments.len(),
            report.bad_headers.len(),
            report.unreadable.len()
        );
        if !report.fragments.is_empty() {
            out.push('\n');
            let mut t = Table::new(
                &["BLOCK", "KIND", "EXTENT", "FRAG", "POLICY", "PAYLOAD", "GEN", "BITMAP", "NOTE"],
                &[true, false, false, false, false, true, true, false, false],
            );
            for f in &report.fragments {
                let mut note = Vec::new();
                if f.pool_uuid != report.pool_uuid {
                    note.push(format!("pool {}", f.pool_uuid));
                }
                if f.truncated {
                    note.push("runs past the data region".to_string());
                }
                match f.payload_ok {
                    Some(true) => note.push("payload ok".into()),
                    Some(false) => note.push("PAYLOAD BAD".into()),
                    None => {}
                }
                t.row(vec![
                    f.block.to_string(),
                    f.kind.to_string(),
                    f.extent_uuid.to_string(),
                    format!("{}/{}", f.fragment_index, f.fragment_count),
                    f.policy.clone(),
                    f.payload_len.to_string(),
                    f.generation.to_string(),
                    match f.free_in_bitmap {
                        None => "?".into(),
                        Some(0) => "used".into(),
                        Some(n) => format!("{n} free"),
                    },
                    note.join(", "),
                ]);
            }
            out.push_str(&t.render(2));
        }
        for b in &report.bad_headers {
            out.push_str(&format!("bad header at data block {} (byte {}): {}\n", b.block, b.offset, b.error));
        }
        for u in &report.unreadable {
            out.push_str(&format!("unreadable: {u}\n"));
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_valid() {
        Args::command().debug_assert();
    }
}
