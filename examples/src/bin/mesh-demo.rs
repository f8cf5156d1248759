//! The mesh demo: a gRPC service balanced per request by `mesh-proxy` sidecars,
//! every hop over mutual TLS, with a live table of what each replica served, read
//! from the proxy's own metrics.
//!
//! One process runs everything on ephemeral ports of 127.0.0.1, as a small cluster
//! would, each "pod" an app with its sidecar:
//!
//! - a fresh trust anchor and issuer in a temporary directory, and a
//!   `mesh-controller` whose identity service issues every sidecar its certificate
//!   (a key made in memory, a CSR, a token proving its service account);
//! - 3 `greeter` pods: greeter-0; greeter-1, which fails 3% of calls with
//!   UNAVAILABLE and, every 10 s, has a 4 s outage (every call fails); greeter-2,
//!   25 ms slower than the others. Each sidecar admits only the `loadgen`
//!   identity, and routes the greeter's calls to `names` over mTLS;
//! - 2 `names` pods, which the greeters call through the mesh to pick a name;
//!   their sidecars admit only the `greeter` identity;
//! - a `greeter-canary` pod, a service of its own;
//! - the `loadgen` pod: a load generator (one gRPC client, one HTTP/2 connection to
//!   its sidecar, 200 requests/s with at most 8 in flight) whose sidecar balances
//!   each request over the greeter pods, each endpoint named by its pod and by the
//!   identity it must prove ([`SIDECAR_CONFIG`]). A route ([`CANARY_ROUTE`]) sends 10%
//!   of the calls to the canary and retries failed calls within a budget; the table's
//!   last line counts the retries.
//!
//! Every second it scrapes the proxy's admin `/metrics` and prints, per greeter
//! replica (the `dst_pod` label of the `direction="outbound"` series of workload
//! `greeter`), from the counter deltas since the last scrape: requests/s
//! (`response_total`), share of requests, success rate (its
//! `classification="success"` share), p50 and p99 latency (the deltas of
//! `response_latency_seconds_bucket`, interpolated inside a bucket as Prometheus's
//! `histogram_quantile` does, so they are as fine as the buckets: 100 µs, 250 µs,
//! 500 µs, 1 ms...), the share sent over mutual TLS and the identity the replica
//! proved. Over one HTTP/2 connection, an L4 balancer would send everything to one
//! replica; the proxy balances each request across the three.
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
//! proxy's configuration takes `MESH__*` environment overrides; its admin
//! port (printed at start) serves `/metrics` (what the table is made of), `/ready`,
//! `/live` and the effective `/config`.
//! Logs go to stderr (`RUST_LOG`, default `warn`).
//!
//! # Expected output
//!
//! ```text
//! t=5s
//! REPLICA               RPS   SHARE   SUCCESS       P50       P99    MTLS  IDENTITY
//! greeter-0            98.0   49.0%   100.00%     0.6ms     1.8ms    100%  spiffe://cluster.local/ns/demo/sa/greeter
//! greeter-1            82.0   41.0%    97.60%     0.6ms     1.6ms    100%  spiffe://cluster.local/ns/demo/sa/greeter
//! greeter-2             0.0    0.0%         -         -         -       -  -
//! greeter-canary       20.0   10.0%   100.00%     0.6ms     1.5ms    100%  spiffe://cluster.local/ns/demo/sa/greeter
//! TOTAL               200.0  100.0%    99.00%     0.6ms     1.8ms    100%  -
//! RETRIES               2.0/s of 200.0 requests/s through the retry policy
//!
//! t=12s
//! REPLICA               RPS   SHARE   SUCCESS       P50       P99    MTLS  IDENTITY
//! greeter-0           178.0   89.0%   100.00%     0.6ms     1.2ms    100%  spiffe://cluster.local/ns/demo/sa/greeter
//! greeter-1             1.0    0.5%     0.00%     0.4ms     0.4ms    100%  spiffe://cluster.local/ns/demo/sa/greeter
//! greeter-2             1.0    0.5%   100.00%    35.0ms    49.7ms    100%  spiffe://cluster.local/ns/demo/sa/greeter
//! greeter-canary       20.0   10.0%   100.00%     0.6ms     1.3ms    100%  spiffe://cluster.local/ns/demo/sa/greeter
//! TOTAL               200.0  100.0%    99.50%     0.6ms     1.2ms    100%  -
//! RETRIES               1.0/s of 200.0 requests/s through the retry policy
//! ```
//!
//! The numbers vary with the machine. What to look for: every call travels over
//! mutual TLS (MTLS 100%), each replica proving the greeter identity; the canary takes
//! about 10% of the calls; a call that fails on greeter-1 is retried (RETRIES), so the
//! client sees fewer failures than the replica's own success rate says; the slow replica
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

