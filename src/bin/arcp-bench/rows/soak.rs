//! Row 8: a soak under hostile clients, against a gateway in a child process running with the
//! production defaults. For a bounded time, at once:
//!
//! - sessions drop their streams at random while their jobs emit, and resume from the last
//!   event they processed;
//! - slow readers take every frame with a delay;
//! - a client submits a job of large events and never reads;
//! - streams send a hello and then bytes that are no `ClientFrame`;
//! - an attacker holds idle TCP connections and half-sent WebSocket upgrades open, opening a
//!   new one whenever the gateway closes one.
//!
//! Every session checks that its job frames arrive exactly once and in order (`event_seq`
//! one above the last); the row reports peak resident memory of the gateway and the frames
//! lost or duplicated, and fails if either is over its bound.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use arcp_gateway::{
    config::GatewayConfig,
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out, ServerFrame},
    Gateway,
};
use prost::{
    bytes::{Buf, BufMut, Bytes},
    Message,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
    Status,
};

use crate::{
    child::{ChildConfig, ChildGateway},
    client::{connections, hello, is_terminal, submit, Session, STREAMS_PER_CONNECTION},
    BenchResult,
};

/// The soak's gateway: the production defaults and the built-in agents.
pub(crate) fn soak_gateway() -> Arc<Gateway> {
    Gateway::builder(GatewayConfig::default()).build()
}

/// How hard the soak pushes, and for how long.
pub(crate) struct SoakLoad {
    /// How long clients keep starting work.
    pub(crate) duration: Duration,
    /// Sessions that drop and resume at random.
    pub(crate) resuming: usize,
    /// Sessions that read slowly.
    pub(crate) slow: usize,
    /// Idle connections the attacker holds open.
    pub(crate) idle: usize,
}

/// What the soak saw.
#[derive(Default)]
pub(crate) struct SoakReport {
    /// Job frames received.
    pub(crate) frames: AtomicU64,
    /// Job frames that never arrived (a sequence number skipped).
    pub(crate) lost: AtomicU64,
    /// Job frames that arrived twice (a sequence number repeated or going back).
    pub(crate) duplicated: AtomicU64,
    /// Resumes that got their welcome.
    pub(crate) resumes: AtomicU64,
    /// Resumes refused with `RESUME_WINDOW_EXPIRED` (explicit, so not a loss).
    pub(crate) expired: AtomicU64,
    /// Streams that sent garbage after their hello.
    pub(crate) garbage: AtomicU64,
    /// Of those, the ones answered with a `session_error` or a gRPC status.
    pub(crate) garbage_answered: AtomicU64,
    /// Idle connections the gateway closed.
    pub(crate) idle_closed: AtomicU64,
    /// Resident memory before the load, MiB.
    pub(crate) baseline_mib: f64,
    /// Peak resident memory (VmHWM), MiB.
    pub(crate) peak_mib: f64,
}

impl SoakReport {
    fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Job frames received.
    pub(crate) fn frames(&self) -> u64 {
        Self::count(&self.frames)
    }

    /// Lost plus duplicated frames; must be zero.
    pub(crate) fn inexact(&self) -> u64 {
        Self::count(&self.lost) + Self::count(&self.duplicated)
    }

    /// The counters, for the table.
    pub(crate) fn summary(&self) -> String {
        format!(
            "{} frames, {} lost, {} duplicated; {} resumes ({} refused as expired); garbage streams answered {}/{}; idle connections closed by the gateway {}",
            self.frames(),
            Self::count(&self.lost),
            Self::count(&self.duplicated),
            Self::count(&self.resumes),
            Self::count(&self.expired),
            Self::count(&self.garbage_answered),
            Self::count(&self.garbage),
            Self::count(&self.idle_closed),
        )
    }
}

