//! Response classification: the one definition of success and failure, shared by failure
//! accrual, metrics and retries.
//!
//! - An error (connect, reset, protocol) is a failure.
//! - HTTP: a 5xx status is a failure; anything else is a success.
//! - gRPC: the `grpc-status` decides, read from the trailers, or from the headers of a
//!   trailers-only response. UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE and DATA_LOSS
//!   are failures (the server or the path is unwell); the other statuses are the application
//!   answering (NOT_FOUND, INVALID_ARGUMENT, ... are successes of the endpoint), and so is a
//!   code gRPC does not define (see [`Code`]). A gRPC response that ends without any status
//!   broke mid-way: a failure.

use http::{HeaderMap, Response};

use crate::grpc::{Code, grpc_status};

/// Success or failure of one response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// The endpoint answered well.
    Success,
    /// The endpoint or the path failed.
    Failure,
}

/// The class of a gRPC status code ([`Code::is_failure`]).
pub fn grpc_class(code: Code) -> Class {
    if code.is_failure() {
        Class::Failure
    } else {
        Class::Success
    }
}

/// Classifies a response at its head, when the head alone decides: any HTTP response, or a
/// gRPC response with a 5xx status or a `grpc-status` in its headers (trailers-only). `None`:
/// a gRPC response whose trailers will tell ([`classify_end`]).
pub fn classify_head<B>(grpc: bool, rsp: &Response<B>) -> Option<Class> {
    if rsp.status().is_server_error() {
        return Some(Class::Failure);
    }
    if !grpc {
        return Some(Class::Success);
    }
    grpc_status(rsp.headers()).map(grpc_class)
}

/// Classifies a gRPC response at the end of its body, from its trailers (`None`: it ended
/// without trailers).
pub fn classify_end(trailers: Option<&HeaderMap>) -> Class {
    trailers
        .and_then(grpc_status)
        .map_or(Class::Failure, grpc_class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rsp(status: u16, grpc_status: Option<&str>) -> Response<()> {
        let mut b = Response::builder().status(status);
        if let Some(s) = grpc_status {
            b = b.header("grpc-status", s);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn http_5xx_fails_the_rest_succeeds() {
        assert_eq!(classify_head(false, &rsp(200, None)), Some(Class::Success));
        assert_eq!(classify_head(false, &rsp(404, None)), Some(Class::Success));
        assert_eq!(classify_head(false, &rsp(503, None)), Some(Class::Failure));
    }

    #[test]
    fn grpc_status_from_headers_or_trailers() {
        assert_eq!(classify_head(true, &rsp(200, None)), None);
        assert_eq!(
            classify_head(true, &rsp(200, Some("14"))),
            Some(Class::Failure)
        );
        assert_eq!(
            classify_head(true, &rsp(200, Some("5"))),
            Some(Class::Success)
        );
        assert_eq!(classify_head(true, &rsp(502, None)), Some(Class::Failure));
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(classify_end(Some(&t)), Class::Success);
        for code in ["2", "4", "13", "14", "15"] {
            t.insert("grpc-status", code.parse().unwrap());
            assert_eq!(classify_end(Some(&t)), Class::Failure, "{code}");
        }
        t.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(classify_end(Some(&t)), Class::Success);
        assert_eq!(classify_end(None), Class::Failure);
        assert_eq!(classify_end(Some(&HeaderMap::new())), Class::Failure);
    }
}
