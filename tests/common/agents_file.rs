//! Gateways offering the agents an `--agents FILE` TOML declares, written by the test.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use arcp_gateway::{agent::agents_file::AgentsFile, config::GatewayConfig};

use super::server::TestServer;

/// A fresh directory under the test target's temporary directory for one test's files.
pub fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "agents/{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test's directory");
    dir
}

/// A TOML string literal.
pub fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// A gateway in this process offering the agents `toml` declares (relative to `dir`).
pub async fn gateway_with_agents(toml: &str, dir: &Path) -> TestServer {
    let file = AgentsFile::parse(toml, dir).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let registry = file.registry().expect("the registry builds");
    TestServer::start_with_agents(GatewayConfig::default(), registry).await
}
