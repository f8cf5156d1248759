//! The `meshctl` command: flags parsed with clap, wired to the `meshctl` library (see its
//! documentation for the commands, their sources and their output).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use meshctl::prom::{PromClient, PromSource};
use meshctl::query::{Direction, Source};
use meshctl::{report, scrape};

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
    /// Add the mesh's sidecar to the workloads of Kubernetes manifests (YAML to stdout).
    Inject(InjectArgs),
    /// Print the control plane's manifests, for `kubectl apply -f -`.
    Install(InstallArgs),
    /// Print what to delete, for `kubectl delete --ignore-not-found -f -`.
    Uninstall,
    /// Check the installed mesh: API, control plane, webhook, issuer, trust anchors, proxies.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The kubeconfig [default: as kubectl finds it: KUBECONFIG, ~/.kube/config, in-cluster]
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct InstallArgs {
    /// Where the images are.
    #[arg(long, default_value = "ghcr.io/mesh-dev")]
    registry: String,
    /// The images' tag [default: this meshctl's version]
    #[arg(long = "version", value_name = "TAG")]
    image_version: Option<String>,
    /// The mesh's trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Leave the issuer Secret (mesh-identity-issuer) to cert-manager or another issuer.
    #[arg(long, requires = "identity_trust_anchors_file")]
    identity_external_issuer: bool,
    /// The trust anchors (PEM) that issuer chains to.
    #[arg(long, value_name = "FILE")]
    identity_trust_anchors_file: Option<std::path::PathBuf>,
    /// Write the key of the trust anchor made for this install to FILE (created, owner-only):
    /// with it, `mesh-controller issuer` signs the next issuer under the same anchor. Without
    /// it the key is discarded.
    #[arg(long, value_name = "FILE", conflicts_with = "identity_external_issuer")]
    identity_anchor_key_out: Option<std::path::PathBuf>,
    /// For clusters before Kubernetes 1.29: inject the proxy as the first container.
    #[arg(long)]
    no_native_sidecar: bool,
    /// Also install mesh-ingress: its Deployment, its configuration and a LoadBalancer Service.
    #[arg(long)]
    ingress: bool,
    /// With --ingress: the GatewayClass `mesh`, the Gateway `mesh-gateway/mesh-ingress` the
    /// ingress implements, and its RBAC (the Gateway API CRDs must be installed).
    #[arg(long, requires = "ingress")]
    gateway_api: bool,
}

#[derive(Debug, Args)]
struct InjectArgs {
    /// The manifests: a file, or `-` for standard input (multi-document YAML, or a List).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: String,
    /// The install's injection settings (TOML, as the injector's `[inject]` section).
    #[arg(long, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// The trust anchors (PEM) the proxies verify each other with.
    #[arg(long, value_name = "FILE")]
    trust_anchors: Option<std::path::PathBuf>,
    /// The proxy's image.
    #[arg(long, value_name = "IMAGE")]
    proxy_image: Option<String>,
    /// For clusters before Kubernetes 1.29: the proxy as the first container, not a native
    /// sidecar.
    #[arg(long)]
    no_native_sidecar: bool,
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
    let offline = match &cli.command {
        Command::Inject(args) => Some(inject(args)),
        Command::Install(args) => Some(install(args)),
        Command::Uninstall => Some(meshctl::install::uninstall_yaml().map_err(Into::into)),
        Command::Stat(_) | Command::Edges(_) | Command::Check(_) => None,
    };
    if let Some(result) = offline {
        return match result {
            Ok(text) => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("meshctl: {e:#}");
                ExitCode::from(1)
            }
        };
    }
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

/// `meshctl inject`: the manifests with the sidecar, and a line on stderr per workload.
fn inject(args: &InjectArgs) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let input = match args.file.as_str() {
        "-" => std::io::read_to_string(std::io::stdin()).context("reading standard input")?,
        path => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
    };
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?
        }
        None => mesh_inject::InjectConfig::default(),
    };
    if let Some(path) = &args.trust_anchors {
        config.trust_anchors_pem = std::fs::read_to_string(path)
            .with_context(|| format!("reading the trust anchors {}", path.display()))?;
    }
    if let Some(image) = &args.proxy_image {
        config.proxy_image.clone_from(image);
    }
    if args.no_native_sidecar {
        config.native_sidecar = false;
    }
    if !config
        .trust_anchors_pem
        .contains("-----BEGIN CERTIFICATE-----")
    {
        anyhow::bail!(
            "no trust anchors: pass --trust-anchors FILE (the install's ca.crt, PEM) or set \
             trust_anchors_pem in --config; the proxies verify each other with them"
        );
    }
    let out = meshctl::inject::inject_yaml(&input, &config)?;
    for object in &out.injected {
        eprintln!("{object} injected");
    }
    for (object, why) in &out.skipped {
        eprintln!("{object} skipped: {why}");
    }
    Ok(out.text)
}

