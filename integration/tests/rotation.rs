//! Certificate rotation under load, with the real controller: 10 s leaves, 40 s of gRPC
//! traffic between two proxies, the issuer files replaced mid-run, and the controller stopped
//! and restarted. Not one request may fail.
//!
//! Beside the traffic between the proxies (one long-lived mTLS connection), probes open a
//! fresh mTLS connection to each proxy twice a second and make a gRPC call on it, so every
//! certificate the proxies hold is used in real handshakes, and the chain each presents is
//! recorded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use mesh_core::identity::Identity;
use mesh_core::transport::Alpn;
use mesh_examples::demo::{self, Greeter, GreeterConfig, Replica};
use mesh_examples::pb::HelloRequest;
use mesh_integration::mtls::{Pki, logs, wait_ready};
use mesh_integration::{RunningProxy, scrape_metrics, start_proxy_toml};
use mesh_tls::local::LocalIdentity;
use rustls_pki_types::CertificateDer;
use tokio::sync::oneshot;

const LEAF_LIFETIME: &str = "10s";
const RUN: Duration = Duration::from_secs(40);

struct Controller {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_controller(pki: &Pki, tokens: &Path, listen: &str) -> Controller {
    let toml = format!(
        "listen = \"{listen}\"\n[identity]\ntrust_anchors = \"{}\"\nissuer_cert = \"{}\"\n\
         issuer_key = \"{}\"\nleaf_lifetime = \"{LEAF_LIFETIME}\"\nissuer_poll = \"500ms\"\n\
         [tokens]\nfile = \"{}\"\n",
        pki.anchors().display(),
        pki.issuer_cert().display(),
        pki.issuer_key().display(),
        tokens.display(),
    );
    let config = mesh_controller::Config::from_toml_str(&toml).unwrap();
    let controller = mesh_controller::Controller::bind(config).await.unwrap();
    let addr = controller.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(controller.run(async move {
        let _ = stopped.await;
    }));
    Controller {
        addr,
        stop: Some(stop),
        done,
    }
}

impl Controller {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.done).await;
        self.done.abort();
    }
}

fn controller_identity() -> Identity {
    Identity::parse("spiffe://cluster.local/ns/mesh-system/sa/mesh-controller").unwrap()
}

/// A proxy in controller mode named `name`, fronting `app`, with `extra` TOML.
async fn proxy(
    pki: &Pki,
    name: &Identity,
    controller: SocketAddr,
    token: &Path,
    app: SocketAddr,
    extra: &str,
) -> RunningProxy {
    let toml = format!(
        "[identity]\nmode = \"controller\"\nname = \"{name}\"\ntrust_anchors = \"{}\"\n\
         controller = \"{controller}\"\ncontroller_identity = \"{}\"\ntoken_file = \"{}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\n\
         [outbound]\nlisten = \"127.0.0.1:0\"\n{extra}",
        pki.anchors().display(),
        controller_identity(),
        token.display(),
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    assert!(
        wait_ready(proxy.admin).await,
        "{name} never got a certificate"
    );
    proxy
}

/// `identity_cert_renewals_total` and `..._failures_total` of a proxy.
async fn renewals(admin: SocketAddr) -> (u64, u64) {
    let (_, text) = scrape_metrics(admin, None).await.unwrap();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        value("identity_cert_renewals_total "),
        value("identity_cert_renewal_failures_total "),
    )
}

/// Polls every 100 ms, for at most `within`, until `check` holds for every admin listener.
async fn until<F>(admins: &[SocketAddr], within: Duration, what: &str, check: F)
where
    F: Fn((u64, u64)) -> bool,
{
    let deadline = Instant::now() + within;
    loop {
        let mut all = true;
        for admin in admins {
            all &= check(renewals(*admin).await);
        }
        if all {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// The issuer certificate each proxy presented in the latest probe, by proxy.
    issuers: Mutex<Vec<(String, CertificateDer<'static>)>>,
}

impl Tally {
    fn record(&self, what: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut errors = self.errors.lock().unwrap();
                if errors.len() < 20 {
                    errors.push(format!("{what}: {e}"));
                }
            }
        }
    }

    fn issuer_of(&self, proxy: &str) -> Option<CertificateDer<'static>> {
        self.issuers
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(p, _)| p == proxy)
            .map(|(_, c)| c.clone())
    }
}

