//! Objects and polling helpers shared by the tests.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

pub(crate) const SERVICE_LABEL: &str = "kubernetes.io/service-name";

pub(crate) fn slice(ns: &str, name: &str, service: &str, addresses: &[&str]) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {SERVICE_LABEL: service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": addresses.iter().map(|a| json!({
            "addresses": [a],
            "conditions": {"ready": true},
        })).collect::<Vec<_>>(),
    }))
    .expect("a valid EndpointSlice")
}

pub(crate) fn service(ns: &str, name: &str, cluster_ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    }))
    .expect("a valid Service")
}

pub(crate) fn pod(ns: &str, name: &str, ip: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "app", "image": "example/app:1"}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "containerStatuses": [{
                "name": "app", "image": "example/app:1", "imageID": "", "ready": true,
                "restartCount": 0, "started": true, "state": {"running": {}},
            }],
        },
    }))
    .expect("a valid Pod")
}

pub(crate) fn names<'a, K: kube::ResourceExt + 'a>(
    objs: impl IntoIterator<Item = &'a K>,
) -> BTreeSet<String> {
    objs.into_iter().map(|o| o.name_any()).collect()
}

pub(crate) fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Polls `f` every 20 ms until it is true; panics with `what` after `secs`.
pub(crate) async fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
