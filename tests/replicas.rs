//! Replicas of one deployment as real processes: `arcp-gateway serve --store redis://...` on a
//! `redis-server` of the test's own, reached directly or through a real L7 proxy (haproxy,
//! round-robin per request), so that a client's reconnect lands on another replica than the
//! one it left, while its job keeps running where it was submitted.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Sequence numbers 1 through the last one seen, each once and in order.
fn assert_gap_free(seen: &[u64], resumes: usize) {
    let expected: Vec<u64> = (1..=*seen.last().expect("frames")).collect();
    assert_eq!(
        seen, expected,
        "gap-free and duplicate-free across {resumes} resumes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_replica_mid_job_over_grpc() {
    let deployment = Deployment::start(2).await;
    let (a, b) = (deployment.endpoint(0), deployment.endpoint(1));
    let (mut conn, w) = a.hello("alice-token").await;
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
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, last))
        .await;
    assert!(!welcome(&first).resume_token.is_empty());
    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    seen.extend(frames.iter().chain([&terminal]).map(|f| f.event_seq));
    assert_gap_free(&seen, 1);
    assert_eq!(result_json(&terminal)["ticks"], 100);
    assert_eq!(
        deployment.replicas_that_logged("session opened", &session),
        [0].into()
    );
    assert_eq!(
        deployment.replicas_that_logged("session resumed", &session),
        [1].into()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_replica_mid_job_over_websocket_through_the_proxy() {
    let deployment = Deployment::start(2).await;
    let proxy = Haproxy::start(&[deployment.endpoint(0), deployment.endpoint(1)]);
    let features = &["progress", "agent_versions"];
    let (mut conn, welcome) = proxy.endpoint().ws_hello("alice-token", features).await;
    let session = welcome["session_id"].as_str().unwrap().to_owned();
    let token = welcome["payload"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (job, accepted) = conn.submit_ticker(100, 10).await;
    let mut seen = vec![accepted["event_seq"].as_u64().unwrap()];
    while seen.len() < 10 {
        seen.push(conn.recv().await["event_seq"].as_u64().unwrap());
    }
    drop(conn);

    let mut conn = proxy.endpoint().ws().await;
    let mut hello = ws_hello_payload("alice-token", features);
    hello["resume"] = json!({
        "session_id": session, "resume_token": token, "last_event_seq": seen.last(),
    });
    conn.send("session.hello", hello).await;
    let welcome = conn.recv().await;
    assert_eq!(welcome["type"], "session.welcome", "{welcome}");
    let frames = conn.recv_until_terminal(&job).await;
    seen.extend(frames.iter().map(|f| f["event_seq"].as_u64().unwrap()));
    assert_gap_free(&seen, 1);
    assert_eq!(frames.last().unwrap()["payload"]["result"]["ticks"], 100);
    let opened = deployment.replicas_that_logged("session opened", &session);
    let resumed = deployment.replicas_that_logged("session resumed", &session);
    assert_eq!(opened.len(), 1, "one replica opened the session");
    assert_eq!(resumed.len(), 1, "one replica resumed it");
    assert_ne!(
        opened, resumed,
        "the proxy sent the resume to the other replica"
    );
}

/// Drops and resumes the stream at random points while a job emits, through the proxy in
/// front of three replicas, so that every reconnect goes to the next replica: the client sees
/// every sequence number from 1 to the terminal frame exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_drops_and_resumes_across_replicas_lose_and_repeat_nothing() {
    let seed: u64 = std::env::var("ARCP_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("ARCP_STRESS_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    const TICKS: u64 = 2000;
    let deployment = Deployment::start(3).await;
    let proxy = Haproxy::start(&(0..3).map(|i| deployment.endpoint(i)).collect::<Vec<_>>());
    let through = proxy.endpoint();
    let (mut conn, w) = through.hello("alice-token").await;
    let session = w.session_id.clone();
    let mut token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut conn, ticker(TICKS, 0)).await;

    let mut seen = vec![1u64];
    let mut resumes = 0;
    'outer: loop {
        for _ in 0..rng.random_range(0..300) {
            let f = conn.recv().await;
            assert_eq!(f.job_id, job);
            seen.push(f.event_seq);
            if is_terminal(&f) {
                assert_eq!(result_json(&f)["ticks"], TICKS);
                break 'outer;
            }
        }
        drop(conn);
        resumes += 1;
        let last = *seen.last().unwrap();
        let (next, first) = through
            .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, last))
            .await;
        assert_eq!(first.session_id, session, "{first:?}");
        token = welcome(&first).resume_token.clone();
        conn = next;
    }
    println!("resumed {resumes} times");
    assert!(resumes >= 3, "the test must actually exercise resume");
    assert_gap_free(&seen, resumes);
    let resumed = deployment.replicas_that_logged("session resumed", &session);
    assert!(
        resumed.len() >= 2,
        "the resumes reached several replicas: {resumed:?}"
    );
}

/// SIGTERM drains a replica: its streams end with UNAVAILABLE so clients reconnect elsewhere,
/// a job that finishes within `--drain-grace-sec` finishes, the one that does not ends with a
/// retryable INTERNAL_ERROR naming the replica, and the process exits; a client resuming on
/// another replica receives all of it, gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_replica_and_its_jobs_end_where_clients_resume() {
    let mut deployment = Deployment::start_with(2, &["--drain-grace-sec", "1"]).await;
    let (a, b) = (deployment.endpoint(0), deployment.endpoint(1));
    let (mut conn, w) = a.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (short, _) = submit_and_accept(&mut conn, ticker(5, 100)).await;
    let (long, _) = submit_and_accept(&mut conn, ticker(1000, 100)).await;

    let draining = deployment.replicas.remove(0);
    draining.signal("TERM");
    let mut seen = Vec::new();
    let end = loop {
        match conn.try_recv().await {
            Ok(Some(frame)) => seen.push(frame.event_seq),
            other => break other,
        }
    };
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let (exit, output) = draining.exited().await;
    assert!(exit.success(), "replica-0 exits cleanly: {exit}\n{output}");
    assert!(output.contains("jobs drained"), "{output}");

    let last = seen.last().copied().unwrap_or(2);
    let (mut conn, first) = b
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, last))
        .await;
    welcome(&first);
    let mut terminals = Vec::new();
    while terminals.len() < 2 {
        let frame = conn.recv().await;
        if is_terminal(&frame) {
            terminals.push(frame);
        }
    }
    let by_job = |job: &str| terminals.iter().find(|f| f.job_id == job).expect("its end");
    assert_eq!(result_json(by_job(&short))["ticks"], 5);
    let error = job_error(by_job(&long));
    assert_eq!(error.code, "INTERNAL_ERROR");
    assert!(error.retryable);
    assert!(error.message.contains("replica-0"), "{}", error.message);
}
