//! The workload's own identity: a key made in memory, the certificate it holds, the rustls
//! configurations that present it, and the loop that keeps it fresh.
//!
//! The key never leaves the process. At start the proxy sends a CSR; until a certificate
//! arrives it is not ready. It renews at 70% of the remaining lifetime, at least
//! [`MIN_REFRESH`] apart (unless the certificate would expire first: then at 90% of what is
//! left). When the CA cannot be reached it keeps serving with the certificate it holds and
//! retries with backoff, faster as the expiry nears; an issued chain that does not verify against the trust anchors is
//! refused and the old certificate kept.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use mesh_core::identity::Identity;
use rcgen::KeyPair;
use rustls::client::ResolvesClientCert;
use rustls::client::danger::ServerCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::ca::{self, Issued, IssuerFiles};
use crate::cert::{self, TrustAnchors};
use crate::metrics::IdentityMetrics;
use crate::{TlsError, provider};

/// The shortest pause between two renewals.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// The first pause after a failed renewal; it doubles up to [`MAX_RETRY`].
pub const MIN_RETRY: Duration = Duration::from_millis(500);
/// The longest pause between renewal attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// What issues our certificate: the controller's identity service, or a local issuer.
pub trait Certify: fmt::Debug + Send + Sync + 'static {
    /// Sends the CSR (DER) for `identity`; returns the issued chain.
    fn certify<'a>(
        &'a self,
        identity: &'a Identity,
        csr: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<Issued, TlsError>> + Send + 'a>>;
}

/// Signs with an issuer loaded from files (development, and the controller's own identity).
#[derive(Debug)]
pub struct LocalCa {
    issuer: Arc<IssuerFiles>,
    lifetime: Duration,
}

impl LocalCa {
    /// Signs leaves of `lifetime` with `issuer`.
    pub fn new(issuer: Arc<IssuerFiles>, lifetime: Duration) -> Self {
        Self { issuer, lifetime }
    }
}

impl Certify for LocalCa {
    fn certify<'a>(
        &'a self,
        identity: &'a Identity,
        csr: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<Issued, TlsError>> + Send + 'a>> {
        Box::pin(async move {
            let issuer = self
                .issuer
                .current()
                .ok_or_else(|| TlsError::Issuer("no issuer loaded".into()))?;
            issuer.certify(identity, csr, self.lifetime, SystemTime::now())
        })
    }
}

/// The workload's identity and the certificate it holds. Cheap to clone.
#[derive(Clone)]
pub struct LocalIdentity {
    inner: Arc<Inner>,
}

struct Inner {
    name: Identity,
    key: KeyPair,
    signing_key: Arc<dyn SigningKey>,
    trust: TrustAnchors,
    store: Arc<CertStore>,
    server_verifier: Arc<dyn ServerCertVerifier>,
    ready: tokio::sync::watch::Sender<bool>,
    server: Arc<ServerConfig>,
    server_without_client_auth: Arc<ServerConfig>,
    server_optional_client_auth: Arc<ServerConfig>,
    client_h2: Arc<ClientConfig>,
    client_http1: Arc<ClientConfig>,
    client_opaque: Arc<ClientConfig>,
}

impl fmt::Debug for LocalIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalIdentity")
            .field("name", &self.inner.name)
            .field("ready", &*self.inner.ready.borrow())
            .finish()
    }
}

/// The certificate in force, read by every handshake (a lock-free load).
#[derive(Debug, Default)]
struct CertStore {
    current: ArcSwapOption<CertifiedKey>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

impl ResolvesClientCert for CertStore {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }

    fn has_certs(&self) -> bool {
        self.current.load().is_some()
    }
}

/// ALPN protocol ids.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol ids.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

