//! The HTTP client side: one service per endpoint.
//!
//! HTTP/2 requests travel on one multiplexed connection per endpoint, shared by every caller
//! (a lock-free load of the live connection on the hot path; a connect lock only while
//! (re)connecting), driven through the `h2` crate directly ([`crate::http2`]). HTTP/1.1
//! requests use a keep-alive pool per endpoint (hyper-util's pool). The protocol follows the
//! request: h2 end to end for h2 clients, HTTP/1.1 for HTTP/1.1.
//!
//! An endpoint with an identity is reached over mutual TLS when the client has a
//! [`TlsConnect`] (`HttpClient::with_tls`): the TLS connector verifies that the server proves
//! exactly that identity, and ALPN says h2 or http/1.1.
//!
//! # Errors
//!
//! Every failure is a [`ProxyError`] whose [`Cause`] says how far the request got. Before it
//! was sent: `connect`, `connect-timeout`, `tls-handshake`, `h2-handshake`, `endpoint-down`
//! (backing off, nothing tried); an HTTP/2 stream the endpoint refused unprocessed
//! (`REFUSED_STREAM`, or beyond the last stream of a graceful `GOAWAY`) is `refused-stream`;
//! a request the HTTP/2 connection gave back unsent (it closed first) is sent once more on a
//! fresh connection, and is `connection-closed` if that one gives it back too. Anything after
//! the request was sent (a reset, a closed connection, a protocol error) is `upstream`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version, header};
use hyper_util::client::legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::error::{Cause, ProxyError};
use crate::identity::Identity;
use crate::transport::{Alpn, BoxedIo, TlsConnect};
use crate::{BoxError, tcp};

/// Settings of the client side, toward endpoints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// How long a TCP connect may take.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// HTTP/1: how long an idle pooled connection is kept.
    #[serde(with = "crate::config::duration")]
    pub idle_timeout: Duration,
    /// HTTP/1: idle connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// HTTP/2: the per-stream receive window, in bytes.
    pub initial_stream_window: u32,
    /// HTTP/2: the per-connection receive window, in bytes.
    pub initial_connection_window: u32,
    /// HTTP/2: ping an endpoint this often to find dead connections.
    #[serde(with = "crate::config::duration")]
    pub keep_alive_interval: Duration,
}

impl ClientConfig {
    /// Checks the values; the error names the field, the value and the bound.
    pub fn validate(&self) -> Result<(), crate::config::Invalid> {
        use crate::config::{check_setting_duration, check_window};
        check_setting_duration("connect_timeout", self.connect_timeout)?;
        check_setting_duration("idle_timeout", self.idle_timeout)?;
        check_setting_duration("keep_alive_interval", self.keep_alive_interval)?;
        check_window("initial_stream_window", self.initial_stream_window)?;
        check_window("initial_connection_window", self.initial_connection_window)
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            // Shorter than the servers' idle timeout (the proxy's own is 30 s), so that a pooled
            // connection is not reused just as the server closes it.
            idle_timeout: Duration::from_secs(20),
            max_idle_per_endpoint: 64,
            initial_stream_window: 1024 * 1024,
            initial_connection_window: 4 * 1024 * 1024,
            keep_alive_interval: Duration::from_secs(10),
        }
    }
}

/// What every endpoint client shares: settings and the HTTP/1 pool.
#[derive(Clone, Debug)]
pub struct HttpClient {
    h1: legacy::Client<HttpConnector, Body>,
    h2: Arc<crate::http2::client::Settings>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_endpoint: usize,
    tls: Option<Arc<dyn TlsConnect>>,
    /// Put the endpoint's address in each response's extensions ([`Upstream`]).
    tag_upstream: bool,
}

