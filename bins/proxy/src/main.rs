//! `mesh-proxy --config FILE`: the sidecar. See the library docs for the stacks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_proxy::Proxy;
use mesh_proxy::admin::LogControl;
use mesh_proxy::config::{Config, LogFormat};

/// The mesh sidecar proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The TOML configuration file; every key can also be set as `MESH_SECTION__KEY`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration, print it as it will be used, and exit.
    #[arg(long)]
    check: bool,
}

/// Exit code for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("mesh-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check {
        match toml::to_string(&config) {
            Ok(text) => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("mesh-proxy: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let log = init_logging(&config);
    match run(config, log, args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Installs the subscriber; returns the control that `/log-level` uses to change the filter.
fn init_logging(config: &Config) -> LogControl {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log_format {
        LogFormat::Plain => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
    LogControl::new(config.log.clone(), move |text| {
        let filter = tracing_subscriber::EnvFilter::try_new(text).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

fn run(config: Config, log: LogControl, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let threads = match config.runtime.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One thread: a current-thread runtime has no work-stealing overhead.
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let mut proxy = Proxy::bind(config).await?.with_log_control(log);
        if let Some(path) = config_file {
            proxy = proxy.with_config_file(path);
        }
        tracing::info!(
            outbound = %proxy.outbound_addr(),
            inbound = ?proxy.inbound_addr(),
            admin = %proxy.admin_addr(),
            threads,
            "listening"
        );
        proxy.run(shutdown_signal()).await
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the proxy");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
