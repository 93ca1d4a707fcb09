//! Turning [`Envelope`]s into frames and back, in either [`Encoding`].
//!
//! * JSON: one object per frame with a `"type"` field and camelCase fields, exactly as written in
//!   `docs/PROTOCOL.md`. Unknown fields are ignored (so newer peers can add some).
//! * Binary: the bincode 2 (standard configuration) encoding of the envelope: a varint variant
//!   index (`invocation` = 0 … `cancel` = 7, in the order of [`Envelope`]), then the fields of that
//!   variant in declaration order.
//!
//! Decoding never panics on hostile input; a frame that cannot be read gives a [`DecodeError`]
//! that carries the `callId` whenever it could still be read, so the peer can be answered.

use std::borrow::Cow;
use std::sync::Arc;

mod binary;

pub(crate) use binary::{Span, StreamItemsWriter, next_stream_item};

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::protocol::{
    Cancel, Encoding, Envelope, Invocation, Metadata, Payload, RemoteError, Response, StreamAck,
    StreamBatch, StreamData, StreamEnd, StreamError, StreamResume, StreamStart, decode_bincode,
    encode_bincode,
};
use crate::quoted;
use crate::stream::PayloadBatch;

/// One transport message: the bytes of one envelope and how they are encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The encoding of `data` (on WebSocket: text → JSON, binary → bincode).
    pub encoding: Encoding,
    /// The encoded envelope.
    pub data: Bytes,
}

impl Frame {
    /// A frame that carries no envelope, only the news that its sender is still there: the
    /// transports send it as their keepalive (a WebSocket ping, an empty TCP frame) and skip it
    /// when it arrives.
    pub fn keepalive() -> Self {
        Frame {
            encoding: Encoding::Bincode,
            data: Bytes::new(),
        }
    }

    /// Whether this is a [`keepalive`](Self::keepalive) frame.
    pub fn is_keepalive(&self) -> bool {
        self.encoding == Encoding::Bincode && self.data.is_empty()
    }
}

/// An envelope could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// JSON encoding failed (for example a bincode payload inside a JSON frame).
    #[error("cannot encode JSON frame: {0}")]
    Json(#[from] serde_json::Error),
    /// bincode encoding failed.
    #[error("cannot encode binary frame: {0}")]
    Bincode(#[from] bincode::error::EncodeError),
}

/// A frame could not be read as an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The `callId` of the frame, when it could be read despite the error.
    pub call_id: Option<u64>,
    /// What was wrong with the frame.
    pub message: String,
}

impl DecodeError {
    fn new(call_id: Option<u64>, message: impl Into<String>) -> Self {
        DecodeError {
            call_id,
            message: message.into(),
        }
    }

    /// The `bad_request` error to send back to the peer.
    pub fn to_remote_error(&self) -> RemoteError {
        RemoteError::bad_request(self.message.clone())
    }
}

/// Encodes `envelope` as one frame in `encoding`.
pub fn encode(envelope: &Envelope, encoding: Encoding) -> Result<Frame, EncodeError> {
    let data = match (encoding, envelope) {
        (Encoding::Json, _) => {
            Bytes::from(serde_json::to_vec(&JsonFrame::from_envelope(envelope)?)?)
        }
        (Encoding::Bincode, Envelope::Invocation(invocation)) => {
            binary::encode_invocation(&InvocationRef::from(invocation))
        }
        (Encoding::Bincode, Envelope::Response(response)) => {
            match binary::encode_response(response) {
                Some(data) => data,
                None => encode_bincode(&BinaryRef::from(envelope))?,
            }
        }
        (Encoding::Bincode, Envelope::StreamData(item)) => binary::encode_stream_items(
            &item.stream_id,
            item.sequence_number,
            std::slice::from_ref(&item.data),
            item.timestamp,
            false,
        ),
        (Encoding::Bincode, Envelope::StreamBatch(batch)) => binary::encode_stream_items(
            &batch.stream_id,
            batch.first_sequence,
            &batch.items,
            batch.timestamp,
            true,
        ),
        (Encoding::Bincode, _) => encode_bincode(&BinaryRef::from(envelope))?,
    };
    Ok(Frame { encoding, data })
}

