//! Streams survive lost connections: the client resumes them on the next connection and the
//! server replays what was missed (docs/PROTOCOL.md, "Streams"). The chaos tests put a proxy
//! between client and server that cuts every connection each time the consumer has read 100
//! more items, over every network transport, TLS ones included.

mod common;
#[path = "../examples/shared/counter_actor.rs"]
mod counter_actor;

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
    // The client lives as long as the returned actor handle does.
    connect_through(wire, system, proxy, window)
        .await
        .actor("probe")
}

/// A connection through `proxy`, as [`client_through`] makes it.
async fn connect_through(
    wire: Wire,
    system: &ActorSystem,
    proxy: &CuttingProxy,
    window: u64,
) -> trebuchet::Client {
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
    system.connect_with(transport, config).await.unwrap()
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

/// A state stream misses nothing while its client is away: the server keeps pulling a parked
/// stream into its replay buffer, and the client's resume replays it.
mod state_catch_up {
    use std::sync::Arc;

    use super::*;
    use trebuchet::state::MemoryStateStore;

    use super::counter_actor::{
        Counter, CounterClient, CounterError, CounterState, PersistentCounter,
    };
    use trebuchet::ActorStream;
    use trebuchet::state::{State, StatefulActor};

    /// `observe()` and `observe_state()` subscribed through a proxy; the connection is cut and
    /// the client kept away (the proxy sends it nowhere) while another client makes 5
    /// increments; then the client comes back and resumes: both streams give all 5 changes, in
    /// order, and no gap.
    async fn changes_made_while_away_are_replayed(wire: Wire) {
        let counter = PersistentCounter::new(Arc::new(MemoryStateStore::new()));
        changes_while_away(wire, counter.into_actor(), true).await;
    }

    /// A counter whose state keeps only 2 commits for a subscriber that has not taken them.
    struct TightCounter {
        state: State<CounterState>,
    }

    impl Counter for TightCounter {
        async fn increment(&self, by: u64) -> Result<u64, CounterError> {
            self.state
                .update(|state| {
                    state.value += by;
                    Ok(state.value)
                })
                .await
        }

        async fn get(&self) -> Result<u64, CounterError> {
            Ok(self.state.get().await?.value)
        }

        async fn observe(&self) -> Result<ActorStream<u64>, CounterError> {
            Err(CounterError::Overflow)
        }
    }

    impl StatefulActor for TightCounter {
        type State = CounterState;
        fn state(&self) -> &State<CounterState> {
            &self.state
        }
    }

    /// The changes made while the client is away are more than the state keeps for a
    /// subscriber: they come all the same, since the server pulls the parked stream as they
    /// are made.
    async fn changes_beyond_the_state_buffer_are_replayed(wire: Wire) {
        let state = State::new(Arc::new(MemoryStateStore::new()), "tight").with_change_buffer(2);
        changes_while_away(wire, TightCounter { state }.into_actor(), false).await;
    }

    /// The scenario of [`changes_made_while_away_are_replayed`] with `actor` (and `observe()`
    /// too if `with_observe`).
    async fn changes_while_away<P, A>(wire: Wire, actor: trebuchet::Actor<P, A>, with_observe: bool)
    where
        P: trebuchet::Dispatch<A>,
        A: Send + Sync + 'static,
    {
        let system = ActorSystem::new();
        system.expose("counter", actor).unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = match wire {
            Wire::Tcp => {
                trebuchet::transport::tcp::serve(addr, system.service(), ServerConfig::default())
                    .await
            }
            _ => {
                trebuchet::transport::websocket::serve(
                    addr,
                    system.service(),
                    ServerConfig::default(),
                )
                .await
            }
        }
        .unwrap();
        let direct = match wire {
            Wire::Tcp => Transport::Tcp(server.local_addr().to_string()),
            _ => Transport::WebSocket(server.url().to_owned()),
        };
        let other: CounterClient = system.connect(direct).await.unwrap().actor("counter");
        let proxy = CuttingProxy::start(server.local_addr()).await;
        let away: CounterClient = connect_through(wire, &system, &proxy, 4096)
            .await
            .actor("counter");
        let mut values = match with_observe {
            true => Some(away.observe().await.unwrap()),
            false => None,
        };
        let mut states = away.observe_state().await.unwrap();
        assert_eq!(other.increment(1).await.unwrap(), 1);
        if let Some(values) = values.as_mut() {
            assert_eq!(values.next().await.unwrap().unwrap(), 1);
        }
        assert_eq!(states.next().await.unwrap().unwrap().value, 1);

        let nowhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nowhere_addr = nowhere.local_addr().unwrap();
        drop(nowhere);
        proxy.redirect(nowhere_addr);
        proxy.cut();
        for expected in 2..=6 {
            assert_eq!(other.increment(1).await.unwrap(), expected);
        }
        proxy.redirect(server.local_addr());

        let within = Duration::from_secs(10);
        // An error (a gap above all) fails the test.
        if let Some(values) = values.as_mut() {
            let values: Vec<u64> = tokio::time::timeout(
                within,
                values.by_ref().take(5).map(Result::unwrap).collect(),
            )
            .await
            .expect("the values made while away did not come");
            assert_eq!(values, vec![2, 3, 4, 5, 6]);
        }
        let states: Vec<u64> = tokio::time::timeout(
            within,
            states
                .by_ref()
                .take(5)
                .map(|state| state.unwrap().value)
                .collect(),
        )
        .await
        .expect("the states committed while away did not come");
        assert_eq!(states, vec![2, 3, 4, 5, 6]);
        assert!(proxy.connections() >= 2, "the client did not reconnect");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn state_changes_while_away_over_tcp() {
        changes_made_while_away_are_replayed(Wire::Tcp).await;
    }

    #[tokio::test]
    async fn state_changes_while_away_over_websocket() {
        changes_made_while_away_are_replayed(Wire::WebSocketBincode).await;
    }

    #[tokio::test]
    async fn state_changes_while_away_over_websocket_json() {
        changes_made_while_away_are_replayed(Wire::WebSocketJson).await;
    }

    /// A remote subscriber that falls further behind than the state keeps for it (here: it
    /// reads nothing, and its window of 2 items is full) is not skipped ahead silently: after
    /// the items it was sent, it gets a `StreamGap` error numbered after them, and the stream
    /// ends.
    async fn a_subscriber_that_falls_behind_gets_a_gap(wire: Wire) {
        let system = ActorSystem::new();
        let state = State::new(Arc::new(MemoryStateStore::new()), "tight").with_change_buffer(2);
        system
            .expose("counter", TightCounter { state }.into_actor())
            .unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = ServerConfig::default();
        let server = match wire {
            Wire::Tcp => trebuchet::transport::tcp::serve(addr, system.service(), config).await,
            _ => trebuchet::transport::websocket::serve(addr, system.service(), config).await,
        }
        .unwrap();
        let mut config = ClientConfig::default();
        config.stream_window = 2;
        let transport = match wire {
            Wire::Tcp => Transport::Tcp(server.local_addr().to_string()),
            _ => Transport::WebSocket(server.url().to_owned()),
        };
        let counter: CounterClient = system
            .connect_with(transport, config)
            .await
            .unwrap()
            .actor("counter");
        let mut states = counter.observe_state().await.unwrap();
        for expected in 1..=8 {
            assert_eq!(counter.increment(1).await.unwrap(), expected);
        }
        let within = Duration::from_secs(10);
        let mut seen = Vec::new();
        let gap = loop {
            match tokio::time::timeout(within, states.next()).await.unwrap() {
                Some(Ok(state)) => seen.push(state.value),
                Some(Err(error)) => {
                    break error
                        .stream_gap()
                        .unwrap_or_else(|| panic!("not a gap: {error}"));
                }
                None => panic!("the stream ended without a gap after {seen:?}"),
            }
        };
        assert_eq!(seen, vec![1, 2], "the window's items, then the gap");
        assert_eq!(
            gap,
            trebuchet::StreamGap {
                last_sequence: 2,
                resumed_at: None
            }
        );
        let end = tokio::time::timeout(within, states.next()).await.unwrap();
        assert!(end.is_none(), "the stream ends at the gap");
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_state_subscriber_that_falls_behind_gets_a_gap_over_tcp() {
        a_subscriber_that_falls_behind_gets_a_gap(Wire::Tcp).await;
    }

    #[tokio::test]
    async fn a_state_subscriber_that_falls_behind_gets_a_gap_over_websocket() {
        a_subscriber_that_falls_behind_gets_a_gap(Wire::WebSocketJson).await;
    }

    #[tokio::test]
    async fn state_changes_beyond_the_state_buffer_over_tcp() {
        changes_beyond_the_state_buffer_are_replayed(Wire::Tcp).await;
    }

    #[tokio::test]
    async fn state_changes_beyond_the_state_buffer_over_websocket() {
        changes_beyond_the_state_buffer_are_replayed(Wire::WebSocketBincode).await;
    }
}
