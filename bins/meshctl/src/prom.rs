//! Prometheus's HTTP API as a source: [`PromClient`] runs instant PromQL queries on
//! `URL/api/v1/query` and reads the answers with [`parse_response`]; [`PromSource`] answers
//! meshctl's [`Query`]s with it, over a window and optionally one scrape job.
//!
//! An answer is read with `serde_json`. Anything but a well-formed success holding a vector
//! or a scalar is an [`AnswerError`] that names the problem: the HTTP status, Prometheus's
//! own `errorType` and `error`, or an excerpt of a body that is not the API's JSON.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, anyhow};
use http::StatusCode;
use mesh_metrics::exposition;
use serde::Deserialize;

use crate::query::{Direction, Labels, Query, Source, Vector};

/// How much of an unexpected body an error quotes, in characters.
const EXCERPT_CHARS: usize = 200;

/// A Prometheus server's query API, at `http://host[:port][/path]`.
#[derive(Clone, Debug)]
pub struct PromClient {
    /// What the user gave, for messages.
    url: String,
    /// `host:port`.
    authority: String,
    /// The path before `/api/v1/query`, without a trailing slash (`/prometheus`, or empty).
    prefix: String,
}

impl PromClient {
    /// Checks `url`: `http://host[:port][/path]` (port 80 if left out). https, credentials
    /// and a query string are refused with an error that starts "bad Prometheus URL".
    pub fn new(url: &str) -> anyhow::Result<Self> {
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
        })
    }

    /// The URL this client was made from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `promql` as an instant query: one element per series for a vector, one element
    /// without labels for a scalar. The error names the server and the query, then what
    /// went wrong: the connection, or the [`AnswerError`].
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vector> {
        let path = format!("{}/api/v1/query?query={}", self.prefix, url_encode(promql));
        let fetched = crate::http::get(&self.authority, &path, "application/json")
            .await
            .with_context(|| format!("cannot query Prometheus at {}", self.url))?;
        parse_response(fetched.status, &fetched.body)
            .with_context(|| format!("Prometheus at {}, query {promql}", self.url))
    }
}

/// meshctl's queries answered by Prometheus: rates over `window`, and only the series of
/// the scrape jobs that match `job`, if given.
#[derive(Clone, Debug)]
pub struct PromSource {
    client: PromClient,
    window: Duration,
    job: Option<String>,
}

impl PromSource {
    /// Queries through `client`, with rates over `window`, keeping only the series whose
    /// `job` label matches the regex `job`, if given.
    pub fn new(client: PromClient, window: Duration, job: Option<String>) -> Self {
        Self {
            client,
            window,
            job,
        }
    }

    /// The client.
    pub fn client(&self) -> &PromClient {
        &self.client
    }

    /// The PromQL for `query`.
    pub fn promql(&self, query: Query, direction: Direction) -> String {
        query.promql(direction, self.window, self.job.as_deref())
    }
}

