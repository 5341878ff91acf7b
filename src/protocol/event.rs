//! `job.event` bodies (§8.2).

use crate::{
    clock::Timestamp,
    error::{ArcpError, ErrorCode},
};

use super::{credential::Credential, Json, Lease};

/// The body of a `job.event`, one variant per `kind`.
#[derive(Clone, Debug, PartialEq)]
pub enum EventBody {
    /// `log`: `{ level, message }`.
    Log {
        /// How severe.
        level: LogLevel,
        /// The line.
        message: String,
    },
    /// `thought`: `{ text }`.
    Thought {
        /// The agent's reasoning text.
        text: String,
    },
    /// `tool_call`: `{ tool, args, call_id }`.
    ToolCall {
        /// Tool name.
        tool: String,
        /// Arguments.
        args: Json,
        /// Correlates the `tool_result`.
        call_id: String,
    },
    /// `tool_result`: `{ call_id, result | error }`.
    ToolResult {
        /// The `call_id` of the call.
        call_id: String,
        /// The tool's result, or the error it failed with.
        outcome: Result<Json, ToolError>,
    },
    /// `status`: `{ phase, message? }`.
    Status {
        /// e.g. `running`, `back_pressure`, `credential_rotated`.
        phase: String,
        /// Free text.
        message: Option<String>,
        /// With `credential_rotated` (§9.8.2): the credential's id and new value.
        credential: Option<Box<Credential>>,
    },
    /// `metric`: `{ name, value, unit?, dimensions? }`.
    Metric {
        /// e.g. `cost.inference`.
        name: String,
        /// The measurement.
        value: f64,
        /// e.g. `USD`, `ms`.
        unit: Option<String>,
        /// Extra labels.
        dimensions: Option<serde_json::Map<String, Json>>,
    },
    /// `artifact_ref`: `{ uri, content_type, byte_size?, sha256? }`.
    ArtifactRef {
        /// Where the artifact lives.
        uri: String,
        /// Its media type.
        content_type: String,
        /// Its size.
        byte_size: Option<u64>,
        /// Its digest, hex.
        sha256: Option<String>,
    },
    /// `delegate` (§10).
    Delegate {
        /// The child job.
        child_job_id: String,
        /// The child's agent.
        agent: String,
        /// The child's input.
        input: Json,
        /// The derived lease.
        lease_request: Lease,
        /// The child's `expires_at`.
        expires_at: Option<Timestamp>,
    },
    /// `progress` (§8.2.1).
    Progress {
        /// Work done; non-negative.
        current: f64,
        /// Total work; absent means indeterminate.
        total: Option<f64>,
        /// e.g. `files`.
        units: Option<String>,
        /// Free text.
        message: Option<String>,
    },
    /// `result_chunk` (§8.4).
    ResultChunk {
        /// The assembled result's id.
        result_id: String,
        /// 0-based chunk index.
        chunk_seq: u64,
        /// The chunk, encoded per `encoding`.
        data: String,
        /// `utf8` or `base64`.
        encoding: String,
        /// Whether more chunks follow.
        more: bool,
    },
}

/// The error half of a `tool_result`.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolError {
    /// A §12 code.
    pub code: ErrorCode,
    /// Human-readable text.
    pub message: String,
}

impl EventBody {
    /// The `kind` discriminator.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::Log { .. } => "log",
            EventBody::Thought { .. } => "thought",
            EventBody::ToolCall { .. } => "tool_call",
            EventBody::ToolResult { .. } => "tool_result",
            EventBody::Status { .. } => "status",
            EventBody::Metric { .. } => "metric",
            EventBody::ArtifactRef { .. } => "artifact_ref",
            EventBody::Delegate { .. } => "delegate",
            EventBody::Progress { .. } => "progress",
            EventBody::ResultChunk { .. } => "result_chunk",
        }
    }

    /// The feature flag that must be negotiated before this kind may be sent (§6.2), if any.
    pub fn required_feature(&self) -> Option<&'static str> {
        match self {
            EventBody::Progress { .. } => Some("progress"),
            EventBody::ResultChunk { .. } => Some("result_chunk"),
            _ => None,
        }
    }

    /// Checks the body against the constraints of §8.2.
    pub fn validate(&self) -> Result<(), ArcpError> {
        let invalid = |message: String| Err(ArcpError::InvalidRequest(message));
        let required = |kind: &str, field: &str, value: &str| {
            if value.is_empty() {
                invalid(format!("{kind}.{field} is required"))
            } else {
                Ok(())
            }
        };
        match self {
            EventBody::Log { .. } | EventBody::Thought { .. } => Ok(()),
            EventBody::ToolCall { tool, call_id, .. } => {
                required("tool_call", "tool", tool)?;
                required("tool_call", "call_id", call_id)
            }
            EventBody::ToolResult { call_id, .. } => required("tool_result", "call_id", call_id),
            EventBody::Status { phase, .. } => required("status", "phase", phase),
            EventBody::Metric { name, value, .. } => {
                required("metric", "name", name)?;
                if !value.is_finite() {
                    return invalid(format!("metric.value must be a finite number, got {value}"));
                }
                Ok(())
            }
            EventBody::ArtifactRef {
                uri,
                content_type,
                sha256,
                ..
            } => {
                required("artifact_ref", "uri", uri)?;
                required("artifact_ref", "content_type", content_type)?;
                if sha256
                    .as_ref()
                    .is_some_and(|h| h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()))
                {
                    return invalid("artifact_ref.sha256 must be 64 hex digits".into());
                }
                Ok(())
            }
            EventBody::Delegate {
                child_job_id,
                agent,
                ..
            } => {
                required("delegate", "child_job_id", child_job_id)?;
                required("delegate", "agent", agent)
            }
            EventBody::Progress { current, total, .. } => {
                if !current.is_finite() || *current < 0.0 {
                    return invalid(format!(
                        "progress.current must be a non-negative number, got {current}"
                    ));
                }
                if let Some(total) = total {
                    if !total.is_finite() || current > total {
                        return invalid(format!(
                            "progress.current {current} exceeds total {total}"
                        ));
                    }
                }
                Ok(())
            }
            EventBody::ResultChunk {
                result_id,
                encoding,
                ..
            } => {
                required("result_chunk", "result_id", result_id)?;
                if encoding != "utf8" && encoding != "base64" {
                    return invalid(format!(
                        "result_chunk.encoding must be utf8 or base64, got {encoding:?}"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A `log` event's `level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// `trace`
    Trace,
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
}

impl LogLevel {
    /// Every level, least severe first.
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// The level named `name`; `INVALID_REQUEST` for any other name.
    pub fn parse(name: &str) -> Result<LogLevel, ArcpError> {
        Self::ALL
            .into_iter()
            .find(|level| level.as_str() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|l| l.as_str()).collect();
                ArcpError::InvalidRequest(format!(
                    "log.level must be one of {}, got {name:?}",
                    names.join(", ")
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_parse_from_their_wire_names_only() {
        for level in LogLevel::ALL {
            assert_eq!(LogLevel::parse(level.as_str()).ok(), Some(level));
        }
        let error = LogLevel::parse("verbose").unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidRequest);
        assert!(error.message().contains("trace, debug, info, warn, error"));
    }
}
