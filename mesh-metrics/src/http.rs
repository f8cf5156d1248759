//! Request metrics, per endpoint: requests, responses by status, gRPC status and success or
//! failure (mesh-core's one classifier), and response latency, labelled with who talks to whom.
//!
//! The layer wraps the service of one endpoint, so every label but the response's own is fixed
//! when the endpoint is created: the request counter and the latency histogram are resolved
//! once, and a response counter is looked up in a small per-endpoint cache. Nothing per request
//! allocates or hashes a label set. gRPC statuses carried in trailers are read when the body
//! ends (the body is observed, not boxed).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Instant;

use http::{Request, Response, StatusCode};
use mesh_core::body::{Body, BodyEnd, BodyObserver, ObservedBody};
use mesh_core::classify::{Class, classify_head};
use mesh_core::error::is_grpc;
use mesh_core::grpc::{Code, grpc_status};
use mesh_core::{Availability, BoxError};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Who talks to whom: the labels of every request metric.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// The service as clients name it (`host:port`).
    pub authority: String,
    /// The calling workload.
    pub src_workload: String,
    /// The calling workload's namespace.
    pub src_namespace: String,
    /// The called service.
    pub dst_service: String,
    /// The called workload's namespace.
    pub dst_namespace: String,
    /// The called workload.
    pub dst_workload: String,
    /// The called pod (or the endpoint's address, when discovery names no pod).
    pub dst_pod: String,
    /// `true` when the hop is mutual TLS.
    pub tls: String,
    /// The peer's identity, when TLS proved one.
    pub peer_identity: String,
    /// The route that took the request, where routes are counted apart (the ingress).
    pub route: String,
}

/// The labels of a response: the request's, and what came back.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    #[prometheus(flatten)]
    request: RequestLabels,
    status_code: String,
    /// Empty when the response carried none.
    grpc_status: Option<GrpcStatus>,
    classification: &'static str,
}

/// A `grpc_status` label value: one of the 17 codes gRPC defines, by its decimal number, or
/// `other` for any number it does not: an upstream may send any, and each distinct value
/// would be a series kept for as long as the proxy runs.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum GrpcStatus {
    Defined(Code),
    Other,
}

impl GrpcStatus {
    fn of(code: Code) -> Self {
        if code.is_defined() {
            GrpcStatus::Defined(code)
        } else {
            GrpcStatus::Other
        }
    }
}

impl EncodeLabelValue for GrpcStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        match self {
            GrpcStatus::Defined(code) => write!(encoder, "{code}"),
            GrpcStatus::Other => encoder.write_str("other"),
        }
    }
}

/// The latency buckets, in seconds: 100 µs (a proxied call on loopback) to 30 s.
const LATENCY_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0,
    3.0, 5.0, 10.0, 30.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The request metric families, registered once per proxy.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    /// Every label set in use, for dropping the idle ones.
    series: Arc<Mutex<HashMap<RequestLabels, Arc<Series>>>>,
    epoch: Instant,
}

/// The series of one label set: when it was last used, and how many times it was dropped
/// (endpoints holding handles from an older generation resolve them again).
#[derive(Debug, Default)]
struct Series {
    last_used_ms: AtomicU64,
    generation: AtomicU64,
    responses: Mutex<Vec<ResponseLabels>>,
}

impl HttpMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            series: Arc::default(),
            epoch: Instant::now(),
        };
        registry.register(
            "request",
            "Requests sent to an endpoint",
            metrics.requests.clone(),
        );
        registry.register(
            "response",
            "Responses, by HTTP status, gRPC status and classification (success or failure)",
            metrics.responses.clone(),
        );
        registry.register(
            "response_latency_seconds",
            "Time from a request to its response head",
            metrics.latency.clone(),
        );
        metrics
    }

    /// A layer that counts nothing: the service as it is, for measuring what metrics cost.
    pub fn disabled() -> RequestMetricsLayer {
        RequestMetricsLayer { endpoint: None }
    }

    /// The layer for one endpoint with these labels.
    pub fn layer(&self, labels: RequestLabels) -> RequestMetricsLayer {
        let series = {
            let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
            all.entry(labels.clone()).or_default().clone()
        };
        let handles = self.resolve(&labels, series.generation.load(Ordering::Acquire));
        RequestMetricsLayer {
            endpoint: Some(Arc::new(EndpointMetrics {
                families: self.clone(),
                handles: Mutex::new(handles),
                series,
                labels,
            })),
        }
    }

    fn resolve(&self, labels: &RequestLabels, generation: u64) -> Handles {
        Handles {
            generation,
            requests: self.requests.get_or_create(labels).clone(),
            latency: self.latency.get_or_create(labels).clone(),
            responses: Vec::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    fn ms_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Drops the series of every label set unused for `idle`: endpoints that are gone, or
    /// quiet. A label set used again starts its series anew. Returns how many were dropped.
    pub fn drop_idle(&self, idle: Duration) -> usize {
        let now = self.now_ms();
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut dropped = 0;
        all.retain(|labels, series| {
            if now.saturating_sub(series.last_used_ms.load(Ordering::Acquire)) < idle_ms {
                return true;
            }
            series.generation.fetch_add(1, Ordering::AcqRel);
            self.requests.remove(labels);
            self.latency.remove(labels);
            for response in series
                .responses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                self.responses.remove(&response);
            }
            dropped += 1;
            // Still held by a live endpoint: keep tracking it, with nothing exported.
            Arc::strong_count(series) > 1
        });
        dropped
    }
}

