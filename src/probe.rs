//! # Checks run before anything is written to a would-be member
//!
//! `mkfs` probes every member first and writes nothing if any is refused.
//! A probe collects [`Finding`]s; [`Probe::verdict`] turns them into a
//! refusal. Some findings can be overridden with `--force` (what is on the
//! disk would be destroyed, which may be what the operator wants); others
//! never can, because formatting would corrupt something live, cannot work,
//! or would delete files mkfs does not know:
//!
//! | finding | `--force` overrides |
//! |---|---|
//! | mounted (the device, one of its partitions, or the loop device over an image) | no |
//! | active swap | no |
//! | in use: an exclusive open fails (`O_EXCL` on a block device, `flock` on an image file, as `RawDevice` takes them), or another block device is stacked on it | no |
//! | too small (below `dfs_format::layout::MIN_MEMBER_SIZE`) | no |
//! | a directory that is not empty and not a DynamicFS member | no |
//! | a foreign signature (ext2/3/4, xfs, btrfs, swap, LUKS, RAID, ...) | yes |
//! | a partition table (MBR, GPT, ...) | yes |
//! | an existing DynamicFS member (either superblock copy verifies) | yes (a directory member's own files are deleted first) |
//! | an image file attached to a loop device that is not mounted | yes |
//! | a directory member larger than the free space of its filesystem | yes |
//!
//! ## Why the `blkid` program, not `libblkid-rs` and not a table of magics
//!
//! Foreign signatures and partition tables are found by running util-linux's
//! `blkid` in low-level probe mode: `blkid -p -o export DEV`. It bypasses the
//! blkid cache, reads the device itself, knows every filesystem, RAID,
//! crypto and partition-table format libblkid knows (maintained alongside
//! the kernel's), and has documented exit codes: 0 found (`TYPE=`, `PTTYPE=`,
//! `UUID=`, `LABEL=`, ... one per line), 2 nothing found, 8 ambivalent (more
//! than one signature). The `libblkid-rs` binding would give the same
//! answers from the same library, but needs `libblkid-dev` and clang
//! (bindgen) on every build machine, for a call made once per member per
//! mkfs, where spawning a process costs nothing that matters. A hand-written
//! table of magics would be a worse, unmaintained copy of libblkid.
//! util-linux is installed wherever `mount` is; when `blkid` is nonetheless
//! missing, the probe fails with [`ProbeError::BlkidMissing`] ("install
//! util-linux") rather than formatting blind.
//!
//! DynamicFS's own superblock (primary or backup) is recognised by
//! `dfs-format` through [`crate::member::read_superblocks`]; libblkid does
//! not know it.
//!
//! Mounts come from `/proc/self/mountinfo` (by major:minor and by source
//! path, so a mount through a partition or a loop device is seen), swap from
//! `/proc/swaps`, stacked devices from sysfs `holders/`, loop devices backed
//! by an image file from `/sys/block/loop*/loop/backing_file`, and "in use"
//! from an `O_EXCL` open of the block device (which fails with `EBUSY` while
//! the kernel or another process has claimed it) or a non-blocking `flock`
//! of the image file (held by whoever opened it as a member exclusively).

use std::fmt;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use dfs_format::layout::MIN_MEMBER_SIZE;
use dfs_format::Layout;

use crate::device::open::{member_kind, open_member_device, OpenMode};
use crate::device::{DeviceError, DeviceKind};
use crate::member::read_superblocks;

/// Something found on a would-be member.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Finding {
    /// Mounted, directly or `through` a partition or loop device.
    Mounted { mount_point: PathBuf, through: Option<PathBuf> },
    /// An active swap area, directly or `through` a loop device.
    Swap { through: Option<PathBuf> },
    /// Claimed by the kernel or another process: `holders` are the block
    /// devices stacked on it (empty when only the exclusive open failed).
    InUse { holders: Vec<String> },
    /// Smaller than a member can be.
    TooSmall { size: u64, min: u64 },
    /// A filesystem, swap, crypto or RAID signature that blkid recognises.
    Signature { fs_type: String, usage: Option<String>, uuid: Option<String>, label: Option<String> },
    /// A partition table.
    PartitionTable { pt_type: String, uuid: Option<String> },
    /// blkid found several conflicting signatures.
    Ambivalent,
    /// Already a DynamicFS member.
    DynamicFs { pool_uuid: uuid::Uuid, member_index: u32, label: String },
    /// An image file backing a loop device (not mounted).
    LoopAttached { loop_device: PathBuf },
    /// A directory that holds something other than a DynamicFS member.
    NotEmpty { entries: u64, example: String },
    /// A directory member asked to be larger than its filesystem's free space.
    InsufficientSpace { size: u64, free: u64 },
}

