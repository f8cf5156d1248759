//! `meta.k8s.io/v1` `Table` rendering for `kubectl get`'s server-side
//! printing (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with
//! the columns kube-apiserver's printers use for the served kinds.

use serde_json::{Value, json};

use crate::meta::{ResourceType, age};

fn column(name: &str, ty: &str, priority: u8, description: &str) -> Value {
    let mut c = json!({"name": name, "type": ty, "format": "", "description": description, "priority": priority});
    if name == "Name"
        && let Some(m) = c.as_object_mut()
    {
        m.insert("format".to_owned(), Value::from("name"));
    }
    c
}

fn columns(rt: &ResourceType) -> Vec<Value> {
    let name = column(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age_col = column(
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match (rt.group, rt.kind) {
        ("", "Service") => vec![
            name,
            column(
                "Type",
                "string",
                0,
                "type determines how the Service is exposed.",
            ),
            column(
                "Cluster-IP",
                "string",
                0,
                "clusterIP is the IP address of the service.",
            ),
            column(
                "External-IP",
                "string",
                0,
                "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.",
            ),
            column(
                "Port(s)",
                "string",
                0,
                "The list of ports that are exposed by this service.",
            ),
            age_col,
            column(
                "Selector",
                "string",
                1,
                "Route service traffic to pods with label keys and values matching this selector.",
            ),
        ],
        ("", "Pod") => vec![
            name,
            column(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            column(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            column(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            age_col,
            column("IP", "string", 1, "podIP address allocated to the pod."),
            column(
                "Node",
                "string",
                1,
                "Name of the Node the Pod is assigned to.",
            ),
            column(
                "Nominated Node",
                "string",
                1,
                "nominatedNodeName is set when this pod preempts other pods on the node.",
            ),
            column(
                "Readiness Gates",
                "string",
                1,
                "If specified, all readiness gates will be evaluated for pod readiness.",
            ),
        ],
        ("discovery.k8s.io", "EndpointSlice") => vec![
            name,
            column(
                "AddressType",
                "string",
                0,
                "addressType specifies the type of address carried by this EndpointSlice.",
            ),
            column(
                "Ports",
                "string",
                0,
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
            ),
            column(
                "Endpoints",
                "string",
                0,
                "endpoints is a list of unique endpoints in this slice.",
            ),
            age_col,
        ],
        _ => vec![name, age_col],
    }
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn array_at<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// `listWithMoreString`: up to three entries, then "+ N more...".
fn list_with_more(items: Vec<String>) -> String {
    let count = items.len();
    let mut s = items.into_iter().take(3).collect::<Vec<_>>().join(",");
    if count > 3 {
        s = format!("{s} + {} more...", count - 3);
    }
    if s.is_empty() {
        "<unset>".to_owned()
    } else {
        s
    }
}

fn service_cells(obj: &Value) -> Vec<Value> {
    let ty = str_at(obj, "/spec/type").unwrap_or("ClusterIP");
    let cluster_ip = str_at(obj, "/spec/clusterIP").unwrap_or("<none>");
    let mut external: Vec<String> = array_at(obj, "/spec/externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let external_ip = match ty {
        "ExternalName" => str_at(obj, "/spec/externalName")
            .unwrap_or("<none>")
            .to_owned(),
        "LoadBalancer" => {
            for ing in array_at(obj, "/status/loadBalancer/ingress") {
                if let Some(v) = str_at(ing, "/ip").or_else(|| str_at(ing, "/hostname")) {
                    external.push(v.to_owned());
                }
            }
            if external.is_empty() {
                "<pending>".to_owned()
            } else {
                external.join(",")
            }
        }
        _ if external.is_empty() => "<none>".to_owned(),
        _ => external.join(","),
    };
    let ports: Vec<String> = array_at(obj, "/spec/ports")
        .iter()
        .map(|p| {
            let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
            let proto = str_at(p, "/protocol").unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    let ports = if ports.is_empty() {
        "<none>".to_owned()
    } else {
        ports.join(",")
    };
    let selector = obj
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .map_or_else(
            || "<none>".to_owned(),
            |m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(",")
            },
        );
    vec![
        ty.into(),
        cluster_ip.into(),
        external_ip.into(),
        ports.into(),
        age(str_at(obj, "/metadata/creationTimestamp")).into(),
        selector.into(),
    ]
}

fn pod_cells(obj: &Value) -> Vec<Value> {
    let total = array_at(obj, "/spec/containers").len();
    let statuses = array_at(obj, "/status/containerStatuses");
    let ready = statuses
        .iter()
        .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses
        .iter()
        .filter_map(|s| s.get("restartCount").and_then(Value::as_i64))
        .sum();
    let mut reason = str_at(obj, "/status/reason")
        .or_else(|| str_at(obj, "/status/phase"))
        .unwrap_or_default()
        .to_owned();
    for s in statuses {
        if let Some(r) =
            str_at(s, "/state/waiting/reason").or_else(|| str_at(s, "/state/terminated/reason"))
        {
            reason = r.to_owned();
        }
    }
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".to_owned();
    }
    let gates = array_at(obj, "/spec/readinessGates");
    let gates = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let true_conditions = gates
            .iter()
            .filter(|g| {
                let ty = str_at(g, "/conditionType");
                array_at(obj, "/status/conditions")
                    .iter()
                    .any(|c| str_at(c, "/type") == ty && str_at(c, "/status") == Some("True"))
            })
            .count();
        format!("{true_conditions}/{}", gates.len())
    };
    vec![
        format!("{ready}/{total}").into(),
        reason.into(),
        restarts.to_string().into(),
        age(str_at(obj, "/metadata/creationTimestamp")).into(),
        str_at(obj, "/status/podIP").unwrap_or("<none>").into(),
        str_at(obj, "/spec/nodeName").unwrap_or("<none>").into(),
        str_at(obj, "/status/nominatedNodeName")
            .unwrap_or("<none>")
            .into(),
        gates.into(),
    ]
}

fn endpoint_slice_cells(obj: &Value) -> Vec<Value> {
    let ports = array_at(obj, "/ports")
        .iter()
        .map(|p| match p.get("port").and_then(Value::as_i64) {
            Some(n) => n.to_string(),
            None => str_at(p, "/name").unwrap_or("*").to_owned(),
        })
        .collect();
    let endpoints = array_at(obj, "/endpoints")
        .iter()
        .filter_map(|e| {
            array_at(e, "/addresses")
                .first()?
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    vec![
        str_at(obj, "/addressType").unwrap_or_default().into(),
        list_with_more(ports).into(),
        list_with_more(endpoints).into(),
        age(str_at(obj, "/metadata/creationTimestamp")).into(),
    ]
}

/// What each row carries in `object`, per `includeObject`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IncludeObject {
    None,
    Metadata,
    Object,
}

fn row(rt: &ResourceType, obj: &Value, include: IncludeObject) -> Value {
    let name = str_at(obj, "/metadata/name").unwrap_or_default();
    let mut cells = vec![Value::from(name)];
    cells.extend(match (rt.group, rt.kind) {
        ("", "Service") => service_cells(obj),
        ("", "Pod") => pod_cells(obj),
        ("discovery.k8s.io", "EndpointSlice") => endpoint_slice_cells(obj),
        _ => vec![age(str_at(obj, "/metadata/creationTimestamp")).into()],
    });
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
        IncludeObject::Object => {
            let mut o = obj.clone();
            if let Some(m) = o.as_object_mut() {
                m.insert("kind".to_owned(), rt.kind.into());
                m.insert("apiVersion".to_owned(), rt.api_version.into());
            }
            o
        }
    };
    json!({"cells": cells, "object": object})
}

/// A `Table` of the given objects; `list_meta` is the list's `metadata`.
pub(crate) fn table(
    rt: &ResourceType,
    objs: &[&Value],
    list_meta: Value,
    include: IncludeObject,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns(rt),
        "rows": objs.iter().map(|o| row(rt, o, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;

    #[test]
    fn endpoint_slice_row() {
        let rt = ResourceType::of::<EndpointSlice>();
        let obj = json!({
            "metadata": {"name": "web-abc", "namespace": "demo"},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}],
        });
        let t = table(
            &rt,
            &[&obj],
            json!({"resourceVersion": "3"}),
            IncludeObject::Metadata,
        );
        assert_eq!(t["columnDefinitions"].as_array().unwrap().len(), 5);
        assert_eq!(t["rows"][0]["cells"][0], "web-abc");
        assert_eq!(t["rows"][0]["cells"][2], "8080");
        assert_eq!(t["rows"][0]["cells"][3], "10.0.0.1,10.0.0.2");
        assert_eq!(t["rows"][0]["object"]["metadata"]["namespace"], "demo");
    }
}
