//! The Gateway API on Kubernetes, for the ingress: the `Gateway` it implements gives the TLS
//! certificates (its HTTPS listeners' `certificateRefs`, Secrets of type `kubernetes.io/tls`),
//! and the `HTTPRoute`s whose `parentRefs` name that Gateway give the routes. Both are read
//! through kube's watcher and reflector, as discovery reads EndpointSlices, so that an edit
//! applies within a second and a dropped watch resumes.
//!
//! What is read of an HTTPRoute: `hostnames`; each rule's `matches` (`path` of type `Exact`,
//! `PathPrefix` or `RegularExpression`; `headers` of type `Exact` or `RegularExpression`;
//! `method`), `backendRefs` to Services (`name`, `namespace`, `port`, `weight`) and
//! `timeouts.request`. Routes are ranked as the Gateway API ranks matches, across all the
//! routes of a host: an exact path, then the longest prefix, then a regular expression, then
//! none; a method before none; more headers first; and ties by age (oldest first), then
//! namespace and name, then rule order. A rule that cannot be served (no backend with weight, a backend that is
//! not a Service, a bad regular expression) is left out and logged, never the whole set. A
//! Service `web` in `shop` on port 80 is the mesh service `web.shop.svc.<cluster domain>:80`,
//! balanced over what discovery says of it.
//!
//! A GRPCRoute is read the same way, its rules' `matches` being a `method` (`Exact` or
//! `RegularExpression`, over `service` and `method`: a match of the call's path
//! `/<service>/<method>`) and `headers`. A cluster without the GRPCRoute CRD is served without
//! them (said once in the log). HTTPRoutes and GRPCRoutes are ranked together (a method is an
//! exact path, a service a prefix).
//!
//! Not read (yet): filters, query-parameter matches, `sectionName` and `port` of a parentRef
//! (a route attached to the Gateway is served on both listeners), ReferenceGrants (a Secret in
//! another namespace than the Gateway's is refused).
//!
//! The status the ingress writes back is in [`status`].

pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_route::{BackendConfig, HeaderMatch, MatchConfig, PathMatch, RouteConfig};
use serde::{Deserialize, Serialize};

/// The Gateway API's group.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// A `gateway.networking.k8s.io/v1` `Gateway`: what is read of it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Gateway {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// The listeners.
    #[serde(default)]
    pub spec: GatewaySpec,
    /// Its status as last written (kept, so that what others wrote is not lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// A Gateway's spec.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The class (informational here).
    #[serde(default)]
    pub gateway_class_name: String,
    /// Its listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// One listener of a Gateway.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// Its name.
    #[serde(default)]
    pub name: String,
    /// The host it serves (exact or `*.` wildcard); none: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Its port.
    #[serde(default)]
    pub port: u16,
    /// `HTTP` or `HTTPS`.
    #[serde(default)]
    pub protocol: String,
    /// Its TLS, for `HTTPS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

/// A listener's TLS.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (the default) or `Passthrough` (not served).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The Secrets holding the certificate and key.
    #[serde(default)]
    pub certificate_refs: Vec<ObjectRef>,
}

/// A reference to an object by group, kind, namespace and name.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Its group (`""`: the core group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Its kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its name.
    pub name: String,
    /// Its namespace; by default the referrer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A port (a backend Service's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A weight (a backend's; 1 by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// A listener's name (a parentRef's; not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// A Gateway API route, by the kind of its rules: [`HttpRoute`] or [`GrpcRoute`]. What is read
/// of it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Route<R> {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    #[serde(default)]
    pub spec: RouteSpec<R>,
    /// Its status as last written (kept, so that what others wrote is not lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// A route's spec.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec<R> {
    /// The Gateways it attaches to.
    #[serde(default)]
    pub parent_refs: Vec<ObjectRef>,
    /// The hosts it serves; none: every host of the Gateway.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Its rules.
    #[serde(default = "Vec::new")]
    pub rules: Vec<R>,
}

/// A `gateway.networking.k8s.io/v1` `HTTPRoute`.
pub type HttpRoute = Route<HttpRouteRule>;
/// A `gateway.networking.k8s.io/v1` `GRPCRoute`.
pub type GrpcRoute = Route<GrpcRouteRule>;

/// One rule of an HTTPRoute.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    /// Its name, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of these selects it; none: every request.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Where its requests go.
    #[serde(default)]
    pub backend_refs: Vec<ObjectRef>,
    /// Its timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
}

/// One match of a rule.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    /// The path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<ValueMatch>,
    /// Headers.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A path or header match: its type, the header's name, the value.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    /// `Exact`, `PathPrefix` (paths; the default), `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A header's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The value.
    #[serde(default)]
    pub value: String,
}

