//! Kubernetes: the endpoints of a Service, from its EndpointSlices.
//!
//! A name `<service>.<namespace>.svc.<cluster-domain>:<port>` (or `<service>.<namespace>:<port>`)
//! is resolved by watching, with kube's runtime watcher:
//!
//! - the Service, for the port: the Service port numbered `<port>` names the EndpointSlice
//!   port to use, so named and numbered `targetPort`s both work (the EndpointSlice controller
//!   has already resolved them per pod);
//! - the Service's EndpointSlices (label `kubernetes.io/service-name`): an endpoint is used
//!   while its `ready` condition is true or unset; a terminating or unready endpoint gets no
//!   new requests (those in flight finish: the balancer only stops picking it);
//! - the namespace's Pods (one watch per namespace, shared): a pod labelled
//!   [`MESHED_LABEL`]` = "true"` runs the proxy, so its endpoint must prove the identity of its
//!   ServiceAccount, `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccountName>`. An
//!   endpoint whose pod is not known yet waits for it, so that a meshed pod is never dialled
//!   in plaintext.
//!
//! Each watch reconnects with backoff and relists on 410 Gone. A relist replaces the known
//! objects only once it is complete (kube's `Init` .. `InitDone`), and a watch that fails keeps
//! the last known state: while the API server is away, the last endpoints stay in use.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_discovery::Resolve;
//! use mesh_discovery::kubernetes::{KubernetesConfig, KubernetesResolve};
//!
//! let resolve = KubernetesResolve::new(kube::Client::try_default().await?, KubernetesConfig::default());
//! let endpoints = resolve.resolve("web.demo.svc.cluster.local:8080")?;
//! # let _ = endpoints;
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use mesh_core::endpoint::Endpoint;
use mesh_core::identity::Identity;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::resolve::{Publisher, Resolution, Resolve, ResolveError};

/// The pod label that says the pod runs the mesh proxy (the injector sets it).
pub const MESHED_LABEL: &str = "mesh.dev/meshed";
/// How often a watch checks that somebody still follows its service.
const UNUSED_CHECK: std::time::Duration = std::time::Duration::from_secs(30);

/// The label EndpointSlices carry with their Service's name.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Settings of the Kubernetes source.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// The cluster's DNS domain, in service names.
    pub cluster_domain: String,
    /// The mesh's trust domain, in the identities of meshed pods.
    pub trust_domain: String,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".to_owned(),
            trust_domain: "cluster.local".to_owned(),
        }
    }
}

/// A Service's port, as a name asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceTarget {
    /// The Service.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The Service port.
    pub port: u16,
}

impl ServiceTarget {
    /// Parses `<svc>.<ns>[.svc[.<cluster-domain>]]:<port>`.
    pub fn parse(name: &str, cluster_domain: &str) -> Result<Self, String> {
        let (host, port) = name.rsplit_once(':').ok_or_else(|| {
            "expected <service>.<namespace>.svc.<cluster-domain>:<port>".to_owned()
        })?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number"))?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let host = host
            .strip_suffix(&format!(".svc.{cluster_domain}"))
            .or_else(|| host.strip_suffix(".svc"))
            .unwrap_or(&host);
        let mut labels = host.split('.');
        match (labels.next(), labels.next(), labels.next()) {
            (Some(svc), Some(ns), None) if !svc.is_empty() && !ns.is_empty() => Ok(Self {
                name: svc.to_owned(),
                namespace: ns.to_owned(),
                port,
            }),
            _ => Err("expected <service>.<namespace>.svc.<cluster-domain>:<port>".to_owned()),
        }
    }
}

/// What the mesh needs to know of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodInfo {
    identity: Option<Identity>,
    workload: Option<String>,
}

/// EndpointSlices grouped by their Service's name.
type SlicesByService = Arc<HashMap<String, Vec<Arc<EndpointSlice>>>>;

/// Objects by name, shared without copying them.
type Objects<K> = Arc<BTreeMap<String, Arc<K>>>;

