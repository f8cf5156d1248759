//! The Grafana dashboards in `deploy/grafana` load, and every query names a metric the proxy
//! exports (read from a real scrape of a proxy that carried traffic).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::BTreeSet;
use std::path::Path;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_integration::{h1_client, start_proxy};

/// The metric families a scrape exposes, with the sample names of histograms.
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// The metric names a PromQL expression uses: tokens with one of our metric prefixes.
fn used(expr: &str) -> Vec<String> {
    const PREFIXES: [&str; 5] = ["request_", "response_", "tcp_", "balancer_", "process_"];
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| PREFIXES.iter().any(|p| t.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_dashboard_query_names_an_exported_metric() {
    let backend = mesh_integration::hello_backend().await.unwrap();
    let proxy = start_proxy(&[("web.test:80", &[backend])]).await.unwrap();
    let mut client = h1_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    client.ready().await.unwrap();
    let req = Request::get("/")
        .header("host", "web.test")
        .body(Empty::new())
        .unwrap();
    let _ = client
        .send_request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await;
    let (_, exposition) = mesh_integration::scrape_metrics(proxy.admin, None)
        .await
        .unwrap();
    let names = exported(&exposition);

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut dashboards = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        dashboards += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
        let mut queries = Vec::new();
        exprs(&json, &mut queries);
        assert!(!queries.is_empty(), "{} has no queries", path.display());
        for query in &queries {
            let metrics = used(query);
            assert!(
                !metrics.is_empty() || !query.contains('('),
                "{}: {query}",
                path.display()
            );
            for metric in metrics {
                assert!(
                    names.contains(&metric),
                    "{} queries {metric}, which the proxy does not export: {query}\nexported: {names:?}",
                    path.display()
                );
            }
        }
    }
    assert!(dashboards >= 3, "dashboards found: {dashboards}");
}
