//! `kube::Api` against the fake: list, get, watch, paging, writes, 410s.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

mod common;

use std::time::Duration;

use common::{SERVICE_LABEL, names, service, set, slice};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{
    TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::core::ResourceExt;
use mesh_kube_fake::{FakeApiServer, WriteOutcome};

fn event_summary(ev: &WatchEvent<EndpointSlice>) -> (String, String, u64) {
    let (ty, obj) = match ev {
        WatchEvent::Added(o) => ("ADDED", o),
        WatchEvent::Modified(o) => ("MODIFIED", o),
        WatchEvent::Deleted(o) => ("DELETED", o),
        other => panic!("unexpected event {other:?}"),
    };
    (
        ty.to_owned(),
        obj.name_any(),
        obj.resource_version().unwrap().parse().unwrap(),
    )
}

#[tokio::test]
async fn list_then_watch_endpoint_slices_by_service_label() {
    let server = FakeApiServer::start().await;
    server.apply(slice("demo", "web-1", "web", &["10.0.0.1"]));
    server.apply(slice("demo", "api-1", "api", &["10.0.1.1"]));
    server.apply(slice("other", "web-x", "web", &["10.0.2.1"]));

    let api: Api<EndpointSlice> = Api::namespaced(server.client(), "demo");
    let selector = format!("{SERVICE_LABEL}=web");
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert_eq!(names(&list.items), set(&["web-1"]));
    let list_rv = list.metadata.resource_version.clone().unwrap();
    assert_eq!(list_rv, server.resource_version().to_string());
    let web1 = &list.items[0];
    assert!(web1.metadata.uid.is_some());
    assert!(web1.metadata.creation_timestamp.is_some());
    assert_eq!(web1.metadata.generation, Some(1));

    // Every namespace.
    let all: Api<EndpointSlice> = Api::all(server.client());
    let everything = all
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    assert_eq!(names(&everything.items), set(&["web-1", "web-x"]));
    // The existence form and a field selector.
    let by_key = api
        .list(&ListParams::default().labels(SERVICE_LABEL))
        .await
        .unwrap();
    assert_eq!(names(&by_key.items), set(&["api-1", "web-1"]));
    let by_name = all
        .list(&ListParams::default().fields("metadata.name=api-1"))
        .await
        .unwrap();
    assert_eq!(names(&by_name.items), set(&["api-1"]));
    let both = api
        .list(&ListParams::default().labels(&format!("{SERVICE_LABEL}=web,{SERVICE_LABEL}")))
        .await
        .unwrap();
    assert_eq!(names(&both.items), set(&["web-1"]));

    let wp = WatchParams::default().labels(&selector).timeout(20);
    let mut events = api.watch(&wp, &list_rv).await.unwrap().boxed();

    server.apply(slice("demo", "web-2", "web", &["10.0.0.2"])); // ADDED
    server.apply(slice("demo", "api-2", "api", &["10.0.1.2"])); // not selected
    server.apply(slice("other", "web-y", "web", &["10.0.2.2"])); // other namespace
    server.apply(slice("demo", "web-1", "web", &["10.0.0.1", "10.0.0.3"])); // MODIFIED
    server.delete::<EndpointSlice>("demo", "web-2"); // DELETED
    server.apply(slice("demo", "web-1", "moved", &["10.0.0.1"])); // leaves the selector: DELETED

    let mut seen = Vec::new();
    for _ in 0..4 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("the stream is open");
        seen.push(event_summary(&ev));
    }
    let kinds: Vec<(&str, &str)> = seen
        .iter()
        .map(|(t, n, _)| (t.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("ADDED", "web-2"),
            ("MODIFIED", "web-1"),
            ("DELETED", "web-2"),
            ("DELETED", "web-1")
        ]
    );
    assert!(
        seen.windows(2).all(|w| w[0].2 < w[1].2),
        "RVs increase: {seen:?}"
    );
    assert_eq!(seen[3].2, server.resource_version());
    let modified = server.get::<EndpointSlice>("demo", "web-1").unwrap();
    assert_eq!(
        modified.metadata.generation,
        Some(3),
        "endpoints changed twice"
    );

    // Replay from the list RV gives the same events.
    let replayed: Vec<_> = api
        .watch(
            &WatchParams::default().labels(&selector).timeout(1),
            &list_rv,
        )
        .await
        .unwrap()
        .take(4)
        .try_collect()
        .await
        .unwrap();
    let replayed: Vec<_> = replayed.iter().map(event_summary).collect();
    assert_eq!(replayed, seen);
}