/// A rule's timeouts.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HttpRouteTimeouts {
    /// The whole request, as a Gateway API duration (`10s`, `1m30s`, `500ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

macro_rules! gateway_resource {
    ($ty:ty, $kind:literal, $list:literal, $plural:literal) => {
        gateway_resource!(
            $ty,
            $kind,
            $list,
            $plural,
            k8s_openapi::NamespaceResourceScope
        );
    };
    ($ty:ty, $kind:literal, $list:literal, $plural:literal, $scope:ty) => {
        impl k8s_openapi::Resource for $ty {
            const API_VERSION: &'static str = "gateway.networking.k8s.io/v1";
            const GROUP: &'static str = GROUP;
            const KIND: &'static str = $kind;
            const VERSION: &'static str = "v1";
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = $scope;
        }

        impl k8s_openapi::ListableResource for $ty {
            const LIST_KIND: &'static str = $list;
        }

        impl k8s_openapi::Metadata for $ty {
            type Ty = ObjectMeta;

            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

gateway_resource!(Gateway, "Gateway", "GatewayList", "gateways");
gateway_resource!(
    GatewayClass,
    "GatewayClass",
    "GatewayClassList",
    "gatewayclasses",
    k8s_openapi::ClusterResourceScope
);

/// A `gateway.networking.k8s.io/v1` `GatewayClass` (`meshctl install --gateway-api` makes
/// one; the ingress does not read it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GatewayClass {
    /// Standard metadata.
    pub metadata: ObjectMeta,
    /// Its spec.
    #[serde(default)]
    pub spec: GatewayClassSpec,
}

/// A GatewayClass's spec.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayClassSpec {
    /// The controller that implements the class.
    #[serde(default)]
    pub controller_name: String,
}
gateway_resource!(HttpRoute, "HTTPRoute", "HTTPRouteList", "httproutes");
gateway_resource!(GrpcRoute, "GRPCRoute", "GRPCRouteList", "grpcroutes");

/// One rule of a GRPCRoute.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteRule {
    /// Its name, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of these selects it; none: every call.
    #[serde(default)]
    pub matches: Vec<GrpcRouteMatch>,
    /// Where its calls go.
    #[serde(default)]
    pub backend_refs: Vec<ObjectRef>,
}

/// One match of a GRPCRoute rule.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcRouteMatch {
    /// The service and method called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<GrpcMethodMatch>,
    /// Headers (gRPC metadata).
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
}

/// A GRPCRoute's method match: `Exact` (the default) or `RegularExpression`, over the service
/// (`package.Service`) and the method; either may be left out.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct GrpcMethodMatch {
    /// `Exact` or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The fully qualified service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// The Gateway an ingress implements: `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl std::str::FromStr for GatewayRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(Self {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
            _ => Err(format!("{text:?} is not a Gateway as namespace/name")),
        }
    }
}

impl std::fmt::Display for GatewayRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Whether a route (its metadata and parentRefs) attaches to `gateway`.
fn attaches(metadata: &ObjectMeta, parent_refs: &[ObjectRef], gateway: &GatewayRef) -> bool {
    let route_ns = metadata.namespace.as_deref().unwrap_or("default");
    parent_refs.iter().any(|parent| {
        parent.group.as_deref().is_none_or(|g| g == GROUP)
            && parent.kind.as_deref().is_none_or(|k| k == "Gateway")
            && parent.namespace.as_deref().unwrap_or(route_ns) == gateway.namespace
            && parent.name == gateway.name
    })
}

/// The rules of one attached route, each converted (or why not), with the key that orders
/// routes: oldest first, then by namespace and name.
struct AttachedRoute {
    key: (
        Option<k8s_openapi::jiff::Timestamp>,
        Option<String>,
        Option<String>,
    ),
    rules: Vec<(String, Result<RouteConfig, String>)>,
}

/// `namespace/name/rule` (its name, or its index).
fn rule_name(metadata: &ObjectMeta, name: Option<&String>, index: usize) -> String {
    let ns = metadata.namespace.as_deref().unwrap_or("default");
    let route = metadata.name.as_deref().unwrap_or("");
    match name {
        Some(rule) => format!("{ns}/{route}/{rule}"),
        None => format!("{ns}/{route}/{index}"),
    }
}

fn order_key(metadata: &ObjectMeta) -> AttachedRoute {
    AttachedRoute {
        key: (
            metadata.creation_timestamp.clone().map(|t| t.0),
            metadata.namespace.clone(),
            metadata.name.clone(),
        ),
        rules: Vec::new(),
    }
}

