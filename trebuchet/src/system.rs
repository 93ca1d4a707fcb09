//! The actor system: the registry of exposed actors, and the entry point for clients and servers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::actor::{Actor, Dispatch, LocalActor, ServedActor};
use crate::client::{Client, ClientConfig, ConnectError};
use crate::server::{ActorService, ServerConfig, ServerHandle};
use crate::transport::Transport;

/// A set of actors exposed by name, and the way to reach actors from this process.
///
/// * [`expose`](Self::expose) starts an actor and registers it under an id.
/// * [`serve_websocket`](Self::serve_websocket) (or [`service`](Self::service) with a server of
///   your own) makes the exposed actors callable over the network.
/// * [`connect`](Self::connect) gives a [`Client`] for a [`Transport`]: `Transport::Local` reaches
///   this system's actors in-process; the other transports reach remote servers.
///
/// Cloning is cheap and gives another handle to the same system.
#[derive(Clone, Default)]
pub struct ActorSystem {
    inner: Arc<SystemInner>,
}

#[derive(Default)]
struct SystemInner {
    actors: RwLock<HashMap<String, Arc<dyn ServedActor>>>,
}

/// An actor could not be exposed.
#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    /// Another actor is already exposed under this id.
    #[error("an actor is already exposed as '{0}'")]
    AlreadyExposed(String),
}

impl ActorSystem {
    /// An empty system with the default settings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Exposes `actor` as `id`. From then on it takes calls, one at a time, from this system's
    /// in-process clients and from every server serving this system.
    ///
    /// `actor` comes from the `into_actor()` method that `#[distributed_actor]` adds to the
    /// trait: `system.expose("counter", MyCounter::default().into_actor())`.
    pub fn expose<P, A>(&self, id: impl Into<String>, actor: Actor<P, A>) -> Result<(), ExposeError>
    where
        P: Dispatch<A>,
        A: Send + Sync + 'static,
    {
        let id = id.into();
        let mut actors = self.inner.actors.write().unwrap_or_else(|e| e.into_inner());
        if actors.contains_key(&id) {
            return Err(ExposeError::AlreadyExposed(id));
        }
        let handle = LocalActor::<P>::new(actor.into_inner());
        tracing::debug!(actor_id = %id, protocol = P::TRAIT_NAME, "exposed actor");
        actors.insert(id, Arc::new(handle));
        Ok(())
    }

    /// Stops exposing `id`. Calls already made still run; the actor is dropped when the last
    /// in-process reference to it is gone. Returns whether an actor was exposed as `id`.
    pub fn remove(&self, id: &str) -> bool {
        let mut actors = self.inner.actors.write().unwrap_or_else(|e| e.into_inner());
        actors.remove(id).is_some()
    }

    /// The ids of the exposed actors, sorted.
    pub fn actor_ids(&self) -> Vec<String> {
        let actors = self.inner.actors.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<String> = actors.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub(crate) fn lookup(&self, id: &str) -> Option<Arc<dyn ServedActor>> {
        let actors = self.inner.actors.read().unwrap_or_else(|e| e.into_inner());
        actors.get(id).cloned()
    }

    /// The exposed actors as a tower `Service`, to run behind middleware layers and a server.
    pub fn service(&self) -> ActorService {
        ActorService::new(self.clone())
    }

    /// Serves the exposed actors over WebSocket on `addr` (port 0 picks a free port) with the
    /// default [`ServerConfig`].
    pub async fn serve_websocket(&self, addr: SocketAddr) -> std::io::Result<ServerHandle> {
        crate::transport::websocket::serve(addr, self.service(), ServerConfig::default()).await
    }

    /// Serves the exposed actors over TCP on `addr` (port 0 picks a free port) with the default
    /// [`ServerConfig`].
    pub async fn serve_tcp(&self, addr: SocketAddr) -> std::io::Result<ServerHandle> {
        crate::transport::tcp::serve(addr, self.service(), ServerConfig::default()).await
    }

    /// A client for `transport` with the default [`ClientConfig`].
    pub async fn connect(&self, transport: Transport) -> Result<Client, ConnectError> {
        self.connect_with(transport, ClientConfig::default()).await
    }

    /// A client for `transport` with `config`.
    pub async fn connect_with(
        &self,
        transport: Transport,
        config: ClientConfig,
    ) -> Result<Client, ConnectError> {
        Client::connect(self, transport, config).await
    }
}
