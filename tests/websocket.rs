//! WebSocket-specific behaviour over real sockets: malformed and oversize frames, multiplexing,
//! timeouts, cancellation, reconnection and graceful shutdown.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trebuchet::codec::{self, Frame};
use trebuchet::protocol::{Envelope, Invocation, Response};
use trebuchet::{
    ActorSystem, ClientConfig, ConnectError, Encoding, ErrorCode, Metadata, Payload,
    ReconnectPolicy, ServerConfig, Transport,
};

/// A raw WebSocket client, to send what the Rust client never would.
struct Raw {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Raw { socket }
    }

    async fn text(&mut self, text: impl Into<String>) {
        self.socket.send(Message::text(text.into())).await.unwrap();
    }

    async fn json(&mut self, value: Value) {
        self.text(value.to_string()).await;
    }

    async fn next(&mut self) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(5), self.socket.next())
            .await
            .expect("no answer within 5 s")
            .and_then(Result::ok)
    }

    async fn recv(&mut self) -> Value {
        match self.next().await {
            Some(Message::Text(text)) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    async fn recv_binary(&mut self) -> Envelope {
        match self.next().await {
            Some(Message::Binary(data)) => codec::decode(&Frame {
                encoding: Encoding::Bincode,
                data,
            })
            .unwrap(),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Calls `get` on the counter and checks the answer, to show the connection still works.
    async fn still_works(&mut self, call_id: u64) {
        self.json(json!({"type":"invocation","callId":call_id,"actorId":"counter","method":"get","args":{}}))
            .await;
        let answer = self.recv().await;
        assert_eq!(answer["callId"], call_id, "{answer}");
        assert!(answer["result"].is_u64(), "{answer}");
    }
}

fn invocation(call_id: u64, actor: &str, method: &str, args: Value) -> Value {
    json!({"type":"invocation","callId":call_id,"actorId":actor,"method":method,"args":args})
}

fn code(answer: &Value) -> &str {
    answer["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {answer}"))
}

async fn bed() -> (Bed, String) {
    let bed = Bed::start(Kind::WebSocketBincode).await;
    let url = bed.server.as_ref().unwrap().url().to_owned();
    (bed, url)
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_usable() {
    let (_bed, url) = bed().await;
    let mut raw = Raw::connect(&url).await;

    raw.text("{not json").await;
    let answer = raw.recv().await;
    assert_eq!(code(&answer), "bad_request");
    assert!(answer.get("callId").is_none(), "{answer}");
    raw.still_works(1).await;

    raw.json(json!({"type":"invocation","callId":2,"actorId":"counter"}))
        .await;
    let answer = raw.recv().await;
    assert_eq!(
        (code(&answer), &answer["callId"]),
        ("bad_request", &json!(2))
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("method"),
        "{answer}"
    );

    raw.json(json!({"type":"teleport","callId":3})).await;
    let answer = raw.recv().await;
    assert_eq!(
        (code(&answer), &answer["callId"]),
        ("bad_request", &json!(3))
    );

    raw.json(json!({"type":"response","callId":4,"result":1}))
        .await;
    assert_eq!(code(&raw.recv().await), "bad_request");

    raw.text("[1,2,3]").await;
    assert_eq!(code(&raw.recv().await), "bad_request");

    // Binary garbage is answered in binary, and the connection still works.
    raw.socket
        .send(Message::binary(vec![0xde, 0xad, 0xbe, 0xef]))
        .await
        .unwrap();
    let Envelope::Response(Response {
        call_id: None,
        outcome: Err(error),
    }) = raw.recv_binary().await
    else {
        panic!("expected an error response")
    };
    assert_eq!(error.code, ErrorCode::BadRequest);
    raw.still_works(5).await;
}

#[tokio::test]
async fn wrong_arguments_unknown_methods_and_unknown_actors_are_typed_errors() {
    let (_bed, url) = bed().await;
    let mut raw = Raw::connect(&url).await;
    let cases = [
        (
            invocation(1, "counter", "increment", json!({"by":"five"})),
            "bad_request",
        ),
        (
            invocation(2, "counter", "increment", json!({})),
            "bad_request",
        ),
        (
            invocation(3, "counter", "increment", json!({"by":1,"extra":true})),
            "bad_request",
        ),
        (
            invocation(4, "counter", "increment", json!([1])),
            "bad_request",
        ),
        (
            invocation(5, "counter", "incremnt", json!({"by":1})),
            "unknown_method",
        ),
        (invocation(6, "nobody", "get", json!({})), "unknown_actor"),
    ];
    for (request, expected) in cases {
        let call_id = request["callId"].clone();
        raw.json(request).await;
        let answer = raw.recv().await;
        assert_eq!(answer["callId"], call_id);
        assert_eq!(code(&answer), expected, "{answer}");
    }
    raw.json(invocation(7, "counter", "incremnt", json!({})))
        .await;
    assert_eq!(
        raw.recv().await["error"]["message"],
        "counter has no method 'incremnt'"
    );
    raw.still_works(8).await;
}

#[tokio::test]
async fn actor_errors_carry_code_message_and_data() {
    let (_bed, url) = bed().await;
    let mut raw = Raw::connect(&url).await;
    raw.json(invocation(1, "probe", "refuse", json!({"reason":"closed"})))
        .await;
    let answer = raw.recv().await;
    assert_eq!(
        answer,
        json!({"type":"response","callId":1,"error":{
            "code":"actor_error","message":"refused: closed","data":{"Refused":"closed"}}})
    );
    raw.json(invocation(2, "probe", "record", json!({"seq":1})))
        .await;
    assert_eq!(
        raw.recv().await,
        json!({"type":"response","callId":2,"result":null})
    );
}

/// A framework error an actor returns through its own error type (`ProbeError::Remote`) goes out
/// with its own code, message and data, not as `actor_error`: for calls and refused streams.
#[tokio::test]
async fn framework_errors_in_an_actors_error_keep_their_code_on_the_wire() {
    let (_bed, url) = bed().await;
    let mut raw = Raw::connect(&url).await;
    let mut call_id = 0;
    for method in ["fail", "fail_stream"] {
        for code in ["conflict", "unavailable", "internal"] {
            call_id += 1;
            let args = json!({"code": code, "message": "from the store"});
            raw.json(invocation(call_id, "probe", method, args)).await;
            assert_eq!(
                raw.recv().await,
                json!({"type":"response","callId":call_id,"error":{
                    "code":code,"message":"from the store"}}),
                "{method}"
            );
        }
    }
}

#[tokio::test]
async fn answers_come_back_out_of_order_on_one_connection() {
    let (_bed, url) = bed().await;
    let mut raw = Raw::connect(&url).await;
    raw.json(invocation(1, "slow", "sleep_ms", json!({"ms":300})))
        .await;
    raw.json(invocation(2, "probe", "echo", json!({"text":"quick"})))
        .await;
    let first = raw.recv().await;
    let second = raw.recv().await;
    assert_eq!(
        (first["callId"].as_u64(), first["result"].clone()),
        (Some(2), json!("quick"))
    );
    assert_eq!(
        (second["callId"].as_u64(), second["result"].clone()),
        (Some(1), json!(300))
    );
}

#[tokio::test]
async fn a_call_id_in_flight_cannot_be_reused_and_cancel_drops_the_answer() {
    let (_bed, url) = bed().await;
    let mut raw = Raw::connect(&url).await;
    raw.json(invocation(1, "slow", "sleep_ms", json!({"ms":200})))
        .await;
    raw.json(invocation(1, "probe", "echo", json!({"text":"dup"})))
        .await;
    let answer = raw.recv().await;
    assert_eq!(
        (code(&answer), answer["callId"].as_u64()),
        ("bad_request", Some(1))
    );

    raw.json(json!({"type":"cancel","callId":1})).await;
    raw.json(json!({"type":"cancel","callId":99})).await; // not in flight: ignored
    // The cancelled call is never answered: the next frame is this call's answer, which comes
    // only after the slow actor is done.
    raw.json(invocation(2, "slow", "echo", json!({"text":"after"})))
        .await;
    let answer = raw.recv().await;
    assert_eq!(
        (answer["callId"].as_u64(), answer["result"].clone()),
        (Some(2), json!("after"))
    );
}

#[tokio::test]
async fn an_oversize_frame_closes_that_connection_only() {
    let system = ActorSystem::new();
    system
        .expose("counter", MemoryCounter::default().into_actor())
        .unwrap();
    let mut config = ServerConfig::default();
    config.max_frame_size = 64 * 1024;
    let server = trebuchet::transport::websocket::serve(
        "127.0.0.1:0".parse().unwrap(),
        system.service(),
        config,
    )
    .await
    .unwrap();
    let mut bystander = Raw::connect(server.url()).await;
    let mut raw = Raw::connect(server.url()).await;
    let huge = "x".repeat(100 * 1024);
    raw.json(invocation(1, "counter", "increment", json!({"by": huge})))
        .await;
    let answer = raw.recv().await;
    assert_eq!(code(&answer), "payload_too_large", "{answer}");
    assert!(answer.get("callId").is_none());
    match raw.next().await {
        None | Some(Message::Close(_)) => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }
    bystander.still_works(1).await;
    Raw::connect(server.url()).await.still_works(2).await;
}

#[tokio::test]
async fn an_oversize_result_is_an_error_for_that_call_only() {
    let (bed, _url) = bed().await;
    let probe = bed.probe();
    let error = probe.blob(2 * 1024 * 1024).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::PayloadTooLarge), "{error}");
    assert_eq!(probe.echo("fine".into()).await.unwrap(), "fine");
}

#[tokio::test]
async fn the_client_refuses_oversize_calls_before_sending() {
    let mut config = ClientConfig::default();
    config.max_frame_size = 1024;
    let bed = Bed::start_with(Kind::WebSocketBincode, config).await;
    let probe = bed.probe();
    let error = probe.echo("y".repeat(4096)).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::PayloadTooLarge), "{error}");
    assert_eq!(
        probe.count_calls().await.unwrap(),
        0,
        "nothing reached the actor"
    );
}

