//! The client's subcommands, each a session of its own on the gateway: `submit`, `jobs`,
//! `tail` and `cancel`.

use serde_json::json;

use crate::{
    client::{Client, ClientConfig},
    error::ArcpError,
    protocol::Json,
};

use super::{
    exit::Exit,
    follow::{follow, OnInterrupt},
    line::print_line,
    output::Output,
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

/// `submit`: submits a job to `agent` with `input` and follows it to its end.
pub async fn submit(
    mut client: Client,
    agent: &str,
    input: &Json,
    mut output: Output,
) -> Result<Exit, Failure> {
    let job = client.submit(agent, input).await.map_err(failed)?;
    let ended = follow(&mut client, &job, &mut output, OnInterrupt::Cancel).await;
    finish(ended, &output)
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
    let ended = follow(&mut client, job, &mut output, OnInterrupt::Leave).await;
    finish(ended, &output)
}

/// `cancel`: subscribes to `job` (to see its end), asks for its cancellation, and waits for
/// its end: [`Exit::Success`] once it is cancelled, a failure if the gateway refused or the
/// job ended otherwise.
pub async fn cancel(mut client: Client, job: &str, mut output: Output) -> Result<Exit, Failure> {
    client.subscribe(job, false).await.map_err(failed)?;
    client.cancel(job).await.map_err(failed)?;
    let ended = follow(&mut client, job, &mut output, OnInterrupt::Leave).await;
    match finish(ended, &output)? {
        Exit::Cancelled => Ok(Exit::Success),
        _ => Err((
            Exit::Failed,
            ArcpError::InvalidRequest(format!("job {job} ended before it could be cancelled")),
        )),
    }
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
