//! Workload identity and mutual TLS.
//!
//! - [`cert`]: PEM files, trust anchors (a bundle of one or several roots, so a root rotates
//!   by overlap), and the identity a certificate names;
//! - [`ca`]: the CA. An issuer loaded from files and reloaded when they change (cert-manager
//!   rotation), leaves signed from CSRs (24 h, ECDSA P-256, the identity's SANs only), and the
//!   bootstrap of a new install's trust anchor and issuer;
//! - [`local`]: the workload's identity. A key made in memory, a CSR at start, renewal at 70%
//!   of the remaining lifetime, the rustls configurations that present the certificate;
//! - [`api`]: the identity service's gRPC API and the client the proxy certifies with;
//! - [`accept`]: the inbound side. Peek the ClientHello; terminate our SNI with a client
//!   certificate required, pass another SNI through, hand plaintext on;
//! - [`connect`]: the outbound side. Present our certificate, verify the server is exactly the
//!   identity discovery named; ALPN h2 or http/1.1;
//! - [`serving`], [`sni`]: certificates for the outside world (a webhook's, an ingress's),
//!   from PEM files reloaded when they change, chosen by SNI;
//! - [`metrics`]: the certificate's expiry, renewals and failures.
//!
//! Identities themselves ([`mesh_core::identity::Identity`]) live in mesh-core, because the
//! balancer's endpoints and the metrics' labels carry them too.
//!
//! # Choices
//!
//! - TLS 1.3 only, between proxies that we both write: no downgrade to negotiate.
//! - One crypto backend, *ring*, on rustls, rcgen and kube alike. aws-lc-rs is rustls's
//!   default and does P-256 at about the same speed, but ring builds in a fraction of the time
//!   with no CMake, adds less to the binary and the RSS, and its P-256 is assembly on x86-64
//!   and aarch64 (measured: see the bench's `--handshakes` mode).
//! - The server name a client verifies is the identity's DNS-style name. webpki checks it
//!   against the DNS SAN, so "a valid chain for another identity" fails the standard check and
//!   no custom verifier (a classic source of holes) is needed.
//! - The certificate in force sits in an `ArcSwap` read by rustls's resolvers: rotation swaps
//!   a pointer, and handshakes never take a lock.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use std::time::Duration;
//! use mesh_core::client::{ClientConfig, HttpClient};
//! use mesh_core::identity::Identity;
//! use mesh_tls::{cert::TrustAnchors, local::LocalIdentity, metrics::IdentityMetrics};
//!
//! let me = Identity::parse("spiffe://cluster.local/ns/demo/sa/web")?;
//! let trust = TrustAnchors::from_pem_file(Path::new("roots.pem"))?;
//! let identity = LocalIdentity::new(me, trust)?;
//! let ca = mesh_tls::local::local_ca(
//!     Path::new("issuer.crt"),
//!     Path::new("issuer.key"),
//!     Duration::from_secs(86400),
//!     identity.trust_anchors(),
//! )?;
//! tokio::spawn(identity.clone().renew_forever(ca, IdentityMetrics::default()));
//! identity.ready().await;
//! // Endpoints with an identity are now reached over mutual TLS.
//! let client = HttpClient::new(&ClientConfig::default()).with_tls(mesh_tls::connect::connector(&identity));
//! let api = Identity::parse("spiffe://cluster.local/ns/demo/sa/api")?;
//! let _endpoint = client.meshed_endpoint("10.0.0.7:8080".parse()?, Some(&api));
//! # Ok(())
//! # }
//! ```

pub mod accept;
pub mod api;
pub mod ca;
pub mod cert;
pub mod connect;
pub mod local;
pub mod metrics;
pub mod serving;
pub mod sni;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// What went wrong with identity or TLS; every message names the file, certificate or
/// identity concerned.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why (in the message, not as a source, so that it is not printed twice).
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A certificate is malformed or does not fit.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The issuer cannot sign.
    #[error("issuer: {0}")]
    Issuer(String),
    /// A CSR is malformed or asks for what it may not have.
    #[error("CSR: {0}")]
    Csr(String),
    /// A key could not be made or used.
    #[error("key: {0}")]
    Key(String),
    /// A TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The identity service refused or could not be reached.
    #[error("certify: {0}")]
    Certify(String),
}

impl TlsError {
    fn file(path: &Path, source: std::io::Error) -> Self {
        TlsError::File {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The crypto provider of every TLS configuration in the mesh.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
