//! `arcp-bench`: measures the gateway on this machine and prints one table, each row the median
//! of `--runs` runs, every comparison measured in the same invocation. See BENCHMARKS.md.
//!
//! 1. live throughput of one session (a `chatter` job, ~100-byte log events, tonic client);
//! 2. the limit: a bare tonic bidi stream of frames of the same encoded size, no ARCP logic;
//! 3. replay of a 100,000-frame log on resume from `last_event_seq` 0;
//! 4. fan-in: many sessions each running a ticking job; aggregate rate and latency from the
//!    agent's emit to the client's receipt;
//! 5. resident memory per idle session (gateway in a child process);
//! 6. a resume storm: many sessions dropped and resumed at once;
//! 7. the reference Python runtime and client doing row 1's workload.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arcp_gateway::{
    agent::{Agent, AgentRegistry, JobContext},
    config::GatewayConfig,
    proto::{
        self, arcp_client::ArcpClient, arcp_server::Arcp, client_frame::Payload as In,
        job_event::Body, server_frame::Payload as Out, ClientFrame, ServerFrame,
    },
    protocol::Json,
    server,
    transport::grpc::convert::to_value,
    ArcpError, Gateway,
};
use clap::Parser;
use futures::{future::BoxFuture, stream::BoxStream, FutureExt, StreamExt};
use prost::Message;
use tokio::{io::AsyncBufReadExt, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Request, Response, Status, Streaming};

#[derive(Parser)]
#[command(name = "arcp-bench", about = "Measure arcp-gateway on this machine")]
struct Args {
    /// Runs per row; each row reports the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Rows to run, e.g. `1,2,3`.
    #[arg(long, default_value = "1,2,3,4,5,6,7", value_delimiter = ',')]
    rows: Vec<u8>,
    /// Events per run in rows 1, 2 and 7.
    #[arg(long, default_value_t = 200_000)]
    live_frames: u64,
    /// Bytes in each event's log message.
    #[arg(long, default_value_t = 100)]
    event_bytes: u64,
    /// Logged frames replayed in row 3.
    #[arg(long, default_value_t = 100_000)]
    replay_frames: u64,
    /// Sessions in row 4.
    #[arg(long, default_value_t = 1000)]
    fan_in_sessions: usize,
    /// Ticks per session in row 4, 10 ms apart; the first `--fan-in-warmup` are reported
    /// separately.
    #[arg(long, default_value_t = 300)]
    fan_in_ticks: u64,
    /// Ticks per session in row 4 that count as start-up rather than steady state.
    #[arg(long, default_value_t = 20)]
    fan_in_warmup: u64,
    /// Sessions in row 5.
    #[arg(long, default_value_t = 10_000)]
    idle_sessions: usize,
    /// Sessions in row 6.
    #[arg(long, default_value_t = 1000)]
    storm_sessions: usize,
    /// A Python interpreter with `agentruntimecontrolprotocol` for row 7; by default a
    /// virtualenv is built in target/bench-venv from tests/interop/requirements.txt.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Serve a gateway and print its address (row 5 runs the gateway in a child process so
    /// its memory is measured alone).
    #[arg(long, hide = true)]
    child_gateway: bool,
}

const TOKEN: &str = "bench-token";
/// Row 1's client acknowledges every this many frames.
const ACK_EVERY: u64 = 1000;
/// Streams per HTTP/2 connection; servers commonly cap concurrent streams at a few hundred.
const STREAMS_PER_CONNECTION: usize = 100;

/// mimalloc rather than the system allocator: the frame path allocates and frees small buffers
/// on every event, from both workers (see BENCHMARKS.md for what it changed). The bench uses
/// the gateway binary's allocator so that it measures the gateway as it ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> BenchResult<()> {
    let args = Args::parse();
    if args.child_gateway {
        return child_gateway().await;
    }
    // The clients run as tasks on the runtime's workers, as a tonic client in a service does,
    // rather than on the main thread, which would be a third thread competing for the cores.
    tokio::spawn(bench(args)).await?
}

