//! The counter of `examples/counter.rs` — the very same actor code — as an AWS Lambda function,
//! with its state in DynamoDB, and a client that calls it with the Lambda invoke transport.
//!
//! * As the function (what `cargo lambda watch` / Lambda run): serves the actor `counter` from
//!   the events Lambda hands it. Needs `STATE_TABLE` (and optionally `STATE_BUCKET`).
//! * `lambda_counter create-table` creates the `STATE_TABLE` table (on-demand, key `actorId`).
//! * `lambda_counter call FUNCTION` calls `counter` in the function `FUNCTION` through the Invoke
//!   API (set `AWS_ENDPOINT_URL_LAMBDA` to reach `cargo lambda watch`), and prints what it did.
//!
//! README, "Run it on Lambda locally", shows the whole loop on local emulators.

use std::sync::Arc;

use anyhow::Context;
use trebuchet::middleware::Gateway;
use trebuchet::{ActorSystem, Transport};
use trebuchet_aws::{DynamoDbStateStore, LambdaTransport};

#[path = "../../examples/shared/counter_actor.rs"]
mod counter_actor;
use counter_actor::{Counter, CounterClient, CounterError, PersistentCounter};

#[path = "shared/logging.rs"]
mod logging;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logging::init();

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() => run_function().await,
        ["create-table"] => create_table().await,
        ["call", function] => call(function).await,
        _ => anyhow::bail!(
            "usage: lambda_counter create-table | lambda_counter call FUNCTION\n\
             (with no arguments it runs as a Lambda function, under Lambda or `cargo lambda watch`)"
        ),
    }
}

/// The function: the counter with its state in DynamoDB. A failed init (no `STATE_TABLE`, say)
/// fails every invocation at once with its error.
async fn run_function() -> anyhow::Result<()> {
    trebuchet_aws::lambda::serve_with_init(async {
        let store = DynamoDbStateStore::from_env().await?;
        tracing::info!(
            table = store.table(),
            region = ?std::env::var("AWS_REGION").ok(),
            endpoint = ?std::env::var("AWS_ENDPOINT_URL").ok(),
            "counter function starting"
        );
        let system = ActorSystem::new();
        system.expose(
            "counter",
            PersistentCounter::new(Arc::new(store)).into_actor(),
        )?;
        Ok::<_, anyhow::Error>(Gateway::new(system))
    })
    .await
    .map_err(|error| anyhow::anyhow!(error))
}

async fn create_table() -> anyhow::Result<()> {
    let store = DynamoDbStateStore::from_env().await?;
    store
        .create_table_if_missing()
        .await
        .with_context(|| format!("cannot create table {}", store.table()))?;
    println!("table {} is ready", store.table());
    Ok(())
}

/// A client: the same stub as over WebSocket, on the Lambda invoke transport.
async fn call(function: &str) -> anyhow::Result<()> {
    let transport = LambdaTransport::function(function).build()?;
    let client = ActorSystem::new()
        .connect(Transport::from(transport.clone()))
        .await?;
    let counter: CounterClient = client.actor("counter");
    println!("lambda: get() -> {}", counter.get().await?);
    println!("lambda: increment(5) -> {}", counter.increment(5).await?);
    let calls = (0..4).map(|_| counter.increment(1));
    let results = futures_util::future::try_join_all(calls).await?;
    println!("lambda: 4 concurrent increment(1) -> {results:?}");
    match counter.increment(u64::MAX).await {
        Err(CounterError::Overflow) => {
            println!("lambda: increment(u64::MAX) -> Err(Overflow), typed; nothing saved")
        }
        other => anyhow::bail!("expected the typed Overflow error, got {other:?}"),
    }
    println!("lambda: get() -> {}", counter.get().await?);
    println!(
        "health: {}",
        serde_json::to_string(&transport.health()).context("health report")?
    );
    Ok(())
}
