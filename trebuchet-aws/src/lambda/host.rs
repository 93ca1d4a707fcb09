//! The Lambda host: exposed actors (behind their middleware) as a Lambda function.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::encodings::Body;
use base64::Engine;
use http::HeaderValue;
use lambda_runtime::{LambdaEvent, service_fn};
use serde::Deserialize;
use serde_json::value::RawValue;
use tower::{Layer, Service, ServiceExt};
use trebuchet::codec;
use trebuchet::middleware::Gateway;
use trebuchet::protocol::{Envelope, Invocation, Response};
use trebuchet::{Call, ConnectionInfo, Encoding, ErrorCode, Metadata, Payload, RemoteError, Reply};

/// Lambda's limit on a synchronous request or response payload (6 MB).
pub const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

/// What an actor can know of the Lambda invocation it runs in: from its methods,
/// [`CloudLambdaContext::current`]; from middleware, [`CloudLambdaContext::of`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudLambdaContext {
    /// The invocation's request id.
    pub request_id: String,
    /// When Lambda stops the invocation.
    pub deadline: SystemTime,
    /// The ARN the function was invoked by (with its qualifier, if any).
    pub function_arn: String,
    /// Whether this is the first invocation served by this instance.
    pub cold_start: bool,
}

tokio::task_local! {
    static CURRENT: CloudLambdaContext;
}

impl CloudLambdaContext {
    /// The context of the invocation being served on this task, if any.
    pub fn current() -> Option<CloudLambdaContext> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The context of `call`, when it came through a [`LambdaHost`].
    pub fn of(call: &Call) -> Option<&CloudLambdaContext> {
        call.extensions.get()
    }

    /// The time left until the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    fn from_runtime(context: &lambda_runtime::Context, cold_start: bool) -> Self {
        CloudLambdaContext {
            request_id: context.request_id.clone(),
            deadline: deadline_from_millis(context.deadline, SystemTime::now()),
            function_arn: context.invoked_function_arn.clone(),
            cold_start,
        }
    }
}

/// Lambda gives the deadline in milliseconds since the Unix epoch. A value before 2001 cannot be
/// one: some local emulators (cargo-lambda) send the time limit instead, so such a value is read
/// as milliseconds from `now`.
fn deadline_from_millis(millis: u64, now: SystemTime) -> SystemTime {
    const EPOCH_MILLIS_2001: u64 = 978_307_200_000;
    if millis < EPOCH_MILLIS_2001 {
        now + Duration::from_millis(millis)
    } else {
        UNIX_EPOCH + Duration::from_millis(millis)
    }
}

/// Serves `gateway` (its actors and middleware) as this process's Lambda function, until the
/// runtime stops it. See the [module documentation](super) for the events it accepts.
///
/// ```no_run
/// # use trebuchet::{ActorSystem, middleware::Gateway};
/// # async fn run(system: ActorSystem) -> Result<(), lambda_runtime::Error> {
/// trebuchet_aws::lambda::serve(Gateway::new(system)).await
/// # }
/// ```
pub async fn serve<L>(gateway: Gateway<L>) -> Result<(), lambda_runtime::Error>
where
    L: Layer<trebuchet::ActorService>,
    L::Service:
        Service<Call, Response = Reply, Error = RemoteError> + Clone + Send + Sync + 'static,
    <L::Service as Service<Call>>::Future: Send + 'static,
{
    let host = Arc::new(LambdaHost::new(gateway.service()));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Box<RawValue>>| {
        let host = Arc::clone(&host);
        async move { Ok::<_, std::convert::Infallible>(host.handle_runtime_event(event).await) }
    }))
    .await
}

