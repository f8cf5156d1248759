//! The whole path from install to a meshed pod, against the stand-in API server with the real
//! `kubectl` and the real injector binary: `meshctl install | kubectl apply -f -` creates
//! every object; the injector runs on what the install made (its configuration, its
//! certificate, the trust anchors), and the stand-in calls it through the install's
//! MutatingWebhookConfiguration, verifying it with the caBundle; annotating a namespace meshes
//! the pods created in it, a pod elsewhere is stored as it came, and with the injector gone,
//! pods are still created (`failurePolicy: Ignore`) and the failed call is recorded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use mesh_kube_fake::FakeApiServer;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_mesh-injector");

/// kubectl as the user runs it, against the stand-in.
struct Kubectl {
    dir: PathBuf,
    binary: PathBuf,
}

impl Kubectl {
    /// `None` (with the reason printed) outside CI when kubectl is missing; in CI, a failure.
    fn find(dir: &Path, api: &FakeApiServer) -> Option<Self> {
        let binary = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("kubectl"))
                .find(|p| p.is_file())
        });
        let Some(binary) = binary else {
            assert!(
                std::env::var_os("CI").is_none(),
                "kubectl is required in CI (.ci/run installs kubernetes-client)"
            );
            eprintln!("SKIPPED: no kubectl on PATH; this test needs the real kubectl");
            return None;
        };
        std::fs::write(dir.join("kubeconfig"), api.kubeconfig()).unwrap();
        Some(Self {
            dir: dir.to_owned(),
            binary,
        })
    }

    /// Runs kubectl with `stdin`; (success, stdout, stderr).
    async fn run(&self, args: &[&str], stdin: Option<String>) -> (bool, String, String) {
        let mut command = Command::new(&self.binary);
        command
            .arg(format!(
                "--kubeconfig={}",
                self.dir.join("kubeconfig").display()
            ))
            .arg(format!("--cache-dir={}", self.dir.join("cache").display()))
            .args(args)
            .args(validate_flag(args))
            .env_remove("KUBECONFIG")
            .env("HOME", &self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().unwrap();
            let mut input = child.stdin.take().unwrap();
            let _ = input.write_all(stdin.unwrap_or_default().as_bytes());
            drop(input);
            let out = child.wait_with_output().unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    }

    async fn ok(&self, args: &[&str], stdin: Option<String>) -> String {
        let (ok, stdout, stderr) = self.run(args, stdin).await;
        assert!(ok, "kubectl {}: {stdout}{stderr}", args.join(" "));
        stdout
    }
}

/// `--validate=false` for the commands that validate: older kubectl (Debian's 1.20) validates
/// against `/openapi/v2`, which the stand-in does not serve (newer ones ask the server).
fn validate_flag(args: &[&str]) -> &'static [&'static str] {
    match args.first() {
        Some(&"apply" | &"create") => &["--validate=false"],
        _ => &[],
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in the install"))
}

/// A pod as a Deployment's ReplicaSet would create it.
fn app_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: web, pod-template-hash: 6c4f9}}\n\
         spec:\n  containers:\n  - name: web\n    image: ghcr.io/example/web:1\n    ports: [{{containerPort: 8080}}]\n"
    )
}

fn namespace(name: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n")
}

