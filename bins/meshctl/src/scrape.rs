//! The proxies as the source: each proxy's admin `/metrics` read twice, a window apart, and
//! per-second rates from the counter and bucket deltas.
//!
//! A series missing from the first scrape counts from zero: the proxy creates a response
//! series on the first response with that status, so its whole value was counted inside the
//! window. A counter that went down was reset (a restarted proxy) and counts from zero too.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use mesh_metrics::exposition::{self, Sample, histogram_quantile};

use crate::query::{
    DIRECTION, Direction, LATENCY_BUCKET, LE, Labels, Query, REQUESTS, RESPONSES, Source, Vector,
};

/// The Prometheus text format, which the proxy serves unless asked for OpenMetrics.
const ACCEPT: &str = "text/plain;version=0.0.4;q=1,*/*;q=0.1";

/// Only these series are kept.
const WANTED: [&str; 3] = [REQUESTS, RESPONSES, LATENCY_BUCKET];

/// The per-second rates of the request series of all the proxies, over the window: a
/// [`Source`] that answers queries as Prometheus would over the same rates.
#[derive(Debug, Default)]
pub struct Rates {
    samples: Vec<Sample>,
}

/// `host:port` of a proxy's admin server from what the user typed: an `http://` prefix and a
/// `/metrics` suffix are dropped, and a missing port is the default admin port, 4191.
pub fn admin_authority(addr: &str) -> anyhow::Result<String> {
    if addr.starts_with("https://") {
        bail!("proxy {addr}: the admin server speaks plain HTTP; give host:port");
    }
    let bare = addr.strip_prefix("http://").unwrap_or(addr);
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    let bare = bare.strip_suffix("/metrics").unwrap_or(bare);
    if bare.is_empty() || bare.contains('/') {
        bail!("proxy {addr:?}: expected host:port of its admin server, such as 127.0.0.1:4191");
    }
    let has_port = match bare.rsplit_once(':') {
        Some((host, port)) => {
            !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    Ok(if has_port {
        bare.to_owned()
    } else {
        format!("{bare}:4191")
    })
}

/// Scrapes every proxy twice, `window` apart, all at once; an error names the proxy.
pub async fn scrape_rates(proxies: &[String], window: Duration) -> anyhow::Result<Rates> {
    let mut tasks = Vec::with_capacity(proxies.len());
    for addr in proxies {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            proxy_rates(&addr, window)
                .await
                .with_context(|| format!("proxy {addr}"))
        }));
    }
    let mut rates = Rates::default();
    for task in tasks {
        let samples = task.await.context("scrape task")??;
        rates.samples.extend(samples);
    }
    Ok(rates)
}

async fn scrape(authority: &str) -> anyhow::Result<(Vec<Sample>, tokio::time::Instant)> {
    let fetched = crate::http::get(authority, "/metrics", ACCEPT)
        .await
        .with_context(|| format!("cannot scrape http://{authority}/metrics"))?;
    if !fetched.status.is_success() {
        bail!("http://{authority}/metrics answered {}", fetched.status);
    }
    let text = String::from_utf8_lossy(&fetched.body);
    let samples = exposition::parse(&text)
        .into_iter()
        .filter(|s| WANTED.contains(&s.name.as_str()))
        .collect();
    Ok((samples, fetched.sent_at.into()))
}

async fn proxy_rates(addr: &str, window: Duration) -> anyhow::Result<Vec<Sample>> {
    let authority = admin_authority(addr)?;
    let (before, t0) = scrape(&authority).await?;
    tokio::time::sleep_until(t0 + window).await;
    let (after, t1) = scrape(&authority).await?;
    let elapsed = t1.duration_since(t0).as_secs_f64();
    Ok(rates(&before, &after, elapsed))
}

/// Per-second rates of `after - before` over `elapsed` seconds.
pub fn rates(before: &[Sample], after: &[Sample], elapsed: f64) -> Vec<Sample> {
    let previous: BTreeMap<(&str, &Labels), f64> = before
        .iter()
        .map(|s| ((s.name.as_str(), &s.labels), s.value))
        .collect();
    after
        .iter()
        .map(|s| {
            let delta = match previous.get(&(s.name.as_str(), &s.labels)) {
                Some(&old) if s.value >= old => s.value - old,
                _ => s.value,
            };
            Sample {
                name: s.name.clone(),
                labels: s.labels.clone(),
                value: if elapsed > 0.0 { delta / elapsed } else { 0.0 },
            }
        })
        .collect()
}

fn group(labels: &Labels, by: &[&str]) -> Labels {
    by.iter()
        .map(|name| {
            (
                (*name).to_owned(),
                labels.get(*name).cloned().unwrap_or_default(),
            )
        })
        .collect()
}

impl Rates {
    /// Rates computed elsewhere (by [`rates`], say).
    pub fn new(samples: Vec<Sample>) -> Self {
        Self { samples }
    }

