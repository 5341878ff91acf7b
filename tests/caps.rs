//! Jobs end when nobody can receive them, and the caps of §14, through the real server: a job
//! of an expired session is cancelled and the session's subscriptions dropped; every job has a
//! runtime bound, and a ceiling on the one it may ask for; sessions per principal, running jobs
//! per session and per principal, and subscriptions per session are capped. Each cap refuses
//! the request over it with `PERMISSION_DENIED` naming the cap and its value, leaves the
//! session usable, and admits again once a slot frees.

mod common;
mod contract;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};

use arcp_gateway::{
    auth::Authenticator,
    config::GatewayConfig,
    error::ArcpError,
    ids::{Epoch, JobId, Principal, ReplicaId, SessionId},
    proto::{self, client_frame::Payload as In, job_event::Body, server_frame::Payload as Out},
    protocol::job_frame::{FinalStatus, JobStatus},
    store::{
        jobs::{Holdings, JobDirectory},
        session::{NewSession, SessionRecord, SessionStore},
        MemoryStores, Stores,
    },
    ErrorCode, Gateway,
};
use async_trait::async_trait;
use common::*;
use contract::wrapped::{wrap, Script};
use parking_lot::Mutex;
use serde_json::json;

const ALICE: &str = "alice-token";
const BOB: &str = "bob-token";
const SUBSCRIBE: &[&str] = &["subscribe"];

/// A job that runs until it is stopped: its first tick is a day away.
fn forever() -> In {
    ticker(10, 86_400_000)
}

/// A gateway for alice and bob with `config`.
async fn start(config: GatewayConfig) -> TestServer {
    TestServer::start(config, &[(ALICE, "alice"), (BOB, "bob")]).await
}

/// [`start`], on stores the returned script can stop a call of.
async fn scripted(config: GatewayConfig) -> (TestServer, Arc<Script>) {
    let script = Script::new();
    let auth = Authenticator::from_pairs(
        [(ALICE, "alice"), (BOB, "bob")].map(|(t, p)| (t.to_string(), Principal::new(p))),
    );
    let stores = MemoryStores::new(config.max_log_frames);
    let wrapper = script.clone();
    let server = TestServer::start_on(Gateway::builder(config).auth(auth), stores, move |s| {
        wrap(s, wrapper)
    })
    .await;
    (server, script)
}

/// Asserts `frame` refuses the request `request_id` for being over `setting`, whose value
/// `cap` it names.
fn expect_over_cap(
    frame: &proto::ServerFrame,
    request_id: Option<&str>,
    setting: &str,
    cap: usize,
) {
    let e = expect_error(frame, ErrorCode::PermissionDenied, request_id);
    assert!(
        e.message.contains(&format!("{setting} = {cap}")),
        "the refusal names the cap and its value: {e:?}"
    );
}

/// Asserts the session still answers: a ping gets its pong, with nothing before it.
async fn expect_usable(conn: &mut Conn, nonce: &str) {
    let before = sync_with_ping(conn, nonce).await;
    assert!(before.is_empty(), "nothing but the pong: {before:?}");
}

/// The job as the gateway's directory has it now.
async fn status(server: &TestServer, job: &str) -> JobStatus {
    let entry = server.stores.jobs.get(&JobId::new(job)).await;
    entry
        .expect("the directory answers")
        .expect("the job is listed")
        .status
}

// ---------------------------------------------------------------------------------------------
// Sessions per principal
// ---------------------------------------------------------------------------------------------

/// Two replicas on the same stores, their resume windows a minute and 50 ms: a session
/// detached from the first stays counted while its window runs; resumed on the second and
/// detached again, it expires at once.
async fn two_windows(max_sessions_per_principal: usize) -> (TestServer, TestServer) {
    let stores = MemoryStores::new(GatewayConfig::default().max_log_frames);
    let replica = |resume_window| {
        let config = GatewayConfig {
            max_sessions_per_principal,
            resume_window,
            sweep_interval: Duration::from_millis(10),
            ..GatewayConfig::default()
        };
        let auth = Authenticator::from_pairs(
            [(ALICE, "alice"), (BOB, "bob")].map(|(t, p)| (t.to_string(), Principal::new(p))),
        );
        TestServer::start_on(Gateway::builder(config).auth(auth), stores.clone(), |s| s)
    };
    let long = replica(Duration::from_secs(60)).await;
    let short = replica(Duration::from_millis(50)).await;
    (long, short)
}

