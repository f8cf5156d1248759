//! DNS: a service name becomes the addresses its A/AAAA or SRV records give, re-resolved when
//! the records' TTL runs out.
//!
//! # Names
//!
//! - `host:port`: the A and AAAA records of `host` (asked for in parallel), each address with
//!   `port`. An IP literal (`10.0.0.7:80`, `[::1]:80`) is its own single endpoint and is never
//!   looked up. A name without a trailing dot goes through the search domains of
//!   `/etc/resolv.conf` when the system configuration is used; `/etc/hosts` is read first,
//!   as the system's resolver does.
//! - `_service._proto.name` (any name that starts with `_`): the SRV records of the name; each
//!   target's A and AAAA addresses, with the record's port and the record's weight as the label
//!   `weight`. Only the lowest SRV priority that has addresses is used (the higher ones are
//!   backups, RFC 2782); a target of `.` is skipped.
//!
//! DNS endpoints carry no identity: they are not meshed.
//!
//! # Resolution
//!
//! Each name has **one** background task, however many subscribers follow it: a second
//! [`Resolve::resolve`] of a name joins the running resolution and starts with its current
//! endpoints. The task
//!
//! - resolves the name and publishes the endpoint set (a subscriber sees only the changes);
//! - sleeps for the smallest TTL of the records used, clamped to
//!   [`min_ttl`](DnsConfig::min_ttl)..=[`max_ttl`](DnsConfig::max_ttl), and resolves again;
//! - ends when no subscriber is left (checked before each resolution, so a dropped
//!   subscriber's name is released within one TTL) and forgets the name.
//!
//! The resolver's own cache is off: the task's schedule is the cache, so a TTL cut down by
//! `max_ttl` really does ask the server again.
//!
//! # Failures and empty answers
//!
//! The last good set is never dropped because of DNS:
//!
//! - **A failure** (a timeout, SERVFAIL, REFUSED, a refused connection, an unreadable answer;
//!   for a `host:port` also when only one of A and AAAA failed, for SRV when one target's
//!   lookup failed) publishes nothing: the subscribers keep the last good set. It is logged at
//!   `warn` with the name and the error, and retried after an exponential backoff: 1 s (or
//!   [`retry_backoff_max`](DnsConfig::retry_backoff_max) when that is shorter), doubling up to
//!   `retry_backoff_max`. The next answer resets the backoff.
//! - **No endpoints** (NXDOMAIN, or no records of the type asked, or SRV targets without
//!   addresses) is an answer, not a failure, and is re-asked after the negative TTL (from the
//!   SOA, else `min_ttl`), clamped like a TTL. What it does depends on what came before:
//!   - when the name has **never** resolved, an empty set is published: the name is known to
//!     have no endpoints ([`Publisher::current`] is `Some` and empty, not `None`); a
//!     subscriber sees no change, and a balancer fails requests after its failfast timeout,
//!     as for any service without endpoints;
//!   - when the name **had** endpoints, they are **kept** and a `warn` is logged (once, until the
//!     name resolves again). A discovery outage, a zone reloaded half-way or a deleted record
//!     must never empty a healthy service; endpoints that are really gone fail their
//!     connections and the balancer's failure accrual takes them out. The price: a name
//!     removed on purpose keeps its last endpoints until its records come back (or the
//!     subscribers go away).
//!
//! Each query waits at most [`timeout`](DnsConfig::timeout) and is retried once within the
//! resolution, so a silent server costs a resolution about twice the timeout.
//!
//! # Configuration
//!
//! ```toml
//! [dns]
//! nameservers = ["10.96.0.10:53"]  # empty (the default): /etc/resolv.conf
//! min_ttl = "5s"
//! max_ttl = "60s"
//! timeout = "2s"
//! retry_backoff_max = "30s"
//! ```
//!
//! # Example
//!
//! ```no_run
//! use mesh_discovery::Resolve;
//! use mesh_discovery::dns::{DnsConfig, DnsResolve};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let resolve = DnsResolve::new(DnsConfig::default())?;
//! // Inside a tokio runtime: each resolution's task is spawned on it.
//! let web = resolve.resolve("web.demo.svc.cluster.local:8080")?;
//! let grpc = resolve.resolve("_grpc._tcp.greeter.demo.svc.cluster.local.")?;
//! // Two `Discover` streams of `Change<SocketAddr, Endpoint>`: hand each to a balancer.
//! # let _ = (web, grpc);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as ProtoDnsError, NetError};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use mesh_core::config::{Invalid, check_setting_duration, format_duration};
use mesh_core::endpoint::Endpoint;
use serde::{Deserialize, Serialize};

