//! Items per second of one stream over TCP, against raw length-prefixed frames of the same size
//! sent as fast as possible over a plain TCP connection, in one run.
//!
//! The raw side reads and writes through buffers of tokio's default size (8 KiB), as Trebuchet's
//! transport does (tokio-util's `Framed`): the ratio against it is the figure for the target.
//! The bench also prints the ratio against raw frames through 64 KiB buffers, for scale: those
//! make 8 times fewer system calls, and show what Trebuchet's own work per item costs once the
//! system calls are few.
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
use trebuchet::{ActorSystem, Transport};

fn stream_throughput(c: &mut Criterion) {
    let rt = support::runtime();
    let size = support::stream_frame_size();
    let (source, raw, large_raw, _server) = rt.block_on(async {
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
        let raw = support::raw_frame_connection(size, support::RAW_BUFFER).await;
        let large_raw = support::raw_frame_connection(size, support::LARGE_RAW_BUFFER).await;
        (source, raw, large_raw, server)
    });
    println!("stream_throughput: {PAYLOAD}-byte items; {size} bytes per frame on both sides");
    let mut raw = Some(raw);

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
                    support::receive_raw_frames(&mut stream, iters, &mut buffer).await;
                    (start.elapsed(), stream)
                }))
                .unwrap();
            raw = Some(stream);
            elapsed
        })
    });
    group.finish();

    // The ratios to compare with the target (see benches/support): time per item, so a ratio
    // below 1 means Trebuchet is faster; throughput ratio = 1 / this. Two stream lengths: long
    // streams show the rate a stream keeps up; short ones include opening the stream (a call
    // round trip and the first wake-ups on both sides), as the raw side includes its request.
    let (mut stream, mut large_stream) = (raw.take().unwrap(), large_raw);
    for (items, rounds, label) in [
        (20_000, 20, "streams of 20,000 items"),
        (200_000, 6, "streams of 200,000 items"),
    ] {
        let source = source.clone();
        let (ours, reference, large_reference, returned) = rt
            .block_on(rt.spawn(async move {
                let mut buffer = Vec::new();
                let (mut ours, mut reference, mut large_reference) =
                    (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..rounds {
                    let start = Instant::now();
                    let mut stream_items = source.items(items).await.unwrap();
                    while let Some(item) = stream_items.next().await {
                        black_box(item.unwrap());
                    }
                    ours.push(start.elapsed() / items as u32);
                    let start = Instant::now();
                    support::receive_raw_frames(&mut stream, items, &mut buffer).await;
                    reference.push(start.elapsed() / items as u32);
                    let start = Instant::now();
                    support::receive_raw_frames(&mut large_stream, items, &mut buffer).await;
                    large_reference.push(start.elapsed() / items as u32);
                }
                (ours, reference, large_reference, (stream, large_stream))
            }))
            .unwrap();
        (stream, large_stream) = returned;
        support::report_ratio(
            &format!("stream_throughput (time per item, {label})"),
            ("trebuchet_tcp_stream", ours.clone()),
            ("raw_tcp_frames", reference),
        );
        support::report_ratio(
            &format!("stream_throughput (time per item, {label}; for scale, not the target)"),
            ("trebuchet_tcp_stream", ours),
            ("raw_tcp_frames_64k_buffers", large_reference),
        );
    }
}

criterion_group!(benches, stream_throughput);
criterion_main!(benches);
