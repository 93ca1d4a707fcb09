//! The Lambda invoke transport: calls actors hosted by a Lambda function ([`super::serve`])
//! through the Lambda Invoke API.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use trebuchet::{ActorSystem, Transport};
//! use trebuchet_aws::LambdaTransport;
//!
//! let lambda = LambdaTransport::function("counter").region("eu-west-1").build()?;
//! let health = lambda.clone(); // keep a handle for `health()`
//! let client = ActorSystem::new().connect(Transport::from(lambda)).await?;
//! # let _ = (client, health.health());
//! # Ok(()) }
//! ```
//!
//! Each call is one Invoke whose payload is an `invocation` envelope. Failed requests are retried
//! by the transport's [`RetryPolicy`] (the SDK's own retries are off): throttling (429,
//! `TooManyRequestsException`), Lambda's own failures (5xx, `ServiceException`) and connect or
//! read timeouts. Not retried: `ResourceNotFoundException`, `AccessDeniedException`,
//! `InvalidParameterValueException`, `RequestTooLargeException`, and function errors (the
//! function ran; running it again could repeat its side effects). Lambda reports a function
//! error as 200 with `X-Amz-Function-Error`; local emulators may answer 500 with the error object
//! as the body: both are function errors.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_sdk_lambda::config::retry::RetryConfig;
use aws_sdk_lambda::config::timeout::TimeoutConfig;
use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::operation::invoke::InvokeError;
use aws_sdk_lambda::primitives::Blob;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use trebuchet::client::ConnectError;
use trebuchet::codec;
use trebuchet::protocol::{Envelope, Invocation};
use trebuchet::stream::PayloadStream;
use trebuchet::transport::{Connector, CustomTransport};
use trebuchet::{ClientConfig, Connection, Encoding, ErrorCode, Payload, RemoteError, Transport};

use super::host::MAX_PAYLOAD;
use crate::config::ConfigError;
use crate::retry::{RetryPolicy, is_transient};
use crate::{epoch_millis, error_chain};

/// A target with this many consecutive failures is reported unhealthy.
pub const UNHEALTHY_AFTER: u32 = 3;

/// Which function a call goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FunctionTarget {
    /// One function by name, serving every actor.
    Name(String),
    /// One function by ARN (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`).
    Arn(String),
    /// A function per actor: the prefix followed by the actor id (`"trebuchet-"` + `"counter"`).
    Prefix(String),
}

/// How Lambda runs an invocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvocationType {
    /// Synchronously: the call returns the method's result (the default).
    #[default]
    RequestResponse,
    /// Fire-and-forget: the call returns `null` (`()` for the stub) as soon as Lambda has
    /// queued the invocation; the method's result and errors are not seen. For methods that
    /// return `()`.
    Event,
}

/// Settings of a [`LambdaTransport`], checked by [`build`](Self::build).
#[derive(Clone, Debug)]
pub struct LambdaTransportBuilder {
    target: FunctionTarget,
    region: Option<String>,
    qualifier: Option<String>,
    invocation_type: InvocationType,
    retry: RetryPolicy,
    connect_timeout: Duration,
    read_timeout: Duration,
    endpoint_url: Option<String>,
    sdk_config: Option<SdkConfig>,
}

impl LambdaTransportBuilder {
    /// The region of the function (default: the ARN's region, else the environment's, else
    /// `us-east-1`).
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// A version or alias to invoke (`$LATEST`, `7`, `live`).
    pub fn qualifier(mut self, qualifier: impl Into<String>) -> Self {
        self.qualifier = Some(qualifier.into());
        self
    }

    /// `RequestResponse` (default) or `Event`.
    pub fn invocation_type(mut self, invocation_type: InvocationType) -> Self {
        self.invocation_type = invocation_type;
        self
    }

