//! `stat` and `edges`: how the answers to their queries become rows, and the rows tables.
//!
//! Both sources answer the same few queries of [`crate::query`] (a sum of per-second rates by
//! some labels, or a latency quantile by some labels), so the rows are built the same way
//! whether the numbers come from two scrapes of the proxies or from Prometheus: [`stat`] and
//! [`edges`] take any [`Source`], and [`build_stat`] and [`build_edges`] are the pure part.

use std::collections::{BTreeMap, BTreeSet};

use crate::query::{
    CLASSIFICATION, DST_NAMESPACE, DST_WORKLOAD, Direction, EDGE_REQUESTS, EDGE_RESPONSES, Labels,
    PEER_IDENTITY, SRC_NAMESPACE, SRC_WORKLOAD, STAT_LATENCY, STAT_REQUESTS, STAT_RESPONSES,
    SUCCESS, Sample, Source, TLS, label,
};

/// A row of `stat`: one destination workload.
#[derive(Clone, Debug, PartialEq)]
pub struct StatRow {
    /// `dst_namespace`, possibly empty.
    pub namespace: String,
    /// `dst_workload`, possibly empty.
    pub workload: String,
    /// Successes per response, NaN without responses.
    pub success: f64,
    /// Requests per second.
    pub rps: f64,
    /// p50, p95, p99 in seconds; NaN when unknown.
    pub latency: [f64; 3],
}

/// A row of `edges`: one source workload calling one destination workload.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeRow {
    /// The caller, as [`workload_name`] writes it.
    pub src: String,
    /// The callee, as [`workload_name`] writes it.
    pub dst: String,
    /// Requests per second.
    pub rps: f64,
    /// Successes per response, NaN without responses.
    pub success: f64,
    /// The share of requests over mTLS, 0 to 1 (NaN without requests).
    pub tls: f64,
    /// The peer identities seen.
    pub identities: BTreeSet<String>,
}

/// Rates that count: NaN (no data) and negatives (none in a rate) are left out.
fn usable(value: f64) -> bool {
    value.is_finite() && value > 0.0
}

#[derive(Debug, Default)]
struct Counts {
    rps: f64,
    ok: f64,
    responses: f64,
}

impl Counts {
    fn add_response(&mut self, labels: &Labels, value: f64) {
        if usable(value) {
            self.responses += value;
            if label(labels, CLASSIFICATION) == SUCCESS {
                self.ok += value;
            }
        }
    }

    fn seen(&self) -> bool {
        self.rps > 0.0 || self.responses > 0.0
    }

    fn success(&self) -> f64 {
        if self.responses > 0.0 {
            self.ok / self.responses
        } else {
            f64::NAN
        }
    }
}

/// Success rate, RPS and latency per destination workload, sorted by namespace and workload;
/// workloads without traffic in the window are left out.
pub async fn stat(source: &impl Source, direction: Direction) -> anyhow::Result<Vec<StatRow>> {
    let [p50, p95, p99] = STAT_LATENCY;
    let (requests, responses, p50, p95, p99) = tokio::try_join!(
        source.eval(STAT_REQUESTS, direction),
        source.eval(STAT_RESPONSES, direction),
        source.eval(p50, direction),
        source.eval(p95, direction),
        source.eval(p99, direction),
    )?;
    Ok(build_stat(&requests, &responses, [&p50, &p95, &p99]))
}

/// The rows of `stat` from the answers to [`STAT_REQUESTS`], [`STAT_RESPONSES`] and
/// [`STAT_LATENCY`].
pub fn build_stat(
    requests: &[Sample],
    responses: &[Sample],
    quantiles: [&[Sample]; 3],
) -> Vec<StatRow> {
    type Key = (String, String);
    let key = |labels: &Labels| -> Key {
        (
            label(labels, DST_NAMESPACE).to_owned(),
            label(labels, DST_WORKLOAD).to_owned(),
        )
    };
    let mut rows: BTreeMap<Key, (Counts, [f64; 3])> = BTreeMap::new();
    let blank = || (Counts::default(), [f64::NAN; 3]);
    for (labels, value) in requests {
        if usable(*value) {
            rows.entry(key(labels)).or_insert_with(blank).0.rps += value;
        }
    }
    for (labels, value) in responses {
        rows.entry(key(labels))
            .or_insert_with(blank)
            .0
            .add_response(labels, *value);
    }
    for (i, vector) in quantiles.into_iter().enumerate() {
        for (labels, value) in vector {
            if let Some(row) = rows.get_mut(&key(labels)) {
                row.1[i] = *value;
            }
        }
    }
    rows.into_iter()
        .filter(|(_, (counts, _))| counts.seen())
        .map(|((namespace, workload), (counts, latency))| StatRow {
            namespace,
            workload,
            success: counts.success(),
            rps: counts.rps,
            latency,
        })
        .collect()
}

