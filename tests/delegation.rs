//! Delegation (§10) and lease subsetting (§9.4) through the real server: the `delegate` event,
//! the child's own frames in the parent's session and trace, and the refusals of children that
//! would expand the parent's authority, budget or lifetime.

mod common;

use std::{collections::HashMap, sync::Arc};

use arcp_gateway::{
    agent::{Agent, AgentRegistry, JobContext},
    config::GatewayConfig,
    proto::{
        self, client_frame::Payload as In, job_event::Body, server_frame::Payload as Out,
        ClientFrame, ServerFrame,
    },
    protocol::{Json, Lease},
    ArcpError,
};
use common::*;
use prost_types::ListValue;
use serde_json::json;

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn lease_json(lease: &HashMap<String, ListValue>) -> serde_json::Value {
    lease
        .iter()
        .map(|(ns, list)| {
            let patterns: Vec<_> = list.values.iter().map(to_json).collect();
            (ns.clone(), json!(patterns))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

const FEATURES: &[&str] = &["lease_expires_at", "cost.budget", "model.use", "progress"];

/// Runs `payload` to its terminal frame; returns the parent id, every frame in between
/// (including other jobs') and the parent's terminal frame.
async fn run(conn: &mut Conn, payload: In) -> (String, Vec<ServerFrame>, ServerFrame) {
    let (job, first) = submit_and_accept(conn, payload).await;
    let (mut frames, terminal) = conn.recv_until_terminal(&job).await;
    frames.insert(0, first);
    (job, frames, terminal)
}

/// Asserts the parent failed with `code` and that no child job was started.
fn assert_refused(frames: &[ServerFrame], terminal: &ServerFrame, code: &str) -> String {
    let e = job_error(terminal);
    assert_eq!(e.code, code, "{e:?}");
    assert_eq!(e.final_status, "error");
    assert!(!e.retryable);
    let parent = &frames[0].job_id;
    assert!(
        frames.iter().all(|f| &f.job_id == parent),
        "no child job may start: {frames:?}"
    );
    assert!(
        !frames.iter().any(|f| matches!(
            &f.payload,
            Some(Out::JobEvent(proto::JobEvent {
                body: Some(Body::Delegate(_)),
                ..
            }))
        )),
        "no delegate event for a refused delegation"
    );
    e.message.clone()
}

fn delegator(
    child_agent: &str,
    child_input: serde_json::Value,
    child_lease: serde_json::Value,
    child_expires_at: Option<&str>,
) -> serde_json::Value {
    let mut input = json!({"agent": child_agent, "input": child_input, "lease": child_lease});
    if let Some(at) = child_expires_at {
        input["expires_at"] = json!(at);
    }
    input
}

/// Delegates each of `{"children": [{"agent", "input", "lease"}, ...]}` in turn, waiting for
/// each child; returns per child `"ok"` or the error code the delegation failed with.
struct Multi;

#[async_trait::async_trait]
impl Agent for Multi {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let mut outcomes = Vec::new();
        for child in input["children"].as_array().cloned().unwrap_or_default() {
            let lease: Lease = serde_json::from_value(child["lease"].clone()).unwrap();
            let agent = child["agent"].as_str().unwrap_or("echo");
            match ctx
                .delegate(agent, child["input"].clone(), &lease, None)
                .await
            {
                Ok(job) => {
                    job.outcome().await?;
                    outcomes.push("ok".to_owned());
                }
                Err(e) => outcomes.push(e.code().as_str().to_owned()),
            }
        }
        Ok(json!({ "outcomes": outcomes, "remaining": ctx.budget_remaining() }))
    }
}

async fn start() -> TestServer {
    let mut agents = AgentRegistry::with_builtins();
    agents.register("multi", "1.0.0", Arc::new(Multi)).unwrap();
    TestServer::start_with_agents(GatewayConfig::default(), agents).await
}

// ---------------------------------------------------------------------------------------------
// A delegation that succeeds
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_delegate_event_announces_the_child_whose_frames_and_result_reach_the_parent() {
    let server = start().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let child_input = json!({"question": 42});
    let child_lease = json!({"tool.call": ["fetch_page"]});
    conn.send_frame(ClientFrame {
        id: "submit-parent".into(),
        trace_id: TRACE.into(),
        payload: Some(submit_expiring(
            "delegator",
            delegator("echo", child_input.clone(), child_lease.clone(), None),
            lease(&[("agent.delegate", &["echo"]), ("tool.call", &["fetch_*"])]),
            None,
        )),
        ..Default::default()
    })
    .await;
    let first = conn.recv().await;
    let parent = accepted(&first).job_id.clone();
    let (mut frames, terminal) = conn.recv_until_terminal(&parent).await;
    frames.insert(0, first);

    // The delegate event.
    let delegate_at = frames
        .iter()
        .position(|f| {
            matches!(&f.payload, Some(Out::JobEvent(e)) if matches!(e.body, Some(Body::Delegate(_))))
        })
        .expect("a delegate event");
    let Some(Out::JobEvent(event)) = &frames[delegate_at].payload else {
        unreachable!()
    };
    assert_eq!(event.kind, "delegate");
    let Some(Body::Delegate(d)) = &event.body else {
        unreachable!()
    };
    assert_eq!(frames[delegate_at].job_id, parent, "the parent delegates");
    assert!(d.child_job_id.starts_with("job_"), "{d:?}");
    assert_ne!(d.child_job_id, parent);
    assert_eq!(d.agent, "echo@1.0.0");
    assert_eq!(to_json(d.input.as_ref().unwrap()), child_input);
    assert_eq!(lease_json(&d.lease_request), child_lease);
    assert!(d.lease_constraints.is_none());
    let child = d.child_job_id.clone();

    // The child's own acceptance and result, in the parent's session and trace.
    let child_accepted_at = frames
        .iter()
        .position(|f| f.job_id == child && matches!(f.payload, Some(Out::JobAccepted(_))))
        .expect("the child's job_accepted");
    let a = accepted(&frames[child_accepted_at]);
    assert_eq!(a.job_id, child);
    assert_eq!(a.parent_job_id, parent);
    assert_eq!(a.agent, "echo@1.0.0");
    assert_eq!(
        a.trace_id, TRACE,
        "the child inherits the parent's trace (§11)"
    );
    assert_eq!(frames[child_accepted_at].trace_id, TRACE);
    assert_eq!(
        lease_json(&a.lease),
        child_lease,
        "the child's effective lease"
    );
    assert!(a.request_id.is_empty(), "no client submitted the child");

    let child_result_at = frames
        .iter()
        .position(|f| f.job_id == child && is_terminal(f))
        .expect("the child's job_result");
    let r = job_result(&frames[child_result_at]);
    assert_eq!(r.final_status, "success");
    assert_eq!(to_json(r.result.as_ref().unwrap()), child_input);
    assert_eq!(frames[child_result_at].trace_id, TRACE);

    assert!(child_accepted_at < child_result_at);

    // The parent's result contains the child's.
    let r = job_result(&terminal);
    assert_eq!(r.final_status, "success");
    assert_eq!(
        to_json(r.result.as_ref().unwrap()),
        json!({"child_job_id": child, "child_result": child_input})
    );
    assert_eq!(terminal.trace_id, TRACE);

    // §10: the child is delegated *by* the delegate event, so the event announcing it comes
    // before any frame of the child.
    assert!(
        delegate_at < child_accepted_at,
        "the delegate event (#{delegate_at}) must precede the child's job_accepted \
         (#{child_accepted_at}): {:?}",
        frames
            .iter()
            .map(|f| (f.event_seq, &f.job_id, kind(f)))
            .collect::<Vec<_>>()
    );
}

fn kind(frame: &ServerFrame) -> &str {
    match &frame.payload {
        Some(Out::JobAccepted(_)) => "job_accepted",
        Some(Out::JobEvent(e)) => &e.kind,
        Some(Out::JobResult(_)) => "job_result",
        Some(Out::JobError(_)) => "job_error",
        _ => "other",
    }
}

#[tokio::test]
async fn the_child_is_bound_by_its_own_narrower_lease() {
    let server = start().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let calls = json!({"calls": [{"tool": "fetch_page"}, {"tool": "search"}]});
    let (parent, frames, terminal) = run(
        &mut conn,
        submit_expiring(
            "delegator",
            delegator(
                "tool-user",
                calls,
                json!({"tool.call": ["fetch_page"]}),
                None,
            ),
            lease(&[
                ("agent.delegate", &["tool-user"]),
                ("tool.call", &["search", "fetch_*"]),
            ]),
            None,
        ),
    )
    .await;
    let child_errors: Vec<Option<String>> = frames
        .iter()
        .filter(|f| f.job_id != parent)
        .filter_map(|f| match &f.payload {
            Some(Out::JobEvent(proto::JobEvent {
                body: Some(Body::ToolResult(r)),
                ..
            })) => Some(r.error.as_ref().map(|e| e.code.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        child_errors,
        [None, Some("PERMISSION_DENIED".to_owned())],
        "search is in the parent's lease but not the child's"
    );
    let result = result_json(&terminal);
    assert_eq!(result["child_result"]["denied"], json!(["search"]));
}

// ---------------------------------------------------------------------------------------------
// Refused delegations
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_child_lease_broader_than_the_parents_is_a_lease_subset_violation() {
    let server = start().await;
    let parent_lease = &[("agent.delegate", &["echo"][..]), ("fs.read", &["/w/**"])];
    for child_lease in [
        json!({"fs.read": ["/**"]}),
        json!({"fs.read": ["/w/a/**", "/etc/*"]}),
        // A namespace the parent lacks covers nothing.
        json!({"net.fetch": ["https://example.com/*"]}),
        // The same pattern in another namespace does not count.
        json!({"fs.write": ["/w/out/*"]}),
        json!({"agent.delegate": ["*"]}),
    ] {
        let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
        let (_, frames, terminal) = run(
            &mut conn,
            submit_expiring(
                "delegator",
                delegator("echo", json!(1), child_lease.clone(), None),
                lease(parent_lease),
                None,
            ),
        )
        .await;
        let message = assert_refused(&frames, &terminal, "LEASE_SUBSET_VIOLATION");
        assert!(!message.is_empty(), "{child_lease}");
    }
}

#[tokio::test]
async fn a_child_budget_above_the_parents_remaining_is_a_lease_subset_violation() {
    let server = start().await;
    let parent_lease = &[
        ("agent.delegate", &["echo"][..]),
        ("cost.budget", &["USD:1.00"]),
    ];
    for child_lease in [
        json!({"cost.budget": ["USD:1.01"]}),
        // A currency the parent does not budget.
        json!({"cost.budget": ["USD:0.5", "EUR:1"]}),
        // Silence on a budgeted currency would leave the child unbounded.
        json!({}),
    ] {
        let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
        let (_, frames, terminal) = run(
            &mut conn,
            submit_expiring(
                "delegator",
                delegator("echo", json!(1), child_lease.clone(), None),
                lease(parent_lease),
                None,
            ),
        )
        .await;
        assert_refused(&frames, &terminal, "LEASE_SUBSET_VIOLATION");
    }
}

#[tokio::test]
async fn a_child_may_not_outlive_the_parents_lease() {
    let server = start().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let parent_at = in_ms(60_000);
    let later = in_ms(120_000);
    let (_, frames, terminal) = run(
        &mut conn,
        submit_expiring(
            "delegator",
            delegator("echo", json!(1), json!({}), Some(&later)),
            lease(&[("agent.delegate", &["echo"])]),
            Some(&parent_at),
        ),
    )
    .await;
    let message = assert_refused(&frames, &terminal, "LEASE_SUBSET_VIOLATION");
    assert!(message.contains("expires_at"), "{message}");
}

#[tokio::test]
async fn a_child_inherits_the_parents_expiry_or_keeps_an_earlier_one() {
    let server = start().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let parent_at = in_ms(60_000);
    let earlier = in_ms(30_000);
    for (child_at, effective) in [(None, &parent_at), (Some(&earlier), &earlier)] {
        let (parent, frames, terminal) = run(
            &mut conn,
            submit_expiring(
                "delegator",
                delegator("echo", json!(1), json!({}), child_at.map(String::as_str)),
                lease(&[("agent.delegate", &["echo"])]),
                Some(&parent_at),
            ),
        )
        .await;
        assert_eq!(job_result(&terminal).final_status, "success");
        let child_accepted = frames
            .iter()
            .find(|f| f.job_id != parent && matches!(f.payload, Some(Out::JobAccepted(_))))
            .expect("the child's acceptance");
        let constraints = accepted(child_accepted)
            .lease_constraints
            .as_ref()
            .expect("the child expires");
        assert_eq!(&constraints.expires_at, effective, "child at {child_at:?}");
        let delegate = frames
            .iter()
            .find_map(|f| match &f.payload {
                Some(Out::JobEvent(proto::JobEvent {
                    body: Some(Body::Delegate(d)),
                    ..
                })) => Some(d),
                _ => None,
            })
            .expect("a delegate event");
        assert_eq!(
            &delegate.lease_constraints.as_ref().unwrap().expires_at,
            effective
        );
    }
}

#[tokio::test]
async fn delegating_to_an_agent_outside_agent_delegate_is_permission_denied() {
    let server = start().await;
    for parent_lease in [
        lease(&[]),
        lease(&[("agent.delegate", &["ticker", "delegator"])]),
        lease(&[("agent.delegate", &[])]),
        lease(&[("tool.call", &["echo"])]),
    ] {
        let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
        let (_, frames, terminal) = run(
            &mut conn,
            submit_expiring(
                "delegator",
                delegator("echo", json!(1), json!({}), None),
                parent_lease,
                None,
            ),
        )
        .await;
        assert_refused(&frames, &terminal, "PERMISSION_DENIED");
    }
}

#[tokio::test]
async fn agent_delegate_patterns_are_globs_over_agent_names() {
    let server = start().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (_, _, terminal) = run(
        &mut conn,
        submit_expiring(
            "delegator",
            delegator("echo@1.0.0", json!("pinned"), json!({}), None),
            lease(&[("agent.delegate", &["ec*"])]),
            None,
        ),
    )
    .await;
    let result = result_json(&terminal);
    assert_eq!(result["child_result"], json!("pinned"));
}

#[tokio::test]
async fn an_exhausted_parent_may_not_delegate() {
    let server = start().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (_, frames, terminal) = run(
        &mut conn,
        submit_expiring(
            "delegator",
            delegator("echo", json!(1), json!({"cost.budget": ["USD:0"]}), None),
            lease(&[("agent.delegate", &["echo"]), ("cost.budget", &["USD:0"])]),
            None,
        ),
    )
    .await;
    assert_refused(&frames, &terminal, "BUDGET_EXHAUSTED");
}

// ---------------------------------------------------------------------------------------------
// Budget reservation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn each_childs_budget_is_reserved_out_of_the_parents_counters() {
    let server = start().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let child = |amount: &str| json!({"agent": "echo", "input": amount, "lease": {"cost.budget": [amount]}});
    let input = json!({"children": [
        child("USD:0.60"),
        // Only 0.40 remains: 0.60 more would exceed it.
        child("USD:0.60"),
        child("USD:0.40"),
        // Nothing remains: any further delegation is refused before it is checked.
        child("USD:0"),
    ]});
    let (parent, frames, terminal) = run(
        &mut conn,
        submit_expiring(
            "multi",
            input,
            lease(&[
                ("agent.delegate", &["echo"]),
                ("cost.budget", &["USD:1.00"]),
            ]),
            None,
        ),
    )
    .await;
    let result = result_json(&terminal);
    assert_eq!(
        result,
        json!({
            "outcomes": ["ok", "LEASE_SUBSET_VIOLATION", "ok", "BUDGET_EXHAUSTED"],
            "remaining": {"USD": 0}
        })
    );
    let child_budgets: Vec<HashMap<String, f64>> = frames
        .iter()
        .filter(|f| f.job_id != parent)
        .filter_map(|f| match &f.payload {
            Some(Out::JobAccepted(a)) => Some(a.budget.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        child_budgets,
        [
            HashMap::from([("USD".to_owned(), 0.6)]),
            HashMap::from([("USD".to_owned(), 0.4)])
        ],
        "each child starts with the budget it was granted"
    );
}

#[tokio::test]
async fn delegating_to_an_unknown_agent_fails_the_parent() {
    let server = start().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (_, frames, terminal) = run(
        &mut conn,
        submit_expiring(
            "delegator",
            delegator("nope", json!(1), json!({}), None),
            lease(&[("agent.delegate", &["*"])]),
            None,
        ),
    )
    .await;
    assert_refused(&frames, &terminal, "AGENT_NOT_AVAILABLE");
}