use crate::resolve::{Publisher, Resolution, Resolve, ResolveError};

/// The source's name in errors.
const SOURCE: &str = "dns";

/// The first retry after a failure (unless `retry_backoff_max` is shorter).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// How names are resolved.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// The servers to ask (UDP, then TCP for truncated answers); empty: the servers, search
    /// domains and options of the system (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// The shortest time between two resolutions of a name when it answers, whatever the TTL.
    #[serde(with = "mesh_core::config::duration")]
    pub min_ttl: Duration,
    /// The longest time between two resolutions of a name when it answers, whatever the TTL.
    #[serde(with = "mesh_core::config::duration")]
    pub max_ttl: Duration,
    /// How long one query may take.
    #[serde(with = "mesh_core::config::duration")]
    pub timeout: Duration,
    /// The longest wait before retrying a failed resolution (the backoff starts at 1 s and
    /// doubles).
    #[serde(with = "mesh_core::config::duration")]
    pub retry_backoff_max: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
            retry_backoff_max: Duration::from_secs(30),
        }
    }
}

impl DnsConfig {
    /// Checks the values; the error names the field and what was expected.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_setting_duration("min_ttl", self.min_ttl)?;
        check_setting_duration("max_ttl", self.max_ttl)?;
        check_setting_duration("timeout", self.timeout)?;
        check_setting_duration("retry_backoff_max", self.retry_backoff_max)?;
        if self.max_ttl < self.min_ttl {
            return Err(Invalid::new(
                "max_ttl",
                format_duration(self.max_ttl),
                format!(
                    "expected at least min_ttl ({})",
                    format_duration(self.min_ttl)
                ),
            ));
        }
        if let Some(bad) = self
            .nameservers
            .iter()
            .find(|addr| addr.port() == 0 || addr.ip().is_unspecified())
        {
            return Err(Invalid::new(
                "nameservers",
                bad,
                "expected server addresses with an IP and a port",
            ));
        }
        Ok(())
    }

    fn first_backoff(&self) -> Duration {
        FIRST_BACKOFF.min(self.retry_backoff_max)
    }

    /// A TTL (or negative TTL) in seconds, clamped to `[min_ttl, max_ttl]`.
    fn clamp_ttl(&self, ttl: Option<u32>) -> Duration {
        ttl.map_or(self.min_ttl, |secs| Duration::from_secs(u64::from(secs)))
            .max(self.min_ttl)
            .min(self.max_ttl)
    }
}

