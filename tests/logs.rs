//! The process's log: no secret ever reaches it, at any level; `--log-format json` writes one
//! JSON object per line with no empty field; text written to a pipe carries no colour codes.

mod common;

use arcp_gateway::ErrorCode;
use common::*;
use serde_json::{json, Value};

/// The bearer token the session authenticates with: distinctive, so that any occurrence in the
/// log is this token.
const BEARER: &str = "bearer-7c1e93f0a4d2b6e8";

/// A token the gateway does not accept, presented once.
const WRONG_BEARER: &str = "wrong-bearer-51d0c8e7a9f3";

const CREDENTIAL_FEATURES: &[&str] = &["provisioned_credentials", "progress", "agent_versions"];

/// Every level the gateway logs at: `trace` for the gateway itself (which has no `trace`
/// events today, but may), `debug` for its libraries (hyper, h2, tonic, tungstenite), whose
/// `trace` is each frame on the wire.
const EVERY_LEVEL: &str = "debug,arcp_gateway=trace";

/// A gateway writing JSON lines at [`EVERY_LEVEL`], accepting [`BEARER`] and issuing
/// provisioned credentials over plaintext (loopback only).
async fn json_gateway() -> GatewayProcess {
    let auth = format!("{BEARER}=bob");
    let flags = [
        "--log-format",
        "json",
        "--auth-token",
        &auth,
        "--credentials-endpoint",
        "https://llm.example/v1",
        "--allow-plaintext-credentials",
    ];
    GatewayProcess::start_with(EVERY_LEVEL, None, &flags).await
}

