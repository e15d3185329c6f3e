//! `dfs scrub`, `dfs scrub-daemon`, `dfs scrub-schedule`, `dfs
//! detect-orphans`, `dfs orphan-stats`, `dfs cleanup-orphans`: the integrity
//! commands. Each returns the text to print, or one error line.
//!
//! `scrub` on a **mounted** pool goes to the mount's control socket
//! (`scrub.run`: the mount's scrub daemon runs one whole pass and returns
//! the same report); on an unmounted pool its members are found from one
//! of them (or `UUID=`) and opened read-only for a check, read-write and
//! exclusive for `--repair` (a pool held by a process without a control
//! socket is refused, naming the PID). The orphan commands go to the mount's control socket when the
//! pool is mounted (`orphans.*` methods: the mount judges against its open
//! allocators, so in-flight writes are safe) and work on the unmounted
//! pool otherwise. `scrub-daemon` talks to the scrub daemon of a mounted
//! pool through the control socket. `scrub-schedule` stores the schedule
//! in the pool: through the mount when mounted (`scrub.schedule`; its
//! daemon follows it at once), on the pool opened here otherwise.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use dynamicfs::device::Device;
use dynamicfs::discover::{find_members, open_members, DiscoverError, DiscoverOptions, PoolSource};
use dynamicfs::engine::lock::DEFAULT_LOCK_DIR;
use dynamicfs::engine::orphans::{self, CleanupOptions, CleanupReport, OrphanReport};
use dynamicfs::engine::scrub::{scrub_pool, ScrubOptions, ScrubReport};
use dynamicfs::engine::scrub_daemon::{self, Intensity, ScheduleView};
use dynamicfs::fsck::pool_lock_holder;
use serde::Serialize;

use crate::{format_time_ns, iec};

/// What a command printed and whether it found damage left (exit status 1).
pub struct Outcome {
    pub text: String,
    pub damage_left: bool,
}

fn json<T: Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map(|s| s + "\n").map_err(|e| e.to_string())
}

/// Find the members of the pool `arg` names and open them (read-write and
/// exclusive when `write`), refusing a pool in use for a write.
fn open_devices(arg: &str, write: bool) -> Result<Vec<Arc<dyn Device>>, String> {
    let source = PoolSource::parse(arg).map_err(|e| e.to_string())?;
    let found = find_members(&source, &DiscoverOptions::default()).map_err(|e| e.to_string())?;
    if write {
        if let Some(pid) = pool_lock_holder(std::path::Path::new(DEFAULT_LOCK_DIR), found.pool_uuid) {
            return Err(format!(
                "pool {} is in use by PID {pid}, which has no control socket: stop it first",
                found.pool_uuid
            ));
        }
    }
    open_members(&found, !write).map_err(|e| match e {
        DiscoverError::Open { path, source } => format!("{}: {source} (is the pool mounted?)", path.display()),
        other => other.to_string(),
    })
}

/// A progress line on stderr, only when stderr is a terminal.
fn progress() -> Option<dynamicfs::fsck::Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let last = std::sync::Mutex::new(std::time::Instant::now() - Duration::from_secs(1));
    Some(Arc::new(move |done: u64, total: u64| {
        let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
        if done == total || l.elapsed() >= Duration::from_millis(200) {
            *l = std::time::Instant::now();
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            eprint!("\rscrub: {done}/{total} fragments ({pct}%)");
            if done == total {
                eprintln!();
            }
        }
    }))
}

