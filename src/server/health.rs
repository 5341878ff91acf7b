//! gRPC health (`grpc.health.v1.Health`) that takes part in a shutdown: the overall entry
//! (`""`) and every service's turn NOT_SERVING first, and then every `Watch` stream ends, after
//! telling its client NOT_SERVING. tonic-health's own `Watch` streams never end, so one of
//! them (which needs no credentials) would hold a graceful shutdown open for ever.
//!
//! It also follows the shared store's reachability ([`ServerHealth::follow_store`]): while the
//! store does not answer, no session can be opened or resumed here, so every entry is
//! NOT_SERVING until it answers again, and the change is logged once each way. A server that
//! is draining stays NOT_SERVING whatever the store does.

use futures::{stream::BoxStream, StreamExt};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tonic::{server::NamedService, Request, Response, Status};
use tonic_health::{
    pb::{
        health_check_response::ServingStatus,
        health_server::{Health, HealthServer},
        HealthCheckRequest, HealthCheckResponse,
    },
    server::{HealthReporter, HealthService},
};

use crate::{store::health::Reachability, transport::grpc::service::ArcpService};

/// The entries health reports: the server as a whole, and the ARCP service.
const ENTRIES: [&str; 2] = ["", <ArcpService as NamedService>::NAME];

/// The serving status the server reports, and the switch that ends `Watch` streams.
pub(crate) struct ServerHealth {
    reporter: HealthReporter,
    draining: CancellationToken,
    /// Held across each change of the statuses, so that the store coming back cannot turn a
    /// draining server SERVING again between the drain's change and its end of the streams.
    changing: Mutex<()>,
}

impl ServerHealth {
    /// Every entry SERVING; returns the reporter and the service to install.
    pub(crate) async fn serving() -> (ServerHealth, HealthServer<DrainingHealth>) {
        let reporter = HealthReporter::new();
        for entry in ENTRIES {
            reporter
                .set_service_status(entry, tonic_health::ServingStatus::Serving)
                .await;
        }
        let draining = CancellationToken::new();
        let service = DrainingHealth {
            statuses: HealthService::from_health_reporter(reporter.clone()),
            draining: draining.clone(),
        };
        let health = ServerHealth {
            reporter,
            draining,
            changing: Mutex::new(()),
        };
        (health, HealthServer::new(service))
    }

    async fn set_all(&self, status: tonic_health::ServingStatus) {
        for entry in ENTRIES {
            self.reporter.set_service_status(entry, status).await;
        }
    }

    /// Turns every entry NOT_SERVING, then ends every `Watch` stream, open or still to come.
    pub(crate) async fn drain(&self) {
        let _changing = self.changing.lock().await;
        self.set_all(tonic_health::ServingStatus::NotServing).await;
        self.draining.cancel();
    }

    /// Reports `store`'s reachability until the server drains: every entry NOT_SERVING while
    /// the store does not answer, SERVING again once it does. Logs each change once.
    pub(crate) async fn follow_store(&self, mut store: watch::Receiver<Reachability>) {
        let mut reported = Reachability::Reachable;
        loop {
            let now = store.borrow_and_update().clone();
            if now.is_reachable() != reported.is_reachable() {
                let _changing = self.changing.lock().await;
                if self.draining.is_cancelled() {
                    return;
                }
                match &now {
                    Reachability::Unreachable(why) => {
                        self.set_all(tonic_health::ServingStatus::NotServing).await;
                        tracing::warn!(
                            "the store does not answer ({why}): health NOT_SERVING until it does"
                        );
                    }
                    Reachability::Reachable => {
                        self.set_all(tonic_health::ServingStatus::Serving).await;
                        tracing::info!("the store answers again: health SERVING");
                    }
                }
                reported = now;
            }
            tokio::select! {
                () = self.draining.cancelled() => return,
                changed = store.changed() => if changed.is_err() {
                    return;
                },
            }
        }
    }
}

/// tonic-health's service, with `Watch` streams that end when the server drains.
pub(crate) struct DrainingHealth {
    statuses: HealthService,
    draining: CancellationToken,
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.statuses.check(request).await
    }

    type WatchStream = BoxStream<'static, Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.statuses.watch(request).await?.into_inner();
        let draining = self.draining.clone();
        let not_serving = ServingStatus::NotServing as i32;
        let watch = async_stream::stream! {
            let mut statuses = std::pin::pin!(statuses);
            let mut last = None;
            loop {
                tokio::select! {
                    biased;
                    _ = draining.cancelled() => break,
                    status = statuses.next() => match status {
                        Some(status) => {
                            last = status.as_ref().ok().map(|s| s.status);
                            yield status;
                        }
                        None => return,
                    },
                }
            }
            // Draining turned every entry NOT_SERVING before it ended the streams; say so
            // unless this stream already has.
            if last != Some(not_serving) {
                yield Ok(HealthCheckResponse { status: not_serving });
            }
        };
        Ok(Response::new(watch.boxed()))
    }
}
