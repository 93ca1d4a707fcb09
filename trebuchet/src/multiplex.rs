//! The client side of every network transport: one connection shared by many concurrent calls,
//! with per-call timeouts and automatic reconnection.
//!
//! A *link* task owns the live connection: it writes the calls it is handed, reads the answers
//! and routes each to its caller by `callId`. When the connection is lost, every call in flight on
//! it fails with `unavailable` (it is not resent: the server may already have run it), and a
//! *supervisor* reconnects with exponential backoff and jitter. A call made while the client is
//! reconnecting waits for the new connection, within its own timeout; if the connection is not
//! back in time it fails with `unavailable`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::client::{ClientConfig, Connection};
use crate::codec::{self, Frame};
use crate::protocol::{Cancel, Encoding, Envelope, ErrorCode, Invocation, Payload, RemoteError};
use crate::transport::FrameIo;

type Outcome = Result<Payload, RemoteError>;

/// Opens connections for a [`Multiplexed`] client (the framing is the transport's business).
pub(crate) trait Connector: Send + Sync + 'static {
    /// The framed connection.
    type Io: FrameIo + 'static;
    /// A description of the peer, for logs and errors.
    fn peer(&self) -> &str;
    /// Opens one connection.
    fn connect(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

enum Outbound {
    Call {
        call_id: u64,
        frame: Frame,
        reply: oneshot::Sender<Outcome>,
    },
    Cancel {
        call_id: u64,
    },
}

#[derive(Clone)]
enum LinkState {
    Up(mpsc::Sender<Outbound>),
    Reconnecting,
    Closed,
}

/// A multiplexed, self-healing client connection.
pub(crate) struct Multiplexed {
    config: ClientConfig,
    peer: String,
    link: watch::Receiver<LinkState>,
    next_call_id: AtomicU64,
    closed: CancellationToken,
}

impl Drop for Multiplexed {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

impl Multiplexed {
    /// Connects once (failing if that fails), then keeps the connection up in the background.
    pub(crate) async fn connect<C: Connector>(
        connector: C,
        config: ClientConfig,
    ) -> io::Result<Multiplexed> {
        let io = tokio::time::timeout(config.connect_timeout, connector.connect())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let (state, link) = watch::channel(LinkState::Reconnecting);
        let closed = CancellationToken::new();
        let peer = connector.peer().to_owned();
        tokio::spawn(supervise(
            connector,
            io,
            state,
            config.clone(),
            closed.clone(),
        ));
        Ok(Multiplexed {
            config,
            peer,
            link,
            next_call_id: AtomicU64::new(1),
            closed,
        })
    }

    /// The sender of the live link, waiting (until `deadline`) for a reconnect if there is none.
    async fn link(&self, deadline: Instant) -> Result<mpsc::Sender<Outbound>, RemoteError> {
        let mut link = self.link.clone();
        loop {
            match &*link.borrow_and_update() {
                LinkState::Up(sender) => return Ok(sender.clone()),
                LinkState::Closed => {
                    return Err(RemoteError::unavailable(format!(
                        "the connection to {} is closed (reconnect attempts exhausted)",
                        self.peer
                    )));
                }
                LinkState::Reconnecting => {}
            }
            match timeout_at(deadline, link.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(RemoteError::unavailable(format!(
                        "not connected to {}: still reconnecting after {:?}",
                        self.peer, self.config.call_timeout
                    )));
                }
            }
        }
    }

    async fn call(&self, actor_id: &str, method: &str, args: Payload) -> Outcome {
        let deadline = Instant::now() + self.config.call_timeout;
        let call_id = self.next_call_id.fetch_add(1, Ordering::Relaxed);
        let envelope = Envelope::Invocation(Invocation {
            call_id,
            actor_id: actor_id.to_owned(),
            method: method.to_owned(),
            args,
            metadata: self.config.metadata.clone(),
        });
        let frame = codec::encode(&envelope, self.config.encoding)
            .map_err(|error| RemoteError::bad_request(error.to_string()))?;
        if frame.data.len() > self.config.max_frame_size {
            return Err(RemoteError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "the call of {} bytes exceeds the frame limit of {} bytes",
                    frame.data.len(),
                    self.config.max_frame_size
                ),
            ));
        }
        let link = self.link(deadline).await?;
        let (reply, answer) = oneshot::channel();
        let queued = timeout_at(
            deadline,
            link.send(Outbound::Call {
                call_id,
                frame,
                reply,
            }),
        )
        .await;
        match queued {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(self.lost()),
            Err(_) => return Err(self.timed_out(actor_id, method)),
        }
        match timeout_at(deadline, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(self.lost()),
            Err(_) => {
                let _ = link.try_send(Outbound::Cancel { call_id });
                Err(self.timed_out(actor_id, method))
            }
        }
    }

    fn lost(&self) -> RemoteError {
        RemoteError::unavailable(format!(
            "the connection to {} was lost before the answer arrived",
            self.peer
        ))
    }

    fn timed_out(&self, actor_id: &str, method: &str) -> RemoteError {
        RemoteError::timeout(format!(
            "{actor_id}.{method} did not answer within {:?}",
            self.config.call_timeout
        ))
    }
}

