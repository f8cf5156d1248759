//! A file of services and their endpoints, watched: the source for clusters without an API
//! server, for tests, and for operators who generate endpoint lists with their own tools.
//!
//! # Format
//!
//! ```yaml
//! services:
//!   - name: web.demo.svc.cluster.local:80
//!     endpoints:
//!       - addr: 10.0.0.7:8080
//!         pod: web-7d9f-abcde        # optional labels
//!         workload: web
//!         namespace: demo
//!         zone: eu-west-1a
//!         weight: 10
//!         protocol: h2               # http1 | h2 | opaque
//!         identity: spiffe://cluster.local/ns/demo/sa/web   # optional: meshed (mTLS)
//!       - addr: "[fd00::7]:8080"     # IPv6 addresses are quoted in YAML
//!   - name: api.demo.svc.cluster.local:8080
//!     endpoints: []                  # known, and explicitly without endpoints
//! ```
//!
//! - A file whose name ends in `.json` is read as strict JSON (`serde_json`); any other file is
//!   read as YAML 1.2, which also accepts JSON content. Both report errors with their line.
//! - Every field is checked: an unknown field, a duplicate key, a service named twice, an
//!   endpoint address listed twice in a service, an address that is not `ip:port`, an identity
//!   that is not a workload identity or a protocol other than `http1`, `h2` or `opaque` makes
//!   the whole file invalid.
//! - Service names are `host:port` with an explicit port; the host is matched
//!   case-insensitively (names are normalized like `mesh_core::endpoint::Authority`).
//! - The labels `pod`, `workload`, `namespace`, `zone`, `weight` (as its decimal string) and
//!   `protocol` become the `Endpoint`'s labels with those keys, and `identity` its identity.
//!
//! # Behaviour
//!
//! [`FileResolve::new`] reads the file once: a file that cannot be read or is invalid at start
//! is an error naming the file and the problem. It then watches the file:
//!
//! - the file's **directory** is watched (so that a Kubernetes ConfigMap's symlink swap and an
//!   editor's write-then-rename are seen as well as in-place writes); events are debounced
//!   (100 ms, so that a writer can finish), and the file is also read every `poll_every` as a
//!   backstop where events are lost (network filesystems, a directory replaced as a whole, a
//!   platform without a watcher). An edit shows up within ~100 ms with events, and within
//!   `poll_every` without. A content hash tells a real change from a mere event;
//! - **valid new content** publishes every service's set; services whose endpoints did not
//!   change see nothing. A service **removed** from a valid file (or listed with
//!   `endpoints: []`) is published empty: a valid edit is an operator's explicit decision, so
//!   its subscribers see their endpoints removed;
//! - **invalid new content** (a syntax error, a bad address, an unknown field, a duplicate
//!   service...) is logged at warn with the file and the problem, once per content, and
//!   nothing is published: every service keeps the last good content;
//! - a file that **disappears** or cannot be read is logged (once until it changes) and the
//!   last good content is kept; when it comes back, it is read as any edit.
//!
//! [`Resolve::resolve`] of a service that is not (yet) in the file does not fail: the
//! resolution waits, and gets the service's endpoints when a later edit adds it.
//!
//! Each [`FileResolve`] runs one watcher task, which ends when the `FileResolve` is dropped;
//! its resolutions then keep the endpoints they have.
//!
//! # Example
//!
//! ```no_run
//! use futures_util::StreamExt as _;
//! use mesh_discovery::Resolve as _;
//! use mesh_discovery::file::FileResolve;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let resolve = FileResolve::new("/etc/mesh/endpoints.yaml", FileResolve::DEFAULT_POLL_EVERY)?;
//! let mut web = resolve.resolve("web.demo.svc.cluster.local:80")?;
//! // `Insert`s for the endpoints in the file, then the changes of each edit.
//! while let Some(Ok(change)) = web.next().await {
//!     println!("{change:?}");
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;
use std::hash::{DefaultHasher, Hasher as _};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use mesh_core::endpoint::{Authority, Endpoint};
use mesh_core::identity::Identity;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::resolve::{Publisher, Resolution, Resolve, ResolveError};