/// Row 8: runs `load` against a child gateway; the report, with its memory.
pub(crate) async fn soak(load: SoakLoad) -> BenchResult<SoakReport> {
    let child = ChildGateway::start(ChildConfig::Soak).await?;
    let channels = connections(child.grpc, load.resuming + load.slow + 1).await?;
    let mut report = SoakReport {
        baseline_mib: child.resident_kib()? / 1024.0,
        ..SoakReport::default()
    };
    let tally = Arc::new(std::mem::take(&mut report));
    let until = Instant::now() + load.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let channel = |i: usize| channels[i / STREAMS_PER_CONNECTION].clone();
    for i in 0..load.resuming + load.slow {
        let reader = if i < load.resuming {
            Reader::Resuming
        } else {
            Reader::Slow
        };
        let (addr, channel, tally) = (child.grpc, channel(i), tally.clone());
        tasks.spawn(async move {
            session(addr, channel, reader, until, tally, i as u64)
                .await
                .map_err(|e| format!("session {i}: {e}").into())
        });
    }
    // The client that never reads holds its stream until the end.
    let never = {
        let (mut session, _) = Session::open(channel(load.resuming + load.slow), None).await?;
        session
            .start_chatter(1_000_000, 60 * 1024)
            .await
            .map(|()| session)?
    };
    for i in 0..4 {
        let tally = tally.clone();
        tasks.spawn(async move {
            garbage(child.grpc, until, tally, 1000 + i)
                .await
                .map_err(|e| format!("garbage stream: {e}").into())
        });
    }
    for i in 0..load.idle {
        let target = if i % 2 == 0 {
            Idle::Tcp(child.grpc)
        } else {
            Idle::HalfUpgrade(child.websocket)
        };
        tasks.spawn(idle(target, until, tally.clone()));
    }
    let mut outcome = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            outcome = Err(e);
        }
    }
    drop(never);
    outcome?;
    let mut report = Arc::try_unwrap(tally).map_err(|_| "a soak task outlived the soak")?;
    report.peak_mib = child.peak_kib()? / 1024.0;
    Ok(report)
}

#[derive(Clone, Copy)]
enum Reader {
    /// Drops its stream at random and resumes.
    Resuming,
    /// Never drops, takes each frame with a delay.
    Slow,
}

/// One session running `chatter` jobs back to back until `until`, checking that its job frames
/// arrive exactly once and in order across its resumes.
async fn session(
    addr: SocketAddr,
    mut channel: Channel,
    reader: Reader,
    until: Instant,
    tally: Arc<SoakReport>,
    seed: u64,
) -> BenchResult<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut stream, welcome) = Session::open(channel.clone(), None).await?;
    let sid = welcome.session_id.clone();
    let mut token = resume_token(&welcome)?;
    let mut last = 0u64;
    let mut running = false;
    let (count, delay) = match reader {
        Reader::Resuming => (5_000, None),
        Reader::Slow => (1_000, Some(Duration::from_millis(2))),
    };
    loop {
        if !running {
            if Instant::now() >= until {
                return Ok(());
            }
            stream
                .send(submit(
                    "chatter",
                    serde_json::json!({"count": count, "bytes": 200}),
                ))
                .await
                .map_err(|_| "submit: stream closed")?;
            running = true;
        }
        let drop_after = match reader {
            Reader::Resuming => rng.random_range(50..3_000),
            Reader::Slow => u64::MAX,
        };
        let mut read = 0u64;
        while running && read < drop_after {
            let frame = stream.recv().await?;
            if let Some(Out::SessionError(e)) = &frame.payload {
                return Err(format!("session {sid}: {}: {}", e.code, e.message).into());
            }
            if frame.event_seq == 0 {
                continue;
            }
            tally.frames.fetch_add(1, Ordering::Relaxed);
            match frame.event_seq.checked_sub(last) {
                Some(1) => {}
                Some(0) | None => {
                    tally.duplicated.fetch_add(1, Ordering::Relaxed);
                }
                Some(skipped) => {
                    tally.lost.fetch_add(skipped - 1, Ordering::Relaxed);
                }
            }
            last = last.max(frame.event_seq);
            running = !is_terminal(&frame);
            read += 1;
            if read % 500 == 0 {
                let ack = In::SessionAck(proto::SessionAck {
                    last_processed_seq: last,
                });
                stream.send(ack).await.map_err(|_| "ack: stream closed")?;
            }
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
        }
        if !running {
            continue;
        }
        // The connection drops; the client is away for a moment while the job goes on
        // emitting, then reconnects and resumes from `last`. A new connection each time, as
        // after a real drop: streams reset on a connection the server is still sending on
        // count towards h2's limit of locally reset streams, and the bench's own client would
        // give the connection up (GOAWAY "too_many_internal_resets") after about a thousand.
        drop(stream);
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
        channel = crate::client::connect(addr).await?;
        let resume = proto::ResumeInfo {
            session_id: sid.clone(),
            resume_token: token.clone(),
            last_event_seq: last,
        };
        let (resumed, first) = Session::start(channel.clone(), Some(resume)).await?;
        match &first.payload {
            Some(Out::SessionWelcome(w)) => {
                token = w.resume_token.clone();
                tally.resumes.fetch_add(1, Ordering::Relaxed);
                stream = resumed;
            }
            Some(Out::SessionError(e)) if e.code == "RESUME_WINDOW_EXPIRED" => {
                tally.expired.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            other => return Err(format!("session {sid}: resume answered {other:?}").into()),
        }
    }
}

