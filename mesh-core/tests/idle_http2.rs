//! An idle HTTP/2 client connection costs the server its state only: while no stream is in
//! flight, the connection's read and write buffers, HPACK scratch space and stream tables are
//! released (h2's `release_idle_buffers`, `vendor/h2/PATCHES.md`), and whatever comes next is
//! served as before, a frame split across a release included.
//!
//! Heap bytes are counted by dhat's allocator, exactly: the figure is the same on every run. The
//! clients write raw frames, so that the process's heap holds no HTTP/2 client state, only the
//! server's (and a socket per client).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use mesh_core::body::Body;
use mesh_core::detect::Protocol;
use mesh_core::drain::Drain;
use mesh_core::server::{HttpServer, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CONNECTIONS: u64 = 200;

/// What the server may keep per idle connection, the client's socket included. h2 alone
/// allocated 28 KiB of buffers per connection for its whole life (16 KiB write, 8 KiB read,
/// 4 KiB HPACK scratch): 36.6 KB per connection here when they are kept, 11.7 KB when they
/// are released (a debug build's futures are larger than a release build's).
const MAX_BYTES_PER_IDLE_CONNECTION: u64 = 16 * 1024;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A header block: `method` (HPACK static index: 2 GET, 3 POST), scheme http, path `/`, and
/// two literals added to the server's dynamic table (the authority and a header of a name of
/// its own), not Huffman-coded: the table's copies must keep no read buffer alive.
fn header_block(method: u8) -> Vec<u8> {
    let mut block = vec![0x80 | method, 0x86, 0x84];
    block.push(0x41); // literal with incremental indexing, name :authority
    block.push(14);
    block.extend(b"bench.local:80");
    block.push(0x40); // literal with incremental indexing, new name
    block.push(6);
    block.extend(b"x-test");
    block.push(5);
    block.extend(b"value");
    block
}

/// Reads frames until `stream`'s response ends; answers SETTINGS and PING on the way. Returns
/// the response's header block and body.
async fn response(io: &mut TcpStream, stream: u32) -> (Vec<u8>, Vec<u8>) {
    let (mut head, mut body) = (Vec::new(), Vec::new());
    loop {
        let mut header = [0u8; 9];
        io.read_exact(&mut header).await.expect("a frame header");
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await.expect("a frame payload");
        match kind {
            SETTINGS if flags & ACK == 0 => {
                io.write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .expect("write");
            }
            PING if flags & ACK == 0 => {
                io.write_all(&frame(PING, ACK, 0, &payload))
                    .await
                    .expect("write");
            }
            HEADERS if id == stream => head.extend(payload),
            DATA if id == stream => body.extend(payload),
            _ => {}
        }
        if id == stream && flags & END_STREAM != 0 && (kind == HEADERS || kind == DATA) {
            return (head, body);
        }
    }
}

async fn serve(listener: TcpListener, drain: Drain) {
    let server = std::sync::Arc::new(HttpServer::new(&ServerConfig::default()));
    loop {
        let Ok((io, _)) = listener.accept().await else {
            return;
        };
        let (server, drain) = (server.clone(), drain.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Body>| async move {
                let method = req.method().as_str().to_owned();
                let body = req.into_body().collect().await.map(|c| c.to_bytes());
                let body = match body {
                    Ok(bytes) if !bytes.is_empty() => bytes,
                    _ => Bytes::from(method),
                };
                Ok::<_, Infallible>(Response::new(Body::full(body)))
            });
            let _ = server.serve(io, Protocol::Http2, service, &drain).await;
        });
    }
}

fn heap_bytes() -> u64 {
    dhat::HeapStats::get().curr_bytes as u64
}

/// Lets the server's tasks run until the heap stops shrinking (the same figure for 25 checks,
/// half a second), for up to 10 s; returns what it holds then.
async fn settled_heap() -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (mut last, mut same) = (heap_bytes(), 0);
    while same < 25 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = heap_bytes();
        same = if now >= last { same + 1 } else { 0 };
        last = last.min(now);
    }
    last
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_keeps_no_buffers_and_serves_on() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local address");
    let drain = Drain::new();
    tokio::spawn(serve(listener, drain.clone()));
    tokio::task::yield_now().await;
    let before = heap_bytes();

    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut io = TcpStream::connect(addr).await.expect("connect");
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        hello.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &header_block(2),
        ));
        io.write_all(&hello).await.expect("write");
        let (head, body) = response(&mut io, 1).await;
        assert_eq!(head.first(), Some(&0x88), ":status 200");
        assert_eq!(body, b"GET");
        clients.push(io);
    }

    let idle = settled_heap().await;
    let per_connection = (idle - before) / CONNECTIONS;
    println!("heap per idle connection: {per_connection} bytes");
    assert!(
        per_connection <= MAX_BYTES_PER_IDLE_CONNECTION,
        "{per_connection} bytes per idle connection"
    );

    // The next request on each connection, with a body this time: served as before.
    for io in &mut clients {
        let mut request = frame(HEADERS, END_HEADERS, 3, &header_block(3));
        request.extend(frame(DATA, END_STREAM, 3, b"hello"));
        io.write_all(&request).await.expect("write");
        let (head, body) = response(io, 3).await;
        assert_eq!(head.first(), Some(&0x88), ":status 200");
        assert_eq!(body, b"hello");
    }

    // A frame that arrives in two pieces, the server going idle in between: the first piece
    // stays in the read buffer, which is not released while it holds bytes.
    let io = &mut clients[0];
    let request = frame(HEADERS, END_HEADERS | END_STREAM, 5, &header_block(2));
    let (first, rest) = request.split_at(7);
    io.write_all(first).await.expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    io.write_all(rest).await.expect("write");
    let (head, body) = response(io, 5).await;
    assert_eq!(head.first(), Some(&0x88), ":status 200");
    assert_eq!(body, b"GET");

    drain.signal();
}
