//! Idempotent submission (§7.2) through the real server: a repeated key with identical
//! parameters gets the original `job.accepted` and runs nothing, conflicting parameters are
//! `DUPLICATE_KEY`, keys belong to their principal, and hold across sessions and for the
//! configured window.

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use arcp_gateway::{
    auth::Authenticator,
    config::GatewayConfig,
    credentials::CredentialProvisioner,
    ids::{JobId, Principal},
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out, ClientFrame},
    protocol::{credential::Credential, Json},
    ArcpError, ErrorCode, Gateway,
};
use common::*;
use serde_json::json;
use tokio::sync::Notify;

const FEATURES_USED: &[&str] = &["progress", "list_jobs", "provisioned_credentials"];

/// Sends `submit` in a frame with the given `id` (ids are compared across sessions here, so
/// they must differ from every other session's).
async fn send_submit(conn: &mut Conn, id: &str, submit: proto::JobSubmit) {
    conn.send_frame(ClientFrame {
        id: id.into(),
        payload: Some(In::JobSubmit(submit)),
        ..Default::default()
    })
    .await;
}

/// The next `job_accepted` (other jobs' frames are skipped), checked to answer `request_id`.
async fn acceptance(conn: &mut Conn, request_id: &str) -> proto::ServerFrame {
    let (_, frame) = conn
        .recv_until(|f| {
            matches!(
                f.payload,
                Some(Out::JobAccepted(_)) | Some(Out::SessionError(_))
            )
        })
        .await;
    let a = accepted(&frame);
    assert_eq!(a.request_id, request_id, "job_accepted answers its submit");
    assert_eq!(frame.job_id, a.job_id);
    frame
}

/// The principal's jobs, through `session.list_jobs`.
async fn listed(conn: &mut Conn) -> Vec<String> {
    let id = conn
        .send(In::SessionListJobs(proto::SessionListJobs::default()))
        .await;
    let (_, frame) = conn
        .recv_until(|f| matches!(f.payload, Some(Out::SessionJobs(_))))
        .await;
    match frame.payload {
        Some(Out::SessionJobs(jobs)) => {
            assert_eq!(jobs.request_id, id);
            jobs.jobs.into_iter().map(|j| j.job_id).collect()
        }
        _ => unreachable!(),
    }
}

fn expect_duplicate_key(frame: &proto::ServerFrame, request_id: &str) {
    let e = session_error(frame);
    assert_eq!(e.code, ErrorCode::DuplicateKey.as_str(), "{e:?}");
    assert!(!e.retryable);
    assert_eq!(e.request_id, request_id);
    assert_eq!(frame.event_seq, 0, "session errors carry no event_seq");
    assert!(frame.job_id.is_empty());
}

/// Asserts two acceptances describe the same job: §7.2's "same job.accepted payload", apart
/// from the request each one answers.
fn same_acceptance(first: &proto::ServerFrame, again: &proto::ServerFrame) {
    let (a, b) = (accepted(first), accepted(again));
    assert_eq!(b.job_id, a.job_id, "the same job");
    assert_eq!(b.accepted_at, a.accepted_at, "accepted once");
    assert_eq!(b.agent, a.agent);
    assert_eq!(b.lease, a.lease);
    assert_eq!(b.trace_id, a.trace_id);
    assert_ne!(b.request_id, a.request_id);
}

#[tokio::test]
async fn a_repeated_submission_gets_the_same_acceptance_and_runs_no_second_job() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello_with("alice-token", FEATURES_USED).await;
    let mut submit = keyed("ticker", json!({"count": 3, "interval_ms": 30}), "k-1");
    submit.max_runtime_sec = 60;
    submit.lease_request = HashMap::from([(
        "fs.read".to_string(),
        prost_types::ListValue {
            values: vec![json_value(&json!("/workspace/**"))],
        },
    )]);

    send_submit(&mut conn, "first", submit.clone()).await;
    let first = acceptance(&mut conn, "first").await;
    assert_eq!(first.event_seq, 1);
    let job = first.job_id.clone();
    send_submit(&mut conn, "second", submit.clone()).await;
    let second = acceptance(&mut conn, "second").await;
    same_acceptance(&first, &second);
    assert!(
        second.event_seq > first.event_seq,
        "logged like any job frame"
    );

    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    let ticks: Vec<f64> = frames.iter().filter_map(progress_current).collect();
    assert_eq!(ticks, vec![1.0, 2.0, 3.0], "one run of the job: {frames:?}");
    assert!(frames.iter().all(|f| f.job_id == job));
    assert_eq!(result_json(&terminal), json!({"ticks": 3}));

    // After the job ended: still the same acceptance, and still nothing runs.
    send_submit(&mut conn, "third", submit).await;
    let third = acceptance(&mut conn, "third").await;
    same_acceptance(&first, &third);
    assert_eq!(third.event_seq, terminal.event_seq + 1);
    assert_eq!(listed(&mut conn).await, vec![job.clone()]);
    assert_eq!(newest(&server, &w.session_id).await, third.event_seq);
}