/// Runs a session through `gateway` that handles every kind of secret: it authenticates with
/// [`BEARER`] (in the hello and in a WebSocket upgrade header), is refused [`WRONG_BEARER`],
/// receives resume tokens and resumes with them (a rotated-out one refused), and gets a
/// provisioned credential. Returns every secret value it saw.
async fn session_with_secrets(gateway: &GatewayProcess) -> Vec<(&'static str, String)> {
    let on = gateway.endpoint();
    let mut secrets = vec![
        ("the bearer token", BEARER.to_owned()),
        ("the refused bearer token", WRONG_BEARER.to_owned()),
    ];

    let (mut conn, first) = on.hello_with(BEARER, CREDENTIAL_FEATURES).await;
    let session = first.session_id.clone();
    let token = welcome(&first).resume_token.clone();
    secrets.push(("the first resume token", token.clone()));
    let (job, accepted_frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    let credentials = &accepted(&accepted_frame).credentials;
    assert_eq!(
        credentials.len(),
        1,
        "one credential per job: {credentials:?}"
    );
    secrets.push(("the provisioned credential", credentials[0].value.clone()));
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    drop(conn);

    let resume = resume_info(&session, &token, terminal.event_seq);
    let (resumed, first) = on
        .resume_with_hello(BEARER, CREDENTIAL_FEATURES, resume)
        .await;
    assert_eq!(first.session_id, session, "the session resumes");
    let rotated = welcome(&first).resume_token.clone();
    secrets.push(("the rotated resume token", rotated));
    drop(resumed);

    // Refusals, whose errors name what was wrong, never the token.
    let stale = resume_info(&session, &token, terminal.event_seq);
    let (_refused, first) = on
        .resume_with_hello(BEARER, CREDENTIAL_FEATURES, stale)
        .await;
    expect_error(&first, ErrorCode::ResumeWindowExpired, None);
    let mut refused = on.open().await;
    refused.send(hello(WRONG_BEARER, FEATURES, None)).await;
    let first = refused.try_recv().await;
    assert!(
        !matches!(&first, Ok(Some(frame)) if frame.session_id == session),
        "a wrong token opens no session: {first:?}"
    );

    let (_ws, welcome) = on.ws_hello(BEARER, FEATURES).await;
    let token = welcome["payload"]["resume_token"]
        .as_str()
        .unwrap_or_default();
    secrets.push(("the WebSocket session's resume token", token.to_owned()));
    let upgrade = on
        .ws_from(std::net::Ipv4Addr::LOCALHOST.into(), Some(WRONG_BEARER))
        .await;
    assert!(
        upgrade.is_err(),
        "a wrong bearer header refuses the upgrade"
    );
    secrets
}

/// Fails naming the first secret that `output` contains.
fn assert_no_secret(output: &str, secrets: &[(&str, String)]) {
    for (what, value) in secrets {
        assert!(!value.is_empty(), "{what} is empty: the test saw no secret");
        if let Some(line) = output.lines().find(|line| line.contains(value.as_str())) {
            panic!("{what} appears in the log:\n{line}");
        }
    }
}

/// The path and value of the first empty string in `value`, if any.
fn empty_field(value: &Value, path: &str) -> Option<String> {
    match value {
        Value::String(s) if s.is_empty() => Some(path.to_owned()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| empty_field(v, &format!("{path}[{i}]"))),
        Value::Object(fields) => fields
            .iter()
            .find_map(|(k, v)| empty_field(v, &format!("{path}.{k}"))),
        _ => None,
    }
}

#[tokio::test]
async fn no_secret_reaches_the_log_at_any_level() {
    let gateway = json_gateway().await;
    let secrets = session_with_secrets(&gateway).await;
    let (status, output) = gateway.terminate().await;
    assert!(status.success(), "exit status {status}; output:\n{output}");
    assert!(
        output
            .lines()
            .any(|line| line.contains("\"level\":\"DEBUG\"")),
        "the log holds debug lines, so more than the default level was looked at"
    );
    assert_no_secret(&output, &secrets);
}

#[tokio::test]
async fn json_lines_are_objects_without_escapes_or_empty_fields() {
    let gateway = json_gateway().await;
    session_with_secrets(&gateway).await;
    let raw = gateway.raw_output.clone();
    let (status, _) = gateway.terminate().await;
    assert!(status.success(), "exit status {status}");
    let raw = raw.lock().clone();
    let mut job_lines = 0;
    for line in raw.lines() {
        assert!(
            !line.contains('\u{1b}'),
            "a colour code in a JSON line:\n{line}"
        );
        let parsed: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a line that is not JSON ({e}):\n{line}"));
        assert!(parsed.is_object(), "a line that is no object:\n{line}");
        if let Some(path) = empty_field(&parsed, "") {
            panic!("an empty field {path}:\n{line}");
        }
        let in_job = parsed["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|span| {
                span["name"] == "arcp.job"
                    && span["job_id"].is_string()
                    && span["session_id"].is_string()
            });
        job_lines += usize::from(in_job);
    }
    assert!(
        job_lines > 0,
        "some lines are a job's, carrying its job_id and session_id; log:\n{raw}"
    );
}

#[tokio::test]
async fn text_to_a_pipe_has_no_colour_codes() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let mut cmd = command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--ws-listen",
        "127.0.0.1:0",
    ]);
    // The helper turns colour off for every test; this one checks the gateway does so itself.
    cmd.env_remove("NO_COLOR").env("RUST_LOG", "debug");
    let mut child = cmd.spawn().expect("spawn arcp-gateway");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut text = String::new();
    let listening = tokio::time::timeout(PROCESS_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
            if line.contains("arcp-gateway listening") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(listening, Ok(true)),
        "arcp-gateway did not log that it listens:\n{text}"
    );
    let pid = child.id().expect("running");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    // Its exit status is not looked at: a SIGTERM this early may come before its handler.
    tokio::time::timeout(PROCESS_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        child.wait().await
    })
    .await
    .expect("exits after SIGTERM")
    .expect("wait");
    assert!(text.contains(" INFO "), "the log is there:\n{text}");
    assert!(
        !text.contains("\u{1b}["),
        "a colour code in text written to a pipe:\n{text}"
    );
}
