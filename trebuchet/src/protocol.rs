//! The wire protocol (v1): envelopes, payloads and error codes.
//!
//! Every transport speaks these types; [`crate::codec`] turns them into JSON text frames or compact
//! binary (bincode) frames. The normative description, written for clients in other languages, is
//! `docs/PROTOCOL.md`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// The protocol version this crate speaks (sent in the TCP handshake, documented in PROTOCOL.md).
pub const PROTOCOL_VERSION: u32 = 1;

/// A map keyed by `callId`, hashed with one multiplication (maps keyed by call ids are looked
/// up on every call). A server's maps of them are per connection and bounded by the calls in
/// flight, so a client choosing colliding ids only slows its own connection.
pub(crate) type CallIdMap<V> =
    std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<CallIdHasher>>;

/// The hasher of [`CallIdMap`]: Fibonacci hashing of one `u64`.
#[derive(Default)]
pub(crate) struct CallIdHasher(u64);

impl std::hash::Hasher for CallIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `u64` keys; kept correct for any other.
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Free string map carried with an invocation to the server-side middleware
/// (for example `authorization` and `traceparent`).
pub type Metadata = BTreeMap<String, String>;

/// The metadata key by which a stream call asks for per-stream flow control: its value is the
/// most items the server may send ahead of the client's `streamAck`s (see [`StreamAck`]).
pub const STREAM_WINDOW_METADATA: &str = "stream-window";

/// The metadata key by which a stream call asks the server to send the items that are ready
/// together in one [`StreamBatch`] envelope: its value is the most items per envelope.
pub const STREAM_BATCH_METADATA: &str = "stream-batch";

/// How a frame, and the payloads inside it, are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Encoding {
    /// JSON text (WebSocket text messages, Lambda payloads). Readable from any language.
    Json,
    /// bincode 2 with its standard configuration (WebSocket binary messages, TCP frames).
    Bincode,
}

/// One protocol message. The JSON form is `{"type": "<variant>", ...}` with camelCase fields.
#[derive(Clone, Debug, PartialEq)]
pub enum Envelope {
    /// A call of an actor method (client → server).
    Invocation(Invocation),
    /// The answer to an invocation, or a connection-level error (server → client).
    Response(Response),
    /// The first answer to a call of a stream method (server → client).
    StreamStart(StreamStart),
    /// One item of a stream (server → client).
    StreamData(StreamData),
    /// The normal end of a stream (server → client).
    StreamEnd(StreamEnd),
    /// The end of a stream with an error (server → client).
    StreamError(StreamError),
    /// A request to continue a stream after a reconnect (client → server).
    StreamResume(StreamResume),
    /// A request to stop a call or stream in flight (client → server).
    Cancel(Cancel),
    /// The client has taken the items of a stream up to a sequence number (client → server).
    StreamAck(StreamAck),
    /// Consecutive items of a stream (server → client, to clients that ask for it).
    StreamBatch(StreamBatch),
}

impl Envelope {
    /// The value of the JSON `type` field for this envelope.
    pub fn kind(&self) -> &'static str {
        match self {
            Envelope::Invocation(_) => "invocation",
            Envelope::Response(_) => "response",
            Envelope::StreamStart(_) => "streamStart",
            Envelope::StreamData(_) => "streamData",
            Envelope::StreamBatch(_) => "streamBatch",
            Envelope::StreamEnd(_) => "streamEnd",
            Envelope::StreamError(_) => "streamError",
            Envelope::StreamResume(_) => "streamResume",
            Envelope::Cancel(_) => "cancel",
            Envelope::StreamAck(_) => "streamAck",
        }
    }
}

/// A call of `method` on the actor exposed as `actor_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    /// Chosen by the client, unique among its calls in flight on one connection.
    pub call_id: u64,
    /// The name the actor is exposed under.
    pub actor_id: String,
    /// The method name, as written in the actor trait.
    pub method: String,
    /// The arguments: in JSON an object from parameter names to values.
    pub args: Payload,
    /// Free string map for middleware (authorization, traceparent, …).
    pub metadata: Metadata,
}

