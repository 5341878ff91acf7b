//! Authentication that a hostile client cannot hammer, through the real server: `auth.scheme`
//! must be `bearer`; failed bearer tokens (in `session.hello`, gRPC metadata or the WebSocket
//! upgrade) and failed resume tokens are counted per peer address and per principal, and past
//! the limit each failure gets the same error as before, only later, while right credentials
//! are served at once; every failure is audit-logged without the token.
//!
//! Every test acts as one or more peers on 127.0.0.0/8 and watches the server's own decision
//! (the throttle's counters), not the clock, except for lower bounds on a delay it imposed.

mod common;

use std::{
    io::Write,
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use arcp_gateway::{
    config::GatewayConfig,
    proto::{self, client_frame::Payload as In},
    ErrorCode,
};
use common::*;
use tokio::time::Instant;

/// How long a failure over the limit waits: long enough that a right credential presented
/// meanwhile is answered well before it.
const DELAY: Duration = Duration::from_secs(2);

async fn start(limit: u32) -> TestServer {
    let config = GatewayConfig {
        auth_failure_limit: limit,
        auth_failure_window: Duration::from_secs(600),
        auth_failure_delay: DELAY,
        ..GatewayConfig::default()
    };
    TestServer::start(config, &[("alice-token", "alice"), ("bob-token", "bob")]).await
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A hello as `token` with `auth.scheme` `scheme`.
fn hello_with_scheme(token: &str, scheme: &str) -> In {
    match hello(token, FEATURES, None) {
        In::SessionHello(h) => In::SessionHello(proto::SessionHello {
            auth: Some(proto::Auth {
                scheme: scheme.into(),
                token: token.into(),
            }),
            ..h
        }),
        _ => unreachable!(),
    }
}

/// Opens a stream from `from` and says hello as `token` (resuming with `resume`); returns the
/// stream, the hello's id and the answer.
async fn hello_from(
    server: &TestServer,
    from: IpAddr,
    token: &str,
    resume: Option<proto::ResumeInfo>,
) -> (Conn, String, proto::ServerFrame) {
    let mut conn = open_on(server.channel_from(from).await, &[])
        .await
        .expect("stream opens");
    let id = conn.send(hello(token, FEATURES, resume)).await;
    let answer = conn.recv().await;
    (conn, id, answer)
}

/// A stream from `from` whose hello as `token` is sent and answered in a task of its own, so
/// the test can look at the server while the answer is held back.
async fn hello_aside(
    server: &TestServer,
    from: IpAddr,
    token: &str,
    resume: Option<proto::ResumeInfo>,
) -> tokio::task::JoinHandle<(proto::ServerFrame, Duration)> {
    let mut conn = open_on(server.channel_from(from).await, &[])
        .await
        .expect("stream opens");
    let hello = hello(token, FEATURES, resume);
    tokio::spawn(async move {
        let sent = Instant::now();
        conn.send(hello).await;
        let answer = conn.recv().await;
        (answer, sent.elapsed())
    })
}

/// A resume with a token no welcome ever issued.
fn bogus_resume() -> proto::ResumeInfo {
    resume_info("", "rt_sess_00000000000000000000000000.bogus", 0)
}

#[tokio::test]
async fn auth_scheme_must_be_bearer_in_any_case_over_both_transports() {
    let server = start(10).await;
    for scheme in ["basic", "Bearer2", "signed_url"] {
        let mut conn = server.open().await;
        let id = conn.send(hello_with_scheme("alice-token", scheme)).await;
        let answer = conn.recv().await;
        let e = expect_error(&answer, ErrorCode::Unauthenticated, Some(&id));
        assert!(e.message.contains("bearer"), "{e:?}");
        assert!(matches!(conn.try_recv().await, Ok(None)));
    }
    for scheme in ["bearer", "BEARER", "Bearer", ""] {
        let mut conn = server.open().await;
        conn.send(hello_with_scheme("alice-token", scheme)).await;
        welcome(&conn.recv().await);
    }
    let mut ws = server.ws().await;
    let id = ws
        .send(
            "session.hello",
            serde_json::json!({"auth": {"scheme": "Basic", "token": "alice-token"}}),
        )
        .await;
    let refused = ws.recv().await;
    assert_eq!(refused["type"], "session.error", "{refused}");
    assert_eq!(refused["payload"]["code"], "UNAUTHENTICATED");
    assert_eq!(refused["payload"]["request_id"], id.as_str());
    let (_, welcomed) = server.ws_hello("alice-token", FEATURES).await;
    assert_eq!(welcomed["type"], "session.welcome");
    // A wrong scheme is refused without looking at the token: no guess was made.
    assert_eq!(server.gateway.auth_throttle().failures(), 0);
}

#[tokio::test]
async fn failed_bearer_tokens_past_the_limit_are_answered_late_and_right_ones_at_once() {
    let server = start(3).await;
    let throttle = server.gateway.auth_throttle();
    let mut refusals = Vec::new();
    for n in 0..3 {
        let (_, id, answer) = hello_from(&server, ip(1), &format!("guess-{n}"), None).await;
        let e = expect_error(&answer, ErrorCode::Unauthenticated, Some(&id));
        refusals.push(e.message.clone());
    }
    assert_eq!((throttle.failures(), throttle.slowed()), (3, 0));

    // The fourth failure from the peer is held back ...
    let fourth = hello_aside(&server, ip(1), "guess-3", None).await;
    wait_until("the fourth refusal waits", || throttle.waiting() == 1).await;
    // ... while a right token from the same peer is welcomed at once: the refusal is still
    // waiting when the welcome arrives.
    let (_, _, welcomed) = hello_from(&server, ip(1), "bob-token", None).await;
    welcome(&welcomed);
    assert_eq!(
        throttle.waiting(),
        1,
        "the welcome did not wait for the penalty"
    );

    let (answer, took) = fourth.await.expect("the hello task");
    let e = expect_error(&answer, ErrorCode::Unauthenticated, None);
    assert_eq!(e.message, refusals[0], "the same error as before");
    assert!(
        took >= DELAY - Duration::from_millis(50),
        "answered after {took:?}"
    );
    assert_eq!((throttle.failures(), throttle.slowed()), (4, 1));
    assert_eq!(throttle.waiting(), 0);

    // Another peer has failed once: it is answered at once.
    let (_, id, answer) = hello_from(&server, ip(2), "guess-4", None).await;
    expect_error(&answer, ErrorCode::Unauthenticated, Some(&id));
    assert_eq!((throttle.failures(), throttle.slowed()), (5, 1));
}

#[tokio::test]
async fn failed_resume_tokens_are_limited_per_principal_whichever_peer_they_come_from() {
    let server = start(2).await;
    let throttle = server.gateway.auth_throttle();
    for n in [1, 2] {
        let (_, id, answer) =
            hello_from(&server, ip(10 + n), "alice-token", Some(bogus_resume())).await;
        expect_error(&answer, ErrorCode::ResumeWindowExpired, Some(&id));
    }
    assert_eq!(throttle.slowed(), 0);
    // A third peer, which never failed, but alice has: held back.
    let third = hello_aside(&server, ip(13), "alice-token", Some(bogus_resume())).await;
    wait_until("alice's third failure waits", || throttle.waiting() == 1).await;
    // Bob, from yet another peer, is neither slowed nor held up.
    let (_, id, answer) = hello_from(&server, ip(14), "bob-token", Some(bogus_resume())).await;
    expect_error(&answer, ErrorCode::ResumeWindowExpired, Some(&id));
    assert_eq!(throttle.waiting(), 1);
    let (answer, took) = third.await.expect("the hello task");
    expect_error(&answer, ErrorCode::ResumeWindowExpired, None);
    assert!(
        took >= DELAY - Duration::from_millis(50),
        "answered after {took:?}"
    );
    assert_eq!((throttle.failures(), throttle.slowed()), (4, 1));

    // A right resume token is not held back, even for alice now.
    let (mut conn, w) = server.hello("alice-token").await;
    let token = welcome(&w).resume_token.clone();
    conn.close_send();
    drop(conn);
    wait_until("the session is detached", || {
        server.stores.resume.attached() == 0
    })
    .await;
    let (_, _, resumed) = hello_from(
        &server,
        ip(13),
        "alice-token",
        Some(resume_info(&w.session_id, &token, 0)),
    )
    .await;
    welcome(&resumed);
    assert_eq!(throttle.slowed(), 1);
}

#[tokio::test]
async fn refused_metadata_and_upgrade_tokens_count_too() {
    let server = start(1).await;
    let throttle = server.gateway.auth_throttle();
    refused_by_metadata(&server, ip(21)).await;
    assert_eq!(throttle.slowed(), 0);
    let took = refused_by_metadata(&server, ip(21)).await;
    assert!(
        took >= DELAY - Duration::from_millis(50),
        "answered after {took:?}"
    );
    assert_eq!((throttle.failures(), throttle.slowed()), (2, 1));

    // The WebSocket upgrade's refusal (HTTP 401) is held back the same way.
    let upgrade = |n: u8| server.ws_from(ip(n), Some("wrong"));
    let first = upgrade(22).await.err().expect("refused");
    assert!(is_401(&first), "{first:?}");
    let started = Instant::now();
    let second = upgrade(22).await.err().expect("refused");
    assert!(is_401(&second), "{second:?}");
    assert!(started.elapsed() >= DELAY - Duration::from_millis(50));
    assert_eq!((throttle.failures(), throttle.slowed()), (4, 2));
    // A right token in the upgrade from that peer is served.
    let mut ws = server
        .ws_from(ip(22), Some("alice-token"))
        .await
        .expect("upgraded");
    ws.send("session.hello", serde_json::json!({})).await;
    assert_eq!(ws.recv().await["type"], "session.welcome");
    assert_eq!(throttle.slowed(), 2);
}

/// Opens a stream from `from` with a wrong bearer token in its metadata; returns how long the
/// refusal took.
async fn refused_by_metadata(server: &TestServer, from: IpAddr) -> Duration {
    let channel = server.channel_from(from).await;
    let started = Instant::now();
    let refusal = open_on(channel, &[("authorization", "Bearer wrong")])
        .await
        .err()
        .expect("refused before the stream opens");
    assert_eq!(refusal.code(), tonic::Code::Unauthenticated, "{refusal:?}");
    assert_eq!(arcp_code(&refusal), Some("UNAUTHENTICATED"));
    started.elapsed()
}

fn is_401(error: &tokio_tungstenite::tungstenite::Error) -> bool {
    matches!(error, tokio_tungstenite::tungstenite::Error::Http(response) if response.status() == 401)
}

/// What the `arcp::audit` target logged in this test binary.
fn audit_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("arcp::audit=info"))
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .try_init()
            .expect("the test binary's only subscriber");
        log
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_failure_is_audit_logged_without_the_token() {
    let log = audit_log();
    let server = start(1).await;
    const GUESS: &str = "guess-4f1c2d-NEVER-LOGGED";
    for _ in 0..2 {
        let (_, _, answer) = hello_from(&server, ip(31), GUESS, None).await;
        expect_error(&answer, ErrorCode::Unauthenticated, None);
    }
    let (_, _, answer) = hello_from(&server, ip(31), "alice-token", Some(bogus_resume())).await;
    expect_error(&answer, ErrorCode::ResumeWindowExpired, None);

    let text = String::from_utf8(log.lock().unwrap().clone()).expect("UTF-8");
    let ours: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("127.0.0.31"))
        .collect();
    assert_eq!(ours.len(), 3, "one entry per failure: {ours:#?}");
    for line in &ours {
        assert!(line.contains("arcp::audit"), "{line}");
        assert!(line.contains(r#"event="auth_failure""#), "{line}");
        assert!(line.contains(r#"via="session.hello""#), "{line}");
    }
    assert!(ours[0].contains("check=bearer") && ours[0].contains("slowed=false"));
    assert!(ours[1].contains("code=UNAUTHENTICATED") && ours[1].contains("slowed=true"));
    assert!(ours[2].contains("check=resume") && ours[2].contains(r#"principal="alice""#));
    assert!(!text.contains(GUESS), "a token reached the audit log");
    assert!(
        !text.contains("bogus"),
        "a resume token reached the audit log"
    );
}
