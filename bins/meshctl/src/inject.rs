//! `meshctl inject`: the injector's patch, applied offline to workload manifests.
//!
//! Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets, ReplicationControllers, Jobs and
//! CronJobs (also inside a `List`) get the sidecar in their pod template, by
//! [`mesh_inject::decide`], the function the webhook calls. Every other document, and a
//! workload that is already injected or opts out, comes out byte for byte as it went in, so
//! injecting twice changes nothing. Multi-document YAML keeps its separators and comments
//! between documents.
//!
//! ```
//! let input = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n\
//!              apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n\
//!              spec: {containers: [{name: app, image: app}]}\n";
//! let out = meshctl::inject::inject_yaml(input, &mesh_inject::InjectConfig::default()).unwrap();
//! assert!(out.text.starts_with("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n"));
//! assert!(out.text.contains("mesh-proxy"));
//! assert_eq!(out.injected, ["pod/p"]);
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_inject::{Decision, INJECT_ANNOTATION, InjectConfig, Skip};
use serde_json::Value;

/// Why a manifest cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A document is not YAML.
    #[error("document {index} is not valid YAML: {reason}")]
    Yaml {
        /// Its position, from 1.
        index: usize,
        /// What the parser said.
        reason: String,
    },
    /// A workload's pod template is not a pod template.
    #[error("{object}: the pod template does not parse: {reason}")]
    Template {
        /// `kind/name`.
        object: String,
        /// Why.
        reason: String,
    },
    /// The patch did not apply (a template shaped unlike a pod's).
    #[error("{object}: {reason}")]
    Patch {
        /// `kind/name`.
        object: String,
        /// Why.
        reason: String,
    },
}

/// The injected manifests and what happened to each workload.
#[derive(Debug, Default)]
pub struct Injected {
    /// The YAML, every document in its place.
    pub text: String,
    /// `kind/name` of each workload injected.
    pub injected: Vec<String>,
    /// `kind/name` and why, of each workload left as it was.
    pub skipped: Vec<(String, &'static str)>,
}

/// Injects every workload of `input` (multi-document YAML).
pub fn inject_yaml(input: &str, config: &InjectConfig) -> Result<Injected, InjectError> {
    let mut out = Injected::default();
    for (index, (separator, document)) in split_documents(input).into_iter().enumerate() {
        out.text.push_str(separator);
        let parsed: Option<Value> = if is_blank(document) {
            None
        } else {
            Some(
                serde_saphyr::from_str(document).map_err(|e| InjectError::Yaml {
                    index: index + 1,
                    reason: e.to_string(),
                })?,
            )
        };
        let Some(mut value) = parsed else {
            out.text.push_str(document);
            continue;
        };
        if inject_object(&mut value, config, &mut out)? {
            let yaml = serde_saphyr::to_string(&value).map_err(|e| InjectError::Yaml {
                index: index + 1,
                reason: e.to_string(),
            })?;
            out.text.push_str(&yaml);
            if !yaml.ends_with('\n') {
                out.text.push('\n');
            }
        } else {
            out.text.push_str(document);
        }
    }
    Ok(out)
}

/// Injects one object (or each item of a `List`); true when anything changed.
fn inject_object(
    value: &mut Value,
    config: &InjectConfig,
    out: &mut Injected,
) -> Result<bool, InjectError> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" || kind.ends_with("List") {
        let mut changed = false;
        if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                changed |= inject_object(item, config, out)?;
            }
        }
        return Ok(changed);
    }
    let template_path = match kind.as_str() {
        "Pod" => "",
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => return Ok(false),
    };
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let object = format!("{}/{name}", kind.to_ascii_lowercase());
    let Some(template) = value.pointer_mut(template_path) else {
        return Err(InjectError::Template {
            object,
            reason: format!("no {template_path}"),
        });
    };
    inject_template(template, &object, config, out)
}

/// Injects a pod (template): `metadata` and `spec` at the top of `template`.
fn inject_template(
    template: &mut Value,
    object: &str,
    config: &InjectConfig,
    out: &mut Injected,
) -> Result<bool, InjectError> {
    let bad = |reason: String| InjectError::Template {
        object: object.to_owned(),
        reason,
    };
    let Some(fields) = template.as_object_mut() else {
        return Err(bad("not a mapping".to_owned()));
    };
    // The patch adds to `metadata`: a template may have none.
    fields
        .entry("metadata")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let mut meta: ObjectMeta = serde_json::from_value(fields["metadata"].clone())
        .map_err(|e| bad(format!("metadata: {e}")))?;
    // The pods of a workload are named after it: the proxy's workload name (for metrics) is
    // the workload's, unless the template's labels say otherwise.
    if meta.name.is_none() && meta.generate_name.is_none() {
        let name = object.split_once('/').map_or(object, |(_, name)| name);
        meta.generate_name = Some(format!("{name}-"));
    }
    let spec: Option<PodSpec> = match fields.get("spec") {
        Some(spec) => {
            Some(serde_json::from_value(spec.clone()).map_err(|e| bad(format!("spec: {e}")))?)
        }
        None => None,
    };
    // Offline there is no namespace to ask: `inject` asks for every workload it is given.
    let asked = BTreeMap::from([(INJECT_ANNOTATION.to_owned(), "enabled".to_owned())]);
    match mesh_inject::decide(&meta, spec.as_ref(), Some(&asked), config) {
        Decision::Inject(patch) => {
            json_patch::patch(template, &patch).map_err(|e| InjectError::Patch {
                object: object.to_owned(),
                reason: e.to_string(),
            })?;
            out.injected.push(object.to_owned());
            Ok(true)
        }
        Decision::Skipped(why, _) => {
            out.skipped.push((object.to_owned(), reason(why)));
            Ok(false)
        }
        Decision::Unchanged => Ok(false),
    }
}

fn reason(why: Skip) -> &'static str {
    match why {
        Skip::AlreadyInjected => "already injected",
        Skip::HostNetwork => "uses the host's network",
        Skip::OptedOut => "its pod template says mesh.dev/inject: disabled",
        Skip::NoContainers => "its pod template has no containers",
    }
}

/// Only comments and blank lines.
fn is_blank(document: &str) -> bool {
    document
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
}

/// The documents of a YAML stream, each with the separator line that precedes it (empty for
/// the first): `---` lines, possibly followed by a comment.
fn split_documents(input: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut separator = 0..0;
    let mut start = 0;
    let mut offset = 0;
    for line in input.split_inclusive('\n') {
        let bare = line.trim_end();
        let is_separator = bare == "---" || bare.starts_with("--- #");
        if is_separator {
            out.push((&input[separator.clone()], &input[start..offset]));
            separator = offset..offset + line.len();
            start = offset + line.len();
        }
        offset += line.len();
    }
    out.push((&input[separator], &input[start..]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_split_and_join_back_to_the_input() {
        for input in [
            "",
            "a: 1\n",
            "---\na: 1\n---\nb: 2\n",
            "# head\na: 1\n--- # second\nb: 2\n---\n",
            "a: |\n  ---x\nb: 1",
        ] {
            let joined: String = split_documents(input)
                .into_iter()
                .map(|(s, d)| format!("{s}{d}"))
                .collect();
            assert_eq!(joined, input);
        }
        assert_eq!(split_documents("a: 1\n---\nb: 2\n").len(), 2);
    }
}