impl HttpClient {
    /// A client with these settings.
    pub fn new(config: &ClientConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let h1 = legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_endpoint)
            .build(connector);
        // Pinged even while idle: a connection to an endpoint that vanished is found before a
        // request needs it.
        let h2 = crate::http2::client::Settings::new(
            config.initial_stream_window,
            config.initial_connection_window,
            config.keep_alive_interval,
        );
        Self {
            h1,
            h2: Arc::new(h2),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            max_idle_per_endpoint: config.max_idle_per_endpoint,
            tls: None,
            tag_upstream: false,
        }
    }

    /// Puts the endpoint's address in each response's extensions as an [`Upstream`], for an
    /// access log (one extension insert per response; off by default).
    pub fn tagging_upstream(mut self) -> Self {
        self.tag_upstream = true;
        self
    }

    /// Reaches endpoints that have an identity over mutual TLS made by `tls`.
    pub fn with_tls(mut self, tls: Arc<dyn TlsConnect>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// A service that sends requests to `addr`, in plaintext.
    pub fn endpoint(&self, addr: SocketAddr) -> EndpointClient {
        self.meshed_endpoint(addr, None)
    }

    /// A service that sends requests to `addr`, over mutual TLS when `identity` names what the
    /// endpoint must prove and this client has TLS; in plaintext otherwise.
    pub fn meshed_endpoint(&self, addr: SocketAddr, identity: Option<&Identity>) -> EndpointClient {
        let authority = Authority::try_from(addr.to_string().as_str()).ok();
        let tls = match (identity, &self.tls) {
            (Some(identity), Some(tls)) => Some(TlsTarget {
                identity: identity.clone(),
                tls: tls.clone(),
            }),
            _ => None,
        };
        let h1 = match &tls {
            None => H1Client::Plain(self.h1.clone()),
            Some(target) => H1Client::Tls(
                legacy::Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(self.idle_timeout)
                    .pool_max_idle_per_host(self.max_idle_per_endpoint)
                    .build(TlsH1Connector {
                        addr,
                        target: target.clone(),
                        connect_timeout: self.connect_timeout,
                    }),
            ),
        };
        EndpointClient {
            inner: Arc::new(Inner {
                addr,
                authority,
                h2: ArcSwapOption::empty(),
                connecting: Arc::new(tokio::sync::Mutex::new(())),
                failure: ArcSwapOption::empty(),
                client: self.clone(),
                tls,
                h1,
            }),
        }
    }
}

/// Where TLS goes: the identity to verify and the connector that does it.
#[derive(Clone, Debug)]
struct TlsTarget {
    identity: Identity,
    tls: Arc<dyn TlsConnect>,
}

impl TlsTarget {
    /// The TLS handshake over `tcp`, within what is `left` of the connect timeout (begun with
    /// the TCP connect): an endpoint that accepts TCP and never answers TLS fails like one that
    /// never answers, in time, and is backed off from.
    async fn secure(
        &self,
        tcp: tokio::net::TcpStream,
        alpn: Alpn,
        left: Duration,
    ) -> Result<BoxedIo, ProxyError> {
        match tokio::time::timeout(left, self.tls.connect(tcp, &self.identity, alpn)).await {
            Ok(secured) => secured.map_err(|e| ProxyError::new(Cause::TlsHandshake, TlsFailed(e))),
            Err(_) => Err(ProxyError::new(
                Cause::TlsHandshake,
                TlsFailed("no answer to the ClientHello within the connect timeout".into()),
            )),
        }
    }
}

/// The TLS handshake with an endpoint failed.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake failed: {0}")]
struct TlsFailed(#[source] BoxError);

#[derive(Clone, Debug)]
enum H1Client {
    Plain(legacy::Client<HttpConnector, Body>),
    Tls(legacy::Client<TlsH1Connector, Body>),
}

/// Connects HTTP/1.1 pool connections to one meshed endpoint over TLS.
#[derive(Clone, Debug)]
struct TlsH1Connector {
    addr: SocketAddr,
    target: TlsTarget,
    connect_timeout: Duration,
}

impl tower::Service<Uri> for TlsH1Connector {
    type Response = TokioIo<SecuredIo>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let tcp = tcp::connect(this.addr, this.connect_timeout).await?;
            let left = this.connect_timeout.saturating_sub(started.elapsed());
            let io = this.target.secure(tcp, Alpn::Http1, left).await?;
            Ok(TokioIo::new(SecuredIo(io)))
        })
    }
}

/// A TLS stream in hyper-util's pool.
struct SecuredIo(BoxedIo);

impl std::fmt::Debug for SecuredIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecuredIo")
    }
}

impl legacy::connect::Connection for SecuredIo {
    fn connected(&self) -> legacy::connect::Connected {
        legacy::connect::Connected::new()
    }
}

impl tokio::io::AsyncRead for SecuredIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for SecuredIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// The endpoint that answered, in a response's extensions when the client is
/// [tagging](HttpClient::tagging_upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upstream(pub SocketAddr);

