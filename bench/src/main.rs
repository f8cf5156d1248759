//! `mesh-bench-backend`: the test backend that `bench/run.py` puts behind each proxy.
//!
//! A deliberately small HTTP server (HTTP/2 prior knowledge, "h2c", and HTTP/1.1 on the same
//! port, detected per connection by `hyper_util`'s auto builder) that answers every request
//! `200 ok\n` with an `x-backend: <name>` header, after an optional fixed delay. With
//! `--fail-status CODE` it answers that status instead (`fail\n`, same header), to play a broken
//! endpoint in the balancing benchmarks; those requests are counted too. With `--ports N` it
//! listens on N consecutive ports, served alike, so one process plays a service of thousands of
//! endpoints (the cost curves of `bench/run.py --curves`).
//!
//! It counts the requests it served so the harness can see how a proxy spread the load:
//! `GET /__count` returns the count as text and `POST /__reset` zeroes it; `GET /__headers`
//! returns the request's headers, one `name: value` line each, so the harness can see what an
//! edge set; those control paths are not counted themselves.
//!
//! Decisions:
//! * It must never be the bottleneck of a proxy benchmark, so by default it runs on a
//!   current-thread tokio runtime (the harness pins it to one core) and does no per-request
//!   allocation of its own: the body is a static `Bytes` and the header value is built once
//!   and cloned by reference count. `--threads N` (N > 1) switches to a multi-thread runtime.
//! * The counter is a relaxed `AtomicU64`: exact totals are all the harness needs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};

/// A fast h2c/HTTP/1.1 test backend for the mesh benchmarks.
#[derive(Debug, Parser)]
#[command(name = "mesh-bench-backend", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Name sent back in the `x-backend` header (default: `backend-<port>`).
    #[arg(long)]
    name: Option<String>,
    /// Added delay before answering each request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Runtime worker threads; 1 means a current-thread runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Answer every (counted) request with this status instead of 200, e.g. 503.
    #[arg(long, value_name = "CODE", value_parser = parse_status)]
    fail_status: Option<StatusCode>,
    /// Listen on this many consecutive ports from `--listen`'s, all served alike: one process
    /// plays a service of thousands of endpoints.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    ports: u16,
}

fn parse_status(s: &str) -> Result<StatusCode, String> {
    let code: u16 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    StatusCode::from_u16(code).map_err(|_| format!("{code} is not an HTTP status (100..=999)"))
}

#[derive(Debug)]
struct State {
    count: AtomicU64,
    name: HeaderValue,
    delay: Option<Duration>,
    /// The status of every counted answer: 200, or `--fail-status`.
    status: StatusCode,
}

static OK_BODY: &[u8] = b"ok\n";
static FAIL_BODY: &[u8] = b"fail\n";
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
const X_BACKEND: &str = "x-backend";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let name = args
        .name
        .unwrap_or_else(|| format!("backend-{}", args.listen.port()));
    let state = Arc::new(State {
        count: AtomicU64::new(0),
        name: HeaderValue::from_str(&name).context("--name is not a valid header value")?,
        delay: (args.delay_ms > 0).then(|| Duration::from_millis(args.delay_ms)),
        status: args.fail_status.unwrap_or(StatusCode::OK),
    });
    let mut listeners = Vec::with_capacity(usize::from(args.ports));
    for i in 0..args.ports {
        let port = args.listen.port().checked_add(i).with_context(|| {
            format!(
                "--ports {} from port {} passes 65535",
                args.ports,
                args.listen.port()
            )
        })?;
        let addr = SocketAddr::new(args.listen.ip(), port);
        listeners.push(listen(addr).with_context(|| format!("listen on {addr}"))?);
    }
    eprintln!(
        "mesh-bench-backend {name} listening on {} ({} port{}; delay {} ms, status {}, threads {})",
        args.listen,
        args.ports,
        if args.ports == 1 { "" } else { "s" },
        args.delay_ms,
        state.status.as_u16(),
        args.threads.max(1)
    );

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http2().max_concurrent_streams(1024);
    let builder = Arc::new(builder);
    let mut accepting = tokio::task::JoinSet::new();
    for listener in listeners {
        accepting.spawn(accept(listener, Arc::clone(&builder), Arc::clone(&state)));
    }
    while accepting.join_next().await.is_some() {}
    Ok(())
}

async fn accept(
    listener: TcpListener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    state: Arc<State>,
) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                // Out of descriptors and the like: back off a little instead of spinning.
                eprintln!("accept: {err}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small request/response exchanges: do not let Nagle delay them.
        let _ = stream.set_nodelay(true);
        let builder = Arc::clone(&builder);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, Arc::clone(&state)));
            // A client closing mid-stream is routine under load generators: not worth a log.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds with a deep accept queue: proxies without HTTP/2 upstream multiplexing (nginx's
/// `grpc_pass`) open hundreds of connections at once. The kernel caps it at `somaxconn`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/__count") => {
            let n = state.count.load(Ordering::Relaxed);
            Ok(text(StatusCode::OK, Bytes::from(format!("{n}\n"))))
        }
        (&Method::GET, "/__headers") => {
            // What an edge in front set: one `name: value` line per header, as received.
            let mut lines = String::new();
            for (name, value) in req.headers() {
                lines.push_str(name.as_str());
                lines.push_str(": ");
                lines.push_str(&String::from_utf8_lossy(value.as_bytes()));
                lines.push('\n');
            }
            Ok(text(StatusCode::OK, Bytes::from(lines)))
        }
        (&Method::POST, "/__reset") => {
            state.count.store(0, Ordering::Relaxed);
            Ok(text(StatusCode::OK, Bytes::from_static(b"reset\n")))
        }
        _ => {
            state.count.fetch_add(1, Ordering::Relaxed);
            if let Some(delay) = state.delay {
                tokio::time::sleep(delay).await;
            }
            let body = if state.status == StatusCode::OK {
                OK_BODY
            } else {
                FAIL_BODY
            };
            let mut resp = text(state.status, Bytes::from_static(body));
            resp.headers_mut().insert(X_BACKEND, state.name.clone());
            Ok(resp)
        }
    }
}

fn text(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
    resp
}
