//! The Lambda host and the Lambda invoke transport: end to end against the test actors running
//! under `cargo lambda watch` (state in moto's DynamoDB), and against a scripted endpoint for
//! the failures an emulator will not produce on demand.

mod common;

use std::time::{Duration, Instant, SystemTime};

use aws_sdk_lambda::primitives::Blob;
use common::aws::{TEST_ACTORS_FUNCTION, sdk_config, test_actors_transport, unique};
use common::fault::{Canned, FaultEndpoint};
use common::*;
use serde_json::{Value, json};
use trebuchet::{ActorSystem, ErrorCode, Transport};
use trebuchet_aws::lambda::{CloudLambdaContext, InvocationType, LambdaHost};
use trebuchet_aws::{LambdaTransport, RetryPolicy};

async fn lambda_client() -> trebuchet::Client {
    ActorSystem::new()
        .connect(test_actors_transport().await.into())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_of_a_hundred_increments_count_exactly_1600() {
    let counter_id = unique("counter");
    let mut counters = Vec::new();
    for _ in 0..16 {
        // A client of its own each.
        counters.push(lambda_client().await.actor::<CounterClient>(&counter_id));
    }
    increment_on_tasks(counters, 100).await;
    let counter: CounterClient = lambda_client().await.actor(&counter_id);
    assert_eq!(counter.get().await.unwrap(), 1600);
}

#[tokio::test]
async fn actors_see_their_lambda_context() {
    let inspect: InspectClient = lambda_client().await.actor("inspect");
    let info = inspect
        .invocation()
        .await
        .unwrap()
        .expect("a call in a Lambda function has a context");
    assert!(!info.request_id.is_empty());
    // (Lambda gives the invoked ARN; cargo-lambda a placeholder.)
    assert!(!info.function_arn.is_empty(), "{info:?}");
    assert!(info.remaining_ms > 0, "{info:?}");
    // Three calls over (at most) two instances: some instance serves two, and its second is warm.
    let mut infos = vec![info];
    for _ in 0..2 {
        infos.push(inspect.invocation().await.unwrap().unwrap());
    }
    assert!(infos.iter().any(|info| !info.cold_start), "{infos:?}");
    assert_ne!(infos[0].request_id, infos[1].request_id);
}

#[tokio::test]
async fn stream_methods_are_refused_with_a_clear_error() {
    let probe: ProbeClient = lambda_client().await.actor("probe");
    let error = probe.count_up(3).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::BadRequest), "{error}");
    assert!(error.to_string().contains("WebSocket or TCP"), "{error}");
}

/// A function whose init fails (`src/bin/lambda_misconfigured.rs`, whose state table variable is
/// not set) answers each invocation at once with a function error carrying the init error, and
/// keeps answering.
#[tokio::test]
async fn a_function_whose_init_fails_answers_at_once_with_the_init_error() {
    let _ = test_actors_transport().await; // (checks the emulators are up)
    let transport = LambdaTransport::function("lambda_misconfigured")
        .sdk_config(sdk_config().await)
        .build()
        .unwrap();
    let client = ActorSystem::new().connect(transport.into()).await.unwrap();
    let counter: CounterClient = client.actor(unique("counter"));
    // The first invocation may start the function's process; the ones after it show that each
    // is answered at once (a failed init used to leave them waiting for their timeout).
    let _ = counter.get().await;
    for _ in 0..2 {
        let started = Instant::now();
        let error = counter.get().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "answered after {:?}",
            started.elapsed()
        );
        assert_eq!(error.code(), Some(ErrorCode::Internal), "{error}");
        let message = error.to_string();
        assert!(message.contains("Runtime.InitError"), "{message}");
        assert!(message.contains("MISCONFIGURED_STATE_TABLE"), "{message}");
    }
}

#[tokio::test]
async fn event_invocations_return_once_accepted() {
    let transport = LambdaTransport::function(TEST_ACTORS_FUNCTION)
        .sdk_config(sdk_config().await)
        .invocation_type(InvocationType::Event)
        .build()
        .unwrap();
    let client = ActorSystem::new().connect(transport.into()).await.unwrap();
    let inspect: InspectClient = client.actor("inspect");
    inspect.touch("fire and forget".into()).await.unwrap();
}

