//! The patch, applied with a real RFC 6902 implementation (the json-patch crate) to pods as
//! users write them, read back as k8s-openapi types.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use mesh_inject::{Decision, InjectConfig, Skip, decide};
use serde_json::json;

fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

/// Applies what `decide` says to `pod`; the pod as the API server would store it.
fn apply(
    pod: &Pod,
    namespace: Option<&BTreeMap<String, String>>,
    config: &InjectConfig,
) -> (Decision, Pod) {
    let decision = decide(&pod.metadata, pod.spec.as_ref(), namespace, config);
    let mut value = serde_json::to_value(pod).unwrap();
    match &decision {
        Decision::Inject(patch) | Decision::Skipped(_, patch) => {
            json_patch::patch(&mut value, patch).unwrap()
        }
        Decision::Unchanged => {}
    }
    (decision, serde_json::from_value(value).unwrap())
}

fn enabled() -> BTreeMap<String, String> {
    BTreeMap::from([("mesh.dev/inject".to_owned(), "enabled".to_owned())])
}

fn names(containers: &[Container]) -> Vec<&str> {
    containers.iter().map(|c| c.name.as_str()).collect()
}

fn env<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// A pod with init containers and a sidecar of its own, and every tuning annotation.
fn busy_pod() -> Pod {
    pod(json!({
        "metadata": {"name": "web-7d9f-x2", "labels": {"app": "web"}, "annotations": {
            "mesh.dev/inject": "enabled",
            "config.mesh.dev/skip-inbound-ports": "22, 9000-9010",
            "config.mesh.dev/skip-outbound-ports": "3306",
            "config.mesh.dev/skip-outbound-cidrs": "169.254.169.254/32",
            "config.mesh.dev/opaque-ports": "5432,6379",
            "config.mesh.dev/proxy-log-level": "debug",
            "config.mesh.dev/proxy-cpu-limit": "1",
            "config.mesh.dev/proxy-memory-limit": "128Mi",
        }},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "web:1"}],
            "containers": [
                {"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]},
                {"name": "log-shipper", "image": "shipper:2"}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    }))
}

#[test]
fn a_native_sidecar_starts_first_and_the_rules_follow_the_annotations() {
    let (decision, meshed) = apply(&busy_pod(), None, &InjectConfig::default());
    assert!(matches!(decision, Decision::Inject(_)), "{decision:?}");
    let spec = meshed.spec.unwrap();
    let init = spec.init_containers.unwrap();
    // The rules, then the proxy, then the pod's own init containers; the app unchanged.
    assert_eq!(names(&init), ["mesh-init", "mesh-proxy", "migrate"]);
    assert_eq!(names(&spec.containers), ["web", "log-shipper"]);
    let (rules, proxy) = (&init[0], &init[1]);
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    let startup = proxy
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.path.as_deref(), Some("/ready"));
    assert_eq!(
        rules.args.as_deref().unwrap(),
        [
            "init",
            "--proxy-uid",
            "2102",
            "--skip-inbound-ports",
            "22,9000-9010",
            "--skip-outbound-ports",
            "3306",
            "--skip-outbound-cidrs",
            "169.254.169.254/32"
        ]
    );
    let caps = rules
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
    // The proxy: its own user, the app's port, the annotations' settings.
    let security = proxy.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_user, Some(2102));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(env(proxy, "MESH__INBOUND__APP"), Some("127.0.0.1:8080"));
    assert_eq!(
        env(proxy, "MESH__OUTBOUND__OPAQUE_PORTS"),
        Some("5432,6379")
    );
    assert_eq!(env(proxy, "MESH__LOG"), Some("debug"));
    assert_eq!(env(proxy, "MESH__WORKLOAD__NAME"), Some("web"));
    assert_eq!(
        env(proxy, "MESH__IDENTITY__NAME"),
        Some("spiffe://cluster.local/ns/$(MESH_POD_NAMESPACE)/sa/$(MESH_POD_SERVICE_ACCOUNT)")
    );
    let resources = proxy.resources.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    assert_eq!(limits["cpu"].0, "1");
    assert_eq!(limits["memory"].0, "128Mi");
    // The token, projected for the identity service; the pod's own volume kept.
    let volumes = spec.volumes.unwrap();
    assert_eq!(
        volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["data", "mesh-identity-token"]
    );
    let token = &volumes[1]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        token
            .service_account_token
            .as_ref()
            .unwrap()
            .audience
            .as_deref(),
        Some("identity.mesh")
    );
    assert_eq!(
        meshed
            .metadata
            .labels
            .unwrap()
            .get("mesh.dev/meshed")
            .map(String::as_str),
        Some("true")
    );
}