/// How long events are let settle before the file is read: a writer often writes in steps.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The shortest poll period accepted (a zero period would spin).
const MIN_POLL_EVERY: Duration = Duration::from_millis(10);

/// Why a file source cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be read.
    #[error("cannot read the endpoints file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file's content is not a valid list of services.
    #[error("the endpoints file {} is invalid: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line when known.
        reason: String,
    },
    /// Not called from within a Tokio runtime, which the watcher task needs.
    #[error("cannot watch the endpoints file {}: not within a Tokio runtime", path.display())]
    NoRuntime {
        /// The file.
        path: PathBuf,
    },
}

/// The file source: services and endpoints from a YAML or JSON file, watched. See the
/// [module documentation](self).
pub struct FileResolve {
    inner: Arc<Inner>,
    /// Dropped with the `FileResolve`: ends the watcher task.
    _stop: oneshot::Sender<()>,
}

impl FileResolve {
    /// The default period of the backstop poll.
    pub const DEFAULT_POLL_EVERY: Duration = Duration::from_secs(1);

    /// Reads `path` and watches it, reading it again on every change and at least every
    /// `poll_every` (at least 10 ms). Must be called within a Tokio runtime.
    pub fn new(path: impl Into<PathBuf>, poll_every: Duration) -> Result<Self, FileError> {
        let path = path.into();
        let bytes = std::fs::read(&path).map_err(|source| FileError::Read {
            path: path.clone(),
            source,
        })?;
        let services = parse(&path, &bytes).map_err(|reason| FileError::Invalid {
            path: path.clone(),
            reason,
        })?;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(FileError::NoRuntime { path });
        };
        let inner = Arc::new(Inner {
            path: path.clone(),
            state: Mutex::new(State {
                publishers: BTreeMap::new(),
                last_good: Vec::new(),
                seen: Seen::Content(hash(&bytes)),
            }),
        });
        inner.lock().install(services);
        tracing::info!(
            file = %path.display(),
            services = inner.lock().last_good.len(),
            "endpoints file loaded"
        );

        let (events_tx, events) = mpsc::channel::<()>(1);
        let watcher = watch_directory(&path, events_tx);
        let (stop_tx, stop) = oneshot::channel();
        runtime.spawn(watch(
            Arc::downgrade(&inner),
            path,
            poll_every.max(MIN_POLL_EVERY),
            watcher,
            events,
            stop,
        ));
        Ok(Self {
            inner,
            _stop: stop_tx,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The names of the services in the last good content, normalized.
    pub fn services(&self) -> Vec<String> {
        self.inner.lock().last_good.clone()
    }
}

impl fmt::Debug for FileResolve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileResolve")
            .field("path", &self.inner.path)
            .field("services", &self.inner.lock().last_good.len())
            .finish()
    }
}

impl Resolve for FileResolve {
    fn resolve(&self, name: &str) -> Result<Resolution, ResolveError> {
        let name = service_name(name).map_err(|reason| ResolveError::Invalid {
            name: name.to_owned(),
            source_name: "file",
            reason,
        })?;
        // A service not in the file gets a publisher with no set: the resolution waits.
        Ok(self
            .inner
            .lock()
            .publishers
            .entry(name)
            .or_default()
            .subscribe())
    }
}

/// What the watcher task and the resolutions share.
struct Inner {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// Every service in the last good content, and those resolved while not in it.
    publishers: BTreeMap<String, Publisher>,
    /// The services in the last good content.
    last_good: Vec<String>,
    /// What the last read found, good or bad: only a difference is handled (and logged).
    seen: Seen,
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Content with this hash.
    Content(u64),
    /// A read that failed this way.
    Unreadable(io::ErrorKind),
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters: every publish is whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles the result of reading the file.
    fn reload(&self, read: io::Result<Vec<u8>>) {
        let file = self.path.display();
        let mut state = self.lock();
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(error) => {
                let seen = Seen::Unreadable(error.kind());
                if state.seen != seen {
                    tracing::warn!(
                        %file,
                        %error,
                        "cannot read the endpoints file; keeping the last good content"
                    );
                    state.seen = seen;
                }
                return;
            }
        };
        let seen = Seen::Content(hash(&bytes));
        if state.seen == seen {
            return;
        }
        state.seen = seen;
        match parse(&self.path, &bytes) {
            Ok(services) => {
                state.install(services);
                tracing::info!(
                    %file,
                    services = state.last_good.len(),
                    "endpoints file reloaded"
                );
            }
            Err(error) => tracing::warn!(
                %file,
                %error,
                "invalid endpoints file; keeping the last good content"
            ),
        }
    }
}

