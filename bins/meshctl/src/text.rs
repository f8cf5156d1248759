//! The Prometheus text exposition format, version 0.0.4: one sample a line,
//! `name{label="value",...} value [timestamp]`.
//!
//! Comments (`# HELP`, `# TYPE`, `# EOF`), blank lines and lines that do not parse are
//! skipped, so an exposition with things this parser does not know still yields every sample
//! it does know.

use std::collections::BTreeMap;

/// The labels of a series, by name.
pub(crate) type Labels = BTreeMap<String, String>;

/// One sample of one series.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Labels,
    pub(crate) value: f64,
}

/// Every sample in `text` that parses.
pub(crate) fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// One line: a sample, or `None` for a comment, a blank line or anything malformed.
pub(crate) fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut cur = Cursor(line);
    let name = cur.take_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    cur.skip_ws();
    let mut labels = Labels::new();
    if cur.eat('{') {
        loop {
            cur.skip_ws();
            if cur.eat('}') {
                break;
            }
            let label = cur.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
            if label.is_empty() {
                return None;
            }
            cur.skip_ws();
            if !cur.eat('=') {
                return None;
            }
            cur.skip_ws();
            let value = cur.quoted()?;
            labels.insert(label.to_owned(), value);
            cur.skip_ws();
            if cur.eat(',') {
                continue;
            }
            if cur.eat('}') {
                break;
            }
            return None;
        }
    }
    let mut fields = cur.0.split_whitespace();
    let value = parse_value(fields.next()?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A sample value: a float, `+Inf`, `-Inf` or `NaN`.
pub(crate) fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.')) => {
            s.parse().ok()
        }
        _ => None,
    }
}

/// The rest of a line.
struct Cursor<'a>(&'a str);

impl<'a> Cursor<'a> {
    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let end = self.0.find(|c: char| !f(c)).unwrap_or(self.0.len());
        let (taken, rest) = self.0.split_at(end);
        self.0 = rest;
        taken
    }

    fn skip_ws(&mut self) {
        self.0 = self.0.trim_start_matches([' ', '\t']);
    }

    fn eat(&mut self, c: char) -> bool {
        match self.0.strip_prefix(c) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }

    /// A double-quoted label value with `\\`, `\"` and `\n` escapes.
    fn quoted(&mut self) -> Option<String> {
        let mut chars = self.0.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.0 = &self.0[1 + i + 1..];
                    return Some(value);
                }
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other @ ('\\' | '"') => value.push(other),
                    other => {
                        value.push('\\');
                        value.push(other);
                    }
                },
                c => value.push(c),
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails loudly")]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn plain_and_labelled_samples() {
        let text = "# HELP request Requests sent\n\
                    # TYPE request counter\n\
                    request_total{direction=\"outbound\",dst_workload=\"api\"} 42\n\
                    process_open_fds 17\n\
                    \n\
                    response_latency_seconds_bucket{le=\"+Inf\"} 3 1700000000000\n\
                    # EOF\n";
        let samples = parse(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "request_total");
        assert_eq!(
            samples[0].labels,
            labels(&[("direction", "outbound"), ("dst_workload", "api")])
        );
        assert_eq!(samples[0].value, 42.0);
        assert_eq!(samples[1].name, "process_open_fds");
        assert!(samples[1].labels.is_empty());
        assert_eq!(samples[1].value, 17.0);
        assert_eq!(samples[2].labels, labels(&[("le", "+Inf")]));
    }

    #[test]
    fn escapes_in_label_values() {
        let s =
            parse_line(r#"m{a="say \"hi\"",b="back\\slash",c="two\nlines",d="} ,="} 1"#).unwrap();
        assert_eq!(
            s.labels,
            labels(&[
                ("a", "say \"hi\""),
                ("b", "back\\slash"),
                ("c", "two\nlines"),
                ("d", "} ,="),
            ])
        );
        assert_eq!(s.value, 1.0);
    }

    #[test]
    fn special_values_spacing_and_trailing_comma() {
        assert_eq!(parse_line("m +Inf").unwrap().value, f64::INFINITY);
        assert_eq!(parse_line("m -Inf").unwrap().value, f64::NEG_INFINITY);
        assert!(parse_line("m NaN").unwrap().value.is_nan());
        assert_eq!(parse_line("m 1.5e-3").unwrap().value, 0.0015);
        let s = parse_line("m { a = \"1\" , b=\"2\", }\t7").unwrap();
        assert_eq!(s.labels, labels(&[("a", "1"), ("b", "2")]));
        assert_eq!(s.value, 7.0);
        assert!(parse_line("m{} 3").unwrap().labels.is_empty());
        // A UTF-8 label value.
        let s = parse_line("m{a=\"naïve ☃\"} 1").unwrap();
        assert_eq!(s.labels["a"], "naïve ☃");
    }

    #[test]
    fn malformed_lines_are_skipped() {
        for line in [
            "m",
            "m{a=\"1\"}",
            "m{a=1} 2",
            "m{a=\"unterminated} 2",
            "m{=\"x\"} 2",
            "m{a=\"1\" b=\"2\"} 3",
            "m 1 2 3",
            "m one",
            "m 1 notatimestamp",
            "9m 1",
            "{\"utf8.name\"} 1",
            "m-x 1",
        ] {
            assert_eq!(parse_line(line), None, "{line}");
        }
        let samples = parse("garbage here\nok 1\n}{\nalso_ok{x=\"y\"} 2\n");
        let names: Vec<_> = samples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ok", "also_ok"]);
    }
}
