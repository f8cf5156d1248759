//! The inbound side: peek the ClientHello, then terminate our mutual TLS, pass another SNI's
//! TLS through, or hand plaintext on.
//!
//! The peek is bounded in bytes ([`MAX_CLIENT_HELLO`]) and in time (the caller's detection
//! timeout): a client that sends nothing first is plaintext (a server-speaks-first protocol).
//! The bytes read are replayed, so whatever serves the connection sees it from its first byte.
//! The handshake that follows is bounded by its own timeout: a client that sends a real
//! ClientHello and then stalls is closed, not kept with its file descriptor and buffers.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mesh_core::detect::PrefixedIo;
use mesh_core::identity::Identity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_rustls::server::TlsStream;

use crate::cert;
use crate::local::LocalIdentity;

/// At most this many bytes are read looking for a whole ClientHello.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// What a connection turned out to be.
#[derive(Debug)]
pub enum Accepted<I> {
    /// Our mutual TLS, terminated: the peer proved `peer`.
    Terminated {
        /// The decrypted stream.
        io: Box<TlsStream<PrefixedIo<I>>>,
        /// Who the client is.
        peer: Identity,
    },
    /// TLS for another name (the app's own TLS): to be forwarded untouched.
    Passthrough {
        /// The stream from its first byte.
        io: PrefixedIo<I>,
        /// The SNI the client asked for, if any.
        sni: Option<String>,
    },
    /// No TLS.
    Plaintext(PrefixedIo<I>),
}

/// Why an inbound connection was refused before any byte reached the app.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Reading the first bytes failed or the peer left.
    #[error("reading the ClientHello: {0}")]
    Read(#[source] io::Error),
    /// The mutual TLS handshake failed: an unknown root, an expired certificate, no
    /// certificate...
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
    /// The client's certificate names no workload identity.
    #[error("the client certificate names no workload identity: {0}")]
    NoIdentity(String),
    /// The handshake did not finish within the handshake timeout.
    #[error("TLS handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
}

/// What the first bytes say.
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// Not a TLS handshake.
    NotTls,
    /// A ClientHello, with its SNI.
    Tls(Option<String>),
}

/// How long [`accept`] waits for each step.
#[derive(Clone, Copy, Debug)]
pub struct AcceptTimeouts {
    /// For the first bytes; silence past it means plaintext.
    pub detect: Duration,
    /// For the rest of our mutual TLS handshake, once the ClientHello is read.
    pub handshake: Duration,
}

/// Reads the first bytes and decides; terminates TLS whose SNI is `ours`.
pub async fn accept<I>(
    mut io: I,
    identity: &LocalIdentity,
    timeouts: AcceptTimeouts,
) -> Result<Accepted<I>, AcceptError>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (hello, prefix) = peek_hello(&mut io, timeouts.detect)
        .await
        .map_err(AcceptError::Read)?;
    let io = PrefixedIo::new(prefix, io);
    let sni = match hello {
        Hello::NotTls => return Ok(Accepted::Plaintext(io)),
        Hello::Tls(sni) => sni,
    };
    if sni.as_deref() != Some(identity.name().dns_name()) {
        return Ok(Accepted::Passthrough { io, sni });
    }
    let handshake = tokio_rustls::TlsAcceptor::from(identity.server_config()).accept(io);
    let tls = tokio::time::timeout(timeouts.handshake, handshake)
        .await
        .map_err(|_| AcceptError::HandshakeTimeout(timeouts.handshake))?
        .map_err(AcceptError::Handshake)?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| AcceptError::NoIdentity("no certificate".into()))?;
    let peer = cert::inspect(leaf)
        .map_err(|e| AcceptError::NoIdentity(e.to_string()))?
        .identity
        .ok_or_else(|| AcceptError::NoIdentity("no spiffe:// URI SAN".into()))?;
    Ok(Accepted::Terminated {
        io: Box::new(tls),
        peer,
    })
}

