#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]
//! The DNS source against a real (tiny, authoritative) DNS server on 127.0.0.1 whose records,
//! TTLs and health each test changes as it goes.

use std::collections::{BTreeSet, HashMap};
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use mesh_core::endpoint::Endpoint;
use mesh_discovery::dns::{DnsConfig, DnsError, DnsResolve};
use mesh_discovery::{Resolution, Resolve, ResolveError};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout};
use tower::discover::Change;

/// The longest any expected change may take.
const WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Answers from the zone: NXDOMAIN for an unknown name, an empty answer for a known name
    /// without records of the type asked.
    Answer,
    /// Reads queries and never answers (the client times out).
    Drop,
    /// Answers SERVFAIL to everything.
    ServFail,
}

#[derive(Debug)]
struct Zone {
    mode: Mode,
    /// (lowercase FQDN, type) -> (TTL, data).
    records: HashMap<(String, RecordType), (u32, Vec<RData>)>,
    /// Queries received, answered or not.
    queries: HashMap<(String, RecordType), usize>,
}

/// A DNS server on an ephemeral UDP port of 127.0.0.1, until the test's runtime ends.
#[derive(Clone, Debug)]
struct Server {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
}

fn key(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

impl Server {
    async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = Self {
            addr: socket.local_addr().unwrap(),
            zone: Arc::new(Mutex::new(Zone {
                mode: Mode::Answer,
                records: HashMap::new(),
                queries: HashMap::new(),
            })),
        };
        let zone = Arc::clone(&server.zone);
        tokio::spawn(async move {
            let mut buffer = vec![0_u8; 4096];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
                    continue;
                };
                let Ok(request) = Message::from_vec(&buffer[..len]) else {
                    continue;
                };
                let Some(response) = answer(&zone, &request) else {
                    continue;
                };
                let _ = socket.send_to(&response.to_vec().unwrap(), peer).await;
            }
        });
        server
    }

    fn set(&self, name: &str, record_type: RecordType, ttl: u32, data: Vec<RData>) {
        let mut zone = self.zone.lock().unwrap();
        if data.is_empty() {
            zone.records.remove(&(key(name), record_type));
        } else {
            zone.records.insert((key(name), record_type), (ttl, data));
        }
    }

    fn set_a(&self, name: &str, ttl: u32, ips: &[&str]) {
        let data = ips
            .iter()
            .map(|ip| RData::A(A(ip.parse().unwrap())))
            .collect();
        self.set(name, RecordType::A, ttl, data);
    }

    fn set_aaaa(&self, name: &str, ttl: u32, ips: &[&str]) {
        let data = ips
            .iter()
            .map(|ip| RData::AAAA(AAAA(ip.parse().unwrap())))
            .collect();
        self.set(name, RecordType::AAAA, ttl, data);
    }

    /// SRV records: (priority, weight, port, target).
    fn set_srv(&self, name: &str, ttl: u32, records: &[(u16, u16, u16, &str)]) {
        let data = records
            .iter()
            .map(|(priority, weight, port, target)| {
                RData::SRV(SRV::new(
                    *priority,
                    *weight,
                    *port,
                    Name::from_str(target).unwrap(),
                ))
            })
            .collect();
        self.set(name, RecordType::SRV, ttl, data);
    }

    fn mode(&self, mode: Mode) {
        self.zone.lock().unwrap().mode = mode;
    }

    fn queries(&self, name: &str, record_type: RecordType) -> usize {
        let zone = self.zone.lock().unwrap();
        zone.queries
            .get(&(key(name), record_type))
            .copied()
            .unwrap_or(0)
    }

    /// A resolver of this server only, re-resolving at least every 200 ms.
    fn config(&self) -> DnsConfig {
        DnsConfig {
            nameservers: vec![self.addr],
            min_ttl: Duration::from_millis(200),
            max_ttl: Duration::from_secs(60),
            timeout: Duration::from_millis(300),
            retry_backoff_max: Duration::from_secs(2),
        }
    }
}

