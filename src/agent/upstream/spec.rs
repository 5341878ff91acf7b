//! What reaching an upstream runtime takes, as the agents file declared it.

use std::{fmt, num::NonZeroUsize, path::Path, sync::Arc, time::Duration};

use rustls::pki_types::ServerName;

use crate::transport::tls_client;

/// How an upstream agent's connections are timed.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimings {
    /// How long a job the gateway ended gets after `job.cancel` before its connection closes.
    pub cancel_grace: Duration,
    /// How long connecting, the handshake and `session.welcome` may take, each attempt.
    pub welcome_timeout: Duration,
    /// How long a lost connection is tried again (resuming the session) before the job fails.
    pub reconnect_timeout: Duration,
    /// How long the connection may be silent before a ping; as long again without an answer
    /// and it is lost.
    pub ping_interval: Duration,
    /// After a resume, how often the upstream's job listing is asked for, to find a job that
    /// ended without its end reaching the gateway; also how long its end gets to arrive.
    pub check_interval: Duration,
}

impl UpstreamTimings {
    /// The defaults, where the agents file names no value.
    pub const DEFAULT: UpstreamTimings = UpstreamTimings {
        cancel_grace: Duration::from_secs(2),
        welcome_timeout: Duration::from_secs(10),
        reconnect_timeout: Duration::from_secs(30),
        ping_interval: Duration::from_secs(15),
        check_interval: Duration::from_secs(2),
    };
}

/// An upstream ARCP runtime, checked when the agents file was loaded.
pub struct UpstreamSpec {
    /// Its `ws://` or `wss://` URL.
    pub url: String,
    /// The host and port the URL names.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// TLS, for `wss://`: the client configuration and the name the certificate must carry.
    pub(crate) tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// The bearer token of its `session.hello`; never logged.
    pub(crate) token: String,
    /// The agent's name there, which `job.submit` names.
    pub agent: String,
    /// The most jobs of this agent relayed at once; a job beyond it waits for a slot.
    pub max_jobs: Option<NonZeroUsize>,
    /// How its connections are timed.
    pub timings: UpstreamTimings,
}

impl UpstreamSpec {
    /// The spec of the runtime at `url`; `ca_file` adds PEM roots to the system's for
    /// `wss://`.
    pub fn new(
        url: &str,
        token: String,
        agent: String,
        max_jobs: Option<NonZeroUsize>,
        ca_file: Option<&Path>,
        timings: UpstreamTimings,
    ) -> Result<UpstreamSpec, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(format!("url {url:?} is not a ws:// or wss:// URL")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("url {url:?} names no host"))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let config = tls_client::config(ca_file).map_err(|e| format!("url {url:?}: {e}"))?;
            let name =
                ServerName::try_from(host.clone()).map_err(|e| format!("url {url:?}: {e}"))?;
            Some((config, name))
        } else if ca_file.is_some() {
            return Err("ca_file is for wss:// URLs only".into());
        } else {
            None
        };
        Ok(UpstreamSpec {
            url: url.to_owned(),
            host,
            port,
            tls,
            token,
            agent,
            max_jobs,
            timings,
        })
    }
}

// By hand, so that the token never reaches a log through `{:?}`.
impl fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamSpec")
            .field("url", &self.url)
            .field("agent", &self.agent)
            .field("max_jobs", &self.max_jobs)
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}
