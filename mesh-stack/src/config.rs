//! The configuration sections of the mesh's stacks, as serde structs a user can also build in
//! code: the workload, metrics, the admin listener, outbound services (with their discovery,
//! balancer, timeout, retries and routes), the inbound side and its policies, the identity,
//! discovery sources and the runtime. A binary's own configuration is made of these sections
//! (mesh-proxy's `Config` is one), loaded by `mesh_core::config`.
//!
//! Each section checks itself with `validate()`, which returns mesh-core's one
//! [`Invalid`] (field, value, what was expected) with the field relative to the section; the
//! binary places it (`Invalid::within("outbound")`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_balance::BalancerConfig;
use mesh_core::config::{Invalid, check_duration, format_duration};
use mesh_core::endpoint::Authority;
use mesh_core::identity::Identity;
use mesh_core::ports::PortSet;
use serde::{Deserialize, Serialize};

/// Default admin listener (`/ready`, `/live`, `/config`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:4191";
/// Default outbound listener: the app's calls to other services.
pub const DEFAULT_OUTBOUND_LISTEN: &str = "127.0.0.1:4140";
/// Default inbound listener: other services' calls to the app.
pub const DEFAULT_INBOUND_LISTEN: &str = "0.0.0.0:4143";
/// How long protocol detection waits for a client's first bytes.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default [`OutboundConfig::service_idle_timeout`].
pub const DEFAULT_SERVICE_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// The default inbound `handshake_timeout`.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// The workload a proxy speaks for.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Its name (a Deployment's, say).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
}

/// What is measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Count requests, responses and latency per endpoint (on by default; off only to measure
    /// what the counting costs).
    pub requests: bool,
    /// Request series unused this long are dropped from the exposition (they come back when
    /// used again): gone endpoints do not pile up.
    #[serde(with = "mesh_core::config::duration")]
    pub idle_series_ttl: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            requests: true,
            idle_series_ttl: Duration::from_secs(600),
        }
    }
}

/// The admin listener.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where `/ready`, `/live`, `/metrics`, `/config` and `/log-level` are served.
    pub listen: SocketAddr,
    /// Accept `POST /shutdown` (from loopback only).
    pub enable_shutdown: bool,
}

/// The outbound side.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Where the app's HTTP calls arrive.
    pub listen: SocketAddr,
    /// How long to wait for a client's first bytes before giving up on HTTP.
    #[serde(with = "mesh_core::config::duration")]
    pub detect_timeout: Duration,
    /// The services, by authority. Shared: the stacks made from them keep them, and a
    /// service carrying no traffic then costs no copy.
    pub services: Arc<[ServiceConfig]>,
    /// A service's balancer (its endpoints' clients and metrics series, its discovery watch)
    /// is made on its first request and dropped after this long without one, checked every
    /// period: it goes after one to two. A configured service that carries no traffic costs
    /// only its configuration.
    #[serde(with = "mesh_core::config::duration")]
    pub service_idle_timeout: Duration,
    /// Serve connections redirected here by `mesh-proxy init`: each keeps its original
    /// destination (`SO_ORIGINAL_DST`). A service's virtual address (`addresses`) is balanced
    /// like its authority; a known endpoint's address is reached over mTLS with its identity;
    /// any other destination is forwarded as it is (HTTP still counted). A connection made to
    /// the listener itself is served as without capture.
    pub transparent: bool,
    /// Captured connections to these original ports are forwarded as TCP at once (over mTLS
    /// to a meshed endpoint), never sniffed for HTTP: protocols whose server speaks first, or
    /// that are not HTTP. Default: linkerd's list, 25, 587, 3306, 4444, 5432, 6379, 9300,
    /// 11211. Ports and ranges: `[5432, "9000-9010"]`.
    #[serde(rename = "opaque-ports", alias = "opaque_ports")]
    pub opaque_ports: PortSet,
    /// Where captured connections to addresses that no configured service names are looked
    /// up: `"destination"` (the controller's destination API), `"kubernetes"` (the API
    /// server directly: the proxy lists Services and Pods cluster-wide) or `"none"`. A
    /// Service's ClusterIP is then balanced over its endpoints, a pod's address is reached
    /// over mTLS with its identity; what the source does not know is forwarded as it is.
    pub lookup: AddressLookup,
}

