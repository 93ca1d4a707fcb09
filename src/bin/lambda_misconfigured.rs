//! A function deployed without its configuration, for `tests/lambda.rs`: the test actors'
//! counters with their state table named by `MISCONFIGURED_STATE_TABLE`, a variable the test
//! environment never sets. Its init fails as a function deployed without `STATE_TABLE` does, and
//! every invocation is answered at once with a function error that says so.

use std::sync::Arc;

use trebuchet::ActorSystem;
use trebuchet::middleware::Gateway;
use trebuchet::state::ActorStateStore;
use trebuchet_aws::DynamoDbStateStore;
use trebuchet_aws::config::{required_var, sdk_config};

#[path = "../../tests/common/actors.rs"]
mod actors;
use actors::{Counter, StoredCounter};

#[path = "shared/logging.rs"]
mod logging;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    logging::init();
    trebuchet_aws::lambda::serve_with_init(async {
        let table = required_var(
            "MISCONFIGURED_STATE_TABLE",
            "the DynamoDB table of this function's counters",
        )?;
        let store: Arc<dyn ActorStateStore> = Arc::new(DynamoDbStateStore::from_sdk_config(
            &sdk_config(None).await,
            &table,
            None,
        ));
        let system = ActorSystem::new();
        system.expose_family("counter", move |id| {
            StoredCounter::new(Arc::clone(&store), id, 10).into_actor()
        });
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Gateway::new(system))
    })
    .await
}