/// `dfs scrub --pool P [--repair] [--json]`: through the mount when the
/// pool is mounted (`scrub.run`: one whole pass by the mount's scrub
/// daemon, its report returned), else on the pool opened here.
pub fn scrub(pool: &str, repair: bool, as_json: bool) -> Result<Outcome, String> {
    let r: ScrubReport = match mounted(pool) {
        Some(mut t) => {
            if !as_json && std::io::stderr().is_terminal() {
                eprintln!("scrub: the pool is mounted; the mount scrubs it (no progress line) ...");
            }
            t.call("scrub.run", serde_json::json!({ "repair": repair }))?
        }
        None => {
            let devs = open_devices(pool, repair)?;
            let opts = ScrubOptions { repair, lock_dir: None, progress: if as_json { None } else { progress() } };
            scrub_pool(&devs, &opts).map_err(|e| e.to_string())?
        }
    };
    let text = if as_json { json(&r)? } else { render_scrub(&r) };
    Ok(Outcome { text, damage_left: !r.clean })
}

fn render_scrub(r: &ScrubReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "scrub of pool {}{}: {} of {} members, {} extents, {} of {} fragments good, {} checked, {} data blocks walked",
        r.pool_uuid,
        if r.repair { " (repair)" } else { "" },
        r.members_checked,
        r.members,
        r.extents_checked,
        r.fragments_good,
        r.fragments_checked,
        iec(r.bytes_checked),
        r.data_blocks_walked
    );
    for e in &r.errors {
        let tag = if e.repaired { "FIXED" } else { "ERROR" };
        let on = e.member.map(|m| format!("member {m}: ")).unwrap_or_default();
        let action = e.action.as_ref().map(|a| format!(" [{a}]")).unwrap_or_default();
        let _ = writeln!(out, "{tag:<5}  {} {on}{}{action}", e.kind, e.message);
    }
    if !r.errors.is_empty() {
        let kinds: Vec<String> = r.errors_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let members: Vec<String> = r.errors_by_member.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let _ = writeln!(out, "errors by kind: {}", kinds.join(", "));
        let _ = writeln!(out, "errors by member: {}", members.join(", "));
    }
    for u in &r.unrepairable {
        let files = if u.files.is_empty() { "no file".to_string() } else { u.files.join(", ") };
        let _ = writeln!(out, "UNREPAIRABLE  {} ({files})", u.what);
    }
    let left = r.errors.len() as u64 - r.repaired;
    let _ = writeln!(
        out,
        "{} errors, {} repaired, {} left{}",
        r.errors.len(),
        r.repaired,
        left,
        if r.clean {
            ": clean"
        } else if r.repair {
            ""
        } else {
            " (run with --repair)"
        }
    );
    out
}

/// `dfs scrub-daemon ACTION --pool P [--intensity I] [--json]`: the
/// control request for the mount (an unmounted pool is refused in one
/// line). Every action answers the daemon's status: `--json` prints it as
/// the mount sent it (`ScrubStatus`), otherwise as an aligned table.
pub fn scrub_daemon(action: &str, pool: &str, intensity: Option<&str>, as_json: bool) -> Result<Outcome, String> {
    let method = match action {
        "start" | "status" | "pause" | "resume" | "stop" => format!("scrub.{action}"),
        other => return Err(format!("{other:?} is not a scrub-daemon action (start, status, pause, resume, stop)")),
    };
    let mut params = serde_json::Map::new();
    if let Some(i) = intensity {
        let i: Intensity = i.parse()?;
        params.insert("intensity".into(), serde_json::Value::String(i.name().into()));
    }
    let mut target = crate::cli::admin::Target::open(pool, false)?;
    if !target.is_mounted() {
        return Err(format!(
            "pool {pool} is not mounted: the scrub daemon runs in the mount (use `dfs scrub --pool {pool}` on an unmounted pool)"
        ));
    }
    let answer: serde_json::Value = target.call(&method, serde_json::Value::Object(params))?;
    let text = if as_json { json(&answer)? } else { render_daemon_status(&answer) };
    Ok(Outcome { text, damage_left: false })
}

