//! The destination API against the stand-in Kubernetes API server, with the real
//! `mesh-controller` binary: endpoint changes reach every subscriber of a service, a proxy
//! keeps its endpoints while the controller is away and follows again when it returns, and at
//! scale (500 streams over 200 services of 10 endpoints) one change reaches all subscribers of
//! its service. The scale test prints the controller's RSS and the propagation times.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_core::identity::Identity;
use mesh_discovery::Resolve;
use mesh_discovery::remote::RemoteResolve;
use mesh_discovery::remote::proto::ResolveRequest;
use mesh_discovery::remote::proto::destination_client::DestinationClient;
use mesh_kube_fake::FakeApiServer;
use mesh_tls::cert::TrustAnchors;
use serde_json::json;
use tower::discover::Change;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-controller");

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("mesh-dest-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = mesh_tls::ca::bootstrap(
            "cluster.local",
            Duration::from_secs(86400),
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
        std::fs::write(dir.join("ca.crt"), made.anchor_pem).unwrap();
        std::fs::write(dir.join("issuer.crt"), made.issuer_cert_pem).unwrap();
        std::fs::write(dir.join("issuer.key"), made.issuer_key_pem).unwrap();
        std::fs::write(dir.join("tokens.txt"), "").unwrap();
        Self { dir }
    }

    fn trust(&self) -> TrustAnchors {
        TrustAnchors::from_pem_file(&self.dir.join("ca.crt")).unwrap()
    }

    /// A proxy's identity with a certificate from this PKI's issuer: what the destination
    /// API asks its callers to prove.
    fn proxy_identity(&self) -> mesh_tls::local::LocalIdentity {
        let name = Identity::parse("spiffe://cluster.local/ns/demo/sa/proxy").unwrap();
        let identity = mesh_tls::local::LocalIdentity::new(name.clone(), self.trust()).unwrap();
        let issuer = mesh_tls::ca::Issuer::from_files(
            &self.dir.join("issuer.crt"),
            &self.dir.join("issuer.key"),
        )
        .unwrap();
        let issued = issuer
            .certify(
                &name,
                &identity.csr().unwrap(),
                Duration::from_secs(3600),
                SystemTime::now(),
            )
            .unwrap();
        identity.install(&issued).unwrap();
        identity
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The controller binary, serving the destination API from `api` on `listen`.
struct ControllerProcess {
    child: Child,
    addr: SocketAddr,
}

impl ControllerProcess {
    fn start(pki: &Pki, api: &FakeApiServer, listen: SocketAddr) -> Self {
        let tokens = format!("file = \"{}/tokens.txt\"\n", pki.dir.display());
        Self::start_with(pki, api, listen, &tokens, "")
    }

    /// With these `[tokens]` keys, and more `[destination]` keys.
    fn start_with(
        pki: &Pki,
        api: &FakeApiServer,
        listen: SocketAddr,
        tokens: &str,
        destination: &str,
    ) -> Self {
        let config = pki.dir.join("controller.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{listen}\"\nlog = \"warn\"\n[identity]\ntrust_anchors = \"{0}/ca.crt\"\n\
                 issuer_cert = \"{0}/issuer.crt\"\nissuer_key = \"{0}/issuer.key\"\n\
                 [tokens]\n{tokens}[destination]\nkubernetes_api = \"{1}\"\n{destination}",
                pki.dir.display(),
                api.url()
            ),
        )
        .unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self {
            child,
            addr: listen,
        }
    }

    /// VmRSS and VmHWM, in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn controller_identity() -> Identity {
    Identity::parse("spiffe://cluster.local/ns/mesh-system/sa/mesh-controller").unwrap()
}

/// A channel that proves a proxy's identity, as the destination API asks.
fn channel(pki: &Pki, addr: SocketAddr) -> tonic::transport::Channel {
    let identity = pki.proxy_identity();
    mesh_tls::api::controller_channel(
        &addr.to_string(),
        &controller_identity(),
        &pki.trust(),
        Some(identity.client_cert_resolver()),
        None,
    )
    .unwrap()
}