/// Invokes the test actors' function with a raw payload, as API Gateway or another client would.
async fn invoke_raw(payload: Value) -> Value {
    let lambda = aws_sdk_lambda::Client::new(&sdk_config().await);
    let output = lambda
        .invoke()
        .function_name(TEST_ACTORS_FUNCTION)
        .payload(Blob::new(payload.to_string()))
        .send()
        .await
        .unwrap();
    assert!(output.function_error().is_none());
    serde_json::from_slice(output.payload().unwrap().as_ref()).unwrap()
}

#[tokio::test]
async fn a_malformed_envelope_gets_bad_request_and_the_function_keeps_serving() {
    let answer = invoke_raw(json!({"type": "invocation", "callId": 3, "actorId": "probe"})).await;
    assert_eq!(answer["type"], "response");
    assert_eq!(answer["callId"], 3);
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    let answer = invoke_raw(json!({"type": "cancel", "callId": 4})).await;
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    let answer = invoke_raw(json!({
        "type": "invocation", "callId": 5, "actorId": "probe", "method": "add",
        "args": {"a": "two", "b": 3}
    }))
    .await;
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    let answer = invoke_raw(json!({
        "type": "invocation", "callId": 6, "actorId": "probe", "method": "add",
        "args": {"a": 2, "b": 3}
    }))
    .await;
    assert_eq!(answer["result"], 5, "{answer}");
}

/// An API Gateway HTTP API (payload v2) event for `method` on `path`.
fn http_event(method: &str, path: &str, body: Option<&str>) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "test"},
            "requestId": "req",
            "routeKey": "$default",
            "stage": "$default",
            "time": "23/Nov/2026:10:00:00 +0000",
            "timeEpoch": 1795428000000u64
        },
        "body": body,
        "isBase64Encoded": false
    })
}

