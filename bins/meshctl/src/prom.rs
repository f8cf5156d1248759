//! Prometheus as the source: PromQL instant queries on `URL/api/v1/query`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use mesh_metrics::exposition::{self, Labels};
use serde::Deserialize;

use crate::report::{Direction, LATENCY_BUCKET, Query, Vector};

/// A Prometheus server's query API.
#[derive(Debug)]
pub(crate) struct Prometheus {
    /// What the user gave, for messages.
    url: String,
    /// `host:port`.
    authority: String,
    /// The path before `/api/v1/query`, without a trailing slash (`/prometheus`, or empty).
    prefix: String,
    window: Duration,
    job: Option<String>,
}

impl Prometheus {
    /// Checks `url`: `http://host[:port][/path]`.
    pub(crate) fn new(url: &str, window: Duration, job: Option<String>) -> anyhow::Result<Self> {
        let bad = |why: &str| anyhow!("bad Prometheus URL {url:?}: {why}");
        let uri: http::Uri = url
            .parse()
            .map_err(|e| bad(&format!("{e} (expected http://host:port)")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported; use an http:// URL (kubectl port-forward, say)",
                ));
            }
            Some(other) => return Err(bad(&format!("unsupported scheme {other:?}"))),
            None => return Err(bad("no scheme (expected http://host:port)")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported"));
        }
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if uri.query().is_some() {
            return Err(bad("give the server's base URL, without a query"));
        }
        let port = authority.port_u16().unwrap_or(80);
        Ok(Self {
            url: url.to_owned(),
            authority: format!("{}:{port}", authority.host()),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            window,
            job,
        })
    }

    /// The PromQL for `query`.
    pub(crate) fn promql(&self, query: Query, direction: Direction) -> String {
        let mut selector = format!("direction=\"{}\"", direction.as_str());
        if let Some(job) = &self.job {
            let _ = write!(selector, ",job=~\"{}\"", escape(job));
        }
        let window = format!(
            "{}ms",
            (self.window.as_secs_f64() * 1000.0).round().max(1.0)
        );
        match query {
            Query::Sum { metric, by } => format!(
                "sum by ({}) (rate({metric}{{{selector}}}[{window}]))",
                by.join(", ")
            ),
            Query::Quantile { q, by } => format!(
                "histogram_quantile({q}, sum by (le, {}) (rate({LATENCY_BUCKET}{{{selector}}}[{window}])))",
                by.join(", ")
            ),
        }
    }

    /// Runs `query` as an instant query.
    pub(crate) async fn eval(&self, query: Query, direction: Direction) -> anyhow::Result<Vector> {
        let promql = self.promql(query, direction);
        let path = format!("{}/api/v1/query?query={}", self.prefix, url_encode(&promql));
        let fetched = crate::http::get(&self.authority, &path, "application/json")
            .await
            .with_context(|| format!("cannot query Prometheus at {}", self.url))?;
        parse_response(fetched.status, &fetched.body)
            .with_context(|| format!("Prometheus at {}, query {promql}", self.url))
    }
}

/// A double-quoted PromQL string's escapes.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Percent-encoding of everything but the unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct ApiResponse {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: Labels,
    value: (serde_json::Value, String),
}

/// The vector in an answer of the query API.
pub(crate) fn parse_response(status: http::StatusCode, body: &[u8]) -> anyhow::Result<Vector> {
    let parsed: Result<ApiResponse, _> = serde_json::from_slice(body);
    let response = match parsed {
        Ok(response) => response,
        Err(e) => {
            let text = String::from_utf8_lossy(body);
            let excerpt: String = text.trim().chars().take(200).collect();
            if status.is_success() {
                bail!("the answer is not the query API's JSON ({e}): {excerpt}");
            }
            bail!("answered {status} (is the URL Prometheus's base URL?): {excerpt}");
        }
    };
    if response.status != "success" || !status.is_success() {
        bail!(
            "answered {status}: {}: {}",
            response.error_type.as_deref().unwrap_or("error"),
            response.error.as_deref().unwrap_or("(no message)")
        );
    }
    let data = response
        .data
        .ok_or_else(|| anyhow!("a successful answer without data"))?;
    if data.result_type != "vector" {
        bail!("expected a vector, got a {}", data.result_type);
    }
    let samples: Vec<VectorSample> =
        serde_json::from_value(data.result).context("reading the vector")?;
    samples
        .into_iter()
        .map(|s| {
            let value = exposition::parse_value(&s.value.1)
                .ok_or_else(|| anyhow!("bad sample value {:?}", s.value.1))?;
            Ok((s.metric, value))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails loudly")]
mod tests {
    use super::*;

    fn prom(url: &str) -> anyhow::Result<Prometheus> {
        Prometheus::new(url, Duration::from_secs(60), None)
    }

    #[test]
    fn urls() {
        let p = prom("http://prometheus:9090").unwrap();
        assert_eq!(
            (p.authority.as_str(), p.prefix.as_str()),
            ("prometheus:9090", "")
        );
        let p = prom("http://127.0.0.1/prom/").unwrap();
        assert_eq!(
            (p.authority.as_str(), p.prefix.as_str()),
            ("127.0.0.1:80", "/prom")
        );
        for bad in [
            "prometheus:9090",
            "https://p:9090",
            "ftp://p",
            "http://",
            "http://a b",
        ] {
            let err = prom(bad).err().unwrap().to_string();
            assert!(err.starts_with("bad Prometheus URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn promql() {
        let p = Prometheus::new(
            "http://p:9090",
            Duration::from_millis(1500),
            Some("mesh\"proxy".to_owned()),
        )
        .unwrap();
        assert_eq!(
            p.promql(
                Query::Sum {
                    metric: "request_total",
                    by: &["dst_namespace", "dst_workload"]
                },
                Direction::Outbound
            ),
            "sum by (dst_namespace, dst_workload) \
             (rate(request_total{direction=\"outbound\",job=~\"mesh\\\"proxy\"}[1500ms]))"
        );
        let p = prom("http://p:9090").unwrap();
        assert_eq!(
            p.promql(
                Query::Quantile {
                    q: 0.95,
                    by: &["dst_workload"]
                },
                Direction::Inbound
            ),
            "histogram_quantile(0.95, sum by (le, dst_workload) \
             (rate(response_latency_seconds_bucket{direction=\"inbound\"}[60000ms])))"
        );
        assert_eq!(url_encode("a b{\"c\"}[1s]"), "a%20b%7B%22c%22%7D%5B1s%5D");
    }

    #[test]
    fn responses() {
        let ok = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"dst_workload":"api"},"value":[1700000000.5,"12.5"]},
            {"metric":{},"value":[1700000000.5,"NaN"]}]}}"#;
        let v = parse_response(http::StatusCode::OK, ok).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0["dst_workload"], "api");
        assert_eq!(v[0].1, 12.5);
        assert!(v[1].1.is_nan());

        let err = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        let e = parse_response(http::StatusCode::BAD_REQUEST, err).unwrap_err();
        assert_eq!(
            e.to_string(),
            "answered 400 Bad Request: bad_data: parse error"
        );

        let e = parse_response(http::StatusCode::NOT_FOUND, b"404 page not found").unwrap_err();
        assert!(e.to_string().contains("404 Not Found"), "{e}");

        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(parse_response(http::StatusCode::OK, matrix).is_err());
    }
}
