//! Shared by the benches: reporting the paired-batch comparison.
//!
//! Criterion measures the two sides of a comparison seconds apart, and this machine's speed drifts
//! more than that between them. Each bench therefore also alternates short batches of both sides
//! (its own loop, so neither side pays for the harness); the ratio of the medians of the batch
//! means is the figure to compare with a target.
//!
//! Also the echo actor the RPC benches call, and the stream the stream benches read.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::StreamExt;
pub use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use trebuchet::codec;
use trebuchet::protocol::{Envelope, Invocation, StreamData};
use trebuchet::{
    ActorStream, ActorSystem, ClientConfig, Encoding, Metadata, Payload, RemoteError, ServerHandle,
    SharedBytes, Transport, distributed_actor,
};

/// The size of the argument of the RPC benches' calls, in bytes.
pub const PAYLOAD: usize = 64;

/// The actor of the RPC benches: answers with its argument.
///
/// The argument is [`SharedBytes`], Trebuchet's type for bytes: written and read in one piece,
/// and read without a copy (it shares the frame it came in). A `Vec<u8>` would go through serde
/// one byte at a time, which would measure serde more than the transports. The tarpc service of
/// `tcp_pipelined` takes `serde_bytes::ByteBuf`, serde's type for bytes, the same on the wire.
#[distributed_actor]
pub trait Echo {
    async fn echo(&self, data: SharedBytes) -> Result<SharedBytes, RemoteError>;
}

/// The one implementation of [`Echo`].
pub struct EchoActor;

impl Echo for EchoActor {
    async fn echo(&self, data: SharedBytes) -> Result<SharedBytes, RemoteError> {
        Ok(data)
    }
}

/// The actor of the stream benches: a stream of items of `PAYLOAD` bytes.
#[distributed_actor]
pub trait Source {
    /// `count` items, each [`payload()`].
    #[stream]
    async fn items(&self, count: u64) -> Result<ActorStream<SharedBytes>, RemoteError>;
}

/// What [`SourceActor`] sends: `PAYLOAD` bytes in static memory, which cost nothing to hand out
/// (the raw reference sends one buffer over and over, too).
static ITEM: [u8; PAYLOAD] = [7; PAYLOAD];

/// The one implementation of [`Source`].
pub struct SourceActor;

impl Source for SourceActor {
    async fn items(&self, count: u64) -> Result<ActorStream<SharedBytes>, RemoteError> {
        Ok(ActorStream::new(
            futures_util::stream::repeat(SharedBytes::from(&ITEM[..])).take(count as usize),
        ))
    }
}

/// The argument of the RPC benches' calls and the stream benches' item: `PAYLOAD` bytes.
pub fn payload() -> SharedBytes {
    SharedBytes::from(vec![7u8; PAYLOAD])
}

/// [`payload()`] as serde's type for bytes, for the tarpc service.
pub fn byte_buf_payload() -> ByteBuf {
    ByteBuf::from(vec![7u8; PAYLOAD])
}

/// The network transports the RPC benches call the echo actor over.
pub enum Wire {
    Tcp,
    WebSocket,
}

/// The echo actor served on a free local port over `wire`, and a client of it on one connection.
pub async fn serve_echo(wire: Wire) -> (EchoClient, ServerHandle) {
    let system = ActorSystem::new();
    system.expose("echo", EchoActor.into_actor()).unwrap();
    let address = "127.0.0.1:0".parse().unwrap();
    let (server, transport) = match wire {
        Wire::Tcp => {
            let server = system.serve_tcp(address).await.unwrap();
            let transport = Transport::Tcp(server.local_addr().to_string());
            (server, transport)
        }
        Wire::WebSocket => {
            let server = system.serve_websocket(address).await.unwrap();
            let transport = Transport::WebSocket(server.url().into());
            (server, transport)
        }
    };
    let mut config = ClientConfig::default();
    config.connections = 1;
    let client = system.connect_with(transport, config).await.unwrap();
    (client.actor("echo"), server)
}

