//! The object store: current objects, a global resource version counter and
//! a bounded per-resource event history, as the API server's watch cache
//! keeps over etcd.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};

use crate::meta::{ApiError, ResourceType, new_uid, now_rfc3339, random_suffix};

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub(crate) type Key = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change to one object, as kept in history and fanned out to watches.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub(crate) rv: u64,
    pub(crate) res: usize,
    pub(crate) kind: EventType,
    /// The object after the change; for a deletion, its last state with
    /// `metadata.resourceVersion` set to the deletion's resource version.
    pub(crate) object: Arc<Value>,
    /// The object before the change (none for a creation).
    pub(crate) prev: Option<Arc<Value>>,
}

/// What goes to every open watch, in resource-version order.
#[derive(Debug, Clone)]
pub(crate) enum Broadcast {
    Event(Arc<StoredEvent>),
    /// A bookmark at this resource version: every event up to it was sent.
    Bookmark(u64),
}

/// How a write treats an existing object and server-owned fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// The Rust test API: create or replace; `status` is written as given.
    Apply,
    /// HTTP POST: the object must not exist.
    Create,
    /// HTTP PUT or PATCH: the object must exist; a `resourceVersion` in the
    /// body is a precondition.
    Update,
}

/// The result of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The object did not exist: an `ADDED` event was emitted.
    Created,
    /// The object changed: a `MODIFIED` event was emitted.
    Updated,
    /// The object was identical to the stored one: as on the real server,
    /// nothing was written, the resource version did not move and no event
    /// was emitted.
    Unchanged,
    /// The write removed the last finalizer of an object being deleted, so
    /// it was deleted (a `DELETED` event was emitted).
    Deleted,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WatchStart {
    /// Replay the events after this resource version.
    After(u64),
    /// Synthetic `ADDED` events for the current objects, then changes.
    CurrentState,
    /// Only changes from now on.
    Now,
}

#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) resources: Vec<ResourceType>,
    rv: u64,
    objects: Vec<BTreeMap<Key, Arc<Value>>>,
    history: Vec<VecDeque<Arc<StoredEvent>>>,
    /// Per resource: the oldest resource version a watch can resume from.
    floor: Vec<u64>,
    window: usize,
    tx: broadcast::Sender<Broadcast>,
    rv_tx: watch::Sender<u64>,
    /// Cluster IPs and node ports handed out to Services created over HTTP.
    allocated: u32,
}

fn meta_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be a JSON object"))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// Sets `metadata.resourceVersion`.
pub(crate) fn with_rv(obj: &Value, rv: u64) -> Value {
    let mut obj = obj.clone();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".to_owned(), Value::from(rv.to_string()));
    }
    obj
}

/// The object without `metadata` and `status`: what a generation counts.
fn spec_part(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    obj
}

fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

/// The status a freshly created object gets when status is a subresource.
fn initial_status(rt: &ResourceType) -> Option<Value> {
    match (rt.group, rt.kind) {
        ("", "Pod") => Some(json!({"phase": "Pending"})),
        ("", "Service") => Some(json!({"loadBalancer": {}})),
        ("", "Namespace") => Some(json!({"phase": "Active"})),
        _ => None,
    }
}

impl Store {
    pub(crate) fn new(resources: Vec<ResourceType>, window: usize) -> Self {
        let n = resources.len();
        let (tx, _) = broadcast::channel(4096);
        let (rv_tx, _) = watch::channel(1);
        Self {
            resources,
            // A fresh etcd starts above zero; "0" means "any" to the API.
            rv: 1,
            objects: vec![BTreeMap::new(); n],
            history: vec![VecDeque::new(); n],
            floor: vec![0; n],
            window,
            tx,
            rv_tx,
            allocated: 0,
        }
    }

    pub(crate) fn rv(&self) -> u64 {
        self.rv
    }

    pub(crate) fn rv_watcher(&self) -> watch::Receiver<u64> {
        self.rv_tx.subscribe()
    }

    pub(crate) fn index_of(&self, api_version: &str, kind: &str) -> Option<usize> {
        self.resources
            .iter()
            .position(|r| r.api_version == api_version && r.kind == kind)
    }

    pub(crate) fn get(&self, res: usize, key: &Key) -> Option<Arc<Value>> {
        self.objects.get(res)?.get(key).cloned()
    }

    /// The objects of a resource, now or (`at`) as they were at a resource
    /// version still covered by the history.
    pub(crate) fn snapshot(
        &self,
        res: usize,
        at: Option<u64>,
    ) -> Result<BTreeMap<Key, Arc<Value>>, u64> {
        let mut objects = self.objects[res].clone();
        let Some(at) = at else {
            return Ok(objects);
        };
        if at < self.floor[res] {
            return Err(self.floor[res]);
        }
        for ev in self.history[res].iter().rev().take_while(|e| e.rv > at) {
            let key = key_of(&ev.object);
            match &ev.prev {
                Some(prev) => objects.insert(key, prev.clone()),
                None => objects.remove(&key),
            };
        }
        Ok(objects)
    }

