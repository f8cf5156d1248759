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
use std::sync::Arc;
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

use crate::config::{OutboundConfig, ServiceConfig, WorkloadConfig};
use crate::discovery::Sources;
use crate::opaque::OpaqueService;
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
        dst_namespace: svc.namespace.clone(),
        dst_workload: svc.workload.clone(),
        ..outbound_labels(workload, authority.as_str())
    }
}

/// The labels of outbound requests to `destination`, of which nothing else is known.
fn outbound_labels(workload: &WorkloadConfig, destination: &str) -> RequestLabels {
    RequestLabels {
        direction: Direction::Outbound.as_str().to_owned(),
        authority: destination.to_owned(),
        src_workload: workload.name.clone(),
        src_namespace: workload.namespace.clone(),
        dst_service: destination.to_owned(),
        tls: "false".to_owned(),
        ..RequestLabels::default()
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
    router: AuthorityRouter<HttpService>,
    /// Captured connections: where their original destinations go (transparent mode).
    captured: Option<Arc<Captured>>,
    /// The balancer of each service, for routes' backends (and route reloads). Shared:
    /// every connection holds a clone of the stack.
    backends: Arc<HashMap<Authority, HttpService>>,
    /// The services with routes, and the stack each uses when no route matches.
    routed: Arc<[(Authority, Routed, HttpService)]>,
    retries: RetryMetrics,
    server: HttpServer,
    detect_timeout: Duration,
}

impl Outbound {
    /// Builds the stack for the HTTP services of `config` (opaque ones have listeners of
    /// their own), registering their balancers and retries in the metrics given; with
    /// `config.transparent`, for captured connections too ([`with_capture`](Self::with_capture)).
    pub fn new(
        config: &OutboundConfig,
        shared: &Shared,
        sources: &Sources,
        balancer_metrics: &BalancerMetrics,
        retries: RetryMetrics,
    ) -> Result<Self, StackError> {
        let (services, detect_timeout) = (&config.services, config.detect_timeout);
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
        let router = AuthorityRouter::new(routes, 80);
        let outbound = Self {
            stack: Respond::new(router.clone()),
            router,
            captured: None,
            backends: Arc::new(backends),
            routed: routed.into(),
            retries,
            server: shared.server.clone(),
            detect_timeout,
        };
        Ok(match config.transparent {
            true => outbound.with_capture(services, shared),
            false => outbound,
        })
    }

    /// Applies the routes of `services` to the services that have routes now; a service
    /// whose new routes do not compile keeps its old ones (logged). Services themselves (their
    /// endpoints and balancers) change only with a restart.
    pub fn reload_routes(&self, services: &[ServiceConfig]) {
        for (authority, routed, default) in self.routed.iter() {
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

    /// Serves captured connections too (transparent mode): a service's virtual `addresses`
    /// are balanced like its authority, a known endpoint's address is reached over mTLS with
    /// its identity, and any other destination is forwarded as it is.
    pub fn with_capture(mut self, services: &[ServiceConfig], shared: &Shared) -> Self {
        let mut vips = HashMap::new();
        let mut vip_opaque = HashMap::new();
        let mut identities = HashMap::new();
        for svc in services {
            for endpoint in &svc.endpoints {
                if let Some(identity) = endpoint.identity() {
                    identities.insert(endpoint.addr(), identity.clone());
                }
            }
            let Ok(authority) = Authority::parse(&svc.authority, 80) else {
                continue;
            };
            let service = self.router.lookup(authority.as_str()).cloned();
            for vip in &svc.addresses {
                if let Some(service) = &service {
                    vips.insert(*vip, service.clone());
                }
                let forward = OpaqueService::new(svc, shared.connect_timeout, shared.tls.clone());
                if let Ok(forward) = forward {
                    vip_opaque.insert(*vip, forward);
                }
            }
        }
        self.captured = Some(Arc::new(Captured {
            vips,
            vip_opaque,
            identities,
            shared: shared.clone(),
        }));
        self
    }

    /// Serves one accepted TCP connection: in transparent mode, one that the firewall
    /// redirected here goes where it was going (read from the socket: one syscall).
    pub async fn serve_accepted(
        self,
        stream: mesh_metrics::tcp::MeteredIo<tokio::net::TcpStream>,
        peer: SocketAddr,
        drain: Drain,
    ) {
        let original = match &self.captured {
            Some(_) => {
                let tcp = stream.get_ref();
                mesh_core::tcp::original_dst(tcp).filter(|o| tcp.local_addr().ok() != Some(*o))
            }
            None => None,
        };
        self.serve_to(stream, peer, original, drain).await
    }

    /// The stack, for composing it elsewhere (the ingress).
    pub fn stack(&self) -> &Respond<AuthorityRouter<HttpService>> {
        &self.stack
    }

    /// Serves one accepted connection (not captured: the app dialled the listener).
    pub async fn serve<I>(self, stream: I, peer: SocketAddr, drain: Drain)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_to(stream, peer, None, drain).await
    }

    /// Serves a connection; `original` is where a captured one was going. The one place
    /// where connections meet the HTTP server, so that the hot path is built once.
    async fn serve_to<I>(
        self,
        mut stream: I,
        peer: SocketAddr,
        original: Option<SocketAddr>,
        drain: Drain,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some((protocol, prefix)) =
            crate::serve::detect_protocol(&mut stream, self.detect_timeout, peer, "outbound").await
        else {
            return;
        };
        let io = PrefixedIo::new(prefix, stream);
        let captured = original.zip(self.captured.clone());
        if protocol == Protocol::Opaque {
            match captured {
                Some((original, captured)) => captured.opaque(original).serve(io, peer).await,
                None => tracing::info!(
                    %peer,
                    "closing outbound connection: not HTTP/1 or HTTP/2 (opaque services need a listener of their own)"
                ),
            }
            return;
        }
        let stack = match captured {
            None => self.stack,
            // A known authority wins; otherwise where the connection was going.
            Some((original, captured)) => {
                Respond::new(self.router.with_fallback(captured.http(original)))
            }
        };
        if let Err(e) = self.server.serve(io, protocol, stack, &drain).await {
            tracing::debug!(%peer, error = %e, "outbound connection ended with an error");
        }
    }
}

/// Where captured connections go, by original destination.
#[derive(Debug)]
struct Captured {
    /// Services by virtual address.
    vips: HashMap<SocketAddr, HttpService>,
    /// The same services' endpoints for opaque TCP (static endpoints only).
    vip_opaque: HashMap<SocketAddr, OpaqueService>,
    /// The identity each known endpoint proves, by address: a direct dial to a meshed pod is
    /// still mutual TLS.
    identities: HashMap<SocketAddr, mesh_core::identity::Identity>,
    shared: Shared,
}

impl Captured {
    /// Where captured HTTP goes when its authority names no service: the service whose
    /// virtual address it was sent to, or the destination itself.
    fn http(&self, original: SocketAddr) -> HttpService {
        match self.vips.get(&original) {
            Some(service) => service.clone(),
            None => self.passthrough(original),
        }
    }

    /// Where captured opaque TCP goes: the endpoints of the service whose virtual address
    /// it was sent to, or the destination itself (over mTLS when it is a known endpoint).
    fn opaque(&self, original: SocketAddr) -> OpaqueService {
        match self.vip_opaque.get(&original) {
            Some(forward) => forward.clone(),
            None => OpaqueService::to(
                original,
                self.identities.get(&original).cloned(),
                self.shared.connect_timeout,
                self.shared.tls.clone(),
            ),
        }
    }

    /// HTTP to a destination no service names: sent there as it is, counted under its
    /// address; over mTLS when it is a known meshed endpoint.
    fn passthrough(&self, original: SocketAddr) -> HttpService {
        let labels = outbound_labels(&self.shared.workload, &original.to_string());
        let mut endpoint = Discovered::new(original);
        if let Some(identity) = self.identities.get(&original) {
            endpoint = Discovered::meshed(original, Vec::new(), Some(identity.clone()));
        }
        let metrics = self.shared.request_metrics.as_ref();
        mesh_core::erase(endpoint_stack(
            &self.shared.client,
            metrics,
            &labels,
            &endpoint,
        ))
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
