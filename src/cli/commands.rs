//! The client's subcommands: `submit`, `jobs` and `tail`, each a session of its own on the
//! gateway, and `attach` and `cancel`, which take up the session a `submit` kept.

use serde_json::json;

use crate::{
    client::{Client, ClientConfig},
    error::{ArcpError, ErrorCode},
    protocol::Json,
};

use super::{
    exit::Exit,
    follow::{follow, OnInterrupt},
    line::print_line,
    output::Output,
    saved::{Kept, Saved},
    shown::Shown,
};

/// A command's failure: how it exits, and what went wrong.
pub type Failure = (Exit, ArcpError);

/// Opens a session; a gateway that cannot be reached or refuses the token is
/// [`Exit::Unreachable`].
pub async fn connect(config: ClientConfig) -> Result<Client, Failure> {
    Client::connect(config)
        .await
        .map_err(|e| (Exit::Unreachable, e))
}

/// `submit`: submits a job to `agent` with `input` and follows it to its end, or with
/// `detach` shows its acceptance and leaves it to the session's resume window. The session is
/// kept in `saved` from the acceptance to the end, for `attach` and `cancel`.
pub async fn submit(
    mut client: Client,
    agent: &str,
    input: &Json,
    detach: bool,
    saved: Option<Saved>,
    mut output: Output,
) -> Result<Exit, Failure> {
    let job = client.submit(agent, input).await.map_err(failed)?;
    let mut kept = saved.map(|saved| Kept::new(saved, &job));
    if let Some(kept) = &mut kept {
        kept.refresh(&client);
    }
    if detach {
        return show_acceptance(&mut client, &job, &mut output, kept.is_some()).await;
    }
    let ended = follow(
        &mut client,
        &job,
        &mut output,
        OnInterrupt::Cancel,
        kept.as_mut(),
    )
    .await;
    end(ended, &output, kept)
}

/// Shows the acceptance of `job`, the session's first frame of it, and leaves the session
/// detached.
async fn show_acceptance(
    client: &mut Client,
    job: &str,
    output: &mut Output,
    kept: bool,
) -> Result<Exit, Failure> {
    loop {
        let frame =
            client.next().await.map_err(failed)?.ok_or_else(|| {
                failed(ArcpError::Internal("the gateway closed the session".into()))
            })?;
        if let Some(shown @ Shown::Accepted { .. }) = Shown::of_frame(&frame, job) {
            output.show(&shown);
            if !kept {
                eprintln!(
                    "arcp-gateway client: no state directory (--state-dir, ARCP_STATE_DIR or \
                     HOME): `attach` and `cancel` cannot take this session up"
                );
            }
            return Ok(Exit::Success);
        }
    }
}

/// `attach`: takes up the session `saved` keeps for `job` and follows the job to its end from
/// where the session left it.
pub async fn attach(
    config: ClientConfig,
    job: &str,
    saved: Option<Saved>,
    mut output: Output,
) -> Result<Exit, Failure> {
    let (mut client, mut kept) = take_up(config, job, saved).await?;
    let ended = follow(
        &mut client,
        job,
        &mut output,
        OnInterrupt::Cancel,
        Some(&mut kept),
    )
    .await;
    end(ended, &output, Some(kept))
}

/// The session `saved` keeps for `job`, resumed, and kept again with its new token. A session
/// whose window closed is forgotten.
async fn take_up(
    config: ClientConfig,
    job: &str,
    saved: Option<Saved>,
) -> Result<(Client, Kept), Failure> {
    let saved = saved.ok_or_else(|| {
        failed(ArcpError::InvalidRequest(
            "no state directory (--state-dir, ARCP_STATE_DIR or HOME) to find the session in"
                .into(),
        ))
    })?;
    let point = saved.load(job).map_err(failed)?.ok_or_else(|| {
        failed(ArcpError::InvalidRequest(format!(
            "no session of job {job} is kept in {}: only `client submit` keeps one, until the \
             job ends",
            saved.dir().display()
        )))
    })?;
    let client = match Client::resume(config, point).await {
        Ok(client) => client,
        Err(e) => {
            if e.code() == ErrorCode::ResumeWindowExpired {
                saved.forget(job);
            }
            return Err((Exit::of_error(&e), e));
        }
    };
    let mut kept = Kept::new(saved, job);
    kept.refresh(&client);
    Ok((client, kept))
}

