//! The server's per-connection loop, shared by every network transport (they differ only in how
//! they frame bytes).
//!
//! One task per connection reads frames, starts a call for each invocation and writes each
//! answer as soon as it is ready, so calls are multiplexed and answered out of order. A frame that
//! cannot be decoded is answered with `bad_request` and the connection stays usable; a frame over
//! the size limit is answered with `payload_too_large` and the connection is closed.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::{AbortHandle, Abortable, Aborted};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_service::Service;

use crate::codec::{self, Frame};
use crate::protocol::{Encoding, Envelope, ErrorCode, Payload, RemoteError, Response, StreamError};
use crate::server::{Call, ConnectionInfo, ServerConfig};
use crate::transport::{FrameError, FrameIo};

type Outcome = Result<Payload, RemoteError>;

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The peer left, the server shut down, or the connection failed.
    Closed,
    /// The peer sent an oversize frame: it was answered and the connection closed, but the rest
    /// of that frame may still be arriving. The transport should read and discard it for a
    /// moment before closing the socket, or the kernel may reset the connection and destroy the
    /// answer before the peer reads it.
    DrainInput,
}

/// Serves one connection until the peer leaves, the framing breaks, or `shutdown` fires (then the
/// calls in flight get up to `config.shutdown_grace` to finish and send their answers).
/// `first_encoding` is for errors about frames before any readable one: JSON on WebSocket (what
/// any client can read), bincode on TCP (the only encoding there).
pub(crate) async fn serve_connection<Io, S>(
    mut io: Io,
    mut service: S,
    connection: Arc<ConnectionInfo>,
    config: ServerConfig,
    shutdown: CancellationToken,
    first_encoding: Encoding,
) -> Ending
where
    Io: FrameIo,
    S: Service<Call, Response = Payload, Error = RemoteError> + Send,
    S::Future: Send + 'static,
{
    let mut in_flight = FuturesUnordered::new();
    let mut aborts: HashMap<u64, AbortHandle> = HashMap::new();
    // Errors about frames that say nothing of their encoding are sent in the last one seen
    // (before any, in the transport's own).
    let mut reply_encoding = first_encoding;
    let grace = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(grace);
    let mut draining = false;
    let mut ending = Ending::Closed;

    loop {
        if draining && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some((call_id, encoding, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                aborts.remove(&call_id);
                let outcome: Result<Outcome, Aborted> = outcome;
                let Ok(outcome) = outcome else { continue }; // cancelled by the client
                if send_response(&mut io, Some(call_id), outcome, encoding, &config).await.is_err() {
                    return Ending::Closed;
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                grace.as_mut().reset(tokio::time::Instant::now() + config.shutdown_grace);
            }
            _ = &mut grace, if draining => {
                tracing::warn!(calls = in_flight.len(), "shutdown grace period over; dropping calls in flight");
                break;
            }
            frame = io.next(), if !draining && in_flight.len() < config.max_in_flight_per_connection => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(FrameError::TooLarge { size, max })) => {
                        let error = RemoteError::new(
                            ErrorCode::PayloadTooLarge,
                            format!("frame of {size} bytes exceeds the limit of {max} bytes"),
                        );
                        let _ = send_response(&mut io, None, Err(error), reply_encoding, &config).await;
                        ending = Ending::DrainInput;
                        break;
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "connection failed");
                        return Ending::Closed;
                    }
                    None => return Ending::Closed,
                };
                reply_encoding = frame.encoding;
                let envelope = match codec::decode(&frame) {
                    Ok(envelope) => envelope,
                    Err(error) => {
                        tracing::debug!(%error, "malformed frame");
                        let outcome = Err(error.to_remote_error());
                        if send_response(&mut io, error.call_id, outcome, frame.encoding, &config).await.is_err() {
                            return Ending::Closed;
                        }
                        continue;
                    }
                };
                match envelope {
                    Envelope::Invocation(invocation) => {
                        let call_id = invocation.call_id;
                        if aborts.contains_key(&call_id) {
                            let error = RemoteError::bad_request(format!("callId {call_id} is already in flight on this connection"));
                            if send_response(&mut io, Some(call_id), Err(error), frame.encoding, &config).await.is_err() {
                                return Ending::Closed;
                            }
                            continue;
                        }
                        let call = Call { invocation, connection: connection.clone() };
                        let future = match service.ready().await {
                            Ok(service) => service.call(call).boxed(),
                            Err(error) => std::future::ready(Err(error)).boxed(),
                        };
                        let (abort, registration) = AbortHandle::new_pair();
                        aborts.insert(call_id, abort);
                        let encoding = frame.encoding;
                        in_flight.push(Abortable::new(future, registration).map(move |outcome| (call_id, encoding, outcome)));
                    }
                    Envelope::Cancel(cancel) => {
                        if let Some(abort) = aborts.remove(&cancel.call_id) {
                            abort.abort();
                        }
                    }
                    Envelope::StreamResume(resume) => {
                        let failure = Envelope::StreamError(StreamError {
                            stream_id: resume.stream_id.clone(),
                            error: RemoteError::bad_request(format!("no stream '{}' to resume on this server", resume.stream_id)),
                        });
                        if send_envelope(&mut io, &failure, frame.encoding).await.is_err() {
                            return Ending::Closed;
                        }
                    }
                    other => {
                        let call_id = match &other {
                            Envelope::StreamStart(start) => Some(start.call_id),
                            Envelope::Response(response) => response.call_id,
                            _ => None,
                        };
                        let error = RemoteError::bad_request(format!("a client may not send '{}' envelopes", other.kind()));
                        if send_response(&mut io, call_id, Err(error), frame.encoding, &config).await.is_err() {
                            return Ending::Closed;
                        }
                    }
                }
            }
        }
    }
    let _ = io.close().await;
    ending
}

/// Sends the answer to `call_id`; a result over the frame limit is replaced by a
/// `payload_too_large` error.
async fn send_response<Io: FrameIo>(
    io: &mut Io,
    call_id: Option<u64>,
    outcome: Outcome,
    encoding: Encoding,
    config: &ServerConfig,
) -> Result<(), FrameError> {
    let envelope = Envelope::Response(Response { call_id, outcome });
    let frame = encode_or_internal(&envelope, encoding);
    if frame.data.len() > config.max_frame_size {
        let error = RemoteError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the answer of {} bytes exceeds the frame limit of {} bytes",
                frame.data.len(),
                config.max_frame_size
            ),
        );
        let envelope = Envelope::Response(Response {
            call_id,
            outcome: Err(error),
        });
        return io.send(encode_or_internal(&envelope, encoding)).await;
    }
    io.send(frame).await
}

async fn send_envelope<Io: FrameIo>(
    io: &mut Io,
    envelope: &Envelope,
    encoding: Encoding,
) -> Result<(), FrameError> {
    io.send(encode_or_internal(envelope, encoding)).await
}

/// Encodes `envelope`; if that fails (a bug), an `internal` error response in its place.
fn encode_or_internal(envelope: &Envelope, encoding: Encoding) -> Frame {
    match codec::encode(envelope, encoding) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::error!(%error, kind = envelope.kind(), "cannot encode an envelope");
            let call_id = match envelope {
                Envelope::Response(response) => response.call_id,
                _ => None,
            };
            let fallback = Envelope::Response(Response {
                call_id,
                outcome: Err(RemoteError::internal(format!(
                    "cannot encode the answer: {error}"
                ))),
            });
            codec::encode(&fallback, encoding)
                .expect("an error response without payloads always encodes")
        }
    }
}
