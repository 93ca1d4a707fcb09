//! Streams survive lost connections: the client resumes them on the next connection and the
//! server replays what was missed (docs/PROTOCOL.md, "Streams"). The chaos tests put a proxy
//! between client and server that cuts every connection each time the consumer has read 100
//! more items, over every network transport, TLS ones included.

mod common;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use common::proxy::CuttingProxy;
use common::tls::{SERVER_NAMES, TestCa};
use common::{Probe, ProbeActor, ProbeClient};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use trebuchet::client::ReconnectPolicy;
use trebuchet::{ActorSystem, ClientConfig, Encoding, ServerConfig, ServerHandle, Transport};

#[derive(Clone, Copy, Debug)]
enum Wire {
    WebSocketBincode,
    WebSocketJson,
    Tcp,
    /// `wss://`, bincode frames.
    WebSocketTls,
    /// `tls://`.
    TcpTls,
}

/// The CA of the TLS wires' server certificates, which their clients trust.
fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| TestCa::new("Trebuchet test CA"))
}

async fn serve(wire: Wire, mut config: ServerConfig) -> (ActorSystem, ServerHandle) {
    if let Wire::WebSocketTls | Wire::TcpTls = wire {
        config.tls = Some(test_ca().server_config(SERVER_NAMES));
    }
    let system = ActorSystem::new();
    system
        .expose("probe", ProbeActor::default().into_actor())
        .unwrap();
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = match wire {
        Wire::Tcp | Wire::TcpTls => {
            trebuchet::transport::tcp::serve(addr, system.service(), config).await
        }
        _ => trebuchet::transport::websocket::serve(addr, system.service(), config).await,
    }
    .unwrap();
    (system, server)
}

/// A client of `server` through `proxy`, reconnecting quickly, with the stream flow-control
/// window `window`.
async fn client_through(
    wire: Wire,
    system: &ActorSystem,
    proxy: &CuttingProxy,
    window: u64,
) -> ProbeClient {
    let mut config = ClientConfig::default();
    config.encoding = match wire {
        Wire::WebSocketJson => Encoding::Json,
        _ => Encoding::Bincode,
    };
    config.reconnect = ReconnectPolicy::default();
    config.reconnect.initial_backoff = Duration::from_millis(5);
    config.reconnect.max_backoff = Duration::from_millis(50);
    config.stream_window = window;
    config.tls = test_ca().client_config();
    let transport = match wire {
        Wire::Tcp => Transport::Tcp(proxy.addr().to_string()),
        Wire::TcpTls => Transport::Tcp(format!("tls://{}", proxy.addr())),
        Wire::WebSocketTls => Transport::WebSocket(format!("wss://{}/", proxy.addr())),
        _ => Transport::WebSocket(format!("ws://{}/", proxy.addr())),
    };
    let client = system.connect_with(transport, config).await.unwrap();
    // The client lives as long as the returned actor handle does.
    client.actor("probe")
}

/// `count` items through a proxy that cuts the connection every 100 items: all arrive, in order,
/// each once, and no gap is reported. A cut is made only once the client has reconnected
/// after the previous one (the client notices a cut when it next reads the connection, after
/// the items it holds already: up to `window` of them). Returns how many cuts were made.
async fn items_survive_a_cut_every_hundred(wire: Wire, window: u64, count: u64) -> u64 {
    let (system, server) = serve(wire, ServerConfig::default()).await;
    let proxy = CuttingProxy::start(server.local_addr()).await;
    let probe = client_through(wire, &system, &proxy, window).await;
    let mut stream = probe.count_up(count).await.unwrap();
    let mut received = Vec::with_capacity(count as usize);
    let (mut cuts, mut since_cut, mut connections_at_cut) = (0, 0, 0);
    while let Some(item) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the stream stalled")
    {
        let item = item.unwrap_or_else(|error| panic!("after item {:?}: {error}", received.last()));
        received.push(item);
        since_cut += 1;
        if since_cut >= 100 && proxy.connections() > connections_at_cut {
            connections_at_cut = proxy.connections();
            proxy.cut();
            (cuts, since_cut) = (cuts + 1, 0);
        }
    }
    assert_eq!(received.len() as u64, count, "lost or duplicated items");
    assert!(received.iter().copied().eq(1..=count), "items out of order");
    println!("{cuts} cuts, {} connections", proxy.connections());
    server.shutdown().await;
    cuts
}

/// The chaos tests use a window of 128 items, so that the client notices each cut within about
/// a hundred items and the stream is cut about every hundred items.
const CHAOS_WINDOW: u64 = 128;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_over_tcp() {
    let cuts = items_survive_a_cut_every_hundred(Wire::Tcp, CHAOS_WINDOW, 10_000).await;
    assert!(cuts >= 40, "only {cuts} cuts");
}

