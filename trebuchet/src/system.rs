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
    /// Families exposed with `expose_family`: id prefix → maker of the family's actors.
    families: RwLock<Vec<(String, ActorMaker)>>,
}

/// Makes the actor of a family for an id.
type ActorMaker = Arc<dyn Fn(&str) -> Arc<dyn ServedActor> + Send + Sync>;

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

    /// Exposes a family of actors: every id that starts with `prefix` names an actor of the
    /// family, made by `make(id)` on the first call to that id (and kept from then on). This is
    /// how one function or server serves one actor per user, game or device, each with its own
    /// state (`State::new(store, id)`), without exposing them one by one:
    ///
    /// ```
    /// # use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    /// # use trebuchet::{ActorSystem, RemoteError, distributed_actor};
    /// #[distributed_actor]
    /// pub trait Counter {
    ///     async fn increment(&self, by: u64) -> Result<u64, RemoteError>;
    /// }
    /// # #[derive(Default)] struct MyCounter(AtomicU64);
    /// # impl Counter for MyCounter {
    /// #     async fn increment(&self, by: u64) -> Result<u64, RemoteError> { Ok(self.0.fetch_add(by, SeqCst) + by) }
    /// # }
    /// let system = ActorSystem::new();
    /// system.expose_family("counter-", |_id| MyCounter::default().into_actor());
    /// // "counter-1", "counter-alice", … are all counters, each its own actor.
    /// ```
    ///
    /// An id exposed with [`expose`](Self::expose) wins over a family; of two families, the longer
    /// prefix wins.
    pub fn expose_family<P, A, F>(&self, prefix: impl Into<String>, make: F)
    where
        P: Dispatch<A>,
        A: Send + Sync + 'static,
        F: Fn(&str) -> Actor<P, A> + Send + Sync + 'static,
    {
        let maker: ActorMaker =
            Arc::new(move |id: &str| Arc::new(LocalActor::<P>::new(make(id).into_inner())));
        let mut families = self
            .inner
            .families
            .write()
            .unwrap_or_else(|e| e.into_inner());
        families.push((prefix.into(), maker));
        families.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    }

    /// Stops exposing `id`. Calls already made still run; the actor is dropped when the last
    /// in-process reference to it is gone. Returns whether an actor was exposed as `id`.
    pub fn remove(&self, id: &str) -> bool {
        let mut actors = self.inner.actors.write().unwrap_or_else(|e| e.into_inner());
        actors.remove(id).is_some()
    }

    /// How many calls wait for the turn of the actor exposed as `id` now, not counting the one
    /// that holds it (`None` if no actor is active under `id`). See
    /// [`crate::ServerConfig::max_queued_calls_per_actor`].
    pub fn queued_calls(&self, id: &str) -> Option<usize> {
        let actors = self.inner.actors.read().unwrap_or_else(|e| e.into_inner());
        actors.get(id).map(|actor| actor.queued_calls())
    }

    /// The ids of the exposed actors, sorted.
    pub fn actor_ids(&self) -> Vec<String> {
        let actors = self.inner.actors.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<String> = actors.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub(crate) fn lookup(&self, id: &str) -> Option<Arc<dyn ServedActor>> {
        {
            let actors = self.inner.actors.read().unwrap_or_else(|e| e.into_inner());
            if let Some(actor) = actors.get(id) {
                return Some(Arc::clone(actor));
            }
        }
        let maker = {
            let families = self
                .inner
                .families
                .read()
                .unwrap_or_else(|e| e.into_inner());
            families
                .iter()
                .find(|(prefix, _)| id.starts_with(prefix.as_str()))
                .map(|(_, maker)| Arc::clone(maker))?
        };
        let mut actors = self.inner.actors.write().unwrap_or_else(|e| e.into_inner());
        // Another call may have made it meanwhile: one actor per id.
        let actor = actors.entry(id.to_owned()).or_insert_with(|| {
            tracing::debug!(actor_id = %id, "activated an actor of a family");
            maker(id)
        });
        Some(Arc::clone(actor))
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
