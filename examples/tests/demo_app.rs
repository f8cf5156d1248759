//! `demo-app`, the demo's parts as the pods of deploy/demo/demo.yaml run them: names, two
//! greeter replicas that ask it for names, and the load generator, each a process; every call
//! answers, and the report names who answered.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_demo-app");

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(args: &[&str]) -> Killed {
    Killed(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        #[expect(
            clippy::disallowed_methods,
            reason = "a synchronous test waiting for processes it started"
        )]
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn greeter_names_and_loadgen_work_as_separate_processes() {
    let names = free_port();
    let (g0, g1) = (free_port(), free_port());
    let _names = spawn(&[
        "names",
        "--listen",
        &format!("127.0.0.1:{names}"),
        "--replica",
        "names-0",
    ]);
    let names_url = format!("http://127.0.0.1:{names}");
    let _greeters: Vec<Killed> = [("greeter-0", g0), ("greeter-1", g1)]
        .iter()
        .map(|(name, port)| {
            spawn(&[
                "greeter",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--replica",
                name,
                "--names",
                &names_url,
            ])
        })
        .collect();
    for port in [names, g0, g1] {
        wait_listening(port);
    }
    let out = Command::new(BIN)
        .args([
            "loadgen",
            "--target",
            &format!("http://127.0.0.1:{g1}"),
            "--rps",
            "40",
        ])
        .args(["--duration", "2", "--report-every", "1"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("greeter-1"), "{report}");
    assert!(!report.contains("failed"), "{report}");
    let calls: u64 = report
        .lines()
        .last()
        .and_then(|l| l.strip_suffix(" calls"))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(calls > 0, "{report}");
}
