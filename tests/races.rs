//! The attachment races, each put exactly where it hurts with stores that stop a chosen call
//! (`contract::wrapped::Script`), through real servers. Two servers on the same stores are two
//! replicas of one deployment: a stream taken over on one is not stopped by the other, so it
//! goes on acting on the session until the stores refuse it.

mod common;
mod contract;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use arcp_gateway::{
    agent::AgentRegistry,
    auth::Authenticator,
    config::GatewayConfig,
    gateway::GatewayBuilder,
    ids::{Principal, SessionId},
    proto::{self, server_frame::Payload as Out},
    store::{resume::ResumeRegistry, session::SessionStore, MemoryStores, Stores},
    ErrorCode, Gateway,
};
use common::*;
use contract::wrapped::{wrap, Script};
use tokio::sync::mpsc;

const TOKEN: &str = "alice-token";
const ACK: &[&str] = &["ack"];

/// The calls that are not part of any handshake: the sweeper's, which run on their own
/// schedule, and those of a stream that already sent its welcome.
const NOT_HANDSHAKE: &[&str] = &[
    "resume.take_expired",
    "jobs.purge_finished",
    "idempotency.sweep",
    "sessions.remove",
    "logs.remove",
    "log.read_or_wait",
    "session.record_delivered",
    "session.wait_flow",
];

fn builder(config: GatewayConfig, pacer: Arc<Pacer>) -> GatewayBuilder {
    let mut agents = AgentRegistry::with_builtins();
    agents.register("pacer", "1.0.0", pacer).expect("registers");
    Gateway::builder(config)
        .auth(Authenticator::from_pairs([(
            TOKEN.to_string(),
            Principal::new("alice"),
        )]))
        .agents(agents)
}

/// A gateway on memory stores that `script` can stop, logs bounded to `max_log_frames`.
async fn scripted(config: GatewayConfig, pacer: &Arc<Pacer>, script: &Arc<Script>) -> TestServer {
    let stores = MemoryStores::new(config.max_log_frames);
    replica(config, pacer, script, stores).await
}

/// A gateway on `stores`, as `script` wraps them.
async fn replica(
    config: GatewayConfig,
    pacer: &Arc<Pacer>,
    script: &Arc<Script>,
    stores: MemoryStores,
) -> TestServer {
    let script = script.clone();
    TestServer::start_on(builder(config, pacer.clone()), stores, move |s| {
        // The sweep renews this replica's lease on every tick; those calls are not the
        // session's, and left unscripted they cannot shift the calls a test cuts at.
        let replicas = s.replicas.clone();
        Stores {
            replicas,
            ..wrap(s, script)
        }
    })
    .await
}

/// Two gateways on the same stores, as `script` wraps them, and the stores.
async fn replicas(
    config: GatewayConfig,
    pacer: &Arc<Pacer>,
    script: &Arc<Script>,
) -> (TestServer, TestServer, MemoryStores) {
    let stores = MemoryStores::new(config.max_log_frames);
    let a = replica(config.clone(), pacer, script, stores.clone()).await;
    let b = replica(config, pacer, script, stores.clone()).await;
    (a, b, stores)
}

/// A session with a running `pacer` job that has logged `lines` lines after its acceptance,
/// all received; returns the stream, the session id and its token.
async fn session_with_lines(
    server: &TestServer,
    steps: &mpsc::UnboundedSender<u64>,
    features: &[&str],
    lines: u64,
) -> (Conn, String, String) {
    let (mut conn, w) = server.hello_with(TOKEN, features).await;
    submit_and_accept(&mut conn, submit("pacer", serde_json::json!(null))).await;
    steps.send(lines).expect("the pacer runs");
    let frames = recv_n(&mut conn, lines as usize).await;
    assert_eq!(event_seqs(&frames), (2..=lines + 1).collect::<Vec<_>>());
    let token = welcome(&w).resume_token.clone();
    (conn, w.session_id, token)
}