/// RPS, success rate and mTLS per (source, destination) workload pair, sorted; pairs without
/// traffic in the window are left out.
pub async fn edges(source: &impl Source, direction: Direction) -> anyhow::Result<Vec<EdgeRow>> {
    let (requests, responses) = tokio::try_join!(
        source.eval(EDGE_REQUESTS, direction),
        source.eval(EDGE_RESPONSES, direction),
    )?;
    Ok(build_edges(&requests, &responses))
}

/// `namespace/workload`, `-` for an empty part, or just `-` when both are empty (an
/// unmeshed caller, say).
pub fn workload_name(namespace: &str, workload: &str) -> String {
    if namespace.is_empty() && workload.is_empty() {
        return "-".to_owned();
    }
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_owned()
        }
    };
    format!("{}/{}", or_dash(namespace), or_dash(workload))
}

/// The rows of `edges` from the answers to [`EDGE_REQUESTS`] and [`EDGE_RESPONSES`].
pub fn build_edges(requests: &[Sample], responses: &[Sample]) -> Vec<EdgeRow> {
    type Key = (String, String);
    let key = |labels: &Labels| -> Key {
        (
            workload_name(label(labels, SRC_NAMESPACE), label(labels, SRC_WORKLOAD)),
            workload_name(label(labels, DST_NAMESPACE), label(labels, DST_WORKLOAD)),
        )
    };
    #[derive(Default)]
    struct Edge {
        counts: Counts,
        tls_rps: f64,
        identities: BTreeSet<String>,
    }
    let mut edges: BTreeMap<Key, Edge> = BTreeMap::new();
    for (labels, value) in requests {
        if !usable(*value) {
            continue;
        }
        let edge = edges.entry(key(labels)).or_default();
        edge.counts.rps += value;
        if label(labels, TLS) == "true" {
            edge.tls_rps += value;
        }
        let identity = label(labels, PEER_IDENTITY);
        if !identity.is_empty() {
            edge.identities.insert(identity.to_owned());
        }
    }
    for (labels, value) in responses {
        edges
            .entry(key(labels))
            .or_default()
            .counts
            .add_response(labels, *value);
    }
    edges
        .into_iter()
        .filter(|(_, edge)| edge.counts.seen())
        .map(|((src, dst), edge)| EdgeRow {
            src,
            dst,
            rps: edge.counts.rps,
            success: edge.counts.success(),
            tls: if edge.counts.rps > 0.0 {
                (edge.tls_rps / edge.counts.rps).clamp(0.0, 1.0)
            } else {
                f64::NAN
            },
            identities: edge.identities,
        })
        .collect()
}

/// `90.00%`, or `-` when unknown.
pub fn fmt_percent(share: f64) -> String {
    if share.is_finite() {
        format!("{:.2}%", share * 100.0)
    } else {
        "-".to_owned()
    }
}

/// Requests per second with two decimals.
pub fn fmt_rps(rps: f64) -> String {
    format!("{rps:.2}")
}

/// A latency in seconds as `0.85ms`, `12.3ms`, `250ms` or `1.50s`; `-` when unknown.
pub fn fmt_latency(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "-".to_owned();
    }
    let ms = seconds * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}ms")
    } else if ms < 100.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{seconds:.2}s")
    }
}

/// `yes` (all requests over mTLS), `no` (none), else the share; `-` when unknown.
pub fn fmt_tls(share: f64) -> String {
    if !share.is_finite() {
        "-".to_owned()
    } else if share >= 1.0 - 1e-9 {
        "yes".to_owned()
    } else if share <= 1e-9 {
        "no".to_owned()
    } else {
        format!("{:.0}%", share * 100.0)
    }
}

