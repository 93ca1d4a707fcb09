//! The calls of one connection that are not finished yet, counted against its in-flight limit.
//!
//! A server connection gives each call it starts a [`CallSlot`]. The slot travels with the call
//! wherever it goes, including onto a task of its own when a call that has started outlives its
//! caller (see [`crate::actor::RunToCompletion`]), and is released only when the call is really
//! finished (or dropped before it started). The connection reads no new call while all its slots
//! are taken, so the work one connection causes, queued or running, stays within its limit. The
//! slots also carry the bound on an actor's queue that calls of this connection may join.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The slots of one connection (shared by the connection and its calls' [`CallSlot`]s).
pub(crate) struct CallSlots {
    taken: AtomicUsize,
    limit: usize,
    max_queued_per_actor: usize,
    /// Told when a slot is released while every slot was taken.
    freed: Notify,
}

impl CallSlots {
    /// `limit` slots; calls holding them may join an actor's queue while it holds fewer than
    /// `max_queued_per_actor` calls.
    pub(crate) fn new(limit: usize, max_queued_per_actor: usize) -> Arc<Self> {
        Arc::new(CallSlots {
            taken: AtomicUsize::new(0),
            limit,
            max_queued_per_actor,
            freed: Notify::new(),
        })
    }

    /// Takes a slot for a new call (even past the limit: the connection checks [`Self::is_full`]
    /// before reading a call).
    pub(crate) fn take(self: &Arc<Self>) -> CallSlot {
        self.taken.fetch_add(1, Ordering::AcqRel);
        CallSlot {
            slots: self.clone(),
        }
    }

    /// How many slots are taken.
    #[cfg(test)]
    pub(crate) fn taken(&self) -> usize {
        self.taken.load(Ordering::Acquire)
    }

    /// Whether every slot is taken.
    pub(crate) fn is_full(&self) -> bool {
        self.taken.load(Ordering::Acquire) >= self.limit
    }

    /// Completes once a slot has been released since every slot was taken (or at once, if one
    /// was released since the last call). Can complete spuriously: check [`Self::is_full`].
    pub(crate) async fn freed(&self) {
        self.freed.notified().await;
    }
}

impl fmt::Debug for CallSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallSlots")
            .field("taken", &self.taken.load(Ordering::Relaxed))
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// One call's share of its connection's in-flight limit; released when dropped. A clone is one
/// more share (a copy of a call is one more call to count).
#[derive(Debug)]
pub(crate) struct CallSlot {
    slots: Arc<CallSlots>,
}

impl CallSlot {
    /// How many calls an actor may have waiting for its turn before a call holding this slot is
    /// refused instead of joining them.
    pub(crate) fn max_queued_per_actor(&self) -> usize {
        self.slots.max_queued_per_actor
    }
}

impl Clone for CallSlot {
    fn clone(&self) -> Self {
        self.slots.take()
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        let before = self.slots.taken.fetch_sub(1, Ordering::AcqRel);
        if before >= self.slots.limit {
            // One waiter at most (the connection); `notify_one` keeps the wake-up for it if it
            // is not waiting yet.
            self.slots.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_connection_is_told_when_a_slot_is_released() {
        let slots = CallSlots::new(2, 8);
        let first = slots.take();
        let second = first.clone();
        assert!(slots.is_full());
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.freed().await }
        });
        drop(second);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(!slots.is_full());
        drop(first);
        assert_eq!(slots.taken.load(Ordering::Relaxed), 0);
    }
}
