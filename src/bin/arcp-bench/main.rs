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
//! 7. the reference Python runtime and client doing row 1's workload;
//! 8. a soak under hostile clients (gateway in a child process, production defaults): peak
//!    memory, and frames lost or duplicated across random drops and resumes;
//! 9. the reference Python runtime serving row 1's workload to the bench's WebSocket client,
//!    the one row 1 ws uses against the gateway: the fair pair for the WebSocket path;
//! 10. the hop to an agent in another language: a stdio child emitting row 1's workload,
//!     through the gateway to a tonic client, against its own output read directly.
//!
//! With `--transports` naming `websocket`, rows 1, 3 and 5 also run over WebSocket JSON (rows
//! "1 ws", "3 ws", "5 ws", on the memory stores) with the bench's own Rust client ([`ws`]).
//!
//! Rows 1, 3, 4 and 6 run on each store of `--stores`: the embedded memory stores, and Redis
//! (a `redis-server` the bench starts, [`redis`]), where row 6 resumes the sessions on a
//! second replica.
//!
//! Each row is a module of [`rows`]; [`client`] is the tonic client and in-process gateway
//! they share, [`stats`] reduces runs to medians and [`table`] prints the result.

mod child;
mod client;
mod redis;
mod rows;
mod stats;
mod table;
mod ws;

use std::{path::PathBuf, time::Duration};

use arcp_gateway::metrics::exporter::{self, Exporter};
use clap::Parser;
use futures::FutureExt;

use crate::{
    child::{serve_child, ChildConfig},
    client::{Bench, BenchStore},
    redis::RedisFixture,
    rows::{
        bare::BareServer,
        idle::{idle_sessions, idle_ws_sessions},
        live::live_ws,
        python_peer::{python, python_peer, PythonRuntime},
        replay::Replayed,
        soak::{soak, SoakLoad},
        stdio_hop::{self, stdio_ceiling, stdio_chatter},
    },
    stats::{median, per_round, repeat},
    table::Table,
};

#[derive(Parser)]
#[command(name = "arcp-bench", about = "Measure arcp-gateway on this machine")]
struct Args {
    /// Runs per row; each row reports the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Rows to run, e.g. `1,2,3`.
    #[arg(long, default_value = "1,2,3,4,5,6,7,8,9,10", value_delimiter = ',')]
    rows: Vec<u8>,
    /// Transports rows 1, 3 and 5 run over: `grpc`, `websocket` (on the memory stores).
    #[arg(long, default_value = "grpc,websocket", value_delimiter = ',', value_parser = ["grpc", "websocket"])]
    transports: Vec<String>,
    /// Stores rows 1, 3, 4 and 6 run on: `memory`, `redis` (a redis-server the bench starts).
    #[arg(long, default_value = "memory,redis", value_delimiter = ',', value_parser = ["memory", "redis"])]
    stores: Vec<String>,
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
    /// A Python interpreter with `agentruntimecontrolprotocol` for rows 7, 9 and 10; by default a
    /// virtualenv is built in target/bench-venv from tests/interop/requirements.txt.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Seconds row 8 keeps starting work (it then lets running jobs finish).
    #[arg(long, default_value_t = 20)]
    soak_secs: u64,
    /// Sessions in row 8 that drop and resume at random, besides 4 slow readers.
    #[arg(long, default_value_t = 40)]
    soak_sessions: usize,
    /// Idle connections the attacker of row 8 holds open.
    #[arg(long, default_value_t = 100)]
    soak_idle: usize,
    /// Row 8 fails if the gateway's peak resident memory exceeds this, MiB.
    #[arg(long, default_value_t = 512.0)]
    soak_rss_bound_mib: f64,
    /// Record metrics as `arcp-gateway serve --metrics-listen` does (the recorder installed,
    /// /metrics served on an ephemeral port), to measure what recording costs.
    #[arg(long)]
    metrics: bool,
    /// Serve a gateway and print its addresses (rows 5 and 8 run the gateway in a child
    /// process so its memory is measured alone).
    #[arg(long, hide = true, value_enum)]
    child_gateway: Option<ChildConfig>,
}

