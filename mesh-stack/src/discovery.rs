//! The discovery sources that services use, made once at start and shared: a service names
//! its source (`static`, `file`, `dns`, `kubernetes`, `destination`) and [`Sources::resolve`]
//! gives its endpoint stream, the balancer's input.
//!
//! ```
//! use mesh_stack::config::{DiscoveryConfig, ServiceConfig};
//! use mesh_stack::discovery::Sources;
//!
//! # async fn f(services: Vec<ServiceConfig>) -> Result<(), mesh_stack::StackError> {
//! let sources = Sources::new(&services, &DiscoveryConfig::default(), None).await?;
//! let authority = services[0].validate().map_err(mesh_stack::StackError::Config)?;
//! let endpoints = sources.resolve(&services[0], &authority)?; // a tower `Discover` stream
//! # let _ = endpoints;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use mesh_core::endpoint::Authority;
use mesh_discovery::kubernetes::KubernetesResolve;
use mesh_discovery::remote::RemoteResolve;
use mesh_discovery::{Lookup, Publish, Resolution, Resolve, StaticResolve};

use crate::StackError;
use crate::config::{
    AddressLookup, DiscoveryConfig, DiscoverySource, IdentityConfig, ServiceConfig,
};

/// How often the services file is compared with what was read, beside the watcher's events.
const FILE_POLL: Duration = Duration::from_secs(1);

/// The sources in use. Cloning shares them.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    file: Option<Arc<dyn Resolve>>,
    dns: Option<Arc<dyn Resolve>>,
    kubernetes: Option<KubernetesResolve>,
    destination: Option<RemoteResolve>,
}

/// A source that tells what an address is, and resolves the services it names.
#[derive(Clone, Debug)]
pub struct AddressSource {
    /// The source's name, for logs.
    pub name: &'static str,
    /// What an address is.
    pub lookup: Arc<dyn Lookup>,
    /// The endpoints of a service it named.
    pub publish: Arc<dyn Publish>,
}

impl Sources {
    /// Starts each source that one of `services` uses. The destination API is reached with
    /// the trust anchors (and by default the controller) of `identity`, presenting its
    /// certificate.
    pub async fn new(
        services: &[ServiceConfig],
        discovery: &DiscoveryConfig,
        identity: Option<Workload<'_>>,
    ) -> Result<Self, StackError> {
        let uses = |source: DiscoverySource| services.iter().any(|s| s.discovery == source);
        let mut sources = Self::default();
        if uses(DiscoverySource::File)
            && let Some(path) = &discovery.file
        {
            let file = mesh_discovery::file::FileResolve::new(path.clone(), FILE_POLL)
                .map_err(setup("discovery.file"))?;
            sources.file = Some(Arc::new(file));
        }
        if uses(DiscoverySource::Dns) {
            let dns = mesh_discovery::dns::DnsResolve::new(discovery.dns.clone())
                .map_err(setup("discovery.dns"))?;
            sources.dns = Some(Arc::new(dns));
        }
        if uses(DiscoverySource::Kubernetes) {
            sources.kubernetes = Some(kubernetes(discovery).await?);
        }
        if uses(DiscoverySource::Destination) {
            sources.destination = Some(destination(discovery, identity)?);
        }
        Ok(sources)
    }

    /// Starts the source that `lookup` names, if no service started it, so that
    /// [`address_source`](Self::address_source) has it.
    pub async fn with_lookup(
        mut self,
        lookup: AddressLookup,
        discovery: &DiscoveryConfig,
        identity: Option<Workload<'_>>,
    ) -> Result<Self, StackError> {
        match lookup {
            AddressLookup::None => {}
            AddressLookup::Kubernetes if self.kubernetes.is_none() => {
                self.kubernetes = Some(kubernetes(discovery).await?);
            }
            AddressLookup::Destination if self.destination.is_none() => {
                self.destination = Some(destination(discovery, identity)?);
            }
            AddressLookup::Kubernetes | AddressLookup::Destination => {}
        }
        Ok(self)
    }

    /// The source that looks addresses up, as `lookup` names it (started by
    /// [`with_lookup`](Self::with_lookup)).
    pub fn address_source(&self, lookup: AddressLookup) -> Option<AddressSource> {
        match lookup {
            AddressLookup::None => None,
            AddressLookup::Kubernetes => self.kubernetes.as_ref().map(|k| AddressSource {
                name: "kubernetes",
                lookup: Arc::new(k.clone()),
                publish: Arc::new(k.clone()),
            }),
            AddressLookup::Destination => self.destination.as_ref().map(|d| AddressSource {
                name: "destination",
                lookup: Arc::new(d.clone()),
                publish: Arc::new(d.clone()),
            }),
        }
    }

    /// Checks that the source `svc` names is set up, without asking it anything (a service's
    /// watch starts with its first request).
    pub fn check(&self, svc: &ServiceConfig) -> Result<(), StackError> {
        self.source(svc).map(|_| ())
    }

