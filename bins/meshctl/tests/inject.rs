//! `meshctl inject` on manifests as users write them: the output parses back into
//! k8s-openapi types, each workload carries exactly one proxy (a native sidecar, after the
//! rules' init container and before the pod's own), injecting twice changes nothing, and
//! every other document comes out byte for byte.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meshctl");

fn manifests() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests")
}

/// `meshctl inject -f -` with `input` on stdin: (exit code, stdout, stderr).
fn inject(input: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(BIN)
        .args(["inject", "-f", "-", "--trust-anchors"])
        .arg(manifests().join("ca.crt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The documents of a YAML stream, split where a line is `---` (as kubectl does).
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" || line.starts_with("--- #") {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
        }
    }
    docs
}

/// Checks one pod template: exactly one proxy, a native sidecar right after the rules.
fn check_template(template: &PodTemplateSpec, what: &str) {
    let spec = template.spec.as_ref().unwrap();
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let proxies = init
        .iter()
        .chain(&spec.containers)
        .filter(|c| c.name == "mesh-proxy")
        .count();
    assert_eq!(proxies, 1, "{what}");
    assert_eq!(init[0].name, "mesh-init", "{what}");
    assert_eq!(init[1].name, "mesh-proxy", "{what}");
    assert_eq!(init[1].restart_policy.as_deref(), Some("Always"), "{what}");
    assert!(
        spec.containers.iter().all(|c| c.name != "mesh-proxy"),
        "{what}"
    );
}

fn template_of(doc: &Value) -> Option<(String, PodTemplateSpec)> {
    let kind = doc.get("kind")?.as_str()?.to_owned();
    let value = doc.clone();
    let template = match kind.as_str() {
        "Deployment" => {
            serde_json::from_value::<Deployment>(value)
                .unwrap()
                .spec?
                .template
        }
        "StatefulSet" => {
            serde_json::from_value::<StatefulSet>(value)
                .unwrap()
                .spec?
                .template
        }
        "Job" => serde_json::from_value::<Job>(value).unwrap().spec?.template,
        "CronJob" => {
            serde_json::from_value::<CronJob>(value)
                .unwrap()
                .spec?
                .job_template
                .spec?
                .template
        }
        "Pod" => {
            let pod = serde_json::from_value::<Pod>(value).unwrap();
            PodTemplateSpec {
                metadata: Some(pod.metadata),
                spec: pod.spec,
            }
        }
        _ => return None,
    };
    Some((kind, template))
}

#[test]
fn workloads_get_one_proxy_and_everything_else_is_untouched() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/demo/demo.yaml");
    for file in [
        demo.to_str().unwrap(),
        "deployment-with-sidecars.yaml",
        "job.yaml",
        "cronjob.yaml",
        "statefulset.yaml",
        "multi.yaml",
    ] {
        let input = std::fs::read_to_string(manifests().join(file)).unwrap();
        let (code, output, stderr) = inject(&input);
        assert_eq!(code, Some(0), "{file}: {stderr}");
        let (before, after) = (documents(&input), documents(&output));
        assert_eq!(before.len(), after.len(), "{file}: documents kept");
        let mut injected = 0;
        for (original, out) in before.iter().zip(&after) {
            let value: Value = serde_saphyr::from_str(out).unwrap();
            let kind = value["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "List" => {
                    // The debug pod is injected; the host-network exporter is not.
                    let items = value["items"].as_array().unwrap();
                    let (_, debug) = template_of(&items[0]).unwrap();
                    check_template(&debug, "List/debug");
                    let exporter: Pod = serde_json::from_value(items[1].clone()).unwrap();
                    assert!(exporter.spec.unwrap().init_containers.is_none());
                    injected += 1;
                }
                "Deployment" | "StatefulSet" | "Job" | "CronJob" | "Pod" => {
                    let (_, template) = template_of(&value).unwrap();
                    check_template(&template, &format!("{file} {kind}"));
                    injected += 1;
                }
                _ => assert_eq!(original, out, "{file}: a {kind} changed"),
            }
        }
        assert!(injected >= 1, "{file}: nothing injected");
        assert!(stderr.contains("injected"), "{stderr}");

        // Twice: nothing changes.
        let (code, again, stderr) = inject(&output);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(again, output, "{file}: a second inject changed the output");
        assert!(stderr.contains("already injected"), "{stderr}");
    }
}

#[test]
fn the_pods_own_init_containers_run_after_the_proxy_and_annotations_become_flags() {
    let input = std::fs::read_to_string(manifests().join("deployment-with-sidecars.yaml")).unwrap();
    let (_, output, _) = inject(&input);
    let value: Value = serde_saphyr::from_str(&documents(&output)[0]).unwrap();
    let deployment: Deployment = serde_json::from_value(value).unwrap();
    let spec = deployment.spec.unwrap().template.spec.unwrap();
    let init = spec.init_containers.unwrap();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["mesh-init", "mesh-proxy", "wait-for-db"]);
    let args = init[0].args.as_deref().unwrap();
    assert!(
        args.windows(2)
            .any(|w| w == ["--skip-outbound-ports", "5432"]),
        "{args:?}"
    );
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web", "log-shipper"]);
    let proxy = &init[1];
    let env = |name: &str| {
        proxy
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
            .unwrap_or_default()
    };
    assert_eq!(env("MESH__WORKLOAD__NAME"), "web");
    assert!(env("MESH__IDENTITY__TRUST_ANCHORS").starts_with("-----BEGIN CERTIFICATE-----"));

    // A Job's template has neither name nor labels: its pods are named after the Job.
    let input = std::fs::read_to_string(manifests().join("job.yaml")).unwrap();
    let (_, output, _) = inject(&input);
    assert!(
        output.contains("name: MESH__WORKLOAD__NAME\n          value: report\n"),
        "{output}"
    );
}

#[test]
fn bad_input_is_refused_by_name() {
    let (code, _, stderr) = inject("apiVersion: v1\nkind: Pod\n---\nkind: [unclosed\n");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("document 2"), "{stderr}");
    let (code, _, stderr) =
        inject("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {}\n");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("deployment/d"), "{stderr}");
    let missing = Command::new(BIN)
        .args(["inject", "-f", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent.yaml"));
    let no_anchors = Command::new(BIN)
        .args(["inject", "-f"])
        .arg(manifests().join("job.yaml"))
        .output()
        .unwrap();
    assert_eq!(no_anchors.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_anchors.stderr).contains("--trust-anchors"));
}