#[tokio::test]
async fn sessions_over_the_principal_cap_are_refused_until_one_expires() {
    let (long, short) = two_windows(2).await;
    let (mut first, w) = long.hello(ALICE).await;
    let (first_id, first_token) = (w.session_id.clone(), welcome(&w).resume_token.clone());
    let (mut second, _) = long.hello(ALICE).await;

    // Over gRPC and over WebSocket alike, on either replica.
    let mut refused = short.open().await;
    refused.send(hello(ALICE, FEATURES, None)).await;
    expect_over_cap(
        &refused.recv().await,
        Some("c1"),
        "max_sessions_per_principal",
        2,
    );
    assert!(refused.try_recv().await.expect("the stream ends").is_none());
    let mut ws = long.ws().await;
    ws.send("session.hello", ws_hello_payload(ALICE, &[])).await;
    let frame = ws.recv().await;
    assert_eq!(frame["type"], "session.error", "{frame}");
    assert_eq!(frame["payload"]["code"], "PERMISSION_DENIED", "{frame}");
    let message = frame["payload"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("max_sessions_per_principal = 2"),
        "{frame}"
    );
    // A refused hello holds nothing; the sessions there are stay usable; bob has slots.
    let stores = &long.stores;
    assert_eq!(
        (
            stores.sessions.len(),
            stores.resume.len(),
            stores.logs.len()
        ),
        (2, 2, 2)
    );
    expect_usable(&mut first, "p1").await;
    expect_usable(&mut second, "p2").await;
    let (_bob, _) = long.hello(BOB).await;

    // Detached, the session keeps its slot while it can be resumed.
    drop(first);
    eventually("the first session to detach", || async {
        stores.resume.attached() == 2
    })
    .await;
    let mut refused = long.open().await;
    refused.send(hello(ALICE, FEATURES, None)).await;
    expect_over_cap(
        &refused.recv().await,
        Some("c1"),
        "max_sessions_per_principal",
        2,
    );

    // Resumed on the short-window replica and dropped, it expires, and its slot frees.
    let (resumed, w) = short
        .resume_with_hello(ALICE, FEATURES, resume_info(&first_id, &first_token, 0))
        .await;
    welcome(&w);
    drop(resumed);
    eventually("the first session to expire", || async {
        stores.sessions.len() == 2
    })
    .await;
    let (mut third, _) = long.hello(ALICE).await;
    expect_usable(&mut third, "p3").await;
}

#[tokio::test]
async fn hellos_racing_on_two_replicas_for_the_last_slot_get_one_session() {
    let stores = MemoryStores::new(GatewayConfig::default().max_log_frames);
    let config = GatewayConfig {
        max_sessions_per_principal: 1,
        ..GatewayConfig::default()
    };
    // Open authentication: each token names its own principal, a fresh one every round.
    let a = TestServer::start_on(Gateway::builder(config.clone()), stores.clone(), |s| s).await;
    let b = TestServer::start_on(Gateway::builder(config), stores.clone(), |s| s).await;
    for round in 0..8 {
        let principal = format!("racer-{round}");
        let (mut x, mut y) = tokio::join!(a.open(), b.open());
        tokio::join!(
            x.send(hello(&principal, FEATURES, None)),
            y.send(hello(&principal, FEATURES, None))
        );
        let (fx, fy) = tokio::join!(x.recv(), y.recv());
        let welcomed = [&fx, &fy]
            .iter()
            .filter(|f| matches!(f.payload, Some(Out::SessionWelcome(_))))
            .count();
        assert_eq!(welcomed, 1, "round {round}: {fx:?} {fy:?}");
        let refusal = if welcomed == 1 && matches!(fx.payload, Some(Out::SessionWelcome(_))) {
            fy
        } else {
            fx
        };
        expect_over_cap(&refusal, Some("c1"), "max_sessions_per_principal", 1);
    }
    assert_eq!(stores.sessions.len(), 8);
}

/// A session store whose first create records the session and then fails, as a shared store
/// does when its answer is lost after it ran the change (`recorded` is that session), and
/// whose first `removes_failing` removals fail without removing.
struct FailsAfterCreating {
    inner: Arc<dyn SessionStore>,
    recorded: Arc<Mutex<Option<SessionId>>>,
    removes_failing: AtomicUsize,
}

impl FailsAfterCreating {
    /// `stores` with their session store so wrapped.
    fn wrap(
        stores: Stores,
        recorded: Arc<Mutex<Option<SessionId>>>,
        removes_failing: usize,
    ) -> Stores {
        let sessions = Arc::new(FailsAfterCreating {
            inner: stores.sessions.clone(),
            recorded,
            removes_failing: AtomicUsize::new(removes_failing),
        });
        Stores { sessions, ..stores }
    }
}

