//! Sequential TCP RPC round trip with a 64-byte payload, against a raw tokio TCP echo of the same
//! number of bytes as Trebuchet's request frame (length prefix included), in one run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "support/mod.rs"]
mod support;
use support::{Echo, PAYLOAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The size on the wire of one `echo` call: length prefix and bincode envelope.
fn request_size() -> usize {
    4 + support::echo_request_frame_size()
}

async fn raw_echo_server(size: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; size];
                while stream.read_exact(&mut buffer).await.is_ok() {
                    if stream.write_all(&buffer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

async fn raw_round_trip(stream: &mut TcpStream, message: &mut [u8]) {
    stream.write_all(message).await.unwrap();
    stream.read_exact(message).await.unwrap();
}

fn tcp_rpc(c: &mut Criterion) {
    let rt = support::runtime();
    let size = request_size();
    let (echo, raw_address, _server) = rt.block_on(async {
        let (echo, server) = support::serve_echo(support::Wire::Tcp).await;
        (echo, raw_echo_server(size).await, server)
    });
    println!("tcp_rpc: {PAYLOAD}-byte argument; {size} bytes on the wire per request, both sides");
    let mut raw = Some(rt.block_on(async move {
        let stream = TcpStream::connect(raw_address).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }));

    let mut group = c.benchmark_group("tcp_rpc");
    group.bench_function("trebuchet_tcp_call", |b| {
        b.iter_custom(|iters| {
            let echo = echo.clone();
            rt.block_on(rt.spawn(async move {
                let data = support::payload();
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(echo.echo(data.clone()).await.unwrap());
                }
                start.elapsed()
            }))
            .unwrap()
        })
    });
    group.bench_function("raw_tcp_echo", |b| {
        b.iter_custom(|iters| {
            let mut stream = raw.take().unwrap();
            let (elapsed, stream): (Duration, _) = rt
                .block_on(rt.spawn(async move {
                    let mut message = vec![7u8; size];
                    let start = Instant::now();
                    for _ in 0..iters {
                        raw_round_trip(&mut stream, &mut message).await;
                    }
                    (start.elapsed(), stream)
                }))
                .unwrap();
            raw = Some(stream);
            elapsed
        })
    });
    group.finish();

    // The ratios to compare with the target (see benches/support): of batch means, and of the
    // per-call p50 (every call of the batches timed on its own).
    let mut stream = raw.take().unwrap();
    let (ours, reference, ours_calls, reference_calls) = rt
        .block_on(rt.spawn(async move {
            let data = support::payload();
            let mut message = vec![7u8; size];
            let (mut ours, mut reference) = (Vec::new(), Vec::new());
            let (mut ours_calls, mut reference_calls) = (Vec::new(), Vec::new());
            for _ in 0..40 {
                let start = Instant::now();
                for _ in 0..250 {
                    let call = Instant::now();
                    black_box(echo.echo(data.clone()).await.unwrap());
                    ours_calls.push(call.elapsed());
                }
                ours.push(start.elapsed() / 250);
                let start = Instant::now();
                for _ in 0..250 {
                    let call = Instant::now();
                    raw_round_trip(&mut stream, &mut message).await;
                    reference_calls.push(call.elapsed());
                }
                reference.push(start.elapsed() / 250);
            }
            (ours, reference, ours_calls, reference_calls)
        }))
        .unwrap();
    support::report_ratio(
        "tcp_rpc",
        ("trebuchet_tcp_call", ours),
        ("raw_tcp_echo", reference),
    );
    support::report_percentiles(
        "tcp_rpc",
        ("trebuchet_tcp_call", ours_calls),
        ("raw_tcp_echo", reference_calls),
    );
}

criterion_group!(benches, tcp_rpc);
criterion_main!(benches);