impl Finding {
    /// True when `--force` may override this finding.
    pub fn overridable(&self) -> bool {
        !matches!(
            self,
            Finding::Mounted { .. }
                | Finding::Swap { .. }
                | Finding::InUse { .. }
                | Finding::TooSmall { .. }
                | Finding::NotEmpty { .. }
        )
    }
}

fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u' | 'x') => "an",
        _ => "a",
    }
}

/// Bytes as an IEC size with two decimals ("32.00 MiB").
pub fn iec(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Mounted { mount_point, through: None } => write!(f, "is mounted at {}", mount_point.display()),
            Finding::Mounted { mount_point, through: Some(t) } => {
                write!(f, "is mounted at {} (through {})", mount_point.display(), t.display())
            }
            Finding::Swap { through: None } => write!(f, "is in use as swap"),
            Finding::Swap { through: Some(t) } => {
                write!(f, "is in use as swap (through {})", t.display())
            }
            Finding::InUse { holders } if holders.is_empty() => {
                write!(f, "is in use (an exclusive open failed: held by the kernel or another process)")
            }
            Finding::InUse { holders } => write!(f, "is in use by {}", holders.join(", ")),
            Finding::TooSmall { size, min } => {
                write!(f, "is too small ({}); a member needs at least {}", iec(*size), iec(*min))
            }
            Finding::Signature { fs_type, usage, uuid, label } => {
                let what = match usage.as_deref() {
                    Some("filesystem") => "filesystem",
                    Some("crypto") => "encrypted volume",
                    Some("raid") => "RAID member signature",
                    _ => "signature",
                };
                write!(f, "contains {} {fs_type} {what}", article(fs_type))?;
                let mut extra = Vec::new();
                if let Some(u) = uuid {
                    extra.push(format!("UUID {u}"));
                }
                if let Some(l) = label {
                    extra.push(format!("label {l:?}"));
                }
                if !extra.is_empty() {
                    write!(f, " ({})", extra.join(", "))?;
                }
                Ok(())
            }
            Finding::PartitionTable { pt_type, uuid } => {
                let name = match pt_type.as_str() {
                    "dos" => "an MBR (dos)".to_string(),
                    "gpt" => "a GPT".to_string(),
                    other => format!("{} {other}", article(other)),
                };
                write!(f, "carries {name} partition table")?;
                if let Some(u) = uuid {
                    write!(f, " (UUID {u})")?;
                }
                Ok(())
            }
            Finding::Ambivalent => {
                write!(f, "carries several conflicting signatures (blkid: ambivalent result; see wipefs(8))")
            }
            Finding::DynamicFs { pool_uuid, member_index, label } => {
                write!(f, "is already a DynamicFS member (pool {pool_uuid}, member {member_index}")?;
                if !label.is_empty() {
                    write!(f, ", label {label:?}")?;
                }
                write!(f, ")")
            }
            Finding::LoopAttached { loop_device } => {
                write!(f, "is attached to loop device {}", loop_device.display())
            }
            Finding::NotEmpty { entries, example } => {
                write!(f, "is a directory that is not empty ({entries} entries, e.g. {example:?})")
            }
            Finding::InsufficientSpace { size, free } => {
                write!(f, "asks for {} but its filesystem has {} free", iec(*size), iec(*free))
            }
        }
    }
}

