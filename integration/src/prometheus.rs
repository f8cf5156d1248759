//! A real Prometheus server for the end-to-end tests: it scrapes proxies' admin listeners every
//! second and answers instant PromQL queries, so a test can check the metrics the way an
//! operator would see them, not only as exposition text.
//!
//! [`Prometheus::start`] runs the `prometheus` binary (Debian's package `prometheus`, which
//! `.ci/run` and `scripts/test.sh` install) on a free port of 127.0.0.1 with a fresh data
//! directory and a generated configuration; dropping the [`Prometheus`] kills the server and
//! removes the directory. Every wait is bounded. A missing binary is an error that says so: a
//! test that needs Prometheus fails, it is never skipped.
//!
//! ```no_run
//! # async fn f(proxy: mesh_integration::RunningProxy) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use mesh_integration::prometheus::Prometheus;
//!
//! let prometheus = Prometheus::start(&[proxy.admin]).await?;
//! prometheus.wait_for_targets(Duration::from_secs(30)).await?;
//! for (labels, value) in prometheus.query("sum by (direction) (request_total)").await? {
//!     println!("{labels:?} {value}");
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{ErrorKind, Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty};

/// The Prometheus binary, looked up on `PATH`.
const BINARY: &str = "prometheus";
/// How long the server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The pause between two readiness or target checks.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// The bound of one HTTP exchange with the server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Starts tried when the server exits at once (the free port was taken meanwhile).
const START_ATTEMPTS: usize = 3;
/// How much of the server's log an error message carries.
const LOG_TAIL_BYTES: u64 = 4096;

/// One element of a query's result: the series' labels (the metric name, when the result keeps
/// it, is `__name__`) and its value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A Prometheus server scraping the given targets every second; dropping it kills the server and
/// removes its data directory.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    targets: Vec<SocketAddr>,
}

