//! Routes by host, then by request: an ingress's table.
//!
//! A request's host (its `:authority` or `Host`, without the port, lowercase) picks the routes
//! it may take, most specific first, as the Gateway API ranks hostnames:
//!
//! 1. the routes that name the host exactly;
//! 2. else those of the longest wildcard that covers it (`*.example.com` covers
//!    `a.example.com` and `a.b.example.com`, not `example.com`);
//! 3. else the routes that name no host.
//!
//! The routes with no hostnames also follow a host's own, so a catch-all serves every host.
//! Within the routes picked, the first whose matches hold wins (configuration order), as in a
//! service's [`RouteTable`]. A request no route takes is answered 404 with the reason
//! `no-route` ([`Cause::NoRoute`]): an unknown host is never sent anywhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::{Request, Response};
use mesh_core::endpoint::Authority;
use mesh_core::error::{Cause, ProxyError};
use mesh_core::{Body, BoxError, HttpService};

use crate::{RouteConfig, RouteError, RouteTable, RoutedFuture};

/// Wraps each route's service in the caller's layers, given the host pattern it serves (`*`
/// for routes of every host; empty for requests whose host nothing serves) and the route's
/// name (empty for requests no route takes).
pub type WrapHostRoute<'a> = &'a dyn Fn(&str, &str, HttpService) -> HttpService;

/// The compiled routes of every host; see the [module](self) documentation.
pub struct HostRoutes {
    exact: HashMap<String, RouteTable>,
    /// By the domain under the wildcard: `example.com` for `*.example.com`.
    wildcard: HashMap<String, RouteTable>,
    /// The routes that name no host.
    any: Option<RouteTable>,
    /// Requests whose host nothing serves.
    unknown: HttpService,
}

impl std::fmt::Debug for HostRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostRoutes")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &self.wildcard.keys().collect::<Vec<_>>())
            .field("any", &self.any.is_some())
            .finish()
    }
}

impl HostRoutes {
    /// Compiles `routes` (their `hostnames` say which hosts each serves); backends name
    /// services of `backends`. `wrap` wraps each (host, route) service.
    pub fn compile(
        routes: &[RouteConfig],
        backends: &HashMap<Authority, HttpService>,
        wrap: WrapHostRoute<'_>,
    ) -> Result<Self, RouteError> {
        let mut patterns: Vec<String> = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            for host in &route.hostnames {
                let pattern = normalize_pattern(host).map_err(|reason| RouteError {
                    route: crate::route_name(route, i),
                    reason,
                })?;
                if !patterns.contains(&pattern) {
                    patterns.push(pattern);
                }
            }
        }
        let catch_all: Vec<(usize, &RouteConfig)> = routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.hostnames.is_empty())
            .collect();
        let table = |pattern: &str| {
            let own = routes.iter().enumerate().filter(|(_, r)| {
                r.hostnames
                    .iter()
                    .any(|h| normalize_pattern(h).is_ok_and(|h| h == pattern))
            });
            let label = if pattern.is_empty() { "*" } else { pattern };
            let wrap_route = |route: &str, service: HttpService| wrap(label, route, service);
            RouteTable::compile_wrapped(
                own.chain(catch_all.iter().copied()),
                no_route(label.to_owned()),
                backends,
                Some(&wrap_route),
            )
        };
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for pattern in &patterns {
            match pattern.strip_prefix("*.") {
                Some(domain) => wildcard.insert(domain.to_owned(), table(pattern)?),
                None => exact.insert(pattern.clone(), table(pattern)?),
            };
        }
        let any = match catch_all.is_empty() {
            true => None,
            false => Some(table("")?),
        };
        Ok(Self {
            exact,
            wildcard,
            any,
            unknown: wrap("", "", unknown_host()),
        })
    }

    /// The retry counters of the routes that retry, by route name (each route once, however
    /// many hosts it serves).
    pub fn retry_stats(&self) -> Vec<(String, Arc<mesh_core::retry::RetryStats>)> {
        let mut stats: Vec<(String, Arc<mesh_core::retry::RetryStats>)> = Vec::new();
        let tables = self
            .exact
            .values()
            .chain(self.wildcard.values())
            .chain(&self.any);
        for (name, s) in tables.flat_map(RouteTable::retry_stats) {
            if !stats.iter().any(|(n, _)| *n == name) {
                stats.push((name, s));
            }
        }
        stats
    }

    /// The host patterns that have routes of their own.
    pub fn hosts(&self) -> impl Iterator<Item = String> + '_ {
        let wildcards = self.wildcard.keys().map(|d| format!("*.{d}"));
        self.exact.keys().cloned().chain(wildcards)
    }

    /// The routes a request for `host` may take (`host` without its port, lowercase).
    fn table(&self, host: &str) -> Option<&RouteTable> {
        if let Some(table) = self.exact.get(host) {
            return Some(table);
        }
        // The longest domain first: from the leftmost dot.
        let mut rest = host;
        while let Some((_, domain)) = rest.split_once('.') {
            if let Some(table) = self.wildcard.get(domain) {
                return Some(table);
            }
            rest = domain;
        }
        self.any.as_ref()
    }

    fn call(&self, req: Request<Body>) -> RoutedFuture {
        let table = match request_host(&req) {
            Some(host) if host.bytes().any(|b| b.is_ascii_uppercase()) => {
                self.table(&host.to_ascii_lowercase())
            }
            Some(host) => self.table(host),
            None => self.any.as_ref(),
        };
        match table {
            Some(table) => table.call(req),
            None => {
                let unknown = self.unknown.clone();
                Box::pin(async move {
                    use tower::ServiceExt;
                    unknown.oneshot(req).await.map_err(Into::into)
                })
            }
        }
    }
}

