//! Job listing (§6.6) through the real server: the principal's jobs in submission order with
//! their summaries, the status, agent and created_after filters, limit and cursor paging, and
//! who may see whose jobs.

mod common;

use std::{collections::HashSet, sync::Arc};

use arcp_gateway::{
    auth::Authenticator,
    config::GatewayConfig,
    engine::Observers,
    ids::Principal,
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out, ClientFrame},
    ErrorCode, Gateway,
};
use common::*;
use serde_json::json;

const LISTING: &[&str] = &["list_jobs"];

fn filter(status: &[&str], agent: &str, created_after: &str) -> Option<proto::JobFilter> {
    Some(proto::JobFilter {
        status: status.iter().map(|s| s.to_string()).collect(),
        agent: agent.into(),
        created_after: created_after.into(),
    })
}

fn list_jobs(filter: Option<proto::JobFilter>, limit: u32, cursor: &str) -> In {
    In::SessionListJobs(proto::SessionListJobs {
        filter,
        limit,
        cursor: cursor.into(),
    })
}

/// Sends `request` and asserts it is refused with `INVALID_REQUEST` answering it.
async fn list_refused(conn: &mut Conn, request: In) {
    let id = conn.send(request).await;
    let (_, frame) = conn
        .recv_until(|f| {
            matches!(
                f.payload,
                Some(Out::SessionJobs(_)) | Some(Out::SessionError(_))
            )
        })
        .await;
    let e = session_error(&frame);
    assert_eq!(e.code, ErrorCode::InvalidRequest.as_str(), "{e:?}");
    assert!(!e.retryable);
    assert_eq!(e.request_id, id);
    assert_eq!(frame.event_seq, 0);
}

fn ids(jobs: &proto::SessionJobs) -> Vec<&str> {
    jobs.jobs.iter().map(|j| j.job_id.as_str()).collect()
}

/// Runs `payload` to its terminal frame; returns the job id, the acceptance and the terminal.
async fn run(conn: &mut Conn, payload: In) -> (String, proto::ServerFrame, proto::ServerFrame) {
    let (job, accepted_frame) = submit_and_accept(conn, payload).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    (job, accepted_frame, terminal)
}

async fn echo(conn: &mut Conn, input: serde_json::Value) -> String {
    run(conn, submit("echo", input)).await.0
}

fn fs_lease() -> std::collections::HashMap<String, prost_types::ListValue> {
    [(
        "fs.read".to_string(),
        prost_types::ListValue {
            values: vec![json_value(&json!("/workspace/**"))],
        },
    )]
    .into_iter()
    .collect()
}

async fn listing_without_the_list_jobs_feature_is_refused_and_the_session_survives() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", &["progress"]).await;
    list_refused(&mut conn, list_jobs(None, 0, "")).await;
    let (_, accepted_frame, terminal) = run(&mut conn, submit("echo", json!(1))).await;
    assert_eq!(accepted_frame.event_seq, 1);
    assert_eq!(terminal.event_seq, 2);
}

