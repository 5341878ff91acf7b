//! Agents in another ARCP runtime, reached over WebSocket (`backend = "upstream"`), behind a
//! real gateway: the reference Python SDK's runtime (`examples/agents/python_upstream.py`) as
//! the upstream, then this gateway itself as the upstream of another one, with a TCP proxy
//! between the two that drops the connection mid-job.
//!
//! With the Python runtime, a drop loses what the job emits meanwhile (it resumes the session
//! but replays nothing of the job), which the gateway must turn into an explicit error. With
//! this gateway upstream, the resume is exact, and the job must reach its end with every
//! event once. Python with the reference SDK is required: without it the tests fail and say
//! so.

mod common;

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
};

use arcp_gateway::{
    config::GatewayConfig,
    proto::{self, server_frame::Payload as Out},
    server::ServeOptions,
    transport::tls::Tls,
    Gateway,
};
use common::*;
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const UPSTREAM_TOKEN: &str = "upstream-secret";

/// `examples/agents/python_upstream.py` on an ephemeral port, its stderr kept for the test.
struct PythonUpstream {
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
    _child: Child,
}

impl PythonUpstream {
    async fn start() -> PythonUpstream {
        let mut child = Command::new(interop_python())
            .arg(format!("{ROOT}/examples/agents/python_upstream.py"))
            .env("RESEARCH_TOKEN", UPSTREAM_TOKEN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start examples/agents/python_upstream.py");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let kept = stderr.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut kept = kept.lock().expect("stderr lock");
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(FRAME_TIMEOUT, stdout.next_line())
            .await
            .expect("the upstream says its port")
            .expect("read its stdout");
        let port: u16 = first
            .as_deref()
            .and_then(|l| l.strip_prefix("PORT "))
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the upstream printed {first:?}, not its port; stderr: {}",
                    stderr.lock().expect("stderr lock")
                )
            });
        PythonUpstream {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            stderr,
            _child: child,
        }
    }

    /// Waits until its stderr has a line containing `text`.
    async fn wait_for_stderr(&self, text: &str) {
        let stderr = self.stderr.clone();
        wait_until(
            &format!("the upstream's stderr to say {text:?}"),
            move || stderr.lock().expect("stderr lock").contains(text),
        )
        .await;
    }
}

/// One upstream entry `name@version` for the agent `agent` at `addr`, with `extra` keys.
fn upstream_entry(name: &str, version: &str, addr: SocketAddr, agent: &str, extra: &str) -> String {
    format!(
        "[[agents]]\nname = {}\nversion = {}\nbackend = \"upstream\"\nurl = \"ws://{addr}/arcp\"\n\
         agent = {}\n{extra}\n",
        quoted(name),
        quoted(version),
        quoted(agent)
    )
}

/// The `token` key presenting `token` upstream.
fn token(token: &str) -> String {
    format!("token = {}\n", quoted(token))
}

/// A gateway whose `research@2.1.0` is the upstream's `count` and `research-wait@1.0.0` its
/// `wait`, both at `addr`.
async fn fronting(addr: SocketAddr, extra: &str) -> TestServer {
    let dir = scratch("upstream");
    let extra = format!("{}{extra}", token(UPSTREAM_TOKEN));
    let toml = format!(
        "builtins = false\n{}{}",
        upstream_entry("research", "2.1.0", addr, "count", &extra),
        upstream_entry("research-wait", "1.0.0", addr, "wait", &extra)
    );
    gateway_with_agents(&toml, &dir).await
}

fn contiguous(seqs: &[u64]) -> bool {
    seqs.windows(2).all(|w| w[1] == w[0] + 1)
}

