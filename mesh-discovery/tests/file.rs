#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]
//! The file source against real files: edits in place and by rename, invalid edits, a file
//! deleted and recreated, JSON, services added later, start errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt as _};
use mesh_core::endpoint::Endpoint;
use mesh_discovery::file::{FileError, FileResolve};
use mesh_discovery::{Resolution, Resolve as _};
use tower::discover::Change;

/// How long a change may take before the test fails (the expectation is well under 1 s).
const PATIENCE: Duration = Duration::from_secs(5);
/// How long an invalid edit is given to (wrongly) show up.
const QUIET: Duration = Duration::from_millis(1500);
/// The poll period: the default.
const POLL: Duration = FileResolve::DEFAULT_POLL_EVERY;

/// A fresh directory under the system's temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "mesh-discovery-file-{test}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Truncates and writes the file where it is (what `echo >` and many editors do).
fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Writes a temporary file beside it and renames it over the file (what atomic writers do).
fn write_renamed(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The next `n` changes, each within `PATIENCE`, sorted by address (removes first).
async fn changes(r: &mut Resolution, n: usize) -> Vec<Change<SocketAddr, Endpoint>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let change = tokio::time::timeout(PATIENCE, r.next())
            .await
            .expect("a change within the patience")
            .expect("the stream goes on")
            .unwrap();
        out.push(change);
    }
    out.sort_by_key(|c| match c {
        Change::Remove(a) => (0, *a),
        Change::Insert(a, _) => (1, *a),
    });
    out
}

/// Asserts no change shows up within `QUIET`.
async fn no_change(r: &mut Resolution, what: &str) {
    if let Ok(change) = tokio::time::timeout(QUIET, r.next()).await {
        panic!("{what}: unexpected change {change:?}");
    }
}

/// The resolution's endpoints: (address, zone label).
fn handed_out(r: &Resolution) -> Vec<(SocketAddr, Option<String>)> {
    r.endpoints()
        .map(|e| (e.addr, e.label("zone").map(str::to_owned)))
        .collect()
}

fn insert(change: &Change<SocketAddr, Endpoint>) -> (&SocketAddr, &Endpoint) {
    match change {
        Change::Insert(a, e) => (a, e),
        Change::Remove(a) => panic!("expected an insert, got the removal of {a}"),
    }
}

const WEB: &str = "web.demo.svc.cluster.local:80";
const API: &str = "api.demo.svc.cluster.local:8080";

const INITIAL: &str = "\
services:
  - name: web.demo.svc.cluster.local:80
    endpoints:
      - addr: 10.0.0.7:8080
        pod: web-7d9f-abcde
        workload: web
        namespace: demo
        zone: eu-west-1a
        weight: 10
        protocol: h2
        identity: spiffe://cluster.local/ns/demo/sa/web
      - addr: 10.0.0.8:8080
        zone: eu-west-1a
  - name: api.demo.svc.cluster.local:8080
    endpoints:
      - addr: 10.0.1.1:8080
";

