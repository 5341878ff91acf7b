//! TLS on both listeners (`--tls-cert`, `--tls-key`), mutual TLS (`--tls-client-ca`) with the
//! principal taken from the client certificate, certificates rotated on disk, and the
//! plaintext health listener (`--health-listen`), all through the real server with
//! certificates made in the test.

mod common;

use std::sync::Arc;

use arcp_gateway::{
    auth::Authenticator,
    config::GatewayConfig,
    ids::Principal,
    proto::ServerFrame,
    server::ServeOptions,
    transport::tls::{Tls, TlsSettings},
    Gateway,
};
use common::*;
use serde_json::json;

fn alice() -> Authenticator {
    Authenticator::from_pairs([("alice-token".to_string(), Principal::new("alice"))])
}

/// A gateway for `alice` (token `alice-token`) serving both listeners with `settings`.
async fn tls_server(settings: TlsSettings) -> (TestServer, Arc<Tls>) {
    let tls = Tls::load(settings).expect("the TLS material loads");
    let options = ServeOptions {
        tls: Some(tls.clone()),
        ..ServeOptions::default()
    };
    let builder = Gateway::builder(GatewayConfig::default()).auth(alice());
    (TestServer::start_with_options(builder, options).await, tls)
}

/// A whole session over a connection: hello, a job to its result.
async fn echo_session(conn: &mut Conn, token: &str) -> ServerFrame {
    conn.send(hello(token, FEATURES, None)).await;
    let welcome_frame = conn.recv().await;
    welcome(&welcome_frame);
    let (job, _) = submit_and_accept(conn, submit("echo", json!({"over": "tls"}))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(result_json(&terminal), json!({"over": "tls"}));
    welcome_frame
}

#[tokio::test]
async fn a_whole_grpc_session_runs_over_tls_with_alpn_h2() {
    let pki = Pki::new("grpc CA");
    let (server, _tls) = tls_server(pki.server_settings(&pki.server("server-1"))).await;

    let tls = tls_connect(server.addr, client_config(&pki.ca, None, &[b"h2"]))
        .await
        .expect("the TLS handshake succeeds");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(server_cn(&tls), "server-1");

    let mut conn = tls_open(server.addr, &pki.ca, None).await;
    echo_session(&mut conn, "alice-token").await;
}

#[tokio::test]
async fn a_whole_websocket_session_runs_over_tls_with_alpn_http11() {
    let pki = Pki::new("ws CA");
    let (server, _tls) = tls_server(pki.server_settings(&pki.server("server-1"))).await;

    let tls = tls_connect(server.ws_addr, client_config(&pki.ca, None, &[b"http/1.1"]))
        .await
        .expect("the TLS handshake succeeds");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let mut conn = wss(server.ws_addr, &pki.ca, None, None)
        .await
        .expect("the upgrade over TLS succeeds");
    conn.send(
        "session.hello",
        ws_hello_payload("alice-token", &["progress"]),
    )
    .await;
    let welcome = conn.recv().await;
    assert_eq!(welcome["type"], "session.welcome", "{welcome}");
    let (job, _) = conn.submit_ticker(3, 1).await;
    let frames = conn.recv_until_terminal(&job).await;
    assert_eq!(frames.last().unwrap()["type"], "job.result", "{frames:?}");
}

#[tokio::test]
async fn plaintext_clients_get_nothing_from_a_tls_listener() {
    let pki = Pki::new("plain CA");
    let (server, _tls) = tls_server(pki.server_settings(&pki.server("server-1"))).await;
    let plain = tokio::time::timeout(FRAME_TIMEOUT, async {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await;
        match channel {
            Ok(channel) => open_on(channel, &[])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("the plaintext attempt ends");
    assert!(plain.is_err(), "a plaintext gRPC client is not served");
    let ws = tokio_tungstenite::connect_async(format!("ws://{}/arcp", server.ws_addr)).await;
    assert!(ws.is_err(), "a plaintext WebSocket upgrade is not served");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_server_fails_the_handshake() {
    let pki = Pki::new("real CA");
    let other = Pki::new("other CA");
    let (server, _tls) = tls_server(pki.server_settings(&pki.server("server-1"))).await;
    let refused = tls_connect(server.addr, client_config(&other.ca, None, &[b"h2"]))
        .await
        .expect_err("an unknown issuer is refused");
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
}

#[test]
fn material_that_does_not_load_is_refused_at_start() {
    let pki = Pki::new("start CA");
    let good = pki.server("server-1");
    let other = pki.server("server-2");
    let mismatched = CertPair {
        cert: good.cert.clone(),
        key: other.key.clone(),
    };
    let settings = pki.server_settings(&mismatched);
    let error = Tls::load(settings)
        .err()
        .expect("a key of another certificate");
    assert!(error.to_string().contains("certificate and key"), "{error}");
    let settings = pki.server_settings(&CertPair {
        cert: "not PEM".into(),
        key: good.key,
    });
    let error = Tls::load(settings).err().expect("no certificate");
    assert!(error.to_string().contains("server.crt"), "{error}");
}
