//! Redis Clusters for the tests: three `redis-server`s in cluster mode, each the primary of a
//! third of the slots, made one cluster by `redis-cli --cluster create`. One is shared by the
//! tests of this process, started on first use ([`redis_cluster_url`]); a test that stops a
//! node starts one of its own.

use std::{process::Command, sync::OnceLock, time::Instant};

use super::{free_port, RedisServer, FRAME_TIMEOUT};

static SHARED: OnceLock<RedisCluster> = OnceLock::new();

/// The `redis-cluster://` address of this process's shared cluster, starting it if need be.
/// Tests on it keep to keys of their own.
pub fn redis_cluster_url() -> &'static str {
    &SHARED.get_or_init(RedisCluster::start).url
}

/// A Redis Cluster of three primaries and no replicas, on free loopback ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    url: String,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    /// Starts the nodes, makes them one cluster, and returns once every node says the cluster
    /// is up.
    pub fn start() -> RedisCluster {
        let dir = std::env::temp_dir().join(format!(
            "arcp-redis-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a directory for the cluster's node files");
        let nodes: Vec<RedisServer> = (0..3)
            .map(|n| {
                let config = dir.join(format!("nodes-{n}.conf"));
                RedisServer::start_with(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &config.to_string_lossy(),
                        "--cluster-node-timeout",
                        "2000",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                    None,
                )
            })
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli (Debian's redis-tools) to create the cluster");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = RedisCluster {
            url: format!("redis-cluster://{}", addresses.join(",")),
            nodes,
            dir,
        };
        cluster.wait_until_up();
        cluster
    }

    /// Its `redis-cluster://` address, naming every node.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + FRAME_TIMEOUT;
        for node in &self.nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port().to_string(), "cluster", "info"])
                    .output()
                    .expect("run redis-cli");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster on {} did not come up within {FRAME_TIMEOUT:?}",
                    self.url
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