/// The server's answer to `request`, or `None` to drop it.
fn answer(zone: &Mutex<Zone>, request: &Message) -> Option<Message> {
    let query = request.queries.first()?.clone();
    let name = key(&query.name().to_string());
    let mut zone = zone.lock().unwrap();
    *zone
        .queries
        .entry((name.clone(), query.query_type()))
        .or_default() += 1;
    let mut response = Message::response(request.id, request.op_code);
    response.add_query(query.clone());
    response.edns = request.edns.clone();
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.recursion_desired;
    match zone.mode {
        Mode::Drop => return None,
        Mode::ServFail => {
            response.metadata.response_code = ResponseCode::ServFail;
            return Some(response);
        }
        Mode::Answer => {}
    }
    if let Some((ttl, data)) = zone.records.get(&(name.clone(), query.query_type())) {
        for rdata in data {
            response.add_answer(Record::from_rdata(
                query.name().clone(),
                *ttl,
                rdata.clone(),
            ));
        }
    } else if !zone.records.keys().any(|(known, _)| *known == name) {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    Some(response)
}

/// The next change, within [`WAIT`].
async fn next(resolution: &mut Resolution) -> Change<SocketAddr, Endpoint> {
    let item = timeout(
        WAIT,
        poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *resolution), cx)),
    )
    .await
    .expect("no change in time");
    match item {
        Some(Ok(change)) => change,
        other => panic!("the stream ended: {other:?}"),
    }
}

/// The changes that turn up within `wait`.
async fn changes_within(
    resolution: &mut Resolution,
    wait: Duration,
) -> Vec<Change<SocketAddr, Endpoint>> {
    let deadline = Instant::now() + wait;
    let mut changes = Vec::new();
    while let Ok(Some(Ok(change))) = tokio::time::timeout_at(
        deadline,
        poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *resolution), cx)),
    )
    .await
    {
        changes.push(change);
    }
    changes
}

/// `n` changes, as ("+addr" | "-addr") strings, sorted.
async fn next_n(resolution: &mut Resolution, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(describe(&next(resolution).await));
    }
    seen
}

