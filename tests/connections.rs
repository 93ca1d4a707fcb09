//! Connection management over real sockets: idle timeouts and keepalives, the connection limit,
//! WebSocket close codes, names quoted in errors, and the frame limits the two sides exchange.

mod common;

use std::time::Duration;

use common::raw;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use trebuchet::transport::tcp::Handshake;
use trebuchet::{ClientConfig, ServerConfig};

/// Generous: what "promptly" and "soon" mean in these tests.
const LIVENESS: Duration = Duration::from_secs(10);

fn idle_server(timeout: Duration) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.idle_timeout = Some(timeout);
    config.handshake_timeout = timeout;
    config
}

/// Waits until `server` has `count` connections open.
async fn open_connections(bed: &Bed, count: usize) {
    let server = bed.server.as_ref().unwrap();
    tokio::time::timeout(LIVENESS, async {
        while server.open_connections() != count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} connections open, expected {count}",
            server.open_connections()
        )
    });
}

/// Reads until the peer closes (or resets) the connection; panics if it stays open.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buffer = [0u8; 1024];
    tokio::time::timeout(LIVENESS, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the server closed the connection");
}

fn handshake_frame() -> Vec<u8> {
    let handshake =
        bincode::serde::encode_to_vec(Handshake::current(), bincode::config::standard()).unwrap();
    let mut frame = (handshake.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&handshake);
    frame
}

#[tokio::test]
async fn silent_websocket_connections_are_pinged_then_closed_with_1001() {
    let bed = Bed::start_configured(
        Kind::WebSocketBincode,
        ClientConfig::default(),
        idle_server(Duration::from_millis(300)),
    )
    .await;
    open_connections(&bed, 1).await;
    let url = bed.server.as_ref().unwrap().url().to_owned();
    // Upgraded, then silent: not even reading, so not answering pings.
    let (mut silent, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // Silent before the upgrade: bounded by the handshake timeout.
    let _before_upgrade = TcpStream::connect(bed.server.as_ref().unwrap().local_addr())
        .await
        .unwrap();
    open_connections(&bed, 3).await;
    // Both silent ones go; the Rust client (keepalive) stays.
    open_connections(&bed, 1).await;
    let mut pinged = false;
    let close = loop {
        match tokio::time::timeout(LIVENESS, silent.next()).await.unwrap() {
            Some(Ok(Message::Ping(_))) => pinged = true,
            Some(Ok(Message::Close(close))) => break close,
            other => panic!("expected a ping, then a close frame; got {other:?}"),
        }
    };
    assert!(pinged, "the server pinged before closing");
    assert_eq!(
        close.expect("a close frame with a status").code,
        CloseCode::Away
    );
    assert_eq!(bed.counter().get().await.unwrap(), 0);
}

#[tokio::test]
async fn a_websocket_client_that_answers_pings_is_not_idle() {
    let bed = Bed::start_configured(
        Kind::WebSocketBincode,
        ClientConfig::default(),
        idle_server(Duration::from_millis(200)),
    )
    .await;
    let url = bed.server.as_ref().unwrap().url().to_owned();
    let (mut reader, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // Reading answers pings (tungstenite sends the pongs): five idle timeouts.
    let mut pings = 0;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(message)) = reader.next().await {
            assert!(matches!(message, Message::Ping(_)), "{message:?}");
            pings += 1;
        }
        panic!("the connection was closed");
    })
    .await;
    assert!(pings >= 2, "{pings} pings");
    open_connections(&bed, 2).await;
}

#[tokio::test]
async fn silent_tcp_connections_are_closed_after_the_idle_timeout() {
    let bed = Bed::start_configured(
        Kind::Tcp,
        ClientConfig::default(),
        idle_server(Duration::from_millis(300)),
    )
    .await;
    let address = bed.server.as_ref().unwrap().local_addr();
    let mut silent = TcpStream::connect(address).await.unwrap();
    silent.write_all(&handshake_frame()).await.unwrap();
    let mut before_handshake = TcpStream::connect(address).await.unwrap();
    open_connections(&bed, 3).await;
    closed_by_server(&mut silent).await;
    closed_by_server(&mut before_handshake).await;
    open_connections(&bed, 1).await;
    assert_eq!(bed.counter().get().await.unwrap(), 0);
}

