//! The client side of every network transport: one connection shared by many concurrent calls,
//! with per-call timeouts and automatic reconnection.
//!
//! * Writing: a caller puts its frame in the link's outbox and, if nobody is writing, becomes the
//!   writer: it writes every frame in the outbox (its own and those queued meanwhile by others)
//!   and flushes once. A lone caller thus writes straight to the socket, with no hand-off to
//!   another task, and calls made together share one flush.
//! * Reading: a caller waiting for its answer takes its turn reading the socket itself, routing
//!   every answer it reads to its caller by `callId`, until its own has come; so an answer wakes
//!   its caller directly, and no other task takes part in a call. While no call is in flight
//!   nobody reads; the first call after that reads what is already there *before* sending, so a
//!   connection that died while idle is noticed (and re-established) without losing the call.
//! * Losing the connection: every call in flight on it fails with `unavailable` (it is not resent:
//!   the server may already have run it), and a supervisor reconnects with exponential backoff
//!   and jitter. A call made while the client is reconnecting waits for the new connection,
//!   within its own timeout; if the connection is not back in time it fails with `unavailable`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::BoxFuture;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::client::{ClientConfig, Connection};
use crate::codec::{self, Frame};
use crate::protocol::{Cancel, Encoding, Envelope, ErrorCode, Invocation, Payload, RemoteError};
use crate::transport::{FrameError, FrameIo};

type Outcome = Result<Payload, RemoteError>;

