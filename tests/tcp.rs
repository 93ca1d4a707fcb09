//! TCP-specific behaviour over real sockets: the handshake, hostile framing, oversize frames.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use trebuchet::codec::{self, Frame};
use trebuchet::protocol::{Envelope, Invocation, Response};
use trebuchet::stream::ItemStream;
use trebuchet::transport::tcp::Handshake;
use trebuchet::{
    ActorSystem, Call, ClientConfig, Encoding, ErrorCode, Metadata, Payload, RemoteError, Reply,
    ServerConfig, Transport,
};

async fn write_frame(stream: &mut TcpStream, data: &[u8]) {
    stream
        .write_all(&(data.len() as u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(data).await.unwrap();
}

async fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut header = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut header))
        .await
        .expect("no answer within 5 s")
        .ok()?;
    let mut data = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut data).await.ok()?;
    Some(data)
}

fn handshake_bytes() -> Vec<u8> {
    bincode::serde::encode_to_vec(Handshake::current(), bincode::config::standard()).unwrap()
}

/// A raw connection that has completed the handshake.
async fn raw(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    write_frame(&mut stream, &handshake_bytes()).await;
    let answer = read_frame(&mut stream)
        .await
        .expect("the server's handshake");
    assert_eq!(answer, handshake_bytes());
    stream
}

fn invocation(call_id: u64, method: &str, args: Payload) -> Vec<u8> {
    let envelope = Envelope::Invocation(Invocation {
        call_id,
        actor_id: "counter".into(),
        method: method.into(),
        args,
        metadata: Metadata::new(),
    });
    codec::encode(&envelope, Encoding::Bincode)
        .unwrap()
        .data
        .to_vec()
}

fn response(data: Vec<u8>) -> Response {
    match codec::decode(&Frame {
        encoding: Encoding::Bincode,
        data: data.into(),
    })
    .unwrap()
    {
        Envelope::Response(response) => response,
        other => panic!("expected a response, got {other:?}"),
    }
}

async fn still_works(stream: &mut TcpStream, call_id: u64) {
    write_frame(
        stream,
        &invocation(call_id, "get", Payload::empty_args(Encoding::Bincode)),
    )
    .await;
    let answer = response(read_frame(stream).await.unwrap());
    assert_eq!(answer.call_id, Some(call_id));
    answer.outcome.unwrap().decode::<u64>().unwrap();
}

async fn tcp_bed() -> (Bed, String) {
    let bed = Bed::start(Kind::Tcp).await;
    let address = bed.server.as_ref().unwrap().local_addr().to_string();
    (bed, address)
}

#[tokio::test]
async fn raw_frames_work_after_the_handshake() {
    let (_bed, address) = tcp_bed().await;
    let mut stream = raw(&address).await;
    let args = Payload::encode(&(5u64,), Encoding::Bincode).unwrap();
    write_frame(&mut stream, &invocation(1, "increment", args)).await;
    let answer = response(read_frame(&mut stream).await.unwrap());
    assert_eq!(answer.outcome.unwrap().decode::<u64>().unwrap(), 5);
}

#[tokio::test]
async fn a_malformed_envelope_gets_bad_request_and_the_connection_stays_usable() {
    let (_bed, address) = tcp_bed().await;
    let mut stream = raw(&address).await;
    write_frame(&mut stream, &[0xde, 0xad, 0xbe, 0xef]).await;
    let answer = response(read_frame(&mut stream).await.unwrap());
    assert_eq!(answer.outcome.unwrap_err().code, ErrorCode::BadRequest);
    still_works(&mut stream, 2).await;
}

/// A framework error an actor returns through its own error type (`ProbeError::Remote`) goes out
/// with its own code and message, not as `actor_error`.
#[tokio::test]
async fn framework_errors_in_an_actors_error_keep_their_code_on_the_wire() {
    let (_bed, address) = tcp_bed().await;
    let mut stream = raw(&address).await;
    for (call_id, code) in [
        ErrorCode::Conflict,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ]
    .into_iter()
    .enumerate()
    {
        let envelope = Envelope::Invocation(Invocation {
            call_id: call_id as u64,
            actor_id: "probe".into(),
            method: "fail".into(),
            args: Payload::encode(&(code, "from the store"), Encoding::Bincode).unwrap(),
            metadata: Metadata::new(),
        });
        let frame = codec::encode(&envelope, Encoding::Bincode).unwrap();
        write_frame(&mut stream, &frame.data).await;
        let answer = response(read_frame(&mut stream).await.unwrap());
        assert_eq!(answer.call_id, Some(call_id as u64));
        assert_eq!(
            answer.outcome.unwrap_err(),
            RemoteError::new(code, "from the store")
        );
    }
}

#[tokio::test]
async fn garbage_before_the_handshake_closes_that_connection_only() {
    let (_bed, address) = tcp_bed().await;
    let mut bystander = raw(&address).await;
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The server sends its handshake first; "GET " read as a length is far over the limit, so
    // it then hangs up.
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "the server did not hang up: {read:?}"
    );
    still_works(&mut bystander, 1).await;
}

#[tokio::test]
async fn a_wrong_protocol_version_is_refused() {
    let (_bed, address) = tcp_bed().await;
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let mut old = Handshake::current();
    old.version = 99;
    write_frame(
        &mut stream,
        &bincode::serde::encode_to_vec(old, bincode::config::standard()).unwrap(),
    )
    .await;
    // The server sends its own handshake, then closes.
    let _ = read_frame(&mut stream).await;
    assert!(read_frame(&mut stream).await.is_none());
}

