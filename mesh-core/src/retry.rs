//! Retries with a budget: a failed request is sent again, a bounded number of times, after a
//! jittered backoff, as long as a retry budget shared by the whole route allows it.
//!
//! [`RetryLayer`] wraps any [`SharedHttpService`](crate::SharedHttpService)-like stack; every
//! request through one layer (one route, in the proxy) shares its [`RetryPolicy`], its budget
//! and its [`RetryStats`].
//!
//! # What is retried
//!
//! A request is sent again when its attempt failed in one of the ways the policy's
//! `conditions` name, it has retries left (`max_retries`, default 2), its body can be replayed
//! (below) and the budget has room:
//!
//! - `connect-failure`: the error's [`Cause`] (what [`classify`] finds) says the request
//!   [never reached the application](Cause::never_reached_app), other than a refused stream:
//!   the endpoint could not be reached (`connect`, `connect-timeout`, `endpoint-down`,
//!   `tls-handshake`, `h2-handshake`, `connection-closed`; see [`client`](crate::client)), or
//!   the mesh stopped the request itself (`fail-fast`, `queue-full` from the balancer,
//!   `unknown-authority`...). An authorization denial is not a failure to retry: it is an
//!   answer;
//! - `refused-stream`: the cause is [`Cause::RefusedStream`]: the endpoint refused the HTTP/2
//!   stream with `REFUSED_STREAM`, or a graceful `GOAWAY` left it unprocessed, which RFC 9113
//!   guarantees means the application did not see it (the client tells it by the h2 error's
//!   reason, never by its text);
//! - `gateway-error`: a response 502, 503 or 504, or an error that the mesh answers with one
//!   of those (its cause's [`ErrorKind`]);
//! - `5xx`: any response 500 to 599, or any error but an authorization denial;
//! - `grpc` (a list of codes, by name such as `"unavailable"` or by number): a gRPC request
//!   whose response head carries one of these `grpc-status` codes (a trailers-only response).
//!
//! The defaults are `["gateway-error", "connect-failure", "refused-stream"]` and gRPC
//! `["unavailable"]`.
//!
//! **Idempotency.** `connect-failure` and `refused-stream` mean the application never saw the
//! request, so they are retried whatever the method. The other conditions mean the application
//! may have acted on the request (an `upstream` error is a reset or a closed connection after
//! the request was sent; a timeout may come after the application started): they apply only
//! to idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), unless the policy sets
//! `retry_non_idempotent` (POST, PATCH and the rest). **gRPC requests are POSTs**: a gRPC
//! route whose methods are safe to repeat opts in to retries on `grpc` codes and HTTP statuses
//! by setting `retry_non_idempotent = true`; the proxy cannot tell a gRPC read from a write.
//! CONNECT requests and upgrades are never retried.
//!
//! **Only on the response head.** The decision reads the response head (status and headers),
//! never its body: once the head is handed to the caller the request is over, so a response
//! whose body or trailers fail later is never retried. A streaming gRPC response reports its
//! status in trailers, which the layer does not wait for: only trailers-only responses (the
//! status in the head) can be retried.
//!
//! # The body
//!
//! A request body is replayed from memory, so it is kept only while it is small: at most
//! `max_buffered_body` bytes (64 KiB). The body streams to the first attempt as it arrives
//! (nothing waits for the whole body, so a bidirectional stream keeps flowing) while a copy of
//! its frames, trailers included, is kept (`Bytes` are reference-counted: no copy of the data).
//! A body known to be larger is not kept at all; one observed to grow past the limit is no
//! longer kept and the request is sent that once, without retries; either way every byte
//! reaches the endpoint. A request whose body the failed attempt was still reading when its
//! answer came back (an early 503 while the upload goes on) is not retried either: the rest
//! of the body is in that attempt's hands. A body no attempt has started reading (a connect
//! failure) is sent whole to the retry.
//!
//! # The budget
//!
//! Retries are capped by a budget shared by every request through the layer, the classic one
//! of Finagle and linkerd: each request deposits, each retry withdraws, over a sliding window
//! (`budget_window`, 10 s, in ten buckets). Retries may be at most `budget_ratio` (0.2) of the
//! requests in the window, plus a floor of `min_retries_per_second` (10) times the window, so
//! that a route with little traffic can still retry. An overloaded endpoint thus sees at most
//! 20% more load from retries, not three times as much. When the budget is empty, the failed
//! response (or error) is returned as it is, and [`RetryStats::budget_exhausted`] counts it.
//!
//! # Backoff
//!
//! Before retry `n` (from 0) the layer sleeps a random time in `(0, min(backoff_max,
//! backoff_min * 2^n)]`: exponential backoff with full jitter (25 ms and 250 ms by default),
//! with `tokio::time`, so tests run with paused time.
//!
//! # Marking and counting
//!
//! A response that needed retries carries `mesh-retries: N` ([`RETRIES_HEADER`]). The layer's
//! [`RetryStats`] counts requests, retries and budget refusals for metrics to read.
//!
//! # Where it goes
//!
//! Below the layer that answers errors ([`RespondLayer`](crate::server::RespondLayer)) and any
//! overall timeout, above the balancer, so that a retry may pick another endpoint:
//!
//! ```
//! use mesh_core::retry::{RetryLayer, RetryPolicy};
//! use mesh_core::{Body, BoxError};
//! use tower::ServiceBuilder;
//!
//! let policy: RetryPolicy = toml::from_str(
//!     "max_retries = 3\nconditions = [\"5xx\"]\ngrpc = [\"unavailable\", 8]\nbackoff_max = \"100ms\"",
//! )
//! .unwrap();
//! assert!(policy.validate().is_ok());
//! let retry = RetryLayer::new(&policy);
//! let stats = retry.stats(); // for metrics
//! let backend = tower::service_fn(|_req: http::Request<Body>| async {
//!     Ok::<_, BoxError>(http::Response::new(Body::Empty))
//! });
//! let route = ServiceBuilder::new().layer(retry).service(backend);
//! # let _ = (route, stats);
//! ```

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::BoxError;
use crate::body::Body;
use crate::error::{Cause, ErrorKind, classify, is_grpc};
use crate::grpc::{Code, grpc_status};

