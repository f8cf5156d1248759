//! The HTTP side: routing, discovery, list/get/watch and writes.

use std::collections::HashMap;
use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::meta::{ApiError, ResourceType, base64_decode, base64_encode, new_uid};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{Broadcast, EventType, Key, Store, StoredEvent, WatchStart, WriteMode, with_rv};
use crate::table::{IncludeObject, table};
use crate::{RecordedRequest, TokenReviewer};

pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Everything the connections share; it outlives restarts.
pub(crate) struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) token_reviewer: Mutex<TokenReviewer>,
    pub(crate) addr: SocketAddr,
    /// Every call of an admission webhook.
    pub(crate) webhook_calls: Mutex<Vec<crate::admission::WebhookCall>>,
    /// Where webhooks' Services are reached: (namespace, name, port) -> address.
    pub(crate) webhook_services: Mutex<HashMap<(String, String, u16), SocketAddr>>,
    /// Watches whose response is still streaming.
    pub(crate) open_watches: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts one open watch for as long as its response streams.
struct OpenWatch(Arc<std::sync::atomic::AtomicUsize>);

impl OpenWatch {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not
/// wedge the server for the others).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

const AUTH_GROUP: &str = "authentication.k8s.io";

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

fn not_found_path() -> ApiError {
    let mut e = ApiError::new(
        404,
        "NotFound",
        "the server could not find the requested resource",
    );
    e.details = Some(json!({}));
    e
}

fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
    )
}