/// `jobs`: one line for each job the principal may see.
pub async fn jobs(mut client: Client, json: bool) -> Result<Exit, Failure> {
    for job in client.list_jobs().await.map_err(failed)? {
        let line = if json {
            json!({
                "job_id": job.job_id,
                "agent": job.agent,
                "status": job.status,
                "created_at": job.created_at,
                "last_event_seq": job.last_event_seq,
            })
            .to_string()
        } else {
            format!(
                "{}  {}  {}  {}",
                job.job_id, job.agent, job.status, job.created_at
            )
        };
        print_line(&line);
    }
    Ok(Exit::Success)
}

/// `tail`: subscribes to `job` with the history the gateway holds, and follows it to its end.
pub async fn tail(mut client: Client, job: &str, mut output: Output) -> Result<Exit, Failure> {
    client.subscribe(job, true).await.map_err(failed)?;
    let ended = follow(&mut client, job, &mut output, OnInterrupt::Leave, None).await;
    finish(ended, &output)
}

/// `cancel`: asks for the cancellation of `job` and waits for its end, showing only that:
/// [`Exit::Success`] once it is cancelled, a failure if the gateway refused or the job ended
/// otherwise. The session that submitted the job, when `saved` keeps it, is taken up to ask;
/// without it a new session asks, which the gateway refuses for a job of another session.
pub async fn cancel(
    config: ClientConfig,
    job: &str,
    saved: Option<Saved>,
    json: bool,
) -> Result<Exit, Failure> {
    let mut output = Output::end_only(json);
    let kept_here = match &saved {
        Some(saved) => saved.load(job).map_err(failed)?.is_some(),
        None => false,
    };
    let (mut client, mut kept) = if kept_here {
        let (client, kept) = take_up(config, job, saved).await?;
        (client, Some(kept))
    } else {
        let mut client = connect(config).await?;
        client.subscribe(job, false).await.map_err(failed)?;
        (client, None)
    };
    client.cancel(job).await.map_err(failed)?;
    let ended = follow(
        &mut client,
        job,
        &mut output,
        OnInterrupt::Leave,
        kept.as_mut(),
    )
    .await;
    match end(ended, &output, kept) {
        Ok(Exit::Cancelled) => Ok(Exit::Success),
        Ok(_) => Err((
            Exit::Failed,
            ArcpError::InvalidRequest(format!("job {job} ended before it could be cancelled")),
        )),
        Err((exit, e)) if e.code() == ErrorCode::PermissionDenied && !kept_here => Err((
            exit,
            ArcpError::PermissionDenied(format!(
                "{} (only the session that submitted a job may cancel it, and no session of \
                 job {job} is kept here: cancel it where it was submitted)",
                e.message()
            )),
        )),
        Err(failure) => Err(failure),
    }
}

/// The end of a followed job: its exit, with its kept session forgotten; the output is left
/// as it is, and the session kept, when following it failed.
fn end(
    ended: Result<Exit, ArcpError>,
    output: &Output,
    kept: Option<Kept>,
) -> Result<Exit, Failure> {
    let exit = finish(ended, output)?;
    if let Some(kept) = kept {
        kept.forget();
    }
    Ok(exit)
}

/// The exit of a followed job; the output is left as it is when following it failed.
fn finish(ended: Result<Exit, ArcpError>, output: &Output) -> Result<Exit, Failure> {
    ended.map_err(|e| {
        output.abandon();
        failed(e)
    })
}

fn failed(error: ArcpError) -> Failure {
    (Exit::of_error(&error), error)
}