/// Sends each request to one endpoint; cheap to clone (clones share connections).
#[derive(Clone, Debug)]
pub struct EndpointClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    authority: Option<Authority>,
    h2: ArcSwapOption<H2Connection>,
    /// Held by the task that connects, so that one attempt serves every waiting request and
    /// outlives a caller that gives up.
    connecting: Arc<tokio::sync::Mutex<()>>,
    /// The last connect failure, while its backoff runs: requests fail at once meanwhile.
    failure: ArcSwapOption<ConnectFailure>,
    client: HttpClient,
    tls: Option<TlsTarget>,
    h1: H1Client,
}

type H2Connection = crate::http2::client::Connection;

#[derive(Debug)]
struct ConnectFailure {
    until: Instant,
    consecutive: u32,
    error: String,
}

/// The first pause after a connect failure; it doubles with each failure in a row.
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest pause between connect attempts.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The endpoint failed to connect recently: requests fail at once until its backoff ends.
#[derive(Debug, thiserror::Error)]
#[error("{addr} is backing off after {consecutive} failed connect(s): {error}")]
pub struct EndpointDown {
    addr: SocketAddr,
    consecutive: u32,
    error: String,
}

/// The response future of [`EndpointClient`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl EndpointClient {
    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// False while the endpoint backs off after failing to connect: a balancer should pick
    /// another.
    pub fn is_available(&self) -> bool {
        self.inner.backing_off().is_none()
    }

    /// The identity the endpoint proves over mutual TLS, when it is reached that way.
    pub fn identity(&self) -> Option<&Identity> {
        self.inner.tls.as_ref().map(|t| &t.identity)
    }
}

impl tower::Service<Request<Body>> for EndpointClient {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Connections are made on demand in `call`; an endpoint that cannot be reached fails
        // its requests at once with a classified error while it backs off.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        let upstream = self.inner.client.tag_upstream.then_some(self.inner.addr);
        if req.version() != Version::HTTP_2 {
            let inner = self.inner.clone();
            return Box::pin(async move { tagged(inner.send_h1(req).await, upstream) });
        }
        // The common case: a live connection takes the request at once, and the future only
        // waits for the answer. It is a fifth of the size of the one that may also connect,
        // and the future is moved into its box on every request.
        match self.inner.send_h2_now(req) {
            SentNow::Sent(exchange) => Box::pin(H2Response { exchange, upstream }),
            SentNow::Failed(e) => Box::pin(std::future::ready(Err(e.into()))),
            SentNow::NotNow(req) => {
                let inner = self.inner.clone();
                Box::pin(async move { tagged(inner.send_h2(req).await, upstream) })
            }
        }
    }
}

/// What became of a request offered to the live HTTP/2 connection.
enum SentNow {
    /// Sent: the answer is awaited.
    Sent(crate::http2::client::Exchange),
    /// The connection failed as the request went.
    Failed(ProxyError),
    /// Not sent: no connection takes a stream at once, or the request needs its authority
    /// from `Host`.
    NotNow(Request<Body>),
}

/// Puts the endpoint's address in the response, when tagging.
fn tagged(
    rsp: Result<Response<Body>, BoxError>,
    upstream: Option<SocketAddr>,
) -> Result<Response<Body>, BoxError> {
    let mut rsp = rsp?;
    if let Some(addr) = upstream {
        rsp.extensions_mut().insert(Upstream(addr));
    }
    Ok(rsp)
}

/// The response of a request already sent on a live HTTP/2 connection.
struct H2Response {
    exchange: crate::http2::client::Exchange,
    upstream: Option<SocketAddr>,
}

impl Future for H2Response {
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let answered = std::task::ready!(Pin::new(&mut this.exchange).poll(cx));
        let rsp = answered
            .map(|rsp| rsp.map(Body::H2))
            .map_err(|e| h2_request_failed(e, false).into());
        Poll::Ready(tagged(rsp, this.upstream))
    }
}

impl Inner {
    /// Sends `req` on the live HTTP/2 connection when there is one that takes a stream at
    /// once; gives the request back otherwise.
    fn send_h2_now(&self, req: Request<Body>) -> SentNow {
        if req.uri().authority().is_none() {
            return SentNow::NotNow(req);
        }
        let live = self.h2.load();
        let ready = live
            .as_ref()
            .filter(|c| !c.is_closed())
            .and_then(|c| c.ready_now());
        let Some(mut tx) = ready else {
            return SentNow::NotNow(req);
        };
        match crate::http2::client::send(&mut tx, req) {
            Ok(exchange) => SentNow::Sent(exchange),
            Err(e) => SentNow::Failed(h2_request_failed(e, true)),
        }
    }

