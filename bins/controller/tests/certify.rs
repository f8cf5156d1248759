#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]
//! The identity service end to end: a real controller in the test process, on a real socket,
//! called over TLS by the proxy's own client (`ControllerClient`) or by the generated gRPC
//! client where a request must be malformed on purpose. Token checks run against a token file
//! or against a fake Kubernetes API server that answers TokenReviews the way the real one does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_controller::{Config, Controller};
use mesh_core::identity::Identity;
use mesh_tls::api::ControllerClient;
use mesh_tls::api::proto::CertifyRequest;
use mesh_tls::api::proto::identity_client::IdentityClient;
use mesh_tls::ca::{self, Issued};
use mesh_tls::cert::{self, TrustAnchors};
use mesh_tls::local::{Certify as _, LocalIdentity};
use rcgen::{KeyPair, PublicKeyData as _};
use rustls::client::danger::ServerCertVerifier as _;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Value, json};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ECDSA_WITH_SHA256, Oid,
};
use x509_parser::prelude::{FromDer as _, X509Certificate};

const TRUST_DOMAIN: &str = "cluster.local";
const CONTROLLER: &str = "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller";
const LEAF_LIFETIME: Duration = Duration::from_secs(3600);
/// How long any one wait in these tests may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);
const TOKENREVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

// ---------------------------------------------------------------------------------------------
// Setup: temporary directories, a PKI, a running controller, clients.
// ---------------------------------------------------------------------------------------------

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "mesh-controller-certify-{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Replaces `name` the way a careful writer does: a temporary file renamed into place.
    fn replace(&self, name: &str, text: &str) {
        let tmp = self.join(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.join(name)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A trust anchor and an issuer under it, written as ca.crt, issuer.crt and issuer.key.
struct Pki {
    dir: TempDir,
    made: ca::Bootstrap,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = TempDir::new(tag);
        let made = ca::bootstrap(
            TRUST_DOMAIN,
            Duration::from_secs(10 * 86400),
            Duration::from_secs(5 * 86400),
            SystemTime::now(),
        )
        .unwrap();
        dir.write("ca.crt", &made.anchor_pem);
        dir.write("issuer.crt", &made.issuer_cert_pem);
        dir.write("issuer.key", &made.issuer_key_pem);
        Self { dir, made }
    }

    fn trust(&self) -> TrustAnchors {
        TrustAnchors::from_pem(self.made.anchor_pem.as_bytes()).unwrap()
    }

    fn issuer_der(&self) -> CertificateDer<'static> {
        der_of(&self.made.issuer_cert_pem)
    }

    /// A controller configuration over this PKI; `identity_extra` lands in `[identity]`,
    /// `tokens` is the whole `[tokens]` section's body.
    fn config(&self, identity_extra: &str, tokens: &str) -> String {
        format!(
            r#"
listen = "127.0.0.1:0"

[identity]
trust_anchors = {ca:?}
issuer_cert = {cert:?}
issuer_key = {key:?}
leaf_lifetime = "1h"
{identity_extra}

[tokens]
{tokens}
"#,
            ca = self.dir.join("ca.crt").display().to_string(),
            cert = self.dir.join("issuer.crt").display().to_string(),
            key = self.dir.join("issuer.key").display().to_string(),
        )
    }

    /// A token file of `<identity> <token>` lines, as `[tokens]` configuration.
    fn token_file(&self, lines: &str) -> String {
        let path = self.dir.write("tokens.txt", lines);
        format!("file = {:?}", path.display().to_string())
    }
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    cert::certs_from_pem(pem.as_bytes())
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
}

/// A controller serving on 127.0.0.1; it stops when dropped.
struct Running {
    addr: SocketAddr,
    trust: TrustAnchors,
    shutdown: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Where clients' token files go.
    tokens: TempDir,
}

async fn start(config: &str, trust: TrustAnchors) -> Running {
    init_logs();
    let config = Config::from_toml_str(config).unwrap();
    let controller = Controller::bind(config).await.unwrap();
    let addr = controller.local_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(Box::pin(controller.run(async move {
        let _ = stop.await;
    })));
    Running {
        addr,
        trust,
        shutdown,
        served,
        tokens: TempDir::new("client"),
    }
}

