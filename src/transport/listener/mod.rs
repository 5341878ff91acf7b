//! The accept loop both transports share.
//!
//! A failed accept backs off instead of being retried at once: out of descriptors, the
//! listener stays readable, and an immediate retry spins a core and floods the log while
//! nothing can be accepted anyway. Established connections are served by their own tasks
//! throughout. Connections per peer IP address are capped, across both transports.
//!
//! - `backoff`: how long to wait after a failed accept.
//! - `peers`: the per-peer count, and the slot an admitted connection holds.
//! - `warning_rate`: one warning per interval, with the count of those held back.
//! - [`tls`]: the TLS configuration a listener may wrap its connections in, reloaded when its
//!   files change.
//! - `conn`: an accepted connection, in TLS or not, and what its handshake established.
//! - `keepalive`: TCP keepalive on accepted sockets.
//!
//! With TLS, each admitted connection makes its handshake in a task of its own (bounded by
//! the connection setup timeout), so a slow or silent client holds up no other; `accept`
//! returns connections whose handshake completed.

mod backoff;
mod conn;
mod keepalive;
mod peers;
pub mod tls;
mod warning_rate;

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::Instant,
};

use self::{
    backoff::Backoff,
    keepalive::set_tcp_keepalive,
    tls::{Alpn, Tls},
    warning_rate::WarningRate,
};

pub(crate) use self::{
    conn::{Conn, Security},
    peers::{PeerLimit, PeerSlot},
};

/// How often a repeating accept failure or refusal is logged.
const WARNING_INTERVAL: Duration = Duration::from_secs(5);

/// A TCP listener that backs off on errors and admits at most [`PeerLimit::max`] connections
/// per peer address.
pub(crate) struct Listener {
    admission: Admission,
    /// TLS, when the listener wraps its connections in it.
    tls: Option<ListenerTls>,
    /// TLS handshakes under way.
    handshakes: JoinSet<Option<Accepted>>,
}

/// The TCP accept loop, with its back-off and per-peer cap.
struct Admission {
    tcp: TcpListener,
    transport: &'static str,
    peers: Arc<PeerLimit>,
    backoff: Backoff,
    failures: WarningRate,
    refusals: WarningRate,
    /// When the next accept may be tried, after a failure. Kept here rather than in a local
    /// sleep, so a caller that drops `accept` and calls it again still waits.
    retry_at: Option<Instant>,
    /// The TCP keepalive idle time accepted sockets get, if any.
    tcp_keepalive: Option<Duration>,
}

/// How a listener wraps its connections in TLS.
struct ListenerTls {
    tls: Arc<Tls>,
    alpn: Alpn,
    timeout: Duration,
    /// Failed handshakes are logged at this rate (a scanner must not flood the log), the rest
    /// at `debug`.
    failures: Arc<parking_lot::Mutex<WarningRate>>,
}

/// A connection the listener admitted.
pub(crate) struct Accepted {
    /// The connection, with `TCP_NODELAY` set: ARCP frames are small and latency matters; in
    /// TLS if the listener has it, its handshake done.
    pub(crate) stream: Conn,
    /// Who connected.
    pub(crate) peer: SocketAddr,
    /// The connection's place in its peer's count; keep it as long as the connection.
    pub(crate) slot: PeerSlot,
}

impl Listener {
    /// Accepts on `tcp`, counting connections in `peers`; `transport` names it in the log.
    pub(crate) fn new(tcp: TcpListener, transport: &'static str, peers: Arc<PeerLimit>) -> Self {
        Listener {
            admission: Admission {
                tcp,
                transport,
                peers,
                backoff: Backoff::default(),
                failures: WarningRate::new(WARNING_INTERVAL),
                refusals: WarningRate::new(WARNING_INTERVAL),
                retry_at: None,
                tcp_keepalive: None,
            },
            tls: None,
            handshakes: JoinSet::new(),
        }
    }

