//! meshctl: the mesh's command line, and the library it is built on. It reads the proxies'
//! request metrics and answers two questions: how is each workload doing (`stat`), and who
//! talks to whom (`edges`).
//!
//! # The command
//!
//! ```text
//! meshctl stat  [--proxy ADDR]... [--prometheus URL] [--window SECS] [--direction outbound|inbound]
//! meshctl edges [--proxy ADDR]... [--prometheus URL] [--window SECS] [--direction outbound|inbound]
//! ```
//!
//! Exactly one source:
//!
//! - `--proxy ADDR` (repeatable): a proxy's admin server, `host:port` (port 4191 if left
//!   out). Each `/metrics` is read twice, `--window` seconds apart (default 2, fractions
//!   allowed); rates come from the counter deltas and latencies from the bucket deltas.
//! - `--prometheus URL`: a Prometheus server (`http://prometheus:9090`). meshctl runs instant
//!   queries such as `sum by (dst_namespace, dst_workload) (rate(request_total[60000ms]))`
//!   and `histogram_quantile(0.99, sum by (le, …) (rate(response_latency_seconds_bucket[…])))`.
//!   The window defaults to 60 s here: a rate needs two scrapes inside it. `--job REGEX` keeps
//!   only series of matching scrape jobs (`--job '.*mesh-proxy.*'`, as the dashboards do).
//!
//! `--direction` picks the side that recorded a call: `outbound` (default, by the caller's
//! proxy: what the client saw) or `inbound` (by the callee's proxy). Each call between meshed
//! pods is recorded on both sides, so one side is shown, never a sum of both.
//!
//! `stat` shows one row per destination workload (`dst_namespace`, `dst_workload`): success
//! rate (`response_total{classification="success"}` over all responses), requests per second
//! (`request_total`) and the p50, p95 and p99 of `response_latency_seconds`, interpolated
//! inside a bucket as Prometheus's `histogram_quantile` does:
//!
//! ```text
//! $ meshctl stat --proxy 127.0.0.1:4191
//! NAMESPACE  WORKLOAD  SUCCESS  RPS     P50     P95     P99
//! demo       api       90.00%   412.50  0.63ms  0.98ms  1.79ms
//! demo       db        100.00%  20.00   3.10ms  4.85ms  4.97ms
//! ```
//!
//! `edges` shows one row per source and destination workload, with the share of its requests
//! over mTLS (`yes`, `no`, or a percentage) and the peer identities seen:
//!
//! ```text
//! $ meshctl edges --proxy 127.0.0.1:4191 --window 0.5
//! SRC       DST       RPS     SUCCESS  TLS  IDENTITY
//! demo/web  demo/api  412.50  90.00%   no   -
//! ```
//!
//! Workloads and pairs without traffic in the window are left out; when nothing is left,
//! meshctl says "no traffic seen". Exit codes: 0 success, 1 error (a proxy or Prometheus
//! unreachable or answering an error, a bad URL, no traffic), 2 bad usage.
//!
//! # The library
//!
//! - [`query`]: the vocabulary. Metric and label names, the [`Query`](query::Query) values
//!   `stat` and `edges` ask and their PromQL, the answer type [`Vector`](query::Vector), and
//!   the [`Source`](query::Source) trait that both sources implement. It depends on no other
//!   module here.
//! - [`prom`]: Prometheus's HTTP API. [`PromClient`](prom::PromClient) runs any instant
//!   query; [`parse_response`](prom::parse_response) reads an answer with `serde_json` and
//!   names what is wrong with a bad one; [`PromSource`](prom::PromSource) is the `Source`.
//! - [`scrape`]: the proxies' `/metrics` read twice; [`Rates`](scrape::Rates) is the `Source`.
//! - [`report`]: the rows and tables of `stat` and `edges`, from any `Source`.
//!
//! `prom`, `scrape` and `report` depend on `query`, never on each other; the binary wires a
//! source to a report.
//!
//! ```no_run
//! use std::time::Duration;
//! use meshctl::prom::{PromClient, PromSource};
//! use meshctl::query::Direction;
//! use meshctl::report;
//!
//! # async fn f() -> anyhow::Result<()> {
//! let client = PromClient::new("http://prometheus:9090")?;
//! // Any PromQL:
//! for (labels, value) in client.query("sum by (direction) (request_total)").await? {
//!     println!("{labels:?} {value}");
//! }
//! // Or meshctl's own questions, over a minute:
//! let source = PromSource::new(client, Duration::from_secs(60), None);
//! let rows = report::stat(&source, Direction::Outbound).await?;
//! print!("{}", report::stat_table(&rows));
//! # Ok(())
//! # }
//! ```

pub mod check;
mod http;
pub mod inject;
pub mod install;
pub mod prom;
pub mod query;
pub mod report;
pub mod scrape;
mod table;
