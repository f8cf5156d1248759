//! Stacks made on their first request and dropped after an idle period.
//!
//! A proxy configured with a whole cluster's services talks to few of them. A service's stack
//! (its balancer, one client and metrics series per endpoint, its discovery watch) costs tens
//! of KB, so a [`Lazy`] holds only how to make it: the first request makes it,
//! [`Lazy::release_if_idle`] drops it again when no request came since the last check, and
//! the next request makes a fresh one. [`sweep`] runs those checks for many of them.
//!
//! The request path reads the made value through an `ArcSwapOption` (no lock) and marks the
//! cell used with one relaxed load (a store only when it was unmarked), so a made service
//! costs about what calling it directly does. [`Lazy::view`] gives an [`HttpService`] that
//! calls a part of the made value without boxing a second future.
//!
//! ```
//! # async fn demo() {
//! use std::time::Duration;
//! use mesh_core::lazy::{Lazy, sweep};
//! use mesh_core::{Body, erase};
//!
//! let lazy = Lazy::new(|| {
//!     // Built on the first request: a balancer, a discovery watch, ...
//!     Ok(erase(tower::service_fn(|_req: http::Request<Body>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Body::Empty))
//!     })))
//! });
//! let service = lazy.view(|made| made);
//! assert!(!lazy.is_made());
//! sweep(vec![lazy.clone()], Duration::from_secs(300));
//! # drop(service);
//! # }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::{BoxError, ErasedStack, HttpFuture, HttpService, StackError};

type Make<T> = Box<dyn Fn() -> Result<T, BoxError> + Send + Sync>;
type OnRelease = Box<dyn Fn() + Send + Sync>;

/// A value made on first use and dropped when idle (see the [module](self) docs).
pub struct Lazy<T> {
    make: Make<T>,
    made: ArcSwapOption<T>,
    /// One maker at a time: two first requests at once make one value.
    making: Mutex<()>,
    /// Set by each use, cleared by each idle check.
    used: AtomicBool,
    on_release: Option<OnRelease>,
}

impl<T> std::fmt::Debug for Lazy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("made", &self.made.load().is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> Lazy<T> {
    /// A cell that `make` fills on first use. A `make` that fails is tried again on the next
    /// use; its error goes to the request that asked.
    pub fn new(make: impl Fn() -> Result<T, BoxError> + Send + Sync + 'static) -> Arc<Self> {
        Self::build(Box::new(make), None)
    }

    /// As [`new`](Self::new), calling `on_release` each time the made value is dropped for
    /// idleness (to unregister what `make` registered).
    pub fn with_release(
        make: impl Fn() -> Result<T, BoxError> + Send + Sync + 'static,
        on_release: impl Fn() + Send + Sync + 'static,
    ) -> Arc<Self> {
        Self::build(Box::new(make), Some(Box::new(on_release)))
    }

    fn build(make: Make<T>, on_release: Option<OnRelease>) -> Arc<Self> {
        Arc::new(Self {
            make,
            made: ArcSwapOption::empty(),
            making: Mutex::new(()),
            used: AtomicBool::new(false),
            on_release,
        })
    }

    /// The made value, made now if it is not.
    pub fn get(&self) -> Result<Arc<T>, BoxError> {
        self.mark_used();
        if let Some(made) = self.made.load_full() {
            return Ok(made);
        }
        self.make_now()
    }

    fn mark_used(&self) {
        // A load first: the common case (already marked) writes nothing to a shared line.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    #[cold]
    fn make_now(&self) -> Result<Arc<T>, BoxError> {
        let _making = self.making.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(made) = self.made.load_full() {
            return Ok(made);
        }
        let made = Arc::new((self.make)()?);
        self.made.store(Some(made.clone()));
        Ok(made)
    }

    /// Whether the value is made now.
    pub fn is_made(&self) -> bool {
        self.made.load().is_some()
    }

    /// An [`HttpService`] that calls the part of the made value that `select` picks, making
    /// it on the first request. A `make` that fails fails that request with its error.
    pub fn view(self: &Arc<Self>, select: fn(&T) -> &HttpService) -> HttpService {
        HttpService(Arc::new(View {
            lazy: self.clone(),
            select,
        }))
    }
}

/// What [`sweep`] checks.
pub trait Release: Send + Sync {
    /// Drops the made value when it was not used since the last call; true when it did.
    fn release_if_idle(&self) -> bool;
}

impl<T: Send + Sync + 'static> Release for Lazy<T> {
    fn release_if_idle(&self) -> bool {
        if self.used.swap(false, Ordering::Relaxed) {
            return false;
        }
        let _making = self.making.lock().unwrap_or_else(|e| e.into_inner());
        // Requests in flight hold their own clones of what they use: they finish on them.
        if self.made.swap(None).is_none() {
            return false;
        }
        if let Some(on_release) = &self.on_release {
            on_release();
        }
        true
    }
}

/// Checks each of `cells` every `idle`: one unused for a whole period is released, so a
/// value goes between one and two periods after its last use. The task ends when every cell
/// is gone. Call it inside a tokio runtime.
pub fn sweep<R: Release + 'static>(cells: Vec<Arc<R>>, idle: Duration) {
    sweep_then(cells, idle, |_| {});
}