impl State {
    /// Publishes valid content: every service's set, and an empty set for those removed.
    fn install(&mut self, services: BTreeMap<String, Vec<Endpoint>>) {
        for (name, publisher) in &self.publishers {
            if !services.contains_key(name) && publisher.current().is_some() {
                publisher.publish([]);
            }
        }
        self.last_good = services.keys().cloned().collect();
        for (name, endpoints) in services {
            match self.publishers.entry(name) {
                Entry::Occupied(publisher) => publisher.get().publish(endpoints),
                Entry::Vacant(vacant) => {
                    vacant.insert(Publisher::new()).publish(endpoints);
                }
            }
        }
        // Forget services that are neither in the file nor followed.
        let last_good = &self.last_good;
        self.publishers.retain(|name, publisher| {
            publisher.subscribers() > 0 || last_good.binary_search(name).is_ok()
        });
    }
}

/// The watcher: reads the file after events (debounced) and every `poll_every`, until the
/// `FileResolve` is dropped.
async fn watch(
    inner: Weak<Inner>,
    path: PathBuf,
    poll_every: Duration,
    watcher: Option<notify::RecommendedWatcher>,
    mut events: mpsc::Receiver<()>,
    mut stop: oneshot::Receiver<()>,
) {
    // Events stop when the watcher is dropped: keep it as long as the task.
    let mut watching = watcher.is_some();
    let _watcher = watcher;
    let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + poll_every, poll_every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            event = events.recv(), if watching => match event {
                Some(()) => {
                    tokio::select! {
                        _ = &mut stop => return,
                        () = tokio::time::sleep(DEBOUNCE) => {}
                    }
                    while events.try_recv().is_ok() {}
                }
                None => {
                    watching = false;
                    continue;
                }
            },
            _ = poll.tick() => {}
        }
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(path))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e)))
        };
        let Some(inner) = inner.upgrade() else { return };
        inner.reload(read);
        drop(inner);
        poll.reset();
    }
}

/// Watches the file's directory, so that a file replaced by a rename (an editor saving, a
/// ConfigMap's symlink swap) is seen. `None` when the platform cannot: the poll remains.
fn watch_directory(path: &Path, events: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    use notify::event::{AccessKind, AccessMode, EventKind};

    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Opening and reading files (this source's own reads among them) changes nothing;
        // a writer closing its file is a change.
        if let EventKind::Access(kind) = event.kind
            && kind != AccessKind::Close(AccessMode::Write)
        {
            return;
        }
        let _ = events.try_send(());
    })
    .and_then(|mut watcher| {
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    match watcher {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                file = %path.display(),
                dir = %dir.display(),
                %error,
                "cannot watch the endpoints file's directory; polling it only"
            );
            None
        }
    }
}

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileContent {
    services: Vec<ServiceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceEntry {
    name: String,
    endpoints: Vec<EndpointEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    addr: SocketAddr,
    #[serde(default)]
    pod: Option<String>,
    #[serde(default)]
    workload: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    protocol: Option<Protocol>,
    #[serde(default)]
    identity: Option<Identity>,
}

/// The protocol hint.
#[derive(Clone, Copy, Deserialize)]
enum Protocol {
    #[serde(rename = "http1")]
    Http1,
    #[serde(rename = "h2")]
    H2,
    #[serde(rename = "opaque")]
    Opaque,
}

impl Protocol {
    const fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
            Protocol::Opaque => "opaque",
        }
    }
}

