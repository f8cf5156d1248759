//! Retry metrics, read at scrape time from the counters every retry layer keeps
//! ([`mesh_core::retry::RetryStats`]): requests through a retry policy, retries sent, and
//! failed requests the budget refused to retry, per service and route.
//!
//! ```
//! use mesh_core::retry::{RetryLayer, RetryPolicy};
//! use mesh_metrics::retry::RetryMetrics;
//!
//! let mut registry = prometheus_client::registry::Registry::default();
//! let metrics = RetryMetrics::register(&mut registry);
//! let retry = RetryLayer::new(&RetryPolicy::default());
//! // The service's own policy (route ""), then its routes' as they are compiled or reloaded.
//! metrics.set("web:80", vec![(String::new(), retry.stats())], true);
//! ```

use std::sync::{Arc, Mutex};

use mesh_core::retry::RetryStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;

/// The retry counters of every service and route (route `""`: the service's own policy).
/// Routes' counters start again from zero when the routes are reloaded.
#[derive(Clone, Debug, Default)]
pub struct RetryMetrics {
    // A lock taken at start, on a route reload and at scrape time: never per request.
    entries: Arc<Mutex<Vec<RetryEntry>>>,
}

#[derive(Debug)]
struct RetryEntry {
    service: String,
    route: String,
    stats: Arc<RetryStats>,
}

impl RetryMetrics {
    /// Registers `retry_requests_total`, `retries_total` and `retry_budget_exhausted_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register_collector(Box::new(metrics.clone()));
        metrics
    }

    /// Replaces the counters of `service`'s routes (`default`: of its own policy) with
    /// `stats`, named by route.
    pub fn set(&self, service: &str, stats: Vec<(String, Arc<RetryStats>)>, default: bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|e| e.service != service || e.route.is_empty() != default);
        entries.extend(stats.into_iter().map(|(route, stats)| RetryEntry {
            service: service.to_owned(),
            route,
            stats,
        }));
    }
}

impl Collector for RetryMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        type Read = fn(&RetryStats) -> u64;
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
