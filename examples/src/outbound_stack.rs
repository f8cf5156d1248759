//! A complete outbound stack composed from the library, with no sidecar binary: discovery,
//! routes, retries, P2C balancing, request metrics and mTLS to each endpoint, verifying the
//! identity discovery names. `src/bin/outbound-stack.rs` serves it on a port.
//!
//! ```toml
//! [identity]          # mesh-stack's IdentityConfig: here a local issuer
//! mode = "local"
//! name = "spiffe://cluster.local/ns/demo/sa/web"
//! trust_anchors = "ca.crt"
//! issuer_cert = "issuer.crt"
//! issuer_key = "issuer.key"
//! [[services]]        # mesh-stack's ServiceConfig, as in mesh-proxy's [[outbound.services]]
//! authority = "api:80"
//! endpoints = [{ addr = "10.0.0.7:4143", identity = "spiffe://cluster.local/ns/demo/sa/api" }]
//! retry = { conditions = ["connect-failure", "gateway-error"] }
//! ```

use std::sync::Arc;
use std::time::Duration;

use mesh_balance::metrics::BalancerMetrics;
use mesh_metrics::{Metrics, http::HttpMetrics, retry::RetryMetrics};
use mesh_stack::config::WorkloadConfig;
use mesh_stack::config::{DiscoveryConfig, IdentityConfig, OutboundConfig, ServiceConfig};
use mesh_stack::{Shared, discovery::Sources, identity, outbound::Outbound};
use serde::Deserialize;

/// What the stack is built from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackConfig {
    /// The workload's identity, certified in the background.
    pub identity: IdentityConfig,
    /// Where discovery sources (other than `static`) are.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// The services, with their endpoints' source, balancer, timeout, retries and routes.
    pub services: Vec<ServiceConfig>,
}

/// The stack, and the metrics it records (serve them with `Metrics::encode`).
#[derive(Debug)]
pub struct OutboundStack {
    /// The stack, shared by the connections: `outbound.clone().serve(stream, peer, drain)`
    /// for each.
    pub outbound: Arc<Outbound>,
    /// Requests, balancers, retries and the certificate.
    pub metrics: Arc<Metrics>,
}

/// Builds the stack from TOML text, once the workload holds its first certificate.
pub async fn build(config_toml: &str, workload: WorkloadConfig) -> anyhow::Result<OutboundStack> {
    let config: StackConfig = toml::from_str(config_toml)?;
    let mut metrics = Metrics::new();
    let registry = metrics.registry_mut();
    let (workload_identity, certify) = identity::from_config(&config.identity)?;
    let tls = identity::start(&workload_identity, certify, registry);
    let shared = Shared::new(workload, &Default::default(), &Default::default())
        .with_tls(tls)
        .with_request_metrics(HttpMetrics::register(registry));
    let workload = mesh_stack::discovery::Workload {
        config: &config.identity,
        identity: &workload_identity,
    };
    let sources = Sources::new(&config.services, &config.discovery, Some(workload)).await?;
    let outbound_config = OutboundConfig {
        services: config.services.into(),
        ..OutboundConfig::default()
    };
    let outbound = Outbound::new(
        &outbound_config,
        &shared,
        &sources,
        &BalancerMetrics::register(registry),
        RetryMetrics::register(registry),
    )?;
    tokio::time::timeout(Duration::from_secs(10), workload_identity.ready()).await?;
    let metrics = Arc::new(metrics);
    Ok(OutboundStack {
        outbound: Arc::new(outbound),
        metrics,
    })
}