/// Where captured connections' original destinations are looked up.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AddressLookup {
    /// Nowhere: only the configured services' `addresses` and endpoints are known.
    #[default]
    None,
    /// The Kubernetes API (settings of `[discovery.kubernetes]`).
    Kubernetes,
    /// The controller's destination API (settings of `[discovery.destination]`).
    Destination,
}

/// One logical service and its endpoints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// `host:port` as clients name it (`:authority` / `Host`).
    pub authority: String,
    /// Its endpoints (with `discovery = "static"`): `"ip:port"`, or
    /// `{ addr = "ip:port", pod = "name", identity = "spiffe://..." }`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointConfig>,
    /// Where its endpoints come from.
    #[serde(default)]
    pub discovery: DiscoverySource,
    /// The name the source resolves, when it is not the authority: a DNS name (`host:port`, or
    /// an SRV name `_grpc._tcp.web.example.com`), a service of the file, a Kubernetes Service
    /// (`<svc>.<ns>.svc.cluster.local:<port>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve: Option<String>,
    /// Forward bytes instead of HTTP, on a listener of its own.
    #[serde(default)]
    pub opaque: bool,
    /// The listener of an opaque service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The service's virtual addresses (a Kubernetes Service's ClusterIP and port): a
    /// captured connection to one of them is this service's, whatever its `Host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<SocketAddr>,
    /// How requests are balanced over the endpoints.
    #[serde(default)]
    pub balancer: BalancerConfig,
    /// The request timeout, and whether gRPC's `grpc-timeout` is honoured (it is by default).
    #[serde(default)]
    pub timeout: mesh_core::timeout::TimeoutConfig,
    /// Retries of failed requests, within a budget; none without this. Boxed: most services
    /// have none, and each configured service is kept (120 bytes less each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Box<mesh_core::retry::RetryPolicy>>,
    /// Routes: matches that send requests to weighted backends (canaries, A/B); a request no
    /// route matches goes to this service's own endpoints. Reloaded live with the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<mesh_route::RouteConfig>,
    /// The workload behind the service, for metrics.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload: String,
    /// The namespace of that workload, for metrics.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// At the ingress: also reach endpoints that have no identity, in plaintext (by default
    /// the ingress speaks only mutual TLS into the mesh and leaves such endpoints out). The
    /// sidecar always reaches an endpoint without an identity in plaintext.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
}

impl ServiceConfig {
    /// A service known only by its name (one that discovery found by its address): default
    /// balancer, timeout and no retries; metrics name the namespace that a Kubernetes name
    /// (`<svc>.<ns>.svc...`) holds.
    pub fn named(authority: &str) -> Self {
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host);
        let namespace = match host.split('.').collect::<Vec<_>>()[..] {
            [_, namespace, "svc", ..] => namespace.to_owned(),
            _ => String::new(),
        };
        Self {
            authority: authority.to_owned(),
            endpoints: Vec::new(),
            discovery: DiscoverySource::default(),
            resolve: None,
            opaque: false,
            listen: None,
            addresses: Vec::new(),
            balancer: BalancerConfig::default(),
            timeout: mesh_core::timeout::TimeoutConfig::default(),
            retry: None,
            routes: Vec::new(),
            workload: String::new(),
            namespace,
            plaintext: false,
        }
    }
}

/// Where a service's endpoints come from.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiscoverySource {
    /// The `endpoints` list.
    #[default]
    Static,
    /// The file of `discovery.file`, watched.
    File,
    /// DNS: A/AAAA or SRV records, re-resolved by TTL.
    Dns,
    /// The Kubernetes API's EndpointSlices (the proxy needs API credentials).
    Kubernetes,
    /// The controller's destination API (which watches Kubernetes for every proxy).
    Destination,
}

impl DiscoverySource {
    /// The value as configured.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoverySource::Static => "static",
            DiscoverySource::File => "file",
            DiscoverySource::Dns => "dns",
            DiscoverySource::Kubernetes => "kubernetes",
            DiscoverySource::Destination => "destination",
        }
    }
}

/// The discovery sources' settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The services file (YAML or JSON) of `discovery = "file"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// DNS settings.
    pub dns: mesh_discovery::dns::DnsConfig,
    /// Kubernetes settings.
    pub kubernetes: KubernetesDiscoveryConfig,
    /// The destination API: by default the controller of `[identity]`.
    pub destination: DestinationDiscoveryConfig,
}