impl EndpointEntry {
    fn into_endpoint(self) -> Endpoint {
        let labels = [
            ("pod", self.pod),
            ("workload", self.workload),
            ("namespace", self.namespace),
            ("zone", self.zone),
            ("weight", self.weight.map(|w| w.to_string())),
            ("protocol", self.protocol.map(|p| p.as_str().to_owned())),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value?)))
        .collect();
        Endpoint::meshed(self.addr, labels, self.identity)
    }
}

/// Parses and checks a file's content: JSON when the name ends in `.json`, YAML otherwise.
/// The error is one line, with the line (and column) where the parser reports one.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Vec<Endpoint>>, String> {
    let is_json = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
    let content: FileContent = if is_json {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())?
    } else {
        let mut options = serde_saphyr::Options::default();
        options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::Error;
        options.with_snippet = false;
        serde_saphyr::from_slice_with_options(bytes, options).map_err(|e| {
            let message = e.without_snippet().to_string();
            match e.location() {
                // The message usually says where; say it when it does not.
                Some(at) if !message.contains("line") => {
                    format!("{message} (line {}, column {})", at.line(), at.column())
                }
                _ => message,
            }
        })?
    };

    let mut services = BTreeMap::new();
    let mut written = BTreeMap::new();
    for (index, service) in content.services.into_iter().enumerate() {
        let name = service_name(&service.name)
            .map_err(|reason| format!("services[{index}]: name: {reason}"))?;
        if let Some((first, spelled)) = written.insert(name.clone(), (index, service.name.clone()))
        {
            return Err(format!(
                "services[{index}]: service {:?} is listed twice (also services[{first}], {spelled:?})",
                service.name
            ));
        }
        let mut endpoints: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        let mut set = Vec::with_capacity(service.endpoints.len());
        for (i, endpoint) in service.endpoints.into_iter().enumerate() {
            // Port 0 cannot be dialled (a fuzz finding: it was accepted, then failed at connect).
            if endpoint.addr.port() == 0 {
                return Err(format!(
                    "services[{index}] ({:?}): endpoints[{i}]: address {} has port 0 (expected 1-65535)",
                    service.name, endpoint.addr
                ));
            }
            if let Some(first) = endpoints.insert(endpoint.addr, i) {
                return Err(format!(
                    "services[{index}] ({:?}): endpoints[{i}]: address {} is listed twice (also endpoints[{first}])",
                    service.name, endpoint.addr
                ));
            }
            set.push(endpoint.into_endpoint());
        }
        services.insert(name, set);
    }
    Ok(services)
}

