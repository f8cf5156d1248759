//! Error causes, classification, and the one place where an error becomes a response.
//!
//! An error is classified where it is born: a layer wraps its own error in a [`ProxyError`]
//! carrying a [`Cause`], which says what failed and where. The cause knows everything the
//! rest of the mesh asks of an error:
//!
//! - its [`ErrorKind`], which decides the status: HTTP 502/503/504/403, or for gRPC requests
//!   an HTTP 200 whose headers carry `grpc-status` UNAVAILABLE, DEADLINE_EXCEEDED or
//!   PERMISSION_DENIED (a trailers-only response, as gRPC clients expect);
//! - its reason, a short stable string (`connect`, `refused-stream`, `fail-fast`...) that
//!   the [`PROXY_ERROR_HEADER`] header names, so nobody mistakes a proxy error for the
//!   application's;
//! - whether the request [never reached the application](Cause::never_reached_app), which
//!   decides what retries may send again whatever the method.
//!
//! [`classify`] finds the cause of any error (the first [`ProxyError`] in its chain, else what
//! hyper, h2 or tokio say); [`error_response`] turns any error into the response the client
//! sees. Nothing else in the code decides a status.
//!
//! # HTTP/2 refusals
//!
//! An h2 error is a [`Cause::RefusedStream`] when RFC 9113 guarantees that the server did not
//! process the request: the stream was reset with `REFUSED_STREAM` (section 8.7), or a
//! graceful `GOAWAY` (`NO_ERROR`) named a last stream below it (section 6.8). A `GOAWAY` with
//! an error code is not: h2 reports the same error to the streams the server had processed.
//! Any other h2 or hyper error is [`Cause::Upstream`]: the request may have reached the
//! application.

use std::error::Error as StdError;
use std::fmt;

use http::{HeaderValue, Response, StatusCode, header};

use crate::BoxError;
use crate::body::Body;
use crate::grpc::{self, Code};

/// The response header that names why the proxy answered instead of the application.
pub const PROXY_ERROR_HEADER: &str = "mesh-proxy-error";

/// What kind of failure an error is, which decides the response status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The upstream failed: refused, reset, or broke the protocol (502).
    BadGateway,
    /// No upstream can take the request now: unknown service, no endpoints, fail-fast (503).
    Unavailable,
    /// The request ran out of time (504).
    GatewayTimeout,
    /// The caller may not call this (403): authorization denied it.
    Forbidden,
    /// Nothing serves what the request names (404): no route for its host or path.
    NotFound,
    /// The caller sends faster than its limit (429).
    TooManyRequests,
    /// The request's body is over the limit (413).
    PayloadTooLarge,
}

impl ErrorKind {
    /// The HTTP status for a plain HTTP request.
    pub const fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// Is this the mesh's answer about the request itself (denied, not found, over a limit),
    /// rather than a failure to reach or hear an upstream? Answers are not retried.
    pub const fn is_answer(self) -> bool {
        matches!(
            self,
            ErrorKind::Forbidden
                | ErrorKind::NotFound
                | ErrorKind::TooManyRequests
                | ErrorKind::PayloadTooLarge
        )
    }

    /// The gRPC status for a gRPC request.
    pub const fn grpc_status(self) -> Code {
        match self {
            ErrorKind::BadGateway | ErrorKind::Unavailable => Code::UNAVAILABLE,
            ErrorKind::GatewayTimeout => Code::DEADLINE_EXCEEDED,
            ErrorKind::Forbidden => Code::PERMISSION_DENIED,
            // What gRPC clients make of an HTTP 404 themselves.
            ErrorKind::NotFound => Code::UNIMPLEMENTED,
            ErrorKind::TooManyRequests | ErrorKind::PayloadTooLarge => Code::RESOURCE_EXHAUSTED,
        }
    }
}