/// The metrics of one endpoint.
struct EndpointMetrics {
    labels: RequestLabels,
    families: HttpMetrics,
    series: Arc<Series>,
    handles: Mutex<Handles>,
}

/// Resolved series of one endpoint, valid for one generation of its label set.
struct Handles {
    generation: u64,
    requests: Counter,
    latency: Histogram,
    /// (status, gRPC status, success) -> counter: a handful per endpoint.
    responses: Vec<(ResponseKey, Counter)>,
}

/// HTTP status (0: none), gRPC status, success.
type ResponseKey = (u16, Option<Code>, bool);

impl std::fmt::Debug for EndpointMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointMetrics")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl EndpointMetrics {
    /// The handles of the current generation, resolving them again after a drop.
    fn handles(&self) -> std::sync::MutexGuard<'_, Handles> {
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.series.generation.load(Ordering::Acquire);
        if handles.generation != generation {
            *handles = self.families.resolve(&self.labels, generation);
        }
        handles
    }

    /// A request sent at `at` (the clock is read once per request, for this and its latency).
    fn request(&self, at: Instant) {
        self.series
            .last_used_ms
            .store(self.families.ms_at(at), Ordering::Release);
        self.handles().requests.inc();
    }

    fn latency(&self, seconds: f64) {
        self.handles().latency.observe(seconds);
    }

    /// A response classified at its head: its latency and its outcome, under one lock.
    fn answered(&self, seconds: f64, status: StatusCode, grpc: Option<Code>, class: Class) {
        let mut handles = self.handles();
        handles.latency.observe(seconds);
        self.count_response(&mut handles, Some(status), grpc, class);
    }

    fn response(&self, status: Option<StatusCode>, grpc: Option<Code>, class: Class) {
        self.count_response(&mut self.handles(), status, grpc, class);
    }

    fn count_response(
        &self,
        handles: &mut Handles,
        status: Option<StatusCode>,
        grpc: Option<Code>,
        class: Class,
    ) {
        let key = (
            status.map_or(0, |s| s.as_u16()),
            grpc,
            class == Class::Success,
        );
        if let Some((_, counter)) = handles.responses.iter().find(|(k, _)| *k == key) {
            counter.inc();
            return;
        }
        let labels = ResponseLabels {
            request: self.labels.clone(),
            status_code: status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
            grpc_status: grpc.map(GrpcStatus::of),
            classification: if key.2 { "success" } else { "failure" },
        };
        let counter = self.families.responses.get_or_create(&labels).clone();
        counter.inc();
        handles.responses.push((key, counter));
        let mut seen = self
            .series
            .responses
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !seen.contains(&labels) {
            seen.push(labels);
        }
    }
}

impl BodyObserver for EndpointMetrics {
    fn on_end(&self, end: BodyEnd, status: StatusCode) {
        match end {
            BodyEnd::Complete {
                class: Some(class),
                grpc_status,
            } => self.response(Some(status), grpc_status, class),
            BodyEnd::Failed => self.response(Some(status), None, Class::Failure),
            // Not classified at the end (decided at the head), or the caller went away.
            BodyEnd::Complete { class: None, .. } | BodyEnd::Dropped => {}
        }
    }
}

/// Counts requests, responses and latency for one endpoint's service.
#[derive(Clone, Debug)]
pub struct RequestMetricsLayer {
    endpoint: Option<Arc<EndpointMetrics>>,
}

impl<S> tower::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetrics<S>;

    fn layer(&self, inner: S) -> RequestMetrics<S> {
        RequestMetrics {
            inner,
            endpoint: self.endpoint.clone(),
        }
    }
}

/// See [`RequestMetricsLayer`].
#[derive(Clone, Debug)]
pub struct RequestMetrics<S> {
    inner: S,
    endpoint: Option<Arc<EndpointMetrics>>,
}

impl<S: Availability> Availability for RequestMetrics<S> {
    fn is_available(&self) -> bool {
        self.inner.is_available()
    }
}

