//! A stand-in Kubernetes API server for tests.
//!
//! `mesh-kube-fake` serves the real Kubernetes HTTP/JSON protocol on
//! `127.0.0.1` (plain HTTP, an ephemeral port, no authentication) from an
//! in-memory store, so that the real [`kube`] client — [`kube::Api`],
//! [`kube::runtime::watcher()`], reflectors — and the real `kubectl` work
//! against it, where no real API server can run.
//!
//! Served by default: `v1` `Service` and `Pod` and `discovery.k8s.io/v1`
//! `EndpointSlice` (any other [`k8s_openapi`] resource can be added with
//! [`Builder::resource`]), plus `authentication.k8s.io/v1` `TokenReview`
//! answered by a closure ([`Builder::token_reviewer`]).
//!
//! What the protocol side does, as kube-apiserver does it:
//! - discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}`,
//!   `/apis/{group}/{version}` in the legacy (unaggregated) format, which
//!   kubectl falls back to; a schema-less `/openapi/v3` that tells kubectl
//!   the server validates fields itself (`/openapi/v2` is 404);
//! - list (namespaced and across namespaces) with `labelSelector` (every
//!   operator), `fieldSelector` (`metadata.name`, `metadata.namespace` and
//!   the kind's selectable fields), `limit`/`continue` paging with
//!   consistent snapshots, `resourceVersion` + `resourceVersionMatch`;
//!   items carry no `kind`/`apiVersion`, as the real server's don't;
//!   `Accept: …;as=Table;g=meta.k8s.io` gets a `Table` with kubectl's
//!   usual columns (lists, gets and watches);
//! - get, and (through HTTP) create (`POST`), replace (`PUT`), JSON merge
//!   patch and delete; written objects are decoded as their Rust type, so
//!   unknown fields are dropped and reported per `fieldValidation`
//!   (`Strict`: 400, `Warn`: a `Warning` header); a Service created over
//!   HTTP gets its defaults and a cluster IP;
//! - watch (`?watch=true`): newline-delimited JSON events in a chunked
//!   stream, replayed from an in-memory history after `resourceVersion`
//!   then live; `resourceVersion` `""`/`"0"` starts with the current state as
//!   `ADDED`; an RV older than the history gives an `ERROR` event with a
//!   `410 Expired` `Status` ("too old resource version"); `BOOKMARK`s when
//!   `allowWatchBookmarks=true` (periodic and on demand);
//!   `timeoutSeconds` ends the stream; `sendInitialEvents=true` (streaming
//!   lists) ends its initial events with a `k8s.io/initial-events-end`
//!   bookmark; an object that stops (starts) matching the selector is sent
//!   as `DELETED` (`ADDED`);
//! - metadata: a global, monotonically increasing `resourceVersion`,
//!   `uid`, `creationTimestamp`, `generation` (bumped when anything but
//!   metadata and status changes); a write that changes nothing is a no-op;
//!   deleting an object with finalizers only sets `deletionTimestamp`.
//!
//! - mutating admission webhooks: when `MutatingWebhookConfiguration` is served
//!   ([`Builder::resource`]), an object being created goes through the stored webhooks whose
//!   rules and namespace selector match, in the order of their configurations' names, once
//!   each (`reinvocationPolicy: Never`), over HTTPS verified with the `caBundle`, as an
//!   AdmissionReview v1; a JSONPatch answer is applied, a denial refuses the object, and a
//!   failed call refuses it unless `failurePolicy: Ignore`. A webhook's `service` is reached at
//!   the address given by [`Builder::webhook_service`] or
//!   [`FakeApiServer::route_webhook_service`]; every call is recorded
//!   ([`FakeApiServer::webhook_calls`]).
//!
//! For tests: [`FakeApiServer::apply`] / [`FakeApiServer::delete`] change
//! the store directly (events go to open watches), [`FakeApiServer::compact`]
//! drops the history, [`FakeApiServer::bookmark`] sends a bookmark,
//! [`FakeApiServer::stop`] / [`FakeApiServer::restart`] drop the listener
//! and reset every open connection, then listen again on the same port with
//! the same store, and [`FakeApiServer::requests`] records every request.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use k8s_openapi::api::discovery::v1::EndpointSlice;
//! use kube::api::{Api, ListParams};
//! use mesh_kube_fake::FakeApiServer;
//!
//! let server = FakeApiServer::start().await;
//! let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
//!     "metadata": {"name": "web-1", "namespace": "demo",
//!                  "labels": {"kubernetes.io/service-name": "web"}},
//!     "addressType": "IPv4",
//!     "endpoints": [{"addresses": ["10.0.0.1"]}],
//! }))?;
//! let stored = server.apply(slice); // ADDED, with resourceVersion, uid, …
//!
//! let api: Api<EndpointSlice> = Api::namespaced(server.client(), "demo");
//! let list = api.list(&ListParams::default().labels("kubernetes.io/service-name=web")).await?;
//! assert_eq!(list.items.len(), 1);
//!
//! server.restart().await; // every open watch is cut; the store stays
//! assert!(server.requests().iter().any(|r| r.verb == "list"));
//! # let _ = stored;
//! # Ok(())
//! # }
//! ```
//!
//! For kubectl: `kubectl --server=<url> get endpointslices -A`, or write
//! [`FakeApiServer::kubeconfig`] to a file.

