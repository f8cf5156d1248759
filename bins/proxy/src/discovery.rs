//! The discovery sources a proxy's services use, made once at start and shared.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use mesh_core::endpoint::Authority;
use mesh_discovery::{Resolution, Resolve, StaticResolve};

use crate::Config;
use crate::config::{DiscoverySource, ServiceConfig};

/// How often the services file is compared with what was read, beside the watcher's events.
const FILE_POLL: Duration = Duration::from_secs(1);

/// The sources in use.
#[derive(Debug, Default)]
pub struct Sources {
    file: Option<Arc<dyn Resolve>>,
    dns: Option<Arc<dyn Resolve>>,
    kubernetes: Option<Arc<dyn Resolve>>,
    destination: Option<Arc<dyn Resolve>>,
}

impl Sources {
    /// Starts each source that a service of `config` uses.
    pub async fn new(config: &Config) -> anyhow::Result<Self> {
        let uses = |source: DiscoverySource| {
            config
                .outbound
                .services
                .iter()
                .any(|s| s.discovery == source)
        };
        let mut sources = Self::default();
        if uses(DiscoverySource::File)
            && let Some(path) = &config.discovery.file
        {
            let file = mesh_discovery::file::FileResolve::new(path.clone(), FILE_POLL)
                .context("discovery.file")?;
            sources.file = Some(Arc::new(file));
        }
        if uses(DiscoverySource::Dns) {
            let dns = mesh_discovery::dns::DnsResolve::new(config.discovery.dns.clone())
                .context("discovery.dns")?;
            sources.dns = Some(Arc::new(dns));
        }
        if uses(DiscoverySource::Kubernetes) {
            let k8s = &config.discovery.kubernetes;
            let kube_config = match &k8s.api {
                Some(url) => kube::Config::new(url.parse().context("discovery.kubernetes.api")?),
                None => kube::Config::infer()
                    .await
                    .context("discovery.kubernetes: no in-cluster configuration or KUBECONFIG")?,
            };
            let client = kube::Client::try_from(kube_config).context("discovery.kubernetes")?;
            sources.kubernetes = Some(Arc::new(
                mesh_discovery::kubernetes::KubernetesResolve::new(client, k8s.source.clone()),
            ));
        }
        if uses(DiscoverySource::Destination) {
            let identity = config.identity.as_ref();
            let destination = &config.discovery.destination;
            let addr = destination
                .controller
                .or(identity.and_then(|i| i.controller))
                .context("discovery.destination.controller")?;
            let controller = destination
                .controller_identity
                .clone()
                .or(identity.and_then(|i| i.controller_identity.clone()))
                .context(
                    "discovery.destination.controller_identity (or identity.controller_identity)",
                )?;
            let trust = identity
                .map(|i| i.trust_anchors.clone())
                .context("discovery = \"destination\" needs [identity] (its trust anchors verify the controller)")?;
            let trust = mesh_tls::cert::TrustAnchors::from_pem_file(&trust)
                .context("identity.trust_anchors")?;
            let channel = mesh_tls::api::controller_channel(addr, &controller, &trust, None)
                .context("discovery.destination")?;
            sources.destination = Some(Arc::new(mesh_discovery::remote::RemoteResolve::new(
                channel,
            )));
        }
        Ok(sources)
    }

    /// The endpoint stream of `svc`.
    pub fn resolve(
        &self,
        svc: &ServiceConfig,
        authority: &Authority,
    ) -> anyhow::Result<Resolution> {
        let name = svc.resolve.clone().unwrap_or_else(|| authority.to_string());
        let source = match svc.discovery {
            DiscoverySource::Static => {
                return Ok(StaticResolve::new([(
                    name.clone(),
                    svc.endpoints.iter().map(|e| e.endpoint()).collect(),
                )])
                .resolve(&name)?);
            }
            DiscoverySource::File => &self.file,
            DiscoverySource::Dns => &self.dns,
            DiscoverySource::Kubernetes => &self.kubernetes,
            DiscoverySource::Destination => &self.destination,
        };
        let source = source.as_ref().with_context(|| {
            format!("discovery source {} is not set up", svc.discovery.as_str())
        })?;
        source
            .resolve(&name)
            .with_context(|| format!("service {:?}", svc.authority))
    }
}
