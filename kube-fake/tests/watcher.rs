//! `kube::runtime::watcher` against the fake: state, restarts, 410 relists
//! and bookmarks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{SERVICE_LABEL, names, pod, set, slice, wait_until};
use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, WatchEvent, WatchParams};
use kube::runtime::reflector::{self, Store, reflector};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::DefaultBackoff;
use kube::runtime::{WatchStreamExt, watcher};
use mesh_kube_fake::{FakeApiServer, RecordedRequest, TestBackoff};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs a reflector over the `web` EndpointSlices in `demo`; returns its
/// store and the errors the watcher reported.
fn reflect(
    server: &FakeApiServer,
    config: watcher::Config,
) -> (Store<EndpointSlice>, Arc<Mutex<Vec<watcher::Error>>>) {
    reflect_with(server, config, TestBackoff::default())
}

/// [`reflect`] with this backoff.
fn reflect_with(
    server: &FakeApiServer,
    config: watcher::Config,
    backoff: impl Backoff + 'static,
) -> (Store<EndpointSlice>, Arc<Mutex<Vec<watcher::Error>>>) {
    let api: Api<EndpointSlice> = Api::namespaced(server.client(), "demo");
    let (reader, writer) = reflector::store();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let errs = errors.clone();
    let stream = reflector(writer, watcher(api, config)).backoff(backoff);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                errs.lock().unwrap().push(e);
            }
        }
    });
    (reader, errors)
}

fn web_config() -> watcher::Config {
    watcher::Config::default().labels(&format!("{SERVICE_LABEL}=web"))
}

fn requests_for_slices(server: &FakeApiServer) -> Vec<RecordedRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices")
        .collect()
}

