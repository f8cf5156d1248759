//! mesh-proxy, the sidecar: an outbound listener that balances the app's HTTP and gRPC calls
//! per request, an inbound listener in front of the app, opaque TCP services, and an admin
//! listener. This crate is wiring: the stacks are mesh-stack's builders, the configuration is
//! made of mesh-stack's sections ([`config`]).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = mesh_proxy::Config::from_toml_str(
//!     "[[outbound.services]]\nauthority = \"web:80\"\nendpoints = [\"127.0.0.1:8080\"]",
//! )?;
//! let proxy = mesh_proxy::Proxy::bind(config).await?;
//! println!("outbound on {}", proxy.outbound_addr());
//! proxy.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

pub mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, atomic::AtomicBool};

use mesh_core::drain::Drain;
use mesh_stack::serve::{bind, local_addr, spawn_accept};
use mesh_stack::{Shared, admin, inbound, opaque, outbound};
use tokio::net::TcpListener;

pub use config::Config;
pub use mesh_stack::admin::LogControl;

/// A proxy whose listeners are bound, ready to [`run`](Proxy::run).
#[derive(Debug)]
pub struct Proxy {
    config: Config,
    admin: TcpListener,
    outbound: TcpListener,
    inbound: Option<TcpListener>,
    opaque: Vec<(TcpListener, config::ServiceConfig)>,
    log: Option<Arc<LogControl>>,
    identity: Option<(
        mesh_tls::local::LocalIdentity,
        Arc<dyn mesh_tls::local::Certify>,
    )>,
    sources: mesh_stack::discovery::Sources,
    config_file: Option<std::path::PathBuf>,
}

impl Proxy {
    /// Validates the configuration and binds every listener (port 0 picks a free port).
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        mesh_core::retry::set_buffer_limit(config.runtime.retry_buffer_limit);
        let admin = bind(config.admin.listen, "admin.listen").await?;
        let outbound = bind(config.outbound.listen, "outbound.listen").await?;
        let inbound = match &config.inbound {
            Some(inbound) => Some(bind(inbound.listen, "inbound.listen").await?),
            None => None,
        };
        let identity = config
            .identity
            .as_ref()
            .map(mesh_stack::identity::from_config)
            .transpose()?;
        let id = identity.as_ref().map(|i| &i.0);
        let workload = mesh_stack::discovery::Workload::of(config.identity.as_ref(), id);
        let services = &config.outbound.services;
        let sources = mesh_stack::discovery::Sources::new(services, &config.discovery, workload)
            .await?
            .with_lookup(config.outbound.lookup, &config.discovery, workload)
            .await?;
        let mut opaque = Vec::new();
        for svc in services.iter().filter(|s| s.opaque) {
            if let Some(listen) = svc.listen {
                opaque.push((bind(listen, &svc.authority).await?, svc.clone()));
            }
        }
        Ok(Self {
            identity,
            config,
            admin,
            outbound,
            inbound,
            opaque,
            log: None,
            sources,
            config_file: None,
        })
    }

    /// Watches the configuration file the proxy was started from: when it changes, the
    /// services' routes are reloaded (an invalid file is refused with a logged reason and the
    /// old routes stay).
    pub fn with_config_file(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.config_file = path;
        self
    }

    /// Lets the admin listener read and change the log filter (`/log-level`).
    pub fn with_log_control(mut self, log: LogControl) -> Self {
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
        let addr = |(l, svc): &(TcpListener, config::ServiceConfig)| {
            (svc.authority.clone(), local_addr(l))
        };
        self.opaque.iter().map(addr).collect()
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
        let (drain, ready) = (Drain::new(), Arc::new(AtomicBool::new(false)));
        let config = Arc::new(self.config);
        let mut metrics = mesh_metrics::Metrics::new();
        let registry = metrics.registry_mut();
        let http_metrics = mesh_metrics::http::HttpMetrics::register(registry);
        let tcp_metrics = mesh_metrics::tcp::TcpMetrics::register(registry);
        let cap = config.server.max_connections;
        let ttl = config.metrics.idle_series_ttl;
        mesh_stack::serve::spawn_idle_series_sweep(http_metrics.clone(), ttl, drain.clone());
        let mut shared = Shared::new(config.workload.clone(), &config.client, &config.server);
        if config.metrics.requests {
            shared = shared.with_request_metrics(http_metrics);
        }
        let mut tls = None;
        let identity = self.identity.map(|(identity, certify)| {
            tls = Some(mesh_stack::identity::start(&identity, certify, registry));
            identity
        });
        if let Some(tls) = &tls {
            shared = shared.with_tls(tls.clone());
        }
        let inbound_counters = inbound::InboundCounters::register(registry);
        let balancers = mesh_balance::metrics::BalancerMetrics::register(registry);
        let retries = mesh_metrics::retry::RetryMetrics::register(registry);
        // Shared, not copied, by every connection's task.
        let outbound = Arc::new(outbound::Outbound::new(
            &config.outbound,
            &shared,
            &self.sources,
            &balancers,
            retries,
        )?);
        if let Some(path) = self.config_file {
            let load = |path: &std::path::Path| {
                Config::load(Some(path)).map(|c| c.outbound.services.to_vec())
            };
            outbound.reload_on_change(path, drain.clone(), load);
        }
        spawn_accept(
            self.outbound,
            drain.clone(),
            "outbound",
            (tcp_metrics.listener("outbound", "outbound"), cap),
            move |stream, peer, drain| outbound.clone().serve_accepted(stream, peer, drain),
        );
        if let (Some(l), Some(inbound_config)) = (self.inbound, &config.inbound) {
            let inbound = Arc::new(inbound::Inbound::new(
                inbound_config,
                &shared,
                identity.clone(),
                inbound_counters,
            ));
            spawn_accept(
                l,
                drain.clone(),
                "inbound",
                (tcp_metrics.listener("inbound", "inbound"), cap),
                move |stream, peer, drain| inbound.clone().serve_accepted(stream, peer, drain),
            );
        }
        for (l, svc) in self.opaque {
            let forward =
                opaque::OpaqueService::new(&svc, config.client.connect_timeout, tls.clone())?;
            spawn_accept(
                l,
                drain.clone(),
                "opaque",
                (tcp_metrics.listener("outbound", &svc.authority), cap),
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
            Arc::new(metrics),
            self.log.clone(),
            shutdown_requested.clone(),
        );
        spawn_accept(
            self.admin,
            drain.clone(),
            "admin",
            (tcp_metrics.listener("inbound", "admin"), cap),
            move |stream, peer, drain| admin.clone().serve(stream, peer, drain),
        );
        mesh_stack::serve::spawn_readiness(identity, ready.clone(), drain.clone());
        // Loading the configuration peaked well above what stays (the parser's tokens and
        // tree): hand those pages back before serving (0.74 KB per configured service).
        mesh_heap::release_free_memory();
        let grace = config.runtime.shutdown_grace;
        mesh_stack::serve::shutdown_and_drain(shutdown, shutdown_requested, &ready, drain, grace)
            .await;
        Ok(())
    }
}
