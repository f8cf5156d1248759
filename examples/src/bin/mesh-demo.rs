//! The mesh demo: a gRPC service balanced per request by an in-process
//! `mesh-proxy`, with a live table of what each replica served, read from the
//! proxy's own metrics.
//!
//! One process runs everything on ephemeral ports of 127.0.0.1:
//!
//! - 3 `greeter` replicas: greeter-0; greeter-1, which fails 3% of calls with
//!   UNAVAILABLE and, every 10 s, has a 4 s outage (every call fails); greeter-2,
//!   25 ms slower than the others;
//! - 2 `names` replicas, which the greeters call through the mesh to pick a name;
//! - a `mesh-proxy`, the sidecar of workload `loadgen`, whose outbound listener
//!   routes `:authority` `greeter.demo.svc.cluster.local:50051` and
//!   `names.demo.svc.cluster.local:50051` to those replicas, each endpoint named by
//!   its pod ([`DEFAULT_CONFIG`]);
//! - a load generator: one gRPC client, one HTTP/2 connection to the proxy,
//!   200 requests/s with at most 8 in flight.
//!
//! Every second it scrapes the proxy's admin `/metrics` and prints, per greeter
//! replica (the `dst_pod` label of the `direction="outbound"` series of workload
//! `greeter`), from the counter deltas since the last scrape: requests/s
//! (`response_total`), share of requests, success rate (its
//! `classification="success"` share), p50 and p99 latency (the deltas of
//! `response_latency_seconds_bucket`, interpolated inside a bucket as Prometheus's
//! `histogram_quantile` does, so they are as fine as the buckets: 100 µs, 250 µs,
//! 500 µs, 1 ms...). Over one HTTP/2 connection, an L4 balancer would send everything
//! to one replica; the proxy balances each request across the three.
//!
//! # Run
//!
//! ```text
//! cargo run --release -p mesh-examples --bin mesh-demo
//! cargo run --release -p mesh-examples --bin mesh-demo -- --duration 8 --rps 500
//! ```
//!
//! It runs until Ctrl-C, or for `--duration SECS` (env `DEMO_DURATION`). `--rps`
//! (`DEMO_RPS`) and `--concurrency` (`DEMO_CONCURRENCY`) shape the load. The
//! proxy's configuration takes `MESH_*` environment overrides; its admin
//! port (printed at start) serves `/metrics` (what the table is made of), `/ready`,
//! `/live` and the effective `/config`.
//! Logs go to stderr (`RUST_LOG`, default `warn`).
//!
//! # Expected output
//!
//! ```text
//! t=5s
//! REPLICA               RPS   SHARE   SUCCESS       P50       P99
//! greeter-0           109.0   54.5%   100.00%     0.2ms     1.0ms
//! greeter-1            91.0   45.5%    97.80%     0.2ms     0.8ms
//! greeter-2             0.0    0.0%         -         -         -
//! TOTAL               200.0  100.0%    99.00%     0.2ms     0.8ms
//!
//! t=12s
//! REPLICA               RPS   SHARE   SUCCESS       P50       P99
//! greeter-0           198.0   99.0%   100.00%     0.2ms     0.5ms
//! greeter-1             1.0    0.5%     0.00%     0.1ms     0.1ms
//! greeter-2             1.0    0.5%   100.00%    35.0ms    49.7ms
//! TOTAL               200.0  100.0%    99.50%     0.2ms     0.5ms
//! ```
//!
//! The numbers vary with the machine. What to look for: the slow replica
//! (greeter-2) gets almost nothing once its first answers are measured (the
//! proxy balances each request by power of two choices over peak-EWMA latency);
//! during greeter-1's outage, after 7 failures in a row, the proxy ejects it and
//! only probes it now and then (one request after 1 s, 2 s, 4 s...), so the
//! success rate barely moves; a successful probe readmits it. A summary of the
//! whole run (the deltas from the first scrape to the last) follows at the end.
//! On a terminal each table replaces the previous one.

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use mesh_examples::demo::{
    self, GREETER_AUTHORITY, Greeter, GreeterConfig, NAMES_AUTHORITY, Names, Replica,
    ReplicaListener,
};
use mesh_examples::pb::HelloRequest;
use mesh_examples::pb::greeter_client::GreeterClient;
use mesh_examples::stats::{Scraper, Snapshot, Stats};
use mesh_proxy::{Config, Proxy};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tonic::transport::Channel;

/// The proxy's configuration: one sidecar (of the `loadgen` workload) whose outbound
/// listener knows the two services of the demo. The replicas listen on ephemeral ports,
/// so the `$..._ENDPOINTS` placeholders are replaced at start with their addresses, each
/// named by its pod (the `dst_pod` label of the metrics the table is made of).
const DEFAULT_CONFIG: &str = r#"
[workload]
name = "loadgen"
namespace = "demo"

