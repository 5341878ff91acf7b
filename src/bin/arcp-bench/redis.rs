//! The Redis the bench's `--stores redis` runs use: a `redis-server` of its own on a free
//! loopback port, persistence off, stopped with the bench; and what its `INFO` reports.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::BenchResult;

/// A running `redis-server`.
pub(crate) struct RedisFixture {
    child: Child,
    pub(crate) url: String,
    client: redis::Client,
}

impl RedisFixture {
    /// Starts one, or says why it cannot.
    pub(crate) fn start() -> BenchResult<RedisFixture> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot run redis-server (apt-get install redis-server): {e}"))?;
        let url = format!("redis://127.0.0.1:{port}/0");
        let client = redis::Client::open(url.as_str())?;
        let fixture = RedisFixture { child, url, client };
        let deadline = Instant::now() + Duration::from_secs(10);
        while fixture.info("server").is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not answer within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(fixture)
    }

    /// The fields of `INFO section`.
    pub(crate) fn info(&self, section: &str) -> BenchResult<HashMap<String, String>> {
        let mut conn = self.client.get_connection()?;
        let text: String = redis::cmd("INFO").arg(section).query(&mut conn)?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect())
    }

    /// One numeric `INFO` field.
    pub(crate) fn stat(&self, section: &str, field: &str) -> BenchResult<f64> {
        let info = self.info(section)?;
        let value = info
            .get(field)
            .ok_or_else(|| format!("INFO {section} has no {field}"))?;
        Ok(value.parse()?)
    }

    /// Empties it between runs, so that no run reads another's keys or pays for its memory.
    pub(crate) fn flush(&self) -> BenchResult<()> {
        let mut conn = self.client.get_connection()?;
        let () = redis::cmd("FLUSHALL").query(&mut conn)?;
        Ok(())
    }
}

impl Drop for RedisFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
