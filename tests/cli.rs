//! `arcp-gateway client` through the real gateway binary: without a terminal (plain lines, exit
//! codes from how the job ended (success, failure, Ctrl-C's cancellation, timeout) and for a
//! gateway that cannot be reached or refuses the token, `--json` lines, `jobs`, `tail`, and
//! `attach` and `cancel` taking up the session a detached or killed `submit` kept), and in a
//! pseudo-terminal (tmux), where it draws a progress bar and, when a TCP proxy between it and
//! the gateway drops its stream mid-job, resumes, says how many events the gateway replayed,
//! and ends the job with every event seen once.

mod common;

use std::{net::SocketAddr, os::unix::fs::PermissionsExt, path::PathBuf, process::Stdio};

use arcp_gateway::{
    client::{Client, ClientConfig},
    proto::{job_event::Body, server_frame::Payload as Out},
};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

/// The state directory the tests' clients keep sessions in: the test binary's own, not the
/// user's.
fn state_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-state-{}", std::process::id()))
}

/// The file in which `client submit` keeps the session of `job`.
fn kept_session(job: &str) -> PathBuf {
    state_dir().join("sessions").join(format!("{job}.json"))
}

/// `client --endpoint http://ADDR --token alice-token --state-dir DIR ARGS`: the arguments
/// of `arcp-gateway` for a client of the gateway at `addr`.
fn client_args(addr: SocketAddr, args: &[&str]) -> Vec<String> {
    let state = state_dir();
    let mut full = vec![
        "client".to_owned(),
        "--endpoint".to_owned(),
        format!("http://{addr}"),
        "--token".to_owned(),
        GATEWAY_TOKEN.to_owned(),
        "--state-dir".to_owned(),
        state.to_str().expect("a UTF-8 path").to_owned(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    full
}

/// `arcp-gateway` [`client_args`], stdout and stderr piped: no terminal.
fn client(addr: SocketAddr, args: &[&str]) -> tokio::process::Command {
    let full = client_args(addr, args);
    command(&full.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Runs `cmd` to its end: its exit code, stdout and stderr.
async fn run(mut cmd: tokio::process::Command) -> (i32, String, String) {
    let out = tokio::time::timeout(PROCESS_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not exit within {PROCESS_TIMEOUT:?}"))
        .expect("run arcp-gateway client");
    (
        out.status.code().expect("an exit code, not a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `client submit ticker --input INPUT EXTRA` against `addr`, run to its end.
async fn submit_ticker(addr: SocketAddr, input: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["submit", "ticker", "--input", input];
    args.extend_from_slice(extra);
    run(client(addr, &args)).await
}

/// `text`'s lines as JSON objects; fails on a line that is not one.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{text}"));
            assert!(value.is_object(), "not an object: {line}");
            value
        })
        .collect()
}

/// The job frames' `event_seq`s in JSON lines, which must be contiguous, each once.
fn assert_each_event_once(lines: &[Value]) {
    let seqs: Vec<u64> = lines
        .iter()
        .filter_map(|l| l["event_seq"].as_u64())
        .filter(|seq| *seq != 0)
        .collect();
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + seqs.len() as u64).collect::<Vec<_>>(),
        "in order, no gap, no repeat"
    );
}

/// The `current` of every progress event in JSON lines.
fn progress_currents(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l["kind"] == "progress")
        .map(|l| l["current"].as_f64().expect("a current") as u64)
        .collect()
}

/// A child's stdout, read a line at a time as it comes.
struct Following {
    child: tokio::process::Child,
    lines: Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
}

impl Following {
    fn spawn(mut cmd: tokio::process::Command) -> Following {
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the client");
        let stdout = child.stdout.take().expect("stdout");
        Following {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// `client submit ticker --json` of `count` ticks 20 ms apart through `addr`, followed up to
    /// the job's acceptance; with the job's id.
    async fn ticker_accepted(addr: SocketAddr, count: u64) -> (Following, String) {
        let input = json!({"count": count, "interval_ms": 20}).to_string();
        let mut following = Following::spawn(client(
            addr,
            &["submit", "ticker", "--json", "--input", &input],
        ));
        let job = accepted_job_id(
            &following
                .until("the acceptance", |l| l.contains("job.accepted"))
                .await,
        );
        (following, job)
    }

    /// Reads lines until one holds `pred`; returns it.
    async fn until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        loop {
            let line = tokio::time::timeout(PROCESS_TIMEOUT, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {PROCESS_TIMEOUT:?}: {:?}", self.seen))
                .expect("read stdout")
                .unwrap_or_else(|| panic!("stdout ended before {what}: {:?}", self.seen));
            self.seen.push(line.clone());
            if pred(&line) {
                return line;
            }
        }
    }

    /// Waits for a client that was killed to be gone.
    async fn finish_killed(mut self) -> Vec<String> {
        tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait())
            .await
            .expect("the killed client exits")
            .expect("wait for the client");
        self.seen
    }

    /// Reads the rest; the exit code and every line read.
    async fn finish(mut self) -> (i32, Vec<String>) {
        while let Some(line) = tokio::time::timeout(PROCESS_TIMEOUT, self.lines.next_line())
            .await
            .expect("stdout ends")
            .expect("read stdout")
        {
            self.seen.push(line);
        }
        let status = tokio::time::timeout(PROCESS_TIMEOUT, self.child.wait())
            .await
            .expect("the client exits")
            .expect("wait for the client");
        (status.code().expect("an exit code"), self.seen)
    }
}

/// A library client of the gateway at `addr`, as alice.
async fn library_client(addr: SocketAddr) -> Client {
    Client::connect(ClientConfig::new(format!("http://{addr}"), GATEWAY_TOKEN))
        .await
        .expect("the library client connects")
}

/// A gateway process, and a job of `input` on `ticker` that a library client's session
/// (returned too, to keep it open) submitted there.
async fn ticker_of_another_session(input: Value) -> (GatewayProcess, Client, String) {
    let gateway = GatewayProcess::start("info").await;
    let mut submitter = library_client(gateway.addr).await;
    let job = submitter.submit("ticker", &input).await.expect("accepted");
    (gateway, submitter, job)
}

/// Reads `watcher`'s frames until `job` reports progress `at_least` far.
async fn wait_for_progress(watcher: &mut Client, job: &str, at_least: f64) {
    loop {
        let frame = tokio::time::timeout(FRAME_TIMEOUT, watcher.next())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("the session is open");
        if let Some(Out::JobEvent(e)) = &frame.payload {
            if let Some(Body::Progress(p)) = &e.body {
                if frame.job_id == job && p.current >= at_least {
                    return;
                }
            }
        }
    }
}

#[tokio::test]
async fn without_a_terminal_submit_prints_plain_lines_and_exits_0_on_success() {
    let gateway = GatewayProcess::start("info").await;
    let (code, stdout, stderr) = run(client(gateway.addr, &["submit", "showcase"])).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(!stdout.contains('\u{1b}'), "no escape codes: {stdout:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("job job_") && lines[0].ends_with("accepted (showcase@1.0.0)"),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("] info: starting")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("] progress 1/2")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with("] progress 2/2")),
        "{stdout}"
    );
    let last = lines.last().expect("a last line");
    assert!(
        last.starts_with("job ended: success after ") && last.ends_with(": \"done\""),
        "{stdout}"
    );
    assert_eq!(stderr, "");
}

