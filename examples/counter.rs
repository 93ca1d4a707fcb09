//! The counter actor, called over WebSocket.
//!
//! * `cargo run --example counter` starts a server on a free port, calls the counter through the
//!   generated client stub over WebSocket (and in-process), prints what it did, and exits. The
//!   count is kept in an embedded database (redb) under your local data directory, so it goes on
//!   from where it was at the next run; set `TREBUCHET_STATE_FILE` to use another file.
//! * `cargo run --example counter -- serve 127.0.0.1:9090` serves the actor `counter` (methods
//!   `increment(by)` and `get()`) at `ws://127.0.0.1:9090/` until Ctrl-C, for clients in any
//!   language (see docs/PROTOCOL.md), e.g. `tests/python/protocol_client.py`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use futures_util::StreamExt;
use trebuchet::state::{ActorStateStore, MemoryStateStore, RedbStateStore};
use trebuchet::{ActorSystem, Transport};

#[path = "shared/counter_actor.rs"]
mod counter_actor;
use counter_actor::{Counter, CounterClient, CounterError, PersistentCounter};

/// The persistent store: the default state file, or `TREBUCHET_STATE_FILE`.
fn open_store() -> anyhow::Result<Arc<dyn ActorStateStore>> {
    let path = RedbStateStore::default_path();
    let store = RedbStateStore::open(&path).with_context(|| {
        format!(
            "cannot open the state file {} (is another counter running?)",
            path.display()
        )
    })?;
    Ok(Arc::new(store))
}

/// Works with the actor itself, an in-process reference and a remote stub alike.
async fn add_twice(counter: &impl Counter, by: u64) -> Result<u64, CounterError> {
    counter.increment(by).await?;
    counter.increment(by).await
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
    let store = open_store()?;
    let system = ActorSystem::new();
    system.expose("counter", PersistentCounter::new(store).into_actor())?;
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
    let store = open_store()?;
    let system = ActorSystem::new();
    system.expose("counter", PersistentCounter::new(store).into_actor())?;
    let server = system.serve_websocket("127.0.0.1:0".parse()?).await?;
    println!("server: actor 'counter' at {}", server.url());
    println!("state:  {}", RedbStateStore::default_path().display());

    let client = system
        .connect(Transport::WebSocket(server.url().to_owned()))
        .await?;
    let counter: CounterClient = client.actor("counter");
    println!(
        "websocket: get() -> {} (kept from earlier runs)",
        counter.get().await?
    );
    let mut values = counter.observe().await?;
    println!("websocket: increment(5) -> {}", counter.increment(5).await?);

    let calls = (0..10).map(|_| counter.increment(1));
    let results = futures_util::future::try_join_all(calls).await?;
    println!("websocket: 10 concurrent increment(1) on one connection -> {results:?}");

    match counter.increment(u64::MAX).await {
        Err(CounterError::Overflow) => {
            println!("websocket: increment(u64::MAX) -> Err(Overflow), typed; nothing saved")
        }
        other => anyhow::bail!("expected the typed Overflow error, got {other:?}"),
    }

    let first = values.next().await.transpose()?;
    println!("websocket: observe() saw {first:?} first, after the first increment");
    drop(values);

    let local = system.connect(Transport::Local).await?;
    let in_process: CounterClient = local.actor("counter");
    println!(
        "local: add_twice(10) -> {}",
        add_twice(&in_process, 10).await?
    );
    println!(
        "websocket: get() -> {} (the same actor)",
        counter.get().await?
    );
    let scratch = PersistentCounter::new(Arc::new(MemoryStateStore::new()));
    println!(
        "plain struct, in memory: add_twice(3) -> {}",
        add_twice(&scratch, 3).await?
    );

    server.shutdown().await;
    println!("server stopped; run again to continue counting");
    Ok(())
}
