//! One stream of a [`super::Client`]'s session: opened, the hello (or the resume) sent, the
//! welcome read.

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Streaming};

use crate::{
    clock::Timestamp,
    error::ArcpError,
    proto::{
        self, arcp_client::ArcpClient, client_frame::Payload as In, server_frame::Payload as Out,
        ClientFrame, ServerFrame,
    },
};

use super::{
    config::ClientConfig,
    frames::{frame, session_error},
};

/// Frames queued for the gateway before a send waits.
const SEND_QUEUE: usize = 64;

/// What a welcome says that the client keeps.
pub(super) struct Welcomed {
    pub(super) session_id: String,
    pub(super) resume_token: String,
    pub(super) features: Vec<String>,
}

/// A stream attached to the session.
pub(super) struct Attached {
    tx: mpsc::Sender<ClientFrame>,
    rx: Streaming<ServerFrame>,
}

impl Attached {
    /// Opens a stream on `channel` and says hello, resuming with `resume`. A refusal is the
    /// gateway's error (retryable or not, as it says); a stream that could not be opened, or
    /// ended before its welcome, is a retryable `INTERNAL_ERROR`.
    pub(super) async fn open(
        channel: &Channel,
        config: &ClientConfig,
        resume: Option<proto::ResumeInfo>,
    ) -> Result<(Attached, Welcomed), ArcpError> {
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let hello = In::SessionHello(proto::SessionHello {
            client: Some(proto::ClientInfo {
                name: "arcp-gateway-client".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            auth: Some(proto::Auth {
                scheme: "bearer".into(),
                token: config.token.clone(),
            }),
            capabilities: Some(proto::Capabilities {
                features: config.features.clone(),
                ..Default::default()
            }),
            resume,
        });
        tx.send(frame(hello, String::new()))
            .await
            .map_err(|_| unreachable_gateway("the stream closed before the hello"))?;
        let mut rx = ArcpClient::new(channel.clone())
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|status| unreachable_gateway(status.message()))?
            .into_inner();
        let first = rx
            .message()
            .await
            .map_err(|status| unreachable_gateway(status.message()))?
            .ok_or_else(|| unreachable_gateway("the stream ended before the welcome"))?;
        match first.payload {
            Some(Out::SessionWelcome(w)) => Ok((
                Attached { tx, rx },
                Welcomed {
                    session_id: first.session_id,
                    resume_token: w.resume_token,
                    features: w.capabilities.map(|c| c.features).unwrap_or_default(),
                },
            )),
            Some(Out::SessionError(e)) => Err(session_error(&e)),
            other => Err(ArcpError::Internal(format!(
                "the gateway answered the hello with {other:?}"
            ))),
        }
    }

    /// Sends `frame`; `Err` once the stream is gone.
    pub(super) async fn send(&self, frame: ClientFrame) -> Result<(), ()> {
        self.tx.send(frame).await.map_err(|_| ())
    }

    /// The next frame; `Ok(None)` when the stream ended, `Err` when it failed.
    pub(super) async fn recv(&mut self) -> Result<Option<ServerFrame>, tonic::Status> {
        self.rx.message().await
    }

    /// The gateway's time now, from the pong to a ping sent now; the frames that come before
    /// the pong are kept in `early`, in order. `None` when the gateway closed the session
    /// first; a stream that ends or fails first is a retryable `INTERNAL_ERROR`.
    pub(super) async fn gateway_time(
        &mut self,
        early: &mut VecDeque<ServerFrame>,
    ) -> Result<Option<Timestamp>, ArcpError> {
        let nonce = uuid::Uuid::now_v7().to_string();
        let ping = In::SessionPing(proto::SessionPing {
            nonce: nonce.clone(),
            sent_at: Timestamp::now().to_rfc3339(),
        });
        self.send(frame(ping, String::new()))
            .await
            .map_err(|()| unreachable_gateway("the stream closed before the ping"))?;
        loop {
            let frame = self
                .recv()
                .await
                .map_err(|status| unreachable_gateway(status.message()))?
                .ok_or_else(|| unreachable_gateway("the stream ended before the pong"))?;
            match &frame.payload {
                Some(Out::SessionPong(pong)) if pong.ping_nonce == nonce => {
                    return Ok(Timestamp::parse_rfc3339(&pong.received_at));
                }
                Some(Out::SessionClosed(_)) => {
                    early.push_back(frame);
                    return Ok(None);
                }
                _ => early.push_back(frame),
            }
        }
    }
}

fn unreachable_gateway(why: &str) -> ArcpError {
    ArcpError::Internal(format!("the gateway could not be reached: {why}"))
}