/// Where an error was born, and so what it means for the caller, for retries and for the
/// response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// The TCP connect to the endpoint failed (refused, unreachable). `connect`, 502.
    Connect,
    /// The TCP connect to the endpoint got no answer in time. `connect-timeout`, 502.
    ConnectTimeout,
    /// The endpoint failed to connect recently and backs off: no connect was tried.
    /// `endpoint-down`, 502.
    EndpointDown,
    /// The TLS handshake with the endpoint failed (or it did not prove the identity expected).
    /// `tls-handshake`, 502.
    TlsHandshake,
    /// The HTTP/2 handshake with the endpoint failed. `h2-handshake`, 502.
    H2Handshake,
    /// The HTTP/2 connection closed before the request went out on it (the client gave the
    /// request back unsent), even on a fresh connection. `connection-closed`, 502.
    ConnectionClosed,
    /// The endpoint refused the HTTP/2 stream before processing it: `REFUSED_STREAM`, or
    /// beyond the last stream of a graceful `GOAWAY`. `refused-stream`, 502.
    RefusedStream,
    /// The request names no authority the client can send it to. `no-authority`, 502.
    NoAuthority,
    /// The request's URI could not be made for the endpoint. `endpoint-uri`, 502.
    EndpointUri,
    /// The upstream failed after the request was sent: reset, closed, or broke the protocol.
    /// `upstream`, 502.
    Upstream,
    /// An error nothing classified, taken for an upstream failure. `upstream-error`, 502.
    UpstreamError,
    /// The HTTP client timed out (hyper's timeout). `upstream-timeout`, 504.
    UpstreamTimeout,
    /// Some timer ran out (tokio's `Elapsed`). `timeout`, 504.
    Timeout,
    /// The route's request timeout passed. `request-timeout`, 504.
    RequestTimeout,
    /// The caller's gRPC deadline passed. `grpc-deadline`, 504.
    GrpcDeadline,
    /// No endpoint was ready within the balancer's fail-fast timeout, or the balancer is
    /// failing fast. `fail-fast`, 503.
    FailFast,
    /// The balancer's queue of requests waiting for an endpoint is full. `queue-full`, 503.
    QueueFull,
    /// No service is known by the request's authority. `unknown-authority`, 503.
    UnknownAuthority,
    /// Authorization denied the caller. `unauthorized`, 403.
    Unauthorized,
    /// No route serves the request's host and path (the ingress). `no-route`, 404.
    NoRoute,
    /// The client is over its request rate. `rate-limited`, 429.
    RateLimited,
    /// The request's body is over the limit. `body-too-large`, 413.
    BodyTooLarge,
}

impl Cause {
    /// Every cause.
    pub const ALL: [Cause; 22] = [
        Cause::Connect,
        Cause::ConnectTimeout,
        Cause::EndpointDown,
        Cause::TlsHandshake,
        Cause::H2Handshake,
        Cause::ConnectionClosed,
        Cause::RefusedStream,
        Cause::NoAuthority,
        Cause::EndpointUri,
        Cause::Upstream,
        Cause::UpstreamError,
        Cause::UpstreamTimeout,
        Cause::Timeout,
        Cause::RequestTimeout,
        Cause::GrpcDeadline,
        Cause::FailFast,
        Cause::QueueFull,
        Cause::UnknownAuthority,
        Cause::Unauthorized,
        Cause::NoRoute,
        Cause::RateLimited,
        Cause::BodyTooLarge,
    ];

    /// The kind of failure, which decides the status.
    pub const fn kind(self) -> ErrorKind {
        match self {
            Cause::Connect
            | Cause::ConnectTimeout
            | Cause::EndpointDown
            | Cause::TlsHandshake
            | Cause::H2Handshake
            | Cause::ConnectionClosed
            | Cause::RefusedStream
            | Cause::NoAuthority
            | Cause::EndpointUri
            | Cause::Upstream
            | Cause::UpstreamError => ErrorKind::BadGateway,
            Cause::UpstreamTimeout
            | Cause::Timeout
            | Cause::RequestTimeout
            | Cause::GrpcDeadline => ErrorKind::GatewayTimeout,
            Cause::FailFast | Cause::QueueFull | Cause::UnknownAuthority => ErrorKind::Unavailable,
            Cause::Unauthorized => ErrorKind::Forbidden,
            Cause::NoRoute => ErrorKind::NotFound,
            Cause::RateLimited => ErrorKind::TooManyRequests,
            Cause::BodyTooLarge => ErrorKind::PayloadTooLarge,
        }
    }

