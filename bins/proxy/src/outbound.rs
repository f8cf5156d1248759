//! The outbound stack: the app's HTTP calls, balanced per request (P2C over peak-EWMA, with
//! failure accrual) over the endpoints of the service their authority names.

use std::net::SocketAddr;

use anyhow::Context as _;
use mesh_balance::Balancer;
use mesh_core::HttpService;
use mesh_core::client::{EndpointClient, HttpClient};
use mesh_core::detect::{PrefixedIo, Protocol};
use mesh_core::drain::Drain;
use mesh_core::endpoint::{Authority, Direction};
use mesh_core::router::AuthorityRouter;
use mesh_core::server::{HttpServer, Respond};
use mesh_metrics::http::{HttpMetrics, RequestLabels, RequestMetrics};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceBuilder;

use crate::Config;

/// One endpoint of an outbound service: its HTTP client, counted.
pub type Endpoint = RequestMetrics<EndpointClient>;

/// The outbound HTTP stack, shared by every outbound connection.
#[derive(Clone, Debug)]
pub struct Outbound {
    stack: Respond<AuthorityRouter<HttpService>>,
    balancers: Vec<(String, Balancer<Endpoint>)>,
    /// The balancer of each service, for routes' backends (and route reloads).
    backends: std::collections::HashMap<Authority, HttpService>,
    /// The services with routes, and the stack each uses when no route matches.
    routed: Vec<(Authority, crate::routes::Routed, HttpService)>,
    /// The retry counters of services and routes, for metrics.
    retries: crate::metrics::RetryCounters,
    server: HttpServer,
    detect_timeout: std::time::Duration,
}

impl Outbound {
    /// Builds the stack for the configured HTTP services.
    pub fn new(
        config: &Config,
        client: &HttpClient,
        metrics: &HttpMetrics,
        sources: &crate::discovery::Sources,
    ) -> anyhow::Result<Self> {
        let retries = crate::metrics::RetryCounters::default();
        let mut defaults = Vec::new();
        let mut balancers = Vec::new();
        let mut backends = std::collections::HashMap::new();
        for svc in config.outbound.services.iter().filter(|s| !s.opaque) {
            let authority = Authority::parse(&svc.authority, 80)
                .with_context(|| format!("service {:?}", svc.authority))?;
            let client = client.clone();
            let labels = RequestLabels {
                direction: Direction::Outbound.as_str().to_owned(),
                authority: authority.to_string(),
                src_workload: config.workload.name.clone(),
                src_namespace: config.workload.namespace.clone(),
                dst_service: authority.to_string(),
                dst_namespace: svc.namespace.clone(),
                dst_workload: svc.workload.clone(),
                dst_pod: String::new(),
                tls: "false".to_owned(),
                peer_identity: String::new(),
            };
            let metrics = metrics.clone();
            let requests_metrics = config.metrics.requests;
            let balancer = Balancer::new(
                svc.balancer.clone(),
                sources.resolve(svc, &authority)?,
                move |endpoint: &mesh_core::endpoint::Endpoint| {
                    let mut labels = labels.clone();
                    labels.dst_pod = match endpoint.label("pod") {
                        Some(pod) => pod.to_owned(),
                        None => endpoint.addr.to_string(),
                    };
                    let endpoint_client =
                        client.meshed_endpoint(endpoint.addr, endpoint.identity());
                    if let Some(identity) = endpoint_client.identity() {
                        labels.tls = "true".to_owned();
                        labels.peer_identity = identity.uri().to_owned();
                    }
                    ServiceBuilder::new()
                        .layer(if requests_metrics {
                            metrics.layer(labels.clone())
                        } else {
                            HttpMetrics::disabled()
                        })
                        .service(endpoint_client)
                },
            );
            balancers.push((authority.to_string(), balancer.clone()));
            backends.insert(authority.clone(), mesh_core::erase(balancer.clone()));
            // Timeout above retries, so that the deadline covers every attempt; retries above
            // the balancer, so that a retry may pick another endpoint.
            let retry = svc.retry.as_ref().map(mesh_core::retry::RetryLayer::new);
            if let Some(retry) = &retry {
                retries.set(
                    authority.as_str(),
                    vec![(String::new(), retry.stats())],
                    true,
                );
            }
            let service = ServiceBuilder::new()
                .layer(mesh_core::timeout::TimeoutLayer::new(&svc.timeout))
                .option_layer(retry)
                .service(balancer.clone());
            defaults.push((authority, svc, mesh_core::erase(service)));
        }
        // Routes name other services as backends: every balancer exists by now.
        let mut routes = Vec::new();
        let mut routed = Vec::new();
        for (authority, svc, default) in defaults {
            if svc.routes.is_empty() {
                routes.push((authority, default));
                continue;
            }
            let table = crate::routes::RouteTable::compile(&svc.routes, default.clone(), &backends)
                .with_context(|| format!("service {:?}", svc.authority))?;
            retries.set(authority.as_str(), table.retry_stats(), false);
            let service = crate::routes::Routed::new(table);
            routed.push((authority.clone(), service.clone(), default));
            routes.push((authority, mesh_core::erase(service)));
        }
        Ok(Self {
            stack: Respond::new(AuthorityRouter::new(routes, 80)),
            balancers,
            backends,
            routed,
            retries,
            server: HttpServer::new(&config.server),
            detect_timeout: config.outbound.detect_timeout,
        })
    }

    /// Applies the routes of `config` to the services that have routes now; a service whose
    /// new routes do not compile keeps its old ones (logged). Services themselves (their
    /// endpoints and balancers) change only with a restart.
    pub fn reload_routes(&self, config: &Config) {
        for (authority, routed, default) in &self.routed {
            let Some(svc) = config
                .outbound
                .services
                .iter()
                .find(|s| Authority::parse(&s.authority, 80).is_ok_and(|a| &a == authority))
            else {
                tracing::warn!(service = %authority, "the service left the configuration; keeping its routes until a restart");
                continue;
            };
            match crate::routes::RouteTable::compile(&svc.routes, default.clone(), &self.backends) {
                Ok(table) => {
                    self.retries
                        .set(authority.as_str(), table.retry_stats(), false);
                    routed.replace(table);
                    tracing::info!(service = %authority, routes = svc.routes.len(), "routes reloaded");
                }
                Err(e) => {
                    tracing::warn!(service = %authority, error = %e, "new routes refused; keeping the old ones");
                }
            }
        }
    }

    /// The retry counters, for metrics.
    pub fn retries(&self) -> &crate::metrics::RetryCounters {
        &self.retries
    }

    /// Each service's balancer, by authority (for metrics).
    pub fn balancers(&self) -> &[(String, Balancer<Endpoint>)] {
        &self.balancers
    }

    /// The stack, for composing it elsewhere (the ingress).
    pub fn stack(&self) -> &Respond<AuthorityRouter<HttpService>> {
        &self.stack
    }

    /// Serves one accepted connection.
    pub async fn serve<I>(self, mut stream: I, peer: SocketAddr, drain: Drain)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some((protocol, prefix)) =
            crate::detect_protocol(&mut stream, self.detect_timeout, peer, "outbound").await
        else {
            return;
        };
        if protocol == Protocol::Opaque {
            tracing::info!(
                %peer,
                read = prefix.len(),
                "closing outbound connection: not HTTP/1 or HTTP/2 (opaque services need a listener of their own)"
            );
            return;
        }
        let io = PrefixedIo::new(prefix, stream);
        if let Err(e) = self.server.serve(io, protocol, self.stack, &drain).await {
            tracing::debug!(%peer, error = %e, "outbound connection ended with an error");
        }
    }
}
