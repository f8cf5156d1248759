//! A minimal HTTP/1.1 GET over plain TCP, with timeouts and a body size limit: all meshctl
//! needs to read a proxy's `/metrics` or Prometheus's query API.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a response may take, from the request to its last byte.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest body read.
const MAX_BODY: usize = 64 << 20;

/// A response.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    /// When the request was sent (after the connect).
    pub(crate) sent_at: Instant,
}

/// `GET path_and_query` from `authority` (`host:port`, also the `Host` header).
pub(crate) async fn get(
    authority: &str,
    path_and_query: &str,
    accept: &str,
) -> anyhow::Result<Fetched> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| anyhow!("connect timed out after {CONNECT_TIMEOUT:?}"))?
        .context("cannot connect")?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    let conn = tokio::spawn(conn);
    let request = Request::get(path_and_query)
        .header(header::HOST, authority)
        .header(header::ACCEPT, accept)
        .header(
            header::USER_AGENT,
            concat!("meshctl/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let sent_at = Instant::now();
    let result = tokio::time::timeout(RESPONSE_TIMEOUT, async {
        let response = sender
            .send_request(request)
            .await
            .context("sending the request")?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the response body: {e}"))?
            .to_bytes();
        anyhow::Ok(Fetched {
            status,
            body,
            sent_at,
        })
    })
    .await
    .map_err(|_| anyhow!("no complete response within {RESPONSE_TIMEOUT:?}"))
    .and_then(|r| r);
    conn.abort();
    result
}
