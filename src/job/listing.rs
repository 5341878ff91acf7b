//! `session.list_jobs` (§6.6): filters, and the opaque cursor that pages through jobs in id
//! order (job ids are time-ordered, so pages follow submission order).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

use crate::{
    clock::Timestamp,
    error::ArcpError,
    ids::{AgentRef, JobId},
    protocol::{client::ListJobs, control::JOB_STATUSES},
    store::jobs::JobEntry,
};

/// The page size when the client names none.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest page a client may ask for.
pub const MAX_LIMIT: usize = 1000;

const CURSOR_PREFIX: &str = "after:";

/// A validated `session.list_jobs`.
pub struct Query {
    statuses: Vec<String>,
    agent: Option<(String, Option<String>)>,
    created_after: Option<Timestamp>,
    /// Jobs with ids above this one.
    pub after: Option<JobId>,
    /// The page size.
    pub limit: usize,
}

impl Query {
    /// Checks every filter; a bad one is `INVALID_REQUEST` naming it.
    pub fn parse(request: ListJobs) -> Result<Query, ArcpError> {
        if let Some(bad) = request
            .status
            .iter()
            .find(|s| !JOB_STATUSES.contains(&s.as_str()))
        {
            return Err(ArcpError::InvalidRequest(format!(
                "filter.status {bad:?} is not one of {}",
                JOB_STATUSES.join(", ")
            )));
        }
        let agent = request
            .agent
            .as_deref()
            .map(|a| {
                AgentRef::parse(a).map(|r| (r.name().to_owned(), r.version().map(str::to_owned)))
            })
            .transpose()?;
        let created_after = request
            .created_after
            .as_deref()
            .map(|t| {
                Timestamp::parse_rfc3339(t).ok_or_else(|| {
                    ArcpError::InvalidRequest(format!(
                        "filter.created_after {t:?} is not an RFC 3339 timestamp"
                    ))
                })
            })
            .transpose()?;
        let after = request.cursor.as_deref().map(decode_cursor).transpose()?;
        let limit = match request.limit {
            None | Some(0) => DEFAULT_LIMIT,
            Some(n) => (n as usize).min(MAX_LIMIT),
        };
        Ok(Query {
            statuses: request.status,
            agent,
            created_after,
            after,
            limit,
        })
    }

    /// Whether `job` passes the filters.
    pub fn matches(&self, job: &JobEntry) -> bool {
        let status = job.status.as_str();
        if !self.statuses.is_empty() && !self.statuses.iter().any(|s| s == status) {
            return false;
        }
        if let Some((name, version)) = &self.agent {
            let (job_name, job_version) = job
                .agent
                .split_once('@')
                .unwrap_or((job.agent.as_str(), ""));
            if job_name != name || version.as_deref().is_some_and(|v| v != job_version) {
                return false;
            }
        }
        self.created_after
            .is_none_or(|after| job.created_at > after)
    }
}

/// The cursor that continues after `job`.
pub fn encode_cursor(job: &JobId) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{job}"))
}

fn decode_cursor(cursor: &str) -> Result<JobId, ArcpError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|s| s.strip_prefix(CURSOR_PREFIX).map(JobId::new))
        .ok_or_else(|| ArcpError::InvalidRequest("cursor is not one this runtime issued".into()))
}
