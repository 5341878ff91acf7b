//! Traces: the gateway's spans exported to an OTLP collector over gRPC (`--otlp-endpoint`),
//! and the ARCP trace id (§11, a W3C `traceparent`) mapped to and from their context.
//!
//! A job's span (`arcp.job`) takes the `traceparent` its submission carries as its parent, so
//! it joins the caller's trace; a job submitted without one gets its span's `traceparent` as
//! its trace id, which its events carry and its agent receives, so what the agent does joins
//! the job's trace. Without an exporter, spans have no trace context and nothing changes on
//! the wire. The session's handshake (`arcp.session.open`) and the store operations it makes
//! (`arcp.store`) are spans too; the frame path has none.

use std::collections::HashMap;

use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider},
    KeyValue,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{registry::LookupSpan, Layer};

use crate::ids::TraceId;

/// The W3C header the trace id is carried in.
const TRACEPARENT: &str = "traceparent";

/// The OTLP export, flushed when it is shut down.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// An export of spans to the OTLP collector at `endpoint` (`http://host:4317`), as
    /// service `service`; with the tracing layer that feeds it. Must be called within a Tokio
    /// runtime, which the gRPC client uses.
    pub fn otlp<S>(
        endpoint: &str,
        service: &str,
    ) -> Result<(Telemetry, impl Layer<S> + Send + Sync), String>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("the OTLP exporter for {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_attributes([KeyValue::new("service.name", service.to_owned())])
                    .build(),
            )
            .build();
        let tracer = provider.tracer("arcp-gateway");
        let layer = tracing_opentelemetry::layer().with_tracer(tracer);
        Ok((Telemetry { provider }, layer))
    }

    /// Exports what is left and stops.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("exporting the last spans: {e}");
        }
    }
}

/// Makes the trace of `traceparent` the parent of `span`; nothing if it is not one.
pub fn join(span: &tracing::Span, traceparent: Option<&TraceId>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.as_str().to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` of `span`, when it has a trace context (an exporter is installed).
pub fn traceparent(span: &tracing::Span) -> Option<TraceId> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT).map(TraceId::new)
}

/// The span of one store operation `op` (`resume.check`, `log.open`, ...).
pub fn store_span(op: &'static str) -> tracing::Span {
    tracing::info_span!("arcp.store", op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_a_span_has_no_traceparent() {
        let span = tracing::info_span!("arcp.job");
        join(
            &span,
            Some(&TraceId::new(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )),
        );
        assert_eq!(traceparent(&span), None);
    }
}
