//! Who may take a stream over with `streamResume`, over real sockets with raw frames: only the
//! principal that opened it (through the same middleware as any call); the connection that loses
//! a stream is told; only stream methods can be resumed.

mod common;

use std::time::Duration;

use common::raw::{self, RawReceiver, RawSender, Wire};
use common::*;
use trebuchet::middleware::{ApiKeys, AuthenticationLayer, Gateway, Principal};
use trebuchet::protocol::{Envelope, Invocation, STREAM_WINDOW_METADATA, StreamResume};
use trebuchet::{ActorSystem, Encoding, ErrorCode, Metadata, Payload, RemoteError, ServerHandle};

async fn serve(wire: Wire, authenticated: bool) -> ServerHandle {
    let system = ActorSystem::new();
    let address = "127.0.0.1:0".parse().unwrap();
    let gateway = Gateway::new(system)
        .expose("probe", ProbeActor::default().into_actor())
        .unwrap()
        .expose("counter", MemoryCounter::default().into_actor())
        .unwrap();
    if authenticated {
        let keys = ApiKeys::new()
            .key("alice-key", Principal::new("alice", ["player"]))
            .key("bob-key", Principal::new("bob", ["player"]));
        let gateway = gateway.layer(AuthenticationLayer::new(keys));
        match wire {
            Wire::WebSocket => gateway.serve_websocket(address).await,
            Wire::Tcp => gateway.serve_tcp(address).await,
        }
    } else {
        match wire {
            Wire::WebSocket => gateway.serve_websocket(address).await,
            Wire::Tcp => gateway.serve_tcp(address).await,
        }
    }
    .unwrap()
}

fn metadata(key: Option<&str>) -> Metadata {
    let mut metadata = Metadata::new();
    if let Some(key) = key {
        metadata.insert("x-api-key".into(), key.into());
    }
    metadata
}

fn endless_args() -> Payload {
    Payload::encode(&(8u64,), Encoding::Bincode).unwrap()
}

async fn next(receiver: &mut RawReceiver) -> Envelope {
    tokio::time::timeout(Duration::from_secs(10), receiver.next())
        .await
        .expect("an envelope within 10 s")
        .expect("the connection stays open")
}

/// Opens an endless stream as `key` and reads its first items; returns its id.
async fn open_stream(
    sender: &mut RawSender,
    receiver: &mut RawReceiver,
    key: Option<&str>,
) -> String {
    // With flow control (and no acks), the stream stops 16 items ahead: a resume from the start
    // can always be served from the replay buffer.
    let mut metadata = metadata(key);
    metadata.insert(STREAM_WINDOW_METADATA.into(), "16".into());
    let call = Envelope::Invocation(Invocation {
        call_id: 1,
        actor_id: "probe".into(),
        method: "endless".into(),
        args: endless_args(),
        metadata,
    });
    sender.send(&call).await;
    let stream_id = match next(receiver).await {
        Envelope::StreamStart(start) => start.stream_id,
        other => panic!("expected streamStart, got {other:?}"),
    };
    receive_items(receiver, &stream_id).await;
    stream_id
}

/// Reads until an item of `stream_id` arrives.
async fn receive_items(receiver: &mut RawReceiver, stream_id: &str) {
    loop {
        match next(receiver).await {
            Envelope::StreamData(data) if *data.stream_id == *stream_id => return,
            Envelope::StreamBatch(batch) if *batch.stream_id == *stream_id => return,
            Envelope::StreamError(failure) => panic!("the stream failed: {}", failure.error),
            _ => {}
        }
    }
}

/// Reads until the `streamError` of `stream_id`, skipping items still in flight.
async fn stream_error(receiver: &mut RawReceiver, stream_id: &str) -> RemoteError {
    loop {
        if let Envelope::StreamError(failure) = next(receiver).await
            && failure.stream_id == stream_id
        {
            return failure.error;
        }
    }
}

fn resume(
    stream_id: &str,
    actor: &str,
    method: &str,
    args: Payload,
    key: Option<&str>,
) -> Envelope {
    Envelope::StreamResume(StreamResume {
        stream_id: stream_id.into(),
        last_sequence: 0,
        actor_id: actor.into(),
        method: method.into(),
        args,
        call_id: Some(5),
        metadata: metadata(key),
    })
}

async fn another_principal_cannot_take_a_stream_over(wire: Wire) {
    let server = serve(wire, true).await;
    let (mut alice, mut alice_in) = raw::connect(wire, &server).await;
    let stream_id = open_stream(&mut alice, &mut alice_in, Some("alice-key")).await;

    let (mut bob, mut bob_in) = raw::connect(wire, &server).await;
    bob.send(&resume(
        &stream_id,
        "probe",
        "endless",
        endless_args(),
        Some("bob-key"),
    ))
    .await;
    let refused = stream_error(&mut bob_in, &stream_id).await;
    assert_eq!(refused.code, ErrorCode::Forbidden, "{refused}");
    // Without credentials, the middleware refuses it before anything else.
    bob.send(&resume(
        &stream_id,
        "probe",
        "endless",
        endless_args(),
        None,
    ))
    .await;
    let refused = stream_error(&mut bob_in, &stream_id).await;
    assert_eq!(refused.code, ErrorCode::Unauthenticated, "{refused}");

    // Alice keeps her stream.
    for _ in 0..3 {
        receive_items(&mut alice_in, &stream_id).await;
    }
}

#[tokio::test]
async fn another_principal_cannot_take_a_websocket_stream_over() {
    another_principal_cannot_take_a_stream_over(Wire::WebSocket).await;
}

#[tokio::test]
async fn another_principal_cannot_take_a_tcp_stream_over() {
    another_principal_cannot_take_a_stream_over(Wire::Tcp).await;
}

