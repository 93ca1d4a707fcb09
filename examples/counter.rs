//! The counter actor, called over WebSocket.
//!
//! * `cargo run --example counter` starts a server on a free port, calls the counter through the
//!   generated client stub over WebSocket (and in-process), prints what it did, and exits.
//! * `cargo run --example counter -- serve 127.0.0.1:9090` serves the actor `counter` (methods
//!   `increment(by)` and `get()`) at `ws://127.0.0.1:9090/` until Ctrl-C, for clients in any
//!   language (see docs/PROTOCOL.md), e.g. `tests/python/protocol_client.py`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use trebuchet::{ActorSystem, RemoteError, Transport, distributed_actor};

/// What can go wrong when counting.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CounterError {
    /// The counter would pass `u64::MAX`.
    #[error("the counter would overflow")]
    Overflow,
    /// The call itself failed (connection lost, timeout, …).
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// A counter shared by all its callers.
#[distributed_actor]
pub trait Counter {
    /// Adds `by` and returns the new value.
    async fn increment(&self, by: u64) -> Result<u64, CounterError>;
    /// The current value.
    async fn get(&self) -> Result<u64, CounterError>;
}

/// The actor: a plain struct. Calls run one at a time, so a load-then-store is safe.
#[derive(Default)]
struct MemoryCounter {
    value: AtomicU64,
}

impl Counter for MemoryCounter {
    async fn increment(&self, by: u64) -> Result<u64, CounterError> {
        let value = self.value.load(Ordering::Acquire);
        let value = value.checked_add(by).ok_or(CounterError::Overflow)?;
        self.value.store(value, Ordering::Release);
        Ok(value)
    }

    async fn get(&self) -> Result<u64, CounterError> {
        Ok(self.value.load(Ordering::Acquire))
    }
}

/// Works with the actor itself, an in-process reference and a remote stub alike.
async fn count_to(counter: &impl Counter, target: u64) -> Result<u64, CounterError> {
    let now = counter.get().await?;
    if now < target {
        counter.increment(target - now).await?;
    }
    counter.get().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => demo().await,
        ["serve"] => serve("127.0.0.1:9090".parse()?).await,
        ["serve", addr] => {
            serve(
                addr.parse()
                    .context("serve takes an address like 127.0.0.1:9090")?,
            )
            .await
        }
        _ => anyhow::bail!("usage: counter [serve [ADDR]]"),
    }
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let system = ActorSystem::new();
    system.expose("counter", MemoryCounter::default().into_actor())?;
    let server = system
        .serve_websocket(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    println!(
        "serving actor 'counter' at {} (Ctrl-C to stop)",
        server.url()
    );
    tokio::signal::ctrl_c().await?;
    println!("shutting down");
    server.shutdown().await;
    Ok(())
}

async fn demo() -> anyhow::Result<()> {
    let system = ActorSystem::new();
    system.expose("counter", MemoryCounter::default().into_actor())?;
    let server = system.serve_websocket("127.0.0.1:0".parse()?).await?;
    println!("server: actor 'counter' at {}", server.url());

    let client = system
        .connect(Transport::WebSocket(server.url().to_owned()))
        .await?;
    let counter: CounterClient = client.actor("counter");
    println!("websocket: increment(5) -> {}", counter.increment(5).await?);
    println!("websocket: get() -> {}", counter.get().await?);

    let calls = (0..10).map(|_| counter.increment(1));
    let results = futures_util::future::try_join_all(calls).await?;
    println!("websocket: 10 concurrent increment(1) on one connection -> {results:?}");

    match counter.increment(u64::MAX).await {
        Err(CounterError::Overflow) => {
            println!("websocket: increment(u64::MAX) -> Err(Overflow), typed")
        }
        other => anyhow::bail!("expected the typed Overflow error, got {other:?}"),
    }

    let local = system.connect(Transport::Local).await?;
    let in_process: CounterClient = local.actor("counter");
    println!(
        "local: count_to(100) -> {}",
        count_to(&in_process, 100).await?
    );
    println!(
        "websocket: get() -> {} (the same actor)",
        counter.get().await?
    );
    println!(
        "plain struct: count_to(3) -> {}",
        count_to(&MemoryCounter::default(), 3).await?
    );

    server.shutdown().await;
    println!("server stopped");
    Ok(())
}