    /// Registers a watch: the events it must replay first, and the live feed,
    /// subscribed under the same lock so that nothing falls in between.
    #[allow(clippy::type_complexity, reason = "a private pair")]
    pub(crate) fn start_watch(
        &self,
        res: usize,
        start: WatchStart,
    ) -> Result<(Vec<Arc<StoredEvent>>, broadcast::Receiver<Broadcast>), ApiError> {
        let replay = match start {
            WatchStart::After(rv) => {
                if rv < self.floor[res] {
                    return Err(ApiError::expired(format!(
                        "too old resource version: {rv} ({})",
                        self.floor[res]
                    )));
                }
                self.history[res]
                    .iter()
                    .filter(|e| e.rv > rv)
                    .cloned()
                    .collect()
            }
            WatchStart::CurrentState => self.objects[res]
                .values()
                .map(|o| {
                    Arc::new(StoredEvent {
                        rv: self.rv,
                        res,
                        kind: EventType::Added,
                        object: o.clone(),
                        prev: None,
                    })
                })
                .collect(),
            WatchStart::Now => Vec::new(),
        };
        Ok((replay, self.tx.subscribe()))
    }

    /// Sends a bookmark at the current resource version to every watch.
    pub(crate) fn bookmark(&self) {
        // No receivers is fine.
        let _ = self.tx.send(Broadcast::Bookmark(self.rv));
    }

    /// Drops all history: a watch from any resource version older than the
    /// current one now gets `410 Expired`.
    pub(crate) fn compact(&mut self) {
        for (h, f) in self.history.iter_mut().zip(self.floor.iter_mut()) {
            h.clear();
            *f = self.rv;
        }
    }

    pub(crate) fn set_window(&mut self, window: usize) {
        self.window = window;
        for res in 0..self.history.len() {
            self.trim(res);
        }
    }

    fn trim(&mut self, res: usize) {
        let mut evicted = false;
        while self.history[res].len() > self.window {
            self.history[res].pop_front();
            evicted = true;
        }
        if evicted {
            // As the watch cache: resumable from (oldest retained event) - 1.
            let floor = self.history[res].front().map_or(self.rv, |e| e.rv - 1);
            self.floor[res] = self.floor[res].max(floor);
        }
    }

    fn commit(
        &mut self,
        res: usize,
        kind: EventType,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        let key = key_of(&object);
        match kind {
            EventType::Deleted => self.objects[res].remove(&key),
            _ => self.objects[res].insert(key, object.clone()),
        };
        let ev = Arc::new(StoredEvent {
            rv: self.rv,
            res,
            kind,
            object,
            prev,
        });
        self.history[res].push_back(ev.clone());
        self.trim(res);
        let _ = self.tx.send(Broadcast::Event(ev));
        self.rv_tx.send_replace(self.rv);
    }