/// The request's host: its URI's (HTTP/2's `:authority`, an absolute-form HTTP/1 target), else
/// its `Host` header; without the port and a trailing dot.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let authority = match req.uri().host() {
        Some(host) => host,
        None => req.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    let host = match authority.rsplit_once(':') {
        // Not the colons of a bracketed IPv6 address.
        Some((host, port)) if !port.contains(']') => host,
        _ => authority,
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then_some(host)
}

/// A hostname as routes name it, lowercase; a wildcard only as the whole first label.
fn normalize_pattern(host: &str) -> Result<String, String> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(lower)
    } else {
        Err(format!(
            "hostname {host:?} is not a DNS name, or `*.` and one (a wildcard is a whole first label)"
        ))
    }
}

/// Requests of a known host that no route takes.
fn no_route(host: String) -> HttpService {
    mesh_core::erase(tower::service_fn(move |req: Request<Body>| {
        let error = ProxyError::new(
            Cause::NoRoute,
            format!(
                "no route of host {host} matches {} {}",
                req.method(),
                req.uri().path()
            ),
        );
        std::future::ready(Err::<Response<Body>, BoxError>(error.into()))
    }))
}

/// Requests of a host nothing serves.
fn unknown_host() -> HttpService {
    mesh_core::erase(tower::service_fn(|req: Request<Body>| {
        let host = request_host(&req).unwrap_or("").to_owned();
        let error = ProxyError::new(Cause::NoRoute, format!("no route serves host {host:?}"));
        std::future::ready(Err::<Response<Body>, BoxError>(error.into()))
    }))
}

/// Host routes in a live table: each request goes where the current table says; a reload
/// swaps it whole and requests in flight keep their backends.
#[derive(Clone, Debug)]
pub struct HostRouted {
    table: Arc<ArcSwap<HostRoutes>>,
}

impl HostRouted {
    /// Serves `routes`.
    pub fn new(routes: HostRoutes) -> Self {
        Self {
            table: Arc::new(ArcSwap::from_pointee(routes)),
        }
    }

    /// Swaps `routes` in.
    pub fn replace(&self, routes: HostRoutes) {
        self.table.store(Arc::new(routes));
    }
}

impl tower::Service<Request<Body>> for HostRouted {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    fn answer(name: &'static str) -> HttpService {
        mesh_core::erase(tower::service_fn(move |_req: Request<Body>| async move {
            Ok::<_, BoxError>(Response::new(Body::full(name)))
        }))
    }

    fn routes(toml: &str) -> Vec<RouteConfig> {
        #[derive(serde::Deserialize)]
        struct Routes {
            routes: Vec<RouteConfig>,
        }
        toml::from_str::<Routes>(toml)
            .unwrap_or_else(|e| panic!("{e}"))
            .routes
    }