impl Running {
    /// The proxy's client, sending `token`. It names the controller by a DNS name, as an
    /// injected proxy names the controller's Service.
    fn client(&self, token: &str) -> ControllerClient {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let file = self.tokens.write(
            &format!("token-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
            token,
        );
        ControllerClient::new(
            &format!("localhost:{}", self.addr.port()),
            &Identity::parse(CONTROLLER).unwrap(),
            &self.trust,
            file,
            PATIENCE,
        )
        .unwrap()
    }

    /// The generated gRPC client over TLS, verifying the controller like the proxy does, for
    /// requests the proxy's client cannot make.
    async fn raw_client(&self) -> IdentityClient<tonic::transport::Channel> {
        let mut config = rustls::ClientConfig::builder_with_provider(mesh_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(self.trust.store())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(Identity::parse(CONTROLLER).unwrap().dns_name().to_owned())
            .unwrap();
        let addr = self.addr;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(PATIENCE)
            .timeout(PATIENCE)
            .connect_with_connector(tower::service_fn(move |_| {
                let connector = connector.clone();
                let name = name.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .unwrap();
        IdentityClient::new(channel)
    }

    /// Stops the controller; it must stop cleanly and promptly.
    async fn stop(self) {
        drop(self.shutdown);
        let served = tokio::time::timeout(PATIENCE, self.served)
            .await
            .expect("the controller stops within the patience")
            .unwrap();
        served.unwrap();
    }
}

fn id(namespace: &str, sa: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, namespace, sa).unwrap()
}

/// A CSR for `identity` and the key that signed it.
fn csr_for(identity: &Identity) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    (ca::csr(identity, &key).unwrap(), key)
}

/// Certifies `identity` with a fresh key; the error is the client's message.
async fn certify(client: &ControllerClient, identity: &Identity) -> Result<Issued, String> {
    let (csr, _key) = csr_for(identity);
    client
        .certify(identity, &csr)
        .await
        .map_err(|e| e.to_string())
}

/// Asserts that `error` carries the gRPC `code` and every one of `words`.
#[track_caller]
/// The controller's log (of every test of this binary) has a line with each of `words`: the
/// detail a refusal keeps from its caller.
fn assert_logged(words: &[&str]) {
    let (logs, _) = logs_since(0);
    assert!(
        logs.lines().any(|l| words.iter().all(|w| l.contains(w))),
        "no log line with {words:?}"
    );
}

fn assert_refused(error: &str, code: &str, words: &[&str]) {
    assert!(
        error.contains(&format!("answered {code}:")),
        "expected {code} in {error:?}"
    );
    for word in words {
        assert!(error.contains(word), "expected {word:?} in {error:?}");
    }
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty(), "trailing bytes after the certificate");
    cert
}

/// Verifies `chain` for `identity` against `trust`, as a peer of the workload would.
fn verify(chain: &[CertificateDer<'static>], identity: &Identity, trust: &TrustAnchors) -> bool {
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        trust.store(),
        mesh_tls::provider(),
    )
    .build()
    .unwrap();
    let name = ServerName::try_from(identity.dns_name().to_owned()).unwrap();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .is_ok()
}

// ---------------------------------------------------------------------------------------------
// Logs: one process-wide subscriber writing into a buffer the tests read.
// ---------------------------------------------------------------------------------------------

fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(Arc::default)
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(|| LogWriter(logs().clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// The log text written since `offset`, and the new offset.
fn logs_since(offset: usize) -> (String, usize) {
    let logs = logs().lock().unwrap();
    (
        String::from_utf8_lossy(&logs[offset.min(logs.len())..]).into_owned(),
        logs.len(),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. File tokens: the leaf.
// ---------------------------------------------------------------------------------------------

const TOKEN_LINES: &str = "\
# identity token
spiffe://cluster.local/ns/demo/sa/web   web-s3cret

spiffe://cluster.local/ns/demo/sa/api api-s3cret
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_token_gets_a_leaf_naming_exactly_its_identity() {
    let pki = Pki::new("leaf");
    let running = start(&pki.config("", &pki.token_file(TOKEN_LINES)), pki.trust()).await;
    // Token files end with a newline; the client trims it.
    let client = running.client("web-s3cret\n");
    let web = id("demo", "web");
    let (csr, key) = csr_for(&web);

    let before = SystemTime::now();
    let issued = client.certify(&web, &csr).await.unwrap();
    let after = SystemTime::now();

    assert_eq!(issued.chain.len(), 2, "the leaf and the issuer, no anchor");
    assert_eq!(issued.chain[1], pki.issuer_der(), "chain[1] is the issuer");
    let leaf = parse(&issued.chain[0]);

    // Exactly the identity's two names, and nothing else from anywhere.
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![
            GeneralName::URI("spiffe://cluster.local/ns/demo/sa/web"),
            GeneralName::DNSName("web.demo.serviceaccount.identity.cluster.local"),
        ]
    );
    assert_eq!(
        cert::inspect(&issued.chain[0]).unwrap().identity,
        Some(web.clone())
    );
    let cn: Vec<_> = leaf
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["web.demo.serviceaccount.identity.cluster.local"]);
    assert_eq!(
        leaf.issuer(),
        parse(&issued.chain[1]).subject(),
        "the leaf names the issuer"
    );

    // A workload leaf: no CA, signs handshakes, serves and connects.
    assert!(!leaf.is_ca());
    let usage = leaf.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature() && !usage.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.any && !eku.code_signing);

    // The CSR's key, ECDSA P-256, signed with ECDSA-SHA256 by the P-256 issuer.
    let spki = leaf.public_key();
    assert_eq!(spki.raw, key.subject_public_key_info().as_slice());
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = Oid::try_from(spki.algorithm.parameters.as_ref().unwrap()).unwrap();
    assert_eq!(curve, OID_EC_P256);
    assert_eq!(
        leaf.signature_algorithm.algorithm,
        OID_SIG_ECDSA_WITH_SHA256
    );

    // Valid from 20 s ago (clock skew), for the configured lifetime.
    let unix = |t: SystemTime| i64::try_from(cert::unix_seconds(t)).unwrap();
    let skew = i64::try_from(ca::CLOCK_SKEW_ALLOWANCE.as_secs()).unwrap();
    let lifetime = i64::try_from(LEAF_LIFETIME.as_secs()).unwrap();
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    assert!(
        (unix(before) - skew..=unix(after) - skew).contains(&not_before),
        "notBefore {not_before} is not about now - 20 s ({} .. {})",
        unix(before) - skew,
        unix(after) - skew
    );
    assert!(
        (unix(before) + lifetime..=unix(after) + lifetime).contains(&not_after),
        "notAfter {not_after} is not now + 1 h"
    );
    assert_eq!(not_after - not_before, lifetime + skew);
    assert_eq!(
        unix(issued.valid_until),
        not_after,
        "valid_until is notAfter"
    );

    // The chain verifies against ca.crt for this identity, and for no other.
    let from_file = TrustAnchors::from_pem_file(&pki.dir.join("ca.crt")).unwrap();
    assert!(verify(&issued.chain, &web, &from_file));
    assert!(!verify(&issued.chain, &id("demo", "api"), &from_file));

    // What the proxy does with it: install it after its own checks (key, name, chain).
    let local = LocalIdentity::new(web.clone(), pki.trust()).unwrap();
    let issued = client.certify(&web, &local.csr().unwrap()).await.unwrap();
    local.install(&issued).unwrap();
    assert!(local.is_ready());

    // The DNS-style spelling of an identity is the same identity.
    let raw = running
        .raw_client()
        .await
        .certify(CertifyRequest {
            identity: web.dns_name().to_owned(),
            token: b"web-s3cret".to_vec(),
            certificate_signing_request: csr,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        cert::inspect(&raw.leaf_certificate).unwrap().identity,
        Some(web)
    );
    assert_eq!(
        raw.intermediate_certificates,
        vec![pki.issuer_der().to_vec()]
    );

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_csr_contributes_its_public_key_only() {
    let pki = Pki::new("csr-extras");
    let running = start(&pki.config("", &pki.token_file(TOKEN_LINES)), pki.trust()).await;
    let web = id("demo", "web");
    // The right names, plus a subject and usages the workload may not have.
    let key = KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![web.dns_name().to_owned()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        web.uri().to_owned().try_into().unwrap(),
    ));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:masters");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    let csr = params.serialize_request(&key).unwrap().der().to_vec();

    let issued = running
        .client("web-s3cret")
        .certify(&web, &csr)
        .await
        .unwrap();
    let leaf = parse(&issued.chain[0]);
    assert_eq!(
        leaf.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    let cn: Vec<_> = leaf
        .subject()
        .iter_common_name()
        .map(|cn| cn.as_str().unwrap())
        .collect();
    assert_eq!(cn, [web.dns_name()]);
    assert_eq!(leaf.subject().iter_organization().count(), 0);
    assert!(!leaf.is_ca());
    assert!(!leaf.key_usage().unwrap().unwrap().value.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_edits_apply_without_a_restart() {
    let pki = Pki::new("token-edit");
    let running = start(&pki.config("", &pki.token_file(TOKEN_LINES)), pki.trust()).await;
    let late = id("demo", "late");
    let client = running.client("late-token");
    assert_refused(
        &certify(&client, &late).await.unwrap_err(),
        "Unauthenticated",
        &["the token is not known"],
    );
    pki.dir.write(
        "tokens.txt",
        &format!("{TOKEN_LINES}{} late-token\n", late.uri()),
    );
    let issued = certify(&client, &late).await.unwrap();
    assert_eq!(
        cert::inspect(&issued.chain[0]).unwrap().identity,
        Some(late)
    );
    // And a token removed from the file is refused at once.
    pki.dir.write("tokens.txt", "");
    assert_refused(
        &certify(&running.client("web-s3cret"), &id("demo", "web"))
            .await
            .unwrap_err(),
        "Unauthenticated",
        &["the token is not known"],
    );
    running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Refusals: each a gRPC code and a reason.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_code_and_the_reason() {
    let pki = Pki::new("refusals");
    let running = start(&pki.config("", &pki.token_file(TOKEN_LINES)), pki.trust()).await;
    let web = id("demo", "web");
    let api = id("demo", "api");
    let web_client = running.client("web-s3cret");

    // Tokens.
    assert_refused(
        &certify(&running.client("no-such-token"), &web)
            .await
            .unwrap_err(),
        "Unauthenticated",
        &["the token is not known"],
    );
    assert_refused(
        &certify(&running.client(""), &web).await.unwrap_err(),
        "Unauthenticated",
        &["the token is empty"],
    );
    assert_refused(
        &certify(&running.client("  \n"), &web).await.unwrap_err(),
        "Unauthenticated",
        &["the token is empty"],
    );
    // A prefix of a known token is not the token.
    assert_refused(
        &certify(&running.client("web-s3cre"), &web)
            .await
            .unwrap_err(),
        "Unauthenticated",
        &["the token is not known"],
    );
    assert_refused(
        &certify(&web_client, &api).await.unwrap_err(),
        "PermissionDenied",
        &[
            "the token proves spiffe://cluster.local/ns/demo/sa/web, not spiffe://cluster.local/ns/demo/sa/api",
        ],
    );

    // CSRs.
    let (api_csr, _) = csr_for(&api);
    let error = web_client
        .certify(&web, &api_csr)
        .await
        .unwrap_err()
        .to_string();
    assert_refused(
        &error,
        "InvalidArgument",
        &[
            "CSR",
            "spiffe://cluster.local/ns/demo/sa/api",
            "which is not spiffe://cluster.local/ns/demo/sa/web",
        ],
    );
    let error = web_client
        .certify(&web, b"not a certificate signing request")
        .await
        .unwrap_err()
        .to_string();
    assert_refused(
        &error,
        "InvalidArgument",
        &["CSR", "not a valid signed CSR"],
    );
    // A CSR whose signature does not match its key (no proof of possession).
    let (mut tampered, _) = csr_for(&web);
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let error = web_client
        .certify(&web, &tampered)
        .await
        .unwrap_err()
        .to_string();
    assert_refused(
        &error,
        "InvalidArgument",
        &["CSR", "not a valid signed CSR"],
    );

    // Identities.
    let elsewhere = Identity::new("example.org", "demo", "web").unwrap();
    assert_refused(
        &certify(&web_client, &elsewhere).await.unwrap_err(),
        "InvalidArgument",
        &["spiffe://example.org/ns/demo/sa/web is not in the trust domain cluster.local"],
    );

    // Requests the proxy's client cannot make, with the generated client.
    let mut raw = running.raw_client().await;
    let (web_csr, _) = csr_for(&web);
    let request = |identity: &str, token: &[u8]| CertifyRequest {
        identity: identity.to_owned(),
        token: token.to_vec(),
        certificate_signing_request: web_csr.clone(),
    };
    for malformed in [
        "",
        "spiffe://cluster.local/web",
        "spiffe://cluster.local/ns/demo/sa/web/extra",
        "spiffe://cluster.local/ns/Demo/sa/web",
        "web.demo",
        "https://cluster.local/ns/demo/sa/web",
    ] {
        let status = raw
            .certify(request(malformed, b"web-s3cret"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{malformed:?}");
        assert!(
            status.message().contains("is not a workload identity")
                && status.message().contains(&format!("{malformed:?}")),
            "{malformed:?}: {}",
            status.message()
        );
    }
    // A token that is not text is not known, and an identity is checked before the token.
    let status = raw
        .certify(request(web.uri(), &[0xff, 0xfe, 0x00]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "the token is not known");
    let status = raw
        .certify(request(elsewhere.uri(), b"no-such-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The codes as the generated client sees them.
    let status = raw
        .certify(request(api.uri(), b"web-s3cret"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    let status = raw.certify(request(web.uri(), b"")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(status.message(), "the token is empty");

    // Every refusal is logged with its code and reason (an identity no other test asks for).
    let logged = id("refusals", "logged");
    assert_refused(
        &certify(&web_client, &logged).await.unwrap_err(),
        "PermissionDenied",
        &["not spiffe://cluster.local/ns/refusals/sa/logged"],
    );
    let (logs, _) = logs_since(0);
    assert!(
        logs.lines().any(|l| l.contains("WARN")
            && l.contains("certify refused")
            && l.contains("identity=spiffe://cluster.local/ns/refusals/sa/logged")
            && l.contains("PermissionDenied")
            && l.contains("the token proves spiffe://cluster.local/ns/demo/sa/web")),
        "no refusal logged:\n{logs}"
    );

    // The controller serves on after all of that.
    certify(&web_client, &web).await.unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_controller_it_does_not_trust() {
    let pki = Pki::new("untrusted");
    let running = start(&pki.config("", &pki.token_file(TOKEN_LINES)), pki.trust()).await;
    // Another install's anchors.
    let other = Pki::new("untrusted-other");
    let file = running.tokens.write("token", "web-s3cret");
    let client = ControllerClient::new(
        &running.addr.to_string(),
        &Identity::parse(CONTROLLER).unwrap(),
        &other.trust(),
        file.clone(),
        PATIENCE,
    )
    .unwrap();
    let error = certify(&client, &id("demo", "web")).await.unwrap_err();
    assert!(error.contains("certify:"), "{error}");
    // Or a controller that is not the one expected.
    let client = ControllerClient::new(
        &running.addr.to_string(),
        &id("mesh-system", "impostor"),
        &pki.trust(),
        file,
        PATIENCE,
    )
    .unwrap();
    certify(&client, &id("demo", "web")).await.unwrap_err();
    running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Kubernetes TokenReviews, against a fake API server.
// ---------------------------------------------------------------------------------------------

/// A token the fake cluster knows.
struct FakeToken {
    token: &'static str,
    username: &'static str,
    /// The audiences it was minted for.
    audiences: &'static [&'static str],
    expired: bool,
}

const CLUSTER_TOKENS: &[FakeToken] = &[
    FakeToken {
        token: "eyJ.web.projected",
        username: "system:serviceaccount:demo:web",
        audiences: &["identity.mesh"],
        expired: false,
    },
    FakeToken {
        token: "eyJ.web.custom-audience",
        username: "system:serviceaccount:shop:cart",
        audiences: &["custom.audience"],
        expired: false,
    },
    FakeToken {
        token: "eyJ.web.default-audience",
        username: "system:serviceaccount:demo:web",
        audiences: &["https://kubernetes.default.svc.cluster.local"],
        expired: false,
    },
    FakeToken {
        token: "eyJ.web.expired",
        username: "system:serviceaccount:demo:web",
        audiences: &["identity.mesh"],
        expired: true,
    },
    FakeToken {
        token: "eyJ.node",
        username: "system:node:node-1",
        audiences: &["identity.mesh"],
        expired: false,
    },
];

/// A request the fake API server received.
#[derive(Clone, Debug)]
struct Received {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Value,
}

/// How the fake API server answers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Mood {
    /// Reviews tokens, like kube-apiserver.
    #[default]
    Reviews,
    /// 403, as to a controller without RBAC to create TokenReviews.
    Forbidden,
    /// 503, as an overloaded API server (or one behind a restarting load balancer).
    Overloaded,
    /// Reads the request and never answers.
    Hangs,
    /// Reviews, but leaves `audiences` out of the answer (an API server that did not check
    /// the audience asked for).
    NoAudiences,
}

#[derive(Clone, Default)]
struct FakeKube {
    received: Arc<Mutex<Vec<Received>>>,
    mood: Mood,
}

impl FakeKube {
    async fn start(self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let fake = self.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let fake = fake.clone();
                        async move { Ok::<_, Infallible>(fake.answer(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        addr
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let content_type = request
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        self.received.lock().unwrap().push(Received {
            method: method.clone(),
            path: path.clone(),
            content_type,
            body: body.clone(),
        });
        match self.mood {
            Mood::Reviews | Mood::NoAudiences => {}
            Mood::Forbidden => {
                return api_status(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "tokenreviews.authentication.k8s.io is forbidden: User \"system:anonymous\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope",
                );
            }
            Mood::Overloaded => {
                return api_status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the server is currently unable to handle the request",
                );
            }
            Mood::Hangs => std::future::pending::<()>().await,
        }
        if method != "POST" || path != TOKENREVIEWS {
            return api_status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        }
        if body["apiVersion"] != "authentication.k8s.io/v1" || body["kind"] != "TokenReview" {
            return api_status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the body is not an authentication.k8s.io/v1 TokenReview",
            );
        }
        let spec = &body["spec"];
        let token = spec["token"].as_str().unwrap_or_default();
        let wanted: Vec<&str> = spec["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        // What kube-apiserver answers: on failure `authenticated` is omitted and `user` empty.
        let failed = |error: String| json!({ "user": {}, "error": error });
        let status = match CLUSTER_TOKENS.iter().find(|t| t.token == token) {
            None => failed(
                "[invalid bearer token, square/go-jose: error in cryptographic primitive]".into(),
            ),
            Some(t) if t.expired => {
                failed("[invalid bearer token, service account token has expired]".into())
            }
            Some(t) => {
                let target = if wanted.is_empty() {
                    vec!["https://kubernetes.default.svc.cluster.local"]
                } else {
                    wanted.clone()
                };
                let audiences: Vec<&str> = target
                    .iter()
                    .copied()
                    .filter(|a| t.audiences.contains(a))
                    .collect();
                if audiences.is_empty() {
                    failed(format!(
                        "[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]",
                        t.audiences, target
                    ))
                } else {
                    let namespace = t
                        .username
                        .strip_prefix("system:serviceaccount:")
                        .and_then(|rest| rest.split(':').next());
                    let mut groups = vec!["system:authenticated".to_owned()];
                    let mut extra = json!({});
                    if let Some(ns) = namespace {
                        groups.insert(0, "system:serviceaccounts".to_owned());
                        groups.insert(1, format!("system:serviceaccounts:{ns}"));
                        extra = json!({
                            "authentication.kubernetes.io/pod-name": ["web-7d9c6b5f4-x2x7q"],
                            "authentication.kubernetes.io/pod-uid": ["0c5c2a0e-3f0e-4c1a-9d3b-7a1e9f1c2b3d"],
                        });
                    }
                    json!({
                        "authenticated": true,
                        "user": {
                            "username": t.username,
                            "uid": "5b0f2c5e-8b39-4f7e-a1a4-2f4d1c9e6b7a",
                            "groups": groups,
                            "extra": extra,
                        },
                        "audiences": audiences,
                    })
                }
            }
        };
        let mut status = status;
        if self.mood == Mood::NoAudiences
            && let Some(status) = status.as_object_mut()
        {
            status.remove("audiences");
        }
        json_response(
            StatusCode::CREATED,
            &json!({
                "kind": "TokenReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": { "creationTimestamp": null },
                "spec": spec,
                "status": status,
            }),
        )
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap()
}

/// A `meta/v1` Status, as the API server answers errors.
fn api_status(code: StatusCode, reason: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

fn kube_tokens(api: SocketAddr, extra: &str) -> String {
    format!("kubernetes = true\nkubernetes_api = \"http://{api}\"\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_review_proves_a_service_account() {
    let pki = Pki::new("kube-good");
    let fake = FakeKube::default();
    let api = fake.clone().start().await;
    let running = start(&pki.config("", &kube_tokens(api, "")), pki.trust()).await;
    let client = running.client("eyJ.web.projected\n");

    let web = id("demo", "web");
    let issued = certify(&client, &web).await.unwrap();
    let leaf = cert::inspect(&issued.chain[0]).unwrap();
    assert_eq!(
        leaf.identity.map(|i| i.uri().to_owned()).as_deref(),
        Some("spiffe://cluster.local/ns/demo/sa/web")
    );
    assert!(verify(&issued.chain, &web, &pki.trust()));

    // What the controller asked the API.
    let received = fake.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let review = &received[0];
    assert_eq!(review.method, "POST");
    assert_eq!(review.path, TOKENREVIEWS);
    assert!(
        review
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json")),
        "{review:?}"
    );
    assert_eq!(review.body["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(review.body["kind"], "TokenReview");
    assert_eq!(
        review.body["spec"]["token"], "eyJ.web.projected",
        "the token, trimmed"
    );
    assert_eq!(review.body["spec"]["audiences"], json!(["identity.mesh"]));

    // The service account the token proves is the only identity it gets.
    assert_refused(
        &certify(&client, &id("demo", "api")).await.unwrap_err(),
        "PermissionDenied",
        &[
            "the token proves spiffe://cluster.local/ns/demo/sa/web, not spiffe://cluster.local/ns/demo/sa/api",
        ],
    );
    // A token minted for the API server, not for the mesh.
    let error = certify(&running.client("eyJ.web.default-audience"), &web)
        .await
        .unwrap_err();
    assert_refused(
        &error,
        "Unauthenticated",
        &["Kubernetes does not authenticate the token"],
    );
    // The API server's words stay in the controller's log.
    assert!(!error.contains("audiences"), "{error}");
    assert_logged(&["token refused", "is invalid for the target audiences"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_review_audience_is_configurable() {
    let pki = Pki::new("kube-audience");
    let fake = FakeKube::default();
    let api = fake.clone().start().await;
    let tokens = kube_tokens(api, "audience = \"custom.audience\"");
    let running = start(&pki.config("", &tokens), pki.trust()).await;
    let cart = id("shop", "cart");
    certify(&running.client("eyJ.web.custom-audience"), &cart)
        .await
        .unwrap();
    // A token for the default audience is not one for this controller.
    assert_refused(
        &certify(&running.client("eyJ.web.projected"), &id("demo", "web"))
            .await
            .unwrap_err(),
        "Unauthenticated",
        &["Kubernetes does not authenticate the token"],
    );
    assert_logged(&["token refused", "is invalid for the target audiences"]);
    let received = fake.received();
    assert_eq!(received.len(), 2);
    for review in &received {
        assert_eq!(review.body["spec"]["audiences"], json!(["custom.audience"]));
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_reviews_that_prove_no_service_account_are_refused() {
    let pki = Pki::new("kube-refused");
    let fake = FakeKube::default();
    let api = fake.clone().start().await;
    let running = start(&pki.config("", &kube_tokens(api, "")), pki.trust()).await;
    let web = id("demo", "web");

    // The API says: not authenticated, and why.
    assert_refused(
        &certify(&running.client("eyJ.web.expired"), &web)
            .await
            .unwrap_err(),
        "Unauthenticated",
        &["Kubernetes does not authenticate the token"],
    );
    assert_logged(&["token refused", "service account token has expired"]);
    assert_refused(
        &certify(&running.client("garbage"), &web).await.unwrap_err(),
        "Unauthenticated",
        &["Kubernetes does not authenticate the token"],
    );
    assert_logged(&["token refused", "invalid bearer token"]);
    // Authenticated, but a node, not a ServiceAccount.
    assert_refused(
        &certify(&running.client("eyJ.node"), &web)
            .await
            .unwrap_err(),
        "Unauthenticated",
        &["the token is not a ServiceAccount's"],
    );
    assert_logged(&[
        "token refused",
        "\"system:node:node-1\"",
        "not a ServiceAccount",
    ]);
    // An empty token is refused without asking the API.
    assert_refused(
        &certify(&running.client(""), &web).await.unwrap_err(),
        "Unauthenticated",
        &["the token is empty"],
    );
    let sent: Vec<_> = fake
        .received()
        .iter()
        .map(|r| r.body["spec"]["token"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sent, ["eyJ.web.expired", "garbage", "eyJ.node"]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_forbidden_api_is_unavailable() {
    let pki = Pki::new("kube-down");
    // A port nobody listens on.
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let running = start(&pki.config("", &kube_tokens(down, "")), pki.trust()).await;
    let started = Instant::now();
    assert_refused(
        &certify(&running.client("eyJ.web.projected"), &id("demo", "web"))
            .await
            .unwrap_err(),
        "Unavailable",
        &["the token cannot be checked now"],
    );
    assert!(started.elapsed() < PATIENCE, "{:?}", started.elapsed());
    running.stop().await;

    // An API server that refuses the controller (no RBAC for tokenreviews).
    let fake = FakeKube {
        mood: Mood::Forbidden,
        ..FakeKube::default()
    };
    let api = fake.clone().start().await;
    let running = start(&pki.config("", &kube_tokens(api, "")), pki.trust()).await;
    assert_refused(
        &certify(&running.client("eyJ.web.projected"), &id("demo", "web"))
            .await
            .unwrap_err(),
        "Unavailable",
        &["the token cannot be checked now"],
    );
    assert_logged(&["token refused", "forbidden"]);
    assert_eq!(fake.received().len(), 1);
    running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Issuer rotation.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_issuer_signs_new_leaves_and_a_broken_one_is_ignored() {
    let pki = Pki::new("reload");
    let config = pki.config("issuer_poll = \"200ms\"", &pki.token_file(TOKEN_LINES));
    let running = start(&config, pki.trust()).await;
    let client = running.client("web-s3cret");
    let web = id("demo", "web");
    let (csr, _key) = csr_for(&web);
    let issued = client.certify(&web, &csr).await.unwrap();
    assert_eq!(issued.chain[1], pki.issuer_der());

    // cert-manager renews the issuer under the same anchor.
    let next = ca::issuer_under(
        &pki.made.anchor_pem,
        &pki.made.anchor_key_pem,
        TRUST_DOMAIN,
        Duration::from_secs(5 * 86400),
        SystemTime::now(),
    )
    .unwrap();
    let next_der = der_of(&next.cert_pem);
    assert_ne!(next_der, pki.issuer_der());
    pki.dir.replace("issuer.key", &next.key_pem);
    pki.dir.replace("issuer.crt", &next.cert_pem);

    let deadline = Instant::now() + PATIENCE;
    let rotated = loop {
        let issued = client.certify(&web, &csr).await.unwrap();
        if issued.chain[1] == next_der {
            break issued;
        }
        assert_eq!(issued.chain[1], pki.issuer_der(), "an issuer from nowhere");
        assert!(
            Instant::now() < deadline,
            "the new issuer is not in force after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Leaves of the new issuer verify against the unchanged anchors.
    assert!(verify(&rotated.chain, &web, &pki.trust()));
    let (_, offset) = logs_since(0);

    // A broken key: the controller keeps the last good issuer, and says so.
    pki.dir.replace(
        "issuer.key",
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (logs, _) = logs_since(offset);
        if logs.lines().any(|l| {
            l.contains("WARN")
                && l.contains("issuer files changed but do not load; keeping the current issuer")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no warning about the broken issuer key after {PATIENCE:?}:\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..3 {
        let issued = client.certify(&web, &csr).await.unwrap();
        assert_eq!(issued.chain[1], next_der, "the last good issuer signs");
        assert!(verify(&issued.chain, &web, &pki.trust()));
    }
    // A certificate whose key is not the key on disk is not loaded either.
    let third = ca::issuer_under(
        &pki.made.anchor_pem,
        &pki.made.anchor_key_pem,
        TRUST_DOMAIN,
        Duration::from_secs(5 * 86400),
        SystemTime::now(),
    )
    .unwrap();
    let (_, offset) = logs_since(0);
    pki.dir.replace("issuer.key", &next.key_pem);
    pki.dir.replace("issuer.crt", &third.cert_pem);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (logs, _) = logs_since(offset);
        if logs.contains("the key does not match the certificate") {
            break;
        }
        assert!(Instant::now() < deadline, "no mismatch warning:\n{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let issued = client.certify(&web, &csr).await.unwrap();
    assert_eq!(issued.chain[1], next_der);
    running.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Configuration errors and the binary.
// ---------------------------------------------------------------------------------------------

#[test]
fn configuration_errors_name_the_key() {
    let pki = Pki::new("config");
    let tokens = pki.token_file(TOKEN_LINES);
    let error = |toml: &str| Config::from_toml_str(toml).unwrap_err().to_string();

    // A valid configuration, for contrast, with its defaults.
    let config = Config::from_toml_str(&pki.config("", &tokens)).unwrap();
    assert_eq!(config.identity.leaf_lifetime, LEAF_LIFETIME);
    assert_eq!(config.identity.trust_domain, TRUST_DOMAIN);
    assert_eq!(config.identity.name().unwrap().uri(), CONTROLLER);
    assert_eq!(config.tokens.audience, "identity.mesh");

    let e = error(&pki.config("", ""));
    assert!(e.contains("`tokens`"), "{e}");
    assert!(
        e.contains("tokens.file") && e.contains("tokens.kubernetes"),
        "{e}"
    );
    let e = error(&pki.config("", "kubernetes = false"));
    assert!(e.contains("`tokens`"), "{e}");

    let e = error(&pki.config("trust_domain = \"Cluster_Local\"", &tokens));
    assert!(e.contains("identity.trust_domain"), "{e}");
    assert!(e.contains("Cluster_Local"), "{e}");

    let no_lifetime = pki
        .config("", &tokens)
        .replace("leaf_lifetime = \"1h\"\n", "");
    for (bad, expected) in [
        ("\"soon\"", "soon"),
        ("\"10\"", "no unit"),
        ("\"0s\"", "expected 1s to"),
        ("\"500ms\"", "expected 1s to"),
        ("\"100000h\"", "expected 1s to"),
    ] {
        let e = error(&no_lifetime.replace(
            "[identity]\n",
            &format!("[identity]\nleaf_lifetime = {bad}\n"),
        ));
        assert!(e.contains("identity.leaf_lifetime"), "{bad}: {e}");
        assert!(e.contains(expected), "{bad}: {e}");
    }

    let e = error(&pki.config("issuer_poll = \"often\"", &tokens));
    assert!(e.contains("identity.issuer_poll"), "{e}");
    let e = error(&pki.config("name = \"mesh-controller\"", &tokens));
    assert!(e.contains("identity.name"), "{e}");
    let e = error(&pki.config("colour = \"blue\"", &tokens));
    assert!(e.contains("colour"), "{e}");
    let e = error(&pki.config("", &tokens).replace("127.0.0.1:0", "localhost"));
    assert!(e.contains("listen"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_errors_name_the_file_and_the_key() {
    let pki = Pki::new("bind");
    let tokens = pki.token_file(TOKEN_LINES);
    let bind = |toml: String| async move {
        let config = Config::from_toml_str(&toml).unwrap();
        format!("{:#}", Controller::bind(config).await.unwrap_err())
    };
    let e = bind(pki.config("", &tokens).replace("ca.crt", "missing.crt")).await;
    assert!(
        e.contains("identity.trust_anchors") && e.contains("missing.crt"),
        "{e}"
    );
    let e = bind(pki.config("", &tokens).replace("issuer.key", "ca.crt")).await;
    assert!(e.contains("identity.issuer_key"), "{e}");
    let e = bind(pki.config("", "file = \"/nonexistent/tokens.txt\"")).await;
    assert!(
        e.contains("tokens") && e.contains("/nonexistent/tokens.txt"),
        "{e}"
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_mesh-controller");

fn run_bin(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn run_with_a_bad_configuration_exits_2() {
    let dir = TempDir::new("bin-config");
    let no_tokens = dir.write(
        "no-tokens.toml",
        "[identity]\ntrust_anchors = \"ca.crt\"\nissuer_cert = \"i.crt\"\nissuer_key = \"i.key\"\n[tokens]\n",
    );
    let not_toml = dir.write("not-toml.toml", "listen = \n[[[");
    let bad_lifetime = dir.write(
        "bad-lifetime.toml",
        "[identity]\ntrust_anchors = \"ca.crt\"\nissuer_cert = \"i.crt\"\nissuer_key = \"i.key\"\nleaf_lifetime = \"forever\"\n[tokens]\nfile = \"t\"\n",
    );
    let missing = dir.join("missing.toml");
    for (file, expected) in [
        (&no_tokens, "tokens"),
        (&not_toml, "not-toml.toml"),
        (&bad_lifetime, "identity.leaf_lifetime"),
        (&missing, "missing.toml"),
    ] {
        let out = run_bin(&["run", "--config", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", file.display());
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    }
}

#[test]
fn bootstrap_writes_a_pki_and_refuses_to_overwrite_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new("bin-bootstrap");
    let out_dir = dir.join("pki");
    let out = out_dir.to_str().unwrap();

    let made = run_bin(&["bootstrap", "--out", out]);
    let stdout = String::from_utf8_lossy(&made.stdout).into_owned();
    assert!(
        made.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let anchor_pem = std::fs::read_to_string(out_dir.join("ca.crt")).unwrap();
    let issuer_pem = std::fs::read_to_string(out_dir.join("issuer.crt")).unwrap();
    let key_pem = std::fs::read_to_string(out_dir.join("issuer.key")).unwrap();
    let mode = std::fs::metadata(out_dir.join("issuer.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the key is owner-only: {mode:o}");

    // "expires" lines, with the dates the certificates hold.
    let anchor_der = der_of(&anchor_pem);
    let issuer_der = der_of(&issuer_pem);
    let expires: Vec<&str> = stdout.lines().filter(|l| l.contains("expires")).collect();
    assert_eq!(expires.len(), 2, "{stdout}");
    for (line, der, file, days) in [
        (expires[0], &anchor_der, "ca.crt", "3650 days from now"),
        (expires[1], &issuer_der, "issuer.crt", "365 days from now"),
    ] {
        let date = parse(der)
            .validity()
            .not_after
            .to_datetime()
            .date()
            .to_string();
        assert!(
            line.contains(file) && line.contains(&date) && line.contains(days),
            "{line:?} lacks {file}, {date} or {days:?}"
        );
    }
    assert!(stdout.contains("issuer.key"), "{stdout}");

    // A coherent PKI: an anchor, an issuer under it with its key, leaves that verify.
    let anchor = parse(&anchor_der);
    assert!(anchor.is_ca());
    assert_eq!(
        anchor.subject(),
        anchor.issuer(),
        "the anchor is self-signed"
    );
    assert_eq!(parse(&issuer_der).issuer(), anchor.subject());
    let issuer = ca::Issuer::from_pem(&issuer_pem, &key_pem).unwrap();
    let web = id("demo", "web");
    let (csr, _) = csr_for(&web);
    let issued = issuer
        .certify(&web, &csr, LEAF_LIFETIME, SystemTime::now())
        .unwrap();
    let trust = TrustAnchors::from_pem(anchor_pem.as_bytes()).unwrap();
    assert!(verify(&issued.chain, &web, &trust));

    // The anchor's key is kept, owner-only, and makes the next issuer: trusted with no change.
    let mode = std::fs::metadata(out_dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the anchor key is owner-only: {mode:o}"
    );
    assert!(
        stdout.contains("ca.key") && stdout.contains("mesh-controller issuer"),
        "{stdout}"
    );
    let next_dir = dir.join("next");
    let rotated = run_bin(&[
        "issuer",
        "--anchor",
        out_dir.join("ca.crt").to_str().unwrap(),
        "--anchor-key",
        out_dir.join("ca.key").to_str().unwrap(),
        "--out",
        next_dir.to_str().unwrap(),
    ]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let next = ca::Issuer::from_pem(
        &std::fs::read_to_string(next_dir.join("issuer.crt")).unwrap(),
        &std::fs::read_to_string(next_dir.join("issuer.key")).unwrap(),
    )
    .unwrap();
    let (csr, _) = csr_for(&web);
    let issued = next
        .certify(&web, &csr, LEAF_LIFETIME, SystemTime::now())
        .unwrap();
    assert!(
        verify(&issued.chain, &web, &trust),
        "the new issuer chains to the same anchor"
    );

    // Again: refused, nothing touched.
    let again = run_bin(&["bootstrap", "--out", out]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        stderr.contains("exists (use --force to overwrite)"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("ca.crt")).unwrap(),
        anchor_pem
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("issuer.crt")).unwrap(),
        issuer_pem
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("issuer.key")).unwrap(),
        key_pem
    );

    // With --force: a new PKI.
    let forced = run_bin(&["bootstrap", "--out", out, "--force"]);
    assert!(forced.status.success());
    assert_ne!(
        std::fs::read_to_string(out_dir.join("ca.crt")).unwrap(),
        anchor_pem
    );
    let key_pem = std::fs::read_to_string(out_dir.join("issuer.key")).unwrap();
    let issuer_pem = std::fs::read_to_string(out_dir.join("issuer.crt")).unwrap();
    ca::Issuer::from_pem(&issuer_pem, &key_pem).unwrap();
    let mode = std::fs::metadata(out_dir.join("issuer.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(dir.path().exists());
}

// ---------------------------------------------------------------------------------------------
// Known bugs. Each test asserts what should happen and fails today; run them with
// `cargo test -p mesh-controller --test certify -- --ignored` once they are fixed.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_outside_the_trust_anchors_is_refused_at_start() {
    let pki = Pki::new("foreign");
    let other = Pki::new("foreign-other");
    pki.dir.write("issuer.crt", &other.made.issuer_cert_pem);
    pki.dir.write("issuer.key", &other.made.issuer_key_pem);
    let config = Config::from_toml_str(&pki.config("", &pki.token_file(TOKEN_LINES))).unwrap();
    let error = Controller::bind(config)
        .await
        .expect_err("bind refuses an issuer that does not chain to the trust anchors");
    let error = format!("{error:#}");
    assert!(
        error.contains("identity.issuer_cert") && error.contains("trust anchor"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_issuer_outside_the_trust_anchors_is_not_loaded() {
    let pki = Pki::new("foreign-reload");
    let other = Pki::new("foreign-reload-other");
    let config = pki.config("issuer_poll = \"200ms\"", &pki.token_file(TOKEN_LINES));
    let running = start(&config, pki.trust()).await;
    let client = running.client("web-s3cret");
    let web = id("demo", "web");
    certify(&client, &web).await.unwrap();
    let (_, offset) = logs_since(0);
    pki.dir.replace("issuer.key", &other.made.issuer_key_pem);
    pki.dir.replace("issuer.crt", &other.made.issuer_cert_pem);
    // Wait until the controller has looked at the new files, whatever it decided.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (logs, _) = logs_since(offset);
        if logs.contains("issuer reloaded") || logs.contains("keeping the current issuer") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the issuer files were not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let issued = certify(&client, &web).await.unwrap();
    assert_eq!(
        issued.chain[1],
        pki.issuer_der(),
        "the foreign issuer signs"
    );
    assert!(verify(&issued.chain, &web, &pki.trust()));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_server_is_unavailable_before_the_clients_deadline() {
    let pki = Pki::new("kube-slow");
    for mood in [Mood::Hangs, Mood::Overloaded] {
        let fake = FakeKube {
            mood,
            ..FakeKube::default()
        };
        let api = fake.clone().start().await;
        let running = start(&pki.config("", &kube_tokens(api, "")), pki.trust()).await;
        let file = running.tokens.write("token", "eyJ.web.projected");
        let patient = ControllerClient::new(
            &running.addr.to_string(),
            &Identity::parse(CONTROLLER).unwrap(),
            &pki.trust(),
            file,
            3 * PATIENCE,
        )
        .unwrap();
        let started = Instant::now();
        let error = certify(&patient, &id("demo", "web")).await.unwrap_err();
        assert_refused(&error, "Unavailable", &["the token cannot be checked now"]);
        assert!(
            started.elapsed() < 2 * PATIENCE,
            "{mood:?}: answered after {:?}",
            started.elapsed()
        );
        running.stop().await;
    }
}

#[test]
fn the_controller_identity_is_in_the_configured_trust_domain() {
    let pki = Pki::new("name-domain");
    let tokens = pki.token_file(TOKEN_LINES);
    match Config::from_toml_str(&pki.config("trust_domain = \"example.org\"", &tokens)) {
        Ok(config) => assert_eq!(
            config.identity.name().unwrap().trust_domain(),
            "example.org"
        ),
        Err(e) => assert!(e.to_string().contains("identity.name"), "{e}"),
    }
    let e = Config::from_toml_str(&pki.config(
        "name = \"spiffe://other.org/ns/mesh-system/sa/mesh-controller\"",
        &tokens,
    ))
    .expect_err("a controller outside the trust domain it issues for is refused");
    assert!(e.to_string().contains("identity.name"), "{e}");
}

#[test]
fn bootstrap_refuses_before_writing_anything() {
    let dir = TempDir::new("bin-bootstrap-partial");
    let out_dir = dir.join("pki");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("issuer.key"), "the old key").unwrap();
    let out = run_bin(&["bootstrap", "--out", out_dir.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        std::fs::read_to_string(out_dir.join("issuer.key")).unwrap(),
        "the old key"
    );
    assert!(!out_dir.join("ca.crt").exists(), "ca.crt was written");
    assert!(
        !out_dir.join("issuer.crt").exists(),
        "issuer.crt was written"
    );
}

/// A review that does not confirm the audience asked for proves nothing, even when it
/// authenticates the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_that_does_not_confirm_the_audience_is_refused() {
    init_logs();
    let pki = Pki::new("kube-no-audience");
    let fake = FakeKube {
        mood: Mood::NoAudiences,
        ..FakeKube::default()
    };
    let api = fake.clone().start().await;
    let running = start(&pki.config("", &kube_tokens(api, "")), pki.trust()).await;
    assert_refused(
        &certify(&running.client("eyJ.web.projected"), &id("demo", "web"))
            .await
            .unwrap_err(),
        "Unauthenticated",
        &["Kubernetes does not authenticate the token"],
    );
    assert_logged(&["token refused", "does not confirm the audience"]);
    running.stop().await;
}
