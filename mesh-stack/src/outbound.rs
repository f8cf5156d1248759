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
//! the one place that turns errors into responses, and serves connections with it. Each
//! service is made on its first request and dropped after `service_idle_timeout` without one
//! ([`mesh_core::lazy`]): a proxy configured with a whole cluster's services holds balancers,
//! endpoint clients and discovery watches only for those its app calls. A configured service
//! of 10 endpoints that carries no traffic costs 1.5 KB of RSS instead of 57 KB
//! (`bench/results/curves`): its configuration (shared with the stacks, not copied), its
//! slot, and what it needs to be made, shared by every service; what parsing the configuration
//! freed is handed back to the system ([`mesh_heap`]), and so is what a released service held.
//!
//! In transparent mode it also serves connections the firewall redirected here: each one's
//! original destination says where it goes when its `Host` names no service (a service's
//! virtual address, a known endpoint, what an [`AddressSource`] says the address is, or the
//! address as it is), and whether it is sniffed at all (`opaque-ports`, discovery's hints).
//! Answers of the address source are kept 5 s; the services it names are built once.
//!
//! ```text
//! Respond -> AuthorityRouter -> [Routed ->] Timeout -> Retry -> Balancer -> RequestMetrics -> EndpointClient
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_balance::Balancer;
use mesh_balance::metrics::BalancerMetrics;
use mesh_core::HttpService;
use mesh_core::client::{EndpointClient, HttpClient};
use mesh_core::detect::{PrefixedIo, Protocol};
use mesh_core::drain::Drain;
use mesh_core::endpoint::{Authority, Direction, Endpoint as Discovered};
use mesh_core::error::{Cause, ProxyError};
use mesh_core::lazy::Lazy;
use mesh_core::ports::PortSet;
use mesh_core::retry::RetryLayer;
use mesh_core::router::AuthorityRouter;
use mesh_core::server::{HttpServer, Respond};
use mesh_core::timeout::{TimeoutConfig, TimeoutLayer};
use mesh_discovery::{Destination, Resolution};
use mesh_metrics::http::{HttpMetrics, RequestLabels, RequestMetrics};
use mesh_metrics::retry::RetryMetrics;
use mesh_route::{RouteConfig, RouteTable, Routed};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Layer as _, ServiceBuilder};

use crate::config::{AddressLookup, OutboundConfig, ServiceConfig, WorkloadConfig};
use crate::discovery::{AddressSource, Sources};
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
    // Two types rather than one with an optional layer: the future of `Either` is as large as
    // the larger (the retrying one), and it is moved into its box on every request.
    match retry {
        Some(retry) => mesh_core::erase(
            ServiceBuilder::new()
                .layer(TimeoutLayer::new(timeout))
                .layer(retry)
                .service(backend),
        ),
        None => mesh_core::erase(
            ServiceBuilder::new()
                .layer(TimeoutLayer::new(timeout))
                .service(backend),
        ),
    }
}

/// What a configured service makes on its first request: its balancer (the backend that
/// routes of other services name) and its stack over it.
struct MadeService {
    balancer: HttpService,
    stack: HttpService,
}

/// What a service's first request needs to make its balancer, shared by every service: a
/// configured service that carries no traffic holds only its index here, its name and its
/// slot (a copy of this per service cost 1.2 KB each).
struct MakeContext {
    services: Arc<[ServiceConfig]>,
    shared: Shared,
    sources: Sources,
    metrics: BalancerMetrics,
}