/// The stat table.
pub fn stat_table(rows: &[StatRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let or_dash = |s: &str| {
                if s.is_empty() {
                    "-".to_owned()
                } else {
                    s.to_owned()
                }
            };
            vec![
                or_dash(&r.namespace),
                or_dash(&r.workload),
                fmt_percent(r.success),
                fmt_rps(r.rps),
                fmt_latency(r.latency[0]),
                fmt_latency(r.latency[1]),
                fmt_latency(r.latency[2]),
            ]
        })
        .collect();
    crate::table::render(
        &[
            "NAMESPACE",
            "WORKLOAD",
            "SUCCESS",
            "RPS",
            "P50",
            "P95",
            "P99",
        ],
        &cells,
    )
}

/// The edges table.
pub fn edges_table(rows: &[EdgeRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let identity = if r.identities.is_empty() {
                "-".to_owned()
            } else {
                r.identities.iter().cloned().collect::<Vec<_>>().join(",")
            };
            vec![
                r.src.clone(),
                r.dst.clone(),
                fmt_rps(r.rps),
                fmt_percent(r.success),
                fmt_tls(r.tls),
                identity,
            ]
        })
        .collect();
    crate::table::render(&["SRC", "DST", "RPS", "SUCCESS", "TLS", "IDENTITY"], &cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn stat_rows_join_the_answers() {
        let api = [("dst_namespace", "demo"), ("dst_workload", "api")];
        let requests = vec![
            (labels(&api), 10.0),
            (labels(&[("dst_workload", "idle")]), 0.0),
        ];
        let responses = vec![
            (
                labels(&[api[0], api[1], ("classification", "success")]),
                9.0,
            ),
            (
                labels(&[api[0], api[1], ("classification", "failure")]),
                1.0,
            ),
        ];
        let p = vec![(labels(&api), 0.002)];
        let rows = build_stat(&requests, &responses, [&p, &p, &p]);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].namespace, "demo");
        assert_eq!(rows[0].workload, "api");
        assert!((rows[0].success - 0.9).abs() < 1e-12);
        assert_eq!(rows[0].rps, 10.0);
        assert_eq!(rows[0].latency, [0.002; 3]);
        let table = stat_table(&rows);
        assert_eq!(
            table,
            "NAMESPACE  WORKLOAD  SUCCESS  RPS    P50     P95     P99\n\
             demo       api       90.00%   10.00  2.00ms  2.00ms  2.00ms\n"
        );
    }

    #[test]
    fn edges_sum_tls_and_identities() {
        let edge = |tls: &str, id: &str| {
            labels(&[
                ("src_namespace", "demo"),
                ("src_workload", "web"),
                ("dst_namespace", "demo"),
                ("dst_workload", "api"),
                ("tls", tls),
                ("peer_identity", id),
            ])
        };
        let requests = vec![
            (edge("true", "api.demo"), 3.0),
            (edge("false", ""), 1.0),
            (labels(&[("dst_workload", "x"), ("tls", "false")]), 2.0),
        ];
        let rows = build_edges(&requests, &Vec::new());
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].src, "-");
        assert_eq!(rows[0].dst, "-/x");
        assert_eq!(fmt_tls(rows[0].tls), "no");
        assert_eq!(rows[1].src, "demo/web");
        assert_eq!(rows[1].rps, 4.0);
        assert_eq!(fmt_tls(rows[1].tls), "75%");
        assert!(rows[1].success.is_nan());
        assert_eq!(rows[1].identities.len(), 1);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_latency(0.00085), "0.85ms");
        assert_eq!(fmt_latency(0.0123), "12.3ms");
        assert_eq!(fmt_latency(0.25), "250ms");
        assert_eq!(fmt_latency(1.5), "1.50s");
        assert_eq!(fmt_latency(f64::NAN), "-");
        assert_eq!(fmt_percent(f64::NAN), "-");
        assert_eq!(fmt_percent(1.0), "100.00%");
        assert_eq!(fmt_tls(1.0), "yes");
        assert_eq!(fmt_tls(0.0), "no");
    }
}
