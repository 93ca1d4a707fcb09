//! The binary envelopes every call and stream item sends (`invocation`, a successful `response`,
//! `streamData`, `streamBatch`), written and read by hand: byte for byte what bincode's serde encoding of them is (see the property tests
//! in `tests/codec_properties.rs`), without serde's per-field dispatch, and with the payload read
//! as a slice of the frame instead of a copy.
//!
//! The layout (bincode 2, standard configuration): integers as varints (below 251: one byte;
//! else a marker 251/252/253 and the value as a little-endian u16/u32/u64), strings and byte
//! arrays as a varint length and the bytes, `Option` as a 0/1 byte, enum variants and `Result`
//! (`Ok` = 0, `Err` = 1) as a varint index.
//!
//! Reading gives `None` for anything else (an error response, a malformed frame): the caller
//! then decodes with serde, which reports precisely what is wrong.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{Encoding, Invocation, Metadata, Payload, Response};
use crate::stream::PayloadBatch;

use super::InvocationRef;

/// The variant index of `invocation` in binary envelopes.
pub(super) const INVOCATION: u8 = 0;
/// The variant index of `response` in binary envelopes.
pub(super) const RESPONSE: u8 = 1;
/// The variant index of `streamData` in binary envelopes.
pub(super) const STREAM_DATA: u8 = 3;
/// The variant index of `streamBatch` in binary envelopes.
pub(super) const STREAM_BATCH: u8 = 9;

/// The variant index of an [`Encoding`] (its order of declaration).
fn encoding_index(encoding: Encoding) -> u64 {
    match encoding {
        Encoding::Json => 0,
        Encoding::Bincode => 1,
    }
}