/// Kubernetes discovery.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesDiscoveryConfig {
    /// The API server's URL; by default, in-cluster configuration or `KUBECONFIG`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// The cluster's DNS domain and the mesh's trust domain.
    #[serde(flatten)]
    pub source: mesh_discovery::kubernetes::KubernetesConfig,
}

/// `host:port`: an IP address or a DNS name, and a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort(String);

impl HostPort {
    /// As configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostPort {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let parsed: http::uri::Authority = text
            .parse()
            .map_err(|_| format!("{text:?} is not host:port"))?;
        if text.contains('@') || parsed.host().is_empty() || parsed.port_u16().is_none() {
            return Err(format!("{text:?} is not host:port"));
        }
        Ok(Self(text))
    }
}

impl From<HostPort> for String {
    fn from(addr: HostPort) -> String {
        addr.0
    }
}

impl From<SocketAddr> for HostPort {
    fn from(addr: SocketAddr) -> Self {
        Self(addr.to_string())
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The destination API.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationDiscoveryConfig {
    /// The controller's address; by default `identity.controller`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<HostPort>,
    /// The identity the controller proves; by default `identity.controller_identity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller_identity: Option<Identity>,
}

/// One endpoint of a service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum EndpointConfig {
    /// Just the address.
    Addr(SocketAddr),
    /// The address and what is known of it.
    Named {
        /// Where to connect.
        addr: SocketAddr,
        /// The pod's name, for metrics (`dst_pod`).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        pod: String,
        /// The identity a meshed endpoint proves: reached over mutual TLS, verified to be
        /// exactly this identity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<Identity>,
    },
}

impl EndpointConfig {
    /// The address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            EndpointConfig::Addr(addr) | EndpointConfig::Named { addr, .. } => *addr,
        }
    }

    /// The identity the endpoint proves, when it is meshed.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            EndpointConfig::Addr(_) => None,
            EndpointConfig::Named { identity, .. } => identity.as_ref(),
        }
    }

    /// As discovery would name it.
    pub fn endpoint(&self) -> mesh_core::endpoint::Endpoint {
        match self {
            EndpointConfig::Addr(addr) => mesh_core::endpoint::Endpoint::new(*addr),
            EndpointConfig::Named {
                addr,
                pod,
                identity,
            } => {
                let labels = if pod.is_empty() {
                    Vec::new()
                } else {
                    vec![("pod".to_owned(), pod.clone())]
                };
                mesh_core::endpoint::Endpoint::meshed(*addr, labels, identity.clone())
            }
        }
    }
}

impl From<SocketAddr> for EndpointConfig {
    fn from(addr: SocketAddr) -> Self {
        EndpointConfig::Addr(addr)
    }
}

/// The inbound side.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Where other services' calls arrive.
    #[serde(default = "default_inbound_listen")]
    pub listen: SocketAddr,
    /// The local app.
    pub app: SocketAddr,
    /// How long to wait for a client's first bytes before treating the connection as opaque.
    #[serde(
        default = "default_detect_timeout",
        with = "mesh_core::config::duration"
    )]
    pub detect_timeout: Duration,
    /// How long a client has to finish the mesh's TLS handshake once its ClientHello is read;
    /// past it the connection is closed (counted as `reason="handshake-timeout"`).
    #[serde(
        default = "default_handshake_timeout",
        with = "mesh_core::config::duration"
    )]
    pub handshake_timeout: Duration,
    /// Who may call the app, unless `ports` says otherwise for the app's port. Default:
    /// `all-authenticated` when the proxy has an identity, `all-unauthenticated` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Policies of particular app ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortPolicy>,
    /// Serve every port of the pod: connections redirected here by `mesh-proxy init` go to
    /// the app at `app`'s address and the port they were sent to (their original
    /// destination), under that port's policy. A connection made to the listener itself goes
    /// to `app`.
    #[serde(default)]
    pub transparent: bool,
    /// App ports whose connections are forwarded as TCP once the mesh's TLS (if any) is
    /// terminated, never sniffed for HTTP. Default: linkerd's list, as for `[outbound]`.
    #[serde(
        default = "PortSet::default_opaque",
        rename = "opaque-ports",
        alias = "opaque_ports"
    )]
    pub opaque_ports: PortSet,
}

/// Who may call a port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Policy {
    /// `all-authenticated` (any meshed workload, over mutual TLS) or `all-unauthenticated`
    /// (anyone, plaintext too).
    Named(NamedPolicy),
    /// Only these identities, over mutual TLS.
    Allow(Vec<Identity>),
}

