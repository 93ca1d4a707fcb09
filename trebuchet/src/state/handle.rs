//! [`State`]: an actor's persistent state, kept in an [`ActorStateStore`].

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, broadcast, watch};

use super::{ActorStateStore, StateError, decode_state, encode_state};
use crate::protocol::{Encoding, ErrorCode, RemoteError};
use crate::stream::StreamGap;

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
    /// Every commit, for [`changes`](Self::changes): made on the first subscription (a handle
    /// nobody observes keeps no ring), holding the commits some subscriber has not taken yet.
    changes: OnceLock<broadcast::Sender<Arc<Versioned<T>>>>,
    /// How many commits a subscriber of `changes` may fall behind.
    change_buffer: usize,
}

/// How many commits a subscriber of [`State::changes`] may fall behind by default.
const DEFAULT_CHANGE_BUFFER: usize = 1024;

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
            changes: OnceLock::new(),
            change_buffer: DEFAULT_CHANGE_BUFFER,
        }
    }

    /// How many commits a subscriber of [`changes`](Self::changes) may have not taken yet
    /// before it is cut off with a gap (default 1024, at least 1). The commits are kept once
    /// for all subscribers, and only while one has not taken them.
    pub fn with_change_buffer(mut self, commits: usize) -> Self {
        self.change_buffer = commits.max(1);
        self
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
                    if let Some(changes) = self.changes.get() {
                        // Without subscribers nothing is kept (and the error says only that).
                        let _ = changes.send(Arc::new(committed.clone()));
                    }
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

    /// The latest state this handle committed, as it commits it (a slow observer skips to the
    /// newest; [`changes`](Self::changes) yields every one).
    pub fn subscribe(&self) -> watch::Receiver<Option<Versioned<T>>> {
        self.committed.subscribe()
    }

    /// Every state this handle commits from now on, in order, as a stream: the body of an
    /// `observe_state` stream method is `Ok(ActorStream::from_results(self.state.changes()))`.
    ///
    /// The actor never waits for a subscriber: the commits a subscriber has not taken yet are
    /// kept for it, up to [`with_change_buffer`](Self::with_change_buffer) of them. A subscriber
    /// that falls further behind is not skipped ahead silently: its stream yields a
    /// [`StreamGap`] error (`unavailable`, see [`crate::RemoteError::stream_gap`]) and ends
    /// there; subscribing again starts from the next commit. The gap's `last_sequence` is the
    /// number of states the stream yielded (the sequence number of the last one when the stream
    /// is sent as it is, as `observe_state` does), and `resumed_at` is `None`.
    ///
    /// A stream sent to a remote client is kept going while its connection is away (see
    /// [`crate::ReplayConfig`]), so a client that resumes it gets the commits made meanwhile.
    /// Only commits made through this handle are seen: a write by another instance sharing the
    /// store shows up as the version of this handle's next commit.
    pub fn changes(
        &self,
    ) -> impl futures_util::Stream<Item = Result<T, RemoteError>> + Send + 'static {
        let changes = self
            .changes
            .get_or_init(|| broadcast::Sender::new(self.change_buffer));
        let subscriber = Subscriber {
            commits: changes.subscribe(),
            yielded: 0,
            buffer: self.change_buffer,
        };
        futures_util::stream::unfold(Some(subscriber), |subscriber| async move {
            let mut subscriber = subscriber?;
            match subscriber.commits.recv().await {
                Ok(committed) => {
                    subscriber.yielded += 1;
                    Some((Ok(committed.value.clone()), Some(subscriber)))
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let gap = StreamGap {
                        last_sequence: subscriber.yielded,
                        resumed_at: None,
                    };
                    let mut error = gap.into_error();
                    error.message = format!(
                        "state changes gap: this subscriber fell more than {} commits behind \
                         after {} states and {missed} commits were missed; the stream ends here, \
                         subscribe again for the latest state",
                        subscriber.buffer, subscriber.yielded
                    );
                    Some((Err(error), None))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            }
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

/// A subscriber of [`State::changes`]: where it is in the commits, and how many it took.
struct Subscriber<T> {
    commits: broadcast::Receiver<Arc<Versioned<T>>>,
    yielded: u64,
    buffer: usize,
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::state::MemoryStateStore;

    fn counter(change_buffer: usize) -> State<u64> {
        State::new(Arc::new(MemoryStateStore::new()), "c").with_change_buffer(change_buffer)
    }

    async fn add(state: &State<u64>, by: u64) -> u64 {
        state
            .update(|value| {
                *value += by;
                Ok::<_, RemoteError>(*value)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn changes_yield_every_commit_in_order() {
        let state = counter(8);
        let mut changes = Box::pin(state.changes());
        for _ in 0..5 {
            add(&state, 1).await;
        }
        for expected in 1..=5 {
            assert_eq!(changes.next().await.unwrap().unwrap(), expected);
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_its_bound_gets_a_gap_and_ends() {
        let state = counter(4);
        let mut changes = Box::pin(state.changes());
        add(&state, 1).await;
        assert_eq!(changes.next().await.unwrap().unwrap(), 1);
        // 5 commits while the bound is 4: the oldest one this subscriber has not taken is lost.
        for _ in 0..5 {
            add(&state, 1).await;
        }
        let error = changes.next().await.unwrap().unwrap_err();
        assert_eq!(
            error.stream_gap(),
            Some(StreamGap {
                last_sequence: 1,
                resumed_at: None
            }),
            "{error}"
        );
        assert!(changes.next().await.is_none(), "the stream ends at the gap");
        // Another subscriber is not affected by this one falling behind.
        let mut again = Box::pin(state.changes());
        add(&state, 1).await;
        assert_eq!(again.next().await.unwrap().unwrap(), 7);
    }

    #[tokio::test]
    async fn a_subscriber_within_its_bound_misses_nothing() {
        let state = counter(4);
        let mut slow = Box::pin(state.changes());
        let mut fast = Box::pin(state.changes());
        for n in 1..=4 {
            add(&state, 1).await;
            assert_eq!(fast.next().await.unwrap().unwrap(), n);
        }
        for n in 1..=4 {
            assert_eq!(slow.next().await.unwrap().unwrap(), n);
        }
    }
}
