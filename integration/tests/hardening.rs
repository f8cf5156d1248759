//! What a hostile or broken neighbour cannot do to the proxy, tried on real sockets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::collections::BTreeSet;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Empty, Full};
use mesh_integration::{h2_client, scrape_metrics, start_backend, start_proxy};

/// A backend that answers each call with any `grpc-status` number it likes (all 65,536 of
/// them) cannot grow the proxy's metrics without bound: the label takes the 17 codes gRPC
/// defines and `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_labels_stay_bounded_whatever_upstream_sends() {
    let backend = start_backend(|req: Request<hyper::body::Incoming>| async move {
        let status = req
            .headers()
            .get("x-status")
            .cloned()
            .unwrap_or_else(|| http::HeaderValue::from_static("0"));
        Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", status)
            .body(Full::new(Bytes::new()))
            .unwrap()
    })
    .await
    .unwrap();
    let proxy = start_proxy(&[("grpc.test:80", &[backend])]).await.unwrap();
    let client = h2_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    // 65,536 calls, 256 in flight on one connection.
    use futures_util::StreamExt as _;
    futures_util::stream::iter(0..65_536u32)
        .map(|status| {
            let mut client = client.clone();
            async move {
                let req = Request::post("http://grpc.test/svc/Method")
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .header("x-status", status.to_string())
                    .body(Empty::new())
                    .unwrap();
                let rsp = client.send_request(req).await.unwrap();
                assert_eq!(rsp.status(), 200);
            }
        })
        .buffer_unordered(256)
        .collect::<()>()
        .await;
    let (_, metrics) = scrape_metrics(proxy.admin, None).await.unwrap();
    let values: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("response_total{"))
        .filter_map(|l| l.split("grpc_status=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(values.len() <= 18, "{} values: {values:?}", values.len());
    assert!(
        values.contains("other") && values.contains("16"),
        "{values:?}"
    );
}

/// A panic in one request's path (the test hook of mesh-core's `test-panic-hook` feature)
/// ends that connection only: another connection's calls go on before and after, the process
/// lives, and the panic is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_ends_one_connection_and_nothing_else() {
    use mesh_integration::{h1_client, hello_backend};
    let backend = hello_backend().await.unwrap();
    let proxy = start_proxy(&[("web.test:80", &[backend])]).await.unwrap();
    let get = |panic: bool| {
        let mut req = Request::get("http://web.test/").header("host", "web.test");
        if panic {
            req = req.header("x-mesh-test-panic", "1");
        }
        req.body(Empty::<Bytes>::new()).unwrap()
    };
    let mut steady = h1_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    assert_eq!(steady.send_request(get(false)).await.unwrap().status(), 200);

    let mut doomed = h1_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    let ended = doomed.send_request(get(true)).await;
    assert!(
        ended.is_err(),
        "the panicking request's connection is closed: {ended:?}"
    );

    // The other connection, a new one, and the admin listener all still serve.
    assert_eq!(steady.send_request(get(false)).await.unwrap().status(), 200);
    let mut fresh = h1_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    assert_eq!(fresh.send_request(get(false)).await.unwrap().status(), 200);
    // Counted once the panic has unwound to the connection's task; the socket closes on the
    // way there (unwinding drops the connection), so the client can see the end first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, metrics) = scrape_metrics(proxy.admin, None).await.unwrap();
        let caught = metrics
            .lines()
            .find_map(|l| l.strip_prefix("process_panics_caught_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap();
        if caught >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the panic is never counted: {metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// An endpoint that accepts TCP and never answers the TLS ClientHello: the request that goes
/// there fails within the connect timeout, naming the TLS handshake, and does not hang; the
/// balancer then sends the next requests to the endpoint that answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_tls_fails_within_the_connect_timeout() {
    use http_body_util::BodyExt as _;
    use mesh_integration::h1_client;
    use mesh_integration::mtls::{Pki, wait_ready};
    use std::time::Duration;
    // Accepts, reads, never writes: the sockets are kept until the test ends.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            keep.lock().await.push(socket);
        }
    });
    let pki = Pki::new().unwrap();
    let client_id = pki.identity("demo", "client");
    let server_id = pki.identity("demo", "web");
    // The endpoint that answers: a proxy with the server identity in front of a hello app.
    let app = mesh_integration::hello_backend().await.unwrap();
    let server = mesh_integration::start_proxy_toml(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\n",
        pki.proxy_identity_toml(&server_id, "1h"),
    ))
    .await
    .unwrap();
    assert!(wait_ready(server.admin).await);
    let good = server.inbound.unwrap();
    let toml = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[client]\nconnect_timeout = \"500ms\"\n\
         [outbound]\nlisten = \"127.0.0.1:0\"\n\
         [[outbound.services]]\nauthority = \"web.test:80\"\n\
         endpoints = [{{ addr = \"{silent_addr}\", identity = \"{server_id}\" }}, \
                      {{ addr = \"{good}\", identity = \"{server_id}\" }}]\n",
        pki.proxy_identity_toml(&client_id, "1h"),
    );
    let proxy = mesh_integration::start_proxy_toml(&toml).await.unwrap();
    assert!(wait_ready(proxy.admin).await);
    let mut client = h1_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    let get = || {
        Request::get("http://web.test/")
            .header("host", "web.test")
            .body(Empty::new())
            .unwrap()
    };
    // Until the balancer tries the silent endpoint once (it picks at random between equals).
    let mut failure = None;
    for _ in 0..200 {
        client.ready().await.unwrap();
        let started = std::time::Instant::now();
        let rsp = tokio::time::timeout(Duration::from_secs(10), client.send_request(get()))
            .await
            .expect("the request hung")
            .unwrap();
        if rsp.status().is_server_error() {
            let reason = rsp.headers()["mesh-proxy-error"]
                .to_str()
                .unwrap()
                .to_owned();
            failure = Some((reason, started.elapsed()));
            break;
        }
        assert_eq!(rsp.status(), 200);
        rsp.into_body().collect().await.unwrap();
    }
    let (reason, took) = failure.expect("the silent endpoint was never tried");
    assert!(reason.contains("tls"), "{reason}");
    assert!(!held.lock().await.is_empty(), "the endpoint was dialled");
    // Then the balancer knows: the next requests all go to the endpoint that answers (on a
    // new connection: the failed request's answer closed the last one).
    let mut client = h1_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    for i in 0..50 {
        client.ready().await.unwrap();
        let rsp = client.send_request(get()).await.unwrap();
        assert_eq!(rsp.status(), 200, "request {i} after the failed handshake");
        rsp.into_body().collect().await.unwrap();
    }
    eprintln!("failed after {took:?}: {reason}");
}

