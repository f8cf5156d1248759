//! meshctl's query vocabulary: the metric and label names it reads, the questions `stat` and
//! `edges` ask ([`Query`]), their PromQL, and the shape of an answer ([`Vector`]).
//!
//! Both sources answer the same [`Query`] values through [`Source`]: Prometheus runs the
//! PromQL of [`Query::promql`] (module `prom`), the proxies' own scrapes compute the same sums
//! and quantiles locally (module `scrape`); module `report` turns answers into rows. This
//! module depends on none of them: they all depend on it.

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

pub use mesh_metrics::exposition::Labels;

/// One element of an answer: a series' labels and its value.
pub type Sample = (Labels, f64);

/// The answer to a query: one value per combination of the `by` labels (an instant vector).
pub type Vector = Vec<Sample>;

/// The request counter.
pub const REQUESTS: &str = "request_total";
/// The response counter, labelled with `classification`.
pub const RESPONSES: &str = "response_total";
/// The latency histogram's bucket series.
pub const LATENCY_BUCKET: &str = "response_latency_seconds_bucket";

/// Label: `outbound` or `inbound`, the side that recorded the call.
pub const DIRECTION: &str = "direction";
/// Label: the caller's namespace.
pub const SRC_NAMESPACE: &str = "src_namespace";
/// Label: the caller's workload.
pub const SRC_WORKLOAD: &str = "src_workload";
/// Label: the callee's namespace.
pub const DST_NAMESPACE: &str = "dst_namespace";
/// Label: the callee's workload.
pub const DST_WORKLOAD: &str = "dst_workload";
/// Label: `success` or `failure`.
pub const CLASSIFICATION: &str = "classification";
/// The [`CLASSIFICATION`] of a successful response.
pub const SUCCESS: &str = "success";
/// Label: `true` when the call was over mTLS.
pub const TLS: &str = "tls";
/// Label: the identity the peer proved.
pub const PEER_IDENTITY: &str = "peer_identity";
/// Label: a histogram bucket's upper bound.
pub const LE: &str = "le";
/// Label: Prometheus's scrape job.
pub const JOB: &str = "job";

/// Grouping: per destination workload.
pub const BY_DST: &[&str] = &[DST_NAMESPACE, DST_WORKLOAD];
/// Grouping: per destination workload and classification.
pub const BY_DST_CLASS: &[&str] = &[DST_NAMESPACE, DST_WORKLOAD, CLASSIFICATION];
/// Grouping: per edge, with its mTLS and peer identity.
pub const BY_EDGE_TLS: &[&str] = &[
    SRC_NAMESPACE,
    SRC_WORKLOAD,
    DST_NAMESPACE,
    DST_WORKLOAD,
    TLS,
    PEER_IDENTITY,
];
/// Grouping: per edge and classification.
pub const BY_EDGE_CLASS: &[&str] = &[
    SRC_NAMESPACE,
    SRC_WORKLOAD,
    DST_NAMESPACE,
    DST_WORKLOAD,
    CLASSIFICATION,
];

/// `stat`: requests per second per destination workload.
pub const STAT_REQUESTS: Query = Query::Sum {
    metric: REQUESTS,
    by: BY_DST,
};
/// `stat`: responses per second per destination workload and classification.
pub const STAT_RESPONSES: Query = Query::Sum {
    metric: RESPONSES,
    by: BY_DST_CLASS,
};
/// `stat`: the p50, p95 and p99 latency per destination workload.
pub const STAT_LATENCY: [Query; 3] = [
    Query::Quantile { q: 0.5, by: BY_DST },
    Query::Quantile {
        q: 0.95,
        by: BY_DST,
    },
    Query::Quantile {
        q: 0.99,
        by: BY_DST,
    },
];
/// `edges`: requests per second per edge, mTLS and peer identity.
pub const EDGE_REQUESTS: Query = Query::Sum {
    metric: REQUESTS,
    by: BY_EDGE_TLS,
};
/// `edges`: responses per second per edge and classification.
pub const EDGE_RESPONSES: Query = Query::Sum {
    metric: RESPONSES,
    by: BY_EDGE_CLASS,
};

/// Which side of a call the series were recorded on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    /// By the calling proxy: what the client saw.
    Outbound,
    /// By the called proxy.
    Inbound,
}

impl Direction {
    /// The value of the [`DIRECTION`] label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// One question, asked of the series of one direction over a window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Query {
    /// `sum by (by) (rate(metric[window]))`.
    Sum {
        /// The counter.
        metric: &'static str,
        /// The labels kept.
        by: &'static [&'static str],
    },
    /// `histogram_quantile(q, sum by (le, by) (rate(response_latency_seconds_bucket[window])))`.
    Quantile {
        /// The quantile, 0 to 1.
        q: f64,
        /// The labels kept, besides `le`.
        by: &'static [&'static str],
    },
}

impl Query {
    /// The PromQL of this query over the series of `direction`, with rates over `window`
    /// (in whole milliseconds, at least 1) and, given `job`, only the series whose `job`
    /// matches that regex.
    ///
    /// ```
    /// use std::time::Duration;
    /// use meshctl::query::{Direction, STAT_REQUESTS};
    ///
    /// assert_eq!(
    ///     STAT_REQUESTS.promql(Direction::Outbound, Duration::from_secs(60), None),
    ///     "sum by (dst_namespace, dst_workload) \
    ///      (rate(request_total{direction=\"outbound\"}[60000ms]))"
    /// );
    /// ```
    pub fn promql(&self, direction: Direction, window: Duration, job: Option<&str>) -> String {
        let mut selector = format!("{DIRECTION}=\"{}\"", direction.as_str());
        if let Some(job) = job {
            let _ = write!(selector, ",{JOB}=~\"{}\"", escape(job));
        }
        let window = format!("{}ms", (window.as_secs_f64() * 1000.0).round().max(1.0));
        match self {
            Self::Sum { metric, by } => format!(
                "sum by ({}) (rate({metric}{{{selector}}}[{window}]))",
                by.join(", ")
            ),
            Self::Quantile { q, by } => format!(
                "histogram_quantile({q}, sum by ({LE}, {}) (rate({LATENCY_BUCKET}{{{selector}}}[{window}])))",
                by.join(", ")
            ),
        }
    }
}

/// A double-quoted PromQL string's escapes.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Where answers come from: Prometheus (`prom::PromSource`) or two scrapes of the proxies
/// (`scrape::Rates`).
pub trait Source {
    /// Answers `query` over the series recorded on the `direction` side.
    fn eval(
        &self,
        query: Query,
        direction: Direction,
    ) -> impl Future<Output = anyhow::Result<Vector>> + Send;
}

/// A label's value, empty when the series does not have it (Prometheus leaves empty labels
/// out).
pub fn label<'a>(labels: &'a Labels, name: &str) -> &'a str {
    labels.get(name).map_or("", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_and_latency_promql() {
        assert_eq!(
            EDGE_RESPONSES.promql(Direction::Outbound, Duration::ZERO, None),
            "sum by (src_namespace, src_workload, dst_namespace, dst_workload, classification) \
             (rate(response_total{direction=\"outbound\"}[1ms]))"
        );
        assert_eq!(
            STAT_LATENCY[2].promql(
                Direction::Inbound,
                Duration::from_micros(2600),
                Some("a\\b")
            ),
            "histogram_quantile(0.99, sum by (le, dst_namespace, dst_workload) \
             (rate(response_latency_seconds_bucket{direction=\"inbound\",job=~\"a\\\\b\"}[3ms])))"
        );
    }
}
