//! The outbound side: mutual TLS to an endpoint that must prove a given identity.

use std::sync::Arc;

use mesh_core::identity::Identity;
use mesh_core::transport::{Alpn, BoxedIo, ConnectFuture, TlsConnect};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use crate::local::LocalIdentity;

/// Connects with our certificate and verifies the server's: its chain must lead to a trust
/// anchor and its DNS SAN must be exactly the identity discovery named (a valid certificate of
/// another workload is refused). The SNI is that name, so the server's proxy knows the
/// connection is for it.
#[derive(Clone, Debug)]
pub struct MeshConnector {
    identity: LocalIdentity,
    resume: bool,
}

impl MeshConnector {
    /// Connects as `identity`, resuming TLS sessions where the server allows.
    pub fn new(identity: LocalIdentity) -> Self {
        Self {
            identity,
            resume: true,
        }
    }

    /// Makes every handshake a full one (no session resumption): each one verifies the
    /// certificate the server holds now. For probes and benchmarks; the data path resumes.
    pub fn full_handshakes(mut self) -> Self {
        self.resume = false;
        self
    }

    /// Handshakes over `tcp` with a server that must be `server`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        server: &Identity,
        alpn: Alpn,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(server.dns_name().to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut config = self.identity.client_config(alpn);
        if !self.resume {
            let mut full = (*config).clone();
            full.resumption = rustls::client::Resumption::disabled();
            config = Arc::new(full);
        }
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }
}

impl TlsConnect for MeshConnector {
    fn connect(&self, tcp: TcpStream, server: &Identity, alpn: Alpn) -> ConnectFuture {
        let this = self.clone();
        let server = server.clone();
        Box::pin(async move {
            let tls = this.handshake(tcp, &server, alpn).await.map_err(|e| {
                Box::new(HandshakeError { server, source: e }) as mesh_core::BoxError
            })?;
            Ok(Box::new(tls) as BoxedIo)
        })
    }
}

/// A handshake toward a meshed endpoint failed.
#[derive(Debug, thiserror::Error)]
#[error("mTLS to {server} failed: {source}")]
pub struct HandshakeError {
    server: Identity,
    #[source]
    source: std::io::Error,
}

/// Erases a connector for `HttpClient::with_tls`.
pub fn connector(identity: &LocalIdentity) -> Arc<dyn TlsConnect> {
    Arc::new(MeshConnector::new(identity.clone()))
}
