//! Stateful actors: state in a store, optimistic concurrency, persistence across restarts.

use std::path::PathBuf;
use std::sync::Arc;

mod common;

use common::{Counter, CounterClient, CounterError};
use serde::{Deserialize, Serialize};
use trebuchet::state::{ActorStateStore, MemoryStateStore, RedbStateStore, State, decode_state};
use trebuchet::{ActorSystem, Encoding, ErrorCode, Transport};

#[derive(Clone, Default, Serialize, Deserialize)]
pub struct CounterState {
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
    // Sixteen clients, each with a connection of its own.
    let mut counters = Vec::new();
    for _ in 0..16 {
        let client = ActorSystem::new()
            .connect(Transport::WebSocket(server.url().into()))
            .await
            .unwrap();
        counters.push(client.actor::<CounterClient>("counter"));
    }
    common::increment_on_tasks(counters, 100).await;
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
    assert_eq!(changes.next().await.unwrap().unwrap().value, 1);
    counter.increment(2).await.unwrap();
    assert_eq!(changes.next().await.unwrap().unwrap().value, 3);
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

/// A stateful actor declared with `state = T`: its stub's generated `observe_state` streams the
/// committed states to remote callers.
mod observed {
    use super::*;
    use futures_util::StreamExt;
    use trebuchet::RemoteError;
    use trebuchet::state::StatefulActor;

    #[trebuchet::distributed_actor(state = CounterState)]
    pub trait Tally {
        async fn add(&self, by: u64) -> Result<u64, RemoteError>;
    }

    struct StoredTally {
        state: State<CounterState>,
    }

    impl StatefulActor for StoredTally {
        type State = CounterState;
        fn state(&self) -> &State<CounterState> {
            &self.state
        }
    }

    impl Tally for StoredTally {
        async fn add(&self, by: u64) -> Result<u64, RemoteError> {
            self.state
                .update(|state| {
                    state.value += by;
                    Ok(state.value)
                })
                .await
        }
    }

    #[tokio::test]
    async fn observe_state_streams_each_commit_over_websocket_and_tcp() {
        let store: Arc<dyn ActorStateStore> = Arc::new(MemoryStateStore::new());
        let system = ActorSystem::new();
        system
            .expose(
                "tally",
                StoredTally {
                    state: State::new(store, "tally"),
                }
                .into_actor(),
            )
            .unwrap();
        let websocket = system
            .serve_websocket("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let tcp = system
            .serve_tcp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        for transport in [
            Transport::WebSocket(websocket.url().to_owned()),
            Transport::Tcp(tcp.local_addr().to_string()),
        ] {
            let client = system.connect(transport).await.unwrap();
            let tally: TallyClient = client.actor("tally");
            let mut states = tally.observe_state().await.unwrap();
            let start = tally.add(1).await.unwrap();
            assert_eq!(states.next().await.unwrap().unwrap().value, start);
            tally.add(2).await.unwrap();
            assert_eq!(states.next().await.unwrap().unwrap().value, start + 2);
        }
    }
}

/// `expose_family`: one actor per id, made on its first call, each with its own state.
#[tokio::test]
async fn a_family_serves_one_actor_per_id() {
    let store: Arc<dyn ActorStateStore> = Arc::new(MemoryStateStore::new());
    let system = ActorSystem::new();
    let family_store = Arc::clone(&store);
    system.expose_family("counter-", move |id| {
        StoredCounter::new(Arc::clone(&family_store), id).into_actor()
    });
    // An id exposed on its own wins over the family.
    system
        .expose(
            "counter-special",
            StoredCounter::new(Arc::clone(&store), "elsewhere").into_actor(),
        )
        .unwrap();
    let server = system
        .serve_websocket("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = system
        .connect(Transport::WebSocket(server.url().to_owned()))
        .await
        .unwrap();
    let a: CounterClient = client.actor("counter-a");
    let b: CounterClient = client.actor("counter-b");
    a.increment(2).await.unwrap();
    a.increment(3).await.unwrap();
    b.increment(10).await.unwrap();
    assert_eq!((a.get().await.unwrap(), b.get().await.unwrap()), (5, 10));
    let special: CounterClient = client.actor("counter-special");
    special.increment(7).await.unwrap();
    assert!(store.load("elsewhere").await.unwrap().is_some());
    assert!(store.load("counter-special").await.unwrap().is_none());
    let outsider: CounterClient = client.actor("gauge-1");
    let error = outsider.get().await.unwrap_err();
    assert!(
        matches!(error, CounterError::Remote(ref e) if e.code == ErrorCode::UnknownActor),
        "{error}"
    );
}