impl Prometheus {
    /// Starts a server that scrapes `/metrics` of every target (admin listeners) every second,
    /// and waits until it is ready (`GET /-/ready` answers 200).
    ///
    /// Fails with a clear message when the `prometheus` binary is not installed, when the server
    /// exits during its start (its log is in the error), or when it is not ready in time.
    pub async fn start(targets: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let mut prometheus = Self::spawn(targets)?;
            match prometheus.wait_ready().await {
                Ok(()) => return Ok(prometheus),
                Err(StartError::Exited(e)) => last_error = Some(e),
                Err(StartError::Fatal(e)) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("Prometheus did not start")))
    }

    /// The server's HTTP address (its UI and API).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The scraped targets.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.targets
    }

    /// The end of the server's log (stdout and stderr), for error messages.
    pub fn log_tail(&self) -> String {
        read_tail(&self.dir.join("prometheus.log"))
    }

    /// Runs an instant query (`GET /api/v1/query`) and returns its result: for a vector, one
    /// element per series; for a scalar, one element without labels. A failed query (bad
    /// PromQL, an error while evaluating) is an error carrying Prometheus's message.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (status, body) = get(self.addr, &path)
            .await
            .with_context(|| format!("query {promql:?}"))?;
        let json = Json::parse(&body)
            .with_context(|| format!("query {promql:?}: HTTP {status}, body {body:?}"))?;
        if json.get("status").and_then(Json::as_str) != Some("success") {
            let kind = json.get("errorType").and_then(Json::as_str).unwrap_or("?");
            let error = json.get("error").and_then(Json::as_str).unwrap_or(&body);
            bail!("query {promql:?} failed: HTTP {status}, {kind}: {error}");
        }
        let data = json
            .get("data")
            .ok_or_else(|| anyhow!("query {promql:?}: no data in {body:?}"))?;
        let result = data
            .get("result")
            .ok_or_else(|| anyhow!("query {promql:?}: no result in {body:?}"))?;
        match data.get("resultType").and_then(Json::as_str) {
            Some("vector") => {
                let Json::Arr(elements) = result else {
                    bail!("query {promql:?}: the vector is not an array in {body:?}");
                };
                let mut samples = Vec::with_capacity(elements.len());
                for element in elements {
                    let labels = labels(element.get("metric"))
                        .with_context(|| format!("query {promql:?}: in {body:?}"))?;
                    let value = sample_value(element.get("value"))
                        .with_context(|| format!("query {promql:?}: in {body:?}"))?;
                    samples.push((labels, value));
                }
                Ok(samples)
            }
            Some("scalar") => {
                let value = sample_value(Some(result))
                    .with_context(|| format!("query {promql:?}: in {body:?}"))?;
                Ok(vec![(BTreeMap::new(), value)])
            }
            other => bail!("query {promql:?}: result type {other:?} is not supported: {body:?}"),
        }
    }

    /// Waits until Prometheus has scraped every target successfully (`up` is 1 for each), so
    /// that later counts start from a sample taken before the test's traffic.
    pub async fn wait_for_targets(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() / POLL_INTERVAL.as_millis() + 1;
        let mut last = String::from("no answer yet");
        for _ in 0..max_polls {
            match self.query("up").await {
                Ok(samples) => {
                    let up = |target: &SocketAddr| {
                        let instance = target.to_string();
                        samples.iter().any(|(labels, value)| {
                            labels.get("instance") == Some(&instance) && *value == 1.0
                        })
                    };
                    if self.targets.iter().all(up) {
                        return Ok(());
                    }
                    last = format!("up = {samples:?}");
                }
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        bail!(
            "Prometheus did not scrape every target ({:?}) within {timeout:?}; last: {last}\n\
             Prometheus log:\n{}",
            self.targets,
            self.log_tail()
        )
    }

    /// Writes the configuration and starts the server on a port that was free a moment ago.
    fn spawn(targets: &[SocketAddr]) -> anyhow::Result<Self> {
        let dir = fresh_dir()?;
        // From here on, the directory is removed on any error: `Prometheus` is built as soon
        // as the child runs, and a guard covers the steps before.
        let mut guard = DirGuard(Some(dir.clone()));
        let addr = free_port()?;
        let config = dir.join("prometheus.yml");
        fs::write(&config, config_yaml(targets))
            .with_context(|| format!("writing {}", config.display()))?;
        let log_path = dir.join("prometheus.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("duplicating {}", log_path.display()))?;
        let child = Command::new(BINARY)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=info")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == ErrorKind::NotFound => bail!(
                "the Prometheus server `{BINARY}` is not installed (not on PATH): these tests \
                 need it; install Debian's package `prometheus` (`apt-get install prometheus`; \
                 .ci/run and scripts/test.sh do)"
            ),
            Err(e) => return Err(e).with_context(|| format!("starting `{BINARY}`")),
        };
        guard.0 = None;
        Ok(Self {
            child,
            addr,
            dir,
            targets: targets.to_vec(),
        })
    }

    /// Polls `GET /-/ready` until it answers 200, the server exits or [`READY_TIMEOUT`] passes.
    async fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let max_polls = READY_TIMEOUT.as_millis() / POLL_INTERVAL.as_millis() + 1;
        let mut last = String::from("no answer yet");
        for _ in 0..max_polls {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    return Err(StartError::Exited(anyhow!(
                        "Prometheus exited during its start ({status}); its log:\n{}",
                        self.log_tail()
                    )));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(StartError::Fatal(
                        anyhow!(e).context("checking the Prometheus process"),
                    ));
                }
            }
            match get(self.addr, "/-/ready").await {
                Ok((StatusCode::OK, _)) => return Ok(()),
                Ok((status, body)) => last = format!("HTTP {status}: {}", body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Err(StartError::Fatal(anyhow!(
            "Prometheus on {} was not ready within {READY_TIMEOUT:?}; last: {last}\nits log:\n{}",
            self.addr,
            self.log_tail()
        )))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Why a start attempt failed: an early exit may be a lost port race and is retried.
enum StartError {
    Exited(anyhow::Error),
    Fatal(anyhow::Error),
}

/// Removes a directory when dropped, unless disarmed.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The generated configuration: one job scraping every target each second.
fn config_yaml(targets: &[SocketAddr]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: mesh\n    metrics_path: /metrics\n    static_configs:\n\
         \x20     - targets: [{}]\n",
        targets.join(", ")
    )
}

/// A new, empty directory under the system's temporary directory.
fn fresh_dir() -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let base = std::env::temp_dir();
    let mut last = None;
    for _ in 0..16 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!(
            "mesh-prometheus-{}-{n}-{nanos}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    Err(anyhow!(
        "no fresh directory under {}: {last:?}",
        base.display()
    ))
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    listener.local_addr().context("finding a free port")
}

