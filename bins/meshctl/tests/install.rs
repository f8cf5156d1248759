//! `meshctl install` / `uninstall`: every manifest parses into its k8s-openapi type, the
//! controller's configuration loads in its loader, the webhook's caBundle
//! verifies the injector's certificate, the issuer chains to the anchors, each install makes
//! its own PKI, and `uninstall` names every object.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::BTreeSet;
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_meshctl");

fn meshctl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_str_multiple::<Value, Vec<Value>>(yaml)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

fn der(pem: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    pem.contents
}

/// Whether `cert_pem` is signed by `ca_pem`'s key.
fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (cert_der, ca_der) = (der(cert_pem), der(ca_pem));
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

fn secret_data(secret: &Value, key: &str) -> String {
    let secret: Secret = serde_json::from_value(secret.clone()).unwrap();
    secret.string_data.unwrap()[key].clone()
}

#[test]
fn install_prints_every_object_of_the_control_plane() {
    let (code, yaml, stderr) = meshctl(&[
        "install",
        "--registry",
        "registry.example/mesh",
        "--version",
        "1.2.3",
        "--ingress",
        "--gateway-api",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let all = objects(&yaml);
    for object in &all {
        let kind = object["kind"].as_str().unwrap();
        let value = object.clone();
        // Each one is what its kind says.
        match kind {
            "Namespace" => drop(serde_json::from_value::<Namespace>(value).unwrap()),
            "ServiceAccount" => drop(serde_json::from_value::<ServiceAccount>(value).unwrap()),
            "ClusterRole" => drop(serde_json::from_value::<ClusterRole>(value).unwrap()),
            "ClusterRoleBinding" => {
                drop(serde_json::from_value::<ClusterRoleBinding>(value).unwrap())
            }
            "ConfigMap" => drop(serde_json::from_value::<ConfigMap>(value).unwrap()),
            "Secret" => drop(serde_json::from_value::<Secret>(value).unwrap()),
            "Service" => drop(serde_json::from_value::<Service>(value).unwrap()),
            "Deployment" => drop(serde_json::from_value::<Deployment>(value).unwrap()),
            "MutatingWebhookConfiguration" => {
                drop(serde_json::from_value::<MutatingWebhookConfiguration>(value).unwrap())
            }
            "Role" => {
                drop(serde_json::from_value::<k8s_openapi::api::rbac::v1::Role>(value).unwrap())
            }
            "RoleBinding" => drop(
                serde_json::from_value::<k8s_openapi::api::rbac::v1::RoleBinding>(value).unwrap(),
            ),
            "Gateway" => {
                drop(serde_json::from_value::<mesh_stack::gateway::Gateway>(value).unwrap())
            }
            "GatewayClass" => assert_eq!(object["spec"]["controllerName"], "mesh.dev/ingress"),
            other => panic!("unexpected {other}"),
        }
    }
    // The ingress may read both kinds of Gateway API routes, and write their status.
    let rules = &find(&all, "ClusterRole", "mesh-ingress")["rules"];
    assert_eq!(
        rules[0]["resources"],
        serde_json::json!(["gateways", "httproutes", "grpcroutes"])
    );
    assert_eq!(
        rules[1]["resources"],
        serde_json::json!(["gateways/status", "httproutes/status", "grpcroutes/status"])
    );
    assert_eq!(rules[1]["verbs"], serde_json::json!(["patch", "update"]));
    // Images from the flags.
    let controller: Deployment =
        serde_json::from_value(find(&all, "Deployment", "mesh-controller").clone()).unwrap();
    let image = controller.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(
        image.as_deref(),
        Some("registry.example/mesh/mesh-controlplane:1.2.3")
    );

    // The controller's configuration loads in its loader (the injector's in its end-to-end
    // test, with the injector binary).
    let config: ConfigMap =
        serde_json::from_value(find(&all, "ConfigMap", "mesh-config").clone()).unwrap();
    let data = config.data.unwrap();
    mesh_controller::Config::from_toml_str(&data["controller.toml"]).unwrap();
    let injector: toml::Table = toml::from_str(&data["injector.toml"]).unwrap();
    let inject: mesh_inject::InjectConfig = injector["inject"].clone().try_into().unwrap();
    assert_eq!(inject.proxy_image, "registry.example/mesh/mesh-proxy:1.2.3");
    assert_eq!(
        inject.controller,
        "mesh-controller.mesh-system.svc.cluster.local:8080"
    );

    // The ingress: its image, its configuration loads in its own loader with the identity the
    // controller will certify (its ServiceAccount's), a Service for the outside world.
    let ingress: Deployment =
        serde_json::from_value(find(&all, "Deployment", "mesh-ingress").clone()).unwrap();
    let pod = ingress.spec.unwrap().template;
    let container = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example/mesh/mesh-ingress:1.2.3")
    );
    assert_eq!(
        pod.spec.as_ref().unwrap().service_account_name.as_deref(),
        Some("mesh-ingress")
    );
    assert_eq!(
        pod.metadata.unwrap().labels.unwrap()["mesh.io/proxy"],
        "enabled",
        "scraped like the sidecars"
    );
    let config: ConfigMap =
        serde_json::from_value(find(&all, "ConfigMap", "mesh-ingress").clone()).unwrap();
    let ingress_config = mesh_ingress::Config::from_toml_str_with_env(
        &config.data.unwrap()["ingress.toml"],
        Vec::new(),
    )
    .unwrap();
    assert_eq!(
        ingress_config.identity.unwrap().name.to_string(),
        "spiffe://cluster.local/ns/mesh-system/sa/mesh-ingress"
    );
    let service: Service =
        serde_json::from_value(find(&all, "Service", "mesh-ingress").clone()).unwrap();
    assert_eq!(service.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));

    // The webhook: fail open, pods on create, and a caBundle that verifies the injector.
    let webhook: MutatingWebhookConfiguration =
        serde_json::from_value(find(&all, "MutatingWebhookConfiguration", "mesh-injector").clone())
            .unwrap();
    let hook = &webhook.webhooks.unwrap()[0];
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.reinvocation_policy.as_deref(), Some("Never"));
    let ca_bundle = String::from_utf8(hook.client_config.ca_bundle.clone().unwrap().0).unwrap();
    let serving = secret_data(find(&all, "Secret", "mesh-injector-tls"), "tls.crt");
    assert!(
        signed_by(&serving, &ca_bundle),
        "the caBundle does not verify the injector"
    );

    // The issuer chains to the anchors.
    let anchors: ConfigMap =
        serde_json::from_value(find(&all, "ConfigMap", "mesh-trust-anchors").clone()).unwrap();
    let anchor = anchors.data.unwrap()["ca.crt"].clone();
    let issuer = secret_data(find(&all, "Secret", "mesh-identity-issuer"), "tls.crt");
    assert!(signed_by(&issuer, &anchor));

    // Another install: its own PKI.
    let (_, again, _) = meshctl(&["install"]);
    let again = objects(&again);
    assert_ne!(
        secret_data(find(&again, "Secret", "mesh-identity-issuer"), "tls.key"),
        secret_data(find(&all, "Secret", "mesh-identity-issuer"), "tls.key")
    );

    // Uninstall names every object installed.
    let (code, removal, _) = meshctl(&["uninstall"]);
    assert_eq!(code, Some(0));
    let named = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    // But the Gateway API's own kinds, which `kubectl delete` cannot name without their CRDs
    // (the namespace mesh-gateway goes, and its Gateway with it).
    let installed: BTreeSet<String> = named(&all)
        .into_iter()
        .filter(|n| !n.starts_with("Gateway"))
        .collect();
    assert_eq!(named(&objects(&removal)), installed);
}

