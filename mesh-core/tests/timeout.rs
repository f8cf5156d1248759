#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]
//! The timeout layer on paused time, with fake upstreams: route timeouts, gRPC deadlines
//! (honoured, propagated, mapped to DEADLINE_EXCEEDED), cancellation of the upstream.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use mesh_core::error::{ErrorKind, PROXY_ERROR_HEADER, ProxyError, classify, error_response};
use mesh_core::server::RespondLayer;
use mesh_core::timeout::{Deadline, GRPC_TIMEOUT, ReceivedAt, TimeoutConfig, TimeoutLayer};
use mesh_core::{Body, BoxError};
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt};

/// Sets its flag when dropped while armed: the future holding it was cancelled.
struct CancelGuard {
    cancelled: Arc<AtomicBool>,
    armed: bool,
}

impl CancelGuard {
    /// The future finished: not a cancellation.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            self.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

/// What the fake upstream saw and how its calls ended.
#[derive(Clone, Default)]
struct Upstream {
    calls: Arc<AtomicUsize>,
    cancelled: Arc<AtomicBool>,
    headers: Arc<Mutex<Option<HeaderMap>>>,
    deadline: Arc<Mutex<Option<Deadline>>>,
}

impl Upstream {
    fn was_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn seen_grpc_timeout(&self) -> Option<HeaderValue> {
        self.headers
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|h| h.get(GRPC_TIMEOUT).cloned())
    }
}

/// An upstream that answers `200 OK` (gRPC if asked in gRPC) after `delay`.
fn fake_upstream(
    delay: Duration,
) -> (
    Upstream,
    impl tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = BoxError,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static,
) {
    let state = Upstream::default();
    let seen = state.clone();
    let svc = tower::service_fn(move |req: Request<Body>| {
        seen.calls.fetch_add(1, Ordering::SeqCst);
        *seen.headers.lock().unwrap() = Some(req.headers().clone());
        *seen.deadline.lock().unwrap() = Deadline::of(&req);
        let guard = CancelGuard {
            cancelled: seen.cancelled.clone(),
            armed: true,
        };
        let grpc = mesh_core::error::is_grpc(&req);
        async move {
            tokio::time::sleep(delay).await;
            guard.disarm();
            let mut rsp = Response::new(Body::Empty);
            if grpc {
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                rsp.headers_mut()
                    .insert("grpc-status", HeaderValue::from_static("0"));
            }
            Ok::<_, BoxError>(rsp)
        }
    });
    (state, svc)
}

fn route(request: Option<Duration>) -> TimeoutLayer {
    TimeoutLayer::new(&TimeoutConfig {
        request,
        ..TimeoutConfig::default()
    })
}

fn grpc_request(grpc_timeout: Option<&'static str>) -> Request<Body> {
    let mut req = Request::builder()
        .uri("http://svc:80/pkg.Service/Method")
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(Body::Empty)
        .unwrap();
    if let Some(t) = grpc_timeout {
        req.headers_mut()
            .insert(GRPC_TIMEOUT, HeaderValue::from_static(t));
    }
    req
}