/// A scrub daemon's status (the JSON of `ScrubStatus`) as a table: one
/// row for the pass, a line for the times, and the recent errors.
fn render_daemon_status(v: &serde_json::Value) -> String {
    let text = |k: &str| match &v[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let num = |k: &str| v[k].as_u64().unwrap_or(0);
    let mut tb = crate::Table::new(
        &[
            "STATE",
            "INTENSITY",
            "LIMIT",
            "FREQUENCY",
            "EXTENTS",
            "BYTES",
            "RATE",
            "ETA",
            "ERRORS",
            "REPAIRED",
            "UNREPAIRABLE",
        ],
        &[false, false, true, false, true, true, true, true, true, true, true],
    );
    tb.row(vec![
        text("state"),
        text("intensity"),
        format!("{}/s", iec(num("rate_limit_bytes_per_sec"))),
        text("frequency"),
        format!("{}/{}", num("extents_done"), num("extents_total")),
        iec(num("bytes_done")),
        format!("{}/s", iec(num("rate_bytes_per_sec"))),
        v["eta_secs"].as_u64().map(|s| format!("{s}s")).unwrap_or_else(|| "-".into()),
        num("errors").to_string(),
        num("repaired").to_string(),
        num("unrepairable").to_string(),
    ]);
    let mut out = tb.render(0);
    let time = |k: &str| format_time_ns(v[k].as_i64().unwrap_or(0).max(0) as u64);
    let _ = writeln!(
        out,
        "pass started: {}   last pass finished: {}   passes completed: {}",
        time("pass_started_ns"),
        time("last_pass_finished_ns"),
        num("passes_completed")
    );
    let recent = v["recent_errors"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !recent.is_empty() {
        let mut errs = crate::Table::new(
            &["EXTENT", "FRAGMENT", "MEMBER", "BLOCK", "KIND", "DETAIL"],
            &[false, true, true, true, false, false],
        );
        for e in recent {
            let f = |k: &str| match &e[k] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            errs.row(vec![f("extent"), f("index"), f("member"), f("block"), f("kind"), f("detail")]);
        }
        out.push_str("recent errors:\n");
        out.push_str(&errs.render(2));
    }
    out
}

/// `dfs scrub-schedule --pool P [--frequency F --intensity I] [--json]`:
/// the `scrub.schedule` method, on the mount when the pool is mounted (its
/// scrub daemon follows the new schedule at once), else on the pool
/// opened here (read-write only to change it).
pub fn scrub_schedule(
    pool: &str,
    frequency: Option<&str>,
    intensity: Option<&str>,
    as_json: bool,
) -> Result<Outcome, String> {
    let mut params = serde_json::Map::new();
    if let Some(f) = frequency {
        scrub_daemon::parse_frequency(f)?;
        params.insert("frequency".into(), f.into());
    }
    if let Some(i) = intensity {
        i.parse::<Intensity>()?;
        params.insert("intensity".into(), i.into());
    }
    let mut target = crate::cli::admin::Target::open(pool, !params.is_empty())?;
    let mounted = target.is_mounted();
    let shown: Result<ScheduleView, String> = target.call("scrub.schedule", serde_json::Value::Object(params));
    let closed = target.close();
    let s = shown?;
    closed?;
    let text = if as_json {
        json(&s)?
    } else {
        let mut t = format!(
            "scrub schedule: {}, intensity {} ({}/s){}\n",
            s.frequency,
            s.intensity,
            iec(s.rate_limit_bytes_per_sec),
            if mounted { " (followed by the mount)" } else { "" }
        );
        let _ = writeln!(
            t,
            "last pass: started {}, finished {}{}",
            format_time_ns(s.pass_started_ns.max(0) as u64),
            format_time_ns(s.last_pass_finished_ns.max(0) as u64),
            if s.pass_running && mounted {
                format!(" (running: {} extents done)", s.extents_done)
            } else if s.pass_running {
                format!(" (interrupted after {} extents; resumes)", s.extents_done)
            } else {
                String::new()
            }
        );
        t
    };
    Ok(Outcome { text, damage_left: false })
}

/// Parse an age: a number with `s`, `m`, `h` or `d` (seconds without).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not an age (expected e.g. 30s, 10m, 2h, 7d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m, h or d)")),
    };
    n.checked_mul(mult).map(Duration::from_secs).ok_or_else(|| format!("{s:?} is too large"))
}

