//! mesh-ingress end to end, with clients we did not write where it matters: `openssl
//! s_client` and curl against its certificates, Python grpcio over TLS into a meshed backend,
//! gRPC-Web from Python's standard library, and counts for host, path, header and weighted
//! routes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use mesh_integration::edge::{RunningIngress, WebCa, start_ingress, tls_to};
use mesh_integration::{named_backend, scrape_metrics, start_backend};

/// Runs `sh -c script`; its stdout.
fn sh(script: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The SANs of the certificate `openssl s_client` gets from `addr` asking for `sni` (none:
/// no SNI at all).
fn openssl_sans(addr: SocketAddr, sni: Option<&str>) -> String {
    let name = match sni {
        Some(sni) => format!("-servername {sni}"),
        None => "-noservername".to_owned(),
    };
    sh(&format!(
        "openssl s_client -connect {addr} {name} </dev/null 2>/dev/null \
         | openssl x509 -noout -ext subjectAltName 2>/dev/null"
    ))
}

/// The SANs `openssl s_client` gets from `addr` for `web.example.test` offering only the TLS
/// version of `flag` (`-tls1_2`, `-tls1_3`): empty when the handshake is refused.
fn openssl_sans_over(addr: SocketAddr, flag: &str) -> String {
    sh(&format!(
        "openssl s_client -connect {addr} -servername web.example.test {flag} </dev/null 2>/dev/null \
         | openssl x509 -noout -ext subjectAltName 2>/dev/null"
    ))
}

/// A GET with curl over HTTPS to `host` (resolved to the ingress), trusting `ca`:
/// `<http version> <status> <body>`.
fn curl(addr: SocketAddr, host: &str, path: &str, ca: &Path, http: &str) -> String {
    sh(&format!(
        "curl -s {http} --max-time 10 --cacert {ca} --resolve {host}:{port}:127.0.0.1 \
         -w ' %{{http_version}} %{{http_code}}' https://{host}:{port}{path}",
        ca = ca.display(),
        port = addr.port(),
    ))
}

fn toml_path(path: &Path) -> String {
    path.display().to_string()
}

/// Two SNI names get their two certificates from openssl and curl, an unknown name and no name
/// get the default; replacing a certificate's files under steady HTTPS load is seen by new
/// handshakes, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_by_sni_and_replaced_under_load() {
    let ca = WebCa::new().unwrap();
    let (web_crt, web_key) = ca.issue("web", &["web.example.test"]).unwrap();
    let (api_crt, api_key) = ca.issue("api", &["*.api.example.test"]).unwrap();
    let (def_crt, def_key) = ca.issue("default", &["default.example.test"]).unwrap();
    let web = named_backend("web").await.unwrap();
    let api = named_backend("api").await.unwrap();
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[runtime]
shutdown_grace = "1s"
[https]
listen = "127.0.0.1:0"
[[https.certificates]]
cert = "{}"
key = "{}"
[[https.certificates]]
cert = "{}"
key = "{}"
[[https.certificates]]
cert = "{}"
key = "{}"
default = true
[[routes]]
name = "web"
hostnames = ["web.example.test"]
backends = [{{ service = "web:80" }}]
[[routes]]
name = "api"
hostnames = ["*.api.example.test"]
backends = [{{ service = "api:80" }}]
[[services]]
authority = "web:80"
endpoints = ["{web}"]
plaintext = true
[[services]]
authority = "api:80"
endpoints = ["{api}"]
plaintext = true
"#,
        toml_path(&web_crt),
        toml_path(&web_key),
        toml_path(&api_crt),
        toml_path(&api_key),
        toml_path(&def_crt),
        toml_path(&def_key),
    );
    let ingress = start_ingress(&toml, None).await.unwrap();
    let https = ingress.https.unwrap();

    let checks = tokio::task::spawn_blocking(move || {
        (
            openssl_sans(https, Some("web.example.test")),
            openssl_sans(https, Some("v1.api.example.test")),
            openssl_sans(https, Some("unknown.example.test")),
            openssl_sans(https, None),
        )
    })
    .await
    .unwrap();
    assert!(checks.0.contains("DNS:web.example.test"), "{checks:?}");
    assert!(checks.1.contains("DNS:*.api.example.test"), "{checks:?}");
    assert!(checks.2.contains("DNS:default.example.test"), "{checks:?}");
    assert!(checks.3.contains("DNS:default.example.test"), "{checks:?}");

    let ca_file = ca.ca_file();
    let curled = tokio::task::spawn_blocking(move || {
        (
            curl(https, "web.example.test", "/", &ca_file, "--http2"),
            curl(https, "v1.api.example.test", "/x", &ca_file, "--http1.1"),
        )
    })
    .await
    .unwrap();
    assert_eq!(curled.0, "web 2 200", "curl over h2 with verification");
    assert_eq!(
        curled.1, "api 1.1 200",
        "curl over HTTP/1.1 with verification"
    );

    // Steady load: a new TLS connection per request, each checking which certificate it got.
    // Full handshakes only: a resumed session reports the certificate it first saw.
    let mut config = (*ca.client_config(&[b"http/1.1"]).unwrap()).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = std::sync::Arc::new(config);
    let old_leaf = tls_to(https, "web.example.test", config.clone())
        .await
        .unwrap()
        .1;
    let load = tokio::spawn(async move {
        let (mut sent, mut failed, mut new_seen_at) = (0u32, 0u32, None);
        let mut replaced_at = None;
        let started = Instant::now();
        while sent < 3000 && started.elapsed() < Duration::from_secs(60) {
            if sent == 300 {
                // The same names, a new key, the same files: as a renewal rewrites a Secret.
                replaced_at = Some(Instant::now());
                ca.issue("web", &["web.example.test"]).unwrap();
            }
            sent += 1;
            let Ok((tls, leaf)) = tls_to(https, "web.example.test", config.clone()).await else {
                failed += 1;
                continue;
            };
            if leaf != old_leaf && new_seen_at.is_none() {
                new_seen_at = replaced_at.map(|at: Instant| at.elapsed());
            }
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = Request::get("/")
                .header("host", "web.example.test")
                .body(Empty::<Bytes>::new())
                .unwrap();
            match tx.send_request(req).await {
                Ok(rsp) if rsp.status() == 200 => {}
                _ => failed += 1,
            }
            if new_seen_at.is_some() && sent > 600 {
                break;
            }
        }
        (sent, failed, new_seen_at)
    });
    let (sent, failed, new_seen_after) = load.await.unwrap();
    eprintln!(
        "certificate replaced under load: {sent} requests on new TLS connections, {failed} failed, \
         the new certificate served {new_seen_after:?} after the files changed"
    );
    assert_eq!(
        failed, 0,
        "no request fails while the certificate is replaced"
    );
    // How soon is a figure for the bench notes, not an assertion: this machine may be slow.
    assert!(
        new_seen_after.is_some(),
        "the new certificate was never served"
    );
    drop(ingress);
}

