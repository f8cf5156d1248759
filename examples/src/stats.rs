//! Per-replica statistics for the demo, read from the proxy's own metrics: requests per
//! second, share, success rate and latency percentiles, rendered as a table.
//!
//! [`Scraper`] reads the proxy's admin `/metrics` and keeps the outbound series of one
//! workload as a [`Snapshot`]; [`Stats::between`] two snapshots turns the counter deltas into
//! one row per replica (the `dst_pod` label): requests per second from `response_total`,
//! success rate from its `classification="success"` share, and p50/p99 from the deltas of
//! `response_latency_seconds_bucket`, interpolated inside a bucket as Prometheus's
//! `histogram_quantile` does. Two more columns say how the calls travelled: the share sent
//! over mutual TLS (the `tls="true"` series) and the identity the replica proved
//! (`peer_identity`).
//!
//! A series missing from the earlier snapshot counts from zero (the proxy creates a series
//! on its first use), and so does a counter that went down (a reset).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh_metrics::exposition::{self, Labels, histogram_quantile};

/// Responses, by status and classification.
const RESPONSES: &str = "response_total";
/// Retries sent, per service and route.
const RETRIES: &str = "retries_total";
/// Requests through a retry policy, per service and route.
const RETRY_REQUESTS: &str = "retry_requests_total";
/// The latency histogram's cumulative buckets.
const LATENCY_BUCKET: &str = "response_latency_seconds_bucket";
/// How long a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads a proxy's admin `/metrics` over HTTP/1.1, keeping the connection between scrapes.
#[derive(Debug)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    uri: http::Uri,
    workload: String,
    namespace: String,
}

impl Scraper {
    /// A scraper of the proxy whose admin server is `admin`, keeping the outbound series of
    /// the calls to `workload` in `namespace`.
    pub fn new(admin: SocketAddr, workload: &str, namespace: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            uri: format!("http://{admin}/metrics")
                .parse()
                .context("admin address")?,
            workload: workload.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    /// Scrapes the proxy now.
    pub async fn scrape(&self) -> anyhow::Result<Snapshot> {
        let taken = Instant::now();
        let text = tokio::time::timeout(SCRAPE_TIMEOUT, async {
            let response = self
                .client
                .get(self.uri.clone())
                .await
                .with_context(|| format!("cannot scrape {}", self.uri))?;
            if !response.status().is_success() {
                bail!("{} answered {}", self.uri, response.status());
            }
            let body = response
                .into_body()
                .collect()
                .await
                .with_context(|| format!("reading {}", self.uri))?
                .to_bytes();
            anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
        })
        .await
        .map_err(|_| anyhow!("{} took over {SCRAPE_TIMEOUT:?}", self.uri))??;
        Ok(Snapshot::parse(
            &text,
            &self.workload,
            &self.namespace,
            taken,
        ))
    }
}

/// The response and latency counters of the outbound calls to one workload, at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    series: BTreeMap<(String, Labels), f64>,
    /// `retries_total` and `retry_requests_total`, summed over services and routes.
    retries: (f64, f64),
    taken: Instant,
}

impl Snapshot {
    /// The series of a Prometheus text exposition read at `taken` that count outbound calls
    /// to `workload` in `namespace`.
    pub fn parse(text: &str, workload: &str, namespace: &str, taken: Instant) -> Self {
        let all = exposition::parse(text);
        let sum =
            |name: &str| -> f64 { all.iter().filter(|s| s.name == name).map(|s| s.value).sum() };
        let retries = (sum(RETRIES), sum(RETRY_REQUESTS));
        let series = all
            .into_iter()
            .filter(|s| {
                let label = |name: &str| s.labels.get(name).map(String::as_str);
                (s.name == RESPONSES || s.name == LATENCY_BUCKET)
                    && label("direction") == Some("outbound")
                    && label("dst_workload") == Some(workload)
                    && label("dst_namespace") == Some(namespace)
            })
            .map(|s| ((s.name, s.labels), s.value))
            .collect();
        Self {
            series,
            retries,
            taken,
        }
    }
}

/// Counts for one replica over a window.
#[derive(Debug, Clone, Default)]
struct Row {
    responses: f64,
    successes: f64,
    /// Responses on series sent over mutual TLS.
    mtls: f64,
    /// The identity the replica proved, when it did.
    identity: Option<String>,
    /// Cumulative latency buckets `(upper bound, count)`, one per series and bound.
    buckets: Vec<(f64, f64)>,
}