/// A channel with no client certificate: what anyone on the network can open.
fn anonymous_channel(pki: &Pki, addr: SocketAddr) -> tonic::transport::Channel {
    mesh_tls::api::controller_channel(
        &addr.to_string(),
        &controller_identity(),
        &pki.trust(),
        None,
        None,
    )
    .unwrap()
}

fn service(ns: &str, name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": [{"name": "grpc", "port": 8080, "targetPort": "grpc"}]}
    }))
    .unwrap()
}

/// A slice of `ips` (on port 9000), with no pods behind them (targetRef-less endpoints).
fn slice(ns: &str, service: &str, ips: &[String]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-abc"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 9000, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .unwrap()
}

fn pod_placeholder(ns: &str) -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": "placeholder", "namespace": ns}, "spec": {"containers": []}}),
    )
    .unwrap()
}

async fn wait_until_serving(pki: &Pki, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut client = DestinationClient::new(channel(pki, addr));
        let probe = tokio::time::timeout(
            Duration::from_secs(2),
            client.resolve(ResolveRequest {
                authority: "nope.nowhere.svc.cluster.local:1".into(),
            }),
        )
        .await;
        if matches!(probe, Ok(Ok(_))) {
            return;
        }
        assert!(Instant::now() < deadline, "the controller never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn next_change(
    r: &mut mesh_discovery::Resolution,
) -> Change<SocketAddr, mesh_core::endpoint::Endpoint> {
    tokio::time::timeout(Duration::from_secs(10), r.next())
        .await
        .expect("no change within 10 s")
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_follow_the_destination_api_and_keep_endpoints_while_it_is_away() {
    let pki = Pki::new("follow");
    let api = FakeApiServer::start().await;
    api.apply(service("demo", "web"));
    api.apply(pod_placeholder("demo"));
    api.apply(slice(
        "demo",
        "web",
        &["10.0.0.1".into(), "10.0.0.2".into()],
    ));
    let listen = free_addr();
    let controller = ControllerProcess::start(&pki, &api, listen);
    wait_until_serving(&pki, listen).await;

    let resolve = RemoteResolve::new(channel(&pki, controller.addr));
    let mut r = resolve.resolve("web.demo.svc.cluster.local:8080").unwrap();
    let mut first = BTreeSet::new();
    for _ in 0..2 {
        match next_change(&mut r).await {
            Change::Insert(addr, _) => first.insert(addr.to_string()),
            other => panic!("{other:?}"),
        };
    }
    assert_eq!(
        first,
        ["10.0.0.1:9000", "10.0.0.2:9000"].map(String::from).into()
    );

    // Changed: one endpoint out, one in.
    api.apply(slice(
        "demo",
        "web",
        &["10.0.0.2".into(), "10.0.0.3".into()],
    ));
    let mut changes = [next_change(&mut r).await, next_change(&mut r).await];
    changes.sort_by_key(|c| matches!(c, Change::Insert(..)));
    assert!(matches!(&changes[0], Change::Remove(a) if a.to_string() == "10.0.0.1:9000"));
    assert!(matches!(&changes[1], Change::Insert(a, _) if a.to_string() == "10.0.0.3:9000"));

    // The controller dies: the endpoints stay.
    controller.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(r.endpoints().count(), 2);
    // Meanwhile an endpoint goes; the controller returns on the same address; the proxy
    // reconnects and follows.
    api.apply(slice("demo", "web", &["10.0.0.3".into()]));
    let controller = ControllerProcess::start(&pki, &api, listen);
    assert!(
        matches!(next_change(&mut r).await, Change::Remove(a) if a.to_string() == "10.0.0.2:9000")
    );
    assert_eq!(r.endpoints().count(), 1);
    controller.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_streams_over_two_hundred_services() {
    const SERVICES: usize = 200;
    const STREAMS: usize = 500;
    const CHANGES: usize = 40;
    let pki = Pki::new("scale");
    let api = FakeApiServer::start().await;
    api.apply(pod_placeholder("scale"));
    let ips = |svc: usize, generation: usize| -> Vec<String> {
        (0..10)
            .map(|i| {
                format!(
                    "10.{}.{}.{}",
                    svc / 250,
                    svc % 250,
                    i + 10 * (generation % 20)
                )
            })
            .collect()
    };
    for s in 0..SERVICES {
        api.apply(service("scale", &format!("svc-{s}")));
        api.apply(slice("scale", &format!("svc-{s}"), &ips(s, 0)));
    }
    let listen = free_addr();
    let controller = ControllerProcess::start(&pki, &api, listen);
    wait_until_serving(&pki, listen).await;

    // 500 streams over 10 channels (connections); service i gets streams i, i+200, i+400.
    let channels: Vec<_> = (0..10).map(|_| channel(&pki, listen)).collect();
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(usize, usize, Instant, BTreeSet<String>)>();
    let mut subscribers_of = vec![Vec::new(); SERVICES];
    for stream in 0..STREAMS {
        let svc = stream % SERVICES;
        subscribers_of[svc].push(stream);
        let mut client = DestinationClient::new(channels[stream % channels.len()].clone());
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut updates = client
                .resolve(ResolveRequest {
                    authority: format!("svc-{svc}.scale.svc.cluster.local:8080"),
                })
                .await
                .unwrap()
                .into_inner();
            while let Ok(Some(update)) = updates.message().await {
                let addrs = update.endpoints.into_iter().map(|e| e.addr).collect();
                let _ = tx.send((stream, svc, Instant::now(), addrs));
            }
        });
    }
    // Every stream gets its service's 10 endpoints.
    let mut current: Vec<BTreeSet<String>> = vec![BTreeSet::new(); STREAMS];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut complete = 0;
    while complete < STREAMS {
        let (stream, _, _, addrs) = tokio::time::timeout_at(deadline.into(), rx.recv())
            .await
            .expect("not every stream got its endpoints within 60 s")
            .unwrap();
        if current[stream].len() != 10 && addrs.len() == 10 {
            complete += 1;
        }
        current[stream] = addrs;
    }
    let (rss_synced, _) = controller.memory_kib();

    // One endpoint change at a time: it must reach every subscriber of its service.
    let mut latencies = Vec::new();
    for change in 0..CHANGES {
        let svc = (change * 37) % SERVICES;
        let mut new_ips = ips(svc, 0);
        new_ips[change % 10] = format!("10.99.{}.{}", change / 250, change % 250);
        let expected: BTreeSet<String> = new_ips.iter().map(|ip| format!("{ip}:9000")).collect();
        let sent = Instant::now();
        api.apply(slice("scale", &format!("svc-{svc}"), &new_ips));
        let mut waiting: BTreeSet<usize> = subscribers_of[svc].iter().copied().collect();
        while !waiting.is_empty() {
            let (stream, _, at, addrs) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a subscriber missed the change")
                .unwrap();
            if addrs == expected && waiting.remove(&stream) {
                latencies.push(at - sent);
            }
            current[stream] = addrs;
        }
        // Put it back, so that each change is a fresh one.
        let restored: BTreeSet<String> =
            ips(svc, 0).iter().map(|ip| format!("{ip}:9000")).collect();
        api.apply(slice("scale", &format!("svc-{svc}"), &ips(svc, 0)));
        let mut waiting: BTreeSet<usize> = subscribers_of[svc].iter().copied().collect();
        while !waiting.is_empty() {
            let (stream, _, _, addrs) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("a subscriber missed the restore")
                .unwrap();
            if addrs == restored {
                waiting.remove(&stream);
            }
        }
    }
    latencies.sort();
    let pct = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let (rss, hwm) = controller.memory_kib();
    eprintln!(
        "destination API: {STREAMS} streams, {SERVICES} services x 10 endpoints; {} deliveries of {CHANGES} changes: \
         p50 {:?}, p99 {:?}, max {:?}; controller RSS {:.1} MiB after sync, {:.1} MiB at the end (peak {:.1} MiB)",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap(),
        rss_synced as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
    assert!(latencies.len() >= CHANGES * 2);

    controller.stop();
}

/// `Lookup`: what a captured connection's original destination is. A Service's ClusterIP and
/// port name the Service; a pod's IP is that pod, with its identity when meshed and the
/// ports its annotation marks opaque; anything else is unknown; a Service added later is
/// known once its watch event arrives; an address that does not parse is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_are_looked_up() {
    use mesh_discovery::{Destination, Lookup as _};
    let pki = Pki::new("lookup");
    let api = FakeApiServer::start().await;
    api.apply::<Service>(
        serde_json::from_value(json!({
            "metadata": {"name": "db", "namespace": "data"},
            "spec": {"clusterIP": "198.18.9.10", "clusterIPs": ["198.18.9.10"],
                     "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"},
                               {"name": "dns", "port": 53, "protocol": "UDP"}]}
        }))
        .unwrap(),
    );
    api.apply::<Pod>(
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "data",
                         "labels": {"app": "db", "mesh.dev/meshed": "true"},
                         "annotations": {"config.mesh.dev/opaque-ports": "5432, 9000-9001"}},
            "spec": {"serviceAccountName": "db", "containers": []},
            "status": {"phase": "Running", "podIP": "198.18.9.20",
                       "podIPs": [{"ip": "198.18.9.20"}]}
        }))
        .unwrap(),
    );
    let listen = free_addr();
    let controller = ControllerProcess::start(&pki, &api, listen);
    wait_until_serving(&pki, listen).await;
    let resolve = RemoteResolve::new(channel(&pki, controller.addr));
    let lookup = |addr: &str| {
        let addr: SocketAddr = addr.parse().unwrap();
        let answer = resolve.lookup(addr);
        async move {
            tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .expect("no answer within 10 s")
                .unwrap()
        }
    };

    assert_eq!(
        lookup("198.18.9.10:5432").await,
        Destination::Service("db.data.svc.cluster.local:5432".into())
    );
    // A UDP port is nothing a TCP connection can be meant for; an unlisted port neither.
    assert_eq!(lookup("198.18.9.10:53").await, Destination::Unknown);
    assert_eq!(lookup("198.18.9.10:80").await, Destination::Unknown);
    match lookup("198.18.9.20:9001").await {
        Destination::Endpoint(e) => {
            assert_eq!(e.addr.to_string(), "198.18.9.20:9001");
            assert_eq!(
                e.identity().map(|i| i.uri()),
                Some("spiffe://cluster.local/ns/data/sa/db")
            );
            assert_eq!(e.label("pod"), Some("db-0"));
            assert_eq!(e.label("protocol"), Some("opaque"));
        }
        other => panic!("{other:?}"),
    }
    match lookup("198.18.9.20:8080").await {
        Destination::Endpoint(e) => assert_eq!(e.label("protocol"), None),
        other => panic!("{other:?}"),
    }
    assert_eq!(lookup("198.18.9.99:80").await, Destination::Unknown);

    // A Service that appears later is known once its event arrives.
    api.apply(
        serde_json::from_value::<Service>(json!({
            "metadata": {"name": "web", "namespace": "demo"},
            "spec": {"clusterIPs": ["198.18.9.11"], "ports": [{"port": 80}]}
        }))
        .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while lookup("198.18.9.11:80").await == Destination::Unknown {
        assert!(
            Instant::now() < deadline,
            "the new Service never became known"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        lookup("198.18.9.11:80").await,
        Destination::Service("web.demo.svc.cluster.local:80".into())
    );

    let mut raw = DestinationClient::new(channel(&pki, controller.addr));
    let refused = raw
        .lookup(mesh_discovery::remote::proto::LookupRequest {
            addr: "not-an-address".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("not-an-address"), "{refused:?}");
}

/// A made-up name in namespace number `i`.
fn made_up(i: usize) -> ResolveRequest {
    ResolveRequest {
        authority: format!("svc.made-up-{i}.svc.cluster.local:80"),
    }
}

/// Hostile callers: 5,000 `Resolve` calls on made-up namespaces without a certificate are
/// refused and start no watch; with one, the namespaces watched stay under the cap (three
/// watches each in the stand-in API server), the calls past it are refused, and the watches
/// fall back to none once the calls end. 10,000 `Certify` calls with garbage tokens cause at
/// most the rate limit's worth of TokenReviews. The controller's RSS is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_callers_hold_nothing_past_the_limits() {
    const CALLS: usize = 5_000;
    const MAX_NAMESPACES: usize = 50;
    let pki = Pki::new("hostile");
    let api = FakeApiServer::start().await;
    let listen = free_addr();
    let controller = ControllerProcess::start_with(
        &pki,
        &api,
        listen,
        &format!(
            "kubernetes = true\nkubernetes_api = \"{}\"\nreviews_per_second = 20\nreview_burst = 40\n",
            api.url()
        ),
        &format!("max_namespaces = {MAX_NAMESPACES}\nrelease_after = \"1s\"\n"),
    );
    wait_until_serving(&pki, listen).await;
    let (rss_start, _) = controller.memory_kib();

    // Without a certificate: every call refused, and the API server hears nothing of the
    // made-up namespaces. (The open-watch count is no measure here: the readiness probe's own
    // namespace is released during these calls.)
    let mut anonymous = DestinationClient::new(anonymous_channel(&pki, listen));
    let made_up_requests = || {
        api.requests()
            .iter()
            .filter(|r| r.path.contains("/namespaces/made-up-"))
            .count()
    };
    for i in 0..CALLS {
        let status = anonymous.resolve(made_up(i)).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "call {i}: {status:?}"
        );
    }
    assert_eq!(
        made_up_requests(),
        0,
        "an anonymous call reached the API server"
    );
    let watches_before = api.open_watches();

    // With one: the first MAX_NAMESPACES namespaces are watched, the rest refused.
    let mut client = DestinationClient::new(channel(&pki, listen));
    let mut held = Vec::new();
    let mut refused = 0;
    let mut peak = 0;
    for i in 0..CALLS {
        match client.resolve(made_up(i)).await {
            Ok(stream) => held.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                refused += 1;
            }
        }
        if i % 500 == 0 {
            peak = peak.max(api.open_watches());
        }
    }
    peak = peak.max(api.open_watches());
    assert!(
        held.len() <= MAX_NAMESPACES,
        "{} namespaces held",
        held.len()
    );
    assert_eq!(held.len() + refused, CALLS);
    assert!(
        peak <= 3 * MAX_NAMESPACES + watches_before,
        "{peak} watches open"
    );
    let (rss_resolving, _) = controller.memory_kib();

    // The calls end: the watches are released.
    drop(held);
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.open_watches() > watches_before {
        assert!(
            Instant::now() < deadline,
            "{} watches still open after the calls ended",
            api.open_watches()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 10,000 Certify calls with garbage tokens, 50 at a time.
    api.clear_requests();
    let reviews = || {
        api.requests()
            .iter()
            .filter(|r| r.path.ends_with("/tokenreviews"))
            .count()
    };
    let identity_client =
        mesh_tls::api::proto::identity_client::IdentityClient::new(anonymous_channel(&pki, listen));
    let started = Instant::now();
    let mut calls = futures_util::stream::iter(0..10_000)
        .map(|i| {
            let mut client = identity_client.clone();
            async move {
                client
                    .certify(mesh_tls::api::proto::CertifyRequest {
                        identity: "spiffe://cluster.local/ns/demo/sa/web".into(),
                        token: format!("garbage-{i}").into_bytes(),
                        certificate_signing_request: Vec::new(),
                    })
                    .await
            }
        })
        .buffer_unordered(50);
    let mut codes = std::collections::BTreeMap::new();
    while let Some(result) = calls.next().await {
        let code = result.map(|_| tonic::Code::Ok).unwrap_or_else(|s| s.code());
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    let took = started.elapsed();
    let sent = reviews();
    let allowed = 40 + (20.0 * took.as_secs_f64()).ceil() as usize;
    assert!(
        sent <= allowed,
        "{sent} TokenReviews in {took:?} (allowed {allowed})"
    );
    assert!(!codes.contains_key("Ok"), "{codes:?}");
    let (rss_end, hwm) = controller.memory_kib();
    eprintln!(
        "resolve: {refused} of {CALLS} refused past {MAX_NAMESPACES} namespaces, peak {peak} watches; \
         certify: 10000 garbage tokens in {took:?} -> {sent} TokenReviews, answers {codes:?}; \
         controller RSS {rss_start} KiB at start, {rss_resolving} KiB resolving, {rss_end} KiB at the end (peak {hwm} KiB)"
    );
    controller.stop();
}
