//! The request metrics as an operator sees them: a real Prometheus server scrapes two meshed
//! workloads carrying traffic, and PromQL reads who talks to whom, the success rate and a rate.
//! Every wait is bounded; nothing asserts on how long a thing took.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use mesh_integration::prometheus::{Prometheus, Sample};
use mesh_integration::{h1_client, proxy_toml, start_backend, start_proxy_toml};
use tokio::time::timeout;

/// The service proxy A calls.
const API: &str = "api.demo.svc.cluster.local:80";
/// Requests sent through proxy A.
const REQUESTS: u64 = 1000;
/// Client connections the requests are spread over.
const CONNECTIONS: u64 = 4;
/// The backend fails every this many requests.
const FAIL_EVERY: u64 = 10;
/// The bound of sending the traffic.
const TRAFFIC_WAIT: Duration = Duration::from_secs(120);
/// The bound of Prometheus's first scrapes and of the metrics reaching the expected values.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(30);
/// The pause between two looks at Prometheus.
const POLL: Duration = Duration::from_millis(500);

/// Awaits `f` for at most `limit`.
async fn within<F: Future>(what: &str, limit: Duration, f: F) -> F::Output {
    match timeout(limit, f).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// A label's value; Prometheus leaves empty labels out of a series.
fn label<'a>(labels: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    labels.get(name).map_or("", String::as_str)
}

/// The value of the series whose labels are exactly `want` (labels absent from `want` must be
/// empty or missing).
fn value_of(samples: &[Sample], want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(labels, _)| {
            want.iter().all(|(k, v)| label(labels, k) == *v)
                && labels
                    .iter()
                    .all(|(k, v)| v.is_empty() || want.iter().any(|(w, _)| w == k))
        })
        .map(|(_, value)| *value)
}

/// The one value of a query whose result is a single series.
fn single(samples: &[Sample]) -> Option<f64> {
    match samples {
        [(_, value)] => Some(*value),
        _ => None,
    }
}

/// What the test reads from Prometheus.
#[derive(Debug, Default)]
struct Observed {
    edges: Vec<Sample>,
    outbound_success: Vec<Sample>,
    inbound_success: Vec<Sample>,
    rates: Vec<Sample>,
}

impl Observed {
    fn outbound_requests(&self) -> Option<f64> {
        value_of(
            &self.edges,
            &[
                ("src_workload", "web"),
                ("dst_workload", "api"),
                ("direction", "outbound"),
            ],
        )
    }

    fn inbound_requests(&self) -> Option<f64> {
        value_of(
            &self.edges,
            &[("dst_workload", "api"), ("direction", "inbound")],
        )
    }

    fn edge_rate(&self) -> Option<f64> {
        value_of(
            &self.rates,
            &[("src_workload", "web"), ("dst_workload", "api")],
        )
    }

    fn complete(&self) -> bool {
        let near = |v: Option<f64>| v.is_some_and(|v| (v - 0.9).abs() <= 0.02);
        self.outbound_requests() == Some(1000.0)
            && self.inbound_requests() == Some(1000.0)
            && near(single(&self.outbound_success))
            && near(single(&self.inbound_success))
            && self.edge_rate().is_some_and(|v| v > 0.0)
    }
}

const EDGES: &str = "sum by (src_workload, dst_workload, direction) (request_total)";
const OUTBOUND_SUCCESS: &str = "sum(response_total{direction=\"outbound\",dst_workload=\"api\",\
     classification=\"success\"}) / sum(response_total{direction=\"outbound\",dst_workload=\"api\"})";
const INBOUND_SUCCESS: &str = "sum(response_total{direction=\"inbound\",dst_workload=\"api\",\
     classification=\"success\"}) / sum(response_total{direction=\"inbound\",dst_workload=\"api\"})";
const RATES: &str = "sum by (src_workload, dst_workload) (rate(request_total[30s]))";

async fn observe(prometheus: &Prometheus) -> anyhow::Result<Observed> {
    Ok(Observed {
        edges: prometheus.query(EDGES).await?,
        outbound_success: prometheus.query(OUTBOUND_SUCCESS).await?,
        inbound_success: prometheus.query(INBOUND_SUCCESS).await?,
        rates: prometheus.query(RATES).await?,
    })
}

