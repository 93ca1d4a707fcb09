//! Gateway middleware: authentication, authorization, rate limiting, validation and tracing, each
//! an ordinary tower [`Layer`] over the actors' [`Service<Call>`](crate::ActorService).
//!
//! The same stack serves every transport. [`Gateway`] composes it; the first layer added runs
//! first, so put authentication before the layers that need to know who is calling:
//!
//! ```
//! # use trebuchet::middleware::*;
//! # use trebuchet::ActorSystem;
//! # use std::num::NonZeroU32;
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # use trebuchet::{RemoteError, distributed_actor};
//! # #[distributed_actor] pub trait GameRoom { async fn join(&self) -> Result<(), RemoteError>; }
//! # struct Room;
//! # impl GameRoom for Room { async fn join(&self) -> Result<(), RemoteError> { Ok(()) } }
//! let gateway = Gateway::new(ActorSystem::new())
//!     .expose("game-room", Room.into_actor())?
//!     .layer(TraceLayer::new())
//!     .layer(AuthenticationLayer::new(ApiKeys::new().key("secret", Principal::new("alice", ["player"]))))
//!     .layer(AuthorizationLayer::new(Rbac::new().allow("player", "game-room", "*")))
//!     .layer(RateLimitLayer::per_second(NonZeroU32::new(100).unwrap()))
//!     .layer(ValidationLayer::new().max_args_bytes(64 * 1024));
//! let server = gateway.serve_websocket("127.0.0.1:0".parse()?).await?;
//! # server.shutdown().await; Ok(()) }
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_layer::Layer;
use tower_service::Service;

use crate::actor::{Actor, Dispatch};
use crate::protocol::RemoteError;
pub use crate::server::Principal;
use crate::server::{Call, ServerConfig, ServerHandle};
use crate::stream::Reply;
use crate::system::{ActorSystem, ExposeError};

mod authentication;
mod authorization;
mod rate_limit;
mod trace;
mod validation;

pub use authentication::{ApiKeys, AuthenticationLayer, Authenticator, Credential, Jwt};
pub use authorization::{ANONYMOUS_ROLE, AuthorizationLayer, Rbac};
pub use rate_limit::{RateLimitLayer, RetryAfter};
pub use trace::{TraceContext, TraceLayer};
pub use validation::ValidationLayer;

/// A check that runs before a call goes on: it may reject the call (with the error to send back)
/// or annotate it for the layers after it. Each middleware here is one.
pub trait Check: Send + Sync + 'static {
    /// Checks `call`; `Err` stops it with that error.
    fn check<'a>(&'a self, call: &'a mut Call) -> BoxFuture<'a, Result<(), RemoteError>>;
}

/// The tower [`Layer`] of a [`Check`].
pub struct CheckLayer<C> {
    check: Arc<C>,
}

impl<C> Clone for CheckLayer<C> {
    fn clone(&self) -> Self {
        CheckLayer {
            check: self.check.clone(),
        }
    }
}

impl<C: Check> CheckLayer<C> {
    /// The layer of `check`.
    pub fn from_check(check: C) -> Self {
        CheckLayer {
            check: Arc::new(check),
        }
    }
}

impl<C, S> Layer<S> for CheckLayer<C> {
    type Service = Checked<S, C>;

    fn layer(&self, inner: S) -> Checked<S, C> {
        Checked {
            inner,
            check: self.check.clone(),
        }
    }
}

/// A service behind a [`Check`].
pub struct Checked<S, C> {
    inner: S,
    check: Arc<C>,
}

impl<S: Clone, C> Clone for Checked<S, C> {
    fn clone(&self) -> Self {
        Checked {
            inner: self.inner.clone(),
            check: self.check.clone(),
        }
    }
}

impl<S, C> Service<Call> for Checked<S, C>
where
    S: Service<Call, Response = Reply, Error = RemoteError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    C: Check,
{
    type Response = Reply;
    type Error = RemoteError;
    type Future = BoxFuture<'static, Result<Reply, RemoteError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RemoteError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        // The clone that was made ready goes into the future (the usual tower pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let check = self.check.clone();
        Box::pin(async move {
            check.check(&mut call).await?;
            inner.call(call).await
        })
    }
}

/// The key a caller is counted under when it has no principal: its connection.
pub(crate) fn anonymous_key(call: &Call) -> String {
    match call.connection.peer_addr {
        Some(addr) => format!("connection:{addr}"),
        None => "connection:unknown".to_owned(),
    }
}

/// Exposed actors behind a stack of middleware, ready to serve on any transport.
///
/// `layer` adds a layer *inside* the ones added before: the first added sees a call first.
pub struct Gateway<L> {
    system: ActorSystem,
    layers: ServiceBuilder<L>,
    config: ServerConfig,
}

impl Gateway<Identity> {
    /// The actors of `system`, with no middleware yet.
    pub fn new(system: ActorSystem) -> Self {
        Gateway {
            system,
            layers: ServiceBuilder::new(),
            config: ServerConfig::default(),
        }
    }
}

impl<L> fmt::Debug for Gateway<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl<L> Gateway<L> {
    /// Adds `layer` inside the layers added so far.
    pub fn layer<T>(self, layer: T) -> Gateway<Stack<T, L>> {
        Gateway {
            system: self.system,
            layers: self.layers.layer(layer),
            config: self.config,
        }
    }

    /// Exposes `actor` as `id` in the gateway's system (see [`ActorSystem::expose`]).
    pub fn expose<P, A>(
        self,
        id: impl Into<String>,
        actor: Actor<P, A>,
    ) -> Result<Self, ExposeError>
    where
        P: Dispatch<A>,
        A: Send + Sync + 'static,
    {
        self.system.expose(id, actor)?;
        Ok(self)
    }

    /// Uses `config` for the servers this gateway starts.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// The actor system behind the gateway (to expose actors on).
    pub fn system(&self) -> &ActorSystem {
        &self.system
    }

    /// The whole stack as one service.
    pub fn service(&self) -> L::Service
    where
        L: Layer<crate::ActorService>,
    {
        self.layers.service(self.system.service())
    }

    /// Serves the stack over WebSocket on `addr`.
    pub async fn serve_websocket(&self, addr: SocketAddr) -> std::io::Result<ServerHandle>
    where
        L: Layer<crate::ActorService>,
        L::Service: Service<Call, Response = Reply, Error = RemoteError> + Clone + Send + 'static,
        <L::Service as Service<Call>>::Future: Send + 'static,
    {
        crate::transport::websocket::serve(addr, self.service(), self.config.clone()).await
    }

    /// Serves the stack over TCP on `addr`.
    pub async fn serve_tcp(&self, addr: SocketAddr) -> std::io::Result<ServerHandle>
    where
        L: Layer<crate::ActorService>,
        L::Service: Service<Call, Response = Reply, Error = RemoteError> + Clone + Send + 'static,
        <L::Service as Service<Call>>::Future: Send + 'static,
    {
        crate::transport::tcp::serve(addr, self.service(), self.config.clone()).await
    }
}
