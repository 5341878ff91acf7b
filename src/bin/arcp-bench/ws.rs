//! The bench's WebSocket JSON client: what most ARCP clients (every public SDK) speak, written
//! once in Rust so that the WebSocket rows measure servers, not clients. It runs the same
//! workloads against the gateway's WebSocket endpoint and against the reference Python
//! runtime's (row 9), and reads each frame as little as a client must: its `type`, and its
//! `event_seq` to acknowledge.

use std::{net::SocketAddr, time::Instant};

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    tungstenite::{protocol::WebSocketConfig, Message},
    MaybeTlsStream, WebSocketStream,
};

use crate::{client::Received, BenchResult};

const TOKEN: &str = "bench-token";
/// The client acknowledges every this many frames, as row 1's gRPC client does.
const ACK_EVERY: u64 = 1000;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the client reads of every frame.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    event_seq: Option<u64>,
}

/// The coordinates of a session to resume.
pub(crate) struct Resume {
    pub(crate) session_id: String,
    pub(crate) resume_token: String,
    pub(crate) last_event_seq: u64,
}

/// One ARCP session over one WebSocket connection.
pub(crate) struct WsSession {
    socket: Socket,
    /// Whether the server granted `ack`; the Python runtime may not.
    acks: bool,
    /// The welcome's `session_id` and `resume_token`.
    pub(crate) session_id: String,
    pub(crate) resume_token: String,
}

impl WsSession {
    /// Connects to `ws://addr/arcp`, sends a hello (a resume with `resume`) and waits for the
    /// welcome.
    pub(crate) async fn open(addr: SocketAddr, resume: Option<Resume>) -> BenchResult<WsSession> {
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (mut socket, _) = tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/arcp"),
            Some(config),
            true,
        )
        .await?;
        let mut payload = json!({
            "client": { "name": "arcp-bench", "version": "1" },
            "auth": { "scheme": "bearer", "token": TOKEN },
            "capabilities": { "encodings": ["json"], "features": ["progress", "ack"] },
        });
        if let Some(r) = resume {
            payload["resume"] = json!({
                "session_id": r.session_id,
                "resume_token": r.resume_token,
                "last_event_seq": r.last_event_seq,
            });
        }
        send(&mut socket, "session.hello", payload).await?;
        let welcome = next_json(&mut socket).await?;
        if welcome["type"] != "session.welcome" {
            return Err(format!("expected a welcome, got {welcome}").into());
        }
        let payload = &welcome["payload"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let acks = payload["capabilities"]["features"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "ack"));
        Ok(WsSession {
            socket,
            acks,
            session_id: text(&payload["session_id"])
                .or_else(|| text(&welcome["session_id"]))
                .ok_or("the welcome names no session")?,
            resume_token: text(&payload["resume_token"]).ok_or("the welcome has no token")?,
        })
    }

    /// Submits a `chatter` job of `count` log events of `bytes` bytes each and waits for its
    /// `job.accepted`.
    pub(crate) async fn start_chatter(&mut self, count: u64, bytes: u64) -> BenchResult<()> {
        let input = json!({ "count": count, "bytes": bytes });
        send(
            &mut self.socket,
            "job.submit",
            json!({ "agent": "chatter", "input": input }),
        )
        .await?;
        let accepted = next_json(&mut self.socket).await?;
        if accepted["type"] != "job.accepted" {
            return Err(format!("expected job.accepted, got {accepted}").into());
        }
        Ok(())
    }

    /// Row 1's client loop: reads frames until the job's terminal frame, counting them and
    /// their bytes, acknowledging every [`ACK_EVERY`] when the server granted `ack`. The clock
    /// starts at the first event.
    pub(crate) async fn receive(&mut self) -> BenchResult<Received> {
        let mut start = None;
        let (mut frames, mut bytes) = (0u64, 0usize);
        while let Some(message) = self.socket.next().await {
            let Message::Text(text) = message? else {
                continue;
            };
            let head: Head = serde_json::from_str(text.as_str())?;
            start.get_or_insert_with(Instant::now);
            frames += 1;
            bytes += text.len();
            if matches!(head.kind, "job.result" | "job.error") {
                break;
            }
            if self.acks && frames % ACK_EVERY == 0 {
                if let Some(seq) = head.event_seq {
                    let ack = json!({ "last_processed_seq": seq });
                    send(&mut self.socket, "session.ack", ack).await?;
                }
            }
        }
        let seconds = start.map_or(0.0, |s| s.elapsed().as_secs_f64());
        Ok(Received {
            frames,
            bytes,
            seconds,
        })
    }

    /// Reads frames until one with `event_seq` `newest`; returns when the first came.
    pub(crate) async fn read_through(&mut self, newest: u64) -> BenchResult<Instant> {
        let mut first = None;
        while let Some(message) = self.socket.next().await {
            let Message::Text(text) = message? else {
                continue;
            };
            let head: Head = serde_json::from_str(text.as_str())?;
            let first = *first.get_or_insert_with(Instant::now);
            if head.event_seq == Some(newest) {
                return Ok(first);
            }
        }
        Err(format!("the stream ended before event {newest}").into())
    }
}

async fn send(socket: &mut Socket, kind: &str, payload: Value) -> BenchResult<()> {
    let frame = json!({
        "arcp": "1.1",
        "id": uuid::Uuid::now_v7().to_string(),
        "type": kind,
        "payload": payload,
    });
    socket.send(Message::text(frame.to_string())).await?;
    Ok(())
}

async fn next_json(socket: &mut Socket) -> BenchResult<Value> {
    while let Some(message) = socket.next().await {
        if let Message::Text(text) = message? {
            return Ok(serde_json::from_str(text.as_str())?);
        }
    }
    Err("the connection closed".into())
}
