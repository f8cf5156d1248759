//! Certificates for the outside world, chosen by the name a client asks for (SNI): what an
//! ingress serves with. Each certificate is a [`ServingCert`] (PEM files, reloaded when they
//! change, so new handshakes get the new certificate and open connections are untouched),
//! served for the host names it is given or, when none are, for its own DNS SANs.
//!
//! A name is looked up exactly, then as a wildcard one label deep (`*.example.com` serves
//! `a.example.com`, not `a.b.example.com` nor `example.com`, as RFC 6125 has a client check
//! it), then the default certificate answers: for an unknown name and for a client that sends
//! no SNI at all. Without a default, such a handshake fails (rustls sends
//! `unrecognized_name`).
//!
//! ```no_run
//! # fn run() -> Result<(), mesh_tls::TlsError> {
//! use std::path::Path;
//! use std::time::Duration;
//! use mesh_tls::serving::ServingCert;
//! use mesh_tls::sni::SniCertificates;
//!
//! let mut certs = SniCertificates::default();
//! let web = ServingCert::load(Path::new("web.crt"), Path::new("web.key"))?;
//! certs.add(&["web.example.com".into(), "*.web.example.com".into()], web)?;
//! certs.set_default(ServingCert::load(Path::new("default.crt"), Path::new("default.key"))?);
//! certs.watch(Duration::from_secs(1));
//! // Swappable whole, as Secrets come and go:
//! let live = mesh_tls::sni::LiveCertificates::new(certs);
//! let acceptor = tokio_rustls::TlsAcceptor::from(live.server_config(&[b"h2", b"http/1.1"])?);
//! # let _ = acceptor;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::TlsError;
use crate::serving::ServingCert;

/// Server certificates by host name; see the [module](self) documentation.
#[derive(Clone, Debug, Default)]
pub struct SniCertificates {
    exact: HashMap<String, Arc<ServingCert>>,
    /// By the name under the wildcard: `example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<ServingCert>>,
    default: Option<Arc<ServingCert>>,
    /// Every certificate once, for watching.
    all: Vec<Arc<ServingCert>>,
}

impl SniCertificates {
    /// Serves `cert` for `hosts` (exact names or `*.` wildcards); for its own DNS SANs when
    /// `hosts` is empty. A name given twice is refused, naming it.
    pub fn add(&mut self, hosts: &[String], cert: Arc<ServingCert>) -> Result<(), TlsError> {
        let names = if hosts.is_empty() {
            let names = cert.dns_names();
            if names.is_empty() {
                return Err(TlsError::Certificate(format!(
                    "{} names no DNS SAN: give its hosts",
                    cert.cert_path().display()
                )));
            }
            names
        } else {
            hosts.to_vec()
        };
        for name in names {
            let name = name.to_ascii_lowercase();
            let (map, key) = match name.strip_prefix("*.") {
                Some(under) => (&mut self.wildcard, under.to_owned()),
                None => (&mut self.exact, name.clone()),
            };
            if !is_host_name(&key) {
                return Err(TlsError::Certificate(format!(
                    "{name:?} is not a host name (a DNS name, or *. and one)"
                )));
            }
            if map.insert(key, cert.clone()).is_some() {
                return Err(TlsError::Certificate(format!(
                    "{name:?} has two certificates"
                )));
            }
        }
        self.keep(cert);
        Ok(())
    }

    fn keep(&mut self, cert: Arc<ServingCert>) {
        if !self.all.iter().any(|c| Arc::ptr_eq(c, &cert)) {
            self.all.push(cert);
        }
    }

    /// Serves `cert` to clients whose name no certificate has, or that send none.
    pub fn set_default(&mut self, cert: Arc<ServingCert>) {
        self.keep(cert.clone());
        self.default = Some(cert);
    }

