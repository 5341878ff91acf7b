//! Provisioned credentials (§9.8, §14) through the real server: the feature offer, the
//! credential in `job.accepted` and its constraints, revocation at every terminal state,
//! rotation, per-job and per-child credentials, redaction for other principals, and the
//! ledger that keeps each credential's id from before its job sees it until its revocation
//! is accepted (the same through real processes and restarts: `tests/credential_ledger.rs`).

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::SystemTime,
};

use arcp_gateway::{
    agent::{Agent, AgentRegistry, JobContext},
    auth::Authenticator,
    config::GatewayConfig,
    credentials::MemoryProvisioner,
    engine::Observers,
    error::ErrorCode,
    ids::{CredentialId, JobId, Principal, ReplicaId},
    proto::{self, client_frame::Payload as In, job_event::Body, server_frame::Payload as Out},
    protocol::Json,
    store::credentials::{CredentialLedger, Outstanding, Revocation},
    ArcpError, Gateway,
};
use common::*;
use prost_types::{value::Kind, ListValue};
use serde_json::json;
use tokio::sync::Notify;

const ENDPOINT: &str = "https://llm.example/v1";

const FEATURES: &[&str] = &[
    "provisioned_credentials",
    "lease_expires_at",
    "cost.budget",
    "model.use",
    "progress",
    "subscribe",
    "list_jobs",
    "result_chunk",
];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn submit_full(
    agent: &str,
    input: serde_json::Value,
    lease_request: HashMap<String, ListValue>,
    expires_at: Option<&str>,
    max_runtime_sec: u32,
) -> In {
    In::JobSubmit(proto::JobSubmit {
        max_runtime_sec,
        ..leased_submit(agent, input, lease_request, expires_at)
    })
}

/// Waits until released, then optionally rotates its credentials (`"rotate": true`) and waits
/// to be released again (`"hold": true`), then fails (`"fail": true`) or returns `"released"`.
/// Lets a test hold a job running.
struct Gate {
    open: Arc<Notify>,
}

#[async_trait::async_trait]
impl Agent for Gate {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        self.open.notified().await;
        if input["rotate"].as_bool().unwrap_or(false) {
            for credential in ctx.credentials() {
                ctx.rotate_credential(&credential.id).await?;
            }
        }
        if input["hold"].as_bool().unwrap_or(false) {
            self.open.notified().await;
        }
        if input["fail"].as_bool().unwrap_or(false) {
            return Err(ArcpError::PermissionDenied("failing on purpose".into()));
        }
        Ok(json!("released"))
    }
}

struct Setup {
    server: TestServer,
    provisioner: Arc<MemoryProvisioner>,
    gate: Arc<Notify>,
}

/// The test's gateways serve plaintext on loopback, where credentials are issued only when
/// the configuration allows it (CONFORMANCE.md).
fn plaintext_credentials() -> GatewayConfig {
    GatewayConfig {
        allow_plaintext_credentials: true,
        ..GatewayConfig::default()
    }
}

/// A gateway for alice alone, to be given its provisioner.
fn alice_only() -> arcp_gateway::gateway::GatewayBuilder {
    Gateway::builder(plaintext_credentials()).auth(Authenticator::from_pairs([(
        "alice-token".to_string(),
        Principal::new("alice"),
    )]))
}

/// A gateway with a provisioner, alice and bob, the built-ins plus `gate`, where bob may
/// observe every job.
async fn start() -> Setup {
    let provisioner = Arc::new(MemoryProvisioner::new(ENDPOINT, Some("openai".into())));
    let gate = Arc::new(Notify::new());
    let mut agents = AgentRegistry::with_builtins();
    agents
        .register("gate", "1.0.0", Arc::new(Gate { open: gate.clone() }))
        .unwrap();
    let gateway = Gateway::builder(plaintext_credentials())
        .auth(Authenticator::from_pairs([
            ("alice-token".to_string(), Principal::new("alice")),
            ("bob-token".to_string(), Principal::new("bob")),
        ]))
        .agents(agents)
        .observe_policy(Arc::new(Observers(HashSet::from([Principal::new("bob")]))))
        .credential_provisioner(provisioner.clone());
    Setup {
        server: TestServer::start_gateway(gateway).await,
        provisioner,
        gate,
    }
}

