//! The sidecar patch: what meshes a pod, as one RFC 6902 JSON Patch that the injector webhook
//! returns to the API server and `meshctl inject` applies to workload files offline. Both call
//! [`decide`]; nothing else builds the sidecar.
//!
//! A pod is meshed when its annotation [`INJECT_ANNOTATION`] (or, failing that, its
//! namespace's) is `enabled`. The patch adds:
//!
//! - `mesh-init`, first among the init containers: `mesh-proxy init`, with `NET_ADMIN` and
//!   `NET_RAW` only, and the skip lists of the `config.mesh.dev/skip-*` annotations;
//! - the proxy, `mesh-proxy`, right after it as a **native sidecar** (an init container with
//!   `restartPolicy: Always` and a startup probe on `/ready`): the app's containers, and the
//!   pod's own init containers, start once the proxy is ready; a Job completes when its app
//!   exits; the proxy stops after the app. Where native sidecars are off
//!   ([`InjectConfig::native_sidecar`], clusters before 1.29), the proxy is the first container
//!   instead, with a `postStart` hook that waits for `/ready`;
//! - a projected ServiceAccount token for the identity service's audience, and the pod's name,
//!   namespace and ServiceAccount through the downward API, which make the proxy's identity
//!   `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`;
//! - the label [`MESHED_LABEL`] (discovery reads it: a meshed endpoint is dialled over mTLS)
//!   and resources and log level from `config.mesh.dev/*` annotations.
//!
//! A pod is left unchanged when nothing opted it in; it is skipped, with the reason in the
//! annotation [`SKIPPED_ANNOTATION`], when it uses the host's network, opts out, or is already
//! injected.
//!
//! ```
//! use k8s_openapi::api::core::v1::Pod;
//! use mesh_inject::{Decision, InjectConfig, decide};
//!
//! let pod: Pod = serde_json::from_value(serde_json::json!({
//!     "metadata": {"name": "web-0", "annotations": {"mesh.dev/inject": "enabled"}},
//!     "spec": {"containers": [{"name": "web", "image": "web:1", "ports": [{"containerPort": 8080}]}]}
//! })).unwrap();
//! let Decision::Inject(patch) = decide(&pod.metadata, pod.spec.as_ref(), None, &InjectConfig::default()) else {
//!     panic!("an annotated pod is injected");
//! };
//! let mut meshed = serde_json::to_value(&pod).unwrap();
//! json_patch::patch(&mut meshed, &patch).unwrap();
//! let meshed: Pod = serde_json::from_value(meshed).unwrap();
//! let init = meshed.spec.unwrap().init_containers.unwrap();
//! assert_eq!(init[1].restart_policy.as_deref(), Some("Always")); // the native sidecar
//! ```

#[cfg(feature = "admission")]
pub mod admission;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `enabled` or `disabled`, on a pod (template) or its namespace.
pub const INJECT_ANNOTATION: &str = "mesh.dev/inject";
/// Why a pod that asked for the mesh was not injected.
pub const SKIPPED_ANNOTATION: &str = "mesh.dev/inject-skipped";
/// The label of meshed pods (discovery dials their endpoints over mTLS).
pub const MESHED_LABEL: &str = "mesh.dev/meshed";
/// The proxy container's name.
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// The init container's name.
pub const INIT_CONTAINER: &str = "mesh-init";
/// The projected token's volume.
pub const TOKEN_VOLUME: &str = "mesh-identity-token";
/// Where the token is mounted in the proxy.
pub const TOKEN_DIR: &str = "/var/run/secrets/mesh.dev/identity";

/// The annotations that tune one pod's proxy, all under `config.mesh.dev/`.
pub mod annotations {
    /// Ports whose inbound connections the rules leave alone.
    pub const SKIP_INBOUND_PORTS: &str = "config.mesh.dev/skip-inbound-ports";
    /// Ports whose outbound connections the rules leave alone.
    pub const SKIP_OUTBOUND_PORTS: &str = "config.mesh.dev/skip-outbound-ports";
    /// Networks whose outbound connections the rules leave alone.
    pub const SKIP_OUTBOUND_CIDRS: &str = "config.mesh.dev/skip-outbound-cidrs";
    /// Ports forwarded as TCP, never sniffed (both directions).
    pub const OPAQUE_PORTS: &str = "config.mesh.dev/opaque-ports";
    /// The proxy's log filter (`info`, `debug`, `mesh_stack=debug,info`).
    pub const LOG_LEVEL: &str = "config.mesh.dev/proxy-log-level";
    /// The proxy's CPU request.
    pub const CPU_REQUEST: &str = "config.mesh.dev/proxy-cpu-request";
    /// The proxy's CPU limit.
    pub const CPU_LIMIT: &str = "config.mesh.dev/proxy-cpu-limit";
    /// The proxy's memory request.
    pub const MEMORY_REQUEST: &str = "config.mesh.dev/proxy-memory-request";
    /// The proxy's memory limit.
    pub const MEMORY_LIMIT: &str = "config.mesh.dev/proxy-memory-limit";
}

