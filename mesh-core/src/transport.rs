//! The seam between plain TCP and a secured transport: the client side asks a [`TlsConnect`]
//! to wrap a connected socket when the endpoint has an identity.
//!
//! mesh-core knows nothing of certificates: mesh-tls implements [`TlsConnect`] and a binary
//! hands it to [`HttpClient::with_tls`](crate::client::HttpClient::with_tls). The boxing costs
//! one allocation per connection, never per request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::BoxError;
use crate::identity::Identity;

/// A byte stream the clients can speak HTTP over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connected stream, plain or secured.
pub type BoxedIo = Box<dyn Io>;

/// Which application protocol the connection will carry (TLS ALPN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`.
    H2,
    /// `http/1.1`.
    Http1,
    /// No ALPN: opaque bytes.
    None,
}

/// The future of [`TlsConnect::connect`].
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<BoxedIo, BoxError>> + Send>>;

/// Secures a connected socket toward a server that must prove `server`.
pub trait TlsConnect: fmt::Debug + Send + Sync + 'static {
    /// Handshakes over `tcp`, presenting our identity and verifying that the server is exactly
    /// `server`.
    fn connect(&self, tcp: TcpStream, server: &Identity, alpn: Alpn) -> ConnectFuture;
}
