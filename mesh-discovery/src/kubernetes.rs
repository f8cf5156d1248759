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

type Pods = Arc<HashMap<String, PodInfo>>;

/// Resolves Kubernetes Services. Cheap to share; one watch per Service (whatever the number of
/// subscribers) and one pod watch per namespace.
#[derive(Clone)]
pub struct KubernetesResolve {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    config: KubernetesConfig,
    services: Mutex<HashMap<ServiceTarget, Publisher>>,
    pods: Mutex<HashMap<String, watch::Receiver<Option<Pods>>>>,
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
                pods: Mutex::new(HashMap::new()),
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
        let pods = self.pods(&target.namespace);
        tokio::spawn(watch_service(
            Arc::downgrade(&self.inner),
            target,
            publisher.clone(),
            pods,
        ));
        Ok(publisher)
    }

    /// The shared pod index of `namespace`.
    fn pods(&self, namespace: &str) -> watch::Receiver<Option<Pods>> {
        let mut all = self.inner.pods.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rx) = all.get(namespace) {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        all.insert(namespace.to_owned(), rx.clone());
        tokio::spawn(watch_pods(
            self.inner.client.clone(),
            namespace.to_owned(),
            self.inner.config.trust_domain.clone(),
            tx,
        ));
        rx
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
    objects: BTreeMap<String, K>,
    relisting: Option<BTreeMap<String, K>>,
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
                    relisting.insert(name(&k), k);
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
                self.objects.insert(name(&k), k);
                true
            }
            Event::Delete(k) => {
                self.objects.remove(&name(&k));
                true
            }
        }
    }
}

fn watch_config() -> watcher::Config {
    // Bookmarks (on by default) keep the resourceVersion fresh, so that a reconnect resumes
    // instead of relisting.
    watcher::Config::default()
}

async fn watch_pods(
    client: kube::Client,
    namespace: String,
    trust_domain: String,
    tx: watch::Sender<Option<Pods>>,
) {
    let api: Api<Pod> = Api::namespaced(client, &namespace);
    let mut events = watcher::watcher(api, watch_config())
        .default_backoff()
        .boxed();
    let mut known = Known::<Pod>::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                if known.apply(event) && known.synced {
                    let pods: HashMap<String, PodInfo> = known
                        .objects
                        .iter()
                        .map(|(name, pod)| (name.clone(), pod_info(pod, &namespace, &trust_domain)))
                        .collect();
                    tx.send_replace(Some(Arc::new(pods)));
                }
            }
            Err(e) => {
                tracing::warn!(%namespace, error = %e, "pod watch failed; keeping the last known pods, retrying");
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

async fn watch_service(
    inner: Weak<Inner>,
    target: ServiceTarget,
    publisher: Publisher,
    mut pods: watch::Receiver<Option<Pods>>,
) {
    let Some(client) = inner.upgrade().map(|i| i.client.clone()) else {
        return;
    };
    let services: Api<Service> = Api::namespaced(client.clone(), &target.namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(client, &target.namespace);
    let mut service_events = watcher::watcher(
        services,
        watch_config().fields(&format!("metadata.name={}", target.name)),
    )
    .default_backoff()
    .boxed();
    let mut slice_events = watcher::watcher(
        slices,
        watch_config().labels(&format!("{SERVICE_NAME_LABEL}={}", target.name)),
    )
    .default_backoff()
    .boxed();
    let mut service = Known::<Service>::new();
    let mut slices = Known::<EndpointSlice>::new();
    // Whether anybody still follows the service is checked now and then, never at once: the
    // caller subscribes just after starting the watch.
    let mut checks =
        tokio::time::interval_at(tokio::time::Instant::now() + UNUSED_CHECK, UNUSED_CHECK);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changed = tokio::select! {
            event = service_events.next() => match event {
                Some(Ok(event)) => service.apply(event),
                Some(Err(e)) => {
                    tracing::warn!(service = %target.name, namespace = %target.namespace, error = %e, "service watch failed; keeping the last endpoints, retrying");
                    false
                }
                None => return,
            },
            event = slice_events.next() => match event {
                Some(Ok(event)) => slices.apply(event),
                Some(Err(e)) => {
                    tracing::warn!(service = %target.name, namespace = %target.namespace, error = %e, "EndpointSlice watch failed; keeping the last endpoints, retrying");
                    false
                }
                None => return,
            },
            changed = pods.changed() => changed.is_ok(),
            _ = checks.tick() => {
                if publisher.subscribers() == 0 && inner.upgrade().is_none_or(|i| forget(&i, &target)) {
                    return;
                }
                false
            }
        };
        if !changed || !service.synced || !slices.synced {
            continue;
        }
        let Some(pods) = pods.borrow().clone() else {
            continue;
        };
        match endpoints(
            &target,
            service.objects.values().next(),
            &slices.objects,
            &pods,
        ) {
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
    slices: &BTreeMap<String, EndpointSlice>,
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
    for slice in slices.values() {
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
