//! The `Names` replica.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::MAX_MESSAGE_SIZE;
use crate::pb::names_server::{self, NamesServer};
use crate::pb::{PickReply, PickRequest};

/// The names a `Names` replica picks from.
const NAMES: &[&str] = &[
    "Ada", "Alan", "Barbara", "Dennis", "Edsger", "Frances", "Grace", "John", "Ken", "Leslie",
    "Margaret", "Niklaus", "Radia", "Tony",
];

/// A replica of the `Names` service: `Pick` maps a seed to a name, the same on
/// every replica, and says which replica answered.
#[derive(Debug, Clone)]
pub struct Names {
    name: Arc<str>,
}

impl Names {
    /// A replica called `name`.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self { name: name.into() }
    }

    /// The replica's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The gRPC service, accepting messages up to [`MAX_MESSAGE_SIZE`].
    pub fn into_service(self) -> NamesServer<Self> {
        NamesServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

#[tonic::async_trait]
impl names_server::Names for Names {
    async fn pick(&self, request: Request<PickRequest>) -> Result<Response<PickReply>, Status> {
        let seed = request.into_inner().seed as usize;
        let name = NAMES.get(seed % NAMES.len()).copied().unwrap_or("Ada");
        Ok(Response::new(PickReply {
            name: name.to_owned(),
            replica: self.name.to_string(),
        }))
    }
}
