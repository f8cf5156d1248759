//! The real `kubectl` against the fake: discovery, tables, JSON output and
//! a create/delete round trip. Skipped when /usr/bin/kubectl is absent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{pod, service, slice};
use k8s_openapi::api::core::v1::Service;
use mesh_kube_fake::FakeApiServer;

const KUBECTL: &str = "/usr/bin/kubectl";

struct Kubectl {
    dir: PathBuf,
    server: String,
}

impl Kubectl {
    fn new(server: &FakeApiServer) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "mesh-kube-fake-kubectl-{}-{}",
            std::process::id(),
            server.addr().port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kubeconfig"), server.kubeconfig()).unwrap();
        Self {
            dir,
            server: server.url(),
        }
    }

    /// Runs kubectl (blocking, so on a blocking thread) and returns stdout;
    /// fails the test if kubectl fails.
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, stdout, stderr) = self.output(args, stdin).await;
        assert!(
            ok,
            "kubectl {} failed\nstdout: {stdout}\nstderr: {stderr}",
            args.join(" ")
        );
        stdout
    }

    /// Runs kubectl; returns whether it succeeded, stdout and stderr.
    async fn output(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut cmd = Command::new(KUBECTL);
        cmd.arg(format!(
            "--kubeconfig={}",
            self.dir.join("kubeconfig").display()
        ))
        .arg(format!("--cache-dir={}", self.dir.join("cache").display()))
        .arg(format!("--server={}", self.server))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", &self.dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let stdin = stdin.map(str::to_owned);
        let what = args.join(" ");
        tokio::task::spawn_blocking(move || {
            let mut child = cmd.spawn().unwrap();
            if let Some(input) = stdin {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
            }
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            println!("$ kubectl {what}\n{stdout}{stderr}");
            (out.status.success(), stdout, stderr)
        })
        .await
        .unwrap()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_endpoint_slices_services_and_pods() {
    if !Path::new(KUBECTL).exists() {
        eprintln!("SKIPPED: {KUBECTL} not found; the kubectl test needs the real kubectl");
        return;
    }
    let server = FakeApiServer::start().await;
    server.apply(slice("demo", "web-abcde", "web", &["10.0.0.1", "10.0.0.2"]));
    server.apply(slice("prod", "api-fghij", "api", &["10.1.0.1"]));
    server.apply(service("demo", "web", "10.96.0.10"));
    server.apply(service("demo", "api", "10.96.0.11"));
    server.apply(service("prod", "hidden", "10.96.0.12"));
    server.apply(pod("demo", "web-7d9f-xk2p", "10.0.0.1"));
    server.apply(pod("demo", "web-7d9f-q8zr", "10.0.0.2"));
    let kubectl = Kubectl::new(&server);

    let out = kubectl.run(&["get", "endpointslices", "-A"], None).await;
    let header = out.lines().next().unwrap();
    for col in [
        "NAMESPACE",
        "NAME",
        "ADDRESSTYPE",
        "PORTS",
        "ENDPOINTS",
        "AGE",
    ] {
        assert!(header.contains(col), "{col} in {header:?}");
    }
    assert!(
        out.lines().any(|l| l.starts_with("demo")
            && l.contains("web-abcde")
            && l.contains("IPv4")
            && l.contains("8080")
            && l.contains("10.0.0.1,10.0.0.2")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("prod") && l.contains("api-fghij")),
        "{out}"
    );

    let out = kubectl.run(&["get", "services", "-n", "demo"], None).await;
    assert!(out.lines().next().unwrap().contains("CLUSTER-IP"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("web ") && l.contains("10.96.0.10") && l.contains("80/TCP")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("api ")), "{out}");
    assert!(!out.contains("hidden"), "{out}");

    let out = kubectl
        .run(&["get", "svc", "web", "-n", "demo", "-o", "wide"], None)
        .await;
    assert!(out.contains("app=web"), "{out}");

    let out = kubectl
        .run(&["get", "pods", "-n", "demo", "-o", "json"], None)
        .await;
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "List");
    let mut pods: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    pods.sort_unstable();
    assert_eq!(pods, ["web-7d9f-q8zr", "web-7d9f-xk2p"]);
    assert_eq!(list["items"][0]["kind"], "Pod");
    assert!(list["items"][0]["status"]["podIP"].as_str().is_some());

    let out = kubectl.run(&["get", "pods", "-n", "demo"], None).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("web-7d9f-xk2p") && l.contains("1/1") && l.contains("Running")),
        "{out}"
    );

    let out = kubectl
        .run(
            &[
                "get",
                "endpointslices",
                "-n",
                "demo",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "name",
            ],
            None,
        )
        .await;
    assert_eq!(out.trim(), "endpointslice.discovery.k8s.io/web-abcde");

    // Writes: create from stdin, then delete.
    let manifest = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "made-by-kubectl", "namespace": "demo"},
        "spec": {"ports": [{"port": 9090}]},
    });
    kubectl
        .run(&["create", "-f", "-"], Some(&manifest.to_string()))
        .await;
    let made = server.get::<Service>("demo", "made-by-kubectl").unwrap();
    let spec = made.spec.unwrap();
    assert!(spec.cluster_ip.unwrap().starts_with("10.96."), "allocated");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    // `get -w` prints further rows of the same table.
    let watcher = server.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        watcher.apply(slice("demo", "web-later", "web", &["10.0.0.7"]));
    });
    let out = kubectl
        .run(
            &[
                "get",
                "endpointslices",
                "-n",
                "demo",
                "-w",
                "--request-timeout=3s",
            ],
            None,
        )
        .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "one header, two rows: {out}");
    assert!(
        lines[2].starts_with("web-later") && lines[2].contains("10.0.0.7"),
        "{out}"
    );
    kubectl
        .run(
            &["delete", "service", "made-by-kubectl", "-n", "demo"],
            None,
        )
        .await;
    assert!(server.get::<Service>("demo", "made-by-kubectl").is_none());

    // kubectl validates strictly by default: the server rejects unknown
    // fields, naming them.
    let bad = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bad", "namespace": "demo"},
        "spec": {"ports": [{"port": 9090}], "bogus": true},
    });
    let (ok, _, stderr) = kubectl
        .output(&["create", "-f", "-"], Some(&bad.to_string()))
        .await;
    assert!(!ok);
    assert!(
        stderr.contains("strict decoding error: unknown field \"spec.bogus\""),
        "{stderr}"
    );
    assert!(server.get::<Service>("demo", "bad").is_none());

    for r in server.requests() {
        println!(
            "{} {} {} {}",
            r.verb,
            r.method,
            r.path,
            r.query.unwrap_or_default()
        );
    }
}