fn is_410(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

#[tokio::test]
async fn watcher_survives_restarts_and_relists_after_410() {
    let server = FakeApiServer::start().await;
    server.apply(slice("demo", "web-1", "web", &["10.0.0.1"]));
    server.apply(slice("demo", "web-2", "web", &["10.0.0.2"]));
    server.apply(slice("demo", "api-1", "api", &["10.0.1.1"]));

    let (store, errors) = reflect(&server, web_config());
    store.wait_until_ready().await.unwrap();
    assert_eq!(
        names(store.state().iter().map(AsRef::as_ref)),
        set(&["web-1", "web-2"])
    );
    let reqs = requests_for_slices(&server);
    assert!(reqs[0].is_list());
    assert_eq!(
        reqs[0].param("labelSelector").as_deref(),
        Some("kubernetes.io/service-name=web")
    );
    assert_eq!(reqs[0].param("limit").as_deref(), Some("500"));

    let state = || names(store.state().iter().map(AsRef::as_ref));
    server.apply(slice("demo", "web-3", "web", &["10.0.0.3"]));
    server.apply(slice("demo", "api-2", "api", &["10.0.1.2"]));
    wait_until(5, "web-3", || state() == set(&["web-1", "web-2", "web-3"])).await;

    // A restart cuts the watch; the watcher resumes from its RV (no relist)
    // and sees what changed while the server was down.
    server.stop().await;
    assert!(!server.is_running());
    server.delete::<EndpointSlice>("demo", "web-1");
    server.apply(slice("demo", "web-4", "web", &["10.0.0.4"]));
    tokio::time::sleep(Duration::from_millis(200)).await; // refused meanwhile
    server.clear_requests();
    server.restart().await;
    wait_until(5, "the changes made while down", || {
        state() == set(&["web-2", "web-3", "web-4"])
    })
    .await;
    let reqs = requests_for_slices(&server);
    assert!(
        reqs.iter().all(|r| r.is_watch()),
        "resumed without a relist: {reqs:?}"
    );
    assert!(!errors.lock().unwrap().iter().any(is_410));

    // Keeps working after the restart.
    server.apply(slice("demo", "web-5", "web", &["10.0.0.5"]));
    wait_until(5, "web-5", || state().contains("web-5")).await;

    // Compaction while the watcher is disconnected: its resume RV is gone,
    // so it gets 410 Expired, relists and ends up with the right set.
    server.stop().await;
    server.delete::<EndpointSlice>("demo", "web-2");
    server.apply(slice("demo", "web-6", "web", &["10.0.0.6"]));
    server.apply(slice("demo", "web-3", "moved", &["10.0.0.3"]));
    server.compact();
    server.clear_requests();
    server.restart().await;
    wait_until(5, "the 410", || errors.lock().unwrap().iter().any(is_410)).await;
    wait_until(5, "the relisted state", || {
        state() == set(&["web-4", "web-5", "web-6"])
    })
    .await;
    let reqs = requests_for_slices(&server);
    let expired_watch = reqs
        .iter()
        .position(RecordedRequest::is_watch)
        .expect("a watch after restart");
    let relist = reqs
        .iter()
        .position(RecordedRequest::is_list)
        .expect("a relist after the 410");
    assert!(expired_watch < relist, "{reqs:?}");
    assert_eq!(
        reqs[relist].param("labelSelector").as_deref(),
        Some("kubernetes.io/service-name=web")
    );

    // And watches again after the relist.
    server.apply(slice("demo", "web-7", "web", &["10.0.0.7"]));
    wait_until(5, "web-7", || state().contains("web-7")).await;
}

#[tokio::test]
async fn raw_watch_gets_bookmarks_periodically_and_on_demand() {
    let server = FakeApiServer::builder()
        .bookmark_interval(Some(Duration::from_millis(300)))
        .start()
        .await;
    server.apply(slice("demo", "web-1", "web", &["10.0.0.1"]));
    let api: Api<EndpointSlice> = Api::namespaced(server.client(), "demo");
    let rv = server.resource_version().to_string();

    let mut with = api
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    let mut without = api
        .watch(&WatchParams::default().disable_bookmarks().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    // Periodic.
    let ev = tokio::time::timeout(Duration::from_secs(3), with.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.resource_version, rv);
            assert_eq!(b.types.kind, "EndpointSlice");
            assert_eq!(b.types.api_version, "discovery.k8s.io/v1");
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // On demand, after changes to other kinds moved the RV on.
    server.apply(pod("demo", "web-abc", "10.0.0.1"));
    server.bookmark();
    let want = server.resource_version().to_string();
    loop {
        match with.next().await.unwrap().unwrap() {
            WatchEvent::Bookmark(b) if b.metadata.resource_version == want => break,
            WatchEvent::Bookmark(_) => {}
            other => panic!("expected a bookmark, got {other:?}"),
        }
    }
    // Not without allowWatchBookmarks: the next thing it sees is the event.
    server.apply(slice("demo", "web-2", "web", &["10.0.0.2"]));
    match without.next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(kube::ResourceExt::name_any(&o), "web-2"),
        other => panic!("expected ADDED, got {other:?}"),
    }
}

/// With bookmarks, a watcher whose objects did not change still advances
/// its resource version, so after a compaction and reconnect it resumes
/// without a 410; without bookmarks the same sequence forces a relist.
#[tokio::test]
async fn bookmarks_reach_the_watcher() {
    for bookmarks in [true, false] {
        let server = FakeApiServer::start().await;
        server.apply(slice("demo", "web-1", "web", &["10.0.0.1"]));
        let config = if bookmarks {
            web_config()
        } else {
            web_config().disable_bookmarks()
        };
        let (store, errors) = reflect(&server, config);
        store.wait_until_ready().await.unwrap();
        wait_until(5, "the watch", || {
            requests_for_slices(&server)
                .iter()
                .any(RecordedRequest::is_watch)
        })
        .await;
        let watch = requests_for_slices(&server)
            .into_iter()
            .find(RecordedRequest::is_watch)
            .unwrap();
        let allow = watch.param("allowWatchBookmarks");
        assert_eq!(allow.as_deref(), bookmarks.then_some("true"), "{watch:?}");

        // Other objects move the RV on; the watcher's objects do not change.
        for i in 0..3 {
            server.apply(pod("demo", &format!("p{i}"), "10.0.9.1"));
        }
        server.bookmark();
        let bookmark_rv = server.resource_version().to_string();
        tokio::time::sleep(Duration::from_millis(300)).await;

        server.stop().await;
        server.compact();
        server.clear_requests();
        server.restart().await;
        wait_until(5, "a resumed watch", || {
            requests_for_slices(&server)
                .iter()
                .any(RecordedRequest::is_watch)
        })
        .await;
        let resumed = requests_for_slices(&server)
            .into_iter()
            .find(RecordedRequest::is_watch)
            .unwrap();
        if bookmarks {
            assert_eq!(
                resumed.param("resourceVersion"),
                Some(bookmark_rv),
                "resumes at the bookmark"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!errors.lock().unwrap().iter().any(is_410));
            assert!(
                !requests_for_slices(&server)
                    .iter()
                    .any(RecordedRequest::is_list),
                "no relist"
            );
        } else {
            assert_ne!(resumed.param("resourceVersion"), Some(bookmark_rv));
            wait_until(5, "the 410", || errors.lock().unwrap().iter().any(is_410)).await;
            wait_until(5, "a relist", || {
                requests_for_slices(&server)
                    .iter()
                    .any(RecordedRequest::is_list)
            })
            .await;
        }
        assert_eq!(
            names(store.state().iter().map(AsRef::as_ref)),
            set(&["web-1"])
        );
    }
}

#[tokio::test]
async fn streaming_list_watcher_works() {
    let server = FakeApiServer::start().await;
    server.apply(slice("demo", "web-1", "web", &["10.0.0.1"]));
    server.apply(slice("demo", "api-1", "api", &["10.0.1.1"]));
    let (store, _errors) = reflect(&server, web_config().streaming_lists());
    store.wait_until_ready().await.unwrap();
    assert_eq!(
        names(store.state().iter().map(AsRef::as_ref)),
        set(&["web-1"])
    );
    let first = requests_for_slices(&server).remove(0);
    assert!(first.is_watch());
    assert_eq!(first.param("sendInitialEvents").as_deref(), Some("true"));
    server.apply(slice("demo", "web-2", "web", &["10.0.0.2"]));
    wait_until(5, "web-2", || {
        names(store.state().iter().map(AsRef::as_ref)) == set(&["web-1", "web-2"])
    })
    .await;
}

/// Opens a raw HTTP/1.1 watch on the `demo` EndpointSlices from `rv` and
/// reads its response head.
async fn raw_watch(server: &FakeApiServer, rv: u64) -> TcpStream {
    let mut conn = TcpStream::connect(server.addr()).await.unwrap();
    let req = format!(
        "GET /apis/discovery.k8s.io/v1/namespaces/demo/endpointslices?watch=true&resourceVersion={rv} HTTP/1.1\r\n\
         Host: {}\r\nAccept: application/json\r\n\r\n",
        server.addr()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let head = read_until(&mut conn, b"\r\n\r\n").await;
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    conn
}

/// Reads until `needle` has been received; panics on EOF, an error or after 5 s.
async fn read_until(conn: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("data within 5 s")
            .expect("no error");
        assert!(n > 0, "EOF before {:?}", String::from_utf8_lossy(needle));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Reads a connection to its end: what it still got, and how it ended
/// (`Ok` for a clean EOF). Panics if it is still open after 3 s.
async fn read_to_end(conn: &mut TcpStream) -> (Vec<u8>, std::io::Result<()>) {
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), conn.read(&mut buf))
            .await
            .expect("the connection was not cut")
        {
            Ok(0) => return (got, Ok(())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (got, Err(e)),
        }
    }
}

/// Every `stop` (and `restart`) resets the connections open at that time,
/// including those opened after earlier restarts: a change made while the
/// server is down never reaches an old watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stop_resets_the_connections_opened_since_the_last_restart() {
    let server = FakeApiServer::start().await;
    server.apply(slice("demo", "web-0", "web", &["10.0.0.1"]));
    for cycle in 0..4 {
        // A live watch (it gets a change) and an idle keep-alive connection.
        let mut watch = raw_watch(&server, server.resource_version()).await;
        let added = format!("web-added-{cycle}");
        server.apply(slice("demo", &added, "web", &["10.0.0.2"]));
        read_until(&mut watch, added.as_bytes()).await;
        let mut idle = TcpStream::connect(server.addr()).await.unwrap();
        idle.write_all(b"GET /version HTTP/1.1\r\nHost: fake\r\n\r\n")
            .await
            .unwrap();
        read_until(&mut idle, b"gitVersion").await;

        // Cycles 0 and 2 stop then restart; 1 and 3 restart directly.
        let deleted = format!("web-deleted-{cycle}");
        server.apply(slice("demo", &deleted, "web", &["10.0.0.3"]));
        read_until(&mut watch, deleted.as_bytes()).await;
        if cycle % 2 == 0 {
            server.stop().await;
            assert!(!server.is_running());
            server.delete::<EndpointSlice>("demo", &deleted);
            let (after, end) = read_to_end(&mut watch).await;
            assert_eq!(
                end.as_ref().map_err(std::io::Error::kind).err(),
                Some(std::io::ErrorKind::ConnectionReset),
                "cycle {cycle}: the watch was reset: {end:?}"
            );
            assert!(
                !String::from_utf8_lossy(&after).contains("DELETED"),
                "cycle {cycle}: a change made while stopped reached an old watch: {}",
                String::from_utf8_lossy(&after)
            );
            server.restart().await;
        } else {
            server.restart().await;
            server.delete::<EndpointSlice>("demo", &deleted);
            let (after, end) = read_to_end(&mut watch).await;
            assert!(end.is_err(), "cycle {cycle}: the watch was reset: {end:?}");
            assert!(
                !String::from_utf8_lossy(&after).contains("DELETED"),
                "cycle {cycle}: a change made after the restart reached an old watch"
            );
        }
        let (_, end) = read_to_end(&mut idle).await;
        assert!(
            end.is_err(),
            "cycle {cycle}: the idle connection was reset: {end:?}"
        );
    }
}