    /// The per-second rates.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Answers `query` as Prometheus would over the same rates.
    pub fn answer(&self, query: Query, direction: Direction) -> Vector {
        let of = |metric: &'static str| {
            self.samples.iter().filter(move |s| {
                s.name == metric
                    && s.labels.get(DIRECTION).map(String::as_str) == Some(direction.as_str())
            })
        };
        match query {
            Query::Sum { metric, by } => {
                let mut sums: BTreeMap<Labels, f64> = BTreeMap::new();
                for s in of(metric) {
                    *sums.entry(group(&s.labels, by)).or_default() += s.value;
                }
                sums.into_iter().collect()
            }
            Query::Quantile { q, by } => {
                let mut histograms: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
                for s in of(LATENCY_BUCKET) {
                    let Some(le) = s.labels.get(LE).and_then(|le| exposition::parse_value(le))
                    else {
                        continue;
                    };
                    histograms
                        .entry(group(&s.labels, by))
                        .or_default()
                        .push((le, s.value));
                }
                histograms
                    .into_iter()
                    .map(|(labels, buckets)| (labels, histogram_quantile(q, &buckets)))
                    .collect()
            }
        }
    }
}

impl Source for Rates {
    async fn eval(&self, query: Query, direction: Direction) -> anyhow::Result<Vector> {
        Ok(self.answer(query, direction))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails loudly")]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Sample> {
        exposition::parse(text)
    }

    #[test]
    fn addresses() {
        assert_eq!(admin_authority("127.0.0.1:4191").unwrap(), "127.0.0.1:4191");
        assert_eq!(admin_authority("localhost").unwrap(), "localhost:4191");
        assert_eq!(
            admin_authority("http://pod:9999/metrics").unwrap(),
            "pod:9999"
        );
        assert_eq!(admin_authority("[::1]").unwrap(), "[::1]:4191");
        assert_eq!(admin_authority("[::1]:1").unwrap(), "[::1]:1");
        assert!(admin_authority("https://x:1").is_err());
        assert!(admin_authority("x:1/other").is_err());
    }

    #[test]
    fn rates_from_deltas_new_series_and_resets() {
        let before = parse("a{x=\"1\"} 10\nb 100\n");
        let after = parse("a{x=\"1\"} 30\nb 4\nc 6\n");
        let r = rates(&before, &after, 2.0);
        let values: Vec<(&str, f64)> = r.iter().map(|s| (s.name.as_str(), s.value)).collect();
        assert_eq!(values, [("a", 10.0), ("b", 2.0), ("c", 3.0)]);
    }

    #[test]
    fn sums_and_quantiles_by_labels() {
        let d = "direction=\"outbound\",dst_namespace=\"demo\"";
        let before = parse(&format!(
            "request_total{{{d},dst_workload=\"api\",authority=\"a:80\"}} 0\n\
             request_total{{{d},dst_workload=\"api\",authority=\"b:80\"}} 0\n\
             request_total{{direction=\"inbound\",dst_workload=\"web\"}} 0\n\
             response_latency_seconds_bucket{{{d},dst_workload=\"api\",le=\"0.1\"}} 0\n\
             response_latency_seconds_bucket{{{d},dst_workload=\"api\",le=\"0.2\"}} 0\n\
             response_latency_seconds_bucket{{{d},dst_workload=\"api\",le=\"+Inf\"}} 0\n"
        ));
        let after = parse(&format!(
            "request_total{{{d},dst_workload=\"api\",authority=\"a:80\"}} 6\n\
             request_total{{{d},dst_workload=\"api\",authority=\"b:80\"}} 4\n\
             request_total{{direction=\"inbound\",dst_workload=\"web\"}} 50\n\
             response_latency_seconds_bucket{{{d},dst_workload=\"api\",le=\"0.1\"}} 5\n\
             response_latency_seconds_bucket{{{d},dst_workload=\"api\",le=\"0.2\"}} 10\n\
             response_latency_seconds_bucket{{{d},dst_workload=\"api\",le=\"+Inf\"}} 10\n"
        ));
        let rates = Rates {
            samples: rates(&before, &after, 1.0),
        };
        let by: &'static [&'static str] = &["dst_namespace", "dst_workload"];
        let sum = rates.answer(
            Query::Sum {
                metric: "request_total",
                by,
            },
            Direction::Outbound,
        );
        assert_eq!(sum.len(), 1);
        assert_eq!(sum[0].0["dst_workload"], "api");
        assert_eq!(sum[0].1, 10.0);
        let p = rates.answer(Query::Quantile { q: 0.75, by }, Direction::Outbound);
        assert_eq!(p.len(), 1);
        assert!((p[0].1 - 0.15).abs() < 1e-9);
        let inbound = rates.answer(
            Query::Sum {
                metric: "request_total",
                by,
            },
            Direction::Inbound,
        );
        assert_eq!(inbound[0].1, 50.0);
        assert_eq!(inbound[0].0["dst_namespace"], "");
    }
}