/// The parts of an `invocation` envelope, borrowed: what a client encodes for each call without
/// first copying the actor id, method and metadata into an [`Invocation`].
pub(crate) struct InvocationRef<'a> {
    pub(crate) call_id: u64,
    pub(crate) actor_id: &'a str,
    pub(crate) method: &'a str,
    pub(crate) args: &'a Payload,
    pub(crate) metadata: &'a Metadata,
}

impl<'a> From<&'a Invocation> for InvocationRef<'a> {
    fn from(invocation: &'a Invocation) -> Self {
        InvocationRef {
            call_id: invocation.call_id,
            actor_id: &invocation.actor_id,
            method: &invocation.method,
            args: &invocation.args,
            metadata: &invocation.metadata,
        }
    }
}

/// Encodes an `invocation` envelope from its parts, exactly as [`encode`] encodes the
/// [`Invocation`] with those fields.
pub(crate) fn encode_invocation(
    invocation: &InvocationRef<'_>,
    encoding: Encoding,
) -> Result<Frame, EncodeError> {
    match encoding {
        Encoding::Bincode => Ok(Frame {
            encoding,
            data: binary::encode_invocation(invocation),
        }),
        // (JSON frames are for debugging: no need to spare the copies.)
        Encoding::Json => {
            let envelope = Envelope::Invocation(Invocation {
                call_id: invocation.call_id,
                actor_id: invocation.actor_id.to_owned(),
                method: invocation.method.to_owned(),
                args: invocation.args.clone(),
                metadata: invocation.metadata.clone(),
            });
            encode(&envelope, encoding)
        }
    }
}

/// The envelope of consecutive stream items numbered from `first_sequence`, sent at
/// `timestamp`: a `streamData` for one item, else a `streamBatch`.
pub(crate) fn encode_stream_items(
    stream_id: &Arc<str>,
    first_sequence: u64,
    items: &[Payload],
    timestamp: u64,
    encoding: Encoding,
) -> Frame {
    if encoding == Encoding::Bincode {
        return Frame {
            encoding,
            data: binary::encode_stream_items(
                stream_id,
                first_sequence,
                items,
                timestamp,
                items.len() != 1,
            ),
        };
    }
    let envelope = match items {
        [item] => Envelope::StreamData(StreamData {
            stream_id: stream_id.clone(),
            sequence_number: first_sequence,
            data: item.clone(),
            timestamp,
        }),
        _ => Envelope::StreamBatch(StreamBatch {
            stream_id: stream_id.clone(),
            first_sequence,
            items: items.to_vec(),
            timestamp,
        }),
    };
    encode_or_internal(&envelope, encoding)
}

/// Encodes `envelope`; if that fails (a bug), an `internal` error response in its place (with the
/// envelope's `callId` when it is a response), so a server always has something to send.
pub fn encode_or_internal(envelope: &Envelope, encoding: Encoding) -> Frame {
    match encode(envelope, encoding) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::error!(%error, kind = envelope.kind(), "cannot encode an envelope");
            let call_id = match envelope {
                Envelope::Response(response) => response.call_id,
                _ => None,
            };
            let fallback = Envelope::Response(Response {
                call_id,
                outcome: Err(RemoteError::internal(format!(
                    "cannot encode the answer: {error}"
                ))),
            });
            encode(&fallback, encoding).expect("an error response without payloads always encodes")
        }
    }
}

/// Decodes one frame. A binary `invocation` or successful `response` (what a server and a client
/// read most of) is read by hand, its payload sharing the frame's bytes instead of a copy.
pub fn decode(frame: &Frame) -> Result<Envelope, DecodeError> {
    if frame.encoding == Encoding::Bincode {
        let decoded = match frame.data.first() {
            Some(&binary::INVOCATION) => {
                binary::decode_invocation(&frame.data).map(Envelope::Invocation)
            }
            Some(&binary::RESPONSE) => binary::decode_response(&frame.data).map(Envelope::Response),
            _ => None,
        };
        if let Some(envelope) = decoded {
            return Ok(envelope);
        }
    }
    decode_bytes(&frame.data, frame.encoding)
}