    /// Creates or replaces an object, setting the server-owned metadata.
    pub(crate) fn write(
        &mut self,
        res: usize,
        mut obj: Value,
        mode: WriteMode,
    ) -> Result<(Arc<Value>, WriteOutcome), ApiError> {
        let rt = self.resources[res].clone();
        let map = obj
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
        if let Some(v) = map.get("apiVersion").and_then(Value::as_str)
            && v != rt.api_version
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                rt.api_version
            )));
        }
        if let Some(k) = map.get("kind").and_then(Value::as_str)
            && k != rt.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
        map.insert("apiVersion".to_owned(), Value::from(rt.api_version));
        map.insert("kind".to_owned(), Value::from(rt.kind));
        let http = mode != WriteMode::Apply;
        let meta = meta_mut(&mut obj)?;
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() && mode != WriteMode::Update => {
                    let n = format!("{g}{}", random_suffix());
                    meta.insert("name".to_owned(), Value::from(n.clone()));
                    n
                }
                _ => {
                    let mut e = ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                            rt.kind
                        ),
                    );
                    e.details = Some(json!({"kind": rt.kind, "group": rt.group}));
                    return Err(e);
                }
            },
        };
        let namespace = if rt.namespaced {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() => ns.to_owned(),
                _ => {
                    meta.insert("namespace".to_owned(), Value::from("default"));
                    "default".to_owned()
                }
            }
        } else {
            meta.remove("namespace");
            String::new()
        };
        let precondition_rv = meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let key = (namespace, name.clone());
        let existing = self.objects[res].get(&key).cloned();
        match (&existing, mode) {
            (Some(_), WriteMode::Create) => return Err(ApiError::already_exists(&rt, &name)),
            (None, WriteMode::Update) => return Err(ApiError::not_found(&rt, &name)),
            (Some(old), WriteMode::Update)
                if precondition_rv
                    .as_deref()
                    .is_some_and(|rv| Some(rv) != meta_str(old, "resourceVersion")) =>
            {
                return Err(ApiError::conflict(&rt, &name));
            }
            _ => {}
        }
        match existing {
            Some(old) => {
                for field in [
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "resourceVersion",
                    "generation",
                ] {
                    match old.get("metadata").and_then(|m| m.get(field)) {
                        Some(v) => meta.insert(field.to_owned(), v.clone()),
                        None => meta.remove(field),
                    };
                }
                if http
                    && rt.status_subresource
                    && let Some(map) = obj.as_object_mut()
                {
                    match old.get("status") {
                        Some(s) => map.insert("status".to_owned(), s.clone()),
                        None => map.remove("status"),
                    };
                }
                if spec_part(&obj) != spec_part(&old) {
                    let generation = old
                        .pointer("/metadata/generation")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    meta_mut(&mut obj)?
                        .insert("generation".to_owned(), Value::from(generation + 1));
                }
                if obj == *old {
                    return Ok((old, WriteOutcome::Unchanged));
                }
                self.rv += 1;
                let new = Arc::new(with_rv(&obj, self.rv));
                if old.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&new) {
                    self.commit(res, EventType::Deleted, new.clone(), Some(old));
                    return Ok((new, WriteOutcome::Deleted));
                }
                self.commit(res, EventType::Modified, new.clone(), Some(old));
                Ok((new, WriteOutcome::Updated))
            }
            None => {
                meta.insert("uid".to_owned(), Value::from(new_uid()));
                meta.insert("creationTimestamp".to_owned(), Value::from(now_rfc3339()));
                meta.insert("generation".to_owned(), Value::from(1));
                meta.remove("deletionTimestamp");
                meta.remove("deletionGracePeriodSeconds");
                if http
                    && rt.status_subresource
                    && let Some(map) = obj.as_object_mut()
                {
                    map.remove("status");
                    if let Some(s) = initial_status(&rt) {
                        map.insert("status".to_owned(), s);
                    }
                }
                if http && rt.group.is_empty() && rt.kind == "Service" {
                    self.default_service(&mut obj);
                }
                self.rv += 1;
                let new = Arc::new(with_rv(&obj, self.rv));
                self.commit(res, EventType::Added, new.clone(), None);
                Ok((new, WriteOutcome::Created))
            }
        }
    }

    /// The defaults and allocations the real server gives a new Service
    /// (`SetDefaults_Service` and the IP/port allocators), for creates over
    /// HTTP; the Rust API stores what it is given.
    fn default_service(&mut self, obj: &mut Value) {
        let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let ty = spec
            .entry("type")
            .or_insert_with(|| Value::from("ClusterIP"))
            .as_str()
            .unwrap_or("ClusterIP")
            .to_owned();
        spec.entry("sessionAffinity")
            .or_insert_with(|| Value::from("None"));
        if ty == "ExternalName" {
            return;
        }
        let node_ports = matches!(ty.as_str(), "NodePort" | "LoadBalancer");
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                port.entry("protocol").or_insert_with(|| Value::from("TCP"));
                if let Some(p) = port.get("port").cloned() {
                    port.entry("targetPort").or_insert(p);
                }
                if node_ports && port.get("nodePort").is_none() {
                    self.allocated += 1;
                    port.insert(
                        "nodePort".to_owned(),
                        Value::from(30000 + self.allocated % 2768),
                    );
                }
            }
        }
        let cluster_ip = match spec.get("clusterIP").and_then(Value::as_str) {
            Some(ip) if !ip.is_empty() => ip.to_owned(),
            _ => {
                self.allocated += 1;
                let n = self.allocated;
                let ip = format!("10.96.{}.{}", 1 + (n / 254) % 254, 1 + n % 254);
                spec.insert("clusterIP".to_owned(), Value::from(ip.clone()));
                ip
            }
        };
        spec.entry("clusterIPs")
            .or_insert_with(|| json!([cluster_ip]));
        spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
        spec.entry("ipFamilyPolicy")
            .or_insert_with(|| Value::from("SingleStack"));
        spec.entry("internalTrafficPolicy")
            .or_insert_with(|| Value::from("Cluster"));
        if node_ports {
            spec.entry("externalTrafficPolicy")
                .or_insert_with(|| Value::from("Cluster"));
        }
        if ty == "LoadBalancer" {
            spec.entry("allocateLoadBalancerNodePorts")
                .or_insert(Value::Bool(true));
        }
    }

    /// Deletes an object. One with finalizers only gets its
    /// `deletionTimestamp` set (a `MODIFIED` event), as on the real server;
    /// it goes when an update removes the last finalizer. Returns the object
    /// and whether it is gone.
    pub(crate) fn delete(&mut self, res: usize, key: &Key) -> Result<(Arc<Value>, bool), ApiError> {
        let rt = &self.resources[res];
        let Some(old) = self.objects[res].get(key).cloned() else {
            return Err(ApiError::not_found(rt, &key.1));
        };
        if has_finalizers(&old) {
            if old.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((old, false));
            }
            let mut obj = (*old).clone();
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let meta = meta_mut(&mut obj)?;
            meta.insert("deletionTimestamp".to_owned(), Value::from(now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".to_owned(), Value::from(0));
            meta.insert("generation".to_owned(), Value::from(generation + 1));
            self.rv += 1;
            let new = Arc::new(with_rv(&obj, self.rv));
            self.commit(res, EventType::Modified, new.clone(), Some(old));
            return Ok((new, false));
        }
        self.rv += 1;
        let gone = Arc::new(with_rv(&old, self.rv));
        self.commit(res, EventType::Deleted, gone.clone(), Some(old));
        Ok((gone, true))
    }
}

