//! Request timeouts: a per-route timeout, and gRPC deadlines (`grpc-timeout`) honoured and
//! propagated, and a fallback so that no request waits forever by default.
//!
//! [`TimeoutLayer`] makes a [`Timeout`] service. Each request gets a deadline, the earlier of:
//!
//! - the route's **request timeout** ([`TimeoutConfig::request`]), and
//! - for gRPC requests (content type `application/grpc...`), the caller's **gRPC deadline**:
//!   the `grpc-timeout` request header.
//!
//! When neither applies, the **fallback** ([`TimeoutConfig::fallback`], 30 s by default,
//! `"off"` lifts it) bounds the time to the response head: a silent endpoint fails the call
//! with a 504 instead of holding the caller forever. A caller's own deadline, longer or not,
//! replaces the fallback: the caller said how long it is willing to wait.
//!
//! Both count from when the request was received: the [`ReceivedAt`] extension when a layer
//! above (the server side) set one, otherwise when this layer is called. The deadline is also
//! left on the request as a [`Deadline`] for the layers below ([`Deadline::of`]: in the
//! server side's [`RequestContext`](crate::context::RequestContext) when there is one).
//!
//! # What the deadlines cover
//!
//! - The **route timeout** covers the time to the response *head*. A response whose head came
//!   in time streams for as long as it takes: downloads, server-sent events and gRPC streams
//!   are not cut by the route timeout (a stream needs an idle timeout, not a total one).
//! - The **gRPC deadline** covers the *whole call*, as the gRPC specification defines it:
//!   the head, and the body of a gRPC response too. A gRPC response still streaming when the
//!   deadline passes is ended with trailers `grpc-status: 4` (DEADLINE_EXCEEDED), a
//!   `grpc-message` and the [`PROXY_ERROR_HEADER`] naming `grpc-deadline`; the upstream body is
//!   dropped, which cancels the upstream stream. This costs one allocation per gRPC response
//!   that carried a deadline (the body is boxed); other responses pass through untouched.
//!
//! # The `grpc-timeout` header
//!
//! The format is the gRPC HTTP/2 protocol's: at most 8 ASCII digits and a unit, `H` (hours),
//! `M` (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n` (nanoseconds),
//! with no sign, space or fraction: `200m`, `1S`, `99999999n`. See [`parse_grpc_timeout`].
//!
//! - **Propagation.** The header is rewritten to the time *left* when this layer forwards the
//!   request: `grpc-timeout: 200m` received, 5 ms spent in the proxy since [`ReceivedAt`], the
//!   upstream sees `195m`. [`encode_grpc_timeout`] keeps the most precision 8 digits allow and
//!   writes it in the largest unit that loses none of it; it truncates, never rounds up, so the
//!   upstream's deadline is never later than the caller's. Only the caller's deadline is
//!   propagated: the route timeout bounds the head only, and telling the upstream about it
//!   would make the upstream cut streams that the route allows.
//! - **Malformed values are ignored**, logged at debug, and forwarded unchanged. The
//!   specification says what a valid value is but not what an intermediary does with an
//!   invalid one; a proxy that answered INVALID_ARGUMENT (or INTERNAL, as grpc-go's server
//!   does) would change the outcome of a call that works without the mesh. Forwarding the
//!   header as it is leaves that verdict to the upstream server, exactly as without the mesh;
//!   the route timeout still applies. (Envoy also ignores a malformed `grpc-timeout`.)
//! - On plain HTTP requests the header means nothing and is left alone.
//! - A deadline already past when the request arrives here (`grpc-timeout: 0n`, or all of it
//!   spent above) fails at once: the request is not sent.
//!
//! # When the deadline passes
//!
//! The inner response future is dropped. Below, hyper's HTTP/2 client sees the response
//! future of `SendRequest::send_request` go away: its dispatch task resets the stream with
//! `RST_STREAM(CANCEL)` (h2 also resets a stream no handle refers to any more), so the
//! upstream stops working on an answer nobody will read; an HTTP/1 request in flight closes
//! its connection. The layer returns a [`ProxyError`] of cause
//! [`RequestTimeout`](Cause::RequestTimeout) (reason [`REQUEST_TIMEOUT`], `request-timeout`)
//! or [`GrpcDeadline`](Cause::GrpcDeadline) ([`GRPC_DEADLINE`], `grpc-deadline`), both of kind
//! [`GatewayTimeout`](crate::error::ErrorKind::GatewayTimeout), and a [`TimeoutError`] as its
//! source. [`Respond`](crate::server::Respond) turns it into a 504, or
//! for a gRPC request into HTTP 200 with `grpc-status: 4` (DEADLINE_EXCEEDED), as
//! [`error_response`](crate::error::error_response) does for every error.
//!
//! Readiness is not timed: `poll_ready` is the inner service's. Waiting for readiness in a
//! per-request `oneshot` still counts against a deadline measured from [`ReceivedAt`].
//!
//! Time is tokio's, so tests run on paused time.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use mesh_core::server::RespondLayer;
//! use mesh_core::timeout::{TimeoutConfig, TimeoutLayer};
//! use mesh_core::{BoxError, Body};
//! use tower::ServiceBuilder;
//!
//! let upstream = tower::service_fn(|_req: http::Request<Body>| async {
//!     Ok::<_, BoxError>(http::Response::new(Body::Empty))
//! });
//! let config = TimeoutConfig {
//!     request: Some(Duration::from_secs(10)),
//!     ..TimeoutConfig::default()
//! };
//! let route = ServiceBuilder::new()
//!     .layer(RespondLayer::new())
//!     .layer(TimeoutLayer::new(&config))
//!     .service(upstream);
//! # let _ = route;
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body::{Frame, SizeHint};
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, Sleep, sleep_until};
use tower::{Layer, Service};

