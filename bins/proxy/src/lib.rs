//! mesh-proxy, the sidecar: an outbound listener that balances the app's HTTP and gRPC calls
//! per request, an inbound listener in front of the app, opaque TCP services, and an admin
//! listener.
//!
//! The binary (`main.rs`) is thin wiring over this library, so that tests, the demo and other
//! binaries (the ingress) run the same proxy in-process.
//!
//! # Stacks
//!
//! ```text
//! outbound: accept -> detect (HTTP/1 | HTTP/2 | opaque: closed with a logged reason)
//!           -> hyper server -> Respond (errors -> 502/503/504 or grpc-status)
//!           -> AuthorityRouter (:authority / Host) -> [HttpService] -> Balancer (P2C, peak-EWMA)
//!           -> EndpointClient (mTLS verifying the endpoint's identity, when it has one)
//! inbound:  accept -> peek ClientHello: our SNI -> mTLS (caller's identity) | other SNI | plaintext
//!           -> authorize (port policy) -> detect -> HTTP: hyper server -> Respond -> metrics -> app
//!                                               -> opaque: TCP forward to the app
//! opaque:   accept -> round robin per connection -> (mTLS) -> TCP forward, half-close preserved
//! ```
//!
//! With an `[identity]` section the proxy makes its key in memory, sends a CSR (to the
//! controller, or to a local issuer in `local` mode), is not `/ready` until it holds a
//! certificate, and renews it in the background (mesh-tls).
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = mesh_proxy::Config::from_toml_str(r#"
//!     [outbound]
//!     listen = "127.0.0.1:0"
//!     [[outbound.services]]
//!     authority = "web:80"
//!     endpoints = ["127.0.0.1:8080"]
//! "#)?;
//! let proxy = mesh_proxy::Proxy::bind(config).await?;
//! println!("outbound on {}", proxy.outbound_addr());
//! proxy.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod config;
pub mod discovery;
pub mod inbound;
pub mod metrics;
pub mod opaque;
pub mod outbound;
pub mod routes;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use mesh_core::drain::Drain;
use mesh_metrics::tcp::{ListenerMetrics, MeteredIo};
use tokio::net::{TcpListener, TcpStream};

pub use config::Config;

/// A proxy whose listeners are bound, ready to [`run`](Proxy::run).
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    admin: TcpListener,
    outbound: TcpListener,
    inbound: Option<TcpListener>,
    opaque: Vec<(TcpListener, config::ServiceConfig)>,
    log: Option<Arc<admin::LogControl>>,
    identity: Option<(
        mesh_tls::local::LocalIdentity,
        Arc<dyn mesh_tls::local::Certify>,
    )>,
    sources: discovery::Sources,
    config_file: Option<std::path::PathBuf>,
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
}

