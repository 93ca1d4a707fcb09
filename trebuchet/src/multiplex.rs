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
//! * Streams outlive their connection: the client remembers, per open stream, the last sequence
//!   number it received and the call that opened it. On the new connection it sends
//!   `streamResume` for each, and the server replays what was missed and goes on; the consumer
//!   sees every item once, in order. If the server restarts a stream instead (its replay buffer
//!   no longer reaches back), or the numbers jump, the consumer gets a [`StreamGap`] error and
//!   then the items that follow. Only when reconnecting gives up do streams end (`unavailable`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::client::{ClientConfig, Connection};
use crate::codec::{self, Frame, Incoming, InvocationRef};
use crate::deadlines::Deadlines;
use crate::protocol::{
    CallIdMap, Cancel, Encoding, Envelope, ErrorCode, Payload, RemoteError, Response,
    STREAM_BATCH_METADATA, STREAM_WINDOW_METADATA, StreamAck, StreamResume,
};
use crate::stream::{PayloadBatch, PayloadStream, StreamGap};
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
    /// The idle timeout the server announced on `io`, if it did.
    fn server_idle_timeout(_io: &Self::Io) -> Option<Duration> {
        None
    }
    /// The largest frame the server announced it accepts on `io`, if it did.
    fn server_max_frame_size(_io: &Self::Io) -> Option<usize> {
        None
    }
}

/// The largest frame to send on `io`: the client's own limit, or the server's if smaller.
fn frame_limit<C: Connector>(config: &ClientConfig, io: &C::Io) -> usize {
    C::server_max_frame_size(io).map_or(config.max_frame_size, |server| {
        server.min(config.max_frame_size)
    })
}

/// How often to send a keepalive on a connection: the configured interval, or a third of the
/// idle timeout the server announced if that is shorter (so the gap between two frames the
/// client sends, at most two intervals, stays under the timeout).
fn keepalive_interval(
    config: &ClientConfig,
    server_idle_timeout: Option<Duration>,
) -> Option<Duration> {
    let configured = config.keepalive_interval?;
    Some(match server_idle_timeout {
        Some(timeout) => configured.min(timeout / 3),
        None => configured,
    })
}

/// The turn to read a link's socket.
type ReaderTurn<Io> = tokio::sync::OwnedMutexGuard<SplitStream<Io>>;

/// What a call gets back: a response, or the start of a stream.
enum Answer {
    Value(Outcome),
    /// The stream's items, and its id on the server.
    Stream(mpsc::Receiver<StreamItem>, String),
}

/// One event of an open stream, in the stream's channel.
enum StreamItem {
    /// Consecutive items, numbered from `first_sequence`.
    Items {
        first_sequence: u64,
        items: PayloadBatch,
    },
    /// Items were missed before the next one (the stream goes on).
    Gap(StreamGap),
    /// The server restarted the stream as `stream_id` (numbered from 1 again): a gap too.
    Restarted {
        gap: StreamGap,
        stream_id: String,
    },
    Failed(RemoteError),
    End,
}

/// Room in a stream's channel beyond its window (`ClientConfig::stream_window`): for gap reports
/// and the end. A server that keeps to the window never makes the reader wait for a slow
/// consumer, so one slow stream does not hold up the others on its connection.
const STREAM_BUFFER_SPARE: usize = 8;

/// The most items of a stream the client takes in one `streamBatch` envelope.
const STREAM_BATCH: usize = 64;

/// A caller waiting for an answer.
struct Waiter {
    reply: oneshot::Sender<Answer>,
    /// What the call was, if it is a stream call (to resume the stream later).
    stream: Option<Arc<StreamCall>>,
}

/// Callers waiting for answers on one link; `None` once the link is gone.
type Pending = Mutex<Option<CallIdMap<Waiter>>>;

/// The call that opened a stream: what a `streamResume` repeats.
struct StreamCall {
    actor_id: String,
    method: String,
    args: Payload,
}

/// One open stream of a client, across reconnects.
struct StreamRoute {
    feed: mpsc::Sender<StreamItem>,
    /// Its id on the server (a restarted stream gets a new one).
    stream_id: String,
    /// The call the server knows it by on the current connection (for `cancel`).
    call_id: u64,
    /// The sequence number of the last item routed to the consumer.
    last_routed: u64,
    call: Arc<StreamCall>,
}

#[derive(Default)]
struct StreamRoutes {
    /// By the `callId` of the call that opened the stream (it stays the stream's key).
    routes: CallIdMap<StreamRoute>,
    by_stream_id: HashMap<String, u64>,
    /// `callId` of a `streamResume` sent on the current connection → the stream's key.
    resuming: CallIdMap<u64>,
}

/// Stream events waiting for room in their consumer's channel.
struct Backlog {
    feed: mpsc::Sender<StreamItem>,
    items: Vec<StreamItem>,
}

impl Backlog {
    fn one(feed: mpsc::Sender<StreamItem>, item: StreamItem) -> Self {
        Backlog {
            feed,
            items: vec![item],
        }
    }

    /// Sends the events, waiting for room (a consumer gone drops them).
    async fn send(self) {
        for item in self.items {
            if self.feed.send(item).await.is_err() {
                return;
            }
        }
    }
}

/// The open streams of one client, shared by its successive links.
struct StreamTable {
    routes: Mutex<StreamRoutes>,
    /// The client's flow-control window (`ClientConfig::stream_window`).
    window: u64,
}

impl StreamTable {
    fn new(window: u64) -> Self {
        StreamTable {
            routes: Mutex::default(),
            window,
        }
    }

