//! Row 2: the limit row 1 is measured against. A bare tonic server of the same service streams
//! copies of one of row 1's frames with no ARCP logic behind it, read by the same client loop
//! ([`receive`]), so the two rows differ only in the gateway.

use arcp_gateway::{
    proto::{self, arcp_client::ArcpClient, arcp_server::Arcp, ClientFrame, ServerFrame},
    server,
};
use futures::{stream::BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Request, Response, Status, Streaming};

use crate::{
    client::{connect, receive},
    BenchResult,
};

/// A tonic server of the same service whose stream is `count` copies of one frame: what the
/// transport can do with no ARCP logic behind it.
pub(crate) struct BareServer {
    channel: Channel,
}

struct Bare {
    frame: ServerFrame,
}

#[tonic::async_trait]
impl Arcp for Bare {
    type SessionStream = BoxStream<'static, Result<ServerFrame, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty"))?;
        let count: usize = first
            .id
            .parse()
            .map_err(|_| Status::invalid_argument("id = count"))?;
        // Reads what the client sends (its acks) as the gateway would, and ignores it.
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let frame = self.frame.clone();
        let stream = futures::stream::iter(std::iter::repeat_n(frame, count)).map(Ok);
        Ok(Response::new(stream.boxed()))
    }
}

impl BareServer {
    pub(crate) async fn start(frame: ServerFrame) -> BenchResult<BareServer> {
        let listener = server::bind("127.0.0.1:0".parse()?).await?;
        let addr = listener.local_addr()?;
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(proto::arcp_server::ArcpServer::new(Bare { frame }))
                .serve_with_incoming(incoming),
        );
        Ok(BareServer {
            channel: connect(addr).await?,
        })
    }

    pub(crate) async fn run(&self, count: u64) -> BenchResult<f64> {
        let (tx, rx) = mpsc::channel(64);
        tx.send(ClientFrame {
            id: count.to_string(),
            ..Default::default()
        })
        .await?;
        let mut stream = ArcpClient::new(self.channel.clone())
            .session(ReceiverStream::new(rx))
            .await?
            .into_inner();
        stream.message().await?.ok_or("empty")?;
        let received = receive(&mut stream, &tx).await?;
        Ok(received.frames as f64 / received.seconds)
    }
}
