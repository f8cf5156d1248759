//! `Certify`: token -> identity, CSR for exactly that identity -> leaf.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_core::identity::Identity;
use mesh_tls::api::proto::identity_server::Identity as IdentityApi;
use mesh_tls::api::proto::{CertifyRequest, CertifyResponse};
use mesh_tls::ca::IssuerFiles;
use mesh_tls::cert;
use tonic::{Request, Response, Status};

use crate::tokens::{TokenError, TokenSource};

/// The identity service.
#[derive(Clone, Debug)]
pub struct IdentityService {
    issuer: Arc<IssuerFiles>,
    tokens: TokenSource,
    trust_domain: Arc<str>,
    lifetime: Duration,
}

impl IdentityService {
    /// Signs leaves of `lifetime` in `trust_domain` for callers `tokens` vouch for.
    pub fn new(
        issuer: Arc<IssuerFiles>,
        tokens: TokenSource,
        trust_domain: String,
        lifetime: Duration,
    ) -> Self {
        Self {
            issuer,
            tokens,
            trust_domain: trust_domain.into(),
            lifetime,
        }
    }

    async fn certify_checked(&self, request: CertifyRequest) -> Result<CertifyResponse, Status> {
        let identity = Identity::parse(&request.identity)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if identity.trust_domain() != &*self.trust_domain {
            return Err(Status::invalid_argument(format!(
                "{identity} is not in the trust domain {}",
                self.trust_domain
            )));
        }
        let proven = self
            .tokens
            .identify(&request.token, &self.trust_domain)
            .await
            .map_err(|e| {
                // The detail (the API server's words, its address) stays in our log; the
                // caller learns the code and a short reason.
                tracing::info!(identity = %identity, detail = %e, "token refused");
                match e {
                    TokenError::Unavailable(_) => {
                        Status::unavailable("the token cannot be checked now; retry shortly")
                    }
                    TokenError::Empty | TokenError::Unknown => {
                        Status::unauthenticated(e.to_string())
                    }
                    TokenError::Rejected(_) => {
                        Status::unauthenticated("Kubernetes does not authenticate the token")
                    }
                    TokenError::NotServiceAccount(_) => {
                        Status::unauthenticated("the token is not a ServiceAccount's")
                    }
                }
            })?;
        if proven != identity {
            return Err(Status::permission_denied(format!(
                "the token proves {proven}, not {identity}"
            )));
        }
        let issuer = self
            .issuer
            .current()
            .ok_or_else(|| Status::unavailable("no issuer loaded"))?;
        let issued = issuer
            .certify(
                &identity,
                &request.certificate_signing_request,
                self.lifetime,
                SystemTime::now(),
            )
            .map_err(|e| match e {
                mesh_tls::TlsError::Csr(_) => Status::invalid_argument(e.to_string()),
                _ => {
                    tracing::error!(identity = %identity, error = %e, "the issuer cannot sign");
                    Status::unavailable("the issuer cannot sign now")
                }
            })?;
        let mut chain = issued.chain.into_iter().map(|c| c.to_vec());
        Ok(CertifyResponse {
            leaf_certificate: chain.next().unwrap_or_default(),
            intermediate_certificates: chain.collect(),
            valid_until_unix_seconds: i64::try_from(cert::unix_seconds(issued.valid_until))
                .unwrap_or(i64::MAX),
        })
    }
}

#[tonic::async_trait]
impl IdentityApi for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = request
            .extensions()
            .get::<crate::Peer>()
            .and_then(|p| p.addr);
        let request = request.into_inner();
        let requested = request.identity.clone();
        match self.certify_checked(request).await {
            Ok(response) => {
                tracing::info!(identity = %requested, ?peer, "certificate issued");
                Ok(Response::new(response))
            }
            Err(status) => {
                tracing::warn!(
                    identity = %requested,
                    ?peer,
                    code = ?status.code(),
                    reason = %status.message(),
                    "certify refused"
                );
                Err(status)
            }
        }
    }
}