    /// Whether no certificate is configured.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The certificate served for `sni` (none: a client that sent no name).
    pub fn lookup(&self, sni: Option<&str>) -> Option<&Arc<ServingCert>> {
        let found = sni.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).or_else(|| {
                let (_, under) = name.split_once('.')?;
                self.wildcard.get(under)
            })
        });
        found.or(self.default.as_ref())
    }

    /// Compares every certificate's files every `every`, in background tasks of the current
    /// runtime (see [`ServingCert::watch`]).
    pub fn watch(&self, every: Duration) {
        for cert in &self.all {
            cert.watch(every);
        }
    }
}

impl ResolvesServerCert for SniCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name()).map(|cert| cert.current())
    }
}

/// A set of certificates that can be swapped whole while serving (certificates that come and
/// go with Kubernetes Secrets): handshakes read the set in force, without a lock.
#[derive(Debug)]
pub struct LiveCertificates {
    current: arc_swap::ArcSwap<SniCertificates>,
}

impl LiveCertificates {
    /// Serves `certs` until [`replace`](Self::replace)d.
    pub fn new(certs: SniCertificates) -> Arc<Self> {
        Arc::new(Self {
            current: arc_swap::ArcSwap::from_pointee(certs),
        })
    }

    /// Serves `certs` from the next handshake on.
    pub fn replace(&self, certs: SniCertificates) {
        self.current.store(Arc::new(certs));
    }

    /// The set in force.
    pub fn current(&self) -> Arc<SniCertificates> {
        self.current.load_full()
    }

    /// Whether a handshake asking for `sni` gets a certificate now.
    pub fn serves(&self, sni: Option<&str>) -> bool {
        self.current.load().lookup(sni).is_some()
    }

    /// A TLS 1.2 and 1.3 server configuration that picks the certificate by SNI from the set
    /// in force, with `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        self.server_config_for(alpn, rustls::DEFAULT_VERSIONS)
    }

    /// [`Self::server_config`] accepting only `versions` (`&[&rustls::version::TLS13]`: no
    /// TLS 1.2).
    pub fn server_config_for(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for LiveCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .load()
            .lookup(hello.server_name())
            .map(|cert| cert.current())
    }
}

/// A DNS name of letters, digits and hyphens (underscores tolerated, as some do use them).
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system's temporary one, removed when dropped.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("mesh-tls-{test}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cert(dir: &std::path::Path, name: &str, sans: &[&str]) -> Arc<ServingCert> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issued = params.self_signed(&key).unwrap();
        let (crt, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&crt, issued.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        ServingCert::load(&crt, &k).unwrap()
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let dir = TempDir::new("sni-lookup");
        let web = cert(dir.path(), "web", &["web.example.com"]);
        let wild = cert(dir.path(), "wild", &["*.example.com"]);
        let fallback = cert(dir.path(), "default", &["default.test"]);
        let mut certs = SniCertificates::default();
        certs.add(&[], web.clone()).unwrap();
        certs.add(&["*.Example.com".into()], wild.clone()).unwrap();
        let same = |a: Option<&Arc<ServingCert>>, b: &Arc<ServingCert>| {
            a.is_some_and(|a| Arc::ptr_eq(a, b))
        };
        assert!(same(certs.lookup(Some("web.example.com")), &web));
        assert!(same(certs.lookup(Some("WEB.example.com.")), &web));
        assert!(same(certs.lookup(Some("api.example.com")), &wild));
        assert!(certs.lookup(Some("a.b.example.com")).is_none());
        assert!(certs.lookup(Some("example.com")).is_none());
        assert!(certs.lookup(None).is_none());
        certs.set_default(fallback.clone());
        assert!(same(certs.lookup(Some("a.b.example.com")), &fallback));
        assert!(same(certs.lookup(None), &fallback));
    }

    #[test]
    fn bad_and_doubled_names_are_refused() {
        let dir = TempDir::new("sni-refused");
        let web = cert(dir.path(), "web", &["web.example.com"]);
        let mut certs = SniCertificates::default();
        certs.add(&[], web.clone()).unwrap();
        let twice = certs.add(&["web.example.com".into()], web.clone());
        assert!(format!("{:?}", twice).contains("two certificates"));
        let bad = certs.add(&["web example".into()], web);
        assert!(format!("{:?}", bad).contains("not a host name"));
    }
}