/// A service name's normal form: `host:port`, the port explicit, the host lowercased.
fn service_name(name: &str) -> Result<String, String> {
    let explicit_port = name.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    });
    if !explicit_port {
        return Err(format!("{name:?} is not host:port with an explicit port"));
    }
    let authority = Authority::parse(name, 0).map_err(|e| e.to_string())?;
    if authority.as_str().ends_with(":0") {
        return Err(format!("{name:?} has no valid port (1-65535)"));
    }
    Ok(authority.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<BTreeMap<String, Vec<Endpoint>>, String> {
        parse(Path::new("endpoints.yaml"), text.as_bytes())
    }

    #[test]
    fn an_endpoint_on_port_0_is_refused_by_name() {
        let err = yaml("services:\n  - name: web:80\n    endpoints:\n      - addr: 10.0.0.7:0\n")
            .unwrap_err();
        assert!(
            err.contains("endpoints[0]") && err.contains("port 0"),
            "{err}"
        );
    }

    #[test]
    fn labels_and_identity_become_the_endpoint_s() {
        let services = yaml(
            "services:
  - name: Web.Demo:80
    endpoints:
      - addr: 10.0.0.7:8080
        pod: web-1
        zone: eu-west-1a
        weight: 10
        protocol: h2
        identity: spiffe://cluster.local/ns/demo/sa/web
      - addr: '[fd00::7]:8080'
",
        )
        .unwrap();
        let web = &services["web.demo:80"];
        assert_eq!(web.len(), 2);
        assert_eq!(
            web[0].meta.labels,
            [
                ("pod".to_owned(), "web-1".to_owned()),
                ("zone".to_owned(), "eu-west-1a".to_owned()),
                ("weight".to_owned(), "10".to_owned()),
                ("protocol".to_owned(), "h2".to_owned()),
            ]
        );
        assert_eq!(
            web[0].identity().map(Identity::uri),
            Some("spiffe://cluster.local/ns/demo/sa/web")
        );
        assert!(web[1].meta.labels.is_empty() && web[1].identity().is_none());
    }

    #[test]
    fn invalid_content_is_explained() {
        for (text, expected) in [
            ("services: [", "line"),
            (
                "services:\n  - name: a:1\n    endpoints:\n      - addr: 10.0.0.1:1\n        color: red\n",
                "color",
            ),
            (
                "services:\n  - name: a:1\n    endpoints:\n      - addr: 10.0.0.1\n",
                "line 4",
            ),
            (
                "services:\n  - name: a:1\n    endpoints: []\n  - name: A:1\n    endpoints: []\n",
                "listed twice",
            ),
            (
                "services:\n  - name: a:1\n    endpoints:\n      - addr: 10.0.0.1:1\n      - addr: 10.0.0.1:1\n",
                "endpoints[1]: address 10.0.0.1:1 is listed twice",
            ),
            (
                "services:\n  - name: a\n    endpoints: []\n",
                "explicit port",
            ),
            (
                "services:\n  - name: a:1\n    endpoints:\n      - addr: 10.0.0.1:1\n        protocol: h3\n",
                "h3",
            ),
            (
                "services:\n  - name: a:1\n    endpoints:\n      - addr: 10.0.0.1:1\n        identity: web\n",
                "workload identity",
            ),
            ("services: []\nservices: []\n", "line"),
        ] {
            let error = yaml(text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"));
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
            assert!(!error.contains('\n'), "not one line: {error:?}");
        }
    }

    #[tokio::test]
    async fn without_a_watcher_the_poll_sees_edits() {
        let dir = std::env::temp_dir().join(format!(
            "mesh-discovery-file-poll-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("endpoints.yaml");
        let text = "services:\n  - name: a:1\n    endpoints: []\n";
        std::fs::write(&path, text).unwrap();
        let inner = Arc::new(Inner {
            path: path.clone(),
            state: Mutex::new(State {
                publishers: BTreeMap::new(),
                last_good: Vec::new(),
                seen: Seen::Content(hash(text.as_bytes())),
            }),
        });
        inner.lock().install(yaml(text).unwrap());
        let publisher = inner.lock().publishers["a:1"].clone();
        // No watcher: the events channel is closed at once, and only the poll remains.
        let (_, events) = mpsc::channel(1);
        let (stop_tx, stop) = oneshot::channel();
        let task = tokio::spawn(watch(
            Arc::downgrade(&inner),
            path.clone(),
            Duration::from_millis(50),
            None,
            events,
            stop,
        ));
        std::fs::write(
            &path,
            "services:\n  - name: a:1\n    endpoints: [{addr: '10.0.0.1:1'}]\n",
        )
        .unwrap();
        let started = std::time::Instant::now();
        while publisher.current().is_none_or(|set| set.is_empty()) {
            assert!(started.elapsed() < Duration::from_secs(5), "not polled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(stop_tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn json_files_are_strict_json() {
        let path = Path::new("endpoints.json");
        let text = r#"{"services": [{"name": "a:1", "endpoints": [{"addr": "10.0.0.1:1", "weight": 3}]}]}"#;
        let services = parse(path, text.as_bytes()).unwrap();
        assert_eq!(services["a:1"][0].label("weight"), Some("3"));
        let error = parse(path, b"services: []").unwrap_err();
        assert!(error.contains("line 1"), "{error}");
        // The same JSON in a YAML file is fine too.
        assert!(yaml(text).is_ok());
    }
}
