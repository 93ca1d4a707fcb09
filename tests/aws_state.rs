//! `DynamoDbStateStore` against DynamoDB and S3 (moto_server): the shared conformance suite,
//! S3 overflow, request counts, and retries of throttled requests.

mod common;

use std::sync::Arc;

use common::aws::{TestStore, new_store, sdk_config, unique};
use trebuchet::state::{ActorStateStore, State, StateError, conformance};
use trebuchet_aws::DynamoDbStateStore;
use trebuchet_aws::state::DynamoDbStoreError;

#[tokio::test]
async fn passes_the_store_conformance_suite() {
    // With a bucket: the suite's 3 MB state goes through S3.
    let store = new_store(true).await.store;
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn small_states_never_touch_s3_and_large_ones_live_there() {
    let TestStore { store, bucket, .. } = new_store(true).await;
    let bucket = bucket.unwrap();
    let s3 = common::aws::s3().await;
    let bucket_objects = |bucket: String| {
        let s3 = s3.clone();
        async move {
            let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
            listed
                .contents()
                .iter()
                .filter_map(|object| object.key().map(str::to_owned))
                .collect::<Vec<_>>()
        }
    };
    store.save("small", vec![7; 1000], 0).await.unwrap();
    store.save("small", vec![8; 300 * 1024], 1).await.unwrap();
    assert!(bucket_objects(bucket.clone()).await.is_empty());

    // Large states: one object per actor at a time (a replaced object is deleted).
    store.save("large", vec![1; 600 * 1024], 0).await.unwrap();
    store.save("large", vec![2; 700 * 1024], 1).await.unwrap();
    let objects = bucket_objects(bucket.clone()).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    let loaded = store.load("large").await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.bytes.len()), (2, 700 * 1024));
    assert!(loaded.bytes.iter().all(|&b| b == 2));

    // Back under the limit: the state moves into the item and the object goes away.
    store.save("large", vec![3; 10], 2).await.unwrap();
    assert!(bucket_objects(bucket.clone()).await.is_empty());
    assert_eq!(
        store.load("large").await.unwrap().unwrap().bytes,
        vec![3; 10]
    );

    // Deleting a large state deletes its object.
    store.save("large", vec![4; 500 * 1024], 3).await.unwrap();
    assert!(store.delete("large").await.unwrap());
    assert!(bucket_objects(bucket).await.is_empty());
}

#[tokio::test]
async fn a_failed_s3_write_leaves_the_item_as_it_was() {
    // A store whose bucket does not exist: the object write fails before the item is touched.
    let store = new_store(false).await.store;
    let store = store.with_overflow(common::aws::s3().await, unique("missing-bucket"));
    store.save("actor", b"small".to_vec(), 0).await.unwrap();
    let error = store
        .save("actor", vec![0; 500 * 1024], 1)
        .await
        .unwrap_err();
    assert!(matches!(error, StateError::Backend(_)), "{error}");
    assert!(error.to_string().contains("PutObject"), "{error}");
    let state = store.load("actor").await.unwrap().unwrap();
    assert_eq!((state.version, state.bytes), (1, b"small".to_vec()));
}

#[tokio::test]
async fn a_large_state_without_a_bucket_is_a_clear_error() {
    let store = new_store(false).await.store;
    let error = store.save("big", vec![0; 500 * 1024], 0).await.unwrap_err();
    let StateError::Backend(source) = &error else {
        panic!("{error}")
    };
    assert!(
        matches!(
            source.downcast_ref::<DynamoDbStoreError>(),
            Some(DynamoDbStoreError::TooLargeWithoutBucket { .. })
        ),
        "{error}"
    );
    assert!(error.to_string().contains("STATE_BUCKET"), "{error}");
}

