//! The ledger of outstanding provisioned credentials (§9.8.2, §14) through real processes: an
//! HTTP credential upstream of the test's own on 127.0.0.1, which records what it issued and
//! revoked and can be told to refuse revocations with 503; `arcp-gateway serve
//! --credential-upstream` processes; and, for the shared store, a `redis-server` of the test's
//! own. A credential is revoked at its job's end and leaves the ledger; one the upstream
//! refused while its gateway was killed is revoked by the process restarted under the same
//! replica id; a killed replica's running job's credential is revoked by the replica that
//! takes it over; and on the memory store the sweep keeps retrying after the job's own
//! attempts gave up.
//!
//! Every wait polls what the upstream recorded, or the gateway's log, with a deadline that
//! guards against hangs.

mod common;

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use arcp_gateway::{
    credentials::IN_JOB_ATTEMPTS,
    ids::ReplicaId,
    proto::client_frame::Payload as In,
    store::{
        credentials::{CredentialLedger, Outstanding, Revocation},
        log::LogLimits,
        redis::Redis,
        Stores,
    },
};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

/// What the sessions negotiate: credentials, and the defaults.
const CREDENTIAL_FEATURES: &[&str] = &["provisioned_credentials", "progress", "agent_versions"];

/// Short leases, so a killed replica is lost within seconds.
const HEARTBEAT_SEC: &str = "0.5";
const LEASE_SEC: &str = "2";

// ---------------------------------------------------------------------------------------------
// The upstream
// ---------------------------------------------------------------------------------------------