    /// The endpoint stream of `svc`.
    pub fn resolve(
        &self,
        svc: &ServiceConfig,
        authority: &Authority,
    ) -> Result<Resolution, StackError> {
        let name = svc.resolve.clone().unwrap_or_else(|| authority.to_string());
        let failed = |source| StackError::Resolve {
            service: svc.authority.clone(),
            source,
        };
        match self.source(svc)? {
            Some(source) => source.resolve(&name).map_err(failed),
            None => StaticResolve::new([(
                name.clone(),
                svc.endpoints.iter().map(|e| e.endpoint()).collect(),
            )])
            .resolve(&name)
            .map_err(failed),
        }
    }

    /// The source of `svc`; `None` for its static endpoints.
    fn source(&self, svc: &ServiceConfig) -> Result<Option<&dyn Resolve>, StackError> {
        let source = match svc.discovery {
            DiscoverySource::Static => return Ok(None),
            DiscoverySource::File => self.file.as_deref(),
            DiscoverySource::Dns => self.dns.as_deref(),
            DiscoverySource::Kubernetes => self.kubernetes.as_ref().map(|k| k as &dyn Resolve),
            DiscoverySource::Destination => self.destination.as_ref().map(|d| d as &dyn Resolve),
        };
        source.map(Some).ok_or_else(|| StackError::Discovery {
            key: "discovery",
            reason: format!("discovery source {} is not set up", svc.discovery.as_str()).into(),
        })
    }
}

/// The Kubernetes source, with the API server of `[discovery.kubernetes]` (or the pod's own).
async fn kubernetes(discovery: &DiscoveryConfig) -> Result<KubernetesResolve, StackError> {
    let client = kube_client(discovery).await?;
    Ok(KubernetesResolve::new(
        client,
        discovery.kubernetes.source.clone(),
    ))
}

/// A client of the API server of `[discovery.kubernetes]`: its `api`, or in-cluster
/// configuration, or `KUBECONFIG`.
pub async fn kube_client(discovery: &DiscoveryConfig) -> Result<kube::Client, StackError> {
    let k8s = &discovery.kubernetes;
    let kube_config = match &k8s.api {
        Some(url) => kube::Config::new(
            url.parse::<http::Uri>()
                .map_err(setup("discovery.kubernetes.api"))?,
        ),
        None => kube::Config::infer()
            .await
            .map_err(|e| StackError::Discovery {
                key: "discovery.kubernetes",
                reason: format!("no in-cluster configuration or KUBECONFIG: {e}").into(),
            })?,
    };
    kube::Client::try_from(kube_config).map_err(setup("discovery.kubernetes"))
}

/// The workload's identity as discovery needs it: its configuration (the controller's address
/// and identity) and the identity itself (its trust anchors, reloaded in place, and the
/// certificate that the destination API asks for).
#[derive(Clone, Copy, Debug)]
pub struct Workload<'a> {
    /// The `[identity]` section.
    pub config: &'a IdentityConfig,
    /// The identity made from it.
    pub identity: &'a mesh_tls::local::LocalIdentity,
}

impl<'a> Workload<'a> {
    /// Both halves, when the workload has an identity.
    pub fn of(
        config: Option<&'a IdentityConfig>,
        identity: Option<&'a mesh_tls::local::LocalIdentity>,
    ) -> Option<Self> {
        Some(Self {
            config: config?,
            identity: identity?,
        })
    }
}

/// The destination API's client: the controller of `[discovery.destination]`, or that of
/// `[identity]`, verified with the identity's trust anchors, presented its certificate.
fn destination(
    discovery: &DiscoveryConfig,
    workload: Option<Workload<'_>>,
) -> Result<RemoteResolve, StackError> {
    let identity = workload.map(|w| w.config);
    let destination = &discovery.destination;
    let missing = |key: &'static str, why: &str| StackError::Discovery {
        key,
        reason: why.to_owned().into(),
    };
    let addr = destination
        .controller
        .clone()
        .or(identity.and_then(|i| i.controller.clone()))
        .ok_or_else(|| missing("discovery.destination.controller", "not set"))?;
    let controller = destination
        .controller_identity
        .clone()
        .or(identity.and_then(|i| i.controller_identity.clone()))
        .ok_or_else(|| {
            missing(
                "discovery.destination.controller_identity",
                "not set (nor identity.controller_identity)",
            )
        })?;
    let workload = workload.ok_or_else(|| {
        missing(
            "discovery.destination",
            "the destination API needs [identity] (its trust anchors verify the controller, its certificate proves the caller)",
        )
    })?;
    let channel = mesh_tls::api::controller_channel(
        addr.as_str(),
        &controller,
        workload.identity.trust_anchors(),
        Some(workload.identity.client_cert_resolver()),
        None,
    )
    .map_err(setup("discovery.destination"))?;
    Ok(RemoteResolve::new(channel))
}

/// Names the configuration key of a source that could not be set up.
fn setup<E>(key: &'static str) -> impl FnOnce(E) -> StackError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| StackError::Discovery {
        key,
        reason: Box::new(e),
    }
}
