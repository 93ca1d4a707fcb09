//! Per-call cost of the full middleware chain (tracing, API-key authentication, RBAC, rate limit,
//! validation) against no middleware, calling the service stack in-process, in one run.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Service, ServiceExt};

#[path = "support/mod.rs"]
mod support;
use trebuchet::middleware::{
    ApiKeys, AuthenticationLayer, AuthorizationLayer, Gateway, Principal, RateLimitLayer, Rbac,
    TraceLayer, ValidationLayer,
};
use trebuchet::protocol::Invocation;
use trebuchet::{
    ActorSystem, Call, ConnectionInfo, Encoding, Metadata, Payload, RemoteError, distributed_actor,
};

#[distributed_actor]
pub trait Counter {
    async fn increment(&self, by: u64) -> Result<u64, RemoteError>;
}

#[derive(Default)]
struct MemoryCounter(AtomicU64);

impl Counter for MemoryCounter {
    async fn increment(&self, by: u64) -> Result<u64, RemoteError> {
        Ok(self.0.fetch_add(by, Ordering::Relaxed) + by)
    }
}

fn call() -> Call {
    let mut metadata = Metadata::new();
    metadata.insert("x-api-key".into(), "key".into());
    Call::new(
        Invocation {
            call_id: 1,
            actor_id: "counter".into(),
            method: "increment".into(),
            args: Payload::encode(&(1u64,), Encoding::Bincode).unwrap(),
            metadata,
        },
        Arc::new(ConnectionInfo::default()),
    )
}

async fn run<S>(service: &mut S, call: &Call)
where
    S: Service<Call, Response = trebuchet::Reply, Error = RemoteError>,
{
    let reply = service
        .ready()
        .await
        .unwrap()
        .call(call.clone())
        .await
        .unwrap();
    black_box(reply);
}

fn middleware_overhead(c: &mut Criterion) {
    let rt = support::runtime();
    let system = rt.block_on(async {
        let system = ActorSystem::new();
        system
            .expose("counter", MemoryCounter::default().into_actor())
            .unwrap();
        system
    });
    let gateway = Gateway::new(system.clone())
        .layer(TraceLayer::new())
        .layer(AuthenticationLayer::new(
            ApiKeys::new().key("key", Principal::new("bench", ["player"])),
        ))
        .layer(AuthorizationLayer::new(
            Rbac::new().allow("player", "counter", "*"),
        ))
        .layer(RateLimitLayer::per_second(
            NonZeroU32::new(u32::MAX).unwrap(),
        ))
        .layer(ValidationLayer::new().max_args_bytes(4096).max_depth(8));
    // Both as the same boxed type, so they share one benchmark loop.
    let full = tower::util::BoxCloneService::new(gateway.service());
    let bare = tower::util::BoxCloneService::new(system.service());
    let call = call();

    let mut group = c.benchmark_group("middleware_overhead");
    for (name, service) in [
        ("no_middleware", bare.clone()),
        ("full_chain", full.clone()),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (mut service, call) = (service.clone(), call.clone());
                rt.block_on(rt.spawn(async move {
                    let start = Instant::now();
                    for _ in 0..iters {
                        run(&mut service, &call).await;
                    }
                    start.elapsed()
                }))
                .unwrap()
            })
        });
    }
    group.finish();

    let (ours, reference) = rt
        .block_on(rt.spawn(async move {
            let (mut full, mut bare) = (full, bare);
            let (mut ours, mut reference) = (Vec::new(), Vec::new());
            for _ in 0..40 {
                let start = Instant::now();
                for _ in 0..10_000 {
                    run(&mut full, &call).await;
                }
                ours.push(start.elapsed() / 10_000);
                let start = Instant::now();
                for _ in 0..10_000 {
                    run(&mut bare, &call).await;
                }
                reference.push(start.elapsed() / 10_000);
            }
            (ours, reference)
        }))
        .unwrap();
    support::report_ratio(
        "middleware_overhead",
        ("full_chain", ours),
        ("no_middleware", reference),
    );
}

criterion_group!(benches, middleware_overhead);
criterion_main!(benches);
