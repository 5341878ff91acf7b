//! Following one job to its end through a [`Client`]: each of its frames shown once, a resume
//! after a dropped stream reported with how many events the gateway replayed, and the job's
//! `final_status` made the exit code.

use tokio::signal::unix::{signal, SignalKind};

use crate::{
    client::Client,
    error::{ArcpError, ErrorCode},
    proto::server_frame::Payload as Out,
};

use super::{exit::Exit, output::Output, saved::Kept, shown::Shown};

/// What Ctrl-C does while a job is followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Cancel the job (the session submitted it) and follow it to its end; a second Ctrl-C
    /// stops waiting.
    Cancel,
    /// Nothing: the process ends as Ctrl-C ends it.
    Leave,
}

/// Shows the frames of `job` until its end; the exit its final status names. A session that
/// closes or fails first, or a `session_error` the gateway sends meanwhile, is the error. With
/// `kept`, the session's file is saved again after each resume.
pub async fn follow(
    client: &mut Client,
    job: &str,
    output: &mut Output,
    on_interrupt: OnInterrupt,
    mut kept: Option<&mut Kept>,
) -> Result<Exit, ArcpError> {
    let mut resumes = Resumes {
        reported: 0,
        pending: false,
    };
    // Made once, before the first frame: a SIGINT that comes between two reads waits in it,
    // where one for a listener made each time would be lost, and ignored.
    let mut interrupt = match on_interrupt {
        OnInterrupt::Cancel => Some(
            signal(SignalKind::interrupt())
                .map_err(|e| ArcpError::Internal(format!("cannot listen for Ctrl-C: {e}")))?,
        ),
        OnInterrupt::Leave => None,
    };
    let mut cancelling = false;
    let mut events = 0u64;
    loop {
        let next = match &mut interrupt {
            None => client.next().await,
            Some(signals) => tokio::select! {
                next = client.next() => next,
                _ = signals.recv() => {
                    if cancelling {
                        return Err(ArcpError::Internal(
                            "interrupted again: the job's cancellation was asked for, and is \
                             not waited for"
                                .into(),
                        ));
                    }
                    cancelling = true;
                    client.cancel(job).await?;
                    continue;
                }
            },
        };
        if let Some(kept) = kept.as_deref_mut() {
            kept.refresh(client);
        }
        let Some(frame) = next? else {
            return Err(ArcpError::Internal(
                "the gateway closed the session before the job ended".into(),
            ));
        };
        if let Some(Out::SessionError(e)) = &frame.payload {
            let code = ErrorCode::parse(&e.code).unwrap_or(ErrorCode::InternalError);
            return Err(ArcpError::from_code(code, e.message.clone()));
        }
        if frame.job_id == job && frame.event_seq != 0 {
            events += 1;
        }
        let shown = Shown::of_frame(&frame, job).map(|shown| shown.counted(events));
        let ended = shown
            .as_ref()
            .and_then(Shown::final_status)
            .map(Exit::of_final_status);
        resumes.report(client, output, ended.is_some());
        if let Some(shown) = &shown {
            output.show(shown);
        }
        if let Some(exit) = ended {
            return Ok(exit);
        }
        if let Some(Out::JobSubscribed(s)) = &frame.payload {
            // A job that had ended, and whose frames the gateway no longer holds: its status
            // is all there is.
            if s.job_id == job && !s.replayed && is_final(&s.current_status) {
                output.show(&Shown::Ended {
                    seq: 0,
                    final_status: s.current_status.clone(),
                    detail: serde_json::Value::Null,
                    events,
                });
                return Ok(Exit::of_final_status(&s.current_status));
            }
        }
    }
}

/// The resumes of the session the output has not told of yet.
struct Resumes {
    reported: u64,
    /// A resume whose replay is still coming.
    pending: bool,
}

impl Resumes {
    /// Shows the latest resume once its replay is over (or the job ended), with how many
    /// events it replayed.
    fn report(&mut self, client: &Client, output: &mut Output, ending: bool) {
        if client.resumes() != self.reported {
            self.reported = client.resumes();
            self.pending = true;
        }
        let Some(resumed) = client.last_resume() else {
            return;
        };
        if self.pending && (resumed.caught_up || ending) {
            self.pending = false;
            output.show(&Shown::Resumed {
                after_seq: resumed.after_seq,
                replayed: resumed.replayed,
            });
        }
    }
}

fn is_final(status: &str) -> bool {
    matches!(status, "success" | "error" | "cancelled" | "timed_out")
}