impl LocalIdentity {
    /// A new identity `name` with a fresh ECDSA P-256 key, trusting `trust`, holding no
    /// certificate yet.
    pub fn new(name: Identity, trust: TrustAnchors) -> Result<Self, TlsError> {
        let provider = provider();
        let key =
            KeyPair::generate().map_err(|e| TlsError::Key(format!("cannot make a key: {e}")))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = provider
            .key_provider
            .load_private_key(der)
            .map_err(|e| TlsError::Key(format!("rustls refuses the key: {e}")))?;
        let store = Arc::new(CertStore::default());
        let tls13 = &[&rustls::version::TLS13];

        // Every verifier checks against the trust anchors in force at each handshake: a root
        // rotation (TrustAnchors::watch) needs no new configuration.
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls13)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(trust.client_verifier(true))
            .with_cert_resolver(store.clone());
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        let mut server_without_client_auth = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls13)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        server_without_client_auth.alpn_protocols = vec![ALPN_H2.to_vec()];
        let mut server_optional_client_auth = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(tls13)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(trust.client_verifier(false))
            .with_cert_resolver(store.clone());
        server_optional_client_auth.alpn_protocols = vec![ALPN_H2.to_vec()];

        let server_verifier = trust.server_verifier();
        let client = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, TlsError> {
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(tls13)
                .map_err(|e| TlsError::Config(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(server_verifier.clone())
                .with_client_cert_resolver(store.clone());
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok(Arc::new(config))
        };
        let (ready, _) = tokio::sync::watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                key,
                signing_key,
                server: Arc::new(server),
                server_without_client_auth: Arc::new(server_without_client_auth),
                server_optional_client_auth: Arc::new(server_optional_client_auth),
                client_h2: client(&[ALPN_H2])?,
                client_http1: client(&[ALPN_HTTP1])?,
                client_opaque: client(&[])?,
                trust,
                store,
                server_verifier,
                ready,
            }),
        })
    }

    /// Who we are.
    pub fn name(&self) -> &Identity {
        &self.inner.name
    }

    /// The trust anchors.
    pub fn trust_anchors(&self) -> &TrustAnchors {
        &self.inner.trust
    }

    /// A CSR for our identity, signed by our key.
    pub fn csr(&self) -> Result<Vec<u8>, TlsError> {
        ca::csr(&self.inner.name, &self.inner.key)
    }

    /// Whether we hold a certificate that has not expired.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    /// Follows [`is_ready`](Self::is_ready): true once a certificate arrives, false when it
    /// expires with no renewal, true again when one comes.
    pub fn readiness(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    /// Resolves once we hold a certificate.
    pub async fn ready(&self) {
        let mut rx = self.inner.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// The notAfter of the certificate we hold.
    pub fn valid_until(&self) -> Option<SystemTime> {
        let current = self.inner.store.current.load();
        let leaf = current.as_ref()?.cert.first()?;
        cert::inspect(leaf).ok().map(|i| i.not_after)
    }

    /// The chain we present (leaf first), if any.
    pub fn chain(&self) -> Option<Vec<rustls_pki_types::CertificateDer<'static>>> {
        self.inner
            .store
            .current
            .load()
            .as_ref()
            .map(|c| c.cert.clone())
    }

    /// Installs an issued chain after checking it: the leaf holds our key and names us, and
    /// the chain verifies against the trust anchors now.
    pub fn install(&self, issued: &Issued) -> Result<(), TlsError> {
        let leaf = issued
            .chain
            .first()
            .ok_or_else(|| TlsError::Certificate("the issued chain is empty".into()))?;
        let info = cert::inspect(leaf)?;
        if info.public_key != rcgen::PublicKeyData::subject_public_key_info(&self.inner.key) {
            return Err(TlsError::Certificate(
                "the issued certificate is not for our key".into(),
            ));
        }
        if info.identity.as_ref() != Some(&self.inner.name) {
            return Err(TlsError::Certificate(format!(
                "the issued certificate names {:?}, not {}",
                info.identity.as_ref().map(|i| i.uri()),
                self.inner.name
            )));
        }
        let server_name = ServerName::try_from(self.inner.name.dns_name().to_owned())
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        self.inner
            .server_verifier
            .verify_server_cert(leaf, &issued.chain[1..], &server_name, &[], UnixTime::now())
            .map_err(|e| {
                TlsError::Certificate(format!(
                    "the issued chain does not verify against the trust anchors: {e}"
                ))
            })?;
        let certified = CertifiedKey::new(issued.chain.clone(), self.inner.signing_key.clone());
        self.inner.store.current.store(Some(Arc::new(certified)));
        self.inner.ready.send_replace(true);
        Ok(())
    }

    /// The inbound side's configuration: TLS 1.3, a client certificate required and verified
    /// against the trust anchors, ALPN h2 and http/1.1.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.inner.server.clone()
    }

    /// A server configuration that asks no client certificate (the identity service, whose
    /// clients prove themselves with tokens before they have certificates).
    pub fn server_config_without_client_auth(&self) -> Arc<ServerConfig> {
        self.inner.server_without_client_auth.clone()
    }

    /// A server configuration that asks for a client certificate and verifies one if sent,
    /// but admits a client without one (ALPN h2): the controller, whose identity service
    /// serves clients before they have certificates and whose destination API serves only
    /// clients that prove an identity.
    pub fn server_config_optional_client_auth(&self) -> Arc<ServerConfig> {
        self.inner.server_optional_client_auth.clone()
    }

    /// Our certificate as a TLS client presents it (none while we have none): for clients
    /// built elsewhere, such as the controller's channel.
    pub fn client_cert_resolver(&self) -> Arc<dyn rustls::client::ResolvesClientCert> {
        self.inner.store.clone()
    }

    /// The outbound side's configuration for `alpn`: presents our certificate, verifies the
    /// server against the trust anchors.
    pub fn client_config(&self, alpn: mesh_core::transport::Alpn) -> Arc<ClientConfig> {
        match alpn {
            mesh_core::transport::Alpn::H2 => self.inner.client_h2.clone(),
            mesh_core::transport::Alpn::Http1 => self.inner.client_http1.clone(),
            mesh_core::transport::Alpn::None => self.inner.client_opaque.clone(),
        }
    }

    /// Keeps the certificate fresh: certifies now, then renews forever (spawn it).
    pub async fn renew_forever(self, ca: Arc<dyn Certify>, metrics: IdentityMetrics) {
        let csr = match self.csr() {
            Ok(csr) => csr,
            Err(e) => {
                tracing::error!(error = %e, "cannot make a CSR: no certificate will be requested");
                return;
            }
        };
        let mut failures: u32 = 0;
        loop {
            let result = match ca.certify(&self.inner.name, &csr).await {
                Ok(issued) => self.install(&issued).map(|()| issued),
                Err(e) => Err(e),
            };
            let pause = match result {
                Ok(issued) => {
                    failures = 0;
                    metrics.renewed(issued.valid_until);
                    let now = SystemTime::now();
                    let pause = refresh_in(issued.valid_until, now);
                    tracing::info!(
                        identity = %self.inner.name,
                        valid_until = cert::unix_seconds(issued.valid_until),
                        renew_in = ?pause,
                        "certificate issued"
                    );
                    pause
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    metrics.failed();
                    let pause = retry_in(failures, self.valid_until(), SystemTime::now());
                    tracing::warn!(
                        identity = %self.inner.name,
                        error = %e,
                        retry_in = ?pause,
                        still_valid = self.valid_until().is_some_and(|t| t > SystemTime::now()),
                        "certificate renewal failed; serving with the current certificate meanwhile"
                    );
                    pause
                }
            };
            self.sleep_watching_expiry(pause, &metrics).await;
        }
    }

    /// Sleeps `pause`; if the certificate has expired (during the last attempt) or expires
    /// meanwhile, stops being ready at that moment (peers would refuse it; `/ready` must say
    /// so) until a renewal installs a new one.
    async fn sleep_watching_expiry(&self, pause: Duration, metrics: &IdentityMetrics) {
        let Some(until) = self.valid_until() else {
            return tokio::time::sleep(pause).await;
        };
        match until.duration_since(SystemTime::now()) {
            Err(_) => self.expired(metrics),
            Ok(left) if left < pause => {
                tokio::time::sleep(left).await;
                if until <= SystemTime::now() {
                    self.expired(metrics);
                }
                return tokio::time::sleep(pause.saturating_sub(left)).await;
            }
            Ok(_) => {}
        }
        tokio::time::sleep(pause).await;
    }

    /// The certificate in force expired unrenewed: not ready (said once).
    fn expired(&self, metrics: &IdentityMetrics) {
        if self.inner.ready.send_replace(false) {
            metrics.expired();
            tracing::error!(
                identity = %self.inner.name,
                "the certificate expired and no renewal came: not ready until one does"
            );
        }
    }
}

