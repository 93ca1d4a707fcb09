//! The server's per-connection loop, shared by every network transport (they differ only in how
//! they frame bytes).
//!
//! One task per connection reads frames, starts a call for each invocation and writes each
//! answer as soon as it is ready, so calls are multiplexed and answered out of order. A frame that
//! cannot be decoded is answered with `bad_request` and the connection stays usable; a frame over
//! the size limit is answered with `payload_too_large` and the connection is closed.

use std::sync::Arc;
use std::task::Poll;

use futures_util::future::{AbortHandle, Abortable, Aborted, BoxFuture};
use futures_util::stream::{FuturesUnordered, SelectAll};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_service::Service;

use crate::call_slots::CallSlots;
use crate::codec::{self, Frame, encode_or_internal};
use crate::protocol::{
    CallIdMap, Encoding, Envelope, ErrorCode, Invocation, Payload, RemoteError, Response,
    StreamError, StreamResume, StreamStart,
};
use crate::server::streams::{
    ConnectionSignal, Handover, HandoverSender, PUMP_BATCH, Producer, Pump, StreamOptions,
    StreamRegistry,
};
use crate::server::write_deadline::WriteDeadline;
use crate::server::{Call, ConnectionInfo, ResumeCheck, ServerConfig};
use crate::stream::Reply;
use crate::transport::{FrameError, FrameIo};

type Outcome = Result<Payload, RemoteError>;

/// The most streams one connection may have open; past it, a stream call is refused with
/// `unavailable`.
const MAX_STREAMS_PER_CONNECTION: usize = 1024;

struct OpenStream {
    stream_id: Arc<str>,
    encoding: Encoding,
}

/// A `streamResume` being served: checked by the service stack, then the stream taken over from
/// wherever it was.
type Resumption = BoxFuture<'static, (StreamResume, Encoding, Resumed)>;

/// What came of a `streamResume`.
enum Resumed {
    /// The stream, taken over for this connection.
    Taken(Box<Producer>),
    /// This server does not have the stream (any more): it is restarted.
    Gone,
    /// Refused by the middleware, because its method is not a stream method, or because
    /// another principal opened the stream.
    Refused(RemoteError),
    /// The service ran the method itself (a service written by hand, which does not know
    /// resumptions): its answer, as to a restart.
    Answered(Result<Reply, RemoteError>),
}

/// The `data` of the `streamError` that tells a connection its stream was resumed on another
/// one: `{"reason": "resumed_elsewhere"}`.
#[derive(serde::Serialize)]
struct ResumedElsewhere {
    reason: &'static str,
}

fn resumed_elsewhere(encoding: Encoding) -> RemoteError {
    let data = ResumedElsewhere {
        reason: "resumed_elsewhere",
    };
    RemoteError {
        data: Payload::encode(&data, encoding).ok(),
        ..RemoteError::unavailable("the stream was resumed on another connection")
    }
}

/// Presents `resume` to the service stack as a call of the stream's method (with one of the
/// connection's slots), so the middleware checks its caller as for any call; the service checks
/// that the method is a stream method and says who the caller is, and only then is the stream
/// taken over, if that caller may (see [`StreamRegistry::take`]).
async fn resume_through<S>(
    service: &mut S,
    resume: StreamResume,
    encoding: Encoding,
    connection: &Arc<ConnectionInfo>,
    slots: &Arc<CallSlots>,
    registry: Arc<StreamRegistry>,
    requester: HandoverSender,
) -> Resumption
where
    S: Service<Call, Response = Reply, Error = RemoteError> + Send,
    S::Future: Send + 'static,
{
    let invocation = Invocation {
        call_id: resume.call_id.unwrap_or(0),
        actor_id: resume.actor_id.clone(),
        method: resume.method.clone(),
        args: resume.args.clone(),
        metadata: resume.metadata.clone(),
    };
    let check = Arc::new(ResumeCheck::default());
    let mut call = Call::new(invocation, connection.clone());
    // The resume holds one of the connection's slots until the stream is taken over (which can
    // wait for another connection's handover), so a connection's pending resumes are bounded by
    // its in-flight limit like its calls.
    let slot = slots.take();
    call.slot = Some(slot.clone());
    call.resume = Some(check.clone());
    let checked = match service.ready().await {
        Ok(service) => service.call(call).boxed(),
        Err(error) => {
            return Box::pin(std::future::ready((
                resume,
                encoding,
                Resumed::Refused(error),
            )));
        }
    };
    Box::pin(async move {
        let resumed = match checked.await {
            Err(error) => Resumed::Refused(error),
            Ok(reply) => match check.caller() {
                Some(caller) => match registry
                    .take(&resume.stream_id, caller, Some(&requester))
                    .await
                {
                    Ok(Some(producer)) => Resumed::Taken(producer),
                    Ok(None) => Resumed::Gone,
                    Err(error) => Resumed::Refused(error),
                },
                None => Resumed::Answered(Ok(reply)),
            },
        };
        drop(slot);
        (resume, encoding, resumed)
    })
}