/// A listener holds at most `server.max_connections` connections: one more is closed as soon
/// as it is accepted, and counted; when one goes, a new one is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_past_its_connection_cap_closes_new_connections() {
    use mesh_integration::{h1_client, hello_backend, proxy_toml, start_proxy_toml};
    use tokio::io::AsyncReadExt as _;
    let backend = hello_backend().await.unwrap();
    let toml = format!(
        "{}[server]\nmax_connections = 2\n",
        proxy_toml(&[("web.test:80", &[backend])])
    );
    let proxy = start_proxy_toml(&toml).await.unwrap();
    let get = || {
        Request::get("http://web.test/")
            .header("host", "web.test")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    // Two connections, served and held open.
    let mut first = h1_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    let mut second = h1_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    assert_eq!(first.send_request(get()).await.unwrap().status(), 200);
    assert_eq!(second.send_request(get()).await.unwrap().status(), 200);
    // A third: accepted, then closed at once (end of stream, nothing sent).
    let mut third = tokio::net::TcpStream::connect(proxy.outbound)
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), third.read(&mut byte))
        .await
        .expect("the connection past the cap was kept");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let (_, metrics) = scrape_metrics(proxy.admin, None).await.unwrap();
    assert!(
        metrics.contains("tcp_refused_total{direction=\"outbound\",listener=\"outbound\"} 1"),
        "{metrics}"
    );
    // One goes: room for a new one.
    drop(first);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut fresh = h1_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
        if let Ok(rsp) = fresh.send_request(get()).await {
            assert_eq!(rsp.status(), 200);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room after a connection closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(second.send_request(get()).await.unwrap().status(), 200);
}

