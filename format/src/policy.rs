//! Redundancy policy of an extent: its text form (`replication:N`,
//! `erasure:K+M`) and its 4-byte on-disk form.
//!
//! On disk: byte 0 kind (1 = replication, 2 = erasure), byte 1 N or K,
//! byte 2 0 or M, byte 3 zero. Anything else is rejected.

use crate::error::{FormatError, Result};
use std::fmt;
use std::str::FromStr;

/// Most copies a replication policy may ask for.
pub const MAX_COPIES: u8 = 16;
/// Most data shards of an erasure policy.
pub const MAX_DATA_SHARDS: u8 = 64;
/// Most parity shards of an erasure policy.
pub const MAX_PARITY_SHARDS: u8 = 32;

/// How one extent is made redundant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Policy {
    /// `copies` full copies on distinct members.
    Replication { copies: u8 },
    /// Reed-Solomon: `data` data shards and `parity` parity shards on
    /// `data + parity` distinct members.
    Erasure { data: u8, parity: u8 },
}

const WHAT: &str = "policy";

impl Policy {
    /// Number of fragments (and of distinct members) an extent needs.
    pub fn fragment_count(&self) -> u32 {
        match *self {
            Policy::Replication { copies } => copies as u32,
            Policy::Erasure { data, parity } => data as u32 + parity as u32,
        }
    }

    /// Fragments needed to read the extent back.
    pub fn fragments_needed(&self) -> u32 {
        match *self {
            Policy::Replication { .. } => 1,
            Policy::Erasure { data, .. } => data as u32,
        }
    }

    /// How many fragments may be lost without losing the extent.
    pub fn tolerated_losses(&self) -> u32 {
        self.fragment_count() - self.fragments_needed()
    }

    /// The 4-byte on-disk encoding.
    pub fn encode(&self) -> [u8; 4] {
        match *self {
            Policy::Replication { copies } => [1, copies, 0, 0],
            Policy::Erasure { data, parity } => [2, data, parity, 0],
        }
    }

    /// Decode and validate the 4-byte on-disk encoding.
    pub fn decode(b: [u8; 4]) -> Result<Policy> {
        let p = match b {
            [1, copies, 0, 0] => Policy::Replication { copies },
            [2, data, parity, 0] => Policy::Erasure { data, parity },
            _ => return Err(FormatError::invalid(WHAT, "encoding", format!("bytes {b:02x?}"))),
        };
        p.validate()?;
        Ok(p)
    }

    /// Check the numbers are within the supported ranges.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Policy::Replication { copies } if copies == 0 || copies > MAX_COPIES => {
                Err(FormatError::invalid(WHAT, "copies", format!("{copies} (must be 1..={MAX_COPIES})")))
            }
            Policy::Erasure { data, .. } if data == 0 || data > MAX_DATA_SHARDS => {
                Err(FormatError::invalid(WHAT, "data shards", format!("{data} (must be 1..={MAX_DATA_SHARDS})")))
            }
            Policy::Erasure { parity, .. } if parity == 0 || parity > MAX_PARITY_SHARDS => {
                Err(FormatError::invalid(WHAT, "parity shards", format!("{parity} (must be 1..={MAX_PARITY_SHARDS})")))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Policy::Replication { copies } => write!(f, "replication:{copies}"),
            Policy::Erasure { data, parity } => write!(f, "erasure:{data}+{parity}"),
        }
    }
}

fn parse_count(s: &str, field: &'static str) -> Result<u8> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) || s.len() > 3 {
        return Err(FormatError::invalid(WHAT, field, format!("{s:?} is not a small number")));
    }
    s.parse::<u8>().map_err(|_| FormatError::invalid(WHAT, field, format!("{s:?} is out of range")))
}

impl FromStr for Policy {
    type Err = FormatError;

    /// Strict parse of `replication:N` or `erasure:K+M` (no spaces, no signs).
    fn from_str(s: &str) -> Result<Policy> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            FormatError::invalid(WHAT, "text", format!("{s:?}: expected replication:N or erasure:K+M"))
        })?;
        let p = match kind {
            "replication" => Policy::Replication { copies: parse_count(rest, "copies")? },
            "erasure" => {
                let (k, m) = rest
                    .split_once('+')
                    .ok_or_else(|| FormatError::invalid(WHAT, "text", format!("{s:?}: expected erasure:K+M")))?;
                Policy::Erasure { data: parse_count(k, "data shards")?, parity: parse_count(m, "parity shards")? }
            }
            _ => {
                return Err(FormatError::invalid(
                    WHAT,
                    "kind",
                    format!("{kind:?}: expected \"replication\" or \"erasure\""),
                ))
            }
        };
        p.validate()?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        for s in ["replication:1", "replication:3", "erasure:4+2", "erasure:10+4"] {
            let p: Policy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(Policy::decode(p.encode()).unwrap(), p);
        }
    }

    #[test]
    fn rejects_nonsense() {
        for s in [
            "",
            "replication",
            "replication:",
            "replication:0",
            "replication:17",
            "replication:-1",
            "replication: 3",
            "erasure:0+2",
            "erasure:4+0",
            "erasure:4",
            "erasure:4+2+1",
            "raid:5",
            "erasure:+2",
            "replication:3x",
            "replication:0003",
            "erasure:65+1",
        ] {
            assert!(s.parse::<Policy>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn counts() {
        let p = Policy::Erasure { data: 4, parity: 2 };
        assert_eq!((p.fragment_count(), p.fragments_needed(), p.tolerated_losses()), (6, 4, 2));
        let r = Policy::Replication { copies: 3 };
        assert_eq!((r.fragment_count(), r.fragments_needed(), r.tolerated_losses()), (3, 1, 2));
    }
}
