//! The TCP transport: length-prefixed binary frames.
//!
//! Every frame is a 4-byte big-endian length, then that many bytes. The first frame in each
//! direction is a [`Handshake`] (protocol version and encoding, then in its extended form the
//! sender's [`Limits`]); an empty frame is a keepalive; every other frame after it is one
//! bincode envelope, exactly as in WebSocket binary messages. The length is checked against the
//! limit before any buffer is reserved for the frame.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder, Framed};
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::client::{ClientConfig, ConnectError, Connection};
use crate::codec::{self, Frame, encode_or_internal};
use crate::multiplex::{Connector, Pool};
use crate::protocol::{
    Encoding, Envelope, PROTOCOL_VERSION, RemoteError, Response, decode_bincode,
};
use crate::server::connection::{Ending, serve_connection};
use crate::server::streams::StreamRegistry;
use crate::server::{Call, ConnectionInfo, ServerConfig, ServerHandle, refusal_message};
use crate::stream::Reply;
use crate::tls::TlsClientConfig;
use crate::transport::FrameError;
use crate::transport::idle::{Idle, IdleWatch, idle_expired};
use crate::transport::tls::{self, MaybeTls};

/// The first frame of a TCP connection, in each direction: `b"TRBT"`, the protocol version and
/// the encoding of the frames that follow (always bincode on TCP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// Always `b"TRBT"`, so a stray client of another protocol is refused at once.
    pub magic: [u8; 4],
    /// [`PROTOCOL_VERSION`].
    pub version: u32,
    /// The encoding of the envelopes that follow.
    pub encoding: Encoding,
}

impl Handshake {
    const MAGIC: [u8; 4] = *b"TRBT";

    /// The handshake this crate sends.
    pub fn current() -> Self {
        Handshake {
            magic: Self::MAGIC,
            version: PROTOCOL_VERSION,
            encoding: Encoding::Bincode,
        }
    }

    fn to_frame(&self) -> Frame {
        let data = bincode::serde::encode_to_vec(self, crate::protocol::bincode_config())
            .expect("a handshake always encodes");
        Frame {
            encoding: Encoding::Bincode,
            data: data.into(),
        }
    }

    /// The handshake frame followed, in the extended form, by `limits`.
    fn to_frame_with(&self, limits: Option<Limits>) -> Frame {
        let mut frame = self.to_frame();
        if let Some(limits) = limits {
            let mut data = frame.data.to_vec();
            bincode::serde::encode_into_std_write(
                limits,
                &mut data,
                crate::protocol::bincode_config(),
            )
            .expect("limits always encode");
            frame.data = data.into();
        }
        frame
    }

    /// Reads and checks a peer's handshake, and the limits that follow it in the extended form.
    fn check(frame: &Frame) -> Result<Option<Limits>, String> {
        let not_a_handshake = || "the first frame is not a Trebuchet handshake".to_owned();
        let (handshake, limits): (Handshake, _) = match decode_bincode(&frame.data) {
            Ok((handshake, read)) if read == frame.data.len() => (handshake, None),
            Ok((handshake, read)) => match decode_bincode::<Limits>(&frame.data[read..]) {
                Ok((limits, rest)) if read + rest == frame.data.len() => (handshake, Some(limits)),
                _ => return Err(not_a_handshake()),
            },
            _ => return Err(not_a_handshake()),
        };
        if handshake.magic != Self::MAGIC {
            return Err("the first frame is not a Trebuchet handshake".into());
        }
        if handshake.version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {} is not supported (this peer speaks {PROTOCOL_VERSION})",
                handshake.version
            ));
        }
        if handshake.encoding != Encoding::Bincode {
            return Err("TCP frames are bincode only".into());
        }
        Ok(limits)
    }
}

/// What the extended handshake adds after the 6 bytes: the largest frame its sender accepts, and
/// the idle timeout it applies to the connection in milliseconds (0: none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The largest frame the sender accepts, in bytes.
    pub max_frame_size: u64,
    /// After how many milliseconds without a frame the sender closes the connection (0: never).
    pub idle_timeout_ms: u64,
}

impl Limits {
    fn new(max_frame_size: usize, idle_timeout: Option<std::time::Duration>) -> Self {
        Limits {
            max_frame_size: max_frame_size as u64,
            idle_timeout_ms: idle_timeout.map_or(0, |timeout| timeout.as_millis().max(1) as u64),
        }
    }
}

