//! Discovery through the proxy: the balancer follows a watched services file, and keeps the
//! last good endpoints when the file goes bad.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_integration::{named_backend, start_proxy_toml};

/// Which backends answered `n` requests through `outbound`; panics on a failed request.
async fn who_answers(outbound: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut tx = mesh_integration::h2_client::<Empty<Bytes>>(outbound)
        .await
        .unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let rsp = tx
            .send_request(Request::get("http://web:80/").body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert!(rsp.status().is_success(), "{rsp:?}");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        seen.insert(String::from_utf8_lossy(&body).into_owned());
    }
    seen
}

fn write_services(path: &std::path::Path, endpoints: &[SocketAddr]) {
    let list: Vec<String> = endpoints
        .iter()
        .map(|e| format!("        - addr: \"{e}\"\n"))
        .collect();
    let text = format!(
        "services:\n  - name: \"web:80\"\n    endpoints:\n{}",
        list.concat()
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits (bounded) until 40 requests in a row are answered by exactly `expected`.
async fn until_answered_by(outbound: SocketAddr, expected: &[&str]) -> Duration {
    let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    let start = Instant::now();
    loop {
        let seen = who_answers(outbound, 40).await;
        if seen == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still answered by {seen:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_follows_a_services_file() {
    let (a, b, c) = (
        named_backend("a").await.unwrap(),
        named_backend("b").await.unwrap(),
        named_backend("c").await.unwrap(),
    );
    let dir = std::env::temp_dir().join(format!("mesh-discovery-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("services.yaml");
    write_services(&file, &[a, b]);
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [discovery]\nfile = \"{}\"\n\
         [[outbound.services]]\nauthority = \"web:80\"\ndiscovery = \"file\"\n\
         balancer = {{ decay = \"100ms\" }}\n",
        file.display()
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    until_answered_by(proxy.outbound, &["a", "b"]).await;

    // An endpoint added and one removed.
    write_services(&file, &[b, c]);
    let took = until_answered_by(proxy.outbound, &["b", "c"]).await;
    eprintln!("file edit reached the balancer within {took:?}");

    // A bad edit: the last good endpoints stay, and every request is still served.
    std::fs::write(&file, "services: [ this is not: valid").unwrap();
    let kept: BTreeSet<String> = ["b", "c"].iter().map(|s| (*s).to_owned()).collect();
    for _ in 0..5 {
        let seen = who_answers(proxy.outbound, 40).await;
        assert!(
            seen.is_subset(&kept),
            "answered by {seen:?} after a bad edit"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Recovery: a good edit applies again.
    write_services(&file, &[a]);
    until_answered_by(proxy.outbound, &["a"]).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_service_without_its_source_is_a_named_configuration_error() {
    let err = mesh_proxy::Config::from_toml_str_with_env(
        "[[outbound.services]]\nauthority = \"web:80\"\ndiscovery = \"file\"\n",
        Vec::<(String, String)>::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("discovery.file"), "{err}");
    let err = mesh_proxy::Config::from_toml_str_with_env(
        "[[outbound.services]]\nauthority = \"web:80\"\ndiscovery = \"dns\"\nendpoints = [\"127.0.0.1:1\"]\n",
        Vec::<(String, String)>::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("outbound.services[0].endpoints"), "{err}");
}
