//! Starting and stopping a gateway serving gRPC and WebSocket on ephemeral ports.

use std::{net::SocketAddr, sync::Arc};

use arcp_gateway::{
    agent::AgentRegistry, auth::Authenticator, config::GatewayConfig, ids::Principal, server,
    Gateway,
};
use tokio::task::JoinHandle;

/// A gateway serving gRPC and WebSocket on 127.0.0.1, each on an ephemeral port. Sessions are
/// opened with the methods in [`super::grpc`] and [`super::ws`].
pub struct TestServer {
    pub addr: SocketAddr,
    pub ws_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
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
        let gateway = Gateway::builder(config).auth(auth).build();
        Self::start_gateway(gateway).await
    }

    /// Starts `config` with `agents`, for the single principal `alice` (token `alice-token`).
    pub async fn start_with_agents(config: GatewayConfig, agents: AgentRegistry) -> TestServer {
        let auth =
            Authenticator::from_pairs([("alice-token".to_string(), Principal::new("alice"))]);
        Self::start_gateway(Gateway::builder(config).auth(auth).agents(agents).build()).await
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

    /// Serves `gateway` as it was built.
    pub async fn start_gateway(gateway: Arc<Gateway>) -> TestServer {
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ws_listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ws_addr = ws_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let gw = gateway.clone();
        let task = tokio::spawn(async move {
            server::serve_all(gw, listener, ws_listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("server failed");
        });
        TestServer {
            addr,
            ws_addr,
            gateway,
            stop: Some(stop),
            task: Some(task),
        }
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

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