/// The policies with a name.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum NamedPolicy {
    /// Mutual TLS from any workload the trust anchors vouch for.
    AllAuthenticated,
    /// Anyone, plaintext included.
    AllUnauthenticated,
}

/// The policy of one app port.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortPolicy {
    /// The app's port (the connection's original destination port).
    pub port: u16,
    /// Who may call it.
    pub policy: Policy,
}

/// Where the workload's certificate comes from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IdentityMode {
    /// The controller's identity service (a CSR and a token over TLS).
    Controller,
    /// Issuer files on disk, no controller: development and tests.
    Local,
}

/// The workload's identity.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
    pub name: Identity,
    /// A PEM bundle of the roots that vouch for every workload (one or several): a file, or
    /// the PEM text itself (`-----BEGIN CERTIFICATE-----...`, as an injected proxy's
    /// environment gives it).
    pub trust_anchors: PathBuf,
    /// `controller` (default) or `local`.
    #[serde(default = "default_identity_mode")]
    pub mode: IdentityMode,
    /// The identity service's address (controller mode): `host:port`, an IP or a name
    /// (`mesh-controller.mesh-system.svc.cluster.local:8080`), resolved at each connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<HostPort>,
    /// The identity the controller proves (controller mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_identity: Option<Identity>,
    /// The token that proves our identity to the controller: a projected ServiceAccount
    /// token in Kubernetes (controller mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The issuer's certificate (local mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_cert: Option<PathBuf>,
    /// The issuer's key (local mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_key: Option<PathBuf>,
    /// The lifetime of leaves the local issuer signs (local mode).
    #[serde(
        default = "default_leaf_lifetime",
        with = "mesh_core::config::duration"
    )]
    pub lifetime: Duration,
    /// How long a call to the identity service may take.
    #[serde(
        default = "default_certify_timeout",
        with = "mesh_core::config::duration"
    )]
    pub certify_timeout: Duration,
}

fn default_identity_mode() -> IdentityMode {
    IdentityMode::Controller
}

fn default_leaf_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_certify_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Threads and shutdown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; 0 means one per core the process may run on.
    pub threads: usize,
    /// After SIGTERM, how long in-flight requests may take.
    #[serde(with = "mesh_core::config::duration")]
    pub shutdown_grace: Duration,
    /// Bytes of request bodies kept for retries, over all requests at once (each request
    /// keeps at most its route's `retry.max_buffered_body`); past it a request is sent once,
    /// without retries, so that a burst of large requests cannot grow the proxy's memory.
    pub retry_buffer_limit: usize,
}

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

fn default_inbound_listen() -> SocketAddr {
    addr(DEFAULT_INBOUND_LISTEN)
}

fn default_detect_timeout() -> Duration {
    DEFAULT_DETECT_TIMEOUT
}

fn default_handshake_timeout() -> Duration {
    DEFAULT_HANDSHAKE_TIMEOUT
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_ADMIN_LISTEN),
            enable_shutdown: false,
        }
    }
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_OUTBOUND_LISTEN),
            detect_timeout: DEFAULT_DETECT_TIMEOUT,
            services: Arc::new([]),
            service_idle_timeout: DEFAULT_SERVICE_IDLE_TIMEOUT,
            transparent: false,
            opaque_ports: PortSet::default_opaque(),
            lookup: AddressLookup::None,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            retry_buffer_limit: mesh_core::retry::DEFAULT_BUFFER_LIMIT,
        }
    }
}

/// The most worker threads a runtime may ask for.
pub const MAX_THREADS: usize = 1024;

impl MetricsConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_duration(
            "idle_series_ttl",
            self.idle_series_ttl,
            Duration::from_secs(1),
            Duration::from_secs(7 * 24 * 3600),
        )
    }
}

impl RuntimeConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.threads > MAX_THREADS {
            return Err(Invalid::new(
                "threads",
                self.threads,
                format!("expected at most {MAX_THREADS} (0 means one per core)"),
            ));
        }
        Ok(())
    }
}

