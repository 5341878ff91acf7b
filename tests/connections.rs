//! Connections before they are useful, and how many one peer may hold (issue 16).
//!
//! Every connection must become able to carry a session within the setup timeout: a
//! WebSocket must complete its upgrade, a gRPC connection must send the HTTP/2 preface and
//! open its first stream; otherwise the server closes it. Connections per peer address are
//! capped over both transports together, and a slot frees when its connection ends.

mod common;

use std::{num::NonZeroUsize, time::Duration};

use arcp_gateway::{config::GatewayConfig, proto::server_frame::Payload as Out};
use common::*;
use serde_json::json;
use tokio::{io::AsyncWriteExt, time::Instant};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The setup timeout of the deadline tests: short, so they run quickly.
const SETUP: Duration = Duration::from_millis(300);

/// How late after its deadline a close may come on a loaded machine before the test calls it
/// missed. A guard, not the thing measured.
const SLACK: Duration = Duration::from_secs(5);

/// A setup timeout the cap tests never reach, so that a close there can only be a refusal.
const NEVER: Duration = Duration::from_secs(600);

async fn server_with(setup: Duration, per_peer: usize) -> TestServer {
    let config = GatewayConfig {
        connection_setup_timeout: setup,
        max_connections_per_peer: NonZeroUsize::new(per_peer).expect("a positive cap"),
        ..GatewayConfig::default()
    };
    TestServer::start(config, &[("alice-token", "alice")]).await
}

/// Connects to `addr`, sends `first` (possibly nothing) and asserts the server closes the
/// connection at the setup deadline: not before it, and not long after.
async fn assert_closed_at_the_setup_deadline(addr: std::net::SocketAddr, first: &[u8], what: &str) {
    let opened = Instant::now();
    let mut stream = connect_raw(addr).await;
    if !first.is_empty() {
        stream.write_all(first).await.expect("send");
    }
    wait_closed(&mut stream).await;
    let after = opened.elapsed();
    assert!(
        after >= SETUP,
        "{what}: closed after {after:?}, before the deadline"
    );
    assert!(after < SETUP + SLACK, "{what}: closed only after {after:?}");
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_setup_deadline_on_both_transports() {
    let server = server_with(SETUP, 256).await;
    tokio::join!(
        assert_closed_at_the_setup_deadline(server.ws_addr, b"", "silent websocket connection"),
        assert_closed_at_the_setup_deadline(server.addr, b"", "gRPC connection without preface"),
    );
}

#[tokio::test]
async fn a_partial_websocket_upgrade_is_closed_at_the_setup_deadline() {
    let server = server_with(SETUP, 256).await;
    assert_closed_at_the_setup_deadline(server.ws_addr, PARTIAL_UPGRADE, "partial upgrade").await;
}

#[tokio::test]
async fn a_grpc_connection_with_the_preface_but_no_stream_is_closed_at_the_setup_deadline() {
    let server = server_with(SETUP, 256).await;
    let preface = [HTTP2_PREFACE, &EMPTY_SETTINGS].concat();
    assert_closed_at_the_setup_deadline(server.addr, &preface, "preface without a stream").await;
}

/// The deadline is for becoming useful: connections that opened a session in time stay, on
/// both transports, long after it.
#[tokio::test]
async fn sessions_opened_in_time_outlive_the_setup_deadline() {
    let server = server_with(SETUP, 256).await;
    let (mut grpc, _) = server.hello("alice-token").await;
    let (mut ws, _) = server.ws_hello("alice-token", &[]).await;

    // Connections opened after the sessions' are closed at their deadline, so once both are,
    // the sessions' deadlines have passed too.
    tokio::join!(
        assert_closed_at_the_setup_deadline(server.ws_addr, b"", "silent websocket connection"),
        assert_closed_at_the_setup_deadline(server.addr, b"", "gRPC connection without preface"),
    );

    sync_with_ping(&mut grpc, "after-the-deadline").await;
    ws.send(
        "session.ping",
        json!({"nonce": "after-the-deadline", "sent_at": "2026-05-13T19:42:13.000Z"}),
    )
    .await;
    let pong = ws.recv().await;
    assert_eq!(pong["type"], "session.pong", "{pong}");
    assert_eq!(pong["payload"]["ping_nonce"], "after-the-deadline");
}

/// Whether a gRPC client from this host is served: a health check on a fresh connection.
async fn grpc_admitted(server: &TestServer) -> bool {
    let Ok(channel) = Channel::from_shared(format!("http://{}", server.addr))
        .expect("uri")
        .connect()
        .await
    else {
        return false;
    };
    let check = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    check.is_ok()
}

/// Whether a WebSocket from this host completes its upgrade.
async fn ws_admitted(server: &TestServer) -> bool {
    tokio_tungstenite::connect_async(format!("ws://{}/arcp", server.ws_addr))
        .await
        .is_ok()
}

#[tokio::test]
async fn the_cap_per_peer_refuses_one_more_connection_over_both_transports_until_a_slot_frees() {
    let server = server_with(NEVER, 2).await;
    // Upgraded WebSockets: once the upgrade completes the server holds their slots.
    let (first, _) = tokio_tungstenite::connect_async(format!("ws://{}/arcp", server.ws_addr))
        .await
        .expect("the first connection is admitted");
    let (_second, _) = tokio_tungstenite::connect_async(format!("ws://{}/arcp", server.ws_addr))
        .await
        .expect("the second connection is admitted");

    // A third is closed at once: the setup timeout is far off, so only the cap can close it.
    let mut third = connect_raw(server.ws_addr).await;
    wait_closed(&mut third).await;
    assert!(!ws_admitted(&server).await, "a WebSocket over the cap");
    assert!(
        !grpc_admitted(&server).await,
        "the cap counts both transports together"
    );

    // Closing one gives its slot back once the server sees the close; until then new
    // connections are still refused, so try until one is admitted.
    drop(first);
    let deadline = Instant::now() + FRAME_TIMEOUT;
    while !ws_admitted(&server).await {
        assert!(
            Instant::now() < deadline,
            "no connection admitted after one of the peer's closed"
        );
        tokio::task::yield_now().await;
    }
}

/// A refused connection does not take a slot: refusing many leaves the admitted ones working.
#[tokio::test]
async fn refused_connections_leave_the_admitted_ones_working() {
    let server = server_with(NEVER, 1).await;
    let (mut grpc, _) = server.hello("alice-token").await;
    for _ in 0..20 {
        let mut refused = connect_raw(server.ws_addr).await;
        wait_closed(&mut refused).await;
    }
    let pong = {
        grpc.send(ping("still-here")).await;
        grpc.recv().await
    };
    assert!(
        matches!(&pong.payload, Some(Out::SessionPong(p)) if p.ping_nonce == "still-here"),
        "{pong:?}"
    );
}
