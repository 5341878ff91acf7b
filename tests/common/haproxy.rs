//! A real L7 proxy in front of several gateway replicas, as a mesh or load balancer puts one:
//! Debian's `haproxy`, balancing round-robin per request, so that every new gRPC stream (an
//! HTTP/2 request over h2c on both sides) and every WebSocket goes to the next replica.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{Endpoint, FRAME_TIMEOUT};

/// A running haproxy; stopped when dropped.
pub struct Haproxy {
    child: Child,
    endpoint: Endpoint,
    config: std::path::PathBuf,
}

impl Haproxy {
    /// Proxies gRPC and WebSocket, each on a port of its own, round-robin over `replicas`.
    pub fn start(replicas: &[Endpoint]) -> Haproxy {
        if Command::new("haproxy").arg("-v").output().is_err() {
            panic!(
                "haproxy is not installed: `.ci/run` installs Debian's haproxy package \
                 (apt-get install -y haproxy)"
            );
        }
        let endpoint = Endpoint {
            addr: free_port(),
            ws_addr: free_port(),
        };
        let servers = |proto: &str, addr: fn(&Endpoint) -> SocketAddr| {
            replicas
                .iter()
                .enumerate()
                .map(|(i, r)| format!("    server replica{i} {}{proto}\n", addr(r)))
                .collect::<String>()
        };
        let config = format!(
            "{}\
             frontend grpc\n    bind {} proto h2\n    default_backend grpc_replicas\n\
             frontend ws\n    bind {}\n    default_backend ws_replicas\n\
             backend grpc_replicas\n    balance roundrobin\n{}\
             backend ws_replicas\n    balance roundrobin\n{}",
            include_str!("haproxy.cfg"),
            endpoint.addr,
            endpoint.ws_addr,
            servers(" proto h2", |r| r.addr),
            servers("", |r| r.ws_addr),
        );
        let path = std::env::temp_dir().join(format!(
            "arcp-haproxy-{}-{}.cfg",
            std::process::id(),
            endpoint.addr.port()
        ));
        std::fs::write(&path, &config).expect("write the haproxy config");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy");
        let deadline = Instant::now() + FRAME_TIMEOUT;
        for addr in [endpoint.addr, endpoint.ws_addr] {
            while TcpStream::connect(addr).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "haproxy did not listen on {addr} within {FRAME_TIMEOUT:?}; config:\n{config}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Haproxy {
            child,
            endpoint,
            config: path,
        }
    }

    /// Where clients reach the replicas through it.
    pub fn endpoint(&self) -> Endpoint {
        self.endpoint
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// A loopback port free a moment ago, for haproxy to bind.
fn free_port() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
}
