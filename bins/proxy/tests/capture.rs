//! Meshing pods with no change to the apps, for real: network namespaces as pods on one
//! node's bridge, each pod's rules installed by `mesh-proxy init`, each proxy under its own
//! user, identities from a local issuer. Clients that know nothing of the mesh (grpcio in
//! h2c, Python's http.client, bash) dial a configured service's virtual address, Kubernetes
//! Services' ClusterIPs (looked up in a stand-in API server running inside the client's pod),
//! a pod's own address, a server-speaks-first protocol on an opaque port and on an unlisted
//! one, and an address outside the mesh. Addresses come from 198.18.0.0/15 only; every
//! namespace is removed when the test ends, failing or not.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use mesh_kube_fake::FakeApiServer;
use serde_json::json;
use support::{
    BIN, Killed, Netns, dial, grpc_spread, http_get, inside, root_or_skip, serve, serve_grpc,
    serve_http, sh, text, wait_ready, world_readable,
};

const PROXY_UID: &str = "2102";
/// The greeter's virtual address, configured in the client's proxy.
const GREETER_VIP: &str = "198.18.3.100";
/// A Kubernetes Service's ClusterIP (port 5432, opaque by default), found by lookup.
const DB_VIP: &str = "198.18.3.101";
/// Another Service's ClusterIP (port 80), found by lookup.
const WEB_VIP: &str = "198.18.3.102";
const REPLICAS: [&str; 3] = ["198.18.2.11", "198.18.2.12", "198.18.2.13"];

fn identity(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/demo/sa/{sa}")
}

/// A pod on the node's bridge at `ip`/24.
fn pod_on(node: &Netns, n: usize, ip: &str) -> Netns {
    let pod = Netns::new();
    let bridge_side = format!("v{}x{n}", std::process::id() % 100_000);
    sh(&[
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        &pod.0,
        "type",
        "veth",
        "peer",
        "name",
        &bridge_side,
        "netns",
        &node.0,
    ]);
    node.exec(&["ip", "link", "set", &bridge_side, "master", "br0"]);
    node.exec(&["ip", "link", "set", &bridge_side, "up"]);
    pod.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    pod.exec(&["ip", "link", "set", "eth0", "up"]);
    pod
}

/// Runs mesh-proxy in `pod` as the proxy's user with `config`; waits until it is ready.
fn start_proxy(pod: &Netns, dir: &std::path::Path, name: &str, config: &str) -> Killed {
    let bin = dir.join("mesh-proxy").to_str().unwrap().to_owned();
    let config = world_readable(dir, &format!("{name}.toml"), None, config);
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new("ip")
        .args([
            "netns", "exec", &pod.0, "setpriv", "--reuid", PROXY_UID, "--regid", PROXY_UID,
        ])
        .args(["--clear-groups", &bin, "--config", &config])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let proxy = Killed(child);
    if wait_ready(pod) {
        return proxy;
    }
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    panic!("the proxy of {name} never became ready:\n{log}");
}

/// `requests` GETs over one HTTP/1.1 connection from `ns` to `addr:port`; how many each
/// answer (the body) got.
fn keep_alive_gets(ns: &Netns, addr: &str, port: u16, requests: usize) -> HashMap<String, usize> {
    let script = format!(
        "import http.client, json, collections\n\
         c = http.client.HTTPConnection('{addr}', {port}, timeout=10)\n\
         counts = collections.Counter()\n\
         for _ in range({requests}):\n\
         \x20   c.request('GET', '/')\n\
         \x20   r = c.getresponse()\n\
         \x20   counts[str(r.status) + ' ' + r.read().decode()] += 1\n\
         print(json.dumps(counts))\n"
    );
    let out = ns.exec(&["python3", "-c", &script]);
    let mut counts = HashMap::new();
    let parsed: HashMap<String, usize> = out
        .trim()
        .trim_matches(|c| c == '{' || c == '}')
        .split(", ")
        .filter_map(|kv| {
            let (k, v) = kv.split_once(": ")?;
            Some((k.trim_matches('"').to_owned(), v.parse().ok()?))
        })
        .collect();
    counts.extend(parsed);
    counts
}

/// The stand-in Kubernetes API server, serving from inside the client's pod (its loopback is
/// not captured) the Services `web` (ClusterIP [`WEB_VIP`], port 80, every replica) and `db`
/// ([`DB_VIP`], port 5432, the first replica), and the replicas' pods, meshed.
struct Kubernetes {
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Kubernetes {
    fn start(client: &Netns) -> Self {
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // Detached: it ends when `stop` is dropped, the test failing included.
        drop(inside(client, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let api = FakeApiServer::start().await;
                for (name, vip, port, replicas) in [
                    ("web", WEB_VIP, 80, &REPLICAS[..]),
                    ("db", DB_VIP, 5432, &REPLICAS[..1]),
                ] {
                    api.apply(service(name, vip, port));
                    api.apply(slice(name, port, replicas));
                }
                for (i, ip) in REPLICAS.iter().enumerate() {
                    api.apply(pod(&format!("api-{i}"), ip));
                }
                url_tx.send(api.url()).unwrap();
                let _ = stopped.await;
            });
        }));
        let url = url_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the API server started");
        Self { url, _stop: stop }
    }
}

