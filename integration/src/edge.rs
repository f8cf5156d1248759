//! Support for the ingress tests: a public-style CA whose server certificates the ingress
//! serves (as files, like a mounted TLS Secret), TLS clients that trust it, and the ingress
//! started in-process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A CA for the outside world's certificates, and a directory for the files.
#[derive(Debug)]
pub struct WebCa {
    /// Where `ca.crt` and issued pairs live.
    pub dir: PathBuf,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl WebCa {
    /// A new CA in a new temporary directory.
    pub fn new() -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mesh-webca-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mesh test web CA");
        let cert = params.self_signed(&key)?;
        std::fs::write(dir.join("ca.crt"), cert.pem())?;
        let issuer = rcgen::Issuer::from_ca_cert_der(cert.der(), key)?;
        Ok(Self { dir, issuer })
    }

    /// The CA certificate file (what a client trusts).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues a certificate for `sans` with common name `name`, written (atomically, by
    /// rename, as Kubernetes swaps a Secret's files) to `<name>.crt` and `<name>.key`.
    pub fn issue(&self, name: &str, sans: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer)?;
        let (crt, k) = (
            self.dir.join(format!("{name}.crt")),
            self.dir.join(format!("{name}.key")),
        );
        for (path, text) in [(&k, key.serialize_pem()), (&crt, cert.pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)?;
        }
        Ok((crt, k))
    }

    /// A TLS 1.2/1.3 client configuration trusting this CA, with `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.ca_file())? {
            roots.add(c?)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(mesh_tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl Drop for WebCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects to `addr` over TLS asking for `sni`, verifying the certificate against `config`'s
/// roots; returns the stream and the leaf certificate the server sent.
pub async fn tls_to(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<(tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>)> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    Ok((tls, leaf))
}

/// The ingress running in the background; dropping it starts its shutdown.
#[derive(Debug)]
pub struct RunningIngress {
    /// The TLS listener, when configured.
    pub https: Option<SocketAddr>,
    /// The plaintext listener, when configured.
    pub http: Option<SocketAddr>,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The access log's lines so far.
    pub access_log: AccessLines,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for RunningIngress {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The access log, kept in memory.
#[derive(Clone, Debug, Default)]
pub struct AccessLines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for AccessLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl AccessLines {
    /// Every line, parsed.
    pub fn entries(&self) -> Vec<serde_json::Value> {
        let text = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Starts the ingress from TOML text (no environment variables apply); with `config_file`,
/// it reloads its routes when that file changes.
pub async fn start_ingress(
    toml: &str,
    config_file: Option<&Path>,
) -> anyhow::Result<RunningIngress> {
    let config =
        mesh_ingress::Config::from_toml_str_with_env(toml, Vec::<(String, String)>::new())?;
    let access_log = AccessLines::default();
    let ingress = mesh_ingress::IngressServer::bind(config)
        .await?
        .with_config_file(config_file.map(Path::to_owned))
        .with_access_log(mesh_edge::access_log::AccessLog::to(access_log.clone()));
    let (https, http, admin) = (
        ingress.https_addr(),
        ingress.http_addr(),
        ingress.admin_addr(),
    );
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(ingress.run(async move {
        let _ = rx.await;
    }));
    Ok(RunningIngress {
        https,
        http,
        admin,
        access_log,
        shutdown: Some(tx),
    })
}
