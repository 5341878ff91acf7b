//! Prometheus metrics (`--metrics-listen`), through the real binary: a scripted workload whose
//! counts are known, then a scrape of `GET /metrics` over HTTP.

mod common;

use arcp_gateway::ErrorCode;
use common::*;

const METRICS_LINE: &str = "metrics listening";

/// Starts the gateway with metrics on an ephemeral port; returns it and where metrics are.
async fn gateway_with_metrics() -> (GatewayProcess, std::net::SocketAddr) {
    gateway_with_metrics_and(&[]).await
}

/// [`gateway_with_metrics`] with `extra` flags.
async fn gateway_with_metrics_and(extra: &[&str]) -> (GatewayProcess, std::net::SocketAddr) {
    let mut args = vec!["--metrics-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let process = GatewayProcess::start_with("info", None, &args).await;
    let addr = process.logged_addr(METRICS_LINE, "metrics_addr=").await;
    (process, addr)
}

#[tokio::test]
async fn a_scripted_workload_is_counted_exactly() {
    let (process, metrics) = gateway_with_metrics().await;
    let gateway = process.endpoint();

    // Session A: a ticker that succeeds (accepted, 3 progress, result), then one cancelled.
    let (mut a, _) = gateway.hello(GATEWAY_TOKEN).await;
    let (job, accepted_frame) = submit_and_accept(&mut a, ticker(3, 0)).await;
    let agent = accepted(&accepted_frame).agent.clone();
    assert!(agent.starts_with("ticker@"), "a name@version: {agent}");
    let (_, terminal) = a.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 5);
    let (long, _) = submit_and_accept(&mut a, ticker(1_000_000, 100)).await;
    a.send(cancel(&long)).await;
    let (_, cancelled) = a.recv_until_terminal(&long).await;
    assert_eq!(job_error(&cancelled).code, "CANCELLED");
    let a_frames = cancelled.event_seq;

    // Session B: a ticker seen to its end, a drop, and a resume that replays the last three
    // frames; then a live ticker of four frames on the resumed stream.
    let (mut b, w) = gateway.hello(GATEWAY_TOKEN).await;
    let session_b = w.session_id.clone();
    let token_b = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut b, ticker(3, 0)).await;
    let (_, terminal) = b.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 5);
    drop(b);
    eventually("session B counts as detached", || async {
        scrape(metrics).await.get("arcp_sessions_detached", &[]) == Some(1.0)
    })
    .await;
    let (mut b, first) = gateway
        .resume_with_hello(
            GATEWAY_TOKEN,
            FEATURES,
            resume_info(&session_b, &token_b, 2),
        )
        .await;
    welcome(&first);
    let replayed = recv_n(&mut b, 3).await;
    assert_eq!(event_seqs(&replayed), vec![3, 4, 5]);
    let (job, _) = submit_and_accept(&mut b, ticker(2, 0)).await;
    let (_, terminal) = b.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 9);

    // A resume with a token that was never issued, and a hello with a wrong bearer token.
    let (_refused, first) = gateway
        .resume_with_hello(
            GATEWAY_TOKEN,
            FEATURES,
            resume_info(&session_b, "not-a-token", 0),
        )
        .await;
    expect_error(&first, ErrorCode::ResumeWindowExpired, None);
    let mut stranger = gateway.open().await;
    stranger.send(hello("mallory-token", FEATURES, None)).await;
    expect_error(&stranger.recv().await, ErrorCode::Unauthenticated, None);

    let agent = agent.as_str();
    eventually("every job leaves the running gauge", || async {
        scrape(metrics)
            .await
            .get("arcp_jobs_running", &[("agent", agent)])
            == Some(0.0)
    })
    .await;
    let s = scrape(metrics).await;
    assert_eq!(s.value("arcp_jobs_started_total", &[("agent", agent)]), 4.0);
    let finished = |status| {
        s.get(
            "arcp_jobs_finished_total",
            &[("agent", agent), ("status", status)],
        )
    };
    assert_eq!(finished("success"), Some(3.0), "{}", s.text);
    assert_eq!(finished("cancelled"), Some(1.0), "{}", s.text);
    assert_eq!(finished("error"), None, "no job failed");

    let grpc = [("transport", "grpc")];
    // Every job frame of A once, B's five, the three replayed and B's four live ones.
    let delivered = (a_frames + 5 + 3 + 4) as f64;
    assert_eq!(s.value("arcp_frames_delivered_total", &grpc), delivered);
    assert_eq!(s.value("arcp_frames_replayed_total", &grpc), 3.0);
    assert_eq!(
        s.get("arcp_frames_delivered_total", &[("transport", "websocket")]),
        None
    );

    assert_eq!(
        s.value("arcp_resume_attempts_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        s.value(
            "arcp_resume_attempts_total",
            &[("outcome", "RESUME_WINDOW_EXPIRED")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "arcp_auth_failures_total",
            &[("check", "bearer"), ("code", "UNAUTHENTICATED")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "arcp_auth_failures_total",
            &[("check", "resume"), ("code", "RESUME_WINDOW_EXPIRED")]
        ),
        1.0
    );

    // A and B are attached, on one stream each; nothing is detached.
    assert_eq!(s.value("arcp_sessions_attached", &[]), 2.0);
    assert_eq!(s.value("arcp_sessions_detached", &[]), 0.0);
    assert_eq!(s.value("arcp_streams_open", &grpc), 2.0);
    // Nothing was acknowledged, so both logs still hold every frame.
    assert_eq!(
        s.value("arcp_log_retained_frames", &[]),
        (a_frames + 9) as f64
    );
    assert!(s.value("arcp_log_retained_bytes", &[]) > 0.0);

    // Five Session calls: A, B twice, the refused resume and the stranger's.
    let session_call = [("method", "/arcp.v1.Arcp/Session")];
    assert_eq!(s.value("arcp_grpc_requests_total", &session_call), 5.0);
    assert_no_unbounded_labels(&s);

    // Histograms: buckets, a count and a sum, with samples where the workload made some.
    for operation in ["log_append", "log_read", "session_create", "resume_check"] {
        let labels = [("operation", operation), ("store", "memory")];
        let count = s.value("arcp_store_operation_duration_seconds_count", &labels);
        assert!(count >= 1.0, "{operation} timed: {count}");
        let sum = s.value("arcp_store_operation_duration_seconds_sum", &labels);
        assert!(
            sum >= 0.0 && sum < 10.0 * count,
            "{operation}: sum {sum} of {count}"
        );
        let mut infinite = labels.to_vec();
        infinite.push(("le", "+Inf"));
        assert_eq!(
            s.value("arcp_store_operation_duration_seconds_bucket", &infinite),
            count,
            "the +Inf bucket holds every sample"
        );
    }
    let appends = s.value(
        "arcp_store_operation_duration_seconds_count",
        &[("operation", "log_append"), ("store", "memory")],
    );
    assert!(
        appends >= (a_frames + 9) as f64,
        "every frame was appended: {appends}"
    );
    // The ended calls: B's first stream, the refused resume's and the stranger's, at least.
    let ended = s.value("arcp_grpc_request_duration_seconds_count", &session_call);
    assert!((3.0..=5.0).contains(&ended), "{ended} Session calls ended");
    assert!(
        s.text.contains("# HELP arcp_frames_delivered_total"),
        "{}",
        s.text
    );

    let (status, _, _) = http_get(metrics, "/other").await;
    assert_eq!(status, 404, "only /metrics is served");
    drop((a, b, stranger));
    let (status, output) = process.terminate().await;
    assert!(status.success(), "exit {status}; output:\n{output}");
}

/// No label value names a session, a job, a token or a principal.
fn assert_no_unbounded_labels(s: &Scrape) {
    for line in s.text.lines().filter(|l| !l.starts_with('#')) {
        for secret in ["sess_", "job_", "alice", "mallory", "not-a-token"] {
            assert!(!line.contains(secret), "{secret} in a label: {line}");
        }
    }
}

#[tokio::test]
async fn websocket_frames_and_back_pressure_are_counted() {
    let (process, metrics) = gateway_with_metrics_and(&["--back-pressure-lag", "3"]).await;
    let gateway = process.endpoint();

    // Over gRPC with `ack` and nothing acknowledged: ten ticks past a lag limit of three draw
    // one back_pressure status (tests/ack.rs): accepted, ten ticks, the status, the result.
    let (mut conn, _) = gateway
        .hello_with(GATEWAY_TOKEN, &["ack", "progress"])
        .await;
    let (job, _) = submit_and_accept(&mut conn, ticker(10, 0)).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 13);

    // Over WebSocket: accepted, two ticks, the result.
    let (mut ws, _) = gateway.ws_hello(GATEWAY_TOKEN, &["progress"]).await;
    let (job, _) = ws.submit_ticker(2, 0).await;
    let frames = ws.recv_until_terminal(&job).await;
    assert_eq!(frames.len(), 3, "{frames:?}");

    let s = scrape(metrics).await;
    assert_eq!(
        s.value("arcp_back_pressure_total", &[("signal", "status")]),
        1.0
    );
    let delivered = |transport| s.get("arcp_frames_delivered_total", &[("transport", transport)]);
    assert_eq!(delivered("grpc"), Some(13.0), "{}", s.text);
    assert_eq!(delivered("websocket"), Some(4.0), "{}", s.text);
    assert_eq!(
        s.value("arcp_streams_open", &[("transport", "websocket")]),
        1.0
    );
    assert_eq!(s.value("arcp_streams_open", &[("transport", "grpc")]), 1.0);
    assert_eq!(s.value("arcp_sessions_attached", &[]), 2.0);
}

