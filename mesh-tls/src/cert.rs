//! Reading certificates: PEM files, trust anchors, and the identity a certificate names.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_core::identity::Identity;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::TlsError;

/// Reads every certificate of a PEM file (a chain or a bundle).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::file(path, e))?;
    certs_from_pem(&bytes).map_err(|reason| TlsError::Pem {
        path: path.display().to_string(),
        reason,
    })
}

/// Parses every certificate of PEM text.
pub fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".to_owned());
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, SEC1 or PKCS#1) from a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::file(path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// How often a watched trust anchors file ([`TrustAnchors::watch`]) is read for a change.
pub const TRUST_ANCHORS_POLL: Duration = Duration::from_secs(5);

/// Trust anchors: one or several roots (several while a root rotates by overlap).
///
/// Clones share one set of roots: [`TrustAnchors::replace`] (or a [`TrustAnchors::watch`] of
/// the file) changes them for every clone, and every verifier made by
/// [`TrustAnchors::server_verifier`] and [`TrustAnchors::client_verifier`] checks each new
/// handshake against the roots in force then. Connections already established stay up: a
/// root rotation (a bundle of the old and the new root, then the new root alone) needs no
/// restart and drops no request.
#[derive(Clone)]
pub struct TrustAnchors {
    current: Arc<arc_swap::ArcSwap<Roots>>,
}

/// One generation of roots, with the verifiers built from them.
struct Roots {
    store: Arc<RootCertStore>,
    certs: Vec<CertificateDer<'static>>,
    server: Arc<rustls::client::WebPkiServerVerifier>,
    client_required: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    client_optional: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchors")
            .field("roots", &self.current.load().certs.len())
            .finish()
    }
}

impl TrustAnchors {
    /// Reads a PEM bundle.
    pub fn from_pem_file(path: &Path) -> Result<Self, TlsError> {
        let certs = read_certs(path)?;
        Self::from_certs(certs).map_err(|reason| TlsError::Pem {
            path: path.display().to_string(),
            reason,
        })
    }

    /// From PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsError> {
        let certs = certs_from_pem(pem).map_err(|reason| TlsError::Pem {
            path: "(trust anchors)".to_owned(),
            reason,
        })?;
        Self::from_certs(certs).map_err(|reason| TlsError::Pem {
            path: "(trust anchors)".to_owned(),
            reason,
        })
    }

    fn from_certs(certs: Vec<CertificateDer<'static>>) -> Result<Self, String> {
        Ok(Self {
            current: Arc::new(arc_swap::ArcSwap::from_pointee(Roots::new(certs)?)),
        })
    }

    /// Puts `other`'s roots in force, for this and every clone.
    pub fn replace(&self, other: &TrustAnchors) {
        self.current.store(other.current.load_full());
    }

    /// The roots in force, for rustls verifiers.
    pub fn store(&self) -> Arc<RootCertStore> {
        self.current.load().store.clone()
    }

    /// The roots in force, as DER.
    pub fn certs(&self) -> Vec<CertificateDer<'static>> {
        self.current.load().certs.clone()
    }

    /// A verifier of servers against the roots in force at each handshake.
    pub fn server_verifier(&self) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
        Arc::new(Reloading(self.clone(), Side::Server))
    }

    /// A verifier of client certificates against the roots in force at each handshake;
    /// `required`: a client without a certificate is refused, otherwise admitted as
    /// anonymous (the server then decides what an anonymous client may do).
    pub fn client_verifier(
        &self,
        required: bool,
    ) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        let side = if required {
            Side::ClientRequired
        } else {
            Side::ClientOptional
        };
        Arc::new(Reloading(self.clone(), side))
    }

    /// Re-reads `path` every `every` and puts its roots in force when its bytes change; a file
    /// that does not parse is logged and the roots in force stay. Stops when every clone of
    /// these anchors is gone.
    pub fn watch(&self, path: std::path::PathBuf, every: Duration) {
        let weak = Arc::downgrade(&self.current);
        let mut last = std::fs::read(&path).ok();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(current) = weak.upgrade() else {
                    return;
                };
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                if last.as_deref() == Some(&bytes[..]) {
                    continue;
                }
                match certs_from_pem(&bytes).and_then(Roots::new) {
                    Ok(roots) => {
                        let subjects: Vec<String> = roots
                            .certs
                            .iter()
                            .filter_map(|c| inspect(c).ok().map(|i| i.subject))
                            .collect();
                        current.store(Arc::new(roots));
                        tracing::info!(path = %path.display(), roots = ?subjects, "trust anchors reloaded");
                        last = Some(bytes);
                    }
                    Err(reason) => {
                        tracing::warn!(path = %path.display(), %reason, "trust anchors not reloaded: the file does not parse; the roots in force stay");
                    }
                }
            }
        });
    }
}

