//! The proxy's one typed configuration: a TOML file, every key overridable from the
//! environment (`MESH_OUTBOUND__LISTEN=127.0.0.1:4140`), defaults that suit a sidecar.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_balance::BalancerConfig;
use mesh_core::client::ClientConfig;
use mesh_core::config::{self as core_config, ConfigError, Source};
use mesh_core::endpoint::Authority;
use mesh_core::identity::Identity;
use mesh_core::server::ServerConfig;
use serde::{Deserialize, Serialize};

/// Default admin listener (`/ready`, `/live`, `/config`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:4191";
/// Default outbound listener: the app's calls to other services.
pub const DEFAULT_OUTBOUND_LISTEN: &str = "127.0.0.1:4140";
/// Default inbound listener: other services' calls to the app.
pub const DEFAULT_INBOUND_LISTEN: &str = "0.0.0.0:4143";
/// How long protocol detection waits for a client's first bytes.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after SIGTERM.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Everything mesh-proxy reads at start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log filter, in `tracing` env-filter syntax (`info`, `mesh_proxy=debug`).
    pub log: String,
    /// `plain` or `json`.
    pub log_format: LogFormat,
    /// The workload this proxy speaks for: the source of its outbound requests and the
    /// destination of its inbound ones, in metrics.
    pub workload: WorkloadConfig,
    /// What is measured.
    pub metrics: MetricsConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// The outbound listener and the services it knows.
    pub outbound: OutboundConfig,
    /// The inbound listener, when the proxy fronts an app.
    pub inbound: Option<InboundConfig>,
    /// The workload's identity and mutual TLS; without it every hop is plaintext.
    pub identity: Option<IdentityConfig>,
    /// Where endpoints come from, for services whose `discovery` is not `static`.
    pub discovery: DiscoveryConfig,
    /// Threads and shutdown.
    pub runtime: RuntimeConfig,
    /// HTTP server settings of every listener.
    pub server: ServerConfig,
    /// HTTP client settings toward every endpoint.
    pub client: ClientConfig,
}

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
    /// The services, by authority.
    pub services: Vec<ServiceConfig>,
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
    /// How requests are balanced over the endpoints.
    #[serde(default)]
    pub balancer: BalancerConfig,
    /// The request timeout, and whether gRPC's `grpc-timeout` is honoured (it is by default).
    #[serde(default)]
    pub timeout: mesh_core::timeout::TimeoutConfig,
    /// Retries of failed requests, within a budget; none without this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<mesh_core::retry::RetryPolicy>,
    /// Routes: matches that send requests to weighted backends (canaries, A/B); a request no
    /// route matches goes to this service's own endpoints. Reloaded live with the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::routes::RouteConfig>,
    /// The workload behind the service, for metrics.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub workload: String,
    /// The namespace of that workload, for metrics.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
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

/// The destination API.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationDiscoveryConfig {
    /// The controller's address; by default `identity.controller`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub controller: Option<SocketAddr>,
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
    /// Who may call the app, unless `ports` says otherwise for the app's port. Default:
    /// `all-authenticated` when the proxy has an identity, `all-unauthenticated` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
    /// Policies of particular app ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortPolicy>,
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
    /// A PEM bundle of the roots that vouch for every workload (one or several).
    pub trust_anchors: PathBuf,
    /// `controller` (default) or `local`.
    #[serde(default = "default_identity_mode")]
    pub mode: IdentityMode,
    /// The identity service's address (controller mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<SocketAddr>,
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

impl Default for Config {
    fn default() -> Self {
        Self {
            log: "info".to_owned(),
            log_format: LogFormat::Plain,
            workload: WorkloadConfig::default(),
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
            outbound: OutboundConfig::default(),
            inbound: None,
            identity: None,
            discovery: DiscoveryConfig::default(),
            runtime: RuntimeConfig::default(),
            server: ServerConfig::default(),
            client: ClientConfig::default(),
        }
    }
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
            services: Vec::new(),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl Config {
    /// Loads the file (or only defaults), applies `MESH_*` variables, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let source = path.map_or(Source::None, Source::File);
        let config: Self = core_config::load(source)?;
        config.validate()?;
        Ok(config)
    }

