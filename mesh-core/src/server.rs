//! The HTTP server side: serving a detected connection with hyper, draining it gracefully,
//! and [`Respond`], the layer at the top of every stack that turns errors into responses.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::TryFutureExt as _;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Layer, Service};

use crate::BoxError;
use crate::body::Body;
use crate::config::{Invalid, check_range, check_setting_duration, check_window};
use crate::detect::Protocol;
use crate::drain::Drain;
use crate::error::{error_chain, error_response, is_grpc};

/// Settings of the HTTP server side of a listener.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP/1: how long a client may take to send a request's headers; also how long an idle
    /// keep-alive connection is kept.
    #[serde(with = "crate::config::duration")]
    pub header_read_timeout: Duration,
    /// Largest request header block accepted, in bytes (HTTP/1 buffer and HTTP/2 header list).
    pub max_header_bytes: u32,
    /// HTTP/2: concurrent streams a client may open on one connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2: the per-stream receive window, in bytes. Bounds what one slow stream can buffer.
    pub initial_stream_window: u32,
    /// HTTP/2: the per-connection receive window, in bytes.
    pub initial_connection_window: u32,
    /// HTTP/2: ping a client this often when it is silent; no answer in as long again closes
    /// the connection (a client that vanished without a FIN).
    #[serde(with = "crate::config::duration")]
    pub keep_alive_interval: Duration,
    /// Connections one listener holds at once; past it, a new connection is closed as soon as
    /// it is accepted (counted in `tcp_refused_total`), so that one peer cannot take every
    /// file descriptor of the pod.
    pub max_connections: u32,
    /// HTTP/2: a connection on which no new stream opened for this long is sent GOAWAY
    /// (streams still open finish; the client opens a new connection for more), so that idle
    /// clients do not hold connections forever. Checked every `idle_timeout`: a connection
    /// goes after one to two of them.
    #[serde(with = "crate::config::duration")]
    pub idle_timeout: Duration,
}

/// HTTP/2: streams a client may open and reset before the server accepts them, at once.
pub const MAX_PENDING_ACCEPT_RESETS: usize = 64;
/// HTTP/2: streams the server may reset for a client's protocol errors on one connection.
pub const MAX_LOCAL_ERROR_RESETS: usize = 256;

/// The default [`ServerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

impl ServerConfig {
    /// Checks the values; the error names the field, the value and the bound.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_setting_duration("header_read_timeout", self.header_read_timeout)?;
        check_setting_duration("keep_alive_interval", self.keep_alive_interval)?;
        check_range("max_header_bytes", self.max_header_bytes, 1024, u32::MAX)?;
        check_range(
            "max_concurrent_streams",
            self.max_concurrent_streams,
            1,
            u32::MAX,
        )?;
        check_window("initial_stream_window", self.initial_stream_window)?;
        check_window("initial_connection_window", self.initial_connection_window)?;
        check_setting_duration("idle_timeout", self.idle_timeout)?;
        check_range("max_connections", self.max_connections, 1, 1_000_000)
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 1000,
            initial_stream_window: 1024 * 1024,
            initial_connection_window: 4 * 1024 * 1024,
            keep_alive_interval: Duration::from_secs(20),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Serves HTTP/1 (hyper) and HTTP/2 ([`crate::http2`]) connections with one set of settings.
#[derive(Clone, Debug)]
pub struct HttpServer {
    h1: hyper::server::conn::http1::Builder,
    h2: Arc<crate::http2::server::Settings>,
}

impl HttpServer {
    /// A server with these settings.
    pub fn new(config: &ServerConfig) -> Self {
        let mut h1 = hyper::server::conn::http1::Builder::new();
        // A client may shut its write side after a whole request and still read the answer
        // (RFC 9112, section 9.6; HAProxy's default too). The price: a client that vanishes
        // mid-request is noticed when the answer is written, not at once.
        h1.timer(TokioTimer::new())
            .half_close(true)
            .header_read_timeout(config.header_read_timeout)
            .max_buf_size((config.max_header_bytes as usize).max(8192));
        Self {
            h1,
            h2: Arc::new(crate::http2::server::Settings::new(config)),
        }
    }

