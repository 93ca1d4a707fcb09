//! OpenTelemetry export (feature `opentelemetry`): an invocation's span is exported, joined to the
//! caller's trace through its `traceparent`.

mod common;

use common::*;
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::{InMemorySpanExporterBuilder, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt;
use trebuchet::middleware::{Gateway, TraceLayer};
use trebuchet::{ActorSystem, ClientConfig, Transport};

// One thread, so the test's subscriber sees the server's spans too.
#[tokio::test(flavor = "current_thread")]
async fn invocation_spans_are_exported_in_the_callers_trace() {
    let exporter = InMemorySpanExporterBuilder::new().build();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tests")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let system = ActorSystem::new();
    system
        .expose("counter", MemoryCounter::default().into_actor())
        .unwrap();
    let server = Gateway::new(system)
        .layer(TraceLayer::new())
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut config = ClientConfig::default();
    config.metadata.insert(
        "traceparent".into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    let client = ActorSystem::new()
        .connect_with(Transport::WebSocket(server.url().into()), config)
        .await
        .unwrap();
    let counter: CounterClient = client.actor("counter");
    assert_eq!(counter.increment(1).await.unwrap(), 1);
    server.shutdown().await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    let invocation = spans
        .iter()
        .find(|span| span.name == "invocation")
        .unwrap_or_else(|| {
            panic!(
                "no invocation span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(
        invocation.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(invocation.parent_span_id.to_string(), "00f067aa0ba902b7");
}
