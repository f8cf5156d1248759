//! Hostile input against the mesh-ingress binary, run as its own process (so that 10,000
//! connections fit in each side's file descriptors): a ClientHello with no SNI and no default
//! certificate, garbage bytes, a slow-loris TLS handshake and slow-loris headers, oversized
//! headers, 10,000 idle TLS connections. Each is refused or closed with its reason counted,
//! and the ingress serves a real request after every one of them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use mesh_integration::edge::{WebCa, tls_to};
use mesh_integration::{free_port, named_backend, scrape_metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The ingress binary, killed when dropped.
struct Ingress {
    child: tokio::process::Child,
    https: SocketAddr,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Ingress {
    /// `ingress_connection_refused_total{reason}`.
    async fn refused(&self, reason: &str) -> u64 {
        let (_, metrics) = scrape_metrics(self.admin, None).await.unwrap();
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!(
                    "ingress_connection_refused_total{{reason=\"{reason}\"}} "
                ))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Waits (at most `within`) until `reason` has been counted `n` times; the count.
    async fn wait_refused(&self, reason: &str, n: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let count = self.refused(reason).await;
            if count >= n || Instant::now() > deadline {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Resident and peak memory, KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let pid = self.child.id().unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

async fn start(ca: &WebCa, backend: SocketAddr, dir: &Path) -> Ingress {
    let (crt, key) = ca.issue("edge", &["edge.example.test"]).unwrap();
    let (https, http, admin) = (free_port(), free_port(), free_port());
    let toml = format!(
        r#"
log = "warn"
[admin]
listen = "127.0.0.1:{admin}"
[runtime]
threads = 1
shutdown_grace = "1s"
[server]
header_read_timeout = "15s"
max_header_bytes = 16384
max_connections = 20000
[https]
listen = "127.0.0.1:{https}"
handshake_timeout = "1s"
[[https.certificates]]
cert = "{}"
key = "{}"
[http]
listen = "127.0.0.1:{http}"
[edge]
access_log = false
[[routes]]
backends = [{{ service = "hello:80" }}]
[[services]]
authority = "hello:80"
endpoints = ["{backend}"]
plaintext = true
"#,
        crt.display(),
        key.display(),
    );
    let file = dir.join("ingress.toml");
    std::fs::write(&file, toml).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-ingress"))
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let ingress = Ingress {
        child,
        https: SocketAddr::from(([127, 0, 0, 1], https)),
        http: SocketAddr::from(([127, 0, 0, 1], http)),
        admin: SocketAddr::from(([127, 0, 0, 1], admin)),
    };
    assert!(
        mesh_integration::mtls::wait_ready(ingress.admin).await,
        "the ingress never became ready"
    );
    ingress
}

/// A real request over TLS: 200 from the backend.
async fn serves(ingress: &Ingress, config: Arc<rustls::ClientConfig>) {
    let (tls, _) = tls_to(ingress.https, "edge.example.test", config)
        .await
        .unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let rsp = tx
        .send_request(
            http::Request::get("/")
                .header("host", "edge.example.test")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
}

/// Whether the server closed `stream` (reads EOF or an error) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Raises this process's open-file limit to its hard limit; the limit now.
fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_refused_with_reasons_and_the_ingress_keeps_serving() {
    let ca = WebCa::new().unwrap();
    let backend = named_backend("hello").await.unwrap();
    let ingress = start(&ca, backend, &ca.dir).await;
    let config = ca.client_config(&[b"http/1.1"]).unwrap();
    serves(&ingress, config.clone()).await;

    // A ClientHello with no SNI, and no default certificate: refused.
    let mut no_sni = (*config).clone();
    no_sni.enable_sni = false;
    let refused = tls_to(ingress.https, "edge.example.test", Arc::new(no_sni)).await;
    assert!(refused.is_err(), "a client without SNI got a certificate");
    assert_eq!(
        ingress
            .wait_refused("unknown-sni", 1, Duration::from_secs(5))
            .await,
        1
    );

    // A load balancer's TCP health check (connect, close) is no refusal.
    drop(TcpStream::connect(ingress.https).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Garbage on the TLS port.
    let mut garbage = TcpStream::connect(ingress.https).await.unwrap();
    garbage.write_all(&[0x42; 512]).await.unwrap();
    assert!(closed_within(&mut garbage, Duration::from_secs(5)).await);
    assert_eq!(
        ingress
            .wait_refused("not-tls", 1, Duration::from_secs(5))
            .await,
        1
    );

    // Slow loris, TLS: half a ClientHello, then nothing.
    let mut slow = TcpStream::connect(ingress.https).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)).await,
        "a stalled handshake stays open"
    );
    assert_eq!(
        ingress
            .wait_refused("handshake-timeout", 1, Duration::from_secs(5))
            .await,
        1
    );

    // Slow loris, HTTP: a request line and one header, then nothing.
    let mut slow = TcpStream::connect(ingress.http).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: edge.example.test\r\n")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(30)).await,
        "stalled headers stay open"
    );
    assert!(
        ingress
            .wait_refused("header-timeout", 1, Duration::from_secs(5))
            .await
            >= 1
    );

    // Oversized headers: 64 KiB of one header, over the 16 KiB limit.
    let mut big = TcpStream::connect(ingress.http).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: edge.example.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = big.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        ingress
            .wait_refused("headers-too-large", 1, Duration::from_secs(5))
            .await,
        1
    );
    serves(&ingress, config.clone()).await;

    // 10,000 idle TLS connections (fewer if this machine's file limit cannot hold them).
    let limit = raise_fd_limit();
    let wanted: usize = 10_000;
    let idle_count = wanted.min(limit.saturating_sub(500) as usize);
    if idle_count < wanted {
        eprintln!("the open-file limit is {limit}: {idle_count} idle connections, not {wanted}");
    }
    let (rss_before, _) = ingress.memory_kib();
    let timeouts_before = ingress.refused("header-timeout").await;
    let started = Instant::now();
    let mut idle = Vec::with_capacity(idle_count);
    let mut opening = futures_batch(idle_count, ingress.https, config.clone());
    while let Some(batch) = opening.next_batch().await {
        idle.extend(batch);
    }
    let opened = idle.len();
    let (rss_held, _) = ingress.memory_kib();
    eprintln!(
        "{opened} idle TLS connections opened in {:?}; ingress RSS {rss_before} KiB before, {rss_held} KiB with them open ({} bytes each)",
        started.elapsed(),
        (rss_held.saturating_sub(rss_before) * 1024) / opened.max(1) as u64
    );
    assert_eq!(opened, idle_count, "every handshake completed");
    // The ingress serves while they are open, and closes them for their silence.
    serves(&ingress, config.clone()).await;
    let closed = ingress
        .wait_refused(
            "header-timeout",
            timeouts_before + opened as u64,
            Duration::from_secs(120),
        )
        .await
        - timeouts_before;
    let (rss_after, hwm) = ingress.memory_kib();
    eprintln!(
        "{closed} of them closed by the header timeout; RSS {rss_after} KiB after, peak {hwm} KiB"
    );
    assert!(
        closed >= opened as u64,
        "{closed} of {opened} idle connections closed"
    );
    drop(idle);
    serves(&ingress, config).await;
}

/// Opens `n` TLS connections to `addr`, 250 at a time.
fn futures_batch(n: usize, addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Batches {
    Batches {
        left: n,
        addr,
        config,
    }
}

struct Batches {
    left: usize,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
}

type Idle = tokio_rustls::client::TlsStream<TcpStream>;

impl Batches {
    async fn next_batch(&mut self) -> Option<Vec<Idle>> {
        if self.left == 0 {
            return None;
        }
        let size = self.left.min(250);
        self.left -= size;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..size {
            let config = self.config.clone();
            let addr = self.addr;
            tasks.spawn(async move { tls_to(addr, "edge.example.test", config).await });
        }
        let mut batch = Vec::with_capacity(size);
        while let Some(done) = tasks.join_next().await {
            if let Ok(Ok((tls, _))) = done {
                batch.push(tls);
            }
        }
        Some(batch)
    }
}