/// The service `services[index]`, made on its first request and dropped after
/// `service_idle_timeout` without one: its discovery watch, balancer and endpoint stacks exist
/// only while it carries traffic. A watch that cannot start fails that request with
/// `fail-fast` (503) and is tried again by the next.
fn lazy_service(
    context: &Arc<MakeContext>,
    index: usize,
    authority: &Authority,
    retry: Option<RetryLayer>,
) -> Arc<Lazy<MadeService>> {
    let (made, released) = (context.clone(), context.clone());
    let (authority, name) = (authority.clone(), authority.clone());
    Lazy::with_release(
        move || {
            let svc = &made.services[index];
            let resolution = made
                .sources
                .resolve(svc, &authority)
                .map_err(|e| ProxyError::new(Cause::FailFast, e))?;
            let balancer = balancer(svc, &authority, resolution, &made.shared);
            made.metrics.add(authority.to_string(), &balancer);
            tracing::debug!(service = %authority, "service made on its first request");
            Ok(MadeService {
                balancer: mesh_core::erase(balancer.clone()),
                stack: service_stack(&svc.timeout, retry.clone(), balancer),
            })
        },
        move || {
            released.metrics.remove(name.as_str());
            tracing::debug!(service = %name, "idle service released");
        },
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
        let mut made_on_use = Vec::new();
        let context = Arc::new(MakeContext {
            services: services.clone(),
            shared: shared.clone(),
            sources: sources.clone(),
            metrics: balancer_metrics.clone(),
        });
        for (index, svc) in services.iter().enumerate().filter(|(_, s)| !s.opaque) {
            let authority = svc.validate().map_err(StackError::Config)?;
            sources.check(svc)?;
            let retry = svc.retry.as_deref().map(RetryLayer::new);
            if let Some(retry) = &retry {
                retries.set(
                    authority.as_str(),
                    vec![(String::new(), retry.stats())],
                    true,
                );
            }
            let lazy = lazy_service(&context, index, &authority, retry);
            backends.insert(authority.clone(), lazy.view(|made| &made.balancer));
            defaults.push((authority, svc, lazy.view(|made| &made.stack)));
            made_on_use.push(lazy);
        }
        // What a released service held was freed among what is still in use: its pages go
        // back to the system.
        mesh_core::lazy::sweep_then(made_on_use, config.service_idle_timeout, |_| {
            mesh_heap::release_free_memory();
        });
        // Routes name other services as backends: every service's view exists by now (its
        // balancer is made when a request first reaches it).
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
        if !config.transparent {
            return Ok(outbound);
        }
        let lookup = match config.lookup {
            AddressLookup::None => None,
            which => Some(
                sources
                    .address_source(which)
                    .ok_or_else(|| StackError::Discovery {
                        key: "outbound.lookup",
                        reason: "the source is not started (Sources::with_lookup starts it)".into(),
                    })?,
            ),
        };
        Ok(outbound.with_capture(config, shared, lookup, balancer_metrics))
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
    /// its identity, other addresses are asked of `lookup` (when given), and what nobody
    /// knows is forwarded as it is. Ports of `config.opaque_ports` are never sniffed.
    pub fn with_capture(
        mut self,
        config: &OutboundConfig,
        shared: &Shared,
        lookup: Option<AddressSource>,
        balancer_metrics: &BalancerMetrics,
    ) -> Self {
        let mut vips = HashMap::new();
        let mut identities = HashMap::new();
        for svc in config.services.iter() {
            for endpoint in &svc.endpoints {
                if let Some(identity) = endpoint.identity() {
                    identities.insert(endpoint.addr(), identity.clone());
                }
            }
            let Ok(authority) = Authority::parse(&svc.authority, 80) else {
                continue;
            };
            let target = Target::Service {
                http: self.router.lookup(authority.as_str()).cloned(),
                tcp: OpaqueService::new(svc, shared.connect_timeout, shared.tls.clone()).ok(),
            };
            for vip in &svc.addresses {
                vips.insert(*vip, target.clone());
            }
        }
        self.captured = Some(Arc::new(Captured {
            vips,
            identities,
            opaque_ports: config.opaque_ports.clone(),
            lookups: lookup.map(|source| Lookups {
                source,
                answers: Mutex::new(HashMap::new()),
                services: Mutex::new(HashMap::new()),
                balancer_metrics: balancer_metrics.clone(),
            }),
            shared: shared.clone(),
        }));
        self
    }

    /// Serves one accepted TCP connection: in transparent mode, one that the firewall
    /// redirected here goes where it was going (read from the socket: one syscall).
    ///
    /// Not an `async fn`: the future returned is `serve_to`'s own, not one that would carry
    /// its arguments beside it for the connection's whole life.
    pub fn serve_accepted(
        self: Arc<Self>,
        stream: mesh_metrics::tcp::MeteredIo<tokio::net::TcpStream>,
        peer: SocketAddr,
        drain: Drain,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let original = match &self.captured {
            Some(_) => {
                let tcp = stream.get_ref();
                mesh_core::tcp::original_dst(tcp).filter(|o| tcp.local_addr().ok() != Some(*o))
            }
            None => None,
        };
        self.serve_to(stream, peer, original, drain)
    }

    /// The stack, for composing it elsewhere (the ingress).
    pub fn stack(&self) -> &Respond<AuthorityRouter<HttpService>> {
        &self.stack
    }

    /// Serves one accepted connection (not captured: the app dialled the listener).
    pub fn serve<I>(
        self: Arc<Self>,
        stream: I,
        peer: SocketAddr,
        drain: Drain,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_to(stream, peer, None, drain)
    }

    /// Serves a connection; `original` is where a captured one was going. The one place
    /// where connections meet the HTTP server, so that the hot path is built once.
    ///
    /// An `async` block rather than an `async fn`, on a shared `Outbound`: the future is each
    /// connection's task, held for the connection's whole life, and an `async fn` would keep a
    /// second copy of its arguments (and each connection a copy of the `Outbound`).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    fn serve_to<I>(
        self: Arc<Self>,
        mut stream: I,
        peer: SocketAddr,
        original: Option<SocketAddr>,
        drain: Drain,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        async move {
            let captured = match (original, self.captured.clone()) {
                (Some(original), Some(captured)) => {
                    // Boxed: a lookup's state is not carried by every connection's task.
                    let target = Box::pin(captured.target(original)).await;
                    // Marked opaque (by port, or by discovery): never sniffed, so a server that
                    // speaks first is heard at once.
                    if captured.opaque_ports.contains(original.port()) || target.opaque_hint() {
                        let forward = target.tcp(original, &captured.shared);
                        // Boxed, as the HTTP servers are: the connection's task stays small.
                        return Box::pin(forward.serve(stream, peer)).await;
                    }
                    Some((original, captured, target))
                }
                _ => None,
            };
            let Some((protocol, prefix)) =
                crate::serve::detect_protocol(&mut stream, self.detect_timeout, peer, "outbound")
                    .await
            else {
                return;
            };
            let silent = prefix.is_empty();
            let io = PrefixedIo::new(prefix, stream);
            if protocol == Protocol::Opaque {
                match captured {
                    Some((original, captured, target)) => {
                        if silent {
                            tracing::info!(
                                %peer,
                                destination = %original,
                                timeout = ?self.detect_timeout,
                                "the client sent nothing before the detection timeout: forwarding as opaque TCP; add port {} to outbound opaque-ports to skip the wait",
                                original.port()
                            );
                        }
                        Box::pin(target.tcp(original, &captured.shared).serve(io, peer)).await
                    }
                    None => tracing::info!(
                        %peer,
                        "closing outbound connection: not HTTP/1 or HTTP/2 (opaque services need a listener of their own)"
                    ),
                }
                return;
            }
            let stack = match captured {
                None => self.stack.clone(),
                // A known authority wins; otherwise where the connection was going.
                Some((original, captured, target)) => Respond::new(
                    self.router
                        .with_fallback(target.http(original, &captured.shared)),
                ),
            };
            if let Err(e) = self.server.serve(io, protocol, stack, &drain).await {
                tracing::debug!(%peer, error = %e, "outbound connection ended with an error");
            }
        }
    }
}

