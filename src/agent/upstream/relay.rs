//! One job relayed to an upstream runtime, over an ARCP session of its own: the gateway says
//! `session.hello`, submits the job (its effective lease, trace context, and the gateway's
//! job id as the idempotency key), and maps the upstream's frames into the gateway's job
//! ([`crate::agent::peer_job`]).
//!
//! A lost connection is mended by resuming the upstream session (§6.3) with the newest
//! `event_seq` received, tried again with back-off for the reconnect timeout. What the
//! resume replays is checked, so that the gateway's client never sees a silent gap:
//! - a frame numbered below the newest received is a replayed duplicate, and dropped;
//! - a frame numbered more than one past it means the upstream lost events, and ends the
//!   job with `INTERNAL_ERROR` naming them;
//! - some runtimes resume a session without the job that ran through the drop (its events
//!   and its end went to the old connection and nowhere else). After a resume the relay
//!   asks for the upstream's job listing (`list_jobs`) every check interval; a job the
//!   listing shows ended, or no longer shows, whose end does not arrive within a check
//!   interval more, ends the same way.
//!
//! However the gateway's job ends before the upstream's (cancel, `max_runtime_sec`,
//! `expires_at`), the relay's drop hands the connection to a task that sends `job.cancel`,
//! waits the cancel grace for the upstream to end the job, and closes it.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    link::{Link, LinkError},
    spec::UpstreamSpec,
};
use crate::{
    agent::{
        peer_job::{self, Step},
        peer_json::{self, Decoded, JobsPage, Resume, RuntimeFrame, Submission},
        JobContext,
    },
    clock::Timestamp,
    error::ArcpError,
    ids::JobId,
    protocol::Json,
};

/// How the relay's errors name the upstream.
const PEER: &str = "the upstream runtime";
/// The features offered upstream: `progress` is forwarded as is, `list_jobs` finds jobs a
/// resume lost. The rest are the gateway's to offer its own clients.
const FEATURES: &[&str] = &["progress", "list_jobs"];
/// The reason in the `job.cancel` an upstream gets when the gateway's job ends before its own.
const CANCEL_REASON: &str = "the job was cancelled or timed out at the gateway";
/// The first pause before connecting again, doubled after each failure up to the last.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(2);
/// How many refusals of a resume are tried again before the job fails with the last.
const RESUME_REFUSALS: u32 = 3;
/// The job states of §7.3 after which a job emits nothing more.
const TERMINAL: &[&str] = &["success", "error", "cancelled", "timed_out"];

/// Runs the job of `ctx` on the upstream of `spec`.
pub async fn run(spec: &UpstreamSpec, ctx: &JobContext, input: Json) -> Result<Json, ArcpError> {
    let mut relay = Relay {
        spec,
        ctx,
        link: None,
        session: None,
        last_seq: None,
        submitted: false,
        job: None,
        over: false,
        resumed: false,
        suspect: None,
    };
    tokio::select! {
        outcome = relay.job(input) => outcome,
        () = ctx.cancelled() => Err(ArcpError::Cancelled("the job was cancelled".into())),
    }
}

/// What the relay knows of its upstream session.
struct Session {
    id: String,
    /// The token of the latest welcome; a runtime that issues none cannot be resumed.
    resume_token: Option<String>,
    /// Whether `list_jobs` was negotiated.
    lists_jobs: bool,
}

/// Why a connection attempt failed.
enum Opening {
    /// Try again: the upstream could not be reached, or the connection was lost.
    Unreachable(String),
    /// The upstream refused the hello or the resume: the job fails.
    Refused(ArcpError),
}

struct Relay<'a> {
    spec: &'a UpstreamSpec,
    ctx: &'a JobContext,
    link: Option<Link>,
    session: Option<Session>,
    /// The newest `event_seq` received.
    last_seq: Option<u64>,
    /// Whether the `job.submit` went out (on some connection).
    submitted: bool,
    /// The upstream's id for the job, once accepted.
    job: Option<String>,
    /// Whether the upstream's job ended: it needs no `job.cancel`.
    over: bool,
    /// Whether the session was resumed at least once, after which the listing is checked.
    resumed: bool,
    /// Since when the listing says the job is over or gone while its end has not come, and
    /// what it said.
    suspect: Option<(Instant, String)>,
}

