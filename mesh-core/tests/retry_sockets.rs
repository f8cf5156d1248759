#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]
//! Retries decided by the typed cause of a real failure: the retry layer over real endpoint
//! clients and real servers on 127.0.0.1 (real time: sockets do not run on paused time).
//!
//! A request that failed before reaching the application (connect refused, a refused HTTP/2
//! stream, a stream beyond a graceful GOAWAY) is sent again even for a POST; one that failed
//! after the application got it (a reset, a closed connection, a 503) is not.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use mesh_core::client::{ClientConfig, EndpointClient, HttpClient, ResponseFuture};
use mesh_core::error::{Cause, classify};
use mesh_core::retry::{RetryLayer, RetryPolicy, RetryStats};
use mesh_core::{Body, BoxError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::{Layer, Service, ServiceExt};

/// What a test server does with each request.
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Reads the request, answers this status.
    Answer(u16),
    /// Resets the stream with `REFUSED_STREAM` as soon as its head arrives.
    Refuse,
    /// Reads the whole request, then resets the stream (`INTERNAL_ERROR`).
    ResetAfterReading,
    /// Reads the whole request, then closes the connection.
    CloseAfterReading,
}

/// What a test server saw.
#[derive(Debug, Default)]
struct Seen {
    /// Connections accepted.
    connections: AtomicUsize,
    /// Request heads received.
    requests: AtomicUsize,
    /// The bodies read whole.
    bodies: Mutex<Vec<Bytes>>,
}

impl Seen {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().unwrap().clone()
    }
}

/// An HTTP/2 (prior knowledge) server built on the h2 crate, doing `behaviour`.
async fn h2_server(behaviour: Behaviour) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counts.connections.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_h2(tcp, behaviour, counts.clone()));
        }
    });
    (addr, seen)
}

async fn serve_h2(tcp: TcpStream, behaviour: Behaviour, seen: Arc<Seen>) {
    let Ok(mut conn) = h2::server::handshake(tcp).await else {
        return;
    };
    let close = Arc::new(tokio::sync::Notify::new());
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    seen.requests.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(handle_h2(req, respond, behaviour, seen.clone(), close.clone()));
                }
                _ => return,
            },
            // Dropping the connection closes the socket.
            () = close.notified() => return,
        }
    }
}

async fn handle_h2(
    req: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    behaviour: Behaviour,
    seen: Arc<Seen>,
    close: Arc<tokio::sync::Notify>,
) {
    if let Behaviour::Refuse = behaviour {
        respond.send_reset(h2::Reason::REFUSED_STREAM);
        return;
    }
    let mut body = req.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    seen.bodies.lock().unwrap().push(data.into());
    match behaviour {
        Behaviour::Answer(status) => {
            let rsp = Response::builder().status(status).body(()).unwrap();
            if let Ok(mut send) = respond.send_response(rsp, false) {
                let _ = send.send_data(Bytes::from_static(b"answered"), true);
            }
        }
        Behaviour::ResetAfterReading => respond.send_reset(h2::Reason::INTERNAL_ERROR),
        Behaviour::CloseAfterReading => close.notify_one(),
        Behaviour::Refuse => {}
    }
}

