//! Job subscription (§7.6, §14) through the real server: the `job.subscribed` authority
//! descriptor, live delivery and history replay through the subscriber's own gap-free
//! `event_seq`, who may subscribe, no cancel authority for subscribers, and unsubscribing.

mod common;

use std::time::Duration;

use std::{collections::HashSet, sync::Arc};

use arcp_gateway::{
    agent::AgentRegistry,
    auth::Authenticator,
    config::GatewayConfig,
    engine::Observers,
    ids::Principal,
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out, ClientFrame},
    ErrorCode, Gateway,
};
use common::*;
use serde_json::json;
use tokio::sync::mpsc;

/// A gateway with alice, bob and carol (an observer of every job), the built-in agents and
/// `pacer`, whose steps the returned sender feeds.
async fn start() -> (TestServer, mpsc::UnboundedSender<u64>) {
    let (pacer, tx) = Pacer::new();
    let mut agents = AgentRegistry::with_builtins();
    agents.register("pacer", "1.0.0", pacer).unwrap();
    let gateway = Gateway::builder(GatewayConfig::default())
        .auth(Authenticator::from_pairs(
            [
                ("alice", "alice-token"),
                ("bob", "bob-token"),
                ("carol", "carol-token"),
            ]
            .map(|(p, t)| (t.to_string(), Principal::new(p))),
        ))
        .agents(agents)
        .observe_policy(Arc::new(Observers(HashSet::from([Principal::new(
            "carol",
        )]))));
    (TestServer::start_gateway(gateway).await, tx)
}

/// A subscribing session: `subscribe` only.
async fn subscriber(server: &TestServer, token: &str) -> (Conn, proto::ServerFrame) {
    server.hello_with(token, &["subscribe"]).await
}

