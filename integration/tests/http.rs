//! The outbound listener end to end: real sockets on 127.0.0.1, the real proxy in-process,
//! hyper backends and clients. Every wait is bounded; nothing asserts on how long a thing took.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Body, Frame};
use mesh_integration::{
    h1_client, h2_client, hello_backend, proxy_toml, start_backend, start_proxy, start_proxy_toml,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::timeout;
use tokio_stream::StreamExt as _;

/// The bound of every wait.
const WAIT: Duration = Duration::from_secs(10);
/// The service the tests route to.
const WEB: &str = "web.test:80";

/// Awaits `f` for at most [`WAIT`].
async fn within<F: Future>(what: &str, f: F) -> F::Output {
    match timeout(WAIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

/// A listener that accepts connections, counts them and never answers: it stands for an
/// endpoint that must not be reached.
async fn counting_sink() -> anyhow::Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    Ok((addr, accepted))
}

/// One HTTP/1.1 GET on a new connection; the response with its body read.
async fn h1_get(proxy: SocketAddr, host: &str, path: &str) -> anyhow::Result<Response<Bytes>> {
    let mut client = within("h1 connect", h1_client::<Empty<Bytes>>(proxy)).await?;
    let req = Request::get(path).header("host", host).body(Empty::new())?;
    let rsp = within("h1 response", client.send_request(req)).await?;
    read_body(rsp).await
}

/// One h2 request on a new connection; the response with its body read.
async fn h2_send(proxy: SocketAddr, req: Request<Empty<Bytes>>) -> anyhow::Result<Response<Bytes>> {
    let mut client = within("h2 connect", h2_client::<Empty<Bytes>>(proxy)).await?;
    let rsp = within("h2 response", client.send_request(req)).await?;
    read_body(rsp).await
}

/// One h2 GET on a new connection; the response with its body read.
async fn h2_get(proxy: SocketAddr, uri: &str) -> anyhow::Result<Response<Bytes>> {
    h2_send(proxy, Request::get(uri).body(Empty::new())?).await
}

/// The response with its body read.
/// Opens an h2 connection through the proxy and a GET stream on it; returns both once the
/// response head (200) is in.
async fn h2_open(
    proxy: SocketAddr,
    uri: &str,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    Response<hyper::body::Incoming>,
) {
    let mut h2 = within("h2 connect", h2_client::<Empty<Bytes>>(proxy))
        .await
        .unwrap();
    let req = Request::get(uri).body(Empty::new()).unwrap();
    let rsp = within("the response head", h2.send_request(req))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    (h2, rsp)
}

async fn read_body(rsp: Response<hyper::body::Incoming>) -> anyhow::Result<Response<Bytes>> {
    let (parts, body) = rsp.into_parts();
    let body = within("response body", body.collect()).await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// Reads from `stream` until the proxy closes it (or fails it).
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = within(
        "the proxy to close the connection",
        stream.read_to_end(&mut out),
    )
    .await;
    out
}

/// Deterministic pseudo-random bytes (xorshift), starting with a byte no HTTP request starts
/// with.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect();
    out[0] = 0x16; // a TLS record, as a client that forgot plaintext would send
    out
}

#[tokio::test]
async fn garbage_bytes_close_the_connection_and_the_next_request_is_served() {
    let backend = hello_backend().await.unwrap();
    let proxy = start_proxy(&[(WEB, &[backend])]).await.unwrap();

    let mut conn = TcpStream::connect(proxy.outbound).await.unwrap();
    // The proxy may close as soon as it has seen the first bytes: a failed write is fine.
    let _ = conn.write_all(&garbage(4096)).await;
    let mut buf = [0u8; 1024];
    let read = within(
        "the proxy to close a non-HTTP connection",
        conn.read(&mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the proxy answered non-HTTP bytes: {read:?} {:?}",
        read.as_ref().map(|n| String::from_utf8_lossy(&buf[..*n]))
    );

    let rsp = h1_get(proxy.outbound, "web.test", "/").await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.body(), "hello");
}

#[tokio::test]
async fn half_open_connection_does_not_block_others() {
    // `/slow` answers after a pause, so that the client's half-close surely arrives first.
    let backend = start_backend(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Response::new(Full::new(Bytes::from_static(b"hello")))
    })
    .await
    .unwrap();
    // A long detection timeout: the half-open connection stays in detection for the whole test.
    let toml = proxy_toml(&[(WEB, &[backend])])
        .replace("detect_timeout = \"1s\"", "detect_timeout = \"30s\"");
    let proxy = start_proxy_toml(&toml).await.unwrap();

    let mut half_open = TcpStream::connect(proxy.outbound).await.unwrap();
    half_open.write_all(b"GET /index.ht").await.unwrap();

    // Other clients are served meanwhile, over both protocols.
    let rsp = h1_get(proxy.outbound, "web.test", "/").await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let rsp = h2_get(proxy.outbound, "http://web.test/").await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);

    // A client that sends a whole request and then shuts its write side still gets the
    // response: a half-close ends the request, it does not abort it.
    let mut half_closed = TcpStream::connect(proxy.outbound).await.unwrap();
    half_closed
        .write_all(b"GET /slow HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    half_closed.shutdown().await.unwrap();
    let out = read_until_closed(&mut half_closed).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "a half-closed client got no response: {:?}",
        String::from_utf8_lossy(&out)
    );

    // The half-open connection is still waiting, untouched, and others are still served.
    let rsp = h1_get(proxy.outbound, "web.test", "/").await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    drop(half_open);
}

