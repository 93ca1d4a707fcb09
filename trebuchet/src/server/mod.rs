//! The server side: exposed actors as a tower [`Service`], and the connection loop every network
//! transport runs.
//!
//! [`ActorService`] turns a [`Call`] into the method's serialized result. Because it is an
//! ordinary `tower::Service`, middleware (authentication, rate limits, tracing…) are ordinary
//! `tower::Layer`s wrapped around it, e.g. with `tower::ServiceBuilder`, and the same stack serves
//! every transport.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::actor::RunToCompletion;
use crate::call_slots::CallSlot;
use crate::protocol::{ErrorCode, Invocation, Payload, RemoteError};
use crate::quoted;
use crate::stream::Reply;
use crate::system::ActorSystem;
use crate::tls::TlsServerConfig;

mod accept;
pub(crate) mod connection;
pub(crate) mod streams;
mod write_deadline;

pub(crate) use accept::refusal_message;
use accept::{AcceptBackoff, Admission, Admitted};
pub use streams::ReplayConfig;
use streams::StreamRegistry;

/// Accepts connections on `listener` until shutdown, handing each socket to `serve_socket` (the
/// transport's handshake and framing) on a task of its own. Shared by every network transport.
/// A connection past `config.max_connections` goes to `refuse_socket` instead (the transport's
/// way of saying so), which has [`accept::REFUSAL_TIMEOUT`] to do it.
pub(crate) fn listen<S, F, Fut, R, RFut>(
    listener: tokio::net::TcpListener,
    url: String,
    service: S,
    config: ServerConfig,
    serve_socket: F,
    refuse_socket: R,
) -> std::io::Result<ServerHandle>
where
    S: Clone + Send + 'static,
    F: Fn(
            tokio::net::TcpStream,
            SocketAddr,
            S,
            ServerConfig,
            Arc<StreamRegistry>,
            CancellationToken,
        ) -> Fut
        + Send
        + 'static,
    Fut: Future<Output = ()> + Send + 'static,
    R: Fn(tokio::net::TcpStream, SocketAddr, ServerConfig) -> RFut + Send + 'static,
    RFut: Future<Output = ()> + Send + 'static,
{
    let local_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    let registry = StreamRegistry::new(config.stream_replay.clone());
    let accept_loop = {
        let (shutdown, connections, config) =
            (shutdown.clone(), connections.clone(), config.clone());
        tokio::spawn(async move {
            let admission = Admission::new(config.max_connections);
            let mut backoff = AcceptBackoff::default();
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer_addr)) => {
                        backoff.succeeded();
                        match admission.admit() {
                            Admitted::Serve(slot) => {
                                let serve = serve_socket(
                                    stream,
                                    peer_addr,
                                    service.clone(),
                                    config.clone(),
                                    registry.clone(),
                                    shutdown.child_token(),
                                );
                                connections.spawn(async move {
                                    serve.await;
                                    drop(slot);
                                });
                            }
                            Admitted::Refuse(slot) => {
                                tracing::debug!(%peer_addr, "connection refused: at the connection limit");
                                let refuse = refuse_socket(stream, peer_addr, config.clone());
                                tokio::spawn(async move {
                                    let _ =
                                        tokio::time::timeout(accept::REFUSAL_TIMEOUT, refuse).await;
                                    drop(slot);
                                });
                            }
                            Admitted::Drop => drop(stream),
                        }
                    }
                    Err(error) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        let after = backoff.failed(tokio::time::Instant::now());
                        if let Some(unlogged) = after.log {
                            tracing::warn!(%error, unlogged, retry_in = ?after.delay, "accept failed");
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(after.delay) => {}
                        }
                    }
                }
            }
        })
    };
    tracing::info!(%local_addr, %url, "server listening");
    Ok(ServerHandle::new(
        local_addr,
        url,
        shutdown,
        connections,
        accept_loop,
        config.shutdown_grace,
    ))
}

/// One invocation as it reaches the service, with what is known of the connection it came on.
#[derive(Clone, Debug)]
pub struct Call {
    /// The invocation envelope.
    pub invocation: Invocation,
    /// The connection the invocation arrived on.
    pub connection: Arc<ConnectionInfo>,
    /// What middleware learned about the call, for the layers after it (for example the
    /// authenticated [`crate::middleware::Principal`]).
    pub extensions: http::Extensions,
    /// The call's share of its connection's in-flight limit (a call from a server connection),
    /// handed to the actor's call, which holds it until it is finished.
    pub(crate) slot: Option<CallSlot>,
    /// Set when the call is a `streamResume`: checked, not run.
    pub(crate) resume: Option<Arc<ResumeCheck>>,
}

