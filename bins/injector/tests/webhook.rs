//! The mesh-injector binary as the API server calls it: AdmissionReview v1 over HTTPS (a client
//! we did not write: Python's urllib and ssl), namespaces' annotations read from the stand-in
//! API server, the patch applied with an RFC 6902 library, bad input answered without a crash,
//! and the serving certificate reloaded when its files change.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use mesh_kube_fake::FakeApiServer;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-injector");

/// A CA and a serving certificate it signed for `localhost`, written to `dir`.
fn pki(dir: &Path, tag: &str) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("webhook CA {tag}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![
        "localhost".to_owned(),
        "mesh-injector.mesh-system.svc".to_owned(),
    ])
    .unwrap()
    .signed_by(&key, &issuer)
    .unwrap();
    let ca_file = dir.join(format!("ca-{tag}.crt"));
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    // Written beside, then renamed: a reader never sees half a file.
    std::fs::write(dir.join("tls.crt.new"), leaf.pem()).unwrap();
    std::fs::write(dir.join("tls.key.new"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    ca_file
}

struct Injector(Child);

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// POSTs `body` (or GETs, when `None`) to `path` over HTTPS, verifying against `ca`:
/// (status, body), or `None` when no TLS session could be made.
fn call(port: u16, ca: &Path, path: &str, body: Option<&[u8]>) -> Option<(u16, String)> {
    let script = "import ssl, sys, urllib.request, urllib.error\n\
        url, ca, method = sys.argv[1], sys.argv[2], sys.argv[3]\n\
        data = sys.stdin.buffer.read() if method == 'POST' else None\n\
        ctx = ssl.create_default_context(cafile=ca)\n\
        req = urllib.request.Request(url, data=data, method=method, headers={'content-type': 'application/json'})\n\
        try:\n    r = urllib.request.urlopen(req, context=ctx, timeout=20)\n    status, text = r.status, r.read()\n\
        except urllib.error.HTTPError as e:\n    status, text = e.code, e.read()\n\
        except Exception as e:\n    print('no-session', e)\n    sys.exit(3)\n\
        print(status)\nsys.stdout.write(text.decode())\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(format!("https://localhost:{port}{path}"))
        .arg(ca)
        .arg(if body.is_some() { "POST" } else { "GET" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = body.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    if out.status.code() == Some(3) {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = text.split_once('\n').unwrap();
    Some((status.parse().unwrap(), body.to_owned()))
}

fn review(namespace: &str, pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "8d3b1d5e-0001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "dryRun": false
        }
    })
}

fn app_pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-6c4f9-", "annotations": annotations},
        "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}]}
    })
}

/// The answer's patch applied to `pod`.
fn patched(answer: &str, pod: &Value) -> Pod {
    let answer: Value = serde_json::from_str(answer).unwrap();
    let response = &answer["response"];
    assert_eq!(response["allowed"], true, "{answer}");
    assert_eq!(response["uid"], "8d3b1d5e-0001");
    let mut pod = pod.clone();
    if let Some(patch) = response.get("patch") {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes: k8s_openapi::ByteString = serde_json::from_value(patch.clone()).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes.0).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
    serde_json::from_value(pod).unwrap()
}