/// One gRPC call on a fresh mTLS connection to `addr`, which must prove `server`; records the
/// issuer of the chain it presented.
async fn probe(
    me: &LocalIdentity,
    addr: SocketAddr,
    server: &Identity,
    tally: &Tally,
) -> Result<(), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = mesh_tls::connect::MeshConnector::new(me.clone())
        .full_handshakes()
        .handshake(tcp, server, Alpn::H2)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if let Some(issuer) = tls.get_ref().1.peer_certificates().and_then(|c| c.get(1)) {
        tally
            .issuers
            .lock()
            .unwrap()
            .push((server.uri().to_owned(), issuer.clone().into_owned()));
    }
    let mut io = Some(TokioIo::new(tls));
    let channel = tonic::transport::Endpoint::from_static("http://greeter:80")
        .connect_with_connector(tower::service_fn(move |_| {
            let io = io.take();
            async move { io.ok_or_else(|| std::io::Error::other("one connection per probe")) }
        }))
        .await
        .map_err(|e| format!("h2: {e}"))?;
    demo::greeter_client(channel)
        .say_hello(HelloRequest {
            name: "probe".into(),
            ..HelloRequest::default()
        })
        .await
        .map(|_| ())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Two proxies (a calls b) and a probe, each certified by the controller, under load: four
/// gRPC callers through a to b over one long-lived mTLS connection, and the probe opening a
/// fresh mTLS connection to each proxy twice a second.
struct Load {
    controller: Option<Controller>,
    a: RunningProxy,
    b: RunningProxy,
    web: Identity,
    api: Identity,
    tokens: std::path::PathBuf,
    me: LocalIdentity,
    trust: mesh_tls::cert::TrustAnchors,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    renew: tokio::task::JoinHandle<()>,
    start: Instant,
}

