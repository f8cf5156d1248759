//! The demo application of the mesh, and the code it is made of.
//!
//! [`pb`] is the gRPC API of `proto/demo.proto`: a `Greeter` service with the four
//! call kinds (unary, server streaming, client streaming, bidirectional) and a
//! `Names` service the greeter calls through the mesh. [`demo`] implements both as
//! replicas that can be slow or failing on purpose, so that the mesh's balancing,
//! retries and metrics have something to show; integration tests use the same
//! replicas.
//!
//! The `mesh-demo` binary (`src/bin/mesh-demo.rs`) runs the whole demo in one
//! process: the replicas, a `mesh-proxy`, and a load generator that prints what
//! each replica served, as the proxy's metrics tell it ([`stats`]).
//!
//! [`outbound_stack`] composes a complete outbound stack (discovery, routes, retries, P2C,
//! metrics, mTLS) from the library in one function, served by the `outbound-stack` binary.
//!
//! ```no_run
//! use mesh_examples::demo::{self, Greeter, GreeterConfig, Replica};
//! use mesh_examples::pb::HelloRequest;
//!
//! # async fn example() -> anyhow::Result<()> {
//! let replica = Replica::spawn_greeter(Greeter::new(GreeterConfig::new("greeter-0"))).await?;
//! let channel = demo::direct_channel(replica.addr())?;
//! let reply = demo::greeter_client(channel)
//!     .say_hello(HelloRequest { name: "Ada".into(), ..Default::default() })
//!     .await?;
//! assert_eq!(reply.get_ref().message, "Hello, Ada!");
//! replica.shutdown().await?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod demo;
pub mod outbound_stack;
pub mod stats;

/// The code generated from `proto/demo.proto` (package `mesh.demo.v1`).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    reason = "generated code"
)]
pub mod pb {
    tonic::include_proto!("mesh.demo.v1");
}
