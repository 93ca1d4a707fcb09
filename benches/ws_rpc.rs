//! Sequential WebSocket RPC round trip with a 64-byte payload, against a raw tokio-tungstenite
//! echo of a message of the same size as Trebuchet's request frame, in one run (same runtime,
//! same loopback, same TCP_NODELAY).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "support/mod.rs"]
mod support;
use futures_util::{SinkExt, StreamExt};
use support::{Echo, PAYLOAD};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

async fn raw_echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_binary() && socket.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    url
}

fn ws_rpc(c: &mut Criterion) {
    let rt = support::runtime();
    let (echo, raw_url, _server) = rt.block_on(async {
        let (echo, server) = support::serve_echo(support::Wire::WebSocket).await;
        (echo, raw_echo_server().await, server)
    });
    let frame_size = support::echo_request_frame_size();
    println!(
        "ws_rpc: {PAYLOAD}-byte argument; Trebuchet request frame {frame_size} bytes; raw echo message {frame_size} bytes"
    );

    let mut group = c.benchmark_group("ws_rpc");
    group.bench_function("trebuchet_ws_call", |b| {
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
    let url = raw_url.clone();
    let mut socket = Some(rt.block_on(async move {
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
            .await
            .unwrap();
        socket
    }));
    group.bench_function("raw_tungstenite_echo", |b| {
        b.iter_custom(|iters| {
            let mut ws = socket.take().unwrap();
            let (elapsed, ws): (Duration, _) = rt
                .block_on(rt.spawn(async move {
                    let message = vec![7u8; frame_size];
                    let start = Instant::now();
                    for _ in 0..iters {
                        ws.send(Message::binary(message.clone())).await.unwrap();
                        black_box(ws.next().await.unwrap().unwrap());
                    }
                    (start.elapsed(), ws)
                }))
                .unwrap();
            socket = Some(ws);
            elapsed
        })
    });
    group.finish();

    // The ratios to compare with the target (see benches/support): of batch means, and of the
    // per-call p50 (every call of the batches timed on its own).
    let mut ws = socket.take().unwrap();
    let (ours, reference, ours_calls, reference_calls) = rt
        .block_on(rt.spawn(async move {
            let data = support::payload();
            let message = vec![7u8; frame_size];
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
                    ws.send(Message::binary(message.clone())).await.unwrap();
                    black_box(ws.next().await.unwrap().unwrap());
                    reference_calls.push(call.elapsed());
                }
                reference.push(start.elapsed() / 250);
            }
            (ours, reference, ours_calls, reference_calls)
        }))
        .unwrap();
    support::report_ratio(
        "ws_rpc",
        ("trebuchet_ws_call", ours),
        ("raw_tungstenite_echo", reference),
    );
    support::report_percentiles(
        "ws_rpc",
        ("trebuchet_ws_call", ours_calls),
        ("raw_tungstenite_echo", reference_calls),
    );
}

criterion_group!(benches, ws_rpc);
criterion_main!(benches);