    /// How many items a consumer takes between acknowledgements: a quarter of the window.
    fn ack_interval(&self) -> u64 {
        (self.window / 4).max(1)
    }

    fn routes(&self) -> MutexGuard<'_, StreamRoutes> {
        lock(&self.routes)
    }

    /// A new stream, answered with `streamStart` to the call `key`.
    fn open(
        &self,
        key: u64,
        stream_id: String,
        call: Arc<StreamCall>,
    ) -> mpsc::Receiver<StreamItem> {
        let (feed, items) = mpsc::channel(stream_buffer(self.window));
        let mut routes = self.routes();
        routes.by_stream_id.insert(stream_id.clone(), key);
        routes.routes.insert(
            key,
            StreamRoute {
                feed,
                stream_id,
                call_id: key,
                last_routed: 0,
                call,
            },
        );
        items
    }

    /// Hands stream items (numbered from `first_sequence`) to their consumer: straight into its
    /// channel when there is room (the usual case: a server keeps to the flow-control window),
    /// else the [`Backlog`] of what is left to send, waiting for room (`None` once delivered, or
    /// dropped: an unknown stream, or items already routed, replayed twice). A jump in the
    /// numbering is reported as a gap first.
    fn route(
        &self,
        stream_id: &str,
        first_sequence: u64,
        mut items: PayloadBatch,
    ) -> Option<Backlog> {
        let last = (items.len() as u64)
            .checked_sub(1)
            .and_then(|more| first_sequence.checked_add(more))?;
        let mut routes = self.routes();
        let key = routes.by_stream_id.get(stream_id).copied()?;
        let route = routes.routes.get_mut(&key)?;
        if last <= route.last_routed {
            return None;
        }
        let seen = route
            .last_routed
            .saturating_sub(first_sequence.saturating_sub(1));
        let first_sequence = first_sequence + seen;
        items.skip_items(seen as usize);
        let gap = (first_sequence != route.last_routed + 1).then(|| {
            StreamItem::Gap(StreamGap {
                last_sequence: route.last_routed,
                resumed_at: Some(first_sequence),
            })
        });
        route.last_routed = last;
        let items = StreamItem::Items {
            first_sequence,
            items,
        };
        let mut events = gap.into_iter().chain([items]);
        while let Some(event) = events.next() {
            match route.feed.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    return Some(Backlog {
                        feed: route.feed.clone(),
                        items: std::iter::once(event).chain(events).collect(),
                    });
                }
                // The consumer is gone (its stream is being removed).
                Err(mpsc::error::TrySendError::Closed(_)) => return None,
            }
        }
        None
    }

    /// Removes the stream `key`.
    fn remove(&self, key: u64) -> Option<StreamRoute> {
        let mut routes = self.routes();
        let route = routes.routes.remove(&key)?;
        routes.by_stream_id.remove(&route.stream_id);
        Some(route)
    }

    /// Removes the stream with server id `stream_id` (it ended).
    fn finish(&self, stream_id: &str) -> Option<mpsc::Sender<StreamItem>> {
        let key = self.routes().by_stream_id.get(stream_id).copied()?;
        self.remove(key).map(|route| route.feed)
    }

    /// The server restarted the stream resumed with `call_id` as `stream_id`: route it there.
    /// Returns where to report that, and the report.
    fn restarted(
        &self,
        call_id: u64,
        stream_id: String,
    ) -> Option<(mpsc::Sender<StreamItem>, StreamItem)> {
        let mut routes = self.routes();
        let key = routes.resuming.remove(&call_id)?;
        let route = routes.routes.get_mut(&key)?;
        let gap = StreamGap {
            last_sequence: route.last_routed,
            resumed_at: None,
        };
        let old = std::mem::replace(&mut route.stream_id, stream_id.clone());
        route.last_routed = 0;
        let feed = route.feed.clone();
        routes.by_stream_id.remove(&old);
        routes.by_stream_id.insert(stream_id.clone(), key);
        Some((feed, StreamItem::Restarted { gap, stream_id }))
    }

    /// The server answered the resume `call_id` with an error instead of a stream.
    fn resume_refused(&self, call_id: u64) -> Option<mpsc::Sender<StreamItem>> {
        let key = self.routes().resuming.remove(&call_id)?;
        self.remove(key).map(|route| route.feed)
    }

    /// The `streamResume` of every open stream, for a new connection; each gets a new `callId`.
    fn resumes(&self, call_ids: &AtomicU64, config: &ClientConfig) -> Vec<StreamResume> {
        let mut routes = self.routes();
        let routes = &mut *routes;
        routes.resuming.clear();
        let metadata = stream_metadata(config);
        routes
            .routes
            .iter_mut()
            .map(|(key, route)| {
                let call_id = call_ids.fetch_add(1, Ordering::Relaxed);
                routes.resuming.insert(call_id, *key);
                route.call_id = call_id;
                StreamResume {
                    stream_id: route.stream_id.clone(),
                    last_sequence: route.last_routed,
                    actor_id: route.call.actor_id.clone(),
                    method: route.call.method.clone(),
                    args: route.call.args.clone(),
                    call_id: Some(call_id),
                    metadata: metadata.clone(),
                }
            })
            .collect()
    }

    /// Ends every stream (their consumers get `unavailable`): the client is closed for good.
    fn close(&self) {
        *self.routes() = StreamRoutes::default();
    }
}