impl Row {
    fn merge(&mut self, other: &Self) {
        self.responses += other.responses;
        self.successes += other.successes;
        self.mtls += other.mtls;
        self.buckets.extend_from_slice(&other.buckets);
    }
}

/// What each replica served between two snapshots, and the table it makes.
#[derive(Debug, Clone)]
pub struct Stats {
    rows: BTreeMap<String, Row>,
    /// Retries and requests through a retry policy in the window.
    retries: (f64, f64),
    elapsed: Duration,
}

impl Stats {
    /// The counter deltas from `before` to `after`, per replica. Each of `replicas` gets a
    /// row even if it served nothing.
    pub fn between<'a>(
        before: &Snapshot,
        after: &Snapshot,
        replicas: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut rows: BTreeMap<String, Row> = replicas
            .into_iter()
            .map(|name| (name.to_owned(), Row::default()))
            .collect();
        for (key @ (name, labels), &value) in &after.series {
            let delta = match before.series.get(key) {
                Some(&old) if value >= old => value - old,
                _ => value,
            };
            let pod = labels.get("dst_pod").cloned().unwrap_or_default();
            let row = rows.entry(pod).or_default();
            if name == RESPONSES {
                row.responses += delta;
                if labels.get("classification").map(String::as_str) == Some("success") {
                    row.successes += delta;
                }
                if labels.get("tls").map(String::as_str) == Some("true") {
                    row.mtls += delta;
                    if let Some(id) = labels.get("peer_identity").filter(|id| !id.is_empty()) {
                        row.identity = Some(id.clone());
                    }
                }
            } else if let Some(le) = labels.get("le").and_then(|le| exposition::parse_value(le)) {
                row.buckets.push((le, delta));
            }
        }
        let delta = |after: f64, before: f64| {
            if after >= before {
                after - before
            } else {
                after
            }
        };
        Self {
            rows,
            retries: (
                delta(after.retries.0, before.retries.0),
                delta(after.retries.1, before.retries.1),
            ),
            elapsed: after.taken.saturating_duration_since(before.taken),
        }
    }

    /// How many responses were counted.
    pub fn requests(&self) -> u64 {
        self.rows
            .values()
            .map(|row| row.responses)
            .sum::<f64>()
            .round() as u64
    }

    /// How long the window lasted.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The table: one line per replica, then a total.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<16} {:>8} {:>7} {:>9} {:>9} {:>9} {:>7}  {}\n",
            "REPLICA", "RPS", "SHARE", "SUCCESS", "P50", "P99", "MTLS", "IDENTITY"
        );
        let mut total = Row::default();
        for row in self.rows.values() {
            total.merge(row);
        }
        for (name, row) in &self.rows {
            self.line(&mut out, name, row, total.responses);
        }
        self.line(&mut out, "TOTAL", &total, total.responses);
        let seconds = self.elapsed.as_secs_f64().max(f64::EPSILON);
        let _ = writeln!(
            out,
            "RETRIES {:>17.1}/s of {:.1} requests/s through the retry policy",
            self.retries.0 / seconds,
            self.retries.1 / seconds
        );
        out
    }

    fn line(&self, out: &mut String, name: &str, row: &Row, all: f64) {
        let percent = |part: f64, whole: f64, digits: usize| {
            if whole > 0.0 {
                format!("{:.digits$}%", 100.0 * part / whole)
            } else {
                "-".to_owned()
            }
        };
        let millis = |q: f64| {
            let seconds = histogram_quantile(q, &row.buckets);
            if seconds.is_finite() {
                format!("{:.1}ms", seconds * 1e3)
            } else {
                "-".to_owned()
            }
        };
        let _ = writeln!(
            out,
            "{:<16} {:>8.1} {:>7} {:>9} {:>9} {:>9} {:>7}  {}",
            name,
            row.responses / self.elapsed.as_secs_f64().max(f64::EPSILON),
            percent(row.responses, all, 1),
            percent(row.successes, row.responses, 2),
            millis(0.5),
            millis(0.99),
            percent(row.mtls, row.responses, 0),
            row.identity.as_deref().unwrap_or("-"),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Snapshot, Stats};

    /// One outbound response series and its latency buckets, as the proxy exposes them.
    fn exposition(pod: &str, workload: &str, success: u64, failure: u64, le_2ms: u64) -> String {
        // greeter-1 is reached over mutual TLS; the others in plaintext.
        let tls = if pod == "greeter-1" {
            "tls=\"true\",peer_identity=\"spiffe://cluster.local/ns/demo/sa/greeter\""
        } else {
            "tls=\"false\",peer_identity=\"\""
        };
        let labels = format!(
            "direction=\"outbound\",authority=\"{workload}.demo:50051\",src_workload=\"loadgen\",\
             src_namespace=\"demo\",dst_service=\"\",dst_namespace=\"demo\",\
             dst_workload=\"{workload}\",dst_pod=\"{pod}\",{tls}"
        );
        let all = success + failure;
        format!(
            "# TYPE response counter\n\
             response_total{{{labels},status_code=\"200\",grpc_status=\"0\",classification=\"success\"}} {success}\n\
             response_total{{{labels},status_code=\"200\",grpc_status=\"14\",classification=\"failure\"}} {failure}\n\
             request_total{{{labels}}} {all}\n\
             response_latency_seconds_bucket{{{labels},le=\"0.001\"}} 0\n\
             response_latency_seconds_bucket{{{labels},le=\"0.002\"}} {le_2ms}\n\
             response_latency_seconds_bucket{{{labels},le=\"0.005\"}} {all}\n\
             response_latency_seconds_bucket{{{labels},le=\"+Inf\"}} {all}\n"
        )
    }

    #[test]
    fn rows_from_counter_deltas() {
        let t0 = Instant::now();
        let before = Snapshot::parse(
            &(exposition("greeter-0", "greeter", 10, 0, 10) + &exposition("n-0", "names", 5, 0, 5)),
            "greeter",
            "demo",
            t0,
        );
        // greeter-0: 90 more successes, 10 more failures, half of them under 2 ms; greeter-1
        // appears with 100 successes; the names series are not the greeter's.
        let after = Snapshot::parse(
            &(exposition("greeter-0", "greeter", 100, 10, 60)
                + &exposition("greeter-1", "greeter", 100, 0, 0)
                + &exposition("n-0", "names", 500, 0, 500)),
            "greeter",
            "demo",
            t0 + Duration::from_secs(2),
        );
        let stats = Stats::between(&before, &after, ["greeter-0", "greeter-1", "greeter-2"]);
        assert_eq!(stats.requests(), 200);
        assert_eq!(stats.elapsed(), Duration::from_secs(2));
        let table = stats.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 6, "{table}");
        let fields =
            |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_owned).collect() };
        // 100 in 2 s, half of all, 90% success; p50 at the 2 ms bound (rank 50 of 100, 50
        // under 2 ms), p99 at 0.002 + 0.003 * 49/50.
        assert_eq!(
            fields(lines[1]),
            [
                "greeter-0",
                "50.0",
                "50.0%",
                "90.00%",
                "2.0ms",
                "4.9ms",
                "0%",
                "-"
            ],
            "{table}"
        );
        // All 100 in (2, 5] ms: p50 half way through.
        assert_eq!(
            fields(lines[2]),
            [
                "greeter-1",
                "50.0",
                "50.0%",
                "100.00%",
                "3.5ms",
                "5.0ms",
                "100%",
                "spiffe://cluster.local/ns/demo/sa/greeter"
            ],
            "{table}"
        );
        assert_eq!(
            fields(lines[3]),
            ["greeter-2", "0.0", "0.0%", "-", "-", "-", "-", "-"],
            "{table}"
        );
        assert_eq!(
            fields(lines[4])[..4],
            ["TOTAL", "100.0", "100.0%", "95.00%"]
        );
    }

    #[test]
    fn a_reset_counts_from_zero_and_nothing_shows_dashes() {
        let t0 = Instant::now();
        let before = Snapshot::parse(
            &exposition("g-0", "greeter", 50, 0, 50),
            "greeter",
            "demo",
            t0,
        );
        let after = Snapshot::parse(
            &exposition("g-0", "greeter", 5, 0, 5),
            "greeter",
            "demo",
            t0 + Duration::from_secs(1),
        );
        assert_eq!(Stats::between(&before, &after, ["g-0"]).requests(), 5);
        let same = Stats::between(&after, &after, ["g-0"]);
        assert_eq!(same.requests(), 0);
        let table = same.table();
        let total = table.lines().rev().nth(1).unwrap_or_default();
        assert_eq!(
            total.split_whitespace().collect::<Vec<_>>(),
            ["TOTAL", "0.0", "-", "-", "-", "-", "-", "-"]
        );
    }
}
