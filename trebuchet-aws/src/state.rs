//! Actor state in DynamoDB, with S3 for states over the item limit: [`DynamoDbStateStore`].
//!
//! ## Table
//!
//! One item per actor, hash key `actorId` (S). The item's attributes (written and read with
//! `serde_dynamo`):
//!
//! | attribute | type | meaning |
//! |---|---|---|
//! | `actorId` | S | the actor id (hash key) |
//! | `version` | N | the state's version, 1 for the first save |
//! | `updatedAt` | N | when it was saved, milliseconds since the Unix epoch |
//! | `state` | B | the encoded state, when it fits in the item |
//! | `stateObject` | S | otherwise the S3 key of the object that holds it |
//! | `stateSize` | N | the state's size in bytes |
//!
//! Create it with, for example,
//! `aws dynamodb create-table --table-name trebuchet-state --attribute-definitions
//! AttributeName=actorId,AttributeType=S --key-schema AttributeName=actorId,KeyType=HASH
//! --billing-mode PAY_PER_REQUEST`.
//!
//! ## Guarantees
//!
//! * Saves are conditional writes: `attribute_not_exists(actorId)` for a first save,
//!   `version = :expected` otherwise, so a stale writer gets [`StateError::Conflict`] (with the
//!   version it lost to, from `ReturnValuesOnConditionCheckFailure`) and never overwrites.
//! * Loads are strongly consistent reads: a load after a save, on any instance, sees it.
//! * A save costs one `PutItem`, a load one `GetItem`; S3 is only touched for states over
//!   [`inline_limit`](DynamoDbStateStore::with_inline_limit) (default 350 KB, under DynamoDB's
//!   400 KB item limit).
//! * A large state is written to S3 first, under a key of its own, and only then does the
//!   conditional write point the item at it. A crash between the two leaves an unreferenced
//!   object, never a pointer to a missing one. The object a save replaces is deleted after the
//!   save; a reader that raced with that deletion reads the item again.
//! * Throttling (`ProvisionedThroughputExceededException`, `ThrottlingException`,
//!   `RequestLimitExceeded`) and transient failures (5xx, timeouts, dropped connections) are
//!   retried with the store's [`RetryPolicy`]; other failures surface as
//!   [`StateError::Backend`] holding a [`DynamoDbStoreError`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use trebuchet::state::{ActorIdPage, ActorStateStore, StateError, StoredState};

use crate::config::{ConfigError, custom_endpoint, optional_var, required_var};
use crate::retry::{RetryPolicy, is_transient};
use crate::{epoch_millis, error_chain};

/// DynamoDB's limit on an item's size.
pub const DYNAMODB_ITEM_LIMIT: usize = 400 * 1024;

/// The default size above which a state goes to S3: DynamoDB's item limit less room for the
/// other attributes.
pub const DEFAULT_INLINE_LIMIT: usize = 350 * 1024;

/// How many times a load follows a state object that a concurrent save replaced.
const MAX_LOAD_ATTEMPTS: u32 = 5;

/// A failure of DynamoDB or S3, inside [`StateError::Backend`].
#[derive(Debug, thiserror::Error)]
pub enum DynamoDbStoreError {
    /// A DynamoDB request failed (after retries, if it was retryable).
    #[error(
        "DynamoDB {operation} on table '{table}' failed after {attempts} attempt(s): {message}"
    )]
    DynamoDb {
        /// The operation, e.g. `PutItem`.
        operation: &'static str,
        /// The table.
        table: String,
        /// The service's error code, e.g. `ResourceNotFoundException`, if it sent one.
        code: Option<String>,
        /// What went wrong.
        message: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// An S3 request failed.
    #[error("S3 {operation} of s3://{bucket}/{key} failed: {message}")]
    S3 {
        /// The operation, e.g. `PutObject`.
        operation: &'static str,
        /// The bucket.
        bucket: String,
        /// The object key.
        key: String,
        /// What went wrong.
        message: String,
    },
    /// A state is over the inline limit and the store has no S3 bucket for it.
    #[error(
        "state of '{actor_id}' is {size} bytes, over the {limit}-byte inline limit, and no S3 bucket is configured for large states (STATE_BUCKET)"
    )]
    TooLargeWithoutBucket {
        /// The actor.
        actor_id: String,
        /// The state's size.
        size: usize,
        /// The inline limit.
        limit: usize,
    },
    /// An item in the table is not a state item of this store.
    #[error("item of '{actor_id}' in table '{table}' is not a Trebuchet state item: {reason}")]
    BadItem {
        /// The actor.
        actor_id: String,
        /// The table.
        table: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The item points at a state object that kept disappearing while being read.
    #[error("state object of '{actor_id}' kept changing while being read")]
    ObjectChurn {
        /// The actor.
        actor_id: String,
    },
}

