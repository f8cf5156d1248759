//! The comma lists `init` takes: ports and port ranges (`22,8000-8100`) and networks
//! (`10.0.0.0/8,fd00::/8`). Parsed once, checked whole: a list that does not parse names the
//! item that does not.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Why a list does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{item:?} in {list:?}: {reason}")]
pub struct ListError {
    list: String,
    item: String,
    reason: String,
}

/// Ports and inclusive port ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(Vec<(u16, u16)>);

impl PortList {
    /// The ranges, each `(first, last)`; a single port is `(p, p)`.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    /// Each port or range as written, `22` or `8000-8100` (nftables takes them so too).
    pub fn items(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect()
    }

    /// No port at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for PortList {
    type Err = ListError;

    fn from_str(list: &str) -> Result<Self, ListError> {
        let mut ranges = Vec::new();
        for item in items(list) {
            let fail = |reason: &str| ListError {
                list: list.to_owned(),
                item: item.to_owned(),
                reason: reason.to_owned(),
            };
            let port = |text: &str| match text.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(fail(
                    "expected a port from 1 to 65535, or a range first-last",
                )),
                Ok(p) => Ok(p),
            };
            let range = match item.split_once('-') {
                Some((first, last)) => (port(first)?, port(last)?),
                None => (port(item)?, port(item)?),
            };
            if range.0 > range.1 {
                return Err(fail("the range's first port is above its last"));
            }
            ranges.push(range);
        }
        Ok(Self(ranges))
    }
}

/// Networks, IPv4 and IPv6.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CidrList(Vec<(IpAddr, u8)>);

impl CidrList {
    /// The IPv4 networks, as `a.b.c.d/n`.
    pub fn v4(&self) -> Vec<String> {
        self.render(|ip| ip.is_ipv4())
    }

    /// The IPv6 networks, as `x::/n`.
    pub fn v6(&self) -> Vec<String> {
        self.render(|ip| ip.is_ipv6())
    }

    fn render(&self, family: impl Fn(&IpAddr) -> bool) -> Vec<String> {
        self.0
            .iter()
            .filter(|(ip, _)| family(ip))
            .map(|(ip, len)| format!("{ip}/{len}"))
            .collect()
    }
}

impl FromStr for CidrList {
    type Err = ListError;

    fn from_str(list: &str) -> Result<Self, ListError> {
        let mut cidrs = Vec::new();
        for item in items(list) {
            let fail = |reason: &str| ListError {
                list: list.to_owned(),
                item: item.to_owned(),
                reason: reason.to_owned(),
            };
            let (ip, len) = item.split_once('/').unwrap_or((item, ""));
            let ip: IpAddr = ip
                .trim()
                .parse()
                .map_err(|_| fail("expected an IPv4 or IPv6 network such as 10.0.0.0/8"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len.trim() {
                "" => max,
                text => text
                    .parse::<u8>()
                    .ok()
                    .filter(|len| *len <= max)
                    .ok_or_else(|| fail(&format!("expected a prefix length from 0 to {max}")))?,
            };
            cidrs.push((ip, len));
        }
        Ok(Self(cidrs))
    }
}

impl fmt::Display for PortList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.items().join(","))
    }
}

/// The non-empty items of a comma list.
fn items(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges() {
        let ports: PortList = "22, 8000-8100,9090".parse().unwrap_or_default();
        assert_eq!(ports.ranges(), &[(22, 22), (8000, 8100), (9090, 9090)]);
        assert_eq!(ports.to_string(), "22,8000-8100,9090");
        assert_eq!("".parse::<PortList>().map(|p| p.is_empty()), Ok(true));
        for bad in ["ssh", "0", "70000", "90-80", "1-", "22;23"] {
            let err = bad.parse::<PortList>().err().map(|e| e.to_string());
            assert!(
                err.is_some_and(|e| e.contains(bad) || e.contains("port")),
                "{bad}"
            );
        }
    }

    #[test]
    fn networks_of_both_families() {
        let cidrs: CidrList = "10.0.0.0/8,fd00::/8,192.0.2.1".parse().unwrap_or_default();
        assert_eq!(cidrs.v4(), ["10.0.0.0/8", "192.0.2.1/32"]);
        assert_eq!(cidrs.v6(), ["fd00::/8"]);
        for bad in ["10.0.0.0/33", "fd00::/129", "example.com/8", "10.0.0.0/x"] {
            assert!(bad.parse::<CidrList>().is_err(), "{bad}");
        }
    }
}
