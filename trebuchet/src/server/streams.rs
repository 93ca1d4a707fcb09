//! Open streams as a server keeps them: numbered 1, 2, 3…, with a replay buffer of the items
//! last sent, and able to outlive the connection they were opened on, so that a client that
//! reconnects can resume them (`streamResume`) without missing or repeating an item.
//!
//! A stream is *live* while a connection pumps it. When that connection goes away, its live
//! streams are *parked* here (the actor's producer is kept, and pulled into the replay buffer
//! by a task of its own) for [`ReplayConfig::detached_timeout`]; a `streamResume` on any
//! connection of the same server
//! takes the stream over, replays what the client has not seen and continues live. A resume can
//! also arrive before the server has noticed that the old connection is gone (the usual case when
//! a client reconnects at once): the old connection is then asked to hand the stream over, and
//! tells its client that the stream was resumed elsewhere.
//!
//! Only the principal whose call opened a stream may take it over (the resume passes through the
//! middleware like a call, which tells who is asking); a stream opened without one can be taken
//! over by whoever knows its id, a random UUID that is then a bearer secret.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::codec::{self, Frame, Span, StreamItemsWriter};
use crate::protocol::{
    Encoding, Envelope, ErrorCode, Metadata, Payload, RemoteError, STREAM_BATCH_METADATA,
    STREAM_WINDOW_METADATA, StreamEnd, StreamError,
};
use crate::server::Principal;
use crate::stream::ItemStream;

/// How much of each stream a server keeps for clients that resume it after a reconnect, and for
/// how long (part of [`crate::ServerConfig`]).
///
/// A stream's replay buffer holds the items sent last, up to `max_items` items and `max_bytes`
/// bytes, none older than `max_age`. A client that resumes a stream gets the items after the
/// last one it saw, if the buffer still holds them all; otherwise the server restarts the stream
/// (the same call again) and the client reports a [`crate::StreamGap`].
///
/// While a stream is parked (its connection went away, for up to `detached_timeout`), the
/// server keeps taking items from the actor's stream into its buffer, so that a client that
/// resumes gets what happened while it was away: as far as the stream's window allows, and
/// without flow control as far as the buffer keeps without dropping an item the client may not
/// have seen; then the actor's stream waits for the resume.
///
/// A stream with flow control never has more items unacknowledged than the buffer keeps, so
/// that a resume can always be served: the limits also cap the window a client gets. The Rust
/// client copes with a smaller window than it asked for (it acknowledges sooner), but a buffer
/// of fewer than 32 items makes a fast stream wait for acknowledgements.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReplayConfig {
    /// The most items kept per stream (default 4096). 0 turns resumption off: a resumed stream
    /// is always restarted.
    pub max_items: usize,
    /// The most bytes of items kept per stream (default 1 MiB): the items' serialized payloads.
    /// The envelopes they were sent in are kept with them, which adds the stream id, numbers and
    /// a timestamp per envelope (about 60 bytes; an envelope carries up to 64 items), and
    /// 8 bytes of bookkeeping per item: memory per stream is bounded by `max_items` and this.
    pub max_bytes: usize,
    /// Items older than this are dropped from the buffer (default 30 s).
    pub max_age: Duration,
    /// How long a stream whose connection went away waits to be resumed (its items pulled into
    /// the buffer meanwhile) before its producer is dropped (default 30 s).
    pub detached_timeout: Duration,
    /// How long a resume waits for the connection that still has the stream to hand it over
    /// (default 5 s); past it the stream is restarted.
    pub handover_timeout: Duration,
    /// The most streams a server keeps parked at once (default 4096), ended ones included, so
    /// that clients that vanish cannot make it hold buffers without bound; past it a stream
    /// whose connection goes away is dropped (a later resume restarts it).
    pub max_parked_streams: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            max_items: 4096,
            max_bytes: 1024 * 1024,
            max_age: Duration::from_secs(30),
            detached_timeout: Duration::from_secs(30),
            handover_timeout: Duration::from_secs(5),
            max_parked_streams: 4096,
        }
    }
}

/// What a stream call asked for in its metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamOptions {
    /// Per-stream flow control ([`STREAM_WINDOW_METADATA`]): the most items sent and not yet
    /// acknowledged.
    pub(crate) window: Option<u64>,
    /// The most items per `streamBatch` ([`STREAM_BATCH_METADATA`]); 1 (the default): each
    /// item in a `streamData` of its own.
    pub(crate) batch: usize,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            window: None,
            batch: 1,
        }
    }
}

impl StreamOptions {
    /// The options a call's `metadata` asks for.
    pub(crate) fn from_metadata(metadata: &Metadata) -> Self {
        let number = |key: &str| {
            metadata
                .get(key)
                .and_then(|value| value.parse::<u64>().ok())
        };
        StreamOptions {
            window: number(STREAM_WINDOW_METADATA),
            batch: number(STREAM_BATCH_METADATA)
                .map_or(1, |batch| batch.clamp(1, PUMP_BATCH as u64) as usize),
        }
    }
}

/// What happens next on an open stream.
enum StreamEvent {
    /// An item, numbered `sequence_number`: its payload is in the pump's buffer at `span` (in
    /// the binary envelope being written, or among the JSON payloads the envelope is made from).
    Data {
        sequence_number: u64,
        span: Span,
    },
    Failed(RemoteError),
    End,
}

/// How a stream ended, kept for replay: a client may have lost the end with the connection.
#[derive(Clone)]
enum Terminal {
    End,
    Failed(RemoteError),
}

/// The items last sent on a stream, for replay: the frames they were sent in, and where each
/// item's payload is in its frame. Keeping an item costs no copy and no reference count.
struct ReplayBuffer {
    /// The frames (for JSON: the runs of payloads serialized together) the kept items are in,
    /// oldest first.
    frames: VecDeque<KeptFrame>,
    /// Where each kept item's payload is in its frame, oldest first: item `first + i` is at
    /// `spans[i]`. The kept items are always a run of numbers.
    spans: VecDeque<Span>,
    /// The number of the oldest kept item.
    first: u64,
    /// The bytes of the kept items' payloads.
    bytes: usize,
}

/// A frame of a [`ReplayBuffer`]: it holds the items from `first_sequence` up to the first item
/// of the next frame.
struct KeptFrame {
    first_sequence: u64,
    sent: Instant,
    bytes: Bytes,
}

