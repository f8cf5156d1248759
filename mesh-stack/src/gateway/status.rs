//! What the ingress writes back to the Gateway API, so that `kubectl get gateway` shows it
//! programmed and `kubectl describe httproute` says whether the route was accepted:
//!
//! - the Gateway: `Accepted` and `Programmed`, and per listener the kinds of route it takes,
//!   how many routes are attached and whether its certificates resolved (`ResolvedRefs`,
//!   `InvalidCertificateRef` with the reason);
//! - each attached HTTPRoute and GRPCRoute: one entry of `status.parents` for this Gateway,
//!   with `controllerName: mesh.dev/ingress`, `Accepted` (false, `UnsupportedValue`, when none
//!   of its rules can be served) and `ResolvedRefs` (false, `InvalidKind`, when a backend is
//!   not a Service), removed again when the route leaves the Gateway. Other controllers'
//!   entries are kept as they are.
//!
//! A status is written only when it differs from what the object has and from what was last
//! written (the watch may not have caught up with a write yet), and a condition keeps its
//! `lastTransitionTime` while its status stays: replicas that compute the same status write
//! nothing, and a write does not make the next one.

use serde_json::{Value, json};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    GROUP, Gateway, GatewayRef, GrpcRoute, HttpRoute, ObjectRef, Route, RouteRule, attaches,
    rules_of,
};

/// The controller the GatewayClass `mesh` names.
pub const CONTROLLER_NAME: &str = "mesh.dev/ingress";

/// A status to write: the object's kind, namespace, name and its whole new `status`.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusWrite {
    /// `Gateway`, `HTTPRoute` or `GRPCRoute`.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The status.
    pub status: Value,
}

/// What a rule-by-rule look at one route found.
struct RouteVerdict {
    served: usize,
    problems: Vec<String>,
    not_a_service: bool,
}

fn verdict(results: impl Iterator<Item = Result<(), String>>) -> RouteVerdict {
    let mut v = RouteVerdict {
        served: 0,
        problems: Vec::new(),
        not_a_service: false,
    };
    for result in results {
        match result {
            Ok(()) => v.served += 1,
            Err(why) => {
                v.not_a_service |= why.contains("is not a Service");
                v.problems.push(why);
            }
        }
    }
    v
}

/// Whether two statuses say the same, the times their conditions changed aside.
pub fn same(a: &Value, b: &Value) -> bool {
    fn without_times(v: &Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.iter()
                    .filter(|(k, _)| *k != "lastTransitionTime")
                    .map(|(k, v)| (k.clone(), without_times(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(without_times).collect()),
            other => other.clone(),
        }
    }
    without_times(a) == without_times(b)
}

/// The time a condition changed, as the API writes it.
fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A condition; its `lastTransitionTime` is the previous one's when its status is the same.
fn condition(
    kind: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: Option<&Value>,
) -> Value {
    let status = if ok { "True" } else { "False" };
    let since = previous
        .and_then(|conditions| conditions.as_array())
        .and_then(|all| all.iter().find(|c| c["type"] == kind))
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .map_or_else(now, str::to_owned);
    let mut c = json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    });
    if let Some(generation) = generation {
        c["observedGeneration"] = json!(generation);
    }
    c
}

/// Whether a `status.parents` entry is the one this ingress writes for `gateway`.
fn is_ours(entry: &Value, gateway: &GatewayRef) -> bool {
    entry["controllerName"] == CONTROLLER_NAME
        && entry["parentRef"]["name"] == gateway.name.as_str()
        && entry["parentRef"]["namespace"] == gateway.namespace.as_str()
}

