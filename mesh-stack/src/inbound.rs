//! The inbound stack: other services' calls, forwarded to the local app.
//!
//! ```text
//! accept -> peek the ClientHello (bounded bytes and time)
//!   SNI = our identity -> terminate mTLS (client certificate required) -> caller's identity
//!   another SNI        -> the app's own TLS: opaque bytes
//!   no TLS             -> plaintext
//! -> authorize (the app port's policy) -> denied: HTTP 403 / gRPC PERMISSION_DENIED, or close
//! -> detect HTTP -> metrics (labelled with the caller) -> the app; opaque: TCP forward
//! ```
//!
//! ```no_run
//! use mesh_stack::config::{InboundConfig, WorkloadConfig};
//! use mesh_stack::inbound::{Inbound, InboundCounters};
//! use mesh_stack::Shared;
//!
//! # async fn run(listener: tokio::net::TcpListener, identity: mesh_tls::local::LocalIdentity)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! let config: InboundConfig = toml::from_str("app = \"127.0.0.1:8080\"")?;
//! let mut registry = prometheus_client::registry::Registry::default();
//! let shared = Shared::new(WorkloadConfig::default(), &Default::default(), &Default::default());
//! // With an identity: mTLS required (`all-authenticated`) unless `policy` says otherwise.
//! // Shared by the connections: each task holds an `Arc`, not a copy.
//! let inbound = std::sync::Arc::new(Inbound::new(&config, &shared, Some(identity), InboundCounters::register(&mut registry)));
//! let drain = mesh_core::drain::Drain::new();
//! loop {
//!     let (stream, peer) = listener.accept().await?;
//!     tokio::spawn(inbound.clone().serve(stream, peer, drain.clone()));
//! }
//! # }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use mesh_core::client::{EndpointClient, HttpClient};
use mesh_core::detect::{PrefixedIo, Protocol};
use mesh_core::drain::Drain;
use mesh_core::endpoint::Direction;
use mesh_core::error::{Cause, ProxyError};
use mesh_core::identity::PeerTls;
use mesh_core::ports::PortSet;
use mesh_core::server::{HttpServer, Respond};
use mesh_core::{Body, BoxError, tcp};
use mesh_metrics::http::{HttpMetrics, RequestLabels};
use mesh_tls::accept::{AcceptTimeouts, Accepted, accept};
use mesh_tls::local::LocalIdentity;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::Layer;

use crate::Shared;
use crate::config::{InboundConfig, NamedPolicy, Policy, PortPolicy};

/// The inbound stack, shared by every inbound connection.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The configured app port.
    app: AppPort,
    /// Transparent mode: every other port of the app, made on first use.
    ports: Option<Arc<Mutex<HashMap<u16, AppPort>>>>,
    /// The policies of particular ports, and of the rest.
    port_policies: Arc<[PortPolicy]>,
    default_policy: Arc<Policy>,
    /// App ports forwarded as TCP, never sniffed.
    opaque_ports: Arc<PortSet>,
    client: HttpClient,
    server: HttpServer,
    detect_timeout: Duration,
    accept_timeouts: AcceptTimeouts,
    connect_timeout: Duration,
    identity: Option<LocalIdentity>,
    /// `None`: requests are not counted.
    metrics: Option<HttpMetrics>,
    labels: RequestLabels,
    counters: InboundCounters,
}