/// Runs `init` — what the function does before it can take invocations: read its
/// configuration, make its clients and stores, expose its actors — then serves the gateway it
/// makes, like [`serve`].
///
/// If `init` fails, the error is logged and the function still takes invocations: it fails each
/// at once with a function error (`errorType` `Runtime.InitError`) carrying the init error's
/// message, so a caller learns why at once instead of waiting for its timeout. The init error is
/// returned when the runtime stops. (The Runtime API's `/runtime/init/error` would have Lambda
/// fail the waiting invocation, but `cargo lambda watch` answers it as a success, and to
/// whichever function's caller it finds first.)
///
/// ```no_run
/// # use trebuchet::{ActorSystem, middleware::Gateway};
/// # async fn run() -> Result<(), lambda_runtime::Error> {
/// trebuchet_aws::lambda::serve_with_init(async {
///     let store = trebuchet_aws::DynamoDbStateStore::from_env().await?;
///     let system = ActorSystem::new();
///     // system.expose("counter", …)?;
///     # drop(store);
///     Ok::<_, trebuchet_aws::ConfigError>(Gateway::new(system))
/// })
/// .await
/// # }
/// ```
pub async fn serve_with_init<F, E, L>(init: F) -> Result<(), lambda_runtime::Error>
where
    F: Future<Output = Result<Gateway<L>, E>>,
    E: Into<lambda_runtime::Error>,
    L: Layer<trebuchet::ActorService>,
    L::Service:
        Service<Call, Response = Reply, Error = RemoteError> + Clone + Send + Sync + 'static,
    <L::Service as Service<Call>>::Future: Send + 'static,
{
    let error = match init.await {
        Ok(gateway) => return serve(gateway).await,
        Err(error) => error.into(),
    };
    let message = crate::error_chain(&*error);
    tracing::error!(error = %message, "the function's init failed: every invocation fails with it");
    let diagnostic = lambda_runtime::Diagnostic {
        error_type: "Runtime.InitError".to_owned(),
        error_message: format!("the function's init failed: {message}"),
    };
    let stopped = lambda_runtime::run(service_fn(move |_: LambdaEvent<serde::de::IgnoredAny>| {
        std::future::ready(Err::<(), _>(diagnostic.clone()))
    }))
    .await;
    if let Err(runtime) = stopped {
        tracing::error!(error = %crate::error_chain(&*runtime), "the Lambda runtime stopped");
    }
    Err(error)
}

/// Turns Lambda events into calls of a service (the stack of a [`Gateway`]) and its answers into
/// Lambda responses. [`serve`] runs one under the Lambda runtime; tests and other runtimes can
/// call [`handle`](Self::handle) directly.
pub struct LambdaHost<S> {
    service: S,
    deadline_margin: Duration,
    served: AtomicBool,
}