/// Opens connections for a [`Multiplexed`] client (the framing is the transport's business).
pub(crate) trait Connector: Send + Sync + 'static {
    /// The framed connection.
    type Io: FrameIo + 'static;
    /// A description of the peer, for logs and errors.
    fn peer(&self) -> &str;
    /// Opens one connection.
    fn connect(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// The turn to read a link's socket.
type ReaderTurn<Io> = tokio::sync::OwnedMutexGuard<SplitStream<Io>>;

/// Callers waiting for answers on one link; `None` once the link is gone.
type Pending = Mutex<Option<HashMap<u64, oneshot::Sender<Outcome>>>>;

/// One live connection.
struct Link<Io: FrameIo> {
    outbox: Mutex<VecDeque<Frame>>,
    writer: tokio::sync::Mutex<SplitSink<Io, Frame>>,
    /// The reading half; whoever holds it routes the answers. tokio's mutex is fair, so turns
    /// are taken in order.
    reader: Arc<tokio::sync::Mutex<SplitStream<Io>>>,
    pending: Pending,
    /// Fired when reading or writing finds the connection gone; the supervisor then reconnects.
    broken: CancellationToken,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<Io: FrameIo> Link<Io> {
    fn new(io: Io) -> Arc<Self> {
        let (writer, reader) = io.split();
        Arc::new(Link {
            outbox: Mutex::default(),
            writer: tokio::sync::Mutex::new(writer),
            reader: Arc::new(tokio::sync::Mutex::new(reader)),
            pending: Mutex::new(Some(HashMap::new())),
            broken: CancellationToken::new(),
        })
    }

    /// If nobody is reading, reads what has already arrived (without waiting) and keeps the
    /// reading turn. `Err` if that shows the connection is gone.
    fn take_idle_reader(&self) -> Result<Option<ReaderTurn<Io>>, ()> {
        let Ok(mut reader) = self.reader.clone().try_lock_owned() else {
            return Ok(None);
        };
        while let Some(inbound) = reader.next().now_or_never() {
            match inbound {
                Some(Ok(frame)) => self.deliver(&frame),
                Some(Err(_)) | None => {
                    self.broken.cancel();
                    return Err(());
                }
            }
        }
        Ok(Some(reader))
    }

    /// Waits for the answer to `answer`'s call, reading the socket when it is this caller's turn
    /// (at once if it already holds the turn). `Err` means the connection was lost first.
    async fn answer(
        &self,
        mut answer: oneshot::Receiver<Outcome>,
        turn: Option<ReaderTurn<Io>>,
    ) -> Result<Outcome, ()> {
        let mut reader = match turn {
            Some(reader) => reader,
            None => tokio::select! {
                biased;
                outcome = &mut answer => return outcome.map_err(drop),
                reader = self.reader.clone().lock_owned() => reader,
            },
        };
        loop {
            // Another reader may have routed our answer before our turn came.
            match answer.try_recv() {
                Ok(outcome) => return Ok(outcome),
                Err(oneshot::error::TryRecvError::Closed) => return Err(()),
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            match reader.next().await {
                Some(Ok(frame)) => self.deliver(&frame),
                Some(Err(error)) => {
                    tracing::debug!(%error, "connection failed");
                    self.broken.cancel();
                    return Err(());
                }
                None => {
                    self.broken.cancel();
                    return Err(());
                }
            }
        }
    }

    /// Queues `frame` and writes the outbox unless another caller is already writing it.
    async fn send(&self, frame: Frame) -> Result<(), FrameError> {
        lock(&self.outbox).push_back(frame);
        loop {
            let Ok(mut writer) = self.writer.try_lock() else {
                // The current writer takes our frame: it looks at the outbox again after
                // releasing the socket.
                return Ok(());
            };
            loop {
                let batch: Vec<Frame> = lock(&self.outbox).drain(..).collect();
                if batch.is_empty() {
                    break;
                }
                let written = async {
                    for frame in batch {
                        writer.feed(frame).await?;
                    }
                    writer.flush().await
                }
                .await;
                if let Err(error) = written {
                    self.broken.cancel();
                    return Err(error);
                }
            }
            drop(writer);
            if lock(&self.outbox).is_empty() {
                return Ok(());
            }
        }
    }

    /// Registers a caller for `call_id`; `None` if the link is already gone.
    fn expect(&self, call_id: u64) -> Option<oneshot::Receiver<Outcome>> {
        let (reply, answer) = oneshot::channel();
        lock(&self.pending).as_mut()?.insert(call_id, reply);
        Some(answer)
    }

    fn forget(&self, call_id: u64) {
        if let Some(pending) = lock(&self.pending).as_mut() {
            pending.remove(&call_id);
        }
    }

    fn deliver(&self, frame: &Frame) {
        match codec::decode(frame) {
            Ok(Envelope::Response(response)) => match response.call_id {
                Some(call_id) => {
                    let reply = lock(&self.pending)
                        .as_mut()
                        .and_then(|pending| pending.remove(&call_id));
                    if let Some(reply) = reply {
                        let _ = reply.send(response.outcome);
                    }
                }
                None => {
                    if let Err(error) = response.outcome {
                        tracing::warn!(%error, "the server reported a connection error");
                    }
                }
            },
            Ok(other) => tracing::debug!(
                kind = other.kind(),
                "ignoring an envelope with no call waiting for it"
            ),
            Err(error) => tracing::warn!(%error, "malformed frame from the server"),
        }
    }
}

enum LinkState<Io: FrameIo> {
    Up(Arc<Link<Io>>),
    Reconnecting,
    Closed,
}

impl<Io: FrameIo> Clone for LinkState<Io> {
    fn clone(&self) -> Self {
        match self {
            LinkState::Up(link) => LinkState::Up(link.clone()),
            LinkState::Reconnecting => LinkState::Reconnecting,
            LinkState::Closed => LinkState::Closed,
        }
    }
}

/// A multiplexed, self-healing client connection.
pub(crate) struct Multiplexed<C: Connector> {
    config: ClientConfig,
    peer: String,
    link: watch::Receiver<LinkState<C::Io>>,
    next_call_id: AtomicU64,
    in_flight: Semaphore,
    closed: CancellationToken,
}

impl<C: Connector> Drop for Multiplexed<C> {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl<C: Connector> Multiplexed<C> {
    /// Connects once (failing if that fails), then keeps the connection up in the background.
    pub(crate) async fn connect(connector: C, config: ClientConfig) -> io::Result<Self> {
        let io = tokio::time::timeout(config.connect_timeout, connector.connect())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        // The first link is up before `connect` returns: calls made right away must not wait for
        // the supervisor task (waking waiters would lose the order the calls were made in).
        let link = Link::new(io);
        let (state, watched) = watch::channel(LinkState::Up(link.clone()));
        let closed = CancellationToken::new();
        let peer = connector.peer().to_owned();
        tokio::spawn(supervise(
            connector,
            link,
            state,
            config.clone(),
            closed.clone(),
        ));
        Ok(Multiplexed {
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            config,
            peer,
            link: watched,
            next_call_id: AtomicU64::new(1),
            closed,
        })
    }

    /// The live link, waiting (until `deadline`) for a reconnect if there is none. `dead` is a
    /// link the caller found closed: it does not count as live.
    async fn link(
        &self,
        deadline: Instant,
        dead: Option<&Arc<Link<C::Io>>>,
    ) -> Result<Arc<Link<C::Io>>, RemoteError> {
        let mut link = self.link.clone();
        loop {
            match &*link.borrow_and_update() {
                LinkState::Up(link) if !dead.is_some_and(|dead| Arc::ptr_eq(link, dead)) => {
                    return Ok(link.clone());
                }
                LinkState::Closed => {
                    return Err(RemoteError::unavailable(format!(
                        "the connection to {} is closed (reconnect attempts exhausted)",
                        self.peer
                    )));
                }
                LinkState::Up(_) | LinkState::Reconnecting => {}
            }
            match timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(RemoteError::unavailable(format!(
                        "not connected to {}: still reconnecting after {:?}",
                        self.peer, self.config.call_timeout
                    )));
                }
            }
        }
    }

    async fn call(&self, actor_id: &str, method: &str, args: Payload) -> Outcome {
        let deadline = Instant::now() + self.config.call_timeout;
        let call_id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope::Invocation(Invocation {
            call_id,
            actor_id: actor_id.to_owned(),
            method: method.to_owned(),
            args,
            metadata: self.config.metadata.clone(),
        });
        let frame = codec::encode(&envelope, self.config.encoding)
            .map_err(|error| RemoteError::bad_request(error.to_string()))?;
        if frame.data.len() > self.config.max_frame_size {
            return Err(RemoteError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the call of {} bytes exceeds the frame limit of {} bytes",
                    frame.data.len(),
                    self.config.max_frame_size
                ),
            ));
        }
        let _slot = match timeout_at(deadline, self.in_flight.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(self.lost()),
            Err(_) => return Err(self.timed_out(actor_id, method)),
        };
        let mut dead = None;
        let (link, turn) = loop {
            let link = self.link(deadline, dead.as_ref()).await?;
            match link.take_idle_reader() {
                Ok(turn) => break (link, turn),
                // Found dead before anything was sent: wait for the reconnect and go on.
                Err(()) => dead = Some(link),
            }
        };
        let answer = link.expect(call_id).ok_or_else(|| self.lost())?;
        match timeout_at(deadline, link.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                link.forget(call_id);
                return Err(self.lost());
            }
            Err(_) => {
                link.forget(call_id);
                return Err(self.timed_out(actor_id, method));
            }
        }
        match timeout_at(deadline, link.answer(answer, turn)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(())) => Err(self.lost()),
            Err(_) => {
                link.forget(call_id);
                self.send_cancel(link, call_id);
                Err(self.timed_out(actor_id, method))
            }
        }
    }

    /// Tells the server to stop a call nobody waits for any more (best effort).
    fn send_cancel(&self, link: Arc<Link<C::Io>>, call_id: u64) {
        let cancel = Envelope::Cancel(Cancel { call_id });
        if let Ok(frame) = codec::encode(&cancel, self.config.encoding) {
            tokio::spawn(async move {
                let _ = link.send(frame).await;
            });
        }
    }

    fn lost(&self) -> RemoteError {
        RemoteError::unavailable(format!(
            "the connection to {} was lost before the answer arrived",
            self.peer
        ))
    }

    fn timed_out(&self, actor_id: &str, method: &str) -> RemoteError {
        RemoteError::timeout(format!(
            "{actor_id}.{method} did not answer within {:?}",
            self.config.call_timeout
        ))
    }
}