#[tokio::test]
async fn an_upstream_runtime_streams_a_job_through_the_gateway() {
    let upstream = PythonUpstream::start().await;
    let server = fronting(upstream.addr, "").await;
    let (mut conn, welcomed) = server.hello("alice-token").await;
    let listed: Vec<_> = inventory(&welcomed)
        .into_iter()
        .map(|(name, versions, _)| (name, versions))
        .collect();
    assert_eq!(
        listed,
        [
            ("research".to_owned(), vec!["2.1.0".to_owned()]),
            ("research-wait".to_owned(), vec!["1.0.0".to_owned()])
        ]
    );
    conn.send_frame(proto::ClientFrame {
        id: "traced".into(),
        trace_id: TRACEPARENT.into(),
        payload: Some(submit("research", json!({"count": 3, "interval_ms": 5}))),
        ..Default::default()
    })
    .await;
    let accepted_frame = conn.recv().await;
    assert_eq!(accepted(&accepted_frame).agent, "research@2.1.0");
    let job = accepted(&accepted_frame).job_id.clone();
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    let logs: Vec<_> = events.iter().filter_map(log_message).collect();
    assert_eq!(logs, ["counting to 3"]);
    let progress: Vec<_> = events.iter().filter_map(progress_current).collect();
    assert_eq!(progress, [1.0, 2.0, 3.0]);
    let result = result_json(&terminal);
    assert_eq!(result["counted"], 3, "{result}");
    assert_eq!(
        result["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the trace id reaches the upstream: {result}"
    );
    // The gateway's own job id and numbering.
    assert!(events.iter().all(|f| f.job_id == job));
    let seqs = event_seqs(
        std::iter::once(&accepted_frame)
            .chain(&events)
            .chain([&terminal]),
    );
    assert!(contiguous(&seqs), "{seqs:?}");
    server.stop().await;
}

/// The client's session survives a dropped stream while its job runs upstream: the resume
/// replays what the upstream emitted meanwhile, once, and the live events follow.
#[tokio::test]
async fn a_client_resumed_mid_job_gets_every_event_of_the_upstream_job_once() {
    let upstream = PythonUpstream::start().await;
    let server = fronting(upstream.addr, "").await;
    let input = json!({"count": 20, "interval_ms": 10});
    let frames = resumed_mid_job(&server, submit("research", input), |f| {
        f.iter().filter_map(progress_current).count() >= 3
    })
    .await;
    let terminal = frames.last().expect("a terminal frame");
    assert_eq!(result_json(terminal)["counted"], 20, "{terminal:?}");
    let progress: Vec<_> = frames.iter().filter_map(progress_current).collect();
    let expected: Vec<f64> = (1..=20).map(f64::from).collect();
    assert_eq!(progress, expected);
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_job_cancels_it_upstream() {
    let upstream = PythonUpstream::start().await;
    let server = fronting(upstream.addr, "").await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, submit("research-wait", json!({}))).await;
    conn.recv_until(|f| log_message(f) == Some("waiting to be cancelled"))
        .await;
    conn.send(cancel(&job)).await;
    conn.expect_cancelled(&job).await;
    upstream.wait_for_stderr("cancelled ").await;
    server.stop().await;
}

#[tokio::test]
async fn a_job_past_its_max_runtime_times_out_and_is_cancelled_upstream() {
    let upstream = PythonUpstream::start().await;
    let server = fronting(upstream.addr, "").await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(
        &mut conn,
        submit_with_runtime("research-wait", json!({}), 1),
    )
    .await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_error(&terminal).code, "TIMEOUT", "{terminal:?}");
    upstream.wait_for_stderr("cancelled ").await;
    server.stop().await;
}

/// The reference runtime resumes the gateway's upstream session after a drop, but the job's
/// events and end went to the lost connection: the gateway says so rather than letting its
/// client see a job that stops or ends short, and the session goes on.
#[tokio::test]
async fn events_an_upstream_loses_across_a_drop_end_the_job_with_an_error() {
    let upstream = PythonUpstream::start().await;
    let cutter = Cutter::start(upstream.addr).await;
    let server = fronting(cutter.addr, "check_interval_sec = 0.2").await;
    let (mut conn, _) = server.hello("alice-token").await;
    let input = json!({"count": 100, "interval_ms": 20});
    let (job, _) = submit_and_accept(&mut conn, submit("research", input)).await;
    conn.recv_until(|f| progress_current(f) == Some(3.0)).await;
    cutter.cut();
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    let error = job_error(&terminal);
    assert_eq!(error.code, "INTERNAL_ERROR", "{terminal:?}");
    assert!(
        error.message.contains("the upstream runtime lost"),
        "the error names the loss: {}",
        error.message
    );
    let progress: Vec<_> = events.iter().filter_map(progress_current).collect();
    assert!(
        progress.len() < 97,
        "the job could not have been complete: {progress:?}"
    );
    // The session and its next job carry on.
    let (next, _) = submit_and_accept(
        &mut conn,
        submit("research", json!({"count": 1, "interval_ms": 1})),
    )
    .await;
    let (_, terminal) = conn.recv_until_terminal(&next).await;
    assert_eq!(result_json(&terminal)["counted"], 1);
    server.stop().await;
}

