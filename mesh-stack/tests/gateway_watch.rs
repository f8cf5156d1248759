//! The Gateway API watch against a stand-in API server: routes of both kinds arrive, and a
//! cluster without the GRPCRoute CRD is still served its HTTPRoutes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly"
)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use mesh_core::drain::Drain;
use mesh_kube_fake::FakeApiServer;
use mesh_stack::gateway::{Gateway, GatewayState, GrpcRoute, HttpRoute, spawn_watch};
use serde_json::json;
use tokio::sync::mpsc;

fn gateway() -> Gateway {
    serde_json::from_value(json!({
        "metadata": {"name": "edge", "namespace": "edge"},
        "spec": {"gatewayClassName": "mesh", "listeners": [
            {"name": "http", "port": 80, "protocol": "HTTP"}
        ]}
    }))
    .unwrap()
}

fn http_route() -> HttpRoute {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"parentRefs": [{"name": "edge", "namespace": "edge"}],
                 "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}
    }))
    .unwrap()
}

fn grpc_route() -> GrpcRoute {
    serde_json::from_value(json!({
        "metadata": {"name": "cart", "namespace": "shop"},
        "spec": {"parentRefs": [{"name": "edge", "namespace": "edge"}],
                 "rules": [{"matches": [{"method": {"service": "shop.Cart"}}],
                            "backendRefs": [{"name": "cart", "port": 9000}]}]}
    }))
    .unwrap()
}

/// A stand-in API server with the Gateway `edge/edge`, serving GRPCRoutes if `grpc_routes`.
async fn api_server(grpc_routes: bool) -> FakeApiServer {
    let mut builder = FakeApiServer::builder()
        .resource::<Gateway>()
        .resource::<HttpRoute>()
        .resource::<Secret>();
    if grpc_routes {
        builder = builder.resource::<GrpcRoute>();
    }
    let api = builder.start().await;
    api.apply(gateway());
    api
}

/// Watches `edge/edge` on `api` until `drain`; the states it reports.
fn watch(api: &FakeApiServer, drain: &Drain) -> mpsc::UnboundedReceiver<GatewayState> {
    let (tx, rx) = mpsc::unbounded_channel();
    spawn_watch(
        api.client(),
        "edge/edge".parse().unwrap(),
        "cluster.local".into(),
        drain.clone(),
        move |state| {
            let _ = tx.send(state);
        },
    );
    rx
}

