//! `meshctl install`: the control plane's manifests, which `kubectl apply -f -` takes as they
//! are; `meshctl uninstall`: what to delete.
//!
//! The manifests hold, in `mesh-system` (so that `kubectl apply` creates each object after what
//! it needs):
//!
//! - the namespace (never injected itself), the ServiceAccounts `mesh-controller` and
//!   `mesh-injector`, and RBAC with least privilege: the controller lists and watches what
//!   discovery reads (Services, EndpointSlices, Pods) and creates TokenReviews; the injector
//!   reads Namespaces;
//! - the trust anchor and the issuer, made fresh for this install (the Secret
//!   `mesh-identity-issuer`), unless `--identity-external-issuer` leaves the issuer to
//!   cert-manager (the trust anchors then come from `--identity-trust-anchors-file`); the
//!   ConfigMap `mesh-trust-anchors`;
//! - the injector's serving certificate (the Secret `mesh-injector-tls`), signed by a CA made
//!   for this install, whose certificate is the webhook's `caBundle`;
//! - the ConfigMap `mesh-config`: the controller's and the injector's configurations, and
//!   with them the proxy's defaults (image, resources, log level, controller);
//! - the Deployments and Services of `mesh-controller` (identity and destination APIs, port
//!   8080) and `mesh-injector` (443 → 8443), and the MutatingWebhookConfiguration
//!   (`failurePolicy: Ignore`, pods on CREATE, `reinvocationPolicy: Never`, not in
//!   `kube-system` nor `mesh-system`);
//! - with `--ingress`, mesh-ingress: its ServiceAccount, its configuration (the ConfigMap
//!   `mesh-ingress`, reloaded live when edited: routes go there), a Deployment of two
//!   replicas that speaks mTLS into the mesh with the identity
//!   `spiffe://<trust-domain>/ns/mesh-system/sa/mesh-ingress` and finds endpoints through the
//!   controller's destination API, and a `LoadBalancer` Service (80 → 8080, 443 → 8443).
//!
//! ```
//! let options = meshctl::install::InstallOptions::default();
//! let yaml = meshctl::install::install_yaml(&options).unwrap();
//! assert!(yaml.contains("kind: MutatingWebhookConfiguration"));
//! ```

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

/// The control plane's namespace.
pub const NAMESPACE: &str = "mesh-system";
/// The namespace of the Gateway mesh-ingress implements, and of its TLS Secrets (apart from
/// `mesh-system`, so that reading them never reaches the identity issuer's key).
pub const GATEWAY_NAMESPACE: &str = "mesh-gateway";
/// The Gateway API's group, as `apiVersion` starts.
const GATEWAY_API: &str = "gateway.networking.k8s.io/";
/// How long the trust anchor lives (the issuer a year: it is rotated, the anchor rarely).
const ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long the issuer lives.
const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// What `install` may change.
#[derive(Clone, Debug)]
pub struct InstallOptions {
    /// Where the images are (`ghcr.io/mesh-dev`).
    pub registry: String,
    /// Their tag.
    pub version: String,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// Leave the issuer Secret to cert-manager (or another issuer): not generated.
    pub external_issuer: bool,
    /// The trust anchors (PEM) when the issuer is external.
    pub trust_anchors_pem: Option<String>,
    /// Inject the proxy as a native sidecar (Kubernetes 1.29 and later).
    pub native_sidecar: bool,
    /// Also install mesh-ingress.
    pub ingress: bool,
    /// And have it implement a Gateway of the Gateway API (whose CRDs must be installed).
    pub gateway_api: bool,
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            registry: "ghcr.io/mesh-dev".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            trust_domain: "cluster.local".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            external_issuer: false,
            trust_anchors_pem: None,
            native_sidecar: true,
            ingress: false,
            gateway_api: false,
        }
    }
}

/// Why the manifests could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A certificate could not be made.
    #[error("making the {what}: {reason}")]
    Pki {
        /// Which.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// `--identity-external-issuer` without the anchors.
    #[error(
        "--identity-external-issuer needs --identity-trust-anchors-file: the proxies verify each other with the anchors that issuer chains to"
    )]
    NoAnchors,
    /// The YAML could not be written.
    #[error("writing YAML: {0}")]
    Yaml(String),
}

/// The manifests, as multi-document YAML.
pub fn install_yaml(options: &InstallOptions) -> Result<String, InstallError> {
    Ok(install(options)?.yaml)
}

