//! The ingress stack: requests from outside the cluster, routed by host and path to mesh
//! services, balanced per request and sent over mutual TLS with the ingress's own identity.
//!
//! ```text
//! accept -> TLS (certificate by SNI; ALPN h2 / http/1.1)  or  plaintext (-> 308 to HTTPS)
//!   -> HTTP server -> Client -> Forwarded -> RequestId -> gRPC-Web -> AccessLog
//!   -> RateLimit -> BodyLimit -> HostRouted (host, then path/headers/method/gRPC)
//!   -> per (host, route): inbound metrics -> timeout -> retry -> weighted backend
//!   -> balancer (P2C over peak-EWMA) -> outbound metrics -> mTLS client (identity verified)
//! ```
//!
//! The backends are the same balancers the sidecar builds ([`outbound::balancer`]) over the
//! same discovery, with one difference: a service is reached over mutual TLS only, unless it
//! says `plaintext = true` (discovery's endpoints without an identity are left out). Requests
//! are counted twice, as a meshed hop is: `direction="inbound"` at the edge by host pattern and
//! route, and `direction="outbound"` per endpoint with the ingress as the source workload, so
//! the edge shows up as a caller in `meshctl edges` and the dashboards.
//!
//! Connections refused before HTTP are counted by reason in `ingress_connection_refused_total`:
//! `not-tls` (garbage, or plaintext on the TLS port), `unknown-sni` (a name no certificate
//! serves and no default), `handshake` (a failed TLS handshake), `handshake-timeout` (a client
//! too slow to finish it), and once HTTP runs, `header-timeout` (slow-loris headers),
//! `headers-too-large` and `malformed-http`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use mesh_core::HttpService;
use mesh_core::detect::{PrefixedIo, Protocol};
use mesh_core::drain::Drain;
use mesh_core::endpoint::{Authority, Direction};
use mesh_core::retry::RetryLayer;
use mesh_core::server::{HttpServer, Respond};
use mesh_core::{Body, BoxError};
use mesh_edge::access_log::{AccessLog, AccessLogLayer};
use mesh_edge::forwarded::{ForwardedLayer, TrustedProxies};
use mesh_edge::grpc_web::GrpcWebLayer;
use mesh_edge::limit::{BodyLimitLayer, RateLimitConfig, RateLimitLayer, RateLimiter};
use mesh_edge::request_id::RequestIdLayer;
use mesh_edge::{ClientLayer, RouteTag};
use mesh_metrics::http::{HttpMetrics, RequestLabels};
use mesh_metrics::retry::RetryMetrics;
use mesh_route::{HostRouted, HostRoutes, RouteConfig};
use mesh_tls::sni::LiveCertificates;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Layer as _, ServiceBuilder, ServiceExt as _};

use crate::config::{ServiceConfig, WorkloadConfig};
use crate::discovery::Sources;
use crate::{Shared, StackError, outbound};

/// The default HTTPS listener (a Kubernetes Service maps 443 to it: no privileged port).
pub const DEFAULT_HTTPS_LISTEN: &str = "0.0.0.0:8443";
/// The default plaintext listener.
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:8080";

/// The TLS listener.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpsConfig {
    /// Where TLS connections arrive.
    pub listen: SocketAddr,
    /// The certificates, chosen by SNI.
    pub certificates: Vec<CertificateConfig>,
    /// How long a client may take to finish its TLS handshake.
    #[serde(with = "mesh_core::config::duration")]
    pub handshake_timeout: Duration,
    /// The oldest TLS version accepted: `"1.2"` (and 1.3), or `"1.3"` alone.
    pub min_tls_version: MinTlsVersion,
}

/// The oldest TLS version a listener accepts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum MinTlsVersion {
    /// TLS 1.2 and 1.3: what older clients (and some load balancers' health checks) need.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

impl MinTlsVersion {
    /// The versions rustls is to offer.
    pub fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        match self {
            Self::Tls12 => rustls::DEFAULT_VERSIONS,
            Self::Tls13 => TLS13_ONLY,
        }
    }
}

