//! A gateway process when its Redis is in trouble, on a `redis-server` of the test's own:
//! stopped (SIGSTOP: connections stay open and nothing is answered) for less than the bound
//! appends are retried for, and for longer; flushed; restarted without persistence.
//!
//! While Redis does not answer, health is NOT_SERVING and new sessions and submissions get a
//! retryable error naming the store; once it answers again, the client's resume gets every
//! frame exactly once and in order, and the job either finished (a blip within the bound) or
//! ended with an explicit retryable error (an outage past it). A Redis that lost its data
//! makes a resume fail with `RESUME_WINDOW_EXPIRED` naming the loss, never a welcome.

mod common;

use std::time::Duration;

use ::redis::AsyncCommands;
use arcp_gateway::{
    clock::Timestamp,
    encoding::StoredFrame,
    ids::{EventSeq, JobId, ReplicaId, ReplicaInstance, SessionId},
    proto::{server_frame::Payload as Out, ServerFrame},
    protocol::{
        event::EventBody,
        job_frame::{JobFrame, JobPayload},
    },
    store::{
        health::StoreHealth,
        log::{redis::RedisEventLog, EventLog, LogLimits, Wait},
        redis::Redis,
    },
    ErrorCode,
};
use common::*;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckResponse};

/// One gateway process on a Redis of the test's own.
struct Deployment {
    gateway: GatewayProcess,
    redis: RedisServer,
}

impl Deployment {
    async fn start(extra: &[&str]) -> Deployment {
        Deployment::start_on(RedisServer::start(), extra).await
    }

    async fn start_on(redis: RedisServer, extra: &[&str]) -> Deployment {
        let mut flags = vec!["--store", redis.url(), "--replica-id", "replica-0"];
        flags.extend_from_slice(extra);
        let gateway = GatewayProcess::start_with("info", None, &flags).await;
        Deployment { gateway, redis }
    }

    fn endpoint(&self) -> Endpoint {
        self.gateway.endpoint()
    }

    /// A health `Watch` of the whole server, which says SERVING first.
    async fn health(&self) -> tonic::Streaming<HealthCheckResponse> {
        serving_watch(&self.gateway.channel().await, "").await
    }
}

/// The next status a health `Watch` sends.
async fn next_status(watch: &mut tonic::Streaming<HealthCheckResponse>) -> ServingStatus {
    tokio::time::timeout(FRAME_TIMEOUT, watch.message())
        .await
        .expect("health changes")
        .expect("the Watch is OK")
        .expect("the Watch stays open")
        .status()
}

/// Asserts that a new session cannot be opened, with a retryable error naming the store.
async fn hello_is_refused(endpoint: &Endpoint) {
    let mut conn = endpoint.open().await;
    conn.send(hello(GATEWAY_TOKEN, FEATURES, None)).await;
    let frame = conn.recv().await;
    let error = expect_error(&frame, ErrorCode::InternalError, None);
    assert!(error.retryable);
    assert!(
        error.message.contains("store is unavailable"),
        "{}",
        error.message
    );
}

/// A session on `endpoint` running a ticker of `count` ticks `interval_ms` apart, and the first
/// `first` sequence numbers received.
async fn session_with_ticker(
    endpoint: &Endpoint,
    count: u64,
    interval_ms: u64,
    first: usize,
) -> (Conn, String, String, String, Vec<ServerFrame>) {
    let (mut conn, w) = endpoint.hello(GATEWAY_TOKEN).await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (job, accepted) = submit_and_accept(&mut conn, ticker(count, interval_ms)).await;
    let mut frames = vec![accepted];
    while frames.len() < first {
        frames.push(conn.recv().await);
    }
    (conn, session, token, job, frames)
}

/// Resumes `session` from `last` and receives up to `job`'s terminal frame.
async fn resume_until_end(
    endpoint: &Endpoint,
    session: &str,
    token: &str,
    last: u64,
    job: &str,
) -> (String, Vec<ServerFrame>) {
    let (mut conn, first) = endpoint
        .resume_with_hello(GATEWAY_TOKEN, FEATURES, resume_info(session, token, last))
        .await;
    let token = welcome(&first).resume_token.clone();
    let (mut frames, terminal) = conn.recv_until_terminal(job).await;
    frames.push(terminal);
    (token, frames)
}

