//! The mesh's stacks as reusable builders: what the sidecar (mesh-proxy), the ingress and a
//! user's own binary compose from the concern crates, so that each binary is wiring.
//!
//! - [`outbound`]: [`endpoint_stack`](outbound::endpoint_stack) (metrics -> mTLS connect ->
//!   HTTP client), [`balancer`](outbound::balancer) (P2C over what discovery streams),
//!   [`service_stack`](outbound::service_stack) (timeout -> retry -> balancer or routes), and
//!   [`Outbound`](outbound::Outbound), every configured service behind the authority router;
//! - [`inbound`]: TLS accept -> detect -> authorize -> metrics -> the local app;
//! - [`ingress`]: the edge: TLS by SNI -> forwarded headers, request id, gRPC-Web, access
//!   log, limits -> routes by host -> the outbound balancers, over mutual TLS only;
//! - [`opaque`]: TCP services, round robin per connection, with mTLS to meshed endpoints;
//! - [`admin`]: `/ready`, `/live`, `/metrics`, `/config`, `/log-level`, `/shutdown`;
//! - [`discovery`]: the discovery sources services name, started once;
//! - [`identity`]: the workload's identity and what certifies it, from configuration;
//! - [`serve`]: accept loops, protocol detection and background chores;
//! - [`config`]: the sections a binary's configuration is made of, each with `validate()`;
//! - [`log`]: the `tracing` subscriber with a filter changeable at run time.
//!
//! # Where it sits
//!
//! mesh-core is the shared vocabulary; mesh-tls, mesh-balance, mesh-discovery, mesh-metrics
//! and mesh-route are concerns that never depend on each other. This crate is the one place
//! that composes them (the design's "only bins compose several" holds for every crate but
//! this one, whose whole purpose is the composition the binaries share); nothing depends on it
//! but binaries, examples and tests.
//!
//! # Example
//!
//! An outbound stack over static endpoints, with metrics, served on one connection:
//!
//! ```no_run
//! use mesh_stack::config::{DiscoveryConfig, ServiceConfig, WorkloadConfig};
//! use mesh_stack::{Shared, discovery::Sources, outbound::Outbound};
//!
//! # async fn run(stream: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! let services: Vec<ServiceConfig> = vec![toml::from_str(
//!     "authority = \"web:80\"\nendpoints = [\"127.0.0.1:8080\"]",
//! )?];
//! let mut registry = prometheus_client::registry::Registry::default();
//! let shared = Shared::new(WorkloadConfig::default(), &Default::default(), &Default::default())
//!     .with_request_metrics(mesh_metrics::http::HttpMetrics::register(&mut registry));
//! let sources = Sources::new(&services, &DiscoveryConfig::default(), None).await?;
//! let config = mesh_stack::config::OutboundConfig { services: services.into(), ..Default::default() };
//! let outbound = std::sync::Arc::new(Outbound::new(
//!     &config,
//!     &shared,
//!     &sources,
//!     &mesh_balance::metrics::BalancerMetrics::register(&mut registry),
//!     mesh_metrics::retry::RetryMetrics::register(&mut registry),
//! )?);
//! let peer = stream.peer_addr()?;
//! outbound.serve(stream, peer, mesh_core::drain::Drain::new()).await;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod config;
pub mod discovery;
pub mod gateway;
pub mod identity;
pub mod inbound;
pub mod ingress;
pub mod log;
pub mod opaque;
pub mod outbound;
pub mod serve;

use std::net::SocketAddr;
use std::time::Duration;

use mesh_core::BoxError;
use mesh_core::client::{ClientConfig, HttpClient};
use mesh_core::server::{HttpServer, ServerConfig};
use mesh_metrics::http::HttpMetrics;

use crate::config::WorkloadConfig;

/// What every stack of a process shares: who the workload is, the HTTP client toward
/// endpoints (with mTLS once an identity is set), the HTTP server settings, and the request
/// metrics (none: requests are not counted).
#[derive(Clone, Debug)]
pub struct Shared {
    /// The workload the stacks speak for (the source of outbound requests in metrics).
    pub workload: WorkloadConfig,
    /// The client every endpoint stack uses.
    pub client: HttpClient,
    /// The server every listener's connections are served with.
    pub server: HttpServer,
    /// How long a TCP connect may take (opaque forwarding, the inbound app).
    pub connect_timeout: Duration,
    /// Request metrics, when requests are counted.
    pub request_metrics: Option<HttpMetrics>,
    /// How meshed endpoints are reached, once the workload has an identity.
    pub tls: Option<std::sync::Arc<dyn mesh_core::transport::TlsConnect>>,
}

impl Shared {
    /// Plaintext, uncounted stacks with these settings.
    pub fn new(workload: WorkloadConfig, client: &ClientConfig, server: &ServerConfig) -> Self {
        Self {
            workload,
            client: HttpClient::new(client),
            server: HttpServer::new(server),
            connect_timeout: client.connect_timeout,
            request_metrics: None,
            tls: None,
        }
    }

    /// Counts requests, responses and latency with `metrics`.
    pub fn with_request_metrics(mut self, metrics: HttpMetrics) -> Self {
        self.request_metrics = Some(metrics);
        self
    }

    /// Reaches meshed endpoints over mTLS with `tls` (mesh-tls's connector).
    pub fn with_tls(mut self, tls: std::sync::Arc<dyn mesh_core::transport::TlsConnect>) -> Self {
        self.client = self.client.with_tls(tls.clone());
        self.tls = Some(tls);
        self
    }
}

/// Why a stack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A configuration value does not fit.
    #[error("invalid configuration: {0}")]
    Config(#[source] mesh_core::config::Invalid),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the listener is for (its configuration key).
        what: String,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// A discovery source could not be set up.
    #[error("{key}: {reason}")]
    Discovery {
        /// The configuration key of the source.
        key: &'static str,
        /// Why (in the message: not a `source`, so that printing the chain says it once).
        reason: BoxError,
    },
    /// A service's endpoints could not be resolved.
    #[error("service {service:?}: {source}")]
    Resolve {
        /// The service's authority.
        service: String,
        /// Why.
        source: mesh_discovery::ResolveError,
    },
    /// A service's routes do not compile.
    #[error("service {service:?}: {source}")]
    Routes {
        /// The service's authority.
        service: String,
        /// Why.
        source: mesh_route::RouteError,
    },
    /// The workload's identity could not be set up.
    #[error("{key}: {source}")]
    Identity {
        /// The configuration key at fault.
        key: &'static str,
        /// Why.
        source: BoxError,
    },
}