#[tokio::test]
async fn binary_frames_get_binary_answers() {
    let (_bed, url) = bed().await;
    let mut raw = Raw::connect(&url).await;
    let envelope = Envelope::Invocation(Invocation {
        call_id: 42,
        actor_id: "probe".into(),
        method: "add".into(),
        args: Payload::encode(&(20i64, 1i64, Some(2i64)), Encoding::Bincode).unwrap(),
        metadata: Metadata::new(),
    });
    let frame = codec::encode(&envelope, Encoding::Bincode).unwrap();
    raw.socket.send(Message::Binary(frame.data)).await.unwrap();
    let Envelope::Response(Response {
        call_id: Some(42),
        outcome: Ok(result),
    }) = raw.recv_binary().await
    else {
        panic!("expected a result")
    };
    assert_eq!(result.decode::<i64>().unwrap(), 42);
}

#[tokio::test]
async fn a_call_that_outlives_its_timeout_fails_with_timeout() {
    let mut config = ClientConfig::default();
    config.call_timeout = Duration::from_millis(100);
    let bed = Bed::start_with(Kind::WebSocketBincode, config).await;
    let slow: ProbeClient = bed.client.actor("slow");
    let error = slow.sleep_ms(400).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Timeout), "{error}");
    // The connection is still fine for other calls.
    assert_eq!(bed.probe().echo("ok".into()).await.unwrap(), "ok");
}

