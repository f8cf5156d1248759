//! The admin listener's `/metrics`, scraped as Prometheus would, and checked by Prometheus's
//! own linter (`promtool check metrics`, from Debian's `prometheus` package).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::io::Write;
use std::process::{Command, Stdio};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use mesh_integration::{h1_client, start_backend, start_proxy};

async fn scrape(admin: std::net::SocketAddr, accept: Option<&str>) -> (String, String) {
    mesh_integration::scrape_metrics(admin, accept)
        .await
        .unwrap()
}

#[tokio::test]
async fn metrics_pass_promtool_in_both_formats() {
    let backend = mesh_integration::hello_backend().await.unwrap();
    let proxy = start_proxy(&[("web.test:80", &[backend])]).await.unwrap();
    let mut client = h1_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    for _ in 0..5 {
        client.ready().await.unwrap();
        let req = Request::get("/")
            .header("host", "web.test")
            .body(Empty::new())
            .unwrap();
        let rsp = client.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        let _ = rsp.into_body().collect().await;
    }

    let (content_type, text) = scrape(proxy.admin, None).await;
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        text.contains("balancer_endpoints{service=\"web.test:80\",state=\"ready\"} 1"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required (Debian package prometheus; .ci/run installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (content_type, text) = scrape(
        proxy.admin,
        Some("application/openmetrics-text;version=1.0.0"),
    )
    .await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE balancer_ejections counter"), "{text}");
}

/// A gRPC backend answering every call with HTTP 200 and the status only in trailers: the
/// status the request's `x-status` header asks for.
async fn grpc_trailers_backend() -> std::net::SocketAddr {
    use http::HeaderMap;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    start_backend(|req: Request<hyper::body::Incoming>| async move {
        let status = req
            .headers()
            .get("x-status")
            .cloned()
            .unwrap_or(http::HeaderValue::from_static("0"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", status);
        let frames = [
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\0"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut rsp = Response::new(StreamBody::new(tokio_stream::iter(frames)));
        rsp.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        rsp
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn grpc_statuses_in_trailers_are_classified() {
    let backend = grpc_trailers_backend().await;
    let toml = mesh_integration::proxy_toml(&[("grpc.test:80", &[backend])]).replace(
        "authority = \"grpc.test:80\"",
        "authority = \"grpc.test:80\"\nworkload = \"api\"\nnamespace = \"demo\"",
    ) + "[workload]\nname = \"web\"\nnamespace = \"demo\"\n";
    let proxy = mesh_integration::start_proxy_toml(&toml).await.unwrap();
    let mut h2 = mesh_integration::h2_client::<Empty<Bytes>>(proxy.outbound)
        .await
        .unwrap();
    for status in ["0", "0", "14", "5", "14"] {
        let req = Request::post("http://grpc.test/pkg.Svc/Method")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("x-status", status)
            .body(Empty::new())
            .unwrap();
        let rsp = h2.send_request(req).await.unwrap();
        let body = rsp.into_body().collect().await.unwrap();
        assert!(body.trailers().is_some());
    }
    let (_, text) = scrape(proxy.admin, None).await;
    let series = |grpc: &str, class: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("response_total{")
                    && l.contains(&format!("grpc_status=\"{grpc}\""))
                    && l.contains(&format!("classification=\"{class}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
    };
    assert_eq!(series("0", "success").as_deref(), Some("2"), "{text}");
    assert_eq!(
        series("5", "success").as_deref(),
        Some("1"),
        "NOT_FOUND is the app answering: {text}"
    );
    assert_eq!(series("14", "failure").as_deref(), Some("2"), "{text}");
    let requests = text
        .lines()
        .find(|l| l.starts_with("request_total{"))
        .unwrap_or("");
    for label in [
        "direction=\"outbound\"",
        "src_workload=\"web\"",
        "dst_workload=\"api\"",
        "dst_namespace=\"demo\"",
    ] {
        assert!(requests.contains(label), "{label} missing: {requests}");
    }
    assert!(requests.ends_with(" 5"), "{requests}");
    assert!(text.contains("response_latency_seconds_bucket{"), "{text}");
}

#[tokio::test]
async fn ten_thousand_hosts_leave_the_exposition_small() {
    let backend = mesh_integration::hello_backend().await.unwrap();
    let proxy = start_proxy(&[("web.test:80", &[backend])]).await.unwrap();
    let (_, before) = scrape(proxy.admin, None).await;
    let mut h2 = mesh_integration::h2_client::<Empty<Bytes>>(proxy.outbound)
        .await
        .unwrap();
    for i in 0..10_000 {
        let req = Request::get(format!("http://host-{i}.test/"))
            .body(Empty::new())
            .unwrap();
        let rsp = h2.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let _ = rsp.into_body().collect().await;
    }
    let (_, after) = scrape(proxy.admin, None).await;
    assert!(
        !after.contains("host-"),
        "an unknown authority became a label"
    );
    assert!(
        after.len() < before.len() + 4096,
        "the exposition grew from {} to {} bytes",
        before.len(),
        after.len()
    );
}
