//! mesh-controller: the identity service.
//!
//! Workloads call `mesh.identity.v1.Identity/Certify` over TLS with their identity, a token
//! that proves it, and a CSR; the controller checks the token (a Kubernetes TokenReview, or a
//! token file elsewhere), checks that the CSR asks for exactly that identity, and signs a leaf
//! with the issuer, which it reloads when its files change (cert-manager rotating a Secret).
//! Every refusal is a gRPC status that names the reason, and a log line.
//!
//! The controller serves with a certificate of its own identity, issued by the same issuer,
//! so proxies verify it against the trust anchors they already have.
//!
//! With a `[destination]` section it also serves the destination API
//! (`mesh.destination.v1.Destination`) on the same port: `Resolve`, the endpoints of
//! Kubernetes Services, and `Lookup`, what an IP and port is (a Service's ClusterIP, a pod's
//! address with its identity), both watched once here for every proxy (mesh-discovery's
//! Kubernetes source). Only callers that prove a mesh identity with their certificate (mutual
//! TLS) are answered.
//!
//! # What one client can hold
//!
//! Every wait and every resource a caller can make the controller hold is bounded, each by a
//! setting of `[server]`, `[tokens]` or `[destination]` with a default: connections in all
//! and per client address, streams per connection and per client address, the time to an
//! answer, the TLS handshake (10 s), TokenReviews per second (each token's verdict is reused
//! for a while, so that a flood of garbage tokens costs the API server a bounded rate), and
//! the namespaces watched for `Resolve` (released when no proxy follows them any more).
//! Refusals carry a gRPC code and a short reason; the detail stays in the controller's log.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = mesh_controller::Config::from_toml_str(r#"
//!     listen = "127.0.0.1:8080"
//!     [identity]
//!     trust_anchors = "roots.pem"
//!     issuer_cert = "issuer.crt"
//!     issuer_key = "issuer.key"
//!     [tokens]
//!     file = "tokens.txt"
//! "#)?;
//! let controller = mesh_controller::Controller::bind(config).await?;
//! controller.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod service;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use mesh_core::identity::Identity;
use mesh_tls::ca::IssuerFiles;
use mesh_tls::cert::TrustAnchors;
use mesh_tls::local::{LocalCa, LocalIdentity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

pub use config::Config;

/// How long the controller may take to certify itself at start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A controller whose listener is bound and whose issuer is loaded.
#[derive(Debug)]
pub struct Controller {
    listener: TcpListener,
    service: service::IdentityService,
    identity: LocalIdentity,
    ca: Arc<LocalCa>,
    destination: Option<mesh_discovery::remote::DestinationService>,
    limits: config::ServerConfig,
}

impl Controller {
    /// Loads the trust anchors, the issuer and the token source, and binds the listener.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let trust = TrustAnchors::from_pem_file(&config.identity.trust_anchors)
            .context("identity.trust_anchors")?;
        // A root rotation reaches the controller as it reaches the proxies: the issuer check,
        // the controller's own certificate and its clients' all follow the file.
        trust.watch(
            config.identity.trust_anchors.clone(),
            mesh_tls::cert::TRUST_ANCHORS_POLL,
        );
        let issuer = IssuerFiles::load(
            &config.identity.issuer_cert,
            &config.identity.issuer_key,
            &trust,
        )
        .context("identity.issuer_cert / identity.issuer_key")?;
        issuer
            .watch(config.identity.issuer_poll)
            .context("watching the issuer files")?;
        let tokens = tokens::TokenSource::new(&config.tokens)
            .await
            .context("tokens")?;
        let identity = LocalIdentity::new(config.identity.name()?, trust)?;
        let destination = match &config.destination {
            Some(d) => {
                let kube_config = match &d.kubernetes_api {
                    Some(url) => {
                        kube::Config::new(url.parse().context("destination.kubernetes_api")?)
                    }
                    None => kube::Config::infer()
                        .await
                        .context("destination: no Kubernetes configuration")?,
                };
                let client = kube::Client::try_from(kube_config).context("destination")?;
                let mut k8s = mesh_discovery::kubernetes::KubernetesConfig {
                    trust_domain: config.identity.trust_domain.clone(),
                    max_namespaces: d.max_namespaces,
                    release_after: d.release_after,
                    ..Default::default()
                };
                if let Some(domain) = &d.cluster_domain {
                    k8s.cluster_domain = domain.clone();
                }
                let source = mesh_discovery::kubernetes::KubernetesResolve::new(client, k8s);
                // One set of watches answers both: endpoints by name, and what an address is.
                Some(
                    mesh_discovery::remote::DestinationService::new(Arc::new(source.clone()))
                        .with_lookup(Arc::new(source)),
                )
            }
            None => None,
        };
        let ca = Arc::new(LocalCa::new(issuer.clone(), config.identity.leaf_lifetime));
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
        let service = service::IdentityService::new(
            issuer,
            tokens,
            config.identity.trust_domain.clone(),
            config.identity.leaf_lifetime,
        );
        Ok(Self {
            listener,
            service,
            identity,
            ca,
            destination,
            limits: config.server.clone(),
        })
    }

    /// The listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let renew = tokio::spawn(self.identity.clone().renew_forever(
            self.ca.clone(),
            mesh_tls::metrics::IdentityMetrics::default(),
        ));
        // The issuer was checked against the trust anchors at bind: this is quick, unless the
        // files changed in between.
        if tokio::time::timeout(READY_TIMEOUT, self.identity.ready())
            .await
            .is_err()
        {
            renew.abort();
            anyhow::bail!(
                "the controller could not certify its own identity {} within {READY_TIMEOUT:?}",
                self.identity.name()
            );
        }
        tracing::info!(
            listen = %self.local_addr(),
            identity = %self.identity.name(),
            "identity service ready"
        );
        // A client certificate is asked for and verified when sent, but not required: the
        // identity service serves workloads before they hold one (their token proves them);
        // the destination API serves only callers that proved an identity.
        let acceptor =
            tokio_rustls::TlsAcceptor::from(self.identity.server_config_optional_client_auth());
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Tls>>(64);
        let listener = self.listener;
        let limits = self.limits;
        let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
        let per_client = PerClient::default();
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = connections.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "at the connection cap: closed at once");
                    continue;
                };
                let Some(client_slot) =
                    per_client.acquire(peer.ip(), limits.max_connections_per_client)
                else {
                    tracing::info!(%peer, "this client holds its most connections: closed at once");
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let identity = peer_identity(&tls);
                            let conn = Tls {
                                io: Box::new(tls),
                                peer: Peer {
                                    addr: Some(peer),
                                    identity,
                                },
                                _slots: (slot, client_slot),
                            };
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        let streams = PerClient::default();
        let max_streams = limits.max_streams_per_client;
        let destination = self.destination.map(|d| {
            mesh_discovery::remote::proto::destination_server::DestinationServer::with_interceptor(
                d,
                move |request| authorize_destination(request, &streams, max_streams),
            )
        });
        let served = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(limits.max_concurrent_streams))
            .http2_keepalive_interval(Some(limits.keep_alive_interval))
            .http2_keepalive_timeout(Some(limits.keep_alive_interval))
            .timeout(limits.request_timeout)
            // A client that resets streams as fast as it opens them (HTTP/2 rapid reset) is
            // sent GOAWAY after this many; headers are bounded in size.
            .http2_max_pending_accept_reset_streams(Some(64))
            .http2_max_header_list_size(Some(16 * 1024))
            .add_service(mesh_tls::api::proto::identity_server::IdentityServer::new(
                self.service,
            ))
            .add_optional_service(destination)
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
            .await;
        accept.abort();
        renew.abort();
        served.context("serving the identity service")
    }
}