/// The outcome of an invocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The call this answers; `None` for an error about a frame whose `callId` could not be read.
    pub call_id: Option<u64>,
    /// The method's result, or the error.
    pub outcome: Result<Payload, RemoteError>,
}

/// The first answer to a call of a stream method.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamStart {
    /// The call that opened the stream.
    pub call_id: u64,
    /// The server-chosen id of the stream (a UUID in text form).
    pub stream_id: String,
}

/// One item of a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamData {
    /// The stream this item belongs to (shared: every item of a stream names it).
    pub stream_id: Arc<str>,
    /// 1, 2, 3, … without gaps.
    pub sequence_number: u64,
    /// The item.
    pub data: Payload,
    /// When the server produced the item, in milliseconds since the Unix epoch.
    pub timestamp: u64,
}

/// Consecutive items of a stream in one envelope: item `i` has sequence number
/// `first_sequence + i` (an extension of the contract).
///
/// Sent only on streams whose call had [`STREAM_BATCH_METADATA`] = N (at most N items each),
/// when several items are ready at once; a client that asks must also understand `streamData`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamBatch {
    /// The stream these items belong to.
    pub stream_id: Arc<str>,
    /// The sequence number of the first item.
    pub first_sequence: u64,
    /// The items, in order.
    pub items: Vec<Payload>,
    /// When the server sent the items, in milliseconds since the Unix epoch.
    pub timestamp: u64,
}

/// The normal end of a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamEnd {
    /// The stream that ended.
    pub stream_id: String,
}

/// The end of a stream with an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamError {
    /// The stream that failed.
    pub stream_id: String,
    /// Why it failed.
    pub error: RemoteError,
}

/// A request to continue a stream after `last_sequence`, sent after a reconnect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamResume {
    /// The stream to continue.
    pub stream_id: String,
    /// The last sequence number the client has seen.
    pub last_sequence: u64,
    /// The actor of the original call (to start afresh if the stream cannot be resumed).
    pub actor_id: String,
    /// The method of the original call.
    pub method: String,
    /// The arguments of the original call.
    pub args: Payload,
    /// The call the continued (or restarted) stream belongs to on this connection: its `cancel`
    /// and, when the stream is restarted, its `streamStart` carry it. An extension of the
    /// contract, optional: without it the server uses the stream's original `callId` (0 for a
    /// restarted stream).
    pub call_id: Option<u64>,
    /// Metadata for the middleware when the stream has to be restarted (an extension, like
    /// `callId`; empty when absent).
    pub metadata: Metadata,
}

/// The client has taken every item of `stream_id` up to `sequence_number` (an extension of the
/// contract, for per-stream flow control).
///
/// A stream call whose metadata has [`STREAM_WINDOW_METADATA`] = N promises these
/// acknowledgements: the server then never has more than N items of that stream unacknowledged
/// (fewer if its replay buffer is smaller), and waits for a `streamAck` before producing more. A
/// client that does not ask gets no flow control beyond the connection's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamAck {
    /// The stream.
    pub stream_id: String,
    /// The last item taken.
    pub sequence_number: u64,
}

/// A request to stop the call `call_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cancel {
    /// The call to stop.
    pub call_id: u64,
}

/// A serialized value (arguments, a result, a stream item) in one of the two encodings.
///
/// A JSON payload holds JSON text; a bincode payload holds bincode bytes. Servers answer in the
/// encoding of the request, so the two never need converting.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    encoding: Encoding,
    /// Shared, so a copy (a stream's replay buffer keeps one of each item) costs no allocation.
    bytes: bytes::Bytes,
}