/// The single credential of an acceptance, checked for its §9.8.1 shape.
fn the_credential(frame: &proto::ServerFrame) -> proto::Credential {
    let a = accepted(frame);
    assert_eq!(a.credentials.len(), 1, "{:?}", a.credentials);
    let c = a.credentials[0].clone();
    assert!(c.id.starts_with("cred_"), "{}", c.id);
    assert_eq!(c.scheme, "bearer");
    assert!(c.value.starts_with("sk-virt-"));
    assert!(c.value.len() > "sk-virt-".len() + 16, "a real secret");
    assert_eq!(c.endpoint, ENDPOINT);
    assert_eq!(c.profile, "openai");
    c
}

fn constraints(c: &proto::Credential) -> serde_json::Value {
    c.constraints
        .clone()
        .map(|s| {
            to_json(&prost_types::Value {
                kind: Some(Kind::StructValue(s)),
            })
        })
        .unwrap_or(json!({}))
}

fn rotated(frame: &proto::ServerFrame) -> Option<&proto::StatusBody> {
    match &frame.payload {
        Some(Out::JobEvent(proto::JobEvent {
            body: Some(Body::Status(s)),
            ..
        })) if s.phase == "credential_rotated" => Some(s),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Offer and issue
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_welcome_offers_provisioned_credentials_only_with_a_provisioner() {
    let s = start().await;
    let (_, w) = s.server.hello_with("alice-token", FEATURES).await;
    assert!(offered_features(&w)
        .iter()
        .any(|f| f == "provisioned_credentials"));

    let plain = TestServer::start_default().await;
    let (mut conn, w) = plain.hello_with("alice-token", FEATURES).await;
    assert!(!offered_features(&w)
        .iter()
        .any(|f| f == "provisioned_credentials"));
    let (_, frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    assert!(accepted(&frame).credentials.is_empty());
}

#[tokio::test]
async fn the_acceptance_carries_a_credential_constrained_like_the_lease() {
    let s = start().await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let at = in_ms(3_600_000);
    let (job, frame) = submit_and_accept(
        &mut conn,
        submit_full(
            "echo",
            json!(1),
            lease(&[
                ("cost.budget", &["USD:1.00"]),
                ("model.use", &["tier-fast/*"]),
                ("fs.read", &["/w/**"]),
            ]),
            Some(&at),
            0,
        ),
    )
    .await;
    let c = the_credential(&frame);
    assert_eq!(
        constraints(&c),
        json!({
            "cost.budget": ["USD:1.00"],
            "model.use": ["tier-fast/*"],
            "expires_at": at,
        }),
        "cost.budget, model.use and expires_at are baked in (§9.8.3)"
    );
    conn.recv_until_terminal(&job).await;
    assert!(!s.provisioner.is_live(&c.value));

    // A lease with nothing the upstream enforces gives an unconstrained credential.
    let (_, frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    assert_eq!(constraints(&the_credential(&frame)), json!({}));
}

#[tokio::test]
async fn every_job_gets_its_own_credential() {
    let s = start().await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (job, frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
        seen.push(the_credential(&frame));
        conn.recv_until_terminal(&job).await;
    }
    let values: HashSet<_> = seen.iter().map(|c| &c.value).collect();
    let ids: HashSet<_> = seen.iter().map(|c| &c.id).collect();
    assert_eq!(values.len(), 3, "values are never reused across jobs");
    assert_eq!(ids.len(), 3);
    assert_eq!(s.provisioner.outstanding(), 0);
}

#[tokio::test]
async fn a_session_that_did_not_negotiate_provisioned_credentials_gets_none() {
    let s = start().await;
    let without: Vec<&str> = FEATURES
        .iter()
        .copied()
        .filter(|f| *f != "provisioned_credentials")
        .collect();
    let (mut conn, w) = s.server.hello_with("alice-token", &without).await;
    assert!(!offered_features(&w)
        .iter()
        .any(|f| f == "provisioned_credentials"));
    let (job, frame) = submit_and_accept(&mut conn, submit("gate", json!({}))).await;
    assert!(
        accepted(&frame).credentials.is_empty(),
        "§6.2: credentials are a feature this session did not negotiate"
    );
    s.gate.notify_one();
    conn.recv_until_terminal(&job).await;
}

// ---------------------------------------------------------------------------------------------
// Revocation (§9.8.2)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_credential_is_live_while_its_job_runs_and_revoked_once_it_succeeds() {
    let s = start().await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut conn, submit("gate", json!({}))).await;
    let c = the_credential(&frame);
    assert!(s.provisioner.is_live(&c.value), "live while running");
    s.gate.notify_one();
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_result(&terminal).final_status, "success");
    assert!(
        !s.provisioner.is_live(&c.value),
        "revoked by the terminal frame"
    );
    assert_eq!(s.provisioner.outstanding(), 0);
}

#[tokio::test]
async fn a_credential_is_revoked_when_its_job_fails() {
    let s = start().await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut conn, submit("gate", json!({"fail": true}))).await;
    let c = the_credential(&frame);
    assert!(s.provisioner.is_live(&c.value));
    s.gate.notify_one();
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_error(&terminal).final_status, "error");
    assert!(!s.provisioner.is_live(&c.value));
}

