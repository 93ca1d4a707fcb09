//! Calls that wait for a busy actor, as an attacker would pile them up over real sockets
//! (`invocation` + `cancel` floods, connections closed with calls in flight): calls withdrawn
//! before their turn never run, an actor's queue stays within its bound, and other clients are
//! answered as soon as the actor is free.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::raw::{self, RawReceiver, Wire};
use tokio::sync::Semaphore;
use trebuchet::actor::QueueFull;
use trebuchet::protocol::Envelope;
use trebuchet::{
    ActorSystem, ClientConfig, Encoding, ErrorCode, Payload, RemoteError, ServerConfig,
    ServerHandle, Transport, distributed_actor,
};

#[distributed_actor]
pub trait Gate {
    /// Waits until the test opens the gate (holding the actor's turn meanwhile).
    async fn block(&self) -> Result<(), RemoteError>;
    /// Counts a run (after a little work).
    async fn increment(&self) -> Result<u64, RemoteError>;
    /// How many `increment`s ran.
    async fn get(&self) -> Result<u64, RemoteError>;
}

/// What the test sees of its gate actor.
#[derive(Clone)]
struct Probe {
    open: Arc<Semaphore>,
    blocked: Arc<AtomicU64>,
    runs: Arc<AtomicU64>,
}

impl Probe {
    fn new() -> Probe {
        Probe {
            open: Arc::new(Semaphore::new(0)),
            blocked: Arc::default(),
            runs: Arc::default(),
        }
    }
}

struct GateActor(Probe);

impl Gate for GateActor {
    async fn block(&self) -> Result<(), RemoteError> {
        self.0.blocked.fetch_add(1, Ordering::SeqCst);
        self.0.open.acquire().await.unwrap().forget();
        Ok(())
    }

    async fn increment(&self) -> Result<u64, RemoteError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(self.0.runs.fetch_add(1, Ordering::SeqCst) + 1)
    }

    async fn get(&self) -> Result<u64, RemoteError> {
        Ok(self.0.runs.load(Ordering::SeqCst))
    }
}

struct Bench {
    system: ActorSystem,
    server: ServerHandle,
    probe: Probe,
    wire: Wire,
}

impl Bench {
    async fn start(wire: Wire, config: ServerConfig) -> Bench {
        let system = ActorSystem::new();
        let probe = Probe::new();
        system
            .expose("gate", GateActor(probe.clone()).into_actor())
            .unwrap();
        let address = "127.0.0.1:0".parse().unwrap();
        let server = match wire {
            Wire::WebSocket => {
                trebuchet::transport::websocket::serve(address, system.service(), config).await
            }
            Wire::Tcp => trebuchet::transport::tcp::serve(address, system.service(), config).await,
        }
        .unwrap();
        Bench {
            system,
            server,
            probe,
            wire,
        }
    }

    fn transport(&self) -> Transport {
        match self.wire {
            Wire::WebSocket => Transport::WebSocket(self.server.url().to_owned()),
            Wire::Tcp => Transport::Tcp(self.server.local_addr().to_string()),
        }
    }

    /// A client on a connection of its own.
    async fn client(&self) -> GateClient {
        let client = self
            .system
            .connect_with(self.transport(), ClientConfig::default())
            .await
            .unwrap();
        client.actor("gate")
    }

    fn queued(&self) -> usize {
        self.system.queued_calls("gate").unwrap()
    }

    /// Starts a `block` call on a connection of its own; returns once it holds the turn.
    async fn block(&self) -> tokio::task::JoinHandle<()> {
        let blocked = self.probe.blocked.load(Ordering::SeqCst);
        let client = self.client().await;
        let blocker = tokio::spawn(async move { client.block().await.unwrap() });
        eventually("the blocking call started", || {
            self.probe.blocked.load(Ordering::SeqCst) > blocked
        })
        .await;
        blocker
    }

    /// Opens the gate with a bystander's `get` (on a connection of its own) waiting behind the
    /// blocking call: the bystander must be answered within a second.
    async fn release_with_a_bystander(&self, blocker: tokio::task::JoinHandle<()>) {
        let bystander = self.client().await;
        let queued = self.queued();
        let answer = tokio::spawn(async move { bystander.get().await.unwrap() });
        eventually("the bystander's call waits", || self.queued() > queued).await;
        let opened = Instant::now();
        self.probe.open.add_permits(1);
        tokio::time::timeout(Duration::from_secs(1), answer)
            .await
            .expect("the bystander was not answered within a second")
            .unwrap();
        assert!(opened.elapsed() < Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(10), blocker)
            .await
            .expect("the blocking call ended")
            .unwrap();
    }
}

