//! The gRPC health service as a client sees it: a `Watch` stream, and what it says until it
//! ends.

use tonic::transport::Channel;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    HealthCheckResponse,
};

use super::FRAME_TIMEOUT;

/// A `Watch` of `service` on `channel`, after its first answer, which must be SERVING.
pub async fn serving_watch(
    channel: &Channel,
    service: &str,
) -> tonic::Streaming<HealthCheckResponse> {
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("Watch opens")
        .into_inner();
    let first = tokio::time::timeout(FRAME_TIMEOUT, watch.message())
        .await
        .expect("Watch answers at once")
        .expect("Watch is OK")
        .expect("Watch sends the current status");
    assert_eq!(first.status(), ServingStatus::Serving, "{service:?}");
    watch
}

/// The statuses a `Watch` stream sends until it ends; fails the test if it ends with an error
/// status or stays open.
pub async fn statuses_until_end(
    mut watch: tonic::Streaming<HealthCheckResponse>,
) -> Vec<ServingStatus> {
    let mut statuses = Vec::new();
    loop {
        let next = tokio::time::timeout(FRAME_TIMEOUT, watch.message())
            .await
            .expect("the Watch stream ends");
        match next {
            Ok(Some(response)) => statuses.push(response.status()),
            Ok(None) => return statuses,
            Err(status) => panic!("the Watch stream ended with {status:?} after {statuses:?}"),
        }
    }
}