/// Prints the medians of the per-call batch means of both sides and their ratio.
pub fn report_ratio(
    label: &str,
    (ours_name, ours): (&str, Vec<Duration>),
    (reference_name, reference): (&str, Vec<Duration>),
) {
    let (a, b) = (median(ours), median(reference));
    println!(
        "{label} (paired batches): {ours_name} {a:.2?} / {reference_name} {b:.2?} = ratio {:.2}",
        a.as_secs_f64() / b.as_secs_f64()
    );
}

/// Prints the per-call p50 and p99 of both sides (every call of the paired batches timed on its
/// own) and the ratio of the p50s: the sequential RPC benches' figure to compare with a target.
pub fn report_percentiles(
    label: &str,
    (ours_name, mut ours): (&str, Vec<Duration>),
    (reference_name, mut reference): (&str, Vec<Duration>),
) {
    ours.sort();
    reference.sort();
    let at = |values: &[Duration], quantile: f64| values[(values.len() as f64 * quantile) as usize];
    let (a, b) = (at(&ours, 0.5), at(&reference, 0.5));
    println!(
        "{label} (per call): {ours_name} p50 {a:.2?} p99 {:.2?} / {reference_name} p50 {b:.2?} p99 {:.2?} = p50 ratio {:.2}",
        at(&ours, 0.99),
        at(&reference, 0.99),
        a.as_secs_f64() / b.as_secs_f64()
    );
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// The runtime every bench runs both sides on: multi-threaded, two workers (this machine's cores).
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The size of the binary (bincode) envelope a client sends for one `echo` call of `PAYLOAD`
/// bytes: what the raw references of the RPC benches echo, to move as many bytes.
pub fn echo_request_frame_size() -> usize {
    let args = Payload::encode(&(payload(),), Encoding::Bincode).unwrap();
    let envelope = Envelope::Invocation(Invocation {
        call_id: 1000,
        actor_id: "echo".into(),
        method: "echo".into(),
        args,
        metadata: Metadata::new(),
    });
    codec::encode(&envelope, Encoding::Bincode)
        .unwrap()
        .data
        .len()
}

/// The size of one `streamData` frame of a [`Source`] item, length prefix included: what the raw
/// reference of the stream benches sends per item.
pub fn stream_frame_size() -> usize {
    let envelope = Envelope::StreamData(StreamData {
        stream_id: "5f0c8d8e-0e4c-4b7a-9d1e-2f3a4b5c6d7e".into(),
        sequence_number: 1000,
        data: Payload::encode(&payload(), Encoding::Bincode).unwrap(),
        timestamp: 1_732_370_000_123,
    });
    4 + codec::encode(&envelope, Encoding::Bincode)
        .unwrap()
        .data
        .len()
}

/// The buffer size of the raw reference of the stream benches: tokio's default, which
/// `BufReader::new` and `BufWriter::new` have, and so does tokio-util's `Framed` that Trebuchet's
/// TCP transport reads and writes through. Both sides of the comparison then make about as many
/// system calls per item, and the ratio measures what Trebuchet adds per item.
pub const RAW_BUFFER: usize = 8 * 1024;

/// A larger buffer for the raw reference, for scale: with it the raw side makes 8 times fewer
/// system calls per frame than with [`RAW_BUFFER`], which Trebuchet's transport does not.
pub const LARGE_RAW_BUFFER: usize = 64 * 1024;

/// The raw reference of the stream benches, one connection's side: for each 8-byte count it
/// reads, writes that many length-prefixed frames of `size` bytes (one buffer, sent again and
/// again) through a write buffer of `buffer` bytes.
pub async fn send_raw_frames(stream: TcpStream, size: usize, buffer: usize) {
    let (mut read, write) = stream.into_split();
    let mut write = BufWriter::with_capacity(buffer, write);
    let mut frame = vec![7u8; size];
    frame[..4].copy_from_slice(&((size - 4) as u32).to_be_bytes());
    let mut count = [0u8; 8];
    while read.read_exact(&mut count).await.is_ok() {
        for _ in 0..u64::from_be_bytes(count) {
            write.write_all(&frame).await.unwrap();
        }
        write.flush().await.unwrap();
    }
}

/// A server of [`send_raw_frames`] with `buffer`-byte write buffers on a free local port, and a
/// connection to it that reads through a buffer of the same size.
pub async fn raw_frame_connection(size: usize, buffer: usize) -> BufReader<TcpStream> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(send_raw_frames(stream, size, buffer));
        }
    });
    let stream = TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    BufReader::with_capacity(buffer, stream)
}