/// A stream id: a version 4 UUID from the operating system's random source, since whoever knows
/// the id of a stream opened without an authenticated principal can resume it (the id is then a
/// bearer secret); a stream opened by a principal can be resumed only by that principal.
fn new_stream_id() -> Arc<str> {
    let mut random = [0u8; 16];
    if getrandom::fill(&mut random).is_err() {
        // No OS randomness (never seen in practice): ids stay unique, only less secret.
        random =
            ((u128::from(fastrand::u64(..)) << 64) | u128::from(fastrand::u64(..))).to_le_bytes();
    }
    let value = u128::from_le_bytes(random);
    let (high, low) = ((value >> 64) as u64, value as u64);
    Arc::from(format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0x0fff,
        0x8000 | ((low >> 48) & 0x3fff),
        low & 0xffff_ffff_ffff
    ))
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
/// any client can read), bincode on TCP (the only encoding there). Streams still open when the
/// peer leaves are parked in `registry`, for the client to resume on another connection.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_connection<Io, S>(
    io: Io,
    mut service: S,
    connection: Arc<ConnectionInfo>,
    config: ServerConfig,
    registry: Arc<StreamRegistry>,
    shutdown: CancellationToken,
    first_encoding: Encoding,
) -> Ending
where
    Io: FrameIo,
    S: Service<Call, Response = Reply, Error = RemoteError> + Send,
    S::Future: Send + 'static,
{
    // A peer that reads nothing for the idle timeout is given up on, as one that sends nothing.
    let mut io = WriteDeadline::new(io, config.idle_timeout);
    // Every call holds a slot until it is finished, including a started call whose caller
    // stopped waiting: no new call is read while they are all taken.
    let slots = CallSlots::new(
        config.max_in_flight_per_connection,
        config.max_queued_calls_per_actor,
    );
    let mut held: Option<Frame> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut aborts: CallIdMap<AbortHandle> = CallIdMap::default();
    let mut resumptions: FuturesUnordered<Resumption> = FuturesUnordered::new();
    let (handovers, mut signals) = tokio::sync::mpsc::unbounded_channel::<ConnectionSignal>();
    // The shutdown comes as a signal too, from a task of its own (it ends with the connection).
    {
        let (sender, shutdown) = (handovers.clone(), shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = sender.send(ConnectionSignal::Shutdown);
                }
                _ = sender.closed() => {}
            }
        });
    }
    let mut streams = OpenStreams {
        pumps: SelectAll::new(),
        open: CallIdMap::default(),
        registry: &registry,
        handovers: &handovers,
    };
    // Errors about frames that say nothing of their encoding are sent in the last one seen
    // (before any, in the transport's own).
    let mut reply_encoding = first_encoding;
    let grace = tokio::time::sleep(config.shutdown_grace);
    tokio::pin!(grace);
    let mut draining = false;

    let ending = 'serve: loop {
        if draining && in_flight.is_empty() {
            break Ending::Closed;
        }
        tokio::select! {
            biased;
            Some((call_id, encoding, options, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                aborts.remove(&call_id);
                let outcome: Result<Result<Reply, RemoteError>, Aborted> = outcome;
                let Ok(outcome) = outcome else { continue }; // cancelled by the client
                let finished = (call_id, encoding, options, outcome);
                if answer(&mut io, finished, draining, &mut streams, &config).await.is_err() {
                    break Ending::Closed;
                }
            }
            Some(signal) = signals.recv() => match signal {
                // A client resumed one of our streams on another connection: it has left this one.
                // The client that opened it is told.
                ConnectionSignal::Handover(request) => {
                    let to_same_connection = request.to_same_connection;
                    if let Some(lost) = hand_over(request, &mut streams.pumps, &mut streams.open)
                        && !to_same_connection
                        && send_stream_error(&mut io, &lost.stream_id, resumed_elsewhere(lost.encoding), lost.encoding).await.is_err()
                    {
                        break Ending::Closed;
                    }
                }
                ConnectionSignal::Shutdown if !draining => {
                    draining = true;
                    grace.as_mut().reset(tokio::time::Instant::now() + config.shutdown_grace);
                    // Streams may never end by themselves: end them now, telling their clients why.
                    for pump in streams.pumps.iter_mut() {
                        drop(pump.take_producer());
                    }
                    for (_, open) in streams.open.drain() {
                        registry.close(&open.stream_id);
                        let error = shutting_down();
                        if send_stream_error(&mut io, &open.stream_id, error, open.encoding).await.is_err() {
                            break 'serve Ending::Closed;
                        }
                    }
                }
                ConnectionSignal::Shutdown => {}
            },
            Some((resume, encoding, resumed)) = resumptions.next(), if !resumptions.is_empty() => {
                let producer = match resumed {
                    Resumed::Refused(error) => {
                        if send_stream_error(&mut io, &resume.stream_id, error, encoding).await.is_err() {
                            break Ending::Closed;
                        }
                        continue;
                    }
                    Resumed::Answered(outcome) => {
                        let call_id = resume.call_id.unwrap_or(0);
                        let options = StreamOptions::from_metadata(&resume.metadata);
                        if answer(&mut io, (call_id, encoding, options, outcome), draining, &mut streams, &config).await.is_err() {
                            break Ending::Closed;
                        }
                        continue;
                    }
                    Resumed::Taken(producer) => Some(producer),
                    Resumed::Gone => None,
                };
                let call_id = resume.call_id.or(producer.as_ref().map(|producer| producer.original_call_id)).unwrap_or(0);
                if let Err(error) = call_id_free(call_id, &aborts, &streams.open) {
                    if let Some(producer) = producer {
                        registry.park(Arc::from(resume.stream_id.as_str()), producer);
                    }
                    if send_stream_error(&mut io, &resume.stream_id, error, encoding).await.is_err() {
                        break Ending::Closed;
                    }
                    continue;
                }
                let producer = producer.filter(|_| !draining).and_then(|mut producer| {
                    producer.resume_after(resume.last_sequence).then_some(producer)
                });
                match producer {
                    Some(producer) => {
                        if streams.open.len() >= MAX_STREAMS_PER_CONNECTION {
                            registry.park(Arc::from(resume.stream_id.as_str()), producer);
                            if send_stream_error(&mut io, &resume.stream_id, too_many_streams(), encoding).await.is_err() {
                                break Ending::Closed;
                            }
                            continue;
                        }
                        tracing::debug!(stream_id = %resume.stream_id, last_sequence = resume.last_sequence, "stream resumed");
                        let stream_id: Arc<str> = Arc::from(resume.stream_id.as_str());
                        registry.attach(stream_id.clone(), &producer, &handovers);
                        streams.pumps.push(Pump::new(stream_id.clone(), call_id, encoding, producer, registry.clone(), config.max_frame_size));
                        streams.open.insert(call_id, OpenStream { stream_id, encoding });
                    }
                    _ if draining => {
                        let error = shutting_down();
                        if send_stream_error(&mut io, &resume.stream_id, error, encoding).await.is_err() {
                            break Ending::Closed;
                        }
                    }
                    _ => {
                        // Not here any more, or the replay buffer no longer reaches back: start
                        // the stream afresh with the same call (the client reports the gap).
                        tracing::debug!(stream_id = %resume.stream_id, last_sequence = resume.last_sequence, "stream restarted: cannot resume it");
                        let invocation = Invocation {
                            call_id,
                            actor_id: resume.actor_id,
                            method: resume.method,
                            args: resume.args,
                            metadata: resume.metadata,
                        };
                        if let Some(finished) = start_call(&mut service, invocation, encoding, &connection, &slots, &mut aborts, &mut in_flight).await
                            && answer(&mut io, finished, draining, &mut streams, &config).await.is_err()
                        {
                            break Ending::Closed;
                        }
                    }
                }
            }
            _ = &mut grace, if draining => {
                tracing::warn!(calls = in_flight.len(), "shutdown grace period over; dropping calls in flight");
                break Ending::Closed;
            }
            // Every slot taken and a call read: wait until a slot is released (by a call here,
            // or one that runs on after a `cancel`).
            () = slots.freed(), if !draining && held.is_some() && slots.is_full() => {}
            // Read on while every slot is taken, so that a `cancel` is seen and the peer's
            // leaving too (which withdraws its queued calls), but hold the first call read
            // until a slot is free: one frame read ahead at most.
            frame = next_frame(&mut io, &mut held), if !draining && (held.is_none() || !slots.is_full()) => {
                let frame = match frame {
                    Some(Ok(frame)) => frame,
                    Some(Err(FrameError::TooLarge { size, max })) => {
                        let error = RemoteError::new(
                            ErrorCode::PayloadTooLarge,
                            format!("frame of {size} bytes exceeds the limit of {max} bytes"),
                        );
                        let _ = send_response(&mut io, None, Err(error), reply_encoding, &config).await;
                        break Ending::DrainInput;
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "connection failed");
                        break Ending::Closed;
                    }
                    None => break Ending::Closed,
                };
                reply_encoding = frame.encoding;
                let envelope = match codec::decode(&frame) {
                    Ok(envelope) => envelope,
                    Err(error) => {
                        tracing::debug!(%error, "malformed frame");
                        let outcome = Err(error.to_remote_error());
                        if send_response(&mut io, error.call_id, outcome, frame.encoding, &config).await.is_err() {
                            break Ending::Closed;
                        }
                        continue;
                    }
                };
                if slots.is_full() && matches!(envelope, Envelope::Invocation(_) | Envelope::StreamResume(_)) {
                    held = Some(frame);
                    continue;
                }
                match envelope {
                    Envelope::Invocation(invocation) => {
                        let call_id = invocation.call_id;
                        if let Err(error) = call_id_free(call_id, &aborts, &streams.open) {
                            if send_response(&mut io, Some(call_id), Err(error), frame.encoding, &config).await.is_err() {
                                break Ending::Closed;
                            }
                            continue;
                        }
                        if let Some(finished) = start_call(&mut service, invocation, frame.encoding, &connection, &slots, &mut aborts, &mut in_flight).await
                            && answer(&mut io, finished, draining, &mut streams, &config).await.is_err()
                        {
                            break Ending::Closed;
                        }
                    }
                    Envelope::StreamAck(ack) => {
                        // (A stream that already ended, or is not here, needs no more acks.)
                        let pumped = streams
                            .pumps
                            .iter_mut()
                            .find(|pump| *pump.stream_id == *ack.stream_id)
                            .is_some_and(|pump| pump.acknowledge(ack.sequence_number));
                        if !pumped {
                            registry.acknowledge_ended(&ack.stream_id, ack.sequence_number);
                        }
                    }
                    Envelope::Cancel(cancel) => {
                        if let Some(abort) = aborts.remove(&cancel.call_id) {
                            abort.abort();
                        }
                        // A cancelled stream is dropped: its producer sees that and stops.
                        if let Some(open) = streams.open.remove(&cancel.call_id) {
                            registry.close(&open.stream_id);
                            for pump in streams.pumps.iter_mut().filter(|pump| pump.call_id == cancel.call_id) {
                                drop(pump.take_producer());
                            }
                        }
                    }
                    Envelope::StreamResume(resume) => {
                        let resumption = resume_through(&mut service, resume, frame.encoding, &connection, &slots, registry.clone(), handovers.clone()).await;
                        resumptions.push(resumption);
                    }
                    other => {
                        let call_id = match &other {
                            Envelope::StreamStart(start) => Some(start.call_id),
                            Envelope::Response(response) => response.call_id,
                            _ => None,
                        };
                        let error = RemoteError::bad_request(format!("a client may not send '{}' envelopes", other.kind()));
                        if send_response(&mut io, call_id, Err(error), frame.encoding, &config).await.is_err() {
                            break Ending::Closed;
                        }
                    }
                }
            }
            // Last in this biased select, so incoming frames (a `cancel` above all) are read even
            // while streams have items ready. A stream is polled again only once its previous
            // batch has been written: a producer runs at most `PUMP_BATCH` items ahead of the
            // socket (backpressure).
            Some(first) = streams.pumps.next(), if !streams.pumps.is_empty() => {
                // Write the frames that were ready together, and those of other streams ready
                // too (up to a limit), then flush once: one write for many small items.
                let mut next = Some(first);
                let mut written = 0;
                while let Some(output) = next.take() {
                    written += output.items;
                    if output.ended {
                        streams.open.remove(&output.call_id);
                    }
                    for frame in output.frames {
                        if io.feed(frame).await.is_err() {
                            break 'serve Ending::Closed;
                        }
                    }
                    if written < STREAM_WRITE_BATCH {
                        next = streams.pumps.next().now_or_never().flatten();
                    }
                }
                if io.flush().await.is_err() {
                    break Ending::Closed;
                }
            }
        }
    };
    // The streams of a client that went away wait for it to resume them elsewhere.
    for mut pump in streams.pumps {
        if let Some(producer) = pump.take_producer() {
            registry.park(pump.stream_id.clone(), producer);
        }
    }
    // A resume that asked this connection for a stream meanwhile finds it parked: dropping its
    // request tells it to look again.
    drop(signals);
    let _ = io.close().await;
    ending
}