/// The last [`LOG_TAIL_BYTES`] of a file, or why it could not be read.
fn read_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// `GET path` on `addr` over a new HTTP/1.1 connection: the status and the body as text.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, String)> {
    let exchange = async {
        let mut client = crate::h1_client::<Empty<Bytes>>(addr).await?;
        let req = Request::get(path)
            .header(header::HOST, addr.to_string())
            .body(Empty::new())?;
        let rsp = client.send_request(req).await?;
        let status = rsp.status();
        let body = rsp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("GET http://{addr}{path}: no answer within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A series' labels: a JSON object of strings.
fn labels(metric: Option<&Json>) -> anyhow::Result<BTreeMap<String, String>> {
    let Some(Json::Obj(fields)) = metric else {
        bail!("a result element without a `metric` object");
    };
    fields
        .iter()
        .map(|(name, value)| match value {
            Json::Str(value) => Ok((name.clone(), value.clone())),
            other => Err(anyhow!("label {name} is not a string: {other:?}")),
        })
        .collect()
}

/// A sample's value: `[time, "value"]`, the value a string (`"0.9"`, `"NaN"`, `"+Inf"`).
fn sample_value(value: Option<&Json>) -> anyhow::Result<f64> {
    match value {
        Some(Json::Arr(pair)) if pair.len() == 2 => match &pair[1] {
            Json::Str(text) => text
                .parse::<f64>()
                .with_context(|| format!("sample value {text:?}")),
            other => bail!("a sample value that is not a string: {other:?}"),
        },
        other => bail!("a sample that is not [time, value]: {other:?}"),
    }
}

/// A JSON value: just enough of JSON (RFC 8259) for the query API's answers.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

/// How deeply JSON values may nest (the query API's answers nest five deep).
const MAX_DEPTH: usize = 32;

impl Json {
    /// Parses a whole document.
    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut parser = JsonParser {
            bytes: text.as_bytes(),
            pos: 0,
        };
        let value = parser.value(0)?;
        parser.skip_ws();
        if parser.pos != parser.bytes.len() {
            bail!("JSON: trailing characters at byte {}", parser.pos);
        }
        Ok(value)
    }

    /// An object's field.
    fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// A string's text.
    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A recursive-descent JSON parser over UTF-8 text.
struct JsonParser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl JsonParser<'_> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> anyhow::Result<u8> {
        let byte = self
            .peek()
            .ok_or_else(|| anyhow!("JSON: unexpected end of input"))?;
        self.pos += 1;
        Ok(byte)
    }

    fn expect(&mut self, want: u8) -> anyhow::Result<()> {
        let at = self.pos;
        let got = self.next()?;
        if got != want {
            bail!(
                "JSON: expected {:?} at byte {at}, found {:?}",
                char::from(want),
                char::from(got)
            );
        }
        Ok(())
    }

    fn literal(&mut self, word: &str, value: Json) -> anyhow::Result<Json> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            bail!("JSON: unexpected token at byte {}", self.pos)
        }
    }

    fn value(&mut self, depth: usize) -> anyhow::Result<Json> {
        if depth > MAX_DEPTH {
            bail!("JSON: nested deeper than {MAX_DEPTH}");
        }
        self.skip_ws();
        match self.peek() {
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(other) => bail!(
                "JSON: unexpected {:?} at byte {}",
                char::from(other),
                self.pos
            ),
            None => bail!("JSON: unexpected end of input"),
        }
    }

    fn object(&mut self, depth: usize) -> anyhow::Result<Json> {
        self.expect(b'{')?;
        let mut fields = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Obj(fields));
        }
        // Each pass consumes at least one byte, so the input's length bounds the loop.
        loop {
            self.skip_ws();
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            fields.push((key, value));
            self.skip_ws();
            match self.next()? {
                b',' => {}
                b'}' => return Ok(Json::Obj(fields)),
                other => bail!(
                    "JSON: expected ',' or '}}' at byte {}, found {:?}",
                    self.pos - 1,
                    char::from(other)
                ),
            }
        }
    }

    fn array(&mut self, depth: usize) -> anyhow::Result<Json> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Arr(items));
        }
        // Each pass consumes at least one byte, so the input's length bounds the loop.
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.next()? {
                b',' => {}
                b']' => return Ok(Json::Arr(items)),
                other => bail!(
                    "JSON: expected ',' or ']' at byte {}, found {:?}",
                    self.pos - 1,
                    char::from(other)
                ),
            }
        }
    }

    fn number(&mut self) -> anyhow::Result<Json> {
        let start = self.pos;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.bytes[start..self.pos])?;
        let number = text
            .parse::<f64>()
            .with_context(|| format!("JSON: number {text:?} at byte {start}"))?;
        Ok(Json::Num(number))
    }

    fn hex4(&mut self) -> anyhow::Result<u32> {
        let mut code = 0;
        for _ in 0..4 {
            let digit = char::from(self.next()?)
                .to_digit(16)
                .ok_or_else(|| anyhow!("JSON: bad \\u escape at byte {}", self.pos - 1))?;
            code = code * 16 + digit;
        }
        Ok(code)
    }

    fn string(&mut self) -> anyhow::Result<String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        // Each pass consumes at least one byte, so the input's length bounds the loop.
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' => {
                    let escaped = match self.next()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let high = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&high) {
                                self.expect(b'\\')?;
                                self.expect(b'u')?;
                                let low = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    bail!("JSON: unpaired surrogate at byte {}", self.pos);
                                }
                                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                high
                            };
                            char::from_u32(code).ok_or_else(|| {
                                anyhow!("JSON: bad code point {code:#x} at byte {}", self.pos)
                            })?
                        }
                        other => bail!(
                            "JSON: bad escape {:?} at byte {}",
                            char::from(other),
                            self.pos - 1
                        ),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(escaped.encode_utf8(&mut buf).as_bytes());
                }
                // The input is UTF-8 and splits only at ASCII bytes, so raw bytes stay valid.
                byte => out.push(byte),
            }
        }
        String::from_utf8(out).context("JSON: a string is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_query_answer() -> anyhow::Result<()> {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"up","instance":"127.0.0.1:1","q":"a\"b\\c\u00e9\ud83d\ude00"},
             "value":[1700000000.123,"1"]},
            {"metric":{},"value":[1.5e9,"NaN"]}]}}"#;
        let json = Json::parse(body)?;
        assert_eq!(json.get("status").and_then(Json::as_str), Some("success"));
        let data = json.get("data").ok_or_else(|| anyhow!("data"))?;
        let Some(Json::Arr(result)) = data.get("result") else {
            bail!("result");
        };
        assert_eq!(result.len(), 2);
        let labels = labels(result[0].get("metric"))?;
        assert_eq!(labels["q"], "a\"b\\c\u{e9}\u{1f600}");
        assert_eq!(sample_value(result[0].get("value"))?, 1.0);
        assert!(sample_value(result[1].get("value"))?.is_nan());
        assert!(Json::parse("{\"a\":1,}").is_err());
        assert!(Json::parse("[1] x").is_err());
        Ok(())
    }

    #[test]
    fn percent_encodes_promql() {
        assert_eq!(
            percent_encode("sum by (a) (x{b=\"c\"}[30s])"),
            "sum%20by%20%28a%29%20%28x%7Bb%3D%22c%22%7D%5B30s%5D%29"
        );
    }
}
