//! Opaque TCP and the inbound side, end to end on 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use mesh_integration::{h1_client, h2_client, start_backend, start_proxy_toml};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

/// A TCP server that reads until the client half-closes, then answers `<name>:<what it read>`
/// and closes. Optionally greets first (a server-speaks-first protocol).
async fn tcp_server(name: &'static str, banner: Option<&'static [u8]>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Some(banner) = banner {
                    s.write_all(banner).await.unwrap();
                }
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                let answer = format!("{name}:{}", String::from_utf8_lossy(&got));
                s.write_all(answer.as_bytes()).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    addr
}

async fn exchange(addr: SocketAddr, send: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(send).await.unwrap();
    // Half-close: the answer must still come back.
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn opaque_services_balance_connections_and_keep_half_close() {
    let a = tcp_server("a", None).await;
    let b = tcp_server("b", None).await;
    // An endpoint that refuses connections is skipped for the next one.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [[outbound.services]]\nauthority = \"db.test:5432\"\nendpoints = [\"{a}\", \"{b}\", \"{dead}\"]\n\
         opaque = true\nlisten = \"127.0.0.1:0\"\n"
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    let (name, listen) = &proxy.opaque[0];
    assert_eq!(name, "db.test:5432");

    let mut answers = Vec::new();
    for i in 0..6 {
        answers.push(exchange(*listen, format!("ping{i}").as_bytes()).await);
    }
    assert_eq!(
        answers,
        [
            "a:ping0", "b:ping1", "a:ping2", "a:ping3", "b:ping4", "a:ping5"
        ]
    );
}

#[tokio::test]
async fn inbound_proxies_http_and_forwards_other_bytes() {
    let app = start_backend(|req: Request<hyper::body::Incoming>| async move {
        Response::new(Full::new(Bytes::from(format!(
            "app saw {}",
            req.uri().path()
        ))))
    })
    .await
    .unwrap();
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\ndetect_timeout = \"1s\"\n"
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    let inbound = proxy.inbound.unwrap();

    let mut h1 = h1_client::<Empty<Bytes>>(inbound).await.unwrap();
    let req = Request::get("/one")
        .header("host", "app")
        .body(Empty::new())
        .unwrap();
    let rsp = h1.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(
        rsp.into_body().collect().await.unwrap().to_bytes(),
        "app saw /one"
    );

    let mut h2 = h2_client::<Empty<Bytes>>(inbound).await.unwrap();
    let req = Request::get("http://app/two").body(Empty::new()).unwrap();
    let rsp = h2.send_request(req).await.unwrap();
    assert_eq!(
        rsp.into_body().collect().await.unwrap().to_bytes(),
        "app saw /two"
    );
}

#[tokio::test]
async fn inbound_forwards_opaque_and_server_first_protocols() {
    let app = tcp_server("app", Some(b"220 ready\r\n")).await;
    let toml = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\ndetect_timeout = \"1s\"\n"
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    let inbound = proxy.inbound.unwrap();

    // Bytes that are not HTTP go to the app as they are.
    assert_eq!(
        exchange(inbound, b"\x16\x03\x01binary").await,
        "220 ready\r\napp:\u{16}\u{3}\u{1}binary"
    );

    // A client that waits for the server to speak first: after the detection timeout the
    // connection is forwarded, and the app's banner arrives.
    let mut s = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let mut banner = [0u8; 11];
    tokio::time::timeout(WAIT, s.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
}
