//! Mutating admission webhooks, called as the API server calls them when an object is
//! created: the stored MutatingWebhookConfigurations (when that resource is served), in the
//! order of their names, each webhook whose rules and namespace selector match, once
//! (`reinvocationPolicy: Never`), over HTTPS verified with its `caBundle`, with an
//! AdmissionReview v1; a JSONPatch in the answer is applied, a denial refuses the object, and
//! a failure refuses it too unless `failurePolicy: Ignore`. Every call is recorded.
//!
//! The stand-in has no cluster network: a webhook's `service` is reached at the address
//! [`Builder::webhook_service`](crate::Builder::webhook_service) gives it (its `url`, as it is).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use crate::meta::{ApiError, ResourceType};
use crate::server::{Shared, lock};

/// One call of a webhook, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookCall {
    /// The webhook's name (`inject.mesh.dev`).
    pub webhook: String,
    /// `namespace/name` (or the generated name's prefix) of the object.
    pub object: String,
    /// `Ok("patched" | "allowed" | "denied")`, or why the call failed.
    pub outcome: Result<&'static str, String>,
}

/// Runs the matching webhooks on an object being created; the object to store.
pub(crate) async fn admit(
    shared: &Shared,
    res: usize,
    namespace: Option<&str>,
    body: Bytes,
) -> Result<Bytes, ApiError> {
    let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
        return Ok(body);
    };
    let (hooks, rt, namespace_labels) = {
        let store = lock(&shared.store);
        let Some(configs) = store.index_of(
            "admissionregistration.k8s.io/v1",
            "MutatingWebhookConfiguration",
        ) else {
            return Ok(body);
        };
        let mut configs: Vec<Arc<Value>> = store
            .snapshot(configs, None)
            .map(|objects| objects.into_values().collect())
            .unwrap_or_default();
        configs.sort_by(|a, b| name(a).cmp(name(b)));
        let hooks: Vec<Value> = configs
            .iter()
            .flat_map(|c| c["webhooks"].as_array().cloned().unwrap_or_default())
            .collect();
        let mut labels = BTreeMap::new();
        if let Some(ns) = namespace {
            labels.insert("kubernetes.io/metadata.name".to_owned(), ns.to_owned());
            if let Some(idx) = store.index_of("v1", "Namespace")
                && let Some(found) = store.get(idx, &(String::new(), ns.to_owned()))
            {
                for (k, v) in found["metadata"]["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                {
                    if let Some(v) = v.as_str() {
                        labels.insert(k.clone(), v.to_owned());
                    }
                }
            }
        }
        (hooks, store.resources[res].clone(), labels)
    };
    let described = format!(
        "{}/{}",
        namespace.unwrap_or_default(),
        object["metadata"]["name"]
            .as_str()
            .or_else(|| object["metadata"]["generateName"].as_str())
            .unwrap_or_default()
    );
    for hook in hooks.iter().filter(|h| matches(h, &rt, &namespace_labels)) {
        let webhook = hook["name"].as_str().unwrap_or_default().to_owned();
        let ignore = hook["failurePolicy"].as_str() == Some("Ignore");
        let record = |outcome: Result<&'static str, String>| {
            lock(&shared.webhook_calls).push(WebhookCall {
                webhook: webhook.clone(),
                object: described.clone(),
                outcome,
            });
        };
        let review = review(&object, &rt, namespace);
        let answer = call(shared, hook, &review).await;
        let response = match answer {
            Ok(response) => response,
            Err(why) => {
                tracing::warn!(%webhook, %why, ignore, "failed calling webhook");
                record(Err(why.clone()));
                if ignore {
                    continue;
                }
                return Err(ApiError::new(
                    500,
                    "InternalError",
                    format!("Internal error occurred: failed calling webhook \"{webhook}\": {why}"),
                ));
            }
        };
        if response["allowed"] != true {
            record(Ok("denied"));
            let message = response["status"]["message"].as_str().unwrap_or_default();
            let code = response["status"]["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok());
            return Err(ApiError::new(
                code.unwrap_or(400),
                "BadRequest",
                format!("admission webhook \"{webhook}\" denied the request: {message}"),
            ));
        }
        let applied = patch_of(&response).and_then(|patch| match patch {
            None => Ok("allowed"),
            Some(patch) => json_patch::patch(&mut object, &patch)
                .map(|()| "patched")
                .map_err(|e| format!("the patch does not apply: {e}")),
        });
        record(applied.clone());
        if let Err(why) = applied
            && !ignore
        {
            return Err(ApiError::new(
                500,
                "InternalError",
                format!("webhook \"{webhook}\": {why}"),
            ));
        }
    }
    Ok(Bytes::from(object.to_string()))
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Whether a webhook's rules take creates of `rt`, and its namespace selector the namespace.
fn matches(hook: &Value, rt: &ResourceType, namespace_labels: &BTreeMap<String, String>) -> bool {
    let has = |list: &Value, want: &str| {
        list.as_array()
            .is_some_and(|l| l.iter().any(|v| v == want || v == "*"))
    };
    let ruled = hook["rules"].as_array().into_iter().flatten().any(|rule| {
        has(&rule["operations"], "CREATE")
            && has(&rule["apiGroups"], rt.group)
            && has(&rule["apiVersions"], rt.version)
            && has(&rule["resources"], rt.plural)
    });
    ruled && selects(&hook["namespaceSelector"], namespace_labels)
}

