//! Sets of TCP ports, as configured: `opaque-ports = [25, 3306, "9000-9010"]`, or as one
//! string (`MESH__OUTBOUND__OPAQUE_PORTS="25,3306,9000-9010"`).
//!
//! A set is a 64 KiB-bit map (8 KiB): a connection asks whether its port is in it with one
//! load, whatever the number of ports or ranges.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// The ports linkerd treats as opaque by default: SMTP (25, 587), MySQL (3306), Galera
/// (4444), PostgreSQL (5432), Redis (6379), Elasticsearch's transport (9300) and memcached
/// (11211). Their clients wait for the server to speak, or speak no HTTP; detecting would
/// only add a timeout.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// A set of ports.
#[derive(Clone, PartialEq, Eq)]
pub struct PortSet {
    bits: Box<[u64; 1024]>,
}

impl PortSet {
    /// No port.
    pub fn empty() -> Self {
        Self {
            bits: Box::new([0; 1024]),
        }
    }

    /// [`DEFAULT_OPAQUE_PORTS`].
    pub fn default_opaque() -> Self {
        DEFAULT_OPAQUE_PORTS.into_iter().collect()
    }

    /// Adds `port`.
    pub fn insert(&mut self, port: u16) {
        self.bits[usize::from(port / 64)] |= 1 << (port % 64);
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.bits[usize::from(port / 64)] & (1 << (port % 64)) != 0
    }

    /// The ports, in order.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..=u16::MAX).filter(|&p| self.contains(p))
    }

    /// Parses `"25,587,9000-9010"` (spaces allowed), naming the entry that does not parse.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut set = Self::empty();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            set.insert_entry(entry)?;
        }
        Ok(set)
    }

    fn insert_entry(&mut self, entry: &str) -> Result<(), String> {
        let port = |text: &str| {
            text.trim()
                .parse::<u16>()
                .map_err(|_| format!("{entry:?} is not a port (0-65535) or a range LOW-HIGH"))
        };
        let (low, high) = match entry.split_once('-') {
            Some((low, high)) => (port(low)?, port(high)?),
            None => (port(entry)?, port(entry)?),
        };
        if low > high {
            return Err(format!("{entry:?}: the range ends before it starts"));
        }
        for p in low..=high {
            self.insert(p);
        }
        Ok(())
    }
}

impl Default for PortSet {
    fn default() -> Self {
        Self::empty()
    }
}

impl FromIterator<u16> for PortSet {
    fn from_iter<T: IntoIterator<Item = u16>>(ports: T) -> Self {
        let mut set = Self::empty();
        for port in ports {
            set.insert(port);
        }
        set
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for PortSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

/// One entry of a configured list: a port, or a range as a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Port(u16),
    Text(String),
}

/// A configured set: a list, or one string of them (an environment variable's value).
#[derive(Deserialize)]
#[serde(untagged)]
enum Configured {
    List(Vec<Entry>),
    Text(String),
}

impl<'de> Deserialize<'de> for PortSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = match Configured::deserialize(deserializer).map_err(|_| {
            de::Error::custom(
                "expected a list of ports (0-65535) and ranges (\"9000-9010\"), or \"25,9000-9010\"",
            )
        })? {
            Configured::List(entries) => entries,
            Configured::Text(text) => return Self::parse(&text).map_err(de::Error::custom),
        };
        let mut set = Self::empty();
        for entry in entries {
            match entry {
                Entry::Port(port) => set.insert(port),
                Entry::Text(text) => set.insert_entry(&text).map_err(de::Error::custom)?,
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges() {
        let set = PortSet::parse("25, 9000-9002,65535").unwrap();
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [25, 9000, 9001, 9002, 65535]
        );
        assert!(set.contains(9001) && !set.contains(9003) && !set.contains(0));
        assert!(PortSet::default_opaque().contains(5432));
        assert!(!PortSet::default_opaque().contains(80));
        for bad in ["http", "70000", "9010-9000", "1-", "-5"] {
            let err = PortSet::parse(bad).unwrap_err();
            assert!(err.contains(bad.trim()), "{bad}: {err}");
        }
    }

    #[test]
    fn configured_as_a_list() {
        #[derive(Deserialize, Serialize)]
        struct C {
            ports: PortSet,
        }
        let c: C = toml::from_str("ports = [25, \"9000-9001\"]").unwrap();
        assert_eq!(c.ports.iter().collect::<Vec<_>>(), [25, 9000, 9001]);
        assert_eq!(
            toml::to_string(&c).unwrap().trim(),
            "ports = [25, 9000, 9001]"
        );
        let e = toml::from_str::<C>("ports = [\"http\"]").err().unwrap();
        assert!(e.to_string().contains("\"http\" is not a port"), "{e}");
        assert!(toml::from_str::<C>("ports = 5").is_err());
        // As an environment variable gives it.
        let c: C = toml::from_str("ports = \"25, 9000-9001\"").unwrap();
        assert_eq!(c.ports.iter().collect::<Vec<_>>(), [25, 9000, 9001]);
    }
}
