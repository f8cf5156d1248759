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
use http_body_util::{BodyExt, Empty, Full};
use mesh_integration::{h1_client, start_backend, start_proxy};

async fn scrape(admin: std::net::SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut client = h1_client::<Empty<Bytes>>(admin).await.unwrap();
    let mut req = Request::get("/metrics").header("host", "admin");
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let rsp = client
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    let content_type = rsp.headers()["content-type"].to_str().unwrap().to_owned();
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    (content_type, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn metrics_pass_promtool_in_both_formats() {
    let backend =
        start_backend(|_req| async { Response::new(Full::new(Bytes::from_static(b"ok"))) })
            .await
            .unwrap();
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
