//! Opaque TCP forwarding: bytes copied both ways, half-close passed through.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::{Cause, ProxyError};

/// Bytes copied in each direction by a finished forward.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// From the client to the upstream.
    pub client_to_upstream: u64,
    /// From the upstream to the client.
    pub upstream_to_client: u64,
}

/// Connects to `addr` within `connect_timeout`, with `TCP_NODELAY` set.
pub async fn connect(addr: SocketAddr, connect_timeout: Duration) -> Result<TcpStream, ProxyError> {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(ProxyError::new(
                Cause::Connect,
                ConnectError { addr, source: e },
            ));
        }
        Err(_) => {
            let e = io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {connect_timeout:?}"),
            );
            return Err(ProxyError::new(
                Cause::ConnectTimeout,
                ConnectError { addr, source: e },
            ));
        }
    };
    // Latency matters more than packet count on this path.
    let _ = stream.set_nodelay(true);
    keep_alive(&stream);
    Ok(stream)
}

/// Idle time before TCP keepalive probes start on a proxied connection.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Turns on TCP keepalive (probes after [`TCP_KEEPALIVE_IDLE`] of silence, every 10 s), so that
/// a peer that vanished without a FIN does not hold a connection, its task and its buffers
/// forever. Best effort: a socket that refuses is left as it is.
pub fn keep_alive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Where a connection redirected by the firewall (`REDIRECT`) was going: its original
/// destination (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` for IPv6). `None` when the socket
/// has none to tell (not redirected, or not Linux).
pub fn original_dst(stream: &TcpStream) -> Option<std::net::SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let original = if local.is_ipv4() {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    original.ok()?.as_socket()
}

/// Connecting to an endpoint failed.
#[derive(Debug, thiserror::Error)]
#[error("connect to {addr}: {source}")]
pub struct ConnectError {
    addr: SocketAddr,
    #[source]
    source: io::Error,
}

/// Copies `client` <-> `upstream` until both directions are done.
///
/// When one side finishes sending, the other side's write half is shut down and the other
/// direction goes on: a half-closed peer still gets its answer.
pub async fn forward<C, U>(client: &mut C, upstream: &mut U) -> io::Result<Copied>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (a, b) = tokio::io::copy_bidirectional(client, upstream).await?;
    Ok(Copied {
        client_to_upstream: a,
        upstream_to_client: b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn keepalive_is_set_on_connected_sockets() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = connect(addr, Duration::from_secs(1)).await.unwrap();
        assert!(socket2::SockRef::from(&stream).keepalive().unwrap());
        assert!(stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn half_close_still_gets_the_answer() {
        let (mut client, mut proxy_client_side) = tokio::io::duplex(1024);
        let (mut proxy_upstream_side, mut upstream) = tokio::io::duplex(1024);
        let proxy =
            tokio::spawn(
                async move { forward(&mut proxy_client_side, &mut proxy_upstream_side).await },
            );

        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping");
        upstream.write_all(b"pong").await.unwrap();
        upstream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"pong");
        let copied = proxy.await.unwrap().unwrap();
        assert_eq!(
            copied,
            Copied {
                client_to_upstream: 4,
                upstream_to_client: 4
            }
        );
    }
}