/// The runs of rows 1 and 3 on one store.
#[derive(Default)]
struct StoreRuns {
    live: Vec<rows::live::Live>,
    replay: Vec<Replayed>,
    /// Redis round trips per 1,000 events of each row 1 run.
    trips: Vec<f64>,
    /// Redis memory per retained frame of each row 3 run, bytes.
    frame_bytes: Vec<f64>,
}

/// One run of row 6 on `store`: on Redis the sessions resume on a second replica.
async fn storm(store: BenchStore<'_>, sessions: usize) -> BenchResult<f64> {
    match store {
        BenchStore::Memory => Bench::once(store, |b| b.storm(sessions).boxed()).await,
        BenchStore::Redis(redis) => {
            redis.flush()?;
            let a = Bench::start(store, "bench-a").await?;
            let b = Bench::start(store, "bench-b").await?;
            let ms = a.storm_to(&b, sessions).await;
            a.stop().await?;
            b.stop().await?;
            ms
        }
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// mimalloc rather than the system allocator: the frame path allocates and frees small buffers
/// on every event, from both workers (see BENCHMARKS.md for what it changed). The bench uses
/// the gateway binary's allocator so that it measures the gateway as it ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> BenchResult<()> {
    let args = Args::parse();
    if let Some(config) = args.child_gateway {
        return serve_child(config).await;
    }
    if args.metrics {
        let exporter = Exporter::install("127.0.0.1:0".parse()?).await?;
        eprintln!("metrics on {}{}", exporter.local_addr()?, exporter::PATH);
        tokio::spawn(exporter.serve(
            || Box::pin(async {}),
            tokio_util::sync::CancellationToken::new(),
        ));
    }
    // The clients run as tasks on the runtime's workers, as a tonic client in a service does,
    // rather than on the main thread, which would be a third thread competing for the cores.
    tokio::spawn(bench(args)).await?
}

async fn bench(args: Args) -> BenchResult<()> {
    let mut table = Table::default();
    // Runs of rows 1, 2, 3 and 7, on every store, alternate, so drift on a shared machine hits
    // them alike, and rows 2, 3 and 7 are compared with row 1 run by run.
    let python = if [7, 9, 10].iter().any(|r| args.rows.contains(r)) {
        Some(python(args.python.clone()))
    } else {
        None
    };
    let websocket = args.transports.iter().any(|t| t == "websocket");
    let grpc = args.transports.iter().any(|t| t == "grpc");
    // Row 9's server is started afresh each round and stopped after its run: alive through the
    // other rows, the Python process took enough CPU to slow row 1 by a third.
    let mut python_runtime: Option<Result<(), String>> = match &python {
        Some(Ok(_)) if args.rows.contains(&9) => Some(Ok(())),
        Some(Err(why)) if args.rows.contains(&9) => Some(Err(why.clone())),
        _ => None,
    };
    let redis = args
        .stores
        .iter()
        .any(|s| s == "redis")
        .then(RedisFixture::start);
    let mut stores = Vec::new();
    if args.stores.iter().any(|s| s == "memory") {
        stores.push(BenchStore::Memory);
    }
    match &redis {
        Some(Ok(fixture)) => stores.push(BenchStore::Redis(fixture)),
        Some(Err(why)) => table.row(
            "redis",
            "rows 1, 3, 4 and 6 on Redis",
            format!("not run: {why}"),
            String::new(),
        ),
        None => {}
    }
    let mut runs: Vec<StoreRuns> = stores.iter().map(|_| StoreRuns::default()).collect();
    let (mut bare, mut peer) = (Vec::new(), Vec::new());
    let (mut live_ws_runs, mut replay_ws_runs, mut runtime_runs) =
        (Vec::new(), Vec::new(), Vec::new());
    let (mut hop_runs, mut ceiling_runs) = (Vec::new(), Vec::new());
    let mut bare_server: Option<BareServer> = None;
    let memory = stores.iter().any(|s| matches!(s, BenchStore::Memory));
    for _ in 0..args.runs.max(1) {
        for (store, runs) in stores.iter().zip(runs.iter_mut()) {
            if !grpc {
                break;
            }
            if args.rows.contains(&1) || args.rows.contains(&2) {
                let bench = Bench::fresh(*store).await?;
                let before = store.reads()?;
                let run = bench.live(args.live_frames, args.event_bytes).await;
                let after = store.reads()?;
                bench.stop().await?;
                if let (Some(before), Some(after)) = (before, after) {
                    let frames = (args.live_frames + 2) as f64;
                    runs.trips.push((after - before) / frames * 1e3);
                }
                runs.live.push(run?);
            }
            if args.rows.contains(&3) {
                let bench = Bench::fresh(*store).await?;
                let before = store.used_memory()?;
                let replay = bench.replay(args.replay_frames, args.event_bytes).await;
                // The replayed frames are still retained: nothing acknowledged them.
                let after = store.used_memory()?;
                bench.stop().await?;
                if let (Some(before), Some(after)) = (before, after) {
                    let frames = (args.replay_frames + 2) as f64;
                    runs.frame_bytes.push((after - before) / frames);
                }
                runs.replay.push(replay?);
            }
        }
        if websocket && memory && args.rows.contains(&1) {
            let bench = Bench::fresh(BenchStore::Memory).await?;
            let run = live_ws(bench.ws_addr, args.live_frames, args.event_bytes).await;
            bench.stop().await?;
            live_ws_runs.push(run?);
        }
        if websocket && memory && args.rows.contains(&3) {
            let bench = Bench::fresh(BenchStore::Memory).await?;
            let run = bench.replay_ws(args.replay_frames, args.event_bytes).await;
            bench.stop().await?;
            replay_ws_runs.push(run?);
        }
        if let (Some(Ok(())), Some(Ok(python))) = (&python_runtime, &python) {
            match PythonRuntime::start(python).await {
                Ok(runtime) => {
                    let run = live_ws(runtime.addr, args.live_frames, args.event_bytes).await;
                    runtime.stop().await;
                    runtime_runs.push(run?);
                }
                Err(why) => python_runtime = Some(Err(why.to_string())),
            }
        }
        if let Some(Ok(python)) = python.as_ref().filter(|_| args.rows.contains(&10)) {
            let bench = Bench::with_agent(stdio_hop::AGENT, stdio_chatter(python)).await?;
            let run = bench.stdio_hop(args.live_frames, args.event_bytes).await;
            bench.stop().await?;
            hop_runs.push(run?);
            ceiling_runs.push(stdio_ceiling(python, args.live_frames, args.event_bytes).await?);
        }
        if args.rows.contains(&2) {
            if let Some(sample) = runs.first().and_then(|r| r.live.last()) {
                let server = match bare_server.take() {
                    Some(server) => server,
                    None => BareServer::start(sample.sample.clone()).await?,
                };
                bare.push(server.run(args.live_frames).await?);
                bare_server = Some(server);
            }
        }
        if let Some(Ok(python)) = python.as_ref().filter(|_| args.rows.contains(&7)) {
            peer.push(python_peer(python, args.live_frames, args.event_bytes).await?);
        }
    }
    // Rows 2, 3 and 7 are compared with the row 1 run of the same round, and the median taken
    // over rounds: a machine whose speed drifts between runs skews that less than a ratio of
    // medians would. Row 1 on Redis is compared with row 1 on memory the same way.
    let baseline = runs.first().map(|r| r.live.as_slice()).unwrap_or_default();
    for (i, (store, runs)) in stores.iter().zip(&runs).enumerate() {
        let suffix = store.suffix();
        if !runs.live.is_empty() {
            let rate = median(runs.live.iter().map(|r| r.frames_per_sec));
            let mbps = median(runs.live.iter().map(|r| r.bytes_per_sec / 1e6));
            let size = runs.live[0].bytes_per_frame;
            let mut notes = Vec::new();
            if i > 0 {
                if let Some(ratio) = per_round(baseline, &runs.live, |m, r| {
                    r.frames_per_sec / m.frames_per_sec
                }) {
                    notes.push(format!("{:.0}% of row 1 on memory", 100.0 * ratio));
                }
            }
            if !runs.trips.is_empty() {
                let trips = median(runs.trips.iter().copied());
                notes.push(format!("{trips:.0} Redis round trips per 1,000 events"));
            }
            table.row(
                &format!("1{suffix}"),
                "live throughput, one session",
                format!("{rate:.0} frames/s, {mbps:.1} MB/s ({size:.0} B/frame)"),
                notes.join("; "),
            );
        }
        if i == 0 && !bare.is_empty() {
            let limit = median(bare.iter().copied());
            let vs = per_round(baseline, &bare, |l, b| l.frames_per_sec / b)
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
        if !runs.replay.is_empty() {
            let mut notes = Vec::new();
            if let Some(ratio) = per_round(&runs.live, &runs.replay, |l, r| {
                r.streaming_rate() / l.frames_per_sec
            }) {
                notes.push(format!(
                    "{ratio:.2}x row 1{suffix} (median of the runs' ratios)"
                ));
            }
            if !runs.frame_bytes.is_empty() {
                let bytes = median(runs.frame_bytes.iter().copied());
                notes.push(format!("Redis memory {bytes:.0} B per retained frame"));
            }
            table.row(
                &format!("3{suffix}"),
                &format!("replay of {} frames from seq 0", args.replay_frames),
                replayed(&runs.replay),
                notes.join("; "),
            );
        }
    }
    let ws_rate = |r: &client::Received| r.frames as f64 / r.seconds;
    if !live_ws_runs.is_empty() {
        let rate = median(live_ws_runs.iter().map(ws_rate));
        let mbps = median(
            live_ws_runs
                .iter()
                .map(|r| r.bytes as f64 / r.seconds / 1e6),
        );
        let size = live_ws_runs[0].bytes as f64 / live_ws_runs[0].frames as f64;
        let vs = per_round(baseline, &live_ws_runs, |l, w| {
            ws_rate(w) / l.frames_per_sec
        })
        .map(|ratio| format!("{:.0}% of row 1 (gRPC)", 100.0 * ratio))
        .unwrap_or_default();
        table.row(
            "1 ws",
            "live throughput, one session, WebSocket JSON",
            format!("{rate:.0} frames/s, {mbps:.1} MB/s ({size:.0} B/frame)"),
            vs,
        );
    }
    if !replay_ws_runs.is_empty() {
        let vs = per_round(&live_ws_runs, &replay_ws_runs, |l, r| {
            r.streaming_rate() / ws_rate(l)
        })
        .map(|ratio| format!("{ratio:.2}x row 1 ws (median of the runs' ratios)"))
        .unwrap_or_default();
        table.row(
            "3 ws",
            &format!(
                "replay of {} frames from seq 0, WebSocket JSON",
                args.replay_frames
            ),
            replayed(&replay_ws_runs),
            vs,
        );
    }
    if args.rows.contains(&4) {
        for store in &stores {
            let suffix = store.suffix();
            for (label, aligned, what) in [
                ("4", false, "first ticks spread over the interval"),
                (
                    "4 (worst case)",
                    true,
                    "all ticking in the same millisecond",
                ),
            ] {
                let runs = repeat(args.runs, || {
                    Bench::once(*store, |b| {
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
                let [p50, p99, p999] =
                    [0, 1, 2].map(|i| median(runs.iter().map(|r| r.steady_ms[i])));
                let all_p99 = median(runs.iter().map(|r| r.all_p99_ms));
                table.row(
                    &format!("{label}{suffix}"),
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
    if args.rows.contains(&5) && websocket {
        let runs = repeat(args.runs, || idle_ws_sessions(args.idle_sessions)).await?;
        let kib = median(runs.iter().copied());
        table.row(
            "5 ws",
            &format!(
                "{} idle sessions, WebSocket, a connection each",
                args.idle_sessions
            ),
            format!("{kib:.1} KiB resident per session"),
            String::new(),
        );
    }
    if args.rows.contains(&6) {
        for store in &stores {
            let runs = repeat(args.runs, || storm(*store, args.storm_sessions)).await?;
            let ms = median(runs.iter().copied());
            let what = match store {
                BenchStore::Memory => "",
                BenchStore::Redis(_) => ", dropped on replica A, resumed on replica B",
            };
            table.row(
                &format!("6{}", store.suffix()),
                &format!("resume storm, {} sessions{what}", args.storm_sessions),
                format!("all live again after {ms:.0} ms"),
                String::new(),
            );
        }
    }
    match &python_runtime {
        Some(Ok(_)) => {
            let rate = median(runtime_runs.iter().map(ws_rate));
            let vs = per_round(&live_ws_runs, &runtime_runs, |g, p| ws_rate(g) / ws_rate(p))
                .map(|ratio| format!("row 1 ws = {ratio:.1}x this (median of the runs' ratios)"))
                .unwrap_or_default();
            table.row(
                "9",
                "reference Python runtime, row 1's workload to row 1 ws's client",
                format!("{rate:.0} frames/s"),
                vs,
            );
        }
        Some(Err(why)) => table.row(
            "9",
            "reference Python runtime, WebSocket",
            format!("not run: {why}"),
            String::new(),
        ),
        None => {}
    }
    match python.as_ref().filter(|_| args.rows.contains(&10)) {
        Some(Ok(_)) => {
            let rate = median(hop_runs.iter().copied());
            let ceiling = median(ceiling_runs.iter().copied());
            let vs = per_round(&hop_runs, &ceiling_runs, |h, c| h / c)
                .map(|ratio| {
                    format!(
                        "{:.0}% of the child's own output, {ceiling:.0} lines/s (median of the runs' ratios)",
                        100.0 * ratio
                    )
                })
                .unwrap_or_default();
            table.row(
                "10",
                "stdio child agent (Python) emitting row 1's workload, through the gateway",
                format!("{rate:.0} frames/s"),
                vs,
            );
        }
        Some(Err(why)) => table.row(
            "10",
            "stdio child agent",
            format!("not run: {why}"),
            String::new(),
        ),
        None => {}
    }
    match python.as_ref().filter(|_| args.rows.contains(&7)) {
        Some(Ok(_)) => {
            let rate = median(peer.iter().copied());
            let vs = per_round(baseline, &peer, |l, p| l.frames_per_sec / p)
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
    let soaked = if args.rows.contains(&8) {
        let report = soak(SoakLoad {
            duration: Duration::from_secs(args.soak_secs),
            resuming: args.soak_sessions,
            slow: 4,
            idle: args.soak_idle,
        })
        .await?;
        let within = report.peak_mib <= args.soak_rss_bound_mib;
        table.row(
            "8",
            &format!(
                "soak, {} s: {} resuming and 4 slow sessions, one that never reads, garbage streams, {} idle connections",
                args.soak_secs, args.soak_sessions, args.soak_idle
            ),
            format!(
                "peak {:.0} MiB resident (from {:.0} MiB; bound {:.0} MiB); {}",
                report.peak_mib,
                report.baseline_mib,
                args.soak_rss_bound_mib,
                report.summary()
            ),
            String::new(),
        );
        Some((report.inexact(), within))
    } else {
        None
    };
    table.print(&args);
    match soaked {
        Some((inexact, _)) if inexact > 0 => {
            Err(format!("row 8: {inexact} frames lost or duplicated").into())
        }
        Some((_, false)) => Err("row 8: peak resident memory over its bound".into()),
        _ => Ok(()),
    }
}

/// Row 3's figures over `runs`, each the median: the rate from the first replayed frame (the
/// one row 1's is compared with), the rate from the resume's request, and the wait for the
/// first frame.
fn replayed(runs: &[Replayed]) -> String {
    let streaming = median(runs.iter().map(Replayed::streaming_rate));
    let whole = median(runs.iter().map(Replayed::rate));
    let first = median(runs.iter().map(Replayed::first_ms));
    format!("{streaming:.0} frames/s ({whole:.0} from the resume), first frame after {first:.1} ms")
}