/// One namespace as its three watches see it; `None` until a watch has listed once.
#[derive(Clone)]
struct Namespace {
    services: watch::Receiver<Option<Objects<Service>>>,
    /// By the Service they belong to.
    slices: watch::Receiver<Option<SlicesByService>>,
    pods: watch::Receiver<Option<Arc<HashMap<String, PodInfo>>>>,
}

/// Resolves Kubernetes Services. Cheap to share. One watch per kind (Services,
/// EndpointSlices, Pods) per namespace, whatever the number of Services and subscribers:
/// the API server sees three watches per namespace from a controller serving hundreds of
/// proxies.
#[derive(Clone)]
pub struct KubernetesResolve {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    config: KubernetesConfig,
    services: Mutex<HashMap<ServiceTarget, Publisher>>,
    namespaces: Mutex<HashMap<String, Namespace>>,
}

impl std::fmt::Debug for KubernetesResolve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesResolve")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl KubernetesResolve {
    /// Resolves with `client`.
    pub fn new(client: kube::Client, config: KubernetesConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                config,
                services: Mutex::new(HashMap::new()),
                namespaces: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The publisher of `name`'s endpoint sets, starting its watch if needed.
    pub fn publisher(&self, name: &str) -> Result<Publisher, ResolveError> {
        let target =
            ServiceTarget::parse(name, &self.inner.config.cluster_domain).map_err(|reason| {
                ResolveError::Invalid {
                    name: name.to_owned(),
                    source_name: "kubernetes",
                    reason,
                }
            })?;
        let mut services = self
            .inner
            .services
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(publisher) = services.get(&target) {
            return Ok(publisher.clone());
        }
        let publisher = Publisher::new();
        services.insert(target.clone(), publisher.clone());
        drop(services);
        let namespace = self.namespace(&target.namespace);
        tokio::spawn(follow_service(
            Arc::downgrade(&self.inner),
            target,
            publisher.clone(),
            namespace,
        ));
        Ok(publisher)
    }

    /// The shared watches of `namespace`, started on first use.
    fn namespace(&self, namespace: &str) -> Namespace {
        let mut all = self
            .inner
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(ns) = all.get(namespace) {
            return ns.clone();
        }
        let client = &self.inner.client;
        let (services_tx, services) = watch::channel(None);
        let (slices_tx, slices) = watch::channel(None);
        let (pods_tx, pods) = watch::channel(None);
        tokio::spawn(watch_kind::<Service, _>(
            Api::namespaced(client.clone(), namespace),
            namespace.to_owned(),
            services_tx,
            std::convert::identity,
        ));
        tokio::spawn(watch_kind::<EndpointSlice, _>(
            Api::namespaced(client.clone(), namespace),
            namespace.to_owned(),
            slices_tx,
            |objects| {
                let mut by_service: HashMap<String, Vec<Arc<EndpointSlice>>> = HashMap::new();
                for slice in objects.values() {
                    if let Some(service) = slice
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    {
                        by_service
                            .entry(service.clone())
                            .or_default()
                            .push(slice.clone());
                    }
                }
                Arc::new(by_service)
            },
        ));
        let (ns, trust_domain) = (namespace.to_owned(), self.inner.config.trust_domain.clone());
        tokio::spawn(watch_kind::<Pod, _>(
            Api::namespaced(client.clone(), namespace),
            namespace.to_owned(),
            pods_tx,
            move |objects| {
                Arc::new(
                    objects
                        .iter()
                        .map(|(name, pod)| (name.clone(), pod_info(pod, &ns, &trust_domain)))
                        .collect(),
                )
            },
        ));
        let ns = Namespace {
            services,
            slices,
            pods,
        };
        all.insert(namespace.to_owned(), ns.clone());
        ns
    }
}

impl Resolve for KubernetesResolve {
    fn resolve(&self, name: &str) -> Result<Resolution, ResolveError> {
        Ok(self.publisher(name)?.subscribe())
    }
}

impl crate::resolve::Publish for KubernetesResolve {
    fn publisher(&self, name: &str) -> Result<Publisher, ResolveError> {
        KubernetesResolve::publisher(self, name)
    }
}

/// Objects of one kind as a watch sees them, with a relist applied only once complete.
struct Known<K> {
    objects: BTreeMap<String, Arc<K>>,
    relisting: Option<BTreeMap<String, Arc<K>>>,
    synced: bool,
}

