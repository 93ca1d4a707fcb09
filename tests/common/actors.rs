//! The actors the integration tests call: also served as a Lambda function by
//! `src/bin/lambda_test_actors.rs`, so they use nothing but the library's own dependencies.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use trebuchet::state::{ActorStateStore, State};
use trebuchet::{ActorStream, RemoteError, SharedBytes, distributed_actor};

/// The error of the test actors.
#[derive(Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum ProbeError {
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl ProbeError {
    /// The remote error code, if this is a transport/framework failure.
    pub fn code(&self) -> Option<trebuchet::ErrorCode> {
        match self {
            ProbeError::Remote(error) => Some(error.code),
            ProbeError::Refused(_) => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub x: i32,
    pub y: i32,
    pub label: Option<String>,
}

/// An actor with one method for each shape of call the suite checks.
#[distributed_actor]
pub trait Probe {
    async fn echo(&self, text: String) -> Result<String, ProbeError>;
    async fn add(&self, a: i64, b: i64, scale: Option<i64>) -> Result<i64, ProbeError>;
    async fn mirror(&self, point: Point) -> Result<Point, ProbeError>;
    async fn record(&self, seq: u64) -> Result<(), ProbeError>;
    async fn history(&self) -> Result<Vec<u64>, ProbeError>;
    async fn refuse(&self, reason: String) -> Result<(), ProbeError>;
    async fn sleep_ms(&self, ms: u64) -> Result<u64, ProbeError>;
    async fn explode(&self) -> Result<(), ProbeError>;
    async fn blob(&self, len: u64) -> Result<Vec<u8>, ProbeError>;
    /// `data` backwards.
    async fn reverse(&self, data: SharedBytes) -> Result<SharedBytes, ProbeError>;
    /// `count` pieces of `data`, the first byte of each its index.
    #[stream]
    async fn pieces(
        &self,
        data: SharedBytes,
        count: u8,
    ) -> Result<ActorStream<SharedBytes>, ProbeError>;
    async fn count_calls(&self) -> Result<u64, ProbeError>;
    /// 1, 2, …, `to`.
    #[stream]
    async fn count_up(&self, to: u64) -> Result<ActorStream<u64>, ProbeError>;
    /// `n` items, then a stream error.
    #[stream]
    async fn fail_after(&self, n: u64) -> Result<ActorStream<u64>, ProbeError>;
    /// Never starts.
    #[stream]
    async fn refuse_stream(&self, reason: String) -> Result<ActorStream<u64>, ProbeError>;
    /// Blobs of `size` bytes as fast as they are taken, forever; see `production`.
    #[stream]
    async fn endless(&self, size: u64) -> Result<ActorStream<Vec<u8>>, ProbeError>;
    /// How many items `endless` made, and whether its stream was dropped.
    async fn production(&self) -> Result<(u64, bool), ProbeError>;
    /// Fails with a framework error (as a `conflict` of exhausted state retries would) through
    /// `ProbeError::Remote`.
    async fn fail(&self, code: trebuchet::ErrorCode, message: String) -> Result<(), ProbeError>;
    /// Refuses to start, like `fail`.
    #[stream]
    async fn fail_stream(
        &self,
        code: trebuchet::ErrorCode,
        message: String,
    ) -> Result<ActorStream<u64>, ProbeError>;
}

/// Sets a flag when dropped (the producer's view of a cancelled stream).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
pub struct ProbeActor {
    history: Mutex<Vec<u64>>,
    calls: AtomicU64,
    busy: AtomicU64,
    produced: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
}

impl ProbeActor {
    fn enter(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // Actor semantics: never two calls at once.
        assert_eq!(
            self.busy.fetch_add(1, Ordering::SeqCst),
            0,
            "two calls ran at once"
        );
    }
    fn leave(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Probe for ProbeActor {
    async fn echo(&self, text: String) -> Result<String, ProbeError> {
        self.enter();
        self.leave();
        Ok(text)
    }
    async fn add(&self, a: i64, b: i64, scale: Option<i64>) -> Result<i64, ProbeError> {
        Ok((a + b) * scale.unwrap_or(1))
    }
    async fn mirror(&self, point: Point) -> Result<Point, ProbeError> {
        Ok(Point {
            x: -point.x,
            y: -point.y,
            label: point.label,
        })
    }
    async fn record(&self, seq: u64) -> Result<(), ProbeError> {
        self.enter();
        // Yield so that a second call, if it were allowed to start, would overlap.
        tokio::task::yield_now().await;
        self.history.lock().unwrap().push(seq);
        self.leave();
        Ok(())
    }
    async fn history(&self) -> Result<Vec<u64>, ProbeError> {
        Ok(self.history.lock().unwrap().clone())
    }
    async fn refuse(&self, reason: String) -> Result<(), ProbeError> {
        Err(ProbeError::Refused(reason))
    }
    async fn sleep_ms(&self, ms: u64) -> Result<u64, ProbeError> {
        self.enter();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        self.leave();
        Ok(ms)
    }
    async fn explode(&self) -> Result<(), ProbeError> {
        panic!("boom");
    }
    async fn blob(&self, len: u64) -> Result<Vec<u8>, ProbeError> {
        Ok(vec![7; len as usize])
    }
    async fn reverse(&self, data: SharedBytes) -> Result<SharedBytes, ProbeError> {
        Ok(data.iter().rev().copied().collect::<Vec<u8>>().into())
    }
    async fn pieces(
        &self,
        data: SharedBytes,
        count: u8,
    ) -> Result<ActorStream<SharedBytes>, ProbeError> {
        Ok(ActorStream::new(futures_util::stream::iter(
            (0..count).map(move |index| {
                let mut piece = data.to_vec();
                piece.insert(0, index);
                SharedBytes::from(piece)
            }),
        )))
    }
    async fn count_calls(&self) -> Result<u64, ProbeError> {
        Ok(self.calls.load(Ordering::SeqCst))
    }
    async fn count_up(&self, to: u64) -> Result<ActorStream<u64>, ProbeError> {
        Ok(ActorStream::new(futures_util::stream::iter(1..=to)))
    }
    async fn fail_after(&self, n: u64) -> Result<ActorStream<u64>, ProbeError> {
        let items = (1..=n).map(Ok).chain(std::iter::once(Err(RemoteError::new(
            trebuchet::ErrorCode::ActorError,
            "the source dried up",
        ))));
        Ok(ActorStream::from_results(futures_util::stream::iter(items)))
    }
    async fn refuse_stream(&self, reason: String) -> Result<ActorStream<u64>, ProbeError> {
        Err(ProbeError::Refused(reason))
    }
    async fn endless(&self, size: u64) -> Result<ActorStream<Vec<u8>>, ProbeError> {
        let produced = self.produced.clone();
        let flag = DropFlag(self.dropped.clone());
        Ok(ActorStream::new(futures_util::stream::unfold(
            flag,
            move |flag| {
                let produced = produced.clone();
                async move {
                    produced.fetch_add(1, Ordering::SeqCst);
                    Some((vec![1u8; size as usize], flag))
                }
            },
        )))
    }
    async fn production(&self) -> Result<(u64, bool), ProbeError> {
        Ok((
            self.produced.load(Ordering::SeqCst),
            self.dropped.load(Ordering::SeqCst),
        ))
    }
    async fn fail(&self, code: trebuchet::ErrorCode, message: String) -> Result<(), ProbeError> {
        Err(RemoteError::new(code, message))?
    }
    async fn fail_stream(
        &self,
        code: trebuchet::ErrorCode,
        message: String,
    ) -> Result<ActorStream<u64>, ProbeError> {
        Err(RemoteError::new(code, message))?
    }
}

/// The counter of the README, with a typed error.
#[derive(Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum CounterError {
    #[error("overflow")]
    Overflow,
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

impl CounterError {
    /// The remote error code, if this is a transport/framework failure.
    pub fn code(&self) -> Option<trebuchet::ErrorCode> {
        match self {
            CounterError::Remote(error) => Some(error.code),
            CounterError::Overflow => None,
        }
    }
}

#[distributed_actor]
pub trait Counter {
    async fn increment(&self, by: u64) -> Result<u64, CounterError>;
    async fn get(&self) -> Result<u64, CounterError>;
}

#[derive(Default)]
pub struct MemoryCounter(AtomicU64);

impl Counter for MemoryCounter {
    async fn increment(&self, by: u64) -> Result<u64, CounterError> {
        let value = self
            .0
            .load(Ordering::SeqCst)
            .checked_add(by)
            .ok_or(CounterError::Overflow)?;
        tokio::task::yield_now().await;
        self.0.store(value, Ordering::SeqCst);
        Ok(value)
    }
    async fn get(&self) -> Result<u64, CounterError> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}

/// A counter whose value is kept in a state store under its own actor id (the counters of the
/// Lambda test functions).
pub struct StoredCounter {
    value: State<u64>,
}

impl StoredCounter {
    /// The counter `id` in `store`, its updates tried up to `max_attempts` times.
    pub fn new(store: Arc<dyn ActorStateStore>, id: &str, max_attempts: u32) -> Self {
        StoredCounter {
            value: State::new(store, id).with_max_attempts(max_attempts),
        }
    }
}

impl Counter for StoredCounter {
    async fn increment(&self, by: u64) -> Result<u64, CounterError> {
        self.value
            .update(|value| {
                *value = value.checked_add(by).ok_or(CounterError::Overflow)?;
                Ok(*value)
            })
            .await
    }

    async fn get(&self) -> Result<u64, CounterError> {
        Ok(self.value.get().await?)
    }
}

/// What an actor running in a Lambda function knows of its invocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvocationInfo {
    pub request_id: String,
    pub function_arn: String,
    pub cold_start: bool,
    pub remaining_ms: u64,
}

/// Reports the Lambda context it runs in (implemented by `src/bin/lambda_test_actors.rs`).
#[distributed_actor]
pub trait Inspect {
    async fn invocation(&self) -> Result<Option<InvocationInfo>, RemoteError>;
    /// Does nothing: for fire-and-forget calls.
    async fn touch(&self, note: String) -> Result<(), RemoteError>;
}
