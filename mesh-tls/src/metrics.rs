//! The identity's metrics: when the certificate expires, renewals, and failed renewals.

use std::time::SystemTime;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::cert;

/// Counters of the certificate lifecycle. Cheap to clone (clones share values).
#[derive(Clone, Debug, Default)]
pub struct IdentityMetrics {
    expiration: Gauge,
    valid: Gauge,
    renewals: Counter,
    failures: Counter,
}

impl IdentityMetrics {
    /// Registers the metrics:
    /// `identity_cert_expiration_timestamp_seconds`, `identity_cert_valid`,
    /// `identity_cert_renewals_total`, `identity_cert_renewal_failures_total`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the certificate in force expires (notAfter), in seconds since the epoch",
            metrics.expiration.clone(),
        );
        registry.register(
            "identity_cert_valid",
            "1 while the certificate in force is valid; 0 before the first and after one expired with no renewal (the proxy is then not ready)",
            metrics.valid.clone(),
        );
        registry.register(
            "identity_cert_renewals",
            "Certificates obtained (the first one included)",
            metrics.renewals.clone(),
        );
        registry.register(
            "identity_cert_renewal_failures",
            "Failed attempts to obtain a certificate",
            metrics.failures.clone(),
        );
        metrics
    }

    /// A certificate valid until `valid_until` was installed.
    pub fn renewed(&self, valid_until: SystemTime) {
        self.renewals.inc();
        self.valid.set(1);
        self.expiration
            .set(i64::try_from(cert::unix_seconds(valid_until)).unwrap_or(i64::MAX));
    }

    /// The certificate in force expired with no renewal.
    pub fn expired(&self) {
        self.valid.set(0);
    }

    /// An attempt failed.
    pub fn failed(&self) {
        self.failures.inc();
    }

    /// Renewals so far.
    pub fn renewals(&self) -> u64 {
        self.renewals.get()
    }

    /// Failures so far.
    pub fn failures(&self) -> u64 {
        self.failures.get()
    }
}
