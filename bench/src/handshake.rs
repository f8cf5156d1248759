//! `mesh-bench-handshake`: how many new mutual-TLS handshakes per second a server completes.
//!
//! `bench/run.py --handshakes` points it at the TLS-terminating side of each proxy (pinned alone
//! on one core) and runs it pinned on the other core. N tasks (`--concurrency`) each loop:
//! TCP connect, a full TLS 1.3 handshake presenting the client certificate chain, then close.
//! The run stops at `--duration` seconds or `--max-handshakes` started connections, whichever
//! comes first, and prints one JSON object:
//! `{handshakes, failures, seconds, per_second, cpu_seconds, cpu_util, ...}`.
//!
//! Decisions:
//! * **No resumption.** `Resumption::disabled()`: the client keeps no session, so it never
//!   offers a ticket or a PSK, and every connection is checked to have been a full handshake
//!   (`HandshakeKind::Full`, or `FullWithHelloRetryRequest`, counted apart); anything else is a
//!   failure. The tickets a server may still send after the handshake are read and dropped.
//! * **The server must have finished too.** A TLS 1.3 client is done before the server has
//!   read the client's Certificate, CertificateVerify and Finished. So after the handshake the
//!   client sends `close_notify` (and a TCP FIN) and reads until the server closes. The server
//!   reads records in order, so when it answers the `close_notify` it has processed (verified, or
//!   rejected with an alert) the client's certificate. A rejection arrives as a fatal alert and
//!   counts as a failure. A server's HTTP/2 SETTINGS or session tickets are read and dropped.
//! * **The client's own cost is kept small**, so that on its one core it can outrun the server:
//!   it verifies the server's chain (root, expected name, validity) in full the first time it
//!   sees that exact chain, and afterwards accepts the same bytes for the same name from a small
//!   cache. The server's CertificateVerify signature, which proves the server holds the key in
//!   *this* handshake, is still checked every time. `--no-verify-cache` verifies in full every
//!   time. The server under test caches nothing: it verifies the client chain on every handshake.
//! * One current-thread runtime: the harness pins the tool to one core, and the JSON reports
//!   the process's own CPU time over the run (`cpu_util` ≈ 1.0 means the client, not the
//!   server, may be the limit).
//! * TLS 1.3 only, ALPN `h2`, the server name checked against the server's certificate with
//!   the ring provider's defaults (key exchange X25519 first, as OpenSSL and BoringSSL).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, HandshakeKind, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// New mutual-TLS 1.3 handshakes per second against one server, without resumption.
#[derive(Debug, Parser)]
#[command(name = "mesh-bench-handshake", version)]
struct Args {
    /// The server's address.
    #[arg(long)]
    connect: SocketAddr,
    /// The name the server's certificate must carry (SNI and verification), e.g.
    /// `server.bench.serviceaccount.identity.cluster.local`.
    #[arg(long)]
    server_name: String,
    /// PEM file of the trust anchors (the root only).
    #[arg(long)]
    ca: PathBuf,
    /// PEM file of the client certificate chain: the leaf, then the intermediate(s).
    /// Without it (and `--key`) no client certificate is sent: for checking that the server
    /// refuses such clients.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM file of the client key (PKCS#8, SEC1 or PKCS#1).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Concurrent connections (tasks).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Stop starting new connections after this many seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Stop after starting this many connections.
    #[arg(long, default_value_t = 1_000_000)]
    max_handshakes: u64,
    /// Give up on one connection (connect, handshake, close) after this many seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// ALPN protocol to offer (empty: none).
    #[arg(long, default_value = "h2")]
    alpn: String,
    /// Verify the server's chain in full on every handshake (by default a chain already
    /// verified for the same name is accepted from a cache; its handshake signature is always
    /// checked).
    #[arg(long)]
    no_verify_cache: bool,
}

/// The webpki verifier, plus a cache of the (chain, name) pairs it accepted. The CertificateVerify
/// signature is always delegated: only the chain-building and name checks are skipped on a hit.
#[derive(Debug)]
struct CachingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    enabled: bool,
    /// Chains already verified.
    verified: Mutex<Vec<VerifiedChain>>,
    full_verifications: AtomicU64,
}

/// A server chain the webpki verifier accepted, for one server name.
#[derive(Debug)]
struct VerifiedChain {
    end_entity: Vec<u8>,
    intermediates: Vec<Vec<u8>>,
    name: String,
}

const VERIFY_CACHE_ENTRIES: usize = 8;