mod admission;
mod meta;
mod selector;
mod server;
mod store;
mod table;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

pub use crate::admission::WebhookCall;
use crate::meta::ResourceType;
use crate::server::{Shared, lock};
pub use crate::store::WriteOutcome;
use crate::store::{Store, WriteMode};

/// Answers a `TokenReview`: the status to send back.
pub type TokenReviewer = Arc<dyn Fn(&TokenReview) -> TokenReviewStatus + Send + Sync>;

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The URL path, e.g. `/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices`.
    pub path: String,
    /// The raw (still percent-encoded) query string, if any.
    pub query: Option<String>,
    /// The API verb, as the audit log names it: `list`, `watch`, `get`,
    /// `create`, `update`, `patch`, `delete`, … (`get` for discovery).
    pub verb: &'static str,
}

impl RecordedRequest {
    /// A decoded query parameter (the first if repeated).
    pub fn param(&self, name: &str) -> Option<String> {
        server::Query::parse(self.query.as_deref())
            .get(name)
            .map(str::to_owned)
    }

    /// Whether this was a watch.
    pub fn is_watch(&self) -> bool {
        self.verb == "watch"
    }

    /// Whether this was a list (not a watch).
    pub fn is_list(&self) -> bool {
        self.verb == "list"
    }
}

/// Errors of the Rust-side store API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kind is not served; add it with [`Builder::resource`].
    #[error("mesh-kube-fake does not serve {0}; add it with Builder::resource")]
    UnsupportedKind(String),
    /// The store refused the object, as the API server would.
    #[error("{code} {reason}: {message}")]
    Api {
        /// HTTP status code.
        code: u16,
        /// The `Status` reason.
        reason: &'static str,
        /// The `Status` message.
        message: String,
    },
    /// The object did not (de)serialize.
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<meta::ApiError> for Error {
    fn from(e: meta::ApiError) -> Self {
        Self::Api {
            code: e.code,
            reason: e.reason,
            message: e.message,
        }
    }
}

/// A constant, short backoff for [`kube::runtime::WatchStreamExt::backoff`]
/// in tests (the default backoff starts at 800 ms and grows to 30 s).
#[derive(Debug, Clone, Copy)]
pub struct TestBackoff(pub Duration);

impl Default for TestBackoff {
    fn default() -> Self {
        Self(Duration::from_millis(50))
    }
}

impl Iterator for TestBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.0)
    }
}

impl kube::runtime::utils::Backoff for TestBackoff {
    fn reset(&mut self) {}
}

/// Configures a [`FakeApiServer`] before it starts.
pub struct Builder {
    resources: Vec<ResourceType>,
    history_window: usize,
    bookmark_interval: Option<Duration>,
    token_reviewer: TokenReviewer,
    port: u16,
    webhook_services: HashMap<(String, String, u16), SocketAddr>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("resources", &self.resources)
            .field("history_window", &self.history_window)
            .field("bookmark_interval", &self.bookmark_interval)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        use k8s_openapi::api::core::v1::{Pod, Service};
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        Self {
            resources: vec![
                ResourceType::of::<Service>(),
                ResourceType::of::<Pod>(),
                ResourceType::of::<EndpointSlice>(),
            ],
            history_window: 1000,
            bookmark_interval: Some(Duration::from_secs(60)),
            token_reviewer: Arc::new(|_| TokenReviewStatus {
                authenticated: Some(false),
                error: Some("token not recognized by mesh-kube-fake".to_owned()),
                ..TokenReviewStatus::default()
            }),
            port: 0,
            webhook_services: HashMap::new(),
        }
    }
}