/// A `streamResume` presented to the service stack as a call of the stream's method, so that
/// the middleware checks the caller as for any call. [`ActorService`] does not run the method:
/// it checks that it is a stream method and records who the caller is, for the server to decide
/// whether this caller may take the stream over.
#[derive(Debug, Default)]
pub(crate) struct ResumeCheck {
    caller: OnceLock<Option<Principal>>,
}

impl ResumeCheck {
    /// The caller as the service saw it; `None` if the service did not check the resume (a
    /// service written by hand runs the method instead).
    pub(crate) fn caller(&self) -> Option<Option<&Principal>> {
        self.caller.get().map(Option::as_ref)
    }
}

impl Call {
    /// A call of `invocation` that came on `connection`, with no extensions yet.
    pub fn new(invocation: Invocation, connection: Arc<ConnectionInfo>) -> Self {
        Call {
            invocation,
            connection,
            extensions: http::Extensions::new(),
            slot: None,
            resume: None,
        }
    }
}

/// Who is calling: set by authentication (see [`crate::middleware`]), read by the layers after it
/// and by the server, which lets only the principal that opened a stream resume it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// A stable id (an API key's owner, a token's `sub`).
    pub id: String,
    /// The roles authorization rules name.
    pub roles: Vec<String>,
}

impl Principal {
    /// A principal with `id` and `roles`.
    pub fn new(id: impl Into<String>, roles: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Principal {
            id: id.into(),
            roles: roles.into_iter().map(Into::into).collect(),
        }
    }

    /// The principal of `call`, if authentication set one.
    pub fn of(call: &Call) -> Option<&Principal> {
        call.extensions.get::<Principal>()
    }
}

/// What a server knows about a client connection (shared by all its calls).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The transport's name: `"websocket"`, `"tcp"`, …
    pub transport: &'static str,
    /// The client's address, when the transport has one.
    pub peer_addr: Option<SocketAddr>,
    /// The HTTP upgrade request's URI (WebSocket), e.g. `/?token=…`.
    pub uri: Option<http::Uri>,
    /// The HTTP upgrade request's headers (WebSocket), e.g. `authorization`.
    pub headers: http::HeaderMap,
}

/// The exposed actors of an [`ActorSystem`] as a tower `Service<Call>`.
///
/// Answers `unknown_actor` for an id nothing is exposed under, `unknown_method` and
/// `bad_request` from the actor's protocol, and otherwise the method's outcome. A `streamResume`
/// that reaches it (through the middleware, like a call) is checked, not run: `bad_request` if
/// its method is not a stream method.
#[derive(Clone)]
pub struct ActorService {
    system: ActorSystem,
}

impl ActorService {
    /// The service of `system`.
    pub fn new(system: ActorSystem) -> Self {
        ActorService { system }
    }
}

impl Service<Call> for ActorService {
    type Response = Reply;
    type Error = RemoteError;
    type Future = RunToCompletion<Result<Reply, RemoteError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), RemoteError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        let resume = call.resume.take();
        let invocation = &call.invocation;
        match self.system.lookup(&invocation.actor_id) {
            Some(actor) if resume.is_some() => {
                if !actor.is_stream_method(&invocation.method) {
                    return RunToCompletion::failed(RemoteError::bad_request(format!(
                        "'{}' is not a stream method of {}: only streams can be resumed",
                        quoted::name(&invocation.method),
                        quoted::name(&invocation.actor_id)
                    )));
                }
                let encoding = invocation.args.encoding();
                if let Some(resume) = resume {
                    let _ = resume.caller.set(call.extensions.remove::<Principal>());
                }
                RunToCompletion::done(Ok(Reply::Value(Payload::empty_args(encoding))))
            }
            Some(actor) => actor.dispatch(
                &invocation.actor_id,
                &invocation.method,
                &invocation.args,
                call.slot,
                call.extensions,
            ),
            None => {
                let error = RemoteError::new(
                    ErrorCode::UnknownActor,
                    format!(
                        "no actor is exposed as '{}'",
                        quoted::name(&invocation.actor_id)
                    ),
                );
                RunToCompletion::failed(error)
            }
        }
    }
}