/// Waits until no stream holds the session: its record says detached.
async fn wait_detached(stores: &MemoryStores, session: &str) {
    let record = stores
        .sessions
        .open(&SessionId::new(session))
        .await
        .expect("the session is recorded");
    contract::within("the session to detach", async {
        while record.flow().attached {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

/// Receives frames until `through` and asserts they are exactly `from..=through`, in order.
async fn expect_frames(conn: &mut Conn, from: u64, through: u64) {
    let frames = recv_n(conn, (through + 1 - from) as usize).await;
    assert_eq!(event_seqs(&frames), (from..=through).collect::<Vec<_>>());
}

/// The stream's end: a status, or the end of the stream, with no frame before it.
async fn expect_end(conn: &mut Conn) -> Option<tonic::Status> {
    match conn.try_recv().await {
        Ok(None) => None,
        Err(status) => Some(status),
        Ok(Some(frame)) => panic!("the stream went on: {frame:?}"),
    }
}

#[tokio::test]
async fn two_resumes_racing_with_one_token_get_exactly_one_welcome() {
    let (pacer, steps) = Pacer::new();
    let script = Script::new();
    let config = GatewayConfig::default();
    let (a, b, stores) = replicas(config, &pacer, &script).await;
    let (conn, session, token) = session_with_lines(&a, &steps, FEATURES, 3).await;
    drop(conn);
    wait_detached(&stores, &session).await;

    // Both resumes have checked the token and stand at the attachment lock together.
    let mut first = script.hold("session.lock_attachment");
    let mut second = script.hold("session.lock_attachment");
    let release = async {
        first.arrived().await;
        second.arrived().await;
        first.release();
        second.release();
    };
    let resume = resume_info(&session, &token, 2);
    let ((conn_a, on_a), (conn_b, on_b), ()) = tokio::join!(
        a.resume_with_hello(TOKEN, FEATURES, resume.clone()),
        b.resume_with_hello(TOKEN, FEATURES, resume),
        release,
    );
    let welcomed = [&on_a, &on_b]
        .iter()
        .filter(|f| matches!(f.payload, Some(Out::SessionWelcome(_))))
        .count();
    assert_eq!(welcomed, 1, "one token, one welcome: {on_a:?} {on_b:?}");
    let (mut winner, loser) = if matches!(on_a.payload, Some(Out::SessionWelcome(_))) {
        (conn_a, on_b)
    } else {
        (conn_b, on_a)
    };
    expect_error(&loser, ErrorCode::ResumeWindowExpired, None);
    expect_frames(&mut winner, 3, 4).await;
    steps.send(1).unwrap();
    expect_frames(&mut winner, 5, 5).await;
}

#[tokio::test]
async fn a_superseded_stream_that_keeps_acking_frees_nothing_its_successor_needs() {
    let (pacer, steps) = Pacer::new();
    let script = Script::new();
    let config = GatewayConfig::default();
    let (a, b, _) = replicas(config, &pacer, &script).await;
    // More than one read's worth, so the successor reads the log again after its first batch.
    let lines = 600;
    let (mut old, session, token) = session_with_lines(&a, &steps, ACK, lines).await;
    // The old stream's client acknowledges everything it got, and its reader is about to
    // free those frames when the session is taken over.
    let mut release = script.hold("log.release_through");
    old.send(ack(lines + 1)).await;
    release.arrived().await;
    // The new stream sends the frames its resume read, and reads the rest only once the old
    // stream's release went through.
    let mut next_read = script.hold("log.read_or_wait");
    let (mut new, first) = b
        .resume_with_hello(TOKEN, ACK, resume_info(&session, &token, 0))
        .await;
    welcome(&first);
    next_read.arrived().await;
    release.release_and_wait().await;
    next_read.release();
    // An ack the old client sends after the takeover ends its stream.
    old.send(ack(lines + 1)).await;
    assert!(
        expect_end(&mut old).await.is_some(),
        "the superseded stream ends with a status"
    );
    expect_frames(&mut new, 1, lines + 1).await;
    steps.send(2).unwrap();
    expect_frames(&mut new, lines + 2, lines + 3).await;
}

#[tokio::test]
async fn a_superseded_stream_delivers_nothing_and_records_no_delivery() {
    let (pacer, steps) = Pacer::new();
    let script = Script::new();
    let config = GatewayConfig::default();
    let (a, b, stores) = replicas(config, &pacer, &script).await;
    let (mut old, session, token) = session_with_lines(&a, &steps, ACK, 3).await;
    let (mut new, first) = b
        .resume_with_hello(TOKEN, ACK, resume_info(&session, &token, 2))
        .await;
    welcome(&first);
    expect_frames(&mut new, 3, 4).await;
    // The old stream wakes for these frames on its own replica, and must not take them.
    steps.send(5).unwrap();
    expect_frames(&mut new, 5, 9).await;
    assert!(expect_end(&mut old).await.is_some());
    let record = stores
        .sessions
        .open(&SessionId::new(session.as_str()))
        .await
        .unwrap();
    assert_eq!(
        record.flow().delivered.get(),
        9,
        "what the new stream delivered"
    );
    // So the new client may acknowledge what it got, and no more.
    new.send(ack(9)).await;
    new.send(ack(10)).await;
    let refused = new.recv().await;
    expect_error(&refused, ErrorCode::InvalidRequest, None);
}

/// A gateway whose logs keep 8 frames, with a detached session whose log is full: the
/// acceptance and 7 lines of a `pacer` job that is still running.
async fn full_detached_log() -> (
    TestServer,
    Arc<Script>,
    mpsc::UnboundedSender<u64>,
    String,
    String,
) {
    let (pacer, steps) = Pacer::new();
    let script = Script::new();
    let config = GatewayConfig {
        max_log_frames: 8,
        ..GatewayConfig::default()
    };
    let server = scripted(config, &pacer, &script).await;
    let (conn, session, token) = session_with_lines(&server, &steps, FEATURES, 7).await;
    drop(conn);
    wait_detached(&server.stores, &session).await;
    (server, script, steps, session, token)
}

#[tokio::test]
async fn frames_evicted_while_a_resume_waits_refuse_it_before_any_welcome() {
    let (server, script, steps, session, token) = full_detached_log().await;

    // The resume from 0 passes the first look at the log (frames 1..=8 are all there), then
    // the detached job evicts frames 1..=3 while the resume waits for the lock.
    let mut lock = script.hold("session.lock_attachment");
    let evict = async {
        lock.arrived().await;
        steps.send(3).unwrap();
        wait_for_log(&server, &session, 11).await;
        lock.release();
    };
    let ((_refused, first), ()) = tokio::join!(
        server.resume_with_hello(TOKEN, FEATURES, resume_info(&session, &token, 0)),
        evict,
    );
    expect_error(&first, ErrorCode::ResumeWindowExpired, None);

    // The refusal kept the token: from what is still there, the session continues exactly.
    let (mut conn, first) = server
        .resume_with_hello(TOKEN, FEATURES, resume_info(&session, &token, 3))
        .await;
    welcome(&first);
    expect_frames(&mut conn, 4, 11).await;
    steps.send(1).unwrap();
    expect_frames(&mut conn, 12, 12).await;
}

#[tokio::test]
async fn a_resume_checked_against_the_log_delivers_what_it_checked() {
    let (server, script, steps, session, token) = full_detached_log().await;

    // Between the check and the welcome the job goes on emitting: it is paced to the resuming
    // reader from the check on, so what the check found is what the client gets.
    let mut rotate = script.hold("resume.rotate");
    let emit = async {
        rotate.arrived().await;
        steps.send(3).unwrap();
        rotate.release();
    };
    let ((mut conn, first), ()) = tokio::join!(
        server.resume_with_hello(TOKEN, FEATURES, resume_info(&session, &token, 0)),
        emit,
    );
    welcome(&first);
    expect_frames(&mut conn, 1, 11).await;
}

#[tokio::test]
async fn a_stale_detach_on_another_replica_leaves_the_window_closed() {
    let (pacer, steps) = Pacer::new();
    let script = Script::new();
    let config = GatewayConfig {
        resume_window: Duration::from_millis(300),
        sweep_interval: Duration::from_millis(20),
        ..GatewayConfig::default()
    };
    let (a, b, stores) = replicas(config, &pacer, &script).await;
    let (old, session, token) = session_with_lines(&a, &steps, FEATURES, 2).await;
    let (mut new, first) = b
        .resume_with_hello(TOKEN, FEATURES, resume_info(&session, &token, 3))
        .await;
    welcome(&first);
    // The old stream's client goes away; its stream detaches on replica a.
    drop(old);
    contract::within("the old stream to detach", async {
        while !a.gateway.attachments().is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    // Its detach started no window: no deadline, however late, expires the session.
    let far = SystemTime::now() + Duration::from_secs(3600);
    assert!(stores.resume.take_expired(far).await.unwrap().is_empty());
    assert!(stores
        .sessions
        .open(&SessionId::new(session.as_str()))
        .await
        .is_ok());
    steps.send(1).unwrap();
    expect_frames(&mut new, 4, 4).await;
}

/// Where a handshake is cut: at the store call after `skip` of them, before the store acts or
/// (`after`) once it has acted but before the handshake hears back, as when a reply is lost.
#[derive(Clone, Copy, Debug)]
struct Cut {
    skip: usize,
    after: bool,
}

/// Every cut point in order, two per store call.
fn cuts() -> impl Iterator<Item = Cut> {
    (0..).flat_map(|skip| [false, true].map(|after| Cut { skip, after }))
}

/// Opens a session, or resumes `resume`, on `server`, with the handshake cut at `cut`: once
/// the call never returns, drops the client's stream, which cancels the handshake there.
/// Returns the call it was cut at, or the welcome if the handshake ended before making that
/// many calls.
async fn cut_handshake(
    server: &TestServer,
    script: &Script,
    cut: Cut,
    resume: Option<proto::ResumeInfo>,
) -> Result<&'static str, proto::ServerFrame> {
    let mut conn = server.open().await;
    let mut reached = script.hang_call(cut.skip, cut.after, NOT_HANDSHAKE);
    conn.send(hello(TOKEN, FEATURES, resume)).await;
    let cut = tokio::select! {
        op = &mut reached => Ok(op.expect("the script is alive")),
        frame = conn.recv() => {
            script.disarm();
            welcome(&frame);
            Err(frame)
        }
    };
    drop(conn);
    cut
}

/// Waits until nothing is attached and no session keeps a token that never expires, then
/// until the sweeper has removed every session: what a cut handshake must come to.
async fn wait_all_swept(server: &TestServer, cut: &str) {
    contract::within(&format!("the detach of a handshake cut at {cut}"), async {
        while server.stores.resume.attached() > 0 || !server.gateway.attachments().is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    contract::within(
        &format!("the sweep after a handshake cut at {cut}"),
        async {
            while !(server.stores.resume.is_empty()
                && server.stores.sessions.is_empty()
                && server.stores.logs.is_empty())
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        },
    )
    .await;
}

fn short_window() -> GatewayConfig {
    GatewayConfig {
        resume_window: Duration::from_millis(100),
        sweep_interval: Duration::from_millis(10),
        ..GatewayConfig::default()
    }
}

#[tokio::test]
async fn a_new_session_cut_at_any_handshake_await_is_swept() {
    let (pacer, _steps) = Pacer::new();
    let script = Script::new();
    let server = scripted(short_window(), &pacer, &script).await;
    let mut cut_at = Vec::new();
    for cut in cuts() {
        let Ok(op) = cut_handshake(&server, &script, cut, None).await else {
            break;
        };
        cut_at.push(op);
        wait_all_swept(&server, op).await;
    }
    assert_eq!(
        cut_at,
        ["resume.issue", "logs.create", "sessions.create"]
            .map(|op| [op, op])
            .concat(),
        "the handshake's calls changed; check each is covered"
    );
}

#[tokio::test]
async fn a_resume_cut_at_any_handshake_await_leaves_the_session_resumable_or_swept() {
    let (pacer, steps) = Pacer::new();
    let script = Script::new();
    let server = scripted(short_window(), &pacer, &script).await;
    let mut cut_at = Vec::new();
    for cut in cuts() {
        let (conn, session, token) = session_with_lines(&server, &steps, FEATURES, 2).await;
        steps.send(0).unwrap();
        drop(conn);
        wait_detached(&server.stores, &session).await;
        let cut = cut_handshake(
            &server,
            &script,
            cut,
            Some(resume_info(&session, &token, 1)),
        )
        .await;
        // Whatever the cut left, the session is either resumable with the client's latest
        // token, exactly, or gone with its window.
        let latest = match &cut {
            Ok(_) => token.clone(),
            Err(w) => welcome(w).resume_token.clone(),
        };
        let (mut conn, first) = server
            .resume_with_hello(TOKEN, FEATURES, resume_info(&session, &latest, 1))
            .await;
        match &first.payload {
            Some(Out::SessionWelcome(_)) => expect_frames(&mut conn, 2, 4).await,
            _ => {
                expect_error(&first, ErrorCode::ResumeWindowExpired, None);
                assert!(cut.is_ok(), "a resume that was not cut burnt the token");
            }
        }
        drop(conn);
        let Ok(op) = cut else { break };
        cut_at.push(op);
        wait_all_swept(&server, op).await;
    }
    assert_eq!(
        cut_at,
        [
            "resume.check",
            "sessions.open",
            "logs.open",
            "log.bounds",
            "session.lock_attachment",
            "resume.check",
            "session.attach",
            "log.fence",
            "log.read",
            "resume.rotate",
        ]
        .map(|op| [op, op])
        .concat(),
        "the handshake's calls changed; check each is covered"
    );
}
