//! The balancers' metrics, read at scrape time (nothing on the request path): endpoints ready
//! and ejected, ejections, and requests in flight, per service. Registered into a plain
//! prometheus-client `Registry`, so any binary that composes a [`Balancer`] gets them.
//!
//! ```
//! use mesh_balance::metrics::BalancerMetrics;
//!
//! let mut registry = prometheus_client::registry::Registry::default();
//! let metrics = BalancerMetrics::register(&mut registry);
//! // For each service: metrics.add("web:80", &balancer);
//! # let _ = metrics;
//! ```

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::{Balancer, EndpointStatus};

/// Reads one balancer's endpoints.
type Snapshot = Box<dyn Fn() -> Vec<EndpointStatus> + Send + Sync>;

/// The balancers of a process, by service.
#[derive(Clone, Default)]
pub struct BalancerMetrics {
    // Locked when a service is added and at scrape time: never per request.
    balancers: Arc<Mutex<Vec<(String, Snapshot)>>>,
}

impl std::fmt::Debug for BalancerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let balancers = self.balancers.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("BalancerMetrics")
            .field("services", &balancers.len())
            .finish()
    }
}

impl BalancerMetrics {
    /// Registers `balancer_endpoints`, `balancer_ejections_total` and
    /// `balancer_in_flight_requests`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register_collector(Box::new(metrics.clone()));
        metrics
    }

    /// Adds the balancer of `service`.
    pub fn add<S>(&self, service: impl Into<String>, balancer: &Balancer<S>)
    where
        S: mesh_core::SharedHttpService + mesh_core::Availability,
    {
        let balancer = balancer.clone();
        self.balancers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((service.into(), Box::new(move || balancer.endpoints())));
    }

    /// Forgets the balancer of `service` (which it otherwise keeps alive), as when no route
    /// names the service any more.
    pub fn remove(&self, service: &str) {
        self.balancers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(name, _)| name != service);
    }
}

impl Collector for BalancerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshots: Vec<(String, Vec<EndpointStatus>)> = self
            .balancers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(service, read)| (service.clone(), read()))
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
                let labels = [("service", service.as_str()), ("state", state)];
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
            let labels = [("service", service.as_str())];
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
            let labels = [("service", service.as_str())];
            ConstGauge::new(total).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
