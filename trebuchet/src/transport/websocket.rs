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

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes, error::CapacityError};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::client::{ClientConfig, ConnectError, Connection};
use crate::codec::Frame;
use crate::multiplex::{Connector, Pool};
use crate::protocol::{Encoding, RemoteError};
use crate::server::connection::{Ending, serve_connection};
use crate::server::streams::StreamRegistry;
use crate::server::{Call, ConnectionInfo, ServerConfig, ServerHandle, refusal_message};
use crate::stream::Reply;
use crate::tls::TlsClientConfig;
use crate::transport::FrameError;
use crate::transport::idle::{Idle, IdleWatch, idle_expired};
use crate::transport::tls::{self, MaybeTls};

/// A WebSocket connection seen as a duplex stream of [`Frame`]s.
///
/// A [`Frame::keepalive`] is sent as a ping. When reading fails because of what the peer sent,
/// the close frame sent on closing carries the status that says why (1009 message too big, 1007
/// invalid UTF-8, 1002 protocol violation).
pub struct WebSocketFrames<S> {
    socket: WebSocketStream<S>,
    idle: Option<IdleWatch>,
    close_frame: Option<CloseFrame>,
    /// The idle timeout the server announced in its upgrade response.
    server_idle_timeout: Option<std::time::Duration>,
    /// The largest message the server announced it accepts in its upgrade response.
    server_max_frame_size: Option<usize>,
}

impl<S> WebSocketFrames<S> {
    /// Wraps an established WebSocket connection.
    pub fn new(socket: WebSocketStream<S>) -> Self {
        WebSocketFrames {
            socket,
            idle: None,
            close_frame: None,
            server_idle_timeout: None,
            server_max_frame_size: None,
        }
    }

    /// Pings the peer after half of `timeout` without anything received from it, and ends the
    /// stream of frames with an error (closing with status 1001) after all of it.
    fn with_idle_timeout(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.idle = timeout.map(IdleWatch::new);
        self
    }
}

/// The close frame that tells the peer why its connection is closed after `error`.
fn close_frame_for(error: &tungstenite::Error) -> Option<CloseFrame> {
    let (code, reason) = match error {
        tungstenite::Error::Capacity(_) => (CloseCode::Size, "message too big"),
        tungstenite::Error::Utf8(_) => (CloseCode::Invalid, "invalid UTF-8 in a text message"),
        tungstenite::Error::Protocol(_) => (CloseCode::Protocol, "WebSocket protocol violation"),
        _ => return None,
    };
    Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    })
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

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocketFrames<S> {
    /// Queues a ping (skipped if the socket cannot take it now: then the peer is not reading
    /// either, and the idle timeout ends the connection).
    fn ping(&mut self, cx: &mut Context<'_>) {
        let mut socket = Pin::new(&mut self.socket);
        if let Poll::Ready(Ok(())) = socket.as_mut().poll_ready(cx)
            && socket
                .as_mut()
                .start_send(Message::Ping(Bytes::new()))
                .is_ok()
        {
            let _ = socket.poll_flush(cx);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocketFrames<S> {
    type Item = Result<Frame, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let polled = Pin::new(&mut self.socket).poll_next(cx);
            let message = match polled {
                Poll::Pending => match self.idle.as_mut().map(|idle| idle.poll(cx)) {
                    Some(Poll::Ready(Idle::Ping)) => {
                        self.ping(cx);
                        continue;
                    }
                    Some(Poll::Ready(Idle::Expired)) => {
                        self.close_frame = Some(CloseFrame {
                            code: CloseCode::Away,
                            reason: Utf8Bytes::from_static("idle timeout"),
                        });
                        return Poll::Ready(Some(Err(FrameError::Io(idle_expired()))));
                    }
                    _ => return Poll::Pending,
                },
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(error))) => {
                    self.close_frame = close_frame_for(&error);
                    return Poll::Ready(frame_error(error).map(Err));
                }
                Poll::Ready(Some(Ok(message))) => message,
            };
            if let Some(idle) = self.idle.as_mut() {
                idle.heard();
            }
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
            _ if frame.is_keepalive() => Message::Ping(Bytes::new()),
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
        if self.close_frame.is_some() {
            ready!(Pin::new(&mut self.socket).poll_ready(cx)).map_err(sink_error)?;
            let frame = self.close_frame.take();
            Pin::new(&mut self.socket)
                .start_send(Message::Close(frame))
                .map_err(sink_error)?;
        }
        Pin::new(&mut self.socket)
            .poll_close(cx)
            .map_err(sink_error)
    }
}