/// Who is at the other end of a connection: in each request's extensions.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: Option<SocketAddr>,
    /// The mesh identity its certificate proved, if it sent one.
    pub identity: Option<Identity>,
}

/// A client's TLS connection, as tonic serves it, with the slots it holds until it closes.
struct Tls {
    io: Box<TlsStream<TcpStream>>,
    peer: Peer,
    _slots: (tokio::sync::OwnedSemaphorePermit, ClientSlot),
}

impl tonic::transport::server::Connected for Tls {
    type ConnectInfo = Peer;
    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// The identity a client's certificate proves (verified against the trust anchors during the
/// handshake): `None` without a certificate.
fn peer_identity(tls: &TlsStream<TcpStream>) -> Option<Identity> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    mesh_tls::cert::inspect(leaf).ok()?.identity
}

/// The destination API answers callers that proved a mesh identity, each client address
/// holding at most `max_streams` calls at once.
fn authorize_destination(
    mut request: tonic::Request<()>,
    streams: &PerClient,
    max_streams: usize,
) -> Result<tonic::Request<()>, tonic::Status> {
    let peer = request.extensions().get::<Peer>().cloned();
    let Some(Peer {
        addr,
        identity: Some(identity),
    }) = peer
    else {
        return Err(tonic::Status::unauthenticated(
            "the destination API needs the caller's mesh certificate (mutual TLS)",
        ));
    };
    let ip = addr.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let Some(slot) = streams.acquire(ip, max_streams) else {
        tracing::info!(%identity, %ip, max_streams, "destination call refused: too many streams");
        return Err(tonic::Status::resource_exhausted(
            "too many destination streams from this client",
        ));
    };
    request
        .extensions_mut()
        .insert(mesh_discovery::remote::StreamGuard(Arc::new(slot)));
    Ok(request)
}

/// Counts what each client address holds (connections, streams); an address holding
/// nothing takes no memory.
#[derive(Clone, Debug, Default)]
struct PerClient(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One unit a client holds, given back when dropped.
#[derive(Debug)]
struct ClientSlot {
    counts: PerClient,
    ip: std::net::IpAddr,
}

impl PerClient {
    fn acquire(&self, ip: std::net::IpAddr, max: usize) -> Option<ClientSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let held = counts.entry(ip).or_insert(0);
        if *held >= max {
            return None;
        }
        *held += 1;
        Some(ClientSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = counts.get_mut(&self.ip) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl AsyncRead for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
