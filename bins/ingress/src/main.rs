//! `mesh-ingress --config FILE`: the edge into the mesh. See the library docs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_ingress::{Config, IngressServer, LogControl};

/// mimalloc: per-request allocations cost less than glibc's, and freed pages go back to the
/// system (see the workspace `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The mesh's ingress: TLS by SNI, routes by host and path, balanced mTLS into the mesh.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The TOML configuration file; every key can also be set as `MESH__SECTION__KEY`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration, print it as it will be used, and exit.
    #[arg(long)]
    check: bool,
}

/// Says why the configuration cannot be used; exit code 2.
fn unusable(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("mesh-ingress: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return unusable(e),
    };
    if args.check {
        return match toml::to_string(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => unusable(e),
        };
    }
    let log = mesh_stack::log::init(&config.log, config.log_format);
    match run(config, log, args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config, log: LogControl, config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let (runtime, threads) = mesh_stack::serve::runtime(config.runtime.threads)?;
    runtime.block_on(async move {
        let ingress = IngressServer::bind(config).await?;
        let ingress = ingress.with_log_control(log).with_config_file(config_file);
        let (https, http) = (ingress.https_addr(), ingress.http_addr());
        let admin = ingress.admin_addr();
        tracing::info!(?https, ?http, %admin, threads, "listening");
        ingress.run(mesh_stack::serve::shutdown_signal()).await
    })
}