/// A value could not be turned into a [`Payload`] or read back from one.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// JSON serialization or deserialization failed.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// bincode serialization failed.
    #[error("{0}")]
    BincodeEncode(#[from] bincode::error::EncodeError),
    /// bincode deserialization failed.
    #[error("{0}")]
    BincodeDecode(#[from] bincode::error::DecodeError),
    /// Bytes were left over after the value was read.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
}

pub(crate) fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Serializes `value` with bincode at the end of `buffer`.
///
/// (bincode's `std::io::Write` path goes through an adapter and `write_all` for every field;
/// this one appends to the buffer directly.)
pub(crate) fn encode_bincode_into<T: Serialize + ?Sized, B: bytes::BufMut>(
    value: &T,
    buffer: &mut B,
) -> Result<(), bincode::error::EncodeError> {
    struct Append<'a, B>(&'a mut B);
    impl<B: bytes::BufMut> bincode::enc::write::Writer for Append<'_, B> {
        #[inline]
        fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
            self.0.put_slice(bytes);
            Ok(())
        }
    }
    bincode::serde::encode_into_writer(value, Append(buffer), bincode_config())
}

/// Encodes `value` with bincode into bytes of exactly its size.
///
/// Values are written into a per-thread scratch buffer and copied out: one allocation of the
/// right size, where writing into a fresh `Vec` regrows it a few times and then needs a second
/// allocation to share a buffer whose length is not its capacity. Large values (past
/// `KEEP_SCRATCH`) take the scratch buffer with them, so a thread never keeps a large one.
pub(crate) fn encode_bincode<T: Serialize + ?Sized>(
    value: &T,
) -> Result<bytes::Bytes, bincode::error::EncodeError> {
    const KEEP_SCRATCH: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        // (A `Serialize` impl that encodes a payload itself finds the buffer in use.)
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            let mut bytes = Vec::new();
            encode_bincode_into(value, &mut bytes)?;
            return Ok(bytes.into());
        };
        scratch.clear();
        encode_bincode_into(value, &mut *scratch)?;
        Ok(if scratch.len() > KEEP_SCRATCH {
            std::mem::take(&mut *scratch).into()
        } else {
            bytes::Bytes::copy_from_slice(&scratch)
        })
    })
}

/// Decodes a `T` from the start of `bytes` with bincode, returning it and the bytes read.
///
/// bincode allocates a string or byte array of the length a frame announces before reading it,
/// so a hostile length could make it allocate without bound. A legitimate value never claims
/// more bytes than `bytes` holds, so the decoder is given a limit from the first size class at or
/// above `bytes.len()`: a lying length is refused before anything is allocated.
pub(crate) fn decode_bincode<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * KIB;
    let config = bincode_config();
    let len = bytes.len();
    if len <= 4 * KIB {
        bincode::serde::decode_from_slice(bytes, config.with_limit::<{ 4 * KIB }>())
    } else if len <= 64 * KIB {
        bincode::serde::decode_from_slice(bytes, config.with_limit::<{ 64 * KIB }>())
    } else if len <= MIB {
        bincode::serde::decode_from_slice(bytes, config.with_limit::<{ MIB }>())
    } else if len <= 16 * MIB {
        bincode::serde::decode_from_slice(bytes, config.with_limit::<{ 16 * MIB }>())
    } else if len <= 256 * MIB {
        bincode::serde::decode_from_slice(bytes, config.with_limit::<{ 256 * MIB }>())
    } else {
        bincode::serde::decode_from_slice(bytes, config.with_limit::<{ 4096 * MIB }>())
    }
}

/// Serializes `value` in `encoding` (the bytes of a [`Payload`], as [`Payload::encode`] makes
/// them) at the end of `out`; if that fails, `out` is left as it was.
pub(crate) fn encode_payload_into<T: Serialize + ?Sized>(
    value: &T,
    encoding: Encoding,
    out: &mut bytes::BytesMut,
) -> Result<(), PayloadError> {
    use bytes::BufMut;
    let before = out.len();
    let written = match encoding {
        Encoding::Json => {
            serde_json::to_writer((&mut *out).writer(), value).map_err(PayloadError::from)
        }
        Encoding::Bincode => encode_bincode_into(value, out).map_err(PayloadError::from),
    };
    if written.is_err() {
        out.truncate(before);
    }
    written
}

