//! Limits a client from outside must live with: a request rate per client IP, and the size of
//! a request's body.
//!
//! **Rate**: a token bucket per client IP ([`Client::ip`], so behind a trusted load balancer
//! the real client): `requests_per_second` refill it, up to `burst`. A request that finds the
//! bucket empty is refused with the cause `rate-limited` (429, or gRPC `RESOURCE_EXHAUSTED`).
//! At most `max_clients` buckets are kept: past that, full buckets (clients idle long enough
//! to have refilled) are dropped first, and if every client is active the newcomers share one
//! bucket, so a flood of addresses costs bounded memory and cannot starve known clients.
//!
//! **Body**: a request whose `Content-Length` is over the limit is refused before it is sent
//! (`body-too-large`, 413); a body without a length that grows past it is cut off with the
//! same cause, which resets the upstream stream.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use mesh_core::error::{Cause, ProxyError};
use mesh_core::{Body, BoxError};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::Client;

/// The per-client rate limit.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second each client IP may send, on average (0: no limit).
    pub requests_per_second: f64,
    /// How many it may send at once after a quiet spell.
    pub burst: u32,
    /// Client buckets kept at most.
    pub max_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 0.0,
            burst: 100,
            max_clients: 100_000,
        }
    }
}

impl RateLimitConfig {
    /// Whether there is a limit at all.
    pub fn is_enabled(&self) -> bool {
        self.requests_per_second > 0.0
    }

    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<(), mesh_core::config::Invalid> {
        if !self.requests_per_second.is_finite() || self.requests_per_second < 0.0 {
            return Err(mesh_core::config::Invalid::new(
                "requests_per_second",
                self.requests_per_second.to_string(),
                "a rate of 0 (no limit) or more",
            ));
        }
        if self.is_enabled() && self.burst == 0 {
            return Err(mesh_core::config::Invalid::new(
                "burst",
                "0",
                "at least 1: a bucket that holds no token refuses everything",
            ));
        }
        if self.max_clients == 0 {
            return Err(mesh_core::config::Invalid::new(
                "max_clients",
                "0",
                "at least 1",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every client, shared by every connection.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    refused: std::sync::atomic::AtomicU64,
}

/// Where newcomers share a bucket while every tracked client is active.
const OVERFLOW: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

impl RateLimiter {
    /// Buckets as `config` says.
    pub fn new(config: &RateLimitConfig) -> Arc<Self> {
        Arc::new(Self {
            rate: config.requests_per_second,
            burst: f64::from(config.burst.max(1)),
            max_clients: config.max_clients.max(1),
            buckets: Mutex::new(HashMap::new()),
            refused: Default::default(),
        })
    }

    /// Takes a token of `ip`'s bucket: false when it is empty.
    pub fn try_acquire(&self, ip: IpAddr) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let key = if buckets.contains_key(&ip) || buckets.len() < self.max_clients {
            ip
        } else {
            let refill = Duration::from_secs_f64(self.burst / self.rate);
            buckets.retain(|_, b| now.duration_since(b.at) < refill);
            if buckets.len() < self.max_clients {
                ip
            } else {
                OVERFLOW
            }
        };
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            false
        }
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Clients tracked now.
    pub fn clients(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// Refuses requests of clients over their rate; see the [module](self) documentation.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    /// Limits with `limiter`'s buckets.
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        Self { limiter }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            limiter: self.limiter.clone(),
            inner,
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    limiter: Arc<RateLimiter>,
    inner: S,
}

type Refusable<F> = futures_either::Either<F>;

mod futures_either {
    use super::*;

    pin_project_lite::pin_project! {
        /// The inner service's future, or a refusal.
        #[project = EitherProj]
        #[derive(Debug)]
        pub enum Either<F> {
            /// Passed on.
            Inner { #[pin] future: F },
            /// Refused here.
            Refused { error: Option<BoxError> },
        }
    }

    impl<F, T, E> std::future::Future for Either<F>
    where
        F: std::future::Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        type Output = Result<T, BoxError>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            match self.project() {
                EitherProj::Inner { future } => future.poll(cx).map_err(Into::into),
                EitherProj::Refused { error } => Poll::Ready(Err(error
                    .take()
                    .unwrap_or_else(|| "polled after completion".into()))),
            }
        }
    }
}

pub use futures_either::Either as LimitFuture;

impl<S> tower::Service<Request<Body>> for RateLimit<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Refusable<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let ip = Client::of(&req).map_or(OVERFLOW, |c| c.ip);
        if self.limiter.try_acquire(ip) {
            return LimitFuture::Inner {
                future: self.inner.call(req),
            };
        }
        let error = ProxyError::new(
            Cause::RateLimited,
            format!(
                "{ip} is over its rate of {} requests per second",
                self.limiter.rate
            ),
        );
        LimitFuture::Refused {
            error: Some(error.into()),
        }
    }
}

/// Caps request bodies; see the [module](self) documentation.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimitLayer {
    max: u64,
}