#[tokio::test]
async fn a_failed_job_exits_3_and_a_job_cancelled_by_ctrl_c_exits_4() {
    let gateway = GatewayProcess::start("info").await;
    let (code, stdout, stderr) = submit_ticker(gateway.addr, r#"{"count": "many"}"#, &[]).await;
    assert_eq!(code, 3, "{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("job ended: error") && last.contains("INVALID_REQUEST"),
        "{stdout}"
    );

    let mut following = Following::spawn(client(
        gateway.addr,
        &[
            "submit",
            "ticker",
            "--input",
            r#"{"count": 100000, "interval_ms": 20}"#,
        ],
    ));
    following
        .until("a progress line", |l| l.contains("] progress "))
        .await;
    let pid = following.child.id().expect("running");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let (code, lines) = following.finish().await;
    assert_eq!(code, 4, "{lines:?}");
    let last = lines.last().expect("a last line");
    assert!(last.starts_with("job ended: cancelled"), "{lines:?}");
}

#[tokio::test]
async fn a_job_that_runs_out_of_time_exits_5() {
    let gateway =
        GatewayProcess::start_with("info", None, &["--default-max-runtime-sec", "1"]).await;
    let (code, stdout, stderr) =
        submit_ticker(gateway.addr, r#"{"count": 100000, "interval_ms": 20}"#, &[]).await;
    assert_eq!(code, 5, "{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("job ended: timed_out") && last.contains("TIMEOUT"),
        "{stdout}"
    );
}

#[tokio::test]
async fn json_output_is_one_object_a_line_with_every_event_once() {
    let gateway = GatewayProcess::start("info").await;
    let (code, stdout, stderr) = submit_ticker(
        gateway.addr,
        r#"{"count": 5, "interval_ms": 0}"#,
        &["--json"],
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines[0]["type"], "job.accepted");
    assert_eq!(lines[0]["agent"], "ticker@1.0.0");
    assert_each_event_once(&lines);
    assert_eq!(progress_currents(&lines), vec![1, 2, 3, 4, 5]);
    assert!(lines
        .iter()
        .filter(|l| l["kind"] == "progress")
        .all(|l| l["total"] == 5.0));
    let end = lines.last().expect("an end");
    assert_eq!(end["type"], "job.ended");
    assert_eq!(end["final_status"], "success");
    assert_eq!(end["detail"], json!({"ticks": 5}));
    assert_eq!(end["events"], 7, "accepted, five events and the result");
}

#[tokio::test]
async fn jobs_lists_the_principal_s_jobs() {
    let gateway = GatewayProcess::start("info").await;
    let (code, stdout, _) = run(client(
        gateway.addr,
        &["submit", "echo", "--json", "--input", r#"{"x": 1}"#],
    ))
    .await;
    assert_eq!(code, 0, "{stdout}");
    let job = json_lines(&stdout)[0]["job_id"]
        .as_str()
        .expect("a job id")
        .to_owned();

    let (code, stdout, stderr) = run(client(gateway.addr, &["jobs", "--json"])).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let listed = json_lines(&stdout);
    let entry = listed
        .iter()
        .find(|j| j["job_id"] == job.as_str())
        .unwrap_or_else(|| panic!("{job} not in {stdout}"));
    assert_eq!(entry["agent"], "echo@1.0.0");
    assert_eq!(entry["status"], "success");

    let (code, stdout, _) = run(client(gateway.addr, &["jobs"])).await;
    assert_eq!(code, 0);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&job))
        .unwrap_or_else(|| panic!("{job} not in {stdout}"));
    assert!(
        line.contains("echo@1.0.0") && line.contains("success"),
        "{line}"
    );
}

#[tokio::test]
async fn tail_follows_a_job_of_another_session_from_its_start_to_its_end() {
    let (gateway, _submitter, job) =
        ticker_of_another_session(json!({"count": 20, "interval_ms": 20})).await;
    let (code, stdout, stderr) = run(client(gateway.addr, &["tail", &job, "--json"])).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines = json_lines(&stdout);
    assert_eq!(lines[0]["type"], "job.subscribed");
    assert_each_event_once(&lines);
    assert_eq!(progress_currents(&lines), (1..=20).collect::<Vec<_>>());
    let end = lines.last().expect("an end");
    assert_eq!(end["final_status"], "success");
    assert_eq!(end["detail"], json!({"ticks": 20}));

    // A job that has ended already: its end, at once.
    let (code, stdout, _) = run(client(gateway.addr, &["tail", &job])).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("job ended: success")),
        "{stdout}"
    );
}

