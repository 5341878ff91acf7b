//! A [`JobEntry`] as the fields of its Redis hash: plain strings as they are, everything else
//! as JSON (times as `[seconds, nanoseconds]` since the Unix epoch, so that no precision is
//! lost), and the status as its wire name, which the scripts compare with `running`.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{
    clock::Timestamp,
    error::ArcpError,
    ids::{EventSeq, JobId, Principal, SessionId, TraceId},
    protocol::{
        credential::Credential,
        job_frame::{FinalStatus, JobStatus},
        Json, Lease,
    },
    store::jobs::JobEntry,
};

/// The hash's field naming the replica that runs the job (the others not of the entry, which
/// only the scripts read, are `counted`, `cancels` and `cancel_reason`).
pub(super) const OWNER: &str = "owner";

/// The fields that change while a job runs, which the owner refreshes.
pub(super) const LAST_EVENT_SEQ: &str = "last_event_seq";
pub(super) const BUDGET: &str = "budget";
pub(super) const CREDENTIALS: &str = "credentials";

/// A credential as the hash keeps it. The value is a secret: it is in Redis so that the
/// submitter can list its jobs on any replica, as on the one running them.
#[derive(Serialize, Deserialize)]
struct StoredCredential {
    id: String,
    scheme: String,
    value: String,
    endpoint: String,
    profile: Option<String>,
    constraints: serde_json::Map<String, Json>,
}

impl From<&Credential> for StoredCredential {
    fn from(c: &Credential) -> Self {
        StoredCredential {
            id: c.id.clone(),
            scheme: c.scheme.clone(),
            value: c.value.clone(),
            endpoint: c.endpoint.clone(),
            profile: c.profile.clone(),
            constraints: c.constraints.clone(),
        }
    }
}

impl From<StoredCredential> for Credential {
    fn from(c: StoredCredential) -> Self {
        Credential {
            id: c.id,
            scheme: c.scheme,
            value: c.value,
            endpoint: c.endpoint,
            profile: c.profile,
            constraints: c.constraints,
        }
    }
}

/// An instant as `[seconds, nanoseconds]` since the Unix epoch; earlier ones are the epoch.
type Instant = (u64, u32);

fn instant(at: SystemTime) -> Instant {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_secs(), since.subsec_nanos())
}

fn system_time((secs, nanos): Instant) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

fn json(value: &impl Serialize) -> Result<String, ArcpError> {
    serde_json::to_string(value)
        .map_err(|e| ArcpError::Internal(format!("a job entry could not be encoded: {e}")))
}

/// The entry's fields and their values, as the hash holds them.
pub(super) fn encode(entry: &JobEntry) -> Result<Vec<(&'static str, String)>, ArcpError> {
    let (seq, budget, credentials) = changing(entry)?;
    Ok(vec![
        ("id", entry.id.as_str().to_owned()),
        ("session", entry.session.as_str().to_owned()),
        ("principal", entry.principal.as_str().to_owned()),
        ("agent", entry.agent.clone()),
        ("status", entry.status.as_str().to_owned()),
        ("lease", json(&entry.lease)?),
        ("expires_at", json(&entry.expires_at.map(|t| instant(t.0)))?),
        ("parent", json(&entry.parent.as_ref().map(JobId::as_str))?),
        ("created_at", json(&instant(entry.created_at.0))?),
        ("finished_at", json(&entry.finished_at.map(instant))?),
        (
            "trace_id",
            json(&entry.trace_id.as_ref().map(TraceId::as_str))?,
        ),
        (LAST_EVENT_SEQ, seq),
        (BUDGET, budget),
        (CREDENTIALS, credentials),
    ])
}

/// The values of the fields that change while a job runs: its newest frame, its budget and its
/// credentials.
pub(super) fn changing(entry: &JobEntry) -> Result<(String, String, String), ArcpError> {
    let credentials: Vec<StoredCredential> = entry
        .credentials
        .iter()
        .map(StoredCredential::from)
        .collect();
    Ok((
        entry.last_event_seq.get().to_string(),
        json(&entry.budget)?,
        json(&credentials)?,
    ))
}

/// When the entry ended, in milliseconds since the Unix epoch, as the finished jobs are ranked
/// for purging; `None` for a job that has not.
pub(super) fn finished_millis(entry: &JobEntry) -> Option<u64> {
    match entry.status {
        JobStatus::Running => None,
        JobStatus::Finished(_) => entry.finished_at.map(crate::store::redis::unix_millis),
    }
}

/// A status as its wire name names it.
pub(super) fn status(name: &str) -> Option<JobStatus> {
    if name == JobStatus::Running.as_str() {
        return Some(JobStatus::Running);
    }
    FinalStatus::ALL
        .into_iter()
        .find(|s| s.as_str() == name)
        .map(JobStatus::Finished)
}