/// Counters of refused inbound connections and requests.
#[derive(Clone, Debug, Default)]
pub struct InboundCounters {
    denied: Family<DenyLabels, Counter>,
    tls_failures: Family<TlsFailureLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenyLabels {
    /// `http` or `tcp`.
    protocol: &'static str,
    /// `true` (mTLS), `false` (plaintext) or `passthrough`.
    tls: &'static str,
    /// The app port whose policy refused.
    port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsFailureLabels {
    reason: &'static str,
}

impl InboundCounters {
    /// Registers `inbound_authz_denied_total` and `inbound_tls_handshake_failures_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let counters = Self::default();
        registry.register(
            "inbound_authz_denied",
            "Inbound connections (tcp) and requests (http) that the port's policy refused",
            counters.denied.clone(),
        );
        registry.register(
            "inbound_tls_handshake_failures",
            "Inbound mutual TLS handshakes that failed (bad or missing client certificate, ...)",
            counters.tls_failures.clone(),
        );
        counters
    }
}

impl Inbound {
    /// Builds the stack in front of `inbound.app`.
    pub fn new(
        inbound: &InboundConfig,
        shared: &Shared,
        identity: Option<LocalIdentity>,
        counters: InboundCounters,
    ) -> Self {
        let labels = RequestLabels {
            direction: Direction::Inbound.as_str().to_owned(),
            authority: inbound.app.to_string(),
            dst_service: inbound.app.to_string(),
            dst_namespace: shared.workload.namespace.clone(),
            dst_workload: shared.workload.name.clone(),
            tls: "false".to_owned(),
            ..RequestLabels::default()
        };
        let default_policy =
            inbound
                .policy
                .clone()
                .unwrap_or(Policy::Named(if identity.is_some() {
                    NamedPolicy::AllAuthenticated
                } else {
                    NamedPolicy::AllUnauthenticated
                }));
        let port_policies: Arc<[PortPolicy]> = inbound.ports.clone().into();
        let default_policy = Arc::new(default_policy);
        let opaque_ports = Arc::new(inbound.opaque_ports.clone());
        let app = AppPort::new(
            inbound.app,
            &shared.client,
            &port_policies,
            &default_policy,
            &opaque_ports,
        );
        Self {
            app,
            ports: inbound.transparent.then(Arc::default),
            port_policies,
            default_policy,
            opaque_ports,
            client: shared.client.clone(),
            server: shared.server.clone(),
            detect_timeout: inbound.detect_timeout,
            accept_timeouts: AcceptTimeouts {
                detect: inbound.detect_timeout,
                handshake: inbound.handshake_timeout,
            },
            connect_timeout: shared.connect_timeout,
            identity,
            metrics: shared.request_metrics.clone(),
            labels,
            counters,
        }
    }

    /// Serves one accepted connection, to the configured app port.
    pub fn serve<I>(
        self: Arc<Self>,
        stream: I,
        peer: SocketAddr,
        drain: Drain,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_to(stream, peer, None, drain)
    }

    /// Serves one accepted TCP connection; in transparent mode, to the port it was sent to
    /// before the firewall redirected it (read from the socket: one syscall).
    ///
    /// Not an `async fn`: the future returned is `serve_to`'s own, not one that would carry
    /// its arguments beside it for the connection's whole life.
    pub fn serve_accepted(
        self: Arc<Self>,
        stream: mesh_metrics::tcp::MeteredIo<tokio::net::TcpStream>,
        peer: SocketAddr,
        drain: Drain,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let original = match self.ports {
            Some(_) => mesh_core::tcp::original_dst(stream.get_ref()),
            None => None,
        };
        self.serve_to(stream, peer, original, drain)
    }

