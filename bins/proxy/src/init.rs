//! `mesh-proxy init`: installs the capture rules in the current network namespace and exits
//! (the pod's init container, in the same image as the proxy). The rules are mesh-capture's.

use std::process::ExitCode;

use mesh_capture::{Capture, CidrList, DEFAULT_PORTS, Firewall, PortList};

/// The subcommands beside serving.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Install the capture rules in this network namespace, then exit.
    Init(InitArgs),
    /// Wait until the proxy beside this one is ready (a `postStart` hook), then exit.
    WaitReady(crate::wait_ready::WaitReadyArgs),
}

/// Installs (or with `--uninstall` removes) the firewall rules that send the pod's TCP
/// through the proxy.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// The proxy's user id: its own connections are never captured.
    #[arg(long, default_value_t = 2102)]
    proxy_uid: u32,
    /// `nft`, `iptables` (iptables over nf_tables) or `iptables-legacy`.
    #[arg(long, default_value = "nft")]
    firewall: Firewall,
    /// Local ports whose inbound TCP goes straight to the app (`22,8000-8100`).
    #[arg(long, default_value = "")]
    skip_inbound_ports: PortList,
    /// Destination ports the pod reaches without the proxy.
    #[arg(long, default_value = "")]
    skip_outbound_ports: PortList,
    /// Destination networks the pod reaches without the proxy (`169.254.169.254/32,fd00::/8`).
    #[arg(long, default_value = "")]
    skip_outbound_cidrs: CidrList,
    /// The proxy's inbound listener, where captured inbound TCP goes.
    #[arg(long, default_value_t = DEFAULT_PORTS.0)]
    inbound_port: u16,
    /// The proxy's outbound listener, where captured outbound TCP goes.
    #[arg(long, default_value_t = DEFAULT_PORTS.1)]
    outbound_port: u16,
    /// The proxy's admin listener (never captured).
    #[arg(long, default_value_t = DEFAULT_PORTS.2)]
    admin_port: u16,
    /// Print the exact commands and rules, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove our rules (and only ours) instead.
    #[arg(long)]
    uninstall: bool,
}

/// Runs a subcommand.
pub(crate) fn run(command: Command) -> ExitCode {
    match command {
        Command::Init(args) => init(args),
        Command::WaitReady(args) => crate::wait_ready::run(args),
    }
}

/// Runs `init`; a failure names the command that failed and what it printed.
fn init(args: InitArgs) -> ExitCode {
    let capture = Capture {
        proxy_uid: args.proxy_uid,
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        skip_inbound_ports: args.skip_inbound_ports,
        skip_outbound_ports: args.skip_outbound_ports,
        skip_outbound_cidrs: args.skip_outbound_cidrs,
    };
    let firewall = args.firewall;
    let (plan, what) = match args.uninstall {
        false => (capture.plan(firewall), "installed"),
        true => (mesh_capture::uninstall_plan(firewall), "removed"),
    };
    if args.dry_run {
        for step in plan {
            println!("{step}");
        }
        return ExitCode::SUCCESS;
    }
    let done = match args.uninstall {
        false => capture.install(firewall),
        true => mesh_capture::uninstall(firewall),
    };
    match done {
        Ok(()) => {
            eprintln!("mesh-proxy init: capture rules {what} ({firewall})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mesh-proxy init: {e}");
            ExitCode::FAILURE
        }
    }
}
