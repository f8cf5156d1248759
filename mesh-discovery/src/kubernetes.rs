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
use std::sync::{Arc, Mutex, OnceLock, Weak};

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

use crate::resolve::{
    Destination, Lookup, LookupError, LookupFuture, Publisher, Resolution, Resolve, ResolveError,
};

/// The pod label that says the pod runs the mesh proxy (the injector sets it).
pub const MESHED_LABEL: &str = "mesh.dev/meshed";
/// The pod annotation that marks ports opaque (`"5432,6379,9000-9010"`): a connection to
/// one of them is forwarded as TCP (over mTLS when meshed), never sniffed for HTTP.
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.mesh.dev/opaque-ports";
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
    /// Namespaces watched at once (three watches each: Services, EndpointSlices, Pods); a
    /// name in one more namespace is refused until a namespace is released. Bounds what
    /// callers naming made-up namespaces can make the API server hold.
    pub max_namespaces: usize,
    /// A Service nobody follows any more is released after about this long, and its
    /// namespace's watches with the last of its Services.
    #[serde(with = "mesh_core::config::duration")]
    pub release_after: std::time::Duration,
}

/// The default [`KubernetesConfig::max_namespaces`].
pub const DEFAULT_MAX_NAMESPACES: usize = 1000;

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            max_namespaces: DEFAULT_MAX_NAMESPACES,
            release_after: UNUSED_CHECK,
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
    /// Started by the first lookup of an address.
    addresses: OnceLock<AddressIndex>,
}

/// Every Service's virtual addresses and every pod's addresses, across namespaces: what
/// [`Lookup`] answers from. `None` until listed once.
#[derive(Clone)]
struct AddressIndex {
    /// ClusterIP and port -> the Service's name, as [`ServiceTarget::parse`] reads it.
    services: watch::Receiver<Option<Arc<HashMap<SocketAddr, String>>>>,
    pods: watch::Receiver<Option<PodsByIp>>,
}

/// Running pods by each of their IPs.
type PodsByIp = Arc<HashMap<IpAddr, Arc<PodAddress>>>;

