//! Raw TCP clients, for connections that never become useful: silent ones, a partial
//! WebSocket upgrade, an HTTP/2 preface with no stream after it.

use std::{io, net::SocketAddr};

use tokio::{io::AsyncReadExt, net::TcpStream};

use super::FRAME_TIMEOUT;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An empty SETTINGS frame, which must follow the preface: length 0, type 4, no flags, stream 0.
pub const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// A WebSocket upgrade request cut off before the blank line that ends its headers.
pub const PARTIAL_UPGRADE: &[u8] =
    b"GET /arcp HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";

/// A plain TCP connection to `addr`.
pub async fn connect_raw(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("tcp connect")
}

/// Reads, discarding what arrives, until the server closes `stream` (an end of stream, or a
/// reset when the server closed with bytes of ours unread). Fails the test if it stays open
/// past [`FRAME_TIMEOUT`].
pub async fn wait_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    let closed = tokio::time::timeout(FRAME_TIMEOUT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
                Err(e) => panic!("reading a connection the server should close: {e}"),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open for {FRAME_TIMEOUT:?}"
    );
}
