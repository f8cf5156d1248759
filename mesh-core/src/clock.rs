//! One clock read for every layer a request passes through at once.
//!
//! Several layers read the time for each request: the server side stamps when it was received,
//! the timeout computes its deadline, the balancer ages its latency estimates and times the
//! request, the metrics time it. On the request's way down (one synchronous call through the
//! stack) and on its response's way up (one poll of its future), those reads are microseconds
//! apart, yet each is a `clock_gettime`: six per request, 3% of the proxy's CPU under load
//! (profiled at 180k requests/s on one core).
//!
//! [`scope`] wraps such a pass: the first [`now`] inside it reads the clock, and every later
//! one in the same pass (on the same thread) gets that instant. Outside a scope, [`now`] reads
//! the clock. A scope that nobody reads in costs no read at all, so a poll that finds nothing
//! ready pays nothing. [`Respond`](crate::server::Respond) opens one around each call into
//! its stack and each poll of a response; a layer used elsewhere reads the clock as before.
//!
//! The instant is `tokio::time::Instant`, so paused time in tests is honoured.
//!
//! ```
//! use mesh_core::clock;
//!
//! let (first, second) = clock::scope(|| (clock::now(), clock::now()));
//! assert_eq!(first, second); // one read, shared
//! assert!(clock::now() >= second); // outside the scope: a fresh read
//! ```

use std::cell::Cell;

use tokio::time::Instant;

#[derive(Clone, Copy)]
enum Scope {
    /// No scope is open on this thread.
    Closed,
    /// A scope is open and nobody has read the clock in it yet.
    Unread,
    /// A scope is open and the clock was read at this instant.
    Read(Instant),
}

thread_local! {
    static SCOPE: Cell<Scope> = const { Cell::new(Scope::Closed) };
}

/// The current instant: the one already read in the open [`scope`], if any.
pub fn now() -> Instant {
    SCOPE.with(|scope| match scope.get() {
        Scope::Read(at) => at,
        Scope::Unread => {
            let at = Instant::now();
            scope.set(Scope::Read(at));
            at
        }
        Scope::Closed => Instant::now(),
    })
}

/// Runs `f` with one clock read shared by every [`now`] in it. Inside an open scope, `f` joins
/// it. The scope closes when `f` returns or unwinds.
pub fn scope<R>(f: impl FnOnce() -> R) -> R {
    let outer = SCOPE.with(|scope| {
        let outer = scope.get();
        if matches!(outer, Scope::Closed) {
            scope.set(Scope::Unread);
        }
        outer
    });
    /// Puts back what was there before, also when `f` panics.
    struct Restore(Scope);
    impl Drop for Restore {
        fn drop(&mut self) {
            if matches!(self.0, Scope::Closed) {
                SCOPE.with(|scope| scope.set(Scope::Closed));
            }
        }
    }
    let _restore = Restore(outer);
    f()
}

#[cfg(test)]
#[allow(
    clippy::disallowed_methods,
    reason = "plain test threads, no runtime to block: a real sleep is how time passes in a scope"
)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_scope_reads_once() {
        let (first, later) = scope(|| {
            let first = now();
            // Time moves on; the scope's instant does not.
            std::thread::sleep(Duration::from_millis(2));
            (first, now())
        });
        assert_eq!(first, later);
        assert!(
            now() >= first + Duration::from_millis(2),
            "outside: a fresh read"
        );
    }

    #[test]
    fn the_first_read_is_when_it_is_needed_not_when_the_scope_opens() {
        let opened = Instant::now();
        let read = scope(|| {
            std::thread::sleep(Duration::from_millis(2));
            now()
        });
        assert!(read >= opened + Duration::from_millis(2));
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_is_honoured() {
        let start = now();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(scope(now), start + Duration::from_millis(5));
    }

    #[test]
    fn nested_scopes_share_the_outer_read_and_close_with_it() {
        let (outer, inner) = scope(|| {
            let outer = now();
            std::thread::sleep(Duration::from_millis(1));
            let inner = scope(now);
            assert_eq!(now(), outer, "the inner scope's end leaves the outer open");
            (outer, inner)
        });
        assert_eq!(outer, inner);
        assert!(matches!(SCOPE.with(Cell::get), Scope::Closed));
    }

    #[test]
    fn a_panic_inside_closes_the_scope() {
        let caught = std::panic::catch_unwind(|| {
            scope(|| {
                let _ = now();
                panic!("inside a scope")
            })
        });
        assert!(caught.is_err());
        assert!(matches!(SCOPE.with(Cell::get), Scope::Closed));
    }
}