/// One live connection.
struct Link<Io: FrameIo> {
    outbox: Mutex<VecDeque<Frame>>,
    writer: tokio::sync::Mutex<SplitSink<Io, Frame>>,
    /// The reading half; whoever holds it routes the answers. tokio's mutex is fair, so turns
    /// are taken in order.
    reader: Arc<tokio::sync::Mutex<SplitStream<Io>>>,
    pending: Pending,
    /// The client's open streams.
    streams: Arc<StreamTable>,
    /// Fired when reading or writing finds the connection gone; the supervisor then reconnects.
    broken: CancellationToken,
    /// Whether a frame was sent since the supervisor last looked (if not, it sends a keepalive).
    sent: AtomicBool,
    /// How often the supervisor looks (`None`: no keepalives).
    keepalive: Option<Duration>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<Io: FrameIo + 'static> Link<Io> {
    fn new(io: Io, streams: Arc<StreamTable>, keepalive: Option<Duration>) -> Arc<Self> {
        let (writer, reader) = io.split();
        Arc::new(Link {
            outbox: Mutex::default(),
            writer: tokio::sync::Mutex::new(writer),
            reader: Arc::new(tokio::sync::Mutex::new(reader)),
            pending: Mutex::new(Some(CallIdMap::default())),
            streams,
            broken: CancellationToken::new(),
            sent: AtomicBool::new(false),
            keepalive,
        })
    }

    /// If nobody is reading, reads what has already arrived (without waiting for more) and keeps
    /// the reading turn. `Err` if that shows the connection is gone.
    async fn take_idle_reader(&self) -> Result<Option<ReaderTurn<Io>>, ()> {
        let Ok(mut reader) = self.reader.clone().try_lock_owned() else {
            return Ok(None);
        };
        self.route_arrived(&mut reader, usize::MAX).await?;
        Ok(Some(reader))
    }

