//! Meshing pods with no change to the apps, for real: network namespaces as pods on one
//! node's bridge, each pod's rules installed by `mesh-proxy init`, each proxy under its own
//! user, identities from a local issuer. A client that knows nothing of the mesh dials a
//! service's virtual address (which no interface holds, as a ClusterIP), a pod's own address,
//! and an address outside the mesh. Addresses come from 198.18.0.0/15 only; every namespace is
//! removed when the test ends, failing or not.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use support::{
    BIN, Killed, Netns, http_get, root_or_skip, serve_http, sh, text, wait_ready, world_readable,
};

const PROXY_UID: &str = "2102";
const VIP: &str = "198.18.3.100";

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
    // The service's virtual address is routed like any other, and held by no interface.
    client.exec(&["ip", "route", "add", "198.18.3.0/24", "dev", "eth0"]);
    let replicas: Vec<(Netns, String)> = (1..=3)
        .map(|i| {
            (
                pod_on(&node, i, &format!("198.18.2.1{i}")),
                format!("198.18.2.1{i}"),
            )
        })
        .collect();
    let outside = pod_on(&node, 9, "198.18.2.20");
    let _outside_app = Killed(serve_http(&outside, "198.18.2.20", 8080, "outside"));

    let mut running = Vec::new();
    for (i, (pod, _)) in replicas.iter().enumerate() {
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
             [inbound]\nlisten = \"0.0.0.0:4143\"\napp = \"127.0.0.1:80\"\ntransparent = true\n",
            identity_toml("api")
        );
        running.push(start_proxy(pod, &dir, &format!("api-{i}"), &config));
    }
    let endpoints: Vec<String> = replicas
        .iter()
        .map(|(_, ip)| {
            format!(
                "{{ addr = \"{ip}:80\", identity = \"{}\" }}",
                identity("api")
            )
        })
        .collect();
    let out = client.init(&["--proxy-uid", PROXY_UID]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = format!(
        "{}[workload]\nname = \"client\"\nnamespace = \"demo\"\n[admin]\nlisten = \"127.0.0.1:4191\"\n\
         [outbound]\nlisten = \"127.0.0.1:4140\"\ntransparent = true\n\
         [[outbound.services]]\nauthority = \"api.demo.svc.cluster.local:80\"\n\
         addresses = [\"{VIP}:80\"]\nendpoints = [{}]\n",
        identity_toml("client"),
        endpoints.join(", ")
    );
    let _client_proxy = start_proxy(&client, &dir, "client", &config);

    // The app dials the virtual address, over one connection: every request is balanced.
    let counts = keep_alive_gets(&client, VIP, 80, 300);
    eprintln!("300 requests over one connection to {VIP}:80: {counts:?}");
    let total: usize = counts.values().sum();
    assert_eq!(total, 300, "{counts:?}");
    for i in 0..3 {
        let got = counts.get(&format!("200 api-{i}")).copied().unwrap_or(0);
        // Every replica serves: one connection is balanced per request. How evenly follows
        // the replicas' latencies (P2C over peak-EWMA), which a shared machine does not fix.
        assert!(got >= 1, "replica {i}: {got} of 300: {counts:?}");
    }

    // Each replica saw mutual TLS from the client's identity; the client counted the service.
    for (pod, _) in &replicas {
        let metrics = http_get(pod, "127.0.0.1", 4191, "/metrics");
        let series = format!("tls=\"true\",peer_identity=\"{}\"", identity("client"));
        assert!(
            metrics.lines().any(
                |l| l.starts_with("request_total{direction=\"inbound\"") && l.contains(&series)
            ),
            "{metrics}"
        );
    }
    let metrics = http_get(&client, "127.0.0.1", 4191, "/metrics");
    assert!(
        metrics.contains("dst_service=\"api.demo.svc.cluster.local:80\""),
        "{metrics}"
    );

    // A direct dial to a pod's own address still goes through both proxies, over mTLS.
    let direct = http_get(&client, "198.18.2.11", 80, "/");
    assert!(
        direct.contains(" 200 OK") && direct.ends_with("api-0"),
        "{direct}"
    );
    let metrics = http_get(&client, "127.0.0.1", 4191, "/metrics");
    let series = "authority=\"198.18.2.11:80\"";
    assert!(
        metrics.lines().any(|l| l.contains(series)
            && l.contains(&format!(
                "tls=\"true\",peer_identity=\"{}\"",
                identity("api")
            ))),
        "{metrics}"
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