/// What the patch puts in every pod: the install's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InjectConfig {
    /// The image of `mesh-proxy` (which also runs `mesh-proxy init`).
    pub proxy_image: String,
    /// The proxy's user: the capture rules let its own connections out.
    pub proxy_uid: i64,
    /// Run the proxy as a native sidecar (Kubernetes 1.29 and later); otherwise as the first
    /// container with a `postStart` hook.
    pub native_sidecar: bool,
    /// The controller's address, `host:port`.
    pub controller: String,
    /// The identity the controller proves.
    pub controller_identity: String,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The trust anchors, PEM (given to the proxy in its environment).
    pub trust_anchors_pem: String,
    /// The audience of the projected token (the controller's `tokens.audience`).
    pub token_audience: String,
    /// The proxy's log filter, unless annotated.
    pub log_level: String,
    /// The proxy's resources, unless annotated.
    pub cpu_request: String,
    /// The proxy's memory request.
    pub memory_request: String,
    /// The proxy's memory limit (none for CPU by default: throttling a proxy adds latency).
    pub memory_limit: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            proxy_image: "ghcr.io/mesh-dev/mesh-proxy:latest".to_owned(),
            proxy_uid: 2102,
            native_sidecar: true,
            controller: "mesh-controller.mesh-system.svc.cluster.local:8080".to_owned(),
            controller_identity: "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller"
                .to_owned(),
            trust_domain: "cluster.local".to_owned(),
            trust_anchors_pem: String::new(),
            token_audience: "identity.mesh".to_owned(),
            log_level: "info".to_owned(),
            cpu_request: "10m".to_owned(),
            memory_request: "20Mi".to_owned(),
            memory_limit: "250Mi".to_owned(),
        }
    }
}

/// Why a pod that was asked about is not injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// It uses the node's network: capture rules would take the node's traffic.
    HostNetwork,
    /// It already has the proxy.
    AlreadyInjected,
    /// Its own annotation says `disabled`, whatever its namespace says.
    OptedOut,
    /// It has no containers (the API server refuses such a pod anyway): nothing to mesh.
    NoContainers,
}

impl Skip {
    /// The reason, as recorded on the pod.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::HostNetwork => "hostNetwork",
            Skip::AlreadyInjected => "already-injected",
            Skip::OptedOut => "opted-out",
            Skip::NoContainers => "no-containers",
        }
    }
}

/// What to do with a pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing opted it in: it stays as it is.
    Unchanged,
    /// Skipped: the patch records why (an annotation) and changes nothing else.
    Skipped(Skip, json_patch::Patch),
    /// Meshed by this patch.
    Inject(json_patch::Patch),
}

/// What to do with the pod (or pod template) of `meta` and `spec`, whose namespace carries
/// `namespace_annotations` (unknown offline: `None`). Paths of the patch are relative to the
/// object that holds `metadata` and `spec`.
pub fn decide(
    meta: &ObjectMeta,
    spec: Option<&PodSpec>,
    namespace_annotations: Option<&BTreeMap<String, String>>,
    config: &InjectConfig,
) -> Decision {
    let annotations = meta.annotations.as_ref();
    let own = annotations.and_then(|a| a.get(INJECT_ANNOTATION));
    let namespace = namespace_annotations.and_then(|a| a.get(INJECT_ANNOTATION));
    let wanted = match (own.map(String::as_str), namespace.map(String::as_str)) {
        (Some("enabled"), _) => true,
        (Some("disabled"), Some("enabled")) => {
            return skipped(meta, Skip::OptedOut);
        }
        (Some("disabled"), _) => false,
        (_, Some("enabled")) => true,
        _ => false,
    };
    if !wanted {
        return Decision::Unchanged;
    }
    let Some(spec) = spec.filter(|s| !s.containers.is_empty()) else {
        return skipped(meta, Skip::NoContainers);
    };
    if spec.host_network == Some(true) {
        return skipped(meta, Skip::HostNetwork);
    }
    let has_proxy = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == PROXY_CONTAINER || c.name == INIT_CONTAINER);
    if has_proxy {
        return skipped(meta, Skip::AlreadyInjected);
    }
    Decision::Inject(inject(meta, spec, config))
}