    /// Serves one connection until the client is done or draining finishes it.
    ///
    /// On drain, HTTP/1 closes after the response in flight and HTTP/2 sends GOAWAY and lets
    /// open streams finish. An HTTP/2 connection on which no new stream opened for a whole
    /// `idle_timeout` is sent GOAWAY too.
    pub fn serve<'a, I, S>(
        &'a self,
        io: I,
        protocol: Protocol,
        service: S,
        drain: &'a Drain,
    ) -> Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send + 'a>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        // Each protocol's connection future is boxed, and returned boxed rather than awaited
        // in an `async fn`: the task of every connection holds the caller's future, which
        // would otherwise be as large as the larger of the two (and of every other stage),
        // written in full for each connection, idle or not.
        // (`err_into`, not an `async` block around an `.await`: that would hold the
        // connection's future twice over.)
        match protocol {
            Protocol::Http2 => {
                Box::pin(crate::http2::server::serve(&self.h2, io, service, drain).err_into())
            }
            Protocol::Http1 | Protocol::Opaque => {
                let conn = self
                    .h1
                    .serve_connection(TokioIo::new(io), FromIncoming(service));
                Box::pin(until_drained(conn, drain).err_into())
            }
        }
    }
}

/// Why a client's connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// HTTP/1: a malformed or oversized request, a header timeout, I/O.
    #[error(transparent)]
    Http1(#[from] hyper::Error),
    /// HTTP/2: a protocol error, a flood past its bound, I/O, a client that stopped answering
    /// pings.
    #[error(transparent)]
    Http2(#[from] crate::http2::server::ServeError),
}

impl ServeError {
    /// The client took too long to send a request's headers.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ServeError::Http1(e) if e.is_timeout())
    }

    /// The request's headers were larger than allowed.
    pub fn is_parse_too_large(&self) -> bool {
        matches!(self, ServeError::Http1(e) if e.is_parse_too_large())
    }

    /// The bytes were not an HTTP request.
    pub fn is_parse(&self) -> bool {
        matches!(self, ServeError::Http1(e) if e.is_parse())
    }
}

/// hyper's HTTP/1 server gives `Incoming` bodies; the stacks take [`Body`].
struct FromIncoming<S>(S);

impl<S> hyper::service::Service<Request<Incoming>> for FromIncoming<S>
where
    S: hyper::service::Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> S::Future {
        self.0.call(req.map(Body::Incoming))
    }
}

