//! The `arcp.v1.Arcp` service: a thin adapter from the gRPC stream to the gateway.

use std::sync::Arc;

use futures::{future, stream::BoxStream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    gateway::{ConnectInfo, Gateway},
    proto::{self, arcp_server::Arcp},
};

use super::convert;

/// Serves ARCP sessions over gRPC.
pub struct ArcpService {
    gateway: Arc<Gateway>,
}

impl ArcpService {
    /// A service for `gateway`. Install [`super::auth_layer::AuthLayer`] in front of it to
    /// honour `authorization` and resume metadata.
    pub fn new(gateway: Arc<Gateway>) -> Self {
        ArcpService { gateway }
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> proto::arcp_server::ArcpServer<Self> {
        proto::arcp_server::ArcpServer::new(self)
    }
}

#[tonic::async_trait]
impl Arcp for ArcpService {
    type SessionStream = BoxStream<'static, Result<proto::ServerFrame, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<proto::ClientFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let conn = request
            .extensions()
            .get::<ConnectInfo>()
            .cloned()
            .unwrap_or_default();
        // A transport error on the client's side ends its half of the session, like a close.
        let inbound = request
            .into_inner()
            .scan((), |_, frame| future::ready(frame.ok()))
            .map(convert::inbound)
            .boxed();
        let outbound = self.gateway.connect(conn, inbound).map(convert::outbound);
        Ok(Response::new(outbound.boxed()))
    }
}