    /// Turns on TCP keepalive with `idle` time on every accepted socket, when given.
    pub(crate) fn with_tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.admission.tcp_keepalive = idle;
        self
    }

    /// Wraps every connection in TLS with `tls`'s configuration current when it is accepted,
    /// offering `alpn`; a handshake not done within `timeout` closes the connection.
    pub(crate) fn with_tls(mut self, tls: Arc<Tls>, alpn: Alpn, timeout: Duration) -> Self {
        let failures = Arc::new(parking_lot::Mutex::new(WarningRate::new(WARNING_INTERVAL)));
        self.tls = Some(ListenerTls {
            tls,
            alpn,
            timeout,
            failures,
        });
        self
    }

    /// The next connection admitted (and through its TLS handshake, with TLS). Failures and
    /// refusals are handled here, so this only returns a connection. Cancel-safe: dropping the
    /// future loses no admitted connection.
    pub(crate) async fn accept(&mut self) -> Accepted {
        loop {
            let (stream, peer, slot) = tokio::select! {
                biased;
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok(Some(accepted)) => return accepted,
                        _ => continue,
                    }
                }
                admitted = self.admission.admit() => admitted,
            };
            let Some(tls) = &self.tls else {
                return Accepted {
                    stream: Conn::plain(stream),
                    peer,
                    slot,
                };
            };
            let acceptor = tls.tls.acceptor(tls.alpn);
            let principal_from = tls.tls.settings().client_principal;
            let (timeout, transport) = (tls.timeout, self.admission.transport);
            let failures = tls.failures.clone();
            self.handshakes.spawn(async move {
                let handshake = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
                match handshake {
                    Ok(Ok(stream)) => Some(Accepted {
                        stream: Conn::tls(stream, principal_from),
                        peer,
                        slot,
                    }),
                    Ok(Err(e)) => {
                        let admitted = failures.lock().admit();
                        match admitted {
                            Some(suppressed) => tracing::info!(
                                transport,
                                peer = %peer,
                                suppressed,
                                "TLS handshake failed: {e}"
                            ),
                            None => tracing::debug!(transport, peer = %peer, "TLS handshake failed: {e}"),
                        }
                        None
                    }
                    Err(_) => {
                        tracing::debug!(transport, peer = %peer, "TLS handshake not done within the connection setup timeout");
                        None
                    }
                }
            });
        }
    }
}

impl Admission {
    /// The next TCP connection admitted under the per-peer cap. Cancel-safe.
    async fn admit(&mut self) -> (TcpStream, SocketAddr, PeerSlot) {
        loop {
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at).await;
                self.retry_at = None;
            }
            let (stream, peer) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(e) if concerns_one_connection(&e) => {
                    tracing::debug!(transport = self.transport, "accept: {e}");
                    continue;
                }
                Err(e) => {
                    let wait = self.backoff.failed();
                    if let Some(suppressed) = self.failures.admit() {
                        tracing::warn!(
                            transport = self.transport,
                            retry_in = ?wait,
                            suppressed,
                            "accept failed: {e}"
                        );
                    }
                    self.retry_at = Some(Instant::now() + wait);
                    continue;
                }
            };
            self.backoff.succeeded();
            let Some(slot) = self.peers.admit(peer.ip()) else {
                if let Some(suppressed) = self.refusals.admit() {
                    tracing::warn!(
                        transport = self.transport,
                        peer = %peer.ip(),
                        suppressed,
                        "connection refused: the peer has {} connections open",
                        self.peers.max()
                    );
                }
                // Dropping the stream closes it at once.
                continue;
            };
            let _ = stream.set_nodelay(true);
            if let Some(idle) = self.tcp_keepalive {
                if let Err(e) = set_tcp_keepalive(&stream, idle) {
                    tracing::debug!(transport = self.transport, %peer, "TCP keepalive not set: {e}");
                }
            }
            return (stream, peer, slot);
        }
    }
}

/// Errors that end one pending connection (it was reset before it was accepted) and say
/// nothing about the listener, which is retried at once.
fn concerns_one_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