/// `meshctl install`: the manifests.
fn install(args: &InstallArgs) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let trust_anchors_pem = match &args.identity_trust_anchors_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the trust anchors {}", path.display()))?,
        ),
        None => None,
    };
    let options = meshctl::install::InstallOptions {
        registry: args.registry.trim_end_matches('/').to_owned(),
        version: args
            .image_version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
        trust_domain: args.trust_domain.clone(),
        cluster_domain: args.cluster_domain.clone(),
        external_issuer: args.identity_external_issuer,
        trust_anchors_pem,
        native_sidecar: !args.no_native_sidecar,
        ingress: args.ingress,
        gateway_api: args.gateway_api,
    };
    let installed = meshctl::install::install(&options)?;
    if let Some(anchor_key) = &installed.anchor_key_pem {
        match &args.identity_anchor_key_out {
            Some(path) => {
                write_owner_only(path, anchor_key)
                    .with_context(|| format!("writing the anchor key {}", path.display()))?;
                eprintln!(
                    "anchor key kept in {} (owner-only; keep it offline: `mesh-controller issuer --anchor ca.crt --anchor-key {} --out DIR` signs the next issuer, ca.crt being the ConfigMap mesh-trust-anchors)",
                    path.display(),
                    path.display()
                );
            }
            None => eprintln!(
                "the trust anchor's key was made for this install and discarded: when the issuer expires (365 days), rotate the anchor (README: rotating the trust anchor), or install with --identity-anchor-key-out FILE to keep it"
            ),
        }
    }
    Ok(installed.yaml)
}

/// Creates `path` readable by its owner only; an existing file is never overwritten.
fn write_owner_only(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// `meshctl check`: the report, and whether every check passed.
async fn check(args: CheckArgs) -> anyhow::Result<(String, bool)> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?
        }
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(config)?;
    let checks = meshctl::check::run(client, std::time::SystemTime::now()).await;
    let ok = checks.iter().all(|c| c.ok);
    Ok((meshctl::check::render(&checks), ok))
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    let (is_stat, args) = match cli.command {
        Command::Stat(args) => (true, args),
        Command::Edges(args) => (false, args),
        Command::Check(args) => {
            let (report, ok) = check(args).await?;
            if !ok {
                // The report is the answer: print it, then fail.
                print!("{report}");
                bail!("some checks failed");
            }
            return Ok(report);
        }
        Command::Inject(_) | Command::Install(_) | Command::Uninstall => {
            bail!("this command runs without the runtime")
        }
    };
    let direction = args.direction;
    let (out, window, place) = match args.source.prometheus {
        Some(url) => {
            let window = args.window.unwrap_or(PROMETHEUS_WINDOW);
            let client = PromClient::new(&url)?;
            let source = PromSource::new(client, Duration::from_secs_f64(window), args.job);
            let out = table(&source, is_stat, direction).await?;
            (out, window, format!("in Prometheus at {url}"))
        }
        None => {
            let window = args.window.unwrap_or(PROXY_WINDOW);
            let rates =
                scrape::scrape_rates(&args.source.proxy, Duration::from_secs_f64(window)).await?;
            let out = table(&rates, is_stat, direction).await?;
            let place = format!("at proxy {}", args.source.proxy.join(", "));
            (out, window, place)
        }
    };
    match out {
        Some(out) => Ok(out),
        None => bail!(
            "no traffic seen: no {} requests in the last {window}s {place}",
            direction.as_str()
        ),
    }
}

/// The `stat` or `edges` table from `source`; `None` when it has no rows.
async fn table(
    source: &impl Source,
    is_stat: bool,
    direction: Direction,
) -> anyhow::Result<Option<String>> {
    Ok(if is_stat {
        let rows = report::stat(source, direction).await?;
        (!rows.is_empty()).then(|| report::stat_table(&rows))
    } else {
        let rows = report::edges(source, direction).await?;
        (!rows.is_empty()).then(|| report::edges_table(&rows))
    })
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