impl<S> tower::Service<Request<Body>> for RequestMetrics<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let start = mesh_core::clock::now();
        if let Some(endpoint) = &self.endpoint {
            endpoint.request(start);
        }
        let grpc = is_grpc(&req);
        ResponseFuture {
            inner: self.inner.call(req),
            endpoint: self.endpoint.clone(),
            start,
            grpc,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`RequestMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        endpoint: Option<Arc<EndpointMetrics>>,
        start: Instant,
        grpc: bool,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(endpoint) = this.endpoint.as_deref() else {
            return Poll::Ready(result.map_err(Into::into));
        };
        match result {
            Ok(rsp) => {
                let seconds = mesh_core::clock::now()
                    .saturating_duration_since(*this.start)
                    .as_secs_f64();
                let status = rsp.status();
                let Some(class) = classify_head(*this.grpc, &rsp) else {
                    endpoint.latency(seconds);
                    // gRPC: the trailers will tell.
                    let observer: Arc<dyn BodyObserver> = match this.endpoint.clone() {
                        Some(endpoint) => endpoint,
                        None => return Poll::Ready(Ok(rsp)),
                    };
                    return Poll::Ready(Ok(rsp.map(|body| match body.into_received() {
                        Ok(body) => Body::Observed(ObservedBody::new(body, observer, true, status)),
                        Err(other) => other,
                    })));
                };
                endpoint.answered(seconds, status, grpc_status(rsp.headers()), class);
                Poll::Ready(Ok(rsp))
            }
            Err(e) => {
                endpoint.response(None, None, Class::Failure);
                Poll::Ready(Err(e.into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, ServiceExt};

    fn labels() -> RequestLabels {
        RequestLabels {
            direction: "outbound".into(),
            authority: "web.test:80".into(),
            dst_workload: "web".into(),
            tls: "false".into(),
            ..RequestLabels::default()
        }
    }

    fn exposition(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    async fn send(
        svc: &RequestMetrics<
            impl tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone,
        >,
        status: u16,
    ) {
        let rsp = svc
            .clone()
            .oneshot(Request::new(Body::Empty))
            .await
            .unwrap();
        assert_eq!(rsp.status().as_u16(), status);
    }

    #[tokio::test(start_paused = true)]
    async fn counts_and_drops_idle_series() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        let backend = tower::service_fn(|_req: Request<Body>| async {
            let mut rsp = Response::new(Body::Empty);
            *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, BoxError>(rsp)
        });
        let svc = metrics.layer(labels()).layer(backend);
        for _ in 0..3 {
            send(&svc, 503).await;
        }
        let text = exposition(&registry);
        assert!(
            text.contains("request_total{direction=\"outbound\",authority=\"web.test:80\""),
            "{text}"
        );
        assert!(
            text.contains("status_code=\"503\",grpc_status=\"\",classification=\"failure\"} 3"),
            "{text}"
        );
        assert!(text.contains("response_latency_seconds_count{"), "{text}");

        // Used five minutes ago: kept.
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(metrics.drop_idle(Duration::from_secs(600)), 0);

        // Idle for ten minutes: dropped from the exposition.
        tokio::time::advance(Duration::from_secs(301)).await;
        assert_eq!(metrics.drop_idle(Duration::from_secs(600)), 1);
        let text = exposition(&registry);
        assert!(!text.contains("request_total{"), "{text}");
        assert!(!text.contains("response_total{"), "{text}");

        // Used again: its series start anew.
        send(&svc, 503).await;
        let text = exposition(&registry);
        assert!(text.contains("classification=\"failure\"} 1"), "{text}");
        assert!(text.contains("authority=\"web.test:80\",src_workload=\"\",src_namespace=\"\",dst_service=\"\",dst_namespace=\"\",dst_workload=\"web\",dst_pod=\"\",tls=\"false\",peer_identity=\"\",route=\"\"} 1"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_status_labels_are_the_codes_numbers() {
        let mut registry = Registry::default();
        let metrics = HttpMetrics::register(&mut registry);
        // Trailers-only gRPC responses: the status is in the head.
        let backend = tower::service_fn(|req: Request<Body>| async move {
            let code = req.headers()["x-answer"].clone();
            let rsp = Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code)
                .body(Body::Empty)
                .unwrap();
            Ok::<_, BoxError>(rsp)
        });
        let svc = metrics.layer(labels()).layer(backend);
        for code in ["14", "5", "0", "0", "42"] {
            // (42 is not a gRPC code.)
            let req = Request::builder()
                .header("content-type", "application/grpc")
                .header("x-answer", code)
                .body(Body::Empty)
                .unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        let text = exposition(&registry);
        for (label, class, count) in [
            ("14", "failure", 1),
            ("5", "success", 1),
            ("0", "success", 2),
            // A code gRPC does not define: one `other` for all of them.
            ("other", "success", 1),
        ] {
            let series = format!(
                "status_code=\"200\",grpc_status=\"{label}\",classification=\"{class}\"}} {count}"
            );
            assert!(text.contains(&series), "{series}: {text}");
        }
    }
}
