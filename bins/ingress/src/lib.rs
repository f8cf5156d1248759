//! mesh-ingress, the edge into the mesh: TLS for the outside world (certificates chosen by
//! SNI, reloaded when their files change), routes by host and path to mesh services (reloaded
//! with the configuration file), per-request balancing with the sidecar's balancer, mutual
//! TLS into the mesh with the ingress's own identity, gRPC-Web, and the golden metrics. This
//! crate is wiring: the stack is [`mesh_stack::ingress`], the edge's layers are mesh-edge's,
//! the configuration is made of mesh-stack's sections ([`config`]).
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let config = mesh_ingress::Config::from_toml_str_with_env(
//!     r#"
//!     [http]
//!     listen = "127.0.0.1:8080"
//!     [[routes]]
//!     hostnames = ["web.example.com"]
//!     backends = [{ service = "web:80" }]
//!     [[services]]
//!     authority = "web:80"
//!     endpoints = ["127.0.0.1:9001"]
//!     plaintext = true
//!     "#,
//!     std::env::vars(),
//! )?;
//! let ingress = mesh_ingress::IngressServer::bind(config).await?;
//! ingress.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

pub mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, atomic::AtomicBool};

use mesh_core::drain::Drain;
use mesh_stack::serve::{bind, local_addr, spawn_accept};
use mesh_stack::{Shared, admin};
use mesh_tls::serving::ServingCert;
use mesh_tls::sni::{LiveCertificates, SniCertificates};
use tokio::net::TcpListener;

pub use config::Config;
pub use mesh_stack::admin::LogControl;

/// An ingress whose listeners are bound, ready to [`run`](IngressServer::run).
#[derive(Debug)]
pub struct IngressServer {
    config: Config,
    admin: TcpListener,
    https: Option<(TcpListener, Certificates)>,
    http: Option<TcpListener>,
    log: Option<Arc<LogControl>>,
    identity: Option<(
        mesh_tls::local::LocalIdentity,
        Arc<dyn mesh_tls::local::Certify>,
    )>,
    sources: mesh_stack::discovery::Sources,
    config_file: Option<std::path::PathBuf>,
    access_log: Option<mesh_edge::access_log::AccessLog>,
}

impl IngressServer {
    /// Validates the configuration, loads the certificates and binds every listener (port 0
    /// picks a free port).
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        mesh_core::retry::set_buffer_limit(config.runtime.retry_buffer_limit);
        let admin = bind(config.admin.listen, "admin.listen").await?;
        let https = match &config.https {
            Some(https) => {
                let certs = certificates(https)?;
                Some((bind(https.listen, "https.listen").await?, certs))
            }
            None => None,
        };
        let http = match &config.http {
            Some(http) => Some(bind(http.listen, "http.listen").await?),
            None => None,
        };
        let identity = config
            .identity
            .as_ref()
            .map(mesh_stack::identity::from_config)
            .transpose()?;
        let id = identity.as_ref().map(|i| &i.0);
        let workload = mesh_stack::discovery::Workload::of(config.identity.as_ref(), id);
        let mut services = config.services.clone();
        services.extend(
            config
                .kubernetes
                .as_ref()
                .map(config::GatewayConfig::template),
        );
        let sources =
            mesh_stack::discovery::Sources::new(&services, &config.discovery, workload).await?;
        Ok(Self {
            config,
            admin,
            https,
            http,
            log: None,
            identity,
            sources,
            config_file: None,
            access_log: None,
        })
    }

    /// Watches the configuration file: when it changes, the routes are reloaded (a file
    /// that does not load, or routes that name unknown services, keep the old routes).
    pub fn with_config_file(mut self, path: Option<std::path::PathBuf>) -> Self {
        self.config_file = path;
        self
    }

    /// Lets the admin listener read and change the log filter (`/log-level`).
    pub fn with_log_control(mut self, log: LogControl) -> Self {
        self.log = Some(Arc::new(log));
        self
    }

    /// Writes the access log to `log` instead of standard output.
    pub fn with_access_log(mut self, log: mesh_edge::access_log::AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }

    /// The TLS listener's address, when there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(|(l, _)| local_addr(l))
    }

    /// The plaintext listener's address, when there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(local_addr)
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        local_addr(&self.admin)
    }

    /// Serves until `shutdown` resolves, then drains: listeners close at once, requests in
    /// flight get up to `runtime.shutdown_grace`.
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
        let counters = mesh_stack::ingress::IngressCounters::register(registry);
        let balancers = mesh_balance::metrics::BalancerMetrics::register(registry);
        let retries = mesh_metrics::retry::RetryMetrics::register(registry);
        let ttl = config.metrics.idle_series_ttl;
        mesh_stack::serve::spawn_idle_series_sweep(http_metrics.clone(), ttl, drain.clone());
        let mut shared = Shared::new(config.workload.clone(), &config.client, &config.server);
        if config.metrics.requests {
            shared = shared.with_request_metrics(http_metrics);
        }
        let identity = self.identity.map(|(identity, certify)| {
            shared = shared
                .clone()
                .with_tls(mesh_stack::identity::start(&identity, certify, registry));
            identity
        });
        let mut ingress = mesh_stack::ingress::Ingress::new(
            &config.routes,
            &config.services,
            &config.edge,
            &shared,
            &self.sources,
            (&balancers, retries, counters),
        )?;
        if let Some(log) = self.access_log {
            ingress = ingress.with_access_log(log);
        }
        if let Some(path) = self.config_file {
            let load = |path: &std::path::Path| Config::load(Some(path)).map(|c| c.routes);
            ingress.reload_on_change(path, drain.clone(), load);
        }
        let certs = self.https.as_ref().map(|(_, certs)| certs.clone());
        if let Some(k8s) = &config.kubernetes {
            let client = mesh_stack::discovery::kube_client(&config.discovery).await?;
            ingress =
                ingress.with_services_on_demand(k8s.template(), self.sources, &shared, &balancers);
            watch_gateway(&config, k8s, client, &ingress, certs, drain.clone())?;
        }
        let cap = config.server.max_connections;
        if let (Some((listener, certs)), Some(https)) = (self.https, &config.https) {
            let ingress = ingress.clone().with_tls(certs.live, https)?;
            spawn_accept(
                listener,
                drain.clone(),
                "https",
                (tcp_metrics.listener("inbound", "https"), cap),
                move |stream, peer, drain| ingress.clone().serve_tls(stream, peer, drain),
            );
        }
        if let (Some(listener), Some(http)) = (self.http, &config.http) {
            let redirect = http.redirect_to_https.then_some(http.https_port);
            spawn_accept(
                listener,
                drain.clone(),
                "http",
                (tcp_metrics.listener("inbound", "http"), cap),
                move |stream, peer, drain| {
                    ingress.clone().serve_plain(stream, peer, redirect, drain)
                },
            );
        }
        let admin = admin::Admin::new(
            ready.clone(),
            config.clone(),
            Arc::new(metrics),
            self.log.clone(),
            None,
        );
        spawn_accept(
            self.admin,
            drain.clone(),
            "admin",
            (tcp_metrics.listener("inbound", "admin"), cap),
            move |stream, peer, drain| admin.clone().serve(stream, peer, drain),
        );
        mesh_stack::serve::spawn_readiness(identity, ready.clone(), drain.clone());
        let grace = config.runtime.shutdown_grace;
        mesh_stack::serve::shutdown_and_drain(shutdown, None, &ready, drain, grace).await;
        Ok(())
    }
}

