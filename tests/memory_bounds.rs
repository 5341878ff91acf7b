//! Memory bounded by bytes, through the real server (issue 16): a session's log keeps at most
//! `max_log_bytes`, all logs together at most `retained_bytes_budget` (detached sessions'
//! frames go first, an attached reader loses none), events are at most `max_event_bytes`
//! (refused on their emit), inputs at most `max_input_bytes`, and idempotency keys are
//! bounded in length and in number per principal. Every eviction shows as
//! `RESUME_WINDOW_EXPIRED` on a resume from before it, never as a gap.

mod common;

use std::sync::Arc;

use arcp_gateway::{
    agent::{Agent, AgentRegistry, JobContext, LogLevel},
    config::GatewayConfig,
    ids::SessionId,
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out, ServerFrame},
    ArcpError, ErrorCode,
};
use common::*;
use serde_json::json;

const KIB: u64 = 1024;

async fn start(config: GatewayConfig) -> TestServer {
    TestServer::start(config, &[("alice-token", "alice")]).await
}

/// Waits until the gateway's log counts the session as detached.
async fn wait_detached(server: &TestServer, session: &str) {
    let id = SessionId::new(session);
    wait_until("the session's detach", || {
        server.stores.logs.is_detached(&id) == Some(true)
    })
    .await;
}

fn session_bytes(server: &TestServer, session: &str) -> u64 {
    server
        .stores
        .logs
        .session_bytes(&SessionId::new(session))
        .expect("the session has a log")
}

async fn evicted_through(server: &TestServer, session: &str) -> u64 {
    session_log(server, session)
        .await
        .bounds()
        .await
        .expect("the log is readable")
        .evicted_through
        .get()
}

/// Frames until the terminal one of `job`, checked to be exactly `from..=` the terminal's
/// `event_seq`, in order; returns them with the terminal frame last.
async fn exactly_from(conn: &mut Conn, job: &str, from: u64) -> Vec<ServerFrame> {
    let (mut frames, terminal) = conn.recv_until_terminal(job).await;
    frames.push(terminal);
    let last = frames.last().map(|f| f.event_seq).unwrap_or_default();
    assert_eq!(
        event_seqs(&frames),
        (from..=last).collect::<Vec<_>>(),
        "every frame once, in order, no gap"
    );
    frames
}

fn chatter(count: u64, bytes: u64) -> In {
    submit("chatter", json!({"count": count, "bytes": bytes}))
}

/// A gateway whose logs hold `max_log_bytes`, and a session on it: the stream, the session's
/// id and its resume token.
async fn bounded_session(max_log_bytes: u64) -> (TestServer, Conn, String, String) {
    let server = start(GatewayConfig {
        max_log_bytes,
        ..GatewayConfig::default()
    })
    .await;
    let (conn, w) = server.hello("alice-token").await;
    let token = welcome(&w).resume_token.clone();
    (server, conn, w.session_id, token)
}

/// A job of `count` lines of about a KiB: accepted, the lines, the result.
const LINE: u64 = KIB;

#[tokio::test]
async fn a_chatty_job_on_a_dropped_session_stays_within_the_log_byte_bound() {
    let max_log_bytes = 256 * KIB;
    let (server, mut conn, session, token) = bounded_session(max_log_bytes).await;
    // About 2 MB of lines, eight times the bound.
    let count = 2000;
    let (job, _) = submit_and_accept(&mut conn, chatter(count, LINE)).await;
    drop(conn);
    let newest = count + 2;
    wait_for_log(&server, &session, newest).await;

    let held = session_bytes(&server, &session);
    assert!(
        held <= max_log_bytes,
        "the log holds {held} bytes, over its bound of {max_log_bytes}"
    );
    assert!(
        held > max_log_bytes / 2,
        "the bound, not less, is kept: {held}"
    );
    assert_eq!(
        server.stores.logs.retained_bytes(),
        held,
        "one session holds all"
    );
    let evicted = evicted_through(&server, &session).await;
    assert!(evicted > 0 && evicted < newest, "evicted through {evicted}");

    // From before the evicted frames: refused, never a gap; the token survives the refusal.
    let (_refused, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 0))
        .await;
    expect_error(&first, ErrorCode::ResumeWindowExpired, None);

    // From the oldest retained position: exactly the retained frames, through the result.
    let (mut conn, first) = server
        .resume_with_hello(
            "alice-token",
            FEATURES,
            resume_info(&session, &token, evicted),
        )
        .await;
    welcome(&first);
    let frames = exactly_from(&mut conn, &job, evicted + 1).await;
    assert_eq!(frames.len() as u64, newest - evicted);
    assert_eq!(
        result_json(frames.last().unwrap()),
        json!({ "lines": count })
    );
}

