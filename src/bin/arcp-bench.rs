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
use futures::{stream::BoxStream, StreamExt};
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
    /// Ticks per session in row 4, 10 ms apart.
    #[arg(long, default_value_t = 100)]
    fan_in_ticks: u64,
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

#[tokio::main]
async fn main() -> BenchResult<()> {
    let args = Args::parse();
    if args.child_gateway {
        return child_gateway().await;
    }
    let mut table = Table::default();
    let bench = Bench::start().await?;
    let mut live_frame = None;
    let mut row1 = None;
    if args.rows.contains(&1) || args.rows.contains(&2) {
        let runs = repeat(args.runs, || bench.live(args.live_frames, args.event_bytes)).await?;
        live_frame = runs.first().map(|r| r.sample.clone());
        let rate = median(runs.iter().map(|r| r.frames_per_sec));
        let mbps = median(runs.iter().map(|r| r.bytes_per_sec / 1e6));
        let size = runs[0].bytes_per_frame;
        row1 = Some(rate);
        table.row(
            "1",
            "live throughput, one session",
            format!("{rate:.0} frames/s, {mbps:.1} MB/s ({size:.0} B/frame)"),
            String::new(),
        );
    }
    if args.rows.contains(&2) {
        let frame = live_frame.clone().ok_or("row 2 needs row 1's frame")?;
        let bare = BareServer::start(frame).await?;
        let runs = repeat(args.runs, || bare.run(args.live_frames)).await?;
        let rate = median(runs.iter().copied());
        let ratio = row1.map(|r| format!("row 1 = {:.0}% of this", 100.0 * r / rate));
        table.row(
            "2",
            "bare tonic bidi stream, same frame size",
            format!("{rate:.0} frames/s"),
            ratio.unwrap_or_default(),
        );
    }
    if args.rows.contains(&3) {
        let runs = repeat(args.runs, || {
            bench.replay(args.replay_frames, args.event_bytes)
        })
        .await?;
        let rate = median(runs.iter().map(|r| r.0));
        let first = median(runs.iter().map(|r| r.1));
        let vs = row1.map(|r| format!("{:.2}x row 1", rate / r));
        table.row(
            "3",
            &format!("replay of {} frames from seq 0", args.replay_frames),
            format!("{rate:.0} frames/s, first frame after {first:.1} ms"),
            vs.unwrap_or_default(),
        );
    }
    if args.rows.contains(&4) {
        let runs = repeat(args.runs, || {
            bench.fan_in(args.fan_in_sessions, args.fan_in_ticks)
        })
        .await?;
        let rate = median(runs.iter().map(|r| r.frames_per_sec));
        let [p50, p99, p999] = [0, 1, 2].map(|i| median(runs.iter().map(|r| r.latency_ms[i])));
        table.row(
            "4",
            &format!(
                "fan-in, {} sessions ticking every 10 ms",
                args.fan_in_sessions
            ),
            format!("{rate:.0} frames/s; latency p50 {p50:.2} / p99 {p99:.2} / p999 {p999:.2} ms"),
            String::new(),
        );
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
        let runs = repeat(args.runs, || bench.storm(args.storm_sessions)).await?;
        let ms = median(runs.iter().copied());
        table.row(
            "6",
            &format!("resume storm, {} sessions", args.storm_sessions),
            format!("all live again after {ms:.0} ms"),
            String::new(),
        );
    }
    if args.rows.contains(&7) {
        match python(args.python.clone()) {
            Ok(python) => {
                let runs = repeat(args.runs, || {
                    python_peer(&python, args.live_frames, args.event_bytes)
                })
                .await?;
                let rate = median(runs.iter().copied());
                let vs = row1.map(|r| format!("row 1 = {:.1}x this", r / rate));
                table.row(
                    "7",
                    "reference Python runtime + client, row 1's workload",
                    format!("{rate:.0} frames/s"),
                    vs.unwrap_or_default(),
                );
            }
            Err(why) => table.row(
                "7",
                "reference Python runtime",
                format!("not run: {why}"),
                String::new(),
            ),
        }
    }
    table.print(&args);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The gateway under test, and a client
// ---------------------------------------------------------------------------------------------

struct Bench {
    gateway: Arc<Gateway>,
    channel: Channel,
    addr: SocketAddr,
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
        let gw = gateway.clone();
        tokio::spawn(async move {
            let _ = server::serve(gw, listener, std::future::pending()).await;
        });
        let channel = connect(addr).await?;
        Ok(Bench {
            gateway,
            channel,
            addr,
        })
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
        let start = Instant::now();
        let (mut frames, mut total) = (0u64, 0usize);
        loop {
            let frame = session.recv().await?;
            frames += 1;
            total += frame.encoded_len();
            if is_terminal(&frame) {
                break;
            }
            // A well-behaved chatty client acknowledges in batches (§6.5), which lets the
            // gateway free what it has delivered.
            if frames % ACK_EVERY == 0 {
                session
                    .send(In::SessionAck(proto::SessionAck {
                        last_processed_seq: frame.event_seq,
                    }))
                    .await?;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        Ok(Live {
            frames_per_sec: frames as f64 / seconds,
            bytes_per_sec: total as f64 / seconds,
            bytes_per_frame: total as f64 / frames as f64,
            sample,
        })
    }
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
        let (tx, rx) = mpsc::channel(1);
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
        let start = Instant::now();
        let mut frames = 0u64;
        while stream.message().await?.is_some() {
            frames += 1;
        }
        drop(tx);
        Ok(frames as f64 / start.elapsed().as_secs_f64())
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
        while self.gateway.event_log().bounds(&id).await?.newest.get() < newest {
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

/// `stamper`: `{"count": N, "interval_ms": M}` emits N `metric` events M ms apart whose value
/// is the emit time in microseconds since the Unix epoch, so a client on the same machine can
/// compute the delivery latency of each.
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
        let mut tick = tokio::time::interval(interval);
        for _ in 0..count {
            tick.tick().await;
            ctx.metric("emitted_at_us", now_us(), Some("us")).await?;
        }
        Ok(Json::Null)
    }
}

struct FanIn {
    frames_per_sec: f64,
    latency_ms: [f64; 3],
}

impl Bench {
    /// Row 4: `sessions` sessions each run a `stamper` job at once.
    async fn fan_in(&self, sessions: usize, ticks: u64) -> BenchResult<FanIn> {
        let channels = connections(self.addr, sessions).await?;
        let opened = open_all(&channels, vec![None; sessions]).await?;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (mut session, _) in opened {
            tasks.push(tokio::spawn(async move {
                session
                    .send(submit(
                        "stamper",
                        serde_json::json!({"count": ticks, "interval_ms": 10}),
                    ))
                    .await?;
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
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        let seconds = start.elapsed().as_secs_f64();
        all.sort_by(f64::total_cmp);
        let pct = |p: f64| all[((all.len() as f64 - 1.0) * p).round() as usize];
        Ok(FanIn {
            frames_per_sec: all.len() as f64 / seconds,
            latency_ms: [pct(0.50), pct(0.99), pct(0.999)],
        })
    }
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
