//! A tower layer on the tonic server that counts every gRPC call, its errors by gRPC code, and
//! its duration, by method.
//!
//! A call ends with its final status: in the response headers (a trailers-only answer, such as
//! the authentication layer's refusals) or in the trailers after the body. So the layer wraps
//! the response body and records when the body ends or is dropped; a `Session` stream's call
//! lasts as long as the stream. A body dropped before any status (the client went away) counts
//! as `CANCELLED`.
//!
//! The `method` label is one of the methods the served services declare, read once from their
//! descriptor sets, or `other`: a client naming made-up paths cannot grow the label set.

use std::{
    collections::HashSet,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use ::metrics::{counter, histogram};
use futures::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::{Frame, SizeHint};
use hyper::body::Bytes;
use prost::Message;
use tower::{Layer, Service};

use crate::metrics::{GRPC_DURATION_SECONDS, GRPC_ERRORS, GRPC_REQUESTS};

/// The label for a path no served service declares.
const OTHER_METHOD: &str = "other";

/// Measures the calls of the services whose descriptor sets it is given.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    methods: Arc<HashSet<String>>,
}

impl GrpcMetricsLayer {
    /// A layer labelling calls by the methods `descriptor_sets` (encoded
    /// `FileDescriptorSet`s) declare. A set that does not decode adds no method: its calls
    /// are counted as `other`.
    pub fn new(descriptor_sets: &[&[u8]]) -> Self {
        let mut methods = HashSet::new();
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::warn!("a descriptor set does not decode; its calls are labelled `other`");
                continue;
            };
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for service in file.service {
                    let service_name = service.name.unwrap_or_default();
                    for method in service.method {
                        let method = method.name.unwrap_or_default();
                        methods.insert(format!("/{package}.{service_name}/{method}"));
                    }
                }
            }
        }
        GrpcMetricsLayer {
            methods: Arc::new(methods),
        }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            methods: self.methods.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] produces.
#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    methods: Arc<HashSet<String>>,
}

impl<S, B> Service<Request<B>> for GrpcMetrics<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = if self.methods.contains(path) {
            path.to_owned()
        } else {
            OTHER_METHOD.to_owned()
        };
        counter!(GRPC_REQUESTS, "method" => method.clone()).increment(1);
        let mut call = Call {
            method,
            started: Instant::now(),
            code: None,
            recorded: false,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            match answer.await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    call.code = grpc_status(&parts.headers);
                    let body = MeteredBody { inner: body, call };
                    Ok(Response::from_parts(parts, tonic::body::Body::new(body)))
                }
                // The service failed without a status: hyper answers the call with an error,
                // which the client sees as INTERNAL or UNKNOWN.
                Err(e) => {
                    call.code = Some(tonic::Code::Unknown as i32);
                    call.record();
                    Err(e)
                }
            }
        })
    }
}

/// One call being measured; recorded once, when its status is known or it is dropped.
struct Call {
    method: String,
    started: Instant,
    code: Option<i32>,
    recorded: bool,
}

impl Call {
    fn record(&mut self) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let code = self.code.unwrap_or(tonic::Code::Cancelled as i32);
        if code != tonic::Code::Ok as i32 {
            counter!(GRPC_ERRORS, "method" => self.method.clone(), "code" => code_name(code))
                .increment(1);
        }
        histogram!(GRPC_DURATION_SECONDS, "method" => self.method.clone())
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.record();
    }
}

/// A response body that records its call when it ends.
struct MeteredBody {
    inner: tonic::body::Body,
    call: Call,
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    self.call.code = Some(code);
                    self.call.record();
                }
            }
            Poll::Ready(Some(Err(status))) => {
                self.call.code = Some(status.code() as i32);
                self.call.record();
            }
            Poll::Ready(None) => self.call.record(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` in `headers`, if any.
fn grpc_status(headers: &HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The canonical name of gRPC status `code`, as the `code` label's value.
fn code_name(code: i32) -> &'static str {
    use tonic::Code;
    match Code::from(code) {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
