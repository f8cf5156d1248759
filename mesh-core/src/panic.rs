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
/// See [`isolate_with`] to keep something alive exactly as long as the connection.
pub fn isolate<F: Future<Output = ()>>(what: &'static str, serve: F) -> Isolated<F, ()> {
    isolate_with(what, serve, ())
}

/// [`isolate`], holding `guard` (a connection slot, say) until the future is dropped, after
/// the connection closed.
///
/// A future rather than an `async fn`: an `async fn` (or `async` block) keeps its argument and
/// the future it awaits in separate places, so a connection's task would carry its serving
/// future twice (3.4 KB more for every connection, idle or not).
pub fn isolate_with<F: Future<Output = ()>, G>(
    what: &'static str,
    serve: F,
    guard: G,
) -> Isolated<F, G> {
    Isolated {
        what,
        serving: AssertUnwindSafe(serve).catch_unwind(),
        _guard: guard,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`isolate`]: the connection (inside it) closes only when it is dropped,
    /// after the panic was counted, so whoever sees the connection closed by a panic finds
    /// the panic counted.
    #[must_use = "futures do nothing unless polled"]
    pub struct Isolated<F, G> {
        what: &'static str,
        #[pin]
        serving: futures_util::future::CatchUnwind<AssertUnwindSafe<F>>,
        _guard: G,
    }
}

impl<F, G> std::fmt::Debug for Isolated<F, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Isolated")
            .field("what", &self.what)
            .finish()
    }
}

impl<F: Future<Output = ()>, G> Future for Isolated<F, G> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        if std::task::ready!(this.serving.poll(cx)).is_err() {
            count_caught(this.what);
        }
        std::task::Poll::Ready(())
    }
}

/// Counts and logs a panic caught while serving `what`.
pub(crate) fn count_caught(what: &'static str) {
    CAUGHT.fetch_add(1, Ordering::SeqCst);
    tracing::error!(
        what,
        "a panic while serving it: it is closed, the proxy goes on (a bug: please report it with this log)"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// Set when dropped; records whether the panic was counted by then.
    struct Guard {
        dropped: Arc<AtomicBool>,
        counted_before: Arc<AtomicBool>,
        caught_at_start: u64,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            self.counted_before
                .store(caught() > self.caught_at_start, Ordering::SeqCst);
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_panic_is_counted_before_the_guard_goes_and_the_guard_lives_as_long_as_the_future() {
        let (dropped, counted_before) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let guard = Guard {
            dropped: dropped.clone(),
            counted_before: Arc::clone(&counted_before),
            caught_at_start: caught(),
        };
        let mut isolated = Box::pin(isolate_with(
            "a test connection",
            async { panic!("a panic a test asked for") },
            guard,
        ));
        (&mut isolated).await;
        assert!(
            !dropped.load(Ordering::SeqCst),
            "held until the future goes"
        );
        drop(isolated);
        assert!(dropped.load(Ordering::SeqCst));
        assert!(counted_before.load(Ordering::SeqCst));
    }

    #[test]
    fn the_future_is_not_twice_the_size_of_what_it_serves() {
        let serve = async {
            let buffer = [0u8; 4096];
            std::future::ready(()).await;
            std::hint::black_box(buffer);
        };
        let served = std::mem::size_of_val(&serve);
        assert!(std::mem::size_of_val(&isolate("sized", serve)) < served + 256);
    }
}