async fn bench(args: Args) -> BenchResult<()> {
    let mut table = Table::default();
    // Runs of rows 1, 2, 3 and 7 alternate, so drift on a shared machine hits them alike, and
    // rows 2, 3 and 7 are compared with row 1 run by run.
    let python = if args.rows.contains(&7) {
        Some(python(args.python.clone()))
    } else {
        None
    };
    let (mut live, mut bare, mut replay, mut peer) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bare_server: Option<BareServer> = None;
    for _ in 0..args.runs.max(1) {
        if args.rows.contains(&1) || args.rows.contains(&2) {
            let run = Bench::once(|b| b.live(args.live_frames, args.event_bytes).boxed()).await?;
            if args.rows.contains(&2) {
                let server = match bare_server.take() {
                    Some(server) => server,
                    None => BareServer::start(run.sample.clone()).await?,
                };
                bare.push(server.run(args.live_frames).await?);
                bare_server = Some(server);
            }
            live.push(run);
        }
        if args.rows.contains(&3) {
            replay.push(
                Bench::once(|b| b.replay(args.replay_frames, args.event_bytes).boxed()).await?,
            );
        }
        if let Some(Ok(python)) = &python {
            peer.push(python_peer(python, args.live_frames, args.event_bytes).await?);
        }
    }
    if !live.is_empty() {
        let rate = median(live.iter().map(|r| r.frames_per_sec));
        let mbps = median(live.iter().map(|r| r.bytes_per_sec / 1e6));
        let size = live[0].bytes_per_frame;
        table.row(
            "1",
            "live throughput, one session",
            format!("{rate:.0} frames/s, {mbps:.1} MB/s ({size:.0} B/frame)"),
            String::new(),
        );
    }
    // Rows 2, 3 and 7 are compared with the row 1 run of the same round, and the median taken
    // over rounds: a machine whose speed drifts between runs skews that less than a ratio of
    // medians would.
    if !bare.is_empty() {
        let limit = median(bare.iter().copied());
        let vs = per_round(&live, &bare, |l, b| l.frames_per_sec / b)
            .map(|ratio| {
                format!(
                    "row 1 = {:.0}% of this (median of the runs' ratios)",
                    100.0 * ratio
                )
            })
            .unwrap_or_default();
        table.row(
            "2",
            "bare tonic bidi stream, same frame size",
            format!("{limit:.0} frames/s"),
            vs,
        );
    }
    if !replay.is_empty() {
        let rate = median(replay.iter().map(|r| r.0));
        let first = median(replay.iter().map(|r| r.1));
        let vs = per_round(&live, &replay, |l, r| r.0 / l.frames_per_sec)
            .map(|ratio| format!("{ratio:.2}x row 1 (median of the runs' ratios)"))
            .unwrap_or_default();
        table.row(
            "3",
            &format!("replay of {} frames from seq 0", args.replay_frames),
            format!("{rate:.0} frames/s, first frame after {first:.1} ms"),
            vs,
        );
    }
    if args.rows.contains(&4) {
        for (label, aligned, what) in [
            ("4", false, "first ticks spread over the interval"),
            (
                "4 (worst case)",
                true,
                "all ticking in the same millisecond",
            ),
        ] {
            let runs = repeat(args.runs, || {
                Bench::once(|b| {
                    b.fan_in(
                        args.fan_in_sessions,
                        args.fan_in_ticks,
                        args.fan_in_warmup,
                        aligned,
                    )
                    .boxed()
                })
            })
            .await?;
            let rate = median(runs.iter().map(|r| r.frames_per_sec));
            let [p50, p99, p999] = [0, 1, 2].map(|i| median(runs.iter().map(|r| r.steady_ms[i])));
            let all_p99 = median(runs.iter().map(|r| r.all_p99_ms));
            table.row(
                label,
                &format!(
                    "fan-in, {} sessions ticking every 10 ms, {what}",
                    args.fan_in_sessions
                ),
                format!(
                    "{rate:.0} frames/s; after the first {} ticks: latency p50 {p50:.2} / p99 {p99:.2} / p999 {p999:.2} ms",
                    args.fan_in_warmup
                ),
                format!("p99 {all_p99:.2} ms with the first ticks"),
            );
        }
    }
    if args.rows.contains(&5) {
        let runs = repeat(args.runs, || idle_sessions(args.idle_sessions)).await?;
        let kib = median(runs.iter().copied());
        table.row(
            "5",
            &format!("{} idle sessions", args.idle_sessions),
            format!("{kib:.1} KiB resident per session"),
            String::new(),
        );
    }
    if args.rows.contains(&6) {
        let runs = repeat(args.runs, || {
            Bench::once(|b| b.storm(args.storm_sessions).boxed())
        })
        .await?;
        let ms = median(runs.iter().copied());
        table.row(
            "6",
            &format!("resume storm, {} sessions", args.storm_sessions),
            format!("all live again after {ms:.0} ms"),
            String::new(),
        );
    }
    match python {
        Some(Ok(_)) => {
            let rate = median(peer.iter().copied());
            let vs = per_round(&live, &peer, |l, p| l.frames_per_sec / p)
                .map(|ratio| format!("row 1 = {ratio:.1}x this (median of the runs' ratios)"))
                .unwrap_or_default();
            table.row(
                "7",
                "reference Python runtime + client, row 1's workload",
                format!("{rate:.0} frames/s"),
                vs,
            );
        }
        Some(Err(why)) => table.row(
            "7",
            "reference Python runtime",
            format!("not run: {why}"),
            String::new(),
        ),
        None => {}
    }
    table.print(&args);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The gateway under test, and a client
// ---------------------------------------------------------------------------------------------

/// A gateway serving on 127.0.0.1 in this process, and a connection to it.
struct Bench {
    gateway: Arc<Gateway>,
    channel: Channel,
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

/// The bench's gateway: open authentication, logs large enough to hold a whole run, and the
/// built-in agents plus `stamper`.
fn bench_gateway() -> Arc<Gateway> {
    let config = GatewayConfig {
        max_log_frames: 2_000_000,
        ..GatewayConfig::default()
    };
    let mut agents = AgentRegistry::with_builtins();
    let _ = agents.register("stamper", "1.0.0", Arc::new(Stamper));
    Gateway::builder(config).agents(agents).build()
}

impl Bench {
    async fn start() -> BenchResult<Bench> {
        let gateway = bench_gateway();
        let listener = server::bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let gw = gateway.clone();
        let served = tokio::spawn(async move {
            let _ = server::serve(gw, listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        let channel = connect(addr).await?;
        Ok(Bench {
            gateway,
            channel,
            addr,
            stop,
            served,
        })
    }

    /// One run of a row against a fresh gateway, stopped afterwards, so that no run inherits
    /// another's sessions, logs or jobs.
    async fn once<T>(
        run: impl for<'a> FnOnce(&'a Bench) -> BoxFuture<'a, BenchResult<T>>,
    ) -> BenchResult<T> {
        let bench = Bench::start().await?;
        let result = run(&bench).await;
        let Bench {
            gateway,
            channel,
            stop,
            served,
            ..
        } = bench;
        drop(channel);
        let _ = stop.send(());
        if tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .is_err()
        {
            return Err("the bench gateway did not stop within 10 s".into());
        }
        drop(gateway);
        result
    }
}

/// Enough HTTP/2 connections for `sessions` streams at [`STREAMS_PER_CONNECTION`] each.
async fn connections(addr: SocketAddr, sessions: usize) -> BenchResult<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..sessions.div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(connect(addr).await?);
    }
    Ok(channels)
}

/// Opens one session per entry of `resumes` at once, spread over `channels`; each entry is
/// `None` for a new session or the coordinates to resume.
async fn open_all(
    channels: &[Channel],
    resumes: Vec<Option<proto::ResumeInfo>>,
) -> BenchResult<Vec<(Session, ServerFrame)>> {
    let opening: Vec<_> = resumes
        .into_iter()
        .enumerate()
        .map(|(i, resume)| {
            let channel = channels[i / STREAMS_PER_CONNECTION].clone();
            tokio::spawn(async move { Session::open(channel, resume).await })
        })
        .collect();
    let mut opened = Vec::with_capacity(opening.len());
    for o in opening {
        opened.push(o.await??);
    }
    Ok(opened)
}

async fn connect(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid uri")
        .connect()
        .await
}

/// One session stream.
struct Session {
    tx: mpsc::Sender<ClientFrame>,
    rx: Streaming<ServerFrame>,
}

impl Session {
    async fn open(
        channel: Channel,
        resume: Option<proto::ResumeInfo>,
    ) -> Result<(Session, ServerFrame), Box<dyn std::error::Error + Send + Sync>> {
        let (tx, rx) = mpsc::channel(64);
        let rx = ArcpClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut session = Session { tx, rx };
        session
            .send(In::SessionHello(proto::SessionHello {
                auth: Some(proto::Auth {
                    scheme: "bearer".into(),
                    token: TOKEN.into(),
                }),
                capabilities: Some(proto::Capabilities {
                    features: vec!["progress".into(), "ack".into()],
                    ..Default::default()
                }),
                resume,
                ..Default::default()
            }))
            .await?;
        let welcome = session.recv().await?;
        match welcome.payload {
            Some(Out::SessionWelcome(_)) => Ok((session, welcome)),
            other => Err(format!("expected a welcome, got {other:?}").into()),
        }
    }

    async fn send(&mut self, payload: In) -> Result<(), mpsc::error::SendError<ClientFrame>> {
        self.tx
            .send(ClientFrame {
                payload: Some(payload),
                ..Default::default()
            })
            .await
    }

    async fn recv(&mut self) -> Result<ServerFrame, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.rx.message().await?.ok_or("the stream ended")?)
    }
}

