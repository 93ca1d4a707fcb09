//! How a server notices a peer that has stopped reading.
//!
//! The idle timeout watches what a connection receives; a peer that keeps its socket open but
//! takes nothing from it would otherwise hold the connection's loop in a write for good (and its
//! place under `ServerConfig::max_connections`). [`WriteDeadline`] ends such a write: a flush or
//! a wait for room that makes no progress for the limit fails the connection. The timer is armed
//! only while a write waits, so writes that complete at once cost nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Sink, Stream};
use tokio::time::Sleep;

use crate::codec::Frame;
use crate::transport::FrameError;

/// A frame stream whose writes fail after `limit` without progress.
pub(crate) struct WriteDeadline<Io> {
    io: Io,
    limit: Option<Duration>,
    /// Armed while a write waits.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<Io> WriteDeadline<Io> {
    /// Watches the writes of `io` (`None`: never gives up on a write).
    pub(crate) fn new(io: Io, limit: Option<Duration>) -> Self {
        WriteDeadline {
            io,
            limit,
            timer: None,
        }
    }

    /// Passes on what a write step returned: progress disarms the timer; a wait arms it, and
    /// fails once it has lasted the limit.
    fn watch(
        &mut self,
        cx: &mut Context<'_>,
        step: Poll<Result<(), FrameError>>,
    ) -> Poll<Result<(), FrameError>> {
        match step {
            Poll::Ready(result) => {
                self.timer = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let Some(limit) = self.limit else {
                    return Poll::Pending;
                };
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.timer = None;
                        Poll::Ready(Err(FrameError::Io(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("the peer has read nothing for {limit:?}"),
                        ))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<Io: Stream + Unpin> Stream for WriteDeadline<Io> {
    type Item = Io::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Io::Item>> {
        Pin::new(&mut self.io).poll_next(cx)
    }
}

impl<Io: Sink<Frame, Error = FrameError> + Unpin> Sink<Frame> for WriteDeadline<Io> {
    type Error = FrameError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let step = Pin::new(&mut self.io).poll_ready(cx);
        self.watch(cx, step)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
        Pin::new(&mut self.io).start_send(frame)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let step = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, step)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let step = Pin::new(&mut self.io).poll_close(cx);
        self.watch(cx, step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::SinkExt;
    use futures_util::sink::drain;

    /// A sink that never has room.
    struct Stuck;

    impl Sink<Frame> for Stuck {
        type Error = FrameError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
            Poll::Pending
        }
        fn start_send(self: Pin<&mut Self>, _: Frame) -> Result<(), FrameError> {
            Ok(())
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
            Poll::Pending
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
            Poll::Pending
        }
    }

    fn frame() -> Frame {
        Frame::keepalive()
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_fails_at_the_limit() {
        let start = tokio::time::Instant::now();
        let mut io = WriteDeadline::new(Stuck, Some(Duration::from_secs(5)));
        let error = io.send(frame()).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(error.to_string().contains("read nothing"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_that_complete_leave_no_timer() {
        let sink = drain().sink_map_err(|never| match never {});
        let mut io = WriteDeadline::new(sink, Some(Duration::from_secs(5)));
        for _ in 0..3 {
            io.send(frame()).await.unwrap();
            assert!(io.timer.is_none());
        }
    }
}
