//! The local AWS emulators the AWS tests talk to, and helpers around them.
//!
//! `scripts/dev-env.sh` (run by `scripts/test.sh`) starts `moto_server` (DynamoDB, S3) and
//! `cargo lambda watch` (the Lambda runtime and Invoke API) and exports the standard SDK
//! settings: `AWS_ENDPOINT_URL` (moto), `AWS_ENDPOINT_URL_LAMBDA` (cargo-lambda), `AWS_REGION`,
//! and the `test`/`test` credentials.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use trebuchet_aws::DynamoDbStateStore;

/// The SDK configuration of the emulators; panics with what to run when they are not set up.
pub async fn sdk_config() -> aws_config::SdkConfig {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        panic!(
            "AWS_ENDPOINT_URL is not set: the AWS tests need the local emulators. Run them with \
             scripts/test.sh, which starts moto_server and cargo-lambda (scripts/dev-env.sh)"
        );
    }
    trebuchet_aws::config::sdk_config(None).await
}

/// The function of `src/bin/lambda_test_actors.rs` as `cargo lambda watch` serves it.
pub const TEST_ACTORS_FUNCTION: &str = "lambda_test_actors";

/// A Lambda transport to the test actors' function (the endpoint is `AWS_ENDPOINT_URL_LAMBDA`).
pub async fn test_actors_transport() -> trebuchet_aws::LambdaTransport {
    if std::env::var("AWS_ENDPOINT_URL_LAMBDA").is_err() {
        panic!(
            "AWS_ENDPOINT_URL_LAMBDA is not set: the Lambda tests need `cargo lambda watch`. Run \
             them with scripts/test.sh, which starts it (scripts/dev-env.sh)"
        );
    }
    trebuchet_aws::LambdaTransport::function(TEST_ACTORS_FUNCTION)
        .sdk_config(sdk_config().await)
        .build()
        .unwrap()
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", fastrand::u64(..) >> 16)
}

/// Counts the DynamoDB requests a client sends, by operation (`GetItem`, `PutItem`…).
#[derive(Clone, Debug, Default)]
pub struct RequestCounter {
    gets: Arc<AtomicU64>,
    puts: Arc<AtomicU64>,
    others: Arc<AtomicU64>,
}

impl RequestCounter {
    /// (GetItem, PutItem, other) requests sent so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.gets.load(Ordering::SeqCst),
            self.puts.load(Ordering::SeqCst),
            self.others.load(Ordering::SeqCst),
        )
    }

    /// The counts since `before`.
    pub fn since(&self, before: (u64, u64, u64)) -> (u64, u64, u64) {
        let now = self.counts();
        (now.0 - before.0, now.1 - before.1, now.2 - before.2)
    }
}

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or_default();
        let counter = match target.rsplit('.').next() {
            Some("GetItem") => &self.gets,
            Some("PutItem") => &self.puts,
            _ => &self.others,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A DynamoDB client on the emulator, its requests counted, without SDK retries (as the store
/// wants).
pub async fn counted_dynamodb() -> (aws_sdk_dynamodb::Client, RequestCounter) {
    let config = sdk_config().await;
    let counter = RequestCounter::default();
    let client = aws_sdk_dynamodb::Client::from_conf(
        DynamoDbStateStore::client_config(&config)
            .interceptor(counter.clone())
            .build(),
    );
    (client, counter)
}

/// An S3 client on the emulator (path-style addressing).
pub async fn s3() -> aws_sdk_s3::Client {
    let config = sdk_config().await;
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    )
}

/// A new bucket on the emulator.
pub async fn new_bucket() -> String {
    let bucket = unique("trebuchet-test");
    s3().await
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create a bucket on moto");
    bucket
}

/// A store on a new table (and, with `overflow`, a new bucket), its DynamoDB requests counted.
pub struct TestStore {
    pub store: DynamoDbStateStore,
    pub requests: RequestCounter,
    pub bucket: Option<String>,
}

/// A [`TestStore`].
pub async fn new_store(overflow: bool) -> TestStore {
    let (dynamodb, requests) = counted_dynamodb().await;
    let mut store = DynamoDbStateStore::new(dynamodb, unique("state"));
    let mut bucket = None;
    if overflow {
        let name = new_bucket().await;
        store = store.with_overflow(s3().await, &name);
        bucket = Some(name);
    }
    store
        .create_table_if_missing()
        .await
        .expect("create the table on moto");
    TestStore {
        store,
        requests,
        bucket,
    }
}
