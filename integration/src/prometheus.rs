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
//! Queries go through meshctl's Prometheus client ([`meshctl::prom::PromClient`]), so the
//! tests read the API's answers with the very code `meshctl stat --prometheus` uses.
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
use meshctl::prom::PromClient;

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
pub type Sample = meshctl::query::Sample;

/// A Prometheus server scraping the given targets every second; dropping it kills the server and
/// removes its data directory.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    client: PromClient,
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
    /// PromQL, an error while evaluating) is an error carrying Prometheus's message, and an
    /// answer that is not the API's JSON is an error that quotes it.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.client.query(promql))
            .await
            .map_err(|_| anyhow!("query {promql:?}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("query {promql:?}"))
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
        let client = PromClient::new(&format!("http://{addr}"))?;
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
            client,
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
