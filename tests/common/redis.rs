//! `redis-server`s for the tests: one shared by the tests of this process, started on first
//! use, and ones a test starts for itself ([`RedisServer`]). Each runs on a free loopback
//! port with persistence off and is stopped when the process ends. A machine without
//! redis-server fails the test that asks, saying how to get it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use super::FRAME_TIMEOUT;

static SHARED: OnceLock<RedisServer> = OnceLock::new();

/// The `redis://` address of this process's shared server, starting it if need be. Tests on it
/// keep to keys of their own.
pub fn redis_url() -> &'static str {
    &SHARED.get_or_init(RedisServer::start).url
}

/// A `redis-server` of one test's own, for tests that flush, stop or restart it.
pub struct RedisServer {
    port: u16,
    url: String,
    /// The server's pid while it runs.
    pid: Option<u32>,
}

impl RedisServer {
    /// Starts a server on a free loopback port, with persistence off, stopped when dropped or
    /// when this process ends.
    pub fn start() -> RedisServer {
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
        let mut server = RedisServer {
            port,
            url: format!("redis://127.0.0.1:{port}/0"),
            pid: None,
        };
        server.run();
        server
    }

    /// Its `redis://` address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kills the server (SIGKILL): what it held is gone, as after a crash without persistence.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let deadline = Instant::now() + FRAME_TIMEOUT;
            while answers_ping(self.port) {
                assert!(Instant::now() < deadline, "redis-server {pid} did not die");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn run(&mut self) {
        let port = self.port;
        // The shell prints the server's pid, then stops the server once this process is gone,
        // however it ends.
        let watch = format!(
            "redis-server --bind 127.0.0.1 --port {port} --save '' --appendonly no & server=$!; \
             echo $server; \
             while kill -0 {parent} 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 0.2; done; \
             kill $server 2>/dev/null; wait $server",
            parent = std::process::id()
        );
        let mut watcher = Command::new("sh")
            .arg("-c")
            .arg(watch)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server");
        let mut pid = String::new();
        let mut stdout = watcher.stdout.take().expect("the watcher's stdout");
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            pid.push(byte[0] as char);
        }
        self.pid = Some(
            pid.trim()
                .parse()
                .expect("the watcher prints the server's pid"),
        );
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
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
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