impl ReplayBuffer {
    fn new() -> Self {
        ReplayBuffer {
            frames: VecDeque::new(),
            spans: VecDeque::new(),
            first: 0,
            bytes: 0,
        }
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    /// The number of the newest kept item; 0 when none is kept.
    fn last(&self) -> u64 {
        match self.spans.len() {
            0 => 0,
            len => self.first + len as u64 - 1,
        }
    }

    /// The number of the oldest kept item, if any.
    fn oldest(&self) -> Option<u64> {
        (!self.spans.is_empty()).then_some(self.first)
    }

    /// Keeps the items at `spans` of `frame` (numbered from `first_sequence`, sent at `sent`),
    /// those not kept already.
    fn push(&mut self, frame: Bytes, first_sequence: u64, spans: &[Span], sent: Instant) {
        // A replayed item is kept already, unless trimming removed everything since: then it
        // goes back in, so the buffer stays a run of numbers.
        let kept = (self.last() + 1).saturating_sub(first_sequence);
        let Some(new) = usize::try_from(kept)
            .ok()
            .and_then(|kept| spans.get(kept..))
        else {
            return;
        };
        if new.is_empty() {
            return;
        }
        if self.spans.is_empty() {
            self.first = first_sequence + kept;
        }
        self.frames.push_back(KeptFrame {
            first_sequence: first_sequence + kept,
            sent,
            bytes: frame,
        });
        for span in new {
            self.bytes += span.len as usize;
            self.spans.push_back(*span);
        }
    }

    /// Drops the oldest item (and its frame, if no other item is in it).
    fn pop_oldest(&mut self) {
        self.pop_oldest_n(1);
    }

    /// Drops the `count` oldest items (and the frames no other item is in).
    fn pop_oldest_n(&mut self, count: usize) {
        let count = count.min(self.spans.len());
        if count == 0 {
            return;
        }
        self.bytes -= self
            .spans
            .drain(..count)
            .map(|span| span.len as usize)
            .sum::<usize>();
        self.first += count as u64;
        if self.spans.is_empty() {
            self.frames.clear();
            return;
        }
        while self
            .frames
            .get(1)
            .is_some_and(|next| next.first_sequence <= self.first)
        {
            self.frames.pop_front();
        }
    }

    /// When the oldest kept item was sent.
    fn oldest_sent(&self) -> Option<Instant> {
        self.frames.front().map(|frame| frame.sent)
    }

    /// The bytes of the kept items after `sequence`.
    fn bytes_after(&self, sequence: u64) -> usize {
        let after = self.last().saturating_sub(sequence);
        self.spans
            .iter()
            .rev()
            .take(usize::try_from(after).unwrap_or(usize::MAX))
            .map(|span| span.len as usize)
            .sum()
    }

    /// The kept items after `sequence`, as payloads in `encoding`.
    fn payloads_after(&self, sequence: u64, encoding: Encoding) -> VecDeque<(u64, Payload)> {
        let mut frame = 0;
        let mut payloads = VecDeque::new();
        for (number, span) in (self.first..).zip(&self.spans) {
            while self
                .frames
                .get(frame + 1)
                .is_some_and(|next| next.first_sequence <= number)
            {
                frame += 1;
            }
            if number <= sequence {
                continue;
            }
            let start = span.start as usize;
            let bytes = self.frames[frame]
                .bytes
                .slice(start..start + span.len as usize);
            payloads.push_back((number, Payload::from_shared(encoding, bytes)));
        }
        payloads
    }
}

/// A stream's producer with its numbering and replay buffer: what moves from connection to
/// connection when a stream is resumed.
pub(crate) struct Producer {
    items: ItemStream,
    /// The encoding of the items' payloads.
    item_encoding: Encoding,
    /// The sequence number of the last item produced.
    sequence: u64,
    replay: ReplayBuffer,
    /// Items to send again before producing more (after a resume).
    to_replay: VecDeque<(u64, Payload)>,
    /// Set once the actor's stream ended (it is then dropped): sent after the replay.
    terminal: Option<Terminal>,
    /// The `callId` of the call that opened the stream.
    pub(crate) original_call_id: u64,
    /// The principal of the call that opened the stream: only it may resume the stream.
    pub(crate) opener: Option<Principal>,
    /// Per-stream flow control, if the client asked for it: the most items sent and not yet
    /// acknowledged.
    window: Option<u64>,
    /// The last item the client acknowledged.
    acked: u64,
    /// The bytes of the items after `acked` (as far as the replay buffer holds them).
    unacked_bytes: usize,
    /// The pump waiting for an acknowledgement.
    waiting_for_ack: Option<Waker>,
    /// The most items per envelope the client takes (see [`StreamOptions::batch`]).
    batch: usize,
    config: Arc<ReplayConfig>,
    /// Set while the stream is parked and pulled into its replay buffer for a client that is
    /// away: it then goes only as far as the buffer keeps without dropping an item.
    detached: bool,
    /// The frame limit of the connection that pumped it last (what it is pulled within while
    /// parked).
    max_frame_size: usize,
}

impl Producer {
    fn new(
        items: ItemStream,
        call_id: u64,
        options: StreamOptions,
        config: Arc<ReplayConfig>,
    ) -> Self {
        // Never more unacknowledged items than the replay buffer keeps: a resume can then
        // always be served from it.
        let window = options.window.map(|window| match config.max_items {
            0 => window.max(1),
            kept => window.clamp(1, kept as u64),
        });
        Producer {
            item_encoding: items.encoding(),
            items,
            sequence: 0,
            replay: ReplayBuffer::new(),
            to_replay: VecDeque::new(),
            terminal: None,
            original_call_id: call_id,
            opener: None,
            window,
            acked: 0,
            unacked_bytes: 0,
            waiting_for_ack: None,
            batch: options.batch,
            config,
            detached: false,
            max_frame_size: usize::MAX,
        }
    }

    /// Whether no more may be taken from the actor's stream for now: its window is full (see
    /// [`window_is_full`](Self::window_is_full)), or, while parked, its replay buffer is (the
    /// client acknowledges nothing while it is away, so what is pulled waits there for it).
    fn must_wait(&self) -> bool {
        self.window
            .is_some_and(|window| self.window_is_full(window))
            || (self.detached
                && (self.replay.len() >= self.config.max_items
                    || self.replay.bytes >= self.config.max_bytes))
    }

    /// Whether the client must acknowledge before more is sent: `window` items, or as many
    /// bytes as the replay buffer keeps, are unacknowledged (so that what the client has not
    /// taken can always be replayed). One item may always be in flight.
    fn window_is_full(&self, window: u64) -> bool {
        self.sequence >= self.acked + window
            || (self.config.max_items > 0
                && self.sequence > self.acked
                && self.unacked_bytes >= self.config.max_bytes)
    }

    /// Counts a new item of `len` bytes as unacknowledged (it goes into the replay buffer with
    /// its envelope, see [`keep`](Self::keep)).
    fn count_unacknowledged(&mut self, len: u32) {
        if self.config.max_items > 0 {
            self.unacked_bytes += len as usize;
        }
    }

    /// Keeps the items at `spans` of `frame` (numbered from `first`, sent at `now`) in the
    /// replay buffer, those not already in it, and trims it.
    fn keep(&mut self, frame: Bytes, first: u64, spans: &[Span], now: Instant) {
        if self.config.max_items == 0 {
            return;
        }
        self.replay.push(frame, first, spans, now);
        self.trim();
    }

    /// Drops the oldest items while the buffer is over its limits; with flow control, never an
    /// item the client has not acknowledged (the window bounds those: at most `max_items`
    /// items, and `max_bytes` plus one item).
    fn trim(&mut self) {
        // With flow control, and while parked, only items the client has acknowledged may go.
        let removable = |replay: &ReplayBuffer| match self.window.is_some() || self.detached {
            true => usize::try_from((self.acked + 1).saturating_sub(replay.first))
                .unwrap_or(usize::MAX)
                .min(replay.len()),
            false => replay.len(),
        };
        // Over the count (a stream that flows: one or a few items per envelope sent), at once.
        let over = self.replay.len().saturating_sub(self.config.max_items);
        let count = over.min(removable(&self.replay));
        self.replay.pop_oldest_n(count);
        // Over the bytes, one at a time.
        while self.replay.bytes > self.config.max_bytes && removable(&self.replay) > 0 {
            self.replay.pop_oldest();
        }
    }

    /// The client has taken the items up to `sequence_number`.
    pub(crate) fn acknowledge(&mut self, sequence_number: u64) {
        let sequence_number = sequence_number.min(self.sequence);
        if sequence_number > self.acked {
            self.acked = sequence_number;
            self.unacked_bytes = self.replay.bytes_after(sequence_number);
            self.trim();
            if let Some(waker) = self.waiting_for_ack.take() {
                waker.wake();
            }
        }
    }