    /// Routes the frames that have already arrived (at most `limit`), without waiting for more.
    /// `Err` if that shows the connection is gone.
    async fn route_arrived(&self, reader: &mut ReaderTurn<Io>, limit: usize) -> Result<(), ()> {
        for _ in 0..limit {
            match reader.next().now_or_never() {
                Some(Some(Ok(frame))) => self.route(&frame).await,
                Some(_) => {
                    self.broken.cancel();
                    return Err(());
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Reads one frame with the reading turn and routes it; `Err` if the connection is gone.
    async fn read_one(&self, reader: &mut ReaderTurn<Io>) -> Result<(), ()> {
        match reader.next().await {
            Some(Ok(frame)) => {
                self.route(&frame).await;
                Ok(())
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "connection failed");
                self.broken.cancel();
                Err(())
            }
            None => {
                self.broken.cancel();
                Err(())
            }
        }
    }

    /// Delivers `frame`, then waits (the client's backpressure) until what a stream consumer had
    /// no room for is handed over. That wait is rare, so its future is boxed: the futures of the
    /// calls reading the socket stay small.
    async fn route(&self, frame: &Frame) {
        if let Some(backlog) = self.deliver(frame) {
            backlog.send().boxed().await;
        }
    }

    /// Waits for the answer to `answer`'s call, reading the socket when it is this caller's turn
    /// (at once if it already holds the turn). `Err` means the connection was lost first.
    async fn answer(
        &self,
        mut answer: oneshot::Receiver<Answer>,
        turn: Option<ReaderTurn<Io>>,
    ) -> Result<Answer, ()> {
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
            self.read_one(&mut reader).await?;
        }
    }

    /// The next event of a stream, reading the socket when it is this consumer's turn. `Ok(None)`
    /// when the channel closed without an end (the client gave up), `Err` when this link is lost.
    async fn next_item(
        &self,
        items: &mut mpsc::Receiver<StreamItem>,
    ) -> Result<Option<StreamItem>, ()> {
        let mut reader = tokio::select! {
            biased;
            item = items.recv() => return Ok(item),
            reader = self.reader.clone().lock_owned() => reader,
        };
        loop {
            match items.try_recv() {
                Ok(item) => {
                    // Route what has already arrived before giving the turn back, so the next
                    // items are waiting in the channel instead of each needing a turn. Never more
                    // than our own channel has room for: we are the one who empties it.
                    let room = items.capacity().saturating_sub(1);
                    // A lost connection shows at the next read; this item is still good.
                    let _ = self.route_arrived(&mut reader, room).await;
                    return Ok(Some(item));
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(None),
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            self.read_one(&mut reader).await?;
        }
    }

    /// Queues `frame` and writes the outbox unless another caller is already writing it.
    async fn send(&self, frame: Frame) -> Result<(), FrameError> {
        self.sent.store(true, Ordering::Relaxed);
        lock(&self.outbox).push_back(frame);
        loop {
            let Ok(mut writer) = self.writer.try_lock() else {
                // The current writer takes our frame: it looks at the outbox again after
                // releasing the socket.
                return Ok(());
            };
            let written = async {
                while let Some(frame) = self.next_queued() {
                    writer.feed(frame).await?;
                }
                writer.flush().await
            }
            .await;
            if let Err(error) = written {
                self.broken.cancel();
                return Err(error);
            }
            drop(writer);
            if lock(&self.outbox).is_empty() {
                return Ok(());
            }
        }
    }

    /// The oldest frame in the outbox.
    fn next_queued(&self) -> Option<Frame> {
        lock(&self.outbox).pop_front()
    }

    /// Registers a caller for `call_id` (with what it is, if it opens a stream); `None` if the
    /// link is already gone.
    fn expect(
        &self,
        call_id: u64,
        stream: Option<Arc<StreamCall>>,
    ) -> Option<oneshot::Receiver<Answer>> {
        let (reply, answer) = oneshot::channel();
        lock(&self.pending)
            .as_mut()?
            .insert(call_id, Waiter { reply, stream });
        Some(answer)
    }

    fn forget(&self, call_id: u64) {
        if let Some(pending) = lock(&self.pending).as_mut() {
            pending.remove(&call_id);
        }
    }

    /// Routes one frame from the server to whoever waits for it; returns the stream events that
    /// must wait for room in their consumer's channel.
    fn deliver(&self, frame: &Frame) -> Option<Backlog> {
        let envelope = match codec::decode_incoming(frame) {
            Ok(Incoming::StreamItems {
                stream_id,
                first_sequence,
                items,
            }) => {
                return self.streams.route(&stream_id, first_sequence, items);
            }
            Ok(Incoming::Envelope(envelope)) => envelope,
            Err(error) => {
                tracing::warn!(%error, "malformed frame from the server");
                return None;
            }
        };
        match envelope {
            Envelope::Response(Response {
                call_id: Some(call_id),
                outcome,
            }) => {
                if let Some(waiter) = self.take_waiter(call_id) {
                    let _ = waiter.reply.send(Answer::Value(outcome));
                    None
                } else {
                    // A stream the server could only restart, and the restart was refused.
                    let feed = self.streams.resume_refused(call_id)?;
                    let error = outcome.err().unwrap_or_else(|| {
                        RemoteError::internal("a restarted stream was answered with a value")
                    });
                    Some(Backlog::one(feed, StreamItem::Failed(error)))
                }
            }
            Envelope::Response(Response {
                call_id: None,
                outcome,
            }) => {
                if let Err(error) = outcome {
                    tracing::warn!(%error, "the server reported a connection error");
                }
                None
            }
            Envelope::StreamStart(start) => {
                if let Some(waiter) = self.take_waiter(start.call_id) {
                    let stream_id = start.stream_id.clone();
                    let items = match waiter.stream {
                        Some(call) => self.streams.open(start.call_id, start.stream_id, call),
                        // Not a stream call: the caller refuses the stream.
                        None => mpsc::channel(1).1,
                    };
                    let _ = waiter.reply.send(Answer::Stream(items, stream_id));
                    None
                } else {
                    let (feed, restarted) =
                        self.streams.restarted(start.call_id, start.stream_id)?;
                    Some(Backlog::one(feed, restarted))
                }
            }
            Envelope::StreamEnd(end) => self.finish_stream(&end.stream_id, StreamItem::End),
            Envelope::StreamError(failure) => {
                self.finish_stream(&failure.stream_id, StreamItem::Failed(failure.error))
            }
            other => {
                tracing::debug!(
                    kind = other.kind(),
                    "ignoring an envelope no client expects"
                );
                None
            }
        }
    }

    fn take_waiter(&self, call_id: u64) -> Option<Waiter> {
        lock(&self.pending)
            .as_mut()
            .and_then(|pending| pending.remove(&call_id))
    }

    fn finish_stream(&self, stream_id: &str, last: StreamItem) -> Option<Backlog> {
        let feed = self.streams.finish(stream_id)?;
        Some(Backlog::one(feed, last))
    }

    /// Sends `cancel` for `call_id` from a task of its own (best effort; callable from `Drop`).
    fn cancel(self: Arc<Self>, call_id: u64, encoding: Encoding) {
        let cancel = Envelope::Cancel(Cancel { call_id });
        if let (Ok(frame), Ok(runtime)) = (
            codec::encode(&cancel, encoding),
            tokio::runtime::Handle::try_current(),
        ) {
            runtime.spawn(async move {
                let _ = self.send(frame).await;
            });
        }
    }
}

/// A call registered on a link and not answered yet. Dropped before it is `done` (the call timed
/// out, or its caller stopped waiting), it forgets the call and, if it was sent, tells the server
/// to stop it.
struct CallInFlight<'a, Io: FrameIo + 'static> {
    link: &'a Arc<Link<Io>>,
    call_id: u64,
    sent: bool,
    done: bool,
    encoding: Encoding,
}

impl<Io: FrameIo + 'static> Drop for CallInFlight<'_, Io> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.link.forget(self.call_id);
        if self.sent {
            self.link.clone().cancel(self.call_id, self.encoding);
        }
    }
}

/// The sequence number of the last of `items`, the first of which is `first_sequence` (routed
/// items are never empty, and `StreamTable::route` checked that the last number fits).
fn last_of(first_sequence: u64, items: &PayloadBatch) -> u64 {
    first_sequence + (items.len() as u64).saturating_sub(1)
}

/// Room for the items of a stream with flow-control window `window`, and a few more events.
fn stream_buffer(window: u64) -> usize {
    usize::try_from(window).unwrap_or(usize::MAX / 2) + STREAM_BUFFER_SPARE
}

/// The metadata of a stream call (or resume): the client's own, flow control and batches.
fn stream_metadata(config: &ClientConfig) -> crate::protocol::Metadata {
    let mut metadata = config.outgoing_metadata();
    metadata.insert(
        STREAM_WINDOW_METADATA.to_owned(),
        config.stream_window.to_string(),
    );
    metadata.insert(STREAM_BATCH_METADATA.to_owned(), STREAM_BATCH.to_string());
    metadata
}

/// The caller's side of an open stream. It reads whichever link is current: the stream goes on
/// across reconnects.
struct StreamConsumer<Io: FrameIo + 'static> {
    link: watch::Receiver<LinkState<Io>>,
    streams: Arc<StreamTable>,
    items: mpsc::Receiver<StreamItem>,
    /// The stream's key in `streams`.
    key: u64,
    cancel_encoding: Encoding,
    done: bool,
    /// The last item taken and the last acknowledged (numbers of the stream as it is now).
    taken: u64,
    acked: u64,
    /// The stream's id on the server, as of the items being taken (what acks name: items taken
    /// before a restart are acknowledged to the old stream, which ignores it).
    stream_id: String,
    /// An event taken from the channel by [`take_received`](Self::take_received) that needs
    /// [`next`](Self::next) (an acknowledgement is due, or it is not items).
    stashed: Option<StreamItem>,
    /// How many items to take between acknowledgements: a quarter of the window, less once the
    /// server has been seen to wait for acknowledgements sooner (see [`IDLE_ACK_DELAY`]).
    ack_every: u64,
}

/// How long a consumer that has taken everything it was sent, and not acknowledged all of it,
/// waits for more before it acknowledges anyway.
///
/// The server may hold a stream to a smaller window than the client asked for (its replay buffer
/// keeps fewer items or bytes, see `ReplayConfig`), and does not say so: it then stops before the
/// next acknowledgement is due. This acknowledgement gets it going again, and the consumer
/// acknowledges that stream every half of what it had taken from then on, so that it does not
/// stop again; but not more often than every [`MIN_ACK_EVERY`] items.
const IDLE_ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

/// The fewest items between acknowledgements that waiting teaches a consumer (see
/// [`IDLE_ACK_DELAY`]). A producer that is merely slow also makes the consumer wait with a few
/// items unacknowledged; were it to learn from that, it would acknowledge every item or two once
/// the stream speeds up.
const MIN_ACK_EVERY: u64 = 16;

impl<Io: FrameIo + 'static> StreamConsumer<Io> {
    /// The next items received already, if taking them needs nothing else (no acknowledgement
    /// is due): what most batches of a flowing stream are, taken without a future.
    fn take_received(&mut self) -> Option<PayloadBatch> {
        if self.done || self.stashed.is_some() {
            return None;
        }
        match self.items.try_recv().ok()? {
            StreamItem::Items {
                first_sequence,
                items,
            } if last_of(first_sequence, &items) < self.acked.saturating_add(self.ack_every) => {
                self.taken = last_of(first_sequence, &items);
                Some(items)
            }
            other => {
                self.stashed = Some(other);
                None
            }
        }
    }