async fn a_listing_holds_the_principals_jobs_in_submission_order_with_their_summaries() {
    let server = TestServer::start_default().await;
    let (mut a, _) = server.hello_with("alice-token", LISTING).await;
    let (mut b, _) = server.hello_with("alice-token", LISTING).await;
    let (mut bob, _) = server.hello_with("bob-token", LISTING).await;

    // Nothing yet.
    let empty = a.session_jobs(list_jobs(None, 0, "")).await;
    assert!(empty.jobs.is_empty());
    assert!(empty.next_cursor.is_empty());

    let (j1, acc1, end1) = run(&mut a, submit("echo", json!(1))).await;
    let (j2, _, end2) = run(&mut b, ticker(2, 0)).await;
    let bobs = echo(&mut bob, json!("bob")).await;
    a.send_frame(ClientFrame {
        id: "traced".into(),
        trace_id: TRACEPARENT.into(),
        payload: Some(In::JobSubmit(proto::JobSubmit {
            agent: "echo".into(),
            input: Some(json_value(&json!(3))),
            lease_request: fs_lease(),
            ..Default::default()
        })),
        ..Default::default()
    })
    .await;
    let acc3 = a.recv().await;
    let j3 = accepted(&acc3).job_id.clone();
    let (_, end3) = a.recv_until_terminal(&j3).await;

    // Alice sees her jobs from both of her sessions, in submission order; never bob's.
    let page = a.session_jobs(list_jobs(None, 0, "")).await;
    assert_eq!(ids(&page), vec![j1.as_str(), j2.as_str(), j3.as_str()]);
    assert!(page.next_cursor.is_empty(), "no more pages");
    assert_eq!(
        ids(&b.session_jobs(list_jobs(None, 0, "")).await),
        ids(&page),
        "the same for every session of the principal"
    );

    let s1 = &page.jobs[0];
    assert_eq!(s1.agent, "echo@1.0.0");
    assert_eq!(s1.status, "success");
    assert_eq!(s1.created_at, accepted(&acc1).accepted_at);
    assert!(s1.trace_id.is_empty());
    assert!(s1.lease.is_empty());
    assert!(s1.parent_job_id.is_empty());
    assert_eq!(s1.last_event_seq, end1.event_seq);

    let s2 = &page.jobs[1];
    assert_eq!(s2.agent, "ticker@1.0.0");
    assert_eq!(s2.status, "success");
    // Its newest frame in its own session (b), not in the listing one.
    assert_eq!(s2.last_event_seq, end2.event_seq);
    assert_eq!(
        end2.event_seq, 2,
        "accepted and result; b negotiated no progress"
    );

    let s3 = &page.jobs[2];
    assert_eq!(s3.trace_id, TRACEPARENT);
    assert_eq!(s3.created_at, accepted(&acc3).accepted_at);
    assert_eq!(s3.lease, fs_lease());
    assert_eq!(s3.last_event_seq, end3.event_seq);
    assert_eq!(end3.event_seq, 4);

    // Bob sees only his own.
    let page = bob.session_jobs(list_jobs(None, 0, "")).await;
    assert_eq!(ids(&page), vec![bobs.as_str()]);
}