/// What an error is classified as: its kind and its reason.
fn kind_and_reason(err: &(dyn std::error::Error + 'static)) -> (ErrorKind, &'static str) {
    let cause = classify(err);
    (cause.kind(), cause.reason())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn route_timeout_fails_with_gateway_timeout_and_cancels_upstream() {
    let (upstream, inner) = fake_upstream(Duration::from_secs(5));
    let svc = route(Some(Duration::from_secs(1))).layer(inner);
    let start = Instant::now();

    let err = svc.oneshot(Request::new(Body::Empty)).await.unwrap_err();

    let waited = start.elapsed();
    assert!(
        (Duration::from_secs(1)..Duration::from_millis(1010)).contains(&waited),
        "{waited:?}"
    );
    let proxy = err.downcast_ref::<ProxyError>().expect("a ProxyError");
    assert_eq!(proxy.kind(), ErrorKind::GatewayTimeout);
    assert_eq!(proxy.reason(), "request-timeout");
    assert_eq!(
        kind_and_reason(&*err),
        (ErrorKind::GatewayTimeout, "request-timeout")
    );
    assert!(upstream.was_cancelled(), "the upstream future was dropped");
    assert_eq!(
        error_response(&*err, false).status(),
        StatusCode::GATEWAY_TIMEOUT
    );
}

#[tokio::test(start_paused = true)]
async fn route_timeout_through_respond_answers_504() {
    let (upstream, inner) = fake_upstream(Duration::from_secs(5));
    let svc = ServiceBuilder::new()
        .layer(RespondLayer::new())
        .layer(route(Some(Duration::from_secs(1))))
        .service(inner);

    let rsp = svc.oneshot(Request::new(Body::Empty)).await.unwrap();

    assert_eq!(rsp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(
        header(rsp.headers(), PROXY_ERROR_HEADER)
            .unwrap()
            .starts_with("request-timeout")
    );
    assert!(upstream.was_cancelled());
}

#[tokio::test(start_paused = true)]
async fn grpc_deadline_answers_deadline_exceeded_and_cancels_upstream() {
    let (upstream, inner) = fake_upstream(Duration::from_secs(1));
    let svc = ServiceBuilder::new()
        .layer(RespondLayer::new())
        .layer(route(Some(Duration::from_secs(10))))
        .service(inner);
    let start = Instant::now();

    let rsp = svc.oneshot(grpc_request(Some("200m"))).await.unwrap();

    let waited = start.elapsed();
    assert!(
        (Duration::from_millis(200)..Duration::from_millis(210)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(header(rsp.headers(), "grpc-status"), Some("4"));
    assert!(rsp.headers().contains_key("grpc-message"));
    assert!(
        header(rsp.headers(), PROXY_ERROR_HEADER)
            .unwrap()
            .starts_with("grpc-deadline"),
        "{:?}",
        rsp.headers()
    );
    assert!(upstream.was_cancelled(), "the upstream future was dropped");
}

#[tokio::test(start_paused = true)]
async fn grpc_deadline_error_is_classified_as_a_timeout() {
    let (_upstream, inner) = fake_upstream(Duration::from_secs(1));
    let svc = route(None).layer(inner);

    let err = svc.oneshot(grpc_request(Some("200m"))).await.unwrap_err();

    assert_eq!(
        kind_and_reason(&*err),
        (ErrorKind::GatewayTimeout, "grpc-deadline")
    );
    let rsp = error_response(&*err, true);
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(header(rsp.headers(), "grpc-status"), Some("4"));
}

#[tokio::test(start_paused = true)]
async fn the_earlier_route_timeout_wins_over_a_later_grpc_deadline() {
    let (upstream, inner) = fake_upstream(Duration::from_secs(5));
    let svc = route(Some(Duration::from_secs(1))).layer(inner);

    let err = svc.oneshot(grpc_request(Some("3S"))).await.unwrap_err();

    assert_eq!(
        kind_and_reason(&*err),
        (ErrorKind::GatewayTimeout, "request-timeout")
    );
    // The caller's deadline is what travels upstream, not the route's.
    assert_eq!(upstream.seen_grpc_timeout().unwrap(), "3S");
    assert!(upstream.was_cancelled());
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_is_propagated_as_the_time_left() {
    let (upstream, inner) = fake_upstream(Duration::ZERO);
    let svc = route(Some(Duration::from_secs(10))).layer(inner);
    let mut req = grpc_request(Some("200m"));
    req.extensions_mut().insert(ReceivedAt(Instant::now()));
    // 50 ms spent above the timeout layer (readiness, queueing).
    tokio::time::advance(Duration::from_millis(50)).await;

    let rsp = svc.oneshot(req).await.unwrap();

    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(upstream.seen_grpc_timeout().unwrap(), "150m");
    let deadline = upstream.deadline.lock().unwrap().unwrap();
    assert_eq!(deadline.grpc, Some(deadline.at));
    assert!(!upstream.was_cancelled());
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_is_propagated_from_a_wrapper_that_waits() {
    let (upstream, inner) = fake_upstream(Duration::ZERO);
    // A layer above that stamps the arrival, then takes 50 ms before forwarding.
    let stack = route(None).layer(inner);
    let svc = tower::service_fn(move |mut req: Request<Body>| {
        let stack = stack.clone();
        async move {
            req.extensions_mut().insert(ReceivedAt(Instant::now()));
            tokio::time::sleep(Duration::from_millis(50)).await;
            stack.oneshot(req).await
        }
    });

    svc.oneshot(grpc_request(Some("2S"))).await.unwrap();

    assert_eq!(upstream.seen_grpc_timeout().unwrap(), "1950m");
}

#[tokio::test(start_paused = true)]
async fn without_an_arrival_time_the_deadline_counts_from_the_layer() {
    let (upstream, inner) = fake_upstream(Duration::ZERO);
    let svc = route(None).layer(inner);

    svc.oneshot(grpc_request(Some("200m"))).await.unwrap();

    assert_eq!(upstream.seen_grpc_timeout().unwrap(), "200m");
}

#[tokio::test(start_paused = true)]
async fn a_deadline_spent_before_forwarding_fails_without_sending() {
    let (upstream, inner) = fake_upstream(Duration::ZERO);
    let svc = route(None).layer(inner);
    let mut req = grpc_request(Some("20m"));
    req.extensions_mut().insert(ReceivedAt(Instant::now()));
    tokio::time::advance(Duration::from_millis(30)).await;

    let err = svc.clone().oneshot(req).await.unwrap_err();
    assert_eq!(
        kind_and_reason(&*err),
        (ErrorKind::GatewayTimeout, "grpc-deadline")
    );

    let err = svc.oneshot(grpc_request(Some("0n"))).await.unwrap_err();
    assert_eq!(
        kind_and_reason(&*err),
        (ErrorKind::GatewayTimeout, "grpc-deadline")
    );
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn malformed_grpc_timeout_is_ignored_and_forwarded_unchanged() {
    let (upstream, inner) = fake_upstream(Duration::from_secs(5));
    let svc = route(Some(Duration::from_secs(1))).layer(inner);

    let err = svc.oneshot(grpc_request(Some("1.5S"))).await.unwrap_err();

    // The route timeout still applies; the header is the upstream's to judge.
    assert_eq!(
        kind_and_reason(&*err),
        (ErrorKind::GatewayTimeout, "request-timeout")
    );
    assert_eq!(upstream.seen_grpc_timeout().unwrap(), "1.5S");

    let (upstream, inner) = fake_upstream(Duration::from_millis(10));
    let svc = route(None).layer(inner);
    let rsp = svc.oneshot(grpc_request(Some("123456789m"))).await.unwrap();
    assert_eq!(header(rsp.headers(), "grpc-status"), Some("0"));
    assert_eq!(upstream.seen_grpc_timeout().unwrap(), "123456789m");
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_on_plain_http_or_when_disabled_is_left_alone() {
    let (upstream, inner) = fake_upstream(Duration::from_secs(1));
    let svc = route(None).layer(inner);
    let req = Request::builder()
        .header(GRPC_TIMEOUT, "10m")
        .body(Body::Empty)
        .unwrap();
    let rsp = svc.oneshot(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(upstream.seen_grpc_timeout().unwrap(), "10m");

    let (upstream, inner) = fake_upstream(Duration::from_secs(1));
    let svc = TimeoutLayer::new(&TimeoutConfig {
        request: None,
        grpc_timeout: false,
        fallback: None,
    })
    .layer(inner);
    let rsp = svc.oneshot(grpc_request(Some("10m"))).await.unwrap();
    assert_eq!(header(rsp.headers(), "grpc-status"), Some("0"));
    assert_eq!(upstream.seen_grpc_timeout().unwrap(), "10m");
    assert!(upstream.deadline.lock().unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn without_timeouts_requests_and_responses_pass_untouched() {
    let seen: Arc<Mutex<Option<Request<()>>>> = Arc::default();
    let inner = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<Body>| {
            let (parts, body) = req.into_parts();
            assert!(matches!(body, Body::Full(_)));
            let has_deadline = parts.extensions.get::<Deadline>().is_some();
            *seen.lock().unwrap() = Some(Request::from_parts(parts, ()));
            async move {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                let rsp = Response::builder()
                    .status(StatusCode::IM_A_TEAPOT)
                    .header("x-upstream", if has_deadline { "deadline" } else { "none" })
                    .body(Body::full("short and stout"))
                    .unwrap();
                Ok::<_, Infallible>(rsp)
            }
        })
    };
    let svc = TimeoutLayer::new(&TimeoutConfig {
        fallback: None,
        ..TimeoutConfig::default()
    })
    .layer(inner);
    let req = Request::builder()
        .uri("http://svc/teapot")
        .header("x-request", "1")
        .body(Body::full("hello"))
        .unwrap();

    let rsp = svc.oneshot(req).await.unwrap();

    assert_eq!(rsp.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(header(rsp.headers(), "x-upstream"), Some("none"));
    assert!(
        matches!(rsp.body(), Body::Full(_)),
        "the body is not wrapped"
    );
    let seen = seen.lock().unwrap().take().unwrap();
    assert_eq!(seen.uri(), "http://svc/teapot");
    assert_eq!(seen.headers().len(), 1);
    assert_eq!(header(seen.headers(), "x-request"), Some("1"));
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "short and stout");
}

/// A response body that never yields, and tells when it is dropped.
struct Endless(CancelGuard);

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let _ = &self.0;
        Poll::Pending
    }
}

fn streaming_upstream(
    cancelled: Arc<AtomicBool>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = BoxError,
    Future: Send + 'static,
> + Clone {
    tower::service_fn(move |_req: Request<Body>| {
        let body = Endless(CancelGuard {
            cancelled: cancelled.clone(),
            armed: true,
        });
        async move {
            Ok::<_, BoxError>(
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/grpc")
                    .body(Body::boxed(body))
                    .unwrap(),
            )
        }
    })
}

#[tokio::test(start_paused = true)]
async fn grpc_deadline_ends_a_streaming_response_with_deadline_exceeded() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let svc = ServiceBuilder::new()
        .layer(RespondLayer::new())
        .layer(route(Some(Duration::from_millis(100))))
        .service(streaming_upstream(cancelled.clone()));
    let start = Instant::now();

    let rsp = svc.oneshot(grpc_request(Some("1S"))).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert!(!rsp.headers().contains_key("grpc-status"));
    let collected = rsp.into_body().collect().await.unwrap();

    let waited = start.elapsed();
    assert!(
        (Duration::from_secs(1)..Duration::from_millis(1010)).contains(&waited),
        "the route timeout does not cut the body, the gRPC deadline does: {waited:?}"
    );
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(header(&trailers, "grpc-status"), Some("4"));
    assert!(header(&trailers, "grpc-message").is_some());
    assert!(
        header(&trailers, PROXY_ERROR_HEADER)
            .unwrap()
            .starts_with("grpc-deadline")
    );
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the upstream body was dropped"
    );
    assert!(collected.to_bytes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn route_timeout_alone_never_cuts_a_body() {
    let cancelled = Arc::new(AtomicBool::new(false));
    let svc = route(Some(Duration::from_millis(100))).layer(streaming_upstream(cancelled.clone()));

    let rsp = svc.oneshot(grpc_request(None)).await.unwrap();
    let mut body = rsp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;

    assert!(frame.is_err(), "still streaming after an hour");
    assert!(!cancelled.load(Ordering::SeqCst));
}

/// A body of given frames, all ready at once.
struct Frames(std::collections::VecDeque<http_body::Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[tokio::test(start_paused = true)]
async fn a_grpc_body_that_ends_in_time_is_forwarded_whole() {
    let svc = route(None).layer(tower::service_fn(|_req: Request<Body>| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let body = Frames(
            [
                http_body::Frame::data(Bytes::from_static(b"message")),
                http_body::Frame::trailers(trailers),
            ]
            .into(),
        );
        Ok::<_, BoxError>(
            Response::builder()
                .header(header::CONTENT_TYPE, "application/grpc+proto")
                .body(Body::boxed(body))
                .unwrap(),
        )
    }));

    let rsp = svc.oneshot(grpc_request(Some("1S"))).await.unwrap();
    let collected = rsp.into_body().collect().await.unwrap();

    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(header(&trailers, "grpc-status"), Some("0"));
    assert_eq!(collected.to_bytes(), "message");
}

/// With no route timeout and no gRPC deadline, the fallback (30 s by default) bounds the wait
/// for the response head; a caller's own deadline replaces it, longer or not; `"off"` lifts
/// it.
#[tokio::test(start_paused = true)]
async fn the_fallback_bounds_a_request_nothing_else_bounds() {
    let (_, upstream) = fake_upstream(Duration::from_secs(3600));
    let svc = route(None).layer(upstream);
    let started = Instant::now();
    let err = svc
        .clone()
        .oneshot(Request::new(Body::Empty))
        .await
        .unwrap_err();
    assert_eq!(
        started.elapsed(),
        mesh_core::timeout::DEFAULT_FALLBACK_TIMEOUT
    );
    assert_eq!(
        kind_and_reason(&*err),
        (ErrorKind::GatewayTimeout, "request-timeout")
    );
    assert!(err.to_string().contains("fallback"), "{err}");

    // A caller's deadline of a minute is honoured past the fallback.
    let (_, slow) = fake_upstream(Duration::from_secs(45));
    let svc = route(None).layer(slow);
    let rsp = svc.oneshot(grpc_request(Some("60S"))).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);

    // Off: the request waits as long as the upstream takes.
    let (_, slow) = fake_upstream(Duration::from_secs(3600));
    let svc = TimeoutLayer::new(&TimeoutConfig {
        fallback: None,
        ..TimeoutConfig::default()
    })
    .layer(slow);
    let started = Instant::now();
    let rsp = svc.oneshot(Request::new(Body::Empty)).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(started.elapsed(), Duration::from_secs(3600));
}
