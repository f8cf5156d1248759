//! Endpoints, authorities and directions: the nouns every crate shares.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// Which way traffic flows through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The local app calls another service.
    Outbound,
    /// Another service calls the local app.
    Inbound,
}

impl Direction {
    /// The label value used in logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What discovery knows about an endpoint beside its address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointMeta {
    /// Labels such as pod, workload, namespace, zone.
    pub labels: Vec<(String, String)>,
    /// The identity a meshed endpoint must prove (mutual TLS); `None`: plaintext.
    pub identity: Option<crate::identity::Identity>,
}

/// One concrete address of a logical service, with its metadata.
///
/// Cheap to clone: the metadata is shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// What discovery said about it.
    pub meta: Arc<EndpointMeta>,
}

impl Endpoint {
    /// An endpoint with no metadata.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            meta: Arc::default(),
        }
    }

    /// An endpoint with these metadata labels.
    pub fn with_labels(addr: SocketAddr, labels: Vec<(String, String)>) -> Self {
        Self {
            addr,
            meta: Arc::new(EndpointMeta {
                labels,
                identity: None,
            }),
        }
    }

    /// An endpoint with these labels that must prove `identity` (or plaintext on `None`).
    pub fn meshed(
        addr: SocketAddr,
        labels: Vec<(String, String)>,
        identity: Option<crate::identity::Identity>,
    ) -> Self {
        Self {
            addr,
            meta: Arc::new(EndpointMeta { labels, identity }),
        }
    }

    /// The identity the endpoint must prove, when it is meshed.
    pub fn identity(&self) -> Option<&crate::identity::Identity> {
        self.meta.identity.as_ref()
    }

    /// The value of a metadata label.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.meta
            .labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A logical service name as clients write it: `host:port`, host lowercased, port explicit.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Authority(Arc<str>);

/// Why a string is not an authority.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthorityError {
    /// Empty input.
    #[error("authority is empty")]
    Empty,
    /// Not a valid URI authority.
    #[error("{0:?} is not a valid authority (expected host:port)")]
    Invalid(String),
    /// User info is not allowed in a service name.
    #[error("{0:?} carries user info, which a service name may not")]
    UserInfo(String),
}

impl Authority {
    /// Parses `host[:port]`; a missing port means `default_port`.
    pub fn parse(input: &str, default_port: u16) -> Result<Self, AuthorityError> {
        if input.is_empty() {
            return Err(AuthorityError::Empty);
        }
        let parsed: http::uri::Authority = input
            .parse()
            .map_err(|_| AuthorityError::Invalid(input.to_owned()))?;
        if input.contains('@') {
            return Err(AuthorityError::UserInfo(input.to_owned()));
        }
        let host = parsed.host().trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err(AuthorityError::Invalid(input.to_owned()));
        }
        let port = parsed.port_u16().unwrap_or(default_port);
        Ok(Self(Arc::from(format!("{host}:{port}"))))
    }

    /// The normalized `host:port`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Normalizes an authority seen on a request, borrowing when it is already normal.
    ///
    /// Returns `None` when the input is already in normal form (the common case: no
    /// allocation), or the normal form otherwise.
    pub fn normalize_request(
        input: &str,
        default_port: u16,
    ) -> Option<Result<Self, AuthorityError>> {
        let normal = match input.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && !host.ends_with('.')
                    && (!host.starts_with('[') || host.ends_with(']'))
                    && !host.bytes().any(|b| b.is_ascii_uppercase())
            }
            None => false,
        };
        if normal {
            None
        } else {
            Some(Self::parse(input, default_port))
        }
    }
}

impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Authority {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalizes_case_port_and_trailing_dot() {
        let a = Authority::parse("Greeter.Demo.svc.cluster.local.:50051", 80);
        assert_eq!(
            a.map(|a| a.to_string()),
            Ok("greeter.demo.svc.cluster.local:50051".into())
        );
        let b = Authority::parse("web", 80);
        assert_eq!(b.map(|a| a.to_string()), Ok("web:80".into()));
    }

    #[test]
    fn parse_rejects_garbage() {
        assert_eq!(Authority::parse("", 80), Err(AuthorityError::Empty));
        assert!(matches!(
            Authority::parse("a b", 80),
            Err(AuthorityError::Invalid(_))
        ));
        assert!(matches!(
            Authority::parse("u@h:1", 80),
            Err(AuthorityError::UserInfo(_))
        ));
    }

    #[test]
    fn normal_request_authorities_do_not_allocate() {
        assert!(Authority::normalize_request("greeter:50051", 80).is_none());
        assert!(Authority::normalize_request("[::1]:80", 80).is_none());
        assert_eq!(
            Authority::normalize_request("Greeter:50051", 80)
                .and_then(Result::ok)
                .map(|a| a.to_string()),
            Some("greeter:50051".into())
        );
        assert_eq!(
            Authority::normalize_request("greeter", 80)
                .and_then(Result::ok)
                .map(|a| a.to_string()),
            Some("greeter:80".into())
        );
        assert_eq!(
            Authority::normalize_request("[::1]", 80)
                .and_then(Result::ok)
                .map(|a| a.to_string()),
            Some("[::1]:80".into())
        );
    }
}
