//! mesh-injector: the mutating admission webhook that meshes pods.
//!
//! The API server sends it an AdmissionReview v1 for every pod being created (its
//! MutatingWebhookConfiguration says so, with `failurePolicy: Ignore`); it answers, always
//! allowing the pod, with [`mesh_inject`]'s patch when the pod or its namespace carries
//! `mesh.dev/inject: enabled`. The namespace's annotations are read from the API server
//! (cached 5 s).
//!
//! It serves over HTTPS on `listen`:
//!
//! - `POST /inject`: the webhook. A review it cannot serve (another API version) is answered
//!   allowed and unchanged, with a warning; a body that names no request gets a 400 naming what
//!   is wrong, one over 8 MiB a 413; each is logged and counted, and the injector goes on
//!   serving;
//! - `GET /ready`, `GET /metrics` (`injector_admission_reviews_total{outcome,reason}`,
//!   `injector_invalid_requests_total{reason}`).
//!
//! Its certificate (`cert`, `key`: a mounted Secret) is reloaded when the files change.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = mesh_injector::Config::from_toml_str(r#"
//!     listen = "0.0.0.0:8443"
//!     cert = "/var/run/mesh/tls/tls.crt"
//!     key = "/var/run/mesh/tls/tls.key"
//!     trust_anchors = "/var/run/mesh/identity/ca.crt"
//! "#)?;
//! let injector = mesh_injector::Injector::bind(config).await?;
//! injector.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Namespace;
use mesh_core::config::{self as core_config, ConfigError, Source};
use mesh_inject::InjectConfig;
use mesh_inject::admission::{self, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// The largest AdmissionReview read (the API server's own limit on objects is 3 MiB).
pub const MAX_BODY: usize = 8 * 1024 * 1024;
/// How long a namespace's annotations are trusted.
const NAMESPACE_TTL: Duration = Duration::from_secs(5);
/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The injector's configuration (TOML, with `MESH__*` environment overrides).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the webhook listens (HTTPS).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The serving certificate chain (PEM), reloaded when it changes.
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The trust anchors (PEM) injected proxies verify each other with; or set
    /// `inject.trust_anchors_pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_anchors: Option<PathBuf>,
    /// The API server, for namespaces' annotations; by default the in-cluster one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_api: Option<String>,
    /// Log filter.
    #[serde(default = "default_log")]
    pub log: String,
    /// What the patch puts in pods.
    #[serde(default)]
    pub inject: InjectConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}

fn default_log() -> String {
    "info".to_owned()
}

impl Config {
    /// Loads the file, then `MESH__*` variables.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        core_config::load(Source::File(path))
    }

    /// Loads TOML text, then `MESH__*` variables.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        core_config::load(Source::Toml(toml))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    outcome: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvalidLabels {
    reason: &'static str,
}

type Annotations = BTreeMap<String, String>;

struct State {
    inject: InjectConfig,
    kube: Option<kube::Client>,
    /// Namespaces' annotations, with when they were read.
    namespaces: Mutex<HashMap<String, (Instant, Option<Annotations>)>>,
    reviews: Family<ReviewLabels, Counter>,
    invalid: Family<InvalidLabels, Counter>,
    registry: Registry,
}

/// A bound injector, serving once [`run`](Self::run).
pub struct Injector {
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Injector {
    /// Loads the certificate and trust anchors, reaches for the API server, and binds.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let cert = mesh_tls::serving::ServingCert::load(&config.cert, &config.key)
            .context("cert / key")?;
        cert.watch(Duration::from_secs(2));
        let tls = cert
            .server_config(&[b"h2", b"http/1.1"])
            .context("the serving TLS configuration")?;
        let mut inject = config.inject.clone();
        if let Some(path) = &config.trust_anchors {
            inject.trust_anchors_pem = std::fs::read_to_string(path)
                .with_context(|| format!("trust_anchors: cannot read {}", path.display()))?;
        }
        anyhow::ensure!(
            inject
                .trust_anchors_pem
                .contains("-----BEGIN CERTIFICATE-----"),
            "trust_anchors (or inject.trust_anchors_pem): no PEM certificate; injected proxies need the mesh's trust anchors"
        );
        let kube = match kube_client(config.kubernetes_api.as_deref()).await {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes API: namespaces' annotations are unknown, only pods' own count");
                None
            }
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (listen)", config.listen))?;
        let mut registry = Registry::default();
        let reviews = Family::<ReviewLabels, Counter>::default();
        let invalid = Family::<InvalidLabels, Counter>::default();
        registry.register(
            "injector_admission_reviews",
            "AdmissionReviews answered, by what was done",
            reviews.clone(),
        );
        registry.register(
            "injector_invalid_requests",
            "Requests that were not AdmissionReviews the injector serves",
            invalid.clone(),
        );
        Ok(Self {
            listener,
            tls: tokio_rustls::TlsAcceptor::from(tls),
            state: Arc::new(State {
                inject,
                kube,
                namespaces: Mutex::new(HashMap::new()),
                reviews,
                invalid,
                registry,
            }),
        })
    }