impl BodyLimitLayer {
    /// Bodies of at most `max` bytes.
    pub fn new(max: u64) -> Self {
        Self { max }
    }
}

impl<S> tower::Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> BodyLimit<S> {
        BodyLimit {
            max: self.max,
            inner,
        }
    }
}

/// See [`BodyLimitLayer`].
#[derive(Clone, Debug)]
pub struct BodyLimit<S> {
    max: u64,
    inner: S,
}

impl<S> tower::Service<Request<Body>> for BodyLimit<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Refusable<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let max = self.max;
        let hint = http_body::Body::size_hint(req.body());
        if hint.lower() > max {
            let error = ProxyError::new(
                Cause::BodyTooLarge,
                format!(
                    "the request body of {} bytes is over the limit of {max}",
                    hint.lower()
                ),
            );
            return LimitFuture::Refused {
                error: Some(error.into()),
            };
        }
        // A body whose length is known and within the limit (no body at all, as a GET's)
        // needs no watching.
        let req = if hint.upper().is_some_and(|upper| upper <= max)
            || http_body::Body::is_end_stream(req.body())
        {
            req
        } else {
            req.map(|body| {
                Body::boxed(Capped {
                    inner: body,
                    left: max,
                    max,
                })
            })
        };
        LimitFuture::Inner {
            future: self.inner.call(req),
        }
    }
}

/// A body cut off with an error once it passes its limit.
struct Capped {
    inner: Body,
    left: u64,
    max: u64,
}

impl http_body::Body for Capped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.left {
                let error = ProxyError::new(
                    Cause::BodyTooLarge,
                    format!("the request body is over the limit of {} bytes", self.max),
                );
                return Poll::Ready(Some(Err(error.into())));
            }
            self.left -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    fn app()
    -> impl tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send>
    + Clone {
        tower::service_fn(|req: Request<Body>| async move {
            let body = req.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(Response::new(Body::full(body)))
        })
    }

    fn request(ip: &str) -> Request<Body> {
        let mut req = Request::new(Body::Empty);
        let peer = std::net::SocketAddr::new(ip.parse().unwrap(), 1000);
        req.extensions_mut().insert(Client {
            peer,
            ip: peer.ip(),
            https: false,
            sni: None,
        });
        req
    }

    #[tokio::test(start_paused = true)]
    async fn each_client_has_its_own_bucket() {
        let limiter = RateLimiter::new(&RateLimitConfig {
            requests_per_second: 10.0,
            burst: 5,
            max_clients: 2,
        });
        let svc = RateLimitLayer::new(limiter.clone()).layer(app());
        let mut passed = 0;
        for _ in 0..8 {
            if svc.clone().oneshot(request("198.51.100.1")).await.is_ok() {
                passed += 1;
            }
        }
        assert_eq!(passed, 5, "the burst");
        let refused = svc
            .clone()
            .oneshot(request("198.51.100.1"))
            .await
            .unwrap_err();
        assert_eq!(mesh_core::error::classify(&*refused), Cause::RateLimited);
        assert!(
            svc.clone().oneshot(request("198.51.100.2")).await.is_ok(),
            "another client"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(
            svc.clone().oneshot(request("198.51.100.1")).await.is_ok(),
            "refilled"
        );
        // A third address past max_clients shares the overflow bucket; memory stays bounded.
        for i in 3..200 {
            let _ = svc
                .clone()
                .oneshot(request(&format!("198.51.100.{}", i % 250)))
                .await;
        }
        assert!(limiter.clients() <= 3, "{}", limiter.clients());
        assert!(limiter.refused() > 0);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused() {
        let svc = BodyLimitLayer::new(4).layer(app());
        let ok = svc.clone().oneshot(Request::new(Body::full("1234"))).await;
        assert!(ok.is_ok());
        let big = svc
            .clone()
            .oneshot(Request::new(Body::full("12345")))
            .await
            .unwrap_err();
        assert_eq!(mesh_core::error::classify(&*big), Cause::BodyTooLarge);
        let stream = http_body_util::StreamBody::new(futures_stream(vec!["12", "34", "5"]));
        let streamed = svc
            .clone()
            .oneshot(Request::new(Body::boxed(stream)))
            .await
            .unwrap_err();
        assert_eq!(mesh_core::error::classify(&*streamed), Cause::BodyTooLarge);
    }

    fn futures_stream(
        chunks: Vec<&'static str>,
    ) -> impl futures_core_stream::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send {
        futures_core_stream::iter(chunks.into_iter().map(|c| Ok(Frame::data(Bytes::from(c)))))
    }

    mod futures_core_stream {
        pub(super) use tokio_stream::{Stream, iter};
    }
}
