//! Support for the end-to-end tests in `tests/`: start the real proxy in-process on ephemeral
//! ports of 127.0.0.1, and tiny HTTP backends to put behind it.

pub mod docs;
pub mod edge;
pub mod mtls;
pub mod prometheus;

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A proxy running in the background; dropping it starts the proxy's shutdown.
#[derive(Debug)]
pub struct RunningProxy {
    /// The outbound listener (HTTP/1 and h2c).
    pub outbound: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The inbound listener, when configured.
    pub inbound: Option<SocketAddr>,
    /// The listeners of opaque services, by authority.
    pub opaque: Vec<(String, SocketAddr)>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The proxy configuration for `services` (`(authority, endpoints)`): every listener on an
/// ephemeral port of 127.0.0.1, a 1 s detection timeout and a 1 s shutdown grace.
pub fn proxy_toml(services: &[(&str, &[SocketAddr])]) -> String {
    let mut toml = String::from(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[runtime]\nshutdown_grace = \"1s\"\n\
         [outbound]\nlisten = \"127.0.0.1:0\"\ndetect_timeout = \"1s\"\n",
    );
    for (authority, endpoints) in services {
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        let _ = write!(
            toml,
            "[[outbound.services]]\nauthority = \"{authority}\"\nendpoints = [{}]\n",
            endpoints.join(", ")
        );
    }
    toml
}

/// Starts the proxy from TOML text (no environment variables apply).
pub async fn start_proxy_toml(toml: &str) -> anyhow::Result<RunningProxy> {
    let config = mesh_proxy::Config::from_toml_str_with_env(toml, Vec::<(String, String)>::new())?;
    let proxy = mesh_proxy::Proxy::bind(config).await?;
    let (outbound, admin) = (proxy.outbound_addr(), proxy.admin_addr());
    let (inbound, opaque) = (proxy.inbound_addr(), proxy.opaque_addrs());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = rx.await;
    }));
    Ok(RunningProxy {
        outbound,
        admin,
        inbound,
        opaque,
        shutdown: Some(tx),
    })
}

/// Starts the proxy with these services (see [`proxy_toml`]).
pub async fn start_proxy(services: &[(&str, &[SocketAddr])]) -> anyhow::Result<RunningProxy> {
    start_proxy_toml(&proxy_toml(services)).await
}

/// Starts a backend on an ephemeral port of 127.0.0.1 that answers every request with
/// `handler`, over HTTP/1.1 or h2c (prior knowledge). It runs until the runtime stops.
pub async fn start_backend<F, Fut, B>(handler: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = hyper::service::service_fn(move |req| {
                let rsp = handler(req);
                async move { Ok::<_, Infallible>(rsp.await) }
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// An h2c (prior knowledge) client connection to `addr`; the connection runs in a task.
pub async fn h2_client<B>(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http2::SendRequest<B>>
where
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(io)
        .await?;
    tokio::spawn(conn);
    Ok(tx)
}

/// An HTTP/1.1 client connection to `addr`; the connection runs in a task.
pub async fn h1_client<B>(
    addr: SocketAddr,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<B>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (tx, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(tx)
}

/// A backend answering every request `200 hello`.
pub async fn hello_backend() -> anyhow::Result<SocketAddr> {
    named_backend("hello").await
}

/// A backend answering every request `200` with `name` as the body, so that a test sees which
/// backend answered.
pub async fn named_backend(name: &'static str) -> anyhow::Result<SocketAddr> {
    start_backend(move |_req| async move {
        Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            name.as_bytes(),
        )))
    })
    .await
}

/// Scrapes `/metrics` from an admin listener, asking for `accept` if given: the content type
/// and the exposition.
pub async fn scrape_metrics(
    admin: SocketAddr,
    accept: Option<&str>,
) -> anyhow::Result<(String, String)> {
    use http_body_util::BodyExt;
    let mut client = h1_client::<http_body_util::Empty<bytes::Bytes>>(admin).await?;
    let mut req = Request::get("/metrics").header("host", "admin");
    if let Some(accept) = accept {
        req = req.header("accept", accept);
    }
    let rsp = client
        .send_request(req.body(http_body_util::Empty::new())?)
        .await?;
    anyhow::ensure!(
        rsp.status().is_success(),
        "/metrics answered {}",
        rsp.status()
    );
    let content_type = rsp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = rsp.into_body().collect().await?.to_bytes();
    Ok((content_type, String::from_utf8(body.to_vec())?))
}

/// A port of 127.0.0.1 free a moment ago (for a listener a test must name before it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
