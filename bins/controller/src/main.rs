//! `mesh-controller run --config FILE`: the identity service.
//! `mesh-controller bootstrap --out DIR`: a new install's trust anchor and issuer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Parser, Subcommand};
use mesh_controller::{Config, Controller};

/// The mesh's control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the identity service.
    Run {
        /// The TOML configuration file; every key can also be set as `MESH__SECTION__KEY`.
        #[arg(long)]
        config: PathBuf,
    },
    /// Create a trust anchor and an issuer for a new install, and print when they expire.
    Bootstrap {
        /// Where to write `ca.crt` (the trust anchor), `ca.key` (its key, owner-only: keep it
        /// offline, it signs new issuers), `issuer.crt` and `issuer.key`.
        #[arg(long)]
        out: PathBuf,
        /// The trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// How long the trust anchor lives.
        #[arg(long, default_value = "3650d", value_parser = parse_duration)]
        anchor_lifetime: Duration,
        /// How long the issuer lives (rotate it before: cert-manager does).
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        issuer_lifetime: Duration,
        /// Overwrite files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Rotate the issuer: a new `issuer.crt` and `issuer.key` signed by the trust anchor, so
    /// that workloads trust them with no change (the controller reloads the files).
    Issuer {
        /// The trust anchor (`ca.crt` of `bootstrap`).
        #[arg(long)]
        anchor: PathBuf,
        /// Its key (`ca.key` of `bootstrap`).
        #[arg(long)]
        anchor_key: PathBuf,
        /// Where to write `issuer.crt` and `issuer.key`.
        #[arg(long)]
        out: PathBuf,
        /// The trust domain.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// How long the issuer lives.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        lifetime: Duration,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    mesh_core::config::parse_duration(text)
}

/// Exit code for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    match Args::parse().command {
        Command::Run { config } => {
            let config = match Config::load(&config) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("mesh-controller: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bootstrap {
            out,
            trust_domain,
            anchor_lifetime,
            issuer_lifetime,
            force,
        } => match bootstrap(&out, &trust_domain, anchor_lifetime, issuer_lifetime, force) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mesh-controller: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Issuer {
            anchor,
            anchor_key,
            out,
            trust_domain,
            lifetime,
        } => match rotate_issuer(&anchor, &anchor_key, &out, &trust_domain, lifetime) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mesh-controller: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let controller = Controller::bind(config).await?;
        controller
            .run(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    })
}

fn bootstrap(
    out: &std::path::Path,
    trust_domain: &str,
    anchor_lifetime: Duration,
    issuer_lifetime: Duration,
    force: bool,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let made = mesh_tls::ca::bootstrap(
        trust_domain,
        anchor_lifetime,
        issuer_lifetime,
        SystemTime::now(),
    )?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files = [
        ("ca.crt", &made.anchor_pem, 0o644),
        ("ca.key", &made.anchor_key_pem, 0o600),
        ("issuer.crt", &made.issuer_cert_pem, 0o644),
        ("issuer.key", &made.issuer_key_pem, 0o600),
    ];
    // All or nothing: a half-replaced PKI would pair a certificate with another's key.
    if !force {
        for (name, ..) in &files {
            let path = out.join(name);
            anyhow::ensure!(
                !path.exists(),
                "{} exists (use --force to overwrite)",
                path.display()
            );
        }
    }
    for (name, text, mode) in files {
        let path = out.join(name);
        write_with_mode(&path, text, mode)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let date = |t: SystemTime| {
        let secs = mesh_tls::cert::unix_seconds(t);
        let days = secs / 86400;
        format!(
            "{} (unix {secs}, {} days from now)",
            civil(days),
            days.saturating_sub(mesh_tls::cert::unix_seconds(SystemTime::now()) / 86400)
        )
    };
    println!(
        "trust anchor  {}  expires {}",
        out.join("ca.crt").display(),
        date(made.anchor_valid_until)
    );
    println!(
        "issuer        {}  expires {}",
        out.join("issuer.crt").display(),
        date(made.issuer_valid_until)
    );
    println!("issuer key    {}", out.join("issuer.key").display());
    println!(
        "anchor key    {}  (owner-only; keep it offline: `mesh-controller issuer --anchor {} --anchor-key {} --out DIR` makes the next issuer)",
        out.join("ca.key").display(),
        out.join("ca.crt").display(),
        out.join("ca.key").display()
    );
    Ok(())
}

/// `issuer`: a new issuer under the trust anchor, written owner-only for the key.
fn rotate_issuer(
    anchor: &std::path::Path,
    anchor_key: &std::path::Path,
    out: &std::path::Path,
    trust_domain: &str,
    lifetime: Duration,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    };
    let made = mesh_tls::ca::issuer_under(
        &read(anchor)?,
        &read(anchor_key)?,
        trust_domain,
        lifetime,
        SystemTime::now(),
    )?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // The key first: the controller reloads on the certificate's change.
    for (name, text, mode) in [
        ("issuer.key", &made.key_pem, 0o600),
        ("issuer.crt", &made.cert_pem, 0o644),
    ] {
        let path = out.join(name);
        write_with_mode(&path, text, mode)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "issuer        {}  (signed by {})",
        out.join("issuer.crt").display(),
        anchor.display()
    );
    Ok(())
}

/// Writes a file created with `mode`, so that a key is never readable by others, not even
/// for a moment.
fn write_with_mode(path: &std::path::Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    // An existing file keeps its old mode through open(): set it.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(text.as_bytes())
}

/// `YYYY-MM-DD` of a day number since the Unix epoch (Howard Hinnant's civil_from_days).
fn civil(days: u64) -> String {
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