/// The error a server answered instead of its handshake (it refuses the connection).
fn refusal(frame: &Frame) -> Option<RemoteError> {
    match codec::decode(frame) {
        Ok(Envelope::Response(Response {
            call_id: None,
            outcome: Err(error),
        })) => Some(error),
        _ => None,
    }
}

/// 4-byte big-endian length, then the frame.
struct LengthPrefixed {
    max_frame_size: usize,
}

impl Decoder for LengthPrefixed {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(header) = src.get(..4) else {
            return Ok(None);
        };
        let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if size > self.max_frame_size {
            return Err(FrameError::TooLarge {
                size,
                max: self.max_frame_size,
            });
        }
        if src.len() < 4 + size {
            src.reserve(4 + size - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(Frame {
            encoding: Encoding::Bincode,
            data: src.split_to(size).freeze(),
        }))
    }
}

impl Encoder<Frame> for LengthPrefixed {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        if frame.encoding != Encoding::Bincode {
            return Err(FrameError::Protocol("TCP frames are bincode only".into()));
        }
        let size = u32::try_from(frame.data.len())
            .map_err(|_| FrameError::Protocol("frame over 4 GiB".into()))?;
        dst.reserve(4 + frame.data.len());
        dst.put_u32(size);
        dst.extend_from_slice(&frame.data);
        Ok(())
    }
}

/// A TCP connection (after the handshake), with or without TLS, as a duplex stream of
/// [`Frame`]s.
///
/// An empty frame is a keepalive ([`Frame::keepalive`]): it is skipped on reading.
pub struct TcpFrames {
    framed: Framed<MaybeTls, LengthPrefixed>,
    idle: Option<IdleWatch>,
    /// The limits the peer announced in its handshake.
    peer_limits: Option<Limits>,
}

impl TcpFrames {
    fn new(stream: MaybeTls, max_frame_size: usize) -> Self {
        TcpFrames {
            framed: Framed::new(stream, LengthPrefixed { max_frame_size }),
            idle: None,
            peer_limits: None,
        }
    }

    /// The client's handshake: sends ours (extended with `limits` if given), then checks the
    /// server's and returns the limits it announced (`None`: the server sent the 6-byte form).
    async fn client_handshake(
        &mut self,
        limits: Option<Limits>,
    ) -> Result<Option<Limits>, FrameError> {
        self.send(Handshake::current().to_frame_with(limits))
            .await?;
        let frame = self.handshake_frame().await?;
        Handshake::check(&frame).map_err(|error| match refusal(&frame) {
            Some(refused) => {
                FrameError::Protocol(format!("the server refused the connection: {refused}"))
            }
            None => FrameError::Protocol(error),
        })
    }

    /// The server's handshake: checks the client's, then answers in the same form (extended
    /// with `limits` only to a client that sent the extended form: an older client accepts only
    /// the 6 bytes). Returns the limits the client announced.
    async fn server_handshake(&mut self, limits: Limits) -> Result<Option<Limits>, FrameError> {
        let frame = self.handshake_frame().await?;
        let peer = Handshake::check(&frame).map_err(FrameError::Protocol)?;
        let ours = peer.map(|_| limits);
        self.send(Handshake::current().to_frame_with(ours)).await?;
        Ok(peer)
    }

    async fn handshake_frame(&mut self) -> Result<Frame, FrameError> {
        match self.framed.next().await {
            Some(frame) => frame,
            // What a TLS server does to a client without TLS.
            None => Err(FrameError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection during the handshake \
                 (if the server requires TLS, connect to tls://host:port)",
            ))),
        }
    }
}

impl Stream for TcpFrames {
    type Item = Result<Frame, FrameError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let frame = match self.framed.poll_next_unpin(cx) {
                Poll::Ready(frame) => frame,
                // TCP has no ping: a peer that says nothing for the whole timeout is closed.
                Poll::Pending => match self.idle.as_mut().map(|idle| idle.poll(cx)) {
                    Some(Poll::Ready(Idle::Ping)) => continue,
                    Some(Poll::Ready(Idle::Expired)) => {
                        return Poll::Ready(Some(Err(FrameError::Io(idle_expired()))));
                    }
                    _ => return Poll::Pending,
                },
            };
            if let Some(idle) = self.idle.as_mut() {
                idle.heard();
            }
            match frame {
                Some(Ok(frame)) if frame.is_keepalive() => continue,
                other => return Poll::Ready(other),
            }
        }
    }
}

