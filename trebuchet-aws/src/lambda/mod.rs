//! AWS Lambda: host actors in a function ([`serve`], [`LambdaHost`]) and call them
//! ([`LambdaTransport`]).
//!
//! A function built with [`serve`] accepts two kinds of events:
//!
//! 1. **A direct Invoke** whose payload is a protocol `invocation` envelope (docs/PROTOCOL.md), as
//!    [`LambdaTransport`] sends; it answers with a `response` envelope. A malformed payload is
//!    answered with a `bad_request` response, not a function error.
//! 2. **An API Gateway HTTP API (payload v2) request** `POST /{actorId}/{method}` whose body is
//!    the JSON arguments object (`{}` or empty for none); it answers with the result as JSON
//!    (200), or `{"error": {"code", "message", "data"}}` with the status of
//!    [`http_status`].
//!
//! A function whose init fails ([`serve_with_init`]) answers every invocation with a function
//! error carrying the init error, at once.
//!
//! Stateful actors keep their state in a [`State`](trebuchet::state::State) over a
//! [`DynamoDbStateStore`](crate::DynamoDbStateStore): a warm instance keeps the state and its
//! version between invocations, so an uncontended call costs one conditional write (one read and
//! one write on a cold start); a conflicting write by another instance makes the update reload
//! and run again.

mod host;
mod invoke;

pub use host::{CloudLambdaContext, LambdaHost, MAX_PAYLOAD, http_status, serve, serve_with_init};
pub use invoke::{
    FunctionTarget, HealthReport, InvocationType, LambdaConnection, LambdaTransport,
    LambdaTransportBuilder, TargetHealth, UNHEALTHY_AFTER,
};
