//! The resolve contract: a service name becomes a stream of `tower::discover::Change` of
//! endpoints, fed by a source that publishes whole endpoint sets.
//!
//! Every source keeps the **last good set** of each service in a `watch` channel and publishes
//! a new set only when it has one it trusts: a source that fails (a file with a syntax error,
//! a DNS server that times out, an API server that went away) publishes nothing, so the
//! balancer keeps what it had. [`Resolution`] turns the sets into the changes a balancer
//! applies (`Insert` for a new or changed endpoint, `Remove` for a gone one), diffing against
//! what it last handed out: a subscriber that falls behind sees only the latest set, never a
//! stale one.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use mesh_core::endpoint::Endpoint;
use tokio::sync::watch;
use tower::discover::Change;

/// A service's endpoints at one moment, by address.
pub type EndpointSet = Arc<BTreeMap<SocketAddr, Endpoint>>;

/// Why a service cannot be resolved at all (as opposed to a source failing for a while,
/// which keeps the last good endpoints and is only logged).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The name is not one this source can resolve.
    #[error("{name:?} cannot be resolved by the {source_name} source: {reason}")]
    Invalid {
        /// The service name.
        name: String,
        /// The source.
        source_name: &'static str,
        /// Why.
        reason: String,
    },
    /// The source resolves as many names as it may at once.
    #[error("{name:?} cannot be resolved by the {source_name} source now: {reason}")]
    Exhausted {
        /// The service name.
        name: String,
        /// The source.
        source_name: &'static str,
        /// Why.
        reason: String,
    },
}

/// Hands out the publisher of a service: what a server of the destination API needs from a
/// source.
pub trait Publish: fmt::Debug + Send + Sync + 'static {
    /// The publisher of `name`'s endpoint sets, starting its resolution if needed.
    fn publisher(&self, name: &str) -> Result<Publisher, ResolveError>;
}

/// Resolves service names into endpoint streams. Implemented by every source.
pub trait Resolve: fmt::Debug + Send + Sync + 'static {
    /// Starts (or joins) the resolution of `name`.
    fn resolve(&self, name: &str) -> Result<Resolution, ResolveError>;
}

/// What an address is, as a source knows it: what the proxy needs to mesh a captured
/// connection whose destination no configured service names.
#[derive(Clone, Debug, PartialEq)]
pub enum Destination {
    /// A service's virtual address (a ClusterIP and port): the service's name, which the
    /// same source resolves into endpoints.
    Service(String),
    /// One endpoint (a pod's address and port), with the identity it proves and its hints
    /// (label `protocol`: `opaque`, `http1`, `h2`).
    Endpoint(Endpoint),
    /// Nothing the source knows: the connection goes where it was going, as it is.
    Unknown,
}

/// The answer of a [`Lookup`].
pub type LookupFuture =
    Pin<Box<dyn std::future::Future<Output = Result<Destination, LookupError>> + Send>>;

/// Why a lookup has no answer (the proxy then forwards the connection as it is).
#[derive(Debug, thiserror::Error)]
#[error("looking up {addr} in the {source_name} source: {reason}")]
pub struct LookupError {
    /// The address asked about.
    pub addr: SocketAddr,
    /// The source.
    pub source_name: &'static str,
    /// Why.
    pub reason: String,
}

/// Tells what is behind an IP and port: a source that knows services' virtual addresses and
/// pods' addresses (Kubernetes, and the destination API that serves it).
pub trait Lookup: fmt::Debug + Send + Sync + 'static {
    /// What `addr` is. Called once per captured connection to an address not known yet, so
    /// it may take a round trip; callers cache the answer.
    fn lookup(&self, addr: SocketAddr) -> LookupFuture;
}

/// Where a source publishes a service's endpoint sets.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: Arc<watch::Sender<Option<EndpointSet>>>,
}

