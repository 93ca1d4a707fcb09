//! The embedded, persistent [`ActorStateStore`] on redb.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{ActorIdPage, ActorStateStore, StateError, StoredState};

/// actor id → (version, state bytes)
const STATES: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("actor_state");

/// Actor states in a redb database file: durable (each save is committed to disk before it
/// returns), zero setup, one process at a time.
///
/// redb locks its file, so a second process opening the same file fails: a state file belongs to
/// one server. Use DynamoDB or PostgreSQL to share state between instances.
#[derive(Clone)]
pub struct RedbStateStore {
    database: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStateStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStateStore {
    /// Opens (or creates) the state file at `path`, creating its directory if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(StateError::backend)?;
        }
        let database = Database::create(&path).map_err(StateError::backend)?;
        // Create the table up front, so reads of an empty store find it.
        let setup = database.begin_write().map_err(StateError::backend)?;
        setup.open_table(STATES).map_err(StateError::backend)?;
        setup.commit().map_err(StateError::backend)?;
        Ok(RedbStateStore {
            database: Arc::new(database),
            path,
        })
    }

    /// The default state file: `$TREBUCHET_STATE_FILE` if set, else `trebuchet/state.redb` under
    /// the user's local data directory (`~/.local/share` on Linux), else under the current
    /// directory.
    pub fn default_path() -> PathBuf {
        if let Some(path) = std::env::var_os("TREBUCHET_STATE_FILE") {
            return PathBuf::from(path);
        }
        dirs::data_local_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("trebuchet")
            .join("state.redb")
    }

    /// The file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a blocking database operation off the async threads.
    fn blocking<T, F>(&self, operation: F) -> BoxFuture<'static, Result<T, StateError>>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StateError> + Send + 'static,
    {
        let database = self.database.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || operation(&database))
                .await
                .map_err(StateError::backend)?
        })
    }
}

impl ActorStateStore for RedbStateStore {
    fn load<'a>(
        &'a self,
        actor_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredState>, StateError>> {
        let actor_id = actor_id.to_owned();
        self.blocking(move |database| {
            let read = database.begin_read().map_err(StateError::backend)?;
            let table = read.open_table(STATES).map_err(StateError::backend)?;
            let state = table.get(actor_id.as_str()).map_err(StateError::backend)?;
            Ok(state.map(|entry| {
                let (version, bytes) = entry.value();
                StoredState {
                    version,
                    bytes: bytes.to_vec(),
                }
            }))
        })
    }

    fn save<'a>(
        &'a self,
        actor_id: &'a str,
        bytes: Vec<u8>,
        expected_version: u64,
    ) -> BoxFuture<'a, Result<u64, StateError>> {
        let actor_id = actor_id.to_owned();
        self.blocking(move |database| {
            // redb runs one write transaction at a time: the check and the write are atomic.
            let write = database.begin_write().map_err(StateError::backend)?;
            let version = {
                let mut table = write.open_table(STATES).map_err(StateError::backend)?;
                let actual = table
                    .get(actor_id.as_str())
                    .map_err(StateError::backend)?
                    .map_or(0, |entry| entry.value().0);
                if actual != expected_version {
                    return Err(StateError::Conflict {
                        actor_id,
                        expected: expected_version,
                        actual,
                    });
                }
                let version = expected_version + 1;
                table
                    .insert(actor_id.as_str(), (version, bytes.as_slice()))
                    .map_err(StateError::backend)?;
                version
            };
            write.commit().map_err(StateError::backend)?;
            Ok(version)
        })
    }

    fn delete<'a>(&'a self, actor_id: &'a str) -> BoxFuture<'a, Result<bool, StateError>> {
        let actor_id = actor_id.to_owned();
        self.blocking(move |database| {
            let write = database.begin_write().map_err(StateError::backend)?;
            let existed = {
                let mut table = write.open_table(STATES).map_err(StateError::backend)?;
                table
                    .remove(actor_id.as_str())
                    .map_err(StateError::backend)?
                    .is_some()
            };
            write.commit().map_err(StateError::backend)?;
            Ok(existed)
        })
    }

    fn list<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ActorIdPage, StateError>> {
        let after = after.map(str::to_owned);
        let limit = limit.max(1);
        self.blocking(move |database| {
            let read = database.begin_read().map_err(StateError::backend)?;
            let table = read.open_table(STATES).map_err(StateError::backend)?;
            let range = match after.as_deref() {
                Some(after) => table.range::<&str>(after..),
                None => table.range::<&str>(..),
            }
            .map_err(StateError::backend)?;
            let mut ids = Vec::new();
            for entry in range {
                let (key, _) = entry.map_err(StateError::backend)?;
                let id = key.value();
                if after.as_deref() == Some(id) {
                    continue;
                }
                ids.push(id.to_owned());
                if ids.len() > limit {
                    break;
                }
            }
            let next = if ids.len() > limit {
                ids.truncate(limit);
                ids.last().cloned()
            } else {
                None
            };
            Ok(ActorIdPage { ids, next })
        })
    }
}
