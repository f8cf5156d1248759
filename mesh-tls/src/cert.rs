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

/// Trust anchors: one or several roots (several while a root rotates by overlap).
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    roots: Arc<RootCertStore>,
    certs: Vec<CertificateDer<'static>>,
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
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            roots
                .add(cert.clone())
                .map_err(|e| format!("trust anchor #{i} is not usable: {e}"))?;
        }
        Ok(Self {
            roots: Arc::new(roots),
            certs,
        })
    }

    /// The roots, for rustls verifiers.
    pub fn store(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// The roots as DER.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
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
}

/// Parses a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, TlsError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| TlsError::Certificate(format!("not an X.509 certificate: {e}")))?;
    let mut identity = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && uri.starts_with("spiffe://")
            {
                identity = Some(Identity::parse(uri).map_err(|e| {
                    TlsError::Certificate(format!("the certificate's URI SAN: {e}"))
                })?);
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
    })
}

/// Seconds since the Unix epoch (0 before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
