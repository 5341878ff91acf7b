//! How a client connects, and how hard it tries to stay connected.

use std::time::Duration;

/// How a [`Client`](super::Client) connects and how hard it tries to stay connected.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The gateway, e.g. `http://127.0.0.1:50051`.
    pub endpoint: String,
    /// The bearer token.
    pub token: String,
    /// The features to ask for (§6.2); `ack` makes the client acknowledge what it handed over.
    pub features: Vec<String>,
    /// Reconnections tried in a row before a drop is given up on.
    pub reconnect_attempts: u32,
    /// The wait before the first reconnection; it doubles each time up to `max_backoff`.
    pub first_backoff: Duration,
    /// The longest wait between two reconnections.
    pub max_backoff: Duration,
    /// With `ack` negotiated, how many job frames between two acknowledgements.
    pub ack_every: u64,
}

impl ClientConfig {
    /// A client of `endpoint` with `token`, asking for every feature the client handles, and
    /// retrying a drop 10 times over about 5 seconds.
    pub fn new(endpoint: impl Into<String>, token: impl Into<String>) -> ClientConfig {
        ClientConfig {
            endpoint: endpoint.into(),
            token: token.into(),
            features: [
                "ack",
                "progress",
                "list_jobs",
                "subscribe",
                "agent_versions",
            ]
            .map(String::from)
            .to_vec(),
            reconnect_attempts: 10,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            ack_every: 256,
        }
    }
}
