//! The shared vocabulary of the mesh and the generic layers every stack is built from.
//!
//! mesh-core depends on no sibling crate. It holds what two or more concerns need:
//!
//! - [`endpoint`]: endpoints, authorities (service names), directions;
//! - [`error`]: error classification and the one mapping from an error to a response;
//! - [`detect`]: protocol detection (HTTP/1, HTTP/2, opaque) with a bounded read;
//! - [`server`] and [`client`]: hyper 1 plumbing (h2 end to end, pooled HTTP/1.1), and the
//!   [`Respond`](server::Respond) layer that answers errors;
//! - [`router`]: routing by `:authority` / `Host`;
//! - [`tcp`]: opaque forwarding with half-close;
//! - [`drain`]: graceful shutdown;
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
pub mod client;
pub mod config;
pub mod detect;
pub mod drain;
pub mod endpoint;
pub mod error;
pub mod router;
pub mod server;
pub mod tcp;

pub use body::Body;

/// The error type between layers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The erasure point of an HTTP stage: any stack below, as one cloneable type. Make one
/// with [`erase`].
pub type HttpService =
    tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, StackError>;

/// Erases a stack into an [`HttpService`]: readable type names and fast release builds, for one
/// allocation per request (the boxed future).
pub fn erase<S>(stack: S) -> HttpService
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    use tower::ServiceExt;
    HttpService::new(stack.map_err(|e: S::Error| StackError(e.into())))
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
