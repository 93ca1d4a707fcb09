//! [`State`]: an actor's persistent state, kept in an [`ActorStateStore`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, watch};

use super::{ActorStateStore, StateError, decode_state, encode_state};
use crate::protocol::{Encoding, ErrorCode, RemoteError};

/// A committed state and its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    /// The version the store gave it (1 for the first save).
    pub version: u64,
    /// The state.
    pub value: T,
}

/// The persistent state of one actor: a field of the actor struct, used from its methods.
///
/// ```
/// use std::sync::Arc;
/// use trebuchet::state::{MemoryStateStore, State};
/// use trebuchet::{RemoteError, distributed_actor};
///
/// #[distributed_actor]
/// pub trait Counter {
///     async fn increment(&self, by: u64) -> Result<u64, RemoteError>;
/// }
///
/// struct PersistentCounter {
///     value: State<u64>,
/// }
///
/// impl Counter for PersistentCounter {
///     async fn increment(&self, by: u64) -> Result<u64, RemoteError> {
///         self.value.update(|value| { *value += by; Ok(*value) }).await
///     }
/// }
/// # #[tokio::main] async fn main() {
/// let store = Arc::new(MemoryStateStore::new());
/// let counter = PersistentCounter { value: State::new(store, "counter") };
/// assert_eq!(counter.increment(2).await.unwrap(), 2);
/// # }
/// ```
///
/// Each [`update`](Self::update) starts from the state as of the last version this handle knows
/// (loading it from the store the first time), runs the change on a copy, and saves it with the
/// expected version. If another writer got there first (another instance sharing the store, or a
/// Lambda invocation), the save is a conflict: the handle reloads and runs the change again, up to
/// [`max_attempts`](Self::with_max_attempts) times, then fails with `conflict`. So an uncontended
/// update costs one write (one read and one write on a cold start), and no update is ever lost.
///
/// Because a change may run more than once, **it must be deterministic over the state**: compute
/// from the state and the method's arguments only, and do side effects (sending messages, calling
/// other actors) after `update` returns.
pub struct State<T> {
    store: Arc<dyn ActorStateStore>,
    actor_id: String,
    encoding: Encoding,
    max_attempts: u32,
    cache: Mutex<Option<Versioned<T>>>,
    committed: watch::Sender<Option<Versioned<T>>>,
}

impl<T> fmt::Debug for State<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("actor_id", &self.actor_id)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

impl<T> State<T>
where
    T: Serialize + DeserializeOwned + Clone + Default + Send + Sync + 'static,
{
    /// The state of `actor_id` in `store`, encoded as JSON; `T::default()` until first saved.
    pub fn new(store: Arc<dyn ActorStateStore>, actor_id: impl Into<String>) -> Self {
        State {
            store,
            actor_id: actor_id.into(),
            encoding: Encoding::Json,
            max_attempts: 32,
            cache: Mutex::new(None),
            committed: watch::Sender::new(None),
        }
    }

    /// Stores the state in `encoding` instead of JSON (bincode is smaller and faster; JSON can be
    /// read by people and other tools).
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// How many times an update is tried when other writers keep winning (default 32). Each
    /// writer that loses waits a random 0–64 ms (less after its first losses) before trying
    /// again, so with *k* instances writing one actor flat out, an update still fails after all
    /// its attempts with a chance of about ((k−1)/k)^attempts: raise it for actors that many
    /// instances write at once.
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The actor id the state is stored under.
    pub fn actor_id(&self) -> &str {
        &self.actor_id
    }

    /// The current state, read from the store (so a write by any other instance is seen).
    pub async fn get(&self) -> Result<T, RemoteError> {
        let mut cache = self.cache.lock().await;
        let current = self.load().await?;
        let value = current.value.clone();
        *cache = Some(current);
        Ok(value)
    }

    /// Changes the state with `change` and saves it; returns what `change` returned. If `change`
    /// returns an error, nothing is saved. See the type's documentation for retries.
    pub async fn update<R, E>(&self, mut change: impl FnMut(&mut T) -> Result<R, E>) -> Result<R, E>
    where
        E: From<RemoteError>,
    {
        let mut cache = self.cache.lock().await;
        let mut current = match cache.take() {
            Some(cached) => cached,
            None => self.load().await?,
        };
        for attempt in 1..=self.max_attempts {
            let mut next = current.value.clone();
            let result = match change(&mut next) {
                Ok(result) => result,
                Err(error) => {
                    *cache = Some(current);
                    return Err(error);
                }
            };
            let bytes =
                encode_state(&self.actor_id, &next, self.encoding).map_err(RemoteError::from)?;
            match self
                .store
                .save(&self.actor_id, bytes, current.version)
                .await
            {
                Ok(version) => {
                    let committed = Versioned {
                        version,
                        value: next,
                    };
                    self.committed.send_replace(Some(committed.clone()));
                    *cache = Some(committed);
                    return Ok(result);
                }
                Err(StateError::Conflict { .. }) if attempt < self.max_attempts => {
                    tracing::debug!(actor_id = %self.actor_id, attempt, "state conflict; reloading");
                    // Spread retries of competing writers a little.
                    let pause = Duration::from_millis(fastrand::u64(0..=(1 << attempt.min(6))));
                    tokio::time::sleep(pause).await;
                    current = self.load().await?;
                }
                Err(error) => return Err(RemoteError::from(error).into()),
            }
        }
        Err(RemoteError::new(
            ErrorCode::Conflict,
            format!(
                "state of '{}' changed under {} attempts to update it",
                self.actor_id, self.max_attempts
            ),
        )
        .into())
    }

    /// Every state this handle commits, as it commits it (the latest one; a slow observer skips
    /// to the newest).
    pub fn subscribe(&self) -> watch::Receiver<Option<Versioned<T>>> {
        self.committed.subscribe()
    }

    /// The states this handle commits from now on, as a stream: the body of an `observe_state`
    /// stream method is `Ok(ActorStream::new(self.state.changes()))`. A slow reader skips to the
    /// latest state (it never makes the actor wait).
    pub fn changes(&self) -> impl futures_util::Stream<Item = T> + Send + 'static {
        let mut committed = self.subscribe();
        committed.mark_unchanged();
        futures_util::stream::unfold(committed, |mut committed| async move {
            committed.changed().await.ok()?;
            let value = committed.borrow_and_update().as_ref()?.value.clone();
            Some((value, committed))
        })
    }

    async fn load(&self) -> Result<Versioned<T>, RemoteError> {
        match self.store.load(&self.actor_id).await? {
            Some(stored) => Ok(Versioned {
                version: stored.version,
                value: decode_state(&self.actor_id, &stored.bytes, self.encoding)?,
            }),
            None => Ok(Versioned {
                version: 0,
                value: T::default(),
            }),
        }
    }
}
