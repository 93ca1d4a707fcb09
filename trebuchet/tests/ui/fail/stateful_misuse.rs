use std::sync::Arc;

use trebuchet::state::{MemoryStateStore, State};
use trebuchet::{ActorSystem, ActorStream, RemoteError, distributed_actor};

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Count {
    value: u64,
}

// `observe_state` is generated for stateful actors: the trait cannot have its own.
#[distributed_actor(state = Count)]
pub trait Clashing {
    #[stream]
    async fn observe_state(&self) -> Result<ActorStream<Count>, RemoteError>;
}

#[distributed_actor(state = Count)]
pub trait Counter {
    async fn get(&self) -> Result<u64, RemoteError>;
}

// A stateful actor that does not say where its state is (no `StatefulActor`).
struct Forgetful {
    state: State<Count>,
}

impl Counter for Forgetful {
    async fn get(&self) -> Result<u64, RemoteError> {
        Ok(self.state.get().await?.value)
    }
}

fn main() {
    let state = State::new(Arc::new(MemoryStateStore::new()), "c");
    ActorSystem::new()
        .expose("c", Forgetful { state }.into_actor())
        .unwrap();
}
