//! In-process call cost: a Trebuchet `Transport::Local` call through the generated stub, against
//! kameo's `ask` on an equivalent actor and a bare tokio mpsc + oneshot round trip, in one run.
//!
//! Callers run inside a task on the runtime (as application code would), so no side pays for a
//! hop from the benchmark thread into the runtime.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "support/mod.rs"]
mod support;
use kameo::actor::Spawn;
use kameo::message::{Context, Message};
use tokio::sync::{mpsc, oneshot};
use trebuchet::{ActorSystem, RemoteError, Transport, distributed_actor};

#[distributed_actor]
pub trait Counter {
    async fn increment(&self, by: u64) -> Result<u64, RemoteError>;
}

#[derive(Default)]
struct TrebuchetCounter(AtomicU64);

impl Counter for TrebuchetCounter {
    async fn increment(&self, by: u64) -> Result<u64, RemoteError> {
        Ok(self.0.fetch_add(by, Ordering::Relaxed) + by)
    }
}

#[derive(kameo::Actor, Default)]
struct KameoCounter {
    value: u64,
}

struct Increment {
    by: u64,
}

impl Message<Increment> for KameoCounter {
    type Reply = u64;

    async fn handle(&mut self, msg: Increment, _ctx: &mut Context<Self, Self::Reply>) -> u64 {
        self.value += msg.by;
        self.value
    }
}

type Bare = (u64, oneshot::Sender<u64>);

/// Runs `iters` calls of `call` sequentially inside a runtime task and times them.
fn timed<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, call: F) -> Duration
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = u64> + Send,
{
    rt.block_on(rt.spawn(async move {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(call().await);
        }
        start.elapsed()
    }))
    .unwrap()
}

fn local_call(c: &mut Criterion) {
    let rt = support::runtime();
    let (trebuchet, kameo, bare) = rt.block_on(async {
        let system = ActorSystem::new();
        system
            .expose("counter", TrebuchetCounter::default().into_actor())
            .unwrap();
        let client = system.connect(Transport::Local).await.unwrap();
        let trebuchet: CounterClient = client.actor("counter");

        let kameo = KameoCounter::spawn(KameoCounter::default());

        let (bare, mut inbox) = mpsc::channel::<Bare>(64);
        tokio::spawn(async move {
            let mut value = 0;
            while let Some((by, reply)) = inbox.recv().await {
                value += by;
                let _ = reply.send(value);
            }
        });
        (trebuchet, kameo, bare)
    });

    let mut group = c.benchmark_group("local_call");
    group.bench_function("trebuchet_local", |b| {
        b.iter_custom(|iters| {
            let counter = trebuchet.clone();
            timed(&rt, iters, move || {
                let counter = counter.clone();
                async move { counter.increment(1).await.unwrap() }
            })
        })
    });
    group.bench_function("kameo_ask", |b| {
        b.iter_custom(|iters| {
            let actor = kameo.clone();
            timed(&rt, iters, move || {
                let actor = actor.clone();
                async move { actor.ask(Increment { by: 1 }).await.unwrap() }
            })
        })
    });
    group.bench_function("mpsc_oneshot", |b| {
        b.iter_custom(|iters| {
            let sender = bare.clone();
            timed(&rt, iters, move || {
                let sender = sender.clone();
                async move {
                    let (reply, answer) = oneshot::channel();
                    sender.send((1, reply)).await.unwrap();
                    answer.await.unwrap()
                }
            })
        })
    });
    group.finish();

    // The ratio to compare with the target (see benches/support).
    let (ours, reference) = rt
        .block_on(rt.spawn(async move {
            let (mut ours, mut reference) = (Vec::new(), Vec::new());
            for _ in 0..40 {
                let start = Instant::now();
                for _ in 0..20_000 {
                    black_box(trebuchet.increment(1).await.unwrap());
                }
                ours.push(start.elapsed() / 20_000);
                let start = Instant::now();
                for _ in 0..20_000 {
                    black_box(kameo.ask(Increment { by: 1 }).await.unwrap());
                }
                reference.push(start.elapsed() / 20_000);
            }
            (ours, reference)
        }))
        .unwrap();
    support::report_ratio(
        "local_call",
        ("trebuchet_local", ours),
        ("kameo_ask", reference),
    );
}

criterion_group!(benches, local_call);
criterion_main!(benches);