async fn mesh_under_load(pki: &Pki) -> Load {
    let (web, api, probe_id) = (
        pki.identity("demo", "web"),
        pki.identity("demo", "api"),
        pki.identity("demo", "probe"),
    );
    let tokens = pki.dir.join("tokens.txt");
    std::fs::write(
        &tokens,
        format!("{web} token-web\n{api} token-api\n{probe_id} token-probe\n"),
    )
    .unwrap();
    let token = |name: &str| {
        let path = pki.dir.join(format!("{name}.token"));
        std::fs::write(&path, format!("token-{name}\n")).unwrap();
        path
    };
    let (web_token, api_token, probe_token) = (token("web"), token("api"), token("probe"));

    let controller = start_controller(pki, &tokens, "127.0.0.1:0").await;
    let controller_addr = controller.addr;
    let greeter_b = Replica::spawn_greeter(Greeter::new(GreeterConfig::new("b")))
        .await
        .unwrap();
    let greeter_a = Replica::spawn_greeter(Greeter::new(GreeterConfig::new("a")))
        .await
        .unwrap();
    let b = proxy(pki, &api, controller_addr, &api_token, greeter_b.addr(), "").await;
    let a = proxy(
        pki,
        &web,
        controller_addr,
        &web_token,
        greeter_a.addr(),
        &format!(
            "[[outbound.services]]\nauthority = \"greeter:80\"\n\
             endpoints = [{{ addr = \"{}\", identity = \"{api}\" }}]\n",
            b.inbound.unwrap()
        ),
    )
    .await;
    // The greeters live as long as the test's runtime.
    std::mem::forget((greeter_a, greeter_b));

    // The probe is a workload too: it gets and renews its certificate from the controller.
    let trust = mesh_tls::cert::TrustAnchors::from_pem_file(&pki.anchors()).unwrap();
    let me = LocalIdentity::new(probe_id.clone(), trust.clone()).unwrap();
    let ca = mesh_tls::api::ControllerClient::new(
        &controller_addr.to_string(),
        &controller_identity(),
        &trust,
        probe_token,
        Duration::from_secs(5),
    )
    .unwrap();
    let renew = tokio::spawn(
        me.clone()
            .renew_forever(Arc::new(ca), mesh_tls::metrics::IdentityMetrics::default()),
    );
    tokio::time::timeout(Duration::from_secs(10), me.ready())
        .await
        .expect("the probe never got a certificate");

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (tally, stop) = (tally.clone(), stop.clone());
        let outbound = a.outbound;
        tasks.push(tokio::spawn(async move {
            let mut client =
                demo::greeter_client(demo::mesh_channel(outbound, "greeter:80").unwrap());
            while !stop.load(Ordering::Relaxed) {
                let result = client
                    .say_hello(HelloRequest {
                        name: "rotation".into(),
                        ..HelloRequest::default()
                    })
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()));
                tally.record("a -> b", result);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    {
        let (tally, stop, me) = (tally.clone(), stop.clone(), me.clone());
        let targets = [
            (a.inbound.unwrap(), web.clone()),
            (b.inbound.unwrap(), api.clone()),
        ];
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // The probe renews its own 10 s certificate from the controller too: while the
                // controller is down its certificate can lapse, and then the proxies rightly
                // refuse it. That says nothing of the proxies, so the probe waits for a
                // certificate of its own that will outlast the handshake.
                let lapsed = me.valid_until().is_none_or(|until| {
                    until <= std::time::SystemTime::now() + Duration::from_secs(1)
                });
                if lapsed {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                for (addr, server) in &targets {
                    let result = tokio::time::timeout(
                        Duration::from_secs(5),
                        probe(&me, *addr, server, &tally),
                    )
                    .await
                    .unwrap_or_else(|_| Err("no answer within 5 s".into()));
                    tally.record(&format!("probe {server}"), result);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    Load {
        controller: Some(controller),
        a,
        b,
        web,
        api,
        tokens,
        me,
        trust,
        tally,
        stop,
        tasks,
        renew,
        start,
    }
}

impl Load {
    /// Stops the load; the requests that succeeded, and those that failed with why.
    async fn finish(self) -> (u64, u64, Vec<String>, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = task.await;
        }
        let ran = self.start.elapsed();
        self.renew.abort();
        if let Some(controller) = self.controller {
            controller.stop().await;
        }
        let errors = self.tally.errors.lock().unwrap().clone();
        (
            self.tally.ok.load(Ordering::Relaxed),
            self.tally.failed.load(Ordering::Relaxed),
            errors,
            ran,
        )
    }

    /// Waits until both proxies present leaves of `issuer` in fresh handshakes.
    async fn until_proxies_present(&self, issuer: &CertificateDer<'static>, within: Duration) {
        let deadline = Instant::now() + within;
        while [self.web.uri(), self.api.uri()]
            .iter()
            .any(|p| self.tally.issuer_of(p).as_ref() != Some(issuer))
        {
            if Instant::now() >= deadline {
                let issuer_lines = logs().lines_with("issuer");
                let errors = self.tally.errors.lock().unwrap().clone();
                panic!(
                    "the proxies still present leaves of another issuer: {issuer_lines:?}; \
                     ok {} failed {}: {errors:#?}",
                    self.tally.ok.load(Ordering::Relaxed),
                    self.tally.failed.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|c: CertificateDer<'_>| c.into_owned())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_with_zero_failed_requests() {
    logs();
    let pki = Pki::new().unwrap();
    let mut load = mesh_under_load(&pki).await;
    let admins = [load.a.admin, load.b.admin];
    let controller_addr = load.controller.as_ref().unwrap().addr;
    let start = load.start;

    // 1. Renewals happen: the first one after about 9 s.
    until(
        &admins,
        Duration::from_secs(20),
        "a first renewal",
        |(r, _)| r >= 2,
    )
    .await;

    // 2. The issuer files are replaced: new leaves chain to the new issuer.
    let old_issuer = load
        .tally
        .issuer_of(load.api.uri())
        .expect("a probe saw b's chain");
    let new_issuer = der_of(&pki.rotate_issuer().unwrap());
    assert_ne!(old_issuer, new_issuer);
    load.until_proxies_present(&new_issuer, Duration::from_secs(25))
        .await;

    // 3. The controller stops: renewals fail, traffic goes on with the certificates held;
    // it comes back on the same address and renewals resume.
    let before = [renewals(admins[0]).await, renewals(admins[1]).await];
    load.controller.take().unwrap().stop().await;
    let stopped_at = Instant::now();
    until(
        &admins,
        Duration::from_secs(12),
        "a failed renewal while the controller is down",
        |(_, f)| f >= 1,
    )
    .await;
    let down_for = stopped_at.elapsed();
    load.controller =
        Some(start_controller(&pki, &load.tokens, &controller_addr.to_string()).await);
    // Each proxy renews again (its own count goes past what it was when the controller
    // stopped).
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, admin) in admins.iter().enumerate() {
        while renewals(*admin).await.0 <= before[i].0 {
            assert!(
                Instant::now() < deadline,
                "proxy {i} did not renew after the controller came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // 4. The rest of the 40 s.
    if let Some(left) = RUN.checked_sub(start.elapsed()) {
        tokio::time::sleep(left).await;
    }
    // The proxies stop with the load: their counts first.
    let renewed = [renewals(admins[0]).await, renewals(admins[1]).await];
    let (ok, failed, errors, ran) = load.finish().await;
    assert_eq!(failed, 0, "{failed} failed of {}: {errors:#?}", ok + failed);
    assert!(ok > 1000, "only {ok} requests in {ran:?}");
    for (r, f) in renewed {
        // The first certificate, then at least three renewals.
        assert!(r >= 4, "{r} certificates in {ran:?} ({f} failures)");
    }
    eprintln!(
        "rotation: {ok} requests in {ran:?}, 0 failed; controller down for {down_for:?}; \
         renewals a={:?} b={:?}",
        renewed[0], renewed[1]
    );
}

/// `/ready`'s status code.
async fn ready_status(admin: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_is_ready_only_while_it_holds_a_valid_certificate() {
    logs();
    let pki = Pki::new().unwrap();
    let web = pki.identity("demo", "web");
    let tokens = pki.dir.join("tokens.txt");
    std::fs::write(&tokens, format!("{web} token-web\n")).unwrap();
    let token = pki.dir.join("web.token");
    std::fs::write(&token, "token-web").unwrap();
    // An address where no controller listens yet.
    let spot = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let controller_addr = spot.local_addr().unwrap();
    drop(spot);

    let app = mesh_integration::hello_backend().await.unwrap();
    let toml = format!(
        "[identity]\nmode = \"controller\"\nname = \"{web}\"\ntrust_anchors = \"{}\"\n\
         controller = \"{controller_addr}\"\ncontroller_identity = \"{}\"\ntoken_file = \"{}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\n\
         [outbound]\nlisten = \"127.0.0.1:0\"\n",
        pki.anchors().display(),
        controller_identity(),
        token.display(),
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    // Without a controller: failures pile up and the proxy stays unready.
    until(
        &[proxy.admin],
        Duration::from_secs(10),
        "failed attempts",
        |(_, f)| f >= 2,
    )
    .await;
    assert_eq!(ready_status(proxy.admin).await, Some(503));
    assert_eq!(renewals(proxy.admin).await.0, 0);
    // Inbound handshakes fail meanwhile: there is no certificate to present.
    let client = pki
        .issue(
            &pki.identity("demo", "api"),
            std::time::SystemTime::now(),
            Duration::from_secs(60),
        )
        .unwrap();
    let config =
        mesh_integration::mtls::client_config(Some(&client), &pki.anchors(), &[b"h2"]).unwrap();
    assert!(
        mesh_integration::mtls::tls_connect(proxy.inbound.unwrap(), &web, config)
            .await
            .is_err()
    );

    // The controller arrives: the proxy gets its certificate and becomes ready.
    let controller = start_controller(&pki, &tokens, &controller_addr.to_string()).await;
    assert!(
        wait_ready(proxy.admin).await,
        "never ready after the controller came"
    );
    assert_eq!(renewals(proxy.admin).await.0, 1);
    let valid = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("identity_cert_valid "))
            .map(|v| v.trim().to_owned())
    };
    let (_, text) = scrape_metrics(proxy.admin, None).await.unwrap();
    assert_eq!(valid(&text).as_deref(), Some("1"));

    // The controller goes away for longer than a leaf lives: when the certificate expires
    // unrenewed, the proxy is not ready any more, and says why in its metrics.
    controller.stop().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready_status(proxy.admin).await != Some(503) {
        assert!(
            Instant::now() < deadline,
            "still ready with an expired certificate"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, text) = scrape_metrics(proxy.admin, None).await.unwrap();
    assert_eq!(valid(&text).as_deref(), Some("0"), "{text}");

    // It comes back: a renewal, and ready again.
    let controller = start_controller(&pki, &tokens, &controller_addr.to_string()).await;
    assert!(wait_ready(proxy.admin).await, "never ready again");
    let (_, text) = scrape_metrics(proxy.admin, None).await.unwrap();
    assert_eq!(valid(&text).as_deref(), Some("1"));
    controller.stop().await;
}

/// A root rotation through the trust anchors file under steady load: the file becomes a
/// bundle of the old and the new root, the issuer moves under the new root, then the file
/// holds the new root alone. The controller, both proxies and the probe follow the file with
/// no restart; fresh handshakes happen all along; not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_anchor_rotates_under_load_with_zero_failed_requests() {
    let logs = logs();
    let pki = Pki::new().unwrap();
    let load = mesh_under_load(&pki).await;
    // The probe follows the file as the proxies and the controller do.
    load.trust.watch(pki.anchors(), Duration::from_millis(200));
    let reloads = || logs.lines_with("trust anchors reloaded").len();
    // Four followers of one file: the controller, a, b and the probe.
    let until_reloaded = |n: usize, what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while reloads() < n {
            assert!(Instant::now() < deadline, "{what}: {} reloads", reloads());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let old_root = std::fs::read_to_string(pki.anchors()).unwrap();
    let new = mesh_tls::ca::bootstrap(
        "cluster.local",
        Duration::from_secs(365 * 86400),
        Duration::from_secs(30 * 86400),
        std::time::SystemTime::now(),
    )
    .unwrap();
    let replace_anchors = |pem: &str| {
        let tmp = pki.dir.join(".ca.crt.tmp");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, pki.anchors()).unwrap();
    };

    // 1. Both roots.
    let before = reloads();
    replace_anchors(&format!("{old_root}{}", new.anchor_pem));
    until_reloaded(before + 4, "the bundle").await;

    // 2. The issuer moves under the new root; every leaf is re-issued under it, the
    // controller's own and the probe's included.
    pki.write_issuer(&new.issuer_cert_pem, &new.issuer_key_pem)
        .unwrap();
    let new_issuer = der_of(&new.issuer_cert_pem);
    load.until_proxies_present(&new_issuer, Duration::from_secs(30))
        .await;
    let controller = load.controller.as_ref().unwrap().addr;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe_on_new = load
            .me
            .chain()
            .is_some_and(|c| c.get(1) == Some(&new_issuer));
        let tcp = tokio::net::TcpStream::connect(controller).await.unwrap();
        let tls = mesh_tls::connect::MeshConnector::new(load.me.clone())
            .full_handshakes()
            .handshake(tcp, &controller_identity(), Alpn::H2)
            .await
            .unwrap();
        let controller_on_new = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.get(1))
            .is_some_and(|i| *i == new_issuer);
        if probe_on_new && controller_on_new {
            break;
        }
        assert!(Instant::now() < deadline, "leaves still under the old root");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // 3. The new root alone; fresh handshakes go on for a while under it.
    let before = reloads();
    replace_anchors(&new.anchor_pem);
    until_reloaded(before + 4, "the new root alone").await;
    let handshakes = load.tally.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(load.tally.ok.load(Ordering::Relaxed) > handshakes);

    let (ok, failed, errors, ran) = load.finish().await;
    assert_eq!(failed, 0, "{failed} failed of {}: {errors:#?}", ok + failed);
    assert!(ok > 500, "only {ok} requests in {ran:?}");
    eprintln!("trust anchor rotation: {ok} requests in {ran:?}, 0 failed");
}