/// Decodes one envelope from `bytes` in `encoding`.
pub fn decode_bytes(bytes: &[u8], encoding: Encoding) -> Result<Envelope, DecodeError> {
    match encoding {
        Encoding::Json => decode_json(bytes),
        Encoding::Bincode => decode_binary(bytes),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON

/// The flat JSON shape of every envelope: `type` plus the fields of that type.
#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct JsonFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_id: Option<u64>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    actor_id: Option<Cow<'a, str>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    method: Option<Cow<'a, str>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    args: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Cow<'a, Metadata>>,
    #[serde(
        borrow,
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<JsonError<'a>>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    stream_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence_number: Option<u64>,
    #[serde(
        borrow,
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_sequence: Option<u64>,
    #[serde(borrow, skip_serializing_if = "Option::is_none")]
    items: Option<Vec<&'a RawValue>>,
}

/// The JSON form of [`RemoteError`]: `data` is omitted when there is none.
#[derive(Serialize, Deserialize)]
struct JsonError<'a> {
    code: crate::protocol::ErrorCode,
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(
        borrow,
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    data: Option<&'a RawValue>,
}

/// A field that is present is `Some`, even when its value is `null` (`"result": null` is the
/// result of a method returning `()`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

impl<'a> JsonError<'a> {
    fn from_remote(error: &'a RemoteError) -> Result<Self, serde_json::Error> {
        Ok(JsonError {
            code: error.code,
            message: Cow::Borrowed(&error.message),
            data: error.data.as_ref().map(Payload::raw_json).transpose()?,
        })
    }

    fn into_remote(self) -> RemoteError {
        RemoteError {
            code: self.code,
            message: self.message.into_owned(),
            data: self.data.map(Payload::from_raw_json),
        }
    }
}

impl<'a> JsonFrame<'a> {
    fn with_kind(kind: &'static str) -> Self {
        JsonFrame {
            kind: Cow::Borrowed(kind),
            ..JsonFrame::default()
        }
    }

    fn from_envelope(envelope: &'a Envelope) -> Result<Self, serde_json::Error> {
        let mut frame = JsonFrame::with_kind(envelope.kind());
        match envelope {
            Envelope::Invocation(inv) => {
                frame.call_id = Some(inv.call_id);
                frame.actor_id = Some(Cow::Borrowed(&inv.actor_id));
                frame.method = Some(Cow::Borrowed(&inv.method));
                frame.args = Some(inv.args.raw_json()?);
                frame.metadata = Some(Cow::Borrowed(&inv.metadata));
            }
            Envelope::Response(response) => {
                frame.call_id = response.call_id;
                match &response.outcome {
                    Ok(result) => frame.result = Some(result.raw_json()?),
                    Err(error) => frame.error = Some(JsonError::from_remote(error)?),
                }
            }
            Envelope::StreamStart(start) => {
                frame.call_id = Some(start.call_id);
                frame.stream_id = Some(Cow::Borrowed(&start.stream_id));
            }
            Envelope::StreamData(item) => {
                frame.stream_id = Some(Cow::Borrowed(&item.stream_id));
                frame.sequence_number = Some(item.sequence_number);
                frame.data = Some(item.data.raw_json()?);
                frame.timestamp = Some(item.timestamp);
            }
            Envelope::StreamEnd(end) => frame.stream_id = Some(Cow::Borrowed(&end.stream_id)),
            Envelope::StreamError(failure) => {
                frame.stream_id = Some(Cow::Borrowed(&failure.stream_id));
                frame.error = Some(JsonError::from_remote(&failure.error)?);
            }
            Envelope::StreamResume(resume) => {
                frame.stream_id = Some(Cow::Borrowed(&resume.stream_id));
                frame.last_sequence = Some(resume.last_sequence);
                frame.actor_id = Some(Cow::Borrowed(&resume.actor_id));
                frame.method = Some(Cow::Borrowed(&resume.method));
                frame.args = Some(resume.args.raw_json()?);
                frame.call_id = resume.call_id;
                if !resume.metadata.is_empty() {
                    frame.metadata = Some(Cow::Borrowed(&resume.metadata));
                }
            }
            Envelope::Cancel(cancel) => frame.call_id = Some(cancel.call_id),
            Envelope::StreamAck(ack) => {
                frame.stream_id = Some(Cow::Borrowed(&ack.stream_id));
                frame.sequence_number = Some(ack.sequence_number);
            }
            Envelope::StreamBatch(batch) => {
                frame.stream_id = Some(Cow::Borrowed(&batch.stream_id));
                frame.sequence_number = Some(batch.first_sequence);
                frame.items = Some(
                    batch
                        .items
                        .iter()
                        .map(Payload::raw_json)
                        .collect::<Result<_, _>>()?,
                );
                frame.timestamp = Some(batch.timestamp);
            }
        }
        Ok(frame)
    }

    fn into_envelope(self) -> Result<Envelope, DecodeError> {
        let call_id = self.call_id;
        let kind = self.kind.clone();
        let missing = |field: &str| {
            DecodeError::new(
                call_id,
                format!(
                    "malformed '{}' envelope: missing field '{field}'",
                    quoted::name(&kind)
                ),
            )
        };
        // Most stream envelopes need these two.
        let stream_id = self.stream_id.map(Cow::into_owned);
        let sequence_number = self.sequence_number;
        let args = |raw: Option<&RawValue>| match raw {
            None => Ok(Payload::empty_args(Encoding::Json)),
            Some(raw) if raw.get().starts_with('{') => Ok(Payload::from_raw_json(raw)),
            Some(_) => Err(DecodeError::new(
                call_id,
                format!(
                    "malformed '{kind}' envelope: 'args' must be an object of parameter names to values"
                ),
            )),
        };
        Ok(match &*self.kind {
            "invocation" => Envelope::Invocation(Invocation {
                call_id: call_id.ok_or_else(|| missing("callId"))?,
                actor_id: self
                    .actor_id
                    .ok_or_else(|| missing("actorId"))?
                    .into_owned(),
                method: self.method.ok_or_else(|| missing("method"))?.into_owned(),
                args: args(self.args)?,
                metadata: self.metadata.map(Cow::into_owned).unwrap_or_default(),
            }),
            "response" => {
                let outcome = match (self.result, self.error) {
                    (Some(result), None) => Ok(Payload::from_raw_json(result)),
                    (None, Some(error)) => Err(error.into_remote()),
                    _ => {
                        return Err(DecodeError::new(
                            call_id,
                            "malformed 'response' envelope: exactly one of 'result' and 'error' is required",
                        ));
                    }
                };
                Envelope::Response(Response { call_id, outcome })
            }
            "streamStart" => Envelope::StreamStart(StreamStart {
                call_id: call_id.ok_or_else(|| missing("callId"))?,
                stream_id: stream_id.ok_or_else(|| missing("streamId"))?,
            }),
            "streamData" => Envelope::StreamData(StreamData {
                stream_id: stream_id.ok_or_else(|| missing("streamId"))?.into(),
                sequence_number: sequence_number.ok_or_else(|| missing("sequenceNumber"))?,
                data: Payload::from_raw_json(self.data.ok_or_else(|| missing("data"))?),
                timestamp: self.timestamp.unwrap_or(0),
            }),
            "streamBatch" => Envelope::StreamBatch(StreamBatch {
                stream_id: stream_id.ok_or_else(|| missing("streamId"))?.into(),
                first_sequence: sequence_number.ok_or_else(|| missing("sequenceNumber"))?,
                items: self
                    .items
                    .ok_or_else(|| missing("items"))?
                    .into_iter()
                    .map(Payload::from_raw_json)
                    .collect(),
                timestamp: self.timestamp.unwrap_or(0),
            }),
            "streamEnd" => Envelope::StreamEnd(StreamEnd {
                stream_id: stream_id.ok_or_else(|| missing("streamId"))?,
            }),
            "streamError" => Envelope::StreamError(StreamError {
                stream_id: stream_id.ok_or_else(|| missing("streamId"))?,
                error: self.error.ok_or_else(|| missing("error"))?.into_remote(),
            }),
            "streamResume" => Envelope::StreamResume(StreamResume {
                stream_id: stream_id.ok_or_else(|| missing("streamId"))?,
                last_sequence: self.last_sequence.ok_or_else(|| missing("lastSequence"))?,
                actor_id: self
                    .actor_id
                    .ok_or_else(|| missing("actorId"))?
                    .into_owned(),
                method: self.method.ok_or_else(|| missing("method"))?.into_owned(),
                args: args(self.args)?,
                call_id,
                metadata: self.metadata.map(Cow::into_owned).unwrap_or_default(),
            }),
            "streamAck" => Envelope::StreamAck(StreamAck {
                stream_id: stream_id.ok_or_else(|| missing("streamId"))?,
                sequence_number: sequence_number.ok_or_else(|| missing("sequenceNumber"))?,
            }),
            "cancel" => Envelope::Cancel(Cancel {
                call_id: call_id.ok_or_else(|| missing("callId"))?,
            }),
            other => {
                return Err(DecodeError::new(
                    call_id,
                    format!("unknown envelope type '{}'", quoted::name(other)),
                ));
            }
        })
    }
}

/// Just the `callId` of a frame, to answer a frame that is otherwise malformed.
#[derive(Deserialize)]
struct CallIdOnly {
    #[serde(rename = "callId")]
    call_id: Option<u64>,
}

fn decode_json(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    match serde_json::from_slice::<JsonFrame<'_>>(bytes) {
        Ok(frame) => frame.into_envelope(),
        Err(error) => {
            let call_id = serde_json::from_slice::<CallIdOnly>(bytes)
                .ok()
                .and_then(|only| only.call_id);
            Err(DecodeError::new(
                call_id,
                format!("malformed JSON envelope: {error}"),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Binary

macro_rules! binary_envelope {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// The binary layout of [`Envelope`], borrowed for encoding.
        #[derive(Serialize)]
        enum BinaryRef<'a> { $($variant(&'a $ty)),* }

        /// The binary layout of [`Envelope`], owned for decoding.
        #[derive(Deserialize)]
        enum BinaryOwned { $($variant($ty)),* }

        impl<'a> From<&'a Envelope> for BinaryRef<'a> {
            fn from(envelope: &'a Envelope) -> Self {
                match envelope { $(Envelope::$variant(inner) => BinaryRef::$variant(inner)),* }
            }
        }

        impl From<BinaryOwned> for Envelope {
            fn from(envelope: BinaryOwned) -> Self {
                match envelope { $(BinaryOwned::$variant(inner) => Envelope::$variant(inner)),* }
            }
        }
    };
}