fn varint_size(value: u64) -> usize {
    match value {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

fn put_varint(out: &mut impl BufMut, value: u64) {
    match value {
        0..=250 => out.put_u8(value as u8),
        251..=0xffff => {
            out.put_u8(251);
            out.put_u16_le(value as u16);
        }
        0x1_0000..=0xffff_ffff => {
            out.put_u8(252);
            out.put_u32_le(value as u32);
        }
        _ => {
            out.put_u8(253);
            out.put_u64_le(value);
        }
    }
}

/// Writes the varint `value` over the `varint_size(value)` bytes of `out` from `at`.
fn set_varint(out: &mut [u8], at: usize, value: u64) {
    let mut slot = &mut out[at..at + varint_size(value)];
    put_varint(&mut slot, value);
}

/// Makes room for a varint of `value` where one byte was reserved for it, at `at` (moving what
/// follows), and writes it there. Returns how many bytes were added.
#[cold]
fn fill_varint(out: &mut BytesMut, at: usize, value: u64) -> usize {
    let size = varint_size(value);
    if size > 1 {
        let end = out.len();
        out.resize(end + size - 1, 0);
        out.copy_within(at + 1..end, at + size);
    }
    set_varint(out, at, value);
    size - 1
}

fn bytes_size(bytes: &[u8]) -> usize {
    varint_size(bytes.len() as u64) + bytes.len()
}

fn put_bytes(out: &mut impl BufMut, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

fn payload_size(payload: &Payload) -> usize {
    1 + bytes_size(payload.as_bytes())
}

fn put_payload(out: &mut impl BufMut, payload: &Payload) {
    put_varint(out, encoding_index(payload.encoding()));
    put_bytes(out, payload.as_bytes());
}

/// Writes what [`size`](Self::size) measured into a buffer of exactly that size.
fn write_exact(size: usize, write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut out = Vec::with_capacity(size);
    write(&mut out);
    debug_assert_eq!(out.len(), size, "the measured size of a binary envelope");
    Bytes::from(out)
}

/// The binary `invocation` envelope with these parts.
pub(super) fn encode_invocation(invocation: &InvocationRef<'_>) -> Bytes {
    let metadata_size = varint_size(invocation.metadata.len() as u64)
        + invocation
            .metadata
            .iter()
            .map(|(key, value)| bytes_size(key.as_bytes()) + bytes_size(value.as_bytes()))
            .sum::<usize>();
    let size = 1
        + varint_size(invocation.call_id)
        + bytes_size(invocation.actor_id.as_bytes())
        + bytes_size(invocation.method.as_bytes())
        + payload_size(invocation.args)
        + metadata_size;
    write_exact(size, |out| {
        out.push(INVOCATION);
        put_varint(out, invocation.call_id);
        put_bytes(out, invocation.actor_id.as_bytes());
        put_bytes(out, invocation.method.as_bytes());
        put_payload(out, invocation.args);
        put_varint(out, invocation.metadata.len() as u64);
        for (key, value) in invocation.metadata {
            put_bytes(out, key.as_bytes());
            put_bytes(out, value.as_bytes());
        }
    })
}

/// The binary `response` envelope of a successful call; `None` for an error (serde writes
/// those).
pub(super) fn encode_response(response: &Response) -> Option<Bytes> {
    let Ok(result) = &response.outcome else {
        return None;
    };
    let call_id_size = response.call_id.map_or(1, |id| 1 + varint_size(id));
    let size = 1 + call_id_size + 1 + payload_size(result);
    Some(write_exact(size, |out| {
        out.push(RESPONSE);
        match response.call_id {
            Some(id) => {
                out.push(1);
                put_varint(out, id);
            }
            None => out.push(0),
        }
        out.push(0); // Ok
        put_payload(out, result);
    }))
}

/// The binary envelope of consecutive stream items numbered from `first_sequence`: a
/// `streamBatch`, or (`batch` false) the `streamData` of its one item.
pub(super) fn encode_stream_items(
    stream_id: &str,
    first_sequence: u64,
    items: &[Payload],
    timestamp: u64,
    batch: bool,
) -> Bytes {
    debug_assert!(batch || items.len() == 1, "a streamData carries one item");
    let size = 1
        + bytes_size(stream_id.as_bytes())
        + varint_size(first_sequence)
        + varint_size(items.len() as u64)
        + items.iter().map(payload_size).sum::<usize>()
        + varint_size(timestamp);
    let mut out = BytesMut::with_capacity(size);
    let mut writer = StreamItemsWriter::begin(&mut out, stream_id, first_sequence);
    for item in items {
        let copied = writer.item(&mut out, item.encoding(), |out| {
            out.extend_from_slice(item.as_bytes());
            Ok::<_, std::convert::Infallible>(())
        });
        let Ok(_) = copied;
    }
    writer.finish(&mut out, timestamp, batch, &mut []);
    out.freeze()
}

/// Where an item's payload is in the bytes that carry it (a binary envelope, or the JSON
/// payloads an envelope is made from): `len` bytes from `start`. Offsets fit a `u32`: stream
/// envelopes are kept below 4 GiB whatever the frame limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) len: u32,
}

/// Writes a binary `streamBatch` (or `streamData`) envelope into a buffer one item at a time,
/// each item's payload serialized in place: no payload is serialized on its own and then copied
/// into the envelope. The item count and each payload's length are written once known (one
/// byte is reserved for each, the size of a count or length below 251; a larger one moves what
/// follows it).
pub(crate) struct StreamItemsWriter {
    /// Where the envelope starts in the buffer.
    start: usize,
    /// Where its item count goes.
    count_at: usize,
    items: u64,
}

impl StreamItemsWriter {
    /// Starts the envelope of items from `first_sequence` of stream `stream_id` at the end of
    /// `out`.
    pub(crate) fn begin(out: &mut BytesMut, stream_id: &str, first_sequence: u64) -> Self {
        let start = out.len();
        out.reserve(3 + bytes_size(stream_id.as_bytes()) + varint_size(first_sequence));
        out.put_u8(STREAM_BATCH);
        put_bytes(out, stream_id.as_bytes());
        put_varint(out, first_sequence);
        let count_at = out.len();
        out.put_u8(0);
        StreamItemsWriter {
            start,
            count_at,
            items: 0,
        }
    }

    /// Appends an item: a payload in `encoding`, whose bytes `write` appends to `out`. Returns
    /// where they are, from the start of the envelope; if `write` fails, `out` is left as it was.
    pub(crate) fn item<E>(
        &mut self,
        out: &mut BytesMut,
        encoding: Encoding,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<Span, E> {
        let before = out.len();
        // (An encoding's index is one byte.)
        out.put_u8(encoding_index(encoding) as u8);
        let len_at = out.len();
        out.put_u8(0);
        if let Err(error) = write(out) {
            out.truncate(before);
            return Err(error);
        }
        let len = out.len() - len_at - 1;
        let added = match len {
            0..=250 => {
                out[len_at] = len as u8;
                0
            }
            _ => fill_varint(out, len_at, len as u64),
        };
        self.items += 1;
        Ok(Span {
            start: (len_at + 1 + added - self.start) as u32,
            len: len as u32,
        })
    }

    /// Takes the last item, at `span` as [`item`](Self::item) returned it, out of the envelope;
    /// where it began in the buffer, for the caller to truncate the buffer there.
    pub(crate) fn remove_last(&mut self, span: Span) -> usize {
        self.items -= 1;
        self.start + span.start as usize - 1 - varint_size(u64::from(span.len))
    }

    /// Ends the envelope with `timestamp`: a `streamBatch`, or (`batch` false, for one item) a
    /// `streamData`. `spans` are the items' spans, as [`item`](Self::item) returned them, and are
    /// moved with the items. The envelope is then the end of `out`, from where it began.
    pub(crate) fn finish(
        self,
        out: &mut BytesMut,
        timestamp: u64,
        batch: bool,
        spans: &mut [Span],
    ) {
        let shift = if batch {
            fill_varint(out, self.count_at, self.items) as i64
        } else {
            debug_assert_eq!(self.items, 1, "a streamData carries one item");
            // No count: the variant, and the item moves up over it.
            out[self.start] = STREAM_DATA;
            let end = out.len();
            out.copy_within(self.count_at + 1..end, self.count_at);
            out.truncate(end - 1);
            -1
        };
        for span in spans {
            span.start = (i64::from(span.start) + shift) as u32;
        }
        put_varint(out, timestamp);
    }
}

/// The items of a binary `streamData` or `streamBatch` (the whole of `frame`): the stream id,
/// the sequence number of the first item, and the items, left where they are in the frame.
pub(super) fn decode_stream_items(frame: &Bytes) -> Option<(&str, u64, PayloadBatch)> {
    let mut reader = Reader { rest: frame };
    let batch = match reader.u8()? {
        STREAM_DATA => false,
        STREAM_BATCH => true,
        _ => return None,
    };
    let stream_id = reader.str()?;
    let first_sequence = reader.varint()?;
    let count = match batch {
        true => usize::try_from(reader.varint()?).ok()?,
        false => 1,
    };
    let items_at = frame.len() - reader.rest.len();
    for _ in 0..count {
        reader.encoding()?;
        reader.bytes()?;
    }
    let _timestamp = reader.varint()?;
    reader.finished().then(|| {
        let items = PayloadBatch::in_frame(frame.clone(), items_at, count);
        (stream_id, first_sequence, items)
    })
}

/// The item at `*at` of a frame [`decode_stream_items`] accepted: its encoding, and where its
/// payload is. Moves `at` to the next item.
pub(crate) fn next_stream_item(frame: &[u8], at: &mut usize) -> Option<(Encoding, Span)> {
    // The usual item: a known encoding and a length below 251, one byte each.
    let start = *at + 2;
    if let Some(&[index @ 0..=1, len @ 0..=250]) = frame.get(*at..start)
        && start + len as usize <= frame.len()
    {
        *at = start + len as usize;
        let encoding = match index {
            0 => Encoding::Json,
            _ => Encoding::Bincode,
        };
        let span = Span {
            start: u32::try_from(start).ok()?,
            len: u32::from(len),
        };
        return Some((encoding, span));
    }
    let mut reader = Reader {
        rest: frame.get(*at..)?,
    };
    let encoding = reader.encoding()?;
    let len = reader.varint()?;
    let start = frame.len() - reader.rest.len();
    reader.take(usize::try_from(len).ok()?)?;
    *at = frame.len() - reader.rest.len();
    Some((
        encoding,
        Span {
            start: u32::try_from(start).ok()?,
            len: u32::try_from(len).ok()?,
        },
    ))
}

/// Reads a frame from the front.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if count > self.rest.len() {
            return None;
        }
        let (taken, rest) = self.rest.split_at(count);
        self.rest = rest;
        Some(taken)
    }

    fn varint(&mut self) -> Option<u64> {
        Some(match self.u8()? {
            small @ 0..=250 => u64::from(small),
            251 => u64::from(u16::from_le_bytes(self.take(2)?.try_into().ok()?)),
            252 => u64::from(u32::from_le_bytes(self.take(4)?.try_into().ok()?)),
            253 => u64::from_le_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        })
    }

    /// A `u32` varint (enum variant indexes): bincode refuses the 8-byte form for these.
    fn varint_u32(&mut self) -> Option<u64> {
        match self.rest.first()? {
            253.. => None,
            _ => self.varint(),
        }
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.take(len)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    fn encoding(&mut self) -> Option<Encoding> {
        match self.varint_u32()? {
            0 => Some(Encoding::Json),
            1 => Some(Encoding::Bincode),
            _ => None,
        }
    }

    /// A payload, sharing `frame`'s bytes (`self` reads `frame`).
    fn payload(&mut self, frame: &Bytes) -> Option<Payload> {
        let encoding = self.encoding()?;
        let bytes = self.bytes()?;
        Some(Payload::from_shared(encoding, frame.slice_ref(bytes)))
    }

    fn metadata(&mut self) -> Option<Metadata> {
        let mut metadata = Metadata::new();
        for _ in 0..self.varint()? {
            let key = self.str()?;
            let value = self.str()?;
            metadata.insert(key.to_owned(), value.to_owned());
        }
        Some(metadata)
    }

    fn finished(&self) -> bool {
        self.rest.is_empty()
    }
}

/// Reads a binary `invocation` (the whole of `frame`), its arguments sharing the frame's bytes.
pub(super) fn decode_invocation(frame: &Bytes) -> Option<Invocation> {
    let mut reader = Reader { rest: frame };
    if reader.u8()? != INVOCATION {
        return None;
    }
    let call_id = reader.varint()?;
    let actor_id = reader.str()?;
    let method = reader.str()?;
    let args = reader.payload(frame)?;
    let metadata = reader.metadata()?;
    reader.finished().then(|| Invocation {
        call_id,
        actor_id: actor_id.to_owned(),
        method: method.to_owned(),
        args,
        metadata,
    })
}

/// Reads a binary successful `response` (the whole of `frame`), its result sharing the frame's
/// bytes; `None` for an error response.
pub(super) fn decode_response(frame: &Bytes) -> Option<Response> {
    let mut reader = Reader { rest: frame };
    if reader.u8()? != RESPONSE {
        return None;
    }
    let call_id = match reader.u8()? {
        0 => None,
        1 => Some(reader.varint()?),
        _ => return None,
    };
    if reader.varint_u32()? != 0 {
        return None; // an error: read by serde
    }
    let result = reader.payload(frame)?;
    reader.finished().then(|| Response {
        call_id,
        outcome: Ok(result),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::{BinaryRef, decode_binary};
    use crate::protocol::{
        Envelope, ErrorCode, RemoteError, StreamBatch, StreamData, encode_bincode,
    };

    fn payload() -> impl Strategy<Value = Payload> {
        (
            prop::sample::select(vec![Encoding::Json, Encoding::Bincode]),
            prop::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(encoding, bytes)| Payload::from_bytes(encoding, bytes))
    }

    /// Integers around every varint boundary, and anywhere.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            prop::sample::select(vec![
                0,
                250,
                251,
                0xffff,
                0x1_0000,
                0xffff_ffff,
                0x1_0000_0000,
                u64::MAX
            ]),
            any::<u64>(),
        ]
    }

    fn invocation() -> impl Strategy<Value = Envelope> {
        (
            number(),
            "\\PC{0,12}",
            "\\PC{0,300}",
            payload(),
            prop::collection::btree_map("\\PC{0,8}", "\\PC{0,8}", 0..4),
        )
            .prop_map(|(call_id, actor_id, method, args, metadata)| {
                Envelope::Invocation(Invocation {
                    call_id,
                    actor_id,
                    method,
                    args,
                    metadata,
                })
            })
    }

    fn response() -> impl Strategy<Value = Envelope> {
        (
            prop::option::of(number()),
            prop_oneof![
                payload().prop_map(Ok),
                "\\PC{0,8}".prop_map(|message| Err(RemoteError::new(ErrorCode::Internal, message))),
            ],
        )
            .prop_map(|(call_id, outcome)| Envelope::Response(Response { call_id, outcome }))
    }

    fn stream_items() -> impl Strategy<Value = Envelope> {
        (
            "\\PC{0,40}",
            number(),
            prop::collection::vec(payload(), 0..5),
            number(),
        )
            .prop_map(|(stream_id, first_sequence, mut items, timestamp)| {
                if items.len() == 1 && timestamp % 2 == 0 {
                    Envelope::StreamData(StreamData {
                        stream_id: stream_id.into(),
                        sequence_number: first_sequence,
                        data: items.pop().unwrap(),
                        timestamp,
                    })
                } else {
                    Envelope::StreamBatch(StreamBatch {
                        stream_id: stream_id.into(),
                        first_sequence,
                        items,
                        timestamp,
                    })
                }
            })
    }

    fn by_hand(envelope: &Envelope) -> Option<Bytes> {
        match envelope {
            Envelope::StreamData(item) => Some(encode_stream_items(
                &item.stream_id,
                item.sequence_number,
                std::slice::from_ref(&item.data),
                item.timestamp,
                false,
            )),
            Envelope::StreamBatch(batch) => Some(encode_stream_items(
                &batch.stream_id,
                batch.first_sequence,
                &batch.items,
                batch.timestamp,
                true,
            )),
            Envelope::Invocation(invocation) => {
                Some(encode_invocation(&InvocationRef::from(invocation)))
            }
            Envelope::Response(response) => encode_response(response),
            _ => None,
        }
    }

    fn read_by_hand(bytes: &Bytes) -> Option<Envelope> {
        match bytes.first() {
            Some(&STREAM_DATA | &STREAM_BATCH) => {
                let (stream_id, first_sequence, items) = decode_stream_items(bytes)?;
                let mut items: Vec<Payload> = items.collect();
                Some(if bytes[0] == STREAM_DATA {
                    Envelope::StreamData(StreamData {
                        stream_id: stream_id.into(),
                        sequence_number: first_sequence,
                        data: items.pop().unwrap(),
                        timestamp: read_timestamp(bytes),
                    })
                } else {
                    Envelope::StreamBatch(StreamBatch {
                        stream_id: stream_id.into(),
                        first_sequence,
                        items,
                        timestamp: read_timestamp(bytes),
                    })
                })
            }
            Some(&INVOCATION) => decode_invocation(bytes).map(Envelope::Invocation),
            Some(&RESPONSE) => decode_response(bytes).map(Envelope::Response),
            _ => None,
        }
    }

    /// The timestamp of a stream envelope serde can read (the hand-written reader skips it).
    fn read_timestamp(bytes: &Bytes) -> u64 {
        match decode_binary(bytes) {
            Ok(Envelope::StreamData(item)) => item.timestamp,
            Ok(Envelope::StreamBatch(batch)) => batch.timestamp,
            _ => u64::MAX,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn writes_what_serde_writes_and_reads_it_back(envelope in prop_oneof![invocation(), response(), stream_items()]) {
            let serde = encode_bincode(&BinaryRef::from(&envelope)).unwrap();
            if let Some(hand) = by_hand(&envelope) {
                prop_assert_eq!(&hand[..], &serde[..]);
            }
            match read_by_hand(&serde) {
                Some(read) => prop_assert_eq!(read, envelope),
                // Only error responses are left to serde.
                None => {
                    let left_to_serde = matches!(&envelope, Envelope::Response(response) if response.outcome.is_err());
                    prop_assert!(left_to_serde, "only error responses are left to serde");
                }
            }
        }

        /// Whatever the hand-written reader accepts, serde reads as the same envelope.
        #[test]
        fn reads_nothing_serde_would_read_otherwise(
            envelope in prop_oneof![invocation(), response(), stream_items()],
            cut in any::<prop::sample::Index>(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        ) {
            let mut bytes = encode_bincode(&BinaryRef::from(&envelope)).unwrap().to_vec();
            for (at, value) in flips {
                let at = at.index(bytes.len());
                bytes[at] = value;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            let bytes = Bytes::from(bytes);
            if let Some(read) = read_by_hand(&bytes) {
                prop_assert_eq!(decode_binary(&bytes).ok(), Some(read));
            }
        }
    }
}