impl IdentityConfig {
    /// Checks that the mode has what it needs.
    pub fn validate(&self) -> Result<(), Invalid> {
        let needs = |field: &str, mode: &str, set: bool| {
            if set {
                Ok(())
            } else {
                Err(Invalid::missing(
                    field,
                    format!("mode = \"{mode}\" needs it"),
                ))
            }
        };
        match self.mode {
            IdentityMode::Local => {
                needs("issuer_cert", "local", self.issuer_cert.is_some())?;
                needs("issuer_key", "local", self.issuer_key.is_some())?;
            }
            IdentityMode::Controller => {
                needs("controller", "controller", self.controller.is_some())?;
                needs(
                    "controller_identity",
                    "controller",
                    self.controller_identity.is_some(),
                )?;
                needs("token_file", "controller", self.token_file.is_some())?;
            }
        }
        if self.lifetime < Duration::from_secs(1) {
            return Err(Invalid::new(
                "lifetime",
                format_duration(self.lifetime),
                "expected at least 1s",
            ));
        }
        Ok(())
    }
}

impl IdentityConfig {
    /// The trust anchors: read from the file, or parsed from the PEM text given in its place.
    pub fn load_trust_anchors(&self) -> Result<mesh_tls::cert::TrustAnchors, mesh_tls::TlsError> {
        match self.trust_anchors_file() {
            Some(path) => mesh_tls::cert::TrustAnchors::from_pem_file(&path),
            None => mesh_tls::cert::TrustAnchors::from_pem(
                self.trust_anchors.as_os_str().to_string_lossy().as_bytes(),
            ),
        }
    }

    /// The trust anchors' file, unless the PEM text is given in its place.
    pub fn trust_anchors_file(&self) -> Option<std::path::PathBuf> {
        let text = self.trust_anchors.as_os_str().to_string_lossy();
        (!text.trim_start().starts_with("-----BEGIN")).then(|| self.trust_anchors.clone())
    }
}

impl Policy {
    /// Does this policy need callers to prove an identity?
    pub fn needs_identity(&self) -> bool {
        self != &Policy::Named(NamedPolicy::AllUnauthenticated)
    }
}

impl InboundConfig {
    /// Checks the policies: only a proxy with an identity can require one.
    pub fn validate(&self, has_identity: bool) -> Result<(), Invalid> {
        const WHY: &str =
            "only a proxy with an identity (an [identity] section) can authenticate callers";
        mesh_core::config::check_setting_duration("detect_timeout", self.detect_timeout)?;
        mesh_core::config::check_setting_duration("handshake_timeout", self.handshake_timeout)?;
        if has_identity {
            return Ok(());
        }
        if let Some(policy) = self.policy.as_ref().filter(|p| p.needs_identity()) {
            return Err(Invalid::new("policy", format!("{policy:?}"), WHY));
        }
        if let Some(i) = self.ports.iter().position(|p| p.policy.needs_identity()) {
            return Err(Invalid::new(
                format!("ports[{i}].policy"),
                format!("{:?}", self.ports[i].policy),
                WHY,
            ));
        }
        Ok(())
    }
}

impl ServiceConfig {
    /// Checks the service alone: its authority, settings, and that its endpoints, discovery
    /// and listener fit together. Returns its authority.
    pub fn validate(&self) -> Result<Authority, Invalid> {
        let authority = Authority::parse(&self.authority, 80).map_err(|e| {
            Invalid::new("authority", format!("{:?}", self.authority), e.to_string())
        })?;
        self.timeout.validate().map_err(|e| e.within("timeout"))?;
        if let Some(retry) = &self.retry {
            retry.validate().map_err(|e| e.within("retry"))?;
        }
        self.balancer.validate().map_err(|e| e.within("balancer"))?;
        match self.discovery {
            DiscoverySource::Static if self.endpoints.is_empty() => {
                return Err(Invalid::new(
                    "endpoints",
                    "[]",
                    "a static service needs at least one endpoint",
                ));
            }
            DiscoverySource::Static => {}
            other if !self.endpoints.is_empty() => {
                return Err(Invalid::new(
                    "endpoints",
                    format!("{} endpoint(s)", self.endpoints.len()),
                    format!(
                        "a service with discovery = \"{}\" takes its endpoints from that source",
                        other.as_str()
                    ),
                ));
            }
            _ if self.opaque => {
                return Err(Invalid::new(
                    "discovery",
                    format!("\"{}\"", self.discovery.as_str()),
                    "opaque services take static endpoints",
                ));
            }
            _ => {}
        }
        match (self.opaque, self.listen) {
            (true, None) => Err(Invalid::missing(
                "listen",
                "an opaque service needs a listen address of its own",
            )),
            (false, Some(listen)) => Err(Invalid::new(
                "listen",
                listen,
                "only opaque services have a listener of their own (set opaque = true)",
            )),
            _ => Ok(authority),
        }
    }
}