binary_envelope! {
    Invocation(Invocation),
    Response(Response),
    StreamStart(StreamStart),
    StreamData(StreamData),
    StreamEnd(StreamEnd),
    StreamError(StreamError),
    StreamResume(StreamResume),
    Cancel(Cancel),
    StreamAck(StreamAck),
    StreamBatch(StreamBatch),
}

/// An envelope as a client reads it: stream items (what a client reads most of) without
/// copying them out of their frame, or any other envelope.
pub(crate) enum Incoming<'a> {
    /// A `streamData` or a `streamBatch`: the stream id (borrowed from a binary frame), the
    /// sequence number of the first item, and the items (left in a binary frame).
    StreamItems {
        stream_id: Cow<'a, str>,
        first_sequence: u64,
        items: PayloadBatch,
    },
    /// Any other envelope.
    Envelope(Envelope),
}

/// The value bincode read from `bytes`, if it read all of them; else the error, with the
/// `callId` from `call_id`.
fn whole_envelope<T>(
    decoded: Result<(T, usize), bincode::error::DecodeError>,
    bytes: &[u8],
    call_id: impl FnOnce() -> Option<u64>,
) -> Result<T, DecodeError> {
    let message = match decoded {
        Ok((value, read)) if read == bytes.len() => return Ok(value),
        Ok((_, read)) => format!(
            "malformed binary envelope: {} trailing bytes",
            bytes.len() - read
        ),
        Err(error) => format!("malformed binary envelope: {error}"),
    };
    Err(DecodeError::new(call_id(), message))
}

