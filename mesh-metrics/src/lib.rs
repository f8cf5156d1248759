//! Metrics for the mesh, exported for the Prometheus that users already run.
//!
//! - [`http`]: a tower layer per endpoint counting requests, responses (HTTP status, gRPC
//!   status from headers or trailers, success or failure by mesh-core's one classifier) and
//!   response latency, labelled with who talks to whom (direction, authority, source and
//!   destination workload and namespace, TLS, peer identity). Label sets are fixed per
//!   endpoint, so an unknown `Host` never becomes a series.
//! - [`tcp`]: per listener, connections opened and open, closes by error kind, bytes.
//! - [`process`]: CPU seconds, resident memory, open file descriptors, start time.
//! - [`retry`]: requests through retry policies, retries, budget refusals (read at scrape
//!   time from the counters of mesh-core's retry layers). The balancer's own metrics live in
//!   mesh-balance (feature `metrics`), which registers them into the same plain registry.
//! - [`Metrics`]: the registry they live in, and its exposition in the format the scraper asks
//!   for ([`Metrics::encode`]: OpenMetrics text when the `Accept` header names it, Prometheus
//!   text 0.0.4 otherwise).
//! - [`exposition`]: the other side, for those who read the metrics (meshctl, the demo):
//!   Prometheus text parsed into samples, and quantiles from histogram buckets.
//!
//! Metric names and what each label means: `deploy/README.md`.
//!
//! # Composing
//!
//! ```
//! use mesh_metrics::{Format, Metrics};
//! use prometheus_client::metrics::counter::Counter;
//!
//! let mut metrics = Metrics::new();
//! let requests = Counter::<u64>::default();
//! metrics.registry_mut().register("demo_requests", "Requests seen", requests.clone());
//! requests.inc();
//! let text = metrics.encode(Format::Prometheus).unwrap_or_default();
//! assert!(text.contains("demo_requests_total 1"));
//! ```

pub mod exposition;
pub mod http;
pub mod process;
pub mod retry;
pub mod tcp;

use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;

/// The exposition formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
    /// Prometheus text 0.0.4, which every scraper reads.
    Prometheus,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics only when named.
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of an exposition in this format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The registry of one proxy's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry holding the process metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        Self { registry }
    }

    /// Where metrics are registered.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The exposition of every metric.
    pub fn encode(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(match format {
            Format::OpenMetrics => text,
            Format::Prometheus => to_prometheus_text(&text),
        })
    }
}

/// OpenMetrics text to Prometheus text 0.0.4: the same samples, without the lines and suffixes
/// the older format does not know (`# EOF`, `# UNIT`, `_created` samples; counter families
/// are named with their `_total` suffix, as Prometheus expects in its own format).
fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut counters: Vec<String> = Vec::new();
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind {
                "counter" => {
                    counters.push(name.to_owned());
                    "counter"
                }
                "gauge" | "histogram" | "summary" => kind,
                _ => "untyped",
            };
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let name = if counters.iter().any(|c| c == name) || is_counter_ahead(openmetrics, name)
            {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            out.push_str(&format!("# HELP {name} {help}\n"));
            continue;
        }
        let sample_name = line.split(['{', ' ']).next().unwrap_or("");
        if sample_name.ends_with("_created") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// HELP comes before TYPE in OpenMetrics: is `name` declared a counter further on?
fn is_counter_ahead(openmetrics: &str, name: &str) -> bool {
    openmetrics.contains(&format!("# TYPE {name} counter\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn both_formats_carry_the_samples() {
        let mut metrics = Metrics::new();
        let c = Counter::<u64>::default();
        let g = Gauge::<i64>::default();
        metrics
            .registry_mut()
            .register("things", "Things seen", c.clone());
        metrics
            .registry_mut()
            .register("open", "Open now", g.clone());
        c.inc_by(3);
        g.set(2);
        let om = metrics.encode(Format::OpenMetrics).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(
            om.contains("# TYPE things counter") && om.contains("things_total 3"),
            "{om}"
        );
        let prom = metrics.encode(Format::Prometheus).unwrap();
        assert!(!prom.contains("# EOF"), "{prom}");
        assert!(prom.contains("# HELP things_total Things seen"), "{prom}");
        assert!(
            prom.contains("# TYPE things_total counter") && prom.contains("things_total 3"),
            "{prom}"
        );
        assert!(
            prom.contains("# TYPE open gauge") && prom.contains("open 2"),
            "{prom}"
        );
        assert!(prom.contains("process_resident_memory_bytes"), "{prom}");
    }

    #[test]
    fn the_accept_header_decides() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Prometheus);
        let prometheus_default = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(
            Format::from_accept(Some(prometheus_default)),
            Format::OpenMetrics
        );
    }
}
