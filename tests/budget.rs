//! The budget capability (§9.6, §13.5) through the real server: `cost.budget` parsing and its
//! counters in `job.accepted`, decrements from `cost.*` metrics with `cost.budget.remaining`
//! after each, and `BUDGET_EXHAUSTED` once a counter reaches zero, recoverable or fatal.

mod common;

use std::{collections::HashMap, sync::Arc};

use arcp_gateway::{
    agent::{Agent, AgentRegistry, JobContext},
    config::GatewayConfig,
    proto::{self, client_frame::Payload as In, job_event::Body},
    protocol::Json,
    ArcpError,
};
use common::*;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A spender job paying `costs` in `currency` through tool `llm`, under `budget`.
fn spender(costs: &[f64], currency: &str, budget: &[&str]) -> In {
    submit_leased(
        "spender",
        json!({"costs": costs, "currency": currency, "tool": "llm"}),
        lease(&[("cost.budget", budget), ("tool.call", &["llm"])]),
    )
}

const FEATURES: &[&str] = &["cost.budget", "progress"];

/// Each event of `frames` in a compact form: `call TOOL`, `ok`, `error CODE`,
/// `metric NAME VALUE UNIT`.
fn trace(frames: &[proto::ServerFrame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| match event_body(f) {
            Some(Body::ToolCall(c)) => format!("call {}", c.tool),
            Some(Body::ToolResult(r)) => match &r.error {
                None => "ok".to_owned(),
                Some(e) => {
                    assert!(!e.retryable, "{} must not be retryable", e.code);
                    format!("error {}", e.code)
                }
            },
            Some(Body::Metric(m)) => format!("metric {} {} {}", m.name, m.value, m.unit),
            other => panic!("unexpected frame {other:?} in {f:?}"),
        })
        .collect()
}

/// The inline result of a job that succeeded, as JSON.
fn success_json(frame: &proto::ServerFrame) -> serde_json::Value {
    assert_eq!(job_result(frame).final_status, "success");
    result_json(frame)
}

/// Emits each metric of `{"metrics": [[name, value, unit], ...]}`, recording `"ok"` or the
/// error code, and returns the outcomes with the budget counters after them.
struct Meter;

#[async_trait::async_trait]
impl Agent for Meter {
    async fn run(&self, ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let mut outcomes = Vec::new();
        for m in input["metrics"].as_array().cloned().unwrap_or_default() {
            let unit = m[2].as_str();
            let outcome = match ctx
                .metric(m[0].as_str().unwrap(), m[1].as_f64().unwrap(), unit)
                .await
            {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.code().as_str().to_owned(),
            };
            outcomes.push(outcome);
        }
        Ok(json!({ "outcomes": outcomes, "remaining": ctx.budget_remaining() }))
    }
}

async fn start(config: GatewayConfig) -> TestServer {
    let mut agents = AgentRegistry::with_builtins();
    agents.register("meter", "1.0.0", Arc::new(Meter)).unwrap();
    TestServer::start_with_agents(config, agents).await
}

// ---------------------------------------------------------------------------------------------
// Grant
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_budget_needs_the_cost_budget_feature() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", &["progress"]).await;
    let id = conn.send(spender(&[0.1], "USD", &["USD:1.00"])).await;
    let e = session_error(&conn.recv().await).clone();
    assert_eq!(e.code, "INVALID_REQUEST");
    assert!(!e.retryable);
    assert_eq!(e.request_id, id);
    assert!(e.message.contains("cost.budget"), "{}", e.message);
}