/// A pod, as an address lookup answers it.
#[derive(Debug)]
struct PodAddress {
    name: String,
    namespace: String,
    info: PodInfo,
    /// The ports its annotation [`OPAQUE_PORTS_ANNOTATION`] marks opaque.
    opaque_ports: Vec<(u16, u16)>,
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
                addresses: OnceLock::new(),
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
        let namespace =
            self.namespace(&target.namespace)
                .ok_or_else(|| ResolveError::Exhausted {
                    name: name.to_owned(),
                    source_name: "kubernetes",
                    reason: format!(
                        "{} namespaces are watched already (max_namespaces)",
                        self.inner.config.max_namespaces
                    ),
                })?;
        let publisher = Publisher::new();
        services.insert(target.clone(), publisher.clone());
        drop(services);
        tokio::spawn(follow_service(
            Arc::downgrade(&self.inner),
            target,
            publisher.clone(),
            namespace,
        ));
        Ok(publisher)
    }

    /// The shared watches of `namespace`, started on first use; `None` when as many
    /// namespaces as allowed are watched already.
    fn namespace(&self, namespace: &str) -> Option<Namespace> {
        let mut all = self
            .inner
            .namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(ns) = all.get(namespace) {
            return Some(ns.clone());
        }
        if all.len() >= self.inner.config.max_namespaces {
            return None;
        }
        let client = &self.inner.client;
        let (services_tx, services) = watch::channel(None);
        let (slices_tx, slices) = watch::channel(None);
        let (pods_tx, pods) = watch::channel(None);
        tokio::spawn(watch_kind::<Service, _>(
            Api::namespaced(client.clone(), namespace),
            namespace.to_owned(),
            by_name,
            services_tx,
            std::convert::identity,
        ));
        tokio::spawn(watch_kind::<EndpointSlice, _>(
            Api::namespaced(client.clone(), namespace),
            namespace.to_owned(),
            by_name,
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
            by_name,
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
        Some(ns)
    }
}

impl KubernetesResolve {
    /// The cluster-wide watches of Services and Pods that lookups answer from, started once.
    fn addresses(&self) -> AddressIndex {
        self.inner
            .addresses
            .get_or_init(|| {
                let client = &self.inner.client;
                let (services_tx, services) = watch::channel(None);
                let (pods_tx, pods) = watch::channel(None);
                let domain = self.inner.config.cluster_domain.clone();
                tokio::spawn(watch_kind::<Service, _>(
                    Api::all(client.clone()),
                    "*".to_owned(),
                    by_namespace_and_name,
                    services_tx,
                    move |objects| Arc::new(virtual_addresses(&objects, &domain)),
                ));
                let trust_domain = self.inner.config.trust_domain.clone();
                tokio::spawn(watch_kind::<Pod, _>(
                    Api::all(client.clone()),
                    "*".to_owned(),
                    by_namespace_and_name,
                    pods_tx,
                    move |objects| Arc::new(pod_addresses(&objects, &trust_domain)),
                ));
                AddressIndex { services, pods }
            })
            .clone()
    }
}

/// Answers from every Service's ClusterIPs and every pod's IPs, across namespaces (one
/// cluster-wide watch of each, started by the first lookup and kept: a proxy that looks up
/// addresses itself needs to list Services and Pods cluster-wide; the destination API spares
/// proxies that). The first lookup waits for both lists; the caller bounds the wait.
impl Lookup for KubernetesResolve {
    fn lookup(&self, addr: SocketAddr) -> LookupFuture {
        let AddressIndex {
            mut services,
            mut pods,
        } = self.addresses();
        Box::pin(async move {
            let gone = |_| LookupError {
                addr,
                source_name: "kubernetes",
                reason: "the watch of the Kubernetes API ended".to_owned(),
            };
            let services = services
                .wait_for(Option::is_some)
                .await
                .map_err(gone)?
                .clone()
                .unwrap_or_default();
            if let Some(name) = services.get(&addr) {
                return Ok(Destination::Service(name.clone()));
            }
            let pods = pods
                .wait_for(Option::is_some)
                .await
                .map_err(gone)?
                .clone()
                .unwrap_or_default();
            Ok(match pods.get(&addr.ip()) {
                Some(pod) => Destination::Endpoint(pod_endpoint(pod, addr)),
                None => Destination::Unknown,
            })
        })
    }
}

/// ClusterIP:port -> `<svc>.<ns>.svc.<domain>:<port>`, for each TCP port of each Service that
/// has a virtual address (a headless Service has none: its clients dial pods).
fn virtual_addresses(
    services: &BTreeMap<String, Arc<Service>>,
    domain: &str,
) -> HashMap<SocketAddr, String> {
    let mut out = HashMap::new();
    for service in services.values() {
        let (Some(name), Some(namespace), Some(spec)) = (
            service.metadata.name.as_deref(),
            service.metadata.namespace.as_deref(),
            service.spec.as_ref(),
        ) else {
            continue;
        };
        let ips = spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default();
        for ip in ips.iter().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            for port in spec.ports.iter().flatten() {
                let tcp = port.protocol.as_deref().is_none_or(|p| p == "TCP");
                let Ok(number) = u16::try_from(port.port) else {
                    continue;
                };
                if tcp {
                    out.insert(
                        SocketAddr::new(ip, number),
                        format!("{name}.{namespace}.svc.{domain}:{number}"),
                    );
                }
            }
        }
    }
    out
}

