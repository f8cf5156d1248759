//! Transparent capture: the firewall rules that send a pod's TCP through its proxy, so that an
//! app is meshed without a change. `mesh-proxy init` installs them in the pod's network
//! namespace and exits, before the app starts.
//!
//! - **Inbound**: TCP arriving for any local port is redirected to the inbound listener
//!   (4143), except the proxy's own ports and `skip_inbound_ports`.
//! - **Outbound**: TCP the pod sends is redirected to the outbound listener (4140), except the
//!   proxy's own traffic (matched by its user id, so the proxy's connections are never looped
//!   back), loopback, `skip_outbound_ports` and `skip_outbound_cidrs`.
//!
//! IPv4 and IPv6 alike. Three backends: nftables (the default: one `inet` table, replaced
//! atomically in one transaction), and iptables through its nf_tables or legacy binaries (two
//! chains of our own per family in the `nat` table, jumped to from `PREROUTING` and
//! `OUTPUT`). Every rule lives in a table or chain of our own name ([`NFT_TABLE`],
//! [`IPTABLES_INBOUND_CHAIN`], [`IPTABLES_OUTBOUND_CHAIN`]), so installing twice leaves one
//! set, and uninstalling removes exactly ours.
//!
//! A failed install removes whatever it had installed and says which command failed and what
//! it printed.
//!
//! ```
//! use mesh_capture::{Capture, Firewall};
//!
//! let capture = Capture {
//!     proxy_uid: 2102,
//!     skip_inbound_ports: "22".parse().unwrap(),
//!     skip_outbound_cidrs: "169.254.169.254/32".parse().unwrap(),
//!     ..Capture::default()
//! };
//! // What `--dry-run` prints: the exact input each command is given.
//! for step in capture.plan(Firewall::Nft) {
//!     println!("{step}");
//! }
//! ```

mod iptables;
mod list;
mod nft;

use std::fmt;
use std::io::Write as _;
use std::process::{Command, Stdio};

pub use list::{CidrList, ListError, PortList};

/// The nftables table that holds every rule (family `inet`: IPv4 and IPv6).
pub const NFT_TABLE: &str = "mesh_capture";
/// The iptables chain (table `nat`) of inbound rules, jumped to from `PREROUTING`.
pub const IPTABLES_INBOUND_CHAIN: &str = "MESH_INBOUND";
/// The iptables chain (table `nat`) of outbound rules, jumped to from `OUTPUT`.
pub const IPTABLES_OUTBOUND_CHAIN: &str = "MESH_OUTBOUND";

/// The proxy's default ports: inbound, outbound, admin.
pub const DEFAULT_PORTS: (u16, u16, u16) = (4143, 4140, 4191);

/// What to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// The proxy's user id: its own connections are never redirected.
    pub proxy_uid: u32,
    /// The inbound listener, where captured inbound TCP goes.
    pub inbound_port: u16,
    /// The outbound listener, where captured outbound TCP goes.
    pub outbound_port: u16,
    /// The admin listener (never captured inbound).
    pub admin_port: u16,
    /// Local ports whose inbound TCP reaches the app directly.
    pub skip_inbound_ports: PortList,
    /// Destination ports the pod reaches directly.
    pub skip_outbound_ports: PortList,
    /// Destination networks the pod reaches directly.
    pub skip_outbound_cidrs: CidrList,
}

impl Default for Capture {
    fn default() -> Self {
        let (inbound_port, outbound_port, admin_port) = DEFAULT_PORTS;
        Self {
            proxy_uid: 2102,
            inbound_port,
            outbound_port,
            admin_port,
            skip_inbound_ports: PortList::default(),
            skip_outbound_ports: PortList::default(),
            skip_outbound_cidrs: CidrList::default(),
        }
    }
}

/// Which firewall tool installs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firewall {
    /// `nft`: one `inet` table.
    Nft,
    /// `iptables-nft` / `ip6tables-nft` (iptables's syntax over nf_tables).
    Iptables,
    /// `iptables-legacy` / `ip6tables-legacy` (the old x_tables kernel interface).
    IptablesLegacy,
}

