//! The proxy's metrics beyond requests: each service's balancer (endpoints ready and ejected,
//! ejections, requests in flight), read at scrape time.

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
