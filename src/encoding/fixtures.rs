//! Job frames of every kind, for the tests that hold the encoders to prost's bytes.

use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::{
    clock::Timestamp,
    error::ErrorCode,
    ids::{EventSeq, JobId},
    protocol::{
        control::JobSummary,
        credential::Credential,
        event::{EventBody, LogLevel, ToolError},
        job_frame::{
            Accepted, FinalStatus, JobError, JobPayload, JobResult, ResultBody, Subscribed,
        },
        Lease,
    },
};

pub(crate) fn at(ms: u64) -> Timestamp {
    Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
}

pub(crate) fn bodies() -> Vec<EventBody> {
    let lease: Lease = [("tool.call".to_owned(), vec!["search.*".to_owned()])].into();
    vec![
        EventBody::Log {
            level: LogLevel::Info,
            message: "x".repeat(300),
        },
        EventBody::Log {
            level: LogLevel::Warn,
            message: String::new(),
        },
        EventBody::Thought {
            text: "thinking ✓".into(),
        },
        EventBody::Thought {
            text: String::new(),
        },
        EventBody::ToolCall {
            tool: "search".into(),
            args: json!({"q": "rust", "n": 3}),
            call_id: "c1".into(),
        },
        EventBody::ToolResult {
            call_id: "c1".into(),
            outcome: Err(ToolError {
                code: ErrorCode::PermissionDenied,
                message: "no".into(),
            }),
        },
        EventBody::Status {
            phase: "running".into(),
            message: None,
            credential: None,
        },
        EventBody::Status {
            phase: "credential_rotated".into(),
            message: Some("rotated".into()),
            credential: Some(Box::new(credential())),
        },
        EventBody::Metric {
            name: "tokens".into(),
            value: 12.5,
            unit: Some("count".into()),
            dimensions: None,
        },
        EventBody::Metric {
            name: "zero".into(),
            value: 0.0,
            unit: None,
            dimensions: None,
        },
        EventBody::Metric {
            name: "negative zero".into(),
            value: -0.0,
            unit: None,
            dimensions: None,
        },
        EventBody::Metric {
            name: "cost.inference".into(),
            value: -1.25e-300,
            unit: Some("USD".into()),
            dimensions: Some(
                json!({"model": "m", "n": 2})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            ),
        },
        EventBody::ArtifactRef {
            uri: "s3://b/k".into(),
            content_type: "text/plain".into(),
            byte_size: Some(0),
            sha256: None,
        },
        EventBody::Delegate {
            child_job_id: "job_child".into(),
            agent: "echo".into(),
            input: json!(null),
            lease_request: lease,
            expires_at: Some(at(5)),
        },
        EventBody::Progress {
            current: 0.0,
            total: Some(0.0),
            units: None,
            message: Some("m".into()),
        },
        EventBody::Progress {
            current: 3.5,
            total: None,
            units: Some("files".into()),
            message: None,
        },
        EventBody::ResultChunk {
            result_id: "r".into(),
            chunk_seq: 0,
            data: "aGk=".into(),
            encoding: "base64".into(),
            more: false,
        },
    ]
}

pub(crate) fn credential() -> Credential {
    Credential {
        id: "cred_1".into(),
        scheme: "bearer".into(),
        value: "secret".into(),
        endpoint: "https://api".into(),
        profile: None,
        constraints: serde_json::Map::new(),
    }
}

pub(crate) fn summary() -> JobSummary {
    JobSummary {
        job_id: JobId::new("job_1"),
        agent: "echo@1".into(),
        status: "running",
        lease: Lease::new(),
        expires_at: None,
        budget: Some([("USD".to_owned(), 1.5)].into()),
        parent_job_id: None,
        created_at: at(1),
        trace_id: None,
        last_event_seq: EventSeq(7),
        credentials: Vec::new(),
    }
}

pub(crate) fn payloads() -> Vec<JobPayload> {
    let mut payloads: Vec<JobPayload> = bodies()
        .into_iter()
        .enumerate()
        .map(|(i, body)| JobPayload::Event {
            // Before 1970 and after 9999 as well, which are formatted differently.
            ts: match i {
                0 => Timestamp(SystemTime::UNIX_EPOCH - Duration::from_millis(1500)),
                1 => at(300_000_000_000_000),
                _ => at(1_764_000_000_123 + i as u64),
            },
            body,
        })
        .collect();
    payloads.extend([
        JobPayload::Accepted(Box::new(Accepted {
            agent: "echo@1".into(),
            lease: Lease::new(),
            expires_at: Some(at(9)),
            budget: None,
            credentials: vec![credential()],
            parent_job_id: Some(JobId::new("job_0")),
            accepted_at: at(2),
            request_id: Some("req".into()),
        })),
        JobPayload::Subscribed(Box::new(Subscribed {
            summary: summary(),
            subscribed_from: EventSeq(3),
            replayed: true,
            request_id: None,
        })),
        JobPayload::Result(JobResult {
            result: ResultBody::Inline(json!({"lines": 3})),
            completed_at: at(4),
        }),
        JobPayload::Result(JobResult {
            result: ResultBody::Streamed {
                result_id: "r".into(),
                result_size: 10,
                summary: None,
            },
            completed_at: at(4),
        }),
        JobPayload::Error(JobError {
            final_status: FinalStatus::TimedOut,
            code: ErrorCode::Timeout,
            message: "late".into(),
            completed_at: at(4),
        }),
        JobPayload::Cancelled { reason: None },
    ]);
    payloads
}
