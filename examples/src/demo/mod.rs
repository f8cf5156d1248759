//! The demo's services: [`Greeter`] and [`Names`] replicas, and a [`Replica`] to
//! run one on an ephemeral port.
//!
//! A greeter replica is configured with a name, an added delay and a failure rate
//! ([`GreeterConfig`]). Failures are pseudo-random but deterministic: each replica
//! draws from its own xorshift generator seeded by its name, so a run with the same
//! request sequence fails the same requests. When a `SayHello` request carries no
//! name, the greeter asks the `Names` service for one, through the mesh: its client
//! connects to the outbound proxy and names [`NAMES_AUTHORITY`] as `:authority`
//! ([`mesh_channel`]).
//!
//! Servers and clients accept messages up to [`MAX_MESSAGE_SIZE`] (16 MiB), so
//! tests can send payloads of several MiB.

mod greeter;
mod names;
mod replica;
mod rng;

use std::net::SocketAddr;

use tonic::transport::{Channel, Endpoint};

pub use self::greeter::{Greeter, GreeterConfig};
pub use self::names::Names;
pub use self::replica::{Replica, ReplicaListener};
use crate::pb::greeter_client::GreeterClient;
use crate::pb::names_client::NamesClient;

/// The authority the demo's clients name to reach the greeter through the mesh.
pub const GREETER_AUTHORITY: &str = "greeter.demo.svc.cluster.local:50051";

/// The authority the greeter names to reach the `Names` service through the mesh.
pub const NAMES_AUTHORITY: &str = "names.demo.svc.cluster.local:50051";

/// The largest message servers and clients of the demo encode or decode: 16 MiB.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// The name that every greeter call refuses with `NOT_FOUND`.
pub const NOT_FOUND_NAME: &str = "not-found";

/// A channel to `proxy` (an outbound listener) whose requests carry `authority`
/// as their `:authority`, so the proxy routes them to that service.
///
/// The channel connects lazily; it must be created inside a tokio runtime.
///
/// # Errors
///
/// When `authority` is not a valid URI authority.
pub fn mesh_channel(
    proxy: SocketAddr,
    authority: &str,
) -> Result<Channel, tonic::transport::Error> {
    let origin = Endpoint::from_shared(format!("http://{authority}"))?;
    Ok(Endpoint::from_shared(format!("http://{proxy}"))?
        .origin(origin.uri().clone())
        .connect_lazy())
}

/// A channel straight to `addr`, with no proxy in between.
///
/// The channel connects lazily; it must be created inside a tokio runtime.
///
/// # Errors
///
/// Never in practice: a socket address always makes a valid URI.
pub fn direct_channel(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy())
}

/// A greeter client on `channel` that accepts messages up to [`MAX_MESSAGE_SIZE`].
pub fn greeter_client(channel: Channel) -> GreeterClient<Channel> {
    GreeterClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// A names client on `channel` that accepts messages up to [`MAX_MESSAGE_SIZE`].
pub fn names_client(channel: Channel) -> NamesClient<Channel> {
    NamesClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}
