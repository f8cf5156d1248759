//! Kubernetes discovery against the stand-in API server (the real kube client, the real
//! list/watch protocol): endpoints added, changed and removed reach the balancer; an endpoint
//! marked not ready stops getting new requests while its requests in flight finish; an API
//! server restart and a 410 Gone both end in the right endpoints with no failed request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_discovery::Resolve;
use mesh_discovery::kubernetes::{KubernetesConfig, KubernetesResolve};
use mesh_integration::{start_backend, start_proxy_toml};
use mesh_kube_fake::FakeApiServer;
use serde_json::json;
use tower::discover::Change;

const AUTHORITY: &str = "web.demo.svc.cluster.local:80";

fn service() -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "admin", "port": 9990, "targetPort": 9990}
        ]}
    }))
    .unwrap()
}

fn pod(name: &str, meshed: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "demo",
                     "labels": {"app": "web", "mesh.dev/meshed": if meshed { "true" } else { "false" }}},
        "spec": {"serviceAccountName": "web-sa", "containers": [{"name": "app", "image": "web"}]}
    }))
    .unwrap()
}

/// One slice per endpoint: the test's backends listen on different ports of 127.0.0.1.
fn slice(pod: &str, addr: SocketAddr, ready: bool) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": format!("web-{pod}"), "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"},
                  {"name": "admin", "port": 9990, "protocol": "TCP"}],
        "endpoints": [{
            "addresses": [addr.ip().to_string()],
            "conditions": {"ready": ready, "serving": true, "terminating": !ready},
            "targetRef": {"kind": "Pod", "name": pod, "namespace": "demo"},
            "zone": "zone-a"
        }]
    }))
    .unwrap()
}

async fn next_change(
    r: &mut mesh_discovery::Resolution,
) -> Change<SocketAddr, mesh_core::endpoint::Endpoint> {
    let item = tokio::time::timeout(Duration::from_secs(10), r.next())
        .await
        .expect("no change within 10 s");
    item.unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_become_endpoints_with_identities() {
    let api = FakeApiServer::start().await;
    api.apply(service());
    api.apply(pod("web-0", true));
    api.apply(pod("web-1", false));
    let a: SocketAddr = "10.0.0.1:8080".parse().unwrap();
    let b: SocketAddr = "10.0.0.2:8080".parse().unwrap();
    api.apply(slice("web-0", a, true));
    let resolve = KubernetesResolve::new(api.client(), KubernetesConfig::default());
    let mut r = resolve.resolve(AUTHORITY).unwrap();

    // Added: the Service port 80 is the slice port named "http"; the meshed pod's
    // ServiceAccount is its identity.
    match next_change(&mut r).await {
        Change::Insert(addr, e) => {
            assert_eq!(addr, a);
            assert_eq!(
                e.identity().map(|i| i.uri()),
                Some("spiffe://cluster.local/ns/demo/sa/web-sa")
            );
            assert_eq!(e.label("pod"), Some("web-0"));
            assert_eq!(e.label("zone"), Some("zone-a"));
            assert_eq!(e.label("workload"), Some("web"));
        }
        other => panic!("{other:?}"),
    }
    // Another pod, not meshed: no identity.
    api.apply(slice("web-1", b, true));
    match next_change(&mut r).await {
        Change::Insert(addr, e) => {
            assert_eq!(addr, b);
            assert!(e.identity().is_none());
        }
        other => panic!("{other:?}"),
    }
    // Changed: the pod becomes meshed (its endpoint is replaced with one that has an identity).
    api.apply(pod("web-1", true));
    match next_change(&mut r).await {
        Change::Insert(addr, e) => {
            assert_eq!(addr, b);
            assert!(e.identity().is_some());
        }
        other => panic!("{other:?}"),
    }
    // Not ready: removed. Deleted: removed.
    api.apply(slice("web-0", a, false));
    assert!(matches!(next_change(&mut r).await, Change::Remove(addr) if addr == a));
    api.delete::<EndpointSlice>("demo", "web-web-1");
    assert!(matches!(next_change(&mut r).await, Change::Remove(addr) if addr == b));

    // The API server goes away: nothing is removed; it comes back and updates resume.
    api.apply(slice("web-0", a, true));
    assert!(matches!(next_change(&mut r).await, Change::Insert(addr, _) if addr == a));
    api.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.endpoints().count(), 1, "the last known endpoints stay");
    api.restart().await;
    api.apply(slice("web-1", b, true));
    assert!(matches!(next_change(&mut r).await, Change::Insert(addr, _) if addr == b));
}

/// A backend answering its name; `/slow` after 1.5 s.
async fn backend(name: &'static str) -> SocketAddr {
    start_backend(move |req: Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        Response::new(Full::new(Bytes::from_static(name.as_bytes())))
    })
    .await
    .unwrap()
}