#[tokio::test]
async fn oversized_header_block_is_refused() {
    let backend = hello_backend().await.unwrap();
    // Oversized requests name `big.test`, whose endpoint counts connections: the proxy itself
    // must refuse them, without forwarding anything.
    let (sink, reached) = counting_sink().await.unwrap();
    let proxy = start_proxy(&[(WEB, &[backend]), ("big.test:80", &[sink])])
        .await
        .unwrap();
    let big = "a".repeat(1 << 20);

    // HTTP/1.1: a 431, or the connection closed.
    let conn = TcpStream::connect(proxy.outbound).await.unwrap();
    let (mut rd, mut wr) = conn.into_split();
    let request = format!("GET / HTTP/1.1\r\nHost: big.test\r\nx-big: {big}\r\n\r\n");
    let writer = tokio::spawn(async move {
        // The proxy may stop reading and close while this is written.
        let _ = wr.write_all(request.as_bytes()).await;
        wr
    });
    let mut out = Vec::new();
    let _ = within(
        "the proxy to refuse a 1 MiB header",
        rd.read_to_end(&mut out),
    )
    .await;
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.1 431"),
        "HTTP/1.1: expected 431 or a closed connection, got {:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
    drop(within("the writer", writer).await);

    // HTTP/2: the stream or the connection is refused.
    let mut h2 = within("h2 connect", h2_client::<Empty<Bytes>>(proxy.outbound))
        .await
        .unwrap();
    let req = Request::get("http://big.test/")
        .header("x-big", big.as_str())
        .body(Empty::new())
        .unwrap();
    match within(
        "the proxy to refuse a 1 MiB h2 header block",
        h2.send_request(req),
    )
    .await
    {
        Err(_) => {}
        Ok(rsp) => assert_eq!(
            rsp.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "h2: {rsp:?}"
        ),
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "an oversized request reached the endpoint"
    );

    // The next requests are served.
    let rsp = h1_get(proxy.outbound, "web.test", "/").await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let rsp = h2_get(proxy.outbound, "http://web.test/").await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_authority_is_503_with_reason() {
    let backend = hello_backend().await.unwrap();
    let proxy = start_proxy(&[(WEB, &[backend])]).await.unwrap();
    let reason = |rsp: &Response<Bytes>| {
        let value = rsp
            .headers()
            .get("mesh-proxy-error")
            .map(HeaderValue::to_str);
        value.and_then(Result::ok).unwrap_or_default().to_owned()
    };

    let rsp = h1_get(proxy.outbound, "nope.test", "/").await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(reason(&rsp).contains("nope.test"), "HTTP/1.1: {rsp:?}");

    let rsp = h2_get(proxy.outbound, "http://nope.test:8080/")
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(reason(&rsp).contains("nope.test:8080"), "h2: {rsp:?}");

    // gRPC: a trailers-only UNAVAILABLE, over h2 and HTTP/1.1 alike.
    let req = Request::post("http://nope.test:50051/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::new())
        .unwrap();
    let rsp = h2_send(proxy.outbound, req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        rsp.headers().get("grpc-status").map(HeaderValue::as_bytes),
        Some(&b"14"[..]),
        "{rsp:?}"
    );
    assert!(reason(&rsp).contains("nope.test:50051"), "gRPC: {rsp:?}");

    let mut h1 = within("h1 connect", h1_client::<Empty<Bytes>>(proxy.outbound))
        .await
        .unwrap();
    let req = Request::post("/pkg.Svc/Method")
        .header("host", "nope.test")
        .header("content-type", "application/grpc")
        .body(Empty::new())
        .unwrap();
    let rsp = within("h1 gRPC response", h1.send_request(req))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        rsp.headers().get("grpc-status").map(HeaderValue::as_bytes),
        Some(&b"14"[..]),
        "{rsp:?}"
    );
}

#[tokio::test]
async fn h2_backpressure_bounds_buffering() {
    const CHUNK: usize = 64 * 1024;
    const MAX: u64 = 256 * 1024 * 1024;
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    let backend = start_backend(move |_req| {
        let counter = counter.clone();
        async move {
            // Lazy: a chunk is made (and counted) only when hyper polls for one.
            let chunk = Bytes::from(vec![b'x'; CHUNK]);
            let chunks = tokio_stream::iter(0..MAX / CHUNK as u64).map(move |_| {
                counter.fetch_add(CHUNK as u64, Ordering::SeqCst);
                Ok::<_, Infallible>(Frame::data(chunk.clone()))
            });
            Response::new(StreamBody::new(chunks))
        }
    })
    .await
    .unwrap();
    let proxy = start_proxy(&[(WEB, &[backend])]).await.unwrap();

    let (_h2, mut rsp) = h2_open(proxy.outbound, "http://web.test/big").await;

    // The body is not read: wait until production stops (unchanged for 5 polls in a row).
    let (mut last, mut still) = (u64::MAX, 0);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = produced.load(Ordering::SeqCst);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still >= 5 {
            break;
        }
    }
    let buffered = produced.load(Ordering::SeqCst);
    assert!(
        buffered < 64 * 1024 * 1024,
        "the backend produced {buffered} bytes for a client that reads nothing (stopped growing: {})",
        still >= 5
    );

    // The stream still works: read a little, then give up on it.
    let frame = within("a body frame", rsp.body_mut().frame()).await;
    let data = frame.unwrap().unwrap().into_data().unwrap();
    assert!(!data.is_empty());
    drop(rsp);
}

