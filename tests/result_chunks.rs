//! Result streaming (§8.4, §14) through the real server: `result_chunk` events under one
//! `result_id`, the terminating `job.result` that references them, the refusal to mix inline
//! and streamed results, the chunk and total size caps, and the inline fallback without the
//! `result_chunk` feature.

mod common;

use arcp_gateway::{
    config::GatewayConfig,
    proto::{self, job_event::Body, server_frame::Payload as Out, ServerFrame},
};
use base64::{engine::general_purpose::STANDARD, Engine};
use common::*;
use serde_json::json;

const STREAMING: &[&str] = &["result_chunk", "progress"];

async fn start(config: GatewayConfig) -> TestServer {
    TestServer::start(config, &[("alice-token", "alice")]).await
}

/// Runs a chunker job; returns its events and terminal frame.
async fn chunker(conn: &mut Conn, input: serde_json::Value) -> (Vec<ServerFrame>, ServerFrame) {
    let (job, _) = submit_and_accept(conn, submit("chunker", input)).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert!(events.iter().all(|f| f.job_id == job));
    (events, terminal)
}

fn chunks(events: &[ServerFrame]) -> Vec<&proto::ResultChunkBody> {
    events
        .iter()
        .map(|f| match &f.payload {
            Some(Out::JobEvent(proto::JobEvent {
                kind,
                body: Some(Body::ResultChunk(c)),
                ..
            })) => {
                assert_eq!(kind, "result_chunk");
                &**c
            }
            other => panic!("expected a result_chunk event, got {other:?}"),
        })
        .collect()
}

/// Checks the §8.4 framing of `chunks` and returns their decoded concatenation.
fn assemble(chunks: &[&proto::ResultChunkBody], encoding: &str) -> Vec<u8> {
    assert!(!chunks.is_empty());
    let result_id = &chunks[0].result_id;
    assert!(result_id.starts_with("res_"), "{result_id}");
    let mut bytes = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(&c.result_id, result_id, "one result_id per result");
        assert_eq!(c.chunk_seq, i as u64, "chunk_seq is 0-based and in order");
        assert_eq!(
            c.more,
            i + 1 < chunks.len(),
            "more is false only on the last"
        );
        assert_eq!(c.encoding, encoding);
        match encoding {
            "utf8" => bytes.extend_from_slice(c.data.as_bytes()),
            "base64" => bytes.extend(STANDARD.decode(&c.data).expect("valid base64")),
            other => panic!("unknown encoding {other}"),
        }
    }
    bytes
}

/// The streamed `job.result`: references `result_id`, carries no inline result.
fn streamed_result<'a>(terminal: &'a ServerFrame, result_id: &str) -> &'a proto::JobResult {
    let r = job_result(terminal);
    assert_eq!(r.final_status, "success");
    assert!(
        r.result.is_none(),
        "a streamed result is never also inline: {r:?}"
    );
    assert_eq!(r.result_id, result_id);
    r
}

#[tokio::test]
async fn text_streams_as_utf8_chunks_that_reassemble_to_the_result() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", STREAMING).await;
    let text = "The quick brown fox jumps over the lazy dog.";
    let (events, terminal) = chunker(&mut conn, json!({"text": text, "chunk_size": 8})).await;
    let chunks = chunks(&events);
    assert_eq!(chunks.len(), text.len().div_ceil(8));
    assert_eq!(assemble(&chunks, "utf8"), text.as_bytes());
    let r = streamed_result(&terminal, &chunks[0].result_id);
    assert_eq!(r.result_size, text.len() as u64, "decoded bytes");
    assert_eq!(
        r.summary,
        format!("{} bytes in {} chunks", text.len(), chunks.len())
    );
}

#[tokio::test]
async fn bytes_stream_as_base64_chunks_and_result_size_counts_decoded_bytes() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", STREAMING).await;
    let bytes: Vec<u8> = (0..=255u8)
        .rev()
        .step_by(7)
        .chain([0, 0xff, 0x80])
        .collect();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (events, terminal) = chunker(&mut conn, json!({"bytes_hex": hex, "chunk_size": 5})).await;
    let chunks = chunks(&events);
    assert_eq!(chunks.len(), bytes.len().div_ceil(5));
    assert_eq!(assemble(&chunks, "base64"), bytes);
    let r = streamed_result(&terminal, &chunks[0].result_id);
    assert_eq!(r.result_size, bytes.len() as u64);
}

