//! `redis-server`s for the tests: one shared by the tests of this process, started on first
//! use, and ones a test starts for itself ([`RedisServer`]). Each runs on a free loopback
//! port, with persistence off unless the test asks for it, and is stopped when the process
//! ends. A machine without redis-server fails the test that asks, saying how to get it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::PathBuf,
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
    /// Arguments beside the port and persistence.
    extra: Vec<String>,
    /// The server's pid while it runs.
    pid: Option<u32>,
    /// Where it keeps its append-only file, if it persists what it holds.
    data: Option<PathBuf>,
}

impl RedisServer {
    /// Starts a server on a free loopback port, with persistence off, stopped when dropped or
    /// when this process ends.
    pub fn start() -> RedisServer {
        RedisServer::start_with(Vec::new(), None)
    }

    /// Starts a server that also serves TLS on a port of its own with the certificate and key
    /// in `tls`'s files, and returns it with its `rediss://` address. Clients need not present
    /// certificates.
    pub fn start_tls(tls: &TlsFiles) -> (RedisServer, String) {
        let port = free_port();
        let extra = [
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &tls.cert,
            "--tls-key-file",
            &tls.key,
            "--tls-ca-cert-file",
            &tls.ca,
            "--tls-auth-clients",
            "no",
        ]
        .map(str::to_owned)
        .to_vec();
        (
            RedisServer::start_with(extra, None),
            format!("rediss://127.0.0.1:{port}/0"),
        )
    }

    /// [`RedisServer::start`] with an append-only file synced on every write, in a directory
    /// of its own, so that [`RedisServer::stop`] and [`RedisServer::start_again`] lose
    /// nothing it answered.
    pub fn start_persistent() -> RedisServer {
        let data = std::env::temp_dir().join(format!(
            "arcp-redis-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&data).expect("a data directory");
        RedisServer::start_with(Vec::new(), Some(data))
    }

    pub(super) fn start_with(extra: Vec<String>, data: Option<PathBuf>) -> RedisServer {
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
        let port = free_port();
        let mut server = RedisServer {
            port,
            url: format!("redis://127.0.0.1:{port}/0"),
            extra,
            pid: None,
            data,
        };
        server.run();
        server
    }

    /// Its `redis://` address.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port it serves on.
    pub fn port(&self) -> u16 {
        self.port
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

    /// Starts it again after [`RedisServer::stop`], on the same port: empty, or with what it
    /// held if it persists it ([`RedisServer::start_persistent`]).
    pub fn start_again(&mut self) {
        assert!(self.pid.is_none(), "the server still runs");
        self.run();
    }

    /// Stops the server (SIGSTOP) without closing anything: connections stay open, and what
    /// clients send waits in the kernel, unanswered, until [`RedisServer::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused server go on (SIGCONT): it runs every command sent meanwhile, in order,
    /// and answers them; returns once it answers a PING of its own.
    pub fn resume(&self) {
        self.signal("CONT");
        let deadline = Instant::now() + FRAME_TIMEOUT;
        while !answers_ping(self.port) {
            assert!(Instant::now() < deadline, "redis-server did not come back");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `FLUSHALL`: everything it holds is gone, as after a restart without persistence but
    /// with every connection left open.
    pub fn flush_all(&self) {
        let mut tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).expect("connect");
        tcp.set_read_timeout(Some(FRAME_TIMEOUT))
            .expect("a timeout");
        tcp.write_all(b"FLUSHALL\r\n").expect("send FLUSHALL");
        let mut reply = [0u8; 5];
        tcp.read_exact(&mut reply).expect("an answer to FLUSHALL");
        assert_eq!(&reply, b"+OK\r\n");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid.expect("the server runs");
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid} failed: {sent}");
    }

    fn run(&mut self) {
        let port = self.port;
        let persistence = match &self.data {
            Some(dir) => format!(
                "--appendonly yes --appendfsync always --dir '{}'",
                dir.display()
            ),
            None => "--appendonly no".to_owned(),
        };
        // The shell prints the server's pid, then stops the server once this process is gone,
        // however it ends.
        let watch = format!(
            "redis-server --bind 127.0.0.1 --port {port} --save '' {persistence} {extra} & server=$!; \
             echo $server; \
             while kill -0 {parent} 2>/dev/null && kill -0 $server 2>/dev/null; do sleep 0.2; done; \
             kill $server 2>/dev/null; wait $server",
            parent = std::process::id(),
            extra = self.extra.join(" "),
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
        // A paused server dies of SIGKILL all the same.
        self.stop();
        if let Some(dir) = &self.data {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub(super) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A certificate authority and a server certificate it signed for 127.0.0.1 and `localhost`,
/// made with the `openssl` command in a directory of their own.
pub struct TlsFiles {
    pub dir: std::path::PathBuf,
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl TlsFiles {
    pub fn generate() -> TlsFiles {
        let dir =
            std::env::temp_dir().join(format!("arcp-tls-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let san = path("san.ext");
        std::fs::write(&san, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<String>; 3] = [
            [
                &["req", "-x509"][..],
                &ec,
                &["-keyout", &path("ca.key"), "-out", &path("ca.pem")],
                &["-days", "1", "-subj", "/CN=arcp test CA"],
            ]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect(),
            [
                &["req"][..],
                &ec,
                &["-keyout", &path("server.key"), "-out", &path("server.csr")],
                &["-subj", "/CN=localhost"],
            ]
            .concat()
            .iter()
            .map(|s| s.to_string())
            .collect(),
            [
                "x509",
                "-req",
                "-in",
                &path("server.csr"),
                "-CA",
                &path("ca.pem"),
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
                "-out",
                &path("server.pem"),
                "-days",
                "1",
                "-extfile",
                &san,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .output()
                .unwrap_or_else(|e| panic!("openssl is needed to make test certificates: {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        TlsFiles {
            ca: path("ca.pem"),
            cert: path("server.pem"),
            key: path("server.key"),
            dir,
        }
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
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