#[test]
fn an_external_issuer_is_left_to_its_owner() {
    let (code, _, stderr) = meshctl(&["install", "--identity-external-issuer"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--identity-trust-anchors-file"), "{stderr}");

    let anchors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/ca.crt");
    let (code, yaml, stderr) = meshctl(&[
        "install",
        "--identity-external-issuer",
        "--identity-trust-anchors-file",
        anchors.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let all = objects(&yaml);
    assert!(
        !all.iter()
            .any(|o| o["metadata"]["name"] == "mesh-identity-issuer")
    );
    let config: ConfigMap =
        serde_json::from_value(find(&all, "ConfigMap", "mesh-trust-anchors").clone()).unwrap();
    assert_eq!(
        config.data.unwrap()["ca.crt"],
        std::fs::read_to_string(&anchors).unwrap()
    );
}

#[test]
fn the_anchor_key_is_kept_only_when_asked_and_signs_the_next_issuer() {
    let (code, _, stderr) = meshctl(&["install"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("discarded") && stderr.contains("--identity-anchor-key-out"),
        "{stderr}"
    );

    let dir = std::env::temp_dir().join(format!("meshctl-anchor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_path = dir.join("ca.key");
    let _ = std::fs::remove_file(&key_path);
    let key_arg = key_path.to_str().unwrap();
    let (code, yaml, stderr) = meshctl(&["install", "--identity-anchor-key-out", key_arg]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("mesh-controller issuer"), "{stderr}");
    let key_line = read(&key_path).lines().nth(1).unwrap().to_owned();
    assert!(
        !yaml.contains(&key_line),
        "the anchor key is in no manifest"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the anchor key is owner-only: {mode:o}");

    // The kept key signs a next issuer that chains to the anchor the install published.
    let all = objects(&yaml);
    let anchors: ConfigMap =
        serde_json::from_value(find(&all, "ConfigMap", "mesh-trust-anchors").clone()).unwrap();
    let anchor_pem = anchors.data.unwrap()["ca.crt"].clone();
    let next = mesh_tls::ca::issuer_under(
        &anchor_pem,
        &read(&key_path),
        "cluster.local",
        std::time::Duration::from_secs(86_400),
        std::time::SystemTime::now(),
    )
    .unwrap();
    assert!(signed_by(&next.cert_pem, &anchor_pem));

    // An existing file is never overwritten.
    let before = read(&key_path);
    let (code, _, stderr) = meshctl(&["install", "--identity-anchor-key-out", key_arg]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("writing the anchor key"), "{stderr}");
    assert_eq!(read(&key_path), before);

    // An external issuer has no anchor key to keep.
    let (code, _, stderr) = meshctl(&[
        "install",
        "--identity-external-issuer",
        "--identity-trust-anchors-file",
        "x",
        "--identity-anchor-key-out",
        key_arg,
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap()
}
