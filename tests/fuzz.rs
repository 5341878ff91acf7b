//! What the fuzz targets in `src/fuzz/` found, each checked through a real server.
//!
//! - A job input nested deeper than protobuf can carry: the JSON decoder took arrays and
//!   objects up to serde_json's 128 levels, but a frame nesting a value more than about 33
//!   levels deep cannot be decoded by any protobuf reader. Echoed back, such an input became a
//!   logged result no transport could read: the WebSocket client got `INTERNAL_ERROR` ("a
//!   stored frame does not decode") and never its terminal frame. Inputs are now bounded at
//!   `MAX_JSON_DEPTH` levels on both transports, with `INVALID_REQUEST`.

mod common;

use arcp_gateway::{encoding::json_value::MAX_JSON_DEPTH, ErrorCode};
use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "alice-token";

/// A value `depth` arrays and objects deep, alternating, around a number.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, level| {
        if level % 2 == 0 {
            json!([inner])
        } else {
            json!({ "k": inner })
        }
    })
}

#[tokio::test]
async fn websocket_inputs_nested_past_the_bound_are_refused_and_the_session_goes_on() {
    let server = TestServer::start_default().await;
    let (mut ws, _) = server.ws_hello(TOKEN, &[]).await;

    let id = ws
        .send(
            "job.submit",
            json!({"agent": "echo", "input": nested(MAX_JSON_DEPTH + 1)}),
        )
        .await;
    let refused = ws.recv().await;
    assert_eq!(refused["type"], "session.error", "{refused}");
    assert_eq!(
        refused["payload"]["code"],
        ErrorCode::InvalidRequest.as_str()
    );
    assert_eq!(refused["payload"]["request_id"], id.as_str());
    let message = refused["payload"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&MAX_JSON_DEPTH.to_string()), "{message}");

    // At the bound the job runs, and its result is the input, readable.
    let input = nested(MAX_JSON_DEPTH);
    ws.send("job.submit", json!({"agent": "echo", "input": input}))
        .await;
    let accepted = ws.recv().await;
    assert_eq!(accepted["type"], "job.accepted", "{accepted}");
    let job = accepted["job_id"].as_str().expect("a job id").to_owned();
    let frames = ws.recv_until_terminal(&job).await;
    let result = frames.last().expect("the terminal frame");
    assert_eq!(result["type"], "job.result", "{result}");
    assert_eq!(result["payload"]["result"], input);
}

#[tokio::test]
async fn grpc_inputs_nested_past_the_bound_are_refused_and_the_session_goes_on() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with(TOKEN, FEATURES).await;

    let id = conn.send(submit("echo", nested(MAX_JSON_DEPTH + 1))).await;
    let refused = conn.recv().await;
    let error = expect_error(&refused, ErrorCode::InvalidRequest, Some(&id));
    assert!(
        error.message.contains(&MAX_JSON_DEPTH.to_string()),
        "{error:?}"
    );

    let input = nested(MAX_JSON_DEPTH);
    let (job, _) = submit_and_accept(&mut conn, submit("echo", input.clone())).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    let result = job_result(&terminal)
        .result
        .clone()
        .expect("an inline result");
    assert_eq!(result, json_value(&input));
}
