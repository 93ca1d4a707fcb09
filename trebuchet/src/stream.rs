//! Streams: what a `#[stream]` method returns, on the actor's side and on the caller's.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::marker::PhantomData;

use bytes::Bytes;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::actor::ActorError;
use crate::codec::{self, Span};
use crate::protocol::{
    Encoding, Payload, PayloadError, RemoteError, decode_payload, encode_payload_into,
};

/// A stream of items from an actor: what a `#[stream]` method returns, to its caller as to the
/// actor that makes it.
///
/// The actor builds one from any stream ([`ActorStream::new`]); the caller reads `Ok(item)`s until
/// the stream ends, or one `Err` and then the end: the actor's own stream error, or `unavailable`
/// when the client gave up reconnecting. A lost connection alone does not end it: the client
/// resumes the stream on the next one. The one `Err` after which items still come is a
/// [`StreamGap`] (see [`RemoteError::stream_gap`]). Dropping it stops the stream: the server drops the actor's stream
/// too (a remote caller sends `cancel`).
pub struct ActorStream<T> {
    items: BoxStream<'static, Result<T, RemoteError>>,
}

impl<T: Send + 'static> ActorStream<T> {
    /// A stream of `items`.
    pub fn new(items: impl Stream<Item = T> + Send + 'static) -> Self {
        Self::from_results(items.map(Ok))
    }

    /// A stream that may fail: an `Err` ends it with that error.
    pub fn from_results(
        items: impl Stream<Item = Result<T, RemoteError>> + Send + 'static,
    ) -> Self {
        ActorStream {
            items: items.boxed(),
        }
    }
}

impl<T> Stream for ActorStream<T> {
    type Item = Result<T, RemoteError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.as_mut().poll_next(cx)
    }
}

impl<T> fmt::Debug for ActorStream<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ActorStream")
    }
}

/// Items of a stream may have been missed: what a caller's [`ActorStream`] yields (inside an
/// `unavailable` error, see [`RemoteError::stream_gap`]) when the connection was lost and the
/// stream could not be continued where it stopped.
///
/// The client resumes every open stream after a reconnect (`streamResume`) and the server replays
/// what it still holds, so usually nothing is missed and no gap is reported. When the server's
/// replay buffer no longer reaches back (or the server no longer knows the stream, e.g. after a
/// restart), it restarts the stream with the same call; the caller then gets this gap, and after
/// it the restarted stream's items. A gap in the sequence numbers themselves is reported the same
/// way. Unlike other errors, a gap does not end the stream.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamGap {
    /// The last sequence number received before the gap (of the stream as it was before).
    pub last_sequence: u64,
    /// The first sequence number received after the gap, when it is of the same stream; `None`
    /// when the stream was restarted (its numbering starts again at 1).
    pub resumed_at: Option<u64>,
}

/// The `data` of the error that carries a [`StreamGap`]: `{"streamGap": {...}}`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GapData {
    stream_gap: StreamGap,
}

impl StreamGap {
    /// The `unavailable` error that carries this gap.
    pub fn into_error(self) -> RemoteError {
        let message = match self.resumed_at {
            Some(next) => format!(
                "stream gap: item {next} came after item {}; the items between were missed",
                self.last_sequence
            ),
            None => format!(
                "stream gap: the connection was lost after item {} and the stream could not be \
                 continued; it was restarted, items in between may have been missed",
                self.last_sequence
            ),
        };
        let mut error = RemoteError::unavailable(message);
        error.data = Payload::encode(&GapData { stream_gap: self }, Encoding::Json).ok();
        error
    }
}

impl RemoteError {
    /// The [`StreamGap`] this error reports, if it is one (a stream goes on after a gap).
    pub fn stream_gap(&self) -> Option<StreamGap> {
        if self.code != crate::protocol::ErrorCode::Unavailable {
            return None;
        }
        let data: GapData = self.data.as_ref()?.decode().ok()?;
        Some(data.stream_gap)
    }
}

/// The items of a remote stream as a client receives them: serialized, in the batches they
/// arrived in.
pub type PayloadStream = BoxStream<'static, Result<PayloadBatch, RemoteError>>;

/// Consecutive items of a remote stream that arrived together, still serialized: what a
/// [`PayloadStream`] yields. Items of a binary frame are read where they are in it, without a
/// [`Payload`] each; as an iterator, it gives each item as a [`Payload`].
pub struct PayloadBatch {
    items: BatchItems,
}

