//! Panic isolation: a panic while serving one connection (or one HTTP/2 stream) ends that
//! connection (or stream) only; the proxy and its other connections go on. Release builds
//! unwind (`panic = "unwind"`) for this: with `abort`, a panic in any dependency on one
//! connection would take every connection of the pod down with the process.
//!
//! Unwinding has a price, measured side by side (`bench/run.py --ab`, 5 rounds, one core): with
//! the same thin LTO, `abort` served 6.9% more requests per second at 9.3% less CPU per
//! request (the landing pads keep the optimizer from some inlining). The release profile wins
//! it back with fat LTO in one codegen unit: against thin-LTO `abort`, +1.1% req/s and -0.8%
//! CPU per request, within the machine's noise.
//!
//! ```
//! # async fn f() {
//! mesh_core::panic::isolate("a connection", async { /* serve it */ }).await;
//! # }
//! ```

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::FutureExt as _;

/// Panics caught so far, in this process.
static CAUGHT: AtomicU64 = AtomicU64::new(0);

/// Panics caught so far (exported as `process_panics_caught_total`).
pub fn caught() -> u64 {
    CAUGHT.load(Ordering::SeqCst)
}

/// Runs `serve`; a panic in it is caught, counted and logged, naming `what` was being served.
pub async fn isolate<F: Future<Output = ()>>(what: &'static str, serve: F) {
    let mut serving = std::pin::pin!(AssertUnwindSafe(serve).catch_unwind());
    if serving.as_mut().await.is_err() {
        count_caught(what);
    }
    // The connection (inside `serving`) closes only now: whoever sees it closed by a panic
    // finds the panic counted.
}

/// Counts and logs a panic caught while serving `what`.
pub(crate) fn count_caught(what: &'static str) {
    CAUGHT.fetch_add(1, Ordering::SeqCst);
    tracing::error!(
        what,
        "a panic while serving it: it is closed, the proxy goes on (a bug: please report it with this log)"
    );
}