/// An install: its manifests, and the key of the trust anchor made for it.
#[derive(Debug)]
pub struct Installed {
    /// The manifests, as multi-document YAML.
    pub yaml: String,
    /// The key of the trust anchor made for this install (none with an external issuer). It is
    /// in no manifest: whoever keeps it can sign the next issuer under the same anchor
    /// (`mesh-controller issuer`); whoever drops it rotates the anchor itself when the issuer
    /// expires.
    pub anchor_key_pem: Option<String>,
}

/// The manifests and the anchor's key.
pub fn install(options: &InstallOptions) -> Result<Installed, InstallError> {
    let (objects, anchor_key_pem) = manifests_and_anchor_key(options)?;
    Ok(Installed {
        yaml: to_yaml(&objects)?,
        anchor_key_pem,
    })
}

/// What `uninstall` deletes: every object of the install, named (no data), as YAML.
pub fn uninstall_yaml() -> Result<String, InstallError> {
    let options = InstallOptions {
        external_issuer: true,
        trust_anchors_pem: Some(String::new()),
        // Whether it was installed or not: `kubectl delete --ignore-not-found` skips it.
        ingress: true,
        gateway_api: true,
        ..InstallOptions::default()
    };
    // The Gateway API's own kinds are left out: `kubectl delete` fails on a kind whose CRD is
    // not installed, even with --ignore-not-found. Deleting the namespace `mesh-gateway`
    // deletes the Gateway; the GatewayClass `mesh` stays (`kubectl delete gatewayclass mesh`).
    let mut objects: Vec<Value> = manifests(&options)?
        .into_iter()
        .filter(|o| {
            !o["apiVersion"]
                .as_str()
                .unwrap_or("")
                .starts_with(GATEWAY_API)
        })
        .collect();
    // The generated Secrets carry data an uninstall does not need; names suffice.
    objects.push(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "mesh-identity-issuer", "namespace": NAMESPACE}}));
    let named: Vec<Value> = objects
        .iter()
        .rev()
        .map(|o| {
            let mut metadata = serde_json::Map::new();
            for key in ["name", "namespace"] {
                if let Some(v) = o.pointer(&format!("/metadata/{key}")) {
                    metadata.insert(key.to_owned(), v.clone());
                }
            }
            json!({"apiVersion": o["apiVersion"], "kind": o["kind"], "metadata": metadata})
        })
        .collect();
    to_yaml(&named)
}

fn to_yaml(objects: &[Value]) -> Result<String, InstallError> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(
            &serde_saphyr::to_string(object).map_err(|e| InstallError::Yaml(e.to_string()))?,
        );
    }
    Ok(out)
}

/// The install's objects, in the order `kubectl apply` should create them.
pub fn manifests(options: &InstallOptions) -> Result<Vec<Value>, InstallError> {
    Ok(manifests_and_anchor_key(options)?.0)
}

