//! The proxy's metrics beyond requests, read at scrape time: each service's balancer
//! (endpoints ready and ejected, ejections, requests in flight) and retries (requests through
//! a retry policy, retries, retries the budget refused).

use crate::outbound::Endpoint;
use mesh_balance::Balancer;
use mesh_metrics::Metrics;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Registers the balancers' metrics.
pub fn register_balancers(metrics: &mut Metrics, balancers: Vec<(String, Balancer<Endpoint>)>) {
    metrics
        .registry_mut()
        .register_collector(Box::new(BalancerCollector { balancers }));
}

/// Reads every balancer's endpoints at scrape time: nothing on the request path.
#[derive(Debug)]
struct BalancerCollector {
    balancers: Vec<(String, Balancer<Endpoint>)>,
}

impl Collector for BalancerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshots: Vec<(&str, Vec<mesh_balance::EndpointStatus>)> = self
            .balancers
            .iter()
            .map(|(service, b)| (service.as_str(), b.endpoints()))
            .collect();

        let mut family = encoder.encode_descriptor(
            "balancer_endpoints",
            "Endpoints of each outbound service, by state (ready or ejected by failure accrual)",
            None,
            MetricType::Gauge,
        )?;
        for (service, endpoints) in &snapshots {
            let ejected = endpoints.iter().filter(|e| e.ejected).count();
            for (state, count) in [("ready", endpoints.len() - ejected), ("ejected", ejected)] {
                let labels = [("service", *service), ("state", state)];
                ConstGauge::new(count as i64).encode(family.encode_family(&labels)?)?;
            }
        }

        let mut family = encoder.encode_descriptor(
            "balancer_ejections",
            "Endpoints ejected by failure accrual, per outbound service",
            None,
            MetricType::Counter,
        )?;
        for (service, endpoints) in &snapshots {
            let total: u64 = endpoints.iter().map(|e| e.ejections_total).sum();
            let labels = [("service", *service)];
            ConstCounter::new(total).encode(family.encode_family(&labels)?)?;
        }

        let mut family = encoder.encode_descriptor(
            "balancer_in_flight_requests",
            "Requests in flight to the endpoints of each outbound service",
            None,
            MetricType::Gauge,
        )?;
        for (service, endpoints) in &snapshots {
            let total: i64 = endpoints.iter().map(|e| i64::from(e.in_flight)).sum();
            let labels = [("service", *service)];
            ConstGauge::new(total).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The retry counters of every service and route (route `""`: the service's own policy).
/// Routes' counters start again from zero when the routes are reloaded.
#[derive(Clone, Debug, Default)]
pub struct RetryCounters {
    entries: std::sync::Arc<std::sync::Mutex<Vec<RetryEntry>>>,
}

#[derive(Debug)]
struct RetryEntry {
    service: String,
    route: String,
    stats: std::sync::Arc<mesh_core::retry::RetryStats>,
}

impl RetryCounters {
    /// Replaces the counters of `service`'s routes (`default`: of its own policy) with
    /// `stats`.
    pub fn set(
        &self,
        service: &str,
        stats: Vec<(String, std::sync::Arc<mesh_core::retry::RetryStats>)>,
        default: bool,
    ) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.service != service || e.route.is_empty() != default);
        entries.extend(stats.into_iter().map(|(route, stats)| RetryEntry {
            service: service.to_owned(),
            route,
            stats,
        }));
    }
}

/// Registers the retry counters.
pub fn register_retries(metrics: &mut Metrics, retries: RetryCounters) {
    metrics
        .registry_mut()
        .register_collector(Box::new(RetryCollector { retries }));
}

#[derive(Debug)]
struct RetryCollector {
    retries: RetryCounters,
}

impl Collector for RetryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let entries = self
            .retries
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        type Read = fn(&mesh_core::retry::RetryStats) -> u64;
        let families: [(&str, &str, Read); 3] = [
            (
                "retry_requests",
                "Requests through a retry policy, per outbound service and route",
                |s| s.requests(),
            ),
            (
                "retries",
                "Retries sent, per outbound service and route",
                |s| s.retries(),
            ),
            (
                "retry_budget_exhausted",
                "Failed requests not retried because the retry budget was spent",
                |s| s.budget_exhausted(),
            ),
        ];
        for (name, help, read) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for entry in entries.iter() {
                let labels = [
                    ("service", entry.service.as_str()),
                    ("route", entry.route.as_str()),
                ];
                ConstCounter::new(read(&entry.stats)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
