//! The in-process transport: a call is a typed message in the actor's mailbox, with no
//! serialization and no network. It costs about one mailbox round trip.
//!
//! Middleware does not run on this path (it runs in the network servers); use it for actors of
//! the same process, and in tests.

use std::sync::{Arc, OnceLock};

use crate::actor::{ActorProtocol, LocalActor};
use crate::protocol::{ErrorCode, RemoteError};
use crate::quoted;
use crate::system::ActorSystem;

/// Resolves an actor id in a system once, then sends straight to its mailbox.
pub(crate) struct LocalRoute<P: ActorProtocol> {
    system: ActorSystem,
    resolved: Arc<OnceLock<LocalActor<P>>>,
}

impl<P: ActorProtocol> Clone for LocalRoute<P> {
    fn clone(&self) -> Self {
        LocalRoute {
            system: self.system.clone(),
            resolved: self.resolved.clone(),
        }
    }
}

impl<P: ActorProtocol> LocalRoute<P> {
    pub(crate) fn new(system: ActorSystem) -> Self {
        LocalRoute {
            system,
            resolved: Arc::new(OnceLock::new()),
        }
    }

    fn resolve(&self, id: &str) -> Result<&LocalActor<P>, RemoteError> {
        if let Some(actor) = self.resolved.get() {
            return Ok(actor);
        }
        let served = self.system.lookup(id).ok_or_else(|| {
            RemoteError::new(
                ErrorCode::UnknownActor,
                format!("no actor is exposed as '{}'", quoted::name(id)),
            )
        })?;
        let actor = served
            .as_any()
            .downcast_ref::<LocalActor<P>>()
            .ok_or_else(|| {
                RemoteError::new(
                    ErrorCode::UnknownActor,
                    format!(
                        "the actor exposed as '{}' is not a {}",
                        quoted::name(id),
                        P::TRAIT_NAME
                    ),
                )
            })?;
        Ok(self.resolved.get_or_init(|| actor.clone()))
    }

    pub(crate) async fn ask(
        &self,
        id: &str,
        request: P::Request,
    ) -> Result<P::Response, RemoteError> {
        self.resolve(id)?.ask(request).await
    }
}
