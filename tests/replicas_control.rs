//! Control across replicas, as real processes on one Redis: a `job.cancel`, a
//! `session.list_jobs` and a `job.subscribe` received on replica B act on jobs running on
//! replica A, and of two resumes presenting one token at once on two replicas exactly one wins.
//!
//! Cancel authority is the submitting session's (§7.4, §7.6): a session cancels its job from
//! another replica by resuming there, and a sibling session of the same principal is refused
//! there as it is on the job's own replica.

mod common;

use std::collections::BTreeMap;

use arcp_gateway::{
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out, ServerFrame},
    ErrorCode,
};
use common::*;
use serde_json::json;

/// Alice and bob, each with a token; failed resumes are never slowed, since the rotation race
/// makes many on purpose.
const FLAGS: &[&str] = &[
    "--auth-token",
    "bob-token=bob",
    "--auth-failure-limit",
    "100000",
];

async fn two_replicas() -> Deployment {
    Deployment::start_with(2, FLAGS).await
}

/// A job that runs until it is cancelled, one progress frame every 20 ms.
fn endless() -> In {
    ticker(1_000_000, 20)
}

/// The listing's jobs by id.
fn by_id(jobs: &proto::SessionJobs) -> BTreeMap<&str, &proto::JobSummary> {
    jobs.jobs.iter().map(|j| (j.job_id.as_str(), j)).collect()
}