    async fn next(&mut self) -> Option<Result<PayloadBatch, RemoteError>> {
        if self.done {
            return None;
        }
        let item = match self.stashed.take() {
            Some(item) => Some(item),
            None => self.next_item().await,
        };
        let (item, done) = match item {
            Some(StreamItem::Items {
                first_sequence,
                items,
            }) => {
                self.taken = last_of(first_sequence, &items);
                if self.taken >= self.acked.saturating_add(self.ack_every) {
                    self.acknowledge().await;
                }
                return Some(Ok(items));
            }
            Some(StreamItem::Gap(gap)) => (Some(Err(gap.into_error())), false),
            Some(StreamItem::Restarted { gap, stream_id }) => {
                (self.taken, self.acked) = (0, 0);
                self.stream_id = stream_id;
                (Some(Err(gap.into_error())), false)
            }
            Some(StreamItem::End) => {
                // Tells the server we have it all: it need not keep the ended stream for us.
                self.acknowledge().await;
                (None, true)
            }
            Some(StreamItem::Failed(error)) => (Some(Err(error)), true),
            None => (
                Some(Err(RemoteError::unavailable(
                    "the connection was lost before the stream ended and could not be re-established",
                ))),
                true,
            ),
        };
        self.done = done;
        item
    }

    /// Tells the server the items taken so far (best effort: a lost ack is made up for by the
    /// next, or by the `streamResume` after a reconnect).
    async fn acknowledge(&mut self) {
        self.acked = self.taken;
        if let Some(link) = self.current_link()
            && let Some(frame) = encode_ack(&self.stream_id, self.taken, self.cancel_encoding)
        {
            let _ = link.send(frame).await;
        }
    }

    /// The link up now, if any (none while reconnecting).
    fn current_link(&self) -> Option<Arc<Link<Io>>> {
        match &*self.link.borrow() {
            LinkState::Up(link) => Some(link.clone()),
            LinkState::Reconnecting | LinkState::Closed => None,
        }
    }

    /// The next event, reading the current link; while reconnecting, waits for the next link
    /// (or for the client to give up: then `None`). Acknowledges what was taken if nothing
    /// comes for [`IDLE_ACK_DELAY`].
    async fn next_item(&mut self) -> Option<StreamItem> {
        // Items routed already (the usual case while a stream flows) need no link.
        if let Ok(item) = self.items.try_recv() {
            return Some(item);
        }
        if self.taken <= self.acked {
            return next_from_links(&mut self.items, &mut self.link).await;
        }
        let link = self.current_link();
        // (Reading the link must not be cancelled: it may be routing another stream's items.)
        let next = next_from_links(&mut self.items, &mut self.link);
        let mut next = std::pin::pin!(next);
        tokio::select! {
            biased;
            item = &mut next => return item,
            () = tokio::time::sleep(IDLE_ACK_DELAY) => {}
        }
        // The server is waiting for an acknowledgement sooner than we send them.
        let unacknowledged = self.taken - self.acked;
        self.ack_every = self.ack_every.min((unacknowledged / 2).max(MIN_ACK_EVERY));
        self.acked = self.taken;
        if let Some(link) = link
            && let Some(frame) = encode_ack(&self.stream_id, self.taken, self.cancel_encoding)
        {
            // Sent by a task of its own: this one holds the reading turn meanwhile.
            tokio::spawn(async move {
                let _ = link.send(frame).await;
            });
        }
        next.await
    }
}