async fn serve_counter_on(addr: SocketAddr) -> trebuchet::ServerHandle {
    let system = ActorSystem::new();
    system
        .expose("counter", MemoryCounter::default().into_actor())
        .unwrap();
    system.serve_websocket(addr).await.unwrap()
}

#[tokio::test]
async fn the_client_reconnects_after_the_server_comes_back() {
    let server = serve_counter_on("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.local_addr();
    let mut config = ClientConfig::default();
    config.call_timeout = Duration::from_millis(400);
    let client = ActorSystem::new()
        .connect_with(Transport::WebSocket(server.url().into()), config)
        .await
        .unwrap();
    let counter: CounterClient = client.actor("counter");
    assert_eq!(counter.increment(1).await.unwrap(), 1);

    server.shutdown().await;
    // Let the client see the close (a call sent before that fails at once: see
    // `calls_in_flight_when_the_connection_drops_fail_with_unavailable`).
    tokio::time::sleep(Duration::from_millis(100)).await;
    // While the server is down, calls wait for the reconnect within their timeout, then fail
    // with `unavailable`.
    let started = tokio::time::Instant::now();
    let error = counter.get().await.unwrap_err();
    assert_eq!(
        match &error {
            CounterError::Remote(remote) => remote.code,
            CounterError::Overflow => panic!(),
        },
        ErrorCode::Unavailable,
        "{error}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    let _server = serve_counter_on(addr).await;
    // A call made now waits for the reconnect and goes through (to a fresh counter).
    let mut value = None;
    for _ in 0..20 {
        match counter.increment(7).await {
            Ok(v) => {
                value = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(value, Some(7));
}

#[tokio::test]
async fn calls_in_flight_when_the_connection_drops_fail_with_unavailable() {
    let mut server_config = ServerConfig::default();
    server_config.shutdown_grace = Duration::from_millis(50);
    let mut bed = Bed::start_configured(
        Kind::WebSocketBincode,
        ClientConfig::default(),
        server_config,
    )
    .await;
    let server = bed.server.take().unwrap();
    let slow: ProbeClient = bed.client.actor("slow");
    let call = tokio::spawn(async move { slow.sleep_ms(2_000).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.shutdown().await;
    let error = tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .expect("the call must fail at once, not wait for its timeout")
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
}

#[tokio::test]
async fn a_client_that_gives_up_reconnecting_fails_fast() {
    let server = serve_counter_on("127.0.0.1:0".parse().unwrap()).await;
    let mut config = ClientConfig::default();
    config.reconnect = ReconnectPolicy::default();
    config.reconnect.max_attempts = Some(2);
    config.reconnect.initial_backoff = Duration::from_millis(10);
    let client = ActorSystem::new()
        .connect_with(Transport::WebSocket(server.url().into()), config)
        .await
        .unwrap();
    let counter: CounterClient = client.actor("counter");
    counter.get().await.unwrap();
    server.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = tokio::time::Instant::now();
    let error = counter.get().await.unwrap_err();
    assert!(error.to_string().contains("closed"), "{error}");
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn graceful_shutdown_finishes_calls_in_flight() {
    let (bed, _url) = bed().await;
    let slow: ProbeClient = bed.client.actor("slow");
    let call = tokio::spawn(async move { slow.sleep_ms(300).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Bed { server, .. } = bed;
    let server = server.unwrap();
    let url = server.url().to_owned();
    server.shutdown().await;
    assert_eq!(
        call.await.unwrap().unwrap(),
        300,
        "the call in flight got its answer"
    );
    assert!(
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .is_err(),
        "no new connections"
    );
}

#[tokio::test]
async fn connect_errors_are_clear() {
    let system = ActorSystem::new();
    let error = system
        .connect(Transport::WebSocket("http://x".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::InvalidAddress { .. }),
        "{error}"
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    for url in [format!("ws://{addr}/"), format!("wss://{addr}/")] {
        let error = system.connect(Transport::WebSocket(url)).await.unwrap_err();
        assert!(matches!(error, ConnectError::Io { .. }), "{error}");
    }
}

#[tokio::test]
async fn frames_of_one_connection_reach_the_actor_in_order() {
    let (_bed, url) = bed().await;
    let mut raw = Raw::connect(&url).await;
    // All in one burst, so the server reads them faster than the actor runs them.
    for seq in 0..200u64 {
        let frame = invocation(seq, "probe", "record", json!({ "seq": seq })).to_string();
        raw.socket.feed(Message::text(frame)).await.unwrap();
    }
    raw.socket.flush().await.unwrap();
    for _ in 0..200 {
        raw.recv().await;
    }
    raw.json(invocation(1000, "probe", "history", json!({})))
        .await;
    let history = raw.recv().await;
    let expected: Vec<u64> = (0..200).collect();
    assert_eq!(history["result"], json!(expected));
}

#[tokio::test]
async fn a_connection_that_closed_while_idle_is_replaced_before_the_next_call() {
    let server = serve_counter_on("127.0.0.1:0".parse().unwrap()).await;
    let addr = server.local_addr();
    let client = ActorSystem::new()
        .connect(Transport::WebSocket(server.url().into()))
        .await
        .unwrap();
    let counter: CounterClient = client.actor("counter");
    assert_eq!(counter.increment(1).await.unwrap(), 1);
    // The server restarts while the client is idle...
    server.shutdown().await;
    let _server = serve_counter_on(addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...and the next call goes to the new server instead of failing on the dead connection.
    assert_eq!(counter.increment(5).await.unwrap(), 5);
}
