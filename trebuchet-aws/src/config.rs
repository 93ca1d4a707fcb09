//! Configuration from the environment.
//!
//! The AWS SDK reads its standard settings itself: `AWS_REGION` (default here: `us-east-1`),
//! credentials (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, the Lambda role…) and
//! endpoints (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_DYNAMODB`, …). This crate adds:
//!
//! | variable | used by | meaning |
//! |---|---|---|
//! | `STATE_TABLE` | [`crate::DynamoDbStateStore::from_env`] | the DynamoDB table of actor states (required) |
//! | `STATE_BUCKET` | [`crate::DynamoDbStateStore::from_env`] | the S3 bucket for states over the DynamoDB item limit (optional) |

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// The region used when nothing else names one.
pub const DEFAULT_REGION: &str = "us-east-1";

/// A configuration value is missing or invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required environment variable is not set (or is empty).
    #[error("environment variable {variable} is not set ({purpose})")]
    MissingVariable {
        /// The variable.
        variable: &'static str,
        /// What it is for.
        purpose: &'static str,
    },
    /// A setting has a value that cannot work.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The setting, e.g. `function` or `read_timeout`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The value of the environment variable `variable`, which must be set and not empty.
pub fn required_var(variable: &'static str, purpose: &'static str) -> Result<String, ConfigError> {
    optional_var(variable).ok_or(ConfigError::MissingVariable { variable, purpose })
}

/// The value of the environment variable `variable`, if set and not empty.
pub fn optional_var(variable: &str) -> Option<String> {
    std::env::var(variable)
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// The SDK configuration from the standard environment, with `region` if given, else the
/// environment's region, else [`DEFAULT_REGION`].
pub async fn sdk_config(region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    loader = match region {
        Some(region) => loader.region(Region::new(region.to_owned())),
        None => loader.region(
            aws_config::meta::region::RegionProviderChain::default_provider()
                .or_else(Region::from_static(DEFAULT_REGION)),
        ),
    };
    loader.load().await
}

/// Whether an endpoint other than AWS's own is configured for `service` (an emulator, MinIO…),
/// through `AWS_ENDPOINT_URL_<SERVICE>` or `AWS_ENDPOINT_URL`.
pub(crate) fn custom_endpoint(service_env_suffix: &str) -> bool {
    optional_var(&format!("AWS_ENDPOINT_URL_{service_env_suffix}")).is_some()
        || optional_var("AWS_ENDPOINT_URL").is_some()
}
