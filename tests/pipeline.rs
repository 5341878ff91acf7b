//! A chatty job on the Redis store, whose frames go to Redis in pipelined batches without the
//! job waiting for each: its session and a subscriber that attaches mid-job get every frame
//! once, in order and gap-free, the terminal frame last; and a job paced to a slow reader on
//! another replica stays within its flow window of it, so eviction never overtakes it. In-process gateways on
//! the tests' shared `redis-server`, each deployment under a key prefix of its own.

mod common;

use arcp_gateway::{
    agent::AgentRegistry,
    auth::Authenticator,
    config::GatewayConfig,
    ids::{Principal, ReplicaId, SessionId},
    proto::{server_frame::Payload as Out, ServerFrame},
    store::{redis::Redis, MemoryStores, Stores},
    Gateway,
};
use common::*;

/// A replica `replica` of the deployment under `prefix`, serving alice (`alice-token`) with
/// the built-in agents and `agents`, with every store in Redis.
async fn replica_with(
    prefix: &str,
    replica: &str,
    config: GatewayConfig,
    agents: AgentRegistry,
) -> TestServer {
    let redis = Redis::open(redis_url(), prefix).expect("a redis address");
    let limits = config.log_limits();
    let builder = Gateway::builder(config)
        .auth(Authenticator::from_pairs([(
            "alice-token".to_string(),
            Principal::new("alice"),
        )]))
        .agents(agents);
    let id = ReplicaId::new(replica);
    TestServer::start_on(builder, MemoryStores::with_limits(limits), move |_| {
        Stores::redis(&redis, &id, limits)
    })
    .await
}

/// [`replica_with`] the built-in agents only.
async fn replica(prefix: &str, replica: &str, config: GatewayConfig) -> TestServer {
    replica_with(prefix, replica, config, AgentRegistry::with_builtins()).await
}

fn fresh_prefix() -> String {
    format!("arcp-test-{}", SessionId::generate())
}

/// The `progress.current` of each progress frame among `frames`, in order.
fn ticks<'a>(frames: impl IntoIterator<Item = &'a ServerFrame>) -> Vec<u64> {
    frames
        .into_iter()
        .filter_map(progress_current)
        .map(|tick| tick as u64)
        .collect()
}

/// Asserts that `frames` carry consecutive sequence numbers.
#[track_caller]
fn assert_consecutive(frames: &[ServerFrame]) {
    let seqs = event_seqs(frames);
    let first = seqs[0];
    let expected: Vec<u64> = (first..first + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "sequence numbers with a gap or a repeat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_job_reaches_its_session_and_a_late_subscriber_whole_and_in_order() {
    const TICKS: u64 = 20_000;
    let server = replica(&fresh_prefix(), "a", GatewayConfig::default()).await;
    let (mut owner, _) = server.hello("alice-token").await;
    let (job, accepted) = submit_and_accept(&mut owner, ticker(TICKS, 0)).await;
    let mut seen = vec![accepted];
    while ticks(&seen).len() < 5_000 {
        seen.push(owner.recv().await);
    }
    // Subscribed while the job's frames stream out: the history up to its newest frame, then
    // the rest live.
    let (mut observer, _) = server
        .hello_with("alice-token", &["subscribe", "progress"])
        .await;
    observer.send(subscribe(&job, true, None)).await;
    let announced = observer.recv().await;
    assert!(
        matches!(announced.payload, Some(Out::JobSubscribed(_))),
        "{announced:?}"
    );

    let (rest, terminal) = owner.recv_until_terminal(&job).await;
    seen.extend(rest);
    seen.push(terminal);
    assert_consecutive(&seen);
    assert_eq!(ticks(&seen), (1..=TICKS).collect::<Vec<_>>());
    assert_eq!(result_json(seen.last().unwrap())["ticks"], TICKS);

    let (observed, terminal) = observer.recv_until_terminal(&job).await;
    let mut observed: Vec<ServerFrame> = [announced].into_iter().chain(observed).collect();
    observed.push(terminal);
    assert_consecutive(&observed);
    assert!(
        matches!(observed[1].payload, Some(Out::JobAccepted(_))),
        "the history starts with the acceptance: {:?}",
        observed[1]
    );
    assert_eq!(ticks(&observed), (1..=TICKS).collect::<Vec<_>>());
    assert_eq!(result_json(observed.last().unwrap())["ticks"], TICKS);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_paced_to_a_slow_reader_on_another_replica_never_outruns_it() {
    const LINES: u64 = 10_000;
    // Logs of 2,000 frames: a job that ran more than that ahead of its reader would have the
    // frames the reader still needs evicted, and the stream would end with an error.
    let config = GatewayConfig {
        max_log_frames: 2_000,
        ..GatewayConfig::default()
    };
    let prefix = fresh_prefix();
    let (pacer, steps) = Pacer::new();
    let mut agents = AgentRegistry::with_builtins();
    agents.register("pacer", "1.0.0", pacer).unwrap();
    let a = replica_with(&prefix, "a", config.clone(), agents).await;
    let b = replica(&prefix, "b", config).await;
    let (mut on_a, w) = a.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (job, accepted) =
        submit_and_accept(&mut on_a, submit("pacer", serde_json::json!(null))).await;

    // The job runs on replica A; its session's stream moves to B, and reads slowly there.
    let (mut conn, first) = b
        .resume_with_hello(
            "alice-token",
            FEATURES,
            resume_info(&session, &token, accepted.event_seq),
        )
        .await;
    welcome(&first);
    drop(on_a);
    steps.send(LINES).unwrap();
    steps.send(0).unwrap();
    let mut seen = vec![accepted];
    loop {
        let frame = conn.recv().await;
        assert!(
            !matches!(frame.payload, Some(Out::SessionError(_))),
            "the reader fell behind eviction: {frame:?}"
        );
        let terminal = frame.job_id == job && is_terminal(&frame);
        seen.push(frame);
        if terminal {
            break;
        }
        if seen.len() % 100 == 0 {
            // A slow reader, not a wait for anything: unpaced, the job would be done long
            // before it, its frames evicted under it.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert_consecutive(&seen);
    let lines: Vec<String> = seen
        .iter()
        .filter_map(log_message)
        .map(str::to_owned)
        .collect();
    let expected: Vec<String> = (1..=LINES).map(|n| format!("line {n}")).collect();
    assert_eq!(lines, expected);
    a.stop().await;
    b.stop().await;
}
