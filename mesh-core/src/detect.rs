//! Protocol detection: HTTP/1, HTTP/2 with prior knowledge, or opaque bytes.
//!
//! Detection reads what the client sends first, bounded in bytes ([`MAX_DETECT_BYTES`]) and
//! in time (the caller's timeout; a client that says nothing first, like a server-speaks-first
//! protocol, is opaque). The bytes read are handed back in a [`PrefixedIo`] so that whatever
//! serves the connection sees the stream from its first byte.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// At most this many bytes are read to decide.
pub const MAX_DETECT_BYTES: usize = 8 * 1024;

/// The longest method token an HTTP/1 request line may start with here.
const MAX_METHOD_LEN: usize = 16;

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c) or after ALPN.
    Http2,
    /// Anything else, forwarded as bytes.
    Opaque,
}

/// The verdict on the first bytes of a connection; `None`: too few bytes to tell. Public for
/// the fuzz targets; [`detect`] is what a server calls.
pub fn verdict(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // An HTTP/1 request line: a method token, a space, a target, " HTTP/1.x\r\n". Empty
    // lines before it are allowed (RFC 9112, section 2.2).
    let buf = trim_leading_newlines(buf);
    if buf.is_empty() {
        return None;
    }
    let method_len = buf.iter().take_while(|b| is_token(**b)).count();
    // Longer than any method: decided now, whatever follows, so that the verdict never
    // depends on how the bytes were split into reads (found by the fuzz target).
    if method_len > MAX_METHOD_LEN {
        return Some(Protocol::Opaque);
    }
    if method_len == buf.len() {
        return None;
    }
    if method_len == 0 || buf[method_len] != b' ' {
        return Some(Protocol::Opaque);
    }
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
            let is_http1 = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
            Some(if is_http1 {
                Protocol::Http1
            } else {
                Protocol::Opaque
            })
        }
        // A very long request target: a method and a space is enough of a sign.
        None if buf.len() >= MAX_DETECT_BYTES => Some(Protocol::Http1),
        None => None,
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
}

fn trim_leading_newlines(buf: &[u8]) -> &[u8] {
    let start = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    // Bounded: a peer that sends only newlines is not HTTP for long.
    if start > 64 { &buf[..0] } else { &buf[start..] }
}

/// Reads until the protocol is known, the limit is reached, or `timeout` passes.
///
/// Returns the protocol and the bytes read. A peer that closes before sending anything
/// is an [`io::ErrorKind::UnexpectedEof`] error; a silent peer is [`Protocol::Opaque`].
pub async fn detect<I>(io: &mut I, timeout: Duration) -> io::Result<(Protocol, Bytes)>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            if buf.len() == buf.capacity() {
                buf.reserve(buf.capacity().min(MAX_DETECT_BYTES - buf.len()));
            }
            let n = io.read_buf(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            if let Some(p) = verdict(&buf) {
                return Ok(Some(p));
            }
            if buf.len() >= MAX_DETECT_BYTES {
                return Ok(Some(Protocol::Opaque));
            }
        }
    };
    let protocol = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) if buf.is_empty() => {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed before sending anything",
            ));
        }
        // The peer half-closed or went quiet mid-way: whatever it sent is not HTTP we can serve.
        Ok(Ok(None)) | Err(_) => Protocol::Opaque,
        Ok(Err(e)) => return Err(e),
    };
    Ok((protocol, buf.freeze()))
}

/// An I/O stream whose first bytes were already read: they are replayed before the rest.
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: Bytes,
    io: I,
}

impl<I> PrefixedIo<I> {
    /// Replays `prefix`, then reads from `io`.
    pub fn new(prefix: Bytes, io: I) -> Self {
        Self { prefix, io }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // An empty `Bytes` still holds the detection buffer: let it go for the
                // connection's life.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(verdict(&H2_PREFACE[..10]), None);
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(verdict(b"POST /a HTTP/1.0\n"), Some(Protocol::Http1));
        assert_eq!(verdict(b"GET /partial"), None);
        assert_eq!(verdict(b"GET"), None);
        assert_eq!(verdict(b"\x16\x03\x01\x02\x00"), Some(Protocol::Opaque));
        assert_eq!(verdict(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Opaque));
        assert_eq!(verdict(b"GET / SPDY/3\r\n"), Some(Protocol::Opaque));
        assert_eq!(verdict(b"get / HTTP/1.1\r\n"), Some(Protocol::Opaque));
        assert_eq!(verdict(b"\r\nGET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(verdict(b"M-SEARCH2 * HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(verdict(b"\r\n"), None);
        // A token longer than any method is opaque at once and stays so when a space and a
        // request line follow (inputs the fuzz target found).
        let long = b"PPPPPPPPPPPPPPPPPPPPPPPP / HTTP/1.1\r\n";
        assert_eq!(verdict(long), Some(Protocol::Opaque));
        for n in 1..long.len() {
            assert!(
                matches!(verdict(&long[..n]), None | Some(Protocol::Opaque)),
                "{n}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn detects_h2_split_over_reads_and_replays_it() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&H2_PREFACE[..5]).await.ok();
        let sender = tokio::spawn(async move {
            client.write_all(&H2_PREFACE[5..]).await.ok();
            client.write_all(b"rest").await.ok();
            client
        });
        let (p, prefix) = detect(&mut server, Duration::from_secs(10))
            .await
            .unwrap_or((Protocol::Opaque, Bytes::new()));
        assert_eq!(p, Protocol::Http2);
        let _client = sender.await;
        let mut io = PrefixedIo::new(prefix, server);
        let mut all = vec![0u8; H2_PREFACE.len() + 4];
        io.read_exact(&mut all).await.ok();
        assert_eq!(&all[..H2_PREFACE.len()], H2_PREFACE);
        assert_eq!(&all[H2_PREFACE.len()..], b"rest");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_opaque_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let r = detect(&mut server, Duration::from_secs(10)).await;
        assert!(matches!(r, Ok((Protocol::Opaque, ref b)) if b.is_empty()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_peer_is_an_error() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let r = detect(&mut server, Duration::from_secs(10)).await;
        assert!(matches!(r, Err(e) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_is_opaque_at_once() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"\x00\x01garbage").await.ok();
        let r = detect(&mut server, Duration::from_secs(10)).await;
        assert!(matches!(r, Ok((Protocol::Opaque, _))));
    }
}