#[tokio::test]
async fn a_credential_is_revoked_when_its_job_is_cancelled() {
    let s = start().await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut conn, submit("gate", json!({}))).await;
    let c = the_credential(&frame);
    assert!(s.provisioner.is_live(&c.value));
    conn.send(cancel(&job)).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_error(&terminal).final_status, "cancelled");
    assert!(!s.provisioner.is_live(&c.value));
}

#[tokio::test]
async fn a_credential_is_revoked_when_its_job_times_out() {
    let s = start().await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(
        &mut conn,
        submit_full("gate", json!({}), lease(&[]), None, 1),
    )
    .await;
    let c = the_credential(&frame);
    assert!(s.provisioner.is_live(&c.value));
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_error(&terminal).final_status, "timed_out");
    assert!(!s.provisioner.is_live(&c.value));
}

// ---------------------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn rotation_emits_credential_rotated_with_the_new_value_and_revokes_the_old() {
    let s = start().await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(
        &mut conn,
        submit_leased(
            "showcase",
            json!({"rotate": true}),
            lease(&[("tool.call", &["search"])]),
        ),
    )
    .await;
    let old = the_credential(&frame);
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    let statuses: Vec<_> = events.iter().filter_map(rotated).collect();
    assert_eq!(statuses.len(), 1, "{events:?}");
    let new = statuses[0]
        .credential
        .as_ref()
        .expect("the rotated credential");
    assert_eq!(new.id, old.id, "the same credential, a new value");
    assert_ne!(new.value, old.value);
    assert!(new.value.starts_with("sk-virt-"));
    assert_eq!(new.endpoint, ENDPOINT);
    assert!(
        !s.provisioner.is_live(&old.value),
        "the prior value is revoked"
    );
    assert_eq!(job_result(&terminal).final_status, "success");
    assert!(!s.provisioner.is_live(&new.value), "revoked at the end");
    assert_eq!(s.provisioner.outstanding(), 0);
}

#[tokio::test]
async fn the_rotated_value_is_live_until_the_job_ends() {
    let s = start().await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(
        &mut conn,
        submit("gate", json!({"rotate": true, "hold": true})),
    )
    .await;
    let old = the_credential(&frame);
    s.gate.notify_one();
    let (before, status) = conn.recv_until(|f| rotated(f).is_some()).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(status.job_id, job);
    let new = rotated(&status).unwrap().credential.clone().unwrap();
    assert!(s.provisioner.is_live(&new.value), "the new value works");
    assert!(!s.provisioner.is_live(&old.value), "the old value does not");
    s.gate.notify_one();
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_result(&terminal).final_status, "success");
    assert!(!s.provisioner.is_live(&new.value));
}

// ---------------------------------------------------------------------------------------------
// Delegated children (§9.8.2)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_child_gets_its_own_credential_bounded_by_its_lease_and_its_lifetime() {
    let s = start().await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (parent, frame) = submit_and_accept(
        &mut conn,
        submit_leased(
            "delegator",
            json!({
                "agent": "ticker",
                "input": {"count": 100_000, "interval_ms": 10},
                "lease": {"cost.budget": ["USD:0.50"]}
            }),
            lease(&[
                ("agent.delegate", &["ticker"]),
                ("cost.budget", &["USD:1.00"]),
            ]),
        ),
    )
    .await;
    let parent_credential = the_credential(&frame);
    let (_, child_frame) = conn
        .recv_until(|f| f.job_id != parent && matches!(f.payload, Some(Out::JobAccepted(_))))
        .await;
    let child = child_frame.job_id.clone();
    let child_credential = the_credential(&child_frame);
    assert_ne!(child_credential.value, parent_credential.value);
    assert_eq!(
        constraints(&child_credential),
        json!({"cost.budget": ["USD:0.50"]}),
        "constrained at the child's lease, not the parent's"
    );
    assert!(s.provisioner.is_live(&child_credential.value));

    // Ending the parent ends the child, and neither credential stays live.
    conn.send(cancel(&parent)).await;
    let (_, terminal) = conn.recv_until_terminal(&parent).await;
    assert_eq!(job_error(&terminal).final_status, "cancelled");
    assert!(!s.provisioner.is_live(&parent_credential.value));
    let (_, child_terminal) = conn.recv_until_terminal(&child).await;
    assert_eq!(job_error(&child_terminal).final_status, "cancelled");
    assert!(!s.provisioner.is_live(&child_credential.value));
    assert_eq!(s.provisioner.outstanding(), 0);
}

