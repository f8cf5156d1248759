//! `meshctl check`: is the mesh installed and healthy? Each check prints a line, a tick or a
//! cross, and for a cross what to do; the exit code is 0 only when every check passes.
//!
//! Against the cluster kubectl would use (`KUBECONFIG`, `~/.kube/config`, or in-cluster):
//!
//! 1. the API server answers;
//! 2. the control plane's Deployments (`mesh-controller`, `mesh-injector`) exist and are ready;
//! 3. the webhook is registered and its `caBundle` verifies the injector's serving certificate;
//! 4. the issuer's certificate is valid and more than 60 days from expiry;
//! 5. the trust anchors sign the issuer;
//! 6. every meshed pod's proxy reports ready.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::ListParams;

use crate::install::NAMESPACE;

/// How long before its expiry the issuer must be rotated.
pub const ISSUER_WARNING: Duration = Duration::from_secs(60 * 86_400);

/// One check's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do, when it does not hold.
    pub hint: Option<String>,
}

impl Check {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Self {
            name,
            ok: true,
            detail: detail.into(),
            hint: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            name,
            ok: false,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

/// The report: a line per check, its hint under a failed one.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for check in checks {
        let mark = if check.ok { "✔" } else { "✘" };
        out.push_str(&format!("{mark} {}: {}\n", check.name, check.detail));
        if let Some(hint) = &check.hint {
            out.push_str(&format!("    → {hint}\n"));
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    out.push_str(&match failed {
        0 => format!("\nall {} checks passed\n", checks.len()),
        n => format!("\n{n} of {} checks failed\n", checks.len()),
    });
    out
}

/// Runs every check against the cluster of `client`, as of `now`.
pub async fn run(client: kube::Client, now: SystemTime) -> Vec<Check> {
    let mut checks = Vec::new();
    match client.apiserver_version().await {
        Ok(version) => checks.push(Check::pass(
            "Kubernetes API",
            format!("reachable (v{}.{})", version.major, version.minor),
        )),
        Err(e) => {
            checks.push(Check::fail(
                "Kubernetes API",
                format!("unreachable: {e}"),
                "check the kubeconfig kubectl uses (KUBECONFIG, ~/.kube/config) and that the cluster is up",
            ));
            return checks;
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    for name in ["mesh-controller", "mesh-injector"] {
        checks.push(deployment(&deployments, name).await);
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    checks.push(webhook(&client, &secrets).await);
    let issuer = secret_file(&secrets, "mesh-identity-issuer", "tls.crt").await;
    checks.push(issuer_validity(issuer.as_ref(), now));
    checks.push(anchors_chain(&client, issuer.as_ref()).await);
    checks.push(proxies(&client).await);
    checks
}

async fn deployment(api: &Api<Deployment>, name: &str) -> Check {
    const CHECK: &str = "control plane";
    let install = "run `meshctl install | kubectl apply -f -`";
    match api.get_opt(name).await {
        Err(e) => Check::fail(
            CHECK,
            format!("cannot read deployment {NAMESPACE}/{name}: {e}"),
            install,
        ),
        Ok(None) => Check::fail(
            CHECK,
            format!("deployment {NAMESPACE}/{name} is missing"),
            install,
        ),
        Ok(Some(d)) => {
            let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            if ready >= wanted && wanted > 0 {
                Check::pass(
                    CHECK,
                    format!("deployment {NAMESPACE}/{name}: {ready} of {wanted} ready"),
                )
            } else {
                Check::fail(
                    CHECK,
                    format!("deployment {NAMESPACE}/{name}: {ready} of {wanted} replicas ready"),
                    format!(
                        "kubectl -n {NAMESPACE} describe deployment {name}; kubectl -n {NAMESPACE} logs deploy/{name}"
                    ),
                )
            }
        }
    }
}

/// A file of a Secret: `data` as the API server stores it (`stringData` as written, too).
async fn secret_file(api: &Api<Secret>, name: &str, key: &str) -> Result<String, String> {
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read secret {NAMESPACE}/{name}: {e}"))?
        .ok_or_else(|| format!("secret {NAMESPACE}/{name} is missing"))?;
    if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(bytes.0.clone()).map_err(|_| format!("{name}/{key} is not PEM"));
    }
    secret
        .string_data
        .and_then(|d| d.get(key).cloned())
        .ok_or_else(|| format!("secret {NAMESPACE}/{name} has no {key}"))
}

async fn webhook(client: &kube::Client, secrets: &Api<Secret>) -> Check {
    const CHECK: &str = "webhook";
    let reinstall = "re-run `meshctl install | kubectl apply -f -` (it makes the injector's certificate and the caBundle together)";
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = match api.get_opt("mesh-injector").await {
        Ok(Some(config)) => config,
        Ok(None) => {
            return Check::fail(
                CHECK,
                "mutatingwebhookconfiguration mesh-injector is not registered",
                reinstall,
            );
        }
        Err(e) => {
            return Check::fail(
                CHECK,
                format!("cannot read the webhook configuration: {e}"),
                reinstall,
            );
        }
    };
    let Some(hook) = config
        .webhooks
        .iter()
        .flatten()
        .find(|w| w.name == "inject.mesh.dev")
    else {
        return Check::fail(
            CHECK,
            "mesh-injector has no webhook inject.mesh.dev",
            reinstall,
        );
    };
    let bundle = hook
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .unwrap_or_default();
    let serving = match secret_file(secrets, "mesh-injector-tls", "tls.crt").await {
        Ok(pem) => pem,
        Err(e) => return Check::fail(CHECK, e, reinstall),
    };
    match signed_by_any(&serving, &bundle) {
        Ok(true) => Check::pass(
            CHECK,
            "registered; its caBundle verifies the injector's certificate",
        ),
        Ok(false) => Check::fail(
            CHECK,
            "the caBundle does not verify the injector's certificate: the API server cannot call the injector",
            reinstall,
        ),
        Err(e) => Check::fail(
            CHECK,
            format!("the caBundle or the injector's certificate does not parse: {e}"),
            reinstall,
        ),
    }
}

fn issuer_validity(issuer: Result<&String, &String>, now: SystemTime) -> Check {
    const CHECK: &str = "issuer";
    let rotate = "rotate the issuer: a new Secret mesh-system/mesh-identity-issuer signed by the trust anchor (cert-manager does it with --identity-external-issuer); the controller reloads it";
    let pem = match issuer {
        Ok(pem) => pem,
        Err(e) => return Check::fail(CHECK, e.clone(), rotate),
    };
    let der = match pem_der(pem) {
        Ok(der) => der,
        Err(e) => {
            return Check::fail(
                CHECK,
                format!("the issuer certificate does not parse: {e}"),
                rotate,
            );
        }
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return Check::fail(CHECK, "the issuer certificate does not parse", rotate);
    };
    let now = unix(now);
    let (not_before, not_after) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    let days_left = (not_after - now) / 86_400;
    if now < not_before {
        Check::fail(CHECK, "the issuer certificate is not valid yet", rotate)
    } else if now >= not_after {
        Check::fail(
            CHECK,
            "the issuer certificate has expired: no proxy can renew its certificate",
            rotate,
        )
    } else if not_after - now < secs(ISSUER_WARNING) {
        Check::fail(
            CHECK,
            format!("the issuer certificate expires in {days_left} days (within 60)"),
            rotate,
        )
    } else {
        Check::pass(CHECK, format!("valid for {days_left} more days"))
    }
}

async fn anchors_chain(client: &kube::Client, issuer: Result<&String, &String>) -> Check {
    const CHECK: &str = "trust anchors";
    let hint = "the issuer must be signed by a certificate of mesh-system/mesh-trust-anchors (ca.crt): re-issue it from the anchor";
    let Ok(issuer) = issuer else {
        return Check::fail(CHECK, "no issuer certificate to chain", hint);
    };
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let anchors = match api.get_opt("mesh-trust-anchors").await {
        Ok(Some(cm)) => cm
            .data
            .and_then(|d| d.get("ca.crt").cloned())
            .unwrap_or_default(),
        Ok(None) => {
            return Check::fail(
                CHECK,
                "configmap mesh-system/mesh-trust-anchors is missing",
                hint,
            );
        }
        Err(e) => return Check::fail(CHECK, format!("cannot read the trust anchors: {e}"), hint),
    };
    match signed_by_any(issuer, &anchors) {
        Ok(true) => Check::pass(CHECK, "the issuer chains to the trust anchors"),
        Ok(false) => Check::fail(
            CHECK,
            "the issuer is not signed by any trust anchor: proxies will refuse each other",
            hint,
        ),
        Err(e) => Check::fail(CHECK, format!("does not parse: {e}"), hint),
    }
}

async fn proxies(client: &kube::Client) -> Check {
    const CHECK: &str = "meshed pods";
    let api: Api<Pod> = Api::all(client.clone());
    let pods = match api
        .list(&ListParams::default().labels(&format!("{}=true", mesh_inject::MESHED_LABEL)))
        .await
    {
        Ok(pods) => pods.items,
        Err(e) => {
            return Check::fail(
                CHECK,
                format!("cannot list pods: {e}"),
                "check RBAC: list pods across namespaces",
            );
        }
    };
    let not_ready: Vec<String> = pods
        .iter()
        .filter(|pod| {
            let status = pod.status.as_ref();
            let proxy = status
                .into_iter()
                .flat_map(|s| {
                    s.init_container_statuses
                        .iter()
                        .flatten()
                        .chain(s.container_statuses.iter().flatten())
                })
                .find(|c| c.name == mesh_inject::PROXY_CONTAINER);
            !proxy.is_some_and(|c| c.ready)
        })
        .map(|pod| {
            format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    match (pods.len(), not_ready.first()) {
        (0, _) => Check::pass(CHECK, "no meshed pods yet"),
        (n, None) => Check::pass(
            CHECK,
            format!("the proxies of all {n} meshed pods are ready"),
        ),
        (n, Some(first)) => {
            let (ns, pod) = first.split_once('/').unwrap_or(("", first));
            Check::fail(
                CHECK,
                format!(
                    "{} of {n} meshed pods' proxies are not ready: {}",
                    not_ready.len(),
                    not_ready.join(", ")
                ),
                format!(
                    "kubectl -n {ns} logs {pod} -c {}",
                    mesh_inject::PROXY_CONTAINER
                ),
            )
        }
    }
}

/// Whether `cert_pem` (its first certificate) is signed by one of the certificates of `ca_pem`.
fn signed_by_any(cert_pem: &str, ca_pem: &str) -> Result<bool, String> {
    let der = pem_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
    let mut found = false;
    for pem in x509_parser::pem::Pem::iter_from_buffer(ca_pem.as_bytes()) {
        let pem = pem.map_err(|e| e.to_string())?;
        let (_, ca) =
            x509_parser::parse_x509_certificate(&pem.contents).map_err(|e| e.to_string())?;
        found |= cert.verify_signature(Some(ca.public_key())).is_ok();
    }
    Ok(found)
}

fn pem_der(pem: &str) -> Result<Vec<u8>, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok(pem.contents)
}

fn unix(t: SystemTime) -> i64 {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}