pub(crate) fn key_of(obj: &Value) -> Key {
    (
        meta_str(obj, "namespace").unwrap_or_default().to_owned(),
        meta_str(obj, "name").unwrap_or_default().to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;

    use super::*;

    fn store() -> Store {
        Store::new(vec![ResourceType::of::<Service>()], 3)
    }

    fn svc(name: &str, port: i64) -> Value {
        json!({"metadata": {"name": name, "namespace": "demo", "labels": {"app": name}},
               "spec": {"ports": [{"port": port}]}})
    }

    #[test]
    fn writes_bump_rv_and_generation() {
        let mut s = store();
        let (a, o) = s.write(0, svc("a", 80), WriteMode::Apply).unwrap();
        assert_eq!(o, WriteOutcome::Created);
        assert_eq!(a["metadata"]["resourceVersion"], "2");
        assert_eq!(a["metadata"]["generation"], 1);
        assert_eq!(a["kind"], "Service");
        let uid = a["metadata"]["uid"].clone();
        let (_, o) = s.write(0, svc("a", 80), WriteMode::Apply).unwrap();
        assert_eq!(o, WriteOutcome::Unchanged);
        assert_eq!(s.rv(), 2);
        let mut relabeled = svc("a", 80);
        relabeled["metadata"]["labels"]["x"] = json!("y");
        let (b, _) = s.write(0, relabeled, WriteMode::Apply).unwrap();
        assert_eq!(b["metadata"]["generation"], 1);
        assert_eq!(b["metadata"]["uid"], uid);
        let (c, o) = s.write(0, svc("a", 81), WriteMode::Apply).unwrap();
        assert_eq!(o, WriteOutcome::Updated);
        assert_eq!(c["metadata"]["generation"], 2);
        assert_eq!(c["metadata"]["resourceVersion"], "4");
    }

    #[test]
    fn history_window_and_snapshots() {
        let mut s = store();
        for i in 0..5 {
            s.write(0, svc(&format!("s{i}"), 80), WriteMode::Apply)
                .unwrap();
        }
        // rv 2..=6; window 3 keeps 4,5,6: resumable from 3.
        assert!(s.start_watch(0, WatchStart::After(2)).is_err());
        let (replay, _) = s.start_watch(0, WatchStart::After(3)).unwrap();
        assert_eq!(replay.len(), 3);
        assert_eq!(s.snapshot(0, Some(4)).unwrap().len(), 3);
        assert_eq!(s.snapshot(0, Some(2)), Err(3));
        s.compact();
        let err = s.start_watch(0, WatchStart::After(5)).unwrap_err();
        assert_eq!(err.code, 410);
        assert_eq!(err.message, "too old resource version: 5 (6)");
        assert!(s.start_watch(0, WatchStart::After(6)).is_ok());
    }

    #[test]
    fn finalizers_delay_deletion() {
        let mut s = store();
        let mut o = svc("a", 80);
        o["metadata"]["finalizers"] = json!(["x/y"]);
        s.write(0, o.clone(), WriteMode::Apply).unwrap();
        let key = ("demo".to_owned(), "a".to_owned());
        let (obj, gone) = s.delete(0, &key).unwrap();
        assert!(!gone);
        assert!(obj["metadata"]["deletionTimestamp"].is_string());
        o["metadata"]["finalizers"] = json!([]);
        let (_, outcome) = s.write(0, o, WriteMode::Apply).unwrap();
        assert_eq!(outcome, WriteOutcome::Deleted);
        assert!(s.get(0, &key).is_none());
    }
}
