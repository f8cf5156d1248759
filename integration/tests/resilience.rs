//! Retries and timeouts through the proxy: a backend killed under gRPC load is retried
//! around; retries of an all-failing service stay within the budget; a `grpc-timeout` ends the
//! call with DEADLINE_EXCEEDED and cancels the upstream stream.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_integration::start_proxy_toml;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A gRPC-looking h2c backend that can be killed abruptly (every connection dropped).
struct Backend {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    tasks: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl Backend {
    /// Answers every call with `status` (trailers-only gRPC: `grpc-status` in the headers),
    /// or HTTP 503 when `http_503`.
    async fn start(grpc_status: &'static str, http_503: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let tasks = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (served2, tasks2) = (served.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let served = served2.clone();
                let service = hyper::service::service_fn(move |_req| {
                    served.fetch_add(1, Ordering::Relaxed);
                    async move {
                        let status = if http_503 {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/grpc")
                                .header("grpc-status", grpc_status)
                                .body(Empty::<Bytes>::new())
                                .unwrap(),
                        )
                    }
                });
                tasks2.lock().unwrap().spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            served,
            tasks,
        }
    }

    /// Drops the listener and every connection at once.
    fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

fn proxy_toml(endpoints: &[SocketAddr], retry: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [[outbound.services]]\nauthority = \"greeter:50051\"\nendpoints = [{}]\n{retry}",
        list.join(", ")
    )
}