/// Decodes one `application/x-www-form-urlencoded` component.
pub(crate) fn url_decode(s: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parsed query parameters (first value wins).
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(q: Option<&str>) -> Self {
        Self(
            q.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (url_decode(k), url_decode(v)),
                    None => (url_decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> Option<bool> {
        self.get(k)
            .map(|v| matches!(v, "true" | "1" | "True" | "TRUE" | "t" | "T"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Version,
    Health,
    Api,
    Apis,
    Group(String),
    ResourceList {
        group: String,
        version: String,
    },
    Collection {
        res: usize,
        ns: Option<String>,
        watch_path: bool,
    },
    Object {
        res: usize,
        ns: Option<String>,
        name: String,
        watch_path: bool,
    },
    /// An object's `status` subresource: a patch there changes its status only.
    Status {
        res: usize,
        ns: Option<String>,
        name: String,
    },
    TokenReviews,
    OpenApiRoot,
    OpenApiGroupVersion {
        group: String,
        version: String,
    },
    NotFound,
}

fn served_versions(store: &Store) -> Vec<(String, String)> {
    let mut gvs: BTreeSet<(String, String)> = store
        .resources
        .iter()
        .map(|r| (r.group.to_owned(), r.version.to_owned()))
        .collect();
    gvs.insert((AUTH_GROUP.to_owned(), "v1".to_owned()));
    gvs.into_iter().collect()
}

fn route(store: &Store, path: &str) -> Route {
    match path {
        "/version" | "/version/" => return Route::Version,
        "/healthz" | "/livez" | "/readyz" => return Route::Health,
        "/api" | "/api/" => return Route::Api,
        "/apis" | "/apis/" => return Route::Apis,
        "/openapi/v3" | "/openapi/v3/" => return Route::OpenApiRoot,
        _ => {}
    }
    if let Some(gv) = path.strip_prefix("/openapi/v3/") {
        let (group, version) = match gv
            .trim_matches('/')
            .split('/')
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["api", v] => (String::new(), (*v).to_owned()),
            ["apis", g, v] => ((*g).to_owned(), (*v).to_owned()),
            _ => return Route::NotFound,
        };
        return if store
            .resources
            .iter()
            .any(|r| r.group == group && r.version == version)
        {
            Route::OpenApiGroupVersion { group, version }
        } else {
            Route::NotFound
        };
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, mut rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g] => {
            return if served_versions(store).iter().any(|(sg, _)| sg == g) {
                Route::Group((*g).to_owned())
            } else {
                Route::NotFound
            };
        }
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    if !served_versions(store)
        .iter()
        .any(|(g, v)| g == group && v == version)
    {
        return Route::NotFound;
    }
    if rest.is_empty() {
        return Route::ResourceList {
            group: group.to_owned(),
            version: version.to_owned(),
        };
    }
    if group == AUTH_GROUP && version == "v1" && rest == ["tokenreviews"] {
        return Route::TokenReviews;
    }
    let watch_path = rest.first() == Some(&"watch");
    if watch_path {
        rest = &rest[1..];
    }
    let find = |plural: &str, namespaced: bool| {
        store.resources.iter().position(|r| {
            r.group == group
                && r.version == version
                && r.plural == plural
                && r.namespaced == namespaced
        })
    };
    let find_any = |plural: &str| {
        store
            .resources
            .iter()
            .position(|r| r.group == group && r.version == version && r.plural == plural)
    };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if find(plural, true).is_some() => {
            let res = find(plural, true).unwrap_or_default();
            let ns = Some((*ns).to_owned());
            match tail {
                [] => Route::Collection {
                    res,
                    ns,
                    watch_path,
                },
                [name] => Route::Object {
                    res,
                    ns,
                    name: (*name).to_owned(),
                    watch_path,
                },
                [name, "status"] if !watch_path => Route::Status {
                    res,
                    ns,
                    name: (*name).to_owned(),
                },
                _ => Route::NotFound,
            }
        }
        [plural] => match find_any(plural) {
            Some(res) => Route::Collection {
                res,
                ns: None,
                watch_path,
            },
            None => Route::NotFound,
        },
        [plural, name] => match find(plural, false) {
            Some(res) => Route::Object {
                res,
                ns: None,
                name: (*name).to_owned(),
                watch_path,
            },
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

fn verb(route: &Route, method: &Method, q: &Query) -> &'static str {
    let watch = q.flag("watch") == Some(true);
    match (route, method.as_str()) {
        (
            Route::Collection {
                watch_path: true, ..
            }
            | Route::Object {
                watch_path: true, ..
            },
            "GET",
        ) => "watch",
        (Route::Collection { .. } | Route::Object { .. }, "GET") if watch => "watch",
        (Route::Collection { .. }, "GET") => "list",
        (Route::Object { .. }, "GET") => "get",
        (Route::Collection { .. } | Route::TokenReviews, "POST") => "create",
        (Route::Collection { .. }, "DELETE") => "deletecollection",
        (Route::Object { .. }, "PUT") => "update",
        (Route::Object { .. } | Route::Status { .. }, "PATCH") => "patch",
        (Route::Status { .. }, "GET") => "get",
        (Route::Object { .. }, "DELETE") => "delete",
        (_, "GET") => "get",
        (_, "POST") => "post",
        (_, "PUT") => "put",
        (_, "PATCH") => "patch",
        (_, "DELETE") => "delete",
        _ => "other",
    }
}

/// Serves one request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let raw_query = req.uri().query().map(str::to_owned);
    let q = Query::parse(raw_query.as_deref());
    let route = route(&lock(&shared.store), &path);
    let verb = verb(&route, &method, &q);
    lock(&shared.requests).push(RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: raw_query,
        verb,
    });
    tracing::debug!(%method, %path, verb, "fake apiserver request");
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let as_table = accept.split(',').any(|a| {
        let params: Vec<&str> = a.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    });
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let body = match method {
        Method::POST | Method::PUT | Method::PATCH => match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return Ok(error_response(&ApiError::bad_request(e.to_string()))),
        },
        _ => Bytes::new(),
    };
    // Objects being created go through the mutating webhooks first, as on a real server.
    let body = match (&route, &method) {
        (Route::Collection { res, ns, .. }, &Method::POST) => {
            match crate::admission::admit(&shared, *res, ns.as_deref(), body).await {
                Ok(body) => body,
                Err(e) => return Ok(error_response(&e)),
            }
        }
        _ => body,
    };
    let result = match (&route, &method) {
        (Route::Version, &Method::GET) => Ok(json_response(200, &version())),
        (Route::Health, &Method::GET) => {
            let mut r = Response::new(full("ok"));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            Ok(r)
        }
        (Route::Api, &Method::GET) => Ok(json_response(200, &api_versions(shared.addr))),
        (Route::Apis, &Method::GET) => Ok(json_response(200, &api_groups(&lock(&shared.store)))),
        (Route::Group(g), &Method::GET) => {
            Ok(json_response(200, &api_group(&lock(&shared.store), g)))
        }
        (Route::ResourceList { group, version }, &Method::GET) => Ok(json_response(
            200,
            &resource_list(&lock(&shared.store), group, version),
        )),
        (Route::TokenReviews, &Method::POST) => token_review(&shared, &body),
        (Route::OpenApiRoot, &Method::GET) => {
            Ok(json_response(200, &openapi_root(&lock(&shared.store))))
        }
        (Route::OpenApiGroupVersion { group, version }, &Method::GET) => Ok(json_response(
            200,
            &openapi_group_version(&lock(&shared.store), group, version),
        )),
        (
            Route::Collection {
                res,
                ns,
                watch_path,
            },
            &Method::GET,
        ) => {
            if *watch_path || q.flag("watch") == Some(true) {
                watch(&shared, *res, ns.clone(), None, &q, as_table).await
            } else {
                list(&shared, *res, ns.as_deref(), &q, as_table).await
            }
        }
        (
            Route::Object {
                res,
                ns,
                name,
                watch_path,
            },
            &Method::GET,
        ) => {
            if *watch_path || q.flag("watch") == Some(true) {
                watch(&shared, *res, ns.clone(), Some(name.clone()), &q, as_table).await
            } else {
                get(&shared, *res, ns.clone(), name.clone(), &q, as_table)
            }
        }
        (
            Route::Collection {
                res, ns: Some(ns), ..
            },
            &Method::POST,
        ) => create(&shared, *res, Some(ns), &q, &body),
        (Route::Collection { res, ns: None, .. }, &Method::POST) => {
            if lock(&shared.store).resources[*res].namespaced {
                Err(method_not_allowed())
            } else {
                create(&shared, *res, None, &q, &body)
            }
        }
        (Route::Object { res, ns, name, .. }, &Method::PUT) => {
            update(&shared, *res, ns.clone(), name, &q, &body)
        }
        (Route::Object { res, ns, name, .. }, &Method::PATCH) => {
            patch(&shared, *res, ns.clone(), name, &q, &content_type, &body)
        }
        (Route::Status { res, ns, name }, &Method::GET) => {
            get(&shared, *res, ns.clone(), name.clone(), &q, false)
        }
        (Route::Status { res, ns, name }, &Method::PATCH) => {
            // As the real server does: of the patch, only `status` is applied.
            let status_only = parse_body(&body).map(|p| {
                let status = p.get("status").cloned().unwrap_or(Value::Null);
                serde_json::to_vec(&json!({ "status": status }))
                    .map(Bytes::from)
                    .unwrap_or_default()
            });
            match status_only {
                Ok(body) => patch(&shared, *res, ns.clone(), name, &q, &content_type, &body),
                Err(e) => Err(e),
            }
        }
        (Route::Object { res, ns, name, .. }, &Method::DELETE) => {
            delete(&shared, *res, ns.clone(), name, &q)
        }
        (Route::NotFound, _) => Err(not_found_path()),
        _ => Err(method_not_allowed()),
    };
    let mut resp = result.unwrap_or_else(|e| error_response(&e));
    let headers = resp.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    if let Ok(v) = HeaderValue::from_str(&new_uid()) {
        headers.insert("audit-id", v);
    }
    Ok(resp)
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "emulationMajor": "1",
        "emulationMinor": "35",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "34",
        "gitVersion": "v1.35.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-12-17T00:00:00Z",
        "goVersion": "go1.25.5",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn api_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string()}],
    })
}

