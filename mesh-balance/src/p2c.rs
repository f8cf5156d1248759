//! The latency-aware balancer: power of two choices over peak-EWMA, with failure accrual and a
//! bounded queue that fails fast.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Request, Response};
use mesh_core::body::{Body, BodyObserver, ObservedBody};
use mesh_core::classify::{Class, classify_head};
use mesh_core::endpoint::Endpoint;
use mesh_core::error::{ProxyError, is_grpc};
use mesh_core::{Availability, BoxError};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::discover::{Change, Discover};
use tower::util::Oneshot;
use tower::{Service, ServiceExt};

use crate::config::BalancerConfig;
use crate::endpoint::{EndpointState, Readiness, Timing};

/// While requests wait for an endpoint, how often they look again. Readiness also comes back
/// by the clock (an ejection or a connect backoff ends), which no event announces.
const QUEUE_RECHECK: Duration = Duration::from_millis(50);

/// Random draws for two distinct ready endpoints before scanning every endpoint.
const DRAWS: usize = 8;

/// Why the balancer answered instead of an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum BalanceError {
    /// A service needs at least one endpoint.
    #[error("a balancer needs at least one endpoint")]
    NoEndpoints,
    /// No endpoint became ready within the fail-fast timeout; requests fail at once until one
    /// is ready again.
    #[error("no endpoint became ready within {0:?}; failing fast until one does")]
    FailFast(Duration),
    /// Too many requests are already waiting for an endpoint.
    #[error("{0} requests are already waiting for an endpoint")]
    QueueFull(usize),
}

/// Balances each request over the endpoints that discovery names: two distinct ready endpoints
/// at random, the one with the lower cost (peak-EWMA latency times requests in flight plus
/// one) wins.
///
/// Cheap to clone: clones share the endpoints and their load.
pub struct Balancer<S> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    endpoints: ArcSwap<Vec<Arc<EndpointState<S>>>>,
    timing: Arc<Timing>,
    queued: AtomicUsize,
    failing_fast: AtomicBool,
    changed: Notify,
    /// Tells the discovery task that the last balancer is gone.
    closed: Arc<Notify>,
}

impl<S> Drop for Shared<S> {
    fn drop(&mut self) {
        self.closed.notify_one();
    }
}

impl<S> Clone for Balancer<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Balancer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("endpoints", &self.shared.endpoints.load().len())
            .field("queued", &self.shared.queued.load(Ordering::Relaxed))
            .field(
                "failing_fast",
                &self.shared.failing_fast.load(Ordering::Relaxed),
            )
            .finish()
    }
}

/// The state of one endpoint, as [`Balancer::endpoints`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointStatus {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its latency estimate now.
    pub rtt_estimate: Duration,
    /// Taken out of the choice by failure accrual.
    pub ejected: bool,
}

impl<S> Balancer<S>
where
    S: Service<Request<Body>, Response = Response<Body>>
        + Availability
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    /// Balances over the endpoints `discover` streams, making each endpoint's service with
    /// `make`. Spawns the task that follows discovery (it ends with the last clone): call it
    /// inside a tokio runtime.
    ///
    /// When discovery ends or fails, the endpoints known stay: an outage of discovery never
    /// empties a service.
    pub fn new<D, M>(config: BalancerConfig, discover: D, make: M) -> Self
    where
        D: Discover<Service = Endpoint> + Send + 'static,
        D::Key: Hash + Eq + Send,
        D::Error: std::fmt::Display,
        M: Fn(&Endpoint) -> S + Send + 'static,
    {
        let shared = Arc::new(Shared {
            endpoints: ArcSwap::from_pointee(Vec::new()),
            timing: Arc::new(Timing {
                config,
                epoch: Instant::now(),
            }),
            queued: AtomicUsize::new(0),
            failing_fast: AtomicBool::new(false),
            changed: Notify::new(),
            closed: Arc::new(Notify::new()),
        });
        let closed = shared.closed.clone();
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            tokio::select! {
                _ = follow(weak, discover, make) => {}
                _ = closed.notified() => {}
            }
        });
        Self { shared }
    }

    /// The endpoints known now.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        let now = Instant::now();
        self.shared
            .endpoints
            .load()
            .iter()
            .map(|e| EndpointStatus {
                endpoint: e.endpoint.clone(),
                rtt_estimate: Duration::from_nanos(e.rtt_estimate(now) as u64),
                ejected: e.is_ejected(),
            })
            .collect()
    }

    /// Picks an endpoint as a request would, without sending anything (diagnostics and
    /// benchmarks). `None`: none is ready.
    pub fn pick(&self) -> Option<Endpoint> {
        self.shared.pick().map(|e| {
            // A probe claimed but not used: give it back.
            e.cancel_request_claim();
            e.endpoint.clone()
        })
    }
}

#[cfg(test)]
impl<S> Balancer<S> {
    pub(crate) fn shared_endpoint(&self, i: usize) -> Arc<EndpointState<S>> {
        self.shared.endpoints.load()[i].clone()
    }
}

impl<S> EndpointState<S> {
    fn cancel_request_claim(&self) {
        self.start_request();
        self.cancel_request();
    }
}