/// The `streamAck` of the items up to `taken` of stream `stream_id`.
fn encode_ack(stream_id: &str, taken: u64, encoding: Encoding) -> Option<Frame> {
    let ack = Envelope::StreamAck(StreamAck {
        stream_id: stream_id.to_owned(),
        sequence_number: taken,
    });
    codec::encode(&ack, encoding).ok()
}

/// The next event of a stream from `items`, reading the current link of `links`; while
/// reconnecting, waits for the next link (or for the client to give up: then `None`).
async fn next_from_links<Io: FrameIo + 'static>(
    items: &mut mpsc::Receiver<StreamItem>,
    links: &mut watch::Receiver<LinkState<Io>>,
) -> Option<StreamItem> {
    loop {
        let state = links.borrow_and_update().clone();
        if let LinkState::Up(link) = state
            && let Ok(item) = link.next_item(items).await
        {
            return item;
        }
        tokio::select! {
            item = items.recv() => return item,
            changed = links.changed() => if changed.is_err() {
                return items.recv().await;
            },
        }
    }
}

/// What comes next from a consumer that had nothing ready: it is lent to this future meanwhile.
type NextFromLink<Io> = BoxFuture<
    'static,
    (
        Option<Result<PayloadBatch, RemoteError>>,
        StreamConsumer<Io>,
    ),
>;

/// A [`StreamConsumer`] as the caller's stream: items already received are handed out as they
/// are; for the rest (reading the link, acknowledging, the end) the consumer is lent to a future.
struct ConsumerStream<Io: FrameIo + 'static> {
    /// `None` while lent to `waiting`.
    consumer: Option<StreamConsumer<Io>>,
    waiting: Option<NextFromLink<Io>>,
}

impl<Io: FrameIo + 'static> futures_util::Stream for ConsumerStream<Io> {
    type Item = Result<PayloadBatch, RemoteError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(consumer) = this.consumer.as_mut()
            && let Some(items) = consumer.take_received()
        {
            return std::task::Poll::Ready(Some(Ok(items)));
        }
        let waiting = match &mut this.waiting {
            Some(waiting) => waiting,
            None => {
                let Some(mut consumer) = this.consumer.take() else {
                    return std::task::Poll::Ready(None);
                };
                this.waiting.insert(Box::pin(async move {
                    let item = consumer.next().await;
                    (item, consumer)
                }))
            }
        };
        let (item, consumer) = std::task::ready!(waiting.as_mut().poll(cx));
        this.waiting = None;
        this.consumer = Some(consumer);
        std::task::Poll::Ready(item)
    }
}