    fn live_h2(&self) -> Option<Arc<H2Connection>> {
        self.h2.load_full().filter(|c| !c.is_closed())
    }

    fn backing_off(&self) -> Option<EndpointDown> {
        let guard = self.failure.load();
        let failure = guard.as_ref()?;
        (Instant::now() < failure.until).then(|| EndpointDown {
            addr: self.addr,
            consecutive: failure.consecutive,
            error: failure.error.clone(),
        })
    }

    fn record_failure(&self, error: &dyn std::fmt::Display) {
        let consecutive = self.failure.load().as_ref().map_or(0, |f| f.consecutive) + 1;
        // Once per attempt, and attempts back off: the log cannot flood.
        tracing::info!(addr = %self.addr, consecutive, %error, "endpoint connect failed; backing off");
        let backoff = CONNECT_BACKOFF_MIN
            .saturating_mul(1 << (consecutive - 1).min(16))
            .min(CONNECT_BACKOFF_MAX);
        self.failure.store(Some(Arc::new(ConnectFailure {
            until: Instant::now() + backoff,
            consecutive,
            error: error.to_string(),
        })));
    }

    fn record_success(&self) {
        if self.failure.load().is_some() {
            self.failure.store(None);
        }
    }

    async fn h2_connection(self: &Arc<Self>) -> Result<Arc<H2Connection>, ProxyError> {
        if let Some(conn) = self.live_h2() {
            return Ok(conn);
        }
        if let Some(down) = self.backing_off() {
            return Err(ProxyError::new(Cause::EndpointDown, down));
        }
        let connecting = self.connecting.clone().lock_owned().await;
        if let Some(conn) = self.live_h2() {
            return Ok(conn);
        }
        if let Some(down) = self.backing_off() {
            return Err(ProxyError::new(Cause::EndpointDown, down));
        }
        // Connect in a task of its own: if this request is cancelled, the attempt goes on and
        // serves the requests waiting behind it.
        let this = self.clone();
        let attempt = tokio::spawn(async move {
            let _connecting = connecting;
            this.connect_h2().await
        });
        match attempt.await {
            Ok(result) => result,
            Err(e) => Err(ProxyError::new(Cause::Connect, e)),
        }
    }

    async fn connect_h2(&self) -> Result<Arc<H2Connection>, ProxyError> {
        let result = async {
            let started = tokio::time::Instant::now();
            let tcp = tcp::connect(self.addr, self.client.connect_timeout).await?;
            let left = self
                .client
                .connect_timeout
                .saturating_sub(started.elapsed());
            let h2_failed = |e| ProxyError::new(Cause::H2Handshake, e);
            match &self.tls {
                None => self.client.h2.handshake(tcp, self.addr).await,
                Some(target) => {
                    let io = target.secure(tcp, Alpn::H2, left).await?;
                    self.client.h2.handshake(io, self.addr).await
                }
            }
            .map_err(h2_failed)
        }
        .await;
        let conn = match result {
            Ok(conn) => Arc::new(conn),
            Err(e) => {
                self.record_failure(&e);
                return Err(e);
            }
        };
        self.record_success();
        self.h2.store(Some(conn.clone()));
        Ok(conn)
    }

    /// Drops `conn` as this endpoint's connection: it refused a new stream.
    fn forget_h2(&self, conn: &Arc<H2Connection>) {
        conn.close();
        let _ = self.h2.compare_and_swap(&Some(conn.clone()), None);
    }

    async fn send_h2(self: Arc<Self>, mut req: Request<Body>) -> Result<Response<Body>, BoxError> {
        if req.uri().authority().is_none() {
            // HTTP/2 allows `Host` in place of `:authority`; the h2 client needs the latter.
            absolute_uri_from_host(&mut req)?;
        }
        let conn = self.h2_connection().await?;
        let mut tx = match conn.ready().await {
            Ok(tx) => tx,
            // The connection failed (GOAWAY, reset) before the request went out: it is safe to
            // send it once more, on a fresh connection.
            Err(_) => {
                self.forget_h2(&conn);
                let conn = self.h2_connection().await?;
                match conn.ready().await {
                    Ok(tx) => tx,
                    Err(e) => {
                        self.forget_h2(&conn);
                        return Err(h2_request_failed(e, true).into());
                    }
                }
            }
        };
        let exchange =
            crate::http2::client::send(&mut tx, req).map_err(|e| h2_request_failed(e, true))?;
        drop(tx);
        match exchange.await {
            Ok(rsp) => Ok(rsp.map(Body::H2)),
            Err(e) => Err(h2_request_failed(e, false).into()),
        }
    }