impl<S: Availability> Shared<S> {
    /// Power of two choices; O(1) while most endpoints are ready.
    fn pick(&self) -> Option<Arc<EndpointState<S>>> {
        let endpoints = self.endpoints.load();
        let n = endpoints.len();
        let now = Instant::now();
        if n == 1 {
            let only = &endpoints[0];
            return only.claim(only.readiness(now)).then(|| only.clone());
        }
        if n == 0 {
            return None;
        }
        // Two distinct *ready* endpoints: an endpoint that is not ready is drawn again, never
        // left to its partner (which would send an ejected endpoint's share to whoever is
        // paired with it, however slow).
        let mut first: Option<(usize, Readiness)> = None;
        for _ in 0..DRAWS {
            let i = fastrand::usize(..n);
            if first.is_some_and(|(f, _)| f == i) {
                continue;
            }
            let ri = endpoints[i].readiness(now);
            if ri == Readiness::NotReady {
                continue;
            }
            let Some((j, rj)) = first else {
                first = Some((i, ri));
                continue;
            };
            let (a, b) = (&endpoints[i], &endpoints[j]);
            let (chosen, readiness) = if prefer_first(a, b, now) {
                (a, ri)
            } else {
                (b, rj)
            };
            if chosen.claim(readiness) {
                return Some(chosen.clone());
            }
            first = None;
        }
        // Most endpoints are not ready: find the cheapest that is (O(n), only in this state).
        let mut ready: Vec<(&Arc<EndpointState<S>>, Readiness, f64)> = endpoints
            .iter()
            .filter_map(|e| {
                let r = e.readiness(now);
                (r != Readiness::NotReady)
                    .then(|| (e, r, e.latency(now) * f64::from(e.in_flight() + 1)))
            })
            .collect();
        ready.sort_by(|x, y| x.2.total_cmp(&y.2));
        ready
            .into_iter()
            .find(|(e, r, _)| e.claim(*r))
            .map(|(e, _, _)| e.clone())
    }
}

/// Latency estimates within this factor of each other, or closer than [`LATENCY_NOISE_FLOOR`],
/// are the same to the balancer: the difference is noise (peak-EWMA holds every outlier for the
/// decay time: one scheduling hiccup of 4 ms over 0.2 ms would otherwise keep an endpoint out
/// for tens of seconds), so the endpoint with fewer requests in flight wins, and a coin decides
/// a tie. Outside the band, the lower cost (latency times requests in flight plus one) wins.
const LATENCY_BAND: f64 = 2.0;

/// See [`LATENCY_BAND`]: differences under 5 ms never decide alone.
const LATENCY_NOISE_FLOOR: f64 = 5_000_000.0;

fn prefer_first<S>(a: &EndpointState<S>, b: &EndpointState<S>, now: Instant) -> bool {
    let (la, lb) = (a.latency(now), b.latency(now));
    let (fa, fb) = (a.in_flight(), b.in_flight());
    let (lo, hi) = (la.min(lb), la.max(lb));
    if hi <= lo * LATENCY_BAND || hi - lo <= LATENCY_NOISE_FLOOR {
        return match fa.cmp(&fb) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => fastrand::bool(),
        };
    }
    la * f64::from(fa + 1) <= lb * f64::from(fb + 1)
}

/// Follows discovery: inserts and removes endpoints. A removed endpoint leaves the choice at
/// once; requests already on it finish (they hold it).
async fn follow<S, D, M>(shared: Weak<Shared<S>>, discover: D, make: M)
where
    D: Discover<Service = Endpoint>,
    D::Key: Hash + Eq,
    D::Error: std::fmt::Display,
    M: Fn(&Endpoint) -> S,
{
    let mut discover = std::pin::pin!(discover);
    let mut known: HashMap<D::Key, Arc<EndpointState<S>>> = HashMap::new();
    loop {
        let change = std::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match change {
            Some(Ok(Change::Insert(key, endpoint))) => {
                let service = make(&endpoint);
                known.insert(
                    key,
                    Arc::new(EndpointState::new(endpoint, service, shared.timing.clone())),
                );
            }
            Some(Ok(Change::Remove(key))) => {
                known.remove(&key);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "discovery failed; keeping the endpoints known");
                continue;
            }
            None => {
                tracing::debug!("discovery ended; keeping the endpoints known");
                return;
            }
        }
        shared
            .endpoints
            .store(Arc::new(known.values().cloned().collect()));
        shared.changed.notify_waiters();
    }
}

impl<S> Service<Request<Body>> for Balancer<S>
where
    S: Service<Request<Body>, Response = Response<Body>>
        + Availability
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Requests that find no ready endpoint wait in the bounded queue inside `call`: the
        // balancer itself never pushes back.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture<S> {
        let shared = &self.shared;
        if let Some(endpoint) = shared.pick() {
            shared.failing_fast.store(false, Ordering::Relaxed);
            return ResponseFuture::Dispatched {
                inner: Dispatch::new(endpoint, req),
            };
        }
        let config = &shared.timing.config;
        if shared.failing_fast.load(Ordering::Relaxed) {
            let error = BalanceError::FailFast(config.failfast_timeout);
            return ResponseFuture::failed(ProxyError::unavailable("fail-fast", error));
        }
        if shared.queued.fetch_add(1, Ordering::AcqRel) >= config.queue_capacity {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            let error = BalanceError::QueueFull(config.queue_capacity);
            return ResponseFuture::failed(ProxyError::unavailable("queue-full", error));
        }
        let queued = QueueSlot(shared.clone());
        ResponseFuture::Queued {
            inner: Box::pin(wait_for_endpoint(queued, req)),
        }
    }
}