impl<K: kube::Resource> Known<K> {
    fn new() -> Self {
        Self {
            objects: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }

    /// Applies one event; true when the known objects changed.
    fn apply(&mut self, event: Event<K>) -> bool {
        let name = |k: &K| k.meta().name.clone().unwrap_or_default();
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(k) => {
                if let Some(relisting) = &mut self.relisting {
                    relisting.insert(name(&k), Arc::new(k));
                }
                false
            }
            Event::InitDone => {
                if let Some(relisting) = self.relisting.take() {
                    self.objects = relisting;
                }
                self.synced = true;
                true
            }
            Event::Apply(k) => {
                self.objects.insert(name(&k), Arc::new(k));
                true
            }
            Event::Delete(k) => {
                self.objects.remove(&name(&k));
                true
            }
        }
    }
}

/// Watches every object of kind `K` in `namespace`, publishing `view(objects)` after each
/// change once listed. Reconnects with backoff, relists on 410 Gone; while failing, the last
/// view stays. Ends when nobody looks any more.
async fn watch_kind<K, V>(
    api: Api<K>,
    namespace: String,
    tx: watch::Sender<Option<V>>,
    view: impl Fn(Objects<K>) -> V + Send + 'static,
) where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    V: Send + Sync + 'static,
{
    // Bookmarks (on by default) keep the resourceVersion fresh, so that a reconnect resumes
    // instead of relisting.
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut known = Known::<K>::new();
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object");
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if known.apply(event) && known.synced {
                    tx.send_replace(Some(view(Arc::new(known.objects.clone()))));
                }
            }
            Err(e) => {
                tracing::warn!(%namespace, kind, error = %e, "watch failed; keeping the last known objects, retrying");
            }
        }
        if tx.receiver_count() == 0 {
            return;
        }
    }
}

fn pod_info(pod: &Pod, namespace: &str, trust_domain: &str) -> PodInfo {
    let labels = pod.metadata.labels.as_ref();
    let meshed = labels
        .and_then(|l| l.get(MESHED_LABEL))
        .is_some_and(|v| v == "true");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned());
    let identity = if meshed {
        match Identity::new(trust_domain, namespace, &sa) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(pod = ?pod.metadata.name, error = %e, "a meshed pod without a valid identity");
                None
            }
        }
    } else {
        None
    };
    let workload = labels.and_then(|l| {
        l.get("app.kubernetes.io/name")
            .or_else(|| l.get("app"))
            .cloned()
    });
    PodInfo { identity, workload }
}

/// Publishes one Service's endpoints each time its namespace changes, until nobody follows.
async fn follow_service(
    inner: Weak<Inner>,
    target: ServiceTarget,
    publisher: Publisher,
    mut ns: Namespace,
) {
    // Whether anybody still follows the service is checked now and then, never at once: the
    // caller subscribes just after starting the watch.
    let mut checks =
        tokio::time::interval_at(tokio::time::Instant::now() + UNUSED_CHECK, UNUSED_CHECK);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_slices: Option<Vec<Arc<EndpointSlice>>> = None;
    let mut last_pods = None;
    let mut last_service = None;
    loop {
        let alive = tokio::select! {
            changed = ns.services.changed() => changed.is_ok(),
            changed = ns.slices.changed() => changed.is_ok(),
            changed = ns.pods.changed() => changed.is_ok(),
            _ = checks.tick() => {
                if publisher.subscribers() == 0 && inner.upgrade().is_none_or(|i| forget(&i, &target)) {
                    return;
                }
                true
            }
        };
        if !alive {
            return;
        }
        let (Some(services), Some(slices), Some(pods)) = (
            ns.services.borrow_and_update().clone(),
            ns.slices.borrow_and_update().clone(),
            ns.pods.borrow_and_update().clone(),
        ) else {
            continue;
        };
        let own: Vec<Arc<EndpointSlice>> = slices.get(&target.name).cloned().unwrap_or_default();
        // Most changes in a namespace are another Service's: skip the work when none of this
        // Service's objects moved (the maps share unchanged objects, so pointers tell).
        let service = services.get(&target.name).cloned();
        let same = |a: &Arc<EndpointSlice>, b: &Arc<EndpointSlice>| Arc::ptr_eq(a, b);
        let unchanged = last_slices.as_ref().is_some_and(|last| {
            last.len() == own.len() && last.iter().zip(&own).all(|(a, b)| same(a, b))
        }) && last_pods
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, &pods))
            && last_service
                .as_ref()
                .map(|s: &Option<Arc<Service>>| match (s, &service) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                })
                .unwrap_or(false);
        if unchanged {
            continue;
        }
        last_slices = Some(own.clone());
        last_pods = Some(pods.clone());
        last_service = Some(service.clone());
        match endpoints(&target, service.as_deref(), &own, &pods) {
            Some(set) => publisher.publish(set),
            None => tracing::debug!(service = %target.name, "the service has no such port yet"),
        }
    }
}