/// The frame held back while every slot was taken, or else the next one from the peer.
async fn next_frame<Io: FrameIo>(
    io: &mut Io,
    held: &mut Option<Frame>,
) -> Option<Result<Frame, FrameError>> {
    match held.take() {
        Some(frame) => Some(Ok(frame)),
        None => io.next().await,
    }
}

/// A connection's open streams: their pumps, what a `cancel` or the end of each needs to know,
/// and where to open new ones.
struct OpenStreams<'a> {
    pumps: SelectAll<Pump>,
    open: CallIdMap<OpenStream>,
    registry: &'a Arc<StreamRegistry>,
    handovers: &'a HandoverSender,
}

/// Sends the answer to a finished call: its value or error, or the start of the stream it
/// opened (then pumped with the connection's other streams).
async fn answer<Io: FrameIo>(
    io: &mut Io,
    (call_id, encoding, options, outcome): Finished,
    draining: bool,
    streams: &mut OpenStreams<'_>,
    config: &ServerConfig,
) -> Result<(), FrameError> {
    match outcome {
        Ok(Reply::Stream(items)) if draining => {
            drop(items);
            send_response(io, Some(call_id), Err(shutting_down()), encoding, config).await
        }
        Ok(Reply::Stream(_)) if streams.open.len() >= MAX_STREAMS_PER_CONNECTION => {
            send_response(io, Some(call_id), Err(too_many_streams()), encoding, config).await
        }
        Ok(Reply::Stream(items)) => {
            let stream_id = new_stream_id();
            let start = Envelope::StreamStart(StreamStart {
                call_id,
                stream_id: stream_id.to_string(),
            });
            let producer = streams.registry.open(
                stream_id.clone(),
                call_id,
                options,
                items,
                streams.handovers,
            );
            streams.pumps.push(Pump::new(
                stream_id.clone(),
                call_id,
                encoding,
                producer,
                streams.registry.clone(),
                config.max_frame_size,
            ));
            streams.open.insert(
                call_id,
                OpenStream {
                    stream_id,
                    encoding,
                },
            );
            send_envelope(io, &start, encoding).await
        }
        Ok(Reply::Value(result)) => {
            send_response(io, Some(call_id), Ok(result), encoding, config).await
        }
        Err(error) => send_response(io, Some(call_id), Err(error), encoding, config).await,
    }
}