/// When to renew a certificate valid until `valid_until`: at 70% of what is left, at least
/// [`MIN_REFRESH`] from now unless that is past 90% of what is left.
pub fn refresh_in(valid_until: SystemTime, now: SystemTime) -> Duration {
    let left = valid_until.duration_since(now).unwrap_or_default();
    left.mul_f64(0.7).max(MIN_REFRESH).min(left.mul_f64(0.9))
}

/// When to retry after `failures` failed attempts in a row: exponential backoff with jitter,
/// but at least four more tries before the certificate held expires (and never more often
/// than every [`NEAR_EXPIRY_RETRY`]): the closer the expiry, the more a success matters.
pub fn retry_in(failures: u32, valid_until: Option<SystemTime>, now: SystemTime) -> Duration {
    let backoff = MIN_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(10))
        .min(MAX_RETRY);
    let jittered = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
    match valid_until.and_then(|t| t.duration_since(now).ok()) {
        Some(left) => jittered.min(left / 4).max(NEAR_EXPIRY_RETRY),
        // No valid certificate at all: new mTLS connections fail until one comes, so ask
        // often (the controller sees one request per proxy every few seconds at most).
        None => jittered.min(NO_CERTIFICATE_RETRY),
    }
}

/// The longest pause between attempts while the proxy holds no valid certificate.
pub const NO_CERTIFICATE_RETRY: Duration = Duration::from_secs(5);

