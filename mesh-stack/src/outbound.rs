//! The outbound stacks: the app's HTTP calls, balanced per request (P2C over peak-EWMA, with
//! failure accrual) over the endpoints of the service their authority names.
//!
//! Three builders, each usable alone:
//!
//! - [`endpoint_stack`]: one endpoint: request metrics -> (mTLS) HTTP client;
//! - [`balancer`]: one service's endpoints, as discovery streams them, behind P2C;
//! - [`service_stack`]: one service: timeout -> retry -> its balancer (or its routes, which
//!   send each request to the timeout, retries and balancer of the backend they pick).
//!
//! [`Outbound`] composes them for every configured service behind the authority router and
//! the one place that turns errors into responses, and serves connections with it.
//!
//! ```text
//! Respond -> AuthorityRouter -> [Routed ->] Timeout -> Retry -> Balancer -> RequestMetrics -> EndpointClient
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use mesh_balance::Balancer;
use mesh_balance::metrics::BalancerMetrics;
use mesh_core::HttpService;
use mesh_core::client::{EndpointClient, HttpClient};
use mesh_core::detect::{PrefixedIo, Protocol};
use mesh_core::drain::Drain;
use mesh_core::endpoint::{Authority, Direction, Endpoint as Discovered};
use mesh_core::retry::RetryLayer;
use mesh_core::router::AuthorityRouter;
use mesh_core::server::{HttpServer, Respond};
use mesh_core::timeout::{TimeoutConfig, TimeoutLayer};
use mesh_discovery::Resolution;
use mesh_metrics::http::{HttpMetrics, RequestLabels, RequestMetrics};
use mesh_metrics::retry::RetryMetrics;
use mesh_route::{RouteConfig, RouteTable, Routed};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Layer as _, ServiceBuilder};

use crate::config::{ServiceConfig, WorkloadConfig};
use crate::discovery::Sources;
use crate::{Shared, StackError};

/// One endpoint of an outbound service: its HTTP client, counted.
pub type Endpoint = RequestMetrics<EndpointClient>;

/// The labels of a service's outbound requests (the endpoint fills `dst_pod`, `tls` and
/// `peer_identity`).
pub fn service_labels(
    workload: &WorkloadConfig,
    svc: &ServiceConfig,
    authority: &Authority,
) -> RequestLabels {
    RequestLabels {
        direction: Direction::Outbound.as_str().to_owned(),
        authority: authority.to_string(),
        src_workload: workload.name.clone(),
        src_namespace: workload.namespace.clone(),
        dst_service: authority.to_string(),
        dst_namespace: svc.namespace.clone(),
        dst_workload: svc.workload.clone(),
        dst_pod: String::new(),
        tls: "false".to_owned(),
        peer_identity: String::new(),
    }
}

/// The stack of one endpoint: request metrics (when `metrics` is given) over an HTTP client
/// that speaks mTLS, verifying the endpoint's identity, when discovery named one.
pub fn endpoint_stack(
    client: &HttpClient,
    metrics: Option<&HttpMetrics>,
    labels: &RequestLabels,
    endpoint: &Discovered,
) -> Endpoint {
    let endpoint_client = client.meshed_endpoint(endpoint.addr, endpoint.identity());
    let Some(metrics) = metrics else {
        return HttpMetrics::disabled().layer(endpoint_client);
    };
    let mut labels = labels.clone();
    labels.dst_pod = match endpoint.label("pod") {
        Some(pod) => pod.to_owned(),
        None => endpoint.addr.to_string(),
    };
    if let Some(identity) = endpoint_client.identity() {
        labels.tls = "true".to_owned();
        labels.peer_identity = identity.uri().to_owned();
    }
    metrics.layer(labels).layer(endpoint_client)
}

/// The balancer of one service over the endpoints `resolution` streams, each built by
/// [`endpoint_stack`].
pub fn balancer(
    svc: &ServiceConfig,
    authority: &Authority,
    resolution: Resolution,
    shared: &Shared,
) -> Balancer<Endpoint> {
    let labels = service_labels(&shared.workload, svc, authority);
    let client = shared.client.clone();
    let metrics = shared.request_metrics.clone();
    Balancer::new(svc.balancer.clone(), resolution, move |endpoint| {
        endpoint_stack(&client, metrics.as_ref(), &labels, endpoint)
    })
}