impl Roots {
    fn new(certs: Vec<CertificateDer<'static>>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            roots
                .add(cert.clone())
                .map_err(|e| format!("trust anchor #{i} is not usable: {e}"))?;
        }
        let store = Arc::new(roots);
        let provider = crate::provider();
        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
            store.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("server verifier: {e}"))?;
        let client = |optional: bool| {
            let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
                store.clone(),
                provider.clone(),
            );
            let builder = if optional {
                builder.allow_unauthenticated()
            } else {
                builder
            };
            builder.build().map_err(|e| format!("client verifier: {e}"))
        };
        Ok(Self {
            client_required: client(false)?,
            client_optional: client(true)?,
            store,
            certs,
            server,
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Server,
    ClientRequired,
    ClientOptional,
}

/// A verifier that checks against the roots in force (one lock-free load per handshake).
#[derive(Debug)]
struct Reloading(TrustAnchors, Side);

impl Reloading {
    fn client(&self) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        let roots = self.0.current.load();
        match self.1 {
            Side::ClientOptional => roots.client_optional.clone(),
            Side::ClientRequired | Side::Server => roots.client_required.clone(),
        }
    }
}

// Handshake signatures depend on the crypto provider only, not on the roots: both sides check
// them as the provider's WebPKI verifiers do.
fn tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    let algorithms = crate::provider().signature_verification_algorithms;
    rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
}

fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    let algorithms = crate::provider().signature_verification_algorithms;
    rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
}

fn signature_schemes() -> Vec<rustls::SignatureScheme> {
    crate::provider()
        .signature_verification_algorithms
        .supported_schemes()
}

impl rustls::client::danger::ServerCertVerifier for Reloading {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.current.load().server.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        signature_schemes()
    }
}

impl rustls::server::danger::ClientCertVerifier for Reloading {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !matches!(self.1, Side::ClientOptional)
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // No hints: every mesh client holds exactly one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.client()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        signature_schemes()
    }
}

/// What the mesh reads off a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The workload identity of its URI SAN, when it names one.
    pub identity: Option<Identity>,
    /// Its notBefore.
    pub not_before: SystemTime,
    /// Its notAfter.
    pub not_after: SystemTime,
    /// Its subject, for logs.
    pub subject: String,
    /// Its issuer, for logs.
    pub issuer: String,
    /// Whether it may sign certificates.
    pub is_ca: bool,
    /// The DER of its SubjectPublicKeyInfo.
    pub public_key: Vec<u8>,
    /// Its DNS SANs (`web.example.com`, `*.example.com`), lowercase.
    pub dns_names: Vec<String>,
}

/// Parses a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, TlsError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| TlsError::Certificate(format!("not an X.509 certificate: {e}")))?;
    let mut identity = None;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                    identity = Some(Identity::parse(uri).map_err(|e| {
                        TlsError::Certificate(format!("the certificate's URI SAN: {e}"))
                    })?);
                }
                GeneralName::DNSName(dns) => dns_names.push(dns.to_ascii_lowercase()),
                _ => {}
            }
        }
    }
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            UNIX_EPOCH
        }
    };
    Ok(CertInfo {
        identity,
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        is_ca: cert.is_ca(),
        public_key: cert.public_key().raw.to_vec(),
        dns_names,
    })
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