use crate::BoxError;
use crate::body::{Body, BodyError};
use crate::error::{Cause, PROXY_ERROR_HEADER, ProxyError, is_grpc};
use crate::grpc::{Code, GRPC_STATUS};

/// The gRPC request header that carries the caller's deadline.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The reason of a route timeout, in [`PROXY_ERROR_HEADER`] and metrics.
pub const REQUEST_TIMEOUT: &str = Cause::RequestTimeout.reason();

/// The reason of a gRPC deadline, in [`PROXY_ERROR_HEADER`] and metrics.
pub const GRPC_DEADLINE: &str = Cause::GrpcDeadline.reason();

/// The largest `grpc-timeout` value: 8 digits.
const MAX_GRPC_TIMEOUT_VALUE: u128 = 99_999_999;

/// The `grpc-timeout` units, finest first: nanoseconds per unit, and the unit's letter.
const GRPC_UNITS: [(u128, char); 6] = [
    (1, 'n'),
    (1_000, 'u'),
    (1_000_000, 'm'),
    (1_000_000_000, 'S'),
    (60_000_000_000, 'M'),
    (3_600_000_000_000, 'H'),
];

/// The timeouts of one route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// The time to the response head, from when the request was received (`"10s"`); none by
    /// default, since a route may serve long polls. Response bodies are never cut by it.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// Honour and propagate gRPC deadlines (`grpc-timeout`); on by default.
    pub grpc_timeout: bool,
    /// The time to the response head when neither `request` nor a caller's `grpc-timeout`
    /// bounds it; `"off"` lets such a request wait for as long as the upstream takes.
    #[serde(with = "fallback_duration")]
    pub fallback: Option<Duration>,
}

/// The default [`TimeoutConfig::fallback`].
pub const DEFAULT_FALLBACK_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            request: None,
            grpc_timeout: true,
            fallback: Some(DEFAULT_FALLBACK_TIMEOUT),
        }
    }
}

impl TimeoutConfig {
    /// Checks the values; the error names the field and the bound.
    pub fn validate(&self) -> Result<(), crate::config::Invalid> {
        if let Some(d) = self.request {
            crate::config::check_setting_duration("request", d)?;
        }
        if let Some(d) = self.fallback {
            crate::config::check_setting_duration("fallback", d)?;
        }
        Ok(())
    }
}

mod fallback_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text == "off" {
            return Ok(None);
        }
        crate::config::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{e} (or \"off\")")))
    }

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&crate::config::format_duration(*d)),
            None => s.serialize_str("off"),
        }
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| crate::config::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&crate::config::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// When the request was received, as a request extension set by hand: deadlines count from
/// it, so that time spent in the layers above (readiness, queueing) is counted too. The
/// server side stamps the same in its [`RequestContext`](crate::context::RequestContext),
/// which wins; without either, deadlines count from when [`Timeout`] is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceivedAt(pub Instant);