/// Why the DNS source could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A setting is out of range.
    #[error("invalid DNS setting {0}")]
    Invalid(#[source] Invalid),
    /// The system configuration could not be read or the resolver not built.
    #[error("cannot set up the DNS resolver: {0}")]
    Resolver(#[from] NetError),
}

/// The DNS source: resolves `host:port` (A/AAAA) and `_service._proto.name` (SRV) names; see
/// the [module documentation](self).
///
/// Cheap to clone: clones share the resolver and the running resolutions.
#[derive(Clone, Debug)]
pub struct DnsResolve {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    resolver: TokioResolver,
    config: DnsConfig,
    /// The names being resolved.
    names: Mutex<HashMap<String, Running>>,
}

/// A name's resolution: the publisher its task feeds, and the task.
#[derive(Debug)]
struct Running {
    publisher: Publisher,
    task: tokio::task::AbortHandle,
}

impl DnsResolve {
    /// A source that asks `config.nameservers` (or the system's servers).
    ///
    /// Needs no runtime; [`Resolve::resolve`] must be called inside a tokio runtime, on which
    /// the resolutions run.
    pub fn new(config: DnsConfig) -> Result<Self, DnsError> {
        config.validate().map_err(DnsError::Invalid)?;
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        options.timeout = config.timeout;
        // One retransmission within a resolution; longer outages are the task's backoff.
        options.attempts = 1;
        // The task re-resolves on its own schedule: a cache would only serve stale answers.
        options.cache_size = 0;
        let resolver = builder.build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                resolver,
                config,
                names: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// How many names are being resolved (each by one task).
    pub fn resolving(&self) -> usize {
        self.inner
            .names()
            .values()
            .filter(|running| !running.task.is_finished())
            .count()
    }
}

impl Resolve for DnsResolve {
    fn resolve(&self, name: &str) -> Result<Resolution, ResolveError> {
        let invalid = |reason: String| ResolveError::Invalid {
            name: name.to_owned(),
            source_name: SOURCE,
            reason,
        };
        let target = Target::parse(name).map_err(invalid)?;
        if let Target::Fixed(addr) = target {
            // Nothing to look up: the stream keeps its one endpoint forever.
            return Ok(Publisher::fixed([Endpoint::new(addr)]).subscribe());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| invalid("DNS resolution must start inside a tokio runtime".into()))?;
        let key = name.to_ascii_lowercase();
        let mut names = self.inner.names();
        // A task that is gone without forgetting its name (its runtime shut down) is replaced.
        if let Some(running) = names.get(&key)
            && !running.task.is_finished()
        {
            return Ok(running.publisher.subscribe());
        }
        let publisher = Publisher::new();
        // Subscribed before the task runs, so that its first check sees a subscriber.
        let resolution = publisher.subscribe();
        let task = runtime
            .spawn(follow(
                Arc::clone(&self.inner),
                key.clone(),
                target,
                publisher.clone(),
            ))
            .abort_handle();
        names.insert(key, Running { publisher, task });
        Ok(resolution)
    }
}

impl Inner {
    fn names(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets `key` when nobody follows it any more. Under the map's lock, as
    /// [`Resolve::resolve`] subscribes: a new subscriber either joins before this check or
    /// starts a new task after it.
    fn release_if_unused(&self, key: &str, publisher: &Publisher) -> bool {
        let mut names = self.names();
        if publisher.subscribers() > 0 {
            return false;
        }
        names.remove(key);
        true
    }

    /// One query: its records, or `Ok(None)` with the negative TTL when the server says there
    /// are none.
    async fn query(&self, name: &Name, record_type: RecordType) -> Result<Answer, NetError> {
        // Belt and braces: the cache is sized 0, but must never answer for the server.
        self.resolver.clear_lookup_cache(name.clone(), record_type);
        match self.resolver.lookup(name.clone(), record_type).await {
            Ok(lookup) => {
                let mut answer = Answer::default();
                for record in lookup.answers() {
                    let ttl = record.ttl;
                    match &record.data {
                        RData::A(a) => answer.push(Found::Ip(IpAddr::V4(a.0)), ttl),
                        RData::AAAA(aaaa) => answer.push(Found::Ip(IpAddr::V6(aaaa.0)), ttl),
                        RData::SRV(srv) if record_type == RecordType::SRV => answer.push(
                            Found::Srv {
                                priority: srv.priority,
                                weight: srv.weight,
                                port: srv.port,
                                target: srv.target.clone(),
                            },
                            ttl,
                        ),
                        // CNAMEs on the way, and whatever else came along.
                        _ => {}
                    }
                }
                Ok(answer)
            }
            Err(NetError::Dns(ProtoDnsError::NoRecordsFound(none))) => Ok(Answer {
                found: Vec::new(),
                ttl: none.negative_ttl,
            }),
            Err(e) => Err(e),
        }
    }

    /// The A and AAAA addresses of `host`; fails when either query fails.
    async fn addresses(&self, host: &Name) -> Result<(Vec<IpAddr>, Option<u32>), NetError> {
        let (v4, v6) = tokio::join!(
            self.query(host, RecordType::A),
            self.query(host, RecordType::AAAA)
        );
        let (v4, v6) = (v4?, v6?);
        let ttl = min_ttl(v4.ttl, v6.ttl);
        let ips = v4
            .found
            .into_iter()
            .chain(v6.found)
            .filter_map(|found| match found {
                Found::Ip(ip) => Some(ip),
                Found::Srv { .. } => None,
            })
            .collect();
        Ok((ips, ttl))
    }

    async fn resolve_host(&self, host: &Name, port: u16) -> Round {
        match self.addresses(host).await {
            Err(e) => Round::Failed(e),
            Ok((ips, ttl)) if ips.is_empty() => Round::NoEndpoints { ttl },
            Ok((ips, ttl)) => Round::Answer {
                endpoints: ips
                    .into_iter()
                    .map(|ip| Endpoint::new(SocketAddr::new(ip, port)))
                    .collect(),
                ttl,
            },
        }
    }

    async fn resolve_srv(&self, name: &Name) -> Round {
        let srv = match self.query(name, RecordType::SRV).await {
            Err(e) => return Round::Failed(e),
            Ok(answer) => answer,
        };
        // By priority, lowest first: (weight, port, target) of each record.
        let mut by_priority: BTreeMap<u16, Vec<(u16, u16, Name)>> = BTreeMap::new();
        for found in srv.found {
            if let Found::Srv {
                priority,
                weight,
                port,
                target,
            } = found
                && !target.is_root()
            {
                by_priority
                    .entry(priority)
                    .or_default()
                    .push((weight, port, target));
            }
        }
        for group in by_priority.values() {
            let mut endpoints = BTreeMap::new();
            let mut ttl = srv.ttl;
            for (weight, port, target) in group {
                let (ips, target_ttl) = match self.addresses(target).await {
                    Ok(found) => found,
                    Err(e) => return Round::Failed(e),
                };
                if ips.is_empty() {
                    continue;
                }
                ttl = min_ttl(ttl, target_ttl);
                for ip in ips {
                    let addr = SocketAddr::new(ip, *port);
                    endpoints.entry(addr).or_insert_with(|| {
                        Endpoint::with_labels(addr, vec![("weight".into(), weight.to_string())])
                    });
                }
            }
            if !endpoints.is_empty() {
                return Round::Answer {
                    endpoints: endpoints.into_values().collect(),
                    ttl,
                };
            }
        }
        Round::NoEndpoints { ttl: srv.ttl }
    }

    async fn resolve_once(&self, target: &Target) -> Round {
        match target {
            Target::Host { host, port } => self.resolve_host(host, *port).await,
            Target::Srv(name) => self.resolve_srv(name).await,
            // Never spawned: answered in `resolve`.
            Target::Fixed(addr) => Round::Answer {
                endpoints: vec![Endpoint::new(*addr)],
                ttl: None,
            },
        }
    }
}

/// A name's task: resolve, publish, sleep, until nobody follows the name.
async fn follow(inner: Arc<Inner>, key: String, target: Target, publisher: Publisher) {
    let config = &inner.config;
    let mut backoff = config.first_backoff();
    // Whether the "no endpoints, keeping the last ones" warning was logged since the last
    // answer with endpoints.
    let mut warned_empty = false;
    loop {
        if inner.release_if_unused(&key, &publisher) {
            tracing::debug!(name = %key, "no subscriber left; DNS resolution stopped");
            return;
        }
        let wait = match inner.resolve_once(&target).await {
            Round::Answer { endpoints, ttl } => {
                let wait = config.clamp_ttl(ttl);
                tracing::debug!(
                    name = %key,
                    endpoints = endpoints.len(),
                    next_in = ?wait,
                    "DNS resolved"
                );
                publisher.publish(endpoints);
                backoff = config.first_backoff();
                warned_empty = false;
                wait
            }
            Round::NoEndpoints { ttl } => {
                let wait = config.clamp_ttl(ttl);
                backoff = config.first_backoff();
                match publisher.current() {
                    None => {
                        tracing::info!(
                            name = %key,
                            next_in = ?wait,
                            "DNS name has no endpoints (NXDOMAIN or no records)"
                        );
                        publisher.publish([]);
                    }
                    Some(set) if !set.is_empty() && !warned_empty => {
                        tracing::warn!(
                            name = %key,
                            kept = set.len(),
                            next_in = ?wait,
                            "DNS name has no endpoints any more (NXDOMAIN or no records); \
                             keeping the last good endpoints"
                        );
                        warned_empty = true;
                    }
                    Some(_) => {
                        tracing::debug!(name = %key, next_in = ?wait, "DNS name still has no endpoints");
                    }
                }
                wait
            }
            Round::Failed(error) => {
                let wait = backoff;
                backoff = backoff.saturating_mul(2).min(config.retry_backoff_max);
                tracing::warn!(
                    name = %key,
                    %error,
                    retry_in = ?wait,
                    "DNS resolution failed; keeping the last good endpoints"
                );
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// What a name resolves through.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// A/AAAA of the host, each address with the port.
    Host { host: Name, port: u16 },
    /// SRV records, then A/AAAA of their targets.
    Srv(Name),
    /// An IP literal with its port.
    Fixed(SocketAddr),
}

impl Target {
    fn parse(name: &str) -> Result<Self, String> {
        if name.starts_with('_') {
            if name.contains(':') {
                return Err(
                    "an SRV name (`_service._proto.name`) carries its ports in its records, \
                     not after a colon"
                        .into(),
                );
            }
            return Name::from_str(name)
                .map(Target::Srv)
                .map_err(|e| format!("not a DNS name: {e}"));
        }
        if let Ok(addr) = name.parse::<SocketAddr>() {
            return Ok(Target::Fixed(addr));
        }
        let expected = "expected host:port or _service._proto.name";
        let Some((host, port)) = name.rsplit_once(':') else {
            return Err(format!("no port ({expected})"));
        };
        if host.is_empty() || host.contains(':') || host.starts_with('[') {
            return Err(format!("no host ({expected})"));
        }
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("{port:?} is not a port (1 to 65535)")),
            Ok(port) => port,
        };
        let host = Name::from_str(host).map_err(|e| format!("not a DNS name: {e}"))?;
        Ok(Target::Host { host, port })
    }
}

/// What one resolution of a name gave.
enum Round {
    /// Endpoints, and the smallest TTL of the records they came from.
    Answer {
        endpoints: Vec<Endpoint>,
        ttl: Option<u32>,
    },
    /// The server answered that there is nothing (with the negative TTL, when known).
    NoEndpoints { ttl: Option<u32> },
    /// No answer: keep what there is.
    Failed(NetError),
}

/// One query's records (empty when the server has none) and their smallest TTL (or the
/// negative TTL).
#[derive(Debug, Default)]
struct Answer {
    found: Vec<Found>,
    ttl: Option<u32>,
}

impl Answer {
    fn push(&mut self, found: Found, ttl: u32) {
        self.found.push(found);
        self.ttl = min_ttl(self.ttl, Some(ttl));
    }
}

#[derive(Debug)]
enum Found {
    Ip(IpAddr),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name,
    },
}

fn min_ttl(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_into_targets() {
        assert!(matches!(
            Target::parse("web.test:8080"),
            Ok(Target::Host { port: 8080, .. })
        ));
        assert!(matches!(
            Target::parse("_grpc._tcp.web.test."),
            Ok(Target::Srv(_))
        ));
        assert_eq!(
            Target::parse("[::1]:80"),
            Ok(Target::Fixed("[::1]:80".parse().unwrap()))
        );
        assert!(Target::parse("web.test").is_err());
        assert!(Target::parse("web.test:0").is_err());
        assert!(Target::parse("web.test:http").is_err());
        assert!(Target::parse(":80").is_err());
        assert!(Target::parse("_grpc._tcp.web.test:80").is_err());
    }

    #[test]
    fn ttls_are_clamped() {
        let config = DnsConfig::default();
        assert_eq!(config.clamp_ttl(Some(0)), Duration::from_secs(5));
        assert_eq!(config.clamp_ttl(Some(30)), Duration::from_secs(30));
        assert_eq!(config.clamp_ttl(Some(3600)), Duration::from_secs(60));
        assert_eq!(config.clamp_ttl(None), Duration::from_secs(5));
        assert_eq!(min_ttl(Some(3), None), Some(3));
        assert_eq!(min_ttl(Some(3), Some(2)), Some(2));
    }
}