/// The same principal (or anyone, without authentication: the id is then a bearer secret) takes
/// the stream over; the connection that loses it gets `unavailable` saying why.
async fn a_stream_taken_over_tells_the_connection_that_lost_it(wire: Wire, key: Option<&str>) {
    let server = serve(wire, key.is_some()).await;
    let (mut first, mut first_in) = raw::connect(wire, &server).await;
    let stream_id = open_stream(&mut first, &mut first_in, key).await;

    // The first connection reads on (a connection blocked writing to a peer that does not read
    // cannot hand its stream over).
    let lost = tokio::spawn({
        let stream_id = stream_id.clone();
        async move { stream_error(&mut first_in, &stream_id).await }
    });
    let (mut second, mut second_in) = raw::connect(wire, &server).await;
    second
        .send(&resume(&stream_id, "probe", "endless", endless_args(), key))
        .await;
    receive_items(&mut second_in, &stream_id).await;

    let lost = lost.await.unwrap();
    assert_eq!(lost.code, ErrorCode::Unavailable, "{lost}");
    #[derive(serde::Deserialize)]
    struct Reason {
        reason: String,
    }
    let data: Reason = lost.data.expect("data").decode().unwrap();
    assert_eq!(data.reason, "resumed_elsewhere");
    // The stream goes on where it was taken.
    for _ in 0..3 {
        receive_items(&mut second_in, &stream_id).await;
    }
}

#[tokio::test]
async fn the_same_principal_takes_a_websocket_stream_over_and_the_first_connection_is_told() {
    a_stream_taken_over_tells_the_connection_that_lost_it(Wire::WebSocket, Some("alice-key")).await;
}

#[tokio::test]
async fn the_same_principal_takes_a_tcp_stream_over_and_the_first_connection_is_told() {
    a_stream_taken_over_tells_the_connection_that_lost_it(Wire::Tcp, Some("alice-key")).await;
}

#[tokio::test]
async fn without_authentication_the_stream_id_alone_takes_a_websocket_stream_over() {
    a_stream_taken_over_tells_the_connection_that_lost_it(Wire::WebSocket, None).await;
}

#[tokio::test]
async fn without_authentication_the_stream_id_alone_takes_a_tcp_stream_over() {
    a_stream_taken_over_tells_the_connection_that_lost_it(Wire::Tcp, None).await;
}

/// A client that resumes a stream on the connection that already carries it loses nothing, so
/// it is told nothing: the stream goes on, with no `streamError`.
async fn a_stream_resumed_on_its_own_connection_goes_on_without_an_error(wire: Wire) {
    let server = serve(wire, true).await;
    let (mut alice, mut alice_in) = raw::connect(wire, &server).await;
    let stream_id = open_stream(&mut alice, &mut alice_in, Some("alice-key")).await;
    alice
        .send(&resume(
            &stream_id,
            "probe",
            "endless",
            endless_args(),
            Some("alice-key"),
        ))
        .await;
    // The resume asked for everything after 0: the replay starts again at item 1, under the
    // same id, and no `streamError` comes before it (nor for a while after).
    loop {
        match next(&mut alice_in).await {
            Envelope::StreamData(data)
                if *data.stream_id == *stream_id && data.sequence_number == 1 =>
            {
                break;
            }
            Envelope::StreamBatch(batch)
                if *batch.stream_id == *stream_id && batch.first_sequence == 1 =>
            {
                break;
            }
            Envelope::StreamError(failure) => panic!("the stream failed: {}", failure.error),
            _ => {}
        }
    }
    let quiet = Duration::from_millis(500);
    while let Ok(envelope) = tokio::time::timeout(quiet, alice_in.next()).await {
        match envelope.expect("the connection stays open") {
            Envelope::StreamError(failure) => panic!("the stream failed: {}", failure.error),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_websocket_stream_resumed_on_its_own_connection_goes_on_without_an_error() {
    a_stream_resumed_on_its_own_connection_goes_on_without_an_error(Wire::WebSocket).await;
}

#[tokio::test]
async fn a_tcp_stream_resumed_on_its_own_connection_goes_on_without_an_error() {
    a_stream_resumed_on_its_own_connection_goes_on_without_an_error(Wire::Tcp).await;
}

async fn resuming_a_method_that_is_not_a_stream_is_a_bad_request(wire: Wire) {
    let server = serve(wire, false).await;
    let (mut sender, mut receiver) = raw::connect(wire, &server).await;
    let args = Payload::encode(&(1u64,), Encoding::Bincode).unwrap();
    let unknown = "00000000-0000-4000-8000-000000000000";
    sender
        .send(&resume(unknown, "counter", "increment", args, None))
        .await;
    let refused = stream_error(&mut receiver, unknown).await;
    assert_eq!(refused.code, ErrorCode::BadRequest, "{refused}");
    // The method did not run.
    sender
        .send(&raw::invocation(
            9,
            "counter",
            "get",
            Payload::empty_args(Encoding::Bincode),
        ))
        .await;
    match next(&mut receiver).await {
        Envelope::Response(response) => {
            assert_eq!(response.outcome.unwrap().decode::<u64>().unwrap(), 0)
        }
        other => panic!("expected a response, got {other:?}"),
    }
}

#[tokio::test]
async fn resuming_a_websocket_call_of_a_method_that_is_not_a_stream_is_a_bad_request() {
    resuming_a_method_that_is_not_a_stream_is_a_bad_request(Wire::WebSocket).await;
}

#[tokio::test]
async fn resuming_a_tcp_call_of_a_method_that_is_not_a_stream_is_a_bad_request() {
    resuming_a_method_that_is_not_a_stream_is_a_bad_request(Wire::Tcp).await;
}
