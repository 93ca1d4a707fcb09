use std::sync::Arc;

use futures_util::StreamExt;
use trebuchet::state::{MemoryStateStore, State, StatefulActor};
use trebuchet::{ActorSystem, RemoteError, Transport, distributed_actor};

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Count {
    value: u64,
}

#[distributed_actor(state = Count)]
pub trait Counter {
    async fn increment(&self, by: u64) -> Result<u64, RemoteError>;
}

struct PersistentCounter {
    state: State<Count>,
}

impl StatefulActor for PersistentCounter {
    type State = Count;
    fn state(&self) -> &State<Count> {
        &self.state
    }
}

impl Counter for PersistentCounter {
    async fn increment(&self, by: u64) -> Result<u64, RemoteError> {
        self.state
            .update(|count| {
                count.value += by;
                Ok(count.value)
            })
            .await
    }
}

#[tokio::main]
async fn main() {
    let system = ActorSystem::new();
    let state = State::new(Arc::new(MemoryStateStore::new()), "counter");
    system
        .expose("counter", PersistentCounter { state }.into_actor())
        .unwrap();
    let client = system.connect(Transport::Local).await.unwrap();
    let counter: CounterClient = client.actor("counter");
    let mut states = counter.observe_state().await.unwrap();
    counter.increment(2).await.unwrap();
    assert_eq!(states.next().await.unwrap().unwrap(), Count { value: 2 });
}