    /// Retries of failed requests (default: 3 attempts, 0.5 s initial delay, 30 s cap).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long connecting to the Lambda endpoint may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the answer of one attempt (default 30 s; a synchronous function
    /// may run up to 15 minutes, so raise it for long calls, along with
    /// [`ClientConfig::call_timeout`]).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Sends requests to `url` instead of the endpoint the SDK would choose (it already honours
    /// `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_LAMBDA`).
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Uses `config` (credentials, region, HTTP client…) instead of loading the standard
    /// environment's.
    pub fn sdk_config(mut self, config: SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// Checks the settings; every error names the field.
    pub fn build(mut self) -> Result<LambdaTransport, ConfigError> {
        let invalid = |field: &'static str, reason: String| ConfigError::Invalid { field, reason };
        match &self.target {
            FunctionTarget::Name(name) => validate_name("function", name)?,
            FunctionTarget::Prefix(prefix) => {
                if prefix.is_empty() {
                    return Err(invalid("prefix", "is empty".into()));
                }
                validate_name("prefix", prefix)?;
            }
            FunctionTarget::Arn(arn) => {
                let parsed = parse_arn(arn).map_err(|reason| invalid("arn", reason))?;
                match &self.region {
                    Some(region) if region != parsed.region => {
                        return Err(invalid(
                            "region",
                            format!(
                                "'{region}' differs from the ARN's region '{}'",
                                parsed.region
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => self.region = Some(parsed.region.to_owned()),
                }
                if parsed.qualifier.is_some() && self.qualifier.is_some() {
                    return Err(invalid(
                        "qualifier",
                        "the ARN already names a qualifier".into(),
                    ));
                }
            }
        }
        if let Some(region) = &self.region
            && (region.is_empty()
                || !region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return Err(invalid(
                "region",
                format!("'{region}' is not a region name like us-east-1"),
            ));
        }
        if let Some(qualifier) = &self.qualifier
            && (qualifier.is_empty()
                || qualifier.len() > 128
                || !qualifier
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '$' | '-' | '_')))
        {
            return Err(invalid(
                "qualifier",
                format!("'{qualifier}' is not a version or alias name"),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid(
                "connect_timeout",
                "must be longer than zero".into(),
            ));
        }
        if self.read_timeout.is_zero() {
            return Err(invalid("read_timeout", "must be longer than zero".into()));
        }
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "endpoint_url",
                format!("'{url}' is not an http(s) URL"),
            ));
        }
        self.retry.validate()?;
        Ok(LambdaTransport {
            inner: Arc::new(Settings {
                config: self,
                client: OnceCell::new(),
                health: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// Function names: 1 to 64 letters, digits, `-` and `_`.
fn validate_name(field: &'static str, name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        "is empty".to_owned()
    } else if name.len() > 64 {
        format!(
            "'{}' is longer than 64 characters",
            trebuchet::quoted::name(name)
        )
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        format!(
            "'{}' may only hold letters, digits, '-' and '_'",
            trebuchet::quoted::name(name)
        )
    } else {
        return Ok(());
    };
    Err(ConfigError::Invalid { field, reason })
}

struct ParsedArn<'a> {
    region: &'a str,
    qualifier: Option<&'a str>,
}

fn parse_arn(arn: &str) -> Result<ParsedArn<'_>, String> {
    let parts: Vec<&str> = arn.split(':').collect();
    let bad = |why: &str| format!("'{arn}' is not a Lambda function ARN: {why}");
    if parts.len() < 7 || parts.len() > 8 {
        return Err(bad(
            "expected arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]",
        ));
    }
    if parts[0] != "arn" || !parts[1].starts_with("aws") {
        return Err(bad("it must start with arn:aws"));
    }
    if parts[2] != "lambda" {
        return Err(bad("the service is not lambda"));
    }
    if parts[3].is_empty() {
        return Err(bad("the region is empty"));
    }
    if parts[4].len() != 12 || !parts[4].chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("the account is not 12 digits"));
    }
    if parts[5] != "function" {
        return Err(bad("the resource type is not function"));
    }
    validate_name("arn", parts[6]).map_err(|error| bad(&error.to_string()))?;
    Ok(ParsedArn {
        region: parts[3],
        qualifier: parts.get(7).copied(),
    })
}

/// A transport's checked settings, its SDK client (made on first use) and its health records.
struct Settings {
    config: LambdaTransportBuilder,
    client: OnceCell<aws_sdk_lambda::Client>,
    health: Mutex<HashMap<String, HealthRecord>>,
}

/// Calls actors in a Lambda function: a transport for [`Transport::from`], and the health of
/// the functions it called. Cheap to clone; clones share the SDK client and the health records.
#[derive(Clone)]
pub struct LambdaTransport {
    inner: Arc<Settings>,
}

impl fmt::Debug for LambdaTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LambdaTransport")
            .field("target", &self.inner.config.target)
            .field("region", &self.inner.config.region)
            .field("qualifier", &self.inner.config.qualifier)
            .field("invocation_type", &self.inner.config.invocation_type)
            .finish_non_exhaustive()
    }
}

