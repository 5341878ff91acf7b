//! ARCP JSON over WebSocket (§4, §5): the envelope codec, its error handling, and one session
//! layer under both transports, so a session opened on one can be resumed on the other.

mod common;

use arcp_gateway::proto::server_frame::Payload as Out;
use common::*;
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, protocol::frame::coding::CloseCode, Message};

const FEATURES_WS: &[&str] = &["progress", "agent_versions", "list_jobs"];

fn expect_invalid(frame: &Value, request_id: Option<&str>, mentions: &str) {
    assert_eq!(frame["type"], "session.error", "{frame}");
    assert_eq!(frame["payload"]["code"], "INVALID_REQUEST", "{frame}");
    assert_eq!(frame["payload"]["retryable"], false);
    let message = frame["payload"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "the error names what was wrong ({mentions:?}): {message}"
    );
    match request_id {
        Some(id) => assert_eq!(frame["payload"]["request_id"], id, "{frame}"),
        None => assert!(frame["payload"]["request_id"].is_null(), "{frame}"),
    }
}

/// Submits `ticker` and returns its job id, checking the acceptance envelope.
#[tokio::test]
async fn the_welcome_reads_like_the_spec() {
    let server = TestServer::start_default().await;
    let (_conn, welcome) = server.ws_hello("alice-token", FEATURES_WS).await;
    assert_eq!(welcome["arcp"], "1.1");
    assert!(welcome["session_id"].as_str().unwrap().starts_with("sess_"));
    let p = &welcome["payload"];
    assert!(p["resume_token"].as_str().unwrap().starts_with("rt_"));
    assert_eq!(p["resume_window_sec"], 600);
    assert_eq!(p["heartbeat_interval_sec"], 30);
    assert_eq!(p["runtime"]["name"], "arcp-gateway");
    assert_eq!(
        p["capabilities"]["features"],
        json!(["list_jobs", "progress", "agent_versions"])
    );
    let agents = p["capabilities"]["agents"].as_array().unwrap();
    assert!(agents.iter().any(|a| a["name"] == "echo"
        && a["default"] == "1.0.0"
        && a["versions"] == json!(["1.0.0"])));
}

