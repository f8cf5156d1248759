//! Per-replica request statistics for the demo's load generator: request rate,
//! success rate and latency percentiles, rendered as a table.
//!
//! Each outcome is attributed to the replica that produced it: a reply names it
//! (`HelloReply.replica`); a failure names it in its status message ("replica
//! greeter-1 is failing"); anything else (for example an error from the proxy
//! itself) goes to the [`UNATTRIBUTED`] row.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tonic::{Code, Status};

use crate::pb::HelloReply;

/// The row of failures that name no replica.
pub const UNATTRIBUTED: &str = "(unattributed)";

/// The result of one call, attributed to a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The replica that answered, or [`UNATTRIBUTED`].
    pub replica: String,
    /// The status code: `Ok` for a reply.
    pub code: Code,
    /// From sending the request to receiving the whole response.
    pub latency: Duration,
}

impl Outcome {
    /// Attributes the result of a `SayHello` call.
    pub fn of(result: &Result<HelloReply, Status>, latency: Duration) -> Self {
        match result {
            Ok(reply) => Self {
                replica: reply.replica.clone(),
                code: Code::Ok,
                latency,
            },
            Err(status) => Self {
                replica: replica_of(status.message())
                    .unwrap_or(UNATTRIBUTED)
                    .to_owned(),
                code: status.code(),
                latency,
            },
        }
    }
}

/// The replica a status message names: the word after "replica ", as in
/// "replica greeter-1 is failing" or "replica greeter-0: names lookup failed".
fn replica_of(message: &str) -> Option<&str> {
    let rest = message.split_once("replica ")?.1;
    let name = rest
        .split(|c: char| c.is_whitespace() || c == ':')
        .next()
        .filter(|name| !name.is_empty())?;
    Some(name)
}

/// A latency histogram with 32 linear buckets per power of two of microseconds:
/// constant memory, and a percentile within about 3% of the exact value.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

/// Values below `2^SUB_BITS` µs have a bucket each; above, each power of two has
/// `2^(SUB_BITS - 1)` buckets.
const SUB_BITS: u32 = 6;