/// `bad_request` if a call or stream with `call_id` is still open on this connection.
fn call_id_free(
    call_id: u64,
    aborts: &CallIdMap<AbortHandle>,
    open_streams: &CallIdMap<OpenStream>,
) -> Result<(), RemoteError> {
    if (!aborts.is_empty() && aborts.contains_key(&call_id))
        || (!open_streams.is_empty() && open_streams.contains_key(&call_id))
    {
        return Err(RemoteError::bad_request(format!(
            "callId {call_id} is already in flight on this connection"
        )));
    }
    Ok(())
}

fn shutting_down() -> RemoteError {
    RemoteError::unavailable("the server is shutting down")
}

fn too_many_streams() -> RemoteError {
    RemoteError::unavailable(format!(
        "this connection already has {MAX_STREAMS_PER_CONNECTION} open streams"
    ))
}

/// Starts a call through the service, with one of the connection's slots. A call that completes when first polled (a method that
/// does not wait: the usual case) is returned, to be answered at once; any other goes into
/// `in_flight`, where its answer comes out.
async fn start_call<S>(
    service: &mut S,
    invocation: Invocation,
    encoding: Encoding,
    connection: &Arc<ConnectionInfo>,
    slots: &Arc<CallSlots>,
    aborts: &mut CallIdMap<AbortHandle>,
    in_flight: &mut FuturesUnordered<InFlight>,
) -> Option<Finished>
where
    S: Service<Call, Response = Reply, Error = RemoteError> + Send,
    S::Future: Send + 'static,
{
    let call_id = invocation.call_id;
    let options = StreamOptions::from_metadata(&invocation.metadata);
    let mut call = Call::new(invocation, connection.clone());
    call.slot = Some(slots.take());
    let mut future = match service.ready().await {
        Ok(service) => service.call(call).boxed(),
        Err(error) => return Some((call_id, encoding, options, Err(error))),
    };
    // Polled here with the connection's own waker: if it is not done, the next poll (by
    // `in_flight`) takes over the waking.
    if let Poll::Ready(outcome) =
        std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
    {
        return Some((call_id, encoding, options, outcome));
    }
    let (abort, registration) = AbortHandle::new_pair();
    aborts.insert(call_id, abort);
    in_flight.push(
        Abortable::new(future, registration)
            .map(move |outcome| (call_id, encoding, options, outcome))
            .boxed(),
    );
    None
}

