//! Tokens that prove identities: a Kubernetes TokenReview of a projected ServiceAccount token,
//! or a file mapping tokens to identities.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use mesh_core::identity::Identity;

use crate::config::TokensConfig;

/// Why a token proves nothing.
#[derive(Clone, Debug, thiserror::Error)]
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
        /// Verdicts already known, and the rate of new reviews.
        reviews: Arc<Reviews>,
    },
}

/// What bounds the TokenReviews a caller can cause: each token's verdict is reused for a
/// while (by the token's SHA-256, never the token itself), and new reviews are rate-limited
/// by a token bucket, so that garbage tokens cost the API server a bounded rate whatever
/// their number.
#[derive(Debug)]
pub struct Reviews {
    verdicts: Mutex<HashMap<[u8; 32], Verdict>>,
    bucket: Mutex<Bucket>,
    ttl: Duration,
}

/// A review's verdict on a token (the username it proves, or why not), and until when it
/// holds.
type Verdict = (Result<String, TokenError>, Instant);

/// At most this many verdicts are kept: past it, expired ones go, then any.
const MAX_VERDICTS: usize = 10_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Reviews {
    /// `per_second` reviews on average, `burst` at once; verdicts kept `ttl` (refusals a
    /// tenth of it).
    pub fn new(per_second: u32, burst: u32, ttl: Duration) -> Self {
        Self {
            verdicts: Mutex::new(HashMap::new()),
            bucket: Mutex::new(Bucket {
                tokens: f64::from(burst),
                last: Instant::now(),
                rate: f64::from(per_second),
                burst: f64::from(burst),
            }),
            ttl,
        }
    }

    fn known(&self, key: &[u8; 32]) -> Option<Result<String, TokenError>> {
        let verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        verdicts
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(verdict, _)| verdict.clone())
    }

    fn remember(&self, key: [u8; 32], verdict: &Result<String, TokenError>) {
        let ttl = match verdict {
            Ok(_) => self.ttl,
            // A refusal is kept briefly: a token just minted may be refused by a lagging API
            // server replica.
            Err(TokenError::Rejected(_) | TokenError::NotServiceAccount(_)) => self.ttl / 10,
            Err(_) => return,
        };
        let now = Instant::now();
        let mut verdicts = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        if verdicts.len() >= MAX_VERDICTS {
            verdicts.retain(|_, (_, until)| *until > now);
        }
        if verdicts.len() >= MAX_VERDICTS
            && let Some(any) = verdicts.keys().next().copied()
        {
            verdicts.remove(&any);
        }
        verdicts.insert(key, (verdict.clone(), now + ttl));
    }

    fn allow(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(bucket.last).as_secs_f64() * bucket.rate;
        bucket.tokens = (bucket.tokens + earned).min(bucket.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
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
                reviews: Arc::new(Reviews::new(
                    config.reviews_per_second,
                    config.review_burst,
                    config.review_cache_ttl,
                )),
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
            TokenSource::Kubernetes {
                client,
                audience,
                reviews,
            } => {
                let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
                    .as_ref()
                    .try_into()
                    .map_err(|_| TokenError::Unavailable("hashing the token".into()))?;
                let username = match reviews.known(&key) {
                    Some(verdict) => verdict?,
                    None => {
                        if !reviews.allow() {
                            return Err(TokenError::Unavailable(
                                "too many token reviews now; retry shortly".into(),
                            ));
                        }
                        let verdict = review(client, audience, token).await;
                        reviews.remember(key, &verdict);
                        verdict?
                    }
                };
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

/// One TokenReview: the username the API server authenticates for `audience`.
async fn review(client: &kube::Client, audience: &str, token: &str) -> Result<String, TokenError> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
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
    // The audience must be confirmed: an API server that answers without
    // audiences has not checked the one we asked for.
    let audiences = status.audiences.unwrap_or_default();
    if !audiences.iter().any(|a| *a == audience) {
        return Err(TokenError::Rejected(format!(
            "the review does not confirm the audience {audience:?} (it names {audiences:?})"
        )));
    }
    Ok(status.user.and_then(|u| u.username).unwrap_or_default())
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
