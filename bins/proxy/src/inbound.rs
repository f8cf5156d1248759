//! The inbound stack: other services' calls, forwarded to the local app.

use std::net::SocketAddr;
use std::time::Duration;

use mesh_core::client::{EndpointClient, HttpClient};
use mesh_core::detect::{PrefixedIo, Protocol};
use mesh_core::drain::Drain;
use mesh_core::endpoint::Direction;
use mesh_core::server::{HttpServer, Respond};
use mesh_core::tcp;
use mesh_metrics::http::{HttpMetrics, RequestLabels, RequestMetrics};
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceBuilder;

use crate::Config;
use crate::config::InboundConfig;

/// The inbound stack, shared by every inbound connection.
#[derive(Clone, Debug)]
pub struct Inbound {
    stack: Respond<RequestMetrics<EndpointClient>>,
    server: HttpServer,
    app: SocketAddr,
    detect_timeout: Duration,
    connect_timeout: Duration,
}

impl Inbound {
    /// Builds the stack in front of `inbound.app`.
    pub fn new(inbound: &InboundConfig, config: &Config, metrics: &HttpMetrics) -> Self {
        let client = HttpClient::new(&config.client);
        // Until mTLS names the caller, inbound requests come from an unknown source.
        let labels = RequestLabels {
            direction: Direction::Inbound.as_str().to_owned(),
            authority: inbound.app.to_string(),
            dst_service: inbound.app.to_string(),
            dst_namespace: config.workload.namespace.clone(),
            dst_workload: config.workload.name.clone(),
            tls: "false".to_owned(),
            ..RequestLabels::default()
        };
        let app = ServiceBuilder::new()
            .layer(if config.metrics.requests {
                metrics.layer(labels)
            } else {
                HttpMetrics::disabled()
            })
            .service(client.endpoint(inbound.app));
        Self {
            stack: Respond::new(app),
            server: HttpServer::new(&config.server),
            app: inbound.app,
            detect_timeout: inbound.detect_timeout,
            connect_timeout: config.client.connect_timeout,
        }
    }

    /// Serves one accepted connection: HTTP through the stack, anything else as bytes.
    pub async fn serve<I>(self, mut stream: I, peer: SocketAddr, drain: Drain)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some((protocol, prefix)) =
            crate::detect_protocol(&mut stream, self.detect_timeout, peer, "inbound").await
        else {
            return;
        };
        let mut io = PrefixedIo::new(prefix, stream);
        if protocol == Protocol::Opaque {
            let mut app = match tcp::connect(self.app, self.connect_timeout).await {
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
        if let Err(e) = self.server.serve(io, protocol, self.stack, &drain).await {
            tracing::debug!(%peer, error = %e, "inbound connection ended with an error");
        }
    }
}
