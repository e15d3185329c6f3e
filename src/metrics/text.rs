//! A strict parser of the Prometheus text exposition format (version
//! 0.0.4): what `dfs metrics` reads from a mount's `/metrics` endpoint and
//! what the tests check the endpoint's output with.
//!
//! It parses only; garbage is a [`ParseError`] naming the line, never a
//! panic. Checked: metric and label names, quoted and escaped label values,
//! sample values (floats, `NaN`, `+Inf`, `-Inf`), optional timestamps,
//! `# TYPE` lines (known types, at most one per family, before its samples).

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name → type (`counter`, `gauge`, `histogram`, ...).
    pub types: BTreeMap<String, String>,
    /// Family name → help text.
    pub help: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include all of `want`;
    /// `None` when there is none.
    pub fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
    }

    /// The sum of every sample `name` whose labels include all of `want`.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .map(|s| s.value)
            .sum()
    }
}

/// What is wrong with the input, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct ParseError {
    pub line: usize,
    pub what: String,
}

fn is_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    let first_ok = |c: char| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':');
    matches!(chars.next(), Some(c) if first_ok(c))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) => s.parse().ok(),
        _ => None,
    }
}

/// The family a sample belongs to (`x_bucket` → `x` for histograms, ...).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram" || t == "summary") {
                return base;
            }
        }
    }
    name
}

/// Parse `{a="x",b="y"}` at the start of `s`; returns labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("expected '{'")?;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = rest[..eq].trim();
        if !is_name(name, false) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..].trim_start().strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    _ => return Err("bad escape in label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name:?} repeated"));
        }
        rest = rest[end + 1..].trim_start();
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

/// Parse a whole exposition.
pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut out = Exposition::default();
    let mut seen_samples: std::collections::BTreeSet<String> = Default::default();
    for (i, raw) in text.lines().enumerate() {
        let err = |what: String| ParseError { line: i + 1, what };
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let mut parts = c.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    let name = parts.next().ok_or_else(|| err("TYPE without a name".into()))?;
                    let t = parts.next().ok_or_else(|| err("TYPE without a type".into()))?.trim();
                    if !is_name(name, true) {
                        return Err(err(format!("bad metric name {name:?}")));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(err(format!("unknown type {t:?}")));
                    }
                    if seen_samples.contains(name) {
                        return Err(err(format!("TYPE of {name} after its samples")));
                    }
                    if out.types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(err(format!("second TYPE line for {name}")));
                    }
                }
                Some("HELP") => {
                    let name = parts.next().ok_or_else(|| err("HELP without a name".into()))?;
                    if !is_name(name, true) {
                        return Err(err(format!("bad metric name {name:?}")));
                    }
                    out.help.insert(name.to_string(), parts.next().unwrap_or("").to_string());
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(|c: char| c == '{' || c.is_whitespace()).unwrap_or(line.len());
        let name = &line[..name_end];
        if !is_name(name, true) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if rest.starts_with('{') {
            let (l, r) = parse_labels(rest).map_err(err)?;
            labels = l;
            rest = r;
        }
        let mut fields = rest.split_whitespace();
        let v = fields.next().ok_or_else(|| err(format!("{name}: no value")))?;
        let value = parse_value(v).ok_or_else(|| err(format!("{name}: bad value {v:?}")))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err(format!("{name}: bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(err(format!("{name}: trailing fields")));
        }
        seen_samples.insert(family_of(name, &out.types).to_string());
        out.samples.push(Sample { name: name.to_string(), labels, value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_usual_shapes() {
        let t = "# HELP a_total A thing\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\n\"} 3\n\
                 # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.7\nh_count 2\n\
                 g NaN 1700000000000\n";
        let e = parse(t).unwrap();
        assert_eq!(e.value("a_total", &[("x", "1")]), Some(3.0));
        assert_eq!(e.samples[0].labels["y"], "q\"\n");
        assert_eq!(e.value("h_count", &[]), Some(2.0));
        assert_eq!(e.types["h"], "histogram");
        assert!(e.value("g", &[]).unwrap().is_nan());
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        for (t, line) in [
            ("ok 1\n9bad 1\n", 2),
            ("x{a=1} 1\n", 1),
            ("x{a=\"1\"\n", 1),
            ("x one\n", 1),
            ("# TYPE x nonsense\n", 1),
            ("x 1\n# TYPE x gauge\n", 2),
            ("x{a=\"1\",a=\"2\"} 1\n", 1),
            ("x 1 2 3\n", 1),
        ] {
            assert_eq!(parse(t).unwrap_err().line, line, "{t:?}");
        }
    }

    /// A sample as the tests build it: name, labels, value.
    type Row = (String, Vec<(String, String)>, f64);

    fn render(samples: &[Row]) -> String {
        let mut s = String::new();
        for (n, l, v) in samples {
            let labels: Vec<String> = l
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")))
                .collect();
            s.push_str(&format!("{n}{{{}}} {v}\n", labels.join(",")));
        }
        s
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_near_misses(s in "[a-z_{}=\",# \\\\n0-9.+-]{0,60}") {
            let _ = parse(&s);
        }

        #[test]
        fn round_trips(samples in proptest::collection::vec(
            ("[a-z_][a-z0-9_]{0,10}",
             proptest::collection::btree_map("[a-z_][a-z0-9_]{0,6}", "\\PC{0,8}", 0..3),
             -1e12f64..1e12), 0..8)) {
            let samples: Vec<Row> =
                samples.into_iter().map(|(n, l, v)| (n, l.into_iter().collect(), v)).collect();
            let e = parse(&render(&samples)).unwrap();
            prop_assert_eq!(e.samples.len(), samples.len());
            for (s, (n, l, v)) in e.samples.iter().zip(&samples) {
                prop_assert_eq!(&s.name, n);
                prop_assert_eq!(s.labels.iter().map(|(a, b)| (a.clone(), b.clone())).collect::<Vec<_>>(), l.clone());
                prop_assert_eq!(s.value, *v);
            }
        }
    }
}