/// Deserializes `bytes`, a payload in `encoding` that lies in `source`: [`crate::SharedBytes`]
/// in it (in bincode) share `source`'s memory.
pub(crate) fn decode_payload<T: DeserializeOwned>(
    encoding: Encoding,
    bytes: &[u8],
    source: &bytes::Bytes,
) -> Result<T, PayloadError> {
    match encoding {
        Encoding::Json => Ok(serde_json::from_slice(bytes)?),
        Encoding::Bincode => {
            let (value, read) =
                crate::shared_bytes::decoding_from(source, || decode_bincode(bytes))?;
            if read != bytes.len() {
                return Err(PayloadError::TrailingBytes(bytes.len() - read));
            }
            Ok(value)
        }
    }
}

impl Payload {
    /// Serializes `value` in `encoding`.
    pub fn encode<T: Serialize + ?Sized>(
        value: &T,
        encoding: Encoding,
    ) -> Result<Payload, PayloadError> {
        let bytes = match encoding {
            Encoding::Json => serde_json::to_vec(value)?,
            Encoding::Bincode => {
                return Ok(Payload {
                    encoding,
                    bytes: encode_bincode(value)?,
                });
            }
        };
        Ok(Payload {
            encoding,
            bytes: bytes.into(),
        })
    }

    /// A payload of `bytes` already encoded in `encoding` (not checked until decoded), sharing
    /// them (e.g. a slice of the frame it arrived in).
    pub(crate) fn from_shared(encoding: Encoding, bytes: bytes::Bytes) -> Payload {
        Payload { encoding, bytes }
    }

    /// Deserializes the payload as a `T`.
    ///
    /// [`SharedBytes`](crate::SharedBytes) in it (in bincode) share the payload's bytes.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        decode_payload(self.encoding, &self.bytes, &self.bytes)
    }

    /// A payload of `bytes` already encoded in `encoding` (not checked until decoded).
    pub fn from_bytes(encoding: Encoding, bytes: Vec<u8>) -> Payload {
        Payload {
            encoding,
            bytes: bytes.into(),
        }
    }

    /// A JSON payload from JSON text (checked to be one valid JSON value).
    pub fn from_json_text(text: &str) -> Result<Payload, PayloadError> {
        let raw: &RawValue = serde_json::from_str(text)?;
        Ok(Payload::from_raw_json(raw))
    }

    pub(crate) fn from_raw_json(raw: &RawValue) -> Payload {
        Payload {
            encoding: Encoding::Json,
            bytes: bytes::Bytes::copy_from_slice(raw.get().as_bytes()),
        }
    }

    /// The empty argument list (`{}` in JSON) in `encoding`.
    pub fn empty_args(encoding: Encoding) -> Payload {
        match encoding {
            Encoding::Json => Payload {
                encoding,
                bytes: bytes::Bytes::from_static(b"{}"),
            },
            Encoding::Bincode => Payload {
                encoding,
                bytes: bytes::Bytes::new(),
            },
        }
    }

    /// The encoding of the payload.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The serialized bytes (JSON text for a JSON payload).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The JSON text, for a JSON payload.
    pub fn as_json_text(&self) -> Option<&str> {
        match self.encoding {
            Encoding::Json => std::str::from_utf8(&self.bytes).ok(),
            Encoding::Bincode => None,
        }
    }

    /// The size of the serialized value in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the serialized value is empty (a bincode unit value or empty argument list).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn raw_json(&self) -> Result<&RawValue, serde_json::Error> {
        match self.as_json_text() {
            Some(text) => serde_json::from_str(text),
            None => Err(serde::ser::Error::custom(
                "a bincode payload cannot be written into a JSON frame",
            )),
        }
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_json_text() {
            Some(text) => write!(f, "Payload::Json({text})"),
            None => write!(
                f,
                "Payload::{:?}({} bytes)",
                self.encoding,
                self.bytes.len()
            ),
        }
    }
}

/// In JSON a payload is the JSON value itself; in bincode it is its encoding tag and bytes.
impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            let raw = self.raw_json().map_err(serde::ser::Error::custom)?;
            raw.serialize(serializer)
        } else {
            (self.encoding, BytesRef(&self.bytes)).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let raw = Box::<RawValue>::deserialize(deserializer)?;
            Ok(Payload::from_raw_json(&raw))
        } else {
            let (encoding, bytes): (Encoding, ByteBuf) = Deserialize::deserialize(deserializer)?;
            Ok(Payload {
                encoding,
                bytes: bytes.0.into(),
            })
        }
    }
}

