//! The balancer's settings: defaults that suit most services, every one settable per service.

use std::time::Duration;

use mesh_core::config::{Invalid, check_range, check_setting_duration, format_duration};
use serde::{Deserialize, Serialize};

/// How a service's requests are balanced.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BalancerConfig {
    /// The latency assumed for an endpoint before its first response.
    #[serde(with = "mesh_core::config::duration")]
    pub default_rtt: Duration,
    /// How fast a latency estimate forgets a peak (the EWMA's time constant).
    #[serde(with = "mesh_core::config::duration")]
    pub decay: Duration,
    /// Requests that may wait for an endpoint to become ready; more fail at once.
    pub queue_capacity: usize,
    /// When no endpoint becomes ready within this time, requests fail at once (503 /
    /// UNAVAILABLE) until one is ready again.
    #[serde(with = "mesh_core::config::duration")]
    pub failfast_timeout: Duration,
    /// Taking failing endpoints out of the choice.
    pub failure_accrual: FailureAccrualConfig,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            queue_capacity: 10_000,
            failfast_timeout: Duration::from_secs(3),
            failure_accrual: FailureAccrualConfig::default(),
        }
    }
}

/// Failure accrual: after `consecutive_failures` failures in a row an endpoint is ejected for a
/// backoff, then probed with one request; a success readmits it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct FailureAccrualConfig {
    /// Failures in a row that eject an endpoint; 0 turns accrual off.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one in a row doubles it.
    #[serde(with = "mesh_core::config::duration")]
    pub backoff_min: Duration,
    /// The longest ejection.
    #[serde(with = "mesh_core::config::duration")]
    pub backoff_max: Duration,
    /// At most this share of a service's endpoints (rounded down) is ejected at once: a
    /// client whose own requests make every endpoint fail cannot empty the service, and a
    /// service of one endpoint is never emptied.
    pub max_ejected_percent: u8,
}

impl Default for FailureAccrualConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 7,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_ejected_percent: 50,
        }
    }
}

impl BalancerConfig {
    /// Checks the values; the error names the field and what was expected.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_setting_duration("default_rtt", self.default_rtt)?;
        check_setting_duration("decay", self.decay)?;
        check_setting_duration("failfast_timeout", self.failfast_timeout)?;
        let accrual = &self.failure_accrual;
        check_setting_duration("failure_accrual.backoff_min", accrual.backoff_min)?;
        check_setting_duration("failure_accrual.backoff_max", accrual.backoff_max)?;
        check_range(
            "failure_accrual.max_ejected_percent",
            accrual.max_ejected_percent,
            0,
            100,
        )?;
        if accrual.backoff_min > accrual.backoff_max {
            return Err(Invalid::new(
                "failure_accrual.backoff_max",
                format_duration(accrual.backoff_max),
                "expected at least failure_accrual.backoff_min",
            ));
        }
        Ok(())
    }
}