fn manifests_and_anchor_key(
    options: &InstallOptions,
) -> Result<(Vec<Value>, Option<String>), InstallError> {
    let (anchors_pem, issuer, anchor_key_pem) = if options.external_issuer {
        let anchors = options
            .trust_anchors_pem
            .clone()
            .ok_or(InstallError::NoAnchors)?;
        (anchors, None, None)
    } else {
        let made = mesh_tls::ca::bootstrap(
            &options.trust_domain,
            ANCHOR_LIFETIME,
            ISSUER_LIFETIME,
            SystemTime::now(),
        )
        .map_err(|e| InstallError::Pki {
            what: "trust anchor and issuer",
            reason: e.to_string(),
        })?;
        let issuer = (made.issuer_cert_pem, made.issuer_key_pem);
        (made.anchor_pem, Some(issuer), Some(made.anchor_key_pem))
    };
    let webhook = webhook_pki()?;
    let controller_host = format!("mesh-controller.{NAMESPACE}.svc.{}", options.cluster_domain);
    let image = |name: &str| format!("{}/{name}:{}", options.registry, options.version);
    let inject = mesh_inject::InjectConfig {
        proxy_image: image("mesh-proxy"),
        native_sidecar: options.native_sidecar,
        controller: format!("{controller_host}:8080"),
        controller_identity: format!(
            "spiffe://{}/ns/{NAMESPACE}/sa/mesh-controller",
            options.trust_domain
        ),
        trust_domain: options.trust_domain.clone(),
        ..mesh_inject::InjectConfig::default()
    };
    let inject_toml = toml::to_string(&inject).map_err(|e| InstallError::Yaml(e.to_string()))?;
    let controller_toml = format!(
        "listen = \"0.0.0.0:8080\"\n\n[identity]\ntrust_domain = \"{td}\"\n\
         trust_anchors = \"/var/run/mesh/anchors/ca.crt\"\n\
         issuer_cert = \"/var/run/mesh/issuer/tls.crt\"\nissuer_key = \"/var/run/mesh/issuer/tls.key\"\n\n\
         [tokens]\nkubernetes = true\naudience = \"{audience}\"\n\n\
         [destination]\ncluster_domain = \"{cd}\"\n",
        td = options.trust_domain,
        audience = inject.token_audience,
        cd = options.cluster_domain,
    );
    let injector_toml = format!(
        "listen = \"0.0.0.0:8443\"\ncert = \"/var/run/mesh/tls/tls.crt\"\n\
         key = \"/var/run/mesh/tls/tls.key\"\ntrust_anchors = \"/var/run/mesh/anchors/ca.crt\"\n\n\
         # The proxy's defaults: what the injector puts in every meshed pod.\n[inject]\n{inject_toml}"
    );
    let labels =
        |name: &str| json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mesh"});
    let meta = |name: &str| json!({"name": name, "namespace": NAMESPACE, "labels": labels(name)});

    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "mesh"},
            "annotations": {mesh_inject::INJECT_ANNOTATION: "disabled"}}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("mesh-controller")}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("mesh-injector")}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "mesh-controller", "labels": labels("mesh-controller")},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        ]}),
        binding("mesh-controller"),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "mesh-injector", "labels": labels("mesh-injector")},
            "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]}]}),
        binding("mesh-injector"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("mesh-trust-anchors"),
            "data": {"ca.crt": anchors_pem}}),
    ];
    if let Some((cert, key)) = issuer {
        objects.push(
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": meta("mesh-identity-issuer"),
            "stringData": {"tls.crt": cert, "tls.key": key}}),
        );
    }
    objects.push(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": meta("mesh-injector-tls"),
        "stringData": {"tls.crt": webhook.cert_pem, "tls.key": webhook.key_pem}}),
    );
    objects.push(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("mesh-config"),
        "data": {"controller.toml": controller_toml, "injector.toml": injector_toml}}),
    );
    objects.push(service("mesh-controller", 8080, 8080));
    objects.push(service("mesh-injector", 443, 8443));
    objects.push(deployment(
        "mesh-controller",
        &image("mesh-controlplane"),
        &[
            "mesh-controller",
            "run",
            "--config",
            "/etc/mesh/controller.toml",
        ],
        8080,
        json!({"tcpSocket": {"port": 8080}}),
        &[("mesh-identity-issuer", "/var/run/mesh/issuer")],
    ));
    objects.push(deployment(
        "mesh-injector",
        &image("mesh-controlplane"),
        &["mesh-injector", "--config", "/etc/mesh/injector.toml"],
        8443,
        json!({"httpGet": {"path": "/ready", "port": 8443, "scheme": "HTTPS"}}),
        &[("mesh-injector-tls", "/var/run/mesh/tls")],
    ));
    objects.push(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mesh-injector", "labels": labels("mesh-injector")},
        "webhooks": [{
            "name": "inject.mesh.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 10,
            "clientConfig": {
                "service": {"name": "mesh-injector", "namespace": NAMESPACE, "path": "/inject", "port": 443},
                "caBundle": k8s_openapi::ByteString(webhook.ca_pem.into_bytes()),
            },
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": ["kube-system", NAMESPACE]}]},
        }],
    }));
    if options.ingress {
        objects.extend(ingress(options, &inject, &image("mesh-ingress")));
        if options.gateway_api {
            objects.extend(gateway_api());
        }
    }
    Ok((objects, anchor_key_pem))
}