/// Serializes a byte slice with `serialize_bytes` (a length and the bytes, not a sequence).
struct BytesRef<'a>(&'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(self.0)
    }
}

struct ByteBuf(Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// The error codes of the protocol (`"code"` in an error object).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A malformed envelope or malformed arguments.
    BadRequest,
    /// No actor is exposed under that id.
    UnknownActor,
    /// The actor has no method of that name.
    UnknownMethod,
    /// Credentials are missing or invalid.
    Unauthenticated,
    /// The principal may not make this call.
    Forbidden,
    /// Too many calls; retry later.
    RateLimited,
    /// A frame or payload over the configured limit.
    PayloadTooLarge,
    /// The call did not finish in time.
    Timeout,
    /// Optimistic concurrency lost after retries.
    Conflict,
    /// The actor or the server cannot be reached (for example, the connection is down).
    Unavailable,
    /// The actor's own error, with its message.
    ActorError,
    /// A bug or an unexpected failure on the server.
    Internal,
    /// A code this version does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The wire name of the code, e.g. `"unknown_method"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownActor => "unknown_actor",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ActorError => "actor_error",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as it travels on the wire: a code, a message and, for `actor_error`, optionally the
/// actor's own error value (`data`) so a Rust client can rebuild the typed error.
///
/// Every actor method's error type converts from `RemoteError` (see [`crate::ActorError`]), which
/// is how transport failures reach the caller.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RemoteError {
    /// What kind of failure this is.
    pub code: ErrorCode,
    /// A human-readable description.
    pub message: String,
    /// The actor's error value, serialized (only with [`ErrorCode::ActorError`]).
    #[serde(default)]
    pub data: Option<Payload>,
}

impl RemoteError {
    /// An error with `code` and `message` and no data.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// An `unavailable` error.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// A `timeout` error.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, message)
    }

    /// An `internal` error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The wire form of an actor method's error `error`, for an answer in `encoding`.
    ///
    /// An error that is a `RemoteError` with a code other than `actor_error` — `RemoteError`
    /// itself, or the `Remote(#[from] RemoteError)` variant of an actor's error enum — goes out
    /// as that `RemoteError`: its code, message and data (data the frames of `encoding` cannot
    /// carry, bincode in a JSON frame, is left out). Any other error goes out as an
    /// `actor_error` with the error's `Display` as the message and the error value, serialized
    /// in `encoding`, as data. See [`crate::ActorError`] for how an error is recognised.
    pub fn from_actor_error<E>(error: &E, encoding: Encoding) -> Self
    where
        E: fmt::Display + Serialize + From<RemoteError>,
    {
        if let Some(mut carried) = carried_remote_error(error)
            && carried.code != ErrorCode::ActorError
        {
            if encoding == Encoding::Json
                && carried
                    .data
                    .as_ref()
                    .is_some_and(|data| data.encoding() != Encoding::Json)
            {
                carried.data = None;
            }
            return carried;
        }
        RemoteError {
            code: ErrorCode::ActorError,
            message: error.to_string(),
            data: Payload::encode(error, encoding).ok(),
        }
    }
}

/// The `RemoteError` that `error` is, if it is one: `E::from` of it gives back a value that
/// serializes exactly like `error` (so a client rebuilding the error with `E::from` gets the
/// same value).
///
/// The candidate is the first `RemoteError` serialized while `error` is (see
/// [`CarriedRemoteError`]); serializing `error` and `E::from(candidate)` in the same format and
/// comparing the bytes is what decides. An error that merely holds a `RemoteError` among other
/// things (a variant with a context message, say) is not one.
fn carried_remote_error<E: Serialize + From<RemoteError>>(error: &E) -> Option<RemoteError> {
    let (original, candidate) = CarriedRemoteError::capture(|| fingerprint(error));
    let candidate = candidate?;
    let rebuilt = fingerprint(&E::from(candidate.clone()))?;
    (original? == rebuilt).then_some(candidate)
}