/// A response body that yields a chunk every 50 ms, up to 1000, and says when it is dropped.
struct SlowBody {
    ticks: tokio::time::Interval,
    left: u32,
    dropped: Arc<Notify>,
}

impl Body for SlowBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        ready!(this.ticks.poll_tick(cx));
        this.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"tick\n")))))
    }
}

impl Drop for SlowBody {
    fn drop(&mut self) {
        self.dropped.notify_one();
    }
}

#[tokio::test]
async fn client_cancel_reaches_the_backend() {
    let dropped = Arc::new(Notify::new());
    let on_drop = dropped.clone();
    let backend = start_backend(move |_req| {
        let dropped = on_drop.clone();
        async move {
            Response::new(SlowBody {
                ticks: tokio::time::interval(Duration::from_millis(50)),
                left: 1000,
                dropped,
            })
        }
    })
    .await
    .unwrap();
    let proxy = start_proxy(&[(WEB, &[backend])]).await.unwrap();

    let (h2, mut rsp) = h2_open(proxy.outbound, "http://web.test/stream").await;
    let frame = within("a first chunk", rsp.body_mut().frame()).await;
    assert_eq!(frame.unwrap().unwrap().into_data().unwrap(), "tick\n");

    // Dropping the response resets the stream (CANCEL); the connection stays open.
    drop(rsp);
    within(
        "the backend's body to be dropped after the client's cancel",
        dropped.notified(),
    )
    .await;
    drop(h2);
}

