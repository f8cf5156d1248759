//! HTTP/2 on the `h2` crate directly, without hyper's HTTP/2 dispatch: toward endpoints
//! ([`client`]) and from clients ([`server`]).
//!
//! hyper's HTTP/2 client sends every request through a channel to a connection task, spawns a
//! task per request to wait for the response, and answers the caller through a oneshot: per
//! request one channel message, two oneshots, one task and two cross-task wake-ups. Here the
//! caller's own future opens the stream on the shared connection (`h2` locks its stream store
//! for that either way) and polls the response itself. The request body is sent from the same
//! future; only a body still streaming when the response head arrives (a client or
//! bidirectional gRPC stream) moves to a task of its own. The connection task only drives the
//! connection and its keep-alive pings.
//!
//! hyper's HTTP/2 server spawns a task per stream. Here the connection's own task polls its
//! streams (a `FuturesUnordered` wakes only the streams whose I/O is ready): a request is
//! routed and forwarded in the same poll that read its HEADERS frame, with no task to create
//! or schedule. A panic in one stream is caught there and resets that stream alone. After 64
//! new streams in one poll the task yields, so that a connection bringing hundreds at once
//! (two proxies' mTLS connection carries all their clients') has the first ones written to
//! their endpoint while the rest are read, instead of the two sides idling in turn (the mTLS
//! pair: 93-104k requests/s became 111-112k, see `server::ACCEPT_BATCH`).
//!
//! Measured side by side against hyper, builds alternating, 3 rounds each, one core:
//! - the client: mesh-proxy (`bench/run.py --ab`, h2c) went from 16.9 to 12.5 CPU µs per
//!   request (median, -22%) and from 58.5k to 79.4k requests per second; mesh-ingress (TLS 1.3,
//!   the same h2load load) from 18.9 to 14.6 CPU µs per request (-23%);
//! - then the server: mesh-proxy from 11.6 to 9.7 CPU µs per request (-16%) and from 84.7k to
//!   96.2k requests per second; mesh-ingress -14% (median of the per-round ratios; 14.3 to
//!   14.4, 16.9 to 14.5 and 14.1 to 12.1 µs).
//!
//! An idle connection keeps its state only. `h2` allocates 28 KiB of buffers per connection
//! (16 KiB to write, 8 KiB to read, 4 KiB of HPACK scratch) and keeps them, and its stream
//! tables, for the connection's life. The workspace builds `h2` with an addition
//! (`vendor/h2/PATCHES.md`): `release_idle_buffers` frees whichever of them holds nothing, and
//! the next frame allocates it again. The server side calls it when a connection has no stream
//! in flight: at the first such moment after the first stream, then at most once per 250 ms
//! (a busy connection idles between bursts, and releasing at each of those cost 4.8% CPU per
//! request under load). The patch also stops HPACK table entries from pinning the buffer they
//! were decoded from, and boxes the rarely used state of a header block split over
//! CONTINUATION frames. With the connection tasks made smaller (a shared `Outbound`, no
//! argument kept twice), an idle h2c client connection costs mesh-proxy 5.5 KB of RSS
//! (5,000 open), down from 23.2 KB; `bench/run.py --ab`, 7 rounds: CPU per request +1.9%
//! (median of the per-round ratios; the machine's noise was 5.5%).
//!
//! What hyper did on top of `h2` and this module keeps: connection-specific headers are
//! removed (`h2` refuses them), flow-control capacity is released as a body is read, bodies
//! wait for stream capacity before sending, a body that fails resets its stream, and a
//! connection whose peer stops answering pings is closed.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::Body;

pub(crate) mod client;
pub(crate) mod server;