#[tokio::test]
async fn unknown_grpc_paths_are_counted_as_other() {
    let (process, metrics) = gateway_with_metrics().await;
    let channel = process.channel().await;
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/no.such.Service/Method");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let answer = client
        .unary(tonic::Request::new(()), path, codec)
        .await
        .expect_err("no such method");
    assert_eq!(answer.code(), tonic::Code::Unimplemented);
    let s = scrape(metrics).await;
    assert_eq!(
        s.value("arcp_grpc_requests_total", &[("method", "other")]),
        1.0
    );
    assert_eq!(
        s.value(
            "arcp_grpc_errors_total",
            &[("code", "UNIMPLEMENTED"), ("method", "other")]
        ),
        1.0
    );
    assert!(!s.text.contains("no.such.Service"), "{}", s.text);
}

#[tokio::test]
async fn without_the_flag_nothing_listens_for_metrics() {
    let process = GatewayProcess::start("info").await;
    // A session served: the process is past its start-up, SIGTERM handler included.
    let (conn, _) = process.endpoint().hello(GATEWAY_TOKEN).await;
    drop(conn);
    let (status, output) = process.terminate().await;
    assert!(status.success(), "exit {status}; output:\n{output}");
    assert!(!output.contains(METRICS_LINE), "{output}");
}

