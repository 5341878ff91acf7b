//! The `arcp.v1.Arcp` service: a thin adapter from the gRPC stream to the gateway.
//!
//! Written by hand rather than generated, because the generated server encodes only the
//! generated `ServerFrame` type, and this one sends job frames straight from the event log
//! (`super::wire`). Clients use the generated stubs; the bytes are the same.

use std::{convert::Infallible, future, sync::Arc};

use futures::{future::BoxFuture, stream::BoxStream, StreamExt};
use tonic::{
    body::Body,
    codegen::{http, Body as HttpBody, Service, StdError},
    server::{Grpc, NamedService, StreamingService},
    Request, Response, Status, Streaming,
};

use crate::{
    gateway::{ConnectInfo, Gateway},
    proto,
};

use super::{
    codec::{Incoming, SessionCodec},
    convert,
    wire::WireFrame,
};

/// The one method's path.
const SESSION_PATH: &str = "/arcp.v1.Arcp/Session";

/// Serves ARCP sessions over gRPC. Install [`super::auth_layer::AuthLayer`] in front of it to
/// honour `authorization` and resume metadata.
#[derive(Clone)]
pub struct ArcpService {
    gateway: Arc<Gateway>,
}

impl ArcpService {
    /// A service for `gateway`.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        ArcpService { gateway }
    }
}

impl NamedService for ArcpService {
    const NAME: &'static str = proto::arcp_server::SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for ArcpService
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SESSION_PATH {
            let unimplemented = Status::unimplemented(format!(
                "{} has no method {}",
                proto::arcp_server::SERVICE_NAME,
                request.uri().path()
            ));
            return Box::pin(future::ready(Ok(unimplemented.into_http())));
        }
        let method = SessionMethod(self.gateway.clone());
        Box::pin(async move { Ok(Grpc::new(SessionCodec).streaming(method, request).await) })
    }
}

/// The `Session` method.
struct SessionMethod(Arc<Gateway>);

impl StreamingService<Incoming> for SessionMethod {
    type Response = WireFrame;
    type ResponseStream = BoxStream<'static, Result<WireFrame, Status>>;
    type Future = future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Incoming>>) -> Self::Future {
        let mut conn = request
            .extensions()
            .get::<ConnectInfo>()
            .cloned()
            .unwrap_or_default();
        conn.peer = request.remote_addr();
        // Every message gets an answer: a frame, or the reason it is not one. After an error
        // tonic's stream would read the bytes that follow as a message header, so reading
        // stops there, and the session ends the stream with a status once it has answered.
        let inbound = request
            .into_inner()
            .scan(false, |failed, incoming| {
                if *failed {
                    return future::ready(None);
                }
                let item = match incoming {
                    Ok(Incoming::Frame(frame)) => convert::inbound(frame),
                    Ok(Incoming::Undecodable(error)) => Err(convert::undecodable(&error)),
                    Err(status) => {
                        *failed = true;
                        Err(convert::unreadable(&status))
                    }
                };
                future::ready(Some(item))
            })
            .boxed();
        let outbound = self.0.connect(conn, inbound).map(convert::outbound);
        future::ready(Ok(Response::new(outbound.boxed())))
    }
}