impl LambdaTransport {
    fn builder(target: FunctionTarget) -> LambdaTransportBuilder {
        LambdaTransportBuilder {
            target,
            region: None,
            qualifier: None,
            invocation_type: InvocationType::default(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            endpoint_url: None,
            sdk_config: None,
        }
    }

    /// Calls go to the function named `name`.
    pub fn function(name: impl Into<String>) -> LambdaTransportBuilder {
        Self::builder(FunctionTarget::Name(name.into()))
    }

    /// Calls go to the function with this ARN.
    pub fn arn(arn: impl Into<String>) -> LambdaTransportBuilder {
        Self::builder(FunctionTarget::Arn(arn.into()))
    }

    /// Calls of actor `id` go to the function named `prefix` + `id`.
    pub fn prefix(prefix: impl Into<String>) -> LambdaTransportBuilder {
        Self::builder(FunctionTarget::Prefix(prefix.into()))
    }

    /// The function calls go to.
    pub fn target(&self) -> &FunctionTarget {
        &self.inner.config.target
    }

    /// The health of every function called so far, by function name or ARN.
    pub fn health(&self) -> HealthReport {
        let records = self.inner.health.lock().expect("health records");
        let mut targets: Vec<TargetHealth> = records
            .iter()
            .map(|(function, record)| record.report(function))
            .collect();
        targets.sort_by(|a, b| a.function.cmp(&b.function));
        HealthReport {
            healthy: targets.iter().all(|target| target.healthy),
            targets,
        }
    }

    /// The health of `function` (a name or ARN as called), if it was called.
    pub fn health_of(&self, function: &str) -> Option<TargetHealth> {
        let records = self.inner.health.lock().expect("health records");
        records.get(function).map(|record| record.report(function))
    }

    async fn client(&self) -> &aws_sdk_lambda::Client {
        let settings = &self.inner.config;
        self.inner
            .client
            .get_or_init(|| async {
                let sdk_config = match &settings.sdk_config {
                    Some(config) => config.clone(),
                    None => crate::config::sdk_config(settings.region.as_deref()).await,
                };
                let mut builder = aws_sdk_lambda::config::Builder::from(&sdk_config)
                    // The transport retries with its own policy.
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(settings.connect_timeout)
                            .read_timeout(settings.read_timeout)
                            .build(),
                    );
                if let Some(region) = &settings.region {
                    builder = builder.region(aws_config::Region::new(region.clone()));
                }
                if let Some(url) = &settings.endpoint_url {
                    builder = builder.endpoint_url(url);
                }
                aws_sdk_lambda::Client::from_conf(builder.build())
            })
            .await
    }

    fn function_for(&self, actor_id: &str) -> Result<String, RemoteError> {
        match &self.inner.config.target {
            FunctionTarget::Name(name) | FunctionTarget::Arn(name) => Ok(name.clone()),
            FunctionTarget::Prefix(prefix) => {
                let name = format!("{prefix}{actor_id}");
                validate_name("function", &name).map_err(|error| {
                    RemoteError::new(
                        ErrorCode::UnknownActor,
                        format!(
                            "actor '{}' has no Lambda function: {error}",
                            trebuchet::quoted::name(actor_id)
                        ),
                    )
                })?;
                Ok(name)
            }
        }
    }

    fn record(&self, function: &str, success: bool, error: Option<&RemoteError>) {
        let mut records = self.inner.health.lock().expect("health records");
        let record = records.entry(function.to_owned()).or_default();
        record.total_requests += 1;
        if success {
            record.consecutive_failures = 0;
            record.last_success = Some(SystemTime::now());
        } else {
            record.consecutive_failures += 1;
            record.total_failures += 1;
            record.last_failure = Some(SystemTime::now());
            record.last_error = error.map(|error| format!("{}: {}", error.code, error.message));
        }
    }

