//! client-side-balancing: mesh-balance in front of a tonic client, no sidecar. The app's own
//! gRPC client balances each request over three greeter replicas (one 20 ms slower) by power
//! of two choices over peak-EWMA.
//!
//! # Run
//!
//! ```text
//! cargo run --release -p mesh-examples --bin client-side-balancing
//! ```
//!
//! # Expected output
//!
//! ```text
//! 3000 calls over 3 replicas (greeter-2 is 20 ms slower), 16 at a time:
//!   greeter-0  1508
//!   greeter-1  1486
//!   greeter-2     6
//! ```
//!
//! The counts vary; the slow replica gets well under 1 %.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh_balance::{BalanceLayer, BalancerConfig, fixed};
use mesh_core::client::{ClientConfig, HttpClient};
use mesh_core::endpoint::Endpoint;
use mesh_examples::demo::{Greeter, GreeterConfig, Replica};
use mesh_examples::pb::HelloRequest;
use mesh_examples::pb::greeter_client::GreeterClient;
use tokio::sync::Mutex;
use tower::ServiceBuilder;

const CALLS: usize = 3000;
const CONCURRENCY: usize = 16;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut replicas = Vec::new();
    for (name, delay) in [("greeter-0", 0), ("greeter-1", 0), ("greeter-2", 20)] {
        let config = GreeterConfig::new(name).with_delay(Duration::from_millis(delay));
        replicas.push(Replica::spawn_greeter(Greeter::new(config)).await?);
    }

    // The whole client-side mesh: a balancer over the replicas, each reached by an h2 client.
    let http = HttpClient::new(&ClientConfig::default());
    let balanced = ServiceBuilder::new()
        // tonic's request body becomes the mesh's; HTTP/2 end to end.
        .map_request(|req: http::Request<tonic::body::Body>| {
            let mut req = req.map(mesh_core::Body::boxed);
            *req.version_mut() = http::Version::HTTP_2;
            req
        })
        .layer(BalanceLayer::new(
            BalancerConfig::default(),
            fixed(replicas.iter().map(Replica::addr)),
        ))
        .service(move |endpoint: &Endpoint| http.endpoint(endpoint.addr));
    let origin = "http://greeter.demo:50051".parse().context("origin")?;
    let client = GreeterClient::with_origin(balanced, origin);

    let counts = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let mut callers = Vec::new();
    for caller in 0..CONCURRENCY {
        let (mut client, counts) = (client.clone(), counts.clone());
        callers.push(tokio::spawn(async move {
            for i in (caller..CALLS).step_by(CONCURRENCY) {
                let request = HelloRequest {
                    name: format!("n{i}"),
                    ..Default::default()
                };
                let replica = client.say_hello(request).await?.into_inner().replica;
                *counts.lock().await.entry(replica).or_default() += 1;
            }
            Ok::<_, tonic::Status>(())
        }));
    }
    for caller in callers {
        caller.await??;
    }

    println!("{CALLS} calls over 3 replicas (greeter-2 is 20 ms slower), {CONCURRENCY} at a time:");
    for (replica, count) in counts.lock().await.iter() {
        println!("  {replica}  {count:>4}");
    }
    for replica in replicas {
        replica.shutdown().await?;
    }
    Ok(())
}