#[tokio::test]
async fn on_redis_retention_is_the_deployment_s_and_batches_are_timed() {
    let redis = RedisServer::start();
    let store = ["--store", redis.url()];
    let (a, a_metrics) = gateway_with_metrics_and(&store).await;
    let (_b, b_metrics) = gateway_with_metrics_and(&store).await;

    // On replica A: accepted, three ticks and the result, nothing acknowledged, so the log
    // retains all five.
    let (mut conn, _) = a.endpoint().hello(GATEWAY_TOKEN).await;
    let (job, _) = submit_and_accept(&mut conn, ticker(3, 0)).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 5);

    // Each replica shows what the deployment's logs retain, B (which holds no session) too.
    for metrics in [a_metrics, b_metrics] {
        let s = scrape(metrics).await;
        assert_eq!(s.value("arcp_log_retained_frames", &[]), 5.0, "{}", s.text);
        assert!(s.value("arcp_log_retained_bytes", &[]) > 0.0, "{}", s.text);
    }

    // A's store calls went to Redis, each batch of appended frames a timed round trip.
    let s = scrape(a_metrics).await;
    for operation in ["log_commit", "log_read", "session_create"] {
        let labels = [("operation", operation), ("store", "redis")];
        let count = s.value("arcp_store_operation_duration_seconds_count", &labels);
        assert!(count >= 1.0, "{operation} timed: {count}\n{}", s.text);
    }
    let commits = s.value(
        "arcp_store_operation_duration_seconds_count",
        &[("operation", "log_commit"), ("store", "redis")],
    );
    assert!(commits <= 5.0, "at most one batch a frame: {commits}");
    assert_eq!(
        s.get(
            "arcp_store_operation_duration_seconds_count",
            &[("operation", "log_append"), ("store", "memory")]
        ),
        None,
        "nothing went to a memory log"
    );
}
