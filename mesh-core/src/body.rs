//! The one body type every stage speaks.
//!
//! Forwarded bodies stay what the connection gave (hyper's `Incoming` over HTTP/1, the h2
//! stream over HTTP/2: no boxing, no copy, flow control passes straight through), bodies the proxy makes itself are `Full` or empty, and a layer that must wrap a
//! body can fall back to `Boxed`. An enum instead of a boxed trait object saves one allocation
//! per request on the forwarding path.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;
use crate::classify::{Class, classify_end};
use crate::grpc::{Code, grpc_status};

/// A request or response body on the data path.
#[derive(Debug, Default)]
pub enum Body {
    /// A body received from a peer over HTTP/1, forwarded as it arrives.
    Incoming(hyper::body::Incoming),
    /// A body received from a peer over HTTP/2 (a client's request, an endpoint's
    /// response), forwarded as it arrives.
    H2(crate::http2::H2Body),
    /// A body the proxy made, sent in one frame.
    Full(Option<Bytes>),
    /// No body at all.
    #[default]
    Empty,
    /// Any other body, boxed.
    Boxed(UnsyncBoxBody<Bytes, BoxError>),
    /// A body received from a peer, whose end an observer is told about.
    Observed(ObservedBody),
}

/// How a forwarded body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyEnd {
    /// Read to its end. For a body observed to classify a gRPC response: the class and the
    /// `grpc-status` its trailers gave.
    Complete {
        /// The class from the trailers, when classifying.
        class: Option<Class>,
        /// The `grpc-status` of the trailers, when classifying and present.
        grpc_status: Option<Code>,
    },
    /// The peer broke it off (reset, connection lost).
    Failed,
    /// Dropped before its end: the reader went away (a client cancelled).
    Dropped,
}

/// Told exactly once how a body ended.
pub trait BodyObserver: Send + Sync {
    /// The body of a response with status `status` ended this way.
    fn on_end(&self, end: BodyEnd, status: http::StatusCode);
}

/// How many observers one body carries inline: one per concern that watches bodies end in the
/// proxy's stacks (metrics, balancing). More are kept in a vector, allocated only then.
const INLINE_OBSERVERS: usize = 2;

/// A received body that tells its observers how it ended, without boxing: each observer is an
/// `Arc` the caller already has.
pub struct ObservedBody {
    body: Received,
    observers: [Option<Arc<dyn BodyObserver>>; INLINE_OBSERVERS],
    more_observers: Vec<Arc<dyn BodyObserver>>,
    classify_grpc: bool,
    status: http::StatusCode,
}

impl ObservedBody {
    /// Observes `body`, the body of a response with status `status`; with `classify_grpc`,
    /// the end reports the class and status its trailers give.
    pub fn new(
        body: Received,
        observer: Arc<dyn BodyObserver>,
        classify_grpc: bool,
        status: http::StatusCode,
    ) -> Self {
        Self {
            body,
            observers: [Some(observer), None],
            more_observers: Vec::new(),
            classify_grpc,
            status,
        }
    }

    /// Adds an observer: the first ones inline, any further in a vector.
    pub fn observe(&mut self, observer: Arc<dyn BodyObserver>) {
        match self.observers.iter_mut().find(|o| o.is_none()) {
            Some(slot) => *slot = Some(observer),
            None => self.more_observers.push(observer),
        }
    }

    /// Also classify the end from the gRPC trailers.
    pub fn classify_grpc(&mut self) {
        self.classify_grpc = true;
    }

    fn finish(&mut self, end: BodyEnd) {
        for observer in self.observers.iter_mut().filter_map(Option::take) {
            observer.on_end(end, self.status);
        }
        for observer in self.more_observers.drain(..) {
            observer.on_end(end, self.status);
        }
    }

    fn complete(&mut self, trailers: Option<&http::HeaderMap>) {
        let end = if self.classify_grpc {
            BodyEnd::Complete {
                class: Some(classify_end(trailers)),
                grpc_status: trailers.and_then(grpc_status),
            }
        } else {
            BodyEnd::Complete {
                class: None,
                grpc_status: None,
            }
        };
        self.finish(end);
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = match &mut self.body {
            Received::Hyper(body) => {
                http_body::Body::poll_frame(Pin::new(body), cx).map_err(|e| BodyError(e.into()))
            }
            Received::H2(body) => {
                http_body::Body::poll_frame(Pin::new(body), cx).map_err(|e| BodyError(e.into()))
            }
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.complete(Some(trailers));
                }
            }
            Poll::Ready(None) => self.complete(None),
            Poll::Ready(Some(Err(_))) => self.finish(BodyEnd::Failed),
            Poll::Pending => {}
        }
        polled
    }
}

/// A body received from a peer, as [`ObservedBody`] watches it.
#[derive(Debug)]
pub enum Received {
    /// Over HTTP/1, through hyper.
    Hyper(hyper::body::Incoming),
    /// Over HTTP/2.
    H2(crate::http2::H2Body),
}

impl Received {
    fn is_end_stream(&self) -> bool {
        match self {
            Received::Hyper(body) => http_body::Body::is_end_stream(body),
            Received::H2(body) => http_body::Body::is_end_stream(body),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Received::Hyper(body) => http_body::Body::size_hint(body),
            Received::H2(body) => http_body::Body::size_hint(body),
        }
    }
}

impl Body {
    /// The body as a [`Received`] one, if it is one not yet observed; itself otherwise.
    pub fn into_received(self) -> Result<Received, Body> {
        match self {
            Body::Incoming(body) => Ok(Received::Hyper(body)),
            Body::H2(body) => Ok(Received::H2(body)),
            other => Err(other),
        }
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.finish(BodyEnd::Dropped);
    }
}

impl std::fmt::Debug for ObservedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody")
            .field("body", &self.body)
            .field("classify_grpc", &self.classify_grpc)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
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
    // The error itself, not its source: a cause a layer attached to a body's error (a body
    // over its limit) is then found by classification.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
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
            Body::H2(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| BodyError(e.into())),
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Empty => Poll::Ready(None),
            Body::Boxed(body) => Pin::new(body).poll_frame(cx).map_err(BodyError),
            Body::Observed(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Incoming(body) => body.is_end_stream(),
            Body::H2(body) => body.is_end_stream(),
            Body::Full(data) => data.is_none(),
            Body::Empty => true,
            Body::Boxed(body) => body.is_end_stream(),
            Body::Observed(body) => body.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Incoming(body) => body.size_hint(),
            Body::H2(body) => body.size_hint(),
            Body::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            Body::Full(None) | Body::Empty => SizeHint::with_exact(0),
            Body::Boxed(body) => body.size_hint(),
            Body::Observed(body) => body.body.size_hint(),
        }
    }
}