impl<S> LambdaHost<S>
where
    S: Service<Call, Response = Reply, Error = RemoteError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    /// A host of `service`, with a deadline margin of 250 ms.
    pub fn new(service: S) -> Self {
        LambdaHost {
            service,
            deadline_margin: Duration::from_millis(250),
            served: AtomicBool::new(false),
        }
    }

    /// How long before the invocation's deadline a call must be finished (default 250 ms): a
    /// call that would run past `deadline - margin` fails with `timeout`, so the function always
    /// answers, and a call that cannot start before it is not started. (State writes are single
    /// conditional writes: a call stopped at the deadline has either saved or not, never half.)
    pub fn with_deadline_margin(mut self, margin: Duration) -> Self {
        self.deadline_margin = margin;
        self
    }

    async fn handle_runtime_event(&self, event: LambdaEvent<Box<RawValue>>) -> Box<RawValue> {
        let cold_start = !self.served.swap(true, Ordering::Relaxed);
        let context = CloudLambdaContext::from_runtime(&event.context, cold_start);
        self.handle(&event.payload, context).await
    }

    /// Answers one event (its JSON payload) received with `context`.
    pub async fn handle(&self, payload: &RawValue, context: CloudLambdaContext) -> Box<RawValue> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(rename = "type")]
            kind: Option<serde::de::IgnoredAny>,
            request_context: Option<serde::de::IgnoredAny>,
        }
        match serde_json::from_str::<Probe>(payload.get()) {
            Ok(Probe {
                kind: None,
                request_context: Some(_),
            }) => self.handle_http(payload, context).await,
            _ => self.handle_envelope(payload, context).await,
        }
    }

    /// A direct Invoke: one `invocation` envelope in, one `response` envelope out.
    async fn handle_envelope(
        &self,
        payload: &RawValue,
        context: CloudLambdaContext,
    ) -> Box<RawValue> {
        let response = match codec::decode_bytes(payload.get().as_bytes(), Encoding::Json) {
            Ok(Envelope::Invocation(invocation)) => {
                let call_id = Some(invocation.call_id);
                let connection = ConnectionInfo::default();
                let outcome = self.run(invocation, connection, context).await;
                Response { call_id, outcome }
            }
            Ok(other) => Response {
                call_id: None,
                outcome: Err(RemoteError::bad_request(format!(
                    "a Lambda function takes `invocation` envelopes, not `{}`",
                    other.kind()
                ))),
            },
            Err(error) => Response {
                call_id: error.call_id,
                outcome: Err(error.to_remote_error()),
            },
        };
        let frame = codec::encode_or_internal(&Envelope::Response(response), Encoding::Json);
        raw_json(String::from_utf8_lossy(&frame.data).into_owned())
    }

    /// An API Gateway HTTP API (v2) request: `POST /{actorId}/{method}` with the arguments as the
    /// JSON body.
    async fn handle_http(&self, payload: &RawValue, context: CloudLambdaContext) -> Box<RawValue> {
        let response = match serde_json::from_str::<ApiGatewayV2httpRequest>(payload.get()) {
            Ok(request) => self.http_call(request, context).await,
            Err(error) => http_error(&RemoteError::bad_request(format!(
                "not an API Gateway HTTP API request: {error}"
            ))),
        };
        raw_json(serde_json::to_string(&response).unwrap_or_default())
    }

    async fn http_call(
        &self,
        request: ApiGatewayV2httpRequest,
        context: CloudLambdaContext,
    ) -> ApiGatewayV2httpResponse {
        if request.request_context.http.method != http::Method::POST {
            let mut response = http_error(&RemoteError::bad_request(
                "actors are called with POST /{actorId}/{method}",
            ));
            response.status_code = 405;
            response
                .headers
                .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let path = request
            .raw_path
            .clone()
            .or_else(|| request.request_context.http.path.clone())
            .unwrap_or_default();
        let (actor_id, method) = match (
            request.path_parameters.get("actorId"),
            request.path_parameters.get("method"),
        ) {
            (Some(actor), Some(method)) => (actor.clone(), method.clone()),
            _ => {
                // Without route parameters: the last two segments (a stage may come first).
                let mut segments = path.rsplit('/').filter(|segment| !segment.is_empty());
                match (segments.next(), segments.next()) {
                    (Some(method), Some(actor)) => (actor.to_owned(), method.to_owned()),
                    _ => {
                        return http_error(&RemoteError::new(
                            ErrorCode::UnknownActor,
                            format!(
                                "'{}' is not /{{actorId}}/{{method}}",
                                trebuchet::quoted::name(&path)
                            ),
                        ));
                    }
                }
            }
        };
        let body = match (request.body.as_deref(), request.is_base64_encoded) {
            (None, _) => "{}".to_owned(),
            (Some(body), false) if body.trim().is_empty() => "{}".to_owned(),
            (Some(body), false) => body.to_owned(),
            (Some(body), true) => match base64::engine::general_purpose::STANDARD
                .decode(body)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
            {
                Some(body) if body.trim().is_empty() => "{}".to_owned(),
                Some(body) => body,
                None => {
                    return http_error(&RemoteError::bad_request(
                        "the body is not base64-encoded UTF-8 text",
                    ));
                }
            },
        };
        let args = match Payload::from_json_text(&body) {
            Ok(args) => args,
            Err(error) => {
                return http_error(&RemoteError::bad_request(format!(
                    "the body is not a JSON arguments object: {error}"
                )));
            }
        };
        let mut metadata = Metadata::new();
        if let Some(traceparent) = request
            .headers
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
        {
            metadata.insert("traceparent".to_owned(), traceparent.to_owned());
        }
        let mut connection = ConnectionInfo::default();
        connection.peer_addr = request
            .request_context
            .http
            .source_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 0));
        let uri = match request.raw_query_string.as_deref() {
            Some(query) if !query.is_empty() => format!("{path}?{query}"),
            _ => path.clone(),
        };
        connection.uri = uri.parse().ok();
        connection.headers = request.headers;
        let invocation = Invocation {
            call_id: 0,
            actor_id,
            method,
            args,
            metadata,
        };
        match self.run(invocation, connection, context).await {
            Ok(result) => match result.as_json_text() {
                Some(text) => {
                    let mut response = ApiGatewayV2httpResponse::default();
                    response.status_code = 200;
                    response.headers.insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response.body = Some(Body::Text(text.to_owned()));
                    response
                }
                None => http_error(&RemoteError::internal("the result is not JSON")),
            },
            Err(error) => http_error(&error),
        }
    }

    /// Runs one invocation through the service within the deadline.
    async fn run(
        &self,
        invocation: Invocation,
        mut connection: ConnectionInfo,
        context: CloudLambdaContext,
    ) -> Result<Payload, RemoteError> {
        if invocation.args.encoding() != Encoding::Json {
            return Err(RemoteError::bad_request("Lambda payloads are JSON"));
        }
        let remaining = context.remaining();
        let Some(budget) = remaining.checked_sub(self.deadline_margin) else {
            return Err(RemoteError::timeout(format!(
                "only {remaining:?} left before the function's deadline: the call was not started"
            )));
        };
        connection.transport = "lambda";
        let mut call = Call::new(invocation, Arc::new(connection));
        call.extensions.insert(context.clone());
        let service = self.service.clone();
        let reply = CURRENT.scope(context, service.oneshot(call));
        match tokio::time::timeout(budget, reply).await {
            Err(_) => Err(RemoteError::timeout(format!(
                "the call would outlive the function's deadline (it had {budget:?})"
            ))),
            Ok(Ok(Reply::Value(result))) if result.len() > MAX_PAYLOAD => Err(RemoteError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the result is {} bytes, over Lambda's {MAX_PAYLOAD}-byte limit",
                    result.len()
                ),
            )),
            Ok(Ok(Reply::Value(result))) => Ok(result),
            Ok(Ok(Reply::Stream(_))) => Err(RemoteError::bad_request(
                "stream methods need a WebSocket or TCP connection; a Lambda invocation has one answer",
            )),
            Ok(Err(error)) => Err(error),
        }
    }
}