/// A credential upstream on 127.0.0.1 speaking the contract of `docs/credentials.md`.
struct Upstream {
    addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the upstream saw.
#[derive(Default)]
struct Record {
    /// Live credentials: id to (job, value).
    live: HashMap<String, (String, String)>,
    /// Every credential issued: id to job.
    issued: HashMap<String, String>,
    /// Revoked ids, in the order the revocations were accepted.
    revoked: Vec<String>,
    /// DELETEs received, per id, refused or not.
    deletes: HashMap<String, u32>,
    /// Whether revocations are refused with 503.
    refusing: bool,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let shared = record.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let record = record.clone();
                        async move { Ok::<_, Infallible>(answer(&record, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, record, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, refuses every revocation with 503 (`true`) or accepts them (`false`).
    fn refuse_revocations(&self, refusing: bool) {
        self.record.lock().unwrap().refusing = refusing;
    }

    fn revoked(&self) -> Vec<String> {
        self.record.lock().unwrap().revoked.clone()
    }

    fn is_live(&self, id: &str) -> bool {
        self.record.lock().unwrap().live.contains_key(id)
    }

    fn issued_to(&self, id: &str) -> Option<String> {
        self.record.lock().unwrap().issued.get(id).cloned()
    }

    fn deletes(&self, id: &str) -> u32 {
        self.record
            .lock()
            .unwrap()
            .deletes
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until the upstream accepted the revocation of `id`.
    async fn revoked_eventually(&self, id: &str) {
        eventually_within(&format!("credential {id} to be revoked upstream"), || {
            self.revoked().iter().any(|r| r == id)
        })
        .await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    record: &Mutex<Record>,
    request: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return respond(StatusCode::BAD_REQUEST, None),
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut record = record.lock().unwrap();
    match (method, segments.as_slice()) {
        (Method::POST, ["credentials"]) => {
            let Ok(asked) = serde_json::from_slice::<Value>(&body) else {
                return respond(StatusCode::BAD_REQUEST, None);
            };
            let Some(job) = asked["job_id"].as_str() else {
                return respond(StatusCode::BAD_REQUEST, None);
            };
            let id = format!("cred_{:016x}", rand::random::<u64>());
            let value = secret();
            record
                .live
                .insert(id.clone(), (job.to_owned(), value.clone()));
            record.issued.insert(id.clone(), job.to_owned());
            let credential = json!({
                "id": id, "value": value, "endpoint": "https://llm.example/v1",
                "profile": "openai", "constraints": asked["constraints"],
            });
            respond(StatusCode::CREATED, Some(credential))
        }
        (Method::POST, ["credentials", id, "rotate"]) => {
            let Some((_, value)) = record.live.get_mut(*id) else {
                return respond(StatusCode::NOT_FOUND, None);
            };
            *value = secret();
            let credential = json!({
                "id": id, "value": value.clone(), "endpoint": "https://llm.example/v1",
            });
            respond(StatusCode::OK, Some(credential))
        }
        (Method::DELETE, ["credentials", id]) => {
            *record.deletes.entry((*id).to_owned()).or_default() += 1;
            if record.refusing {
                return respond(StatusCode::SERVICE_UNAVAILABLE, None);
            }
            if record.live.remove(*id).is_none() {
                return respond(StatusCode::NOT_FOUND, None);
            }
            record.revoked.push((*id).to_owned());
            respond(StatusCode::NO_CONTENT, None)
        }
        _ => respond(StatusCode::NOT_FOUND, None),
    }
}

fn respond(status: StatusCode, body: Option<Value>) -> Response<Full<Bytes>> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn secret() -> String {
    format!("sk-test-{:032x}", rand::random::<u128>())
}

// ---------------------------------------------------------------------------------------------
// Gateways and the ledger
// ---------------------------------------------------------------------------------------------

/// A gateway process as replica `id` on `redis` (or on the memory store), issuing from
/// `upstream`, with short leases.
async fn gateway(upstream: &Upstream, redis: Option<&RedisServer>, id: &str) -> GatewayProcess {
    let url = upstream.url();
    let mut flags = vec![
        "--credential-upstream",
        &url,
        // Plaintext on loopback (CONFORMANCE.md).
        "--allow-plaintext-credentials",
        "--replica-id",
        id,
        "--replica-heartbeat-sec",
        HEARTBEAT_SEC,
        "--replica-lease-sec",
        LEASE_SEC,
    ];
    if let Some(redis) = redis {
        flags.extend(["--store", redis.url()]);
    }
    GatewayProcess::start_with("info", None, &flags).await
}

/// Replica `replica`'s part of the ledger in `redis`, as the gateways keep it (prefix `arcp`).
fn ledger(redis: &RedisServer, replica: &str) -> Arc<dyn CredentialLedger> {
    let redis = Redis::open(redis.url(), "arcp").expect("a redis address");
    Stores::redis(&redis, &ReplicaId::new(replica), LogLimits::frames(10)).credentials
}

async fn entries(redis: &RedisServer, replica: &str) -> Vec<Outstanding> {
    ledger(redis, replica).outstanding().await.unwrap()
}

/// Submits `payload` on a session of `on` that negotiated credentials; returns the stream,
/// the job and its one credential's id and value.
async fn submit_with_credential(on: &Endpoint, payload: In) -> (Conn, String, String, String) {
    let (mut conn, _) = on.hello_with("alice-token", CREDENTIAL_FEATURES).await;
    let (job, frame) = submit_and_accept(&mut conn, payload).await;
    let credentials = &accepted(&frame).credentials;
    assert_eq!(credentials.len(), 1, "{credentials:?}");
    let credential = &credentials[0];
    (conn, job, credential.id.clone(), credential.value.clone())
}

/// Every ledger key in `redis` and what it holds, as text.
fn ledger_contents(redis: &RedisServer) -> String {
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg("arcp:*credential*")
        .query(&mut conn)
        .unwrap();
    let mut contents = String::new();
    for key in keys {
        let kind: String = ::redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
        let held: Vec<String> = match kind.as_str() {
            "hash" => ::redis::cmd("HGETALL").arg(&key).query(&mut conn).unwrap(),
            "set" => ::redis::cmd("SMEMBERS").arg(&key).query(&mut conn).unwrap(),
            other => panic!("a ledger key of type {other}: {key}"),
        };
        contents.push_str(&format!("{key}: {held:?}\n"));
    }
    contents
}

/// [`wait_until`] with the processes' deadline: restarts and takeovers take seconds.
async fn eventually_within(what: &str, mut holds: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PROCESS_TIMEOUT;
    while !holds() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {PROCESS_TIMEOUT:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// [`eventually_within`] for a condition on the ledger.
async fn ledger_eventually(
    redis: &RedisServer,
    what: &str,
    holds: impl Fn(&[Outstanding]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + PROCESS_TIMEOUT;
    loop {
        let now = [
            entries(redis, "replica-0").await,
            entries(redis, "replica-1").await,
        ]
        .concat();
        if holds(&now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not happen within {PROCESS_TIMEOUT:?}; the ledger: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The normal path: the credential is in the ledger (by id, as its job's, issued by this
/// replica) by the time the job is accepted, is revoked upstream when the job ends, and is out
/// of the ledger before the job's terminal frame; neither the ledger nor the log ever holds
/// its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_is_revoked_upstream_at_its_jobs_end_and_leaves_the_ledger() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let replica = gateway(&upstream, Some(&redis), "replica-0").await;
    let (mut conn, job, id, value) =
        submit_with_credential(&replica.endpoint(), ticker(5, 100)).await;
    assert_eq!(upstream.issued_to(&id).as_deref(), Some(job.as_str()));

    let listed = entries(&redis, "replica-0").await;
    assert_eq!(listed.len(), 1, "recorded before job.accepted: {listed:?}");
    assert_eq!(
        (
            listed[0].id.as_str(),
            listed[0].job.as_str(),
            listed[0].revocation
        ),
        (id.as_str(), job.as_str(), Revocation::Held)
    );
    assert_eq!(listed[0].issued_by.replica().as_str(), "replica-0");
    assert!(upstream.is_live(&id), "live while its job runs");
    let stored = ledger_contents(&redis);
    assert!(stored.contains(&id), "{stored}");
    assert!(
        !stored.contains(&value),
        "the ledger holds no value: {stored}"
    );

    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_result(&terminal).final_status, "success");
    assert_eq!(
        upstream.revoked(),
        vec![id.clone()],
        "revoked once, at the job's end"
    );
    assert_eq!(upstream.deletes(&id), 1);
    assert!(
        entries(&redis, "replica-0").await.is_empty(),
        "out of the ledger before the terminal frame"
    );
    assert_eq!(ledger_contents(&redis), "", "nothing left of it");
    let (_, output) = replica.terminate().await;
    assert!(!output.contains(&value), "the log never holds the value");
}

/// The upstream refuses revocations while the job ends; the gateway is SIGKILLed with the
/// credential still in the ledger; the upstream recovers; a gateway started again under the
/// same replica id revokes it (as its predecessor's), and the ledger is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_left_by_a_killed_gateway_is_revoked_by_its_restart() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let first = gateway(&upstream, Some(&redis), "replica-0").await;
    upstream.refuse_revocations(true);
    let (mut conn, job, id, value) =
        submit_with_credential(&first.endpoint(), submit("echo", json!({"x": 1}))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_result(&terminal).final_status, "success");
    assert!(
        upstream.deletes(&id) >= IN_JOB_ATTEMPTS,
        "the job's end tried"
    );
    first
        .wait_for_line(&["the sweep retries it", &format!("credential={id}")])
        .await;
    let listed = entries(&redis, "replica-0").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let failing = match listed[0].revocation {
        Revocation::Failing { attempts, .. } => attempts,
        Revocation::Held => 0,
    };
    assert!(failing >= IN_JOB_ATTEMPTS, "left to the sweep: {listed:?}");
    let killed = listed[0].issued_by.clone();

    first.signal("KILL");
    let (_, output) = first.exited().await;
    assert!(upstream.is_live(&id), "still live upstream after the kill");
    assert!(!output.contains(&value), "the log never holds the value");
    upstream.refuse_revocations(false);

    let restarted = std::time::Instant::now();
    let second = gateway(&upstream, Some(&redis), "replica-0").await;
    upstream.revoked_eventually(&id).await;
    println!("revoked {:?} after the restart began", restarted.elapsed());
    assert!(!upstream.is_live(&id));
    ledger_eventually(&redis, "the ledger to be empty", |now| now.is_empty()).await;
    second
        .wait_for_line(&[
            "credential revoked by the sweep",
            &format!("credential={id}"),
            &format!("issued_by={killed}"),
        ])
        .await;
    assert_eq!(upstream.revoked(), vec![id], "revoked once");
}

/// Two replicas: the one running a job is SIGKILLed mid-job; the survivor takes it over,
/// moves its ledger entries into its own part, and revokes the lost job's credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_running_jobs_credential_is_revoked_by_the_survivor() {
    let upstream = Upstream::start().await;
    let redis = RedisServer::start();
    let lost = gateway(&upstream, Some(&redis), "replica-0").await;
    let survivor = gateway(&upstream, Some(&redis), "replica-1").await;
    let (mut conn, job, id, _) =
        submit_with_credential(&lost.endpoint(), ticker(100_000, 100)).await;
    conn.recv().await;
    let listed = entries(&redis, "replica-0").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].revocation, Revocation::Held);

    let killed = std::time::Instant::now();
    lost.signal("KILL");
    let _ = lost.exited().await;
    assert!(upstream.is_live(&id), "nobody revoked it on the way down");
    upstream.revoked_eventually(&id).await;
    println!("revoked {:?} after the kill", killed.elapsed());
    ledger_eventually(&redis, "both parts of the ledger to be empty", |now| {
        now.is_empty()
    })
    .await;
    survivor
        .wait_for_line(&["took over the lost replica", "credentials=1"])
        .await;
    survivor
        .wait_for_line(&[
            "credential revoked by the sweep",
            &format!("credential={id}"),
            &format!("job={job}"),
        ])
        .await;
    assert_eq!(upstream.revoked(), vec![id], "revoked once");
}

/// On the memory store: the upstream refuses revocations past the job's own attempts; the
/// sweep keeps trying, backing off; once the upstream accepts, the credential is revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_memory_store_the_sweep_retries_until_the_upstream_accepts() {
    let upstream = Upstream::start().await;
    let replica = gateway(&upstream, None, "replica-0").await;
    upstream.refuse_revocations(true);
    let (mut conn, job, id, _) =
        submit_with_credential(&replica.endpoint(), submit("echo", json!({"x": 1}))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_result(&terminal).final_status, "success");
    assert!(upstream.deletes(&id) >= IN_JOB_ATTEMPTS);
    eventually_within("two of the sweep's attempts beyond the job's own", || {
        upstream.deletes(&id) >= IN_JOB_ATTEMPTS + 2
    })
    .await;
    replica
        .wait_for_line(&[
            "credential revocation failed again",
            &format!("credential={id}"),
        ])
        .await;
    assert!(upstream.is_live(&id));

    upstream.refuse_revocations(false);
    let recovered = std::time::Instant::now();
    upstream.revoked_eventually(&id).await;
    println!(
        "revoked {:?} after the upstream recovered, at attempt {}",
        recovered.elapsed(),
        upstream.deletes(&id)
    );
    replica
        .wait_for_line(&[
            "credential revoked by the sweep",
            &format!("credential={id}"),
        ])
        .await;
    assert_eq!(upstream.revoked(), vec![id]);
}
