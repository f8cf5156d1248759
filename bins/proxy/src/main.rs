//! `mesh-proxy --config FILE`: the sidecar. See the library docs for the stacks.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_proxy::Proxy;
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
    init_logging(&config);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
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
        let proxy = Proxy::bind(config).await?;
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