impl Default for HttpsConfig {
    fn default() -> Self {
        Self {
            listen: parse_addr(DEFAULT_HTTPS_LISTEN),
            certificates: Vec::new(),
            handshake_timeout: crate::config::DEFAULT_HANDSHAKE_TIMEOUT,
            min_tls_version: MinTlsVersion::default(),
        }
    }
}

fn parse_addr(text: &str) -> SocketAddr {
    text.parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// One certificate: PEM files (a Kubernetes TLS Secret's `tls.crt` and `tls.key`), reloaded
/// when they change.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The host names it serves (`*.example.com` for one label under a domain); none: the
    /// names of its DNS SANs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Also served to clients whose name no certificate has, or that send none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub default: bool,
}

/// The plaintext listener.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where plaintext connections arrive.
    pub listen: SocketAddr,
    /// Answer every request with a permanent redirect (308) to the same URL over HTTPS,
    /// instead of routing it.
    pub redirect_to_https: bool,
    /// The HTTPS port the redirect names (as clients reach it: 443 behind a Service).
    pub https_port: u16,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: parse_addr(DEFAULT_HTTP_LISTEN),
            redirect_to_https: false,
            https_port: 443,
        }
    }
}

/// What the edge does to each request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// Proxies in front of the ingress whose `X-Forwarded-*` and `Forwarded` headers are
    /// believed (`["10.0.0.0/8"]`); from anybody else they are replaced.
    pub trusted_proxies: TrustedProxies,
    /// The request id header: kept when sane, made otherwise, echoed on the response.
    pub request_id_header: String,
    /// The largest request body, in bytes, all of a streaming call's messages counted (0: no
    /// limit).
    pub max_request_body: u64,
    /// The rate each client IP may send at (off by default).
    pub rate_limit: RateLimitConfig,
    /// One JSON line per request on standard output.
    pub access_log: bool,
    /// Translate gRPC-Web (and gRPC-Web-text) to gRPC.
    pub grpc_web: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: TrustedProxies::default(),
            request_id_header: "x-request-id".to_owned(),
            max_request_body: 16 * 1024 * 1024,
            rate_limit: RateLimitConfig::default(),
            access_log: true,
            grpc_web: true,
        }
    }
}

impl EdgeConfig {
    /// Checks what types alone cannot; the error names the field.
    pub fn validate(&self) -> Result<(), mesh_core::config::Invalid> {
        if http::HeaderName::from_bytes(self.request_id_header.as_bytes()).is_err() {
            return Err(mesh_core::config::Invalid::new(
                "request_id_header",
                format!("{:?}", self.request_id_header),
                "a header name",
            ));
        }
        self.rate_limit
            .validate()
            .map_err(|e| e.within("rate_limit"))
    }
}

/// Connections refused before HTTP, by reason.
#[derive(Clone, Debug, Default)]
pub struct IngressCounters {
    refused: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl IngressCounters {
    /// Registers the family in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let counters = Self::default();
        registry.register(
            "ingress_connection_refused",
            "Connections the ingress closed before or while speaking HTTP, by reason",
            counters.refused.clone(),
        );
        counters
    }

    fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// How many connections were refused for `reason`.
    pub fn count(&self, reason: &'static str) -> u64 {
        self.refused.get_or_create(&ReasonLabels { reason }).get()
    }
}

/// The edge's per-request settings, shared by every connection.
#[derive(Debug)]
struct EdgeState {
    trusted: Arc<TrustedProxies>,
    request_id: http::HeaderName,
    limiter: Arc<RateLimiter>,
    max_body: u64,
    access_log: Option<AccessLog>,
    grpc_web: bool,
}

/// The ingress: its routes over the balancers of its services, and the edge in front.
#[derive(Clone, Debug)]
pub struct Ingress {
    routes: HostRouted,
    compile: Arc<Compile>,
    edge: Arc<EdgeState>,
    tls: Option<(Arc<LiveCertificates>, Arc<rustls::ServerConfig>, Duration)>,
    server: HttpServer,
    detect_timeout: Duration,
    counters: IngressCounters,
}

