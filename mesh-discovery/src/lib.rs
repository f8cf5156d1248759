//! Endpoint discovery for the mesh.
//!
//! Not built yet: this crate will resolve a service name into a stream of
//! `tower::discover::Change` of endpoints, from static configuration, DNS, watched files,
//! Kubernetes EndpointSlices and the controller's destination API. Until then the proxy takes
//! the static endpoint lists of its configuration.