/// A Rust client idle for many idle timeouts keeps its one connection (it sends keepalives at a
/// third of the timeout the server announced: its own interval, 20 s, is far longer), and its
/// next call works on it.
async fn an_idle_client_keeps_its_connection(kind: Kind) {
    let bed = Bed::start_configured(
        kind,
        ClientConfig::default(),
        idle_server(Duration::from_millis(300)),
    )
    .await;
    let upstream = bed.server.as_ref().unwrap().local_addr();
    let proxy = proxy::CuttingProxy::start(upstream).await;
    let transport = match kind {
        Kind::Tcp => trebuchet::Transport::Tcp(proxy.addr().to_string()),
        _ => trebuchet::Transport::WebSocket(format!("ws://{}/", proxy.addr())),
    };
    let client = bed
        .system
        .connect_with(transport, ClientConfig::default())
        .await
        .unwrap();
    let counter: CounterClient = client.actor("counter");
    assert_eq!(counter.increment(1).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(counter.increment(1).await.unwrap(), 2);
    assert_eq!(proxy.connections(), 1, "the client never had to reconnect");
}

#[tokio::test]
async fn an_idle_websocket_client_keeps_its_connection() {
    an_idle_client_keeps_its_connection(Kind::WebSocketBincode).await;
}

#[tokio::test]
async fn an_idle_tcp_client_keeps_its_connection() {
    an_idle_client_keeps_its_connection(Kind::Tcp).await;
}

fn limited_server(max_connections: usize) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.max_connections = max_connections;
    config
}