enum BatchItems {
    /// `left` items in a binary frame, the next one at `at` (checked when the frame was read).
    InFrame {
        frame: Bytes,
        at: usize,
        left: usize,
    },
    Payloads(std::vec::IntoIter<Payload>),
}

impl PayloadBatch {
    /// The `count` items from `at` of a binary stream frame that
    /// `codec::binary::decode_stream_items` accepted.
    pub(crate) fn in_frame(frame: Bytes, at: usize, count: usize) -> Self {
        PayloadBatch {
            items: BatchItems::InFrame {
                frame,
                at,
                left: count,
            },
        }
    }

    /// How many items are left.
    pub fn len(&self) -> usize {
        match &self.items {
            BatchItems::InFrame { left, .. } => *left,
            BatchItems::Payloads(payloads) => payloads.len(),
        }
    }

    /// Whether no item is left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next item in a frame: its encoding and bytes.
    fn next_in_frame(frame: &Bytes, at: &mut usize, left: &mut usize) -> Option<(Encoding, Span)> {
        if *left == 0 {
            return None;
        }
        let item = codec::next_stream_item(frame, at);
        *left = if item.is_some() { *left - 1 } else { 0 };
        item
    }

    /// Drops the next `count` items.
    pub(crate) fn skip_items(&mut self, count: usize) {
        for _ in 0..count {
            if self.next().is_none() {
                return;
            }
        }
    }

    /// Deserializes the next item as a `T` ([`crate::SharedBytes`] in it share the frame it
    /// came in); `None` when no item is left.
    pub fn decode_next<T: DeserializeOwned>(&mut self) -> Option<Result<T, PayloadError>> {
        match &mut self.items {
            BatchItems::InFrame { frame, at, left } => {
                let (encoding, span) = Self::next_in_frame(frame, at, left)?;
                let start = span.start as usize;
                let bytes = &frame[start..start + span.len as usize];
                Some(decode_payload(encoding, bytes, frame))
            }
            BatchItems::Payloads(payloads) => payloads.next().map(|payload| payload.decode()),
        }
    }
}

impl From<Vec<Payload>> for PayloadBatch {
    fn from(payloads: Vec<Payload>) -> Self {
        PayloadBatch {
            items: BatchItems::Payloads(payloads.into_iter()),
        }
    }
}

impl Iterator for PayloadBatch {
    type Item = Payload;

    fn next(&mut self) -> Option<Payload> {
        match &mut self.items {
            BatchItems::InFrame { frame, at, left } => {
                let (encoding, span) = Self::next_in_frame(frame, at, left)?;
                let start = span.start as usize;
                let bytes = frame.slice(start..start + span.len as usize);
                Some(Payload::from_shared(encoding, bytes))
            }
            BatchItems::Payloads(payloads) => payloads.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len(), Some(self.len()))
    }
}

impl ExactSizeIterator for PayloadBatch {}

impl fmt::Debug for PayloadBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadBatch")
            .field("len", &self.len())
            .finish()
    }
}

/// A stream method's items as a server sends them: each serialized when the server is ready to
/// send it, straight into the frame that carries it.
pub struct ItemStream {
    items: Pin<Box<dyn ItemSource>>,
    encoding: Encoding,
    /// What middleware learned about the call that opened the stream (its principal may resume
    /// it).
    opened_with: http::Extensions,
}

/// What an [`ItemStream`] hides: a typed stream and the encoding of its items.
trait ItemSource: Send {
    /// The next item, serialized at the end of `out` (nothing is appended for an error or the
    /// end).
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut bytes::BytesMut,
    ) -> Poll<Option<Result<(), RemoteError>>>;
}

/// An [`ItemSource`]: the items of `items`, each appended to the frame by `write`.
struct Writing<S, W> {
    items: S,
    encoding: Encoding,
    write: W,
}

impl<S, T, W> ItemSource for Writing<S, W>
where
    S: Stream<Item = Result<T, RemoteError>> + Unpin + Send,
    W: Fn(T, Encoding, &mut bytes::BytesMut) -> Result<(), RemoteError> + Unpin + Send,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut bytes::BytesMut,
    ) -> Poll<Option<Result<(), RemoteError>>> {
        let this = &mut *self;
        Poll::Ready(match futures_util::ready!(this.items.poll_next_unpin(cx)) {
            Some(Ok(item)) => Some((this.write)(item, this.encoding, out)),
            Some(Err(error)) => Some(Err(error)),
            None => None,
        })
    }
}