async fn the_status_filter_selects_by_lifecycle_state_and_rejects_unknown_states() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", LISTING).await;

    let done = echo(&mut conn, json!("ok")).await;
    let (failed, _, end) = run(&mut conn, submit("ticker", json!({"count": "many"}))).await;
    assert_eq!(job_error(&end).final_status, "error");
    let (cancelled, _) = submit_and_accept(&mut conn, ticker(1000, 20)).await;
    conn.send(cancel(&cancelled)).await;
    let (_, end) = conn.recv_until_terminal(&cancelled).await;
    assert_eq!(job_error(&end).final_status, "cancelled");
    let (timed_out, _, end) = run(
        &mut conn,
        In::JobSubmit(proto::JobSubmit {
            agent: "ticker".into(),
            input: Some(json_value(&json!({"count": 1000, "interval_ms": 20}))),
            max_runtime_sec: 1,
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(job_error(&end).final_status, "timed_out");
    let (running, _) = submit_and_accept(&mut conn, ticker(1000, 20)).await;

    let all = [&done, &failed, &cancelled, &timed_out, &running];
    let page = conn
        .session_jobs(list_jobs(filter(&[], "", ""), 0, ""))
        .await;
    assert_eq!(
        ids(&page),
        all.iter().map(|s| s.as_str()).collect::<Vec<_>>()
    );
    let statuses: Vec<&str> = page.jobs.iter().map(|j| j.status.as_str()).collect();
    assert_eq!(
        statuses,
        vec!["success", "error", "cancelled", "timed_out", "running"]
    );

    for (status, expected) in [
        ("success", vec![&done]),
        ("error", vec![&failed]),
        ("cancelled", vec![&cancelled]),
        ("timed_out", vec![&timed_out]),
        ("running", vec![&running]),
        ("pending", vec![]),
    ] {
        let page = conn
            .session_jobs(list_jobs(filter(&[status], "", ""), 0, ""))
            .await;
        assert_eq!(
            ids(&page),
            expected.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "status {status}"
        );
        assert!(page.jobs.iter().all(|j| j.status == status));
    }
    let page = conn
        .session_jobs(list_jobs(
            filter(&["running", "success", "pending"], "", ""),
            0,
            "",
        ))
        .await;
    assert_eq!(ids(&page), vec![done.as_str(), running.as_str()]);

    for bad in ["finished", "SUCCESS", ""] {
        list_refused(&mut conn, list_jobs(filter(&[bad], "", ""), 0, "")).await;
    }
    list_refused(
        &mut conn,
        list_jobs(filter(&["running", "bogus"], "", ""), 0, ""),
    )
    .await;

    // The refusals left the session working.
    conn.send(cancel(&running)).await;
    let (_, end) = conn.recv_until_terminal(&running).await;
    assert_eq!(job_error(&end).code, "CANCELLED");
}

async fn the_agent_filter_matches_a_name_or_an_exact_version() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", LISTING).await;
    let e1 = echo(&mut conn, json!(1)).await;
    let t = run(&mut conn, ticker(1, 0)).await.0;
    let e2 = echo(&mut conn, json!(2)).await;

    for (agent, expected) in [
        ("echo", vec![&e1, &e2]),
        ("echo@1.0.0", vec![&e1, &e2]),
        ("ticker", vec![&t]),
        ("ticker@1.0.0", vec![&t]),
        ("ticker@2.0.0", vec![]),
        ("nosuch", vec![]),
    ] {
        let page = conn
            .session_jobs(list_jobs(filter(&[], agent, ""), 0, ""))
            .await;
        assert_eq!(
            ids(&page),
            expected.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "agent {agent}"
        );
    }
    // Combined with a status filter.
    let page = conn
        .session_jobs(list_jobs(filter(&["running"], "echo", ""), 0, ""))
        .await;
    assert!(page.jobs.is_empty());
    for bad in ["Echo", "echo@", "@1.0.0", "echo@1 0"] {
        list_refused(&mut conn, list_jobs(filter(&[], bad, ""), 0, "")).await;
    }
}

async fn created_after_keeps_only_jobs_created_strictly_later() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", LISTING).await;
    let mut jobs = Vec::new();
    for i in 0..3 {
        jobs.push(echo(&mut conn, json!(i)).await);
    }
    let all = conn.session_jobs(list_jobs(None, 0, "")).await;
    assert_eq!(
        ids(&all),
        jobs.iter().map(|s| s.as_str()).collect::<Vec<_>>()
    );

    for (after, expected) in [
        ("2000-01-01T00:00:00Z", jobs.len()),
        ("2000-01-01T02:00:00+02:00", jobs.len()),
        ("2999-01-01T00:00:00Z", 0),
    ] {
        let page = conn
            .session_jobs(list_jobs(filter(&[], "", after), 0, ""))
            .await;
        assert_eq!(page.jobs.len(), expected, "created_after {after}");
    }

    // Using a listed job's own created_at: only jobs created after that instant, never the
    // job itself. (The timestamps are all RFC 3339 UTC with milliseconds, so they compare as
    // strings.)
    for summary in &all.jobs {
        let after = summary.created_at.as_str();
        let expected: Vec<&str> = all
            .jobs
            .iter()
            .filter(|j| j.created_at.as_str() > after)
            .map(|j| j.job_id.as_str())
            .collect();
        let page = conn
            .session_jobs(list_jobs(filter(&[], "", after), 0, ""))
            .await;
        assert!(
            !ids(&page).contains(&summary.job_id.as_str()),
            "job {} (created_at {after}) listed as created after {after}: {:?}",
            summary.job_id,
            page.jobs
                .iter()
                .map(|j| (&j.job_id, &j.created_at))
                .collect::<Vec<_>>()
        );
        assert_eq!(ids(&page), expected, "created_after {after}");
    }

    for bad in [
        "yesterday",
        "2026-05-13",
        "2026-05-13 19:30:00",
        "1715628600",
    ] {
        list_refused(&mut conn, list_jobs(filter(&[], "", bad), 0, "")).await;
    }
}