/// The control socket of the mount when `pool` is mounted. A pool that
/// cannot be opened here is left to the unmounted path, which says why.
fn mounted(pool: &str) -> Option<crate::cli::admin::Target> {
    crate::cli::admin::Target::open(pool, false).ok().filter(|t| t.is_mounted())
}

fn render_orphans(r: &OrphanReport) -> String {
    let mut out = String::new();
    for o in &r.orphans {
        let _ = writeln!(
            out,
            "{:<16} member {} ({}) block {} ({} blocks, {}), extent {} fragment {}, age {}s: {}",
            format!("{:?}", o.kind).to_lowercase(),
            o.member,
            o.device,
            o.block,
            o.blocks,
            iec(o.bytes),
            o.extent,
            o.fragment_index,
            o.age_secs,
            o.why
        );
    }
    let _ = writeln!(out, "{} unreferenced fragments in {} data blocks walked", r.orphans.len(), r.blocks_examined);
    if r.in_flight > 0 {
        let _ = writeln!(out, "{} fragments held by writes not yet committed (in flight; kept)", r.in_flight);
    }
    if !r.trustworthy {
        let _ = writeln!(out, "warning: the metadata did not load cleanly; run fsck.dfs: {}", r.problems.join("; "));
    }
    out
}

/// `detect-orphans` through the mount or on the unmounted pool.
fn detect(pool: &str) -> Result<OrphanReport, String> {
    match mounted(pool) {
        Some(mut t) => t.call("orphans.detect", serde_json::json!({})),
        None => orphans::detect(&open_devices(pool, false)?).map_err(|e| e.to_string()),
    }
}

/// `dfs detect-orphans --pool P [--json]`.
pub fn detect_orphans(pool: &str, as_json: bool) -> Result<Outcome, String> {
    let r = detect(pool)?;
    let text = if as_json { json(&r)? } else { render_orphans(&r) };
    Ok(Outcome { text, damage_left: false })
}

/// `dfs orphan-stats --pool P [--json]`.
pub fn orphan_stats(pool: &str, as_json: bool) -> Result<Outcome, String> {
    let s = orphans::stats(&detect(pool)?);
    let text = if as_json {
        json(&s)?
    } else {
        let mut t = format!("{} unreferenced fragments, {}\n", s.fragments, iec(s.bytes));
        for (k, (n, b)) in &s.by_kind {
            let _ = writeln!(t, "  {k}: {n} ({})", iec(*b));
        }
        let by: BTreeMap<_, _> = s.by_member.iter().collect();
        for (m, (n, b)) in by {
            let _ = writeln!(t, "  member {m}: {n} ({})", iec(*b));
        }
        if s.fragments > 0 {
            let _ = writeln!(t, "  ages: {}s to {}s", s.newest_secs, s.oldest_secs);
        }
        t
    };
    Ok(Outcome { text, damage_left: false })
}