/// This gateway as the upstream of another: its resume is exact, so the job relayed through
/// repeated drops of the connection between the two reaches its end with every event once.
#[tokio::test]
async fn a_job_relayed_to_an_exact_upstream_survives_drops_with_every_event_once() {
    let upstream = TestServer::start_default().await;
    let cutter = Cutter::start(upstream.ws_addr).await;
    let dir = scratch("upstream-gateway");
    let toml = upstream_entry(
        "far-ticker",
        "1.0.0",
        cutter.addr,
        "ticker",
        &token("alice-token"),
    );
    let server = gateway_with_agents(&toml, &dir).await;
    let (mut conn, _) = server.hello("alice-token").await;
    let count = 60;
    let input = json!({"count": count, "interval_ms": 10});
    let (job, accepted_frame) = submit_and_accept(&mut conn, submit("far-ticker", input)).await;
    let mut frames = vec![accepted_frame];
    for cut_at in [5.0, 20.0, 40.0] {
        let (before, at) = conn
            .recv_until(move |f| progress_current(f) == Some(cut_at))
            .await;
        frames.extend(before);
        frames.push(at);
        cutter.cut();
    }
    let (rest, terminal) = conn.recv_until_terminal(&job).await;
    frames.extend(rest);
    assert_eq!(
        result_json(&terminal),
        json!({"ticks": count}),
        "{terminal:?}"
    );
    frames.push(terminal);
    let progress: Vec<_> = frames.iter().filter_map(progress_current).collect();
    let expected: Vec<f64> = (1..=count).map(f64::from).collect();
    assert_eq!(progress, expected, "every tick once, in order");
    assert!(contiguous(&event_seqs(&frames)));
    assert_eq!(
        upstream.session_count(),
        1,
        "each reconnect resumed the one upstream session"
    );
    server.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn an_upstream_that_cannot_be_reached_or_refuses_the_token_ends_the_job() {
    // Nothing listens on a port just released.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("an address")
    };
    let upstream = PythonUpstream::start().await;
    let dir = scratch("upstream-refusals");
    let toml = format!(
        "{}{}",
        upstream_entry(
            "gone",
            "1.0.0",
            closed,
            "count",
            "reconnect_timeout_sec = 0.5"
        ),
        upstream_entry("research", "1.0.0", upstream.addr, "count", "")
            .replace(&quoted(UPSTREAM_TOKEN), "\"not-the-token\"")
    );
    let server = gateway_with_agents(&toml, &dir).await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, submit("gone", json!({}))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    let error = job_error(&terminal);
    assert_eq!(error.code, "INTERNAL_ERROR");
    assert!(error.retryable);
    assert!(
        error.message.contains(&format!("ws://{closed}/arcp"))
            && error.message.contains("could not be reached"),
        "{}",
        error.message
    );
    let (job, _) = submit_and_accept(&mut conn, submit("research", json!({}))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    let error = job_error(&terminal);
    assert!(
        error
            .message
            .contains("refused the gateway's session.hello"),
        "{}",
        error.message
    );
    // The session carries on.
    conn.send(ping("after")).await;
    conn.recv_until(|f| matches!(f.payload, Some(Out::SessionPong(_))))
        .await;
    server.stop().await;
}

/// `wss://`: the upstream's certificate checked against the entry's `ca_file`, and refused
/// without it.
#[tokio::test]
async fn a_wss_upstream_is_reached_over_tls_trusting_its_ca_file() {
    let pki = Pki::new("upstream CA");
    let tls = Tls::load(pki.server_settings(&pki.server("upstream"))).expect("TLS loads");
    let options = ServeOptions {
        tls: Some(tls),
        health: None,
    };
    let upstream =
        TestServer::start_with_options(Gateway::builder(GatewayConfig::default()), options).await;
    let ca = pki.path("ca.pem");
    std::fs::write(&ca, &pki.ca).expect("write the CA");
    let url = format!("wss://{SERVER_NAME}:{}/arcp", upstream.ws_addr.port());
    let entry = |name: &str, extra: &str| {
        format!(
            "[[agents]]\nname = {}\nversion = \"1.0.0\"\nbackend = \"upstream\"\nurl = {}\n\
             agent = \"echo\"\nreconnect_timeout_sec = 0.5\n{}{extra}\n",
            quoted(name),
            quoted(&url),
            token("alice-token")
        )
    };
    let toml = format!(
        "{}{}",
        entry(
            "trusting",
            &format!("ca_file = {}", quoted(ca.to_str().expect("UTF-8")))
        ),
        entry("untrusting", "")
    );
    let server = gateway_with_agents(&toml, &scratch("upstream-wss")).await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, submit("trusting", json!({"over": "wss"}))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(
        result_json(&terminal),
        json!({"over": "wss"}),
        "{terminal:?}"
    );
    let (job, _) = submit_and_accept(&mut conn, submit("untrusting", json!({}))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    let error = job_error(&terminal);
    assert!(
        error.message.contains("TLS handshake"),
        "a certificate the system does not trust: {}",
        error.message
    );
    server.stop().await;
    upstream.stop().await;
}