fn skipped(meta: &ObjectMeta, why: Skip) -> Decision {
    let mut ops = Vec::new();
    put_map_entry(
        &mut ops,
        "/metadata/annotations",
        meta.annotations.as_ref(),
        SKIPPED_ANNOTATION,
        why.as_str(),
    );
    Decision::Skipped(why, patch_of(ops))
}

/// Adds `key: value` to the map at `path`, creating the map when the object has none.
fn put_map_entry(
    ops: &mut Vec<Value>,
    path: &str,
    map: Option<&BTreeMap<String, String>>,
    key: &str,
    value: &str,
) {
    match map {
        None => ops.push(json!({"op": "add", "path": path, "value": {key: value}})),
        Some(_) => ops.push(json!({
            "op": "add",
            "path": format!("{path}/{}", escape(key)),
            "value": value,
        })),
    }
}

/// A JSON Pointer token (RFC 6901): `~` and `/` escaped.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn patch_of(ops: Vec<Value>) -> json_patch::Patch {
    // Every op above is built from the RFC's own shapes: it always deserializes.
    serde_json::from_value(Value::Array(ops)).unwrap_or_else(|_| json_patch::Patch(Vec::new()))
}

fn inject(meta: &ObjectMeta, spec: &PodSpec, config: &InjectConfig) -> json_patch::Patch {
    let annotations = meta.annotations.as_ref();
    let annotated = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    };
    let mut ops = Vec::new();
    put_map_entry(
        &mut ops,
        "/metadata/labels",
        meta.labels.as_ref(),
        MESHED_LABEL,
        "true",
    );
    put_map_entry(
        &mut ops,
        "/metadata/annotations",
        annotations,
        INJECT_ANNOTATION,
        "enabled",
    );

    let init = init_container(config, &annotated);
    let proxy = proxy_container(meta, spec, config, &annotated);
    match (config.native_sidecar, &spec.init_containers) {
        (true, None) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init, proxy]}))
        }
        (true, Some(_)) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
            ops.push(json!({"op": "add", "path": "/spec/initContainers/1", "value": proxy}));
        }
        (false, None) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [init]}));
            ops.push(json!({"op": "add", "path": "/spec/containers/0", "value": proxy}));
        }
        (false, Some(_)) => {
            ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init}));
            ops.push(json!({"op": "add", "path": "/spec/containers/0", "value": proxy}));
        }
    }
    let volume = json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": config.token_audience,
            "expirationSeconds": 86_400,
            "path": "token",
        }}]},
    });
    match &spec.volumes {
        None => ops.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]})),
        Some(_) => ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume})),
    }
    patch_of(ops)
}