fn sidecars(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| format!("{}:{}", c.name, c.restart_policy.as_deref().unwrap_or("-")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_meshes_opted_in_pods_answers_bad_input_and_reloads_its_certificate() {
    let dir = std::env::temp_dir().join(format!("mesh-injector-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = pki(&dir, "first");
    let api = FakeApiServer::builder()
        .resource::<Namespace>()
        .start()
        .await;
    for (name, annotations) in [
        ("shop", json!({"mesh.dev/inject": "enabled"})),
        ("plain", json!({})),
    ] {
        api.apply::<Namespace>(
            serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}}))
                .unwrap(),
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("injector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ncert = \"{0}/tls.crt\"\nkey = \"{0}/tls.key\"\n\
             trust_anchors = \"{1}\"\nkubernetes_api = \"{2}\"\nlog = \"info\"\n\
             [inject]\nproxy_image = \"registry.example/mesh-proxy:9.9\"\n",
            dir.display(),
            ca.display(),
            api.url()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("injector.log")).unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stderr(log)
        .spawn()
        .unwrap();
    let injector = Injector(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while call(port, &ca, "/ready", None).map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "the injector never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let post = |body: Vec<u8>| {
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || call(port, &ca, "/inject", Some(&body)).unwrap())
    };

    // The namespace opted in: the native sidecar, after the rules, before the app.
    let pod = app_pod(json!({}));
    let (status, answer) = post(review("shop", pod.clone()).to_string().into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200, "{answer}");
    let meshed = patched(&answer, &pod);
    assert_eq!(sidecars(&meshed), ["mesh-init:-", "mesh-proxy:Always"]);
    let spec = meshed.spec.as_ref().unwrap();
    assert_eq!(
        spec.init_containers.as_ref().unwrap()[1].image.as_deref(),
        Some("registry.example/mesh-proxy:9.9")
    );
    assert_eq!(spec.containers[0].name, "web");

    // Another namespace, no annotation: allowed as it is, no patch.
    let (status, answer) = post(review("plain", pod.clone()).to_string().into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(!answer.contains("\"patch\""), "{answer}");
    assert_eq!(
        patched(&answer, &pod),
        serde_json::from_value::<Pod>(pod.clone()).unwrap()
    );

    // A pod that opts out, a host-network pod, a pod with no containers: allowed, the reason
    // recorded, nothing else changed.
    for (pod, reason) in [
        (app_pod(json!({"mesh.dev/inject": "disabled"})), "opted-out"),
        (
            json!({"metadata": {"name": "agent"}, "spec": {"hostNetwork": true,
                   "containers": [{"name": "agent", "image": "agent:1"}]}}),
            "hostNetwork",
        ),
        (
            json!({"metadata": {"name": "empty"}, "spec": {"containers": []}}),
            "no-containers",
        ),
    ] {
        let (status, answer) = post(review("shop", pod.clone()).to_string().into_bytes())
            .await
            .unwrap();
        assert_eq!(status, 200, "{answer}");
        let skipped = patched(&answer, &pod);
        assert_eq!(
            skipped.metadata.annotations.as_ref().unwrap()["mesh.dev/inject-skipped"],
            reason
        );
        assert!(sidecars(&skipped).is_empty());
    }

    // Bad input: garbage, an unknown version, 10 MiB: never a crash, never a blocked pod.
    let (status, answer) = post(b"{not json".to_vec()).await.unwrap();
    assert_eq!(status, 400);
    assert!(answer.contains("not an AdmissionReview"), "{answer}");
    let mut old = review("shop", app_pod(json!({})));
    old["apiVersion"] = json!("admission.k8s.io/v1beta1");
    // Another version: answered in that version, allowed, unchanged, with the reason.
    let (status, answer) = post(old.to_string().into_bytes()).await.unwrap();
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["uid"], "8d3b1d5e-0001");
    assert!(answer["response"].get("patch").is_none());
    assert!(
        answer["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("v1beta1"),
        "{answer}"
    );
    let (status, answer) = post(vec![b' '; 10 * 1024 * 1024]).await.unwrap();
    assert_eq!(status, 413, "{answer}");
    let (status, _) = post(review("shop", pod.clone()).to_string().into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200, "still serving");
    let (_, metrics) = call(port, &ca, "/metrics", None).unwrap();
    for series in [
        "injector_admission_reviews_total{outcome=\"injected\",reason=\"\"} 2",
        "injector_admission_reviews_total{outcome=\"skipped\",reason=\"hostNetwork\"} 1",
        "injector_invalid_requests_total{reason=\"too-large\"} 1",
        "injector_invalid_requests_total{reason=\"api-version\"} 1",
        "injector_invalid_requests_total{reason=\"malformed\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }

    // A new certificate from another CA: once the files change, new handshakes get it.
    let second = pki(&dir, "second");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ca = second.clone();
        let served = tokio::task::spawn_blocking(move || call(port, &ca, "/ready", None))
            .await
            .unwrap();
        if served.map(|r| r.0) == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(injector);
    let _ = std::fs::remove_dir_all(&dir);
}
