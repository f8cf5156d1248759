//! Layers for the edge of the mesh, where requests from outside arrive (mesh-ingress uses
//! them; any hyper or tonic server can): each is a `tower::Layer` usable alone.
//!
//! - [`ClientLayer`]: stamps each request with the [`Client`] its connection came from (the
//!   peer's address, TLS, the SNI), for the layers below;
//! - [`forwarded`]: `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` set; the incoming
//!   ones trusted only from configured proxies, whose word then names the client;
//! - [`request_id`]: a request id header, kept when the client sent a sane one, else made;
//!   echoed on the response;
//! - [`limit`]: a token bucket per client IP (429 past it), and a cap on request bodies (413);
//! - [`access_log`]: one JSON line per request, written when its response ends;
//! - [`grpc_web`]: gRPC-Web and gRPC-Web-text requests translated to gRPC, and their
//!   responses back (trailers as the final frame), so that browsers call gRPC services.
//!
//! Refusals are errors carrying a mesh-core [`Cause`](mesh_core::error::Cause)
//! (`rate-limited`, `body-too-large`), so that mesh-core's one error mapping answers them (429
//! and 413, or gRPC `RESOURCE_EXHAUSTED`) with the reason named.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use mesh_core::{Body, BoxError};
//! use mesh_edge::{ClientLayer, access_log, forwarded, limit, request_id};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = tower::service_fn(|_req: http::Request<Body>| async {
//!     Ok::<_, BoxError>(http::Response::new(Body::full("hello")))
//! });
//! let trusted: forwarded::TrustedProxies = "10.0.0.0/8".parse()?;
//! let limits = limit::RateLimiter::new(&limit::RateLimitConfig::default());
//! let peer = "198.51.100.7:50000".parse()?;
//! let per_connection = ServiceBuilder::new()
//!     .layer(ClientLayer::new(peer, true, None))
//!     .layer(forwarded::ForwardedLayer::new(Arc::new(trusted)))
//!     .layer(request_id::RequestIdLayer::default())
//!     .layer(access_log::AccessLogLayer::new(access_log::AccessLog::stdout()))
//!     .layer(limit::RateLimitLayer::new(limits))
//!     .layer(limit::BodyLimitLayer::new(1 << 20))
//!     .service(app);
//! # let _ = per_connection;
//! # Ok(())
//! # }
//! ```

pub mod access_log;
pub mod forwarded;
pub mod grpc_web;
pub mod limit;
pub mod request_id;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;

/// Where a request came from, stamped by [`ClientLayer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The peer of the connection.
    pub peer: SocketAddr,
    /// The client as far as can be told: the peer, or what trusted proxies say
    /// ([`forwarded`]).
    pub ip: IpAddr,
    /// Whether the connection is TLS (the scheme is `https`).
    pub https: bool,
    /// The name the client asked for in its ClientHello.
    pub sni: Option<Arc<str>>,
}

impl Client {
    /// The client of `req`, if a [`ClientLayer`] stamped one.
    pub fn of<B>(req: &Request<B>) -> Option<&Client> {
        req.extensions().get::<Client>()
    }
}

/// The route that took a request, in its response's extensions (an ingress's routes put it
/// there), for the access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTag {
    /// The host pattern the route serves (`*` for every host).
    pub host: Arc<str>,
    /// The route's name.
    pub route: Arc<str>,
}

/// Stamps each request of one connection with its [`Client`].
#[derive(Clone, Debug)]
pub struct ClientLayer {
    client: Client,
}

impl ClientLayer {
    /// The layer for a connection from `peer`, over TLS or not, with the SNI asked for.
    pub fn new(peer: SocketAddr, https: bool, sni: Option<Arc<str>>) -> Self {
        Self {
            client: Client {
                peer,
                ip: peer.ip(),
                https,
                sni,
            },
        }
    }
}

impl<S> tower::Layer<S> for ClientLayer {
    type Service = ClientService<S>;

    fn layer(&self, inner: S) -> ClientService<S> {
        ClientService {
            client: self.client.clone(),
            inner,
        }
    }
}

/// See [`ClientLayer`].
#[derive(Clone, Debug)]
pub struct ClientService<S> {
    client: Client,
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for ClientService<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        req.extensions_mut().insert(self.client.clone());
        self.inner.call(req)
    }
}