/// 5,000 connections that each send a real ClientHello for the proxy's own name and then
/// stall are closed once the handshake timeout passes; all the while a real mTLS call from
/// another proxy, an outbound call and `/live` are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_are_closed_and_do_not_starve_real_calls() {
    use mesh_integration::mtls::{Pki, wait_ready};
    use mesh_integration::{h2_client, hello_backend, start_proxy_toml};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const STALLED: usize = 5_000;

    let pki = Pki::new().unwrap();
    let web = pki.identity("demo", "web");
    let client = pki.identity("demo", "client");
    let app = hello_backend().await.unwrap();
    let server = start_proxy_toml(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [[outbound.services]]\nauthority = \"hello.test:80\"\nendpoints = [\"{app}\"]\n\
         [inbound]\nlisten = \"127.0.0.1:0\"\napp = \"{app}\"\ndetect_timeout = \"1s\"\n\
         handshake_timeout = \"4s\"\n",
        pki.proxy_identity_toml(&web, "1h"),
    ))
    .await
    .unwrap();
    assert!(wait_ready(server.admin).await);
    let inbound = server.inbound.unwrap();
    let caller = start_proxy_toml(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[outbound]\nlisten = \"127.0.0.1:0\"\n\
         [[outbound.services]]\nauthority = \"web.test:80\"\n\
         endpoints = [{{ addr = \"{inbound}\", identity = \"{web}\" }}]\n",
        pki.proxy_identity_toml(&client, "1h"),
    ))
    .await
    .unwrap();
    assert!(wait_ready(caller.admin).await);

    // A ClientHello exactly as a real TLS client sends it for the server's name.
    let hello = {
        let config = rustls::ClientConfig::builder_with_provider(mesh_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(web.dns_name().to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        Bytes::from(out)
    };
    // While they are opened and stall: an mTLS call through both proxies, an outbound call
    // and /live, after every thousand. Connections are opened fifty at a time: a burst of
    // hundreds of SYNs at once overflows the kernel's accept queue on loopback whatever the
    // proxy does.
    let get = |host: &str| {
        Request::get(format!("http://{host}/"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let mut through = h2_client::<Empty<Bytes>>(caller.outbound).await.unwrap();
    let mut outbound = h2_client::<Empty<Bytes>>(server.outbound).await.unwrap();
    let mut admin = mesh_integration::h1_client::<Empty<Bytes>>(server.admin)
        .await
        .unwrap();
    let opened = Instant::now();
    let mut stalled = Vec::with_capacity(STALLED);
    for chunk in 0..STALLED / 50 {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let hello = hello.clone();
            batch.spawn(async move {
                let mut s = tokio::net::TcpStream::connect(inbound).await?;
                s.write_all(&hello).await?;
                Ok::<_, std::io::Error>(s)
            });
        }
        while let Some(s) = batch.join_next().await {
            stalled.push(s.unwrap().unwrap_or_else(|e| panic!("batch {chunk}: {e}")));
        }
        if stalled.len() % 1000 == 0 {
            let n = stalled.len();
            let rsp = through.send_request(get("web.test")).await.unwrap();
            assert_eq!(rsp.status(), 200, "mTLS call with {n} stalled");
            let rsp = outbound.send_request(get("hello.test")).await.unwrap();
            assert_eq!(rsp.status(), 200, "outbound call with {n} stalled");
            let live = Request::get("/live")
                .header("host", "admin")
                .body(Empty::new())
                .unwrap();
            let rsp = admin.send_request(live).await.unwrap();
            assert_eq!(rsp.status(), 200, "/live with {n} stalled");
        }
    }
    let opened_in = opened.elapsed();

    // Then every stalled connection is closed by the proxy (end of stream after whatever
    // part of the handshake it wrote).
    let mut closed = tokio::task::JoinSet::new();
    for mut s in stalled {
        closed.spawn(async move {
            let mut sink = [0u8; 4096];
            loop {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
    let all_closed = tokio::time::timeout(Duration::from_secs(30), async {
        while closed.join_next().await.is_some() {}
    })
    .await;
    assert!(all_closed.is_ok(), "stalled handshakes were kept open");
    // The proxy counts a connection just after closing it: the last ones may be counted a
    // moment after the client saw its end.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = scrape_metrics(server.admin, None).await.unwrap();
        let timed_out = metrics
            .lines()
            .find(|l| {
                l.starts_with("inbound_tls_handshake_failures_total")
                    && l.contains("reason=\"handshake-timeout\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok());
        if timed_out == Some(STALLED as u64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{timed_out:?} counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the proxy still serves new calls.
    assert_eq!(
        through
            .send_request(get("web.test"))
            .await
            .unwrap()
            .status(),
        200
    );
    eprintln!("{STALLED} stalled handshakes opened in {opened_in:?}, all closed by the proxy");
}

/// One raw HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// Sends `frames` after the client preface on a new connection to `addr`, then reads until
/// the proxy closes it (or 20 s pass): the frames it sent (type, stream), and whether it
/// closed.
async fn flood(addr: std::net::SocketAddr, frames: Vec<u8>) -> (Vec<(u8, u32)>, bool) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    out.extend(frames);
    let (mut read, mut write) = tcp.split();
    let (mut received, mut closed) = (Vec::new(), false);
    let reading = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    // The proxy may close before it has read all: a failed write is part of the answer.
    let writing = async {
        let _ = write.write_all(&out).await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        done = tokio::time::timeout(std::time::Duration::from_secs(20), reading) => {
            closed = done.unwrap_or(false);
        }
        () = writing => {}
    }
    let mut sent = Vec::new();
    let mut at = 0;
    while at + 9 <= received.len() {
        let len = usize::from(received[at]) << 16
            | usize::from(received[at + 1]) << 8
            | usize::from(received[at + 2]);
        let stream = u32::from_be_bytes([
            received[at + 5],
            received[at + 6],
            received[at + 7],
            received[at + 8],
        ]);
        sent.push((received[at + 3], stream & 0x7fff_ffff));
        at += 9 + len;
    }
    (sent, closed)
}

/// Whether the proxy sent GOAWAY (frame type 7).
fn goaway(frames: &[(u8, u32)]) -> bool {
    frames.iter().any(|(kind, _)| *kind == 0x7)
}

/// HTTP/2 floods end the flooding connection by our own settings, and nobody else notices:
/// 2,000 streams opened and reset at once (rapid reset, CVE-2023-44487) get GOAWAY; a header
/// block of CONTINUATION frames far past `server.max_header_bytes` ends the connection;
/// 10,000 SETTINGS frames are acknowledged one by one and the request after them answered.
/// Another client's calls go on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_end_only_the_flooding_connection() {
    let backend = mesh_integration::hello_backend().await.unwrap();
    let proxy = start_proxy(&[("web.test:80", &[backend])]).await.unwrap();
    let get = || {
        Request::get("http://web.test/")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let mut bystander = h2_client::<Empty<Bytes>>(proxy.outbound).await.unwrap();
    assert_eq!(bystander.send_request(get()).await.unwrap().status(), 200);
    // :method GET, :scheme http, :path /, :authority "web.test" (HPACK).
    let mut head = vec![0x82, 0x86, 0x84, 0x41, 8];
    head.extend_from_slice(b"web.test");

    // Rapid reset: HEADERS then RST_STREAM(CANCEL), 2,000 times, in one write.
    let mut frames = Vec::new();
    for i in 0..2_000u32 {
        let stream = 1 + 2 * i;
        frames.extend(h2_frame(0x1, 0x4 | 0x1, stream, &head));
        frames.extend(h2_frame(0x3, 0, stream, &8u32.to_be_bytes()));
    }
    let (sent, closed) = flood(proxy.outbound, frames).await;
    assert!(
        goaway(&sent) && closed,
        "rapid reset: {sent:?}, closed {closed}"
    );
    assert_eq!(bystander.send_request(get()).await.unwrap().status(), 200);

    // CONTINUATION: one header block of 16 MiB in 16 KiB frames (the limit is 64 KiB).
    let mut field = vec![0x00, 3];
    field.extend_from_slice(b"x-a");
    field.push(100);
    field.extend_from_slice(&[b'v'; 100]);
    let chunk: Vec<u8> = field.iter().copied().cycle().take(16 * 1024).collect();
    let mut frames = h2_frame(0x1, 0x1, 1, &head);
    for _ in 0..1_024 {
        frames.extend(h2_frame(0x9, 0, 1, &chunk));
    }
    let (sent, closed) = flood(proxy.outbound, frames).await;
    assert!(
        closed,
        "CONTINUATION flood: the connection stayed open ({sent:?})"
    );
    assert_eq!(bystander.send_request(get()).await.unwrap().status(), 200);

    // SETTINGS: 10,000 of them, then a request on the same connection is still answered: each
    // is acknowledged before the next is read, so nothing accumulates.
    let mut frames = Vec::new();
    for _ in 0..10_000 {
        frames.extend(h2_frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    }
    frames.extend(h2_frame(0x1, 0x4 | 0x1, 1, &head));
    frames.extend(h2_frame(0x7, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
    let (sent, closed) = flood(proxy.outbound, frames).await;
    let acks = sent.iter().filter(|(kind, _)| *kind == 0x4).count();
    assert!(acks > 10_000, "{acks} SETTINGS frames back");
    assert!(
        sent.contains(&(0x1, 1)),
        "the request after the flood was not answered"
    );
    assert!(
        closed,
        "the SETTINGS flood connection was never closed after its GOAWAY"
    );
    assert_eq!(bystander.send_request(get()).await.unwrap().status(), 200);
}
