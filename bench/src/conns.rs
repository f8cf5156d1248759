//! `mesh-bench-conns`: holds many idle HTTP/2 client connections open against a proxy, so the
//! harness (`bench/run.py --curves`) can read what each idle connection costs the proxy in
//! resident memory.
//!
//! Each connection is a real h2c client (hyper's HTTP/2 client, prior knowledge): it opens,
//! sends `--requests-each` GET requests with the bench's `:authority` and reads each answer to the
//! end (so the proxy has routed on it and allocated whatever a used connection holds), then stays
//! open and idle; hyper answers the server's keep-alive pings. When every connection is up, one
//! line `open N` goes to stdout. The tool then holds them until its stdin closes (the harness
//! closes it when it has measured) or `--hold-secs` pass, whichever is first, and exits.
//!
//! Decisions:
//! * Connections are opened `--parallel` at a time: 10,000 at once would overflow the accept
//!   queue of the proxy under test and measure its SYN handling, not its idle cost.
//! * Any failed connection or request fails the run (exit 1, the reason on stderr): a partial
//!   set would make the per-connection figure wrong.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Holds N idle h2c client connections open against a proxy.
#[derive(Debug, Parser)]
#[command(name = "mesh-bench-conns", version)]
struct Args {
    /// The proxy's listener.
    #[arg(long)]
    target: SocketAddr,
    /// `:authority` of the requests.
    #[arg(long, default_value = "bench.local:80")]
    authority: String,
    /// Connections to open and hold.
    #[arg(long)]
    connections: usize,
    /// Requests sent (one after the other) on each connection before it goes idle.
    #[arg(long, default_value_t = 1)]
    requests_each: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Longest time the connections are held; stdin closing ends it sooner.
    #[arg(long, default_value_t = 300)]
    hold_secs: u64,
}

/// A connection that has done its requests: its request handle keeps it open.
type Held = http2::SendRequest<Empty<Bytes>>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let uri = format!("http://{}/", args.authority);
    let mut held: Vec<Held> = Vec::with_capacity(args.connections);
    let mut opening = JoinSet::new();
    let mut started = 0;
    while held.len() < args.connections {
        while started < args.connections && opening.len() < args.parallel.max(1) {
            opening.spawn(open(args.target, uri.clone(), args.requests_each));
            started += 1;
        }
        match opening.join_next().await {
            Some(done) => held.push(done.context("a connection task panicked")??),
            None => break,
        }
    }
    println!("open {}", held.len());
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let hold = tokio::time::sleep(Duration::from_secs(args.hold_secs));
    tokio::pin!(hold);
    loop {
        tokio::select! {
            () = &mut hold => break,
            read = stdin.read(&mut sink) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    let closed = held.iter().filter(|h| h.is_closed()).count();
    if closed > 0 {
        eprintln!(
            "{closed} of {} connections were closed by the peer while held",
            held.len()
        );
    }
    Ok(())
}

async fn open(target: SocketAddr, uri: String, requests: usize) -> anyhow::Result<Held> {
    let tcp = TcpStream::connect(target)
        .await
        .with_context(|| format!("connect to {target}"))?;
    tcp.set_nodelay(true)?;
    let (mut send, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("connection ended: {e}");
        }
    });
    for _ in 0..requests {
        send.ready().await.context("connection not ready")?;
        let request = Request::get(uri.as_str())
            .body(Empty::new())
            .context("request")?;
        let response = send.send_request(request).await.context("request")?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .context("response body")?;
        if status != StatusCode::OK {
            anyhow::bail!("answered {status}");
        }
    }
    Ok(send)
}
