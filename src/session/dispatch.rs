//! The client frames of an attached stream: each one acted on, and answered with a control
//! frame through the stream's [`StreamControl`] when it needs an answer.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;

use crate::{
    clock::Timestamp,
    engine::Submitter,
    error::ArcpError,
    protocol::{
        client::{ClientMessage, Inbound},
        control::{Control, ControlMessage},
        Features,
    },
    store::{jobs::Subscriber, session::AckOutcome},
};

use super::{
    attached::AttachedStream,
    liveness,
    output::StreamEnd,
    stream_control::{Reply, Then},
    InboundStream,
};

/// Acts on client frames until the client stops sending or closes the session; with
/// `heartbeat`, also watches that the client keeps sending, and gives the stream up when it
/// does not (`liveness`).
pub(crate) async fn read_loop(stream: Arc<AttachedStream>, mut inbound: InboundStream) {
    match stream.heartbeat {
        None => read_frames(&stream, &mut inbound).await,
        // Boxed: inline, the watch's timer and the second copy of the reading would be part of
        // every session's task, heartbeat or not (row 5 of BENCHMARKS.md).
        Some(interval) => Box::pin(read_watched(&stream, &mut inbound, interval)).await,
    }
    stream.control.reader_done();
}

/// [`read_frames`] beside the watch that gives the stream up once the client falls silent.
async fn read_watched(stream: &AttachedStream, inbound: &mut InboundStream, interval: Duration) {
    // The watch outlives the reading: a client that half-closed can no longer be heard, and
    // one that closed the session may never read the answer while its stream holds on.
    let reading = async {
        read_frames(stream, inbound).await;
        std::future::pending::<()>().await
    };
    tokio::select! {
        biased;
        () = reading => {}
        () = liveness::until_lost(&stream.heard, interval) => {}
    }
    liveness::declare_lost(stream, interval).await;
}

async fn read_frames(stream: &AttachedStream, inbound: &mut InboundStream) {
    while let Some(frame) = inbound.next().await {
        stream.heard.now();
        let (request_id, outcome, after_error) = match frame {
            Ok(frame) => (
                frame.id.clone(),
                dispatch(stream, frame).await,
                Then::Continue,
            ),
            Err(rejected) => {
                // The transport cannot read past this one: end the stream after the answer.
                let then = match rejected.fault {
                    Some(fault) if fault.ends_stream() => Then::End(StreamEnd::Unreadable(fault)),
                    _ => Then::Continue,
                };
                (rejected.request_id, Err(rejected.error), then)
            }
        };
        let reply = match outcome {
            Ok(None) => continue,
            Ok(Some(message)) => Reply {
                then: if matches!(message, ControlMessage::Closed { .. }) {
                    Then::Close
                } else {
                    Then::Continue
                },
                control: Control {
                    request_id,
                    message,
                },
            },
            Err(error) => Reply {
                control: Control {
                    request_id,
                    message: ControlMessage::Error(error),
                },
                then: after_error,
            },
        };
        let ends = reply.then != Then::Continue;
        stream.control.send(reply).await;
        if ends {
            return;
        }
    }
}

/// Handles one client frame of an open session; returns the control frame to answer with.
async fn dispatch(
    stream: &AttachedStream,
    frame: Inbound,
) -> Result<Option<ControlMessage>, ArcpError> {
    let record = &stream.record;
    let session = record.id();
    if let Some(claimed) = &frame.session_id {
        if claimed != session {
            return Err(ArcpError::InvalidRequest(format!(
                "frame names session {claimed}, but this stream carries {session}"
            )));
        }
    }
    let jobs = &stream.services.jobs;
    match frame.message {
        ClientMessage::Hello(_) | ClientMessage::Resume(_) => Err(ArcpError::InvalidRequest(
            "the session is already open; open a new stream to start or resume another".into(),
        )),
        ClientMessage::Ping { nonce } => Ok(Some(ControlMessage::Pong {
            ping_nonce: nonce,
            received_at: Timestamp::now(),
        })),
        ClientMessage::Pong => Ok(None),
        ClientMessage::Close { reason } => {
            tracing::info!(session = %session, reason = reason.as_deref().unwrap_or(""), "session closed by client; jobs continue");
            Ok(Some(ControlMessage::Closed { reason }))
        }
        ClientMessage::Submit(submit) => {
            let by = Submitter {
                record: record.clone(),
                log: stream.log.clone(),
                features: record.features(),
                request_id: frame.id,
                trace_id: frame.trace_id,
            };
            // Boxed, like `subscribe`: inline, the largest branch's future would be part of
            // every session's task for its whole life, idle or not (row 5 of BENCHMARKS.md).
            Box::pin(jobs.submit(by, submit)).await.map(|_| None)
        }
        ClientMessage::Cancel { job_id, reason } => {
            Box::pin(jobs.cancel(record.principal(), session, &job_id, reason))
                .await
                .map(|_| None)
        }
        ClientMessage::Ack { last_processed_seq } => {
            require(&record.features(), "ack")?;
            match record.record_ack(stream.epoch, last_processed_seq).await? {
                AckOutcome::Recorded { .. } => {
                    stream
                        .log
                        .release_through(last_processed_seq, stream.epoch)
                        .await?;
                    Ok(None)
                }
                AckOutcome::BeyondDelivered { delivered } => Err(ArcpError::InvalidRequest(format!(
                    "session.ack names event {last_processed_seq}, but only events up to {delivered} were delivered"
                ))),
                AckOutcome::Superseded => {
                    stream.control.stop(StreamEnd::Superseded);
                    Ok(None)
                }
            }
        }
        ClientMessage::ListJobs(request) => {
            require(&record.features(), "list_jobs")?;
            let (jobs, next_cursor) = Box::pin(jobs.list(record.principal(), request)).await?;
            Ok(Some(ControlMessage::Jobs { jobs, next_cursor }))
        }
        ClientMessage::Subscribe(request) => {
            let features = record.features();
            require(&features, "subscribe")?;
            let subscriber = Subscriber {
                session: session.clone(),
                principal: record.principal().clone(),
                features,
                history: None,
                request_id: frame.id,
            };
            Box::pin(jobs.subscribe(subscriber, request))
                .await
                .map(|_| None)
        }
        ClientMessage::Unsubscribe { job_id } => {
            require(&record.features(), "subscribe")?;
            Box::pin(jobs.unsubscribe(record.principal(), session, &job_id))
                .await
                .map(|_| None)
        }
    }
}

/// §6.2 forbids using a feature outside the session's effective set.
fn require(features: &Features, feature: &str) -> Result<(), ArcpError> {
    if features.has(feature) {
        Ok(())
    } else {
        Err(ArcpError::InvalidRequest(format!(
            "feature {feature:?} is not in this session's effective feature set (§6.2)"
        )))
    }
}