#[tokio::test]
async fn edits_show_up_within_a_second() {
    let dir = TempDir::new("edits");
    let path = dir.file("endpoints.yaml");
    write_in_place(&path, INITIAL);
    let resolve = FileResolve::new(&path, POLL).unwrap();
    let mut web = resolve.resolve(WEB).unwrap();
    let mut api = resolve.resolve(API).unwrap();

    // The initial endpoints, with their labels and identity.
    let initial = changes(&mut web, 2).await;
    let (a, seven) = insert(&initial[0]);
    assert_eq!(*a, addr("10.0.0.7:8080"));
    for (key, value) in [
        ("pod", "web-7d9f-abcde"),
        ("workload", "web"),
        ("namespace", "demo"),
        ("zone", "eu-west-1a"),
        ("weight", "10"),
        ("protocol", "h2"),
    ] {
        assert_eq!(seven.label(key), Some(value), "label {key}");
    }
    assert_eq!(
        seven.identity().map(|id| id.uri()),
        Some("spiffe://cluster.local/ns/demo/sa/web")
    );
    let (a, eight) = insert(&initial[1]);
    assert_eq!(*a, addr("10.0.0.8:8080"));
    assert_eq!(eight.identity(), None, "plaintext");
    assert_eq!(eight.meta.labels.len(), 1);
    assert_eq!(changes(&mut api, 1).await.len(), 1);

    // 1. One more endpoint, the file replaced by a rename.
    let started = Instant::now();
    write_renamed(
        &path,
        &INITIAL.replace(
            "      - addr: 10.0.0.8:8080\n",
            "      - addr: 10.0.0.9:8080\n      - addr: 10.0.0.8:8080\n",
        ),
    );
    let added = changes(&mut web, 1).await;
    let added_after = started.elapsed();
    assert_eq!(*insert(&added[0]).0, addr("10.0.0.9:8080"));

    // 2. One endpoint's labels change, the file written in place.
    let second = INITIAL.replace(
        "      - addr: 10.0.0.8:8080\n        zone: eu-west-1a\n",
        "      - addr: 10.0.0.9:8080\n      - addr: 10.0.0.8:8080\n        zone: eu-west-1b\n",
    );
    let started = Instant::now();
    write_in_place(&path, &second);
    let relabeled = changes(&mut web, 1).await;
    let relabeled_after = started.elapsed();
    let (a, e) = insert(&relabeled[0]);
    assert_eq!(
        (*a, e.label("zone")),
        (addr("10.0.0.8:8080"), Some("eu-west-1b"))
    );

    // 3. One endpoint goes, in place again.
    let third = second.replace(
        "      - addr: 10.0.0.7:8080
        pod: web-7d9f-abcde
        workload: web
        namespace: demo
        zone: eu-west-1a
        weight: 10
        protocol: h2
        identity: spiffe://cluster.local/ns/demo/sa/web
",
        "",
    );
    assert_ne!(third, second);
    let started = Instant::now();
    write_in_place(&path, &third);
    let removed = changes(&mut web, 1).await;
    let removed_after = started.elapsed();
    assert!(matches!(removed[0], Change::Remove(a) if a == addr("10.0.0.7:8080")));

    assert_eq!(
        handed_out(&web),
        [
            (addr("10.0.0.8:8080"), Some("eu-west-1b".to_owned())),
            (addr("10.0.0.9:8080"), None),
        ]
    );
    // The service whose endpoints did not change saw nothing. (Reloads publish every
    // service at once, so `api` would already have been told.)
    assert!(api.next().now_or_never().is_none(), "api saw a change");

    println!(
        "edit-to-change delays: add (rename) {added_after:?}, relabel (in place) {relabeled_after:?}, remove (in place) {removed_after:?}"
    );
    for delay in [added_after, relabeled_after, removed_after] {
        assert!(delay < Duration::from_secs(2), "too slow: {delay:?}");
    }
}

#[tokio::test]
async fn invalid_edits_keep_the_last_good_content() {
    let dir = TempDir::new("invalid");
    let path = dir.file("endpoints.yaml");
    write_in_place(&path, INITIAL);
    let resolve = FileResolve::new(&path, POLL).unwrap();
    let mut web = resolve.resolve(WEB).unwrap();
    changes(&mut web, 2).await;
    let good = handed_out(&web);

    for (what, text) in [
        (
            "a YAML syntax error",
            INITIAL.replace("  - name: api", "  - name: [api"),
        ),
        (
            "an unknown field",
            INITIAL.replace(
                "        zone: eu-west-1a\n  - name",
                "        color: red\n  - name",
            ),
        ),
        (
            "a bad address",
            INITIAL.replace("10.0.0.8:8080", "10.0.0.8"),
        ),
        (
            "a duplicate service",
            INITIAL.replace(
                "api.demo.svc.cluster.local:8080",
                "Web.demo.svc.cluster.local:80",
            ),
        ),
    ] {
        assert_ne!(text, INITIAL, "{what}: the edit changes the file");
        write_in_place(&path, &text);
        no_change(&mut web, what).await;
        assert_eq!(handed_out(&web), good, "{what}");
        assert_eq!(resolve.services(), [API, WEB], "{what}");
    }

    // A valid edit resumes updates.
    let started = Instant::now();
    write_renamed(
        &path,
        &INITIAL.replace("zone: eu-west-1a\n  - name", "zone: eu-west-1c\n  - name"),
    );
    let changed = changes(&mut web, 1).await;
    println!("valid edit after invalid ones: {:?}", started.elapsed());
    let (a, e) = insert(&changed[0]);
    assert_eq!(
        (*a, e.label("zone")),
        (addr("10.0.0.8:8080"), Some("eu-west-1c"))
    );
}

#[tokio::test]
async fn a_deleted_file_is_kept_until_it_comes_back() {
    let dir = TempDir::new("deleted");
    let path = dir.file("endpoints.yaml");
    write_in_place(&path, INITIAL);
    let resolve = FileResolve::new(&path, POLL).unwrap();
    let mut web = resolve.resolve(WEB).unwrap();
    changes(&mut web, 2).await;
    let good = handed_out(&web);

    std::fs::remove_file(&path).unwrap();
    no_change(&mut web, "the file deleted").await;
    assert_eq!(handed_out(&web), good);

    // The same content back: nothing to tell.
    write_in_place(&path, INITIAL);
    no_change(&mut web, "the same content recreated").await;

    std::fs::remove_file(&path).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    write_in_place(&path, &INITIAL.replace("10.0.0.8:8080", "10.0.0.10:8080"));
    let changed = changes(&mut web, 2).await;
    println!("file recreated: {:?}", started.elapsed());
    assert!(matches!(changed[0], Change::Remove(a) if a == addr("10.0.0.8:8080")));
    assert_eq!(*insert(&changed[1]).0, addr("10.0.0.10:8080"));

    // A dropped source leaves its resolutions with what they have.
    drop(resolve);
    write_in_place(&path, "services: []\n");
    // (The stream may end rather than stay pending once its source is gone: either way, no
    // change.)
    if let Ok(Some(change)) = tokio::time::timeout(QUIET, web.next()).await {
        panic!("the source dropped: unexpected change {change:?}");
    }
    assert_eq!(web.endpoints().count(), 2);
}

