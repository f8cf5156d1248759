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
//! Kubernetes source).
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
}

impl Controller {
    /// Loads the trust anchors, the issuer and the token source, and binds the listener.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let trust = TrustAnchors::from_pem_file(&config.identity.trust_anchors)
            .context("identity.trust_anchors")?;
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
        let acceptor =
            tokio_rustls::TlsAcceptor::from(self.identity.server_config_without_client_auth());
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Tls>>(64);
        let listener = self.listener;
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
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(Tls(Box::new(tls)))).await;
                        }
                        Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        let served = tonic::transport::Server::builder()
            .add_service(mesh_tls::api::proto::identity_server::IdentityServer::new(
                self.service,
            ))
            .add_optional_service(self.destination.map(|d| d.into_server()))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(rx), shutdown)
            .await;
        accept.abort();
        renew.abort();
        served.context("serving the identity service")
    }
}

/// A client's TLS connection, as tonic serves it.
struct Tls(Box<TlsStream<TcpStream>>);

impl tonic::transport::server::Connected for Tls {
    type ConnectInfo = Option<SocketAddr>;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl AsyncRead for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
