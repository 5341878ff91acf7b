//! Protobuf frames to and from the domain messages. The only place that knows both.

use tonic::{Code, Status};

use crate::{
    encoding::{
        job_proto::{job_summary, lease_from_proto},
        json_value::check_depth,
    },
    error::ArcpError,
    ids::{EventSeq, JobId, SessionId, TraceId},
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out},
    protocol::{
        client::{
            job_ref, ClientMessage, Hello, Inbound, JobSubmit, ListJobs, ReadFault, RejectedFrame,
            ResumeRequest, Subscribe,
        },
        control::{Control, ControlMessage},
        Json, PROTOCOL_VERSION,
    },
    session::output::{Outbound, OutboundItem},
};

pub use crate::encoding::json_value::{to_json, to_value};

use super::{status, wire::WireFrame};

// ---------------------------------------------------------------------------------------------
// Client frames
// ---------------------------------------------------------------------------------------------

/// A client frame as a domain message, or the reason it is not one.
pub(crate) fn inbound(frame: proto::ClientFrame) -> Result<Inbound, RejectedFrame> {
    let request_id = non_empty(frame.id);
    let reject = |error: ArcpError| RejectedFrame::invalid(request_id.clone(), error);
    let envelope_job = non_empty(frame.job_id).map(JobId::new);
    let payload = frame.payload.ok_or_else(|| {
        reject(invalid(
            "the frame has no payload (set one of the oneof fields)",
        ))
    })?;
    let message = client_message(payload, envelope_job.as_ref()).map_err(reject)?;
    Ok(Inbound {
        id: request_id.clone(),
        session_id: non_empty(frame.session_id).map(SessionId::new),
        trace_id: non_empty(frame.trace_id).map(TraceId::new),
        job_id: envelope_job,
        message,
    })
}

/// A complete message that is not a `ClientFrame`; the frames after it can still be read.
pub(crate) fn undecodable(error: &prost::DecodeError) -> RejectedFrame {
    RejectedFrame::unreadable(
        ReadFault::Undecodable,
        ArcpError::InvalidRequest(format!(
            "the message is not an arcp.v1.ClientFrame: {}",
            truncated(&error.to_string())
        )),
    )
}

/// The error tonic's stream of client messages failed with. Its stream cannot go on after one
/// (it would read what follows as a message header), so the session's stream ends after
/// answering it.
pub(crate) fn unreadable(status: &Status) -> RejectedFrame {
    let too_large = matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted);
    let (fault, what) = if too_large {
        (
            ReadFault::TooLarge,
            "a client message is over the size limit",
        )
    } else {
        (
            ReadFault::Framing,
            "the client's bytes are not gRPC messages",
        )
    };
    RejectedFrame::unreadable(
        fault,
        ArcpError::InvalidRequest(format!(
            "{what} ({}); nothing more can be read from this stream: resume the session on a new one",
            truncated(status.message())
        )),
    )
}

