//! Serving stacks on listeners: accept loops tracked by [`Drain`], protocol detection, and the
//! background chores of a running proxy (dropping idle metric series, polling a configuration
//! file for changes).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mesh_core::drain::Drain;
use mesh_metrics::tcp::{ListenerMetrics, MeteredIo};
use tokio::net::{TcpListener, TcpStream};

/// Accepts until draining starts, then drops the listener so new connections are refused.
/// Each connection (counted by `metrics`) is handled by `handle` in a task of its own that
/// `drain` waits for; at most `max_connections` at once: past that, a new connection is closed
/// as soon as it is accepted, and counted.
pub fn spawn_accept<F, Fut>(
    listener: TcpListener,
    drain: Drain,
    name: &'static str,
    (metrics, max_connections): (ListenerMetrics, u32),
    mut handle: F,
) where
    F: FnMut(MeteredIo<TcpStream>, SocketAddr, Drain) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections as usize));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = drain.signaled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        metrics.refused();
                        tracing::debug!(listener = name, %peer, max_connections, "at the connection cap: closed at once");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    mesh_core::tcp::keep_alive(&stream);
                    let served = handle(metrics.accepted(stream), peer, drain.clone());
                    // The slot is given back when the connection's future is dropped.
                    drain.spawn(mesh_core::panic::isolate_with(name, served, slot));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::debug!(listener = name, "listener closed");
    });
}

/// Detects what a client speaks; `None` (logged) when it closed before saying anything.
///
/// Boxed, as the HTTP servers are: the detection's state (its timer, its read) is not carried
/// by the task of every connection for the connection's whole life.
pub fn detect_protocol<'a, I>(
    stream: &'a mut I,
    timeout: Duration,
    peer: SocketAddr,
    side: &'static str,
) -> std::pin::Pin<Box<Detecting<'a>>>
where
    I: tokio::io::AsyncRead + Unpin + Send,
{
    Box::pin(async move {
        match mesh_core::detect::detect(stream, timeout).await {
            Ok(detected) => Some(detected),
            Err(e) => {
                tracing::debug!(%peer, error = %e, side, "connection closed during detection");
                None
            }
        }
    })
}

/// A detection in progress: [`detect_protocol`]'s future.
pub type Detecting<'a> =
    dyn Future<Output = Option<(mesh_core::detect::Protocol, bytes::Bytes)>> + Send + 'a;

/// Drops request series unused for `ttl`, checking every half of it (at most every minute).
pub fn spawn_idle_series_sweep(
    metrics: mesh_metrics::http::HttpMetrics,
    ttl: Duration,
    drain: Drain,
) {
    let every = (ttl / 2).min(Duration::from_secs(60));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.signaled() => return,
                _ = ticks.tick() => {
                    let dropped = metrics.drop_idle(ttl);
                    if dropped > 0 {
                        tracing::debug!(dropped, "idle request series dropped");
                    }
                }
            }
        }
    });
}

/// How often a watched configuration file is compared with what was loaded.
pub const CONFIG_POLL: Duration = Duration::from_secs(1);

/// Calls `changed` with the file's path each time its content changes (checked every
/// [`CONFIG_POLL`]), until draining starts. A file that cannot be read is not a change.
pub fn spawn_file_watch<F>(path: PathBuf, drain: Drain, mut changed: F)
where
    F: FnMut(&std::path::Path) + Send + 'static,
{
    tokio::spawn(async move {
        let mut last = fingerprint(&path);
        let mut ticks = tokio::time::interval(CONFIG_POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = drain.signaled() => return,
                _ = ticks.tick() => {}
            }
            let now = fingerprint(&path);
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            changed(&path);
        }
    });
}

/// The file's length and a hash of its bytes: what tells a change, without keeping the file
/// or reading it whole each time (a whole cluster's services are 100 KB and more).
fn fingerprint(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::hash::Hasher as _;
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).ok()?;
    let (mut hasher, mut len, mut chunk) = (std::hash::DefaultHasher::new(), 0, [0u8; 8192]);
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Some((len, hasher.finish())),
            Ok(n) => {
                hasher.write(&chunk[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Binds `addr`; the error names what the listener is for.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, crate::StackError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::StackError::Bind {
            addr,
            what: what.to_owned(),
            source,
        })
}

/// The listener's address (`0.0.0.0:0` in the unlikely case the OS cannot say).
pub fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// A tokio runtime of `threads` workers (0: one per core the process may run on), and the
/// count chosen. One thread gives a current-thread runtime: no work-stealing overhead, what a
/// sidecar pinned to one core wants.
pub fn runtime(threads: usize) -> std::io::Result<(tokio::runtime::Runtime, usize)> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok((runtime, threads))
}

/// Resolves on SIGTERM (what Kubernetes sends) or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the process");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Sets `ready` at once without an identity; with one, while it holds a valid certificate:
/// from the first one (peers could not handshake before) until it expires with no renewal,
/// and again when one arrives. Stops at drain (which clears `ready` itself).
pub fn spawn_readiness(
    identity: Option<mesh_tls::local::LocalIdentity>,
    ready: Arc<AtomicBool>,
    drain: Drain,
) {
    let Some(identity) = identity else {
        ready.store(true, Ordering::Release);
        tracing::info!("ready");
        return;
    };
    let mut readiness = identity.readiness();
    tokio::spawn(async move {
        loop {
            let holds = *readiness.borrow_and_update();
            if !drain.is_draining() {
                ready.store(holds, Ordering::Release);
            }
            if holds {
                tracing::info!(identity = %identity.name(), "ready: certificate in hand");
            }
            tokio::select! {
                changed = readiness.changed() => if changed.is_err() { return },
                _ = drain.signaled() => return,
            }
        }
    });
}

/// Waits for `shutdown` (or a request on `requested`, the admin's `/shutdown`), then drains:
/// `ready` turns false, listeners close, and connections get up to `grace` to finish.
pub async fn shutdown_and_drain(
    shutdown: impl Future<Output = ()>,
    requested: Option<Arc<tokio::sync::Notify>>,
    ready: &AtomicBool,
    drain: Drain,
    grace: Duration,
) {
    match requested {
        Some(requested) => tokio::select! {
            _ = shutdown => {}
            _ = requested.notified() => {}
        },
        None => shutdown.await,
    }
    ready.store(false, Ordering::Release);
    tracing::info!(
        ?grace,
        "shutting down: listeners closed, draining connections"
    );
    if drain.drain(grace).await {
        tracing::info!("drained");
    } else {
        tracing::warn!(?grace, "grace period over: closing the connections left");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails loudly on any error")]

    #[test]
    fn a_fingerprint_changes_with_the_content_only() {
        let dir = std::env::temp_dir().join(format!("mesh-fingerprint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        // Longer than one read, so that every chunk counts.
        let text = "x".repeat(20_000);
        std::fs::write(&path, &text).unwrap();
        let first = super::fingerprint(&path).unwrap();
        assert_eq!(first.0, 20_000);
        assert_eq!(super::fingerprint(&path), Some(first));
        std::fs::write(&path, format!("{}y", &text[1..])).unwrap();
        assert_ne!(
            super::fingerprint(&path),
            Some(first),
            "same length, last byte changed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(super::fingerprint(&path), None);
    }
}
