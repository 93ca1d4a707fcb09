//! Tracing: a span per invocation, and W3C trace context carried on to the calls it makes.

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
///
/// The call runs in a trace context of its own: the caller's trace id (or a new one) with a new
/// span id. Calls the actor makes to other actors while handling it carry that context as their
/// `traceparent`, so one trace follows a request across actors and servers.
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
        let context = TraceContext::child_of(invocation.metadata.get("traceparent"));
        #[cfg(feature = "opentelemetry")]
        let context =
            otel::join_trace(&span, invocation.metadata.get("traceparent")).unwrap_or(context);
        let started = Instant::now();
        let future = span.in_scope(|| self.inner.call(call));
        Box::pin(
            async move {
                let result = CURRENT.scope(context, future).await;
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

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A W3C trace context (`traceparent`): trace id, span id and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

impl TraceContext {
    /// Reads a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`, trace id not all zeros).
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |text: &str, len: usize| {
            text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if !(hex(version, 2) && hex(trace_id, 32) && hex(span_id, 16) && hex(flags, 2)) {
            return None;
        }
        let context = TraceContext {
            trace_id: u128::from_str_radix(trace_id, 16).ok()?,
            span_id: u64::from_str_radix(span_id, 16).ok()?,
            flags: u8::from_str_radix(flags, 16).ok()?,
        };
        (context.trace_id != 0).then_some(context)
    }

    /// A new span in the trace of `parent` (or in a new trace if there is none or it is invalid).
    pub fn child_of(parent: Option<&String>) -> Self {
        // Random ids, never all zeros.
        let span_id = fastrand::u64(1..);
        match parent.and_then(|parent| Self::parse(parent)) {
            Some(parent) => TraceContext { span_id, ..parent },
            None => TraceContext {
                trace_id: (u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(1..)),
                span_id,
                flags: 1,
            },
        }
    }

    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The `traceparent` value for calls made from this context.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// The context of the invocation the current task is handling, if a [`TraceLayer`] set one.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }
}

/// OpenTelemetry export (cargo feature `opentelemetry`): the invocation's span is joined to the
/// caller's trace, and the calls it makes carry the span's own ids.
#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceContext;

    /// Makes `parent` (a `traceparent`) the remote parent of `span`; returns the span's own
    /// context, if OpenTelemetry is recording it.
    pub(super) fn join_trace(
        span: &tracing::Span,
        parent: Option<&String>,
    ) -> Option<TraceContext> {
        if let Some(parent) = parent.and_then(|parent| TraceContext::parse(parent)) {
            let remote = SpanContext::new(
                TraceId::from_bytes(parent.trace_id.to_be_bytes()),
                SpanId::from_bytes(parent.span_id.to_be_bytes()),
                TraceFlags::new(parent.flags),
                true,
                TraceState::default(),
            );
            let joined = opentelemetry::Context::new().with_remote_span_context(remote);
            if let Err(error) = span.set_parent(joined) {
                tracing::debug!(%error, "cannot join the caller's trace");
            }
        }
        let context = span.context();
        let own = context.span().span_context().clone();
        own.is_valid().then(|| TraceContext {
            trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(own.span_id().to_bytes()),
            flags: own.trace_flags().to_u8(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_continues_w3c_trace_context() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned();
        let child = TraceContext::child_of(Some(&parent));
        assert_eq!(child.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_ne!(child.traceparent(), parent);
        assert!(TraceContext::parse(&child.traceparent()).is_some());
        for bad in [
            "",
            "00-xyz-abc-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
        let fresh = TraceContext::child_of(None);
        assert!(TraceContext::parse(&fresh.traceparent()).is_some());
    }
}
