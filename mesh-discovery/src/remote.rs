//! The destination API: the controller serves endpoint sets, proxies follow them.
//!
//! The controller runs the Kubernetes source once for everybody, so proxies need no API
//! credentials and the API server sees one watch per Service per controller, not one per pod.
//! [`DestinationService`] serves any [`Publish`] source as `mesh.destination.v1.Destination`;
//! [`RemoteResolve`] is the proxy's side.
//!
//! Every update carries the whole set of a service (a few dozen bytes an endpoint), so a
//! subscriber that reconnects needs no history. A proxy that loses the controller keeps the
//! endpoints it has and reconnects with backoff (0.5 s doubling to 10 s, with jitter).
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_discovery::Resolve;
//! use mesh_discovery::remote::RemoteResolve;
//!
//! // The channel is the binary's to make (mesh-proxy's is TLS to the controller).
//! let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:8086").connect_lazy();
//! let resolve = RemoteResolve::new(channel);
//! let endpoints = resolve.resolve("web.demo.svc.cluster.local:8080")?;
//! # let _ = endpoints;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use mesh_core::endpoint::Endpoint;
use mesh_core::identity::Identity;
use tonic::{Request, Response, Status};

use crate::resolve::{
    Destination, EndpointSet, Lookup, LookupError, LookupFuture, Publish, Publisher, Resolution,
    Resolve, ResolveError,
};

/// Generated gRPC code.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("mesh.destination.v1");
}

use proto::destination_client::DestinationClient;

/// The first pause before reconnecting; it doubles up to [`MAX_RECONNECT`].
pub const MIN_RECONNECT: Duration = Duration::from_millis(500);
/// The longest pause between reconnects.
pub const MAX_RECONNECT: Duration = Duration::from_secs(10);

/// How often a follower checks that somebody still subscribes.
const UNUSED_CHECK: Duration = Duration::from_secs(30);

/// Serves a source's endpoint sets as the destination API.
#[derive(Debug, Clone)]
pub struct DestinationService {
    source: Arc<dyn Publish>,
    lookup: Option<Arc<dyn Lookup>>,
}

impl DestinationService {
    /// Serves `source`.
    pub fn new(source: Arc<dyn Publish>) -> Self {
        Self {
            source,
            lookup: None,
        }
    }

    /// Answers `Lookup` (what an IP and port is) from `lookup`; without it, `Lookup` is
    /// UNIMPLEMENTED.
    pub fn with_lookup(mut self, lookup: Arc<dyn Lookup>) -> Self {
        self.lookup = Some(lookup);
        self
    }

    /// The tonic service.
    pub fn into_server(self) -> proto::destination_server::DestinationServer<Self> {
        proto::destination_server::DestinationServer::new(self)
    }
}

/// The message of a set.
pub fn update(set: &EndpointSet) -> proto::Update {
    proto::Update {
        endpoints: set.values().map(endpoint_message).collect(),
        exists: true,
    }
}

fn endpoint_message(e: &Endpoint) -> proto::Endpoint {
    proto::Endpoint {
        addr: e.addr.to_string(),
        identity: e.identity().map(|i| i.uri().to_owned()).unwrap_or_default(),
        labels: e.meta.labels.iter().cloned().collect(),
    }
}

/// The endpoints of a message; malformed entries are skipped with a log line.
pub fn endpoints(update: proto::Update) -> Vec<Endpoint> {
    update
        .endpoints
        .into_iter()
        .filter_map(|e| {
            endpoint(e)
                .map_err(|why| tracing::warn!("{why}; skipped"))
                .ok()
        })
        .collect()
}

/// One endpoint of a message, or what is wrong with it.
fn endpoint(e: proto::Endpoint) -> Result<Endpoint, String> {
    let addr: SocketAddr = e
        .addr
        .parse()
        .map_err(|_| format!("destination API sent a malformed address {:?}", e.addr))?;
    if addr.port() == 0 {
        return Err(format!("destination API sent {addr}, on port 0"));
    }
    let identity = if e.identity.is_empty() {
        None
    } else {
        Some(Identity::parse(&e.identity).map_err(|err| {
            format!("destination API sent a malformed identity for {addr}: {err}")
        })?)
    };
    let mut labels: Vec<(String, String)> = e.labels.into_iter().collect();
    labels.sort();
    Ok(Endpoint::meshed(addr, labels, identity))
}