impl Builder {
    /// Also serves resource `K` (any namespaced or cluster-scoped
    /// [`k8s_openapi`] resource, e.g. `ConfigMap`, `Namespace`).
    #[must_use]
    pub fn resource<K>(mut self) -> Self
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
        K::Scope: 'static,
    {
        let rt = ResourceType::of::<K>();
        if !self.resources.contains(&rt) {
            self.resources.push(rt);
        }
        self
    }

    /// How many events per resource the watch history keeps (default 1000,
    /// like a watch cache's capacity). A watch from an RV older than the
    /// oldest kept event gets `410 Expired`.
    #[must_use]
    pub fn history_window(mut self, events: usize) -> Self {
        self.history_window = events;
        self
    }

    /// How often watches that allow bookmarks get one (default 60 s, the
    /// real server's bookmark frequency); `None` for on demand only.
    #[must_use]
    pub fn bookmark_interval(mut self, interval: Option<Duration>) -> Self {
        self.bookmark_interval = interval;
        self
    }

    /// How `TokenReview`s are answered (default: not authenticated).
    #[must_use]
    pub fn token_reviewer(
        mut self,
        f: impl Fn(&TokenReview) -> TokenReviewStatus + Send + Sync + 'static,
    ) -> Self {
        self.token_reviewer = Arc::new(f);
        self
    }

    /// Reaches the admission webhooks whose `clientConfig.service` is `namespace/name:port` at
    /// `addr` (the stand-in has no cluster network).
    #[must_use]
    pub fn webhook_service(
        mut self,
        namespace: &str,
        name: &str,
        port: u16,
        addr: SocketAddr,
    ) -> Self {
        self.webhook_services
            .insert((namespace.to_owned(), name.to_owned(), port), addr);
        self
    }

    /// Listens on this port of 127.0.0.1 (default: an ephemeral one).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Starts the server.
    pub async fn try_start(self) -> io::Result<FakeApiServer> {
        let listener = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(self.resources, self.history_window)),
            requests: Mutex::new(Vec::new()),
            token_reviewer: Mutex::new(self.token_reviewer),
            addr,
            webhook_calls: Mutex::new(Vec::new()),
            webhook_services: Mutex::new(self.webhook_services),
            open_watches: Arc::default(),
        });
        let server = FakeApiServer {
            inner: Arc::new(Inner {
                shared,
                bookmark_interval: self.bookmark_interval,
                running: Mutex::new(None),
            }),
        };
        server.listen(listener);
        Ok(server)
    }

    /// Starts the server; panics if 127.0.0.1 cannot be bound.
    pub async fn start(self) -> FakeApiServer {
        match self.try_start().await {
            Ok(s) => s,
            Err(e) => panic!("mesh-kube-fake: cannot listen on 127.0.0.1: {e}"),
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Open connections, by id: a duplicate of each socket, so that `stop` can
/// make their close a reset.
type ConnRegistry = Arc<Mutex<HashMap<u64, std::net::TcpStream>>>;

struct Running {
    accept: JoinHandle<()>,
    conns: Arc<Mutex<JoinSet<()>>>,
    sockets: ConnRegistry,
    ticker: Option<JoinHandle<()>>,
}

impl Running {
    async fn shutdown(mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
        if let Some(t) = &self.ticker {
            t.abort();
        }
        for socket in lock(&self.sockets).values() {
            // Zero linger: closing sends RST, as a crashed server's peer sees.
            let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
        }
        let mut set = std::mem::take(&mut *lock(&self.conns));
        set.shutdown().await;
        lock(&self.sockets).clear();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.accept.abort();
        if let Some(t) = &self.ticker {
            t.abort();
        }
        lock(&self.conns).abort_all();
    }
}

struct Inner {
    shared: Arc<Shared>,
    bookmark_interval: Option<Duration>,
    running: Mutex<Option<Running>>,
}

/// The fake API server. Cloning gives another handle to the same server;
/// it stops when the last handle is dropped.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    conns: Arc<Mutex<JoinSet<()>>>,
    sockets: ConnRegistry,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(0);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "fake apiserver accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let stream = match stream.into_std() {
            Ok(std_stream) => {
                if let Ok(dup) = std_stream.try_clone() {
                    lock(&sockets).insert(id, dup);
                }
                match tokio::net::TcpStream::from_std(std_stream) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "fake apiserver could not register a connection");
                        lock(&sockets).remove(&id);
                        continue;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "fake apiserver could not register a connection");
                continue;
            }
        };
        let shared = shared.clone();
        let sockets = sockets.clone();
        let mut set = lock(&conns);
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            let service =
                hyper::service::service_fn(move |req| server::handle(shared.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "fake apiserver connection ended");
            }
            lock(&sockets).remove(&id);
        });
    }
}

