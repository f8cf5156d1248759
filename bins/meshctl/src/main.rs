//! meshctl: the mesh's command line. It reads the proxies' request metrics and answers two
//! questions: how is each workload doing (`stat`), and who talks to whom (`edges`).
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

mod http;
mod prom;
mod report;
mod scrape;
mod table;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

use report::{Direction, Source};

/// The default window with `--proxy`, in seconds.
const PROXY_WINDOW: f64 = 2.0;
/// The default window with `--prometheus`, in seconds: room for a few scrapes.
const PROMETHEUS_WINDOW: f64 = 60.0;

#[derive(Debug, Parser)]
#[command(name = "meshctl", version, about = "The mesh's command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Success rate, requests per second and latency per destination workload.
    Stat(Common),
    /// Who talks to whom: RPS, success rate and mTLS per source and destination workload.
    Edges(Common),
}

#[derive(Debug, Args)]
struct Common {
    #[command(flatten)]
    source: SourceArgs,
    /// The window for rates, in seconds (fractions allowed) [default: 2 with --proxy, 60 with
    /// --prometheus]
    #[arg(long, value_name = "SECS", value_parser = parse_window, allow_negative_numbers = true)]
    window: Option<f64>,
    /// Which proxy's record of a call to use: the caller's or the callee's.
    #[arg(long, value_enum, default_value_t = Direction::Outbound)]
    direction: Direction,
    /// With --prometheus: only series whose `job` matches this regex.
    #[arg(long, value_name = "REGEX", conflicts_with = "proxy")]
    job: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct SourceArgs {
    /// A proxy's admin address, host:port (repeatable).
    #[arg(long = "proxy", value_name = "ADDR")]
    proxy: Vec<String>,
    /// A Prometheus server, http://host:port.
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
}

fn parse_window(s: &str) -> Result<f64, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        return Err(format!(
            "{s}: expected more than 0 and at most 3600 seconds"
        ));
    }
    Ok(secs)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("meshctl: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes());
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meshctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    let (is_stat, args) = match cli.command {
        Command::Stat(args) => (true, args),
        Command::Edges(args) => (false, args),
    };
    let (source, window, place) = match args.source.prometheus {
        Some(url) => {
            let window = args.window.unwrap_or(PROMETHEUS_WINDOW);
            let prom = prom::Prometheus::new(&url, Duration::from_secs_f64(window), args.job)?;
            (
                Source::Prometheus(prom),
                window,
                format!("in Prometheus at {url}"),
            )
        }
        None => {
            let window = args.window.unwrap_or(PROXY_WINDOW);
            let rates =
                scrape::scrape_rates(&args.source.proxy, Duration::from_secs_f64(window)).await?;
            let place = format!("at proxy {}", args.source.proxy.join(", "));
            (Source::Scraped(rates), window, place)
        }
    };
    let (table, empty) = if is_stat {
        let rows = report::stat(&source, args.direction).await?;
        (report::stat_table(&rows), rows.is_empty())
    } else {
        let rows = report::edges(&source, args.direction).await?;
        (report::edges_table(&rows), rows.is_empty())
    };
    if empty {
        bail!(
            "no traffic seen: no {} requests in the last {window}s {place}",
            args.direction.as_str()
        );
    }
    Ok(table)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails loudly")]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    #[test]
    fn usage() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("meshctl").chain(args.iter().copied()))
        };
        let cli = parse(&[
            "stat", "--proxy", "a:1", "--proxy", "b:2", "--window", "0.5",
        ])
        .unwrap();
        let Command::Stat(args) = cli.command else {
            panic!("not stat")
        };
        assert_eq!(args.source.proxy, ["a:1", "b:2"]);
        assert_eq!(args.window, Some(0.5));
        assert_eq!(args.direction, Direction::Outbound);
        let cli = parse(&[
            "edges",
            "--prometheus",
            "http://p:9090",
            "--direction",
            "inbound",
            "--job",
            "x",
        ])
        .unwrap();
        let Command::Edges(args) = cli.command else {
            panic!("not edges")
        };
        assert_eq!(args.direction, Direction::Inbound);
        assert_eq!(args.job.as_deref(), Some("x"));

        assert_eq!(
            parse(&["stat"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["stat", "--proxy", "a:1", "--prometheus", "http://p"])
                .unwrap_err()
                .kind(),
            ErrorKind::ArgumentConflict
        );
        for window in ["0", "-1", "nan", "inf", "x"] {
            assert_eq!(
                parse(&["stat", "--proxy", "a:1", "--window", window])
                    .unwrap_err()
                    .kind(),
                ErrorKind::ValueValidation,
                "{window}"
            );
        }
        assert!(parse(&["stat", "--proxy", "a:1", "--job", "x"]).is_err());
        assert!(parse(&["stat", "--proxy", "a:1", "--direction", "sideways"]).is_err());
    }
}
