use std::sync::atomic::{AtomicU64, Ordering};
use trebuchet::{ActorSystem, RemoteError, Transport, distributed_actor};

#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CounterError {
    #[error("counter overflow")]
    Overflow,
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

#[distributed_actor]
pub trait Counter {
    async fn increment(&self, by: u64) -> Result<u64, CounterError>;
    async fn get(&self) -> Result<u64, CounterError>;
}

#[derive(Default)]
struct MyCounter(AtomicU64);

impl Counter for MyCounter {
    async fn increment(&self, by: u64) -> Result<u64, CounterError> {
        let old = self.0.load(Ordering::SeqCst);
        let new = old.checked_add(by).ok_or(CounterError::Overflow)?;
        self.0.store(new, Ordering::SeqCst);
        Ok(new)
    }
    async fn get(&self) -> Result<u64, CounterError> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let system = ActorSystem::new();
    system.expose("counter", MyCounter::default().into_actor())?;
    let server = system.serve_websocket("127.0.0.1:0".parse()?).await?;
    let client = system
        .connect(Transport::WebSocket(server.url().into()))
        .await?;
    let counter: CounterClient = client.actor("counter");
    println!("{}", counter.increment(5).await?);
    println!("{:?}", counter.increment(u64::MAX).await);
    server.shutdown().await;
    Ok(())
}