#[tokio::test]
async fn api_gateway_requests_are_answered_with_mapped_status_codes() {
    let answer = invoke_raw(http_event(
        "POST",
        "/probe/add",
        Some(r#"{"a":2,"b":3,"scale":10}"#),
    ))
    .await;
    assert_eq!(answer["statusCode"], 200, "{answer}");
    assert_eq!(answer["body"], "50");

    let counter = unique("counter");
    let answer = invoke_raw(http_event(
        "POST",
        &format!("/{counter}/increment"),
        Some(r#"{"by":4}"#),
    ))
    .await;
    assert_eq!(
        (answer["statusCode"].clone(), answer["body"].clone()),
        (json!(200), json!("4"))
    );
    // A method without arguments takes an empty body.
    let answer = invoke_raw(http_event("POST", &format!("/{counter}/get"), None)).await;
    assert_eq!(answer["body"], "4", "{answer}");

    let cases = [
        (
            http_event("POST", "/probe/add", Some("{not json")),
            400,
            "bad_request",
        ),
        (
            http_event("POST", "/probe/add", Some(r#"{"a":"x","b":1}"#)),
            400,
            "bad_request",
        ),
        (
            http_event("POST", "/ghost/echo", Some("{}")),
            404,
            "unknown_actor",
        ),
        (
            http_event("POST", "/probe/nothing", Some("{}")),
            404,
            "unknown_method",
        ),
        (
            http_event("POST", "/probe/refuse", Some(r#"{"reason":"no"}"#)),
            422,
            "actor_error",
        ),
        (
            http_event("POST", "/probe/explode", Some("{}")),
            500,
            "internal",
        ),
        (
            http_event(
                "POST",
                &format!("/{counter}/increment"),
                Some(&format!(r#"{{"by":{}}}"#, u64::MAX)),
            ),
            422,
            "actor_error",
        ),
        (http_event("GET", "/probe/echo", None), 405, "bad_request"),
        // Framework errors an actor returns through its own error type keep their status.
        (
            http_event(
                "POST",
                "/probe/fail",
                Some(r#"{"code":"conflict","message":"lost the race"}"#),
            ),
            409,
            "conflict",
        ),
        (
            http_event(
                "POST",
                "/probe/fail",
                Some(r#"{"code":"unavailable","message":"throttled"}"#),
            ),
            503,
            "unavailable",
        ),
        (
            http_event(
                "POST",
                "/probe/fail",
                Some(r#"{"code":"internal","message":"bug"}"#),
            ),
            500,
            "internal",
        ),
        (http_event("POST", "/", Some("{}")), 404, "unknown_actor"),
    ];
    for (event, status, code) in cases {
        let answer = invoke_raw(event.clone()).await;
        assert_eq!(answer["statusCode"], status, "{event} -> {answer}");
        let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], code, "{event} -> {answer}");
    }
}

// --- The host in-process: deadlines ----------------------------------------------------------

fn context(deadline_in: Duration) -> CloudLambdaContext {
    CloudLambdaContext {
        request_id: "local".into(),
        deadline: SystemTime::now() + deadline_in,
        function_arn: "arn:aws:lambda:us-east-1:123456789012:function:local".into(),
        cold_start: false,
    }
}

fn invocation(call_id: u64, method: &str, args: Value) -> Box<serde_json::value::RawValue> {
    let text = json!({"type": "invocation", "callId": call_id, "actorId": "slow", "method": method, "args": args}).to_string();
    serde_json::value::RawValue::from_string(text).unwrap()
}

#[tokio::test]
async fn a_call_that_would_outlive_the_deadline_fails_with_timeout() {
    let system = ActorSystem::new();
    system
        .expose("slow", ProbeActor::default().into_actor())
        .unwrap();
    let host = LambdaHost::new(system.service()).with_deadline_margin(Duration::from_millis(100));

    let started = Instant::now();
    let answer = host
        .handle(
            &invocation(1, "sleep_ms", json!({"ms": 1500})),
            context(Duration::from_millis(400)),
        )
        .await;
    let answer: Value = serde_json::from_str(answer.get()).unwrap();
    assert_eq!(answer["error"]["code"], "timeout", "{answer}");
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "answered at the deadline"
    );

    // Too close to the deadline to start: not run at all.
    let client = system.connect(Transport::Local).await.unwrap();
    let slow: ProbeClient = client.actor("slow");
    let calls_before = slow.count_calls().await.unwrap();
    let answer = host
        .handle(
            &invocation(2, "echo", json!({"text": "x"})),
            context(Duration::from_millis(50)),
        )
        .await;
    let answer: Value = serde_json::from_str(answer.get()).unwrap();
    assert_eq!(answer["error"]["code"], "timeout", "{answer}");
    // (`count_calls` counts `sleep_ms` and `echo` calls: the echo never ran.)
    assert_eq!(slow.count_calls().await.unwrap(), calls_before);

    // With time to spare the call runs.
    let answer = host
        .handle(
            &invocation(3, "echo", json!({"text": "x"})),
            context(Duration::from_secs(5)),
        )
        .await;
    let answer: Value = serde_json::from_str(answer.get()).unwrap();
    assert_eq!(answer["result"], "x", "{answer}");
}

/// The gateway's middleware run in the function: API Gateway's headers authenticate, and the
/// middleware errors come back with their HTTP statuses.
#[tokio::test]
async fn middleware_behind_api_gateway_answers_401_403_and_429() {
    use std::num::NonZeroU32;
    use trebuchet::middleware::{
        ApiKeys, AuthenticationLayer, AuthorizationLayer, Gateway, Principal, RateLimitLayer, Rbac,
    };
    let keys = ApiKeys::new()
        .key("player-key", Principal::new("alice", ["player"]))
        .key("guest-key", Principal::new("bob", ["guest"]));
    let gateway = Gateway::new(ActorSystem::new())
        .expose("probe", ProbeActor::default().into_actor())
        .unwrap()
        .layer(AuthenticationLayer::new(keys))
        .layer(AuthorizationLayer::new(
            Rbac::new().allow("player", "probe", "*"),
        ))
        .layer(RateLimitLayer::per_second(NonZeroU32::new(2).unwrap()));
    let host = LambdaHost::new(gateway.service());
    let call = |key: Option<&'static str>| {
        let mut event = http_event("POST", "/probe/echo", Some(r#"{"text":"hi"}"#));
        if let Some(key) = key {
            event["headers"]["x-api-key"] = json!(key);
        }
        let event = serde_json::value::RawValue::from_string(event.to_string()).unwrap();
        let host = &host;
        async move {
            let answer = host.handle(&event, context(Duration::from_secs(5))).await;
            serde_json::from_str::<Value>(answer.get()).unwrap()
        }
    };
    assert_eq!(call(None).await["statusCode"], 401);
    assert_eq!(call(Some("wrong")).await["statusCode"], 401);
    assert_eq!(call(Some("guest-key")).await["statusCode"], 403);
    let ok = call(Some("player-key")).await;
    assert_eq!(
        (ok["statusCode"].clone(), ok["body"].clone()),
        (json!(200), json!("\"hi\""))
    );
    // Two calls per second for alice: the third within the second is refused, with Retry-After.
    call(Some("player-key")).await;
    let limited = call(Some("player-key")).await;
    assert_eq!(limited["statusCode"], 429, "{limited}");
    assert!(limited["headers"]["retry-after"].is_string(), "{limited}");
}

#[test]
fn a_missing_state_table_is_a_clear_error_at_init() {
    // Run as a function, with the environment Lambda gives, on a runtime API that is not there.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lambda_counter"))
        .env_remove("STATE_TABLE")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env("AWS_LAMBDA_FUNCTION_NAME", "lambda_counter")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("STATE_TABLE"), "{stderr}");
}

// --- The invoke transport against a scripted endpoint ----------------------------------------

/// A transport to `endpoint` with quick retries (0.1 s doubling).
fn scripted_transport(endpoint: &FaultEndpoint) -> LambdaTransport {
    LambdaTransport::function("scripted")
        .region("us-east-1")
        .endpoint_url(&endpoint.url)
        .retry(RetryPolicy::new(3, Duration::from_millis(100), Duration::from_secs(2)).unwrap())
        .build()
        .unwrap()
}

async fn scripted_counter(transport: &LambdaTransport) -> CounterClient {
    // Credentials and region from the test environment; the endpoint is the transport's own.
    let _ = sdk_config().await;
    let client = ActorSystem::new()
        .connect(Transport::from(transport.clone()))
        .await
        .unwrap();
    client.actor("counter")
}

fn lambda_error(status: u16, kind: &str, message: &str) -> Canned {
    Canned::new(
        status,
        json!({"Type": "User", "message": message}).to_string(),
    )
    .header("content-type", "application/json")
    .header("x-amzn-errortype", kind)
}

fn answer(result: Value) -> Canned {
    Canned::new(
        200,
        json!({"type": "response", "callId": 1, "result": result}).to_string(),
    )
    .header("content-type", "application/json")
}

#[tokio::test]
async fn throttling_is_retried_with_growing_delays() {
    let throttled = lambda_error(429, "TooManyRequestsException", "Rate exceeded");
    let endpoint = FaultEndpoint::start(vec![throttled.clone(), throttled, answer(json!(7))]).await;
    let transport = scripted_transport(&endpoint);
    let counter = scripted_counter(&transport).await;
    assert_eq!(counter.get().await.unwrap(), 7);
    let received = endpoint.received();
    assert_eq!(received.len(), 3, "two retries");
    assert!(
        received[0].path.contains("/functions/scripted/invocations"),
        "{:?}",
        received[0].path
    );
    let first_gap = received[1].at - received[0].at;
    let second_gap = received[2].at - received[1].at;
    // Delays of 0.1 s × 2ⁿ less up to half of it: [50, 100] ms, then [100, 200] ms.
    assert!(first_gap >= Duration::from_millis(50), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(100), "{second_gap:?}");
    let health = transport.health_of("scripted").unwrap();
    assert_eq!(
        (health.total_requests, health.total_failures, health.healthy),
        (3, 2, true)
    );
}

#[tokio::test]
async fn a_missing_function_is_not_retried_and_three_failures_make_it_unhealthy() {
    let endpoint = FaultEndpoint::start(vec![lambda_error(
        404,
        "ResourceNotFoundException",
        "Function not found: arn:aws:lambda:us-east-1:123456789012:function:scripted",
    )])
    .await;
    let transport = scripted_transport(&endpoint);
    let counter = scripted_counter(&transport).await;
    for call in 1..=3 {
        let error = counter.get().await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
        assert!(
            error.to_string().contains("ResourceNotFoundException"),
            "{error}"
        );
        assert_eq!(endpoint.received().len(), call, "not retried");
        assert_eq!(transport.health_of("scripted").unwrap().healthy, call < 3);
    }
    let report = serde_json::to_value(transport.health()).unwrap();
    assert_eq!(report["healthy"], false);
    assert_eq!(report["targets"][0]["consecutiveFailures"], 3);
    assert!(report["targets"][0]["lastFailureAt"].is_u64());
}

#[tokio::test]
async fn function_errors_are_not_retried_in_either_shape() {
    let error_object =
        json!({"errorType": "Panic", "errorMessage": "the handler failed"}).to_string();
    // Lambda: 200 with X-Amz-Function-Error. cargo-lambda: 500 with the error object.
    let lambda_shape = Canned::new(200, error_object.clone())
        .header("content-type", "application/json")
        .header("x-amz-function-error", "Unhandled");
    let emulator_shape = Canned::new(500, error_object).header("content-type", "application/json");
    for shape in [lambda_shape, emulator_shape] {
        let endpoint = FaultEndpoint::start(vec![shape]).await;
        let counter = scripted_counter(&scripted_transport(&endpoint)).await;
        let error = counter.get().await.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::Internal), "{error}");
        assert!(error.to_string().contains("the handler failed"), "{error}");
        assert_eq!(
            endpoint.received().len(),
            1,
            "a function error is not retried"
        );
    }
}

#[tokio::test]
async fn service_failures_are_retried_then_reported_unavailable() {
    let endpoint =
        FaultEndpoint::start(vec![lambda_error(500, "ServiceException", "internal")]).await;
    let counter = scripted_counter(&scripted_transport(&endpoint)).await;
    let error = counter.get().await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
    assert_eq!(endpoint.received().len(), 3);
}

/// An `Event` invocation is sent as one and a 202 is taken as accepted: the call returns `()`
/// without reading a response envelope.
#[tokio::test]
async fn event_invocations_are_sent_as_events_and_a_202_is_accepted() {
    let endpoint = FaultEndpoint::start(vec![Canned::new(202, "")]).await;
    let transport = LambdaTransport::function("scripted")
        .region("us-east-1")
        .endpoint_url(&endpoint.url)
        .invocation_type(InvocationType::Event)
        .build()
        .unwrap();
    let _ = sdk_config().await;
    let client = ActorSystem::new().connect(transport.into()).await.unwrap();
    let inspect: InspectClient = client.actor("inspect");
    inspect.touch("fire and forget".into()).await.unwrap();
    let received = endpoint.received();
    assert_eq!(received.len(), 1);
    assert_eq!(
        received[0].header("x-amz-invocation-type"),
        Some("Event"),
        "{:?}",
        received[0].headers
    );
    let envelope: Value = serde_json::from_str(&received[0].body).unwrap();
    assert_eq!(
        (envelope["type"].clone(), envelope["method"].clone()),
        (json!("invocation"), json!("touch"))
    );
}

#[tokio::test]
async fn payloads_over_six_megabytes_are_refused_before_sending() {
    let endpoint = FaultEndpoint::start(vec![answer(json!("unused"))]).await;
    let transport = scripted_transport(&endpoint);
    let _ = sdk_config().await;
    let client = ActorSystem::new()
        .connect(transport.clone().into())
        .await
        .unwrap();
    let probe: ProbeClient = client.actor("probe");
    let error = probe.echo("x".repeat(7 * 1024 * 1024)).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::PayloadTooLarge), "{error}");
    assert!(endpoint.received().is_empty(), "nothing was sent");
    assert!(transport.health().targets.is_empty());
}
