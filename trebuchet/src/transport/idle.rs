//! How a server notices a connection that has gone silent.
//!
//! The timeout is watched in ticks of half its length: a tick that finds nothing received since
//! the previous one is a silent tick. The first silent tick is the moment to ask the peer for a
//! sign of life (a WebSocket ping); the second ends the connection. A connection is therefore
//! closed after between one and one and a half timeouts of silence, and a frame received costs
//! only a flag, not a timer reset.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What an [`IdleWatch`] asks of its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idle {
    /// Half the timeout passed without anything received: ask the peer for a sign of life.
    Ping,
    /// The timeout passed without anything received: close the connection.
    Expired,
}

/// The idle timeout of one connection, polled with its reads.
pub(crate) struct IdleWatch {
    tick: Duration,
    timer: Pin<Box<Sleep>>,
    heard: bool,
    silent_ticks: u8,
}

impl IdleWatch {
    /// A watch that expires after `timeout` (at most one and a half of it) without anything
    /// received.
    pub(crate) fn new(timeout: Duration) -> Self {
        let tick = (timeout / 2).max(Duration::from_millis(1));
        IdleWatch {
            tick,
            timer: Box::pin(tokio::time::sleep(tick)),
            heard: false,
            silent_ticks: 0,
        }
    }

    /// Something arrived from the peer.
    pub(crate) fn heard(&mut self) {
        self.heard = true;
    }

    /// `Ready` when the connection has been silent for a tick (`Ping`) or two (`Expired`).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Idle> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            self.timer.as_mut().reset(Instant::now() + self.tick);
            if std::mem::take(&mut self.heard) {
                self.silent_ticks = 0;
                continue;
            }
            self.silent_ticks = self.silent_ticks.saturating_add(1);
            return Poll::Ready(if self.silent_ticks == 1 {
                Idle::Ping
            } else {
                Idle::Expired
            });
        }
    }
}

/// The error a connection's reads end with when its idle timeout expires.
pub(crate) fn idle_expired() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "nothing received within the idle timeout",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(watch: &mut IdleWatch) -> Idle {
        std::future::poll_fn(|cx| watch.poll(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn silence_asks_for_a_ping_then_expires_and_traffic_keeps_it_alive() {
        let start = Instant::now();
        let mut watch = IdleWatch::new(Duration::from_secs(10));
        assert_eq!(next(&mut watch).await, Idle::Ping);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(next(&mut watch).await, Idle::Expired);
        assert_eq!(start.elapsed(), Duration::from_secs(10));

        let start = Instant::now();
        let mut watch = IdleWatch::new(Duration::from_secs(10));
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(4)).await;
            watch.heard();
        }
        // First polled at 20 s: that tick finds something heard, the next (25 s) silence.
        assert_eq!(next(&mut watch).await, Idle::Ping);
        assert_eq!(start.elapsed(), Duration::from_secs(25));
        // An answer to the ping starts the count again: ping at 35 s, expired at 40 s.
        watch.heard();
        assert_eq!(next(&mut watch).await, Idle::Ping);
        assert_eq!(start.elapsed(), Duration::from_secs(35));
        assert_eq!(next(&mut watch).await, Idle::Expired);
        assert_eq!(start.elapsed(), Duration::from_secs(40));
    }
}