impl Histogram {
    /// Records one latency (saturating at about 71 minutes).
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .min(u64::from(u32::MAX));
        let index = bucket(micros);
        if self.counts.len() <= index {
            self.counts.resize(index + 1, 0);
        }
        self.counts[index] += 1;
        self.total += 1;
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The latency at quantile `q` (`0.0..=1.0`, nearest rank), or `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        // Nearest rank: the smallest value with at least q * total values at or below it.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(midpoint(index)));
            }
        }
        None
    }

    /// Adds the latencies of `other`.
    pub fn merge(&mut self, other: &Self) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
    }
}

fn bucket(micros: u64) -> usize {
    if micros < 1 << SUB_BITS {
        return micros as usize;
    }
    let shift = (63 - micros.leading_zeros()) - (SUB_BITS - 1);
    ((shift << (SUB_BITS - 1)) as usize) + (micros >> shift) as usize
}

/// The middle of the bucket at `index`, in microseconds.
fn midpoint(index: usize) -> u64 {
    let index = index as u64;
    if index < 1 << SUB_BITS {
        return index;
    }
    let shift = (index >> (SUB_BITS - 1)) - 1;
    let mantissa = index - (shift << (SUB_BITS - 1));
    (mantissa << shift) + (1 << shift) / 2
}

/// Counts for one replica.
#[derive(Debug, Clone, Default)]
struct Row {
    requests: u64,
    successes: u64,
    latency: Histogram,
}

impl Row {
    fn merge(&mut self, other: &Self) {
        self.requests += other.requests;
        self.successes += other.successes;
        self.latency.merge(&other.latency);
    }
}

/// Outcomes per replica, and the table they make.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    rows: BTreeMap<String, Row>,
}

impl Stats {
    /// Empty statistics that always show a row for each of `replicas`, so that a
    /// replica that serves nothing still appears.
    pub fn with_replicas<'a>(replicas: impl IntoIterator<Item = &'a str>) -> Self {
        let rows = replicas
            .into_iter()
            .map(|name| (name.to_owned(), Row::default()))
            .collect();
        Self { rows }
    }

    /// Counts one outcome.
    pub fn record(&mut self, outcome: &Outcome) {
        let row = self.rows.entry(outcome.replica.clone()).or_default();
        row.requests += 1;
        if outcome.code == Code::Ok {
            row.successes += 1;
        }
        row.latency.record(outcome.latency);
    }

    /// Forgets the counts, keeping the rows.
    pub fn clear(&mut self) {
        for row in self.rows.values_mut() {
            *row = Row::default();
        }
    }

    /// How many outcomes were counted.
    pub fn requests(&self) -> u64 {
        self.rows.values().map(|row| row.requests).sum()
    }

    /// The table of these counts, gathered over `elapsed`: one line per replica
    /// (the unattributed row only when it has failures), then a total.
    pub fn table(&self, elapsed: Duration) -> String {
        let mut total = Row::default();
        let mut out = format!(
            "{:<16} {:>8} {:>7} {:>9} {:>9} {:>9}\n",
            "REPLICA", "RPS", "SHARE", "SUCCESS", "P50", "P99"
        );
        let all = self.requests();
        for (name, row) in &self.rows {
            total.merge(row);
            if name == UNATTRIBUTED && row.requests == 0 {
                continue;
            }
            line(&mut out, name, row, all, elapsed);
        }
        line(&mut out, "TOTAL", &total, all, elapsed);
        out
    }
}

fn line(out: &mut String, name: &str, row: &Row, all: u64, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(f64::EPSILON);
    let percent = |part: u64, whole: u64| {
        if whole == 0 {
            "-".to_owned()
        } else {
            format!("{:.2}%", 100.0 * part as f64 / whole as f64)
        }
    };
    let millis = |latency: Option<Duration>| {
        latency.map_or_else(
            || "-".to_owned(),
            |latency| format!("{:.1}ms", latency.as_secs_f64() * 1e3),
        )
    };
    let share = if all == 0 {
        "-".to_owned()
    } else {
        format!("{:.1}%", 100.0 * row.requests as f64 / all as f64)
    };
    let _ = writeln!(
        out,
        "{:<16} {:>8.1} {:>7} {:>9} {:>9} {:>9}",
        name,
        row.requests as f64 / secs,
        share,
        percent(row.successes, row.requests),
        millis(row.latency.quantile(0.5)),
        millis(row.latency.quantile(0.99)),
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::{Code, Status};

    use super::{Histogram, Outcome, Stats, UNATTRIBUTED, bucket, midpoint, replica_of};
    use crate::pb::HelloReply;

    #[test]
    fn attributes_failures_by_message() {
        assert_eq!(
            replica_of("replica greeter-1 is failing"),
            Some("greeter-1")
        );
        assert_eq!(
            replica_of("replica greeter-0: names lookup failed: x"),
            Some("greeter-0")
        );
        assert_eq!(replica_of("no endpoints"), None);
        let ms = Duration::from_millis(1);
        let failing = Outcome::of(&Err(Status::unavailable("replica g-1 is failing")), ms);
        assert_eq!(
            (failing.replica.as_str(), failing.code),
            ("g-1", Code::Unavailable)
        );
        let other = Outcome::of(&Err(Status::unavailable("no endpoints")), ms);
        assert_eq!(other.replica, UNATTRIBUTED);
        let reply = HelloReply {
            replica: "g-2".into(),
            ..HelloReply::default()
        };
        assert_eq!(Outcome::of(&Ok(reply), ms).replica, "g-2");
    }

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut previous = 0;
        for micros in 0..200_000_u64 {
            let index = bucket(micros);
            assert!(index == previous || index == previous + 1, "{micros}");
            previous = index;
            let mid = midpoint(index);
            assert!(
                mid.abs_diff(micros) as f64 <= 0.035 * micros as f64 + 1.0,
                "{micros} {mid}"
            );
        }
        assert!(bucket(u64::from(u32::MAX)) < 1000);
    }

    #[test]
    fn quantiles() {
        let mut histogram = Histogram::default();
        assert_eq!(histogram.quantile(0.5), None);
        for millis in 1..=100 {
            histogram.record(Duration::from_millis(millis));
        }
        let near = |q: f64, millis: f64| {
            let got = histogram.quantile(q).map_or(0.0, |d| d.as_secs_f64() * 1e3);
            (got - millis).abs() <= millis * 0.035
        };
        assert!(near(0.5, 50.0));
        assert!(near(0.99, 99.0));
        assert!(near(1.0, 100.0));
    }

    #[test]
    fn table_has_a_row_per_replica_and_a_total() {
        let mut stats = Stats::with_replicas(["a", "b"]);
        let ms = Duration::from_millis(2);
        stats.record(&Outcome {
            replica: "a".into(),
            code: Code::Ok,
            latency: ms,
        });
        stats.record(&Outcome {
            replica: "a".into(),
            code: Code::Unavailable,
            latency: ms,
        });
        let table = stats.table(Duration::from_secs(1));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[1].starts_with('a') && lines[1].contains("50.00%"),
            "{table}"
        );
        assert!(
            lines[2].starts_with('b') && lines[2].contains('-'),
            "{table}"
        );
        assert!(
            lines[3].starts_with("TOTAL") && lines[3].contains("2.0"),
            "{table}"
        );
        stats.clear();
        assert_eq!(stats.requests(), 0);
    }
}
