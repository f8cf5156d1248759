//! Routes of a service: matches on path, method, headers and gRPC service/method send a request
//! to weighted backends (other services, each with its own balancer), with the route's own
//! timeout and retry policy. The model follows the Gateway API's HTTPRoute and GRPCRoute: a
//! route's `matches` are ORed, the conditions inside one match are ANDed, the first route that
//! matches wins, and a request no route matches goes to the service itself.
//!
//! The table of a service sits in an `ArcSwap`: a reload swaps it whole, and a request in
//! flight keeps the backend it was given, so a weight change drops nothing.
//!
//! # Why a crate of its own
//!
//! Routing is used by every binary that balances requests: the sidecar's outbound side, the
//! ingress (which adds hostnames in front), and a user's own binary or gRPC client. It needs
//! `regex`, which mesh-core, the small stable contract every crate depends on, should not
//! carry; and it depends on nothing but mesh-core (backends are any [`HttpService`]), so it
//! stands beside the other concern crates rather than inside one of them.
//!
//! # Example
//!
//! ```
//! use std::collections::HashMap;
//! use mesh_core::endpoint::Authority;
//! use mesh_core::{Body, BoxError};
//! use mesh_route::{RouteConfig, RouteTable, Routed};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let answer = |name: &'static str| {
//!     mesh_core::erase(tower::service_fn(move |_req: http::Request<Body>| async move {
//!         Ok::<_, BoxError>(http::Response::new(Body::full(name)))
//!     }))
//! };
//! let mut backends = HashMap::new();
//! backends.insert(Authority::parse("web-canary:80", 80)?, answer("canary"));
//! let route: RouteConfig = toml::from_str(r#"
//!     name = "beta"
//!     matches = [{ headers = [{ name = "x-beta" }] }]
//!     backends = [{ service = "web-canary:80" }]
//! "#)?;
//! let routes = vec![route];
//! let table = RouteTable::compile(&routes, answer("stable"), &backends)?;
//! let web = Routed::new(table); // a tower Service; `replace` swaps in a reloaded table
//! # let _ = web;
//! # Ok(())
//! # }
//! ```

mod hosts;

pub use hosts::{HostRouted, HostRoutes, WrapHostRoute, request_host};

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response};
use mesh_core::endpoint::Authority;
use mesh_core::retry::{RetryLayer, RetryPolicy};
use mesh_core::timeout::{TimeoutConfig, TimeoutLayer};
use mesh_core::{Body, BoxError, HttpService};
use serde::{Deserialize, Serialize};
use tower::{Layer, ServiceExt};

/// One route.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name, for logs (and the `route` of an ingress's metrics).
    #[serde(default)]
    pub name: String,
    /// The hosts the route serves, at an ingress ([`HostRoutes`]): exact names, or `*.` and a
    /// domain for any name under it (one label or more, as the Gateway API has it); none: every
    /// host. A service's own routes (the sidecar's) take no hostnames: the service's authority
    /// already names the host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// Any of these selects the route; none: every request.
    #[serde(default)]
    pub matches: Vec<MatchConfig>,
    /// Where its requests go, by weight: configured services by authority.
    pub backends: Vec<BackendConfig>,
    /// The route's timeout (the service's own applies to requests no route takes).
    #[serde(default)]
    pub timeout: TimeoutConfig,
    /// The route's retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

/// The conditions of one match; all must hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MatchConfig {
    /// The path: exactly, by prefix (whole segments), or by regular expression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// The method (`GET`, `POST`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers that must have these values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// A gRPC service and, optionally, method (the path `/<service>/<method>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMatch>,
}

/// A path match.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix of whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
    Prefix(String),
    /// A regular expression over the whole path.
    Regex(String),
}

/// A header match.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    /// The header's name.
    pub name: String,
    /// Its value, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Or a regular expression over the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A gRPC match.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrpcMatch {
    /// The fully qualified service, `package.Service`.
    pub service: String,
    /// The method; any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// A weighted backend.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// A configured service's authority.
    pub service: String,
    /// Its share, relative to the route's other backends.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Why routes cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("route {route:?}: {reason}")]