impl Proxy {
    /// Validates the configuration and binds every listener (port 0 picks a free port).
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let admin = bind(config.admin.listen, "admin.listen").await?;
        let outbound = bind(config.outbound.listen, "outbound.listen").await?;
        let inbound = match &config.inbound {
            Some(inbound) => Some(bind(inbound.listen, "inbound.listen").await?),
            None => None,
        };
        let identity = match &config.identity {
            Some(c) => Some(identity(c)?),
            None => None,
        };
        let sources = discovery::Sources::new(&config).await?;
        let mut opaque = Vec::new();
        for svc in config.outbound.services.iter().filter(|s| s.opaque) {
            if let Some(listen) = svc.listen {
                opaque.push((bind(listen, &svc.authority).await?, svc.clone()));
            }
        }
        Ok(Self {
            config,
            admin,
            outbound,
            inbound,
            opaque,
            log: None,
            identity,
            sources,
            config_file: None,
        })
    }

    /// Watches the configuration file the proxy was started from: when it changes, the
    /// services' routes are reloaded (an invalid file is refused with a logged reason and the
    /// old routes stay).
    pub fn with_config_file(mut self, path: std::path::PathBuf) -> Self {
        self.config_file = Some(path);
        self
    }

    /// Lets the admin listener read and change the log filter (`/log-level`).
    pub fn with_log_control(mut self, log: admin::LogControl) -> Self {
        self.log = Some(Arc::new(log));
        self
    }

    /// The outbound listener's address.
    pub fn outbound_addr(&self) -> SocketAddr {
        local_addr(&self.outbound)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        local_addr(&self.admin)
    }

    /// The inbound listener's address, when there is one.
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound.as_ref().map(local_addr)
    }

    /// The listeners of opaque services, by authority.
    pub fn opaque_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.opaque
            .iter()
            .map(|(l, svc)| (svc.authority.clone(), local_addr(l)))
            .collect()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serves until `shutdown` resolves, then drains: listeners close at once (new
    /// connections are refused), requests in flight get up to `runtime.shutdown_grace`.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let drain = Drain::new();
        let ready = Arc::new(AtomicBool::new(false));
        let config = Arc::new(self.config);

        let mut registry = mesh_metrics::Metrics::new();
        let http_metrics = mesh_metrics::http::HttpMetrics::register(registry.registry_mut());
        let tcp_metrics = mesh_metrics::tcp::TcpMetrics::register(registry.registry_mut());
        spawn_idle_series_sweep(
            http_metrics.clone(),
            config.metrics.idle_series_ttl,
            drain.clone(),
        );
        let mut client = mesh_core::client::HttpClient::new(&config.client);
        let mut tls = None;
        let identity = match self.identity {
            Some((identity, ca)) => {
                let metrics = mesh_tls::metrics::IdentityMetrics::register(registry.registry_mut());
                tokio::spawn(identity.clone().renew_forever(ca, metrics));
                let connector = mesh_tls::connect::connector(&identity);
                client = client.with_tls(connector.clone());
                tls = Some(connector);
                Some(identity)
            }
            None => None,
        };
        let inbound_counters = inbound::InboundCounters::register(registry.registry_mut());
        let outbound = outbound::Outbound::new(&config, &client, &http_metrics, &self.sources)?;
        metrics::register_balancers(&mut registry, outbound.balancers().to_vec());
        metrics::register_retries(&mut registry, outbound.retries().clone());
        if let Some(path) = self.config_file {
            spawn_route_reload(path, outbound.clone(), drain.clone());
        }
        spawn_accept(
            self.outbound,
            drain.clone(),
            "outbound",
            tcp_metrics.listener("outbound", "outbound"),
            move |stream, peer, drain| outbound.clone().serve(stream, peer, drain),
        );
        if let (Some(listener), Some(inbound_config)) = (self.inbound, &config.inbound) {
            let inbound = inbound::Inbound::new(
                inbound_config,
                &config,
                &client,
                &http_metrics,
                identity.clone(),
                inbound_counters,
            );
            spawn_accept(
                listener,
                drain.clone(),
                "inbound",
                tcp_metrics.listener("inbound", "inbound"),
                move |stream, peer, drain| inbound.clone().serve(stream, peer, drain),
            );
        }
        for (listener, svc) in self.opaque {
            let forward =
                opaque::OpaqueService::new(&svc, config.client.connect_timeout, tls.clone())?;
            let listener_metrics = tcp_metrics.listener("outbound", &svc.authority);
            spawn_accept(
                listener,
                drain.clone(),
                "opaque",
                listener_metrics,
                move |stream, peer, _| forward.clone().serve(stream, peer),
            );
        }
        let shutdown_requested = config
            .admin
            .enable_shutdown
            .then(|| Arc::new(tokio::sync::Notify::new()));
        let admin = admin::Admin::new(
            ready.clone(),
            config.clone(),
            Arc::new(registry),
            self.log.clone(),
            shutdown_requested.clone(),
        );
        spawn_accept(
            self.admin,
            drain.clone(),
            "admin",
            tcp_metrics.listener("inbound", "admin"),
            move |stream, peer, drain| admin.clone().serve(stream, peer, drain),
        );

        match identity {
            None => {
                ready.store(true, Ordering::Release);
                tracing::info!("proxy ready");
            }
            // Not ready until the certificate arrives: peers could not handshake before.
            Some(identity) => {
                let ready = ready.clone();
                let drain = drain.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = identity.ready() => {
                            ready.store(true, Ordering::Release);
                            tracing::info!(identity = %identity.name(), "proxy ready: certificate in hand");
                        }
                        _ = drain.signaled() => {}
                    }
                });
            }
        }
        match shutdown_requested {
            Some(requested) => {
                tokio::select! {
                    _ = shutdown => {}
                    _ = requested.notified() => {}
                }
            }
            None => shutdown.await,
        }
        ready.store(false, Ordering::Release);
        let grace = config.runtime.shutdown_grace;
        tracing::info!(
            ?grace,
            "shutting down: listeners closed, draining connections"
        );
        if drain.drain(grace).await {
            tracing::info!("drained");
        } else {
            tracing::warn!(?grace, "grace period over: closing the connections left");
        }
        Ok(())
    }
}