/// The routes of the HTTPRoutes and GRPCRoutes attached to `gateway`, in the Gateway API's
/// order, and what was left out (with why).
pub fn routes_of(
    gateway: &GatewayRef,
    http_routes: &[Arc<HttpRoute>],
    grpc_routes: &[Arc<GrpcRoute>],
    cluster_domain: &str,
) -> (Vec<RouteConfig>, Vec<String>) {
    let mut attached = Vec::new();
    attach(http_routes, gateway, cluster_domain, &mut attached);
    attach(grpc_routes, gateway, cluster_domain, &mut attached);
    // Stable: of an HTTPRoute and a GRPCRoute made at once, with one name, the HTTPRoute first.
    attached.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (_, config) in attached.into_iter().flat_map(|r| r.rules) {
        match config {
            // Each match is ranked on its own: a rule of two matches becomes two routes.
            Ok(config) if config.matches.len() > 1 => {
                for m in &config.matches {
                    out.push(RouteConfig {
                        matches: vec![m.clone()],
                        ..config.clone()
                    });
                }
            }
            Ok(config) => out.push(config),
            Err(why) => problems.push(why),
        }
    }
    // Stable, so ties keep the order above.
    out.sort_by_key(|route| precedence(route.matches.first()));
    (out, problems)
}

/// How the Gateway API ranks a match among those of one host (lower first): an exact path,
/// then the longest path prefix (a gRPC method is an exact path, a gRPC service a prefix),
/// then a regular expression (its rank is the implementation's choice), then no path; then a
/// method before none; then the most headers.
fn precedence(
    m: Option<&MatchConfig>,
) -> (u8, std::cmp::Reverse<usize>, bool, std::cmp::Reverse<usize>) {
    let Some(m) = m else {
        return (3, std::cmp::Reverse(0), true, std::cmp::Reverse(0));
    };
    let (class, length) = match (&m.grpc, &m.path) {
        (Some(grpc), _) => match &grpc.method {
            Some(method) => (0, grpc.service.len() + method.len() + 2),
            None => (1, grpc.service.len() + 1),
        },
        (None, Some(PathMatch::Exact(path))) => (0, path.len()),
        (None, Some(PathMatch::Prefix(path))) => (1, path.len()),
        (None, Some(PathMatch::Regex(_))) => (2, 0),
        (None, None) => (3, 0),
    };
    (
        class,
        std::cmp::Reverse(length),
        m.method.is_none(),
        std::cmp::Reverse(m.headers.len()),
    )
}

/// A rule of a route kind: how it becomes a route of ours.
trait RouteRule {
    /// `HTTPRoute` or `GRPCRoute`.
    const KIND: &'static str;
    /// Its name, if given.
    fn name(&self) -> Option<&String>;
    /// The route it makes, named `name`, of a route in `namespace` serving `hostnames`.
    fn config(
        &self,
        name: &str,
        namespace: &str,
        hostnames: &[String],
        cluster_domain: &str,
    ) -> Result<RouteConfig, String>;
}

impl RouteRule for HttpRouteRule {
    const KIND: &'static str = "HTTPRoute";

    fn name(&self) -> Option<&String> {
        self.name.as_ref()
    }

    fn config(
        &self,
        name: &str,
        namespace: &str,
        hostnames: &[String],
        cluster_domain: &str,
    ) -> Result<RouteConfig, String> {
        rule_config(name, namespace, hostnames, self, cluster_domain)
    }
}

impl RouteRule for GrpcRouteRule {
    const KIND: &'static str = "GRPCRoute";

    fn name(&self) -> Option<&String> {
        self.name.as_ref()
    }

    fn config(
        &self,
        name: &str,
        namespace: &str,
        hostnames: &[String],
        cluster_domain: &str,
    ) -> Result<RouteConfig, String> {
        grpc_rule_config(name, namespace, hostnames, self, cluster_domain)
    }
}

/// Each rule of `route`, named, as a route or why not.
fn rules_of<R: RouteRule>(
    route: &Route<R>,
    cluster_domain: &str,
) -> Vec<(String, Result<RouteConfig, String>)> {
    let ns = route.metadata.namespace.as_deref().unwrap_or("default");
    route
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let name = rule_name(&route.metadata, rule.name(), i);
            let config = rule
                .config(&name, ns, &route.spec.hostnames, cluster_domain)
                .map_err(|why| format!("{} rule {name}: {why}", R::KIND));
            (name, config)
        })
        .collect()
}

