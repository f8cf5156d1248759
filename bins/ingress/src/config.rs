//! mesh-ingress's one typed configuration: a TOML file, every key overridable from the
//! environment (`MESH__HTTPS__LISTEN=0.0.0.0:8443`). It is made of mesh-stack's sections:
//! the sidecar's for services, identity, discovery, server and client, the ingress's for the
//! listeners and the edge.

use std::path::Path;

use mesh_core::client::ClientConfig;
use mesh_core::config::{self as core_config, ConfigError, Invalid, Source};
use mesh_core::server::ServerConfig;
use serde::{Deserialize, Serialize};

pub use mesh_route::RouteConfig;
pub use mesh_stack::config::*;
pub use mesh_stack::ingress::{CertificateConfig, EdgeConfig, HttpConfig, HttpsConfig};

/// Everything mesh-ingress reads at start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log filter, in `tracing` env-filter syntax.
    pub log: String,
    /// `plain` or `json`.
    pub log_format: LogFormat,
    /// The workload the ingress is: the source of its requests into the mesh, in metrics.
    pub workload: WorkloadConfig,
    /// What is measured.
    pub metrics: MetricsConfig,
    /// The admin listener (`/metrics`, `/ready`, `/live`, `/config`).
    pub admin: AdminConfig,
    /// The TLS listener and its certificates.
    pub https: Option<HttpsConfig>,
    /// The plaintext listener.
    pub http: Option<HttpConfig>,
    /// What the edge does to each request: forwarded headers, request ids, limits, the
    /// access log, gRPC-Web.
    pub edge: EdgeConfig,
    /// Host, path, header, method and gRPC matches to weighted services; reloaded live.
    pub routes: Vec<RouteConfig>,
    /// The mesh services the routes send to, with their discovery, balancer, timeout and
    /// retries (the sidecar's `[[outbound.services]]`).
    pub services: Vec<ServiceConfig>,
    /// The ingress's own identity, with which it speaks mutual TLS into the mesh.
    pub identity: Option<IdentityConfig>,
    /// On Kubernetes: the Gateway this ingress implements, whose HTTPS listeners' Secrets and
    /// attached HTTPRoutes are watched and served beside the file's.
    pub kubernetes: Option<GatewayConfig>,
    /// Where endpoints come from, for services whose `discovery` is not `static`.
    pub discovery: DiscoveryConfig,
    /// Threads and shutdown.
    pub runtime: RuntimeConfig,
    /// HTTP server settings of both listeners (header limits, connections, timeouts).
    pub server: ServerConfig,
    /// HTTP client settings toward every endpoint.
    pub client: ClientConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log: "info".to_owned(),
            log_format: LogFormat::Plain,
            workload: WorkloadConfig {
                name: "mesh-ingress".to_owned(),
                namespace: String::new(),
            },
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
            https: None,
            http: None,
            edge: EdgeConfig::default(),
            routes: Vec::new(),
            services: Vec::new(),
            identity: None,
            kubernetes: None,
            discovery: DiscoveryConfig::default(),
            runtime: RuntimeConfig::default(),
            server: ServerConfig::default(),
            client: ClientConfig::default(),
        }
    }
}

/// The Gateway API on Kubernetes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The Gateway, `namespace/name`.
    pub gateway: String,
    /// Where the endpoints of the Services that routes name come from: `destination` (the
    /// controller) or `kubernetes` (the API server directly).
    #[serde(default = "destination")]
    pub discovery: DiscoverySource,
    /// Also reach endpoints without an identity, in plaintext (by default the ingress speaks
    /// only mutual TLS into the mesh).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
}

fn destination() -> DiscoverySource {
    DiscoverySource::Destination
}

impl GatewayConfig {
    /// The Gateway named.
    pub fn gateway(&self) -> Result<mesh_stack::gateway::GatewayRef, Invalid> {
        self.gateway
            .parse()
            .map_err(|e: String| Invalid::new("gateway", format!("{:?}", self.gateway), e))
    }

    /// The service a route's backend becomes, but its authority.
    pub fn template(&self) -> ServiceConfig {
        ServiceConfig {
            discovery: self.discovery,
            plaintext: self.plaintext,
            ..ServiceConfig::named("gateway-api:80")
        }
    }
}

impl Config {
    /// Loads the file (or only defaults), applies `MESH__*` variables, and validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let source = path.map_or(Source::None, Source::File);
        let config: Self = core_config::load(source)?;
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

    /// Checks what types alone cannot; the error names the key in full.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Err(e) = mesh_stack::log::check_filter(&self.log) {
            return Err(Invalid::new("log", format!("{:?}", self.log), e).into());
        }
        if self.https.is_none() && self.http.is_none() {
            return Err(Invalid::new(
                "https",
                "none",
                "an [https] or an [http] listener (or both)",
            )
            .into());
        }
        if let Some(https) = &self.https {
            if https.certificates.is_empty() && self.kubernetes.is_none() {
                return Err(Invalid::new(
                    "https.certificates",
                    "[]",
                    "at least one certificate (cert and key files), or a [kubernetes] gateway whose listeners name Secrets",
                )
                .into());
            }
            let defaults = https.certificates.iter().filter(|c| c.default).count();
            if defaults > 1 {
                return Err(Invalid::new(
                    "https.certificates",
                    format!("{defaults} defaults"),
                    "at most one certificate with default = true",
                )
                .into());
            }
            core_config::check_setting_duration("handshake_timeout", https.handshake_timeout)
                .map_err(|e| e.within("https"))?;
        }
        if let Some(http) = &self.http
            && http.redirect_to_https
            && self.https.is_none()
        {
            return Err(Invalid::new(
                "http.redirect_to_https",
                "true",
                "an [https] listener to redirect to",
            )
            .into());
        }
        self.edge.validate().map_err(|e| e.within("edge"))?;
        self.metrics.validate().map_err(|e| e.within("metrics"))?;
        self.runtime.validate().map_err(|e| e.within("runtime"))?;
        self.server.validate().map_err(|e| e.within("server"))?;
        self.client.validate().map_err(|e| e.within("client"))?;
        if let Some(identity) = &self.identity {
            identity.validate().map_err(|e| e.within("identity"))?;
        }
        // The services are checked as the sidecar's are (and none twice).
        let services = OutboundConfig {
            services: self.services.as_slice().into(),
            ..OutboundConfig::default()
        };
        services.validate()?;
        for (i, svc) in self.services.iter().enumerate() {
            if svc.opaque {
                return Err(Invalid::new(
                    format!("services[{i}].opaque"),
                    "true",
                    "HTTP services only: the ingress routes HTTP",
                )
                .into());
            }
        }
        let mut services = self.services.clone();
        if let Some(k8s) = &self.kubernetes {
            k8s.gateway().map_err(|e| e.within("kubernetes"))?;
            if !matches!(
                k8s.discovery,
                DiscoverySource::Destination | DiscoverySource::Kubernetes
            ) {
                return Err(Invalid::new(
                    "kubernetes.discovery",
                    k8s.discovery.as_str(),
                    "destination or kubernetes",
                )
                .into());
            }
            services.push(k8s.template());
        }
        self.discovery
            .validate(&services, self.identity.as_ref())
            .map_err(|e| e.within("discovery"))?;
        Ok(())
    }
}