/// Alice's pacer job, submitted with a trace id and a lease; returns the job id and the
/// acceptance.
async fn submit_pacer(owner: &mut Conn) -> (String, proto::ServerFrame) {
    owner
        .send_frame(ClientFrame {
            id: "pacer-submit".into(),
            trace_id: TRACEPARENT.into(),
            payload: Some(In::JobSubmit(proto::JobSubmit {
                agent: "pacer".into(),
                input: Some(json_value(&json!(null))),
                lease_request: [(
                    "fs.read".to_string(),
                    prost_types::ListValue {
                        values: vec![json_value(&json!("/workspace/**"))],
                    },
                )]
                .into_iter()
                .collect(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await;
    let frame = owner.recv().await;
    assert_eq!(accepted(&frame).request_id, "pacer-submit");
    (frame.job_id.clone(), frame)
}

async fn subscribing_without_the_subscribe_feature_is_refused_and_the_session_survives() {
    let (server, _steps) = start().await;
    let (mut owner, _) = server.hello_with("alice-token", &[]).await;
    let (job, _) = submit_and_accept(&mut owner, submit("echo", json!(1))).await;
    let (mut other, _) = server.hello_with("alice-token", &["progress"]).await;
    let id = other.send(subscribe(&job, true, None)).await;
    expect_error(&other.recv().await, ErrorCode::InvalidRequest, Some(&id));
    let id = other.send(unsubscribe(&job)).await;
    expect_error(&other.recv().await, ErrorCode::InvalidRequest, Some(&id));
    let (job, accepted_frame) = submit_and_accept(&mut other, submit("echo", json!(2))).await;
    assert_eq!(
        accepted_frame.event_seq, 1,
        "nothing was logged for the refusals"
    );
    let (_, terminal) = other.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 2);
}

async fn a_live_subscription_announces_the_job_then_delivers_only_later_frames() {
    let (server, steps) = start().await;
    let (mut owner, _) = server.hello_with("alice-token", &[]).await;
    let (job, acc) = submit_pacer(&mut owner).await;
    steps.send(2).unwrap();
    assert_eq!(event_seqs(&recv_n(&mut owner, 2).await), vec![2, 3]);

    let (mut sub, w) = subscriber(&server, "alice-token").await;
    let id = sub.send(subscribe(&job, false, None)).await;
    let frame = sub.recv().await;
    let s = subscribed(&frame);
    assert_eq!(
        frame.event_seq, 1,
        "job_subscribed is logged in the subscriber's session"
    );
    assert_eq!(frame.session_id, w.session_id);
    assert_eq!(frame.job_id, job);
    assert_eq!(frame.trace_id, TRACEPARENT);
    assert_eq!(s.job_id, job);
    assert_eq!(s.request_id, id);
    assert_eq!(s.current_status, "running");
    assert_eq!(s.agent, "pacer@1.0.0");
    assert_eq!(s.lease, accepted(&acc).lease);
    assert_eq!(s.lease["fs.read"].values.len(), 1);
    assert_eq!(s.trace_id, TRACEPARENT);
    assert_eq!(
        s.subscribed_from, 3,
        "the job's newest seq in its own session"
    );
    assert!(!s.replayed);
    assert!(s.parent_job_id.is_empty());

    // Only what the job emits from now on, in the subscriber's own sequence.
    steps.send(2).unwrap();
    let live = recv_n(&mut sub, 2).await;
    assert_eq!(event_seqs(&live), vec![2, 3]);
    let lines: Vec<_> = live.iter().map(|f| log_message(f).unwrap()).collect();
    assert_eq!(lines, vec!["line 3", "line 4"]);
    assert!(live
        .iter()
        .all(|f| f.job_id == job && f.session_id == w.session_id));
    assert_eq!(event_seqs(&recv_n(&mut owner, 2).await), vec![4, 5]);

    steps.send(0).unwrap();
    let terminal = sub.recv().await;
    assert_eq!(terminal.event_seq, 4);
    assert_eq!(terminal.job_id, job);
    assert_eq!(result_json(&terminal), json!({"lines": 4}));
    let (_, owner_end) = owner.recv_until_terminal(&job).await;
    assert_eq!(owner_end.event_seq, 6);
    assert!(sync_with_ping(&mut sub, "end").await.is_empty());
    assert_eq!(newest(&server, &w.session_id).await, 4);
}

async fn history_replays_the_jobs_frames_after_from_event_seq_then_live_frames_without_gap_or_duplicate(
) {
    let (server, steps) = start().await;
    let (mut owner, _) = server.hello_with("alice-token", &[]).await;
    let (job, _) = submit_pacer(&mut owner).await; // owner seq 1
    steps.send(1).unwrap(); // 2: line 1
    assert_eq!(owner.recv().await.event_seq, 2);
    // Another job's frames interleave in the owner's log: 3, 4.
    let (echo, _) = submit_and_accept(&mut owner, submit("echo", json!("other"))).await;
    owner.recv_until_terminal(&echo).await;
    steps.send(2).unwrap(); // 5: line 2, 6: line 3
    assert_eq!(event_seqs(&recv_n(&mut owner, 2).await), vec![5, 6]);

    // From owner seq 2: lines 2 and 3 are replayed, the echo's frames are not.
    let (mut from_two, w) = subscriber(&server, "alice-token").await;
    let id = from_two.send(subscribe(&job, true, Some(2))).await;
    // Without from_event_seq: from the job's first frame.
    let (mut whole, _) = subscriber(&server, "alice-token").await;
    let whole_id = whole.send(subscribe(&job, true, None)).await;

    let first = recv_n(&mut from_two, 3).await;
    let s = subscribed(&first[0]);
    assert_eq!(s.request_id, id);
    assert_eq!(s.subscribed_from, 6);
    assert!(s.replayed);
    assert_eq!(log_message(&first[1]), Some("line 2"));
    assert_eq!(log_message(&first[2]), Some("line 3"));

    let all = recv_n(&mut whole, 5).await;
    let s = subscribed(&all[0]);
    assert_eq!(s.request_id, whole_id);
    assert_eq!(s.subscribed_from, 6);
    assert!(s.replayed);
    let a = accepted(&all[1]);
    assert_eq!(a.job_id, job);
    assert!(
        a.request_id.is_empty(),
        "the submit's id correlates only for its own session, so a subscriber's copy has none"
    );
    let lines: Vec<_> = all[2..].iter().map(|f| log_message(f).unwrap()).collect();
    assert_eq!(lines, vec!["line 1", "line 2", "line 3"]);

    // Then live frames, seamlessly.
    steps.send(1).unwrap();
    steps.send(0).unwrap();
    let live = recv_n(&mut from_two, 2).await;
    assert_eq!(log_message(&live[0]), Some("line 4"));
    assert_eq!(
        to_json(job_result(&live[1]).result.as_ref().unwrap()),
        json!({"lines": 4})
    );
    let frames: Vec<_> = first.iter().chain(&live).collect();
    assert_eq!(
        frames.iter().map(|f| f.event_seq).collect::<Vec<_>>(),
        (1..=5).collect::<Vec<_>>(),
        "the subscriber's own gap-free sequence"
    );
    assert!(frames
        .iter()
        .all(|f| f.job_id == job && f.session_id == w.session_id));
    assert!(
        sync_with_ping(&mut from_two, "end").await.is_empty(),
        "nothing twice"
    );

    let live = recv_n(&mut whole, 2).await;
    assert_eq!(log_message(&live[0]), Some("line 4"));
    job_result(&live[1]);
    assert_eq!(
        event_seqs(&all)
            .into_iter()
            .chain(event_seqs(&live))
            .collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    assert!(
        sync_with_ping(&mut whole, "end").await.is_empty(),
        "nothing twice"
    );
}

async fn subscribing_to_a_finished_job_with_history_replays_it_to_its_end() {
    let (server, _steps) = start().await;
    let (mut owner, _) = server.hello_with("alice-token", &[]).await;
    let (job, _) = submit_and_accept(&mut owner, submit("echo", json!({"done": true}))).await;
    owner.recv_until_terminal(&job).await;

    let (mut sub, _) = subscriber(&server, "alice-token").await;
    sub.send(subscribe(&job, true, None)).await;
    let frames = recv_n(&mut sub, 3).await;
    let s = subscribed(&frames[0]);
    assert_eq!(s.current_status, "success");
    assert_eq!(s.agent, "echo@1.0.0");
    assert_eq!(s.subscribed_from, 2);
    assert!(s.replayed);
    assert_eq!(accepted(&frames[1]).job_id, job);
    assert_eq!(
        to_json(job_result(&frames[2]).result.as_ref().unwrap()),
        json!({"done": true})
    );
    assert_eq!(event_seqs(&frames), vec![1, 2, 3]);
    assert!(sync_with_ping(&mut sub, "end").await.is_empty());
}

async fn only_the_submitter_and_permitted_observers_may_subscribe() {
    let (server, steps) = start().await;
    let (mut owner, _) = server.hello_with("alice-token", &[]).await;
    let (job, _) = submit_pacer(&mut owner).await;

    // Bob is neither the submitter nor an observer.
    let (mut bob, wb) = subscriber(&server, "bob-token").await;
    let id = bob.send(subscribe(&job, true, None)).await;
    expect_error(&bob.recv().await, ErrorCode::PermissionDenied, Some(&id));
    let id = bob.send(subscribe("job_does_not_exist", false, None)).await;
    expect_error(&bob.recv().await, ErrorCode::JobNotFound, Some(&id));

    // Carol observes by policy.
    let (mut carol, _) = subscriber(&server, "carol-token").await;
    let id = carol.send(subscribe(&job, false, None)).await;
    let frame = carol.recv().await;
    let s = subscribed(&frame);
    assert_eq!(s.request_id, id);
    assert_eq!(s.agent, "pacer@1.0.0");
    assert_eq!(s.trace_id, TRACEPARENT);
    assert_eq!(frame.event_seq, 1);
    let id = carol
        .send(subscribe("job_does_not_exist", false, None))
        .await;
    expect_error(&carol.recv().await, ErrorCode::JobNotFound, Some(&id));

    steps.send(1).unwrap();
    steps.send(0).unwrap();
    let frames = recv_n(&mut carol, 2).await;
    assert_eq!(log_message(&frames[0]), Some("line 1"));
    job_result(&frames[1]);
    assert_eq!(event_seqs(&frames), vec![2, 3]);

    // Bob received nothing of the job.
    owner.recv_until_terminal(&job).await;
    assert!(sync_with_ping(&mut bob, "end").await.is_empty());
    assert_eq!(newest(&server, &wb.session_id).await, 0);
}

async fn by_default_another_principal_may_not_subscribe() {
    let server = TestServer::start_default().await;
    let (mut owner, _) = server.hello_with("alice-token", &["progress"]).await;
    let (job, _) = submit_and_accept(&mut owner, ticker(1000, 20)).await;
    let (mut bob, _) = server
        .hello_with("bob-token", &["subscribe", "progress"])
        .await;
    let id = bob.send(subscribe(&job, true, Some(0))).await;
    expect_error(&bob.recv().await, ErrorCode::PermissionDenied, Some(&id));
    // Alice's other session may.
    let (mut sibling, _) = server.hello_with("alice-token", &["subscribe"]).await;
    let id = sibling.send(subscribe(&job, false, None)).await;
    assert_eq!(subscribed(&sibling.recv().await).request_id, id);
    owner.send(cancel(&job)).await;
    owner.recv_until_terminal(&job).await;
}

async fn subscribing_twice_is_an_invalid_request_and_delivers_nothing_twice() {
    let (server, steps) = start().await;
    let (mut owner, _) = server.hello_with("alice-token", &[]).await;
    let (job, _) = submit_pacer(&mut owner).await;
    let (mut sub, _) = subscriber(&server, "alice-token").await;
    sub.send(subscribe(&job, false, None)).await;
    assert_eq!(subscribed(&sub.recv().await).subscribed_from, 1);
    for again in [subscribe(&job, false, None), subscribe(&job, true, Some(0))] {
        let id = sub.send(again).await;
        expect_error(&sub.recv().await, ErrorCode::InvalidRequest, Some(&id));
    }
    steps.send(1).unwrap();
    steps.send(0).unwrap();
    let frames = recv_n(&mut sub, 2).await;
    assert_eq!(event_seqs(&frames), vec![2, 3]);
    assert_eq!(log_message(&frames[0]), Some("line 1"));
    job_result(&frames[1]);
    assert!(
        sync_with_ping(&mut sub, "end").await.is_empty(),
        "nothing twice"
    );
}

async fn a_subscriber_may_not_cancel_the_job() {
    let (server, steps) = start().await;
    let (mut owner, _) = server.hello_with("alice-token", &[]).await;
    let (job, _) = submit_pacer(&mut owner).await;
    let (mut sibling, _) = subscriber(&server, "alice-token").await;
    let (mut carol, _) = subscriber(&server, "carol-token").await;
    for sub in [&mut sibling, &mut carol] {
        sub.send(subscribe(&job, false, None)).await;
        subscribed(&sub.recv().await);
        let id = sub.send(cancel(&job)).await;
        expect_error(&sub.recv().await, ErrorCode::PermissionDenied, Some(&id));
    }

    // The job was not touched: it still emits, then its submitter cancels it.
    steps.send(1).unwrap();
    for conn in [&mut owner, &mut sibling, &mut carol] {
        assert_eq!(log_message(&conn.recv().await), Some("line 1"));
    }
    owner.send(cancel(&job)).await;
    for conn in [&mut owner, &mut sibling, &mut carol] {
        conn.expect_cancelled(&job).await;
    }
}

async fn unsubscribing_stops_delivery_and_only_a_subscription_can_be_ended() {
    let (server, steps) = start().await;
    let (mut owner, _) = server.hello_with("alice-token", &[]).await;
    let (job, _) = submit_pacer(&mut owner).await;
    let (mut sub, w) = subscriber(&server, "alice-token").await;

    // Not subscribed yet; and no such job.
    let id = sub.send(unsubscribe(&job)).await;
    expect_error(&sub.recv().await, ErrorCode::InvalidRequest, Some(&id));
    let id = sub.send(unsubscribe("job_does_not_exist")).await;
    expect_error(&sub.recv().await, ErrorCode::JobNotFound, Some(&id));

    sub.send(subscribe(&job, false, None)).await;
    subscribed(&sub.recv().await);
    steps.send(1).unwrap();
    assert_eq!(log_message(&sub.recv().await), Some("line 1"));

    // Unsubscribing has no reply, and nothing of the job follows.
    sub.send(unsubscribe(&job)).await;
    assert!(sync_with_ping(&mut sub, "unsubscribed").await.is_empty());
    assert_eq!(newest(&server, &w.session_id).await, 2);
    steps.send(2).unwrap();
    steps.send(0).unwrap();
    let (frames, _) = owner.recv_until_terminal(&job).await;
    assert_eq!(frames.len(), 3, "the job went on: {frames:?}");
    assert!(sync_with_ping(&mut sub, "after").await.is_empty());
    assert_eq!(
        newest(&server, &w.session_id).await,
        2,
        "nothing logged after unsubscribing"
    );

    let id = sub.send(unsubscribe(&job)).await;
    expect_error(&sub.recv().await, ErrorCode::InvalidRequest, Some(&id));
}

/// A job held back by its own session's slow reader (flow control) must not hold back anyone
/// else: another session subscribes, gets its announcement and keeps answering, while the
/// submitter's stream sits unread.
#[tokio::test]
async fn a_job_paced_by_a_stuck_reader_does_not_stall_its_subscribers_session() {
    let server = TestServer::start_with_log_bound(50).await;
    let (mut owner, w) = server.hello_with("alice-token", &["progress"]).await;
    let (job, _) = submit_and_accept(&mut owner, ticker(60_000, 0)).await;
    // The owner reads nothing more: its job fills the transport's buffers and then waits.
    // Waits (bounded) until the log has stopped growing, well short of the job's end.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let before = newest(&server, &w.session_id).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = newest(&server, &w.session_id).await;
        if after == before && after > 1 {
            assert!(after < 60_002, "the job was not held back");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never paused"
        );
    }

    let (mut watcher, _) = server
        .hello_with("alice-token", &["subscribe", "progress"])
        .await;
    let id = watcher.send(subscribe(&job, false, None)).await;
    let announced = watcher.recv().await;
    assert_eq!(subscribed(&announced).request_id, id);
    let ping = watcher
        .send(In::SessionPing(proto::SessionPing {
            nonce: "still-here".into(),
            sent_at: String::new(),
        }))
        .await;
    let (_, pong) = watcher
        .recv_until(|f| matches!(f.payload, Some(Out::SessionPong(_))))
        .await;
    let Some(Out::SessionPong(p)) = &pong.payload else {
        unreachable!()
    };
    assert_eq!(p.ping_nonce, "still-here", "answering {ping}");
    drop(owner);
}

// Each test above on memory and on Redis stores, but for
// `a_job_paced_by_a_stuck_reader_does_not_stall_its_subscribers_session`: it waits for some
// ten thousand frames to fill the transport's buffers, which takes seconds on Redis, and what
// it tests (pacing to one session's reader) is the same whatever the store.
on_each_store!(
    subscribing_without_the_subscribe_feature_is_refused_and_the_session_survives,
    a_live_subscription_announces_the_job_then_delivers_only_later_frames,
    history_replays_the_jobs_frames_after_from_event_seq_then_live_frames_without_gap_or_duplicate,
    subscribing_to_a_finished_job_with_history_replays_it_to_its_end,
    only_the_submitter_and_permitted_observers_may_subscribe,
    by_default_another_principal_may_not_subscribe,
    subscribing_twice_is_an_invalid_request_and_delivers_nothing_twice,
    a_subscriber_may_not_cancel_the_job,
    unsubscribing_stops_delivery_and_only_a_subscription_can_be_ended,
);