impl ItemStream {
    /// Items serialized already, each in `encoding` (an item in another encoding ends the stream
    /// with an `internal` error): for a service written by hand that passes on items it did not
    /// make, such as those of a remote stream (a [`PayloadBatch`] is an iterator of
    /// [`Payload`]s).
    pub fn from_payloads(
        items: impl Stream<Item = Result<Payload, RemoteError>> + Send + 'static,
        encoding: Encoding,
    ) -> Self {
        let write = |payload: Payload, encoding: Encoding, out: &mut bytes::BytesMut| {
            if payload.encoding() != encoding {
                return Err(RemoteError::internal(format!(
                    "a stream item in {:?} in a stream of {encoding:?} items",
                    payload.encoding()
                )));
            }
            out.extend_from_slice(payload.as_bytes());
            Ok(())
        };
        ItemStream {
            items: Box::pin(Writing {
                items: items.boxed(),
                encoding,
                write,
            }),
            encoding,
            opened_with: http::Extensions::new(),
        }
    }

    /// The items of `items`, each serialized in `encoding` as it is sent.
    pub fn new<T: Serialize + Send + 'static>(items: ActorStream<T>, encoding: Encoding) -> Self {
        ItemStream {
            items: Box::pin(Writing {
                items,
                encoding,
                write: |value: T, encoding, out: &mut bytes::BytesMut| {
                    encode_payload_into(&value, encoding, out).map_err(|error| {
                        RemoteError::internal(format!("cannot encode a stream item: {error}"))
                    })
                },
            }),
            encoding,
            opened_with: http::Extensions::new(),
        }
    }

    /// A stream with no items.
    pub fn empty() -> Self {
        Self::new(
            ActorStream::<()>::new(futures_util::stream::empty()),
            Encoding::Bincode,
        )
    }

    /// The encoding of the items.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Polls for the next item; when there is one, appends it serialized to `out`. An `Err`
    /// ends the stream.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut bytes::BytesMut,
    ) -> Poll<Option<Result<(), RemoteError>>> {
        self.items.as_mut().poll_write(cx, out)
    }
}

impl ItemStream {
    /// Records what middleware learned about the call that opened the stream.
    pub(crate) fn set_opened_with(&mut self, extensions: http::Extensions) {
        self.opened_with = extensions;
    }

    /// What middleware learned about the call that opened the stream.
    pub(crate) fn opened_with(&self) -> &http::Extensions {
        &self.opened_with
    }
}

impl fmt::Debug for ItemStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ItemStream")
    }
}

/// What a server sends for a call: one value, or a stream of them.
pub enum Reply {
    /// A method's result (`response`).
    Value(Payload),
    /// A stream method's items (`streamStart`, `streamData`…, then `streamEnd` or `streamError`).
    Stream(ItemStream),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Value(payload) => f.debug_tuple("Value").field(payload).finish(),
            Reply::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// Encodes a stream method's outcome: each item in `encoding`, an error as
/// [`RemoteError::from_actor_error`] sends it. Used by generated code.
pub fn encode_stream<T: Serialize + Send + 'static, E: ActorError>(
    outcome: Result<ActorStream<T>, E>,
    encoding: Encoding,
) -> Result<Reply, RemoteError> {
    let stream = outcome.map_err(|error| RemoteError::from_actor_error(&error, encoding))?;
    Ok(Reply::Stream(ItemStream::new(stream, encoding)))
}

/// Decodes the items of a remote stream as `T`.
pub(crate) fn decode_stream<T: DeserializeOwned + Send + 'static>(
    batches: PayloadStream,
) -> ActorStream<T> {
    ActorStream::from_results(Decoded {
        batches,
        batch: None,
        item: PhantomData,
    })
}

/// A remote stream's items, deserialized from their batches one at a time.
struct Decoded<T> {
    batches: PayloadStream,
    batch: Option<PayloadBatch>,
    item: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Stream for Decoded<T> {
    type Item = Result<T, RemoteError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(item) = self.batch.as_mut().and_then(PayloadBatch::decode_next::<T>) {
                return Poll::Ready(Some(item.map_err(|error| {
                    RemoteError::internal(format!("cannot decode a stream item: {error}"))
                })));
            }
            match futures_util::ready!(self.batches.poll_next_unpin(cx)) {
                Some(Ok(batch)) => self.batch = Some(batch),
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(None),
            }
        }
    }
}