#[tokio::test]
async fn a_reused_key_with_different_parameters_is_duplicate_key() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES_USED).await;
    let original = keyed("echo", json!({"x": 1}), "k-dup");
    send_submit(&mut conn, "original", original.clone()).await;
    let first = acceptance(&mut conn, "original").await;
    let job = first.job_id.clone();
    conn.recv_until_terminal(&job).await;

    let lease = HashMap::from([(
        "fs.read".to_string(),
        prost_types::ListValue {
            values: vec![json_value(&json!("/tmp/**"))],
        },
    )]);
    let variants = [
        ("other-input", keyed("echo", json!({"x": 2}), "k-dup")),
        (
            "more-input",
            keyed("echo", json!({"x": 1, "y": 1}), "k-dup"),
        ),
        ("other-agent", keyed("ticker", json!({"x": 1}), "k-dup")),
        (
            "other-lease",
            proto::JobSubmit {
                lease_request: lease,
                ..original.clone()
            },
        ),
        (
            "other-runtime",
            proto::JobSubmit {
                max_runtime_sec: 30,
                ..original.clone()
            },
        ),
    ];
    for (id, submit) in variants {
        send_submit(&mut conn, id, submit).await;
        expect_duplicate_key(&conn.recv().await, id);
    }

    // The key still names the original job, and nothing else ever ran.
    send_submit(&mut conn, "original-again", original).await;
    same_acceptance(&first, &acceptance(&mut conn, "original-again").await);
    assert_eq!(listed(&mut conn).await, vec![job]);
}

#[tokio::test]
async fn keys_belong_to_their_principal() {
    let server = TestServer::start_default().await;
    let (mut alice, _) = server.hello_with("alice-token", FEATURES_USED).await;
    let (mut bob, _) = server.hello_with("bob-token", FEATURES_USED).await;

    send_submit(&mut alice, "alice-1", keyed("echo", json!("a"), "shared")).await;
    let a = acceptance(&mut alice, "alice-1").await;
    // Bob's use of the same key, with other parameters, is no conflict: it is his own key.
    send_submit(&mut bob, "bob-1", keyed("echo", json!("b"), "shared")).await;
    let b = acceptance(&mut bob, "bob-1").await;
    assert_ne!(b.job_id, a.job_id, "bob gets his own job");
    let (_, result) = bob.recv_until_terminal(&b.job_id).await;
    assert_eq!(result_json(&result), json!("b"));
    // Even with alice's exact parameters, bob's key names bob's job: DUPLICATE_KEY for him.
    send_submit(&mut bob, "bob-2", keyed("echo", json!("a"), "shared")).await;
    expect_duplicate_key(&bob.recv().await, "bob-2");
    send_submit(&mut bob, "bob-3", keyed("echo", json!("b"), "shared")).await;
    same_acceptance(&b, &acceptance(&mut bob, "bob-3").await);

    // Alice's key is untouched.
    send_submit(&mut alice, "alice-2", keyed("echo", json!("a"), "shared")).await;
    same_acceptance(&a, &acceptance(&mut alice, "alice-2").await);
    assert_eq!(listed(&mut alice).await, vec![a.job_id.clone()]);
    assert_eq!(listed(&mut bob).await, vec![b.job_id.clone()]);
}

#[tokio::test]
async fn another_session_of_the_principal_gets_the_same_job_back() {
    let server = TestServer::start_default().await;
    let (mut first_session, _) = server.hello_with("alice-token", FEATURES_USED).await;
    let (mut second_session, w2) = server.hello_with("alice-token", FEATURES_USED).await;
    let submit = keyed("ticker", json!({"count": 3, "interval_ms": 30}), "k-cross");

    send_submit(&mut first_session, "from-first", submit.clone()).await;
    let first = acceptance(&mut first_session, "from-first").await;
    send_submit(&mut second_session, "from-second", submit).await;
    let second = acceptance(&mut second_session, "from-second").await;
    same_acceptance(&first, &second);
    assert_eq!(second.session_id, w2.session_id);
    assert_eq!(second.event_seq, 1, "in the second session's own sequence");

    // The job runs once, in the session that submitted it.
    let job = first.job_id.clone();
    let (frames, _) = first_session.recv_until_terminal(&job).await;
    let ticks: Vec<f64> = frames.iter().filter_map(progress_current).collect();
    assert_eq!(ticks, vec![1.0, 2.0, 3.0]);
    assert_eq!(listed(&mut second_session).await, vec![job]);
}

