//! The client side every row shares: a gateway under test serving in this process
//! ([`Bench`]), tonic connections and sessions to it, and the frame loop rows 1 and 2 both use
//! so that they differ only on the server side.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use arcp_gateway::{
    agent::{Agent, AgentRegistry},
    config::GatewayConfig,
    gateway::GatewayBuilder,
    ids::ReplicaId,
    metrics::store_latency::Store,
    proto::{
        self, arcp_client::ArcpClient, client_frame::Payload as In, server_frame::Payload as Out,
        ClientFrame, ServerFrame,
    },
    server,
    store::{log::LogLimits, redis::RedisSettings, StoreChoice, Stores},
    transport::grpc::convert::to_value,
    Gateway,
};
use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Streaming};

use crate::{redis::RedisFixture, rows::fan_in::Stamper, BenchResult};

const TOKEN: &str = "bench-token";
/// Row 1's client acknowledges every this many frames.
const ACK_EVERY: u64 = 1000;
/// Streams per HTTP/2 connection; servers commonly cap concurrent streams at a few hundred.
pub(crate) const STREAMS_PER_CONNECTION: usize = 100;

/// A gateway serving on 127.0.0.1 in this process, and a connection to it.
pub(crate) struct Bench {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) channel: Channel,
    pub(crate) addr: SocketAddr,
    /// Where it serves WebSocket.
    pub(crate) ws_addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

/// Where a bench gateway keeps its state.
#[derive(Clone, Copy)]
pub(crate) enum BenchStore<'r> {
    /// The embedded stores.
    Memory,
    /// The bench's redis-server; every [`Bench::once`] starts from an empty one.
    Redis(&'r RedisFixture),
}

impl BenchStore<'_> {
    /// What the table's row labels end with.
    pub(crate) fn suffix(&self) -> &'static str {
        match self {
            BenchStore::Memory => "",
            BenchStore::Redis(_) => " redis",
        }
    }

    /// Redis's count of reads from its clients so far: each is one request (or one pipeline)
    /// arriving, so the difference over a run is its round trips.
    pub(crate) fn reads(&self) -> BenchResult<Option<f64>> {
        match self {
            BenchStore::Memory => Ok(None),
            BenchStore::Redis(redis) => redis.stat("stats", "total_reads_processed").map(Some),
        }
    }

    /// Redis's memory in use, bytes.
    pub(crate) fn used_memory(&self) -> BenchResult<Option<f64>> {
        match self {
            BenchStore::Memory => Ok(None),
            BenchStore::Redis(redis) => redis.stat("memory", "used_memory").map(Some),
        }
    }

    /// The stores replica `replica` of a bench gateway uses.
    fn stores(&self, replica: &str, limits: LogLimits) -> BenchResult<Stores> {
        Ok(match self {
            // Timed as `arcp-gateway serve` times them (`Stores::open`).
            BenchStore::Memory => Stores::memory_with_limits(limits).timed(Store::Memory),
            BenchStore::Redis(redis) => Stores::open(
                &StoreChoice::Redis(redis.url.clone()),
                "bench",
                RedisSettings::default(),
                &ReplicaId::new(replica),
                limits,
            )?,
        })
    }
}

/// The bench's gateway: open authentication, logs large enough to hold a whole run, no caps on
/// a principal's sessions or jobs, and the built-in agents plus `stamper`.
pub(crate) fn bench_gateway() -> Arc<Gateway> {
    bench_gateway_builder().build()
}

fn bench_gateway_builder() -> GatewayBuilder {
    let config = GatewayConfig {
        max_log_frames: 2_000_000,
        max_log_bytes: u64::MAX,
        retained_bytes_budget: u64::MAX,
        // Rows 4 to 6 hold thousands of sessions and jobs of one principal, and row 5 ws as
        // many connections from one address.
        max_sessions_per_principal: usize::MAX,
        max_jobs_per_principal: usize::MAX,
        max_connections_per_peer: std::num::NonZeroUsize::MAX,
        ..GatewayConfig::default()
    };
    Gateway::builder(config).agents(bench_agents())
}

/// The built-in agents and `stamper`.
fn bench_agents() -> AgentRegistry {
    let mut agents = AgentRegistry::with_builtins();
    let _ = agents.register("stamper", "1.0.0", Arc::new(Stamper));
    agents
}

impl Bench {
    /// A bench gateway as replica `replica` on `store`.
    pub(crate) async fn start(store: BenchStore<'_>, replica: &str) -> BenchResult<Bench> {
        Bench::start_with(store, replica, bench_gateway_builder()).await
    }

    /// A bench gateway on the memory stores that also offers `agent` as `name`.
    pub(crate) async fn with_agent(name: &str, agent: Arc<dyn Agent>) -> BenchResult<Bench> {
        let mut agents = bench_agents();
        agents.register(name, "1.0.0", agent)?;
        let builder = bench_gateway_builder().agents(agents);
        Bench::start_with(BenchStore::Memory, "bench-a", builder).await
    }

