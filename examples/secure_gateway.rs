//! A gateway with JWT authentication, role-based authorization and rate limiting in front of the
//! counter, called over WebSocket by three callers: a viewer, a player and a stranger.
//!
//! `cargo run --example secure_gateway`

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use trebuchet::middleware::{
    AuthenticationLayer, AuthorizationLayer, Gateway, Jwt, RateLimitLayer, Rbac, TraceLayer,
};
use trebuchet::{ActorSystem, ClientConfig, RemoteError, Transport, distributed_actor};

/// A counter shared by all its callers.
#[distributed_actor]
pub trait Counter {
    /// Adds `by` and returns the new value.
    async fn increment(&self, by: u64) -> Result<u64, RemoteError>;
    /// The current value.
    async fn get(&self) -> Result<u64, RemoteError>;
}

#[derive(Default)]
struct MemoryCounter(AtomicU64);

impl Counter for MemoryCounter {
    async fn increment(&self, by: u64) -> Result<u64, RemoteError> {
        Ok(self.0.fetch_add(by, Ordering::SeqCst) + by)
    }
    async fn get(&self) -> Result<u64, RemoteError> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}

const SECRET: &[u8] = b"demo secret: use a real key in production";

/// What an identity provider would issue.
fn token(subject: &str, roles: &[&str]) -> anyhow::Result<String> {
    let expires = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let claims =
        serde_json::json!({"sub": subject, "roles": roles, "exp": expires, "aud": "counter-app"});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )?)
}

async fn counter_as(url: &str, token: Option<String>) -> anyhow::Result<CounterClient> {
    let mut config = ClientConfig::default();
    if let Some(token) = token {
        config
            .metadata
            .insert("authorization".into(), format!("Bearer {token}"));
    }
    let client = ActorSystem::new()
        .connect_with(Transport::WebSocket(url.to_owned()), config)
        .await?;
    Ok(client.actor("counter"))
}

fn outcome<T: std::fmt::Debug>(result: Result<T, RemoteError>) -> String {
    match result {
        Ok(value) => format!("{value:?}"),
        Err(error) => format!("refused: {error}"),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // Order matters: the first layer sees a call first. Authentication comes before the layers
    // that need to know who is calling; a call it refuses never reaches them.
    let gateway = Gateway::new(ActorSystem::new())
        .expose("counter", MemoryCounter::default().into_actor())?
        .layer(TraceLayer::new())
        .layer(AuthenticationLayer::new(
            Jwt::hs256(SECRET).audience(&["counter-app"]),
        ))
        .layer(AuthorizationLayer::new(
            Rbac::new()
                .allow("viewer", "counter", "get")
                .allow("player", "counter", "*"),
        ))
        .layer(RateLimitLayer::per_second(NonZeroU32::new(5).unwrap()));
    let server = gateway.serve_websocket("127.0.0.1:0".parse()?).await?;
    println!("gateway at {}", server.url());

    let player = counter_as(server.url(), Some(token("pat", &["player"])?)).await?;
    let viewer = counter_as(server.url(), Some(token("vic", &["viewer"])?)).await?;
    let stranger = counter_as(server.url(), None).await?;

    println!(
        "player   increment(2) -> {}",
        outcome(player.increment(2).await)
    );
    println!("viewer   get()        -> {}", outcome(viewer.get().await));
    println!(
        "viewer   increment(1) -> {}",
        outcome(viewer.increment(1).await)
    );
    println!("stranger get()        -> {}", outcome(stranger.get().await));
    for attempt in 1..=6 {
        println!(
            "player   get() #{attempt}     -> {}",
            outcome(player.get().await)
        );
    }

    server.shutdown().await;
    Ok(())
}
