//! Error classification, and the one place where an error becomes a response.
//!
//! An error is classified where it is born: a layer wraps its own error in a [`ProxyError`]
//! carrying an [`ErrorKind`] (which status it deserves) and a short machine-readable reason.
//! [`error_response`] turns any error into the response the client sees: HTTP 502/503/504,
//! or for gRPC requests an HTTP 200 whose headers carry `grpc-status` UNAVAILABLE or
//! DEADLINE_EXCEEDED (a trailers-only response, as gRPC clients expect). Either way the
//! [`PROXY_ERROR_HEADER`] header names the proxy's reason, so nobody mistakes a proxy
//! error for the application's.

use std::error::Error as StdError;
use std::fmt;

use http::{HeaderValue, Response, StatusCode, header};

use crate::BoxError;
use crate::body::Body;

/// The response header that names why the proxy answered instead of the application.
pub const PROXY_ERROR_HEADER: &str = "mesh-proxy-error";

/// gRPC status code UNAVAILABLE.
pub const GRPC_UNAVAILABLE: u16 = 14;
/// gRPC status code DEADLINE_EXCEEDED.
pub const GRPC_DEADLINE_EXCEEDED: u16 = 4;
/// gRPC status code PERMISSION_DENIED.
pub const GRPC_PERMISSION_DENIED: u16 = 7;

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
}

impl ErrorKind {
    /// The HTTP status for a plain HTTP request.
    pub const fn http_status(self) -> StatusCode {
        match self {
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        }
    }

    /// The gRPC status for a gRPC request.
    pub const fn grpc_status(self) -> u16 {
        match self {
            ErrorKind::BadGateway | ErrorKind::Unavailable => GRPC_UNAVAILABLE,
            ErrorKind::GatewayTimeout => GRPC_DEADLINE_EXCEEDED,
            ErrorKind::Forbidden => GRPC_PERMISSION_DENIED,
        }
    }
}

/// An error with its classification attached where it was born.
#[derive(Debug)]
pub struct ProxyError {
    kind: ErrorKind,
    reason: &'static str,
    source: BoxError,
}

impl ProxyError {
    /// Classifies `source` as `kind`, with a short reason such as `"unknown-authority"`.
    pub fn new(kind: ErrorKind, reason: &'static str, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            reason,
            source: source.into(),
        }
    }

    /// A 502: the upstream failed.
    pub fn bad_gateway(reason: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::BadGateway, reason, source)
    }

    /// A 503: nothing can take the request now.
    pub fn unavailable(reason: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Unavailable, reason, source)
    }

    /// A 504: out of time.
    pub fn timeout(reason: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::GatewayTimeout, reason, source)
    }

    /// A 403: authorization denied the caller.
    pub fn forbidden(reason: &'static str, source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Forbidden, reason, source)
    }

    /// The classification.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The short reason.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.source)
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// Classifies any error: the first [`ProxyError`] in its chain decides; otherwise hyper and
/// I/O errors are upstream failures (502) and timeouts are 504.
pub fn classify(err: &(dyn StdError + 'static)) -> (ErrorKind, &'static str) {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(p) = e.downcast_ref::<ProxyError>() {
            return (p.kind, p.reason);
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_timeout()
        {
            return (ErrorKind::GatewayTimeout, "upstream-timeout");
        }
        if e.downcast_ref::<tokio::time::error::Elapsed>().is_some() {
            return (ErrorKind::GatewayTimeout, "timeout");
        }
        next = e.source();
    }
    (ErrorKind::BadGateway, "upstream-error")
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
    let (kind, reason) = classify(err);
    let detail = header_safe(&error_chain(err));
    let mut rsp = Response::new(Body::Empty);
    if grpc {
        let message = grpc_message(&format!("{reason}: {}", detail.to_str().unwrap_or(reason)));
        let headers = rsp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(kind.grpc_status()));
        headers.insert("grpc-message", message);
    } else {
        *rsp.status_mut() = kind.http_status();
        *rsp.body_mut() = Body::full(format!("{}\n", detail.to_str().unwrap_or(reason)));
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
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
        let e = ProxyError::unavailable("unknown-authority", "no service named x:80");
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

        let e = ProxyError::timeout("deadline", "1s elapsed");
        assert_eq!(
            error_response(&e, false).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        let e: BoxError = "connection refused".into();
        assert_eq!(error_response(&*e, false).status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn grpc_requests_get_a_trailers_only_status() {
        let e = ProxyError::bad_gateway("connect", "connection refused");
        let rsp = error_response(&e, true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(
            rsp.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"14"[..])
        );
        assert!(rsp.headers().contains_key("grpc-message"));
        assert!(rsp.headers().contains_key(PROXY_ERROR_HEADER));
        let e = ProxyError::timeout("deadline", "1s elapsed");
        let rsp = error_response(&e, true);
        assert_eq!(
            rsp.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"4"[..])
        );
    }

    #[test]
    fn classification_walks_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] ProxyError);
        let e = Outer(ProxyError::unavailable("fail-fast", "no endpoint ready"));
        assert_eq!(classify(&e), (ErrorKind::Unavailable, "fail-fast"));
    }
}
