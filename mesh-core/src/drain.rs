//! Graceful shutdown: stop accepting, let connections finish, give up after a grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// Tracks every connection task and tells them when to drain.
///
/// Clones share the same state.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    signal: CancellationToken,
    tasks: TaskTracker,
}

impl Drain {
    /// A drain that has not been signalled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a task that drain waits for.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Resolves when draining starts: servers then stop taking new requests.
    pub fn signaled(&self) -> WaitForCancellationFuture<'_> {
        self.signal.cancelled()
    }

    /// Has draining started?
    pub fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// A drain for one connection: signalled with this one, or alone by
    /// [`signal`](Self::signal) (a connection that must end after its current request).
    pub fn child(&self) -> Drain {
        Drain {
            signal: self.signal.child_token(),
            tasks: self.tasks.clone(),
        }
    }

    /// Signals this drain (and its children), waiting for nothing: the servers on it finish
    /// what is in flight, take no new request, and close.
    pub fn signal(&self) {
        self.signal.cancel();
    }

    /// Signals every task to drain and waits up to `grace` for them to finish.
    ///
    /// Returns whether all tasks finished in time.
    pub async fn drain(self, grace: Duration) -> bool {
        self.signal.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_tasks_that_finish_after_the_signal() {
        let drain = Drain::new();
        let d = drain.clone();
        drain.spawn(async move {
            d.signaled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        assert!(drain.drain(Duration::from_secs(5)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_grace_period() {
        let drain = Drain::new();
        drain.spawn(std::future::pending());
        assert!(!drain.drain(Duration::from_secs(5)).await);
    }
}
