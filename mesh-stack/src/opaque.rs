//! Opaque TCP services: connections balanced round robin over the endpoints (configured, or
//! as a discovery source publishes them), bytes copied both ways with half-close. A meshed endpoint (one with an identity) is reached over mutual
//! TLS, like HTTP.
//!
//! ```no_run
//! use mesh_stack::config::ServiceConfig;
//! use mesh_stack::opaque::OpaqueService;
//!
//! # async fn run(listener: tokio::net::TcpListener) -> Result<(), Box<dyn std::error::Error>> {
//! let svc: ServiceConfig = toml::from_str(
//!     "authority = \"db:5432\"\nopaque = true\nlisten = \"127.0.0.1:5432\"\nendpoints = [\"10.0.0.9:5432\"]",
//! )?;
//! let forward = OpaqueService::new(&svc, std::time::Duration::from_secs(1), None)?;
//! loop {
//!     let (stream, peer) = listener.accept().await?;
//!     tokio::spawn(forward.clone().serve(stream, peer));
//! }
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_core::identity::Identity;
use mesh_core::tcp;
use mesh_core::transport::{Alpn, BoxedIo, TlsConnect};
use mesh_discovery::EndpointSet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::StackError;
use crate::config::ServiceConfig;

/// One opaque service's forwarder.
#[derive(Clone, Debug)]
pub struct OpaqueService {
    authority: Arc<str>,
    endpoints: Endpoints,
    next: Arc<AtomicUsize>,
    connect_timeout: Duration,
    tls: Option<Arc<dyn TlsConnect>>,
}

/// Where a forwarder's endpoints come from.
#[derive(Clone, Debug)]
enum Endpoints {
    /// Configured, or one address.
    Fixed(Arc<[(SocketAddr, Option<Identity>)]>),
    /// As a discovery source publishes them (the receiver keeps the service followed).
    Live(watch::Receiver<Option<EndpointSet>>),
}

impl OpaqueService {
    /// A forwarder over the service's endpoints.
    pub fn new(
        svc: &ServiceConfig,
        connect_timeout: Duration,
        tls: Option<Arc<dyn TlsConnect>>,
    ) -> Result<Self, StackError> {
        if svc.endpoints.is_empty() {
            return Err(StackError::Config(mesh_core::config::Invalid::new(
                "endpoints",
                "[]",
                format!(
                    "opaque service {:?} needs at least one endpoint",
                    svc.authority
                ),
            )));
        }
        Ok(Self {
            authority: svc.authority.as_str().into(),
            endpoints: Endpoints::Fixed(
                svc.endpoints
                    .iter()
                    .map(|e| (e.addr(), e.identity().cloned()))
                    .collect(),
            ),
            next: Arc::new(AtomicUsize::new(0)),
            connect_timeout,
            tls,
        })
    }

    /// A forwarder to one address (a captured connection's original destination), over mTLS
    /// when `identity` names what it must prove.
    pub fn to(
        addr: SocketAddr,
        identity: Option<Identity>,
        connect_timeout: Duration,
        tls: Option<Arc<dyn TlsConnect>>,
    ) -> Self {
        Self {
            authority: addr.to_string().into(),
            endpoints: Endpoints::Fixed(Arc::new([(addr, identity)])),
            next: Arc::new(AtomicUsize::new(0)),
            connect_timeout,
            tls,
        }
    }

    /// A forwarder over the endpoints a discovery source publishes for `authority` (the
    /// service a captured connection's virtual address names).
    pub fn live(
        authority: &str,
        endpoints: watch::Receiver<Option<EndpointSet>>,
        connect_timeout: Duration,
        tls: Option<Arc<dyn TlsConnect>>,
    ) -> Self {
        Self {
            authority: authority.into(),
            endpoints: Endpoints::Live(endpoints),
            next: Arc::new(AtomicUsize::new(0)),
            connect_timeout,
            tls,
        }
    }

    /// The endpoints now (a copy of a live set: opaque connections are few and long). A
    /// service just found waits for its first set, as long as a connect may take.
    async fn current(&self) -> Arc<[(SocketAddr, Option<Identity>)]> {
        match &self.endpoints {
            Endpoints::Fixed(endpoints) => endpoints.clone(),
            Endpoints::Live(rx) => {
                let mut rx = rx.clone();
                let resolved = rx.wait_for(Option::is_some);
                let _ = tokio::time::timeout(self.connect_timeout, resolved).await;
                rx.borrow()
                    .iter()
                    .flat_map(|set| set.values())
                    .map(|e| (e.addr, e.identity().cloned()))
                    .collect()
            }
        }
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        identity: Option<&Identity>,
    ) -> Result<BoxedIo, mesh_core::BoxError> {
        let started = tokio::time::Instant::now();
        let tcp = tcp::connect(addr, self.connect_timeout).await?;
        match (identity, &self.tls) {
            (Some(identity), Some(tls)) => {
                // The handshake within what is left of the connect timeout: a peer that
                // accepts TCP and never answers TLS must not hold the client forever.
                let left = self.connect_timeout.saturating_sub(started.elapsed());
                match tokio::time::timeout(left, tls.connect(tcp, identity, Alpn::None)).await {
                    Ok(secured) => secured,
                    Err(_) => Err(format!(
                        "{addr}: no answer to the ClientHello within the connect timeout ({:?})",
                        self.connect_timeout
                    )
                    .into()),
                }
            }
            _ => Ok(Box::new(tcp)),
        }
    }

    /// Forwards one connection; an endpoint that refuses is skipped for the next one in turn.
    pub async fn serve<I>(self, mut client: I, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let endpoints = self.current().await;
        let mut upstream = None;
        for i in 0..endpoints.len() {
            let (addr, identity) = &endpoints[(start + i) % endpoints.len()];
            match self.connect(*addr, identity.as_ref()).await {
                Ok(s) => {
                    upstream = Some(s);
                    break;
                }
                Err(e) => {
                    tracing::info!(service = %self.authority, %peer, error = %e, "endpoint unreachable")
                }
            }
        }
        let Some(mut upstream) = upstream else {
            tracing::warn!(service = %self.authority, %peer, "no endpoint reachable: closing the connection");
            return;
        };
        match tcp::forward(&mut client, &mut upstream).await {
            Ok(copied) => {
                tracing::debug!(service = %self.authority, %peer, ?copied, "opaque connection closed")
            }
            Err(e) => {
                tracing::debug!(service = %self.authority, %peer, error = %e, "opaque connection ended with an error")
            }
        }
    }
}