/// Drops an unused service's entry; true when it was unused.
fn forget(inner: &Inner, target: &ServiceTarget) -> bool {
    let mut services = inner.services.lock().unwrap_or_else(|e| e.into_inner());
    let unused = services.get(target).is_none_or(|p| p.subscribers() == 0);
    if unused {
        services.remove(target);
    }
    unused
}

/// The endpoints of `target`: `None` while the Service lacks the port (nothing to publish);
/// empty when the Service is gone.
fn endpoints(
    target: &ServiceTarget,
    service: Option<&Service>,
    slices: &[Arc<EndpointSlice>],
    pods: &HashMap<String, PodInfo>,
) -> Option<Vec<Endpoint>> {
    let Some(service) = service else {
        return Some(Vec::new());
    };
    let port = service
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.port == i32::from(target.port))?;
    let port_name = port.name.clone().unwrap_or_default();
    let mut out = Vec::new();
    for slice in slices {
        let Some(slice_port) = slice.ports.as_ref().and_then(|ports| {
            ports
                .iter()
                .find(|p| p.name.clone().unwrap_or_default() == port_name)
        }) else {
            continue;
        };
        let Some(number) = slice_port.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        let protocol = slice_port.app_protocol.as_deref().map(|p| match p {
            "kubernetes.io/h2c" | "h2" | "grpc" => "h2",
            "http" | "kubernetes.io/http" => "http1",
            _ => "opaque",
        });
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            let pod_name = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            let pod = match &pod_name {
                Some(name) => match pods.get(name) {
                    Some(pod) => Some(pod),
                    // Not known yet: wait for it rather than dial a meshed pod in plaintext.
                    None => continue,
                },
                None => None,
            };
            let mut labels = vec![("namespace".to_owned(), target.namespace.clone())];
            if let Some(name) = &pod_name {
                labels.push(("pod".to_owned(), name.clone()));
            }
            if let Some(workload) = pod.and_then(|p| p.workload.clone()) {
                labels.push(("workload".to_owned(), workload));
            }
            if let Some(zone) = &endpoint.zone {
                labels.push(("zone".to_owned(), zone.clone()));
            }
            if let Some(protocol) = protocol {
                labels.push(("protocol".to_owned(), protocol.to_owned()));
            }
            let identity = pod.and_then(|p| p.identity.clone());
            for address in &endpoint.addresses {
                let Ok(ip) = address.parse::<IpAddr>() else {
                    continue;
                };
                out.push(Endpoint::meshed(
                    SocketAddr::new(ip, number),
                    labels.clone(),
                    identity.clone(),
                ));
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for name in [
            "web.demo.svc.cluster.local:8080",
            "web.demo.svc:8080",
            "web.demo:8080",
            "WEB.demo.svc.cluster.local.:8080",
        ] {
            assert_eq!(
                ServiceTarget::parse(name, "cluster.local"),
                Ok(ServiceTarget {
                    name: "web".into(),
                    namespace: "demo".into(),
                    port: 8080
                }),
                "{name}"
            );
        }
        for bad in [
            "web:8080",
            "web.demo.svc.cluster.local",
            "a.b.c.d:80",
            "web.demo:http",
        ] {
            assert!(ServiceTarget::parse(bad, "cluster.local").is_err(), "{bad}");
        }
    }
}
