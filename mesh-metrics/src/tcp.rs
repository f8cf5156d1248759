//! TCP metrics per listener: connections opened and open now, closes by error kind, bytes read
//! and written. A [`MeteredIo`] wraps an accepted connection: each read or write adds to a
//! counter resolved once per listener, and dropping it counts the close (with the first I/O
//! error it saw, if any).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The labels of a listener's TCP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Which listener: `outbound`, `inbound`, or an opaque service's authority.
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    #[prometheus(flatten)]
    listener: TcpLabels,
    /// Empty for a clean close, else the I/O error kind (`ConnectionReset`, ...).
    error: String,
}

/// The TCP metric families, registered once per proxy.
#[derive(Clone, Debug)]
pub struct TcpMetrics {
    refused: Family<TcpLabels, Counter>,
    opened: Family<TcpLabels, Counter>,
    open: Family<TcpLabels, Gauge>,
    closed: Family<CloseLabels, Counter>,
    read: Family<TcpLabels, Counter>,
    written: Family<TcpLabels, Counter>,
}

impl TcpMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            refused: Family::default(),
            opened: Family::default(),
            open: Family::default(),
            closed: Family::default(),
            read: Family::default(),
            written: Family::default(),
        };
        registry.register(
            "tcp_open",
            "TCP connections accepted",
            metrics.opened.clone(),
        );
        registry.register(
            "tcp_refused",
            "TCP connections closed as soon as accepted: the listener was at its cap (server.max_connections)",
            metrics.refused.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "TCP connections open now",
            metrics.open.clone(),
        );
        registry.register(
            "tcp_close",
            "TCP connections closed, by error kind (empty for a clean close)",
            metrics.closed.clone(),
        );
        registry.register(
            "tcp_read_bytes",
            "Bytes read from accepted connections",
            metrics.read.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to accepted connections",
            metrics.written.clone(),
        );
        metrics
    }

    /// The metrics of one listener.
    pub fn listener(&self, direction: &str, listener: &str) -> ListenerMetrics {
        let labels = TcpLabels {
            direction: direction.to_owned(),
            listener: listener.to_owned(),
        };
        ListenerMetrics {
            inner: Arc::new(Handles {
                refused: self.refused.get_or_create(&labels).clone(),
                opened: self.opened.get_or_create(&labels).clone(),
                open: self.open.get_or_create(&labels).clone(),
                read: self.read.get_or_create(&labels).clone(),
                written: self.written.get_or_create(&labels).clone(),
                clean_close: self
                    .closed
                    .get_or_create(&CloseLabels {
                        listener: labels.clone(),
                        error: String::new(),
                    })
                    .clone(),
                closed: self.closed.clone(),
                labels,
            }),
        }
    }
}

/// One listener's metric handles.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    inner: Arc<Handles>,
}

#[derive(Debug)]
struct Handles {
    labels: TcpLabels,
    refused: Counter,
    opened: Counter,
    open: Gauge,
    read: Counter,
    written: Counter,
    clean_close: Counter,
    closed: Family<CloseLabels, Counter>,
}

impl ListenerMetrics {
    /// Counts a connection closed at once: the listener was at its cap.
    pub fn refused(&self) {
        self.inner.refused.inc();
    }

    /// Counts an accepted connection, and wraps it to count its bytes and its close.
    pub fn accepted<I>(&self, io: I) -> MeteredIo<I> {
        self.inner.opened.inc();
        self.inner.open.inc();
        MeteredIo {
            io,
            handles: self.inner.clone(),
            error: None,
        }
    }
}

/// An accepted connection, counted. See the [module](self).
#[derive(Debug)]
pub struct MeteredIo<I> {
    io: I,
    handles: Arc<Handles>,
    error: Option<io::ErrorKind>,
}

impl<I> MeteredIo<I> {
    /// The connection.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    fn note<T>(&mut self, result: &io::Result<T>) {
        if let Err(e) = result {
            self.error.get_or_insert(e.kind());
        }
    }
}

impl<I> Drop for MeteredIo<I> {
    fn drop(&mut self) {
        let handles = &self.handles;
        handles.open.dec();
        match self.error {
            None => {
                handles.clean_close.inc();
            }
            Some(kind) => {
                let labels = CloseLabels {
                    listener: handles.labels.clone(),
                    error: format!("{kind:?}"),
                };
                handles.closed.get_or_create(&labels).inc();
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for MeteredIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(result) = &polled {
            self.note(result);
            self.handles
                .read
                .inc_by((buf.filled().len() - before) as u64);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for MeteredIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if let Poll::Ready(result) = &polled {
            self.note(result);
            if let Ok(n) = result {
                self.handles.written.inc_by(*n as u64);
            }
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(result) = &polled {
            self.note(result);
            if let Ok(n) = result {
                self.handles.written.inc_by(*n as u64);
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(result) = &polled {
            self.note(result);
        }
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_bytes_opens_and_closes() {
        let mut registry = Registry::default();
        let metrics = TcpMetrics::register(&mut registry);
        let listener = metrics.listener("outbound", "outbound");
        let (client, server) = tokio::io::duplex(64);
        let mut metered = listener.accepted(server);
        let mut client = client;
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        metered.read_exact(&mut buf).await.unwrap();
        metered.write_all(b"hi").await.unwrap();
        drop(metered);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "tcp_open_total{direction=\"outbound\",listener=\"outbound\"} 1",
            "tcp_open_connections{direction=\"outbound\",listener=\"outbound\"} 0",
            "tcp_close_total{direction=\"outbound\",listener=\"outbound\",error=\"\"} 1",
            "tcp_read_bytes_total{direction=\"outbound\",listener=\"outbound\"} 5",
            "tcp_write_bytes_total{direction=\"outbound\",listener=\"outbound\"} 2",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
    }
}