impl FakeApiServer {
    /// Starts a server with the default resources on an ephemeral port of
    /// 127.0.0.1; panics if it cannot listen.
    pub async fn start() -> Self {
        Builder::default().start().await
    }

    /// Starts a server with the default resources.
    pub async fn try_start() -> io::Result<Self> {
        Builder::default().try_start().await
    }

    /// Configures a server.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn listen(&self, listener: TcpListener) {
        let conns = Arc::new(Mutex::new(JoinSet::new()));
        let sockets: ConnRegistry = Arc::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            self.inner.shared.clone(),
            conns.clone(),
            sockets.clone(),
        ));
        let ticker = self.inner.bookmark_interval.map(|every| {
            let shared = self.inner.shared.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(every);
                interval.tick().await;
                loop {
                    interval.tick().await;
                    lock(&shared.store).bookmark();
                }
            })
        });
        *lock(&self.inner.running) = Some(Running {
            accept,
            conns,
            sockets,
            ticker,
        });
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.inner.shared.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A client configuration for this server (default namespace `default`).
    pub fn config(&self) -> kube::Config {
        let uri = self
            .url()
            .parse()
            .unwrap_or_else(|_| http::Uri::from_static("http://127.0.0.1"));
        kube::Config::new(uri)
    }

    /// A [`kube::Client`] for this server. Call it inside a Tokio runtime.
    pub fn client(&self) -> kube::Client {
        match kube::Client::try_from(self.config()) {
            Ok(c) => c,
            Err(e) => panic!("mesh-kube-fake: cannot build a kube client: {e}"),
        }
    }

    /// A kubeconfig (YAML) whose current context points at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: fake\n    namespace: default\ncurrent-context: fake\n",
            url = self.url()
        )
    }

    fn index_of<K: k8s_openapi::Resource>(&self, store: &Store) -> Result<usize, Error> {
        store
            .index_of(K::API_VERSION, K::KIND)
            .ok_or_else(|| Error::UnsupportedKind(format!("{} {}", K::API_VERSION, K::KIND)))
    }

    /// Creates or replaces an object, as a controller's write would: the
    /// server sets `resourceVersion` (bumping the global counter), `uid`
    /// and `creationTimestamp` (kept on replace), `generation`, and
    /// emits `ADDED` or `MODIFIED` to watches. A missing namespace is
    /// `default`; a `resourceVersion` in `obj` is ignored. An object equal
    /// to the stored one is a no-op (no new RV, no event), as on the real
    /// server. Returns the stored object.
    ///
    /// Panics if the kind is not served; see [`FakeApiServer::try_apply`].
    pub fn apply<K>(&self, obj: K) -> K
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        match self.try_apply(obj) {
            Ok((k, _)) => k,
            Err(e) => panic!("mesh-kube-fake: apply failed: {e}"),
        }
    }

    /// [`FakeApiServer::apply`], returning errors and what happened.
    pub fn try_apply<K>(&self, obj: K) -> Result<(K, WriteOutcome), Error>
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let mut value = serde_json::to_value(&obj)?;
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("resourceVersion");
        }
        let (stored, outcome) = {
            let mut store = lock(&self.inner.shared.store);
            let res = self.index_of::<K>(&store)?;
            store.write(res, value, WriteMode::Apply)?
        };
        Ok((serde_json::from_value((*stored).clone())?, outcome))
    }

    /// Deletes an object (`ns` is ignored for cluster-scoped kinds),
    /// emitting `DELETED`. Returns its last state, or `None` if it did not
    /// exist. An object with finalizers only gets `deletionTimestamp` (a
    /// `MODIFIED` event) until a write removes its finalizers.
    ///
    /// Panics if the kind is not served.
    pub fn delete<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let mut store = lock(&self.inner.shared.store);
        let res = match self.index_of::<K>(&store) {
            Ok(r) => r,
            Err(e) => panic!("mesh-kube-fake: delete failed: {e}"),
        };
        let ns = if store.resources[res].namespaced {
            ns
        } else {
            ""
        };
        let (obj, _) = store.delete(res, &(ns.to_owned(), name.to_owned())).ok()?;
        drop(store);
        serde_json::from_value((*obj).clone()).ok()
    }

    /// The stored object, if any.
    pub fn get<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: k8s_openapi::Resource + DeserializeOwned,
    {
        let store = lock(&self.inner.shared.store);
        let res = self.index_of::<K>(&store).ok()?;
        let ns = if store.resources[res].namespaced {
            ns
        } else {
            ""
        };
        let obj = store.get(res, &(ns.to_owned(), name.to_owned()))?;
        drop(store);
        serde_json::from_value((*obj).clone()).ok()
    }

    /// The current (latest) resource version.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.shared.store).rv()
    }

    /// Drops the whole event history, as an etcd compaction plus a watch
    /// cache eviction would: a watch resuming from any resource version
    /// older than the current one gets `410 Expired` and must relist.
    /// Open watches are not affected.
    pub fn compact(&self) {
        lock(&self.inner.shared.store).compact();
    }

    /// Changes how many events per resource the history keeps.
    pub fn set_history_window(&self, events: usize) {
        lock(&self.inner.shared.store).set_window(events);
    }

    /// Sends a `BOOKMARK` at the current resource version to every open
    /// watch that allows bookmarks.
    pub fn bookmark(&self) {
        lock(&self.inner.shared.store).bookmark();
    }

    /// Replaces the `TokenReview` responder.
    pub fn set_token_reviewer(
        &self,
        f: impl Fn(&TokenReview) -> TokenReviewStatus + Send + Sync + 'static,
    ) {
        *lock(&self.inner.shared.token_reviewer) = Arc::new(f);
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.shared.requests).clone()
    }

    /// Every call of an admission webhook so far, in order.
    pub fn webhook_calls(&self) -> Vec<WebhookCall> {
        lock(&self.inner.shared.webhook_calls).clone()
    }

    /// Reaches webhooks of Service `namespace/name:port` at `addr` from now on.
    pub fn route_webhook_service(&self, namespace: &str, name: &str, port: u16, addr: SocketAddr) {
        lock(&self.inner.shared.webhook_services)
            .insert((namespace.to_owned(), name.to_owned(), port), addr);
    }

    /// Watches whose responses are still streaming (a client that stops watching closes
    /// its stream, which ends the count).
    pub fn open_watches(&self) -> usize {
        self.inner
            .shared
            .open_watches
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.inner.shared.requests).clear();
    }

    /// Whether the server is listening.
    pub fn is_running(&self) -> bool {
        lock(&self.inner.running).is_some()
    }

    /// Stops listening and resets every open connection (open watches end
    /// abruptly, as when an API server dies). The store is kept; connecting
    /// is refused until [`FakeApiServer::restart`]. No-op if stopped.
    pub async fn stop(&self) {
        let running = lock(&self.inner.running).take();
        if let Some(running) = running {
            running.shutdown().await;
        }
    }

    /// Stops (if running) and listens again on the same port with the same
    /// store, as an API server restart does. Panics if the port cannot be
    /// bound again; see [`FakeApiServer::try_restart`].
    pub async fn restart(&self) {
        if let Err(e) = self.try_restart().await {
            panic!(
                "mesh-kube-fake: cannot listen again on {}: {e}",
                self.addr()
            );
        }
    }

    /// [`FakeApiServer::restart`], returning a bind error.
    pub async fn try_restart(&self) -> io::Result<()> {
        self.stop().await;
        let mut attempt = 0;
        let listener = loop {
            match bind(self.addr()) {
                Ok(l) => break l,
                Err(e) if attempt < 50 => {
                    tracing::debug!(error = %e, "fake apiserver rebind");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.listen(listener);
        Ok(())
    }
}
