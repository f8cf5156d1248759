//! The client side: one shared HTTP/2 connection per endpoint, requests sent from the
//! caller's own future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::{DriverError, H2Body, KeepAlive, SendBody, strip_connection_headers};
use crate::body::Body;

/// Settings of new HTTP/2 connections to endpoints.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    builder: h2::client::Builder,
    keep_alive_interval: Duration,
    keep_alive_timeout: Duration,
}

/// The HTTP/2 default for streams a client may open before the server's SETTINGS arrive (RFC
/// 9113 recommends servers allow at least 100), so that early requests are not refused.
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// Largest response header block accepted from an endpoint.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// Request body bytes buffered per connection beyond what the peer's windows allow.
const MAX_SEND_BUFFER_SIZE: usize = 1024 * 1024;
/// Streams an endpoint may make this side reset for its protocol errors on one connection.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

impl Settings {
    pub(crate) fn new(
        initial_stream_window: u32,
        initial_connection_window: u32,
        keep_alive_interval: Duration,
    ) -> Self {
        let mut builder = h2::client::Builder::new();
        builder
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .initial_window_size(initial_stream_window)
            .initial_connection_window_size(initial_connection_window)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .enable_push(false);
        Self {
            builder,
            keep_alive_interval,
            keep_alive_timeout: keep_alive_interval.saturating_mul(2),
        }
    }

    /// The HTTP/2 handshake over `io`; the connection is then driven by a task of its own
    /// until it ends or every [`Connection`] handle and stream is gone.
    pub(crate) async fn handshake<T>(
        &self,
        io: T,
        peer: std::net::SocketAddr,
    ) -> Result<Connection, h2::Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, mut conn) = self.builder.handshake::<T, Bytes>(io).await?;
        let closed = Arc::new(AtomicBool::new(false));
        let (handles_gone, handles_gone_rx) = oneshot::channel();
        let keep_alive = conn
            .ping_pong()
            .map(|ping| KeepAlive::new(ping, self.keep_alive_interval, self.keep_alive_timeout));
        let driver = Driver {
            conn,
            keep_alive,
            handles_gone: Some(handles_gone_rx),
        };
        let ended = closed.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(%peer, error = %e, "h2 connection to endpoint ended");
            }
            ended.store(true, Ordering::Release);
        });
        Ok(Connection {
            tx,
            closed,
            _handles_gone: handles_gone,
        })
    }
}

/// One HTTP/2 connection to an endpoint, shared by every request to it.
#[derive(Debug)]
pub(crate) struct Connection {
    tx: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    /// Dropped with the last handle, which wakes the connection task so that it can close an
    /// idle connection (`h2` is not woken by the last `SendRequest` going).
    _handles_gone: oneshot::Sender<()>,
}

impl Connection {
    /// True once the connection ended or refused a new stream.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the connection unusable for new requests.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// A handle that can open a stream now, if the connection can take one without waiting.
    pub(crate) fn ready_now(&self) -> Option<h2::client::SendRequest<Bytes>> {
        let mut tx = self.tx.clone();
        // A fresh handle has no stream of its own pending, so `poll_ready` only checks the
        // connection and never waits: a no-op waker is enough.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match tx.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Some(tx),
            _ => None,
        }
    }

    /// A handle that can open a stream, once the connection can take one. An error means the
    /// connection failed before anything of this request was sent.
    pub(crate) async fn ready(&self) -> Result<h2::client::SendRequest<Bytes>, h2::Error> {
        let mut tx = self.tx.clone();
        std::future::poll_fn(|cx| tx.poll_ready(cx)).await?;
        Ok(tx)
    }
}

/// Opens a stream for `req` on `tx` and sends its head; the returned [`Exchange`] sends the
/// body and resolves to the response. An error means nothing was sent.
pub(crate) fn send(
    tx: &mut h2::client::SendRequest<Bytes>,
    req: Request<Body>,
) -> Result<Exchange, h2::Error> {
    let (mut head, body) = req.into_parts();
    strip_connection_headers(&mut head.headers);
    let end_of_stream = body.is_end_stream();
    let (response, stream) = tx.send_request(Request::from_parts(head, ()), end_of_stream)?;
    Ok(Exchange {
        response,
        body: (!end_of_stream).then(|| SendBody::new(body, stream)),
    })
}

/// A request in flight on an HTTP/2 connection: sends the request body while waiting for the
/// response head. Dropping it before the response resets the stream (`CANCEL`).
pub(crate) struct Exchange {
    response: h2::client::ResponseFuture,
    body: Option<SendBody>,
}

impl Future for Exchange {
    type Output = Result<Response<H2Body>, h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(body) = &mut this.body
            && body.poll_send(cx).is_ready()
        {
            this.body = None;
        }
        let response = ready!(Pin::new(&mut this.response).poll(cx));
        if response.is_ok()
            && let Some(mut body) = this.body.take()
        {
            // The response came before the request's end (a streaming call): the rest of the
            // request goes on without the caller.
            tokio::spawn(std::future::poll_fn(move |cx| body.poll_send(cx)));
        }
        Poll::Ready(response.map(|rsp| rsp.map(H2Body::new)))
    }
}

/// Drives one connection: frames in and out, and keep-alive pings.
struct Driver<T> {
    conn: h2::client::Connection<T, Bytes>,
    keep_alive: Option<KeepAlive>,
    handles_gone: Option<oneshot::Receiver<()>>,
}

impl<T> Future for Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Result<(), DriverError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(gone) = &mut this.handles_gone
            && Pin::new(gone).poll(cx).is_ready()
        {
            this.handles_gone = None;
        }
        if let Poll::Ready(ended) = Pin::new(&mut this.conn).poll(cx) {
            return Poll::Ready(ended.map_err(DriverError::H2));
        }
        if let Some(keep_alive) = &mut this.keep_alive
            && let Poll::Ready(failed) = keep_alive.poll(cx)
        {
            return Poll::Ready(Err(failed));
        }
        Poll::Pending
    }
}