    /// Serves one accepted connection whose original destination (before the firewall
    /// redirected it) was `original`: in transparent mode, it goes to the app's port of that
    /// name, under that port's policy. Without one, or without transparent mode, to the
    /// configured app port.
    ///
    /// An `async` block rather than an `async fn`, on a shared `Inbound`: the future is each
    /// connection's task, held for the connection's whole life, and an `async fn` would keep a
    /// second copy of its arguments (and each connection a copy of the `Inbound`, 1 KB).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments twice"
    )]
    pub fn serve_to<I>(
        self: Arc<Self>,
        stream: I,
        peer: SocketAddr,
        original: Option<SocketAddr>,
        drain: Drain,
    ) -> impl std::future::Future<Output = ()> + Send + 'static
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        async move {
            let app = self.app_port(original);
            let Some(identity) = self.identity.clone() else {
                let io = PrefixedIo::new(Bytes::new(), stream);
                return self
                    .serve_authenticated(io, PeerTls::Plaintext, app, peer, drain)
                    .await;
            };
            // Boxed, as the HTTP servers are: the handshake's state is not carried by the task of
            // every connection for its whole life.
            match Box::pin(accept(stream, &identity, self.accept_timeouts)).await {
                Ok(Accepted::Terminated { io, peer: client }) => {
                    let tls = PeerTls::Authenticated(client);
                    self.serve_authenticated(io, tls, app, peer, drain).await
                }
                Ok(Accepted::Passthrough { io, sni }) => {
                    tracing::debug!(%peer, ?sni, "TLS for another name: passed through");
                    self.serve_authenticated(io, PeerTls::Passthrough, app, peer, drain)
                        .await
                }
                Ok(Accepted::Plaintext(io)) => {
                    self.serve_authenticated(io, PeerTls::Plaintext, app, peer, drain)
                        .await
                }
                Err(e) => {
                    let reason = match &e {
                        mesh_tls::accept::AcceptError::Read(_) => "read",
                        mesh_tls::accept::AcceptError::Handshake(_) => "handshake",
                        mesh_tls::accept::AcceptError::HandshakeTimeout(_) => "handshake-timeout",
                        mesh_tls::accept::AcceptError::NoIdentity(_) => "no-identity",
                    };
                    if reason != "read" {
                        self.counters
                            .tls_failures
                            .get_or_create(&TlsFailureLabels { reason })
                            .inc();
                    }
                    tracing::info!(%peer, error = %e, "inbound connection refused");
                }
            }
        }
    }

    /// The app port a connection goes to: in transparent mode, the port it was sent to.
    fn app_port(&self, original: Option<SocketAddr>) -> AppPort {
        let (Some(ports), Some(original)) = (&self.ports, original) else {
            return self.app.clone();
        };
        let port = original.port();
        if port == self.app.addr.port() {
            return self.app.clone();
        }
        // Locked once per connection (not per request), for a map lookup.
        let mut ports = ports.lock().unwrap_or_else(|e| e.into_inner());
        ports
            .entry(port)
            .or_insert_with(|| {
                let addr = SocketAddr::new(self.app.addr.ip(), port);
                AppPort::new(
                    addr,
                    &self.client,
                    &self.port_policies,
                    &self.default_policy,
                    &self.opaque_ports,
                )
            })
            .clone()
    }

    /// Why `tls` may not call `app`, if it may not.
    fn denial(app: &AppPort, tls: &PeerTls) -> Option<String> {
        let port = app.addr.port();
        match (&*app.policy, tls) {
            (Policy::Named(NamedPolicy::AllUnauthenticated), _) => None,
            (_, PeerTls::Plaintext) => Some(format!(
                "plaintext on port {port}, whose policy requires mutual TLS"
            )),
            (_, PeerTls::Passthrough) => Some(format!(
                "TLS not terminated by the mesh on port {port}, whose policy requires mutual TLS"
            )),
            (Policy::Named(NamedPolicy::AllAuthenticated), PeerTls::Authenticated(_)) => None,
            (Policy::Allow(allowed), PeerTls::Authenticated(id)) => (!allowed.contains(id))
                .then(|| format!("{id} is not on the allow list of port {port}")),
        }
    }

    async fn serve_authenticated<I>(
        self: Arc<Self>,
        mut io: I,
        tls: PeerTls,
        app: AppPort,
        peer: SocketAddr,
        drain: Drain,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let denial = Self::denial(&app, &tls);
        let port = app.addr.port();
        // TLS that is not ours is opaque by definition: no HTTP detection inside it; nor on a
        // port marked opaque.
        let (protocol, prefix) = if tls == PeerTls::Passthrough || app.opaque {
            (Protocol::Opaque, Bytes::new())
        } else {
            match crate::serve::detect_protocol(&mut io, self.detect_timeout, peer, "inbound").await
            {
                Some(detected) => detected,
                None => return,
            }
        };
        if protocol == Protocol::Opaque
            && prefix.is_empty()
            && tls != PeerTls::Passthrough
            && !app.opaque
        {
            // Nothing arrived within the detection timeout: a protocol whose server speaks
            // first. It works, one timeout late on every connection.
            tracing::info!(
                %peer,
                port,
                timeout = ?self.detect_timeout,
                "the client sent nothing before the detection timeout: forwarding as opaque TCP; add port {port} to inbound opaque-ports to skip the wait"
            );
        }
        let mut io = PrefixedIo::new(prefix, io);
        if protocol == Protocol::Opaque {
            if let Some(why) = denial {
                self.counters
                    .denied
                    .get_or_create(&DenyLabels {
                        protocol: "tcp",
                        tls: tls.label(),
                        port,
                    })
                    .inc();
                tracing::warn!(%peer, client = ?tls.identity().map(|i| i.uri()), "inbound connection denied: {why}");
                return;
            }
            let mut app = match tcp::connect(app.addr, self.connect_timeout).await {
                Ok(app) => app,
                Err(e) => {
                    tracing::info!(%peer, error = %e, "inbound opaque connection: app unreachable");
                    return;
                }
            };
            if let Err(e) = tcp::forward(&mut io, &mut app).await {
                tracing::debug!(%peer, error = %e, "inbound opaque connection ended with an error");
            }
            return;
        }
        let served = match denial {
            Some(why) => {
                tracing::warn!(%peer, client = ?tls.identity().map(|i| i.uri()), "inbound requests denied: {why}");
                // The connection ends after its first answer: a denied client gets its 403
                // and cannot hold the connection open with more requests.
                let close = drain.child();
                let deny = Deny {
                    why: Arc::from(why),
                    counter: self
                        .counters
                        .denied
                        .get_or_create(&DenyLabels {
                            protocol: "http",
                            tls: tls.label(),
                            port,
                        })
                        .clone(),
                    close: close.clone(),
                };
                self.server
                    .serve(io, protocol, Respond::new(deny), &close)
                    .await
            }
            None => {
                let mut labels = self.labels.clone();
                if app.addr != self.app.addr {
                    labels.authority = app.addr.to_string();
                    labels.dst_service = labels.authority.clone();
                }
                labels.tls = tls.label().to_owned();
                if let Some(id) = tls.identity() {
                    labels.peer_identity = id.uri().to_owned();
                }
                let metrics = match &self.metrics {
                    Some(metrics) => metrics.layer(labels),
                    None => HttpMetrics::disabled(),
                };
                let app = WithPeer {
                    inner: metrics.layer(app.client),
                    peer: tls.identity().map(|_| tls.clone()),
                };
                self.server
                    .serve(io, protocol, Respond::new(app), &drain)
                    .await
            }
        };
        if let Err(e) = served {
            tracing::debug!(%peer, error = %e, "inbound connection ended with an error");
        }
    }
}