fn group_json(store: &Store, group: &str) -> Value {
    let versions: Vec<Value> = served_versions(store)
        .into_iter()
        .filter(|(g, _)| g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

fn api_groups(store: &Store) -> Value {
    let groups: BTreeSet<String> = served_versions(store)
        .into_iter()
        .map(|(g, _)| g)
        .filter(|g| !g.is_empty())
        .collect();
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups.iter().map(|g| group_json(store, g)).collect::<Vec<_>>(),
    })
}

fn api_group(store: &Store, group: &str) -> Value {
    let mut g = group_json(store, group);
    if let Some(m) = g.as_object_mut() {
        m.insert("kind".to_owned(), "APIGroup".into());
        m.insert("apiVersion".to_owned(), "v1".into());
    }
    g
}

fn resource_list(store: &Store, group: &str, version: &str) -> Value {
    let mut resources: Vec<Value> = store
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .map(|r| {
            let mut e = json!({
                "name": r.plural,
                "singularName": r.singular(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            });
            if let Some(m) = e.as_object_mut() {
                if !r.short_names.is_empty() {
                    m.insert("shortNames".to_owned(), json!(r.short_names));
                }
                if !r.categories.is_empty() {
                    m.insert("categories".to_owned(), json!(r.categories));
                }
            }
            e
        })
        .collect();
    if group == AUTH_GROUP && version == "v1" {
        resources.push(json!({
            "name": "tokenreviews",
            "singularName": "tokenreview",
            "namespaced": false,
            "kind": "TokenReview",
            "verbs": ["create"],
        }));
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: where each group-version's document is. kubectl reads
/// it to learn that the server validates fields itself (`fieldValidation`).
fn openapi_root(store: &Store) -> Value {
    let gvs: BTreeSet<(&str, &str)> = store
        .resources
        .iter()
        .map(|r| (r.group, r.version))
        .collect();
    let paths: serde_json::Map<String, Value> = gvs
        .into_iter()
        .map(|(g, v)| {
            let p = gv_path(g, v);
            let url = format!("/openapi/v3/{p}?hash=0");
            (p, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// A minimal OpenAPI v3 document for one group-version: each object path
/// with a PATCH operation that takes `fieldValidation`, and no schemas.
fn openapi_group_version(store: &Store, group: &str, version: &str) -> Value {
    let mut paths = serde_json::Map::new();
    for r in store
        .resources
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let base = gv_path(group, version);
        let path = if r.namespaced {
            format!("/{base}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("/{base}/{}/{{name}}", r.plural)
        };
        paths.insert(
            path,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.35.0"},
        "paths": paths,
        "components": {"schemas": {}},
    })
}

/// The fields each kind lets a field selector use, as the real server does.
fn selectable_fields(rt: &ResourceType) -> &'static [&'static str] {
    match (rt.group, rt.kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ("", "Service") => &["spec.clusterIP", "spec.type"],
        ("", "Namespace") => &["status.phase"],
        ("", "Node") => &["spec.unschedulable"],
        _ => &[],
    }
}

/// Which objects a list or watch is about.
#[derive(Debug, Clone)]
struct Filter {
    ns: Option<String>,
    name: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn new(
        rt: &ResourceType,
        ns: Option<String>,
        name: Option<String>,
        q: &Query,
    ) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or_default())
            .map_err(ApiError::bad_request)?;
        for f in fields.fields() {
            if !matches!(f, "metadata.name" | "metadata.namespace")
                && !selectable_fields(rt).contains(&f)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        Ok(Self {
            ns,
            name,
            labels,
            fields,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let meta = |f: &str| {
            obj.pointer(&format!("/metadata/{f}"))
                .and_then(Value::as_str)
        };
        self.ns
            .as_deref()
            .is_none_or(|ns| meta("namespace") == Some(ns))
            && self.name.as_deref().is_none_or(|n| meta("name") == Some(n))
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    fn has_selectors(&self) -> bool {
        !self.labels.is_empty() || !self.fields.is_empty()
    }
}

fn strip_type_meta(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    o
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version \"{s}\"")))
}

/// Waits (up to 3 s, as the watch cache does) for the store to reach `rv`.
async fn wait_for_rv(shared: &Shared, rv: u64) -> Result<(), ApiError> {
    let mut rx = lock(&shared.store).rv_watcher();
    let reached = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|cur| *cur >= rv)).await;
    if matches!(reached, Ok(Ok(_))) {
        return Ok(());
    }
    let current = lock(&shared.store).rv();
    let mut e = ApiError::new(
        504,
        "Timeout",
        format!("Timeout: Too large resource version: {rv}, current: {current}"),
    );
    e.details = Some(json!({
        "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        "retryAfterSeconds": 1,
    }));
    Err(e)
}

const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. \
You can start a new list without the continue parameter, or use the continue token in this response to retrieve \
the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that \
were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

fn encode_continue(rv: u64, last: &Key) -> String {
    let token =
        json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{}/{}\u{0}", last.0, last.1)});
    base64_encode(token.to_string().as_bytes())
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let invalid = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let bytes = base64_decode(token).ok_or_else(|| {
        invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    })?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|_| invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)"))?;
    if v.get("v").and_then(Value::as_str) != Some("meta.k8s.io/v1") {
        return Err(invalid("server does not recognize this encoded version"));
    }
    let rv = v.get("rv").and_then(Value::as_u64).ok_or_else(|| {
        invalid("incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    })?;
    let start = v.get("start").and_then(Value::as_str).unwrap_or_default();
    let start = start.strip_suffix('\u{0}').unwrap_or(start);
    let (ns, name) = start
        .split_once('/')
        .ok_or_else(|| invalid("continue key is not valid"))?;
    Ok((rv, (ns.to_owned(), name.to_owned())))
}

async fn list(
    shared: &Shared,
    res: usize,
    ns: Option<&str>,
    q: &Query,
    as_table: bool,
) -> Result<Response<Body>, ApiError> {
    let rt = lock(&shared.store).resources[res].clone();
    let filter = Filter::new(&rt, ns.map(str::to_owned), None, q)?;
    let rv_param = q.get("resourceVersion").unwrap_or_default();
    let rv_match = q.get("resourceVersionMatch").unwrap_or_default();
    let limit: usize = match q.get("limit") {
        Some(l) if !l.is_empty() => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit \"{l}\"")))?
            .max(0)
            .try_into()
            .unwrap_or(usize::MAX),
        _ => 0,
    };
    if !rv_match.is_empty() && rv_param.is_empty() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch is forbidden unless resourceVersion is provided",
        ));
    }
    let (at, start) = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            if !rv_param.is_empty() && rv_param != "0" {
                return Err(ApiError::bad_request(
                    "specifying resource version is not allowed when using continue",
                ));
            }
            let (rv, start) = decode_continue(token)?;
            (Some(rv), Some(start))
        }
        None => match (rv_param, rv_match) {
            ("" | "0", _) => (None, None),
            (rv, "Exact") => {
                let rv = parse_rv(rv)?;
                wait_for_rv(shared, rv).await?;
                (Some(rv), None)
            }
            (rv, "" | "NotOlderThan") => {
                wait_for_rv(shared, parse_rv(rv)?).await?;
                (None, None)
            }
            (_, other) => {
                return Err(ApiError::bad_request(format!(
                    "resourceVersionMatch: Unsupported value: \"{other}\""
                )));
            }
        },
    };
    let (objects, list_rv) = {
        let store = lock(&shared.store);
        let snapshot = store.snapshot(res, at).map_err(|floor| {
            if start.is_some() {
                ApiError::expired(CONTINUE_EXPIRED)
            } else {
                ApiError::expired(format!(
                    "The resourceVersion for the provided list is too old. (oldest available: {floor})"
                ))
            }
        })?;
        (snapshot, at.unwrap_or_else(|| store.rv()))
    };
    let mut matching: Vec<(&Key, &Value)> = objects
        .iter()
        .filter(|(k, _)| start.as_ref().is_none_or(|s| *k > s))
        .filter(|(_, o)| filter.matches(o))
        .map(|(k, o)| (k, o.as_ref()))
        .collect();
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if limit > 0 && matching.len() > limit {
        let remaining = matching.len() - limit;
        matching.truncate(limit);
        if let (Some((last, _)), Some(m)) = (matching.last(), meta.as_object_mut()) {
            m.insert("continue".to_owned(), encode_continue(list_rv, last).into());
            if !filter.has_selectors() {
                m.insert("remainingItemCount".to_owned(), remaining.into());
            }
        }
    }
    if as_table {
        let include = table_include(q)?;
        let objs: Vec<&Value> = matching.iter().map(|(_, o)| *o).collect();
        return Ok(json_response(200, &table(&rt, &objs, meta, include)));
    }
    let body = json!({
        "kind": format!("{}List", rt.kind),
        "apiVersion": rt.api_version,
        "metadata": meta,
        "items": matching.iter().map(|(_, o)| strip_type_meta(o)).collect::<Vec<_>>(),
    });
    Ok(json_response(200, &body))
}

