//! What the client shows of a job, whichever way it prints it: read from the gateway's frames
//! once, here, so that the bar, the plain lines and the JSON lines say the same things.

use serde_json::{json, Value};

use crate::{
    encoding::json_value::to_json,
    proto::{job_event::Body, server_frame::Payload as Out, ProgressBody, ServerFrame},
};

/// One thing to show.
#[derive(Clone, Debug, PartialEq)]
pub enum Shown {
    /// The job was accepted.
    Accepted {
        /// The job.
        job: String,
        /// Its agent, `name@version`.
        agent: String,
    },
    /// The session is subscribed to the job.
    Subscribed {
        /// The job.
        job: String,
        /// Its status when the subscription began.
        status: String,
    },
    /// A `progress` event (§8.2.1).
    Progress {
        /// Its `event_seq`.
        seq: u64,
        /// `current`, `total` (when the job knows it), `units` and `message`.
        progress: ProgressBody,
    },
    /// A `log` event.
    Log {
        /// Its `event_seq`.
        seq: u64,
        /// `debug`, `info`, `warn` or `error`.
        level: String,
        /// The line.
        message: String,
    },
    /// Any other event, by kind.
    Event {
        /// Its `event_seq`.
        seq: u64,
        /// The event kind.
        kind: String,
    },
    /// The session was resumed: after its stream dropped, or taken up by `attach`.
    Resumed {
        /// The newest `event_seq` seen before the drop.
        after_seq: u64,
        /// How many events the gateway replayed.
        replayed: u64,
    },
    /// The job ended.
    Ended {
        /// Its `event_seq` (0 when the end was read from a status, not a frame).
        seq: u64,
        /// `success`, `error`, `cancelled` or `timed_out`.
        final_status: String,
        /// The result of a success, or the code and message of a failure.
        detail: Value,
        /// How many of the job's frames were seen, this one included: each once, so a job
        /// followed from its start counts its accepted frame, its events and its end.
        events: u64,
    },
}

impl Shown {
    /// What `frame` shows, if it is a frame of `job` worth showing.
    pub fn of_frame(frame: &ServerFrame, job: &str) -> Option<Shown> {
        if frame.job_id != job {
            return None;
        }
        let seq = frame.event_seq;
        Some(match frame.payload.as_ref()? {
            Out::JobAccepted(a) => Shown::Accepted {
                job: a.job_id.clone(),
                agent: a.agent.clone(),
            },
            Out::JobSubscribed(s) => Shown::Subscribed {
                job: s.job_id.clone(),
                status: s.current_status.clone(),
            },
            Out::JobEvent(e) => match &e.body {
                Some(Body::Progress(p)) => Shown::Progress {
                    seq,
                    progress: p.clone(),
                },
                Some(Body::Log(l)) => Shown::Log {
                    seq,
                    level: l.level.clone(),
                    message: l.message.clone(),
                },
                _ => Shown::Event {
                    seq,
                    kind: e.kind.clone(),
                },
            },
            Out::JobResult(r) => Shown::Ended {
                seq,
                final_status: r.final_status.clone(),
                detail: r.result.clone().map(to_json).unwrap_or(Value::Null),
                events: 0,
            },
            Out::JobError(e) => Shown::Ended {
                seq,
                final_status: e.final_status.clone(),
                detail: json!({ "code": e.code, "message": e.message }),
                events: 0,
            },
            _ => return None,
        })
    }

    /// This, with `events` counted if it is the job's end.
    pub fn counted(mut self, seen: u64) -> Shown {
        if let Shown::Ended { events, .. } = &mut self {
            *events = seen;
        }
        self
    }

    /// The final status this shows, if it is the job's end.
    pub fn final_status(&self) -> Option<&str> {
        match self {
            Shown::Ended { final_status, .. } => Some(final_status),
            _ => None,
        }
    }

    /// One line of plain text, as printed without a terminal (and above the bar with one).
    pub fn text(&self) -> String {
        match self {
            Shown::Accepted { job, agent } => format!("job {job} accepted ({agent})"),
            Shown::Subscribed { job, status } => format!("subscribed to job {job} ({status})"),
            Shown::Progress { seq, progress: p } => {
                let mut line = format!("[{seq}] progress {}", p.current);
                if let Some(total) = p.total {
                    line.push_str(&format!("/{total}"));
                }
                for part in [&p.units, &p.message] {
                    if !part.is_empty() {
                        line.push(' ');
                        line.push_str(part);
                    }
                }
                line
            }
            Shown::Log {
                seq,
                level,
                message,
            } => format!("[{seq}] {level}: {message}"),
            Shown::Event { seq, kind } => format!("[{seq}] {kind}"),
            Shown::Resumed {
                after_seq,
                replayed,
            } => format!("session resumed after event {after_seq}, {replayed} events replayed"),
            Shown::Ended {
                final_status,
                detail,
                events,
                ..
            } => format!("job ended: {final_status} after {events} events: {detail}"),
        }
    }

    /// One JSON object, as `--json` prints it.
    pub fn json(&self) -> Value {
        match self {
            Shown::Accepted { job, agent } => {
                json!({ "type": "job.accepted", "job_id": job, "agent": agent })
            }
            Shown::Subscribed { job, status } => {
                json!({ "type": "job.subscribed", "job_id": job, "current_status": status })
            }
            Shown::Progress { seq, progress: p } => json!({
                "type": "job.event", "kind": "progress", "event_seq": seq,
                "current": p.current, "total": p.total, "units": p.units, "message": p.message,
            }),
            Shown::Log {
                seq,
                level,
                message,
            } => json!({
                "type": "job.event", "kind": "log", "event_seq": seq,
                "level": level, "message": message,
            }),
            Shown::Event { seq, kind } => {
                json!({ "type": "job.event", "kind": kind, "event_seq": seq })
            }
            Shown::Resumed {
                after_seq,
                replayed,
            } => json!({ "type": "resumed", "after_event_seq": after_seq, "replayed": replayed }),
            Shown::Ended {
                seq,
                final_status,
                detail,
                events,
            } => json!({
                "type": "job.ended", "event_seq": seq, "final_status": final_status,
                "detail": detail, "events": events,
            }),
        }
    }
}
