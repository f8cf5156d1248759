//! `meshctl`, the real binary, against a real proxy: `stat` and `edges` read the proxy's
//! admin `/metrics` while traffic flows through it, and with `--prometheus` they read a real
//! Prometheus server that scrapes that proxy. A stand-in for Prometheus's query API checks
//! what only a fixed answer can: the exact queries sent and the exact table printed.
//!
//! Finding the binary: `CARGO_BIN_EXE_meshctl` is only set for the tests of the package that
//! owns the binary, and a dev-dependency on `meshctl` would not build its binary either. A
//! fixed `../target/debug/meshctl` would be wrong under `CARGO_TARGET_DIR`, `--release` or a
//! `build.target-dir` setting, and could be stale. So the test asks cargo itself, once per
//! process: `cargo build -p meshctl --bin meshctl --message-format=json` rebuilds the binary
//! if it is out of date (a no-op otherwise) and names the executable in its
//! `compiler-artifact` message. The cargo that runs the tests is free to be asked: it releases
//! the build lock before it runs them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use mesh_integration::prometheus::Prometheus;
use mesh_integration::{RunningProxy, h1_client, start_backend, start_proxy_toml};

/// The service's authority, as the app names it.
const API: &str = "api.demo.svc.cluster.local:80";
/// `--window` with the real Prometheus, in seconds: room for several of its 1 s scrapes.
const PROMETHEUS_WINDOW: &str = "10";
/// The bounds of waiting for Prometheus to hold two scrapes of the traffic in the window.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(60);
const PROMETHEUS_POLLS: u32 = 120;
const PROMETHEUS_POLL: Duration = Duration::from_millis(500);

/// The meshctl executable, built (if stale) once per test process.
fn meshctl() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", "meshctl", "--bin", "meshctl"])
            .arg("--message-format=json-render-diagnostics")
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let out = build.output().expect("running cargo");
        assert!(
            out.status.success(),
            "cargo build -p meshctl failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "meshctl")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo named no meshctl executable")
    })
}

