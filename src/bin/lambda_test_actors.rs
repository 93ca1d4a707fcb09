//! The integration tests' actors as a Lambda function: `tests/lambda.rs` runs the shared
//! transport suite against it under `cargo lambda watch`. (To see how to write a function, read
//! `lambda_counter.rs`; this one only serves the tests.)
//!
//! * `probe`, `slow`: the suite's `Probe` actors (in memory);
//! * `counter…`: a family of counters, one per id, each with its state in DynamoDB
//!   (`STATE_TABLE`), so every test gets a counter of its own;
//! * `inspect`: reports the `CloudLambdaContext` of the invocation.

use std::sync::Arc;

use trebuchet::middleware::Gateway;
use trebuchet::state::ActorStateStore;
use trebuchet::{ActorSystem, RemoteError};
use trebuchet_aws::{CloudLambdaContext, DynamoDbStateStore};

#[path = "../../tests/common/actors.rs"]
mod actors;
use actors::{Counter, Inspect, InvocationInfo, Probe, ProbeActor, StoredCounter};

struct Inspector;

impl Inspect for Inspector {
    async fn invocation(&self) -> Result<Option<InvocationInfo>, RemoteError> {
        Ok(CloudLambdaContext::current().map(|context| InvocationInfo {
            remaining_ms: context.remaining().as_millis() as u64,
            request_id: context.request_id,
            function_arn: context.function_arn,
            cold_start: context.cold_start,
        }))
    }

    async fn touch(&self, note: String) -> Result<(), RemoteError> {
        tracing::info!(%note, "touched");
        Ok(())
    }
}

#[path = "shared/logging.rs"]
mod logging;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    logging::init();
    trebuchet_aws::lambda::serve_with_init(async {
        let store: Arc<dyn ActorStateStore> = Arc::new(DynamoDbStateStore::from_env().await?);
        let system = ActorSystem::new();
        system.expose("probe", ProbeActor::default().into_actor())?;
        system.expose("slow", ProbeActor::default().into_actor())?;
        system.expose("inspect", Inspector.into_actor())?;
        system.expose_family("counter", move |id| {
            // Several instances race for one counter in the tests: plenty of attempts.
            StoredCounter::new(Arc::clone(&store), id, 100).into_actor()
        });
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Gateway::new(system))
    })
    .await
}
