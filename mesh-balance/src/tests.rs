//! The balancer driven with paused time: scripted endpoints (latency, status, availability)
//! and tower-test mocks where a request must stay pending.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use mesh_core::error::{ErrorKind, classify};
use mesh_core::{Availability, Body, BoxError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower::discover::Change;
use tower::{Service, ServiceExt};

use crate::{Balancer, BalancerConfig, fixed};
use mesh_core::endpoint::Endpoint;

/// What an error is classified as: its kind and its reason.
fn kind_and_reason(err: &(dyn std::error::Error + 'static)) -> (ErrorKind, &'static str) {
    let cause = classify(err);
    (cause.kind(), cause.reason())
}

/// An endpoint that answers after `delay` (give or take 20 %, and 4 times as long once in a
/// hundred, when `jitter` is on) with `status`.
#[derive(Clone, Debug)]
struct Scripted {
    name: usize,
    delay: Duration,
    jitter: bool,
    status: Arc<AtomicU16>,
    available: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

impl Scripted {
    fn new(name: usize, delay: Duration) -> Self {
        Self {
            name,
            delay,
            jitter: false,
            status: Arc::new(AtomicU16::new(200)),
            available: Arc::new(AtomicBool::new(true)),
            served: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn jittery(name: usize, delay: Duration) -> Self {
        Self {
            jitter: true,
            ..Self::new(name, delay)
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

impl Availability for Scripted {
    fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }
}

impl Service<Request<Body>> for Scripted {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, BoxError>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        let noise = match (self.jitter, fastrand::u32(..100)) {
            (false, _) => 1.0,
            (true, 0) => 4.0,
            (true, _) => 0.8 + 0.4 * fastrand::f64(),
        };
        let (delay, status, served, name) = (
            self.delay.mul_f64(noise),
            self.status.clone(),
            self.served.clone(),
            self.name,
        );
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            served.fetch_add(1, Ordering::SeqCst);
            let mut rsp = Response::new(Body::full(format!("{name}")));
            *rsp.status_mut() = StatusCode::from_u16(status.load(Ordering::SeqCst))?;
            Ok(rsp)
        })
    }
}

fn addr(i: usize) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16))
}

/// A balancer over `endpoints` (fixed discovery), once discovery has been followed.
async fn balancer(endpoints: &[Scripted], config: BalancerConfig) -> Balancer<Scripted> {
    let by_port: Vec<Scripted> = endpoints.to_vec();
    let b = Balancer::new(
        config,
        fixed((0..endpoints.len()).map(addr)),
        move |e: &Endpoint| by_port[usize::from(e.addr.port() - 9000)].clone(),
    );
    settle(&b, endpoints.len()).await;
    b
}

async fn settle<S>(b: &Balancer<S>, n: usize)
where
    S: mesh_core::SharedHttpService + Availability,
{
    for _ in 0..100 {
        if b.endpoints().len() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("discovery never delivered {n} endpoints");
}

fn request() -> Request<Body> {
    Request::new(Body::Empty)
}

/// Sends `total` requests from `concurrency` callers that each send their next request as soon
/// as the last one is answered (like h2load's streams); returns how many got a 2xx.
async fn load(b: &Balancer<Scripted>, total: usize, concurrency: usize) -> usize {
    let tickets = Arc::new(AtomicUsize::new(total));
    let callers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (b, tickets) = (b.clone(), tickets.clone());
            tokio::spawn(async move {
                let mut ok = 0;
                while tickets
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| t.checked_sub(1))
                    .is_ok()
                {
                    if matches!(b.clone().oneshot(request()).await, Ok(rsp) if rsp.status().is_success()) {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for caller in callers {
        ok += caller.await.unwrap_or(0);
    }
    ok
}

fn max_over_min(endpoints: &[Scripted]) -> f64 {
    let served: Vec<usize> = endpoints.iter().map(Scripted::served).collect();
    let max = served.iter().max().copied().unwrap_or(0);
    let min = served.iter().min().copied().unwrap_or(0).max(1);
    max as f64 / min as f64
}

#[tokio::test(start_paused = true)]
async fn the_slow_endpoint_is_picked_least() {
    // One thread runs the test and the balancer: a seed makes its choices repeatable.
    fastrand::seed(7);
    let endpoints = [
        Scripted::jittery(0, Duration::from_millis(1)),
        Scripted::jittery(1, Duration::from_millis(1)),
        Scripted::jittery(2, Duration::from_millis(21)),
    ];
    let b = balancer(&endpoints, BalancerConfig::default()).await;
    assert_eq!(load(&b, 3000, 32).await, 3000);
    let slow = endpoints[2].served();
    let fast = endpoints[0].served().min(endpoints[1].served());
    assert!(
        slow <= 30,
        "the slow endpoint served {slow} of 3000 (at most 1% wanted)"
    );
    assert!(
        fast > 1000,
        "{:?}",
        endpoints.iter().map(Scripted::served).collect::<Vec<_>>()
    );
}

#[tokio::test(start_paused = true)]
async fn equal_endpoints_share_evenly_one_at_a_time_and_concurrently() {
    fastrand::seed(7);
    for concurrency in [1, 8] {
        let endpoints: Vec<Scripted> = (0..3)
            .map(|i| Scripted::jittery(i, Duration::from_micros(500)))
            .collect();
        let b = balancer(&endpoints, BalancerConfig::default()).await;
        assert_eq!(load(&b, 3000, concurrency).await, 3000);
        let served: Vec<usize> = endpoints.iter().map(Scripted::served).collect();
        assert!(
            max_over_min(&endpoints) <= 1.15,
            "concurrency {concurrency}: {served:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_endpoint_is_ejected_probed_and_readmitted() {
    // The failing endpoint answers at once, as a failing server often does: by latency alone
    // it would be the favourite.
    let endpoints = [
        Scripted::new(0, Duration::from_millis(1)),
        Scripted::new(1, Duration::from_millis(1)),
        Scripted::new(2, Duration::ZERO),
    ];
    endpoints[2].status.store(503, Ordering::SeqCst);
    // A default latency no worse than the real one, so that the failing endpoint is tried
    // before the others have proven faster than the default (sequential requests, no load).
    let config = BalancerConfig {
        default_rtt: Duration::from_millis(1),
        ..BalancerConfig::default()
    };
    let b = balancer(&endpoints, config).await;

    // Sequential requests: the failing endpoint is chosen until its 7th failure in a row.
    let mut failures = 0;
    for _ in 0..300 {
        let rsp = b.clone().oneshot(request()).await.unwrap();
        if rsp.status() == StatusCode::SERVICE_UNAVAILABLE {
            failures += 1;
        }
    }
    assert_eq!(failures, 7, "ejected after exactly 7 failures in a row");
    assert!(
        b.endpoints()
            .iter()
            .any(|e| e.ejected && e.endpoint.addr == addr(2))
    );
    let before = endpoints[2].served();
    assert_eq!(
        load(&b, 1000, 4).await,
        1000,
        "no request reaches the ejected endpoint"
    );
    assert_eq!(endpoints[2].served(), before);

    // The backoff (1 s, at most 25 % jitter) runs out: one probe, which fails: ejected again.
    tokio::time::advance(Duration::from_millis(1250)).await;
    let ok = load(&b, 100, 4).await;
    assert_eq!(ok, 99, "exactly one request probes the failing endpoint");
    assert_eq!(endpoints[2].served(), before + 1);

    // It heals; after the next backoff (2 s, +25 %) the probe succeeds and it is readmitted.
    endpoints[2].status.store(200, Ordering::SeqCst);
    tokio::time::advance(Duration::from_millis(2500)).await;
    assert_eq!(load(&b, 300, 4).await, 300);
    assert!(b.endpoints().iter().all(|e| !e.ejected));
    assert!(
        endpoints[2].served() > before + 10,
        "readmitted endpoints get traffic again"
    );
}

#[tokio::test(start_paused = true)]
async fn all_endpoints_down_fails_fast_then_recovers() {
    let endpoints: Vec<Scripted> = (0..2)
        .map(|i| Scripted::new(i, Duration::from_millis(1)))
        .collect();
    for e in &endpoints {
        e.available.store(false, Ordering::SeqCst);
    }
    let b = balancer(&endpoints, BalancerConfig::default()).await;

    // Queued: no endpoint is ready; after the fail-fast timeout (3 s) the request fails.
    let started = tokio::time::Instant::now();
    let err = b.clone().oneshot(request()).await.unwrap_err();
    assert_eq!(
        kind_and_reason(&*err),
        (ErrorKind::Unavailable, "fail-fast")
    );
    assert!(started.elapsed() >= Duration::from_secs(3));

    // Failing fast: the next request fails at once, without waiting.
    let started = tokio::time::Instant::now();
    let err = b.clone().oneshot(request()).await.unwrap_err();
    assert_eq!(
        kind_and_reason(&*err),
        (ErrorKind::Unavailable, "fail-fast")
    );
    assert_eq!(started.elapsed(), Duration::ZERO);

    // An endpoint comes back: requests flow again at once.
    endpoints[1].available.store(true, Ordering::SeqCst);
    assert_eq!(load(&b, 10, 2).await, 10);

    // A request that waits in the queue is served as soon as an endpoint is ready.
    endpoints[1].available.store(false, Ordering::SeqCst);
    let waiting = tokio::spawn(b.clone().oneshot(request()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    endpoints[0].available.store(true, Ordering::SeqCst);
    let rsp = waiting.await.unwrap().unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_bounded() {
    let endpoints = [Scripted::new(0, Duration::from_millis(1))];
    endpoints[0].available.store(false, Ordering::SeqCst);
    let config = BalancerConfig {
        queue_capacity: 2,
        ..BalancerConfig::default()
    };
    let b = balancer(&endpoints, config).await;
    let queued: Vec<_> = (0..2)
        .map(|_| tokio::spawn(b.clone().oneshot(request())))
        .collect();
    tokio::task::yield_now().await;
    let err = b.clone().oneshot(request()).await.unwrap_err();
    assert_eq!(
        kind_and_reason(&*err),
        (ErrorKind::Unavailable, "queue-full")
    );
    endpoints[0].available.store(true, Ordering::SeqCst);
    for q in queued {
        assert_eq!(q.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn churn_under_load_loses_nothing() {
    let pool: Vec<Scripted> = (0..6)
        .map(|i| Scripted::new(i, Duration::from_millis(3)))
        .collect();
    let (tx, rx) =
        mpsc::unbounded_channel::<Result<Change<usize, Endpoint>, std::convert::Infallible>>();
    let by_port = pool.clone();
    let b = Balancer::new(
        BalancerConfig::default(),
        UnboundedReceiverStream::new(rx),
        move |e: &Endpoint| by_port[usize::from(e.addr.port() - 9000)].clone(),
    );
    for i in 0..3 {
        tx.send(Ok(Change::Insert(i, Endpoint::new(addr(i)))))
            .unwrap();
    }
    settle(&b, 3).await;

    let calls: Vec<_> = (0..600)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i as u64)).await;
                b.oneshot(request()).await
            })
        })
        .collect();
    // While they run: endpoints 0..3 leave one by one, 3..6 arrive.
    for step in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(Ok(Change::Insert(step + 3, Endpoint::new(addr(step + 3)))))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(Ok(Change::Remove(step))).unwrap();
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    let served: usize = pool.iter().map(Scripted::served).sum();
    assert_eq!(served, 600);
    let counts: Vec<usize> = pool.iter().map(Scripted::served).collect();
    // A new endpoint starts at the default latency (30 ms) against warm ones at 3 ms: the one
    // that arrives last takes traffic only once load or time (decay) make it worth it.
    assert!(
        pool[3].served() > 0 && pool[4].served() > 0,
        "new endpoints take traffic: {counts:?}"
    );
    let late: Vec<_> = (0..30)
        .map(|_| tokio::spawn(b.clone().oneshot(request())))
        .collect();
    let before: Vec<usize> = pool[..3].iter().map(Scripted::served).collect();
    for call in late {
        call.await.unwrap().unwrap();
    }
    let after: Vec<usize> = pool[..3].iter().map(Scripted::served).collect();
    assert_eq!(before, after, "removed endpoints get no new requests");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_leaves_no_load_behind() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let endpoint = MockEndpoint(mock);
    let b = Balancer::new(
        BalancerConfig::default(),
        fixed([addr(0)]),
        move |_: &Endpoint| endpoint.clone(),
    );
    settle(&b, 1).await;
    let call = tokio::spawn(b.clone().oneshot(request()));
    let (_req, _send) = handle.next_request().await.unwrap();
    let state = b.shared_endpoint(0);
    assert_eq!(state.in_flight(), 1);
    call.abort();
    let _ = call.await;
    assert_eq!(state.in_flight(), 0);
}

#[derive(Clone)]
struct MockEndpoint(tower_test::mock::Mock<Request<Body>, Response<Body>>);

impl Availability for MockEndpoint {
    fn is_available(&self) -> bool {
        true
    }
}

impl Service<Request<Body>> for MockEndpoint {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = tower_test::mock::future::ResponseFuture<Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        self.0.call(req)
    }
}

#[tokio::test(start_paused = true)]
async fn an_ejected_endpoints_share_does_not_go_to_a_slow_partner() {
    fastrand::seed(7);
    let endpoints = [
        Scripted::new(0, Duration::from_millis(1)),
        Scripted::new(1, Duration::ZERO),
        Scripted::new(2, Duration::from_millis(21)),
    ];
    endpoints[1].status.store(503, Ordering::SeqCst);
    let config = BalancerConfig {
        default_rtt: Duration::from_millis(1),
        ..BalancerConfig::default()
    };
    let b = balancer(&endpoints, config).await;
    // Until endpoint 1 is ejected.
    while !b.endpoints().iter().any(|e| e.ejected) {
        let _ = b.clone().oneshot(request()).await;
    }
    let slow_before = endpoints[2].served();
    // Only the probes (after 1 s, then 2 s) reach the failing endpoint.
    let ok = load(&b, 1000, 1).await;
    assert!(ok >= 998, "{ok} of 1000 succeeded");
    let slow = endpoints[2].served() - slow_before;
    assert!(
        slow <= 10,
        "the slow endpoint took {slow} of 1000 while its partner was ejected"
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_does_not_readmit_an_ejected_endpoint() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let endpoint = MockEndpoint(mock);
    let config = BalancerConfig {
        failure_accrual: crate::FailureAccrualConfig {
            max_ejected_percent: 100,
            ..Default::default()
        },
        ..BalancerConfig::default()
    };
    let b = Balancer::new(config, fixed([addr(0)]), move |_: &Endpoint| {
        endpoint.clone()
    });
    settle(&b, 1).await;

    // A slow request goes out first; then seven fail fast: the endpoint is ejected.
    let slow = tokio::spawn(b.clone().oneshot(request()));
    let (_req, slow_answer) = handle.next_request().await.unwrap();
    for _ in 0..7 {
        let call = tokio::spawn(b.clone().oneshot(request()));
        let (_req, send) = handle.next_request().await.unwrap();
        let mut rsp = Response::new(Body::Empty);
        *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        send.send_response(rsp);
        call.await.unwrap().unwrap();
    }
    assert!(b.endpoints()[0].ejected);

    // The slow request, sent before the ejection, now succeeds: only a probe readmits.
    slow_answer.send_response(Response::new(Body::Empty));
    slow.await.unwrap().unwrap();
    assert!(
        b.endpoints()[0].ejected,
        "a late success readmitted the endpoint"
    );
}

#[tokio::test(start_paused = true)]
async fn accrual_never_ejects_more_than_its_share() {
    // One endpoint of one, failing: never ejected (the default share is half, rounded down),
    // so its callers keep getting the endpoint's own answers, not a fail-fast.
    let lonely = [Scripted::new(0, Duration::from_millis(1))];
    lonely[0].status.store(503, Ordering::SeqCst);
    let b = balancer(&lonely, BalancerConfig::default()).await;
    for _ in 0..20 {
        let rsp = b.clone().oneshot(request()).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(!b.endpoints()[0].ejected);

    // Two of three failing: only one is ejected.
    let endpoints: Vec<Scripted> = (0..3)
        .map(|i| Scripted::new(i, Duration::from_millis(1)))
        .collect();
    endpoints[0].status.store(503, Ordering::SeqCst);
    endpoints[1].status.store(503, Ordering::SeqCst);
    let b = balancer(&endpoints, BalancerConfig::default()).await;
    load(&b, 300, 4).await;
    assert_eq!(b.endpoints().iter().filter(|e| e.ejected).count(), 1);
}
