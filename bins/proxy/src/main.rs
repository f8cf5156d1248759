//! `mesh-proxy --config FILE`: the sidecar. See the library docs for the stacks.
//! `mesh-proxy init`: installs the pod's capture rules; `wait-ready`: waits for the proxy.

mod init;
mod wait_ready;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_proxy::config::Config;
use mesh_proxy::{LogControl, Proxy};

/// The mesh sidecar proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The TOML configuration file; every key can also be set as `MESH__SECTION__KEY`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration, print it as it will be used, and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<init::Command>,
}

/// Says why the configuration cannot be used; exit code 2.
fn unusable(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("mesh-proxy: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(command) = args.command {
        return init::run(command);
    }
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
        let proxy = Proxy::bind(config).await?;
        let proxy = proxy.with_log_control(log).with_config_file(config_file);
        let (outbound, inbound) = (proxy.outbound_addr(), proxy.inbound_addr());
        let admin = proxy.admin_addr();
        tracing::info!(%outbound, ?inbound, %admin, threads, "listening");
        proxy.run(mesh_stack::serve::shutdown_signal()).await
    })
}
