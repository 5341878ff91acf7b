//! TCP keepalive on accepted sockets.
//!
//! A cloud load balancer or a NAT forgets a connection that stays idle past its timeout
//! (minutes), after which neither end hears of the other again; keepalive probes keep its
//! entry alive, and find a peer that vanished on connections where nothing else would
//! (WebSocket has no ping of the server's own).

use std::{io, time::Duration};

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Turns on `SO_KEEPALIVE` on `stream`, the first probe after `idle` without traffic.
pub(crate) fn set_tcp_keepalive(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    SockRef::from(stream).set_tcp_keepalive(&TcpKeepalive::new().with_time(idle))
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn an_accepted_socket_gets_keepalive_with_its_idle_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (stream, _) = accepted.expect("accept");
        let socket = SockRef::from(&stream);
        assert!(!socket.keepalive().expect("SO_KEEPALIVE"), "off by default");
        set_tcp_keepalive(&stream, Duration::from_secs(42)).expect("set");
        assert!(socket.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(
            socket.tcp_keepalive_time().expect("TCP_KEEPIDLE"),
            Duration::from_secs(42)
        );
    }
}