#[tokio::test]
async fn malformed_budgets_are_invalid_requests_and_start_no_job() {
    let server = start(GatewayConfig::default()).await;
    for budget in [
        &["USD:abc"][..],
        &["USD:-1"][..],
        &["USD"][..],
        &[":5"][..],
        &["USD:"][..],
        &["USD:1.0000001"][..],
        &["USD:1e3"][..],
        &["U$D:5"][..],
        &["USD:1", "USD:2"][..],
    ] {
        let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
        let id = conn.send(spender(&[0.1], "USD", budget)).await;
        let e = session_error(&conn.recv().await).clone();
        assert_eq!(e.code, "INVALID_REQUEST", "{budget:?}: {e:?}");
        assert_eq!(e.request_id, id);
        // No job was started: the next one is the session's first frame.
        let (_, frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
        assert_eq!(frame.event_seq, 1, "{budget:?} started a job");
    }
}

#[tokio::test]
async fn the_acceptance_reports_the_initial_counter_of_each_currency() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(
        &mut conn,
        submit_leased(
            "echo",
            json!(1),
            lease(&[("cost.budget", &["USD:1.00", "credits:1000"])]),
        ),
    )
    .await;
    let a = accepted(&frame);
    assert_eq!(
        a.budget,
        HashMap::from([("USD".to_owned(), 1.0), ("credits".to_owned(), 1000.0)])
    );
    let echoed: Vec<_> = a.lease["cost.budget"].values.iter().map(to_json).collect();
    assert_eq!(echoed, [json!("USD:1.00"), json!("credits:1000")]);
    conn.recv_until_terminal(&job).await;

    // Without cost.budget there are no counters.
    let (_, frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    assert!(accepted(&frame).budget.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Spending
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn each_cost_metric_is_followed_by_the_remaining_counter_until_the_budget_is_exhausted() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, _) = submit_and_accept(
        &mut conn,
        spender(&[0.4, 0.4, 0.4, 0.4], "USD", &["USD:1.00"]),
    )
    .await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(
        trace(&events),
        [
            "call llm",
            "ok",
            "metric cost.inference 0.4 USD",
            "metric cost.budget.remaining 0.6 USD",
            "call llm",
            "ok",
            "metric cost.inference 0.4 USD",
            "metric cost.budget.remaining 0.2 USD",
            // The counter is still positive, so the third call is authorized and overspends.
            "call llm",
            "ok",
            "metric cost.inference 0.4 USD",
            "metric cost.budget.remaining -0.2 USD",
            "call llm",
            "error BUDGET_EXHAUSTED",
        ]
    );
    // The agent handles the error and returns a partial result (§13.5).
    let result = success_json(&terminal);
    assert_eq!(result["calls"], json!(3));
    assert_eq!(result["stopped_by"], json!("BUDGET_EXHAUSTED"));
    assert!((result["spent"].as_f64().unwrap() - 1.2).abs() < 1e-9);
}

#[tokio::test]
async fn a_counter_at_exactly_zero_is_exhausted() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, _) =
        submit_and_accept(&mut conn, spender(&[0.5, 0.5, 0.5], "USD", &["USD:1.00"])).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(
        trace(&events),
        [
            "call llm",
            "ok",
            "metric cost.inference 0.5 USD",
            "metric cost.budget.remaining 0.5 USD",
            "call llm",
            "ok",
            "metric cost.inference 0.5 USD",
            "metric cost.budget.remaining 0 USD",
            "call llm",
            "error BUDGET_EXHAUSTED",
        ]
    );
    assert_eq!(
        success_json(&terminal),
        json!({"spent": 1, "calls": 2, "stopped_by": "BUDGET_EXHAUSTED"})
    );
}

#[tokio::test]
async fn a_zero_budget_refuses_the_first_operation() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, frame) = submit_and_accept(&mut conn, spender(&[0.1], "USD", &["USD:0"])).await;
    assert_eq!(
        accepted(&frame).budget,
        HashMap::from([("USD".into(), 0.0)])
    );
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(trace(&events), ["call llm", "error BUDGET_EXHAUSTED"]);
    assert_eq!(
        success_json(&terminal),
        json!({"spent": 0, "calls": 0, "stopped_by": "BUDGET_EXHAUSTED"})
    );
}

#[tokio::test]
async fn fatal_exhaustion_ends_the_job_with_budget_exhausted() {
    let server = start(GatewayConfig {
        budget_exhaustion_fatal: true,
        ..Default::default()
    })
    .await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, _) =
        submit_and_accept(&mut conn, spender(&[0.5, 0.5, 0.5], "USD", &["USD:1.00"])).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(
        trace(&events).last().map(String::as_str),
        Some("error BUDGET_EXHAUSTED"),
        "the agent still sees the failed operation"
    );
    let e = job_error(&terminal);
    assert_eq!(e.code, "BUDGET_EXHAUSTED");
    assert_eq!(e.final_status, "error");
    assert!(!e.retryable, "BUDGET_EXHAUSTED is never retryable (§12)");
}