fn submit(agent: &str, input: serde_json::Value) -> In {
    In::JobSubmit(proto::JobSubmit {
        agent: agent.into(),
        input: Some(to_value(&input)),
        ..Default::default()
    })
}

fn is_terminal(frame: &ServerFrame) -> bool {
    matches!(
        frame.payload,
        Some(Out::JobResult(_)) | Some(Out::JobError(_))
    )
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

// ---------------------------------------------------------------------------------------------
// Rows 1 and 2
// ---------------------------------------------------------------------------------------------

struct Live {
    frames_per_sec: f64,
    bytes_per_sec: f64,
    bytes_per_frame: f64,
    sample: ServerFrame,
}

impl Bench {
    /// Row 1: a `chatter` job's events through one session, timed from the first event to the
    /// result.
    async fn live(&self, count: u64, bytes: u64) -> BenchResult<Live> {
        let (mut session, _) = Session::open(self.channel.clone(), None).await?;
        session
            .send(submit(
                "chatter",
                serde_json::json!({"count": count, "bytes": bytes}),
            ))
            .await?;
        let accepted = session.recv().await?;
        if !matches!(accepted.payload, Some(Out::JobAccepted(_))) {
            return Err(format!("expected job_accepted, got {accepted:?}").into());
        }
        let sample = session.recv().await?;
        let received = receive(&mut session.rx, &session.tx).await?;
        Ok(Live {
            frames_per_sec: received.frames as f64 / received.seconds,
            bytes_per_sec: received.bytes as f64 / received.seconds,
            bytes_per_frame: received.bytes as f64 / received.frames as f64,
            sample,
        })
    }
}

/// What the client of rows 1 and 2 received.
struct Received {
    frames: u64,
    bytes: usize,
    seconds: f64,
}

/// The client loop of rows 1 and 2, the same for both so that they differ only on the server
/// side: reads frames until a terminal frame or the end of the stream, counting their encoded
/// bytes and acknowledging every [`ACK_EVERY`] frames, as a well-behaved chatty client does
/// (§6.5) to let the gateway free what it has delivered.
async fn receive(
    rx: &mut Streaming<ServerFrame>,
    tx: &mpsc::Sender<ClientFrame>,
) -> BenchResult<Received> {
    let start = Instant::now();
    let (mut frames, mut bytes) = (0u64, 0usize);
    while let Some(frame) = rx.message().await? {
        frames += 1;
        bytes += frame.encoded_len();
        if is_terminal(&frame) {
            break;
        }
        if frames % ACK_EVERY == 0 {
            let ack = In::SessionAck(proto::SessionAck {
                last_processed_seq: frame.event_seq,
            });
            tx.send(ClientFrame {
                payload: Some(ack),
                ..Default::default()
            })
            .await?;
        }
    }
    Ok(Received {
        frames,
        bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A tonic server of the same service whose stream is `count` copies of one frame: what the
/// transport can do with no ARCP logic behind it.
struct BareServer {
    channel: Channel,
}

struct Bare {
    frame: ServerFrame,
}

#[tonic::async_trait]
impl Arcp for Bare {
    type SessionStream = BoxStream<'static, Result<ServerFrame, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty"))?;
        let count: usize = first
            .id
            .parse()
            .map_err(|_| Status::invalid_argument("id = count"))?;
        // Reads what the client sends (its acks) as the gateway would, and ignores it.
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let frame = self.frame.clone();
        let stream = futures::stream::iter(std::iter::repeat_n(frame, count)).map(Ok);
        Ok(Response::new(stream.boxed()))
    }
}

impl BareServer {
    async fn start(frame: ServerFrame) -> BenchResult<BareServer> {
        let listener = server::bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(proto::arcp_server::ArcpServer::new(Bare { frame }))
                .serve_with_incoming(incoming),
        );
        Ok(BareServer {
            channel: connect(addr).await?,
        })
    }

    async fn run(&self, count: u64) -> BenchResult<f64> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(ClientFrame {
            id: count.to_string(),
            ..Default::default()
        })
        .await?;
        let mut stream = ArcpClient::new(self.channel.clone())
            .session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        stream.message().await?.ok_or("empty")?;
        let received = receive(&mut stream, &tx).await?;
        Ok(received.frames as f64 / received.seconds)
    }
}

// ---------------------------------------------------------------------------------------------
// Row 3
// ---------------------------------------------------------------------------------------------

impl Bench {
    /// Row 3: fills a session's log with `count` events while nobody reads, then resumes from
    /// seq 0. Returns (frames/s, ms to the first replayed frame).
    async fn replay(&self, count: u64, bytes: u64) -> BenchResult<(f64, f64)> {
        let (mut session, welcome) = Session::open(self.channel.clone(), None).await?;
        let Some(Out::SessionWelcome(w)) = &welcome.payload else {
            unreachable!()
        };
        let token = w.resume_token.clone();
        session
            .send(submit(
                "chatter",
                serde_json::json!({"count": count, "bytes": bytes}),
            ))
            .await?;
        // Dropping the stream before the submit is on the wire would cancel it unsent.
        let accepted = session.recv().await?;
        if !matches!(accepted.payload, Some(Out::JobAccepted(_))) {
            return Err(format!("expected job_accepted, got {accepted:?}").into());
        }
        drop(session);
        // accepted + events + result, all logged while the client is away.
        let newest = count + 2;
        let id = arcp_gateway::ids::SessionId::new(welcome.session_id.clone());
        let log = self.gateway.event_log().open(&id).await?;
        while log.bounds().await?.newest.get() < newest {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let start = Instant::now();
        let resume = proto::ResumeInfo {
            session_id: welcome.session_id.clone(),
            resume_token: token,
            last_event_seq: 0,
        };
        let (mut session, _) = Session::open(self.channel.clone(), Some(resume)).await?;
        let mut first = None;
        loop {
            let frame = session.recv().await?;
            first.get_or_insert_with(|| start.elapsed());
            if frame.event_seq == newest {
                break;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let first = first.unwrap_or_default().as_secs_f64() * 1e3;
        Ok((newest as f64 / seconds, first))
    }
}

// ---------------------------------------------------------------------------------------------
// Row 4
// ---------------------------------------------------------------------------------------------

/// `stamper`: `{"count": N, "interval_ms": M, "first_at_us": T}` emits N `metric` events M ms
/// apart, the first at `T` (microseconds since the Unix epoch; at once if that has passed),
/// whose value is the emit time in microseconds since the epoch, so a client on the same
/// machine can compute the delivery latency of each. Late ticks are caught up in a burst, so
/// an overloaded gateway still gets the full load.
struct Stamper;

fn now_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as f64)
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Agent for Stamper {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let count = input.get("count").and_then(Json::as_u64).unwrap_or(100);
        let interval = Duration::from_millis(
            input
                .get("interval_ms")
                .and_then(Json::as_u64)
                .unwrap_or(10),
        );
        let first_at = input.get("first_at_us").and_then(Json::as_f64);
        let wait = first_at.map_or(0.0, |t| (t - now_us()).max(0.0));
        let start = tokio::time::Instant::now() + Duration::from_micros(wait as u64);
        let mut tick = tokio::time::interval_at(start, interval);
        for _ in 0..count {
            tick.tick().await;
            ctx.metric("emitted_at_us", now_us(), Some("us")).await?;
        }
        Ok(Json::Null)
    }
}

struct FanIn {
    frames_per_sec: f64,
    /// p50, p99 and p999 after the warm-up ticks.
    steady_ms: [f64; 3],
    /// p99 over every tick, warm-up included.
    all_p99_ms: f64,
}

/// How long after the submits row 4's first ticks are due: time for every job to be accepted
/// and started, so the ticks measure delivery rather than session and job start-up.
const FAN_IN_LEAD: Duration = Duration::from_millis(500);

impl Bench {
    /// Row 4: `sessions` sessions each run a `stamper` job, ticking every `interval`. With
    /// `aligned`, every session ticks in the same millisecond (a worst case no real population
    /// of independent sessions produces); otherwise their first ticks are spread evenly over
    /// one interval, as independent sessions' would be.
    async fn fan_in(
        &self,
        sessions: usize,
        ticks: u64,
        warmup: u64,
        aligned: bool,
    ) -> BenchResult<FanIn> {
        let interval = Duration::from_millis(10);
        let channels = connections(self.addr, sessions).await?;
        let opened = open_all(&channels, vec![None; sessions]).await?;
        let first_tick = now_us() + FAN_IN_LEAD.as_micros() as f64;
        let mut tasks = Vec::new();
        for (i, (mut session, _)) in opened.into_iter().enumerate() {
            let phase = if aligned {
                0.0
            } else {
                interval.as_micros() as f64 * i as f64 / sessions as f64
            };
            let first_at = first_tick + phase;
            tasks.push(tokio::spawn(async move {
                session
                    .send(submit(
                        "stamper",
                        serde_json::json!({
                            "count": ticks,
                            "interval_ms": interval.as_millis() as u64,
                            "first_at_us": first_at,
                        }),
                    ))
                    .await?;
                let accepted = session.recv().await?;
                if now_us() > first_at {
                    return Err(format!(
                        "a job was accepted after its first tick was due; raise FAN_IN_LEAD ({accepted:?})"
                    )
                    .into());
                }
                let mut latencies = Vec::with_capacity(ticks as usize);
                loop {
                    let frame = session.recv().await?;
                    if let Some(Out::JobEvent(proto::JobEvent {
                        body: Some(Body::Metric(m)),
                        ..
                    })) = &frame.payload
                    {
                        latencies.push((now_us() - m.value) / 1e3);
                    }
                    if is_terminal(&frame) {
                        return BenchResult::Ok(latencies);
                    }
                }
            }));
        }
        let (mut all, mut steady) = (Vec::new(), Vec::new());
        for t in tasks {
            let latencies = t.await??;
            steady.extend(latencies.iter().skip(warmup as usize));
            all.extend(latencies);
        }
        let seconds = (now_us() - first_tick) / 1e6;
        let [p50, p99, p999] = percentiles(&mut steady, [0.50, 0.99, 0.999])?;
        let [all_p99] = percentiles(&mut all, [0.99])?;
        Ok(FanIn {
            frames_per_sec: all.len() as f64 / seconds,
            steady_ms: [p50, p99, p999],
            all_p99_ms: all_p99,
        })
    }
}

/// The `ps` percentiles of `values` (sorted in place).
fn percentiles<const N: usize>(values: &mut [f64], ps: [f64; N]) -> BenchResult<[f64; N]> {
    if values.is_empty() {
        return Err(
            "no latencies were measured; raise --fan-in-ticks above --fan-in-warmup".into(),
        );
    }
    values.sort_by(f64::total_cmp);
    let last = values.len() - 1;
    Ok(ps.map(|p| values[(last as f64 * p).round() as usize]))
}

// ---------------------------------------------------------------------------------------------
// Row 5
// ---------------------------------------------------------------------------------------------

/// Serves the bench gateway and prints `ADDR <addr>`; the parent measures this process.
async fn child_gateway() -> BenchResult<()> {
    let listener = server::bind("127.0.0.1:0".parse()?).await?;
    println!("ADDR {}", listener.local_addr()?);
    server::serve(bench_gateway(), listener, std::future::pending()).await?;
    Ok(())
}

fn resident_kib(pid: u32) -> BenchResult<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or("no VmRSS in /proc/PID/status")?;
    let kib: f64 = line.split_whitespace().nth(1).ok_or("bad VmRSS")?.parse()?;
    Ok(kib)
}

/// Row 5: opens `count` idle sessions on a gateway in a child process; KiB of resident memory
/// per session.
async fn idle_sessions(count: usize) -> BenchResult<f64> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--child-gateway")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("child exited")?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let addr: SocketAddr = loop {
        let line = lines.next_line().await?.ok_or("child gateway exited")?;
        if let Some(addr) = line.strip_prefix("ADDR ") {
            break addr.parse()?;
        }
    };
    let channels = connections(addr, count).await?;
    // One warm-up session so allocator arenas and the runtime are in place before measuring.
    let warm = Session::open(channels[0].clone(), None).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = resident_kib(pid)?;
    let mut held = Vec::with_capacity(count);
    let mut opening = Vec::new();
    for i in 0..count {
        let channel = channels[i / STREAMS_PER_CONNECTION].clone();
        opening.push(tokio::spawn(
            async move { Session::open(channel, None).await },
        ));
        if opening.len() == 500 {
            for o in opening.drain(..) {
                held.push(o.await??);
            }
        }
    }
    for o in opening {
        held.push(o.await??);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = resident_kib(pid)?;
    drop((held, warm));
    child.kill().await?;
    Ok((after - before) / count as f64)
}