/// Removes the headers HTTP/2 forbids (RFC 9113, section 8.2.2); `TE: trailers` stays, as
/// gRPC needs it.
pub(crate) fn strip_connection_headers(headers: &mut HeaderMap) {
    // Almost no message carries one: a pass over its few names is cheaper than looking up
    // each forbidden name, which hashes it (and parses the two that are not constants).
    if !headers.iter().any(|(name, value)| forbidden(name, value)) {
        return;
    }
    crate::client::remove_connection_named(headers);
    headers.remove(header::CONNECTION);
    for name in [header::TRANSFER_ENCODING, header::UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    // Every TE value but `trailers` goes, not only the first.
    if headers
        .get_all(header::TE)
        .iter()
        .any(|te| te != "trailers")
    {
        let trailers = headers
            .get_all(header::TE)
            .iter()
            .any(|te| te == "trailers");
        headers.remove(header::TE);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// Whether HTTP/2 forbids this header: what `strip_connection_headers` removes.
fn forbidden(name: &HeaderName, value: &HeaderValue) -> bool {
    if name == header::TE {
        return value != "trailers";
    }
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Copies a request body into its stream, waiting for flow-control capacity.
pub(crate) struct SendBody {
    body: Body,
    stream: h2::SendStream<Bytes>,
    /// A chunk read from the body that waits for capacity, and whether it ends the body.
    waiting: Option<(Bytes, bool)>,
}

impl SendBody {
    pub(crate) fn new(body: Body, stream: h2::SendStream<Bytes>) -> Self {
        Self {
            body,
            stream,
            waiting: None,
        }
    }

    /// Ready when the body is sent, or when it cannot be (the stream was reset, the body
    /// failed: then the stream is reset).
    pub(crate) fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // Woken by a RST_STREAM while waiting for the body or for capacity.
            if let Poll::Ready(reason) = self.stream.poll_reset(cx) {
                tracing::debug!(?reason, "endpoint reset the stream; request body not sent");
                return Poll::Ready(());
            }
            if let Some((chunk, end)) = self.waiting.take() {
                while self.stream.capacity() == 0 {
                    match self.stream.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(0))) => {}
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => {
                            self.waiting = Some((chunk, end));
                            return Poll::Pending;
                        }
                    }
                }
                // `h2` splits the chunk into frames as the windows allow.
                if self.stream.send_data(chunk, end).is_err() || end {
                    return Poll::Ready(());
                }
                continue;
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        let end = self.body.is_end_stream();
                        if chunk.is_empty() {
                            // An empty DATA frame that does not end the stream carries
                            // nothing, and h2 servers count them against a flood limit for
                            // the connection's whole life: only the end is sent.
                            if end {
                                let _ = self.stream.send_data(chunk, true);
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        // Claim capacity only once a chunk is in hand: a claim held while
                        // waiting on the body could starve other streams of the connection
                        // window (hyper#4003). And claim the whole chunk, not one byte: when
                        // many streams wait on the connection window, a one-byte claim is
                        // granted one byte, sent as a one-byte DATA frame, and h2 servers
                        // answer a run of those with GOAWAY ENHANCE_YOUR_CALM (their budget of
                        // small frames).
                        self.stream.reserve_capacity(chunk.len());
                        self.waiting = Some((chunk, end));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.stream.reserve_capacity(0);
                            let _ = self.stream.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(e)) => {
                    let e = e.into_inner();
                    tracing::debug!(error = %e, "request body failed; resetting the stream");
                    self.stream.send_reset(reset_reason(&*e));
                    return Poll::Ready(());
                }
                None => {
                    let _ = self.stream.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The reason to reset an upstream stream with when its request body failed: the reason the
/// client reset its own stream with, when that is why; `INTERNAL_ERROR` otherwise.
fn reset_reason(err: &(dyn std::error::Error + 'static)) -> h2::Reason {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        next = e.source();
    }
    h2::Reason::INTERNAL_ERROR
}

/// A body received over HTTP/2 (a request from a client, a response from an endpoint): data
/// as it arrives (its flow-control capacity given back at once, as hyper does), then the
/// trailers.
#[derive(Debug)]
pub struct H2Body {
    stream: h2::RecvStream,
    data_done: bool,
}

impl H2Body {
    pub(crate) fn new(stream: h2::RecvStream) -> Self {
        Self {
            stream,
            data_done: false,
        }
    }
}

impl http_body::Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only if the stream is gone, which the next read reports.
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(this.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Why a connection task ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriverError {
    #[error(transparent)]
    H2(h2::Error),
    #[error("no answer to a keep-alive ping within {0:?}")]
    KeepAliveTimeout(Duration),
}

/// Pings the endpoint every `interval`; no answer within `timeout` ends the connection (an
/// endpoint that vanished without a FIN), before a request needs it.
pub(crate) struct KeepAlive {
    ping: h2::PingPong,
    interval: Duration,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    awaiting_pong: bool,
}

impl KeepAlive {
    pub(crate) fn new(ping: h2::PingPong, interval: Duration, timeout: Duration) -> Self {
        Self {
            ping,
            interval,
            timeout,
            timer: Box::pin(tokio::time::sleep(interval)),
            awaiting_pong: false,
        }
    }

    /// Ready only with the reason the connection must end.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<DriverError> {
        loop {
            if self.awaiting_pong {
                match self.ping.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.awaiting_pong = false;
                        self.timer.as_mut().reset(Instant::now() + self.interval);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(DriverError::H2(e)),
                    Poll::Pending => {}
                }
            }
            ready!(self.timer.as_mut().poll(cx));
            if self.awaiting_pong {
                return Poll::Ready(DriverError::KeepAliveTimeout(self.timeout));
            }
            if let Err(e) = self.ping.send_ping(h2::Ping::opaque()) {
                return Poll::Ready(DriverError::H2(e));
            }
            self.awaiting_pong = true;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_headers_are_removed_and_te_trailers_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-hop".parse().unwrap());
        headers.insert("x-hop", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        strip_connection_headers(&mut headers);
        let mut left: Vec<_> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["te", "x-kept"]);

        let mut headers = HeaderMap::new();
        headers.insert(header::TE, "gzip".parse().unwrap());
        strip_connection_headers(&mut headers);
        assert!(headers.is_empty());

        // Each forbidden header alone is found, whatever else the message carries.
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
            headers.insert(header::TE, "trailers".parse().unwrap());
            headers.insert(HeaderName::from_static(name), "x".parse().unwrap());
            strip_connection_headers(&mut headers);
            assert!(!headers.contains_key(name), "{name}");
            assert_eq!(headers.len(), 2, "{name}");
        }

        // Every `te` value but `trailers` goes, not only the first: HTTP/2 (and h2, which
        // refuses to send the message otherwise) allows `trailers` alone.
        let mut headers = HeaderMap::new();
        headers.append(header::TE, "trailers".parse().unwrap());
        headers.append(header::TE, "gzip".parse().unwrap());
        strip_connection_headers(&mut headers);
        let te: Vec<_> = headers.get_all(header::TE).iter().collect();
        assert_eq!(te, ["trailers"]);

        // A message with none is left as it is.
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.append("x-many", "1".parse().unwrap());
        headers.append("x-many", "2".parse().unwrap());
        let before = headers.clone();
        strip_connection_headers(&mut headers);
        assert_eq!(headers, before);
    }

    #[test]
    fn a_failed_body_resets_with_the_clients_reason() {
        let cancel = h2::Error::from(h2::Reason::CANCEL);
        let wrapped: crate::BoxError = Box::new(cancel);
        assert_eq!(reset_reason(&*wrapped), h2::Reason::CANCEL);
        let other = std::io::Error::other("broken");
        assert_eq!(reset_reason(&other), h2::Reason::INTERNAL_ERROR);
    }

    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use http_body_util::{BodyExt as _, StreamBody};

    use crate::detect::Protocol;
    use crate::drain::Drain;
    use crate::server::{HttpServer, ServerConfig};

    const PEER: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    fn client_settings() -> client::Settings {
        client::Settings::new(1024 * 1024, 4 * 1024 * 1024, Duration::from_secs(10))
    }

    /// A client connection to a server of ours (`service`) over an in-memory pipe.
    async fn connected<S>(service: S) -> client::Connection
    where
        S: hyper::service::Service<
                http::Request<Body>,
                Response = http::Response<Body>,
                Error = Infallible,
            > + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let server = HttpServer::new(&ServerConfig::default());
            let _ = server
                .serve(server_io, Protocol::Http2, service, &Drain::new())
                .await;
        });
        client_settings().handshake(client_io, PEER).await.unwrap()
    }

    fn get(path: &str) -> http::Request<Body> {
        http::Request::get(format!("http://web.test{path}"))
            .body(Body::Empty)
            .unwrap()
    }

    async fn call(
        conn: &client::Connection,
        req: http::Request<Body>,
    ) -> Result<(http::StatusCode, Bytes), h2::Error> {
        let mut tx = conn.ready().await?;
        let rsp = client::send(&mut tx, req)?.await?;
        let status = rsp.status();
        let body = rsp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// An endpoint that stops answering (no FIN, no pong) is found by the keep-alive pings:
    /// the connection closes once a ping goes unanswered for the timeout (twice the interval).
    #[tokio::test(start_paused = true)]
    async fn a_connection_whose_peer_stops_answering_pings_is_closed() {
        let (client_io, _silent) = tokio::io::duplex(64 * 1024);
        let conn = client_settings().handshake(client_io, PEER).await.unwrap();
        // The first ping goes at 10 s; its answer is due by 30 s.
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert!(!conn.is_closed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(conn.is_closed());
    }

    /// A peer that answers pings (our server) keeps the connection, idle or not.
    #[tokio::test(start_paused = true)]
    async fn a_connection_whose_peer_answers_pings_stays_open() {
        let service = hyper::service::service_fn(|_req: http::Request<Body>| async {
            Ok::<_, Infallible>(http::Response::new(Body::full("hi")))
        });
        let conn = connected(service).await;
        assert_eq!(
            call(&conn, get("/")).await.unwrap(),
            (http::StatusCode::OK, Bytes::from("hi"))
        );
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert!(!conn.is_closed());
        assert_eq!(call(&conn, get("/")).await.unwrap().0, http::StatusCode::OK);
    }

    /// A panic while serving one stream resets that stream only: the connection's other
    /// requests are served before and after, and the panic is counted.
    #[tokio::test]
    async fn a_panic_in_one_stream_resets_that_stream_only() {
        let service = hyper::service::service_fn(|req: http::Request<Body>| async move {
            if req.uri().path() == "/panic" {
                panic!("a panic a test asked for");
            }
            Ok::<_, Infallible>(http::Response::new(Body::full("fine")))
        });
        let conn = connected(service).await;
        assert_eq!(call(&conn, get("/")).await.unwrap().0, http::StatusCode::OK);
        let caught = crate::panic::caught();
        let reset = call(&conn, get("/panic")).await;
        assert!(
            reset.is_err_and(|e| e.is_reset()),
            "the panicking stream is reset"
        );
        assert!(crate::panic::caught() > caught);
        assert_eq!(
            call(&conn, get("/")).await.unwrap(),
            (http::StatusCode::OK, Bytes::from("fine"))
        );
        assert!(!conn.is_closed());
    }

    /// A server of the h2 crate (not ours) with the protocol's default windows, counting the
    /// connection's DATA frames against its flood limits, that reads every request body and
    /// answers with how many bytes it read. Returns the client side.
    fn h2_crate_server() -> tokio::io::DuplexStream {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(65_535)
                .initial_connection_window_size(65_535)
                .handshake::<_, Bytes>(server_io)
                .await?;
            while let Some(accepted) = conn.accept().await {
                let (req, mut respond) = accepted?;
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let mut read = 0;
                    while let Some(Ok(chunk)) = body.data().await {
                        read += chunk.len();
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    let rsp = http::Response::builder()
                        .header("read", read)
                        .body(())
                        .unwrap_or_default();
                    let _ = respond.send_response(rsp, true);
                });
            }
            Ok::<_, h2::Error>(())
        });
        client_io
    }

    async fn post(conn: &client::Connection, body: Body) -> Result<usize, h2::Error> {
        let req = http::Request::post("http://web.test/upload")
            .body(body)
            .unwrap();
        let mut tx = conn.ready().await?;
        let rsp = client::send(&mut tx, req)?.await?;
        Ok(rsp
            .headers()
            .get("read")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0))
    }

    /// Many request bodies waiting on one small connection window are sent in frames the
    /// size of what each stream was granted, not in one-byte frames: h2 servers close a
    /// connection that sends them runs of tiny DATA frames (GOAWAY ENHANCE_YOUR_CALM).
    #[tokio::test]
    async fn bodies_contending_for_the_connection_window_do_not_flood_the_peer() {
        const STREAMS: usize = 200;
        const BODY: usize = 16 * 1024;
        let conn = client_settings()
            .handshake(h2_crate_server(), PEER)
            .await
            .unwrap();
        let conn = std::sync::Arc::new(conn);
        let calls: Vec<_> = (0..STREAMS)
            .map(|_| {
                let conn = conn.clone();
                tokio::spawn(
                    async move { post(&conn, Body::full(Bytes::from(vec![b'x'; BODY]))).await },
                )
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap(), BODY);
        }
        assert!(!conn.is_closed());
    }

    /// Empty chunks of a request body are not sent as empty DATA frames: h2 servers allow a
    /// connection only 100 of those in its whole life.
    #[tokio::test]
    async fn empty_body_chunks_are_not_sent_as_frames() {
        let conn = client_settings()
            .handshake(h2_crate_server(), PEER)
            .await
            .unwrap();
        for _ in 0..3 {
            let chunks = (0..150)
                .map(|_| Bytes::new())
                .chain([Bytes::from_static(b"data")])
                .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
            let body = Body::boxed(StreamBody::new(futures_util::stream::iter(chunks)));
            assert_eq!(post(&conn, body).await.unwrap(), 4);
        }
        assert!(!conn.is_closed());
    }

    /// A request body still streaming when the response head comes back (a bidirectional
    /// gRPC call) goes on: the server echoes every chunk, the last sent after the head.
    #[tokio::test]
    async fn a_request_body_streams_on_after_the_response_head() {
        let echo = hyper::service::service_fn(|req: http::Request<Body>| async move {
            Ok::<_, Infallible>(http::Response::new(req.into_body()))
        });
        let conn = connected(echo).await;
        let (chunks, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            let chunk = rx.recv().await?;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
        });
        let req = http::Request::post("http://web.test/echo")
            .body(Body::boxed(StreamBody::new(stream)))
            .unwrap();
        chunks.send(Bytes::from("first ")).await.unwrap();
        let mut tx = conn.ready().await.unwrap();
        let rsp = client::send(&mut tx, req).unwrap().await.unwrap();
        assert_eq!(rsp.status(), http::StatusCode::OK);
        let mut body = rsp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first ");
        chunks.send(Bytes::from("second")).await.unwrap();
        drop(chunks);
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "second");
    }
}
