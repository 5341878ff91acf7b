//! TLS on both listeners (`--tls-cert`, `--tls-key`), mutual TLS (`--tls-client-ca`) with the
//! principal taken from the client certificate, certificates rotated on disk, and the
//! plaintext health listener (`--health-listen`), all through the real server with
//! certificates made in the test.

mod common;

use std::sync::Arc;

use arcp_gateway::{
    auth::Authenticator,
    config::GatewayConfig,
    credentials::MemoryProvisioner,
    gateway::GatewayBuilder,
    ids::Principal,
    proto::ServerFrame,
    server::ServeOptions,
    transport::tls::{ClientPrincipal, Tls, TlsSettings},
    Gateway,
};
use common::*;
use serde_json::json;

fn alice() -> Authenticator {
    Authenticator::from_pairs([("alice-token".to_string(), Principal::new("alice"))])
}

/// A gateway for `alice` (token `alice-token`) serving both listeners with `settings`.
async fn tls_server(settings: TlsSettings) -> (TestServer, Arc<Tls>) {
    tls_server_with(settings, None).await
}

/// [`tls_server`], with gRPC health also served in plaintext on `health`.
async fn tls_server_with(
    settings: TlsSettings,
    health: Option<tokio::net::TcpListener>,
) -> (TestServer, Arc<Tls>) {
    let builder = Gateway::builder(GatewayConfig::default()).auth(alice());
    tls_server_of(builder, settings, health).await
}