/// The routes of `routes` that attach to `gateway`, added to `attached`.
fn attach<R: RouteRule>(
    routes: &[Arc<Route<R>>],
    gateway: &GatewayRef,
    cluster_domain: &str,
    attached: &mut Vec<AttachedRoute>,
) {
    for route in routes
        .iter()
        .filter(|r| attaches(&r.metadata, &r.spec.parent_refs, gateway))
    {
        let mut one = order_key(&route.metadata);
        one.rules = rules_of(route, cluster_domain);
        attached.push(one);
    }
}

/// The header matches of a rule's match.
fn header_matches(headers: &[ValueMatch]) -> Result<Vec<HeaderMatch>, String> {
    let mut out = Vec::new();
    for h in headers {
        let header_name = h.name.clone().ok_or("a header match without a name")?;
        let (value, regex) = match h.kind.as_deref().unwrap_or("Exact") {
            "Exact" => (Some(h.value.clone()), None),
            "RegularExpression" => (None, Some(h.value.clone())),
            other => return Err(format!("header match type {other:?} is not supported")),
        };
        out.push(HeaderMatch {
            name: header_name,
            value,
            regex,
        });
    }
    Ok(out)
}

/// The mesh services of a rule's `backendRefs` (Services only; weight 0 left out); an error
/// when none is left.
fn backends_of(
    refs: &[ObjectRef],
    namespace: &str,
    cluster_domain: &str,
) -> Result<Vec<BackendConfig>, String> {
    let mut backends = Vec::new();
    for backend in refs {
        if backend.group.as_deref().is_some_and(|g| !g.is_empty())
            || backend.kind.as_deref().is_some_and(|k| k != "Service")
        {
            return Err(format!("backend {:?} is not a Service", backend.name));
        }
        let port = backend
            .port
            .ok_or_else(|| format!("backend Service {:?} names no port", backend.name))?;
        let weight = backend.weight.unwrap_or(1);
        if weight == 0 {
            continue;
        }
        let ns = backend.namespace.as_deref().unwrap_or(namespace);
        backends.push(BackendConfig {
            service: format!("{}.{ns}.svc.{cluster_domain}:{port}", backend.name),
            weight,
        });
    }
    if backends.is_empty() {
        return Err("no backend with a weight above 0".into());
    }
    Ok(backends)
}

/// A GRPCRoute rule as a route: a method match is a match of the call's path
/// (`/<service>/<method>`).
fn grpc_rule_config(
    name: &str,
    namespace: &str,
    hostnames: &[String],
    rule: &GrpcRouteRule,
    cluster_domain: &str,
) -> Result<RouteConfig, String> {
    let mut matches = Vec::new();
    for m in &rule.matches {
        let (mut path, mut grpc) = (None, None);
        if let Some(method) = &m.method {
            let (service, call) = (method.service.as_deref(), method.method.as_deref());
            match (method.kind.as_deref().unwrap_or("Exact"), service, call) {
                (_, None, None) => {
                    return Err("a method match names neither service nor method".into());
                }
                ("Exact", Some(service), call) => {
                    grpc = Some(mesh_route::GrpcMatch {
                        service: service.to_owned(),
                        method: call.map(str::to_owned),
                    })
                }
                ("Exact", None, Some(call)) => {
                    path = Some(PathMatch::Regex(format!("/[^/]+/{}", regex_escape(call))))
                }
                ("RegularExpression", service, call) => {
                    path = Some(PathMatch::Regex(format!(
                        "/(?:{})/(?:{})",
                        service.unwrap_or("[^/]+"),
                        call.unwrap_or("[^/]+")
                    )))
                }
                (other, _, _) => {
                    return Err(format!("method match type {other:?} is not supported"));
                }
            }
        }
        let config = MatchConfig {
            path,
            method: None,
            headers: header_matches(&m.headers)?,
            grpc,
        };
        config.test(&http::Request::new(()))?;
        matches.push(config);
    }
    Ok(RouteConfig {
        name: name.to_owned(),
        hostnames: hostnames.to_vec(),
        matches,
        backends: backends_of(&rule.backend_refs, namespace, cluster_domain)?,
        timeout: mesh_core::timeout::TimeoutConfig::default(),
        retry: None,
    })
}