/// Asks a [`send_raw_frames`] server for `count` frames and reads them as length-prefixed
/// frames into `buffer`.
pub async fn receive_raw_frames(
    stream: &mut BufReader<TcpStream>,
    count: u64,
    buffer: &mut Vec<u8>,
) {
    stream
        .get_mut()
        .write_all(&count.to_be_bytes())
        .await
        .unwrap();
    for _ in 0..count {
        let mut header = [0u8; 4];
        stream.read_exact(&mut header).await.unwrap();
        buffer.resize(u32::from_be_bytes(header) as usize, 0);
        stream.read_exact(buffer).await.unwrap();
        std::hint::black_box(&buffer);
    }
}

/// A raw length-prefixed echo server on a free local port, written as a pipelining server is:
/// frames are read through an 8 KiB buffer and answered into an 8 KiB write buffer, which is
/// flushed whenever no further request is already buffered (one write for a batch of answers).
pub async fn pipelined_echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (read, write) = stream.into_split();
                let mut read = BufReader::with_capacity(RAW_BUFFER, read);
                let mut write = BufWriter::with_capacity(RAW_BUFFER, write);
                let mut frame = Vec::new();
                while read_frame(&mut read, &mut frame).await {
                    if write.write_all(&frame).await.is_err() {
                        return;
                    }
                    if read.buffer().is_empty() && write.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// Reads one length-prefixed frame, prefix included, into `frame`; false at the end.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(read: &mut R, frame: &mut Vec<u8>) -> bool {
    let mut header = [0u8; 4];
    if read.read_exact(&mut header).await.is_err() {
        return false;
    }
    let length = u32::from_be_bytes(header) as usize;
    frame.clear();
    frame.extend_from_slice(&header);
    frame.resize(4 + length, 0);
    read.read_exact(&mut frame[4..]).await.is_ok()
}

/// A connection to a [`pipelined_echo_server`], read and written through 8 KiB buffers.
pub struct RawPipelined {
    read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
    frame: Vec<u8>,
    answer: Vec<u8>,
}

impl RawPipelined {
    /// Connects to `address`; each request is a frame of `size` bytes, length prefix included.
    pub async fn connect(address: &str, size: usize) -> Self {
        let stream = TcpStream::connect(address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (read, write) = stream.into_split();
        let mut frame = vec![7u8; size];
        frame[..4].copy_from_slice(&((size - 4) as u32).to_be_bytes());
        RawPipelined {
            read: BufReader::with_capacity(RAW_BUFFER, read),
            write: BufWriter::with_capacity(RAW_BUFFER, write),
            frame,
            answer: Vec::new(),
        }
    }

    /// `calls` echoes with `in_flight` requests outstanding at a time: a new request goes out
    /// for each answer read, and the writes are flushed whenever no answer is already buffered.
    pub async fn calls(&mut self, calls: u64, in_flight: u64) {
        let mut sent = 0;
        while sent < calls.min(in_flight) {
            self.write.write_all(&self.frame).await.unwrap();
            sent += 1;
        }
        self.write.flush().await.unwrap();
        for _ in 0..calls {
            assert!(read_frame(&mut self.read, &mut self.answer).await);
            std::hint::black_box(&self.answer);
            if sent < calls {
                self.write.write_all(&self.frame).await.unwrap();
                sent += 1;
            }
            if self.read.buffer().is_empty() {
                self.write.flush().await.unwrap();
            }
        }
    }
}
