//! outbound-stack: the library's complete outbound stack (discovery, routes, retries, P2C,
//! metrics, mTLS) served on a port, with no sidecar binary. See `mesh_examples::outbound_stack`.
//!
//! # Run
//!
//! ```text
//! cargo run -p mesh-examples --bin outbound-stack -- 127.0.0.1:4150 stack.toml
//! curl -H 'Host: api' http://127.0.0.1:4150/   # over mTLS to an endpoint proving its identity
//! ```
//!
//! # Expected output
//!
//! ```text
//! outbound stack on 127.0.0.1:4150 (identity spiffe://cluster.local/ns/demo/sa/web)
//! ```

use anyhow::Context as _;
use mesh_core::drain::Drain;
use mesh_stack::config::WorkloadConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, config] = args.as_slice() else {
        anyhow::bail!("usage: outbound-stack LISTEN CONFIG.toml");
    };
    let text = std::fs::read_to_string(config).with_context(|| config.clone())?;
    let stack = mesh_examples::outbound_stack::build(&text, WorkloadConfig::default()).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("outbound stack on {}", listener.local_addr()?);
    let drain = Drain::new();
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(stack.outbound.clone().serve(stream, peer, drain.clone()));
    }
}