/// Several connections to one server, used in turn.
pub(crate) struct Pool {
    members: Vec<Arc<dyn Connection>>,
    next: AtomicUsize,
}

impl Pool {
    /// Opens `config.connections` connections made by `connector` (at least one); a
    /// single connection is returned as it is.
    pub(crate) async fn connect<C: Connector>(
        connector: impl Fn() -> C,
        config: ClientConfig,
    ) -> io::Result<Arc<dyn Connection>> {
        let count = config.connections.max(1);
        let mut members: Vec<Arc<dyn Connection>> = Vec::with_capacity(count);
        for _ in 0..count {
            members.push(Arc::new(
                Multiplexed::connect(connector(), config.clone()).await?,
            ));
        }
        if members.len() == 1 {
            return Ok(members.remove(0));
        }
        Ok(Arc::new(Pool {
            members,
            next: AtomicUsize::new(0),
        }))
    }
}

impl Connection for Pool {
    fn encoding(&self) -> Encoding {
        self.members[0].encoding()
    }

    fn invoke<'a>(
        &'a self,
        actor_id: &'a str,
        method: &'a str,
        args: Payload,
    ) -> BoxFuture<'a, Outcome> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.members.len();
        self.members[turn].invoke(actor_id, method, args)
    }
}

impl<C: Connector> Connection for Multiplexed<C> {
    fn encoding(&self) -> Encoding {
        self.config.encoding
    }