#[tokio::test]
async fn the_budget_evicts_detached_sessions_first_while_an_attached_reader_gets_every_frame() {
    let budget = 512 * KIB;
    let server = start(GatewayConfig {
        retained_bytes_budget: budget,
        ..GatewayConfig::default()
    })
    .await;

    // A dropped session holding about 330 KB: within the budget on its own.
    let (mut dropped, w) = server.hello("alice-token").await;
    let detached = w.session_id.clone();
    let detached_token = welcome(&w).resume_token.clone();
    submit_and_accept(&mut dropped, chatter(300, LINE)).await;
    drop(dropped);
    wait_for_log(&server, &detached, 302).await;
    wait_detached(&server, &detached).await;
    assert_eq!(evicted_through(&server, &detached).await, 0);

    // An attached session adding about 660 KB: the detached one pays for it, and then the
    // attached one goes over the budget rather than lose a frame its reader has not taken.
    let (mut attached, w) = server.hello("alice-token").await;
    let live = w.session_id.clone();
    let (job, _) = submit_and_accept(&mut attached, chatter(600, LINE)).await;
    let frames = exactly_from(&mut attached, &job, 2).await;
    assert_eq!(frames.last().unwrap().event_seq, 602);
    assert_eq!(
        evicted_through(&server, &live).await,
        0,
        "the attached log lost frames"
    );
    assert_eq!(
        evicted_through(&server, &detached).await,
        302,
        "the detached session gave up all it had"
    );
    let (_refused, first) = server
        .resume_with_hello(
            "alice-token",
            FEATURES,
            resume_info(&detached, &detached_token, 0),
        )
        .await;
    expect_error(&first, ErrorCode::ResumeWindowExpired, None);

    // Once it detaches too, the store is brought back within its budget.
    assert!(server.stores.logs.retained_bytes() > budget);
    drop(attached);
    wait_detached(&server, &live).await;
    let retained = server.stores.logs.retained_bytes();
    assert!(
        retained <= budget,
        "{retained} bytes retained, over {budget}"
    );
}

#[tokio::test]
async fn pacing_in_bytes_keeps_eviction_behind_a_live_reader() {
    // The job emits forty times the log's byte bound; the frame window alone (8192 frames of
    // a KiB) would let it run far past what the log keeps.
    let max_log_bytes = 64 * KIB;
    let (server, mut conn, session, _) = bounded_session(max_log_bytes).await;
    let count = 2500;
    let (job, _) = submit_and_accept(&mut conn, chatter(count, LINE)).await;
    let frames = exactly_from(&mut conn, &job, 2).await;
    assert_eq!(frames.len() as u64, count + 1);
    assert!(
        evicted_through(&server, &session).await > 0,
        "the bound evicted"
    );
    assert!(session_bytes(&server, &session) <= max_log_bytes);
}

/// Emits one `log` of `{"bytes": N}` bytes; if that is refused, logs the refusal instead and
/// returns it, so the test sees the agent got the error and carried on.
struct BigEmitter;