impl CachingVerifier {
    fn lookup(&self, ee: &[u8], intermediates: &[CertificateDer<'_>], name: &str) -> bool {
        let Ok(cache) = self.verified.lock() else {
            return false;
        };
        cache.iter().any(|c| {
            c.end_entity.as_slice() == ee
                && c.name == name
                && c.intermediates.len() == intermediates.len()
                && c.intermediates
                    .iter()
                    .zip(intermediates)
                    .all(|(a, b)| a.as_slice() == b.as_ref())
        })
    }
}

impl ServerCertVerifier for CachingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name = server_name.to_str();
        if self.enabled && self.lookup(end_entity.as_ref(), intermediates, &name) {
            return Ok(ServerCertVerified::assertion());
        }
        self.full_verifications.fetch_add(1, Ordering::Relaxed);
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if self.enabled
            && let Ok(mut cache) = self.verified.lock()
            && cache.len() < VERIFY_CACHE_ENTRIES
        {
            cache.push(VerifiedChain {
                end_entity: end_entity.to_vec(),
                intermediates: intermediates.iter().map(|c| c.to_vec()).collect(),
                name: name.into_owned(),
            });
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// What the tasks count.
#[derive(Debug, Default)]
struct Counters {
    started: AtomicU64,
    handshakes: AtomicU64,
    /// Full handshakes that needed a HelloRetryRequest (counted in `handshakes` too).
    hello_retries: AtomicU64,
    /// Handshakes where the server picked `h2`.
    alpn_h2: AtomicU64,
    failures: AtomicU64,
    /// Failure messages and how often each occurred.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn fail(&self, msg: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut errors) = self.errors.lock() {
            // A bounded set: distinct messages are few, but do not let a bug grow it forever.
            if errors.len() < 32 || errors.contains_key(&msg) {
                *errors.entry(msg).or_insert(0) += 1;
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // `is_finite` and `> 0.0` also reject NaN.
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if args.concurrency == 0 || !positive(args.duration) || !positive(args.timeout) {
        bail!("--concurrency, --duration and --timeout must be positive");
    }
    let (config, verifier) = client_config(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args, config, &verifier))?;
    println!("{report}");
    Ok(())
}

fn client_config(args: &Args) -> anyhow::Result<(ClientConfig, Arc<CachingVerifier>)> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(&args.ca)? {
        roots.add(cert).context("adding a trust anchor")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .build()
        .context("the server certificate verifier")?;
    let verifier = Arc::new(CachingVerifier {
        inner,
        enabled: !args.no_verify_cache,
        verified: Mutex::new(Vec::new()),
        full_verifications: AtomicU64::new(0),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>);
    let mut config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading the key {}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .context("client certificate and key")?
        }
        _ => builder.with_no_client_auth(),
    };
    // No session cache, no tickets kept: every handshake is a full one.
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    if !args.alpn.is_empty() {
        config.alpn_protocols = vec![args.alpn.as_bytes().to_vec()];
    }
    Ok((config, verifier))
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("opening {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

async fn run(
    args: &Args,
    config: ClientConfig,
    verifier: &CachingVerifier,
) -> anyhow::Result<String> {
    let name = ServerName::try_from(args.server_name.clone())
        .with_context(|| format!("`{}` is not a server name", args.server_name))?;
    let connector = TlsConnector::from(Arc::new(config));
    let counters = Arc::new(Counters::default());
    let timeout = Duration::from_secs_f64(args.timeout);
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);

    let mut tasks = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let connector = connector.clone();
        let name = name.clone();
        let counters = Arc::clone(&counters);
        let addr = args.connect;
        let max = args.max_handshakes;
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline
                && counters.started.fetch_add(1, Ordering::Relaxed) < max
            {
                match tokio::time::timeout(timeout, one(&connector, addr, name.clone())).await {
                    Ok(Ok(outcome)) => {
                        counters.handshakes.fetch_add(1, Ordering::Relaxed);
                        if outcome.hello_retry {
                            counters.hello_retries.fetch_add(1, Ordering::Relaxed);
                        }
                        if outcome.alpn_h2 {
                            counters.alpn_h2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Err(err)) => counters.fail(format!("{err:#}")),
                    Err(_) => counters.fail(format!("timed out after {timeout:?}")),
                }
            }
        }));
    }
    for task in tasks {
        task.await.context("a load task panicked")?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu = match (cpu_start, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let handshakes = counters.handshakes.load(Ordering::Relaxed);
    let errors = counters
        .errors
        .lock()
        .map(|e| e.clone())
        .unwrap_or_default();
    let report = serde_json::json!({
        "handshakes": handshakes,
        "failures": counters.failures.load(Ordering::Relaxed),
        "seconds": seconds,
        "per_second": if seconds > 0.0 { handshakes as f64 / seconds } else { 0.0 },
        "hello_retries": counters.hello_retries.load(Ordering::Relaxed),
        "alpn_h2": counters.alpn_h2.load(Ordering::Relaxed),
        "cpu_seconds": cpu,
        "cpu_util": cpu.map(|c| if seconds > 0.0 { c / seconds } else { 0.0 }),
        "concurrency": args.concurrency,
        "client_certificate": args.cert.is_some(),
        "verify_cache": !args.no_verify_cache,
        "server_chain_full_verifications": verifier.full_verifications.load(Ordering::Relaxed),
        "server_name": args.server_name,
        "connect": args.connect.to_string(),
        "errors": errors,
    });
    Ok(report.to_string())
}

#[derive(Debug)]
struct Outcome {
    hello_retry: bool,
    alpn_h2: bool,
}

/// One connection: connect, full handshake, `close_notify`, read until the server closes.
async fn one(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: ServerName<'static>,
) -> anyhow::Result<Outcome> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true).context("TCP_NODELAY")?;
    let mut tls = connector.connect(name, tcp).await.context("handshake")?;
    let (_, conn) = tls.get_ref();
    let hello_retry = match conn.handshake_kind() {
        Some(HandshakeKind::Full) => false,
        Some(HandshakeKind::FullWithHelloRetryRequest) => true,
        other => bail!("not a full handshake: {other:?}"),
    };
    let alpn_h2 = conn.alpn_protocol() == Some(b"h2".as_slice());
    // close_notify + FIN, then wait for the server to close: by then it has processed our
    // certificate flight (or rejected it with an alert, which surfaces as an error here).
    tls.shutdown().await.context("sending close_notify")?;
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {} // HTTP/2 SETTINGS, session tickets: dropped
            // The server closed the TCP connection without a close_notify of its own: fine,
            // it did so after reading ours.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(err) => return Err(err).context("after the handshake"),
        }
    }
    Ok(Outcome {
        hello_retry,
        alpn_h2,
    })
}

/// utime + stime of this process, from `/proc/self/stat`, in seconds (USER_HZ = 100, as on
/// every Linux the harness runs on).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}
