//! Reading `/proc/self/mountinfo`: is a directory a DynamicFS mount, and of
//! which member.

use std::path::{Path, PathBuf};

/// One line of mountinfo (the fields we use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    pub options: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo text.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                mountpoint: PathBuf::from(unescape(l.get(4)?)),
                fstype: r.first()?.to_string(),
                source: unescape(r.get(1)?),
                options: r.get(2).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

/// Every mount of this process's namespace.
pub fn mounts() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse(&t)).unwrap_or_default()
}

/// The topmost mount of type `fstype` on `dir` (compared after
/// canonicalizing `dir`).
pub fn find(dir: &Path, fstype: &str) -> Option<MountEntry> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    mounts().into_iter().rev().find(|m| m.mountpoint == dir && m.fstype == fstype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unescapes() {
        let text = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    90 27 0:50 / /mnt/a\\040b rw,nosuid,nodev - fuse.dfs /dev/loop3 rw,user_id=0,group_id=0\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mountpoint, PathBuf::from("/mnt/a b"));
        assert_eq!(m[1].fstype, "fuse.dfs");
        assert_eq!(m[1].source, "/dev/loop3");
    }
}
