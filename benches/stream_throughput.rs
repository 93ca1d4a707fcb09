//! Items per second of one stream over TCP, against raw length-prefixed frames of the same size
//! sent as fast as possible over a plain TCP connection, in one run.
//!
//! The items are 64 bytes as `trebuchet::SharedBytes`: written and read in one piece, and read
//! without a copy, as the raw frames are. (A `Vec<u8>` goes through serde one byte at a time,
//! which costs more than everything Trebuchet does per item; the raw frames are not serialized
//! at all.)

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;

#[path = "support/mod.rs"]
mod support;
use support::{PAYLOAD, Source, SourceActor, SourceClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use trebuchet::codec;
use trebuchet::protocol::{Envelope, StreamData};
use trebuchet::{ActorSystem, Encoding, Payload, Transport};

/// The size of one `streamData` frame, length prefix included.
fn frame_size() -> usize {
    let envelope = Envelope::StreamData(StreamData {
        stream_id: "5f0c8d8e-0e4c-4b7a-9d1e-2f3a4b5c6d7e".into(),
        sequence_number: 1000,
        data: Payload::encode(&support::payload(), Encoding::Bincode).unwrap(),
        timestamp: 1_732_370_000_123,
    });
    4 + codec::encode(&envelope, Encoding::Bincode)
        .unwrap()
        .data
        .len()
}

/// A server that, for each 8-byte count it reads, writes that many frames of `size` bytes.
async fn raw_frame_server(size: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (read, write) = stream.into_split();
                let (mut read, mut write) = (read, BufWriter::new(write));
                let mut frame = vec![7u8; size];
                frame[..4].copy_from_slice(&((size - 4) as u32).to_be_bytes());
                let mut count = [0u8; 8];
                while read.read_exact(&mut count).await.is_ok() {
                    for _ in 0..u64::from_be_bytes(count) {
                        write.write_all(&frame).await.unwrap();
                    }
                    write.flush().await.unwrap();
                }
            });
        }
    });
    address
}

/// Asks the raw server for `count` frames and reads them as length-prefixed frames.
async fn raw_receive(stream: &mut BufReader<TcpStream>, count: u64, buffer: &mut Vec<u8>) {
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
        black_box(&buffer);
    }
}

fn stream_throughput(c: &mut Criterion) {
    let rt = support::runtime();
    let size = frame_size();
    let (source, raw_address, _server) = rt.block_on(async {
        let system = ActorSystem::new();
        system.expose("source", SourceActor.into_actor()).unwrap();
        let server = system
            .serve_tcp("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let client = system
            .connect(Transport::Tcp(server.local_addr().to_string()))
            .await
            .unwrap();
        let source: SourceClient = client.actor("source");
        (source, raw_frame_server(size).await, server)
    });
    println!("stream_throughput: {PAYLOAD}-byte items; {size} bytes per frame on both sides");
    let mut raw = Some(rt.block_on(async move {
        let stream = TcpStream::connect(raw_address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        BufReader::new(stream)
    }));

    let mut group = c.benchmark_group("stream_throughput");
    group.throughput(Throughput::Elements(1));
    group.bench_function("trebuchet_tcp_stream", |b| {
        b.iter_custom(|iters| {
            let source = source.clone();
            rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                let mut items = source.items(iters).await.unwrap();
                while let Some(item) = items.next().await {
                    black_box(item.unwrap());
                }
                start.elapsed()
            }))
            .unwrap()
        })
    });
    group.bench_function("raw_tcp_frames", |b| {
        b.iter_custom(|iters| {
            let mut stream = raw.take().unwrap();
            let (elapsed, stream): (Duration, _) = rt
                .block_on(rt.spawn(async move {
                    let mut buffer = Vec::new();
                    let start = Instant::now();
                    raw_receive(&mut stream, iters, &mut buffer).await;
                    (start.elapsed(), stream)
                }))
                .unwrap();
            raw = Some(stream);
            elapsed
        })
    });
    group.finish();

    // The ratio to compare with the target (see benches/support): time per item, so a ratio
    // below 1 means Trebuchet is faster; throughput ratio = 1 / this.
    let mut stream = raw.take().unwrap();
    let (ours, reference) = rt
        .block_on(rt.spawn(async move {
            let mut buffer = Vec::new();
            let (mut ours, mut reference) = (Vec::new(), Vec::new());
            for _ in 0..20 {
                let start = Instant::now();
                let mut items = source.items(20_000).await.unwrap();
                while let Some(item) = items.next().await {
                    black_box(item.unwrap());
                }
                ours.push(start.elapsed() / 20_000);
                let start = Instant::now();
                raw_receive(&mut stream, 20_000, &mut buffer).await;
                reference.push(start.elapsed() / 20_000);
            }
            (ours, reference)
        }))
        .unwrap();
    support::report_ratio(
        "stream_throughput (time per item)",
        ("trebuchet_tcp_stream", ours),
        ("raw_tcp_frames", reference),
    );
}

criterion_group!(benches, stream_throughput);
criterion_main!(benches);
