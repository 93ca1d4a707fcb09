//! Trebuchet actors on AWS.
//!
//! The same actor code that runs in-process, over WebSocket or over TCP runs here as an AWS Lambda
//! function with its state in DynamoDB, and clients reach it with the Lambda invoke transport:
//!
//! | module | AWS service | what |
//! |---|---|---|
//! | [`state`] | DynamoDB (+ S3) | [`DynamoDbStateStore`]: an [`ActorStateStore`](trebuchet::state::ActorStateStore) with conditional writes; states over the item limit go to S3 |
//! | [`lambda`] | Lambda | [`lambda::serve`]: host a [`Gateway`](trebuchet::middleware::Gateway) as a function; [`LambdaTransport`]: call it with `Transport::from(..)` |
//! | [`config`] | – | SDK configuration from the standard environment, and this crate's variables |
//!
//! Every SDK client honours the standard settings (`AWS_REGION`, `AWS_ENDPOINT_URL`, the
//! credential chain), so the same binary runs against AWS and against local emulators.
#![warn(missing_docs)]

pub mod config;
pub mod lambda;
pub mod retry;
pub mod state;

pub use config::ConfigError;
pub use lambda::{CloudLambdaContext, LambdaTransport};
pub use retry::RetryPolicy;
pub use state::DynamoDbStateStore;

/// An error and its sources, as one line.
pub(crate) fn error_chain(error: &(dyn std::error::Error + '_)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `time` in milliseconds since the Unix epoch (0 before it).
pub(crate) fn epoch_millis(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}
