//! Leases (§9.1-§9.3, §9.5, §9.7) through the real server: the lease grammar and its echo in
//! `job.accepted`, glob enforcement before every operation, `model.use` and its deployment
//! default, and `expires_at` validation and enforcement during execution.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use arcp_gateway::{
    agent::{Agent, AgentRegistry, JobContext},
    config::GatewayConfig,
    lease::Namespace,
    proto::{self, client_frame::Payload as In, job_event::Body},
    protocol::Json,
    ArcpError,
};
use chrono::{DateTime, Utc};
use common::*;
use prost_types::{value::Kind, ListValue};
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A wire lease as plain strings, for comparisons.
fn lease_strings(lease: &HashMap<String, ListValue>) -> BTreeMap<String, Vec<String>> {
    lease
        .iter()
        .map(|(ns, list)| {
            let patterns = list
                .values
                .iter()
                .map(|v| match &v.kind {
                    Some(Kind::StringValue(s)) => s.clone(),
                    other => panic!("lease pattern is not a string: {other:?}"),
                })
                .collect();
            (ns.clone(), patterns)
        })
        .collect()
}

fn strings(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    lease_strings(&lease(entries))
}

fn instant(ts: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(ts)
        .unwrap_or_else(|e| panic!("{ts:?} is not RFC 3339: {e}"))
        .with_timezone(&Utc)
}

/// Opens a session as `token` and asserts it negotiated every one of `features`.
async fn session(server: &TestServer, token: &str, features: &[&str]) -> Conn {
    let (conn, w) = server.hello_with(token, features).await;
    let offered = offered_features(&w);
    for f in features {
        assert!(offered.iter().any(|o| o == f), "{f} not negotiated");
    }
    conn
}

/// Sends `payload`, expects a `session_error` INVALID_REQUEST answering it, then proves no job
/// was started: the next job frame of the session is the acceptance of a fresh echo at seq 1.
async fn expect_refused(conn: &mut Conn, payload: In) -> String {
    let id = conn.send(payload).await;
    let frame = conn.recv().await;
    let e = session_error(&frame);
    assert_eq!(e.code, "INVALID_REQUEST", "{e:?}");
    assert!(!e.retryable);
    assert_eq!(e.request_id, id);
    assert!(frame.job_id.is_empty());
    let message = e.message.clone();
    let (_, accepted_frame) = submit_and_accept(conn, submit("echo", json!(1))).await;
    let _ = conn.recv().await;
    assert_eq!(
        accepted_frame.event_seq, 1,
        "a refused submission must not start a job"
    );
    message
}

fn tool_results(frames: &[proto::ServerFrame]) -> Vec<&proto::ToolResultBody> {
    frames
        .iter()
        .filter_map(|f| match event_body(f) {
            Some(Body::ToolResult(r)) => Some(&**r),
            _ => None,
        })
        .collect()
}

/// Authorizes `checks` (`[[namespace, resource], ...]`) after an optional `sleep_ms`, and
/// returns one outcome per check: `"ok"` or the error code. It swallows every error.
struct Prober;

#[async_trait::async_trait]
impl Agent for Prober {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        if let Some(ms) = input.get("sleep_ms").and_then(Json::as_u64) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let checks = input["checks"].as_array().cloned().unwrap_or_default();
        let outcomes: Vec<String> = checks
            .iter()
            .map(|c| {
                let ns = Namespace::parse(c[0].as_str().unwrap()).expect("a namespace");
                match ctx.authorize(ns, c[1].as_str().unwrap()) {
                    Ok(()) => "ok".to_owned(),
                    Err(e) => e.code().as_str().to_owned(),
                }
            })
            .collect();
        Ok(json!(outcomes))
    }
}

async fn start(config: GatewayConfig) -> TestServer {
    let mut agents = AgentRegistry::with_builtins();
    agents
        .register("prober", "1.0.0", Arc::new(Prober))
        .unwrap();
    TestServer::start_with_agents(config, agents).await
}

/// Runs `prober` with `checks` under `lease_request`; returns the outcomes.
async fn probe(
    conn: &mut Conn,
    lease_request: HashMap<String, ListValue>,
    checks: &[(&str, &str)],
) -> Vec<String> {
    let checks: Vec<_> = checks.iter().map(|(ns, r)| json!([ns, r])).collect();
    let (job, _) = submit_and_accept(
        conn,
        submit_expiring("prober", json!({ "checks": checks }), lease_request, None),
    )
    .await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    let r = job_result(&terminal);
    serde_json::from_value(to_json(r.result.as_ref().unwrap())).unwrap()
}