/// One actor's item in the table.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateItem {
    actor_id: String,
    version: u64,
    updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<ByteBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state_object: Option<String>,
    #[serde(default)]
    state_size: u64,
}

/// Where states over the inline limit go.
#[derive(Clone, Debug)]
struct Overflow {
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

/// An [`ActorStateStore`] in a DynamoDB table (see the [module documentation](self)).
#[derive(Clone, Debug)]
pub struct DynamoDbStateStore {
    dynamodb: aws_sdk_dynamodb::Client,
    table: String,
    overflow: Option<Overflow>,
    inline_limit: usize,
    retry: RetryPolicy,
}

impl DynamoDbStateStore {
    /// A store in `table` using the DynamoDB client `dynamodb`, without S3 (states over the
    /// inline limit fail with [`DynamoDbStoreError::TooLargeWithoutBucket`]).
    ///
    /// Build the client from [`client_config`](Self::client_config) (the SDK's own retries off):
    /// the store retries with its [`RetryPolicy`]. [`from_sdk_config`](Self::from_sdk_config)
    /// does that for you.
    pub fn new(dynamodb: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        DynamoDbStateStore {
            dynamodb,
            table: table.into(),
            overflow: None,
            inline_limit: DEFAULT_INLINE_LIMIT,
            retry: RetryPolicy {
                max_attempts: 5,
                initial_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(2),
            },
        }
    }

    /// The configuration of a DynamoDB client for a store: `sdk_config` with the SDK's own
    /// retries off (the store retries). Add interceptors, an endpoint… before `build()`.
    pub fn client_config(sdk_config: &SdkConfig) -> aws_sdk_dynamodb::config::Builder {
        aws_sdk_dynamodb::config::Builder::from(sdk_config)
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
    }

    /// A store in `table` with clients made from `sdk_config`, and S3 `bucket` for large states
    /// if given.
    pub fn from_sdk_config(sdk_config: &SdkConfig, table: &str, bucket: Option<&str>) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::from_conf(Self::client_config(sdk_config).build());
        let store = DynamoDbStateStore::new(dynamodb, table);
        match bucket {
            Some(bucket) => {
                // Emulators and S3-compatible servers on a custom endpoint want path-style
                // addressing (`http://host/bucket/key`).
                let s3 = aws_sdk_s3::Client::from_conf(
                    aws_sdk_s3::config::Builder::from(sdk_config)
                        .force_path_style(custom_endpoint("S3"))
                        .build(),
                );
                store.with_overflow(s3, bucket)
            }
            None => store,
        }
    }

    /// A store configured from the environment: table `STATE_TABLE` (required), bucket
    /// `STATE_BUCKET` (optional), SDK settings from the standard variables.
    pub async fn from_env() -> Result<Self, ConfigError> {
        let table = required_var("STATE_TABLE", "the DynamoDB table of actor states")?;
        let bucket = optional_var("STATE_BUCKET");
        let sdk_config = crate::config::sdk_config(None).await;
        Ok(Self::from_sdk_config(
            &sdk_config,
            &table,
            bucket.as_deref(),
        ))
    }

    /// Stores states over the inline limit in S3 `bucket`, under the key prefix `state/`.
    pub fn with_overflow(mut self, s3: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        self.overflow = Some(Overflow {
            s3,
            bucket: bucket.into(),
            prefix: "state/".to_owned(),
        });
        self
    }

    /// States larger than `bytes` go to S3 (default [`DEFAULT_INLINE_LIMIT`]; at most
    /// [`DYNAMODB_ITEM_LIMIT`] less room for the other attributes).
    pub fn with_inline_limit(mut self, bytes: usize) -> Self {
        self.inline_limit = bytes.min(DEFAULT_INLINE_LIMIT.max(DYNAMODB_ITEM_LIMIT - 16 * 1024));
        self
    }