    /// Prepares to continue after `last_sequence` (the last item the client saw): the items after
    /// it are sent again first. `false` if the buffer no longer holds them all.
    pub(crate) fn resume_after(&mut self, last_sequence: u64) -> bool {
        let now = Instant::now();
        while self
            .replay
            .oldest_sent()
            .is_some_and(|sent| now.duration_since(sent) > self.config.max_age)
        {
            self.replay.pop_oldest();
        }
        if last_sequence > self.sequence {
            return false;
        }
        self.acknowledge(last_sequence);
        let oldest_kept = self.replay.oldest().unwrap_or(self.sequence + 1);
        if last_sequence + 1 < oldest_kept {
            return false;
        }
        self.to_replay = self
            .replay
            .payloads_after(last_sequence, self.item_encoding);
        true
    }
}

/// An open stream as a connection polls it: its items, numbered, in batches of what the producer
/// has ready (at most [`PUMP_BATCH`]); the connection polls it again only once a batch has been
/// written.
///
/// Items are serialized straight into the envelope that carries them (binary frames), or one
/// after another into one buffer that the envelope is then made from (JSON); either way the
/// replay buffer keeps what was sent, without a copy.
///
/// When the stream ends, the pump parks it (without the actor's stream, with its replay buffer
/// and how it ended) in the registry: a client that lost the last items or the end with its
/// connection can still resume it.
pub(crate) struct Pump {
    pub(crate) stream_id: Arc<str>,
    pub(crate) call_id: u64,
    pub(crate) encoding: Encoding,
    /// `None` once the stream ended, was cancelled or was handed over.
    producer: Option<Box<Producer>>,
    /// Where the stream is parked when it ends (not kept alive by its streams).
    registry: Weak<StreamRegistry>,
    /// Where envelopes are written; each one is split off when it is complete, and the rest of
    /// the chunk is kept for the next.
    buffer: BytesMut,
    /// The envelope being filled, if any.
    run: Option<Run>,
    /// Where the items of `run` are, from its start; kept between runs for its capacity.
    spans: Vec<Span>,
    /// The frame limit, as the most bytes an envelope being filled may hold before it is
    /// finished (see [`EnvelopeLimits`]).
    limits: EnvelopeLimits,
}

/// What the frame limit allows a pump's envelopes: an envelope that would be larger with its
/// last item is sent without it, and an item too large for an envelope of its own fails the
/// stream with `payload_too_large`. Envelopes also stay below 4 GiB whatever the limit
/// (offsets in them are `u32`s).
#[derive(Clone, Copy)]
struct EnvelopeLimits {
    /// The most bytes of an envelope being filled: the binary envelope so far, or the JSON
    /// payloads and `ITEM_OVERHEAD` per item.
    run: usize,
    /// The most bytes of an item's payload.
    item: usize,
}

impl EnvelopeLimits {
    fn new(max_frame_size: usize, stream_id: &str) -> Self {
        // What an envelope takes besides its items: the stream id, numbers and a timestamp, or
        // the keys and punctuation around them.
        let overhead = ENVELOPE_OVERHEAD + stream_id.len();
        let run = max_frame_size
            .min(u32::MAX as usize)
            .saturating_sub(overhead);
        EnvelopeLimits {
            run,
            item: run.saturating_sub(ITEM_OVERHEAD),
        }
    }
}

/// The envelope a pump is filling with consecutive items.
struct Run {
    /// The number of its first item.
    first: u64,
    /// The binary envelope being written; `None` for JSON, whose payloads are serialized one
    /// after another into the buffer, and put into an envelope at the end.
    writer: Option<StreamItemsWriter>,
}

impl Pump {
    pub(crate) fn new(
        stream_id: Arc<str>,
        call_id: u64,
        encoding: Encoding,
        mut producer: Box<Producer>,
        registry: Arc<StreamRegistry>,
        max_frame_size: usize,
    ) -> Self {
        let limits = EnvelopeLimits::new(max_frame_size, &stream_id);
        producer.max_frame_size = max_frame_size;
        Pump {
            stream_id,
            call_id,
            encoding,
            producer: Some(producer),
            registry: Arc::downgrade(&registry),
            buffer: BytesMut::new(),
            run: None,
            spans: Vec::new(),
            limits,
        }
    }

    /// The encoding of the stream's items (the connection's, once the producer is gone).
    fn item_encoding(&self) -> Encoding {
        self.producer
            .as_ref()
            .map_or(self.encoding, |producer| producer.item_encoding)
    }

    /// Whether the envelope being filled would be larger than a frame may be.
    fn run_is_too_large(&self) -> bool {
        let size = match self.run.as_ref().map(|run| run.writer.is_some()) {
            // The buffer holds the envelope so far, items and all.
            Some(true) => self.buffer.len(),
            // The buffer holds the payloads.
            _ => self.buffer.len() + self.spans.len() * ITEM_OVERHEAD,
        };
        size > self.limits.run
    }

    /// Sends the envelope being filled without its last item, which starts the next envelope:
    /// with it the envelope would be larger than a frame may be.
    fn move_last_item_to_next_envelope(
        &mut self,
        frames: &mut Vec<Frame>,
        now: Instant,
        timestamp: u64,
    ) {
        let (Some(run), Some(span)) = (self.run.as_mut(), self.spans.pop()) else {
            return;
        };
        let start = span.start as usize;
        let payload = Bytes::copy_from_slice(&self.buffer[start..start + span.len as usize]);
        let item_start = match run.writer.as_mut() {
            Some(writer) => writer.remove_last(span),
            None => start,
        };
        self.buffer.truncate(item_start);
        let next = run.first + self.spans.len() as u64;
        self.flush_run(frames, now, timestamp);
        let item_encoding = self.item_encoding();
        let mut run = start_run(&mut self.buffer, &self.stream_id, self.encoding, next);
        let Ok(span) = append_item(&mut run, &mut self.buffer, item_encoding, |out| {
            out.extend_from_slice(&payload);
            Ok::<_, std::convert::Infallible>(())
        });
        self.run = Some(run);
        self.spans.push(span);
    }

    /// Stops the stream here and returns its producer (dropping it stops the actor's stream).
    pub(crate) fn take_producer(&mut self) -> Option<Box<Producer>> {
        self.producer.take()
    }

    /// Puts back a producer taken with [`take_producer`](Self::take_producer).
    pub(crate) fn restore_producer(&mut self, producer: Box<Producer>) {
        self.producer = Some(producer);
    }

    /// A `streamAck` for this stream; `false` if the pump no longer has it (it ended).
    pub(crate) fn acknowledge(&mut self, sequence_number: u64) -> bool {
        match self.producer.as_mut() {
            Some(producer) => {
                producer.acknowledge(sequence_number);
                true
            }
            None => false,
        }
    }
}

/// The most bytes of an envelope of items that are not in an item: type, stream id length,
/// sequence number, item count and timestamp (binary), or the keys and punctuation around them
/// (JSON), the stream id aside.
const ENVELOPE_OVERHEAD: usize = 128;
/// The most bytes an item adds to an envelope besides its payload: its encoding and length
/// (binary), or a separator (JSON).
const ITEM_OVERHEAD: usize = 10;

/// The size of the chunks envelopes are written in.
const CHUNK: usize = 16 * 1024;
/// Below this much room left in the chunk, the next envelope starts a new one.
const MIN_ROOM: usize = 2 * 1024;

impl Pump {
    /// The stream's next event; an item is written into the envelope being filled (one is
    /// started if need be). After the end, the caller [`park`](Self::park)s the stream.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<StreamEvent>> {
        let max_item_size = self.limits.item;
        let Pump {
            stream_id,
            encoding,
            producer,
            buffer,
            run,
            ..
        } = self;
        let Some(producer) = producer.as_mut() else {
            return Poll::Ready(None);
        };
        let item_encoding = producer.item_encoding;
        if let Some((sequence_number, data)) = producer.to_replay.pop_front() {
            // Sent before under a larger limit (the client reconnected announcing a smaller
            // one): it ends the stream as a live item of its size would, never as a frame the
            // client refuses (which would have it reconnect and be replayed the same again).
            if data.as_bytes().len() > max_item_size {
                let error = item_too_large(sequence_number, data.as_bytes().len(), max_item_size);
                let error = numbered_gap(error, sequence_number - 1);
                producer.to_replay.clear();
                producer.items = ItemStream::empty();
                producer.terminal = Some(Terminal::Failed(error.clone()));
                return Poll::Ready(Some(StreamEvent::Failed(error)));
            }
            let run =
                run.get_or_insert_with(|| start_run(buffer, stream_id, *encoding, sequence_number));
            let span = append_item(run, buffer, item_encoding, |out| {
                out.extend_from_slice(data.as_bytes());
                Ok::<_, std::convert::Infallible>(())
            });
            let Ok(span) = span;
            return Poll::Ready(Some(StreamEvent::Data {
                sequence_number,
                span,
            }));
        }
        let terminal = match producer.terminal.clone() {
            Some(terminal) => terminal,
            None if producer.must_wait() => {
                // As far ahead of the client as it allowed (or, parked, as its replay buffer
                // keeps): wait for its `streamAck`, or for it to be resumed.
                producer.waiting_for_ack = Some(cx.waker().clone());
                return Poll::Pending;
            }
            None => {
                let sequence_number = producer.sequence + 1;
                let run = run.get_or_insert_with(|| {
                    start_run(buffer, stream_id, *encoding, sequence_number)
                });
                let mut outcome = Poll::Pending;
                let written = append_item(run, buffer, item_encoding, |out| {
                    let start = out.len();
                    match producer.items.poll_write(cx, out) {
                        Poll::Ready(Some(Ok(()))) if out.len() - start > max_item_size => {
                            let error =
                                item_too_large(sequence_number, out.len() - start, max_item_size);
                            outcome = Poll::Ready(Some(Err(error)));
                            Err(())
                        }
                        Poll::Ready(Some(Ok(()))) => Ok(()),
                        other => {
                            outcome = other;
                            Err(())
                        }
                    }
                });
                match (written, outcome) {
                    (Ok(span), _) => {
                        producer.sequence = sequence_number;
                        producer.count_unacknowledged(span.len);
                        return Poll::Ready(Some(StreamEvent::Data {
                            sequence_number,
                            span,
                        }));
                    }
                    (Err(()), Poll::Ready(Some(Err(error)))) => {
                        Terminal::Failed(numbered_gap(error, producer.sequence))
                    }
                    (Err(()), Poll::Ready(None)) => Terminal::End,
                    (Err(()), _) => return Poll::Pending,
                }
            }
        };
        // The end: the actor's stream is dropped now.
        producer.items = ItemStream::empty();
        producer.terminal = Some(terminal.clone());
        Poll::Ready(Some(match terminal {
            Terminal::End => StreamEvent::End,
            Terminal::Failed(error) => StreamEvent::Failed(error),
        }))
    }