/// The shortest pause between attempts while the certificate held is about to expire.
pub const NEAR_EXPIRY_RETRY: Duration = Duration::from_millis(100);

/// A [`LocalCa`] over issuer files: the offline mode.
pub fn local_ca(
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
    lifetime: Duration,
    trust: &TrustAnchors,
) -> Result<Arc<dyn Certify>, TlsError> {
    let issuer = IssuerFiles::load(cert_path, key_path, trust)?;
    issuer.watch(Duration::from_secs(30))?;
    Ok(Arc::new(LocalCa::new(issuer, lifetime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(refresh_in(now + day, now), day.mul_f64(0.7));
        // Short lifetimes: at least MIN_REFRESH apart, but never past 90% of the life left.
        assert_eq!(
            refresh_in(now + Duration::from_secs(20), now),
            Duration::from_secs(14)
        );
        assert_eq!(refresh_in(now + Duration::from_secs(12), now), MIN_REFRESH);
        assert_eq!(
            refresh_in(now + Duration::from_secs(10), now),
            Duration::from_secs(9)
        );
        assert_eq!(refresh_in(now, now), Duration::ZERO);
    }

    #[test]
    fn retries_back_off_but_not_past_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(retry_in(1, None, now) <= MIN_RETRY);
        assert!(retry_in(20, None, now) <= NO_CERTIFICATE_RETRY);
        let later = Some(now + Duration::from_secs(3600));
        assert!(retry_in(20, later, now) <= MAX_RETRY);
        assert!(retry_in(20, later, now) >= MAX_RETRY / 2);
        let soon = Some(now + Duration::from_secs(4));
        assert!(retry_in(20, soon, now) <= Duration::from_secs(1));
        let very_soon = Some(now + Duration::from_millis(200));
        assert_eq!(retry_in(20, very_soon, now), NEAR_EXPIRY_RETRY);
    }
}
