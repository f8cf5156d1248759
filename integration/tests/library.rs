//! The library's complete outbound stack (`mesh_examples::outbound_stack`), composed with no
//! sidecar binary, against real backends: real mesh-proxies in front of them terminating
//! mTLS, a route to a canary by header, and a dead endpoint whose connect failures are
//! retried, POSTs included.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_core::drain::Drain;
use mesh_core::identity::Identity;
use mesh_integration::mtls::{Pki, wait_ready};
use mesh_integration::{RunningProxy, named_backend, start_proxy_toml};
use mesh_stack::config::WorkloadConfig;

/// A mesh-proxy with identity `name` in front of a backend answering `body`.
async fn meshed_backend(pki: &Pki, name: &Identity, body: &'static str) -> RunningProxy {
    let app = named_backend(body).await.unwrap();
    let toml = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\n",
        pki.proxy_identity_toml(name, "1h"),
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    assert!(
        wait_ready(proxy.admin).await,
        "the backend's proxy never got a certificate"
    );
    proxy
}

fn endpoint(addr: SocketAddr, identity: &Identity) -> String {
    format!("{{ addr = \"{addr}\", identity = \"{identity}\" }}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_stack_balances_routes_retries_and_speaks_mtls() {
    let pki = Pki::new().unwrap();
    let api = pki.identity("demo", "api");
    let web = pki.identity("demo", "web");
    let api_0 = meshed_backend(&pki, &api, "api-0").await;
    let api_1 = meshed_backend(&pki, &api, "api-1").await;
    let canary = meshed_backend(&pki, &api, "canary").await;
    // A port nobody listens on: connecting to it fails before anything is sent.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        "[identity]\nmode = \"local\"\nname = \"{web}\"\ntrust_anchors = \"{}\"\n\
         issuer_cert = \"{}\"\nissuer_key = \"{}\"\n\
         [[services]]\nauthority = \"api:80\"\nendpoints = [{}, {}, {}]\n\
         retry = {{ conditions = [\"connect-failure\"], max_retries = 3, min_retries_per_second = 1000 }}\n\
         routes = [{{ name = \"canary\", matches = [{{ headers = [{{ name = \"x-canary\" }}] }}], \
         backends = [{{ service = \"canary:80\" }}] }}]\n\
         [[services]]\nauthority = \"canary:80\"\nendpoints = [{}]\n",
        pki.anchors().display(),
        pki.issuer_cert().display(),
        pki.issuer_key().display(),
        endpoint(api_0.inbound.unwrap(), &api),
        endpoint(api_1.inbound.unwrap(), &api),
        endpoint(dead, &api),
        endpoint(canary.inbound.unwrap(), &api),
    );
    let workload = WorkloadConfig {
        name: "web".into(),
        namespace: "demo".into(),
    };
    let stack = mesh_examples::outbound_stack::build(&config, workload)
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let outbound = stack.outbound.clone();
    tokio::spawn(async move {
        let drain = Drain::new();
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(outbound.clone().serve(stream, peer, drain.clone()));
        }
    });

    let mut client = mesh_integration::h2_client::<Empty<Bytes>>(addr)
        .await
        .unwrap();
    let mut answered: HashMap<String, usize> = HashMap::new();
    for i in 0..60 {
        // Half of them POSTs: a connect failure never reached the app, so it is retried whatever
        // the method.
        let method = if i % 2 == 0 { "GET" } else { "POST" };
        let mut req = Request::builder().method(method).uri("http://api:80/");
        if i % 10 == 9 {
            req = req.header("x-canary", "1");
        }
        let rsp = client
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert!(rsp.status().is_success(), "request {i}: {}", rsp.status());
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        *answered
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_default() += 1;
    }
    assert_eq!(answered.get("canary"), Some(&6), "{answered:?}");
    let (a, b) = (
        answered.get("api-0").copied(),
        answered.get("api-1").copied(),
    );
    assert_eq!(a.unwrap_or(0) + b.unwrap_or(0), 54, "{answered:?}");
    // Both live replicas served: the balancer tries an endpoint it has not measured yet. How
    // the rest is shared follows their latencies (P2C over peak-EWMA), which this test does
    // not pin down.
    assert!(
        a.unwrap_or(0) >= 1 && b.unwrap_or(0) >= 1,
        "both live replicas served: {answered:?}"
    );

    let text = stack
        .metrics
        .encode(mesh_metrics::Format::Prometheus)
        .unwrap();
    let mtls_series = format!("tls=\"true\",peer_identity=\"{api}\"");
    assert!(
        text.contains(&mtls_series),
        "requests went over mTLS to {api}:\n{text}"
    );
    assert!(text.contains("src_workload=\"web\""), "{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with("retries_total{service=\"api:80\",route=\"\"}") && !l.ends_with(" 0")
        ),
        "the dead endpoint's connect failures were retried:\n{text}"
    );
    assert!(
        text.contains("balancer_endpoints{service=\"api:80\",state=\"ready\"}"),
        "{text}"
    );
}