#[test]
fn the_namespace_opts_in_and_a_pod_may_opt_out() {
    let bare = pod(json!({
        "metadata": {"name": "api-0"},
        "spec": {"containers": [{"name": "api", "image": "api:1"}]}
    }));
    // No annotation anywhere: stored as it came.
    let (decision, same) = apply(&bare, None, &InjectConfig::default());
    assert_eq!(decision, Decision::Unchanged);
    assert_eq!(same, bare);
    // The namespace asks: injected, maps created where the pod had none.
    let (decision, meshed) = apply(&bare, Some(&enabled()), &InjectConfig::default());
    assert!(matches!(decision, Decision::Inject(_)));
    let spec = meshed.spec.unwrap();
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["mesh-init", "mesh-proxy"]
    );
    assert_eq!(
        env(&spec.init_containers.unwrap()[1], "MESH__INBOUND__APP"),
        Some("127.0.0.1:80")
    );
    // The pod says no: skipped, and the reason recorded.
    let opted_out = pod(json!({
        "metadata": {"name": "api-1", "annotations": {"mesh.dev/inject": "disabled"}},
        "spec": {"containers": [{"name": "api", "image": "api:1"}]}
    }));
    let (decision, skipped) = apply(&opted_out, Some(&enabled()), &InjectConfig::default());
    assert!(matches!(decision, Decision::Skipped(Skip::OptedOut, _)));
    assert_eq!(
        skipped.metadata.annotations.unwrap()["mesh.dev/inject-skipped"],
        "opted-out"
    );
    assert!(skipped.spec.unwrap().init_containers.is_none());
}

#[test]
fn host_network_and_injected_pods_are_skipped_with_the_reason() {
    let host = pod(json!({
        "metadata": {"name": "node-agent", "annotations": {"mesh.dev/inject": "enabled"}},
        "spec": {"hostNetwork": true, "containers": [{"name": "agent", "image": "agent:1"}]}
    }));
    let (decision, skipped) = apply(&host, None, &InjectConfig::default());
    assert!(matches!(decision, Decision::Skipped(Skip::HostNetwork, _)));
    assert_eq!(
        skipped.metadata.annotations.unwrap()["mesh.dev/inject-skipped"],
        "hostNetwork"
    );
    assert_eq!(skipped.spec, host.spec);

    let (_, meshed) = apply(&busy_pod(), None, &InjectConfig::default());
    let (decision, again) = apply(&meshed, None, &InjectConfig::default());
    assert!(matches!(
        decision,
        Decision::Skipped(Skip::AlreadyInjected, _)
    ));
    assert_eq!(again.spec, meshed.spec, "never two proxies");
}

#[test]
fn without_native_sidecars_the_proxy_is_the_first_container() {
    let config = InjectConfig {
        native_sidecar: false,
        ..InjectConfig::default()
    };
    let (_, meshed) = apply(&busy_pod(), None, &config);
    let spec = meshed.spec.unwrap();
    assert_eq!(
        names(spec.init_containers.as_ref().unwrap()),
        ["mesh-init", "migrate"]
    );
    assert_eq!(
        names(&spec.containers),
        ["mesh-proxy", "web", "log-shipper"]
    );
    let proxy = &spec.containers[0];
    assert!(proxy.restart_policy.is_none());
    let hook = proxy
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap();
    assert_eq!(
        hook.exec.as_ref().unwrap().command.as_deref().unwrap()[1],
        "wait-ready"
    );
}
