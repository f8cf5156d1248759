//! Routing by logical target: the request's `:authority` (or `Host`) names the service.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, header};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::BoxError;
use crate::body::Body;
use crate::endpoint::Authority;
use crate::error::{Cause, ProxyError};

/// The authority a request names: the URI's (HTTP/2, absolute-form HTTP/1) or the `Host`
/// header's.
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// No service is known by the request's authority.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The authority names no configured service.
    #[error("no service is known as {0:?}")]
    UnknownAuthority(String),
    /// The request names no authority at all.
    #[error("the request has neither :authority nor Host")]
    NoAuthority,
}

/// Sends each request to the service its authority names; unknown authorities get a 503
/// (gRPC UNAVAILABLE) naming the authority.
///
/// Cheap to clone: the table is shared. Lookups of normalized authorities (lowercase, with a
/// port) do not allocate.
#[derive(Debug)]
pub struct AuthorityRouter<S> {
    routes: Arc<HashMap<Authority, S>>,
    default_port: u16,
    /// Where requests whose authority names no service go, instead of a 503: a captured
    /// connection's original destination.
    fallback: Option<S>,
}

impl<S: Clone> Clone for AuthorityRouter<S> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            default_port: self.default_port,
            fallback: self.fallback.clone(),
        }
    }
}

impl<S> AuthorityRouter<S> {
    /// Routes to `routes`; authorities without a port get `default_port`.
    pub fn new(routes: impl IntoIterator<Item = (Authority, S)>, default_port: u16) -> Self {
        Self {
            routes: Arc::new(routes.into_iter().collect()),
            default_port,
            fallback: None,
        }
    }

    /// The same routes (shared, not copied), sending requests whose authority names no
    /// service to `fallback`.
    pub fn with_fallback(&self, fallback: S) -> Self {
        Self {
            routes: self.routes.clone(),
            default_port: self.default_port,
            fallback: Some(fallback),
        }
    }

    /// The service for `authority`, if any.
    pub fn lookup(&self, authority: &str) -> Option<&S> {
        match Authority::normalize_request(authority, self.default_port) {
            None => self.routes.get(authority),
            Some(Ok(normal)) => self.routes.get(&normal),
            Some(Err(_)) => None,
        }
    }
}

impl<S> Service<Request<Body>> for AuthorityRouter<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = RouteFuture<S>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture<S> {
        let error = match request_authority(&req) {
            Some(authority) => match self.lookup(authority) {
                Some(svc) => {
                    return RouteFuture::Routed {
                        inner: svc.clone().oneshot(req),
                    };
                }
                None => RouteError::UnknownAuthority(authority.to_owned()),
            },
            None => RouteError::NoAuthority,
        };
        if let Some(fallback) = &self.fallback {
            return RouteFuture::Routed {
                inner: fallback.clone().oneshot(req),
            };
        }
        RouteFuture::Failed {
            error: Some(ProxyError::new(Cause::UnknownAuthority, error)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`AuthorityRouter`].
    #[project = RouteFutureProj]
    pub enum RouteFuture<S: Service<Request<Body>>> {
        /// On its way to the named service.
        Routed { #[pin] inner: Oneshot<S, Request<Body>> },
        /// No service: fails at once.
        Failed { error: Option<ProxyError> },
    }
}

impl<S: Service<Request<Body>>> std::fmt::Debug for RouteFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteFuture::Routed { .. } => f.write_str("RouteFuture::Routed"),
            RouteFuture::Failed { error } => {
                f.debug_tuple("RouteFuture::Failed").field(error).finish()
            }
        }
    }
}

impl<S> Future for RouteFuture<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RouteFutureProj::Routed { inner } => inner.poll(cx).map_err(Into::into),
            RouteFutureProj::Failed { error } => Poll::Ready(Err(match error.take() {
                Some(e) => e.into(),
                None => "route future polled after completion".into(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Cause, classify};

    type Mock = tower_test::mock::Mock<Request<Body>, Response<Body>>;
    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn router() -> (AuthorityRouter<Mock>, Handle) {
        let (mock, handle) = tower_test::mock::pair();
        let auth = Authority::parse("greeter.demo:50051", 80).unwrap();
        (AuthorityRouter::new([(auth, mock)], 80), handle)
    }

    #[tokio::test(start_paused = true)]
    async fn routes_by_authority_in_any_case() {
        let (mut router, mut handle) = router();
        let req = Request::builder()
            .uri("http://Greeter.Demo:50051/x")
            .body(Body::Empty)
            .unwrap();
        let fut = tokio::spawn(router.call(req));
        let (req, send) = handle.next_request().await.unwrap();
        assert_eq!(req.uri().path(), "/x");
        send.send_response(Response::new(Body::Empty));
        assert!(fut.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_authorities_go_to_the_fallback_when_there_is_one() {
        let (router, mut known) = router();
        let (fallback, mut original) = tower_test::mock::pair();
        let mut router = router.with_fallback(fallback);
        let req = Request::builder()
            .uri("/z")
            .header("host", "198.18.3.100")
            .body(Body::Empty)
            .unwrap();
        let fut = tokio::spawn(router.call(req));
        let (req, send) = original.next_request().await.unwrap();
        assert_eq!(req.uri().path(), "/z");
        send.send_response(Response::new(Body::Empty));
        assert!(fut.await.unwrap().is_ok());
        // A known authority still goes to its service.
        let req = Request::builder()
            .uri("http://greeter.demo:50051/")
            .body(Body::Empty)
            .unwrap();
        let fut = tokio::spawn(router.call(req));
        let (_req, send) = known.next_request().await.unwrap();
        send.send_response(Response::new(Body::Empty));
        assert!(fut.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn routes_by_host_header() {
        let (mut router, mut handle) = router();
        let req = Request::builder()
            .uri("/y")
            .header("host", "greeter.demo:50051")
            .body(Body::Empty)
            .unwrap();
        let fut = tokio::spawn(router.call(req));
        let (_req, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(Body::Empty));
        assert!(fut.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_authorities_are_unavailable() {
        let (mut router, _handle) = router();
        let req = Request::builder()
            .uri("http://other:80/")
            .body(Body::Empty)
            .unwrap();
        let err = router.call(req).await.unwrap_err();
        assert_eq!(classify(&*err), Cause::UnknownAuthority);
        assert!(err.to_string().contains("other:80"));
        let req = Request::builder().uri("/").body(Body::Empty).unwrap();
        let err = router.call(req).await.unwrap_err();
        assert_eq!(classify(&*err), Cause::UnknownAuthority);
    }
}
