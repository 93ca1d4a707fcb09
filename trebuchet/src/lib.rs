//! Trebuchet: distributed actors for Rust.
//!
//! Annotate an actor trait with [`distributed_actor`]; implement it on a plain struct; expose the
//! implementation in an [`ActorSystem`]; call it through the generated client stub, which
//! implements the same trait, over any [`Transport`]:
//!
//! ```
//! use trebuchet::{ActorSystem, RemoteError, Transport, distributed_actor};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! #[distributed_actor]
//! pub trait Counter {
//!     async fn increment(&self, by: u64) -> Result<u64, RemoteError>;
//!     async fn get(&self) -> Result<u64, RemoteError>;
//! }
//!
//! #[derive(Default)]
//! struct MyCounter(AtomicU64);
//!
//! impl Counter for MyCounter {
//!     async fn increment(&self, by: u64) -> Result<u64, RemoteError> {
//!         Ok(self.0.fetch_add(by, Ordering::SeqCst) + by)
//!     }
//!     async fn get(&self) -> Result<u64, RemoteError> {
//!         Ok(self.0.load(Ordering::SeqCst))
//!     }
//! }
//!
//! async fn play(counter: &impl Counter) -> Result<u64, RemoteError> {
//!     counter.increment(2).await?;
//!     counter.get().await
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let system = ActorSystem::new();
//! system.expose("counter", MyCounter::default().into_actor())?;
//! let server = system.serve_websocket("127.0.0.1:0".parse()?).await?;
//!
//! for transport in [Transport::Local, Transport::WebSocket(server.url().to_owned())] {
//!     let client = system.connect(transport).await?;
//!     let counter: CounterClient = client.actor("counter");
//!     play(&counter).await?;
//! }
//! assert_eq!(play(&MyCounter::default()).await?, 2);
//! # server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The modules follow the layers of the system: [`protocol`] (the wire types) and [`codec`]
//! (their encodings), [`actor`] (protocols and mailboxes), [`client`] and [`server`] (with their
//! [`tls`] settings), and one module per [`transport`].

#![warn(missing_docs)]

pub mod actor;
mod call_slots;
pub mod client;
pub mod codec;
mod deadlines;
pub mod middleware;
mod multiplex;
pub mod protocol;
pub mod quoted;
pub mod server;
mod shared_bytes;
pub mod state;
pub mod stream;
mod system;
pub mod tls;
pub mod transport;

pub use actor::{Actor, ActorError, ActorProtocol, DecodeRequestError, Dispatch, LocalActor};
pub use client::{
    ActorRef, Client, ClientConfig, ConnectError, Connection, ReconnectPolicy, RemoteActor,
};
pub use protocol::{Encoding, ErrorCode, Metadata, Payload, RemoteError};
pub use server::{ActorService, Call, ConnectionInfo, ReplayConfig, ServerConfig, ServerHandle};
pub use shared_bytes::SharedBytes;
pub use stream::{ActorStream, Reply, StreamGap};
pub use system::{ActorSystem, ExposeError};
pub use tls::{TlsClientConfig, TlsError, TlsServerConfig};
pub use transport::Transport;
pub use trebuchet_macros::distributed_actor;

/// Items used by the code `#[distributed_actor]` generates. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::actor::encode_outcome;
    pub use crate::stream::encode_stream;
    pub use serde;
}

/// The code blocks of README.md, compiled and run as doctests so the README stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