impl Relay<'_> {
    async fn job(&mut self, input: Json) -> Result<Json, ArcpError> {
        let lease = self.ctx.lease().to_wire();
        let submit = peer_json::submit(&Submission {
            agent: &self.spec.agent,
            input: &input,
            lease: &lease,
            expires_at: self.ctx.lease().expires_at().map(Timestamp),
            trace_id: self.ctx.trace_id(),
            idempotency_key: Some(self.ctx.job_id().as_str()),
        });
        drop(input);
        self.connect(None, &submit).await?;
        self.send(submit.clone(), &submit).await?;
        self.submitted = true;
        let mut check = tokio::time::interval(self.spec.timings.check_interval);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let checking = self.resumed && self.session.as_ref().is_some_and(|s| s.lists_jobs);
            let Some(link) = self.link.as_mut() else {
                return Err(ArcpError::Internal(format!("{PEER}: no connection")));
            };
            let next = tokio::select! {
                next = link.next() => next,
                _ = check.tick(), if checking => {
                    self.check(&submit).await?;
                    continue;
                }
            };
            match next {
                Ok(text) => {
                    if let Some(outcome) = self.frame(&text).await? {
                        return outcome;
                    }
                }
                Err(LinkError::Fault(m)) => return Err(ArcpError::Internal(format!("{PEER} {m}"))),
                Err(LinkError::Dropped(why)) => self.connect(Some(why), &submit).await?,
            }
        }
    }

    /// Applies one frame; `Some` with the job's outcome once the upstream's job ended.
    async fn frame(&mut self, text: &str) -> Result<Option<Result<Json, ArcpError>>, ArcpError> {
        let Decoded {
            frame, event_seq, ..
        } = peer_json::decode_with_seq(text).map_err(|e| {
            ArcpError::Internal(format!(
                "{PEER} sent something that is not ARCP: {}",
                e.message()
            ))
        })?;
        if let Some(seq) = event_seq {
            match self.last_seq {
                Some(last) if seq <= last => return Ok(None),
                Some(last) if seq > last + 1 => {
                    return Err(ArcpError::Internal(format!(
                        "{PEER} lost events {}..={} of the job across a dropped connection \
                         (its resume went on from event_seq {seq}); the job's events would \
                         not be complete",
                        last + 1,
                        seq - 1
                    )))
                }
                _ => self.last_seq = Some(seq),
            }
        }
        if let RuntimeFrame::Jobs(page) = &frame {
            self.listed(page);
            return Ok(None);
        }
        Ok(match peer_job::apply(self.ctx, PEER, frame).await? {
            Step::Continue => None,
            Step::Accepted(job_id) => {
                self.job = Some(job_id);
                None
            }
            Step::Ended(outcome) => {
                self.over = true;
                Some(outcome)
            }
            Step::Refused(e) => return Err(e),
        })
    }

    /// Takes note of what a page of the upstream's listing says of the job.
    fn listed(&mut self, page: &JobsPage) {
        let Some(job) = &self.job else { return };
        let gone = match page.jobs.iter().find(|(id, _)| id == job) {
            Some((_, status)) if TERMINAL.contains(&status.as_str()) => {
                Some(format!("its job listing says the job ended ({status})"))
            }
            Some(_) => None,
            None if page.complete => Some("its job listing no longer has the job".into()),
            // Not on this page: it says nothing of the job.
            None => return,
        };
        match gone {
            None => self.suspect = None,
            Some(what) => {
                self.suspect.get_or_insert((Instant::now(), what));
            }
        }
    }

    /// Fails the job if the listing has said for a check interval that it ended while its
    /// end has not come; asks for the listing again.
    async fn check(&mut self, submit: &str) -> Result<(), ArcpError> {
        if let Some((since, what)) = &self.suspect {
            if since.elapsed() >= self.spec.timings.check_interval {
                let after = match self.last_seq {
                    Some(seq) => format!("after event_seq {seq}"),
                    None => "at all".into(),
                };
                return Err(ArcpError::Internal(format!(
                    "{PEER} lost the job across a dropped connection: {what}, but its resume \
                     delivered nothing of it {after}, and no job.result or job.error"
                )));
            }
        }
        self.send(peer_json::list_jobs(), submit).await
    }

    /// Sends `text`; a lost connection is mended (and `text` not sent again).
    async fn send(&mut self, text: String, submit: &str) -> Result<(), ArcpError> {
        let Some(link) = self.link.as_mut() else {
            return Err(ArcpError::Internal(format!("{PEER}: no connection")));
        };
        match link.send(text).await {
            Ok(()) => Ok(()),
            Err(LinkError::Fault(m)) => Err(ArcpError::Internal(format!("{PEER} {m}"))),
            Err(LinkError::Dropped(why)) => self.connect(Some(why), submit).await,
        }
    }

    /// Connects (after `lost`, resuming the session), trying again with back-off until the
    /// reconnect timeout. A job not yet accepted is submitted again on the new connection:
    /// the idempotency key makes it the same job if the first submission arrived.
    async fn connect(&mut self, mut lost: Option<String>, submit: &str) -> Result<(), ArcpError> {
        let (job, url) = (self.ctx.job_id(), &self.spec.url);
        let timeout = self.spec.timings.reconnect_timeout;
        let deadline = Instant::now() + timeout;
        let mut pause = FIRST_RETRY;
        let mut refusals = 0;
        let lost_link = |why: &str| {
            tracing::warn!(%job, %url, "connection to the upstream runtime lost ({why}); resuming its session");
        };
        if let Some(why) = &lost {
            self.link = None;
            lost_link(why);
        }
        loop {
            let failure = match self.open().await {
                Ok(mut link) => {
                    if lost.is_none() {
                        self.link = Some(link);
                        return Ok(());
                    }
                    self.resumed = true;
                    tracing::info!(%job, %url, last_event_seq = self.last_seq.unwrap_or(0), "upstream session resumed");
                    let resubmitted = if self.submitted && self.job.is_none() {
                        link.send(submit.to_owned()).await
                    } else {
                        Ok(())
                    };
                    match resubmitted {
                        Ok(()) => {
                            self.link = Some(link);
                            return Ok(());
                        }
                        Err(LinkError::Fault(m)) => {
                            return Err(ArcpError::Internal(format!("{PEER} {m}")))
                        }
                        Err(LinkError::Dropped(why)) => {
                            lost_link(&why);
                            lost = Some(why.clone());
                            why
                        }
                    }
                }
                // A runtime may not have noticed the drop yet when the resume arrives, and
                // refuse it as a session still attached: a few more tries tell the two apart.
                Err(Opening::Refused(e)) if lost.is_some() && refusals < RESUME_REFUSALS => {
                    refusals += 1;
                    e.message().to_owned()
                }
                Err(Opening::Refused(e)) => return Err(e),
                Err(Opening::Unreachable(e)) => e,
            };
            if Instant::now() + pause >= deadline {
                return Err(ArcpError::Internal(match &lost {
                    None => format!(
                        "{PEER} at {url} could not be reached within {timeout:?}: {failure}"
                    ),
                    Some(why) => format!(
                        "{PEER} at {url} was lost ({why}) and could not be reached again within \
                         {timeout:?}: {failure}"
                    ),
                }));
            }
            tracing::debug!(%job, %url, "upstream runtime not reached ({failure}); trying again in {pause:?}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LAST_RETRY);
        }
    }

    /// One connection attempt: connect, hello (resuming the session the relay has, if any),
    /// welcome.
    async fn open(&mut self) -> Result<Link, Opening> {
        let mut link = Link::connect(self.spec)
            .await
            .map_err(Opening::Unreachable)?;
        let resume = match &self.session {
            None => None,
            Some(Session {
                resume_token: None, ..
            }) => {
                return Err(Opening::Refused(ArcpError::Internal(format!(
                    "{PEER} was lost and cannot be resumed: its welcome issued no resume token"
                ))))
            }
            Some(Session {
                id,
                resume_token: Some(token),
                ..
            }) => Some(Resume {
                session_id: id,
                resume_token: token,
                last_event_seq: self.last_seq.unwrap_or(0),
            }),
        };
        let hello = peer_json::hello(
            "arcp-gateway",
            env!("CARGO_PKG_VERSION"),
            &self.spec.token,
            FEATURES,
            resume.as_ref(),
        );
        let resuming = resume.is_some();
        link.send(hello).await.map_err(unreachable)?;
        let welcome = async {
            loop {
                let text = link.next().await.map_err(unreachable)?;
                let frame = peer_json::decode(&text).map_err(|e| {
                    Opening::Refused(ArcpError::Internal(format!(
                        "{PEER} sent something that is not ARCP: {}",
                        e.message()
                    )))
                })?;
                let refused = |e: ArcpError| {
                    Opening::Refused(if resuming {
                        ArcpError::Internal(format!(
                            "{PEER} refused to resume its session after the connection was \
                             lost: {}",
                            e.message()
                        ))
                    } else {
                        e
                    })
                };
                if let Some(welcome) = peer_job::welcome(PEER, frame).map_err(refused)? {
                    return Ok(welcome);
                }
            }
        };
        let welcome = tokio::time::timeout(self.spec.timings.welcome_timeout, welcome)
            .await
            .map_err(|_| {
                Opening::Unreachable(format!(
                    "no session.welcome within {:?}",
                    self.spec.timings.welcome_timeout
                ))
            })??;
        let id = welcome
            .session_id
            .or_else(|| self.session.take().map(|s| s.id))
            .unwrap_or_default();
        self.session = Some(Session {
            id,
            resume_token: welcome.resume_token,
            lists_jobs: welcome.features.iter().any(|f| f == "list_jobs"),
        });
        Ok(link)
    }
}