/// Reads until the ClientHello is whole (or it is clear there is none), within `timeout`.
async fn peek_hello<I>(io: &mut I, timeout: Duration) -> io::Result<(Hello, Bytes)>
where
    I: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let read = async {
        loop {
            if let Some(hello) = parse_hello(&buf) {
                return Ok(hello);
            }
            if buf.len() >= MAX_CLIENT_HELLO {
                // Too long to be a ClientHello we can read: not ours; let TLS (or the app) decide.
                return Ok(Hello::Tls(None));
            }
            buf.reserve(1024.min(MAX_CLIENT_HELLO - buf.len()));
            if io.read_buf(&mut buf).await? == 0 {
                return if buf.is_empty() {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed before sending anything",
                    ))
                } else {
                    Ok(Hello::NotTls)
                };
            }
        }
    };
    let hello = match tokio::time::timeout(timeout, read).await {
        Ok(result) => result?,
        // Silence, or a hello cut short: nothing here is our TLS.
        Err(_) if buf.first() == Some(&0x16) => Hello::Tls(None),
        Err(_) => Hello::NotTls,
    };
    Ok((hello, buf.freeze()))
}

/// The verdict on the bytes so far; `None`: read more. Public for the fuzz targets; [`accept`]
/// is what a server calls.
pub fn parse_hello(buf: &[u8]) -> Option<Hello> {
    // A TLS record: type 22 (handshake), version 3.x, a length.
    match buf {
        [] => return None,
        [0x16, ..] => {}
        _ => return Some(Hello::NotTls),
    }
    if buf.len() >= 2 && buf[1] != 3 {
        return Some(Hello::NotTls);
    }
    // The handshake message may span records: gather the payloads.
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return None;
        }
        if rest[0] != 0x16 {
            return Some(Hello::Tls(None));
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest.len() < 5 + len {
            return None;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 {
            if handshake[0] != 1 {
                return Some(Hello::Tls(None));
            }
            let body_len = usize::from(handshake[1]) << 16
                | usize::from(handshake[2]) << 8
                | usize::from(handshake[3]);
            if handshake.len() >= 4 + body_len {
                return Some(Hello::Tls(sni(&handshake[4..4 + body_len])));
            }
        }
    }
}

/// The server name of a ClientHello body, if it carries one.
fn sni(hello: &[u8]) -> Option<String> {
    let mut r = Reader(hello);
    r.skip(2 + 32)?; // legacy_version, random
    let session = r.u8()?;
    r.skip(usize::from(session))?;
    let suites = r.u16()?;
    r.skip(usize::from(suites))?;
    let compression = r.u8()?;
    r.skip(usize::from(compression))?;
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(usize::from(ext_len))?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(usize::from(len))?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let list_len = list.u16()?;
        let mut names = Reader(list.take(usize::from(list_len))?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let len = names.u16()?;
            let name = names.take(usize::from(len))?;
            if name_type == 0 {
                return std::str::from_utf8(name)
                    .ok()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = crate::provider();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_the_sni_of_a_real_client_hello() {
        let hello = client_hello("web.demo.serviceaccount.identity.cluster.local");
        assert_eq!(
            parse_hello(&hello),
            Some(Hello::Tls(Some(
                "web.demo.serviceaccount.identity.cluster.local".into()
            )))
        );
        // Every prefix asks for more bytes, and none panics.
        for n in 1..hello.len() {
            assert_eq!(parse_hello(&hello[..n]), None, "prefix {n}");
        }
    }

    #[test]
    fn plaintext_and_garbage_are_not_tls() {
        assert_eq!(parse_hello(b"GET / HTTP/1.1\r\n"), Some(Hello::NotTls));
        assert_eq!(parse_hello(b"PRI * HTTP/2.0"), Some(Hello::NotTls));
        assert_eq!(parse_hello(&[0x16, 0x07]), Some(Hello::NotTls));
        // A handshake record that is not a ClientHello.
        assert_eq!(
            parse_hello(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            Some(Hello::Tls(None))
        );
        // A ClientHello whose body lies about its lengths: no SNI, no panic.
        let mut hello = client_hello("a.example");
        for b in hello.iter_mut().skip(9).take(40) {
            *b = 0xff;
        }
        assert!(matches!(parse_hello(&hello), Some(Hello::Tls(_)) | None));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_plaintext_after_the_timeout() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (hello, prefix) = peek_hello(&mut server, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(hello, Hello::NotTls);
        assert!(prefix.is_empty());
    }
}