#[tokio::test]
async fn a_missing_table_is_a_typed_error_naming_it() {
    let config = sdk_config().await;
    let table = unique("no-such-table");
    let store = DynamoDbStateStore::from_sdk_config(&config, &table, None);
    let error = store.load("x").await.unwrap_err();
    let StateError::Backend(source) = &error else {
        panic!("{error}")
    };
    match source.downcast_ref::<DynamoDbStoreError>() {
        Some(DynamoDbStoreError::DynamoDb { code, attempts, .. }) => {
            assert_eq!(code.as_deref(), Some("ResourceNotFoundException"));
            assert_eq!(*attempts, 1, "a missing table is not retried");
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains(&table), "{error}");
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
struct Count {
    value: u64,
}

/// Adds `n` to the count through `state`.
async fn add(state: &State<Count>, n: u64) {
    state
        .update(|count| {
            count.value += n;
            Ok::<_, trebuchet::RemoteError>(())
        })
        .await
        .unwrap();
}

/// The 1 read + 1 write bound of a stateful call, counted at the DynamoDB client.
#[tokio::test]
async fn an_uncontended_update_costs_one_read_and_one_write_and_a_warm_one_a_write() {
    let TestStore {
        store, requests, ..
    } = new_store(false).await;
    let store: Arc<dyn ActorStateStore> = Arc::new(store);
    let instance_a = State::<Count>::new(Arc::clone(&store), "counter");

    let before = requests.counts();
    add(&instance_a, 1).await;
    assert_eq!(
        requests.since(before),
        (1, 1, 0),
        "cold: one read, one write"
    );

    let before = requests.counts();
    for _ in 0..5 {
        add(&instance_a, 1).await;
    }
    assert_eq!(
        requests.since(before),
        (0, 5, 0),
        "warm: one write per update"
    );

    // Another instance writes; the first one's cached version is stale now.
    let instance_b = State::<Count>::new(Arc::clone(&store), "counter");
    add(&instance_b, 10).await;
    // A read on any instance after a write on any other sees it.
    assert_eq!(instance_a.get().await.unwrap().value, 16);

    // A stale update: the conditional write fails, the state is reloaded, the change re-run.
    let instance_c = State::<Count>::new(Arc::clone(&store), "counter");
    instance_c.get().await.unwrap();
    add(&instance_b, 1).await;
    let before = requests.counts();
    add(&instance_c, 1).await;
    assert_eq!(
        requests.since(before),
        (1, 2, 0),
        "conflict: write, reload, write"
    );
    assert_eq!(instance_a.get().await.unwrap().value, 18);
}

/// Several instances (as several Lambda instances would) updating one actor flat out through one
/// table lose no update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_instances_racing_lose_no_update() {
    let store = new_store(false).await.store;
    let store: Arc<dyn ActorStateStore> = Arc::new(store);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let state = State::<Count>::new(Arc::clone(&store), "shared").with_max_attempts(100);
            tokio::spawn(async move {
                for _ in 0..100 {
                    add(&state, 1).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let state = State::<Count>::new(store, "shared");
    assert_eq!(state.get().await.unwrap().value, 400);
}

/// Throttled requests are retried with backoff; the third attempt's answer is used.
#[tokio::test]
async fn throttled_requests_are_retried() {
    use common::fault::{Canned, FaultEndpoint};
    let throttled = Canned::new(
        400,
        r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"slow down"}"#,
    )
    .header("content-type", "application/x-amz-json-1.0")
    .header("x-amzn-errortype", "ProvisionedThroughputExceededException");
    let found = Canned::new(200, "{}").header("content-type", "application/x-amz-json-1.0");
    let endpoint = FaultEndpoint::start(vec![throttled.clone(), throttled.clone(), found]).await;
    let config = sdk_config().await;
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        DynamoDbStateStore::client_config(&config)
            .endpoint_url(&endpoint.url)
            .build(),
    );
    let store = DynamoDbStateStore::new(dynamodb.clone(), "throttled");
    assert_eq!(store.load("anyone").await.unwrap(), None);
    assert_eq!(
        endpoint.received().len(),
        3,
        "two throttled attempts, then the answer"
    );

    // Throttled on every attempt: a typed error saying so, after the policy's attempts.
    let endpoint = FaultEndpoint::start(vec![throttled]).await;
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        DynamoDbStateStore::client_config(&config)
            .endpoint_url(&endpoint.url)
            .build(),
    );
    let store = DynamoDbStateStore::new(dynamodb, "throttled");
    let error = store.load("anyone").await.unwrap_err();
    let StateError::Backend(source) = &error else {
        panic!("{error}")
    };
    match source.downcast_ref::<DynamoDbStoreError>() {
        Some(DynamoDbStoreError::DynamoDb { code, attempts, .. }) => {
            assert_eq!(
                code.as_deref(),
                Some("ProvisionedThroughputExceededException")
            );
            assert_eq!(*attempts, 5);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(endpoint.received().len(), 5);
}
