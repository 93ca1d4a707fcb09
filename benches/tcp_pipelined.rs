//! Pipelined calls on one TCP connection, 64 in flight, 64-byte payloads: calls per second of
//! Trebuchet against tarpc (bincode over tokio-serde, length-delimited TCP) on an equivalent echo
//! service, and against a raw length-prefixed echo (the ceiling), in one run.
//!
//! tarpc is set up as its users set it up for latency: `TCP_NODELAY` on both of its sockets, as
//! Trebuchet sets it on its own (without it, Nagle's algorithm holds each of tarpc's small writes
//! back for the peer's delayed acknowledgement), and its default client and server configuration.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tarpc::server::Channel;
use tarpc::tokio_serde::formats::Bincode;

#[path = "support/mod.rs"]
mod support;
use support::{ByteBuf, Echo, EchoClient, PAYLOAD, RawPipelined};

const IN_FLIGHT: usize = 64;

#[tarpc::service]
trait EchoService {
    async fn echo(data: ByteBuf) -> ByteBuf;
}

#[derive(Clone)]
struct EchoServer;

impl EchoService for EchoServer {
    async fn echo(self, _: tarpc::context::Context, data: ByteBuf) -> ByteBuf {
        data
    }
}

async fn tarpc_client() -> EchoServiceClient {
    let mut listener = tarpc::serde_transport::tcp::listen("127.0.0.1:0", Bincode::default)
        .await
        .unwrap();
    listener.config_mut().max_frame_length(usize::MAX);
    let address = listener.local_addr();
    tokio::spawn(async move {
        while let Some(Ok(transport)) = listener.next().await {
            transport.get_ref().set_nodelay(true).unwrap();
            let channel = tarpc::server::BaseChannel::with_defaults(transport);
            tokio::spawn(
                channel
                    .execute(EchoServer.serve())
                    .for_each(|call| async move {
                        tokio::spawn(call);
                    }),
            );
        }
    });
    let transport = tarpc::serde_transport::tcp::connect(address, Bincode::default)
        .await
        .unwrap();
    transport.get_ref().set_nodelay(true).unwrap();
    EchoServiceClient::new(tarpc::client::Config::default(), transport).spawn()
}

/// `calls` calls of `call`, `IN_FLIGHT` at a time; returns the time they took.
async fn pipelined<F, Fut>(calls: u64, call: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut sent = 0;
    while sent < calls.min(IN_FLIGHT as u64) {
        in_flight.push(call());
        sent += 1;
    }
    while in_flight.next().await.is_some() {
        if sent < calls {
            in_flight.push(call());
            sent += 1;
        }
    }
    start.elapsed()
}

fn tcp_pipelined(c: &mut Criterion) {
    let rt = support::runtime();
    // The raw echo moves frames as large as Trebuchet's request envelope for a 64-byte payload.
    let raw_size = 4 + support::echo_request_frame_size();
    let (echo, tarpc, raw, _server) = rt.block_on(async {
        let (echo, server) = support::serve_echo(support::Wire::Tcp).await;
        let raw_address = support::pipelined_echo_server().await;
        let raw = RawPipelined::connect(&raw_address, raw_size).await;
        (echo, tarpc_client().await, raw, server)
    });
    println!(
        "tcp_pipelined: one connection, {IN_FLIGHT} calls in flight, {PAYLOAD}-byte payloads; raw echo frames of {raw_size} bytes"
    );
    let raw = std::sync::Arc::new(tokio::sync::Mutex::new(raw));

    let trebuchet_calls = |echo: EchoClient, calls: u64| async move {
        let data = support::payload();
        pipelined(calls, || {
            let (echo, data) = (echo.clone(), data.clone());
            async move {
                black_box(echo.echo(data).await.unwrap());
            }
        })
        .await
    };
    let tarpc_calls = |client: EchoServiceClient, calls: u64| async move {
        let data = support::byte_buf_payload();
        pipelined(calls, || {
            let (client, data) = (client.clone(), data.clone());
            async move {
                black_box(client.echo(tarpc::context::current(), data).await.unwrap());
            }
        })
        .await
    };

    let raw_calls = |raw: std::sync::Arc<tokio::sync::Mutex<RawPipelined>>, calls: u64| async move {
        let mut raw = raw.lock().await;
        let start = Instant::now();
        raw.calls(calls, IN_FLIGHT as u64).await;
        start.elapsed()
    };

    let mut group = c.benchmark_group("tcp_pipelined");
    group.throughput(Throughput::Elements(1));
    group.bench_function("trebuchet_tcp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(rt.spawn(trebuchet_calls(echo.clone(), iters)))
                .unwrap()
        })
    });
    group.bench_function("tarpc_tcp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(rt.spawn(tarpc_calls(tarpc.clone(), iters)))
                .unwrap()
        })
    });
    group.bench_function("raw_tcp_echo", |b| {
        b.iter_custom(|iters| {
            rt.block_on(rt.spawn(raw_calls(raw.clone(), iters)))
                .unwrap()
        })
    });
    group.finish();

    // Paired batches (see benches/support): the ratio of times per call, and its inverse, the
    // throughput ratio the target is about.
    let (ours, reference, ceiling) = rt
        .block_on(rt.spawn(async move {
            let (mut ours, mut reference, mut ceiling) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..30 {
                ours.push(trebuchet_calls(echo.clone(), 2000).await / 2000);
                reference.push(tarpc_calls(tarpc.clone(), 2000).await / 2000);
                ceiling.push(raw_calls(raw.clone(), 20_000).await / 20_000);
            }
            (ours, reference, ceiling)
        }))
        .unwrap();
    let per_second = |times: &[Duration]| {
        let mut sorted = times.to_vec();
        sorted.sort();
        1.0 / sorted[sorted.len() / 2].as_secs_f64()
    };
    let (ours_rate, tarpc_rate, raw_rate) = (
        per_second(&ours),
        per_second(&reference),
        per_second(&ceiling),
    );
    support::report_ratio(
        "tcp_pipelined",
        ("trebuchet_tcp", ours),
        ("tarpc_tcp", reference),
    );
    println!(
        "tcp_pipelined (paired batches): trebuchet {ours_rate:.0} calls/s / tarpc {tarpc_rate:.0} calls/s = throughput ratio {:.2}",
        ours_rate / tarpc_rate
    );
    println!(
        "tcp_pipelined (paired batches): trebuchet {ours_rate:.0} calls/s / raw echo {raw_rate:.0} calls/s = throughput ratio {:.3}",
        ours_rate / raw_rate
    );
}

criterion_group!(benches, tcp_pipelined);
criterion_main!(benches);
