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
use futures_util::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_service::Service;

use crate::codec::{self, encode_or_internal};
use crate::protocol::{
    Encoding, Envelope, ErrorCode, Payload, RemoteError, Response, StreamData, StreamEnd,
    StreamError, StreamStart,
};
use crate::server::{Call, ConnectionInfo, ServerConfig};
use crate::stream::{PayloadStream, Reply};
use crate::transport::{FrameError, FrameIo};

type Outcome = Result<Payload, RemoteError>;

/// The most streams one connection may have open; past it, a stream call is refused with
/// `unavailable`.
const MAX_STREAMS_PER_CONNECTION: usize = 1024;

/// What happens next on an open stream.
enum StreamEvent {
    Data { sequence_number: u64, data: Payload },
    Failed(RemoteError),
    End,
}

/// An open stream as the connection loop polls it: `(callId, streamId, encoding, event)`.
type Pump = Abortable<BoxStream<'static, (u64, Arc<str>, Encoding, StreamEvent)>>;

struct OpenStream {
    stream_id: Arc<str>,
    encoding: Encoding,
    abort: AbortHandle,
}

/// Numbers a stream's items 1, 2, 3… and ends it after its first error.
fn pump(
    call_id: u64,
    stream_id: Arc<str>,
    encoding: Encoding,
    items: PayloadStream,
) -> (Pump, AbortHandle) {
    let events = futures_util::stream::unfold(Some((items, 0u64)), |state| async move {
        let (mut items, sequence_number) = state?;
        Some(match items.next().await {
            Some(Ok(data)) => {
                let sequence_number = sequence_number + 1;
                (
                    StreamEvent::Data {
                        sequence_number,
                        data,
                    },
                    Some((items, sequence_number)),
                )
            }
            Some(Err(error)) => (StreamEvent::Failed(error), None),
            None => (StreamEvent::End, None),
        })
    })
    .map(move |event| (call_id, stream_id.clone(), encoding, event))
    .boxed();
    let (abort, registration) = AbortHandle::new_pair();
    (Abortable::new(events, registration), abort)
}

fn new_stream_id() -> Arc<str> {
    let (high, low) = (fastrand::u64(..), fastrand::u64(..));
    Arc::from(format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0x0fff,
        0x8000 | ((low >> 48) & 0x3fff),
        low & 0xffff_ffff_ffff
    ))
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

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
    S: Service<Call, Response = Reply, Error = RemoteError> + Send,
    S::Future: Send + 'static,
{
    let mut in_flight = FuturesUnordered::new();
    let mut aborts: HashMap<u64, AbortHandle> = HashMap::new();
    let mut streams: SelectAll<Pump> = SelectAll::new();
    let mut open_streams: HashMap<u64, OpenStream> = HashMap::new();
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
                let outcome: Result<Result<Reply, RemoteError>, Aborted> = outcome;
                let Ok(outcome) = outcome else { continue }; // cancelled by the client
                let sent = match outcome {
                    Ok(Reply::Stream(items)) if draining => {
                        drop(items);
                        let error = RemoteError::unavailable("the server is shutting down");
                        send_response(&mut io, Some(call_id), Err(error), encoding, &config).await
                    }
                    Ok(Reply::Stream(_)) if open_streams.len() >= MAX_STREAMS_PER_CONNECTION => {
                        let error = RemoteError::unavailable(format!(
                            "this connection already has {MAX_STREAMS_PER_CONNECTION} open streams"
                        ));
                        send_response(&mut io, Some(call_id), Err(error), encoding, &config).await
                    }
                    Ok(Reply::Stream(items)) => {
                        let stream_id = new_stream_id();
                        let start = Envelope::StreamStart(StreamStart { call_id, stream_id: stream_id.to_string() });
                        let (events, abort) = pump(call_id, stream_id.clone(), encoding, items);
                        streams.push(events);
                        open_streams.insert(call_id, OpenStream { stream_id, encoding, abort });
                        send_envelope(&mut io, &start, encoding).await
                    }
                    Ok(Reply::Value(result)) => send_response(&mut io, Some(call_id), Ok(result), encoding, &config).await,
                    Err(error) => send_response(&mut io, Some(call_id), Err(error), encoding, &config).await,
                };
                if sent.is_err() {
                    return Ending::Closed;
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                grace.as_mut().reset(tokio::time::Instant::now() + config.shutdown_grace);
                // Streams may never end by themselves: end them now, telling their clients why.
                for (_, open) in open_streams.drain() {
                    open.abort.abort();
                    let failure = Envelope::StreamError(StreamError {
                        stream_id: open.stream_id.to_string(),
                        error: RemoteError::unavailable("the server is shutting down"),
                    });
                    if send_envelope(&mut io, &failure, open.encoding).await.is_err() {
                        return Ending::Closed;
                    }
                }
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
                        if aborts.contains_key(&call_id) || open_streams.contains_key(&call_id) {
                            let error = RemoteError::bad_request(format!("callId {call_id} is already in flight on this connection"));
                            if send_response(&mut io, Some(call_id), Err(error), frame.encoding, &config).await.is_err() {
                                return Ending::Closed;
                            }
                            continue;
                        }
                        let call = Call::new(invocation, connection.clone());
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
                        // A cancelled stream is dropped: its producer sees that and stops.
                        if let Some(open) = open_streams.remove(&cancel.call_id) {
                            open.abort.abort();
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
            // Last in this biased select, so incoming frames (a `cancel` above all) are read even
            // while streams have items ready. A stream is only polled when its previous item has
            // been written: a producer never runs ahead of the socket (backpressure).
            Some(first) = streams.next(), if !streams.is_empty() => {
                // Write this item and the others already waiting (up to a batch), then flush
                // once: one write for many small items.
                let mut next = Some(first);
                let mut written = 0;
                while let Some((call_id, stream_id, encoding, event)) = next.take() {
                    let envelope = stream_envelope(call_id, &stream_id, event, &mut open_streams);
                    if io.feed(encode_or_internal(&envelope, encoding)).await.is_err() {
                        return Ending::Closed;
                    }
                    written += 1;
                    if written < STREAM_WRITE_BATCH {
                        next = streams.next().now_or_never().flatten();
                    }
                }
                if io.flush().await.is_err() {
                    return Ending::Closed;
                }
            }
        }
    }
    let _ = io.close().await;
    ending
}

/// How many stream items are written before a flush.
const STREAM_WRITE_BATCH: usize = 64;

/// The envelope for one stream event; an ended stream is no longer open.
fn stream_envelope(
    call_id: u64,
    stream_id: &str,
    event: StreamEvent,
    open_streams: &mut HashMap<u64, OpenStream>,
) -> Envelope {
    match event {
        StreamEvent::Data {
            sequence_number,
            data,
        } => Envelope::StreamData(StreamData {
            stream_id: stream_id.to_owned(),
            sequence_number,
            data,
            timestamp: now_millis(),
        }),
        StreamEvent::Failed(error) => {
            open_streams.remove(&call_id);
            Envelope::StreamError(StreamError {
                stream_id: stream_id.to_owned(),
                error,
            })
        }
        StreamEvent::End => {
            open_streams.remove(&call_id);
            Envelope::StreamEnd(StreamEnd {
                stream_id: stream_id.to_owned(),
            })
        }
    }
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