/// The deadline [`Timeout`] enforces, as a request extension for the layers below: a layer
/// that makes the request wait re-stamps `grpc-timeout` with what is left before sending it
/// on ([`encode_grpc_timeout`]; mesh-balance's queue does, when no endpoint was ready).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    /// When the request fails.
    pub at: Instant,
    /// The caller's gRPC deadline (if any), which also bounds the response body.
    pub grpc: Option<Instant>,
}

impl Deadline {
    /// The deadline set on `req`: in its [`RequestContext`](crate::context::RequestContext)
    /// when the server side stamped one, else as an extension of its own.
    pub fn of<B>(req: &Request<B>) -> Option<Deadline> {
        match crate::context::RequestContext::of(req) {
            Some(context) => context.deadline,
            None => req.extensions().get::<Deadline>().copied(),
        }
    }
}

/// Why a request ran out of time: the source of the [`ProxyError`] [`Timeout`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeoutError {
    /// The route's request timeout passed before the response head came.
    #[error("no response within the route's request timeout of {0:?}")]
    Request(Duration),
    /// Nothing else bounded the request and the fallback timeout passed.
    #[error("no response within {0:?}, the fallback timeout of a request with no other deadline")]
    Fallback(Duration),
    /// The caller's gRPC deadline passed.
    #[error("the caller's gRPC deadline of {0:?} passed")]
    GrpcDeadline(Duration),
}

impl TimeoutError {
    fn into_proxy_error(self) -> ProxyError {
        let cause = match self {
            TimeoutError::Request(_) | TimeoutError::Fallback(_) => Cause::RequestTimeout,
            TimeoutError::GrpcDeadline(_) => Cause::GrpcDeadline,
        };
        ProxyError::new(cause, self)
    }
}

/// Why a `grpc-timeout` value is not valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidGrpcTimeout {
    /// No value at all.
    #[error("empty grpc-timeout")]
    Empty,
    /// A unit without digits, or more than 8 digits.
    #[error("grpc-timeout needs 1 to 8 digits before its unit")]
    Length,
    /// Something other than ASCII digits before the unit.
    #[error("grpc-timeout has a non-digit in its value")]
    NotDigits,
    /// The last character is not one of `H M S m u n`.
    #[error("grpc-timeout has no unit (expected one of H M S m u n)")]
    Unit,
}

/// Reads a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`,
/// `n`), nothing else.
pub fn parse_grpc_timeout(value: &[u8]) -> Result<Duration, InvalidGrpcTimeout> {
    let Some((&unit, digits)) = value.split_last() else {
        return Err(InvalidGrpcTimeout::Empty);
    };
    if !(1..=8).contains(&digits.len()) {
        return Err(InvalidGrpcTimeout::Length);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(InvalidGrpcTimeout::NotDigits);
    }
    let n = digits
        .iter()
        .fold(0_u64, |n, d| n * 10 + u64::from(d - b'0'));
    Ok(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return Err(InvalidGrpcTimeout::Unit),
    })
}

/// Writes a `grpc-timeout` value: the most precision 8 digits allow, in the largest unit that
/// loses none of it (`195m` rather than `195000u`). It truncates, never rounds up: the result
/// is never longer than `timeout`. Beyond `99999999H`, that.
pub fn encode_grpc_timeout(timeout: Duration) -> HeaderValue {
    let nanos = timeout.as_nanos();
    if nanos == 0 {
        return HeaderValue::from_static("0n");
    }
    let Some(&(finest, _)) = GRPC_UNITS
        .iter()
        .find(|(scale, _)| nanos / scale <= MAX_GRPC_TIMEOUT_VALUE)
    else {
        return HeaderValue::from_static("99999999H");
    };
    let kept = nanos / finest * finest;
    let (scale, unit) = GRPC_UNITS
        .iter()
        .rev()
        .find(|(scale, _)| kept.is_multiple_of(*scale))
        .copied()
        .unwrap_or((1, 'n'));
    let mut text = (kept / scale).to_string();
    text.push(unit);
    // Digits and a letter are always a valid header value; the fallback is a deadline
    // already passed, never a longer one.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("0n"))
}

