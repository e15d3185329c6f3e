//! Shared helpers of the operator tools: size parsing and printing, aligned
//! tables, timestamps, and the one-line error convention
//! (`PROG: error: <device>: <what>` on stderr, exit status 1). The `dfs`
//! subcommands live in [`cli`] (also used by `mount.dfs`).

pub mod cli;

use std::fmt::Write as _;
use std::process::ExitCode;

pub use dynamicfs::probe::iec;

/// Exit status of an operational error (refused device, IO error, garbage).
pub const EXIT_ERROR: u8 = 1;

/// Print `PROG: error: LINE` once per line of `msg` and return exit status 1.
pub fn fail(prog: &str, msg: &dyn std::fmt::Display) -> ExitCode {
    for line in msg.to_string().lines() {
        eprintln!("{prog}: error: {line}");
    }
    ExitCode::from(EXIT_ERROR)
}

/// Write `text` to stdout. A closed pipe (`dfs-inspect ... | head`) is not
/// an error: the reader has all it wanted. Other write errors are returned.
pub fn write_stdout(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Parse a size: a whole number of bytes with an optional binary suffix
/// `K`, `M`, `G`, `T`, `P` (also written `KiB`, `MB`, ...; all mean powers
/// of 1024), e.g. `512M`, `4G`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (expected e.g. 512M or 4G)"));
    }
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is too large"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        _ => return Err(format!("{s:?}: unknown size suffix {suffix:?} (use K, M, G, T or P)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// A table printed with aligned columns: numbers right-aligned, text left.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with these column titles; `right[i]` right-aligns column i.
    pub fn new(header: &[&str], right: &[bool]) -> Table {
        Table { header: header.iter().map(|s| s.to_string()).collect(), rows: Vec::new(), right: right.to_vec() }
    }

    /// Add a row (as many cells as columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Render with `indent` spaces before each line and two spaces between
    /// columns; no trailing spaces.
    pub fn render(&self, indent: usize) -> String {
        let cols = self.header.len();
        let mut width = vec![0usize; cols];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = " ".repeat(indent);
            for (i, c) in r.iter().enumerate().take(cols) {
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right.get(i).copied().unwrap_or(false) {
                    let _ = write!(line, "{c:>w$}", w = width[i]);
                } else {
                    let _ = write!(line, "{c:<w$}", w = width[i]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Nanoseconds since the Unix epoch as UTC `YYYY-MM-DDTHH:MM:SSZ`
/// ("-" for 0, "never written").
pub fn format_time_ns(ns: u64) -> String {
    if ns == 0 {
        return "-".into();
    }
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant), for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("4GiB"), Ok(4 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("4X").is_err());
        assert!(parse_size("-4G").is_err());
        assert!(parse_size("99999999999P").is_err());
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&["A", "SIZE", "PATH"], &[true, true, false]);
        t.row(vec!["0".into(), "1.00 GiB".into(), "/dev/loop0".into()]);
        t.row(vec!["10".into(), "64.00 MiB".into(), "/x".into()]);
        assert_eq!(t.render(2), "   A       SIZE  PATH\n   0   1.00 GiB  /dev/loop0\n  10  64.00 MiB  /x\n");
    }

    #[test]
    fn times() {
        assert_eq!(format_time_ns(0), "-");
        assert_eq!(format_time_ns(1_000_000_000), "1970-01-01T00:00:01Z");
        assert_eq!(format_time_ns(1_709_251_200 * 1_000_000_000), "2024-03-01T00:00:00Z");
    }
}
