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
use mesh_core::error::{Cause, ProxyError, is_grpc};
use mesh_core::ready_call::ReadyCall;
use mesh_core::{Availability, BoxError};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::Service;
use tower::discover::{Change, Discover};

use crate::config::BalancerConfig;
use crate::endpoint::{EndpointState, Readiness, Timing};

/// While requests wait for an endpoint, how often they look again. Readiness also comes back
/// by the clock (an ejection or a connect backoff ends), which no event announces.
const QUEUE_RECHECK: Duration = Duration::from_millis(50);

/// Random draws for two distinct ready endpoints before scanning every endpoint.
const DRAWS: usize = 8;

/// After a discovery error, the pause before asking again.
const DISCOVERY_ERROR_PAUSE: Duration = Duration::from_millis(100);

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
    /// Ejections since the endpoint was discovered.
    pub ejections_total: u64,
    /// Requests in flight now.
    pub in_flight: u32,
}

impl<S> Balancer<S>
where
    S: mesh_core::SharedHttpService + Availability,
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
        let config = match config.validate() {
            Ok(()) => config,
            Err(invalid) => {
                tracing::warn!(%invalid, "invalid balancer setting; using the defaults");
                BalancerConfig::default()
            }
        };
        let shared = Arc::new(Shared {
            endpoints: ArcSwap::from_pointee(Vec::new()),
            timing: Arc::new(Timing::new(config)),
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
                ejections_total: e.ejections_total(),
                in_flight: e.in_flight(),
            })
            .collect()
    }

    /// Picks an endpoint as a request would, without sending anything (diagnostics and
    /// benchmarks). `None`: none is ready.
    pub fn pick(&self) -> Option<Endpoint> {
        self.shared.pick().map(|picked| {
            // A probe claimed but not used: give it back.
            if let Some(token) = picked.probe {
                picked.endpoint.release_probe(token);
            }
            picked.endpoint.endpoint.clone()
        })
    }
}

/// An endpoint taken for one request.
struct Picked<S> {
    endpoint: Arc<EndpointState<S>>,
    /// The probe's token when the request probes an ejected endpoint.
    probe: Option<u64>,
    now: Instant,
}

#[cfg(test)]
impl<S> Balancer<S> {
    pub(crate) fn shared_endpoint(&self, i: usize) -> Arc<EndpointState<S>> {
        self.shared.endpoints.load()[i].clone()
    }
}

impl<S: Availability> Shared<S> {
    /// Power of two choices; O(1) while most endpoints are ready.
    fn pick(&self) -> Option<Picked<S>> {
        let endpoints = self.endpoints.load();
        let n = endpoints.len();
        let now = mesh_core::clock::now();
        let take = |e: &Arc<EndpointState<S>>, readiness| {
            e.claim(readiness, now).map(|probe| Picked {
                endpoint: e.clone(),
                probe,
                now,
            })
        };
        if n <= 1 {
            let only = endpoints.first()?;
            return take(only, only.readiness(now));
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
            let chosen = if prefer_first((a, ri), (b, rj), now) {
                (a, ri)
            } else {
                (b, rj)
            };
            match take(chosen.0, chosen.1) {
                Some(picked) => return Some(picked),
                None => first = None,
            }
        }
        // No two ready endpoints drawn (most are not ready, or luck): the cheapest ready one,
        // by a scan (O(n), without allocating; only in this state).
        let mut best: Option<(&Arc<EndpointState<S>>, Readiness, f64)> = None;
        for e in endpoints.iter() {
            let r = e.readiness(now);
            if r == Readiness::NotReady {
                continue;
            }
            let cost = e.latency(now) * f64::from(e.in_flight() + 1);
            if best.is_none_or(|(_, _, c)| cost < c) {
                best = Some((e, r, cost));
            }
        }
        best.and_then(|(e, r, _)| take(e, r))
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

fn prefer_first<S>(
    (a, ra): (&EndpointState<S>, Readiness),
    (b, rb): (&EndpointState<S>, Readiness),
    now: Instant,
) -> bool {
    // An ejected endpoint whose backoff is over is probed, whatever its old latency.
    if (ra == Readiness::Probe) != (rb == Readiness::Probe) {
        return ra == Readiness::Probe;
    }
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
        // In a function of its own, so that no discovery error is held across the pause.
        let failed = match apply(change, &mut known, &shared.timing, &make) {
            Some(failed) => failed,
            None => return,
        };
        if failed {
            drop(shared);
            // A source that fails at once every time must not spin.
            tokio::time::sleep(DISCOVERY_ERROR_PAUSE).await;
            continue;
        }
        shared
            .timing
            .endpoints
            .store(known.len(), Ordering::Relaxed);
        shared
            .endpoints
            .store(Arc::new(known.values().cloned().collect()));
        shared.changed.notify_waiters();
    }
}

/// Applies one discovery change. `Some(true)`: discovery failed; `None`: it ended.
fn apply<K, S, E, M>(
    change: Option<Result<Change<K, Endpoint>, E>>,
    known: &mut HashMap<K, Arc<EndpointState<S>>>,
    timing: &Arc<Timing>,
    make: &M,
) -> Option<bool>
where
    K: Hash + Eq,
    E: std::fmt::Display,
    M: Fn(&Endpoint) -> S,
{
    match change? {
        Ok(Change::Insert(key, endpoint)) => {
            // The same endpoint again (sources that resend everything): keep what was learned
            // about it, ejection included.
            if !known.get(&key).is_some_and(|e| e.endpoint == endpoint) {
                let service = make(&endpoint);
                known.insert(
                    key,
                    Arc::new(EndpointState::new(endpoint, service, timing.clone())),
                );
            }
            Some(false)
        }
        Ok(Change::Remove(key)) => {
            known.remove(&key);
            Some(false)
        }
        Err(e) => {
            tracing::warn!(error = %e, "discovery failed; keeping the endpoints known");
            Some(true)
        }
    }
}

impl<S> Service<Request<Body>> for Balancer<S>
where
    S: mesh_core::SharedHttpService + Availability,
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
        if let Some(picked) = shared.pick() {
            shared.failing_fast.store(false, Ordering::Relaxed);
            return ResponseFuture::Dispatched {
                inner: Dispatch::new(picked, req),
            };
        }
        let config = &shared.timing.config;
        if shared.failing_fast.load(Ordering::Relaxed) {
            let error = BalanceError::FailFast(config.failfast_timeout);
            return ResponseFuture::failed(ProxyError::new(Cause::FailFast, error));
        }
        if shared.queued.fetch_add(1, Ordering::AcqRel) >= config.queue_capacity {
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            let error = BalanceError::QueueFull(config.queue_capacity);
            return ResponseFuture::failed(ProxyError::new(Cause::QueueFull, error));
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
    mut req: Request<Body>,
) -> Result<Response<Body>, BoxError>
where
    S: mesh_core::SharedHttpService + Availability,
{
    let shared = slot.0.clone();
    let timeout = shared.timing.config.failfast_timeout;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(picked) = shared.pick() {
            shared.failing_fast.store(false, Ordering::Relaxed);
            drop(slot);
            restamp_grpc_timeout(&mut req);
            return Dispatch::new(picked, req).await;
        }
        let now = Instant::now();
        if now >= deadline || shared.failing_fast.load(Ordering::Relaxed) {
            shared.failing_fast.store(true, Ordering::Relaxed);
            return Err(ProxyError::new(Cause::FailFast, BalanceError::FailFast(timeout)).into());
        }
        let changed = shared.changed.notified();
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline.min(now + QUEUE_RECHECK)) => {}
        }
    }
}