/// Every sidecar's configuration. Everything listens on ephemeral ports, so the
/// placeholders are filled in at start: the workload (which is also the service account
/// its identity names), the controller's address, the PKI's directory, the services the
/// sidecar calls (`$SERVICES`, from [`SERVICE_CONFIG`]) and the app it fronts
/// (`$INBOUND`, from [`INBOUND_CONFIG`]).
const SIDECAR_CONFIG: &str = r#"
[workload]
name = "$WORKLOAD"
namespace = "demo"

[identity]
mode = "controller"
name = "spiffe://cluster.local/ns/demo/sa/$WORKLOAD"
trust_anchors = "$PKI/ca.crt"
controller = "$CONTROLLER"
controller_identity = "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller"
token_file = "$PKI/$WORKLOAD.token"

[admin]
listen = "127.0.0.1:0"

[outbound]
listen = "127.0.0.1:0"
$SERVICES
$INBOUND
"#;

/// A service a sidecar calls: each endpoint is `{ addr, pod, identity }`, the identity
/// the endpoint's sidecar must prove.
const SERVICE_CONFIG: &str = r#"
[[outbound.services]]
authority = "$AUTHORITY"
workload = "$SERVICE_WORKLOAD"
namespace = "demo"
endpoints = [$ENDPOINTS]
"#;

/// The app a sidecar fronts, and who may call it: only the identity of its clients.
const INBOUND_CONFIG: &str = r#"
[inbound]
listen = "127.0.0.1:0"
app = "$APP"
policy = ["spiffe://cluster.local/ns/demo/sa/$CALLER"]
"#;

/// The identity service: a new trust anchor and issuer for this run, tokens per workload.
const CONTROLLER_CONFIG: &str = r#"
listen = "127.0.0.1:0"
log = "warn"

[identity]
trust_domain = "cluster.local"
trust_anchors = "$PKI/ca.crt"
issuer_cert = "$PKI/issuer.crt"
issuer_key = "$PKI/issuer.key"

[tokens]
file = "$PKI/tokens.txt"
"#;

/// The workloads; each is also its service account.
const LOADGEN: &str = "loadgen";
const NAMES_WORKLOAD: &str = "names";

/// The greeter replicas: name, added delay, failure rate. The last is the canary: a service
/// of its own, which a route gives 10% of the calls.
const GREETERS: &[(&str, Duration, f64)] = &[
    ("greeter-0", Duration::ZERO, 0.0),
    ("greeter-1", Duration::ZERO, 0.03),
    ("greeter-2", Duration::from_millis(25), 0.0),
    (CANARY_REPLICA, Duration::ZERO, 0.0),
];

/// The canary replica, and the service it alone serves.
const CANARY_REPLICA: &str = "greeter-canary";
const CANARY_AUTHORITY: &str = "greeter-canary.demo.svc.cluster.local:50051";