/// `dfs cleanup-orphans --pool P [--min-age D] [--dry-run] [--json]`.
pub fn cleanup_orphans(pool: &str, min_age: Option<&str>, dry_run: bool, as_json: bool) -> Result<Outcome, String> {
    let min_age = min_age.map(parse_age).transpose()?.unwrap_or_default();
    let r: CleanupReport = match mounted(pool) {
        Some(mut t) => {
            t.call("orphans.cleanup", serde_json::json!({"min_age_secs": min_age.as_secs(), "dry_run": dry_run}))?
        }
        None => {
            let devs = open_devices(pool, !dry_run)?;
            orphans::cleanup(&devs, &CleanupOptions { min_age, dry_run, lock_dir: None }).map_err(|e| e.to_string())?
        }
    };
    let text = if as_json {
        json(&r)?
    } else {
        let mut t = String::new();
        let verb = if dry_run { "would erase" } else { "erased" };
        for o in &r.erased {
            let _ = writeln!(t, "{verb} member {} block {} (extent {}): {}", o.member, o.block, o.extent, o.why);
        }
        for (o, e) in &r.failed {
            let _ = writeln!(t, "FAILED member {} block {}: {e}", o.member, o.block);
        }
        let _ = writeln!(
            t,
            "{verb} {} unreferenced fragments ({}), kept {} younger than {}s",
            r.erased.len(),
            iec(r.erased_bytes),
            r.kept_young.len(),
            r.min_age_secs
        );
        if r.in_flight > 0 || r.raced > 0 {
            let _ = writeln!(
                t,
                "kept {} held by writes not yet committed, skipped {} reallocated since the walk",
                r.in_flight, r.raced
            );
        }
        t
    };
    Ok(Outcome { text, damage_left: !r.failed.is_empty() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_age("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_age("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_age("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse_age("").is_err());
        assert!(parse_age("5y").is_err());
        assert!(parse_age("-1").is_err());
        assert!(parse_age("99999999999999999999d").is_err());
    }

    #[test]
    fn daemon_requests_are_checked_before_any_pool_is_opened() {
        let e = scrub_daemon("explode", "/nonexistent/x", None, false).err().unwrap();
        assert!(e.contains("not a scrub-daemon action") && !e.contains('\n'), "{e}");
        assert!(scrub_daemon("start", "/nonexistent/x", Some("max"), false)
            .err()
            .unwrap()
            .contains("not an intensity"));
        // A valid request on something that is no pool: one line naming it.
        let e = scrub_daemon("status", "/nonexistent/x", None, false).err().unwrap();
        assert!(e.contains("/nonexistent/x") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn daemon_status_renders_as_an_aligned_table() {
        let v = serde_json::json!({
            "state": "paused", "intensity": "medium", "rate_limit_bytes_per_sec": 64u64 << 20,
            "frequency": "weekly", "extents_done": 12, "extents_total": 40, "bytes_done": 18u64 << 20,
            "errors": 1, "repaired": 1, "unrepairable": 0, "rate_bytes_per_sec": 0, "eta_secs": null,
            "pass_started_ns": 1_700_000_000_000_000_000i64, "last_pass_finished_ns": 0, "passes_completed": 2,
            "recent_errors": [{"extent": "0b6f3c2e-5d8a-4c1e-9f7b-2a1d3e4f5a6b", "index": 1, "member": 2,
                               "block": 77, "kind": "payload", "detail": "payload BLAKE3 mismatch"}],
        });
        let t = render_daemon_status(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("STATE   INTENSITY"), "{t}");
        assert!(lines[1].starts_with("paused  medium"), "{t}");
        assert_eq!(lines[0].len(), lines[1].len(), "header and row align: {t}");
        for cell in ["64.00 MiB/s", "weekly", "12/40", "18.00 MiB", "0 B/s"] {
            assert!(lines[1].contains(cell), "{cell:?} missing: {t}");
        }
        assert!(lines[2].contains("2023-11-14T22:13:20Z") && lines[2].contains("passes completed: 2"), "{t}");
        assert_eq!(lines[3], "recent errors:");
        assert!(lines[5].contains("payload  payload BLAKE3 mismatch") && lines[5].contains(" 77 "), "{t}");
    }

    proptest! {
        #[test]
        fn parse_age_never_panics(s in ".{0,24}") {
            let _ = parse_age(&s);
        }

        #[test]
        fn parse_age_round_trips(n in 0u64..1_000_000, unit in prop::sample::select(vec!["", "s", "m", "h", "d"])) {
            let mult = match unit { "m" => 60, "h" => 3600, "d" => 86400, _ => 1 };
            prop_assert_eq!(parse_age(&format!("{n}{unit}")).unwrap(), Duration::from_secs(n * mult));
        }

        #[test]
        fn intensity_and_frequency_parsers_never_panic(s in ".{0,16}") {
            let _ = s.parse::<Intensity>();
            let _ = scrub_daemon::parse_frequency(&s);
        }
    }
}
