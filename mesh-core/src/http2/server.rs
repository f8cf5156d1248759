//! The server side: one task per connection that accepts its streams and serves them itself.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use http::{Request, Response};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};

use super::{DriverError, H2Body, KeepAlive, SendBody, strip_connection_headers};
use crate::body::Body;
use crate::drain::Drain;

/// A connection releases its buffers when it idles (no stream in flight), but at most once in
/// this period: a busy connection idles between bursts too, and releasing at every such moment
/// (to allocate again for the next burst) cost 4.8% CPU per request under load. An idle moment
/// within the period after a release sets a timer for the period's end instead.
const RELEASE_PERIOD: Duration = Duration::from_millis(250);

/// Request body bytes buffered per stream beyond what the client's windows allow (hyper's
/// server default).
const MAX_SEND_BUFFER_SIZE: usize = 400 * 1024;

/// Settings of the HTTP/2 server side.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) builder: h2::server::Builder,
    pub(crate) keep_alive_interval: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

impl Settings {
    /// The server side's `h2` builder from the listener's settings.
    pub(crate) fn new(config: &crate::server::ServerConfig) -> Self {
        let mut builder = h2::server::Builder::new();
        builder
            .max_header_list_size(config.max_header_bytes)
            .max_concurrent_streams(config.max_concurrent_streams)
            .initial_window_size(config.initial_stream_window)
            .initial_connection_window_size(config.initial_connection_window)
            .max_send_buffer_size(MAX_SEND_BUFFER_SIZE)
            // HTTP/2 floods, bounded here rather than by a dependency's default: streams a
            // client resets before they are served (rapid reset, CVE-2023-44487), and streams
            // the server itself must reset for a client's errors, each end the connection
            // with GOAWAY past these counts; a header block, CONTINUATION frames included, is
            // refused past `max_header_bytes`.
            .max_pending_accept_reset_streams(crate::server::MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(Some(crate::server::MAX_LOCAL_ERROR_RESETS));
        Self {
            builder,
            keep_alive_interval: config.keep_alive_interval,
            keep_alive_timeout: config.keep_alive_interval,
            idle_timeout: config.idle_timeout,
        }
    }
}

/// Why an HTTP/2 connection from a client ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The connection failed: I/O, a protocol error, a flood past its bound.
    #[error(transparent)]
    H2(#[from] h2::Error),
    /// The client stopped answering pings.
    #[error("no answer to a keep-alive ping within {0:?}")]
    KeepAliveTimeout(Duration),
}

impl From<DriverError> for ServeError {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::H2(e) => ServeError::H2(e),
            DriverError::KeepAliveTimeout(d) => ServeError::KeepAliveTimeout(d),
        }
    }
}

