//! Transports: how calls travel between a client and the actors.
//!
//! | variant | module | encoding | notes |
//! |---|---|---|---|
//! | [`Transport::Local`] | [`local`] | none (typed messages) | same process, straight into the actor's mailbox |
//! | [`Transport::WebSocket`] | [`websocket`] | bincode (binary frames) or JSON (text frames) | one multiplexed connection per client; `wss://` over TLS ([`crate::tls`]) |
//! | [`Transport::Tcp`] | [`tcp`] | bincode (length-prefixed frames) | one multiplexed connection per client; `tls://host:port` over TLS ([`crate::tls`]) |
//! | [`Transport::Custom`] | another crate (e.g. `trebuchet-aws`'s Lambda invoke transport) | its own | made by a [`Connector`] |
//!
//! Network transports differ only in framing: they turn their byte stream into [`Frame`]s, and
//! the shared client ([`crate::client::Connection`]) and server connection loops do the rest.

use std::fmt;
use std::io;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use tokio::io::AsyncRead;

use futures_util::{Sink, Stream};

pub use crate::codec::Frame;

pub(crate) mod idle;
pub mod local;
pub mod tcp;
pub(crate) mod tls;
pub mod websocket;

/// Where a [`crate::Client`] sends its calls. Chosen at run time, so the same actor code runs on
/// every transport.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// The actors of the [`crate::ActorSystem`] the client was made from, in this process.
    Local,
    /// A Trebuchet WebSocket server, e.g. `ws://127.0.0.1:9090/`, or over TLS
    /// `wss://api.example.com/prod` (verified with [`ClientConfig::tls`](crate::ClientConfig::tls)).
    WebSocket(String),
    /// A Trebuchet TCP server, `host:port`, e.g. `127.0.0.1:9091`, or over TLS
    /// `tls://host:port` (verified with [`ClientConfig::tls`](crate::ClientConfig::tls), the
    /// host being the name checked).
    Tcp(String),
    /// A transport defined in another crate, such as the AWS Lambda invoke transport of
    /// `trebuchet-aws` (`Transport::from(LambdaTransport::…)`).
    Custom(CustomTransport),
}

/// Makes the client connection of a transport defined outside this crate.
pub trait Connector: Send + Sync + 'static {
    /// A short name for logs and `Debug`, e.g. `"lambda:counter"`.
    fn describe(&self) -> String;

    /// Opens (or prepares) a connection with the client settings `config`.
    fn connect(
        &self,
        config: crate::ClientConfig,
    ) -> BoxFuture<'_, Result<Arc<dyn crate::Connection>, crate::ConnectError>>;
}

/// A [`Connector`] inside a [`Transport`]. Two are equal when they are the same connector.
#[derive(Clone)]
pub struct CustomTransport(pub Arc<dyn Connector>);

impl fmt::Debug for CustomTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomTransport({})", self.0.describe())
    }
}

impl PartialEq for CustomTransport {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for CustomTransport {}

impl<C: Connector> From<C> for CustomTransport {
    fn from(connector: C) -> Self {
        CustomTransport(Arc::new(connector))
    }
}

/// A transport-level failure of a frame stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer sent a frame over the configured limit. The connection must be closed: the
    /// framing cannot be trusted after it.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced size of the frame.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The peer broke the transport's framing rules.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The underlying connection failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A duplex stream of frames: what a network transport provides to the shared connection code.
pub(crate) trait FrameIo:
    Stream<Item = Result<Frame, FrameError>> + Sink<Frame, Error = FrameError> + Unpin + Send
{
}

impl<T> FrameIo for T where
    T: Stream<Item = Result<Frame, FrameError>> + Sink<Frame, Error = FrameError> + Unpin + Send
{
}

/// Reads and discards what the peer still sends, until it closes or for at most a second (and
/// 64 MiB), so that closing the socket does not reset the connection under the last answer.
pub(crate) async fn drain_input(stream: &mut (impl AsyncRead + Unpin)) {
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut budget: usize = 64 * 1024 * 1024;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    while budget > 0 {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(read)) if read > 0 => budget = budget.saturating_sub(read),
            _ => return,
        }
    }
}