#[tokio::test]
async fn watch_from_zero_starts_with_current_state_and_timeout_ends_it() {
    let server = FakeApiServer::start().await;
    server.apply(slice("demo", "web-1", "web", &["10.0.0.1"]));
    server.apply(slice("demo", "web-2", "web", &["10.0.0.2"]));
    let api: Api<EndpointSlice> = Api::namespaced(server.client(), "demo");
    let started = tokio::time::Instant::now();
    let events: Vec<_> = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    let added: Vec<_> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(o) => o.name_any(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(added, ["web-1", "web-2"]);
}

#[tokio::test]
async fn too_old_resource_version_is_410_expired() {
    let server = FakeApiServer::start().await;
    server.apply(slice("demo", "web-1", "web", &["10.0.0.1"]));
    let old_rv = server.resource_version();
    server.apply(slice("demo", "web-2", "web", &["10.0.0.2"]));
    server.compact();
    let api: Api<EndpointSlice> = Api::namespaced(server.client(), "demo");
    let mut events = api
        .watch(&WatchParams::default(), &old_rv.to_string())
        .await
        .unwrap()
        .boxed();
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Error(status)) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
            assert_eq!(
                status.message,
                format!(
                    "too old resource version: {old_rv} ({})",
                    server.resource_version()
                )
            );
        }
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }
    assert!(
        events.try_next().await.unwrap().is_none(),
        "the stream ends after the error"
    );

    // The history window: with room for one event only, resuming from two
    // events back is expired too.
    server.set_history_window(1);
    let rv = server.resource_version();
    server.apply(slice("demo", "web-3", "web", &["10.0.0.3"]));
    server.apply(slice("demo", "web-4", "web", &["10.0.0.4"]));
    let mut events = api
        .watch(&WatchParams::default(), &rv.to_string())
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(events.try_next().await.unwrap(), Some(WatchEvent::Error(s)) if s.code == 410)
    );
    let mut events = api
        .watch(&WatchParams::default().timeout(1), &(rv + 1).to_string())
        .await
        .unwrap()
        .boxed();
    assert!(
        matches!(events.try_next().await.unwrap(), Some(WatchEvent::Added(o)) if o.name_any() == "web-4")
    );
}

#[tokio::test]
async fn paged_lists_are_consistent_snapshots() {
    let server = FakeApiServer::start().await;
    for i in 0..5 {
        server.apply(slice("demo", &format!("web-{i}"), "web", &["10.0.0.1"]));
    }
    let api: Api<EndpointSlice> = Api::namespaced(server.client(), "demo");
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), set(&["web-0", "web-1"]));
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().unwrap();
    // Changes after the first page do not show up in the later pages.
    server.apply(slice("demo", "web-9", "web", &["10.0.0.1"]));
    server.delete::<EndpointSlice>("demo", "web-4");
    let rest = api
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&rest.items), set(&["web-2", "web-3", "web-4"]));
    assert_eq!(
        rest.metadata.resource_version,
        first.metadata.resource_version
    );
    assert!(rest.metadata.continue_.is_none());
    // Once compacted, the token is too old.
    server.compact();
    let err = api
        .list(&ListParams::default().continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 410),
        "{err:?}"
    );
}

#[tokio::test]
async fn http_writes_get_and_errors() {
    let server = FakeApiServer::start().await;
    let api: Api<Service> = Api::namespaced(server.client(), "demo");
    let created = api
        .create(
            &PostParams::default(),
            &service("demo", "web", "10.96.0.10"),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.resource_version(),
        Some(server.resource_version().to_string())
    );
    let err = api
        .create(
            &PostParams::default(),
            &service("demo", "web", "10.96.0.10"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    let fetched = api.get("web").await.unwrap();
    assert_eq!(fetched.metadata.uid, created.metadata.uid);
    let err = api.get("missing").await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404 && s.message == "services \"missing\" not found"),
        "{err:?}"
    );

    let patched = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {"tier": "front"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.labels().get("tier").map(String::as_str),
        Some("front")
    );
    assert_eq!(patched.metadata.generation, Some(1), "labels are not spec");

    let mut stale = fetched.clone();
    stale.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.11".to_owned());
    let err = api
        .replace("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );
    let mut fresh = patched.clone();
    fresh.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.11".to_owned());
    let replaced = api
        .replace("web", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));

    // Re-applying the same object is a no-op, as on the real server.
    let rv = server.resource_version();
    let (_, outcome) = server
        .try_apply(server.get::<Service>("demo", "web").unwrap())
        .unwrap();
    assert_eq!(outcome, WriteOutcome::Unchanged);
    assert_eq!(server.resource_version(), rv);

    api.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(server.get::<Service>("demo", "web").is_none());
    let err = api
        .list(&ListParams::default().labels("in in in"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400),
        "{err:?}"
    );
    let err = api
        .list(&ListParams::default().fields("spec.foo=bar"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400 && s.message.contains("field label not supported")),
        "{err:?}"
    );

    let verbs: Vec<&str> = server.requests().iter().map(|r| r.verb).collect();
    assert_eq!(
        verbs,
        [
            "create", "create", "get", "get", "patch", "update", "update", "delete", "list", "list"
        ]
    );
}

