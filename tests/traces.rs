//! Traces through the real binary to an OTLP collector this test serves (the OTLP trace
//! service on tonic): a job submitted with a `traceparent` exports its span into that trace,
//! under the caller's span; a job submitted without one gets its span's `traceparent` as its
//! trace id, on every event; the session's handshake and its store operations are spans too.

mod common;

use std::sync::{Arc, Mutex};

use arcp_gateway::proto;
use common::*;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::any_value::Value,
    trace::v1::Span,
};
use serde_json::json;
use tokio_stream::wrappers::TcpListenerStream;

/// The spans every export brought.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().expect("spans lock");
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn serve() -> (Collector, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("an address");
        let collector = Collector::default();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// Waits for a span that `matches`, and returns it.
    async fn span(&self, what: &str, matches: impl Fn(&Span) -> bool) -> Span {
        let spans = self.0.clone();
        let found = Arc::new(Mutex::new(None));
        let into = found.clone();
        wait_until(what, move || {
            let spans = spans.lock().expect("spans lock");
            let hit = spans.iter().find(|s| matches(s)).cloned();
            let got = hit.is_some();
            *into.lock().expect("found lock") = hit;
            got
        })
        .await;
        let span = found.lock().expect("found lock").take();
        span.expect("the span")
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_jobs_span_joins_the_callers_trace_and_a_job_without_one_gets_its_own() {
    let (collector, addr) = Collector::serve().await;
    let endpoint = format!("http://{addr}");
    let process = GatewayProcess::start_with_env(
        "info",
        None,
        &["--otlp-endpoint", &endpoint],
        // Export within a tenth of a second rather than the default five.
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    let (mut conn, _) = process.endpoint().hello(GATEWAY_TOKEN).await;
    conn.send_frame(proto::ClientFrame {
        id: "traced".into(),
        trace_id: TRACEPARENT.into(),
        payload: Some(submit("ticker", json!({"count": 2, "interval_ms": 1}))),
        ..Default::default()
    })
    .await;
    let traced = accepted(&conn.recv().await).job_id.clone();
    conn.recv_until_terminal(&traced).await;

    let job = collector
        .span("the traced job's span", |s| {
            s.name == "arcp.job" && attribute(s, "job_id") == Some(traced.as_str())
        })
        .await;
    assert_eq!(
        hex(&job.trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "the caller's trace"
    );
    assert_eq!(
        hex(&job.parent_span_id),
        "00f067aa0ba902b7",
        "under the caller's span"
    );

    // Without a trace id, the job's own trace, which its events carry.
    let (own, _) = submit_and_accept(
        &mut conn,
        submit("ticker", json!({"count": 2, "interval_ms": 1})),
    )
    .await;
    let (events, _) = conn.recv_until_terminal(&own).await;
    let carried = events
        .iter()
        .find(|f| !f.trace_id.is_empty())
        .map(|f| f.trace_id.clone())
        .expect("the job's events carry a trace id");
    let span = collector
        .span("the untraced job's span", |s| {
            s.name == "arcp.job" && attribute(s, "job_id") == Some(own.as_str())
        })
        .await;
    assert_eq!(
        carried,
        format!("00-{}-{}-01", hex(&span.trace_id), hex(&span.span_id)),
        "the events' traceparent names the job's span"
    );

    // The handshake, with the store operations it made inside it.
    let open = collector
        .span("the session's handshake", |s| s.name == "arcp.session.open")
        .await;
    let open_id = open.span_id.clone();
    let store = collector
        .span("a store operation of the handshake", move |s| {
            s.name == "arcp.store" && s.parent_span_id == open_id
        })
        .await;
    assert!(attribute(&store, "op").is_some(), "{store:?}");
    process.terminate().await;
}