/// One gRPC-style call; true when it succeeded (HTTP 200 and grpc-status 0).
async fn call(
    tx: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
) -> Result<bool, String> {
    let rsp = tx
        .send_request(
            Request::post("http://greeter:50051/demo.Greeter/SayHello")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let ok_head = rsp.status() == StatusCode::OK;
    let head_status = rsp.headers().get("grpc-status").cloned();
    let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?;
    let status =
        head_status.or_else(|| body.trailers().and_then(|t| t.get("grpc-status").cloned()));
    Ok(ok_head && status.as_ref().is_some_and(|s| s == "0"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_grpc_load_is_retried_around() {
    let backends = [
        Backend::start("0", false).await,
        Backend::start("0", false).await,
        Backend::start("0", false).await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let proxy = start_proxy_toml(&proxy_toml(
        &addrs,
        "[outbound.services.retry]\nretry_non_idempotent = true\n",
    ))
    .await
    .unwrap();
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = JoinSet::new();
    for _ in 0..8 {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let outbound = proxy.outbound;
        load.spawn(async move {
            let mut tx = mesh_integration::h2_client::<Empty<Bytes>>(outbound)
                .await
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                match call(&mut tx).await {
                    Ok(true) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before_kill = ok.load(Ordering::Relaxed);
    backends[1].kill();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let rate = ok as f64 / (ok + failed) as f64;
    eprintln!(
        "killed backend: {ok} ok, {failed} failed ({:.4}% success; {before_kill} before the kill); backend calls {:?}",
        rate * 100.0,
        backends
            .iter()
            .map(|b| b.served.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    );
    assert!(ok > 1000, "too little load to judge: {ok}");
    assert!(
        rate >= 0.999,
        "success rate {rate}: {failed} of {} failed",
        ok + failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_a_failing_service_stay_within_the_budget() {
    let backends = [
        Backend::start("0", true).await,
        Backend::start("0", true).await,
        Backend::start("0", true).await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    // No failure accrual: every endpoint stays in play, so only the budget limits retries.
    let proxy = start_proxy_toml(&proxy_toml(
        &addrs,
        "[outbound.services.retry]\nmax_retries = 3\nconditions = [\"5xx\"]\n\
         [outbound.services.balancer.failure_accrual]\nconsecutive_failures = 0\n",
    ))
    .await
    .unwrap();
    let mut tx = mesh_integration::h2_client::<Empty<Bytes>>(proxy.outbound)
        .await
        .unwrap();
    // Within one budget window (10 s), so that the floor is the window's 100 retries.
    let started = Instant::now();
    let mut requests = 0u64;
    let mut marked = 0;
    while requests < 5000 && started.elapsed() < Duration::from_secs(9) {
        requests += 1;
        let rsp = tx
            .send_request(
                Request::get("http://greeter:50051/")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        marked += u64::from(rsp.headers().contains_key("mesh-retries"));
        let _ = rsp.into_body().collect().await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let upstream: u64 = backends
        .iter()
        .map(|b| b.served.load(Ordering::Relaxed))
        .sum();
    // The budget: retries at most 20% of the requests plus a floor of 10 per second over
    // the 10 s window, i.e. 100 in a run shorter than the window.
    let floor = 100;
    let allowed = requests + requests / 5 + floor;
    eprintln!(
        "budget: {requests} requests in {seconds:.1} s -> {upstream} upstream ({:.3}x), {marked} marked retried; allowed {allowed}",
        upstream as f64 / requests as f64
    );
    assert!(
        upstream <= allowed,
        "{upstream} upstream requests for {requests}: a retry storm"
    );
    assert!(upstream > requests, "no retry at all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_ends_the_call_and_cancels_the_upstream_stream() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    let backend = mesh_integration::start_backend(move |_req| {
        let flag = flag.clone();
        async move {
            // Set when this future is dropped before it finishes: the stream was cancelled.
            struct Guard(Arc<AtomicBool>, bool);
            impl Drop for Guard {
                fn drop(&mut self) {
                    if !self.1 {
                        self.0.store(true, Ordering::Relaxed);
                    }
                }
            }
            let mut guard = Guard(flag, false);
            tokio::time::sleep(Duration::from_secs(1)).await;
            guard.1 = true;
            Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", "0")
                .body(Empty::<Bytes>::new())
                .unwrap()
        }
    })
    .await
    .unwrap();
    let proxy = start_proxy_toml(&proxy_toml(&[backend], "")).await.unwrap();
    let mut tx = mesh_integration::h2_client::<Empty<Bytes>>(proxy.outbound)
        .await
        .unwrap();
    let started = Instant::now();
    let rsp = tx
        .send_request(
            Request::post("http://greeter:50051/demo.Greeter/SayHello")
                .header("content-type", "application/grpc")
                .header("grpc-timeout", "200m")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["grpc-status"], "4", "{:?}", rsp.headers());
    // The deadline is measured (printed below), not asserted: the answer itself says it was
    // the proxy's deadline that ended the call, since the backend never answers before 1 s
    // and the client set no timeout of its own.
    assert!(
        rsp.headers()["mesh-proxy-error"]
            .to_str()
            .unwrap()
            .starts_with("grpc-deadline"),
        "{:?}",
        rsp.headers()
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cancelled.load(Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "the backend's stream was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "grpc-timeout 200m: DEADLINE_EXCEEDED after {took:?}; the backend's stream was cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_posts_are_replayed_and_large_ones_are_not_retried() {
    // Every other request fails with 503; the backend records the bodies it got.
    let calls = Arc::new(AtomicU64::new(0));
    let bodies = Arc::new(std::sync::Mutex::new(Vec::<Bytes>::new()));
    let (calls2, bodies2) = (calls.clone(), bodies.clone());
    let backend = mesh_integration::start_backend(move |req: Request<hyper::body::Incoming>| {
        let (calls, bodies) = (calls2.clone(), bodies2.clone());
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            bodies.lock().unwrap().push(body);
            let n = calls.fetch_add(1, Ordering::Relaxed);
            let status = if n % 2 == 0 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Response::builder()
                .status(status)
                .body(Empty::<Bytes>::new())
                .unwrap()
        }
    })
    .await
    .unwrap();
    let proxy = start_proxy_toml(&proxy_toml(
        &[backend],
        "[outbound.services.retry]\nretry_non_idempotent = true\nconditions = [\"5xx\"]\n",
    ))
    .await
    .unwrap();
    let mut tx = mesh_integration::h2_client::<http_body_util::Full<Bytes>>(proxy.outbound)
        .await
        .unwrap();
    let post = |size: usize| {
        let body: Bytes = (0..size)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        (
            Request::post("http://greeter:50051/upload")
                .body(http_body_util::Full::new(body.clone()))
                .unwrap(),
            body,
        )
    };

    // 10 KiB: the first attempt fails, the retry gets the same bytes and succeeds.
    let (req, sent) = post(10 * 1024);
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["mesh-retries"], "1");
    {
        let got = bodies.lock().unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|b| *b == sent), "a replayed body differs");
    }

    // 100 KiB: over the 64 KiB replay buffer, so the failure is not retried; the backend got
    // every byte once.
    bodies.lock().unwrap().clear();
    let (req, sent) = post(100 * 1024);
    let rsp = tx.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!rsp.headers().contains_key("mesh-retries"));
    {
        let got = bodies.lock().unwrap();
        assert_eq!(got.len(), 1, "a large body was retried");
        assert_eq!(got[0], sent);
    }

    // Counted: 2 requests through the policy, 1 retry.
    let (_, metrics) = mesh_integration::scrape_metrics(proxy.admin, None)
        .await
        .unwrap();
    assert!(
        metrics.contains("retries_total{service=\"greeter:50051\",route=\"\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("retry_requests_total{service=\"greeter:50051\",route=\"\"} 2"),
        "{metrics}"
    );
}