impl Sink<Frame> for TcpFrames {
    type Error = FrameError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        self.framed.poll_ready_unpin(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), FrameError> {
        self.framed.start_send_unpin(frame)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        self.framed.poll_flush_unpin(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        self.framed.poll_close_unpin(cx)
    }
}

/// Serves `service` over TCP on `addr` (port 0 picks a free port) until the returned handle is
/// shut down or dropped. Every connection gets its own clone of `service`.
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
    let url = match config.tls {
        Some(_) => format!("{TLS_SCHEME}{}", listener.local_addr()?),
        None => listener.local_addr()?.to_string(),
    };
    crate::server::listen(listener, url, service, config, serve_socket, refuse_socket)
}

/// Refuses a connection past the server's limit: a `response` with `unavailable` (and no
/// `callId`) instead of the handshake, which the Rust client reports as the reason it could not
/// connect.
async fn refuse_socket(stream: TcpStream, peer_addr: SocketAddr, config: ServerConfig) {
    // (The listener bounds how long a refusal may take, the TLS handshake included.)
    let deadline = Instant::now() + config.handshake_timeout;
    let Some(stream) = tls::accept(stream, config.tls.as_ref(), deadline, &[]).await else {
        return;
    };
    let mut frames = TcpFrames::new(stream, config.max_frame_size);
    // The client's handshake is read first, so that closing the socket does not reset the
    // connection under the refusal.
    let _ = frames.next().await;
    let refusal = Envelope::Response(Response {
        call_id: None,
        outcome: Err(RemoteError::unavailable(refusal_message(
            config.max_connections,
        ))),
    });
    let _ = frames
        .send(encode_or_internal(&refusal, Encoding::Bincode))
        .await;
    let _ = frames.close().await;
    tracing::debug!(%peer_addr, "TCP connection refused: at the connection limit");
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
    // A client without TLS gets no answer: the TCP handshake has no way to say why.
    let Some(stream) = tls::accept(stream, config.tls.as_ref(), deadline, &[]).await else {
        return;
    };
    let mut frames = TcpFrames::new(stream, config.max_frame_size);
    let limits = Limits::new(config.max_frame_size, config.idle_timeout);
    let handshake = frames.server_handshake(limits);
    let mut config = config;
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(peer)) => {
            // Nothing larger than the client accepts is sent to it.
            if let Some(peer) = peer {
                let peer_max = usize::try_from(peer.max_frame_size).unwrap_or(usize::MAX);
                config.max_frame_size = config.max_frame_size.min(peer_max);
            }
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer_addr, %error, "TCP handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer_addr, "TCP handshake timed out");
            return;
        }
    }
    frames.idle = config.idle_timeout.map(IdleWatch::new);
    let connection = Arc::new(ConnectionInfo {
        transport: "tcp",
        peer_addr: Some(peer_addr),
        ..ConnectionInfo::default()
    });
    tracing::debug!(%peer_addr, "TCP connection open");
    let ending = serve_connection(
        &mut frames,
        service,
        connection,
        config,
        registry,
        shutdown,
        Encoding::Bincode,
    )
    .await;
    if ending == Ending::DrainInput {
        super::drain_input(frames.framed.get_mut()).await;
    }
    tracing::debug!(%peer_addr, "TCP connection closed");
}

/// The prefix of a TCP address that asks for TLS: `tls://host:port`.
const TLS_SCHEME: &str = "tls://";

/// Opens TCP connections to one address.
struct TcpConnector {
    /// As the user gave it (for logs and errors).
    address: String,
    /// `host:port`.
    authority: String,
    /// Set for `tls://` addresses.
    tls: Option<TlsClientConfig>,
    max_frame_size: usize,
}

impl Connector for TcpConnector {
    type Io = TcpFrames;

    fn peer(&self) -> &str {
        &self.address
    }

    fn server_max_frame_size(io: &TcpFrames) -> Option<usize> {
        let limits = io.peer_limits?;
        Some(usize::try_from(limits.max_frame_size).unwrap_or(usize::MAX))
    }

    fn server_idle_timeout(io: &TcpFrames) -> Option<std::time::Duration> {
        io.peer_limits
            .filter(|limits| limits.idle_timeout_ms > 0)
            .map(|limits| std::time::Duration::from_millis(limits.idle_timeout_ms))
    }

    async fn connect(&self) -> io::Result<TcpFrames> {
        let limits = Limits::new(self.max_frame_size, None);
        let (frames, server) = self.open(Some(limits)).await?;
        if server.is_some() {
            return Ok(frames);
        }
        // A server that answers the 6-byte form refuses the extended one: speak its form.
        drop(frames);
        Ok(self.open(None).await?.0)
    }
}

