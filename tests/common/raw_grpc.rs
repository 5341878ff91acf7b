//! A gRPC session stream whose request body is whatever bytes the test writes ([`RawConn`]):
//! framed client frames, or bytes no gRPC client would send. The responses are read as the
//! generated client reads them.

use std::convert::Infallible;

use arcp_gateway::{
    proto::{client_frame::Payload as In, ClientFrame, ServerFrame},
    transport::grpc::codec::ArcpCodec,
};
use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{codec::Codec, transport::Channel, Status, Streaming};
use tower::ServiceExt;

use super::{Endpoint, FRAME_TIMEOUT};

impl Endpoint {
    /// Opens a session stream whose body the test writes byte for byte.
    pub async fn open_raw(&self) -> RawConn {
        let channel = self.channel().await;
        RawConn::open(channel).await
    }
}

/// One session stream with a raw request body.
pub struct RawConn {
    tx: mpsc::Sender<Bytes>,
    rx: Result<Streaming<ServerFrame>, Option<Status>>,
}

impl RawConn {
    async fn open(channel: Channel) -> RawConn {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let body = StreamBody::new(
            ReceiverStream::new(rx).map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))),
        );
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri("/arcp.v1.Arcp/Session")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(body))
            .expect("a request");
        let response = channel
            .oneshot(request)
            .await
            .expect("the server answers the call");
        let (parts, body) = response.into_parts();
        // A status in the headers ends the call before any message (a "trailers-only" answer).
        let rx = match Status::from_header_map(&parts.headers) {
            Some(status) if status.code() != tonic::Code::Ok => Err(Some(status)),
            _ => {
                let decoder = ArcpCodec::<ClientFrame, ServerFrame>::default().decoder();
                Ok(Streaming::new_response(
                    decoder,
                    body,
                    parts.status,
                    None,
                    None,
                ))
            }
        };
        RawConn { tx, rx }
    }

    /// Writes `bytes` to the request body as they are.
    pub async fn send_bytes(&mut self, bytes: impl Into<Bytes>) {
        self.tx
            .send(bytes.into())
            .await
            .expect("the request body accepts bytes");
    }

    /// Writes a client frame with `payload` and `id`, framed as gRPC frames it.
    pub async fn send(&mut self, id: &str, payload: In) {
        let frame = ClientFrame {
            id: id.into(),
            payload: Some(payload),
            ..Default::default()
        };
        self.send_bytes(grpc_message(&frame.encode_to_vec())).await;
    }

    /// The next frame, `None` at the end of the stream, or the status it ended with.
    pub async fn try_recv(&mut self) -> Result<Option<ServerFrame>, Status> {
        match &mut self.rx {
            Ok(rx) => tokio::time::timeout(FRAME_TIMEOUT, rx.message())
                .await
                .expect("no frame arrived within the timeout"),
            Err(status) => Err(status.take().expect("the status was already taken")),
        }
    }

    /// The next frame; fails the test on a status, end of stream or timeout.
    pub async fn recv(&mut self) -> ServerFrame {
        match self.try_recv().await {
            Ok(Some(frame)) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// `message` as one gRPC length-prefixed message: no compression, a 4-byte big-endian length.
pub fn grpc_message(message: &[u8]) -> Vec<u8> {
    let len = u32::try_from(message.len()).expect("a message under 4 GiB");
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    framed
}