/// Serves one HTTP/2 connection until the client is done, it idles for `idle_timeout` (no new
/// stream in a whole period) or `drain` is signalled; then GOAWAY, and the open streams
/// finish.
///
/// An `async` block rather than an `async fn`: the future lives as long as the connection, and
/// an `async fn` would keep a second copy of its arguments in it.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub(crate) fn serve<'a, I, S>(
    settings: &'a Settings,
    io: I,
    service: S,
    drain: &'a Drain,
) -> impl Future<Output = Result<(), ServeError>> + 'a
where
    I: AsyncRead + AsyncWrite + Unpin + 'a,
    S: hyper::service::Service<Request<Body>, Response = Response<Body>> + 'a,
{
    async move {
        let mut conn = settings.builder.handshake::<I, Bytes>(io).await?;
        let mut keep_alive = conn.ping_pong().map(|ping| {
            KeepAlive::new(
                ping,
                settings.keep_alive_interval,
                settings.keep_alive_timeout,
            )
        });
        let idle = settings.idle_timeout;
        let mut idle_checks = tokio::time::interval_at(tokio::time::Instant::now() + idle, idle);
        idle_checks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut drained = pin!(drain.signaled());
        // Made on the first stream and dropped when the connection idles: its queue's stub is
        // as large as a stream's future.
        let mut streams = None;
        let mut state = Connection {
            accepting: true,
            shutting_down: false,
            accepted: 0,
            accepted_at_last_check: 0,
            release: Release::Due,
        };
        std::future::poll_fn(|cx| {
            if !state.shutting_down
                && (drained.as_mut().poll(cx).is_ready() || state.idle(&mut idle_checks, cx, idle))
            {
                state.shutting_down = true;
                conn.graceful_shutdown();
            }
            let mut accepted_now = 0;
            while state.accepting {
                if accepted_now == ACCEPT_BATCH {
                    // Let the requests sent so far go out before reading more (see ACCEPT_BATCH).
                    cx.waker().wake_by_ref();
                    break;
                }
                match conn.poll_accept(cx) {
                    Poll::Ready(Some(Ok((req, respond)))) => {
                        accepted_now += 1;
                        state.stream_accepted();
                        streams
                            .get_or_insert_with(FuturesUnordered::new)
                            .push(serve_stream(&service, req, respond));
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(ServeError::H2(e))),
                    // The connection is done: closed by the client, or after GOAWAY.
                    Poll::Ready(None) => state.accepting = false,
                    Poll::Pending => break,
                }
            }
            let mut finished = false;
            if let Some(streams) = &mut streams {
                while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {
                    finished = true;
                }
            }
            let in_flight = streams.as_ref().is_some_and(|s| !s.is_empty());
            if !state.accepting {
                return match in_flight {
                    false => Poll::Ready(Ok(())),
                    true => Poll::Pending,
                };
            }
            if let Some(keep_alive) = &mut keep_alive
                && let Poll::Ready(failed) = keep_alive.poll(cx)
            {
                return Poll::Ready(Err(failed.into()));
            }
            // Idle: no stream in flight, and none finished in this poll (a finished stream's last
            // frames are written on the next one, which h2 wakes this task for). The connection
            // then holds its state only, not its buffers, until a frame comes or goes.
            if !in_flight && !finished && state.release_due(cx) {
                streams = None;
                conn.release_idle_buffers();
            }
            Poll::Pending
        })
        .await
    }
}

/// Streams accepted in one poll of a connection before it yields. A connection that brings
/// hundreds of requests at once (the mTLS connection between two proxies carries every
/// client's) would otherwise have them all read and dispatched before the first is written to
/// its endpoint: the endpoint (another process, often on another core) idles until the whole
/// batch is in, then the proxy idles while it is answered, in lockstep. Yielding lets the
/// endpoint's connection task write the first requests while the rest are read.
///
/// Measured on the bench's mTLS pair (A and B on one core, 16 x 32 streams from h2load, all
/// of them on the one A -> B connection), 4 rounds each, alternating: the pair's core was busy
/// 91-92% of the time without the bound (idle in 1.2 ms gaps, `perf sched`), 99% with it;
/// 93-104k requests/s became 111-112k, and CPU per request fell 5% (8.95 us against 9.4,
/// medians). A bound of 16 or 32 cost CPU per request, 128 gained less. A client connection
/// with 64 streams or fewer in flight never reaches it.
const ACCEPT_BATCH: usize = 64;

/// What the connection's task tracks besides its streams.
struct Connection {
    accepting: bool,
    shutting_down: bool,
    accepted: u64,
    accepted_at_last_check: u64,
    release: Release,
}

/// Where the connection is in releasing its buffers.
enum Release {
    /// At the next idle moment.
    Due,
    /// At an idle moment from this time on (a timer, made at the first idle moment before it,
    /// wakes the connection then).
    After(Instant, Option<Pin<Box<Sleep>>>),
    /// Released at this time, and no stream since.
    Done(Instant),
}

impl Connection {
    fn stream_accepted(&mut self) {
        self.accepted += 1;
        if self.accepted == 1 {
            // The first stream: released at the first idle moment after it.
            self.release = Release::Due;
        } else if let Release::Done(at) = self.release {
            self.release = Release::After(at + RELEASE_PERIOD, None);
        }
    }