    async fn send_h1(self: Arc<Self>, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        if let Some(down) = self.backing_off() {
            return Err(ProxyError::new(Cause::EndpointDown, down).into());
        }
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = self.authority.clone();
        uri.path_and_query = Some(path);
        parts.uri = Uri::from_parts(uri).map_err(|e| ProxyError::new(Cause::EndpointUri, e))?;
        strip_hop_by_hop(&mut parts.headers);
        let req = Request::from_parts(parts, body);
        let sent = match &self.h1 {
            H1Client::Plain(client) => client.request(req).await,
            H1Client::Tls(client) => client.request(req).await,
        };
        match sent {
            Ok(rsp) => {
                self.record_success();
                let (mut parts, body) = rsp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Body::Incoming(body)))
            }
            Err(e) if e.is_connect() => {
                self.record_failure(&crate::error::error_chain(&e));
                // The TLS connector classifies its own failures (`tls-handshake`,
                // `connect-timeout`); the plain connector's are `connect`.
                let cause = match crate::error::classify(&e) {
                    cause if cause.never_reached_app() => cause,
                    _ => Cause::Connect,
                };
                Err(ProxyError::new(cause, e).into())
            }
            Err(e) => Err(ProxyError::new(Cause::Upstream, e).into()),
        }
    }
}

/// Classifies an HTTP/2 request that failed: a stream the endpoint refused unprocessed is a
/// [`Cause::RefusedStream`] (told by the h2 error's reason, not its text); a request the
/// connection failed before sending (`unsent`) is a [`Cause::ConnectionClosed`]; anything else
/// happened after the request was sent, [`Cause::Upstream`].
fn h2_request_failed(e: h2::Error, unsent: bool) -> ProxyError {
    let cause = match Cause::of_h2(&e) {
        Cause::RefusedStream => Cause::RefusedStream,
        _ if unsent => Cause::ConnectionClosed,
        _ => Cause::Upstream,
    };
    ProxyError::new(cause, e)
}

/// Makes the URI absolute from the `Host` header (scheme `http`).
fn absolute_uri_from_host(req: &mut Request<Body>) -> Result<(), ProxyError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .ok_or_else(|| {
            ProxyError::new(
                Cause::NoAuthority,
                "the request has neither :authority nor Host",
            )
        })?;
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(host);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).map_err(|e| ProxyError::new(Cause::NoAuthority, e))?;
    Ok(())
}

/// Removes the headers that any `Connection` header names: they are hop-by-hop too (RFC 9110,
/// section 7.6.1). Rare: only then allocates.
pub(crate) fn remove_connection_named(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<http::HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| http::HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
}

/// Removes the headers that describe one hop, not the message (RFC 9110, section 7.6.1).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_connection_named(headers);
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::classify;
    use tower::ServiceExt;

    fn h2_request() -> Request<Body> {
        Request::builder()
            .version(Version::HTTP_2)
            .uri("http://web.test/")
            .body(Body::Empty)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusing_endpoint_backs_off_and_fails_fast_meanwhile() {
        // A port nobody listens on: bound, then closed.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let endpoint = HttpClient::new(&ClientConfig::default()).endpoint(addr);
        assert!(endpoint.is_available());

        let err = endpoint.clone().oneshot(h2_request()).await.unwrap_err();
        assert_eq!(classify(&*err).reason(), "connect");
        assert!(!endpoint.is_available());

        // During the backoff no connect is attempted: the error says why, at once.
        let err = endpoint.clone().oneshot(h2_request()).await.unwrap_err();
        assert_eq!(classify(&*err).reason(), "endpoint-down");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        let err = endpoint
            .clone()
            .oneshot(Request::new(Body::Empty))
            .await
            .unwrap_err();
        assert_eq!(classify(&*err).reason(), "endpoint-down");

        // After it, the endpoint is tried again (and fails again, backing off longer).
        tokio::time::advance(CONNECT_BACKOFF_MIN).await;
        assert!(endpoint.is_available());
        let err = endpoint.clone().oneshot(h2_request()).await.unwrap_err();
        assert_eq!(classify(&*err).reason(), "connect");
        tokio::time::advance(CONNECT_BACKOFF_MIN).await;
        assert!(
            !endpoint.is_available(),
            "the second backoff is twice as long"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }
}