/// The route of the greeter service in loadgen's sidecar: 90% to the greeters, 10% to the
/// canary, and failed calls (UNAVAILABLE, connect failures) retried within the budget.
/// gRPC calls are POSTs, so the policy says they may be retried.
const CANARY_ROUTE: &str = r#"
[[outbound.services.routes]]
name = "canary-split"
backends = [
    { service = "greeter.demo.svc.cluster.local:50051", weight = 90 },
    { service = "greeter-canary.demo.svc.cluster.local:50051", weight = 10 },
]
[outbound.services.routes.retry]
retry_non_idempotent = true
"#;

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

    // The identity service first: every sidecar asks it for a certificate at start.
    let pki = Pki::create()?;
    let controller = mesh_controller::Controller::bind(
        mesh_controller::Config::from_toml_str(&pki.fill(CONTROLLER_CONFIG))
            .context("invalid controller configuration")?,
    )
    .await
    .context("cannot start the controller")?;
    let controller_addr = controller.local_addr();
    let (stop_controller, controller_stopped) = oneshot::channel::<()>();
    let controller = tokio::spawn(controller.run(async {
        let _ = controller_stopped.await;
    }));
    let sidecar = |workload: &str, services: String, inbound: String| {
        pki.fill(SIDECAR_CONFIG)
            .replace("$SERVICES", &services)
            .replace("$INBOUND", &inbound)
            .replace("$WORKLOAD", workload)
            .replace("$CONTROLLER", &controller_addr.to_string())
    };

    // The names pods: the app, and its sidecar in front, which admits only greeters.
    let mut names = Vec::new();
    let mut names_pods = Vec::new();
    let mut sidecars = Vec::new();
    for name in NAMES {
        let replica = Replica::spawn_names(Names::new(*name)).await?;
        let proxy = Sidecar::start(&sidecar(
            NAMES_WORKLOAD,
            String::new(),
            inbound_config(replica.addr(), GREETER_WORKLOAD),
        ))
        .await?;
        names_pods.push((replica.name().to_owned(), proxy.inbound()?));
        names.push(replica);
        sidecars.push(proxy);
    }

    // The greeter pods: the app calls names through its own sidecar.
    let mut greeters = Vec::new();
    let mut greeter_pods = Vec::new();
    for (name, delay, failure_rate) in GREETERS {
        let listener = ReplicaListener::bind().await?;
        let proxy = Sidecar::start(&sidecar(
            GREETER_WORKLOAD,
            service_config(NAMES_AUTHORITY, NAMES_WORKLOAD, &names_pods),
            inbound_config(listener.addr(), LOADGEN),
        ))
        .await?;
        let mut config = GreeterConfig::new(*name)
            .with_delay(*delay)
            .with_failure_rate(*failure_rate);
        if *name == OUTAGE_REPLICA {
            config = config.with_outages(OUTAGE_EVERY, OUTAGE_LASTING);
        }
        let names_client = demo::names_client(demo::mesh_channel(proxy.outbound, NAMES_AUTHORITY)?);
        greeters.push(listener.serve_greeter(Greeter::with_names(config, names_client)));
        greeter_pods.push(((*name).to_owned(), proxy.inbound()?));
        sidecars.push(proxy);
    }

    // The load generator's sidecar: its metrics make the table.
    let canary_pods: Vec<(String, SocketAddr)> = greeter_pods
        .iter()
        .filter(|(pod, _)| pod == CANARY_REPLICA)
        .cloned()
        .collect();
    greeter_pods.retain(|(pod, _)| pod != CANARY_REPLICA);
    let loadgen = Sidecar::start(&sidecar(
        LOADGEN,
        service_config(GREETER_AUTHORITY, GREETER_WORKLOAD, &greeter_pods)
            + CANARY_ROUTE
            + &service_config(CANARY_AUTHORITY, GREETER_WORKLOAD, &canary_pods),
        String::new(),
    ))
    .await?;
    let (outbound, admin) = (loadgen.outbound, loadgen.admin);
    sidecars.push(loadgen);
    for proxy in &sidecars {
        proxy.wait_ready().await?;
    }

    println!(
        "mesh-demo: loadgen's sidecar outbound {outbound}, admin {admin}; identity service {controller_addr}; trust anchor {}",
        pki.dir.join("ca.crt").display()
    );
    print_replicas(&greeters);
    print_replicas(&names);
    println!(
        "  every hop over mutual TLS; each sidecar got its certificate from the identity service"
    );
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

    // Stop the sidecars first, so that the replicas have no client left.
    let mut proxied = Ok(());
    for proxy in sidecars {
        proxied = proxied.and(proxy.stop().await);
    }
    let mut stopped = Ok(());
    for replica in greeters.into_iter().chain(names) {
        stopped = stopped.and(replica.shutdown().await);
    }
    let _ = stop_controller.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), controller).await;
    proxied.context("a sidecar failed")?;
    reported.context("cannot read the proxy's metrics")?;
    stopped
}