impl TcpConnector {
    async fn open(&self, limits: Option<Limits>) -> io::Result<(TcpFrames, Option<Limits>)> {
        let stream = TcpStream::connect(self.authority.as_str()).await?;
        let _ = stream.set_nodelay(true);
        let stream = match &self.tls {
            Some(config) => {
                let host = self
                    .authority
                    .rsplit_once(':')
                    .map_or(self.authority.as_str(), |(host, _port)| host);
                tls::connect(config, stream, host).await?
            }
            None => MaybeTls::Plain(stream),
        };
        let mut frames = TcpFrames::new(stream, self.max_frame_size);
        let server = frames
            .client_handshake(limits)
            .await
            .map_err(|error| match error {
                FrameError::Io(error) => error,
                other => io::Error::other(other.to_string()),
            })?;
        frames.peer_limits = server;
        Ok((frames, server))
    }
}

/// Connects a multiplexed, reconnecting client to the server at `address` (`host:port`, or
/// `tls://host:port` for TLS).
pub(crate) async fn connect(
    address: &str,
    config: ClientConfig,
) -> Result<Arc<dyn Connection>, ConnectError> {
    let (authority, tls) = match address.strip_prefix(TLS_SCHEME) {
        Some(authority) => (authority, Some(config.tls.clone())),
        None => (address, None),
    };
    if !authority.contains(':') || authority.contains('/') {
        return Err(ConnectError::InvalidAddress {
            address: address.to_owned(),
            reason: "expected host:port or tls://host:port".into(),
        });
    }
    let mut config = config;
    // Every TCP frame is bincode.
    config.encoding = Encoding::Bincode;
    let max_frame_size = config.max_frame_size;
    let connector = || TcpConnector {
        address: address.to_owned(),
        authority: authority.to_owned(),
        tls: tls.clone(),
        max_frame_size,
    };
    Pool::connect(connector, config)
        .await
        .map_err(|source| tls::connect_error(address, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_length_prefixed_and_checked_before_reserving() {
        let mut codec = LengthPrefixed { max_frame_size: 8 };
        let mut buffer = BytesMut::new();
        codec
            .encode(
                Frame {
                    encoding: Encoding::Bincode,
                    data: vec![1, 2, 3].into(),
                },
                &mut buffer,
            )
            .unwrap();
        assert_eq!(&buffer[..], &[0, 0, 0, 3, 1, 2, 3]);
        let frame = codec.decode(&mut buffer).unwrap().unwrap();
        assert_eq!(&frame.data[..], &[1, 2, 3]);

        let mut hostile = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0][..]);
        match codec.decode(&mut hostile) {
            Err(FrameError::TooLarge { size, max: 8 }) => assert_eq!(size, u32::MAX as usize),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(
            hostile.capacity() < 1024,
            "nothing was reserved for the frame"
        );
    }

    #[test]
    fn the_handshake_is_the_six_bytes_in_the_protocol_document() {
        let frame = Handshake::current().to_frame();
        assert_eq!(&frame.data[..], &[0x54, 0x52, 0x42, 0x54, 0x01, 0x01]);
    }

    #[test]
    fn the_extended_handshake_appends_the_limits_and_both_forms_are_read() {
        let limits = Limits {
            max_frame_size: 65536,
            idle_timeout_ms: 0,
        };
        let frame = Handshake::current().to_frame_with(Some(limits));
        // 65536 is a varint of 5 bytes (252: a u32 follows), 0 one byte.
        assert_eq!(
            &frame.data[..],
            &[
                0x54, 0x52, 0x42, 0x54, 0x01, 0x01, 0xfc, 0x00, 0x00, 0x01, 0x00, 0x00
            ]
        );
        assert_eq!(Handshake::check(&frame), Ok(Some(limits)));
        assert_eq!(Handshake::check(&Handshake::current().to_frame()), Ok(None));
        let mut truncated = frame.clone();
        truncated.data = frame.data.slice(..8);
        assert!(Handshake::check(&truncated).is_err());
    }

    #[test]
    fn handshakes_are_checked() {
        assert!(Handshake::check(&Handshake::current().to_frame()).is_ok());
        let mut old = Handshake::current();
        old.version = 0;
        assert!(
            Handshake::check(&old.to_frame())
                .unwrap_err()
                .contains("version")
        );
        let junk = Frame {
            encoding: Encoding::Bincode,
            data: b"GET / HTTP/1.1\r\n".to_vec().into(),
        };
        assert!(Handshake::check(&junk).is_err());
    }
}