async fn eventually(what: &str, condition: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within 10 s: {what}"));
}

/// Reads every envelope of `receiver` until the answer to `call_id`, counting the responses.
async fn read_until_answer(receiver: &mut RawReceiver, call_id: u64) -> usize {
    let mut responses = 0;
    loop {
        let envelope = tokio::time::timeout(Duration::from_secs(30), receiver.next())
            .await
            .expect("the server answers")
            .expect("the connection stays open");
        if let Envelope::Response(response) = envelope {
            responses += 1;
            if response.call_id == Some(call_id) {
                return responses;
            }
        }
    }
}

/// Samples the gate's queue until `done`, returning the longest it saw.
fn watch_queue(system: &ActorSystem, done: Arc<AtomicUsize>) -> tokio::task::JoinHandle<usize> {
    let system = system.clone();
    tokio::spawn(async move {
        let mut longest = 0;
        while done.load(Ordering::SeqCst) == 0 {
            longest = longest.max(system.queued_calls("gate").unwrap());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        longest
    })
}

fn no_args() -> Payload {
    Payload::empty_args(Encoding::Bincode)
}

const PAIRS: u64 = 20_000;

async fn invocation_cancel_pairs_queue_nothing_and_never_run(wire: Wire) {
    let bench = Bench::start(wire, ServerConfig::default()).await;
    let blocker = bench.block().await;
    let done = Arc::new(AtomicUsize::new(0));
    let longest = watch_queue(&bench.system, done.clone());

    let (mut sender, mut receiver) = raw::connect(wire, &bench.server).await;
    let reader = tokio::spawn(async move { read_until_answer(&mut receiver, 0).await });
    for call_id in 1..=PAIRS {
        sender
            .feed(&raw::invocation(call_id, "gate", "increment", no_args()))
            .await;
        sender.feed(&raw::cancel(call_id)).await;
    }
    // A call to no actor, answered at once: when its answer comes, every pair has been read.
    sender
        .send(&raw::invocation(0, "nobody", "get", no_args()))
        .await;
    let responses = reader.await.unwrap();
    eventually("the cancelled calls left the queue", || bench.queued() == 0).await;
    done.store(1, Ordering::SeqCst);
    let longest = longest.await.unwrap();
    assert!(
        longest <= ServerConfig::default().max_queued_calls_per_actor,
        "{longest} calls queued"
    );

    bench.release_with_a_bystander(blocker).await;
    assert_eq!(
        bench.probe.runs.load(Ordering::SeqCst),
        0,
        "cancelled calls ran ({responses} responses)"
    );
    sender.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_cancel_pairs_over_websocket_queue_nothing_and_never_run() {
    invocation_cancel_pairs_queue_nothing_and_never_run(Wire::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_cancel_pairs_over_tcp_queue_nothing_and_never_run() {
    invocation_cancel_pairs_queue_nothing_and_never_run(Wire::Tcp).await;
}

const CONNECTIONS: usize = 4;
const CALLS: usize = 1024;

async fn connections_closed_with_their_calls_queued_leave_nothing_behind(wire: Wire) {
    let bench = Bench::start(wire, ServerConfig::default()).await;
    let blocker = bench.block().await;
    for round in 0..CONNECTIONS {
        let (mut sender, receiver) = raw::connect(wire, &bench.server).await;
        for call_id in 1..=CALLS as u64 {
            sender
                .feed(&raw::invocation(call_id, "gate", "increment", no_args()))
                .await;
        }
        sender.flush().await;
        eventually("the calls are queued", || bench.queued() == CALLS).await;
        sender.close().await;
        drop(receiver);
        eventually("the closed connection's calls left the queue", || {
            bench.queued() == 0
        })
        .await;
        assert_eq!(bench.probe.runs.load(Ordering::SeqCst), 0, "round {round}");
    }
    bench.release_with_a_bystander(blocker).await;
    assert_eq!(bench.probe.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_closed_with_their_calls_queued_leave_nothing_behind() {
    connections_closed_with_their_calls_queued_leave_nothing_behind(Wire::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_closed_with_their_calls_queued_leave_nothing_behind() {
    connections_closed_with_their_calls_queued_leave_nothing_behind(Wire::Tcp).await;
}

async fn a_full_actor_queue_refuses_calls_at_once(wire: Wire) {
    const LIMIT: usize = 3;
    let mut config = ServerConfig::default();
    config.max_queued_calls_per_actor = LIMIT;
    let bench = Bench::start(wire, config).await;
    let blocker = bench.block().await;
    let gate = bench.client().await;
    let waiting: Vec<_> = (0..LIMIT)
        .map(|_| {
            let gate = gate.clone();
            tokio::spawn(async move { gate.increment().await })
        })
        .collect();
    eventually("the queue is full", || bench.queued() == LIMIT).await;

    let refused = tokio::time::timeout(Duration::from_secs(1), gate.increment())
        .await
        .expect("refused at once")
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable, "{refused}");
    let data: QueueFull = refused.data.expect("data").decode().unwrap();
    assert_eq!(
        data,
        QueueFull {
            reason: "actor_queue_full".into(),
            limit: LIMIT as u64
        }
    );

    bench.probe.open.add_permits(1);
    blocker.await.unwrap();
    for call in waiting {
        call.await.unwrap().unwrap();
    }
    assert_eq!(gate.increment().await.unwrap(), LIMIT as u64 + 1);
}

#[tokio::test]
async fn a_full_actor_queue_refuses_websocket_calls_at_once() {
    a_full_actor_queue_refuses_calls_at_once(Wire::WebSocket).await;
}

#[tokio::test]
async fn a_full_actor_queue_refuses_tcp_calls_at_once() {
    a_full_actor_queue_refuses_calls_at_once(Wire::Tcp).await;
}

#[tokio::test]
async fn the_queue_full_error_is_a_json_object_on_the_wire() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut config = ServerConfig::default();
    config.max_queued_calls_per_actor = 0;
    let bench = Bench::start(Wire::WebSocket, config).await;
    let blocker = bench.block().await;
    let (mut socket, _) = tokio_tungstenite::connect_async(bench.server.url())
        .await
        .unwrap();
    let call =
        r#"{"type":"invocation","callId":7,"actorId":"gate","method":"increment","args":{}}"#;
    socket.send(Message::text(call)).await.unwrap();
    let answer = match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => {
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        }
        other => panic!("expected an answer, got {other:?}"),
    };
    assert_eq!(answer["callId"], 7, "{answer}");
    assert_eq!(answer["error"]["code"], "unavailable", "{answer}");
    assert_eq!(
        answer["error"]["data"],
        serde_json::json!({"reason": "actor_queue_full", "limit": 0}),
        "{answer}"
    );
    bench.probe.open.add_permits(1);
    blocker.await.unwrap();
}

async fn a_started_call_counts_against_its_connection_until_it_ends(wire: Wire) {
    let mut config = ServerConfig::default();
    config.max_in_flight_per_connection = 2;
    let bench = Bench::start(wire, config).await;
    let (mut sender, mut receiver) = raw::connect(wire, &bench.server).await;
    sender
        .send(&raw::invocation(1, "gate", "block", no_args()))
        .await;
    eventually("the blocking call started", || {
        bench.probe.blocked.load(Ordering::SeqCst) == 1
    })
    .await;
    // Cancelled, the started call runs on, holding one of the connection's two slots: one more
    // call is read and queued, the next is not read until the first ends.
    sender.send(&raw::cancel(1)).await;
    for call_id in [2, 3] {
        sender
            .send(&raw::invocation(call_id, "gate", "increment", no_args()))
            .await;
    }
    eventually("one call is queued", || bench.queued() == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bench.queued(), 1, "the connection read past its limit");

    bench.probe.open.add_permits(1);
    let mut answered = Vec::new();
    while answered.len() < 2 {
        let envelope = tokio::time::timeout(Duration::from_secs(10), receiver.next())
            .await
            .expect("answered")
            .expect("open");
        if let Envelope::Response(response) = envelope {
            answered.push(response.call_id.unwrap());
            response.outcome.unwrap();
        }
    }
    answered.sort();
    assert_eq!(answered, [2, 3], "the cancelled call is not answered");
    assert_eq!(bench.probe.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_started_call_counts_against_its_websocket_connection_until_it_ends() {
    a_started_call_counts_against_its_connection_until_it_ends(Wire::WebSocket).await;
}

#[tokio::test]
async fn a_started_call_counts_against_its_tcp_connection_until_it_ends() {
    a_started_call_counts_against_its_connection_until_it_ends(Wire::Tcp).await;
}