/// Sends `count` GET requests for [`API`] over one HTTP/1.1 connection to `outbound`; returns
/// how many answered 500.
async fn send(outbound: SocketAddr, count: u64) -> u64 {
    let mut client = h1_client::<Empty<Bytes>>(outbound).await.unwrap();
    let mut failed = 0;
    for _ in 0..count {
        client.ready().await.unwrap();
        let req = Request::get("/")
            .header("host", "api.demo.svc.cluster.local")
            .body(Empty::new())
            .unwrap();
        let rsp = client.send_request(req).await.unwrap();
        match rsp.status() {
            StatusCode::OK => {}
            StatusCode::INTERNAL_SERVER_ERROR => failed += 1,
            other => panic!("unexpected {other}: {:?}", rsp.headers()),
        }
        let _ = rsp.into_body().collect().await.unwrap();
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_who_talks_to_whom_and_the_success_rate() {
    // The app behind B: every 10th request fails.
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let app = start_backend(move |_req| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut rsp = Response::new(Full::new(Bytes::from_static(b"api")));
            if n.is_multiple_of(FAIL_EVERY) {
                *rsp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            }
            rsp
        }
    })
    .await
    .unwrap();

    // B: workload api/demo, inbound in front of the app.
    let toml_b = proxy_toml(&[])
        + &format!(
            "[inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\n\
             [workload]\nname = \"api\"\nnamespace = \"demo\"\n"
        );
    let proxy_b = start_proxy_toml(&toml_b).await.unwrap();
    let inbound_b = proxy_b.inbound.expect("B has an inbound listener");

    // A: workload web/demo, calling the api service whose one endpoint is B's inbound.
    let toml_a = proxy_toml(&[(API, &[inbound_b])]).replace(
        &format!("authority = \"{API}\""),
        &format!("authority = \"{API}\"\nworkload = \"api\"\nnamespace = \"demo\""),
    ) + "[workload]\nname = \"web\"\nnamespace = \"demo\"\n";
    let proxy_a = start_proxy_toml(&toml_a).await.unwrap();

    let prometheus = Prometheus::start(&[proxy_a.admin, proxy_b.admin])
        .await
        .unwrap();
    // Both proxies are scraped before the traffic.
    prometheus
        .wait_for_targets(PROMETHEUS_WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

    // The first request makes A's api service (its balancer and its request series are made
    // on first use). Once Prometheus has scraped that count, the rate sees the rest rise, as it
    // sees any edge whose traffic goes on.
    let mut failed = within("the first request", TRAFFIC_WAIT, send(proxy_a.outbound, 1)).await;
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    loop {
        let edges = prometheus.query(EDGES).await.unwrap_or_default();
        let seen = Observed {
            edges,
            ..Observed::default()
        };
        if seen.outbound_requests() == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not see the first request in {PROMETHEUS_WAIT:?}:\n{}",
            prometheus.log_tail()
        );
        tokio::time::sleep(POLL).await;
    }
    let senders: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let count = REQUESTS / CONNECTIONS - u64::from(i == 0);
            tokio::spawn(send(proxy_a.outbound, count))
        })
        .collect();
    for sender in senders {
        failed += within("sending the traffic", TRAFFIC_WAIT, sender)
            .await
            .unwrap();
    }
    assert_eq!(served.load(Ordering::SeqCst), REQUESTS);
    assert_eq!(failed, REQUESTS / FAIL_EVERY);

    // Poll until Prometheus has scraped the counts after the traffic.
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    let max_polls = PROMETHEUS_WAIT.as_millis() / POLL.as_millis() + 1;
    let mut observed = Observed::default();
    let mut last_error = None;
    for _ in 0..max_polls {
        match observe(&prometheus).await {
            Ok(now) => {
                observed = now;
                last_error = None;
                if observed.complete() {
                    break;
                }
            }
            Err(e) => last_error = Some(format!("{e:#}")),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let context = format!(
        "{observed:#?}\nlast error: {last_error:?}\nPrometheus log:\n{}",
        prometheus.log_tail()
    );
    eprintln!(
        "outbound web->api requests {:?}, inbound ->api requests {:?}, success rate outbound \
         {:?} inbound {:?}, rate web->api {:?}",
        observed.outbound_requests(),
        observed.inbound_requests(),
        single(&observed.outbound_success),
        single(&observed.inbound_success),
        observed.edge_rate(),
    );

    assert_eq!(observed.outbound_requests(), Some(1000.0), "{context}");
    assert_eq!(observed.inbound_requests(), Some(1000.0), "{context}");
    for success in [&observed.outbound_success, &observed.inbound_success] {
        let rate = single(success).unwrap_or_else(|| panic!("{context}"));
        assert!((rate - 0.9).abs() <= 0.02, "success rate {rate}: {context}");
    }
    let rate = observed.edge_rate().unwrap_or_else(|| panic!("{context}"));
    assert!(rate > 0.0, "rate {rate}: {context}");
}