/// The ingress's configuration as installed: plaintext on 8080 until certificates are added,
/// no routes yet (every request is 404 `no-route` until some are), mTLS into the mesh with
/// its own identity, endpoints from the destination API.
pub fn ingress_toml(options: &InstallOptions, inject: &mesh_inject::InjectConfig) -> String {
    format!(
        "# mesh-ingress: edit this ConfigMap to add routes (reloaded within seconds) and, with\n\
         # TLS Secrets mounted in the Deployment, [https] certificates. See deploy/ingress/ingress.toml.\n\
         [workload]\nname = \"mesh-ingress\"\nnamespace = \"{NAMESPACE}\"\n\n\
         [admin]\nlisten = \"0.0.0.0:4191\"\n\n\
         [identity]\nname = \"spiffe://{td}/ns/{NAMESPACE}/sa/mesh-ingress\"\n\
         trust_anchors = \"/var/run/mesh/anchors/ca.crt\"\ncontroller = \"{controller}\"\n\
         controller_identity = \"{controller_identity}\"\ntoken_file = \"{token}/token\"\n\n\
         [http]\nlisten = \"0.0.0.0:8080\"\n\n\
         {https}\
         # [[routes]]\n# hostnames = [\"shop.example.com\"]\n\
         # backends = [{{ service = \"web.shop.svc.{cd}:80\" }}]\n\
         # [[services]]\n# authority = \"web.shop.svc.{cd}:80\"\n# discovery = \"destination\"\n",
        td = options.trust_domain,
        cd = options.cluster_domain,
        controller = inject.controller,
        controller_identity = inject.controller_identity,
        token = mesh_inject::TOKEN_DIR,
        https = if options.gateway_api {
            format!(
                "# The Gateway's HTTPS listener names the TLS Secret (create mesh-ingress-tls in\n\
                 # {GATEWAY_NAMESPACE}); HTTPRoutes whose parentRefs name the Gateway are routed.\n\
                 [https]\nlisten = \"0.0.0.0:8443\"\n\n\
                 [kubernetes]\ngateway = \"{GATEWAY_NAMESPACE}/mesh-ingress\"\n\n"
            )
        } else {
            "# [https]\n# listen = \"0.0.0.0:8443\"\n# [[https.certificates]]\n\
             # cert = \"/etc/mesh-ingress/tls/tls.crt\"\n# key = \"/etc/mesh-ingress/tls/tls.key\"\n\
             # default = true\n\n"
                .to_owned()
        },
    )
}

/// The Gateway API's objects: the GatewayClass `mesh`, the Gateway it names in its own
/// namespace (HTTP on 80, HTTPS on 443 with the Secret `mesh-ingress-tls`, routes from every
/// namespace), and the RBAC the ingress needs to read them and write their status: Gateways, HTTPRoutes and GRPCRoutes everywhere,
/// Secrets of the Gateway's namespace only.
fn gateway_api() -> Vec<Value> {
    let name = "mesh-ingress";
    let labels = json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mesh"});
    let all_routes = json!({"namespaces": {"from": "All"}});
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
            "name": GATEWAY_NAMESPACE, "labels": {"app.kubernetes.io/part-of": "mesh"}}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels},
            "rules": [{"apiGroups": ["gateway.networking.k8s.io"],
                       "resources": ["gateways", "httproutes", "grpcroutes"], "verbs": ["get", "list", "watch"]},
                      {"apiGroups": ["gateway.networking.k8s.io"],
                       "resources": ["gateways/status", "httproutes/status", "grpcroutes/status"],
                       "verbs": ["patch", "update"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": GATEWAY_NAMESPACE, "labels": labels},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": GATEWAY_NAMESPACE, "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "mesh", "labels": labels},
            "spec": {"controllerName": "mesh.dev/ingress"}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": GATEWAY_NAMESPACE, "labels": labels},
            "spec": {"gatewayClassName": "mesh", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP", "allowedRoutes": all_routes},
                {"name": "https", "port": 443, "protocol": "HTTPS", "allowedRoutes": all_routes,
                 "tls": {"mode": "Terminate",
                         "certificateRefs": [{"kind": "Secret", "name": "mesh-ingress-tls"}]}}]}}),
    ]
}

