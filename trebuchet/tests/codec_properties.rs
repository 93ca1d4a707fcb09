//! Property tests of the codecs: every envelope survives a round trip in both encodings, and no
//! input, however broken, makes decoding panic.

use proptest::prelude::*;
use trebuchet::codec::{self, Frame};
use trebuchet::protocol::{
    Cancel, Envelope, Invocation, Response, StreamAck, StreamBatch, StreamData, StreamEnd,
    StreamError, StreamResume, StreamStart,
};
use trebuchet::{Encoding, ErrorCode, Metadata, Payload, RemoteError};

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

fn payload(encoding: Encoding) -> BoxedStrategy<Payload> {
    match encoding {
        Encoding::Json => json_value()
            .prop_map(|value| Payload::encode(&value, Encoding::Json).unwrap())
            .boxed(),
        // A binary frame can carry payloads of either encoding.
        Encoding::Bincode => prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64).prop_map(|bytes| Payload::encode(
                &bytes,
                Encoding::Bincode
            )
            .unwrap()),
            json_value().prop_map(|value| Payload::encode(&value, Encoding::Json).unwrap()),
        ]
        .boxed(),
    }
}

/// Arguments are always an object in JSON.
fn args(encoding: Encoding) -> BoxedStrategy<Payload> {
    match encoding {
        Encoding::Json => prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..4)
            .prop_map(|map| Payload::encode(&map, Encoding::Json).unwrap())
            .boxed(),
        Encoding::Bincode => payload(encoding),
    }
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::BadRequest,
        ErrorCode::UnknownActor,
        ErrorCode::UnknownMethod,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Timeout,
        ErrorCode::Conflict,
        ErrorCode::Unavailable,
        ErrorCode::ActorError,
        ErrorCode::Internal,
    ])
}

fn remote_error(encoding: Encoding) -> impl Strategy<Value = RemoteError> {
    (
        error_code(),
        "\\PC{0,20}",
        prop::option::of(payload(encoding)),
    )
        .prop_map(|(code, message, data)| RemoteError {
            code,
            message,
            data,
        })
}

fn metadata() -> impl Strategy<Value = Metadata> {
    prop::collection::btree_map("[a-z-]{1,10}", "\\PC{0,16}", 0..3)
}

fn envelope(encoding: Encoding) -> impl Strategy<Value = Envelope> {
    let id = "\\PC{1,16}";
    prop_oneof![
        (any::<u64>(), id, id, args(encoding), metadata()).prop_map(
            |(call_id, actor_id, method, args, metadata)| {
                Envelope::Invocation(Invocation {
                    call_id,
                    actor_id,
                    method,
                    args,
                    metadata,
                })
            }
        ),
        (
            prop::option::of(any::<u64>()),
            prop_oneof![
                payload(encoding).prop_map(Ok),
                remote_error(encoding).prop_map(Err)
            ]
        )
            .prop_map(|(call_id, outcome)| Envelope::Response(Response { call_id, outcome })),
        (any::<u64>(), id).prop_map(|(call_id, stream_id)| Envelope::StreamStart(StreamStart {
            call_id,
            stream_id
        })),
        (id, any::<u64>(), payload(encoding), any::<u64>()).prop_map(
            |(stream_id, sequence_number, data, timestamp)| {
                Envelope::StreamData(StreamData {
                    stream_id: stream_id.into(),
                    sequence_number,
                    data,
                    timestamp,
                })
            }
        ),
        id.prop_map(|stream_id| Envelope::StreamEnd(StreamEnd { stream_id })),
        (id, remote_error(encoding))
            .prop_map(|(stream_id, error)| Envelope::StreamError(StreamError { stream_id, error })),
        (
            (id, any::<u64>(), id, id, args(encoding)),
            (proptest::option::of(any::<u64>()), metadata())
        )
            .prop_map(
                |((stream_id, last_sequence, actor_id, method, args), (call_id, metadata))| {
                    Envelope::StreamResume(StreamResume {
                        stream_id,
                        last_sequence,
                        actor_id,
                        method,
                        args,
                        call_id,
                        metadata,
                    })
                }
            ),
        any::<u64>().prop_map(|call_id| Envelope::Cancel(Cancel { call_id })),
        (id, any::<u64>()).prop_map(|(stream_id, sequence_number)| Envelope::StreamAck(
            StreamAck {
                stream_id,
                sequence_number
            }
        )),
        (
            id,
            any::<u64>(),
            prop::collection::vec(payload(encoding), 0..4),
            any::<u64>()
        )
            .prop_map(|(stream_id, first_sequence, items, timestamp)| {
                Envelope::StreamBatch(StreamBatch {
                    stream_id: stream_id.into(),
                    first_sequence,
                    items,
                    timestamp,
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn json_frames_round_trip(envelope in envelope(Encoding::Json)) {
        let frame = codec::encode(&envelope, Encoding::Json).unwrap();
        prop_assert!(std::str::from_utf8(&frame.data).is_ok());
        prop_assert_eq!(codec::decode(&frame).unwrap(), envelope);
    }

    #[test]
    fn binary_frames_round_trip(envelope in envelope(Encoding::Bincode)) {
        let frame = codec::encode(&envelope, Encoding::Bincode).unwrap();
        prop_assert_eq!(codec::decode(&frame).unwrap(), envelope);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for encoding in [Encoding::Json, Encoding::Bincode] {
            let _ = codec::decode(&Frame { encoding, data: bytes.clone().into() });
        }
    }

    #[test]
    fn truncated_and_corrupted_frames_are_errors_not_panics(
        envelope in envelope(Encoding::Bincode),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let frame = codec::encode(&envelope, Encoding::Bincode).unwrap();
        let data = frame.data.to_vec();
        let truncated = &data[..cut.index(data.len())];
        prop_assert!(codec::decode_bytes(truncated, Encoding::Bincode).is_err());
        // (`decode` reads the envelopes of calls and stream items by hand, from a shared frame.)
        let truncated = Frame { encoding: Encoding::Bincode, data: truncated.to_vec().into() };
        prop_assert!(codec::decode(&truncated).is_err());
        let mut corrupted = data.clone();
        let at = flip.index(corrupted.len());
        corrupted[at] ^= 0xff;
        let _ = codec::decode_bytes(&corrupted, Encoding::Bincode);
    }

    #[test]
    fn json_with_a_readable_call_id_is_answered_with_it(
        call_id in any::<u64>(),
        junk in "\\PC{0,20}",
    ) {
        // Valid JSON with a callId but nothing else usable.
        let text = serde_json::json!({"type": "invocation", "callId": call_id, "junk": junk})
            .to_string();
        let error = codec::decode_bytes(text.as_bytes(), Encoding::Json).unwrap_err();
        prop_assert_eq!(error.call_id, Some(call_id));
    }
}