/// Each running pod's IPs (not those of host-network pods: those are the node's).
fn pod_addresses(
    pods: &BTreeMap<String, Arc<Pod>>,
    trust_domain: &str,
) -> HashMap<IpAddr, Arc<PodAddress>> {
    let mut out = HashMap::new();
    for pod in pods.values() {
        let (Some(name), Some(namespace), Some(status)) = (
            pod.metadata.name.as_deref(),
            pod.metadata.namespace.as_deref(),
            pod.status.as_ref(),
        ) else {
            continue;
        };
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        if host_network || finished {
            continue;
        }
        let opaque_ports = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(OPAQUE_PORTS_ANNOTATION))
            .map(|ports| parse_port_ranges(ports, name))
            .unwrap_or_default();
        let address = Arc::new(PodAddress {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            info: pod_info(pod, namespace, trust_domain),
            opaque_ports,
        });
        let ips = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.clone())
            .chain(status.pod_ip.clone());
        for ip in ips.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            out.insert(ip, address.clone());
        }
    }
    out
}

/// `"5432,6379,9000-9010"`; an entry that does not parse is skipped, logged.
fn parse_port_ranges(list: &str, pod: &str) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (low, high) = entry.split_once('-').unwrap_or((entry, entry));
        match (low.trim().parse::<u16>(), high.trim().parse::<u16>()) {
            (Ok(low), Ok(high)) if low <= high => out.push((low, high)),
            _ => {
                tracing::warn!(%pod, %entry, annotation = OPAQUE_PORTS_ANNOTATION, "not a port or a range of ports; ignored")
            }
        }
    }
    out
}

/// The endpoint a pod's address is: its identity when meshed, and `protocol = "opaque"` when
/// its annotation marks the port opaque.
fn pod_endpoint(pod: &PodAddress, addr: SocketAddr) -> Endpoint {
    let mut labels = vec![
        ("namespace".to_owned(), pod.namespace.clone()),
        ("pod".to_owned(), pod.name.clone()),
    ];
    if let Some(workload) = &pod.info.workload {
        labels.push(("workload".to_owned(), workload.clone()));
    }
    let port = addr.port();
    if pod
        .opaque_ports
        .iter()
        .any(|&(low, high)| (low..=high).contains(&port))
    {
        labels.push(("protocol".to_owned(), "opaque".to_owned()));
    }
    Endpoint::meshed(addr, labels, pod.info.identity.clone())
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
    key: Key,
}

/// How a watch keys its objects: by name within a namespace, by `namespace/name` across them.
type Key = fn(&kube::api::ObjectMeta) -> String;

fn by_name(meta: &kube::api::ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

fn by_namespace_and_name(meta: &kube::api::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

impl<K: kube::Resource> Known<K> {
    fn new(key: Key) -> Self {
        Self {
            objects: BTreeMap::new(),
            relisting: None,
            synced: false,
            key,
        }
    }

    /// Applies one event; true when the known objects changed.
    fn apply(&mut self, event: Event<K>) -> bool {
        let key = self.key;
        let name = |k: &K| key(k.meta());
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
    key: Key,
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
    let mut known = Known::<K>::new(key);
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object");
    loop {
        // A namespace nobody follows any more ends its watches at once, not at the next event.
        let event = tokio::select! {
            event = events.next() => event,
            () = tx.closed() => return,
        };
        let Some(event) = event else {
            break;
        };
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
    let every = inner
        .upgrade()
        .map_or(UNUSED_CHECK, |i| i.config.release_after);
    let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
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
/// Forgets `target` if nobody follows it, and its namespace's watches with the namespace's
/// last Service (their tasks end once the last receiver is gone).
fn forget(inner: &Inner, target: &ServiceTarget) -> bool {
    let mut services = inner.services.lock().unwrap_or_else(|e| e.into_inner());
    let unused = services.get(target).is_none_or(|p| p.subscribers() == 0);
    if unused {
        services.remove(target);
        if !services.keys().any(|s| s.namespace == target.namespace) {
            inner
                .namespaces
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&target.namespace);
            tracing::debug!(namespace = %target.namespace, "no Service followed: namespace watches released");
        }
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