    /// One Invoke request.
    async fn attempt(&self, function: &str, payload: &[u8]) -> Result<Payload, Failure> {
        let settings = &self.inner.config;
        let sent = self
            .client()
            .await
            .invoke()
            .function_name(function)
            .set_qualifier(settings.qualifier.clone())
            .invocation_type(match settings.invocation_type {
                InvocationType::RequestResponse => {
                    aws_sdk_lambda::types::InvocationType::RequestResponse
                }
                InvocationType::Event => aws_sdk_lambda::types::InvocationType::Event,
            })
            .payload(Blob::new(payload))
            .send()
            .await;
        let output = match sent {
            Ok(output) => output,
            Err(error) => return Err(Failure::from_sdk(function, &error)),
        };
        if let Some(kind) = output.function_error() {
            let body = output
                .payload()
                .map(|blob| blob.as_ref())
                .unwrap_or_default();
            return Err(Failure::function_error(function, kind, body));
        }
        if settings.invocation_type == InvocationType::Event {
            return Ok(Payload::from_bytes(Encoding::Json, b"null".to_vec()));
        }
        let body = output
            .payload()
            .map(|blob| blob.as_ref())
            .unwrap_or_default();
        match codec::decode_bytes(body, Encoding::Json) {
            Ok(Envelope::Response(response)) => response.outcome.map_err(Failure::answered),
            Ok(other) => Err(Failure::permanent(RemoteError::internal(format!(
                "function '{function}' answered with a `{}` envelope, not a `response`",
                other.kind()
            )))),
            Err(error) => Err(Failure::permanent(RemoteError::internal(format!(
                "function '{function}' answered with something that is not a response envelope: {error}"
            )))),
        }
    }

    async fn call(
        &self,
        actor_id: &str,
        method: &str,
        args: Payload,
        config: &ClientConfig,
        call_id: u64,
    ) -> Result<Payload, RemoteError> {
        let function = self.function_for(actor_id)?;
        let envelope = Envelope::Invocation(Invocation {
            call_id,
            actor_id: actor_id.to_owned(),
            method: method.to_owned(),
            args,
            metadata: config.outgoing_metadata(),
        });
        let frame = codec::encode(&envelope, Encoding::Json)
            .map_err(|error| RemoteError::bad_request(error.to_string()))?;
        if frame.data.len() > MAX_PAYLOAD {
            return Err(RemoteError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the invocation is {} bytes, over Lambda's {MAX_PAYLOAD}-byte payload limit",
                    frame.data.len()
                ),
            ));
        }
        let attempts = self.inner.config.retry.run(
            |_| async {
                let outcome = self.attempt(&function, &frame.data).await;
                match &outcome {
                    Ok(_) => self.record(&function, true, None),
                    Err(failure) => self.record(&function, failure.answered, Some(&failure.error)),
                }
                outcome
            },
            |failure: &Failure| failure.retryable,
        );
        match tokio::time::timeout(config.call_timeout, attempts).await {
            Ok((outcome, _)) => outcome.map_err(|failure| failure.error),
            Err(_) => Err(RemoteError::timeout(format!(
                "no answer from function '{function}' within {:?}",
                config.call_timeout
            ))),
        }
    }
}

/// Why an attempt did not give a result.
#[derive(Debug)]
struct Failure {
    error: RemoteError,
    /// Worth another attempt.
    retryable: bool,
    /// The function answered (with the actor's or the protocol's error): the target is healthy.
    answered: bool,
}

impl Failure {
    fn permanent(error: RemoteError) -> Self {
        Failure {
            error,
            retryable: false,
            answered: false,
        }
    }

    fn answered(error: RemoteError) -> Self {
        Failure {
            error,
            retryable: false,
            answered: true,
        }
    }

    fn function_error(function: &str, kind: &str, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct ErrorObject {
            error_type: Option<String>,
            error_message: Option<String>,
        }
        let detail = match serde_json::from_slice::<ErrorObject>(body) {
            Ok(ErrorObject {
                error_type,
                error_message,
            }) => format!(
                "{}: {}",
                error_type.as_deref().unwrap_or(kind),
                error_message.as_deref().unwrap_or("")
            ),
            Err(_) => String::from_utf8_lossy(body).into_owned(),
        };
        Failure::permanent(RemoteError::internal(format!(
            "function '{function}' failed ({kind}): {detail}"
        )))
    }

