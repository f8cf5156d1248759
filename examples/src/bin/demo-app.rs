//! `demo-app`: the demo's parts, one per process, as they run in pods on Kubernetes
//! ([deploy/demo/demo.yaml](../../../deploy/demo/demo.yaml)), where the mesh is the injected
//! sidecars and nothing in the app knows of it:
//!
//! - `demo-app greeter`: the Greeter gRPC service; a `SayHello` with no name asks the `names`
//!   service (a plain gRPC call to its Service's name: capture meshes it);
//! - `demo-app names`: the Names service;
//! - `demo-app loadgen`: one gRPC channel (one HTTP/2 connection) to the greeter's Service,
//!   a steady rate of calls, and once every few seconds a line of which replica answered how
//!   many: balanced per request by the mesh, where a Kubernetes Service alone would pin the
//!   connection to one pod.
//!
//! ```text
//! demo-app names --listen 127.0.0.1:50052 --replica names-0 &
//! demo-app greeter --listen 127.0.0.1:50051 --replica greeter-0 --names http://127.0.0.1:50052 &
//! demo-app loadgen --target http://127.0.0.1:50051 --rps 20 --duration 3
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_examples::demo::{Greeter, GreeterConfig, Names, greeter_client, names_client};
use mesh_examples::pb::HelloRequest;
use tonic::transport::{Endpoint, Server};

#[derive(Debug, Parser)]
#[command(version, about = "The demo's parts, one per process (one per pod)")]
struct Args {
    #[command(subcommand)]
    part: Part,
}

#[derive(Debug, Subcommand)]
enum Part {
    /// Serve the Greeter service.
    Greeter {
        /// Where to listen.
        #[arg(long, default_value = "0.0.0.0:50051")]
        listen: SocketAddr,
        /// This replica's name, in every reply (the pod's name on Kubernetes).
        #[arg(long, env = "POD_NAME", default_value = "greeter")]
        replica: String,
        /// The Names service, asked for a name when a request has none.
        #[arg(long, default_value = "http://names:50052")]
        names: String,
        /// Fail this share of calls with UNAVAILABLE (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        failure_rate: f64,
        /// Answer this much later, in milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Serve the Names service.
    Names {
        /// Where to listen.
        #[arg(long, default_value = "0.0.0.0:50052")]
        listen: SocketAddr,
        /// This replica's name.
        #[arg(long, env = "POD_NAME", default_value = "names")]
        replica: String,
    },
    /// Call the greeter at a steady rate over one connection; report who answered.
    Loadgen {
        /// The greeter.
        #[arg(long, default_value = "http://greeter:50051")]
        target: String,
        /// Calls per second.
        #[arg(long, default_value_t = 50)]
        rps: u32,
        /// Most calls in flight.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Stop after this many seconds (default: run until stopped).
        #[arg(long)]
        duration: Option<u64>,
        /// Seconds between reports.
        #[arg(long, default_value_t = 5)]
        report_every: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Args::parse().part {
        Part::Greeter {
            listen,
            replica,
            names,
            failure_rate,
            delay_ms,
        } => {
            let names = Endpoint::from_shared(names)?.connect_lazy();
            let config = GreeterConfig::new(replica)
                .with_failure_rate(failure_rate.clamp(0.0, 1.0))
                .with_delay(Duration::from_millis(delay_ms));
            let greeter = Greeter::with_names(config, names_client(names));
            tracing::info!(%listen, replica = greeter.name(), "greeter serving");
            Server::builder()
                .add_service(greeter.into_service())
                .serve_with_shutdown(listen, stopped())
                .await?;
        }
        Part::Names { listen, replica } => {
            tracing::info!(%listen, %replica, "names serving");
            Server::builder()
                .add_service(Names::new(replica).into_service())
                .serve_with_shutdown(listen, stopped())
                .await?;
        }
        Part::Loadgen {
            target,
            rps,
            concurrency,
            duration,
            report_every,
        } => loadgen(&target, rps, concurrency, duration, report_every).await?,
    }
    Ok(())
}

/// SIGTERM (the kubelet) or Ctrl-C.
async fn stopped() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Calls `SayHello` `rps` times a second on one channel; prints, every `report_every`
/// seconds, how many calls each replica answered and how many failed.
async fn loadgen(
    target: &str,
    rps: u32,
    concurrency: usize,
    duration: Option<u64>,
    report_every: u64,
) -> anyhow::Result<()> {
    let client = greeter_client(Endpoint::from_shared(target.to_owned())?.connect_lazy());
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let tally = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    let mut report = tokio::time::interval(Duration::from_secs(report_every.max(1)));
    report.tick().await;
    let deadline = duration.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut total = 0u64;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    *lock(&tally).entry("(dropped: too many in flight)".to_owned()).or_default() += 1;
                    continue;
                };
                let (mut client, tally) = (client.clone(), tally.clone());
                total += 1;
                tokio::spawn(async move {
                    let mut request = tonic::Request::new(HelloRequest { name: String::new(), ..Default::default() });
                    request.set_timeout(Duration::from_secs(2));
                    let who = match client.say_hello(request).await {
                        Ok(reply) => reply.into_inner().replica,
                        Err(status) => format!("(failed: {:?})", status.code()),
                    };
                    *lock(&tally).entry(who).or_default() += 1;
                    drop(slot);
                });
            }
            _ = report.tick() => print_report(&tally),
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
    }
    // The calls still in flight finish (each within its 2 s deadline).
    let _ = slots
        .acquire_many(u32::try_from(concurrency.max(1)).unwrap_or(1))
        .await;
    print_report(&tally);
    println!("{total} calls");
    Ok(())
}

fn print_report(tally: &std::sync::Mutex<BTreeMap<String, u64>>) {
    let counts = std::mem::take(&mut *lock(tally));
    let sum: u64 = counts.values().sum();
    let line: Vec<String> = counts
        .iter()
        .map(|(who, n)| format!("{who} {n} ({:.0}%)", 100.0 * *n as f64 / sum.max(1) as f64))
        .collect();
    println!("answered by: {}", line.join(", "));
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
