//! Starting and stopping a gateway serving gRPC and WebSocket on ephemeral ports.

use std::{net::SocketAddr, sync::Arc};

use arcp_gateway::{
    agent::AgentRegistry,
    auth::Authenticator,
    config::GatewayConfig,
    gateway::GatewayBuilder,
    ids::{Principal, ReplicaId, SessionId},
    server::{self, ServeOptions},
    store::{redis::Redis, MemoryStores, Stores},
    Gateway,
};
use tokio::task::JoinHandle;

use super::{redis_url, StoreKind};

/// Where a gateway serves: its gRPC and its WebSocket address. Sessions are opened on it with
/// the methods in [`super::grpc`] and [`super::ws`], whether the gateway runs in this process
/// ([`TestServer`]), as a child process, or behind a proxy.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ws_addr: SocketAddr,
}

/// A gateway serving gRPC and WebSocket on 127.0.0.1, each on an ephemeral port; it is the
/// [`Endpoint`] it serves on.
pub struct TestServer {
    endpoint: Endpoint,
    pub gateway: Arc<Gateway>,
    /// The gateway's memory stores, for tests that look at what they hold.
    pub stores: Inspectable,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a gateway with `config` and the built-in agents. `tokens` are `(token, principal)`
    /// pairs; none means open authentication.
    pub async fn start(config: GatewayConfig, tokens: &[(&str, &str)]) -> TestServer {
        let auth = Authenticator::from_pairs(
            tokens
                .iter()
                .map(|(t, p)| (t.to_string(), Principal::new(*p))),
        );
        Self::start_gateway(Gateway::builder(config).auth(auth)).await
    }

    /// Starts `config` with `agents`, for the single principal `alice` (token `alice-token`).
    pub async fn start_with_agents(config: GatewayConfig, agents: AgentRegistry) -> TestServer {
        let auth =
            Authenticator::from_pairs([("alice-token".to_string(), Principal::new("alice"))]);
        Self::start_gateway(Gateway::builder(config).auth(auth).agents(agents)).await
    }

    /// Starts the default configuration, with session logs bounded to `max_log_frames`, for
    /// the single principal `alice` (token `alice-token`).
    pub async fn start_with_log_bound(max_log_frames: usize) -> TestServer {
        let config = GatewayConfig {
            max_log_frames,
            ..GatewayConfig::default()
        };
        Self::start(config, &[("alice-token", "alice")]).await
    }

    /// Starts the default configuration with two principals: `alice` (token `alice-token`)
    /// and `bob` (token `bob-token`).
    pub async fn start_default() -> TestServer {
        Self::start(
            GatewayConfig::default(),
            &[("alice-token", "alice"), ("bob-token", "bob")],
        )
        .await
    }

    /// Serves the gateway `builder` builds on stores of the kind the test runs on
    /// ([`StoreKind::current`]): memory stores the test can look at, or Redis stores under
    /// keys of their own.
    pub async fn start_gateway(builder: GatewayBuilder) -> TestServer {
        Self::start_wrapped(builder, |stores| stores).await
    }

    /// [`TestServer::start_gateway`] with the stores as `wrap` wraps them.
    pub async fn start_wrapped(
        builder: GatewayBuilder,
        wrap: impl FnOnce(Stores) -> Stores,
    ) -> TestServer {
        let limits = builder.config().log_limits();
        match StoreKind::current() {
            StoreKind::Memory => {
                Self::start_on(builder, MemoryStores::with_limits(limits), wrap).await
            }
            StoreKind::Redis => {
                let prefix = format!("arcp-test-{}", SessionId::generate());
                let redis = Redis::open(redis_url(), &prefix).expect("a redis address");
                let replica = ReplicaId::new("test-server");
                let in_redis = Stores::redis(&redis, &replica, limits);
                let gateway = builder.replica(replica).stores(wrap(in_redis)).build();
                Self::serve(gateway, Inspectable(None)).await
            }
        }
    }

    /// Serves the gateway `builder` builds on the memory `stores`, as `wrap` wraps them,
    /// whatever kind the test runs on: several servers on the same stores are replicas of one
    /// deployment.
    pub async fn start_on(
        builder: GatewayBuilder,
        stores: MemoryStores,
        wrap: impl FnOnce(Stores) -> Stores,
    ) -> TestServer {
        let gateway = builder.stores(wrap(stores.stores())).build();
        Self::serve(gateway, Inspectable(Some(stores))).await
    }

    async fn serve(gateway: Arc<Gateway>, stores: Inspectable) -> TestServer {
        Self::serve_with(gateway, stores, ServeOptions::default()).await
    }

    /// Serves the gateway `builder` builds, on memory stores, with `options` (TLS, a health
    /// listener).
    pub async fn start_with_options(builder: GatewayBuilder, options: ServeOptions) -> TestServer {
        let stores = MemoryStores::with_limits(builder.config().log_limits());
        Self::start_on_with_options(builder, stores, options).await
    }

    /// [`TestServer::start_with_options`] on the memory `stores`, which other servers may
    /// share.
    pub async fn start_on_with_options(
        builder: GatewayBuilder,
        stores: MemoryStores,
        options: ServeOptions,
    ) -> TestServer {
        let gateway = builder.stores(stores.stores()).build();
        Self::serve_with(gateway, Inspectable(Some(stores)), options).await
    }

    async fn serve_with(
        gateway: Arc<Gateway>,
        stores: Inspectable,
        options: ServeOptions,
    ) -> TestServer {
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ws_listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ws_addr = ws_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let gw = gateway.clone();
        let task = tokio::spawn(async move {
            server::serve_all_with(gw, listener, ws_listener, options, async {
                let _ = stopped.await;
            })
            .await
            .expect("server failed");
        });
        TestServer {
            endpoint: Endpoint { addr, ws_addr },
            gateway,
            stores,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// How many sessions the gateway holds, attached or not.
    pub fn session_count(&self) -> usize {
        self.stores.sessions.len()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

/// A server's memory stores, to look into; a server on Redis has none, and a test that looks
/// fails saying so (it cannot run [`super::on_each_store!`]).
pub struct Inspectable(Option<MemoryStores>);

impl std::ops::Deref for Inspectable {
    type Target = MemoryStores;

    fn deref(&self) -> &MemoryStores {
        self.0.as_ref().unwrap_or_else(|| {
            panic!("this test looks into memory stores; its server runs on Redis")
        })
    }
}

impl std::ops::Deref for TestServer {
    type Target = Endpoint;

    fn deref(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
