//! Workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
//!
//! An identity has two spellings that name the same workload: the SPIFFE URI (a certificate's
//! URI SAN, and what users write in policies) and a DNS-style name
//! `<sa>.<ns>.serviceaccount.identity.<trust-domain>` (the certificate's DNS SAN, and the TLS
//! SNI a client sends). Both parse; both are kept, so neither is formatted on the hot path.

use std::fmt;
use std::sync::Arc;

/// A workload's identity. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity(Arc<Names>);

#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Names {
    uri: String,
    dns: String,
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// The label between the namespace and the trust domain in the DNS-style name.
const DNS_INFIX: &str = ".serviceaccount.identity.";

/// Why a string is not an identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{input:?} is not a workload identity ({reason}); expected spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount> or <sa>.<ns>.serviceaccount.identity.<trust-domain>"
)]
pub struct IdentityError {
    input: String,
    reason: &'static str,
}

impl Identity {
    /// The identity of service account `sa` in namespace `ns` of `trust_domain`.
    pub fn new(trust_domain: &str, namespace: &str, sa: &str) -> Result<Self, IdentityError> {
        let input = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}");
        let fail = |reason| IdentityError {
            input: input.clone(),
            reason,
        };
        if !is_dns_name(trust_domain) {
            return Err(fail("the trust domain is not a lowercase DNS name"));
        }
        if !is_label(namespace) {
            return Err(fail("the namespace is not a lowercase DNS label"));
        }
        if !is_label(sa) {
            return Err(fail("the service account is not a lowercase DNS label"));
        }
        let dns = format!("{sa}.{namespace}{DNS_INFIX}{trust_domain}");
        if dns.len() > 253 {
            return Err(fail("the DNS-style name is longer than 253 bytes"));
        }
        Ok(Self(Arc::new(Names {
            uri: input,
            dns,
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: sa.to_owned(),
        })))
    }

    /// Parses either spelling.
    pub fn parse(input: &str) -> Result<Self, IdentityError> {
        let fail = |reason| IdentityError {
            input: input.to_owned(),
            reason,
        };
        if let Some(rest) = input.strip_prefix("spiffe://") {
            let mut parts = rest.split('/');
            return match (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) {
                (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) => {
                    Self::new(td, ns, sa)
                }
                _ => Err(fail("the path is not /ns/<namespace>/sa/<serviceaccount>")),
            };
        }
        let Some((head, trust_domain)) = input.split_once(DNS_INFIX) else {
            return Err(fail("neither a spiffe:// URI nor a DNS-style identity"));
        };
        let Some((sa, namespace)) = head.split_once('.') else {
            return Err(fail("the DNS-style name lacks <sa>.<namespace>"));
        };
        Self::new(trust_domain, namespace, sa)
    }

    /// `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`.
    pub fn uri(&self) -> &str {
        &self.0.uri
    }

    /// `<sa>.<ns>.serviceaccount.identity.<trust-domain>`: the DNS SAN and the SNI.
    pub fn dns_name(&self) -> &str {
        &self.0.dns
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.0.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.0.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.0.service_account
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.uri)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.0.uri)
    }
}

impl std::str::FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.uri())
    }
}

impl<'de> serde::Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// How a connection reached the proxy, as request extensions and connection context carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTls {
    /// Mutual TLS: the peer proved this identity.
    Authenticated(Identity),
    /// TLS for somebody else (another SNI), passed through untouched.
    Passthrough,
    /// No TLS.
    Plaintext,
}

impl PeerTls {
    /// The identity the peer proved, if any.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            PeerTls::Authenticated(id) => Some(id),
            _ => None,
        }
    }

    /// The `tls` label value of metrics.
    pub fn label(&self) -> &'static str {
        match self {
            PeerTls::Authenticated(_) => "true",
            PeerTls::Passthrough => "passthrough",
            PeerTls::Plaintext => "false",
        }
    }
}

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_name_the_same_identity() {
        let uri = Identity::parse("spiffe://cluster.local/ns/demo/sa/web").unwrap();
        let dns = Identity::parse("web.demo.serviceaccount.identity.cluster.local").unwrap();
        assert_eq!(uri, dns);
        assert_eq!(
            uri.dns_name(),
            "web.demo.serviceaccount.identity.cluster.local"
        );
        assert_eq!(dns.uri(), "spiffe://cluster.local/ns/demo/sa/web");
        assert_eq!(
            (uri.trust_domain(), uri.namespace(), uri.service_account()),
            ("cluster.local", "demo", "web")
        );
    }

    #[test]
    fn malformed_identities_are_named() {
        for bad in [
            "",
            "spiffe://cluster.local/ns/demo",
            "spiffe://cluster.local/ns/demo/sa/web/extra",
            "spiffe://Cluster.local/ns/demo/sa/web",
            "spiffe://cluster.local/ns/de_mo/sa/web",
            "spiffe://cluster.local/sa/web/ns/demo",
            "web.serviceaccount.identity.cluster.local",
            "example.com",
        ] {
            let e = Identity::parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