#[tokio::test]
async fn cancel_without_the_submitting_session_is_refused_and_says_why() {
    let (gateway, mut submitter, job) =
        ticker_of_another_session(json!({"count": 100000, "interval_ms": 20})).await;
    // Only the submitting session may cancel (§7.4), and no session of this job is kept: the
    // command's own session asks, and is refused.
    let (code, stdout, stderr) = run(client(gateway.addr, &["cancel", &job])).await;
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    assert!(
        stderr.contains("only the session that submitted a job may cancel it"),
        "{stderr}"
    );
    let (code, _, stderr) = run(client(gateway.addr, &["cancel", "job_no_such_job"])).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("JOB_NOT_FOUND"), "{stderr}");
    let (code, _, stderr) = run(client(gateway.addr, &["attach", "job_no_such_job"])).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no session of job job_no_such_job is kept"),
        "{stderr}"
    );
    submitter.cancel(&job).await.expect("the submitter cancels");
}

/// The job id in the JSON line of a job's acceptance.
fn accepted_job_id(line: &str) -> String {
    let accepted: Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(accepted["type"], "job.accepted", "{line}");
    accepted["job_id"].as_str().expect("a job id").to_owned()
}

#[tokio::test]
async fn cancel_takes_up_the_session_a_detached_submit_kept_and_cancels_its_job() {
    let gateway = GatewayProcess::start("info").await;
    let (code, stdout, stderr) = submit_ticker(
        gateway.addr,
        r#"{"count": 100000, "interval_ms": 20}"#,
        &["--detach", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().count(), 1, "only the acceptance: {stdout}");
    let job = accepted_job_id(&stdout);
    let file = kept_session(&job);
    let mode = std::fs::metadata(&file)
        .unwrap_or_else(|e| panic!("{} kept: {e}", file.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the resume token is the user's only");
    let kept = std::fs::read_to_string(&file).expect("read the kept session");

    // The job runs on, its session detached.
    let mut watcher = library_client(gateway.addr).await;
    watcher.subscribe(&job, false).await.expect("subscribed");
    wait_for_progress(&mut watcher, &job, 2.0).await;

    let (code, stdout, stderr) = run(client(gateway.addr, &["cancel", &job])).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the end: {stdout}");
    assert!(lines[0].starts_with("job ended: cancelled"), "{stdout}");
    assert!(!file.exists(), "the ended job's session is forgotten");
    let token: Value = serde_json::from_str(&kept).expect("JSON");
    let token = token["resume_token"].as_str().expect("a token");
    assert!(
        !stdout.contains(token) && !stderr.contains(token),
        "the token is not shown"
    );

    let (code, stdout, _) = run(client(gateway.addr, &["jobs", "--json"])).await;
    assert_eq!(code, 0);
    let listed = json_lines(&stdout);
    let entry = listed
        .iter()
        .find(|j| j["job_id"] == job.as_str())
        .unwrap_or_else(|| panic!("{job} not in {stdout}"));
    assert_eq!(entry["status"], "cancelled");
}

#[tokio::test]
async fn attach_takes_up_the_session_of_a_killed_submit_and_follows_its_job_once_to_the_end() {
    let gateway = GatewayProcess::start("info").await;
    let (mut following, job) = Following::ticker_accepted(gateway.addr, 40).await;
    following
        .until("a progress event", |l| l.contains("progress"))
        .await;
    following.child.start_kill().expect("kill the client");
    let _ = following.finish_killed().await;
    assert!(
        kept_session(&job).exists(),
        "the killed client's session is kept"
    );

    let (code, stdout, stderr) = run(client(gateway.addr, &["attach", &job, "--json"])).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let lines = json_lines(&stdout);
    let resumed = lines
        .iter()
        .find(|l| l["type"] == "resumed")
        .unwrap_or_else(|| panic!("no resume reported: {stdout}"));
    assert_eq!(
        resumed["after_event_seq"], 1,
        "from the acceptance: {resumed}"
    );
    assert_each_event_once(&lines);
    assert_eq!(progress_currents(&lines), (1..=40).collect::<Vec<_>>());
    let end = lines.last().expect("an end");
    assert_eq!(end["final_status"], "success");
    assert_eq!(
        end["events"], 41,
        "every progress event and the result, once"
    );
    assert!(
        !kept_session(&job).exists(),
        "the ended job's session is forgotten"
    );

    // With its job ended, nothing of the session is kept to take up.
    let (code, _, stderr) = run(client(gateway.addr, &["attach", &job])).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("no session of job {job} is kept")),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unreachable_gateway_or_a_refused_token_has_its_own_exit_code() {
    let gateway = GatewayProcess::start("info").await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("an address")
    };
    let (code, _, stderr) = run(client(closed, &["jobs"])).await;
    assert_eq!(code, 6, "{stderr}");

    let endpoint = format!("http://{}", gateway.addr);
    let (code, _, stderr) = run(command(&[
        "client",
        "--endpoint",
        &endpoint,
        "--token",
        "not-a-token",
        "jobs",
    ]))
    .await;
    assert_eq!(code, 6, "{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    assert!(!stderr.contains("not-a-token"), "the token is not echoed");

    let (code, _, stderr) = run(command(&["client", "--endpoint", &endpoint, "jobs"])).await;
    assert_eq!(code, 2, "no token is bad usage: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_a_dropped_stream_is_resumed_and_said_so() {
    let gateway = GatewayProcess::start("info").await;
    let cutter = Cutter::start(gateway.addr).await;
    let (mut following, job) = Following::ticker_accepted(cutter.addr, 60).await;
    let mut watcher = library_client(gateway.addr).await;
    watcher.subscribe(&job, false).await.expect("subscribed");
    following
        .until("a progress event", |l| l.contains("progress"))
        .await;
    cutter.cut_and_refuse();
    // While the client is kept away, the job goes on: what it logs meanwhile is replayed.
    wait_for_progress(&mut watcher, &job, 30.0).await;
    cutter.admit();
    let (code, lines) = following.finish().await;
    assert_eq!(code, 0, "{lines:?}");
    let lines = json_lines(&lines.join("\n"));
    let resumed = lines
        .iter()
        .find(|l| l["type"] == "resumed")
        .unwrap_or_else(|| panic!("no resume reported: {lines:?}"));
    assert!(
        resumed["replayed"].as_u64().expect("a count") >= 10,
        "{resumed}"
    );
    assert_each_event_once(&lines);
    assert_eq!(progress_currents(&lines), (1..=60).collect::<Vec<_>>());
    let end = lines.last().expect("an end");
    assert_eq!(end["final_status"], "success");
    assert_eq!(end["events"], 62);
}

/// `arcp-gateway client ... submit ticker` through `addr`, in a terminal.
fn ticker_in_a_terminal(addr: SocketAddr, count: u64, interval_ms: u64) -> Terminal {
    let input = json!({"count": count, "interval_ms": interval_ms});
    submit_in_a_terminal(addr, "ticker", &input)
}

/// `arcp-gateway client ... submit AGENT --input INPUT` through `addr`, in a terminal.
fn submit_in_a_terminal(addr: SocketAddr, agent: &str, input: &Value) -> Terminal {
    let input = input.to_string();
    let args = client_args(addr, &["submit", agent, "--input", &input]);
    let mut line = vec![env!("CARGO_BIN_EXE_arcp-gateway")];
    line.extend(args.iter().map(String::as_str));
    Terminal::start(&line)
}

/// The bar's `POS/LEN` on `screen`, if a bar (`[===>   ] POS/LEN`) is drawn.
fn bar_position(screen: &str, len: u64) -> Option<u64> {
    screen.lines().find_map(|line| {
        let (bar, rest) = line.split_once("] ")?;
        let drawn = bar.rsplit_once('[')?.1;
        if !drawn.chars().all(|c| "=> ".contains(c)) || drawn.len() != 40 {
            return None;
        }
        let (pos, total) = rest.split_whitespace().next()?.split_once('/')?;
        (total.parse::<u64>().ok()? == len).then(|| pos.parse().ok())?
    })
}

/// The job id in the `job JOB accepted` line on `screen`.
fn accepted_job(screen: &str) -> Option<String> {
    screen.lines().find_map(|line| {
        let rest = line.strip_prefix("job ")?;
        let (job, tail) = rest.split_once(' ')?;
        tail.starts_with("accepted").then(|| job.to_owned())
    })
}

#[tokio::test]
async fn on_a_terminal_a_progress_bar_is_drawn_and_finished() {
    let gateway = GatewayProcess::start("info").await;
    let terminal = ticker_in_a_terminal(gateway.addr, 100, 30);
    let screen = terminal
        .wait_for("a bar part of the way", |s| {
            bar_position(s, 100).is_some_and(|pos| (1..100).contains(&pos))
        })
        .await;
    assert!(accepted_job(&screen).is_some(), "{screen}");
    let (status, screen) = terminal.exit_status().await;
    assert_eq!(status, 0, "{screen}");
    assert_eq!(bar_position(&screen, 100), Some(100), "{screen}");
    assert!(
        screen.contains("job ended: success after 102 events"),
        "{screen}"
    );
}

#[tokio::test]
async fn on_a_terminal_log_lines_are_printed_above_the_bar() {
    let gateway = GatewayProcess::start("info").await;
    let terminal = submit_in_a_terminal(gateway.addr, "showcase", &json!({}));
    let (status, screen) = terminal.exit_status().await;
    assert_eq!(status, 0, "{screen}");
    let row = |pred: &dyn Fn(&str) -> bool| {
        screen
            .lines()
            .position(pred)
            .unwrap_or_else(|| panic!("missing a line on\n{screen}"))
    };
    let log = row(&|l| l.ends_with("] info: starting"));
    let bar = row(&|l| bar_position(l, 2) == Some(2));
    let end = row(&|l| l.starts_with("job ended: success"));
    assert!(log < bar && bar < end, "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_a_dropped_stream_is_resumed_and_every_event_seen_once() {
    let gateway = GatewayProcess::start("info").await;
    let cutter = Cutter::start(gateway.addr).await;
    let terminal = ticker_in_a_terminal(cutter.addr, 80, 20);
    let screen = terminal
        .wait_for("a bar part of the way", |s| {
            bar_position(s, 80).is_some_and(|pos| pos >= 1)
        })
        .await;
    let job = accepted_job(&screen).unwrap_or_else(|| panic!("no job id on\n{screen}"));
    let mut watcher = library_client(gateway.addr).await;
    watcher.subscribe(&job, false).await.expect("subscribed");
    cutter.cut_and_refuse();
    let at_cut = bar_position(&terminal.screen(), 80).unwrap_or(0);
    wait_for_progress(&mut watcher, &job, (at_cut + 20) as f64).await;
    cutter.admit();
    let screen = terminal
        .wait_for("the resume", |s| s.contains("events replayed"))
        .await;
    let replayed: u64 = screen
        .lines()
        .find_map(|l| {
            let (before, _) = l.split_once(" events replayed")?;
            before.rsplit(' ').next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no count of replayed events on\n{screen}"));
    assert!(replayed >= 10, "{screen}");
    let (status, screen) = terminal.exit_status().await;
    assert_eq!(status, 0, "{screen}");
    assert_eq!(bar_position(&screen, 80), Some(80), "{screen}");
    assert!(
        screen.contains("job ended: success after 82 events"),
        "every event once: accepted, 80 progress events and the result\n{screen}"
    );
}