/// Why a probe failed or refused a member.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Something was found that forbids formatting (see the module doc).
    #[error("{}: {finding}; {}", device.display(), if *overridable { "use --force to overwrite" } else { "refusing to format it" })]
    Refused { device: PathBuf, finding: Finding, overridable: bool },
    /// The path does not exist (or its parent, for a directory member).
    #[error("{}: does not exist", device.display())]
    NotFound { device: PathBuf },
    /// Not something a member can be.
    #[error("{}: {reason}", device.display())]
    Unsupported { device: PathBuf, reason: String },
    /// The `blkid` program is not installed.
    #[error(
        "{}: cannot check for existing filesystems: the blkid program was not found (install util-linux)",
        device.display()
    )]
    BlkidMissing { device: PathBuf },
    /// `blkid` failed.
    #[error("{}: blkid failed: {reason}", device.display())]
    Blkid { device: PathBuf, reason: String },
    /// Opening or reading the device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A system file or directory could not be read.
    #[error("{}: {what}: {source}", device.display())]
    Io { device: PathBuf, what: &'static str, source: std::io::Error },
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The path as given.
    pub path: PathBuf,
    pub kind: DeviceKind,
    /// Size in bytes (for a directory member, the size asked for).
    pub size: u64,
    /// Logical block size, when a device was opened.
    pub block_size: Option<u32>,
    /// Everything found, the ones `--force` cannot override first.
    pub findings: Vec<Finding>,
}

impl Probe {
    /// Ok when the member may be formatted: no finding, or only findings
    /// that `force` overrides. Otherwise the first refusing finding.
    pub fn verdict(&self, force: bool) -> Result<(), ProbeError> {
        let refusing =
            self.findings.iter().find(|f| !f.overridable()).or_else(
                || {
                    if force {
                        None
                    } else {
                        self.findings.first()
                    }
                },
            );
        match refusing {
            None => Ok(()),
            Some(f) => {
                Err(ProbeError::Refused { device: self.path.clone(), finding: f.clone(), overridable: f.overridable() })
            }
        }
    }

    /// The findings that `--force` overrides (what formatting destroys).
    pub fn overridden(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.overridable())
    }

    fn sort(&mut self) {
        self.findings.sort_by_key(|f| f.overridable());
    }
}

struct MountEntry {
    devnum: (u32, u32),
    mount_point: PathBuf,
    source: String,
}

/// Whether `node` (canonical path, and `devnum` for a block device) is
/// mounted or active swap; the finding names `through` when it is a
/// partition or loop device of the member rather than the member itself.
fn mounted_finding(
    mounts: &[MountEntry],
    swaps: &[String],
    node: &Path,
    devnum: Option<(u32, u32)>,
    through: Option<&Path>,
) -> Option<Finding> {
    for m in mounts {
        let by_num = devnum.is_some_and(|d| d == m.devnum);
        let by_src = m.source.starts_with('/') && fs::canonicalize(&m.source).is_ok_and(|s| s == node);
        if by_num || by_src {
            return Some(Finding::Mounted {
                mount_point: m.mount_point.clone(),
                through: through.map(Path::to_path_buf),
            });
        }
    }
    if swaps.iter().any(|s| fs::canonicalize(s).is_ok_and(|s| s == node)) {
        return Some(Finding::Swap { through: through.map(Path::to_path_buf) });
    }
    None
}

