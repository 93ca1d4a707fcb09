//! Where the time of a call goes: a profiling harness, not a bench.
//!
//! Runs one workload with both sides in this process and prints the time and the allocations per
//! operation. Meant for a profiler: on a single-threaded runtime (`threads` 0, the default) under
//! `valgrind --tool=callgrind` it gives instruction counts that are the same on every run, however
//! noisy the machine, so that two versions of the code can be compared call for call:
//!
//! ```text
//! cargo build --release --example profile
//! valgrind --tool=callgrind target/release/examples/profile rpc 10000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid> | head -60
//! ```
//!
//! `ALLOC_TRACE=n` prints the backtrace of every allocation made by `n` operations after the
//! warm-up (to standard error), to see which allocations an operation makes.
//!
//! Workloads (`profile <workload> [count] [threads]`):
//! * `rpc`: sequential `echo` calls of 64 bytes over TCP (what `benches/tcp_rpc.rs` measures);
//! * `raw`: the raw TCP echo of the same number of bytes, the reference;
//! * `stream`: one TCP stream of 64-byte items (`benches/stream_throughput.rs`); the environment
//!   variable `WINDOW` sets its flow-control window (default: `ClientConfig`'s);
//! * `raw-stream`: raw length-prefixed frames of the same size, the reference.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use trebuchet::{ActorService, ActorSystem, ClientConfig, ServerConfig, Transport};

#[path = "../benches/support/mod.rs"]
mod support;
use support::{Echo, Source, SourceActor, SourceClient};

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Whether allocations print where they come from (see `ALLOC_TRACE`).
static TRACING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Set while a backtrace is printed, so that its own allocations are not traced.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

/// Counts an allocation and, while tracing, prints its backtrace.
fn record(kind: &str, size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) && !IN_TRACE.with(|flag| flag.replace(true)) {
        eprintln!(
            "--- {kind} of {size} bytes\n{}",
            std::backtrace::Backtrace::force_capture()
        );
        IN_TRACE.with(|flag| flag.set(false));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record("alloc", layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record("alloc_zeroed", layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        record("realloc", size);
        unsafe { System.realloc(ptr, layout, size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `operations` (after a warm-up) and prints the time and allocations per operation.
///
/// With `ALLOC_TRACE=n` set, it then runs `n` more operations and prints the backtrace of each
/// of their allocations to standard error.
async fn measure<F: AsyncFnMut(u64)>(label: &str, count: u64, mut operations: F) {
    operations(1000).await;
    if let Some(traced) = std::env::var("ALLOC_TRACE")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        TRACING.store(true, Ordering::Relaxed);
        operations(traced).await;
        TRACING.store(false, Ordering::Relaxed);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    let start = Instant::now();
    operations(count).await;
    let elapsed = start.elapsed();
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    println!(
        "{label}: {:?} and {:.2} allocations per operation",
        elapsed / count.max(1) as u32,
        allocations as f64 / count.max(1) as f64
    );
}

async fn rpc(count: u64) {
    let (echo, _server) = support::serve_echo(support::Wire::Tcp).await;
    let data = support::payload();
    measure("rpc", count, async |count| {
        for _ in 0..count {
            std::hint::black_box(echo.echo(data.clone()).await.unwrap());
        }
    })
    .await;
}

async fn raw(count: u64) -> anyhow::Result<()> {
    let size = 4 + support::echo_request_frame_size();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut buffer = vec![0u8; size];
        while stream.read_exact(&mut buffer).await.is_ok() {
            if stream.write_all(&buffer).await.is_err() {
                break;
            }
        }
    });
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let mut message = vec![7u8; size];
    measure("raw", count, async |count| {
        for _ in 0..count {
            stream.write_all(&message).await.unwrap();
            stream.read_exact(&mut message).await.unwrap();
        }
    })
    .await;
    Ok(())
}

async fn stream(count: u64) -> anyhow::Result<()> {
    let window: u64 = match std::env::var("WINDOW") {
        Ok(window) => window.parse().context("WINDOW: a number of items")?,
        Err(_) => ClientConfig::default().stream_window,
    };
    let system = ActorSystem::new();
    system.expose("source", SourceActor.into_actor())?;
    let mut server_config = ServerConfig::default();
    server_config.stream_replay.max_items =
        server_config.stream_replay.max_items.max(window as usize);
    let address = "127.0.0.1:0".parse()?;
    let server =
        trebuchet::transport::tcp::serve(address, ActorService::new(system.clone()), server_config)
            .await?;
    let mut client_config = ClientConfig::default();
    client_config.stream_window = window;
    let client = system
        .connect_with(
            Transport::Tcp(server.local_addr().to_string()),
            client_config,
        )
        .await?;
    let source: SourceClient = client.actor("source");
    measure("stream", count, async |count| {
        let mut items = source.items(count).await.unwrap();
        while let Some(item) = items.next().await {
            std::hint::black_box(item.unwrap());
        }
    })
    .await;
    Ok(())
}

async fn raw_stream(count: u64) -> anyhow::Result<()> {
    let size = support::stream_frame_size();
    let mut stream = support::raw_frame_connection(size, support::RAW_BUFFER).await;
    let mut buffer = Vec::new();
    measure("raw-stream", count, async |count| {
        support::receive_raw_frames(&mut stream, count, &mut buffer).await;
    })
    .await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let workload = args.next().unwrap_or_else(|| "rpc".into());
    let count: u64 = args.next().map_or(Ok(20_000), |count| count.parse())?;
    let threads: usize = args.next().map_or(Ok(0), |threads| threads.parse())?;
    let runtime = match threads {
        0 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        threads => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?,
    };
    runtime.block_on(async {
        match workload.as_str() {
            "rpc" => {
                rpc(count).await;
                Ok(())
            }
            "raw" => raw(count).await,
            "stream" => stream(count).await,
            "raw-stream" => raw_stream(count).await,
            other => bail!("unknown workload '{other}': rpc, raw, stream or raw-stream"),
        }
    })
}