    async fn start_with(
        store: BenchStore<'_>,
        replica: &str,
        builder: GatewayBuilder,
    ) -> BenchResult<Bench> {
        let stores = store.stores(replica, builder.config().log_limits())?;
        let gateway = builder
            .stores(stores)
            .replica(ReplicaId::new(replica))
            .build();
        let listener = server::bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let ws_listener = server::bind("127.0.0.1:0".parse()?).await?;
        let ws_addr = ws_listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let gw = gateway.clone();
        let served = tokio::spawn(async move {
            let _ = server::serve_all(gw, listener, ws_listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        let channel = connect(addr).await?;
        Ok(Bench {
            gateway,
            channel,
            addr,
            ws_addr,
            stop,
            served,
        })
    }

    /// One run of a row against a fresh gateway on `store`, stopped afterwards, so that no run
    /// inherits another's sessions, logs or jobs.
    pub(crate) async fn once<T>(
        store: BenchStore<'_>,
        run: impl for<'a> FnOnce(&'a Bench) -> BoxFuture<'a, BenchResult<T>>,
    ) -> BenchResult<T> {
        let bench = Bench::fresh(store).await?;
        let result = run(&bench).await;
        bench.stop().await?;
        result
    }

    /// A gateway on `store`, emptied first.
    pub(crate) async fn fresh(store: BenchStore<'_>) -> BenchResult<Bench> {
        if let BenchStore::Redis(redis) = store {
            redis.flush()?;
        }
        Bench::start(store, "bench-a").await
    }

    /// Stops the gateway and waits for it.
    pub(crate) async fn stop(self) -> BenchResult<()> {
        let Bench {
            gateway,
            channel,
            stop,
            served,
            ..
        } = self;
        drop(channel);
        let _ = stop.send(());
        if tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .is_err()
        {
            return Err("the bench gateway did not stop within 10 s".into());
        }
        drop(gateway);
        Ok(())
    }
}

/// Enough HTTP/2 connections for `sessions` streams at [`STREAMS_PER_CONNECTION`] each.
pub(crate) async fn connections(addr: SocketAddr, sessions: usize) -> BenchResult<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..sessions.div_ceil(STREAMS_PER_CONNECTION) {
        channels.push(connect(addr).await?);
    }
    Ok(channels)
}

/// Opens one session per entry of `resumes` at once, spread over `channels`; each entry is
/// `None` for a new session or the coordinates to resume.
pub(crate) async fn open_all(
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

pub(crate) async fn connect(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("http://{addr}"))
        .expect("a valid uri")
        .connect()
        .await
}

/// One session stream.
pub(crate) struct Session {
    pub(crate) tx: mpsc::Sender<ClientFrame>,
    pub(crate) rx: Streaming<ServerFrame>,
}

impl Session {
    /// Opens a stream, sends a hello (a resume with `resume`) and expects the welcome.
    pub(crate) async fn open(
        channel: Channel,
        resume: Option<proto::ResumeInfo>,
    ) -> BenchResult<(Session, ServerFrame)> {
        let (session, first) = Session::start(channel, resume).await?;
        match first.payload {
            Some(Out::SessionWelcome(_)) => Ok((session, first)),
            other => Err(format!("expected a welcome, got {other:?}").into()),
        }
    }

    /// Opens a stream, sends a hello (a resume with `resume`) and returns the first frame the
    /// gateway answers with, whatever it is.
    pub(crate) async fn start(
        channel: Channel,
        resume: Option<proto::ResumeInfo>,
    ) -> BenchResult<(Session, ServerFrame)> {
        let (tx, rx) = mpsc::channel(64);
        let rx = ArcpClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut session = Session { tx, rx };
        session.send(hello(resume)).await?;
        let first = session.recv().await?;
        Ok((session, first))
    }

    pub(crate) async fn send(
        &mut self,
        payload: In,
    ) -> Result<(), mpsc::error::SendError<ClientFrame>> {
        self.tx
            .send(ClientFrame {
                payload: Some(payload),
                ..Default::default()
            })
            .await
    }

    pub(crate) async fn recv(
        &mut self,
    ) -> Result<ServerFrame, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.rx.message().await?.ok_or("the stream ended")?)
    }

    /// Submits a `chatter` job of `count` log events of `bytes` bytes each, and waits for its
    /// `job_accepted`: until then, dropping the stream could cancel the submit unsent.
    pub(crate) async fn start_chatter(&mut self, count: u64, bytes: u64) -> BenchResult<()> {
        self.start_job("chatter", count, bytes).await
    }

    /// [`Session::start_chatter`] on `agent`, any agent taking `chatter`'s input.
    pub(crate) async fn start_job(
        &mut self,
        agent: &str,
        count: u64,
        bytes: u64,
    ) -> BenchResult<()> {
        self.send(submit(
            agent,
            serde_json::json!({"count": count, "bytes": bytes}),
        ))
        .await?;
        let accepted = self.recv().await?;
        if !matches!(accepted.payload, Some(Out::JobAccepted(_))) {
            return Err(format!("expected job_accepted, got {accepted:?}").into());
        }
        Ok(())
    }
}

/// The bench's `session.hello`: its token, `progress` and `ack`, and `resume` if given.
pub(crate) fn hello(resume: Option<proto::ResumeInfo>) -> In {
    In::SessionHello(proto::SessionHello {
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
    })
}

pub(crate) fn submit(agent: &str, input: serde_json::Value) -> In {
    In::JobSubmit(proto::JobSubmit {
        agent: agent.into(),
        input: Some(to_value(&input)),
        ..Default::default()
    })
}

pub(crate) fn is_terminal(frame: &ServerFrame) -> bool {
    matches!(
        frame.payload,
        Some(Out::JobResult(_)) | Some(Out::JobError(_))
    )
}

/// What the client of rows 1 and 2 received.
pub(crate) struct Received {
    pub(crate) frames: u64,
    pub(crate) bytes: usize,
    pub(crate) seconds: f64,
}

/// The client loop of rows 1 and 2, the same for both so that they differ only on the server
/// side: reads frames until a terminal frame or the end of the stream, counting their encoded
/// bytes and acknowledging every [`ACK_EVERY`] frames, as a well-behaved chatty client does
/// (§6.5) to let the gateway free what it has delivered.
pub(crate) async fn receive(
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
