//! Stateful actors: state in a store, optimistic concurrency, persistence across restarts.

use std::path::PathBuf;
use std::sync::Arc;

mod common;

use common::{Counter, CounterClient, CounterError};
use serde::{Deserialize, Serialize};
use trebuchet::state::{ActorStateStore, MemoryStateStore, RedbStateStore, State, decode_state};
use trebuchet::{ActorSystem, Encoding, ErrorCode, Transport};

#[derive(Clone, Default, Serialize, Deserialize)]
struct CounterState {
    value: u64,
}

struct StoredCounter {
    state: State<CounterState>,
}

impl StoredCounter {
    fn new(store: Arc<dyn ActorStateStore>, id: &str) -> Self {
        StoredCounter {
            state: State::new(store, id),
        }
    }
}

impl Counter for StoredCounter {
    async fn increment(&self, by: u64) -> Result<u64, CounterError> {
        self.state
            .update(|state| {
                state.value = state.value.checked_add(by).ok_or(CounterError::Overflow)?;
                Ok(state.value)
            })
            .await
    }

    async fn get(&self) -> Result<u64, CounterError> {
        Ok(self.state.get().await?.value)
    }
}

struct TempFile(PathBuf);

impl TempFile {
    fn new() -> Self {
        let name = format!("trebuchet-test-{:016x}/state.redb", fastrand::u64(..));
        TempFile(std::env::temp_dir().join(name))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_clients_times_a_hundred_increments_give_exactly_1600() {
    let file = TempFile::new();
    let store: Arc<dyn ActorStateStore> = Arc::new(RedbStateStore::open(&file.0).unwrap());
    let system = ActorSystem::new();
    system
        .expose(
            "counter",
            StoredCounter::new(store.clone(), "counter").into_actor(),
        )
        .unwrap();
    let server = system
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..16 {
        let client = ActorSystem::new()
            .connect(Transport::WebSocket(server.url().into()))
            .await
            .unwrap();
        clients.push(tokio::spawn(async move {
            let counter: CounterClient = client.actor("counter");
            for _ in 0..100 {
                counter.increment(1).await.unwrap();
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let stored = store.load("counter").await.unwrap().unwrap();
    let state: CounterState = decode_state("counter", &stored.bytes, Encoding::Json).unwrap();
    assert_eq!(state.value, 1600);
    assert_eq!(stored.version, 1600, "one write per increment");
}

/// The counter kept in the state file at `path`, called in-process. The file stays open until
/// the returned client (and with it the actor) is dropped.
async fn counter_on_file(path: &std::path::Path) -> CounterClient {
    let store = Arc::new(RedbStateStore::open(path).unwrap());
    let system = ActorSystem::new();
    system
        .expose("counter", StoredCounter::new(store, "counter").into_actor())
        .unwrap();
    system
        .connect(Transport::Local)
        .await
        .unwrap()
        .actor("counter")
}

#[tokio::test]
async fn state_survives_a_restart() {
    let file = TempFile::new();
    {
        let counter = counter_on_file(&file.0).await;
        assert_eq!(counter.increment(40).await.unwrap(), 40);
        assert_eq!(counter.increment(2).await.unwrap(), 42);
    }
    let counter = counter_on_file(&file.0).await;
    assert_eq!(counter.get().await.unwrap(), 42);
    assert_eq!(counter.increment(1).await.unwrap(), 43);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_store_lose_no_update() {
    // Two actor instances over one store, as two servers over one database would be.
    let store: Arc<dyn ActorStateStore> = Arc::new(MemoryStateStore::new());
    let first = Arc::new(StoredCounter::new(store.clone(), "shared"));
    let second = Arc::new(StoredCounter::new(store.clone(), "shared"));
    let mut tasks = Vec::new();
    for instance in [first.clone(), second.clone(), first, second] {
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                instance.increment(1).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let reader = StoredCounter::new(store, "shared");
    assert_eq!(reader.get().await.unwrap(), 200);
}

#[tokio::test]
async fn an_actor_error_saves_nothing() {
    let store: Arc<dyn ActorStateStore> = Arc::new(MemoryStateStore::new());
    let counter = StoredCounter::new(store.clone(), "c");
    counter.increment(5).await.unwrap();
    assert_eq!(
        counter.increment(u64::MAX).await,
        Err(CounterError::Overflow)
    );
    assert_eq!(store.load("c").await.unwrap().unwrap().version, 1);
    assert_eq!(counter.get().await.unwrap(), 5);
}

#[tokio::test]
async fn losing_every_attempt_is_a_conflict() {
    let store: Arc<dyn ActorStateStore> = Arc::new(MemoryStateStore::new());
    let counter = StoredCounter {
        state: State::new(store.clone(), "c").with_max_attempts(1),
    };
    counter.increment(1).await.unwrap();
    // Another writer moves the state on behind this instance's back.
    store
        .save("c", br#"{"value":10}"#.to_vec(), 1)
        .await
        .unwrap();
    match counter.increment(1).await {
        Err(CounterError::Remote(error)) => assert_eq!(error.code, ErrorCode::Conflict),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // With retries, the change is re-run on the new state.
    let retrying = StoredCounter::new(store.clone(), "c");
    assert_eq!(retrying.increment(1).await.unwrap(), 11);
}

#[tokio::test]
async fn changes_stream_every_committed_state() {
    use futures_util::StreamExt;
    let store: Arc<dyn ActorStateStore> = Arc::new(MemoryStateStore::new());
    let counter = StoredCounter::new(store, "c");
    let mut changes = Box::pin(counter.state.changes());
    counter.increment(1).await.unwrap();
    assert_eq!(changes.next().await.unwrap().value, 1);
    counter.increment(2).await.unwrap();
    assert_eq!(changes.next().await.unwrap().value, 3);
}

#[tokio::test]
async fn committed_states_can_be_observed() {
    let store: Arc<dyn ActorStateStore> = Arc::new(MemoryStateStore::new());
    let counter = StoredCounter::new(store, "c");
    let mut changes = counter.state.subscribe();
    counter.increment(3).await.unwrap();
    changes.changed().await.unwrap();
    let seen = changes.borrow_and_update().clone().unwrap();
    assert_eq!((seen.version, seen.value.value), (1, 3));
}
