//! SIGTERM: the ingress binary stops accepting, lets the request in flight finish, and exits 0.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any error"
)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mesh_integration::{free_port, start_backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight_then_exits() {
    // A backend that answers after 1 s.
    let slow = start_backend(|_req| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        http::Response::new(Full::new(Bytes::from_static(b"late but whole")))
    })
    .await
    .unwrap();
    let (http, admin) = (free_port(), free_port());
    let dir = std::env::temp_dir().join(format!("mesh-ingress-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ingress.toml");
    std::fs::write(
        &file,
        format!(
            "[admin]\nlisten = \"127.0.0.1:{admin}\"\n[runtime]\nshutdown_grace = \"10s\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n[edge]\naccess_log = false\n\
             [[routes]]\nbackends = [{{ service = \"slow:80\" }}]\n\
             [[services]]\nauthority = \"slow:80\"\nendpoints = [\"{slow}\"]\nplaintext = true\n"
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mesh-ingress"))
        .arg("--config")
        .arg(&file)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    assert!(mesh_integration::mtls::wait_ready(admin).await);
    let http = SocketAddr::from(([127, 0, 0, 1], http));
    let mut tx = mesh_integration::h1_client::<Full<Bytes>>(http)
        .await
        .unwrap();
    let in_flight = tokio::spawn(async move {
        let rsp = tx
            .send_request(
                http::Request::get("/")
                    .header("host", "anything.test")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = rsp.status();
        (status, rsp.into_body().collect().await.unwrap().to_bytes())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = child.id().unwrap();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // New connections are refused once draining starts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(http).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"late but whole");
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the ingress exits after draining")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