pub struct RouteError {
    /// The route's name (or `#index`).
    pub route: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A compiled route.
struct Route {
    name: String,
    matches: Vec<Matcher>,
    target: Arc<RouteTarget>,
    /// The route's service under the layers the caller wrapped it in
    /// ([`RouteTable::compile_wrapped`]); none: the target is called directly.
    wrapped: Option<HttpService>,
}

/// Where a route's requests go: a backend picked by weight, under the route's timeout and
/// retries.
struct RouteTarget {
    backends: Vec<(HttpService, u32)>,
    total_weight: u32,
    timeout: TimeoutLayer,
    retry: Option<RetryLayer>,
}

impl RouteTarget {
    fn call(&self, req: Request<Body>) -> RoutedFuture {
        let mut pick = fastrand::u32(..self.total_weight);
        let mut backend = &self.backends[0].0;
        for (service, weight) in &self.backends {
            if pick < *weight {
                backend = service;
                break;
            }
            pick -= weight;
        }
        let inner = self.timeout.layer(backend.clone());
        match &self.retry {
            Some(retry) => {
                let service = retry.layer(inner);
                Box::pin(service.oneshot(req))
            }
            None => Box::pin(inner.oneshot(req)),
        }
    }
}

/// A route's target as a service, for the layers a caller wraps it in.
#[derive(Clone)]
struct RouteService(Arc<RouteTarget>);

impl tower::Service<Request<Body>> for RouteService {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = RoutedFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> RoutedFuture {
        self.0.call(req)
    }
}

/// Wraps each route's service (and the service of requests no route takes) in the caller's
/// layers, given the route's name (empty for no route): an ingress counts requests by route
/// and host this way.
pub type WrapRoute<'a> = &'a dyn Fn(&str, HttpService) -> HttpService;

struct Matcher {
    path: Option<PathMatcher>,
    method: Option<http::Method>,
    headers: Vec<(http::HeaderName, ValueMatcher)>,
}

enum PathMatcher {
    Exact(String),
    Prefix(String),
    Regex(regex::Regex),
}

enum ValueMatcher {
    Exact(String),
    Regex(regex::Regex),
    Present,
}

impl MatchConfig {
    /// Compiles this match and tests `req` against it: for tools and the fuzz targets (a
    /// route table compiles its matches once).
    pub fn test<B>(&self, req: &Request<B>) -> Result<bool, String> {
        Ok(Matcher::compile(self)?.matches(req))
    }
}

impl Matcher {
    fn compile(m: &MatchConfig) -> Result<Self, String> {
        let anchored = |re: &str| {
            regex::Regex::new(&format!("^(?:{re})$")).map_err(|e| format!("regex {re:?}: {e}"))
        };
        let mut path = match &m.path {
            None => None,
            Some(PathMatch::Exact(p)) => Some(PathMatcher::Exact(p.clone())),
            Some(PathMatch::Prefix(p)) => {
                Some(PathMatcher::Prefix(p.trim_end_matches('/').to_owned()))
            }
            Some(PathMatch::Regex(re)) => Some(PathMatcher::Regex(anchored(re)?)),
        };
        if let Some(grpc) = &m.grpc {
            if path.is_some() {
                return Err("a match has both path and grpc".into());
            }
            path = Some(match &grpc.method {
                Some(method) => PathMatcher::Exact(format!("/{}/{method}", grpc.service)),
                None => PathMatcher::Prefix(format!("/{}", grpc.service)),
            });
        }
        let method = match &m.method {
            Some(method) => Some(
                http::Method::from_bytes(method.as_bytes())
                    .map_err(|_| format!("{method:?} is not an HTTP method"))?,
            ),
            None => None,
        };
        let mut headers = Vec::new();
        for h in &m.headers {
            let name = http::HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| format!("{:?} is not a header name", h.name))?;
            let value = match (&h.value, &h.regex) {
                (Some(_), Some(_)) => {
                    return Err(format!("header {:?}: value or regex, not both", h.name));
                }
                (Some(v), None) => ValueMatcher::Exact(v.clone()),
                (None, Some(re)) => ValueMatcher::Regex(anchored(re)?),
                (None, None) => ValueMatcher::Present,
            };
            headers.push((name, value));
        }
        Ok(Self {
            path,
            method,
            headers,
        })
    }