/// Settings shared by the network servers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The largest frame accepted or sent (default 1 MiB). A larger incoming frame is answered
    /// with `payload_too_large` and the connection is closed; a larger result is replaced by a
    /// `payload_too_large` error.
    pub max_frame_size: usize,
    /// How many calls of one connection may be unfinished (default 1024). A call counts until it
    /// is finished: one that has started in the actor runs to its end and keeps counting after a
    /// `cancel`. With all taken, the server reads on (cancels, acks, the peer leaving) but holds
    /// the next call unread until one finishes.
    pub max_in_flight_per_connection: usize,
    /// How long a connection may take to complete its handshake, the TLS handshake included
    /// (default 10 s).
    pub handshake_timeout: Duration,
    /// On shutdown, how long calls in flight may take to finish before connections are dropped
    /// (default 10 s).
    pub shutdown_grace: Duration,
    /// What the server keeps of each stream so that a client can resume it after a reconnect.
    pub stream_replay: ReplayConfig,
    /// How many calls from the network may wait for one actor's turn (default 1024); a call
    /// past that is refused at once with `unavailable`, its `data`
    /// `{"reason": "actor_queue_full", "limit": N}` ([`crate::actor::QueueFull`]). In-process
    /// calls are never refused but count among those waiting. Calls a connection abandons
    /// before their turn leave the queue at once.
    pub max_queued_calls_per_actor: usize,
    /// TLS for the WebSocket (`wss://`) and TCP (`tls://`) servers: their certificate and key.
    /// `None` (the default) serves without TLS.
    pub tls: Option<TlsServerConfig>,
    /// A connection from which nothing has been received for this long is closed (default 60 s;
    /// `None` keeps silent connections open). WebSocket clients are sent a ping after half of it,
    /// which any WebSocket client answers; the Rust client also sends keepalives of its own (a
    /// WebSocket ping, an empty TCP frame), at a third of the timeout the server announces.
    /// A connection whose peer has read nothing of what the server writes for this long (a
    /// write waiting for room all that time) is closed too.
    pub idle_timeout: Option<Duration>,
    /// The most client connections open at once, handshakes included (default 10,000; keep it
    /// below the process's open-file limit). Past it a new connection is refused at once: a
    /// WebSocket upgrade gets HTTP 503, a TCP client an `unavailable` answer instead of the
    /// handshake.
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame_size: 1024 * 1024,
            max_in_flight_per_connection: 1024,
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
            stream_replay: ReplayConfig::default(),
            max_queued_calls_per_actor: 1024,
            tls: None,
            idle_timeout: Some(Duration::from_secs(60)),
            max_connections: 10_000,
        }
    }
}

/// A running server. Dropping it starts a shutdown without waiting for it;
/// [`shutdown`](Self::shutdown) waits.
pub struct ServerHandle {
    local_addr: SocketAddr,
    url: String,
    shutdown: CancellationToken,
    connections: TaskTracker,
    accept_loop: Option<JoinHandle<()>>,
    grace: Duration,
}

impl ServerHandle {
    pub(crate) fn new(
        local_addr: SocketAddr,
        url: String,
        shutdown: CancellationToken,
        connections: TaskTracker,
        accept_loop: JoinHandle<()>,
        grace: Duration,
    ) -> Self {
        ServerHandle {
            local_addr,
            url,
            shutdown,
            connections,
            accept_loop: Some(accept_loop),
            grace,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many client connections are open now.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// The URL clients connect to, e.g. `ws://127.0.0.1:9090/`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Graceful shutdown: stops accepting connections and reading new calls, lets the calls in
    /// flight finish and sends their answers (for at most the configured grace period), then
    /// closes every connection.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(accept_loop) = self.accept_loop.take() {
            let _ = accept_loop.await;
        }
        self.connections.close();
        // Each connection enforces the grace period itself; this bound only guards against a
        // connection stuck in a write to a peer that stopped reading.
        let bound = self.grace + Duration::from_secs(1);
        if tokio::time::timeout(bound, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "connections still open after the shutdown grace period");
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