    /// Retries throttled and transiently failed requests with `policy`.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table (hash key `actorId`, on-demand billing) if it does not exist; for tests
    /// and local development (in production, create it with your infrastructure code).
    pub async fn create_table_if_missing(&self) -> Result<(), StateError> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        let attribute = AttributeDefinition::builder()
            .attribute_name("actorId")
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(StateError::backend)?;
        let key = KeySchemaElement::builder()
            .attribute_name("actorId")
            .key_type(KeyType::Hash)
            .build()
            .map_err(StateError::backend)?;
        let created = self
            .dynamodb
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attribute)
            .key_schema(key)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some("ResourceInUseException") => Ok(()),
            Err(error) => Err(self.dynamodb_error("CreateTable", &error, 1)),
        }
    }

    fn dynamodb_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        operation: &'static str,
        error: &SdkError<E, R>,
        attempts: u32,
    ) -> StateError {
        StateError::backend(DynamoDbStoreError::DynamoDb {
            operation,
            table: self.table.clone(),
            code: error.code().map(str::to_owned),
            message: error
                .message()
                .map(str::to_owned)
                .unwrap_or_else(|| error_chain(error)),
            attempts,
        })
    }

    fn bad_item(&self, actor_id: &str, reason: impl ToString) -> StateError {
        StateError::backend(DynamoDbStoreError::BadItem {
            actor_id: actor_id.to_owned(),
            table: self.table.clone(),
            reason: reason.to_string(),
        })
    }

    fn key(actor_id: &str) -> (String, AttributeValue) {
        ("actorId".to_owned(), AttributeValue::S(actor_id.to_owned()))
    }

    async fn get_item(&self, actor_id: &str) -> Result<Option<StateItem>, StateError> {
        let (outcome, attempts) = self
            .retry
            .run(
                |_| {
                    let (name, value) = Self::key(actor_id);
                    self.dynamodb
                        .get_item()
                        .table_name(&self.table)
                        .key(name, value)
                        .consistent_read(true)
                        .send()
                },
                is_transient,
            )
            .await;
        let output = outcome.map_err(|error| self.dynamodb_error("GetItem", &error, attempts))?;
        match output.item {
            Some(item) => serde_dynamo::from_item(item)
                .map(Some)
                .map_err(|error| self.bad_item(actor_id, error)),
            None => Ok(None),
        }
    }

    async fn read_object(&self, actor_id: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let overflow = self.overflow.as_ref().ok_or_else(|| {
            self.bad_item(
                actor_id,
                format!("its state is in S3 ({key}) but the store has no bucket configured"),
            )
        })?;
        let s3_error = |operation, message: String| {
            StateError::backend(DynamoDbStoreError::S3 {
                operation,
                bucket: overflow.bucket.clone(),
                key: key.to_owned(),
                message,
            })
        };
        let object = overflow
            .s3
            .get_object()
            .bucket(&overflow.bucket)
            .key(key)
            .send()
            .await;
        match object {
            Ok(object) => {
                let bytes = object
                    .body
                    .collect()
                    .await
                    .map_err(|error| s3_error("GetObject", error.to_string()))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|service| service.is_no_such_key()) =>
            {
                Ok(None)
            }
            Err(error) => Err(s3_error("GetObject", error_chain(&error))),
        }
    }

    async fn write_object(
        &self,
        overflow: &Overflow,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StateError> {
        overflow
            .s3
            .put_object()
            .bucket(&overflow.bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .map(|_| ())
            .map_err(|error| {
                StateError::backend(DynamoDbStoreError::S3 {
                    operation: "PutObject",
                    bucket: overflow.bucket.clone(),
                    key: key.to_owned(),
                    message: error_chain(&error),
                })
            })
    }

    /// Deletes a state object nothing points at any more. A failure only leaves garbage behind,
    /// so it is logged, not returned.
    async fn discard_object(&self, key: &str) {
        let Some(overflow) = &self.overflow else {
            return;
        };
        if let Err(error) = overflow
            .s3
            .delete_object()
            .bucket(&overflow.bucket)
            .key(key)
            .send()
            .await
        {
            tracing::warn!(bucket = %overflow.bucket, key, error = %error_chain(&error), "cannot delete a replaced state object");
        }
    }

    async fn load_state(&self, actor_id: &str) -> Result<Option<StoredState>, StateError> {
        for _ in 0..MAX_LOAD_ATTEMPTS {
            let Some(item) = self.get_item(actor_id).await? else {
                return Ok(None);
            };
            let bytes = match (item.state, item.state_object) {
                (Some(state), _) => state.into_vec(),
                (None, Some(key)) => match self.read_object(actor_id, &key).await? {
                    Some(bytes) => bytes,
                    // A save replaced the object after our read of the item: read it again.
                    None => continue,
                },
                (None, None) => Vec::new(),
            };
            return Ok(Some(StoredState {
                version: item.version,
                bytes,
            }));
        }
        Err(StateError::backend(DynamoDbStoreError::ObjectChurn {
            actor_id: actor_id.to_owned(),
        }))
    }

    async fn save_state(
        &self,
        actor_id: &str,
        bytes: Vec<u8>,
        expected_version: u64,
    ) -> Result<u64, StateError> {
        let version = expected_version + 1;
        let size = bytes.len();
        let mut item = StateItem {
            actor_id: actor_id.to_owned(),
            version,
            updated_at: epoch_millis(SystemTime::now()),
            state: None,
            state_object: None,
            state_size: size as u64,
        };
        if size > self.inline_limit {
            let overflow = self.overflow.as_ref().ok_or_else(|| {
                StateError::backend(DynamoDbStoreError::TooLargeWithoutBucket {
                    actor_id: actor_id.to_owned(),
                    size,
                    limit: self.inline_limit,
                })
            })?;
            // A key of its own for every write: the item is switched to it only once it exists.
            let key = format!(
                "{}{}/v{version}-{:016x}",
                overflow.prefix,
                actor_id,
                fastrand::u64(..)
            );
            self.write_object(overflow, &key, bytes).await?;
            item.state_object = Some(key);
        } else {
            item.state = Some(ByteBuf::from(bytes));
        }
        let attributes: HashMap<String, AttributeValue> =
            serde_dynamo::to_item(&item).map_err(|error| self.bad_item(actor_id, error))?;

        let (outcome, attempts) = self
            .retry
            .run(
                |_| {
                    let request = self
                        .dynamodb
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(attributes.clone()))
                        .return_values(ReturnValue::AllOld)
                        .return_values_on_condition_check_failure(
                            ReturnValuesOnConditionCheckFailure::AllOld,
                        );
                    let request = if expected_version == 0 {
                        request.condition_expression("attribute_not_exists(actorId)")
                    } else {
                        request
                            .condition_expression("version = :expected")
                            .expression_attribute_values(
                                ":expected",
                                AttributeValue::N(expected_version.to_string()),
                            )
                    };
                    request.send()
                },
                is_transient,
            )
            .await;
        match outcome {
            Ok(output) => {
                let replaced = output
                    .attributes
                    .and_then(|old| old.get("stateObject")?.as_s().ok().cloned());
                if let Some(old_key) = replaced {
                    self.discard_object(&old_key).await;
                }
                Ok(version)
            }
            Err(error) => {
                if let Some(key) = &item.state_object {
                    self.discard_object(key).await;
                }
                match error.as_service_error() {
                    Some(
                        aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(
                            failed,
                        ),
                    ) => {
                        let actual = failed
                            .item()
                            .and_then(|old| old.get("version")?.as_n().ok()?.parse().ok())
                            .unwrap_or(0);
                        Err(StateError::Conflict {
                            actor_id: actor_id.to_owned(),
                            expected: expected_version,
                            actual,
                        })
                    }
                    _ => Err(self.dynamodb_error("PutItem", &error, attempts)),
                }
            }
        }
    }

    async fn delete_state(&self, actor_id: &str) -> Result<bool, StateError> {
        let (outcome, attempts) = self
            .retry
            .run(
                |_| {
                    let (name, value) = Self::key(actor_id);
                    self.dynamodb
                        .delete_item()
                        .table_name(&self.table)
                        .key(name, value)
                        .return_values(ReturnValue::AllOld)
                        .send()
                },
                is_transient,
            )
            .await;
        let output =
            outcome.map_err(|error| self.dynamodb_error("DeleteItem", &error, attempts))?;
        let Some(old) = output.attributes else {
            return Ok(false);
        };
        if let Some(key) = old.get("stateObject").and_then(|key| key.as_s().ok()) {
            self.discard_object(key).await;
        }
        Ok(true)
    }

    /// Lists by scanning the table's keys (DynamoDB has no order over hash keys): meant for
    /// administration, it reads every key on each call.
    async fn list_ids(&self, after: Option<&str>, limit: usize) -> Result<ActorIdPage, StateError> {
        let mut ids = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let (outcome, attempts) = self
                .retry
                .run(
                    |_| {
                        self.dynamodb
                            .scan()
                            .table_name(&self.table)
                            .projection_expression("actorId")
                            .consistent_read(true)
                            .set_exclusive_start_key(start.clone())
                            .send()
                    },
                    is_transient,
                )
                .await;
            let output = outcome.map_err(|error| self.dynamodb_error("Scan", &error, attempts))?;
            for item in output.items() {
                if let Some(Ok(id)) = item.get("actorId").map(AttributeValue::as_s)
                    && after.is_none_or(|after| id.as_str() > after)
                {
                    ids.push(id.clone());
                }
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        ids.sort_unstable();
        let next = (ids.len() > limit).then(|| ids[limit - 1].clone());
        ids.truncate(limit);
        Ok(ActorIdPage { ids, next })
    }
}

impl ActorStateStore for DynamoDbStateStore {
    fn load<'a>(
        &'a self,
        actor_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredState>, StateError>> {
        Box::pin(self.load_state(actor_id))
    }

    fn save<'a>(
        &'a self,
        actor_id: &'a str,
        bytes: Vec<u8>,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<u64, StateError>> {
        Box::pin(self.save_state(actor_id, bytes, expected_version))
    }

    fn delete<'a>(&'a self, actor_id: &'a str) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(self.delete_state(actor_id))
    }

    fn list<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ActorIdPage, StateError>> {
        Box::pin(self.list_ids(after, limit.max(1)))
    }
}
