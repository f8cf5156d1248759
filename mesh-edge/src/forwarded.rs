//! The forwarding headers an upstream reads to learn who called: `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host` and the standard `Forwarded` (RFC 7239).
//!
//! A client can write any of them, so they are believed only from a trusted proxy (a load
//! balancer in front of the ingress): from anybody else the incoming ones are dropped and
//! replaced by what the ingress itself saw. From a trusted proxy they are kept and the peer is
//! appended, and the client is the rightmost address of `X-Forwarded-For` that is not itself a
//! trusted proxy (the leftmost entries are whatever the first client chose to write). That
//! client is what [`Client::ip`] holds for the layers below: the rate limit and the access log.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request};
use serde::{Deserialize, Deserializer};

use crate::Client;

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Networks whose forwarding headers are believed: `10.0.0.0/8`, `fd00::/8`, `192.0.2.1`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(net, len)| in_network(ip, *net, *len))
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// One network, `ip/len` or `ip` alone.
    pub fn parse_one(text: &str) -> Result<(IpAddr, u8), String> {
        let (ip, len) = text.trim().split_once('/').unwrap_or((text.trim(), ""));
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{text:?} is not a network (10.0.0.0/8, fd00::/8, 192.0.2.1)"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            "" => max,
            len => len
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok((ip, len))
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list.
    fn from_str(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Self::parse_one)
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        list.iter()
            .map(|s| Self::parse_one(s))
            .collect::<Result<_, _>>()
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustedProxies {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect();
        list.serialize(s)
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is (a dual-stack listener's peers).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Sets the forwarding headers; see the [module](self) documentation.
#[derive(Clone, Debug)]
pub struct ForwardedLayer {
    trusted: Arc<TrustedProxies>,
    direct: Option<Arc<Direct>>,
}

/// What a connection from a client that is not a trusted proxy sets on every request, made
/// once per connection.
#[derive(Debug)]
struct Direct {
    xff: HeaderValue,
    proto: HeaderValue,
    /// `for=<ip>;proto=<scheme>`, to which the host is added.
    forwarded: String,
    /// The last host asked for on this connection, with its `Forwarded` value: a client names
    /// the same host on each request of a connection, so a request clones these (a reference
    /// count each) instead of copying the host and building `Forwarded` (two allocations).
    last_host: std::sync::Mutex<Option<HostValues>>,
}

/// The `X-Forwarded-Host` and `Forwarded` values of one host.
#[derive(Clone, Debug)]
struct HostValues {
    host: HeaderValue,
    forwarded: Option<HeaderValue>,
}

impl Direct {
    /// The values for the host the client wrote, `None` when it wrote none.
    fn host_values(&self, host: Option<&[u8]>) -> Option<HostValues> {
        let host = host?;
        // `try_lock`: streams of one connection may race here; the loser builds its own.
        let mut last = self.last_host.try_lock().ok();
        if let Some(Some(values)) = last.as_deref()
            && values.host.as_bytes() == host
        {
            return Some(values.clone());
        }
        let host = HeaderValue::from_bytes(host).ok()?;
        let forwarded = if host
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'"')
        {
            let mut value = bytes::BytesMut::with_capacity(self.forwarded.len() + 6 + host.len());
            value.extend_from_slice(self.forwarded.as_bytes());
            value.extend_from_slice(b";host=");
            value.extend_from_slice(host.as_bytes());
            HeaderValue::from_maybe_shared(value.freeze()).ok()
        } else {
            HeaderValue::from_str(&self.forwarded).ok()
        };
        let values = HostValues { host, forwarded };
        if let Some(last) = last.as_deref_mut() {
            *last = Some(values.clone());
        }
        Some(values)
    }
}

impl ForwardedLayer {
    /// Believes the headers of `trusted` proxies only.
    pub fn new(trusted: Arc<TrustedProxies>) -> Self {
        Self {
            trusted,
            direct: None,
        }
    }

    /// For one connection from `peer`: when it is not a trusted proxy, the values that do not
    /// change from request to request are made here, once, and each request only clones them.
    pub fn for_peer(mut self, peer: std::net::SocketAddr, https: bool) -> Self {
        let ip = canonical(peer.ip());
        if self.trusted.contains(ip) {
            return self;
        }
        let proto = if https { "https" } else { "http" };
        let Ok(xff) = HeaderValue::from_str(&ip.to_string()) else {
            return self;
        };
        self.direct = Some(Arc::new(Direct {
            xff,
            proto: HeaderValue::from_static(proto),
            forwarded: format!("for={};proto={proto}", forwarded_node(ip)),
            last_host: std::sync::Mutex::new(None),
        }));
        self
    }
}

impl<S> tower::Layer<S> for ForwardedLayer {
    type Service = Forwarded<S>;

    fn layer(&self, inner: S) -> Forwarded<S> {
        Forwarded {
            trusted: self.trusted.clone(),
            direct: self.direct.clone(),
            inner,
        }
    }
}

/// See [`ForwardedLayer`].
#[derive(Clone, Debug)]
pub struct Forwarded<S> {
    trusted: Arc<TrustedProxies>,
    direct: Option<Arc<Direct>>,
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for Forwarded<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        if let Some(direct) = &self.direct {
            // The client's own connection: what it wrote is dropped, what was seen is set.
            let host = match req.headers().get(http::header::HOST) {
                Some(host) => Some(host.as_bytes()),
                None => req.uri().authority().map(|a| a.as_str().as_bytes()),
            };
            let values = direct.host_values(host);
            let headers = req.headers_mut();
            // `insert` replaces every value the client wrote.
            headers.insert(X_FORWARDED_FOR, direct.xff.clone());
            headers.insert(X_FORWARDED_PROTO, direct.proto.clone());
            let (host, forwarded) = match values {
                Some(HostValues { host, forwarded }) => (Some(host), forwarded),
                None => (None, HeaderValue::from_str(&direct.forwarded).ok()),
            };
            match forwarded {
                Some(value) => {
                    headers.insert(http::header::FORWARDED, value);
                }
                None => {
                    headers.remove(http::header::FORWARDED);
                }
            }
            match host {
                Some(host) => headers.insert(X_FORWARDED_HOST, host),
                None => headers.remove(&X_FORWARDED_HOST),
            };
            return self.inner.call(req);
        }
        if let Some(client) = Client::of(&req).cloned() {
            let host = host_value(&req);
            let host = host.as_ref().and_then(|h| h.to_str().ok());
            let ip = rewrite(req.headers_mut(), &client, host, &self.trusted);
            if let Some(stamped) = req.extensions_mut().get_mut::<Client>() {
                stamped.ip = ip;
            }
        }
        self.inner.call(req)
    }
}

/// The host the client asked for, as it wrote it (port included): the `Host` header's value
/// (a cheap clone), or the URI's authority (HTTP/2's `:authority`).
fn host_value<B>(req: &Request<B>) -> Option<HeaderValue> {
    if let Some(host) = req.headers().get(http::header::HOST) {
        return Some(host.clone());
    }
    req.uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

/// An address as `Forwarded` writes it (RFC 7239: IPv6 quoted in brackets).
fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// Rewrites the headers for a request from `client`; returns who the client is.
pub fn rewrite(
    headers: &mut HeaderMap,
    client: &Client,
    host: Option<&str>,
    trusted: &TrustedProxies,
) -> IpAddr {
    let peer = canonical(client.peer.ip());
    let proto = if client.https { "https" } else { "http" };
    let from_trusted = trusted.contains(peer);
    let mut chain: Vec<IpAddr> = Vec::new();
    if from_trusted {
        for value in headers.get_all(&X_FORWARDED_FOR) {
            let Ok(value) = value.to_str() else { continue };
            chain.extend(
                value
                    .split(',')
                    .filter_map(|item| item.trim().parse::<IpAddr>().ok()),
            );
        }
    } else {
        for name in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &http::header::FORWARDED,
        ] {
            headers.remove(name);
        }
    }
    // The client: the rightmost hop that is not a trusted proxy.
    chain.push(peer);
    let ip = chain
        .iter()
        .rev()
        .copied()
        .find(|hop| !trusted.contains(*hop))
        .or_else(|| chain.first().copied())
        .unwrap_or(peer);
    let xff = chain
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if let Some(host) = host
        && !headers.contains_key(&X_FORWARDED_HOST)
        && let Ok(value) = HeaderValue::from_str(host)
    {
        headers.insert(X_FORWARDED_HOST, value);
    }
    let mut element = format!("for={};proto={proto}", forwarded_node(peer));
    if let Some(host) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"')) {
        element.push_str(";host=");
        element.push_str(host);
    }
    let forwarded = match headers.get(http::header::FORWARDED).map(|v| v.to_str()) {
        Some(Ok(before)) => format!("{before}, {element}"),
        _ => element,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert(http::header::FORWARDED, value);
    }
    ip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(peer: &str, https: bool) -> Client {
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        Client {
            peer,
            ip: peer.ip(),
            https,
            sni: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn an_untrusted_client_cannot_forge_its_address() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let mut h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        let ip = rewrite(
            &mut h,
            &client("198.51.100.7:4000", true),
            Some("web.example.com"),
            &trusted,
        );
        assert_eq!(ip.to_string(), "198.51.100.7");
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "web.example.com");
        assert_eq!(
            h["forwarded"],
            "for=198.51.100.7;proto=https;host=web.example.com"
        );
    }

    #[tokio::test]
    async fn a_direct_connection_gets_the_same_headers_made_once() {
        use tower::{Layer, ServiceExt};
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let peer: std::net::SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let echo = tower::service_fn(|req: Request<()>| async move {
            Ok::<_, std::convert::Infallible>(req.headers().clone())
        });
        let svc = ForwardedLayer::new(Arc::new(trusted.clone()))
            .for_peer(peer, true)
            .layer(echo);
        // The same host twice (the second from the cache), another host by the Host header,
        // then by HTTP/2's :authority: each as the slow path makes it.
        let hosts = [
            (Some("web.example.com"), "/"),
            (Some("web.example.com"), "/"),
            (Some("api.example.com"), "/"),
            (None, "https://grpc.example.com:8443/"),
        ];
        for (host, uri) in hosts {
            let mut req = Request::builder()
                .uri(uri)
                .header("x-forwarded-for", "1.2.3.4")
                .header("x-forwarded-proto", "http")
                .header("forwarded", "for=1.2.3.4");
            if let Some(host) = host {
                req = req.header("host", host);
            }
            let h = svc.clone().oneshot(req.body(()).unwrap()).await.unwrap();
            let mut expected = headers(&[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-proto", "http"),
                ("forwarded", "for=1.2.3.4"),
            ]);
            let host = host.unwrap_or("grpc.example.com:8443");
            rewrite(
                &mut expected,
                &client("198.51.100.7:4000", true),
                Some(host),
                &trusted,
            );
            for name in [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "forwarded",
            ] {
                assert_eq!(
                    h.get_all(name).iter().collect::<Vec<_>>(),
                    expected.get_all(name).iter().collect::<Vec<_>>(),
                    "{name} for {host}"
                );
            }
        }
        // A trusted proxy's connection is not a direct one.
        let layer =
            ForwardedLayer::new(Arc::new(trusted)).for_peer("10.0.0.5:1".parse().unwrap(), false);
        assert!(layer.direct.is_none());
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let trusted: TrustedProxies = "10.0.0.0/8, fd00::/8".parse().unwrap();
        let mut h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let ip = rewrite(
            &mut h,
            &client("10.0.0.5:4000", false),
            Some("a.test"),
            &trusted,
        );
        assert_eq!(ip.to_string(), "203.0.113.9", "the rightmost untrusted hop");
        assert_eq!(
            h["x-forwarded-for"],
            "6.6.6.6, 203.0.113.9, 10.1.1.1, 10.0.0.5"
        );
        assert_eq!(
            h["x-forwarded-proto"], "https",
            "kept from the trusted proxy"
        );
        let mut v6 = headers(&[]);
        let ip = rewrite(
            &mut v6,
            &client("[2001:db8::1]:4000", false),
            None,
            &trusted,
        );
        assert_eq!(ip.to_string(), "2001:db8::1");
        assert_eq!(v6["forwarded"], "for=\"[2001:db8::1]\";proto=http");
        assert!(
            trusted.contains("::ffff:10.2.3.4".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(!trusted.contains("11.0.0.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "example.com", "fd00::/200"] {
            assert!(bad.parse::<TrustedProxies>().is_err(), "{bad}");
        }
    }
}
