//! The store latency histograms ([`STORE_OPERATION_SECONDS`]), kept in fixed atomic buckets
//! rather than in the recorder.
//!
//! A log append is timed on every job frame, and the recorder's histograms gather samples in
//! blocks they allocate as they fill. Here a sample is three relaxed atomic adds into buckets
//! that exist from the start, for every store and operation: no lock, no allocation, no
//! lookup. They are rendered beside the recorder's metrics at each scrape.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use crate::metrics::{DURATION_BUCKETS, STORE_OPERATION_SECONDS};

/// Which store an operation went to: the `store` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// The embedded stores of one process.
    Memory,
    /// Redis, shared by replicas.
    Redis,
}

impl Store {
    const ALL: [Store; 2] = [Store::Memory, Store::Redis];

    fn as_str(self) -> &'static str {
        match self {
            Store::Memory => "memory",
            Store::Redis => "redis",
        }
    }
}

/// A timed store operation: the `operation` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// A job frame appended to a session's log, waited for by its caller (the frames a job
    /// queues without waiting, on a shared store, are timed by the batch).
    LogAppend,
    /// A batch of appended frames committed to a shared store, one round trip: every frame,
    /// queued or waited for, goes in one.
    LogCommit,
    /// A look at a session's log for the frames after a position (a read that waits for
    /// frames counts each look, not the wait).
    LogRead,
    /// A session recorded.
    SessionCreate,
    /// A session's record opened.
    SessionOpen,
    /// A session's record removed.
    SessionRemove,
    /// The sessions a replica attached, looked up.
    SessionAttachedOn,
    /// What the store knows of a replica's sessions, forgotten.
    SessionForgetAttachedOn,
    /// A session's first resume token issued.
    ResumeIssue,
    /// A presented resume token checked.
    ResumeCheck,
    /// A resume token rotated.
    ResumeRotate,
    /// A session's resume window started.
    ResumeStartWindow,
    /// The sessions whose window closed, taken.
    ResumeTakeExpired,
    /// A session's token removed.
    ResumeRemove,
}

impl Operation {
    const ALL: [Operation; 14] = [
        Operation::LogAppend,
        Operation::LogCommit,
        Operation::LogRead,
        Operation::SessionCreate,
        Operation::SessionOpen,
        Operation::SessionRemove,
        Operation::SessionAttachedOn,
        Operation::SessionForgetAttachedOn,
        Operation::ResumeIssue,
        Operation::ResumeCheck,
        Operation::ResumeRotate,
        Operation::ResumeStartWindow,
        Operation::ResumeTakeExpired,
        Operation::ResumeRemove,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Operation::LogAppend => "log_append",
            Operation::LogCommit => "log_commit",
            Operation::LogRead => "log_read",
            Operation::SessionCreate => "session_create",
            Operation::SessionOpen => "session_open",
            Operation::SessionRemove => "session_remove",
            Operation::SessionAttachedOn => "session_attached_on",
            Operation::SessionForgetAttachedOn => "session_forget_attached_on",
            Operation::ResumeIssue => "resume_issue",
            Operation::ResumeCheck => "resume_check",
            Operation::ResumeRotate => "resume_rotate",
            Operation::ResumeStartWindow => "resume_start_window",
            Operation::ResumeTakeExpired => "resume_take_expired",
            Operation::ResumeRemove => "resume_remove",
        }
    }
}

const BUCKETS: usize = DURATION_BUCKETS.len();

/// One histogram: the samples at or below each bound (not cumulative), their count and sum.
pub struct Latency {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Latency {
    const fn new() -> Latency {
        Latency {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one operation that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(bucket) = DURATION_BUCKETS.iter().position(|bound| secs <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

static LATENCY: [[Latency; Operation::ALL.len()]; Store::ALL.len()] =
    [const { [const { Latency::new() }; Operation::ALL.len()] }; Store::ALL.len()];

/// The histogram of `operation` on `store`.
pub fn latency(store: Store, operation: Operation) -> &'static Latency {
    &LATENCY[store as usize][operation as usize]
}

/// Appends the histograms that have samples to `out`, in the Prometheus text format.
pub fn render(out: &mut String) {
    let name = STORE_OPERATION_SECONDS;
    let _ = writeln!(
        out,
        "# HELP {name} Store operation latency, by store and operation.\n# TYPE {name} histogram"
    );
    for store in Store::ALL {
        for operation in Operation::ALL {
            let latency = latency(store, operation);
            // Read first: buckets added to meanwhile never exceed the count shown.
            let count = latency.count.load(Ordering::Relaxed);
            if count == 0 {
                continue;
            }
            let labels = format!(
                "store=\"{}\",operation=\"{}\"",
                store.as_str(),
                operation.as_str()
            );
            let mut cumulative = 0;
            for (bound, bucket) in DURATION_BUCKETS.iter().zip(&latency.buckets) {
                cumulative += bucket.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{bound}\"}} {}",
                    cumulative.min(count)
                );
            }
            let sum = latency.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }
}
