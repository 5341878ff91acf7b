//! Replicas of one deployment as real processes: `n` `arcp-gateway serve --store redis://...`
//! sharing a `redis-server` of the test's own.

use std::collections::BTreeSet;

use super::{Endpoint, GatewayProcess, RedisServer};

/// `n` gateway processes sharing one Redis, named `replica-0`, `replica-1`, ...
pub struct Deployment {
    pub replicas: Vec<GatewayProcess>,
    _redis: RedisServer,
}

impl Deployment {
    pub async fn start(n: usize) -> Deployment {
        Self::start_with(n, &[]).await
    }

    /// [`Deployment::start`] with `extra` flags for every replica.
    pub async fn start_with(n: usize, extra: &[&str]) -> Deployment {
        let redis = RedisServer::start();
        let mut replicas = Vec::new();
        for i in 0..n {
            let id = format!("replica-{i}");
            let mut flags = vec!["--store", redis.url(), "--replica-id", &id];
            flags.extend_from_slice(extra);
            replicas.push(GatewayProcess::start_with("info", None, &flags).await);
        }
        Deployment {
            replicas,
            _redis: redis,
        }
    }

    pub fn endpoint(&self, replica: usize) -> Endpoint {
        self.replicas[replica].endpoint()
    }

    /// Which replicas logged `what` (`"session opened"`, `"session resumed"`) for `session`.
    pub fn replicas_that_logged(&self, what: &str, session: &str) -> BTreeSet<usize> {
        let field = format!("session={session}");
        (0..self.replicas.len())
            .filter(|&i| self.replicas[i].lines_containing_all(&[what, &field]) > 0)
            .collect()
    }
}