/// Probe a block device or image file that is to become a member.
pub fn probe_device(path: &Path) -> Result<Probe, ProbeError> {
    let kind = match member_kind(path) {
        Ok(k) => k,
        Err(DeviceError::Open { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProbeError::NotFound { device: path.to_path_buf() })
        }
        Err(e) => return Err(e.into()),
    };
    if kind == DeviceKind::Dir {
        return Err(ProbeError::Unsupported {
            device: path.to_path_buf(),
            reason: "is a directory (give it as a directory member)".into(),
        });
    }
    let io = |what| move |source| ProbeError::Io { device: path.to_path_buf(), what, source };
    let canon = fs::canonicalize(path).map_err(io("cannot resolve the path"))?;
    let md = fs::metadata(&canon).map_err(io("cannot stat"))?;
    let mounts = read_mountinfo().map_err(io("cannot read /proc/self/mountinfo"))?;
    let swaps = read_swaps();
    let mut findings = Vec::new();

    if kind == DeviceKind::Block {
        let devnum = (libc::major(md.rdev()), libc::minor(md.rdev()));
        findings.extend(mounted_finding(&mounts, &swaps, &canon, Some(devnum), None));
        let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", devnum.0, devnum.1));
        for (part, pnum) in partitions(&sys) {
            findings.extend(mounted_finding(&mounts, &swaps, &part, Some(pnum), Some(&part)));
        }
        let holders = list_dir(&sys.join("holders"));
        if !holders.is_empty() {
            findings.push(Finding::InUse { holders });
        } else if findings.is_empty() {
            let excl = fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(&canon);
            match excl {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    findings.push(Finding::InUse { holders: Vec::new() })
                }
                Err(e) => return Err(DeviceError::Open { device: path.to_path_buf(), source: e }.into()),
                Ok(_) => {}
            }
        }
    } else {
        findings.extend(mounted_finding(&mounts, &swaps, &canon, None, None));
        // An image file opened exclusively (an opened pool) holds a flock.
        if !flock_free(&canon).map_err(io("cannot open"))? {
            findings.push(Finding::InUse { holders: Vec::new() });
        }
        for (lo, lnum) in loops_backed_by(&canon) {
            match mounted_finding(&mounts, &swaps, &lo, Some(lnum), Some(&lo)) {
                Some(f) => findings.push(f),
                None => findings.push(Finding::LoopAttached { loop_device: lo }),
            }
        }
    }

    let dev = open_member_device(path, OpenMode { read_only: true, exclusive: false })?;
    let (size, block_size) = (dev.size(), dev.block_size());
    if size < MIN_MEMBER_SIZE || Layout::compute(size, block_size).is_err() {
        findings.push(Finding::TooSmall { size, min: MIN_MEMBER_SIZE });
    }
    if let Ok(choice) = read_superblocks(&*dev) {
        let sb = choice.superblock;
        findings.push(Finding::DynamicFs { pool_uuid: sb.pool_uuid, member_index: sb.member_index, label: sb.label });
    }
    drop(dev);
    findings.extend(blkid_findings(path)?);
    let mut p = Probe { path: path.to_path_buf(), kind, size, block_size: Some(block_size), findings };
    p.sort();
    Ok(p)
}

