//! Endpoint discovery: a service name becomes a stream of `tower::discover::Change` of
//! endpoints, which the balancer follows.
//!
//! - [`resolve`]: the contract. [`Resolve`] starts a [`Resolution`], a `Discover` stream of
//!   `Change<SocketAddr, Endpoint>`; sources publish whole endpoint sets through a
//!   [`Publisher`], which keeps the last good one; [`StaticResolve`] serves the
//!   configuration's lists;
//! - [`file`]: a YAML or JSON file of services, watched;
//! - [`dns`]: A/AAAA and SRV records, re-resolved by TTL;
//! - [`kubernetes`]: EndpointSlices of a Service, with ServiceAccounts as identities;
//! - [`remote`]: the controller's destination API, which serves the Kubernetes source to
//!   proxies that have no API credentials.
//!
//! Endpoints carry their metadata in `mesh_core::endpoint::Endpoint`: the identity a meshed
//! endpoint proves, and labels `pod`, `workload`, `namespace`, `zone`, `weight` and `protocol`
//! (a hint: `http1`, `h2`, `opaque`).
//!
//! # Example
//!
//! ```
//! use mesh_core::endpoint::Endpoint;
//! use mesh_discovery::{Resolve, StaticResolve};
//!
//! let resolve = StaticResolve::new([(
//!     "web.demo:80".to_owned(),
//!     vec![Endpoint::new("10.0.0.7:8080".parse().unwrap())],
//! )]);
//! // A `Discover` stream: hand it to `mesh_balance::Balancer::new(config, resolution, make)`.
//! let resolution = resolve.resolve("web.demo:80").unwrap();
//! # let _ = resolution;
//! ```

pub mod dns;
pub mod file;
pub mod kubernetes;
pub mod remote;
pub mod resolve;

pub use resolve::{
    EndpointSet, Publish, Publisher, Resolution, Resolve, ResolveError, StaticResolve,
};