/// The serialized form of `value` that [`carried_remote_error`] compares: bincode, or JSON for a
/// value bincode cannot write (one that needs a self-describing format).
fn fingerprint<T: Serialize>(value: &T) -> Option<bytes::Bytes> {
    match encode_bincode(value) {
        Ok(bytes) => Some(bytes),
        Err(_) => serde_json::to_vec(value).ok().map(bytes::Bytes::from),
    }
}

/// Where a `RemoteError` being serialized leaves a copy of itself while
/// [`carried_remote_error`] looks for one (per thread: serialization does not cross threads).
enum CarriedRemoteError {
    /// Nobody is looking.
    Off,
    /// Looking, nothing found yet.
    Looking,
    /// The first `RemoteError` serialized since looking started.
    Found(RemoteError),
}

thread_local! {
    static CARRIED: RefCell<CarriedRemoteError> = const { RefCell::new(CarriedRemoteError::Off) };
}

impl CarriedRemoteError {
    /// Runs `serialize` and returns its result with the first `RemoteError` it serialized.
    fn capture<T>(serialize: impl FnOnce() -> T) -> (T, Option<RemoteError>) {
        /// Stops looking, also if `serialize` panics.
        struct Stop;
        impl Drop for Stop {
            fn drop(&mut self) {
                CARRIED.with(|carried| {
                    if let Ok(mut carried) = carried.try_borrow_mut() {
                        *carried = CarriedRemoteError::Off;
                    }
                });
            }
        }
        CARRIED.with(|carried| *carried.borrow_mut() = CarriedRemoteError::Looking);
        let stop = Stop;
        let output = serialize();
        let found = CARRIED.with(|carried| {
            match std::mem::replace(&mut *carried.borrow_mut(), CarriedRemoteError::Off) {
                CarriedRemoteError::Found(error) => Some(error),
                _ => None,
            }
        });
        drop(stop);
        (output, found)
    }

    /// Called by every `RemoteError` being serialized.
    fn offer(error: &RemoteError) {
        CARRIED.with(|carried| {
            if let Ok(mut carried) = carried.try_borrow_mut()
                && matches!(*carried, CarriedRemoteError::Looking)
            {
                *carried = CarriedRemoteError::Found(error.clone());
            }
        });
    }
}