fn table_include(q: &Query) -> Result<IncludeObject, ApiError> {
    match q.get("includeObject").unwrap_or_default() {
        "" | "Metadata" => Ok(IncludeObject::Metadata),
        "None" => Ok(IncludeObject::None),
        "Object" => Ok(IncludeObject::Object),
        other => Err(ApiError::bad_request(format!(
            "includeObject: Unsupported value: \"{other}\""
        ))),
    }
}

fn key(rt: &ResourceType, ns: Option<String>, name: &str) -> Key {
    (
        if rt.namespaced {
            ns.unwrap_or_default()
        } else {
            String::new()
        },
        name.to_owned(),
    )
}

fn get(
    shared: &Shared,
    res: usize,
    ns: Option<String>,
    name: String,
    q: &Query,
    as_table: bool,
) -> Result<Response<Body>, ApiError> {
    let store = lock(&shared.store);
    let rt = store.resources[res].clone();
    let obj = store
        .get(res, &key(&rt, ns, &name))
        .ok_or_else(|| ApiError::not_found(&rt, &name))?;
    let rv = store.rv();
    drop(store);
    if as_table {
        let include = table_include(q)?;
        return Ok(json_response(
            200,
            &table(
                &rt,
                &[&obj],
                json!({"resourceVersion": rv.to_string()}),
                include,
            ),
        ));
    }
    Ok(json_response(200, &obj))
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(rt: &ResourceType, rv: u64, initial_events_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_events_end && let Some(m) = meta.as_object_mut() {
        m.insert(
            "annotations".to_owned(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}),
    )
}

/// The watch event one stored event becomes for a watcher with `filter`,
/// as the watch cache's `cacheWatcher.convertToWatchEvent` does: an object
/// that stops matching is `DELETED`, one that starts matching is `ADDED`.
fn convert(
    filter: &Filter,
    table_rt: Option<(&ResourceType, IncludeObject)>,
    ev: &StoredEvent,
) -> Option<Bytes> {
    let line = |ty: &str, obj: &Value| match table_rt {
        // `kubectl get -w`: each event carries a one-row Table.
        Some((rt, include)) => {
            let meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion")});
            event_line(ty, &table(rt, &[obj], meta, include))
        }
        None => event_line(ty, obj),
    };
    let old_passes = ev.prev.as_deref().is_some_and(|p| filter.matches(p));
    if ev.kind == EventType::Deleted {
        return old_passes.then(|| line("DELETED", &ev.object));
    }
    let cur_passes = filter.matches(&ev.object);
    match (cur_passes, old_passes) {
        (true, false) => Some(line("ADDED", &ev.object)),
        (true, true) => Some(line("MODIFIED", &ev.object)),
        (false, true) => {
            let prev = ev.prev.as_deref()?;
            Some(line("DELETED", &with_rv(prev, ev.rv)))
        }
        (false, false) => None,
    }
}

struct WatchState {
    rx: broadcast::Receiver<Broadcast>,
    res: usize,
    rt: ResourceType,
    filter: Filter,
    bookmarks: bool,
    table: Option<IncludeObject>,
    deadline: tokio::time::Instant,
    _open: OpenWatch,
}

async fn next_line(mut st: WatchState) -> Option<(Bytes, WatchState)> {
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(st.deadline) => return None,
            msg = st.rx.recv() => match msg {
                Ok(Broadcast::Event(ev)) => {
                    let table_rt = st.table.map(|i| (&st.rt, i));
                    if ev.res == st.res && let Some(line) = convert(&st.filter, table_rt, &ev) {
                        return Some((line, st));
                    }
                }
                Ok(Broadcast::Bookmark(rv)) => {
                    if st.bookmarks {
                        let line = bookmark_line(&st.rt, rv, false);
                        return Some((line, st));
                    }
                }
                // A watcher that fell behind is closed, as the real server
                // closes unresponsive watchers; the client resumes.
                Err(_) => return None,
            }
        }
    }
}