impl Source for PromSource {
    async fn eval(&self, query: Query, direction: Direction) -> anyhow::Result<Vector> {
        self.client.query(&self.promql(query, direction)).await
    }
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

/// Why an answer of the query API gave no vector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    /// An HTTP error whose body is not the API's JSON: likely not Prometheus's base URL.
    #[error("answered {status} (is the URL Prometheus's base URL?): {excerpt}")]
    Http {
        /// The HTTP status.
        status: StatusCode,
        /// The start of the body.
        excerpt: String,
    },
    /// A success whose body is not the API's JSON.
    #[error("the answer is not the query API's JSON ({reason}): {excerpt}")]
    NotJson {
        /// What `serde_json` found wrong.
        reason: serde_json::Error,
        /// The start of the body.
        excerpt: String,
    },
    /// Prometheus refused or failed the query (`"status":"error"`, or an HTTP error).
    #[error("answered {status}: {error_type}: {error}")]
    Failed {
        /// The HTTP status.
        status: StatusCode,
        /// Prometheus's `errorType` (`bad_data`, `execution`, `timeout`...).
        error_type: String,
        /// Prometheus's message.
        error: String,
    },
    /// A success without `data`.
    #[error("a successful answer without data")]
    NoData,
    /// A result that is neither a vector nor a scalar (a matrix, a string).
    #[error("expected a vector or a scalar, got a {0}")]
    ResultType(String),
    /// A result that does not have the shape of its `resultType`.
    #[error("reading the {result_type}: {reason}")]
    BadResult {
        /// `vector` or `scalar`.
        result_type: String,
        /// What `serde_json` found wrong.
        reason: serde_json::Error,
    },
    /// A sample value that is not a number.
    #[error("bad sample value {0:?}")]
    BadValue(String),
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

/// `[time, "value"]`.
type ApiValue = (serde_json::Value, String);

#[derive(Debug, Deserialize)]
struct VectorSample {
    #[serde(default)]
    metric: Labels,
    value: ApiValue,
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .trim()
        .chars()
        .take(EXCERPT_CHARS)
        .collect()
}

fn value(text: &str) -> Result<f64, AnswerError> {
    exposition::parse_value(text).ok_or_else(|| AnswerError::BadValue(text.to_owned()))
}

/// The result in an answer of the query API (`GET /api/v1/query`), given the HTTP status and
/// the body: one element per series for a vector, one element without labels for a scalar.
/// Values are floats, `NaN` and `±Inf` included.
///
/// ```
/// use http::StatusCode;
/// use meshctl::prom::{AnswerError, parse_response};
///
/// let body = br#"{"status":"success","data":{"resultType":"vector",
///     "result":[{"metric":{"dst_workload":"api"},"value":[1700000000,"12.5"]}]}}"#;
/// let vector = parse_response(StatusCode::OK, body)?;
/// assert_eq!(vector[0].0["dst_workload"], "api");
/// assert_eq!(vector[0].1, 12.5);
///
/// let body = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
/// let error = parse_response(StatusCode::BAD_REQUEST, body).unwrap_err();
/// assert!(matches!(error, AnswerError::Failed { .. }));
/// assert_eq!(error.to_string(), "answered 400 Bad Request: bad_data: parse error");
/// # Ok::<(), AnswerError>(())
/// ```
pub fn parse_response(status: StatusCode, body: &[u8]) -> Result<Vector, AnswerError> {
    let response: ApiResponse = match serde_json::from_slice(body) {
        Ok(response) => response,
        Err(reason) if status.is_success() => {
            return Err(AnswerError::NotJson {
                reason,
                excerpt: excerpt(body),
            });
        }
        Err(_) => {
            return Err(AnswerError::Http {
                status,
                excerpt: excerpt(body),
            });
        }
    };
    if response.status != "success" || !status.is_success() {
        return Err(AnswerError::Failed {
            status,
            error_type: response.error_type.unwrap_or_else(|| "error".to_owned()),
            error: response.error.unwrap_or_else(|| "(no message)".to_owned()),
        });
    }
    let ApiData {
        result_type,
        result,
    } = response.data.ok_or(AnswerError::NoData)?;
    let bad_result = |reason| AnswerError::BadResult {
        result_type: result_type.clone(),
        reason,
    };
    match result_type.as_str() {
        "vector" => {
            let samples: Vec<VectorSample> = serde_json::from_value(result).map_err(bad_result)?;
            samples
                .into_iter()
                .map(|s| Ok((s.metric, value(&s.value.1)?)))
                .collect()
        }
        "scalar" => {
            let (_, text): ApiValue = serde_json::from_value(result).map_err(bad_result)?;
            Ok(vec![(Labels::new(), value(&text)?)])
        }
        other => Err(AnswerError::ResultType(other.to_owned())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails loudly")]
mod tests {
    use super::*;

    fn prom(url: &str) -> anyhow::Result<PromClient> {
        PromClient::new(url)
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
        let p = PromSource::new(
            prom("http://p:9090").unwrap(),
            Duration::from_millis(1500),
            Some("mesh\"proxy".to_owned()),
        );
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
        let p = PromSource::new(
            prom("http://p:9090").unwrap(),
            Duration::from_secs(60),
            None,
        );
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

    #[test]
    fn scalars_and_escaped_labels() {
        let ok = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5e9,"+Inf"]}}"#;
        let v = parse_response(StatusCode::OK, ok).unwrap();
        assert_eq!(v, [(Labels::new(), f64::INFINITY)]);
        let ok = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"q":"a\"b\\c\u00e9\ud83d\ude00"},"value":[1,"1"]}]}}"#;
        let v = parse_response(StatusCode::OK, ok).unwrap();
        assert_eq!(v[0].0["q"], "a\"b\\c\u{e9}\u{1f600}");
    }

    #[test]
    fn garbage_is_an_error_that_quotes_it() {
        let e = parse_response(StatusCode::OK, b"<html>not json</html>").unwrap_err();
        assert!(matches!(e, AnswerError::NotJson { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with("the answer is not the query API's JSON (expected value at line 1"),
            "{text}"
        );
        assert!(text.ends_with(": <html>not json</html>"), "{text}");

        let long = "x".repeat(1000);
        let e = parse_response(StatusCode::OK, long.as_bytes()).unwrap_err();
        assert!(e.to_string().len() < 300, "{e}");

        let truncated = br#"{"status":"success","data":{"resultType":"vector","result":["#;
        let e = parse_response(StatusCode::OK, truncated).unwrap_err();
        assert!(
            e.to_string().contains("EOF while parsing"),
            "the reason is named: {e}"
        );
    }

    #[test]
    fn an_error_answer_names_prometheus_reason() {
        // Prometheus answers an error with an HTTP error status; a proxy in between might
        // turn it into 200: the JSON's status still decides.
        let body = br#"{"status":"error","errorType":"execution","error":"query timed out"}"#;
        for status in [StatusCode::UNPROCESSABLE_ENTITY, StatusCode::OK] {
            let e = parse_response(status, body).unwrap_err();
            match &e {
                AnswerError::Failed {
                    status: got,
                    error_type,
                    error,
                } => {
                    assert_eq!(*got, status);
                    assert_eq!(error_type, "execution");
                    assert_eq!(error, "query timed out");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                e.to_string(),
                format!("answered {status}: execution: query timed out")
            );
        }
        let e = parse_response(StatusCode::OK, br#"{"status":"error"}"#).unwrap_err();
        assert_eq!(e.to_string(), "answered 200 OK: error: (no message)");
    }

    #[test]
    fn malformed_results_are_named() {
        let answer = |data: &str| format!(r#"{{"status":"success"{data}}}"#);
        let e = parse_response(StatusCode::OK, answer("").as_bytes()).unwrap_err();
        assert!(matches!(e, AnswerError::NoData), "{e:?}");
        let e = parse_response(
            StatusCode::OK,
            answer(r#","data":{"resultType":"matrix","result":[]}"#).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "expected a vector or a scalar, got a matrix");
        let e = parse_response(
            StatusCode::OK,
            answer(
                r#","data":{"resultType":"vector","result":[{"metric":{"a":1},"value":[1,"1"]}]}"#,
            )
            .as_bytes(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("reading the vector: invalid type: integer `1`"),
            "{e}"
        );
        let e = parse_response(
            StatusCode::OK,
            answer(r#","data":{"resultType":"vector","result":[{"value":[1,"many"]}]}"#).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "bad sample value \"many\"");
        let e = parse_response(
            StatusCode::OK,
            answer(r#","data":{"resultType":"scalar","result":"1"}"#).as_bytes(),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("reading the scalar: "), "{e}");
    }
}
