//! Agents over stdio: real child processes, declared the way `--agents FILE` declares them,
//! behind a real gateway. The example agents of `examples/agents/` (the hand-written NDJSON
//! one, and one on the reference Python SDK's runtime), then children that misbehave in every
//! way the gateway promises to survive, then the binary's start-up checks of the file.
//!
//! Processes are watched through `/proc`: a test waits for a pid to be gone (or a zombie
//! nobody reaped yet), polling observable state under a deadline, never a fixed sleep.
//! Python is required: without `python3` the tests fail and say so.

mod common;

use std::{path::Path, time::Duration};

use arcp_gateway::{
    agent::agents_file::AgentsFile,
    proto::{self, client_frame::Payload as In, job_event::Body, server_frame::Payload as Out},
};
use common::*;
use serde_json::json;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// A guard against hangs, not a timing assertion: processes end in milliseconds.
const GONE_TIMEOUT: Duration = Duration::from_secs(20);

/// One stdio entry named `name@1.0.0` running `command`, with `extra` keys.
fn stdio_entry(name: &str, command: &[&str], extra: &str) -> String {
    let argv: Vec<String> = command.iter().map(|a| quoted(a)).collect();
    format!(
        "[[agents]]\nname = {}\nversion = \"1.0.0\"\nbackend = \"stdio\"\ncommand = [{}]\n{extra}\n",
        quoted(name),
        argv.join(", ")
    )
}

fn ndjson_echo() -> String {
    format!("{ROOT}/examples/agents/ndjson_echo.py")
}

/// The gateway with `examples/agents/ndjson_echo.py` as `ndjson-echo`.
async fn echo_gateway(extra: &str) -> TestServer {
    let dir = scratch("echo");
    let toml = stdio_entry(
        "ndjson-echo",
        &[system_python(), &ndjson_echo()],
        &format!("agent = \"echo\"\n{extra}"),
    );
    gateway_with_agents(&toml, &dir).await
}

fn status_message(frame: &proto::ServerFrame) -> Option<&str> {
    match event_body(frame) {
        Some(Body::Status(s)) => Some(&s.message),
        _ => None,
    }
}

/// The pid a child announced in a `status` or `log` of `pid N`.
fn announced_pid(frame: &proto::ServerFrame) -> Option<i32> {
    let text = status_message(frame).or_else(|| log_message(frame))?;
    text.strip_prefix("pid ")?.trim().parse().ok()
}

/// Receives until the child of `job` announced its pid.
async fn child_pid(conn: &mut Conn, job: &str) -> i32 {
    let job = job.to_owned();
    let (_, frame) = conn
        .recv_until(move |f| {
            assert!(
                !(f.job_id == job && is_terminal(f)),
                "the job ended before its child said its pid: {f:?}"
            );
            f.job_id == job && announced_pid(f).is_some()
        })
        .await;
    announced_pid(&frame).expect("a pid")
}

/// Whether `pid` runs (a zombie does not: it has ended and only waits to be reaped).
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