/// `https.min_tls_version = "1.3"` refuses a TLS 1.2 client and serves a TLS 1.3 one; by
/// default both are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_tls_version_is_configurable() {
    let ca = WebCa::new().unwrap();
    let (crt, key) = ca.issue("web", &["web.example.test"]).unwrap();
    let web = named_backend("web").await.unwrap();
    let config = |min: &str| {
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"
[runtime]
shutdown_grace = "1s"
[https]
listen = "127.0.0.1:0"
{min}
[[https.certificates]]
cert = "{}"
key = "{}"
[[routes]]
backends = [{{ service = "web:80" }}]
[[services]]
authority = "web:80"
endpoints = ["{web}"]
plaintext = true
"#,
            toml_path(&crt),
            toml_path(&key),
        )
    };
    let strict = start_ingress(&config(r#"min_tls_version = "1.3""#), None)
        .await
        .unwrap();
    let default = start_ingress(&config(""), None).await.unwrap();
    let (strict_addr, default_addr) = (strict.https.unwrap(), default.https.unwrap());
    let seen = tokio::task::spawn_blocking(move || {
        (
            openssl_sans_over(strict_addr, "-tls1_2"),
            openssl_sans_over(strict_addr, "-tls1_3"),
            openssl_sans_over(default_addr, "-tls1_2"),
            openssl_sans_over(default_addr, "-tls1_3"),
        )
    })
    .await
    .unwrap();
    assert!(!seen.0.contains("DNS:web.example.test"), "{seen:?}");
    assert!(seen.1.contains("DNS:web.example.test"), "{seen:?}");
    assert!(seen.2.contains("DNS:web.example.test"), "{seen:?}");
    assert!(seen.3.contains("DNS:web.example.test"), "{seen:?}");
    // A refused version is counted as a failed handshake, like any other (once the ingress
    // has finished with that connection, which may be just after openssl has).
    let counted = r#"ingress_connection_refused_total{reason="handshake"} 1"#;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = scrape_metrics(strict.admin, None).await.unwrap();
        if metrics.contains(counted) {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Plaintext ingress with the routes of one host: path, header, a 90/10 split, a catch-all
/// of another host; an unknown host gets 404 naming the reason; a route edit applies live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_header_and_weight_and_live_edits() {
    let stable = named_backend("stable").await.unwrap();
    let canary = named_backend("canary").await.unwrap();
    let api = named_backend("api").await.unwrap();
    let beta = named_backend("beta").await.unwrap();
    let services = format!(
        r#"
[[services]]
authority = "stable:80"
endpoints = ["{stable}"]
plaintext = true
[[services]]
authority = "canary:80"
endpoints = ["{canary}"]
plaintext = true
[[services]]
authority = "api:80"
endpoints = ["{api}"]
plaintext = true
[[services]]
authority = "beta:80"
endpoints = ["{beta}"]
plaintext = true
"#
    );
    let routes = |stable_weight: u32, canary_weight: u32| {
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"
[runtime]
shutdown_grace = "1s"
[http]
listen = "127.0.0.1:{{PORT}}"
[[routes]]
name = "api"
hostnames = ["shop.example.test"]
matches = [{{ path = {{ prefix = "/api" }} }}]
backends = [{{ service = "api:80" }}]
[[routes]]
name = "beta"
hostnames = ["shop.example.test"]
matches = [{{ headers = [{{ name = "x-beta", value = "1" }}] }}]
backends = [{{ service = "beta:80" }}]
[[routes]]
name = "split"
hostnames = ["shop.example.test", "*.shop.example.test"]
backends = [{{ service = "stable:80", weight = {stable_weight} }}, {{ service = "canary:80", weight = {canary_weight} }}]
{services}"#
        )
    };
    let dir = std::env::temp_dir().join(format!("mesh-ingress-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ingress.toml");
    let port = mesh_integration::free_port();
    let write = |text: String| {
        let text = text.replace("{PORT}", &port.to_string());
        let tmp = dir.join("ingress.toml.tmp");
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        text
    };
    let toml = write(routes(90, 10));
    let ingress = start_ingress(&toml, Some(&file)).await.unwrap();
    let http = ingress.http.unwrap();

    let counts = |host: &'static str,
                  path: &'static str,
                  header: Option<(&'static str, &'static str)>,
                  n: usize| {
        async move {
            let mut tx = mesh_integration::h1_client::<Empty<Bytes>>(http)
                .await
                .unwrap();
            let mut seen: HashMap<String, usize> = HashMap::new();
            for _ in 0..n {
                let mut req = Request::get(path).header("host", host);
                if let Some((k, v)) = header {
                    req = req.header(k, v);
                }
                tx.ready().await.unwrap();
                let rsp = tx
                    .send_request(req.body(Empty::new()).unwrap())
                    .await
                    .unwrap();
                let status = rsp.status();
                let reason = rsp
                    .headers()
                    .get("mesh-proxy-error")
                    .map(|v| v.to_str().unwrap_or("").to_owned());
                let body = rsp.into_body().collect().await.unwrap().to_bytes();
                let key = match reason {
                    Some(reason) => format!("{} {reason}", status.as_u16()),
                    None => String::from_utf8_lossy(&body).into_owned(),
                };
                *seen.entry(key).or_default() += 1;
            }
            seen
        }
    };
    let split = counts("shop.example.test", "/", None, 1000).await;
    let (s, c) = (
        split.get("stable").copied().unwrap_or(0),
        split.get("canary").copied().unwrap_or(0),
    );
    eprintln!("1000 requests to shop.example.test/: {s} stable, {c} canary (weights 90/10)");
    assert_eq!(s + c, 1000, "{split:?}");
    // 100 canary calls expected of 1000; the standard deviation is 9.5: 5 of them either way.
    assert!((52..=148).contains(&c), "90/10 split: {split:?}");
    assert_eq!(
        counts("shop.example.test", "/api/users", None, 50).await,
        HashMap::from([("api".into(), 50)])
    );
    assert_eq!(
        counts("shop.example.test", "/", Some(("x-beta", "1")), 50).await,
        HashMap::from([("beta".into(), 50)])
    );
    let wildcard = counts("eu.shop.example.test", "/api/users", None, 40).await;
    assert_eq!(wildcard.values().sum::<usize>(), 40);
    assert!(
        !wildcard.contains_key("api"),
        "the api route is the exact host's only: {wildcard:?}"
    );
    let unknown = counts("evil.example.test", "/", None, 5).await;
    let (key, n) = unknown.iter().next().unwrap();
    assert_eq!(*n, 5);
    assert!(
        key.starts_with("404 no-route") && key.contains("evil.example.test"),
        "{unknown:?}"
    );

    // A live edit: everything to the canary.
    write(routes(0, 1));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = counts("shop.example.test", "/", None, 20).await;
        if seen.get("canary") == Some(&20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edit never applied: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A broken edit (a route to an unknown service) is refused, and the routes in force stay.
    write(routes(0, 1).replace("service = \"beta:80\"", "service = \"nobody:80\""));
    tokio::time::sleep(mesh_stack::serve::CONFIG_POLL * 3).await;
    assert_eq!(
        counts("shop.example.test", "/", Some(("x-beta", "1")), 10).await,
        HashMap::from([("beta".into(), 10)])
    );

    // Metrics: the edge's requests by host pattern and route, inbound.
    let (_, metrics) = scrape_metrics(ingress.admin, None).await.unwrap();
    let split_series = metrics.lines().find(|l| {
        l.starts_with("request_total{direction=\"inbound\",authority=\"shop.example.test\"")
            && l.contains("route=\"split\"")
    });
    assert!(split_series.is_some(), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("response_total{direction=\"outbound\"")
                && l.contains("src_workload=\"mesh-ingress\"")
                && l.contains("dst_service=\"canary:80\"")),
        "the ingress is the source of its outbound requests: {metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the edge does to requests: forwarding headers (a forged one replaced), a request id,
/// an access log line with route and upstream; a redirect to HTTPS; the per-client rate limit
/// (429) and the body limit (413), each naming its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_request_ids_access_log_redirect_and_limits() {
    let echo = start_backend(|req: http::Request<hyper::body::Incoming>| async move {
        let mut lines = Vec::new();
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "x-request-id",
        ] {
            let value = req
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            lines.push(format!("{name}: {value}"));
        }
        http::Response::new(Full::new(Bytes::from(lines.join("\n"))))
    })
    .await
    .unwrap();
    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[runtime]
shutdown_grace = "1s"
[http]
listen = "127.0.0.1:0"
[edge]
max_request_body = 1024
[edge.rate_limit]
# One token in 1000 s: within the test, the bucket holds the burst and nothing more.
requests_per_second = 0.001
burst = 20
[[routes]]
name = "echo"
hostnames = ["echo.example.test"]
backends = [{{ service = "echo:80" }}]
[[services]]
authority = "echo:80"
endpoints = ["{echo}"]
plaintext = true
"#
    );
    let ingress = start_ingress(&toml, None).await.unwrap();
    let http = ingress.http.unwrap();
    let mut tx = mesh_integration::h1_client::<Full<Bytes>>(http)
        .await
        .unwrap();
    let rsp = tx
        .send_request(
            Request::get("/hello?q=1")
                .header("host", "echo.example.test")
                .header("x-forwarded-for", "6.6.6.6")
                .header("forwarded", "for=6.6.6.6")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let id = rsp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body =
        String::from_utf8(rsp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        body.contains("x-forwarded-for: 127.0.0.1\n"),
        "the forged address is replaced: {body}"
    );
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(
        body.contains("x-forwarded-host: echo.example.test\n"),
        "{body}"
    );
    assert!(
        body.contains("forwarded: for=127.0.0.1;proto=http;host=echo.example.test\n"),
        "{body}"
    );
    assert!(
        body.contains(&format!("x-request-id: {id}")),
        "the same id goes upstream: {body}"
    );
    assert_eq!(id.len(), 32, "{id}");

    // The body limit (the refused body is never read: the connection closes after the answer).
    let mut tx = mesh_integration::h1_client::<Full<Bytes>>(http)
        .await
        .unwrap();
    let big = tx
        .send_request(
            Request::post("/upload")
                .header("host", "echo.example.test")
                .body(Full::new(Bytes::from(vec![b'x'; 4096])))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    assert!(
        big.headers()["mesh-proxy-error"]
            .to_str()
            .unwrap()
            .starts_with("body-too-large")
    );

    // The rate limit: a burst of 20, then 429 naming the reason.
    let mut tx = mesh_integration::h1_client::<Full<Bytes>>(http)
        .await
        .unwrap();
    let mut statuses = HashMap::<u16, usize>::new();
    for _ in 0..40 {
        tx.ready().await.unwrap();
        let rsp = tx
            .send_request(
                Request::get("/")
                    .header("host", "echo.example.test")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        if rsp.status() == 429 {
            assert!(
                rsp.headers()["mesh-proxy-error"]
                    .to_str()
                    .unwrap()
                    .starts_with("rate-limited")
            );
        }
        *statuses.entry(rsp.status().as_u16()).or_default() += 1;
        let _ = rsp.into_body().collect().await;
    }
    // 40 requests against a bucket of 20 that does not refill within the test.
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 20,
        "{statuses:?}"
    );

    // One access log line per request, with route and upstream.
    let entries = ingress.access_log.entries();
    let first = entries
        .iter()
        .find(|e| e["path"] == "/hello")
        .expect("a line for /hello");
    assert_eq!(first["status"], 200);
    assert_eq!(first["route"], "echo");
    assert_eq!(first["upstream"], echo.to_string());
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["host"], "echo.example.test");
    assert_eq!(first["method"], "GET");
    assert_eq!(first["request_id"], id.as_str());
    assert!(
        first["duration_ms"].as_f64().is_some() && first["bytes"].as_u64().unwrap() > 0,
        "{first}"
    );
    assert!(entries.iter().any(|e| e["status"] == 413), "{entries:?}");
    assert!(
        entries
            .iter()
            .any(|e| e["status"] == 429 && e["route"].is_null()),
        "{entries:?}"
    );
    drop(ingress);

    // Plaintext that redirects to HTTPS.
    let ca = WebCa::new().unwrap();
    let (crt, key) = ca.issue("echo", &["echo.example.test"]).unwrap();
    let with_https = toml.replace(
        "[http]\nlisten = \"127.0.0.1:0\"",
        &format!(
            "[http]\nlisten = \"127.0.0.1:0\"\nredirect_to_https = true\n\
             [https]\nlisten = \"127.0.0.1:0\"\n\
             [[https.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            toml_path(&crt),
            toml_path(&key)
        ),
    );
    let redirecting = start_ingress(&with_https, None).await.unwrap();
    let mut tx = mesh_integration::h1_client::<Empty<Bytes>>(redirecting.http.unwrap())
        .await
        .unwrap();
    let rsp = tx
        .send_request(
            Request::get("/a/b?c=d")
                .header("host", "echo.example.test:8080")
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(rsp.status(), 308);
    assert_eq!(
        rsp.headers()["location"],
        "https://echo.example.test/a/b?c=d"
    );
}

/// Runs the Python interop client in `mode` against `ingress` (TLS, trusting `ca`), for the
/// greeter host; its stdout.
fn python_interop(mode: &str, https: SocketAddr, ca: &Path, extra_env: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("python/interop.py"))
        .arg(https.to_string())
        .arg("greeter.example.test")
        .arg(root.join("../proto"))
        .arg(mode)
        .env("INTEROP_TLS_CA", ca);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let output = cmd
        .output()
        .expect("python3 runs (.ci/run installs grpcio)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "interop {mode} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Three greeter replicas, each behind a sidecar that requires mutual TLS; the ingress with an
/// identity of its own.
struct MeshedGreeters {
    ingress: RunningIngress,
    sidecars: Vec<mesh_integration::RunningProxy>,
    _replicas: Vec<mesh_examples::demo::Replica>,
    ca: WebCa,
    _pki: mesh_integration::mtls::Pki,
}

async fn meshed_greeters() -> MeshedGreeters {
    use mesh_examples::demo::{Greeter, GreeterConfig, Replica};
    use mesh_integration::mtls::{Pki, wait_ready};
    let pki = Pki::new().unwrap();
    let greeter_id = pki.identity("demo", "greeter");
    let ingress_id = pki.identity("ingress", "mesh-ingress");
    let mut replicas = Vec::new();
    let mut sidecars = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..3 {
        let replica =
            Replica::spawn_greeter(Greeter::new(GreeterConfig::new(format!("greeter-{i}"))))
                .await
                .unwrap();
        let toml = format!(
            "{}[workload]\nname = \"greeter\"\nnamespace = \"demo\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [outbound]\nlisten = \"127.0.0.1:0\"\n[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{}\"\n",
            pki.proxy_identity_toml(&greeter_id, "1h"),
            replica.addr(),
        );
        let sidecar = mesh_integration::start_proxy_toml(&toml).await.unwrap();
        assert!(
            wait_ready(sidecar.admin).await,
            "the sidecar never got a certificate"
        );
        endpoints.push(format!(
            "{{ addr = \"{}\", identity = \"{greeter_id}\", pod = \"greeter-{i}\" }}",
            sidecar.inbound.unwrap()
        ));
        replicas.push(replica);
        sidecars.push(sidecar);
    }
    let ca = WebCa::new().unwrap();
    let (crt, key) = ca.issue("greeter", &["greeter.example.test"]).unwrap();
    let toml = format!(
        r#"{identity}
[workload]
name = "mesh-ingress"
namespace = "ingress"
[admin]
listen = "127.0.0.1:0"
[runtime]
shutdown_grace = "1s"
[https]
listen = "127.0.0.1:0"
[[https.certificates]]
cert = "{crt}"
key = "{key}"
[[routes]]
name = "greeter"
hostnames = ["greeter.example.test"]
matches = [{{ grpc = {{ service = "mesh.demo.v1.Greeter" }} }}]
backends = [{{ service = "greeter.demo.svc.cluster.local:50051" }}]
[[services]]
authority = "greeter.demo.svc.cluster.local:50051"
endpoints = [{endpoints}]
workload = "greeter"
namespace = "demo"
[services.balancer]
decay = "100ms"
"#,
        identity = pki.proxy_identity_toml(&ingress_id, "1h"),
        crt = toml_path(&crt),
        key = toml_path(&key),
        endpoints = endpoints.join(", "),
    );
    let ingress = start_ingress(&toml, None).await.unwrap();
    assert!(
        wait_ready(ingress.admin).await,
        "the ingress never got a certificate"
    );
    MeshedGreeters {
        ingress,
        sidecars,
        _replicas: replicas,
        ca,
        _pki: pki,
    }
}

/// Python grpcio over TLS through the ingress into three meshed replicas: the four RPC kinds,
/// an error status with its message, 4 MiB messages; 3000 calls on one connection spread over
/// the replicas; the sidecars see the ingress's identity. Then gRPC-Web and gRPC-Web-text
/// calls from Python's standard library get their replies and statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_grpc_web_through_the_ingress_into_the_mesh() {
    let mesh = meshed_greeters().await;
    let https = mesh.ingress.https.unwrap();
    let ca = mesh.ca.ca_file();
    let report = tokio::task::spawn_blocking({
        let ca = ca.clone();
        move || python_interop("kinds", https, &ca, &[])
    })
    .await
    .unwrap();
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
            "{check} missing: {report}"
        );
    }
    let report = tokio::task::spawn_blocking({
        let ca = ca.clone();
        move || python_interop("spread", https, &ca, &[])
    })
    .await
    .unwrap();
    let per_replica: serde_json::Value =
        serde_json::from_str::<serde_json::Value>(&report).unwrap()["per_replica"].clone();
    eprintln!("3000 grpcio calls on one TLS connection through the ingress: {per_replica}");
    for i in 0..3 {
        let n = per_replica[format!("greeter-{i}")].as_u64().unwrap_or(0);
        assert!(
            n >= 450,
            "greeter-{i} served {n} of 3000 calls on one connection: {report}"
        );
    }
    let report = tokio::task::spawn_blocking({
        let ca = ca.clone();
        move || python_interop("grpcweb", https, &ca, &[])
    })
    .await
    .unwrap();
    for check in [
        "grpc-web-unary",
        "grpc-web-text-unary",
        "grpc-web-error-status",
    ] {
        assert!(
            report.contains(&format!("\"{check}\"")),
            "{check} missing: {report}"
        );
    }

    // Each sidecar counts the ingress's calls under the ingress's identity, over mutual TLS.
    let ingress_id = "spiffe://cluster.local/ns/ingress/sa/mesh-ingress";
    for sidecar in &mesh.sidecars {
        let (_, metrics) = scrape_metrics(sidecar.admin, None).await.unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("response_total{direction=\"inbound\"")
                    && l.contains(&format!("tls=\"true\",peer_identity=\"{ingress_id}\""))),
            "{metrics}"
        );
    }
    // The ingress counts the calls inbound by host and route, and outbound per replica.
    let (_, metrics) = scrape_metrics(mesh.ingress.admin, None).await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "response_total{direction=\"inbound\",authority=\"greeter.example.test\""
        ) && l.contains("route=\"greeter\"")
            && l.contains("grpc_status=\"5\"")),
        "the error status is counted at the edge: {metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("response_total{direction=\"outbound\"")
                && l.contains("src_workload=\"mesh-ingress\"")
                && l.contains("dst_workload=\"greeter\"")
                && l.contains(
                    "tls=\"true\",peer_identity=\"spiffe://cluster.local/ns/demo/sa/greeter\""
                )),
        "{metrics}"
    );
}

