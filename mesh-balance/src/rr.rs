//! Round robin: request *n* goes to endpoint *n mod len*, stepping over endpoints that say
//! they are unavailable. One atomic increment per pick; for fixed sets of equal endpoints.
//!
//! ```
//! use mesh_balance::RoundRobin;
//! use mesh_core::client::{ClientConfig, HttpClient};
//! use mesh_core::server::RespondLayer;
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = HttpClient::new(&ClientConfig::default());
//! let endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]
//!     .iter()
//!     .map(|a| Ok(client.endpoint(a.parse()?)))
//!     .collect::<Result<Vec<_>, std::net::AddrParseError>>()?;
//! let balanced = ServiceBuilder::new()
//!     .layer(RespondLayer::new())
//!     .service(RoundRobin::new(endpoints)?);
//! # let _ = balanced;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use mesh_core::{Availability, BoxError};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

/// Why a balancer could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoundRobinError {
    /// A service needs at least one endpoint.
    #[error("a balancer needs at least one endpoint")]
    NoEndpoints,
}

/// Sends request *n* to endpoint *n mod len*.
#[derive(Debug)]
pub struct RoundRobin<S> {
    endpoints: Arc<[S]>,
    next: Arc<AtomicUsize>,
}

impl<S> Clone for RoundRobin<S> {
    fn clone(&self) -> Self {
        Self {
            endpoints: self.endpoints.clone(),
            next: self.next.clone(),
        }
    }
}

impl<S> RoundRobin<S> {
    /// Balances over `endpoints`, which may not be empty.
    pub fn new(endpoints: impl IntoIterator<Item = S>) -> Result<Self, RoundRobinError> {
        let endpoints: Arc<[S]> = endpoints.into_iter().collect();
        if endpoints.is_empty() {
            return Err(RoundRobinError::NoEndpoints);
        }
        Ok(Self {
            endpoints,
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The endpoints' services.
    pub fn endpoints(&self) -> &[S] {
        &self.endpoints
    }

    /// The next endpoint in turn that is available; when none is, the next in turn (its
    /// request then fails fast with the endpoint's own error).
    pub fn pick(&self) -> &S
    where
        S: Availability,
    {
        // Relaxed: only the spread matters, not an order with other memory.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let len = self.endpoints.len();
        (0..len)
            .map(|i| &self.endpoints[(n + i) % len])
            .find(|s| s.is_available())
            .unwrap_or(&self.endpoints[n % len])
    }
}

impl<S, Req> Service<Req> for RoundRobin<S>
where
    S: Service<Req> + Availability + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            inner: self.pick().clone().oneshot(req),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RoundRobin`].
    pub struct ResponseFuture<S: Service<Req>, Req> {
        #[pin]
        inner: Oneshot<S, Req>,
    }
}

impl<S: Service<Req>, Req> std::fmt::Debug for ResponseFuture<S, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_test::mock;

    /// A mock endpoint whose availability the test sets.
    #[derive(Clone)]
    struct Endpoint {
        mock: mock::Mock<u32, u32>,
        available: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Availability for Endpoint {
        fn is_available(&self) -> bool {
            self.available.load(Ordering::Relaxed)
        }
    }

    impl Service<u32> for Endpoint {
        type Response = u32;
        type Error = BoxError;
        type Future = mock::future::ResponseFuture<u32>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            self.mock.poll_ready(cx)
        }

        fn call(&mut self, req: u32) -> Self::Future {
            self.mock.call(req)
        }
    }

    fn endpoints(n: usize) -> (Vec<Endpoint>, Vec<mock::Handle<u32, u32>>) {
        (0..n)
            .map(|_| {
                let (mock, handle) = mock::pair::<u32, u32>();
                let available = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
                (Endpoint { mock, available }, handle)
            })
            .unzip()
    }

    #[tokio::test(start_paused = true)]
    async fn spreads_requests_evenly() {
        let (services, mut handles) = endpoints(3);
        let rr = RoundRobin::new(services).unwrap();
        let mut calls = Vec::new();
        for i in 0..9 {
            calls.push(tokio::spawn(rr.clone().oneshot(i)));
        }
        for (n, handle) in handles.iter_mut().enumerate() {
            for _ in 0..3 {
                let (req, send) = handle.next_request().await.unwrap();
                assert_eq!(req as usize % 3, n);
                send.send_response(req);
            }
        }
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), i as u32);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn steps_over_unavailable_endpoints() {
        let (services, mut handles) = endpoints(3);
        services[1].available.store(false, Ordering::Relaxed);
        let rr = RoundRobin::new(services.clone()).unwrap();
        let calls: Vec<_> = (0..4)
            .map(|i| tokio::spawn(rr.clone().oneshot(i)))
            .collect();
        // Turns 0, 1 (unavailable: goes to 2), 2, 3 -> endpoints 0, 2, 2, 0.
        for (endpoint, expected) in [(0, vec![0, 3]), (2, vec![1, 2])] {
            for want in expected {
                let (req, send) = handles[endpoint].next_request().await.unwrap();
                assert_eq!(req, want);
                send.send_response(req);
            }
        }
        for call in calls {
            call.await.unwrap().unwrap();
        }

        // None available: requests still go out in turn and fail with the endpoint's error.
        for s in &services {
            s.available.store(false, Ordering::Relaxed);
        }
        let call = tokio::spawn(rr.clone().oneshot(9));
        let (req, send) = handles[1].next_request().await.unwrap();
        assert_eq!(req, 9);
        send.send_error("endpoint down");
        assert!(call.await.unwrap().is_err());
    }

    #[test]
    fn refuses_an_empty_set() {
        assert_eq!(
            RoundRobin::<Endpoint>::new([]).err(),
            Some(RoundRobinError::NoEndpoints)
        );
    }
}
