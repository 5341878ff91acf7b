//! The crate's client library (`arcp_gateway::client`) through the real server: a session that
//! submits, lists, subscribes and cancels, and one whose connection a TCP proxy between it
//! and the gateway cuts again and again while a job streams, which must see every frame of the
//! job once, in order, through the result; one kept away while its job goes on, whose
//! resume reports what the gateway replayed; and a session taken up by a second client from
//! the first one's resume point, which may cancel the first one's job.

mod common;

use std::net::SocketAddr;

use arcp_gateway::{
    client::{Client, ClientConfig},
    error::ErrorCode,
    proto::server_frame::Payload as Out,
};
use common::*;
use rand::{Rng, SeedableRng};
use serde_json::json;

fn config(addr: SocketAddr) -> ClientConfig {
    ClientConfig::new(format!("http://{addr}"), "alice-token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_streams_once_through_every_cut_of_the_connection() {
    let server = TestServer::start_default().await;
    let cutter = Cutter::start(server.addr).await;
    let mut client = Client::connect(config(cutter.addr))
        .await
        .expect("the client connects through the proxy");
    let events = 3000u64;
    let job = client
        .submit("chatter", &json!({"count": events, "bytes": 40}))
        .await
        .expect("the job is accepted");
    let seed = std::env::var("ARCP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut logs, mut seqs, mut cuts) = (0u64, Vec::new(), 0u32);
    let mut until_cut = rng.random_range(1..400);
    let result = loop {
        let frame = client
            .next()
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"))
            .unwrap_or_else(|| panic!("seed {seed}: the session closed"));
        if frame.job_id != job {
            continue;
        }
        seqs.push(frame.event_seq);
        match &frame.payload {
            Some(Out::JobEvent(e)) if e.kind == "log" => logs += 1,
            Some(Out::JobResult(_)) => break frame,
            Some(Out::JobError(e)) => panic!("seed {seed}: the job failed: {e:?}"),
            _ => {}
        }
        until_cut -= 1;
        if until_cut == 0 {
            cutter.cut();
            cuts += 1;
            until_cut = rng.random_range(1..400);
        }
    };
    assert_eq!(logs, events, "seed {seed}: every event once");
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + seqs.len() as u64).collect::<Vec<_>>(),
        "seed {seed}: in order, with no gap and no repeat"
    );
    assert!(matches!(result.payload, Some(Out::JobResult(_))));
    assert!(cuts >= 5, "seed {seed}: only {cuts} cuts");
    assert!(
        client.resumes() >= 1 && client.resumes() <= u64::from(cuts),
        "seed {seed}: {} resumes for {cuts} cuts",
        client.resumes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_submits_lists_subscribes_and_cancels() {
    let server = TestServer::start_default().await;
    let mut alice = Client::connect(config(server.addr))
        .await
        .expect("connects");
    assert!(alice.features().iter().any(|f| f == "list_jobs"));
    let job = alice
        .submit("ticker", &json!({"count": 1000, "interval_ms": 20}))
        .await
        .expect("accepted");
    let listed = alice.list_jobs().await.expect("listed");
    assert!(listed.iter().any(|j| j.job_id == job), "{listed:?}");

    let mut watcher = Client::connect(config(server.addr))
        .await
        .expect("connects");
    watcher.subscribe(&job, false).await.expect("subscribed");

    alice.cancel(&job).await.expect("cancel sent");
    let ended = |frame: &arcp_gateway::proto::ServerFrame| match &frame.payload {
        Some(Out::JobError(e)) if frame.job_id == job => Some(e.code.clone()),
        _ => None,
    };
    let mut code = None;
    while code.is_none() {
        let frame = alice.next().await.expect("a frame").expect("open");
        code = ended(&frame);
    }
    assert_eq!(code.as_deref(), Some(ErrorCode::Cancelled.as_str()));
    let mut seen = None;
    while seen.is_none() {
        let frame = watcher.next().await.expect("a frame").expect("open");
        seen = ended(&frame);
    }
    assert_eq!(seen.as_deref(), Some(ErrorCode::Cancelled.as_str()));

    let refused = alice.submit("no-such-agent", &json!({})).await;
    assert_eq!(
        refused.err().map(|e| e.code()),
        Some(ErrorCode::AgentNotAvailable)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_tells_how_many_events_the_gateway_replayed() {
    let server = TestServer::start_default().await;
    let cutter = Cutter::start(server.addr).await;
    let mut client = Client::connect(config(cutter.addr))
        .await
        .expect("connects through the proxy");
    let job = client
        .submit("ticker", &json!({"count": 60, "interval_ms": 20}))
        .await
        .expect("accepted");
    let mut watcher = Client::connect(config(server.addr))
        .await
        .expect("connects");
    watcher.subscribe(&job, false).await.expect("subscribed");
    let progress = |frame: &arcp_gateway::proto::ServerFrame| match &frame.payload {
        Some(Out::JobEvent(e)) => match &e.body {
            Some(arcp_gateway::proto::job_event::Body::Progress(p)) if frame.job_id == job => {
                Some(p.current)
            }
            _ => None,
        },
        _ => None,
    };
    let mut seqs = Vec::new();
    loop {
        let frame = client.next().await.expect("a frame").expect("open");
        if frame.job_id == job {
            seqs.push(frame.event_seq);
            if progress(&frame).is_some() {
                break;
            }
        }
    }
    assert!(client.last_resume().is_none(), "no resume yet");

    // Kept away while the job goes on: what it logs meanwhile is the replay.
    cutter.cut_and_refuse();
    loop {
        let frame = watcher.next().await.expect("a frame").expect("open");
        if progress(&frame).is_some_and(|current| current >= 30.0) {
            break;
        }
    }
    cutter.admit();
    loop {
        let frame = client.next().await.expect("a frame").expect("open");
        if frame.job_id != job {
            continue;
        }
        seqs.push(frame.event_seq);
        if matches!(frame.payload, Some(Out::JobResult(_))) {
            break;
        }
    }
    assert_eq!(seqs, (1..=62).collect::<Vec<_>>(), "every frame once");
    assert_eq!(client.resumes(), 1);
    let resumed = client.last_resume().expect("the resume is reported");
    assert!(resumed.after_seq >= 2, "{resumed:?}");
    assert!(
        resumed.replayed >= 10,
        "what was logged while away is replay: {resumed:?}"
    );
    assert!(
        resumed.caught_up && resumed.after_seq + resumed.replayed < 62,
        "live frames came after the replay: {resumed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_made_from_a_resume_point_takes_up_the_session_and_may_cancel_its_job() {
    let server = TestServer::start_default().await;
    let mut first = Client::connect(config(server.addr))
        .await
        .expect("connects");
    let job = first
        .submit("ticker", &json!({"count": 100000, "interval_ms": 10}))
        .await
        .expect("accepted");
    let accepted = first.next().await.expect("a frame").expect("open");
    assert!(matches!(accepted.payload, Some(Out::JobAccepted(_))));
    let point = first.resume_point();
    assert_eq!(point.session_id, first.session_id());
    assert_eq!(point.last_event_seq, accepted.event_seq);
    drop(first);

    // Another client takes the session up from the point: what came after it, once, and the
    // submitting session's authority with it.
    let mut second = Client::resume(config(server.addr), point.clone())
        .await
        .expect("resumes");
    assert_eq!(second.session_id(), point.session_id);
    assert_ne!(
        second.resume_point().resume_token,
        point.resume_token,
        "the welcome rotated the token"
    );
    let mut last = point.last_event_seq;
    while last < point.last_event_seq + 3 {
        let frame = second.next().await.expect("a frame").expect("open");
        if frame.event_seq != 0 {
            assert_eq!(frame.event_seq, last + 1, "once, in order");
            last = frame.event_seq;
        }
    }
    second.cancel(&job).await.expect("cancel sent");
    let code = loop {
        let frame = second.next().await.expect("a frame").expect("open");
        if let Some(Out::JobError(e)) = &frame.payload {
            break e.code.clone();
        }
    };
    assert_eq!(code, ErrorCode::Cancelled.as_str());

    // The point's token was spent on the resume.
    let spent = Client::resume(config(server.addr), point).await;
    assert!(spent.is_err(), "a used token resumes nothing");
}
