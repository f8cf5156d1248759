#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]
//! The retry layer against a scripted inner service, with paused time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use mesh_core::error::{Cause, ProxyError};
use mesh_core::grpc::Code;
use mesh_core::retry::{RetryLayer, RetryOn, RetryPolicy, RetryStats};
use mesh_core::{Body, BoxError};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// What the inner service answers.
#[derive(Clone, Debug)]
enum Outcome {
    Status(u16),
    Grpc(u16),
    Error(Cause, &'static str),
    /// An HTTP/2 error with this reason, unclassified: as hyper's error carries it.
    H2(h2::Reason),
}

/// What the inner service saw of one attempt.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    method: Method,
    uri: http::Uri,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<(Seen, Instant)>>>,
    script: Arc<Mutex<VecDeque<Outcome>>>,
    fallback: Outcome,
}

impl Fake {
    fn new(script: impl IntoIterator<Item = Outcome>, fallback: Outcome) -> Self {
        Self {
            seen: Arc::default(),
            script: Arc::new(Mutex::new(script.into_iter().collect())),
            fallback,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }

    fn times(&self) -> Vec<Instant> {
        self.seen.lock().unwrap().iter().map(|(_, t)| *t).collect()
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    async fn handle(self, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let at = Instant::now();
        let (parts, body) = req.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        self.seen.lock().unwrap().push((
            Seen {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body: collected.to_bytes(),
                trailers,
            },
            at,
        ));
        let outcome = self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.fallback.clone());
        match outcome {
            Outcome::Status(s) => Ok(Response::builder()
                .status(s)
                .body(Body::full("answer"))
                .unwrap()),
            Outcome::Grpc(code) => Ok(Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code)
                .body(Body::Empty)
                .unwrap()),
            Outcome::Error(cause, text) => Err(ProxyError::new(cause, text).into()),
            Outcome::H2(reason) => Err(h2::Error::from(reason).into()),
        }
    }

    fn stack(
        &self,
        policy: &RetryPolicy,
    ) -> (
        impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send>
        + Clone
        + Send
        + use<>,
        Arc<RetryStats>,
    ) {
        let layer = RetryLayer::new(policy);
        let stats = layer.stats();
        let fake = self.clone();
        let inner = tower::service_fn(move |req| fake.clone().handle(req));
        (layer.layer(inner), stats)
    }
}