/// The `status.parents` entry of a route for `gateway`, the entries of others kept.
fn route_status(
    current: Option<&Value>,
    parent: &ObjectRef,
    gateway: &GatewayRef,
    verdict: &RouteVerdict,
    generation: Option<i64>,
) -> Value {
    let ours = |entry: &Value| is_ours(entry, gateway);
    let mut parents: Vec<Value> = current
        .and_then(|s| s["parents"].as_array())
        .map(|all| all.iter().filter(|e| !ours(e)).cloned().collect())
        .unwrap_or_default();
    let previous = current
        .and_then(|s| s["parents"].as_array())
        .and_then(|all| all.iter().find(|e| ours(e)))
        .map(|e| &e["conditions"]);
    let message = if verdict.problems.is_empty() {
        "Accepted by mesh-ingress".to_owned()
    } else {
        verdict.problems.join("; ")
    };
    let accepted = verdict.served > 0;
    let mut parent_ref = json!({
        "group": GROUP,
        "kind": "Gateway",
        "namespace": gateway.namespace,
        "name": gateway.name,
    });
    if let Some(section) = &parent.section_name {
        parent_ref["sectionName"] = json!(section);
    }
    if let Some(port) = parent.port {
        parent_ref["port"] = json!(port);
    }
    parents.push(json!({
        "parentRef": parent_ref,
        "controllerName": CONTROLLER_NAME,
        "conditions": [
            condition(
                "Accepted",
                accepted,
                if accepted { "Accepted" } else { "UnsupportedValue" },
                &message,
                generation,
                previous,
            ),
            condition(
                "ResolvedRefs",
                !verdict.not_a_service,
                if verdict.not_a_service { "InvalidKind" } else { "ResolvedRefs" },
                &message,
                generation,
                previous,
            ),
        ],
    }));
    json!({ "parents": parents })
}

/// The parentRef of `route` that names `gateway`.
fn our_parent<'a>(
    metadata: &ObjectMeta,
    parents: &'a [ObjectRef],
    gateway: &GatewayRef,
) -> Option<&'a ObjectRef> {
    parents
        .iter()
        .find(|p| attaches(metadata, std::slice::from_ref(*p), gateway))
}