pub(super) fn corrupt(what: impl std::fmt::Display) -> ArcpError {
    ArcpError::Internal(format!("the job directory returned {what}"))
}

/// The entry a hash holds; `None` for a hash that does not exist (no fields).
pub(super) fn decode(fields: &HashMap<String, String>) -> Result<Option<JobEntry>, ArcpError> {
    if fields.is_empty() {
        return Ok(None);
    }
    let text = |name: &str| {
        fields
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| corrupt(format_args!("a job without its {name}")))
    };
    fn parsed<T: DeserializeOwned>(name: &str, text: &str) -> Result<T, ArcpError> {
        serde_json::from_str(text).map_err(|e| corrupt(format_args!("a job's bad {name}: {e}")))
    }
    let status_name = text("status")?;
    let credentials: Vec<StoredCredential> = parsed(CREDENTIALS, text(CREDENTIALS)?)?;
    let budget: Option<BTreeMap<String, f64>> = parsed(BUDGET, text(BUDGET)?)?;
    let expires_at: Option<Instant> = parsed("expires_at", text("expires_at")?)?;
    let finished_at: Option<Instant> = parsed("finished_at", text("finished_at")?)?;
    let parent: Option<String> = parsed("parent", text("parent")?)?;
    let trace_id: Option<String> = parsed("trace_id", text("trace_id")?)?;
    let lease: Lease = parsed("lease", text("lease")?)?;
    Ok(Some(JobEntry {
        id: JobId::new(text("id")?),
        session: SessionId::new(text("session")?),
        principal: Principal::new(text("principal")?),
        agent: text("agent")?.to_owned(),
        status: status(status_name)
            .ok_or_else(|| corrupt(format_args!("a job with status {status_name:?}")))?,
        lease,
        expires_at: expires_at.map(|at| Timestamp(system_time(at))),
        budget,
        parent: parent.map(JobId::new),
        created_at: Timestamp(system_time(parsed("created_at", text("created_at")?)?)),
        finished_at: finished_at.map(system_time),
        trace_id: trace_id.map(TraceId::new),
        last_event_seq: EventSeq(
            text(LAST_EVENT_SEQ)?
                .parse()
                .map_err(|e| corrupt(format_args!("a job's bad {LAST_EVENT_SEQ}: {e}")))?,
        ),
        credentials: credentials.into_iter().map(Credential::from).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_its_hash() {
        let mut constraints = serde_json::Map::new();
        constraints.insert("rpm".into(), Json::from(60));
        let entry = JobEntry {
            id: JobId::generate(),
            session: SessionId::generate(),
            principal: Principal::new("al}ice"),
            agent: "echo@1.0.0".into(),
            status: JobStatus::Finished(FinalStatus::TimedOut),
            lease: Lease::from([("net.fetch".to_owned(), vec!["https://x/*".to_owned()])]),
            expires_at: Some(Timestamp(
                UNIX_EPOCH + Duration::new(1_900_000_000, 123_456_789),
            )),
            budget: Some(BTreeMap::from([("USD".to_owned(), 1.25)])),
            parent: Some(JobId::generate()),
            created_at: Timestamp::now(),
            finished_at: Some(SystemTime::now()),
            trace_id: Some(TraceId::new("00-abc-01")),
            last_event_seq: EventSeq(42),
            credentials: vec![Credential {
                id: "c1".into(),
                scheme: "bearer".into(),
                value: "secret".into(),
                endpoint: "https://api".into(),
                profile: None,
                constraints,
            }],
        };
        let fields: HashMap<String, String> = encode(&entry)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let back = decode(&fields).unwrap().unwrap();
        assert_eq!(back.id, entry.id);
        assert_eq!(back.principal, entry.principal);
        assert_eq!(back.status, entry.status);
        assert_eq!(back.lease, entry.lease);
        assert_eq!(back.expires_at, entry.expires_at);
        assert_eq!(back.budget, entry.budget);
        assert_eq!(back.parent, entry.parent);
        assert_eq!(back.created_at, entry.created_at);
        assert_eq!(back.finished_at, entry.finished_at);
        assert_eq!(back.trace_id, entry.trace_id);
        assert_eq!(back.last_event_seq, entry.last_event_seq);
        assert_eq!(back.credentials, entry.credentials);
        assert!(decode(&HashMap::new()).unwrap().is_none());
    }

    #[test]
    fn every_status_has_its_name() {
        for s in FinalStatus::ALL.map(JobStatus::Finished) {
            assert_eq!(status(s.as_str()), Some(s));
        }
        assert_eq!(status("running"), Some(JobStatus::Running));
        assert_eq!(status("pending"), None);
    }
}
