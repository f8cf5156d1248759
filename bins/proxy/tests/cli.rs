//! The mesh-proxy binary as users and orchestrators run it: configuration errors, SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_integration::docs::{check_rows, flatten, readme_section};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");

fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with_contents(text)
}

/// A tiny temp-file helper, to avoid a dependency for one test file.
mod tempfile_path {
    use std::path::PathBuf;

    pub(super) struct TempPath(pub(super) PathBuf);

    impl TempPath {
        pub(super) fn with_contents(text: &str) -> Self {
            let n = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let path = std::env::temp_dir()
                .join(format!("mesh-proxy-test-{}-{n}.toml", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn run_check(config: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let file = write_config(config);
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&file.0).arg("--check");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_config_exits_2_and_names_the_key() {
    let (code, err) = run_check("[outbound]\nlisten = \"127.0.0.1:notaport\"\n", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("outbound.listen") && err.contains("notaport"),
        "{err}"
    );

    let (code, err) = run_check("[outbound\nlisten = 1\n", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("TOML") || err.contains("line"), "{err}");

    let (code, err) = run_check("[outbound]\nlisten = \"127.0.0.1:4140\"\nlisen = 1\n", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("lisen"), "{err}");

    let (code, err) = run_check("", &[("MESH__RUNTIME__SHUTDOWN_GRACE", "forever")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("runtime.shutdown_grace") && err.contains("forever"),
        "{err}"
    );

    let missing = Command::new(BIN)
        .args(["--config", "/nonexistent/mesh.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/mesh.toml"));
}

#[test]
fn check_prints_the_effective_config_with_env_overrides() {
    let file = write_config("[outbound]\nlisten = \"127.0.0.1:4140\"\n");
    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(&file.0)
        .env("MESH__OUTBOUND__LISTEN", "127.0.0.1:5140")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("listen = \"127.0.0.1:5140\""), "{text}");
}

/// Kubernetes gives every container variables for each Service of its namespace: those of
/// Services named `mesh`, `mesh-api` and even `mesh--outbound` leave the proxy's
/// configuration alone, while a `MESH__` key still applies.
#[test]
fn the_variables_kubernetes_sets_for_services_named_mesh_do_not_disturb_it() {
    let file = write_config("");
    let mut command = Command::new(BIN);
    command.args(["--check", "--config"]).arg(&file.0);
    for service in ["MESH", "MESH_API", "MESH__OUTBOUND"] {
        command
            .env(format!("{service}_SERVICE_HOST"), "10.96.0.10")
            .env(format!("{service}_SERVICE_PORT"), "80")
            .env(format!("{service}_SERVICE_PORT_HTTP"), "80")
            .env(format!("{service}_PORT"), "tcp://10.96.0.10:80")
            .env(format!("{service}_PORT_80_TCP"), "tcp://10.96.0.10:80")
            .env(format!("{service}_PORT_80_TCP_PROTO"), "tcp")
            .env(format!("{service}_PORT_80_TCP_PORT"), "80")
            .env(format!("{service}_PORT_80_TCP_ADDR"), "10.96.0.10");
    }
    let out = command
        .env("MESH__OUTBOUND__LISTEN", "127.0.0.1:5140")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("listen = \"127.0.0.1:5140\""), "{text}");
}

/// Reserves a free port on 127.0.0.1 (the kernel may in principle hand it out again).
fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

struct Proxy(Child);

/// Starts the binary on `config` and waits until `/ready` answers 200 on `admin`.
async fn start(config: &tempfile_path::TempPath, admin: SocketAddr) -> Proxy {
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proxy = Proxy(child);
    wait_ready(admin).await;
    proxy
}

/// Waits (bounded) for the process to exit; its exit code.
async fn exit_code(proxy: &mut Proxy) -> Option<i32> {
    for _ in 0..400 {
        if let Some(status) = proxy.0.try_wait().unwrap() {
            return status.code();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_ready(admin: SocketAddr) {
    for _ in 0..200 {
        if let Ok(mut s) = TcpStream::connect(admin).await {
            let _ = s
                .write_all(b"GET /ready HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            if buf.starts_with(b"HTTP/1.1 200") {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("proxy never became ready on {admin}");
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_refuses_new_connections_and_exits_0() {
    // A backend that holds each request until the test releases it.
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let (got_request_tx, mut got_request) = tokio::sync::mpsc::channel::<()>(4);
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let release_backend = release.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = backend.accept().await {
            let tx = got_request_tx.clone();
            let release = release_backend.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                let _ = tx.send(()).await;
                release.notified().await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nfinished")
                    .await;
            });
        }
    });

    let outbound = free_port();
    let admin = free_port();
    let file = write_config(&format!(
        "[admin]\nlisten = \"{admin}\"\n[outbound]\nlisten = \"{outbound}\"\n[[outbound.services]]\n\
         authority = \"slow.test:80\"\nendpoints = [\"{backend_addr}\"]\n[runtime]\nthreads = 1\nshutdown_grace = \"20s\"\n"
    ));
    let mut proxy = start(&file, admin).await;

    let mut client = TcpStream::connect(outbound).await.unwrap();
    client
        .write_all(b"GET /slow HTTP/1.1\r\nhost: slow.test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), got_request.recv())
        .await
        .expect("the backend never saw the request");

    let killed = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..400 {
        match TcpStream::connect(outbound).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(refused, "the outbound listener still accepts after SIGTERM");
    assert!(
        proxy.0.try_wait().unwrap().is_none(),
        "the proxy exited with a request in flight"
    );

    // The request in flight still gets its answer.
    release.notify_waiters();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut answer))
        .await
        .expect("no answer to the in-flight request")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("finished"), "{answer}");

    assert_eq!(
        exit_code(&mut proxy).await,
        Some(0),
        "the proxy did not exit 0 after draining"
    );
}

async fn admin_request(admin: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("no answer from the admin listener")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn admin_changes_the_log_level_and_shuts_down_on_request() {
    let (outbound, admin) = (free_port(), free_port());
    let file = write_config(&format!(
        "[admin]\nlisten = \"{admin}\"\nenable_shutdown = true\n[outbound]\nlisten = \"{outbound}\"\n[runtime]\nthreads = 1\n"
    ));
    let mut proxy = start(&file, admin).await;

    let got = admin_request(admin, "GET", "/log-level", "").await;
    assert!(
        got.starts_with("HTTP/1.1 200") && got.ends_with("info\n"),
        "{got}"
    );
    let set = admin_request(admin, "PUT", "/log-level", "mesh_proxy=debug,info").await;
    assert!(set.starts_with("HTTP/1.1 200"), "{set}");
    let got = admin_request(admin, "GET", "/log-level", "").await;
    assert!(got.ends_with("mesh_proxy=debug,info\n"), "{got}");
    let bad = admin_request(admin, "PUT", "/log-level", "mesh_proxy=loud").await;
    assert!(
        bad.starts_with("HTTP/1.1 400") && bad.contains("invalid log filter"),
        "{bad}"
    );

    let done = admin_request(admin, "POST", "/shutdown", "").await;
    assert!(done.starts_with("HTTP/1.1 200"), "{done}");
    assert_eq!(
        exit_code(&mut proxy).await,
        Some(0),
        "the proxy did not exit 0 after /shutdown"
    );
}

/// `wait-ready`, the `postStart` hook of a proxy injected as an ordinary container: it returns
/// once the proxy beside it is ready, and fails, saying so, when it never is.
#[tokio::test]
async fn wait_ready_returns_when_the_proxy_is_ready_and_fails_when_it_never_is() {
    let admin = free_port();
    let config = write_config(&format!(
        "[admin]\nlisten = \"{admin}\"\n[outbound]\nlisten = \"{}\"\n",
        free_port()
    ));
    let waiting = std::thread::spawn({
        let admin = admin.to_string();
        move || {
            Command::new(BIN)
                .args(["wait-ready", "--admin", &admin, "--timeout", "20s"])
                .output()
                .unwrap()
        }
    });
    let _proxy = start(&config, admin).await;
    let waited = tokio::task::spawn_blocking(move || waiting.join().unwrap())
        .await
        .unwrap();
    assert!(waited.status.success(), "{waited:?}");

    let nobody = free_port().to_string();
    let out = Command::new(BIN)
        .args(["wait-ready", "--admin", &nobody, "--timeout", "300ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&nobody) && err.contains("unreachable"),
        "{err}"
    );
}

/// The proxy's effective configuration (`--check` on a minimal file), flattened.
fn proxy_defaults() -> std::collections::BTreeMap<String, String> {
    let file = write_config("[inbound]\napp = \"127.0.0.1:8080\"\n");
    let out = Command::new(BIN)
        .args(["--check", "--config"])
        .arg(&file.0)
        .output()
        .unwrap();
    assert!(out.status.success());
    let effective: toml::Table = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let mut flat = std::collections::BTreeMap::new();
    flatten("", &effective, &mut flat);
    flat
}

/// The README's configuration reference states each default as the code has it: every row of
/// the table whose key the effective configuration holds (`--check` on a minimal file) shows
/// that value.
#[test]
fn the_readme_states_the_defaults_the_code_has() {
    let flat = proxy_defaults();
    let reference = readme_section("## Configuration reference");
    let (checked, _) = check_rows(&reference, &flat);
    assert!(
        checked.len() >= 25,
        "only {} rows checked: {checked:?}",
        checked.len()
    );
    // And the other way: every key the effective configuration holds has its row (a row may
    // name several keys of one section: `discovery.dns.nameservers`, `.min_ttl`, ...).
    let rows: Vec<&str> = reference
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split(" | ").next().unwrap_or_default())
        .collect();
    let undocumented: Vec<&String> = flat
        .keys()
        .filter(|key| {
            let (section, last) = key.rsplit_once('.').unwrap_or(("", key));
            !rows.iter().any(|first| {
                first.contains(&format!("`{key}`"))
                    || first.contains(&format!("`{key}[]"))
                    || (first.contains(&format!("`{section}."))
                        && first.contains(&format!(".{last}`")))
            })
        })
        .collect();
    assert!(
        undocumented.is_empty(),
        "keys the README's reference lacks: {undocumented:?}"
    );
}

/// The README's security section states each limit's default as the code has it, for the
/// proxy and (keys under `controller.`) the controller; every row names a real key.
#[test]
fn the_security_section_states_the_defaults_the_code_has() {
    let mut flat = proxy_defaults();
    // A service-level key, as the reference writes it.
    let fallback = mesh_core::timeout::DEFAULT_FALLBACK_TIMEOUT;
    flat.insert(
        "outbound.services[].timeout.fallback".into(),
        format!("\"{}\"", mesh_core::config::format_duration(fallback)),
    );
    let controller = mesh_controller::Config::from_toml_str(
        "[identity]\ntrust_anchors = \"ca.crt\"\nissuer_cert = \"i.crt\"\nissuer_key = \"i.key\"\n\
         [tokens]\nkubernetes = true\n[destination]\n",
    )
    .unwrap();
    let controller: toml::Table = toml::from_str(&toml::to_string(&controller).unwrap()).unwrap();
    flatten("controller", &controller, &mut flat);
    let section = readme_section("## Security");
    let (checked, unknown) = check_rows(&section, &flat);
    assert!(unknown.is_empty(), "rows naming no key: {unknown:?}");
    assert!(checked.len() >= 14, "only {checked:?}");
    // The defaults named in the words of a row, as `key` (`value`).
    for (key, value) in [
        ("controller.server.max_connections_per_client", "64"),
        ("controller.server.max_streams_per_client", "4000"),
        ("controller.destination.release_after", "\"30s\""),
        ("controller.tokens.review_burst", "40"),
        ("controller.tokens.review_cache_ttl", "\"60s\""),
    ] {
        assert_eq!(flat.get(key).map(String::as_str), Some(value), "{key}");
        let last = key.rsplit('.').next().unwrap_or_default();
        assert!(
            section.contains(&format!("`{last}` (`{value}`)")),
            "the security section does not state {last} = {value}"
        );
    }
}
