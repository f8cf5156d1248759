//! AdmissionReview v1 in, AdmissionReview v1 out: the webhook's side of [`decide`](crate::decide).
//!
//! The injector must never keep a pod from being created: whatever arrives, the answer allows
//! it, with the sidecar's patch when the pod is to be meshed and with no patch otherwise. Only a
//! body that is not an AdmissionReview at all gets an HTTP error (the API server, with
//! `failurePolicy: Ignore`, then creates the pod as it is).
//!
//! ```
//! use mesh_inject::InjectConfig;
//! use mesh_inject::admission::{Outcome, parse, respond};
//!
//! let body = serde_json::json!({
//!     "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
//!     "request": {
//!         "uid": "705ab4f5", "operation": "CREATE", "namespace": "shop",
//!         "kind": {"group": "", "version": "v1", "kind": "Pod"},
//!         "resource": {"group": "", "version": "v1", "resource": "pods"},
//!         "userInfo": {}, "dryRun": false,
//!         "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0",
//!             "annotations": {"mesh.dev/inject": "enabled"}},
//!             "spec": {"containers": [{"name": "web", "image": "web"}]}}
//!     }
//! });
//! let request = parse(body.to_string().as_bytes()).unwrap();
//! // The namespace's annotations come from the API server (none here).
//! let (review, outcome) = respond(&request, None, &InjectConfig::default());
//! assert_eq!(outcome, Outcome::Injected);
//! assert_eq!(review["response"]["allowed"], true);
//! assert_eq!(review["response"]["patchType"], "JSONPatch");
//! assert!(review["response"]["patch"].is_string()); // base64, as the API documents it
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube_core::DynamicObject;
use kube_core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use crate::{Decision, InjectConfig, Skip, decide};

/// The only AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// Why a body is not an AdmissionReview this webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum InvalidReview {
    /// Not JSON, or not shaped like an AdmissionReview.
    #[error("not an AdmissionReview: {0}")]
    Malformed(String),
    /// Another version of the API.
    #[error("apiVersion {0:?} is not served: expected {API_VERSION}")]
    Version(String),
    /// A review with no request in it.
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// What the webhook did with a request, for its metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The sidecar's patch was returned.
    Injected,
    /// Skipped, the reason recorded on the pod.
    Skipped(Skip),
    /// Not opted in: allowed as it is.
    Unchanged,
    /// Not a pod being created, or a pod that does not parse: allowed as it is.
    Ignored(&'static str),
}

impl Outcome {
    /// The metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped(_) => "skipped",
            Outcome::Unchanged => "unchanged",
            Outcome::Ignored(_) => "ignored",
        }
    }
}

/// A request, parsed.
#[derive(Debug)]
pub struct Request(AdmissionRequest<DynamicObject>);

impl Request {
    /// The namespace of the object, whose annotations may opt it in.
    pub fn namespace(&self) -> Option<&str> {
        self.0.namespace.as_deref()
    }

    /// The request's uid, echoed in the answer.
    pub fn uid(&self) -> &str {
        &self.0.uid
    }
}

/// Parses a body; an error is the caller's 400.
pub fn parse(body: &[u8]) -> Result<Request, InvalidReview> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| InvalidReview::Malformed(e.to_string()))?;
    let version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if version != API_VERSION {
        return Err(InvalidReview::Version(version.to_owned()));
    }
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(value).map_err(|e| InvalidReview::Malformed(e.to_string()))?;
    let request: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| InvalidReview::NoRequest)?;
    Ok(Request(request))
}

/// For a body this webhook cannot serve but that names a request (another API version, a
/// request shaped unlike v1's): an answer in the body's own version that allows the object as
/// it is, with a warning, so that the API server creates it unchanged. `None` when the body
/// names no request uid (garbage: the caller's 400).
pub fn allow_unserved(body: &[u8], why: &InvalidReview) -> Option<Value> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let uid = value.pointer("/request/uid")?.as_str()?.to_owned();
    let version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or(API_VERSION);
    Some(serde_json::json!({
        "apiVersion": version,
        "kind": "AdmissionReview",
        "response": {
            "uid": uid,
            "allowed": true,
            "warnings": [format!("mesh-injector did not inject: {why}")],
        }
    }))
}

/// The answer to `request` (always allowed) as JSON, and what was done.
pub fn respond(
    request: &Request,
    namespace_annotations: Option<&BTreeMap<String, String>>,
    config: &InjectConfig,
) -> (Value, Outcome) {
    let request = &request.0;
    let allow = AdmissionResponse::from(request);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let (response, outcome) = if !is_pod || !matches!(request.operation, Operation::Create) {
        (allow, Outcome::Ignored("not a pod being created"))
    } else {
        let pod = request
            .object
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok())
            .and_then(|v| serde_json::from_value::<Pod>(v).ok());
        match pod {
            None => (allow, Outcome::Ignored("the pod does not parse")),
            Some(pod) => {
                match decide(
                    &pod.metadata,
                    pod.spec.as_ref(),
                    namespace_annotations,
                    config,
                ) {
                    Decision::Unchanged => (allow, Outcome::Unchanged),
                    Decision::Skipped(why, patch) => {
                        with_patch(allow, patch, Outcome::Skipped(why))
                    }
                    Decision::Inject(patch) => with_patch(allow, patch, Outcome::Injected),
                }
            }
        }
    };
    let mut review = serde_json::to_value(response.into_review()).unwrap_or_else(|_| {
        // A response of plain strings and booleans always serializes; this is the same
        // answer, written by hand.
        serde_json::json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "response": {"uid": request.uid, "allowed": true}
        })
    });
    base64_patch(&mut review);
    (review, outcome)
}

/// Writes the patch as the API documents it, base64 in a string (a Go `[]byte`): kube-core
/// writes the bytes as an array of numbers.
fn base64_patch(review: &mut Value) {
    let Some(patch) = review.pointer_mut("/response/patch") else {
        return;
    };
    let bytes: Option<Vec<u8>> = patch.as_array().map(|a| {
        a.iter()
            .filter_map(|b| u8::try_from(b.as_u64()?).ok())
            .collect()
    });
    if let Some(bytes) = bytes
        && let Ok(encoded) = serde_json::to_value(k8s_openapi::ByteString(bytes))
    {
        *patch = encoded;
    }
}

fn with_patch(
    allow: AdmissionResponse,
    patch: json_patch::Patch,
    outcome: Outcome,
) -> (AdmissionResponse, Outcome) {
    match allow.clone().with_patch(patch) {
        Ok(patched) => (patched, outcome),
        Err(_) => (allow, Outcome::Ignored("the patch does not serialize")),
    }
}