/// What compiling routes needs: the balancers by authority, the metrics, the workload, and
/// the routes of each source (the configuration file, the Gateway API).
struct Compile {
    backends: Mutex<HashMap<Authority, HttpService>>,
    metrics: Option<HttpMetrics>,
    workload: WorkloadConfig,
    file_routes: Mutex<Vec<RouteConfig>>,
    kubernetes_routes: Mutex<Vec<RouteConfig>>,
    /// Where the routes' retries are counted (service `ingress`).
    retries: RetryMetrics,
    /// Tag responses with their route for the access log (only when it is written: an
    /// extension insert per response).
    tag_routes: bool,
    /// How a service that only a Gateway API route names is built, when routes may come from
    /// there.
    on_demand: Option<OnDemand>,
    /// The services built that way: released when no route names them any more.
    built_on_demand: Mutex<std::collections::HashSet<Authority>>,
}

/// Balancers built when a route first names their service.
struct OnDemand {
    template: ServiceConfig,
    sources: Sources,
    shared: Shared,
    balancer_metrics: mesh_balance::metrics::BalancerMetrics,
}

impl std::fmt::Debug for Compile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compile")
            .field("backends", &lock(&self.backends).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A service's balancer under its timeout and retries, with the client that tags responses
/// with their endpoint; mutual TLS only unless the service allows plaintext.
fn backend(
    svc: &ServiceConfig,
    authority: &Authority,
    sources: &Sources,
    tagging: &Shared,
    balancer_metrics: &mesh_balance::metrics::BalancerMetrics,
) -> Result<(HttpService, Option<RetryLayer>), StackError> {
    let mut resolution = sources.resolve(svc, authority)?;
    if !svc.plaintext {
        resolution = resolution.only_meshed();
    }
    let balancer = outbound::balancer(svc, authority, resolution, tagging);
    balancer_metrics.add(authority.to_string(), &balancer);
    let retry = svc.retry.as_deref().map(RetryLayer::new);
    let service = outbound::service_stack(&svc.timeout, retry.clone(), balancer);
    Ok((service, retry))
}

impl Ingress {
    /// Builds the balancers of `services` and the routes over them.
    pub fn new(
        routes: &[RouteConfig],
        services: &[ServiceConfig],
        edge: &EdgeConfig,
        shared: &Shared,
        sources: &Sources,
        (balancer_metrics, retries, counters): (
            &mesh_balance::metrics::BalancerMetrics,
            RetryMetrics,
            IngressCounters,
        ),
    ) -> Result<Self, StackError> {
        let tagging = tagging(shared, edge.access_log);
        let mut backends = HashMap::new();
        for svc in services {
            let authority = svc.validate().map_err(StackError::Config)?;
            let (service, retry) = backend(svc, &authority, sources, &tagging, balancer_metrics)?;
            if let Some(retry) = &retry {
                retries.set(
                    authority.as_str(),
                    vec![(String::new(), retry.stats())],
                    true,
                );
            }
            backends.insert(authority, service);
        }
        let compile = Arc::new(Compile {
            backends: Mutex::new(backends),
            metrics: shared.request_metrics.clone(),
            workload: shared.workload.clone(),
            file_routes: Mutex::new(routes.to_vec()),
            kubernetes_routes: Mutex::new(Vec::new()),
            retries,
            tag_routes: edge.access_log,
            on_demand: None,
            built_on_demand: Mutex::new(std::collections::HashSet::new()),
        });
        let table = compile.routes().map_err(|source| StackError::Routes {
            service: "ingress".into(),
            source,
        })?;
        let request_id =
            http::HeaderName::from_bytes(edge.request_id_header.as_bytes()).map_err(|_| {
                StackError::Config(mesh_core::config::Invalid::new(
                    "edge.request_id_header",
                    &edge.request_id_header,
                    "a header name",
                ))
            })?;
        Ok(Self {
            routes: HostRouted::new(table),
            compile,
            edge: Arc::new(EdgeState {
                trusted: Arc::new(edge.trusted_proxies.clone()),
                request_id,
                limiter: RateLimiter::new(&edge.rate_limit),
                max_body: edge.max_request_body,
                access_log: edge.access_log.then(AccessLog::stdout),
                grpc_web: edge.grpc_web,
            }),
            tls: None,
            server: shared.server.clone(),
            detect_timeout: crate::config::DEFAULT_DETECT_TIMEOUT,
            counters,
        })
    }

    /// Terminates TLS with `certs` (chosen by SNI; ALPN h2 and http/1.1) as `https` says:
    /// the versions it accepts, and each handshake bounded by its `handshake_timeout`, which
    /// also bounds how long a plaintext client may stay silent.
    pub fn with_tls(
        mut self,
        certs: Arc<LiveCertificates>,
        https: &HttpsConfig,
    ) -> Result<Self, StackError> {
        let config = certs
            .server_config_for(&[b"h2", b"http/1.1"], https.min_tls_version.versions())
            .map_err(|e| StackError::Identity {
                key: "https.certificates",
                source: Box::new(e),
            })?;
        self.tls = Some((certs, config, https.handshake_timeout));
        self.detect_timeout = https.handshake_timeout;
        Ok(self)
    }

    /// Writes the access log to `log` instead of standard output (when it is on).
    pub fn with_access_log(mut self, log: AccessLog) -> Self {
        if let Some(edge) = Arc::get_mut(&mut self.edge)
            && edge.access_log.is_some()
        {
            edge.access_log = Some(log);
        }
        self
    }

    /// Builds, on first use, the balancer of each service that a Gateway API route names and
    /// no `services` entry configures: as `template` says (its discovery, balancer, timeout,
    /// plaintext), over `sources`; and releases it (balancer, metrics, discovery watch) when no
    /// route names it any more. Call before the ingress is cloned.
    pub fn with_services_on_demand(
        mut self,
        template: ServiceConfig,
        sources: Sources,
        shared: &Shared,
        balancer_metrics: &mesh_balance::metrics::BalancerMetrics,
    ) -> Self {
        if let Some(compile) = Arc::get_mut(&mut self.compile) {
            compile.on_demand = Some(OnDemand {
                template,
                sources,
                shared: tagging(shared, self.edge.access_log.is_some()),
                balancer_metrics: balancer_metrics.clone(),
            });
        }
        self
    }

    /// Swaps in new routes of the configuration file over the same services (the Gateway
    /// API's routes stay); routes that name an unknown service are refused (logged) and the
    /// old ones stay.
    pub fn reload_routes(&self, routes: &[RouteConfig]) {
        let old = std::mem::replace(&mut *lock(&self.compile.file_routes), routes.to_vec());
        if !self.recompile("configuration file") {
            *lock(&self.compile.file_routes) = old;
        }
    }

    /// Swaps in the routes of the Gateway API (after the file's, which win a tie); routes
    /// that cannot be served are refused (logged) and the old ones stay.
    pub fn set_kubernetes_routes(&self, routes: Vec<RouteConfig>) {
        let old = std::mem::replace(&mut *lock(&self.compile.kubernetes_routes), routes);
        if !self.recompile("Gateway API") {
            *lock(&self.compile.kubernetes_routes) = old;
        }
    }

    fn recompile(&self, source: &str) -> bool {
        match self.compile.routes() {
            Ok(table) => {
                self.routes.replace(table);
                tracing::info!(source, "ingress routes reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(source, error = %e, "new ingress routes refused; keeping the old ones");
                false
            }
        }
    }

    /// Reloads the routes each time the file at `path` changes, with the routes `load` reads
    /// from it; a file that does not load keeps the old routes (logged).
    pub fn reload_on_change<E: std::fmt::Display>(
        &self,
        path: PathBuf,
        drain: Drain,
        load: impl Fn(&std::path::Path) -> Result<Vec<RouteConfig>, E> + Send + 'static,
    ) {
        let ingress = self.clone();
        crate::serve::spawn_file_watch(path, drain, move |path| match load(path) {
            Ok(routes) => ingress.reload_routes(&routes),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "the configuration file changed but does not load; keeping the old routes"
            ),
        });
    }

    /// The connections refused so far, by reason.
    pub fn counters(&self) -> &IngressCounters {
        &self.counters
    }

    /// Serves one connection of the TLS listener.
    pub async fn serve_tls<I>(self, io: I, peer: SocketAddr, drain: Drain)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some((certs, config, timeout)) = self.tls.clone() else {
            return;
        };
        let handshake = async {
            let acceptor =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
            // A peer that closes before a byte (a load balancer's TCP health check) is not
            // refused anything: it is not counted.
            let start = acceptor.await.map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "closed",
                _ => "not-tls",
            })?;
            let sni: Option<Arc<str>> = start.client_hello().server_name().map(Arc::from);
            if !certs.serves(sni.as_deref()) {
                return Err("unknown-sni");
            }
            let tls = start.into_stream(config).await.map_err(|_| "handshake")?;
            Ok((tls, sni))
        };
        let (tls, sni) = match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(done)) => done,
            Ok(Err("closed")) => return,
            Ok(Err(reason)) => return self.refuse(peer, reason),
            Err(_) => return self.refuse(peer, "handshake-timeout"),
        };
        let protocol = match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        self.serve_http(tls, peer, (true, sni), protocol, drain)
            .await
    }

    /// Serves one connection of the plaintext listener: routed, or redirected to HTTPS on
    /// `redirect_to` when given.
    pub async fn serve_plain<I>(
        self,
        mut io: I,
        peer: SocketAddr,
        redirect_to: Option<u16>,
        drain: Drain,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let detected =
            crate::serve::detect_protocol(&mut io, self.detect_timeout, peer, "ingress").await;
        let Some((protocol, prefix)) = detected else {
            return;
        };
        if protocol == Protocol::Opaque {
            return self.refuse(peer, "not-http");
        }
        let io = PrefixedIo::new(prefix, io);
        match redirect_to {
            Some(port) => {
                let redirect = Respond::new(RedirectToHttps { port });
                if let Err(e) = self.server.serve(io, protocol, redirect, &drain).await {
                    self.http_error(peer, &e);
                }
            }
            None => {
                self.serve_http(io, peer, (false, None), protocol, drain)
                    .await
            }
        }
    }

    async fn serve_http<I>(
        self,
        io: I,
        peer: SocketAddr,
        (https, sni): (bool, Option<Arc<str>>),
        protocol: Protocol,
        drain: Drain,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let edge = &self.edge;
        let max_body = (edge.max_body > 0).then(|| BodyLimitLayer::new(edge.max_body));
        let stack = ServiceBuilder::new()
            .layer(ClientLayer::new(peer, https, sni))
            .layer(ForwardedLayer::new(edge.trusted.clone()).for_peer(peer, https))
            .layer(RequestIdLayer::new(edge.request_id.clone()))
            .option_layer(edge.grpc_web.then_some(GrpcWebLayer))
            .option_layer(edge.access_log.clone().map(AccessLogLayer::new))
            .layer(RateLimitLayer::new(edge.limiter.clone()))
            .option_layer(max_body)
            .service(self.routes.clone());
        let stack = Respond::new(stack);
        if let Err(e) = self.server.serve(io, protocol, stack, &drain).await {
            self.http_error(peer, &e);
        }
    }

    fn http_error(&self, peer: SocketAddr, e: &mesh_core::server::ServeError) {
        let reason = if e.is_timeout() {
            "header-timeout"
        } else if e.is_parse_too_large() {
            "headers-too-large"
        } else if e.is_parse() {
            "malformed-http"
        } else {
            tracing::debug!(%peer, error = %e, "ingress connection ended with an error");
            return;
        };
        self.refuse(peer, reason);
    }

    fn refuse(&self, peer: SocketAddr, reason: &'static str) {
        self.counters.refused(reason);
        tracing::debug!(%peer, reason, "ingress connection refused");
    }
}

