//! One endpoint as the balancer sees it: its service, its load (peak-EWMA latency and requests
//! in flight) and its failure-accrual state. Shared lock-free by every request, except the
//! latency estimate, which has a lock of its own (never one across endpoints).

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_core::Availability;
use mesh_core::body::{BodyEnd, BodyObserver};
use mesh_core::classify::Class;
use mesh_core::endpoint::Endpoint;
use tokio::time::Instant;

use crate::config::BalancerConfig;

const ACTIVE: u8 = 0;
const EJECTED: u8 = 1;
const PROBING: u8 = 2;

/// Can a request go to the endpoint now?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Yes.
    Ready,
    /// Yes, as the one probe of an ejected endpoint whose backoff is over.
    Probe,
    /// No: ejected, being probed, or its connection backing off.
    NotReady,
}

/// The shared state of one endpoint.
pub(crate) struct EndpointState<S> {
    pub(crate) endpoint: Endpoint,
    pub(crate) service: S,
    in_flight: AtomicU32,
    rtt: Mutex<RttEstimate>,
    accrual: Accrual,
    timing: Arc<Timing>,
}

/// What every endpoint of a balancer shares: the settings, the clock's origin, and how many
/// endpoints there are and are ejected (accrual never ejects more than its share).
#[derive(Debug)]
pub(crate) struct Timing {
    pub(crate) config: BalancerConfig,
    pub(crate) epoch: Instant,
    pub(crate) endpoints: AtomicUsize,
    pub(crate) ejected: AtomicUsize,
}

impl Timing {
    pub(crate) fn new(config: BalancerConfig) -> Self {
        Self {
            config,
            epoch: Instant::now(),
            endpoints: AtomicUsize::new(0),
            ejected: AtomicUsize::new(0),
        }
    }

    /// Reserves one ejection if the share allows it.
    fn reserve_ejection(&self) -> bool {
        let percent = usize::from(self.config.failure_accrual.max_ejected_percent.min(100));
        let allowed = self.endpoints.load(Ordering::Relaxed) * percent / 100;
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                (e < allowed).then_some(e + 1)
            })
            .is_ok()
    }

    fn release_ejection(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| e.checked_sub(1));
    }
}

impl Timing {
    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }
}

#[derive(Debug)]
struct RttEstimate {
    rtt_ns: f64,
    updated: Instant,
    /// Until the first response, the estimate is the configured default.
    sampled: bool,
}

#[derive(Debug, Default)]
struct Accrual {
    consecutive_failures: AtomicU32,
    state: AtomicU8,
    /// Ejected: the end of the backoff; probing: the probe's deadline. In µs since the
    /// balancer's epoch.
    until: AtomicU64,
    /// Ejections in a row, for the exponential backoff.
    ejections: AtomicU32,
    /// Every ejection, for metrics.
    ejections_total: AtomicU64,
}

/// How long a probe may take before another request may probe instead.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);

impl<S> std::fmt::Debug for EndpointState<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointState")
            .field("addr", &self.endpoint.addr)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("accrual", &self.accrual)
            .finish_non_exhaustive()
    }
}

impl<S> EndpointState<S> {
    pub(crate) fn new(endpoint: Endpoint, service: S, timing: Arc<Timing>) -> Self {
        let rtt_ns = timing.config.default_rtt.as_nanos() as f64;
        Self {
            endpoint,
            service,
            in_flight: AtomicU32::new(0),
            rtt: Mutex::new(RttEstimate {
                rtt_ns,
                updated: Instant::now(),
                sampled: false,
            }),
            accrual: Accrual::default(),
            timing,
        }
    }

