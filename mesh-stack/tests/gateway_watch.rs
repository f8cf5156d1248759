//! The Gateway API watch against a stand-in API server: routes of both kinds arrive, and a
//! cluster without the GRPCRoute CRD is still served its HTTPRoutes.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "a test fails loudly")]

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
    let api = FakeApiServer::builder()
        .resource::<Gateway>()
        .resource::<HttpRoute>()
        .resource::<GrpcRoute>()
        .resource::<Secret>()
        .start()
        .await;
    api.apply(gateway());
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
    let api = FakeApiServer::builder()
        .resource::<Gateway>()
        .resource::<HttpRoute>()
        .resource::<Secret>()
        .start()
        .await;
    api.apply(gateway());
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