/// On Kubernetes: the Gateway's HTTPS listener names a TLS Secret, an HTTPRoute attached to it
/// routes by host and path to Services whose endpoints come from EndpointSlices. Edits to the
/// route and the Secret apply live; a deleted route leaves 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_routes_and_secrets_are_followed() {
    use k8s_openapi::api::core::v1::{Pod, Secret, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use mesh_kube_fake::FakeApiServer;
    use mesh_stack::gateway::{Gateway, GrpcRoute, HttpRoute};
    use serde_json::json;

    let api = FakeApiServer::builder()
        .resource::<Gateway>()
        .resource::<HttpRoute>()
        .resource::<GrpcRoute>()
        .resource::<Secret>()
        .start()
        .await;
    for (name, port) in [("web", 80), ("api", 8080)] {
        let backend = named_backend(name).await.unwrap();
        api.apply(
            serde_json::from_value::<Service>(json!({
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"ports": [{"name": "http", "port": port, "targetPort": "http"}]}
            }))
            .unwrap(),
        );
        api.apply(
            serde_json::from_value::<Pod>(json!({
                "metadata": {"name": format!("{name}-0"), "namespace": "shop"},
                "spec": {"containers": [{"name": "app", "image": name}]}
            }))
            .unwrap(),
        );
        api.apply(
            serde_json::from_value::<EndpointSlice>(json!({
                "metadata": {"name": format!("{name}-0"), "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": backend.port(), "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true},
                               "targetRef": {"kind": "Pod", "name": format!("{name}-0"), "namespace": "shop"}}]
            }))
            .unwrap(),
        );
    }
    let ca = WebCa::new().unwrap();
    let secret = |ca: &WebCa| {
        let (crt, key) = ca.issue("shop", &["shop.example.test"]).unwrap();
        let mut data = std::collections::BTreeMap::new();
        data.insert(
            "tls.crt".to_owned(),
            k8s_openapi::ByteString(std::fs::read(crt).unwrap()),
        );
        data.insert(
            "tls.key".to_owned(),
            k8s_openapi::ByteString(std::fs::read(key).unwrap()),
        );
        let mut secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "shop-tls", "namespace": "edge"},
            "type": "kubernetes.io/tls"
        }))
        .unwrap();
        secret.data = Some(data);
        secret
    };
    api.apply(secret(&ca));
    api.apply(
        serde_json::from_value::<Gateway>(json!({
            "metadata": {"name": "mesh-ingress", "namespace": "edge"},
            "spec": {"gatewayClassName": "mesh", "listeners": [
                {"name": "https", "port": 443, "protocol": "HTTPS",
                 "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "shop-tls"}]}}
            ]}
        }))
        .unwrap(),
    );
    let route = |default_backend: &str| -> HttpRoute {
        serde_json::from_value(json!({
            "metadata": {"name": "shop", "namespace": "shop"},
            "spec": {
                "parentRefs": [{"name": "mesh-ingress", "namespace": "edge"}],
                "hostnames": ["shop.example.test"],
                "rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                     "backendRefs": [{"name": "api", "port": 8080}]},
                    {"backendRefs": [{"name": default_backend, "port": if default_backend == "api" { 8080 } else { 80 }}]}
                ]
            }
        }))
        .unwrap()
    };
    api.apply(route("web"));

    let toml = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[runtime]
