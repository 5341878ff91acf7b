//! Replica death, with real processes: two `arcp-gateway serve` replicas on a `redis-server` of
//! the test's own, with short leases, one of them killed (`kill -9`) or paused (SIGSTOP) while
//! it runs a job. A client resuming on the survivor receives every frame the lost replica
//! wrote, then the job's retryable `INTERNAL_ERROR` naming it, within the bound the lease
//! sets; the sessions it held start their resume windows; and a paused replica that comes back
//! can append nothing after that error, and exits.

mod common;

use std::time::{Duration, Instant};

use arcp_gateway::{
    error::ErrorCode,
    proto::{server_frame::Payload as Out, ClientFrame, ServerFrame},
};
use common::*;

/// How often each replica renews its lease, and how long the lease runs.
const HEARTBEAT_SEC: &str = "0.5";
const LEASE: Duration = Duration::from_secs(2);
/// The gateway's sweep interval (its default), which takes the lost replica over.
const SWEEP: Duration = Duration::from_secs(1);
/// How long the job's error may take after the death: the lease, two sweeps, and a margin
/// for a loaded machine. The lease and one sweep are what the design promises.
const BOUND: Duration = Duration::from_secs(2 + 2 + 5);

/// The features the sessions ask for: the defaults, and `list_jobs` to see the job end.
const SESSION_FEATURES: &[&str] = &["progress", "agent_versions", "list_jobs"];

/// Two replicas, `replica-0` and `replica-1`, on a Redis of their own.
struct Deployment {
    a: GatewayProcess,
    b: GatewayProcess,
    _redis: RedisServer,
}

impl Deployment {
    async fn start() -> Deployment {
        let redis = RedisServer::start();
        let lease = LEASE.as_secs().to_string();
        let replica = |id: &'static str| {
            let flags = [
                "--store",
                redis.url(),
                "--replica-id",
                id,
                "--replica-heartbeat-sec",
                HEARTBEAT_SEC,
                "--replica-lease-sec",
                &lease,
            ]
            .map(str::to_owned);
            async move {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                GatewayProcess::start_with("info", None, &flags).await
            }
        };
        let a = replica("replica-0").await;
        let b = replica("replica-1").await;
        Deployment {
            a,
            b,
            _redis: redis,
        }
    }
}

/// A session on `on`, with a ticker job (`count` ticks `interval_ms` apart, with a trace id)
/// whose first `seen` frames arrived.
struct Watched {
    session: String,
    token: String,
    job: String,
    seqs: Vec<u64>,
}

async fn session_with_a_ticker(
    on: &Endpoint,
    count: u64,
    interval_ms: u64,
    seen: usize,
) -> Watched {
    let (mut conn, w) = on.hello_with("alice-token", SESSION_FEATURES).await;
    conn.send_frame(ClientFrame {
        id: "submit".into(),
        trace_id: TRACEPARENT.into(),
        payload: Some(ticker(count, interval_ms)),
        ..Default::default()
    })
    .await;
    let first = conn.recv().await;
    let job = accepted(&first).job_id.clone();
    let mut seqs = vec![first.event_seq];
    while seqs.len() < seen {
        let frame = conn.recv().await;
        assert_eq!(frame.job_id, job);
        seqs.push(frame.event_seq);
    }
    drop(conn);
    Watched {
        session: w.session_id.clone(),
        token: welcome(&w).resume_token.clone(),
        job,
        seqs,
    }
}

/// Resumes `watched` on `on` after `after`; returns the stream and its welcome.
async fn resume(on: &Endpoint, watched: &Watched, after: u64) -> (Conn, ServerFrame) {
    let (conn, first) = on
        .resume_with_hello(
            "alice-token",
            SESSION_FEATURES,
            resume_info(&watched.session, &watched.token, after),
        )
        .await;
    welcome(&first);
    (conn, first)
}