fn describe(change: &Change<SocketAddr, Endpoint>) -> String {
    match change {
        Change::Insert(addr, _) => format!("+{addr}"),
        Change::Remove(addr) => format!("-{addr}"),
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn addrs(resolution: &Resolution) -> BTreeSet<String> {
    resolution.endpoints().map(|e| e.addr.to_string()).collect()
}

#[tokio::test]
async fn a_and_aaaa_records_become_endpoints_and_follow_the_ttl() {
    let server = Server::start().await;
    server.set_a("web.test.", 1, &["10.0.0.1", "10.0.0.2"]);
    server.set_aaaa("web.test.", 1, &["fd00::1"]);
    let resolve = DnsResolve::new(server.config()).unwrap();

    let mut r = resolve.resolve("web.test:8080").unwrap();
    assert_eq!(
        next_n(&mut r, 3).await,
        set(&["+10.0.0.1:8080", "+10.0.0.2:8080", "+[fd00::1]:8080"])
    );
    let first = r.endpoints().next().unwrap();
    assert!(first.identity().is_none(), "DNS endpoints are not meshed");
    assert!(first.meta.labels.is_empty());

    // One address goes, one comes: after the TTL (1 s), exactly that.
    server.set_a("web.test.", 1, &["10.0.0.2", "10.0.0.3"]);
    assert_eq!(
        next_n(&mut r, 2).await,
        set(&["-10.0.0.1:8080", "+10.0.0.3:8080"])
    );
    assert_eq!(
        addrs(&r),
        set(&["10.0.0.2:8080", "10.0.0.3:8080", "[fd00::1]:8080"])
    );

    // IP literals are their own endpoint, with no lookup.
    let mut literal = resolve.resolve("10.1.2.3:99").unwrap();
    assert_eq!(next_n(&mut literal, 1).await, set(&["+10.1.2.3:99"]));
}

#[tokio::test]
async fn a_failing_server_keeps_the_last_good_endpoints_and_backs_off() {
    let server = Server::start().await;
    // TTL 0: re-resolved every 200 ms (min_ttl) while the server answers.
    server.set_a("api.test.", 0, &["10.0.0.1", "10.0.0.2"]);
    let resolve = DnsResolve::new(server.config()).unwrap();
    let mut r = resolve.resolve("api.test:80").unwrap();
    assert_eq!(
        next_n(&mut r, 2).await,
        set(&["+10.0.0.1:80", "+10.0.0.2:80"])
    );

    // The server goes silent: queries time out, nothing changes.
    server.mode(Mode::Drop);
    let changes = changes_within(&mut r, Duration::from_millis(1200)).await;
    assert!(changes.is_empty(), "changes while timing out: {changes:?}");

    // Then it answers SERVFAIL: still nothing changes, and the retries back off (1 s, then
    // 2 s) instead of following the 200 ms TTL (which would be ~15 rounds here).
    let before = server.queries("api.test.", RecordType::A);
    server.mode(Mode::ServFail);
    let changes = changes_within(&mut r, Duration::from_secs(3)).await;
    assert!(changes.is_empty(), "changes on SERVFAIL: {changes:?}");
    assert_eq!(addrs(&r), set(&["10.0.0.1:80", "10.0.0.2:80"]));
    let during = server.queries("api.test.", RecordType::A) - before;
    // Each round asks A once and retries once (two queries); a drop-time round may end here.
    assert!(
        (2..=8).contains(&during),
        "{during} A queries in 3 s of SERVFAIL: no backoff?"
    );

    // The server recovers, with new records: updates resume (at the next retry, <= 2 s).
    server.set_a("api.test.", 0, &["10.0.0.3"]);
    server.mode(Mode::Answer);
    assert_eq!(
        next_n(&mut r, 3).await,
        set(&["-10.0.0.1:80", "-10.0.0.2:80", "+10.0.0.3:80"])
    );
}

#[tokio::test]
async fn nxdomain_after_an_answer_keeps_the_endpoints() {
    let server = Server::start().await;
    server.set_a("old.test.", 0, &["10.0.0.1"]);
    let resolve = DnsResolve::new(server.config()).unwrap();
    let mut r = resolve.resolve("old.test:80").unwrap();
    assert_eq!(next_n(&mut r, 1).await, set(&["+10.0.0.1:80"]));

    // The name disappears (NXDOMAIN, re-asked every 200 ms): the endpoint is kept.
    server.set_a("old.test.", 0, &[]);
    let before = server.queries("old.test.", RecordType::A);
    let changes = changes_within(&mut r, Duration::from_secs(1)).await;
    assert!(changes.is_empty(), "changes on NXDOMAIN: {changes:?}");
    assert!(
        server.queries("old.test.", RecordType::A) > before,
        "NXDOMAIN was not re-asked"
    );
    assert_eq!(addrs(&r), set(&["10.0.0.1:80"]));

    // It comes back with another address.
    server.set_a("old.test.", 0, &["10.0.0.2"]);
    assert_eq!(
        next_n(&mut r, 2).await,
        set(&["-10.0.0.1:80", "+10.0.0.2:80"])
    );
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_of_the_lowest_priority() {
    let server = Server::start().await;
    server.set_srv(
        "_grpc._tcp.web.test.",
        0,
        &[
            (10, 5, 9001, "a.web.test."),
            (10, 15, 9002, "b.web.test."),
            // A backup: only used when priority 10 has no addresses.
            (20, 1, 9003, "c.web.test."),
        ],
    );
    server.set_a("a.web.test.", 0, &["10.0.1.1"]);
    server.set_a("b.web.test.", 0, &["10.0.1.2"]);
    server.set_aaaa("b.web.test.", 0, &["fd00::2"]);
    server.set_a("c.web.test.", 0, &["10.0.1.3"]);
    let resolve = DnsResolve::new(server.config()).unwrap();

    let mut r = resolve.resolve("_grpc._tcp.web.test.").unwrap();
    assert_eq!(
        next_n(&mut r, 3).await,
        set(&["+10.0.1.1:9001", "+10.0.1.2:9002", "+[fd00::2]:9002"])
    );
    let weights: BTreeSet<(String, String)> = r
        .endpoints()
        .map(|e| {
            (
                e.addr.to_string(),
                e.label("weight").unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        weights,
        [
            ("10.0.1.1:9001", "5"),
            ("10.0.1.2:9002", "15"),
            ("[fd00::2]:9002", "15"),
        ]
        .into_iter()
        .map(|(a, w)| (a.to_owned(), w.to_owned()))
        .collect()
    );
    assert!(r.endpoints().all(|e| e.identity().is_none()));

    // The priority-10 targets lose their addresses: the backup takes over.
    server.set_a("a.web.test.", 0, &[]);
    server.set_a("b.web.test.", 0, &[]);
    server.set_aaaa("b.web.test.", 0, &[]);
    assert_eq!(
        next_n(&mut r, 4).await,
        set(&[
            "-10.0.1.1:9001",
            "-10.0.1.2:9002",
            "-[fd00::2]:9002",
            "+10.0.1.3:9003"
        ])
    );
    assert_eq!(r.endpoints().next().unwrap().label("weight"), Some("1"));
}

#[tokio::test]
async fn subscribers_of_one_name_share_one_resolution() {
    let server = Server::start().await;
    server.set_a("shared.test.", 1, &["10.0.0.9"]);
    let resolve = DnsResolve::new(server.config()).unwrap();

    let mut first = resolve.resolve("shared.test:80").unwrap();
    let mut second = resolve.resolve("shared.test:80").unwrap();
    assert_eq!(resolve.resolving(), 1);
    assert_eq!(next_n(&mut first, 1).await, set(&["+10.0.0.9:80"]));
    assert_eq!(next_n(&mut second, 1).await, set(&["+10.0.0.9:80"]));

    // With a TTL of 1 s, 2.5 s hold 3 resolutions (at 0, 1 and 2 s): one task, not two.
    let start = server.queries("shared.test.", RecordType::A);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let asked = server.queries("shared.test.", RecordType::A) - start;
    assert!((1..=3).contains(&asked), "{asked} A queries in 2.5 s");

    // A late subscriber joins with the current set.
    let mut third = resolve.resolve("shared.test:80").unwrap();
    assert_eq!(next_n(&mut third, 1).await, set(&["+10.0.0.9:80"]));
    assert_eq!(resolve.resolving(), 1);

    // Nobody left: the task ends (within one TTL) and forgets the name.
    drop((first, second, third));
    let deadline = Instant::now() + WAIT;
    while resolve.resolving() > 0 {
        assert!(
            Instant::now() < deadline,
            "the resolution outlived its subscribers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = server.queries("shared.test.", RecordType::A);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(server.queries("shared.test.", RecordType::A), stopped);

    // Resolving it again starts afresh.
    let mut again = resolve.resolve("shared.test:80").unwrap();
    assert_eq!(next_n(&mut again, 1).await, set(&["+10.0.0.9:80"]));
    assert_eq!(resolve.resolving(), 1);
}

#[test]
fn configuration_errors_name_the_field() {
    let good = DnsConfig::default();
    assert_eq!(good.validate(), Ok(()));

    let cases: [(&str, DnsConfig); 5] = [
        (
            "min_ttl",
            DnsConfig {
                min_ttl: Duration::ZERO,
                ..good.clone()
            },
        ),
        (
            "max_ttl",
            DnsConfig {
                min_ttl: Duration::from_secs(10),
                max_ttl: Duration::from_secs(5),
                ..good.clone()
            },
        ),
        (
            "timeout",
            DnsConfig {
                timeout: Duration::ZERO,
                ..good.clone()
            },
        ),
        (
            "retry_backoff_max",
            DnsConfig {
                retry_backoff_max: Duration::from_secs(2 * 24 * 3600),
                ..good.clone()
            },
        ),
        (
            "nameservers",
            DnsConfig {
                nameservers: vec!["127.0.0.1:0".parse().unwrap()],
                ..good.clone()
            },
        ),
    ];
    for (field, config) in cases {
        let invalid = config.validate().unwrap_err();
        assert_eq!(invalid.field, field, "{}", invalid.expected);
        match DnsResolve::new(config) {
            Err(e @ DnsError::Invalid(_)) => {
                assert!(e.to_string().contains(field), "{e}")
            }
            other => panic!("{field}: {other:?}"),
        }
    }

    // From configuration text: durations as "200ms", unknown keys refused.
    let parsed: DnsConfig =
        serde_json::from_str(r#"{"nameservers": ["10.96.0.10:53"], "min_ttl": "200ms"}"#).unwrap();
    assert_eq!(parsed.min_ttl, Duration::from_millis(200));
    assert_eq!(parsed.max_ttl, Duration::from_secs(60));
    assert_eq!(
        parsed.nameservers,
        vec![SocketAddr::new(IpAddr::from([10, 96, 0, 10]), 53)]
    );
    let unknown = serde_json::from_str::<DnsConfig>(r#"{"min_tll": "1s"}"#).unwrap_err();
    assert!(unknown.to_string().contains("min_tll"), "{unknown}");
}

#[test]
fn names_that_are_not_dns_names_are_refused() {
    let resolve = DnsResolve::new(DnsConfig {
        nameservers: vec!["127.0.0.1:53".parse().unwrap()],
        ..DnsConfig::default()
    })
    .unwrap();
    for name in ["web.test", "web.test:http", ":80", "_grpc._tcp.web.test:80"] {
        match resolve.resolve(name) {
            Err(ResolveError::Invalid {
                source_name: "dns", ..
            }) => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn a_resolution_whose_runtime_is_gone_is_started_again() {
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = server_runtime.block_on(Server::start());
    server.set_a("again.test.", 0, &["10.0.0.1"]);
    let resolve = DnsResolve::new(server.config()).unwrap();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };

    let first = runtime();
    first.block_on(async {
        let mut r = resolve.resolve("again.test:80").unwrap();
        assert_eq!(next_n(&mut r, 1).await, set(&["+10.0.0.1:80"]));
    });
    drop(first);

    // The first runtime took the task along: a new runtime gets a new, live one.
    runtime().block_on(async {
        let mut r = resolve.resolve("again.test:80").unwrap();
        assert_eq!(next_n(&mut r, 1).await, set(&["+10.0.0.1:80"]));
        server.set_a("again.test.", 0, &["10.0.0.2"]);
        assert_eq!(
            next_n(&mut r, 2).await,
            set(&["-10.0.0.1:80", "+10.0.0.2:80"])
        );
    });
}
