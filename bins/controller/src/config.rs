//! The controller's configuration: a TOML file, every key overridable from the environment
//! (`MESH__IDENTITY__LEAF_LIFETIME=24h`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_core::config::{self as core_config, ConfigError, Invalid, Source};
use mesh_core::identity::Identity;
use serde::{Deserialize, Serialize};

/// The identity service's default port.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// Everything mesh-controller reads at start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Log filter.
    #[serde(default = "default_log")]
    pub log: String,
    /// Where the identity service listens (gRPC over TLS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The CA.
    pub identity: IdentityConfig,
    /// How workloads prove who they are.
    pub tokens: TokensConfig,
    /// The destination API (endpoints from Kubernetes); off without this section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<DestinationConfig>,
    /// What one client may hold of the server.
    #[serde(default)]
    pub server: ServerConfig,
}

/// Limits of the gRPC server: what one hostile or broken client can hold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Connections held at once; past it a new one is closed at once.
    pub max_connections: usize,
    /// Connections one client address holds at once (a proxy needs one or two).
    pub max_connections_per_client: usize,
    /// Streams (calls, `Resolve` watches included) open on one connection.
    pub max_concurrent_streams: u32,
    /// `Resolve` streams one client address holds at once, over all its connections.
    pub max_streams_per_client: usize,
    /// How long a call may take to its answer (a `Resolve` stream's head; the stream itself
    /// lasts as long as the client follows it).
    #[serde(with = "mesh_core::config::duration")]
    pub request_timeout: Duration,
    /// HTTP/2 PING to a silent client this often; no answer in as long again closes it.
    #[serde(with = "mesh_core::config::duration")]
    pub keep_alive_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_client: 64,
            max_concurrent_streams: 1_000,
            max_streams_per_client: 4_000,
            request_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(20),
        }
    }
}

/// The destination API: endpoint sets from the Kubernetes API, served to proxies that prove
/// a mesh identity (mTLS).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationConfig {
    /// The API server's URL; by default, in-cluster configuration or `KUBECONFIG`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_api: Option<String>,
    /// The cluster's DNS domain, in service names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    /// Namespaces watched at once for `Resolve` (three watches each); past it a name in
    /// another namespace is refused (`RESOURCE_EXHAUSTED`) until one is released.
    pub max_namespaces: usize,
    /// A Service no proxy follows is released after about this long, and its namespace's
    /// watches with the namespace's last Service.
    #[serde(with = "mesh_core::config::duration")]
    pub release_after: Duration,
}

impl Default for DestinationConfig {
    fn default() -> Self {
        let k8s = mesh_discovery::kubernetes::KubernetesConfig::default();
        Self {
            kubernetes_api: None,
            cluster_domain: None,
            max_namespaces: k8s.max_namespaces,
            release_after: k8s.release_after,
        }
    }
}

/// The CA's files and the leaves it signs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The trust domain of every identity issued.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The trust anchors (PEM bundle) the issuer chains to.
    pub trust_anchors: PathBuf,
    /// The issuer's certificate (PEM); reloaded when it changes.
    pub issuer_cert: PathBuf,
    /// The issuer's key (PEM); reloaded when it changes.
    pub issuer_key: PathBuf,
    /// How long leaves live.
    #[serde(
        default = "default_leaf_lifetime",
        with = "mesh_core::config::duration"
    )]
    pub leaf_lifetime: Duration,
    /// The files are watched; this slow poll catches changes the watcher misses.
    #[serde(default = "default_issuer_poll", with = "mesh_core::config::duration")]
    pub issuer_poll: Duration,
    /// The controller's own identity, which it serves with; by default
    /// `spiffe://<trust_domain>/ns/mesh-system/sa/mesh-controller`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Identity>,
}

impl IdentityConfig {
    /// The controller's identity: `name`, or the default in the trust domain.
    pub fn name(&self) -> Result<Identity, mesh_core::identity::IdentityError> {
        match &self.name {
            Some(name) => Ok(name.clone()),
            None => Identity::new(
                &self.trust_domain,
                DEFAULT_NAMESPACE,
                DEFAULT_SERVICE_ACCOUNT,
            ),
        }
    }
}

/// The namespace of the controller's default identity.
pub const DEFAULT_NAMESPACE: &str = "mesh-system";
/// The service account of the controller's default identity.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "mesh-controller";

