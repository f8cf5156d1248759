//! The demo services answer what `proto/demo.proto` promises, called directly
//! (no proxy in between).

use std::time::Duration;

use mesh_examples::demo::{self, Greeter, GreeterConfig, Names, Replica};
use mesh_examples::pb::HelloRequest;
use mesh_examples::pb::greeter_client::GreeterClient;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        ..HelloRequest::default()
    }
}

async fn greeter(config: GreeterConfig) -> anyhow::Result<(Replica, GreeterClient<Channel>)> {
    let replica = Replica::spawn_greeter(Greeter::new(config)).await?;
    let client = demo::greeter_client(demo::direct_channel(replica.addr())?);
    Ok((replica, client))
}

#[tokio::test]
async fn four_call_kinds() -> anyhow::Result<()> {
    let (replica, mut client) = greeter(GreeterConfig::new("g-0")).await?;

    let reply = client.say_hello(hello("Ada")).await?.into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.replica.as_str()),
        ("Hello, Ada!", "g-0")
    );

    let request = HelloRequest {
        count: 3,
        ..hello("Bob")
    };
    let replies: Vec<_> = client
        .stream_greetings(request)
        .await?
        .into_inner()
        .collect()
        .await;
    let messages = replies
        .into_iter()
        .map(|reply| reply.map(|reply| reply.message))
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!(
        messages,
        [
            "Hello, Bob! (1/3)",
            "Hello, Bob! (2/3)",
            "Hello, Bob! (3/3)"
        ]
    );

    let names = tokio_stream::iter([hello("a"), hello("b"), hello("c")]);
    let reply = client.collect_names(names).await?.into_inner();
    assert_eq!(reply.message, "Hello, a, b, c!");

    let names = tokio_stream::iter([hello("x"), hello("y")]);
    let mut replies = client.chat(names).await?.into_inner();
    let mut messages = Vec::new();
    while let Some(reply) = replies.message().await? {
        messages.push(reply.message);
    }
    assert_eq!(messages, ["Hello, x!", "Hello, y!"]);

    replica.shutdown().await
}

#[tokio::test]
async fn not_found_large_payloads_and_failures() -> anyhow::Result<()> {
    let (replica, mut client) = greeter(GreeterConfig::new("g-0")).await?;
    let status = client.say_hello(hello("not-found")).await.err();
    let status = status.ok_or_else(|| anyhow::anyhow!("not-found succeeded"))?;
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no greeting for not-found");

    let payload: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let request = HelloRequest {
        payload: payload.clone().into(),
        ..hello("big")
    };
    let reply = client.say_hello(request).await?.into_inner();
    assert_eq!(reply.payload, payload);
    replica.shutdown().await?;

    let config = GreeterConfig::new("g-1")
        .with_failure_rate(1.0)
        .with_delay(Duration::from_millis(20));
    let (replica, mut client) = greeter(config).await?;
    let started = tokio::time::Instant::now();
    let status = client.say_hello(hello("Ada")).await.err();
    let status = status.ok_or_else(|| anyhow::anyhow!("a failing replica succeeded"))?;
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "replica g-1 is failing");
    assert!(started.elapsed() >= Duration::from_millis(20));
    replica.shutdown().await
}

#[tokio::test]
async fn unnamed_requests_ask_the_names_service() -> anyhow::Result<()> {
    let names = Replica::spawn_names(Names::new("names-0")).await?;
    let names_client = demo::names_client(demo::direct_channel(names.addr())?);
    let greeter = Greeter::with_names(GreeterConfig::new("g-0"), names_client);
    let replica = Replica::spawn_greeter(greeter).await?;
    let mut client = demo::greeter_client(demo::direct_channel(replica.addr())?);
    let reply = client.say_hello(hello("")).await?.into_inner();
    assert!(
        reply.message.starts_with("Hello, ") && reply.message != "Hello, !",
        "{}",
        reply.message
    );
    assert_ne!(reply.message, "Hello, stranger!");
    replica.shutdown().await?;
    names.shutdown().await
}