impl Firewall {
    /// The name as `--firewall` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Firewall::Nft => "nft",
            Firewall::Iptables => "iptables",
            Firewall::IptablesLegacy => "iptables-legacy",
        }
    }
}

impl fmt::Display for Firewall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Firewall {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nft" => Ok(Firewall::Nft),
            "iptables" => Ok(Firewall::Iptables),
            "iptables-legacy" => Ok(Firewall::IptablesLegacy),
            other => Err(format!(
                "unknown firewall {other:?}: expected nft, iptables or iptables-legacy"
            )),
        }
    }
}

/// One command of a plan, with what it reads on its standard input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Its standard input (a ruleset), if any.
    pub input: Option<String>,
    /// A failure here is expected and harmless (a check, or removing what is not there).
    pub may_fail: bool,
}

impl Step {
    fn run(argv: &[&str]) -> Self {
        Self {
            argv: argv.iter().map(|s| (*s).to_owned()).collect(),
            input: None,
            may_fail: false,
        }
    }

    fn with_input(mut self, input: String) -> Self {
        self.input = Some(input);
        self
    }

    fn may_fail(mut self) -> Self {
        self.may_fail = true;
        self
    }

    /// Runs the command; its failure names the command and what it printed.
    fn execute(&self) -> Result<(), CaptureError> {
        let command = self.argv.join(" ");
        let failed = |stderr: String| CaptureError::Command {
            command: command.clone(),
            stderr,
        };
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| failed("empty command".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(if self.input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
        if let (Some(input), Some(mut stdin)) = (&self.input, child.stdin.take()) {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| failed(format!("cannot write the rules: {e}")))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|e| failed(e.to_string()))?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            Err(failed(format!("{} ({})", stderr, output.status)))
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "# {}", self.argv.join(" "))?;
        if self.may_fail {
            f.write_str("    (may fail: nothing to do)")?;
        }
        if let Some(input) = &self.input {
            write!(f, "\n{}", input.trim_end())?;
        }
        Ok(())
    }
}

/// Why the rules could not be installed or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A firewall command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed on stderr, and how it exited.
        stderr: String,
    },
    /// The install failed, and so did removing what it had installed.
    #[error("{install}; removing the partial rules also failed: {cleanup}")]
    Cleanup {
        /// Why the install failed.
        install: Box<CaptureError>,
        /// Why the cleanup failed.
        cleanup: Box<CaptureError>,
    },
}

impl Capture {
    /// The commands that install the rules, in order (what `--dry-run` prints).
    pub fn plan(&self, firewall: Firewall) -> Vec<Step> {
        match firewall {
            Firewall::Nft => nft::install(self),
            Firewall::Iptables | Firewall::IptablesLegacy => iptables::install(self, firewall),
        }
    }

    /// Installs the rules; a second install replaces the first. On failure, what was
    /// installed is removed again, and the error names the failing command.
    pub fn install(&self, firewall: Firewall) -> Result<(), CaptureError> {
        for step in self.plan(firewall) {
            match step.execute() {
                Ok(()) => {}
                Err(_) if step.may_fail => {}
                Err(install) => {
                    return match uninstall(firewall) {
                        Ok(()) => Err(install),
                        Err(cleanup) => Err(CaptureError::Cleanup {
                            install: Box::new(install),
                            cleanup: Box::new(cleanup),
                        }),
                    };
                }
            }
        }
        Ok(())
    }
}

/// The commands that remove every rule of ours (what `--uninstall --dry-run` prints).
pub fn uninstall_plan(firewall: Firewall) -> Vec<Step> {
    match firewall {
        Firewall::Nft => nft::uninstall(),
        Firewall::Iptables | Firewall::IptablesLegacy => iptables::uninstall(firewall),
    }
}

/// Removes every rule of ours; there being none is not an error.
pub fn uninstall(firewall: Firewall) -> Result<(), CaptureError> {
    for step in uninstall_plan(firewall) {
        match step.execute() {
            Ok(()) => {}
            Err(_) if step.may_fail => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