/// Serialized as `#[derive(Serialize)]` would (a struct `RemoteError` of `code`, `message`,
/// `data`), leaving a copy with [`CarriedRemoteError`] when one is looked for.
impl Serialize for RemoteError {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename = "RemoteError")]
        struct Fields<'a> {
            code: ErrorCode,
            message: &'a str,
            data: &'a Option<Payload>,
        }
        CarriedRemoteError::offer(self);
        Fields {
            code: self.code,
            message: &self.message,
            data: &self.data,
        }
        .serialize(serializer)
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for RemoteError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_roundtrips_in_both_encodings() {
        for encoding in [Encoding::Json, Encoding::Bincode] {
            let payload = Payload::encode(&(5u64, "x"), encoding).unwrap();
            assert_eq!(payload.encoding(), encoding);
            let back: (u64, String) = payload.decode().unwrap();
            assert_eq!(back, (5, "x".to_string()));
        }
    }

    #[test]
    fn bincode_payload_rejects_trailing_bytes() {
        let mut payload = Payload::encode(&1u8, Encoding::Bincode).unwrap();
        let mut bytes = payload.bytes.to_vec();
        bytes.push(0);
        payload.bytes = bytes.into();
        assert!(matches!(
            payload.decode::<u8>(),
            Err(PayloadError::TrailingBytes(1))
        ));
    }

    #[test]
    fn a_lying_length_is_refused_before_allocating() {
        // A string that claims u64::MAX / 2 bytes, in 10 bytes of input.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        bytes.push(b'x');
        let payload = Payload::from_bytes(Encoding::Bincode, bytes);
        assert!(payload.decode::<String>().is_err());
    }

    #[test]
    fn error_codes_use_their_wire_names() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::UnknownActor,
            ErrorCode::PayloadTooLarge,
            ErrorCode::ActorError,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
        let unknown: ErrorCode = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(unknown, ErrorCode::Unknown);
    }

    /// An actor's error enum in the documented shape, plus a variant that holds a `RemoteError`
    /// without being one.
    #[derive(Debug, PartialEq, thiserror::Error, Serialize, Deserialize)]
    enum ActorFailure {
        #[error("refused: {0}")]
        Refused(String),
        #[error("saving failed: {0}")]
        Saving(RemoteError),
        #[error(transparent)]
        Remote(#[from] RemoteError),
    }

    #[test]
    fn remote_errors_serialize_as_a_struct_of_code_message_and_data() {
        let error = RemoteError::new(ErrorCode::Conflict, "lost");
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            serde_json::json!({"code": "conflict", "message": "lost", "data": null})
        );
        let data = Payload::encode(&7u8, Encoding::Bincode).unwrap();
        let error = RemoteError {
            data: Some(data),
            ..error
        };
        let back: RemoteError = Payload::encode(&error, Encoding::Bincode)
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(back, error);
    }

    #[test]
    fn an_error_that_is_a_remote_error_keeps_its_code_message_and_data() {
        for encoding in [Encoding::Json, Encoding::Bincode] {
            for code in [
                ErrorCode::Conflict,
                ErrorCode::Unavailable,
                ErrorCode::Internal,
                ErrorCode::RateLimited,
            ] {
                let data = Payload::encode(&serde_json::json!({"retryAfterMs": 5}), encoding);
                let carried = RemoteError {
                    data: Some(data.unwrap()),
                    ..RemoteError::new(code, "from the framework")
                };
                let sent =
                    RemoteError::from_actor_error(&ActorFailure::Remote(carried.clone()), encoding);
                assert_eq!(sent, carried, "{encoding:?}");
                // `RemoteError` itself as the method's error type.
                assert_eq!(
                    RemoteError::from_actor_error(&carried, encoding),
                    carried,
                    "{encoding:?}"
                );
                // And the client rebuilds the same variant.
                assert_eq!(ActorFailure::from(sent), ActorFailure::Remote(carried));
            }
        }
    }

    #[test]
    fn data_a_json_frame_cannot_carry_is_left_out() {
        let carried = RemoteError {
            data: Some(Payload::encode(&5u64, Encoding::Bincode).unwrap()),
            ..RemoteError::new(ErrorCode::RateLimited, "slow down")
        };
        let error = ActorFailure::Remote(carried.clone());
        let sent = RemoteError::from_actor_error(&error, Encoding::Json);
        assert_eq!(sent, RemoteError::new(ErrorCode::RateLimited, "slow down"));
        // A bincode frame carries a payload of either encoding.
        assert_eq!(
            RemoteError::from_actor_error(&error, Encoding::Bincode),
            carried
        );
    }

    #[test]
    fn other_errors_are_actor_errors_with_the_value_as_data() {
        for encoding in [Encoding::Json, Encoding::Bincode] {
            let cases = [
                ActorFailure::Refused("no".into()),
                // Holds a `RemoteError` but is not one: `From` would not rebuild it.
                ActorFailure::Saving(RemoteError::new(ErrorCode::Conflict, "lost")),
                // An `actor_error` (say, of an actor this one called) keeps this actor's value
                // as data, so the client rebuilds this variant and not the other actor's error.
                ActorFailure::Remote(RemoteError {
                    data: Some(Payload::encode(&"Overflow", encoding).unwrap()),
                    ..RemoteError::new(ErrorCode::ActorError, "overflow")
                }),
            ];
            for error in cases {
                let sent = RemoteError::from_actor_error(&error, encoding);
                assert_eq!(sent.code, ErrorCode::ActorError, "{error:?}");
                assert_eq!(sent.message, error.to_string());
                let data: ActorFailure = sent.data.unwrap().decode().unwrap();
                assert_eq!(data, error);
            }
        }
    }
}