/// Runs meshctl with `args`, killed after 60 s. The pipes are read while it runs, and the
/// wait does not block the runtime, so the proxy and the traffic keep going meanwhile.
async fn run_meshctl(args: &[&str]) -> Output {
    let meshctl = tokio::task::spawn_blocking(meshctl).await.unwrap();
    let mut child = Command::new(meshctl)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting meshctl");
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        tokio::task::spawn_blocking(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("meshctl {args:?} ran for more than 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    Output {
        status,
        stdout: stdout.await.unwrap(),
        stderr: stderr.await.unwrap(),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The table's rows (header first), as columns.
fn rows(stdout: &str) -> Vec<Vec<&str>> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

fn percent(cell: &str) -> f64 {
    cell.strip_suffix('%')
        .unwrap_or_else(|| panic!("not a percentage: {cell}"))
        .parse()
        .unwrap()
}

/// A backend that fails every 10th request with 500; counts its requests.
async fn one_in_ten_fails() -> (SocketAddr, Arc<AtomicU64>) {
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let addr = start_backend(move |_req| {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let mut rsp = Response::new(Full::new(Bytes::from_static(b"ok")));
            if n % 10 == 9 {
                *rsp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            rsp
        }
    })
    .await
    .unwrap();
    (addr, served)
}

/// Sends requests to `API` through the outbound listener, one at a time, until `stop` (at
/// most 120 s or 100 000 requests); answers how many were sent.
fn send_traffic(outbound: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut client = h1_client::<Empty<Bytes>>(outbound).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && sent < 100_000 {
            client.ready().await.unwrap();
            let req = Request::get("/")
                .header("host", API)
                .body(Empty::new())
                .unwrap();
            let rsp = client.send_request(req).await.unwrap();
            let _ = rsp.into_body().collect().await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sent
    })
}

/// The proxy of workload web/demo, calling service workload api/demo at `backend`.
async fn web_proxy(backend: SocketAddr) -> RunningProxy {
    let toml = format!(
        "[workload]\nname = \"web\"\nnamespace = \"demo\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[runtime]\nshutdown_grace = \"1s\"\n\
         [outbound]\nlisten = \"127.0.0.1:0\"\ndetect_timeout = \"1s\"\n\
         [[outbound.services]]\nauthority = \"{API}\"\nendpoints = [\"{backend}\"]\n\
         workload = \"api\"\nnamespace = \"demo\"\n"
    );
    start_proxy_toml(&toml).await.unwrap()
}

/// Waits (at most 10 s) until the backend has served `count` requests.
async fn wait_served(served: &AtomicU64, count: u64) {
    let start = Instant::now();
    while served.load(Ordering::Relaxed) < count {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no traffic reaches the backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `meshctl stat` succeeded and shows demo/api at 85–95% success, a positive RPS and
/// latencies.
fn check_stat(stat: &Output) {
    let stdout = text(&stat.stdout);
    println!("meshctl stat:\n{stdout}");
    assert!(stat.status.success(), "{stat:?}");
    let table = rows(&stdout);
    assert_eq!(
        table[0],
        [
            "NAMESPACE",
            "WORKLOAD",
            "SUCCESS",
            "RPS",
            "P50",
            "P95",
            "P99"
        ]
    );
    let api = table
        .iter()
        .find(|r| r[..2] == ["demo", "api"])
        .unwrap_or_else(|| panic!("no demo/api row:\n{stdout}"));
    let success = percent(api[2]);
    assert!((85.0..=95.0).contains(&success), "success {success}%");
    let rps: f64 = api[3].parse().unwrap();
    assert!(rps > 0.0, "rps {rps}");
    for latency in &api[4..7] {
        assert!(
            latency.ends_with("ms") || latency.ends_with('s'),
            "{stdout}"
        );
    }
}

/// `meshctl edges` succeeded and shows demo/web -> demo/api with a positive RPS, 85–95%
/// success, no TLS and no identity.
fn check_edges(edges: &Output) {
    let stdout = text(&edges.stdout);
    println!("meshctl edges:\n{stdout}");
    assert!(edges.status.success(), "{edges:?}");
    let table = rows(&stdout);
    assert_eq!(
        table[0],
        ["SRC", "DST", "RPS", "SUCCESS", "TLS", "IDENTITY"]
    );
    let edge = table
        .iter()
        .find(|r| r[..2] == ["demo/web", "demo/api"])
        .unwrap_or_else(|| panic!("no demo/web -> demo/api row:\n{stdout}"));
    assert!(edge[2].parse::<f64>().unwrap() > 0.0, "{stdout}");
    let success = percent(edge[3]);
    assert!((85.0..=95.0).contains(&success), "success {success}%");
    assert_eq!(edge[4], "no", "{stdout}");
    assert_eq!(edge[5], "-", "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_and_edges_from_a_live_proxy() {
    // Build first, so the build's time does not count against anything below.
    tokio::task::spawn_blocking(meshctl).await.unwrap();

    let (backend, served) = one_in_ten_fails().await;
    let proxy = web_proxy(backend).await;
    let admin = proxy.admin.to_string();

    // Before any traffic: nothing to show, exit code 1.
    let out = run_meshctl(&["stat", "--proxy", &admin, "--window", "0.2"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("no traffic seen"),
        "{}",
        text(&out.stderr)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = send_traffic(proxy.outbound, stop.clone());
    wait_served(&served, 50).await;

    let stat = run_meshctl(&["stat", "--proxy", &admin, "--window", "1"]).await;
    let edges = run_meshctl(&["edges", "--proxy", &admin, "--window", "1"]).await;
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.await.unwrap();

    println!("{sent} requests sent");
    check_stat(&stat);
    check_edges(&edges);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_and_edges_from_a_real_prometheus() {
    // Build first, so the build's time does not count against anything below.
    tokio::task::spawn_blocking(meshctl).await.unwrap();

    let (backend, served) = one_in_ten_fails().await;
    let proxy = web_proxy(backend).await;

    // The traffic starts before Prometheus, and runs until the end: past 50 requests the
    // proxy holds both the success and the failure series, so every scrape has both and
    // their rates over the window cover the same samples.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = send_traffic(proxy.outbound, stop.clone());
    wait_served(&served, 50).await;

    let prometheus = Prometheus::start(&[proxy.admin])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    prometheus
        .wait_for_targets(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!("http://{}", prometheus.addr());

    // A rate needs two scrapes inside the window: until then meshctl sees no traffic.
    let args = ["stat", "--prometheus", &url, "--window", PROMETHEUS_WINDOW];
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    let mut polls = 0;
    let stat = loop {
        let out = run_meshctl(&args).await;
        polls += 1;
        let stderr = text(&out.stderr);
        if out.status.success() || !stderr.contains("no traffic seen") {
            break out;
        }
        assert!(
            polls < PROMETHEUS_POLLS && Instant::now() < deadline,
            "still no traffic in Prometheus after {polls} polls: {stderr}\n\
             Prometheus log:\n{}",
            prometheus.log_tail()
        );
        tokio::time::sleep(PROMETHEUS_POLL).await;
    };
    let edges = run_meshctl(&["edges", "--prometheus", &url, "--window", PROMETHEUS_WINDOW]).await;
    // A wrong base URL: Prometheus's own 404, named; exit code 1.
    let wrong = run_meshctl(&["stat", "--prometheus", &format!("{url}/nope")]).await;
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.await.unwrap();

    println!("{sent} requests sent, {polls} polls of Prometheus");
    check_stat(&stat);
    check_edges(&edges);
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");
    assert!(text(&wrong.stderr).contains("404 Not Found"), "{wrong:?}");
}

/// A stand-in for Prometheus's query API: `demo/api` at 10 RPS, 90% success, 4.2 ms at every
/// quantile; remembers the queries.
async fn fake_prometheus() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let queries = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = queries.clone();
    let addr = start_backend(move |req: Request<hyper::body::Incoming>| {
        let query = req.uri().query().unwrap_or_default().to_owned();
        let path = req.uri().path().to_owned();
        seen.lock().unwrap().push(query.clone());
        async move {
            if path != "/api/v1/query" {
                let mut rsp = Response::new(Full::new(Bytes::from_static(b"404 page not found")));
                *rsp.status_mut() = StatusCode::NOT_FOUND;
                return rsp;
            }
            let api = r#""dst_namespace":"demo","dst_workload":"api""#;
            let result = if query.contains("histogram_quantile") {
                format!(r#"[{{"metric":{{{api}}},"value":[1,"0.0042"]}}]"#)
            } else if query.contains("response_total") {
                format!(
                    r#"[{{"metric":{{{api},"classification":"success"}},"value":[1,"9"]}},
                        {{"metric":{{{api},"classification":"failure"}},"value":[1,"1"]}}]"#
                )
            } else {
                format!(r#"[{{"metric":{{{api}}},"value":[1,"10"]}}]"#)
            };
            let body = format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#
            );
            Response::new(Full::new(Bytes::from(body)))
        }
    })
    .await
    .unwrap();
    (addr, queries)
}

/// What a fixed answer pins down and the real server cannot: the five queries and their
/// window, and the exact table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_from_a_stand_in_prometheus_api() {
    let (prom, queries) = fake_prometheus().await;
    let url = format!("http://{prom}");
    let out = run_meshctl(&["stat", "--prometheus", &url, "--window", "30"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout,
        "NAMESPACE  WORKLOAD  SUCCESS  RPS    P50     P95     P99\n\
         demo       api       90.00%   10.00  4.20ms  4.20ms  4.20ms\n"
    );
    let queries = queries.lock().unwrap().clone();
    assert_eq!(queries.len(), 5, "{queries:?}");
    assert!(
        queries
            .iter()
            .all(|q| q.starts_with("query=") && q.contains("%5B30000ms%5D")),
        "{queries:?}"
    );
}

#[tokio::test]
async fn errors_and_usage() {
    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = run_meshctl(&["stat", "--proxy", &free]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&free), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = run_meshctl(&["edges", "--prometheus", "ftp://x"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("bad Prometheus URL"), "{out:?}");

    for usage in [
        vec!["stat"],
        vec!["stat", "--proxy", "a:1", "--prometheus", "http://p:9090"],
        vec!["stat", "--proxy", "a:1", "--window", "0"],
        vec!["edges", "--proxy", "a:1", "--direction", "sideways"],
        vec!["frobnicate"],
    ] {
        let out = run_meshctl(&usage).await;
        assert_eq!(out.status.code(), Some(2), "{usage:?}: {out:?}");
    }
}

/// The ingress is a source like any workload: `meshctl edges` on its admin port shows
/// edge/mesh-ingress -> demo/api, and `stat` shows demo/api as it calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_is_a_source_in_edges() {
    tokio::task::spawn_blocking(meshctl).await.unwrap();
    let (backend, served) = one_in_ten_fails().await;
    let toml = format!(
        "[workload]\nname = \"mesh-ingress\"\nnamespace = \"edge\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[runtime]\nshutdown_grace = \"1s\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[edge]\naccess_log = false\n\
         [[routes]]\nbackends = [{{ service = \"{API}\" }}]\n\
         [[services]]\nauthority = \"{API}\"\nendpoints = [\"{backend}\"]\n\
         workload = \"api\"\nnamespace = \"demo\"\nplaintext = true\n"
    );
    let ingress = mesh_integration::edge::start_ingress(&toml, None)
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = send_traffic(ingress.http.unwrap(), stop.clone());
    wait_served(&served, 50).await;
    let admin = ingress.admin.to_string();
    let edges = run_meshctl(&["edges", "--proxy", &admin, "--window", "1"]).await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let stdout = text(&edges.stdout);
    println!("meshctl edges:\n{stdout}");
    assert!(edges.status.success(), "{edges:?}");
    let table = rows(&stdout);
    let edge = table
        .iter()
        .find(|r| r[..2] == ["edge/mesh-ingress", "demo/api"])
        .unwrap_or_else(|| panic!("no edge/mesh-ingress -> demo/api row:\n{stdout}"));
    assert!(edge[2].parse::<f64>().unwrap() > 0.0, "{stdout}");
    let success = percent(edge[3]);
    assert!((85.0..=95.0).contains(&success), "success {success}%");
}