const ALL: &[&str] = &[
    "lease_expires_at",
    "cost.budget",
    "model.use",
    "progress",
    "agent_versions",
];

// ---------------------------------------------------------------------------------------------
// Grammar and echo (§9.2, §7.1)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_reserved_namespace_is_accepted_and_echoed_verbatim_as_the_effective_lease() {
    let server = start(GatewayConfig::default()).await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let entries: &[(&str, &[&str])] = &[
        ("fs.read", &["/workspace/myapp/**"]),
        ("fs.write", &["/workspace/myapp/src/**"]),
        ("net.fetch", &["https://api.example.com/*"]),
        ("tool.call", &["search", "fetch_*"]),
        ("agent.delegate", &["echo"]),
        ("cost.budget", &["USD:5.00", "credits:1000"]),
        ("model.use", &["tier-fast/*", "anthropic/claude-3-haiku-*"]),
    ];
    let (job, frame) = submit_and_accept(
        &mut conn,
        submit_expiring("echo", json!(1), lease(entries), None),
    )
    .await;
    let a = accepted(&frame);
    assert_eq!(
        lease_strings(&a.lease),
        strings(entries),
        "patterns echoed as written"
    );
    assert!(
        a.lease_constraints.is_none(),
        "no lease_constraints without expires_at"
    );
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_result(&terminal).final_status, "success");
}

#[tokio::test]
async fn an_empty_pattern_list_is_kept_and_grants_nothing() {
    let server = start(GatewayConfig::default()).await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let (job, frame) = submit_and_accept(
        &mut conn,
        submit_expiring("echo", json!(1), lease(&[("tool.call", &[])]), None),
    )
    .await;
    assert_eq!(
        lease_strings(&accepted(&frame).lease),
        strings(&[("tool.call", &[])])
    );
    conn.recv_until_terminal(&job).await;
    let out = probe(
        &mut conn,
        lease(&[("tool.call", &[])]),
        &[("tool.call", "search")],
    )
    .await;
    assert_eq!(out, ["PERMISSION_DENIED"]);
}

#[tokio::test]
async fn an_unknown_namespace_is_an_invalid_request_and_starts_no_job() {
    let server = start(GatewayConfig::default()).await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let message = expect_refused(
        &mut conn,
        submit_expiring(
            "echo",
            json!(1),
            lease(&[("fs.read", &["/a/**"]), ("shell.exec", &["*"])]),
            None,
        ),
    )
    .await;
    assert!(message.contains("shell.exec"), "{message}");
}

#[tokio::test]
async fn malformed_patterns_are_invalid_requests_and_start_no_job() {
    let server = start(GatewayConfig::default()).await;
    let oversized = "a".repeat(4097);
    for entries in [
        &[("net.fetch", &["https://x/*", ""][..])][..],
        &[("fs.read", &[oversized.as_str()][..])][..],
        &[("fs.delete", &["/x"][..])][..],
        &[("FS.READ", &["/x"][..])][..],
    ] {
        let mut conn = session(&server, "alice-token", ALL).await;
        expect_refused(
            &mut conn,
            submit_expiring("echo", json!(1), lease(entries), None),
        )
        .await;
    }
    // A pattern that is not a string.
    let mut conn = session(&server, "alice-token", ALL).await;
    let mut bad = lease(&[]);
    bad.insert(
        "tool.call".into(),
        ListValue {
            values: vec![prost_types::Value {
                kind: Some(Kind::NumberValue(1.0)),
            }],
        },
    );
    expect_refused(&mut conn, submit_expiring("echo", json!(1), bad, None)).await;
}