// ---------------------------------------------------------------------------------------------
// Row 6
// ---------------------------------------------------------------------------------------------

impl Bench {
    /// Row 6: `count` sessions drop their streams at once and resume; ms until every one has
    /// its welcome.
    async fn storm(&self, count: usize) -> BenchResult<f64> {
        let channels = connections(self.addr, count).await?;
        let opened = open_all(&channels, vec![None; count]).await?;
        let mut resumes = Vec::new();
        for (session, welcome) in opened {
            let Some(Out::SessionWelcome(w)) = welcome.payload else {
                unreachable!()
            };
            resumes.push(Some(proto::ResumeInfo {
                session_id: welcome.session_id,
                resume_token: w.resume_token,
                last_event_seq: 0,
            }));
            // The stream drops here: every session is detached before the storm starts.
            drop(session);
        }
        let start = Instant::now();
        open_all(&channels, resumes).await?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }
}

// ---------------------------------------------------------------------------------------------
// Row 7
// ---------------------------------------------------------------------------------------------

fn python(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(python) = explicit {
        return Ok(python);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/bench-venv");
    let python = venv.join("bin/python");
    if python.exists() {
        return Ok(python);
    }
    let ok = |cmd: &mut std::process::Command| cmd.status().map(|s| s.success()).unwrap_or(false);
    if !ok(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv))
    {
        return Err("python3 -m venv failed (is python3 installed?)".into());
    }
    if !ok(std::process::Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(root.join("tests/interop/requirements.txt")))
    {
        return Err("pip could not install tests/interop/requirements.txt".into());
    }
    Ok(python)
}