/// Makes [`Timeout`] services: the timeouts of one route (see the [module](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeoutLayer {
    request: Option<Duration>,
    grpc_timeout: bool,
    fallback: Option<Duration>,
}

impl TimeoutLayer {
    /// The layer for a route with these timeouts.
    pub fn new(config: &TimeoutConfig) -> Self {
        Self {
            request: config.request,
            grpc_timeout: config.grpc_timeout,
            fallback: config.fallback,
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            request: self.request,
            grpc_timeout: self.grpc_timeout,
            fallback: self.fallback,
        }
    }
}

/// See [`TimeoutLayer`] and the [module](self).
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    request: Option<Duration>,
    grpc_timeout: bool,
    fallback: Option<Duration>,
}

impl<S> Timeout<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The caller's gRPC timeout, when this request's deadline should honour one.
    fn grpc_timeout(&self, req: &Request<Body>) -> Option<Duration> {
        if !self.grpc_timeout || !is_grpc(req) {
            return None;
        }
        let value = req.headers().get(GRPC_TIMEOUT)?;
        match parse_grpc_timeout(value.as_bytes()) {
            Ok(timeout) => Some(timeout),
            Err(error) => {
                tracing::debug!(?value, %error, "ignoring a malformed grpc-timeout");
                None
            }
        }
    }
}

impl<S> Service<Request<Body>> for Timeout<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<Body>) -> ResponseFuture<S::Future> {
        let grpc_timeout = self.grpc_timeout(&req);
        if self.request.is_none() && grpc_timeout.is_none() && self.fallback.is_none() {
            // Nothing to time: not even a clock read.
            return ResponseFuture::untimed(self.inner.call(req));
        }
        let now = crate::clock::now();
        let received = match crate::context::RequestContext::of(&req) {
            Some(context) => Some(context.received_at),
            None => req.extensions().get::<ReceivedAt>().map(|r| r.0),
        };
        let start = received.map_or(now, |at| at.min(now));
        // A deadline too far to represent is no deadline.
        let route = match (self.request, grpc_timeout) {
            (Some(d), _) => Some((d, TimeoutError::Request(d))),
            (None, None) => self.fallback.map(|d| (d, TimeoutError::Fallback(d))),
            (None, Some(_)) => None,
        };
        let route = route.and_then(|(d, error)| Some((start.checked_add(d)?, error)));
        let grpc =
            grpc_timeout.and_then(|d| Some((start.checked_add(d)?, TimeoutError::GrpcDeadline(d))));
        let (at, error) = match (route, grpc) {
            (Some(route), Some(grpc)) if route.0 < grpc.0 => route,
            (_, Some(grpc)) => grpc,
            (Some(route), None) => route,
            (None, None) => return ResponseFuture::untimed(self.inner.call(req)),
        };
        let grpc_at = grpc.map(|(at, _)| at);
        if let Some(grpc_at) = grpc_at {
            let left = grpc_at.saturating_duration_since(now);
            req.headers_mut()
                .insert(GRPC_TIMEOUT, encode_grpc_timeout(left));
        }
        let deadline = Deadline { at, grpc: grpc_at };
        match req
            .extensions_mut()
            .get_mut::<crate::context::RequestContext>()
        {
            Some(context) => context.deadline = Some(deadline),
            None => {
                req.extensions_mut().insert(deadline);
            }
        }
        // A deadline already past: fail without sending.
        let inner = (at > now).then(|| self.inner.call(req));
        ResponseFuture {
            inner,
            sleep: Some(sleep_until(at)),
            error,
            grpc,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Option<F>,
        #[pin]
        sleep: Option<Sleep>,
        error: TimeoutError,
        grpc: Option<(Instant, TimeoutError)>,
    }
}