async fn limit_and_cursor_page_through_the_jobs_until_next_cursor_is_empty() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", LISTING).await;
    let mut jobs = Vec::new();
    for i in 0..5 {
        jobs.push(echo(&mut conn, json!(i)).await);
    }
    let jobs: Vec<&str> = jobs.iter().map(|s| s.as_str()).collect();

    let p1 = conn.session_jobs(list_jobs(None, 2, "")).await;
    assert_eq!(ids(&p1), jobs[0..2]);
    assert!(!p1.next_cursor.is_empty());
    let p2 = conn.session_jobs(list_jobs(None, 2, &p1.next_cursor)).await;
    assert_eq!(ids(&p2), jobs[2..4]);
    assert!(!p2.next_cursor.is_empty());
    let p3 = conn.session_jobs(list_jobs(None, 2, &p2.next_cursor)).await;
    assert_eq!(ids(&p3), jobs[4..5]);
    assert!(p3.next_cursor.is_empty(), "the last page has no cursor");

    // Cursors are stateless positions: reusing one gives the same page.
    let again = conn.session_jobs(list_jobs(None, 2, &p1.next_cursor)).await;
    assert_eq!(ids(&again), ids(&p2));
    // A page that ends exactly at the last job has no cursor.
    let exact = conn.session_jobs(list_jobs(None, 3, &p1.next_cursor)).await;
    assert_eq!(ids(&exact), jobs[2..5]);
    assert!(exact.next_cursor.is_empty());
    // No limit: the default (100) holds them all.
    let whole = conn.session_jobs(list_jobs(None, 0, "")).await;
    assert_eq!(ids(&whole), jobs);
    assert!(whole.next_cursor.is_empty());
    // Filters apply across pages.
    let page = conn
        .session_jobs(list_jobs(
            filter(&["success"], "echo", ""),
            1,
            &p2.next_cursor,
        ))
        .await;
    assert_eq!(ids(&page), jobs[4..5]);
    assert!(page.next_cursor.is_empty());

    for garbage in ["garbage!!", "Zm9v", "bm90LWEtY3Vyc29y", "%%%"] {
        list_refused(&mut conn, list_jobs(None, 2, garbage)).await;
    }
}

async fn other_principals_jobs_are_listed_only_for_permitted_observers() {
    let gateway = Gateway::builder(GatewayConfig::default())
        .auth(Authenticator::from_pairs(
            [
                ("alice", "alice-token"),
                ("bob", "bob-token"),
                ("carol", "carol-token"),
            ]
            .map(|(p, t)| (t.to_string(), Principal::new(p))),
        ))
        .observe_policy(Arc::new(Observers(HashSet::from([Principal::new(
            "carol",
        )]))));
    let server = TestServer::start_gateway(gateway).await;
    let (mut alice, _) = server.hello_with("alice-token", LISTING).await;
    let (mut bob, _) = server.hello_with("bob-token", LISTING).await;
    let (mut carol, _) = server.hello_with("carol-token", LISTING).await;

    let a1 = echo(&mut alice, json!("a1")).await;
    let b1 = echo(&mut bob, json!("b1")).await;
    let a2 = run(&mut alice, ticker(1, 0)).await.0;

    assert_eq!(
        ids(&alice.session_jobs(list_jobs(None, 0, "")).await),
        vec![a1.as_str(), a2.as_str()]
    );
    assert_eq!(
        ids(&bob.session_jobs(list_jobs(None, 0, "")).await),
        vec![b1.as_str()]
    );
    // The observer sees everyone's jobs, in submission order, and has none of its own.
    let page = carol.session_jobs(list_jobs(None, 0, "")).await;
    assert_eq!(ids(&page), vec![a1.as_str(), b1.as_str(), a2.as_str()]);
    assert_eq!(page.jobs[1].agent, "echo@1.0.0");
    assert_eq!(page.jobs[2].agent, "ticker@1.0.0");
    assert_eq!(
        page.jobs[2].last_event_seq, 4,
        "a2's newest seq in alice's session"
    );
    // Filters and paging work the same for an observer.
    let page = carol
        .session_jobs(list_jobs(filter(&[], "echo", ""), 1, ""))
        .await;
    assert_eq!(ids(&page), vec![a1.as_str()]);
    let page = carol
        .session_jobs(list_jobs(filter(&[], "echo", ""), 1, &page.next_cursor))
        .await;
    assert_eq!(ids(&page), vec![b1.as_str()]);
    assert!(page.next_cursor.is_empty());
}

// Each test above on memory and on Redis stores.
on_each_store!(
    listing_without_the_list_jobs_feature_is_refused_and_the_session_survives,
    a_listing_holds_the_principals_jobs_in_submission_order_with_their_summaries,
    the_status_filter_selects_by_lifecycle_state_and_rejects_unknown_states,
    the_agent_filter_matches_a_name_or_an_exact_version,
    created_after_keeps_only_jobs_created_strictly_later,
    limit_and_cursor_page_through_the_jobs_until_next_cursor_is_empty,
    other_principals_jobs_are_listed_only_for_permitted_observers,
);