    fn matches<B>(&self, req: &Request<B>) -> bool {
        if let Some(method) = &self.method
            && req.method() != method
        {
            return false;
        }
        let path = req.uri().path();
        let path_ok = match &self.path {
            None => true,
            Some(PathMatcher::Exact(p)) => path == p,
            Some(PathMatcher::Prefix(p)) => {
                p.is_empty()
                    || (path.starts_with(p.as_str())
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            Some(PathMatcher::Regex(re)) => re.is_match(path),
        };
        path_ok
            && self.headers.iter().all(|(name, value)| {
                let mut values = req.headers().get_all(name).iter();
                match value {
                    ValueMatcher::Present => values.next().is_some(),
                    ValueMatcher::Exact(v) => values.any(|h| h.as_bytes() == v.as_bytes()),
                    ValueMatcher::Regex(re) => {
                        values.any(|h| h.to_str().is_ok_and(|h| re.is_match(h)))
                    }
                }
            })
    }
}

/// The routes of one service, and where requests no route takes go.
pub struct RouteTable {
    routes: Vec<Route>,
    default: HttpService,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl RouteTable {
    /// Compiles `routes`; backends name services of `backends` (their balancers). Routes with
    /// `hostnames` are refused: they belong to an ingress's [`HostRoutes`].
    pub fn compile(
        routes: &[RouteConfig],
        default: HttpService,
        backends: &HashMap<Authority, HttpService>,
    ) -> Result<Self, RouteError> {
        for (i, route) in routes.iter().enumerate() {
            if !route.hostnames.is_empty() {
                return Err(RouteError {
                    route: route_name(route, i),
                    reason: "hostnames are for an ingress's routes: a service's routes already \
                             serve its authority"
                        .into(),
                });
            }
        }
        Self::compile_wrapped(routes.iter().enumerate(), default, backends, None)
    }

    /// Compiles `routes` (each with its index in the configuration, for unnamed routes'
    /// names), each route's service and `default` wrapped by `wrap` when given.
    pub fn compile_wrapped<'r>(
        routes: impl IntoIterator<Item = (usize, &'r RouteConfig)>,
        default: HttpService,
        backends: &HashMap<Authority, HttpService>,
        wrap: Option<WrapRoute<'_>>,
    ) -> Result<Self, RouteError> {
        let mut compiled = Vec::new();
        for (i, route) in routes {
            let name = route_name(route, i);
            let fail = |reason: String| RouteError {
                route: name.clone(),
                reason,
            };
            let matches = route
                .matches
                .iter()
                .map(Matcher::compile)
                .collect::<Result<Vec<_>, _>>()
                .map_err(&fail)?;
            let mut targets = Vec::new();
            for backend in &route.backends {
                let authority = Authority::parse(&backend.service, 80)
                    .map_err(|e| fail(format!("backend {:?}: {e}", backend.service)))?;
                let service = backends.get(&authority).ok_or_else(|| {
                    fail(format!(
                        "backend {:?} is not a configured service",
                        backend.service
                    ))
                })?;
                targets.push((service.clone(), backend.weight));
            }
            let total_weight: u32 = targets.iter().map(|(_, w)| *w).sum();
            if total_weight == 0 {
                return Err(fail("the backends' weights add up to 0".into()));
            }
            route
                .timeout
                .validate()
                .map_err(|e| fail(e.within("timeout").to_string()))?;
            if let Some(Err(e)) = route.retry.as_ref().map(RetryPolicy::validate) {
                return Err(fail(e.within("retry").to_string()));
            }
            let target = Arc::new(RouteTarget {
                backends: targets,
                total_weight,
                timeout: TimeoutLayer::new(&route.timeout),
                retry: route.retry.as_ref().map(RetryLayer::new),
            });
            let wrapped =
                wrap.map(|wrap| wrap(&name, mesh_core::erase(RouteService(target.clone()))));
            compiled.push(Route {
                name: name.clone(),
                matches,
                target,
                wrapped,
            });
        }
        let default = match wrap {
            Some(wrap) => wrap("", default),
            None => default,
        };
        Ok(Self {
            routes: compiled,
            default,
        })
    }

    /// Whether it has no route (every request goes to the default).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// A route's name: its own, or `#<index>`.
fn route_name(route: &RouteConfig, index: usize) -> String {
    if route.name.is_empty() {
        format!("#{index}")
    } else {
        route.name.clone()
    }
}

impl RouteTable {
    /// The retry counters of the routes that retry, by route name.
    pub fn retry_stats(&self) -> Vec<(String, Arc<mesh_core::retry::RetryStats>)> {
        self.routes
            .iter()
            .filter_map(|r| {
                r.target
                    .retry
                    .as_ref()
                    .map(|retry| (r.name.clone(), retry.stats()))
            })
            .collect()
    }
}

/// A service with routes: each request goes where the current table says.
#[derive(Clone, Debug)]
pub struct Routed {
    table: Arc<ArcSwap<RouteTable>>,
}

impl Routed {
    /// Serves `table`.
    pub fn new(table: RouteTable) -> Self {
        Self {
            table: Arc::new(ArcSwap::from_pointee(table)),
        }
    }

    /// Swaps the table in; requests in flight keep their backends.
    pub fn replace(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
    }
}

type RoutedFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl tower::Service<Request<Body>> for Routed {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = RoutedFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> RoutedFuture {
        self.table.load().call(req)
    }
}

impl RouteTable {
    /// Sends `req` down the first route that matches, else to the default.
    fn call(&self, req: Request<Body>) -> RoutedFuture {
        let Some(route) = self
            .routes
            .iter()
            .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(&req)))
        else {
            let default = self.default.clone();
            return Box::pin(async move { default.oneshot(req).await.map_err(Into::into) });
        };
        match &route.wrapped {
            Some(wrapped) => {
                let wrapped = wrapped.clone();
                Box::pin(async move { wrapped.oneshot(req).await.map_err(Into::into) })
            }
            None => route.target.call(req),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(toml: &str) -> Matcher {
        let m: MatchConfig = toml::from_str(toml).unwrap_or_else(|e| panic!("{e}"));
        Matcher::compile(&m).unwrap_or_else(|e| panic!("{e}"))
    }

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn paths_methods_headers_and_grpc_methods() {
        let prefix = matcher("path = { prefix = \"/api\" }");
        assert!(prefix.matches(&req("GET", "/api", &[])));
        assert!(prefix.matches(&req("GET", "/api/users", &[])));
        assert!(!prefix.matches(&req("GET", "/apix", &[])));
        let exact = matcher("path = { exact = \"/healthz\" }\nmethod = \"GET\"");
        assert!(exact.matches(&req("GET", "/healthz", &[])));
        assert!(!exact.matches(&req("POST", "/healthz", &[])));
        let regex = matcher("path = { regex = \"/v[0-9]+/.*\" }");
        assert!(regex.matches(&req("GET", "/v2/x", &[])));
        assert!(!regex.matches(&req("GET", "/x/v2/x", &[])), "anchored");
        let header = matcher(
            "headers = [{ name = \"x-canary\", value = \"1\" }, { name = \"x-user\", regex = \"beta-.*\" }]",
        );
        assert!(header.matches(&req("GET", "/", &[("x-canary", "1"), ("x-user", "beta-7")])));
        assert!(!header.matches(&req("GET", "/", &[("x-canary", "1"), ("x-user", "alpha")])));
        let grpc = matcher("grpc = { service = \"demo.Greeter\", method = \"SayHello\" }");
        assert!(grpc.matches(&req("POST", "/demo.Greeter/SayHello", &[])));
        assert!(!grpc.matches(&req("POST", "/demo.Greeter/Chat", &[])));
        let service = matcher("grpc = { service = \"demo.Greeter\" }");
        assert!(service.matches(&req("POST", "/demo.Greeter/Chat", &[])));
    }

    #[test]
    fn bad_matches_are_named() {
        for (toml, needle) in [
            ("path = { regex = \"(\" }", "regex"),
            ("method = \"G E T\"", "not an HTTP method"),
            ("headers = [{ name = \"bad name\" }]", "not a header name"),
            (
                "headers = [{ name = \"a\", value = \"1\", regex = \"1\" }]",
                "not both",
            ),
        ] {
            let m: MatchConfig = toml::from_str(toml).unwrap_or_else(|e| panic!("{e}"));
            let err = Matcher::compile(&m).err().unwrap_or_default();
            assert!(err.contains(needle), "{toml}: {err}");
        }
    }
}
