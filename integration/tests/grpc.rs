//! gRPC through mesh-proxy, end to end: the demo's tonic Greeter replicas behind the real
//! proxy, called by clients we did not write (Python grpcio) and by tonic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use mesh_examples::demo::{self, Greeter, GreeterConfig, Replica};
use mesh_examples::pb::HelloRequest;

const AUTHORITY: &str = "greeter.demo.svc.cluster.local:50051";

/// The tests of this file run one at a time: each drives a mesh, and the spread test counts
/// where latency-aware balancing sends calls, which a neighbour loading the CPU would skew.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Mesh {
    outbound: SocketAddr,
    replicas: Vec<Replica>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

async fn mesh_with_three_greeters() -> Mesh {
    mesh_with_balancer("").await
}

/// For the tests that count the spread over equal replicas, not how long the latency estimate
/// remembers a peak: a 100 ms decay (10 s by default) keeps one scheduling hiccup on a loaded
/// test machine from sidelining a replica for a large share of the calls.
const FORGET_PEAKS_FAST: &str = "[outbound.services.balancer]\ndecay = \"100ms\"\n";

/// Three greeters behind the proxy; `balancer` adds `balancer.*` settings to the service.
async fn mesh_with_balancer(balancer: &str) -> Mesh {
    let serial = ONE_AT_A_TIME.lock().await;
    let mut replicas = Vec::new();
    for i in 0..3 {
        let greeter = Greeter::new(GreeterConfig::new(format!("greeter-{i}")));
        replicas.push(Replica::spawn_greeter(greeter).await.unwrap());
    }
    let endpoints: Vec<String> = replicas
        .iter()
        .map(|r| format!("\"{}\"", r.addr()))
        .collect();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [[outbound.services]]\nauthority = \"{AUTHORITY}\"\nendpoints = [{}]\n{balancer}",
        endpoints.join(", ")
    );
    let config = mesh_proxy::Config::from_toml_str_with_env(&toml, Vec::new()).unwrap();
    let proxy = mesh_proxy::Proxy::bind(config).await.unwrap();
    let outbound = proxy.outbound_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = stopped.await;
    }));
    Mesh {
        outbound,
        replicas,
        _stop: stop,
        _serial: serial,
    }
}

/// Runs the Python grpcio client (the reference gRPC implementation, in C core) in `mode`
/// against a fresh mesh of three greeters; returns its JSON report and the mesh.
async fn python_client(mode: &'static str, mesh: Mesh) -> (String, Mesh) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("python/interop.py");
    let proto = root.join("../proto");
    let outbound = mesh.outbound.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(&script)
            .arg(&outbound)
            .arg(AUTHORITY)
            .arg(&proto)
            .arg(mode)
            .output()
    })
    .await
    .unwrap()
    .expect("python3 is required for this test (.ci/run installs it with grpcio and grpcio-tools)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'grpc"),
        "Python grpcio is required: pip install grpcio grpcio-tools (.ci/run does)\n{stderr}"
    );
    assert!(
        output.status.success(),
        "interop client failed:\n{stdout}\n{stderr}"
    );
    (stdout, mesh)
}

/// All four RPC kinds, an error status with its message, 4 MiB messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_through_the_proxy() {
    let (report, _mesh) = python_client("kinds", mesh_with_three_greeters().await).await;
    for check in [
        "unary",
        "server-streaming",
        "client-streaming",
        "bidi-streaming",
        "error-status-and-message",
        "4MiB-messages",
    ] {
        assert!(
            report.contains(&format!("\"{check}\"")),
            "check {check} missing: {report}"
        );
    }
}

/// 3000 unary calls over one connection, spread over the three replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_one_connection_is_balanced_per_request() {
    let mesh = mesh_with_balancer(FORGET_PEAKS_FAST).await;
    let (report, mesh) = python_client("spread", mesh).await;
    assert!(report.contains("\"3000-unary-one-connection\""), "{report}");
    for replica in &mesh.replicas {
        let count = per_replica_count(&report, replica.name());
        assert!(
            (900..=1100).contains(&count),
            "{} served {count} of 3000 calls on one connection: {report}",
            replica.name()
        );
    }
}

/// Reads `"name": N` out of the report without a JSON dependency.
fn per_replica_count(report: &str, name: &str) -> u64 {
    let key = format!("\"{name}\": ");
    report
        .find(&key)
        .map(|i| &report[i + key.len()..])
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

/// tonic, one channel: the same spread, and an unknown service is UNAVAILABLE with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_client_per_request_balancing_and_unknown_service() {
    let mesh = mesh_with_balancer(FORGET_PEAKS_FAST).await;
    let mut client = demo::greeter_client(demo::mesh_channel(mesh.outbound, AUTHORITY).unwrap());
    let mut counts = std::collections::HashMap::<String, u32>::new();
    for i in 0..300 {
        let reply = client
            .say_hello(HelloRequest {
                name: format!("n{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
        *counts.entry(reply.into_inner().replica).or_default() += 1;
    }
    // Each call goes to one of three equal replicas at random (power of two choices, a coin
    // between equals): 100 each on average, more than 3.5 standard deviations inside 70..=130.
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|c| (70..=130).contains(c)),
        "{counts:?}"
    );

    let mut unknown =
        demo::greeter_client(demo::mesh_channel(mesh.outbound, "nobody.demo:50051").unwrap());
    let status = unknown
        .say_hello(HelloRequest::default())
        .await
        .expect_err("an unknown service must fail");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("unknown-authority"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("nobody.demo:50051"),
        "{}",
        status.message()
    );
    assert!(status.metadata().contains_key("mesh-proxy-error"));
}

/// A backend that goes away: its calls fail with UNAVAILABLE naming the proxy's reason, and
/// the proxy steps over it to the replicas left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_fails_its_calls_cleanly() {
    let mut mesh = mesh_with_three_greeters().await;
    let mut client = demo::greeter_client(demo::mesh_channel(mesh.outbound, AUTHORITY).unwrap());
    let dead = mesh.replicas.remove(0);
    dead.shutdown().await.unwrap();
    let (mut ok, mut unavailable) = (0, 0);
    for _ in 0..30 {
        match client
            .say_hello(HelloRequest {
                name: "x".into(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    status.metadata().contains_key("mesh-proxy-error"),
                    "{status:?}"
                );
                unavailable += 1;
            }
        }
    }
    // How many calls the dead replica costs depends on the clock (its backoff is time-based),
    // so this test only asserts that every failure is a clean UNAVAILABLE naming the proxy's
    // reason and that the live replicas serve; that a failing endpoint is stepped over is
    // asserted with paused time in mesh-balance's tests.
    assert!(ok > 0, "no call succeeded through the two live replicas");
    assert_eq!(ok + unavailable, 30);
}