#[tokio::test]
async fn an_empty_result_is_one_final_empty_chunk() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", STREAMING).await;
    let (events, terminal) = chunker(&mut conn, json!({"text": "", "chunk_size": 4})).await;
    let chunks = chunks(&events);
    assert_eq!(chunks.len(), 1);
    assert!(!chunks[0].more);
    assert!(chunks[0].data.is_empty());
    assert_eq!(
        streamed_result(&terminal, &chunks[0].result_id).result_size,
        0
    );
}

#[tokio::test]
async fn each_job_streams_under_its_own_result_id() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", STREAMING).await;
    let (a, _) = chunker(&mut conn, json!({"text": "abcdef", "chunk_size": 3})).await;
    let (b, _) = chunker(&mut conn, json!({"text": "abcdef", "chunk_size": 3})).await;
    assert_ne!(chunks(&a)[0].result_id, chunks(&b)[0].result_id);
}

#[tokio::test]
async fn an_inline_result_after_streaming_is_refused_with_internal_error() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", STREAMING).await;
    let (events, terminal) = chunker(
        &mut conn,
        json!({"text": "abcdefgh", "chunk_size": 4, "inline_too": true}),
    )
    .await;
    assert_eq!(chunks(&events).len(), 2);
    let e = job_error(&terminal);
    assert_eq!(e.code, "INTERNAL_ERROR");
    assert_eq!(e.final_status, "error");
    assert!(e.retryable, "INTERNAL_ERROR is always retryable (§12)");
}

#[tokio::test]
async fn a_chunk_over_the_chunk_cap_ends_the_job_with_internal_error() {
    let server = start(GatewayConfig {
        max_result_chunk_bytes: 4,
        ..Default::default()
    })
    .await;
    let (mut conn, _) = server.hello_with("alice-token", STREAMING).await;
    // At the cap is fine.
    let (events, terminal) = chunker(&mut conn, json!({"text": "abcdefgh", "chunk_size": 4})).await;
    assert_eq!(chunks(&events).len(), 2);
    assert_eq!(job_result(&terminal).final_status, "success");
    // One byte over is not, and the oversized chunk is never sent.
    let (events, terminal) = chunker(&mut conn, json!({"text": "abcdefgh", "chunk_size": 5})).await;
    assert!(events.is_empty(), "{events:?}");
    let e = job_error(&terminal);
    assert_eq!(e.code, "INTERNAL_ERROR");
    assert_eq!(e.final_status, "error");
    assert!(e.retryable);
}

#[tokio::test]
async fn a_stream_over_the_total_cap_ends_the_job_with_internal_error() {
    let server = start(GatewayConfig {
        max_result_bytes: 10,
        ..Default::default()
    })
    .await;
    let (mut conn, _) = server.hello_with("alice-token", STREAMING).await;
    let (events, terminal) =
        chunker(&mut conn, json!({"text": "0123456789", "chunk_size": 4})).await;
    assert_eq!(
        job_result(&terminal).result_size,
        10,
        "exactly the cap is fine"
    );
    assert_eq!(chunks(&events).len(), 3);

    let (events, terminal) =
        chunker(&mut conn, json!({"text": "0123456789A", "chunk_size": 4})).await;
    let sent = chunks(&events);
    assert_eq!(sent.len(), 2, "the chunk that crosses the cap is not sent");
    assert!(sent.iter().all(|c| c.more));
    let e = job_error(&terminal);
    assert_eq!(e.code, "INTERNAL_ERROR");
    assert_eq!(e.final_status, "error");
    assert!(e.retryable);
}

#[tokio::test]
async fn without_the_result_chunk_feature_the_result_is_inline() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", &["progress"]).await;
    let text = "The quick brown fox";
    let (events, terminal) = chunker(&mut conn, json!({"text": text, "chunk_size": 4})).await;
    assert!(events.is_empty(), "no result_chunk events: {events:?}");
    let r = job_result(&terminal);
    assert_eq!(r.final_status, "success");
    assert_eq!(to_json(r.result.as_ref().unwrap()), json!(text));
    assert!(r.result_id.is_empty());
    assert_eq!(r.result_size, 0);
}
