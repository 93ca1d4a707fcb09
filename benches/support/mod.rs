//! Shared by the benches: reporting the paired-batch comparison.
//!
//! Criterion measures the two sides of a comparison seconds apart, and this machine's speed drifts
//! more than that between them. Each bench therefore also alternates short batches of both sides
//! (its own loop, so neither side pays for the harness); the ratio of the medians of the batch
//! means is the figure to compare with a target.
//!
//! Also the echo actor the RPC benches call.
#![allow(dead_code)]

use std::time::Duration;

use tokio::runtime::Runtime;
use trebuchet::codec;
use trebuchet::protocol::{Envelope, Invocation};
use trebuchet::{Encoding, Metadata, Payload, RemoteError, distributed_actor};

/// The size of the argument of the RPC benches' calls, in bytes.
pub const PAYLOAD: usize = 64;

/// The actor of the RPC benches: answers with its argument.
#[distributed_actor]
pub trait Echo {
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, RemoteError>;
}

/// The one implementation of [`Echo`].
pub struct EchoActor;

impl Echo for EchoActor {
    async fn echo(&self, data: Vec<u8>) -> Result<Vec<u8>, RemoteError> {
        Ok(data)
    }
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
    let args = Payload::encode(&(vec![7u8; PAYLOAD],), Encoding::Bincode).unwrap();
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
