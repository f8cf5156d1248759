//! The `Greeter` replica.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use prost::bytes::{Bytes, BytesMut};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use super::rng::Rng;
use super::{MAX_MESSAGE_SIZE, NOT_FOUND_NAME};
use crate::pb::greeter_server::{self, GreeterServer};
use crate::pb::names_client::NamesClient;
use crate::pb::{HelloReply, HelloRequest, PickRequest};

/// The name a greeter uses when a request has none and it has no `Names` service.
const DEFAULT_NAME: &str = "stranger";

/// How a greeter replica behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct GreeterConfig {
    /// The replica's name, returned in every reply (`HelloReply.replica`).
    pub name: String,
    /// Added to every call before it is answered.
    pub delay: Duration,
    /// The share of calls (`0.0..=1.0`) that fail with `UNAVAILABLE`.
    pub failure_rate: f64,
    /// Outages: every `.0`, for `.1`, every call fails with `UNAVAILABLE` (counted from the
    /// replica's start).
    pub outage: Option<(Duration, Duration)>,
}

impl GreeterConfig {
    /// A replica called `name` that answers at once and never fails.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            delay: Duration::ZERO,
            failure_rate: 0.0,
            outage: None,
        }
    }

    /// Fails every call for `lasting`, once `every` (the first outage starts after `every`).
    #[must_use]
    pub fn with_outages(self, every: Duration, lasting: Duration) -> Self {
        Self {
            outage: Some((every, lasting.min(every))),
            ..self
        }
    }

    /// Adds `delay` to every call.
    #[must_use]
    pub fn with_delay(self, delay: Duration) -> Self {
        Self { delay, ..self }
    }

    /// Fails the share `failure_rate` (`0.0..=1.0`) of calls.
    #[must_use]
    pub fn with_failure_rate(self, failure_rate: f64) -> Self {
        Self {
            failure_rate,
            ..self
        }
    }
}

/// A replica of the `Greeter` service.
///
/// Every call first waits the configured delay, then fails with `UNAVAILABLE`
/// "replica NAME is failing" for the configured share of calls. See
/// `proto/demo.proto` for what each call answers.
#[derive(Debug, Clone)]
pub struct Greeter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GreeterConfig,
    started: tokio::time::Instant,
    rng: Rng,
    names: Option<NamesClient<Channel>>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send + 'static>>;

impl Greeter {
    /// A greeter with no `Names` service: unnamed requests are greeted as "stranger".
    pub fn new(config: GreeterConfig) -> Self {
        Self::build(config, None)
    }

    /// A greeter that asks `names` for a name when a `SayHello` request has none
    /// (see [`mesh_channel`](super::mesh_channel) to reach it through the mesh).
    pub fn with_names(config: GreeterConfig, names: NamesClient<Channel>) -> Self {
        Self::build(config, Some(names))
    }

    fn build(config: GreeterConfig, names: Option<NamesClient<Channel>>) -> Self {
        let rng = Rng::from_seed(&config.name);
        Self {
            inner: Arc::new(Inner {
                config,
                started: tokio::time::Instant::now(),
                rng,
                names,
            }),
        }
    }

    /// The replica's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// The gRPC service, accepting messages up to [`MAX_MESSAGE_SIZE`].
    pub fn into_service(self) -> GreeterServer<Self> {
        GreeterServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Waits the configured delay, then fails the configured share of calls.
    async fn admit(&self) -> Result<(), Status> {
        let config = &self.inner.config;
        if !config.delay.is_zero() {
            tokio::time::sleep(config.delay).await;
        }
        if let Some((every, lasting)) = config.outage {
            let since_start = self.inner.started.elapsed();
            let into_cycle = since_start.as_nanos() % every.as_nanos().max(1);
            if since_start >= every && into_cycle < lasting.as_nanos() {
                return Err(Status::unavailable(format!(
                    "replica {} is in an outage",
                    config.name
                )));
            }
        }
        if self.inner.rng.chance(config.failure_rate) {
            return Err(Status::unavailable(format!(
                "replica {} is failing",
                config.name
            )));
        }
        Ok(())
    }

    /// The name to greet: the request's, or one picked by the `Names` service.
    async fn resolve_name(&self, name: String) -> Result<String, Status> {
        if !name.is_empty() {
            return Ok(name);
        }
        let Some(names) = &self.inner.names else {
            return Ok(DEFAULT_NAME.to_owned());
        };
        // Truncation is fine: the seed only has to vary.
        let seed = self.inner.rng.next_u64() as u32;
        match names.clone().pick(PickRequest { seed }).await {
            Ok(reply) => Ok(reply.into_inner().name),
            Err(status) => Err(Status::unavailable(format!(
                "replica {}: names lookup failed: {:?}: {}",
                self.name(),
                status.code(),
                status.message()
            ))),
        }
    }

    fn reply(&self, message: String, payload: Bytes) -> HelloReply {
        HelloReply {
            message,
            replica: self.name().to_owned(),
            payload,
        }
    }
}

/// `NOT_FOUND` for the name [`NOT_FOUND_NAME`].
fn check_found(name: &str) -> Result<(), Status> {
    if name == NOT_FOUND_NAME {
        return Err(Status::not_found(format!("no greeting for {name}")));
    }
    Ok(())
}

#[tonic::async_trait]
impl greeter_server::Greeter for Greeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.admit().await?;
        let HelloRequest { name, payload, .. } = request.into_inner();
        check_found(&name)?;
        let name = self.resolve_name(name).await?;
        Ok(Response::new(
            self.reply(format!("Hello, {name}!"), payload),
        ))
    }

    type StreamGreetingsStream = ReplyStream;

    async fn stream_greetings(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<Self::StreamGreetingsStream>, Status> {
        self.admit().await?;
        let HelloRequest {
            name,
            payload,
            count,
        } = request.into_inner();
        check_found(&name)?;
        let this = self.clone();
        let replies = tokio_stream::iter(1..=count)
            .map(move |i| Ok(this.reply(format!("Hello, {name}! ({i}/{count})"), payload.clone())));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn collect_names(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<HelloReply>, Status> {
        self.admit().await?;
        let mut requests = request.into_inner();
        let mut names = Vec::new();
        let mut payload = BytesMut::new();
        while let Some(request) = requests.message().await? {
            check_found(&request.name)?;
            payload.extend_from_slice(&request.payload);
            names.push(request.name);
        }
        let message = format!("Hello, {}!", names.join(", "));
        Ok(Response::new(self.reply(message, payload.freeze())))
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        self.admit().await?;
        let this = self.clone();
        let replies = request.into_inner().map(move |request| {
            let request = request?;
            check_found(&request.name)?;
            Ok(this.reply(format!("Hello, {}!", request.name), request.payload))
        });
        Ok(Response::new(Box::pin(replies)))
    }
}
