//! Delegation (§10): a job starts a child job in its own session, under a subset of its lease.

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    agent::Delegation,
    clock::Timestamp,
    error::ArcpError,
    ids::JobId,
    job::record::{JobRecord, JobSpec},
    lease::{parse_expires_at, EffectiveLease},
    protocol::{event::EventBody, job_frame::JobPayload, Json, Lease},
};

use super::{JobManager, Start};

#[async_trait]
impl Delegation for JobManager {
    async fn delegate(
        &self,
        parent: &Arc<JobRecord>,
        agent: &str,
        input: Json,
        lease_request: &Lease,
        expires_at: Option<&str>,
    ) -> Result<Arc<JobRecord>, ArcpError> {
        let child = self.prepare_child(parent, agent, input.clone(), lease_request, expires_at)?;
        // Registered before it is announced, so that a child over the caps is refused
        // without a `delegate` event naming a job that never ran.
        let child = self.register(child).await?;
        let spec = &child.job.spec;
        // The announcement precedes every frame of the child.
        let announced = parent
            .emit(JobPayload::Event {
                ts: Timestamp::now(),
                body: EventBody::Delegate {
                    child_job_id: spec.id.as_str().to_owned(),
                    agent: spec.agent.clone(),
                    input,
                    lease_request: spec.lease.to_wire(),
                    expires_at: spec.lease.expires_at().map(Timestamp),
                },
            })
            .await;
        // Logged before the child runs: a child whose announcement failed never ran.
        let announced = match announced {
            Ok(()) => parent.logged().await,
            Err(e) => Err(e),
        };
        if let Err(e) = announced {
            self.abandon(&child.job).await;
            return Err(e);
        }
        let child = self.launch(child).await?;
        parent.children.lock().push(child.id().clone());
        Ok(child)
    }
}

impl JobManager {
    /// Prepares a delegated child of `parent` in the parent's session: checks that its lease
    /// is a subset of the parent's and reserves its budget.
    fn prepare_child(
        &self,
        parent: &JobRecord,
        agent: &str,
        input: Json,
        lease_request: &Lease,
        expires_at: Option<&str>,
    ) -> Result<Start, ArcpError> {
        let agent = self.agents.resolve(agent)?;
        let now = std::time::SystemTime::now();
        let expires_at = expires_at.map(|at| parse_expires_at(at, now)).transpose()?;
        // No deployment default: a default wider than the parent's grant would make every
        // child a violation.
        let mut lease = EffectiveLease::from_request(lease_request, expires_at, None)?;
        lease.inherit_expiry(&parent.spec.lease);
        {
            let mut authority = parent.authority.lock();
            parent
                .spec
                .lease
                .check_subset(&lease, authority.budget.as_ref())?;
            if let (Some(remaining), Some(granted)) = (authority.budget.as_mut(), lease.budget()) {
                for (currency, amount) in granted.counters() {
                    remaining.charge(currency, *amount);
                }
            }
        }
        let spec = JobSpec {
            id: JobId::generate(),
            agent: agent.reference(),
            trace_id: parent.spec.trace_id.clone(),
            parent: Some(parent.id().clone()),
            initial_budget: lease.budget().map(|b| b.remaining()),
            lease,
            created_at: Timestamp::now(),
            principal: parent.principal().clone(),
        };
        Ok(Start {
            owner: parent.owner_recipient(),
            spec,
            agent: agent.agent,
            input,
            max_runtime: None,
            request_id: None,
        })
    }
}