/// The first state whose route names are `names`, waiting at most 20 s.
async fn until_routes(
    rx: &mut mpsc::UnboundedReceiver<GatewayState>,
    names: &[&str],
) -> GatewayState {
    let wait = async {
        loop {
            let state = rx.recv().await.expect("the watch ended");
            let got: Vec<&str> = state.routes.iter().map(|r| r.name.as_str()).collect();
            if got == names {
                return state;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("never saw the routes {names:?}"))
}

#[tokio::test]
async fn http_and_grpc_routes_arrive_ranked_together() {
    let api = api_server(true).await;
    api.apply(http_route());
    let drain = Drain::new();
    let mut states = watch(&api, &drain);
    until_routes(&mut states, &["shop/web/0"]).await;
    api.apply(grpc_route());
    let state = until_routes(&mut states, &["shop/cart/0", "shop/web/0"]).await;
    assert_eq!(
        state.routes[0].backends[0].service,
        "cart.shop.svc.cluster.local:9000"
    );
    api.delete::<GrpcRoute>("shop", "cart");
    until_routes(&mut states, &["shop/web/0"]).await;
    drain.signal();
}

#[tokio::test]
async fn without_the_grpc_route_crd_http_routes_are_served() {
    // The stand-in API server knows no GRPCRoute: its list fails, as a cluster's does
    // without the CRD.
    let api = api_server(false).await;
    api.apply(http_route());
    let drain = Drain::new();
    let mut states = watch(&api, &drain);
    let state = until_routes(&mut states, &["shop/web/0"]).await;
    assert!(state.found);
    assert!(
        api.requests().iter().any(|r| r.path.contains("grpcroutes")),
        "the GRPCRoutes were asked for"
    );
    drain.signal();
}

/// The object `get` returns once `ready` holds for it, waiting at most 20 s.
async fn until<T>(get: impl Fn() -> Option<T>, ready: impl Fn(&T) -> bool) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = get().filter(|v| ready(v)) {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The conditions of our entry in a route's `status.parents`, as `type=status/reason`.
fn our_conditions(status: &serde_json::Value) -> Vec<String> {
    status["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["controllerName"] == "mesh.dev/ingress")
        .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            format!(
                "{}={}/{}",
                c["type"].as_str().unwrap_or(""),
                c["status"].as_str().unwrap_or(""),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test]
async fn the_gateway_and_its_routes_get_a_status() {
    let api = api_server(true).await;
    // Another controller's entry, which must stay.
    let mut web = http_route();
    web.status = Some(json!({"parents": [{
        "parentRef": {"name": "other"}, "controllerName": "example.com/other",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    }]}));
    api.apply(web);
    // A route none of whose rules can be served.
    api.apply(
        serde_json::from_value::<HttpRoute>(json!({
            "metadata": {"name": "bucket", "namespace": "shop"},
            "spec": {"parentRefs": [{"name": "edge", "namespace": "edge"}],
                     "rules": [{"backendRefs": [{"name": "b", "kind": "S3Bucket"}]}]}
        }))
        .unwrap(),
    );
    api.apply(grpc_route());
    let drain = Drain::new();
    let _states = watch(&api, &drain);

    let web = until(
        || api.get::<HttpRoute>("shop", "web"),
        |r| {
            r.status
                .as_ref()
                .is_some_and(|s| !our_conditions(s).is_empty())
        },
    )
    .await;
    let status = web.status.unwrap();
    assert_eq!(
        our_conditions(&status),
        ["Accepted=True/Accepted", "ResolvedRefs=True/ResolvedRefs"]
    );
    assert_eq!(status["parents"][0]["controllerName"], "example.com/other");
    let ours = &status["parents"][1];
    assert_eq!(
        ours["parentRef"],
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "edge", "name": "edge"})
    );

    let bucket = until(
        || api.get::<HttpRoute>("shop", "bucket"),
        |r| r.status.is_some(),
    )
    .await;
    let status = bucket.status.unwrap();
    assert_eq!(
        our_conditions(&status),
        [
            "Accepted=False/UnsupportedValue",
            "ResolvedRefs=False/InvalidKind"
        ]
    );
    assert!(
        status["parents"][0]["conditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("not a Service"),
        "{status}"
    );
    let cart = until(
        || api.get::<GrpcRoute>("shop", "cart"),
        |r| r.status.is_some(),
    )
    .await;
    assert_eq!(
        our_conditions(&cart.status.unwrap()),
        ["Accepted=True/Accepted", "ResolvedRefs=True/ResolvedRefs"]
    );

    let gw = until(
        || api.get::<Gateway>("edge", "edge"),
        |g| g.status.is_some(),
    )
    .await;
    let status = gw.status.unwrap();
    let types: Vec<&str> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Accepted", "Programmed"]);
    assert_eq!(status["listeners"][0]["name"], "http");
    assert_eq!(status["listeners"][0]["attachedRoutes"], 3);

    // Written once: what the next look computes is what is there, so nothing more is written.
    let patches = || {
        api.requests()
            .iter()
            .filter(|r| r.verb == "patch" && r.path.ends_with("/status"))
            .count()
    };
    let written = patches();
    assert_eq!(written, 4, "one write per object");
    api.apply(
        serde_json::from_value::<HttpRoute>(json!({
            "metadata": {"name": "unrelated", "namespace": "shop"},
            "spec": {"parentRefs": [{"name": "someone-else"}]}
        }))
        .unwrap(),
    );
    // A change that is not ours makes a new look; still nothing to write.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(patches(), written);

    // The web route moves to another Gateway: its entry for ours goes, the other stays.
    let mut moved = api.get::<HttpRoute>("shop", "web").unwrap();
    moved.spec.parent_refs[0].name = "elsewhere".into();
    api.apply(moved);
    let web = until(
        || api.get::<HttpRoute>("shop", "web"),
        |r| {
            r.status
                .as_ref()
                .is_some_and(|s| our_conditions(s).is_empty())
        },
    )
    .await;
    let parents = web.status.unwrap()["parents"].clone();
    assert_eq!(parents.as_array().map(Vec::len), Some(1), "{parents}");
    assert_eq!(parents[0]["controllerName"], "example.com/other");
    // The Gateway's count follows (written in the same look, just after).
    until(
        || api.get::<Gateway>("edge", "edge"),
        |g| {
            g.status
                .as_ref()
                .is_some_and(|s| s["listeners"][0]["attachedRoutes"] == 2)
        },
    )
    .await;
    let written = patches();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paths: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.verb == "patch")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        patches(),
        written,
        "{paths:?} {:?}",
        api.get::<Gateway>("edge", "edge")
    );
    drain.signal();
}