/// How long a lock held by a process that just closed a member may linger:
/// a `RawDevice` that used io_uring keeps its file open until the kernel
/// has torn the ring down, which happens asynchronously (tens of ms), even
/// after the process exits. A real holder holds for much longer.
pub const LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether nobody holds a `flock` on `path`, waiting up to [`LINGER`].
fn flock_free(path: &Path) -> std::io::Result<bool> {
    let file = fs::File::open(path)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let deadline = std::time::Instant::now() + LINGER;
    loop {
        // SAFETY: flock on a descriptor we own; released when `file` closes.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Probe a directory that is to become a member of `size` bytes. It may
/// not exist yet (its parent must).
pub fn probe_dir(path: &Path, size: u64) -> Result<Probe, ProbeError> {
    let mut findings = Vec::new();
    let mut block_size = None;
    let io = |what| move |source| ProbeError::Io { device: path.to_path_buf(), what, source };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let existing = match fs::metadata(path) {
        Ok(md) if md.is_dir() => true,
        Ok(_) => {
            return Err(ProbeError::Unsupported { device: path.to_path_buf(), reason: "is not a directory".into() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !parent.is_dir() {
                return Err(ProbeError::NotFound { device: parent.to_path_buf() });
            }
            false
        }
        Err(e) => return Err(io("cannot stat")(e)),
    };
    if size < MIN_MEMBER_SIZE {
        findings.push(Finding::TooSmall { size, min: MIN_MEMBER_SIZE });
    }
    let mut is_member = false;
    if existing {
        let mut example = None;
        let mut entries = 0u64;
        for e in fs::read_dir(path).map_err(io("cannot list"))? {
            let e = e.map_err(io("cannot list"))?;
            entries += 1;
            example.get_or_insert_with(|| e.file_name().to_string_lossy().into_owned());
        }
        if let Some(example) = example {
            let member =
                open_member_device(path, OpenMode { read_only: true, exclusive: false }).ok().and_then(|dev| {
                    block_size = Some(dev.block_size());
                    read_superblocks(&*dev).ok()
                });
            match member {
                Some(choice) => {
                    let sb = choice.superblock;
                    is_member = true;
                    findings.push(Finding::DynamicFs {
                        pool_uuid: sb.pool_uuid,
                        member_index: sb.member_index,
                        label: sb.label,
                    });
                }
                None => findings.push(Finding::NotEmpty { entries, example }),
            }
        }
    }
    // Space: an existing member's files count as free for this purpose.
    if !is_member {
        if let Ok(free) = free_space(if existing { path } else { parent }) {
            if size > free {
                findings.push(Finding::InsufficientSpace { size, free });
            }
        }
    }
    let mut p = Probe { path: path.to_path_buf(), kind: DeviceKind::Dir, size, block_size, findings };
    p.sort();
    Ok(p)
}

/// Bytes available to unprivileged users on the filesystem holding `path`
/// (`statvfs`: `f_bavail * f_frsize`).
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

// ---------------------------------------------------------------- blkid

/// Where to find `blkid`: `$PATH`, then the sbin directories (which a
/// non-root `$PATH` often lacks).
fn blkid_program() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("blkid")).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin/blkid", "/sbin/blkid", "/usr/bin/blkid"].map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Unescape a value of `blkid -o export` (a backslash quotes the next byte).
fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse `blkid -p -o export` output into findings.
pub fn parse_blkid_export(out: &str) -> Vec<Finding> {
    let mut kv = std::collections::BTreeMap::new();
    for line in out.lines() {
        if let Some((k, v)) = line.split_once('=') {
            kv.insert(k.trim().to_string(), unescape(v.trim()));
        }
    }
    let mut findings = Vec::new();
    if let Some(t) = kv.get("TYPE") {
        findings.push(Finding::Signature {
            fs_type: t.clone(),
            usage: kv.get("USAGE").cloned(),
            uuid: kv.get("UUID").or_else(|| kv.get("UUID_SUB")).cloned(),
            label: kv.get("LABEL").cloned(),
        });
    }
    if let Some(t) = kv.get("PTTYPE") {
        findings.push(Finding::PartitionTable { pt_type: t.clone(), uuid: kv.get("PTUUID").cloned() });
    }
    findings
}

/// Run `blkid -p -o export` on `path` (see the module doc).
pub fn blkid_findings(path: &Path) -> Result<Vec<Finding>, ProbeError> {
    let Some(prog) = blkid_program() else {
        return Err(ProbeError::BlkidMissing { device: path.to_path_buf() });
    };
    let out = Command::new(prog)
        .args(["-p", "-o", "export"])
        .arg(path)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| ProbeError::Blkid { device: path.to_path_buf(), reason: e.to_string() })?;
    match out.status.code() {
        Some(0) => Ok(parse_blkid_export(&String::from_utf8_lossy(&out.stdout))),
        Some(2) => Ok(Vec::new()),
        Some(8) => Ok(vec![Finding::Ambivalent]),
        code => {
            let err = String::from_utf8_lossy(&out.stderr);
            let reason = match err.lines().next() {
                Some(l) if !l.trim().is_empty() => l.trim().to_string(),
                _ => format!("exit status {code:?}"),
            };
            Err(ProbeError::Blkid { device: path.to_path_buf(), reason })
        }
    }
}

// ---------------------------------------------------------------- mounts, swap, sysfs

/// Undo the octal escapes of /proc mount tables (`\040` for a space).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_mountinfo() -> std::io::Result<Vec<MountEntry>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let f: Vec<&str> = pre.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            let source = post.split(' ').nth(1).unwrap_or("");
            Some(MountEntry {
                devnum: (maj.parse().ok()?, min.parse().ok()?),
                mount_point: PathBuf::from(unescape_octal(f.get(4)?)),
                source: unescape_octal(source),
            })
        })
        .collect())
}

fn read_swaps() -> Vec<String> {
    fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(unescape_octal))
        .collect()
}

