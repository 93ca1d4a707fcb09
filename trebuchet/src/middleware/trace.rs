//! Tracing: a span per invocation.

use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use super::Principal;
use crate::protocol::RemoteError;
use crate::server::Call;
use crate::stream::Reply;

/// Runs every invocation in a `tracing` span `invocation` with the fields `actor`, `method`,
/// `call_id`, `transport`, `traceparent` (the W3C trace context from `metadata`, if any) and,
/// when it is known, `principal`; logs its `outcome` (`ok` or the error code) and `duration_us`
/// when it ends. Put it first (outermost) to see calls the other layers reject, or after
/// authentication to see the principal.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl TraceLayer {
    /// The layer.
    pub fn new() -> Self {
        TraceLayer
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

/// A service whose calls are traced.
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Service<Call> for Traced<S>
where
    S: Service<Call, Response = Reply, Error = RemoteError> + Send,
    S::Future: Send + 'static,
{
    type Response = Reply;
    type Error = RemoteError;
    type Future = BoxFuture<'static, Result<Reply, RemoteError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RemoteError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let invocation = &call.invocation;
        let span = tracing::info_span!(
            "invocation",
            actor = %invocation.actor_id,
            method = %invocation.method,
            call_id = invocation.call_id,
            transport = call.connection.transport,
            traceparent = invocation.metadata.get("traceparent").map(String::as_str),
            principal = Principal::of(&call).map(|principal| principal.id.as_str()),
        );
        let started = Instant::now();
        let future = span.in_scope(|| self.inner.call(call));
        Box::pin(
            async move {
                let result = future.await;
                let duration_us = started.elapsed().as_micros() as u64;
                match &result {
                    Ok(_) => tracing::info!(outcome = "ok", duration_us, "invocation finished"),
                    Err(error) => tracing::info!(
                        outcome = error.code.as_str(),
                        duration_us,
                        error = %error.message,
                        "invocation finished"
                    ),
                }
                result
            }
            .instrument(span),
        )
    }
}