#[tokio::test]
async fn a_job_streams_to_its_result_with_gap_free_event_seq() {
    let server = TestServer::start_default().await;
    let (mut conn, welcome) = server.ws_hello("alice-token", FEATURES_WS).await;
    let (job, _) = conn.submit_ticker(5, 0).await;
    let frames = conn.recv_until_terminal(&job).await;
    let seqs: Vec<u64> = frames
        .iter()
        .map(|f| f["event_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3, 4, 5, 6, 7]);
    for f in &frames {
        assert_eq!(f["session_id"], welcome["session_id"]);
        assert_eq!(f["job_id"], job.as_str());
    }
    let progress: Vec<f64> = frames[..5]
        .iter()
        .map(|f| {
            assert_eq!(f["type"], "job.event");
            assert_eq!(f["payload"]["kind"], "progress");
            assert_eq!(f["payload"]["body"]["total"], 5.0);
            f["payload"]["body"]["current"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(progress, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
    let result = &frames[5];
    assert_eq!(result["type"], "job.result");
    assert_eq!(result["payload"]["final_status"], "success");
    assert_eq!(result["payload"]["result"], json!({"ticks": 5}));
}

#[tokio::test]
async fn bad_frames_get_invalid_request_naming_the_problem_and_the_session_survives() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.ws_hello("alice-token", FEATURES_WS).await;
    let cases: [(&str, Option<&str>, &str); 7] = [
        ("{not json", None, "malformed JSON"),
        ("[1, 2, 3]", None, "JSON object"),
        (r#"{"id": "m1", "payload": {}}"#, Some("m1"), "no type"),
        (
            r#"{"id": "m2", "type": "job.teleport"}"#,
            Some("m2"),
            "job.teleport",
        ),
        (
            r#"{"id": "m3", "type": "job.submit", "payload": {"input": 1}}"#,
            Some("m3"),
            "agent",
        ),
        (
            r#"{"id": "m4", "type": "session.ack", "payload": {"last_processed_seq": "x"}}"#,
            Some("m4"),
            "session.ack",
        ),
        (
            r#"{"id": "m5", "type": "job.submit", "payload": 7}"#,
            Some("m5"),
            "must be an object",
        ),
    ];
    for (text, request_id, mentions) in cases {
        conn.send_text(text).await;
        expect_invalid(&conn.recv().await, request_id, mentions);
    }
    conn.ws
        .send(Message::binary(vec![0u8, 1]))
        .await
        .expect("sent");
    expect_invalid(&conn.recv().await, None, "text frame");

    // Unknown envelope and payload fields are ignored (§5), and nothing was logged for the
    // refused frames: the next job's acceptance is event 1.
    conn.send_text(
        &json!({"arcp": "1.1", "id": "ok", "type": "job.submit", "x-extension": true,
                "payload": {"agent": "echo", "input": {"a": 1}, "future_field": [1]}})
        .to_string(),
    )
    .await;
    let accepted = conn.recv().await;
    assert_eq!(accepted["type"], "job.accepted", "{accepted}");
    assert_eq!(accepted["event_seq"], 1);
    let result = conn.recv().await;
    assert_eq!(result["payload"]["result"], json!({"a": 1}));
}

#[tokio::test]
async fn every_public_resume_shape_continues_the_session() {
    let server = TestServer::start_default().await;
    let (mut conn, welcome) = server.ws_hello("alice-token", FEATURES_WS).await;
    let session = welcome["session_id"].as_str().unwrap().to_owned();
    let mut token = welcome["payload"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (job, _) = conn.submit_ticker(3, 0).await;
    let frames = conn.recv_until_terminal(&job).await;
    let newest = frames.last().unwrap()["event_seq"].as_u64().unwrap();
    drop(conn);

    let mut payloads = [
        // `resume` block in the hello.
        ("session.hello", {
            let mut p = ws_hello_payload("alice-token", FEATURES_WS);
            p["resume"] = json!({"session_id": session, "resume_token": "", "last_event_seq": 2});
            p
        }),
        // Top-level `resume_token` / `last_event_seq` in the hello.
        ("session.hello", {
            let mut p = ws_hello_payload("alice-token", FEATURES_WS);
            p["resume_token"] = json!("");
            p["last_event_seq"] = json!(2);
            p
        }),
        // Standalone `session.resume`.
        (
            "session.resume",
            json!({
                "session_id": session, "resume_token": "", "last_event_seq": 2,
                "auth": {"scheme": "bearer", "token": "alice-token"},
            }),
        ),
    ];
    for (kind, payload) in payloads.iter_mut() {
        if payload.get("resume").is_some() {
            payload["resume"]["resume_token"] = json!(token);
        } else {
            payload["resume_token"] = json!(token);
        }
        let mut conn = server.ws().await;
        conn.send(kind, payload.clone()).await;
        let welcome = conn.recv().await;
        assert_eq!(welcome["type"], "session.welcome", "{kind}: {welcome}");
        assert_eq!(welcome["session_id"], session.as_str());
        let rotated = welcome["payload"]["resume_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_ne!(rotated, token, "rotated on every welcome");
        token = rotated;
        let replayed: Vec<u64> = {
            let mut seqs = Vec::new();
            while seqs.last() != Some(&newest) {
                seqs.push(conn.recv().await["event_seq"].as_u64().unwrap());
            }
            seqs
        };
        assert_eq!(replayed, (3..=newest).collect::<Vec<_>>(), "{kind}");
    }
}

#[tokio::test]
async fn a_session_opened_over_websocket_resumes_over_grpc_without_a_gap() {
    let server = TestServer::start_default().await;
    let (mut conn, welcome) = server.ws_hello("alice-token", FEATURES_WS).await;
    let session = welcome["session_id"].as_str().unwrap().to_owned();
    let token = welcome["payload"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (job, _) = conn.submit_ticker(30, 10).await;
    let mut seen = vec![1u64];
    while seen.len() < 6 {
        seen.push(conn.recv().await["event_seq"].as_u64().unwrap());
    }
    drop(conn);
    let last = *seen.last().unwrap();
    wait_for_log(&server, &session, last + 3).await;

    let (mut grpc, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, last))
        .await;
    assert!(
        matches!(first.payload, Some(Out::SessionWelcome(_))),
        "{first:?}"
    );
    assert_eq!(first.session_id, session);
    let (frames, terminal) = grpc.recv_until_terminal(&job).await;
    seen.extend(frames.iter().chain([&terminal]).map(|f| f.event_seq));
    assert_eq!(seen, (1..=terminal.event_seq).collect::<Vec<_>>());
    assert_eq!(job_result(&terminal).final_status, "success");
}

#[tokio::test]
async fn a_session_opened_over_grpc_resumes_over_websocket_without_a_gap() {
    let server = TestServer::start_default().await;
    let (mut grpc, w) = server.hello("alice-token").await;
    let token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut grpc, ticker(30, 10)).await;
    let mut seen = vec![1u64];
    while seen.len() < 6 {
        seen.push(grpc.recv().await.event_seq);
    }
    drop(grpc);
    let last = *seen.last().unwrap();
    wait_for_log(&server, &w.session_id, last + 3).await;

    let mut conn = server.ws().await;
    let mut payload = ws_hello_payload("alice-token", FEATURES_WS);
    payload["resume"] =
        json!({"session_id": w.session_id, "resume_token": token, "last_event_seq": last});
    conn.send("session.hello", payload).await;
    let welcome = conn.recv().await;
    assert_eq!(welcome["type"], "session.welcome", "{welcome}");
    assert_eq!(welcome["session_id"], w.session_id.as_str());
    let frames = conn.recv_until_terminal(&job).await;
    seen.extend(frames.iter().map(|f| f["event_seq"].as_u64().unwrap()));
    let newest = *seen.last().unwrap();
    assert_eq!(seen, (1..=newest).collect::<Vec<_>>());
    assert_eq!(frames.last().unwrap()["type"], "job.result");
}

#[tokio::test]
async fn the_upgrade_checks_the_path_and_a_bearer_header() {
    let server = TestServer::start_default().await;
    let status = |e: tungstenite::Error| match e {
        tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    };
    let wrong_path =
        tokio_tungstenite::connect_async(format!("ws://{}/nope", server.ws_addr)).await;
    assert_eq!(status(wrong_path.expect_err("refused")), 404);

    let request = |token: &str| {
        let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/arcp",
            server.ws_addr
        ))
        .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let refused = tokio_tungstenite::connect_async(request("mallory")).await;
    assert_eq!(status(refused.expect_err("refused")), 401);

    // The header alone authenticates a hello without auth.
    let (ws, _) = tokio_tungstenite::connect_async(request("bob-token"))
        .await
        .expect("opens");
    let mut conn = WsConn::from_socket(ws);
    conn.send("session.hello", json!({"capabilities": {"features": []}}))
        .await;
    assert_eq!(conn.recv().await["type"], "session.welcome");
    assert_eq!(server.session_count(), 1);
}

#[tokio::test]
async fn a_graceful_stop_closes_websockets_with_service_restart() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.ws_hello("alice-token", FEATURES_WS).await;
    let ((), message) = tokio::join!(server.stop(), conn.next_message());
    match message {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Restart),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn grpc_and_websocket_sessions_see_the_same_jobs() {
    let server = TestServer::start_default().await;
    let (mut grpc, _) = server.hello_with("alice-token", &["list_jobs"]).await;
    let (job, _) = submit_and_accept(&mut grpc, submit("echo", json!(1))).await;
    let (mut conn, _) = server.ws_hello("alice-token", FEATURES_WS).await;
    let id = conn.send("session.list_jobs", json!({})).await;
    let jobs = conn.recv().await;
    assert_eq!(jobs["type"], "session.jobs", "{jobs}");
    assert_eq!(jobs["payload"]["request_id"], id);
    assert_eq!(jobs["payload"]["jobs"][0]["job_id"], job.as_str());
}

/// Walks `value` for `null`s; returns where each is.
fn nulls(value: &Value, path: String) -> Vec<String> {
    match value {
        Value::Null => vec![path],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| nulls(item, format!("{path}[{i}]")))
            .collect(),
        Value::Object(fields) => fields
            .iter()
            .flat_map(|(key, item)| nulls(item, format!("{path}.{key}")))
            .collect(),
        _ => Vec::new(),
    }
}

/// Absent optional fields are absent: a client whose schema says "optional string" or
/// "optional array" refuses `null`. A session that gets a welcome, a job's acceptance, events
/// and result, a listing, a subscription, a pong and errors finds none in any frame.
#[tokio::test]
async fn no_frame_of_a_whole_session_carries_a_null() {
    let server = TestServer::start_default().await;
    let features = [
        "progress",
        "agent_versions",
        "list_jobs",
        "subscribe",
        "ack",
    ];
    let (mut conn, welcome) = server.ws_hello("alice-token", &features).await;
    let mut frames = vec![welcome];
    let (job, accepted) = conn.submit_ticker(3, 0).await;
    frames.push(accepted);
    frames.extend(conn.recv_until_terminal(&job).await);
    conn.send("session.list_jobs", json!({})).await;
    frames.push(conn.recv().await);
    conn.send(
        "session.ping",
        json!({"nonce": "n1", "sent_at": "2026-01-01T00:00:00Z"}),
    )
    .await;
    frames.push(conn.recv().await);
    conn.send("job.cancel", json!({"job_id": "job_nope"})).await;
    frames.push(conn.recv().await);
    conn.send_text("{\"arcp\": \"1.1\"}").await;
    frames.push(conn.recv().await);
    let (mut other, _) = server.ws_hello("alice-token", &features).await;
    other
        .send("job.subscribe", json!({"job_id": job, "history": true}))
        .await;
    frames.extend(other.recv_until_terminal(&job).await);

    let kinds: std::collections::BTreeSet<&str> =
        frames.iter().filter_map(|f| f["type"].as_str()).collect();
    for kind in [
        "session.welcome",
        "job.accepted",
        "job.event",
        "job.result",
        "session.jobs",
        "session.pong",
        "session.error",
        "job.subscribed",
    ] {
        assert!(kinds.contains(kind), "no {kind} among {kinds:?}");
    }
    for frame in &frames {
        let found = nulls(frame, String::new());
        assert!(found.is_empty(), "null at {found:?} in {frame}");
    }
}