// ---------------------------------------------------------------------------------------------
// Redaction (§14)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn another_principal_subscribing_never_sees_credentials() {
    let s = start().await;
    let (mut alice, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut alice, submit("gate", json!({"rotate": true}))).await;
    let original = the_credential(&frame);

    let (mut bob, _) = s.server.hello_with("bob-token", FEATURES).await;
    let id = bob.send(subscribe(&job, true, Some(0))).await;
    let subscribed = bob.recv().await;
    let Some(Out::JobSubscribed(sub)) = &subscribed.payload else {
        panic!("expected job_subscribed, got {subscribed:?}")
    };
    assert_eq!(sub.request_id, id);
    assert_eq!(sub.job_id, job);
    assert!(sub.credentials.is_empty(), "redacted in job_subscribed");
    let replayed = bob.recv().await;
    let a = accepted(&replayed);
    assert_eq!(a.job_id, job);
    assert!(
        a.credentials.is_empty(),
        "redacted in the replayed job_accepted"
    );

    // The rotation happens live, with bob attached.
    s.gate.notify_one();
    let (_, alice_status) = alice.recv_until(|f| rotated(f).is_some()).await;
    let alice_new = rotated(&alice_status)
        .unwrap()
        .credential
        .clone()
        .expect("the submitter sees the new value");
    assert_eq!(alice_new.id, original.id);
    let (_, bob_status) = bob.recv_until(|f| rotated(f).is_some()).await;
    assert!(
        rotated(&bob_status).unwrap().credential.is_none(),
        "the credential is stripped for another principal"
    );
    let (_, terminal) = bob.recv_until_terminal(&job).await;
    assert_eq!(job_result(&terminal).final_status, "success");
    alice.recv_until_terminal(&job).await;

    // Replayed history is redacted the same way.
    let (mut late, _) = s.server.hello_with("bob-token", FEATURES).await;
    late.send(subscribe(&job, true, Some(0))).await;
    let (frames, _) = late.recv_until_terminal(&job).await;
    for f in &frames {
        match &f.payload {
            Some(Out::JobSubscribed(sub)) => assert!(sub.credentials.is_empty()),
            Some(Out::JobAccepted(a)) => assert!(a.credentials.is_empty()),
            _ => {
                if let Some(status) = rotated(f) {
                    assert!(status.credential.is_none());
                }
            }
        }
    }
    assert_eq!(frames.iter().filter(|f| rotated(f).is_some()).count(), 1);
}

#[tokio::test]
async fn the_submitting_principal_subscribing_from_another_session_sees_credentials() {
    let s = start().await;
    let (mut alice, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut alice, submit("gate", json!({}))).await;
    let original = the_credential(&frame);

    let (mut again, _) = s.server.hello_with("alice-token", FEATURES).await;
    again.send(subscribe(&job, true, Some(0))).await;
    let subscribed = again.recv().await;
    let Some(Out::JobSubscribed(sub)) = &subscribed.payload else {
        panic!("expected job_subscribed, got {subscribed:?}")
    };
    assert_eq!(sub.credentials.len(), 1);
    assert_eq!(sub.credentials[0].value, original.value);
    let replayed = again.recv().await;
    assert_eq!(the_credential(&replayed).value, original.value);
    s.gate.notify_one();
    again.recv_until_terminal(&job).await;
}

#[tokio::test]
async fn listing_jobs_redacts_credentials_for_other_principals() {
    let s = start().await;
    let (mut alice, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut alice, submit("gate", json!({}))).await;
    let original = the_credential(&frame);

    for (token, visible) in [("alice-token", true), ("bob-token", false)] {
        let (mut conn, _) = s.server.hello_with(token, FEATURES).await;
        conn.send(In::SessionListJobs(proto::SessionListJobs::default()))
            .await;
        let listed = conn.recv().await;
        let Some(Out::SessionJobs(jobs)) = &listed.payload else {
            panic!("expected session_jobs, got {listed:?}")
        };
        let summary = jobs.jobs.iter().find(|j| j.job_id == job).expect("listed");
        if visible {
            assert_eq!(summary.credentials.len(), 1, "{token}");
            assert_eq!(summary.credentials[0].value, original.value);
        } else {
            assert!(summary.credentials.is_empty(), "{token}");
        }
    }
    s.gate.notify_one();
    alice.recv_until_terminal(&job).await;
}