type UpdateStream = Pin<Box<dyn futures_core::Stream<Item = Result<proto::Update, Status>> + Send>>;

#[tonic::async_trait]
impl proto::destination_server::Destination for DestinationService {
    type ResolveStream = UpdateStream;

    async fn lookup(
        &self,
        request: Request<proto::LookupRequest>,
    ) -> Result<Response<proto::LookupReply>, Status> {
        let lookup = self
            .lookup
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this server looks up no addresses"))?;
        let asked = request.into_inner().addr;
        let addr: SocketAddr = asked.parse().map_err(|_| {
            Status::invalid_argument(format!("{asked:?} is not an ip:port address"))
        })?;
        let target = match lookup.lookup(addr).await {
            Ok(Destination::Service(name)) => Some(proto::lookup_reply::Target::Service(name)),
            Ok(Destination::Endpoint(e)) => {
                Some(proto::lookup_reply::Target::Endpoint(endpoint_message(&e)))
            }
            Ok(Destination::Unknown) => None,
            Err(e) => {
                tracing::info!(addr = %asked, error = %e, "lookup failed");
                return Err(Status::unavailable("the address cannot be looked up now"));
            }
        };
        Ok(Response::new(proto::LookupReply { target }))
    }

    async fn resolve(
        &self,
        request: Request<proto::ResolveRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let mut request = request;
        let guard = request.extensions_mut().remove::<StreamGuard>();
        let authority = request.into_inner().authority;
        let publisher = self.source.publisher(&authority).map_err(|e| {
            tracing::info!(%authority, error = %e, "resolve refused");
            match e {
                ResolveError::Invalid { .. } => Status::invalid_argument(e.to_string()),
                ResolveError::Exhausted { .. } => {
                    Status::resource_exhausted("too many names are resolved now; retry later")
                }
            }
        })?;
        let rx = publisher.watch();
        // The publisher goes with the stream: the source sees a subscriber while it lasts;
        // so does the server's guard (a per-client stream permit).
        let publisher = (publisher, guard);
        let stream = futures_util::stream::unfold(
            (rx, publisher, true),
            |(mut rx, publisher, first)| async move {
                loop {
                    if !first && rx.changed().await.is_err() {
                        return None;
                    }
                    let set = rx.borrow_and_update().clone();
                    if let Some(set) = set {
                        return Some((Ok(update(&set)), (rx, publisher, false)));
                    }
                    if first {
                        // Not resolved yet: wait for the first set.
                        if rx.changed().await.is_err() {
                            return None;
                        }
                        let set = rx.borrow_and_update().clone();
                        if let Some(set) = set {
                            return Some((Ok(update(&set)), (rx, publisher, false)));
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// What a server holds for as long as one `Resolve` stream lasts (a per-client stream permit,
/// say): put in the request's extensions (by an interceptor), it goes with the stream.
#[derive(Clone)]
pub struct StreamGuard(pub Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamGuard")
    }
}

/// Follows services through the destination API.
#[derive(Clone, Debug)]
pub struct RemoteResolve {
    inner: Arc<RemoteInner>,
}

#[derive(Debug)]
struct RemoteInner {
    client: DestinationClient<tonic::transport::Channel>,
    services: Mutex<HashMap<String, Publisher>>,
}

impl RemoteResolve {
    /// Resolves over `channel` (to the controller).
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self {
            inner: Arc::new(RemoteInner {
                client: DestinationClient::new(channel),
                services: Mutex::new(HashMap::new()),
            }),
        }
    }
}

impl Publish for RemoteResolve {
    fn publisher(&self, name: &str) -> Result<Publisher, ResolveError> {
        let mut services = self
            .inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(publisher) = services.get(name) {
            return Ok(publisher.clone());
        }
        let publisher = Publisher::new();
        services.insert(name.to_owned(), publisher.clone());
        tokio::spawn(follow(
            Arc::downgrade(&self.inner),
            self.inner.client.clone(),
            name.to_owned(),
            publisher.clone(),
        ));
        Ok(publisher)
    }
}

impl Resolve for RemoteResolve {
    fn resolve(&self, name: &str) -> Result<Resolution, ResolveError> {
        Ok(self.publisher(name)?.subscribe())
    }
}

/// Asks the controller; an error (the controller unreachable, or serving no lookups) is the
/// caller's to handle: it forwards the connection as it is.
impl Lookup for RemoteResolve {
    fn lookup(&self, addr: SocketAddr) -> LookupFuture {
        let mut client = self.inner.client.clone();
        Box::pin(async move {
            let failed = |reason: String| LookupError {
                addr,
                source_name: "destination",
                reason,
            };
            let reply = client
                .lookup(proto::LookupRequest {
                    addr: addr.to_string(),
                })
                .await
                .map_err(|s| failed(format!("{:?}: {}", s.code(), s.message())))?;
            destination(reply.into_inner()).map_err(failed)
        })
    }
}

/// What a `Lookup` reply says, or what is wrong with it.
pub fn destination(reply: proto::LookupReply) -> Result<Destination, String> {
    Ok(match reply.target {
        None => Destination::Unknown,
        Some(proto::lookup_reply::Target::Service(name)) => Destination::Service(name),
        Some(proto::lookup_reply::Target::Endpoint(e)) => Destination::Endpoint(endpoint(e)?),
    })
}

/// Follows one service until nobody subscribes, reconnecting with backoff.
async fn follow(
    inner: Weak<RemoteInner>,
    mut client: DestinationClient<tonic::transport::Channel>,
    authority: String,
    publisher: Publisher,
) {
    let mut failures: u32 = 0;
    // The caller subscribes just after this starts: give it time before asking whether
    // anybody follows.
    let started = tokio::time::Instant::now();
    loop {
        let request = proto::ResolveRequest {
            authority: authority.clone(),
        };
        match client.resolve(request).await {
            Ok(response) => {
                let mut updates = response.into_inner();
                let mut unused = tokio::time::interval_at(
                    tokio::time::Instant::now() + UNUSED_CHECK,
                    UNUSED_CHECK,
                );
                unused.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        message = updates.message() => match message {
                            Ok(Some(update)) => {
                                failures = 0;
                                publisher.publish(endpoints(update));
                            }
                            Ok(None) => {
                                tracing::info!(%authority, "the destination API ended the stream; reconnecting");
                                break;
                            }
                            Err(status) => {
                                tracing::warn!(%authority, code = ?status.code(), message = %status.message(), "destination stream failed; keeping the last endpoints, reconnecting");
                                break;
                            }
                        },
                        _ = unused.tick() => {
                            if done(&inner, &authority, &publisher, started) {
                                return;
                            }
                        }
                    }
                }
            }
            Err(status) => {
                tracing::warn!(%authority, code = ?status.code(), message = %status.message(), "cannot reach the destination API; keeping the last endpoints, retrying");
            }
        }
        if done(&inner, &authority, &publisher, started) {
            return;
        }
        failures = failures.saturating_add(1);
        let backoff = MIN_RECONNECT
            .saturating_mul(1 << failures.saturating_sub(1).min(5))
            .min(MAX_RECONNECT);
        tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64() / 2.0)).await;
    }
}

/// True (and the entry forgotten) when nobody follows `authority` any more.
fn done(
    inner: &Weak<RemoteInner>,
    authority: &str,
    publisher: &Publisher,
    started: tokio::time::Instant,
) -> bool {
    let Some(inner) = inner.upgrade() else {
        return true;
    };
    if publisher.subscribers() > 0 || started.elapsed() < UNUSED_CHECK {
        return false;
    }
    let mut services = inner.services.lock().unwrap_or_else(|e| e.into_inner());
    if services
        .get(authority)
        .is_some_and(|p| p.subscribers() == 0)
    {
        services.remove(authority);
    }
    true
}