/// Where tokens are checked.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    /// A file of `<identity> <token>` lines, read at every request (outside Kubernetes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Check projected ServiceAccount tokens with TokenReviews against the Kubernetes API.
    #[serde(default)]
    pub kubernetes: bool,
    /// The API server's URL; by default, in-cluster configuration or `KUBECONFIG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_api: Option<String>,
    /// The audience the tokens must be for; a review that does not confirm it is refused.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// TokenReviews sent per second at most, on average: a flood of garbage tokens costs the
    /// API server no more than this (past it callers get `UNAVAILABLE` and retry).
    #[serde(default = "default_reviews_per_second")]
    pub reviews_per_second: u32,
    /// TokenReviews that may be sent at once after a quiet spell.
    #[serde(default = "default_review_burst")]
    pub review_burst: u32,
    /// How long a review's verdict is reused for the same token (a refusal: a tenth of it).
    #[serde(
        default = "default_review_cache_ttl",
        with = "mesh_core::config::duration"
    )]
    pub review_cache_ttl: Duration,
}

fn default_reviews_per_second() -> u32 {
    20
}

fn default_review_burst() -> u32 {
    40
}

fn default_review_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_log() -> String {
    "info".to_owned()
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
        .parse()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8080)))
}

fn default_trust_domain() -> String {
    "cluster.local".to_owned()
}

fn default_leaf_lifetime() -> Duration {
    mesh_tls::ca::DEFAULT_LEAF_LIFETIME
}

fn default_issuer_poll() -> Duration {
    Duration::from_secs(30)
}

/// The audience projected tokens are minted for.
pub const DEFAULT_AUDIENCE: &str = "identity.mesh";

fn default_audience() -> String {
    DEFAULT_AUDIENCE.to_owned()
}

impl Config {
    /// Loads the file, applies `MESH__*` variables, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config: Self = core_config::load(Source::File(path))?;
        config.validate()?;
        Ok(config)
    }

    /// Loads TOML text, applies `MESH__*` variables, and validates.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        let config: Self = core_config::load(Source::Toml(toml))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot; the error names the key, the value and what was
    /// expected (mesh-core's one validation error).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tokens.file.is_none() && !self.tokens.kubernetes {
            return Err(Invalid::new(
                "tokens",
                "(empty)",
                "set tokens.file, or tokens.kubernetes = true",
            )
            .into());
        }
        let identity = &self.identity;
        // A lifetime past a year is refused, not left to overflow the time arithmetic.
        core_config::check_duration(
            "identity.leaf_lifetime",
            identity.leaf_lifetime,
            Duration::from_secs(1),
            Duration::from_secs(366 * 24 * 3600),
        )?;
        core_config::check_setting_duration("identity.issuer_poll", identity.issuer_poll)?;
        let server = &self.server;
        core_config::check_range(
            "server.max_connections",
            server.max_connections,
            1,
            1_000_000,
        )?;
        core_config::check_range(
            "server.max_connections_per_client",
            server.max_connections_per_client,
            1,
            server.max_connections,
        )?;
        core_config::check_range(
            "server.max_concurrent_streams",
            server.max_concurrent_streams,
            1,
            u32::MAX,
        )?;
        core_config::check_range(
            "server.max_streams_per_client",
            server.max_streams_per_client,
            1,
            usize::MAX,
        )?;
        core_config::check_setting_duration("server.request_timeout", server.request_timeout)?;
        core_config::check_setting_duration(
            "server.keep_alive_interval",
            server.keep_alive_interval,
        )?;
        core_config::check_range(
            "tokens.reviews_per_second",
            self.tokens.reviews_per_second,
            1,
            100_000,
        )?;
        core_config::check_range("tokens.review_burst", self.tokens.review_burst, 1, 100_000)?;
        core_config::check_setting_duration(
            "tokens.review_cache_ttl",
            self.tokens.review_cache_ttl,
        )?;
        if let Some(d) = &self.destination {
            core_config::check_range("destination.max_namespaces", d.max_namespaces, 1, 100_000)?;
            core_config::check_duration(
                "destination.release_after",
                d.release_after,
                Duration::from_millis(100),
                core_config::MAX_SETTING_DURATION,
            )?;
        }
        if Identity::new(&identity.trust_domain, "a", "b").is_err() {
            let domain = format!("{:?}", identity.trust_domain);
            return Err(Invalid::new(
                "identity.trust_domain",
                domain,
                "expected a lowercase DNS name",
            )
            .into());
        }
        if let Some(name) = &identity.name
            && name.trust_domain() != identity.trust_domain
        {
            return Err(Invalid::new(
                "identity.name",
                format!("{:?}", name.uri()),
                format!(
                    "expected an identity in the trust domain {:?}",
                    identity.trust_domain
                ),
            )
            .into());
        }
        Ok(())
    }
}