/// Receives the frames after `after` up to the job's terminal frame, and checks them: the
/// job's ticks, numbered on from `after` with no gap and no repeat, then its `job_error`, a
/// retryable `INTERNAL_ERROR` naming the lost replica, with the job's trace id. Returns the
/// error's sequence number.
async fn expect_ticks_then_the_lost_error(conn: &mut Conn, job: &str, after: u64) -> u64 {
    let (frames, terminal) = conn.recv_until_terminal(job).await;
    for frame in &frames {
        assert_eq!(frame.job_id, job, "only the job's frames: {frame:?}");
        assert!(
            matches!(frame.payload, Some(Out::JobEvent(_))),
            "ticks before the end: {frame:?}"
        );
    }
    let seqs: Vec<u64> = frames
        .iter()
        .chain([&terminal])
        .map(|f| f.event_seq)
        .collect();
    let expected: Vec<u64> = (after + 1..=after + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "every frame after {after}, once, in order");
    let error = job_error(&terminal);
    assert_eq!(error.code, "INTERNAL_ERROR", "{error:?}");
    assert!(error.retryable, "{error:?}");
    assert!(
        error.message.contains("replica replica-0 was lost"),
        "{error:?}"
    );
    assert_eq!(terminal.trace_id, TRACEPARENT, "the job's trace id");
    terminal.event_seq
}

/// The log holds nothing after `newest`: a resume from beyond it is refused as being past
/// the newest event, and one from it (the stream is then dropped) is welcomed.
async fn expect_newest(on: &Endpoint, watched: &Watched, newest: u64) {
    let (_conn, refused) = on
        .resume_with_hello(
            "alice-token",
            SESSION_FEATURES,
            resume_info(&watched.session, &watched.token, newest + 1),
        )
        .await;
    let e = expect_error(&refused, ErrorCode::InvalidRequest, None);
    assert!(e.message.contains("beyond the newest event"), "{e:?}");
}