// ---------------------------------------------------------------------------------------------
// Enforcement (§9.3)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tool_calls_outside_tool_call_are_denied_before_they_run_and_covered_ones_succeed() {
    let server = start(GatewayConfig::default()).await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let calls = [
        ("search", true),
        ("fetch_page", true),
        ("fetch_", true),
        ("delete_all", false),
        ("fetcher", false),
        ("Search", false),
    ];
    let input = json!({
        "calls": calls.iter().map(|(t, _)| json!({"tool": t, "args": {"t": t}})).collect::<Vec<_>>()
    });
    let (job, _) = submit_and_accept(
        &mut conn,
        submit_expiring(
            "tool-user",
            input,
            lease(&[("tool.call", &["search", "fetch_*"])]),
            None,
        ),
    )
    .await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;

    // Each call is a tool_call followed by its tool_result.
    assert_eq!(events.len(), calls.len() * 2, "{events:?}");
    for (pair, (tool, allowed)) in events.chunks(2).zip(calls) {
        let Some(Body::ToolCall(call)) = event_body(&pair[0]) else {
            panic!("expected tool_call, got {:?}", pair[0])
        };
        let Some(Body::ToolResult(result)) = event_body(&pair[1]) else {
            panic!("expected tool_result, got {:?}", pair[1])
        };
        assert_eq!(call.tool, tool);
        assert_eq!(result.call_id, call.call_id, "tool_result answers its call");
        if allowed {
            assert!(result.error.is_none(), "{tool}: {result:?}");
            assert_eq!(to_json(result.result.as_ref().unwrap()), json!({"t": tool}));
        } else {
            let e = result.error.as_ref().expect("an error");
            assert_eq!(e.code, "PERMISSION_DENIED", "{tool}");
            assert!(!e.retryable);
            assert!(e.message.contains(tool), "{}", e.message);
            assert!(result.result.is_none(), "a denied tool has no result");
        }
    }
    let r = job_result(&terminal);
    assert_eq!(r.final_status, "success");
    assert_eq!(
        to_json(r.result.as_ref().unwrap()),
        json!({
            "results": [{"t": "search"}, {"t": "fetch_page"}, {"t": "fetch_"}],
            "denied": ["delete_all", "fetcher", "Search"],
            "stopped_by": null
        }),
        "denied tools did not run"
    );
}

#[tokio::test]
async fn glob_star_stays_in_a_segment_question_mark_is_one_character_and_double_star_crosses() {
    let server = start(GatewayConfig::default()).await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let grants = lease(&[("tool.call", &["ns/*", "v?", "deep/**"])]);
    let cases = [
        ("ns/a", "ok"),
        ("ns/", "ok"),
        ("ns/a/b", "PERMISSION_DENIED"),
        ("ns", "PERMISSION_DENIED"),
        ("v1", "ok"),
        ("v", "PERMISSION_DENIED"),
        ("v12", "PERMISSION_DENIED"),
        ("deep/a", "ok"),
        ("deep/a/b/c", "ok"),
        ("deep", "PERMISSION_DENIED"),
        ("deeper/a", "PERMISSION_DENIED"),
    ];
    let checks: Vec<_> = cases.iter().map(|(r, _)| ("tool.call", *r)).collect();
    let out = probe(&mut conn, grants, &checks).await;
    let expected: Vec<_> = cases.iter().map(|(_, o)| *o).collect();
    assert_eq!(out, expected, "{cases:?}");
}

#[tokio::test]
async fn each_namespace_is_enforced_with_its_own_patterns() {
    let server = start(GatewayConfig::default()).await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let grants = lease(&[
        ("fs.read", &["/w/**"]),
        ("fs.write", &["/w/out/*"]),
        ("net.fetch", &["https://api.example.com/*"]),
        ("model.use", &["tier-fast/*"]),
        ("agent.delegate", &["ech?"]),
    ]);
    let cases = [
        ("fs.read", "/w/a/b.txt", "ok"),
        ("fs.read", "/w/out/x", "ok"),
        ("fs.read", "/etc/passwd", "PERMISSION_DENIED"),
        ("fs.write", "/w/out/x", "ok"),
        ("fs.write", "/w/out/x/y", "PERMISSION_DENIED"),
        ("fs.write", "/w/a", "PERMISSION_DENIED"),
        ("net.fetch", "https://api.example.com/v1", "ok"),
        (
            "net.fetch",
            "https://api.example.com/v1/users",
            "PERMISSION_DENIED",
        ),
        (
            "net.fetch",
            "https://api.example.com.evil.net/v1",
            "PERMISSION_DENIED",
        ),
        ("model.use", "tier-fast/gpt-4o", "ok"),
        ("model.use", "tier-slow/gpt-4o", "PERMISSION_DENIED"),
        ("agent.delegate", "echo", "ok"),
        ("agent.delegate", "ticker", "PERMISSION_DENIED"),
        // A namespace absent from the lease grants nothing.
        ("tool.call", "search", "PERMISSION_DENIED"),
    ];
    let checks: Vec<_> = cases.iter().map(|(ns, r, _)| (*ns, *r)).collect();
    let out = probe(&mut conn, grants, &checks).await;
    let expected: Vec<_> = cases.iter().map(|(_, _, o)| *o).collect();
    assert_eq!(out, expected, "{cases:?}");
}

