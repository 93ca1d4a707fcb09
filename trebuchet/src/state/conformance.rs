//! The conformance suite every [`ActorStateStore`] must pass.
//!
//! Call [`run_all`] from a test of your store (it panics on the first failure, like any test).
//! Each check uses actor ids under a prefix of its own, so the suite can run against a shared
//! table or database, and more than once.
//!
//! ```
//! # #[tokio::main] async fn main() {
//! use trebuchet::state::{MemoryStateStore, conformance};
//! conformance::run_all(&MemoryStateStore::new()).await;
//! # }
//! ```

use futures_util::future::join_all;

use super::{ActorStateStore, StateError, decode_state, encode_state};
use crate::protocol::Encoding;

/// Runs every check against `store`.
pub async fn run_all(store: &dyn ActorStateStore) {
    let prefix = format!("conformance-{:016x}", fastrand::u64(..));
    missing_actor(store, &prefix).await;
    versions_count_up(store, &prefix).await;
    stale_versions_conflict(store, &prefix).await;
    concurrent_savers_one_wins(store, &prefix).await;
    large_state(store, &prefix).await;
    corrupt_bytes_are_a_clear_error(store, &prefix).await;
    delete_removes(store, &prefix).await;
    list_pages_through_every_id(store, &prefix).await;
}

/// An actor with no state loads as `None` and deletes as `false`.
pub async fn missing_actor(store: &dyn ActorStateStore, prefix: &str) {
    let id = format!("{prefix}/missing");
    assert_eq!(store.load(&id).await.unwrap(), None);
    assert!(!store.delete(&id).await.unwrap());
}

/// The first save (expected 0) gives version 1, each next save one more, and a load returns the
/// last bytes with their version.
pub async fn versions_count_up(store: &dyn ActorStateStore, prefix: &str) {
    let id = format!("{prefix}/versions");
    assert_eq!(store.save(&id, b"one".to_vec(), 0).await.unwrap(), 1);
    assert_eq!(store.save(&id, b"two".to_vec(), 1).await.unwrap(), 2);
    let state = store.load(&id).await.unwrap().expect("saved state");
    assert_eq!((state.version, state.bytes.as_slice()), (2, &b"two"[..]));
}

/// A save with a stale version, or a "new" save of an existing actor, is a conflict that
/// changes nothing.
pub async fn stale_versions_conflict(store: &dyn ActorStateStore, prefix: &str) {
    let id = format!("{prefix}/stale");
    store.save(&id, b"a".to_vec(), 0).await.unwrap();
    store.save(&id, b"b".to_vec(), 1).await.unwrap();
    for stale in [0, 1, 3] {
        match store.save(&id, b"lost".to_vec(), stale).await {
            Err(StateError::Conflict {
                expected, actual, ..
            }) => assert_eq!((expected, actual), (stale, 2)),
            other => panic!("a save expecting version {stale} of version 2 gave {other:?}"),
        }
    }
    let state = store.load(&id).await.unwrap().expect("saved state");
    assert_eq!((state.version, state.bytes.as_slice()), (2, &b"b"[..]));
}

/// Many savers expecting the same version: exactly one wins each round.
pub async fn concurrent_savers_one_wins(store: &dyn ActorStateStore, prefix: &str) {
    let id = format!("{prefix}/race");
    for round in 0..5u64 {
        // Each round starts from the version the previous round's winner wrote.
        let version = round;
        let saves = (0..8u64).map(|saver| {
            let bytes = format!("round {round} saver {saver}").into_bytes();
            store.save(&id, bytes, version)
        });
        let results = join_all(saves).await;
        let winners: Vec<u64> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(winners, vec![version + 1], "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Ok(_) | Err(StateError::Conflict { .. }))),
            "losers must get Conflict: {results:?}"
        );
    }
}

/// A state of several megabytes round-trips intact.
pub async fn large_state(store: &dyn ActorStateStore, prefix: &str) {
    let id = format!("{prefix}/large");
    let bytes: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    store.save(&id, bytes.clone(), 0).await.unwrap();
    let state = store.load(&id).await.unwrap().expect("saved state");
    assert_eq!(state.bytes.len(), bytes.len());
    assert!(state.bytes == bytes, "large state changed in the store");
}

/// Bytes that are not the actor's state decode to [`StateError::Corrupt`] naming the actor.
pub async fn corrupt_bytes_are_a_clear_error(store: &dyn ActorStateStore, prefix: &str) {
    let id = format!("{prefix}/corrupt");
    store.save(&id, vec![0xff, 0x00, 0xfe], 0).await.unwrap();
    let state = store.load(&id).await.unwrap().expect("saved state");
    for encoding in [Encoding::Json, Encoding::Bincode] {
        match decode_state::<(u64, String)>(&id, &state.bytes, encoding) {
            Err(error @ StateError::Corrupt { .. }) => {
                assert!(error.to_string().contains(&id), "{error}")
            }
            other => panic!("corrupt {encoding:?} state gave {other:?}"),
        }
    }
    // And what encode_state writes, decode_state reads.
    let good = encode_state(&id, &(7u64, "seven".to_string()), Encoding::Json).unwrap();
    store.save(&id, good, 1).await.unwrap();
    let state = store.load(&id).await.unwrap().expect("saved state");
    let value: (u64, String) = decode_state(&id, &state.bytes, Encoding::Json).unwrap();
    assert_eq!(value, (7, "seven".to_string()));
}

/// Delete removes the state; the next save starts again from version 0.
pub async fn delete_removes(store: &dyn ActorStateStore, prefix: &str) {
    let id = format!("{prefix}/delete");
    store.save(&id, b"x".to_vec(), 0).await.unwrap();
    assert!(store.delete(&id).await.unwrap());
    assert_eq!(store.load(&id).await.unwrap(), None);
    assert_eq!(store.save(&id, b"y".to_vec(), 0).await.unwrap(), 1);
}

/// Listing in pages returns every id once, in order.
pub async fn list_pages_through_every_id(store: &dyn ActorStateStore, prefix: &str) {
    let list_prefix = format!("{prefix}/list/");
    let mut expected: Vec<String> = (0..25).map(|i| format!("{list_prefix}{i:03}")).collect();
    for id in &expected {
        store.save(id, b"s".to_vec(), 0).await.unwrap();
    }
    expected.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = Some(list_prefix.clone());
    loop {
        let page = store.list(after.as_deref(), 10).await.unwrap();
        assert!(page.ids.len() <= 10, "a page holds at most `limit` ids");
        seen.extend(
            page.ids
                .iter()
                .filter(|id| id.starts_with(&list_prefix))
                .cloned(),
        );
        match page.next {
            Some(next) if next.starts_with(&list_prefix) => after = Some(next),
            _ => break,
        }
    }
    assert_eq!(seen, expected);
}