/// A body in chunks of unknown total size, with optional trailers.
struct Chunks {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// `len` bytes of a recognisable pattern, in chunks of 1 KiB, with trailers.
fn chunked(len: usize) -> (Body, Bytes, HeaderMap) {
    let data: Bytes = (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
    let chunks = (0..len)
        .step_by(1024)
        .map(|at| data.slice(at..(at + 1024).min(len)))
        .collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let body = Body::boxed(Chunks {
        chunks,
        trailers: Some(trailers.clone()),
    });
    (body, data, trailers)
}

fn request(method: Method, body: Body) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("http://web.default:80/things?id=7")
        .header("x-request-id", "r-1")
        .header("x-other", "a")
        .body(body)
        .unwrap()
}

fn grpc_request() -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri("http://greeter:50051/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Body::full(&b"\0\0\0\0\x02hi"[..]))
        .unwrap()
}

async fn send<S>(svc: &mut S, req: Request<Body>) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

fn retries_header(rsp: &Response<Body>) -> Option<&str> {
    rsp.headers()
        .get("mesh-retries")
        .map(|v| v.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_503_then_200_is_retried_with_the_same_request() {
    let fake = Fake::new([Outcome::Status(503)], Outcome::Status(200));
    let (mut svc, stats) = fake.stack(&RetryPolicy::default());
    let (body, data, trailers) = chunked(3000);
    let rsp = send(&mut svc, request(Method::GET, body)).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(retries_header(&rsp), Some("1"));
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].uri, "http://web.default:80/things?id=7");
    assert_eq!(seen[0].headers.get("x-request-id").unwrap(), "r-1");
    assert_eq!(seen[0].headers.get("x-other").unwrap(), "a");
    assert_eq!(seen[0].body, data);
    assert_eq!(seen[0].trailers.as_ref(), Some(&trailers));
    assert_eq!(
        (stats.requests(), stats.retries(), stats.budget_exhausted()),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_at_first_is_not_marked() {
    let fake = Fake::new([], Outcome::Status(200));
    let (mut svc, stats) = fake.stack(&RetryPolicy::default());
    let rsp = send(&mut svc, request(Method::GET, Body::full("x")))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(retries_header(&rsp), None);
    assert_eq!(fake.calls(), 1);
    assert_eq!((stats.requests(), stats.retries()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn max_retries_is_honoured_and_the_last_failure_returned() {
    let fake = Fake::new([], Outcome::Status(503));
    let policy = RetryPolicy {
        max_retries: 3,
        ..RetryPolicy::default()
    };
    let (mut svc, stats) = fake.stack(&policy);
    let rsp = send(&mut svc, request(Method::GET, Body::Empty))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(retries_header(&rsp), Some("3"));
    assert_eq!(fake.calls(), 4);
    assert_eq!(stats.retries(), 3);
}

#[tokio::test(start_paused = true)]
async fn statuses_outside_the_conditions_are_not_retried() {
    // 500 is not a gateway error.
    let fake = Fake::new([], Outcome::Status(500));
    let (mut svc, _) = fake.stack(&RetryPolicy::default());
    let rsp = send(&mut svc, request(Method::GET, Body::Empty))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 500);
    assert_eq!(retries_header(&rsp), None);
    assert_eq!(fake.calls(), 1);

    // With `5xx`, it is.
    let fake = Fake::new([Outcome::Status(500)], Outcome::Status(200));
    let policy = RetryPolicy {
        conditions: vec![RetryOn::ServerError],
        ..RetryPolicy::default()
    };
    let (mut svc, _) = fake.stack(&policy);
    let rsp = send(&mut svc, request(Method::GET, Body::Empty))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(fake.calls(), 2);

    // No retries at all.
    let fake = Fake::new([], Outcome::Status(503));
    let policy = RetryPolicy {
        max_retries: 0,
        ..RetryPolicy::default()
    };
    let (mut svc, _) = fake.stack(&policy);
    send(&mut svc, request(Method::GET, Body::Empty))
        .await
        .unwrap();
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn connect_failures_are_retried_whatever_the_method() {
    let fake = Fake::new(
        [Outcome::Error(Cause::Connect, "connection refused")],
        Outcome::Status(200),
    );
    let (mut svc, stats) = fake.stack(&RetryPolicy::default());
    let rsp = send(&mut svc, request(Method::POST, Body::full("order")))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(retries_header(&rsp), Some("1"));
    assert_eq!(fake.calls(), 2);
    assert_eq!(stats.retries(), 1);
    let seen = fake.seen();
    assert_eq!(seen[0], seen[1]);

    for cause in [
        Cause::ConnectTimeout,
        Cause::EndpointDown,
        Cause::TlsHandshake,
    ] {
        let fake = Fake::new([Outcome::Error(cause, "down")], Outcome::Status(200));
        let (mut svc, _) = fake.stack(&RetryPolicy::default());
        let rsp = send(&mut svc, request(Method::POST, Body::Empty))
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200, "{cause}");
    }
}

#[tokio::test(start_paused = true)]
async fn errors_after_sending_follow_the_method() {
    // The request may have reached the application: a POST is not sent again.
    let fake = Fake::new([], Outcome::Error(Cause::Upstream, "connection reset"));
    let (mut svc, _) = fake.stack(&RetryPolicy::default());
    let err = send(&mut svc, request(Method::POST, Body::full("order")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(fake.calls(), 1);

    // A GET is: the mesh answers that error with a 502, a gateway error.
    let fake = Fake::new(
        [Outcome::Error(Cause::Upstream, "connection reset")],
        Outcome::Status(200),
    );
    let (mut svc, _) = fake.stack(&RetryPolicy::default());
    let rsp = send(&mut svc, request(Method::GET, Body::Empty))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(fake.calls(), 2);

    // Without conditions for it, no retry even for a GET.
    let fake = Fake::new([], Outcome::Error(Cause::Upstream, "connection reset"));
    let policy = RetryPolicy {
        conditions: vec![RetryOn::ConnectFailure],
        ..RetryPolicy::default()
    };
    let (mut svc, _) = fake.stack(&policy);
    send(&mut svc, request(Method::GET, Body::Empty))
        .await
        .unwrap_err();
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn refused_streams_are_retried_whatever_the_method() {
    // How hyper reports an h2 REFUSED_STREAM: its error's source is the h2 error, whose
    // reason says it.
    let fake = Fake::new(
        [Outcome::H2(h2::Reason::REFUSED_STREAM)],
        Outcome::Status(200),
    );
    let (mut svc, _) = fake.stack(&RetryPolicy::default());
    let rsp = send(&mut svc, request(Method::POST, Body::Empty))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(fake.calls(), 2);

    // As the client classifies it.
    let fake = Fake::new(
        [Outcome::Error(Cause::RefusedStream, "refused")],
        Outcome::Status(200),
    );
    let (mut svc, _) = fake.stack(&RetryPolicy::default());
    let rsp = send(&mut svc, request(Method::POST, Body::Empty))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(fake.calls(), 2);

    // The cause decides, not the text: an upstream failure that merely says so, or another
    // reset, is not retried for a POST.
    for outcome in [
        Outcome::Error(
            Cause::Upstream,
            "stream error received: refused stream before processing any application logic",
        ),
        Outcome::H2(h2::Reason::INTERNAL_ERROR),
    ] {
        let fake = Fake::new([outcome.clone()], Outcome::Status(200));
        let (mut svc, _) = fake.stack(&RetryPolicy::default());
        send(&mut svc, request(Method::POST, Body::Empty))
            .await
            .unwrap_err();
        assert_eq!(fake.calls(), 1, "{outcome:?}");
    }

    // Without the condition, a refused stream is not retried.
    let fake = Fake::new(
        [Outcome::H2(h2::Reason::REFUSED_STREAM)],
        Outcome::Status(200),
    );
    let policy = RetryPolicy {
        conditions: vec![RetryOn::ConnectFailure],
        ..RetryPolicy::default()
    };
    let (mut svc, _) = fake.stack(&policy);
    send(&mut svc, request(Method::POST, Body::Empty))
        .await
        .unwrap_err();
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_trailers_only_statuses_are_retried_when_the_route_allows() {
    let grpc_route = RetryPolicy {
        retry_non_idempotent: true,
        ..RetryPolicy::default()
    };
    let fake = Fake::new([Outcome::Grpc(14)], Outcome::Grpc(0));
    let (mut svc, _) = fake.stack(&grpc_route);
    let rsp = send(&mut svc, grpc_request()).await.unwrap();
    assert_eq!(rsp.headers().get("grpc-status").unwrap(), "0");
    assert_eq!(retries_header(&rsp), Some("1"));
    assert_eq!(fake.calls(), 2);
    let seen = fake.seen();
    assert_eq!(seen[0], seen[1]);

    // NOT_FOUND is the application's answer.
    let fake = Fake::new([Outcome::Grpc(5)], Outcome::Grpc(0));
    let (mut svc, _) = fake.stack(&grpc_route);
    let rsp = send(&mut svc, grpc_request()).await.unwrap();
    assert_eq!(rsp.headers().get("grpc-status").unwrap(), "5");
    assert_eq!(fake.calls(), 1);

    // A route that did not opt in: gRPC requests are POSTs.
    let fake = Fake::new([Outcome::Grpc(14)], Outcome::Grpc(0));
    let (mut svc, _) = fake.stack(&RetryPolicy::default());
    let rsp = send(&mut svc, grpc_request()).await.unwrap();
    assert_eq!(rsp.headers().get("grpc-status").unwrap(), "14");
    assert_eq!(fake.calls(), 1);

    // More codes, by name.
    let policy = RetryPolicy {
        grpc: vec![Code::UNAVAILABLE, Code::RESOURCE_EXHAUSTED],
        ..grpc_route
    };
    let fake = Fake::new([Outcome::Grpc(8), Outcome::Grpc(14)], Outcome::Grpc(0));
    let (mut svc, _) = fake.stack(&policy);
    let rsp = send(&mut svc, grpc_request()).await.unwrap();
    assert_eq!(rsp.headers().get("grpc-status").unwrap(), "0");
    assert_eq!(retries_header(&rsp), Some("2"));
}

#[tokio::test(start_paused = true)]
async fn post_is_retried_only_when_allowed() {
    let fake = Fake::new([Outcome::Status(503)], Outcome::Status(200));
    let (mut svc, _) = fake.stack(&RetryPolicy::default());
    let rsp = send(&mut svc, request(Method::POST, Body::full("order")))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(fake.calls(), 1);

    let fake = Fake::new([Outcome::Status(503)], Outcome::Status(200));
    let policy = RetryPolicy {
        retry_non_idempotent: true,
        ..RetryPolicy::default()
    };
    let (mut svc, _) = fake.stack(&policy);
    let rsp = send(&mut svc, request(Method::POST, Body::full("order")))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(fake.calls(), 2);
    let seen = fake.seen();
    assert_eq!(seen[1].body, "order");
}

#[tokio::test(start_paused = true)]
async fn small_bodies_are_replayed_large_ones_sent_once() {
    let fake = Fake::new([Outcome::Status(503)], Outcome::Status(200));
    let (mut svc, _) = fake.stack(&RetryPolicy::default());
    let (body, data, trailers) = chunked(10 * 1024);
    let rsp = send(&mut svc, request(Method::PUT, body)).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.body, data);
        assert_eq!(s.trailers.as_ref(), Some(&trailers));
    }

    let fake = Fake::new([Outcome::Status(503)], Outcome::Status(200));
    let (mut svc, stats) = fake.stack(&RetryPolicy::default());
    let (body, data, trailers) = chunked(100 * 1024);
    let rsp = send(&mut svc, request(Method::PUT, body)).await.unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(retries_header(&rsp), None);
    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), 100 * 1024);
    assert_eq!(seen[0].body, data);
    assert_eq!(seen[0].trailers.as_ref(), Some(&trailers));
    assert_eq!(stats.retries(), 0);

    // A body whose size is known to be too large is not kept at all.
    let fake = Fake::new([Outcome::Status(503)], Outcome::Status(200));
    let (mut svc, _) = fake.stack(&RetryPolicy::default());
    let large = Bytes::from(vec![7u8; 100 * 1024]);
    let rsp = send(&mut svc, request(Method::PUT, Body::full(large.clone())))
        .await
        .unwrap();
    assert_eq!(rsp.status(), 503);
    assert_eq!(fake.seen()[0].body, large);
}

#[tokio::test(start_paused = true)]
async fn the_budget_caps_retries() {
    let fake = Fake::new([], Outcome::Status(503));
    let (svc, stats) = fake.stack(&RetryPolicy::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        let mut svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            // 1000 requests spread over the 10 s window.
            tokio::time::sleep_until(start + Duration::from_micros(i * 9_900)).await;
            let rsp = send(&mut svc, request(Method::GET, Body::Empty))
                .await
                .unwrap();
            assert_eq!(rsp.status(), 503);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let calls = fake.calls() as u64;
    assert!(calls <= 1000 + 200 + 100, "{calls} calls");
    assert_eq!(stats.requests(), 1000);
    assert_eq!(stats.retries(), calls - 1000);
    // The budget allows that many, no more: the ratio and the floor were both used.
    assert!(stats.retries() > 250, "{} retries", stats.retries());
    assert!(stats.budget_exhausted() > 0);
    println!(
        "{calls} calls, {} retries, {} refused by the budget",
        stats.retries(),
        stats.budget_exhausted()
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_refills_as_the_window_slides() {
    let fake = Fake::new([], Outcome::Status(503));
    let policy = RetryPolicy {
        max_retries: 1,
        budget_ratio: 0.0,
        min_retries_per_second: 1,
        budget_window: Duration::from_secs(1),
        ..RetryPolicy::default()
    };
    let (mut svc, stats) = fake.stack(&policy);
    for _ in 0..3 {
        send(&mut svc, request(Method::GET, Body::Empty))
            .await
            .unwrap();
    }
    assert_eq!((stats.retries(), stats.budget_exhausted()), (1, 2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    send(&mut svc, request(Method::GET, Body::Empty))
        .await
        .unwrap();
    assert_eq!((stats.retries(), stats.budget_exhausted()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn retries_wait_a_jittered_backoff() {
    let fake = Fake::new([], Outcome::Status(503));
    let policy = RetryPolicy {
        max_retries: 5,
        ..RetryPolicy::default()
    };
    let (mut svc, _) = fake.stack(&policy);
    for _ in 0..5 {
        send(&mut svc, request(Method::GET, Body::Empty))
            .await
            .unwrap();
    }
    let times = fake.times();
    assert_eq!(times.len(), 30);
    for attempts in times.chunks(6) {
        for pair in attempts.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap > Duration::ZERO, "{gap:?}");
            assert!(gap <= Duration::from_millis(250), "{gap:?}");
        }
    }
}

#[test]
fn the_policy_reads_from_configuration() {
    let policy: RetryPolicy = toml::from_str(
        r#"
        max_retries = 3
        conditions = ["5xx", "connect-failure"]
        grpc = ["unavailable", "RESOURCE_EXHAUSTED", 4]
        backoff_min = "10ms"
        backoff_max = "1s"
        retry_non_idempotent = true
        budget_ratio = 0.1
        "#,
    )
    .unwrap();
    assert_eq!(policy.max_retries, 3);
    assert_eq!(
        policy.conditions,
        [RetryOn::ServerError, RetryOn::ConnectFailure]
    );
    let codes: Vec<u16> = policy.grpc.iter().map(|c| c.as_u16()).collect();
    assert_eq!(codes, [14, 8, 4]);
    assert_eq!(policy.backoff_min, Duration::from_millis(10));
    assert_eq!(policy.max_buffered_body, 64 * 1024);
    assert!(policy.validate().is_ok());
    assert!(RetryPolicy::default().validate().is_ok());

    let text = toml::to_string(&policy).unwrap();
    let again: RetryPolicy = toml::from_str(&text).unwrap();
    assert_eq!(again, policy);

    assert!(toml::from_str::<RetryPolicy>("retries = 3").is_err());
    assert!(toml::from_str::<RetryPolicy>("conditions = [\"sometimes\"]").is_err());
    let err = toml::from_str::<RetryPolicy>("grpc = [17]").unwrap_err();
    assert!(err.to_string().contains("17"), "{err}");

    let bad = RetryPolicy {
        backoff_max: Duration::from_millis(1),
        ..RetryPolicy::default()
    };
    assert_eq!(bad.validate().unwrap_err().field, "backoff_max");
    let bad = RetryPolicy {
        budget_ratio: -1.0,
        ..RetryPolicy::default()
    };
    assert_eq!(bad.validate().unwrap_err().field, "budget_ratio");
    let bad = RetryPolicy {
        max_retries: 100,
        ..RetryPolicy::default()
    };
    assert_eq!(bad.validate().unwrap_err().field, "max_retries");
}

#[tokio::test(start_paused = true)]
async fn an_unread_body_is_sent_whole_to_the_retry() {
    // The first attempt fails to connect before reading any of the body.
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let inner = tower::service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        async move {
            let first = seen.lock().unwrap().is_empty();
            if first {
                seen.lock().unwrap().push(Bytes::new());
                return Err::<Response<Body>, BoxError>(
                    ProxyError::new(Cause::Connect, "connection refused").into(),
                );
            }
            let body = req.into_body().collect().await?.to_bytes();
            seen.lock().unwrap().push(body);
            Ok(Response::new(Body::Empty))
        }
    });
    let mut svc = RetryLayer::new(&RetryPolicy::default()).layer(inner);
    let (body, data, _) = chunked(5000);
    let rsp = send(&mut svc, request(Method::POST, body)).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1], data);
}

#[tokio::test(start_paused = true)]
async fn a_body_still_held_by_the_failed_attempt_is_not_replayed() {
    // The endpoint answers 503 after one chunk of the body, and keeps the rest (as hyper
    // does while it still sends it).
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    let inner = tower::service_fn(move |req: Request<Body>| {
        let keep = keep.clone();
        async move {
            let mut body = req.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            keep.lock().unwrap().push((first, body));
            Ok::<_, BoxError>(Response::builder().status(503).body(Body::Empty).unwrap())
        }
    });
    let mut svc = RetryLayer::new(&RetryPolicy::default()).layer(inner);
    let (body, data, trailers) = chunked(5000);
    let rsp = send(&mut svc, request(Method::PUT, body)).await.unwrap();
    assert_eq!(rsp.status(), 503);
    let (first, body) = {
        let mut held = held.lock().unwrap();
        assert_eq!(held.len(), 1);
        held.pop().unwrap()
    };
    // Nothing is lost: the held body still gives every byte.
    let collected = body.collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    let mut all = first.to_vec();
    all.extend_from_slice(&collected.to_bytes());
    assert_eq!(all, data);
}