    pub(crate) fn readiness(&self, now: Instant) -> Readiness
    where
        S: Availability,
    {
        let readiness = match self.accrual.state.load(Ordering::Acquire) {
            ACTIVE => Readiness::Ready,
            // Ejected with the backoff over, or a probe that overran its deadline.
            _ if self.timing.micros(now) >= self.accrual.until.load(Ordering::Acquire) => {
                Readiness::Probe
            }
            _ => Readiness::NotReady,
        };
        if readiness != Readiness::NotReady && !self.service.is_available() {
            return Readiness::NotReady;
        }
        readiness
    }

    /// Takes the endpoint for one request: always for a ready one; for an ejected one only if
    /// this request wins the probe, whose token it gets (`Some`).
    pub(crate) fn claim(&self, readiness: Readiness, now: Instant) -> Option<Option<u64>> {
        match readiness {
            Readiness::Ready => Some(None),
            Readiness::Probe => {
                let accrual = &self.accrual;
                let until = accrual.until.load(Ordering::Acquire);
                if self.timing.micros(now) < until {
                    return None;
                }
                // The deadline is the claim: one request wins it. A probe that never answers
                // frees the endpoint for another probe when its deadline passes.
                let deadline = self.timing.micros(now + PROBE_DEADLINE).max(until + 1);
                accrual
                    .until
                    .compare_exchange(until, deadline, Ordering::AcqRel, Ordering::Acquire)
                    .ok()?;
                accrual.state.store(PROBING, Ordering::Release);
                Some(Some(deadline))
            }
            Readiness::NotReady => None,
        }
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency the balancer compares: the peak-EWMA estimate, decayed toward zero for the
    /// time without a sample (so an endpoint that was slow once is tried again), or zero for
    /// an endpoint never measured and idle (one request is worth learning its latency).
    pub(crate) fn latency(&self, now: Instant) -> f64 {
        let rtt = self.rtt.lock().unwrap_or_else(|e| e.into_inner());
        if !rtt.sampled && self.in_flight() == 0 {
            return 0.0;
        }
        let idle = now.saturating_duration_since(rtt.updated).as_nanos() as f64;
        rtt.rtt_ns * (-idle / self.decay_ns()).exp()
    }

    /// The latency estimate now, decayed for the time without a sample.
    pub(crate) fn rtt_estimate(&self, now: Instant) -> f64 {
        let rtt = self.rtt.lock().unwrap_or_else(|e| e.into_inner());
        let idle = now.saturating_duration_since(rtt.updated).as_nanos() as f64;
        rtt.rtt_ns * (-idle / self.decay_ns()).exp()
    }

    fn decay_ns(&self) -> f64 {
        self.timing.config.decay.as_nanos() as f64
    }

    /// A response head arrived `rtt` after the request left.
    pub(crate) fn observe_rtt(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let decay_ns = self.decay_ns();
        let mut estimate = self.rtt.lock().unwrap_or_else(|e| e.into_inner());
        if sample > estimate.rtt_ns || !estimate.sampled {
            // A peak replaces the estimate at once: a slowing endpoint is avoided quickly. So
            // does the first sample: the default only stands in until there is one.
            estimate.rtt_ns = sample;
            estimate.sampled = true;
        } else {
            let elapsed = now.saturating_duration_since(estimate.updated).as_nanos() as f64;
            let keep = (-elapsed / decay_ns).exp();
            estimate.rtt_ns = estimate.rtt_ns * keep + sample * (1.0 - keep);
        }
        estimate.updated = now;
    }

    pub(crate) fn start_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn end_request(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn ejections_total(&self) -> u64 {
        self.accrual.ejections_total.load(Ordering::Relaxed)
    }

    pub(crate) fn is_ejected(&self) -> bool {
        self.accrual.state.load(Ordering::Acquire) != ACTIVE
    }

    /// Feeds failure accrual with the class of a finished request; `probe` when it was the
    /// probe of an ejected endpoint. While an endpoint is out, only its probe decides: late
    /// answers of requests sent before the ejection neither readmit nor re-eject it.
    pub(crate) fn record(&self, class: Class, probe: bool) {
        let accrual = &self.accrual;
        let threshold = self.timing.config.failure_accrual.consecutive_failures;
        match (class, probe) {
            (Class::Success, true) => {
                accrual.consecutive_failures.store(0, Ordering::Relaxed);
                accrual.ejections.store(0, Ordering::Relaxed);
                if accrual.state.swap(ACTIVE, Ordering::AcqRel) != ACTIVE {
                    self.timing.release_ejection();
                    tracing::info!(endpoint = %self.endpoint.addr, "endpoint readmitted after a successful probe");
                }
            }
            (Class::Failure, true) => self.eject("the probe failed"),
            _ if accrual.state.load(Ordering::Acquire) != ACTIVE => {}
            (Class::Success, false) => accrual.consecutive_failures.store(0, Ordering::Relaxed),
            (Class::Failure, false) if threshold == 0 => {}
            (Class::Failure, false) => {
                let failures = accrual.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures >= threshold && self.timing.reserve_ejection() {
                    if accrual.state.load(Ordering::Acquire) == ACTIVE {
                        self.eject("consecutive failures");
                    } else {
                        self.timing.release_ejection();
                    }
                }
            }
        }
    }

    /// Takes the endpoint out for the next backoff. The end of the backoff is stored before
    /// the state, so that no reader sees "ejected" with a stale end.
    fn eject(&self, why: &'static str) {
        let accrual = &self.accrual;
        let ejections = accrual.ejections.fetch_add(1, Ordering::Relaxed);
        accrual.ejections_total.fetch_add(1, Ordering::Relaxed);
        let accrual_config = &self.timing.config.failure_accrual;
        let base = accrual_config
            .backoff_min
            .saturating_mul(1 << ejections.min(20))
            .min(accrual_config.backoff_max);
        // Up to a quarter more, so that endpoints ejected together are not probed together.
        let jitter = base.mul_f64(fastrand::f64() * 0.25);
        let backoff = (base + jitter).min(accrual_config.backoff_max.max(base));
        let until = self.timing.micros(Instant::now() + backoff);
        accrual.until.store(until, Ordering::Release);
        accrual.consecutive_failures.store(0, Ordering::Relaxed);
        accrual.state.store(EJECTED, Ordering::Release);
        tracing::info!(endpoint = %self.endpoint.addr, ?backoff, why, "endpoint ejected");
    }

    /// A probe that ended without a verdict (cancelled): another may probe at once, unless
    /// a newer probe holds the endpoint already.
    pub(crate) fn release_probe(&self, token: u64) {
        let accrual = &self.accrual;
        if accrual
            .until
            .compare_exchange(token, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let _ = accrual.state.compare_exchange(
                PROBING,
                EJECTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// A sample that may only raise the estimate: a failure's latency (a fast error must not
    /// make an endpoint look good) or a cancelled request's age (a hung endpoint must look
    /// slow).
    pub(crate) fn observe_rtt_peak(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let mut estimate = self.rtt.lock().unwrap_or_else(|e| e.into_inner());
        if sample > estimate.rtt_ns {
            estimate.rtt_ns = sample;
            estimate.sampled = true;
            estimate.updated = now;
        }
    }
}

impl<S> Drop for EndpointState<S> {
    fn drop(&mut self) {
        // A removed endpoint no longer counts against the ejection share.
        if self.accrual.state.load(Ordering::Acquire) != ACTIVE {
            self.timing.release_ejection();
        }
    }
}

/// The end of a response body (never a probe's: a probe is judged at its head).
impl<S: Send + Sync> BodyObserver for EndpointState<S> {
    fn on_end(&self, end: BodyEnd, _: http::StatusCode) {
        self.end_request();
        match end {
            BodyEnd::Complete {
                class: Some(class), ..
            } => self.record(class, false),
            BodyEnd::Failed => self.record(Class::Failure, false),
            BodyEnd::Complete { class: None, .. } | BodyEnd::Dropped => {}
        }
    }
}
