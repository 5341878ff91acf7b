//! A `redis-server` for the tests of this process: started on first use on a free loopback
//! port, with persistence off, and stopped when the process ends. A machine without it fails
//! the test that asks, saying how to get it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use super::FRAME_TIMEOUT;

static SERVER: OnceLock<String> = OnceLock::new();

/// The `redis://` address of this process's server, starting it if need be.
pub fn redis_url() -> &'static str {
    SERVER.get_or_init(start)
}

fn start() -> String {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!(
            "redis-server is not installed: `.ci/run` installs Debian's redis-server package \
             (apt-get install -y redis-server)"
        );
    }
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // The shell outlives nothing: it stops the server once this process is gone, however it
    // ends.
    let watch = format!(
        "redis-server --bind 127.0.0.1 --port {port} --save '' --appendonly no & server=$!; \
         while kill -0 {parent} 2>/dev/null; do sleep 0.2; done; kill $server; wait $server",
        parent = std::process::id()
    );
    let mut watcher = Command::new("sh")
        .arg("-c")
        .arg(watch)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start redis-server");
    // Reaped if it ends first (the server failed to start, say).
    std::thread::spawn(move || watcher.wait());
    let deadline = Instant::now() + FRAME_TIMEOUT;
    while !answers_ping(port) {
        assert!(
            Instant::now() < deadline,
            "redis-server on port {port} did not answer PING within {FRAME_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    format!("redis://127.0.0.1:{port}/0")
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut tcp) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let mut reply = [0u8; 7];
    tcp.set_read_timeout(Some(Duration::from_secs(1))).is_ok()
        && tcp.write_all(b"PING\r\n").is_ok()
        && tcp.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