/// [`SERVICE_CONFIG`] for `authority`, served by `pods` (name, sidecar inbound address),
/// each of which must prove the identity of `workload`.
fn service_config(authority: &str, workload: &str, pods: &[(String, SocketAddr)]) -> String {
    let endpoints = pods
        .iter()
        .map(|(pod, addr)| {
            format!(
                "{{ addr = \"{addr}\", pod = \"{pod}\", identity = \"spiffe://cluster.local/ns/demo/sa/{workload}\" }}"
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    SERVICE_CONFIG
        .replace("$AUTHORITY", authority)
        .replace("$SERVICE_WORKLOAD", workload)
        .replace("$ENDPOINTS", &endpoints)
}

/// [`INBOUND_CONFIG`] in front of `app`, admitting only `caller`.
fn inbound_config(app: SocketAddr, caller: &str) -> String {
    INBOUND_CONFIG
        .replace("$APP", &app.to_string())
        .replace("$CALLER", caller)
}

/// The demo's trust anchor, issuer and tokens, in a temporary directory removed at exit.
struct Pki {
    dir: std::path::PathBuf,
}

impl Pki {
    fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("mesh-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let pki = Self { dir };
        let made = mesh_tls::ca::bootstrap(
            "cluster.local",
            Duration::from_secs(365 * 86400),
            Duration::from_secs(30 * 86400),
            std::time::SystemTime::now(),
        )?;
        std::fs::write(pki.dir.join("ca.crt"), made.anchor_pem)?;
        std::fs::write(pki.dir.join("issuer.crt"), made.issuer_cert_pem)?;
        std::fs::write(pki.dir.join("issuer.key"), made.issuer_key_pem)?;
        // One token per service account, as Kubernetes would project into each pod.
        let mut tokens = String::new();
        for workload in [LOADGEN, GREETER_WORKLOAD, NAMES_WORKLOAD] {
            let token = format!("{workload}-{:016x}", fastrand::u64(..));
            tokens.push_str(&format!(
                "spiffe://cluster.local/ns/demo/sa/{workload} {token}\n"
            ));
            std::fs::write(pki.dir.join(format!("{workload}.token")), token)?;
        }
        std::fs::write(pki.dir.join("tokens.txt"), tokens)?;
        Ok(pki)
    }

    fn fill(&self, template: &str) -> String {
        template.replace("$PKI", &self.dir.display().to_string())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A sidecar running in this process.
struct Sidecar {
    outbound: SocketAddr,
    admin: SocketAddr,
    inbound: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Sidecar {
    async fn start(toml: &str) -> anyhow::Result<Self> {
        let config = Config::from_toml_str(toml).context("invalid sidecar configuration")?;
        let proxy = Proxy::bind(config)
            .await
            .context("cannot start a sidecar")?;
        let (outbound, admin, inbound) = (
            proxy.outbound_addr(),
            proxy.admin_addr(),
            proxy.inbound_addr(),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.run(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            outbound,
            admin,
            inbound,
            stop,
            task,
        })
    }

    fn inbound(&self) -> anyhow::Result<SocketAddr> {
        self.inbound.context("the sidecar has no inbound listener")
    }

    /// Waits (up to 10 s) until the sidecar holds its certificate.
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let uri: http::Uri = format!("http://{}/ready", self.admin).parse()?;
        for _ in 0..200 {
            if let Ok(rsp) = client.get(uri.clone()).await
                && rsp.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the sidecar at {} never became ready", self.admin)
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("a sidecar task panicked")?
    }
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
