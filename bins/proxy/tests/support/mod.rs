//! Network namespaces for the capture tests: made by the test, always removed (dropped on
//! failure too), with addresses from 198.18.0.0/15 only; small servers and clients run inside
//! them; and the check that the test may run at all (root).

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test file uses a part of this support module"
)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The proxy binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");

/// True when the test may go on; false (with a reason printed) when it must be skipped.
pub(crate) fn root_or_skip(test: &str) -> bool {
    let uid = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() == "0" {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root (network namespaces and firewall rules), and CI runs as root"
    );
    eprintln!("SKIPPED {test}: needs root for network namespaces and firewall rules");
    false
}

/// A network namespace, removed when dropped (a failing test included).
pub(crate) struct Netns(pub(crate) String);

impl Netns {
    pub(crate) fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "mesh-init-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Self(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `argv` in the namespace; the output, whatever the exit status.
    pub(crate) fn run(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(argv)
            .output()
            .unwrap()
    }

    /// Runs `argv` in the namespace, which must succeed; its stdout.
    pub(crate) fn exec(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(out.status.success(), "{argv:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// `mesh-proxy init ARGS` in the namespace.
    pub(crate) fn init(&self, args: &[&str]) -> Output {
        let mut argv = vec![BIN, "init"];
        argv.extend_from_slice(args);
        self.run(&argv)
    }

    /// Every rule of every backend in the namespace, as the tools list them (comments and
    /// counters left out, so that two listings of the same rules are equal).
    pub(crate) fn rules(&self) -> String {
        let mut all = self.exec(&["nft", "list", "ruleset"]);
        for save in [
            "iptables-nft-save",
            "ip6tables-nft-save",
            "iptables-legacy-save",
            "ip6tables-legacy-save",
        ] {
            let out = self.run(&[save, "-t", "nat"]);
            all.push_str(&text(&out.stdout));
        }
        all.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                if l.starts_with(':') {
                    l.split(' ').next().unwrap_or(l)
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub(crate) fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    assert!(out.status.success(), "{argv:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A TCP server in `ns` on `addr` (IPv4 or IPv6; `::` takes both) that answers each
/// connection with `tag`.
pub(crate) fn serve(ns: &Netns, addr: &str, port: u16, tag: &str) -> std::process::Child {
    let family = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.{family}, socket.SOCK_STREAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('{addr}', {port}))\n\
         s.listen(16)\n\
         print('listening', flush=True)\n\
         while True:\n\
         \x20   c, _ = s.accept()\n\
         \x20   c.sendall(b'{tag}')\n\
         \x20   c.close()\n"
    );
    listening(ns, &script)
}

/// Connects from `ns` (as `uid`) to `addr:port`; what the server said before closing. Bash's
/// `/dev/tcp` as the client: nothing to install, and any user may run it.
pub(crate) fn dial(ns: &Netns, uid: &str, addr: &str, port: u16) -> String {
    let script = format!("exec 3<>/dev/tcp/{addr}/{port} && cat <&3");
    let mut argv = vec!["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups"];
    argv.extend(["timeout", "10", "bash", "-c", &script]);
    ns.exec(&argv)
}

pub(crate) struct Killed(pub(crate) std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP server in `ns` on `addr:port` answering every request with `tag`.
pub(crate) fn serve_http(ns: &Netns, addr: &str, port: u16, tag: &str) -> std::process::Child {
    let family = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let script = format!(
        "import http.server, socket, sys\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       body = b'{tag}'\n\
         \x20       self.send_response(200)\n\
         \x20       self.send_header('content-length', str(len(body)))\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(body)\n\
         \x20   protocol_version = 'HTTP/1.1'\n\
         \x20   def log_message(self, *args):\n\
         \x20       pass\n\
         class S(http.server.ThreadingHTTPServer):\n\
         \x20   address_family = socket.{family}\n\
         s = S(('{addr}', {port}), H)\n\
         print('listening', flush=True)\n\
         s.serve_forever()\n"
    );
    listening(ns, &script)
}

/// `GET path` over HTTP/1.1 from `ns` to `addr:port`; the whole response.
pub(crate) fn http_get(ns: &Netns, addr: &str, port: u16, path: &str) -> String {
    let host = if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_owned()
    };
    let script = format!(
        "exec 3<>/dev/tcp/{addr}/{port} && \
         printf 'GET {path} HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n' >&3 && \
         cat <&3"
    );
    ns.exec(&["timeout", "10", "bash", "-c", &script])
}

/// A path any user may read and run, for a process started as the proxy's user.
pub(crate) fn world_readable(
    dir: &std::path::Path,
    name: &str,
    from: Option<&str>,
    text: &str,
) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join(name);
    match from {
        Some(from) => drop(std::fs::copy(from, &path).unwrap()),
        None => std::fs::write(&path, text).unwrap(),
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Waits (at most 10 s) for the proxy in `ns` to answer 200 on its admin `/ready`.
pub(crate) fn wait_ready(ns: &Netns) -> bool {
    let probe = "exec 3<>/dev/tcp/127.0.0.1/4191 && \
                 printf 'GET /ready HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n' >&3 && \
                 cat <&3";
    for _ in 0..100 {
        let out = ns.run(&["timeout", "2", "bash", "-c", probe]);
        if text(&out.stdout).contains(" 200 OK") {
            return true;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "a synchronous test waiting for a process it started, with no runtime to block"
        )]
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Runs the Python server `script` in `ns`; returns once it printed `listening` (its bind done).
fn listening(ns: &Netns, script: &str) -> std::process::Child {
    started(ns, &["python3", "-c", script], "listening")
}

/// Runs `argv` in `ns`; returns once its first line of output is `ready`.
fn started(ns: &Netns, argv: &[&str], ready: &str) -> std::process::Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .args(argv)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let stdout = child.stdout.as_mut().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    assert_eq!(line.trim(), ready, "{argv:?} did not start");
    child
}

/// The Python grpcio client and server of the integration tests, and the demo's protos.
fn interop() -> (String, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let script = root.join("integration/python/interop.py");
    let proto = root.join("proto");
    (
        script.to_str().unwrap().to_owned(),
        proto.to_str().unwrap().to_owned(),
    )
}

/// A grpcio Greeter server (the reference gRPC implementation, which we did not write) in
/// `ns` on `listen`, whose replies name `replica`.
pub(crate) fn serve_grpc(ns: &Netns, listen: &str, replica: &str) -> std::process::Child {
    let (script, proto) = interop();
    started(
        ns,
        &["python3", &script, listen, replica, &proto, "serve"],
        "serving",
    )
}

/// 3000 unary calls from a grpcio client in `ns` over one channel (one HTTP/2 connection, h2c)
/// to `target`; its JSON report (`per_replica` counts).
pub(crate) fn grpc_spread(ns: &Netns, target: &str) -> String {
    let (script, proto) = interop();
    let out = ns.run(&[
        "timeout", "120", "python3", &script, target, target, &proto, "spread",
    ]);
    assert!(
        out.status.success(),
        "the grpcio client failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `f` on a thread inside `ns`: the sockets it opens are the namespace's, as a process's
/// would be (setns(2) moves only the calling thread).
pub(crate) fn inside<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
    use std::os::fd::AsFd as _;
    let handle = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
    std::thread::spawn(move || {
        move_into_link_name_space(handle.as_fd(), Some(LinkNameSpaceType::Network))
            .expect("setns into the test's network namespace");
        drop(handle);
        f()
    })
}
