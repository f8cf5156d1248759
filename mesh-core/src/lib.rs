//! The shared vocabulary of the mesh and the generic layers every stack is built from.
//!
//! mesh-core depends on no sibling crate. It holds what two or more concerns need:
//!
//! - [`endpoint`]: endpoints, authorities (service names), directions;
//! - [`context`]: what the server side learns of a request once (received at, gRPC);
//! - [`clock`]: one clock read shared by the layers a request passes through at once;
//! - [`error`]: error causes, their classification and the one mapping from an error to a
//!   response;
//! - [`classify`]: success or failure of a response (5xx, gRPC status), for accrual and metrics;
//! - [`grpc`]: gRPC status codes;
//! - [`detect`]: protocol detection (HTTP/1, HTTP/2, opaque) with a bounded read;
//! - [`server`] and [`client`]: HTTP/1.1 on hyper (pooled toward endpoints), HTTP/2 end to end
//!   on the h2 crate ([`http2`]), and the [`Respond`](server::Respond) layer that answers
//!   errors;
//! - [`router`]: routing by `:authority` / `Host`;
//! - [`retry`]: retries of failed requests, bounded by a budget;
//! - [`tcp`]: opaque forwarding with half-close;
//! - [`timeout`]: per-route request timeouts, gRPC deadlines honoured and propagated;
//! - [`identity`]: workload identities (SPIFFE) and what a connection proved;
//! - [`transport`]: the seam where mesh-tls secures a client connection;
//! - [`drain`]: graceful shutdown;
//! - [`lazy`]: stacks made on their first request and dropped when idle;
//! - [`config`]: file + environment configuration;
//! - [`Body`] and the erasure aliases [`HttpService`].
//!
//! # Composing
//!
//! A tiny outbound proxy: route by authority to endpoints, answer errors as responses.
//!
//! ```
//! use mesh_core::client::{ClientConfig, HttpClient};
//! use mesh_core::endpoint::Authority;
//! use mesh_core::router::AuthorityRouter;
//! use mesh_core::server::RespondLayer;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = HttpClient::new(&ClientConfig::default());
//! let web = client.endpoint("127.0.0.1:8080".parse()?);
//! let router = AuthorityRouter::new([(Authority::parse("web:80", 80)?, web)], 80);
//! let stack = ServiceBuilder::new().layer(RespondLayer::new()).service(router);
//! // `stack` is a hyper service: `HttpServer::serve(io, protocol, stack, &drain)`.
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```

pub mod body;
pub mod classify;
pub mod client;
pub mod clock;
pub mod config;
pub mod context;
pub mod detect;
pub mod drain;
pub mod endpoint;
pub mod error;
pub mod grpc;
pub mod http2;
pub mod identity;
pub mod lazy;
pub mod panic;
pub mod ports;
pub mod ready_call;
pub mod retry;
pub mod router;
pub mod server;
pub mod tcp;
pub mod timeout;
pub mod transport;

pub use body::Body;

/// A hint a balancer reads before picking a service: false while it is known to fail (an
/// endpoint backing off after connect failures), so that requests go elsewhere.
pub trait Availability {
    /// Can a request sent now expect to be served?
    fn is_available(&self) -> bool;
}

impl Availability for client::EndpointClient {
    fn is_available(&self) -> bool {
        client::EndpointClient::is_available(self)
    }
}

/// The error type between layers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An HTTP service that a stack can share between connections and erase: cheap to clone,
/// `Send + Sync`, with a boxable error and a sendable future. Every stack service is one.
pub trait SharedHttpService:
    tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> SharedHttpService for S where
    S: tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The erasure point of an HTTP stage: any stack below, as one cloneable type (see [`erase`]).
///
/// Cloning is an `Arc` increment (tower's `BoxCloneSyncService` allocates on every clone, and a
/// shared stack is cloned per request); calling allocates the one boxed future.
#[derive(Clone)]
pub struct HttpService(std::sync::Arc<dyn ErasedStack>);

/// The response future of [`HttpService`].
pub type HttpFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<http::Response<Body>, StackError>> + Send>,
>;

trait ErasedStack: Send + Sync {
    fn call(&self, req: http::Request<Body>) -> HttpFuture;
}

impl<S> ErasedStack for S
where
    S: SharedHttpService,
{
    fn call(&self, req: http::Request<Body>) -> HttpFuture {
        let response = ready_call::ReadyCall::new(self.clone(), req);
        Box::pin(async move { response.await.map_err(|e| StackError(e.into())) })
    }
}

impl tower::Service<http::Request<Body>> for HttpService {
    type Response = http::Response<Body>;
    type Error = StackError;
    type Future = HttpFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), StackError>> {
        // Each call drives its own clone of the stack through readiness.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> HttpFuture {
        self.0.call(req)
    }
}

impl std::fmt::Debug for HttpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpService")
    }
}

/// Erases a stack into an [`HttpService`]: readable type names and fast release builds.
pub fn erase<S>(stack: S) -> HttpService
where
    S: SharedHttpService,
{
    HttpService(std::sync::Arc::new(stack))
}

/// The error of an erased stack: a boxed error behind a concrete type.
///
/// A concrete type because a boxed `'static` error inside a boxed future cannot be proven to
/// convert into a boxed error of *any* lifetime, which hyper's `Send` bounds ask for
/// (rust-lang/rust#102211). Its `source` is the boxed error, so classification sees through it.
#[derive(Debug)]
pub struct StackError(pub BoxError);

impl std::fmt::Display for StackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}
