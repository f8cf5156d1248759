//! Routes through the proxy: a 90/10 split, a header match sending every marked request to the
//! canary, and a live reload from 90/10 to 50/50 that loses no request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use mesh_integration::named_backend;

fn config(
    stable: SocketAddr,
    canary: SocketAddr,
    weights: (u32, u32),
    extra_route: &str,
) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [[outbound.services]]\nauthority = \"greeter:80\"\nendpoints = [\"{stable}\"]\n\
         {extra_route}\
         [[outbound.services.routes]]\nname = \"split\"\n\
         backends = [{{ service = \"greeter:80\", weight = {} }}, {{ service = \"greeter-canary:80\", weight = {} }}]\n\
         [[outbound.services]]\nauthority = \"greeter-canary:80\"\nendpoints = [\"{canary}\"]\n",
        weights.0, weights.1
    )
}

const CANARY_BY_HEADER: &str = "[[outbound.services.routes]]\nname = \"by-header\"\n\
     matches = [{ headers = [{ name = \"x-canary\", value = \"1\" }] }]\n\
     backends = [{ service = \"greeter-canary:80\" }]\n";

/// Starts the proxy from a configuration file it watches.
async fn start(path: &Path) -> SocketAddr {
    let config = mesh_proxy::Config::load(Some(path)).unwrap();
    let proxy = mesh_proxy::Proxy::bind(config)
        .await
        .unwrap()
        .with_config_file(Some(path.to_owned()));
    let outbound = proxy.outbound_addr();
    tokio::spawn(proxy.run(std::future::pending()));
    outbound
}

/// `n` requests; how many the canary answered. Panics on a failed request.
async fn canary_share(outbound: SocketAddr, n: u64, header: bool) -> u64 {
    let mut tx = mesh_integration::h2_client::<Empty<Bytes>>(outbound)
        .await
        .unwrap();
    let mut canary = 0;
    for _ in 0..n {
        let mut req = Request::get("http://greeter:80/hello");
        if header {
            req = req.header("x-canary", "1");
        }
        let rsp = tx
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert!(rsp.status().is_success(), "{rsp:?}");
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        canary += u64::from(&body[..] == b"canary");
    }
    canary
}

fn temp_config(tag: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("mesh-routes-{tag}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_and_a_header_match() {
    let (stable, canary) = (
        named_backend("stable").await.unwrap(),
        named_backend("canary").await.unwrap(),
    );
    let path = temp_config("split", &config(stable, canary, (90, 10), CANARY_BY_HEADER));
    let outbound = start(&path).await;

    let n = 10_000;
    let to_canary = canary_share(outbound, n, false).await;
    let share = to_canary as f64 / n as f64;
    eprintln!(
        "split 90/10: {to_canary} of {n} to the canary ({:.2}%)",
        share * 100.0
    );
    assert!((0.08..=0.12).contains(&share), "canary share {share}");

    let marked = canary_share(outbound, 500, true).await;
    assert_eq!(marked, 500, "every marked request goes to the canary");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_reload_changes_the_split_and_loses_no_request() {
    let (stable, canary) = (
        named_backend("stable").await.unwrap(),
        named_backend("canary").await.unwrap(),
    );
    let path = temp_config("reload", &config(stable, canary, (90, 10), ""));
    let outbound = start(&path).await;

    // Traffic all along, counting failures.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            let mut tx = mesh_integration::h2_client::<Empty<Bytes>>(outbound)
                .await
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                match tx
                    .send_request(
                        Request::get("http://greeter:80/")
                            .body(Empty::new())
                            .unwrap(),
                    )
                    .await
                {
                    Ok(rsp) if rsp.status().is_success() => {
                        let _ = rsp.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let before = canary_share(outbound, 2000, false).await as f64 / 2000.0;
    assert!((0.06..=0.14).contains(&before), "{before}");

    // An invalid file is refused: the split stays.
    replace(
        &path,
        &config(
            stable,
            canary,
            (50, 50),
            "[[outbound.services.routes]]\nmatches = [{ path = { regex = \"(\" } }]\nbackends = [{ service = \"greeter-canary:80\" }]\n",
        ),
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let still = canary_share(outbound, 2000, false).await as f64 / 2000.0;
    assert!(
        (0.06..=0.14).contains(&still),
        "an invalid file changed the split: {still}"
    );

    // 90/10 -> 50/50, live.
    let reloaded_at = Instant::now();
    replace(&path, &config(stable, canary, (50, 50), ""));
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let share = canary_share(outbound, 1000, false).await as f64 / 1000.0;
        if (0.45..=0.55).contains(&share) {
            break share;
        }
        assert!(
            Instant::now() < deadline,
            "the split never became 50/50: {share}"
        );
    };
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "reload: canary share {before:.3} -> {after:.3} within {:?}; {ok} requests through it, {failed} failed",
        reloaded_at.elapsed()
    );
    assert_eq!(failed, 0);
    let _ = std::fs::remove_file(&path);
}