/// The certificates served: those of the files (watched), and with them those the Gateway's
/// Secrets hold.
#[derive(Clone, Debug)]
struct Certificates {
    files: SniCertificates,
    live: Arc<LiveCertificates>,
}

/// Serves the routes of the HTTPRoutes attached to the Gateway, and its listeners'
/// certificates beside the files', as they change.
fn watch_gateway(
    config: &Config,
    k8s: &config::GatewayConfig,
    client: kube::Client,
    ingress: &mesh_stack::ingress::Ingress,
    certs: Option<Certificates>,
    drain: Drain,
) -> anyhow::Result<()> {
    let gateway = k8s.gateway()?;
    let ingress = ingress.clone();
    let cluster_domain = config.discovery.kubernetes.source.cluster_domain.clone();
    let seen_problems = std::sync::Mutex::new(Vec::<String>::new());
    mesh_stack::gateway::spawn_watch(
        client,
        gateway.clone(),
        cluster_domain,
        drain,
        move |state| {
            let mut problems = state.problems.clone();
            if let Some(certs) = &certs {
                let mut served = certs.files.clone();
                for cert in &state.certificates {
                    let added = ServingCert::from_pem(&cert.secret, &cert.cert_pem, &cert.key_pem)
                        .and_then(|c| match cert.default {
                            true if cert.hosts.is_empty() => {
                                served.set_default(c);
                                Ok(())
                            }
                            _ => served.add(&cert.hosts, c),
                        });
                    if let Err(e) = added {
                        problems.push(format!("Secret {}: {e}", cert.secret));
                    }
                }
                certs.live.replace(served);
            }
            tracing::info!(
                %gateway,
                found = state.found,
                routes = state.routes.len(),
                certificates = state.certificates.len(),
                "Gateway API state"
            );
            ingress.set_kubernetes_routes(state.routes);
            // Each problem once, while it lasts.
            let mut seen = seen_problems.lock().unwrap_or_else(|e| e.into_inner());
            for problem in problems.iter().filter(|p| !seen.contains(p)) {
                tracing::warn!(%gateway, "{problem}");
            }
            *seen = problems;
        },
    );
    Ok(())
}

/// The certificates of `https`, each served for its hosts (or its SANs).
fn certificates(https: &config::HttpsConfig) -> anyhow::Result<Certificates> {
    let mut certs = SniCertificates::default();
    for (i, c) in https.certificates.iter().enumerate() {
        let key = format!("https.certificates[{i}]");
        let cert = ServingCert::load(&c.cert, &c.key).map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        if c.default {
            certs.set_default(cert.clone());
        }
        if !c.hosts.is_empty() || !c.default {
            certs
                .add(&c.hosts, cert)
                .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
        }
    }
    // The files' certificates are watched for as long as they are served.
    certs.watch(mesh_stack::serve::CONFIG_POLL);
    Ok(Certificates {
        live: LiveCertificates::new(certs.clone()),
        files: certs,
    })
}