/// The gateway `builder` builds, serving both listeners with `settings`.
async fn tls_server_of(
    builder: GatewayBuilder,
    settings: TlsSettings,
    health: Option<tokio::net::TcpListener>,
) -> (TestServer, Arc<Tls>) {
    let tls = Tls::load(settings).expect("the TLS material loads");
    let options = ServeOptions {
        tls: Some(tls.clone()),
        health,
    };
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

/// A gateway requiring client certificates of `pki`, taking the principal as `principal` says.
async fn mtls_server(pki: &Pki, principal: ClientPrincipal) -> (TestServer, Arc<Tls>) {
    let mut settings = pki.mutual_settings(&pki.server("server-1"));
    settings.client_principal = principal;
    tls_server(settings).await
}

/// How the server refuses a client with `config`: the handshake's error, or (TLS 1.3 checks
/// the client's certificate after the client's side of the handshake is done) the alert its
/// first read gets.
async fn refusal(addr: std::net::SocketAddr, config: tokio_rustls::rustls::ClientConfig) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = match tls_connect(addr, config).await {
        Err(e) => return e.to_string(),
        Ok(tls) => tls,
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(FRAME_TIMEOUT, tls.read(&mut buf))
        .await
        .expect("the server answers within the timeout");
    match read {
        Err(e) => e.to_string(),
        Ok(n) => panic!("the server served a refused client ({n} bytes)"),
    }
}

#[tokio::test]
async fn mutual_tls_admits_a_good_client_certificate_and_refuses_the_others() {
    let pki = Pki::new("client CA");
    let (server, _tls) = mtls_server(&pki, ClientPrincipal::None).await;
    let good = pki.client(ClientCert {
        cn: "alice",
        ..ClientCert::default()
    });
    let mut conn = tls_open(server.addr, &pki.ca, Some(&good)).await;
    echo_session(&mut conn, "alice-token").await;
    let mut ws = wss(server.ws_addr, &pki.ca, Some(&good), None)
        .await
        .expect("a WebSocket with a good certificate opens");
    ws.send("session.hello", ws_hello_payload("alice-token", &[]))
        .await;
    assert_eq!(ws.recv().await["type"], "session.welcome");

    let missing = refusal(server.addr, client_config(&pki.ca, None, &[b"h2"])).await;
    assert!(missing.contains("CertificateRequired"), "{missing}");
    let expired = pki.client(ClientCert {
        cn: "alice",
        expired: true,
        ..ClientCert::default()
    });
    let expired = refusal(
        server.addr,
        client_config(&pki.ca, Some(&expired), &[b"h2"]),
    )
    .await;
    assert!(expired.contains("CertificateExpired"), "{expired}");
    let stranger = Pki::new("another CA").client(ClientCert {
        cn: "alice",
        ..ClientCert::default()
    });
    let unknown = refusal(
        server.addr,
        client_config(&pki.ca, Some(&stranger), &[b"h2"]),
    )
    .await;
    assert!(unknown.contains("UnknownCA"), "{unknown}");
    let on_ws = refusal(server.ws_addr, client_config(&pki.ca, None, &[b"http/1.1"])).await;
    assert!(on_ws.contains("CertificateRequired"), "{on_ws}");
}

#[tokio::test]
async fn the_principal_comes_from_the_client_certificate_on_both_transports() {
    let pki = Pki::new("identity CA");
    let (server, _tls) = mtls_server(&pki, ClientPrincipal::CommonName).await;
    let alice = pki.client(ClientCert {
        cn: "alice",
        ..ClientCert::default()
    });
    // No bearer token: the certificate names the principal.
    let mut conn = tls_open(server.addr, &pki.ca, Some(&alice)).await;
    let welcome_frame = echo_session(&mut conn, "").await;
    let (session, token) = (
        welcome_frame.session_id.clone(),
        welcome(&welcome_frame).resume_token.clone(),
    );
    drop(conn);
    // The same principal as alice's bearer token: it resumes the session.
    let mut conn = tls_open(server.addr, &pki.ca, Some(&alice)).await;
    conn.send(hello(
        "alice-token",
        FEATURES,
        Some(resume_info(&session, &token, 0)),
    ))
    .await;
    let resumed = conn.recv().await;
    welcome(&resumed);
    assert_eq!(resumed.session_id, session);

    // A certificate and a token that name different principals are refused.
    let bob = pki.client(ClientCert {
        cn: "bob",
        ..ClientCert::default()
    });
    let mut conn = tls_open(server.addr, &pki.ca, Some(&bob)).await;
    conn.send(hello("alice-token", FEATURES, None)).await;
    let error = conn.recv().await;
    let e = expect_error(
        &error,
        arcp_gateway::error::ErrorCode::Unauthenticated,
        None,
    );
    assert!(e.message.contains("different principals"), "{e:?}");

    // Over WebSocket, at the upgrade.
    let mut ws = wss(server.ws_addr, &pki.ca, Some(&alice), None)
        .await
        .expect("the upgrade succeeds");
    ws.send(
        "session.hello",
        json!({"capabilities": {"encodings": ["json"]}}),
    )
    .await;
    let welcome = ws.recv().await;
    assert_eq!(welcome["type"], "session.welcome", "{welcome}");
    let refused = wss(server.ws_addr, &pki.ca, Some(&bob), Some("alice-token")).await;
    let refused = refused.err().expect("the upgrade is refused");
    assert!(refused.to_string().contains("401"), "{refused}");
}

#[tokio::test]
async fn the_principal_can_come_from_a_subject_alternative_name() {
    let pki = Pki::new("san CA");
    let (server, _tls) = mtls_server(&pki, ClientPrincipal::SanUri).await;
    let spiffe = pki.client(ClientCert {
        cn: "ignored",
        uri: Some("spiffe://example.org/alice"),
        ..ClientCert::default()
    });
    let mut conn = tls_open(server.addr, &pki.ca, Some(&spiffe)).await;
    echo_session(&mut conn, "").await;
    // The bearer token names `alice`, not the URI: different principals.
    let mut conn = tls_open(server.addr, &pki.ca, Some(&spiffe)).await;
    conn.send(hello("alice-token", FEATURES, None)).await;
    let frame = conn.recv().await;
    expect_error(
        &frame,
        arcp_gateway::error::ErrorCode::Unauthenticated,
        None,
    );
    // A certificate without a URI names nobody: a bearer token must.
    let plain = pki.client(ClientCert {
        cn: "alice",
        ..ClientCert::default()
    });
    let mut conn = tls_open(server.addr, &pki.ca, Some(&plain)).await;
    conn.send(hello("", FEATURES, None)).await;
    let frame = conn.recv().await;
    expect_error(
        &frame,
        arcp_gateway::error::ErrorCode::Unauthenticated,
        None,
    );
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_connections_and_open_streams_survive() {
    let pki = Pki::new("rotation CA");
    let settings = pki.server_settings(&pki.server("server-1"));
    let (cert, key) = (settings.cert.clone(), settings.key.clone());
    let (server, _tls) = tls_server(settings).await;
    let mut open = tls_open(server.addr, &pki.ca, None).await;
    open.send(hello("alice-token", FEATURES, None)).await;
    welcome(&open.recv().await);

    write_pair(&cert, &key, &pki.server("server-2"));
    eventually("new connections get the new certificate", || async {
        let tls = tls_connect(server.addr, client_config(&pki.ca, None, &[b"h2"]))
            .await
            .expect("the handshake succeeds");
        server_cn(&tls) == "server-2"
    })
    .await;
    // The stream opened before the rotation still carries a whole job.
    let (job, _) = submit_and_accept(&mut open, submit("echo", json!("still here"))).await;
    let (_, terminal) = open.recv_until_terminal(&job).await;
    assert_eq!(result_json(&terminal), json!("still here"));
    let ws = tls_connect(server.ws_addr, client_config(&pki.ca, None, &[b"http/1.1"]))
        .await
        .expect("the handshake succeeds");
    assert_eq!(server_cn(&ws), "server-2", "both listeners rotate");
}

#[tokio::test]
async fn a_broken_replacement_is_refused_and_the_old_certificate_kept() {
    let pki = Pki::new("broken CA");
    let settings = pki.server_settings(&pki.server("server-1"));
    let (cert, key) = (settings.cert.clone(), settings.key.clone());
    let (server, tls) = tls_server(settings).await;
    // A new certificate with the old key: they do not match.
    let old_key = std::fs::read_to_string(&key).unwrap();
    let mismatched = CertPair {
        cert: pki.server("server-2").cert,
        key: old_key,
    };
    write_pair(&cert, &key, &mismatched);
    let error = tls.reload().expect_err("a mismatched pair is refused");
    assert!(error.to_string().contains("certificate and key"), "{error}");
    let conn = tls_connect(server.addr, client_config(&pki.ca, None, &[b"h2"]))
        .await
        .expect("the handshake succeeds");
    assert_eq!(server_cn(&conn), "server-1", "the old certificate is kept");
    // Half a file: refused as well.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIB").unwrap();
    assert!(tls.reload().is_err());
    let mut conn = tls_open(server.addr, &pki.ca, None).await;
    echo_session(&mut conn, "alice-token").await;
}

#[tokio::test]
async fn the_health_listener_serves_only_health_in_plaintext() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let pki = Pki::new("health CA");
    let health = arcp_gateway::server::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let health_addr = health.local_addr().unwrap();
    let (server, _tls) =
        tls_server_with(pki.server_settings(&pki.server("server-1")), Some(health)).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .expect("a plaintext channel to the health listener");
    for service in ["", "arcp.v1.Arcp"] {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let arcp = open_on(channel, &[]).await.err().expect("no ARCP here");
    assert_eq!(arcp.code(), tonic::Code::Unimplemented, "{arcp:?}");
    // The main listener still wants TLS, and serves health there too.
    let tls_channel = tls_channel(server.addr, &pki.ca, None).await.unwrap();
    let watch = serving_watch(&tls_channel, "").await;
    server.stop().await;
    let statuses = statuses_until_end(watch).await;
    assert_eq!(statuses, vec![ServingStatus::NotServing]);
}

#[tokio::test]
async fn provisioned_credentials_are_offered_over_tls_only_unless_plaintext_is_allowed() {
    const CREDENTIALS: &[&str] = &["provisioned_credentials"];
    let issuing = |config: GatewayConfig| {
        Gateway::builder(config)
            .auth(alice())
            .credential_provisioner(Arc::new(MemoryProvisioner::new(
                "https://models.example",
                None,
            )))
    };
    // Plaintext: neither offered nor, so, issued.
    let plaintext = TestServer::start_gateway(issuing(GatewayConfig::default())).await;
    let (mut conn, frame) = plaintext.hello_with("alice-token", CREDENTIALS).await;
    assert!(offered_features(&frame).is_empty(), "{frame:?}");
    let (job, accepted_frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    assert!(
        accepted(&accepted_frame).credentials.is_empty(),
        "no credential on plaintext"
    );
    conn.recv_until_terminal(&job).await;
    let (_ws, welcome) = plaintext.ws_hello("alice-token", CREDENTIALS).await;
    let features = &welcome["payload"]["capabilities"]["features"];
    assert_eq!(features, &json!([]), "{welcome}");

    // TLS: offered.
    let pki = Pki::new("credentials CA");
    let settings = pki.server_settings(&pki.server("server-1"));
    let (tls, _tls) = tls_server_of(issuing(GatewayConfig::default()), settings, None).await;
    let mut conn = tls_open(tls.addr, &pki.ca, None).await;
    conn.send(hello("alice-token", CREDENTIALS, None)).await;
    let frame = conn.recv().await;
    assert_eq!(offered_features(&frame), CREDENTIALS);
    let (_, accepted_frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    assert_eq!(
        accepted(&accepted_frame).credentials.len(),
        1,
        "issued over TLS"
    );

    // Plaintext with the development setting: offered.
    let allowed = GatewayConfig {
        allow_plaintext_credentials: true,
        ..GatewayConfig::default()
    };
    let demo = TestServer::start_gateway(issuing(allowed)).await;
    let (_conn, frame) = demo.hello_with("alice-token", CREDENTIALS).await;
    assert_eq!(offered_features(&frame), CREDENTIALS);
}

#[tokio::test]
async fn the_binary_serves_mutual_tls_the_health_listener_and_jwts_from_its_flags() {
    let pki = Pki::new("binary CA");
    let settings = pki.mutual_settings(&pki.server("server-1"));
    let secret = b"the binary's JWT secret, 32 bytes or more";
    let jwks = json!({"keys": [{"kty": "oct", "alg": "HS256", "k": base64_url(secret)}]});
    std::fs::write(pki.path("jwks.json"), jwks.to_string()).unwrap();
    let path = |p: &std::path::Path| p.display().to_string();
    let (cert, key, ca, jwks) = (
        path(&settings.cert),
        path(&settings.key),
        path(settings.client_ca.as_ref().unwrap()),
        path(&pki.path("jwks.json")),
    );
    let gateway = GatewayProcess::start_with(
        "info",
        None,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
            "--tls-client-principal",
            "cn",
            "--health-listen",
            "127.0.0.1:0",
            "--jwt-jwks",
            &jwks,
            "--jwt-audience",
            "arcp",
            "--jwt-issuer",
            "idp",
        ],
    )
    .await;
    let health_addr: std::net::SocketAddr = {
        let output = gateway.output.lock();
        let line = output
            .lines()
            .find(|l| l.contains("gRPC health listening"))
            .expect("the health listener is logged")
            .to_owned();
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("health_addr="))
            .expect("its address")
            .parse()
            .expect("an address")
    };
    // The principal from the certificate.
    let alice = pki.client(ClientCert {
        cn: "alice",
        ..ClientCert::default()
    });
    let mut conn = tls_open(gateway.addr, &pki.ca, Some(&alice)).await;
    echo_session(&mut conn, "").await;
    // A JWT, on a connection whose certificate names the same principal.
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": "alice", "aud": "arcp", "iss": "idp", "exp": now + 60});
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap();
    let mut conn = tls_open(gateway.addr, &pki.ca, Some(&alice)).await;
    echo_session(&mut conn, &jwt).await;
    // No client certificate: refused.
    let missing = refusal(gateway.addr, client_config(&pki.ca, None, &[b"h2"])).await;
    assert!(missing.contains("CertificateRequired"), "{missing}");
    // Health in plaintext beside it.
    let channel = tonic::transport::Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .expect("a plaintext channel to the health listener");
    let _watch = serving_watch(&channel, "").await;
    let (status, output) = gateway.terminate().await;
    assert!(status.success(), "{output}");
    assert!(!output.contains(&jwt), "the JWT never reaches the log");
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn a_session_resumed_over_plaintext_loses_its_credentials() {
    const CREDENTIALS: &[&str] = &["provisioned_credentials"];
    let issuing = || {
        Gateway::builder(GatewayConfig::default())
            .auth(alice())
            .credential_provisioner(Arc::new(MemoryProvisioner::new(
                "https://models.example",
                None,
            )))
    };
    // Two replicas of one deployment: one behind TLS, one in plaintext.
    let stores =
        arcp_gateway::store::MemoryStores::with_limits(GatewayConfig::default().log_limits());
    let pki = Pki::new("replicas CA");
    let tls = Tls::load(pki.server_settings(&pki.server("server-1"))).unwrap();
    let options = ServeOptions {
        tls: Some(tls),
        ..ServeOptions::default()
    };
    let over_tls = TestServer::start_on_with_options(issuing(), stores.clone(), options).await;
    let plaintext =
        TestServer::start_on_with_options(issuing(), stores, ServeOptions::default()).await;

    let mut conn = tls_open(over_tls.addr, &pki.ca, None).await;
    conn.send(hello("alice-token", CREDENTIALS, None)).await;
    let first = conn.recv().await;
    assert_eq!(offered_features(&first), CREDENTIALS);
    let (session, token) = (
        first.session_id.clone(),
        welcome(&first).resume_token.clone(),
    );
    drop(conn);

    // Resumed in plaintext without naming features: the feature is gone, and so are new
    // credentials.
    let mut conn = plaintext.open().await;
    let resume = resume_info(&session, &token, 0);
    conn.send(arcp_gateway::proto::client_frame::Payload::SessionHello(
        arcp_gateway::proto::SessionHello {
            auth: Some(arcp_gateway::proto::Auth {
                scheme: "bearer".into(),
                token: "alice-token".into(),
            }),
            resume: Some(resume),
            ..Default::default()
        },
    ))
    .await;
    let resumed = conn.recv().await;
    assert_eq!(resumed.session_id, session);
    assert!(offered_features(&resumed).is_empty(), "{resumed:?}");
    let (_, accepted_frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    assert!(accepted(&accepted_frame).credentials.is_empty());
}