[admin]
listen = "127.0.0.1:0"

[outbound]
listen = "127.0.0.1:0"

[[outbound.services]]
authority = "greeter.demo.svc.cluster.local:50051"
workload = "greeter"
namespace = "demo"
endpoints = [$GREETER_ENDPOINTS]

[[outbound.services]]
authority = "names.demo.svc.cluster.local:50051"
workload = "names"
namespace = "demo"
endpoints = [$NAMES_ENDPOINTS]
"#;

/// The greeter replicas: name, added delay, failure rate.
const GREETERS: &[(&str, Duration, f64)] = &[
    ("greeter-0", Duration::ZERO, 0.0),
    ("greeter-1", Duration::ZERO, 0.03),
    ("greeter-2", Duration::from_millis(25), 0.0),
];

/// greeter-1 also has outages: every 10 s it fails every call for 4 s.
const OUTAGE_REPLICA: &str = "greeter-1";
const OUTAGE_EVERY: Duration = Duration::from_secs(10);
const OUTAGE_LASTING: Duration = Duration::from_secs(4);

/// The names replicas.
const NAMES: &[&str] = &["names-0", "names-1"];

/// The workload and namespace of the greeter service, as the proxy's metrics label it.
const GREETER_WORKLOAD: &str = "greeter";
const NAMESPACE: &str = "demo";

/// The client's deadline for one call, so that a stuck call cannot stall the load.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the proxy's metrics are read and the table printed.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The mesh demo: replicas, an in-process mesh-proxy, and a load generator.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, env = "DEMO_DURATION", value_name = "SECS")]
    duration: Option<u64>,

    /// Requests per second.
    #[arg(long, env = "DEMO_RPS", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rps: u32,

    /// Most requests in flight at once.
    #[arg(long, env = "DEMO_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    // Bind every replica first: the proxy needs their addresses, and the greeters
    // need the proxy's address to call the names service through it.
    let mut greeter_listeners = Vec::new();
    for _ in GREETERS {
        greeter_listeners.push(ReplicaListener::bind().await?);
    }
    let mut names = Vec::new();
    for name in NAMES {
        names.push(Replica::spawn_names(Names::new(*name)).await?);
    }
    let greeter_pods: Vec<(&str, SocketAddr)> = GREETERS
        .iter()
        .zip(&greeter_listeners)
        .map(|((name, ..), listener)| (*name, listener.addr()))
        .collect();
    let names_pods: Vec<(&str, SocketAddr)> = names
        .iter()
        .map(|replica| (replica.name(), replica.addr()))
        .collect();

    let config = Config::from_toml_str(&render_config(&greeter_pods, &names_pods))
        .context("invalid proxy configuration")?;
    let proxy = Proxy::bind(config)
        .await
        .context("cannot start the proxy")?;
    let outbound = proxy.outbound_addr();
    let admin = proxy.admin_addr();
    let (stop_proxy, proxy_stopped) = oneshot::channel::<()>();
    let proxy = tokio::spawn(proxy.run(async {
        let _ = proxy_stopped.await;
    }));

    let mut greeters = Vec::new();
    for (listener, (name, delay, failure_rate)) in greeter_listeners.into_iter().zip(GREETERS) {
        let mut config = GreeterConfig::new(*name)
            .with_delay(*delay)
            .with_failure_rate(*failure_rate);
        if *name == OUTAGE_REPLICA {
            config = config.with_outages(OUTAGE_EVERY, OUTAGE_LASTING);
        }
        let names = demo::names_client(demo::mesh_channel(outbound, NAMES_AUTHORITY)?);
        greeters.push(listener.serve_greeter(Greeter::with_names(config, names)));
    }

    println!("mesh-demo: proxy outbound {outbound}, admin {admin}");
    print_replicas(&greeters);
    print_replicas(&names);
    println!(
        "  {} requests/s, at most {} in flight, to {GREETER_AUTHORITY}",
        args.rps, args.concurrency
    );

    let client = demo::greeter_client(demo::mesh_channel(outbound, GREETER_AUTHORITY)?);
    let stop = stop_signal(args.duration.map(Duration::from_secs));
    let scraper = Scraper::new(admin, GREETER_WORKLOAD, NAMESPACE)?;
    let (stop_report, report_stopped) = oneshot::channel::<()>();
    let reporter = tokio::spawn(report(
        scraper,
        greeters.iter().map(|g| g.name().to_owned()).collect(),
        report_stopped,
    ));
    generate_load(client, &args, stop).await;
    let _ = stop_report.send(());
    let reported = reporter.await.context("the report task panicked")?;

    // Stop the proxy first, so that the replicas have no client left.
    let _ = stop_proxy.send(());
    let proxied = proxy.await.context("the proxy task panicked")?;
    let mut stopped = Ok(());
    for replica in greeters.into_iter().chain(names) {
        stopped = stopped.and(replica.shutdown().await);
    }
    proxied.context("the proxy failed")?;
    reported.context("cannot read the proxy's metrics")?;
    stopped
}