#[tokio::test]
async fn a_bad_length_prefix_gets_payload_too_large_then_the_connection_closes() {
    let system = ActorSystem::new();
    system
        .expose("counter", MemoryCounter::default().into_actor())
        .unwrap();
    let mut config = ServerConfig::default();
    config.max_frame_size = 1024;
    let server =
        trebuchet::transport::tcp::serve("127.0.0.1:0".parse().unwrap(), system.service(), config)
            .await
            .unwrap();
    let address = server.local_addr().to_string();
    let mut bystander = raw(&address).await;
    let mut stream = raw(&address).await;
    stream
        .write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let answer = response(read_frame(&mut stream).await.unwrap());
    assert_eq!(answer.call_id, None);
    assert_eq!(answer.outcome.unwrap_err().code, ErrorCode::PayloadTooLarge);
    assert!(
        read_frame(&mut stream).await.is_none(),
        "the connection is closed"
    );
    still_works(&mut bystander, 1).await;
}

#[tokio::test]
async fn the_tcp_client_reconnects_after_the_server_restarts() {
    let system = ActorSystem::new();
    system
        .expose("counter", MemoryCounter::default().into_actor())
        .unwrap();
    let server = system
        .serve_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr();
    let client = ActorSystem::new()
        .connect(Transport::Tcp(addr.to_string()))
        .await
        .unwrap();
    let counter: CounterClient = client.actor("counter");
    assert_eq!(counter.increment(2).await.unwrap(), 2);
    server.shutdown().await;
    let _server = system.serve_tcp(addr).await.unwrap();
    // Same system, same actor: the count goes on.
    assert_eq!(counter.increment(3).await.unwrap(), 5);
}

/// A server that keeps fewer items for replay than the client's window allows fewer in flight,
/// and one that keeps few bytes: the stream still flows to the end (the client acknowledges
/// when it has taken all it was sent, not only every quarter window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_flows_when_the_server_keeps_less_than_the_client_window() {
    for (max_items, max_bytes) in [(10, 1 << 20), (1024, 64)] {
        let mut config = ServerConfig::default();
        config.stream_replay.max_items = max_items;
        config.stream_replay.max_bytes = max_bytes;
        let bed = Bed::start_configured(Kind::Tcp, ClientConfig::default(), config).await;
        let probe = bed.probe();
        let items = tokio::time::timeout(Duration::from_secs(20), async {
            let stream = probe.count_up(1000).await.unwrap();
            stream.map(|item| item.unwrap()).collect::<Vec<u64>>().await
        })
        .await
        .unwrap_or_else(|_| panic!("stalled with max_items {max_items}, max_bytes {max_bytes}"));
        assert_eq!(items, (1..=1000).collect::<Vec<_>>());
    }
}

/// A service written by hand (no actor) answers a stream call with items serialized already
/// (`ItemStream::from_payloads`), as a service passing on another server's stream would; a
/// typed client reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_written_service_sends_items_serialized_already() {
    let service = tower::service_fn(|call: Call| async move {
        let encoding = call.invocation.args.encoding();
        let items: Vec<Result<Payload, RemoteError>> = (1..=3u64)
            .map(|n| Ok(Payload::encode(&(n * 10), encoding).unwrap()))
            .chain([Ok(Payload::encode(&4u64, Encoding::Json).unwrap())])
            .collect();
        Ok::<_, RemoteError>(Reply::Stream(ItemStream::from_payloads(
            futures_util::stream::iter(items),
            encoding,
        )))
    });
    let server = trebuchet::transport::tcp::serve(
        "127.0.0.1:0".parse().unwrap(),
        service,
        ServerConfig::default(),
    )
    .await
    .unwrap();
    let client = ActorSystem::new()
        .connect(Transport::Tcp(server.local_addr().to_string()))
        .await
        .unwrap();
    let probe: ProbeClient = client.actor("anything");
    let mut stream = probe.count_up(3).await.unwrap();
    for expected in [10, 20, 30] {
        assert_eq!(stream.next().await.unwrap().unwrap(), expected);
    }
    // The JSON item in a bincode stream ends it with an error.
    let error = stream.next().await.unwrap().unwrap_err();
    assert_eq!(error.code, ErrorCode::Internal, "{error}");
    assert!(stream.next().await.is_none());
}

/// Calls time out at their deadline, not before, round after round (the connection's deadline
/// watcher rests between rounds), while the calls beside them are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_time_out_round_after_round_while_others_are_answered() {
    let mut config = ClientConfig::default();
    config.call_timeout = Duration::from_millis(100);
    let bed = Bed::start_with(Kind::Tcp, config).await;
    let slow: ProbeClient = bed.client.actor("slow");
    let probe = bed.probe();
    for round in 0..3 {
        let start = tokio::time::Instant::now();
        let (slow_outcome, echoes) = tokio::join!(
            slow.sleep_ms(1_000),
            futures_util::future::join_all((0..10).map(|n| probe.echo(format!("{round}.{n}"))))
        );
        let error = slow_outcome.unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::Timeout), "{error}");
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "timed out early"
        );
        for (n, echo) in echoes.into_iter().enumerate() {
            assert_eq!(echo.unwrap(), format!("{round}.{n}"));
        }
        // Idle for longer than the timeout: the watcher has nothing to watch.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
