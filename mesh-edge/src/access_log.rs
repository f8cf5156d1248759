//! An access log: one JSON object per line per request, written when its response has been
//! sent whole (or the client went away), so that `bytes` and `duration_ms` are the real ones.
//!
//! ```text
//! {"time":"2026-12-07T05:12:09.120Z","client":"198.51.100.7","host":"web.example.com","method":"GET","path":"/api/users","protocol":"HTTP/2.0","status":200,"grpc_status":null,"bytes":512,"duration_ms":1.93,"upstream":"10.0.3.7:8080","route":"api","request_id":"4f0c…","end":"complete"}
//! ```
//!
//! `upstream` is the endpoint that answered (the mesh client tags responses with it),
//! `route` the route that took the request (a [`RouteTag`]); both `null` when the ingress
//! answered itself (no route, a limit). An error below is turned into its response here, with
//! mesh-core's one mapping, so that it is logged with the status the client gets. `end` is
//! `complete`, `failed` (the upstream broke the body off) or `cancelled` (the client left).
//!
//! Lines go to a writer behind a lock, each written whole with one `write` call, so lines of
//! concurrent requests never interleave.

use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use mesh_core::{Body, BoxError};
use tokio::time::Instant;

use crate::{Client, RouteTag};

/// Where log lines go.
#[derive(Clone)]
pub struct AccessLog {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

impl AccessLog {
    /// Lines to standard output (where container runtimes collect them).
    pub fn stdout() -> Self {
        Self::to(std::io::stdout())
    }

    /// Lines to `writer`.
    pub fn to(writer: impl Write + Send + 'static) -> Self {
        Self {
            out: Arc::new(Mutex::new(Box::new(writer))),
        }
    }

    fn write(&self, line: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A log that cannot be written must not fail the request it describes.
        let _ = out.write_all(line).and_then(|()| out.flush());
    }
}

/// Logs each request; see the [module](self) documentation.
#[derive(Clone, Debug)]
pub struct AccessLogLayer {
    log: AccessLog,
}

impl AccessLogLayer {
    /// Lines to `log`.
    pub fn new(log: AccessLog) -> Self {
        Self { log }
    }
}

impl<S> tower::Layer<S> for AccessLogLayer {
    type Service = AccessLogService<S>;

    fn layer(&self, inner: S) -> AccessLogService<S> {
        AccessLogService {
            log: self.log.clone(),
            inner,
        }
    }
}

/// See [`AccessLogLayer`].
#[derive(Clone, Debug)]
pub struct AccessLogService<S> {
    log: AccessLog,
    inner: S,
}

/// What is known of a request before its response.
#[derive(Debug)]
struct Started {
    at: Instant,
    client: Option<std::net::IpAddr>,
    host: Option<String>,
    method: http::Method,
    path: String,
    protocol: http::Version,
    request_id: Option<String>,
    grpc: bool,
}

impl<S> tower::Service<Request<Body>> for AccessLogService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let started = Started {
            at: Instant::now(),
            client: Client::of(&req).map(|c| c.ip),
            host: mesh_route_host(&req),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            protocol: req.version(),
            request_id: req
                .headers()
                .get(crate::request_id::X_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            grpc: mesh_core::error::is_grpc(&req),
        };
        AccessLogFuture {
            inner: self.inner.call(req),
            started: Some(started),
            log: self.log.clone(),
        }
    }
}

fn mesh_route_host<B>(req: &Request<B>) -> Option<String> {
    match req.uri().authority() {
        Some(a) => Some(a.as_str().to_owned()),
        None => req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned),
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`AccessLogService`].
    #[derive(Debug)]
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        started: Option<Started>,
        log: AccessLog,
    }
}

impl<F, E> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let Some(started) = this.started.take() else {
            return Poll::Ready(Err("polled after completion".into()));
        };
        let rsp = match result {
            Ok(rsp) => rsp,
            Err(e) => {
                let e: BoxError = e.into();
                mesh_core::error::error_response(&*e, started.grpc)
            }
        };
        let (parts, body) = rsp.into_parts();
        let entry = Entry {
            status: parts.status.as_u16(),
            grpc_status: parts
                .headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            upstream: parts
                .extensions
                .get::<mesh_core::client::Upstream>()
                .map(|u| u.0.to_string()),
            route: parts.extensions.get::<RouteTag>().cloned(),
            started,
        };
        let body = Body::boxed(LoggedBody {
            inner: body,
            bytes: 0,
            entry: Some(entry),
            log: this.log.clone(),
        });
        Poll::Ready(Ok(Response::from_parts(parts, body)))
    }
}