/// The client of the ingress's endpoints: with an access log, it tags each response with its
/// endpoint (an extension insert per response, not paid without one).
fn tagging(shared: &Shared, access_log: bool) -> Shared {
    let mut tagging = shared.clone();
    if access_log {
        tagging.client = tagging.client.tagging_upstream();
    }
    tagging
}

impl Compile {
    /// The host routes of every source, each (host, route) counted as inbound requests of the
    /// ingress and tagged for the access log; services first named here are built if they may
    /// be.
    fn routes(&self) -> Result<HostRoutes, mesh_route::RouteError> {
        let mut routes = lock(&self.file_routes).clone();
        routes.extend(lock(&self.kubernetes_routes).iter().cloned());
        if let Some(on_demand) = &self.on_demand {
            let mut backends = lock(&self.backends);
            for route in &routes {
                for named in &route.backends {
                    let Ok(authority) = Authority::parse(&named.service, 80) else {
                        continue;
                    };
                    if backends.contains_key(&authority) {
                        continue;
                    }
                    let svc = ServiceConfig {
                        authority: named.service.clone(),
                        ..on_demand.template.clone()
                    };
                    match backend(
                        &svc,
                        &authority,
                        &on_demand.sources,
                        &on_demand.shared,
                        &on_demand.balancer_metrics,
                    ) {
                        Ok((service, _)) => {
                            tracing::info!(service = %authority, "balancing a service a route names");
                            lock(&self.built_on_demand).insert(authority.clone());
                            backends.insert(authority, service);
                        }
                        Err(e) => {
                            tracing::warn!(service = %authority, error = %e, "cannot balance a service a route names")
                        }
                    }
                }
            }
        }
        if let Some(on_demand) = &self.on_demand {
            // A service only routes named, that none names now: its balancer, endpoints and
            // discovery watch go (the table in use keeps its own until it is replaced).
            let named: std::collections::HashSet<Authority> = routes
                .iter()
                .flat_map(|r| &r.backends)
                .filter_map(|b| Authority::parse(&b.service, 80).ok())
                .collect();
            let mut built = lock(&self.built_on_demand);
            let mut backends = lock(&self.backends);
            built.retain(|authority| {
                if named.contains(authority) {
                    return true;
                }
                tracing::info!(service = %authority, "no route names this service any more; releasing it");
                backends.remove(authority);
                on_demand.balancer_metrics.remove(authority.as_str());
                false
            });
        }
        let backends = lock(&self.backends).clone();
        let routes = &routes;
        let wrap = |host: &str, route: &str, service: HttpService| -> HttpService {
            let service = match self.tag_routes {
                true => {
                    let tag = RouteTag {
                        host: host.into(),
                        route: route.into(),
                    };
                    mesh_core::erase(service.map_response(move |mut rsp: Response<Body>| {
                        rsp.extensions_mut().insert(tag.clone());
                        rsp
                    }))
                }
                false => service,
            };
            let Some(metrics) = &self.metrics else {
                return service;
            };
            let labels = RequestLabels {
                direction: Direction::Inbound.as_str().to_owned(),
                authority: host.to_owned(),
                route: route.to_owned(),
                dst_workload: self.workload.name.clone(),
                dst_namespace: self.workload.namespace.clone(),
                tls: "false".to_owned(),
                ..RequestLabels::default()
            };
            mesh_core::erase(metrics.layer(labels).layer(service))
        };
        let table = HostRoutes::compile(routes, &backends, &wrap)?;
        self.retries.set("ingress", table.retry_stats(), false);
        Ok(table)
    }
}

/// Answers every request with a redirect to HTTPS.
#[derive(Clone, Copy, Debug)]
struct RedirectToHttps {
    port: u16,
}

impl tower::Service<Request<Body>> for RedirectToHttps {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Body>, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        std::future::ready(Ok(redirect(&req, self.port)))
    }
}

/// A permanent redirect of `req` to HTTPS on `port`.
fn redirect(req: &Request<Body>, port: u16) -> Response<Body> {
    let host = mesh_route::request_host(req).unwrap_or("");
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = match port {
        443 => format!("https://{host}{path}"),
        port => format!("https://{host}:{port}{path}"),
    };
    let mut rsp = Response::new(Body::Empty);
    match http::HeaderValue::from_str(&location) {
        Ok(location) if !host.is_empty() => {
            *rsp.status_mut() = StatusCode::PERMANENT_REDIRECT;
            rsp.headers_mut().insert(header::LOCATION, location);
        }
        _ => *rsp.status_mut() = StatusCode::BAD_REQUEST,
    }
    rsp
}