    /// At an idle moment: true when the buffers are to be released now.
    fn release_due(&mut self, cx: &mut Context<'_>) -> bool {
        if self.accepted == 0 && matches!(self.release, Release::Due) {
            // Not before the first stream, which is on its way, unless it does not come.
            self.release = Release::After(Instant::now() + RELEASE_PERIOD, None);
        }
        match &mut self.release {
            Release::Done(_) => return false,
            Release::Due => {}
            Release::After(at, None) if Instant::now() >= *at => {}
            Release::After(at, timer) => {
                let at = *at;
                let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.as_mut().poll(cx).is_pending() {
                    return false;
                }
            }
        }
        self.release = Release::Done(Instant::now());
        true
    }

    /// True when a whole idle period passed without a new stream.
    fn idle(&mut self, checks: &mut Interval, cx: &mut Context<'_>, period: Duration) -> bool {
        while checks.poll_tick(cx).is_ready() {
            if self.accepted == self.accepted_at_last_check {
                tracing::debug!(?period, "HTTP/2 connection idle: GOAWAY");
                return true;
            }
            self.accepted_at_last_check = self.accepted;
        }
        false
    }
}

/// Serves one stream: the service's response, then its body. A panic anywhere in it is caught
/// and counted, and resets this stream only.
fn serve_stream<S>(
    service: &S,
    req: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
) -> impl Future<Output = ()> + use<S>
where
    S: hyper::service::Service<Request<Body>, Response = Response<Body>>,
{
    let req = req.map(|recv| Body::H2(H2Body::new(recv)));
    let state = match std::panic::catch_unwind(AssertUnwindSafe(|| service.call(req))) {
        Ok(response) => Stream::Responding { response, respond },
        Err(_) => {
            crate::panic::count_caught("an HTTP/2 stream");
            Stream::Done
        }
    };
    AssertUnwindSafe(state).catch_unwind().map(|served| {
        if served.is_err() {
            crate::panic::count_caught("an HTTP/2 stream");
        }
    })
}

pin_project_lite::pin_project! {
    /// One stream being served.
    #[project = StreamProj]
    enum Stream<F> {
        Responding {
            #[pin]
            response: F,
            respond: h2::server::SendResponse<Bytes>,
        },
        SendingBody {
            body: SendBody,
        },
        Done,
    }
}

impl<F, E> Future for Stream<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (stream, body) = match self.as_mut().project() {
            StreamProj::Responding { response, respond } => {
                let Poll::Ready(result) = response.poll(cx) else {
                    // A client that resets the stream cancels the request below.
                    if let Poll::Ready(reason) = respond.poll_reset(cx) {
                        tracing::debug!(?reason, "client reset the stream");
                        self.set(Stream::Done);
                        return Poll::Ready(());
                    }
                    return Poll::Pending;
                };
                let Ok(rsp) = result else {
                    // The stacks answer every error with a response: unreachable with them.
                    respond.send_reset(h2::Reason::INTERNAL_ERROR);
                    self.set(Stream::Done);
                    return Poll::Ready(());
                };
                let (mut head, body) = rsp.into_parts();
                strip_connection_headers(&mut head.headers);
                head.headers.remove(http::header::TE);
                let end_of_stream = body.is_end_stream();
                match respond.send_response(Response::from_parts(head, ()), end_of_stream) {
                    Ok(stream) if !end_of_stream => (stream, body),
                    Ok(_) => {
                        self.set(Stream::Done);
                        return Poll::Ready(());
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "response not sent");
                        self.set(Stream::Done);
                        return Poll::Ready(());
                    }
                }
            }
            StreamProj::SendingBody { body } => return body.poll_send(cx),
            StreamProj::Done => return Poll::Ready(()),
        };
        self.set(Stream::SendingBody {
            body: SendBody::new(body, stream),
        });
        match self.project() {
            StreamProj::SendingBody { body } => body.poll_send(cx),
            _ => Poll::Ready(()),
        }
    }
}