/// [`DEFAULT_CONFIG`] with the replicas' pod names and addresses.
fn render_config(greeters: &[(&str, SocketAddr)], names: &[(&str, SocketAddr)]) -> String {
    let list = |pods: &[(&str, SocketAddr)]| {
        pods.iter()
            .map(|(pod, addr)| format!("{{ addr = \"{addr}\", pod = \"{pod}\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    DEFAULT_CONFIG
        .replace("$GREETER_ENDPOINTS", &list(greeters))
        .replace("$NAMES_ENDPOINTS", &list(names))
}

fn print_replicas(replicas: &[Replica]) {
    let line: Vec<String> = replicas
        .iter()
        .map(|replica| format!("{} {}", replica.name(), replica.addr()))
        .collect();
    println!("  {}", line.join("   "));
}

/// Resolves after `duration`, or on Ctrl-C.
async fn stop_signal(duration: Option<Duration>) {
    let elapsed = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = elapsed => {}
        interrupted = tokio::signal::ctrl_c() => {
            if let Err(error) = interrupted {
                tracing::warn!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Sends `SayHello` calls at `args.rps` with at most `args.concurrency` in flight
/// until `stop`, then waits for the calls in flight.
async fn generate_load(
    client: GreeterClient<Channel>,
    args: &Args,
    stop: impl Future<Output = ()>,
) {
    let in_flight = Arc::new(Semaphore::new(args.concurrency as usize));
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / args.rps);
    // Late ticks fire at once to keep the average rate; the permits bound the burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    tokio::pin!(stop);
    loop {
        let permit = tokio::select! {
            () = &mut stop => break,
            _ = ticks.tick() => tokio::select! {
                () = &mut stop => break,
                permit = in_flight.clone().acquire_owned() => permit,
            },
        };
        let Ok(permit) = permit else { break };
        let mut client = client.clone();
        tokio::spawn(async move {
            // An empty name: each greeting also calls the names service through the mesh.
            // The outcome is the proxy's to count: the table comes from its metrics.
            let mut request = tonic::Request::new(HelloRequest::default());
            request.set_timeout(CALL_TIMEOUT);
            let _ = client.say_hello(request).await;
            drop(permit);
        });
    }
    // Every call in flight holds a permit: wait for them all.
    let _ = in_flight.acquire_many(args.concurrency).await;
}

/// Every second until `stop`, scrapes the proxy's metrics and prints the table of
/// the last second; then a summary of the whole run. Fails only if the proxy cannot be
/// scraped at start or at the end; a failed scrape in between is skipped.
async fn report(
    scraper: Scraper,
    replicas: Vec<String>,
    mut stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    let replicas = || replicas.iter().map(String::as_str);
    let first = scraper.scrape().await?;
    let started = Instant::now();
    let mut previous: Snapshot = first.clone();
    let mut ticks = tokio::time::interval_at(started + REPORT_EVERY, REPORT_EVERY);
    let redraw = std::io::stdout().is_terminal();
    let mut printed_lines = 0;
    loop {
        let now = tokio::select! {
            _ = &mut stop => break,
            now = ticks.tick() => now,
        };
        let snapshot = match scraper.scrape().await {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot read the proxy's metrics"
                );
                continue;
            }
        };
        let window = Stats::between(&previous, &snapshot, replicas());
        previous = snapshot;
        let table = format!("\nt={}s\n{}", (now - started).as_secs(), window.table());
        let mut stdout = std::io::stdout().lock();
        if redraw && printed_lines > 0 {
            // Move up over the previous table and clear to the end of the screen.
            let _ = write!(stdout, "\x1b[{printed_lines}A\r\x1b[J");
        }
        let _ = write!(stdout, "{table}");
        let _ = stdout.flush();
        printed_lines = table.lines().count();
    }
    let total = Stats::between(&first, &scraper.scrape().await?, replicas());
    println!(
        "\nwhole run: {} requests in {:.1}s\n{}",
        total.requests(),
        total.elapsed().as_secs_f64(),
        total.table()
    );
    Ok(())
}