/// The HTTP status an error code is answered with on API Gateway.
///
/// `bad_request` 400 · `unauthenticated` 401 · `forbidden` 403 · `unknown_actor`,
/// `unknown_method` 404 · `conflict` 409 · `payload_too_large` 413 · `actor_error` 422 (the
/// request was understood; the actor refused it) · `rate_limited` 429 · `internal` and unknown
/// codes 500 · `unavailable` 503 · `timeout` 504.
pub fn http_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::BadRequest => 400,
        ErrorCode::Unauthenticated => 401,
        ErrorCode::Forbidden => 403,
        ErrorCode::UnknownActor | ErrorCode::UnknownMethod => 404,
        ErrorCode::Conflict => 409,
        ErrorCode::PayloadTooLarge => 413,
        ErrorCode::ActorError => 422,
        ErrorCode::RateLimited => 429,
        ErrorCode::Unavailable => 503,
        ErrorCode::Timeout => 504,
        ErrorCode::Internal | ErrorCode::Unknown => 500,
    }
}

/// `{"error": {...}}` with the error's status; `Retry-After` for `rate_limited`.
fn http_error(error: &RemoteError) -> ApiGatewayV2httpResponse {
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = i64::from(http_status(error.code));
    response.headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if error.code == ErrorCode::RateLimited
        && let Some(millis) = error
            .data
            .as_ref()
            .and_then(|data| data.decode::<serde_json::Value>().ok())
            .and_then(|data| data.get("retryAfterMs")?.as_u64())
    {
        response.headers.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(millis.div_ceil(1000).max(1)),
        );
    }
    let mut body = serde_json::json!({ "code": error.code, "message": error.message });
    if let Some(data) = error
        .data
        .as_ref()
        .and_then(|data| data.decode::<serde_json::Value>().ok())
    {
        body["data"] = data;
    }
    response.body = Some(Body::Text(serde_json::json!({ "error": body }).to_string()));
    response
}

fn raw_json(text: String) -> Box<RawValue> {
    RawValue::from_string(text)
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("`null` is JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_epoch_millis_or_a_time_limit() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            deadline_from_millis(1_800_000_003_000, now),
            now + Duration::from_secs(3)
        );
        assert_eq!(
            deadline_from_millis(600_000, now),
            now + Duration::from_secs(600)
        );
    }

    #[test]
    fn error_codes_map_to_http_statuses() {
        let pairs = [
            (ErrorCode::BadRequest, 400),
            (ErrorCode::Unauthenticated, 401),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::UnknownActor, 404),
            (ErrorCode::UnknownMethod, 404),
            (ErrorCode::Conflict, 409),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::ActorError, 422),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::Internal, 500),
            (ErrorCode::Unavailable, 503),
            (ErrorCode::Timeout, 504),
        ];
        for (code, status) in pairs {
            assert_eq!(http_status(code), status, "{code}");
        }
    }
}