    /// The listener's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let (tls, state) = (self.tls.clone(), self.state.clone());
            tokio::spawn(async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
                let service = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&state, request).await) }
                });
                let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }
}

async fn kube_client(api: Option<&str>) -> anyhow::Result<kube::Client> {
    let config = match api {
        Some(url) => kube::Config::new(url.parse().context("kubernetes_api")?),
        None => kube::Config::infer()
            .await
            .context("no in-cluster configuration or KUBECONFIG")?,
    };
    Ok(kube::Client::try_from(config)?)
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

async fn handle(state: &State, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/metrics") => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &state.registry) {
                Ok(()) => text(StatusCode::OK, out),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
            }
        }
        (&Method::POST, "/inject") => review(state, request).await,
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: POST /inject, GET /ready, GET /metrics\n",
        ),
    }
}

async fn review(state: &State, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let refuse = |status: StatusCode, reason: &'static str, message: String| {
        tracing::warn!(reason, "{message}");
        state.invalid.get_or_create(&InvalidLabels { reason }).inc();
        text(status, format!("{message}\n"))
    };
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too-large",
                format!("the AdmissionReview is larger than {MAX_BODY} bytes"),
            );
        }
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "unreadable",
                format!("cannot read the body: {e}"),
            );
        }
    };
    let parsed = match admission::parse(&body) {
        Ok(parsed) => parsed,
        Err(e) => {
            let reason = match e {
                admission::InvalidReview::Malformed(_) => "malformed",
                admission::InvalidReview::Version(_) => "api-version",
                admission::InvalidReview::NoRequest => "no-request",
            };
            // A review that names its request is answered (allowed, unchanged): the pod is
            // created as it is. Only what names no request is an HTTP error.
            return match admission::allow_unserved(&body, &e) {
                Some(answer) => {
                    tracing::warn!(reason, "{e}: allowed unchanged");
                    state.invalid.get_or_create(&InvalidLabels { reason }).inc();
                    json(answer)
                }
                None => refuse(StatusCode::BAD_REQUEST, reason, e.to_string()),
            };
        }
    };
    let namespace = match parsed.namespace() {
        Some(ns) => namespace_annotations(state, ns).await,
        None => None,
    };
    let (answer, outcome) = admission::respond(&parsed, namespace.as_ref(), &state.inject);
    let reason = match outcome {
        Outcome::Skipped(why) => why.as_str(),
        Outcome::Ignored(why) => why,
        Outcome::Injected | Outcome::Unchanged => "",
    };
    state
        .reviews
        .get_or_create(&ReviewLabels {
            outcome: outcome.as_str(),
            reason,
        })
        .inc();
    tracing::info!(uid = parsed.uid(), namespace = ?parsed.namespace(), outcome = outcome.as_str(), reason, "admission review");
    json(answer)
}

fn json(answer: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = text(StatusCode::OK, answer.to_string());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The annotations of `namespace`, from the cache or the API server; `None` when unknown.
async fn namespace_annotations(state: &State, namespace: &str) -> Option<BTreeMap<String, String>> {
    let now = Instant::now();
    if let Some((at, annotations)) = state
        .namespaces
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(namespace)
        && now.duration_since(*at) < NAMESPACE_TTL
    {
        return annotations.clone();
    }
    let client = state.kube.clone()?;
    let api: kube::Api<Namespace> = kube::Api::all(client);
    let fetched = tokio::time::timeout(Duration::from_secs(2), api.get_opt(namespace)).await;
    let annotations = match fetched {
        Ok(Ok(found)) => found.and_then(|ns| ns.metadata.annotations),
        Ok(Err(e)) => {
            tracing::warn!(namespace, error = %e, "cannot read the namespace: only the pod's own annotation counts");
            return None;
        }
        Err(_) => {
            tracing::warn!(
                namespace,
                "the API server did not answer for the namespace within 2 s: only the pod's own annotation counts"
            );
            return None;
        }
    };
    let mut cache = state.namespaces.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() > 10_000 {
        cache.clear();
    }
    cache.insert(namespace.to_owned(), (now, annotations.clone()));
    annotations
}