impl<Io: FrameIo + 'static> Drop for StreamConsumer<Io> {
    fn drop(&mut self) {
        if let Some(route) = self.streams.remove(self.key)
            && !self.done
            && let LinkState::Up(link) = &*self.link.borrow()
        {
            // The caller stopped reading: stop the stream at the server.
            link.clone().cancel(route.call_id, self.cancel_encoding);
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
    /// Shared with the supervisor, which numbers the `streamResume`s it sends.
    next_call_id: Arc<AtomicU64>,
    streams: Arc<StreamTable>,
    in_flight: Semaphore,
    /// The deadlines of the calls in flight, watched by one task (see [`Deadlines`]).
    deadlines: Arc<Deadlines>,
    closed: CancellationToken,
    /// The largest frame sent on the current connection (see [`frame_limit`]).
    frame_limit: Arc<AtomicUsize>,
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
        let streams = Arc::new(StreamTable::new(config.stream_window.max(1)));
        let keepalive = keepalive_interval(&config, C::server_idle_timeout(&io));
        let frame_limit = Arc::new(AtomicUsize::new(frame_limit::<C>(&config, &io)));
        let link = Link::new(io, streams.clone(), keepalive);
        let (state, watched) = watch::channel(LinkState::Up(link.clone()));
        let closed = CancellationToken::new();
        let peer = connector.peer().to_owned();
        let next_call_id = Arc::new(AtomicU64::new(1));
        tokio::spawn(supervise(
            connector,
            link,
            state,
            config.clone(),
            closed.clone(),
            next_call_id.clone(),
            frame_limit.clone(),
        ));
        let deadlines = Arc::new(Deadlines::default());
        let watcher = deadlines.clone();
        let stop = closed.clone();
        tokio::spawn(async move { watcher.watch_until(stop).await });
        Ok(Multiplexed {
            in_flight: Semaphore::new(config.max_in_flight.max(1)),
            config,
            peer,
            link: watched,
            next_call_id,
            streams,
            deadlines,
            closed,
            frame_limit,
        })
    }

    /// The live link, waiting (until `deadline`) for a reconnect if there is none. `dead` is a
    /// link the caller found closed: it does not count as live.
    async fn link(
        &self,
        deadline: Instant,
        dead: Option<&Arc<Link<C::Io>>>,
    ) -> Result<Arc<Link<C::Io>>, RemoteError> {
        if let LinkState::Up(link) = &*self.link.borrow()
            && !dead.is_some_and(|dead| Arc::ptr_eq(link, dead))
        {
            return Ok(link.clone());
        }
        // Reconnecting (rare): its wait is boxed, so that every call's future stays small.
        self.wait_for_link(deadline, dead).boxed().await
    }

    async fn wait_for_link(
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

    /// Sends one invocation and waits (within the call timeout) for what comes back.
    async fn exchange(
        &self,
        actor_id: &str,
        method: &str,
        args: Payload,
        is_stream: bool,
    ) -> Result<(Arc<Link<C::Io>>, u64, Answer), RemoteError> {
        let deadline = Instant::now() + self.config.call_timeout;
        let call_id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let metadata = if is_stream {
            stream_metadata(&self.config)
        } else {
            self.config.outgoing_metadata()
        };
        let invocation = InvocationRef {
            call_id,
            actor_id,
            method,
            args: &args,
            metadata: &metadata,
        };
        let frame = codec::encode_invocation(&invocation, self.config.encoding)
            .map_err(|error| RemoteError::bad_request(error.to_string()))?;
        let limit = self.frame_limit.load(Ordering::Relaxed);
        if frame.data.len() > limit {
            return Err(RemoteError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the call of {} bytes exceeds the frame limit of {limit} bytes",
                    frame.data.len(),
                ),
            ));
        }
        let stream = is_stream.then(|| {
            Arc::new(StreamCall {
                actor_id: actor_id.to_owned(),
                method: method.to_owned(),
                args,
            })
        });
        // One deadline for the whole call (watched by the connection's watcher, not a timer of
        // its own); if it passes first, dropping `send_and_wait` forgets the call (and tells the
        // server, if the call was sent).
        let expiry = self.deadlines.watch(deadline);
        tokio::select! {
            biased;
            outcome = self.send_and_wait(call_id, frame, stream, deadline) => outcome,
            () = expiry => Err(self.timed_out(actor_id, method)),
        }
    }

    /// Sends the invocation `frame` of `call_id` on the live link (waiting for a slot in flight and,
    /// while reconnecting, for the link until `deadline`) and waits for its answer.
    async fn send_and_wait(
        &self,
        call_id: u64,
        frame: Frame,
        stream: Option<Arc<StreamCall>>,
        deadline: Instant,
    ) -> Result<(Arc<Link<C::Io>>, u64, Answer), RemoteError> {
        let _slot = self.in_flight.acquire().await.map_err(|_| self.lost())?;
        let mut dead = None;
        let (link, turn) = loop {
            let link = self.link(deadline, dead.as_ref()).await?;
            match link.take_idle_reader().await {
                Ok(turn) => break (link, turn),
                // Found dead before anything was sent: wait for the reconnect and go on.
                Err(()) => dead = Some(link),
            }
        };
        let answer = link.expect(call_id, stream).ok_or_else(|| self.lost())?;
        let mut call = CallInFlight {
            link: &link,
            call_id,
            sent: false,
            done: false,
            encoding: self.config.encoding,
        };
        if link.send(frame).await.is_err() {
            return Err(self.lost());
        }
        call.sent = true;
        let answer = link.answer(answer, turn).await;
        // Answered, or the link is gone (and every caller waiting on it with it).
        call.done = true;
        match answer {
            Ok(answer) => Ok((link.clone(), call_id, answer)),
            Err(()) => Err(self.lost()),
        }
    }

    async fn call(&self, actor_id: &str, method: &str, args: Payload) -> Outcome {
        match self.exchange(actor_id, method, args, false).await? {
            (_, _, Answer::Value(outcome)) => outcome,
            (link, call_id, Answer::Stream(..)) => {
                self.send_cancel(&link, call_id);
                Err(RemoteError::internal(format!(
                    "{actor_id}.{method} answered with a stream, not a value"
                )))
            }
        }
    }

    async fn open_stream(
        &self,
        actor_id: &str,
        method: &str,
        args: Payload,
    ) -> Result<PayloadStream, RemoteError> {
        match self.exchange(actor_id, method, args, true).await? {
            (_, call_id, Answer::Stream(items, stream_id)) => {
                let consumer = StreamConsumer {
                    link: self.link.clone(),
                    streams: self.streams.clone(),
                    items,
                    key: call_id,
                    cancel_encoding: self.config.encoding,
                    done: false,
                    taken: 0,
                    acked: 0,
                    stream_id,
                    stashed: None,
                    ack_every: self.streams.ack_interval(),
                };
                Ok(ConsumerStream {
                    consumer: Some(consumer),
                    waiting: None,
                }
                .boxed())
            }
            (_, _, Answer::Value(Err(error))) => Err(error),
            (_, _, Answer::Value(Ok(_))) => Err(RemoteError::internal(format!(
                "{actor_id}.{method} answered with a value, not a stream"
            ))),
        }
    }

    /// Tells the server to stop a call nobody waits for any more (best effort).
    fn send_cancel(&self, link: &Arc<Link<C::Io>>, call_id: u64) {
        link.clone().cancel(call_id, self.config.encoding);
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

impl Pool {
    fn member(&self) -> &Arc<dyn Connection> {
        &self.members[self.next.fetch_add(1, Ordering::Relaxed) % self.members.len()]
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
        self.member().invoke(actor_id, method, args)
    }

    fn open_stream<'a>(
        &'a self,
        actor_id: &'a str,
        method: &'a str,
        args: Payload,
    ) -> BoxFuture<'a, Result<PayloadStream, RemoteError>> {
        self.member().open_stream(actor_id, method, args)
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

    fn open_stream<'a>(
        &'a self,
        actor_id: &'a str,
        method: &'a str,
        args: Payload,
    ) -> BoxFuture<'a, Result<PayloadStream, RemoteError>> {
        Box::pin(self.open_stream(actor_id, method, args))
    }
}

