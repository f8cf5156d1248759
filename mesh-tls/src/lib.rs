//! Workload identity and mutual TLS for the mesh.
//!
//! Not built yet: this crate will hold SPIFFE identities
//! (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`), the certificate authority, the proxy's
//! certificate lifecycle (CSR at start, renewal at 70% of the lifetime) and the rustls
//! configurations of the inbound and outbound sides. Until then the proxy speaks plaintext.