#[tokio::test]
async fn a_job_without_a_lease_may_do_nothing() {
    let server = start(GatewayConfig::default()).await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let out = probe(
        &mut conn,
        lease(&[]),
        &[
            ("tool.call", "search"),
            ("fs.read", "/"),
            ("net.fetch", "https://x/"),
            ("model.use", "tier-fast/x"),
            ("agent.delegate", "echo"),
        ],
    )
    .await;
    assert_eq!(out, ["PERMISSION_DENIED"; 5]);
}

// ---------------------------------------------------------------------------------------------
// model.use (§9.7)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn model_use_needs_the_model_use_feature() {
    let server = start(GatewayConfig::default()).await;
    let mut conn = session(&server, "alice-token", &["progress"]).await;
    let message = expect_refused(
        &mut conn,
        submit_expiring(
            "echo",
            json!(1),
            lease(&[("model.use", &["tier-fast/*"])]),
            None,
        ),
    )
    .await;
    assert!(message.contains("model.use"), "{message}");
}

#[tokio::test]
async fn the_deployment_default_model_use_is_granted_when_the_lease_names_none() {
    let server = start(GatewayConfig {
        default_model_use: Some(vec!["tier-fast/*".into()]),
        ..Default::default()
    })
    .await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let (job, frame) = submit_and_accept(
        &mut conn,
        submit_expiring("echo", json!(1), lease(&[("fs.read", &["/a/**"])]), None),
    )
    .await;
    assert_eq!(
        lease_strings(&accepted(&frame).lease),
        strings(&[("fs.read", &["/a/**"]), ("model.use", &["tier-fast/*"])]),
        "the default grant is part of the effective lease"
    );
    conn.recv_until_terminal(&job).await;

    let out = probe(
        &mut conn,
        lease(&[]),
        &[
            ("model.use", "tier-fast/gpt-4o"),
            ("model.use", "tier-slow/gpt-4o"),
        ],
    )
    .await;
    assert_eq!(out, ["ok", "PERMISSION_DENIED"]);
}

