//! What the server side learns of a request once, for every layer below it.
//!
//! [`Respond`](crate::server::Respond), where a request enters a stack, stamps a
//! [`RequestContext`] in its extensions: when it was received (deadlines count from it, so
//! that time spent in the layers above a [`Timeout`](crate::timeout::Timeout) is counted) and
//! whether it is gRPC (read by the timeout, retries, balancer and metrics, which all answer
//! gRPC differently). A layer used without `Respond` above it finds no context and computes
//! the same from the request itself ([`is_grpc`](crate::error::is_grpc)).
//!
//! The stamp costs one extension insert per request (the extension map and its entry: three
//! small allocations; a deadline is kept in it rather than beside it), paid once instead of one header lookup in each of four layers, and it
//! makes `ReceivedAt` true for every request rather than only where a test set it.

use tokio::time::Instant;

/// Stamped on each request by the server side; see the module doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestContext {
    /// When the request was received.
    pub received_at: Instant,
    /// Is it gRPC (its content type says so)?
    pub grpc: bool,
    /// The deadline a [`Timeout`](crate::timeout::Timeout) below set, kept here rather than
    /// in an extension of its own (which would be an allocation per request); read it with
    /// [`Deadline::of`](crate::timeout::Deadline::of).
    pub deadline: Option<crate::timeout::Deadline>,
}

impl RequestContext {
    /// The context of `req`, if the server side stamped one.
    pub fn of<B>(req: &http::Request<B>) -> Option<&RequestContext> {
        req.extensions().get::<RequestContext>()
    }
}