/// Sends requests in a loop until `stop`, recording (sent at, who answered); a failed request
/// is recorded as "FAILED".
fn traffic(
    outbound: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, String)>> {
    tokio::spawn(async move {
        let mut tx = mesh_integration::h2_client::<Empty<Bytes>>(outbound)
            .await
            .unwrap();
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let who = match tx
                .send_request(
                    Request::get("http://web.demo.svc.cluster.local/")
                        .body(Empty::new())
                        .unwrap(),
                )
                .await
            {
                Ok(rsp) if rsp.status().is_success() => {
                    let body = rsp.into_body().collect().await.unwrap().to_bytes();
                    String::from_utf8_lossy(&body).into_owned()
                }
                Ok(rsp) => format!("FAILED {}", rsp.status()),
                Err(e) => format!("FAILED {e}"),
            };
            seen.push((sent, who));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_kubernetes_with_no_gap() {
    let api = FakeApiServer::start().await;
    api.apply(service());
    let names = ["web-0", "web-1", "web-2", "web-3"];
    let mut addrs = Vec::new();
    for name in names {
        addrs.push(backend(name).await);
        api.apply(pod(name, false));
    }
    for i in 0..3 {
        api.apply(slice(names[i], addrs[i], true));
    }
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [discovery.kubernetes]\napi = \"{}\"\n\
         [[outbound.services]]\nauthority = \"{AUTHORITY}\"\ndiscovery = \"kubernetes\"\n\
         balancer = {{ decay = \"100ms\" }}\n",
        api.url()
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(proxy.outbound, stop.clone());
    // The balancer's own view (its endpoint gauge) says when a change arrived; then the
    // endpoints that answer must be those expected, and only those.
    let wait_for = |expected: &'static [&'static str]| {
        let (outbound, admin) = (proxy.outbound, proxy.admin);
        async move {
            let expected: BTreeSet<&str> = expected.iter().copied().collect();
            let start = Instant::now();
            let gauge = format!(
                "balancer_endpoints{{service=\"{AUTHORITY}\",state=\"ready\"}} {}",
                expected.len()
            );
            let mut tx = mesh_integration::h2_client::<Empty<Bytes>>(outbound)
                .await
                .unwrap();
            let mut answered = BTreeSet::new();
            loop {
                let (_, metrics) = mesh_integration::scrape_metrics(admin, None).await.unwrap();
                if metrics.contains(&gauge) {
                    let mut seen = BTreeSet::new();
                    for _ in 0..60 {
                        let rsp = tx
                            .send_request(
                                Request::get("http://web.demo.svc.cluster.local/")
                                    .body(Empty::new())
                                    .unwrap(),
                            )
                            .await
                            .unwrap();
                        let body = rsp.into_body().collect().await.unwrap().to_bytes();
                        seen.insert(String::from_utf8_lossy(&body).into_owned());
                    }
                    answered.extend(seen.iter().cloned());
                    if seen.iter().all(|w| expected.contains(w.as_str()))
                        && expected.iter().all(|w| answered.contains(*w))
                    {
                        return start.elapsed();
                    }
                }
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "the balancer never had exactly {expected:?}: {answered:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(&["web-0", "web-1", "web-2"]).await;

    // web-0 is scaled down while requests are in flight on it: they finish; new ones go
    // elsewhere once the change arrives.
    // Enough of them that the balancer, spreading by load, puts several on web-0.
    let mut slow = Vec::new();
    for _ in 0..24 {
        let outbound = proxy.outbound;
        slow.push(tokio::spawn(async move {
            let mut tx = mesh_integration::h2_client::<Empty<Bytes>>(outbound)
                .await
                .unwrap();
            let rsp = tx
                .send_request(
                    Request::get("http://web.demo.svc.cluster.local/slow")
                        .body(Empty::new())
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = rsp.status();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let scaled_down = Instant::now();
    api.apply(slice("web-0", addrs[0], false));
    // The change reaches the balancer: its gauge of ready endpoints drops to 2.
    let gauge = format!("balancer_endpoints{{service=\"{AUTHORITY}\",state=\"ready\"}} 2");
    loop {
        let (_, metrics) = mesh_integration::scrape_metrics(proxy.admin, None)
            .await
            .unwrap();
        if metrics.contains(&gauge) {
            break;
        }
        assert!(
            scaled_down.elapsed() < Duration::from_secs(5),
            "web-0 is still in the balancer"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let removed_after = scaled_down.elapsed();
    let mut finished_on_web0 = 0;
    for request in slow {
        let (status, who) = request.await.unwrap();
        assert!(status.is_success(), "an in-flight request failed: {status}");
        finished_on_web0 += usize::from(who == "web-0");
    }
    assert!(
        finished_on_web0 > 0,
        "no slow request was in flight on web-0"
    );

    // The API server restarts mid-watch; meanwhile web-3 joins.
    api.stop().await;
    api.apply(pod("web-3", false));
    api.apply(slice("web-3", addrs[3], true));
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.restart().await;
    wait_for(&["web-1", "web-2", "web-3"]).await;

    // A 410 Gone: the history is dropped while the watch is cut, and web-1 leaves meanwhile;
    // the watcher relists and ends with the right set.
    let lists_before = api.requests().iter().filter(|r| r.verb == "list").count();
    api.stop().await;
    api.delete::<EndpointSlice>("demo", "web-web-1");
    api.compact();
    api.restart().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.requests().iter().filter(|r| r.verb == "list").count() == lists_before {
        assert!(Instant::now() < deadline, "no relist after 410 Gone");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(&["web-2", "web-3"]).await;

    stop.store(true, Ordering::Relaxed);
    let seen = load.await.unwrap();
    let failed: Vec<_> = seen
        .iter()
        .filter(|(_, w)| w.starts_with("FAILED"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(5)]
    );
    let last_on_web0 = seen
        .iter()
        .filter(|(_, who)| who == "web-0")
        .map(|(sent, _)| *sent)
        .max()
        .unwrap();
    // Once out of the balancer, web-0 gets no new request.
    assert!(
        last_on_web0 <= scaled_down + removed_after,
        "web-0 got a request {:?} after it was marked not ready, once out of the balancer",
        last_on_web0 - scaled_down
    );
    eprintln!(
        "kubernetes: {} requests, 0 failed; web-0 left the balancer {removed_after:?} after it was marked not ready; {finished_on_web0} requests in flight on it finished",
        seen.len()
    );
}