    fn from_sdk(
        function: &str,
        error: &SdkError<InvokeError, aws_sdk_lambda::config::http::HttpResponse>,
    ) -> Self {
        // A function error reported as HTTP 500 with the error object as the body (local
        // emulators): the function ran, so it is not retried.
        if let SdkError::ServiceError(service) = error
            && service.raw().status().as_u16() == 500
            && let Some(body) = service.raw().body().bytes()
            && let Ok(object) = serde_json::from_slice::<serde_json::Value>(body)
            && object.get("errorMessage").is_some()
            && object.get("errorType").is_some()
        {
            return Failure::function_error(function, "Unhandled", body);
        }
        let retryable = is_transient(error);
        let code = match error {
            SdkError::TimeoutError(_) => ErrorCode::Timeout,
            SdkError::DispatchFailure(failure) if failure.is_timeout() => ErrorCode::Timeout,
            SdkError::ServiceError(service) => match service.err() {
                InvokeError::ResourceNotFoundException(_) => ErrorCode::Unavailable,
                InvokeError::TooManyRequestsException(_) => ErrorCode::RateLimited,
                InvokeError::RequestTooLargeException(_)
                | InvokeError::SerializedRequestEntityTooLargeException(_) => {
                    ErrorCode::PayloadTooLarge
                }
                InvokeError::InvalidParameterValueException(_)
                | InvokeError::InvalidRequestContentException(_)
                | InvokeError::UnsupportedMediaTypeException(_) => ErrorCode::BadRequest,
                _ if error.code() == Some("AccessDeniedException") => ErrorCode::Forbidden,
                _ => match service.raw().status().as_u16() {
                    429 => ErrorCode::RateLimited,
                    403 => ErrorCode::Forbidden,
                    404 => ErrorCode::Unavailable,
                    400 | 413 => ErrorCode::BadRequest,
                    _ => ErrorCode::Unavailable,
                },
            },
            _ => ErrorCode::Unavailable,
        };
        let detail = match (error.code(), error.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            _ => error_chain(error),
        };
        Failure {
            error: RemoteError::new(code, format!("invoking '{function}' failed: {detail}")),
            retryable,
            answered: false,
        }
    }
}

impl Connector for LambdaTransport {
    fn describe(&self) -> String {
        match &self.inner.config.target {
            FunctionTarget::Name(name) => format!("lambda:{name}"),
            FunctionTarget::Arn(arn) => format!("lambda:{arn}"),
            FunctionTarget::Prefix(prefix) => format!("lambda:{prefix}*"),
        }
    }

    fn connect(
        &self,
        config: ClientConfig,
    ) -> BoxFuture<'_, Result<Arc<dyn Connection>, ConnectError>> {
        Box::pin(async move {
            // No connection to open: make the SDK client now, so the first call does not pay
            // for loading credentials.
            self.client().await;
            Ok(Arc::new(LambdaConnection {
                transport: self.clone(),
                config,
                next_call_id: AtomicU64::new(1),
            }) as Arc<dyn Connection>)
        })
    }
}

impl From<LambdaTransport> for Transport {
    fn from(transport: LambdaTransport) -> Self {
        Transport::Custom(CustomTransport::from(transport))
    }
}

/// A client's "connection" to Lambda: every call is an Invoke request.
pub struct LambdaConnection {
    transport: LambdaTransport,
    config: ClientConfig,
    next_call_id: AtomicU64,
}

impl fmt::Debug for LambdaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LambdaConnection")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl Connection for LambdaConnection {
    fn encoding(&self) -> Encoding {
        Encoding::Json
    }

    fn invoke<'a>(
        &'a self,
        actor_id: &'a str,
        method: &'a str,
        args: Payload,
    ) -> BoxFuture<'a, Result<Payload, RemoteError>> {
        let call_id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        Box::pin(
            self.transport
                .call(actor_id, method, args, &self.config, call_id),
        )
    }

    fn open_stream<'a>(
        &'a self,
        _actor_id: &'a str,
        method: &'a str,
        _args: Payload,
    ) -> BoxFuture<'a, Result<PayloadStream, RemoteError>> {
        Box::pin(std::future::ready(Err(RemoteError::bad_request(format!(
            "'{method}' is a stream method: streams need a WebSocket or TCP connection, a Lambda invocation has one answer"
        )))))
    }
}

#[derive(Debug, Default)]
struct HealthRecord {
    consecutive_failures: u32,
    total_requests: u64,
    total_failures: u64,
    last_success: Option<SystemTime>,
    last_failure: Option<SystemTime>,
    last_error: Option<String>,
}

impl HealthRecord {
    fn report(&self, function: &str) -> TargetHealth {
        TargetHealth {
            function: function.to_owned(),
            healthy: self.consecutive_failures < UNHEALTHY_AFTER,
            consecutive_failures: self.consecutive_failures,
            total_requests: self.total_requests,
            total_failures: self.total_failures,
            error_rate: if self.total_requests == 0 {
                0.0
            } else {
                self.total_failures as f64 / self.total_requests as f64
            },
            last_success_at: self.last_success.map(epoch_millis),
            last_failure_at: self.last_failure.map(epoch_millis),
            last_error: self.last_error.clone(),
        }
    }
}