    /// After the end (once the last items are in the replay buffer): parks what is kept of the
    /// stream in the registry, for a client that lost the last items or the end with its
    /// connection.
    fn park(&mut self) {
        if let (Some(producer), Some(registry)) = (self.producer.take(), self.registry.upgrade()) {
            registry.park(self.stream_id.clone(), producer);
        }
    }
}

/// The error that ends a stream at an item too large for a frame of the connection's.
fn item_too_large(sequence_number: u64, size: usize, max_item_size: usize) -> RemoteError {
    RemoteError::new(
        ErrorCode::PayloadTooLarge,
        format!(
            "stream item {sequence_number} of {size} bytes does not fit the frame limit of \
             {max_item_size} bytes; the stream ends here"
        ),
    )
}

/// An actor's stream that reports a gap (a [`crate::StreamGap`] error, e.g. a
/// [`crate::state::State::changes`] subscriber that fell behind) ends there; the gap it reports
/// is given the stream's own numbers: the last item sent before it, and no item after it.
fn numbered_gap(error: RemoteError, last_sequence: u64) -> RemoteError {
    match error.stream_gap() {
        Some(mut gap) => {
            gap.last_sequence = last_sequence;
            gap.resumed_at = None;
            let message = error.message;
            let mut error = gap.into_error();
            error.message = message;
            error
        }
        None => error,
    }
}

/// Starts the envelope of items from `first` in `buffer` (empty: the last envelope was split off).
fn start_run(buffer: &mut BytesMut, stream_id: &str, encoding: Encoding, first: u64) -> Run {
    if buffer.capacity() < MIN_ROOM {
        *buffer = BytesMut::with_capacity(CHUNK);
    }
    let writer =
        (encoding == Encoding::Bincode).then(|| StreamItemsWriter::begin(buffer, stream_id, first));
    Run { first, writer }
}