fn stream_response(lines: VecDeque<Bytes>, state: Option<WatchState>) -> Response<Body> {
    let stream = futures_util::stream::unfold((lines, state), |(mut lines, state)| async move {
        if let Some(line) = lines.pop_front() {
            return Some((line, (lines, state)));
        }
        let (line, st) = next_line(state?).await?;
        Some((line, (lines, Some(st))))
    });
    let stream = futures_util::StreamExt::map(stream, |b| Ok::<_, Infallible>(Frame::data(b)));
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn watch(
    shared: &Shared,
    res: usize,
    ns: Option<String>,
    name: Option<String>,
    q: &Query,
    as_table: bool,
) -> Result<Response<Body>, ApiError> {
    let rt = lock(&shared.store).resources[res].clone();
    let filter = Filter::new(&rt, ns, name, q)?;
    let table_include = if as_table {
        Some(table_include(q)?)
    } else {
        None
    };
    let bookmarks = q.flag("allowWatchBookmarks") == Some(true);
    let send_initial = q.flag("sendInitialEvents");
    let rv_param = q.get("resourceVersion").unwrap_or_default();
    let rv_match = q.get("resourceVersionMatch").unwrap_or_default();
    if send_initial.is_some() {
        if rv_match != "NotOlderThan" {
            return Err(ApiError::bad_request(
                "sendInitialEvents: Forbidden: sendInitialEvents is forbidden unless resourceVersionMatch is NotOlderThan",
            ));
        }
        if send_initial == Some(true) && !bookmarks {
            return Err(ApiError::bad_request(
                "allowWatchBookmarks: Required value: allowWatchBookmarks must be set to true when sendInitialEvents is true",
            ));
        }
    } else if !rv_match.is_empty() {
        return Err(ApiError::bad_request(
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let start = match (rv_param, send_initial) {
        (rv, Some(true)) => {
            if !matches!(rv, "" | "0") {
                wait_for_rv(shared, parse_rv(rv)?).await?;
            }
            WatchStart::CurrentState
        }
        ("" | "0", Some(false)) => WatchStart::Now,
        ("" | "0", None) => WatchStart::CurrentState,
        (rv, _) => {
            let rv = parse_rv(rv)?;
            wait_for_rv(shared, rv).await?;
            WatchStart::After(rv)
        }
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(1800);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let (replay, rx, rv) = {
        let store = lock(&shared.store);
        match store.start_watch(res, start) {
            Ok((replay, rx)) => (replay, rx, store.rv()),
            Err(e) => {
                // The real server answers 200 and sends the error as an event.
                return Ok(stream_response(
                    VecDeque::from([event_line("ERROR", &e.status())]),
                    None,
                ));
            }
        }
    };
    let mut lines: VecDeque<Bytes> = replay
        .iter()
        .filter_map(|ev| convert(&filter, table_include.map(|i| (&rt, i)), ev))
        .collect();
    if send_initial == Some(true) {
        lines.push_back(bookmark_line(&rt, rv, true));
    }
    Ok(stream_response(
        lines,
        Some(WatchState {
            rx,
            res,
            rt,
            filter,
            bookmarks,
            table: table_include,
            deadline,
            _open: OpenWatch::new(&shared.open_watches),
        }),
    ))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json: {e}"
        ))
    })
}

/// Paths of fields in `input` that decoding dropped.
fn unknown_fields(input: &Value, decoded: &Value, prefix: &str, out: &mut Vec<String>) {
    match (input, decoded) {
        (Value::Object(i), Value::Object(d)) => {
            for (k, v) in i {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match d.get(k) {
                    Some(dv) => unknown_fields(v, dv, &path, out),
                    None if !v.is_null() => out.push(path),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(d)) => {
            for (n, (v, dv)) in i.iter().zip(d).enumerate() {
                unknown_fields(v, dv, &format!("{prefix}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes a written object as the kind's type, as the real server does:
/// a badly typed field is 400; unknown fields are dropped, and reported
/// per `fieldValidation` (`Strict`: 400, `Warn` (the default): a
/// `Warning` header, `Ignore`). Returns the object and the warnings.
fn decode(rt: &ResourceType, obj: Value, q: &Query) -> Result<(Value, Vec<String>), ApiError> {
    let mode = q
        .get("fieldValidation")
        .filter(|m| !m.is_empty())
        .unwrap_or("Warn");
    if !matches!(mode, "Ignore" | "Warn" | "Strict") {
        return Err(ApiError::bad_request(format!(
            "fieldValidation: Unsupported value: \"{mode}\": supported values: \"Ignore\", \"Strict\", \"Warn\""
        )));
    }
    let cannot = |why: &str| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {why}",
            rt.kind, rt.version, rt.kind
        ))
    };
    let mut decoded = (rt.normalize)(obj.clone()).map_err(|e| cannot(&e))?;
    let mut unknown = Vec::new();
    unknown_fields(&obj, &decoded, "", &mut unknown);
    if rt.group.is_empty() && rt.kind == "Secret" {
        merge_string_data(&mut decoded);
    }
    let unknown: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match mode {
        "Strict" if !unknown.is_empty() => Err(cannot(&format!(
            "strict decoding error: {}",
            unknown.join(", ")
        ))),
        "Warn" => Ok((decoded, unknown)),
        _ => Ok((decoded, Vec::new())),
    }
}

/// A Secret's `stringData` becomes `data` (base64), as the real server writes it: `stringData`
/// is write-only.
fn merge_string_data(secret: &mut Value) {
    let Some(map) = secret.as_object_mut() else {
        return;
    };
    let Some(Value::Object(strings)) = map.remove("stringData") else {
        return;
    };
    let data = map
        .entry("data")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Value::Object(data) = data {
        for (key, value) in strings {
            let bytes = value.as_str().unwrap_or_default().as_bytes().to_vec();
            if let Ok(encoded) = serde_json::to_value(k8s_openapi::ByteString(bytes)) {
                data.insert(key, encoded);
            }
        }
    }
}

fn with_warnings(mut resp: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn reject_dry_run(q: &Query) -> Result<(), ApiError> {
    if q.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by mesh-kube-fake",
        ));
    }
    Ok(())
}

fn check_namespace(rt: &ResourceType, obj: &mut Value, ns: Option<&str>) -> Result<(), ApiError> {
    if !rt.namespaced {
        return Ok(());
    }
    let ns = ns.unwrap_or_default();
    let meta = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?
        .entry("metadata")
        .or_insert_with(|| json!({}));
    let meta = meta
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be a JSON object"))?;
    match meta.get("namespace").and_then(Value::as_str) {
        Some(body_ns) if !body_ns.is_empty() && body_ns != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => {
            meta.insert("namespace".to_owned(), ns.into());
            Ok(())
        }
    }
}

fn create(
    shared: &Shared,
    res: usize,
    ns: Option<&str>,
    q: &Query,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    reject_dry_run(q)?;
    let mut obj = parse_body(body)?;
    let mut store = lock(&shared.store);
    let rt = store.resources[res].clone();
    check_namespace(&rt, &mut obj, ns)?;
    let (obj, warnings) = decode(&rt, obj, q)?;
    let (obj, _) = store.write(res, obj, WriteMode::Create)?;
    Ok(with_warnings(json_response(201, &obj), &warnings))
}

fn update(
    shared: &Shared,
    res: usize,
    ns: Option<String>,
    name: &str,
    q: &Query,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    reject_dry_run(q)?;
    let mut obj = parse_body(body)?;
    let mut store = lock(&shared.store);
    let rt = store.resources[res].clone();
    check_namespace(&rt, &mut obj, ns.as_deref())?;
    match obj.pointer("/metadata/name").and_then(Value::as_str) {
        Some(n) if n == name => {}
        other => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                other.unwrap_or_default()
            )));
        }
    }
    let (obj, warnings) = decode(&rt, obj, q)?;
    let (obj, _) = store.write(res, obj, WriteMode::Update)?;
    Ok(with_warnings(json_response(200, &obj), &warnings))
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

fn patch(
    shared: &Shared,
    res: usize,
    ns: Option<String>,
    name: &str,
    q: &Query,
    content_type: &str,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    reject_dry_run(q)?;
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media != "application/merge-patch+json" {
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/merge-patch+json (mesh-kube-fake does not implement {media})"
            ),
        ));
    }
    let p = parse_body(body)?;
    let mut store = lock(&shared.store);
    let rt = store.resources[res].clone();
    let current = store
        .get(res, &key(&rt, ns, name))
        .ok_or_else(|| ApiError::not_found(&rt, name))?;
    let mut obj = (*current).clone();
    merge_patch(&mut obj, &p);
    if obj.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
        return Err(ApiError::bad_request(
            "metadata.name cannot be changed by a patch",
        ));
    }
    let (obj, warnings) = decode(&rt, obj, q)?;
    let (obj, _) = store.write(res, obj, WriteMode::Update)?;
    Ok(with_warnings(json_response(200, &obj), &warnings))
}