#[tokio::test]
async fn websocket_connections_past_the_limit_get_503_until_one_closes() {
    // The bed's own client is the first of two.
    let bed = Bed::start_configured(
        Kind::WebSocketBincode,
        ClientConfig::default(),
        limited_server(2),
    )
    .await;
    let url = bed.server.as_ref().unwrap().url().to_owned();
    let second = bed.second_client().await;
    let refused = tokio::time::timeout(LIVENESS, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("refused promptly");
    match refused {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body = String::from_utf8(response.body().clone().unwrap()).unwrap();
            assert!(body.contains("limit of 2 connections"), "{body}");
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    let error = bed
        .system
        .connect(bed.transport.clone())
        .await
        .expect_err("the Rust client is refused too");
    assert!(error.to_string().contains("503"), "{error}");
    assert!(error.to_string().contains("limit of 2"), "{error}");

    drop(second);
    open_connections(&bed, 1).await;
    let third = bed.second_client().await;
    let counter: CounterClient = third.actor("counter");
    assert_eq!(counter.increment(1).await.unwrap(), 1);
    assert_eq!(bed.counter().get().await.unwrap(), 1);
}

#[tokio::test]
async fn tcp_connections_past_the_limit_are_refused_with_a_reason_until_one_closes() {
    let bed = Bed::start_configured(Kind::Tcp, ClientConfig::default(), limited_server(2)).await;
    let second = bed.second_client().await;
    let refused = tokio::time::timeout(LIVENESS, bed.system.connect(bed.transport.clone()))
        .await
        .expect("refused promptly");
    let error = refused.expect_err("refused");
    let message = error.to_string();
    assert!(message.contains("refused the connection"), "{message}");
    assert!(message.contains("unavailable"), "{message}");
    assert!(message.contains("limit of 2 connections"), "{message}");

    drop(second);
    open_connections(&bed, 1).await;
    let third = bed.second_client().await;
    let counter: CounterClient = third.actor("counter");
    assert_eq!(counter.increment(1).await.unwrap(), 1);
}

/// A raw WebSocket client to a server whose frame limit is `max_frame_size`.
async fn raw_websocket(
    max_frame_size: usize,
) -> (
    Bed,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) {
    let mut config = ServerConfig::default();
    config.max_frame_size = max_frame_size;
    let bed = Bed::start_configured(Kind::WebSocketJson, ClientConfig::default(), config).await;
    let url = bed.server.as_ref().unwrap().url().to_owned();
    let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    (bed, socket)
}

/// Reads until the server's close frame and returns its status.
async fn close_code(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> CloseCode {
    loop {
        match tokio::time::timeout(LIVENESS, socket.next()).await.unwrap() {
            Some(Ok(Message::Close(close))) => {
                return close.expect("a close frame with a status").code;
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

fn raw_frame(opcode: tungstenite::protocol::frame::coding::Data, data: &[u8]) -> Message {
    use tungstenite::protocol::frame::{Frame, coding::OpCode};
    Message::Frame(Frame::message(data.to_vec(), OpCode::Data(opcode), true))
}

#[tokio::test]
async fn an_oversize_message_is_answered_then_closed_with_1009() {
    let (bed, mut socket) = raw_websocket(1024).await;
    socket
        .send(Message::Binary(vec![0u8; 2048].into()))
        .await
        .unwrap();
    match tokio::time::timeout(LIVENESS, socket.next()).await.unwrap() {
        Some(Ok(Message::Text(text))) => assert!(text.contains("payload_too_large"), "{text}"),
        other => panic!("expected the payload_too_large answer, got {other:?}"),
    }
    assert_eq!(close_code(&mut socket).await, CloseCode::Size);
    assert_eq!(bed.counter().get().await.unwrap(), 0);
}

#[tokio::test]
async fn invalid_utf8_text_is_closed_with_1007() {
    use tungstenite::protocol::frame::coding::Data;
    let (bed, mut socket) = raw_websocket(1024).await;
    socket
        .send(raw_frame(Data::Text, b"{\"type\":\"\xff\xfe\"}"))
        .await
        .unwrap();
    assert_eq!(close_code(&mut socket).await, CloseCode::Invalid);
    assert_eq!(bed.counter().get().await.unwrap(), 0);
}

#[tokio::test]
async fn a_protocol_violation_is_closed_with_1002() {
    use tungstenite::protocol::frame::coding::Data;
    let (bed, mut socket) = raw_websocket(1024).await;
    // A continuation frame with no message to continue.
    socket
        .send(raw_frame(Data::Continue, b"orphan"))
        .await
        .unwrap();
    assert_eq!(close_code(&mut socket).await, CloseCode::Protocol);
    assert_eq!(bed.counter().get().await.unwrap(), 0);
}

#[tokio::test]
async fn errors_quote_at_most_the_start_of_a_huge_name() {
    let (_bed, mut socket) = raw_websocket(4 * 1024 * 1024).await;
    let huge = "m".repeat(1024 * 1024);
    for (call_id, actor, method) in [(1, "counter", huge.as_str()), (2, huge.as_str(), "get")] {
        let invocation = serde_json::json!({
            "type": "invocation", "callId": call_id, "actorId": actor, "method": method, "args": {}
        });
        socket
            .send(Message::text(invocation.to_string()))
            .await
            .unwrap();
        let answer = match tokio::time::timeout(LIVENESS, socket.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => text,
            other => panic!("expected an answer, got {other:?}"),
        };
        assert!(answer.len() < 300, "{} bytes: {answer}", answer.len());
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("mmmm…"), "{message}");
    }
}

/// A client that accepts frames of 64 KiB, through a proxy that counts its connections, to a
/// server that accepts 1 MiB: a result or stream item over 64 KiB is `payload_too_large` for
/// that call or stream only, and the client never has to reconnect.
async fn the_smaller_frame_limit_holds_both_ways(kind: Kind) {
    let bed = Bed::start(kind).await;
    let proxy = proxy::CuttingProxy::start(bed.server.as_ref().unwrap().local_addr()).await;
    let transport = match kind {
        Kind::Tcp => trebuchet::Transport::Tcp(proxy.addr().to_string()),
        _ => trebuchet::Transport::WebSocket(format!("ws://{}/", proxy.addr())),
    };
    let mut config = ClientConfig::default();
    config.max_frame_size = 64 * 1024;
    let client = bed.system.connect_with(transport, config).await.unwrap();
    let probe: ProbeClient = client.actor("probe");

    let error = probe
        .blob(200 * 1024)
        .await
        .expect_err("over the client's limit");
    assert_eq!(
        error.code(),
        Some(trebuchet::ErrorCode::PayloadTooLarge),
        "{error:?}"
    );
    assert_eq!(probe.blob(1024).await.unwrap().len(), 1024);

    let mut stream = probe.endless(200 * 1024).await.unwrap();
    let error = tokio::time::timeout(LIVENESS, stream.next())
        .await
        .expect("the stream stalled")
        .expect("an error, not the end")
        .expect_err("the item does not fit the client's frames");
    assert_eq!(error.code, trebuchet::ErrorCode::PayloadTooLarge, "{error}");
    assert!(stream.next().await.is_none(), "the stream ended");
    let small = probe.count_up(3).await.unwrap();
    let items: Vec<u64> = small.map(|item| item.unwrap()).collect().await;
    assert_eq!(items, [1, 2, 3]);
    assert_eq!(proxy.connections(), 1, "the client never had to reconnect");
}

#[tokio::test]
async fn the_smaller_frame_limit_holds_on_websocket() {
    the_smaller_frame_limit_holds_both_ways(Kind::WebSocketBincode).await;
}

#[tokio::test]
async fn the_smaller_frame_limit_holds_on_tcp() {
    the_smaller_frame_limit_holds_both_ways(Kind::Tcp).await;
}

/// A client that accepts 1 MiB, to a server that accepts 64 KiB: a call over 64 KiB is refused
/// by the client itself with `payload_too_large`, and the connection goes on.
async fn calls_over_the_servers_limit_are_refused_before_sending(kind: Kind) {
    let mut server_config = ServerConfig::default();
    server_config.max_frame_size = 64 * 1024;
    let bed = Bed::start_configured(kind, ClientConfig::default(), server_config).await;
    let proxy = proxy::CuttingProxy::start(bed.server.as_ref().unwrap().local_addr()).await;
    let transport = match kind {
        Kind::Tcp => trebuchet::Transport::Tcp(proxy.addr().to_string()),
        _ => trebuchet::Transport::WebSocket(format!("ws://{}/", proxy.addr())),
    };
    let client = bed.system.connect(transport).await.unwrap();
    let probe: ProbeClient = client.actor("probe");
    let error = probe
        .echo("x".repeat(200 * 1024))
        .await
        .expect_err("over the server's limit");
    assert_eq!(
        error.code(),
        Some(trebuchet::ErrorCode::PayloadTooLarge),
        "{error:?}"
    );
    assert!(error.to_string().contains("65536"), "{error}");
    assert_eq!(probe.echo("small".into()).await.unwrap(), "small");
    assert_eq!(proxy.connections(), 1, "the connection was never closed");
}

#[tokio::test]
async fn websocket_calls_over_the_servers_limit_are_refused_before_sending() {
    calls_over_the_servers_limit_are_refused_before_sending(Kind::WebSocketBincode).await;
}

#[tokio::test]
async fn tcp_calls_over_the_servers_limit_are_refused_before_sending() {
    calls_over_the_servers_limit_are_refused_before_sending(Kind::Tcp).await;
}

/// A client that sends calls with large answers and then reads nothing: the server's writes to
/// it stall, and after the idle timeout without progress the server gives the connection up
/// (the idle timeout alone would not: it is watched while the server reads, and a server
/// stuck in a write does not read).
async fn a_client_that_stops_reading_is_given_up(wire: raw::Wire) {
    let kind = match wire {
        raw::Wire::WebSocket => Kind::WebSocketBincode,
        raw::Wire::Tcp => Kind::Tcp,
    };
    let bed = Bed::start_configured(
        kind,
        ClientConfig::default(),
        idle_server(Duration::from_millis(500)),
    )
    .await;
    open_connections(&bed, 1).await;
    let (mut sender, receiver) = raw::connect(wire, bed.server.as_ref().unwrap()).await;
    open_connections(&bed, 2).await;
    // 32 answers of 512 KiB: more than the socket buffers of both sides hold.
    let args = trebuchet::Payload::encode(&(512u64 * 1024,), trebuchet::Encoding::Bincode).unwrap();
    for call_id in 1..=32 {
        sender
            .feed(&raw::invocation(call_id, "probe", "blob", args.clone()))
            .await;
    }
    sender.flush().await;
    // Never read, never close: the server gives up on its own.
    open_connections(&bed, 1).await;
    drop((sender, receiver));
    // The bed's own client is unaffected.
    let probe: ProbeClient = bed.client.actor("probe");
    assert_eq!(probe.echo("still here".into()).await.unwrap(), "still here");
}

#[tokio::test]
async fn a_websocket_client_that_stops_reading_is_given_up() {
    a_client_that_stops_reading_is_given_up(raw::Wire::WebSocket).await;
}

#[tokio::test]
async fn a_tcp_client_that_stops_reading_is_given_up() {
    a_client_that_stops_reading_is_given_up(raw::Wire::Tcp).await;
}