#[tokio::test]
async fn an_explicit_model_use_replaces_the_deployment_default() {
    let server = start(GatewayConfig {
        default_model_use: Some(vec!["tier-fast/*".into()]),
        ..Default::default()
    })
    .await;
    let mut conn = session(&server, "alice-token", ALL).await;
    for patterns in [&["anthropic/claude-3-haiku-*"][..], &[][..]] {
        let grants = lease(&[("model.use", patterns)]);
        let (job, frame) = submit_and_accept(
            &mut conn,
            submit_expiring("echo", json!(1), grants.clone(), None),
        )
        .await;
        assert_eq!(
            lease_strings(&accepted(&frame).lease),
            strings(&[("model.use", patterns)])
        );
        conn.recv_until_terminal(&job).await;
        let out = probe(
            &mut conn,
            grants,
            &[
                ("model.use", "tier-fast/gpt-4o"),
                ("model.use", "anthropic/claude-3-haiku-20240307"),
            ],
        )
        .await;
        let haiku = if patterns.is_empty() {
            "PERMISSION_DENIED"
        } else {
            "ok"
        };
        assert_eq!(out, ["PERMISSION_DENIED", haiku], "{patterns:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// expires_at (§9.5)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn expires_at_needs_the_lease_expires_at_feature() {
    let server = start(GatewayConfig::default()).await;
    let mut conn = session(&server, "alice-token", &["progress"]).await;
    let message = expect_refused(
        &mut conn,
        submit_expiring("echo", json!(1), lease(&[]), Some(&in_ms(60_000))),
    )
    .await;
    assert!(message.contains("lease_expires_at"), "{message}");
}

#[tokio::test]
async fn expires_at_must_be_a_future_utc_timestamp_with_a_z_suffix() {
    let server = start(GatewayConfig::default()).await;
    let future = in_ms(3_600_000);
    let offset = future.replace('Z', "+00:00");
    let no_zone = future.trim_end_matches('Z').to_owned();
    let lower = future.replace('Z', "z");
    let spaced = future.replace('T', " ");
    let past = in_ms(-1_000);
    for bad in [
        offset.as_str(),
        no_zone.as_str(),
        lower.as_str(),
        spaced.as_str(),
        "2099-13-01T00:00:00Z",
        "tomorrow Z",
        past.as_str(),
        "2020-01-01T00:00:00Z",
    ] {
        let mut conn = session(&server, "alice-token", ALL).await;
        let message = expect_refused(
            &mut conn,
            submit_expiring("echo", json!(1), lease(&[]), Some(bad)),
        )
        .await;
        assert!(message.contains(bad), "{bad}: {message}");
    }
}

#[tokio::test]
async fn a_valid_expires_at_is_echoed_in_the_acceptance() {
    let server = start(GatewayConfig::default()).await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let at = in_ms(3_600_000);
    let (job, frame) = submit_and_accept(
        &mut conn,
        submit_expiring("echo", json!(1), lease(&[("tool.call", &["*"])]), Some(&at)),
    )
    .await;
    let echoed = &accepted(&frame)
        .lease_constraints
        .as_ref()
        .expect("lease_constraints echoed")
        .expires_at;
    assert_eq!(echoed, &at);

    conn.recv_until_terminal(&job).await;
    // Second precision is accepted and echoed as the same instant, still in UTC.
    let (_, frame) = submit_and_accept(
        &mut conn,
        submit_expiring("echo", json!(1), lease(&[]), Some("2099-01-01T00:00:00Z")),
    )
    .await;
    let echoed = &accepted(&frame)
        .lease_constraints
        .as_ref()
        .unwrap()
        .expires_at;
    assert!(echoed.ends_with('Z'), "{echoed}");
    assert_eq!(instant(echoed), instant("2099-01-01T00:00:00Z"));
}

#[tokio::test]
async fn an_operation_after_expiry_fails_with_lease_expired_and_ends_the_job() {
    let server = start(GatewayConfig {
        lease_grace: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let mut conn = session(&server, "alice-token", ALL).await;
    // The first call falls well before expires_at, the second after it but within the grace.
    let input = json!({
        "calls": [{"tool": "search", "args": 1}, {"tool": "search", "args": 2}],
        "interval_ms": 700
    });
    let at = in_ms(1200);
    let (job, _) = submit_and_accept(
        &mut conn,
        submit_expiring(
            "tool-user",
            input,
            lease(&[("tool.call", &["search"])]),
            Some(&at),
        ),
    )
    .await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    let results = tool_results(&events);
    assert_eq!(results.len(), 2, "{events:?}");
    assert!(
        results[0].error.is_none(),
        "before expiry: {:?}",
        results[0]
    );
    let e = results[1].error.as_ref().expect("after expiry");
    assert_eq!(e.code, "LEASE_EXPIRED");
    assert!(!e.retryable, "LEASE_EXPIRED is never retryable (§12)");
    assert!(results[1].result.is_none());

    let err = job_error(&terminal);
    assert_eq!(err.code, "LEASE_EXPIRED");
    assert_eq!(err.final_status, "error");
    assert!(!err.retryable);
}

#[tokio::test]
async fn an_agent_that_swallows_lease_expired_still_ends_with_lease_expired() {
    let server = start(GatewayConfig {
        lease_grace: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let at = in_ms(200);
    let input = json!({
        "sleep_ms": 500,
        "checks": [["tool.call", "search"], ["fs.write", "/not/granted"]]
    });
    let (job, _) = submit_and_accept(
        &mut conn,
        submit_expiring(
            "prober",
            input,
            lease(&[("tool.call", &["search"])]),
            Some(&at),
        ),
    )
    .await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    let err = job_error(&terminal);
    assert_eq!(
        err.code, "LEASE_EXPIRED",
        "the runtime decides the outcome once the lease expired"
    );
    assert_eq!(err.final_status, "error");
    assert!(!err.retryable);
}

#[tokio::test]
async fn an_agent_running_past_expiry_and_grace_is_ended_by_the_runtime() {
    let server = start(GatewayConfig {
        lease_grace: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let mut conn = session(&server, "alice-token", ALL).await;
    let at = in_ms(500);
    let (job, _) = submit_and_accept(
        &mut conn,
        submit_expiring(
            "ticker",
            json!({"count": 1000, "interval_ms": 10}),
            lease(&[]),
            Some(&at),
        ),
    )
    .await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert!(
        events.len() < 1000,
        "the ticker was stopped before it finished"
    );
    assert!(events.iter().all(|f| progress_current(f).is_some()));
    let err = job_error(&terminal);
    assert_eq!(err.code, "LEASE_EXPIRED");
    assert_eq!(err.final_status, "error");
    assert!(!err.retryable);
    assert!(
        instant(&err.completed_at) >= instant(&at),
        "ended at {} before the lease expired at {at}",
        err.completed_at
    );
}
