//! Items per second of one stream over TCP, against raw length-prefixed frames sent as fast as
//! possible over a plain TCP connection, in one run.
//!
//! The reference for the target is raw frames of the item's size (a 4-byte length and the 64
//! bytes), read and written through buffers of tokio's default size (8 KiB), as Trebuchet's
//! transport does (tokio-util's `Framed`): what a hand-written stream of these items costs, so
//! the ratio includes what Trebuchet's envelope (stream id, sequence number, timestamp) costs.
//! The bench also prints the ratio against raw frames as large as a `streamData` envelope (the
//! same bytes on the wire as Trebuchet), and against those through 64 KiB buffers, for scale:
//! those make 8 times fewer system calls, and show what Trebuchet's own work per item costs once
//! the system calls are few.
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
    let item_size = 4 + PAYLOAD;
    let (source, item_raw, raw, large_raw, _server) = rt.block_on(async {
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
        let item_raw = support::raw_frame_connection(item_size, support::RAW_BUFFER).await;
        let raw = support::raw_frame_connection(size, support::RAW_BUFFER).await;
        let large_raw = support::raw_frame_connection(size, support::LARGE_RAW_BUFFER).await;
        (source, item_raw, raw, large_raw, server)
    });
    println!(
        "stream_throughput: {PAYLOAD}-byte items; raw frames of {item_size} bytes (the item) and of {size} bytes (a streamData envelope)"
    );
    let mut item_raw = Some(item_raw);

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
    group.bench_function("raw_tcp_item_frames", |b| {
        b.iter_custom(|iters| {
            let mut stream = item_raw.take().unwrap();
            let (elapsed, stream): (Duration, _) = rt
                .block_on(rt.spawn(async move {
                    let mut buffer = Vec::new();
                    let start = Instant::now();
                    support::receive_raw_frames(&mut stream, iters, &mut buffer).await;
                    (start.elapsed(), stream)
                }))
                .unwrap();
            item_raw = Some(stream);
            elapsed
        })
    });
    group.finish();

    // The ratios to compare with the target (see benches/support): time per item, so a ratio
    // below 1 means Trebuchet is faster; throughput ratio = 1 / this. Two stream lengths: long
    // streams show the rate a stream keeps up; short ones include opening the stream (a call
    // round trip and the first wake-ups on both sides), as the raw side includes its request.
    let (mut item_stream, mut stream, mut large_stream) =
        (item_raw.take().unwrap(), raw, large_raw);
    for (items, rounds, label) in [
        (20_000, 20, "streams of 20,000 items"),
        (200_000, 6, "streams of 200,000 items"),
    ] {
        let source = source.clone();
        let (ours, item_reference, reference, large_reference, returned) = rt
            .block_on(rt.spawn(async move {
                let mut buffer = Vec::new();
                let (mut ours, mut item_reference, mut reference, mut large_reference) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for _ in 0..rounds {
                    let start = Instant::now();
                    let mut stream_items = source.items(items).await.unwrap();
                    while let Some(item) = stream_items.next().await {
                        black_box(item.unwrap());
                    }
                    ours.push(start.elapsed() / items as u32);
                    let start = Instant::now();
                    support::receive_raw_frames(&mut item_stream, items, &mut buffer).await;
                    item_reference.push(start.elapsed() / items as u32);
                    let start = Instant::now();
                    support::receive_raw_frames(&mut stream, items, &mut buffer).await;
                    reference.push(start.elapsed() / items as u32);
                    let start = Instant::now();
                    support::receive_raw_frames(&mut large_stream, items, &mut buffer).await;
                    large_reference.push(start.elapsed() / items as u32);
                }
                (
                    ours,
                    item_reference,
                    reference,
                    large_reference,
                    (item_stream, stream, large_stream),
                )
            }))
            .unwrap();
        (item_stream, stream, large_stream) = returned;
        support::report_ratio(
            &format!("stream_throughput (time per item, {label})"),
            ("trebuchet_tcp_stream", ours.clone()),
            ("raw_tcp_item_frames", item_reference),
        );
        support::report_ratio(
            &format!("stream_throughput (time per item, {label}; raw frames of envelope size)"),
            ("trebuchet_tcp_stream", ours.clone()),
            ("raw_tcp_envelope_frames", reference),
        );
        support::report_ratio(
            &format!("stream_throughput (time per item, {label}; for scale, not the target)"),
            ("trebuchet_tcp_stream", ours),
            ("raw_tcp_envelope_frames_64k_buffers", large_reference),
        );
    }
}

criterion_group!(benches, stream_throughput);
criterion_main!(benches);