/// A label selector (`matchLabels`, `matchExpressions`) against labels; none selects all.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str());
    let by_expressions = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let value = labels.get(key).map(String::as_str);
            match e["operator"].as_str() {
                Some("In") => value.is_some_and(|v| values.contains(&v)),
                Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
                Some("Exists") => value.is_some(),
                Some("DoesNotExist") => value.is_none(),
                _ => false,
            }
        });
    by_labels && by_expressions
}

fn review(object: &Value, rt: &ResourceType, namespace: Option<&str>) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": crate::meta::new_uid(),
            "kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
            "resource": {"group": rt.group, "version": rt.version, "resource": rt.plural},
            "requestKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
            "requestResource": {"group": rt.group, "version": rt.version, "resource": rt.plural},
            "name": object["metadata"]["name"],
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

/// The answer's JSONPatch, if any.
fn patch_of(response: &Value) -> Result<Option<json_patch::Patch>, String> {
    let Some(patch) = response.get("patch").filter(|p| !p.is_null()) else {
        return Ok(None);
    };
    if response["patchType"] != "JSONPatch" {
        return Err(format!(
            "patchType {} is not JSONPatch",
            response["patchType"]
        ));
    }
    let bytes: k8s_openapi::ByteString = serde_json::from_value(patch.clone())
        .map_err(|e| format!("the patch is not base64: {e}"))?;
    serde_json::from_slice(&bytes.0)
        .map(Some)
        .map_err(|e| format!("the patch is not a JSONPatch: {e}"))
}

/// POSTs the review to the webhook; its `response`.
async fn call(shared: &Shared, hook: &Value, review: &Value) -> Result<Value, String> {
    let client = &hook["clientConfig"];
    let (addr, server_name, path) = match (client["url"].as_str(), client["service"].as_object()) {
        (Some(url), _) => {
            let uri: http::Uri = url.parse().map_err(|e| format!("url {url:?}: {e}"))?;
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| format!("resolving {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("{host} has no address"))?;
            (addr, host, uri.path().to_owned())
        }
        (None, Some(service)) => {
            let name = service
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let ns = service
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let port = service
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(443);
            let addr = lock(&shared.webhook_services)
                .get(&(ns.to_owned(), name.to_owned(), port))
                .copied()
                .ok_or_else(|| format!("no endpoints for service {ns}/{name}:{port}"))?;
            let path = service
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or("/")
                .to_owned();
            (addr, format!("{name}.{ns}.svc"), path)
        }
        _ => return Err("clientConfig has neither url nor service".to_owned()),
    };
    let ca: k8s_openapi::ByteString =
        serde_json::from_value(client["caBundle"].clone()).map_err(|e| format!("caBundle: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca.0) {
        let cert = cert.map_err(|e| format!("caBundle: {e}"))?;
        roots.add(cert).map_err(|e| format!("caBundle: {e}"))?;
    }
    let timeout = Duration::from_secs(hook["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30));
    let exchange = async {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from(server_name.clone()).map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let request = http::Request::post(path)
            .header(http::header::HOST, server_name.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(review.to_string())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let answer: Value =
            serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))?;
        Ok(answer["response"].clone())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}
