//! Raw connections that send and read envelopes (bincode) over WebSocket or TCP, to send what the
//! Rust client never would, as fast as an attacker would.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use trebuchet::codec::{self, Frame};
use trebuchet::protocol::{Cancel, Envelope, Invocation};
use trebuchet::transport::tcp::Handshake;
use trebuchet::{Encoding, Metadata, Payload, ServerHandle};

/// The transport of a raw connection.
#[derive(Clone, Copy, Debug)]
pub enum Wire {
    WebSocket,
    Tcp,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The sending half of a raw connection.
pub enum RawSender {
    WebSocket(SplitSink<Socket, Message>),
    Tcp(BufWriter<OwnedWriteHalf>),
}

/// The receiving half of a raw connection.
pub enum RawReceiver {
    WebSocket(SplitStream<Socket>),
    Tcp(BufReader<OwnedReadHalf>),
}

/// A raw connection to `server` (a WebSocket or TCP server, as `wire` says), handshake done.
pub async fn connect(wire: Wire, server: &ServerHandle) -> (RawSender, RawReceiver) {
    match wire {
        Wire::WebSocket => {
            let (socket, _) = tokio_tungstenite::connect_async(server.url())
                .await
                .unwrap();
            let (sink, stream) = socket.split();
            (RawSender::WebSocket(sink), RawReceiver::WebSocket(stream))
        }
        Wire::Tcp => {
            let stream = TcpStream::connect(server.local_addr()).await.unwrap();
            let (read, write) = stream.into_split();
            let (mut sender, mut receiver) = (
                RawSender::Tcp(BufWriter::new(write)),
                RawReceiver::Tcp(BufReader::new(read)),
            );
            let handshake =
                bincode::serde::encode_to_vec(Handshake::current(), bincode::config::standard())
                    .unwrap();
            sender.feed_bytes(&handshake).await;
            sender.flush().await;
            assert_eq!(receiver.next_bytes().await.unwrap(), handshake);
            (sender, receiver)
        }
    }
}

/// An `invocation` of `method` of `actor` with the arguments `args` (bincode).
pub fn invocation(call_id: u64, actor: &str, method: &str, args: Payload) -> Envelope {
    Envelope::Invocation(Invocation {
        call_id,
        actor_id: actor.into(),
        method: method.into(),
        args,
        metadata: Metadata::new(),
    })
}

/// A `cancel` of `call_id`.
pub fn cancel(call_id: u64) -> Envelope {
    Envelope::Cancel(Cancel { call_id })
}

impl RawSender {
    /// Queues `envelope` (sent at the next flush, or when the buffer is full).
    pub async fn feed(&mut self, envelope: &Envelope) {
        let frame = codec::encode(envelope, Encoding::Bincode).unwrap();
        self.feed_bytes(&frame.data).await;
    }

    async fn feed_bytes(&mut self, data: &[u8]) {
        match self {
            RawSender::WebSocket(sink) => sink
                .feed(Message::Binary(data.to_vec().into()))
                .await
                .unwrap(),
            RawSender::Tcp(writer) => {
                writer
                    .write_all(&(data.len() as u32).to_be_bytes())
                    .await
                    .unwrap();
                writer.write_all(data).await.unwrap();
            }
        }
    }

    pub async fn flush(&mut self) {
        match self {
            RawSender::WebSocket(sink) => sink.flush().await.unwrap(),
            RawSender::Tcp(writer) => writer.flush().await.unwrap(),
        }
    }

    pub async fn send(&mut self, envelope: &Envelope) {
        self.feed(envelope).await;
        self.flush().await;
    }

    /// Closes the connection (a WebSocket close frame; a TCP shutdown).
    pub async fn close(self) {
        match self {
            RawSender::WebSocket(mut sink) => {
                let _ = sink.close().await;
            }
            RawSender::Tcp(mut writer) => {
                let _ = writer.shutdown().await;
            }
        }
    }
}

impl RawReceiver {
    /// The next envelope, `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Envelope> {
        let data = self.next_bytes().await?;
        Some(
            codec::decode(&Frame {
                encoding: Encoding::Bincode,
                data: data.into(),
            })
            .unwrap(),
        )
    }

    async fn next_bytes(&mut self) -> Option<Vec<u8>> {
        match self {
            RawReceiver::WebSocket(stream) => loop {
                match stream.next().await? {
                    Ok(Message::Binary(data)) => return Some(data.to_vec()),
                    Ok(Message::Close(_)) | Err(_) => return None,
                    Ok(_) => {}
                }
            },
            RawReceiver::Tcp(reader) => {
                let mut header = [0u8; 4];
                reader.read_exact(&mut header).await.ok()?;
                let mut data = vec![0u8; u32::from_be_bytes(header) as usize];
                reader.read_exact(&mut data).await.ok()?;
                Some(data)
            }
        }
    }
}