/// An upstream whose revocations fail `failures` times before they go through, the way a
/// flaky network would.
struct FlakyRevocation {
    inner: MemoryProvisioner,
    failures: AtomicU32,
    attempts: AtomicU32,
}

impl FlakyRevocation {
    /// An upstream that refuses its first `failures` revocations.
    fn failing(failures: u32) -> Arc<FlakyRevocation> {
        Arc::new(FlakyRevocation {
            inner: MemoryProvisioner::new(ENDPOINT, Some("openai".into())),
            failures: AtomicU32::new(failures),
            attempts: AtomicU32::new(0),
        })
    }
}

#[async_trait::async_trait]
impl arcp_gateway::credentials::CredentialProvisioner for FlakyRevocation {
    async fn issue(
        &self,
        job: &arcp_gateway::ids::JobId,
        constraints: serde_json::Map<String, Json>,
    ) -> Result<arcp_gateway::protocol::credential::Credential, ArcpError> {
        self.inner.issue(job, constraints).await
    }

    async fn rotate(
        &self,
        id: &str,
    ) -> Result<arcp_gateway::protocol::credential::Credential, ArcpError> {
        self.inner.rotate(id).await
    }

    async fn revoke(&self, id: &str) -> Result<(), ArcpError> {
        use std::sync::atomic::Ordering;
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(ArcpError::Internal("upstream unavailable".into()));
        }
        self.inner.revoke(id).await
    }
}

/// §9.8.2: revocation is retried on transient failure, and the credential is dead by the time
/// the job's terminal frame is logged.
#[tokio::test]
async fn a_failed_revocation_is_retried_until_the_upstream_accepts_it() {
    let upstream = FlakyRevocation::failing(2);
    let gateway = alice_only().credential_provisioner(upstream.clone());
    let server = TestServer::start_gateway(gateway).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut conn, submit("echo", json!({"x": 1}))).await;
    let value = the_credential(&frame).value;
    assert!(upstream.inner.is_live(&value));
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_result(&terminal).final_status, "success");
    assert_eq!(
        upstream.attempts.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    assert!(!upstream.inner.is_live(&value), "revoked after the retries");
}

// ---------------------------------------------------------------------------------------------
// The ledger (§14)
// ---------------------------------------------------------------------------------------------

/// A ledger whose next `record`s and `revoked`s fail, as a store that cannot be reached does.
struct FailingLedger {
    inner: Arc<dyn CredentialLedger>,
    records: AtomicU32,
    revocations: AtomicU32,
}

