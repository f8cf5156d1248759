//! The identity service's API (`mesh.identity.v1.Identity/Certify`) and its client.
//!
//! The client speaks gRPC over TLS to the controller, verifying that the controller proves
//! its configured identity against the trust anchors. The proxy has no certificate yet when it
//! first calls, so it proves itself with a token instead: a projected ServiceAccount token in
//! Kubernetes, read anew for every call because the kubelet rotates it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::rt::TokioIo;
use mesh_core::identity::Identity;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::TlsError;
use crate::ca::Issued;
use crate::cert::TrustAnchors;
use crate::local::{ALPN_H2, Certify};

/// Generated gRPC code.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("mesh.identity.v1");
}

/// Certifies through the controller's identity service.
#[derive(Debug)]
pub struct ControllerClient {
    client: proto::identity_client::IdentityClient<tonic::transport::Channel>,
    token_file: PathBuf,
}

impl ControllerClient {
    /// A client of the controller at `addr` (`host:port`: an IP, or a name such as
    /// `mesh-controller.mesh-system.svc.cluster.local:8080` resolved at each connect), which
    /// must prove `controller` (verified against `trust`), sending the token read from
    /// `token_file`. Connects lazily.
    pub fn new(
        addr: &str,
        controller: &Identity,
        trust: &TrustAnchors,
        token_file: PathBuf,
        timeout: Duration,
    ) -> Result<Self, TlsError> {
        let channel = controller_channel(addr, controller, trust, None, Some(timeout))?;
        Ok(Self {
            client: proto::identity_client::IdentityClient::new(channel),
            token_file,
        })
    }
}

/// How long a channel that presents our certificate waits for the first one before it
/// connects without.
const CERTIFICATE_WAIT: Duration = Duration::from_secs(30);

/// A gRPC channel to the controller at `addr` over TLS, verifying that it proves `controller`
/// against `trust` (the anchors in force at each connect); presenting `client_cert` when
/// given and holding a certificate (the destination API serves only callers that prove an
/// identity); each call limited to `timeout` (`None` for streams). Connects lazily and
/// reconnects by itself.
pub fn controller_channel(
    addr: &str,
    controller: &Identity,
    trust: &TrustAnchors,
    client_cert: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
    timeout: Option<Duration>,
) -> Result<tonic::transport::Channel, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(trust.server_verifier());
    let mut config = match &client_cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver.clone()),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target: Arc<str> = addr.into();
    let name = ServerName::try_from(controller.dns_name().to_owned())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| TlsError::Config(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        // A controller that vanished without a FIN is found within seconds.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let connector = connector.clone();
            let name = name.clone();
            let target = target.clone();
            let client_cert = client_cert.clone();
            async move {
                // A connection made before our first certificate would present none for its
                // whole life, and the destination API refuses such callers: wait for one
                // (bounded; the identity service's own retries run meanwhile).
                if let Some(resolver) = &client_cert {
                    let deadline = tokio::time::Instant::now() + CERTIFICATE_WAIT;
                    while !resolver.has_certs() && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                // A name is resolved anew at each connect: the controller's Service may move.
                let tcp = tokio::net::TcpStream::connect(&*target).await?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

impl Certify for ControllerClient {
    fn certify<'a>(
        &'a self,
        identity: &'a Identity,
        csr: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<Issued, TlsError>> + Send + 'a>> {
        Box::pin(async move {
            let token = std::fs::read(&self.token_file).map_err(|e| {
                TlsError::Certify(format!(
                    "cannot read the token {}: {e}",
                    self.token_file.display()
                ))
            })?;
            let request = proto::CertifyRequest {
                identity: identity.uri().to_owned(),
                token: trim_ascii(token),
                certificate_signing_request: csr.to_vec(),
            };
            let response = self
                .client
                .clone()
                .certify(request)
                .await
                .map_err(|status| {
                    TlsError::Certify(format!(
                        "the identity service answered {:?}: {}",
                        status.code(),
                        status.message()
                    ))
                })?
                .into_inner();
            let mut chain = vec![CertificateDer::from(response.leaf_certificate)];
            chain.extend(
                response
                    .intermediate_certificates
                    .into_iter()
                    .map(CertificateDer::from),
            );
            let valid_until = UNIX_EPOCH
                + Duration::from_secs(
                    u64::try_from(response.valid_until_unix_seconds).unwrap_or(0),
                );
            if valid_until <= SystemTime::now() {
                return Err(TlsError::Certify(
                    "the identity service sent an expired certificate".into(),
                ));
            }
            Ok(Issued { chain, valid_until })
        })
    }
}

/// Tokens in files often end with a newline.
fn trim_ascii(mut token: Vec<u8>) -> Vec<u8> {
    while token.last().is_some_and(u8::is_ascii_whitespace) {
        token.pop();
    }
    token
}
