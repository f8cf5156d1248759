//! Retries across a failed mutual-TLS handshake, with real handshakes (mesh-tls's connector)
//! on 127.0.0.1: the request never reached the application, so even a POST is sent again, to
//! the next endpoint, and the backend that answers gets it exactly once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use mesh_core::Body;
use mesh_core::client::{ClientConfig, HttpClient};
use mesh_core::error::{Cause, classify};
use mesh_core::identity::Identity;
use mesh_core::retry::{RetryLayer, RetryPolicy};
use mesh_integration::mtls::{Pki, WorkloadCert};
use mesh_integration::start_backend;
use mesh_tls::ca::Issuer;
use mesh_tls::cert::TrustAnchors;
use mesh_tls::local::LocalIdentity;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt};

/// Our workload identity `name`, holding a certificate from the PKI's issuer.
fn workload(pki: &Pki, name: &Identity) -> LocalIdentity {
    let trust = TrustAnchors::from_pem_file(&pki.anchors()).unwrap();
    let me = LocalIdentity::new(name.clone(), trust).unwrap();
    let issuer = Issuer::from_files(&pki.issuer_cert(), &pki.issuer_key()).unwrap();
    let issued = issuer
        .certify(
            name,
            &me.csr().unwrap(),
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
    me.install(&issued).unwrap();
    me
}

/// A TLS server presenting `cert` (a valid chain, for some identity): counts the connections
/// it accepts; no HTTP request can reach it unless a handshake succeeds.
async fn tls_server(cert: &WorkloadCert) -> (SocketAddr, Arc<AtomicUsize>) {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(mesh_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    (addr, accepted)
}

/// A server that answers the ClientHello with bytes that are not TLS, and closes.
async fn not_tls_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = tcp
                .write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    (addr, accepted)
}

/// A backend (HTTP/1.1 or h2c) that keeps the body of every request it gets.
async fn backend() -> (SocketAddr, Arc<Mutex<Vec<Bytes>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let addr = start_backend(move |req: Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push(body);
            Response::new(Full::new(Bytes::from_static(b"answered")))
        }
    })
    .await
    .unwrap();
    (addr, bodies)
}

fn post(version: Version) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .version(version)
        .uri("http://billing.test/charges")
        .body(Body::full("charge 10"))
        .unwrap()
}

/// A POST, over each HTTP version, to an endpoint at `failing` whose TLS handshake fails, then
/// to a good backend: the failure is `tls-handshake`, and the POST is retried once.
async fn retried_across(pki: &Pki, failing: SocketAddr, accepted: &AtomicUsize) {
    let billing = &pki.identity("demo", "billing");
    let me = workload(pki, &pki.identity("demo", "web"));
    for version in [Version::HTTP_2, Version::HTTP_11] {
        let client =
            HttpClient::new(&ClientConfig::default()).with_tls(mesh_tls::connect::connector(&me));
        let before = accepted.load(Ordering::SeqCst);

        // Alone, the endpoint fails with a typed cause: the request never left.
        let err = client
            .meshed_endpoint(failing, Some(billing))
            .oneshot(post(version))
            .await
            .unwrap_err();
        let cause = classify(&*err);
        assert_eq!(cause, Cause::TlsHandshake, "{version:?}: {err}");
        assert!(cause.never_reached_app());

        let (good, bodies) = backend().await;
        let endpoints = vec![
            client.meshed_endpoint(failing, Some(billing)),
            client.endpoint(good),
        ];
        let retry = RetryLayer::new(&RetryPolicy::default());
        let stats = retry.stats();
        // In turn, as a balancer would pick another endpoint for the retry.
        let mut svc = retry.layer(mesh_balance::RoundRobin::new(endpoints).unwrap());
        let rsp = svc
            .ready()
            .await
            .unwrap()
            .call(post(version))
            .await
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::OK, "{version:?}");
        assert_eq!(rsp.headers()["mesh-retries"], "1", "{version:?}");
        assert_eq!(
            *bodies.lock().unwrap(),
            [Bytes::from_static(b"charge 10")],
            "{version:?}: the backend that answered got the POST exactly once"
        );
        assert_eq!(stats.retries(), 1);
        assert_eq!(
            accepted.load(Ordering::SeqCst) - before,
            2,
            "{version:?}: one handshake alone, one in the retried request"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_failing_the_tls_handshake_is_retried() {
    // The endpoint proves `api` with a valid chain, where discovery said `billing`.
    let pki = Pki::new().unwrap();
    let api = pki.identity("demo", "api");
    let cert = pki
        .issue(&api, SystemTime::now(), Duration::from_secs(3600))
        .unwrap();
    let (impostor, accepted) = tls_server(&cert).await;
    retried_across(&pki, impostor, &accepted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_to_an_endpoint_that_does_not_speak_tls_is_retried() {
    let pki = Pki::new().unwrap();
    let (plain, accepted) = not_tls_server().await;
    retried_across(&pki, plain, &accepted).await;
}