/// One port of the app: where it listens, its client, and who may call it.
#[derive(Clone, Debug)]
struct AppPort {
    addr: SocketAddr,
    client: EndpointClient,
    policy: Arc<Policy>,
    /// Forwarded as TCP, never sniffed.
    opaque: bool,
}

impl AppPort {
    fn new(
        addr: SocketAddr,
        client: &HttpClient,
        port_policies: &[PortPolicy],
        default_policy: &Arc<Policy>,
        opaque_ports: &PortSet,
    ) -> Self {
        let policy = port_policies
            .iter()
            .find(|p| p.port == addr.port())
            .map_or_else(|| default_policy.clone(), |p| Arc::new(p.policy.clone()));
        Self {
            addr,
            client: client.endpoint(addr),
            policy,
            opaque: opaque_ports.contains(addr.port()),
        }
    }
}

/// Puts the caller's identity in each request's extensions, for the layers and apps after it.
#[derive(Clone, Debug)]
struct WithPeer<S> {
    inner: S,
    peer: Option<PeerTls>,
}

impl<S> tower::Service<Request<Body>> for WithPeer<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> S::Future {
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(peer.clone());
        }
        self.inner.call(req)
    }
}

/// Answers a denied connection's request with 403 (gRPC: PERMISSION_DENIED), then closes the
/// connection (HTTP/1: after the answer; HTTP/2: GOAWAY).
#[derive(Clone, Debug)]
struct Deny {
    why: Arc<str>,
    counter: Counter,
    close: Drain,
}

/// Authorization refused the caller.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unauthorized(Arc<str>);

impl tower::Service<Request<Body>> for Deny {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        self.counter.inc();
        self.close.signal();
        std::future::ready(Err(ProxyError::new(
            Cause::Unauthorized,
            Unauthorized(self.why.clone()),
        )
        .into()))
    }
}