/// `text` matched literally inside a regular expression.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn rule_config(
    name: &str,
    namespace: &str,
    hostnames: &[String],
    rule: &HttpRouteRule,
    cluster_domain: &str,
) -> Result<RouteConfig, String> {
    let mut matches = Vec::new();
    for m in &rule.matches {
        let path = match &m.path {
            None => None,
            Some(p) => Some(match p.kind.as_deref().unwrap_or("PathPrefix") {
                "PathPrefix" if p.value == "/" || p.value.is_empty() => None,
                "PathPrefix" => Some(PathMatch::Prefix(p.value.clone())),
                "Exact" => Some(PathMatch::Exact(p.value.clone())),
                "RegularExpression" => Some(PathMatch::Regex(p.value.clone())),
                other => return Err(format!("path match type {other:?} is not supported")),
            }),
        }
        .flatten();
        let headers = header_matches(&m.headers)?;
        let config = MatchConfig {
            path,
            method: m.method.clone(),
            headers,
            grpc: None,
        };
        // A regular expression or a header name that does not compile is this rule's problem.
        config.test(&http::Request::new(()))?;
        matches.push(config);
    }
    let backends = backends_of(&rule.backend_refs, namespace, cluster_domain)?;
    let mut timeout = mesh_core::timeout::TimeoutConfig::default();
    if let Some(request) = rule.timeouts.as_ref().and_then(|t| t.request.as_deref()) {
        let parsed = mesh_core::config::parse_duration(request)
            .map_err(|e| format!("timeouts.request {request:?}: {e}"))?;
        // `0s` is the Gateway API's "no timeout".
        timeout.request = (!parsed.is_zero()).then_some(parsed);
    }
    Ok(RouteConfig {
        name: name.to_owned(),
        hostnames: hostnames.to_vec(),
        matches,
        backends,
        timeout,
        retry: None,
    })
}

/// A certificate a Gateway's listener names: the Secret's PEM, the hosts it is for (none: its
/// SANs) and whether it is the default (a listener without a hostname).
#[derive(Clone, Debug, PartialEq)]
pub struct ListenerCertificate {
    /// `namespace/name` of the Secret.
    pub secret: String,
    /// `tls.crt`.
    pub cert_pem: Vec<u8>,
    /// `tls.key`.
    pub key_pem: Vec<u8>,
    /// The listener's hostname, if it has one.
    pub hosts: Vec<String>,
    /// Served to unknown names and clients without SNI.
    pub default: bool,
}

/// The certificates of `gateway`'s HTTPS listeners, from `secrets`, and what was left out.
pub fn certificates_of(
    gateway: &Gateway,
    secrets: &[Arc<Secret>],
) -> (Vec<ListenerCertificate>, Vec<String>) {
    let gateway_ns = gateway.metadata.namespace.as_deref().unwrap_or("default");
    let by_name: BTreeMap<(String, String), &Secret> = secrets
        .iter()
        .map(|s| {
            let key = (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            );
            (key, &**s)
        })
        .collect();
    let (mut out, mut problems) = (Vec::new(), Vec::new());
    let mut has_default = false;
    for listener in &gateway.spec.listeners {
        if listener.protocol != "HTTPS" {
            continue;
        }
        let Some(tls) = &listener.tls else {
            problems.push(format!("listener {:?}: HTTPS without tls", listener.name));
            continue;
        };
        if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
            problems.push(format!(
                "listener {:?}: only TLS mode Terminate is served",
                listener.name
            ));
            continue;
        }
        for cert in &tls.certificate_refs {
            let ns = cert.namespace.as_deref().unwrap_or(gateway_ns);
            let secret_name = format!("{ns}/{}", cert.name);
            if cert.kind.as_deref().is_some_and(|k| k != "Secret") {
                problems.push(format!("certificateRef {secret_name} is not a Secret"));
                continue;
            }
            if ns != gateway_ns {
                problems.push(format!(
                    "certificateRef {secret_name}: Secrets of another namespace than the Gateway's are not read"
                ));
                continue;
            }
            let Some(secret) = by_name.get(&(ns.to_owned(), cert.name.clone())) else {
                problems.push(format!("Secret {secret_name} not found"));
                continue;
            };
            let data = secret.data.as_ref();
            let field = |key: &str| data.and_then(|d| d.get(key)).map(|b| b.0.clone());
            let (Some(cert_pem), Some(key_pem)) = (field("tls.crt"), field("tls.key")) else {
                problems.push(format!("Secret {secret_name} lacks tls.crt or tls.key"));
                continue;
            };
            let default = listener.hostname.is_none() && !has_default;
            has_default |= default;
            out.push(ListenerCertificate {
                secret: secret_name,
                cert_pem,
                key_pem,
                hosts: listener.hostname.iter().cloned().collect(),
                default,
            });
        }
    }
    (out, problems)
}

/// What the Gateway and its routes say now.
#[derive(Clone, Debug, Default)]
pub struct GatewayState {
    /// Whether the Gateway exists.
    pub found: bool,
    /// The routes of the HTTPRoutes attached to it.
    pub routes: Vec<RouteConfig>,
    /// The certificates of its HTTPS listeners.
    pub certificates: Vec<ListenerCertificate>,
    /// What was left out, and why.
    pub problems: Vec<String>,
}