fn service(name: &str, vip: &str, port: u16) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"clusterIP": vip, "clusterIPs": [vip],
                 "ports": [{"name": "main", "port": port, "protocol": "TCP"}]}
    }))
    .unwrap()
}

fn slice(service: &str, port: u16, ips: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = ips
        .iter()
        .map(|ip| {
            let i = REPLICAS.iter().position(|r| r == ip).unwrap();
            json!({"addresses": [ip], "conditions": {"ready": true},
                   "targetRef": {"kind": "Pod", "name": format!("api-{i}"), "namespace": "demo"}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-x"), "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "main", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .unwrap()
}

fn pod(name: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "demo",
                     "labels": {"app": "api", "mesh.dev/meshed": "true"}},
        "spec": {"serviceAccountName": "api", "containers": []},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
    .unwrap()
}

/// Reads `"name": N` out of the grpcio client's JSON report.
fn per_replica(report: &str, name: &str) -> usize {
    let key = format!("\"{name}\": ");
    report
        .find(&key)
        .map(|i| &report[i + key.len()..])
        .and_then(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
fn pods_are_meshed_without_changing_the_apps() {
    if !root_or_skip("pods_are_meshed_without_changing_the_apps") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("mesh-capture-{}", std::process::id()));
    let made = mesh_tls::ca::bootstrap(
        "cluster.local",
        Duration::from_secs(86_400),
        Duration::from_secs(86_400),
        SystemTime::now(),
    )
    .unwrap();
    // A copy the proxies' user may run, wherever the build directory is.
    world_readable(&dir, "mesh-proxy", Some(BIN), "");
    let anchors = world_readable(&dir, "ca.crt", None, &made.anchor_pem);
    let issuer_cert = world_readable(&dir, "issuer.crt", None, &made.issuer_cert_pem);
    let issuer_key = world_readable(&dir, "issuer.key", None, &made.issuer_key_pem);
    let identity_toml = |sa: &str| {
        format!(
            "[identity]\nmode = \"local\"\nname = \"{}\"\ntrust_anchors = \"{anchors}\"\n\
             issuer_cert = \"{issuer_cert}\"\nissuer_key = \"{issuer_key}\"\n",
            identity(sa)
        )
    };

    // One node, a bridge, and pods on it: the client, three replicas of the api, and a
    // server outside the mesh.
    let node = Netns::new();
    node.exec(&["ip", "link", "add", "br0", "type", "bridge"]);
    node.exec(&["ip", "link", "set", "br0", "up"]);
    let client = pod_on(&node, 0, "198.18.2.1");
    // The services' virtual addresses are routed like any other, and held by no interface.
    client.exec(&["ip", "route", "add", "198.18.3.0/24", "dev", "eth0"]);
    let replicas: Vec<Netns> = REPLICAS
        .iter()
        .enumerate()
        .map(|(i, ip)| pod_on(&node, i + 1, ip))
        .collect();
    let outside = pod_on(&node, 9, "198.18.2.20");
    let _outside_app = Killed(serve_http(&outside, "198.18.2.20", 8080, "outside"));

    let mut running = Vec::new();
    for (i, pod) in replicas.iter().enumerate() {
        running.push(Killed(serve_grpc(
            pod,
            "127.0.0.1:50051",
            &format!("greeter-{i}"),
        )));
        running.push(Killed(serve_http(
            pod,
            "127.0.0.1",
            80,
            &format!("api-{i}"),
        )));
        let out = pod.init(&["--proxy-uid", PROXY_UID]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let config = format!(
            "{}[workload]\nname = \"api\"\nnamespace = \"demo\"\n[admin]\nlisten = \"127.0.0.1:4191\"\n\
             [outbound]\nlisten = \"127.0.0.1:4140\"\n\
             [inbound]\nlisten = \"0.0.0.0:4143\"\napp = \"127.0.0.1:80\"\ntransparent = true\n\
             detect_timeout = \"1s\"\n",
            identity_toml("api")
        );
        running.push(start_proxy(pod, &dir, &format!("api-{i}"), &config));
    }
    // Servers that speak first: a database on its usual (opaque) port, and one on a port
    // nobody marked.
    running.push(Killed(serve(&replicas[0], "127.0.0.1", 5432, "db-banner")));
    running.push(Killed(serve(
        &replicas[0],
        "127.0.0.1",
        2526,
        "smtp-banner",
    )));

    let kubernetes = Kubernetes::start(&client);
    let greeters: Vec<String> = REPLICAS
        .iter()
        .map(|ip| {
            format!(
                "{{ addr = \"{ip}:50051\", identity = \"{}\" }}",
                identity("api")
            )
        })
        .collect();
    let out = client.init(&["--proxy-uid", PROXY_UID]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The spread counts equal replicas: a 100 ms decay (10 s by default) keeps one scheduling
    // hiccup on a loaded test machine from sidelining a replica for many calls.
    let config = format!(
        "{}[workload]\nname = \"client\"\nnamespace = \"demo\"\n[admin]\nlisten = \"127.0.0.1:4191\"\n\
         [discovery.kubernetes]\napi = \"{}\"\n\
         [outbound]\nlisten = \"127.0.0.1:4140\"\ntransparent = true\nlookup = \"kubernetes\"\n\
         detect_timeout = \"1s\"\n\
         [[outbound.services]]\nauthority = \"greeter.demo.svc.cluster.local:50051\"\n\
         addresses = [\"{GREETER_VIP}:50051\"]\nendpoints = [{}]\n\
         [outbound.services.balancer]\ndecay = \"100ms\"\n",
        identity_toml("client"),
        kubernetes.url,
        greeters.join(", ")
    );
    let _client_proxy = start_proxy(&client, &dir, "client", &config);

    // grpcio dials the greeter's virtual address in h2c: 3000 calls on one connection, each
    // balanced on its own.
    let report = grpc_spread(&client, &format!("{GREETER_VIP}:50051"));
    eprintln!("3000 calls on one HTTP/2 connection to {GREETER_VIP}:50051: {report}");
    assert!(report.contains("\"3000-unary-one-connection\""), "{report}");
    for i in 0..3 {
        let got = per_replica(&report, &format!("greeter-{i}"));
        assert!(
            (750..=1260).contains(&got),
            "greeter-{i} served {got} of 3000 (25-42% wanted): {report}"
        );
    }
    // Each replica saw mutual TLS from the client's identity; the client counted the service.
    for pod in &replicas {
        let metrics = http_get(pod, "127.0.0.1", 4191, "/metrics");
        let series = format!("tls=\"true\",peer_identity=\"{}\"", identity("client"));
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("request_total{direction=\"inbound\"")
                    && l.contains("authority=\"127.0.0.1:50051\"")
                    && l.contains(&series)),
            "{metrics}"
        );
    }
    let metrics = http_get(&client, "127.0.0.1", 4191, "/metrics");
    assert!(
        metrics.contains("dst_service=\"greeter.demo.svc.cluster.local:50051\""),
        "{metrics}"
    );

    // A Kubernetes Service's ClusterIP, which no configuration names: looked up, then
    // balanced over the Service's endpoints, each over mTLS.
    let counts = keep_alive_gets(&client, WEB_VIP, 80, 300);
    eprintln!("300 requests over one connection to {WEB_VIP}:80: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 300, "{counts:?}");
    for i in 0..3 {
        let got = counts.get(&format!("200 api-{i}")).copied().unwrap_or(0);
        // Every replica serves; how evenly follows their latencies (P2C over peak-EWMA).
        assert!(got >= 1, "replica {i}: {got} of 300: {counts:?}");
    }
    let metrics = http_get(&client, "127.0.0.1", 4191, "/metrics");
    let series = format!("tls=\"true\",peer_identity=\"{}\"", identity("api"));
    assert!(
        metrics.lines().any(
            |l| l.contains("dst_service=\"web.demo.svc.cluster.local:80\"") && l.contains(&series)
        ),
        "{metrics}"
    );

    // A direct dial to a pod's own address: the lookup names the pod and its identity, so it
    // still goes through both proxies, over mTLS.
    let direct = http_get(&client, REPLICAS[1], 80, "/");
    assert!(
        direct.contains(" 200 OK") && direct.ends_with("api-1"),
        "{direct}"
    );
    let metrics = http_get(&client, "127.0.0.1", 4191, "/metrics");
    let target = format!("authority=\"{}:80\"", REPLICAS[1]);
    assert!(
        metrics
            .lines()
            .any(|l| l.contains(&target) && l.contains(&series)),
        "{metrics}"
    );

    // Server speaks first, on an opaque port (5432), behind a ClusterIP: heard at once, with
    // nothing sent, through both proxies.
    let banner = dial(&client, "0", DB_VIP, 5432);
    assert_eq!(banner, "db-banner");
    // On a port nobody marked: it works once detection gives up (one timeout on each side),
    // and the log says which port to mark.
    let banner = dial(&client, "0", REPLICAS[0], 2526);
    assert_eq!(banner, "smtp-banner");
    let log = std::fs::read_to_string(dir.join("client.log")).unwrap();
    assert!(
        log.contains("add port 2526 to outbound opaque-ports"),
        "{log}"
    );

    // An address outside the mesh: forwarded as it is, in plaintext, and counted.
    let outside_answer = http_get(&client, "198.18.2.20", 8080, "/");
    assert!(outside_answer.ends_with("outside"), "{outside_answer}");
    let metrics = http_get(&client, "127.0.0.1", 4191, "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("authority=\"198.18.2.20:8080\"") && l.contains("tls=\"false\"")),
        "{metrics}"
    );
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