fn delete(
    shared: &Shared,
    res: usize,
    ns: Option<String>,
    name: &str,
    q: &Query,
) -> Result<Response<Body>, ApiError> {
    reject_dry_run(q)?;
    let mut store = lock(&shared.store);
    let rt = store.resources[res].clone();
    let (obj, gone) = store.delete(res, &key(&rt, ns, name))?;
    if !gone || (rt.group.is_empty() && rt.kind == "Pod") {
        return Ok(json_response(200, &obj));
    }
    let mut details = json!({"name": name, "kind": rt.plural, "uid": obj.pointer("/metadata/uid")});
    if !rt.group.is_empty()
        && let Some(m) = details.as_object_mut()
    {
        m.insert("group".to_owned(), rt.group.into());
    }
    Ok(json_response(
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}),
    ))
}

fn token_review(shared: &Shared, body: &Bytes) -> Result<Response<Body>, ApiError> {
    let review: TokenReview =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let responder = lock(&shared.token_reviewer).clone();
    let status: TokenReviewStatus = responder(&review);
    let out = TokenReview {
        metadata: review.metadata,
        spec: review.spec,
        status: Some(status),
    };
    let out = serde_json::to_value(&out)
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))?;
    Ok(json_response(201, &out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = Query::parse(Some(
            "&labelSelector=kubernetes.io%2Fservice-name%3Dweb&watch=true&x=a+b",
        ));
        assert_eq!(
            q.get("labelSelector"),
            Some("kubernetes.io/service-name=web")
        );
        assert_eq!(q.flag("watch"), Some(true));
        assert_eq!(q.get("x"), Some("a b"));
        assert_eq!(url_decode("100%"), "100%");
    }

    #[test]
    fn continue_tokens_round_trip() {
        let key = ("demo".to_owned(), "web".to_owned());
        let token = encode_continue(42, &key);
        assert_eq!(decode_continue(&token).unwrap(), (42, key));
        assert!(decode_continue("garbage!").is_err());
    }

    #[test]
    fn decoding_drops_and_reports_unknown_fields() {
        use k8s_openapi::api::core::v1::Service;
        let rt = ResourceType::of::<Service>();
        let obj = json!({"metadata": {"name": "a", "creationTimestamp": null}, "spec": {"bogus": 1, "ports": [{"port": 80, "nope": true}]}});
        let (decoded, warnings) = decode(&rt, obj.clone(), &Query::default()).unwrap();
        assert_eq!(
            warnings,
            [
                "unknown field \"spec.bogus\"",
                "unknown field \"spec.ports[0].nope\""
            ]
        );
        assert!(decoded.pointer("/spec/bogus").is_none());
        let strict = Query::parse(Some("fieldValidation=Strict"));
        let err = decode(&rt, obj.clone(), &strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message
                .contains("strict decoding error: unknown field \"spec.bogus\""),
            "{}",
            err.message
        );
        let ignore = Query::parse(Some("fieldValidation=Ignore"));
        assert!(decode(&rt, obj, &ignore).unwrap().1.is_empty());
        let bad = json!({"metadata": {"name": "a"}, "spec": {"ports": "eighty"}});
        assert_eq!(decode(&rt, bad, &Query::default()).unwrap_err().code, 400);
    }

    #[test]
    fn merge_patch_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }
}
