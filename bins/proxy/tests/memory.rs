//! Memory under a burst of large requests to a slow backend: 40 connections x 100 streams,
//! each a 64 KiB body on a route with retries. Every body is small enough to keep for a
//! retry, but the process keeps at most `runtime.retry_buffer_limit` bytes of them in all:
//! the proxy binary's peak RSS grows by at most that limit (and the retry state of the
//! requests in flight) over the same burst on a route without retries, where without the
//! limit it grows by most of the 250 MiB. Small receive windows keep the bytes in flight
//! from hiding the difference.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");
const CONNECTIONS: usize = 40;
const STREAMS: usize = 100;
const BODY: usize = 64 * 1024;
const LIMIT: usize = 16 * 1024 * 1024;

/// The last error a backend connection ended with: a 502 in the burst says what the backend saw.
static BACKEND_ERROR: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// An h2c backend that reads each request's body, then answers after two seconds.
async fn slow_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    },
                );
                // Every request of the burst at once: none waits for a stream slot.
                let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(10_000)
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                if let Err(e) = served {
                    let why = format!("{e:?}");
                    eprintln!("backend connection ended with an error: {why}");
                    if let Ok(mut last) = BACKEND_ERROR.lock() {
                        *last = Some(why);
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// VmHWM and VmRSS of `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the proxy with `retry` (TOML of the service's retry, or nothing), sends the burst,
/// and gives the growth of its peak RSS over its RSS before the burst, in KiB.
async fn burst(backend: SocketAddr, retry: &str, limit: usize) -> u64 {
    let (outbound, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("mesh-memory-{}-{outbound}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "log = \"warn\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [runtime]\nthreads = 1\nretry_buffer_limit = {limit}\n\
             [server]\ninitial_stream_window = 65536\ninitial_connection_window = 262144\n\
             [outbound]\nlisten = \"127.0.0.1:{outbound}\"\n\
             [[outbound.services]]\nauthority = \"slow.test:80\"\nendpoints = [\"{backend}\"]\n{retry}"
        ),
    )
    .unwrap();
    let proxy = Proxy(
        Command::new(BIN)
            .args(["--config", config.to_str().unwrap()])
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let outbound: SocketAddr = ([127, 0, 0, 1], outbound).into();
    let body = Bytes::from(vec![b'x'; BODY]);
    let mut senders = Vec::new();
    for _ in 0..CONNECTIONS {
        let tcp = loop {
            match tokio::net::TcpStream::connect(outbound).await {
                Ok(tcp) => break tcp,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        senders.push(sender);
    }
    let request = |body: Bytes| {
        http::Request::post("http://slow.test/upload")
            .body(Full::new(body))
            .unwrap()
    };
    // One request first: everything the burst needs besides bodies is set up.
    let rsp = senders[0]
        .send_request(request(body.clone()))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let (_, before) = memory_kib(proxy.0.id());
    let mut calls = Vec::new();
    for sender in &senders {
        for _ in 0..STREAMS {
            let mut sender = sender.clone();
            let req = request(body.clone());
            calls.push(tokio::spawn(async move {
                let rsp = sender.send_request(req).await?;
                let status = rsp.status();
                let why = rsp.headers().get("mesh-proxy-error").cloned();
                rsp.into_body().collect().await?;
                Ok::<_, hyper::Error>((status, why))
            }));
        }
    }
    let started = std::time::Instant::now();
    for call in calls {
        let (status, why) = tokio::time::timeout(Duration::from_secs(120), call)
            .await
            .expect("a request hung")
            .unwrap()
            .unwrap();
        assert_eq!(
            status,
            200,
            "{why:?} after {:?}; the backend's last connection error: {:?}",
            started.elapsed(),
            BACKEND_ERROR.lock().map(|e| e.clone()).unwrap_or_default()
        );
    }
    eprintln!("burst served in {:?}", started.elapsed());
    let (peak, _) = memory_kib(proxy.0.id());
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    peak.saturating_sub(before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_at_most_the_buffer_limit_of_request_bodies() {
    const RETRY: &str = "retry = { max_retries = 1, conditions = [\"gateway-error\"], retry_non_idempotent = true }\n";
    let backend = slow_backend().await;
    let plain = burst(backend, "", LIMIT).await;
    let retried = burst(backend, RETRY, LIMIT).await;
    let unbounded = burst(backend, RETRY, usize::MAX / 2).await;
    let limit_kib = (LIMIT / 1024) as u64;
    eprintln!(
        "{CONNECTIONS} x {STREAMS} x {} KiB bodies ({} MiB): peak RSS growth {plain} KiB without \
         retries, {retried} KiB with retries (limit {limit_kib} KiB), {unbounded} KiB with retries \
         and no limit",
        BODY / 1024,
        CONNECTIONS * STREAMS * BODY / (1024 * 1024)
    );
    // Besides the bodies it keeps, a request with retries holds its retry state (its head,
    // kept for the next attempt, and the retry loop): up to 4 KiB each, for the 4,000 in
    // flight.
    let bookkeeping = (4 * CONNECTIONS * STREAMS) as u64;
    assert!(
        retried <= plain + limit_kib + bookkeeping,
        "with retries the peak grew {retried} KiB: more than {plain} KiB (no retries) + \
         {limit_kib} KiB (the limit) + {bookkeeping} KiB (retry state)"
    );
    // And the limit is what holds it: without one, the bodies kept for retries show.
    assert!(
        unbounded > plain + 4 * limit_kib,
        "without a limit the peak grew only {unbounded} KiB"
    );
}
