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
}

/// The destination API: endpoint sets from the Kubernetes API, served to proxies.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationConfig {
    /// The API server's URL; by default, in-cluster configuration or `KUBECONFIG`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_api: Option<String>,
    /// The cluster's DNS domain, in service names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
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
    /// The audience the tokens must be for.
    #[serde(default = "default_audience")]
    pub audience: String,
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
        if identity.leaf_lifetime < Duration::from_secs(1) {
            let lifetime = core_config::format_duration(identity.leaf_lifetime);
            return Err(
                Invalid::new("identity.leaf_lifetime", lifetime, "expected at least 1s").into(),
            );
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