/// The integration scenario: a watcher with kube's default backoff (and
/// bookmarks) through two stop/restart cycles. The first resumes without a
/// relist; the second, with the history compacted while down, is cut too
/// (the deletion made while down is not delivered on the old watch), the
/// resumed watch gets 410 and the watcher relists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_restart_cuts_the_watch_again_and_410_makes_it_relist() {
    let server = FakeApiServer::start().await;
    server.apply(slice("demo", "web-1", "web", &["10.0.0.1"]));
    server.apply(slice("demo", "web-2", "web", &["10.0.0.2"]));
    let (store, errors) = reflect_with(&server, web_config(), DefaultBackoff::default());
    store.wait_until_ready().await.unwrap();
    let state = || names(store.state().iter().map(AsRef::as_ref));
    wait_until(5, "the watch", || {
        requests_for_slices(&server)
            .iter()
            .any(RecordedRequest::is_watch)
    })
    .await;

    // First cycle: resumed from the watcher's RV, no relist.
    server.stop().await;
    server.apply(slice("demo", "web-3", "web", &["10.0.0.3"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.clear_requests();
    server.restart().await;
    wait_until(10, "web-3", || state().contains("web-3")).await;
    let reqs = requests_for_slices(&server);
    assert!(
        !reqs.is_empty() && reqs.iter().all(RecordedRequest::is_watch),
        "{reqs:?}"
    );
    let resumed_rv = server.resource_version();

    // Second cycle: the watch opened after the first restart is cut as well.
    server.stop().await;
    server.delete::<EndpointSlice>("demo", "web-1");
    server.compact();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        state().contains("web-1"),
        "the deletion made while stopped reached the watcher on an old connection"
    );
    server.clear_requests();
    server.restart().await;
    wait_until(15, "the 410", || errors.lock().unwrap().iter().any(is_410)).await;
    wait_until(15, "the relisted state", || {
        state() == set(&["web-2", "web-3"])
    })
    .await;
    let reqs = requests_for_slices(&server);
    let expired_watch = reqs
        .iter()
        .position(RecordedRequest::is_watch)
        .expect("a watch after the second restart");
    assert_eq!(
        reqs[expired_watch].param("resourceVersion"),
        Some(resumed_rv.to_string()),
        "resumed from its last RV: {reqs:?}"
    );
    let relist = reqs
        .iter()
        .position(RecordedRequest::is_list)
        .expect("a relist after the 410");
    assert!(expired_watch < relist, "{reqs:?}");
}