/// With the default window the client holds more items (a cut shows only once it has taken
/// them), so the same cuts come about once per window: the stream is ten windows long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_over_tcp_with_the_default_window() {
    let window = ClientConfig::default().stream_window;
    let cuts = items_survive_a_cut_every_hundred(Wire::Tcp, window, 10 * window).await;
    assert!(cuts >= 5, "only {cuts} cuts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_over_websocket() {
    let cuts =
        items_survive_a_cut_every_hundred(Wire::WebSocketBincode, CHAOS_WINDOW, 10_000).await;
    assert!(cuts >= 40, "only {cuts} cuts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_over_websocket_json() {
    let cuts = items_survive_a_cut_every_hundred(Wire::WebSocketJson, CHAOS_WINDOW, 10_000).await;
    assert!(cuts >= 40, "only {cuts} cuts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_over_tls_tcp() {
    let cuts = items_survive_a_cut_every_hundred(Wire::TcpTls, CHAOS_WINDOW, 10_000).await;
    assert!(cuts >= 40, "only {cuts} cuts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_over_wss() {
    let cuts = items_survive_a_cut_every_hundred(Wire::WebSocketTls, CHAOS_WINDOW, 10_000).await;
    assert!(cuts >= 40, "only {cuts} cuts");
}

/// A server that does not know the stream (here: the client reconnects to another server, as
/// after a restart) starts it afresh: the consumer gets a `StreamGap` error, then the restarted
/// stream's items (`count_up` counts from 1 again).
async fn a_stream_that_cannot_be_resumed_reports_a_gap_and_restarts(wire: Wire) {
    let (system, first) = serve(wire, ServerConfig::default()).await;
    let (_other_system, second) = serve(wire, ServerConfig::default()).await;
    let proxy = CuttingProxy::start(first.local_addr()).await;
    let probe = client_through(wire, &system, &proxy, CHAOS_WINDOW).await;
    let mut stream = probe.count_up(1_000_000).await.unwrap();
    for expected in 1..=10u64 {
        assert_eq!(stream.next().await.unwrap().unwrap(), expected);
    }
    proxy.redirect(second.local_addr());
    proxy.cut();
    // Items already routed before the cut come first; then the gap.
    let mut last = 10;
    let gap = loop {
        match stream.next().await.expect("the stream ended") {
            Ok(item) => {
                assert_eq!(item, last + 1, "a gap went unreported");
                last = item;
            }
            Err(error) => {
                break error
                    .stream_gap()
                    .unwrap_or_else(|| panic!("not a gap: {error}"));
            }
        }
    };
    assert_eq!(gap.resumed_at, None, "the stream was restarted");
    assert_eq!(gap.last_sequence, last, "{gap:?}");
    // The stream goes on: the restarted count starts again.
    assert_eq!(stream.next().await.unwrap().unwrap(), 1);
    assert_eq!(stream.next().await.unwrap().unwrap(), 2);
    drop(stream);
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn gap_and_restart_over_tcp() {
    a_stream_that_cannot_be_resumed_reports_a_gap_and_restarts(Wire::Tcp).await;
}

#[tokio::test]
async fn gap_and_restart_over_websocket() {
    a_stream_that_cannot_be_resumed_reports_a_gap_and_restarts(Wire::WebSocketBincode).await;
}

#[tokio::test]
async fn gap_and_restart_over_wss() {
    a_stream_that_cannot_be_resumed_reports_a_gap_and_restarts(Wire::WebSocketTls).await;
}

/// A consumer that does not read one stream does not hold up the others on its connection:
/// the server sends a stream only as far ahead as the client's window.
#[tokio::test]
async fn a_stream_nobody_reads_does_not_hold_up_the_connection() {
    let (system, server) = serve(Wire::Tcp, ServerConfig::default()).await;
    let client = system
        .connect(Transport::Tcp(server.local_addr().to_string()))
        .await
        .unwrap();
    let probe: ProbeClient = client.actor("probe");
    let idle = probe.count_up(1_000_000).await.unwrap();
    let busy: Vec<u64> = tokio::time::timeout(
        Duration::from_secs(20),
        probe
            .count_up(5_000)
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect(),
    )
    .await
    .expect("the second stream was held up by the first");
    assert_eq!(busy.len(), 5_000);
    assert_eq!(probe.echo("still here".into()).await.unwrap(), "still here");
    drop(idle);
    server.shutdown().await;
}

/// Flow control, as a non-Rust client speaks it: with `stream-window` in the metadata, the
/// server sends that many items and waits for a `streamAck`.
#[tokio::test]
async fn stream_window_and_ack_in_json() {
    let (_system, server) = serve(Wire::WebSocketJson, ServerConfig::default()).await;
    let mut socket = ws_json(server.url()).await;
    let invocation = r#"{"type":"invocation","callId":1,"actorId":"probe","method":"count_up","args":{"to":100},"metadata":{"stream-window":"4"}}"#;
    socket.send(Message::text(invocation)).await.unwrap();
    let start = next_json(&mut socket).await;
    let stream_id = start["streamId"].as_str().unwrap().to_owned();
    for expected in 1..=4u64 {
        assert_eq!(next_json(&mut socket).await["sequenceNumber"], expected);
    }
    let nothing = tokio::time::timeout(Duration::from_millis(200), socket.next()).await;
    assert!(nothing.is_err(), "a fifth item came before any ack");
    let ack = serde_json::json!({"type": "streamAck", "streamId": stream_id, "sequenceNumber": 3});
    socket.send(Message::text(ack.to_string())).await.unwrap();
    for expected in 5..=7u64 {
        assert_eq!(next_json(&mut socket).await["sequenceNumber"], expected);
    }
    let nothing = tokio::time::timeout(Duration::from_millis(200), socket.next()).await;
    assert!(nothing.is_err(), "more than the window after the ack");
    server.shutdown().await;
}

async fn ws_json(
    url: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn next_json(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> serde_json::Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no answer")
            .expect("connection closed")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// The protocol as a non-Rust client speaks it, in JSON: a stream resumed on a new connection
/// continues after `lastSequence` with the same `streamId`; one the server does not know is
/// started afresh with a new `streamId` under the resume's `callId`.
#[tokio::test]
async fn stream_resume_in_json_continues_or_restarts() {
    let (_system, server) = serve(Wire::WebSocketJson, ServerConfig::default()).await;
    let mut first = ws_json(server.url()).await;
    let invocation = r#"{"type":"invocation","callId":1,"actorId":"probe","method":"count_up","args":{"to":1000000}}"#;
    first.send(Message::text(invocation)).await.unwrap();
    let start = next_json(&mut first).await;
    assert_eq!(start["type"], "streamStart");
    let stream_id = start["streamId"].as_str().unwrap().to_owned();
    for expected in 1..=5u64 {
        let item = next_json(&mut first).await;
        assert_eq!(item["sequenceNumber"], expected);
    }
    // The client "loses" the connection after item 5 (whatever else was sent is lost with it).
    drop(first);

    let mut second = ws_json(server.url()).await;
    let resume = serde_json::json!({
        "type": "streamResume", "streamId": stream_id, "lastSequence": 5,
        "actorId": "probe", "method": "count_up", "args": {"to": 1000000}, "callId": 7
    });
    second
        .send(Message::text(resume.to_string()))
        .await
        .unwrap();
    for expected in 6..=10u64 {
        let item = next_json(&mut second).await;
        assert_eq!(item["type"], "streamData", "{item}");
        assert_eq!(item["streamId"], stream_id.as_str());
        assert_eq!(item["sequenceNumber"], expected);
        assert_eq!(item["data"], expected);
    }
    // `cancel` with the resume's callId stops it.
    second
        .send(Message::text(r#"{"type":"cancel","callId":7}"#))
        .await
        .unwrap();

    let unknown = serde_json::json!({
        "type": "streamResume", "streamId": "00000000-0000-4000-8000-000000000000",
        "lastSequence": 41, "actorId": "probe", "method": "count_up", "args": {"to": 3},
        "callId": 8
    });
    second
        .send(Message::text(unknown.to_string()))
        .await
        .unwrap();
    // Items of the cancelled stream written before the cancel may still come first.
    let restart = loop {
        let envelope = next_json(&mut second).await;
        if envelope["type"] != "streamData" || envelope["streamId"] != stream_id.as_str() {
            break envelope;
        }
    };
    assert_eq!(restart["type"], "streamStart", "{restart}");
    assert_eq!(restart["callId"], 8);
    let fresh_id = restart["streamId"].as_str().unwrap();
    assert_ne!(fresh_id, "00000000-0000-4000-8000-000000000000");
    for expected in 1..=3u64 {
        let item = next_json(&mut second).await;
        assert_eq!(item["sequenceNumber"], expected);
        assert_eq!(item["streamId"], fresh_id);
    }
    assert_eq!(next_json(&mut second).await["type"], "streamEnd");
    server.shutdown().await;
}
