//! `chunker`: streams its result as `result_chunk` events (§8.4).
//!
//! Input: `{"text": T, "chunk_size": N}` streams `T` in `utf8` chunks of N bytes, or
//! `{"bytes_hex": H, "chunk_size": N}` streams the decoded bytes as `base64` chunks; the result
//! is the concatenation. `"inline_too": true` also returns an inline result, which the runtime
//! must refuse. Without the `result_chunk` feature the text comes back inline.

use async_trait::async_trait;

use crate::{
    agent::{Agent, JobContext},
    error::ArcpError,
    protocol::Json,
};

/// Streams a result in chunks.
pub struct Chunker;

#[async_trait]
impl Agent for Chunker {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let size = input
            .get("chunk_size")
            .and_then(Json::as_u64)
            .unwrap_or(4)
            .max(1) as usize;
        let (bytes, binary) = match (input.get("text"), input.get("bytes_hex")) {
            (Some(Json::String(t)), _) => (t.clone().into_bytes(), false),
            (_, Some(Json::String(h))) => (decode_hex(h)?, true),
            _ => {
                return Err(ArcpError::InvalidRequest(
                    "chunker: give text or bytes_hex".into(),
                ))
            }
        };
        let mut stream = match ctx.stream_result() {
            Ok(stream) => stream,
            Err(_) if !binary => return Ok(Json::String(String::from_utf8_lossy(&bytes).into())),
            Err(e) => return Err(e),
        };
        let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.iter().enumerate() {
            if binary {
                stream.write_bytes(chunk, i != last).await?;
            } else {
                // Chunk boundaries fall on bytes; lossless for the ASCII the demo streams.
                stream
                    .write_text(&String::from_utf8_lossy(chunk), i != last)
                    .await?;
            }
        }
        if chunks.is_empty() {
            stream.write_text("", false).await?;
        }
        if input
            .get("inline_too")
            .and_then(Json::as_bool)
            .unwrap_or(false)
        {
            return Ok(serde_json::json!({ "inline": true }));
        }
        Ok(Json::String(format!(
            "{} bytes in {} chunks",
            bytes.len(),
            chunks.len().max(1)
        )))
    }
}

fn decode_hex(hex: &str) -> Result<Vec<u8>, ArcpError> {
    let bad = || ArcpError::InvalidRequest("chunker: bytes_hex is not hex".into());
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}