/// Holds a place in the queue; gives it back when dropped.
struct QueueSlot<S>(Arc<Shared<S>>);

impl<S> Drop for QueueSlot<S> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The slow path: no endpoint is ready. Waits for one until the fail-fast timeout, then fails
/// this request and every one after it at once, until an endpoint is ready again.
async fn wait_for_endpoint<S>(
    slot: QueueSlot<S>,
    req: Request<Body>,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>>
        + Availability
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let shared = slot.0.clone();
    let timeout = shared.timing.config.failfast_timeout;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(endpoint) = shared.pick() {
            shared.failing_fast.store(false, Ordering::Relaxed);
            drop(slot);
            return Dispatch::new(endpoint, req).await;
        }
        let now = Instant::now();
        if now >= deadline || shared.failing_fast.load(Ordering::Relaxed) {
            shared.failing_fast.store(true, Ordering::Relaxed);
            return Err(
                ProxyError::unavailable("fail-fast", BalanceError::FailFast(timeout)).into(),
            );
        }
        let changed = shared.changed.notified();
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline.min(now + QUEUE_RECHECK)) => {}
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Balancer`].
    #[project = ResponseFutureProj]
    pub enum ResponseFuture<S: Service<Request<Body>>> {
        /// Sent to an endpoint at once (the common case: no allocation).
        Dispatched { #[pin] inner: Dispatch<S> },
        /// Waiting for an endpoint to become ready.
        Queued { inner: Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>> },
        /// Failed at once.
        Failed { error: Option<ProxyError> },
    }
}

impl<S: Service<Request<Body>>> ResponseFuture<S> {
    fn failed(error: ProxyError) -> Self {
        ResponseFuture::Failed { error: Some(error) }
    }
}

impl<S: Service<Request<Body>>> std::fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseFuture::Dispatched { .. } => f.write_str("ResponseFuture::Dispatched"),
            ResponseFuture::Queued { .. } => f.write_str("ResponseFuture::Queued"),
            ResponseFuture::Failed { error } => f
                .debug_tuple("ResponseFuture::Failed")
                .field(error)
                .finish(),
        }
    }
}

impl<S> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + Sync + 'static,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Dispatched { inner } => inner.poll(cx),
            ResponseFutureProj::Queued { inner } => inner.as_mut().poll(cx),
            ResponseFutureProj::Failed { error } => Poll::Ready(Err(match error.take() {
                Some(e) => e.into(),
                None => "balancer future polled after completion".into(),
            })),
        }
    }
}

pin_project_lite::pin_project! {
    /// One request on its endpoint: measures the time to the response head, counts the request
    /// in flight until its body ends, and feeds failure accrual.
    pub struct Dispatch<S: Service<Request<Body>>> {
        #[pin]
        inner: Oneshot<S, Request<Body>>,
        endpoint: Option<Arc<EndpointState<S>>>,
        start: Instant,
        grpc: bool,
    }

    impl<S: Service<Request<Body>>> PinnedDrop for Dispatch<S> {
        fn drop(this: Pin<&mut Self>) {
            // Cancelled before the response head.
            if let Some(endpoint) = this.project().endpoint.take() {
                endpoint.cancel_request();
            }
        }
    }
}

impl<S: Service<Request<Body>> + Clone> Dispatch<S> {
    fn new(endpoint: Arc<EndpointState<S>>, req: Request<Body>) -> Self {
        endpoint.start_request();
        let grpc = is_grpc(&req);
        Self {
            inner: endpoint.service.clone().oneshot(req),
            endpoint: Some(endpoint),
            start: Instant::now(),
            grpc,
        }
    }
}

impl<S> Future for Dispatch<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send + Sync + 'static,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(endpoint) = this.endpoint.take() else {
            return Poll::Ready(Err("dispatch polled after completion".into()));
        };
        match result {
            Ok(rsp) => {
                let now = Instant::now();
                endpoint.observe_rtt(now.saturating_duration_since(*this.start), now);
                let class = classify_head(*this.grpc, &rsp);
                if let Some(class) = class {
                    endpoint.record(class);
                }
                Poll::Ready(Ok(rsp.map(|body| match body {
                    Body::Incoming(body) => {
                        let observer: Arc<dyn BodyObserver> = endpoint;
                        Body::Observed(ObservedBody::new(body, observer, class.is_none()))
                    }
                    other => {
                        endpoint.end_request();
                        other
                    }
                })))
            }
            Err(e) => {
                endpoint.end_request();
                endpoint.record(Class::Failure);
                Poll::Ready(Err(e.into()))
            }
        }
    }
}