#[async_trait]
impl SessionStore for FailsAfterCreating {
    async fn create(&self, session: NewSession) -> Result<Arc<dyn SessionRecord>, ArcpError> {
        let record = self.inner.create(session).await?;
        let mut recorded = self.recorded.lock();
        if recorded.is_some() {
            return Ok(record);
        }
        *recorded = Some(record.id().clone());
        Err(ArcpError::Internal(
            "the session store's answer was lost".into(),
        ))
    }

    async fn open(&self, id: &SessionId) -> Result<Arc<dyn SessionRecord>, ArcpError> {
        self.inner.open(id).await
    }

    async fn remove(&self, id: &SessionId) -> Result<(), ArcpError> {
        let failing = self
            .removes_failing
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(ArcpError::Internal("the session store is away".into()));
        }
        self.inner.remove(id).await
    }

    async fn attached_on(&self, replica: &ReplicaId) -> Result<Vec<(SessionId, Epoch)>, ArcpError> {
        self.inner.attached_on(replica).await
    }

    async fn forget_attached_on(&self, replica: &ReplicaId) -> Result<(), ArcpError> {
        self.inner.forget_attached_on(replica).await
    }
}

/// Starts a gateway for alice alone, with one session allowed her, on stores whose session
/// store is [`FailsAfterCreating`]; refuses her first hello and returns the session the store
/// recorded for it.
async fn refused_after_creating(
    config: GatewayConfig,
    removes_failing: usize,
) -> (TestServer, SessionId) {
    let config = GatewayConfig {
        max_sessions_per_principal: 1,
        ..config
    };
    let auth = Authenticator::from_pairs([(ALICE.to_string(), Principal::new("alice"))]);
    let recorded = Arc::new(Mutex::new(None));
    let into = recorded.clone();
    let server = TestServer::start_wrapped(Gateway::builder(config).auth(auth), move |s| {
        FailsAfterCreating::wrap(s, into, removes_failing)
    })
    .await;
    let mut refused = server.open().await;
    refused.send(hello(ALICE, FEATURES, None)).await;
    expect_error(&refused.recv().await, ErrorCode::InternalError, Some("c1"));
    let id = recorded
        .lock()
        .clone()
        .expect("the store recorded a session");
    (server, id)
}

/// A hello whose session the store recorded but failed to confirm is refused, and leaves
/// nothing behind: no record holding its principal's only slot (there is no resume entry by
/// which the sweep could find it), no log.
async fn a_session_recorded_by_a_create_that_failed_holds_no_slot() {
    let (server, id) = refused_after_creating(GatewayConfig::default(), 0).await;
    let stores = server.gateway.stores();
    assert!(
        stores.sessions.open(&id).await.is_err(),
        "its record is gone"
    );
    assert!(stores.logs.open(&id).await.is_err(), "its log is gone");
    let (mut conn, _) = server.hello(ALICE).await;
    expect_usable(&mut conn, "p1").await;
}

/// If that record cannot be removed at once either, its resume entry stays for the sweep,
/// which removes the record when the window closes and frees the slot.
async fn a_recorded_session_that_could_not_be_removed_is_swept() {
    let config = GatewayConfig {
        resume_window: Duration::from_millis(300),
        sweep_interval: Duration::from_millis(20),
        ..GatewayConfig::default()
    };
    let (server, id) = refused_after_creating(config, 1).await;
    let stores = server.gateway.stores();
    eventually("the sweep to remove the record", || async {
        stores.sessions.open(&id).await.is_err()
    })
    .await;
    assert!(stores.logs.open(&id).await.is_err(), "its log is gone");
    let (mut conn, _) = server.hello(ALICE).await;
    expect_usable(&mut conn, "p1").await;
}

// ---------------------------------------------------------------------------------------------
// Running jobs per session and per principal
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn jobs_over_the_session_cap_are_refused_until_one_ends() {
    let (server, script) = scripted(GatewayConfig {
        max_jobs_per_session: 2,
        ..GatewayConfig::default()
    })
    .await;
    let (mut conn, w) = server.hello(ALICE).await;
    let (first, _) = submit_and_accept(&mut conn, forever()).await;
    submit_and_accept(&mut conn, forever()).await;
    let id = conn.send(forever()).await;
    expect_over_cap(&conn.recv().await, Some(&id), "max_jobs_per_session", 2);
    // The session goes on, and the refused job left nothing behind.
    expect_usable(&mut conn, "p1").await;
    let held = server
        .stores
        .jobs
        .held_by(&SessionId::new(w.session_id.as_str()))
        .await;
    assert_eq!(held.expect("the directory answers").running.len(), 2);
    // Another session of the same principal has its own slots.
    let (mut other, _) = server.hello(ALICE).await;
    submit_and_accept(&mut other, forever()).await;

    // A job that ends frees its slot by the time its end reaches the client, even while the
    // directory has not yet recorded the end.
    let mut recording = script.hold("jobs.finish");
    conn.send(cancel(&first)).await;
    conn.expect_cancelled(&first).await;
    recording.arrived().await;
    let (echo, _) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    recording.release();
    conn.recv_until_terminal(&echo).await;
    submit_and_accept(&mut conn, submit("echo", json!(2))).await;
}

