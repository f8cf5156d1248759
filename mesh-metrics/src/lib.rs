//! Golden metrics for the mesh.
//!
//! Not built yet: this crate will count requests, responses, latency and TCP traffic, labelled
//! with who talks to whom, and serve them in Prometheus' text format on the admin listener.
//! Until then the admin listener serves `/ready`, `/live` and `/config`.