#[derive(Debug)]
struct Entry {
    started: Started,
    status: u16,
    grpc_status: Option<u16>,
    upstream: Option<String>,
    route: Option<RouteTag>,
}

/// A response body that writes its request's line when it ends.
struct LoggedBody {
    inner: Body,
    bytes: u64,
    entry: Option<Entry>,
    log: AccessLog,
}

impl LoggedBody {
    fn finish(&mut self, end: &str, trailers: Option<&http::HeaderMap>) {
        let Some(entry) = self.entry.take() else {
            return;
        };
        let grpc_status = trailers
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u16>().ok())
            .or(entry.grpc_status);
        let started = &entry.started;
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let line = serde_json::json!({
            "time": time,
            "client": started.client.map(|ip| ip.to_string()),
            "host": started.host,
            "method": started.method.as_str(),
            "path": started.path,
            "protocol": format!("{:?}", started.protocol),
            "status": entry.status,
            "grpc_status": grpc_status,
            "bytes": self.bytes,
            "duration_ms": (started.at.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            "upstream": entry.upstream,
            "route": entry.route.as_ref().map(|r| &*r.route),
            "route_host": entry.route.as_ref().map(|r| &*r.host),
            "request_id": started.request_id,
            "end": end,
        });
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        self.log.write(&bytes);
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.finish("complete", None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.finish("failed", None);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if let Some(trailers) = frame.trailers_ref() {
                    self.finish("complete", Some(trailers));
                } else if self.inner.is_end_stream() {
                    self.finish("complete", None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let end = if http_body::Body::is_end_stream(&self.inner) {
            "complete"
        } else {
            "cancelled"
        };
        self.finish(end, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn one_line_per_request_with_status_bytes_route_and_upstream() {
        let lines = Lines::default();
        let app = tower::service_fn(|req: Request<Body>| async move {
            if req.uri().path() == "/fail" {
                let e = mesh_core::error::ProxyError::new(mesh_core::error::Cause::NoRoute, "none");
                return Err::<Response<Body>, BoxError>(e.into());
            }
            let mut rsp = Response::new(Body::full("hello"));
            rsp.extensions_mut().insert(mesh_core::client::Upstream(
                "10.0.0.7:8080".parse().unwrap(),
            ));
            rsp.extensions_mut().insert(RouteTag {
                host: "web.example.com".into(),
                route: "web".into(),
            });
            Ok(rsp)
        });
        let svc = AccessLogLayer::new(AccessLog::to(lines.clone())).layer(app);
        let req = Request::builder()
            .uri("http://web.example.com/x?secret=1")
            .body(Body::Empty)
            .unwrap();
        let rsp = svc.clone().oneshot(req).await.unwrap();
        let body = rsp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
        let req = Request::builder()
            .uri("/fail")
            .header("host", "x.test")
            .body(Body::Empty)
            .unwrap();
        let rsp = svc.oneshot(req).await.unwrap();
        assert_eq!(rsp.status(), 404);
        drop(rsp);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let entries: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(entries.len(), 2, "{text}");
        assert_eq!(entries[0]["status"], 200);
        assert_eq!(entries[0]["bytes"], 5);
        assert_eq!(
            entries[0]["path"], "/x",
            "no query string: it may hold secrets"
        );
        assert_eq!(entries[0]["host"], "web.example.com");
        assert_eq!(entries[0]["route"], "web");
        assert_eq!(entries[0]["upstream"], "10.0.0.7:8080");
        assert_eq!(entries[0]["end"], "complete");
        assert_eq!(entries[1]["status"], 404);
        assert_eq!(entries[1]["route"], serde_json::Value::Null);
        assert_eq!(entries[1]["host"], "x.test");
    }
}