/// Appends an item in `item_encoding`, whose payload `write` appends, to `run`; where its
/// payload is, from the start of the run.
fn append_item<E>(
    run: &mut Run,
    buffer: &mut BytesMut,
    item_encoding: Encoding,
    write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<Span, E> {
    match &mut run.writer {
        Some(writer) => writer.item(buffer, item_encoding, write),
        None => {
            let start = buffer.len();
            if let Err(error) = write(buffer) {
                buffer.truncate(start);
                return Err(error);
            }
            Ok(Span {
                start: start as u32,
                len: (buffer.len() - start) as u32,
            })
        }
    }
}

/// What a pump hands its connection at once: the frames of the events of one stream that were
/// ready together (at most [`PUMP_BATCH`] items), to be written with one flush.
pub(crate) struct PumpOutput {
    pub(crate) call_id: u64,
    pub(crate) frames: Vec<Frame>,
    /// How many items the frames carry.
    pub(crate) items: usize,
    /// Whether the stream ended: its last frame is the `streamEnd` or `streamError`.
    pub(crate) ended: bool,
}

/// The most events a pump hands over at once: how far a producer may run ahead of the socket.
pub(crate) const PUMP_BATCH: usize = 64;

impl Pump {
    /// Completes the envelope being filled (`streamBatch`, or `streamData` for one item or a
    /// client that takes no batches), puts it at the end of `frames`, and keeps its items in
    /// the replay buffer.
    fn flush_run(&mut self, frames: &mut Vec<Frame>, now: Instant, timestamp: u64) {
        let Some(run) = self.run.take() else {
            return;
        };
        if self.spans.is_empty() {
            // Started, but no item came.
            self.buffer.clear();
            return;
        }
        let frame = match run.writer {
            Some(writer) => {
                let batch = self.spans.len() != 1;
                writer.finish(&mut self.buffer, timestamp, batch, &mut self.spans);
                let data = self.buffer.split().freeze();
                frames.push(Frame {
                    encoding: Encoding::Bincode,
                    data: data.clone(),
                });
                data
            }
            None => {
                let payloads = self.buffer.split().freeze();
                let item_encoding = self.item_encoding();
                let items: Vec<Payload> = self
                    .spans
                    .iter()
                    .map(|span| {
                        let start = span.start as usize;
                        let bytes = payloads.slice(start..start + span.len as usize);
                        Payload::from_shared(item_encoding, bytes)
                    })
                    .collect();
                frames.push(codec::encode_stream_items(
                    &self.stream_id,
                    run.first,
                    &items,
                    timestamp,
                    self.encoding,
                ));
                payloads
            }
        };
        if let Some(producer) = self.producer.as_mut() {
            producer.keep(frame, run.first, &self.spans, now);
        }
        self.spans.clear();
    }

    /// The frames of the events ready now, at most `max_items` items; `Pending` if there are
    /// none, `None` after the end.
    fn poll_output(&mut self, cx: &mut Context<'_>, max_items: usize) -> Poll<Option<PumpOutput>> {
        let now = Instant::now();
        let items_per_envelope = self.producer.as_ref().map_or(1, |producer| producer.batch);
        let mut output = PumpOutput {
            call_id: self.call_id,
            frames: Vec::new(),
            items: 0,
            ended: false,
        };
        let mut timestamp = None;
        let mut timestamp = || *timestamp.get_or_insert_with(now_millis);
        while output.items < max_items {
            match self.poll_event(cx) {
                Poll::Ready(Some(StreamEvent::Data {
                    sequence_number,
                    span,
                })) => {
                    debug_assert_eq!(
                        self.run
                            .as_ref()
                            .map(|run| run.first + self.spans.len() as u64),
                        Some(sequence_number),
                        "an envelope's items are consecutive"
                    );
                    self.spans.push(span);
                    output.items += 1;
                    if self.spans.len() > 1 && self.run_is_too_large() {
                        self.move_last_item_to_next_envelope(&mut output.frames, now, timestamp());
                    }
                    if self.spans.len() >= items_per_envelope {
                        self.flush_run(&mut output.frames, now, timestamp());
                    }
                }
                Poll::Ready(Some(last)) => {
                    self.flush_run(&mut output.frames, now, timestamp());
                    self.park();
                    let last = match last {
                        StreamEvent::Failed(error) => Envelope::StreamError(StreamError {
                            stream_id: self.stream_id.to_string(),
                            error,
                        }),
                        _ => Envelope::StreamEnd(StreamEnd {
                            stream_id: self.stream_id.to_string(),
                        }),
                    };
                    output
                        .frames
                        .push(codec::encode_or_internal(&last, self.encoding));
                    output.ended = true;
                    break;
                }
                // Ended (the end was in an earlier batch), or nothing more ready for now.
                Poll::Ready(None) | Poll::Pending if output.items > 0 => break,
                Poll::Ready(None) => {
                    self.flush_run(&mut output.frames, now, 0);
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    self.flush_run(&mut output.frames, now, 0);
                    return Poll::Pending;
                }
            }
        }
        self.flush_run(&mut output.frames, now, timestamp());
        Poll::Ready(Some(output))
    }
}

impl Stream for Pump {
    type Item = PumpOutput;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PumpOutput>> {
        self.poll_output(cx, PUMP_BATCH)
    }
}

/// Milliseconds since the Unix epoch: the timestamp of stream items.
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

pub(crate) struct Handover {
    pub(crate) stream_id: Arc<str>,
    pub(crate) reply: oneshot::Sender<Box<Producer>>,
    /// The resume came on the connection that pumps the stream (its client resumed it where it
    /// already is): nobody lost the stream, so nobody is told.
    pub(crate) to_same_connection: bool,
}

/// What a connection's loop is told from outside: few and far between, so they share one
/// channel (one thing to poll each time the loop wakes).
pub(crate) enum ConnectionSignal {
    /// Another connection resumes one of this connection's streams.
    Handover(Handover),
    /// The server is shutting down.
    Shutdown,
}

/// Where a connection receives [`ConnectionSignal`]s (the registry sends [`Handover`]s).
pub(crate) type HandoverSender = mpsc::UnboundedSender<ConnectionSignal>;

enum Slot {
    /// Pumped by a connection, which hands it over on request (to the principal that opened it).
    Live {
        handovers: HandoverSender,
        opener: Option<Principal>,
    },
    /// Its connection went away; dropped at the end of the detached timeout unless resumed.
    Parked {
        producer: Box<Producer>,
        generation: u64,
    },
    /// Its connection went away while it was still going: a task keeps pulling it into its
    /// replay buffer for the client (see [`catch_up`]), and hands it over on request like a
    /// connection; dropped at the end of the detached timeout unless resumed.
    CatchingUp {
        handovers: HandoverSender,
        opener: Option<Principal>,
        generation: u64,
    },
}

/// The slots by stream id, and how many are parked (streams that were still going when their
/// connection went away, and streams that ended, counted apart so that the many short streams
/// that end normally never crowd out the ones a client will resume).
#[derive(Default)]
struct Slots {
    by_id: HashMap<Arc<str>, Slot>,
    parked: usize,
    ended: usize,
}

impl Slots {
    fn get(&self, stream_id: &str) -> Option<&Slot> {
        self.by_id.get(stream_id)
    }

    fn insert(&mut self, stream_id: Arc<str>, slot: Slot) {
        let replaced = self.insert_returning(stream_id, slot);
        drop(replaced);
    }

    /// Inserts `slot`, and returns the one it replaces (to be dropped outside the lock).
    fn insert_returning(&mut self, stream_id: Arc<str>, slot: Slot) -> Option<Slot> {
        match &slot {
            Slot::Parked { producer, .. } if producer.terminal.is_some() => self.ended += 1,
            Slot::Parked { .. } | Slot::CatchingUp { .. } => self.parked += 1,
            Slot::Live { .. } => {}
        }
        let old = self.by_id.insert(stream_id, slot);
        self.count_out(&old);
        old
    }

    fn remove(&mut self, stream_id: &str) -> Option<Slot> {
        let old = self.by_id.remove(stream_id);
        self.count_out(&old);
        old
    }

    fn count_out(&mut self, old: &Option<Slot>) {
        match old {
            Some(Slot::Parked { producer, .. }) if producer.terminal.is_some() => self.ended -= 1,
            Some(Slot::Parked { .. } | Slot::CatchingUp { .. }) => self.parked -= 1,
            Some(Slot::Live { .. }) | None => {}
        }
    }
}

/// Every open stream of one server, by stream id.
pub(crate) struct StreamRegistry {
    config: Arc<ReplayConfig>,
    slots: Mutex<Slots>,
    generations: AtomicU64,
}

impl StreamRegistry {
    pub(crate) fn new(config: ReplayConfig) -> Arc<Self> {
        Arc::new(StreamRegistry {
            config: Arc::new(config),
            slots: Mutex::default(),
            generations: AtomicU64::new(0),
        })
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new stream's producer, registered as live on the connection behind `handovers`; the
    /// principal of the call that opened it (if any) is the only one that may resume it.
    pub(crate) fn open(
        &self,
        stream_id: Arc<str>,
        call_id: u64,
        options: StreamOptions,
        items: ItemStream,
        handovers: &HandoverSender,
    ) -> Box<Producer> {
        let opener = items.opened_with().get::<Principal>().cloned();
        let mut producer = Box::new(Producer::new(items, call_id, options, self.config.clone()));
        producer.opener = opener;
        self.attach(stream_id, &producer, handovers);
        producer
    }

    /// Registers the stream of `producer` as live on the connection behind `handovers`.
    pub(crate) fn attach(
        &self,
        stream_id: Arc<str>,
        producer: &Producer,
        handovers: &HandoverSender,
    ) {
        let live = Slot::Live {
            handovers: handovers.clone(),
            opener: producer.opener.clone(),
        };
        self.slots().insert(stream_id, live);
    }

    /// Forgets a stream that ended or was cancelled.
    pub(crate) fn close(&self, stream_id: &str) {
        self.slots().remove(stream_id);
    }

    /// Keeps the producer of a stream whose connection went away, for a while. A stream that is
    /// still going keeps being pulled into its replay buffer meanwhile (see [`catch_up`]), so
    /// that a client that resumes it gets what happened while it was away.
    pub(crate) fn park(self: &Arc<Self>, stream_id: Arc<str>, mut producer: Box<Producer>) {
        if self.config.detached_timeout.is_zero() {
            self.close(&stream_id);
            return;
        }
        let runtime = tokio::runtime::Handle::try_current().ok();
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let ended = producer.terminal.is_some();
        let mut catching_up = None;
        {
            let mut slots = self.slots();
            let replaces_parked = matches!(
                slots.get(&stream_id),
                Some(Slot::Parked { .. } | Slot::CatchingUp { .. })
            );
            let count = if ended { slots.ended } else { slots.parked };
            if count >= self.config.max_parked_streams && !replaces_parked {
                if ended {
                    tracing::debug!(%stream_id, "too many ended streams kept; not keeping this one");
                } else {
                    tracing::warn!(%stream_id, limit = self.config.max_parked_streams, "too many parked streams; this one cannot be resumed");
                }
                let dropped = slots.remove(&stream_id);
                drop(slots);
                drop((dropped, producer));
                return;
            }
            let slot = match &runtime {
                Some(_) if !ended && self.config.max_items > 0 => {
                    let (handovers, requests) = mpsc::unbounded_channel();
                    producer.detached = true;
                    let opener = producer.opener.clone();
                    catching_up = Some((producer, requests));
                    Slot::CatchingUp {
                        handovers,
                        opener,
                        generation,
                    }
                }
                _ => Slot::Parked {
                    producer,
                    generation,
                },
            };
            let replaced = slots.insert_returning(stream_id.clone(), slot);
            drop(slots);
            drop(replaced);
        }
        let Some(runtime) = runtime else {
            return;
        };
        let timeout = self.config.detached_timeout;
        if let Some((producer, requests)) = catching_up {
            let max_frame_size = producer.max_frame_size;
            let call_id = producer.original_call_id;
            let pump = Pump::new(
                stream_id,
                call_id,
                Encoding::Bincode,
                producer,
                self.clone(),
                max_frame_size,
            );
            runtime.spawn(catch_up(pump, requests, generation, timeout));
            return;
        }
        let registry = Arc::downgrade(self);
        runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            if let Some(registry) = registry.upgrade() {
                registry.expire(&stream_id, generation);
            }
        });
    }

    /// Drops the stream parked as `generation` (if it is still parked as that) at the end of its
    /// detached timeout.
    fn expire(&self, stream_id: &str, generation: u64) {
        let mut slots = self.slots();
        if let Some(
            Slot::Parked {
                generation: parked, ..
            }
            | Slot::CatchingUp {
                generation: parked, ..
            },
        ) = slots.get(stream_id)
            && *parked == generation
        {
            tracing::debug!(%stream_id, "dropping a stream nobody resumed");
            // Dropped outside the lock: the producer may do anything on drop.
            let expired = slots.remove(stream_id);
            drop(slots);
            drop(expired);
        }
    }

    /// A `streamAck` for a stream no connection pumps: if the stream ended and the client has
    /// every item, what was kept of it is released at once.
    pub(crate) fn acknowledge_ended(&self, stream_id: &str, sequence_number: u64) {
        let mut slots = self.slots();
        if let Some(Slot::Parked { producer, .. }) = slots.get(stream_id)
            && producer.terminal.is_some()
            && sequence_number >= producer.sequence
        {
            let released = slots.remove(stream_id);
            drop(slots);
            drop(released);
        }
    }

    /// Takes a stream over for `caller`, a connection that resumes it: from the parking, or
    /// from the connection that still pumps it. `Ok(None)` if this server does not have it (any
    /// more); `forbidden` if another principal opened it (a stream opened without a principal
    /// may be taken by whoever knows its id). `requester` is the resuming connection's own
    /// signal channel, if it has one.
    pub(crate) async fn take(
        &self,
        stream_id: &str,
        caller: Option<&Principal>,
        requester: Option<&HandoverSender>,
    ) -> Result<Option<Box<Producer>>, RemoteError> {
        // A connection that is asked for a stream but ends before answering parks it instead:
        // then look again.
        for _ in 0..4 {
            let owner = {
                let mut slots = self.slots();
                let Some(slot) = slots.get(stream_id) else {
                    return Ok(None);
                };
                let opener = match slot {
                    Slot::Live { opener, .. } | Slot::CatchingUp { opener, .. } => opener.as_ref(),
                    Slot::Parked { producer, .. } => producer.opener.as_ref(),
                };
                if let Some(opener) = opener
                    && caller.is_none_or(|caller| caller.id != opener.id)
                {
                    return Err(RemoteError::new(
                        ErrorCode::Forbidden,
                        "this stream was opened by another principal",
                    ));
                }
                match slot {
                    Slot::Live { handovers, .. } | Slot::CatchingUp { handovers, .. } => {
                        handovers.clone()
                    }
                    Slot::Parked { .. } => {
                        return Ok(match slots.remove(stream_id) {
                            Some(Slot::Parked { producer, .. }) => Some(producer),
                            _ => None,
                        });
                    }
                }
            };
            let (reply, handed) = oneshot::channel();
            let request = Handover {
                stream_id: Arc::from(stream_id),
                reply,
                to_same_connection: requester
                    .is_some_and(|requester| owner.same_channel(requester)),
            };
            if owner.send(ConnectionSignal::Handover(request)).is_err() {
                tokio::task::yield_now().await;
                continue;
            }
            match tokio::time::timeout(self.config.handover_timeout, handed).await {
                Ok(Ok(producer)) => {
                    self.close(stream_id);
                    return Ok(Some(producer));
                }
                Ok(Err(_)) => tokio::task::yield_now().await,
                Err(_) => {
                    tracing::warn!(%stream_id, "the connection with this stream did not hand it over in time");
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }
}

/// Pulls a parked stream into its replay buffer (`pump` writes its envelopes nowhere; they are
/// kept in the buffer), as far as [`Producer::must_wait`] lets it, until a resume asks for it
/// (through the registry's [`Slot::CatchingUp`]), it ends (the pump then parks what is kept of
/// it), or its detached timeout passes.
async fn catch_up(
    mut pump: Pump,
    mut requests: mpsc::UnboundedReceiver<ConnectionSignal>,
    generation: u64,
    timeout: Duration,
) {
    let expiry = tokio::time::sleep(timeout);
    tokio::pin!(expiry);
    loop {
        tokio::select! {
            biased;
            request = requests.recv() => match request {
                Some(ConnectionSignal::Handover(request)) => {
                    let Some(mut producer) = pump.take_producer() else {
                        return;
                    };
                    producer.detached = false;
                    match request.reply.send(producer) {
                        Ok(()) => return,
                        // The resuming side gave up waiting: keep pulling it here.
                        Err(mut producer) => {
                            producer.detached = true;
                            pump.restore_producer(producer);
                        }
                    }
                }
                Some(ConnectionSignal::Shutdown) => {}
                // The registry no longer has the stream (or is gone): drop it.
                None => return,
            },
            () = &mut expiry => {
                if let Some(registry) = pump.registry.upgrade() {
                    registry.expire(&pump.stream_id, generation);
                }
                return;
            }
            output = pump.next() => match output {
                Some(output) if !output.ended => {}
                // It ended, and the pump parked what is kept of it in this task's place.
                _ => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::ActorStream;

    /// The frame limit of the pumps of these tests: the server's default.
    const FRAME: usize = 1024 * 1024;

    fn numbers(count: u64, encoding: Encoding) -> ItemStream {
        ItemStream::new(
            ActorStream::new(futures_util::stream::iter(1..=count)),
            encoding,
        )
    }

    fn producer(count: u64, config: ReplayConfig) -> Box<Producer> {
        Box::new(Producer::new(
            numbers(count, Encoding::Json),
            1,
            StreamOptions::default(),
            Arc::new(config),
        ))
    }

    /// A producer of a stream that has no item yet and does not end.
    fn endless(config: ReplayConfig) -> Box<Producer> {
        let items = ItemStream::new(
            ActorStream::new(futures_util::stream::pending::<u64>()),
            Encoding::Json,
        );
        Box::new(Producer::new(
            items,
            1,
            StreamOptions::default(),
            Arc::new(config),
        ))
    }

    /// A producer of 1, 2, 3… (never ending) with `options`, and how many items the actor's
    /// stream has given so far.
    fn counting(config: ReplayConfig, options: StreamOptions) -> (Box<Producer>, Arc<AtomicU64>) {
        let pulled = Arc::new(AtomicU64::new(0));
        let counter = pulled.clone();
        let items = futures_util::stream::iter(1u64..).inspect(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let items = ItemStream::new(ActorStream::new(items), Encoding::Json);
        let producer = Box::new(Producer::new(items, 1, options, Arc::new(config)));
        (producer, pulled)
    }

    /// Lets the tasks of this (single-threaded) test runtime run until they wait.
    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    /// The envelopes of the next `max_items` items the pump has ready, decoded.
    async fn next_envelopes(pump: &mut Pump, max_items: usize) -> Vec<Envelope> {
        let output = std::future::poll_fn(|cx| pump.poll_output(cx, max_items)).await;
        output
            .into_iter()
            .flat_map(|output| output.frames)
            .map(|frame| codec::decode(&frame).unwrap())
            .collect()
    }

    /// The numbers of the next `take` items the pump sends, taken one at a time, and the
    /// producer.
    async fn sequence_numbers(producer: Box<Producer>, take: usize) -> (Vec<u64>, Box<Producer>) {
        let registry = StreamRegistry::new(ReplayConfig::default());
        let mut pump = Pump::new(Arc::from("s"), 1, Encoding::Json, producer, registry, FRAME);
        let mut seen = Vec::new();
        for _ in 0..take {
            match next_envelopes(&mut pump, 1).await.as_slice() {
                [Envelope::StreamData(item)] => seen.push(item.sequence_number),
                _ => break,
            }
        }
        (seen, pump.take_producer().unwrap())
    }

    /// The items of binary `streamBatch`es and `streamData`s, with their numbers.
    fn items_of(envelopes: &[Envelope]) -> Vec<(u64, String)> {
        let mut items = Vec::new();
        for envelope in envelopes {
            match envelope {
                Envelope::StreamBatch(batch) => {
                    for (number, item) in (batch.first_sequence..).zip(&batch.items) {
                        items.push((number, item.decode().unwrap()));
                    }
                }
                Envelope::StreamData(item) => {
                    items.push((item.sequence_number, item.data.decode().unwrap()))
                }
                _ => {}
            }
        }
        items
    }

    #[tokio::test]
    async fn a_pump_hands_over_what_is_ready_in_batches() {
        let registry = StreamRegistry::new(ReplayConfig::default());
        let producer = producer(100, ReplayConfig::default());
        let pump = Pump::new(Arc::from("b"), 1, Encoding::Json, producer, registry, FRAME);
        let outputs: Vec<(usize, usize, bool)> = pump
            .map(|output| (output.items, output.frames.len(), output.ended))
            .collect()
            .await;
        // 100 items, one item per envelope (no batches asked for), then the end.
        assert_eq!(
            outputs,
            vec![
                (PUMP_BATCH, PUMP_BATCH, false),
                (100 - PUMP_BATCH, 100 - PUMP_BATCH + 1, true)
            ]
        );
    }

    /// A pump of `items`, serialized in `encoding`, for a client that takes batches of `batch`
    /// items, under the frame limit `max_frame_size`.
    fn batching_pump<T, I>(
        items: I,
        encoding: Encoding,
        batch: usize,
        max_frame_size: usize,
    ) -> Pump
    where
        T: serde::Serialize + Send + 'static,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        let items = ItemStream::new(
            ActorStream::new(futures_util::stream::iter(items)),
            encoding,
        );
        let options = StreamOptions {
            window: None,
            batch,
        };
        let config = Arc::new(ReplayConfig::default());
        let producer = Box::new(Producer::new(items, 1, options, config));
        let registry = StreamRegistry::new(ReplayConfig::default());
        Pump::new(
            Arc::from("s"),
            1,
            encoding,
            producer,
            registry,
            max_frame_size,
        )
    }

    /// The stream of `pump` resumed after item `last_seen` on another connection's pump.
    fn resumed(mut pump: Pump, last_seen: u64, max_frame_size: usize) -> Pump {
        let mut producer = pump.take_producer().unwrap();
        assert!(producer.resume_after(last_seen));
        let registry = StreamRegistry::new(ReplayConfig::default());
        Pump::new(
            Arc::from("s"),
            2,
            pump.encoding,
            producer,
            registry,
            max_frame_size,
        )
    }

    /// `frames` decoded, after checking that none is larger than `limit`.
    fn decoded_within(frames: &[Frame], limit: usize) -> Vec<Envelope> {
        let sizes: Vec<usize> = frames.iter().map(|frame| frame.data.len()).collect();
        assert!(sizes.iter().all(|&size| size <= limit), "{sizes:?}");
        frames
            .iter()
            .map(|frame| codec::decode(frame).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn envelopes_stay_within_the_frame_limit() {
        // Items of 300 to 1,500 bytes (lengths of one byte's size and of three), 64 to an
        // envelope if they fitted, under a frame limit of 2,000 bytes.
        let text = |n: u64| "x".repeat(300 * (1 + n as usize % 5));
        for encoding in [Encoding::Bincode, Encoding::Json] {
            let mut pump = batching_pump((1..=30).map(text), encoding, 64, 2000);
            let output = std::future::poll_fn(|cx| pump.poll_output(cx, 30))
                .await
                .unwrap();
            assert_eq!(output.items, 30);
            assert!(output.frames.len() > 1, "{encoding:?}: one frame");
            let envelopes = decoded_within(&output.frames, 2000);
            let expected: Vec<_> = (1..=30).map(|n| (n, text(n))).collect();
            assert_eq!(items_of(&envelopes), expected, "{encoding:?}");

            // What was kept is replayed within the limit too.
            let mut pump = resumed(pump, 3, 2000);
            let output = std::future::poll_fn(|cx| pump.poll_output(cx, 27))
                .await
                .unwrap();
            let replayed = decoded_within(&output.frames, 2000);
            assert_eq!(items_of(&replayed), expected[3..].to_vec(), "{encoding:?}");
        }
    }

    #[tokio::test]
    async fn an_item_too_large_for_a_frame_ends_the_stream_with_payload_too_large() {
        let sizes = [10usize, 20, 5000, 30];
        let items = sizes.map(|n| "y".repeat(n));
        let mut pump = batching_pump(items, Encoding::Bincode, 64, 2000);
        let envelopes = next_envelopes(&mut pump, 64).await;
        let expected = vec![(1, "y".repeat(10)), (2, "y".repeat(20))];
        assert_eq!(items_of(&envelopes), expected);
        match envelopes.last() {
            Some(Envelope::StreamError(failure)) => {
                let error = &failure.error;
                assert_eq!(error.code, ErrorCode::PayloadTooLarge, "{error}");
            }
            other => panic!("expected a stream error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_replayed_item_too_large_for_the_new_limit_ends_the_stream() {
        let sizes = [10usize, 20, 1500, 30, 40];
        let items = sizes.map(|n| "y".repeat(n));
        let mut pump = batching_pump(items, Encoding::Bincode, 64, 4000);
        let envelopes = next_envelopes(&mut pump, 4).await;
        assert_eq!(items_of(&envelopes).len(), 4);
        // The client comes back having seen item 1, with a limit item 3 does not fit.
        let mut pump = resumed(pump, 1, 1000);
        let envelopes = next_envelopes(&mut pump, 64).await;
        assert_eq!(items_of(&envelopes), vec![(2, "y".repeat(20))]);
        match envelopes.last() {
            Some(Envelope::StreamError(failure)) => {
                let error = &failure.error;
                assert_eq!(error.code, ErrorCode::PayloadTooLarge, "{error}");
            }
            other => panic!("expected a stream error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn binary_envelopes_carry_the_items_in_place_and_replay_them() {
        // Items of 0 to 570 bytes: their lengths take one byte or three.
        let text = |n: u64| "x".repeat(n as usize * 30);
        let mut pump = batching_pump((1..=20).map(text), Encoding::Bincode, 8, FRAME);
        let envelopes = next_envelopes(&mut pump, 20).await;
        let batches: Vec<_> = envelopes
            .iter()
            .map(|envelope| match envelope {
                Envelope::StreamBatch(batch) => (batch.first_sequence, batch.items.len()),
                other => panic!("expected a batch, got {}", other.kind()),
            })
            .collect();
        assert_eq!(batches, vec![(1, 8), (9, 8), (17, 4)]);
        let expected: Vec<_> = (1..=20).map(|n| (n, text(n))).collect();
        assert_eq!(items_of(&envelopes), expected);

        // A resume after item 5 replays 6..=20 from the kept frames, in new envelopes.
        let mut pump = resumed(pump, 5, FRAME);
        let replayed = next_envelopes(&mut pump, 15).await;
        assert_eq!(items_of(&replayed), expected[5..].to_vec());
        // Then the end.
        let rest = next_envelopes(&mut pump, 15).await;
        assert!(matches!(rest.as_slice(), [Envelope::StreamEnd(_)]));
    }

    #[tokio::test]
    async fn a_lone_item_goes_in_a_stream_data() {
        let mut pump = batching_pump([1u64], Encoding::Bincode, 8, FRAME);
        let envelopes = next_envelopes(&mut pump, 8).await;
        match envelopes.as_slice() {
            [Envelope::StreamData(item), Envelope::StreamEnd(_)] => {
                assert_eq!(item.sequence_number, 1);
                assert_eq!(item.data.decode::<u64>().unwrap(), 1);
            }
            other => panic!(
                "expected one streamData and the end, got {} envelopes",
                other.len()
            ),
        }
    }

    #[tokio::test]
    async fn resuming_replays_what_the_buffer_holds_then_goes_on() {
        let (seen, mut producer) =
            sequence_numbers(producer(20, ReplayConfig::default()), 10).await;
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
        assert!(producer.resume_after(7));
        let (seen, _) = sequence_numbers(producer, 5).await;
        assert_eq!(seen, vec![8, 9, 10, 11, 12]);
    }

    #[tokio::test]
    async fn a_buffer_that_no_longer_reaches_back_refuses_to_resume() {
        let config = ReplayConfig {
            max_items: 4,
            ..ReplayConfig::default()
        };
        let (_, mut producer) = sequence_numbers(producer(20, config), 10).await;
        assert!(!producer.resume_after(5), "items 6 was dropped");
        assert!(producer.resume_after(6), "items 7..=10 are kept");
        assert!(producer.resume_after(10), "nothing to replay");
        assert!(!producer.resume_after(11), "never sent");
    }

    #[tokio::test(start_paused = true)]
    async fn old_items_leave_the_buffer() {
        let config = ReplayConfig {
            max_age: Duration::from_secs(1),
            ..ReplayConfig::default()
        };
        let (_, mut producer) = sequence_numbers(producer(20, config), 3).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!producer.resume_after(1));
        assert!(producer.resume_after(3));
    }

    #[tokio::test]
    async fn the_byte_limit_bounds_the_buffer() {
        let config = ReplayConfig {
            max_bytes: 8,
            ..ReplayConfig::default()
        };
        // Each item is 1 or 2 bytes of JSON: 1..=9 are 1 byte, 10 is 2.
        let (_, mut producer) = sequence_numbers(producer(20, config), 10).await;
        assert!(producer.replay.bytes <= 8);
        assert!(!producer.resume_after(1));
        assert!(producer.resume_after(9));
    }

    #[tokio::test]
    async fn a_windowed_stream_waits_for_acknowledgements() {
        let registry = StreamRegistry::new(ReplayConfig::default());
        let items = numbers(100, Encoding::Json);
        let options = StreamOptions {
            window: Some(4),
            batch: 1,
        };
        let producer = Box::new(Producer::new(items, 1, options, registry.config.clone()));
        let mut pump = Pump::new(Arc::from("w"), 1, Encoding::Json, producer, registry, FRAME);
        assert_eq!(pump.next().await.unwrap().items, 4);
        let waiting = tokio::time::timeout(Duration::from_millis(50), pump.next()).await;
        assert!(waiting.is_err(), "a fifth item went out without an ack");
        pump.acknowledge(2);
        assert_eq!(pump.next().await.unwrap().items, 2);
        let waiting = tokio::time::timeout(Duration::from_millis(50), pump.next()).await;
        assert!(waiting.is_err());
    }

    #[tokio::test]
    async fn a_windowed_stream_never_has_more_unacknowledged_bytes_than_it_keeps() {
        let config = ReplayConfig {
            max_bytes: 100,
            ..ReplayConfig::default()
        };
        let registry = StreamRegistry::new(config.clone());
        // 40-byte items (a JSON string of 38 characters).
        let items = ItemStream::new(
            ActorStream::new(futures_util::stream::repeat_with(|| "x".repeat(38))),
            Encoding::Json,
        );
        let options = StreamOptions {
            window: Some(1000),
            batch: 1,
        };
        let producer = Box::new(Producer::new(items, 1, options, Arc::new(config)));
        let mut pump = Pump::new(Arc::from("w"), 1, Encoding::Json, producer, registry, FRAME);
        // 3 × 40 ≥ 100: the third item fills it.
        assert_eq!(pump.next().await.unwrap().items, 3);
        let waiting = tokio::time::timeout(Duration::from_millis(50), pump.next()).await;
        assert!(
            waiting.is_err(),
            "more than the replay buffer keeps went out unacknowledged"
        );
        pump.acknowledge(2);
        assert_eq!(pump.next().await.unwrap().items, 2);
        let mut producer = pump.take_producer().unwrap();
        assert!(
            producer.resume_after(2),
            "what the client has not acknowledged is replayable"
        );
    }

    #[tokio::test]
    async fn a_parked_stream_is_taken_once_and_expires() {
        let registry = StreamRegistry::new(ReplayConfig {
            detached_timeout: Duration::from_millis(50),
            ..ReplayConfig::default()
        });
        registry.park(Arc::from("a"), producer(3, ReplayConfig::default()));
        assert!(registry.take("a", None, None).await.unwrap().is_some());
        assert!(registry.take("a", None, None).await.unwrap().is_none());
        registry.park(Arc::from("b"), producer(3, ReplayConfig::default()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(registry.take("b", None, None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn parking_is_bounded() {
        let registry = StreamRegistry::new(ReplayConfig {
            max_parked_streams: 2,
            ..ReplayConfig::default()
        });
        for id in ["a", "b", "c"] {
            registry.park(Arc::from(id), endless(ReplayConfig::default()));
        }
        assert_eq!(registry.slots().parked, 2);
        assert!(
            registry.take("c", None, None).await.unwrap().is_none(),
            "over the limit"
        );
        // Ended streams have a budget of their own.
        let mut ended = producer(3, ReplayConfig::default());
        ended.terminal = Some(Terminal::End);
        registry.park(Arc::from("e"), ended);
        {
            let slots = registry.slots();
            assert_eq!((slots.parked, slots.ended), (2, 1));
        }
        // The client acknowledging every item releases an ended stream at once.
        registry.acknowledge_ended("e", 0);
        assert_eq!(registry.slots().ended, 0);
        assert!(registry.take("a", None, None).await.unwrap().is_some());
        assert_eq!(registry.slots().parked, 1);
        // Parking a stream again (it ended after a resume) does not count it twice.
        registry.park(Arc::from("b"), endless(ReplayConfig::default()));
        assert_eq!(registry.slots().parked, 1);
    }

    #[tokio::test]
    async fn a_parked_stream_keeps_being_pulled_and_replays_it_on_resume() {
        let registry = StreamRegistry::new(ReplayConfig::default());
        // Five items, then nothing more for now (the stream goes on).
        let items = futures_util::stream::iter(1..=5u64).chain(futures_util::stream::pending());
        let items = ItemStream::new(ActorStream::new(items), Encoding::Json);
        let config = registry.config.clone();
        let producer = Box::new(Producer::new(items, 1, StreamOptions::default(), config));
        let mut pump = Pump::new(
            Arc::from("p"),
            1,
            Encoding::Json,
            producer,
            registry.clone(),
            FRAME,
        );
        // Two sent on the connection, then it goes away.
        assert_eq!(next_envelopes(&mut pump, 2).await.len(), 2);
        registry.park(Arc::from("p"), pump.take_producer().unwrap());
        settle().await;
        let mut producer = registry
            .take("p", None, None)
            .await
            .unwrap()
            .expect("parked");
        assert_eq!(producer.sequence, 5, "items 3..=5 were pulled while parked");
        assert!(producer.resume_after(1));
        let (seen, _) = sequence_numbers(producer, 4).await;
        assert_eq!(seen, vec![2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_parked_stream_stops_at_its_window() {
        let registry = StreamRegistry::new(ReplayConfig::default());
        let options = StreamOptions {
            window: Some(10),
            batch: 1,
        };
        let (producer, pulled) = counting(ReplayConfig::default(), options);
        let mut pump = Pump::new(
            Arc::from("w"),
            1,
            Encoding::Json,
            producer,
            registry.clone(),
            FRAME,
        );
        assert_eq!(next_envelopes(&mut pump, 4).await.len(), 4);
        pump.acknowledge(2);
        registry.park(Arc::from("w"), pump.take_producer().unwrap());
        settle().await;
        // Unacknowledged: 3..=12, the window.
        assert_eq!(pulled.load(Ordering::SeqCst), 12);
        let mut producer = registry
            .take("w", None, None)
            .await
            .unwrap()
            .expect("parked");
        assert_eq!(producer.sequence, 12);
        assert!(producer.resume_after(2), "everything pulled is kept");
        // Once resumed, it goes on past the window as the client acknowledges.
        let (seen, _) = sequence_numbers(producer, 10).await;
        assert_eq!(seen, (3..=12).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_parked_stream_without_flow_control_stops_when_its_buffer_is_full() {
        for (config, stop) in [
            // 16 items.
            (
                ReplayConfig {
                    max_items: 16,
                    ..ReplayConfig::default()
                },
                16,
            ),
            // 8 bytes: items 1..=9 are one byte of JSON each.
            (
                ReplayConfig {
                    max_bytes: 8,
                    ..ReplayConfig::default()
                },
                8,
            ),
        ] {
            let registry = StreamRegistry::new(config.clone());
            let (producer, pulled) = counting(config, StreamOptions::default());
            let mut pump = Pump::new(
                Arc::from("n"),
                1,
                Encoding::Json,
                producer,
                registry.clone(),
                FRAME,
            );
            assert_eq!(next_envelopes(&mut pump, 4).await.len(), 4);
            registry.park(Arc::from("n"), pump.take_producer().unwrap());
            settle().await;
            assert_eq!(pulled.load(Ordering::SeqCst), stop);
            let mut producer = registry
                .take("n", None, None)
                .await
                .unwrap()
                .expect("parked");
            assert!(
                producer.resume_after(0),
                "nothing the client may not have seen was dropped"
            );
            let (seen, _) = sequence_numbers(producer, stop as usize + 2).await;
            assert_eq!(seen, (1..=stop + 2).collect::<Vec<_>>());
        }
    }

    #[tokio::test]
    async fn a_parked_stream_that_ends_is_kept_with_its_end() {
        let registry = StreamRegistry::new(ReplayConfig::default());
        registry.park(Arc::from("e"), producer(3, ReplayConfig::default()));
        settle().await;
        {
            let slots = registry.slots();
            assert_eq!((slots.parked, slots.ended), (0, 1));
        }
        let mut producer = registry.take("e", None, None).await.unwrap().expect("kept");
        assert!(producer.resume_after(0));
        let registry = StreamRegistry::new(ReplayConfig::default());
        let mut pump = Pump::new(Arc::from("e"), 1, Encoding::Json, producer, registry, FRAME);
        let envelopes = next_envelopes(&mut pump, 10).await;
        let numbers: Vec<u64> = envelopes
            .iter()
            .filter_map(|envelope| match envelope {
                Envelope::StreamData(item) => Some(item.sequence_number),
                _ => None,
            })
            .collect();
        assert_eq!(numbers, vec![1, 2, 3]);
        assert!(matches!(envelopes.last(), Some(Envelope::StreamEnd(_))));
    }

    #[tokio::test]
    async fn a_gap_from_the_actor_ends_the_stream_with_the_stream_numbers() {
        let gap = crate::StreamGap {
            last_sequence: 99,
            resumed_at: Some(7),
        };
        let items = futures_util::stream::iter([Ok(1u64), Ok(2), Err(gap.into_error())]);
        let items = ItemStream::new(ActorStream::from_results(items), Encoding::Json);
        let registry = StreamRegistry::new(ReplayConfig::default());
        let config = registry.config.clone();
        let producer = Box::new(Producer::new(items, 1, StreamOptions::default(), config));
        let mut pump = Pump::new(Arc::from("g"), 1, Encoding::Json, producer, registry, FRAME);
        let envelopes = next_envelopes(&mut pump, 10).await;
        match envelopes.last() {
            Some(Envelope::StreamError(failure)) => assert_eq!(
                failure.error.stream_gap(),
                Some(crate::StreamGap {
                    last_sequence: 2,
                    resumed_at: None
                })
            ),
            other => panic!("expected a stream error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_live_stream_is_handed_over_by_its_connection() {
        let registry = StreamRegistry::new(ReplayConfig::default());
        let (handovers, mut requests) = mpsc::unbounded_channel();
        let producer = registry.open(
            Arc::from("c"),
            1,
            StreamOptions::default(),
            ItemStream::empty(),
            &handovers,
        );
        let owner = tokio::spawn(async move {
            let Some(ConnectionSignal::Handover(request)) = requests.recv().await else {
                panic!("expected a handover request");
            };
            assert_eq!(&*request.stream_id, "c");
            let _ = request.reply.send(producer);
        });
        assert!(registry.take("c", None, None).await.unwrap().is_some());
        owner.await.unwrap();
    }
}