#[tokio::test]
async fn jobs_over_the_principal_cap_are_refused_in_every_session_of_it() {
    let (server, script) = scripted(GatewayConfig {
        max_jobs_per_principal: 2,
        ..GatewayConfig::default()
    })
    .await;
    let (mut one, _) = server.hello(ALICE).await;
    let (mut two, _) = server.hello(ALICE).await;
    let (first, _) = submit_and_accept(&mut one, forever()).await;
    submit_and_accept(&mut two, forever()).await;
    for conn in [&mut one, &mut two] {
        let id = conn.send(forever()).await;
        expect_over_cap(&conn.recv().await, Some(&id), "max_jobs_per_principal", 2);
        expect_usable(conn, "p").await;
    }
    // Another principal is counted apart.
    let (mut bob, _) = server.hello(BOB).await;
    submit_and_accept(&mut bob, forever()).await;

    let mut recording = script.hold("jobs.finish");
    one.send(cancel(&first)).await;
    one.expect_cancelled(&first).await;
    recording.arrived().await;
    submit_and_accept(&mut two, forever()).await;
    recording.release();
}

#[tokio::test]
async fn a_delegated_child_over_the_cap_is_refused_before_it_is_announced() {
    let server = start(GatewayConfig {
        max_jobs_per_session: 1,
        ..GatewayConfig::default()
    })
    .await;
    let (mut conn, _) = server.hello(ALICE).await;
    let delegate = submit_leased(
        "delegator",
        json!({"agent": "echo", "input": 7, "lease": {}}),
        lease(&[("agent.delegate", &["echo"])]),
    );
    let (parent, _) = submit_and_accept(&mut conn, delegate).await;
    let (frames, terminal) = conn.recv_until_terminal(&parent).await;
    let e = job_error(&terminal);
    assert_eq!(e.code, "PERMISSION_DENIED", "{e:?}");
    assert!(e.message.contains("max_jobs_per_session = 1"), "{e:?}");
    assert!(
        !frames.iter().any(|f| matches!(
            &f.payload,
            Some(Out::JobEvent(proto::JobEvent {
                body: Some(Body::Delegate(_)),
                ..
            }))
        )),
        "no delegate event announces a child that never ran: {frames:?}"
    );
    assert!(frames.iter().all(|f| f.job_id == parent), "{frames:?}");
    // The parent's end freed its slot.
    let (job, _) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    conn.recv_until_terminal(&job).await;
}

// ---------------------------------------------------------------------------------------------
// Subscriptions per session
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn subscriptions_over_the_cap_are_refused_until_one_ends() {
    let (server, script) = scripted(GatewayConfig {
        max_subscriptions_per_session: 1,
        ..GatewayConfig::default()
    })
    .await;
    let (mut owner, _) = server.hello(ALICE).await;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        jobs.push(submit_and_accept(&mut owner, forever()).await.0);
    }
    let (mut watcher, _) = server.hello_with(ALICE, SUBSCRIBE).await;
    watcher.send(subscribe(&jobs[0], false, None)).await;
    subscribed(&watcher.recv().await);
    let id = watcher.send(subscribe(&jobs[1], false, None)).await;
    expect_over_cap(
        &watcher.recv().await,
        Some(&id),
        "max_subscriptions_per_session",
        1,
    );
    expect_usable(&mut watcher, "p1").await;
    // Subscribing to its own jobs takes no slot: the session receives them anyway.
    let (own, _) = submit_and_accept(&mut watcher, forever()).await;
    watcher.send(subscribe(&own, false, None)).await;
    subscribed(&watcher.recv().await);

    // Unsubscribing frees the slot.
    watcher.send(unsubscribe(&jobs[0])).await;
    expect_usable(&mut watcher, "p2").await;
    watcher.send(subscribe(&jobs[1], false, None)).await;
    subscribed(&watcher.recv().await);

    // So does the end of the job, by the time the subscriber receives it, even while the
    // directory has not yet recorded the end.
    let mut recording = script.hold("jobs.finish");
    owner.send(cancel(&jobs[1])).await;
    watcher.expect_cancelled(&jobs[1]).await;
    recording.arrived().await;
    watcher.send(subscribe(&jobs[2], false, None)).await;
    subscribed(&watcher.recv().await);
    recording.release();
}