fn init_containers(pod_json: &str) -> Vec<(String, Option<String>)> {
    let pod: Pod = serde_json::from_str(pod_json).unwrap();
    pod.spec
        .unwrap()
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.restart_policy))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_apply_annotate_and_pods_are_meshed() {
    let dir = std::env::temp_dir().join(format!("mesh-install-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let api = FakeApiServer::builder()
        .resource::<Namespace>()
        .resource::<ServiceAccount>()
        .resource::<ConfigMap>()
        .resource::<Secret>()
        .resource::<Deployment>()
        .resource::<ClusterRole>()
        .resource::<ClusterRoleBinding>()
        .resource::<MutatingWebhookConfiguration>()
        .resource::<k8s_openapi::api::rbac::v1::Role>()
        .resource::<k8s_openapi::api::rbac::v1::RoleBinding>()
        .resource::<mesh_stack::gateway::Gateway>()
        .resource::<mesh_stack::gateway::GatewayClass>()
        .start()
        .await;
    let Some(kubectl) = Kubectl::find(&dir, &api) else {
        return;
    };

    // meshctl install | kubectl apply -f -
    let options = meshctl::install::InstallOptions {
        registry: "registry.example/mesh".to_owned(),
        ingress: true,
        gateway_api: true,
        ..meshctl::install::InstallOptions::default()
    };
    // What `meshctl install` prints, and the objects it holds (read back from that YAML).
    let yaml = meshctl::install::install_yaml(&options).unwrap();
    let installed: Vec<Value> = serde_saphyr::from_str_multiple::<Value, Vec<Value>>(&yaml)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect();
    let applied = kubectl.ok(&["apply", "-f", "-"], Some(yaml)).await;
    for object in &installed {
        let kind = object["kind"].as_str().unwrap().to_ascii_lowercase();
        let name = object["metadata"]["name"].as_str().unwrap();
        assert!(
            applied.contains(&format!("/{name} created")),
            "{kind}/{name} not created:\n{applied}"
        );
    }
    let (ok, _, _) = kubectl
        .run(
            &["get", "mutatingwebhookconfiguration", "mesh-injector"],
            None,
        )
        .await;
    assert!(ok);

    // The injector, as its Deployment runs it: the install's configuration, certificate and
    // anchors (paths of the pod's mounts moved to files here).
    let config: ConfigMap =
        serde_json::from_value(find(&installed, "ConfigMap", "mesh-config").clone()).unwrap();
    let tls: Secret =
        serde_json::from_value(find(&installed, "Secret", "mesh-injector-tls").clone()).unwrap();
    let anchors: ConfigMap =
        serde_json::from_value(find(&installed, "ConfigMap", "mesh-trust-anchors").clone())
            .unwrap();
    let tls = tls.string_data.unwrap();
    std::fs::write(dir.join("tls.crt"), &tls["tls.crt"]).unwrap();
    std::fs::write(dir.join("tls.key"), &tls["tls.key"]).unwrap();
    std::fs::write(dir.join("ca.crt"), &anchors.data.unwrap()["ca.crt"]).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let injector_toml = config.data.unwrap()["injector.toml"]
        .replace("0.0.0.0:8443", &format!("127.0.0.1:{port}"))
        .replace("/var/run/mesh/tls", &dir.display().to_string())
        .replace("/var/run/mesh/anchors", &dir.display().to_string())
        .replacen(
            "[inject]",
            &format!("kubernetes_api = \"{}\"\n\n[inject]", api.url()),
            1,
        );
    std::fs::write(dir.join("injector.toml"), injector_toml).unwrap();
    let log = std::fs::File::create(dir.join("injector.log")).unwrap();
    let injector = Killed(
        Command::new(BIN)
            .arg("--config")
            .arg(dir.join("injector.toml"))
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the injector never listened: {}",
            std::fs::read_to_string(dir.join("injector.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The stand-in has no cluster network: the Service's port 443 is the injector's.
    api.route_webhook_service(
        "mesh-system",
        "mesh-injector",
        443,
        ([127, 0, 0, 1], port).into(),
    );

    // An annotated namespace: its pods are meshed.
    // (`kubectl create namespace` would send protobuf, which the stand-in does not speak.)
    kubectl
        .ok(&["apply", "-f", "-"], Some(namespace("shop")))
        .await;
    kubectl
        .ok(
            &["annotate", "namespace", "shop", "mesh.dev/inject=enabled"],
            None,
        )
        .await;
    kubectl
        .ok(
            &["create", "-n", "shop", "-f", "-"],
            Some(app_pod("web-6c4f9-a1")),
        )
        .await;
    let stored = kubectl
        .ok(
            &["get", "pod", "-n", "shop", "web-6c4f9-a1", "-o", "json"],
            None,
        )
        .await;
    assert_eq!(
        init_containers(&stored),
        [
            ("mesh-init".to_owned(), None),
            ("mesh-proxy".to_owned(), Some("Always".to_owned()))
        ],
        "{stored}"
    );
    assert!(
        stored.contains("registry.example/mesh/mesh-proxy:"),
        "{stored}"
    );

    // A namespace that did not ask: stored as it came.
    kubectl
        .ok(&["apply", "-f", "-"], Some(namespace("plain")))
        .await;
    kubectl
        .ok(
            &["create", "-n", "plain", "-f", "-"],
            Some(app_pod("web-6c4f9-b2")),
        )
        .await;
    let stored = kubectl
        .ok(
            &["get", "pod", "-n", "plain", "web-6c4f9-b2", "-o", "json"],
            None,
        )
        .await;
    assert!(init_containers(&stored).is_empty(), "{stored}");

    // The injector dies: pods are still created, unmeshed, and the failed call is on record.
    drop(injector);
    kubectl
        .ok(
            &["create", "-n", "shop", "-f", "-"],
            Some(app_pod("web-6c4f9-c3")),
        )
        .await;
    let stored = kubectl
        .ok(
            &["get", "pod", "-n", "shop", "web-6c4f9-c3", "-o", "json"],
            None,
        )
        .await;
    assert!(init_containers(&stored).is_empty(), "{stored}");
    let calls = api.webhook_calls();
    let outcomes: Vec<String> = calls
        .iter()
        .map(|c| format!("{} {} {:?}", c.webhook, c.object, c.outcome))
        .collect();
    assert!(
        calls
            .iter()
            .any(|c| c.object == "shop/web-6c4f9-a1" && c.outcome == Ok("patched")),
        "{outcomes:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.object == "plain/web-6c4f9-b2" && c.outcome == Ok("allowed")),
        "{outcomes:#?}"
    );
    let last = calls.last().unwrap();
    assert_eq!(last.object, "shop/web-6c4f9-c3");
    assert!(last.outcome.is_err(), "{outcomes:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}
