//! Gateway processes on a Redis Cluster of three primaries (`--store redis-cluster://...`):
//! a session's keys live in one slot, sessions spread over the primaries, and a client moves
//! between replicas as it does on a single Redis.

mod common;

use arcp_gateway::proto::{self, client_frame::Payload as In};
use common::*;

/// The features the session asks for: it lists its jobs.
const FEATURES_LISTING: &[&str] = &["list_jobs", "progress", "agent_versions"];

/// A session opened on A resumes on B mid-job and gets every frame once, through the result;
/// B lists the job; and a second job, submitted on B, is cancelled by the session once it is
/// back on A, while B runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_between_replicas_on_a_cluster_losing_and_repeating_nothing() {
    let deployment = Deployment::on_cluster(2).await;
    let (a, b) = (deployment.endpoint(0), deployment.endpoint(1));
    let (mut conn, w) = a.hello_with("alice-token", FEATURES_LISTING).await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut conn, ticker(100, 10)).await;
    let mut seen = vec![1u64];
    while seen.len() < 10 {
        seen.push(conn.recv().await.event_seq);
    }
    drop(conn);

    let last = *seen.last().unwrap();
    let (mut conn, first) = b
        .resume_with_hello(
            "alice-token",
            FEATURES_LISTING,
            resume_info(&session, &token, last),
        )
        .await;
    let token = welcome(&first).resume_token.clone();
    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    seen.extend(frames.iter().chain([&terminal]).map(|f| f.event_seq));
    assert_eq!(
        seen,
        (1..=terminal.event_seq).collect::<Vec<_>>(),
        "gap-free and duplicate-free across the move"
    );
    assert_eq!(result_json(&terminal)["ticks"], 100);

    let list = conn.list_jobs().await;
    assert!(
        list.jobs.iter().any(|j| j.job_id == job),
        "B lists the job A ran: {list:?}"
    );

    // A second job, submitted on B, is cancelled by the session back on A.
    let (second, accepted) = submit_and_accept(&mut conn, ticker(10_000, 10)).await;
    let mut last = accepted.event_seq;
    for _ in 0..3 {
        last = conn.recv().await.event_seq;
    }
    drop(conn);
    let (mut conn, first) = a
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, last))
        .await;
    welcome(&first);
    conn.send(In::JobCancel(proto::JobCancel {
        job_id: second.clone(),
        reason: "from replica A".into(),
    }))
    .await;
    let (before, terminal) = conn.recv_until_terminal(&second).await;
    assert_eq!(job_error(&terminal).code, "CANCELLED");
    assert_eq!(
        event_seqs(before.iter().chain([&terminal])),
        (last + 1..=terminal.event_seq).collect::<Vec<_>>(),
        "gap-free after the second move"
    );
    // B logs the job's end once it is recorded, which follows its terminal frame.
    let ended = [second.as_str(), "cancelled", "job finished"];
    deployment.replicas[1].wait_for_line(&ended).await;
    assert_eq!(
        deployment.replicas[0].lines_containing_all(&ended),
        0,
        "the second job ran, and ended, on B"
    );
}