/// How one function has been answering (every Invoke request counts, retries included).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetHealth {
    /// The function's name or ARN, as called.
    pub function: String,
    /// False after [`UNHEALTHY_AFTER`] consecutive failures, until the next success.
    pub healthy: bool,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Invoke requests sent.
    pub total_requests: u64,
    /// Of those, the ones that failed (an answer carrying the actor's error is not a failure).
    pub total_failures: u64,
    /// `total_failures / total_requests` (0 before any request).
    pub error_rate: f64,
    /// When a request last succeeded, in milliseconds since the Unix epoch.
    pub last_success_at: Option<u64>,
    /// When a request last failed, in milliseconds since the Unix epoch.
    pub last_failure_at: Option<u64>,
    /// The last failure's code and message.
    pub last_error: Option<String>,
}

/// The health of every function a [`LambdaTransport`] called; serialise it for a health endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// Whether every target is healthy.
    pub healthy: bool,
    /// The targets, by function.
    pub targets: Vec<TargetHealth>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(error: ConfigError) -> &'static str {
        match error {
            ConfigError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let cases: Vec<(LambdaTransportBuilder, &str)> = vec![
            (LambdaTransport::function(""), "function"),
            (LambdaTransport::function("has space"), "function"),
            (LambdaTransport::function("x".repeat(65)), "function"),
            (LambdaTransport::arn("arn:aws:s3:::bucket"), "arn"),
            (
                LambdaTransport::arn("arn:aws:lambda:us-east-1:123:function:f"),
                "arn",
            ),
            (
                LambdaTransport::arn("arn:aws:lambda:us-east-1:123456789012:function:f")
                    .region("eu-west-1"),
                "region",
            ),
            (LambdaTransport::prefix(""), "prefix"),
            (LambdaTransport::function("f").region("US East"), "region"),
            (LambdaTransport::function("f").qualifier("a b"), "qualifier"),
            (
                LambdaTransport::function("f").connect_timeout(Duration::ZERO),
                "connect_timeout",
            ),
            (
                LambdaTransport::function("f").read_timeout(Duration::ZERO),
                "read_timeout",
            ),
            (
                LambdaTransport::function("f").endpoint_url("localhost:9000"),
                "endpoint_url",
            ),
            (
                LambdaTransport::function("f").retry(RetryPolicy {
                    max_attempts: 0,
                    ..RetryPolicy::default()
                }),
                "max_attempts",
            ),
        ];
        for (builder, field) in cases {
            let described = format!("{builder:?}");
            assert_eq!(field_of(builder.build().unwrap_err()), field, "{described}");
        }
    }

    #[test]
    fn valid_settings_build() {
        let arn = "arn:aws:lambda:eu-west-1:123456789012:function:counter:live";
        let transport = LambdaTransport::arn(arn).build().unwrap();
        assert_eq!(transport.inner.config.region.as_deref(), Some("eu-west-1"));
        LambdaTransport::function("counter")
            .qualifier("$LATEST")
            .invocation_type(InvocationType::Event)
            .build()
            .unwrap();
        let prefixed = LambdaTransport::prefix("trebuchet-").build().unwrap();
        assert_eq!(
            prefixed.function_for("counter").unwrap(),
            "trebuchet-counter"
        );
        let error = prefixed.function_for("no spaces allowed").unwrap_err();
        assert_eq!(error.code, ErrorCode::UnknownActor);
    }

    #[test]
    fn three_consecutive_failures_make_a_target_unhealthy_until_a_success() {
        let transport = LambdaTransport::function("f").build().unwrap();
        let error = RemoteError::unavailable("down");
        for failures in 1..=3 {
            transport.record("f", false, Some(&error));
            assert_eq!(transport.health_of("f").unwrap().healthy, failures < 3);
        }
        let report = transport.health();
        assert!(!report.healthy);
        assert_eq!(report.targets[0].total_failures, 3);
        transport.record("f", true, None);
        let health = transport.health_of("f").unwrap();
        assert!(health.healthy);
        assert_eq!((health.total_requests, health.error_rate), (4, 0.75));
        let json = serde_json::to_value(transport.health()).unwrap();
        assert_eq!(json["targets"][0]["consecutiveFailures"], 0);
    }
}
