//! An in-memory [`ActorStateStore`].

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use futures_util::future::BoxFuture;

use super::{ActorIdPage, ActorStateStore, StateError, StoredState};

/// Actor states in memory, lost when the process ends. For tests and for actors whose state need
/// not survive a restart.
#[derive(Debug, Default)]
pub struct MemoryStateStore {
    states: Mutex<BTreeMap<String, StoredState>>,
}

impl MemoryStateStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn states(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StoredState>> {
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ActorStateStore for MemoryStateStore {
    fn load<'a>(
        &'a self,
        actor_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredState>, StateError>> {
        let state = self.states().get(actor_id).cloned();
        Box::pin(std::future::ready(Ok(state)))
    }

    fn save<'a>(
        &'a self,
        actor_id: &'a str,
        bytes: Vec<u8>,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<u64, StateError>> {
        let mut states = self.states();
        let actual = states.get(actor_id).map_or(0, |state| state.version);
        let result = if actual == expected_version {
            let version = expected_version + 1;
            states.insert(actor_id.to_owned(), StoredState { version, bytes });
            Ok(version)
        } else {
            Err(StateError::Conflict {
                actor_id: actor_id.to_owned(),
                expected: expected_version,
                actual,
            })
        };
        Box::pin(std::future::ready(result))
    }

    fn delete<'a>(&'a self, actor_id: &'a str) -> BoxFuture<'a, Result<bool, StateError>> {
        let existed = self.states().remove(actor_id).is_some();
        Box::pin(std::future::ready(Ok(existed)))
    }

    fn list<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ActorIdPage, StateError>> {
        let limit = limit.max(1);
        let states = self.states();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut ids: Vec<String> = states
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(id, _)| id.clone())
            .take(limit.saturating_add(1))
            .collect();
        let next = if ids.len() > limit {
            ids.truncate(limit);
            ids.last().cloned()
        } else {
            None
        };
        Box::pin(std::future::ready(Ok(ActorIdPage { ids, next })))
    }
}
