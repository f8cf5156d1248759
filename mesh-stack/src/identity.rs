//! The workload's identity as configured: its key made in memory, and what certifies it (the
//! controller's identity service, or local issuer files).

use std::sync::Arc;

use mesh_tls::local::{Certify, LocalIdentity};

use crate::StackError;
use crate::config::{IdentityConfig, IdentityMode};

/// The workload's identity (no certificate yet) and what certifies it. Start renewing with
/// `identity.clone().renew_forever(certify, metrics)`.
pub fn from_config(c: &IdentityConfig) -> Result<(LocalIdentity, Arc<dyn Certify>), StackError> {
    let failed = |key: &'static str| {
        move |e| StackError::Identity {
            key,
            source: Box::new(e),
        }
    };
    let trust = c
        .load_trust_anchors()
        .map_err(failed("identity.trust_anchors"))?;
    if let Some(path) = c.trust_anchors_file() {
        // A root rotation: the file becomes a bundle of the old and new roots, then the new
        // root alone; each change applies to new handshakes, with no restart.
        trust.watch(path, mesh_tls::cert::TRUST_ANCHORS_POLL);
    }
    let certify: Arc<dyn Certify> = match c.mode {
        IdentityMode::Local => {
            let (Some(cert), Some(key)) = (&c.issuer_cert, &c.issuer_key) else {
                return Err(StackError::Identity {
                    key: "identity",
                    source: "local mode needs issuer_cert and issuer_key".into(),
                });
            };
            mesh_tls::local::local_ca(cert, key, c.lifetime, &trust)
                .map_err(failed("identity.issuer_cert"))?
        }
        IdentityMode::Controller => {
            let (Some(addr), Some(controller), Some(token)) =
                (&c.controller, &c.controller_identity, &c.token_file)
            else {
                return Err(StackError::Identity {
                    key: "identity",
                    source: "controller mode needs controller, controller_identity and token_file"
                        .into(),
                });
            };
            Arc::new(
                mesh_tls::api::ControllerClient::new(
                    addr.as_str(),
                    controller,
                    &trust,
                    token.clone(),
                    c.certify_timeout,
                )
                .map_err(failed("identity.controller"))?,
            )
        }
    };
    let identity = LocalIdentity::new(c.name.clone(), trust).map_err(failed("identity.name"))?;
    Ok((identity, certify))
}

/// Starts renewing `identity`'s certificate with `certify` in the background (its metrics in
/// `registry`), and returns the connector that reaches meshed endpoints with it.
pub fn start(
    identity: &LocalIdentity,
    certify: Arc<dyn Certify>,
    registry: &mut prometheus_client::registry::Registry,
) -> Arc<dyn mesh_core::transport::TlsConnect> {
    let metrics = mesh_tls::metrics::IdentityMetrics::register(registry);
    tokio::spawn(identity.clone().renew_forever(certify, metrics));
    mesh_tls::connect::connector(identity)
}
