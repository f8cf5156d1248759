//! The HTTP client side: one service per endpoint.
//!
//! HTTP/2 requests travel on one multiplexed connection per endpoint, shared by every caller
//! (a lock-free load of the live connection on the hot path; a connect lock only while
//! (re)connecting). HTTP/1.1 requests use a keep-alive pool per endpoint (hyper-util's pool).
//! The protocol follows the request: h2 end to end for h2 clients, HTTP/1.1 for HTTP/1.1.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri, Version, header};
use hyper::client::conn::http2;
use hyper_util::client::legacy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};

use crate::body::Body;
use crate::error::ProxyError;
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

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(90),
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
    h2: Arc<http2::Builder<TokioExecutor>>,
    connect_timeout: Duration,
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
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .initial_stream_window_size(config.initial_stream_window)
            .initial_connection_window_size(config.initial_connection_window)
            .keep_alive_interval(config.keep_alive_interval)
            .keep_alive_timeout(config.keep_alive_interval * 2);
        Self {
            h1,
            h2: Arc::new(h2),
            connect_timeout: config.connect_timeout,
        }
    }

    /// A service that sends requests to `addr`.
    pub fn endpoint(&self, addr: SocketAddr) -> EndpointClient {
        let authority = Authority::try_from(addr.to_string().as_str()).ok();
        EndpointClient {
            inner: Arc::new(Inner {
                addr,
                authority,
                h2: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
                client: self.clone(),
            }),
        }
    }
}

/// Sends each request to one endpoint; cheap to clone (clones share connections).
#[derive(Clone, Debug)]
pub struct EndpointClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    authority: Option<Authority>,
    h2: ArcSwapOption<http2::SendRequest<Body>>,
    connecting: tokio::sync::Mutex<()>,
    client: HttpClient,
}

/// The response future of [`EndpointClient`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl EndpointClient {
    /// The endpoint's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }
}

impl tower::Service<Request<Body>> for EndpointClient {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Connections are made on demand in `call`; an endpoint that cannot be reached fails
        // its requests with a classified connect error.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        let inner = self.inner.clone();
        if req.version() == Version::HTTP_2 {
            Box::pin(async move { inner.send_h2(req).await })
        } else {
            Box::pin(async move { inner.send_h1(req).await })
        }
    }
}

impl Inner {
    fn live_h2(&self) -> Option<http2::SendRequest<Body>> {
        let guard = self.h2.load();
        guard
            .as_ref()
            .filter(|tx| !tx.is_closed())
            .map(|tx| (**tx).clone())
    }

    async fn h2_sender(&self) -> Result<http2::SendRequest<Body>, ProxyError> {
        if let Some(tx) = self.live_h2() {
            return Ok(tx);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(tx) = self.live_h2() {
            return Ok(tx);
        }
        let io = tcp::connect(self.addr, self.client.connect_timeout).await?;
        let (tx, conn) = self
            .client
            .h2
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::bad_gateway("h2-handshake", e))?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "h2 connection to endpoint ended");
            }
        });
        self.h2.store(Some(Arc::new(tx.clone())));
        Ok(tx)
    }

    async fn send_h2(&self, req: Request<Body>) -> Result<Response<Body>, BoxError> {
        let mut tx = self.h2_sender().await?;
        match tx.send_request(req).await {
            Ok(rsp) => Ok(rsp.map(Body::Incoming)),
            Err(e) => Err(ProxyError::bad_gateway("upstream", e).into()),
        }
    }

    async fn send_h1(&self, req: Request<Body>) -> Result<Response<Body>, BoxError> {
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
        parts.uri = Uri::from_parts(uri).map_err(|e| ProxyError::bad_gateway("endpoint-uri", e))?;
        strip_hop_by_hop(&mut parts.headers);
        let req = Request::from_parts(parts, body);
        match self.client.h1.request(req).await {
            Ok(rsp) => {
                let (mut parts, body) = rsp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Body::Incoming(body)))
            }
            Err(e) if e.is_connect() => Err(ProxyError::bad_gateway("connect", e).into()),
            Err(e) => Err(ProxyError::bad_gateway("upstream", e).into()),
        }
    }
}

/// Removes the headers that describe one hop, not the message (RFC 9110, section 7.6.1).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(named) = headers.get(header::CONNECTION).cloned()
        && let Ok(named) = named.to_str()
    {
        for name in named.split(',') {
            headers.remove(name.trim());
        }
    }
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
