//! Replicas of one deployment as real processes: `n` `arcp-gateway serve --store redis://...`
//! sharing a `redis-server` of the test's own, or `--store redis-cluster://...` sharing a
//! Redis Cluster of the test's own.

use std::collections::BTreeSet;

use super::{Endpoint, GatewayProcess, RedisCluster, RedisServer};

/// `n` gateway processes sharing one Redis, named `replica-0`, `replica-1`, ...
pub struct Deployment {
    pub replicas: Vec<GatewayProcess>,
    _redis: Backing,
}

/// What the replicas keep their state in, stopped with the deployment.
enum Backing {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Deployment {
    pub async fn start(n: usize) -> Deployment {
        Self::start_with(n, &[]).await
    }

    /// [`Deployment::start`] with `extra` flags for every replica.
    pub async fn start_with(n: usize, extra: &[&str]) -> Deployment {
        let redis = RedisServer::start();
        let replicas = start_replicas(n, redis.url(), extra).await;
        Deployment {
            replicas,
            _redis: Backing::Server(redis),
        }
    }

    /// `n` replicas on a Redis Cluster of three primaries.
    pub async fn on_cluster(n: usize) -> Deployment {
        let cluster = RedisCluster::start();
        let replicas = start_replicas(n, cluster.url(), &[]).await;
        Deployment {
            replicas,
            _redis: Backing::Cluster(cluster),
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

async fn start_replicas(n: usize, store: &str, extra: &[&str]) -> Vec<GatewayProcess> {
    let mut replicas = Vec::new();
    for i in 0..n {
        let id = format!("replica-{i}");
        let mut flags = vec!["--store", store, "--replica-id", &id];
        flags.extend_from_slice(extra);
        replicas.push(GatewayProcess::start_with("info", None, &flags).await);
    }
    replicas
}
