//! What the accept loop does about failures and about connections past the limit.
//!
//! Accepting fails mostly when the process is out of file descriptors; retrying at once would
//! spin, and logging every failure would flood the log. So the loop waits before the next accept,
//! exponentially longer while the failures go on (from 5 ms up to 1 s), and logs one line per
//! 10 s at most, saying how many failures it did not log.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::client::backoff_delay;

const FIRST_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(1);
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The most refusals of connections past the limit being answered at once; past it a
/// connection is closed without an answer.
const MAX_REFUSALS: usize = 64;

/// How long answering a refused connection may take.
pub(crate) const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// The accept loop's state of failure.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    failures: u32,
    unlogged: u64,
    last_logged: Option<Instant>,
}

/// What to do about one failed accept.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AfterFailure {
    /// How long to wait before accepting again.
    pub(crate) delay: Duration,
    /// `Some(n)` when this failure is to be logged; `n` failures since the last line were not.
    pub(crate) log: Option<u64>,
}

impl AcceptBackoff {
    /// An accept succeeded: the next failure waits the shortest time again.
    pub(crate) fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// An accept failed at `now`.
    pub(crate) fn failed(&mut self, now: Instant) -> AfterFailure {
        let delay = backoff_delay(FIRST_DELAY, MAX_DELAY, self.failures);
        self.failures = self.failures.saturating_add(1);
        let log = match self.last_logged {
            Some(last) if now.duration_since(last) < LOG_INTERVAL => {
                self.unlogged += 1;
                None
            }
            _ => {
                self.last_logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        };
        AfterFailure { delay, log }
    }
}

/// The connection slots of a server: one per open connection, and a few for answering the
/// connections refused past the limit.
pub(crate) struct Admission {
    connections: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
}

/// What becomes of a connection just accepted.
pub(crate) enum Admitted {
    /// Served; the slot is freed when the permit is dropped.
    Serve(OwnedSemaphorePermit),
    /// Past the limit: answered with a refusal (the permit bounds the refusals in progress).
    Refuse(OwnedSemaphorePermit),
    /// Past the limit, and too many refusals in progress: closed at once.
    Drop,
}

impl Admission {
    pub(crate) fn new(max_connections: usize) -> Self {
        Admission {
            connections: Arc::new(Semaphore::new(max_connections)),
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
        }
    }

    pub(crate) fn admit(&self) -> Admitted {
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            return Admitted::Serve(permit);
        }
        match self.refusals.clone().try_acquire_owned() {
            Ok(permit) => Admitted::Refuse(permit),
            Err(_) => Admitted::Drop,
        }
    }
}

/// The message a connection refused past the limit is given.
pub(crate) fn refusal_message(max_connections: usize) -> String {
    format!("the server is at its limit of {max_connections} connections; try again later")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_exponentially_up_to_a_cap_and_log_once_per_interval() {
        let start = Instant::now();
        let mut backoff = AcceptBackoff::default();
        let mut delays = Vec::new();
        let mut logged = Vec::new();
        // 1,000 failures 50 ms apart: 50 s.
        for i in 0..1000u32 {
            let after = backoff.failed(start + Duration::from_millis(50) * i);
            delays.push(after.delay);
            if let Some(unlogged) = after.log {
                logged.push((i, unlogged));
            }
        }
        // Equal jitter: each delay is between half and all of min(1 s, 5 ms × 2^n).
        for (n, delay) in delays.iter().enumerate() {
            let base = FIRST_DELAY
                .saturating_mul(2u32.saturating_pow(n.min(31) as u32))
                .min(MAX_DELAY);
            assert!(*delay >= base / 2 && *delay <= base, "{n}: {delay:?}");
        }
        assert!(delays[999] >= MAX_DELAY / 2);
        // One line per 10 s (every 200th failure), each counting the 199 before it.
        assert_eq!(
            logged,
            vec![(0, 0), (200, 199), (400, 199), (600, 199), (800, 199)]
        );

        backoff.succeeded();
        assert!(backoff.failed(start + Duration::from_secs(50)).delay <= FIRST_DELAY);
    }

    #[test]
    fn connections_past_the_limit_are_refused_and_admitted_again_once_one_closes() {
        let admission = Admission::new(2);
        let first = admission.admit();
        let second = admission.admit();
        assert!(matches!(first, Admitted::Serve(_)));
        assert!(matches!(second, Admitted::Serve(_)));
        let refusals: Vec<_> = (0..MAX_REFUSALS).map(|_| admission.admit()).collect();
        assert!(refusals.iter().all(|r| matches!(r, Admitted::Refuse(_))));
        assert!(matches!(admission.admit(), Admitted::Drop));
        drop(first);
        assert!(matches!(admission.admit(), Admitted::Serve(_)));
    }
}