    async fn served(router: &HostRouted, host: &str, path: &str) -> String {
        let req = Request::builder()
            .uri(path)
            .header("host", host)
            .body(Body::Empty)
            .unwrap_or_else(|e| panic!("{e}"));
        match router.clone().oneshot(req).await {
            Ok(rsp) => {
                let body = http_body_util::BodyExt::collect(rsp.into_body()).await;
                String::from_utf8_lossy(&body.map(|b| b.to_bytes()).unwrap_or_default())
                    .into_owned()
            }
            Err(e) => {
                let cause = mesh_core::error::classify(&*e);
                format!("{}: {e}", cause.reason())
            }
        }
    }

    #[tokio::test]
    async fn exact_then_longest_wildcard_then_catch_all() {
        let mut backends = HashMap::new();
        for name in ["web", "api", "wild", "deep", "any"] {
            let authority = Authority::parse(&format!("{name}:80"), 80).unwrap();
            backends.insert(authority, answer(name));
        }
        let config = routes(
            r#"
            [[routes]]
            name = "web"
            hostnames = ["web.example.com"]
            matches = [{ path = { prefix = "/web" } }]
            backends = [{ service = "web:80" }]
            [[routes]]
            name = "wild"
            hostnames = ["*.example.com"]
            backends = [{ service = "wild:80" }]
            [[routes]]
            name = "deep"
            hostnames = ["*.deep.example.com"]
            backends = [{ service = "deep:80" }]
            [[routes]]
            name = "api"
            matches = [{ path = { prefix = "/api" } }]
            backends = [{ service = "api:80" }]
            "#,
        );
        let seen = std::sync::Mutex::new(Vec::new());
        let wrap = |host: &str, route: &str, service: HttpService| {
            seen.lock().unwrap().push(format!("{host}/{route}"));
            service
        };
        let router = HostRouted::new(HostRoutes::compile(&config, &backends, &wrap).unwrap());
        assert_eq!(served(&router, "web.example.com", "/web/x").await, "web");
        assert_eq!(served(&router, "WEB.example.com:443", "/web").await, "web");
        // The exact host's own routes, then the catch-all: not the wildcard's.
        assert_eq!(served(&router, "web.example.com", "/api").await, "api");
        let missed = served(&router, "web.example.com", "/other").await;
        assert!(missed.starts_with("no-route: "), "{missed}");
        assert_eq!(served(&router, "a.example.com", "/").await, "wild");
        assert_eq!(served(&router, "a.b.example.com", "/").await, "wild");
        assert_eq!(served(&router, "x.deep.example.com", "/").await, "deep");
        assert_eq!(served(&router, "elsewhere.test", "/api/v1").await, "api");
        let unknown = served(&router, "elsewhere.test", "/").await;
        assert!(
            unknown.starts_with("no-route: ") && unknown.contains("host *"),
            "{unknown}"
        );
        let seen = seen.into_inner().unwrap();
        for expected in [
            "web.example.com/web",
            "web.example.com/api",
            "*.example.com/wild",
            "*/api",
            "*/",
            "/",
        ] {
            assert!(seen.iter().any(|s| s == expected), "{expected} in {seen:?}");
        }
    }

    #[tokio::test]
    async fn without_a_catch_all_an_unknown_host_is_refused() {
        let mut backends = HashMap::new();
        backends.insert(Authority::parse("web:80", 80).unwrap(), answer("web"));
        let config = routes(
            r#"
            [[routes]]
            hostnames = ["web.example.com"]
            backends = [{ service = "web:80" }]
            "#,
        );
        let router =
            HostRouted::new(HostRoutes::compile(&config, &backends, &|_, _, s| s).unwrap());
        assert_eq!(served(&router, "web.example.com", "/").await, "web");
        let refused = served(&router, "evil.test", "/").await;
        assert!(
            refused.contains("no route serves host \"evil.test\""),
            "{refused}"
        );
        let bad = routes(
            r#"
            [[routes]]
            hostnames = ["web.*.com"]
            backends = [{ service = "web:80" }]
            "#,
        );
        let err = HostRoutes::compile(&bad, &backends, &|_, _, s| s).unwrap_err();
        assert!(err.to_string().contains("web.*.com"), "{err}");
    }
}
