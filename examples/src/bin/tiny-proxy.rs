//! tiny-proxy: a per-request balancing HTTP/1.1 + HTTP/2 proxy composed from the mesh's
//! layers with `ServiceBuilder`, the proof that they are a library and not only a sidecar.
//!
//! # Run
//!
//! ```text
//! cargo run -p mesh-examples --bin tiny-proxy -- 127.0.0.1:4150 web:80=127.0.0.1:9001,127.0.0.1:9002
//! curl -H 'Host: web' http://127.0.0.1:4150/      # alternately answered by :9001 and :9002
//! curl -H 'Host: nope' http://127.0.0.1:4150/     # 503, mesh-proxy-error: unknown-authority
//! ```
//!
//! # Expected output
//!
//! ```text
//! tiny-proxy on 127.0.0.1:4150: web:80 -> [127.0.0.1:9001, 127.0.0.1:9002]
//! ```

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use mesh_balance::RoundRobin;
use mesh_core::client::{ClientConfig, HttpClient};
use mesh_core::detect::{PrefixedIo, Protocol, detect};
use mesh_core::drain::Drain;
use mesh_core::endpoint::Authority;
use mesh_core::router::AuthorityRouter;
use mesh_core::server::{HttpServer, RespondLayer, ServerConfig};
use tower::ServiceBuilder;

/// Parses `authority=addr,addr`.
fn service(arg: &str) -> anyhow::Result<(Authority, Vec<SocketAddr>)> {
    let Some((name, addrs)) = arg.split_once('=') else {
        bail!("{arg:?}: expected authority=addr[,addr...]");
    };
    let addrs = addrs
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<SocketAddr>, _>>();
    Ok((
        Authority::parse(name, 80)?,
        addrs.with_context(|| format!("endpoints of {name}"))?,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((listen, services)) = args.split_first() else {
        bail!("usage: tiny-proxy LISTEN AUTHORITY=ADDR[,ADDR...]...");
    };
    let client = HttpClient::new(&ClientConfig::default());
    let mut routes = Vec::new();
    for arg in services {
        let (authority, addrs) = service(arg)?;
        println!("tiny-proxy on {listen}: {authority} -> {addrs:?}");
        let balancer = RoundRobin::new(addrs.iter().map(|a| client.endpoint(*a)))?;
        routes.push((authority, balancer));
    }
    // The whole stack: errors become responses, the authority picks a balancer.
    let stack = ServiceBuilder::new()
        .layer(RespondLayer::new())
        .service(AuthorityRouter::new(routes, 80));

    let server = HttpServer::new(&ServerConfig::default());
    let drain = Drain::new();
    let listener = tokio::net::TcpListener::bind(listen.as_str()).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let (stack, server, drain) = (stack.clone(), server.clone(), drain.clone());
        tokio::spawn(async move {
            match detect(&mut stream, std::time::Duration::from_secs(10)).await {
                Ok((Protocol::Opaque, _)) | Err(_) => {} // not HTTP: close
                Ok((protocol, prefix)) => {
                    let io = PrefixedIo::new(prefix, stream);
                    let _ = server.serve(io, protocol, stack, &drain).await;
                }
            }
        });
    }
}