async fn until_drained<C>(conn: C, drain: &Drain) -> Result<(), hyper::Error>
where
    C: GracefulConnection<Error = hyper::Error>,
{
    tokio::pin!(conn);
    tokio::select! {
        // The connection first: bytes already read (detection) must be served, not dropped.
        biased;
        res = conn.as_mut() => return res,
        _ = drain.signaled() => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// Turns every error of the stack below into a response (see [`crate::error`]), so that the
/// server never sees an error and the client always learns why.
///
/// The stack below has [`BoxError`] as its error type (a generic `Into<BoxError>` bound trips
/// a compiler limit on higher-ranked lifetimes once the connection future must be `Send`).
#[derive(Clone, Copy, Debug, Default)]
pub struct RespondLayer;

impl RespondLayer {
    /// The layer.
    pub const fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for RespondLayer {
    type Service = Respond<S>;

    fn layer(&self, inner: S) -> Respond<S> {
        Respond::new(inner)
    }
}

/// See [`RespondLayer`]. Also a `hyper` service, so a stack can be served as it is.
///
/// Each request drives its own clone of the inner service through readiness (`oneshot`), so
/// a shared stack below (cheap to clone) is never called without being ready.
#[derive(Clone, Debug)]
pub struct Respond<S> {
    inner: S,
}

impl<S> Respond<S> {
    /// Wraps `inner`.
    pub const fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Request<Body>> for Respond<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RespondFuture<S>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> RespondFuture<S> {
        RespondFuture::new(self.inner.clone(), req)
    }
}

impl<S> hyper::service::Service<Request<Body>> for Respond<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RespondFuture<S>;

    fn call(&self, req: Request<Body>) -> RespondFuture<S> {
        #[cfg(feature = "test-panic-hook")]
        if req.headers().contains_key("x-mesh-test-panic") {
            panic!("x-mesh-test-panic: a panic a test asked for, in one request's path");
        }
        RespondFuture::new(self.inner.clone(), req)
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Respond`].
    pub struct RespondFuture<S: Service<Request<Body>>> {
        #[pin]
        inner: crate::ready_call::ReadyCall<S, Request<Body>>,
        grpc: bool,
    }
}

impl<S: Service<Request<Body>>> RespondFuture<S> {
    /// Stamps the request and calls the stack, with one clock read for the whole call down it
    /// (see `crate::clock`).
    fn new(svc: S, req: Request<Body>) -> Self {
        crate::clock::scope(|| Self::stamp_and_call(svc, req))
    }

    fn stamp_and_call(svc: S, mut req: Request<Body>) -> Self {
        let grpc = is_grpc(&req);
        req.extensions_mut().insert(crate::context::RequestContext {
            received_at: crate::clock::now(),
            grpc,
            deadline: None,
        });
        Self {
            inner: crate::ready_call::ReadyCall::new(svc, req),
            grpc,
        }
    }
}

impl<S: Service<Request<Body>>> std::fmt::Debug for RespondFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespondFuture")
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

impl<S> Future for RespondFuture<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // One clock read, if any, for every layer the response passes on its way up.
        match ready!(crate::clock::scope(|| this.inner.poll(cx))) {
            Ok(rsp) => Poll::Ready(Ok(rsp)),
            Err(e) => {
                // Debug, not info: an outage would write a line per request. Metrics count them.
                tracing::debug!(error = %error_chain(&*e), "request failed");
                Poll::Ready(Ok(error_response(&*e, *this.grpc)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Cause, ProxyError};
    use http::StatusCode;

    /// An HTTP/2 connection on which no new stream opens for an idle period is sent GOAWAY
    /// and closed; one in use is kept.
    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_is_closed() {
        let config = ServerConfig {
            idle_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        };
        let server = HttpServer::new(&config);
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let drain = Drain::new();
        let service = hyper::service::service_fn(|_req: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::Empty))
        });
        let served = tokio::spawn(async move {
            server
                .serve(server_io, Protocol::Http2, service, &drain)
                .await
        });
        let (mut client, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(client_io))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let started = tokio::time::Instant::now();
        // In use: a request every 50 s keeps it through four idle periods.
        for _ in 0..5 {
            let rsp = client
                .send_request(Request::new(http_body_util::Empty::new()))
                .await
                .unwrap();
            assert_eq!(rsp.status(), http::StatusCode::OK);
            tokio::time::sleep(Duration::from_secs(50)).await;
        }
        assert!(!served.is_finished());
        // Then silent: closed within two idle periods (the client may have gone first once
        // GOAWAY came: a broken pipe is the server's news of that).
        let _ = served.await.unwrap();
        let _ = conn.await;
        let lasted = started.elapsed();
        assert!(
            lasted >= Duration::from_secs(250) && lasted <= Duration::from_secs(250 + 120),
            "{lasted:?}"
        );
    }

    /// A connection that brings far more streams at once than one poll accepts (the serving
    /// loop yields after a batch) has every one of them reach the service, even when none is
    /// answered until all have arrived: the loop wakes itself for the rest, it does not wait for
    /// an answer to wake it.
    #[tokio::test]
    async fn a_burst_of_streams_on_one_connection_is_answered_in_full() {
        const STREAMS: usize = 500;
        // No ping or idle check comes to poll the connection in the meantime.
        let server = HttpServer::new(&ServerConfig {
            keep_alive_interval: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(3600),
            ..ServerConfig::default()
        });
        let (client_io, server_io) = tokio::io::duplex(1024 * 1024);
        let drain = Drain::new();
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        let all_in = Arc::new(tokio::sync::Barrier::new(STREAMS));
        let service = hyper::service::service_fn(move |req: Request<Body>| {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = req.uri().path().to_owned();
            let all_in = all_in.clone();
            async move {
                all_in.wait().await;
                Ok::<_, Infallible>(Response::new(Body::full(path)))
            }
        });
        let serving = tokio::spawn(async move {
            server
                .serve(server_io, Protocol::Http2, service, &drain)
                .await
        });
        let (client, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .max_concurrent_reset_streams(0)
                .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(client_io))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        // Every request is written before the first answer is read: the server finds them all
        // waiting at once.
        let answers = futures_util::future::join_all((0..STREAMS).map(|i| {
            let mut client = client.clone();
            async move {
                let req = Request::builder()
                    .uri(format!("http://test/{i}"))
                    .body(http_body_util::Empty::new())
                    .unwrap();
                let rsp = client.send_request(req).await.unwrap();
                assert_eq!(rsp.status(), StatusCode::OK);
                let body = http_body_util::BodyExt::collect(rsp.into_body())
                    .await
                    .unwrap()
                    .to_bytes();
                assert_eq!(body, format!("/{i}").as_bytes());
            }
        }));
        // A bound on a hang, not a timing: without the self-wake the streams past the first
        // batch never reach the service.
        tokio::time::timeout(Duration::from_secs(60), answers)
            .await
            .expect("every stream answered");
        assert_eq!(served.load(std::sync::atomic::Ordering::Relaxed), STREAMS);
        drop(client);
        let _ = conn.await;
        serving.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn errors_become_responses() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut svc = RespondLayer::new().layer(mock);
        let rsp = tokio::spawn(svc.call(Request::new(Body::Empty)));
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_error(ProxyError::new(Cause::FailFast, "no endpoint ready"));
        let rsp = rsp.await.unwrap().unwrap();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test(start_paused = true)]
    async fn responses_pass_through() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut svc = RespondLayer::new().layer(mock);
        let rsp = tokio::spawn(svc.call(Request::new(Body::Empty)));
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(Response::builder().status(418).body(Body::Empty).unwrap());
        assert_eq!(
            rsp.await.unwrap().unwrap().status(),
            StatusCode::IM_A_TEAPOT
        );
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_is_stamped_once_with_its_context() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let mut svc = RespondLayer::new().layer(mock);
        let received = tokio::time::Instant::now();
        let grpc = Request::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc+proto")
            .body(Body::Empty)
            .unwrap();
        let rsp = tokio::spawn(svc.call(grpc));
        let (req, send) = handle.next_request().await.unwrap();
        let context = crate::context::RequestContext::of(&req).copied();
        assert_eq!(
            context,
            Some(crate::context::RequestContext {
                received_at: received,
                grpc: true,
                deadline: None,
            })
        );
        // The layers below read the stamp, not the header: one parse per request.
        let mut stamped = Request::new(Body::Empty);
        stamped.extensions_mut().insert(context.unwrap());
        assert!(is_grpc(&stamped));
        send.send_response(Response::new(Body::Empty));
        rsp.await.unwrap().unwrap();

        let rsp = tokio::spawn(svc.call(Request::new(Body::Empty)));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(
            crate::context::RequestContext::of(&req).map(|c| c.grpc),
            Some(false)
        );
        send.send_response(Response::new(Body::Empty));
        rsp.await.unwrap().unwrap();
    }
}
