//! A server certificate from PEM files (a Kubernetes Secret mounted in a pod), reloaded when
//! the files change, without a restart and without dropping a connection: new handshakes get
//! the new certificate. What a webhook or an ingress serves with.
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh_tls::TlsError> {
//! use std::path::Path;
//! use std::time::Duration;
//! use mesh_tls::serving::ServingCert;
//!
//! let cert = ServingCert::load(Path::new("/tls/tls.crt"), Path::new("/tls/tls.key"))?;
//! cert.watch(Duration::from_secs(2)); // a background task compares the files
//! let config = cert.server_config(&[b"h2", b"http/1.1"])?;
//! let acceptor = tokio_rustls::TlsAcceptor::from(config);
//! # let _ = acceptor;
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::TlsError;
use rustls_pki_types::pem::PemObject as _;

/// The certificate being served, and where it comes from.
#[derive(Debug)]
pub struct ServingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// The files' bytes when last loaded: a change is a difference, whatever the mtime says
    /// (Kubernetes swaps a symlink to update a mounted Secret).
    loaded: std::sync::Mutex<Files>,
}

/// The certificate's and the key's files, as read.
type Files = (Vec<u8>, Vec<u8>);

impl ServingCert {
    /// Loads the chain (leaf first) and its key; fails naming the file that is wrong.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, TlsError> {
        let (certified, bytes) = Self::read(cert, key)?;
        Ok(Arc::new(Self {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: ArcSwap::from_pointee(certified),
            loaded: std::sync::Mutex::new(bytes),
        }))
    }

    fn read(cert: &Path, key: &Path) -> Result<(CertifiedKey, Files), TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::File {
                path: path.display().to_string(),
                source,
            })
        };
        let bytes = (read(cert)?, read(key)?);
        let certified = certified_key(
            &bytes.0,
            &bytes.1,
            &cert.display().to_string(),
            &key.display().to_string(),
        )?;
        Ok((certified, bytes))
    }

    /// A certificate from PEM text (a Kubernetes TLS Secret's `tls.crt` and `tls.key` read
    /// through the API); `name` says where it comes from in errors and logs. It has no files:
    /// [`watch`](Self::watch) does nothing, and a new Secret makes a new certificate.
    pub fn from_pem(name: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<Self>, TlsError> {
        let certified = certified_key(
            cert_pem,
            key_pem,
            &format!("{name} tls.crt"),
            &format!("{name} tls.key"),
        )?;
        Ok(Arc::new(Self {
            cert_path: PathBuf::from(name),
            key_path: PathBuf::new(),
            current: ArcSwap::from_pointee(certified),
            loaded: std::sync::Mutex::new((Vec::new(), Vec::new())),
        }))
    }

    fn has_files(&self) -> bool {
        !self.key_path.as_os_str().is_empty()
    }

    /// Loads the files again if they changed; `Ok(true)` when a new certificate is served.
    /// A pair that does not load (half written, mismatched) leaves the old one in place.
    pub fn reload(&self) -> Result<bool, TlsError> {
        if !self.has_files() {
            return Ok(false);
        }
        let unchanged = {
            let loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
            std::fs::read(&self.cert_path).ok().as_deref() == Some(&loaded.0[..])
                && std::fs::read(&self.key_path).ok().as_deref() == Some(&loaded.1[..])
        };
        if unchanged {
            return Ok(false);
        }
        let (certified, bytes) = Self::read(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(certified));
        *self.loaded.lock().unwrap_or_else(|e| e.into_inner()) = bytes;
        Ok(true)
    }

    /// Compares the files every `every` in a background task (of the current runtime), for
    /// as long as the certificate is in use.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        if !self.has_files() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(cert) = weak.upgrade() else {
                    return;
                };
                match cert.reload() {
                    Ok(true) => {
                        tracing::info!(cert = %cert.cert_path.display(), "serving certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "the serving certificate's files changed but do not load; serving the old one")
                    }
                }
            }
        });
    }

    /// The certificate and key served now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// Where the certificate is read from.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The DNS SANs of the certificate served now (lowercase; empty if it has none).
    pub fn dns_names(&self) -> Vec<String> {
        let current = self.current.load();
        current
            .cert
            .first()
            .and_then(|leaf| crate::cert::inspect(leaf).ok())
            .map(|info| info.dns_names)
            .unwrap_or_default()
    }

    /// A TLS 1.2/1.3 server configuration serving this certificate, with `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// A chain and its key from PEM, checked to match; errors name `cert_name` or `key_name`.
fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain = crate::cert::certs_from_pem(cert_pem).map_err(|reason| TlsError::Pem {
        path: cert_name.to_owned(),
        reason,
    })?;
    let der =
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            path: key_name.to_owned(),
            reason: e.to_string(),
        })?;
    let signing_key = crate::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Key(format!("{key_name}: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| TlsError::Key(format!("{key_name} does not match {cert_name}: {e}")))?;
    Ok(certified)
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