/// Asserts that `frames` are the whole log of a session whose one job was a ticker: every
/// sequence number from 1 once, in order, the acceptance, then progress 1, 2, 3, ... (a
/// frame appended twice would repeat one), then the job's end, which is returned.
fn assert_whole_log(frames: &[ServerFrame]) -> &ServerFrame {
    let seqs = event_seqs(frames);
    let expected: Vec<u64> = (1..=frames.len() as u64).collect();
    assert_eq!(seqs, expected, "every frame once, in order");
    assert!(matches!(frames[0].payload, Some(Out::JobAccepted(_))));
    let (end, events) = frames[1..].split_last().expect("an end");
    let ticks: Vec<f64> = events.iter().filter_map(progress_current).collect();
    let expected: Vec<f64> = (1..=events.len()).map(|t| t as f64).collect();
    assert_eq!(ticks, expected, "every tick once, in order");
    assert!(is_terminal(end), "{end:?}");
    end
}

/// Redis stopped for a few seconds mid-job, well within the bound appends are retried for:
/// health NOT_SERVING, a new session and a submission refused with retryable errors naming
/// the store while the session's stream stays open; then SERVING again, the job finished,
/// every frame delivered once, and the batch sent again after its answer was lost (Redis had
/// applied it) appended once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blip_within_the_bound_costs_the_job_nothing() {
    const TICKS: u64 = 60;
    let deployment = Deployment::start(&["--store-retry-ms", "30000"]).await;
    let endpoint = deployment.endpoint();
    let mut health = deployment.health().await;
    let (mut conn, session, token, job, mut frames) =
        session_with_ticker(&endpoint, TICKS, 50, 5).await;

    deployment.redis.pause();
    assert_eq!(next_status(&mut health).await, ServingStatus::NotServing);
    hello_is_refused(&endpoint).await;
    let submitted = conn.send(ticker(1, 0)).await;
    let (before, refusal) = conn
        .recv_until(|f| matches!(f.payload, Some(Out::SessionError(_))))
        .await;
    frames.extend(before);
    let error = expect_error(&refusal, ErrorCode::InternalError, Some(&submitted));
    assert!(
        error.message.contains("is unavailable"),
        "{}",
        error.message
    );

    deployment.redis.resume();
    assert_eq!(next_status(&mut health).await, ServingStatus::Serving);
    // The stream stayed open through the outage, and goes on where it was.
    let (rest, end) = conn.recv_until_terminal(&job).await;
    frames.extend(rest);
    frames.push(end);
    assert_eq!(assert_whole_log(&frames).job_id, job);
    assert_eq!(result_json(frames.last().unwrap())["ticks"], TICKS);
    drop(conn);

    // And the log holds each frame once: a resume from the start replays the same frames.
    let (_, replayed) = resume_until_end(&endpoint, &session, &token, 0, &job).await;
    assert_eq!(event_seqs(&replayed), event_seqs(&frames));
    assert_whole_log(&replayed);

    let gateway = &deployment.gateway;
    assert!(
        gateway.lines_containing("whose answer was lost") >= 1,
        "a batch whose answer was lost was sent again, and not appended twice"
    );
    assert_eq!(gateway.lines_containing("health NOT_SERVING"), 1);
    assert_eq!(gateway.lines_containing("health SERVING"), 1);
}

/// Redis killed mid-job and started again with its data (an append-only file synced on every
/// write): the connections are gone, so calls fail at once rather than time out, and health
/// is NOT_SERVING; once it is back, the gateway reconnects (and resubscribes), health is
/// SERVING, the stream that stayed open goes on, the job finishes, and the log holds every
/// frame once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_its_data_is_ridden_out() {
    const TICKS: u64 = 60;
    let mut deployment = Deployment::start_on(
        RedisServer::start_persistent(),
        &["--store-retry-ms", "30000"],
    )
    .await;
    let endpoint = deployment.endpoint();
    let mut health = deployment.health().await;
    let (mut conn, session, token, job, mut frames) =
        session_with_ticker(&endpoint, TICKS, 50, 5).await;

    deployment.redis.stop();
    assert_eq!(next_status(&mut health).await, ServingStatus::NotServing);
    hello_is_refused(&endpoint).await;
    deployment.redis.start_again();
    assert_eq!(next_status(&mut health).await, ServingStatus::Serving);

    let (rest, end) = conn.recv_until_terminal(&job).await;
    frames.extend(rest);
    frames.push(end);
    assert_whole_log(&frames);
    assert_eq!(result_json(frames.last().unwrap())["ticks"], TICKS);
    drop(conn);
    let (_, replayed) = resume_until_end(&endpoint, &session, &token, 0, &job).await;
    assert_eq!(event_seqs(&replayed), event_seqs(&frames));
    assert_whole_log(&replayed);
    endpoint.hello(GATEWAY_TOKEN).await;
}

