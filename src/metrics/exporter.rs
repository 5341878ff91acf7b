//! The Prometheus recorder and the HTTP listener that serves `GET /metrics`.
//!
//! The exporter crate's own listener is not used: it cannot say which port `:0` bound, and it
//! would bring a second HTTP server. This one is HTTP/1.1 on the hyper tonic already brings;
//! anything but `GET /metrics` is 404.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::{body::Bytes, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{describe, store_latency, DURATION_BUCKETS, GRPC_DURATION_SECONDS};

/// The path metrics are served at.
pub const PATH: &str = "/metrics";

/// How often histograms' recorded samples are folded into their buckets between scrapes, so
/// that an unscraped gateway does not hold them all.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How long one scrape's connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The installed recorder, ready to serve.
pub struct Exporter {
    handle: PrometheusHandle,
    listener: TcpListener,
}

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// The recorder could not be built or installed (another one is installed already).
    #[error("metrics recorder: {0}")]
    Recorder(#[from] BuildError),
    /// The listener could not be bound.
    #[error("metrics listener: {0}")]
    Listen(#[from] std::io::Error),
}

impl Exporter {
    /// Installs the process-wide recorder and binds `addr` (port 0 picks a free one). Call it
    /// before anything records: what is recorded before goes nowhere.
    pub async fn install(addr: SocketAddr) -> Result<Exporter, ExporterError> {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(GRPC_DURATION_SECONDS.into()),
                DURATION_BUCKETS,
            )?
            .install_recorder()?;
        describe();
        let listener = TcpListener::bind(addr).await?;
        Ok(Exporter { handle, listener })
    }

    /// Where it serves.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `GET /metrics` until `stop` is cancelled. `refresh` runs before each render, for
    /// gauges read from elsewhere at scrape time.
    pub async fn serve(
        self,
        refresh: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static,
        stop: CancellationToken,
    ) {
        let Exporter { handle, listener } = self;
        let scrape = Arc::new(Scrape {
            handle: handle.clone(),
            refresh: Box::new(refresh),
        });
        let upkeep = tokio::spawn({
            let (handle, stop) = (handle, stop.clone());
            async move {
                let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => handle.run_upkeep(),
                    }
                }
            }
        });
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics listener: accept failed: {e}");
                    // An accept that fails at once (out of descriptors) must not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let scrape = scrape.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let scrape = scrape.clone();
                    async move { Ok::<_, Infallible>(scrape.answer(&request).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service);
                if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                    tracing::debug!("metrics connection: {e}");
                }
            });
        }
        upkeep.abort();
    }
}

/// What a scrape reads.
struct Scrape {
    handle: PrometheusHandle,
    refresh: Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
}

impl Scrape {
    async fn answer<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET || request.uri().path() != PATH {
            return plain(
                StatusCode::NOT_FOUND,
                "not found; metrics are at GET /metrics\n",
            );
        }
        (self.refresh)().await;
        let mut text = self.handle.render();
        store_latency::render(&mut text);
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response
}
