//! Clients: references to actors, local or remote, behind the generated stubs.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::actor::{ActorError, ActorProtocol};
use crate::protocol::{Encoding, ErrorCode, Metadata, Payload, RemoteError};
use crate::stream::{ActorStream, PayloadStream, decode_stream};
use crate::system::ActorSystem;
use crate::tls::TlsClientConfig;
use crate::transport::{Transport, local::LocalRoute};

/// A connection that carries serialized calls to remote actors: the one trait every network
/// transport implements on the client side.
pub trait Connection: Send + Sync + 'static {
    /// The encoding the connection sends arguments in.
    fn encoding(&self) -> Encoding;

    /// Calls `method` of the actor `actor_id` with serialized `args`; resolves to the serialized
    /// result or the error.
    fn invoke<'a>(
        &'a self,
        actor_id: &'a str,
        method: &'a str,
        args: Payload,
    ) -> BoxFuture<'a, Result<Payload, RemoteError>>;

    /// Calls the stream method `method` of the actor `actor_id`; resolves to the stream of its
    /// items (still serialized, in the batches they arrived in:
    /// [`crate::stream::PayloadBatch`]) once the server has started it, or to the error.
    fn open_stream<'a>(
        &'a self,
        actor_id: &'a str,
        method: &'a str,
        args: Payload,
    ) -> BoxFuture<'a, Result<PayloadStream, RemoteError>>;
}

/// When and how often a client reconnects after losing its connection.
///
/// The delay before attempt *n* (from 0) is `min(max_backoff, initial_backoff × 2ⁿ)`, of which a
/// random half is taken off ("equal jitter") so that many clients do not reconnect in lockstep.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// The delay before the first attempt (default 50 ms).
    pub initial_backoff: Duration,
    /// The longest delay between attempts (default 5 s).
    pub max_backoff: Duration,
    /// How many attempts before the client gives up and fails every call with `unavailable`;
    /// `None` (the default) tries forever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// The delay before reconnect attempt `attempt` (counting from 0), jitter included.
    pub fn delay(&self, attempt: u32) -> Duration {
        backoff_delay(self.initial_backoff, self.max_backoff, attempt)
    }
}

/// Exponential backoff with "equal jitter": the delay before retry `attempt` (counting from 0) is
/// `min(max, initial × 2^attempt)` less a random part of up to half of it. Used by reconnection
/// here and by the retrying transports of other crates, so they all back off alike.
pub fn backoff_delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let base = initial
        .saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(max);
    let half = base / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Settings of a client connection.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long one call may take, from the call to its answer, including any wait for a
    /// reconnect (default 30 s). Past it the call fails with `timeout` (or `unavailable` if the
    /// connection never came back) and the server is sent a `cancel`.
    pub call_timeout: Duration,
    /// How long opening a connection may take (default 10 s).
    pub connect_timeout: Duration,
    /// The encoding of the frames the client sends (default bincode; JSON is for debugging).
    pub encoding: Encoding,
    /// The largest frame the client sends or accepts (default 1 MiB).
    pub max_frame_size: usize,
    /// How many calls may be in flight on one connection before callers wait (default 1024).
    pub max_in_flight: usize,
    /// How many connections to open to the server (default 1). Calls are spread over them in
    /// turn. With more than one, calls made at the same moment may reach the server in another
    /// order than they were made (they race on different connections); calls to one actor still
    /// run one at a time, in the order they arrive.
    pub connections: usize,
    /// Reconnection after a lost connection.
    pub reconnect: ReconnectPolicy,
    /// How many items of one stream the server may send ahead of the consumer (default 4096;
    /// the server may allow fewer: the client then acknowledges sooner, see docs/PROTOCOL.md).
    /// The server also holds the bytes sent ahead to its replay buffer's `max_bytes` (1 MiB by
    /// default), so a window of large items is bounded in memory too.
    /// The client acknowledges every quarter window taken and keeps
    /// up to a window of items per stream: more lets a fast stream flow with fewer pauses, less
    /// bounds memory per stream and the items a reconnect must replay.
    pub stream_window: u64,
    /// Sent with every invocation (for example `authorization`).
    pub metadata: Metadata,
    /// How `wss://` and `tls://` servers are verified (default: the web PKI roots). Unused by
    /// `ws://` and plain TCP.
    pub tls: TlsClientConfig,
    /// The longest the client stays silent on a connection (default 20 s; `None`: no keepalive):
    /// a connection on which nothing was sent for this long gets a keepalive (a WebSocket ping,
    /// an empty TCP frame), so that the server's idle timeout never closes it. A server that
    /// announces a shorter idle timeout gets a keepalive every third of it.
    pub keepalive_interval: Option<Duration>,
}