impl<F> ResponseFuture<F> {
    fn untimed(inner: F) -> Self {
        Self {
            inner: Some(inner),
            sleep: None,
            error: TimeoutError::Request(Duration::ZERO),
            grpc: None,
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("deadline", &self.sleep.as_ref().map(Sleep::deadline))
            .field("grpc_deadline", &self.grpc.map(|(at, _)| at))
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The response first: one that came as the deadline passed is served.
        if let Some(inner) = this.inner.as_mut().as_pin_mut()
            && let Poll::Ready(result) = inner.poll(cx)
        {
            this.inner.set(None);
            this.sleep.set(None);
            let rsp = result.map_err(Into::into)?;
            return Poll::Ready(Ok(match *this.grpc {
                Some((at, error)) => bound_grpc_body(rsp, at, error),
                None => rsp,
            }));
        }
        let expired = this
            .sleep
            .as_mut()
            .as_pin_mut()
            .is_some_and(|sleep| sleep.poll(cx).is_ready());
        if !expired {
            return Poll::Pending;
        }
        // Dropping the inner future cancels the request (see the module doc).
        this.inner.set(None);
        this.sleep.set(None);
        Poll::Ready(Err(this.error.into_proxy_error().into()))
    }
}

/// Bounds the body of a gRPC response still streaming by the caller's deadline.
fn bound_grpc_body(rsp: Response<Body>, at: Instant, error: TimeoutError) -> Response<Body> {
    let grpc = rsp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if !grpc || http_body::Body::is_end_stream(rsp.body()) {
        return rsp;
    }
    rsp.map(|body| {
        Body::boxed(DeadlineBody {
            inner: Some(body),
            sleep: sleep_until(at),
            error,
        })
    })
}

pin_project_lite::pin_project! {
    /// A gRPC response body that ends with DEADLINE_EXCEEDED trailers when the deadline passes.
    struct DeadlineBody {
        // `None` once ended: read to its end, or cut.
        inner: Option<Body>,
        #[pin]
        sleep: Sleep,
        error: TimeoutError,
    }
}

impl DeadlineBody {
    fn trailers(error: TimeoutError) -> HeaderMap {
        let mut trailers = HeaderMap::with_capacity(3);
        trailers.insert(GRPC_STATUS, HeaderValue::from(Code::DEADLINE_EXCEEDED));
        let detail = format!("{GRPC_DEADLINE}: {error}");
        // The detail is ASCII with no '%': a valid grpc-message as it is.
        let detail = HeaderValue::try_from(detail)
            .unwrap_or_else(|_| HeaderValue::from_static(GRPC_DEADLINE));
        trailers.insert("grpc-message", detail.clone());
        trailers.insert(PROXY_ERROR_HEADER, detail);
        trailers
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if this.sleep.poll(cx).is_ready() {
            // Dropping the upstream body cancels the upstream stream.
            *this.inner = None;
            tracing::debug!(error = %this.error, "gRPC deadline passed mid-response");
            return Poll::Ready(Some(Ok(Frame::trailers(Self::trailers(*this.error)))));
        }
        let polled = Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => *this.inner = None,
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => *this.inner = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        // Cut short, the body is shorter than its upstream promised: only the upper bound holds.
        let mut hint = SizeHint::new();
        match &self.inner {
            Some(inner) => {
                if let Some(upper) = http_body::Body::size_hint(inner).upper() {
                    hint.set_upper(upper);
                }
            }
            None => hint.set_upper(0),
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Duration, InvalidGrpcTimeout> {
        parse_grpc_timeout(text.as_bytes())
    }

    fn encode(d: Duration) -> String {
        encode_grpc_timeout(d).to_str().unwrap_or("?").to_owned()
    }

    #[test]
    fn valid_grpc_timeouts_parse() {
        assert_eq!(parse("1H"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("2M"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("3S"), Ok(Duration::from_secs(3)));
        assert_eq!(parse("200m"), Ok(Duration::from_millis(200)));
        assert_eq!(parse("5u"), Ok(Duration::from_micros(5)));
        assert_eq!(parse("7n"), Ok(Duration::from_nanos(7)));
        assert_eq!(parse("0n"), Ok(Duration::ZERO));
        assert_eq!(parse("007S"), Ok(Duration::from_secs(7)));
        assert_eq!(parse("99999999n"), Ok(Duration::from_nanos(99_999_999)));
        assert_eq!(
            parse("99999999H"),
            Ok(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn invalid_grpc_timeouts_are_rejected() {
        assert_eq!(parse(""), Err(InvalidGrpcTimeout::Empty));
        assert_eq!(parse("m"), Err(InvalidGrpcTimeout::Length));
        assert_eq!(parse("123456789n"), Err(InvalidGrpcTimeout::Length));
        assert_eq!(parse("100"), Err(InvalidGrpcTimeout::Unit));
        assert_eq!(parse("1s"), Err(InvalidGrpcTimeout::Unit));
        assert_eq!(parse("1ms"), Err(InvalidGrpcTimeout::NotDigits));
        assert_eq!(parse("-1S"), Err(InvalidGrpcTimeout::NotDigits));
        assert_eq!(parse("+1S"), Err(InvalidGrpcTimeout::NotDigits));
        assert_eq!(parse("1.5S"), Err(InvalidGrpcTimeout::NotDigits));
        assert_eq!(parse(" 1S"), Err(InvalidGrpcTimeout::NotDigits));
        assert_eq!(parse("1S "), Err(InvalidGrpcTimeout::NotDigits));
        assert_eq!(parse("1 S"), Err(InvalidGrpcTimeout::NotDigits));
        assert_eq!(parse("١S"), Err(InvalidGrpcTimeout::NotDigits));
    }

    #[test]
    fn encoding_keeps_precision_in_the_largest_exact_unit() {
        assert_eq!(encode(Duration::ZERO), "0n");
        assert_eq!(encode(Duration::from_nanos(1)), "1n");
        assert_eq!(encode(Duration::from_millis(195)), "195m");
        assert_eq!(encode(Duration::from_secs(1)), "1S");
        assert_eq!(encode(Duration::from_secs(120)), "2M");
        assert_eq!(encode(Duration::from_secs(7200)), "2H");
        assert_eq!(encode(Duration::from_micros(1500)), "1500u");
        assert_eq!(encode(Duration::from_nanos(99_999_999)), "99999999n");
        // 9 digits of nanoseconds: microseconds, truncated, never rounded up.
        assert_eq!(encode(Duration::from_nanos(194_873_251)), "194873u");
        assert_eq!(encode(Duration::from_nanos(199_999_999)), "199999u");
        // Beyond 8 digits of milliseconds: seconds, truncated.
        assert_eq!(encode(Duration::from_millis(123_456_789)), "123456S");
        assert_eq!(encode(Duration::from_secs(99_999_999 * 3600)), "99999999H");
        assert_eq!(encode(Duration::MAX), "99999999H");
    }

    #[test]
    fn encoding_round_trips_and_never_lengthens() {
        for nanos in [
            1_u64,
            999,
            1_000,
            123_456_789,
            5_000_000_000,
            86_400_000_000_123,
            u64::MAX,
        ] {
            let d = Duration::from_nanos(nanos);
            let encoded = encode_grpc_timeout(d);
            assert!(encoded.len() <= 9, "{encoded:?}");
            let back = parse_grpc_timeout(encoded.as_bytes()).unwrap();
            assert!(back <= d, "{d:?} encoded as {encoded:?}");
        }
        for text in ["1H", "30M", "10S", "250m", "100u", "42n"] {
            let d = parse(text).unwrap();
            assert_eq!(encode(d), text);
        }
    }

    #[test]
    fn config_reads_durations_and_defaults_to_no_route_timeout() {
        let c: TimeoutConfig = toml::from_str("request = \"1500ms\"\n").unwrap();
        assert_eq!(c.request, Some(Duration::from_millis(1500)));
        assert!(c.grpc_timeout);
        assert_eq!(c.validate(), Ok(()));
        let c: TimeoutConfig = toml::from_str("").unwrap();
        assert_eq!(c, TimeoutConfig::default());
        assert_eq!(c.request, None);
        assert_eq!(c.fallback, Some(DEFAULT_FALLBACK_TIMEOUT));
        let c: TimeoutConfig = toml::from_str("fallback = \"off\"\n").unwrap();
        assert_eq!(c.fallback, None);
        let c: TimeoutConfig = toml::from_str("fallback = \"2m\"\n").unwrap();
        assert_eq!(c.fallback, Some(Duration::from_secs(120)));
        assert!(toml::from_str::<TimeoutConfig>("fallback = \"never\"\n").is_err());
        assert!(toml::from_str::<TimeoutConfig>("request = \"soon\"\n").is_err());
        let zero = TimeoutConfig {
            request: Some(Duration::ZERO),
            ..TimeoutConfig::default()
        };
        assert_eq!(
            zero.validate().map_err(|e| e.field),
            Err("request".to_owned())
        );
    }
}