fn parse_devnum(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Partitions of the block device whose sysfs directory is `sys`:
/// (`/dev/NAME`, major:minor).
fn partitions(sys: &Path) -> Vec<(PathBuf, (u32, u32))> {
    list_dir(sys)
        .into_iter()
        .filter(|name| sys.join(name).join("partition").exists())
        .filter_map(|name| {
            let num = parse_devnum(&fs::read_to_string(sys.join(&name).join("dev")).ok()?)?;
            Some((PathBuf::from("/dev").join(&name), num))
        })
        .collect()
}

/// Loop devices whose backing file is `file` (canonical path).
fn loops_backed_by(file: &Path) -> Vec<(PathBuf, (u32, u32))> {
    list_dir(Path::new("/sys/block"))
        .into_iter()
        .filter(|n| n.starts_with("loop"))
        .filter_map(|name| {
            let base = Path::new("/sys/block").join(&name);
            let backing = fs::read_to_string(base.join("loop/backing_file")).ok()?;
            if Path::new(backing.trim_end_matches('\n')) != file {
                return None;
            }
            let num = parse_devnum(&fs::read_to_string(base.join("dev")).ok()?)?;
            Some((PathBuf::from("/dev").join(&name), num))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export_parsing() {
        let out = "DEVNAME=/dev/loop3\nLABEL=my\\ disk\nUUID=de10b4d0\nVERSION=1.0\nTYPE=ext4\nUSAGE=filesystem\n";
        let f = parse_blkid_export(out);
        assert_eq!(
            f,
            vec![Finding::Signature {
                fs_type: "ext4".into(),
                usage: Some("filesystem".into()),
                uuid: Some("de10b4d0".into()),
                label: Some("my disk".into()),
            }]
        );
        assert_eq!(f[0].to_string(), "contains an ext4 filesystem (UUID de10b4d0, label \"my disk\")");
        let pt = parse_blkid_export("DEVNAME=x\nPTUUID=1234\nPTTYPE=gpt\n");
        assert_eq!(pt[0].to_string(), "carries a GPT partition table (UUID 1234)");
        assert!(parse_blkid_export("").is_empty());
        let swap = parse_blkid_export("TYPE=swap\nUSAGE=other\n");
        assert_eq!(swap[0].to_string(), "contains a swap signature");
        let luks = parse_blkid_export("TYPE=crypto_LUKS\nUSAGE=crypto\n");
        assert_eq!(luks[0].to_string(), "contains a crypto_LUKS encrypted volume");
    }

    #[test]
    fn octal_unescape() {
        assert_eq!(unescape_octal("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_octal("/x\\"), "/x\\");
        assert_eq!(unescape_octal("/x\\04"), "/x\\04");
        assert_eq!(unescape_octal("/x\\134"), "/x\\");
    }

    #[test]
    fn verdict_order_and_force() {
        let p = Probe {
            path: "/dev/x".into(),
            kind: DeviceKind::Block,
            size: 1 << 30,
            block_size: Some(4096),
            findings: vec![Finding::PartitionTable { pt_type: "dos".into(), uuid: None }],
        };
        let e = p.verdict(false).unwrap_err();
        assert_eq!(e.to_string(), "/dev/x: carries an MBR (dos) partition table; use --force to overwrite");
        p.verdict(true).unwrap();
        let mut q = p.clone();
        q.findings.push(Finding::Mounted { mount_point: "/mnt".into(), through: None });
        q.sort();
        let e = q.verdict(true).unwrap_err();
        assert_eq!(e.to_string(), "/dev/x: is mounted at /mnt; refusing to format it");
        assert_eq!(q.overridden().count(), 1);
    }

    #[test]
    fn sizes() {
        assert_eq!(iec(512), "512 B");
        assert_eq!(iec(32 << 20), "32.00 MiB");
        assert_eq!(iec(3 << 29), "1.50 GiB");
    }

    #[test]
    fn this_process_sees_its_mounts() {
        // /proc is mounted on every Linux this runs on.
        let mounts = read_mountinfo().unwrap();
        assert!(mounts.iter().any(|m| m.mount_point == Path::new("/proc")));
    }
}
