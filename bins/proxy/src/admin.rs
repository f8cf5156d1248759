//! The admin listener: `/live` (the process answers), `/ready` (the proxy serves traffic),
//! `/config` (the configuration in force, as TOML), `/metrics` (OpenMetrics when the scraper
//! asks for it, Prometheus text otherwise).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use mesh_core::Body;
use mesh_core::detect::Protocol;
use mesh_core::drain::Drain;
use mesh_core::server::{HttpServer, ServerConfig};
use mesh_metrics::{Format, Metrics};
use tokio::net::TcpStream;

use crate::Config;

/// The admin server.
#[derive(Clone, Debug)]
pub struct Admin {
    ready: Arc<AtomicBool>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    server: HttpServer,
}

impl Admin {
    /// Serves readiness from `ready`.
    pub fn new(ready: Arc<AtomicBool>, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        Self {
            ready,
            config,
            metrics,
            server: HttpServer::new(&ServerConfig::default()),
        }
    }

    /// Serves one admin connection (HTTP/1.1).
    pub async fn serve(self, stream: TcpStream, drain: Drain) {
        let handler = AdminService {
            ready: self.ready.clone(),
            config: self.config.clone(),
            metrics: self.metrics.clone(),
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
    ready: Arc<AtomicBool>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

impl hyper::service::Service<Request<Incoming>> for AdminService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(self.respond(&req)))
    }
}

impl AdminService {
    fn respond<B>(&self, req: &Request<B>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match req.uri().path() {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" if self.ready.load(Ordering::Acquire) => {
                text(StatusCode::OK, "ready\n".into())
            }
            "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
            "/metrics" => {
                let accept = req
                    .headers()
                    .get(header::ACCEPT)
                    .and_then(|a| a.to_str().ok());
                let format = Format::from_accept(accept);
                match self.metrics.encode(format) {
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
            "/config" => match toml::to_string(&*self.config) {
                Ok(body) => text(StatusCode::OK, body),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /ready, /live or /config\n".into(),
            ),
        }
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