shutdown_grace = "1s"
[https]
listen = "127.0.0.1:0"
[kubernetes]
gateway = "edge/mesh-ingress"
discovery = "kubernetes"
plaintext = true
[discovery.kubernetes]
api = "{}"
"#,
        api.url()
    );
    let ingress = start_ingress(&toml, None).await.unwrap();
    let https = ingress.https.unwrap();
    let mut config = (*ca.client_config(&[b"http/1.1"]).unwrap()).clone();
    config.resumption = rustls::client::Resumption::disabled();
    let config = std::sync::Arc::new(config);
    // One GET over a new TLS connection: the body (or `404 <reason>`) and the leaf served.
    let get = |path: &'static str| {
        let config = config.clone();
        async move {
            let (tls, leaf) = tls_to(https, "shop.example.test", config).await.ok()?;
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .ok()?;
            tokio::spawn(conn);
            let rsp = tx
                .send_request(
                    Request::get(path)
                        .header("host", "shop.example.test")
                        .body(Empty::<Bytes>::new())
                        .unwrap(),
                )
                .await
                .ok()?;
            let status = rsp.status();
            let body = rsp.into_body().collect().await.ok()?.to_bytes();
            let text = if status == 200 {
                String::from_utf8_lossy(&body).into_owned()
            } else {
                format!(
                    "{} {}",
                    status.as_u16(),
                    String::from_utf8_lossy(&body).trim()
                )
            };
            Some((text, leaf))
        }
    };
    let until = |path: &'static str, want: &'static str| {
        let get = &get;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let got = get(path).await;
                if got.as_ref().is_some_and(|(text, _)| text.starts_with(want)) {
                    return got.unwrap();
                }
                assert!(
                    Instant::now() < deadline,
                    "{path}: wanted {want}, got {got:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let (_, first_leaf) = until("/", "web").await;
    assert_eq!(until("/api/users", "api").await.0, "api");

    // A GRPCRoute made after the HTTPRoute: its service match outranks the older catch-all.
    api.apply(
        serde_json::from_value::<GrpcRoute>(json!({
            "metadata": {"name": "cart", "namespace": "shop"},
            "spec": {
                "parentRefs": [{"name": "mesh-ingress", "namespace": "edge"}],
                "hostnames": ["shop.example.test"],
                "rules": [{"matches": [{"method": {"service": "shop.Cart"}}],
                           "backendRefs": [{"name": "api", "port": 8080}]}]
            }
        }))
        .unwrap(),
    );
    assert_eq!(until("/shop.Cart/Add", "api").await.0, "api");
    assert_eq!(get("/shop.Other/Add").await.unwrap().0, "web");

    // The route changes: everything but /api goes to api too.
    api.apply(route("api"));
    until("/", "api").await;

    // The Secret is renewed: new handshakes get the new certificate.
    api.apply(secret(&ca));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, leaf) = get("/").await.expect("served while the Secret changes");
        if leaf != first_leaf {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed Secret was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The route is deleted: the host is no longer served.
    api.delete::<HttpRoute>("shop", "shop");
    let (text, _) = until("/", "404").await;
    assert!(text.contains("no-route"), "{text}");
    // And web, which only that route named, is released; api, which the GRPCRoute still
    // names, stays.
    let (_, metrics) = scrape_metrics(ingress.admin, None).await.unwrap();
    let balanced = |service: &str| {
        metrics.contains(&format!(
            r#"balancer_endpoints{{service="{service}.shop.svc.cluster.local:"#
        ))
    };
    assert!(!balanced("web"), "{metrics}");
    assert!(balanced("api"), "{metrics}");
    assert_eq!(until("/shop.Cart/Add", "api").await.0, "api");
}
