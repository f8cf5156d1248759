//! The admin listener:
//!
//! - `GET /live`: the process answers;
//! - `GET /ready`: 200 once the proxy serves traffic, 503 while it starts or drains;
//! - `GET /metrics`: OpenMetrics when the scraper asks for it, Prometheus text otherwise;
//! - `GET /config`: the configuration in force, as TOML (it holds no secret today; when keys
//!   and tokens come, they are redacted here);
//! - `GET /log-level`, `PUT /log-level` (body: a filter such as `debug` or
//!   `mesh_proxy=debug,info`): read and change the log filter at run time; changing it only
//!   from loopback (403 from anywhere else), so that an admin port open to Prometheus is no
//!   lever for the network;
//! - `POST /shutdown`: drain and exit, only when `admin.enable_shutdown` is on and only from
//!   loopback.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use mesh_core::Body;
use mesh_core::detect::Protocol;
use mesh_core::drain::Drain;
use mesh_core::server::{HttpServer, ServerConfig};
use mesh_metrics::{Format, Metrics};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

/// The largest log filter accepted.
const MAX_FILTER_BYTES: usize = 4096;

/// Reads and changes the log filter at run time (the binary installs one; a proxy run
/// in-process without it answers 501).
pub struct LogControl {
    current: Mutex<String>,
    set: Box<SetFilter>,
}

/// Applies a new log filter, or says why it is not one.
type SetFilter = dyn Fn(&str) -> Result<(), String> + Send + Sync;

impl LogControl {
    /// A control starting at `current`, applying new filters with `set`.
    pub fn new(
        current: String,
        set: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            current: Mutex::new(current),
            set: Box::new(set),
        }
    }

    fn get(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn change(&self, filter: &str) -> Result<(), String> {
        (self.set)(filter)?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = filter.to_owned();
        Ok(())
    }
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("current", &self.get())
            .finish_non_exhaustive()
    }
}

/// The admin server.
#[derive(Clone, Debug)]
pub struct Admin {
    state: Arc<State>,
    server: HttpServer,
}

/// The configuration in force, as `/config` shows it: rendered at each request, since text
/// kept from the start cost 455 bytes per configured service for a page read now and then.
type ShowConfig = Box<dyn Fn() -> Result<String, toml::ser::Error> + Send + Sync>;

struct State {
    ready: Arc<AtomicBool>,
    config: ShowConfig,
    metrics: Arc<Metrics>,
    log: Option<Arc<LogControl>>,
    /// Set when `/shutdown` is enabled: notified to start draining.
    shutdown: Option<Arc<Notify>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("ready", &self.ready)
            .field("metrics", &self.metrics)
            .field("log", &self.log)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Serves readiness from `ready`, `config` (the configuration in force) as TOML on
    /// `/config`; `/shutdown` notifies `shutdown` when given.
    pub fn new<C>(
        ready: Arc<AtomicBool>,
        config: Arc<C>,
        metrics: Arc<Metrics>,
        log: Option<Arc<LogControl>>,
        shutdown: Option<Arc<Notify>>,
    ) -> Self
    where
        C: serde::Serialize + Send + Sync + 'static,
    {
        Self {
            state: Arc::new(State {
                ready,
                config: Box::new(move || toml::to_string(&*config)),
                metrics,
                log,
                shutdown,
            }),
            server: HttpServer::new(&ServerConfig::default()),
        }
    }

    /// Serves one admin connection (HTTP/1.1) from `peer`.
    pub async fn serve<I>(self, stream: I, peer: SocketAddr, drain: Drain)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handler = AdminService {
            state: self.state.clone(),
            peer,
        };
        if let Err(e) = self
            .server
            .serve(stream, Protocol::Http1, handler, &drain)
            .await
        {
            tracing::debug!(error = %e, "admin connection ended with an error");
        }
    }
}

#[derive(Clone, Debug)]
struct AdminService {
    state: Arc<State>,
    peer: SocketAddr,
}

type AdminFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Body>> for AdminService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = AdminFuture;

    fn call(&self, req: Request<Body>) -> AdminFuture {
        let (state, peer) = (self.state.clone(), self.peer);
        Box::pin(async move { Ok(respond(&state, peer, req).await) })
    }
}

async fn respond(state: &State, peer: SocketAddr, req: Request<Body>) -> Response<Body> {
    match (req.method().clone(), req.uri().path()) {
        (Method::GET | Method::HEAD, "/live") => text(StatusCode::OK, "live\n".into()),
        (Method::GET | Method::HEAD, "/ready") if state.ready.load(Ordering::Acquire) => {
            text(StatusCode::OK, "ready\n".into())
        }
        (Method::GET | Method::HEAD, "/ready") => {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
        }
        (Method::GET | Method::HEAD, "/metrics") => {
            let accept = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|a| a.to_str().ok());
            let format = Format::from_accept(accept);
            match state.metrics.encode(format) {
                Ok(body) => {
                    let mut rsp = text(StatusCode::OK, body);
                    rsp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static(format.content_type()),
                    );
                    rsp
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        (Method::GET | Method::HEAD, "/config") => match (state.config)() {
            Ok(toml) => text(StatusCode::OK, toml),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the configuration cannot be shown as TOML: {e}\n"),
            ),
        },
        (method, "/log-level") => {
            let Some(log) = &state.log else {
                return text(
                    StatusCode::NOT_IMPLEMENTED,
                    "this proxy has no log control\n".into(),
                );
            };
            match method {
                Method::GET | Method::HEAD => text(StatusCode::OK, format!("{}\n", log.get())),
                Method::PUT | Method::POST if !from_loopback(peer) => text(
                    StatusCode::FORBIDDEN,
                    "the log level changes only from loopback\n".into(),
                ),
                Method::PUT | Method::POST => {
                    let body = match http_body_util::Limited::new(req.into_body(), MAX_FILTER_BYTES)
                        .collect()
                        .await
                    {
                        Ok(body) => body.to_bytes(),
                        Err(e) => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                format!("cannot read the filter: {e}\n"),
                            );
                        }
                    };
                    let filter = String::from_utf8_lossy(&body).trim().to_owned();
                    match log.change(&filter) {
                        Ok(()) => {
                            tracing::info!(filter, "log filter changed");
                            text(StatusCode::OK, format!("{filter}\n"))
                        }
                        Err(e) => text(
                            StatusCode::BAD_REQUEST,
                            format!("invalid log filter {filter:?}: {e}\n"),
                        ),
                    }
                }
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "GET or PUT\n".into()),
            }
        }
        (Method::POST, "/shutdown") => match &state.shutdown {
            None => text(
                StatusCode::NOT_FOUND,
                "/shutdown is off (admin.enable_shutdown)\n".into(),
            ),
            Some(_) if !from_loopback(peer) => {
                text(StatusCode::FORBIDDEN, "only from loopback\n".into())
            }
            Some(shutdown) => {
                tracing::info!(%peer, "shutdown requested on the admin listener");
                shutdown.notify_one();
                text(StatusCode::OK, "shutting down\n".into())
            }
        },
        (_, "/live" | "/ready" | "/metrics" | "/config") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into())
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /ready, /live, /config or /log-level\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut rsp = Response::new(Body::full(body));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// Whether `peer` is this host's loopback (an IPv4-mapped `::ffff:127.0.0.1` too, as a
/// dual-stack listener sees IPv4 peers).
fn from_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}
