//! Tokens that prove identities: a Kubernetes TokenReview of a projected ServiceAccount token,
//! or a file mapping tokens to identities.

use std::path::PathBuf;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use mesh_core::identity::Identity;

use crate::config::TokensConfig;

/// Why a token proves nothing.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is empty.
    #[error("the token is empty")]
    Empty,
    /// No identity has this token.
    #[error("the token is not known")]
    Unknown,
    /// Kubernetes does not authenticate the token.
    #[error("Kubernetes does not authenticate the token: {0}")]
    Rejected(String),
    /// The token authenticates someone who is not a ServiceAccount.
    #[error("the token authenticates {0:?}, not a ServiceAccount")]
    NotServiceAccount(String),
    /// The token could not be checked (the API or the file is unreachable).
    #[error("the token cannot be checked now: {0}")]
    Unavailable(String),
}

/// Checks tokens.
#[derive(Clone)]
pub enum TokenSource {
    /// `<identity> <token>` lines, read at every check so that edits apply at once.
    File(PathBuf),
    /// TokenReviews.
    Kubernetes {
        /// The API client.
        client: kube::Client,
        /// The audience the token must be for.
        audience: String,
    },
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
            TokenSource::Kubernetes { audience, .. } => f
                .debug_struct("Kubernetes")
                .field("audience", audience)
                .finish_non_exhaustive(),
        }
    }
}

impl TokenSource {
    /// The source the configuration names.
    pub async fn new(config: &TokensConfig) -> anyhow::Result<Self> {
        if config.kubernetes {
            let mut kube_config = match &config.kubernetes_api {
                Some(url) => kube::Config::new(url.parse()?),
                None => kube::Config::infer().await?,
            };
            // A review answers within the caller's deadline or not at all: the proxy retries
            // with its own backoff, so kube's retries (up to minutes) would only hide an
            // overloaded API server.
            kube_config.default_retry = false;
            kube_config.read_timeout = Some(TOKEN_REVIEW_TIMEOUT);
            let client = kube::Client::try_from(kube_config)?;
            return Ok(TokenSource::Kubernetes {
                client,
                audience: config.audience.clone(),
            });
        }
        match &config.file {
            Some(path) => {
                // Fail at start on an unreadable file rather than at the first request.
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("tokens.file {}: {e}", path.display()))?;
                Ok(TokenSource::File(path.clone()))
            }
            None => anyhow::bail!("no token source: set tokens.file or tokens.kubernetes"),
        }
    }

    /// The identity `token` proves, in `trust_domain`.
    pub async fn identify(&self, token: &[u8], trust_domain: &str) -> Result<Identity, TokenError> {
        let token = std::str::from_utf8(token)
            .map_err(|_| TokenError::Unknown)?
            .trim();
        if token.is_empty() {
            return Err(TokenError::Empty);
        }
        match self {
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| TokenError::Unavailable(format!("{}: {e}", path.display())))?;
                for line in text.lines() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    if let Some((identity, known)) = line.split_once(char::is_whitespace)
                        && constant_time_eq(known.trim().as_bytes(), token.as_bytes())
                    {
                        return Identity::parse(identity)
                            .map_err(|e| TokenError::Unavailable(format!("token file: {e}")));
                    }
                }
                Err(TokenError::Unknown)
            }
            TokenSource::Kubernetes { client, audience } => {
                let review = TokenReview {
                    spec: TokenReviewSpec {
                        token: Some(token.to_owned()),
                        audiences: Some(vec![audience.clone()]),
                    },
                    ..TokenReview::default()
                };
                let api: Api<TokenReview> = Api::all(client.clone());
                let reviewed = tokio::time::timeout(
                    TOKEN_REVIEW_TIMEOUT,
                    api.create(&PostParams::default(), &review),
                )
                .await
                .map_err(|_| {
                    TokenError::Unavailable(format!(
                        "the Kubernetes API did not answer the TokenReview within {TOKEN_REVIEW_TIMEOUT:?}"
                    ))
                })?
                .map_err(|e| TokenError::Unavailable(kube_error(&e)))?;
                let status = reviewed.status.unwrap_or_default();
                if status.authenticated != Some(true) {
                    return Err(TokenError::Rejected(
                        status
                            .error
                            .unwrap_or_else(|| "not authenticated".to_owned()),
                    ));
                }
                if let Some(audiences) = &status.audiences
                    && !audiences.iter().any(|a| a == audience)
                {
                    return Err(TokenError::Rejected(format!(
                        "the token is for {audiences:?}, not {audience:?}"
                    )));
                }
                let username = status.user.and_then(|u| u.username).unwrap_or_default();
                let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
                    return Err(TokenError::NotServiceAccount(username));
                };
                let Some((namespace, sa)) = rest.split_once(':') else {
                    return Err(TokenError::NotServiceAccount(username));
                };
                Identity::new(trust_domain, namespace, sa)
                    .map_err(|_| TokenError::NotServiceAccount(username.clone()))
            }
        }
    }
}

/// How long a TokenReview may take.
pub const TOKEN_REVIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A kube error in a line: the API's own message when it answered, the cause chain otherwise.
fn kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => format!(
            "the Kubernetes API answered {} {}: {}",
            status.code, status.reason, status.message
        ),
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

/// Compares without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