/// The job's status and newest frame as `session.list_jobs` on `conn` reports them.
/// How `job` is listed once it no longer runs: its error frame is logged before the directory
/// records its end, as for any job, so a listing right after the frame may still say running.
async fn listed_ended(conn: &mut Conn, job: &str) -> (String, u64) {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let listed = listed(conn, job).await;
        if listed.0 != "running" || tokio::time::Instant::now() > deadline {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn listed(conn: &mut Conn, job: &str) -> (String, u64) {
    let jobs = conn.list_jobs().await;
    let listed = jobs.jobs.iter().find(|j| j.job_id == job).expect("listed");
    (listed.status.clone(), listed.last_event_seq)
}

/// `kill -9` of the replica running a job: the client resumes on the other replica with the
/// last sequence number it saw, receives every frame the dead replica wrote after it, then the
/// job's `INTERNAL_ERROR` within the bound, and nothing is missing or repeated. The job is
/// listed as ended; the dead replica's other session starts its resume window on the survivor
/// and can be resumed there, while the resumed one stays attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_job_ends_where_its_client_resumes_within_the_bound() {
    let deployment = Deployment::start().await;
    let (a, b) = (deployment.a.endpoint(), deployment.b.endpoint());
    let watched = session_with_a_ticker(&a, 100_000, 20, 10).await;
    let (idle, idle_welcome) = a.hello_with("alice-token", SESSION_FEATURES).await;
    let idle_session = idle_welcome.session_id.clone();
    let idle_token = welcome(&idle_welcome).resume_token.clone();
    // A session on B watching the job, which A delivers to its log.
    let (mut watcher, _) = b
        .hello_with("alice-token", &["subscribe", "progress"])
        .await;
    watcher.send(subscribe(&watched.job, false, None)).await;
    let subscribed_frame = watcher.recv().await;
    subscribed(&subscribed_frame);
    let tick = watcher.recv().await;
    assert_eq!(tick.job_id, watched.job, "A delivers to the subscriber");

    deployment.a.signal("KILL");
    let killed = Instant::now();
    drop(idle);
    // Some frames the client saw again, and the ones it missed.
    let after = watched.seqs[watched.seqs.len() / 2];
    let (mut conn, first) = resume(&b, &watched, after).await;
    let error_seq = expect_ticks_then_the_lost_error(&mut conn, &watched.job, after).await;
    let took = killed.elapsed();
    println!(
        "kill -9 to the job's error on the survivor: {took:?} (heartbeat {HEARTBEAT_SEC}s, \
         lease {LEASE:?}, sweep {SWEEP:?})"
    );
    assert!(
        took <= BOUND,
        "the lost job ended {took:?} after the kill, over {BOUND:?}"
    );
    assert!(
        error_seq > *watched.seqs.last().unwrap(),
        "every frame the client had seen is before the error"
    );
    assert_eq!(
        listed_ended(&mut conn, &watched.job).await,
        ("error".to_owned(), error_seq)
    );
    // The subscriber gets the job's end too, after what A delivered to it.
    let (ticks, end) = watcher.recv_until_terminal(&watched.job).await;
    let seqs: Vec<u64> = [&subscribed_frame, &tick]
        .into_iter()
        .chain(&ticks)
        .chain([&end])
        .map(|f| f.event_seq)
        .collect();
    let expected: Vec<u64> = (seqs[0]..seqs[0] + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "the subscriber's own numbering, gap-free");
    let error = job_error(&end);
    assert_eq!(
        (error.code.as_str(), error.retryable),
        ("INTERNAL_ERROR", true)
    );
    assert!(
        error.message.contains("replica replica-0 was lost"),
        "{error:?}"
    );

    let rotated = Watched {
        token: welcome(&first).resume_token.clone(),
        ..watched
    };
    expect_newest(&b, &rotated, error_seq).await;

    deployment
        .b
        .wait_for_line(&["resume window started", &format!("session={idle_session}")])
        .await;
    assert_eq!(
        deployment.b.lines_containing_all(&[
            "a lost replica's session detached",
            &format!("session={}", rotated.session),
        ]),
        0,
        "the session the client resumed on B stays attached there"
    );
    let (_idle, resumed) = b
        .resume_with_hello(
            "alice-token",
            SESSION_FEATURES,
            resume_info(&idle_session, &idle_token, 0),
        )
        .await;
    welcome(&resumed);
}

/// SIGSTOP of the replica running a job: the survivor takes it over once its lease ran out,
/// and the client resumed there gets the job's error as its last frame. SIGCONT: the paused
/// replica's appends are refused (nothing follows the error in the log, and it says so), it
/// learns it was lost, and it exits with a failure for its orchestrator to restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_taken_over_appends_nothing_when_it_comes_back_and_exits() {
    let Deployment {
        a: paused,
        b: survivor,
        _redis,
    } = Deployment::start().await;
    let (a, b) = (paused.endpoint(), survivor.endpoint());
    let watched = session_with_a_ticker(&a, 100_000, 10, 10).await;

    paused.signal("STOP");
    let after = *watched.seqs.last().unwrap();
    let (mut conn, first) = resume(&b, &watched, after).await;
    let error_seq = expect_ticks_then_the_lost_error(&mut conn, &watched.job, after).await;
    survivor
        .wait_for_line(&["took over the lost replica", "replica-0/"])
        .await;

    paused.signal("CONT");
    let (exit, output) = paused.exited().await;
    assert!(
        !exit.success(),
        "a lost replica exits with a failure: {exit}\n{output}"
    );
    assert!(output.contains("was declared lost"), "{output}");
    assert!(
        output.contains("takes nothing more from it"),
        "the paused replica's appends are refused: {output}"
    );

    // It is gone now: whatever it tried, the error is the session's newest frame.
    let rotated = Watched {
        token: welcome(&first).resume_token.clone(),
        ..watched
    };
    drop(conn);
    expect_newest(&b, &rotated, error_seq).await;
    let (mut conn, _) = resume(&b, &rotated, error_seq).await;
    assert_eq!(
        listed_ended(&mut conn, &rotated.job).await,
        ("error".to_owned(), error_seq)
    );
}