/// mesh-ingress's objects.
fn ingress(
    options: &InstallOptions,
    inject: &mesh_inject::InjectConfig,
    image: &str,
) -> Vec<Value> {
    let name = "mesh-ingress";
    let labels = json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mesh"});
    let meta = json!({"name": name, "namespace": NAMESPACE, "labels": labels});
    let mut pod_labels = labels.clone();
    // Scraped like the sidecars (deploy/prometheus): the label and the `mesh-admin` port.
    pod_labels["mesh.io/proxy"] = json!("enabled");
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": 4191}, "periodSeconds": 5});
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
            "data": {"ingress.toml": ingress_toml(options, inject)}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"type": "LoadBalancer", "selector": {"app.kubernetes.io/name": name},
                     "externalTrafficPolicy": "Local",
                     "ports": [
                        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                        {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"}]}}),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                "template": {
                    "metadata": {"labels": pod_labels,
                                 // It speaks the mesh's mTLS itself: no sidecar.
                                 "annotations": {mesh_inject::INJECT_ANNOTATION: "disabled"}},
                    "spec": {
                        "serviceAccountName": name,
                        // SIGTERM drains: the load balancer stops sending first.
                        "terminationGracePeriodSeconds": 40,
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": name,
                            "image": image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["/usr/local/bin/mesh-ingress", "--config", "/etc/mesh-ingress/ingress.toml"],
                            "ports": [
                                {"name": "http", "containerPort": 8080},
                                {"name": "https", "containerPort": 8443},
                                {"name": "mesh-admin", "containerPort": 4191}],
                            "readinessProbe": probe("/ready"),
                            "livenessProbe": probe("/live"),
                            "resources": {"requests": {"cpu": "100m", "memory": "32Mi"}, "limits": {"memory": "512Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                                "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/mesh-ingress", "readOnly": true},
                                {"name": "anchors", "mountPath": "/var/run/mesh/anchors", "readOnly": true},
                                {"name": "identity-token", "mountPath": mesh_inject::TOKEN_DIR, "readOnly": true}],
                        }],
                        "volumes": [
                            {"name": "config", "configMap": {"name": name}},
                            {"name": "anchors", "configMap": {"name": "mesh-trust-anchors"}},
                            {"name": "identity-token", "projected": {"sources": [{"serviceAccountToken": {
                                "audience": inject.token_audience, "expirationSeconds": 3600, "path": "token"}}]}}],
                    },
                },
            },
        }),
    ]
}

fn binding(name: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mesh"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]})
}

fn service(name: &str, port: u16, target: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mesh"}},
        "spec": {"selector": {"app.kubernetes.io/name": name},
                 "ports": [{"name": "https", "port": port, "targetPort": target, "protocol": "TCP"}]}})
}

/// A control-plane Deployment: non-root, read-only, with the config, the anchors and
/// `secrets` (name, mount path, from a Secret) mounted.
fn deployment(
    name: &str,
    image: &str,
    command: &[&str],
    port: u16,
    probe: Value,
    secrets: &[(&str, &str)],
) -> Value {
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": "mesh-config"}}),
        json!({"name": "anchors", "configMap": {"name": "mesh-trust-anchors"}}),
    ];
    let mut mounts = vec![
        json!({"name": "config", "mountPath": "/etc/mesh", "readOnly": true}),
        json!({"name": "anchors", "mountPath": "/var/run/mesh/anchors", "readOnly": true}),
    ];
    for (secret, path) in secrets {
        volumes.push(json!({"name": secret, "secret": {"secretName": secret}}));
        mounts.push(json!({"name": secret, "mountPath": path, "readOnly": true}));
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mesh"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mesh"},
                             "annotations": {mesh_inject::INJECT_ANNOTATION: "disabled"}},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": name,
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": command,
                        "ports": [{"name": "https", "containerPort": port}],
                        "readinessProbe": probe.clone(),
                        "livenessProbe": probe,
                        "resources": {"requests": {"cpu": "50m", "memory": "50Mi"}, "limits": {"memory": "250Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    })
}

/// The year ten years from now (the webhook's CA and certificate live that long:
/// `meshctl install` again renews them).
fn ten_years_from_now() -> i32 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    1970 + i32::try_from(now / 31_556_952).unwrap_or(56) + 10
}

/// The injector's serving certificate and the CA that signed it (the webhook's caBundle).
struct WebhookPki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn webhook_pki() -> Result<WebhookPki, InstallError> {
    let failed = |e: rcgen::Error| InstallError::Pki {
        what: "injector's serving certificate",
        reason: e.to_string(),
    };
    let ca_key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "mesh-injector webhook CA");
    ca.not_after = rcgen::date_time_ymd(ten_years_from_now(), 1, 1);
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let mut leaf = rcgen::CertificateParams::new(vec![
        "mesh-injector".to_owned(),
        format!("mesh-injector.{NAMESPACE}"),
        format!("mesh-injector.{NAMESPACE}.svc"),
    ])
    .map_err(failed)?;
    leaf.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("mesh-injector.{NAMESPACE}.svc"),
    );
    leaf.not_after = rcgen::date_time_ymd(ten_years_from_now(), 1, 1);
    let cert = leaf.signed_by(&key, &issuer).map_err(failed)?;
    Ok(WebhookPki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
