//! The WebSocket transport (tokio-tungstenite).
//!
//! One envelope per message: text messages carry JSON, binary messages carry bincode. The server
//! answers each frame in the encoding it came in; the Rust client sends binary frames unless
//! configured otherwise. Both ends enforce the frame limit before reading a frame's payload.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes, error::CapacityError};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::client::{ClientConfig, ConnectError, Connection};
use crate::codec::Frame;
use crate::multiplex::{Connector, Pool};
use crate::protocol::{Encoding, RemoteError};
use crate::server::connection::{Ending, serve_connection};
use crate::server::streams::StreamRegistry;
use crate::server::{Call, ConnectionInfo, ServerConfig, ServerHandle};
use crate::stream::Reply;
use crate::tls::TlsClientConfig;
use crate::transport::FrameError;
use crate::transport::tls::{self, MaybeTls};

/// A WebSocket connection seen as a duplex stream of [`Frame`]s.
pub struct WebSocketFrames<S> {
    socket: WebSocketStream<S>,
}

impl<S> WebSocketFrames<S> {
    /// Wraps an established WebSocket connection.
    pub fn new(socket: WebSocketStream<S>) -> Self {
        WebSocketFrames { socket }
    }
}

fn frame_error(error: tungstenite::Error) -> Option<FrameError> {
    match error {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => None,
        tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            Some(FrameError::TooLarge {
                size,
                max: max_size,
            })
        }
        tungstenite::Error::Io(error) => Some(FrameError::Io(error)),
        other => Some(FrameError::Protocol(other.to_string())),
    }
}

fn sink_error(error: tungstenite::Error) -> FrameError {
    frame_error(error).unwrap_or_else(|| {
        FrameError::Io(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the WebSocket is closed",
        ))
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocketFrames<S> {
    type Item = Result<Frame, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let message = match ready!(Pin::new(&mut self.socket).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(error)) => return Poll::Ready(frame_error(error).map(Err)),
                Some(Ok(message)) => message,
            };
            let frame = match message {
                Message::Text(text) => Frame {
                    encoding: Encoding::Json,
                    data: text.into(),
                },
                Message::Binary(data) => Frame {
                    encoding: Encoding::Bincode,
                    data,
                },
                Message::Close(_) => return Poll::Ready(None),
                // Pings are answered by tungstenite itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return Poll::Ready(Some(Ok(frame)));
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Frame> for WebSocketFrames<S> {
    type Error = FrameError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Pin::new(&mut self.socket)
            .poll_ready(cx)
            .map_err(sink_error)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
        let message = match frame.encoding {
            Encoding::Json => Message::Text(
                Utf8Bytes::try_from(frame.data)
                    .map_err(|error| FrameError::Protocol(error.to_string()))?,
            ),
            Encoding::Bincode => Message::Binary(frame.data),
        };
        Pin::new(&mut self.socket)
            .start_send(message)
            .map_err(sink_error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Pin::new(&mut self.socket)
            .poll_flush(cx)
            .map_err(sink_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        Pin::new(&mut self.socket)
            .poll_close(cx)
            .map_err(sink_error)
    }
}

/// tungstenite zeroes its whole read buffer before every read, so a large one (the default is
/// 128 KiB) costs microseconds per call even for small frames; large frames just take a few
/// more reads.
const READ_BUFFER_SIZE: usize = 16 * 1024;

fn websocket_config(max_frame_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame_size))
        .max_frame_size(Some(max_frame_size))
        .read_buffer_size(READ_BUFFER_SIZE)
        .write_buffer_size(0)
}

/// Serves `service` over WebSocket on `addr` (port 0 picks a free port) until the returned
/// handle is shut down or dropped. Every connection gets its own clone of `service`.
pub async fn serve<S>(
    addr: SocketAddr,
    service: S,
    config: ServerConfig,
) -> io::Result<ServerHandle>
where
    S: Service<Call, Response = Reply, Error = RemoteError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    serve_listener(listener, service, config)
}

/// Serves `service` over WebSocket on an already bound listener.
pub fn serve_listener<S>(
    listener: TcpListener,
    service: S,
    config: ServerConfig,
) -> io::Result<ServerHandle>
where
    S: Service<Call, Response = Reply, Error = RemoteError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let scheme = if config.tls.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{}/", listener.local_addr()?);
    crate::server::listen(listener, url, service, config, serve_socket)
}

