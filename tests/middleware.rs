//! Gateway middleware over real sockets: authentication, authorization, rate limiting,
//! validation, and the order of the chain.

mod common;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use trebuchet::middleware::*;
use trebuchet::{ActorSystem, Call, ClientConfig, ErrorCode, Metadata, ServerHandle, Transport};

const SECRET: &[u8] = b"test secret";

fn system() -> ActorSystem {
    let system = ActorSystem::new();
    system
        .expose("counter", MemoryCounter::default().into_actor())
        .unwrap();
    system
        .expose("probe", ProbeActor::default().into_actor())
        .unwrap();
    system
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str, roles: &[&str], exp: u64, aud: &str) -> String {
    let claims = json!({"sub": sub, "roles": roles, "exp": exp, "aud": aud, "iss": "tests"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

async fn counter_with(server: &ServerHandle, metadata: &[(&str, &str)]) -> CounterClient {
    let mut config = ClientConfig::default();
    config.metadata = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect::<Metadata>();
    let client = ActorSystem::new()
        .connect_with(Transport::WebSocket(server.url().into()), config)
        .await
        .unwrap();
    client.actor("counter")
}

fn code_of(error: CounterError) -> ErrorCode {
    match error {
        CounterError::Remote(remote) => remote.code,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[tokio::test]
async fn api_keys_from_metadata() {
    let keys = ApiKeys::new().key("k1", Principal::new("alice", ["player"]));
    let server = Gateway::new(system())
        .layer(AuthenticationLayer::new(keys))
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let anonymous = counter_with(&server, &[]).await;
    assert_eq!(
        code_of(anonymous.get().await.unwrap_err()),
        ErrorCode::Unauthenticated
    );
    let wrong = counter_with(&server, &[("x-api-key", "nope")]).await;
    assert_eq!(
        code_of(wrong.get().await.unwrap_err()),
        ErrorCode::Unauthenticated
    );
    let right = counter_with(&server, &[("authorization", "ApiKey k1")]).await;
    assert_eq!(right.increment(2).await.unwrap(), 2);
}

#[tokio::test]
async fn api_keys_from_an_async_lookup() {
    let keys = ApiKeys::new()
        .lookup(|key| async move { (key == "from-db").then(|| Principal::new("bob", ["player"])) });
    let server = Gateway::new(system())
        .layer(AuthenticationLayer::new(keys))
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let counter = counter_with(&server, &[("x-api-key", "from-db")]).await;
    assert_eq!(counter.get().await.unwrap(), 0);
}

#[tokio::test]
async fn jwt_tokens_are_checked() {
    let jwt = Jwt::hs256(SECRET)
        .audience(&["trebuchet"])
        .issuer(&["tests"]);
    let server = Gateway::new(system())
        .layer(AuthenticationLayer::new(jwt))
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let good = format!(
        "Bearer {}",
        token("alice", &["player"], now() + 600, "trebuchet")
    );
    assert_eq!(
        counter_with(&server, &[("authorization", &good)])
            .await
            .get()
            .await
            .unwrap(),
        0
    );
    let expired = format!(
        "Bearer {}",
        token("alice", &["player"], now() - 600, "trebuchet")
    );
    let error = counter_with(&server, &[("authorization", &expired)])
        .await
        .get()
        .await
        .unwrap_err();
    assert_eq!(code_of(error), ErrorCode::Unauthenticated);
    let other_audience = format!(
        "Bearer {}",
        token("alice", &["player"], now() + 600, "elsewhere")
    );
    let error = counter_with(&server, &[("authorization", &other_audience)])
        .await
        .get()
        .await
        .unwrap_err();
    assert_eq!(code_of(error), ErrorCode::Unauthenticated);
    let forged = format!(
        "Bearer {}x",
        token("alice", &["player"], now() + 600, "trebuchet")
    );
    let error = counter_with(&server, &[("authorization", &forged)])
        .await
        .get()
        .await
        .unwrap_err();
    assert_eq!(code_of(error), ErrorCode::Unauthenticated);
}

/// A browser authenticates once per connection: in the upgrade request's header or query.
#[tokio::test]
async fn websocket_upgrade_credentials() {
    let keys = ApiKeys::new().key("k1", Principal::new("alice", ["player"]));
    let server = Gateway::new(system())
        .layer(AuthenticationLayer::new(keys))
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let call = json!({"type":"invocation","callId":1,"actorId":"counter","method":"get","args":{}})
        .to_string();

    let mut request = server.url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", http::HeaderValue::from_static("ApiKey k1"));
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket.send(Message::text(call.clone())).await.unwrap();
    let answer: Value =
        serde_json::from_str(socket.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(answer["result"], 0, "{answer}");

    let url = format!("{}?api_key=k1", server.url());
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    socket.send(Message::text(call.clone())).await.unwrap();
    let answer: Value =
        serde_json::from_str(socket.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(answer["result"], 0, "{answer}");

    let (mut socket, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    socket.send(Message::text(call)).await.unwrap();
    let answer: Value =
        serde_json::from_str(socket.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(answer["error"]["code"], "unauthenticated", "{answer}");
}

#[tokio::test]
async fn roles_decide_what_a_principal_may_call() {
    let keys = ApiKeys::new()
        .key("viewer", Principal::new("v", ["viewer"]))
        .key("player", Principal::new("p", ["player", "viewer"]))
        .key("banned", Principal::new("b", ["player", "banned"]));
    let rules = Rbac::new()
        .allow("viewer", "counter", "get")
        .allow("player", "counter", "*")
        .deny("banned", "*", "*");
    let server = Gateway::new(system())
        .layer(AuthenticationLayer::new(keys))
        .layer(AuthorizationLayer::new(rules))
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let viewer = counter_with(&server, &[("x-api-key", "viewer")]).await;
    assert_eq!(viewer.get().await.unwrap(), 0);
    assert_eq!(
        code_of(viewer.increment(1).await.unwrap_err()),
        ErrorCode::Forbidden
    );
    let player = counter_with(&server, &[("x-api-key", "player")]).await;
    assert_eq!(player.increment(1).await.unwrap(), 1);
    let banned = counter_with(&server, &[("x-api-key", "banned")]).await;
    assert_eq!(
        code_of(banned.get().await.unwrap_err()),
        ErrorCode::Forbidden,
        "deny wins"
    );
}

#[tokio::test]
async fn anonymous_callers_have_the_anonymous_role() {
    let keys = ApiKeys::new().key("player", Principal::new("p", ["player"]));
    let rules = Rbac::new()
        .allow(ANONYMOUS_ROLE, "counter", "get")
        .allow("player", "*", "*");
    let server = Gateway::new(system())
        .layer(AuthenticationLayer::allow_anonymous(keys))
        .layer(AuthorizationLayer::new(rules))
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let anonymous = counter_with(&server, &[]).await;
    assert_eq!(anonymous.get().await.unwrap(), 0);
    assert_eq!(
        code_of(anonymous.increment(1).await.unwrap_err()),
        ErrorCode::Forbidden
    );
}

#[tokio::test]
async fn each_principal_has_its_own_rate_limit() {
    let keys = ApiKeys::new()
        .key("a", Principal::new("a", ["player"]))
        .key("b", Principal::new("b", ["player"]));
    let server = Gateway::new(system())
        .layer(AuthenticationLayer::new(keys))
        .layer(RateLimitLayer::new(
            governor::Quota::per_minute(NonZeroU32::new(1).unwrap())
                .allow_burst(NonZeroU32::new(3).unwrap()),
        ))
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let a = counter_with(&server, &[("x-api-key", "a")]).await;
    for _ in 0..3 {
        a.get().await.unwrap();
    }
    match a.get().await.unwrap_err() {
        CounterError::Remote(error) => {
            assert_eq!(error.code, ErrorCode::RateLimited);
            let hint: RetryAfter = error.data.expect("a retry-after hint").decode().unwrap();
            assert!(hint.retry_after_ms > 1_000, "{hint:?}");
            assert!(error.message.contains("retry after"), "{}", error.message);
        }
        other => panic!("expected rate_limited, got {other:?}"),
    }
    let b = counter_with(&server, &[("x-api-key", "b")]).await;
    b.get().await.unwrap();
}

#[tokio::test]
async fn validation_limits_and_validators() {
    let validation = ValidationLayer::new()
        .max_args_bytes(1024)
        .max_depth(3)
        .validate("counter", "increment", |call: &Call| {
            let by: Value = call.invocation.args.decode().map_err(|e| e.to_string())?;
            match by["by"].as_u64() {
                Some(by) if by <= 100 => Ok(()),
                _ => Err("increment by at most 100".into()),
            }
        });
    let server = Gateway::new(system())
        .layer(validation)
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let mut ask = async |args: Value| -> Value {
        let call = json!({"type":"invocation","callId":1,"actorId":"counter","method":"increment","args":args});
        socket.send(Message::text(call.to_string())).await.unwrap();
        serde_json::from_str(socket.next().await.unwrap().unwrap().to_text().unwrap()).unwrap()
    };
    assert_eq!(ask(json!({"by": 5})).await["result"], 5);
    let answer = ask(json!({"by": 500})).await;
    assert_eq!(answer["error"]["code"], "bad_request");
    assert_eq!(answer["error"]["message"], "increment by at most 100");
    let answer = ask(json!({"by": 1, "pad": "x".repeat(2000)})).await;
    assert_eq!(answer["error"]["code"], "payload_too_large");
    let answer = ask(json!({"by": 1, "deep": [[[[1]]]]})).await;
    assert_eq!(answer["error"]["code"], "bad_request");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nested"),
        "{answer}"
    );
}

/// Counts the calls that reach it: to see which calls a layer before it let through.
struct Counting(Arc<AtomicU64>);

impl Check for Counting {
    fn check<'a>(
        &'a self,
        _call: &'a mut Call,
    ) -> BoxFuture<'a, Result<(), trebuchet::RemoteError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[tokio::test]
async fn a_call_rejected_by_authentication_never_reaches_the_rate_limiter() {
    let reached = Arc::new(AtomicU64::new(0));
    let keys = ApiKeys::new().key("k", Principal::new("k", ["player"]));
    let server = Gateway::new(system())
        .layer(AuthenticationLayer::new(keys))
        .layer(CheckLayer::from_check(Counting(reached.clone())))
        .layer(RateLimitLayer::new(
            governor::Quota::per_minute(NonZeroU32::new(1).unwrap())
                .allow_burst(NonZeroU32::new(2).unwrap()),
        ))
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let stranger = counter_with(&server, &[("x-api-key", "wrong")]).await;
    for _ in 0..10 {
        assert_eq!(
            code_of(stranger.get().await.unwrap_err()),
            ErrorCode::Unauthenticated
        );
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "rejected calls went past authentication"
    );
    let member = counter_with(&server, &[("x-api-key", "k")]).await;
    member.get().await.unwrap();
    member.get().await.unwrap();
    assert_eq!(reached.load(Ordering::SeqCst), 2);
    assert_eq!(
        code_of(member.get().await.unwrap_err()),
        ErrorCode::RateLimited
    );
}

#[tokio::test]
async fn the_full_stack_serves_tcp_too() {
    let keys = ApiKeys::new().key("k", Principal::new("k", ["player"]));
    let server = Gateway::new(system())
        .layer(TraceLayer::new())
        .layer(AuthenticationLayer::new(keys))
        .layer(AuthorizationLayer::new(
            Rbac::new().allow("player", "*", "*"),
        ))
        .layer(RateLimitLayer::per_second(NonZeroU32::new(1000).unwrap()))
        .layer(ValidationLayer::new().max_args_bytes(4096))
        .serve_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut config = ClientConfig::default();
    config.metadata.insert("x-api-key".into(), "k".into());
    let client = ActorSystem::new()
        .connect_with(Transport::Tcp(server.local_addr().to_string()), config)
        .await
        .unwrap();
    let counter: CounterClient = client.actor("counter");
    assert_eq!(counter.increment(3).await.unwrap(), 3);
    let items: Vec<u64> = client
        .actor::<ProbeClient>("probe")
        .count_up(3)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(items, vec![1, 2, 3]);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn signed(algorithm: jsonwebtoken::Algorithm, key: jsonwebtoken::EncodingKey, sub: &str) -> String {
    let claims = json!({"sub": sub, "roles": ["player"], "exp": now() + 600});
    jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, &key).unwrap()
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_checked_with_public_keys() {
    let rs = Jwt::rs256(include_bytes!("keys/rs256-public.pem")).unwrap();
    let es = Jwt::es256(include_bytes!("keys/es256-public.pem")).unwrap();
    let rs_key =
        jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("keys/rs256-private.pem")).unwrap();
    let es_key =
        jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!("keys/es256-private.pem")).unwrap();
    for (jwt, good, wrong) in [
        (
            rs,
            signed(jsonwebtoken::Algorithm::RS256, rs_key.clone(), "rita"),
            signed(jsonwebtoken::Algorithm::ES256, es_key.clone(), "mallory"),
        ),
        (
            es,
            signed(jsonwebtoken::Algorithm::ES256, es_key, "eve"),
            signed(jsonwebtoken::Algorithm::RS256, rs_key, "mallory"),
        ),
    ] {
        let server = Gateway::new(system())
            .layer(AuthenticationLayer::new(jwt))
            .serve_websocket("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let bearer = format!("Bearer {good}");
        assert_eq!(
            counter_with(&server, &[("authorization", &bearer)])
                .await
                .get()
                .await
                .unwrap(),
            0
        );
        let bearer = format!("Bearer {wrong}");
        let error = counter_with(&server, &[("authorization", &bearer)])
            .await
            .get()
            .await
            .unwrap_err();
        assert_eq!(code_of(error), ErrorCode::Unauthenticated);
    }
}

#[trebuchet::distributed_actor]
pub trait Relay {
    async fn relay(&self, text: String) -> Result<String, trebuchet::RemoteError>;
}

struct RelayActor {
    probe: ProbeClient,
}

impl Relay for RelayActor {
    async fn relay(&self, text: String) -> Result<String, trebuchet::RemoteError> {
        self.probe.echo(text).await.map_err(|error| match error {
            ProbeError::Remote(remote) => remote,
            other => trebuchet::RemoteError::internal(other.to_string()),
        })
    }
}

/// Records the `traceparent` of every call it sees.
struct RecordTraceparent(Arc<std::sync::Mutex<Vec<String>>>);

impl Check for RecordTraceparent {
    fn check<'a>(
        &'a self,
        call: &'a mut Call,
    ) -> BoxFuture<'a, Result<(), trebuchet::RemoteError>> {
        if let Some(traceparent) = call.invocation.metadata.get("traceparent") {
            self.0.lock().unwrap().push(traceparent.clone());
        }
        Box::pin(std::future::ready(Ok(())))
    }
}

#[tokio::test]
async fn the_trace_context_follows_a_call_to_the_next_actor() {
    // Server B: the probe, recording what trace context reaches it.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let b = Gateway::new(system())
        .layer(CheckLayer::from_check(RecordTraceparent(seen.clone())))
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Server A: a relay that calls B while handling its own call.
    let to_b = ActorSystem::new()
        .connect(Transport::WebSocket(b.url().into()))
        .await
        .unwrap();
    let a_system = ActorSystem::new();
    a_system
        .expose(
            "relay",
            RelayActor {
                probe: to_b.actor("probe"),
            }
            .into_actor(),
        )
        .unwrap();
    let a = Gateway::new(a_system)
        .layer(TraceLayer::new())
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();

    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut config = ClientConfig::default();
    config
        .metadata
        .insert("traceparent".into(), incoming.into());
    let client = ActorSystem::new()
        .connect_with(Transport::WebSocket(a.url().into()), config)
        .await
        .unwrap();
    let relay: RelayClient = client.actor("relay");
    assert_eq!(relay.relay("hi".into()).await.unwrap(), "hi");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let outgoing = TraceContext::parse(&seen[0]).expect("a valid traceparent");
    assert_eq!(
        outgoing.trace_id(),
        "0af7651916cd43dd8448eb211c80319c",
        "same trace"
    );
    assert_ne!(seen[0], incoming, "a new parent span: the relay's");
}