// ---------------------------------------------------------------------------------------------
// Jobs of an expired session
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_expired_sessions_jobs_are_cancelled_and_its_subscriptions_dropped() {
    let server = start(GatewayConfig {
        resume_window: Duration::from_millis(100),
        sweep_interval: Duration::from_millis(10),
        ..GatewayConfig::default()
    })
    .await;
    let (mut gone, w) = server.hello_with(ALICE, SUBSCRIBE).await;
    let gone_id = SessionId::new(w.session_id.as_str());
    let (orphan, _) = submit_and_accept(&mut gone, forever()).await;
    let (mut watcher, _) = server.hello_with(ALICE, SUBSCRIBE).await;
    let (watched, _) = submit_and_accept(&mut watcher, forever()).await;
    gone.send(subscribe(&watched, false, None)).await;
    subscribed(&gone.recv().await);
    watcher.send(subscribe(&orphan, false, None)).await;
    subscribed(&watcher.recv().await);
    let held = server.stores.jobs.held_by(&gone_id).await.expect("answers");
    assert_eq!(
        held,
        Holdings {
            running: vec![JobId::new(orphan.as_str())],
            subscriptions: vec![JobId::new(watched.as_str())],
        }
    );

    drop(gone);
    // The subscriber sees the orphan cancelled, saying why.
    let (before, terminal) = watcher.recv_until_terminal(&orphan).await;
    let reason = before
        .iter()
        .find_map(|f| match &f.payload {
            Some(Out::JobCancelled(c)) if f.job_id == orphan => Some(c.reason.clone()),
            _ => None,
        })
        .expect("job_cancelled precedes the terminal error");
    assert!(reason.contains("expired"), "{reason}");
    assert_eq!(job_error(&terminal).code, "CANCELLED");
    assert_eq!(
        status(&server, &orphan).await,
        JobStatus::Finished(FinalStatus::Cancelled)
    );
    // The expired session's subscription is gone; the job it watched runs on.
    eventually("the expired session to be removed", || async {
        server.session_count() == 1
    })
    .await;
    let held = server.stores.jobs.held_by(&gone_id).await.expect("answers");
    assert_eq!(held, Holdings::default());
    assert_eq!(status(&server, &watched).await, JobStatus::Running);
    expect_usable(&mut watcher, "p1").await;
}

// ---------------------------------------------------------------------------------------------
// Runtime bounds
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_default_max_runtime_ends_a_job_that_named_none_with_timeout() {
    let server = start(GatewayConfig {
        default_max_runtime: Duration::from_millis(200),
        ..GatewayConfig::default()
    })
    .await;
    let (mut conn, _) = server.hello(ALICE).await;
    let (job, _) = submit_and_accept(&mut conn, forever()).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    let e = job_error(&terminal);
    assert_eq!(e.code, "TIMEOUT", "{e:?}");
    assert_eq!(e.final_status, "timed_out", "{e:?}");
    assert!(e.message.contains("default"), "{e:?}");
    assert_eq!(
        status(&server, &job).await,
        JobStatus::Finished(FinalStatus::TimedOut)
    );
}

#[tokio::test]
async fn a_max_runtime_over_the_ceiling_is_refused_and_one_at_it_accepted() {
    let server = start(GatewayConfig {
        max_runtime_ceiling: Duration::from_secs(60),
        ..GatewayConfig::default()
    })
    .await;
    let (mut conn, _) = server.hello(ALICE).await;
    let asking = |secs| {
        In::JobSubmit(proto::JobSubmit {
            max_runtime_sec: secs,
            ..leased_submit("echo", json!(1), Default::default(), None)
        })
    };
    let id = conn.send(asking(61)).await;
    let refusal = conn.recv().await;
    let e = expect_error(&refusal, ErrorCode::InvalidRequest, Some(&id));
    assert!(
        e.message.contains("max_runtime_ceiling") && e.message.contains("60"),
        "the refusal names the ceiling and its value: {e:?}"
    );
    expect_usable(&mut conn, "p1").await;
    let (job, _) = submit_and_accept(&mut conn, asking(60)).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(result_json(&terminal), json!(1));
}

// On memory and on Redis stores.
on_each_store!(
    a_session_recorded_by_a_create_that_failed_holds_no_slot,
    a_recorded_session_that_could_not_be_removed_is_swept,
);