impl Publisher {
    /// A service not resolved yet.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(None);
        Self { tx: Arc::new(tx) }
    }

    /// A service with a fixed set.
    pub fn fixed(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        let publisher = Self::new();
        publisher.publish(endpoints);
        publisher
    }

    /// Publishes a new set; subscribers that already have an equal one see nothing.
    pub fn publish(&self, endpoints: impl IntoIterator<Item = Endpoint>) {
        let set: BTreeMap<SocketAddr, Endpoint> =
            endpoints.into_iter().map(|e| (e.addr, e)).collect();
        self.tx.send_if_modified(|current| {
            if current.as_deref() == Some(&set) {
                return false;
            }
            *current = Some(Arc::new(set));
            true
        });
    }

    /// The set published last, if any.
    pub fn current(&self) -> Option<EndpointSet> {
        self.tx.borrow().clone()
    }

    /// A new watcher of the sets themselves (for serving them on, as the destination API does).
    pub fn watch(&self) -> watch::Receiver<Option<EndpointSet>> {
        self.tx.subscribe()
    }

    /// A new subscriber's stream of changes.
    pub fn subscribe(&self) -> Resolution {
        Resolution::new(self.tx.subscribe())
    }

    /// How many streams follow this service.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

/// One subscriber's changes: a `Stream` (and so a `tower::discover::Discover`) of
/// `Change<SocketAddr, Endpoint>` that never ends while its source lives.
pub struct Resolution {
    rx: Option<watch::Receiver<Option<EndpointSet>>>,
    handed_out: BTreeMap<SocketAddr, Endpoint>,
    pending: std::collections::VecDeque<Change<SocketAddr, Endpoint>>,
    changed: Option<Changed>,
    /// The source is gone: what was handed out stays, and nothing more comes.
    gone: bool,
    /// Hand out only endpoints that have an identity ([`Resolution::only_meshed`]).
    only_meshed: bool,
}

/// The wait for the next set: the receiver comes back with whether its sender still lives.
type Changed =
    Pin<Box<dyn std::future::Future<Output = (watch::Receiver<Option<EndpointSet>>, bool)> + Send>>;

impl fmt::Debug for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolution")
            .field("endpoints", &self.handed_out.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Resolution {
    fn new(mut rx: watch::Receiver<Option<EndpointSet>>) -> Self {
        // What is there already is the first change to hand out.
        rx.mark_changed();
        Self {
            rx: Some(rx),
            handed_out: BTreeMap::new(),
            pending: Default::default(),
            changed: None,
            gone: false,
            only_meshed: false,
        }
    }

    /// Hands out only endpoints that discovery names an identity for (meshed pods), so that a
    /// caller that must speak mutual TLS never sends a request in plaintext; the others are
    /// left out, with a warning each time the set changes.
    pub fn only_meshed(mut self) -> Self {
        self.only_meshed = true;
        self
    }

    /// The endpoints handed out so far.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.handed_out.values()
    }

    fn diff(&mut self, set: &BTreeMap<SocketAddr, Endpoint>) {
        let kept;
        let set = if self.only_meshed {
            kept = set
                .iter()
                .filter(|(_, e)| e.identity().is_some())
                .map(|(a, e)| (*a, e.clone()))
                .collect::<BTreeMap<_, _>>();
            let left_out = set.len() - kept.len();
            if left_out > 0 {
                tracing::warn!(
                    left_out,
                    "endpoints without an identity left out: this service is reached over mutual TLS only"
                );
            }
            &kept
        } else {
            set
        };
        let gone: Vec<SocketAddr> = self
            .handed_out
            .keys()
            .filter(|addr| !set.contains_key(addr))
            .copied()
            .collect();
        for addr in gone {
            self.handed_out.remove(&addr);
            self.pending.push_back(Change::Remove(addr));
        }
        for (addr, endpoint) in set {
            if self.handed_out.get(addr) != Some(endpoint) {
                self.handed_out.insert(*addr, endpoint.clone());
                self.pending
                    .push_back(Change::Insert(*addr, endpoint.clone()));
            }
        }
    }
}