/// The workload's identity and what certifies it, as configured.
fn identity(
    c: &config::IdentityConfig,
) -> anyhow::Result<(
    mesh_tls::local::LocalIdentity,
    Arc<dyn mesh_tls::local::Certify>,
)> {
    let trust = mesh_tls::cert::TrustAnchors::from_pem_file(&c.trust_anchors)
        .context("identity.trust_anchors")?;
    let ca: Arc<dyn mesh_tls::local::Certify> = match c.mode {
        config::IdentityMode::Local => {
            let (Some(cert), Some(key)) = (&c.issuer_cert, &c.issuer_key) else {
                anyhow::bail!("identity: local mode needs issuer_cert and issuer_key");
            };
            mesh_tls::local::local_ca(cert, key, c.lifetime, &trust)
                .context("identity.issuer_cert")?
        }
        config::IdentityMode::Controller => {
            let (Some(addr), Some(controller), Some(token)) =
                (c.controller, &c.controller_identity, &c.token_file)
            else {
                anyhow::bail!(
                    "identity: controller mode needs controller, controller_identity and token_file"
                );
            };
            Arc::new(
                mesh_tls::api::ControllerClient::new(
                    addr,
                    controller,
                    &trust,
                    token.clone(),
                    c.certify_timeout,
                )
                .context("identity.controller")?,
            )
        }
    };
    let identity = mesh_tls::local::LocalIdentity::new(c.name.clone(), trust)?;
    Ok((identity, ca))
}

/// How often the configuration file is compared with what was loaded.
const CONFIG_POLL: Duration = Duration::from_secs(1);

/// Reloads routes when the configuration file's content changes.
fn spawn_route_reload(path: std::path::PathBuf, outbound: outbound::Outbound, drain: Drain) {
    tokio::spawn(async move {
        let mut last = std::fs::read(&path).ok();
        let mut ticks = tokio::time::interval(CONFIG_POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.signaled() => return,
                _ = ticks.tick() => {}
            }
            let now = std::fs::read(&path).ok();
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            match Config::load(Some(&path)) {
                Ok(config) => outbound.reload_routes(&config),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "the configuration file changed but does not load; keeping the old routes"
                ),
            }
        }
    });
}

/// Detects what a client speaks; `None` (logged) when it closed before saying anything.
async fn detect_protocol<I>(
    stream: &mut I,
    timeout: Duration,
    peer: SocketAddr,
    side: &'static str,
) -> Option<(mesh_core::detect::Protocol, bytes::Bytes)>
where
    I: tokio::io::AsyncRead + Unpin,
{
    match mesh_core::detect::detect(stream, timeout).await {
        Ok(detected) => Some(detected),
        Err(e) => {
            tracing::debug!(%peer, error = %e, side, "connection closed during detection");
            None
        }
    }
}

/// Drops request series unused for `ttl`, checking every half of it (at most every minute).
fn spawn_idle_series_sweep(metrics: mesh_metrics::http::HttpMetrics, ttl: Duration, drain: Drain) {
    let every = (ttl / 2).min(Duration::from_secs(60));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.signaled() => return,
                _ = ticks.tick() => {
                    let dropped = metrics.drop_idle(ttl);
                    if dropped > 0 {
                        tracing::debug!(dropped, "idle request series dropped");
                    }
                }
            }
        }
    });
}

/// Accepts until draining starts, then drops the listener so new connections are refused.
fn spawn_accept<F, Fut>(
    listener: TcpListener,
    drain: Drain,
    name: &'static str,
    metrics: ListenerMetrics,
    mut handle: F,
) where
    F: FnMut(MeteredIo<TcpStream>, SocketAddr, Drain) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = drain.signaled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    mesh_core::tcp::keep_alive(&stream);
                    drain.spawn(handle(metrics.accepted(stream), peer, drain.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::debug!(listener = name, "listener closed");
    });
}