/// The response header that says how many retries a response needed.
pub const RETRIES_HEADER: &str = "mesh-retries";

/// A failure that may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx response, or any error but an authorization denial.
    #[serde(rename = "5xx")]
    ServerError,
    /// A 502, 503 or 504 response, or an error the mesh answers with one.
    GatewayError,
    /// The request never reached the application: the endpoint could not be reached, or the
    /// mesh stopped the request before sending it ([`Cause::never_reached_app`]).
    ConnectFailure,
    /// The endpoint refused the HTTP/2 stream before processing it ([`Cause::RefusedStream`]).
    RefusedStream,
}

/// The retry settings of a route.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries per request, after the first attempt (0 turns retries off).
    pub max_retries: u32,
    /// Which failures are retried.
    pub conditions: Vec<RetryOn>,
    /// gRPC statuses, in the head of a trailers-only response, that are retried; in
    /// configuration, names (`"unavailable"`) or numbers (see [`Code`]).
    pub grpc: Vec<Code>,
    /// The first backoff bound; it doubles per retry up to `backoff_max`.
    #[serde(with = "crate::config::duration")]
    pub backoff_min: Duration,
    /// The largest backoff.
    #[serde(with = "crate::config::duration")]
    pub backoff_max: Duration,
    /// Also retry POST, PATCH and other non-idempotent methods (and so gRPC) on response
    /// failures. Connect failures and refused streams are retried whatever the method.
    pub retry_non_idempotent: bool,
    /// The largest request body kept for replay, in bytes.
    pub max_buffered_body: usize,
    /// Retries may be at most this share of the requests in the window.
    pub budget_ratio: f64,
    /// Retries allowed per second whatever the traffic.
    pub min_retries_per_second: u32,
    /// The window over which the budget counts.
    #[serde(with = "crate::config::duration")]
    pub budget_window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            conditions: vec![
                RetryOn::GatewayError,
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
            ],
            grpc: vec![Code::UNAVAILABLE],
            backoff_min: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            retry_non_idempotent: false,
            max_buffered_body: 64 * 1024,
            budget_ratio: 0.2,
            min_retries_per_second: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

