//! Mutual TLS between proxies, with real handshakes: what works, and every refusal named in
//! the log (unknown root, expired certificate, another identity, plaintext where mTLS is
//! required, an identity not on the allow list). Also `openssl s_client` against the inbound
//! port, with and without a workload certificate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_core::identity::Identity;
use mesh_integration::mtls::{Pki, client_config, logs, tls_connect, wait_ready};
use mesh_integration::{RunningProxy, hello_backend, scrape_metrics, start_proxy_toml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy fronting a hello app with identity `name` and inbound `policy` (TOML value).
async fn server_proxy(pki: &Pki, name: &Identity, policy: &str) -> RunningProxy {
    let app = hello_backend().await.unwrap();
    let toml = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\ndetect_timeout = \"1s\"\npolicy = {policy}\n",
        pki.proxy_identity_toml(name, "1h"),
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    assert!(
        wait_ready(proxy.admin).await,
        "the proxy never got a certificate"
    );
    proxy
}

/// A proxy whose outbound service `api:80` is `endpoint`, expected to prove `expected`.
async fn client_proxy(
    pki: &Pki,
    name: &Identity,
    endpoint: SocketAddr,
    expected: &Identity,
) -> RunningProxy {
    let toml = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [[outbound.services]]\nauthority = \"api:80\"\n\
         endpoints = [{{ addr = \"{endpoint}\", identity = \"{expected}\" }}]\n",
        pki.proxy_identity_toml(name, "1h"),
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    assert!(
        wait_ready(proxy.admin).await,
        "the proxy never got a certificate"
    );
    proxy
}

/// Sends `GET /` for `api` over h2c to `outbound`.
async fn h2_get(outbound: SocketAddr) -> http::Response<hyper::body::Incoming> {
    let mut tx = mesh_integration::h2_client::<Empty<Bytes>>(outbound)
        .await
        .unwrap();
    tx.send_request(Request::get("http://api/").body(Empty::new()).unwrap())
        .await
        .unwrap()
}

/// An HTTP/1.1 GET over an established stream; `None` when the server closes instead.
async fn h1_get_over<I>(io: I) -> Option<(StatusCode, http::HeaderMap, String)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .ok()?;
    tokio::spawn(conn);
    let rsp = tx
        .send_request(
            Request::get("/")
                .header("host", "api")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .ok()?;
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_pair_talks_mtls_and_the_server_knows_the_caller() {
    logs();
    let pki = Pki::new().unwrap();
    let (web, api) = (pki.identity("demo", "web"), pki.identity("demo", "api"));
    let server = server_proxy(&pki, &api, "\"all-authenticated\"").await;
    let client = client_proxy(&pki, &web, server.inbound.unwrap(), &api).await;

    for _ in 0..3 {
        let rsp = h2_get(client.outbound).await;
        assert_eq!(rsp.status(), StatusCode::OK);
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }
    let (_, outbound) = scrape_metrics(client.admin, None).await.unwrap();
    assert!(
        outbound.lines().any(|l| l.starts_with("request_total{")
            && l.contains("tls=\"true\"")
            && l.contains(&format!("peer_identity=\"{api}\""))
            && l.ends_with(" 3")),
        "{outbound}"
    );
    let (_, inbound) = scrape_metrics(server.admin, None).await.unwrap();
    assert!(
        inbound.lines().any(|l| l.starts_with("request_total{")
            && l.contains("direction=\"inbound\"")
            && l.contains("tls=\"true\"")
            && l.contains(&format!("peer_identity=\"{web}\""))
            && l.ends_with(" 3")),
        "{inbound}"
    );
    assert!(
        inbound.contains("identity_cert_renewals_total 1"),
        "{inbound}"
    );
    assert!(
        inbound.contains("identity_cert_expiration_timestamp_seconds 1"),
        "{inbound}"
    );
}

/// The server's log line about `peer` (the client's local address) with `needle` in it.
async fn server_logged(peer: SocketAddr, needle: &str) -> String {
    logs()
        .wait_for(&[&format!("peer={peer}"), needle])
        .await
        .unwrap_or_else(|| panic!("no log line for {peer} containing {needle:?}"))
}

/// Connects with `cert` and tries one request; returns the client's local address and what
/// came back (None: refused at the handshake or closed).
async fn try_client(
    inbound: SocketAddr,
    server: &Identity,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> (SocketAddr, Option<(StatusCode, http::HeaderMap, String)>) {
    let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let name = rustls_pki_types::ServerName::try_from(server.dns_name().to_owned()).unwrap();
    let result = match tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    {
        Ok(tls) => h1_get_over(tls).await,
        Err(_) => None,
    };
    (local, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificates_are_refused_and_named_in_the_log() {
    logs();
    let pki = Pki::new().unwrap();
    let api = pki.identity("demo", "api");
    let server = server_proxy(&pki, &api, "\"all-authenticated\"").await;
    let inbound = server.inbound.unwrap();
    let web = pki.identity("demo", "web");
    let now = SystemTime::now();

    // A valid certificate is served: the baseline.
    let good = pki.issue(&web, now, Duration::from_secs(3600)).unwrap();
    let config = client_config(Some(&good), &pki.anchors(), &[b"http/1.1"]).unwrap();
    let (_, answer) = try_client(inbound, &api, config).await;
    assert_eq!(
        answer.map(|a| (a.0, a.2)),
        Some((StatusCode::OK, "hello".into()))
    );

    // A certificate from a root nobody here trusts.
    let stranger = Pki::new().unwrap();
    let foreign = stranger
        .issue(&web, now, Duration::from_secs(3600))
        .unwrap();
    let config = client_config(Some(&foreign), &pki.anchors(), &[b"http/1.1"]).unwrap();
    let (local, answer) = try_client(inbound, &api, config).await;
    assert!(answer.is_none(), "{answer:?}");
    let line = server_logged(local, "inbound connection refused").await;
    // webpki names it UnknownIssuer, or BadSignature when the stranger's issuer has the same
    // subject name as ours.
    assert!(
        line.contains("invalid peer certificate: UnknownIssuer")
            || line.contains("invalid peer certificate: BadSignature"),
        "{line}"
    );

    // An expired certificate: issued two hours ago for one hour.
    let expired = pki
        .issue(
            &web,
            now - Duration::from_secs(7200),
            Duration::from_secs(3600),
        )
        .unwrap();
    let config = client_config(Some(&expired), &pki.anchors(), &[b"http/1.1"]).unwrap();
    let (local, answer) = try_client(inbound, &api, config).await;
    assert!(answer.is_none(), "{answer:?}");
    let line = server_logged(local, "inbound connection refused").await;
    assert!(line.to_lowercase().contains("expired"), "{line}");

    // No certificate at all.
    let config = client_config(None, &pki.anchors(), &[b"http/1.1"]).unwrap();
    let (local, answer) = try_client(inbound, &api, config).await;
    assert!(answer.is_none(), "{answer:?}");
    let line = server_logged(local, "inbound connection refused").await;
    assert!(line.contains("no certificates"), "{line}");

    // Plaintext on an all-authenticated port: 403, named.
    let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let local = tcp.local_addr().unwrap();
    let (status, headers, _) = h1_get_over(tcp).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let reason = headers["mesh-proxy-error"].to_str().unwrap();
    assert!(reason.starts_with("unauthorized: plaintext"), "{reason}");
    let line = server_logged(local, "inbound requests denied").await;
    assert!(line.contains("requires mutual TLS"), "{line}");
    // And the connection ends with that answer: a denied client cannot keep it open.
    let mut tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let two = b"GET / HTTP/1.1\r\nHost: api\r\n\r\nGET / HTTP/1.1\r\nHost: api\r\n\r\n";
        tcp.write_all(two).await.unwrap();
        let mut answered = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answered))
            .await
            .expect("the denied connection was kept open");
        assert!(read.is_ok(), "{read:?}");
        let text = String::from_utf8_lossy(&answered);
        assert_eq!(text.matches("HTTP/1.1 403").count(), 1, "{text}");
    }

    // The denials are counted.
    let (_, text) = scrape_metrics(server.admin, None).await.unwrap();
    assert!(
        text.contains("inbound_authz_denied_total{protocol=\"http\",tls=\"false\""),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            .starts_with("inbound_tls_handshake_failures_total{reason=\"handshake\"} ")
            && !l.ends_with(" 0")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_off_the_allow_list_is_denied() {
    logs();
    let pki = Pki::new().unwrap();
    let (web, api, intruder) = (
        pki.identity("demo", "web"),
        pki.identity("demo", "api"),
        pki.identity("other", "intruder"),
    );
    let server = server_proxy(&pki, &api, &format!("[\"{web}\"]")).await;
    let inbound = server.inbound.unwrap();
    let now = SystemTime::now();

    let allowed = pki.issue(&web, now, Duration::from_secs(3600)).unwrap();
    let config = client_config(Some(&allowed), &pki.anchors(), &[b"http/1.1"]).unwrap();
    let (_, answer) = try_client(inbound, &api, config).await;
    assert_eq!(answer.map(|a| a.0), Some(StatusCode::OK));

    let denied = pki
        .issue(&intruder, now, Duration::from_secs(3600))
        .unwrap();
    let config = client_config(Some(&denied), &pki.anchors(), &[b"http/1.1"]).unwrap();
    let (local, answer) = try_client(inbound, &api, config).await;
    let (status, headers, _) = answer.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        headers["mesh-proxy-error"]
            .to_str()
            .unwrap()
            .contains("not on the allow list"),
        "{headers:?}"
    );
    let line = server_logged(local, "inbound requests denied").await;
    assert!(
        line.contains(&format!("{intruder} is not on the allow list")),
        "{line}"
    );

    // gRPC callers get PERMISSION_DENIED.
    let config = client_config(Some(&denied), &pki.anchors(), &[b"h2"]).unwrap();
    let tls = tls_connect(inbound, &api, config).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let rsp = tx
        .send_request(
            Request::post("http://api/demo.Greeter/SayHello")
                .header("content-type", "application/grpc")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.headers()["grpc-status"], "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_proving_another_identity_is_refused() {
    logs();
    let pki = Pki::new().unwrap();
    let (web, api, billing) = (
        pki.identity("demo", "web"),
        pki.identity("demo", "api"),
        pki.identity("demo", "billing"),
    );
    // A TLS server with a valid chain for `api`, whatever name the client asks for.
    let api_cert = pki
        .issue(&api, SystemTime::now(), Duration::from_secs(3600))
        .unwrap();
    let impostor = impostor_server(&api_cert).await;
    let client = client_proxy(&pki, &web, impostor, &billing).await;

    let rsp = h2_get(client.outbound).await;
    assert_eq!(rsp.status(), StatusCode::BAD_GATEWAY);
    let reason = rsp.headers()["mesh-proxy-error"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(reason.starts_with("tls-handshake"), "{reason}");
    assert!(reason.contains(billing.uri()), "{reason}");
    let line = logs()
        .wait_for(&[
            "endpoint connect failed",
            billing.uri(),
            "not valid for name",
        ])
        .await;
    assert!(
        line.is_some(),
        "no log line names the wrong identity: {reason}"
    );
}

/// A TLS server presenting `cert` to anyone, answering nothing.
async fn impostor_server(cert: &mesh_integration::mtls::WorkloadCert) -> SocketAddr {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(mesh_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

/// The bytes of an h2 connection that sends `GET /` for `api` on stream 1.
fn h2_request_bytes() -> Vec<u8> {
    let mut out = mesh_core::detect::H2_PREFACE.to_vec();
    // An empty SETTINGS frame.
    out.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    // HPACK: :method GET (2), :scheme http (6), :path / (4), :authority "api" (literal,
    // name index 1, not indexed).
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 3];
    block.extend_from_slice(b"api");
    let len = u32::try_from(block.len()).unwrap().to_be_bytes();
    out.extend_from_slice(&len[1..]);
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    out.extend_from_slice(&[0x1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    out
}

/// Does `bytes` hold an h2 HEADERS frame on stream 1 that starts with `:status: 200`?
fn has_status_200(bytes: &[u8]) -> bool {
    bytes
        .windows(10)
        .any(|w| w[3] == 0x1 && w[5..9] == [0, 0, 0, 1] && w[9] == 0x88)
}

/// Runs `openssl s_client` with `args`, writes an h2 request, and collects what it prints
/// for up to 10 s (or until the response arrives).
async fn s_client(inbound: SocketAddr, server: &Identity, args: &[&str]) -> (Vec<u8>, String) {
    let mut child = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &inbound.to_string()])
        .args([
            "-servername",
            server.dns_name(),
            "-alpn",
            "h2",
            "-tls1_3",
            "-quiet",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("openssl is required for this test (Debian's openssl package)");
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(&h2_request_bytes()).await;
    let _ = stdin.flush().await;
    let mut stdout = child.stdout.take().unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !has_status_200(&out) {
        match tokio::time::timeout_at(deadline, stdout.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    drop(stdin);
    let _ = child.start_kill();
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = tokio::time::timeout(Duration::from_secs(2), stderr.read_to_string(&mut err)).await;
    }
    (out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_with_a_workload_certificate_gets_an_h2_answer() {
    logs();
    let pki = Pki::new().unwrap();
    let (web, api) = (pki.identity("demo", "web"), pki.identity("demo", "api"));
    let server = server_proxy(&pki, &api, "\"all-authenticated\"").await;
    let inbound = server.inbound.unwrap();

    let cert = pki
        .issue(&web, SystemTime::now(), Duration::from_secs(3600))
        .unwrap();
    let chain = pki.dir.join("web.crt");
    let key = pki.dir.join("web.key");
    std::fs::write(&chain, &cert.chain_pem).unwrap();
    std::fs::write(&key, &cert.key_pem).unwrap();
    let anchors = pki.anchors();
    let (out, err) = s_client(
        inbound,
        &api,
        &[
            "-cert",
            chain.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            // -cert sends the leaf alone; the issuer goes with -cert_chain.
            "-cert_chain",
            chain.to_str().unwrap(),
            "-CAfile",
            anchors.to_str().unwrap(),
            "-verify_return_error",
        ],
    )
    .await;
    assert!(
        has_status_200(&out),
        "no :status 200 from the app: {out:02x?} {err}"
    );

    let (out, err) = s_client(
        inbound,
        &api,
        &["-CAfile", anchors.to_str().unwrap(), "-verify_return_error"],
    )
    .await;
    assert!(
        !has_status_200(&out),
        "answered without a client certificate"
    );
    assert!(
        err.contains("certificate required") || err.contains("alert"),
        "{err}"
    );
}