/// Lists on `conn` until `job`'s summary satisfies `done`; returns the listing. The entry of
/// a job running on another replica lags by its owner's refresh period: a guard against hangs
/// bounds the wait, it is no timing assertion.
async fn list_until(
    conn: &mut Conn,
    job: &str,
    done: impl Fn(&proto::JobSummary) -> bool,
) -> proto::SessionJobs {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let jobs = conn.list_jobs().await;
        if by_id(&jobs).get(job).is_some_and(|j| done(j)) {
            return jobs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} never reached the expected state: {jobs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The progress `current` of each of `job`'s progress frames, and the acceptance and terminal
/// as `0.0` and `-1.0`, so two sessions' copies of a job compare as one sequence.
fn job_trace<'a>(frames: impl IntoIterator<Item = &'a ServerFrame>, job: &str) -> Vec<f64> {
    frames
        .into_iter()
        .filter(|f| f.job_id == job)
        .filter_map(|f| match &f.payload {
            Some(Out::JobAccepted(_)) => Some(0.0),
            Some(Out::JobResult(_)) | Some(Out::JobError(_)) => Some(-1.0),
            _ => progress_current(f),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_received_on_b_reaches_the_job_running_on_a() {
    let deployment = two_replicas().await;
    let (a, b) = (deployment.endpoint(0), deployment.endpoint(1));
    let (mut s1, w) = a.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut s1, endless()).await;
    assert!(progress_current(&s1.recv().await).is_some());

    // On B, another session of alice may see the job but not cancel it, and bob may not even
    // see it.
    let (mut sibling, _) = b.hello("alice-token").await;
    let id = sibling.send(cancel(&job)).await;
    expect_error(
        &sibling.recv().await,
        ErrorCode::PermissionDenied,
        Some(&id),
    );
    let (mut bob, _) = b.hello("bob-token").await;
    let id = bob.send(cancel(&job)).await;
    expect_error(&bob.recv().await, ErrorCode::JobNotFound, Some(&id));

    // The job still runs: its session moves to B and cancels it there.
    let mut last = 0;
    for _ in 0..3 {
        let frame = s1.recv().await;
        assert!(progress_current(&frame).is_some(), "{frame:?}");
        last = frame.event_seq;
    }
    drop(s1);
    let (mut s1, first) = b
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, last))
        .await;
    welcome(&first);
    s1.send(In::JobCancel(proto::JobCancel {
        job_id: job.clone(),
        reason: "from replica B".into(),
    }))
    .await;
    let (before, terminal) = s1.recv_until_terminal(&job).await;
    let cancelled = before
        .iter()
        .find_map(|f| match &f.payload {
            Some(Out::JobCancelled(c)) => Some(c),
            _ => None,
        })
        .unwrap_or_else(|| panic!("job_cancelled precedes the terminal: {before:?}"));
    assert_eq!(cancelled.reason, "from replica B");
    let error = job_error(&terminal);
    assert_eq!(error.code, "CANCELLED");
    assert_eq!(error.final_status, "cancelled");
    assert_eq!(
        event_seqs(before.iter().chain([&terminal])),
        (last + 1..=terminal.event_seq).collect::<Vec<_>>(),
        "gap-free after the resume"
    );

    // It ended once: a second cancel on B, and one on A, find it ended.
    let id = s1.send(cancel(&job)).await;
    expect_error(&s1.recv().await, ErrorCode::InvalidRequest, Some(&id));
    drop(s1);
    let (mut s1, first) = a
        .resume_with_hello(
            "alice-token",
            FEATURES,
            resume_info(&session, &welcome(&first).resume_token, terminal.event_seq),
        )
        .await;
    welcome(&first);
    let id = s1.send(cancel(&job)).await;
    expect_error(&s1.recv().await, ErrorCode::InvalidRequest, Some(&id));
    assert!(
        sync_with_ping(&mut s1, "end").await.is_empty(),
        "nothing more of the job"
    );
    let ended = [job.as_str(), "cancelled", "job finished"];
    assert_eq!(
        [0, 1].map(|i| deployment.replicas[i].lines_containing_all(&ended)),
        [1, 0],
        "the job ran, and ended, on A"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_received_on_b_over_websocket_reaches_the_job_running_on_a() {
    let deployment = two_replicas().await;
    let (a, b) = (deployment.endpoint(0), deployment.endpoint(1));
    let (mut conn, welcome) = a.ws_hello("alice-token", FEATURES).await;
    let session = welcome["session_id"].as_str().unwrap().to_owned();
    let token = welcome["payload"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (job, _) = conn.submit_ticker(1_000_000, 20).await;
    let progress = conn.recv().await;
    assert_eq!(progress["job_id"], job.as_str(), "{progress}");
    let last = progress["event_seq"].as_u64().unwrap();
    drop(conn);

    let mut conn = b.ws().await;
    let mut hello = ws_hello_payload("alice-token", FEATURES);
    hello["resume"] = json!({"session_id": session, "resume_token": token, "last_event_seq": last});
    conn.send("session.hello", hello).await;
    let welcome = conn.recv().await;
    assert_eq!(welcome["type"], "session.welcome", "{welcome}");
    conn.send(
        "job.cancel",
        json!({"job_id": job, "reason": "from replica B"}),
    )
    .await;
    let frames = conn.recv_until_terminal(&job).await;
    let types: Vec<&str> = frames
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .filter(|t| *t != "job.event")
        .collect();
    assert_eq!(types, ["job.cancelled", "job.error"], "{frames:?}");
    let terminal = frames.last().unwrap();
    assert_eq!(terminal["payload"]["code"], "CANCELLED", "{terminal}");
    let seqs: Vec<u64> = frames
        .iter()
        .map(|f| f["event_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (last + 1..=*seqs.last().unwrap()).collect::<Vec<_>>());

    let id = conn.send("job.cancel", json!({"job_id": job})).await;
    let refused = conn.recv().await;
    assert_eq!(refused["type"], "session.error", "{refused}");
    assert_eq!(refused["payload"]["code"], "INVALID_REQUEST", "{refused}");
    assert_eq!(refused["payload"]["request_id"], id.as_str(), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_jobs_on_b_lists_the_principals_jobs_running_on_a_and_on_b() {
    let deployment = two_replicas().await;
    let (a, b) = (deployment.endpoint(0), deployment.endpoint(1));
    let (mut on_a, _) = a.hello("alice-token").await;
    let (running_on_a, _) = submit_and_accept(&mut on_a, endless()).await;
    let (_, accepted_frame) = submit_amid(&mut on_a, submit("echo", json!(1))).await;
    let ended_on_a = accepted_frame.job_id;
    let (mut bob, _) = a.hello("bob-token").await;
    let (bobs, _) = submit_and_accept(&mut bob, submit("echo", json!("bob"))).await;
    bob.recv_until_terminal(&bobs).await;
    let (mut on_b, _) = b
        .hello_with("alice-token", &["list_jobs", "progress"])
        .await;
    let (running_on_b, _) = submit_and_accept(&mut on_b, endless()).await;
    // Far enough into the job on A that its entry has been refreshed since its acceptance.
    let mut seen_on_a = 0;
    while seen_on_a < 30 {
        let frame = on_a.recv().await;
        if frame.job_id == running_on_a {
            seen_on_a = frame.event_seq;
        }
    }

    // The echo on A is recorded as ended once its replica finished it, just after its end.
    list_until(&mut on_b, &ended_on_a, |j| j.status == "success").await;
    let jobs = list_until(&mut on_b, &running_on_a, |j| j.last_event_seq >= 30).await;
    let listed = by_id(&jobs);
    assert_eq!(
        listed.keys().copied().collect::<Vec<_>>(),
        {
            let mut ids = vec![
                running_on_a.as_str(),
                ended_on_a.as_str(),
                running_on_b.as_str(),
            ];
            ids.sort();
            ids
        },
        "alice's jobs on both replicas, in id order, and none of bob's"
    );
    assert_eq!(listed[running_on_a.as_str()].status, "running");
    assert_eq!(listed[running_on_a.as_str()].agent, "ticker@1.0.0");
    assert_eq!(listed[ended_on_a.as_str()].status, "success");
    assert_eq!(listed[running_on_b.as_str()].status, "running");
    // The entry of the job on A catches up with what its session receives there.
    let newer = listed[running_on_a.as_str()].last_event_seq.max(seen_on_a) + 10;
    while seen_on_a < newer {
        let frame = on_a.recv().await;
        if frame.job_id == running_on_a {
            seen_on_a = frame.event_seq;
        }
    }
    list_until(&mut on_b, &running_on_a, |j| j.last_event_seq >= newer).await;

    // Once the job on A ends, B lists its final status and last frame.
    on_a.send(cancel(&running_on_a)).await;
    let (_, terminal) = on_a.recv_until_terminal(&running_on_a).await;
    let jobs = list_until(&mut on_b, &running_on_a, |j| j.status == "cancelled").await;
    assert_eq!(
        by_id(&jobs)[running_on_a.as_str()].last_event_seq,
        terminal.event_seq
    );

    // Bob, on B, lists only his own.
    let (mut bob, _) = b.hello_with("bob-token", &["list_jobs"]).await;
    let jobs = bob.list_jobs().await;
    assert_eq!(
        by_id(&jobs).keys().copied().collect::<Vec<_>>(),
        [bobs.as_str()]
    );
    on_b.send(cancel(&running_on_b)).await;
    on_b.recv_until_terminal(&running_on_b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_subscribe_on_b_receives_a_job_running_on_a_through_its_end() {
    let deployment = two_replicas().await;
    let (a, b) = (deployment.endpoint(0), deployment.endpoint(1));
    let (mut owner, _) = a.hello("alice-token").await;
    let (job, accepted_frame) = submit_and_accept(&mut owner, ticker(60, 20)).await;
    let mut owners = vec![accepted_frame];
    owners.extend(recv_n(&mut owner, 5).await);

    let (mut sub, w) = b
        .hello_with("alice-token", &["subscribe", "progress"])
        .await;
    let id = sub.send(subscribe(&job, true, None)).await;
    let first = sub.recv().await;
    let s = subscribed(&first);
    assert_eq!(s.request_id, id);
    assert_eq!(s.job_id, job);
    assert_eq!(s.current_status, "running");
    assert_eq!(s.agent, "ticker@1.0.0");
    assert!(s.replayed);
    assert!(s.subscribed_from >= 6, "{s:?}");
    let (mut frames, terminal) = sub.recv_until_terminal(&job).await;
    frames.insert(0, first.clone());
    frames.push(terminal);
    let (rest, owner_end) = owner.recv_until_terminal(&job).await;
    owners.extend(rest);
    owners.push(owner_end);

    assert_eq!(
        job_trace(&frames, &job),
        job_trace(&owners, &job),
        "the subscriber has the job's history and live frames, each once, in order"
    );
    assert_eq!(
        event_seqs(&frames),
        (1..=frames.len() as u64).collect::<Vec<_>>(),
        "in the subscriber's own gap-free sequence"
    );
    assert!(frames
        .iter()
        .all(|f| f.session_id == w.session_id && f.job_id == job));
    assert_eq!(result_json(frames.last().unwrap())["ticks"], 60);
    assert!(sync_with_ping(&mut sub, "end").await.is_empty());

    // Once it ended, a subscription on B with history replays it whole from A's session.
    let (mut late, _) = b
        .hello_with("alice-token", &["subscribe", "progress"])
        .await;
    late.send(subscribe(&job, true, None)).await;
    let first = late.recv().await;
    let s = subscribed(&first);
    assert_eq!(s.current_status, "success");
    assert!(s.replayed);
    let (mut replayed, end) = late.recv_until_terminal(&job).await;
    replayed.push(end);
    assert_eq!(job_trace(&replayed, &job), job_trace(&owners, &job));
    assert!(sync_with_ping(&mut late, "end").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_unsubscribe_on_b_stops_the_frames_of_a_job_running_on_a() {
    let deployment = two_replicas().await;
    let (a, b) = (deployment.endpoint(0), deployment.endpoint(1));
    let (mut owner, _) = a.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut owner, endless()).await;

    let (mut sub, _) = b
        .hello_with("alice-token", &["subscribe", "progress"])
        .await;
    let id = sub.send(subscribe(&job, false, None)).await;
    let s = subscribed(&sub.recv().await).clone();
    assert_eq!(s.request_id, id);
    assert!(!s.replayed);
    let live = recv_n(&mut sub, 3).await;
    assert!(
        live.iter().all(|f| progress_current(f).is_some()),
        "{live:?}"
    );
    let id = sub.send(unsubscribe(&job)).await;
    let (before, marker) = run_echo(&mut sub, "unsubscribed").await;
    assert!(
        before
            .iter()
            .all(|f| f.job_id == job && progress_current(f).is_some()),
        "at most frames logged before the unsubscription ({id}): {before:?}"
    );

    // The job goes on, and nothing of it reaches the subscriber's session any more: its next
    // frame is the one of its own next job.
    let seen = owner.recv().await.event_seq;
    while owner.recv().await.event_seq < seen + 10 {}
    let (between, next) = run_echo(&mut sub, "later").await;
    assert!(
        between.is_empty(),
        "nothing after unsubscribing: {between:?}"
    );
    assert_eq!(
        next.event_seq,
        marker.event_seq + 2,
        "its acceptance, then its result"
    );
    let id = sub.send(unsubscribe(&job)).await;
    expect_error(&sub.recv().await, ErrorCode::InvalidRequest, Some(&id));
    owner.send(cancel(&job)).await;
    owner.expect_cancelled(&job).await;
}

/// Submits `payload` on `conn`, whose other jobs may be emitting; returns their frames before
/// its acceptance, and the acceptance.
async fn submit_amid(conn: &mut Conn, payload: In) -> (Vec<ServerFrame>, ServerFrame) {
    let request = conn.send(payload).await;
    conn.recv_until(|f| matches!(&f.payload, Some(Out::JobAccepted(a)) if a.request_id == request))
        .await
}

/// Runs an echo of `input` on `conn`; returns the frames before its acceptance and the
/// result.
async fn run_echo(conn: &mut Conn, input: &str) -> (Vec<ServerFrame>, ServerFrame) {
    let (before, accepted_frame) = submit_amid(conn, submit("echo", json!(input))).await;
    let (_, result) = conn.recv_until_terminal(&accepted_frame.job_id).await;
    assert_eq!(result.event_seq, accepted_frame.event_seq + 1);
    (before, result)
}

/// One session, dropped, and two resumes presenting its token at once, one on each replica:
/// exactly one is welcomed and the other refused, after which the presented token is refused
/// on both and the winner's works. Repeated so that the race is run many times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_resumes_racing_with_one_token_on_two_replicas_exactly_one_wins() {
    const ROUNDS: usize = 25;
    let deployment = two_replicas().await;
    let replicas = [deployment.endpoint(0), deployment.endpoint(1)];
    let (conn, w) = replicas[0].hello("alice-token").await;
    let session = w.session_id.clone();
    let mut token = welcome(&w).resume_token.clone();
    drop(conn);
    let mut wins = [0; 2];
    for round in 0..ROUNDS {
        let resume = hello(
            "alice-token",
            FEATURES,
            Some(resume_info(&session, &token, 0)),
        );
        let (mut on_a, mut on_b) = tokio::join!(replicas[0].open(), replicas[1].open());
        tokio::join!(on_a.send(resume.clone()), on_b.send(resume));
        let (first_a, first_b) = tokio::join!(on_a.recv(), on_b.recv());
        let (winner, won, welcomed, lost) = match (&first_a.payload, &first_b.payload) {
            (Some(Out::SessionWelcome(_)), Some(Out::SessionError(_))) => {
                (0, on_a, first_a, first_b)
            }
            (Some(Out::SessionError(_)), Some(Out::SessionWelcome(_))) => {
                (1, on_b, first_b, first_a)
            }
            _ => panic!("round {round}: not exactly one welcome: {first_a:?} / {first_b:?}"),
        };
        wins[winner] += 1;
        expect_error(&lost, ErrorCode::ResumeWindowExpired, None);
        assert_eq!(welcomed.session_id, session);
        let rotated = welcome(&welcomed).resume_token.clone();
        assert_ne!(rotated, token);

        // The presented token is dead on both replicas, even while the winner holds the
        // session.
        for replica in &replicas {
            let (_conn, first) = replica
                .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 0))
                .await;
            expect_error(&first, ErrorCode::ResumeWindowExpired, None);
        }
        drop(won);
        token = rotated;
    }
    println!("wins by replica: {wins:?}");
    for replica in &replicas {
        let (conn, first) = replica
            .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 0))
            .await;
        token = welcome(&first).resume_token.clone();
        drop(conn);
    }
}