/// The status of each route of `routes` attached to `gateway`, given to `write`; `attached`
/// counts them.
fn route_statuses<R: RouteRule>(
    routes: &[std::sync::Arc<Route<R>>],
    gateway: &GatewayRef,
    cluster_domain: &str,
    attached: &mut usize,
    write: &mut impl FnMut(&'static str, &ObjectMeta, Option<&Value>, Value),
) {
    for route in routes {
        let Some(parent) = our_parent(&route.metadata, &route.spec.parent_refs, gateway) else {
            // Detached from the Gateway (or never attached): the entry written while it was
            // attached goes; the others stay.
            let parents = route.status.as_ref().and_then(|s| s["parents"].as_array());
            if let Some(parents) = parents
                && parents.iter().any(|e| is_ours(e, gateway))
            {
                let others: Vec<Value> = parents
                    .iter()
                    .filter(|e| !is_ours(e, gateway))
                    .cloned()
                    .collect();
                let status = json!({ "parents": others });
                write(R::KIND, &route.metadata, route.status.as_ref(), status);
            }
            continue;
        };
        *attached += 1;
        let v = verdict(
            rules_of(route, cluster_domain)
                .into_iter()
                .map(|(_, config)| config.map(drop)),
        );
        let status = route_status(
            route.status.as_ref(),
            parent,
            gateway,
            &v,
            route.metadata.generation,
        );
        write(R::KIND, &route.metadata, route.status.as_ref(), status);
    }
}

/// Every status that differs from what the objects have: the Gateway's (when it exists) and
/// each attached route's. `certificate_problems` are those of the Gateway's certificates.
pub fn statuses(
    gateway: &GatewayRef,
    found: Option<&Gateway>,
    http_routes: &[std::sync::Arc<HttpRoute>],
    grpc_routes: &[std::sync::Arc<GrpcRoute>],
    certificate_problems: &[String],
    cluster_domain: &str,
) -> Vec<StatusWrite> {
    let mut writes = Vec::new();
    let mut attached = 0usize;
    let mut write = |kind,
                     metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
                     current: Option<&Value>,
                     status: Value| {
        // Only what is written is compared: a key someone else wrote stays, and must not
        // make every look a write.
        let same = current.is_some_and(|current| {
            status
                .as_object()
                .is_some_and(|ours| ours.iter().all(|(k, v)| current.get(k) == Some(v)))
        });
        if !same {
            writes.push(StatusWrite {
                kind,
                namespace: metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: metadata.name.clone().unwrap_or_default(),
                status,
            });
        }
    };
    route_statuses(
        http_routes,
        gateway,
        cluster_domain,
        &mut attached,
        &mut write,
    );
    route_statuses(
        grpc_routes,
        gateway,
        cluster_domain,
        &mut attached,
        &mut write,
    );
    if let Some(gw) = found {
        let current = gw.status.as_ref();
        let generation = gw.metadata.generation;
        let previous_listener = |name: &str| {
            current
                .and_then(|s| s["listeners"].as_array())
                .and_then(|all| all.iter().find(|l| l["name"] == name))
                .map(|l| &l["conditions"])
        };
        let listeners: Vec<Value> = gw
            .spec
            .listeners
            .iter()
            .map(|listener| {
                let refs = listener
                    .tls
                    .as_ref()
                    .map(|t| t.certificate_refs.as_slice())
                    .unwrap_or_default();
                let problems: Vec<&String> = certificate_problems
                    .iter()
                    .filter(|p| {
                        p.contains(&format!("listener {:?}", listener.name))
                            || refs.iter().any(|r| p.contains(&format!("/{} ", r.name)))
                            || refs.iter().any(|r| p.ends_with(&format!("/{}", r.name)))
                    })
                    .collect();
                let resolved = problems.is_empty();
                let message = if resolved {
                    "Programmed by mesh-ingress".to_owned()
                } else {
                    problems
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let previous = previous_listener(&listener.name);
                json!({
                    "name": listener.name,
                    "supportedKinds": [
                        {"group": GROUP, "kind": "HTTPRoute"},
                        {"group": GROUP, "kind": "GRPCRoute"},
                    ],
                    "attachedRoutes": attached,
                    "conditions": [
                        condition("Accepted", true, "Accepted", "Accepted by mesh-ingress", generation, previous),
                        condition("Programmed", true, "Programmed", "Programmed by mesh-ingress", generation, previous),
                        condition(
                            "ResolvedRefs",
                            resolved,
                            if resolved { "ResolvedRefs" } else { "InvalidCertificateRef" },
                            &message,
                            generation,
                            previous,
                        ),
                    ],
                })
            })
            .collect();
        let previous = current.map(|s| &s["conditions"]);
        let status = json!({
            "conditions": [
                condition("Accepted", true, "Accepted", "Accepted by mesh-ingress", generation, previous),
                condition("Programmed", true, "Programmed", "Programmed by mesh-ingress", generation, previous),
            ],
            "listeners": listeners,
        });
        write("Gateway", &gw.metadata, current, status);
    }
    writes
}

/// Writes `status` with a merge patch of the status subresource, bounded by `timeout`.
pub async fn write(
    client: &kube::Client,
    w: &StatusWrite,
    timeout: std::time::Duration,
) -> Result<(), String> {
    use kube::api::{Patch, PatchParams};
    let patch = Patch::Merge(json!({ "status": w.status }));
    let params = PatchParams::default();
    let sent = async {
        match w.kind {
            "Gateway" => kube::Api::<Gateway>::namespaced(client.clone(), &w.namespace)
                .patch_status(&w.name, &params, &patch)
                .await
                .map(drop),
            "HTTPRoute" => kube::Api::<HttpRoute>::namespaced(client.clone(), &w.namespace)
                .patch_status(&w.name, &params, &patch)
                .await
                .map(drop),
            _ => kube::Api::<GrpcRoute>::namespaced(client.clone(), &w.namespace)
                .patch_status(&w.name, &params, &patch)
                .await
                .map(drop),
        }
    };
    match tokio::time::timeout(timeout, sent).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