/// At most [`MAX_DETAIL`] characters of `text`, which comes from a parser rather than the
/// client, but may still quote it.
fn truncated(text: &str) -> &str {
    match text.char_indices().nth(MAX_DETAIL) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// The most characters of a parser's message an error repeats.
const MAX_DETAIL: usize = 200;

fn client_message(payload: In, envelope_job: Option<&JobId>) -> Result<ClientMessage, ArcpError> {
    Ok(match payload {
        In::SessionHello(hello) => ClientMessage::Hello(Hello {
            scheme: hello
                .auth
                .as_ref()
                .and_then(|a| non_empty(a.scheme.clone())),
            token: hello.auth.and_then(|a| non_empty(a.token)),
            features: hello.capabilities.map(|c| c.features),
            resume: hello.resume.map(resume_info).transpose()?,
        }),
        In::SessionResume(r) => ClientMessage::Resume(Hello {
            scheme: r.auth.as_ref().and_then(|a| non_empty(a.scheme.clone())),
            token: r.auth.and_then(|a| non_empty(a.token)),
            features: r.capabilities.map(|c| c.features),
            resume: Some(resume_info(proto::ResumeInfo {
                session_id: r.session_id,
                resume_token: r.resume_token,
                last_event_seq: r.last_event_seq,
            })?),
        }),
        In::SessionPing(ping) => ClientMessage::Ping { nonce: ping.nonce },
        In::SessionPong(_) => ClientMessage::Pong,
        In::SessionAck(ack) => ClientMessage::Ack {
            last_processed_seq: EventSeq(ack.last_processed_seq),
        },
        In::SessionListJobs(list) => {
            let filter = list.filter.unwrap_or_default();
            ClientMessage::ListJobs(ListJobs {
                status: filter.status,
                agent: non_empty(filter.agent),
                created_after: non_empty(filter.created_after),
                limit: (list.limit > 0).then_some(list.limit),
                cursor: non_empty(list.cursor),
            })
        }
        In::SessionClose(close) => ClientMessage::Close {
            reason: non_empty(close.reason),
        },
        In::JobSubmit(submit) => ClientMessage::Submit(job_submit(submit)?),
        In::JobCancel(cancel) => ClientMessage::Cancel {
            job_id: job_ref(
                non_empty(cancel.job_id).map(JobId::new),
                envelope_job,
                "job_cancel",
            )?,
            reason: non_empty(cancel.reason),
        },
        In::JobSubscribe(sub) => ClientMessage::Subscribe(Subscribe {
            job_id: job_ref(
                non_empty(sub.job_id).map(JobId::new),
                envelope_job,
                "job_subscribe",
            )?,
            from_event_seq: sub.from_event_seq.map(EventSeq),
            history: sub.history,
        }),
        In::JobUnsubscribe(unsub) => ClientMessage::Unsubscribe {
            job_id: job_ref(
                non_empty(unsub.job_id).map(JobId::new),
                envelope_job,
                "job_unsubscribe",
            )?,
        },
    })
}

fn resume_info(r: proto::ResumeInfo) -> Result<ResumeRequest, ArcpError> {
    Ok(ResumeRequest {
        session_id: non_empty(r.session_id).map(SessionId::new),
        token: non_empty(r.resume_token).ok_or_else(|| invalid("resume requires resume_token"))?,
        last_event_seq: EventSeq(r.last_event_seq),
    })
}

fn job_submit(s: proto::JobSubmit) -> Result<JobSubmit, ArcpError> {
    let input = s.input.map(to_json).unwrap_or(Json::Null);
    check_depth(&input, "job_submit input")?;
    Ok(JobSubmit {
        agent: non_empty(s.agent).ok_or_else(|| invalid("job_submit requires agent"))?,
        input,
        lease_request: lease_from_proto(s.lease_request)?,
        expires_at: s.lease_constraints.and_then(|c| non_empty(c.expires_at)),
        idempotency_key: non_empty(s.idempotency_key),
        max_runtime_sec: (s.max_runtime_sec > 0).then_some(s.max_runtime_sec),
    })
}

// ---------------------------------------------------------------------------------------------
// Server frames
// ---------------------------------------------------------------------------------------------

/// A gateway output as a server frame, or the status that ends the stream.
pub(crate) fn outbound(item: OutboundItem) -> Result<WireFrame, Status> {
    match item {
        OutboundItem::Frame(session, Outbound::Control(control)) => Ok(WireFrame::Message(
            Box::new(control_frame(session, *control)),
        )),
        OutboundItem::Frame(session, Outbound::Job(entry)) => Ok(WireFrame::Job { session, entry }),
        OutboundItem::End(end) => Err(status::from_stream_end(&end)),
    }
}

fn control_frame(session: Option<SessionId>, control: Control) -> proto::ServerFrame {
    let request_id = control.request_id.unwrap_or_default();
    let payload = match control.message {
        ControlMessage::Welcome(w) => Out::SessionWelcome(Box::new(proto::SessionWelcome {
            runtime: Some(proto::RuntimeInfo {
                name: w.runtime_name.into(),
                version: w.runtime_version.into(),
            }),
            resume_token: w.resume_token,
            resume_window_sec: w.resume_window_sec,
            heartbeat_interval_sec: w.heartbeat_interval_sec,
            capabilities: Some(proto::Capabilities {
                encodings: vec!["protobuf".into()],
                features: w.features,
                agents: w
                    .agents
                    .into_iter()
                    .map(|a| proto::AgentInfo {
                        name: a.name,
                        versions: a.versions,
                        default: a.default,
                    })
                    .collect(),
            }),
        })),
        ControlMessage::Error(e) => Out::SessionError(Box::new(proto::SessionError {
            code: e.code().as_str().into(),
            message: e.message().into(),
            retryable: e.retryable(),
            request_id,
            details: None,
        })),
        ControlMessage::Pong {
            ping_nonce,
            received_at,
        } => Out::SessionPong(proto::SessionPong {
            ping_nonce,
            received_at: received_at.to_rfc3339(),
        }),
        ControlMessage::Closed { reason } => Out::SessionClosed(proto::SessionClosed {
            reason: reason.unwrap_or_default(),
        }),
        ControlMessage::Ping { nonce, sent_at } => Out::SessionPing(proto::SessionPing {
            nonce,
            sent_at: sent_at.to_rfc3339(),
        }),
        ControlMessage::Jobs { jobs, next_cursor } => {
            Out::SessionJobs(Box::new(proto::SessionJobs {
                request_id,
                jobs: jobs.iter().map(job_summary).collect(),
                next_cursor: next_cursor.unwrap_or_default(),
            }))
        }
    };
    proto::ServerFrame {
        arcp: PROTOCOL_VERSION.into(),
        id: uuid::Uuid::now_v7().to_string(),
        session_id: session.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        payload: Some(payload),
        ..Default::default()
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn invalid(message: &str) -> ArcpError {
    ArcpError::InvalidRequest(message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn frames_without_payload_are_rejected_with_their_id() {
        let rejected = inbound(proto::ClientFrame {
            id: "m1".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(rejected.request_id.as_deref(), Some("m1"));
        assert_eq!(rejected.error.code(), ErrorCode::InvalidRequest);
    }

    #[test]
    fn cancel_takes_the_job_from_payload_or_envelope() {
        let frame = |payload_job: &str, envelope_job: &str| proto::ClientFrame {
            job_id: envelope_job.into(),
            payload: Some(In::JobCancel(proto::JobCancel {
                job_id: payload_job.into(),
                reason: String::new(),
            })),
            ..Default::default()
        };
        for (p, e) in [("job_1", ""), ("", "job_1"), ("job_1", "job_1")] {
            match inbound(frame(p, e)).unwrap().message {
                ClientMessage::Cancel { job_id, .. } => assert_eq!(job_id.as_str(), "job_1"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(inbound(frame("", "")).is_err());
        assert!(inbound(frame("job_1", "job_2")).is_err());
    }
}
