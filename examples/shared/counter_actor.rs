//! The counter actor shared by the examples: `counter.rs` serves it over WebSocket with its
//! state in a local file, `lambda_counter.rs` runs the very same code as a Lambda function with
//! its state in DynamoDB.
#![allow(dead_code)]

use std::sync::Arc;

use futures_util::StreamExt;
use trebuchet::state::{ActorStateStore, State, StatefulActor};
use trebuchet::{ActorStream, RemoteError, distributed_actor};

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

/// A counter shared by all its callers. `state = CounterState` makes it a stateful actor: its
/// stub also has `observe_state()`, the stream of each state the counter commits.
#[distributed_actor(state = CounterState)]
pub trait Counter {
    /// Adds `by` and returns the new value.
    async fn increment(&self, by: u64) -> Result<u64, CounterError>;
    /// The current value.
    async fn get(&self) -> Result<u64, CounterError>;
    /// The counter's value after each change from now on, every one in order (a reader that
    /// falls more than 1024 changes behind gets a gap error and the stream ends).
    #[stream]
    async fn observe(&self) -> Result<ActorStream<u64>, CounterError>;
}

/// The counter's persistent state.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct CounterState {
    /// The count.
    pub value: u64,
}

/// The actor: a plain struct whose state lives in a store.
pub struct PersistentCounter {
    state: State<CounterState>,
}

impl PersistentCounter {
    pub fn new(store: Arc<dyn ActorStateStore>) -> Self {
        PersistentCounter {
            state: State::new(store, "counter"),
        }
    }
}

impl Counter for PersistentCounter {
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

    async fn observe(&self) -> Result<ActorStream<u64>, CounterError> {
        Ok(ActorStream::from_results(self.state.changes().map(
            |state: Result<CounterState, RemoteError>| state.map(|state| state.value),
        )))
    }
}

/// Gives the generated `observe_state` the actor's state handle.
impl StatefulActor for PersistentCounter {
    type State = CounterState;

    fn state(&self) -> &State<CounterState> {
        &self.state
    }
}