fn resume_token(welcome: &ServerFrame) -> BenchResult<String> {
    match &welcome.payload {
        Some(Out::SessionWelcome(w)) => Ok(w.resume_token.clone()),
        other => Err(format!("expected a welcome, got {other:?}").into()),
    }
}

/// Opens streams that send a good hello and then a message that is no `ClientFrame`, and
/// counts the ones the gateway answers (a `session_error`, or the stream ending with a status
/// other than OK) within a few seconds.
async fn garbage(
    addr: SocketAddr,
    until: Instant,
    tally: Arc<SoakReport>,
    seed: u64,
) -> BenchResult<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let channel = crate::client::connect(addr).await?;
    while Instant::now() < until {
        let mut junk = vec![0u8; rng.random_range(1..256)];
        rng.fill(&mut junk[..]);
        let hello = proto::ClientFrame {
            payload: Some(hello(None)),
            ..Default::default()
        }
        .encode_to_vec();
        let outbound = futures::stream::iter([Bytes::from(hello), Bytes::from(junk)]);
        tally.garbage.fetch_add(1, Ordering::Relaxed);
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/arcp.v1.Arcp/Session");
        let answered = async {
            let mut inbound = grpc
                .streaming(tonic::Request::new(outbound), path, RawCodec)
                .await?
                .into_inner();
            loop {
                match inbound.message().await {
                    Ok(Some(bytes)) => {
                        let frame = ServerFrame::decode(bytes)
                            .map_err(|e| Status::internal(e.to_string()))?;
                        if matches!(frame.payload, Some(Out::SessionError(_))) {
                            return Ok::<bool, Status>(true);
                        }
                    }
                    Ok(None) => return Ok(false),
                    Err(status) => return Ok(status.code() != tonic::Code::Ok),
                }
            }
        };
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(3), answered).await {
            tally.garbage_answered.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

enum Idle {
    /// A TCP connection to the gRPC port that sends nothing.
    Tcp(SocketAddr),
    /// Half of a WebSocket upgrade request, never finished.
    HalfUpgrade(SocketAddr),
}

/// Holds one idle connection open until `until`, opening another whenever the gateway closes
/// it.
async fn idle(target: Idle, until: Instant, tally: Arc<SoakReport>) -> BenchResult<()> {
    let deadline = tokio::time::Instant::from_std(until);
    while Instant::now() < until {
        let (addr, partial): (SocketAddr, &[u8]) = match target {
            Idle::Tcp(addr) => (addr, b""),
            Idle::HalfUpgrade(addr) => (addr, b"GET /arcp HTTP/1.1\r\nHost: gateway\r\n"),
        };
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            // Refused (a per-peer cap, say): try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.write_all(partial).await;
        // The gateway may answer (HTTP/2 sends its settings first); only its close counts.
        let mut sink = [0u8; 512];
        loop {
            match tokio::time::timeout_at(deadline, tcp.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => return Ok(()),
            }
        }
        tally.idle_closed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Sends and receives messages as raw bytes, so a stream can carry bytes that are no frame.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