/// As [`sweep`], calling `released` with the count after each check that released any (to
/// hand what they held back to the system, say).
pub fn sweep_then<R: Release + 'static>(
    cells: Vec<Arc<R>>,
    idle: Duration,
    released: impl Fn(usize) + Send + 'static,
) {
    let cells: Vec<Weak<R>> = cells.iter().map(Arc::downgrade).collect();
    if cells.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(idle);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let mut alive = 0;
            let mut count = 0;
            for cell in &cells {
                if let Some(cell) = cell.upgrade() {
                    alive += 1;
                    count += usize::from(cell.release_if_idle());
                }
            }
            if count > 0 {
                tracing::debug!(released = count, ?idle, "idle services released");
                released(count);
            }
            if alive == 0 {
                return;
            }
        }
    });
}

struct View<T> {
    lazy: Arc<Lazy<T>>,
    select: fn(&T) -> &HttpService,
}

impl<T: Send + Sync + 'static> ErasedStack for View<T> {
    fn call(&self, req: http::Request<crate::Body>) -> HttpFuture {
        self.lazy.mark_used();
        if let Some(made) = &*self.lazy.made.load() {
            return (self.select)(made).0.call(req);
        }
        match self.lazy.make_now() {
            Ok(made) => (self.select)(&made).0.call(req),
            Err(e) => Box::pin(std::future::ready(Err(StackError(e)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tower::ServiceExt as _;

    use super::*;
    use crate::{Body, erase};

    fn ok_service() -> HttpService {
        erase(tower::service_fn(|_req: http::Request<Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::Empty))
        }))
    }

    struct Counted {
        made: Arc<AtomicUsize>,
        released: Arc<AtomicUsize>,
        lazy: Arc<Lazy<HttpService>>,
    }

    fn counted() -> Counted {
        let made = Arc::new(AtomicUsize::new(0));
        let released = Arc::new(AtomicUsize::new(0));
        let (m, r) = (made.clone(), released.clone());
        let lazy = Lazy::with_release(
            move || {
                m.fetch_add(1, Ordering::SeqCst);
                Ok(ok_service())
            },
            move || {
                r.fetch_add(1, Ordering::SeqCst);
            },
        );
        Counted {
            made,
            released,
            lazy,
        }
    }

    async fn call(service: &HttpService) -> Result<http::Response<Body>, StackError> {
        service
            .clone()
            .oneshot(http::Request::new(Body::Empty))
            .await
    }

    #[tokio::test]
    async fn made_on_the_first_request_only() {
        let c = counted();
        let service = c.lazy.view(|s| s);
        assert!(!c.lazy.is_made());
        assert_eq!(c.made.load(Ordering::SeqCst), 0);
        for _ in 0..3 {
            assert!(call(&service).await.is_ok());
        }
        assert!(c.lazy.is_made());
        assert_eq!(c.made.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn released_after_a_period_without_use_and_made_again() {
        let c = counted();
        let service = c.lazy.view(|s| s);
        assert!(call(&service).await.is_ok());
        // Used since the last check: kept.
        assert!(!c.lazy.release_if_idle());
        assert!(c.lazy.is_made());
        // No use for a whole period: released, and the release hook ran.
        assert!(c.lazy.release_if_idle());
        assert!(!c.lazy.is_made());
        assert_eq!(c.released.load(Ordering::SeqCst), 1);
        // Nothing made: nothing to release.
        assert!(!c.lazy.release_if_idle());
        assert_eq!(c.released.load(Ordering::SeqCst), 1);
        assert!(call(&service).await.is_ok());
        assert_eq!(c.made.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_make_fails_that_request_and_is_tried_again() {
        let tries = Arc::new(AtomicUsize::new(0));
        let t = tries.clone();
        let lazy = Lazy::new(move || {
            if t.fetch_add(1, Ordering::SeqCst) == 0 {
                Err("discovery is not ready".into())
            } else {
                Ok(ok_service())
            }
        });
        let service = lazy.view(|s| s);
        let Err(e) = call(&service).await else {
            panic!("the first make fails");
        };
        assert!(e.to_string().contains("discovery is not ready"), "{e}");
        assert!(!lazy.is_made());
        assert!(call(&service).await.is_ok());
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_releases_within_two_periods_of_the_last_use_and_keeps_what_is_used() {
        let idle = Duration::from_secs(60);
        let busy = counted();
        let quiet = counted();
        let (busy_service, quiet_service) = (busy.lazy.view(|s| s), quiet.lazy.view(|s| s));
        assert!(call(&busy_service).await.is_ok());
        assert!(call(&quiet_service).await.is_ok());
        sweep(vec![busy.lazy.clone(), quiet.lazy.clone()], idle);
        for _ in 0..5 {
            tokio::time::sleep(idle / 2).await;
            assert!(call(&busy_service).await.is_ok());
        }
        // Checks ran at 60 s (the quiet one had been used) and 120 s (it had not): it went;
        // the busy one, used in every period, stayed.
        assert!(busy.lazy.is_made());
        assert!(!quiet.lazy.is_made());
        assert_eq!(quiet.released.load(Ordering::SeqCst), 1);
        assert_eq!(busy.released.load(Ordering::SeqCst), 0);
        assert_eq!(busy.made.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn two_first_uses_at_once_make_one_value() {
        let c = counted();
        let lazy = c.lazy.clone();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let lazy = lazy.clone();
                std::thread::spawn(move || lazy.get().is_ok())
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap_or(false));
        }
        assert_eq!(c.made.load(Ordering::SeqCst), 1);
    }
}