/// Decodes one frame as a client reads it (see [`Incoming`]).
pub(crate) fn decode_incoming(frame: &Frame) -> Result<Incoming<'_>, DecodeError> {
    if frame.encoding == Encoding::Bincode
        && let Some((stream_id, first_sequence, items)) = binary::decode_stream_items(&frame.data)
    {
        return Ok(Incoming::StreamItems {
            stream_id: Cow::Borrowed(stream_id),
            first_sequence,
            items,
        });
    }
    Ok(match decode(frame)? {
        Envelope::StreamData(item) => Incoming::StreamItems {
            stream_id: Cow::Owned(item.stream_id.to_string()),
            first_sequence: item.sequence_number,
            items: PayloadBatch::from(vec![item.data]),
        },
        Envelope::StreamBatch(batch) => Incoming::StreamItems {
            stream_id: Cow::Owned(batch.stream_id.to_string()),
            first_sequence: batch.first_sequence,
            items: PayloadBatch::from(batch.items),
        },
        envelope => Incoming::Envelope(envelope),
    })
}

fn decode_binary(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    whole_envelope(decode_bincode::<BinaryOwned>(bytes), bytes, || {
        binary_call_id(bytes)
    })
    .map(Envelope::from)
}

/// The `callId` at the start of a binary envelope that carries one.
fn binary_call_id(bytes: &[u8]) -> Option<u64> {
    let (variant, _): (u32, usize) = decode_bincode(bytes).ok()?;
    match variant {
        // invocation, streamStart, cancel: the callId follows the variant index.
        0 | 2 | 7 => decode_bincode::<(u32, u64)>(bytes)
            .ok()
            .map(|((_, id), _)| id),
        // response: an optional callId.
        1 => decode_bincode::<(u32, Option<u64>)>(bytes)
            .ok()
            .and_then(|((_, id), _)| id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    fn json(text: &str) -> Result<Envelope, DecodeError> {
        decode_bytes(text.as_bytes(), Encoding::Json)
    }

    #[test]
    fn reads_the_protocol_examples() {
        let inv = json(r#"{"type":"invocation","callId":7,"actorId":"counter","method":"increment","args":{"by":5},"metadata":{"authorization":"Bearer x"}}"#).unwrap();
        let Envelope::Invocation(inv) = inv else {
            panic!("not an invocation")
        };
        assert_eq!(inv.call_id, 7);
        assert_eq!(inv.args.as_json_text(), Some(r#"{"by":5}"#));
        assert_eq!(inv.metadata["authorization"], "Bearer x");

        let ok = json(r#"{"type":"response","callId":7,"result":12}"#).unwrap();
        assert_eq!(
            ok,
            Envelope::Response(Response {
                call_id: Some(7),
                outcome: Ok(Payload::from_json_text("12").unwrap()),
            })
        );
        let err = json(r#"{"type":"response","callId":7,"error":{"code":"unknown_method","message":"counter has no method 'incremnt'"}}"#).unwrap();
        let Envelope::Response(Response {
            outcome: Err(error),
            ..
        }) = err
        else {
            panic!("not an error response")
        };
        assert_eq!(error.code, ErrorCode::UnknownMethod);
        assert_eq!(error.data, None);
    }

    #[test]
    fn args_must_be_an_object() {
        let err = json(r#"{"type":"invocation","callId":5,"actorId":"a","method":"m","args":[1]}"#)
            .unwrap_err();
        assert_eq!(err.call_id, Some(5));
        assert!(
            err.message.contains("'args' must be an object"),
            "{}",
            err.message
        );
    }

    #[test]
    fn null_result_is_a_result() {
        let env = json(r#"{"type":"response","callId":1,"result":null}"#).unwrap();
        let Envelope::Response(response) = env else {
            panic!()
        };
        assert_eq!(response.outcome.unwrap().as_json_text(), Some("null"));
    }

    #[test]
    fn missing_args_mean_no_arguments() {
        let Envelope::Invocation(inv) =
            json(r#"{"type":"invocation","callId":1,"actorId":"a","method":"get"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(inv.args.as_json_text(), Some("{}"));
    }

    #[test]
    fn writes_json_as_documented() {
        let frame = encode(
            &Envelope::Response(Response {
                call_id: Some(3),
                outcome: Err(RemoteError::bad_request("nope")),
            }),
            Encoding::Json,
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&frame.data).unwrap(),
            r#"{"type":"response","callId":3,"error":{"code":"bad_request","message":"nope"}}"#
        );
    }

    #[test]
    fn malformed_json_reports_the_call_id_when_readable() {
        let err = json(r#"{"type":"invocation","callId":9,"actorId":5}"#).unwrap_err();
        assert_eq!(err.call_id, Some(9));
        let err = json(r#"{"type":"invocation","callId":9}"#).unwrap_err();
        assert_eq!(err.call_id, Some(9));
        assert!(err.message.contains("actorId"), "{}", err.message);
        let err = json("{not json").unwrap_err();
        assert_eq!(err.call_id, None);
        let err = json(r#"{"type":"party","callId":4}"#).unwrap_err();
        assert_eq!(err.call_id, Some(4));
        assert!(err.message.contains("party"));
    }

    #[test]
    fn binary_errors_report_the_call_id_when_readable() {
        let inv = Envelope::Invocation(Invocation {
            call_id: 300,
            actor_id: "a".into(),
            method: "m".into(),
            args: Payload::empty_args(Encoding::Bincode),
            metadata: Metadata::new(),
        });
        let frame = encode(&inv, Encoding::Bincode).unwrap();
        let truncated = &frame.data[..frame.data.len() - 1];
        let err = decode_bytes(truncated, Encoding::Bincode).unwrap_err();
        assert_eq!(err.call_id, Some(300));
        let err = decode_bytes(&[0xff, 0xff, 0xff], Encoding::Bincode).unwrap_err();
        assert_eq!(err.call_id, None);
    }
    #[test]
    fn a_client_reads_stream_items_without_copying_them() {
        let stream_id: std::sync::Arc<str> = "5f0c8d8e-0e4c-4b7a-9d1e-2f3a4b5c6d7e".into();
        for encoding in [Encoding::Bincode, Encoding::Json] {
            let item = |n: u8| Payload::encode(&vec![n; 64], encoding).unwrap();
            let single = Envelope::StreamData(StreamData {
                stream_id: stream_id.clone(),
                sequence_number: 300,
                data: item(1),
                timestamp: 1_732_370_000_123,
            });
            let batch = Envelope::StreamBatch(StreamBatch {
                stream_id: stream_id.clone(),
                first_sequence: 300,
                items: vec![item(1), item(2), item(3)],
                timestamp: 1_732_370_000_123,
            });
            for (envelope, expected) in [
                (single, vec![item(1)]),
                (batch, vec![item(1), item(2), item(3)]),
            ] {
                let frame = encode(&envelope, encoding).unwrap();
                let Ok(Incoming::StreamItems {
                    stream_id: read_id,
                    first_sequence,
                    items,
                }) = decode_incoming(&frame)
                else {
                    panic!("not read as stream items");
                };
                let items: Vec<Payload> = items.collect();
                assert_eq!(
                    (&*read_id, first_sequence, &items),
                    (&*stream_id, 300, &expected)
                );
                if encoding == Encoding::Bincode {
                    let frame_bytes = frame.data.as_ptr_range();
                    for item in &items {
                        assert!(
                            frame_bytes.contains(&item.as_bytes().as_ptr()),
                            "a slice of the frame"
                        );
                    }
                    // Truncated or padded frames are refused.
                    for bytes in [
                        &frame.data[..frame.data.len() - 1],
                        &[&frame.data[..], &[0]].concat(),
                    ] {
                        let bad = Frame {
                            encoding,
                            data: Bytes::copy_from_slice(bytes),
                        };
                        assert!(decode_incoming(&bad).is_err());
                    }
                }
            }
        }
        let cancel = encode(&Envelope::Cancel(Cancel { call_id: 3 }), Encoding::Bincode).unwrap();
        assert!(matches!(
            decode_incoming(&cancel),
            Ok(Incoming::Envelope(Envelope::Cancel(Cancel { call_id: 3 })))
        ));
    }

    #[test]
    fn stream_batches_in_json_are_as_documented() {
        let text = r#"{"type":"streamBatch","streamId":"s-1","sequenceNumber":4,"timestamp":7,"items":[5,{"v":6}]}"#;
        let Ok(Envelope::StreamBatch(batch)) = json(text) else {
            panic!("not a streamBatch");
        };
        assert_eq!(
            (&*batch.stream_id, batch.first_sequence, batch.timestamp),
            ("s-1", 4, 7)
        );
        let items: Vec<&str> = batch
            .items
            .iter()
            .map(|item| item.as_json_text().unwrap())
            .collect();
        assert_eq!(items, ["5", r#"{"v":6}"#]);
        let written = encode(&Envelope::StreamBatch(batch), Encoding::Json).unwrap();
        assert_eq!(std::str::from_utf8(&written.data).unwrap(), text);
    }
}
