//! Support for mutual TLS tests: a throwaway PKI in a temporary directory, workload
//! certificates good and bad, TLS clients that present them, and the proxy's log lines.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use mesh_core::identity::Identity;
use mesh_tls::ca::{self, Issuer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// A trust anchor and an issuer under it, as files.
#[derive(Debug)]
pub struct Pki {
    /// The directory holding `ca.crt`, `issuer.crt`, `issuer.key`.
    pub dir: PathBuf,
    /// The trust domain.
    pub trust_domain: String,
}

/// A workload's certificate chain and key, as PEM.
#[derive(Clone, Debug)]
pub struct WorkloadCert {
    /// Leaf then issuer.
    pub chain_pem: String,
    /// PKCS#8.
    pub key_pem: String,
}

static NEXT_DIR: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Pki {
    /// A new PKI for `cluster.local`.
    pub fn new() -> anyhow::Result<Self> {
        let n = NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mesh-pki-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let pki = Self {
            dir,
            trust_domain: "cluster.local".to_owned(),
        };
        pki.rotate_issuer_and_anchor()?;
        Ok(pki)
    }

    fn rotate_issuer_and_anchor(&self) -> anyhow::Result<()> {
        let made = ca::bootstrap(
            &self.trust_domain,
            Duration::from_secs(365 * 86400),
            Duration::from_secs(30 * 86400),
            SystemTime::now(),
        )?;
        std::fs::write(self.anchors(), &made.anchor_pem)?;
        std::fs::write(self.dir.join("anchor.key"), &made.anchor_key_pem)?;
        self.write_issuer(&made.issuer_cert_pem, &made.issuer_key_pem)?;
        Ok(())
    }

    /// Replaces the issuer files with `cert` and `key` in one step each (a rename, as a Secret
    /// update is atomic).
    pub fn write_issuer(&self, cert: &str, key: &str) -> anyhow::Result<()> {
        for (name, text) in [("issuer.key", key), ("issuer.crt", cert)] {
            let tmp = self.dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, self.dir.join(name))?;
        }
        Ok(())
    }

    /// The trust anchors file.
    pub fn anchors(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The issuer certificate file.
    pub fn issuer_cert(&self) -> PathBuf {
        self.dir.join("issuer.crt")
    }

    /// The issuer key file.
    pub fn issuer_key(&self) -> PathBuf {
        self.dir.join("issuer.key")
    }

    /// The identity of `sa` in namespace `ns`.
    pub fn identity(&self, ns: &str, sa: &str) -> Identity {
        Identity::new(&self.trust_domain, ns, sa).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The `[identity]` section of a proxy in local mode with this PKI.
    pub fn proxy_identity_toml(&self, name: &Identity, lifetime: &str) -> String {
        format!(
            "[identity]\nmode = \"local\"\nname = \"{name}\"\ntrust_anchors = \"{}\"\n\
             issuer_cert = \"{}\"\nissuer_key = \"{}\"\nlifetime = \"{lifetime}\"\n",
            self.anchors().display(),
            self.issuer_cert().display(),
            self.issuer_key().display(),
        )
    }

    /// A certificate for `identity` from the current issuer, valid from `now - 20 s` for
    /// `lifetime` after `now`.
    pub fn issue(
        &self,
        identity: &Identity,
        now: SystemTime,
        lifetime: Duration,
    ) -> anyhow::Result<WorkloadCert> {
        let issuer = Issuer::from_files(&self.issuer_cert(), &self.issuer_key())?;
        let key = rcgen::KeyPair::generate()?;
        let csr = ca::csr(identity, &key)?;
        let issued = issuer.certify(identity, &csr, lifetime, now)?;
        let chain_pem = issued
            .chain
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect::<String>();
        Ok(WorkloadCert {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }

    /// Replaces the issuer with a new one under the same trust anchor; returns its PEM.
    pub fn rotate_issuer(&self) -> anyhow::Result<String> {
        let issuer = ca::issuer_under(
            &std::fs::read_to_string(self.anchors())?,
            &std::fs::read_to_string(self.dir.join("anchor.key"))?,
            &self.trust_domain,
            Duration::from_secs(30 * 86400),
            SystemTime::now(),
        )?;
        self.write_issuer(&issuer.cert_pem, &issuer.key_pem)?;
        Ok(issuer.cert_pem)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// DER as PEM.
pub fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(char::from(B64[((v >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A TLS 1.3 client configuration presenting `cert` (or nothing), trusting `anchors`.
pub fn client_config(
    cert: Option<&WorkloadCert>,
    anchors: &Path,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(anchors)? {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(mesh_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(cert) => {
            let chain = CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Connects to `addr` with TLS for `server`'s name. The handshake's result is what the server
/// said about our certificate, which in TLS 1.3 may arrive with the first read: callers that
/// test refusals should also read.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    server: &Identity,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server.dns_name().to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Every log line of this test process, captured (installed on first use).
pub fn logs() -> &'static Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        logs
    })
}

/// Captured log text.
#[derive(Clone, Debug, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
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

impl Logs {
    /// Every line containing `needle`, as they are now.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// The lines containing every one of `needles`, waiting up to 5 s for one to appear.
    pub async fn wait_for(&self, needles: &[&str]) -> Option<String> {
        for _ in 0..100 {
            let text = {
                let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner());
                String::from_utf8_lossy(&bytes).into_owned()
            };
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Some(line.to_owned());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

/// Waits until the admin listener says ready (up to 10 s).
pub async fn wait_ready(admin: std::net::SocketAddr) -> bool {
    for _ in 0..200 {
        if let Ok(mut s) = TcpStream::connect(admin).await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s
                .write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