impl futures_core::Stream for Resolution {
    type Item = Result<Change<SocketAddr, Endpoint>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if self.gone {
                return Poll::Pending;
            }
            if self.changed.is_none() {
                let Some(mut rx) = self.rx.take() else {
                    return Poll::Ready(None);
                };
                self.changed = Some(Box::pin(async move {
                    let alive = rx.changed().await.is_ok();
                    (rx, alive)
                }));
            }
            let Some(changed) = self.changed.as_mut() else {
                return Poll::Ready(None);
            };
            let (mut rx, alive) = match changed.as_mut().poll(cx) {
                Poll::Ready(ready) => ready,
                Poll::Pending => return Poll::Pending,
            };
            self.changed = None;
            if !alive {
                // The source is gone: keep what was handed out, forever.
                self.gone = true;
                return Poll::Pending;
            }
            let set = rx.borrow_and_update().clone();
            self.rx = Some(rx);
            if let Some(set) = set {
                self.diff(&set);
            }
        }
    }
}

/// A fixed map of services: the configuration's endpoint lists.
#[derive(Debug, Default)]
pub struct StaticResolve {
    services: BTreeMap<String, Publisher>,
}

impl StaticResolve {
    /// Resolves each of `services` (name, endpoints) to its endpoints.
    pub fn new(services: impl IntoIterator<Item = (String, Vec<Endpoint>)>) -> Self {
        Self {
            services: services
                .into_iter()
                .map(|(name, endpoints)| (name, Publisher::fixed(endpoints)))
                .collect(),
        }
    }
}

impl Publish for StaticResolve {
    fn publisher(&self, name: &str) -> Result<Publisher, ResolveError> {
        self.services
            .get(name)
            .cloned()
            .ok_or_else(|| ResolveError::Invalid {
                name: name.to_owned(),
                source_name: "static",
                reason: "no such service in the configuration".into(),
            })
    }
}

impl Resolve for StaticResolve {
    fn resolve(&self, name: &str) -> Result<Resolution, ResolveError> {
        Ok(self.publisher(name)?.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn endpoint(port: u16, pod: &str) -> Endpoint {
        Endpoint::with_labels(
            SocketAddr::from(([10, 0, 0, 1], port)),
            vec![("pod".into(), pod.into())],
        )
    }

    async fn next(r: &mut Resolution) -> Change<SocketAddr, Endpoint> {
        let item = poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *r), cx)).await;
        match item {
            Some(Ok(change)) => change,
            other => panic!("no change: {other:?}"),
        }
    }

    fn pending(r: &mut Resolution) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        futures_core::Stream::poll_next(Pin::new(r), &mut cx).is_pending()
    }

    #[tokio::test]
    async fn sets_become_inserts_and_removes() {
        let publisher = Publisher::new();
        let mut r = publisher.subscribe();
        assert!(pending(&mut r), "nothing resolved yet");
        publisher.publish([endpoint(1, "a"), endpoint(2, "b")]);
        let mut inserted = [next(&mut r).await, next(&mut r).await];
        inserted.sort_by_key(|c| match c {
            Change::Insert(a, _) | Change::Remove(a) => *a,
        });
        assert!(matches!(inserted[0], Change::Insert(a, _) if a.port() == 1));
        assert!(matches!(inserted[1], Change::Insert(a, _) if a.port() == 2));
        // b changes its metadata, a goes, c comes.
        publisher.publish([endpoint(2, "b2"), endpoint(3, "c")]);
        let mut changes = Vec::new();
        for _ in 0..3 {
            changes.push(next(&mut r).await);
        }
        assert!(matches!(changes[0], Change::Remove(a) if a.port() == 1));
        assert!(changes.iter().any(
            |c| matches!(c, Change::Insert(a, e) if a.port() == 2 && e.label("pod") == Some("b2"))
        ));
        assert!(
            changes
                .iter()
                .any(|c| matches!(c, Change::Insert(a, _) if a.port() == 3))
        );
        // Publishing the same set again is no change.
        publisher.publish([endpoint(2, "b2"), endpoint(3, "c")]);
        assert!(pending(&mut r));
    }

    #[tokio::test]
    async fn a_late_subscriber_gets_the_current_set_and_a_gone_source_keeps_it() {
        let publisher = Publisher::fixed([endpoint(1, "a")]);
        let mut r = publisher.subscribe();
        assert!(matches!(next(&mut r).await, Change::Insert(a, _) if a.port() == 1));
        drop(publisher);
        assert!(pending(&mut r), "the stream stays open with what it had");
        assert_eq!(r.endpoints().count(), 1);
    }
}