/// Where captured connections go, by original destination.
#[derive(Debug)]
struct Captured {
    /// Configured services, by virtual address.
    vips: HashMap<SocketAddr, Target>,
    /// The identity each configured endpoint proves, by address: a direct dial to a meshed
    /// pod is still mutual TLS.
    identities: HashMap<SocketAddr, mesh_core::identity::Identity>,
    /// Original ports never sniffed for HTTP.
    opaque_ports: PortSet,
    /// Addresses nothing configured names, asked of a discovery source.
    lookups: Option<Lookups>,
    shared: Shared,
}

/// What a captured connection's original destination is.
#[derive(Clone, Debug)]
enum Target {
    /// A service's virtual address: HTTP goes to its stack (none for an opaque service),
    /// TCP to its endpoints in turn.
    Service {
        http: Option<HttpService>,
        tcp: Option<OpaqueService>,
    },
    /// One address: a meshed endpoint (with its identity and hints), or one nobody knows.
    Endpoint(Discovered),
}

impl Target {
    /// Whether discovery says this destination speaks no HTTP.
    fn opaque_hint(&self) -> bool {
        match self {
            Target::Service { http, .. } => http.is_none(),
            Target::Endpoint(endpoint) => endpoint.label("protocol") == Some("opaque"),
        }
    }

    /// Where TCP to `original` goes.
    fn tcp(&self, original: SocketAddr, shared: &Shared) -> OpaqueService {
        let (addr, identity) = match self {
            Target::Service { tcp: Some(tcp), .. } => return tcp.clone(),
            Target::Service { tcp: None, .. } => (original, None),
            Target::Endpoint(endpoint) => (endpoint.addr, endpoint.identity().cloned()),
        };
        OpaqueService::to(addr, identity, shared.connect_timeout, shared.tls.clone())
    }

    /// Where HTTP to `original` goes when its authority names no configured service: the
    /// service's stack, or the address itself (over mTLS when it is a meshed endpoint),
    /// counted under the original destination.
    fn http(&self, original: SocketAddr, shared: &Shared) -> HttpService {
        let endpoint = match self {
            Target::Service {
                http: Some(http), ..
            } => return http.clone(),
            Target::Service { http: None, .. } => &Discovered::new(original),
            Target::Endpoint(endpoint) => endpoint,
        };
        let labels = outbound_labels(&shared.workload, &original.to_string());
        let metrics = shared.request_metrics.as_ref();
        mesh_core::erase(endpoint_stack(&shared.client, metrics, &labels, endpoint))
    }
}

