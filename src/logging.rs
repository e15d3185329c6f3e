//! Log setup for every binary: a `tracing` subscriber with an `EnvFilter`
//! (RUST_LOG-style directives from an environment variable, `info` by
//! default) writing either human lines (on a terminal) or one JSON object
//! per line (for files), with the current span and its parents in each
//! line, so the request id of a FUSE, CLI or control request appears on
//! every line logged while serving it, engine lines included (the spans'
//! target, [`REQUEST_TARGET`], is always enabled by [`filter`]; IO worker
//! jobs run in the span of the request that queued them).
//!
//! It owns the subscriber's configuration only: it never decides what is
//! logged, and installing twice keeps the first subscriber (a test harness
//! may have set one).

use std::io::IsTerminal;
use std::path::Path;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// The environment variable that selects JSON (`json`) or human (`human`) lines.
pub const FORMAT_ENV: &str = "DFS_LOG_FORMAT";

/// How lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human lines.
    Human,
    /// One JSON object per line.
    Json,
    /// Human on a terminal, JSON otherwise.
    Auto,
}

/// A `--log-format` value that is none of `human`, `json`, `auto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log format {0:?}: expected human, json or auto")]
pub struct BadLogFormat(pub String);

impl FromStr for LogFormat {
    type Err = BadLogFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            "auto" | "" => Ok(LogFormat::Auto),
            _ => Err(BadLogFormat(s.to_string())),
        }
    }
}

impl LogFormat {
    /// The explicit choice if any, else [`FORMAT_ENV`], else `Auto`.
    pub fn choose(explicit: Option<LogFormat>) -> Result<LogFormat, BadLogFormat> {
        match explicit {
            Some(f) => Ok(f),
            None => match std::env::var(FORMAT_ENV) {
                Ok(v) => v.parse(),
                Err(_) => Ok(LogFormat::Auto),
            },
        }
    }
}

/// Where lines go.
#[derive(Debug)]
pub enum LogTarget<'a> {
    Stderr,
    /// Appended to this file (created if missing).
    File(&'a Path),
}

/// Errors setting up logs.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log file {path}: {source}")]
    File { path: String, source: std::io::Error },
}

/// The target of every request-id span (a FUSE request, a control-socket
/// request, a `dfs` command). [`filter`] enables it at info whatever the
/// directives say (unless they name it), so the lines a request causes —
/// warnings of the engine at a `warn` filter too — carry its id.
pub const REQUEST_TARGET: &str = "dynamicfs::request";

/// The filter from the first of `env_vars` that is set to valid directives
/// (RUST_LOG syntax), else `default`; plus `dynamicfs::request=info` (the
/// request-id spans, [`REQUEST_TARGET`]) unless the directives name it.
pub fn filter(env_vars: &[&str], default: &str) -> EnvFilter {
    let text = env_vars
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|t| EnvFilter::try_new(t).is_ok()))
        .unwrap_or_else(|| default.to_string());
    let f = EnvFilter::new(&text);
    if text.contains(REQUEST_TARGET) {
        return f;
    }
    match format!("{REQUEST_TARGET}=info").parse() {
        Ok(d) => f.add_directive(d),
        Err(_) => f,
    }
}

/// Install the subscriber. `Auto` means human on a terminal (stderr for
/// `Stderr`; a file is never a terminal) and JSON otherwise.
pub fn init(format: LogFormat, target: LogTarget<'_>, filter: EnvFilter) -> Result<(), LogError> {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !matches!(target, LogTarget::Stderr) || !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let res = match target {
        LogTarget::Stderr if json => {
            builder.json().with_current_span(true).with_span_list(true).with_writer(std::io::stderr).try_init()
        }
        LogTarget::Stderr => builder.with_writer(std::io::stderr).try_init(),
        LogTarget::File(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| LogError::File { path: p.display().to_string(), source })?;
            let w = std::sync::Mutex::new(f);
            if json {
                builder.json().with_current_span(true).with_span_list(true).with_writer(w).try_init()
            } else {
                builder.with_ansi(false).with_writer(w).try_init()
            }
        }
    };
    // Already set (a test harness): keep that one.
    let _ = res;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_spans_pass_any_filter_that_does_not_name_them() {
        use tracing::level_filters::LevelFilter;
        let max = |f: &str| filter(&["DFS_TEST_NO_SUCH_VAR"], f).max_level_hint();
        // "warn" alone would hide the info-level request spans.
        assert_eq!(max("warn"), Some(LevelFilter::INFO));
        assert_eq!(max("dynamicfs::request=off"), Some(LevelFilter::OFF));
        assert_eq!(max("dynamicfs=debug"), Some(LevelFilter::DEBUG));
    }

    #[test]
    fn formats_parse() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("Human".parse(), Ok(LogFormat::Human));
        assert_eq!("auto".parse(), Ok(LogFormat::Auto));
        assert!("xml".parse::<LogFormat>().is_err());
    }

    proptest! {
        #[test]
        fn garbage_is_an_error_not_a_panic(s in "\\PC*") {
            let r = s.parse::<LogFormat>();
            let known = ["human", "text", "json", "auto", ""].contains(&s.trim().to_ascii_lowercase().as_str());
            prop_assert_eq!(r.is_ok(), known);
        }
    }
}
