//! A shutdown always ends within its grace, whatever the clients do (issue 16).
//!
//! Health turns NOT_SERVING first, `Health/Watch` streams end after saying so, ARCP streams end
//! as before (UNAVAILABLE, WebSocket 1012; sessions stay resumable), and connections still
//! open when the grace ends, such as a client that stopped reading while its job emits, are
//! cut on both transports.

mod common;

use std::time::Duration;

use arcp_gateway::{
    auth::Authenticator, config::GatewayConfig, ids::Principal, store::MemoryStores, Gateway,
};
use common::*;
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tonic_health::pb::health_check_response::ServingStatus;

/// How long past its deadline a shutdown may end on a loaded machine before the test calls it
/// missed. A guard, not the thing measured.
const SLACK: Duration = Duration::from_secs(5);

/// The grace of the tests that need it to run out.
const SHORT_GRACE: Duration = Duration::from_secs(1);

/// Log bound of the stopped-reader tests. A job runs at most half of it (32 frames) ahead of
/// its session's reader, so a log that reaches [`PAST_THE_READER`] frames means the reader has
/// taken at least two, and the 64 KiB frames of `chatter` no longer fit the client's window.
const LOG_FRAMES: usize = 64;
const PAST_THE_READER: u64 = 35;

const BIG_LINES: u64 = 65_536;

fn config(grace: Duration) -> GatewayConfig {
    GatewayConfig {
        shutdown_grace: grace,
        max_log_frames: LOG_FRAMES,
        ..GatewayConfig::default()
    }
}

fn builder(grace: Duration) -> arcp_gateway::gateway::GatewayBuilder {
    Gateway::builder(config(grace)).auth(Authenticator::from_pairs([(
        "alice-token".to_string(),
        Principal::new("alice"),
    )]))
}

/// Stops `server`; returns how long the stop took.
async fn timed_stop(server: TestServer) -> Duration {
    let started = Instant::now();
    server.stop().await;
    started.elapsed()
}

#[tokio::test]
async fn a_shutdown_ends_health_watch_streams_after_they_see_not_serving() {
    // A grace long enough that a drain waiting for it would show.
    let grace = Duration::from_secs(10);
    let server = TestServer::start_gateway(builder(grace)).await;
    let channel = server.channel().await;
    let mut watches = Vec::new();
    for service in ["", "arcp.v1.Arcp"] {
        watches.push((service, serving_watch(&channel, service).await));
    }

    let watching = futures::future::join_all(
        watches
            .into_iter()
            .map(|(service, watch)| async move { (service, statuses_until_end(watch).await) }),
    );
    let (took, seen) = tokio::join!(timed_stop(server), watching);
    for (service, statuses) in seen {
        assert_eq!(
            statuses,
            [ServingStatus::NotServing],
            "{service:?}: NOT_SERVING, then the end"
        );
    }
    assert!(
        took < grace,
        "the stop took {took:?}: the Watch streams held the drain until the grace ran out"
    );
}

#[tokio::test]
async fn a_grpc_client_that_stopped_reading_is_cut_when_the_grace_ends_and_its_session_resumes() {
    let stores = MemoryStores::new(LOG_FRAMES);
    let server = TestServer::start_on(builder(SHORT_GRACE), stores.clone(), |s| s).await;
    let replica = TestServer::start_on(builder(SHORT_GRACE), stores, |s| s).await;

    let mut stalled = open_on(narrow_channel(server.addr).await, &[])
        .await
        .expect("the stream opens");
    stalled.send(hello("alice-token", FEATURES, None)).await;
    let welcomed = stalled.recv().await;
    let (session, token) = (
        welcomed.session_id.clone(),
        welcome(&welcomed).resume_token.clone(),
    );
    // Fewer lines than the log holds, so a resume from the start finds every one.
    let lines = 40;
    stalled
        .send(submit(
            "chatter",
            json!({"count": lines, "bytes": BIG_LINES}),
        ))
        .await;
    // From here on the client reads nothing.
    wait_for_log(&server, &session, PAST_THE_READER).await;

    let took = timed_stop(server).await;
    assert!(
        took >= SHORT_GRACE,
        "the stop took {took:?}: the stalled client's stream cannot have ended by itself"
    );
    assert!(took < SHORT_GRACE + SLACK, "the stop took {took:?}");

    // The connection was cut: what the client had buffered, then a connection error. Not the
    // UNAVAILABLE the stream was told to end with, which a server still serving it after
    // the grace would send once the client read again.
    let ended = loop {
        match stalled.try_recv().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a cut stream ends with an error, not OK"),
            Err(status) => break status,
        }
    };
    assert_ne!(ended.code(), tonic::Code::Unavailable, "{ended:?}");

    // The session is resumable elsewhere, with every frame from the first.
    let (mut resumed, first) = replica
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 0))
        .await;
    welcome(&first);
    let accepted = resumed.recv().await;
    let (frames, terminal) = resumed.recv_until_terminal(&accepted.job_id).await;
    let mut seqs = vec![accepted.event_seq];
    seqs.extend(event_seqs(&frames));
    seqs.extend(event_seqs([&terminal]));
    assert_eq!(
        seqs,
        (1..=lines + 2).collect::<Vec<_>>(),
        "no gap, no repeat"
    );
}

#[tokio::test]
async fn a_websocket_client_that_stopped_reading_is_cut_when_the_grace_ends() {
    let server = TestServer::start_gateway(builder(SHORT_GRACE)).await;
    let mut stalled = server.ws_with_receive_buffer(4096).await;
    stalled
        .send("session.hello", ws_hello_payload("alice-token", &[]))
        .await;
    let welcomed = stalled.recv().await;
    assert_eq!(welcomed["type"], "session.welcome", "{welcomed}");
    let session = welcomed["session_id"]
        .as_str()
        .expect("the welcome names the session")
        .to_owned();
    stalled
        .send(
            "job.submit",
            json!({"agent": "chatter", "input": {"count": 1000, "bytes": BIG_LINES}}),
        )
        .await;
    // From here on the client reads nothing.
    wait_for_log(&server, &session, PAST_THE_READER).await;

    let took = timed_stop(server).await;
    assert!(
        took >= SHORT_GRACE,
        "the stop took {took:?}: the stalled client's connection cannot have ended by itself"
    );
    assert!(took < SHORT_GRACE + SLACK, "the stop took {took:?}");

    // The server's task for it is gone with serve(): what was in flight, then the end, and no
    // 1012 close, which only a task still running after the cut could send.
    loop {
        match stalled.next_message().await {
            Some(Message::Text(_)) => continue,
            Some(Message::Close(frame)) => panic!("a close frame after the cut: {frame:?}"),
            Some(other) => panic!("unexpected {other:?}"),
            None => break,
        }
    }
}