#[tokio::test]
async fn currencies_are_tracked_independently_and_any_exhausted_one_blocks_operations() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, _) = submit_and_accept(
        &mut conn,
        spender(&[2.0, 2.0, 2.0, 2.0], "EUR", &["USD:1.00", "EUR:5"]),
    )
    .await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(
        trace(&events),
        [
            "call llm",
            "ok",
            "metric cost.inference 2 EUR",
            "metric cost.budget.remaining 3 EUR",
            "call llm",
            "ok",
            "metric cost.inference 2 EUR",
            "metric cost.budget.remaining 1 EUR",
            "call llm",
            "ok",
            "metric cost.inference 2 EUR",
            "metric cost.budget.remaining -1 EUR",
            "call llm",
            "error BUDGET_EXHAUSTED",
        ]
    );
    assert_eq!(success_json(&terminal)["calls"], json!(3));
}

#[tokio::test]
async fn costs_in_an_unbudgeted_currency_do_not_decrement() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, _) =
        submit_and_accept(&mut conn, spender(&[1.0, 1.0, 1.0], "EUR", &["USD:1.00"])).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    let t = trace(&events);
    assert!(
        !t.iter().any(|e| e.contains("cost.budget.remaining")),
        "{t:?}"
    );
    assert!(!t.iter().any(|e| e.contains("error")), "{t:?}");
    assert_eq!(
        success_json(&terminal),
        json!({"spent": 3, "calls": 3, "stopped_by": null})
    );
}

#[tokio::test]
async fn only_cost_metrics_in_a_budgeted_currency_decrement_and_negative_costs_are_refused() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let metrics = json!([
        ["latency", 5.0, "USD"],
        ["costly", 0.5, "USD"],
        ["cost.inference", 0.5, "ms"],
        ["cost.inference", 0.5, null],
        ["cost.budget.remaining", 0.5, "USD"],
        ["cost.inference", -0.5, "USD"],
        ["cost.search", 0.25, "USD"],
    ]);
    let (job, _) = submit_and_accept(
        &mut conn,
        submit_leased(
            "meter",
            json!({ "metrics": metrics }),
            lease(&[("cost.budget", &["USD:1.00"])]),
        ),
    )
    .await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    let result = success_json(&terminal);
    assert_eq!(
        result["outcomes"],
        json!(["ok", "ok", "ok", "ok", "ok", "INVALID_REQUEST", "ok"])
    );
    assert_eq!(result["remaining"], json!({"USD": 0.75}));
    let remaining: Vec<f64> = events
        .iter()
        .filter_map(|f| match event_body(f) {
            Some(Body::Metric(m)) if m.name == "cost.budget.remaining" && m.unit == "USD" => {
                Some(m.value)
            }
            _ => None,
        })
        .collect();
    // The agent's own gauge, then the runtime's after the one charge.
    assert_eq!(remaining, [0.5, 0.75]);
    let names: Vec<&str> = events
        .iter()
        .filter_map(|f| match event_body(f) {
            Some(Body::Metric(m)) => Some(m.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        [
            "latency",
            "costly",
            "cost.inference",
            "cost.inference",
            "cost.budget.remaining",
            "cost.search",
            "cost.budget.remaining"
        ],
        "the negative cost was not emitted"
    );
}

#[tokio::test]
async fn without_a_budget_costs_are_reported_but_nothing_is_enforced() {
    let server = start(GatewayConfig::default()).await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, _) = submit_and_accept(
        &mut conn,
        submit_leased(
            "spender",
            json!({"costs": [5.0, 5.0], "currency": "USD"}),
            lease(&[("tool.call", &["llm"])]),
        ),
    )
    .await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(
        trace(&events),
        [
            "call llm",
            "ok",
            "metric cost.inference 5 USD",
            "call llm",
            "ok",
            "metric cost.inference 5 USD",
        ]
    );
    assert_eq!(
        success_json(&terminal),
        json!({"spent": 10, "calls": 2, "stopped_by": null})
    );
}