/// How long an answer of the address source is kept.
const ANSWER_TTL: Duration = Duration::from_secs(5);
/// How long a failed lookup is remembered (the address meanwhile forwarded as it is).
const FAILED_TTL: Duration = Duration::from_secs(1);
/// How long a lookup may take before the connection goes where it was going.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// How many answers are kept: past this, expired ones go, then all.
const MAX_ANSWERS: usize = 16_384;

/// Addresses asked of a discovery source, and the services it named, built once.
#[derive(Debug)]
struct Lookups {
    source: AddressSource,
    /// Answers by address, until they expire. Locked once per captured connection, for a
    /// map lookup.
    answers: Mutex<HashMap<SocketAddr, (Instant, Target)>>,
    /// The services the source named: each one's balancer is built once and kept.
    services: Mutex<HashMap<String, Target>>,
    balancer_metrics: BalancerMetrics,
}

impl Captured {
    /// What `original` is: a configured service's virtual address, a configured endpoint,
    /// what the address source says, or nothing known.
    async fn target(&self, original: SocketAddr) -> Target {
        if let Some(target) = self.vips.get(&original) {
            return target.clone();
        }
        if let Some(identity) = self.identities.get(&original) {
            let endpoint = Discovered::meshed(original, Vec::new(), Some(identity.clone()));
            return Target::Endpoint(endpoint);
        }
        match &self.lookups {
            Some(lookups) => lookups.target(original, &self.shared).await,
            None => Target::Endpoint(Discovered::new(original)),
        }
    }
}

impl Lookups {
    async fn target(&self, addr: SocketAddr, shared: &Shared) -> Target {
        let now = Instant::now();
        if let Some((expires, target)) = lock(&self.answers).get(&addr)
            && *expires > now
        {
            return target.clone();
        }
        let unknown = || Target::Endpoint(Discovered::new(addr));
        let source = self.source.name;
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, self.source.lookup.lookup(addr)).await;
        let (target, ttl) = match answer {
            Ok(Ok(Destination::Service(name))) => match self.service(&name, shared) {
                Some(target) => (target, ANSWER_TTL),
                None => (unknown(), FAILED_TTL),
            },
            Ok(Ok(Destination::Endpoint(endpoint))) => (Target::Endpoint(endpoint), ANSWER_TTL),
            Ok(Ok(Destination::Unknown)) => (unknown(), ANSWER_TTL),
            Ok(Err(e)) => {
                tracing::warn!(%addr, source, error = %e, "address lookup failed: forwarding as it is");
                (unknown(), FAILED_TTL)
            }
            Err(_) => {
                tracing::warn!(%addr, source, timeout = ?LOOKUP_TIMEOUT, "address lookup timed out: forwarding as it is");
                (unknown(), FAILED_TTL)
            }
        };
        let mut answers = lock(&self.answers);
        if answers.len() >= MAX_ANSWERS {
            answers.retain(|_, (expires, _)| *expires > now);
            if answers.len() >= MAX_ANSWERS {
                answers.clear();
            }
        }
        answers.insert(addr, (Instant::now() + ttl, target.clone()));
        target
    }

    /// The stacks of the service `name`, built on first use: its balancer over what the
    /// source publishes, and its endpoints for TCP.
    fn service(&self, name: &str, shared: &Shared) -> Option<Target> {
        let mut services = lock(&self.services);
        if let Some(target) = services.get(name) {
            return Some(target.clone());
        }
        let svc = ServiceConfig::named(name);
        let authority = match Authority::parse(name, 80) {
            Ok(authority) => authority,
            Err(e) => {
                tracing::warn!(service = name, error = %e, "the address source named a service that is not an authority");
                return None;
            }
        };
        let publisher = match self.source.publish.publisher(name) {
            Ok(publisher) => publisher,
            Err(e) => {
                tracing::warn!(service = name, error = %e, "cannot resolve the service the address source named");
                return None;
            }
        };
        let balancer = balancer(&svc, &authority, publisher.subscribe(), shared);
        self.balancer_metrics.add(name.to_owned(), &balancer);
        let tcp = OpaqueService::live(
            name,
            publisher.watch(),
            shared.connect_timeout,
            shared.tls.clone(),
        );
        let target = Target::Service {
            http: Some(service_stack(&svc.timeout, None, balancer)),
            tcp: Some(tcp),
        };
        tracing::info!(
            service = name,
            source = self.source.name,
            "balancing a service found by its address"
        );
        services.insert(name.to_owned(), target.clone());
        Some(target)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