/// §7.2 and `GatewayConfig::idempotency_window`: a key names its job for the whole window,
/// also after the finished job was forgotten by the sweep (which happens one resume window
/// after it ended).
#[tokio::test]
async fn a_key_keeps_naming_its_job_for_the_idempotency_window_after_the_job_is_swept() {
    let config = GatewayConfig {
        resume_window: Duration::from_secs(1),
        sweep_interval: Duration::from_millis(50),
        ..GatewayConfig::default()
    };
    assert!(config.idempotency_window >= Duration::from_secs(3600));
    let server = TestServer::start(config, &[("alice-token", "alice")]).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES_USED).await;
    let submit = keyed("echo", json!({"charge": "once"}), "k-window");
    send_submit(&mut conn, "first", submit.clone()).await;
    let first = acceptance(&mut conn, "first").await;
    conn.recv_until_terminal(&first.job_id).await;

    // Wait (bounded) until the sweep forgot the finished job.
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while !listed(&mut conn).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job was never swept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    send_submit(&mut conn, "retry", submit).await;
    let retry = acceptance(&mut conn, "retry").await;
    assert_eq!(
        accepted(&retry).job_id,
        accepted(&first).job_id,
        "the retry within the idempotency window ran the job a second time"
    );
}

/// A credential upstream that is slow for the first job it is asked about: it holds that call
/// until a second call arrives (or a bound passes), the way a network round trip would.
struct SlowFirstIssue {
    calls: AtomicUsize,
    entered: Notify,
    second: Notify,
}

#[async_trait::async_trait]
impl CredentialProvisioner for SlowFirstIssue {
    async fn issue(
        &self,
        job: &JobId,
        constraints: serde_json::Map<String, Json>,
    ) -> Result<Credential, ArcpError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.entered.notify_one();
            // Released by the second call; the bound keeps a runtime that serialises keyed
            // submissions from waiting on a call that never comes.
            let _ = tokio::time::timeout(Duration::from_millis(500), self.second.notified()).await;
        } else {
            self.second.notify_one();
        }
        Ok(Credential {
            id: format!("cred_{job}"),
            scheme: "bearer".into(),
            value: "sk-test".into(),
            endpoint: "https://upstream.invalid/".into(),
            profile: None,
            constraints,
        })
    }

    async fn rotate(&self, id: &str) -> Result<Credential, ArcpError> {
        Err(ArcpError::InvalidRequest(format!(
            "{id} is not rotated here"
        )))
    }

    async fn revoke(&self, _id: &str) -> Result<(), ArcpError> {
        Ok(())
    }
}

/// Two sessions of one principal submit the same keyed job at nearly the same time (a client
/// retrying on a fresh connection while the first attempt is still being accepted): one job,
/// and both get its acceptance.
#[tokio::test]
async fn a_keyed_submission_racing_its_own_first_acceptance_gets_the_same_job() {
    let upstream = Arc::new(SlowFirstIssue {
        calls: AtomicUsize::new(0),
        entered: Notify::new(),
        second: Notify::new(),
    });
    // Plaintext on loopback: credentials only because the configuration allows them there.
    let config = GatewayConfig {
        allow_plaintext_credentials: true,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::builder(config)
        .auth(Authenticator::from_pairs([(
            "alice-token".to_string(),
            Principal::new("alice"),
        )]))
        .credential_provisioner(upstream.clone());
    let server = TestServer::start_gateway(gateway).await;
    let (mut first_session, _) = server.hello_with("alice-token", FEATURES_USED).await;
    let (mut retry_session, _) = server.hello_with("alice-token", FEATURES_USED).await;
    let submit = keyed("echo", json!({"pay": 100}), "k-race");

    send_submit(&mut first_session, "attempt-1", submit.clone()).await;
    // The first attempt holds its key and is being accepted.
    tokio::time::timeout(FRAME_TIMEOUT, upstream.entered.notified())
        .await
        .expect("the first attempt reached acceptance");
    send_submit(&mut retry_session, "attempt-2", submit).await;

    let first = acceptance(&mut first_session, "attempt-1").await;
    let retry = acceptance(&mut retry_session, "attempt-2").await;
    assert_eq!(
        accepted(&retry).job_id,
        accepted(&first).job_id,
        "two jobs ran for one idempotency_key"
    );
    assert_eq!(listed(&mut first_session).await.len(), 1);
}