/// The most retries per request a policy may ask for.
pub const MAX_RETRIES: u32 = 10;

impl RetryPolicy {
    /// Checks the values; the error names the field and what was expected.
    pub fn validate(&self) -> Result<(), crate::config::Invalid> {
        use crate::config::{Invalid, check_duration, check_range, check_setting_duration};
        check_range("max_retries", self.max_retries, 0, MAX_RETRIES)?;
        check_setting_duration("backoff_min", self.backoff_min)?;
        check_setting_duration("backoff_max", self.backoff_max)?;
        if self.backoff_max < self.backoff_min {
            return Err(Invalid::new(
                "backoff_max",
                crate::config::format_duration(self.backoff_max),
                "expected at least backoff_min",
            ));
        }
        check_range(
            "max_buffered_body",
            self.max_buffered_body,
            0,
            64 * 1024 * 1024,
        )?;
        check_range("budget_ratio", self.budget_ratio, 0.0, 10.0)?;
        check_duration(
            "budget_window",
            self.budget_window,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )
    }

    fn on(&self, condition: RetryOn) -> bool {
        self.conditions.contains(&condition)
    }

    /// Does this outcome call for a retry? `response_ok`: the method allows retries on
    /// failures the application may have seen.
    fn retryable(
        &self,
        result: &Result<Response<Body>, BoxError>,
        grpc: bool,
        response_ok: bool,
    ) -> bool {
        match result {
            Err(e) => {
                let e: &(dyn StdError + 'static) = &**e;
                let cause = classify(e);
                if self.on(RetryOn::ConnectFailure) && is_connect_failure(cause) {
                    return true;
                }
                if self.on(RetryOn::RefusedStream) && cause == Cause::RefusedStream {
                    return true;
                }
                let kind = cause.kind();
                response_ok
                    && ((self.on(RetryOn::ServerError) && !kind.is_answer())
                        || (self.on(RetryOn::GatewayError)
                            && matches!(
                                kind,
                                ErrorKind::BadGateway
                                    | ErrorKind::Unavailable
                                    | ErrorKind::GatewayTimeout
                            )))
            }
            Ok(rsp) => {
                if !response_ok {
                    return false;
                }
                let status = rsp.status().as_u16();
                (self.on(RetryOn::ServerError) && rsp.status().is_server_error())
                    || (self.on(RetryOn::GatewayError) && matches!(status, 502..=504))
                    || (grpc
                        && grpc_status(rsp.headers()).is_some_and(|code| self.grpc.contains(&code)))
            }
        }
    }
}

/// Did the request fail before reaching the application, other than by a refused stream (its
/// own condition)? A denial or a limit is an answer, not a failure to retry.
fn is_connect_failure(cause: Cause) -> bool {
    cause.never_reached_app() && cause != Cause::RefusedStream && !cause.kind().is_answer()
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Counts of a retry layer, for metrics.
#[derive(Debug, Default)]
pub struct RetryStats {
    requests: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
}

impl RetryStats {
    /// Requests through the layer.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Retries sent.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries wanted but refused because the budget was empty.
    pub fn budget_exhausted(&self) -> u64 {
        self.budget_exhausted.load(Ordering::Relaxed)
    }
}

/// Buckets of the budget's sliding window.
const BUCKETS: usize = 10;

/// What one request deposits, in the budget's units.
const DEPOSIT: i64 = 1000;

/// The retry budget: deposits per request, withdrawals per retry, over a sliding window.
#[derive(Debug)]
struct Budget {
    /// What one retry withdraws: `DEPOSIT / ratio`, so retries stay at most `ratio` of
    /// requests.
    withdrawal: i64,
    /// What each request deposits (0 when the ratio is 0: only the floor remains).
    deposit: i64,
    /// The floor: `min_retries_per_second * window` retries.
    reserve: i64,
    start: Instant,
    bucket: Duration,
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    /// The absolute number of the current bucket since `start`.
    current: u64,
    buckets: [i64; BUCKETS],
}

impl Budget {
    fn new(policy: &RetryPolicy) -> Self {
        let ratio = policy.budget_ratio;
        let (deposit, withdrawal) = if ratio > 0.0 && ratio.is_finite() {
            // Rounded up: never more retries than the ratio allows.
            (DEPOSIT, ((DEPOSIT as f64 / ratio).ceil() as i64).max(1))
        } else {
            (0, DEPOSIT)
        };
        let floor = (f64::from(policy.min_retries_per_second) * policy.budget_window.as_secs_f64())
            .floor() as i64;
        let window = policy
            .budget_window
            .max(Duration::from_millis(BUCKETS as u64));
        Self {
            withdrawal,
            deposit,
            reserve: floor.saturating_mul(withdrawal),
            start: Instant::now(),
            bucket: window / BUCKETS as u32,
            state: Mutex::new(BudgetState {
                current: 0,
                buckets: [0; BUCKETS],
            }),
        }
    }

    /// The state, its window slid to now.
    fn now(&self) -> (MutexGuard<'_, BudgetState>, usize) {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        let index =
            u64::try_from(elapsed.as_nanos() / self.bucket.as_nanos().max(1)).unwrap_or(u64::MAX);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if index > state.current {
            let expired = (index - state.current).min(BUCKETS as u64);
            for i in 1..=expired {
                let slot = ((state.current + i) % BUCKETS as u64) as usize;
                state.buckets[slot] = 0;
            }
            state.current = index;
        }
        (state, (index % BUCKETS as u64) as usize)
    }

    fn deposit(&self) {
        if self.deposit > 0 {
            let (mut state, slot) = self.now();
            state.buckets[slot] = state.buckets[slot].saturating_add(self.deposit);
        }
    }

    fn withdraw(&self) -> bool {
        let (mut state, slot) = self.now();
        let balance: i64 = state
            .buckets
            .iter()
            .sum::<i64>()
            .saturating_add(self.reserve);
        if balance < self.withdrawal {
            return false;
        }
        state.buckets[slot] -= self.withdrawal;
        true
    }
}

/// The bytes of request bodies kept for replay across every retry layer of the process: a
/// body is kept only while the pool has room, so that many large requests at once cannot
/// make the proxy hold more than the pool's limit for retries (past it, a request is sent
/// once, streamed, without retries). Set the limit once at start
/// ([`set_buffer_limit`]); [`DEFAULT_BUFFER_LIMIT`] otherwise.
#[derive(Debug)]
struct BufferPool {
    limit: AtomicUsize,
    used: AtomicUsize,
}

/// The default limit of the bytes kept for retries in all: 32 MiB.
pub const DEFAULT_BUFFER_LIMIT: usize = 32 * 1024 * 1024;

static BUFFER_POOL: BufferPool = BufferPool {
    limit: AtomicUsize::new(DEFAULT_BUFFER_LIMIT),
    used: AtomicUsize::new(0),
};

/// Sets the limit of the bytes of request bodies kept for retries, in all (see
/// [`RetryPolicy::max_buffered_body`] for the limit per request).
pub fn set_buffer_limit(bytes: usize) {
    BUFFER_POOL.limit.store(bytes, Ordering::Relaxed);
}

/// The bytes of request bodies kept for retries now, in all.
pub fn buffered_bytes() -> usize {
    BUFFER_POOL.used.load(Ordering::Relaxed)
}

impl BufferPool {
    fn reserve(&self, n: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= limit).then_some(used + n)
            })
            .is_ok()
    }

    fn release(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What every request through one layer shares.
#[derive(Debug)]
struct Shared {
    policy: RetryPolicy,
    budget: Budget,
    stats: Arc<RetryStats>,
    /// The state of a splitmix64 generator, for jitter (no dependency for a few random bits).
    random: AtomicU64,
}

impl Shared {
    fn random(&self) -> u64 {
        const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut z = self
            .random
            .fetch_add(GAMMA, Ordering::Relaxed)
            .wrapping_add(GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The sleep before retry `n` (from 0): full jitter in `(0, min(max, min * 2^n)]`.
    fn backoff(&self, n: u32) -> Duration {
        let policy = &self.policy;
        let cap = policy
            .backoff_min
            .saturating_mul(1u32 << n.min(20))
            .min(policy.backoff_max);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(nanos - self.random() % nanos)
    }
}

/// Adds retries to a service (see the [module](self) documentation).
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// A layer with this policy and a budget of its own: one layer per route.
    pub fn new(policy: &RetryPolicy) -> Self {
        use std::hash::BuildHasher;
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u64);
        Self {
            shared: Arc::new(Shared {
                policy: policy.clone(),
                budget: Budget::new(policy),
                stats: Arc::new(RetryStats::default()),
                random: AtomicU64::new(seed),
            }),
        }
    }

    /// The counts of every service this layer makes.
    pub fn stats(&self) -> Arc<RetryStats> {
        self.shared.stats.clone()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Retry<S> {
    /// The counts of this service and its layer.
    pub fn stats(&self) -> Arc<RetryStats> {
        self.shared.stats.clone()
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Retry`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // The request cannot be retried: the inner future as it is.
        Once { #[pin] future: F },
        Retrying { future: BoxFuture },
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Once { future } => future.poll(cx).map_err(Into::into),
            StateProj::Retrying { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<S> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let shared = &self.shared;
        shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        shared.budget.deposit();
        let policy = &shared.policy;
        let grpc = is_grpc(&req);
        let response_ok = policy.retry_non_idempotent || is_idempotent(req.method());
        let before_sending =
            policy.on(RetryOn::ConnectFailure) || policy.on(RetryOn::RefusedStream);
        let after_sending = response_ok
            && (policy.on(RetryOn::ServerError)
                || policy.on(RetryOn::GatewayError)
                || (grpc && !policy.grpc.is_empty()));
        let eligible = policy.max_retries > 0
            && (before_sending || after_sending)
            && req.method() != Method::CONNECT
            && !req.headers().contains_key(header::UPGRADE);
        if !eligible {
            return once(self.inner.call(req));
        }
        let (parts, body) = req.into_parts();
        let replay = match Replay::new(body, policy.max_buffered_body) {
            Ok(replay) => replay,
            Err(body) => return once(self.inner.call(Request::from_parts(parts, body))),
        };
        let first = self
            .inner
            .call(Request::from_parts(parts.clone(), replay.attempt()));
        let service = self.inner.clone();
        let shared = self.shared.clone();
        ResponseFuture {
            state: State::Retrying {
                future: Box::pin(retry_loop(
                    shared,
                    service,
                    parts,
                    replay,
                    first,
                    grpc,
                    response_ok,
                )),
            },
        }
    }
}

fn once<F>(future: F) -> ResponseFuture<F> {
    ResponseFuture {
        state: State::Once { future },
    }
}

async fn retry_loop<S>(
    shared: Arc<Shared>,
    mut service: S,
    parts: http::request::Parts,
    replay: Replay,
    mut attempt: S::Future,
    grpc: bool,
    response_ok: bool,
) -> Result<Response<Body>, BoxError>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    let policy = &shared.policy;
    let mut retries = 0;
    loop {
        let result = attempt.await.map_err(Into::into);
        if retries >= policy.max_retries
            || !policy.retryable(&result, grpc, response_ok)
            || !replay.can_replay()
        {
            return mark(result, retries);
        }
        if !shared.budget.withdraw() {
            shared
                .stats
                .budget_exhausted
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(retries, "retry budget exhausted");
            return mark(result, retries);
        }
        drop(result);
        shared.stats.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(shared.backoff(retries)).await;
        retries += 1;
        tracing::debug!(retries, uri = %parts.uri, "retrying");
        let req = Request::from_parts(parts.clone(), replay.attempt());
        attempt = ServiceExt::<Request<Body>>::ready(&mut service)
            .await
            .map_err(Into::into)?
            .call(req);
    }
}

fn mark(
    result: Result<Response<Body>, BoxError>,
    retries: u32,
) -> Result<Response<Body>, BoxError> {
    result.map(|mut rsp| {
        if retries > 0 {
            rsp.headers_mut()
                .insert(RETRIES_HEADER, HeaderValue::from(retries));
        }
        rsp
    })
}

/// A request body that can be sent again.
enum Replay {
    /// No body at all.
    Empty,
    /// One chunk already in memory.
    Full(Bytes),
    /// A body read as the attempts go, kept while small.
    Streamed(Arc<Mutex<ReplayState>>),
}

struct ReplayState {
    /// The frames read so far (data, then the trailers), while they fit.
    frames: Vec<Frame<Bytes>>,
    /// Data bytes in `frames`.
    buffered: usize,
    limit: usize,
    /// The original body, when no attempt is reading it and it has not ended.
    rest: Option<Body>,
    /// The original body was read to its end.
    complete: bool,
    /// The body cannot be replayed: it outgrew the limit or failed.
    spoiled: bool,
    /// The original body's size.
    hint: SizeHint,
}

impl Replay {
    /// Prepares `body` for replay; gives it back when it is known to be too large.
    fn new(body: Body, limit: usize) -> Result<Self, Body> {
        if http_body::Body::is_end_stream(&body) {
            return Ok(Replay::Empty);
        }
        let hint = http_body::Body::size_hint(&body);
        if hint.lower() > limit as u64 {
            return Err(body);
        }
        match body {
            Body::Full(Some(data)) if data.len() <= limit => Ok(Replay::Full(data)),
            Body::Full(Some(data)) => Err(Body::Full(Some(data))),
            body => Ok(Replay::Streamed(Arc::new(Mutex::new(ReplayState {
                frames: Vec::new(),
                buffered: 0,
                limit,
                rest: Some(body),
                complete: false,
                spoiled: false,
                hint,
            })))),
        }
    }

    /// The body of one more attempt.
    fn attempt(&self) -> Body {
        match self {
            Replay::Empty => Body::Empty,
            Replay::Full(data) => Body::full(data.clone()),
            Replay::Streamed(state) => Body::boxed(ReplayBody {
                state: state.clone(),
                next: 0,
                read: 0,
                rest: None,
            }),
        }
    }

    /// Can one more attempt be sent the whole body?
    fn can_replay(&self) -> bool {
        match self {
            Replay::Empty | Replay::Full(_) => true,
            Replay::Streamed(state) => {
                let state = lock(state);
                !state.spoiled && (state.complete || state.rest.is_some())
            }
        }
    }
}

fn lock(state: &Mutex<ReplayState>) -> MutexGuard<'_, ReplayState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The body of one attempt: the frames kept so far, then the rest of the original body (kept
/// too, while it fits).
struct ReplayBody {
    state: Arc<Mutex<ReplayState>>,
    /// The next kept frame to send.
    next: usize,
    /// Data bytes sent.
    read: u64,
    /// The original body, while this attempt reads it.
    rest: Option<Body>,
}

/// An attempt's body found the original body in another attempt's hands. A retry is sent only
/// when no attempt is reading the original, so this reaches only an abandoned attempt that
/// had not started reading its body when its failed answer came, and starts late: its answer
/// is already dropped.
#[derive(Debug, thiserror::Error)]
#[error("the request body is being read by another attempt")]
struct BodyInUse;

impl ReplayBody {
    fn frame_from_rest(
        &mut self,
        polled: Option<Result<Frame<Bytes>, BoxError>>,
    ) -> Option<Result<Frame<Bytes>, BoxError>> {
        let mut state = lock(&self.state);
        match &polled {
            Some(Ok(frame)) => {
                if !state.spoiled {
                    let len = frame.data_ref().map_or(0, Bytes::len);
                    if state.buffered + len > state.limit || !BUFFER_POOL.reserve(len) {
                        // Too large to replay, or no room left in the process's pool: stop
                        // keeping it, and free what was kept.
                        state.spoil();
                    } else if let Some(data) = frame.data_ref() {
                        state.buffered += len;
                        state.frames.push(Frame::data(data.clone()));
                        self.next += 1;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        state.frames.push(Frame::trailers(trailers.clone()));
                        self.next += 1;
                    }
                }
                if let Some(data) = frame.data_ref() {
                    self.read += data.len() as u64;
                }
            }
            None => {
                state.complete = true;
                self.rest = None;
            }
            Some(Err(_)) => state.spoil(),
        }
        polled
    }
}

impl ReplayState {
    /// The body cannot be replayed: what was kept is freed, and given back to the pool.
    fn spoil(&mut self) {
        self.spoiled = true;
        self.frames = Vec::new();
        BUFFER_POOL.release(std::mem::take(&mut self.buffered));
    }
}

impl Drop for ReplayState {
    fn drop(&mut self) {
        BUFFER_POOL.release(self.buffered);
    }
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.rest.is_none() {
            let mut state = lock(&this.state);
            if let Some(frame) = state.frames.get(this.next) {
                let frame = match frame.data_ref() {
                    Some(data) => {
                        this.read += data.len() as u64;
                        Frame::data(data.clone())
                    }
                    None => Frame::trailers(frame.trailers_ref().cloned().unwrap_or_default()),
                };
                this.next += 1;
                return Poll::Ready(Some(Ok(frame)));
            }
            if state.complete {
                return Poll::Ready(None);
            }
            match state.rest.take() {
                Some(rest) => this.rest = Some(rest),
                None => return Poll::Ready(Some(Err(BodyInUse.into()))),
            }
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match http_body::Body::poll_frame(Pin::new(rest), cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(polled) => {
                let polled = polled.map(|r| r.map_err(|e| e.into_inner()));
                Poll::Ready(this.frame_from_rest(polled))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if let Some(rest) = &self.rest {
            // The original body may know it has ended before it says so with a last poll: then
            // it is complete, and the sender need not poll again.
            if http_body::Body::is_end_stream(rest) {
                lock(&self.state).complete = true;
                return true;
            }
            return false;
        }
        let state = lock(&self.state);
        state.complete && self.next >= state.frames.len()
    }

    fn size_hint(&self) -> SizeHint {
        let state = lock(&self.state);
        let mut hint = SizeHint::new();
        hint.set_lower(state.hint.lower().saturating_sub(self.read));
        if let Some(upper) = state.hint.upper() {
            hint.set_upper(upper.saturating_sub(self.read));
        }
        if state.complete && !state.spoiled {
            let kept = state.buffered as u64;
            hint.set_exact(kept.saturating_sub(self.read));
        }
        hint
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        // Give the original body back for the next attempt.
        if let Some(rest) = self.rest.take() {
            lock(&self.state).rest = Some(rest);
        }
    }
}
