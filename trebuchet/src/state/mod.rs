//! Actor state: a versioned, opaque store ([`ActorStateStore`]) and its implementations.
//!
//! An actor's state is stored as bytes with a version. Saving names the version the caller last
//! saw (`expected_version`, 0 for "does not exist yet"); the store writes only if that is still
//! the current version, and the new version is one more. A stale version is a
//! [`StateError::Conflict`], never a lost update. The bytes are the actor's state encoded with
//! the [`Encoding`] the actor chose ([`encode_state`] / [`decode_state`]).
//!
//! Implementations here: [`MemoryStateStore`] (tests, and actors that need no durability) and
//! [`RedbStateStore`] (embedded and persistent, the default for a single server). A redb file is
//! owned by one process: two servers sharing one state file are not a supported setup; several
//! instances share state through DynamoDB (trebuchet-aws) or PostgreSQL. Every implementation
//! must pass [`conformance`].

use std::fmt;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::protocol::{Encoding, ErrorCode, Payload, RemoteError};

pub mod conformance;
mod handle;
mod memory;
mod redb;

pub use handle::{State, Versioned};
pub use memory::MemoryStateStore;
pub use redb::RedbStateStore;

/// An actor's state as stored: the encoded bytes and their version (1 for the first save).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredState {
    /// The version of these bytes; each successful save adds one.
    pub version: u64,
    /// The encoded state.
    pub bytes: Vec<u8>,
}

/// One page of actor ids, in ascending order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorIdPage {
    /// The ids on this page.
    pub ids: Vec<String>,
    /// Pass this as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

/// A state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Optimistic concurrency: the state is not at the version the caller expected.
    #[error("state of '{actor_id}' is at version {actual}, not the expected {expected}")]
    Conflict {
        /// The actor.
        actor_id: String,
        /// The version the caller expected (0: "does not exist").
        expected: u64,
        /// The version in the store (0: it does not exist).
        actual: u64,
    },
    /// The stored bytes cannot be read as the actor's state.
    #[error("state of '{actor_id}' cannot be decoded: {reason}")]
    Corrupt {
        /// The actor.
        actor_id: String,
        /// What was wrong.
        reason: String,
    },
    /// The state cannot be encoded.
    #[error("state of '{actor_id}' cannot be encoded: {reason}")]
    Encode {
        /// The actor.
        actor_id: String,
        /// What was wrong.
        reason: String,
    },
    /// The store itself failed (I/O, database, network…).
    #[error("state store failure: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StateError {
    /// A backend failure from any error.
    pub fn backend(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StateError::Backend(error.into())
    }
}

impl From<StateError> for RemoteError {
    fn from(error: StateError) -> Self {
        let code = match error {
            StateError::Conflict { .. } => ErrorCode::Conflict,
            StateError::Corrupt { .. } | StateError::Encode { .. } | StateError::Backend(_) => {
                ErrorCode::Internal
            }
        };
        RemoteError::new(code, error.to_string())
    }
}

/// A versioned store of actor states. Methods return boxed futures so that stores can be used as
/// `Arc<dyn ActorStateStore>`.
pub trait ActorStateStore: Send + Sync + 'static {
    /// The state of `actor_id`, or `None` if it has none.
    fn load<'a>(
        &'a self,
        actor_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredState>, StateError>>;

    /// Writes `bytes` as the state of `actor_id` if its current version is `expected_version`
    /// (0: it must not exist yet); returns the new version (`expected_version + 1`). Otherwise
    /// writes nothing and fails with [`StateError::Conflict`].
    fn save<'a>(
        &'a self,
        actor_id: &'a str,
        bytes: Vec<u8>,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<u64, StateError>>;

    /// Removes the state of `actor_id`; returns whether there was one.
    fn delete<'a>(&'a self, actor_id: &'a str) -> BoxFuture<'a, Result<bool, StateError>>;

    /// Up to `limit` actor ids with state, in ascending order, starting after `after`.
    fn list<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ActorIdPage, StateError>>;
}

/// An actor with persistent state, as `#[distributed_actor(state = T)]` declares: the generated
/// stream method `observe_state` yields the commits of the actor's [`State`] handle.
///
/// ```
/// # use std::sync::Arc;
/// use trebuchet::state::{MemoryStateStore, State, StatefulActor};
/// use trebuchet::{RemoteError, distributed_actor};
///
/// #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
/// pub struct Count { value: u64 }
///
/// #[distributed_actor(state = Count)]
/// pub trait Counter {
///     async fn increment(&self, by: u64) -> Result<u64, RemoteError>;
/// }
///
/// struct PersistentCounter { state: State<Count> }
///
/// impl StatefulActor for PersistentCounter {
///     type State = Count;
///     fn state(&self) -> &State<Count> { &self.state }
/// }
///
/// impl Counter for PersistentCounter {
///     async fn increment(&self, by: u64) -> Result<u64, RemoteError> {
///         self.state.update(|count| { count.value += by; Ok(count.value) }).await
///     }
/// }
/// // A `CounterClient` now has `observe_state()`: a stream of `Count`.
/// # let _ = PersistentCounter { state: State::new(Arc::new(MemoryStateStore::new()), "c") }.into_actor();
/// ```
pub trait StatefulActor {
    /// The state (the `T` of `state = T`).
    type State: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static;

    /// The actor's state handle.
    fn state(&self) -> &State<Self::State>;
}

/// Encodes an actor's state with `encoding`.
pub fn encode_state<T: Serialize>(
    actor_id: &str,
    state: &T,
    encoding: Encoding,
) -> Result<Vec<u8>, StateError> {
    Payload::encode(state, encoding)
        .map(|payload| payload.as_bytes().to_vec())
        .map_err(|error| StateError::Encode {
            actor_id: actor_id.to_owned(),
            reason: error.to_string(),
        })
}

/// Decodes an actor's state written by [`encode_state`] with the same `encoding`.
pub fn decode_state<T: DeserializeOwned>(
    actor_id: &str,
    bytes: &[u8],
    encoding: Encoding,
) -> Result<T, StateError> {
    Payload::from_bytes(encoding, bytes.to_vec())
        .decode()
        .map_err(|error| StateError::Corrupt {
            actor_id: actor_id.to_owned(),
            reason: format!("not valid {encoding:?} state: {error}"),
        })
}

impl fmt::Debug for dyn ActorStateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dyn ActorStateStore")
    }
}
