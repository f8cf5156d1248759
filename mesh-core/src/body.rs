//! The one body type every stage speaks.
//!
//! Forwarded bodies stay hyper's `Incoming` (no boxing, no copy: flow control passes straight
//! through), bodies the proxy makes itself are `Full` or empty, and a layer that must wrap a
//! body can fall back to `Boxed`. An enum instead of a boxed trait object saves one allocation
//! per request on the forwarding path.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;

/// A request or response body on the data path.
#[derive(Debug, Default)]
pub enum Body {
    /// A body received from a peer, forwarded as it arrives.
    Incoming(hyper::body::Incoming),
    /// A body the proxy made, sent in one frame.
    Full(Option<Bytes>),
    /// No body at all.
    #[default]
    Empty,
    /// Any other body, boxed.
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Body {
    /// A body of one chunk.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Body::Full(Some(data.into()))
    }

    /// Boxes any body.
    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body::Boxed(body.map_err(Into::into).boxed_unsync())
    }
}

impl From<hyper::body::Incoming> for Body {
    fn from(body: hyper::body::Incoming) -> Self {
        Body::Incoming(body)
    }
}

/// An error while reading a body: the peer reset the stream, the connection broke.
///
/// A concrete type rather than a bare [`BoxError`]: hyper's bounds ask that the error convert
/// into a boxed error of *any* lifetime, which a boxed `'static` error cannot prove inside
/// `Send` connection futures.
#[derive(Debug)]
pub struct BodyError(BoxError);

impl BodyError {
    /// The underlying error.
    pub fn into_inner(self) -> BoxError {
        self.0
    }
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Incoming(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| BodyError(e.into())),
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Empty => Poll::Ready(None),
            Body::Boxed(body) => Pin::new(body).poll_frame(cx).map_err(BodyError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(body) => body.is_end_stream(),
            Body::Full(data) => data.is_none(),
            Body::Empty => true,
            Body::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(body) => body.size_hint(),
            Body::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            Body::Full(None) | Body::Empty => SizeHint::with_exact(0),
            Body::Boxed(body) => body.size_hint(),
        }
    }
}