/// A call that finished: its `callId`, the encoding to answer in, the stream options it asked
/// for (used if it opens a stream), and its outcome.
type Finished = (u64, Encoding, StreamOptions, Result<Reply, RemoteError>);

/// A call in flight: its `callId`, the encoding to answer in, the stream options it asked for
/// (used if it opens a stream), and its outcome (`Err(Aborted)` when the client cancelled it).
type InFlight = BoxFuture<
    'static,
    (
        u64,
        Encoding,
        StreamOptions,
        Result<Result<Reply, RemoteError>, Aborted>,
    ),
>;

/// Gives the stream `request` asks for to the connection that asked (if this one still pumps it).
/// Returns the stream handed over, whose client is to be told.
fn hand_over(
    request: Handover,
    streams: &mut SelectAll<Pump>,
    open_streams: &mut CallIdMap<OpenStream>,
) -> Option<OpenStream> {
    let pump = streams
        .iter_mut()
        .find(|pump| pump.stream_id == request.stream_id)?;
    let producer = pump.take_producer()?;
    match request.reply.send(producer) {
        Ok(()) => open_streams.remove(&pump.call_id),
        // The resuming side gave up waiting: keep pumping it here.
        Err(producer) => {
            pump.restore_producer(producer);
            None
        }
    }
}

/// How many stream items are written (at least) before a flush.
const STREAM_WRITE_BATCH: usize = 4 * PUMP_BATCH;

async fn send_stream_error<Io: FrameIo>(
    io: &mut Io,
    stream_id: &str,
    error: RemoteError,
    encoding: Encoding,
) -> Result<(), FrameError> {
    let failure = Envelope::StreamError(StreamError {
        stream_id: stream_id.to_owned(),
        error,
    });
    send_envelope(io, &failure, encoding).await
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