impl OutboundConfig {
    /// Checks every service, and that no authority is configured twice.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_duration(
            "service_idle_timeout",
            self.service_idle_timeout,
            Duration::from_secs(1),
            Duration::from_secs(7 * 24 * 3600),
        )?;
        let mut seen = HashSet::new();
        for (i, svc) in self.services.iter().enumerate() {
            let section = format!("services[{i}]");
            let authority = svc.validate().map_err(|e| e.within(&section))?;
            if !seen.insert(authority) {
                return Err(Invalid::new(
                    format!("{section}.authority"),
                    format!("{:?}", svc.authority),
                    "this service is already configured",
                ));
            }
        }
        Ok(())
    }
}

impl DiscoveryConfig {
    /// Checks the sources' settings, and that every source one of `services` names is set
    /// up (the destination API's controller may come from `identity`).
    pub fn validate(
        &self,
        services: &[ServiceConfig],
        identity: Option<&IdentityConfig>,
    ) -> Result<(), Invalid> {
        self.dns.validate().map_err(|e| e.within("dns"))?;
        for svc in services {
            match svc.discovery {
                DiscoverySource::File if self.file.is_none() => {
                    return Err(Invalid::missing(
                        "file",
                        format!("service {:?} uses discovery = \"file\"", svc.authority),
                    ));
                }
                DiscoverySource::Destination
                    if self.destination.controller.is_none()
                        && identity.is_none_or(|i| i.controller.is_none()) =>
                {
                    return Err(Invalid::missing(
                        "destination.controller",
                        format!(
                            "service {:?} uses discovery = \"destination\"; set it or identity.controller",
                            svc.authority
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(toml: &str) -> ServiceConfig {
        toml::from_str(toml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn trust_anchors_from_a_file_or_inline() {
        let made = mesh_tls::ca::bootstrap(
            "cluster.local",
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            std::time::SystemTime::now(),
        )
        .unwrap();
        let config = |anchors: &str| IdentityConfig {
            trust_anchors: PathBuf::from(anchors),
            ..toml::from_str::<IdentityConfig>(
                "name = \"spiffe://cluster.local/ns/a/sa/b\"\ntrust_anchors = \"x\"",
            )
            .unwrap()
        };
        config(&made.anchor_pem).load_trust_anchors().unwrap();
        let file = std::env::temp_dir().join(format!("mesh-anchors-{}.pem", std::process::id()));
        std::fs::write(&file, &made.anchor_pem).unwrap();
        let from_file = config(file.to_str().unwrap()).load_trust_anchors();
        let _ = std::fs::remove_file(&file);
        from_file.unwrap();
        assert!(config("/nonexistent/ca.crt").load_trust_anchors().is_err());
        assert!(
            config("-----BEGIN CERTIFICATE-----\nnot base64\n")
                .load_trust_anchors()
                .is_err()
        );
    }

    #[test]
    fn host_ports() {
        for good in [
            "10.0.0.1:8080",
            "[fd00::1]:8080",
            "mesh-controller.mesh-system.svc:8080",
        ] {
            assert_eq!(HostPort::try_from(good.to_owned()).unwrap().as_str(), good);
        }
        for bad in ["mesh-controller", "a:b", ":80", "user@host:80", ""] {
            assert!(HostPort::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn sections_name_the_field_the_value_and_what_was_expected() {
        let svc = service(
            "authority = \"web:80\"\nendpoints = [\"127.0.0.1:1\"]\nretry = { max_retries = 99 }",
        );
        let outbound = OutboundConfig {
            services: Arc::new([svc]),
            ..OutboundConfig::default()
        };
        let e = outbound.validate().map_err(|e| e.within("outbound"));
        assert_eq!(
            e,
            Err(Invalid::new(
                "outbound.services[0].retry.max_retries",
                99,
                "expected 0 to 10"
            ))
        );

        let svc = service("authority = \"web:80\"\ndiscovery = \"file\"");
        let e = DiscoveryConfig::default().validate(&[svc], None);
        assert_eq!(e.map_err(|e| e.field), Err("file".to_owned()));

        let runtime = RuntimeConfig {
            threads: 4096,
            ..RuntimeConfig::default()
        };
        assert_eq!(
            runtime.validate().map_err(|e| e.value),
            Err("4096".to_owned())
        );
    }
}