/// After a wait in the queue, tells the endpoint how much of the caller's gRPC deadline is
/// left (the timeout layer above stamped `grpc-timeout` before the wait, and left the
/// [`Deadline`](mesh_core::timeout::Deadline) for the layers below).
fn restamp_grpc_timeout(req: &mut Request<Body>) {
    use mesh_core::timeout::{Deadline, GRPC_TIMEOUT, encode_grpc_timeout};
    if let Some(grpc_at) = Deadline::of(req).and_then(|d| d.grpc) {
        let left = grpc_at.saturating_duration_since(Instant::now());
        req.headers_mut()
            .insert(GRPC_TIMEOUT, encode_grpc_timeout(left));
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
        inner: ReadyCall<S, Request<Body>>,
        endpoint: Option<Arc<EndpointState<S>>>,
        probe: Option<u64>,
        start: Instant,
        grpc: bool,
    }

    impl<S: Service<Request<Body>>> PinnedDrop for Dispatch<S> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Cancelled before the response head: its age is a latency sample (a hung endpoint
            // must look slow), and a probe gives its turn back.
            if let Some(endpoint) = this.endpoint.take() {
                endpoint.end_request();
                let now = mesh_core::clock::now();
                endpoint.observe_rtt_peak(now.saturating_duration_since(*this.start), now);
                if let Some(token) = this.probe.take() {
                    endpoint.release_probe(token);
                }
            }
        }
    }
}

impl<S: Service<Request<Body>> + Clone> Dispatch<S> {
    fn new(picked: Picked<S>, req: Request<Body>) -> Self {
        let Picked {
            endpoint,
            probe,
            now,
        } = picked;
        endpoint.start_request();
        let grpc = is_grpc(&req);
        Self {
            inner: ReadyCall::new(endpoint.service.clone(), req),
            endpoint: Some(endpoint),
            probe,
            start: now,
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
        let probe = this.probe.take().is_some();
        let now = mesh_core::clock::now();
        let rtt = now.saturating_duration_since(*this.start);
        match result {
            Ok(rsp) => {
                let class = classify_head(*this.grpc, &rsp);
                if class == Some(Class::Failure) {
                    endpoint.observe_rtt_peak(rtt, now);
                } else {
                    endpoint.observe_rtt(rtt, now);
                }
                match (class, probe) {
                    (Some(class), _) => endpoint.record(class, probe),
                    // A probe is judged at its head: a gRPC stream may run for hours. Its
                    // trailers then count as any request's.
                    (None, true) => endpoint.record(Class::Success, true),
                    (None, false) => {}
                }
                let status = rsp.status();
                Poll::Ready(Ok(rsp.map(|body| match body.into_received() {
                    Ok(body) => {
                        let observer: Arc<dyn BodyObserver> = endpoint;
                        Body::Observed(ObservedBody::new(body, observer, class.is_none(), status))
                    }
                    // A layer below already watches this body end (metrics): watch it too.
                    Err(Body::Observed(mut body)) => {
                        if class.is_none() {
                            body.classify_grpc();
                        }
                        body.observe(endpoint);
                        Body::Observed(body)
                    }
                    Err(other) => {
                        endpoint.end_request();
                        other
                    }
                })))
            }
            Err(e) => {
                endpoint.end_request();
                endpoint.observe_rtt_peak(rtt, now);
                endpoint.record(Class::Failure, probe);
                Poll::Ready(Err(e.into()))
            }
        }
    }
}