#[tokio::test]
async fn trailers_pass_through_h2() {
    let backend = start_backend(|_req| async {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("5"));
        trailers.insert("grpc-message", HeaderValue::from_static("nope"));
        let frames = [
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut rsp = Response::new(StreamBody::new(tokio_stream::iter(frames)));
        rsp.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        rsp
    })
    .await
    .unwrap();
    let proxy = start_proxy(&[(WEB, &[backend])]).await.unwrap();

    let mut h2 = within("h2 connect", h2_client::<Empty<Bytes>>(proxy.outbound))
        .await
        .unwrap();
    let req = Request::post("http://web.test/pkg.Svc/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::new())
        .unwrap();
    let rsp = within("the response head", h2.send_request(req))
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let body = within("the body and trailers", rsp.into_body().collect())
        .await
        .unwrap();
    let trailers = body
        .trailers()
        .cloned()
        .expect("no trailers reached the client");
    assert_eq!(body.to_bytes(), &b"\0\0\0\0\0"[..]);
    assert_eq!(
        trailers.get("grpc-status"),
        Some(&HeaderValue::from_static("5"))
    );
    assert_eq!(
        trailers.get("grpc-message"),
        Some(&HeaderValue::from_static("nope"))
    );
}

#[tokio::test]
async fn http1_keepalive_and_per_request_balancing() {
    let mut backends = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..3 {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let addr = start_backend(move |_req| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Response::new(Full::new(Bytes::from_static(b"ok"))) }
        })
        .await
        .unwrap();
        backends.push(addr);
        counts.push(count);
    }
    // Forget latency peaks fast: the test counts backends reached, not machine noise.
    let toml = mesh_integration::proxy_toml(&[(WEB, &backends)])
        + "[outbound.services.balancer]\ndecay = \"100ms\"\n";
    let proxy = mesh_integration::start_proxy_toml(&toml).await.unwrap();

    // One client connection for all 30 requests: it fails if the proxy does not keep it alive.
    let mut client = within("h1 connect", h1_client::<Empty<Bytes>>(proxy.outbound))
        .await
        .unwrap();
    for i in 0..30 {
        within("the connection to be ready", client.ready())
            .await
            .unwrap();
        let req = Request::get(format!("/req/{i}"))
            .header("host", "web.test")
            .body(Empty::new())
            .unwrap();
        let rsp = within("a response", client.send_request(req))
            .await
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::OK, "request {i}");
        assert_eq!(read_body(rsp).await.unwrap().body(), "ok");
    }
    // Balanced per request: every backend takes part (each has a third of the chance of each
    // request; all 30 missing one backend happens once in 60 000 runs).
    let counts: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        30,
        "requests per backend: {counts:?}"
    );
    assert!(
        counts.iter().all(|c| *c > 0),
        "requests per backend: {counts:?}"
    );
}

/// A backend that sends GOAWAY after each connection's first request, as a server does when it
/// restarts or recycles connections (grpc-go's MaxConnectionAge).
async fn one_request_per_connection_backend() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let served = Arc::new(Notify::new());
                let notify = served.clone();
                let service =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        notify.notify_one();
                        async {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"hello",
                            ))))
                        }
                    });
                let conn =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    _ = served.notified() => {}
                }
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test]
async fn endpoint_goaway_does_not_fail_requests() {
    let backend = one_request_per_connection_backend().await.unwrap();
    let proxy = start_proxy(&[(WEB, &[backend])]).await.unwrap();
    // Concurrent clients, so that requests are on their way while a GOAWAY arrives.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let outbound = proxy.outbound;
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..25 {
                    let rsp = within(
                        "a request after GOAWAY",
                        h2_get(outbound, "http://web.test/"),
                    )
                    .await
                    .unwrap();
                    if rsp.status() != StatusCode::OK {
                        failures.push(format!(
                            "{} {:?}",
                            rsp.status(),
                            rsp.headers().get("mesh-proxy-error")
                        ));
                    }
                }
                failures
            })
        })
        .collect();
    for client in clients {
        let failures = client.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
}
