//! A session's log, read straight from the gateway rather than through a client.

use std::{sync::Arc, time::Duration};

use arcp_gateway::{
    ids::SessionId,
    proto::{client_frame::Payload as In, ServerFrame},
    store::log::SessionLog,
};

use super::{
    event_seqs, resume_info, submit_and_accept, welcome, TestServer, FEATURES, FRAME_TIMEOUT,
};

/// The session's log, straight from the gateway.
pub async fn session_log(server: &TestServer, session: &str) -> Arc<dyn SessionLog> {
    server
        .gateway
        .stores()
        .logs
        .open(&SessionId::new(session))
        .await
        .expect("the session has a log")
}

/// The session's newest event_seq, straight from the gateway's log.
pub async fn newest(server: &TestServer, session: &str) -> u64 {
    session_log(server, session)
        .await
        .bounds()
        .await
        .expect("the log is readable")
        .newest
        .get()
}

/// Polls the log until it holds `seq` frames. A guard against hangs bounded by a deadline, not
/// a timing assertion.
pub async fn wait_for_log(server: &TestServer, session: &str, seq: u64) {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let n = newest(server, session).await;
        if n >= seq {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never reached {seq} (newest {n})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Submits `payload` on a new session of `server`, reads its frames until `enough` says so,
/// drops the stream, waits for the job to log four frames more meanwhile, resumes, and reads
/// on to the job's terminal frame. Returns every frame of the job, acceptance to end, and
/// asserts the client saw each once, in order.
pub async fn resumed_mid_job(
    server: &TestServer,
    payload: In,
    enough: impl Fn(&[ServerFrame]) -> bool,
) -> Vec<ServerFrame> {
    let (mut conn, welcomed) = server.hello("alice-token").await;
    let session = welcomed.session_id.clone();
    let token = welcome(&welcomed).resume_token.clone();
    let (job, accepted) = submit_and_accept(&mut conn, payload).await;
    let mut frames = vec![accepted];
    while !enough(&frames) {
        frames.push(conn.recv().await);
    }
    let last = frames.last().map(|f| f.event_seq).expect("frames");
    drop(conn);
    // The job goes on meanwhile: the log grows past what the client took.
    wait_for_log(server, &session, last + 4).await;
    let (mut conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, last))
        .await;
    welcome(&first);
    let (rest, terminal) = conn.recv_until_terminal(&job).await;
    frames.extend(rest);
    frames.push(terminal);
    let seqs = event_seqs(&frames);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "every frame once, in order: {seqs:?}"
    );
    frames
}
