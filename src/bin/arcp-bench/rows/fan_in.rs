//! Row 4: fan-in. Many sessions each run a `stamper` job ticking every 10 ms; the row reports
//! the aggregate rate and the latency from the agent's emit to the client's receipt, both read
//! from this machine's clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arcp_gateway::{
    agent::{Agent, JobContext},
    proto::{self, job_event::Body, server_frame::Payload as Out},
    protocol::Json,
    ArcpError,
};

use crate::{
    client::{connections, is_terminal, open_all, submit, Bench},
    stats::percentiles,
    BenchResult,
};

/// `stamper`: `{"count": N, "interval_ms": M, "first_at_us": T}` emits N `metric` events M ms
/// apart, the first at `T` (microseconds since the Unix epoch; at once if that has passed),
/// whose value is the emit time in microseconds since the epoch, so a client on the same
/// machine can compute the delivery latency of each. Late ticks are caught up in a burst, so
/// an overloaded gateway still gets the full load.
pub(crate) struct Stamper;

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

pub(crate) struct FanIn {
    pub(crate) frames_per_sec: f64,
    /// p50, p99 and p999 after the warm-up ticks.
    pub(crate) steady_ms: [f64; 3],
    /// p99 over every tick, warm-up included.
    pub(crate) all_p99_ms: f64,
}

/// How long after the submits row 4's first ticks are due: time for every job to be accepted
/// and started, so the ticks measure delivery rather than session and job start-up.
const FAN_IN_LEAD: Duration = Duration::from_millis(500);

impl Bench {
    /// Row 4: `sessions` sessions each run a `stamper` job, ticking every `interval`. With
    /// `aligned`, every session ticks in the same millisecond (a worst case no real population
    /// of independent sessions produces); otherwise their first ticks are spread evenly over
    /// one interval, as independent sessions' would be.
    pub(crate) async fn fan_in(
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