/// How long changes are gathered before the state is computed again: a `kubectl apply` of
/// several objects makes one reload.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Watches `gateway`, every HTTPRoute and GRPCRoute, and the Secrets of the Gateway's namespace; calls
/// `changed` with the state once all three are listed, then after each change, until `drain`.
pub fn spawn_watch(
    client: kube::Client,
    gateway: GatewayRef,
    cluster_domain: String,
    drain: mesh_core::drain::Drain,
    changed: impl Fn(GatewayState) + Send + 'static,
) {
    use futures_util::StreamExt as _;
    use kube::runtime::{WatchStreamExt as _, reflector, watcher};

    let status_client = client.clone();
    let (gateways, gateway_writer) = reflector::store::<Gateway>();
    let (routes, route_writer) = reflector::store::<HttpRoute>();
    let (grpc_routes, grpc_route_writer) = reflector::store::<GrpcRoute>();
    let grpc_unavailable = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (secrets, secret_writer) = reflector::store::<Secret>();
    let by_name = watcher::Config::default().fields(&format!("metadata.name={}", gateway.name));
    let events = futures_util::stream::select_all([
        reflector(
            gateway_writer,
            watcher(
                kube::Api::namespaced(client.clone(), &gateway.namespace),
                by_name,
            ),
        )
        .default_backoff()
        .map(|e| e.map(|_| ()))
        .boxed(),
        reflector(
            route_writer,
            watcher(kube::Api::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .map(|e| e.map(|_| ()))
        .boxed(),
        // Not every cluster has the GRPCRoute CRD (standard channel from v1.1): its watch
        // failing only means no GRPCRoutes, said once, not a Gateway that is never served.
        reflector(
            grpc_route_writer,
            watcher(kube::Api::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff()
        .map({
            let gateway = gateway.clone();
            let unavailable = grpc_unavailable.clone();
            move |e| {
                if let Err(e) = &e
                    && !unavailable.swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(gateway = %gateway, error = %e, "GRPCRoutes cannot be watched (is the GRPCRoute CRD installed?); serving without them");
                }
                Ok::<(), watcher::Error>(())
            }
        })
        .boxed(),
        reflector(
            secret_writer,
            watcher(
                kube::Api::namespaced(client, &gateway.namespace),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .map(|e| e.map(|_| ()))
        .boxed(),
    ]);
    tokio::spawn(async move {
        let mut events = events;
        // Status writes that failed, by object: said once each, not on every change.
        let mut failed_writes = std::collections::HashSet::new();
        let mut last_written = std::collections::HashMap::new();
        let state = || {
            let found = gateways
                .state()
                .into_iter()
                .find(|g| g.metadata.name.as_deref() == Some(gateway.name.as_str()));
            let (http_routes, grpc_routes) = (routes.state(), grpc_routes.state());
            let (routes, mut problems) =
                routes_of(&gateway, &http_routes, &grpc_routes, &cluster_domain);
            let (certificates, more) = match &found {
                Some(g) => certificates_of(g, &secrets.state()),
                None => (Vec::new(), vec![format!("Gateway {gateway} not found")]),
            };
            let writes = status::statuses(
                &gateway,
                found.as_deref(),
                &http_routes,
                &grpc_routes,
                &more,
                &cluster_domain,
            );
            problems.extend(more);
            let state = GatewayState {
                found: found.is_some(),
                routes,
                certificates,
                problems,
            };
            (state, writes)
        };
        let mut listed = false;
        loop {
            tokio::select! {
                _ = drain.signaled() => return,
                event = events.next() => match event {
                    None => return,
                    Some(Err(e)) => {
                        tracing::warn!(gateway = %gateway, error = %e, "watching the Gateway API failed; retrying");
                        continue;
                    }
                    Some(Ok(())) => {}
                },
            }
            // Gather what else arrives at once.
            tokio::time::sleep(SETTLE).await;
            while let Some(Some(_)) = futures_util::FutureExt::now_or_never(events.next()) {}
            if !listed {
                let ready = [
                    gateways.wait_until_ready().now_or_never_ready(),
                    routes.wait_until_ready().now_or_never_ready(),
                    secrets.wait_until_ready().now_or_never_ready(),
                    grpc_routes.wait_until_ready().now_or_never_ready()
                        || grpc_unavailable.load(std::sync::atomic::Ordering::Relaxed),
                ];
                if ready.contains(&false) {
                    continue;
                }
                listed = true;
            }
            let (now, writes) = state();
            changed(now);
            for write in writes {
                let key = (write.kind, write.namespace.clone(), write.name.clone());
                if last_written
                    .get(&key)
                    .is_some_and(|last| status::same(last, &write.status))
                {
                    continue;
                }
                match status::write(&status_client, &write, STATUS_TIMEOUT).await {
                    Ok(()) => {
                        failed_writes.remove(&key);
                        // Bounded: deleted routes' entries would otherwise stay forever.
                        if last_written.len() >= 10_000 {
                            last_written.clear();
                        }
                        last_written.insert(key, write.status);
                    }
                    Err(e) if failed_writes.insert(key) => tracing::warn!(
                        kind = write.kind, namespace = %write.namespace, name = %write.name, error = %e,
                        "cannot write the Gateway API status"
                    ),
                    Err(e) => tracing::debug!(
                        kind = write.kind, namespace = %write.namespace, name = %write.name, error = %e,
                        "cannot write the Gateway API status"
                    ),
                }
            }
        }
    });
}

/// How long one status write may take.
const STATUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a readiness future is already done.
trait NowOrNeverReady {
    fn now_or_never_ready(self) -> bool;
}

impl<F: std::future::Future<Output = Result<(), E>>, E> NowOrNeverReady for F {
    fn now_or_never_ready(self) -> bool {
        matches!(futures_util::FutureExt::now_or_never(self), Some(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(json: serde_json::Value) -> Arc<HttpRoute> {
        Arc::new(serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn attached_rules_become_routes_and_bad_ones_are_left_out() {
        let gateway: GatewayRef = "mesh-system/edge".parse().unwrap_or_else(|e| panic!("{e}"));
        let routes = vec![
            route(serde_json::json!({
                "metadata": {"name": "shop", "namespace": "shop",
                             "creationTimestamp": "2026-01-02T00:00:00Z"},
                "spec": {
                    "parentRefs": [{"name": "edge", "namespace": "mesh-system"}],
                    "hostnames": ["shop.example.com"],
                    "rules": [
                        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                                      "headers": [{"name": "x-beta", "value": "1"}],
                                      "method": "GET"}],
                         "backendRefs": [{"name": "api", "port": 8080, "weight": 9},
                                         {"name": "api-canary", "port": 8080, "weight": 1}],
                         "timeouts": {"request": "2s"}},
                        {"backendRefs": [{"name": "web", "port": 80}]},
                        {"matches": [{"path": {"type": "RegularExpression", "value": "("}}],
                         "backendRefs": [{"name": "web", "port": 80}]},
                        {"backendRefs": [{"name": "bucket", "kind": "S3Bucket"}]}
                    ]
                }
            })),
            route(serde_json::json!({
                "metadata": {"name": "other", "namespace": "shop"},
                "spec": {"parentRefs": [{"name": "someone-else"}],
                         "rules": [{"backendRefs": [{"name": "x", "port": 1}]}]}
            })),
            route(serde_json::json!({
                "metadata": {"name": "older", "namespace": "mesh-system",
                             "creationTimestamp": "2025-01-01T00:00:00Z"},
                "spec": {"parentRefs": [{"name": "edge"}],
                         "rules": [{"name": "all", "backendRefs": [{"name": "x", "namespace": "y", "port": 1}]}]}
            })),
        ];
        let (configs, problems) = routes_of(&gateway, &routes, &[], "cluster.local");
        let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        // The /api rule first (a path prefix), then the two catch-alls by age.
        assert_eq!(
            names,
            ["shop/shop/0", "mesh-system/older/all", "shop/shop/1"]
        );
        assert_eq!(configs[1].backends[0].service, "x.y.svc.cluster.local:1");
        let api = &configs[0];
        assert_eq!(api.hostnames, ["shop.example.com"]);
        assert_eq!(api.backends.len(), 2);
        assert_eq!(
            api.backends[1].service,
            "api-canary.shop.svc.cluster.local:8080"
        );
        assert_eq!(api.backends[1].weight, 1);
        assert_eq!(api.timeout.request, Some(std::time::Duration::from_secs(2)));
        assert_eq!(api.matches[0].path, Some(PathMatch::Prefix("/api".into())));
        assert_eq!(api.matches[0].headers[0].value.as_deref(), Some("1"));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("shop/shop/2") && problems[0].contains("regex"),
            "{problems:?}"
        );
        assert!(problems[1].contains("not a Service"), "{problems:?}");
    }

    #[test]
    fn grpc_routes_match_by_service_and_method_ranked_with_http_routes() {
        let gateway: GatewayRef = "mesh-system/edge".parse().unwrap_or_else(|e| panic!("{e}"));
        let http = vec![route(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop",
                         "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": {"parentRefs": [{"name": "edge", "namespace": "mesh-system"}],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}
        }))];
        let grpc: Arc<GrpcRoute> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "cart", "namespace": "shop",
                             "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {
                    "parentRefs": [{"name": "edge", "namespace": "mesh-system"}],
                    "hostnames": ["api.example.com"],
                    "rules": [
                        {"matches": [{"method": {"service": "shop.Cart", "method": "Add"}},
                                     {"method": {"service": "shop.Cart"},
                                      "headers": [{"name": "x-beta", "value": "1"}]}],
                         "backendRefs": [{"name": "cart", "port": 9000}]},
                        {"matches": [{"method": {"method": "Check"}}],
                         "backendRefs": [{"name": "health", "port": 9000}]},
                        {"matches": [{"method": {"type": "RegularExpression", "service": "shop\\..*"}}],
                         "backendRefs": [{"name": "shop", "port": 9000}]},
                        {"matches": [{"method": {}}],
                         "backendRefs": [{"name": "nothing", "port": 9000}]},
                        {"matches": [{"method": {"type": "RegularExpression", "service": "("}}],
                         "backendRefs": [{"name": "broken", "port": 9000}]}
                    ]
                }
            }))
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let (configs, problems) = routes_of(&gateway, &http, &[grpc], "cluster.local");
        let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
        // The method (an exact path), the service (a prefix), the two regular expressions in
        // rule order, then the catch-all: the older GRPCRoute's rules as its matches rank them.
        assert_eq!(
            names,
            [
                "shop/cart/0",
                "shop/cart/0",
                "shop/cart/1",
                "shop/cart/2",
                "shop/web/0"
            ]
        );
        // Where a call goes: the first route whose match holds.
        let first = |path: &str, beta: bool| -> String {
            let mut req = http::Request::post(path);
            if beta {
                req = req.header("x-beta", "1");
            }
            let req = req.body(()).unwrap_or_else(|e| panic!("{e}"));
            let taken = configs.iter().find(|c| {
                c.matches.is_empty()
                    || c.matches
                        .iter()
                        .any(|m| m.test(&req).unwrap_or_else(|e| panic!("{e}")))
            });
            taken.map_or(String::new(), |c| c.backends[0].service.clone())
        };
        assert_eq!(
            first("/shop.Cart/Add", false),
            "cart.shop.svc.cluster.local:9000"
        );
        assert_eq!(
            first("/shop.Cart/Remove", false),
            "shop.shop.svc.cluster.local:9000"
        );
        assert_eq!(
            first("/shop.Cart/Remove", true),
            "cart.shop.svc.cluster.local:9000"
        );
        assert_eq!(
            first("/grpc.health.v1.Health/Check", false),
            "health.shop.svc.cluster.local:9000"
        );
        assert_eq!(
            first("/shopx.Cart/Add", false),
            "web.shop.svc.cluster.local:80"
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("GRPCRoute rule shop/cart/3")
                && problems[0].contains("neither"),
            "{problems:?}"
        );
        assert!(problems[1].contains("shop/cart/4"), "{problems:?}");
    }

    #[test]
    fn https_listeners_name_their_secrets() {
        let gateway: Gateway = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "edge", "namespace": "mesh-system"},
            "spec": {"gatewayClassName": "mesh", "listeners": [
                {"name": "http", "port": 80, "protocol": "HTTP"},
                {"name": "shop", "port": 443, "protocol": "HTTPS", "hostname": "shop.example.com",
                 "tls": {"certificateRefs": [{"name": "shop-tls"}]}},
                {"name": "any", "port": 443, "protocol": "HTTPS",
                 "tls": {"certificateRefs": [{"name": "default-tls"}, {"name": "gone"},
                                             {"name": "elsewhere", "namespace": "shop"}]}}
            ]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let secret = |name: &str| {
            Arc::new(
                serde_json::from_value::<Secret>(serde_json::json!({
                    "metadata": {"name": name, "namespace": "mesh-system"},
                    "type": "kubernetes.io/tls",
                    "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}
                }))
                .unwrap_or_else(|e| panic!("{e}")),
            )
        };
        let (certs, problems) =
            certificates_of(&gateway, &[secret("shop-tls"), secret("default-tls")]);
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].hosts, ["shop.example.com"]);
        assert!(!certs[0].default);
        assert_eq!(certs[0].cert_pem, b"cert");
        assert!(certs[1].default && certs[1].hosts.is_empty());
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