/// An HTTP/2 server, frame by frame, that answers the first request's HEADERS with a graceful
/// GOAWAY whose last stream is 0: the request was not processed (RFC 9113, section 6.8).
async fn goaway_server() -> (SocketAddr, Arc<Seen>) {
    const PREFACE: usize = 24;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = counts.clone();
            tokio::spawn(async move {
                // Our SETTINGS (empty).
                let _ = tcp.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await;
                let mut buf = Vec::new();
                let mut at = PREFACE;
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while buf.len() >= at + 9 {
                        let len = usize::from(buf[at]) << 16
                            | usize::from(buf[at + 1]) << 8
                            | usize::from(buf[at + 2]);
                        let kind = buf[at + 3];
                        if buf.len() < at + 9 + len {
                            break;
                        }
                        at += 9 + len;
                        if kind == 0x1 {
                            counts.requests.fetch_add(1, Ordering::SeqCst);
                            // GOAWAY: last stream 0, NO_ERROR.
                            let goaway = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                            let _ = tcp.write_all(&goaway).await;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// An HTTP/1.1 server answering every request 200, after reading it whole.
async fn h1_server() -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = counts.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let counts = counts.clone();
                async move {
                    counts.requests.fetch_add(1, Ordering::SeqCst);
                    let body = req.into_body().collect().await?.to_bytes();
                    counts.bodies.lock().unwrap().push(body);
                    Ok::<_, hyper::Error>(Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"answered"),
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (addr, seen)
}

/// A port nobody listens on: bound, then closed.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Sends each request to the next endpoint in turn, as a balancer would pick another one.
#[derive(Clone)]
struct InTurn {
    endpoints: Arc<Vec<EndpointClient>>,
    next: Arc<AtomicUsize>,
}

impl InTurn {
    fn new(addrs: &[SocketAddr]) -> Self {
        let client = HttpClient::new(&ClientConfig::default());
        Self {
            endpoints: Arc::new(addrs.iter().map(|a| client.endpoint(*a)).collect()),
            next: Arc::default(),
        }
    }
}

impl Service<Request<Body>> for InTurn {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        let n = self.next.fetch_add(1, Ordering::SeqCst) % self.endpoints.len();
        let mut endpoint = self.endpoints[n].clone();
        endpoint.call(req)
    }
}

/// The retry layer with the default policy over `addrs` in turn.
fn stack(
    addrs: &[SocketAddr],
) -> (
    impl Service<Request<Body>, Response = Response<Body>, Error = BoxError> + use<>,
    Arc<RetryStats>,
) {
    let layer = RetryLayer::new(&RetryPolicy::default());
    let stats = layer.stats();
    (layer.layer(InTurn::new(addrs)), stats)
}

/// `POST /orders` with a small body, over this HTTP version.
fn post(version: Version) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .version(version)
        .uri("http://api.test/orders")
        .body(Body::full("order #1"))
        .unwrap()
}

fn retries(rsp: &Response<Body>) -> Option<&str> {
    rsp.headers()
        .get("mesh-retries")
        .map(|v| v.to_str().unwrap())
}

/// The cause of what one endpoint client alone makes of a POST to `addr`.
async fn cause_at(addr: SocketAddr) -> Cause {
    let endpoint = HttpClient::new(&ClientConfig::default()).endpoint(addr);
    let err = endpoint.oneshot(post(Version::HTTP_2)).await.unwrap_err();
    classify(&*err)
}

#[tokio::test]
async fn a_post_refused_at_connect_is_retried() {
    assert_eq!(cause_at(closed_port()).await, Cause::Connect);

    // HTTP/2: the h2 connection to the endpoint is refused.
    let (good, seen) = h2_server(Behaviour::Answer(200)).await;
    let (mut svc, stats) = stack(&[closed_port(), good]);
    let rsp = svc.ready().await.unwrap().call(post(Version::HTTP_2)).await;
    let rsp = rsp.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(retries(&rsp), Some("1"));
    assert_eq!(seen.requests(), 1, "the backend that answered got it once");
    assert_eq!(seen.bodies(), [Bytes::from_static(b"order #1")]);
    assert_eq!(stats.retries(), 1);

    // HTTP/1.1: the pool's connect is refused.
    let (good, seen) = h1_server().await;
    let (mut svc, _) = stack(&[closed_port(), good]);
    let rsp = svc
        .ready()
        .await
        .unwrap()
        .call(post(Version::HTTP_11))
        .await;
    let rsp = rsp.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(retries(&rsp), Some("1"));
    assert_eq!(seen.requests(), 1);
    assert_eq!(seen.bodies(), [Bytes::from_static(b"order #1")]);
}

#[tokio::test]
async fn a_post_whose_stream_is_refused_is_retried() {
    // The endpoint client makes a typed refusal of the server's RST_STREAM(REFUSED_STREAM).
    let (refusing, _) = h2_server(Behaviour::Refuse).await;
    assert_eq!(cause_at(refusing).await, Cause::RefusedStream);

    let (refusing, refused) = h2_server(Behaviour::Refuse).await;
    let (good, seen) = h2_server(Behaviour::Answer(200)).await;
    let (mut svc, stats) = stack(&[refusing, good]);
    let rsp = svc.ready().await.unwrap().call(post(Version::HTTP_2)).await;
    let rsp = rsp.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(retries(&rsp), Some("1"));
    assert_eq!(
        refused.requests(),
        1,
        "the refusing server saw the stream once"
    );
    assert!(refused.bodies().is_empty(), "and processed nothing");
    assert_eq!(seen.requests(), 1, "the backend that answered got it once");
    assert_eq!(seen.bodies(), [Bytes::from_static(b"order #1")]);
    assert_eq!(stats.retries(), 1);
}

#[tokio::test]
async fn a_post_beyond_a_graceful_goaway_is_retried() {
    let (going_away, _) = goaway_server().await;
    assert_eq!(cause_at(going_away).await, Cause::RefusedStream);

    let (going_away, turned_away) = goaway_server().await;
    let (good, seen) = h2_server(Behaviour::Answer(200)).await;
    let (mut svc, _) = stack(&[going_away, good]);
    let rsp = svc.ready().await.unwrap().call(post(Version::HTTP_2)).await;
    let rsp = rsp.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(retries(&rsp), Some("1"));
    assert_eq!(turned_away.requests(), 1);
    assert_eq!(seen.requests(), 1, "the backend that answered got it once");
    assert_eq!(seen.bodies(), [Bytes::from_static(b"order #1")]);
}

#[tokio::test]
async fn a_post_that_reached_the_app_is_not_retried() {
    for behaviour in [Behaviour::ResetAfterReading, Behaviour::CloseAfterReading] {
        let (failing, reached) = h2_server(behaviour).await;
        let (good, spare) = h2_server(Behaviour::Answer(200)).await;
        let (mut svc, stats) = stack(&[failing, good]);
        let err = svc
            .ready()
            .await
            .unwrap()
            .call(post(Version::HTTP_2))
            .await
            .expect_err("the caller gets the error");
        let cause = classify(&*err);
        assert_eq!(cause, Cause::Upstream, "{behaviour:?}: {err}");
        assert!(!cause.never_reached_app());
        assert_eq!(
            reached.requests(),
            1,
            "{behaviour:?}: one attempt reached the app"
        );
        assert_eq!(reached.bodies(), [Bytes::from_static(b"order #1")]);
        assert_eq!(spare.requests(), 0, "{behaviour:?}: no retry");
        assert_eq!(stats.retries(), 0);
    }

    // The application answered 503 to a POST: its answer, as it is.
    let (failing, reached) = h2_server(Behaviour::Answer(503)).await;
    let (good, spare) = h2_server(Behaviour::Answer(200)).await;
    let (mut svc, stats) = stack(&[failing, good]);
    let rsp = svc.ready().await.unwrap().call(post(Version::HTTP_2)).await;
    let rsp = rsp.unwrap();
    assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retries(&rsp), None);
    assert_eq!(reached.requests(), 1);
    assert_eq!(spare.requests(), 0);
    assert_eq!(stats.retries(), 0);
}

#[tokio::test]
async fn a_get_reset_after_sending_is_retried() {
    // The same failure for an idempotent method: a gateway error, retried.
    let (failing, reached) = h2_server(Behaviour::ResetAfterReading).await;
    let (good, seen) = h2_server(Behaviour::Answer(200)).await;
    let (mut svc, _) = stack(&[failing, good]);
    let req = Request::builder()
        .method(Method::GET)
        .version(Version::HTTP_2)
        .uri("http://api.test/orders/1")
        .body(Body::Empty)
        .unwrap();
    let rsp = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(retries(&rsp), Some("1"));
    assert_eq!((reached.requests(), seen.requests()), (1, 1));
    assert_eq!(reached.connections(), 1);
}