/// Redis stopped for longer than the bound (1 s here): the appends fail, the job ends with a
/// retryable INTERNAL_ERROR naming the event log, the stream ends with the same kind of
/// error, and a new session is refused; once Redis is back, the job's end is in the log and
/// a resume gets it, after every frame before it, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_past_the_bound_ends_the_job_with_an_explicit_error() {
    let deployment = Deployment::start(&["--store-retry-ms", "1000"]).await;
    let endpoint = deployment.endpoint();
    let mut health = deployment.health().await;
    let (mut conn, session, token, job, mut frames) =
        session_with_ticker(&endpoint, 10_000, 20, 5).await;

    deployment.redis.pause();
    assert_eq!(next_status(&mut health).await, ServingStatus::NotServing);
    let (before, ended) = conn
        .recv_until(|f| matches!(f.payload, Some(Out::SessionError(_))))
        .await;
    frames.extend(before);
    let error = expect_error(&ended, ErrorCode::InternalError, None);
    assert!(
        error.message.contains("event log is unavailable"),
        "{}",
        error.message
    );
    drop(conn);
    hello_is_refused(&endpoint).await;
    deployment
        .gateway
        .wait_for_line(&["fail until it does", &session])
        .await;

    deployment.redis.resume();
    assert_eq!(next_status(&mut health).await, ServingStatus::Serving);
    let last = frames.last().unwrap().event_seq;
    let (token, rest) = resume_until_end(&endpoint, &session, &token, last, &job).await;
    frames.extend(rest);
    let end = job_error(assert_whole_log(&frames));
    assert_eq!(end.code, "INTERNAL_ERROR");
    assert!(end.retryable);
    assert!(
        end.message.contains("event log is unavailable"),
        "{}",
        end.message
    );
    assert!(end.message.contains("past the 1s"), "{}", end.message);

    let (_, replayed) = resume_until_end(&endpoint, &session, &token, 0, &job).await;
    assert_eq!(event_seqs(&replayed), event_seqs(&frames));
    assert_whole_log(&replayed);
    // And new sessions work again.
    endpoint.hello(GATEWAY_TOKEN).await;
}