/// `mesh-proxy init` with the pod's skip lists: root with NET_ADMIN and NET_RAW, nothing else.
fn init_container<'a>(
    config: &InjectConfig,
    annotated: &impl Fn(&str) -> Option<&'a str>,
) -> Value {
    let mut args = vec![
        "init".to_owned(),
        "--proxy-uid".to_owned(),
        config.proxy_uid.to_string(),
    ];
    for (annotation, flag) in [
        (annotations::SKIP_INBOUND_PORTS, "--skip-inbound-ports"),
        (annotations::SKIP_OUTBOUND_PORTS, "--skip-outbound-ports"),
        (annotations::SKIP_OUTBOUND_CIDRS, "--skip-outbound-cidrs"),
    ] {
        if let Some(list) = annotated(annotation) {
            args.push(flag.to_owned());
            args.push(list.replace(' ', ""));
        }
    }
    json!({
        "name": INIT_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "10Mi"}, "limits": {"memory": "50Mi"}},
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

/// The proxy: configured entirely by its environment.
fn proxy_container<'a>(
    meta: &ObjectMeta,
    spec: &PodSpec,
    config: &InjectConfig,
    annotated: &impl Fn(&str) -> Option<&'a str>,
) -> Value {
    let app_port = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .map_or(80, |p| p.container_port);
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let value = |name: &str, value: &str| json!({"name": name, "value": value});
    let mut env = vec![
        field("MESH_POD_NAME", "metadata.name"),
        field("MESH_POD_NAMESPACE", "metadata.namespace"),
        field("MESH_POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        value("MESH__WORKLOAD__NAME", &workload_name(meta)),
        value("MESH__WORKLOAD__NAMESPACE", "$(MESH_POD_NAMESPACE)"),
        value(
            "MESH__IDENTITY__NAME",
            &format!(
                "spiffe://{}/ns/$(MESH_POD_NAMESPACE)/sa/$(MESH_POD_SERVICE_ACCOUNT)",
                config.trust_domain
            ),
        ),
        value("MESH__IDENTITY__TRUST_ANCHORS", &config.trust_anchors_pem),
        value("MESH__IDENTITY__CONTROLLER", &config.controller),
        value(
            "MESH__IDENTITY__CONTROLLER_IDENTITY",
            &config.controller_identity,
        ),
        value("MESH__IDENTITY__TOKEN_FILE", &format!("{TOKEN_DIR}/token")),
        value("MESH__ADMIN__LISTEN", "0.0.0.0:4191"),
        value("MESH__OUTBOUND__LISTEN", "127.0.0.1:4140"),
        value("MESH__OUTBOUND__TRANSPARENT", "true"),
        value("MESH__OUTBOUND__LOOKUP", "destination"),
        value("MESH__INBOUND__LISTEN", "0.0.0.0:4143"),
        value("MESH__INBOUND__APP", &format!("127.0.0.1:{app_port}")),
        value("MESH__INBOUND__TRANSPARENT", "true"),
        value(
            "MESH__LOG",
            annotated(annotations::LOG_LEVEL).unwrap_or(&config.log_level),
        ),
    ];
    if let Some(ports) = annotated(annotations::OPAQUE_PORTS) {
        let ports = ports.replace(' ', "");
        env.push(value("MESH__OUTBOUND__OPAQUE_PORTS", &ports));
        env.push(value("MESH__INBOUND__OPAQUE_PORTS", &ports));
    }
    let quantity = |annotation: &str, default: &str| -> Option<Value> {
        let quantity = annotated(annotation).unwrap_or(default);
        (!quantity.is_empty()).then(|| json!(quantity))
    };
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = quantity(annotations::CPU_REQUEST, &config.cpu_request) {
        requests.insert("cpu".to_owned(), cpu);
    }
    if let Some(memory) = quantity(annotations::MEMORY_REQUEST, &config.memory_request) {
        requests.insert("memory".to_owned(), memory);
    }
    if let Some(cpu) = quantity(annotations::CPU_LIMIT, "") {
        limits.insert("cpu".to_owned(), cpu);
    }
    if let Some(memory) = quantity(annotations::MEMORY_LIMIT, &config.memory_limit) {
        limits.insert("memory".to_owned(), memory);
    }
    let probe = |path: &str, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": 4191},
            "periodSeconds": 1,
            "failureThreshold": failures,
        })
    };
    let mut proxy = json!({
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "imagePullPolicy": "IfNotPresent",
        "env": env,
        "ports": [
            {"name": "mesh-inbound", "containerPort": 4143},
            {"name": "mesh-admin", "containerPort": 4191},
        ],
        "readinessProbe": probe("/ready", 3),
        "livenessProbe": {"httpGet": {"path": "/live", "port": 4191}, "periodSeconds": 10},
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {
            "runAsUser": config.proxy_uid,
            "runAsGroup": config.proxy_uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
    });
    if let Some(proxy) = proxy.as_object_mut() {
        if config.native_sidecar {
            // The kubelet starts the next container once this probe passes: two minutes for
            // the first certificate.
            proxy.insert("restartPolicy".to_owned(), json!("Always"));
            proxy.insert("startupProbe".to_owned(), probe("/ready", 120));
        } else {
            // The kubelet starts the next container once this hook returns.
            proxy.insert(
                "lifecycle".to_owned(),
                json!({"postStart": {"exec": {"command": [
                    "/mesh-proxy", "wait-ready", "--timeout", "120s"
                ]}}}),
            );
        }
    }
    proxy
}

/// The workload a pod belongs to, for metrics: its `app.kubernetes.io/name` or `app` label,
/// else its name (or generated name) without the hash suffixes of ReplicaSets and pods.
fn workload_name(meta: &ObjectMeta) -> String {
    let labels = meta.labels.as_ref();
    if let Some(name) =
        labels.and_then(|l| l.get("app.kubernetes.io/name").or_else(|| l.get("app")))
    {
        return name.clone();
    }
    let name = meta
        .name
        .clone()
        .or_else(|| meta.generate_name.clone())
        .unwrap_or_default();
    name.trim_end_matches('-').to_owned()
}