    /// The short reason, stable: the [`PROXY_ERROR_HEADER`] header and logs name it.
    pub const fn reason(self) -> &'static str {
        match self {
            Cause::Connect => "connect",
            Cause::ConnectTimeout => "connect-timeout",
            Cause::EndpointDown => "endpoint-down",
            Cause::TlsHandshake => "tls-handshake",
            Cause::H2Handshake => "h2-handshake",
            Cause::ConnectionClosed => "connection-closed",
            Cause::RefusedStream => "refused-stream",
            Cause::NoAuthority => "no-authority",
            Cause::EndpointUri => "endpoint-uri",
            Cause::Upstream => "upstream",
            Cause::UpstreamError => "upstream-error",
            Cause::UpstreamTimeout => "upstream-timeout",
            Cause::Timeout => "timeout",
            Cause::RequestTimeout => "request-timeout",
            Cause::GrpcDeadline => "grpc-deadline",
            Cause::FailFast => "fail-fast",
            Cause::QueueFull => "queue-full",
            Cause::UnknownAuthority => "unknown-authority",
            Cause::Unauthorized => "unauthorized",
            Cause::NoRoute => "no-route",
            Cause::RateLimited => "rate-limited",
            Cause::BodyTooLarge => "body-too-large",
        }
    }

    /// Was the request certainly never sent to the application? True for failures to reach
    /// an endpoint (connect, TLS, HTTP/2 handshake, backoff), streams the endpoint refused
    /// unprocessed, and requests the mesh itself stopped (no endpoint ready, queue full,
    /// unknown authority, denied). False when the request may have been sent, even partly:
    /// upstream failures and timeouts.
    pub const fn never_reached_app(self) -> bool {
        match self {
            Cause::Connect
            | Cause::ConnectTimeout
            | Cause::EndpointDown
            | Cause::TlsHandshake
            | Cause::H2Handshake
            | Cause::ConnectionClosed
            | Cause::RefusedStream
            | Cause::NoAuthority
            | Cause::EndpointUri
            | Cause::FailFast
            | Cause::QueueFull
            | Cause::UnknownAuthority
            | Cause::Unauthorized
            | Cause::NoRoute
            | Cause::RateLimited
            | Cause::BodyTooLarge => true,
            Cause::Upstream
            | Cause::UpstreamError
            | Cause::UpstreamTimeout
            | Cause::Timeout
            | Cause::RequestTimeout
            | Cause::GrpcDeadline => false,
        }
    }

    /// The cause an HTTP/2 error says: [`RefusedStream`](Cause::RefusedStream) when the
    /// server did not process the stream (see the [module](self) documentation), else
    /// [`Upstream`](Cause::Upstream).
    pub fn of_h2(err: &h2::Error) -> Cause {
        let refused = match err.reason() {
            Some(h2::Reason::REFUSED_STREAM) => true,
            // Only a graceful GOAWAY: after one with an error code, h2 gives the same error to
            // the streams the server did process.
            Some(h2::Reason::NO_ERROR) => err.is_go_away() && err.is_remote(),
            _ => false,
        };
        if refused {
            Cause::RefusedStream
        } else {
            Cause::Upstream
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// An error with its cause attached where it was born.
#[derive(Debug)]
pub struct ProxyError {
    cause: Cause,
    source: BoxError,
}

impl ProxyError {
    /// `source`, born of `cause`.
    pub fn new(cause: Cause, source: impl Into<BoxError>) -> Self {
        Self {
            cause,
            source: source.into(),
        }
    }

    /// Where the error was born.
    pub fn cause(&self) -> Cause {
        self.cause
    }

    /// The classification: [`Cause::kind`].
    pub fn kind(&self) -> ErrorKind {
        self.cause.kind()
    }

    /// The short reason: [`Cause::reason`].
    pub fn reason(&self) -> &'static str {
        self.cause.reason()
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.cause.reason(), self.source)
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// The cause of any error, walking its source chain: the first [`ProxyError`] decides;
/// otherwise a hyper timeout is [`UpstreamTimeout`](Cause::UpstreamTimeout), tokio's
/// `Elapsed` a [`Timeout`](Cause::Timeout), an h2 error [`Cause::of_h2`], any other hyper
/// error [`Upstream`](Cause::Upstream); anything else is an
/// [`UpstreamError`](Cause::UpstreamError).
pub fn classify(err: &(dyn StdError + 'static)) -> Cause {
    let mut unclassified = Cause::UpstreamError;
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(p) = e.downcast_ref::<ProxyError>() {
            return p.cause;
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return Cause::UpstreamTimeout;
            }
            // Its source may be an h2 error that says more.
            unclassified = Cause::Upstream;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return Cause::of_h2(h2);
        }
        if e.is::<tokio::time::error::Elapsed>() {
            return Cause::Timeout;
        }
        next = e.source();
    }
    unclassified
}

/// Is this request gRPC? (Its content type says so; the server side's
/// [`RequestContext`](crate::context::RequestContext) when it stamped one.)
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    if let Some(context) = crate::context::RequestContext::of(req) {
        return context.grpc;
    }
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// The one mapping from an error to the response a client sees.
pub fn error_response(err: &(dyn StdError + 'static), grpc: bool) -> Response<Body> {
    let cause = classify(err);
    let (kind, reason) = (cause.kind(), cause.reason());
    let detail = header_safe(&error_chain(err));
    let mut rsp = Response::new(Body::Empty);
    if grpc {
        let message = grpc_message(&format!("{reason}: {}", detail.to_str().unwrap_or(reason)));
        let headers = rsp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(grpc::GRPC_STATUS, HeaderValue::from(kind.grpc_status()));
        headers.insert("grpc-message", message);
    } else {
        *rsp.status_mut() = kind.http_status();
        *rsp.body_mut() = Body::full(format!("{}\n", detail.to_str().unwrap_or(reason)));
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if cause == Cause::Unauthorized {
            // A refused client gets its answer and the connection ends (HTTP/1 honours this
            // at once, pipelined requests included; HTTP/2, which has no such header, gets a
            // GOAWAY from the inbound side).
            rsp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    rsp.headers_mut().insert(PROXY_ERROR_HEADER, detail);
    rsp
}

/// `a: b: c` for an error and its sources, without repeating a source already in a message.
pub fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        next = e.source();
    }
    out
}

const MAX_HEADER_DETAIL: usize = 512;

fn header_safe(text: &str) -> HeaderValue {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(MAX_HEADER_DETAIL)
        .collect();
    HeaderValue::from_str(&cleaned).unwrap_or_else(|_| HeaderValue::from_static("proxy-error"))
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 spec asks.
fn grpc_message(text: &str) -> HeaderValue {
    const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
    let encoded = percent_encoding::utf8_percent_encode(text, GRPC_MESSAGE).to_string();
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static("proxy error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_follow_the_kind() {
        let e = ProxyError::new(Cause::UnknownAuthority, "no service named x:80");
        let rsp = error_response(&e, false);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let header = rsp
            .headers()
            .get(PROXY_ERROR_HEADER)
            .map(|v| v.to_str().ok());
        assert_eq!(
            header,
            Some(Some("unknown-authority: no service named x:80"))
        );

        let e = ProxyError::new(Cause::RequestTimeout, "1s elapsed");
        assert_eq!(
            error_response(&e, false).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        let e: BoxError = "connection refused".into();
        assert_eq!(error_response(&*e, false).status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn grpc_requests_get_a_trailers_only_status() {
        let e = ProxyError::new(Cause::Connect, "connection refused");
        let rsp = error_response(&e, true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(
            rsp.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"14"[..])
        );
        assert!(rsp.headers().contains_key("grpc-message"));
        assert!(rsp.headers().contains_key(PROXY_ERROR_HEADER));
        let e = ProxyError::new(Cause::RequestTimeout, "1s elapsed");
        let rsp = error_response(&e, true);
        assert_eq!(
            rsp.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"4"[..])
        );
        let e = ProxyError::new(Cause::Unauthorized, "not on the allow list");
        let rsp = error_response(&e, true);
        assert_eq!(
            rsp.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"7"[..])
        );
    }

    #[test]
    fn classification_walks_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] ProxyError);
        let e = Outer(ProxyError::new(Cause::FailFast, "no endpoint ready"));
        assert_eq!(classify(&e), Cause::FailFast);
        assert_eq!(
            (classify(&e).kind(), classify(&e).reason()),
            (ErrorKind::Unavailable, "fail-fast")
        );
    }

    /// The reasons are a contract (the response header, logs, dashboards): each cause's
    /// reason, status and whether it reached the application, spelled out.
    #[test]
    fn every_cause_has_its_reason_kind_and_reach() {
        use ErrorKind::*;
        let table = [
            (Cause::Connect, "connect", BadGateway, true),
            (Cause::ConnectTimeout, "connect-timeout", BadGateway, true),
            (Cause::EndpointDown, "endpoint-down", BadGateway, true),
            (Cause::TlsHandshake, "tls-handshake", BadGateway, true),
            (Cause::H2Handshake, "h2-handshake", BadGateway, true),
            (
                Cause::ConnectionClosed,
                "connection-closed",
                BadGateway,
                true,
            ),
            (Cause::RefusedStream, "refused-stream", BadGateway, true),
            (Cause::NoAuthority, "no-authority", BadGateway, true),
            (Cause::EndpointUri, "endpoint-uri", BadGateway, true),
            (Cause::Upstream, "upstream", BadGateway, false),
            (Cause::UpstreamError, "upstream-error", BadGateway, false),
            (
                Cause::UpstreamTimeout,
                "upstream-timeout",
                GatewayTimeout,
                false,
            ),
            (Cause::Timeout, "timeout", GatewayTimeout, false),
            (
                Cause::RequestTimeout,
                "request-timeout",
                GatewayTimeout,
                false,
            ),
            (Cause::GrpcDeadline, "grpc-deadline", GatewayTimeout, false),
            (Cause::FailFast, "fail-fast", Unavailable, true),
            (Cause::QueueFull, "queue-full", Unavailable, true),
            (
                Cause::UnknownAuthority,
                "unknown-authority",
                Unavailable,
                true,
            ),
            (Cause::Unauthorized, "unauthorized", Forbidden, true),
            (Cause::NoRoute, "no-route", NotFound, true),
            (Cause::RateLimited, "rate-limited", TooManyRequests, true),
            (Cause::BodyTooLarge, "body-too-large", PayloadTooLarge, true),
        ];
        assert_eq!(table.len(), Cause::ALL.len());
        for ((cause, reason, kind, never_reached), listed) in table.into_iter().zip(Cause::ALL) {
            assert_eq!(cause, listed);
            assert_eq!(cause.reason(), reason);
            assert_eq!(cause.to_string(), reason);
            assert_eq!(cause.kind(), kind, "{cause:?}");
            assert_eq!(cause.never_reached_app(), never_reached, "{cause:?}");
        }
    }

    #[test]
    fn classify_maps_each_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("a layer's own error")]
        struct Wrapped(#[source] BoxError);
        for cause in Cause::ALL {
            let e = ProxyError::new(cause, "detail");
            assert_eq!(classify(&e), cause);
            assert_eq!(e.cause(), cause);
            assert_eq!((e.kind(), e.reason()), (cause.kind(), cause.reason()));
            assert!(e.to_string().starts_with(cause.reason()), "{e}");
            // Wherever it sits in the chain.
            let e = Wrapped(Box::new(Wrapped(Box::new(e))));
            assert_eq!(classify(&e), cause);
            let rsp = error_response(&e, false);
            assert_eq!(rsp.status(), cause.kind().http_status());
            let header = rsp.headers()[PROXY_ERROR_HEADER].to_str().unwrap_or("");
            assert!(header.starts_with(&format!("a layer's own error: {}: detail", cause)));
        }
        // The first ProxyError decides.
        let inner = ProxyError::new(Cause::Connect, "refused");
        let outer = ProxyError::new(Cause::EndpointDown, inner);
        assert_eq!(classify(&outer), Cause::EndpointDown);
        // Nothing classified it: an upstream error.
        let e: BoxError = "something broke".into();
        assert_eq!(classify(&*e), Cause::UpstreamError);
    }

    #[tokio::test]
    async fn a_timer_running_out_is_a_timeout() {
        let elapsed = tokio::time::timeout(std::time::Duration::ZERO, std::future::pending::<()>())
            .await
            .expect_err("a pending future never finishes");
        assert_eq!(classify(&elapsed), Cause::Timeout);
        let boxed: BoxError = Box::new(elapsed);
        assert_eq!(classify(&*boxed), Cause::Timeout);
    }

    #[test]
    fn h2_refused_streams_are_told_apart() {
        #[derive(Debug, thiserror::Error)]
        #[error("the response failed")]
        struct Outer(#[source] h2::Error);
        // A real h2 error, as h2 reports a stream the server reset with REFUSED_STREAM.
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert_eq!(refused.reason(), Some(h2::Reason::REFUSED_STREAM));
        assert_eq!(Cause::of_h2(&refused), Cause::RefusedStream);
        assert_eq!(classify(&refused), Cause::RefusedStream);
        assert_eq!(classify(&Outer(refused)), Cause::RefusedStream);
        assert!(Cause::RefusedStream.never_reached_app());

        // Any other reset: the request may have been processed.
        for reason in [
            h2::Reason::CANCEL,
            h2::Reason::INTERNAL_ERROR,
            h2::Reason::PROTOCOL_ERROR,
            h2::Reason::ENHANCE_YOUR_CALM,
            // NO_ERROR outside a GOAWAY: a server that reset a stream it answered.
            h2::Reason::NO_ERROR,
        ] {
            let e = h2::Error::from(reason);
            assert_eq!(classify(&Outer(e)), Cause::Upstream, "{reason:?}");
        }
        // Classified where it was born, the cause is kept.
        let e = ProxyError::new(
            Cause::RefusedStream,
            h2::Error::from(h2::Reason::REFUSED_STREAM),
        );
        assert_eq!(classify(&e), Cause::RefusedStream);
    }
}