async fn serve_socket<S>(
    stream: TcpStream,
    peer_addr: SocketAddr,
    service: S,
    config: ServerConfig,
    registry: Arc<StreamRegistry>,
    shutdown: CancellationToken,
) where
    S: Service<Call, Response = Reply, Error = RemoteError> + Send + 'static,
    S::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + config.handshake_timeout;
    let Some(stream) = tls::accept(stream, config.tls.as_ref(), deadline, PLAIN_REFUSAL).await
    else {
        return;
    };
    let mut upgrade = None;
    #[allow(clippy::result_large_err)] // the error type is tungstenite's
    let callback = |request: &Request, response: Response| {
        upgrade = Some((request.uri().clone(), request.headers().clone()));
        Ok(response)
    };
    let handshake = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(websocket_config(config.max_frame_size)),
    );
    let socket = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => {
            tracing::debug!(%peer_addr, %error, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer_addr, "WebSocket handshake timed out");
            return;
        }
    };
    let (uri, headers) = upgrade.unzip();
    let connection = Arc::new(ConnectionInfo {
        transport: "websocket",
        peer_addr: Some(peer_addr),
        uri,
        headers: headers.unwrap_or_default(),
    });
    tracing::debug!(%peer_addr, "WebSocket connection open");
    let mut frames = WebSocketFrames::new(socket);
    let ending = serve_connection(
        &mut frames,
        service,
        connection,
        config,
        registry,
        shutdown,
        Encoding::Json,
    )
    .await;
    if ending == Ending::DrainInput {
        super::drain_input(frames.socket.get_mut()).await;
    }
    tracing::debug!(%peer_addr, "WebSocket connection closed");
}

/// What a TLS WebSocket server answers a client that connects without TLS.
const PLAIN_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
connection: close\r\n\
content-type: text/plain\r\n\
content-length: 46\r\n\
\r\n\
this server requires TLS: connect with wss://\n";

/// Opens WebSocket connections to one URL.
struct WebSocketConnector {
    url: String,
    /// `host:port`, to open the TCP connection to.
    authority: String,
    host: String,
    /// Set for `wss://`.
    tls: Option<TlsClientConfig>,
    max_frame_size: usize,
}

impl Connector for WebSocketConnector {
    type Io = WebSocketFrames<MaybeTls>;

    fn peer(&self) -> &str {
        &self.url
    }

    async fn connect(&self) -> io::Result<Self::Io> {
        let stream = TcpStream::connect(self.authority.as_str()).await?;
        let _ = stream.set_nodelay(true);
        let stream = match &self.tls {
            Some(config) => tls::connect(config, stream, &self.host).await?,
            None => MaybeTls::Plain(stream),
        };
        let (socket, _response) = tokio_tungstenite::client_async_with_config(
            self.url.as_str(),
            stream,
            Some(websocket_config(self.max_frame_size)),
        )
        .await
        .map_err(|error| match error {
            tungstenite::Error::Io(error) => error,
            tungstenite::Error::Http(response) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let mut message = format!(
                    "the server refused the WebSocket upgrade: {}",
                    response.status()
                );
                if !body.trim().is_empty() {
                    message = format!("{message}: {}", body.trim());
                }
                io::Error::other(message)
            }
            other => io::Error::other(other.to_string()),
        })?;
        Ok(WebSocketFrames::new(socket))
    }
}

/// Connects a multiplexed, reconnecting client to the server at `url` (`ws://host:port/path`).
pub(crate) async fn connect(
    url: &str,
    config: ClientConfig,
) -> Result<Arc<dyn Connection>, ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidAddress {
        address: url.to_owned(),
        reason,
    };
    let request = url
        .into_client_request()
        .map_err(|error| invalid(error.to_string()))?;
    let uri = request.uri();
    let (tls, default_port) = match uri.scheme_str() {
        Some("ws") => (None, 80),
        Some("wss") => (Some(config.tls.clone()), 443),
        _ => return Err(invalid("the URL must start with ws:// or wss://".into())),
    };
    let host = uri
        .host()
        .ok_or_else(|| invalid("the URL has no host".into()))?
        .to_owned();
    let authority = format!("{host}:{}", uri.port_u16().unwrap_or(default_port));
    let max_frame_size = config.max_frame_size;
    let connector = || WebSocketConnector {
        url: url.to_owned(),
        authority: authority.clone(),
        host: host.clone(),
        tls: tls.clone(),
        max_frame_size,
    };
    Pool::connect(connector, config)
        .await
        .map_err(|source| tls::connect_error(url, source))
}