impl ClientConfig {
    /// The metadata to send with an invocation made now: [`metadata`](Self::metadata), plus the
    /// `traceparent` of the traced invocation being handled, if any (so a call made by an actor
    /// continues its caller's trace).
    pub fn outgoing_metadata(&self) -> Metadata {
        let mut metadata = self.metadata.clone();
        if !metadata.contains_key("traceparent")
            && let Some(context) = crate::middleware::TraceContext::current()
        {
            metadata.insert("traceparent".to_owned(), context.traceparent());
        }
        metadata
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            call_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            encoding: Encoding::Bincode,
            max_frame_size: 1024 * 1024,
            max_in_flight: 1024,
            connections: 1,
            reconnect: ReconnectPolicy::default(),
            stream_window: 4096,
            metadata: Metadata::new(),
            tls: TlsClientConfig::default(),
            keepalive_interval: Some(Duration::from_secs(20)),
        }
    }
}

/// A client could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not usable for the transport.
    #[error("invalid address '{address}': {reason}")]
    InvalidAddress {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting failed.
    #[error("cannot connect to {address}: {source}")]
    Io {
        /// The address connected to.
        address: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed: the server's certificate was refused (signed by a CA the client
    /// does not trust, issued for another name, expired…), or the server does not speak TLS.
    #[error("TLS handshake with {address} failed: {reason}")]
    Tls {
        /// The address connected to.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// A transport of another crate ([`Transport::Custom`]) could not connect, or its settings
    /// are invalid.
    #[error("{transport}: {source}")]
    Custom {
        /// The transport, as its connector describes itself.
        transport: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A handle for calling actors over one [`Transport`]. Cheap to clone; the connection closes when
/// the last clone (and the last actor stub made from it) is dropped.
#[derive(Clone)]
pub struct Client {
    route: ClientRoute,
}

#[derive(Clone)]
enum ClientRoute {
    Local(ActorSystem),
    Remote(Arc<dyn Connection>),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.route {
            ClientRoute::Local(_) => f.write_str("Client(Local)"),
            ClientRoute::Remote(_) => f.write_str("Client(Remote)"),
        }
    }
}

impl Client {
    pub(crate) async fn connect(
        system: &ActorSystem,
        transport: Transport,
        config: ClientConfig,
    ) -> Result<Client, ConnectError> {
        let route = match transport {
            Transport::Local => ClientRoute::Local(system.clone()),
            Transport::WebSocket(url) => {
                ClientRoute::Remote(crate::transport::websocket::connect(&url, config).await?)
            }
            Transport::Tcp(address) => {
                ClientRoute::Remote(crate::transport::tcp::connect(&address, config).await?)
            }
            Transport::Custom(custom) => ClientRoute::Remote(custom.0.connect(config).await?),
        };
        Ok(Client { route })
    }

    /// A client over a connection of your own making (a custom transport).
    pub fn from_connection(connection: Arc<dyn Connection>) -> Client {
        Client {
            route: ClientRoute::Remote(connection),
        }
    }

    /// The stub for the actor exposed as `id`, e.g. `client.actor::<CounterClient>("counter")`.
    ///
    /// No message is sent here: an actor that does not exist shows as `unknown_actor` on the
    /// first call.
    pub fn actor<A: RemoteActor>(&self, id: impl Into<String>) -> A {
        A::from_ref(self.actor_ref(id))
    }

    /// The untyped reference under every generated stub.
    pub fn actor_ref<P: ActorProtocol>(&self, id: impl Into<String>) -> ActorRef<P> {
        let id: Arc<str> = Arc::from(id.into());
        let route = match &self.route {
            ClientRoute::Local(system) => Route::Local(LocalRoute::new(system.clone())),
            ClientRoute::Remote(connection) => Route::Remote(connection.clone()),
        };
        ActorRef { id, route }
    }
}

/// A generated client stub (`CounterClient` for `trait Counter`).
pub trait RemoteActor: Sized {
    /// The protocol of the actor trait.
    type Protocol: ActorProtocol;

    /// The stub calling through `actor`.
    fn from_ref(actor: ActorRef<Self::Protocol>) -> Self;

    /// The reference the stub calls through.
    fn actor_ref(&self) -> &ActorRef<Self::Protocol>;
}

/// Takes one method's outcome out of a protocol's response (generated code passes a `match` on
/// the method's variant).
pub type Extract<P, R> = fn(<P as ActorProtocol>::Response) -> Option<R>;

/// A reference to one actor over one transport; generated stubs call through it.
pub struct ActorRef<P: ActorProtocol> {
    id: Arc<str>,
    route: Route<P>,
}

enum Route<P: ActorProtocol> {
    Local(LocalRoute<P>),
    Remote(Arc<dyn Connection>),
}

impl<P: ActorProtocol> Clone for ActorRef<P> {
    fn clone(&self) -> Self {
        ActorRef {
            id: self.id.clone(),
            route: match &self.route {
                Route::Local(local) => Route::Local(local.clone()),
                Route::Remote(connection) => Route::Remote(connection.clone()),
            },
        }
    }
}

impl<P: ActorProtocol> fmt::Debug for ActorRef<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let route = match self.route {
            Route::Local(_) => "local",
            Route::Remote(_) => "remote",
        };
        write!(f, "ActorRef<{}>({:?}, {route})", P::TRAIT_NAME, self.id)
    }
}

impl<P: ActorProtocol> ActorRef<P> {
    /// The id the actor is exposed under.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends `request` and waits for the answer; `extract` takes this method's result out of the
    /// protocol's response (generated code passes a `match` on the method's variant).
    ///
    /// In-process, the request goes to the actor's mailbox as it is; remotely, it is encoded in
    /// the connection's encoding and the result decoded as `T` (or the error as `E`).
    pub async fn call<T, E>(
        &self,
        request: P::Request,
        extract: Extract<P, Result<T, E>>,
    ) -> Result<T, E>
    where
        T: DeserializeOwned,
        E: ActorError,
    {
        match &self.route {
            Route::Local(local) => self.ask_local(local, request, extract).await,
            Route::Remote(connection) => {
                let (method, args) = encode_args::<P>(connection, &request)?;
                match connection.invoke(&self.id, method, args).await {
                    Ok(result) => result.decode().map_err(|error| {
                        RemoteError::internal(format!(
                            "cannot decode the result of {}.{method}: {error}",
                            self.id
                        ))
                        .into()
                    }),
                    Err(error) => Err(typed_error(error)),
                }
            }
        }
    }
}

impl<P: ActorProtocol> ActorRef<P> {
    /// Calls a stream method: like [`call`](Self::call), but the result is a stream of `T`.
    pub async fn open_stream<T, E>(
        &self,
        request: P::Request,
        extract: Extract<P, Result<ActorStream<T>, E>>,
    ) -> Result<ActorStream<T>, E>
    where
        T: DeserializeOwned + Send + 'static,
        E: ActorError,
    {
        match &self.route {
            Route::Local(local) => self.ask_local(local, request, extract).await,
            Route::Remote(connection) => {
                let (method, args) = encode_args::<P>(connection, &request)?;
                match connection.open_stream(&self.id, method, args).await {
                    Ok(items) => Ok(decode_stream(items)),
                    Err(error) => Err(typed_error(error)),
                }
            }
        }
    }
}

impl<P: ActorProtocol> ActorRef<P> {
    /// An in-process call: the request goes to the actor as it is.
    async fn ask_local<R, E: From<RemoteError>>(
        &self,
        local: &LocalRoute<P>,
        request: P::Request,
        extract: Extract<P, Result<R, E>>,
    ) -> Result<R, E> {
        let response = local.ask(&self.id, request).await?;
        extract(response).unwrap_or_else(|| {
            Err(RemoteError::internal("the actor answered another method").into())
        })
    }
}

/// The method name and arguments of `request`, in the connection's encoding.
fn encode_args<P: ActorProtocol>(
    connection: &Arc<dyn Connection>,
    request: &P::Request,
) -> Result<(&'static str, Payload), RemoteError> {
    P::encode_request(request, connection.encoding())
        .map_err(|error| RemoteError::bad_request(format!("cannot encode the arguments: {error}")))
}

/// The actor's own error when the remote error carries it, else the remote error converted.
fn typed_error<E: ActorError>(error: RemoteError) -> E {
    if error.code == ErrorCode::ActorError
        && let Some(value) = error.data.as_ref().and_then(|data| data.decode::<E>().ok())
    {
        return value;
    }
    E::from(error)
}