    fn invoke<'a>(
        &'a self,
        actor_id: &'a str,
        method: &'a str,
        args: Payload,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.call(actor_id, method, args))
    }
}

/// Keeps a link up until the client is dropped or reconnecting gives up.
async fn supervise<C: Connector>(
    connector: C,
    first: Arc<Link<C::Io>>,
    state: watch::Sender<LinkState<C::Io>>,
    config: ClientConfig,
    closed: CancellationToken,
) {
    let mut first = Some(first);
    loop {
        let link = match first.take() {
            Some(link) => link,
            None => match reconnect(&connector, &config, &closed).await {
                Some(io) => {
                    let link = Link::new(io);
                    state.send_replace(LinkState::Up(link.clone()));
                    link
                }
                None => {
                    state.send_replace(LinkState::Closed);
                    return;
                }
            },
        };
        let lost = tokio::select! {
            _ = closed.cancelled() => false,
            _ = link.broken.cancelled() => true,
        };
        // Every caller still waiting on this link learns it is gone (their reply is dropped).
        lock(&link.pending).take();
        if !lost {
            state.send_replace(LinkState::Closed);
            let _ = link.writer.lock().await.close().await;
            return;
        }
        tracing::info!(peer = connector.peer(), "connection lost; reconnecting");
        state.send_replace(LinkState::Reconnecting);
    }
}

async fn reconnect<C: Connector>(
    connector: &C,
    config: &ClientConfig,
    closed: &CancellationToken,
) -> Option<C::Io> {
    let policy = &config.reconnect;
    let mut attempt = 0u32;
    loop {
        if policy.max_attempts.is_some_and(|max| attempt >= max) {
            tracing::warn!(
                peer = connector.peer(),
                attempts = attempt,
                "giving up reconnecting"
            );
            return None;
        }
        tokio::select! {
            _ = closed.cancelled() => return None,
            _ = tokio::time::sleep(policy.delay(attempt)) => {}
        }
        attempt += 1;
        let attempt_result = tokio::select! {
            _ = closed.cancelled() => return None,
            result = tokio::time::timeout(config.connect_timeout, connector.connect()) => result,
        };
        match attempt_result {
            Ok(Ok(io)) => {
                tracing::info!(peer = connector.peer(), attempt, "reconnected");
                return Some(io);
            }
            Ok(Err(error)) => {
                tracing::debug!(peer = connector.peer(), attempt, %error, "reconnect failed")
            }
            Err(_) => tracing::debug!(peer = connector.peer(), attempt, "reconnect timed out"),
        }
    }
}