/// The header of the upgrade request and response that names the largest frame (message) its
/// sender accepts, in bytes. Optional: a peer that does not send it gets frames up to the
/// receiver's own limit.
const MAX_FRAME_HEADER: &str = "x-trebuchet-max-frame";

/// The header of the upgrade response that names the server's idle timeout in milliseconds.
const IDLE_TIMEOUT_HEADER: &str = "x-trebuchet-idle-timeout-ms";

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
    crate::server::listen(listener, url, service, config, serve_socket, refuse_socket)
}

/// Refuses a connection past the server's limit: its upgrade request is answered with HTTP 503
/// and the reason in the body.
async fn refuse_socket(stream: TcpStream, peer_addr: SocketAddr, config: ServerConfig) {
    // (The listener bounds how long a refusal may take, the TLS handshake included.)
    let deadline = Instant::now() + config.handshake_timeout;
    let Some(stream) = tls::accept(stream, config.tls.as_ref(), deadline, PLAIN_REFUSAL).await
    else {
        return;
    };
    #[allow(clippy::result_large_err)] // the error type is tungstenite's
    let refuse = |_: &Request, _: Response| {
        let mut refusal = ErrorResponse::new(Some(refusal_message(config.max_connections)));
        *refusal.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        Err(refusal)
    };
    let _ = tokio_tungstenite::accept_hdr_async(stream, refuse).await;
    tracing::debug!(%peer_addr, "WebSocket connection refused: at the connection limit");
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
    let mut peer_max_frame_size = None;
    let idle_timeout = config.idle_timeout;
    let own_max_frame_size = config.max_frame_size;
    #[allow(clippy::result_large_err)] // the error type is tungstenite's
    let callback = |request: &Request, mut response: Response| {
        peer_max_frame_size = request
            .headers()
            .get(MAX_FRAME_HEADER)
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
        let headers = response.headers_mut();
        headers.insert(MAX_FRAME_HEADER, own_max_frame_size.into());
        if let Some(timeout) = idle_timeout {
            headers.insert(IDLE_TIMEOUT_HEADER, (timeout.as_millis() as u64).into());
        }
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
    // Nothing larger than the client accepts is sent to it.
    let mut config = config;
    if let Some(peer_max) = peer_max_frame_size {
        config.max_frame_size = config.max_frame_size.min(peer_max);
    }
    let (uri, headers) = upgrade.unzip();
    let connection = Arc::new(ConnectionInfo {
        transport: "websocket",
        peer_addr: Some(peer_addr),
        uri,
        headers: headers.unwrap_or_default(),
    });
    tracing::debug!(%peer_addr, "WebSocket connection open");
    let mut frames = WebSocketFrames::new(socket).with_idle_timeout(config.idle_timeout);
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

    fn server_idle_timeout(io: &Self::Io) -> Option<std::time::Duration> {
        io.server_idle_timeout
    }

    fn server_max_frame_size(io: &Self::Io) -> Option<usize> {
        io.server_max_frame_size
    }

    async fn connect(&self) -> io::Result<Self::Io> {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(io::Error::other)?;
        request
            .headers_mut()
            .insert(MAX_FRAME_HEADER, self.max_frame_size.into());
        let stream = TcpStream::connect(self.authority.as_str()).await?;
        let _ = stream.set_nodelay(true);
        let stream = match &self.tls {
            Some(config) => tls::connect(config, stream, &self.host).await?,
            None => MaybeTls::Plain(stream),
        };
        let (socket, response) = tokio_tungstenite::client_async_with_config(
            request,
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
        let mut frames = WebSocketFrames::new(socket);
        frames.server_idle_timeout = response
            .headers()
            .get(IDLE_TIMEOUT_HEADER)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
            .filter(|millis| *millis > 0)
            .map(std::time::Duration::from_millis);
        frames.server_max_frame_size = response
            .headers()
            .get(MAX_FRAME_HEADER)
            .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
        Ok(frames)
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