async fn python_peer(python: &Path, count: u64, bytes: u64) -> BenchResult<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/python_peer.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args(["--count", &count.to_string(), "--bytes", &bytes.to_string()])
        .output()
        .await?;
    if !out.status.success() {
        return Err(format!(
            "python_peer.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(line.lines().last().unwrap_or_default())?;
    let frames = result["frames"].as_f64().ok_or("no frames")?;
    let seconds = result["seconds"].as_f64().ok_or("no seconds")?;
    Ok(frames / seconds)
}

// ---------------------------------------------------------------------------------------------
// Runs and the table
// ---------------------------------------------------------------------------------------------

async fn repeat<T, F, Fut>(runs: usize, mut run: F) -> BenchResult<Vec<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = BenchResult<T>>,
{
    let mut results = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        results.push(run().await?);
    }
    Ok(results)
}

/// The median over rounds of `ratio` between a round's row 1 run and its run of another row;
/// `None` when row 1 did not run.
fn per_round<T>(live: &[Live], other: &[T], ratio: impl Fn(&Live, &T) -> f64) -> Option<f64> {
    (!live.is_empty()).then(|| median(live.iter().zip(other).map(|(l, o)| ratio(l, o))))
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[derive(Default)]
struct Table {
    rows: Vec<[String; 4]>,
}

impl Table {
    fn row(&mut self, n: &str, what: &str, result: String, comparison: String) {
        self.rows.push([n.into(), what.into(), result, comparison]);
    }

    fn print(&self, args: &Args) {
        println!(
            "arcp-bench {} ({} cores), median of {} runs",
            env!("CARGO_PKG_VERSION"),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            args.runs
        );
        println!();
        println!("| row | workload | result | comparison |");
        println!("| --- | --- | --- | --- |");
        for [n, what, result, comparison] in &self.rows {
            println!("| {n} | {what} | {result} | {comparison} |");
        }
    }
}