#[async_trait::async_trait]
impl Agent for BigEmitter {
    async fn run(
        &self,
        ctx: JobContext,
        input: serde_json::Value,
    ) -> Result<serde_json::Value, ArcpError> {
        let bytes = input["bytes"].as_u64().unwrap_or(0) as usize;
        match ctx.log(LogLevel::Info, "x".repeat(bytes)).await {
            Ok(()) => Ok(json!({"emitted": bytes})),
            Err(e) => {
                ctx.log(LogLevel::Warn, format!("refused: {}", e.message()))
                    .await?;
                Ok(json!({"refused": e.code().as_str()}))
            }
        }
    }
}

#[tokio::test]
async fn an_event_over_the_largest_event_is_refused_on_its_emit_and_the_job_goes_on() {
    let max_event_bytes = 16 * KIB;
    let mut agents = AgentRegistry::with_builtins();
    agents
        .register("big", "1.0.0", Arc::new(BigEmitter))
        .unwrap();
    let server = TestServer::start_with_agents(
        GatewayConfig {
            max_event_bytes,
            ..GatewayConfig::default()
        },
        agents,
    )
    .await;
    let (mut conn, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();

    let (job, _) = submit_and_accept(&mut conn, submit("big", json!({"bytes": 20 * KIB}))).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(events.len(), 1, "only the refusal was emitted: {events:?}");
    let refusal = log_message(&events[0]).expect("a log event");
    assert!(
        refusal.starts_with("refused: ") && refusal.contains("max_event_bytes"),
        "{refusal}"
    );
    assert!(refusal.len() < 300, "the error does not echo the event");
    assert_eq!(
        result_json(&terminal),
        json!({"refused": "INVALID_REQUEST"})
    );
    assert_eq!(
        newest(&server, &session).await,
        3,
        "nothing else was appended"
    );

    // Within the limit, the same agent emits.
    let (job, _) = submit_and_accept(&mut conn, submit("big", json!({"bytes": 8 * KIB}))).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(
        log_message(&events[0]).map(str::len),
        Some(8 * KIB as usize)
    );
    assert_eq!(result_json(&terminal), json!({"emitted": 8 * KIB}));

    // A built-in agent that does not catch the error ends with it, explained.
    let (job, _) = submit_and_accept(&mut conn, chatter(1, 20 * KIB)).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert!(events.is_empty(), "{events:?}");
    let error = job_error(&terminal);
    assert_eq!(error.code, "INVALID_REQUEST");
    assert!(
        error.message.contains("max_event_bytes"),
        "{}",
        error.message
    );

    // An inline result is an event too: over the limit, the job ends with INTERNAL_ERROR
    // (as an oversized streamed result does, §14).
    let big_text = "y".repeat(20 * KIB as usize);
    let (job, _) = submit_and_accept(&mut conn, submit("echo", json!({"text": big_text}))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    let error = job_error(&terminal);
    assert_eq!(error.code, "INTERNAL_ERROR");
    assert!(
        error.message.contains("max_event_bytes"),
        "{}",
        error.message
    );
    assert!(
        !error.message.contains("yyyy"),
        "the error does not echo the result"
    );
}

#[tokio::test]
async fn a_result_chunk_of_the_largest_size_fits_the_default_largest_event() {
    let config = GatewayConfig::default();
    let chunk = config.max_result_chunk_bytes as usize;
    let server = start(config).await;
    let (mut conn, _) = server
        .hello_with("alice-token", &["result_chunk", "progress"])
        .await;
    let hex = "ab".repeat(chunk);
    let (job, _) = submit_and_accept(
        &mut conn,
        submit("chunker", json!({"bytes_hex": hex, "chunk_size": chunk})),
    )
    .await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(events.len(), 1, "one chunk of the largest size");
    match &events[0].payload {
        Some(Out::JobEvent(proto::JobEvent {
            body: Some(proto::job_event::Body::ResultChunk(c)),
            ..
        })) => assert_eq!(c.data.len(), chunk.div_ceil(3) * 4, "base64 of the chunk"),
        other => panic!("expected a result_chunk, got {other:?}"),
    }
    assert_eq!(job_result(&terminal).final_status, "success");
}

#[tokio::test]
async fn an_input_over_the_largest_input_is_refused_and_the_session_survives() {
    let max_input_bytes = KIB;
    let server = start(GatewayConfig {
        max_input_bytes,
        ..GatewayConfig::default()
    })
    .await;
    let (mut conn, _) = server.hello("alice-token").await;
    let big = "z".repeat(2 * KIB as usize);
    let id = conn.send(submit("echo", json!({ "text": big }))).await;
    let frame = conn.recv().await;
    let error = expect_error(&frame, ErrorCode::InvalidRequest, Some(&id));
    assert!(
        error.message.contains("max_input_bytes") && error.message.contains("1024"),
        "the error names the limit: {}",
        error.message
    );
    assert!(
        !error.message.contains("zzzz"),
        "the error does not echo the input"
    );

    // The session goes on, and an input within the limit runs.
    let (job, _) = submit_and_accept(&mut conn, submit("echo", json!({"text": "small"}))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(result_json(&terminal), json!({"text": "small"}));
}

/// An `echo` of `input` under `key`.
fn keyed_echo(input: serde_json::Value, key: &str) -> In {
    In::JobSubmit(keyed("echo", input, key))
}

/// Submits and returns the id of the job accepted.
async fn accepted_job(conn: &mut Conn, payload: In) -> String {
    let (job, _) = submit_and_accept(conn, payload).await;
    job
}

#[tokio::test]
async fn idempotency_keys_are_bounded_in_length_and_errors_show_only_a_prefix() {
    let server = start(GatewayConfig {
        max_idempotency_key_bytes: 64,
        ..GatewayConfig::default()
    })
    .await;
    let (mut conn, _) = server.hello("alice-token").await;

    let too_long = "L".repeat(65);
    let id = conn.send(keyed_echo(json!(1), &too_long)).await;
    let frame = conn.recv().await;
    let error = expect_error(&frame, ErrorCode::InvalidRequest, Some(&id));
    assert!(
        error.message.contains("max_idempotency_key_bytes") && error.message.contains("64"),
        "{}",
        error.message
    );
    assert!(!error.message.contains(&too_long), "{}", error.message);

    // The longest allowed key works, and a conflicting reuse names only its prefix.
    let longest = format!("prefix-{}", "k".repeat(57));
    let job = accepted_job(&mut conn, keyed_echo(json!(1), &longest)).await;
    conn.recv_until_terminal(&job).await;
    let id = conn.send(keyed_echo(json!(2), &longest)).await;
    let frame = conn.recv().await;
    let error = expect_error(&frame, ErrorCode::DuplicateKey, Some(&id));
    assert!(
        error.message.contains("\"prefix-kkkkk\""),
        "{}",
        error.message
    );
    assert!(!error.message.contains(&longest), "{}", error.message);
    assert!(
        error.message.contains(&job),
        "names the job: {}",
        error.message
    );
}

#[tokio::test]
async fn a_principal_holds_a_bounded_number_of_keys_and_forgets_the_oldest() {
    let server = start(GatewayConfig {
        max_idempotency_keys_per_principal: 2,
        ..GatewayConfig::default()
    })
    .await;
    let (mut conn, _) = server.hello("alice-token").await;
    let mut jobs = Vec::new();
    for key in ["k1", "k2", "k3"] {
        let job = accepted_job(&mut conn, keyed_echo(json!(key), key)).await;
        conn.recv_until_terminal(&job).await;
        jobs.push(job);
    }
    assert_eq!(server.stores.idempotency.len(), 2, "at most two keys held");

    // The newest key still names its job; the oldest was forgotten and starts a new one.
    let repeat = accepted_job(&mut conn, keyed_echo(json!("k3"), "k3")).await;
    assert_eq!(repeat, jobs[2], "a held key repeats its job");
    let anew = accepted_job(&mut conn, keyed_echo(json!("k1"), "k1")).await;
    assert_ne!(anew, jobs[0], "a forgotten key starts a new job");
    conn.recv_until_terminal(&anew).await;
    assert_eq!(server.stores.idempotency.len(), 2);
}