impl FailingLedger {
    fn failing(counter: &AtomicU32) -> Result<(), ArcpError> {
        let left = counter.load(Ordering::SeqCst);
        if left > 0 {
            counter.store(left - 1, Ordering::SeqCst);
            return Err(ArcpError::Internal(
                "the credential ledger is unavailable".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl CredentialLedger for FailingLedger {
    async fn record(
        &self,
        id: &CredentialId,
        job: &JobId,
        at: SystemTime,
    ) -> Result<(), ArcpError> {
        Self::failing(&self.records)?;
        self.inner.record(id, job, at).await
    }

    async fn failed(
        &self,
        id: &CredentialId,
        failures: u32,
        next: SystemTime,
    ) -> Result<Option<u32>, ArcpError> {
        self.inner.failed(id, failures, next).await
    }

    async fn revoked(&self, id: &CredentialId) -> Result<bool, ArcpError> {
        Self::failing(&self.revocations)?;
        self.inner.revoked(id).await
    }

    async fn outstanding(&self) -> Result<Vec<Outstanding>, ArcpError> {
        self.inner.outstanding().await
    }

    async fn adopt(&self, lost: &ReplicaId) -> Result<usize, ArcpError> {
        self.inner.adopt(lost).await
    }
}

/// [`start`]'s gateway, with its ledger failing the first `records` records and `revocations`
/// removals.
async fn start_failing(records: u32, revocations: u32) -> Setup {
    let provisioner = Arc::new(MemoryProvisioner::new(ENDPOINT, Some("openai".into())));
    let gate = Arc::new(Notify::new());
    let mut agents = AgentRegistry::with_builtins();
    agents
        .register("gate", "1.0.0", Arc::new(Gate { open: gate.clone() }))
        .unwrap();
    let gateway = alice_only()
        .agents(agents)
        .credential_provisioner(provisioner.clone());
    let server = TestServer::start_wrapped(gateway, move |stores| {
        let credentials = Arc::new(FailingLedger {
            inner: stores.credentials.clone(),
            records: AtomicU32::new(records),
            revocations: AtomicU32::new(revocations),
        });
        arcp_gateway::store::Stores {
            credentials,
            ..stores
        }
    })
    .await;
    Setup {
        server,
        provisioner,
        gate,
    }
}

/// The ledger lists a job's credential, by id only, from before its `job.accepted` until its
/// revocation was accepted, which is before the job's terminal frame.
#[tokio::test]
async fn a_credential_is_in_the_ledger_from_before_its_acceptance_until_its_revocation() {
    let s = start().await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut conn, submit("gate", json!({}))).await;
    let c = the_credential(&frame);
    let ledger = &s.server.stores.credentials;
    let listed = ledger.outstanding().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (
            listed[0].id.as_str(),
            listed[0].job.as_str(),
            listed[0].revocation
        ),
        (c.id.as_str(), job.as_str(), Revocation::Held)
    );
    s.gate.notify_one();
    conn.recv_until_terminal(&job).await;
    assert!(!s.provisioner.is_live(&c.value));
    assert!(ledger.is_empty(), "forgotten once revoked");
}

/// A credential the ledger cannot record never reaches a job: it is revoked at once and the
/// submission refused with a retryable error; the next submission, recorded, runs.
#[tokio::test]
async fn a_credential_the_ledger_cannot_record_is_revoked_and_its_job_refused() {
    let s = start_failing(1, 0).await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let id = conn.send(submit("echo", json!(1))).await;
    let refusal = conn.recv().await;
    let e = expect_error(&refusal, ErrorCode::InternalError, Some(&id));
    assert!(e.message.contains("ledger"), "{e:?}");
    assert_eq!(
        s.provisioner.outstanding(),
        0,
        "the unrecorded credential is revoked"
    );
    assert!(s.server.stores.credentials.is_empty());

    let (job, frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    the_credential(&frame);
    conn.recv_until_terminal(&job).await;
    assert_eq!(s.provisioner.outstanding(), 0);
}

/// A revoked credential the ledger failed to forget is forgotten by the next sweep, without
/// asking the upstream again.
#[tokio::test]
async fn a_revoked_credential_the_ledger_failed_to_forget_is_forgotten_by_the_sweep() {
    let s = start_failing(0, 1).await;
    let (mut conn, _) = s.server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    let c = the_credential(&frame);
    conn.recv_until_terminal(&job).await;
    assert!(!s.provisioner.is_live(&c.value), "revoked at the job's end");
    // Listed as held by a job that ended: only the sweep's record of what it could not tell
    // the ledger can forget it.
    let ledger = s.server.stores.credentials.clone();
    eventually("the sweep to forget it", || async {
        s.server.gateway.sweep().await;
        ledger.is_empty()
    })
    .await;
}

/// A credential whose revocation the upstream refused past the job's own attempts stays in
/// the ledger as failing, and the sweep retries it until the upstream accepts.
#[tokio::test]
async fn a_revocation_refused_past_the_jobs_attempts_is_left_to_the_sweep() {
    let attempts = arcp_gateway::credentials::IN_JOB_ATTEMPTS;
    let upstream = FlakyRevocation::failing(attempts);
    let gateway = alice_only().credential_provisioner(upstream.clone());
    let server = TestServer::start_gateway(gateway).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    let value = the_credential(&frame).value;
    conn.recv_until_terminal(&job).await;
    assert_eq!(upstream.attempts.load(Ordering::SeqCst), attempts);
    assert!(upstream.inner.is_live(&value), "refused every time");
    let listed = server.stores.credentials.outstanding().await.unwrap();
    assert!(
        matches!(listed.as_slice(), [entry] if matches!(entry.revocation, Revocation::Failing { attempts: a, .. } if a == attempts)),
        "{listed:?}"
    );
    let ledger = server.stores.credentials.clone();
    eventually("the sweep to revoke it", || async {
        server.gateway.sweep().await;
        ledger.is_empty()
    })
    .await;
    assert!(!upstream.inner.is_live(&value));
    assert!(
        upstream.attempts.load(Ordering::SeqCst) > attempts,
        "the sweep tried"
    );
}
