//! Endpoint discovery: a service name becomes a stream of `tower::discover::Change` of
//! endpoints, which the balancer follows.
//!
//! - [`resolve`]: the contract. [`Resolve`] starts a [`Resolution`], a `Discover` stream of
//!   `Change<SocketAddr, Endpoint>`; sources publish whole endpoint sets through a
//!   [`Publisher`], which keeps the last good one; [`StaticResolve`] serves the
//!   configuration's lists;
//! - [`file`](mod@file): a YAML or JSON file of services, watched;
//! - [`dns`]: A/AAAA and SRV records, re-resolved by TTL;
//! - [`kubernetes`]: EndpointSlices of a Service, with ServiceAccounts as identities;
//! - [`remote`]: the controller's destination API, which serves the Kubernetes source to
//!   proxies that have no API credentials.
//!
//! # Features
//!
//! Each source but the static one is behind a cargo feature, so that a binary that needs only
//! [`StaticResolve`] and a balancer compiles none of kube, hickory, tonic or notify. All are on
//! by default; `default-features = false, features = ["static"]` keeps just the contract.
//!
//! | feature | what it adds | what it pulls in |
//! |---|---|---|
//! | `static` | the contract ([`resolve`]) and [`StaticResolve`]; always built | nothing optional |
//! | `file` | [`file`](mod@file): [`FileResolve`](file::FileResolve) | notify, serde, serde_json, serde-saphyr |
//! | `dns` | [`dns`]: [`DnsResolve`](dns::DnsResolve) | hickory-resolver, serde |
//! | `kubernetes` | [`kubernetes`]: [`KubernetesResolve`](kubernetes::KubernetesResolve) | kube, k8s-openapi, serde |
//! | `destination` | [`remote`]: [`RemoteResolve`](remote::RemoteResolve) and [`DestinationService`](remote::DestinationService); the protos, compiled by build.rs only with this feature | tonic, tonic-prost, prost |
//!
//! protox and tonic-prost-build stay build dependencies whatever the features (cargo has no
//! optional build dependency per feature); without `destination`, build.rs does nothing with
//! them.
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

// With a source left out, the links above to its module have nothing to point at.
#![cfg_attr(
    not(all(
        feature = "file",
        feature = "dns",
        feature = "kubernetes",
        feature = "destination"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
#[cfg(feature = "destination")]
pub mod remote;
pub mod resolve;

pub use resolve::{
    Destination, EndpointSet, Lookup, LookupError, LookupFuture, Publish, Publisher, Resolution,
    Resolve, ResolveError, StaticResolve,
};