fn unreachable(e: LinkError) -> Opening {
    match e {
        LinkError::Dropped(m) => Opening::Unreachable(m),
        LinkError::Fault(m) => Opening::Refused(ArcpError::Internal(format!("{PEER} {m}"))),
    }
}

impl Drop for Relay<'_> {
    fn drop(&mut self) {
        let Some(link) = self.link.take() else {
            if self.submitted && !self.over {
                tracing::debug!(job = %self.ctx.job_id(), "the job ended while the upstream runtime was unreachable: no job.cancel could be sent");
            }
            return;
        };
        let cancel = (self.submitted && !self.over).then(|| self.job.clone());
        let farewell = farewell(
            link,
            cancel,
            self.spec.timings.cancel_grace,
            self.ctx.job_id().clone(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(farewell);
        }
    }
}

/// Ends a connection the relay is done with. With `cancel` (the upstream's job id, or `None`
/// while its `job.accepted` has not come), the job is cancelled first and its end waited for,
/// within `grace`.
async fn farewell(mut link: Link, cancel: Option<Option<String>>, grace: Duration, job: JobId) {
    if let Some(upstream_job) = cancel {
        let cancelled = tokio::time::timeout(grace, async {
            let id = match upstream_job {
                Some(id) => id,
                None => loop {
                    let text = link.next().await.ok()?;
                    if let Ok(RuntimeFrame::Accepted { job_id }) = peer_json::decode(&text) {
                        break job_id;
                    }
                },
            };
            link.send(peer_json::cancel(Some(&id), CANCEL_REASON))
                .await
                .ok()?;
            loop {
                let text = link.next().await.ok()?;
                if let Ok(
                    RuntimeFrame::Cancelled | RuntimeFrame::Result(_) | RuntimeFrame::JobError(_),
                ) = peer_json::decode(&text)
                {
                    return Some(());
                }
            }
        })
        .await;
        if !matches!(cancelled, Ok(Some(()))) {
            tracing::debug!(%job, "the upstream runtime did not end the cancelled job within {grace:?}");
        }
    }
    link.close().await;
}
