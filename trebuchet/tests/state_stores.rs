//! Every state store passes the conformance suite; the redb store keeps its data across reopening.

use std::path::PathBuf;

use trebuchet::state::{
    ActorStateStore, MemoryStateStore, RedbStateStore, StateError, conformance,
};

/// A state file path of its own under the system's temporary directory, removed on drop.
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

#[tokio::test]
async fn the_memory_store_conforms() {
    conformance::run_all(&MemoryStateStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redb_store_conforms() {
    let file = TempFile::new();
    let store = RedbStateStore::open(&file.0).unwrap();
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn the_redb_store_keeps_state_across_reopening() {
    let file = TempFile::new();
    {
        let store = RedbStateStore::open(&file.0).unwrap();
        assert_eq!(store.save("counter", b"41".to_vec(), 0).await.unwrap(), 1);
        assert_eq!(store.save("counter", b"42".to_vec(), 1).await.unwrap(), 2);
    }
    let store = RedbStateStore::open(&file.0).unwrap();
    let state = store.load("counter").await.unwrap().unwrap();
    assert_eq!((state.version, state.bytes), (2, b"42".to_vec()));
    // The version carries on: a stale writer is still refused.
    assert!(matches!(
        store.save("counter", b"0".to_vec(), 1).await,
        Err(StateError::Conflict { actual: 2, .. })
    ));
}

#[tokio::test]
async fn a_redb_file_has_one_owner() {
    let file = TempFile::new();
    let _owner = RedbStateStore::open(&file.0).unwrap();
    let error = RedbStateStore::open(&file.0).unwrap_err();
    assert!(matches!(error, StateError::Backend(_)), "{error}");
}

#[test]
fn the_default_state_file_is_under_the_local_data_dir() {
    if std::env::var_os("TREBUCHET_STATE_FILE").is_none() {
        assert!(RedbStateStore::default_path().ends_with("trebuchet/state.redb"));
    }
}

#[tokio::test]
async fn stores_are_usable_as_trait_objects() {
    let stores: Vec<Box<dyn ActorStateStore>> = vec![Box::new(MemoryStateStore::new())];
    for store in stores {
        assert_eq!(store.save("a", vec![1], 0).await.unwrap(), 1);
    }
}
