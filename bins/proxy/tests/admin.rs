//! The admin port's levers answer loopback only: a proxy whose admin listens on every address
//! (for Prometheus) changes its log level for a client on 127.0.0.1 and refuses one on another
//! address of the same host (a second address on lo, in a network namespace the test makes).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

mod support;

use std::process::{Command, Stdio};

use support::{BIN, Killed, Netns, root_or_skip, text, wait_ready, world_readable};

/// `PUT /log-level` with `filter` from `source` to `admin`, in `ns`: the status line and body.
fn put_log_level(ns: &Netns, source: &str, admin: &str, filter: &str) -> String {
    let script = format!(
        "import socket\n\
         s = socket.socket()\n\
         s.bind(('{source}', 0))\n\
         s.connect(('{admin}', 4191))\n\
         body = b'{filter}'\n\
         s.sendall(b'PUT /log-level HTTP/1.1\\r\\nHost: admin\\r\\nConnection: close\\r\\n' +\n\
         \x20         b'Content-Length: ' + str(len(body)).encode() + b'\\r\\n\\r\\n' + body)\n\
         out = b''\n\
         while True:\n\
         \x20   chunk = s.recv(4096)\n\
         \x20   if not chunk: break\n\
         \x20   out += chunk\n\
         print(out.decode())\n"
    );
    ns.exec(&["python3", "-c", &script])
}

#[test]
fn log_level_changes_only_from_loopback() {
    if !root_or_skip("log_level_changes_only_from_loopback") {
        return;
    }
    let ns = Netns::new();
    // A second address on lo: the same host, not loopback.
    ns.exec(&["ip", "addr", "add", "198.18.9.1/32", "dev", "lo"]);
    let dir = std::env::temp_dir().join(format!("mesh-admin-{}", std::process::id()));
    let bin = world_readable(&dir, "mesh-proxy", Some(BIN), "");
    let config = world_readable(
        &dir,
        "proxy.toml",
        None,
        "[admin]\nlisten = \"0.0.0.0:4191\"\n[outbound]\nlisten = \"127.0.0.1:4140\"\n",
    );
    let _proxy = Killed(
        Command::new("ip")
            .args(["netns", "exec", &ns.0, &bin, "--config", &config])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_ready(&ns), "the proxy never became ready");

    let refused = put_log_level(&ns, "198.18.9.1", "198.18.9.1", "debug");
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("only from loopback"), "{refused}");
    let changed = put_log_level(&ns, "127.0.0.1", "127.0.0.1", "debug");
    assert!(changed.starts_with("HTTP/1.1 200"), "{changed}");
    // Reading stays open to all: the level is the one loopback set.
    let out = ns.run(&[
        "python3",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://198.18.9.1:4191/log-level').read().decode())",
    ]);
    assert_eq!(text(&out.stdout).trim(), "debug");
    let _ = std::fs::remove_dir_all(&dir);
}