const JSON: &str = r#"{
  "services": [
    {
      "name": "web.demo.svc.cluster.local:80",
      "endpoints": [
        {"addr": "10.0.0.7:8080", "zone": "eu-west-1a", "weight": 5, "protocol": "http1",
         "identity": "spiffe://cluster.local/ns/demo/sa/web"}
      ]
    }
  ]
}
"#;

#[tokio::test]
async fn json_and_services_added_later() {
    let dir = TempDir::new("json");
    let path = dir.file("endpoints.json");
    write_in_place(&path, JSON);
    let resolve = FileResolve::new(&path, POLL).unwrap();
    let mut web = resolve.resolve(WEB).unwrap();
    // Not in the file yet: the resolution waits.
    let mut api = resolve.resolve(API).unwrap();
    // The name is normalized.
    let mut web_again = resolve.resolve("WEB.demo.svc.cluster.local.:80").unwrap();

    for r in [&mut web, &mut web_again] {
        let first = changes(r, 1).await;
        let (a, e) = insert(&first[0]);
        assert_eq!(*a, addr("10.0.0.7:8080"));
        assert_eq!(
            (e.label("zone"), e.label("weight"), e.label("protocol")),
            (Some("eu-west-1a"), Some("5"), Some("http1"))
        );
        assert_eq!(e.identity().map(|id| id.namespace()), Some("demo"));
    }
    assert!(
        api.next().now_or_never().is_none(),
        "api is not in the file"
    );

    let started = Instant::now();
    write_renamed(
        &path,
        &JSON.replace(
            "  ]\n}",
            r#"  , {"name": "api.demo.svc.cluster.local:8080", "endpoints": [{"addr": "10.0.1.1:8080"}, {"addr": "10.0.1.2:8080"}]}
  ]
}"#,
        ),
    );
    let added = changes(&mut api, 2).await;
    println!("service added later: {:?}", started.elapsed());
    assert_eq!(*insert(&added[0]).0, addr("10.0.1.1:8080"));
    assert_eq!(*insert(&added[1]).0, addr("10.0.1.2:8080"));
    assert!(web.next().now_or_never().is_none(), "web did not change");

    // A valid file without the service: its endpoints are removed.
    write_in_place(&path, JSON);
    let removed = changes(&mut api, 2).await;
    assert!(removed.iter().all(|c| matches!(c, Change::Remove(_))));

    // JSON in a file not named .json is read as YAML, which accepts it.
    let other = dir.file("endpoints.yaml");
    write_in_place(&other, JSON);
    let resolve = FileResolve::new(&other, POLL).unwrap();
    assert_eq!(resolve.services(), [WEB]);
}

#[tokio::test]
async fn start_errors_name_the_file() {
    let dir = TempDir::new("start");

    let missing = dir.file("missing.yaml");
    let error = FileResolve::new(&missing, POLL).unwrap_err();
    assert!(matches!(error, FileError::Read { .. }), "{error:?}");
    let message = error.to_string();
    println!("missing: {message}");
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );

    let unknown = dir.file("unknown.yaml");
    write_in_place(
        &unknown,
        &INITIAL.replace("        weight: 10\n", "        wieght: 10\n"),
    );
    let message = FileResolve::new(&unknown, POLL).unwrap_err().to_string();
    println!("unknown field: {message}");
    assert!(
        message.contains(&unknown.display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("wieght") && message.contains("line 9"),
        "{message}"
    );

    let syntax = dir.file("syntax.yaml");
    write_in_place(&syntax, "services:\n  - name: web:80\n    endpoints: [\n");
    let message = FileResolve::new(&syntax, POLL).unwrap_err().to_string();
    println!("syntax error: {message}");
    assert!(message.contains(&syntax.display().to_string()), "{message}");

    let address = dir.file("address.json");
    write_in_place(&address, &JSON.replace("10.0.0.7:8080", "10.0.0.7"));
    let message = FileResolve::new(&address, POLL).unwrap_err().to_string();
    println!("bad address (JSON): {message}");
    assert!(
        message.contains(&address.display().to_string()),
        "{message}"
    );
    assert!(message.contains("line 6"), "{message}");

    // A name that is not host:port cannot be resolved at all.
    let good = dir.file("good.yaml");
    write_in_place(&good, INITIAL);
    let resolve = FileResolve::new(&good, POLL).unwrap();
    assert!(resolve.resolve("web.demo").is_err());
}
