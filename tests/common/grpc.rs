//! The gRPC client: one session stream ([`Conn`]), how one opens on an [`Endpoint`], and the
//! receive helpers built on it.

use arcp_gateway::proto::{
    self, arcp_client::ArcpClient, client_frame::Payload as In, server_frame::Payload as Out,
    ClientFrame, ServerFrame,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{metadata::MetadataValue, transport::Channel, Streaming};

use super::{
    accepted, hello, is_terminal, job_error, list_jobs, ping, welcome, Endpoint, FEATURES,
    FRAME_TIMEOUT,
};

impl Endpoint {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to test server")
    }

    /// Opens a session stream with no metadata.
    pub async fn open(&self) -> Conn {
        self.open_with(&[]).await.expect("stream opens")
    }

    /// Opens a session stream with the given metadata; `Err` is the status that refused it.
    pub async fn open_with(
        &self,
        metadata: &[(&'static str, &str)],
    ) -> Result<Conn, tonic::Status> {
        open_on(self.channel().await, metadata).await
    }

    /// A channel to the gRPC server from the local address `from` (any of 127.0.0.0/8 is this
    /// host), so that a test can act as several peers.
    pub async fn channel_from(&self, from: std::net::IpAddr) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .local_address(Some(from))
            .connect()
            .await
            .expect("connect to test server")
    }

    /// Opens a stream and completes a hello as `token` offering [`FEATURES`]; returns the
    /// welcome frame.
    pub async fn hello(&self, token: &str) -> (Conn, ServerFrame) {
        self.hello_with(token, FEATURES).await
    }

    /// Opens a stream and completes a hello as `token` offering `features`; returns the
    /// welcome frame (anything else fails the test).
    pub async fn hello_with(&self, token: &str, features: &[&str]) -> (Conn, ServerFrame) {
        let mut conn = self.open().await;
        conn.send(hello(token, features, None)).await;
        let frame = conn.recv().await;
        welcome(&frame);
        (conn, frame)
    }

    /// Opens a stream and says hello as `token` offering `features`, resuming with `resume`;
    /// returns the first frame, a welcome or the error that refused the resume.
    pub async fn resume_with_hello(
        &self,
        token: &str,
        features: &[&str],
        resume: proto::ResumeInfo,
    ) -> (Conn, ServerFrame) {
        let mut conn = self.open().await;
        conn.send(hello(token, features, Some(resume))).await;
        let first = conn.recv().await;
        (conn, first)
    }
}

/// Opens a session stream on `channel` with the given metadata; `Err` is the status that
/// refused it. For channels built with settings of the test's own.
pub async fn open_on(
    channel: Channel,
    metadata: &[(&'static str, &str)],
) -> Result<Conn, tonic::Status> {
    let (tx, rx) = mpsc::channel::<ClientFrame>(1024);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    for (key, value) in metadata {
        request
            .metadata_mut()
            .insert(*key, MetadataValue::try_from(*value).unwrap());
    }
    let response = ArcpClient::new(channel).session(request).await?;
    Ok(Conn {
        tx: Some(tx),
        rx: response.into_inner(),
        next_id: 0,
    })
}

/// A channel to `addr` whose HTTP/2 windows hold less than 64 KiB, so a client that does not
/// read blocks the server's stream after a frame or two of that size.
pub async fn narrow_channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect")
}

/// One client stream.
pub struct Conn {
    tx: Option<mpsc::Sender<ClientFrame>>,
    pub rx: Streaming<ServerFrame>,
    next_id: u64,
}

impl Conn {
    /// Sends `list_jobs` and returns the `session_jobs` answering it, skipping job frames.
    pub async fn list_jobs(&mut self) -> proto::SessionJobs {
        self.session_jobs(list_jobs()).await
    }

    /// Sends `request` (a `list_jobs` frame) and returns the `session_jobs` answering it,
    /// skipping job frames; a control frame, so without `event_seq` or `job_id`.
    pub async fn session_jobs(&mut self, request: In) -> proto::SessionJobs {
        let id = self.send(request).await;
        let (_, frame) = self
            .recv_until(|f| {
                matches!(
                    f.payload,
                    Some(Out::SessionJobs(_)) | Some(Out::SessionError(_))
                )
            })
            .await;
        assert_eq!(frame.event_seq, 0, "control frames carry no event_seq");
        assert!(frame.job_id.is_empty());
        match frame.payload {
            Some(Out::SessionJobs(jobs)) => {
                assert_eq!(jobs.request_id, id, "session_jobs answers the list frame");
                *jobs
            }
            other => panic!("expected session_jobs, got {other:?}"),
        }
    }

    /// Sends a payload in a frame with a fresh `id`; returns that id.
    pub async fn send(&mut self, payload: In) -> String {
        self.next_id += 1;
        let id = format!("c{}", self.next_id);
        self.send_frame(ClientFrame {
            id: id.clone(),
            payload: Some(payload),
            ..Default::default()
        })
        .await;
        id
    }

    pub async fn send_frame(&mut self, frame: ClientFrame) {
        self.tx
            .as_ref()
            .expect("send side open")
            .send(frame)
            .await
            .expect("stream accepts frames");
    }

    /// Sends a payload unless the server has stopped reading; whether it was sent.
    pub async fn try_send(&mut self, payload: In) -> bool {
        let frame = ClientFrame {
            payload: Some(payload),
            ..Default::default()
        };
        match &self.tx {
            Some(tx) => tx.send(frame).await.is_ok(),
            None => false,
        }
    }

    /// Closes the client's sending half, keeping the receiving half.
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// The next frame; fails the test on a status, end of stream or timeout.
    pub async fn recv(&mut self) -> ServerFrame {
        match self.try_recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("stream ended while a frame was expected"),
            Err(status) => panic!("stream failed while a frame was expected: {status:?}"),
        }
    }

    /// The next frame, `None` at the end of the stream, or the status it ended with.
    pub async fn try_recv(&mut self) -> Result<Option<ServerFrame>, tonic::Status> {
        tokio::time::timeout(FRAME_TIMEOUT, self.rx.message())
            .await
            .expect("no frame arrived within the timeout")
    }

    /// Receives frames until `pred` holds; returns the frames before it and the match.
    pub async fn recv_until(
        &mut self,
        pred: impl Fn(&ServerFrame) -> bool,
    ) -> (Vec<ServerFrame>, ServerFrame) {
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if pred(&frame) {
                return (before, frame);
            }
            before.push(frame);
        }
    }

    /// Receives up to and including the job's terminal frame (`job_result` or `job_error`).
    pub async fn recv_until_terminal(&mut self, job_id: &str) -> (Vec<ServerFrame>, ServerFrame) {
        let job_id = job_id.to_owned();
        self.recv_until(move |f| f.job_id == job_id && is_terminal(f))
            .await
    }

    /// Receives up to the job's terminal frame and asserts the job was cancelled (§7.4):
    /// `job_cancelled`, then a `CANCELLED` error.
    pub async fn expect_cancelled(&mut self, job_id: &str) {
        let (before, terminal) = self.recv_until_terminal(job_id).await;
        assert!(
            before
                .iter()
                .any(|f| matches!(f.payload, Some(Out::JobCancelled(_)))),
            "job_cancelled precedes the terminal error: {before:?}"
        );
        assert_eq!(job_error(&terminal).code, "CANCELLED");
    }
}

/// Submits and waits for the acceptance; returns the job id and the accepted frame.
pub async fn submit_and_accept(conn: &mut Conn, payload: In) -> (String, ServerFrame) {
    let request_id = conn.send(payload).await;
    let frame = conn.recv().await;
    let a = accepted(&frame);
    assert_eq!(
        a.request_id, request_id,
        "job_accepted echoes the submit id"
    );
    (a.job_id.clone(), frame)
}

/// Receives `n` frames.
pub async fn recv_n(conn: &mut Conn, n: usize) -> Vec<ServerFrame> {
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        frames.push(conn.recv().await);
    }
    frames
}

/// Sends a ping and returns the frames before its pong. A connection handles frames in order,
/// so everything sent before the ping (acks included) has been acted on when the pong arrives.
pub async fn sync_with_ping(conn: &mut Conn, nonce: &str) -> Vec<ServerFrame> {
    conn.send(ping(nonce)).await;
    let nonce = nonce.to_owned();
    let (before, _) = conn
        .recv_until(
            move |f| matches!(&f.payload, Some(Out::SessionPong(p)) if p.ping_nonce == nonce),
        )
        .await;
    before
}
