//! Reading what a proxy exposes: the Prometheus text exposition format, version 0.0.4, and
//! quantiles from a histogram's buckets.
//!
//! [`parse`] turns an exposition into [`Sample`]s, one a line:
//! `name{label="value",...} value [timestamp]`. Comments (`# HELP`, `# TYPE`, `# EOF`), blank
//! lines and lines that do not parse are skipped, so an exposition with things this parser
//! does not know still yields every sample it does know.
//!
//! [`histogram_quantile`] computes a quantile from cumulative buckets as Prometheus's
//! `histogram_quantile` does for classic histograms: find the bucket that holds the rank and
//! interpolate linearly inside it.
//!
//! ```
//! use mesh_metrics::exposition::{histogram_quantile, parse, parse_value};
//!
//! let text = "# TYPE latency histogram\n\
//!             latency_bucket{le=\"0.1\"} 10\n\
//!             latency_bucket{le=\"0.2\"} 20\n\
//!             latency_bucket{le=\"+Inf\"} 20\n";
//! let buckets: Vec<(f64, f64)> = parse(text)
//!     .iter()
//!     .filter_map(|s| Some((parse_value(s.labels.get("le")?)?, s.value)))
//!     .collect();
//! assert!((histogram_quantile(0.75, &buckets) - 0.15).abs() < 1e-9);
//! ```

use std::collections::BTreeMap;

/// The labels of a series, by name.
pub type Labels = BTreeMap<String, String>;

/// One sample of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The metric's name, with its suffix (`response_total`, `..._bucket`).
    pub name: String,
    /// The series' labels.
    pub labels: Labels,
    /// The value: a float, possibly infinite or NaN.
    pub value: f64,
}

/// Every sample in `text` that parses.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

/// One line: a sample, or `None` for a comment, a blank line or anything malformed.
pub fn parse_line(line: &str) -> Option<Sample> {
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
pub fn parse_value(s: &str) -> Option<f64> {
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

/// The `q` quantile of a histogram given as cumulative buckets `(upper bound, count)`, in any
/// order. Counts may be rates or deltas.
///
/// As in Prometheus: NaN without a `+Inf` bucket, with fewer than two buckets or with no
/// observations; `-Inf` for `q < 0` and `+Inf` for `q > 1`; the lowest bucket starts at 0
/// (unless its bound is negative or zero, which is then the answer); a rank in the `+Inf`
/// bucket answers the highest finite bound. Buckets with the same bound are added up, and
/// counts that go down (say, from buckets read at slightly different moments) are raised to
/// the largest count below them.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut sorted: Vec<(f64, f64)> = buckets
        .iter()
        .copied()
        .filter(|(bound, _)| !bound.is_nan())
        .collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut coalesced: Vec<(f64, f64)> = Vec::with_capacity(sorted.len());
    for (bound, count) in sorted {
        match coalesced.last_mut() {
            Some(last) if last.0 == bound => last.1 += count,
            _ => coalesced.push((bound, count)),
        }
    }
    let mut max = f64::NEG_INFINITY;
    for bucket in &mut coalesced {
        max = max.max(bucket.1);
        bucket.1 = max;
    }
    let buckets = coalesced;
    match buckets.last() {
        Some(&(bound, _)) if bound == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 || observations.is_nan() {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let finite = &buckets[..buckets.len() - 1];
    let b = finite.partition_point(|&(_, count)| count < rank);
    if b == finite.len() {
        return finite[finite.len() - 1].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (end, mut count) = buckets[b];
    let mut start = 0.0;
    if b > 0 {
        start = buckets[b - 1].0;
        count -= buckets[b - 1].1;
        rank -= buckets[b - 1].1;
    }
    start + (end - start) * (rank / count)
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

    const INF: f64 = f64::INFINITY;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn interpolates_inside_the_bucket() {
        // 10 observations up to 0.1, 10 more up to 0.2, none above.
        let b = [(0.1, 10.0), (0.2, 20.0), (INF, 20.0)];
        assert!(close(histogram_quantile(0.5, &b), 0.1));
        assert!(close(histogram_quantile(0.25, &b), 0.05));
        assert!(close(histogram_quantile(0.75, &b), 0.15));
        assert!(close(histogram_quantile(0.95, &b), 0.19));
        assert!(close(histogram_quantile(1.0, &b), 0.2));
        assert!(close(histogram_quantile(0.0, &b), 0.0));
    }

    #[test]
    fn matches_prometheus_on_a_latency_histogram() {
        // 100 observations in the 1 ms bucket, 80 in (1, 2] ms, 20 in (2, 5] ms.
        let b = [
            (0.001, 100.0),
            (0.002, 180.0),
            (0.005, 200.0),
            (0.01, 200.0),
            (INF, 200.0),
        ];
        // rank 100: end of the first bucket.
        assert!(close(histogram_quantile(0.5, &b), 0.001));
        // rank 190: half way through (2, 5] ms.
        assert!(close(histogram_quantile(0.95, &b), 0.0035));
        // rank 198: 18/20 of the way through (2, 5] ms.
        assert!(close(histogram_quantile(0.99, &b), 0.0047));
    }

    #[test]
    fn rank_in_the_inf_bucket_answers_the_highest_finite_bound() {
        let b = [(0.1, 1.0), (0.5, 2.0), (INF, 10.0)];
        assert_eq!(histogram_quantile(0.9, &b), 0.5);
    }

    #[test]
    fn order_duplicates_and_non_monotonic_counts() {
        let b = [(INF, 20.0), (0.2, 20.0), (0.1, 4.0), (0.1, 6.0)];
        assert!(close(histogram_quantile(0.75, &b), 0.15));
        // 0.2 reads lower than 0.1 (a scrape race): treated as 10, so rank 15 is half way
        // through (0.2, 0.3].
        let b = [(0.1, 10.0), (0.2, 9.0), (0.3, 20.0), (INF, 20.0)];
        assert!(close(histogram_quantile(0.75, &b), 0.25));
    }

    #[test]
    fn degenerate_inputs() {
        assert!(histogram_quantile(0.5, &[]).is_nan());
        assert!(histogram_quantile(0.5, &[(INF, 5.0)]).is_nan());
        assert!(histogram_quantile(0.5, &[(0.1, 5.0), (0.2, 5.0)]).is_nan());
        assert!(histogram_quantile(0.5, &[(0.1, 0.0), (INF, 0.0)]).is_nan());
        assert!(histogram_quantile(f64::NAN, &[(0.1, 1.0), (INF, 1.0)]).is_nan());
        assert_eq!(
            histogram_quantile(-0.1, &[(0.1, 1.0), (INF, 1.0)]),
            f64::NEG_INFINITY
        );
        assert_eq!(histogram_quantile(1.1, &[(0.1, 1.0), (INF, 1.0)]), INF);
        // A first bucket with a negative bound is its own answer.
        assert_eq!(histogram_quantile(0.5, &[(-1.0, 5.0), (INF, 5.0)]), -1.0);
    }
}
