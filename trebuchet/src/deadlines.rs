//! The deadlines of a client connection's calls, watched by one task instead of a timer per call.
//!
//! A tokio timer per call costs its entry in the timer wheel, taking it out again, and the
//! runtime's look at the wheel each time it parks: about 3% of a sequential TCP round trip on
//! the dev machine, for calls that almost never time out. Here a call registers its deadline in
//! a table (a lock and an insert) and the connection's watcher sleeps until the earliest one:
//! the calls of a connection share one timeout, so the watcher's one timer is set again only
//! about once per timeout, however many calls come and go. A call whose deadline passes is
//! woken; its deadline is met as precisely as a timer of its own would meet it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::CallIdMap;

/// The deadlines of the calls in flight on one connection.
#[derive(Default)]
pub(crate) struct Deadlines {
    state: Mutex<State>,
    /// Tells the watcher that a call's deadline comes before the time it sleeps until (or that
    /// it sleeps without a time: no call was in flight).
    earlier: Notify,
}

#[derive(Default)]
struct State {
    /// Keyed by a number of their own (a call's id may be reused by another connection's
    /// calls; these are one connection's, numbered here).
    calls: CallIdMap<Watched>,
    next_key: u64,
    /// When the watcher looks at the table next; `None` while no call is in flight (it then
    /// waits for [`Deadlines::earlier`]).
    wakes_at: Option<Instant>,
}

struct Watched {
    deadline: Instant,
    expired: bool,
    waker: Option<Waker>,
}

impl Deadlines {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Watches `deadline` for a call: the returned future completes once it has passed, and
    /// dropping it ends the watch.
    pub(crate) fn watch(&self, deadline: Instant) -> Expiry<'_> {
        let mut state = self.state();
        let key = state.next_key;
        state.next_key += 1;
        state.calls.insert(
            key,
            Watched {
                deadline,
                expired: false,
                waker: None,
            },
        );
        let tell = state.wakes_at.is_none_or(|at| deadline < at);
        if tell {
            state.wakes_at = Some(deadline);
        }
        drop(state);
        if tell {
            self.earlier.notify_one();
        }
        Expiry {
            deadlines: self,
            key,
        }
    }

    /// Marks the calls whose deadline is at or before `now` as expired and wakes them; when the
    /// watcher is to look again (the earliest deadline left), `None` if none is left.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let mut state = self.state();
        let mut earliest: Option<Instant> = None;
        for call in state.calls.values_mut().filter(|call| !call.expired) {
            if call.deadline <= now {
                call.expired = true;
                expired.extend(call.waker.take());
            } else {
                earliest = Some(earliest.map_or(call.deadline, |at| at.min(call.deadline)));
            }
        }
        state.wakes_at = earliest;
        drop(state);
        expired.into_iter().for_each(Waker::wake);
        earliest
    }

    /// The watcher of these deadlines, until `closed` is cancelled (the connection is dropped).
    pub(crate) async fn watch_until(&self, closed: CancellationToken) {
        let mut wakes_at = None;
        loop {
            let sleep = async {
                match wakes_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = closed.cancelled() => return,
                () = sleep => {}
                () = self.earlier.notified() => {}
            }
            wakes_at = self.expire(Instant::now());
        }
    }
}

/// A call's watched deadline (see [`Deadlines::watch`]): completes once it has passed.
pub(crate) struct Expiry<'a> {
    deadlines: &'a Deadlines,
    key: u64,
}

impl Future for Expiry<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.deadlines.state();
        let Some(call) = state.calls.get_mut(&self.key) else {
            return Poll::Ready(());
        };
        if call.expired {
            return Poll::Ready(());
        }
        match &call.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => call.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for Expiry<'_> {
    fn drop(&mut self) {
        self.deadlines.state().calls.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    /// Deadlines with their watcher running, and the token that stops it.
    fn watched() -> (Arc<Deadlines>, CancellationToken) {
        let deadlines = Arc::new(Deadlines::default());
        let closed = CancellationToken::new();
        let watcher = deadlines.clone();
        let token = closed.clone();
        tokio::spawn(async move { watcher.watch_until(token).await });
        (deadlines, closed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_woken_at_its_deadline_and_not_before() {
        let (deadlines, closed) = watched();
        let start = Instant::now();
        let mut expiry = deadlines.watch(start + Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(4_999)).await;
        assert!((&mut expiry).now_or_never().is_none(), "expired early");
        expiry.await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        closed.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_watched_later_is_met() {
        let (deadlines, closed) = watched();
        let start = Instant::now();
        let late = deadlines.watch(start + Duration::from_secs(30));
        tokio::task::yield_now().await;
        deadlines.watch(start + Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert!(late.now_or_never().is_none());
        closed.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn calls_that_end_in_time_leave_nothing_behind_and_the_watcher_rests() {
        let (deadlines, closed) = watched();
        for round in 0..3u64 {
            let start = Instant::now();
            // Calls that end in time, one after another.
            for _ in 0..100 {
                let expiry = deadlines.watch(start + Duration::from_secs(1));
                assert!(expiry.now_or_never().is_none());
            }
            assert!(deadlines.state().calls.is_empty());
            // After the last deadline the watcher waits without a time; a new call wakes it.
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(deadlines.state().wakes_at, None, "round {round}");
            let start = Instant::now();
            deadlines.watch(start + Duration::from_millis(300)).await;
            assert_eq!(start.elapsed(), Duration::from_millis(300));
        }
        closed.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn many_calls_expire_at_their_own_deadlines() {
        let (deadlines, closed) = watched();
        let start = Instant::now();
        let waits = (1..=20u64).map(|n| {
            let deadlines = deadlines.clone();
            async move {
                deadlines
                    .watch(start + Duration::from_millis(100 * n))
                    .await;
                (n, start.elapsed())
            }
        });
        for (n, elapsed) in futures_util::future::join_all(waits).await {
            assert_eq!(elapsed, Duration::from_millis(100 * n));
        }
        closed.cancel();
    }
}
