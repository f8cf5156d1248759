//! One pick (power of two choices over peak-EWMA) over 1 to 10,000 endpoints: the cost must
//! not grow with the number of endpoints (`bench/run.py --curves` charts it).
//!
//! Run: `cargo bench -p mesh-balance --bench pick`

use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use mesh_balance::{Balancer, BalancerConfig, fixed};
use mesh_core::endpoint::Endpoint;
use mesh_core::{Availability, Body, BoxError};

/// An endpoint that is never called: the bench only picks.
#[derive(Clone, Debug)]
struct Idle;

impl Availability for Idle {
    fn is_available(&self) -> bool {
        true
    }
}

impl tower::Service<Request<Body>> for Idle {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        std::future::ready(Ok(Response::new(Body::Empty)))
    }
}

fn balancer(runtime: &tokio::runtime::Runtime, n: u16) -> Balancer<Idle> {
    runtime.block_on(async {
        let addrs = (0..n)
            .map(|i| std::net::SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 80)));
        let b = Balancer::new(BalancerConfig::default(), fixed(addrs), |_: &Endpoint| Idle);
        while b.endpoints().len() < usize::from(n) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        b
    })
}

fn pick(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else { return };
    let mut group = c.benchmark_group("pick");
    for n in [1u16, 10, 100, 1000, 10_000] {
        let b = balancer(&runtime, n);
        let _guard = runtime.enter();
        group.bench_with_input(BenchmarkId::from_parameter(n), &b, |bench, b| {
            bench.iter(|| b.pick())
        });
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