/// Keeps a link up until the client is dropped or reconnecting gives up.
async fn supervise<C: Connector>(
    connector: C,
    first: Arc<Link<C::Io>>,
    state: watch::Sender<LinkState<C::Io>>,
    config: ClientConfig,
    closed: CancellationToken,
    call_ids: Arc<AtomicU64>,
    frame_limit_now: Arc<AtomicUsize>,
) {
    let streams = first.streams.clone();
    let mut first = Some(first);
    loop {
        let link = match first.take() {
            Some(link) => link,
            None => match reconnect(&connector, &config, &closed).await {
                Some(io) => {
                    let keepalive = keepalive_interval(&config, C::server_idle_timeout(&io));
                    frame_limit_now.store(frame_limit::<C>(&config, &io), Ordering::Relaxed);
                    let link = Link::new(io, streams.clone(), keepalive);
                    // Open streams continue where they were; nobody reads this link before it
                    // is published, so the answers wait in the socket until then.
                    for resume in streams.resumes(&call_ids, &config) {
                        let envelope = Envelope::StreamResume(resume);
                        match codec::encode(&envelope, config.encoding) {
                            Ok(frame) => {
                                if link.send(frame).await.is_err() {
                                    break;
                                }
                            }
                            Err(error) => tracing::warn!(%error, "cannot encode a streamResume"),
                        }
                    }
                    state.send_replace(LinkState::Up(link.clone()));
                    link
                }
                None => {
                    streams.close();
                    state.send_replace(LinkState::Closed);
                    return;
                }
            },
        };
        let lost = keep_alive(&link, &closed).await;
        // Every caller still waiting on this link learns it is gone (their reply is dropped);
        // streams wait for the next link.
        lock(&link.pending).take();
        if !lost {
            streams.close();
            state.send_replace(LinkState::Closed);
            let _ = link.writer.lock().await.close().await;
            return;
        }
        tracing::info!(peer = connector.peer(), "connection lost; reconnecting");
        state.send_replace(LinkState::Reconnecting);
    }
}

/// Sends a keepalive on `link` whenever nothing was sent on it for a keepalive interval, until
/// the link breaks (`true`) or the client is closed (`false`).
async fn keep_alive<Io: FrameIo + 'static>(link: &Link<Io>, closed: &CancellationToken) -> bool {
    loop {
        let tick = async {
            match link.keepalive {
                Some(interval) => tokio::time::sleep(interval).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = closed.cancelled() => return false,
            _ = link.broken.cancelled() => return true,
            _ = tick => {
                if !link.sent.swap(false, Ordering::Relaxed) {
                    let _ = link.send(Frame::keepalive()).await;
                    // The keepalive does not count: the next tick looks at what callers sent.
                    link.sent.store(false, Ordering::Relaxed);
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(first: u64, count: u64) -> (u64, PayloadBatch) {
        let items: Vec<Payload> = (first..first + count)
            .map(|n| Payload::encode(&n, Encoding::Bincode).unwrap())
            .collect();
        (first, items.into())
    }

    /// What the consumer of `items` has been given so far: item numbers, and gaps as `None`.
    fn received(items: &mut mpsc::Receiver<StreamItem>) -> Vec<Option<u64>> {
        let mut seen = Vec::new();
        while let Ok(event) = items.try_recv() {
            match event {
                StreamItem::Items { items, .. } => {
                    seen.extend(items.map(|item| Some(item.decode::<u64>().unwrap())))
                }
                StreamItem::Gap(_) => seen.push(None),
                _ => panic!("unexpected stream event"),
            }
        }
        seen
    }

    #[test]
    fn keepalives_come_at_a_third_of_a_shorter_announced_idle_timeout() {
        let config = ClientConfig::default();
        let configured = config.keepalive_interval.unwrap();
        assert_eq!(keepalive_interval(&config, None), Some(configured));
        let long = configured * 10;
        assert_eq!(keepalive_interval(&config, Some(long)), Some(configured));
        let short = Duration::from_millis(300);
        assert_eq!(
            keepalive_interval(&config, Some(short)),
            Some(Duration::from_millis(100))
        );
        let off = ClientConfig {
            keepalive_interval: None,
            ..ClientConfig::default()
        };
        assert_eq!(keepalive_interval(&off, Some(short)), None);
    }

    #[test]
    fn runs_of_items_are_routed_once_each_and_jumps_are_reported() {
        let table = StreamTable::new(16);
        let call = Arc::new(StreamCall {
            actor_id: "a".into(),
            method: "m".into(),
            args: Payload::empty_args(Encoding::Bincode),
        });
        let mut items = table.open(7, "s".into(), call);
        let route = |(first, items)| table.route("s", first, items);
        assert!(route(numbers(1, 3)).is_none());
        // Replayed in part: only 4 and 5 are new.
        assert!(route(numbers(2, 4)).is_none());
        // Replayed entirely: nothing new.
        assert!(route(numbers(1, 5)).is_none());
        // 6 and 7 never came.
        assert!(route(numbers(8, 2)).is_none());
        // Another stream's items, and an empty run, go nowhere.
        assert!(table.route("t", 10, numbers(10, 1).1).is_none());
        assert!(route((10, Vec::new().into())).is_none());
        // A run whose numbering would overflow is refused.
        assert!(route((u64::MAX, numbers(1, 2).1)).is_none());
        let expected: Vec<Option<u64>> = [1, 2, 3, 4, 5]
            .into_iter()
            .map(Some)
            .chain([None, Some(8), Some(9)])
            .collect();
        assert_eq!(received(&mut items), expected);
    }
}