/// What a session's client sees when Redis loses everything mid-job (`lose` does it): its
/// stream ends with `RESUME_WINDOW_EXPIRED` naming the loss, after frames with no gap, and a
/// resume gets the same error instead of a welcome, before and after a new session began the
/// store's next incarnation.
async fn a_loss_mid_session_is_named(lose: impl FnOnce(&mut RedisServer)) {
    let mut deployment = Deployment::start(&[]).await;
    let endpoint = deployment.endpoint();
    let (mut conn, session, token, _, mut frames) =
        session_with_ticker(&endpoint, 200, 20, 5).await;

    lose(&mut deployment.redis);
    let (before, ended) = conn
        .recv_until(|f| matches!(f.payload, Some(Out::SessionError(_))))
        .await;
    frames.extend(before);
    let seqs = event_seqs(&frames);
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    let error = expect_error(&ended, ErrorCode::ResumeWindowExpired, None);
    assert!(error.message.contains("lost"), "{}", error.message);
    drop(conn);

    let last = *seqs.last().unwrap();
    let refused = |first: &ServerFrame| {
        let error = expect_error(first, ErrorCode::ResumeWindowExpired, None).clone();
        assert!(
            error.message.contains("the store lost session"),
            "{}",
            error.message
        );
        assert!(error.message.contains("Redis"), "{}", error.message);
    };
    let (_, first) = endpoint
        .resume_with_hello(GATEWAY_TOKEN, FEATURES, resume_info(&session, &token, last))
        .await;
    refused(&first);
    // A new session works, and begins a new incarnation of the store's data.
    endpoint.hello(GATEWAY_TOKEN).await;
    let (_, first) = endpoint
        .resume_with_hello(GATEWAY_TOKEN, FEATURES, resume_info(&session, &token, last))
        .await;
    refused(&first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_mid_session_makes_the_resume_fail_naming_the_loss() {
    a_loss_mid_session_is_named(|redis| redis.flush_all()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_makes_the_resume_fail_naming_the_loss() {
    a_loss_mid_session_is_named(RedisServer::restart).await;
}

/// A frame of job `job_t` whose text is `text`.
fn frame(text: &str) -> StoredFrame {
    StoredFrame::encode(&JobFrame {
        job_id: JobId::new("job_t"),
        trace_id: None,
        payload: JobPayload::Event {
            ts: Timestamp::now(),
            body: EventBody::Thought { text: text.into() },
        },
    })
}

fn text(frame: &StoredFrame) -> String {
    match frame.decode().map(|(_, f)| f.payload) {
        Ok(JobPayload::Event {
            body: EventBody::Thought { text },
            ..
        }) => text,
        other => panic!("not a thought: {other:?}"),
    }
}

/// How many `EVALSHA` calls `redis` ran so far.
async fn evalsha_calls(redis: &RedisServer) -> u64 {
    let mut conn = ::redis::Client::open(redis.url())
        .expect("a redis address")
        .get_multiplexed_async_connection()
        .await
        .expect("a connection");
    let info: String = ::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

/// The store alone: an append sent while Redis is stopped times out (Redis has it, and
/// applies it once it runs again) and is sent again; Redis runs both, and the log holds the
/// frame once, numbered as the first try numbered it. The probe says Redis is unreachable
/// meanwhile, and reachable again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_answer_was_lost_is_appended_once() {
    let server = RedisServer::start();
    let redis = Redis::open(server.url(), "arcp-trouble").expect("a redis address");
    let mut health = redis.watch();
    let instance = ReplicaInstance::start(ReplicaId::new("trouble"));
    let logs = RedisEventLog::new(&redis, LogLimits::frames(100), &instance);
    let log = logs.create(&SessionId::generate()).await.expect("created");
    assert_eq!(log.append(frame("1")).await.expect("appended"), EventSeq(1));
    let before = evalsha_calls(&server).await;

    server.pause();
    let append = tokio::spawn({
        let log = log.clone();
        async move { log.append(frame("2")).await }
    });
    tokio::time::timeout(FRAME_TIMEOUT, health.wait_for(|r| !r.is_reachable()))
        .await
        .expect("the probe notices")
        .expect("the probe runs");
    // The outage itself, not a synchronisation: long enough for the first try to time out
    // (after a second) and the next to be sent; the count below checks that it was.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.resume();
    let appended = tokio::time::timeout(FRAME_TIMEOUT, append)
        .await
        .expect("answered once Redis runs")
        .expect("the task")
        .expect("appended");
    assert_eq!(appended, EventSeq(2));
    let sent = evalsha_calls(&server).await - before;
    assert!(sent >= 2, "the batch was sent {sent} times");

    let read = log.read(EventSeq::ZERO, 10, Wait::No).await.expect("read");
    let texts: Vec<String> = read.iter().map(|e| text(&e.frame)).collect();
    assert_eq!(texts, ["1", "2"], "sent {sent} times, appended once");
    assert_eq!(log.append(frame("3")).await.expect("appended"), EventSeq(3));
    tokio::time::timeout(FRAME_TIMEOUT, health.wait_for(|r| r.is_reachable()))
        .await
        .expect("the probe notices")
        .expect("the probe runs");
    // The metadata holds this writer's last batch, and its drop forgets it.
    let meta_fields = || async {
        let mut conn = ::redis::Client::open(server.url())
            .expect("a redis address")
            .get_multiplexed_async_connection()
            .await
            .expect("a connection");
        let keys: Vec<String> = conn.keys("arcp-trouble:*log-meta").await.expect("KEYS");
        let fields: Vec<String> = conn.hkeys(&keys[0]).await.expect("HKEYS");
        fields
    };
    assert_eq!(
        meta_fields()
            .await
            .iter()
            .filter(|f| f.starts_with("w:"))
            .count(),
        1
    );
    drop(log);
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while meta_fields().await.iter().any(|f| f.starts_with("w:")) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the writer's record stays"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
