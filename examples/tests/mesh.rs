//! The demo through a real in-process `mesh-proxy`: the four call kinds, large
//! messages, statuses and per-request balancing, all named by `:authority`; and
//! a smoke run of the `mesh-demo` binary.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use mesh_examples::demo::{self, GREETER_AUTHORITY, Greeter, GreeterConfig, Names, Replica};
use mesh_examples::pb::HelloRequest;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::Code;

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        ..HelloRequest::default()
    }
}

fn config(greeters: &[SocketAddr], names: &[SocketAddr]) -> String {
    let list = |addrs: &[SocketAddr]| {
        let quoted: Vec<String> = addrs.iter().map(|addr| format!("\"{addr}\"")).collect();
        quoted.join(", ")
    };
    format!(
        r#"
        [admin]
        listen = "127.0.0.1:0"
        [outbound]
        listen = "127.0.0.1:0"
        [[outbound.services]]
        authority = "{GREETER_AUTHORITY}"
        endpoints = [{}]
        # Forget latency peaks fast: the test counts replicas seen, not machine noise.
        balancer = {{ decay = "100ms" }}
        [[outbound.services]]
        authority = "{}"
        endpoints = [{}]
        "#,
        list(greeters),
        demo::NAMES_AUTHORITY,
        list(names)
    )
}

#[tokio::test]
async fn through_the_proxy() -> anyhow::Result<()> {
    let names = Replica::spawn_names(Names::new("names-0")).await?;
    let mut greeters = Vec::new();
    for name in ["g-0", "g-1", "g-2"] {
        greeters.push(Replica::spawn_greeter(Greeter::new(GreeterConfig::new(name))).await?);
    }
    let addrs: Vec<SocketAddr> = greeters.iter().map(Replica::addr).collect();
    let config = mesh_proxy::Config::from_toml_str(&config(&addrs, &[names.addr()]))?;
    let proxy = mesh_proxy::Proxy::bind(config).await?;
    let outbound = proxy.outbound_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let proxy = tokio::spawn(proxy.run(async {
        let _ = stopped.await;
    }));

    let mut client = demo::greeter_client(demo::mesh_channel(outbound, GREETER_AUTHORITY)?);

    // One connection, and yet every replica answers.
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(client.say_hello(hello("Ada")).await?.into_inner().replica);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");

    let status = client.say_hello(hello("not-found")).await.err();
    let status = status.ok_or_else(|| anyhow::anyhow!("not-found succeeded"))?;
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no greeting for not-found");

    let payload: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let request = HelloRequest {
        payload: payload.clone().into(),
        ..hello("big")
    };
    assert_eq!(
        client.say_hello(request).await?.into_inner().payload,
        payload
    );

    let request = HelloRequest {
        count: 5,
        ..hello("Bob")
    };
    let replies: Vec<_> = client
        .stream_greetings(request)
        .await?
        .into_inner()
        .collect()
        .await;
    assert_eq!(replies.into_iter().collect::<Result<Vec<_>, _>>()?.len(), 5);

    let names_stream = tokio_stream::iter([hello("a"), hello("b")]);
    let reply = client.collect_names(names_stream).await?.into_inner();
    assert_eq!(reply.message, "Hello, a, b!");

    // A status in the middle of a stream comes through in the trailers.
    let chat = tokio_stream::iter([hello("x"), hello("not-found"), hello("y")]);
    let mut replies = client.chat(chat).await?.into_inner();
    assert_eq!(
        replies
            .message()
            .await?
            .map(|reply| reply.message)
            .as_deref(),
        Some("Hello, x!")
    );
    let status = replies.message().await.err();
    assert_eq!(status.map(|status| status.code()), Some(Code::NotFound));

    let _ = stop.send(());
    proxy.await??;
    for replica in greeters {
        replica.shutdown().await?;
    }
    names.shutdown().await
}

#[test]
fn demo_binary_smoke() -> anyhow::Result<()> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mesh-demo"))
        .args(["--duration", "2", "--rps", "100"])
        .env_remove("DEMO_DURATION")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout
        .split("whole run")
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no summary in:\n{stdout}"))?;
    for row in ["greeter-0", "greeter-1", "greeter-2", "TOTAL"] {
        assert!(summary.contains(row), "{stdout}");
    }
    Ok(())
}