impl Connection for Multiplexed {
    fn encoding(&self) -> Encoding {
        self.config.encoding
    }

    fn invoke<'a>(
        &'a self,
        actor_id: &'a str,
        method: &'a str,
        args: Payload,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(self.call(actor_id, method, args))
    }
}

/// Keeps a link up until the client is dropped or reconnecting gives up.
async fn supervise<C: Connector>(
    connector: C,
    first: C::Io,
    state: watch::Sender<LinkState>,
    config: ClientConfig,
    closed: CancellationToken,
) {
    let mut io = Some(first);
    loop {
        let live = match io.take() {
            Some(live) => live,
            None => match reconnect(&connector, &config, &closed).await {
                Some(live) => live,
                None => {
                    state.send_replace(LinkState::Closed);
                    return;
                }
            },
        };
        let (sender, outbound) = mpsc::channel(config.max_in_flight.max(1));
        state.send_replace(LinkState::Up(sender));
        let lost = run_link(live, outbound, &config, &closed).await;
        if !lost {
            state.send_replace(LinkState::Closed);
            return;
        }
        tracing::info!(peer = connector.peer(), "connection lost; reconnecting");
        state.send_replace(LinkState::Reconnecting);
    }
}

async fn reconnect<C: Connector>(
    connector: &C,
    config: &ClientConfig,
    closed: &CancellationToken,
) -> Option<C::Io> {
    let policy = &config.reconnect;
    let mut attempt = 0u32;
    loop {
        if policy.max_attempts.is_some_and(|max| attempt >= max) {
            tracing::warn!(
                peer = connector.peer(),
                attempts = attempt,
                "giving up reconnecting"
            );
            return None;
        }
        tokio::select! {
            _ = closed.cancelled() => return None,
            _ = tokio::time::sleep(policy.delay(attempt)) => {}
        }
        attempt += 1;
        let attempt_result = tokio::select! {
            _ = closed.cancelled() => return None,
            result = tokio::time::timeout(config.connect_timeout, connector.connect()) => result,
        };
        match attempt_result {
            Ok(Ok(io)) => {
                tracing::info!(peer = connector.peer(), attempt, "reconnected");
                return Some(io);
            }
            Ok(Err(error)) => {
                tracing::debug!(peer = connector.peer(), attempt, %error, "reconnect failed")
            }
            Err(_) => tracing::debug!(peer = connector.peer(), attempt, "reconnect timed out"),
        }
    }
}

/// Runs one live connection. Returns `true` if it was lost, `false` if the client closed it.
async fn run_link<Io: FrameIo>(
    mut io: Io,
    mut outbound: mpsc::Receiver<Outbound>,
    config: &ClientConfig,
    closed: &CancellationToken,
) -> bool {
    let mut pending: HashMap<u64, oneshot::Sender<Outcome>> = HashMap::new();
    let lost = loop {
        tokio::select! {
            biased;
            _ = closed.cancelled() => break false,
            inbound = io.next() => match inbound {
                Some(Ok(frame)) => deliver(&frame, &mut pending),
                Some(Err(error)) => {
                    tracing::debug!(%error, "connection failed");
                    break true;
                }
                None => break true,
            },
            message = outbound.recv() => {
                let Some(message) = message else { break false };
                // Write everything already queued, then flush once.
                let mut next = Some(message);
                let mut failed = false;
                while let Some(message) = next.take() {
                    let frame = match message {
                        Outbound::Call { call_id, frame, reply } => {
                            pending.insert(call_id, reply);
                            frame
                        }
                        Outbound::Cancel { call_id } => {
                            pending.remove(&call_id);
                            match codec::encode(&Envelope::Cancel(Cancel { call_id }), config.encoding) {
                                Ok(frame) => frame,
                                Err(_) => continue,
                            }
                        }
                    };
                    if io.feed(frame).await.is_err() {
                        failed = true;
                        break;
                    }
                    next = outbound.try_recv().ok();
                }
                if failed || io.flush().await.is_err() {
                    break true;
                }
            }
        }
    };
    if !lost {
        let _ = io.close().await;
    }
    // Calls still queued (never sent) and calls in flight fail: their replies are dropped here,
    // which their callers see as a lost connection.
    drop(pending);
    drop(outbound);
    lost
}

fn deliver(frame: &Frame, pending: &mut HashMap<u64, oneshot::Sender<Outcome>>) {
    match codec::decode(frame) {
        Ok(Envelope::Response(response)) => match response.call_id {
            Some(call_id) => {
                if let Some(reply) = pending.remove(&call_id) {
                    let _ = reply.send(response.outcome);
                }
            }
            None => {
                if let Err(error) = response.outcome {
                    tracing::warn!(%error, "the server reported a connection error");
                }
            }
        },
        Ok(other) => tracing::debug!(
            kind = other.kind(),
            "ignoring an envelope with no call waiting for it"
        ),
        Err(error) => tracing::warn!(%error, "malformed frame from the server"),
    }
}
