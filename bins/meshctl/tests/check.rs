//! `meshctl check` against the stand-in API server: every check passes on a good install,
//! and each failure is named, with what to do: the injector's Deployment missing, an issuer
//! that expires in 30 days, a caBundle that does not verify the injector, a proxy not ready.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::process::Command;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use mesh_kube_fake::FakeApiServer;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_meshctl");

async fn cluster() -> FakeApiServer {
    FakeApiServer::builder()
        .resource::<Namespace>()
        .resource::<ConfigMap>()
        .resource::<Secret>()
        .resource::<Deployment>()
        .resource::<MutatingWebhookConfiguration>()
        .start()
        .await
}

/// The objects `meshctl install` makes, stored as a running cluster would have them (the
/// Deployments ready), and a meshed pod whose proxy is `ready`.
fn install(api: &FakeApiServer, proxy_ready: bool) {
    let options = meshctl::install::InstallOptions::default();
    for object in meshctl::install::manifests(&options).unwrap() {
        let mut object = object;
        match object["kind"].as_str().unwrap() {
            "Deployment" => {
                object["status"] = json!({"replicas": 1, "readyReplicas": 1});
                api.apply(serde_json::from_value::<Deployment>(object).unwrap());
            }
            "Secret" => drop(api.apply(serde_json::from_value::<Secret>(object).unwrap())),
            "ConfigMap" => drop(api.apply(serde_json::from_value::<ConfigMap>(object).unwrap())),
            "MutatingWebhookConfiguration" => drop(
                api.apply(serde_json::from_value::<MutatingWebhookConfiguration>(object).unwrap()),
            ),
            _ => {}
        }
    }
    api.apply(
        serde_json::from_value::<Pod>(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "labels": {"mesh.dev/meshed": "true"}},
            "spec": {"containers": [{"name": "web", "image": "web"}]},
            "status": {"initContainerStatuses": [{"name": "mesh-proxy", "ready": proxy_ready,
                "restartCount": 0, "image": "p", "imageID": ""}]}
        }))
        .unwrap(),
    );
}

/// `meshctl check` against `api`: (exit code, report).
async fn check(api: &FakeApiServer) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!(
        "meshctl-check-{}-{}",
        std::process::id(),
        api.addr().port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kubeconfig"), api.kubeconfig()).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check", "--kubeconfig"])
            .arg(&kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn line<'a>(report: &'a str, start: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line {start:?} in\n{report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_install_passes_every_check() {
    let api = cluster().await;
    install(&api, true);
    let (code, report) = check(&api).await;
    assert_eq!(code, Some(0), "{report}");
    for check in [
        "✔ Kubernetes API",
        "✔ control plane: deployment mesh-system/mesh-controller",
        "✔ control plane: deployment mesh-system/mesh-injector",
        "✔ webhook",
        "✔ issuer",
        "✔ trust anchors",
        "✔ meshed pods: the proxies of all 1 meshed pods are ready",
    ] {
        line(&report, check);
    }
    assert!(report.contains("all 7 checks passed"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_is_named_with_what_to_do() {
    // The injector's Deployment is gone.
    let api = cluster().await;
    install(&api, true);
    api.delete::<Deployment>("mesh-system", "mesh-injector");
    let (code, report) = check(&api).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(
        line(&report, "✘ control plane").contains("mesh-system/mesh-injector is missing"),
        "{report}"
    );
    assert!(
        report.contains("meshctl install | kubectl apply -f -"),
        "{report}"
    );

    // An issuer that expires in 30 days (still signed by the anchor).
    let api = cluster().await;
    install(&api, true);
    let made = mesh_tls::ca::bootstrap(
        "cluster.local",
        Duration::from_secs(3650 * 86_400),
        Duration::from_secs(30 * 86_400),
        SystemTime::now(),
    )
    .unwrap();
    api.apply(
        serde_json::from_value::<ConfigMap>(json!({
            "metadata": {"name": "mesh-trust-anchors", "namespace": "mesh-system"},
            "data": {"ca.crt": made.anchor_pem}
        }))
        .unwrap(),
    );
    api.apply(
        serde_json::from_value::<Secret>(json!({
            "metadata": {"name": "mesh-identity-issuer", "namespace": "mesh-system"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": made.issuer_cert_pem, "tls.key": made.issuer_key_pem}
        }))
        .unwrap(),
    );
    let (code, report) = check(&api).await;
    assert_eq!(code, Some(1), "{report}");
    let issuer = line(&report, "✘ issuer");
    assert!(
        issuer.contains("expires in 29 days") || issuer.contains("expires in 30 days"),
        "{report}"
    );
    line(&report, "✔ trust anchors");

    // A caBundle from another install: the API server could not call the injector.
    let api = cluster().await;
    install(&api, true);
    let other = meshctl::install::manifests(&meshctl::install::InstallOptions::default()).unwrap();
    let webhook: Value = other
        .into_iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .unwrap();
    api.apply(serde_json::from_value::<MutatingWebhookConfiguration>(webhook).unwrap());
    let (code, report) = check(&api).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(
        line(&report, "✘ webhook").contains("does not verify the injector's certificate"),
        "{report}"
    );

    // A proxy that is not ready.
    let api = cluster().await;
    install(&api, false);
    let (code, report) = check(&api).await;
    assert_eq!(code, Some(1), "{report}");
    assert!(
        line(&report, "✘ meshed pods").contains("shop/web-0"),
        "{report}"
    );
    assert!(
        report.contains("kubectl -n shop logs web-0 -c mesh-proxy"),
        "{report}"
    );
}
