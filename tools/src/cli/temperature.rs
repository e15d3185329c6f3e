//! `dfs list-hot | list-warm | list-cold` and `dfs extent-stats`: the
//! temperature of extents, with the files they belong to; `dfs
//! temperature-config`, the pool's temperature settings (shown, and changed
//! with `--set KEY=VALUE` / `--unset KEY`); and `dfs advance-clock`, which
//! moves the temperature clock of a mount made with `-o test_clock` (demos
//! and tests).
//!
//! On a mounted pool these ask the mount (control socket methods
//! `temperature.list`, `temperature.extent_stats`, `temperature.config`,
//! `temperature.advance`), which answers with its live statistics, its own
//! clock, and uses changed settings at once. On an unmounted pool they open
//! it (read-only, or under the pool lock to change settings) and run the
//! same engine calls; statistics are then as last written to the metadata
//! (a mount writes them every 30 s and at unmount). `--json` prints the
//! engine's `ExtentStats` / `SettingRow` records. This module only formats
//! and passes requests on; the engine validates and changes the pool.

use dynamicfs::temperature::{ExtentStats, SettingRow, Temp};
use serde_json::json;

use super::admin::Target;
use crate::{format_time_ns, iec, Table};

fn json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map(|s| s + "\n").map_err(|e| e.to_string())
}

fn age(s: Option<u32>) -> String {
    match s {
        None => "never".into(),
        Some(a) if a < 120 => format!("{a}s ago"),
        Some(a) if a < 7200 => format!("{}m ago", a / 60),
        Some(a) if a < 172_800 => format!("{}h ago", a / 3600),
        Some(a) => format!("{}d ago", a / 86_400),
    }
}

/// `list-hot`, `list-warm`, `list-cold`.
pub fn list(t: &mut Target, class: Temp, as_json: bool) -> Result<String, String> {
    let rows: Vec<ExtentStats> = match t {
        Target::Local { pool, .. } => pool.list_temperature(Some(class)),
        Target::Mounted { .. } => t.call("temperature.list", json!({ "class": class.name() }))?,
    };
    if as_json {
        return json(&rows);
    }
    if rows.is_empty() {
        return Ok(format!("No {class} extents.\n"));
    }
    let mut t = Table::new(
        &["EXTENT", "PATH", "OFFSET", "OPS/DAY", "LAST ACCESS", "THRESHOLD", "HMM", "POLICY", "TARGET"],
        &[false, false, true, true, false, false, false, false, false],
    );
    for s in &rows {
        t.row(vec![
            s.id.clone(),
            s.path.clone().unwrap_or_else(|| format!("<inode {}>", s.ino)),
            iec(s.offset),
            format!("{:.1}", s.reads_per_day + s.writes_per_day),
            age(s.last_access_age_s),
            s.threshold_class.to_string(),
            format!("{} {:.2}", s.hmm_state, s.hmm_probability),
            s.current_policy.clone(),
            if s.pinned { "pinned".into() } else { s.target_policy.clone().unwrap_or_else(|| "-".into()) },
        ]);
    }
    Ok(t.render(0))
}

/// `extent-stats --extent UUID`.
pub fn extent_stats(t: &mut Target, extent: uuid::Uuid, as_json: bool) -> Result<String, String> {
    let s: ExtentStats = match t {
        Target::Local { pool, .. } => {
            pool.extent_stats(extent.as_u128()).ok_or_else(|| format!("no extent {extent} in the pool"))?
        }
        Target::Mounted { .. } => t.call("temperature.extent_stats", json!({ "extent": extent.to_string() }))?,
    };
    if as_json {
        return json(&s);
    }
    let last = match s.last_access_s {
        Some(t) => format!("{} ({})", format_time_ns(t as u64 * 1_000_000_000), age(s.last_access_age_s)),
        None => "never (since tracking began)".into(),
    };
    Ok(format!(
        "extent:          {}\n\
         file:            {} at {}\n\
         length:          {}\n\
         reads:           {:.1} (decayed), {:.1}/day\n\
         writes:          {:.1} (decayed), {:.1}/day\n\
         last access:     {last}\n\
         threshold class: {}\n\
         HMM state:       {} (p = {:.3}, over {} observations)\n\
         class:           {}\n\
         current policy:  {}\n\
         target policy:   {}\n",
        s.id,
        s.path.clone().unwrap_or_else(|| format!("<inode {}>", s.ino)),
        iec(s.offset),
        iec(s.len as u64),
        s.reads,
        s.reads_per_day,
        s.writes,
        s.writes_per_day,
        s.threshold_class,
        s.hmm_state,
        s.hmm_probability,
        s.observations,
        s.class,
        s.current_policy,
        if s.pinned {
            "none (the file's policy is pinned)".to_string()
        } else {
            s.target_policy.clone().unwrap_or_else(|| "none (stays as it is)".into())
        },
    ))
}

/// `clap` parser of `--set KEY=VALUE`: the key and its canonical value,
/// or why not (a usage error, before the pool is opened).
pub fn parse_set(s: &str) -> Result<(String, String), String> {
    dynamicfs::temperature::settings::parse_assignment(s).map_err(|e| e.to_string())
}

/// `clap` parser of `--unset KEY`.
pub fn parse_unset(s: &str) -> Result<String, String> {
    dynamicfs::temperature::settings::known_key(s).map(str::to_string).map_err(|e| e.to_string())
}

/// `temperature-config [--set KEY=VALUE ...] [--unset KEY ...]`: change the
/// pool's temperature settings (all or nothing), then show every setting.
pub fn config(t: &mut Target, set: &[(String, String)], unset: &[String], as_json: bool) -> Result<String, String> {
    let set: serde_json::Map<String, serde_json::Value> =
        set.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let params = json!({ "set": set, "unset": unset });
    let rows: Vec<SettingRow> = match t {
        Target::Local { pool, .. } => {
            let v = dynamicfs::temperature::handle_control(pool, "temperature.config", params)
                .map_err(|e| e.to_string())?;
            serde_json::from_value(v).map_err(|e| e.to_string())?
        }
        Target::Mounted { .. } => t.call("temperature.config", params)?,
    };
    if as_json {
        return json(&rows);
    }
    let mut table = Table::new(&["KEY", "VALUE", "DEFAULT", "SOURCE"], &[false, false, false, false]);
    for r in &rows {
        table.row(vec![r.key.clone(), r.value.clone(), r.default.clone(), r.source.clone()]);
    }
    Ok(table.render(0))
}

/// `advance-clock --seconds N`: move a mount's test clock forward.
pub fn advance_clock(t: &mut Target, seconds: u32, as_json: bool) -> Result<String, String> {
    if !t.is_mounted() {
        return Err("advance-clock needs a pool mounted with -o test_clock (this one is not mounted)".into());
    }
    let v: serde_json::Value = t.call("temperature.advance", json!({ "seconds": seconds }))?;
    if as_json {
        return json(&v);
    }
    let offset = v.get("offset_s").and_then(|o| o.as_u64()).unwrap_or(0);
    let now = v.get("now_s").and_then(|o| o.as_u64()).unwrap_or(0);
    Ok(format!(
        "temperature clock advanced {seconds} s: now {} ({} ahead of the system clock)\n",
        format_time_ns(now * 1_000_000_000),
        age_span(offset)
    ))
}

fn age_span(s: u64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}