#[tokio::test]
async fn token_reviews_use_the_responder() {
    let server = FakeApiServer::builder()
        .token_reviewer(|review| {
            let ok = review.spec.token.as_deref() == Some("good");
            TokenReviewStatus {
                authenticated: Some(ok),
                user: ok.then(|| UserInfo {
                    username: Some("system:serviceaccount:demo:web".to_owned()),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            }
        })
        .start()
        .await;
    let api: Api<TokenReview> = Api::all(server.client());
    let review = |token: &str| TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            ..TokenReviewSpec::default()
        },
        ..TokenReview::default()
    };
    let good = api
        .create(&PostParams::default(), &review("good"))
        .await
        .unwrap();
    let status = good.status.unwrap();
    assert_eq!(status.authenticated, Some(true));
    assert_eq!(
        status.user.unwrap().username.as_deref(),
        Some("system:serviceaccount:demo:web")
    );
    let bad = api
        .create(&PostParams::default(), &review("bad"))
        .await
        .unwrap();
    assert_eq!(bad.status.unwrap().authenticated, Some(false));
}

#[tokio::test]
async fn stop_resets_open_watches_and_refuses_until_restart() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = FakeApiServer::start().await;
    server.apply(slice("demo", "web-1", "web", &["10.0.0.1"]));
    let mut conn = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let request = "GET /apis/discovery.k8s.io/v1/namespaces/demo/endpointslices?watch=true&resourceVersion=0 HTTP/1.1\r\nHost: fake\r\n\r\n";
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let mut got = String::new();
    while !got.contains("\"ADDED\"") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the watch ended early: {got}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{got}"
    );
    assert!(got.contains("content-type: application/json"), "{got}");

    server.stop().await;
    let err = conn
        .read(&mut buf)
        .await
        .expect_err("a reset, not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(
        tokio::net::TcpStream::connect(server.addr()).await.is_err(),
        "refused while stopped"
    );

    server.restart().await;
    let api: Api<EndpointSlice> = Api::namespaced(server.client(), "demo");
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1,
        "same store"
    );
}

#[tokio::test]
async fn extra_cluster_scoped_resources_can_be_served() {
    use k8s_openapi::api::core::v1::Namespace;

    let server = FakeApiServer::builder()
        .resource::<Namespace>()
        .start()
        .await;
    let api: Api<Namespace> = Api::all(server.client());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "demo"}})).unwrap();
    let created = api.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    assert_eq!(created.metadata.namespace, None);
    assert_eq!(api.get("demo").await.unwrap().name_any(), "demo");
    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(names(&list.items), set(&["demo"]));
    // Namespaced kinds still route under /namespaces/{ns}/.
    server.apply(service("demo", "web", "10.96.0.10"));
    let svcs: Api<Service> = Api::namespaced(server.client(), "demo");
    assert_eq!(
        svcs.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let err = server
        .try_apply(k8s_openapi::api::core::v1::ConfigMap::default())
        .unwrap_err();
    assert!(
        matches!(err, mesh_kube_fake::Error::UnsupportedKind(_)),
        "{err}"
    );
}

/// Mutating webhooks on create: a webhook that cannot be called refuses the object under
/// `failurePolicy: Fail` (the default) and lets it through under `Ignore`, each call recorded;
/// a namespace the selector leaves out is not sent to the webhook at all.
#[tokio::test]
async fn failing_webhooks_refuse_or_ignore_as_their_policy_says() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::core::v1::Pod;
    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = FakeApiServer::builder()
        .resource::<MutatingWebhookConfiguration>()
        .webhook_service("hooks", "inject", 443, dead)
        .start()
        .await;
    let webhook = |policy: &str| -> MutatingWebhookConfiguration {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "hook"},
            "webhooks": [{
                "name": "inject.example.dev",
                "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": policy,
                "clientConfig": {"service": {"name": "inject", "namespace": "hooks", "port": 443},
                                 "caBundle": "LS0tLS0="},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]}
            }]
        }))
        .unwrap()
    };
    let pod = |name: &str| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "app", "image": "app"}]}
        }))
        .unwrap()
    };
    let client = server.client();
    let demo: Api<Pod> = Api::namespaced(client.clone(), "demo");

    server.apply(webhook("Fail"));
    let refused = demo
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("failed calling webhook \"inject.example.dev\""),
        "{refused}"
    );
    assert!(demo.get_opt("a").await.unwrap().is_none());

    server.apply(webhook("Ignore"));
    demo.create(&PostParams::default(), &pod("b"))
        .await
        .unwrap();

    // kube-system is not selected: no call.
    let system: Api<Pod> = Api::namespaced(client, "kube-system");
    system
        .create(&PostParams::default(), &pod("c"))
        .await
        .unwrap();

    let calls = server.webhook_calls();
    let objects: Vec<&str> = calls.iter().map(|c| c.object.as_str()).collect();
    assert_eq!(objects, ["demo/a", "demo/b"], "{calls:?}");
    assert!(calls.iter().all(|c| c.outcome.is_err()), "{calls:?}");
}
