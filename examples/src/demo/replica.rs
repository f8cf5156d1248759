//! Running a replica on an ephemeral port.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};

use super::{Greeter, Names};

/// How long [`Replica::shutdown`] waits for open connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A listener bound on `127.0.0.1:0`, not serving yet.
///
/// Binding first lets a caller learn the replica's address before the replica
/// exists: the demo gives the addresses to the proxy, then builds greeters that
/// call through that proxy.
#[derive(Debug)]
pub struct ReplicaListener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl ReplicaListener {
    /// Binds `127.0.0.1:0`.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub async fn bind() -> std::io::Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `greeter` on this listener, in a task.
    pub fn serve_greeter(self, greeter: Greeter) -> Replica {
        let name = greeter.name().to_owned();
        self.serve(name, Server::builder().add_service(greeter.into_service()))
    }

    /// Serves `names` on this listener, in a task.
    pub fn serve_names(self, names: Names) -> Replica {
        let name = names.name().to_owned();
        self.serve(name, Server::builder().add_service(names.into_service()))
    }

    fn serve(self, name: String, router: Router) -> Replica {
        let (shutdown, signal) = oneshot::channel::<()>();
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let task = tokio::spawn(async move {
            // A dropped sender shuts the server down too.
            let signal = async {
                let _ = signal.await;
            };
            router.serve_with_incoming_shutdown(incoming, signal).await
        });
        Replica {
            name,
            addr: self.addr,
            shutdown: Some(shutdown),
            task,
        }
    }
}

/// A replica serving in a task; the handle to stop it.
///
/// Dropping the handle also stops the server, without waiting for it.
#[derive(Debug)]
pub struct Replica {
    name: String,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Replica {
    /// Serves `greeter` on `127.0.0.1:0`.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub async fn spawn_greeter(greeter: Greeter) -> std::io::Result<Self> {
        Ok(ReplicaListener::bind().await?.serve_greeter(greeter))
    }

    /// Serves `names` on `127.0.0.1:0`.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub async fn spawn_names(names: Names) -> std::io::Result<Self> {
        Ok(ReplicaListener::bind().await?.serve_names(names))
    }

    /// The replica's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the replica serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open connections finish (at most 5 s, then aborts
    /// them), and returns the server's error if it failed.
    ///
    /// # Errors
    ///
    /// When the server failed or did not stop in time.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(joined) => Ok(joined??),
            Err(_elapsed) => {
                self.task.abort();
                anyhow::bail!(
                    "replica {} did not stop within {SHUTDOWN_GRACE:?}",
                    self.name
                )
            }
        }
    }
}