async fn wait_gone(pid: i32, what: &str) {
    let deadline = tokio::time::Instant::now() + GONE_TIMEOUT;
    while running(pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} (pid {pid}) still runs after {GONE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pids whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
                && running(*pid)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The hand-written NDJSON agent
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_ndjson_agent_streams_its_events_in_order_to_its_result() {
    let server = echo_gateway("").await;
    let (mut conn, _) = server.hello("alice-token").await;
    let input = json!({"text": "hi", "count": 3, "interval_ms": 5});
    let (job, accepted) = submit_and_accept(&mut conn, submit("ndjson-echo", input)).await;
    assert_eq!(
        common::accepted(&accepted).agent,
        "ndjson-echo@1.0.0",
        "the gateway's own name for the agent"
    );
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    let pid = announced_pid(&events[0]).expect("the first event names the child's pid");
    let logs: Vec<_> = events.iter().filter_map(log_message).collect();
    assert_eq!(logs, ["echo 1/3: hi", "echo 2/3: hi", "echo 3/3: hi"]);
    let progress: Vec<_> = events.iter().filter_map(progress_current).collect();
    assert_eq!(progress, [1.0, 2.0, 3.0]);
    // The gateway's numbering, gapless from the acceptance on.
    let seqs = event_seqs(std::iter::once(&accepted).chain(&events).chain([&terminal]));
    let first = seqs[0];
    assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>());
    assert!(events.iter().all(|f| f.job_id == job));
    assert_eq!(result_json(&terminal), json!({"echo": "hi", "count": 3}));
    wait_gone(pid, "the finished job's child").await;
    server.stop().await;
}

/// The client's session survives a dropped stream while its job runs in the child: the
/// resume replays what the child emitted meanwhile, once, and the live events follow.
#[tokio::test]
async fn a_session_resumed_mid_job_gets_every_event_of_the_child_once() {
    let server = echo_gateway("").await;
    let input = json!({"text": "r", "count": 20, "interval_ms": 10});
    let frames = resumed_mid_job(&server, submit("ndjson-echo", input), |f| {
        f.iter().filter_map(log_message).count() >= 3
    })
    .await;
    let logs: Vec<String> = frames
        .iter()
        .filter_map(log_message)
        .map(String::from)
        .collect();
    let expected: Vec<String> = (1..=20).map(|i| format!("echo {i}/20: r")).collect();
    assert_eq!(logs, expected);
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_job_cancels_its_child_which_exits() {
    let server = echo_gateway("").await;
    let (mut conn, _) = server.hello("alice-token").await;
    let input = json!({"count": 100_000, "interval_ms": 20});
    let (job, _) = submit_and_accept(&mut conn, submit("ndjson-echo", input)).await;
    let pid = child_pid(&mut conn, &job).await;
    conn.send(cancel(&job)).await;
    conn.expect_cancelled(&job).await;
    wait_gone(pid, "the cancelled job's child").await;
    server.stop().await;
}

#[tokio::test]
async fn a_job_past_its_max_runtime_times_out_and_its_child_is_ended() {
    let server = echo_gateway("").await;
    let (mut conn, _) = server.hello("alice-token").await;
    let input = json!({"count": 100_000, "interval_ms": 20});
    let (job, _) = submit_and_accept(&mut conn, submit_with_runtime("ndjson-echo", input, 1)).await;
    let pid = child_pid(&mut conn, &job).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_error(&terminal).code, "TIMEOUT", "{terminal:?}");
    wait_gone(pid, "the timed-out job's child").await;
    server.stop().await;
}

#[tokio::test]
async fn a_job_beyond_max_children_waits_for_a_slot_and_can_be_cancelled_meanwhile() {
    let server = echo_gateway("max_children = 1").await;
    let (mut conn, _) = server.hello("alice-token").await;
    let long = json!({"count": 100_000, "interval_ms": 20});
    let (first, _) = submit_and_accept(&mut conn, submit("ndjson-echo", long.clone())).await;
    let pid = child_pid(&mut conn, &first).await;
    let (waiting, _) = submit_and_accept(&mut conn, submit("ndjson-echo", long)).await;
    conn.send(cancel(&waiting)).await;
    conn.expect_cancelled(&waiting).await;
    // The first job's child never had a sibling, and runs on.
    assert!(running(pid));
    conn.send(cancel(&first)).await;
    conn.expect_cancelled(&first).await;
    wait_gone(pid, "the first job's child").await;
    // Its slot came back with its end: a new job gets a child.
    let short = json!({"count": 1, "interval_ms": 1});
    let (third, _) = submit_and_accept(&mut conn, submit("ndjson-echo", short)).await;
    let (_, terminal) = conn.recv_until_terminal(&third).await;
    assert_eq!(result_json(&terminal)["count"], 1);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The reference Python SDK's runtime as the child
// ---------------------------------------------------------------------------------------------

async fn sdk_gateway(marker: &str) -> TestServer {
    sdk_gateway_with(marker, "").await
}

/// [`sdk_gateway`] with `extra` keys in its entry.
async fn sdk_gateway_with(marker: &str, extra: &str) -> TestServer {
    let dir = scratch("sdk");
    let python = interop_python().to_str().expect("a UTF-8 path").to_owned();
    let script = format!("{ROOT}/examples/agents/python_sdk_agent.py");
    let toml = stdio_entry(
        "sdk-count",
        &[&python, &script, marker],
        &format!("agent = \"count\"\n{extra}"),
    );
    gateway_with_agents(&toml, &dir).await
}

#[tokio::test]
async fn the_reference_sdk_runtime_streams_a_job_to_its_result() {
    let server = sdk_gateway("sdk-stream").await;
    let (mut conn, _) = server.hello("alice-token").await;
    let input = json!({"count": 3, "interval_ms": 5, "text": "sdk"});
    // With a trace context, which reaches the child as its trace id.
    conn.send_frame(proto::ClientFrame {
        id: "traced".into(),
        trace_id: TRACEPARENT.into(),
        payload: Some(submit("sdk-count", input)),
        ..Default::default()
    })
    .await;
    let job = accepted(&conn.recv().await).job_id.clone();
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    let logs: Vec<_> = events.iter().filter_map(log_message).collect();
    assert_eq!(logs, ["counting to 3", "tick 1", "tick 2", "tick 3"]);
    let progress: Vec<_> = events.iter().filter_map(progress_current).collect();
    assert_eq!(progress, [1.0, 2.0, 3.0]);
    let result = result_json(&terminal);
    assert_eq!(result["counted"], 3, "{result}");
    assert_eq!(result["text"], "sdk", "{result}");
    assert_eq!(
        result["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the trace-id field of the client's traceparent: {result}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_reference_sdk_runtime_is_cancelled_through_job_cancel() {
    let marker = format!("sdk-cancel-{}", std::process::id());
    let server = sdk_gateway(&marker).await;
    let (mut conn, _) = server.hello("alice-token").await;
    let input = json!({"count": 100_000, "interval_ms": 20});
    let (job, _) = submit_and_accept(&mut conn, submit("sdk-count", input)).await;
    let (_, _) = conn.recv_until(|f| log_message(f) == Some("tick 1")).await;
    let pids = pids_with(&marker);
    assert_eq!(pids.len(), 1, "one child runs the job: {pids:?}");
    conn.send(cancel(&job)).await;
    conn.expect_cancelled(&job).await;
    wait_gone(pids[0], "the SDK child").await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Long-lived children, several jobs each
// ---------------------------------------------------------------------------------------------

/// The frames of `jobs` up to each one's terminal frame, read off one connection, in the
/// order they came.
async fn until_all_end(conn: &mut Conn, jobs: &[String]) -> Vec<proto::ServerFrame> {
    let mut frames = Vec::new();
    let mut open = jobs.len();
    while open > 0 {
        let frame = conn.recv().await;
        if jobs.contains(&frame.job_id) {
            if is_terminal(&frame) {
                open -= 1;
            }
            frames.push(frame);
        }
    }
    frames
}

/// The frames of `job` among `frames`.
fn of_job<'a>(frames: &'a [proto::ServerFrame], job: &str) -> Vec<&'a proto::ServerFrame> {
    frames.iter().filter(|f| f.job_id == job).collect()
}

#[tokio::test]
async fn a_long_lived_child_runs_several_jobs_at_once_and_outlives_them() {
    let marker = format!("sdk-shared-{}", std::process::id());
    let server = sdk_gateway_with(
        &marker,
        "long_lived = true\njobs_per_child = 3\nmax_children = 1\nidle_timeout_sec = 2",
    )
    .await;
    let (mut conn, _) = server.hello("alice-token").await;
    let mut jobs = Vec::new();
    for n in [4, 5, 6] {
        let input = json!({"count": n, "interval_ms": 20, "text": format!("job of {n}")});
        jobs.push(
            submit_and_accept(&mut conn, submit("sdk-count", input))
                .await
                .0,
        );
    }
    let frames = until_all_end(&mut conn, &jobs).await;
    let pids = pids_with(&marker);
    assert_eq!(pids.len(), 1, "one child ran the three jobs: {pids:?}");
    for (job, n) in jobs.iter().zip([4, 5, 6]) {
        let frames = of_job(&frames, job);
        let ticks: Vec<&str> = frames.iter().filter_map(|f| log_message(f)).collect();
        let mut expected = vec![format!("counting to {n}")];
        expected.extend((1..=n).map(|i| format!("tick {i}")));
        assert_eq!(ticks, expected, "{job} got its own events, each once");
        let result = result_json(frames.last().expect("a terminal frame"));
        assert_eq!(result["text"], format!("job of {n}"), "{result}");
    }
    // At once: the last job had begun before the first one ended.
    let first_end = frames
        .iter()
        .position(|f| f.job_id == jobs[0] && is_terminal(f));
    let last_begun = frames.iter().position(|f| f.job_id == jobs[2]);
    assert!(last_begun < first_end, "the jobs overlapped");
    // A later job goes to the same child; once it has none for its idle timeout, it ends.
    let (job, _) = submit_and_accept(
        &mut conn,
        submit("sdk-count", json!({"count": 1, "interval_ms": 1})),
    )
    .await;
    conn.recv_until_terminal(&job).await;
    assert_eq!(pids_with(&marker), pids, "the same child");
    wait_gone(pids[0], "the idle long-lived child").await;
    server.stop().await;
}

#[tokio::test]
async fn cancelling_one_job_of_a_long_lived_child_leaves_the_others_running() {
    let marker = format!("sdk-shared-cancel-{}", std::process::id());
    let server = sdk_gateway_with(&marker, "long_lived = true\njobs_per_child = 2").await;
    let (mut conn, _) = server.hello("alice-token").await;
    let long = json!({"count": 100_000, "interval_ms": 20});
    let (doomed, _) = submit_and_accept(&mut conn, submit("sdk-count", long)).await;
    let short = json!({"count": 10, "interval_ms": 20});
    let (kept, _) = submit_and_accept(&mut conn, submit("sdk-count", short)).await;
    let doomed_id = doomed.clone();
    conn.recv_until(move |f| f.job_id == doomed_id && log_message(f) == Some("tick 1"))
        .await;
    conn.send(cancel(&doomed)).await;
    let frames = until_all_end(&mut conn, &[doomed.clone(), kept.clone()]).await;
    let doomed_frames = of_job(&frames, &doomed);
    let doomed_end = doomed_frames.last().expect("a terminal frame");
    assert_eq!(job_error(doomed_end).code, "CANCELLED", "{doomed_end:?}");
    let kept_frames = of_job(&frames, &kept);
    let kept_end = kept_frames.last().expect("a terminal frame");
    assert_eq!(result_json(kept_end)["counted"], 10, "{kept_end:?}");
    let pids = pids_with(&marker);
    assert_eq!(pids.len(), 1, "the child serves on: {pids:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_long_lived_child_that_dies_ends_its_jobs_and_the_next_job_gets_a_new_one() {
    let marker = format!("sdk-shared-crash-{}", std::process::id());
    let server = sdk_gateway_with(&marker, "long_lived = true\njobs_per_child = 2").await;
    let (mut conn, _) = server.hello("alice-token").await;
    let long = json!({"count": 100_000, "interval_ms": 20});
    let (first, _) = submit_and_accept(&mut conn, submit("sdk-count", long.clone())).await;
    let (second, _) = submit_and_accept(&mut conn, submit("sdk-count", long)).await;
    let second_id = second.clone();
    conn.recv_until(move |f| f.job_id == second_id && log_message(f) == Some("tick 1"))
        .await;
    let pids = pids_with(&marker);
    assert_eq!(pids.len(), 1, "{pids:?}");
    // SAFETY: kill has no memory-safety preconditions; the pid is the test's own child's.
    unsafe {
        libc::kill(pids[0], libc::SIGKILL);
    }
    let frames = until_all_end(&mut conn, &[first.clone(), second.clone()]).await;
    for job in [&first, &second] {
        let frames = of_job(&frames, job);
        let end = frames.last().expect("a terminal frame");
        let error = job_error(end);
        assert_eq!(error.code, "INTERNAL_ERROR", "{end:?}");
        assert!(
            error.message.contains("the agent process"),
            "{}",
            error.message
        );
    }
    let (job, _) = submit_and_accept(
        &mut conn,
        submit("sdk-count", json!({"count": 1, "interval_ms": 1})),
    )
    .await;
    let (_, end) = conn.recv_until_terminal(&job).await;
    assert_eq!(result_json(&end)["counted"], 1, "{end:?}");
    let now = pids_with(&marker);
    assert!(
        now.len() == 1 && now != pids,
        "a new child: {now:?} after {pids:?}"
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Children that misbehave
// ---------------------------------------------------------------------------------------------

/// A child that opens the session and accepts the job properly, announces its pid, then does
/// what its first argument says.
const MISBEHAVING: &str = r#"
import json, os, subprocess, sys, time

def send(kind, payload):
    sys.stdout.write(json.dumps({"arcp": "1.1", "id": "x", "type": kind, "job_id": "j1",
                                 "payload": payload}) + "\n")
    sys.stdout.flush()

def log(message):
    send("job.event", {"kind": "log", "ts": "2026-01-01T00:00:00Z",
                       "body": {"level": "info", "message": message}})

def read():
    line = sys.stdin.readline()
    return json.loads(line) if line else None

mode = sys.argv[1]
while mode == "mute":
    time.sleep(1000)
read()
send("session.welcome", {"session_id": "s1", "resume_token": "t", "runtime": {"name": "bad", "version": "0"}})
submitted = read()
send("job.accepted", {"job_id": "j1"})
if mode == "grandchild":
    sleeper = subprocess.Popen(["sleep", "1000"])
    log(f"grandchild {sleeper.pid}")
log(f"pid {os.getpid()}")
if mode == "crash":
    os._exit(3)
elif mode == "silent_exit":
    sys.exit(0)
elif mode == "huge_line":
    sys.stdout.write("x" * (10 * 1024 * 1024) + "\n")
    sys.stdout.flush()
elif mode == "garbage":
    print("hello, I am not JSON", flush=True)
elif mode == "not_arcp":
    print(json.dumps({"jsonrpc": "2.0", "method": "hello"}), flush=True)
elif mode == "invalid_event":
    send("job.event", {"kind": "progress", "ts": "2026-01-01T00:00:00Z", "body": {"current": -1}})
elif mode == "after_result":
    send("job.result", {"final_status": "success", "result": {"done": True}, "completed_at": "2026-01-01T00:00:00Z"})
    for i in range(3):
        log(f"after the result {i}")
elif mode == "spend":
    log("lease " + json.dumps(submitted["payload"].get("lease_request")))
    send("job.event", {"kind": "metric", "ts": "2026-01-01T00:00:00Z",
                       "body": {"name": "cost.inference", "value": 0.4, "unit": "USD"}})
    send("job.result", {"final_status": "success", "result": None, "completed_at": "2026-01-01T00:00:00Z"})
elif mode == "job_error":
    send("job.error", {"code": "PERMISSION_DENIED", "message": "the child says no", "completed_at": "2026-01-01T00:00:00Z"})
elif mode == "grandchild":
    # Well behaved but for its leak: it ends its job on cancel and exits, leaving the sleep.
    while True:
        frame = read()
        if frame is None or frame.get("type") == "job.cancel":
            send("job.error", {"code": "CANCELLED", "message": "cancelled", "completed_at": "2026-01-01T00:00:00Z"})
            sys.exit(0)
# ignore_cancel, and every mode above once done: stay, deaf to stdin and to job.cancel.
while True:
    time.sleep(1000)
"#;

/// A gateway whose agent `bad-<mode>` runs [`MISBEHAVING`] in each of `modes`, with a short
/// cancel grace.
async fn misbehaving_gateway(modes: &[&str]) -> TestServer {
    let dir = scratch("misbehaving");
    let script = dir.join("misbehaving.py");
    std::fs::write(&script, MISBEHAVING).expect("write the script");
    let script = script.to_str().expect("a UTF-8 path").to_owned();
    let toml: String = modes
        .iter()
        .map(|mode| {
            stdio_entry(
                &format!("bad-{}", mode.replace('_', "-")),
                &[system_python(), &script, mode],
                "cancel_grace_sec = 0.3",
            )
        })
        .collect();
    gateway_with_agents(&toml, &dir).await
}

/// Submits `payload` while other jobs' frames may arrive; returns the job id.
async fn submit_amid(conn: &mut Conn, payload: In) -> String {
    let request_id = conn.send(payload).await;
    let (_, frame) = conn
        .recv_until(
            move |f| matches!(&f.payload, Some(Out::JobAccepted(a)) if a.request_id == request_id),
        )
        .await;
    accepted(&frame).job_id.clone()
}

/// Runs `bad-<mode>`: returns the child's pid and the job's terminal frame.
async fn run_bad(conn: &mut Conn, mode: &str) -> (i32, proto::ServerFrame) {
    let agent = format!("bad-{}", mode.replace('_', "-"));
    let job = submit_amid(conn, submit(&agent, json!({}))).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    let pid = events
        .iter()
        .filter(|f| f.job_id == job)
        .find_map(announced_pid)
        .unwrap_or_else(|| panic!("{mode}: the child said its pid: {events:?} {terminal:?}"));
    (pid, terminal)
}

fn expect_internal<'a>(terminal: &'a proto::ServerFrame, cause: &str) -> &'a proto::JobError {
    let e = job_error(terminal);
    assert_eq!(e.code, "INTERNAL_ERROR", "{e:?}");
    assert!(e.retryable, "INTERNAL_ERROR is retryable (§12): {e:?}");
    assert!(
        e.message.contains(cause),
        "the message names the cause ({cause:?}): {e:?}"
    );
    e
}

#[tokio::test]
async fn every_way_a_child_breaks_ends_its_job_with_an_internal_error_and_the_session_carries_on() {
    let cases = [
        ("crash", "crashed (exit status: 3)"),
        ("silent_exit", "exited before the end of its job"),
        ("huge_line", "a line longer than 4194304 bytes"),
        ("garbage", "not JSON"),
        ("not_arcp", "no type"),
        ("invalid_event", "progress event the gateway refuses"),
    ];
    let modes: Vec<&str> = cases.iter().map(|(m, _)| *m).collect();
    let server = misbehaving_gateway(&modes).await;
    let (mut conn, _) = server.hello("alice-token").await;
    // A well-behaved job runs beside them all.
    let ticker = json!({"count": 1_000_000, "interval_ms": 10});
    let (bystander, _) = submit_and_accept(&mut conn, submit("ticker", ticker)).await;
    for (mode, cause) in cases {
        let (pid, terminal) = run_bad(&mut conn, mode).await;
        expect_internal(&terminal, cause);
        wait_gone(pid, mode).await;
    }
    // The session carries on: the bystander still runs, and a new job runs to its end.
    let echo = submit_amid(&mut conn, submit("echo", json!({"still": "here"}))).await;
    let (_, terminal) = conn.recv_until_terminal(&echo).await;
    assert_eq!(result_json(&terminal), json!({"still": "here"}));
    // A job that had ended could not be cancelled.
    conn.send(cancel(&bystander)).await;
    conn.expect_cancelled(&bystander).await;
    server.stop().await;
}

#[tokio::test]
async fn a_childs_job_error_keeps_its_code_and_message() {
    let server = misbehaving_gateway(&["job_error"]).await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (pid, terminal) = run_bad(&mut conn, "job_error").await;
    let e = job_error(&terminal);
    assert_eq!(e.code, "PERMISSION_DENIED", "{e:?}");
    assert_eq!(e.message, "the child says no");
    // It ignored the end of its session: the grace ran out, and the group was killed.
    wait_gone(pid, "the child after its job.error").await;
    server.stop().await;
}

#[tokio::test]
async fn a_child_gets_the_effective_lease_and_its_cost_metrics_charge_the_budget() {
    let server = misbehaving_gateway(&["spend"]).await;
    let (mut conn, _) = server
        .hello_with("alice-token", &["cost.budget", "progress"])
        .await;
    let budget = lease(&[("cost.budget", &["USD:1.00"])]);
    let (job, _) =
        submit_and_accept(&mut conn, submit_leased("bad-spend", json!({}), budget)).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    job_result(&terminal);
    let logs: Vec<_> = events.iter().filter_map(log_message).collect();
    assert!(
        logs.contains(&r#"lease {"cost.budget": ["USD:1.00"]}"#),
        "the child sees the lease: {logs:?}"
    );
    let metrics: Vec<_> = events
        .iter()
        .filter_map(|f| match event_body(f) {
            Some(Body::Metric(m)) => Some((m.name.clone(), m.value, m.unit.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(metrics.len(), 2, "{metrics:?}");
    assert_eq!(metrics[0].0, "cost.inference");
    assert_eq!(metrics[1].0, "cost.budget.remaining");
    assert!((metrics[1].1 - 0.6).abs() < 1e-9, "{metrics:?}");
    assert_eq!(metrics[1].2, "USD");
    server.stop().await;
}

#[tokio::test]
async fn a_child_that_never_answers_the_hello_ends_its_job() {
    let dir = scratch("mute");
    let script = dir.join("misbehaving.py");
    std::fs::write(&script, MISBEHAVING).expect("write the script");
    let toml = stdio_entry(
        "mute",
        &[system_python(), script.to_str().unwrap(), "mute"],
        "welcome_timeout_sec = 0.5\ncancel_grace_sec = 0.3",
    );
    let server = gateway_with_agents(&toml, &dir).await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, submit("mute", json!({}))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    expect_internal(&terminal, "did not answer session.hello within 500ms");
    server.stop().await;
}

#[tokio::test]
async fn a_child_that_ignores_cancel_is_killed_after_the_grace() {
    let server = misbehaving_gateway(&["ignore_cancel"]).await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, submit("bad-ignore-cancel", json!({}))).await;
    let pid = child_pid(&mut conn, &job).await;
    conn.send(cancel(&job)).await;
    conn.expect_cancelled(&job).await;
    wait_gone(pid, "the child that ignores cancel").await;
    server.stop().await;
}

#[tokio::test]
async fn events_after_the_result_are_ignored() {
    let server = misbehaving_gateway(&["after_result"]).await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, submit("bad-after-result", json!({}))).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(result_json(&terminal), json!({"done": true}));
    let pid = events.iter().find_map(announced_pid).expect("a pid");
    wait_gone(pid, "the child that wrote after its result").await;
    // Nothing of the job follows its result.
    let after = sync_with_ping(&mut conn, "after").await;
    assert!(after.iter().all(|f| f.job_id != job), "{after:?}");
    server.stop().await;
}

#[tokio::test]
async fn after_cancel_the_whole_process_group_is_gone() {
    let server = misbehaving_gateway(&["grandchild"]).await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, submit("bad-grandchild", json!({}))).await;
    let grandchild_job = job.clone();
    let (_, frame) = conn
        .recv_until(move |f| {
            f.job_id == grandchild_job
                && log_message(f).is_some_and(|m| m.starts_with("grandchild "))
        })
        .await;
    let grandchild: i32 = log_message(&frame)
        .and_then(|m| m.strip_prefix("grandchild "))
        .and_then(|p| p.parse().ok())
        .expect("the grandchild's pid");
    let pid = child_pid(&mut conn, &job).await;
    assert!(running(grandchild), "the grandchild runs before the cancel");
    conn.send(cancel(&job)).await;
    conn.expect_cancelled(&job).await;
    wait_gone(pid, "the child").await;
    wait_gone(grandchild, "the grandchild the child left behind").await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The binary: the inventory it offers, and the files it refuses to start with
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_welcome_lists_the_stdio_agents_of_the_binary() {
    let dir = scratch("inventory");
    let echo = ndjson_echo();
    let mut toml = String::from("builtins = false\n");
    toml.push_str(&stdio_entry(
        "ndjson-echo",
        &[system_python(), &echo],
        "agent = \"echo\"",
    ));
    toml.push_str(
        "[[agents]]\nname = \"ndjson-echo\"\nversion = \"2.0.0\"\nbackend = \"stdio\"\n\
         command = [\"python3\", \"ndjson_echo.py\"]\nagent = \"echo\"\n\
         cwd = \"../../../../examples/agents\"\n",
    );
    toml.push_str("[[agents]]\nname = \"repeat\"\nversion = \"1.0.0\"\nbackend = \"builtin\"\nbuiltin = \"echo\"\n");
    let file = dir.join("agents.toml");
    std::fs::write(&file, &toml).expect("write the agents file");
    // The cwd above is relative to the file: check the layout it assumes.
    assert!(dir
        .join("../../../../examples/agents/ndjson_echo.py")
        .exists());
    let process =
        GatewayProcess::start_with("info", None, &["--agents", file.to_str().unwrap()]).await;
    let (mut conn, welcome_frame) = process.endpoint().hello("alice-token").await;
    let listed = inventory(&welcome_frame);
    assert_eq!(
        listed,
        [
            (
                "ndjson-echo".to_owned(),
                vec!["1.0.0".to_owned(), "2.0.0".to_owned()],
                "2.0.0".to_owned()
            ),
            (
                "repeat".to_owned(),
                vec!["1.0.0".to_owned()],
                "1.0.0".to_owned()
            ),
        ]
    );
    // Through the binary, with the child's stderr in the gateway's log under the job's id.
    let input = json!({"text": "bin", "count": 1, "interval_ms": 1});
    let (job, _) = submit_and_accept(&mut conn, submit("ndjson-echo@1.0.0", input)).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(result_json(&terminal)["echo"], "bin");
    process
        .wait_for_line(&["arcp_gateway::agent::stdio", &job, "ndjson_echo: job"])
        .await;
    let (status, _) = process.terminate().await;
    assert!(status.success(), "{status}");
}

/// Runs `serve --agents` on `toml`; returns the exit code and stderr.
async fn refused(name: &str, toml: &str) -> (Option<i32>, String) {
    let dir = scratch(name);
    let file = dir.join("agents.toml");
    std::fs::write(&file, toml).expect("write the agents file");
    let out = tokio::time::timeout(
        PROCESS_TIMEOUT,
        command(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ws-listen",
            "127.0.0.1:0",
            "--agents",
            file.to_str().unwrap(),
        ])
        .output(),
    )
    .await
    .expect("the gateway exits at once")
    .expect("the gateway runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_bad_agents_file_stops_the_binary_naming_the_entry() {
    let good = stdio_entry("good", &["sh", "-c", "true"], "");
    let cases = [
        (
            "syntax",
            format!("{good}[[agents]\nname = \"x\""),
            vec!["agents.toml", "TOML parse error"],
        ),
        (
            "wrong-type",
            format!("{good}[[agents]]\nname = \"summarize\"\nversion = \"1.0.0\"\nbackend = \"stdio\"\ncommand = \"python3 x.py\"\n"),
            vec!["agents[1] (summarize@1.0.0): ", "invalid type"],
        ),
        (
            "unknown-key",
            format!("{good}{}", stdio_entry("summarize", &["sh"], "colour = \"blue\"")),
            vec!["agents[1] (summarize@1.0.0): ", "unknown field `colour`"],
        ),
        (
            "missing-command",
            format!("{good}{}", stdio_entry("summarize", &["no-such-agent-binary"], "")),
            vec![
                "agents[1] (summarize@1.0.0): ",
                "\"no-such-agent-binary\" is not found on PATH",
            ],
        ),
        (
            "missing-script-path",
            format!("{good}{}", stdio_entry("summarize", &["./nope.sh"], "")),
            vec!["agents[1] (summarize@1.0.0): ", "\"./nope.sh\" does not exist"],
        ),
        (
            "upstream",
            format!("{good}[[agents]]\nname = \"research\"\nversion = \"2.1.0\"\nbackend = \"upstream\"\nurl = \"ws://research.internal:8080/arcp\"\ntoken_env = \"ARCP_TEST_UNSET_UPSTREAM_TOKEN\"\n"),
            vec!["agents[1] (research@2.1.0): ", "token_env names \"ARCP_TEST_UNSET_UPSTREAM_TOKEN\", which is not set"],
        ),
    ];
    for (name, toml, expected) in cases {
        let (code, stderr) = refused(name, &toml).await;
        assert_eq!(code, Some(2), "{name}: exit code; stderr:\n{stderr}");
        for text in expected {
            assert!(
                stderr.contains(text),
                "{name}: stderr names {text:?}:\n{stderr}"
            );
        }
    }
}

#[test]
fn the_examples_agents_files_load() {
    for file in ["ndjson_echo.toml", "python_sdk_agent.toml"] {
        let path = Path::new(ROOT).join("examples/agents").join(file);
        let agents = AgentsFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
        agents.registry().unwrap_or_else(|e| panic!("{e}"));
    }
}
