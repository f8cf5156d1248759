//! Opaque TCP services: connections balanced round robin over the endpoints, bytes copied
//! both ways with half-close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_core::tcp;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::ServiceConfig;

/// One opaque service's forwarder.
#[derive(Clone, Debug)]
pub struct OpaqueService {
    authority: Arc<str>,
    endpoints: Arc<[SocketAddr]>,
    next: Arc<AtomicUsize>,
    connect_timeout: Duration,
}

impl OpaqueService {
    /// A forwarder over the service's endpoints.
    pub fn new(svc: &ServiceConfig, connect_timeout: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !svc.endpoints.is_empty(),
            "service {:?} has no endpoints",
            svc.authority
        );
        Ok(Self {
            authority: svc.authority.as_str().into(),
            endpoints: svc.endpoints.iter().map(|e| e.addr()).collect(),
            next: Arc::new(AtomicUsize::new(0)),
            connect_timeout,
        })
    }

    /// Forwards one connection; an endpoint that refuses is skipped for the next one in turn.
    pub async fn serve<I>(self, mut client: I, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut upstream = None;
        for i in 0..self.endpoints.len() {
            let addr = self.endpoints[(start + i) % self.endpoints.len()];
            match tcp::connect(addr, self.connect_timeout).await {
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