/// The stack of one service: the timeout above the retries, so that one deadline covers
/// every attempt; the retries above the balancer, so that a retry may pick another endpoint.
/// (Routes sit above this: each route has a timeout and retries of its own over the
/// balancers of its backends.)
pub fn service_stack(
    timeout: &TimeoutConfig,
    retry: Option<RetryLayer>,
    backend: Balancer<Endpoint>,
) -> HttpService {
    mesh_core::erase(
        ServiceBuilder::new()
            .layer(TimeoutLayer::new(timeout))
            .option_layer(retry)
            .service(backend),
    )
}

/// The outbound HTTP stack of every configured HTTP service, shared by every connection.
#[derive(Clone, Debug)]
pub struct Outbound {
    stack: Respond<AuthorityRouter<HttpService>>,
    /// The balancer of each service, for routes' backends (and route reloads).
    backends: HashMap<Authority, HttpService>,
    /// The services with routes, and the stack each uses when no route matches.
    routed: Vec<(Authority, Routed, HttpService)>,
    retries: RetryMetrics,
    server: HttpServer,
    detect_timeout: Duration,
}

impl Outbound {
    /// Builds the stack for the HTTP services among `services` (opaque ones have listeners
    /// of their own), registering their balancers and retries in the metrics given.
    pub fn new(
        services: &[ServiceConfig],
        detect_timeout: Duration,
        shared: &Shared,
        sources: &Sources,
        balancer_metrics: &BalancerMetrics,
        retries: RetryMetrics,
    ) -> Result<Self, StackError> {
        let mut defaults = Vec::new();
        let mut backends = HashMap::new();
        for svc in services.iter().filter(|s| !s.opaque) {
            let authority = svc.validate().map_err(StackError::Config)?;
            let balancer = balancer(svc, &authority, sources.resolve(svc, &authority)?, shared);
            balancer_metrics.add(authority.to_string(), &balancer);
            backends.insert(authority.clone(), mesh_core::erase(balancer.clone()));
            let retry = svc.retry.as_ref().map(RetryLayer::new);
            if let Some(retry) = &retry {
                retries.set(
                    authority.as_str(),
                    vec![(String::new(), retry.stats())],
                    true,
                );
            }
            let service = service_stack(&svc.timeout, retry, balancer);
            defaults.push((authority, svc, service));
        }
        // Routes name other services as backends: every balancer exists by now.
        let mut routes = Vec::new();
        let mut routed = Vec::new();
        for (authority, svc, default) in defaults {
            if svc.routes.is_empty() {
                routes.push((authority, default));
                continue;
            }
            let table = compile(&svc.routes, &svc.authority, default.clone(), &backends)?;
            retries.set(authority.as_str(), table.retry_stats(), false);
            let service = Routed::new(table);
            routed.push((authority.clone(), service.clone(), default));
            routes.push((authority, mesh_core::erase(service)));
        }
        Ok(Self {
            stack: Respond::new(AuthorityRouter::new(routes, 80)),
            backends,
            routed,
            retries,
            server: shared.server.clone(),
            detect_timeout,
        })
    }

    /// Applies the routes of `services` to the services that have routes now; a service
    /// whose new routes do not compile keeps its old ones (logged). Services themselves (their
    /// endpoints and balancers) change only with a restart.
    pub fn reload_routes(&self, services: &[ServiceConfig]) {
        for (authority, routed, default) in &self.routed {
            let Some(svc) = services
                .iter()
                .find(|s| Authority::parse(&s.authority, 80).is_ok_and(|a| &a == authority))
            else {
                tracing::warn!(service = %authority, "the service left the configuration; keeping its routes until a restart");
                continue;
            };
            match compile(&svc.routes, &svc.authority, default.clone(), &self.backends) {
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

    /// Reloads the routes each time the file at `path` changes, with the services `load`
    /// reads from it; a file that does not load keeps the old routes (logged).
    pub fn reload_on_change<E: std::fmt::Display>(
        &self,
        path: std::path::PathBuf,
        drain: Drain,
        load: impl Fn(&std::path::Path) -> Result<Vec<ServiceConfig>, E> + Send + 'static,
    ) {
        let outbound = self.clone();
        crate::serve::spawn_file_watch(path, drain, move |path| match load(path) {
            Ok(services) => outbound.reload_routes(&services),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "the configuration file changed but does not load; keeping the old routes"
            ),
        });
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
            crate::serve::detect_protocol(&mut stream, self.detect_timeout, peer, "outbound").await
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

fn compile(
    routes: &[RouteConfig],
    service: &str,
    default: HttpService,
    backends: &HashMap<Authority, HttpService>,
) -> Result<RouteTable, StackError> {
    RouteTable::compile(routes, default, backends).map_err(|source| StackError::Routes {
        service: service.to_owned(),
        source,
    })
}
