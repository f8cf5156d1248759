//! `mesh-proxy wait-ready`: waits until the proxy beside it answers `/ready`, then exits. The
//! `postStart` hook of a proxy injected as an ordinary container (clusters without native
//! sidecars): the kubelet starts the app's containers only once the hook returns.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Waits for the proxy's readiness.
#[derive(Debug, clap::Args)]
pub(crate) struct WaitReadyArgs {
    /// The proxy's admin listener.
    #[arg(long, default_value = "127.0.0.1:4191")]
    admin: SocketAddr,
    /// How long to wait before giving up (exit code 1).
    #[arg(long, default_value = "120s", value_parser = mesh_core::config::parse_duration)]
    timeout: Duration,
}

/// Polls `/ready` every 100 ms until it answers 200 or the timeout passes.
pub(crate) fn run(args: WaitReadyArgs) -> ExitCode {
    let deadline = Instant::now() + args.timeout;
    loop {
        match ready(args.admin) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) | Err(_) if Instant::now() < deadline => {}
            Ok(false) => {
                eprintln!(
                    "mesh-proxy wait-ready: {} never answered /ready with 200 within {:?}",
                    args.admin, args.timeout
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!(
                    "mesh-proxy wait-ready: {} unreachable for {:?}: {e}",
                    args.admin, args.timeout
                );
                return ExitCode::FAILURE;
            }
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "a one-shot command with no runtime, polling a local port"
        )]
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `GET /ready` answers 200.
fn ready(admin: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
}