    /// Loads TOML text, applies `MESH_*` variables, and validates.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        let config: Self = core_config::load(Source::Toml(toml))?;
        config.validate()?;
        Ok(config)
    }

    /// Loads TOML text with these environment variables instead of the process's.
    pub fn from_toml_str_with_env(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let config: Self = core_config::load_with_env(Source::Toml(toml), env)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: authorities, endpoint lists, listeners.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, value: String, message: &str| ConfigError::Invalid {
            key,
            value: format!(" = {value}"),
            message: message.to_owned(),
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(invalid(
                "log".into(),
                format!("{:?}", self.log),
                &e.to_string(),
            ));
        }
        if self.metrics.idle_series_ttl < Duration::from_secs(1)
            || self.metrics.idle_series_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(invalid(
                "metrics.idle_series_ttl".into(),
                core_config::format_duration(self.metrics.idle_series_ttl),
                "expected 1s to 7 days",
            ));
        }
        if self.runtime.threads > 1024 {
            return Err(invalid(
                "runtime.threads".into(),
                self.runtime.threads.to_string(),
                "expected at most 1024 (0 means one per core)",
            ));
        }
        if let Err((field, message)) = self.server.validate() {
            return Err(invalid(
                format!("server.{field}"),
                server_value(&self.server, field),
                &message,
            ));
        }
        if let Err((field, message)) = self.client.validate() {
            return Err(invalid(
                format!("client.{field}"),
                client_value(&self.client, field),
                &message,
            ));
        }
        if let Some(identity) = &self.identity {
            let missing = |key: &str, mode: &str| {
                invalid(
                    format!("identity.{key}"),
                    "(missing)".into(),
                    &format!("mode = \"{mode}\" needs it"),
                )
            };
            match identity.mode {
                IdentityMode::Local => {
                    if identity.issuer_cert.is_none() {
                        return Err(missing("issuer_cert", "local"));
                    }
                    if identity.issuer_key.is_none() {
                        return Err(missing("issuer_key", "local"));
                    }
                }
                IdentityMode::Controller => {
                    if identity.controller.is_none() {
                        return Err(missing("controller", "controller"));
                    }
                    if identity.controller_identity.is_none() {
                        return Err(missing("controller_identity", "controller"));
                    }
                    if identity.token_file.is_none() {
                        return Err(missing("token_file", "controller"));
                    }
                }
            }
            if identity.lifetime < Duration::from_secs(1) {
                return Err(invalid(
                    "identity.lifetime".into(),
                    core_config::format_duration(identity.lifetime),
                    "expected at least 1s",
                ));
            }
        }
        if let Some(inbound) = &self.inbound
            && self.identity.is_none()
        {
            let needs_identity = |p: &Policy| p != &Policy::Named(NamedPolicy::AllUnauthenticated);
            if let Some(policy) = inbound.policy.as_ref().filter(|p| needs_identity(p)) {
                return Err(invalid(
                    "inbound.policy".into(),
                    format!("{policy:?}"),
                    "only a proxy with an identity (an [identity] section) can authenticate callers",
                ));
            }
            if let Some(i) = inbound.ports.iter().position(|p| needs_identity(&p.policy)) {
                return Err(invalid(
                    format!("inbound.ports[{i}].policy"),
                    format!("{:?}", inbound.ports[i].policy),
                    "only a proxy with an identity (an [identity] section) can authenticate callers",
                ));
            }
        }
        if let Err((field, message)) = self.discovery.dns.validate() {
            return Err(invalid(
                format!("discovery.dns.{field}"),
                "(see the value)".into(),
                &message,
            ));
        }
        let mut seen = HashSet::new();
        for (i, svc) in self.outbound.services.iter().enumerate() {
            let key = |field: &str| format!("outbound.services[{i}].{field}");
            let authority = Authority::parse(&svc.authority, 80).map_err(|e| {
                invalid(
                    key("authority"),
                    format!("{:?}", svc.authority),
                    &e.to_string(),
                )
            })?;
            if !seen.insert(authority.clone()) {
                return Err(invalid(
                    key("authority"),
                    format!("{:?}", svc.authority),
                    "this service is already configured",
                ));
            }
            if let Err((field, message)) = svc.timeout.validate() {
                return Err(invalid(
                    key(&format!("timeout.{field}")),
                    "(see the value)".into(),
                    &message,
                ));
            }
            if let Some(Err((field, message))) = svc.retry.as_ref().map(|r| r.validate()) {
                return Err(invalid(
                    key(&format!("retry.{field}")),
                    "(see the value)".into(),
                    &message,
                ));
            }
            if let Err((field, message)) = svc.balancer.validate() {
                return Err(invalid(
                    key(&format!("balancer.{field}")),
                    "(see the value)".into(),
                    message,
                ));
            }
            match svc.discovery {
                DiscoverySource::Static if svc.endpoints.is_empty() => {
                    return Err(invalid(
                        key("endpoints"),
                        "[]".into(),
                        "a static service needs at least one endpoint",
                    ));
                }
                DiscoverySource::Static => {}
                other if !svc.endpoints.is_empty() => {
                    return Err(invalid(
                        key("endpoints"),
                        format!("{} endpoint(s)", svc.endpoints.len()),
                        &format!(
                            "a service with discovery = \"{}\" takes its endpoints from that source",
                            other.as_str()
                        ),
                    ));
                }
                _ if svc.opaque => {
                    return Err(invalid(
                        key("discovery"),
                        format!("\"{}\"", svc.discovery.as_str()),
                        "opaque services take static endpoints",
                    ));
                }
                DiscoverySource::File if self.discovery.file.is_none() => {
                    return Err(invalid(
                        "discovery.file".into(),
                        "(missing)".into(),
                        &format!("service {:?} uses discovery = \"file\"", svc.authority),
                    ));
                }
                DiscoverySource::Destination
                    if self.discovery.destination.controller.is_none()
                        && self.identity.as_ref().and_then(|i| i.controller).is_none() =>
                {
                    return Err(invalid(
                        "discovery.destination.controller".into(),
                        "(missing)".into(),
                        &format!(
                            "service {:?} uses discovery = \"destination\"; set it or identity.controller",
                            svc.authority
                        ),
                    ));
                }
                _ => {}
            }
            match (svc.opaque, svc.listen) {
                (true, None) => {
                    return Err(invalid(
                        key("listen"),
                        "(missing)".into(),
                        "an opaque service needs a listen address of its own",
                    ));
                }
                (false, Some(listen)) => {
                    return Err(invalid(
                        key("listen"),
                        listen.to_string(),
                        "only opaque services have a listener of their own (set opaque = true)",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The value of a server setting, for an error message.
fn server_value(c: &ServerConfig, field: &str) -> String {
    match field {
        "header_read_timeout" => core_config::format_duration(c.header_read_timeout),
        "max_header_bytes" => c.max_header_bytes.to_string(),
        "max_concurrent_streams" => c.max_concurrent_streams.to_string(),
        "initial_stream_window" => c.initial_stream_window.to_string(),
        "initial_connection_window" => c.initial_connection_window.to_string(),
        "keep_alive_interval" => core_config::format_duration(c.keep_alive_interval),
        _ => String::new(),
    }
}

/// The value of a client setting, for an error message.
fn client_value(c: &ClientConfig, field: &str) -> String {
    match field {
        "connect_timeout" => core_config::format_duration(c.connect_timeout),
        "idle_timeout" => core_config::format_duration(c.idle_timeout),
        "keep_alive_interval" => core_config::format_duration(c.keep_alive_interval),
        "initial_stream_window" => c.initial_stream_window.to_string(),
        "initial_connection_window" => c.initial_connection_window.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[admin]
listen = "127.0.0.1:4191"
[outbound]
listen = "127.0.0.1:4140"
[[outbound.services]]
authority = "greeter.demo.svc.cluster.local:50051"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
[inbound]
listen = "127.0.0.1:4143"
app = "127.0.0.1:8080"
"#;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn the_documented_shape_loads() {
        let c = Config::from_toml_str_with_env(EXAMPLE, no_env()).unwrap();
        assert_eq!(c.outbound.services.len(), 1);
        assert_eq!(c.outbound.services[0].endpoints.len(), 3);
        let named = EXAMPLE.replace(
            "\"127.0.0.1:9002\"",
            "{ addr = \"127.0.0.1:9002\", pod = \"greeter-1\" }",
        );
        let c = Config::from_toml_str_with_env(&named, no_env()).unwrap();
        let endpoint = c.outbound.services[0].endpoints[1].endpoint();
        assert_eq!(endpoint.label("pod"), Some("greeter-1"));
        assert_eq!(endpoint.addr, addr("127.0.0.1:9002"));
        assert_eq!(
            c.inbound.as_ref().map(|i| i.app),
            Some(addr("127.0.0.1:8080"))
        );
        assert_eq!(c.outbound.detect_timeout, DEFAULT_DETECT_TIMEOUT);
    }

    #[test]
    fn environment_overrides_keys() {
        let env = vec![
            (
                "MESH_OUTBOUND__LISTEN".to_owned(),
                "127.0.0.1:5140".to_owned(),
            ),
            ("MESH_RUNTIME__THREADS".to_owned(), "1".to_owned()),
            ("MESH_OUTBOUND__DETECT_TIMEOUT".to_owned(), "2s".to_owned()),
        ];
        let c = Config::from_toml_str_with_env(EXAMPLE, env).unwrap();
        assert_eq!(c.outbound.listen, addr("127.0.0.1:5140"));
        assert_eq!(c.runtime.threads, 1);
        assert_eq!(c.outbound.detect_timeout, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_the_key() {
        let bad = EXAMPLE.replace("127.0.0.1:9002", "not-an-address");
        let e = Config::from_toml_str_with_env(&bad, no_env())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("outbound.services") && e.contains("endpoints"),
            "{e}"
        );

        let bad = EXAMPLE.replace("[admin]", "[admin]\nlisten_port = 1");
        let e = Config::from_toml_str_with_env(&bad, no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_port"), "{e}");

        let bad = EXAMPLE.replace("greeter.demo.svc.cluster.local:50051", "bad host:1");
        let e = Config::from_toml_str_with_env(&bad, no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("outbound.services[0].authority"), "{e}");

        let env = vec![("MESH_RUNTIME__THREADS".to_owned(), "many".to_owned())];
        let e = Config::from_toml_str_with_env(EXAMPLE, env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtime.threads") && e.contains("many"), "{e}");
    }

    #[test]
    fn out_of_range_settings_are_named() {
        let env = vec![(
            "MESH_CLIENT__KEEP_ALIVE_INTERVAL".to_owned(),
            "0s".to_owned(),
        )];
        let e = Config::from_toml_str_with_env(EXAMPLE, env)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("client.keep_alive_interval") && e.contains("0s"),
            "{e}"
        );
        let env = vec![(
            "MESH_SERVER__INITIAL_STREAM_WINDOW".to_owned(),
            "4294967295".to_owned(),
        )];
        let e = Config::from_toml_str_with_env(EXAMPLE, env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.initial_stream_window"), "{e}");
    }

    #[test]
    fn opaque_services_need_a_listener() {
        let bad = format!(
            "{EXAMPLE}\n[[outbound.services]]\nauthority = \"db:5432\"\nendpoints = [\"127.0.0.1:5432\"]\nopaque = true\n"
        );
        let bad = bad.replace(
            "[inbound]\nlisten = \"127.0.0.1:4143\"\napp = \"127.0.0.1:8080\"\n",
            "",
        );
        let e = Config::from_toml_str_with_env(&bad, no_env())
            .unwrap_err()
            .to_string();
        assert!(e.contains("outbound.services[1].listen"), "{e}");
    }
}
